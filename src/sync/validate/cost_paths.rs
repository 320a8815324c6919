//! Bounds on the cost paths a map spells out. Every number under a key containing "cost"
//! is kept by its path (`tiers[2].input_cost_per_token`), so a path is copied once per
//! number below it: a megabyte key over an array of zeros would ask for gigabytes from a
//! body of a few megabytes. Real maps' paths are at most 70 bytes and take a sixth of
//! the body in all; both readers refuse maps past these bounds, with the same message.

use super::{Step, ValidationError, truncated};

/// The longest cost path a map may have, in bytes as spelled.
pub const MAX_COST_PATH_BYTES: usize = 256;

/// The cost paths of a map may take, spelled out one after the other, as many bytes as the
/// body, or this many for a smaller body.
const MIN_COST_PATHS_BUDGET: usize = 1 << 20;

/// The cost paths of one map, counted as they go by.
#[derive(Debug)]
pub(super) struct CostPathBounds {
    budget: usize,
    spelled: usize,
    too_long: usize,
    /// The first model by name with a path too long.
    first_too_long: Option<String>,
    /// Whether the model being read has a path too long.
    this_model_too_long: bool,
}

impl CostPathBounds {
    /// The bounds for a body of `body_len` bytes.
    pub(super) fn for_body(body_len: usize) -> CostPathBounds {
        CostPathBounds {
            budget: body_len.max(MIN_COST_PATHS_BUDGET),
            spelled: 0,
            too_long: 0,
            first_too_long: None,
            this_model_too_long: false,
        }
    }

    /// Counts a leaf under a cost key whose path spells `len` bytes; whether the path may
    /// be spelled and kept (within both bounds so far).
    pub(super) fn admit(&mut self, len: usize) -> bool {
        if len > MAX_COST_PATH_BYTES {
            self.too_long += 1;
            self.this_model_too_long = true;
            return false;
        }
        self.spelled = self.spelled.saturating_add(len);
        self.spelled <= self.budget
    }

    /// The model whose leaves were counted since the last call is `model`.
    pub(super) fn end_model(&mut self, model: &str) {
        if std::mem::take(&mut self.this_model_too_long)
            && self
                .first_too_long
                .as_deref()
                .is_none_or(|first| model < first)
        {
            self.first_too_long = Some(model.to_owned());
        }
    }

    /// An error if the map went past a bound.
    pub(super) fn check(&self) -> Result<(), ValidationError> {
        if let Some(model) = &self.first_too_long {
            return Err(ValidationError::InvalidMap(format!(
                "{} cost paths are longer than {MAX_COST_PATH_BYTES} bytes, the first by name \
                 in model {:?}",
                self.too_long,
                truncated(model)
            )));
        }
        if self.spelled > self.budget {
            return Err(ValidationError::InvalidMap(format!(
                "the cost paths take {} bytes spelled out, more than the {} allowed (the \
                 body's size, at least {MIN_COST_PATHS_BUDGET})",
                self.spelled, self.budget
            )));
        }
        Ok(())
    }
}

/// The length of `path` spelled as [`spell_into`](super::spell_into) spells it (`a.b[2].c`),
/// without spelling it.
pub(super) fn spelled_len<'a>(path: impl IntoIterator<Item = Step<'a>>) -> usize {
    path.into_iter().fold(0, |len, step| match step {
        Step::Field(field) => len + usize::from(len > 0) + field.len(),
        Step::Index(index) => len + index.checked_ilog10().unwrap_or(0) as usize + 3,
    })
}

#[cfg(test)]
mod tests {
    use super::super::spelled;
    use super::*;

    #[test]
    fn spelled_lengths_match_the_spelling() {
        let paths: [&[Step]; 5] = [
            &[Step::Field("a"), Step::Index(10), Step::Field("cost")],
            &[Step::Index(0), Step::Index(9), Step::Index(99_999)],
            &[Step::Field(""), Step::Field(""), Step::Field("x")],
            &[Step::Field(""), Step::Index(1), Step::Field("")],
            &[],
        ];
        for path in paths {
            assert_eq!(
                spelled_len(path.iter().copied()),
                spelled(path.iter().copied()).len()
            );
        }
    }

    #[test]
    fn a_path_too_long_is_named_by_its_first_model_and_the_budget_counts_the_rest() {
        let mut bounds = CostPathBounds::for_body(10);
        assert!(bounds.admit(MAX_COST_PATH_BYTES));
        bounds.end_model("a");
        for model in ["m", "c", "z"] {
            assert!(!bounds.admit(MAX_COST_PATH_BYTES + 1));
            bounds.end_model(model);
        }
        let err = bounds.check().unwrap_err().to_string();
        assert!(
            err.contains(
                "3 cost paths are longer than 256 bytes, the first by name in model \"c\""
            ),
            "{err}"
        );
        let mut bounds = CostPathBounds::for_body(MIN_COST_PATHS_BUDGET + 100);
        let mut admitted = 0;
        while bounds.admit(100) {
            admitted += 1;
        }
        assert_eq!(admitted, MIN_COST_PATHS_BUDGET / 100 + 1);
        assert!(
            bounds
                .check()
                .unwrap_err()
                .to_string()
                .contains("allowed (the body's size")
        );
    }
}

//! Validation of a fetched map: LiteLLM's own acceptance rules, plus stricter checks that
//! every real map passes (litellm 1.60 to 1.110), so a broken or hostile source never
//! replaces the last good map.

mod cost_paths;
pub mod guards;
mod onepass;
mod parse;
pub mod summary;
mod violations;

use std::collections::BTreeMap;

use serde_json::Value;

use crate::api::Validation;
use cost_paths::{CostPathBounds, spelled_len};
use violations::{Tally, Violation};

pub use cost_paths::MAX_COST_PATH_BYTES;
pub use onepass::IndexedMap;
pub use parse::{MAX_TOP_LEVEL_KEYS, MAX_VALUES};

/// Top-level keys that are not models.
pub const RESERVED_KEYS: [&str; 2] = ["sample_spec", "fallback_generalizations"];

/// Numeric fields holding token counts.
const TOKEN_FIELDS: [&str; 3] = ["max_tokens", "max_input_tokens", "max_output_tokens"];
/// Fields that must be strings where present.
const STRING_FIELDS: [&str; 2] = ["litellm_provider", "mode"];
/// How many offending models an error message names per rule.
pub(crate) const EXAMPLES_PER_RULE: usize = 5;

/// Why a map was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// Not a map LiteLLM (or our stricter rules) would accept.
    #[error("invalid map: {0}")]
    InvalidMap(String),
}

/// A parsed map: every top-level key with its entry, reserved keys included.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelMap {
    pub(crate) entries: BTreeMap<String, Value>,
}

/// The limits a map must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rules {
    /// Fewest models allowed.
    pub min_models: usize,
    /// Largest share (percent) of the last good map's models a new map may drop.
    pub max_removed_percent: u32,
    /// Smallest share (percent) of a map's models that must be priced.
    pub min_priced_percent: u32,
    /// Largest share (percent) of the last good map's priced models that may lose every
    /// price.
    pub max_unpriced_percent: u32,
    /// Largest share (percent) of the last good map's priced models that may change a price.
    pub max_repriced_percent: u32,
}

impl Default for Rules {
    fn default() -> Self {
        Rules::from(&Validation::default())
    }
}

impl From<&Validation> for Rules {
    /// The rules `spec.validation` makes (the CRD keeps the numbers in range; out of range
    /// they are read in the strictest way).
    fn from(validation: &Validation) -> Rules {
        let percent = |value: i32| u32::try_from(value).unwrap_or(0).min(100);
        Rules {
            min_models: usize::try_from(validation.min_models).unwrap_or(1).max(1),
            max_removed_percent: percent(validation.max_removed_percent),
            // Out of range, the strictest reading: every map must be priced.
            min_priced_percent: u32::try_from(validation.min_priced_percent)
                .unwrap_or(100)
                .min(100),
            max_unpriced_percent: percent(validation.max_unpriced_percent),
            max_repriced_percent: percent(validation.max_repriced_percent),
        }
    }
}

impl ModelMap {
    /// The models: every top-level entry but the reserved keys.
    pub fn models(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries
            .iter()
            .filter(|(key, _)| !RESERVED_KEYS.contains(&key.as_str()))
            .map(|(key, value)| (key.as_str(), value))
    }

    /// The entry of one model.
    pub fn model(&self, name: &str) -> Option<&Value> {
        if RESERVED_KEYS.contains(&name) {
            return None;
        }
        self.entries.get(name)
    }

    /// How many models the map holds.
    pub fn model_count(&self) -> usize {
        self.models().count()
    }
}

/// Checks a parsed map against LiteLLM's rules and ours: the structure every map must
/// have, whatever the last good map was. The guards that compare it with the last good map
/// are in [`guards`].
pub fn validate(map: &ModelMap, rules: &Rules) -> Result<(), ValidationError> {
    let models = map.model_count();
    if models < rules.min_models {
        return Err(ValidationError::InvalidMap(format!(
            "{models} models, fewer than minModels {}",
            rules.min_models
        )));
    }
    check_entries(map)
}

/// The entry rules alone: every model's entry (or an override of it) must keep them.
pub(crate) fn check_entries(map: &ModelMap) -> Result<(), ValidationError> {
    let mut tally = Tally::default();
    for violation in entry_violations(map) {
        tally.push_in_order(violation);
    }
    if !tally.is_empty() {
        return Err(ValidationError::InvalidMap(tally.describe()));
    }
    Ok(())
}

fn entry_violations(map: &ModelMap) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (model, entry) in map.models() {
        let mut report = |rule: &'static str, detail: String| {
            violations.push(Violation {
                rule,
                model: model.to_owned(),
                detail,
            })
        };
        let Some(fields) = entry.as_object() else {
            report(
                "each model entry is a JSON object",
                format!("is {}", kind(entry)),
            );
            continue;
        };
        for (field, value) in fields {
            if TOKEN_FIELDS.contains(&field.as_str()) && !is_non_negative_number(value) {
                report(
                    "token counts are non-negative numbers",
                    format!("{field} is {}", shown(value)),
                );
            }
            if STRING_FIELDS.contains(&field.as_str()) && !value.is_string() {
                report(
                    "litellm_provider and mode are strings",
                    format!("{field} is {}", kind(value)),
                );
            }
        }
        visit_costs(entry, &mut |leaf| {
            if !is_non_negative_number(leaf.value) {
                report(
                    "costs are finite non-negative numbers",
                    format!("{} is {}", leaf.spelled(), shown(leaf.value)),
                );
            }
        });
    }
    violations
}

/// The bounds on a parsed map's cost paths, as the one-pass reader counts them.
fn check_cost_paths(map: &ModelMap, body_len: usize) -> Result<(), ValidationError> {
    let mut bounds = CostPathBounds::for_body(body_len);
    for (model, entry) in map.models() {
        walk_costs(entry, false, &mut Vec::new(), &mut |leaf| {
            bounds.admit(leaf.spelled_len());
        });
        bounds.end_model(model);
    }
    bounds.check()
}

/// Calls `visit` with every leaf below a key whose name contains "cost" (nested ones
/// included) whose path is at most [`MAX_COST_PATH_BYTES`] long. The path is spelled out
/// only when asked: building it for every node would cost work quadratic in the nesting.
pub(crate) fn visit_costs<'a>(entry: &'a Value, visit: &mut impl FnMut(CostLeaf<'_, 'a>)) {
    walk_costs(entry, false, &mut Vec::new(), &mut |leaf| {
        if leaf.spelled_len() <= MAX_COST_PATH_BYTES {
            visit(leaf);
        }
    });
}

/// A leaf below a cost key, and the path to it.
pub(crate) struct CostLeaf<'p, 'a> {
    pub(crate) value: &'a Value,
    path: &'p [Step<'a>],
}

impl CostLeaf<'_, '_> {
    /// `a.b[2].c`.
    pub(crate) fn spelled(&self) -> String {
        spelled(self.path.iter().copied())
    }

    fn spelled_len(&self) -> usize {
        spelled_len(self.path.iter().copied())
    }
}

fn walk_costs<'a>(
    value: &'a Value,
    under_cost: bool,
    path: &mut Vec<Step<'a>>,
    visit: &mut impl FnMut(CostLeaf<'_, 'a>),
) {
    match value {
        Value::Object(fields) => {
            for (field, child) in fields {
                path.push(Step::Field(field));
                walk_costs(child, under_cost || field.contains("cost"), path, visit);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                path.push(Step::Index(index));
                walk_costs(child, under_cost, path, visit);
                path.pop();
            }
        }
        leaf if under_cost => visit(CostLeaf { value: leaf, path }),
        _ => {}
    }
}

/// One step from an entry down to a value in it.
#[derive(Clone, Copy)]
enum Step<'a> {
    Field(&'a str),
    Index(usize),
}

/// `a.b[2].c`.
fn spelled<'a>(path: impl IntoIterator<Item = Step<'a>>) -> String {
    let mut text = String::new();
    spell_into(path, &mut text);
    text
}

/// [`spelled`], written at the end of `text`.
fn spell_into<'a>(path: impl IntoIterator<Item = Step<'a>>, text: &mut String) {
    let start = text.len();
    for step in path {
        match step {
            Step::Field(field) if text.len() == start => text.push_str(field),
            Step::Field(field) => {
                text.push('.');
                text.push_str(field);
            }
            Step::Index(index) => {
                use std::fmt::Write;
                // Writing to a String cannot fail.
                let _ = write!(text, "[{index}]");
            }
        }
    }
}

fn is_non_negative_number(value: &Value) -> bool {
    // serde_json never yields NaN or infinities from JSON text; as_f64 covers ints too.
    value
        .as_f64()
        .is_some_and(|number| number.is_finite() && number >= 0.0)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A value for an error message: numbers as they are, anything else by kind, so that no
/// long or hostile string from the source ends up in status.
fn shown(value: &Value) -> String {
    match value {
        Value::Number(number) => number.to_string(),
        other => kind(other).to_owned(),
    }
}

/// Model names come from the source: keep them short in messages.
pub(crate) fn truncated(name: &str) -> String {
    const MAX: usize = 80;
    if name.chars().count() <= MAX {
        name.to_owned()
    } else {
        format!("{}...", name.chars().take(MAX).collect::<String>())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A small map in LiteLLM's shape with `n` chat models named `model-0`...
    pub(crate) fn sample_map(n: usize) -> Value {
        let mut map = serde_json::Map::new();
        map.insert(
            "sample_spec".into(),
            json!({"max_tokens": "LEGACY: set to max_output_tokens", "input_cost_per_token": 0.0,
                   "litellm_provider": "one of https://docs.litellm.ai/docs/providers", "mode": "one of: chat"}),
        );
        for i in 0..n {
            map.insert(
                format!("model-{i}"),
                json!({"max_tokens": 4096.0, "max_input_tokens": 128000, "input_cost_per_token": 1.5e-6,
                       "output_cost_per_token": 0, "litellm_provider": "openai", "mode": "chat",
                       "search_context_cost_per_query": {"search_context_size_low": 0.03}}),
            );
        }
        Value::Object(map)
    }

    fn parse(value: &Value) -> ModelMap {
        ModelMap::parse(value.to_string().as_bytes()).unwrap()
    }

    fn refusal(value: &Value) -> String {
        validate(&parse(value), &Rules::default())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_map_in_litellms_shape_is_valid_and_reserved_keys_are_not_models() {
        let map = parse(&sample_map(60));
        assert_eq!(map.model_count(), 60);
        assert!(map.model("sample_spec").is_none());
        validate(&map, &Rules::default()).unwrap();
    }

    #[test]
    fn alias_rows_and_unknown_fields_pass() {
        let mut value = sample_map(60);
        value["alias"] = json!({"alias_of": "model-1"});
        value["model-2"]["brand_new_field_2027"] = json!(["anything", null, true]);
        validate(&parse(&value), &Rules::default()).unwrap();
    }

    #[test]
    fn fewer_models_than_min_models_is_refused() {
        let err = refusal(&sample_map(49));
        assert_eq!(err, "invalid map: 49 models, fewer than minModels 50");
        let rules = Rules {
            min_models: 3,
            ..Rules::default()
        };
        validate(&parse(&sample_map(3)), &rules).unwrap();
    }

    #[test]
    fn bad_costs_are_refused_naming_rule_and_models() {
        for bad in [json!(-1e-6), json!("0.000001"), json!(null), json!(true)] {
            let mut value = sample_map(60);
            value["model-7"]["input_cost_per_token"] = bad.clone();
            let err = refusal(&value);
            assert!(
                err.contains("costs are finite non-negative numbers"),
                "{err}"
            );
            assert!(err.contains("model-7 (input_cost_per_token is"), "{err}");
        }
        let mut nested = sample_map(60);
        nested["model-3"]["search_context_cost_per_query"]["search_context_size_high"] = json!("x");
        assert!(
            refusal(&nested).contains("search_context_cost_per_query.search_context_size_high")
        );
    }

    #[test]
    fn token_counts_and_string_fields_are_checked() {
        let mut value = sample_map(60);
        value["model-1"]["max_tokens"] = json!("4096");
        value["model-2"]["max_output_tokens"] = json!(-1);
        value["model-3"]["litellm_provider"] = json!(7);
        value["model-4"]["mode"] = json!(null);
        value["model-5"] = json!("not an object");
        let err = refusal(&value);
        for expected in [
            "model-1 (max_tokens is a string)",
            "model-2 (max_output_tokens is -1)",
            "model-3 (litellm_provider is a number)",
            "model-4 (mode is null)",
            "model-5 (is a string)",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in {err}");
        }
    }

    #[test]
    fn messages_name_only_the_first_few_offenders() {
        let mut value = sample_map(60);
        for i in 0..20 {
            value[format!("model-{i}")]["mode"] = json!(1);
        }
        let err = refusal(&value);
        assert!(err.contains("broken 20 times"), "{err}");
        assert!(err.contains("and 15 more"), "{err}");
        assert!(!err.contains("model-19 "), "{err}");
    }
}

//! The entry rules a map broke, kept as its message names them: per rule, how many times,
//! and the first few offenders by model name, then by place in the entry. A map can break
//! a rule once per value (a million times); what is kept stays a few examples a rule.

use std::cmp::Ordering;

use super::{EXAMPLES_PER_RULE, Step, truncated};

/// One broken rule in one model's entry.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Violation {
    pub(super) rule: &'static str,
    pub(super) model: String,
    pub(super) detail: String,
}

/// One step from an entry down to a value, owned: where a kept example sits, to order
/// examples as the parsed tree lists them (object fields by key, array items by index).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum OwnedStep {
    Field(String),
    Index(usize),
}

impl Step<'_> {
    fn cmp_owned(self, owned: &OwnedStep) -> Ordering {
        match (self, owned) {
            (Step::Field(field), OwnedStep::Field(other)) => field.cmp(other.as_str()),
            (Step::Index(index), OwnedStep::Index(other)) => index.cmp(other),
            // As the derived order of `OwnedStep`: fields before indexes.
            (Step::Field(_), OwnedStep::Index(_)) => Ordering::Less,
            (Step::Index(_), OwnedStep::Field(_)) => Ordering::Greater,
        }
    }

    fn to_owned_step(self) -> OwnedStep {
        match self {
            Step::Field(field) => OwnedStep::Field(field.to_owned()),
            Step::Index(index) => OwnedStep::Index(index),
        }
    }
}

/// The broken rules of a map (or of one model's entry, while it is read).
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Tally {
    /// By rule, in the order first broken (a handful of rules: a list, not a map).
    rules: Vec<RuleTally>,
}

#[derive(Debug, Clone, PartialEq)]
struct RuleTally {
    rule: &'static str,
    count: usize,
    /// The first [`EXAMPLES_PER_RULE`] by (model, place), sorted.
    first: Vec<(Violation, Vec<OwnedStep>)>,
}

impl Tally {
    pub(super) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub(super) fn clear(&mut self) {
        self.rules.clear();
    }

    fn rule(&mut self, rule: &'static str) -> &mut RuleTally {
        let at = match self.rules.iter().position(|tally| tally.rule == rule) {
            Some(at) => at,
            None => {
                self.rules.push(RuleTally {
                    rule,
                    count: 0,
                    first: Vec::new(),
                });
                self.rules.len() - 1
            }
        };
        &mut self.rules[at]
    }

    /// Counts `rule` broken in the entry being read, at `place` (given in any order); the
    /// detail is spelled only when it is among the first few kept.
    pub(super) fn add<'p>(
        &mut self,
        rule: &'static str,
        place: impl Iterator<Item = Step<'p>> + Clone,
        detail: impl FnOnce() -> String,
    ) {
        let tally = self.rule(rule);
        tally.count += 1;
        let before = tally
            .first
            .partition_point(|(_, kept)| cmp_place(place.clone(), kept) == Ordering::Greater);
        if before == EXAMPLES_PER_RULE {
            return;
        }
        let violation = Violation {
            rule,
            model: String::new(),
            detail: detail(),
        };
        let place = place.map(Step::to_owned_step).collect();
        tally.first.insert(before, (violation, place));
        tally.first.truncate(EXAMPLES_PER_RULE);
    }

    /// Counts a violation the caller finds in (model, place) order: the first few kept.
    pub(super) fn push_in_order(&mut self, violation: Violation) {
        let tally = self.rule(violation.rule);
        tally.count += 1;
        if tally.first.len() < EXAMPLES_PER_RULE {
            tally.first.push((violation, Vec::new()));
        }
    }

    /// Adds the broken rules of one model's entry, read into `entry`, under its name.
    /// `entry` is left empty, for the next model.
    pub(super) fn merge_model(&mut self, model: &str, entry: &mut Tally) {
        for from in entry.rules.drain(..) {
            let tally = self.rule(from.rule);
            tally.count += from.count;
            for (mut violation, place) in from.first {
                let before = tally.first.partition_point(|(kept, kept_place)| {
                    (kept.model.as_str(), kept_place) <= (model, &place)
                });
                if before == EXAMPLES_PER_RULE {
                    break;
                }
                violation.model = model.to_owned();
                tally.first.insert(before, (violation, place));
                tally.first.truncate(EXAMPLES_PER_RULE);
            }
        }
    }

    /// The message: rules by name, each with its count and first few offenders.
    pub(super) fn describe(&self) -> String {
        let mut rules: Vec<&RuleTally> = self.rules.iter().collect();
        rules.sort_by_key(|tally| tally.rule);
        let parts: Vec<String> = rules
            .into_iter()
            .map(|tally| {
                let examples: Vec<String> = tally
                    .first
                    .iter()
                    .map(|(v, _)| format!("{} ({})", truncated(&v.model), v.detail))
                    .collect();
                let more = tally.count.saturating_sub(EXAMPLES_PER_RULE);
                let more = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                format!(
                    "rule \"{}\" broken {} times: {}{more}",
                    tally.rule,
                    tally.count,
                    examples.join(", ")
                )
            })
            .collect();
        parts.join("; ")
    }
}

/// `place` against a kept place, as `[OwnedStep]` orders.
fn cmp_place<'p>(mut place: impl Iterator<Item = Step<'p>>, kept: &[OwnedStep]) -> Ordering {
    for other in kept {
        let Some(step) = place.next() else {
            return Ordering::Less;
        };
        match step.cmp_owned(other) {
            Ordering::Equal => {}
            unequal => return unequal,
        }
    }
    if place.next().is_some() {
        Ordering::Greater
    } else {
        Ordering::Equal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: &str = "a rule";

    fn examples(tally: &Tally) -> Vec<(String, String)> {
        tally.rules[0]
            .first
            .iter()
            .map(|(v, _)| (v.model.clone(), v.detail.clone()))
            .collect()
    }

    #[test]
    fn the_first_few_by_model_then_place_are_kept_whatever_the_order_read() {
        let mut map = Tally::default();
        let mut entry = Tally::default();
        // Read in document order: models and places arrive unsorted.
        for model in ["m3", "m1", "m2"] {
            for index in [9usize, 2, 7, 0, 5, 1] {
                let place = [Step::Field("tiers"), Step::Index(index)];
                entry.add(RULE, place.into_iter(), || format!("tiers[{index}]"));
            }
            map.merge_model(model, &mut entry);
            assert!(entry.is_empty());
        }
        assert_eq!(map.rules[0].count, 18);
        let expected: Vec<(String, String)> = [0, 1, 2, 5, 7]
            .iter()
            .map(|index| ("m1".to_owned(), format!("tiers[{index}]")))
            .collect();
        assert_eq!(examples(&map), expected);
        assert_eq!(
            map.describe(),
            "rule \"a rule\" broken 18 times: m1 (tiers[0]), m1 (tiers[1]), m1 (tiers[2]), \
             m1 (tiers[5]), m1 (tiers[7]) and 13 more"
        );
    }

    #[test]
    fn a_detail_is_spelled_only_when_kept() {
        let mut entry = Tally::default();
        let mut spelled = 0;
        for index in 0..1000usize {
            entry.add(RULE, [Step::Index(index)].into_iter(), || {
                spelled += 1;
                String::new()
            });
        }
        assert_eq!(spelled, EXAMPLES_PER_RULE);
        assert_eq!(entry.rules[0].count, 1000);
    }

    #[test]
    fn fields_come_before_indexes_and_a_prefix_before_what_it_leads_to() {
        let owned = [OwnedStep::Field("a".into())];
        assert_eq!(
            cmp_place([Step::Field("a"), Step::Index(0)].into_iter(), &owned),
            Ordering::Greater
        );
        assert_eq!(
            cmp_place([Step::Index(0)].into_iter(), &owned),
            Ordering::Greater
        );
        assert_eq!(
            cmp_place([Step::Field("a")].into_iter(), &owned),
            Ordering::Equal
        );
        let index = [OwnedStep::Index(3)];
        assert_eq!(
            cmp_place([Step::Field("z")].into_iter(), &index),
            Ordering::Less
        );
    }
}

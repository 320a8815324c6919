//! The map validated and indexed in one pass over its bytes: serde_json's deserializer
//! drives our own visitors, which check the structure rules and the entry rules as the
//! values go by and keep, per model, only what the guards and the diff use (its cost
//! numbers, whether it is an alias, a digest of its entry). No tree is built: strings are
//! borrowed from the input, and a value is forgotten as soon as its parent has its digest.
//!
//! It says exactly what [`ModelMap::parse`](super::ModelMap::parse), [`validate`](super::validate)
//! and [`MapSummary::of`] say of the same bytes, message for message (tests/oracle.rs runs
//! both over the real maps, the hostile bodies and the property tests' inputs).

mod values;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::de::{DeserializeSeed, MapAccess, Visitor};

use values::{KeySeed, Leaf, Node, ValueSeed};

use super::parse::{describe_duplicates, describe_parse_error, describe_shape, is_map_shaped};
use super::summary::{MapSummary, ModelSummary};
use super::{
    MAX_TOP_LEVEL_KEYS, RESERVED_KEYS, Rules, ValidationError, Violation, describe_violations,
};

/// A map read in one pass: its index, and the entry rules it broke (if any).
#[derive(Debug, Clone, PartialEq)]
pub struct IndexedMap {
    summary: MapSummary,
    violations: Vec<Violation>,
}

impl IndexedMap {
    /// Reads a map in one pass, bounded and strict as [`ModelMap::parse`](super::ModelMap::parse):
    /// the same syntax, depth, size, duplicate-key and shape errors, with the same messages.
    pub fn read(bytes: &[u8]) -> Result<IndexedMap, ValidationError> {
        Self::read_checked(bytes, true)
    }

    /// [`Self::read`] for a layer the tenant wrote themselves (an override ConfigMap): no
    /// shape rule, as [`ModelMap::parse_layer`](super::ModelMap::parse_layer).
    pub fn read_layer(bytes: &[u8]) -> Result<IndexedMap, ValidationError> {
        Self::read_checked(bytes, false)
    }

    fn read_checked(bytes: &[u8], source: bool) -> Result<IndexedMap, ValidationError> {
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let mut state = State::default();
        let parsed = serde::Deserializer::deserialize_map(
            &mut deserializer,
            TopLevelVisitor { state: &mut state },
        )
        .and_then(|top| {
            deserializer.end()?;
            Ok(top)
        });
        let top = match parsed {
            Ok(top) => top,
            Err(err) => {
                return Err(ValidationError::InvalidMap(describe_parse_error(
                    bytes, &err,
                )));
            }
        };
        if source && !is_map_shaped(top.objects, top.keys) {
            return Err(ValidationError::InvalidMap(describe_shape(
                top.objects,
                top.keys,
                top.duplicates.len(),
            )));
        }
        if !top.duplicates.is_empty() {
            return Err(ValidationError::InvalidMap(describe_duplicates(
                &top.duplicates,
            )));
        }
        // Messages list models in name order and, within one, fields in key order (as the
        // parsed tree's sorted maps did); the pass sees them in document order.
        let mut found = state.violations;
        found.sort_by(|a, b| a.0.model.cmp(&b.0.model).then_with(|| a.1.cmp(&b.1)));
        Ok(IndexedMap {
            summary: MapSummary::from_models(top.models),
            violations: found.into_iter().map(|(violation, _)| violation).collect(),
        })
    }

    /// How many models the map holds.
    pub fn model_count(&self) -> usize {
        self.summary.model_count()
    }

    /// What the guards and the diff use, whether or not the map keeps the rules.
    pub fn summary(&self) -> &MapSummary {
        &self.summary
    }

    /// The structure rules, as [`validate`](super::validate): enough models, then every
    /// entry's rules.
    pub fn check(&self, rules: &Rules) -> Result<(), ValidationError> {
        let models = self.model_count();
        if models < rules.min_models {
            return Err(ValidationError::InvalidMap(format!(
                "{models} models, fewer than minModels {}",
                rules.min_models
            )));
        }
        if !self.violations.is_empty() {
            return Err(ValidationError::InvalidMap(describe_violations(
                &self.violations,
            )));
        }
        Ok(())
    }

    /// The index alone, whether or not the map keeps the rules.
    pub fn into_summary(self) -> MapSummary {
        self.summary
    }

    /// [`Self::check`], then the index alone: what the next map is judged against.
    pub fn validated(self, rules: &Rules) -> Result<MapSummary, ValidationError> {
        self.check(rules)?;
        Ok(self.summary)
    }
}

/// One step from an entry down to a value in it, its key borrowed from the input.
enum Step<'de> {
    Field(Cow<'de, str>),
    Index(usize),
}

/// A step kept with a violation, to list violations in the parsed tree's order: object
/// fields by key, array items by index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum OwnedStep {
    Field(String),
    Index(usize),
}

/// What the pass carries from value to value.
#[derive(Default)]
struct State<'de> {
    /// Values seen so far, against [`MAX_VALUES`].
    values: usize,
    /// The path from the current entry down to the current value.
    path: Vec<Step<'de>>,
    /// Whether the current entry is a model whose costs and violations count (not a
    /// reserved key, not a second copy of a key).
    recording: bool,
    /// The current model's cost numbers, by path.
    costs: Vec<(String, f64)>,
    /// The current model's violations (its name filled in when it ends), with their place.
    pending: Vec<(&'static str, String, Vec<OwnedStep>)>,
    /// Every model's violations, with their place in the entry.
    violations: Vec<(Violation, Vec<OwnedStep>)>,
}

impl State<'_> {
    fn spelled(&self) -> String {
        super::spelled(self.path.iter().map(|step| match step {
            Step::Field(field) => super::Step::Field(field),
            Step::Index(index) => super::Step::Index(*index),
        }))
    }

    fn place(&self) -> Vec<OwnedStep> {
        self.path
            .iter()
            .map(|step| match step {
                Step::Field(field) => OwnedStep::Field(field.to_string()),
                Step::Index(index) => OwnedStep::Index(*index),
            })
            .collect()
    }

    /// A leaf below a key containing "cost": a price, or a broken rule.
    fn cost_leaf(&mut self, leaf: &Leaf) {
        if !self.recording {
            return;
        }
        if let Leaf::Number(number) = leaf
            && let Some(price) = number.as_f64()
        {
            self.costs.push((self.spelled(), price));
        }
        if !leaf.is_non_negative_number() {
            let detail = format!("{} is {}", self.spelled(), leaf.shown());
            let place = self.place();
            self.pending
                .push(("costs are finite non-negative numbers", detail, place));
        }
    }
}

/// The top level: the keys and their entries, capped; keys seen twice collected.
struct TopLevel {
    models: BTreeMap<String, ModelSummary>,
    keys: usize,
    objects: usize,
    duplicates: Vec<String>,
}

struct TopLevelVisitor<'s, 'de> {
    state: &'s mut State<'de>,
}

impl<'de> Visitor<'de> for TopLevelVisitor<'_, 'de> {
    type Value = TopLevel;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object mapping model names to entries")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<TopLevel, A::Error> {
        let state = self.state;
        let mut top = TopLevel {
            models: BTreeMap::new(),
            keys: 0,
            objects: 0,
            duplicates: Vec::new(),
        };
        let mut seen: HashSet<Cow<'de, str>> = HashSet::new();
        let mut count = 0usize;
        while let Some(key) = access.next_key_seed(KeySeed)? {
            let first = !seen.contains(&key);
            let model = first && !RESERVED_KEYS.contains(&key.as_ref());
            state.recording = model;
            let node = access.next_value_seed(EntrySeed { state: &mut *state })?;
            let costs = std::mem::take(&mut state.costs);
            let pending = std::mem::take(&mut state.pending);
            count += 1;
            if count > MAX_TOP_LEVEL_KEYS {
                return Err(serde::de::Error::custom(format!(
                    "more than {MAX_TOP_LEVEL_KEYS} top-level keys"
                )));
            }
            if !first {
                top.duplicates.push(key.into_owned());
                continue;
            }
            top.keys += 1;
            if matches!(node.entry.leaf, Leaf::Object) {
                top.objects += 1;
            }
            if model {
                let name = key.to_string();
                state
                    .violations
                    .extend(pending.into_iter().map(|(rule, detail, place)| {
                        let violation = Violation {
                            rule,
                            model: name.clone(),
                            detail,
                        };
                        (violation, place)
                    }));
                let mut costs = costs;
                costs.sort_by(|a, b| a.0.cmp(&b.0));
                top.models.insert(
                    name,
                    ModelSummary {
                        alias: node.alias,
                        costs,
                        fingerprint: node.entry.digest,
                    },
                );
            }
            seen.insert(key);
        }
        top.duplicates.sort();
        top.duplicates.dedup();
        Ok(top)
    }
}

/// A top-level value: a model's entry, whose own fields the entry rules check.
struct EntrySeed<'s, 'de> {
    state: &'s mut State<'de>,
}

/// What the top level needs of an entry.
struct Entry {
    entry: Node,
    alias: bool,
}

impl<'de> DeserializeSeed<'de> for EntrySeed<'_, 'de> {
    type Value = Entry;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Entry, D::Error> {
        let state = self.state;
        let mut alias = false;
        let entry = ValueSeed {
            state: &mut *state,
            under_cost: false,
            fields: Some(&mut alias),
        }
        .deserialize(deserializer)?;
        if state.recording && !matches!(entry.leaf, Leaf::Object) {
            // An entry that is no object breaks that rule alone.
            state.pending.clear();
            state.pending.push((
                "each model entry is a JSON object",
                format!("is {}", entry.leaf.kind()),
                Vec::new(),
            ));
        }
        Ok(Entry { entry, alias })
    }
}

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
use std::fmt;

use serde::de::{DeserializeSeed, MapAccess, Visitor};

use values::{KeySeed, Leaf, Node, OpenKeys, ValueSeed};

use super::cost_paths::{CostPathBounds, spelled_len};
use super::parse::{describe_duplicates, describe_parse_error, describe_shape, is_map_shaped};
use super::summary::{CostPathIds, MapSummary, PendingModel};
use super::violations::Tally;
use super::{MAX_TOP_LEVEL_KEYS, RESERVED_KEYS, Rules, ValidationError};

/// A map read in one pass: its index, and the entry rules it broke (if any).
#[derive(Debug, Clone, PartialEq)]
pub struct IndexedMap {
    summary: MapSummary,
    violations: Tally,
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
        // UTF-8 checked once over the whole body (a tenth of a millisecond for the real
        // map) rather than string by string; a body that fails it is read byte-wise, so
        // the error names the same place with the same message.
        let parsed = match std::str::from_utf8(bytes) {
            Ok(text) => read_top(serde_json::Deserializer::from_str(text), bytes.len()),
            Err(_) => read_top(serde_json::Deserializer::from_slice(bytes), bytes.len()),
        };
        let (top, state) = match parsed {
            Ok(read) => read,
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
        state.cost_bounds.check()?;
        Ok(IndexedMap {
            summary: MapSummary::from_sorted(top.models, state.cost_path_ids),
            violations: state.violations,
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
            return Err(ValidationError::InvalidMap(self.violations.describe()));
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

/// The whole body through the top-level visitor, then nothing but whitespace after it.
fn read_top<'de, R: serde_json::de::Read<'de>>(
    mut deserializer: serde_json::Deserializer<R>,
    body_len: usize,
) -> Result<(TopLevel, State<'de>), serde_json::Error> {
    let mut state = State::new(body_len);
    let top = serde::Deserializer::deserialize_map(
        &mut deserializer,
        TopLevelVisitor { state: &mut state },
    )?;
    deserializer.end()?;
    Ok((top, state))
}

/// One step from an entry down to a value in it, its key borrowed from the input.
enum Step<'de> {
    Field(Cow<'de, str>),
    Index(usize),
}

/// What the pass carries from value to value.
struct State<'de> {
    /// Values seen so far, against [`MAX_VALUES`].
    values: usize,
    /// The path from the current entry down to the current value.
    path: Vec<Step<'de>>,
    /// The keys of the objects open around the current value.
    open_keys: OpenKeys<'de>,
    /// Whether the current entry is a model whose costs and violations count (not a
    /// reserved key).
    recording: bool,
    /// Every cost path seen, numbered.
    cost_path_ids: CostPathIds,
    /// The current model's costs, by path number, and where a path is spelled: buffers
    /// for the whole pass, copied out at each model's end.
    costs: Vec<(u32, f64)>,
    spelled_path: String,
    /// The cost paths spelled so far, against their bounds.
    cost_bounds: CostPathBounds,
    /// The current model's broken rules, named when it ends.
    entry_violations: Tally,
    /// Every model's broken rules.
    violations: Tally,
}

impl<'de> State<'de> {
    fn new(body_len: usize) -> State<'de> {
        State {
            values: 0,
            path: Vec::new(),
            open_keys: OpenKeys::default(),
            recording: false,
            cost_path_ids: CostPathIds::default(),
            costs: Vec::new(),
            spelled_path: String::new(),
            cost_bounds: CostPathBounds::for_body(body_len),
            entry_violations: Tally::default(),
            violations: Tally::default(),
        }
    }

    /// A leaf below a key containing "cost": a price, or a broken rule.
    fn cost_leaf(&mut self, leaf: &Leaf) {
        if !self.recording || !self.cost_bounds.admit(spelled_len(steps(&self.path))) {
            return;
        }
        if let Leaf::Number(number) = leaf
            && let Some(price) = number.as_f64()
        {
            self.spelled_path.clear();
            super::spell_into(steps(&self.path), &mut self.spelled_path);
            let path = self.cost_path_ids.id(&self.spelled_path);
            self.costs.push((path, price));
        }
        if !leaf.is_non_negative_number() {
            let steps = steps(&self.path);
            self.entry_violations.add(
                "costs are finite non-negative numbers",
                steps.clone(),
                || format!("{} is {}", super::spelled(steps), leaf.shown()),
            );
        }
    }
}

/// The steps of `path`, as the shared spelling and ordering take them.
fn steps<'p>(path: &'p [Step<'_>]) -> impl Iterator<Item = super::Step<'p>> + Clone {
    path.iter().map(|step| match step {
        Step::Field(field) => super::Step::Field(field),
        Step::Index(index) => super::Step::Index(*index),
    })
}

/// The top level: the keys and their entries, capped; keys seen twice collected.
struct TopLevel {
    /// The models by name, each once.
    models: Vec<(Box<str>, PendingModel)>,
    keys: usize,
    objects: usize,
    duplicates: Vec<String>,
}

/// A top-level key as it went by, and what its entry gave.
struct TopEntry<'de> {
    key: Cow<'de, str>,
    object: bool,
    model: Option<PendingModel>,
}

impl<'de> TopLevel {
    /// The top level from its entries in document order. Sorting them by key, then place
    /// (a key's first entry stays first) finds the keys seen twice without hashing a key
    /// the source chose, and gives the index its order. The entries are sorted by
    /// reference (a key's leading bytes, the key and its place: four words), not moved.
    fn of(mut entries: Vec<TopEntry<'de>>) -> TopLevel {
        // Each key's first eight bytes, big-endian, go first: most keys differ there, and
        // comparing two numbers costs less than a call to compare two strings.
        let mut order: Vec<(u64, &str, usize)> = entries
            .iter()
            .enumerate()
            .map(|(place, entry)| (prefix(&entry.key), entry.key.as_ref(), place))
            .collect();
        order.sort_unstable();
        let mut duplicates: Vec<String> = Vec::new();
        let mut firsts = Vec::with_capacity(order.len());
        let mut previous: Option<&str> = None;
        for (_, key, place) in order {
            if previous == Some(key) {
                if duplicates.last().map(String::as_str) != Some(key) {
                    duplicates.push(key.to_owned());
                }
                continue;
            }
            previous = Some(key);
            firsts.push(place);
        }
        let mut top = TopLevel {
            models: Vec::with_capacity(firsts.len()),
            keys: firsts.len(),
            objects: 0,
            duplicates,
        };
        for place in firsts {
            let entry = &mut entries[place];
            top.objects += usize::from(entry.object);
            if let Some(model) = entry.model.take() {
                let name = std::mem::take(&mut entry.key).into();
                top.models.push((name, model));
            }
        }
        top
    }
}

/// The first eight bytes of `key` as a number that sorts as they do (shorter keys padded
/// with zeros, which sort first as a shorter key does).
fn prefix(key: &str) -> u64 {
    let mut bytes = [0u8; 8];
    let len = key.len().min(8);
    bytes[..len].copy_from_slice(&key.as_bytes()[..len]);
    u64::from_be_bytes(bytes)
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
        let mut entries = Vec::new();
        while let Some(key) = access.next_key_seed(KeySeed)? {
            // A key's second entry is recorded too: a map with a key twice is refused
            // whatever its entries say.
            let model = !RESERVED_KEYS.contains(&key.as_ref());
            state.recording = model;
            let node = access.next_value_seed(EntrySeed { state: &mut *state })?;
            if entries.len() == MAX_TOP_LEVEL_KEYS {
                return Err(serde::de::Error::custom(format!(
                    "more than {MAX_TOP_LEVEL_KEYS} top-level keys"
                )));
            }
            let model = model.then(|| {
                state
                    .violations
                    .merge_model(&key, &mut state.entry_violations);
                state.cost_bounds.end_model(&key);
                PendingModel {
                    alias: node.alias,
                    fingerprint: node.entry.digest,
                    numbers: state.costs.as_slice().into(),
                }
            });
            state.entry_violations.clear();
            state.costs.clear();
            entries.push(TopEntry {
                key,
                object: matches!(node.entry.leaf, Leaf::Object),
                model,
            });
        }
        Ok(TopLevel::of(entries))
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
            state.entry_violations.clear();
            state.entry_violations.add(
                "each model entry is a JSON object",
                std::iter::empty(),
                || format!("is {}", entry.leaf.kind()),
            );
        }
        Ok(Entry { entry, alias })
    }
}

#[cfg(test)]
mod tests {
    use super::prefix;

    #[test]
    fn keys_sorted_by_prefix_then_whole_are_sorted_as_strings() {
        let pieces = [
            "", "a", "ab", "\0", "a\0", "abcdefgh", "abcdefg", "é", "\u{7f}", "z",
        ];
        let mut keys: Vec<String> = pieces
            .iter()
            .flat_map(|first| pieces.iter().map(move |second| format!("{first}{second}")))
            .collect();
        keys.sort_unstable_by_key(|key| std::cmp::Reverse(key.clone()));
        let mut by_prefix: Vec<(u64, &str)> =
            keys.iter().map(|key| (prefix(key), key.as_str())).collect();
        by_prefix.sort_unstable();
        let mut by_string: Vec<&str> = keys.iter().map(String::as_str).collect();
        by_string.sort_unstable();
        let by_prefix: Vec<&str> = by_prefix.into_iter().map(|(_, key)| key).collect();
        assert_eq!(by_prefix, by_string);
    }
}

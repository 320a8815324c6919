//! What the guards and the diff need of a map: per model, whether it is an alias row, its
//! cost numbers, and a fingerprint of its entry. The operator keeps this of the last good
//! map instead of its parsed form (or its bytes, parsed again at every change): about a
//! twentieth of the memory of the parsed map, and no second parse per sync.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::ops::Range;

use serde_json::Value;

use super::{ModelMap, visit_costs};

/// The models of a map (reserved keys left out), as the guards and the diff see them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MapSummary {
    /// By name, each once: a sorted list rather than a tree (a 35 MB map has 48,760 models,
    /// and is looked up by name only to compare it with another map).
    models: Vec<(String, ModelSummary)>,
}

/// One model, as the guards and the diff see it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    /// An `{"alias_of": ...}` row: a name for another model, not a priced model.
    pub alias: bool,
    /// Every number under a key containing `cost`, by field path, sorted by path.
    pub costs: Costs,
    /// A hash of the entry as parsed JSON: equal entries (whatever their layout) have equal
    /// fingerprints, and `4096` differs from `4096.0`, as LiteLLM reads them.
    pub fingerprint: u64,
}

impl ModelSummary {
    /// The summary of one entry: a map's, or a deployment's `model_info` as a proxy
    /// reports it (the same cost paths, so the two compare field by field).
    pub fn of(entry: &Value) -> ModelSummary {
        let mut costs = Vec::new();
        visit_costs(entry, &mut |leaf| {
            if let Some(number) = leaf.value.as_f64() {
                costs.push((leaf.spelled(), number));
            }
        });
        let mut hasher = DefaultHasher::new();
        hash_value(entry, &mut hasher);
        ModelSummary {
            alias: entry.get("alias_of").is_some(),
            costs: Costs::from_pairs(costs.iter().map(|(path, number)| (path.as_str(), *number))),
            fingerprint: hasher.finish(),
        }
    }

    /// Whether some cost number is > 0 (the definition of a priced model).
    pub fn is_priced(&self) -> bool {
        self.costs.iter().any(|(_, price)| price > 0.0)
    }

    /// The cost number at `path`, if the entry has one.
    pub fn cost(&self, path: &str) -> Option<f64> {
        self.costs.get(path)
    }
}

/// A model's cost numbers by field path, sorted by path. The paths share one string: a
/// model's costs take two allocations however many it has (a map holds tens of thousands).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Costs {
    paths: String,
    /// Each path's place in `paths`, and its number.
    numbers: Vec<(Range<usize>, f64)>,
}

impl Costs {
    /// The costs from `(path, number)` pairs in any order.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, f64)>) -> Costs {
        let mut text = String::new();
        let mut spans = Vec::new();
        for (path, number) in pairs {
            let start = text.len();
            text.push_str(path);
            spans.push((start..text.len(), number));
        }
        Costs::from_spans(&text, &mut spans)
    }

    /// The costs spelled in `text`, each at its range, in any order: sorted into an exact
    /// fit, so the caller's buffers can be used again.
    pub(super) fn from_spans(text: &str, spans: &mut [(Range<usize>, f64)]) -> Costs {
        spans.sort_by(|a, b| text[a.0.clone()].cmp(&text[b.0.clone()]));
        let mut costs = Costs {
            paths: String::with_capacity(spans.iter().map(|(range, _)| range.len()).sum()),
            numbers: Vec::with_capacity(spans.len()),
        };
        for (range, number) in spans.iter() {
            let start = costs.paths.len();
            costs.paths.push_str(&text[range.clone()]);
            costs.numbers.push((start..costs.paths.len(), *number));
        }
        costs
    }

    /// Every `(path, number)`, by path.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.numbers
            .iter()
            .map(|(range, number)| (&self.paths[range.clone()], *number))
    }

    /// The number at `path`, if there is one.
    pub fn get(&self, path: &str) -> Option<f64> {
        let index = self
            .numbers
            .binary_search_by(|(range, _)| self.paths[range.clone()].cmp(path))
            .ok()?;
        Some(self.numbers[index].1)
    }
}

impl MapSummary {
    /// The summary of a parsed map.
    pub fn of(map: &ModelMap) -> MapSummary {
        MapSummary {
            models: map
                .models()
                .map(|(name, entry)| (name.to_owned(), ModelSummary::of(entry)))
                .collect(),
        }
    }

    /// The summary of models indexed elsewhere (the one-pass reader): by name, each once.
    pub(super) fn from_sorted(models: Vec<(String, ModelSummary)>) -> MapSummary {
        debug_assert!(models.windows(2).all(|pair| pair[0].0 < pair[1].0));
        MapSummary { models }
    }

    /// Every model, by name.
    pub fn models(&self) -> impl Iterator<Item = (&str, &ModelSummary)> {
        self.models
            .iter()
            .map(|(name, model)| (name.as_str(), model))
    }

    /// The model `name`, if the map has it.
    pub fn model(&self, name: &str) -> Option<&ModelSummary> {
        let index = self
            .models
            .binary_search_by(|(model, _)| model.as_str().cmp(name))
            .ok()?;
        Some(&self.models[index].1)
    }

    /// How many models the map holds.
    pub fn model_count(&self) -> usize {
        self.models.len()
    }
}

/// Feeds `value` to `hasher` so that values equal as parsed JSON hash equal: object fields
/// in key order, and numbers by kind (an integer is not the float of the same value).
fn hash_value(value: &Value, hasher: &mut DefaultHasher) {
    match value {
        Value::Null => 0u8.hash(hasher),
        Value::Bool(b) => (1u8, b).hash(hasher),
        Value::Number(number) => {
            if let Some(n) = number.as_u64() {
                (2u8, n).hash(hasher);
            } else if let Some(n) = number.as_i64() {
                (3u8, n).hash(hasher);
            } else {
                (4u8, number.as_f64().map(f64::to_bits)).hash(hasher);
            }
        }
        Value::String(text) => (5u8, text).hash(hasher),
        Value::Array(items) => {
            (6u8, items.len()).hash(hasher);
            for item in items {
                hash_value(item, hasher);
            }
        }
        Value::Object(fields) => {
            (7u8, fields.len()).hash(hasher);
            // serde_json's map is a BTreeMap here (no `preserve_order`): keys come sorted.
            for (key, child) in fields {
                key.hash(hasher);
                hash_value(child, hasher);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn summary(value: Value) -> MapSummary {
        MapSummary::of(&ModelMap::parse(value.to_string().as_bytes()).unwrap())
    }

    #[test]
    fn fingerprints_follow_parsed_equality_not_layout() {
        let a = ModelMap::parse(br#"{"m": {"a": 1, "b": [1.5, "x"]}}"#).unwrap();
        let b = ModelMap::parse(b"{ \"m\" : {\"b\":[1.5,\"x\"],\n \"a\":1} }").unwrap();
        let float = ModelMap::parse(br#"{"m": {"a": 1.0, "b": [1.5, "x"]}}"#).unwrap();
        let fingerprint = |map: &ModelMap| MapSummary::of(map).model("m").unwrap().fingerprint;
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&float));
        assert_eq!(a == b, fingerprint(&a) == fingerprint(&b));
    }

    #[test]
    fn costs_aliases_and_reserved_keys() {
        let map = summary(json!({
            "sample_spec": {"input_cost_per_token": 1},
            "gpt": {"output_cost_per_token": 2e-6, "input_cost_per_token": 0,
                    "tiers": [{"cost": 3}]},
            "alias": {"alias_of": "gpt"},
            "free": {"mode": "embedding"},
        }));
        assert_eq!(map.model_count(), 3);
        let gpt = map.model("gpt").unwrap();
        assert_eq!(
            gpt.costs.iter().collect::<Vec<_>>(),
            [
                ("input_cost_per_token", 0.0),
                ("output_cost_per_token", 2e-6),
                ("tiers[0].cost", 3.0),
            ]
        );
        assert_eq!(gpt.cost("output_cost_per_token"), Some(2e-6));
        assert_eq!(gpt.cost("missing"), None);
        assert!(gpt.is_priced() && !gpt.alias);
        assert!(map.model("alias").unwrap().alias);
        assert!(!map.model("free").unwrap().is_priced());
        assert!(map.model("sample_spec").is_none());
    }
}

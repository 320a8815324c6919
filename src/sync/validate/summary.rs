//! What the guards and the diff need of a map: per model, whether it is an alias row, its
//! cost numbers, and a fingerprint of its entry. The operator keeps this of the last good
//! map instead of its parsed form (or its bytes, parsed again at every change): about a
//! twentieth of the memory of the parsed map, and no second parse per sync.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use serde_json::Value;

use super::{ModelMap, visit_costs};

/// The models of a map (reserved keys left out), as the guards and the diff see them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MapSummary {
    /// By name, each once: a sorted list rather than a tree (a 35 MB map has 48,760 models,
    /// and is looked up by name only to compare it with another map).
    models: Vec<(Box<str>, ModelSummary)>,
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
        let mut paths = CostPathIds::default();
        let pending = PendingModel::of(entry, &mut paths);
        pending.with_paths(&paths.finish())
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

/// A model's cost numbers by field path, sorted by path. The paths are its map's, each
/// spelled once for all models (a 35 MB map: 200,000 numbers under a few hundred paths).
#[derive(Debug, Clone, Default)]
pub struct Costs {
    paths: Arc<CostPaths>,
    /// Each number with its path's place in `paths`, sorted by it.
    numbers: Box<[(u32, f64)]>,
}

impl PartialEq for Costs {
    fn eq(&self, other: &Costs) -> bool {
        self.iter().eq(other.iter())
    }
}

/// The cost paths of a map, each once, sorted.
#[derive(Debug, Default)]
struct CostPaths(Box<[Box<str>]>);

impl Costs {
    /// The costs from `(path, number)` pairs in any order.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, f64)>) -> Costs {
        let mut paths = CostPathIds::default();
        let numbers = pairs
            .into_iter()
            .map(|(path, number)| (paths.id(path), number))
            .collect();
        paths.finish().costs(numbers)
    }

    /// Every `(path, number)`, by path.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.numbers
            .iter()
            .map(|(path, number)| (self.paths.0[*path as usize].as_ref(), *number))
    }

    /// The number at `path`, if there is one.
    pub fn get(&self, path: &str) -> Option<f64> {
        let path = self
            .paths
            .0
            .binary_search_by(|known| known.as_ref().cmp(path))
            .ok();
        let path = u32::try_from(path?).ok()?;
        let index = self
            .numbers
            .binary_search_by_key(&path, |(known, _)| *known)
            .ok()?;
        Some(self.numbers[index].1)
    }
}

/// The cost paths of a map as it is read, each given a number when first seen; sorted
/// once the map is read.
#[derive(Debug, Default)]
pub(super) struct CostPathIds {
    /// Seeded at random: the paths are the source's.
    ids: foldhash::HashMap<Box<str>, u32>,
}

impl CostPathIds {
    /// The number of `path`. A map has at most a body's size of cost paths (see
    /// `cost_paths`), far fewer than `u32::MAX`.
    pub(super) fn id(&mut self, path: &str) -> u32 {
        if let Some(id) = self.ids.get(path) {
            return *id;
        }
        let id = u32::try_from(self.ids.len()).unwrap_or(u32::MAX);
        self.ids.insert(path.into(), id);
        id
    }

    /// The paths sorted, and where each number given went.
    fn finish(self) -> SortedPaths {
        let mut paths: Vec<(Box<str>, u32)> = self.ids.into_iter().collect();
        paths.sort_unstable();
        let mut places = vec![0; paths.len()];
        for (place, (_, id)) in paths.iter().enumerate() {
            places[*id as usize] = u32::try_from(place).unwrap_or(u32::MAX);
        }
        SortedPaths {
            paths: Arc::new(CostPaths(paths.into_iter().map(|(path, _)| path).collect())),
            places,
        }
    }
}

struct SortedPaths {
    paths: Arc<CostPaths>,
    /// By the number [`CostPathIds::id`] gave, the path's place in `paths`.
    places: Vec<u32>,
}

impl SortedPaths {
    /// Costs numbered by [`CostPathIds::id`], renumbered by place and sorted.
    fn costs(&self, mut numbers: Box<[(u32, f64)]>) -> Costs {
        for (path, _) in numbers.iter_mut() {
            *path = self.places[*path as usize];
        }
        numbers.sort_unstable_by_key(|(path, _)| *path);
        Costs {
            paths: Arc::clone(&self.paths),
            numbers,
        }
    }
}

/// A model read, its costs numbered by [`CostPathIds`] until its map is read whole.
#[derive(Debug)]
pub(super) struct PendingModel {
    pub(super) alias: bool,
    pub(super) fingerprint: u64,
    pub(super) numbers: Box<[(u32, f64)]>,
}

impl PendingModel {
    fn of(entry: &Value, paths: &mut CostPathIds) -> PendingModel {
        let mut numbers = Vec::new();
        visit_costs(entry, &mut |leaf| {
            if let Some(number) = leaf.value.as_f64() {
                numbers.push((paths.id(&leaf.spelled()), number));
            }
        });
        let mut hasher = DefaultHasher::new();
        hash_value(entry, &mut hasher);
        PendingModel {
            alias: entry.get("alias_of").is_some(),
            fingerprint: hasher.finish(),
            numbers: numbers.into(),
        }
    }

    fn with_paths(self, sorted: &SortedPaths) -> ModelSummary {
        ModelSummary {
            alias: self.alias,
            costs: sorted.costs(self.numbers),
            fingerprint: self.fingerprint,
        }
    }
}

impl MapSummary {
    /// The summary of a parsed map.
    pub fn of(map: &ModelMap) -> MapSummary {
        let mut paths = CostPathIds::default();
        let models = map
            .models()
            .map(|(name, entry)| (name.into(), PendingModel::of(entry, &mut paths)))
            .collect();
        MapSummary::from_sorted(models, paths)
    }

    /// The summary of models read elsewhere (the one-pass reader): by name, each once,
    /// their costs numbered by `paths`.
    pub(super) fn from_sorted(
        models: Vec<(Box<str>, PendingModel)>,
        paths: CostPathIds,
    ) -> MapSummary {
        debug_assert!(models.windows(2).all(|pair| pair[0].0 < pair[1].0));
        let sorted = paths.finish();
        MapSummary {
            models: models
                .into_iter()
                .map(|(name, model)| (name, model.with_paths(&sorted)))
                .collect(),
        }
    }

    /// Every model, by name.
    pub fn models(&self) -> impl Iterator<Item = (&str, &ModelSummary)> {
        self.models
            .iter()
            .map(|(name, model)| (name.as_ref(), model))
    }

    /// The model `name`, if the map has it.
    pub fn model(&self, name: &str) -> Option<&ModelSummary> {
        let index = self
            .models
            .binary_search_by(|(model, _)| model.as_ref().cmp(name))
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
    fn models_share_their_map_s_paths_and_list_costs_by_path_whatever_the_order_read() {
        let body = br#"{"a": {"z_cost": 1, "tiers": [{"cost": 2}], "b_cost": 3},
                        "b": {"b_cost": 4, "new_cost": 5, "z_cost": 6}}"#;
        let onepass = super::super::IndexedMap::read(body).unwrap().into_summary();
        let tree = MapSummary::of(&ModelMap::parse(body).unwrap());
        for map in [&onepass, &tree] {
            let costs = |name| map.model(name).unwrap().costs.iter().collect::<Vec<_>>();
            assert_eq!(
                costs("a"),
                [("b_cost", 3.0), ("tiers[0].cost", 2.0), ("z_cost", 1.0)]
            );
            assert_eq!(
                costs("b"),
                [("b_cost", 4.0), ("new_cost", 5.0), ("z_cost", 6.0)]
            );
            let b = &map.model("b").unwrap().costs;
            assert_eq!(
                (b.get("new_cost"), b.get("tiers[0].cost")),
                (Some(5.0), None)
            );
        }
        for name in ["a", "b"] {
            // Equal costs under tables numbered apart (the fingerprints' digests differ).
            assert_eq!(
                onepass.model(name).unwrap().costs,
                tree.model(name).unwrap().costs
            );
        }
        let alone = Costs::from_pairs([("z_cost", 6.0), ("b_cost", 4.0), ("new_cost", 5.0)]);
        assert_eq!(onepass.model("b").unwrap().costs, alone);
        assert_ne!(onepass.model("a").unwrap().costs, alone);
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

//! Overrides: your prices over upstream's, without forking the map. The published map is the
//! fetched map with each override merged into its entry field by field (a field set to null
//! is removed), upstream key order kept, new models appended in name order. Without
//! overrides the published bytes are the fetched bytes; with them the same inputs always
//! give the same bytes, so the digest changes only when something changed.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use super::validate::{IndexedMap, RESERVED_KEYS, Rules};

/// How many model names the report lists.
const LISTED: usize = 20;

/// One model's override: fields to set, or (null) to remove.
pub type Fields = serde_json::Map<String, Value>;

/// Where a layer of overrides comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `spec.overrides.models`.
    Inline,
    /// A key of a ConfigMap named in `spec.overrides.configMapRefs`.
    ConfigMap {
        /// The ConfigMap.
        name: String,
        /// The key.
        key: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Inline => f.write_str("spec.overrides.models"),
            Origin::ConfigMap { name, key } => write!(f, "ConfigMap {name} key {key}"),
        }
    }
}

/// The overrides of one origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    /// Where they come from.
    pub origin: Origin,
    /// By model.
    pub models: BTreeMap<String, Fields>,
}

/// Why overrides cannot be applied. The last good map stays published meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverrideError {
    /// A referenced ConfigMap does not exist.
    #[error("ConfigMap {name} (spec.overrides.configMapRefs) not found")]
    MissingConfigMap {
        /// Its name.
        name: String,
    },
    /// A referenced ConfigMap has no such key.
    #[error("ConfigMap {name} (spec.overrides.configMapRefs) has no key {key}")]
    MissingKey {
        /// Its name.
        name: String,
        /// The key.
        key: String,
    },
    /// The text is not a JSON object of model entries.
    #[error("{origin} is not a JSON object of model entries: {detail}")]
    NotModels {
        /// Where it came from.
        origin: String,
        /// What is wrong.
        detail: String,
    },
    /// An overridden entry breaks the map's entry rules.
    #[error("the overrides break the map's rules: {detail}")]
    Entry {
        /// The rules and models.
        detail: String,
    },
}

/// Every layer, in the order they apply: `configMapRefs` in order, inline models last.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Overrides {
    layers: Vec<Layer>,
}

impl Overrides {
    /// The overrides of these layers, in order.
    pub fn new(layers: Vec<Layer>) -> Overrides {
        Overrides { layers }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.layers.iter().all(|layer| layer.models.is_empty())
    }

    /// Per model, the fields of every layer merged in order (a later layer wins field by
    /// field; null stays, meaning "remove").
    pub fn combined(&self) -> BTreeMap<String, Fields> {
        let mut combined: BTreeMap<String, Fields> = BTreeMap::new();
        for layer in &self.layers {
            for (model, fields) in &layer.models {
                let entry = combined.entry(model.clone()).or_default();
                for (field, value) in fields {
                    entry.insert(field.clone(), value.clone());
                }
            }
        }
        combined
    }

    /// `sha256:<hex>` of what the overrides say, whatever layer says it: a change of this
    /// digest means the published map must be made again.
    pub fn digest(&self) -> String {
        // BTreeMaps serialize in key order: the same overrides, the same bytes.
        let canonical = serde_json::to_vec(&self.combined()).unwrap_or_default();
        crate::digest::sha256_digest(&canonical)
    }
}

/// The overrides in one ConfigMap key: a JSON object of model entries.
pub fn layer_from_json(origin: Origin, text: &str) -> Result<Layer, OverrideError> {
    let not_models = |detail: String| OverrideError::NotModels {
        origin: origin.to_string(),
        detail,
    };
    // The strict reader first (duplicate keys, depth, size); then the fields themselves,
    // which the merge needs: a layer is the tenant's few entries, not a map.
    IndexedMap::read_layer(text.as_bytes()).map_err(|err| not_models(err.to_string()))?;
    let parsed: BTreeMap<String, Value> =
        serde_json::from_str(text).map_err(|err| not_models(err.to_string()))?;
    let mut models = BTreeMap::new();
    for (model, entry) in &parsed {
        let Some(fields) = entry.as_object() else {
            return Err(not_models(format!("the entry of {model} is not an object")));
        };
        models.insert(model.clone(), fields.clone());
    }
    check_layer(&origin, &models)?;
    Ok(Layer { origin, models })
}

/// The inline overrides of the spec.
pub fn inline_layer(models: &BTreeMap<String, Fields>) -> Result<Layer, OverrideError> {
    check_layer(&Origin::Inline, models)?;
    Ok(Layer {
        origin: Origin::Inline,
        models: models.clone(),
    })
}

fn check_layer(origin: &Origin, models: &BTreeMap<String, Fields>) -> Result<(), OverrideError> {
    if let Some(reserved) = models.keys().find(|m| RESERVED_KEYS.contains(&m.as_str())) {
        return Err(OverrideError::NotModels {
            origin: origin.to_string(),
            detail: format!("{reserved} is not a model"),
        });
    }
    // The fields an override sets pass the same rules as the map's entries.
    let set: BTreeMap<String, Value> = models
        .iter()
        .map(|(model, fields)| (model.clone(), Value::Object(without_nulls(fields))))
        .collect();
    // The same entry rules as the map's, by the same reader: the set written out and read.
    let entry = |err: String| OverrideError::Entry {
        detail: format!("{origin}: {err}"),
    };
    let text = serde_json::to_vec(&set).map_err(|err| entry(err.to_string()))?;
    let rules = Rules {
        min_models: 0,
        ..Rules::default()
    };
    IndexedMap::read_layer(&text)
        .and_then(|layer| layer.check(&rules))
        .map_err(|err| entry(err.to_string()))
}

fn without_nulls(fields: &Fields) -> Fields {
    fields
        .iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(field, value)| (field.clone(), value.clone()))
        .collect()
}

/// What applying the overrides did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Applied {
    /// How many models have an override.
    pub applied: usize,
    /// Models the overrides add (not upstream, or no longer upstream), first ones, sorted.
    pub added: Vec<String>,
    /// How many models the overrides add.
    pub added_count: usize,
    /// Models whose upstream entry an override changes, first ones, sorted.
    pub shadowing: Vec<String>,
    /// Models whose override changes nothing of the upstream entry (harmless), first ones.
    pub unchanged: Vec<String>,
}

/// The published map: the fetched bytes with the overrides merged in.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// The bytes to publish.
    pub bytes: Vec<u8>,
    /// What the overrides did.
    pub applied: Applied,
}

/// Merges `overrides` into `fetched`. Without overrides, or when `fetched` is not a JSON
/// object (the structure rules then say why), the bytes are `fetched` as they are.
pub fn apply(fetched: &[u8], overrides: &Overrides) -> Published {
    let unchanged = || Published {
        bytes: fetched.to_vec(),
        applied: Applied::default(),
    };
    if overrides.is_empty() {
        return unchanged();
    }
    let Ok(Ordered(entries)) = serde_json::from_slice::<Ordered>(fetched) else {
        return unchanged();
    };
    let mut combined = overrides.combined();
    let mut applied = Applied {
        applied: combined.len(),
        ..Applied::default()
    };
    let mut out = String::with_capacity(fetched.len() + 4096);
    out.push('{');
    let mut first = true;
    let mut push = |out: &mut String, key: &str, value: &str| {
        out.push_str(if first { "\n    " } else { ",\n    " });
        first = false;
        out.push_str(&serde_json::to_string(key).unwrap_or_default());
        out.push_str(": ");
        out.push_str(value);
    };
    for (key, raw) in &entries {
        match combined.remove(key) {
            Some(fields) => {
                let upstream: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
                let merged = merge(&upstream, &fields);
                if merged == upstream {
                    applied.unchanged.push(key.clone());
                } else {
                    applied.shadowing.push(key.clone());
                }
                push(&mut out, key, &pretty(&merged));
            }
            None => push(&mut out, key, raw.get()),
        }
    }
    // What is left is not upstream: new models, in name order (the map's BTreeMap order).
    for (model, fields) in combined {
        let entry = Value::Object(without_nulls(&fields));
        applied.added_count += 1;
        applied.added.push(model.clone());
        push(&mut out, &model, &pretty(&entry));
    }
    out.push_str("\n}\n");
    applied.added.truncate(LISTED);
    applied.shadowing.sort();
    applied.shadowing.truncate(LISTED);
    applied.unchanged.sort();
    applied.unchanged.truncate(LISTED);
    Published {
        bytes: out.into_bytes(),
        applied,
    }
}

/// `upstream` (an entry) with `fields` set, and their nulls removed.
fn merge(upstream: &Value, fields: &Fields) -> Value {
    let mut merged = upstream.as_object().cloned().unwrap_or_default();
    for (field, value) in fields {
        if value.is_null() {
            merged.remove(field);
        } else {
            merged.insert(field.clone(), value.clone());
        }
    }
    Value::Object(merged)
}

/// An entry as upstream lays it out: four spaces a level, nested under a top-level key.
fn pretty(entry: &Value) -> String {
    let mut bytes = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut bytes, formatter);
    if serde::Serialize::serialize(entry, &mut serializer).is_err() {
        return "{}".to_owned();
    }
    String::from_utf8_lossy(&bytes).replace('\n', "\n    ")
}

/// The top-level entries in the order the source wrote them, each as its raw JSON text.
struct Ordered(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(OrderedVisitor)
    }
}

struct OrderedVisitor;

impl<'de> Visitor<'de> for OrderedVisitor {
    type Value = Ordered;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Ordered, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = access.next_entry::<String, Box<RawValue>>()? {
            entries.push(entry);
        }
        Ok(Ordered(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const UPSTREAM: &str = r#"{
    "sample_spec": {
        "input_cost_per_token": 0.0
    },
    "gpt-4o": {
        "input_cost_per_token": 2.5e-06,
        "output_cost_per_token": 1e-05,
        "mode": "chat"
    },
    "claude": {
        "input_cost_per_token": 3e-06
    }
}
"#;

    fn fields(value: Value) -> Fields {
        value.as_object().unwrap().clone()
    }

    fn inline(models: Value) -> Overrides {
        let models: BTreeMap<String, Fields> = models
            .as_object()
            .unwrap()
            .iter()
            .map(|(model, value)| (model.clone(), fields(value.clone())))
            .collect();
        Overrides::new(vec![inline_layer(&models).unwrap()])
    }

    fn parsed(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn without_overrides_the_fetched_bytes_are_published_as_they_are() {
        let published = apply(UPSTREAM.as_bytes(), &Overrides::default());
        assert_eq!(published.bytes, UPSTREAM.as_bytes());
        assert_eq!(published.applied, Applied::default());
    }

    #[test]
    fn a_price_is_published_as_the_number_written() {
        // The nearest double of each; serde_json's default parser is one ULP off on these.
        for price in ["1.0099999999999999e-6", "1.0000000000000002e-6", "2.7e-6"] {
            let text = format!(r#"{{"gpt-4o": {{"input_cost_per_token": {price}}}}}"#);
            let layer = layer_from_json(Origin::Inline, &text).unwrap();
            let published = apply(UPSTREAM.as_bytes(), &Overrides::new(vec![layer]));
            let written: f64 = price.parse().unwrap();
            let text = String::from_utf8(published.bytes).unwrap();
            assert!(text.contains(&format!("{written:?}")), "{price}: {text}");
        }
    }

    #[test]
    fn fields_are_merged_nulls_removed_and_new_models_appended_in_name_order() {
        let overrides = inline(json!({
            "gpt-4o": {"input_cost_per_token": 2.25e-6, "mode": null},
            "zeta/private": {"input_cost_per_token": 1e-6, "litellm_provider": "azure"},
            "azure/our-gpt-4o-eu": {"input_cost_per_token": 2.5e-6, "max_input_tokens": 128000},
        }));
        let published = apply(UPSTREAM.as_bytes(), &overrides);
        let map = parsed(&published.bytes);
        assert_eq!(map["gpt-4o"]["input_cost_per_token"], 2.25e-6);
        assert_eq!(map["gpt-4o"]["output_cost_per_token"], 1e-5);
        assert!(
            map["gpt-4o"].get("mode").is_none(),
            "null removes the field"
        );
        assert_eq!(map["claude"]["input_cost_per_token"], 3e-6);
        let keys: Vec<String> = serde_json::from_slice::<Ordered>(&published.bytes)
            .unwrap()
            .0
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        assert_eq!(
            keys,
            [
                "sample_spec",
                "gpt-4o",
                "claude",
                "azure/our-gpt-4o-eu",
                "zeta/private"
            ],
            "upstream order kept, new models appended in name order"
        );
        assert_eq!(published.applied.applied, 3);
        assert_eq!(
            published.applied.added,
            ["azure/our-gpt-4o-eu", "zeta/private"]
        );
        assert_eq!(published.applied.shadowing, ["gpt-4o"]);
        // Untouched entries keep upstream's exact text.
        let text = String::from_utf8(published.bytes).unwrap();
        assert!(
            text.contains("\"claude\": {\n        \"input_cost_per_token\": 3e-06\n    }"),
            "{text}"
        );
    }

    #[test]
    fn the_same_inputs_give_the_same_bytes() {
        let overrides = inline(json!({"gpt-4o": {"input_cost_per_token": 2.25e-6}}));
        let once = apply(UPSTREAM.as_bytes(), &overrides);
        let twice = apply(UPSTREAM.as_bytes(), &overrides);
        assert_eq!(once.bytes, twice.bytes);
        assert_eq!(
            overrides.digest(),
            inline(json!({"gpt-4o": {"input_cost_per_token": 2.25e-6}})).digest()
        );
        assert_ne!(
            overrides.digest(),
            inline(json!({"gpt-4o": {"input_cost_per_token": 2.3e-6}})).digest()
        );
    }

    #[test]
    fn an_override_of_a_model_upstream_removed_stays_as_an_added_model() {
        let overrides = inline(json!({"claude": {"input_cost_per_token": 2e-6, "mode": "chat"}}));
        let without_claude = r#"{"gpt-4o": {"input_cost_per_token": 2.5e-06}}"#;
        let published = apply(without_claude.as_bytes(), &overrides);
        assert_eq!(
            parsed(&published.bytes)["claude"],
            json!({"input_cost_per_token": 2e-6, "mode": "chat"})
        );
        assert_eq!(published.applied.added, ["claude"]);
    }

    #[test]
    fn an_override_identical_to_upstream_is_reported_and_changes_nothing() {
        let overrides = inline(json!({"claude": {"input_cost_per_token": 3e-6}}));
        let published = apply(UPSTREAM.as_bytes(), &overrides);
        assert_eq!(published.applied.unchanged, ["claude"]);
        assert!(published.applied.shadowing.is_empty());
        assert_eq!(parsed(&published.bytes), parsed(UPSTREAM.as_bytes()));
    }

    #[test]
    fn layers_apply_in_order_with_inline_last() {
        let team = layer_from_json(
            Origin::ConfigMap {
                name: "team".into(),
                key: "overrides.json".into(),
            },
            r#"{"gpt-4o": {"input_cost_per_token": 1e-6, "output_cost_per_token": 4e-6}}"#,
        )
        .unwrap();
        let mine = inline_layer(&BTreeMap::from([(
            "gpt-4o".to_owned(),
            fields(json!({"input_cost_per_token": 2e-6})),
        )]))
        .unwrap();
        let published = apply(UPSTREAM.as_bytes(), &Overrides::new(vec![team, mine]));
        let map = parsed(&published.bytes);
        assert_eq!(map["gpt-4o"]["input_cost_per_token"], 2e-6);
        assert_eq!(map["gpt-4o"]["output_cost_per_token"], 4e-6);
    }

    #[test]
    fn broken_overrides_are_refused_naming_where_they_come_from() {
        let origin = || Origin::ConfigMap {
            name: "team".into(),
            key: "overrides.json".into(),
        };
        let err = layer_from_json(origin(), "not json").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("ConfigMap team key overrides.json is not a JSON object"),
            "{err}"
        );
        let err = layer_from_json(origin(), r#"{"m": 3}"#).unwrap_err();
        assert!(
            err.to_string().contains("the entry of m is not an object"),
            "{err}"
        );
        let err = layer_from_json(origin(), r#"{"m": {"input_cost_per_token": -1}}"#).unwrap_err();
        assert!(
            err.to_string().contains("ConfigMap team key overrides.json: invalid map: rule \"costs are finite non-negative numbers\""),
            "{err}"
        );
        let err = inline_layer(&BTreeMap::from([(
            "m".to_owned(),
            fields(json!({"input_cost_per_token": "cheap"})),
        )]))
        .unwrap_err();
        assert!(err.to_string().contains("spec.overrides.models"), "{err}");
        let err = layer_from_json(origin(), r#"{"sample_spec": {}}"#).unwrap_err();
        assert!(
            err.to_string().contains("sample_spec is not a model"),
            "{err}"
        );
    }
}

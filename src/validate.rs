//! Validation of a fetched map: LiteLLM's own acceptance rules, plus stricter checks that
//! every real map passes (litellm 1.60 to 1.110), so a broken or hostile source never
//! replaces the last good map.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::Value;

/// Top-level keys that are not models.
pub const RESERVED_KEYS: [&str; 2] = ["sample_spec", "fallback_generalizations"];

/// The most top-level keys a map may have. Real maps have about 5,000; this bounds the
/// memory a hostile source can make the parser use.
pub const MAX_TOP_LEVEL_KEYS: usize = 100_000;

/// Numeric fields holding token counts.
const TOKEN_FIELDS: [&str; 3] = ["max_tokens", "max_input_tokens", "max_output_tokens"];
/// Fields that must be strings where present.
const STRING_FIELDS: [&str; 2] = ["litellm_provider", "mode"];
/// How many offending models an error message names per rule.
const EXAMPLES_PER_RULE: usize = 5;

/// Why a map was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// Not a map LiteLLM (or our stricter rules) would accept.
    #[error("invalid map: {0}")]
    InvalidMap(String),
    /// The map drops too many of the last good map's models.
    #[error("shrink guard: {0}")]
    ShrinkGuard(String),
}

/// A parsed map: every top-level key with its entry, reserved keys included.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelMap {
    entries: BTreeMap<String, Value>,
}

/// The limits a map must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Fewest models allowed.
    pub min_models: usize,
    /// Largest share (percent) of the last good map's models a new map may drop.
    pub max_removed_percent: u32,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            min_models: 50,
            max_removed_percent: 50,
        }
    }
}

impl ModelMap {
    /// Parses a map, bounded: nesting deeper than serde_json's recursion limit (128) and
    /// more than [`MAX_TOP_LEVEL_KEYS`] keys are errors, never a crash. A key that appears
    /// twice in one object is an error too: JSON readers disagree on which copy wins (Python's
    /// `json`, and so LiteLLM, keeps the last), so such a map prices differently depending on
    /// who reads it.
    pub fn parse(bytes: &[u8]) -> Result<ModelMap, ValidationError> {
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let parsed = TopLevel::deserialize(&mut deserializer).and_then(|top| {
            deserializer.end()?;
            Ok(top)
        });
        match parsed {
            Ok(TopLevel { duplicates, .. }) if !duplicates.is_empty() => Err(
                ValidationError::InvalidMap(describe_duplicates(&duplicates)),
            ),
            Ok(TopLevel { entries, .. }) => Ok(ModelMap { entries }),
            Err(err) => Err(ValidationError::InvalidMap(describe_parse_error(
                bytes, &err,
            ))),
        }
    }

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

/// Checks a parsed map against LiteLLM's rules, ours, and the shrink guard against the last
/// good map (none on a first sync).
pub fn validate(
    map: &ModelMap,
    rules: &Rules,
    last_good: Option<&ModelMap>,
) -> Result<(), ValidationError> {
    let models = map.model_count();
    if models < rules.min_models {
        return Err(ValidationError::InvalidMap(format!(
            "{models} models, fewer than minModels {}",
            rules.min_models
        )));
    }
    let violations = entry_violations(map);
    if !violations.is_empty() {
        return Err(ValidationError::InvalidMap(describe_violations(
            &violations,
        )));
    }
    if let Some(last_good) = last_good {
        shrink_guard(map, rules, last_good)?;
    }
    Ok(())
}

fn shrink_guard(
    map: &ModelMap,
    rules: &Rules,
    last_good: &ModelMap,
) -> Result<(), ValidationError> {
    let before = last_good.model_count();
    let removed = last_good
        .models()
        .filter(|(name, _)| map.model(name).is_none())
        .count();
    // Compare in integers: removed / before > max% <=> removed * 100 > max% * before.
    if before > 0 && removed * 100 > rules.max_removed_percent as usize * before {
        let percent = removed * 100 / before;
        return Err(ValidationError::ShrinkGuard(format!(
            "the new map drops {removed} of the last good map's {before} models ({percent}%), \
             more than maxRemovedPercent {}%",
            rules.max_removed_percent
        )));
    }
    Ok(())
}

/// The shrink guard when only the last good map's model count is known (its bytes are
/// gone from the cluster): refuses a map with more than `maxRemovedPercent` fewer models.
pub fn shrink_guard_by_count(
    models: usize,
    last_good_models: usize,
    rules: &Rules,
) -> Result<(), ValidationError> {
    let fewer = last_good_models.saturating_sub(models);
    if last_good_models > 0 && fewer * 100 > rules.max_removed_percent as usize * last_good_models {
        return Err(ValidationError::ShrinkGuard(format!(
            "the new map has {models} models, {}% fewer than the {last_good_models} of the last \
             good map (no longer in the cluster, so only its count is known), more than \
             maxRemovedPercent {}%",
            fewer * 100 / last_good_models,
            rules.max_removed_percent
        )));
    }
    Ok(())
}

/// One broken rule in one model's entry.
#[derive(Debug, Clone, PartialEq)]
struct Violation {
    rule: &'static str,
    model: String,
    detail: String,
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
        check_costs(entry, false, &mut Vec::new(), &mut |path, value| {
            report(
                "costs are finite non-negative numbers",
                format!("{path} is {}", shown(value)),
            )
        });
    }
    violations
}

/// Walks an entry; below any key whose name contains "cost", every leaf must be a finite,
/// non-negative number. The path to a leaf is spelled out only for a leaf reported: building
/// it for every node would cost work quadratic in the nesting.
fn check_costs<'a>(
    value: &'a Value,
    under_cost: bool,
    path: &mut Vec<Step<'a>>,
    report: &mut impl FnMut(&str, &Value),
) {
    match value {
        Value::Object(fields) => {
            for (field, child) in fields {
                path.push(Step::Field(field));
                check_costs(child, under_cost || field.contains("cost"), path, report);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                path.push(Step::Index(index));
                check_costs(child, under_cost, path, report);
                path.pop();
            }
        }
        leaf if under_cost && !is_non_negative_number(leaf) => report(&spelled(path), leaf),
        _ => {}
    }
}

/// One step from an entry down to a value in it.
enum Step<'a> {
    Field(&'a str),
    Index(usize),
}

/// `a.b[2].c`.
fn spelled(path: &[Step<'_>]) -> String {
    let mut text = String::new();
    for step in path {
        match step {
            Step::Field(field) if text.is_empty() => text.push_str(field),
            Step::Field(field) => {
                text.push('.');
                text.push_str(field);
            }
            Step::Index(index) => text.push_str(&format!("[{index}]")),
        }
    }
    text
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

fn describe_violations(violations: &[Violation]) -> String {
    let mut by_rule: BTreeMap<&str, Vec<&Violation>> = BTreeMap::new();
    for violation in violations {
        by_rule.entry(violation.rule).or_default().push(violation);
    }
    let parts: Vec<String> = by_rule
        .into_iter()
        .map(|(rule, found)| {
            let examples: Vec<String> = found
                .iter()
                .take(EXAMPLES_PER_RULE)
                .map(|v| format!("{} ({})", truncated(&v.model), v.detail))
                .collect();
            let more = found.len().saturating_sub(EXAMPLES_PER_RULE);
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!(
                "rule \"{rule}\" broken {} times: {}{more}",
                found.len(),
                examples.join(", ")
            )
        })
        .collect();
    parts.join("; ")
}

/// Model names come from the source: keep them short in messages.
fn truncated(name: &str) -> String {
    const MAX: usize = 80;
    if name.chars().count() <= MAX {
        name.to_owned()
    } else {
        format!("{}...", name.chars().take(MAX).collect::<String>())
    }
}

fn describe_parse_error(bytes: &[u8], err: &serde_json::Error) -> String {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => "the body is empty".to_owned(),
        Some(b'<') => format!("the body is not JSON (it looks like HTML or XML): {err}"),
        Some(_) if err.is_eof() => format!("the JSON is truncated: {err}"),
        Some(_) => format!("not a JSON object of models: {err}"),
    }
}

fn describe_duplicates(duplicates: &[String]) -> String {
    let names: Vec<String> = duplicates
        .iter()
        .take(EXAMPLES_PER_RULE)
        .map(|name| format!("{:?}", truncated(name)))
        .collect();
    let more = duplicates.len().saturating_sub(EXAMPLES_PER_RULE);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!(
        "{} top-level keys appear more than once: {}{more}; JSON readers disagree on which copy \
         wins, so the map is refused",
        duplicates.len(),
        names.join(", ")
    )
}

/// The top-level object, parsed with a cap on its number of keys; keys seen twice are
/// collected (and the map refused) rather than one copy silently winning.
struct TopLevel {
    entries: BTreeMap<String, Value>,
    duplicates: Vec<String>,
}

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(TopLevelVisitor)
    }
}

struct TopLevelVisitor;

impl<'de> Visitor<'de> for TopLevelVisitor {
    type Value = TopLevel;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object mapping model names to entries")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<TopLevel, A::Error> {
        let mut entries = BTreeMap::new();
        let mut duplicates = Vec::new();
        let mut seen = 0usize;
        while let Some((key, StrictValue(value))) = access.next_entry::<String, StrictValue>()? {
            seen += 1;
            if seen > MAX_TOP_LEVEL_KEYS {
                return Err(serde::de::Error::custom(format!(
                    "more than {MAX_TOP_LEVEL_KEYS} top-level keys"
                )));
            }
            match entries.entry(key) {
                std::collections::btree_map::Entry::Occupied(entry) => {
                    duplicates.push(entry.key().clone());
                }
                std::collections::btree_map::Entry::Vacant(entry) => {
                    entry.insert(value);
                }
            }
        }
        duplicates.sort();
        duplicates.dedup();
        Ok(TopLevel {
            entries,
            duplicates,
        })
    }
}

/// A JSON value in which no object has the same key twice; serde_json's own `Value` keeps
/// the last copy silently.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(StrictValueVisitor)
            .map(StrictValue)
    }
}

struct StrictValueVisitor;

impl<'de> Visitor<'de> for StrictValueVisitor {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        // JSON text has no NaN or infinities; serde_json refuses 1e400 before we get here.
        Ok(serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(access.size_hint().unwrap_or(0).min(1024));
        while let Some(StrictValue(item)) = access.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut fields = serde_json::Map::new();
        while let Some((key, StrictValue(value))) = access.next_entry::<String, StrictValue>()? {
            if fields.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!(
                    "the key {:?} appears twice in one object",
                    truncated(&key)
                )));
            }
            fields.insert(key, value);
        }
        Ok(Value::Object(fields))
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
        validate(&parse(value), &Rules::default(), None)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_map_in_litellms_shape_is_valid_and_reserved_keys_are_not_models() {
        let map = parse(&sample_map(60));
        assert_eq!(map.model_count(), 60);
        assert!(map.model("sample_spec").is_none());
        validate(&map, &Rules::default(), None).unwrap();
    }

    #[test]
    fn alias_rows_and_unknown_fields_pass() {
        let mut value = sample_map(60);
        value["alias"] = json!({"alias_of": "model-1"});
        value["model-2"]["brand_new_field_2027"] = json!(["anything", null, true]);
        validate(&parse(&value), &Rules::default(), None).unwrap();
    }

    #[test]
    fn html_truncated_and_non_object_bodies_say_what_they_are() {
        for (body, expected) in [
            (
                "<!DOCTYPE html><html>rate limited</html>",
                "looks like HTML",
            ),
            (r#"{"model-1": {"mode": "ch"#, "truncated"),
            ("[1, 2, 3]", "not a JSON object"),
            ("   ", "empty"),
            (r#"{"a": {}} trailing"#, "not a JSON object"),
        ] {
            let err = ModelMap::parse(body.as_bytes()).unwrap_err();
            assert!(matches!(err, ValidationError::InvalidMap(_)), "{body}");
            assert!(err.to_string().contains(expected), "{body}: {err}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let depth = 100_000;
        let body = format!("{{\"m\": {}{}}}", "[".repeat(depth), "]".repeat(depth));
        let err = ModelMap::parse(body.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
    }

    #[test]
    fn too_many_top_level_keys_is_an_error() {
        let body: String = (0..=MAX_TOP_LEVEL_KEYS)
            .map(|i| format!("\"k{i}\":0"))
            .collect::<Vec<_>>()
            .join(",");
        let err = ModelMap::parse(format!("{{{body}}}").as_bytes()).unwrap_err();
        assert!(err.to_string().contains("top-level keys"), "{err}");
    }

    #[test]
    fn duplicate_top_level_keys_are_refused_naming_them() {
        let body = br#"{"gpt-4o": {"input_cost_per_token": 2.5e-6}, "b": {}, "b": {},
                        "gpt-4o": {"input_cost_per_token": 0}}"#;
        let err = ModelMap::parse(body).unwrap_err();
        assert!(matches!(err, ValidationError::InvalidMap(_)), "{err}");
        assert_eq!(
            err.to_string(),
            "invalid map: 2 top-level keys appear more than once: \"b\", \"gpt-4o\"; JSON \
             readers disagree on which copy wins, so the map is refused"
        );
    }

    #[test]
    fn duplicate_keys_inside_an_entry_are_refused() {
        let body = br#"{"m": {"input_cost_per_token": 1e-6, "input_cost_per_token": 0}}"#;
        let err = ModelMap::parse(body).unwrap_err().to_string();
        assert!(
            err.contains("the key \"input_cost_per_token\" appears twice in one object"),
            "{err}"
        );
        let nested = br#"{"m": {"tiers": [{"a": 1, "a": 2}]}}"#;
        assert!(ModelMap::parse(nested).is_err());
        // The same key in different objects is fine.
        ModelMap::parse(br#"{"m": {"a": {"x": 1}, "b": {"x": 1}}, "n": {"a": 1}}"#).unwrap();
    }

    #[test]
    fn numbers_and_strings_parse_as_serde_json_reads_them() {
        let body = br#"{"m": {"i": 4096, "f": 4096.0, "neg": -1, "big": 18446744073709551615,
                        "s": "x\u00e9", "n": null, "t": true, "a": []}}"#;
        let strict = ModelMap::parse(body).unwrap();
        let plain: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(strict.model("m").unwrap(), &plain["m"]);
        let err = ModelMap::parse(br#"{"m": {"c": 1e400}}"#).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
    }

    #[test]
    fn fewer_models_than_min_models_is_refused() {
        let err = refusal(&sample_map(49));
        assert_eq!(err, "invalid map: 49 models, fewer than minModels 50");
        let rules = Rules {
            min_models: 3,
            ..Rules::default()
        };
        validate(&parse(&sample_map(3)), &rules, None).unwrap();
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

    #[test]
    fn shrink_guard_refuses_dropping_more_than_the_allowed_share() {
        let last_good = parse(&sample_map(100));
        let keeps_half = parse(&sample_map(50));
        validate(&keeps_half, &Rules::default(), Some(&last_good)).unwrap();
        let keeps_less = parse(
            &sample_map(49)
                .as_object()
                .map(|m| {
                    let mut m = m.clone();
                    m.insert("brand-new".into(), json!({"mode": "chat"}));
                    m.insert("brand-new-2".into(), json!({"mode": "chat"}));
                    Value::Object(m)
                })
                .unwrap(),
        );
        let err = validate(&keeps_less, &Rules::default(), Some(&last_good)).unwrap_err();
        assert_eq!(
            err,
            ValidationError::ShrinkGuard(
                "the new map drops 51 of the last good map's 100 models (51%), more than maxRemovedPercent 50%".into()
            )
        );
        let lenient = Rules {
            max_removed_percent: 100,
            ..Rules::default()
        };
        validate(&keeps_less, &lenient, Some(&last_good)).unwrap();
    }

    #[test]
    fn without_the_last_good_bytes_the_shrink_guard_counts_models() {
        let rules = Rules::default();
        shrink_guard_by_count(50, 100, &rules).unwrap();
        shrink_guard_by_count(500, 100, &rules).unwrap();
        shrink_guard_by_count(10, 0, &rules).unwrap();
        let err = shrink_guard_by_count(49, 100, &rules).unwrap_err();
        assert!(matches!(err, ValidationError::ShrinkGuard(_)), "{err}");
        assert!(
            err.to_string()
                .contains("49 models, 51% fewer than the 100"),
            "{err}"
        );
    }
}

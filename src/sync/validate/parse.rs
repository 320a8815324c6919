//! Parsing a map, bounded and strict: a hostile source can make the parser neither crash
//! (nesting deeper than serde_json's recursion limit is an error) nor use unbounded memory
//! (at most [`MAX_TOP_LEVEL_KEYS`] keys and [`MAX_VALUES`] values in all), and a key that appears twice in one object is an
//! error rather than a silent choice of one copy.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{EXAMPLES_PER_RULE, ModelMap, ValidationError, check_cost_paths, truncated};

/// The most top-level keys a map may have. Real maps have about 5,000; this bounds the
/// memory a hostile source can make the parser use.
pub const MAX_TOP_LEVEL_KEYS: usize = 100_000;

/// The most JSON values (objects, arrays, strings, numbers...) a map may hold in all. The
/// parsed tree costs about 150 bytes per value, so this bounds its memory at about 150 MB
/// whatever the body's shape: two bytes of `[0,0,0...]` would otherwise cost 32. Real maps
/// hold one value per 44 bytes (79,024 in the 3.5 MB map; 790,231 in the 35 MB map of the
/// big-map bench).
pub const MAX_VALUES: usize = 1_000_000;

impl ModelMap {
    /// Parses a map, bounded: nesting deeper than serde_json's recursion limit (128) and
    /// more than [`MAX_TOP_LEVEL_KEYS`] keys are errors, never a crash. A key that appears
    /// twice in one object is an error too: JSON readers disagree on which copy wins (Python's
    /// `json`, and so LiteLLM, keeps the last), so such a map prices differently depending on
    /// who reads it.
    ///
    /// A body that is no map at all (see [`is_map_shaped`]) is described by its shape alone.
    pub fn parse(bytes: &[u8]) -> Result<ModelMap, ValidationError> {
        Self::parse_checked(bytes, true)
    }

    /// [`Self::parse`] for a layer the tenant wrote themselves (an override ConfigMap):
    /// whatever its shape, its messages may name its keys.
    pub fn parse_layer(bytes: &[u8]) -> Result<ModelMap, ValidationError> {
        Self::parse_checked(bytes, false)
    }

    fn parse_checked(bytes: &[u8], source: bool) -> Result<ModelMap, ValidationError> {
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let values = Cell::new(0);
        let parsed = TopLevelSeed { values: &values }
            .deserialize(&mut deserializer)
            .and_then(|top| {
                deserializer.end()?;
                Ok(top)
            });
        match parsed {
            Ok(TopLevel {
                entries,
                duplicates,
            }) if source && !is_map_shaped(objects(&entries), entries.len()) => {
                Err(ValidationError::InvalidMap(describe_shape(
                    objects(&entries),
                    entries.len(),
                    duplicates.len(),
                )))
            }
            Ok(TopLevel { duplicates, .. }) if !duplicates.is_empty() => Err(
                ValidationError::InvalidMap(describe_duplicates(&duplicates)),
            ),
            Ok(TopLevel { entries, .. }) => {
                let map = ModelMap { entries };
                check_cost_paths(&map, bytes.len())?;
                Ok(map)
            }
            Err(err) => Err(ValidationError::InvalidMap(describe_parse_error(
                bytes, &err,
            ))),
        }
    }
}

/// Whether a JSON object is a map, not some other document: more than half of its
/// top-level values are objects (model entries). Only a map's key names and cost values
/// appear in messages; anything else is described by its shape alone, so that a source
/// pointed at some internal JSON document cannot read it back through status.
pub(super) fn is_map_shaped(objects: usize, keys: usize) -> bool {
    keys == 0 || objects * 2 > keys
}

/// How many of `entries`' values are objects.
fn objects(entries: &BTreeMap<String, Value>) -> usize {
    entries.values().filter(|value| value.is_object()).count()
}

pub(super) fn describe_shape(objects: usize, keys: usize, duplicates: usize) -> String {
    let duplicates = match duplicates {
        0 => String::new(),
        n => format!("; {n} top-level keys appear more than once"),
    };
    format!(
        "the body is a JSON object but not a map of model entries: {objects} of its {} \
         top-level values are objects{duplicates}",
        keys
    )
}

/// A parse error in words that never quote the body: serde_json's own message for a
/// type mismatch quotes the value ("invalid type: string \"...\"").
pub(super) fn describe_parse_error(bytes: &[u8], err: &serde_json::Error) -> String {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => "the body is empty".to_owned(),
        Some(b'<') => format!("the body is not JSON (it looks like HTML or XML): {err}"),
        Some(_) if err.is_eof() => format!("the JSON is truncated: {err}"),
        // Our own messages (too many keys, a key twice), which quote nothing.
        Some(b'{') if err.is_data() => format!("not a JSON object of models: {err}"),
        Some(byte) if err.is_data() => format!(
            "not a JSON object of models: the body is {}",
            match byte {
                b'[' => "a JSON array",
                b'"' => "a JSON string",
                b't' | b'f' => "a JSON boolean",
                b'n' => "JSON null",
                _ => "a JSON number",
            }
        ),
        // Syntax errors say what was expected where, not what was found.
        Some(_) => format!("not a JSON object of models: {err}"),
    }
}

pub(super) fn describe_duplicates(duplicates: &[String]) -> String {
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

/// Parses the top level, counting values in `values`.
struct TopLevelSeed<'a> {
    values: &'a Cell<usize>,
}

impl<'de> DeserializeSeed<'de> for TopLevelSeed<'_> {
    type Value = TopLevel;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<TopLevel, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopLevelSeed<'_> {
    type Value = TopLevel;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object mapping model names to entries")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<TopLevel, A::Error> {
        let mut entries = BTreeMap::new();
        let mut duplicates = Vec::new();
        let mut seen = 0usize;
        while let Some(key) = access.next_key::<String>()? {
            let value = access.next_value_seed(StrictValue {
                values: self.values,
            })?;
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

/// Parses a JSON value in which no object has the same key twice (serde_json's own `Value`
/// keeps the last copy silently), counting it and every value inside it in `values`.
#[derive(Clone, Copy)]
struct StrictValue<'a> {
    values: &'a Cell<usize>,
}

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        let counted = self.values.get() + 1;
        if counted > MAX_VALUES {
            return Err(serde::de::Error::custom(format_args!(
                "more than {MAX_VALUES} JSON values in all"
            )));
        }
        self.values.set(counted);
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
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

    fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(access.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = access.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut fields = serde_json::Map::new();
        while let Some(key) = access.next_key::<String>()? {
            let value = access.next_value_seed(self)?;
            if fields.contains_key(&key) {
                // Not naming the key: the body may be no map at all (see `is_map_shaped`);
                // the position finds it.
                return Err(serde::de::Error::custom(
                    "a JSON object in it has a key twice",
                ));
            }
            fields.insert(key, value);
        }
        Ok(Value::Object(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_body_that_is_not_a_map_is_described_by_its_shape_alone() {
        for (body, expected) in [
            (r#""s3cret-value""#, "the body is a JSON string"),
            ("1234567", "the body is a JSON number"),
            ("true", "the body is a JSON boolean"),
            ("null", "the body is JSON null"),
            (r#"["s3cret-value"]"#, "the body is a JSON array"),
            (
                r#"{"s3cret-key": "s3cret-value", "n": 42, "m": {"s3cret-nested": 1}}"#,
                "not a map of model entries: 1 of its 3 top-level values are objects",
            ),
            (
                r#"{"s3cret-key": "s3cret-value", "s3cret-key": "s3cret-value"}"#,
                "not a map of model entries: 0 of its 1 top-level values are objects",
            ),
            (
                r#"{"m": {"s3cret-key": "s3cret-value", "s3cret-key": 1}}"#,
                "a key twice",
            ),
        ] {
            let err = ModelMap::parse(body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(expected), "{body}: {err}");
            assert!(
                !err.contains("s3cret") && !err.contains("42"),
                "{body}: {err}"
            );
        }
        // A map with a few broken entries is still a map: its messages name them.
        let map = br#"{"a": {}, "b": {}, "c": "x"}"#;
        assert!(ModelMap::parse(map).is_ok());
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
    fn too_many_values_in_all_is_an_error_however_few_the_models() {
        let zeros = vec!["0"; MAX_VALUES].join(",");
        let err =
            ModelMap::parse(format!("{{\"m\": {{\"a\": [{zeros}]}}}}").as_bytes()).unwrap_err();
        assert!(err.to_string().contains("JSON values in all"), "{err}");
        let fits = vec!["0"; MAX_VALUES - 3].join(",");
        ModelMap::parse(format!("{{\"m\": {{\"a\": [{fits}]}}}}").as_bytes()).unwrap();
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
            err.contains("a JSON object in it has a key twice at line 1 column"),
            "{err}"
        );
        assert!(!err.contains("input_cost_per_token"), "{err}");
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
}

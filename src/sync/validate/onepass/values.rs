//! The values inside a map's entries, read in one pass: a digest of each (equal as
//! parsed JSON, equal digest), and the rules on costs and on an entry's own fields.

use std::borrow::Cow;
use std::fmt;
use std::hash::{Hash, Hasher};

use rustc_hash::FxHasher;
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

use super::super::{MAX_VALUES, STRING_FIELDS, TOKEN_FIELDS};
use super::{State, Step};

/// What a parent needs of a child value: its digest, and for the rules its kind (numbers
/// kept whole for messages).
pub(super) struct Node {
    pub(super) digest: u64,
    pub(super) leaf: Leaf,
}

pub(super) enum Leaf {
    Null,
    Bool,
    Number(Number),
    String,
    Array,
    Object,
}

impl Leaf {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Leaf::Null => "null",
            Leaf::Bool => "a boolean",
            Leaf::Number(_) => "a number",
            Leaf::String => "a string",
            Leaf::Array => "an array",
            Leaf::Object => "an object",
        }
    }

    /// Numbers as they are, anything else by kind (no source string reaches a message).
    pub(super) fn shown(&self) -> String {
        match self {
            Leaf::Number(number) => number.to_string(),
            other => other.kind().to_owned(),
        }
    }

    pub(super) fn is_non_negative_number(&self) -> bool {
        match self {
            Leaf::Number(number) => number
                .as_f64()
                .is_some_and(|number| number.is_finite() && number >= 0.0),
            _ => false,
        }
    }
}

/// A digest of one tagged scalar. FxHash: the digest only tells entries apart for the
/// diff (prices are compared number by number), as the fixed-key SipHash it replaces did.
fn digest_of(tag: u8, value: impl Hash) -> u64 {
    let mut hasher = FxHasher::default();
    tag.hash(&mut hasher);
    value.hash(&mut hasher);
    mix(hasher.finish())
}

/// Murmur3's finalizer: every input bit reaches every output bit, so that summing field
/// digests (an object's fields in any order give the same digest) does not cancel out.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// An object key, borrowed from the input unless it had escapes.
pub(super) struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(value))
    }
}

/// The keys of the objects being read, innermost last: each object's keys sit above its
/// parent's, with their digests, and are dropped when it ends. One buffer for the whole
/// pass, so an object costs no allocation; a key is compared with its siblings by digest
/// first, by its bytes only when the digests match.
#[derive(Default)]
pub(super) struct OpenKeys<'de> {
    keys: Vec<(u64, Cow<'de, str>)>,
}

/// One object's keys: on the shared buffer while it has few, in a set of its own past that,
/// so that a wide object costs no more per key than a narrow one.
struct ObjectKeys<'de> {
    start: usize,
    /// A bit per digest's low byte: a key whose bit is clear is new without a scan.
    bits: [u64; 4],
    wide: Option<foldhash::HashSet<Cow<'de, str>>>,
}

impl<'de> ObjectKeys<'de> {
    /// Keys compared one by one up to this many; the set takes over past it. Its hasher is
    /// keyed at random: the keys are the source's. Most real entries have 5 to 40 fields.
    const FEW: usize = 64;

    fn open(open: &OpenKeys<'de>) -> ObjectKeys<'de> {
        ObjectKeys {
            start: open.keys.len(),
            bits: [0; 4],
            wide: None,
        }
    }

    /// Adds `key`, whose digest is `digest`; false if the object has it already.
    fn insert(&mut self, open: &mut OpenKeys<'de>, digest: u64, key: Cow<'de, str>) -> bool {
        if let Some(wide) = &mut self.wide {
            return wide.insert(key);
        }
        let (word, bit) = ((digest >> 6) as usize & 3, 1u64 << (digest & 63));
        if self.bits[word] & bit != 0 {
            let siblings = &open.keys[self.start..];
            if siblings
                .iter()
                .any(|(seen, sibling)| *seen == digest && *sibling == key)
            {
                return false;
            }
        }
        self.bits[word] |= bit;
        open.keys.push((digest, key));
        if open.keys.len() - self.start > Self::FEW {
            self.wide = Some(open.keys.drain(self.start..).map(|(_, key)| key).collect());
        }
        true
    }

    fn close(self, open: &mut OpenKeys<'de>) {
        open.keys.truncate(self.start);
    }
}

/// Any value inside an entry (or the entry itself, when `fields` is set: its own fields
/// are checked, and `alias_of` among them noted there).
pub(super) struct ValueSeed<'s, 'de, 'a> {
    pub(super) state: &'s mut State<'de>,
    pub(super) under_cost: bool,
    pub(super) fields: Option<&'a mut bool>,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, 'de, '_> {
    type Value = Node;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        let counted = self.state.values + 1;
        if counted > MAX_VALUES {
            return Err(serde::de::Error::custom(format_args!(
                "more than {MAX_VALUES} JSON values in all"
            )));
        }
        self.state.values = counted;
        deserializer.deserialize_any(self)
    }
}

impl<'de> ValueSeed<'_, 'de, '_> {
    fn leaf<E>(self, digest: u64, leaf: Leaf) -> Result<Node, E> {
        if self.under_cost {
            self.state.cost_leaf(&leaf);
        }
        Ok(Node { digest, leaf })
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, 'de, '_> {
    type Value = Node;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Node, E> {
        self.leaf(digest_of(1, value), Leaf::Bool)
    }

    fn visit_i64<E>(self, value: i64) -> Result<Node, E> {
        // serde_json reads negative integers only as i64, the others as u64: the kinds of
        // number LiteLLM tells apart.
        let digest = match u64::try_from(value) {
            Ok(value) => digest_of(2, value),
            Err(_) => digest_of(3, value),
        };
        self.leaf(digest, Leaf::Number(Number::from(value)))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Node, E> {
        self.leaf(digest_of(2, value), Leaf::Number(Number::from(value)))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Node, E> {
        // JSON text has no NaN or infinities; serde_json refuses 1e400 before we get here.
        match Number::from_f64(value) {
            Some(number) => self.leaf(digest_of(4, value.to_bits()), Leaf::Number(number)),
            None => self.leaf(digest_of(0, ()), Leaf::Null),
        }
    }

    fn visit_str<E>(self, value: &str) -> Result<Node, E> {
        self.leaf(digest_of(5, value), Leaf::String)
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        self.leaf(digest_of(0, ()), Leaf::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Node, A::Error> {
        let state = self.state;
        let mut hasher = FxHasher::default();
        6u8.hash(&mut hasher);
        let mut index = 0usize;
        loop {
            state.path.push(Step::Index(index));
            let item = access.next_element_seed(ValueSeed {
                state: &mut *state,
                under_cost: self.under_cost,
                fields: None,
            });
            state.path.pop();
            let Some(item) = item? else { break };
            item.digest.hash(&mut hasher);
            index += 1;
        }
        index.hash(&mut hasher);
        Ok(Node {
            digest: mix(hasher.finish()),
            leaf: Leaf::Array,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Node, A::Error> {
        let state = self.state;
        let mut fields = self.fields;
        let mut seen = ObjectKeys::open(&state.open_keys);
        let mut sum = 0u64;
        let mut count = 0usize;
        while let Some(key) = access.next_key_seed(KeySeed)? {
            let under_cost = self.under_cost || names_a_cost(&key);
            state.path.push(Step::Field(key));
            let value = access.next_value_seed(ValueSeed {
                state: &mut *state,
                under_cost,
                fields: None,
            });
            let key = match state.path.pop() {
                Some(Step::Field(key)) => key,
                _ => Cow::Borrowed(""),
            };
            let value = value?;
            if let Some(alias) = fields.as_deref_mut() {
                entry_field(state, alias, &key, &value.leaf);
            }
            let key_digest = digest_of(8, key.as_ref());
            sum = sum.wrapping_add(mix(key_digest ^ value.digest));
            count += 1;
            if !seen.insert(&mut state.open_keys, key_digest, key) {
                // Not naming the key: the body may be no map at all; the position finds it.
                return Err(serde::de::Error::custom(
                    "a JSON object in it has a key twice",
                ));
            }
        }
        seen.close(&mut state.open_keys);
        let mut hasher = FxHasher::default();
        (7u8, count, sum).hash(&mut hasher);
        Ok(Node {
            digest: mix(hasher.finish()),
            leaf: Leaf::Object,
        })
    }
}

/// Whether a key names a cost (LiteLLM's prices are the numbers under such keys).
fn names_a_cost(key: &str) -> bool {
    // Horspool's search: the byte under the pattern's last place says how far it can move
    // (keys are short and read by the tens of thousands; a general searcher's set-up costs
    // more than the search).
    let bytes = key.as_bytes();
    let mut at = 0;
    while let Some(&last) = bytes.get(at + 3) {
        if last == b't' && bytes[at..at + 3] == *b"cos" {
            return true;
        }
        at += match last {
            b'c' => 3,
            b'o' => 2,
            b's' => 1,
            _ => 4,
        };
    }
    false
}

/// The lengths of the entry fields with a rule of their own (or `alias_of`).
const RULED_LENGTHS: [usize; TOKEN_FIELDS.len() + STRING_FIELDS.len() + 1] = {
    let mut lengths = [ALIAS_OF.len(); TOKEN_FIELDS.len() + STRING_FIELDS.len() + 1];
    let mut index = 0;
    while index < TOKEN_FIELDS.len() {
        lengths[index] = TOKEN_FIELDS[index].len();
        index += 1;
    }
    while index < TOKEN_FIELDS.len() + STRING_FIELDS.len() {
        lengths[index] = STRING_FIELDS[index - TOKEN_FIELDS.len()].len();
        index += 1;
    }
    lengths
};

const ALIAS_OF: &str = "alias_of";

/// The rules on an entry's own fields, and `alias_of` noted.
fn entry_field(state: &mut State<'_>, alias: &mut bool, field: &str, value: &Leaf) {
    if !RULED_LENGTHS.contains(&field.len()) {
        // Most fields: no rule, told apart by length without comparing bytes.
        return;
    }
    if field == ALIAS_OF {
        *alias = true;
    }
    if !state.recording {
        return;
    }
    let place = || std::iter::once(super::super::Step::Field(field));
    if TOKEN_FIELDS.contains(&field) && !value.is_non_negative_number() {
        state
            .entry_violations
            .add("token counts are non-negative numbers", place(), || {
                format!("{field} is {}", value.shown())
            });
    }
    if STRING_FIELDS.contains(&field) && !matches!(value, Leaf::String) {
        state
            .entry_violations
            .add("litellm_provider and mode are strings", place(), || {
                format!("{field} is {}", value.kind())
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_a_cost_finds_cost_wherever_it_is() {
        let alphabet = ["c", "o", "s", "t", "x", "co", "cos", "cost", "_"];
        // Every word of up to four pieces over the pattern's own letters: the shifts are
        // where a substring search goes wrong.
        let mut words = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> = words
                .iter()
                .flat_map(|word| alphabet.iter().map(move |piece| format!("{word}{piece}")))
                .collect();
            words.extend(longer);
        }
        for word in &words {
            assert_eq!(names_a_cost(word), word.contains("cost"), "{word:?}");
        }
    }

    #[test]
    fn a_key_twice_is_found_in_narrow_and_wide_objects() {
        let object = |keys: usize, twice: usize| {
            let mut fields: Vec<String> = (0..keys).map(|k| format!("\"k{k}\": {k}")).collect();
            fields.push(format!("\"k{twice}\": 0"));
            format!("{{\"m\": {{{}}}}}", fields.join(", "))
        };
        for keys in [1, 2, 63, 64, 65, 66, 300] {
            for twice in [0, keys / 2, keys - 1] {
                let err = super::super::IndexedMap::read(object(keys, twice).as_bytes())
                    .expect_err("a key twice");
                assert!(err.to_string().contains("a key twice"), "{keys}: {err}");
            }
            let fields: Vec<String> = (0..keys).map(|k| format!("\"k{k}\": {k}")).collect();
            let once = format!("{{\"m\": {{{}}}}}", fields.join(", "));
            assert!(
                super::super::IndexedMap::read(once.as_bytes()).is_ok(),
                "{keys}"
            );
        }
    }
}

//! The values inside a map's entries, read in one pass: a digest of each (equal as
//! parsed JSON, equal digest), and the rules on costs and on an entry's own fields.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};

use rustc_hash::FxHasher;
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

use super::super::{MAX_VALUES, STRING_FIELDS, TOKEN_FIELDS};
use super::{OwnedStep, State, Step};

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

/// The keys of one object so far: a short list while it is short (most entries' objects
/// have a few keys), a hash set past that, keyed at random (the keys are the source's).
#[derive(Default)]
struct SeenKeys<'de> {
    few: Vec<Cow<'de, str>>,
    many: Option<HashSet<Cow<'de, str>>>,
}

impl<'de> SeenKeys<'de> {
    const FEW: usize = 16;

    /// Adds `key`; false if it was there already.
    fn insert(&mut self, key: Cow<'de, str>) -> bool {
        if let Some(many) = &mut self.many {
            return many.insert(key);
        }
        if self.few.contains(&key) {
            return false;
        }
        self.few.push(key);
        if self.few.len() > Self::FEW {
            self.many = Some(self.few.drain(..).collect());
        }
        true
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
        let mut seen = SeenKeys::default();
        let mut sum = 0u64;
        let mut count = 0usize;
        while let Some(key) = access.next_key_seed(KeySeed)? {
            let under_cost = self.under_cost || key.contains("cost");
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
            sum = sum.wrapping_add(mix(digest_of(8, key.as_ref()) ^ value.digest));
            count += 1;
            if !seen.insert(key) {
                // Not naming the key: the body may be no map at all; the position finds it.
                return Err(serde::de::Error::custom(
                    "a JSON object in it has a key twice",
                ));
            }
        }
        let mut hasher = FxHasher::default();
        (7u8, count, sum).hash(&mut hasher);
        Ok(Node {
            digest: mix(hasher.finish()),
            leaf: Leaf::Object,
        })
    }
}

/// The rules on an entry's own fields, and `alias_of` noted.
fn entry_field(state: &mut State<'_>, alias: &mut bool, field: &str, value: &Leaf) {
    if field == "alias_of" {
        *alias = true;
    }
    if !state.recording {
        return;
    }
    let place = || vec![OwnedStep::Field(field.to_owned())];
    if TOKEN_FIELDS.contains(&field) && !value.is_non_negative_number() {
        state.pending.push((
            "token counts are non-negative numbers",
            format!("{field} is {}", value.shown()),
            place(),
        ));
    }
    if STRING_FIELDS.contains(&field) && !matches!(value, Leaf::String) {
        state.pending.push((
            "litellm_provider and mode are strings",
            format!("{field} is {}", value.kind()),
            place(),
        ));
    }
}

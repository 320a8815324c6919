//! A map ten times today's, built from the real one, for the chunked storage of big maps
//! (tests/chunks.rs and benches/big_map.rs share it).
//!
//! Renamed copies of real entries, appended in whole rounds (every model once per round):
//! a copy is a whole map away from its original, far beyond deflate's 32 KiB window, so the
//! big map compresses like the real map does, not like repeated text nor random bytes.

use axum::body::Bytes;
use serde_json::value::RawValue;

/// Keys of the map that are not models: never copied.
const RESERVED: [&str; 2] = ["sample_spec", "fallback_generalizations"];

/// `real` with `rounds` renamed copies of each model (`<name>-copy-<k>`), each entry's text
/// as it is in `real` (indentation and number spelling kept), in the real map's layout.
pub fn big_map(real: &[u8], rounds: usize) -> Bytes {
    let entries = ordered_entries(real).expect("the real map is a JSON object");
    let mut out = String::with_capacity(real.len() * (rounds + 1) + 1024);
    out.push('{');
    let mut first = true;
    let mut push = |name: &str, raw: &RawValue| {
        out.push_str(if first { "\n    " } else { ",\n    " });
        first = false;
        out.push_str(&serde_json::to_string(name).unwrap());
        out.push_str(": ");
        out.push_str(raw.get());
    };
    for (name, raw) in &entries {
        push(name, raw);
    }
    for round in 1..=rounds {
        for (name, raw) in entries
            .iter()
            .filter(|(name, _)| !RESERVED.contains(&name.as_str()))
        {
            push(&format!("{name}-copy-{round}"), raw);
        }
    }
    out.push_str("\n}\n");
    Bytes::from(out)
}

/// The real map ten times over (about 35 MB): litellm 1.110.2's map with nine rounds of
/// copies.
pub fn ten_times_real() -> Bytes {
    big_map(&super::real_map("1.110.2"), 9)
}

/// The top-level entries in the order of the text (serde_json's own map sorts them).
fn ordered_entries(json: &[u8]) -> Result<Vec<(String, Box<RawValue>)>, serde_json::Error> {
    struct Entries(Vec<(String, Box<RawValue>)>);
    impl<'de> serde::Deserialize<'de> for Entries {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Entries;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Entries, A::Error> {
                    let mut entries = Vec::new();
                    while let Some(entry) = map.next_entry()? {
                        entries.push(entry);
                    }
                    Ok(Entries(entries))
                }
            }
            d.deserialize_map(Visit)
        }
    }
    serde_json::from_slice::<Entries>(json).map(|entries| entries.0)
}

/// gzip size over plain size, as the operator compresses.
pub fn gzip_ratio(map: &[u8]) -> f64 {
    let gz = costmap_operator::layout::gzip::StoredMap::from_bytes(map.to_vec()).gz;
    gz.len() as f64 / map.len() as f64
}

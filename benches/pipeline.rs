//! The pure stages of one sync on the real LiteLLM maps (1.108.0 -> 1.110.2): what a content
//! change costs in CPU, stage by stage.

use costmap_operator::digest::{git_blob_id, sha256_digest};
use costmap_operator::layout::gzip::StoredMap;
use costmap_operator::sync::diff::diff;
use costmap_operator::sync::validate::summary::MapSummary;
use costmap_operator::sync::validate::{IndexedMap, ModelMap, Rules, guards, validate};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn real_map(version: &str) -> Vec<u8> {
    let path = testenv::litellm_map(version).expect("the real LiteLLM map (pip download)");
    std::fs::read(path).expect("read map")
}

fn pipeline(c: &mut Criterion) {
    let old_bytes = real_map("1.108.0");
    let new_bytes = real_map("1.110.2");
    let old = MapSummary::of(&ModelMap::parse(&old_bytes).expect("valid"));
    let parsed = ModelMap::parse(&new_bytes).expect("valid");
    let new = MapSummary::of(&parsed);

    let mut group = c.benchmark_group("sync of the 3.5 MB map");
    group.sample_size(20);
    // Issue 24: the one-pass reader against its floor (serde_json reading the same bytes
    // into nothing) and against what it replaces (the tree, its walk and its summary).
    group.bench_function("floor: serde_json into IgnoredAny", |b| {
        b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(&new_bytes)))
    });
    visitor_floor::read(&new_bytes).expect("the visitor floor reads the real map");
    group.bench_function(
        "visitor floor: every value handed to a visitor that keeps nothing",
        |b| b.iter(|| visitor_floor::read(black_box(&new_bytes))),
    );
    group.bench_function("one pass (read, rules, index)", |b| {
        b.iter(|| {
            IndexedMap::read(black_box(&new_bytes)).and_then(|map| map.validated(&Rules::default()))
        })
    });
    group.bench_function("tree (parse, validate, summary)", |b| {
        b.iter(|| {
            let map = ModelMap::parse(black_box(&new_bytes))?;
            validate(&map, &Rules::default())?;
            Ok::<_, costmap_operator::sync::validate::ValidationError>(MapSummary::of(&map))
        })
    });
    group.bench_function("parse", |b| {
        b.iter(|| ModelMap::parse(black_box(&new_bytes)))
    });
    group.bench_function("validate (structure rules)", |b| {
        b.iter(|| validate(black_box(&parsed), &Rules::default()))
    });
    group.bench_function("summary (what the guards and diff keep)", |b| {
        b.iter(|| MapSummary::of(black_box(&parsed)))
    });
    group.bench_function("guards (price report and verdicts)", |b| {
        b.iter(|| {
            let report = guards::price_report(black_box(&new), Some(&old));
            guards::refusals(&new, Some(&old), &report, &Rules::default())
        })
    });
    group.bench_function("prepare (the whole pure step)", |b| {
        b.iter(|| {
            costmap_operator::sync::prepare(
                black_box(bytes::Bytes::from(new_bytes.clone())),
                &Rules::default(),
                Some(&old),
                None,
            )
        })
    });
    group.bench_function("diff", |b| {
        b.iter(|| diff(black_box(&old), black_box(&new)))
    });
    group.bench_function("digest + git blob id", |b| {
        b.iter(|| {
            (
                sha256_digest(black_box(&new_bytes)),
                git_blob_id(black_box(&new_bytes)),
            )
        })
    });
    group.bench_function("gzip (as stored: level 6)", |b| {
        b.iter(|| StoredMap::from_bytes(black_box(new_bytes.clone())))
    });
    group.finish();

    // What the gzip level trades: time here, size printed once.
    let mut levels = c.benchmark_group("gzip level of the 3.5 MB map");
    levels.sample_size(20);
    for level in [1, 4, 6, 9] {
        let size = gzip_at(&new_bytes, level).len();
        eprintln!("gzip level {level}: {size} bytes");
        levels.bench_function(format!("level {level}"), |b| {
            b.iter(|| gzip_at(black_box(&new_bytes), level))
        });
    }
    levels.finish();
}

fn gzip_at(bytes: &[u8], level: u32) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    encoder.write_all(bytes).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

criterion_group!(benches, pipeline);
criterion_main!(benches);

/// What serde_json costs a reader that is handed every key and value, as the one-pass
/// reader is: strings borrowed (UTF-8 checked once over the body), numbers read exactly
/// (`float_roundtrip`), nothing kept. The floor of any visitor over the same bytes; the
/// gap to `IgnoredAny` is what serde_json spends converting the values it skips there.
mod visitor_floor {
    use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
    use std::fmt;
    use std::hint::black_box;

    pub fn read(bytes: &[u8]) -> Result<(), serde_json::Error> {
        let text = std::str::from_utf8(bytes).map_err(serde::de::Error::custom)?;
        let mut deserializer = serde_json::Deserializer::from_str(text);
        Any.deserialize(&mut deserializer)?;
        deserializer.end()
    }

    struct Any;

    impl<'de> DeserializeSeed<'de> for Any {
        type Value = ();

        fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Any {
        type Value = ();

        fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
            formatter.write_str("any JSON value")
        }

        fn visit_bool<E>(self, value: bool) -> Result<(), E> {
            black_box(value);
            Ok(())
        }

        fn visit_i64<E>(self, value: i64) -> Result<(), E> {
            black_box(value);
            Ok(())
        }

        fn visit_u64<E>(self, value: u64) -> Result<(), E> {
            black_box(value);
            Ok(())
        }

        fn visit_f64<E>(self, value: f64) -> Result<(), E> {
            black_box(value);
            Ok(())
        }

        fn visit_borrowed_str<E>(self, value: &'de str) -> Result<(), E> {
            black_box(value);
            Ok(())
        }

        fn visit_str<E>(self, value: &str) -> Result<(), E> {
            black_box(value);
            Ok(())
        }

        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
            while items.next_element_seed(Any)?.is_some() {}
            Ok(())
        }

        fn visit_map<A: MapAccess<'de>>(self, mut fields: A) -> Result<(), A::Error> {
            while let Some(key) = fields.next_key::<&'de str>()? {
                black_box(key);
                fields.next_value_seed(Any)?;
            }
            Ok(())
        }
    }
}

//! The one-pass reader against the legacy tree-building parser (issue 24), over the real
//! maps, transitions between them, mutations of them that break or bend each rule, and the
//! bodies of the hostile table. The property tests' inputs go through the same oracle
//! (tests/properties.rs).

#[path = "common/oracle.rs"]
mod oracle;

use std::io::Read;

use costmap_operator::sync::validate::MAX_COST_PATH_BYTES;
use oracle::{same_judgement, same_verdicts};
use serde_json::{Map, Value, json};

const VERSIONS: [&str; 3] = ["1.80.0", "1.108.0", "1.110.2"];

fn real_map(version: &str) -> Vec<u8> {
    let path = testenv::litellm_map(version)
        .unwrap_or_else(|err| panic!("the real litellm {version} map is needed: {err:#}"));
    std::fs::read(path).unwrap()
}

/// The maps in ../shared/fixtures, gunzipped.
fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "gz") {
            let mut bytes = Vec::new();
            flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap())
                .read_to_end(&mut bytes)
                .unwrap();
            found.push((path.display().to_string(), bytes));
        }
    }
    assert!(!found.is_empty(), "no fixtures in {}", dir.display());
    found
}

fn parsed(bytes: &[u8]) -> Map<String, Value> {
    serde_json::from_slice(bytes).unwrap()
}

fn models(map: &Map<String, Value>) -> Vec<String> {
    map.iter()
        .filter(|(name, entry)| entry.is_object() && name.as_str() != "sample_spec")
        .map(|(name, _)| name.clone())
        .collect()
}

/// Mutations of a real map, each a body: every rule broken in many models (messages list
/// them in order), layouts that change no entry, and changes the diff and guards see.
fn mutations(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let map = parsed(bytes);
    let names = models(&map);
    let with = |label: &str, change: &dyn Fn(&mut Map<String, Value>)| {
        let mut map = map.clone();
        change(&mut map);
        (label.to_owned(), serde_json::to_vec(&map).unwrap())
    };
    let every = |step: usize| names.iter().step_by(step).cloned().collect::<Vec<_>>();
    let mut bodies = vec![
        ("compact".to_owned(), serde_json::to_vec(&map).unwrap()),
        (
            "pretty".to_owned(),
            serde_json::to_vec_pretty(&map).unwrap(),
        ),
        with("negative costs", &|m| {
            for name in every(97) {
                m[&name]["input_cost_per_token"] = json!(-1e-6);
            }
        }),
        with("every rule", &|m| {
            for (i, name) in every(13).into_iter().enumerate() {
                let entry = &mut m[&name];
                match i % 9 {
                    0 => entry["max_tokens"] = json!("4096"),
                    1 => entry["max_output_tokens"] = json!(-1),
                    2 => entry["litellm_provider"] = json!(7),
                    3 => entry["mode"] = Value::Null,
                    4 => *entry = json!("not an object"),
                    5 => entry["tiers_cost"] = json!([{"b": "x", "a": -2}, [null, 3]]),
                    6 => entry["z_cost"] = json!({"b": {"d": true, "c": -0.5}, "a": "s"}),
                    7 => *entry = json!([{"input_cost_per_token": 1}]),
                    _ => entry["max_input_tokens"] = json!(1.5e300),
                }
            }
        }),
        with("repriced", &|m| {
            for name in every(3) {
                if let Some(price) = m[&name]["input_cost_per_token"].as_f64() {
                    m[&name]["input_cost_per_token"] = json!(price * 2.0 + 1e-7);
                }
            }
        }),
        with("unpriced", &|m| {
            for name in every(4) {
                let entry = m[&name].as_object_mut().unwrap();
                entry.retain(|field, _| !field.contains("cost"));
            }
        }),
        with("shrunk", &|m| {
            for name in every(2) {
                m.remove(&name);
            }
        }),
        with("ints and floats", &|m| {
            for name in every(5) {
                if let Some(tokens) = m[&name]["max_tokens"].as_u64() {
                    m[&name]["max_tokens"] = json!(tokens as f64);
                }
                m[&name]["new_field"] = json!({"x": [1, 1.0, -1, "1", null, false]});
            }
        }),
        with("aliases", &|m| {
            for (i, name) in every(11).into_iter().enumerate() {
                m.insert(format!("alias-{i}"), json!({"alias_of": name}));
            }
        }),
    ];
    // Raw edits the serializer cannot make: escaped keys, duplicates, reordered fields.
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let first = &names[0];
    let needle = format!("{first:?}: {{");
    if let Some(at) = text.find(&needle).map(|at| at + needle.len()) {
        let insert = |raw: &str| format!("{}{raw}{}", &text[..at], &text[at..]).into_bytes();
        bodies.push(("escaped key".into(), insert("\"\\u0069nput_cost\": 1, ")));
        bodies.push((
            "nested duplicate".into(),
            insert("\"x\": {\"a\": 1, \"a\": 1}, "),
        ));
        bodies.push(("entry duplicate".into(), insert("\"mode\": \"chat\", ")));
        bodies.push(("nan".into(), insert("\"input_cost_per_token\": NaN, ")));
        bodies.push(("huge".into(), insert("\"z_cost\": 1e400, ")));
        bodies.push((
            "unsorted costs".into(),
            insert("\"z_cost\": {\"b\": \"x\", \"a\": -1, \"c\": [true, {\"y\": null, \"x\": \"s\"}]}, \"mode\": 1, "),
        ));
    }
    // Broken rules in the source's own order of models and fields (not sorted: messages
    // list them sorted, as the tree's maps did).
    let broken = text
        .replacen("\"mode\": \"chat\"", "\"mode\": 7", 9)
        .replacen("\"max_tokens\": ", "\"max_tokens\": -", 7)
        .replacen(
            "\"output_cost_per_token\": ",
            "\"output_cost_per_token\": -",
            6,
        )
        .replacen(
            "\"input_cost_per_token\": ",
            "\"input_cost_per_token\": -",
            3,
        );
    bodies.push(("broken in source order".into(), broken.into_bytes()));
    bodies.push((
        "top-level duplicate".into(),
        text.replacen('{', "{\"sample_spec\": {}, \"zz\": {}, \"zz\": 1, ", 1)
            .into_bytes(),
    ));
    bodies.push(("truncated".into(), bytes[..bytes.len() / 2].to_vec()));
    bodies.push(("bom".into(), [b"\xEF\xBB\xBF".as_slice(), bytes].concat()));
    bodies
}

/// The hostile table's bodies (tests/hostile.rs) and a few more, as bytes.
fn hostile() -> Vec<Vec<u8>> {
    let keys = |n: usize, value: &str| {
        format!(
            "{{{}}}",
            (0..n)
                .map(|i| format!("\"k{i}\":{value}"))
                .collect::<Vec<_>>()
                .join(",")
        )
        .into_bytes()
    };
    vec![
        b"<!DOCTYPE html><html><body>rate limited</body></html>".to_vec(),
        Vec::new(),
        b"   ".to_vec(),
        b"[]".to_vec(),
        b"{}".to_vec(),
        b"null".to_vec(),
        b"\"s3cret\"".to_vec(),
        b"12345".to_vec(),
        b"true".to_vec(),
        br#"{"a": {}} trailing"#.to_vec(),
        br#"{"s": "v", "n": 42, "m": {"x": 1}}"#.to_vec(),
        br#"{"s": "v", "s": "v"}"#.to_vec(),
        br#"{"m": {"k": 1, "k": 2}}"#.to_vec(),
        format!("{{\"m\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        format!("{{\"m\": {}0{}}}", "{\"k\":".repeat(127), "}".repeat(127)).into_bytes(),
        format!("{{\"m\": {}0{}}}", "{\"k\":".repeat(128), "}".repeat(128)).into_bytes(),
        keys(1_000_000, "0"),
        keys(100_000, "{}"),
        keys(100_001, "{}"),
        format!("{{\"m\": {{\"a\": [{}]}}}}", vec!["0"; 1_000_000].join(",")).into_bytes(),
        format!("{{\"m\": {{\"a\": [{}]}}}}", vec!["0"; 999_997].join(",")).into_bytes(),
        format!("{{\"m\": {{\"a\": [{}]}}}}", vec!["0"; 999_998].join(",")).into_bytes(),
        b"{\"m\": {\"mode\": \"ch\xffat\"}}".to_vec(),
        // Cost paths past their bounds (a megabyte key over an array of zeros once asked
        // for gigabytes), and a rule broken once per value (its offenders once all kept).
        long_cost_path(MAX_COST_PATH_BYTES - "cost[0]".len(), 3),
        long_cost_path(MAX_COST_PATH_BYTES - "cost[0]".len() + 1, 3),
        long_cost_path(200, 20_000),
        long_cost_path(200_000, 5_000),
        format!(
            "{{\"m\": {{\"cost\": {{{}}}}}}}",
            (0..900_000)
                .map(|i| format!("\"k{i}\":null"))
                .collect::<Vec<_>>()
                .join(",")
        )
        .into_bytes(),
    ]
}

/// A model with `zeros` costs under a key of `cost` and `padding` bytes more.
fn long_cost_path(padding: usize, zeros: usize) -> Vec<u8> {
    format!(
        "{{\"m\": {{\"cost{}\": [{}]}}, \"n\": {{\"{}cost\": \"x\"}}}}",
        "x".repeat(padding),
        vec!["0"; zeros].join(","),
        "y".repeat(padding),
    )
    .into_bytes()
}

#[test]
fn the_one_pass_reader_says_what_the_tree_said() {
    let mut compared = 0usize;
    let mut real = Vec::new();
    for version in VERSIONS {
        let bytes = real_map(version);
        real.push(same_verdicts(&bytes).expect("a real map parses"));
        compared += 1;
        let mut last = real.last().cloned();
        for (label, body) in mutations(&bytes) {
            let summaries = same_verdicts(&body);
            compared += 1;
            if let (Some(last), Some(next)) = (&last, &summaries) {
                same_judgement(last, next);
            }
            if label == "compact" {
                last = summaries;
            }
        }
    }
    for (_, bytes) in fixtures() {
        real.push(same_verdicts(&bytes).expect("a fixture parses"));
        compared += 1;
    }
    // Upgrades and downgrades between every pair of real maps.
    for last in &real {
        for next in &real {
            same_judgement(last, next);
        }
    }
    for body in hostile() {
        same_verdicts(&body);
        compared += 1;
    }
    eprintln!(
        "oracle: {compared} inputs compared, {} transitions",
        real.len() * real.len()
    );
}

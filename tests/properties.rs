//! Properties of parsing and validating a map, on inputs a hostile source could send:
//! arbitrary bytes and arbitrary JSON never panic, never overflow the stack, and cost work
//! linear in their size. Work is counted, not timed: a counting allocator measures the bytes
//! and the allocations that parsing and validating take per input byte, which a quadratic
//! step (a path string per node, a copy per level) would blow past. Wall time is measured
//! by `cargo bench --bench pipeline`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use costmap_operator::sync::diff::diff;
use costmap_operator::sync::validate::{IndexedMap, Rules, guards};
use proptest::collection::{hash_map, vec};
use proptest::prelude::*;
use serde_json::{Value, json};

#[path = "common/oracle.rs"]
mod oracle;

/// Allocated bytes and allocations, per thread (tests run on several threads at once).
struct Counting;

thread_local! {
    static ALLOCATED: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

// SAFETY: every call is passed on to the system allocator unchanged; the counters live in a
// const thread-local, whose access never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.with(|counted| {
            let (bytes, count) = counted.get();
            counted.set((bytes + layout.size() as u64, count + 1));
        });
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.with(|counted| {
            let (bytes, count) = counted.get();
            counted.set((bytes + new_size as u64, count + 1));
        });
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes allocated per input byte that parsing and validating may take: a JSON value is 32
/// bytes, the smallest JSON value one byte of text (`0` in `[0,0,...]`), and vectors double.
const BYTES_PER_INPUT_BYTE: u64 = 80;
/// Allocations per input byte: at most one per value, and a value takes at least one byte.
const ALLOCATIONS_PER_INPUT_BYTE: u64 = 2;
/// What any input costs at least (error messages, the result).
const FIXED_BYTES: u64 = 64 * 1024;
const FIXED_ALLOCATIONS: u64 = 256;

/// Parses and validates `bytes` (against itself as the last good map, to run the shrink
/// guard and the diff too), and returns (bytes allocated, allocations).
fn work_of(bytes: &[u8]) -> (u64, u64) {
    // One model is enough, so that every entry rule runs on small inputs too.
    let rules = Rules {
        min_models: 1,
        ..Rules::default()
    };
    let before = ALLOCATED.with(Cell::get);
    if let Ok(map) = IndexedMap::read(bytes) {
        let _ = map.check(&rules);
        let map = map.into_summary();
        let report = guards::price_report(&map, Some(&map));
        let _ = guards::refusals(&map, Some(&map), &report, &rules);
        assert!(diff(&map, &map).is_empty(), "a map differs from itself");
    }
    let after = ALLOCATED.with(Cell::get);
    (after.0 - before.0, after.1 - before.1)
}

/// [`work_of`] bounded, and the one-pass reader saying what the legacy parser says (every
/// property input is an oracle input too).
fn assert_linear(bytes: &[u8]) {
    if let Some(summaries) = oracle::same_verdicts(bytes) {
        oracle::same_judgement(&summaries, &summaries);
    }
    let (allocated, allocations) = work_of(bytes);
    let len = bytes.len() as u64;
    assert!(
        allocated <= BYTES_PER_INPUT_BYTE * len + FIXED_BYTES,
        "{allocated} bytes allocated for {len} input bytes"
    );
    assert!(
        allocations <= ALLOCATIONS_PER_INPUT_BYTE * len + FIXED_ALLOCATIONS,
        "{allocations} allocations for {len} input bytes"
    );
}

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 128, 8, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..8).prop_map(Value::Array),
            hash_map(field_name(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Field names a model entry has, and others.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("input_cost_per_token".to_owned()),
        Just("output_cost_per_token".to_owned()),
        Just("search_context_cost_per_query".to_owned()),
        Just("max_tokens".to_owned()),
        Just("max_input_tokens".to_owned()),
        Just("litellm_provider".to_owned()),
        Just("mode".to_owned()),
        Just("alias_of".to_owned()),
        ".{0,10}",
    ]
}

/// A top-level object in the map's shape: model names to (mostly object) entries.
fn any_map() -> impl Strategy<Value = Value> {
    let model = prop_oneof![
        Just("sample_spec".to_owned()),
        Just("fallback_generalizations".to_owned()),
        "[a-z0-9/._-]{1,16}",
    ];
    hash_map(model, any_json(), 0..80).prop_map(|m| Value::Object(m.into_iter().collect()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic_and_cost_linear_work(bytes in vec(any::<u8>(), 0..4096)) {
        assert_linear(&bytes);
    }

    #[test]
    fn arbitrary_json_never_panics_and_costs_linear_work(value in any_json()) {
        assert_linear(value.to_string().as_bytes());
    }

    #[test]
    fn arbitrary_maps_never_panic_and_cost_linear_work(value in any_map()) {
        assert_linear(value.to_string().as_bytes());
        assert_linear(&serde_json::to_vec_pretty(&value).unwrap());
    }

    #[test]
    fn truncated_and_corrupted_maps_never_panic(value in any_map(), cut in any::<prop::sample::Index>(), flip in any::<(prop::sample::Index, u8)>()) {
        let mut bytes = value.to_string().into_bytes();
        if !bytes.is_empty() {
            let at = flip.0.index(bytes.len());
            bytes[at] ^= flip.1;
            bytes.truncate(cut.index(bytes.len()) + 1);
        }
        assert_linear(&bytes);
    }

    #[test]
    fn deep_nesting_never_overflows_the_stack(depth in 0usize..200_000, object in any::<bool>()) {
        let (open, close) = if object { ("{\"k\":", "}") } else { ("[", "]") };
        let body = format!("{{\"m\": {}0{}}}", open.repeat(depth), close.repeat(depth));
        let parsed = IndexedMap::read(body.as_bytes());
        // serde_json's recursion limit is 128 levels: beyond it, an error that says so.
        // Shallower bodies may still be refused, by a structure rule ("m" is no model entry
        // when it is an array or a number), never for their depth.
        let too_deep = matches!(&parsed, Err(err) if err.to_string().contains("recursion limit"));
        if depth < 100 {
            prop_assert!(!too_deep, "depth {depth}: {parsed:?}");
        }
        if depth > 200 {
            prop_assert!(too_deep, "depth {depth}: {parsed:?}");
        }
        assert_linear(body.as_bytes());
    }
}

#[test]
fn wide_inputs_cost_linear_work() {
    let many_keys = format!(
        "{{{}}}",
        (0..150_000)
            .map(|i| format!("\"k{i}\":{{}}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert_linear(many_keys.as_bytes());
    let many_models = format!(
        "{{{}}}",
        (0..90_000)
            .map(|i| format!("\"m{i}\":{{\"input_cost_per_token\":1e-6,\"mode\":7}}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert_linear(many_models.as_bytes());
    let long_array = format!("{{\"m\": {{\"c\": [{}]}}}}", vec!["0"; 500_000].join(","));
    assert_linear(long_array.as_bytes());
    let many_fields: serde_json::Map<String, Value> = (0..100_000)
        .map(|i| (format!("x_cost_{i}"), json!(i)))
        .collect();
    let wide_entry = json!({"m": many_fields}).to_string();
    assert_linear(wide_entry.as_bytes());
    let long_string = format!("{{\"m\": {{\"mode\": \"{}\"}}}}", "x".repeat(5_000_000));
    assert_linear(long_string.as_bytes());
    let deep_costs = format!(
        "{{\"m\": {{\"cost\": {}1{}}}}}",
        "{\"c\":".repeat(120),
        "}".repeat(120)
    );
    assert_linear(deep_costs.as_bytes());
}

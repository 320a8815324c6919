//! The guards: checks of a new map against the last good one (and, for the priced share,
//! against common sense). A map can pass every structure rule and still be wrong for the
//! cluster: upstream has shipped maps that lost most of their models, or whose prices broke
//! (every price zeroed, a unit error billing $15,000 per million tokens). A guard's refusal
//! can be accepted on purpose; a structure rule's cannot.
//!
//! Terms, as `DESIGN.md` defines them: a model is *priced* when some number under a key
//! containing `cost` is > 0; `alias_of` rows are not priced models. It is *unpriced* when it
//! was priced in the last good map and is not now. It is *repriced* when a cost number it had
//! in the last good map changed or is gone (a new cost key does not count: upstream adds
//! pricing dimensions to hundreds of models at once). Shares are of the last good map's
//! priced models.

use super::Rules;
use super::summary::{MapSummary, ModelSummary};

/// How many models a refusal names.
const NAMED_MODELS: usize = 5;

/// One guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Guard {
    /// `maxRemovedPercent`: the map drops too many of the last good map's models.
    Shrink,
    /// `minPricedPercent`: too few of the map's models are priced.
    MinPriced,
    /// `maxUnpricedPercent`: too many priced models lost every price.
    MaxUnpriced,
    /// `maxRepricedPercent`: too many priced models changed a price.
    MaxRepriced,
}

impl Guard {
    /// Every guard, in the order they are checked.
    pub const ALL: [Guard; 4] = [
        Guard::Shrink,
        Guard::MinPriced,
        Guard::MaxUnpriced,
        Guard::MaxRepriced,
    ];

    /// The name of its setting in `spec.validation`.
    pub fn setting(self) -> &'static str {
        match self {
            Guard::Shrink => "maxRemovedPercent",
            Guard::MinPriced => "minPricedPercent",
            Guard::MaxUnpriced => "maxUnpricedPercent",
            Guard::MaxRepriced => "maxRepricedPercent",
        }
    }

    /// The name in metrics (`costmap_guard_refusals_total{guard}`).
    pub fn as_str(self) -> &'static str {
        match self {
            Guard::Shrink => "shrink",
            Guard::MinPriced => "min_priced",
            Guard::MaxUnpriced => "max_unpriced",
            Guard::MaxRepriced => "max_repriced",
        }
    }
}

/// A guard that refuses a map, and why, in words for status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// The guard.
    pub guard: Guard,
    /// Why: the share, the threshold, the first models concerned.
    pub message: String,
}

/// One price that moved between the last good map and the new one.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceMove {
    /// The model.
    pub model: String,
    /// The cost field, `a.b[2].c` for nested ones.
    pub field: String,
    /// The price in the last good map; none: the field is new.
    pub from: Option<f64>,
    /// The price in the new map; none: the field is gone.
    pub to: Option<f64>,
}

impl PriceMove {
    /// How far it moved: the ratio of the larger price to the smaller; infinite when a
    /// price appears, vanishes, or moves to or from zero.
    pub fn factor(&self) -> f64 {
        match (self.from, self.to) {
            (Some(from), Some(to)) if from > 0.0 && to > 0.0 => (to / from).max(from / to),
            _ => f64::INFINITY,
        }
    }

    /// `gpt-4o input_cost_per_token 2.5e-06 -> 2.5e-03 (x1000)`.
    pub fn describe(&self) -> String {
        let price = |price: Option<f64>| price.map_or_else(|| "(none)".to_owned(), scientific);
        let how = match (self.from, self.to) {
            (None, _) => "new".to_owned(),
            (_, None) => "gone".to_owned(),
            (Some(from), Some(to)) if from > 0.0 && to > 0.0 && to >= from => {
                format!("x{}", round_factor(to / from))
            }
            (Some(from), Some(to)) if from > 0.0 && to > 0.0 => {
                format!("/{}", round_factor(from / to))
            }
            (Some(_), Some(0.0)) => "to zero".to_owned(),
            _ => "from zero".to_owned(),
        };
        format!(
            "{} {} {} -> {} ({how})",
            self.model,
            self.field,
            price(self.from),
            price(self.to)
        )
    }
}

/// A price as LiteLLM's map writes it: `2.5e-06`, `0.54`, `0`.
fn scientific(price: f64) -> String {
    if price == 0.0 {
        return "0".to_owned();
    }
    let text = format!("{price:e}");
    match text.split_once('e') {
        Some((mantissa, exponent)) => {
            let exponent: i32 = exponent.parse().unwrap_or(0);
            let sign = if exponent < 0 { '-' } else { '+' };
            format!("{mantissa}e{sign}{:02}", exponent.abs())
        }
        None => text,
    }
}

fn round_factor(factor: f64) -> String {
    if factor >= 10.0 {
        format!("{}", factor.round())
    } else {
        format!("{:.2}", factor)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    }
}

/// What the price guards judge: the prices of a map against the last good map's.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PriceReport {
    /// Models of the new map that are not `alias_of` rows.
    pub models: usize,
    /// Those among them that are priced.
    pub priced: usize,
    /// Priced models of the last good map; none on a first sync.
    pub last_priced: usize,
    /// Models priced in the last good map and not now, sorted.
    pub unpriced: Vec<String>,
    /// Models priced in the last good map with a cost number changed or gone, sorted.
    pub repriced: Vec<String>,
    /// Every price that moved, the largest moves first.
    pub moves: Vec<PriceMove>,
}

/// Compares the prices of `map` with those of `last_good` (none on a first sync).
pub fn price_report(map: &MapSummary, last_good: Option<&MapSummary>) -> PriceReport {
    let mut report = PriceReport::default();
    for (_, entry) in map.models().filter(|(_, entry)| !entry.alias) {
        report.models += 1;
        if entry.is_priced() {
            report.priced += 1;
        }
    }
    let Some(last_good) = last_good else {
        return report;
    };
    for (name, old) in last_good.models() {
        if old.alias || !old.is_priced() {
            continue;
        }
        report.last_priced += 1;
        // A model that is gone is the shrink guard's; one that became an alias row is not
        // a priced model any more and never counts as unpriced.
        let Some(new) = map.model(name).filter(|new| !new.alias) else {
            continue;
        };
        if !new.is_priced() {
            report.unpriced.push(name.to_owned());
        }
        if record_moves(name, old, new, &mut report.moves) {
            report.repriced.push(name.to_owned());
        }
    }
    report.moves.sort_by(|a, b| {
        b.factor()
            .total_cmp(&a.factor())
            .then_with(|| a.model.cmp(&b.model))
            .then_with(|| a.field.cmp(&b.field))
    });
    report
}

/// Adds every price of `name` that moved from `old` to `new` to `moves`; whether one of
/// `old`'s prices changed or is gone (a new cost key is a move, not a repricing).
fn record_moves(
    name: &str,
    old: &ModelSummary,
    new: &ModelSummary,
    moves: &mut Vec<PriceMove>,
) -> bool {
    let mut repriced = false;
    for (field, from) in old.costs.iter() {
        let to = new.cost(field);
        if to != Some(from) {
            repriced = true;
            moves.push(PriceMove {
                model: name.to_owned(),
                field: field.to_owned(),
                from: Some(from),
                to,
            });
        }
    }
    for (field, to) in new.costs.iter().filter(|(f, _)| old.cost(f).is_none()) {
        moves.push(PriceMove {
            model: name.to_owned(),
            field: field.to_owned(),
            from: None,
            to: Some(to),
        });
    }
    repriced
}

/// What each guard says of `map`: `Ok` or its refusal. The shrink guard and the share
/// guards that compare with the last good map say `Ok` on a first sync.
pub fn verdicts(
    map: &MapSummary,
    last_good: Option<&MapSummary>,
    report: &PriceReport,
    rules: &Rules,
) -> Vec<(Guard, Result<(), Refusal>)> {
    Guard::ALL
        .into_iter()
        .map(|guard| {
            let verdict = match guard {
                Guard::Shrink => last_good.map_or(Ok(()), |old| shrink_guard(map, rules, old)),
                Guard::MinPriced => min_priced(report, rules),
                Guard::MaxUnpriced => share_guard(
                    guard,
                    &report.unpriced,
                    report.last_priced,
                    rules.max_unpriced_percent,
                    "lost every price",
                ),
                Guard::MaxRepriced => share_guard(
                    guard,
                    &report.repriced,
                    report.last_priced,
                    rules.max_repriced_percent,
                    "changed or lost a price",
                ),
            };
            (guard, verdict)
        })
        .collect()
}

/// Every refusal of the guards.
pub fn refusals(
    map: &MapSummary,
    last_good: Option<&MapSummary>,
    report: &PriceReport,
    rules: &Rules,
) -> Vec<Refusal> {
    verdicts(map, last_good, report, rules)
        .into_iter()
        .filter_map(|(_, verdict)| verdict.err())
        .collect()
}

/// The shrink guard: refuses a map that drops more than `maxRemovedPercent` of the last good
/// map's models.
fn shrink_guard(map: &MapSummary, rules: &Rules, last_good: &MapSummary) -> Result<(), Refusal> {
    let before = last_good.model_count();
    let removed: Vec<&str> = last_good
        .models()
        .filter(|(name, _)| map.model(name).is_none())
        .map(|(name, _)| name)
        .collect();
    if over(removed.len(), before, rules.max_removed_percent) {
        return Err(Refusal {
            guard: Guard::Shrink,
            message: format!(
                "the new map drops {} of the last good map's {before} models ({}%), more than \
                 maxRemovedPercent {}%: {}",
                removed.len(),
                percent(removed.len(), before),
                rules.max_removed_percent,
                named(removed.iter().copied(), removed.len())
            ),
        });
    }
    Ok(())
}

/// The shrink guard when only the last good map's model count is known (its bytes are
/// gone from the cluster): refuses a map with more than `maxRemovedPercent` fewer models.
pub fn shrink_guard_by_count(
    models: usize,
    last_good_models: usize,
    rules: &Rules,
) -> Result<(), Refusal> {
    let fewer = last_good_models.saturating_sub(models);
    if over(fewer, last_good_models, rules.max_removed_percent) {
        return Err(Refusal {
            guard: Guard::Shrink,
            message: format!(
                "the new map has {models} models, {}% fewer than the {last_good_models} of the \
                 last good map (no longer in the cluster, so only its count is known), more \
                 than maxRemovedPercent {}%",
                percent(fewer, last_good_models),
                rules.max_removed_percent
            ),
        });
    }
    Ok(())
}

fn min_priced(report: &PriceReport, rules: &Rules) -> Result<(), Refusal> {
    let required = u64::from(rules.min_priced_percent) * report.models as u64;
    if report.models > 0 && (report.priced as u64) * 100 < required {
        return Err(Refusal {
            guard: Guard::MinPriced,
            message: format!(
                "only {} of the map's {} models ({}%) are priced, fewer than minPricedPercent \
                 {}% (real maps price 91-95% of their models)",
                report.priced,
                report.models,
                percent(report.priced, report.models),
                rules.min_priced_percent
            ),
        });
    }
    Ok(())
}

fn share_guard(
    guard: Guard,
    models: &[String],
    of: usize,
    max_percent: u32,
    what: &str,
) -> Result<(), Refusal> {
    if over(models.len(), of, max_percent) {
        return Err(Refusal {
            guard,
            message: format!(
                "{} of the last good map's {of} priced models ({}%) {what}, more than {} {}%: {}",
                models.len(),
                percent(models.len(), of),
                guard.setting(),
                max_percent,
                named(models.iter().map(String::as_str), models.len())
            ),
        });
    }
    Ok(())
}

/// Whether `part / whole > max%`, in integers: `part * 100 > max% * whole`.
fn over(part: usize, whole: usize, max_percent: u32) -> bool {
    whole > 0 && (part as u64) * 100 > u64::from(max_percent) * whole as u64
}

/// `part / whole` as a percentage with one decimal.
fn percent(part: usize, whole: usize) -> String {
    if whole == 0 {
        return "0".to_owned();
    }
    let tenths = (part as u64 * 1000 + whole as u64 / 2) / whole as u64;
    format!("{}.{}", tenths / 10, tenths % 10)
        .trim_end_matches(".0")
        .to_owned()
}

/// The first few names, and how many more.
fn named<'a>(names: impl Iterator<Item = &'a str>, count: usize) -> String {
    let first: Vec<String> = names.take(NAMED_MODELS).map(super::truncated).collect();
    let more = count.saturating_sub(NAMED_MODELS);
    if more > 0 {
        format!("{} and {more} more", first.join(", "))
    } else {
        first.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    use crate::sync::validate::ModelMap;
    use crate::sync::validate::tests::sample_map;

    fn parse(value: &Value) -> MapSummary {
        MapSummary::of(&ModelMap::parse(value.to_string().as_bytes()).unwrap())
    }

    /// `n` models priced `input`/`output` (`model-0`...), and `free` more with no price.
    fn priced_map(n: usize, free: usize, input: f64, output: f64) -> MapSummary {
        let mut map = serde_json::Map::new();
        for i in 0..n {
            map.insert(
                format!("model-{i}"),
                json!({"input_cost_per_token": input, "output_cost_per_token": output, "mode": "chat"}),
            );
        }
        for i in 0..free {
            map.insert(format!("free-{i}"), json!({"mode": "embedding"}));
        }
        parse(&Value::Object(map))
    }

    fn refused(map: &MapSummary, last_good: Option<&MapSummary>, rules: &Rules) -> Vec<Guard> {
        let report = price_report(map, last_good);
        refusals(map, last_good, &report, rules)
            .into_iter()
            .map(|r| r.guard)
            .collect()
    }

    #[test]
    fn shrink_guard_refuses_dropping_more_than_the_allowed_share() {
        let last_good = parse(&sample_map(100));
        let keeps_half = parse(&sample_map(50));
        assert!(shrink_guard(&keeps_half, &Rules::default(), &last_good).is_ok());
        let keeps_less = parse(&sample_map(49));
        let refusal = shrink_guard(&keeps_less, &Rules::default(), &last_good).unwrap_err();
        assert_eq!(refusal.guard, Guard::Shrink);
        assert!(
            refusal.message.starts_with(
                "the new map drops 51 of the last good map's 100 models (51%), more than \
                 maxRemovedPercent 50%: model-49, model-50,"
            ),
            "{}",
            refusal.message
        );
        let lenient = Rules {
            max_removed_percent: 100,
            ..Rules::default()
        };
        assert!(shrink_guard(&keeps_less, &lenient, &last_good).is_ok());
    }

    #[test]
    fn without_the_last_good_bytes_the_shrink_guard_counts_models() {
        let rules = Rules::default();
        shrink_guard_by_count(50, 100, &rules).unwrap();
        shrink_guard_by_count(500, 100, &rules).unwrap();
        shrink_guard_by_count(10, 0, &rules).unwrap();
        let err = shrink_guard_by_count(49, 100, &rules).unwrap_err();
        assert_eq!(err.guard, Guard::Shrink);
        assert!(
            err.message.contains("49 models, 51% fewer than the 100"),
            "{err}"
        );
    }

    #[test]
    fn min_priced_refuses_below_its_share_on_a_first_sync_too() {
        let rules = Rules::default();
        // Exactly 50% priced: accepted; one more free model: refused.
        assert_eq!(refused(&priced_map(50, 50, 1e-6, 2e-6), None, &rules), []);
        assert_eq!(
            refused(&priced_map(50, 51, 1e-6, 2e-6), None, &rules),
            [Guard::MinPriced]
        );
        let zero = priced_map(100, 0, 0.0, 0.0);
        let report = price_report(&zero, None);
        let refusal = min_priced(&report, &rules).unwrap_err();
        assert_eq!(
            refusal.message,
            "only 0 of the map's 100 models (0%) are priced, fewer than minPricedPercent 50% \
             (real maps price 91-95% of their models)"
        );
    }

    #[test]
    fn alias_rows_are_not_priced_models_and_never_count_as_unpriced() {
        let mut value = json!({});
        for i in 0..10 {
            value[format!("model-{i}")] = json!({"input_cost_per_token": 1e-6});
        }
        let last_good = parse(&value);
        value["model-3"] = json!({"alias_of": "model-4"});
        for i in 0..20 {
            value[format!("alias-{i}")] = json!({"alias_of": "model-1"});
        }
        let report = price_report(&parse(&value), Some(&last_good));
        assert_eq!((report.models, report.priced), (9, 9));
        assert_eq!(report.last_priced, 10);
        assert!(report.unpriced.is_empty() && report.repriced.is_empty());
    }

    #[test]
    fn max_unpriced_refuses_just_over_its_share() {
        let last_good = priced_map(200, 0, 1e-6, 2e-6);
        let rules = Rules::default();
        let unprice = |count: usize| {
            let mut value = serde_json::Map::new();
            for i in 0..200 {
                let price = if i < count { 0.0 } else { 1e-6 };
                value.insert(
                    format!("model-{i}"),
                    json!({"input_cost_per_token": price, "output_cost_per_token": if i < count { 0.0 } else { 2e-6 }}),
                );
            }
            parse(&Value::Object(value))
        };
        // 1% of 200 = 2: at the threshold accepted, one more refused.
        assert!(!refused(&unprice(2), Some(&last_good), &rules).contains(&Guard::MaxUnpriced));
        let three = unprice(3);
        let report = price_report(&three, Some(&last_good));
        assert_eq!(report.unpriced, ["model-0", "model-1", "model-2"]);
        let refusal = refusals(&three, Some(&last_good), &report, &rules)
            .into_iter()
            .find(|r| r.guard == Guard::MaxUnpriced)
            .unwrap();
        assert_eq!(
            refusal.message,
            "3 of the last good map's 200 priced models (1.5%) lost every price, more than \
             maxUnpricedPercent 1%: model-0, model-1, model-2"
        );
    }

    #[test]
    fn max_repriced_refuses_just_over_its_share_and_new_cost_keys_do_not_count() {
        let last_good = priced_map(100, 0, 1e-6, 2e-6);
        let rules = Rules::default();
        let reprice = |count: usize| {
            let mut value = serde_json::Map::new();
            for i in 0..100 {
                let input = if i < count { 3e-6 } else { 1e-6 };
                value.insert(
                    format!("model-{i}"),
                    json!({"input_cost_per_token": input, "output_cost_per_token": 2e-6,
                           "cache_read_input_token_cost": 1e-7}),
                );
            }
            parse(&Value::Object(value))
        };
        assert_eq!(refused(&reprice(25), Some(&last_good), &rules), []);
        assert_eq!(
            refused(&reprice(26), Some(&last_good), &rules),
            [Guard::MaxRepriced]
        );
        let report = price_report(&reprice(0), Some(&last_good));
        assert!(report.repriced.is_empty(), "a new cost key is no repricing");
        assert_eq!(report.moves.len(), 100, "but it is a move");
        assert_eq!(report.moves[0].from, None);
    }

    #[test]
    fn broken_price_maps_are_refused() {
        let last_good = priced_map(100, 0, 2.5e-6, 1e-5);
        let rules = Rules::default();
        assert_eq!(
            refused(&priced_map(100, 0, 0.0, 0.0), Some(&last_good), &rules),
            [Guard::MinPriced, Guard::MaxUnpriced, Guard::MaxRepriced]
        );
        let empty: serde_json::Map<String, Value> = (0..100)
            .map(|i| (format!("model-{i}"), json!({})))
            .collect();
        assert_eq!(
            refused(&parse(&Value::Object(empty)), Some(&last_good), &rules),
            [Guard::MinPriced, Guard::MaxUnpriced, Guard::MaxRepriced]
        );
        assert_eq!(
            refused(&priced_map(100, 0, 2.5, 1e-5), Some(&last_good), &rules),
            [Guard::MaxRepriced]
        );
        assert_eq!(
            refused(&priced_map(100, 0, 0.0, 1e-5), Some(&last_good), &rules),
            [Guard::MaxRepriced],
            "input zeroed, output kept: still priced, but repriced"
        );
    }

    #[test]
    fn moves_are_ordered_largest_first_and_read_as_upstream_writes_prices() {
        let last_good = parse(&json!({
            "gpt-4o": {"input_cost_per_token": 2.5e-6, "output_cost_per_token": 1e-5},
            "claude": {"input_cost_per_token": 3e-6, "search_context_cost_per_query": {"low": 0.01}},
        }));
        let new = parse(&json!({
            "gpt-4o": {"input_cost_per_token": 2.5e-3, "output_cost_per_token": 5e-6},
            "claude": {"input_cost_per_token": 3e-6},
        }));
        let report = price_report(&new, Some(&last_good));
        let described: Vec<String> = report.moves.iter().map(PriceMove::describe).collect();
        assert_eq!(
            described,
            [
                "claude search_context_cost_per_query.low 1e-02 -> (none) (gone)",
                "gpt-4o input_cost_per_token 2.5e-06 -> 2.5e-03 (x1000)",
                "gpt-4o output_cost_per_token 1e-05 -> 5e-06 (/2)",
            ]
        );
        assert_eq!(report.repriced, ["claude", "gpt-4o"]);
    }

    #[test]
    fn prices_read_as_upstream_writes_them() {
        assert_eq!(scientific(2.5e-6), "2.5e-06");
        assert_eq!(scientific(0.54), "5.4e-01");
        assert_eq!(scientific(15.0), "1.5e+01");
        assert_eq!(scientific(0.0), "0");
        assert_eq!(percent(1, 3), "33.3");
        assert_eq!(percent(3, 200), "1.5");
        assert_eq!(percent(1, 1), "100");
    }
}

//! `costmap-operator diff OLD NEW`: what NEW changes against OLD (the last good map) and
//! what each of the operator's checks would say, for reviewing a mirror's update in CI.
//! Exit 0 when every check accepts NEW, 1 when one refuses it, 2 when a map cannot be had
//! (or OLD is not a valid map).

use std::process::ExitCode;

use serde::Serialize;

use super::args::{DiffArgs, Output};

use crate::digest::sha256_digest;
use crate::sync::diff::diff;
use crate::sync::validate::guards::{self, Guard, PriceMove};
use crate::sync::validate::summary::MapSummary;
use crate::sync::validate::{IndexedMap, Rules};

/// How many names and moves the report lists.
const LISTED: usize = 20;

/// Everything `diff` says.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DiffReport {
    /// OLD's digest and models.
    pub old: MapInfo,
    /// NEW's digest and models (models: none when NEW does not parse).
    pub new: MapInfo,
    /// What changed, when NEW parses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<Change>,
    /// Each check's verdict, the structure rules first.
    pub checks: Vec<Verdict>,
    /// Whether every check accepts NEW.
    pub accepted: bool,
}

/// A map's identity.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MapInfo {
    /// Where it came from.
    pub source: String,
    /// `sha256:<hex>` of its bytes.
    pub digest: String,
    /// Its models, when it parses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<usize>,
}

/// What NEW changes.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// How many models are new, and the first ones.
    pub added: usize,
    pub added_models: Vec<String>,
    /// How many models are gone, and the first ones.
    pub removed: usize,
    pub removed_models: Vec<String>,
    /// Models whose entry changed.
    pub changed: usize,
    /// OLD's priced models, of which the shares below are.
    pub last_priced: usize,
    /// Priced models of OLD with a cost changed or gone, and the first ones.
    pub repriced: usize,
    pub repriced_models: Vec<String>,
    /// Priced models of OLD that lost every price, and the first ones.
    pub unpriced: usize,
    pub unpriced_models: Vec<String>,
    /// The largest price moves, largest first.
    pub price_moves: Vec<Move>,
}

/// One price move, as JSON.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Move {
    pub model: String,
    pub field: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<f64>,
    /// `gpt-4o input_cost_per_token 2.5e-06 -> 2.5e-03 (x1000)`.
    pub text: String,
}

/// One check's verdict.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    /// "structure" or the guard's setting (`maxRepricedPercent`, ...).
    pub check: String,
    /// Whether it accepts NEW.
    pub accepts: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// Compares `new` with `old` (the last good map) under `rules`. `old` must be a valid map:
/// the caller checks it ([`super::check::parse_last_good`]).
pub fn report(
    (old_source, old_bytes, old): (&str, &[u8], &MapSummary),
    (new_source, new_bytes): (&str, &[u8]),
    rules: &Rules,
) -> DiffReport {
    let old_info = MapInfo {
        source: old_source.to_owned(),
        digest: sha256_digest(old_bytes),
        models: Some(old.model_count()),
    };
    let mut new_info = MapInfo {
        source: new_source.to_owned(),
        digest: sha256_digest(new_bytes),
        models: None,
    };
    let new = match IndexedMap::read(new_bytes) {
        Ok(new) => new,
        Err(err) => {
            return DiffReport {
                old: old_info,
                new: new_info,
                change: None,
                checks: vec![refused("structure", err.to_string())],
                accepted: false,
            };
        }
    };
    new_info.models = Some(new.model_count());
    let structure = match new.check(rules) {
        Ok(()) => accepted("structure"),
        Err(err) => refused("structure", err.to_string()),
    };
    let new = new.into_summary();
    let prices = guards::price_report(&new, Some(old));
    let mut checks = vec![structure];
    checks.extend(
        guards::verdicts(&new, Some(old), &prices, rules)
            .into_iter()
            .map(|(guard, verdict)| match verdict {
                Ok(()) => accepted(guard.setting()),
                Err(refusal) => refused(guard.setting(), refusal.message),
            }),
    );
    let models = diff(old, &new);
    let change = Change {
        added: models.added.len(),
        added_models: first(&models.added),
        removed: models.removed.len(),
        removed_models: first(&models.removed),
        changed: models.changed,
        last_priced: prices.last_priced,
        repriced: prices.repriced.len(),
        repriced_models: first(&prices.repriced),
        unpriced: prices.unpriced.len(),
        unpriced_models: first(&prices.unpriced),
        price_moves: prices.moves.iter().take(LISTED).map(json_move).collect(),
    };
    DiffReport {
        old: old_info,
        new: new_info,
        change: Some(change),
        accepted: checks.iter().all(|check| check.accepts),
        checks,
    }
}

fn first(names: &[String]) -> Vec<String> {
    names.iter().take(LISTED).cloned().collect()
}

fn json_move(moved: &PriceMove) -> Move {
    Move {
        model: moved.model.clone(),
        field: moved.field.clone(),
        from: moved.from,
        to: moved.to,
        text: moved.describe(),
    }
}

fn accepted(check: &str) -> Verdict {
    Verdict {
        check: check.to_owned(),
        accepts: true,
        why: None,
    }
}

fn refused(check: &str, why: String) -> Verdict {
    Verdict {
        check: check.to_owned(),
        accepts: false,
        why: Some(why),
    }
}

/// The thresholds a guard was judged with, for the text report.
fn threshold(check: &str, rules: &Rules) -> String {
    let guard = Guard::ALL
        .into_iter()
        .find(|guard| guard.setting() == check);
    match guard {
        Some(Guard::Shrink) => format!("{}%", rules.max_removed_percent),
        Some(Guard::MinPriced) => format!("{}%", rules.min_priced_percent),
        Some(Guard::MaxUnpriced) => format!("{}%", rules.max_unpriced_percent),
        Some(Guard::MaxRepriced) => format!("{}%", rules.max_repriced_percent),
        None => format!("minModels {}", rules.min_models),
    }
}

/// The report as plain text.
pub fn text(report: &DiffReport, rules: &Rules) -> String {
    let mut out = String::new();
    let models = |info: &MapInfo| info.models.map_or("-".to_owned(), |m| m.to_string());
    out.push_str(&format!(
        "old: {} ({} models, {})\n",
        report.old.source,
        models(&report.old),
        report.old.digest
    ));
    out.push_str(&format!(
        "new: {} ({} models, {})\n",
        report.new.source,
        models(&report.new),
        report.new.digest
    ));
    if let Some(change) = &report.change {
        let names = |count: usize, names: &[String]| {
            if names.is_empty() {
                count.to_string()
            } else {
                let more = count.saturating_sub(names.len());
                let more = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                format!("{count}: {}{more}", names.join(", "))
            }
        };
        out.push_str(&format!(
            "added:    {}\n",
            names(change.added, &change.added_models)
        ));
        out.push_str(&format!(
            "removed:  {}\n",
            names(change.removed, &change.removed_models)
        ));
        out.push_str(&format!("changed:  {}\n", change.changed));
        out.push_str(&format!(
            "repriced: {} of {} priced models\n",
            names(change.repriced, &change.repriced_models),
            change.last_priced
        ));
        out.push_str(&format!(
            "unpriced: {}\n",
            names(change.unpriced, &change.unpriced_models)
        ));
        if !change.price_moves.is_empty() {
            out.push_str("largest price moves:\n");
            for moved in &change.price_moves {
                out.push_str(&format!("  {}\n", moved.text));
            }
        }
    }
    out.push_str("checks:\n");
    for check in &report.checks {
        let verdict = match &check.why {
            None => "accepts".to_owned(),
            Some(why) => format!("REFUSES: {why}"),
        };
        out.push_str(&format!(
            "  {:<20} {:<14} {verdict}\n",
            check.check,
            threshold(&check.check, rules)
        ));
    }
    out.push_str(if report.accepted {
        "verdict: the operator would accept the new map\n"
    } else {
        "verdict: the operator would refuse the new map\n"
    });
    out
}

/// Runs `diff` as the command line asks; exit 0 when every guard accepts, 1 when one
/// refuses, 2 on unusable input.
pub async fn run(args: DiffArgs) -> ExitCode {
    let unusable = |err: anyhow::Error| {
        eprintln!("error: {err:#}");
        ExitCode::from(2)
    };
    let fetcher = match args.fetch.local_fetcher() {
        Ok(fetcher) => fetcher,
        Err(err) => return unusable(err),
    };
    let (old, new) = tokio::join!(
        super::load(&args.old, &fetcher, args.timeout),
        super::load(&args.new, &fetcher, args.timeout)
    );
    let (old, new) = match (old, new) {
        (Ok(old), Ok(new)) => (old.bytes, new.bytes),
        (Err(err), _) | (_, Err(err)) => return unusable(err.into()),
    };
    let parsed = match super::check::parse_last_good(&old) {
        Ok(parsed) => parsed,
        Err(err) => {
            return unusable(anyhow::anyhow!(
                "the old map {} is not a valid map: {err}",
                super::shown_source(&args.old)
            ));
        }
    };
    let rules = args.rules.rules();
    let (old_source, new_source) = (
        super::shown_source(&args.old),
        super::shown_source(&args.new),
    );
    let report = report((&old_source, &old, &parsed), (&new_source, &new), &rules);
    let printed = match args.output {
        Output::Text => super::print_out(text(&report, &rules)),
        Output::Json => match serde_json::to_string_pretty(&report) {
            Ok(json) => super::print_out(format_args!("{json}\n")),
            Err(err) => return unusable(err.into()),
        },
    };
    if let Err(err) = printed {
        return unusable(err);
    }
    if report.accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn map(n: usize, input: f64) -> Vec<u8> {
        let entries: serde_json::Map<String, Value> = (0..n)
            .map(|i| {
                (
                    format!("model-{i}"),
                    json!({"input_cost_per_token": input, "output_cost_per_token": 1e-5}),
                )
            })
            .collect();
        serde_json::to_vec(&entries).unwrap()
    }

    fn diffed(old: &[u8], new: &[u8]) -> DiffReport {
        let parsed = IndexedMap::read(old).unwrap().into_summary();
        report(
            ("old.json", old, &parsed),
            ("new.json", new),
            &Rules::default(),
        )
    }

    #[test]
    fn an_accepted_update_lists_what_changed_and_every_check_accepts() {
        let old = map(100, 1e-6);
        let mut new: serde_json::Map<String, Value> = serde_json::from_slice(&old).unwrap();
        new.insert("day0".into(), json!({"input_cost_per_token": 1e-6}));
        new["model-0"]["input_cost_per_token"] = json!(1e-3);
        let report = diffed(&old, &serde_json::to_vec(&new).unwrap());
        assert!(report.accepted);
        let change = report.change.as_ref().unwrap();
        assert_eq!((change.added, change.repriced, change.unpriced), (1, 1, 0));
        assert_eq!(
            change.price_moves[0].text,
            "model-0 input_cost_per_token 1e-06 -> 1e-03 (x1000)"
        );
        assert_eq!(report.checks.len(), 5);
        let text = text(&report, &Rules::default());
        assert!(text.contains("added:    1: day0"), "{text}");
        assert!(
            text.contains("verdict: the operator would accept"),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["accepted"], true);
        assert_eq!(json["change"]["priceMoves"][0]["to"], 1e-3);
    }

    #[test]
    fn a_broken_update_is_refused_by_the_guard_that_catches_it() {
        let report = diffed(&map(100, 1e-6), &map(100, 1.0));
        assert!(!report.accepted);
        let refused: Vec<&str> = report
            .checks
            .iter()
            .filter(|c| !c.accepts)
            .map(|c| c.check.as_str())
            .collect();
        assert_eq!(refused, ["maxRepricedPercent"]);
        let text = text(&report, &Rules::default());
        assert!(
            text.contains("maxRepricedPercent   25%            REFUSES: 100 of"),
            "{text}"
        );
        let not_json = diffed(&map(100, 1e-6), b"<html>");
        assert!(!not_json.accepted);
        assert_eq!(not_json.checks[0].check, "structure");
        assert!(not_json.change.is_none());
    }
}

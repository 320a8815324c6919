//! Repriced deployments, pure: which of a proxy's deployments a map change repriced, with
//! the old and new prices ("what does this map change for us"), what its status row keeps
//! between changes, and how the Event and the metric sum the rows up.
//!
//! The moved prices are the guards' (`crate::sync::diff::Repricing`, from the last good
//! map the operator holds); a deployment counts by what its proxy reports in
//! `GET /model/info`, so a model no proxy routes never does, and neither does a deployment
//! whose own model_info sets the price that moved.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::api::{ConsumerStatus, CostChange, RepricedModel};
use crate::controller::memory::LastRepricing;
use crate::litellm::Deployment;
use crate::sync::diff::Repricing;
use crate::sync::validate::guards::PriceMove;
use crate::sync::validate::summary::ModelSummary;

/// Most repriced deployments kept per proxy row.
pub(crate) const MAX_REPRICED_MODELS: usize = 20;
/// Most moved prices kept per deployment: an entry whose every price moved (a unit error
/// fixed) has dozens, and each proxy row repeats them.
const MAX_CHANGES: usize = 5;
/// How many repriced deployments the MapUpdated Event names.
const EVENT_DEPLOYMENTS: usize = 3;

/// Which of the two maps of a change a proxy serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The map before: the module-reloading proxy that has not polled yet.
    Before,
    /// The new map.
    After,
}

/// The deployments `prices` reprices, judged by what the proxy reports, which serves the
/// map of `side`: a moved price counts for a deployment when the proxy reports it as that
/// map has it (on the map before, as either map has it). One whose own model_info sets
/// the price reports its own, and the move is not its. One per model name and map key,
/// sorted, at most [`MAX_REPRICED_MODELS`].
pub(crate) fn repriced_deployments(
    deployments: &[Deployment],
    prices: &Repricing,
    side: Side,
) -> Vec<RepricedModel> {
    let mut found: BTreeMap<(&str, &str), Vec<CostChange>> = BTreeMap::new();
    for deployment in deployments {
        let Some(key) = deployment.map_key() else {
            continue;
        };
        let moves = prices.moves(key);
        let name = deployment.model_name.as_str();
        if moves.is_empty() || found.contains_key(&(name, key)) {
            continue;
        }
        let reported = ModelSummary::of(&Value::Object(deployment.model_info.clone()));
        let changes: Vec<CostChange> = moves
            .iter()
            .filter_map(|moved| {
                let from = moved.from?;
                let reported = reported.cost(&moved.field);
                // A proxy seen on the map before may load the new one between the two
                // GETs (its module polls): either map's price is the map's, then.
                let the_maps = match side {
                    Side::Before => reported == Some(from) || reported == moved.to,
                    Side::After => reported == moved.to,
                };
                the_maps.then(|| CostChange {
                    field: moved.field.clone(),
                    from,
                    to: moved.to,
                })
            })
            .take(MAX_CHANGES)
            .collect();
        if !changes.is_empty() {
            found.insert((name, key), changes);
        }
    }
    found
        .into_iter()
        .take(MAX_REPRICED_MODELS)
        .map(|((name, key), changes)| RepricedModel {
            model_name: name.to_owned(),
            key: key.to_owned(),
            changes,
        })
        .collect()
}

/// A proxy row's repriced list after a check. Judged anew when the proxy listed its
/// `deployments` and serves one of the two maps of `last` (the change to the `current`
/// map); else the row before keeps its list while both serve the current map (an operator
/// restarted since the change has no prices to judge by, but the list still describes
/// it); else none.
pub(crate) fn row_list(
    row: &ConsumerStatus,
    deployments: Option<&[Deployment]>,
    last: Option<&LastRepricing>,
    current: &str,
    previous: Option<&ConsumerStatus>,
) -> Option<Vec<RepricedModel>> {
    let serves = row.source_revision.as_deref();
    let side = last.and_then(|last| match serves {
        Some(revision) if revision == last.after => Some(Side::After),
        Some(revision) if last.before.as_deref() == Some(revision) => Some(Side::Before),
        _ => None,
    });
    if let (Some(last), Some(side), Some(deployments)) = (last, side, deployments) {
        return Some(repriced_deployments(deployments, &last.prices, side));
    }
    previous
        .filter(|before| serves == Some(current) && before.source_revision.as_deref() == serves)
        .and_then(|before| before.repriced_models.clone())
}

/// The distinct repriced deployments (model name and key) over every row, with the
/// first row's account of each.
pub(crate) fn repriced_over(rows: &[ConsumerStatus]) -> Vec<&RepricedModel> {
    let mut seen = BTreeSet::new();
    let mut all: Vec<&RepricedModel> = rows
        .iter()
        .flat_map(|row| row.repriced_models.iter().flatten())
        .filter(|model| seen.insert((model.model_name.as_str(), model.key.as_str())))
        .collect();
    all.sort_by(|a, b| (&a.model_name, &a.key).cmp(&(&b.model_name, &b.key)));
    all
}

/// Adds [`event_text`] to a MapUpdated `note` ("ConfigMap x: N models; ..."), right after
/// the model count: the map-wide lists after it (new models, largest moves) can fill the
/// Event's 1000 characters, and what the proxies route is what a platform team reads first.
pub(crate) fn add_to_note(note: &mut String, rows: &[ConsumerStatus]) {
    let Some(text) = event_text(rows) else {
        return;
    };
    // A ConfigMap's name has no "; ".
    let at = note.find("; ").unwrap_or(note.len());
    note.insert_str(at, &text);
}

/// What the MapUpdated Event says about the rows: the first few repriced deployments with
/// their largest move, and how many more; none when nothing routed was repriced.
fn event_text(rows: &[ConsumerStatus]) -> Option<String> {
    let all = repriced_over(rows);
    if all.is_empty() {
        return None;
    }
    let named: Vec<String> = all
        .iter()
        .take(EVENT_DEPLOYMENTS)
        .filter_map(|model| {
            let change = model.changes.first()?;
            let who = if model.key == model.model_name {
                model.model_name.clone()
            } else {
                format!("{} (priced by {})", model.model_name, model.key)
            };
            // The words of the map's own largest moves, so the two read alike.
            let moved = PriceMove {
                model: who,
                field: change.field.clone(),
                from: Some(change.from),
                to: change.to,
            };
            Some(moved.describe())
        })
        .collect();
    let mut text = format!(
        "; the proxies route {} repriced deployments: {}",
        all.len(),
        named.join(", ")
    );
    if all.len() > EVENT_DEPLOYMENTS {
        text.push_str(&format!(" and {} more", all.len() - EVENT_DEPLOYMENTS));
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ConsumerState;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;
    use std::sync::Arc;

    fn moved(model: &str, field: &str, from: f64, to: Option<f64>) -> PriceMove {
        PriceMove {
            model: model.into(),
            field: field.into(),
            from: Some(from),
            to,
        }
    }

    fn deployment(name: &str, model_info: Value) -> Deployment {
        serde_json::from_value(json!({"model_name": name, "model_info": model_info})).unwrap()
    }

    /// gpt-4o's input price moves 2.5e-6 -> 3e-6 and its batch price goes; claude's
    /// output price moves, but no proxy routes claude; a new cost key is no repricing.
    fn repricing() -> Repricing {
        Repricing::of(&[
            moved("gpt-4o", "input_cost_per_token", 2.5e-6, Some(3e-6)),
            moved("gpt-4o", "input_cost_per_token_batches", 1.25e-6, None),
            moved("claude", "output_cost_per_token", 1.5e-5, Some(1e-5)),
            PriceMove {
                model: "gpt-4o".into(),
                field: "cache_read_input_token_cost".into(),
                from: None,
                to: Some(1e-7),
            },
        ])
    }

    fn gpt_4o(name: &str, input: f64) -> Deployment {
        deployment(
            name,
            json!({"key": "gpt-4o", "input_cost_per_token": input, "output_cost_per_token": 1e-5,
                   "input_cost_per_token_batches": null, "cache_read_input_token_cost": 1e-7}),
        )
    }

    #[test]
    fn a_routed_model_whose_map_price_moved_is_repriced_with_old_and_new_prices() {
        let found = repriced_deployments(&[gpt_4o("gpt-4o", 3e-6)], &repricing(), Side::After);
        assert_eq!(
            found,
            [RepricedModel {
                model_name: "gpt-4o".into(),
                key: "gpt-4o".into(),
                changes: vec![
                    CostChange {
                        field: "input_cost_per_token".into(),
                        from: 2.5e-6,
                        to: Some(3e-6)
                    },
                    CostChange {
                        field: "input_cost_per_token_batches".into(),
                        from: 1.25e-6,
                        to: None
                    },
                ],
            }]
        );
    }

    #[test]
    fn a_model_nobody_routes_and_an_unchanged_one_are_not_repriced() {
        let routed = [
            deployment(
                "mine",
                json!({"key": "gpt-4o-mini", "input_cost_per_token": 1.5e-7}),
            ),
            deployment("unknown", json!({"input_cost_per_token": null})),
        ];
        assert_eq!(repriced_deployments(&routed, &repricing(), Side::After), []);
        let claude = deployment(
            "claude",
            json!({"key": "claude", "output_cost_per_token": 1e-5}),
        );
        assert_eq!(
            repriced_deployments(&[claude], &repricing(), Side::After).len(),
            1,
            "routed, claude counts"
        );
    }

    #[test]
    fn a_deployment_priced_by_its_own_model_info_is_judged_by_what_the_proxy_reports() {
        // Its config sets input_cost_per_token (a negotiated rate) and a batch price: the
        // proxy reports those, so the map's moves on both are not its.
        let custom = deployment(
            "gpt-4o-negotiated",
            json!({"key": "gpt-4o", "input_cost_per_token": 2e-6,
                   "input_cost_per_token_batches": 1e-6}),
        );
        assert_eq!(
            repriced_deployments(std::slice::from_ref(&custom), &repricing(), Side::After),
            []
        );
        assert_eq!(
            repriced_deployments(&[custom], &repricing(), Side::Before),
            []
        );
        // One that sets only the batch price is repriced on input alone.
        let partly = deployment(
            "gpt-4o-batch",
            json!({"key": "gpt-4o", "input_cost_per_token": 3e-6,
                   "input_cost_per_token_batches": 1e-6}),
        );
        let found = repriced_deployments(&[partly], &repricing(), Side::After);
        let fields: Vec<&str> = found[0].changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, ["input_cost_per_token"]);
        assert_eq!(found[0].model_name, "gpt-4o-batch");
    }

    #[test]
    fn a_proxy_still_on_the_map_before_is_judged_by_the_old_prices() {
        let before = deployment(
            "gpt-4o",
            json!({"key": "gpt-4o", "input_cost_per_token": 2.5e-6,
                   "input_cost_per_token_batches": 1.25e-6}),
        );
        let found = repriced_deployments(std::slice::from_ref(&before), &repricing(), Side::Before);
        assert_eq!(found[0].changes.len(), 2);
        assert_eq!(found[0].changes[0].to, Some(3e-6), "the new price, ahead");
        // The same report read as the new map's: nothing matches it (a deployment that
        // pins the old price in its model_info is not repriced).
        assert_eq!(
            repriced_deployments(&[before], &repricing(), Side::After),
            []
        );
        // Seen on the map before, but it loaded the new one before listing its
        // deployments: repriced all the same.
        let loaded = gpt_4o("gpt-4o", 3e-6);
        let found = repriced_deployments(&[loaded], &repricing(), Side::Before);
        assert_eq!(found[0].changes.len(), 2);
    }

    #[test]
    fn one_entry_per_name_and_key_at_most_twenty_sorted() {
        let moves: Vec<PriceMove> = (0..30)
            .map(|i| moved(&format!("m{i:02}"), "input_cost_per_token", 1.0, Some(2.0)))
            .collect();
        let prices = Repricing::of(&moves);
        let mut deployments: Vec<Deployment> = (0..30)
            .rev()
            .map(|i| {
                deployment(
                    &format!("d{i:02}"),
                    json!({"key": format!("m{i:02}"), "input_cost_per_token": 2.0}),
                )
            })
            .collect();
        // A second replica of d00's deployment (load-balanced) is one entry.
        deployments.push(deployments[29].clone());
        let found = repriced_deployments(&deployments, &prices, Side::After);
        assert_eq!(found.len(), MAX_REPRICED_MODELS);
        assert_eq!(found[0].model_name, "d00");
        assert_eq!(found[19].model_name, "d19");
        // Moves per deployment are bounded too.
        let many: Vec<PriceMove> = (0..8)
            .map(|i| moved("big", &format!("f{i}_cost"), 1.0, None))
            .collect();
        let big = deployment("big", json!({"key": "big"}));
        let found = repriced_deployments(&[big], &Repricing::of(&many), Side::After);
        assert_eq!(found[0].changes.len(), MAX_CHANGES);
    }

    fn row(revision: &str, list: Option<Vec<RepricedModel>>) -> ConsumerStatus {
        ConsumerStatus {
            url: "http://10.0.0.7:4000".into(),
            pod: None,
            state: ConsumerState::Current,
            source_revision: Some(revision.into()),
            models: None,
            checked_at: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            message: None,
            unpriced_models: Some(Vec::new()),
            repriced_models: list,
        }
    }

    fn last() -> LastRepricing {
        LastRepricing {
            before: Some("old".into()),
            after: "new".into(),
            prices: Arc::new(repricing()),
        }
    }

    #[test]
    fn a_row_is_judged_on_either_map_of_the_change_and_kept_until_the_next() {
        let listed = [gpt_4o("gpt-4o", 3e-6)];
        let on_new = row_list(&row("new", None), Some(&listed), Some(&last()), "new", None);
        assert_eq!(on_new.as_ref().map(Vec::len), Some(1));
        // Nothing routed moved: an empty list, which replaces the one before.
        let earlier = row("new", on_new.clone());
        let unrouted = [deployment("x", json!({"key": "x"}))];
        let judged = row_list(
            &row("new", None),
            Some(&unrouted),
            Some(&last()),
            "new",
            Some(&earlier),
        );
        assert_eq!(judged, Some(Vec::new()));
        // Not judged (no /model/info answer, or a restart forgot the prices): kept while
        // the proxy serves the same current map.
        assert_eq!(
            row_list(
                &row("new", None),
                None,
                Some(&last()),
                "new",
                Some(&earlier)
            ),
            on_new
        );
        assert_eq!(
            row_list(&row("new", None), None, None, "new", Some(&earlier)),
            on_new
        );
        // A proxy on a map that is neither: nothing to say.
        assert_eq!(
            row_list(
                &row("older", None),
                Some(&listed),
                Some(&last()),
                "new",
                None
            ),
            None
        );
        // A proxy not on the current map does not keep a list of another change.
        let stale_before = row("old", on_new.clone());
        assert_eq!(
            row_list(&row("old", None), None, None, "new", Some(&stale_before)),
            None
        );
    }

    #[test]
    fn the_event_names_the_first_few_and_counts_the_rest() {
        let entry = |name: &str, key: &str| RepricedModel {
            model_name: name.into(),
            key: key.into(),
            changes: vec![CostChange {
                field: "input_cost_per_token".into(),
                from: 2.5e-6,
                to: Some(5e-6),
            }],
        };
        let a = row(
            "new",
            Some(vec![entry("a", "a"), entry("b", "gpt-4o"), entry("c", "c")]),
        );
        let b = row("new", Some(vec![entry("a", "a"), entry("d", "d")]));
        assert_eq!(repriced_over(&[a.clone(), b.clone()]).len(), 4);
        let text = event_text(&[a, b]).unwrap();
        assert_eq!(
            text,
            "; the proxies route 4 repriced deployments: \
             a input_cost_per_token 2.5e-06 -> 5e-06 (x2), \
             b (priced by gpt-4o) input_cost_per_token 2.5e-06 -> 5e-06 (x2), \
             c input_cost_per_token 2.5e-06 -> 5e-06 (x2) and 1 more"
        );
        assert_eq!(event_text(&[row("new", Some(Vec::new()))]), None);
        assert_eq!(event_text(&[row("new", None)]), None);
    }

    #[test]
    fn the_event_says_it_before_the_map_wide_lists() {
        let rows = [row(
            "new",
            Some(vec![RepricedModel {
                model_name: "gpt-4o".into(),
                key: "gpt-4o".into(),
                changes: vec![CostChange {
                    field: "input_cost_per_token".into(),
                    from: 2.5e-6,
                    to: None,
                }],
            }]),
        )];
        let mut note = "ConfigMap litellm: 61 models; 1 added, 0 removed, 2 changed".to_owned();
        add_to_note(&mut note, &rows);
        assert_eq!(
            note,
            "ConfigMap litellm: 61 models; the proxies route 1 repriced deployments: \
             gpt-4o input_cost_per_token 2.5e-06 -> (none) (gone); 1 added, 0 removed, 2 changed"
        );
        let mut nothing = "ConfigMap litellm: 61 models; 1 added".to_owned();
        add_to_note(&mut nothing, &[row("new", Some(Vec::new()))]);
        assert_eq!(nothing, "ConfigMap litellm: 61 models; 1 added");
    }
}

//! What a new map changes against the last good one: the models added (day-0 launches),
//! removed, changed and repriced.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::api::{LastChange, PriceChange};
use crate::sync::validate::guards::{PriceMove, PriceReport};
use crate::sync::validate::summary::MapSummary;

/// How many model names `status.lastChange` lists per direction.
pub const LISTED_MODELS: usize = 20;
/// How many price moves `status.lastChange` lists.
pub const LISTED_MOVES: usize = 20;
/// How many price moves an Event names.
const EVENT_MOVES: usize = 3;

/// The model-level difference between two maps. Names are sorted.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MapChange {
    /// Models only in the new map.
    pub added: Vec<String>,
    /// Models only in the old map.
    pub removed: Vec<String>,
    /// Models in both whose entries differ.
    pub changed: usize,
    /// Priced models of the old map with a cost number changed or gone.
    pub repriced: usize,
    /// Priced models of the old map that lost every price.
    pub unpriced: usize,
    /// The largest price moves (at most [`LISTED_MOVES`]), largest first.
    pub price_moves: Vec<PriceMove>,
    /// Every price of the repriced models, by model: what the proxies' deployments are
    /// judged against. Shared: one prepared map's change goes to every object with it.
    pub repricing: Arc<Repricing>,
}

/// The prices of the last good map that a new map changed or dropped, by model: the
/// *repriced* models of the guards (a new cost key is no repricing), with every move of
/// theirs. Kept whole, not only the largest moves: a proxy may route any of them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Repricing {
    by_model: BTreeMap<String, Vec<PriceMove>>,
}

impl Repricing {
    /// The moves of `moves` away from a price the last good map had, by model, in the
    /// order given (the report's: the largest first).
    pub fn of(moves: &[PriceMove]) -> Repricing {
        let mut by_model: BTreeMap<String, Vec<PriceMove>> = BTreeMap::new();
        for moved in moves.iter().filter(|moved| moved.from.is_some()) {
            by_model
                .entry(moved.model.clone())
                .or_default()
                .push(moved.clone());
        }
        Repricing { by_model }
    }

    /// The prices of the map entry `model` that moved; empty when none did.
    pub fn moves(&self, model: &str) -> &[PriceMove] {
        self.by_model.get(model).map_or(&[], Vec::as_slice)
    }

    /// How many models were repriced.
    pub fn len(&self) -> usize {
        self.by_model.len()
    }

    /// Whether no model was repriced.
    pub fn is_empty(&self) -> bool {
        self.by_model.is_empty()
    }
}

/// Compares two maps model by model. Entries are compared as parsed JSON (by fingerprint),
/// so a change in layout alone changes nothing, while `4096` -> `4096.0` counts (LiteLLM
/// sees a float).
pub fn diff(old: &MapSummary, new: &MapSummary) -> MapChange {
    let mut change = MapChange::default();
    for (name, entry) in new.models() {
        match old.model(name) {
            None => change.added.push(name.to_owned()),
            Some(old_entry) if old_entry.fingerprint != entry.fingerprint => change.changed += 1,
            Some(_) => {}
        }
    }
    change.removed = old
        .models()
        .filter(|(name, _)| new.model(name).is_none())
        .map(|(name, _)| name.to_owned())
        .collect();
    change
}

impl MapChange {
    /// This change with the price moves of `report` (of the same two maps).
    pub fn with_prices(mut self, report: &PriceReport) -> MapChange {
        self.repriced = report.repriced.len();
        self.unpriced = report.unpriced.len();
        self.price_moves = report.moves.iter().take(LISTED_MOVES).cloned().collect();
        self.repricing = Arc::new(Repricing::of(&report.moves));
        self
    }

    /// Whether any model was added, removed or changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed == 0
    }

    /// The summary kept in `status.lastChange`.
    pub fn to_status(&self) -> LastChange {
        LastChange {
            added: count(self.added.len()),
            removed: count(self.removed.len()),
            changed: count(self.changed),
            added_models: self.added.iter().take(LISTED_MODELS).cloned().collect(),
            removed_models: self.removed.iter().take(LISTED_MODELS).cloned().collect(),
            repriced: count(self.repriced),
            unpriced: count(self.unpriced),
            price_changes: self
                .price_moves
                .iter()
                .map(|moved| PriceChange {
                    model: moved.model.clone(),
                    field: moved.field.clone(),
                    from: moved.from,
                    to: moved.to,
                })
                .collect(),
        }
    }

    /// One line for an Event: counts, then the names of new models (what users look for on
    /// launch day).
    pub fn summary(&self, max_names: usize) -> String {
        let mut line = format!(
            "{} added, {} removed, {} changed",
            self.added.len(),
            self.removed.len(),
            self.changed
        );
        if !self.added.is_empty() {
            let names: Vec<&str> = self
                .added
                .iter()
                .take(max_names)
                .map(String::as_str)
                .collect();
            line.push_str(&format!("; new: {}", names.join(", ")));
            if self.added.len() > max_names {
                line.push_str(&format!(" and {} more", self.added.len() - max_names));
            }
        }
        if !self.price_moves.is_empty() {
            let moves: Vec<String> = self
                .price_moves
                .iter()
                .take(EVENT_MOVES)
                .map(PriceMove::describe)
                .collect();
            line.push_str(&format!(
                "; {} repriced, {} unpriced; largest price moves: {}",
                self.repriced,
                self.unpriced,
                moves.join(", ")
            ));
        }
        line
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: serde_json::Value) -> MapSummary {
        MapSummary::of(
            &crate::sync::validate::ModelMap::parse(value.to_string().as_bytes()).unwrap(),
        )
    }

    #[test]
    fn added_removed_and_changed_models_are_counted() {
        let old = map(
            json!({"a": {"mode": "chat"}, "b": {"mode": "chat"}, "c": {"max_tokens": 4096},
                             "sample_spec": {"mode": "x"}}),
        );
        let new = map(
            json!({"a": {"mode": "chat"}, "c": {"max_tokens": 4096.0}, "d": {"mode": "chat"},
                             "e": {}, "sample_spec": {"mode": "y"}}),
        );
        let change = diff(&old, &new);
        assert_eq!(change.added, ["d", "e"]);
        assert_eq!(change.removed, ["b"]);
        assert_eq!(
            change.changed, 1,
            "4096 -> 4096.0 is a change; sample_spec is not a model"
        );
        assert!(!change.is_empty());
    }

    #[test]
    fn identical_maps_differ_in_nothing_even_when_laid_out_differently() {
        use crate::sync::validate::ModelMap;
        let compact = ModelMap::parse(br#"{"a":{"mode":"chat","max_tokens":1}}"#).unwrap();
        let pretty = ModelMap::parse(
            b"{\n  \"a\": {\n    \"max_tokens\": 1,\n    \"mode\": \"chat\"\n  }\n}",
        )
        .unwrap();
        assert!(diff(&MapSummary::of(&compact), &MapSummary::of(&pretty)).is_empty());
    }

    #[test]
    fn status_lists_the_first_twenty_names_and_full_counts() {
        let old = map(json!({}));
        let new_models: serde_json::Map<String, serde_json::Value> =
            (0..30).map(|i| (format!("m{i:02}"), json!({}))).collect();
        let change = diff(&old, &map(serde_json::Value::Object(new_models)));
        let status = change.to_status();
        assert_eq!(status.added, 30);
        assert_eq!(status.added_models.len(), LISTED_MODELS);
        assert_eq!(status.added_models[0], "m00");
        assert_eq!(
            change.summary(3),
            "30 added, 0 removed, 0 changed; new: m00, m01, m02 and 27 more"
        );
    }
    #[test]
    fn the_repricing_holds_every_move_of_the_repriced_models_and_no_new_cost_key() {
        use crate::sync::validate::guards::price_report;
        let old = map(json!({
            "gpt": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6},
            "claude": {"input_cost_per_token": 3e-6},
            "steady": {"input_cost_per_token": 5e-6},
        }));
        let new = map(json!({
            "gpt": {"input_cost_per_token": 1e-3, "output_cost_per_token": 2e-6},
            "claude": {"input_cost_per_token": 3e-6, "cache_read_input_token_cost": 1e-7},
            "steady": {},
        }));
        let report = price_report(&new, Some(&old));
        let change = diff(&old, &new).with_prices(&report);
        let repricing = &change.repricing;
        // Exactly the guards' repriced models: a new cost key (claude's) reprices nothing.
        assert_eq!(repricing.len(), report.repriced.len());
        assert!(repricing.moves("claude").is_empty());
        let gpt = repricing.moves("gpt");
        assert_eq!(gpt.len(), 1);
        assert_eq!(
            (gpt[0].field.as_str(), gpt[0].from, gpt[0].to),
            ("input_cost_per_token", Some(1e-6), Some(1e-3))
        );
        let steady = repricing.moves("steady");
        assert_eq!(
            (steady[0].from, steady[0].to),
            (Some(5e-6), None),
            "a gone price"
        );
        assert!(
            diff(&old, &new).repricing.is_empty(),
            "no prices, no repricing"
        );
    }
}

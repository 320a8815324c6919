//! Prometheus metrics, served on `/metrics`. Names are prefixed `costmap_`.

use std::fmt::Write;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// How one sync attempt ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum SyncResult {
    /// A new map was validated and written.
    Updated,
    /// The source re-sent the last good map's bytes; nothing was parsed or written.
    Unchanged,
    /// The source answered 304 Not Modified; nothing was read, parsed or written.
    NotModified,
    /// The attempt failed; the ConfigMap kept the last good map.
    Failed,
}

impl SyncResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncResult::Updated => "updated",
            SyncResult::Unchanged => "unchanged",
            SyncResult::NotModified => "not_modified",
            SyncResult::Failed => "failed",
        }
    }
}

impl EncodeLabelValue for SyncResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Labels of `costmap_syncs_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    /// How it ended.
    pub result: SyncResult,
}

/// The operator's metrics.
pub struct Metrics {
    /// Everything registered, for `/metrics`.
    pub registry: Registry,
    /// Reconciles finished, with or without a sync.
    pub reconciles: Counter,
    /// Sync attempts by result.
    pub syncs: Family<SyncLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("costmap");
        let reconciles = Counter::default();
        registry.register(
            "reconciles",
            "Reconciles finished, with or without a sync",
            reconciles.clone(),
        );
        let syncs = Family::<SyncLabels, Counter>::default();
        registry.register("syncs", "Sync attempts by result", syncs.clone());
        Metrics {
            registry,
            reconciles,
            syncs,
        }
    }
}

impl Metrics {
    /// Counts one sync attempt.
    pub fn count_sync(&self, result: SyncResult) {
        self.syncs.get_or_create(&SyncLabels { result }).inc();
    }

    /// How many sync attempts ended with `result`.
    pub fn syncs_with(&self, result: SyncResult) -> u64 {
        self.syncs.get_or_create(&SyncLabels { result }).get()
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_are_counted_by_result_in_prometheus_text() {
        let metrics = Metrics::default();
        metrics.count_sync(SyncResult::NotModified);
        metrics.count_sync(SyncResult::NotModified);
        metrics.reconciles.inc();
        let text = metrics.encode();
        assert!(
            text.contains("costmap_syncs_total{result=\"not_modified\"} 2"),
            "{text}"
        );
        assert!(text.contains("costmap_reconciles_total 1"), "{text}");
        assert_eq!(metrics.syncs_with(SyncResult::Updated), 0);
    }
}

//! Prometheus metrics, served on `/metrics`. Names are prefixed `costmap_`.

use std::collections::HashSet;
use std::fmt::Write;
use std::sync::Mutex;

use crate::api::ConsumerState;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

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

/// Labels of the per-map gauges: which ModelCostMapSync, or which ClusterModelCostMapSync
/// (an empty namespace, as exporters label cluster-scoped objects).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    /// Its namespace; empty for a ClusterModelCostMapSync.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl MapLabels {
    fn scope(&self) -> ObjectScope {
        if self.namespace.is_empty() {
            ObjectScope::Cluster
        } else {
            ObjectScope::Namespaced
        }
    }
}

/// Which kind of object a set of per-map series belongs to: each kind's controller forgets
/// its own deleted objects, and must not drop the other kind's series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectScope {
    /// ModelCostMapSync.
    Namespaced,
    /// ClusterModelCostMapSync.
    Cluster,
}

/// Labels of `costmap_consumers`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    /// The ModelCostMapSync's namespace.
    pub namespace: String,
    /// The ModelCostMapSync's name.
    pub name: String,
    /// Current, Stale or Unreachable.
    pub state: String,
}

/// Labels of `costmap_guard_refusals_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuardLabels {
    /// shrink, min_priced, max_unpriced or max_repriced.
    pub guard: String,
}

/// Labels of the map endpoint's counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// HTTP status code of the answer.
    pub code: u16,
    /// Whether the body went out gzipped.
    pub gzip: bool,
}

/// Bucket bounds of the sync duration histogram, in seconds: a 304 takes milliseconds, a
/// new 3.5 MB map a few hundred, a slow source up to its timeout.
const SYNC_SECONDS_BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0];

/// The operator's metrics.
pub struct Metrics {
    /// Everything registered, for `/metrics`.
    pub registry: Registry,
    /// Reconciles finished, with or without a sync.
    pub reconciles: Counter,
    /// Sync attempts by result.
    pub syncs: Family<SyncLabels, Counter>,
    /// Duration of sync attempts by result.
    pub sync_seconds: Family<SyncLabels, Histogram>,
    /// Bytes of map bodies fetched (after decompression).
    pub fetched_bytes: Counter,
    /// Models in each map held.
    pub models: Family<MapLabels, Gauge>,
    /// When each map last synced successfully (Unix seconds).
    pub last_success: Family<MapLabels, Gauge>,
    /// Proxies per map and state.
    pub consumers: Family<ConsumerLabels, Gauge>,
    /// Deployments of each map's proxies that nothing prices.
    pub unpriced_deployments: Family<MapLabels, Gauge>,
    /// Deployments of each map's proxies whose price the last map change moved.
    pub repriced_deployments: Family<MapLabels, Gauge>,
    /// Each ModelCostMapSync's spec.interval, so alerts can say "for two intervals".
    pub sync_interval: Family<MapLabels, Gauge>,
    /// Map endpoint requests by status code.
    pub map_requests: Family<RequestLabels, Counter>,
    /// Body bytes the map endpoint sent.
    pub map_bytes: Counter,
    /// 1 while this replica holds the Lease and reconciles.
    pub leader: Gauge,
    /// Maps refused by each guard.
    pub guard_refusals: Family<GuardLabels, Counter>,
    /// The ModelCostMapSyncs that have per-map series, so those of deleted ones can go.
    known_maps: Mutex<HashSet<MapLabels>>,
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
        let sync_seconds = Family::<SyncLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(SYNC_SECONDS_BUCKETS)) as fn() -> Histogram,
        );
        registry.register_with_unit(
            "sync_duration",
            "Duration of sync attempts (fetch, validate, write) by result",
            Unit::Seconds,
            sync_seconds.clone(),
        );
        let fetched_bytes = Counter::default();
        registry.register_with_unit(
            "fetched",
            "Map bytes fetched from sources, after decompression",
            Unit::Bytes,
            fetched_bytes.clone(),
        );
        let models = Family::<MapLabels, Gauge>::default();
        registry.register(
            "map_models",
            "Models in the map each ModelCostMapSync holds",
            models.clone(),
        );
        let last_success = Family::<MapLabels, Gauge>::default();
        registry.register_with_unit(
            "last_success_timestamp",
            "When each ModelCostMapSync last synced successfully (Unix time)",
            Unit::Seconds,
            last_success.clone(),
        );
        let consumers = Family::<ConsumerLabels, Gauge>::default();
        registry.register(
            "consumers",
            "LiteLLM proxies by ModelCostMapSync and state (Current, Stale, Unreachable)",
            consumers.clone(),
        );
        let unpriced_deployments = Family::<MapLabels, Gauge>::default();
        registry.register(
            "unpriced_deployments",
            "Deployments (model names) of a ModelCostMapSync's proxies billed at $0: the map \
             they loaded does not price them and their own model_info sets no price",
            unpriced_deployments.clone(),
        );
        let repriced_deployments = Family::<MapLabels, Gauge>::default();
        registry.register(
            "repriced_deployments",
            "Deployments (model name and map entry) of a ModelCostMapSync's proxies whose \
             price the last map change moved",
            repriced_deployments.clone(),
        );
        let sync_interval = Family::<MapLabels, Gauge>::default();
        registry.register_with_unit(
            "sync_interval",
            "The spec.interval of each ModelCostMapSync",
            Unit::Seconds,
            sync_interval.clone(),
        );
        let map_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "map_requests",
            "Requests to the map endpoint by status code",
            map_requests.clone(),
        );
        let map_bytes = Counter::default();
        registry.register_with_unit(
            "map_response",
            "Body bytes sent by the map endpoint",
            Unit::Bytes,
            map_bytes.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the Lease and reconciles",
            leader.clone(),
        );
        let guard_refusals = Family::<GuardLabels, Counter>::default();
        registry.register(
            "guard_refusals",
            "Maps refused by a guard (shrink, min_priced, max_unpriced, max_repriced)",
            guard_refusals.clone(),
        );
        Metrics {
            registry,
            reconciles,
            syncs,
            sync_seconds,
            fetched_bytes,
            models,
            last_success,
            consumers,
            unpriced_deployments,
            repriced_deployments,
            sync_interval,
            map_requests,
            map_bytes,
            leader,
            guard_refusals,
            known_maps: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Counts one sync attempt that took `seconds`.
    pub fn count_sync(&self, result: SyncResult, seconds: f64) {
        let labels = SyncLabels { result };
        self.syncs.get_or_create(&labels).inc();
        self.sync_seconds.get_or_create(&labels).observe(seconds);
    }

    /// How many sync attempts ended with `result`.
    pub fn syncs_with(&self, result: SyncResult) -> u64 {
        self.syncs.get_or_create(&SyncLabels { result }).get()
    }

    /// Records what a ModelCostMapSync holds after a successful sync at `unix_seconds`.
    pub fn record_map(&self, map: &MapLabels, models: i64, unix_seconds: i64) {
        self.know(map);
        self.models.get_or_create(map).set(models);
        self.last_success.get_or_create(map).set(unix_seconds);
    }

    /// Sets the proxies per state of a ModelCostMapSync. Give every state, zeros included,
    /// so that a state that empties drops to 0 rather than keeping its last value.
    pub fn record_consumers(&self, map: &MapLabels, per_state: &[(&str, i64)]) {
        self.know(map);
        for (state, count) in per_state {
            let labels = ConsumerLabels {
                namespace: map.namespace.clone(),
                name: map.name.clone(),
                state: (*state).to_owned(),
            };
            self.consumers.get_or_create(&labels).set(*count);
        }
    }

    /// How many deployments of `map`'s proxies nothing prices.
    pub fn record_unpriced(&self, map: &MapLabels, deployments: i64) {
        self.know(map);
        self.unpriced_deployments
            .get_or_create(map)
            .set(deployments);
    }

    /// How many deployments of `map`'s proxies the last map change repriced.
    pub fn record_repriced(&self, map: &MapLabels, deployments: i64) {
        self.know(map);
        self.repriced_deployments
            .get_or_create(map)
            .set(deployments);
    }

    /// `map`'s sync interval.
    pub fn record_interval(&self, map: &MapLabels, interval: std::time::Duration) {
        self.know(map);
        let seconds = i64::try_from(interval.as_secs()).unwrap_or(i64::MAX);
        self.sync_interval.get_or_create(map).set(seconds);
    }

    /// Drops the per-map series of every object of `scope` but `live`; returns how many
    /// objects' series went.
    pub fn forget_maps_except(&self, scope: ObjectScope, live: &HashSet<MapLabels>) -> usize {
        let mut known = crate::locks::lock(&self.known_maps);
        let gone: Vec<MapLabels> = known
            .iter()
            .filter(|map| map.scope() == scope && !live.contains(map))
            .cloned()
            .collect();
        for map in &gone {
            self.models.remove(map);
            self.last_success.remove(map);
            self.unpriced_deployments.remove(map);
            self.repriced_deployments.remove(map);
            self.sync_interval.remove(map);
            for state in ConsumerState::ALL {
                self.consumers.remove(&ConsumerLabels {
                    namespace: map.namespace.clone(),
                    name: map.name.clone(),
                    state: state.as_str().to_owned(),
                });
            }
            known.remove(map);
        }
        gone.len()
    }

    fn know(&self, map: &MapLabels) {
        crate::locks::lock(&self.known_maps).insert(map.clone());
    }

    /// Counts a map refused by `guard` (its metric name).
    pub fn count_guard_refusal(&self, guard: &str) {
        self.guard_refusals
            .get_or_create(&GuardLabels {
                guard: guard.to_owned(),
            })
            .inc();
    }

    /// Counts one answer of the map endpoint.
    pub fn count_map_request(&self, code: u16, gzip: bool, body_bytes: u64) {
        self.map_requests
            .get_or_create(&RequestLabels { code, gzip })
            .inc();
        self.map_bytes.inc_by(body_bytes);
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

    /// The chart's PrometheusRule (charts/costmap-operator/templates/prometheusrule.yaml)
    /// is written against these names; tests/chart.rs runs promtool on it.
    #[test]
    fn the_series_the_alert_rules_use_are_exposed() {
        let metrics = Metrics::default();
        let map = MapLabels {
            namespace: "llm".into(),
            name: "litellm".into(),
        };
        metrics.record_map(&map, 4878, 1_796_000_000);
        metrics.record_interval(&map, std::time::Duration::from_secs(3600));
        metrics.record_consumers(&map, &[("Current", 1), ("Stale", 1)]);
        metrics.record_unpriced(&map, 1);
        metrics.record_repriced(&map, 3);
        metrics.count_guard_refusal("price");
        let text = metrics.encode();
        for series in [
            "costmap_last_success_timestamp_seconds{namespace=\"llm\",name=\"litellm\"} 1796000000",
            "costmap_sync_interval_seconds{namespace=\"llm\",name=\"litellm\"} 3600",
            "costmap_consumers{namespace=\"llm\",name=\"litellm\",state=\"Stale\"} 1",
            "costmap_unpriced_deployments{namespace=\"llm\",name=\"litellm\"} 1",
            "costmap_repriced_deployments{namespace=\"llm\",name=\"litellm\"} 3",
            "costmap_guard_refusals_total{guard=\"price\"} 1",
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
    }

    #[test]
    fn syncs_are_counted_by_result_in_prometheus_text() {
        let metrics = Metrics::default();
        metrics.count_sync(SyncResult::NotModified, 0.002);
        metrics.count_sync(SyncResult::NotModified, 0.004);
        metrics.reconciles.inc();
        let map = MapLabels {
            namespace: "llm".into(),
            name: "litellm".into(),
        };
        metrics.record_map(&map, 4876, 1_764_000_000);
        metrics.record_consumers(&map, &[("Current", 2), ("Stale", 0)]);
        metrics.count_map_request(200, true, 176_000);
        metrics.leader.set(1);
        metrics.count_guard_refusal("max_repriced");
        let text = metrics.encode();
        assert!(
            text.contains("costmap_syncs_total{result=\"not_modified\"} 2"),
            "{text}"
        );
        assert!(text.contains("costmap_reconciles_total 1"), "{text}");
        for line in [
            "costmap_sync_duration_seconds_count{result=\"not_modified\"} 2",
            "costmap_map_models{namespace=\"llm\",name=\"litellm\"} 4876",
            "costmap_last_success_timestamp_seconds{namespace=\"llm\",name=\"litellm\"} 1764000000",
            "costmap_consumers{namespace=\"llm\",name=\"litellm\",state=\"Current\"} 2",
            "costmap_consumers{namespace=\"llm\",name=\"litellm\",state=\"Stale\"} 0",
            "costmap_map_requests_total{code=\"200\",gzip=\"true\"} 1",
            "costmap_map_response_bytes_total 176000",
            "costmap_fetched_bytes_total 0",
            "costmap_leader 1",
            "costmap_guard_refusals_total{guard=\"max_repriced\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert_eq!(metrics.syncs_with(SyncResult::Updated), 0);
    }

    #[test]
    fn the_series_of_deleted_objects_go() {
        let metrics = Metrics::default();
        let kept = MapLabels {
            namespace: "llm".into(),
            name: "kept".into(),
        };
        let gone = MapLabels {
            namespace: "llm".into(),
            name: "gone".into(),
        };
        for map in [&kept, &gone] {
            metrics.record_map(map, 10, 1);
            metrics.record_consumers(map, &[("Current", 1), ("Stale", 0), ("Unreachable", 0)]);
            metrics.record_unpriced(map, 1);
            metrics.record_repriced(map, 2);
        }
        let cluster = MapLabels {
            namespace: String::new(),
            name: "everywhere".to_owned(),
        };
        metrics.record_map(&cluster, 10, 1);
        assert_eq!(
            metrics.forget_maps_except(ObjectScope::Namespaced, &HashSet::from([kept.clone()])),
            1
        );
        let text = metrics.encode();
        assert!(text.contains("name=\"kept\""), "{text}");
        assert!(!text.contains("name=\"gone\""), "{text}");
        assert!(
            text.contains("costmap_map_models{namespace=\"\",name=\"everywhere\"} 10"),
            "a namespaced forget keeps the cluster objects' series: {text}"
        );
        assert_eq!(
            metrics.forget_maps_except(ObjectScope::Namespaced, &HashSet::from([kept.clone()])),
            0
        );
        assert_eq!(
            metrics.forget_maps_except(ObjectScope::Cluster, &HashSet::new()),
            1
        );
        assert!(metrics.encode().contains("name=\"kept\""));
    }
}

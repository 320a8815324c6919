//! The arguments of every subcommand, as clap parses them: `main.rs` dispatches on them,
//! and each subcommand's module runs with its own.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use crate::api::Validation;
use crate::sync::fetch::address::OwnAddresses;
use crate::sync::fetch::{FetchPolicy, Fetcher};
use crate::sync::validate::Rules;

#[derive(Parser)]
#[command(
    version,
    about = "Keeps every LiteLLM proxy's model cost map current, with no restart"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the operator: reconcile ModelCostMapSync objects and serve HTTP.
    Run(RunArgs),
    /// Print a CRD as YAML: ModelCostMapSync's, or the one KIND names.
    Crd {
        /// Which CRD (crds/<kind>.yaml is its committed output).
        #[arg(value_enum, default_value = "modelcostmapsync")]
        kind: CrdKind,
    },
    /// Fetch or read a map and validate it as the operator would (with --against, after
    /// that last good map). Exit 0 valid, 1 refused.
    Check(CheckArgs),
    /// What NEW changes against OLD (the last good map), and what each check of the
    /// operator would say. Exit 0 when all accept, 1 when one refuses, 2 on unusable input.
    Diff(DiffArgs),
    /// Sidecar for a LiteLLM pod: serve the mounted map's ConfigMap directory on HTTP and
    /// reload the proxy when the kubelet swaps in a new map.
    Agent(AgentArgs),
}

/// The kinds this operator defines, as `crd` names them.
#[derive(Clone, Copy, ValueEnum)]
pub enum CrdKind {
    /// ModelCostMapSync (namespaced).
    Modelcostmapsync,
    /// ClusterModelCostMapSync (cluster-scoped).
    Clustermodelcostmapsync,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// Address of the HTTP server: maps, metrics, health, readiness.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Watch only this namespace (repeatable; default: all namespaces).
    #[arg(long = "namespace", value_name = "NS")]
    pub namespaces: Vec<String>,
    /// Elect a leader among replicas through the Lease costmap-operator; only the leader
    /// reconciles. Turn off only when exactly one replica runs.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Namespace of the Lease. Default: env POD_NAMESPACE, else the in-cluster namespace,
    /// else the kubeconfig's namespace.
    #[arg(long, value_name = "NS")]
    pub lease_namespace: Option<String>,
    /// How many fetched maps may be prepared (parsed, validated, compressed) at once; each
    /// holds tens of MiB meanwhile. Fetches themselves are not limited: a hanging source
    /// must not hold up the others.
    #[arg(long, default_value_t = 2)]
    pub concurrent_syncs: usize,
    /// First wait after a failed sync, counted from the end of the attempt; it doubles with
    /// each further failure, up to the object's interval. A longer Retry-After from the
    /// source wins.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub retry_backoff: Duration,
    /// Least time between the start of an object's last sync and a requested sync
    /// (costmap.dev/sync-requested-at) or a republish for changed overrides: a request
    /// within it is handled when it has passed, never dropped. Scheduled syncs are not
    /// held back. 0 turns it off.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub min_sync_gap: Duration,
    /// How long the leader's Lease holds without renewal: the longest a dead leader blocks
    /// the other replicas.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    #[command(flatten)]
    pub fetch: FetchArgs,
    /// Allow proxy (consumer) addresses in this CIDR even though the address policy refuses
    /// them (loopback, link-local, cloud metadata), or though they are not in the object's
    /// namespace (repeatable). The operator's own addresses stay refused.
    #[arg(long = "allow-consumer-cidr", value_name = "CIDR")]
    pub allowed_consumer_cidrs: Vec<ipnet::IpNet>,
    /// The operator's own Service (in its namespace, env POD_NAMESPACE): its cluster IPs are
    /// refused as sources and consumers, like the pod's own addresses (env POD_IP, POD_IPS).
    #[arg(long, value_name = "NAME")]
    pub service_name: Option<String>,
    /// The cluster's DNS domain: a consumer URL may name a Service as
    /// `<svc>.<namespace>.svc.<cluster domain>`.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    #[command(flatten)]
    pub access: AccessArgs,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "COSTMAP_LOG_FORMAT")]
    pub log_format: LogFormat,
}

/// Who may read maps and metrics from `run`'s HTTP server.
#[derive(clap::Args)]
pub struct AccessArgs {
    /// Who may read /maps: `token` needs the object's map-url token, or a Kubernetes bearer
    /// token of an identity that may get the target ConfigMap (TokenReview and
    /// SubjectAccessReview, answers cached 30 s); `open` serves anyone who reaches the
    /// port (one team per cluster only).
    #[arg(long, value_enum, default_value_t = Access::Token)]
    pub map_access: Access,
    /// Who may read /metrics: `token` needs a bearer token allowed to get the non-resource
    /// URL /metrics (the chart's metrics-reader ClusterRole); `open` serves anyone.
    #[arg(long, value_enum, default_value_t = Access::Token)]
    pub metrics_access: Access,
    /// Base URL proxies reach this operator at, e.g. http://costmap-operator.ops.svc:8080:
    /// each target ConfigMap then gets the key `map-url`, this URL with the map's path and
    /// token. Without it, no map-url is written.
    #[arg(long, value_name = "URL")]
    pub map_base_url: Option<url::Url>,
    /// Secret in the operator's namespace whose `key` signs map-url tokens (`previous`
    /// still opens maps during a rotation); created with a random key when missing.
    /// Without it, no map-url is written or accepted.
    #[arg(long, value_name = "NAME")]
    pub map_key_secret: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Access {
    Token,
    Open,
}

impl From<Access> for crate::http::access::AccessMode {
    fn from(access: Access) -> Self {
        match access {
            Access::Token => crate::http::access::AccessMode::Token,
            Access::Open => crate::http::access::AccessMode::Open,
        }
    }
}

#[derive(clap::Args)]
pub struct FetchArgs {
    /// Allow sources (and redirects) in this CIDR even though the address policy refuses them:
    /// loopback, unspecified, link-local, cloud metadata (repeatable; `check` and `diff`
    /// refuse only link-local and metadata ones). The operator's own addresses stay refused.
    #[arg(long = "allow-source-cidr", value_name = "CIDR")]
    pub allowed_cidrs: Vec<ipnet::IpNet>,
    /// Largest map accepted, in bytes, after decompression.
    #[arg(long, default_value_t = FetchPolicy::default().max_body_bytes)]
    pub max_map_bytes: u64,
    /// The most bytes of maps being received at once, across every source (at least
    /// --max-map-bytes): what bounds memory when many sources send large bodies together.
    #[arg(long, default_value_t = FetchPolicy::default().max_bytes_in_flight)]
    pub max_bytes_in_flight: u64,
    /// Attempts per fetch, the first included: transport errors, timeouts, 408, 429 and
    /// 5xx are retried with backoff within one sync (a refused TLS certificate is not).
    #[arg(long, default_value_t = FetchPolicy::default().max_attempts, value_parser = clap::value_parser!(usize))]
    pub fetch_attempts: usize,
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// A file path, or an http(s) URL.
    pub source: String,
    /// The last good map (file or URL): the guards compare the map with it.
    #[arg(long, value_name = "LAST_GOOD")]
    pub against: Option<String>,
    #[command(flatten)]
    pub rules: RulesArgs,
    /// Timeout of each fetch attempt.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub fetch: FetchArgs,
}

#[derive(clap::Args)]
pub struct DiffArgs {
    /// The last good map: a file path, or an http(s) URL.
    pub old: String,
    /// The new map: a file path, or an http(s) URL.
    pub new: String,
    #[command(flatten)]
    pub rules: RulesArgs,
    /// Output: text for people, json for CI.
    #[arg(long, short, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Timeout of each fetch attempt.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[command(flatten)]
    pub fetch: FetchArgs,
}

/// The thresholds of spec.validation, with the same defaults.
#[derive(clap::Args)]
pub struct RulesArgs {
    /// Fewest models the map must hold.
    #[arg(long, default_value_t = Rules::default().min_models)]
    pub min_models: usize,
    /// Refuse a map that drops more than this share of the last good map's models.
    #[arg(long, default_value_t = Rules::default().max_removed_percent)]
    pub max_removed_percent: u32,
    /// Refuse a map in which fewer than this share of the models are priced.
    #[arg(long, default_value_t = Rules::default().min_priced_percent)]
    pub min_priced_percent: u32,
    /// Refuse a map in which more than this share of the last good map's priced models lose
    /// every price.
    #[arg(long, default_value_t = Rules::default().max_unpriced_percent)]
    pub max_unpriced_percent: u32,
    /// Refuse a map in which more than this share of the last good map's priced models
    /// change a price.
    #[arg(long, default_value_t = Rules::default().max_repriced_percent)]
    pub max_repriced_percent: u32,
}

impl RulesArgs {
    /// The rules these thresholds make, read as the operator reads `spec.validation`.
    pub fn rules(&self) -> Rules {
        let percent = |value: u32| i32::try_from(value).unwrap_or(i32::MAX);
        Rules::from(&Validation {
            min_models: i32::try_from(self.min_models).unwrap_or(i32::MAX),
            max_removed_percent: percent(self.max_removed_percent),
            min_priced_percent: percent(self.min_priced_percent),
            max_unpriced_percent: percent(self.max_unpriced_percent),
            max_repriced_percent: percent(self.max_repriced_percent),
        })
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(clap::Args)]
pub struct AgentArgs {
    /// The directory where the map's ConfigMap is mounted (never with subPath: the kubelet
    /// does not update those).
    #[arg(long, value_name = "DIR")]
    pub watch_dir: std::path::PathBuf,
    /// Address of the HTTP server: the map at /<key>, /healthz, /readyz, /status. Loopback
    /// by default: the proxy in the same pod is its only reader.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// Also serve /healthz and /readyz alone (no map) on this address, e.g. 0.0.0.0:8091
    /// for the kubelet's probes, which reach the pod IP, not loopback.
    #[arg(long, value_name = "ADDR")]
    pub probe_listen: Option<SocketAddr>,
    /// The map's key in the ConfigMap; `<key>.gz` is read (else the chunks `<key>.gz.chunks`
    /// names, else `<key>`) and served at /<key>.
    #[arg(long, default_value = crate::api::DEFAULT_KEY, value_parser = crate::agent::parse_key)]
    pub key: String,
    /// The proxy's reload endpoint, POSTed after each new map with the admin key from
    /// LITELLM_MASTER_KEY, e.g. http://127.0.0.1:4000/reload/model_cost_map. Without it the
    /// agent only serves.
    #[arg(long, value_name = "URL", value_parser = crate::agent::parse_reload_url)]
    pub reload_url: Option<url::Url>,
    /// Timeout of one reload attempt (three attempts in all).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub reload_timeout: Duration,
    /// How often to re-read the directory when no file event arrives (a safety net).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub recheck_interval: Duration,
    /// Fewest models a map must hold to be served.
    #[arg(long, default_value_t = Rules::default().min_models)]
    pub min_models: usize,
    /// Largest map accepted, in bytes, after decompression.
    #[arg(long, default_value_t = FetchPolicy::default().max_body_bytes)]
    pub max_map_bytes: u64,
    /// Serve only maps that this ModelCostMapSync's status names (NAMESPACE/NAME, or NAME
    /// in the pod's namespace): a ConfigMap edited by hand is then never served. Needs get,
    /// list and watch on modelcostmapsyncs; the cluster is found as kubectl finds it.
    #[arg(long, value_name = "[NAMESPACE/]NAME")]
    pub verify_with: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "COSTMAP_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl FetchArgs {
    /// The operator's fetcher: the address policy with `--allow-source-cidr`, and `own`
    /// addresses always refused.
    pub fn fetcher(&self, own: OwnAddresses) -> anyhow::Result<Fetcher> {
        let policy = FetchPolicy {
            allowed_cidrs: self.allowed_cidrs.clone(),
            own_addresses: own,
            ..self.policy()
        };
        Fetcher::new(policy).context("building the HTTP client")
    }

    /// The fetcher of `check` and `diff`, run by a person on their own machine: loopback
    /// and private addresses included, link-local and metadata only with
    /// `--allow-source-cidr`.
    pub fn local_fetcher(&self) -> anyhow::Result<Fetcher> {
        let policy = FetchPolicy {
            allowed_cidrs: self.allowed_cidrs.clone(),
            local: true,
            ..self.policy()
        };
        Fetcher::new(policy).context("building the HTTP client")
    }

    fn policy(&self) -> FetchPolicy {
        FetchPolicy {
            max_body_bytes: self.max_map_bytes,
            max_bytes_in_flight: self.max_bytes_in_flight,
            max_attempts: self.fetch_attempts.max(1),
            ..FetchPolicy::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_serves_on_loopback_unless_told_otherwise() {
        let Cli {
            command: Command::Agent(args),
        } = Cli::try_parse_from(["costmap-operator", "agent", "--watch-dir", "/etc/costmap"])
            .unwrap()
        else {
            panic!("agent arguments");
        };
        assert!(args.listen.ip().is_loopback(), "{}", args.listen);
        assert_eq!(args.probe_listen, None);
    }
}

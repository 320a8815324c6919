//! `kubectl costmap`: the binary installed as `kubectl-costmap` is a kubectl plugin. It reads
//! status and sets the annotations the operator acts on (sync-requested-at, accept-digest,
//! reject-digest), with the user's own kubeconfig and rights: nothing it does bypasses RBAC.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};
use serde::Serialize;
use serde_json::json;

use crate::api::{
    ACCEPT_DIGEST_ANNOTATION, ConsumerState, ModelCostMapSync, REJECT_DIGEST_ANNOTATION,
    SYNC_REQUESTED_AT_ANNOTATION,
};

/// The name the binary answers to as a plugin.
pub const PLUGIN_NAME: &str = "kubectl-costmap";

/// `kubectl costmap ...`.
#[derive(Parser, Debug)]
#[command(
    name = "kubectl costmap",
    version,
    about = "See and steer the ModelCostMapSyncs of costmap-operator"
)]
pub struct Plugin {
    #[command(subcommand)]
    command: Command,
    /// Namespace (default: the kubeconfig context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// Every namespace (status only).
    #[arg(short = 'A', long, global = true)]
    all_namespaces: bool,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// The kubeconfig file (default: KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// Output: a table, or the data as JSON or YAML.
    #[arg(short, long, value_enum, default_value_t = Format::Table, global = true)]
    output: Format,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Ready, reason, models, last sync and consumers per state, of one or every object.
    Status {
        /// A ModelCostMapSync (default: all in the namespace).
        name: Option<String>,
    },
    /// Ask for a sync now.
    Sync {
        /// The ModelCostMapSync.
        name: String,
    },
    /// Accept one map a guard refused, by its digest, at a sync requested now.
    Accept {
        /// The ModelCostMapSync.
        name: String,
        /// The refused map's digest (sha256:...), as the refusal names it; a unique
        /// prefix of a digest status knows will do.
        digest: String,
    },
    /// Roll back: refuse this digest and, if it is published, restore the newest other map
    /// of the history.
    Reject {
        /// The ModelCostMapSync.
        name: String,
        /// The digest to refuse (sha256:...), as status.artifact.digest names it; the
        /// short form `history` prints will do.
        digest: String,
    },
    /// The published maps kept for rollback, newest first.
    History {
        /// The ModelCostMapSync.
        name: String,
    },
}

/// How results are printed.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// A table for a terminal (80 columns).
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// Why a command failed, in words that say what to do.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The cluster could not be reached or configured.
    #[error("{0}")]
    Cluster(String),
    /// No such object.
    #[error("no ModelCostMapSync {namespace}/{name}; see kubectl get mcms -A")]
    NotFound {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A digest that is not one.
    #[error(
        "{0:?} is not a digest: give sha256:<64 hex digits>, as status.artifact.digest or the refusal names it"
    )]
    BadDigest(String),
    /// A short digest that names no map status knows, or more than one.
    #[error(
        "{prefix:?} names {matches} of the maps {namespace}/{name} knows; give the whole digest \
         (kubectl costmap history {name} -o yaml shows them)"
    )]
    AmbiguousDigest {
        /// What was given.
        prefix: String,
        /// How many known digests start with it.
        matches: usize,
        /// The object's namespace.
        namespace: String,
        /// The object's name.
        name: String,
    },
    /// The API server refused (RBAC, say).
    #[error("{0}")]
    Api(String),
}

/// Runs the plugin; returns what to print.
pub async fn run(plugin: Plugin) -> Result<String, PluginError> {
    let client = client(&plugin).await?;
    let namespace = plugin
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let syncs: Api<ModelCostMapSync> = Api::namespaced(client.clone(), &namespace);
    let format = plugin.output;
    match plugin.command {
        Command::Status { name } => {
            let objects = match name {
                Some(name) => vec![get(&syncs, &namespace, &name).await?],
                None => {
                    let api = if plugin.all_namespaces {
                        Api::all(client)
                    } else {
                        syncs
                    };
                    api.list(&ListParams::default())
                        .await
                        .map_err(api_error)?
                        .items
                }
            };
            let rows: Vec<StatusRow> = objects.iter().map(status_row).collect();
            render(&rows, format, |rows| {
                status_table(rows, plugin.all_namespaces)
            })
        }
        Command::Sync { name } => {
            get(&syncs, &namespace, &name).await?;
            let token = Timestamp::now().as_second().to_string();
            annotate(&syncs, &name, &[(SYNC_REQUESTED_AT_ANNOTATION, &token)]).await?;
            Ok(format!(
                "sync requested for {namespace}/{name} ({SYNC_REQUESTED_AT_ANNOTATION}={token})\n"
            ))
        }
        Command::Accept { name, digest } => {
            let sync = get(&syncs, &namespace, &name).await?;
            let digest = resolve_digest(&digest, &sync)?;
            let token = Timestamp::now().as_second().to_string();
            annotate(
                &syncs,
                &name,
                &[
                    (ACCEPT_DIGEST_ANNOTATION, &digest),
                    (SYNC_REQUESTED_AT_ANNOTATION, &token),
                ],
            )
            .await?;
            Ok(format!(
                "map {digest} will be accepted for {namespace}/{name} at the sync requested now \
                 (any other map is still guarded)\n"
            ))
        }
        Command::Reject { name, digest } => {
            let sync = get(&syncs, &namespace, &name).await?;
            let digest = resolve_digest(&digest, &sync)?;
            annotate(&syncs, &name, &[(REJECT_DIGEST_ANNOTATION, &digest)]).await?;
            let published = sync
                .status
                .as_ref()
                .and_then(|s| s.artifact.as_ref())
                .is_some_and(|a| a.digest == digest);
            Ok(if published {
                format!(
                    "map {digest} rejected for {namespace}/{name}: the newest other map of its \
                     history will be restored (see kubectl costmap history {name})\n"
                )
            } else {
                format!(
                    "map {digest} will be refused for {namespace}/{name} (it is not the \
                     published map, so nothing is restored)\n"
                )
            })
        }
        Command::History { name } => {
            let sync = get(&syncs, &namespace, &name).await?;
            let status = sync.status.unwrap_or_default();
            let published = status.artifact.map(|a| a.digest);
            let rows: Vec<HistoryRow> = status
                .history
                .into_iter()
                .map(|entry| HistoryRow {
                    published: published.as_deref() == Some(entry.digest.as_str()),
                    digest: entry.digest,
                    models: entry.models,
                    published_at: entry.published_at.0.to_string(),
                    config_map: entry.config_map,
                })
                .collect();
            render(&rows, format, history_table)
        }
    }
}

async fn client(plugin: &Plugin) -> Result<Client, PluginError> {
    let options = KubeConfigOptions {
        context: plugin.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &plugin.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|err| {
                PluginError::Cluster(format!("reading {}: {err}", path.display()))
            })?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await
        }
        None => Config::from_kubeconfig(&options).await,
    }
    .map_err(|err| PluginError::Cluster(format!("no usable kubeconfig: {err}")))?;
    Client::try_from(config).map_err(|err| PluginError::Cluster(err.to_string()))
}

async fn get(
    syncs: &Api<ModelCostMapSync>,
    namespace: &str,
    name: &str,
) -> Result<ModelCostMapSync, PluginError> {
    syncs
        .get_opt(name)
        .await
        .map_err(api_error)?
        .ok_or_else(|| PluginError::NotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
}

async fn annotate(
    syncs: &Api<ModelCostMapSync>,
    name: &str,
    annotations: &[(&str, &str)],
) -> Result<(), PluginError> {
    let annotations: serde_json::Map<String, serde_json::Value> = annotations
        .iter()
        .map(|(key, value)| ((*key).to_owned(), json!(value)))
        .collect();
    let patch = json!({"metadata": {"annotations": annotations}});
    syncs
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(api_error)?;
    Ok(())
}

fn api_error(err: kube::Error) -> PluginError {
    match err {
        kube::Error::Api(status) => PluginError::Api(status.message),
        other => PluginError::Cluster(other.to_string()),
    }
}

/// Hex digits of a digest the tables print: enough to tell maps apart, short enough for 80
/// columns, and accepted back by `accept` and `reject`.
const SHORT_DIGEST_HEX: usize = 16;

/// The whole digest `given` names: itself when whole, else the one digest status knows
/// (published, fetched, history, rejected) that starts with it.
fn resolve_digest(given: &str, sync: &ModelCostMapSync) -> Result<String, PluginError> {
    let hex = given.strip_prefix("sha256:").unwrap_or(given);
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) || hex.len() > 64 {
        return Err(PluginError::BadDigest(given.to_owned()));
    }
    let whole = format!("sha256:{}", hex.to_ascii_lowercase());
    if hex.len() == 64 {
        return Ok(whole);
    }
    let status = sync.status.clone().unwrap_or_default();
    let mut known: Vec<String> = status
        .artifact
        .map(|a| a.digest)
        .into_iter()
        .chain(status.source.map(|s| s.digest))
        .chain(status.history.into_iter().map(|h| h.digest))
        .chain(status.rejected_digests)
        .filter(|digest| digest.starts_with(&whole))
        .collect();
    known.sort();
    known.dedup();
    match known.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(PluginError::AmbiguousDigest {
            prefix: given.to_owned(),
            matches: known.len(),
            namespace: sync.namespace().unwrap_or_default(),
            name: sync.name_any(),
        }),
    }
}

fn short_digest(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    format!("sha256:{}", hex.get(..SHORT_DIGEST_HEX).unwrap_or(hex))
}

/// One object, as `status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatusRow {
    namespace: String,
    name: String,
    ready: String,
    reason: String,
    models: Option<i32>,
    last_sync_time: Option<String>,
    consumers_current: usize,
    consumers_stale: usize,
    consumers_unreachable: usize,
}

fn status_row(sync: &ModelCostMapSync) -> StatusRow {
    let status = sync.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == crate::api::ConditionType::Ready.as_str());
    let count = |state: ConsumerState| status.consumers.iter().filter(|c| c.state == state).count();
    StatusRow {
        namespace: sync.namespace().unwrap_or_default(),
        name: sync.name_any(),
        ready: ready.map_or("-".to_owned(), |c| c.status.clone()),
        reason: ready.map_or("-".to_owned(), |c| c.reason.clone()),
        models: status.artifact.as_ref().map(|a| a.models),
        last_sync_time: status.last_sync_time.as_ref().map(|t| t.0.to_string()),
        consumers_current: count(ConsumerState::Current),
        consumers_stale: count(ConsumerState::Stale),
        consumers_unreachable: count(ConsumerState::Unreachable),
    }
}

/// One history entry, as `history` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HistoryRow {
    digest: String,
    models: i32,
    published_at: String,
    config_map: String,
    /// Whether it is the published map.
    published: bool,
}

fn render<T: Serialize>(
    rows: &[T],
    format: Format,
    table: impl FnOnce(&[T]) -> String,
) -> Result<String, PluginError> {
    match format {
        Format::Table => Ok(table(rows)),
        Format::Json => serde_json::to_string_pretty(rows)
            .map(|json| json + "\n")
            .map_err(|err| PluginError::Cluster(err.to_string())),
        Format::Yaml => {
            serde_yaml::to_string(rows).map_err(|err| PluginError::Cluster(err.to_string()))
        }
    }
}

/// Fits `text` in `width` characters, cutting with `~`.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(width.saturating_sub(1)).collect();
        format!("{cut}~")
    }
}

/// How long ago `at` (RFC 3339) was, as kubectl says it: 45s, 12m, 3h, 2d.
fn age(at: Option<&str>, now: Timestamp) -> String {
    let Some(at) = at.and_then(|at| at.parse::<Timestamp>().ok()) else {
        return "-".to_owned();
    };
    let seconds = now.duration_since(at).as_secs().max(0);
    match seconds {
        0..=119 => format!("{seconds}s"),
        120..=7199 => format!("{}m", seconds / 60),
        7200..=172_799 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

fn status_table(rows: &[StatusRow], with_namespace: bool) -> String {
    if rows.is_empty() {
        return "no ModelCostMapSync found; create one (examples/basic.yaml)\n".to_owned();
    }
    let now = Timestamp::now();
    let (namespace_width, name_width) = name_widths(rows, with_namespace);
    let mut out = String::new();
    if with_namespace {
        out.push_str(&format!("{:<namespace_width$} ", "NAMESPACE"));
    }
    out.push_str(&format!(
        "{:<name_width$} READY  REASON          MODELS  LAST SYNC  CONSUMERS\n",
        "NAME"
    ));
    for row in rows {
        if with_namespace {
            out.push_str(&format!(
                "{:<namespace_width$} ",
                fit(&row.namespace, namespace_width)
            ));
        }
        let consumers =
            if row.consumers_current + row.consumers_stale + row.consumers_unreachable == 0 {
                "-".to_owned()
            } else {
                format!(
                    "{}/{}/{}",
                    row.consumers_current, row.consumers_stale, row.consumers_unreachable
                )
            };
        out.push_str(&format!(
            "{:<name_width$} {:<6} {:<15} {:>6}  {:<9}  {}\n",
            fit(&row.name, name_width),
            row.ready,
            fit(&row.reason, 15),
            row.models.map_or("-".to_owned(), |m| m.to_string()),
            age(row.last_sync_time.as_deref(), now),
            consumers
        ));
    }
    out.push_str("(consumers: current/stale/unreachable)\n");
    out
}

/// Columns for the namespace (0 without -A) and the name: as wide as the longest, while the
/// two fit the 28 columns an 80-column row leaves them; past that the longer one gives way.
fn name_widths(rows: &[StatusRow], with_namespace: bool) -> (usize, usize) {
    const BUDGET: usize = 28;
    let longest = |text: fn(&StatusRow) -> &str, header: &str| {
        rows.iter()
            .map(|row| text(row).chars().count())
            .chain([header.len()])
            .max()
            .unwrap_or_default()
    };
    let mut name = longest(|row| &row.name, "NAME");
    if !with_namespace {
        return (0, name.min(BUDGET));
    }
    let mut namespace = longest(|row| &row.namespace, "NAMESPACE");
    while namespace + 1 + name > BUDGET {
        if namespace >= name {
            namespace -= 1;
        } else {
            name -= 1;
        }
    }
    (namespace, name)
}

fn history_table(rows: &[HistoryRow]) -> String {
    if rows.is_empty() {
        return "no history kept (spec.history is 0, or nothing was published yet)\n".to_owned();
    }
    let now = Timestamp::now();
    let mut out = String::from("  DIGEST                   MODELS  PUBLISHED  CONFIGMAP\n");
    for row in rows {
        out.push_str(&format!(
            "{} {:<24} {:>6}  {:<9}  {}\n",
            if row.published { '*' } else { ' ' },
            short_digest(&row.digest),
            row.models,
            age(Some(&row.published_at), now),
            fit(&row.config_map, 34)
        ));
    }
    out.push_str("(* the published map; roll back with kubectl costmap reject NAME DIGEST)\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_fit_80_columns() {
        let row = StatusRow {
            namespace: "a-very-long-namespace-name".into(),
            name: "a-very-long-model-cost-map-sync-name".into(),
            ready: "False".into(),
            reason: "InvalidOverride".into(),
            models: Some(4878),
            last_sync_time: Some(Timestamp::now().to_string()),
            consumers_current: 12,
            consumers_stale: 3,
            consumers_unreachable: 1,
        };
        fn row_for_widths() -> StatusRow {
            StatusRow {
                namespace: String::new(),
                name: String::new(),
                ready: "True".into(),
                reason: "Synced".into(),
                models: None,
                last_sync_time: None,
                consumers_current: 0,
                consumers_stale: 0,
                consumers_unreachable: 0,
            }
        }
        for table in [
            status_table(std::slice::from_ref(&row), true),
            status_table(&[row], false),
        ] {
            for line in table.lines() {
                assert!(line.chars().count() <= 80, "{} columns: {line}", line.len());
            }
        }
        let short = StatusRow {
            namespace: "team-payments-eu".into(),
            name: "litellm".into(),
            ..row_for_widths()
        };
        let table = status_table(&[short], true);
        assert!(table.contains("team-payments-eu litellm "), "{table}");
        let history = history_table(&[HistoryRow {
            digest: format!("sha256:{}", "a".repeat(64)),
            models: 4878,
            published_at: Timestamp::now().to_string(),
            config_map: "litellm-model-cost-map-history-10".into(),
            published: true,
        }]);
        for line in history.lines() {
            assert!(line.chars().count() <= 80, "{line}");
        }
        assert!(history.contains("* sha256:aaaaaaaaaaaaaaaa "), "{history}");
    }

    #[test]
    fn digests_are_checked_and_short_ones_resolved_against_status() {
        let published = format!("sha256:{}", "0f".repeat(32));
        let older = format!("sha256:0f0f{}", "a".repeat(60));
        let mut sync = ModelCostMapSync::new("litellm", serde_json::from_str("{}").unwrap());
        sync.metadata.namespace = Some("llm".into());
        sync.status = Some(crate::api::ModelCostMapSyncStatus {
            history: [&published, &older]
                .into_iter()
                .map(|digest| crate::api::HistoryEntry {
                    digest: digest.clone(),
                    git_blob_id: String::new(),
                    models: 1,
                    published_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        Timestamp::now(),
                    ),
                    config_map: "litellm-history-1".into(),
                })
                .collect(),
            ..Default::default()
        });
        let unknown = format!("sha256:{}", "1".repeat(64));
        assert_eq!(resolve_digest(&unknown, &sync).unwrap(), unknown);
        assert_eq!(
            resolve_digest(&short_digest(&published), &sync).unwrap(),
            published
        );
        assert_eq!(resolve_digest("0f0fa", &sync).unwrap(), older);
        let ambiguous = resolve_digest("sha256:0f0f", &sync).unwrap_err();
        assert!(
            ambiguous
                .to_string()
                .contains("names 2 of the maps llm/litellm")
        );
        assert!(resolve_digest("sha256:1111", &sync).is_err());
        for bad in ["", "sha256:", "sha256:xyz", "md5:0123"] {
            assert!(
                matches!(resolve_digest(bad, &sync), Err(PluginError::BadDigest(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ages_read_as_kubectl_says_them() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let ago = |seconds: i64| {
            Timestamp::from_second(1_000_000 - seconds)
                .unwrap()
                .to_string()
        };
        assert_eq!(age(Some(&ago(45)), now), "45s");
        assert_eq!(age(Some(&ago(720)), now), "12m");
        assert_eq!(age(Some(&ago(3 * 3600)), now), "3h");
        assert_eq!(age(Some(&ago(2 * 86_400)), now), "2d");
        assert_eq!(age(None, now), "-");
    }
}

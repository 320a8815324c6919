//! The `costmap-operator` binary: parses arguments and wires the pieces together.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use costmap_operator::agent;
use costmap_operator::api::{ClusterModelCostMapSync, ModelCostMapSync};
use costmap_operator::cli::{self, check::check};
use costmap_operator::controller::{self, Settings};
use costmap_operator::http::map_cache::MapCache;
use costmap_operator::http::server::{self, ServerState};
use costmap_operator::leader::{self, Candidate};
use costmap_operator::litellm::{ProxyClient, ProxyClientConfig};
use costmap_operator::metrics::Metrics;
use costmap_operator::scope;
use costmap_operator::sync::fetch::{FetchPolicy, Fetcher};
use costmap_operator::sync::validate::Rules;
use kube::api::ListParams;
use kube::{Client, CustomResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

#[derive(Parser)]
#[command(
    version,
    about = "Keeps every LiteLLM proxy's model cost map current, with no restart"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
enum CrdKind {
    /// ModelCostMapSync (namespaced).
    Modelcostmapsync,
    /// ClusterModelCostMapSync (cluster-scoped).
    Clustermodelcostmapsync,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of the HTTP server: maps, metrics, health, readiness.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Watch only this namespace (repeatable; default: all namespaces).
    #[arg(long = "namespace", value_name = "NS")]
    namespaces: Vec<String>,
    /// Elect a leader among replicas through the Lease costmap-operator; only the leader
    /// reconciles. Turn off only when exactly one replica runs.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the Lease. Default: env POD_NAMESPACE, else the in-cluster namespace,
    /// else the kubeconfig's namespace.
    #[arg(long, value_name = "NS")]
    lease_namespace: Option<String>,
    /// How many fetched maps may be prepared (parsed, validated, compressed) at once; each
    /// holds tens of MiB meanwhile. Fetches themselves are not limited: a hanging source
    /// must not hold up the others.
    #[arg(long, default_value_t = 2)]
    concurrent_syncs: usize,
    /// First wait after a failed sync, counted from the end of the attempt; it doubles with
    /// each further failure, up to the object's interval. A longer Retry-After from the
    /// source wins.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    retry_backoff: Duration,
    /// How long the leader's Lease holds without renewal: the longest a dead leader blocks
    /// the other replicas.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    #[command(flatten)]
    fetch: FetchArgs,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "COSTMAP_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(clap::Args)]
struct FetchArgs {
    /// Allow sources in this CIDR even though it is link-local or a cloud metadata address
    /// (repeatable).
    #[arg(long = "allow-source-cidr", value_name = "CIDR")]
    allowed_cidrs: Vec<ipnet::IpNet>,
    /// Largest map accepted, in bytes, after decompression.
    #[arg(long, default_value_t = FetchPolicy::default().max_body_bytes)]
    max_map_bytes: u64,
    /// Attempts per fetch, the first included: transport errors, timeouts, 408, 429 and
    /// 5xx are retried with backoff within one sync.
    #[arg(long, default_value_t = FetchPolicy::default().max_attempts, value_parser = clap::value_parser!(usize))]
    fetch_attempts: usize,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// A file path, or an http(s) URL.
    source: String,
    /// The last good map (file or URL): the guards compare the map with it.
    #[arg(long, value_name = "LAST_GOOD")]
    against: Option<String>,
    #[command(flatten)]
    rules: RulesArgs,
    /// Timeout of each fetch attempt.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    fetch: FetchArgs,
}

#[derive(clap::Args)]
struct DiffArgs {
    /// The last good map: a file path, or an http(s) URL.
    old: String,
    /// The new map: a file path, or an http(s) URL.
    new: String,
    #[command(flatten)]
    rules: RulesArgs,
    /// Output: text for people, json for CI.
    #[arg(long, short, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Timeout of each fetch attempt.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    fetch: FetchArgs,
}

/// The thresholds of spec.validation, with the same defaults.
#[derive(clap::Args)]
struct RulesArgs {
    /// Fewest models the map must hold.
    #[arg(long, default_value_t = Rules::default().min_models)]
    min_models: usize,
    /// Refuse a map that drops more than this share of the last good map's models.
    #[arg(long, default_value_t = Rules::default().max_removed_percent)]
    max_removed_percent: u32,
    /// Refuse a map in which fewer than this share of the models are priced.
    #[arg(long, default_value_t = Rules::default().min_priced_percent)]
    min_priced_percent: u32,
    /// Refuse a map in which more than this share of the last good map's priced models lose
    /// every price.
    #[arg(long, default_value_t = Rules::default().max_unpriced_percent)]
    max_unpriced_percent: u32,
    /// Refuse a map in which more than this share of the last good map's priced models
    /// change a price.
    #[arg(long, default_value_t = Rules::default().max_repriced_percent)]
    max_repriced_percent: u32,
}

impl RulesArgs {
    fn rules(&self) -> Rules {
        Rules {
            min_models: self.min_models,
            max_removed_percent: self.max_removed_percent.min(100),
            min_priced_percent: self.min_priced_percent.min(100),
            max_unpriced_percent: self.max_unpriced_percent.min(100),
            max_repriced_percent: self.max_repriced_percent.min(100),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(clap::Args)]
struct AgentArgs {
    /// The directory where the map's ConfigMap is mounted (never with subPath: the kubelet
    /// does not update those).
    #[arg(long, value_name = "DIR")]
    watch_dir: std::path::PathBuf,
    /// Address of the HTTP server: the map at /<key>, /healthz, /readyz, /status. Not only
    /// loopback by default: the kubelet probes the pod IP.
    #[arg(long, default_value = "0.0.0.0:8090")]
    listen: SocketAddr,
    /// The map's key in the ConfigMap; `<key>.gz` is read (else the chunks `<key>.gz.chunks`
    /// names, else `<key>`) and served at /<key>.
    #[arg(long, default_value = costmap_operator::api::DEFAULT_KEY, value_parser = agent::parse_key)]
    key: String,
    /// The proxy's reload endpoint, POSTed after each new map with the admin key from
    /// LITELLM_MASTER_KEY, e.g. http://127.0.0.1:4000/reload/model_cost_map. Without it the
    /// agent only serves.
    #[arg(long, value_name = "URL", value_parser = agent::parse_reload_url)]
    reload_url: Option<url::Url>,
    /// Timeout of one reload attempt (three attempts in all).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    reload_timeout: Duration,
    /// How often to re-read the directory when no file event arrives (a safety net).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    recheck_interval: Duration,
    /// Fewest models a map must hold to be served.
    #[arg(long, default_value_t = Rules::default().min_models)]
    min_models: usize,
    /// Largest map accepted, in bytes, after decompression.
    #[arg(long, default_value_t = FetchPolicy::default().max_body_bytes)]
    max_map_bytes: u64,
    /// Serve only maps that this ModelCostMapSync's status names (NAMESPACE/NAME, or NAME
    /// in the pod's namespace): a ConfigMap edited by hand is then never served. Needs get,
    /// list and watch on modelcostmapsyncs; the cluster is found as kubectl finds it.
    #[arg(long, value_name = "[NAMESPACE/]NAME")]
    verify_with: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "COSTMAP_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl FetchArgs {
    fn fetcher(&self) -> anyhow::Result<Fetcher> {
        let policy = FetchPolicy {
            allowed_cidrs: self.allowed_cidrs.clone(),
            max_body_bytes: self.max_map_bytes,
            max_attempts: self.fetch_attempts.max(1),
            ..FetchPolicy::default()
        };
        Fetcher::new(policy).context("building the HTTP client")
    }
}

fn main() -> ExitCode {
    // Installed as kubectl-costmap, the binary is a kubectl plugin.
    let called_as = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|path| path.file_stem().map(|stem| stem.to_owned()));
    if called_as.is_some_and(|stem| stem == cli::plugin::PLUGIN_NAME) {
        return run_plugin(cli::plugin::Plugin::parse());
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => multi_thread(run(args)).and_then(|result| result),
        Command::Crd { kind } => print_crd(kind),
        Command::Check(args) => {
            return multi_thread(run_check(args)).unwrap_or_else(|err| exit_code(Err(err)));
        }
        Command::Diff(args) => {
            return multi_thread(run_diff(args)).unwrap_or_else(|err| exit_code(Err(err)));
        }
        // The agent is a sidecar in every proxy pod: it runs on one thread, to stay at a few MiB.
        Command::Agent(args) => run_agent(args),
    };
    exit_code(result)
}

fn run_plugin(plugin: cli::plugin::Plugin) -> ExitCode {
    match multi_thread(cli::plugin::run(plugin)) {
        Ok(Ok(output)) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Ok(Err(err)) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
        Err(err) => exit_code(Err(err)),
    }
}

/// Runs `future` on the operator's runtime: a worker thread per core.
fn multi_thread<F: Future>(future: F) -> anyhow::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    Ok(runtime.block_on(future))
}

fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Not through tracing: start-up errors can come before logging is set up.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let reload = match args.reload_url {
        Some(url) => {
            let mut reload = agent::ReloadConfig::new(url, agent::admin_key_from_env()?);
            reload.client.reload_timeout = args.reload_timeout;
            Some(reload)
        }
        None => None,
    };
    let mut config = agent::Config {
        watch_dir: args.watch_dir,
        key: args.key,
        listen: args.listen,
        reload,
        rules: Rules {
            min_models: args.min_models,
            ..Rules::default()
        },
        max_map_bytes: args.max_map_bytes,
        recheck_interval: args.recheck_interval,
        verify: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the agent's runtime")?;
    runtime.block_on(async {
        if let Some(sync) = &args.verify_with {
            let client = Client::try_default().await.context(
                "finding the cluster for --verify-with (in-cluster config, else KUBECONFIG)",
            )?;
            let (namespace, name) = agent::parse_verify_with(sync, client.default_namespace())
                .map_err(anyhow::Error::msg)?;
            config.verify = Some(agent::Verify {
                client,
                namespace,
                name,
            });
        }
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        agent::run(config, shutdown)
            .await
            .map_err(anyhow::Error::from)
    })?;
    info!("stopped");
    Ok(())
}

fn print_crd(kind: CrdKind) -> anyhow::Result<()> {
    let crd = match kind {
        CrdKind::Modelcostmapsync => ModelCostMapSync::crd(),
        CrdKind::Clustermodelcostmapsync => ClusterModelCostMapSync::crd(),
    };
    print!("{}", serde_yaml::to_string(&crd)?);
    Ok(())
}

async fn run_check(args: CheckArgs) -> ExitCode {
    let rules = args.rules.rules();
    let result = match args.fetch.fetcher() {
        Ok(fetcher) => check(
            &args.source,
            args.against.as_deref(),
            &fetcher,
            &rules,
            args.timeout,
        )
        .await
        .map_err(anyhow::Error::from),
        Err(err) => Err(err),
    };
    match result {
        Ok(summary) => {
            println!("valid map: {}", args.source);
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("invalid map: {}\n{err:#}", args.source);
            ExitCode::from(1)
        }
    }
}

async fn run_diff(args: DiffArgs) -> ExitCode {
    let unusable = |err: anyhow::Error| {
        eprintln!("error: {err:#}");
        ExitCode::from(2)
    };
    let fetcher = match args.fetch.fetcher() {
        Ok(fetcher) => fetcher,
        Err(err) => return unusable(err),
    };
    let (old, new) = tokio::join!(
        cli::load(&args.old, &fetcher, args.timeout),
        cli::load(&args.new, &fetcher, args.timeout)
    );
    let (old, new) = match (old, new) {
        (Ok(old), Ok(new)) => (old, new),
        (Err(err), _) | (_, Err(err)) => return unusable(err.into()),
    };
    let parsed = match cli::check::parse_last_good(&old) {
        Ok(parsed) => parsed,
        Err(err) => {
            return unusable(anyhow::anyhow!(
                "the old map {} is not a valid map: {err}",
                args.old
            ));
        }
    };
    let rules = args.rules.rules();
    let report = cli::diff::report((&args.old, &old, &parsed), (&args.new, &new), &rules);
    match args.output {
        Output::Text => print!("{}", cli::diff::text(&report, &rules)),
        Output::Json => match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(err) => return unusable(err.into()),
        },
    }
    if report.accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let fetcher = args.fetch.fetcher()?;
    let client = Client::try_default()
        .await
        .context("finding the cluster (in-cluster config, else KUBECONFIG)")?;
    ensure_crd_installed(&client, &args.namespaces).await?;

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let metrics = Arc::new(Metrics::default());
    // Every replica serves maps, leader or not.
    let maps = MapCache::default();
    tokio::spawn(maps.clone().run(
        client.clone(),
        args.namespaces.clone(),
        args.fetch.max_map_bytes,
    ));
    let state = ServerState::new(metrics.clone(), maps.clone());
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    info!(listen = %args.listen, "serving HTTP");
    let server = tokio::spawn(server::serve(
        listener,
        state.clone(),
        shutdown.clone().cancelled_owned(),
    ));
    state.set_ready(true);

    let settings = Settings {
        namespaces: args.namespaces,
        instance: std::env::var("POD_NAME").ok(),
        metrics: metrics.clone(),
        proxies: ProxyClient::new(ProxyClientConfig::default())
            .context("building the HTTP client for proxies")?,
        maps,
        concurrent_syncs: args.concurrent_syncs,
        retry_backoff: args.retry_backoff,
    };
    if args.leader_election {
        let mut candidate =
            Candidate::from_environment(client.default_namespace(), args.lease_duration);
        if let Some(namespace) = args.lease_namespace {
            candidate.namespace = namespace;
        }
        leader::run_terms(client.clone(), candidate, shutdown.clone(), |term| {
            metrics.leader.set(1);
            let controller =
                controller::run(client.clone(), fetcher.clone(), settings.clone(), term);
            let metrics = metrics.clone();
            async move {
                controller.await;
                metrics.leader.set(0);
            }
        })
        .await
        .context("leader election")?;
    } else {
        metrics.leader.set(1);
        controller::run(client, fetcher, settings, shutdown.clone()).await;
    }
    // The controller also stops when its watches end; make sure the server follows.
    shutdown.cancel();
    server
        .await
        .context("HTTP server task")?
        .context("HTTP server")?;
    info!("stopped");
    Ok(())
}

/// Fails start-up with a useful message when the CRD is missing, instead of a watch that
/// errors forever.
async fn ensure_crd_installed(client: &Client, namespaces: &[String]) -> anyhow::Result<()> {
    for scope in scope::scopes(namespaces) {
        scope::api::<ModelCostMapSync>(client, scope.as_deref())
            .list_metadata(&ListParams::default().limit(1))
            .await
            .with_context(|| {
                format!(
                    "listing ModelCostMapSync objects in {} (is the CRD installed? `kubectl apply -f crds/`)",
                    scope.as_deref().unwrap_or("all namespaces")
                )
            })?;
    }
    Ok(())
}

async fn cancel_on_signal(token: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    info!("shutting down");
    token.cancel();
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a terminal: `kubectl logs` would show them verbatim.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

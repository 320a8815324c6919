//! The `costmap-operator` binary: parses arguments and wires the pieces together.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use costmap_operator::agent;
use costmap_operator::api::ModelCostMapSync;
use costmap_operator::cli;
use costmap_operator::cli::args::AccessArgs;
use costmap_operator::cli::args::{AgentArgs, Cli, Command, LogFormat, RunArgs};
use costmap_operator::controller::{self, Settings};
use costmap_operator::http::access::{AccessMode, Reviewer};
use costmap_operator::http::capability::MapKeys;
use costmap_operator::http::map_cache::MapCache;
use costmap_operator::http::server::{self, Access, ServerState};
use costmap_operator::leader::{self, Candidate};
use costmap_operator::litellm::{ProxyClient, ProxyClientConfig};
use costmap_operator::metrics::Metrics;
use costmap_operator::own_addresses::{self, OwnService};
use costmap_operator::scope;
use costmap_operator::sync::fetch::address::AddressPolicy;
use costmap_operator::sync::validate::Rules;
use kube::Client;
use kube::api::ListParams;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

fn main() -> ExitCode {
    costmap_operator::heap::tune_allocator();
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
        Command::Crd { kind } => cli::crd::print(kind),
        Command::Check(args) => {
            return one_thread(cli::check::run(args)).unwrap_or_else(|err| exit_code(Err(err)));
        }
        Command::Diff(args) => {
            return one_thread(cli::diff::run(args)).unwrap_or_else(|err| exit_code(Err(err)));
        }
        // The agent is a sidecar in every proxy pod: it runs on one thread, to stay at a few MiB.
        Command::Agent(args) => run_agent(args),
    };
    exit_code(result)
}

fn run_plugin(plugin: cli::plugin::Plugin) -> ExitCode {
    match multi_thread(cli::plugin::run(plugin)) {
        Ok(Ok(output)) => exit_code(cli::print_out(output)),
        Ok(Err(err)) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
        Err(err) => exit_code(Err(err)),
    }
}

/// Runs `future` on the operator's runtime: a worker thread per core.
fn multi_thread<F: Future>(future: F) -> anyhow::Result<F::Output> {
    block_on(tokio::runtime::Builder::new_multi_thread(), future)
}

/// Runs a one-shot command on the thread that started it: with worker threads, every chunk
/// of a fetched body would wake this thread from another one (a `check` of the real map
/// over loopback took 2.5 ms longer that way).
fn one_thread<F: Future>(future: F) -> anyhow::Result<F::Output> {
    block_on(tokio::runtime::Builder::new_current_thread(), future)
}

fn block_on<F: Future>(
    mut runtime: tokio::runtime::Builder,
    future: F,
) -> anyhow::Result<F::Output> {
    let runtime = runtime
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
        probe_listen: args.probe_listen,
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

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let own = own_addresses::from_env();
    let fetcher = args.fetch.fetcher(own.clone())?;
    let client = Client::try_default()
        .await
        .context("finding the cluster (in-cluster config, else KUBECONFIG)")?;
    ensure_crd_installed(&client, &args.namespaces).await?;

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    if let Some(name) = args.service_name.clone() {
        let namespace = std::env::var("POD_NAMESPACE")
            .unwrap_or_else(|_| client.default_namespace().to_owned());
        let service = OwnService::new(client.clone(), &namespace, name);
        service.refresh(&own).await;
        tokio::spawn(service.keep(own.clone(), shutdown.clone()));
    }

    let metrics = Arc::new(Metrics::default());
    // Every replica serves maps, leader or not.
    let maps = MapCache::default();
    tokio::spawn(maps.clone().run(
        client.clone(),
        args.namespaces.clone(),
        args.fetch.max_map_bytes,
    ));
    let map_keys = map_keys(&client, &args.access, args.lease_namespace.as_deref()).await?;
    let access = Access {
        maps: args.access.map_access.into(),
        metrics: args.access.metrics_access.into(),
        reviewer: Some(Reviewer::new(client.clone())),
        keys: map_keys.clone(),
    };
    if access.maps == AccessMode::Open {
        warn!(
            "--map-access open: every map is served to anyone who reaches the port; run so only where one team uses the cluster"
        );
    }
    if access.metrics == AccessMode::Open {
        warn!("--metrics-access open: /metrics is served to anyone who reaches the port");
    }
    let state = ServerState::new(metrics.clone(), maps.clone()).with_access(access);
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
        proxies: ProxyClient::new(ProxyClientConfig {
            addresses: AddressPolicy::new(args.allowed_consumer_cidrs, own),
            cluster_domain: args.cluster_domain,
            ..ProxyClientConfig::default()
        })
        .context("building the HTTP client for proxies")?,
        maps,
        concurrent_syncs: args.concurrent_syncs,
        retry_backoff: args.retry_backoff,
        min_sync_gap: args.min_sync_gap,
        map_keys,
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

/// The map key from `--map-key-secret` (created when missing), followed for rotations; in
/// the operator's namespace (env POD_NAMESPACE, else the Lease's, else the client's).
async fn map_keys(
    client: &Client,
    args: &AccessArgs,
    lease_namespace: Option<&str>,
) -> anyhow::Result<MapKeys> {
    let keys = MapKeys::new(args.map_base_url.as_ref().map(url::Url::as_str));
    let Some(secret) = &args.map_key_secret else {
        return Ok(keys);
    };
    let namespace = std::env::var("POD_NAMESPACE")
        .ok()
        .or_else(|| lease_namespace.map(str::to_owned))
        .unwrap_or_else(|| client.default_namespace().to_owned());
    keys.load(client, &namespace, secret).await?;
    tokio::spawn(
        keys.clone()
            .follow(client.clone(), namespace, secret.clone()),
    );
    Ok(keys)
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

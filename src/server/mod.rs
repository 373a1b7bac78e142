//! Listeners: the merchant API (HTTP/1.1 and HTTP/2, TLS by rustls when configured) and the
//! admin API on its own address, the in-process simulators the config asks for, and shutdown.
//!
//! The merchant request path is assembled here as a stack of tower layers, in the order of
//! the concerns. This module owns sockets and connection settings; it makes no payment
//! decision.

mod admin;
mod connections;
mod heads;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tower::ServiceBuilder;

use crate::api::Api;
use crate::api::admin::AdminToken;
use crate::config::{Config, ConfigError};
use crate::gateway::{Gateway, Reloaded};
use crate::layers::{
    Authenticate, BodyLayer, CheckLayer, Deadlines, Framing, IdempotencyLayer, MetricsLayer,
    RateLimitLayer, RequestIdLayer, ShedLayer, SizeLimits,
};
use crate::store::JournalStore;

/// Quiet time after the last change to the routes file before it is reloaded.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(300);
/// How often success-rate ejection runs (Envoy's interval is 10 s; payments move faster).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Open admin connections at most: scrapes and operators' scripts, a handful at a time; the
/// cap keeps a runaway script from spending the descriptors the merchant port needs.
const ADMIN_MAX_CONNECTIONS: usize = 256;
/// Sweeps between clean-ups of expired idempotency records and idle velocity windows.
const CLEANUP_EVERY: u64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("simulator {name:?}: {source}")]
    Simulator {
        name: String,
        source: crate::sim::SimError,
    },
    #[error("{0}")]
    Upstream(#[from] crate::upstream::UpstreamError),
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("merchant TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Journal(#[from] crate::store::journal::JournalError),
}

/// Runs paygate on the routes file at `path` until SIGINT or SIGTERM.
pub async fn serve(path: &Path) -> Result<(), ServeError> {
    let config = Config::load(path)?;
    tracing::info!("{}", config.summary());
    let simulators = start_simulators(&config).await?;
    let server = config.server.clone();
    let tls = match &server.tls {
        Some(tls) => Some(crate::tls::server_config(
            &tls.cert,
            &tls.key,
            tls.client_ca.as_deref(),
        )?),
        None => None,
    };
    let journal = Arc::new(JournalStore::open(&config.journal)?);
    tracing::info!(journal = %journal.location(), "journal open");
    let cluster = match &config.cluster {
        Some(settings) => Some(crate::cluster::Cluster::connect(settings).await?),
        None => None,
    };
    let mut gateway = Gateway::new(config, simulators, journal.clone(), journal)?;
    if let Some(cluster) = cluster {
        tracing::info!(
            replica = cluster.replica(),
            "cluster mode: rate limits, idempotency keys, channel limits and drains shared through Redis"
        );
        gateway = gateway.with_cluster(cluster);
    }
    let gateway = Arc::new(gateway);
    // Before listening: a replica starts with the drains the others hold.
    let following = crate::switches::start(&gateway).await;
    let merchant = bind(server.listen).await?;
    let admin = bind(server.admin_listen).await?;
    let watching = watch_routes(&gateway);
    let merchant_addr = local_addr(&merchant, server.listen);
    let admin_addr = local_addr(&admin, server.admin_listen);
    let scheme = if tls.is_some() { "https" } else { "http" };
    // Tests and scripts read this line to learn the ports when the config asks for port 0.
    println!("paygate listening on {scheme}://{merchant_addr} (admin http://{admin_addr})");
    let _ = std::io::stdout().flush();

    let ready = Arc::new(AtomicBool::new(true));
    // The order of the layers is the order of the concerns.
    let service = ServiceBuilder::new()
        .layer(RequestIdLayer)
        .layer(MetricsLayer(gateway.clone()))
        .layer(CheckLayer(Framing))
        .layer(CheckLayer(Deadlines(gateway.clone())))
        .layer(CheckLayer(SizeLimits {
            max_headers: server.max_headers,
            max_body_bytes: server.max_body_bytes,
        }))
        .layer(ShedLayer(gateway.clone()))
        .layer(BodyLayer {
            max_body_bytes: server.max_body_bytes,
        })
        .layer(CheckLayer(Authenticate(gateway.clone())))
        .layer(RateLimitLayer(gateway.clone()))
        .layer(IdempotencyLayer(gateway.clone()))
        .service(Api::new(gateway.clone()));
    let settings = connections::Settings {
        header_read_timeout: server.header_read_timeout,
        idle_timeout: server.idle_timeout,
        max_connections: server.max_connections,
        max_headers: server.max_headers,
        tls,
        drain: server.drain_period,
        metrics: gateway.metrics.listener("merchant"),
    };
    let admin_settings = connections::Settings {
        header_read_timeout: server.header_read_timeout,
        idle_timeout: server.idle_timeout,
        max_connections: ADMIN_MAX_CONNECTIONS,
        max_headers: server.max_headers,
        tls: None,
        drain: server.drain_period,
        metrics: gateway.metrics.listener("admin"),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // The admin listener stays up through the drain, so /readyz can say 503 and /metrics
    // can be scraped while in-flight payments finish.
    let (_admin_stop, admin_stopped) = tokio::sync::watch::channel(false);
    // Admin answers carry a request id too, echoed or generated as on the merchant port.
    let admin_service = ServiceBuilder::new()
        .layer(RequestIdLayer)
        .service(admin::Admin::new(
            ready.clone(),
            gateway.clone(),
            AdminToken::from_env(),
        ));
    let admin_task = tokio::spawn(connections::accept(
        admin,
        admin_settings,
        admin_service,
        admin_stopped,
    ));
    let merchant_task = tokio::spawn(connections::accept(merchant, settings, service, stopped));
    let mut background = vec![
        tokio::spawn(maintain(gateway.clone())),
        tokio::spawn(reload_on_hangup(gateway.clone())),
        tokio::spawn(crate::reconcile::reconcile_forever(gateway.clone())),
    ];
    background.extend(watching.map(tokio::spawn));
    background.extend(following.map(tokio::spawn));
    shutdown_signal().await;
    tracing::info!("shutting down: no new connections, draining in-flight requests");
    ready.store(false, Ordering::SeqCst);
    let _ = stop.send(true);
    let _ = merchant_task.await;
    for task in background {
        task.abort();
    }
    admin_task.abort();
    tracing::info!("drained; bye");
    Ok(())
}

/// Reloads in the blocking pool (it reads files and builds TLS clients) and logs the outcome.
async fn reload(gateway: &Arc<Gateway>, trigger: &'static str) {
    let gateway = gateway.clone();
    let outcome = tokio::task::spawn_blocking(move || gateway.reload(trigger)).await;
    match outcome {
        Ok(Ok(Reloaded::Applied { version, changes })) => {
            tracing::info!(trigger, %version, ?changes, "config reloaded");
        }
        Ok(Ok(Reloaded::Unchanged)) => tracing::debug!(trigger, "config unchanged"),
        // The rejection itself is logged, counted and audited by the gateway.
        Ok(Err(_)) => {}
        Err(e) => tracing::error!(error = %e, "reload task failed"),
    }
}

/// SIGHUP reloads the routes file.
async fn reload_on_hangup(gateway: Arc<Gateway>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload with POST /admin/reload");
            return;
        };
        while hangups.recv().await.is_some() {
            reload(&gateway, "sighup").await;
        }
    }
    #[cfg(not(unix))]
    let _ = gateway;
}

/// A change to the routes file reloads it, once the writes have been quiet for a moment
/// (editors write a file in several steps). The watch starts before paygate says it is
/// listening, so no change made after that is missed.
fn watch_routes(gateway: &Arc<Gateway>) -> Option<impl Future<Output = ()> + Send + 'static> {
    use notify::Watcher;
    let config = &gateway.snapshot().config;
    if !config.server.watch_routes {
        return None;
    }
    // The path as given (made absolute), not where its symlinks lead: a Kubernetes ConfigMap
    // is `routes.toml -> ..data/routes.toml` with `..data -> ..<timestamp>/`, and an update
    // swaps `..data` and deletes the old folder, so a watch on where the file led would die
    // with the first update.
    let file = std::path::absolute(&config.file).unwrap_or_else(|_| config.file.clone());
    let folder = file.parent()?.to_path_buf();
    let target = std::sync::Mutex::new(std::fs::canonicalize(&file).ok());
    let (changed, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // The file itself changed, or a symlink on its way now leads elsewhere.
        let touched = event.paths.iter().any(|p| p == &file) || {
            let now = std::fs::canonicalize(&file).ok();
            let mut last = target.lock().unwrap_or_else(|e| e.into_inner());
            let moved = *last != now;
            *last = now;
            moved
        };
        if touched {
            let _ = changed.send(());
        }
    });
    let mut watcher = watcher
        .inspect_err(|error| tracing::warn!(%error, "cannot watch the routes file; reload with SIGHUP or POST /admin/reload"))
        .ok()?;
    // The folder, not the file: editors and config management replace the file by renaming.
    if let Err(error) = watcher.watch(&folder, notify::RecursiveMode::NonRecursive) {
        tracing::warn!(%error, "cannot watch {}", folder.display());
        return None;
    }
    let gateway = gateway.clone();
    Some(async move {
        let _watcher = watcher;
        while changes.recv().await.is_some() {
            while tokio::time::timeout(RELOAD_DEBOUNCE, changes.recv())
                .await
                .is_ok_and(|m| m.is_some())
            {}
            reload(&gateway, "file").await;
        }
    })
}

/// Background upkeep: success-rate ejection once a second; expired idempotency records and
/// idle velocity windows once a minute.
async fn maintain(gateway: Arc<Gateway>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    for round in 0u64.. {
        tick.tick().await;
        let snapshot = gateway.snapshot();
        let config = &snapshot.config;
        for (channel, cause) in gateway.router.sweep(config, &snapshot.scores) {
            gateway.metrics.ejected(&config.channels[channel].name);
            gateway.store.event(
                "ejection",
                Some(&config.channels[channel].name),
                "success rate",
            );
            tracing::warn!(channel = %config.channels[channel].name, ?cause, "channel ejected");
        }
        publish_channel_gauges(&gateway, &snapshot);
        if round % CLEANUP_EVERY != 0 {
            continue;
        }
        let expired = gateway.idempotency.sweep(std::time::Instant::now());
        let longest = config
            .merchants
            .iter()
            .map(|m| &m.risk)
            .chain([&config.risk])
            .flat_map(|r| r.velocity.iter().map(|v| v.window))
            .max()
            .unwrap_or_default();
        let idle = gateway.risk.sweep(longest);
        tracing::debug!(
            expired,
            idle,
            "swept idempotency records and velocity windows"
        );
    }
}

/// The live figures of each channel as gauges: success rate, expected score, state.
fn publish_channel_gauges(gateway: &Gateway, snapshot: &crate::gateway::Snapshot) {
    let now = gateway.router.now_ms();
    let routing = &snapshot.config.routing;
    for (score, metrics) in snapshot.scores.iter().zip(&snapshot.metrics.channels) {
        let rate = score.evidence(now).rate();
        metrics.success_rate.set(rate);
        let latency_s = score.latency_ms().min(2_000.0) / 1000.0;
        metrics
            .score
            .set(rate - routing.latency_penalty_per_second * latency_s);
        let state = if score.is_drained() {
            "drained"
        } else {
            score.health.state(now).as_str()
        };
        metrics.set_state(state);
    }
}

async fn start_simulators(config: &Config) -> Result<HashMap<String, SocketAddr>, ServeError> {
    let mut addresses = HashMap::new();
    for spec in &config.simulators {
        let simulator = crate::sim::Simulator::with_dialect(
            spec.name.clone(),
            spec.behavior.clone(),
            spec.schedule.clone(),
            spec.dialect,
            None,
        );
        let addr = crate::sim::spawn(simulator, spec.listen)
            .await
            .map_err(|source| ServeError::Simulator {
                name: spec.name.clone(),
                source,
            })?;
        tracing::info!(simulator = %spec.name, %addr, "simulated PSP started");
        addresses.insert(spec.name.clone(), addr);
    }
    Ok(addresses)
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

fn local_addr(listener: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(fallback)
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

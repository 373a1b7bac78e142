//! Listeners: the merchant API (HTTP/1.1 and HTTP/2, TLS by rustls when configured) and the
//! admin API on its own address, the in-process simulators the config asks for, and shutdown.
//!
//! The merchant request path is assembled here as a stack of tower layers, in the order of
//! the concerns. This module owns sockets and connection settings; it makes no payment
//! decision.

mod admin;
mod connections;

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
use crate::gateway::Gateway;
use crate::layers::{
    Authenticate, BodyLayer, CheckLayer, Deadlines, IdempotencyLayer, RateLimit, RequestIdLayer,
    ShedLayer, SizeLimits,
};
use crate::store::MemoryStore;

/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN_PERIOD: Duration = Duration::from_secs(15);
/// How often success-rate ejection runs (Envoy's interval is 10 s; payments move faster).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
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
    #[error("merchant TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
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
    let gateway = Arc::new(Gateway::new(
        config,
        simulators,
        Arc::new(MemoryStore::new()),
    )?);
    let merchant = bind(server.listen).await?;
    let admin = bind(server.admin_listen).await?;
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
        .layer(CheckLayer(RateLimit(gateway.clone())))
        .layer(IdempotencyLayer(gateway.clone()))
        .service(Api::new(gateway.clone()));
    let settings = connections::Settings {
        header_read_timeout: server.header_read_timeout,
        max_headers: server.max_headers,
        tls,
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let admin_task = tokio::spawn(connections::accept(
        admin,
        connections::Settings::plain(server.header_read_timeout),
        admin::Admin::new(ready.clone(), gateway.clone(), AdminToken::from_env()),
        stopped.clone(),
        DRAIN_PERIOD,
    ));
    let merchant_task = tokio::spawn(connections::accept(
        merchant,
        settings,
        service,
        stopped,
        DRAIN_PERIOD,
    ));
    let sweeper = tokio::spawn(maintain(gateway.clone()));
    shutdown_signal().await;
    sweeper.abort();
    tracing::info!("shutting down: no new connections, draining in-flight requests");
    ready.store(false, Ordering::SeqCst);
    let _ = stop.send(true);
    let _ = merchant_task.await;
    admin_task.abort();
    Ok(())
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
            tracing::warn!(channel = %config.channels[channel].name, ?cause, "channel ejected");
        }
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

async fn start_simulators(config: &Config) -> Result<HashMap<String, SocketAddr>, ServeError> {
    let mut addresses = HashMap::new();
    for spec in &config.simulators {
        let simulator = crate::sim::Simulator::new(
            spec.name.clone(),
            spec.behavior.clone(),
            spec.schedule.clone(),
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

//! The composition root of zc: [`Config`] (the `ZERO_*` environment variables of zero-cache
//! and matching flags) and [`run`], which wires replication into the replica and, once the
//! initial sync is complete, serves clients (CVR store, view syncer, WebSocket transport).
//!
//! With no `ZERO_UPSTREAM_DB`, zc starts a throwaway local PostgreSQL (`wal_level=logical`)
//! and replicates from it: the embedded default, for trying zc out.
#![warn(missing_docs, unreachable_pub)]

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zc_cvr::CvrStore;
use zc_pg_embed::{EmbeddedPostgres, PgOptions};
use zc_replica::Replica;
use zc_sync::forward::Endpoints;
use zc_sync::{SyncConfig, Syncer};
use zc_wal::{Replicator, WalConfig};

/// zc's configuration: the same names and defaults as zero-cache 1.9.0.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "zc",
    version,
    about = "A Zero sync server (zero-cache replacement) in Rust"
)]
pub struct Config {
    /// Upstream PostgreSQL connection string (direct, not pgbouncer). Unset: zc starts a
    /// throwaway local PostgreSQL and replicates from it.
    #[arg(long = "upstream-db", env = "ZERO_UPSTREAM_DB")]
    pub upstream_db: Option<String>,
    /// Where the CVR lives (defaults to the upstream database).
    #[arg(long = "cvr-db", env = "ZERO_CVR_DB")]
    pub cvr_db: Option<String>,
    /// Where the change log lives (defaults to the upstream database; zc keeps its change
    /// log in the replica, so this is accepted for compatibility).
    #[arg(long = "change-db", env = "ZERO_CHANGE_DB")]
    pub change_db: Option<String>,
    /// The replica file.
    #[arg(
        long = "replica-file",
        env = "ZERO_REPLICA_FILE",
        default_value = "zero.db"
    )]
    pub replica_file: PathBuf,
    /// Port of the sync server.
    #[arg(long = "port", env = "ZERO_PORT", default_value_t = 4848)]
    pub port: u16,
    /// App id: names the app schema, the shard schema, publications and the slot.
    #[arg(long = "app-id", env = "ZERO_APP_ID", default_value = "zero")]
    pub app_id: String,
    /// Publications to replicate (comma-separated); empty publishes schema public.
    #[arg(
        long = "app-publications",
        env = "ZERO_APP_PUBLICATIONS",
        value_delimiter = ','
    )]
    pub app_publications: Vec<String>,
    /// Shard number.
    #[arg(long = "shard-num", env = "ZERO_SHARD_NUM", default_value_t = 0)]
    pub shard_num: u32,
    /// Parallel COPY connections during the initial sync.
    #[arg(
        long = "initial-sync-table-copy-workers",
        env = "ZERO_INITIAL_SYNC_TABLE_COPY_WORKERS",
        default_value_t = 5
    )]
    pub initial_sync_table_copy_workers: usize,
    /// Log level: debug, info, warn or error.
    #[arg(long = "log-level", env = "ZERO_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Sync workers. zc serves every client group from one process on a multi-threaded
    /// runtime; this sets the runtime's worker threads (0: one per core).
    #[arg(
        long = "num-sync-workers",
        env = "ZERO_NUM_SYNC_WORKERS",
        default_value_t = 0
    )]
    pub num_sync_workers: usize,
    /// Connections to the upstream database (initial copy workers are bounded by it).
    #[arg(
        long = "upstream-max-conns",
        env = "ZERO_UPSTREAM_MAX_CONNS",
        default_value_t = 20
    )]
    pub upstream_max_conns: u32,
    /// Connections to the CVR database.
    #[arg(
        long = "cvr-max-conns",
        env = "ZERO_CVR_MAX_CONNS",
        default_value_t = 30
    )]
    pub cvr_max_conns: u32,
    /// URL(s) of the app's named-query endpoint (comma-separated; the first is used).
    #[arg(long = "query-url", env = "ZERO_QUERY_URL", value_delimiter = ',')]
    pub query_url: Vec<String>,
    /// URL(s) of the app's custom-mutation endpoint (comma-separated; the first is used).
    #[arg(long = "mutate-url", env = "ZERO_MUTATE_URL", value_delimiter = ',')]
    pub mutate_url: Vec<String>,
    /// Forward the client's cookies to the query endpoint.
    #[arg(long = "query-forward-cookies", env = "ZERO_QUERY_FORWARD_COOKIES", default_value_t = false, action = clap::ArgAction::Set)]
    pub query_forward_cookies: bool,
    /// Forward the client's cookies to the mutate endpoint.
    #[arg(long = "mutate-forward-cookies", env = "ZERO_MUTATE_FORWARD_COOKIES", default_value_t = false, action = clap::ArgAction::Set)]
    pub mutate_forward_cookies: bool,
    /// API key sent as X-Api-Key to the query endpoint.
    #[arg(long = "query-api-key", env = "ZERO_QUERY_API_KEY")]
    pub query_api_key: Option<String>,
    /// API key sent as X-Api-Key to the mutate endpoint.
    #[arg(long = "mutate-api-key", env = "ZERO_MUTATE_API_KEY")]
    pub mutate_api_key: Option<String>,
    /// HMAC secret for verifying JWTs (legacy auth).
    #[arg(long = "auth-secret", env = "ZERO_AUTH_SECRET")]
    pub auth_secret: Option<String>,
    /// A public key (JWK JSON) for verifying JWTs (legacy auth).
    #[arg(long = "auth-jwk", env = "ZERO_AUTH_JWK")]
    pub auth_jwk: Option<String>,
    /// A JWKS URL for verifying JWTs (legacy auth).
    #[arg(long = "auth-jwks-url", env = "ZERO_AUTH_JWKS_URL")]
    pub auth_jwks_url: Option<String>,
    /// Password of the admin endpoints (accepted; zc has no admin endpoints yet).
    #[arg(long = "admin-password", env = "ZERO_ADMIN_PASSWORD")]
    pub admin_password: Option<String>,
}

/// The `ZERO_*` variables zc reads; any other one is reported at start-up.
const KNOWN_ENV: &[&str] = &[
    "ZERO_UPSTREAM_DB",
    "ZERO_CVR_DB",
    "ZERO_CHANGE_DB",
    "ZERO_REPLICA_FILE",
    "ZERO_PORT",
    "ZERO_APP_ID",
    "ZERO_APP_PUBLICATIONS",
    "ZERO_SHARD_NUM",
    "ZERO_INITIAL_SYNC_TABLE_COPY_WORKERS",
    "ZERO_LOG_LEVEL",
    "ZERO_NUM_SYNC_WORKERS",
    "ZERO_UPSTREAM_MAX_CONNS",
    "ZERO_CVR_MAX_CONNS",
    "ZERO_QUERY_URL",
    "ZERO_MUTATE_URL",
    "ZERO_QUERY_FORWARD_COOKIES",
    "ZERO_MUTATE_FORWARD_COOKIES",
    "ZERO_QUERY_API_KEY",
    "ZERO_MUTATE_API_KEY",
    "ZERO_ADMIN_PASSWORD",
    "ZERO_AUTH_SECRET",
    "ZERO_AUTH_JWK",
    "ZERO_AUTH_JWKS_URL",
];

/// Reports `ZERO_*` settings zc does not support (yet) instead of ignoring them silently.
fn report_unsupported_env() {
    for (name, _) in std::env::vars() {
        if name.starts_with("ZERO_") && !KNOWN_ENV.contains(&name.as_str()) {
            warn!(setting = %name, "this zero-cache setting is not supported by zc yet and is ignored");
        }
    }
}

static METRICS: std::sync::OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
    std::sync::OnceLock::new();

fn metrics_handle() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    METRICS
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .ok()
        })
        .clone()
}

/// Errors of the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The embedded PostgreSQL could not start.
    #[error("could not start the embedded PostgreSQL")]
    Embedded(#[source] zc_pg_embed::Error),
    /// The replica could not be opened.
    #[error("could not open the replica")]
    Replica(#[source] zc_replica::Error),
    /// Replication failed for good.
    #[error("replication failed")]
    Replication(#[source] zc_wal::Error),
    /// The CVR database cannot be used.
    #[error("could not set up the client view records (ZERO_CVR_DB)")]
    Cvr(#[source] zc_cvr::Error),
    /// The sync port cannot be opened.
    #[error("could not listen on {addr}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// True for configuration problems (exit code 2) rather than runtime failures.
    pub fn is_config(&self) -> bool {
        matches!(self, Error::Config(_))
            || matches!(
                self,
                Error::Replication(
                    zc_wal::Error::InvalidUrl { .. }
                        | zc_wal::Error::Config(_)
                        | zc_wal::Error::WalLevel { .. }
                        | zc_wal::Error::ReplicationPrivilege { .. }
                        | zc_wal::Error::PublicationMissing { .. }
                )
            )
    }
}

/// Runs zc until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let mut _embedded = None;
    let upstream = match &config.upstream_db {
        Some(url) => url.clone(),
        None => {
            info!("ZERO_UPSTREAM_DB is not set: starting a throwaway local PostgreSQL");
            let pg = tokio::task::spawn_blocking(|| EmbeddedPostgres::start(PgOptions::default()))
                .await
                .map_err(|e| Error::Config(format!("embedded PostgreSQL start-up panicked: {e}")))?
                .map_err(Error::Embedded)?;
            let url = pg.url("postgres");
            info!(url = %url, "embedded PostgreSQL is ready (data is discarded on exit)");
            _embedded = Some(pg);
            url
        }
    };
    report_unsupported_env();
    if config.change_db.is_some() {
        info!(
            "ZERO_CHANGE_DB is accepted for compatibility: zc keeps its change log in the replica"
        );
    }
    let cvr_url = config.cvr_db.clone().unwrap_or_else(|| upstream.clone());
    let upstream_url = upstream.clone();
    let wal = WalConfig::new(upstream)
        .with_app_id(config.app_id.clone())
        .with_shard_num(config.shard_num)
        .with_publications(
            config
                .app_publications
                .iter()
                .filter(|p| !p.is_empty())
                .cloned()
                .collect(),
        );
    let wal = WalConfig {
        copy_workers: config
            .initial_sync_table_copy_workers
            .clamp(1, config.upstream_max_conns.max(1) as usize),
        ..wal
    };
    wal.validate().map_err(Error::Replication)?;
    let replica = Replica::open(&config.replica_file).map_err(Error::Replica)?;
    info!(replica = %config.replica_file.display(), "replica opened");
    let replicator = Replicator::new(wal, replica.clone());
    replicator.preflight().await.map_err(Error::Replication)?;
    let mut replication = zc_types::task::spawn_named("replicator", {
        let shutdown = shutdown.clone();
        async move { replicator.run(shutdown).await }
    });

    // Serve once the replica holds a complete initial sync.
    let mut versions = replica.subscribe();
    loop {
        let ready = replica
            .snapshot()
            .ok()
            .and_then(|s| s.watermark().ok().flatten())
            .is_some();
        if ready {
            break;
        }
        tokio::select! {
            _ = versions.changed() => {}
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            r = &mut replication => return finish_replication(r),
            _ = shutdown.cancelled() => return finish_replication(replication.await),
        }
    }
    let cvr = CvrStore::connect(
        &cvr_url,
        &config.app_id,
        config.shard_num,
        config.cvr_max_conns,
    )
    .await
    .map_err(Error::Cvr)?;
    let syncer = Syncer::new(
        SyncConfig {
            app_id: config.app_id.clone(),
            shard_num: config.shard_num,
            endpoints: Endpoints {
                query_urls: config
                    .query_url
                    .iter()
                    .filter(|u| !u.is_empty())
                    .cloned()
                    .collect(),
                mutate_urls: config
                    .mutate_url
                    .iter()
                    .filter(|u| !u.is_empty())
                    .cloned()
                    .collect(),
                query_api_key: config.query_api_key.clone(),
                mutate_api_key: config.mutate_api_key.clone(),
                query_forward_cookies: config.query_forward_cookies,
                mutate_forward_cookies: config.mutate_forward_cookies,
                schema: format!("{}_{}", config.app_id, config.shard_num),
                app_id: config.app_id.clone(),
            },
            upstream_db: Some(upstream_url.clone()),
            auth: zc_sync::auth::AuthConfig {
                secret: config.auth_secret.clone(),
                jwk: config.auth_jwk.clone(),
                jwks_url: config.auth_jwks_url.clone(),
            },
        },
        replica,
        cvr,
    );
    let addr = std::net::SocketAddr::from(([0, 0, 0, 0], config.port));
    let listener = listen(addr).map_err(|source| Error::Listen { addr, source })?;
    info!(%addr, "zc is serving /sync/v51/connect");
    let handle = metrics_handle();
    let render: zc_transport::MetricsRender = std::sync::Arc::new(move || {
        handle
            .as_ref()
            .map(|h| {
                h.run_upkeep();
                h.render()
            })
            .unwrap_or_default()
    });
    let server = zc_types::task::spawn_named(
        "transport",
        zc_transport::serve(listener, syncer, render, shutdown.clone().cancelled_owned()),
    );
    let result = finish_replication(replication.await);
    shutdown.cancel();
    let _ = server.await;
    info!("zc stopped");
    result
}

/// Listens on `addr` with TCP_NODELAY set, which Linux copies to every accepted connection:
/// a poke's end is a small write that follows its rows after the CVR flush, and with
/// Nagle's algorithm it waited for the client's delayed acknowledgement of the rows (about
/// 40 ms; zero-cache's Node server sets no-delay too).
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn finish_replication(
    r: Result<Result<(), zc_wal::Error>, tokio::task::JoinError>,
) -> Result<(), Error> {
    match r {
        Ok(r) => r.map_err(Error::Replication),
        Err(e) => Err(Error::Config(format!("replication task failed: {e}"))),
    }
}

/// Cancels `token` on SIGINT or SIGTERM.
pub fn spawn_signal_handler(token: CancellationToken) -> tokio::task::JoinHandle<()> {
    zc_types::task::spawn_named("signals", async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        token.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        info!("shutting down");
        token.cancel();
    })
}

#[cfg(test)]
mod tests {
    /// Connections accepted by the server's listener do not delay small writes.
    #[tokio::test]
    async fn accepted_connections_have_no_delay() {
        let listener =
            super::listen(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).expect("listen");
        let addr = listener.local_addr().expect("address");
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        assert!(accepted.nodelay().expect("nodelay"));
        drop(client);
    }
}

//! The composition root of zc: [`Config`] (the `ZERO_*` environment variables of zero-cache
//! and matching flags) and [`run`], which wires replication into the replica.
//!
//! With no `ZERO_UPSTREAM_DB`, zc starts a throwaway local PostgreSQL (`wal_level=logical`)
//! and replicates from it: the embedded default, for trying zc out.
#![warn(missing_docs, unreachable_pub)]

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zc_pg_embed::{EmbeddedPostgres, PgOptions};
use zc_replica::Replica;
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
    if config.cvr_db.is_some() || config.change_db.is_some() {
        warn!(
            "ZERO_CVR_DB / ZERO_CHANGE_DB are accepted but not used yet: this zc build replicates only"
        );
    }
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
        copy_workers: config.initial_sync_table_copy_workers.max(1),
        ..wal
    };
    wal.validate().map_err(Error::Replication)?;
    let replica = Replica::open(&config.replica_file).map_err(Error::Replica)?;
    info!(replica = %config.replica_file.display(), "replica opened");
    let replicator = Replicator::new(wal, replica);
    replicator.preflight().await.map_err(Error::Replication)?;
    replicator.run(shutdown).await.map_err(Error::Replication)?;
    info!("zc stopped");
    Ok(())
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

//! The replicator: decides between resuming and a fresh initial sync, then streams, and
//! retries transient failures from the durable watermark.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{WalConfig, parse_url};
use crate::destination::{Destination, SyncState};
use crate::error::{Error, Result};
use crate::upstream::{self, SlotState};
use crate::{initial_sync, stream};

/// Replicates the configured publications into a [`Destination`], forever (until cancelled).
///
/// On start it resumes from the destination's durable watermark when the slot is healthy and
/// the publications are unchanged; otherwise (no replica, slot missing or invalidated,
/// publications changed, an incompatible schema change) it says so loudly and runs a fresh
/// initial sync. Transient failures (connection lost, slot still held by a previous session)
/// are retried with backoff; definite ones (bad configuration, missing privileges) end `run`.
#[derive(Debug)]
pub struct Replicator<D> {
    cfg: WalConfig,
    // Shared with the initial copy's worker tasks.
    dest: Arc<D>,
}

impl<D: Destination> Replicator<D> {
    /// A replicator for `cfg` into `dest`.
    pub fn new(cfg: WalConfig, dest: D) -> Self {
        Replicator {
            cfg,
            dest: Arc::new(dest),
        }
    }

    /// The destination.
    pub fn destination(&self) -> &D {
        &self.dest
    }

    /// Checks the configuration and the upstream's requirements (connection, wal_level,
    /// replication privilege) without replicating; the same checks `run` starts with.
    pub async fn preflight(&self) -> Result<()> {
        self.cfg.validate()?;
        parse_url(&self.cfg.upstream_url)?;
        let mut conn = upstream::connect(&self.cfg.upstream_url).await?;
        upstream::check_requirements(&mut conn).await
    }

    /// Runs until `cancel` fires (returns `Ok`) or a definite error occurs.
    pub async fn run(&self, cancel: CancellationToken) -> Result<()> {
        self.cfg.validate()?;
        let mut backoff = Duration::from_millis(100);
        loop {
            if cancel.is_cancelled() {
                return Ok(());
            }
            match self.run_once(&cancel).await {
                Ok(()) => return Ok(()),
                Err(Error::ResyncRequired { reason }) if !cancel.is_cancelled() => {
                    error!(reason = %reason, "REPLICA RESET: starting a full resync from a fresh snapshot");
                    if let Err(e) = self.reset().await {
                        warn!(error = %e, "could not drop the old slot before resyncing");
                    }
                    backoff = Duration::from_millis(100);
                }
                Err(Error::ResyncRequired { .. }) => return Ok(()),
                Err(Error::TableResyncRequired { table, oid }) => {
                    let copied = tokio::select! {
                        biased;
                        // Shutdown: an unfinished copy leaves the table as it was; the next
                        // start copies it again.
                        _ = cancel.cancelled() => return Ok(()),
                        // The copy.
                        r = self.resync_table(&table, oid) => r,
                    };
                    if let Err(e) = copied {
                        if e.is_transient() {
                            warn!(error = %e, table = %table, retry_in_ms = backoff.as_millis() as u64,
                                "copying the changed table failed; retrying");
                            tokio::select! {
                                biased;
                                _ = cancel.cancelled() => return Ok(()),
                                _ = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(10));
                        } else {
                            error!(error = %e, table = %table, "REPLICA RESET: could not copy the changed table; resyncing everything");
                            if let Err(e) = self.reset().await {
                                warn!(error = %e, "could not drop the old slot before resyncing");
                            }
                        }
                    }
                }
                Err(e) if e.is_transient() => {
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "replication interrupted; retrying from the durable watermark");
                    tokio::select! {
                        biased;
                        _ = cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn resync_table(&self, table: &zc_types::TableName, oid: u32) -> Result<()> {
        let parts = parse_url(&self.cfg.upstream_url)?;
        let state = self
            .dest
            .sync_state()
            .await
            .map_err(|e| Error::Destination(Box::new(e)))?;
        let Some(state) = state else {
            return Err(Error::ResyncRequired {
                reason: "no replica state".into(),
            });
        };
        info!(table = %table, "copying a table again after its columns changed upstream");
        initial_sync::resync_table(
            &self.cfg,
            &parts,
            &state.publications,
            self.dest.as_ref(),
            table,
            oid,
        )
        .await
    }

    /// Forgets the destination's state so that the next start resyncs: drops the slot.
    async fn reset(&self) -> Result<()> {
        let mut conn = upstream::connect(&self.cfg.upstream_url).await?;
        upstream::drop_slot(&mut conn, &self.cfg.slot_name()).await
    }

    /// A replicated table that is no longer published (dropped while zc was down, or
    /// removed from the publication) cannot be followed: resync.
    async fn check_tables_still_published(&self, publications: &[String]) -> Result<()> {
        let mut conn = upstream::connect(&self.cfg.upstream_url).await?;
        let published = upstream::published_tables(&mut conn, publications, None).await?;
        let have = self
            .dest
            .tables()
            .await
            .map_err(|e| Error::Destination(Box::new(e)))?;
        for t in have {
            match published.iter().find(|p| p.spec.oid == t.oid) {
                None => {
                    return Err(Error::ResyncRequired {
                        reason: format!("table {} is no longer published upstream", t.name),
                    });
                }
                // Renamed while zc was down: copy it under its new name.
                Some(p) if p.spec.name != t.name => {
                    return Err(Error::TableResyncRequired {
                        table: p.spec.name.clone(),
                        oid: t.oid,
                    });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    async fn run_once(&self, cancel: &CancellationToken) -> Result<()> {
        let parts = parse_url(&self.cfg.upstream_url)?;
        let mut conn = upstream::connect(&self.cfg.upstream_url).await?;
        upstream::check_requirements(&mut conn).await?;
        let publications = upstream::ensure_shard(&mut conn, &self.cfg).await?;
        let stored = self
            .dest
            .sync_state()
            .await
            .map_err(|e| Error::Destination(Box::new(e)))?;
        let slot = upstream::slot_state(&mut conn, &self.cfg.slot_name()).await?;
        drop(conn);
        let resume: Option<SyncState> = match stored {
            None => {
                info!("no replica yet: running the initial sync");
                None
            }
            Some(s) if s.publications != publications => {
                error!(stored = ?s.publications, configured = ?publications,
                    "REPLICA RESET: the publications changed; resyncing from scratch");
                None
            }
            Some(s) if s.slot != self.cfg.slot_name() => {
                error!(stored = %s.slot, "REPLICA RESET: the replica came from another slot; resyncing");
                None
            }
            Some(_) if slot == SlotState::Missing => {
                error!(slot = %self.cfg.slot_name(), "REPLICA RESET: the replication slot is gone upstream; resyncing from scratch");
                None
            }
            Some(_) if slot == SlotState::Lost => {
                error!(slot = %self.cfg.slot_name(), "REPLICA RESET: the replication slot was invalidated (WAL removed); resyncing from scratch");
                None
            }
            Some(s) => Some(s),
        };
        let state = match resume {
            Some(s) => {
                self.check_tables_still_published(&publications).await?;
                info!(version = %s.watermark.commit_lsn, "resuming from the replica's watermark");
                s
            }
            None => initial_sync::run(&self.cfg, &parts, &publications, &self.dest, cancel).await?,
        };
        stream::run(&self.cfg, &parts, self.dest.as_ref(), &state, cancel).await
    }
}

//! Streaming: pgoutput from the slot, one transaction at a time, into the destination.
//!
//! # Progress tracking (the acknowledgement rule)
//!
//! ```text
//!  Begin ─ changes ─ Commit(end_lsn) ──▶ destination.apply(txn) ──durable──▶ ack(end_lsn)
//!  KeepAlive(wal_end), no transaction open ─────────────────────────────────▶ ack(wal_end)
//! ```
//!
//! - An LSN is acknowledged to PostgreSQL only after the destination made everything up to it
//!   durable, so a crash at any point loses nothing: the slot re-sends what was not
//!   acknowledged, and transactions at or below the stored watermark are skipped, so nothing
//!   is applied twice (`crash_and_restart_converges` in zc-replica's integration tests).
//! - With no transaction open, every transaction before a keepalive's `wal_end` has been
//!   received and handed to the destination (pgoutput sends transactions in commit order,
//!   and this loop hands each over before reading on; the flush covers every one handed
//!   over before it), so acknowledging `wal_end` is safe once those are durable;
//!   without it a quiet or unpublished-only workload would pin WAL forever
//!   (`quiet_database_advances_the_slot`).
//!
//! # Visible first, durable after (group commit)
//!
//! ```text
//!  Commit ──▶ destination.apply_deferred(txn)           (visible at once, not durable, not acked)
//!    < 500 txns deferred, the first < 100 ms ago ──▶ next event
//!    otherwise ──▶ destination.flush() ──▶ ack(end_lsn)  (one fsync for all of them)
//!  100 ms after the first deferred txn, no event ──▶ destination.flush() ──▶ ack
//!  KeepAlive with deferred txns ──▶ its wal_end joins the next ack (no flush of its own)
//!  skipped commit with deferred txns ──▶ destination.flush() ──▶ ack
//! ```
//!
//! Every transaction is applied without waiting for the disk, so readers (zc's sync
//! groups) start on a new version while its fsync is still running: the fsync is off the
//! path from an upstream commit to the clients. An fsync per upstream transaction would
//! also cap a burst of small transactions at the disk's fsync rate, and writing out the
//! pages each one dirtied cost a third of zc's CPU at a few hundred transactions a second;
//! so the transactions of up to 100 ms (or 500 of them) wait for one flush, which writes
//! each page once and makes all of them durable, and only then is the newest `end_lsn`
//! acknowledged. Each upstream transaction is still applied atomically, with its own version
//! (the destination may commit transactions that queued for its writer together). A
//! crash loses at most applied but not yet durable transactions, none of them
//! acknowledged, which the slot sends again (`acks_never_pass_the_durable_watermark` in
//! zc-replica's integration tests). When the stream stops, such transactions are simply
//! not acknowledged; a later stream in this process flushes before it starts from the
//! destination's watermark.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwire_replication::{ReplicationClient, ReplicationEvent};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zc_types::{Lsn, Row, TableName, TableSpec, Value};

use crate::change::{Change, Transaction};
use crate::config::{ConnParts, WalConfig};
use crate::decode::{LogicalMessage, OldTuple, Relation, TupleValue, decode};
use crate::destination::{Destination, SyncState, Watermark};
use crate::error::{Error, Result};
use crate::pg_value::parse_text;
use crate::session::{repl_err, replication_config};
use crate::upstream;

/// What the stream knows about a relation id.
enum RelState {
    /// Replicated with this schema; `matches` is false when the relation's columns (as the
    /// stream last described them) differ from it.
    Table { spec: Arc<TableSpec>, matches: bool },
    /// Not held by the destination yet: the first change to apply copies it.
    NeedsCopy { name: TableName, oid: u32 },
    /// Not replicated (no usable key): its changes are ignored.
    Ignored,
}

struct Streamer<'a, D> {
    cfg: &'a WalConfig,
    dest: &'a D,
    /// Tables the destination holds, by name.
    known: HashMap<TableName, Arc<TableSpec>>,
    relations: HashMap<u32, RelState>,
    publications: Vec<String>,
    drop_prefix: String,
    alter_prefix: String,
    watermark: Watermark,
    open: Option<OpenTxn>,
    /// Transactions applied with `apply_deferred` and not yet durable nor acknowledged.
    deferred: Option<Deferred>,
}

/// At most this many transactions wait for one fsync...
const MAX_DEFERRED_TXNS: usize = 500;
/// ...and for at most this long after the first of them was applied.
const MAX_DEFERRED_FOR: Duration = Duration::from_millis(100);

/// The deferred (applied, not yet durable) transactions.
struct Deferred {
    count: usize,
    since: Instant,
    /// The newest of their end LSNs: acknowledged once they are durable.
    ack: pgwire_replication::Lsn,
}

impl Deferred {
    /// Whether the flush is due: too many transactions wait, or the first too long.
    fn due(&self) -> bool {
        self.count >= MAX_DEFERRED_TXNS || self.since.elapsed() >= MAX_DEFERRED_FOR
    }
}

struct OpenTxn {
    commit_lsn: Lsn,
    /// The upstream transaction ID (32 bits).
    xid: u32,
    skip: bool,
    changes: Vec<Change>,
}

/// Streams from the slot until cancelled or an error ends it.
pub(crate) async fn run<D: Destination>(
    cfg: &WalConfig,
    parts: &ConnParts,
    dest: &D,
    state: &SyncState,
    cancel: &CancellationToken,
) -> Result<()> {
    // The watermark streaming resumes from (and the client reports as applied at once) may
    // be that of transactions an earlier stream of this process applied without making them
    // durable: make it durable first.
    dest.flush()
        .await
        .map_err(|e| Error::Destination(Box::new(e)))?;
    let tables = dest
        .tables()
        .await
        .map_err(|e| Error::Destination(Box::new(e)))?;
    let known = tables.into_iter().map(|t| (t.name.clone(), t)).collect();
    let rc = replication_config(parts, cfg, &state.publications, state.watermark.ack_lsn);
    let mut client = ReplicationClient::connect(rc)
        .await
        .map_err(repl_err("connect"))?;
    tokio::select! {
        biased;
        _ = cancel.cancelled() => return Ok(()),
        started = client.wait_started() => started.map_err(repl_err("start replication"))?,
    }
    info!(slot = %cfg.slot_name(), from = %state.watermark.commit_lsn, "streaming changes");
    let mut streamer = Streamer {
        cfg,
        dest,
        known,
        relations: HashMap::new(),
        publications: state.publications.clone(),
        drop_prefix: upstream::drop_message_prefix(cfg),
        alter_prefix: upstream::alter_message_prefix(cfg),
        watermark: state.watermark,
        open: None,
        deferred: None,
    };
    let result = streamer.pump(&mut client, cancel).await;
    client.stop();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), client.shutdown()).await;
    result
}

impl<D: Destination> Streamer<'_, D> {
    async fn pump(
        &mut self,
        client: &mut ReplicationClient,
        cancel: &CancellationToken,
    ) -> Result<()> {
        loop {
            // When the deferred transactions are due to be made durable. Not while the
            // client's worker has ended: its receive then joins the worker, and a timer that
            // dropped that receive would lose the worker's result.
            let flush_at = self
                .deferred
                .as_ref()
                .filter(|_| client.is_running())
                .map(|d| d.since + MAX_DEFERRED_FOR);
            let received = tokio::select! {
                biased;
                // Shutdown: whatever is open is not acknowledged and will be re-sent;
                // what readers may have seen already is made durable (not acknowledged
                // either, the next stream resumes from it).
                _ = cancel.cancelled() => return self.make_durable("shutdown").await,
                // The next event (cancel-safe while the worker runs: an mpsc receive).
                ev = client.recv() => Some(ev),
                _ = tokio::time::sleep_until(flush_at.unwrap_or_else(Instant::now).into()),
                    if flush_at.is_some() => None,
            };
            let Some(event) = received else {
                if let Some(ack) = self.deferred.as_ref().map(|d| d.ack) {
                    self.ack(client, ack, "timer").await?;
                }
                continue;
            };
            let event = event.map_err(repl_err("receive changes"))?;
            let Some(event) = event else {
                return Err(Error::Replication {
                    what: "receive changes",
                    source: "the replication stream ended".into(),
                    transient: true,
                });
            };
            match event {
                ReplicationEvent::Begin { final_lsn, xid, .. } => {
                    let commit_lsn = Lsn(final_lsn.as_u64());
                    self.open = Some(OpenTxn {
                        commit_lsn,
                        xid,
                        skip: commit_lsn <= self.watermark.commit_lsn,
                        changes: Vec::new(),
                    });
                }
                ReplicationEvent::XLogData {
                    data, wal_start, ..
                } => {
                    let msg = decode(&data).map_err(|source| Error::Decode {
                        lsn: Lsn(wal_start.as_u64()),
                        source,
                    })?;
                    self.on_message(msg).await?;
                }
                ReplicationEvent::Message {
                    transactional,
                    prefix,
                    content,
                    ..
                } => {
                    if transactional && prefix == self.drop_prefix {
                        self.on_drop(&content);
                    } else if transactional && prefix == self.alter_prefix {
                        self.on_alter(&content)?;
                    } else if transactional {
                        self.push(Change::Message {
                            prefix,
                            content: content.to_vec(),
                        });
                    }
                }
                ReplicationEvent::Commit {
                    lsn,
                    end_lsn,
                    commit_time_micros,
                } => {
                    let Some(open) = self.open.take() else {
                        warn!(lsn = %lsn, "commit without begin; ignored");
                        continue;
                    };
                    let end = Lsn(end_lsn.as_u64());
                    if open.skip {
                        debug!(commit = %open.commit_lsn, "skipping transaction at or below the watermark");
                        self.ack(client, end_lsn, "skipped").await?;
                        continue;
                    }
                    let txn = Transaction {
                        commit_lsn: open.commit_lsn,
                        end_lsn: end,
                        commit_time_micros,
                        changes: open.changes,
                    };
                    // Visible at once; durable (one fsync for the burst) and acknowledged
                    // when no more of the stream is waiting or a bound is reached.
                    self.dest
                        .apply_deferred(txn)
                        .await
                        .map_err(|e| Error::Destination(Box::new(e)))?;
                    let deferred = self.deferred.get_or_insert_with(|| Deferred {
                        count: 0,
                        since: Instant::now(),
                        ack: end_lsn,
                    });
                    deferred.count += 1;
                    deferred.ack = end_lsn;
                    if !deferred.due() {
                        metrics::counter!("zc_wal_transactions_deferred_total").increment(1);
                    } else {
                        self.ack(client, end_lsn, "bound").await?;
                    }
                    self.watermark = Watermark {
                        commit_lsn: open.commit_lsn,
                        ack_lsn: end,
                    };
                    metrics::counter!("zc_wal_transactions_applied_total").increment(1);
                }
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    if self.open.is_some() {
                        continue;
                    }
                    match self.deferred.as_mut() {
                        // Everything before `wal_end` is applied: it is acknowledged with
                        // the deferred transactions when their flush is due. The walsender
                        // sends a keepalive each time it catches up while the acknowledged
                        // position is behind what it sent, which is after almost every
                        // transaction: a flush for each would be an fsync per transaction.
                        Some(d) => {
                            d.ack = d.ack.max(wal_end);
                            // Keepalives that never leave the stream idle do not hold
                            // the flush back past its bound either.
                            if d.due() {
                                let ack = d.ack;
                                self.ack(client, ack, "keepalive").await?;
                            }
                        }
                        // Nothing waits for a flush: acknowledged at once.
                        None => client.update_applied_lsn(wal_end),
                    }
                }
                ReplicationEvent::StoppedAt { .. } => return Ok(()),
            }
        }
    }

    /// Acknowledges `lsn`, first making the deferred transactions (all below it) durable.
    async fn ack(
        &mut self,
        client: &ReplicationClient,
        lsn: pgwire_replication::Lsn,
        why: &'static str,
    ) -> Result<()> {
        self.make_durable(why).await?;
        client.update_applied_lsn(lsn);
        Ok(())
    }

    /// Makes the transactions applied without an fsync durable (acknowledges nothing),
    /// counted in `zc_wal_flushes_total` by what made the flush due (`why`).
    async fn make_durable(&mut self, why: &'static str) -> Result<()> {
        if self.deferred.take().is_some() {
            metrics::counter!("zc_wal_flushes_total", "why" => why).increment(1);
            self.dest
                .flush()
                .await
                .map_err(|e| Error::Destination(Box::new(e)))?;
        }
        Ok(())
    }

    /// Tables dropped upstream (announced by the shard's event trigger, inside the dropping
    /// transaction): their rows go in the same transaction.
    fn on_drop(&mut self, content: &[u8]) {
        let Ok(dropped) = serde_json::from_slice::<Vec<(String, String, u32)>>(content) else {
            warn!("ignoring a malformed drop announcement");
            return;
        };
        let commit = self.open.as_ref().map(|o| o.commit_lsn).unwrap_or_default();
        for (schema, name, oid) in dropped {
            let name = TableName::new(schema, name);
            if self.held(&name, oid, commit).is_none() {
                continue;
            }
            info!(table = %name, "table dropped upstream");
            self.relations.remove(&oid);
            self.known.remove(&name);
            self.push(Change::DropTable(name));
        }
    }

    /// Tables altered upstream (announced by the shard's event trigger, inside the altering
    /// transaction, with their columns as they are after it). A table whose columns no longer
    /// match the replica's is copied again at a new snapshot, as when a row change brings a
    /// changed Relation message: pgoutput sends that only before the table's next row change,
    /// and never the values an `ADD COLUMN … DEFAULT` or a type change gives the rows already
    /// there.
    fn on_alter(&mut self, content: &[u8]) -> Result<()> {
        type Altered = Vec<(String, String, u32, Option<Vec<(String, u32)>>)>;
        let Ok(altered) = serde_json::from_slice::<Altered>(content) else {
            warn!("ignoring a malformed alter announcement");
            return Ok(());
        };
        let Some(open) = self.open.as_ref().filter(|o| !o.skip) else {
            return Ok(());
        };
        for (schema, name, oid, columns) in altered {
            let name = TableName::new(schema, name);
            let Some(spec) = self.held(&name, oid, open.commit_lsn) else {
                continue;
            };
            let columns = columns.unwrap_or_default();
            if !columns_match(spec, columns.iter().map(|(n, t)| (n.as_str(), *t))) {
                info!(table = %name, "the table's columns changed upstream");
                return Err(Error::TableResyncRequired { table: name, oid });
            }
        }
        Ok(())
    }

    /// The table zc holds under `name` with `oid`, unless it was copied at a snapshot that
    /// already contains the transaction committing at `commit`.
    fn held(&self, name: &TableName, oid: u32, commit: Lsn) -> Option<&Arc<TableSpec>> {
        self.known
            .get(name)
            .filter(|s| s.oid == oid && commit >= s.copied_at)
    }

    fn push(&mut self, change: Change) {
        if let Some(open) = self.open.as_mut().filter(|o| !o.skip) {
            open.changes.push(change);
        }
    }

    /// The table a change applies to; `None` when the change is to be ignored: the table is
    /// not replicated, the transaction is skipped, or the table was copied at a snapshot
    /// that already contains this transaction.
    fn table_of(&self, relation_id: u32) -> Result<Option<Arc<TableSpec>>> {
        let Some(open) = self.open.as_ref() else {
            return Ok(None);
        };
        match self.relations.get(&relation_id) {
            Some(RelState::Table { spec, matches }) => {
                if open.skip || open.commit_lsn < spec.copied_at {
                    Ok(None)
                } else if !matches {
                    Err(Error::TableResyncRequired {
                        table: spec.name.clone(),
                        oid: spec.oid,
                    })
                } else {
                    Ok(Some(Arc::clone(spec)))
                }
            }
            Some(RelState::NeedsCopy { name, oid }) => {
                if open.skip {
                    Ok(None)
                } else {
                    Err(Error::TableResyncRequired {
                        table: name.clone(),
                        oid: *oid,
                    })
                }
            }
            Some(RelState::Ignored) => Ok(None),
            None => Err(Error::UnknownRelation(relation_id)),
        }
    }

    async fn on_message(&mut self, msg: LogicalMessage) -> Result<()> {
        match msg {
            LogicalMessage::Relation(rel) => self.on_relation(rel).await,
            LogicalMessage::Insert { relation_id, new } => {
                let Some(spec) = self.table_of(relation_id)? else {
                    return Ok(());
                };
                let row = full_row(&spec, &new)?;
                self.push(Change::Insert {
                    table: spec.name.clone(),
                    row,
                });
                Ok(())
            }
            LogicalMessage::Update {
                relation_id,
                old,
                new,
            } => {
                let Some(spec) = self.table_of(relation_id)? else {
                    return Ok(());
                };
                let new_vals = partial_row(&spec, &new)?;
                let new_key: Vec<Option<&Value>> = spec
                    .key
                    .iter()
                    .map(|&i| new_vals.get(i).and_then(Option::as_ref))
                    .collect();
                let old_key = match old {
                    Some(OldTuple::Key(t)) | Some(OldTuple::Full(t)) => {
                        let old_vals = partial_row(&spec, &t)?;
                        let key: Row = spec
                            .key
                            .iter()
                            .map(|&i| old_vals.get(i).cloned().flatten().unwrap_or(Value::Null))
                            .collect();
                        let same = key.iter().zip(&new_key).all(|(a, b)| Some(a) == *b);
                        (!same).then_some(key)
                    }
                    None => None,
                };
                self.push(Change::Update {
                    table: spec.name.clone(),
                    old_key,
                    new: new_vals,
                });
                Ok(())
            }
            LogicalMessage::Delete { relation_id, old } => {
                let Some(spec) = self.table_of(relation_id)? else {
                    return Ok(());
                };
                let (OldTuple::Key(t) | OldTuple::Full(t)) = old;
                let vals = partial_row(&spec, &t)?;
                let key = spec
                    .key
                    .iter()
                    .map(|&i| vals.get(i).cloned().flatten().unwrap_or(Value::Null))
                    .collect();
                self.push(Change::Delete {
                    table: spec.name.clone(),
                    key,
                });
                Ok(())
            }
            LogicalMessage::Truncate { relation_ids, .. } => {
                let mut tables = Vec::new();
                for id in relation_ids {
                    if let Some(spec) = self.table_of(id)? {
                        tables.push(spec.name.clone());
                    }
                }
                if !tables.is_empty() {
                    self.push(Change::Truncate { tables });
                }
                Ok(())
            }
            LogicalMessage::Message {
                transactional: true,
                prefix,
                content,
                ..
            } => {
                self.push(Change::Message { prefix, content });
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A Relation message: the schema of a relation as of the next change to it.
    async fn on_relation(&mut self, rel: Relation) -> Result<()> {
        let name = TableName::new(
            if rel.namespace.is_empty() {
                "pg_catalog".to_owned()
            } else {
                rel.namespace.clone()
            },
            rel.name.clone(),
        );
        // The same name with a new OID means the table was dropped and created again: its
        // rows all arrive through the stream, like a new table's (handled below).
        if let Some(spec) = self.known.get(&name).filter(|s| s.oid == rel.id) {
            // A mismatch matters only once a change to the table must be applied (it may
            // belong to a transaction that a later copy of the table already contains).
            let matches = same_columns(spec, &rel);
            if !matches {
                info!(table = %name, "the table's columns changed upstream");
            }
            let state = RelState::Table {
                spec: Arc::clone(spec),
                matches,
            };
            self.relations.insert(rel.id, state);
            return Ok(());
        }
        // A relation zc does not hold under this name and OID: a table created, renamed,
        // recreated or added to a publication since it was last copied. The stream cannot carry
        // all its rows (a renamed or newly published table has rows no change will mention),
        // so it is copied at a snapshot, like a table whose columns changed. Tables without a
        // usable key are not replicated.
        let mut conn = upstream::connect(&self.cfg.upstream_url).await?;
        // The catalog must show the transaction the Relation message came in (it may have
        // created the table), which the walsender can send before it is visible.
        if let Some(open) = self.open.as_ref() {
            upstream::wait_until_visible(&mut conn, open.xid, Duration::from_secs(10)).await?;
        }
        let usable = !upstream::published_tables(&mut conn, &self.publications, Some(&[rel.id]))
            .await?
            .is_empty();
        if usable {
            info!(table = %name, "a table to copy appeared in the stream");
            self.relations
                .insert(rel.id, RelState::NeedsCopy { name, oid: rel.id });
        } else {
            warn!(table = %name, "table has no usable key: its changes are not replicated");
            self.relations.insert(rel.id, RelState::Ignored);
        }
        Ok(())
    }
}

fn same_columns(spec: &TableSpec, rel: &Relation) -> bool {
    // With the default replica identity (the primary key), a changed key is a schema change.
    // Other identities (an index, FULL) need not match the key zc chose.
    let key_ok = rel.replica_identity != b'd'
        || !rel.columns.iter().any(|c| c.is_key())
        || rel
            .columns
            .iter()
            .enumerate()
            .all(|(i, c)| c.is_key() == spec.key.contains(&i));
    key_ok
        && columns_match(
            spec,
            rel.columns.iter().map(|r| (r.name.as_str(), r.type_oid)),
        )
}

/// Whether `spec`'s columns are, in order, the given (name, type OID) pairs.
fn columns_match<'a>(
    spec: &TableSpec,
    columns: impl ExactSizeIterator<Item = (&'a str, u32)>,
) -> bool {
    spec.columns.len() == columns.len()
        && spec
            .columns
            .iter()
            .zip(columns)
            .all(|(c, (name, oid))| c.name == name && c.pg_type.oid == oid)
}

fn value_of(spec: &TableSpec, i: usize, v: &TupleValue) -> Result<Option<Value>> {
    let col = spec.columns.get(i).ok_or_else(|| Error::Value {
        table: spec.name.clone(),
        column: format!("#{i}"),
        source: crate::pg_value::ValueError {
            kind: "row".into(),
            reason: "more values than columns".into(),
        },
    })?;
    match v {
        TupleValue::Null => Ok(Some(Value::Null)),
        TupleValue::UnchangedToast => Ok(None),
        TupleValue::Text(bytes) => {
            let text = String::from_utf8_lossy(bytes);
            parse_text(&col.pg_type.kind, &text)
                .map(Some)
                .map_err(|source| Error::Value {
                    table: spec.name.clone(),
                    column: col.name.clone(),
                    source,
                })
        }
        TupleValue::Binary(bytes) => crate::pg_value::decode_binary(&col.pg_type.kind, bytes)
            .map(Some)
            .map_err(|source| Error::Value {
                table: spec.name.clone(),
                column: col.name.clone(),
                source,
            }),
    }
}

fn partial_row(spec: &TableSpec, tuple: &[TupleValue]) -> Result<Vec<Option<Value>>> {
    tuple
        .iter()
        .enumerate()
        .map(|(i, v)| value_of(spec, i, v))
        .collect()
}

fn full_row(spec: &TableSpec, tuple: &[TupleValue]) -> Result<Row> {
    Ok(partial_row(spec, tuple)?
        .into_iter()
        .map(|v| v.unwrap_or(Value::Null))
        .collect())
}

//! The replica store: one writer, MVCC readers.
//!
//! ```text
//!  zc-wal ──apply(txn)──▶ [writer: one redb write transaction per upstream transaction,
//!                          or per group of transactions queued while it was busy]
//!                              │ rows, index entries, change log, watermark (Immediate)
//!                              ▼
//!                         redb file ──▶ Snapshot (read transaction) ──▶ view syncers
//!                              │
//!                              └─▶ watch<version>: "version V is ready"
//! ```
//!
//! Invariants (and the tests that break if they are violated):
//! - One writer: every write runs under `write_lock` on a blocking thread, never on the
//!   async reactor (`replica_apply_is_atomic_and_idempotent`). The one exception is a copy's
//!   writes, which share the lock: those of different redb tables run at once, in the copy's
//!   one write transaction (redb lets a transaction's tables be written from several
//!   threads), those of one table one after another, in the order they asked for it
//!   (`copy_locks`). Every other write waits for them and they for it.
//! - `apply` returns only after an `Immediate` (fsync'd) commit holding the transaction's
//!   changes and the new watermark together, so acknowledging `end_lsn` upstream afterwards
//!   can never lose data (the crash test in zc-wal's integration suite).
//! - `apply_deferred` is the same commit with `Durability::None`: readers see it at once, but
//!   a crash rolls the file back to the last `Immediate` commit (changes and watermark
//!   together). The next `Immediate` commit (a durable `apply`, or `flush`'s empty commit)
//!   makes every earlier one durable, and zc-wal acknowledges nothing before that
//!   (`acks_never_pass_the_durable_watermark`).
//! - `apply_deferred` queues the transaction for the writer and returns: the stream decodes
//!   the next transaction while the writer applies this one, and a burst is applied back to
//!   back without a round trip to the stream each. Every other write applies the queued
//!   transactions first (all but a copy's batches, written while no stream runs: a table is
//!   copied again after its stream ended), so writes happen in the order asked for; after a
//!   queued transaction fails, the rest of the queue is dropped and the next
//!   `apply_deferred` or write reports the error (the stream then resumes from the
//!   watermark, and the slot sends the dropped ones again). The transactions queued at a
//!   time are applied in one write transaction (`GROUP_CHANGES`), each with its own version
//!   and change-log entries: readers see the group's last version, never a part of a
//!   transaction, and a failure leaves the whole group unapplied
//!   (`queued_transactions_share_a_commit_and_fail_together`).
//! - A copy keeps one write transaction open between its batches (see `OpenCopy`); every
//!   other write commits it first, so writes never wait on each other's transactions. Its
//!   secondary indexes are written when it finishes (see `index_build`), before the commit
//!   that ends the initial sync or swaps a table in, so readers never see a table without
//!   its indexes.
//! - A transaction at or below the stored watermark changes nothing (idempotent replay).
//! - While an initial sync is in progress no sync state is reported, so an interrupted
//!   initial sync is always started over. Its finish commits with `Durability::None` too
//!   (the stream's first `flush` makes it durable): a crash before that flush rolls the file
//!   back to the syncing state.

use std::collections::{HashMap, VecDeque};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, OwnedMutexGuard, OwnedRwLockReadGuard, RwLock, watch};
use zc_types::{Lsn, Row, RowBatch, TableName, TableSpec, Value, ValueRef};
use zc_wal::{Change, Destination, SyncState, Transaction, Watermark};

use crate::error::{Error, Result};
use crate::index_build::{self, IndexBuilds, KeyList};
use crate::key;

/// The default page cache of the replica (48 MiB).
pub const DEFAULT_CACHE_BYTES: usize = 48 << 20;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("zc_meta");
const CATALOG: TableDefinition<&str, &str> = TableDefinition::new("zc_catalog");
/// version (8 bytes, big-endian) ++ table ++ 0x00 ++ encoded key → op.
const CHANGELOG: TableDefinition<&[u8], u8> = TableDefinition::new("zc_changelog");
/// table ++ 0x00 ++ encoded key → version of its latest change-log entry.
const CHANGELOG_ROWS: TableDefinition<&[u8], u64> = TableDefinition::new("zc_changelog_rows");

const META_STATE: &str = "state";
const META_WATERMARK: &str = "watermark";
const META_SYNCING: &str = "initial_sync_in_progress";
/// The schema of a table being copied again into staging tables.
const META_RESYNC: &str = "table_resync_in_progress";

/// What happened to a row (or a whole table) in the change log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    /// The row was inserted or updated: read its new value from the snapshot.
    Set,
    /// The row was deleted.
    Delete,
    /// The table was truncated: every row of it is gone.
    Truncate,
    /// The table was created, dropped or replaced: treat all its rows as changed.
    Reset,
}

impl ChangeOp {
    fn code(self) -> u8 {
        match self {
            ChangeOp::Set => b's',
            ChangeOp::Delete => b'd',
            ChangeOp::Truncate => b't',
            ChangeOp::Reset => b'r',
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            b's' => ChangeOp::Set,
            b'd' => ChangeOp::Delete,
            b't' => ChangeOp::Truncate,
            b'r' => ChangeOp::Reset,
            _ => return None,
        })
    }
}

/// One change-log entry: the latest change of a row (or a table-wide change).
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeLogEntry {
    /// The version (commit LSN) of the change.
    pub version: Lsn,
    /// The table.
    pub table: TableName,
    /// The row's key values (in key order); `None` for table-wide ops.
    pub key: Option<Vec<Value>>,
    /// What happened.
    pub op: ChangeOp,
}

#[derive(Serialize, Deserialize)]
struct StoredState {
    slot: String,
    publications: Vec<String>,
    replica_version: u64,
}

/// The replica's key for a table: schema and name joined by the unit separator (U+001F),
/// which table names practically never contain, so that `"a.b"."c"` and `"a"."b.c"` do
/// not collide.
fn storage_key(t: &TableName) -> String {
    format!("{}\u{1f}{}", t.schema, t.name)
}

fn table_from_key(key: &str) -> Option<TableName> {
    let (schema, name) = key.split_once('\u{1f}')?;
    Some(TableName::new(schema, name))
}

fn rows_table(name: &str) -> String {
    format!("r:{name}")
}

fn index_table(name: &str, index: &str) -> String {
    format!("i:{name}:{index}")
}

/// Where a table's rows and index entries are written: its live tables, or the staging
/// tables of a table resync.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Area {
    Live,
    Staging,
}

impl Area {
    fn rows(self, name: &str) -> String {
        match self {
            Area::Live => rows_table(name),
            Area::Staging => format!("r~:{name}"),
        }
    }

    fn index(self, name: &str, index: &str) -> String {
        match self {
            Area::Live => index_table(name, index),
            Area::Staging => format!("i~:{name}:{index}"),
        }
    }
}

/// A redb replica of the upstream tables.
///
/// Cheap to clone; all clones share one database and one writer.
#[derive(Clone)]
pub struct Replica {
    inner: Arc<Inner>,
}

struct Inner {
    /// The copy's open write transaction between two batches (see
    /// [`Destination::copy_rows`]), shared by the copy's writes to different tables (each
    /// holds it for reading while it writes); taken and committed before any other write.
    /// Declared before `db` so that it is dropped (aborted) first.
    copy: std::sync::RwLock<Option<OpenCopy>>,
    db: Database,
    path: PathBuf,
    /// Held exclusively by every write, shared by the copy's writes (see `copy_locks`).
    write_lock: Arc<RwLock<()>>,
    /// One lock per redb table a copy writes, taken before the shared `write_lock`: a table's
    /// batches and chunks are written one at a time, in the order they asked for it.
    copy_locks: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
    version_tx: watch::Sender<Lsn>,
    /// Whether a `Durability::None` commit of `apply_deferred` may not be durable yet
    /// (changed only by the writer, under `write_lock`).
    deferred: AtomicBool,
    /// The secondary index entries of the copy in progress, written when it finishes.
    builds: std::sync::Mutex<IndexBuilds>,
    /// The first error of a copy batch written behind (see [`Destination::copy_rows`]),
    /// reported by the copy's next call.
    copy_failed: std::sync::Mutex<Option<Error>>,
    /// Transactions `apply_deferred` queued for the writer.
    queued: std::sync::Mutex<Queued>,
    /// The error of a queued transaction, reported by the next `apply_deferred` or `flush`.
    apply_failed: std::sync::Mutex<Option<Error>>,
}

/// The transactions of `apply_deferred` not applied yet, and whether a drain (holding the
/// writer lock) is applying them.
#[derive(Default)]
struct Queued {
    txns: VecDeque<Transaction>,
    draining: bool,
}

/// A write transaction of the copy, kept open across batches: redb then changes the pages
/// the copy dirtied in place instead of copying them again in every batch's commit.
struct OpenCopy {
    txn: WriteTransaction,
    area: Area,
    /// The version the copied rows carry in this area.
    version: u64,
    /// The table being copied again when the transaction began (read once: the copy's
    /// concurrent writes must not open the meta table each).
    staged: Option<TableSpec>,
    /// Bytes of rows and index entries written since this transaction began.
    bytes: AtomicUsize,
    /// Whether a write in it failed: it is then aborted, not committed (its copy fails).
    failed: AtomicBool,
}

impl OpenCopy {
    /// Whether the copy's writes to `area` go on in it.
    fn takes(&self, area: Area) -> bool {
        self.area == area && !self.failed.load(Ordering::Relaxed)
    }

    /// Commits it, or aborts it if a write in it failed.
    fn close(self) -> Result<()> {
        if !self.failed.load(Ordering::Relaxed) {
            self.txn.commit()?;
        }
        Ok(())
    }
}

/// A copy's hold on the writer for one redb table (see `Inner::copy_locks`).
struct CopyGuard {
    _table: OwnedMutexGuard<()>,
    _shared: OwnedRwLockReadGuard<()>,
}

/// Bytes of rows and index entries a copy writes in one write transaction before committing
/// it (non-durably). Small enough that a transaction's dirty pages stay in redb's write buffer
/// (half of the page cache) until the commit: the commit checksums every dirty page, and pages
/// already flushed out of the buffer were read back from the file for it. At 1M issues
/// (benches/side-by-side) 1M rows (~150 MiB) per transaction took 16.5 s, 100k rows 12.2 s.
const COPY_COMMIT_BYTES: usize = if cfg!(test) { 64 << 10 } else { 16 << 20 };

/// Entries already in the table a copied batch's cursor steps over before the rest of the
/// batch goes to the table's row build (see `put_encoded_in`): enough for the rows of
/// neighbouring heap pages, few enough that keys in no order (random ids) go to the build.
const COPY_BATCH_STEPS: usize = 64;

/// How many of a copy's writes (to different tables, see `Inner::copy_locks`) run at once:
/// one per core, at least two. More would only wait for a core, each holding its batch.
fn copy_writers() -> u32 {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    u32::try_from(cores.clamp(2, 1024)).unwrap_or(2)
}

/// A cursor run of a copied table's row build shorter than this is followed by
/// `ROW_CHUNK_INSERTS` ordinary inserts (see `put_row_chunk`).
const ROW_CHUNK_RUN: usize = 16;
const ROW_CHUNK_INSERTS: usize = 256;

/// Row changes of the queued transactions `apply_deferred` applies in one write transaction
/// (at least one transaction, whatever its size). Transactions queue while the writer is busy:
/// when they arrive faster than one commit each can keep up with, a group shares one commit,
/// which copies the pages every commit rewrites (the watermark's, the change log's, the
/// trees' upper levels) once instead of once per transaction.
const GROUP_CHANGES: usize = 10_000;

impl Inner {
    /// Commits the copy's open write transaction, if any (non-durably, as every batch of a
    /// copy), or aborts it if a write in it failed. Every write runs this first: redb has one
    /// write transaction at a time.
    fn settle_copy(&self) -> Result<()> {
        let open = self.copy.write().map_err(|_| Error::State("copy"))?.take();
        if let Some(open) = open {
            open.close()?;
        }
        Ok(())
    }

    /// Applies the queued transactions of `apply_deferred`, in order, until none is left;
    /// runs as the writer, under `write_lock`. The transactions queued at a time are applied
    /// together, in one write transaction (see [`GROUP_CHANGES`]). After a failure the rest
    /// are dropped.
    fn drain_queued(&self) -> Result<()> {
        loop {
            let group: Vec<Transaction> = {
                let mut q = self
                    .queued
                    .lock()
                    .map_err(|_| Error::State("apply queue"))?;
                if q.txns.is_empty() {
                    q.draining = false;
                    return Ok(());
                }
                let mut changes = 0;
                let n = q
                    .txns
                    .iter()
                    .take_while(|txn| {
                        let first = changes == 0;
                        changes += txn.changes.len().max(1);
                        first || changes <= GROUP_CHANGES
                    })
                    .count();
                q.txns.drain(..n).collect()
            };
            if let Err(e) = self.apply_deferred_now(&group) {
                self.drop_queued();
                return Err(e);
            }
        }
    }

    /// Drops the queued transactions after one failed: those after it cannot be applied
    /// without it. The stream fails on that error, resumes from the watermark, and the slot
    /// sends them again.
    fn drop_queued(&self) {
        if let Ok(mut q) = self.queued.lock() {
            q.txns.clear();
            q.draining = false;
        }
    }

    /// Marks that a `Durability::None` commit follows, for the next `flush` to make durable.
    /// Set before the commit, so that a failed or interrupted one is still flushed; cleared
    /// only after a durable commit, which covers all earlier ones.
    fn defer_durability(&self) {
        self.deferred.store(true, Ordering::Release);
    }

    /// Applies transactions in one write transaction without an fsync and announces the
    /// version of the last.
    fn apply_deferred_now(&self, txns: &[Transaction]) -> Result<()> {
        self.defer_durability();
        if let Some(version) = Replica::apply_blocking(&self.db, txns, Durability::None)? {
            self.version_tx.send_replace(version);
        }
        Ok(())
    }

    /// The error of a queued transaction, if one failed (taken: reported once).
    fn apply_failure(&self) -> Result<()> {
        take_failure(&self.apply_failed, "apply queue")
    }

    /// Writes the secondary indexes the copy collected (see [`IndexBuilds`]), after every
    /// batch of the copy was written: it fails if one of them failed.
    fn write_indexes(&self) -> Result<()> {
        self.copy_failure()?;
        self.write_row_builds()?;
        let mut builds = self
            .builds
            .lock()
            .map_err(|_| Error::State("index build"))?;
        if builds.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let entries = builds.write_all(&self.db)?;
        tracing::info!(
            entries,
            ms = started.elapsed().as_millis() as u64,
            "wrote the copy's secondary indexes"
        );
        Ok(())
    }

    /// Writes the row builds of copied tables whose end the copy did not announce (see
    /// `copied_table`), in one write transaction (non-durable, like the copy's): before their
    /// indexes, from which the rows they replace remove their entries.
    fn write_row_builds(&self) -> Result<()> {
        let mut w = self.db.begin_write()?;
        w.set_durability(Durability::None)?;
        let mut targets: Vec<(Area, TableSpec)> = catalog_specs(&w)?
            .into_iter()
            .map(|spec| (Area::Live, spec))
            .collect();
        targets.extend(staged_spec(&w)?.map(|spec| (Area::Staging, spec)));
        let mut written = 0;
        for (area, spec) in &targets {
            let rows = area.rows(&storage_key(&spec.name));
            let taken = self.take_builds(&[rows])?;
            for mut merge in taken.into_merges()? {
                while let Some(chunk) = merge.next_chunk(index_build::MERGE_CHUNK)? {
                    written += chunk.len();
                    put_row_chunk(&w, *area, spec, &chunk, &self.builds)?;
                }
            }
        }
        if written > 0 {
            w.commit()?;
        } else {
            w.abort()?;
        }
        Ok(())
    }

    /// Takes the builds of the tables `tables` (those it has) out of the copy's builds.
    fn take_builds(&self, tables: &[String]) -> Result<index_build::TakenBuilds> {
        Ok(self
            .builds
            .lock()
            .map_err(|_| Error::State("index build"))?
            .take_tables(tables))
    }

    /// The error of a copy batch written behind, if one failed (taken: reported once).
    fn copy_failure(&self) -> Result<()> {
        take_failure(&self.copy_failed, "copy")
    }

    /// Keeps the first error of a copy batch written behind.
    fn record_copy_failure(&self, e: Error) {
        tracing::error!(error = %e, "writing a batch of the copy failed");
        keep_failure(&self.copy_failed, e);
    }

    /// Forgets the index entries and the failed batch of an interrupted copy.
    fn clear_copy(&self) -> Result<()> {
        self.copy_failed
            .lock()
            .map_err(|_| Error::State("copy"))?
            .take();
        self.builds
            .lock()
            .map_err(|_| Error::State("index build"))?
            .clear();
        Ok(())
    }

    /// Writes one encoded batch of a copy into the copy's open write transaction (begun here
    /// if there is none), and commits that transaction once it holds enough bytes. Runs under
    /// the [`CopyGuard`] of the table's rows.
    fn copy_batch(&self, area: Area, spec: &TableSpec, batch: EncodedBatch) -> Result<()> {
        let bytes = batch.bytes.len();
        self.copy_write(area, spec, bytes, |open| {
            put_encoded_in(&open.txn, area, spec, open.version, batch, &self.builds)
        })
    }

    /// Writes a chunk of a copied table's row build (see [`index_build::Merge`]) into the
    /// copy's open write transaction, like [`copy_batch`](Self::copy_batch).
    fn copy_row_chunk(&self, area: Area, spec: &TableSpec, chunk: &KeyList) -> Result<()> {
        self.copy_write(area, spec, chunk.byte_len(), |open| {
            put_row_chunk(&open.txn, area, spec, chunk, &self.builds)
        })
    }

    /// Writes a chunk of a copied table's index (see [`index_build::Merge`]) into the copy's
    /// open write transaction, like [`copy_batch`](Self::copy_batch).
    fn copy_index_chunk(
        &self,
        area: Area,
        spec: &TableSpec,
        table: &str,
        chunk: &KeyList,
    ) -> Result<()> {
        self.copy_write(area, spec, chunk.byte_len(), |open| {
            index_build::write_chunk(&open.txn, table, chunk)
        })
    }

    /// Runs `write` in the copy's open write transaction (begun here if there is none), and
    /// commits that transaction once it holds enough bytes. Runs under a [`CopyGuard`] of the
    /// table it writes: writes to other tables may run at the same time.
    fn copy_write(
        &self,
        area: Area,
        spec: &TableSpec,
        bytes: usize,
        write: impl FnOnce(&OpenCopy) -> Result<()>,
    ) -> Result<()> {
        let full = loop {
            {
                let slot = self.copy.read().map_err(|_| Error::State("copy"))?;
                if let Some(open) = slot.as_ref().filter(|open| open.takes(area)) {
                    // The target may have changed since the batch was encoded (it cannot
                    // while one copy runs; this only keeps a stale batch out of the wrong
                    // tables).
                    if area == Area::Staging && open.staged.as_ref() != Some(spec) {
                        return Err(Error::State(META_RESYNC));
                    }
                    // Lock order: `copy`, then `builds` (which `write` may take). A write that
                    // fails, or panics, leaves its transaction to be aborted: a reader does
                    // not poison the lock, and the transaction may hold half the write.
                    let written =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write(open)));
                    if !matches!(written, Ok(Ok(()))) {
                        open.failed.store(true, Ordering::Relaxed);
                    }
                    written.unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
                    let total = open.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
                    break total >= COPY_COMMIT_BYTES;
                }
            }
            // None open (or one of the other area): begin one, unless a concurrent write did.
            let mut slot = self.copy.write().map_err(|_| Error::State("copy"))?;
            if slot.as_ref().is_some_and(|open| open.takes(area)) {
                continue;
            }
            if let Some(open) = slot.take() {
                open.close()?;
            }
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::None)?;
            let staged = staged_spec(&txn)?;
            let version = copy_version(&txn, area, spec, staged.as_ref())?;
            *slot = Some(OpenCopy {
                txn,
                area,
                version,
                staged,
                bytes: AtomicUsize::new(0),
                failed: AtomicBool::new(false),
            });
        };
        if full {
            // Waits for the writes to other tables in progress; the next write begins a new
            // transaction. A concurrent write may have committed it already.
            let mut slot = self.copy.write().map_err(|_| Error::State("copy"))?;
            let still_full = slot
                .as_ref()
                .is_some_and(|open| open.bytes.load(Ordering::Relaxed) >= COPY_COMMIT_BYTES);
            if still_full && let Some(open) = slot.take() {
                open.close()?;
            }
        }
        Ok(())
    }
}

/// The error kept in `slot`, if any (taken: reported once).
fn take_failure(slot: &std::sync::Mutex<Option<Error>>, what: &'static str) -> Result<()> {
    match slot.lock().map_err(|_| Error::State(what))?.take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Keeps `e` in `slot` unless an earlier error is kept there.
fn keep_failure(slot: &std::sync::Mutex<Option<Error>>, e: Error) {
    if let Ok(mut slot) = slot.lock() {
        slot.get_or_insert(e);
    }
}

/// The version rows copied into `area` carry: the initial sync's replica version, or for a
/// table copied again into staging tables (`staged`, read from `w`), the version its swap
/// will have.
fn copy_version(
    w: &WriteTransaction,
    area: Area,
    spec: &TableSpec,
    staged: Option<&TableSpec>,
) -> Result<u64> {
    match (area, staged.filter(|s| s.name == spec.name)) {
        (Area::Staging, Some(staged)) if staged == spec => {
            let mark = read_watermark(w)?.ok_or(Error::State(META_WATERMARK))?;
            Ok(mark.commit_lsn.as_u64() + 1)
        }
        (Area::Live, None) => {
            let meta = w.open_table(META)?;
            let v = meta.get(META_SYNCING)?.ok_or(Error::State(META_SYNCING))?;
            let raw: [u8; 8] = v
                .value()
                .try_into()
                .map_err(|_| Error::State(META_SYNCING))?;
            Ok(u64::from_be_bytes(raw))
        }
        _ => Err(Error::State(META_RESYNC)),
    }
}

/// What a build of the copy holds (see [`Replica::write_merges`]).
#[derive(Clone, Copy)]
enum Built {
    Rows,
    Index,
}

impl Replica {
    /// A copy's hold on the writer for the redb table `table`: after the writes to it asked
    /// for earlier, beside the writes to other tables, and never beside any other write.
    async fn copy_lock(&self, table: &str) -> Result<CopyGuard> {
        let lock = Arc::clone(
            self.inner
                .copy_locks
                .lock()
                .map_err(|_| Error::State("copy"))?
                .entry(table.to_owned())
                .or_default(),
        );
        let table = lock.lock_owned().await;
        let shared = Arc::clone(&self.inner.write_lock).read_owned().await;
        Ok(CopyGuard {
            _table: table,
            _shared: shared,
        })
    }

    /// Runs a copy's `write` behind, on a blocking thread, under `guard`: a failure (or a
    /// panic) is kept for the copy's next call, before the guard lets the next write in.
    fn write_behind(
        &self,
        guard: CopyGuard,
        write: impl FnOnce(&Inner) -> Result<()> + Send + 'static,
    ) {
        let inner = Arc::clone(&self.inner);
        drop(tokio::task::spawn_blocking(move || {
            let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write(&inner)))
                .unwrap_or(Err(Error::CopyWriterPanicked));
            if let Err(e) = written {
                inner.record_copy_failure(e);
            }
            drop(guard);
        }));
    }

    /// Writes taken builds of a copied table (its row build or its index builds): merged
    /// chunk by chunk here, beside the writer, each chunk written behind, under its table's
    /// [`CopyGuard`], into the copy's open write transaction. Returns the entries handed to
    /// the writer; the next write (`write_inner`) comes after them and reports a chunk that
    /// failed.
    async fn write_merges(
        &self,
        area: Area,
        spec: &Arc<TableSpec>,
        taken: index_build::TakenBuilds,
        kind: Built,
    ) -> Result<usize> {
        let merges = tokio::task::spawn_blocking(move || taken.into_merges())
            .await
            .map_err(Error::Writer)??;
        let mut entries = 0;
        for mut merge in merges {
            loop {
                let (back, chunk) = tokio::task::spawn_blocking(move || {
                    let chunk = merge.next_chunk(index_build::MERGE_CHUNK);
                    (merge, chunk)
                })
                .await
                .map_err(Error::Writer)?;
                merge = back;
                let Some(chunk) = chunk? else { break };
                self.inner.copy_failure()?;
                entries += chunk.len();
                let table = merge.table().to_owned();
                let guard = self.copy_lock(&table).await?;
                let spec = Arc::clone(spec);
                self.write_behind(guard, move |inner| match kind {
                    Built::Index => inner.copy_index_chunk(area, &spec, &table, &chunk),
                    Built::Rows => inner.copy_row_chunk(area, &spec, &chunk),
                });
            }
        }
        Ok(entries)
    }
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl Replica {
    /// Opens (or creates) the replica file at `path`. Recovery after an unclean shutdown
    /// happens here (redb repairs the file on open).
    pub fn open(path: impl AsRef<Path>) -> Result<Replica> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Opens the replica with a page cache of at most `cache_bytes`. The cache bounds the
    /// replica's memory: without a bound, a large initial copy would keep every page it
    /// wrote in memory.
    pub fn open_with_cache(path: impl AsRef<Path>, cache_bytes: usize) -> Result<Replica> {
        let path = path.as_ref().to_path_buf();
        let mut build_dir = path.clone().into_os_string();
        build_dir.push(".index-build");
        // Run files of a copy interrupted by a crash: that copy starts over.
        let mut builds = IndexBuilds::new(PathBuf::from(build_dir));
        builds.clear();
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(&path)
            .map_err(|source| Error::Open {
                path: path.display().to_string(),
                source,
            })?;
        let replica = Replica {
            inner: Arc::new(Inner {
                db,
                path,
                write_lock: Arc::new(RwLock::with_max_readers((), copy_writers())),
                copy_locks: std::sync::Mutex::new(HashMap::new()),
                version_tx: watch::channel(Lsn::ZERO).0,
                deferred: AtomicBool::new(false),
                copy: std::sync::RwLock::new(None),
                builds: std::sync::Mutex::new(builds),
                copy_failed: std::sync::Mutex::new(None),
                queued: std::sync::Mutex::new(Queued::default()),
                apply_failed: std::sync::Mutex::new(None),
            }),
        };
        let version = replica
            .snapshot()?
            .watermark()?
            .map(|w| w.commit_lsn)
            .unwrap_or_default();
        replica.inner.version_tx.send_replace(version);
        Ok(replica)
    }

    /// The replica file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// A consistent read-only view of the replica as of the latest commit.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let txn = self.inner.db.begin_read()?;
        Ok(Snapshot { txn })
    }

    /// A receiver that sees the version (commit LSN) of each new durable commit. Only the
    /// latest value is kept: a slow reader skips versions and reads the change log range.
    pub fn subscribe(&self) -> watch::Receiver<Lsn> {
        self.inner.version_tx.subscribe()
    }

    /// Runs `f` on a blocking thread as the one writer, after committing the copy's open
    /// write transaction (if any) and applying the transactions `apply_deferred` queued (or
    /// failing with the error of one of them).
    async fn write_inner<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        // The guard moves into the blocking task: if this future is dropped, the lock is held
        // until the write itself has finished, so writes never overlap.
        let guard = Arc::clone(&self.inner.write_lock).write_owned().await;
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let result = inner
                .settle_copy()
                .and_then(|()| inner.apply_failure())
                .and_then(|()| inner.drain_queued())
                .and_then(|()| f(&inner));
            drop(guard);
            result
        })
        .await
        .map_err(Error::Writer)?
    }

    /// Applies one transaction durably and notifies readers.
    async fn apply_durably(&self, txn: Transaction) -> Result<()> {
        let version = txn.commit_lsn;
        let applied = self
            .write_inner(move |inner| {
                let applied = Replica::apply_blocking(
                    &inner.db,
                    std::slice::from_ref(&txn),
                    Durability::Immediate,
                )?;
                // An `Immediate` commit makes every earlier one durable too.
                if applied.is_some() {
                    inner.deferred.store(false, Ordering::Release);
                }
                Ok(applied)
            })
            .await?;
        if applied.is_some() {
            self.inner.version_tx.send_replace(version);
        }
        Ok(())
    }

    /// Applies transactions synchronously, in order, in one write transaction (the body of
    /// [`Destination::apply`] and [`Destination::apply_deferred`]): all of them or, when one
    /// fails, none. Each keeps its own version; readers see the state after the last. Returns
    /// the version of the last one applied, `None` when all were at or below the watermark.
    fn apply_blocking(
        db: &Database,
        txns: &[Transaction],
        durability: Durability,
    ) -> Result<Option<Lsn>> {
        let mut w = db.begin_write()?;
        w.set_durability(durability)?;
        let mut mark = read_watermark(&w)?;
        let mut applied = None;
        // Table schemas read once per group, not once per row change (the cache follows the
        // catalog changes the transactions make).
        let mut specs = SpecCache::default();
        for txn in txns {
            if mark.is_some_and(|mark| txn.commit_lsn <= mark.commit_lsn) {
                continue;
            }
            let version = txn.commit_lsn.as_u64();
            for change in &txn.changes {
                apply_change(&w, &mut specs, version, change)?;
            }
            mark = Some(Watermark {
                commit_lsn: txn.commit_lsn,
                ack_lsn: txn.end_lsn,
            });
            applied = Some(txn.commit_lsn);
        }
        match (applied, mark) {
            (Some(_), Some(mark)) => {
                write_watermark(&w, mark)?;
                w.commit()?;
            }
            _ => w.abort()?,
        }
        Ok(applied)
    }
}

fn load_spec(w: &WriteTransaction, table: &TableName) -> Result<Arc<TableSpec>> {
    catalog_spec(&w.open_table(CATALOG)?, table)
}

/// A table's schema from the catalog (of a write or a read transaction).
fn catalog_spec(
    catalog: &impl ReadableTable<&'static str, &'static str>,
    table: &TableName,
) -> Result<Arc<TableSpec>> {
    let key = storage_key(table);
    let entry = catalog
        .get(key.as_str())?
        .ok_or_else(|| Error::UnknownTable(table.clone()))?;
    let spec: TableSpec = serde_json::from_str(entry.value()).map_err(|source| Error::Catalog {
        table: key.clone(),
        source,
    })?;
    Ok(Arc::new(spec))
}

fn read_watermark(txn: &WriteTransaction) -> Result<Option<Watermark>> {
    let meta = txn.open_table(META)?;
    let value = meta.get(META_WATERMARK)?;
    value.map(|v| decode_watermark(v.value())).transpose()
}

fn decode_watermark(raw: &[u8]) -> Result<Watermark> {
    let (a, b) = raw
        .split_at_checked(8)
        .ok_or(Error::State(META_WATERMARK))?;
    let a = u64::from_be_bytes(a.try_into().map_err(|_| Error::State(META_WATERMARK))?);
    let b = u64::from_be_bytes(b.try_into().map_err(|_| Error::State(META_WATERMARK))?);
    Ok(Watermark {
        commit_lsn: Lsn(a),
        ack_lsn: Lsn(b),
    })
}

fn write_watermark(txn: &WriteTransaction, mark: Watermark) -> Result<()> {
    let mut meta = txn.open_table(META)?;
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&mark.commit_lsn.as_u64().to_be_bytes());
    raw[8..].copy_from_slice(&mark.ack_lsn.as_u64().to_be_bytes());
    meta.insert(META_WATERMARK, raw.as_slice())?;
    Ok(())
}

fn encode_stored_row(version: u64, row: &[Value]) -> Vec<u8> {
    // Sized once: a row's text would otherwise grow the buffer a few times over.
    let values = || row.iter().map(Value::as_value_ref);
    let mut out = Vec::with_capacity(stored_row_len(values()));
    write_stored_row(&mut out, version, values());
    out
}

/// The length of a stored row (its version, then its values).
fn stored_row_len<'a>(row: impl Iterator<Item = ValueRef<'a>>) -> usize {
    8 + row.map(key::encoded_len_ref).sum::<usize>()
}

/// Appends a stored row: its version, then its values.
fn write_stored_row<'a>(out: &mut Vec<u8>, version: u64, row: impl Iterator<Item = ValueRef<'a>>) {
    out.extend_from_slice(&version.to_be_bytes());
    for v in row {
        key::encode_value_ref(out, v);
    }
}

fn decode_stored_row(table: &TableName, raw: &[u8]) -> Result<(Row, Lsn)> {
    let bad = || Error::CorruptRow(table.clone());
    let (version, rest) = raw.split_at_checked(8).ok_or_else(bad)?;
    let version = u64::from_be_bytes(version.try_into().map_err(|_| bad())?);
    let row = key::decode(rest).ok_or_else(bad)?;
    Ok((row, Lsn(version)))
}

fn row_key(spec: &TableSpec, row: &[Value]) -> Result<Vec<u8>> {
    check_shape(spec, row.len())?;
    Ok(key::encode(spec.key.iter().filter_map(|&i| row.get(i))))
}

fn check_shape(spec: &TableSpec, got: usize) -> Result<()> {
    if got != spec.columns.len() {
        return Err(Error::RowShape {
            table: spec.name.clone(),
            got,
            expected: spec.columns.len(),
        });
    }
    Ok(())
}

/// Whether an index only repeats the rows' own order: its columns are the key's, in key order,
/// ascending (the primary key's own index, mirrored from upstream). Its entries would equal the
/// row keys, so the rows serve it and it is not stored.
fn mirrors_key(spec: &TableSpec, index: &zc_types::IndexSpec) -> bool {
    index.columns.len() == spec.key.len()
        && index
            .columns
            .iter()
            .zip(&spec.key)
            .all(|(&(column, desc), &key)| column == key && !desc)
}

/// The indexes of `spec` that are stored (all but those that mirror the key).
fn stored_indexes(spec: &TableSpec) -> impl Iterator<Item = &zc_types::IndexSpec> {
    spec.indexes.iter().filter(|i| !mirrors_key(spec, i))
}

fn index_key(index: &zc_types::IndexSpec, row: &[Value], pk: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + pk.len());
    write_index_key(&mut out, index, row, pk);
    out
}

/// Appends the index entry of `row` (key `pk`) to `out`.
fn write_index_key(out: &mut Vec<u8>, index: &zc_types::IndexSpec, row: &[Value], pk: &[u8]) {
    write_index_key_with(out, index, |c| row.get(c).map(Value::as_value_ref), pk);
}

/// [`write_index_key`] of a row read through `value` (column → value).
fn write_index_key_with<'a>(
    out: &mut Vec<u8>,
    index: &zc_types::IndexSpec,
    value: impl Fn(usize) -> Option<ValueRef<'a>>,
    pk: &[u8],
) {
    for &(col, desc) in &index.columns {
        let v = value(col).unwrap_or(ValueRef::Null);
        if desc {
            key::encode_value_desc_ref(out, v);
        } else {
            key::encode_value_ref(out, v);
        }
    }
    out.extend_from_slice(pk);
}

/// Inserts (or replaces) a row with its index entries; returns its encoded key.
fn put_row(w: &WriteTransaction, spec: &TableSpec, version: u64, row: &[Value]) -> Result<Vec<u8>> {
    put_row_in(w, Area::Live, spec, version, row)
}

fn put_row_in(
    w: &WriteTransaction,
    area: Area,
    spec: &TableSpec,
    version: u64,
    row: &[Value],
) -> Result<Vec<u8>> {
    let pk = row_key(spec, row)?;
    let name = storage_key(&spec.name);
    let previous = {
        let mut rows = w.open_table(TableDefinition::<&[u8], &[u8]>::new(&area.rows(&name)))?;
        let prev = rows.insert(pk.as_slice(), encode_stored_row(version, row).as_slice())?;
        prev.map(|p| p.value().to_vec())
    };
    if let Some(prev) = previous {
        let (old, _) = decode_stored_row(&spec.name, &prev)?;
        remove_index_entries_in(w, area, spec, &old, &pk)?;
    }
    for index in stored_indexes(spec) {
        let mut t = w.open_table(TableDefinition::<&[u8], ()>::new(
            &area.index(&name, &index.name),
        ))?;
        t.insert(index_key(index, row, &pk).as_slice(), ())?;
    }
    Ok(pk)
}

/// A batch of copied rows, encoded for storage: the rows sorted by key, and each index's
/// entries sorted. Built outside the writer lock (see [`Destination::copy_rows`]).
///
/// Keys and values share one buffer: two allocations per row, made on the encoding thread and
/// freed on the writer's, made glibc's malloc lock arenas against each other in the copy.
struct EncodedBatch {
    /// Each row's key, then its stored value (whose 8-byte version prefix is filled in when
    /// it is written), back to back.
    bytes: Vec<u8>,
    /// Per row, in key order: where its key starts, the key's length and the value's (the
    /// value follows the key).
    rows: Vec<(usize, usize, usize)>,
}

impl EncodedBatch {
    /// Each row's (key, stored value), in key order.
    fn rows(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.rows.iter().map(|&(at, key, value)| {
            let row = self.bytes.get(at..at + key + value).unwrap_or_default();
            row.split_at(key.min(row.len()))
        })
    }
}

/// Encodes `rows` of `spec` for [`put_encoded_in`], with the new entries of each stored index
/// (in row order: the index builds sort them). Rows with the same key: the last wins.
fn encode_batch(spec: &TableSpec, rows: &RowBatch) -> Result<(EncodedBatch, Vec<KeyList>)> {
    check_shape(spec, rows.width())?;
    // The keys first, in a buffer of their own, to sort the rows by.
    let mut keys = Vec::with_capacity(rows.len() * 16);
    let mut keyed: Vec<(usize, usize, usize)> = Vec::with_capacity(rows.len());
    for (i, row) in rows.rows().enumerate() {
        let at = keys.len();
        for value in spec.key.iter().filter_map(|&c| row.get(c)) {
            key::encode_value_ref(&mut keys, value);
        }
        keyed.push((at, keys.len() - at, i));
    }
    let key_of = |&(at, len, _): &(usize, usize, usize)| keys.get(at..at + len).unwrap_or_default();
    // Stable: among equal keys the later row stays last, and dedup keeps the last of a run.
    keyed.sort_by(|a, b| key_of(a).cmp(key_of(b)));
    let mut unique: Vec<(usize, usize, usize)> = Vec::with_capacity(keyed.len());
    for entry in keyed {
        match unique.last_mut() {
            Some(last) if key_of(last) == key_of(&entry) => *last = entry,
            _ => unique.push(entry),
        }
    }
    let mut index_keys: Vec<KeyList> = stored_indexes(spec)
        .map(|_| KeyList::with_capacity(unique.len(), unique.len() * 48))
        .collect();
    let size: usize = unique
        .iter()
        .filter_map(|&(_, len, i)| {
            let row = rows.row(i)?;
            Some(len + stored_row_len(row.iter()))
        })
        .sum();
    let mut bytes = Vec::with_capacity(size);
    let mut out = Vec::with_capacity(unique.len());
    for entry in &unique {
        let Some(row) = rows.row(entry.2) else {
            continue;
        };
        let pk = key_of(entry);
        for (list, index) in index_keys.iter_mut().zip(stored_indexes(spec)) {
            list.push_with(|buf| write_index_key_with(buf, index, |c| row.get(c), pk))?;
        }
        let at = bytes.len();
        bytes.extend_from_slice(pk);
        // Version 0 until it is written (see `put_encoded_in`).
        write_stored_row(&mut bytes, 0, row.iter());
        out.push((at, pk.len(), bytes.len() - at - pk.len()));
    }
    Ok((EncodedBatch { bytes, rows: out }, index_keys))
}

/// Stores an [`EncodedBatch`] with `version`. Rows it replaces lose their index entries (its
/// new index entries were collected when it was encoded).
fn put_encoded_in(
    w: &WriteTransaction,
    area: Area,
    spec: &TableSpec,
    version: u64,
    mut batch: EncodedBatch,
    builds: &std::sync::Mutex<IndexBuilds>,
) -> Result<()> {
    let name = storage_key(&spec.name);
    {
        let mut table = w.open_table(TableDefinition::<&[u8], &[u8]>::new(&area.rows(&name)))?;
        for &(at, key, _) in &batch.rows {
            if let Some(prefix) = batch.bytes.get_mut(at + key..at + key + 8) {
                prefix.copy_from_slice(&version.to_be_bytes());
            }
        }
        // A copy's rows mostly arrive in key order (a table's heap order often is, and a batch
        // is sorted): insert them through a cursor at the gap where the batch's first key
        // belongs (the table's end, or, for a table copied in parts, the end of this part's
        // range so far), which packs full leaves instead of descending the tree and
        // splitting a leaf per row. A row that belongs after the entry past the gap steps the
        // cursor over that entry: heap order is key order only roughly (PostgreSQL puts rows
        // where there is room), so a batch's rows interleave with a few of the batch before.
        // The first row that still does not fit (out of order beyond the steps, or delivered
        // again) ends the run.
        let mut rows = batch.rows().peekable();
        let mut unordered = None;
        let gap = match rows.peek() {
            Some(&(first, _)) => Bound::Excluded(first),
            None => Bound::Unbounded,
        };
        let mut cursor = table.upper_bound_mut(gap)?;
        let mut steps = COPY_BATCH_STEPS;
        'rows: for (pk, value) in rows.by_ref() {
            loop {
                match cursor.insert_before(pk, value) {
                    Ok(()) => break,
                    Err(redb::CursorError::UnorderedKey) => {
                        let past = steps > 0
                            && matches!(cursor.peek_next()?, Some((next, _)) if next.value() < pk);
                        if !past {
                            unordered = Some((pk, value));
                            break 'rows;
                        }
                        steps -= 1;
                        cursor.next()?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        cursor.close()?;
        // The rest go to the table's row build, sorted with the others that did not fit and
        // written when the table is copied (see `copied_table`): inserted one by one here, in
        // a tree larger than the page cache, rows with keys in no particular order (random
        // ids) cost a page read and a leaf split each.
        if let Some(first) = unordered {
            builds
                .lock()
                .map_err(|_| Error::State("index build"))?
                .add_rows(area.rows(&name), |seq, rest| {
                    for (pk, value) in std::iter::once(first).chain(rows) {
                        rest.push_with(|out| index_build::row_entry(out, pk, seq, value))?;
                    }
                    Ok(())
                })?;
        }
    }
    Ok(())
}

/// Inserts a chunk of a copied table's row build (see [`index_build::row_entry`]), in key
/// order. A row it replaces loses its index entries from the builds (the table's indexes are
/// written after its rows).
fn put_row_chunk(
    w: &WriteTransaction,
    area: Area,
    spec: &TableSpec,
    chunk: &KeyList,
    builds: &std::sync::Mutex<IndexBuilds>,
) -> Result<()> {
    let name = storage_key(&spec.name);
    let mut replaced: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    {
        let mut table = w.open_table(TableDefinition::<&[u8], &[u8]>::new(&area.rows(&name)))?;
        let entries = chunk
            .iter()
            .map(index_build::split_row_entry)
            .collect::<Result<Vec<_>>>()?;
        // Through a cursor where the chunk's rows make runs between the rows already there
        // (keys in no order: few rows were written before them), by ordinary inserts where
        // they interleave with them (rows slightly out of order: a cursor would be closed,
        // which splices its run into the tree, and opened again for every row). Each cursor
        // run that ends short is followed by `ROW_CHUNK_INSERTS` ordinary inserts before the
        // next cursor is tried.
        let mut insert = |table: &mut redb::Table<&[u8], &[u8]>, (pk, value): (&[u8], &[u8])| {
            if let Some(prev) = table.insert(pk, value)? {
                replaced.push((pk.to_vec(), prev.value().to_vec()));
            }
            Ok::<_, Error>(())
        };
        let mut i = 0;
        while let Some(&(first, _)) = entries.get(i) {
            let start = i;
            let mut cursor = table.upper_bound_mut(Bound::Excluded(first))?;
            for &(pk, value) in &entries[start..] {
                match cursor.insert_before(pk, value) {
                    Ok(()) => i += 1,
                    Err(redb::CursorError::UnorderedKey) => break,
                    Err(e) => return Err(e.into()),
                }
            }
            cursor.close()?;
            if i < entries.len() && i - start < ROW_CHUNK_RUN {
                // The first row may be in the table already (delivered again): the ordinary
                // insert replaces it.
                let end = entries.len().min(i + ROW_CHUNK_INSERTS).max(i + 1);
                for &entry in entries.get(i..end).unwrap_or_default() {
                    insert(&mut table, entry)?;
                }
                i = end;
            }
        }
    }
    let mut removed: Vec<(String, Vec<u8>)> = Vec::new();
    for (pk, prev) in replaced {
        let (old, _) = decode_stored_row(&spec.name, &prev)?;
        for index in stored_indexes(spec) {
            removed.push((area.index(&name, &index.name), index_key(index, &old, &pk)));
        }
    }
    if !removed.is_empty() {
        let mut builds = builds.lock().map_err(|_| Error::State("index build"))?;
        for (table, key) in removed {
            builds.remove(table, key);
        }
    }
    Ok(())
}

fn remove_index_entries(
    w: &WriteTransaction,
    spec: &TableSpec,
    row: &[Value],
    pk: &[u8],
) -> Result<()> {
    remove_index_entries_in(w, Area::Live, spec, row, pk)
}

fn remove_index_entries_in(
    w: &WriteTransaction,
    area: Area,
    spec: &TableSpec,
    row: &[Value],
    pk: &[u8],
) -> Result<()> {
    let name = storage_key(&spec.name);
    for index in stored_indexes(spec) {
        let mut t = w.open_table(TableDefinition::<&[u8], ()>::new(
            &area.index(&name, &index.name),
        ))?;
        t.remove(index_key(index, row, pk).as_slice())?;
    }
    Ok(())
}

/// Removes a row by encoded key; returns the removed row.
fn delete_row(w: &WriteTransaction, spec: &TableSpec, pk: &[u8]) -> Result<Option<Row>> {
    let name = storage_key(&spec.name);
    let removed = {
        let mut rows = w.open_table(TableDefinition::<&[u8], &[u8]>::new(&rows_table(&name)))?;
        let r = rows.remove(pk)?;
        r.map(|g| g.value().to_vec())
    };
    let Some(raw) = removed else { return Ok(None) };
    let (row, _) = decode_stored_row(&spec.name, &raw)?;
    remove_index_entries(w, spec, &row, pk)?;
    Ok(Some(row))
}

/// An updated row: the new values, and for a value not sent (unchanged TOAST) the old row's.
fn merge_update(new: &[Option<Value>], old: Option<&Row>) -> Row {
    new.iter()
        .enumerate()
        .map(|(i, v)| match v {
            Some(v) => v.clone(),
            None => old.and_then(|r| r.get(i).cloned()).unwrap_or(Value::Null),
        })
        .collect()
}

/// Updates a row in place (its key unchanged): `new` holds the new values, `None` for one
/// unchanged and not sent (TOAST). Index entries whose key did not change stay untouched.
fn update_row(
    w: &WriteTransaction,
    spec: &TableSpec,
    version: u64,
    pk: &[u8],
    new: &[Option<Value>],
) -> Result<()> {
    let name = storage_key(&spec.name);
    let (old, merged) = {
        let mut rows = w.open_table(TableDefinition::<&[u8], &[u8]>::new(&rows_table(&name)))?;
        let old = match rows.get(pk)? {
            Some(raw) => Some(decode_stored_row(&spec.name, raw.value())?.0),
            None => None,
        };
        let merged = merge_update(new, old.as_ref());
        rows.insert(pk, encode_stored_row(version, &merged).as_slice())?;
        (old, merged)
    };
    for index in stored_indexes(spec) {
        let entry = index_key(index, &merged, pk);
        let mut t = w.open_table(TableDefinition::<&[u8], ()>::new(&index_table(
            &name,
            &index.name,
        )))?;
        if let Some(old) = &old {
            let old_entry = index_key(index, old, pk);
            if old_entry == entry {
                continue;
            }
            t.remove(old_entry.as_slice())?;
        }
        t.insert(entry.as_slice(), ())?;
    }
    Ok(())
}

fn drop_table_data(w: &WriteTransaction, spec: &TableSpec) -> Result<()> {
    drop_table_data_in(w, Area::Live, spec)
}

fn drop_table_data_in(w: &WriteTransaction, area: Area, spec: &TableSpec) -> Result<()> {
    let name = storage_key(&spec.name);
    w.delete_table(TableDefinition::<&[u8], &[u8]>::new(&area.rows(&name)))?;
    // Every index, also one that mirrors the key: a replica written before such indexes were
    // served from the rows may still store it.
    for index in &spec.indexes {
        w.delete_table(TableDefinition::<&[u8], ()>::new(
            &area.index(&name, &index.name),
        ))?;
    }
    Ok(())
}

fn catalog_specs(w: &WriteTransaction) -> Result<Vec<TableSpec>> {
    let catalog = w.open_table(CATALOG)?;
    let mut out = Vec::new();
    for entry in catalog.iter()? {
        let (k, v) = entry?;
        let spec: TableSpec = serde_json::from_str(v.value()).map_err(|source| Error::Catalog {
            table: k.value().to_owned(),
            source,
        })?;
        out.push(spec);
    }
    Ok(out)
}

/// Where copied rows of `table` go, read from a snapshot: the staging tables when that table
/// is being copied again, else its live tables (the initial sync).
fn copy_target(db: &Database, table: &TableName) -> Result<(Area, Arc<TableSpec>)> {
    let r = db.begin_read()?;
    if let Some(spec) = resync_spec(&r.open_table(META)?)?
        && spec.name == *table
    {
        return Ok((Area::Staging, Arc::new(spec)));
    }
    Ok((Area::Live, catalog_spec(&r.open_table(CATALOG)?, table)?))
}

fn staged_spec(w: &WriteTransaction) -> Result<Option<TableSpec>> {
    resync_spec(&w.open_table(META)?)
}

/// The schema of the table being copied again, if any (of a write or a read transaction).
fn resync_spec(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<TableSpec>> {
    let raw = meta.get(META_RESYNC)?;
    raw.map(|r| {
        serde_json::from_slice(r.value()).map_err(|source| Error::Catalog {
            table: META_RESYNC.to_owned(),
            source,
        })
    })
    .transpose()
}

fn create_table_data(w: &WriteTransaction, spec: &TableSpec) -> Result<()> {
    let name = storage_key(&spec.name);
    w.open_table(TableDefinition::<&[u8], &[u8]>::new(&rows_table(&name)))?;
    for index in stored_indexes(spec) {
        w.open_table(TableDefinition::<&[u8], ()>::new(&index_table(
            &name,
            &index.name,
        )))?;
    }
    let json = serde_json::to_string(spec).map_err(|source| Error::Catalog {
        table: name.clone(),
        source,
    })?;
    w.open_table(CATALOG)?
        .insert(name.as_str(), json.as_str())?;
    Ok(())
}

fn log_change(
    w: &WriteTransaction,
    version: u64,
    table: &TableName,
    pk: &[u8],
    op: ChangeOp,
) -> Result<()> {
    let mut row_id = storage_key(table).into_bytes();
    row_id.push(0);
    row_id.extend_from_slice(pk);
    let mut rows = w.open_table(CHANGELOG_ROWS)?;
    let mut log = w.open_table(CHANGELOG)?;
    if let Some(prev) = rows.insert(row_id.as_slice(), version)? {
        let prev = prev.value();
        let mut old_key = prev.to_be_bytes().to_vec();
        old_key.extend_from_slice(&row_id);
        log.remove(old_key.as_slice())?;
    }
    let mut entry = version.to_be_bytes().to_vec();
    entry.extend_from_slice(&row_id);
    log.insert(entry.as_slice(), op.code())?;
    Ok(())
}

/// The schemas a write transaction has read so far, kept in step with the catalog changes it
/// makes.
#[derive(Default)]
struct SpecCache(std::collections::HashMap<TableName, Arc<TableSpec>>);

impl SpecCache {
    fn get(&mut self, w: &WriteTransaction, table: &TableName) -> Result<Arc<TableSpec>> {
        if let Some(spec) = self.0.get(table) {
            return Ok(Arc::clone(spec));
        }
        let spec = load_spec(w, table)?;
        self.0.insert(table.clone(), Arc::clone(&spec));
        Ok(spec)
    }
}

fn apply_change(
    w: &WriteTransaction,
    specs: &mut SpecCache,
    version: u64,
    change: &Change,
) -> Result<()> {
    match change {
        Change::Insert { table, row } => {
            let spec = specs.get(w, table)?;
            let pk = put_row(w, &spec, version, row)?;
            log_change(w, version, table, &pk, ChangeOp::Set)
        }
        Change::Update {
            table,
            old_key,
            new,
        } => {
            let spec = specs.get(w, table)?;
            check_shape(&spec, new.len())?;
            let new_pk = key::encode(
                spec.key
                    .iter()
                    .map(|&i| new.get(i).and_then(Option::as_ref).unwrap_or(&Value::Null)),
            );
            let old_pk = match old_key {
                Some(k) => key::encode(k.iter()),
                None => new_pk.clone(),
            };
            if old_pk == new_pk {
                update_row(w, &spec, version, &new_pk, new)?;
                return log_change(w, version, table, &new_pk, ChangeOp::Set);
            }
            let old_row = delete_row(w, &spec, &old_pk)?;
            let merged = merge_update(new, old_row.as_ref());
            // The key changed: the old key is gone.
            log_change(w, version, table, &old_pk, ChangeOp::Delete)?;
            let pk = put_row(w, &spec, version, &merged)?;
            log_change(w, version, table, &pk, ChangeOp::Set)
        }
        Change::Delete { table, key: k } => {
            let spec = specs.get(w, table)?;
            let pk = key::encode(k.iter());
            delete_row(w, &spec, &pk)?;
            log_change(w, version, table, &pk, ChangeOp::Delete)
        }
        Change::Truncate { tables } => {
            for table in tables {
                let spec = specs.get(w, table)?;
                drop_table_data(w, &spec)?;
                create_table_data(w, &spec)?;
                log_change(w, version, table, &[], ChangeOp::Truncate)?;
            }
            Ok(())
        }
        Change::CreateTable(spec) => {
            if let Ok(old) = load_spec(w, &spec.name) {
                drop_table_data(w, &old)?;
            }
            create_table_data(w, spec)?;
            specs.0.insert(spec.name.clone(), Arc::clone(spec));
            log_change(w, version, &spec.name, &[], ChangeOp::Reset)
        }
        Change::DropTable(name) => {
            specs.0.remove(name);
            if let Ok(old) = load_spec(w, name) {
                drop_table_data(w, &old)?;
                w.open_table(CATALOG)?.remove(storage_key(name).as_str())?;
                log_change(w, version, name, &[], ChangeOp::Reset)?;
            }
            Ok(())
        }
        Change::Message { .. } => Ok(()),
        _ => Ok(()),
    }
}

impl Destination for Replica {
    type Error = Error;

    async fn sync_state(&self) -> Result<Option<SyncState>> {
        self.snapshot()?.sync_state()
    }

    async fn tables(&self) -> Result<Vec<Arc<TableSpec>>> {
        Ok(self
            .snapshot()?
            .tables()?
            .into_iter()
            .map(Arc::new)
            .collect())
    }

    async fn begin_initial_sync(
        &self,
        replica_version: Lsn,
        tables: Vec<Arc<TableSpec>>,
    ) -> Result<()> {
        self.write_inner(move |inner| {
            inner.clear_copy()?;
            let db = &inner.db;
            let mut w = db.begin_write()?;
            w.set_durability(Durability::Immediate)?;
            let handles: Vec<redb::UntypedTableHandle> = w.list_tables()?.collect();
            for handle in handles {
                w.delete_table(handle)?;
            }
            {
                let mut meta = w.open_table(META)?;
                meta.insert(
                    META_SYNCING,
                    replica_version.as_u64().to_be_bytes().as_slice(),
                )?;
            }
            w.open_table(CHANGELOG)?;
            w.open_table(CHANGELOG_ROWS)?;
            for spec in &tables {
                create_table_data(&w, spec)?;
            }
            w.commit()?;
            Ok(())
        })
        .await?;
        self.inner.version_tx.send_replace(Lsn::ZERO);
        Ok(())
    }

    async fn copy_rows(&self, table: &TableName, rows: RowBatch) -> Result<()> {
        // A batch whose write failed fails the copy at the next call.
        self.inner.copy_failure()?;
        // Keys, stored rows and index entries are encoded and sorted before the writer lock is
        // taken: the copy workers encode in parallel, the writer only inserts.
        let epoch = self
            .inner
            .builds
            .lock()
            .map_err(|_| Error::State("index build"))?
            .epoch();
        let inner = Arc::clone(&self.inner);
        let name = table.clone();
        let (area, spec, batch, rows) = tokio::task::spawn_blocking(move || {
            let (area, spec) = copy_target(&inner.db, &name)?;
            let (batch, added) = encode_batch(&spec, &rows)?;
            // The new index entries are collected here too, beside the other workers, not by
            // the writer (the collection spills sorted runs to files as it grows).
            let mut builds = inner
                .builds
                .lock()
                .map_err(|_| Error::State("index build"))?;
            if builds.epoch() != epoch {
                return Err(Error::State("copy"));
            }
            let name = storage_key(&spec.name);
            for (index, keys) in stored_indexes(&spec).zip(added) {
                builds.add(area.index(&name, &index.name), keys)?;
            }
            drop(builds);
            Ok::<_, Error>((area, spec, batch, rows))
        })
        .await
        .map_err(Error::Writer)??;
        // The rows are freed where they were decoded: glibc's malloc locks the arena of a
        // block freed on another thread, and the decoding thread allocates from it all along.
        drop(rows);
        // The batch is written behind: this returns once the write has its table's lock, so
        // the caller decodes and encodes its next batch while this one is inserted. The
        // caller's next batch waits for the lock, which keeps one table's batches in order,
        // and every later write (the finish included) waits for this one. Other tables'
        // batches are written at the same time.
        let guard = self.copy_lock(&area.rows(&storage_key(&spec.name))).await?;
        self.write_behind(guard, move |inner| inner.copy_batch(area, &spec, batch));
        Ok(())
    }

    async fn copied_table(&self, table: &TableName) -> Result<()> {
        // The table's rows and index entries are complete: write what was collected for it
        // now, while other tables may still be copying. Each build is merged here, beside the
        // writer, and its chunks are written behind like the copy's batches, between the
        // batches of the other tables (before, the whole merge held the writer and every copy
        // worker waited for it).
        self.inner.copy_failure()?;
        let started = std::time::Instant::now();
        let name = table.clone();
        let inner = Arc::clone(&self.inner);
        let (area, spec) = tokio::task::spawn_blocking(move || copy_target(&inner.db, &name))
            .await
            .map_err(Error::Writer)??;
        // Under its table's lock: the table's batches written behind are written, and their
        // rows that did not fit their gap are in its row build.
        let rows = area.rows(&storage_key(&spec.name));
        let guard = self.copy_lock(&rows).await?;
        let inner = Arc::clone(&self.inner);
        let rows = tokio::task::spawn_blocking(move || {
            inner.copy_failure()?;
            let taken = inner.take_builds(&[rows])?;
            drop(guard);
            Ok::<_, Error>(taken)
        })
        .await
        .map_err(Error::Writer)??;
        let unordered = self.write_merges(area, &spec, rows, Built::Rows).await?;
        // The rows replaced meanwhile removed their index entries: the indexes come after
        // the row chunks are written.
        if unordered > 0 {
            self.write_inner(|inner| inner.copy_failure()).await?;
        }
        let inner = Arc::clone(&self.inner);
        let key = storage_key(&spec.name);
        let indexes: Vec<String> = stored_indexes(&spec)
            .map(|index| area.index(&key, &index.name))
            .collect();
        // Taken out of the builds: the copy workers go on adding to the others.
        let taken = tokio::task::spawn_blocking(move || inner.take_builds(&indexes))
            .await
            .map_err(Error::Writer)??;
        let entries = self.write_merges(area, &spec, taken, Built::Index).await?;
        // Everything written for the table committed (readers see it), and nothing failed.
        self.write_inner(|inner| inner.copy_failure()).await?;
        if entries + unordered > 0 {
            tracing::debug!(
                table = %table,
                entries,
                unordered,
                ms = started.elapsed().as_millis() as u64,
                "wrote a copied table's secondary indexes and out-of-order rows"
            );
        }
        Ok(())
    }

    async fn begin_table_resync(&self, spec: Arc<TableSpec>) -> Result<()> {
        self.write_inner(move |inner| {
            inner.clear_copy()?;
            let db = &inner.db;
            let mut w = db.begin_write()?;
            w.set_durability(Durability::Immediate)?;
            // Leftovers of an interrupted resync go first.
            if let Some(old) = staged_spec(&w)? {
                drop_table_data_in(&w, Area::Staging, &old)?;
            }
            drop_table_data_in(&w, Area::Staging, &spec)?;
            let name = storage_key(&spec.name);
            w.open_table(TableDefinition::<&[u8], &[u8]>::new(
                &Area::Staging.rows(&name),
            ))?;
            for index in stored_indexes(&spec) {
                w.open_table(TableDefinition::<&[u8], ()>::new(
                    &Area::Staging.index(&name, &index.name),
                ))?;
            }
            let json = serde_json::to_vec(spec.as_ref()).map_err(|source| Error::Catalog {
                table: name.clone(),
                source,
            })?;
            w.open_table(META)?.insert(META_RESYNC, json.as_slice())?;
            w.commit()?;
            Ok(())
        })
        .await
    }

    async fn finish_table_resync(&self, table: &TableName) -> Result<()> {
        let table = table.clone();
        let version = self
            .write_inner(move |inner| {
                inner.write_indexes()?;
                let db = &inner.db;
                let mut w = db.begin_write()?;
                w.set_durability(Durability::Immediate)?;
                let spec = staged_spec(&w)?
                    .filter(|s| s.name == table)
                    .ok_or(Error::State(META_RESYNC))?;
                let mark = read_watermark(&w)?.ok_or(Error::State(META_WATERMARK))?;
                // The swap is a change of its own, between the last applied transaction and
                // the next one: readers see a new version; the acknowledged LSN stays.
                let version = mark.commit_lsn.as_u64() + 1;
                if let Ok(old) = load_spec(&w, &spec.name) {
                    drop_table_data(&w, &old)?;
                }
                // The same table under an older name (it was renamed) goes too.
                for other in catalog_specs(&w)? {
                    if other.oid == spec.oid && other.name != spec.name {
                        drop_table_data(&w, &other)?;
                        w.open_table(CATALOG)?
                            .remove(storage_key(&other.name).as_str())?;
                        log_change(&w, version, &other.name, &[], ChangeOp::Reset)?;
                    }
                }
                let name = storage_key(&spec.name);
                w.rename_table(
                    TableDefinition::<&[u8], &[u8]>::new(&Area::Staging.rows(&name)),
                    TableDefinition::<&[u8], &[u8]>::new(&Area::Live.rows(&name)),
                )?;
                for index in stored_indexes(&spec) {
                    w.rename_table(
                        TableDefinition::<&[u8], ()>::new(&Area::Staging.index(&name, &index.name)),
                        TableDefinition::<&[u8], ()>::new(&Area::Live.index(&name, &index.name)),
                    )?;
                }
                let json = serde_json::to_string(&spec).map_err(|source| Error::Catalog {
                    table: name.clone(),
                    source,
                })?;
                w.open_table(CATALOG)?
                    .insert(name.as_str(), json.as_str())?;
                w.open_table(META)?.remove(META_RESYNC)?;
                log_change(&w, version, &spec.name, &[], ChangeOp::Reset)?;
                write_watermark(
                    &w,
                    Watermark {
                        commit_lsn: Lsn(version),
                        ack_lsn: mark.ack_lsn,
                    },
                )?;
                w.commit()?;
                Ok(Lsn(version))
            })
            .await?;
        self.inner.version_tx.send_replace(version);
        Ok(())
    }

    async fn finish_initial_sync(&self, state: SyncState) -> Result<()> {
        let version = state.watermark.commit_lsn;
        self.write_inner(move |inner| {
            inner.write_indexes()?;
            let db = &inner.db;
            let mut w = db.begin_write()?;
            // Not durable yet, as `apply_deferred`: the copy's fsync (a whole replica's dirty
            // pages, 0.3–0.4 s at 1M issues) is the stream's first `flush`, while the server
            // starts serving. A crash before it leaves the last durable state, which is
            // still syncing: the initial sync starts over, as after a crash during the copy.
            inner.defer_durability();
            w.set_durability(Durability::None)?;
            {
                let mut meta = w.open_table(META)?;
                let stored = StoredState {
                    slot: state.slot.clone(),
                    publications: state.publications.clone(),
                    replica_version: state.replica_version.as_u64(),
                };
                let json = serde_json::to_vec(&stored).map_err(|_| Error::State(META_STATE))?;
                meta.insert(META_STATE, json.as_slice())?;
                meta.remove(META_SYNCING)?;
            }
            write_watermark(&w, state.watermark)?;
            w.commit()?;
            Ok(())
        })
        .await?;
        self.inner.version_tx.send_replace(version);
        Ok(())
    }

    async fn apply(&self, txn: Transaction) -> Result<()> {
        self.apply_durably(txn).await
    }

    async fn apply_deferred(&self, txn: Transaction) -> Result<()> {
        self.inner.apply_failure()?;
        {
            let mut q = self
                .inner
                .queued
                .lock()
                .map_err(|_| Error::State("apply queue"))?;
            q.txns.push_back(txn);
            if q.draining {
                // The running drain applies it.
                return Ok(());
            }
        }
        // Start a drain. It holds the writer lock until the queue is empty, so a write asked
        // for after this call waits for the queued transactions (and every write applies
        // any left queued first, e.g. when this future was dropped while it waited here).
        let guard = Arc::clone(&self.inner.write_lock).write_owned().await;
        {
            let mut q = self
                .inner
                .queued
                .lock()
                .map_err(|_| Error::State("apply queue"))?;
            if q.txns.is_empty() {
                return Ok(());
            }
            q.draining = true;
        }
        let inner = Arc::clone(&self.inner);
        drop(tokio::task::spawn_blocking(move || {
            let drained = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                inner.settle_copy().and_then(|()| inner.drain_queued())
            }))
            .unwrap_or(Err(Error::ApplyPanicked));
            if let Err(e) = drained {
                tracing::error!(error = %e, "applying a replicated transaction failed");
                inner.drop_queued();
                keep_failure(&inner.apply_failed, e);
            }
            drop(guard);
        }));
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        self.inner.apply_failure()?;
        let queued = self
            .inner
            .queued
            .lock()
            .map_err(|_| Error::State("apply queue"))
            .map(|q| q.draining || !q.txns.is_empty())?;
        if !queued && !self.inner.deferred.load(Ordering::Acquire) {
            return Ok(());
        }
        self.write_inner(|inner| {
            if inner.deferred.load(Ordering::Acquire) {
                // An empty durable commit: redb makes every earlier `None` commit durable with
                // it (it writes nothing readers could see, so no version is announced).
                let mut w = inner.db.begin_write()?;
                w.set_durability(Durability::Immediate)?;
                w.commit()?;
                inner.deferred.store(false, Ordering::Release);
            }
            Ok(())
        })
        .await
    }
}

/// A consistent read-only view of the replica (a redb read transaction).
///
/// Keep snapshots short-lived: a live snapshot pins the pages it sees, so the file cannot
/// reuse them.
pub struct Snapshot {
    txn: ReadTransaction,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").finish_non_exhaustive()
    }
}

/// One entry of a redb range over a table keyed by bytes.
type RangeEntry<V> = std::result::Result<
    (
        redb::AccessGuard<'static, &'static [u8]>,
        redb::AccessGuard<'static, V>,
    ),
    redb::StorageError,
>;

/// Rows of a table in key (or index) order, with their versions.
pub type RowIter<'a> = Box<dyn Iterator<Item = Result<(Row, Lsn)>> + 'a>;

impl Snapshot {
    /// The stored watermark, if an initial sync has completed.
    pub fn watermark(&self) -> Result<Option<Watermark>> {
        let Some(meta) = self.open_meta()? else {
            return Ok(None);
        };
        if meta.get(META_SYNCING)?.is_some() {
            return Ok(None);
        }
        let value = meta.get(META_WATERMARK)?;
        value.map(|v| decode_watermark(v.value())).transpose()
    }

    /// The version (commit LSN) this snapshot is at; zero before the initial sync.
    pub fn version(&self) -> Result<Lsn> {
        Ok(self.watermark()?.map(|w| w.commit_lsn).unwrap_or_default())
    }

    fn open_meta(&self) -> Result<Option<redb::ReadOnlyTable<&'static str, &'static [u8]>>> {
        match self.txn.open_table(META) {
            Ok(t) => Ok(Some(t)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The stored sync state, if an initial sync has completed.
    pub fn sync_state(&self) -> Result<Option<SyncState>> {
        let Some(watermark) = self.watermark()? else {
            return Ok(None);
        };
        let Some(meta) = self.open_meta()? else {
            return Ok(None);
        };
        let Some(raw) = meta.get(META_STATE)? else {
            return Ok(None);
        };
        let stored: StoredState =
            serde_json::from_slice(raw.value()).map_err(|_| Error::State(META_STATE))?;
        Ok(Some(SyncState {
            slot: stored.slot,
            publications: stored.publications,
            replica_version: Lsn(stored.replica_version),
            watermark,
        }))
    }

    /// The replicated tables.
    pub fn tables(&self) -> Result<Vec<TableSpec>> {
        let catalog = match self.txn.open_table(CATALOG) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for entry in catalog.iter()? {
            let (k, v) = entry?;
            let spec: TableSpec =
                serde_json::from_str(v.value()).map_err(|source| Error::Catalog {
                    table: k.value().to_owned(),
                    source,
                })?;
            out.push(spec);
        }
        Ok(out)
    }

    /// One table's schema.
    pub fn table(&self, name: &TableName) -> Result<TableSpec> {
        let catalog = self.txn.open_table(CATALOG)?;
        let key = storage_key(name);
        let entry = catalog
            .get(key.as_str())?
            .ok_or_else(|| Error::UnknownTable(name.clone()))?;
        serde_json::from_str(entry.value()).map_err(|source| Error::Catalog { table: key, source })
    }

    fn rows_of(
        &self,
        name: &TableName,
    ) -> Result<redb::ReadOnlyTable<&'static [u8], &'static [u8]>> {
        match self
            .txn
            .open_table(TableDefinition::<&[u8], &[u8]>::new(&rows_table(
                &storage_key(name),
            ))) {
            Ok(t) => Ok(t),
            Err(redb::TableError::TableDoesNotExist(_)) => Err(Error::UnknownTable(name.clone())),
            Err(e) => Err(e.into()),
        }
    }

    /// The row with this key (values in key order), with its version.
    pub fn get(&self, table: &TableName, key_values: &[Value]) -> Result<Option<(Row, Lsn)>> {
        let rows = self.rows_of(table)?;
        let pk = key::encode(key_values.iter());
        let raw = rows.get(pk.as_slice())?;
        raw.map(|r| decode_stored_row(table, r.value())).transpose()
    }

    /// The number of rows in a table.
    pub fn row_count(&self, table: &TableName) -> Result<u64> {
        Ok(self.rows_of(table)?.len()?)
    }

    /// All rows of a table in primary-key order.
    pub fn scan(&self, table: &TableName) -> Result<RowIter<'static>> {
        self.scan_key_range(table, Bound::Unbounded, Bound::Unbounded)
    }

    /// Rows whose encoded primary key lies in the given bounds (see [`crate::key`]), in
    /// primary-key order.
    pub fn scan_key_range(
        &self,
        table: &TableName,
        lower: Bound<Vec<u8>>,
        upper: Bound<Vec<u8>>,
    ) -> Result<RowIter<'static>> {
        self.scan_key_range_dir(table, lower, upper, false)
    }

    /// [`scan_key_range`](Self::scan_key_range), in descending key order when `reverse`.
    pub fn scan_key_range_dir(
        &self,
        table: &TableName,
        lower: Bound<Vec<u8>>,
        upper: Bound<Vec<u8>>,
        reverse: bool,
    ) -> Result<RowIter<'static>> {
        let rows = self.rows_of(table)?;
        let range = rows.range::<&[u8]>((
            lower.as_ref().map(Vec::as_slice),
            upper.as_ref().map(Vec::as_slice),
        ))?;
        let name = table.clone();
        let decode = move |entry: RangeEntry<&'static [u8]>| {
            let (_, v) = entry?;
            decode_stored_row(&name, v.value())
        };
        if reverse {
            Ok(Box::new(range.rev().map(decode)))
        } else {
            Ok(Box::new(range.map(decode)))
        }
    }

    /// Rows in the order of a secondary index, restricted to index keys that start with the
    /// encoding of `prefix` (values for the index's leading columns; empty for all rows).
    pub fn scan_index(
        &self,
        table: &TableName,
        index: &str,
        prefix: &[Value],
    ) -> Result<RowIter<'static>> {
        self.scan_index_dir(table, index, prefix, false)
    }

    /// [`scan_index`](Self::scan_index), in descending index order when `reverse`.
    pub fn scan_index_dir(
        &self,
        table: &TableName,
        index: &str,
        prefix: &[Value],
        reverse: bool,
    ) -> Result<RowIter<'static>> {
        let spec = self.table(table)?;
        self.scan_index_of(&spec, index, prefix, reverse)
    }

    /// [`scan_index_dir`](Self::scan_index_dir) with the table's schema at hand (as this
    /// snapshot has it), so that the catalog is not read again.
    pub fn scan_index_of(
        &self,
        spec: &TableSpec,
        index: &str,
        prefix: &[Value],
        reverse: bool,
    ) -> Result<RowIter<'static>> {
        let table = &spec.name;
        let idx = spec
            .indexes
            .iter()
            .find(|i| i.name == index)
            .ok_or_else(|| Error::UnknownIndex {
                table: table.clone(),
                index: index.to_owned(),
            })?;
        if mirrors_key(spec, idx) {
            // The index's order is the rows' own: a range of row keys.
            let start = key::encode(prefix.iter().take(idx.columns.len()));
            let upper = match key::prefix_end(&start) {
                Some(end) => Bound::Excluded(end),
                None => Bound::Unbounded,
            };
            return self.scan_key_range_dir(table, Bound::Included(start), upper, reverse);
        }
        let mut start = Vec::new();
        for (v, &(_, desc)) in prefix.iter().zip(&idx.columns) {
            if desc {
                key::encode_value_desc(&mut start, v);
            } else {
                key::encode_value(&mut start, v);
            }
        }
        let end = key::prefix_end(&start);
        let name = storage_key(table);
        let entries = self
            .txn
            .open_table(TableDefinition::<&[u8], ()>::new(&index_table(
                &name, index,
            )))?;
        let range = match &end {
            Some(end) => entries.range::<&[u8]>(start.as_slice()..end.as_slice())?,
            None => entries.range::<&[u8]>(start.as_slice()..)?,
        };
        let rows = self.rows_of(table)?;
        let descs: Vec<bool> = idx.columns.iter().map(|&(_, d)| d).collect();
        let tname = table.clone();
        let lookup = move |entry: RangeEntry<()>| {
            let (k, _) = entry?;
            let mut rest = k.value();
            for &desc in &descs {
                let len =
                    key::value_len(rest, desc).ok_or_else(|| Error::CorruptRow(tname.clone()))?;
                rest = rest
                    .get(len..)
                    .ok_or_else(|| Error::CorruptRow(tname.clone()))?;
            }
            let raw = rows
                .get(rest)?
                .ok_or_else(|| Error::CorruptRow(tname.clone()))?;
            decode_stored_row(&tname, raw.value())
        };
        if reverse {
            Ok(Box::new(range.rev().map(lookup)))
        } else {
            Ok(Box::new(range.map(lookup)))
        }
    }

    /// The version of the last change the change log holds for the row of `table` whose
    /// primary key values (in the table's key order) are `key`: one lookup, however long
    /// the log. None when the log has no entry for the row. An empty `key` gives the
    /// table's last table-wide entry (a truncation, or the table copied again), which
    /// changed every row of the table.
    pub fn last_change(&self, table: &TableName, key: &[Value]) -> Result<Option<Lsn>> {
        let rows = match self.txn.open_table(CHANGELOG_ROWS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut row_id = storage_key(table).into_bytes();
        row_id.push(0);
        row_id.extend_from_slice(&key::encode(key.iter()));
        Ok(rows.get(row_id.as_slice())?.map(|v| Lsn(v.value())))
    }

    /// The change log entries with versions in `(after, upto]`, in version order.
    pub fn changes(&self, after: Lsn, upto: Lsn) -> Result<Vec<ChangeLogEntry>> {
        let mut out = Vec::new();
        self.scan_changes(after, upto, |entry| {
            out.push(entry);
            true
        })?;
        Ok(out)
    }

    /// Hands the change log entries with versions in `(after, upto]` to `visit`, in version
    /// order, until it returns `false`; holds none of them (for spans too long to collect).
    pub fn scan_changes(
        &self,
        after: Lsn,
        upto: Lsn,
        mut visit: impl FnMut(ChangeLogEntry) -> bool,
    ) -> Result<()> {
        let log = match self.txn.open_table(CHANGELOG) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let start = (after.as_u64().saturating_add(1)).to_be_bytes();
        for entry in log.range::<&[u8]>(start.as_slice()..)? {
            let (k, op) = entry?;
            let k = k.value();
            let (version, row_id) = k.split_at_checked(8).ok_or(Error::State("changelog"))?;
            let version =
                u64::from_be_bytes(version.try_into().map_err(|_| Error::State("changelog"))?);
            if version > upto.as_u64() {
                break;
            }
            let sep = row_id
                .iter()
                .position(|&b| b == 0)
                .ok_or(Error::State("changelog"))?;
            let table = std::str::from_utf8(&row_id[..sep])
                .ok()
                .and_then(table_from_key)
                .ok_or(Error::State("changelog"))?;
            let pk = &row_id[sep + 1..];
            let key = if pk.is_empty() {
                None
            } else {
                Some(key::decode(pk).ok_or(Error::State("changelog"))?)
            };
            let op = ChangeOp::from_code(op.value()).ok_or(Error::State("changelog"))?;
            let entry = ChangeLogEntry {
                version: Lsn(version),
                table,
                key,
                op,
            };
            if !visit(entry) {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use zc_types::{ColumnSpec, IndexSpec, TypeKind};
    use zc_wal::SyncState;

    use super::*;

    fn spec() -> TableSpec {
        TableSpec {
            name: TableName::new("public", "t"),
            oid: 1,
            columns: vec![
                ColumnSpec::new("id", TypeKind::Int),
                ColumnSpec::new("v", TypeKind::Text),
                ColumnSpec::new("n", TypeKind::Int),
            ],
            key: vec![0],
            indexes: vec![IndexSpec {
                name: "t_n".into(),
                columns: vec![(2, true)],
                unique: false,
            }],
            copied_at: Lsn(10),
        }
    }

    fn row(id: i64, v: &str, n: i64) -> Row {
        vec![Value::Int(id), Value::Text(v.into()), Value::Int(n)]
    }

    fn batch(rows: Vec<Row>) -> RowBatch {
        RowBatch::try_from(rows).expect("rows of one width")
    }

    fn txn(lsn: u64, changes: Vec<Change>) -> Transaction {
        Transaction {
            commit_lsn: Lsn(lsn),
            end_lsn: Lsn(lsn + 8),
            commit_time_micros: 0,
            changes,
        }
    }

    /// A transaction that inserts one row (`row(id, tag, id)`) into `t`.
    fn insert_txn(t: &TableName, lsn: u64, id: i64, tag: &str) -> Transaction {
        txn(
            lsn,
            vec![Change::Insert {
                table: t.clone(),
                row: row(id, tag, id),
            }],
        )
    }

    fn index_order(r: &Replica) -> Vec<i64> {
        let t = TableName::new("public", "t");
        r.snapshot()
            .unwrap()
            .scan_index(&t, "t_n", &[])
            .unwrap()
            .map(|x| match x.unwrap().0[0] {
                Value::Int(i) => i,
                _ => -1,
            })
            .collect()
    }

    /// The state an initial sync at consistent point 10 stores.
    fn synced_state() -> SyncState {
        SyncState {
            slot: "s".into(),
            publications: vec!["p".into()],
            replica_version: Lsn(10),
            watermark: Watermark {
                commit_lsn: Lsn(9),
                ack_lsn: Lsn(10),
            },
        }
    }

    /// A table's index larger than one merge chunk is written in chunks while another table
    /// copies: every entry once, in index order, and the other table's rows are all there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_index_written_in_chunks_beside_another_tables_copy_is_complete() {
        let dir = tempfile::tempdir().unwrap();
        let r = Replica::open(dir.path().join("r.redb")).unwrap();
        let t = spec();
        let mut u = spec();
        u.name = TableName::new("public", "u");
        r.begin_initial_sync(Lsn(9), vec![Arc::new(t.clone()), Arc::new(u.clone())])
            .await
            .unwrap();
        let n = (index_build::MERGE_CHUNK * 3 + 123) as i64;
        // n is a permutation of the ids, unrelated to their order.
        let n_of = |id: i64| (id * 7919) % n;
        for ids in (0..n).collect::<Vec<_>>().chunks(5_000) {
            let rows = ids.iter().map(|&id| row(id, "t", n_of(id))).collect();
            r.copy_rows(&t.name, batch(rows)).await.unwrap();
        }
        let copy_u = async {
            for ids in (0..20_000i64).collect::<Vec<_>>().chunks(1_000) {
                let rows = ids.iter().map(|&id| row(id, "u", id)).collect();
                r.copy_rows(&u.name, batch(rows)).await.unwrap();
            }
            r.copied_table(&u.name).await.unwrap();
        };
        let (indexed, ()) = tokio::join!(r.copied_table(&t.name), copy_u);
        indexed.unwrap();
        r.finish_initial_sync(synced_state()).await.unwrap();
        let mut expected: Vec<i64> = (0..n).collect();
        expected.sort_by_key(|&id| std::cmp::Reverse(n_of(id)));
        assert_eq!(index_order(&r), expected);
        assert_eq!(r.snapshot().unwrap().row_count(&u.name).unwrap(), 20_000);
        let runs = std::fs::read_dir(dir.path().join("r.redb.index-build"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(runs, 0, "no run file is left");
    }

    /// Tables copied at once, one of them by two workers (parts of its heap), with rows out
    /// of key order and commits between batches (the unit tests' commit size is small): the
    /// writes to different tables share the copy's write transaction, and every table ends
    /// with each of its rows once and its index complete.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tables_copied_at_once_are_each_complete() {
        use rand::SeedableRng;
        use rand::seq::SliceRandom;
        let dir = tempfile::tempdir().unwrap();
        let r = Replica::open(dir.path().join("r.redb")).unwrap();
        let specs: Vec<TableSpec> = (0..4)
            .map(|i| {
                let mut s = spec();
                s.name = TableName::new("public", format!("t{i}"));
                s
            })
            .collect();
        r.begin_initial_sync(Lsn(9), specs.iter().cloned().map(Arc::new).collect())
            .await
            .unwrap();
        let n = 30_000i64;
        let n_of = move |id: i64| (id * 7919) % n;
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        // Table i's rows: in key order, except that table 1's come in no order at all and
        // table 3's in windows of 50 shuffled; table 2 is copied by two workers at once.
        let mut parts: Vec<(TableName, Vec<i64>)> = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            let mut ids: Vec<i64> = (0..n).collect();
            match i {
                1 => ids.shuffle(&mut rng),
                3 => ids.chunks_mut(50).for_each(|w| w.shuffle(&mut rng)),
                _ => {}
            }
            if i == 2 {
                let (a, b) = ids.split_at(ids.len() / 2);
                parts.push((s.name.clone(), a.to_vec()));
                parts.push((s.name.clone(), b.to_vec()));
            } else {
                parts.push((s.name.clone(), ids));
            }
        }
        let copy_part = |(name, ids): (TableName, Vec<i64>)| {
            let r = r.clone();
            async move {
                for chunk in ids.chunks(1_000) {
                    let rows = chunk.iter().map(|&id| row(id, "v", n_of(id))).collect();
                    r.copy_rows(&name, batch(rows)).await.unwrap();
                }
                name
            }
        };
        let workers: Vec<_> = parts
            .into_iter()
            .map(|p| zc_types::task::spawn_named("copy part", copy_part(p)))
            .collect();
        let mut done = std::collections::BTreeSet::new();
        for worker in workers {
            done.insert(worker.await.unwrap());
        }
        let ends: Vec<_> =
            done.into_iter()
                .map(|name| {
                    let r = r.clone();
                    zc_types::task::spawn_named("copied table", async move {
                        r.copied_table(&name).await
                    })
                })
                .collect();
        for end in ends {
            end.await.unwrap().unwrap();
        }
        r.finish_initial_sync(synced_state()).await.unwrap();
        let mut expected: Vec<Row> = (0..n).map(|id| row(id, "v", n_of(id))).collect();
        expected.sort_by_key(|row| match row[2] {
            Value::Int(n) => std::cmp::Reverse(n),
            _ => std::cmp::Reverse(-1),
        });
        let snap = r.snapshot().unwrap();
        for s in &specs {
            assert_eq!(snap.row_count(&s.name).unwrap(), n as u64, "{}", s.name);
            let indexed: Vec<Row> = snap
                .scan_index(&s.name, "t_n", &[])
                .unwrap()
                .map(|x| x.unwrap().0)
                .collect();
            assert!(indexed == expected, "{}'s index", s.name);
        }
    }

    /// Rows copied out of key order (slightly, as heap pages hold them, and not at all, as
    /// random ids are) are all stored, each once, with one index entry each; a row delivered
    /// again in a later batch replaces the earlier one, its index entry too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_copied_out_of_key_order_are_stored_once_with_their_index_entries() {
        use rand::SeedableRng;
        use rand::seq::SliceRandom;
        let (_dir, r, t) = syncing_replica().await;
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let n = (index_build::MERGE_CHUNK * 2) as i64;
        // The first half nearly in order: windows of 40 ids shuffled, across batch ends.
        let mut ids: Vec<i64> = (0..n / 2).collect();
        for window in ids.chunks_mut(40) {
            window.shuffle(&mut rng);
        }
        // The second half in no order at all.
        let mut random: Vec<i64> = (n / 2..n).collect();
        random.shuffle(&mut rng);
        ids.extend(random);
        let n_of = |id: i64| (id * 7919) % n;
        let mut batches: Vec<Vec<Row>> = ids
            .chunks(1_000)
            .map(|c| c.iter().map(|&id| row(id, "v", n_of(id))).collect())
            .collect();
        // Delivered again, later: ids from both halves, with other values.
        let again = [3, n / 4, n / 2 + 5, n - 1];
        batches.push(again.iter().map(|&id| row(id, "again", n + id)).collect());
        for rows in batches {
            r.copy_rows(&t, batch(rows)).await.unwrap();
        }
        r.copied_table(&t).await.unwrap();
        r.finish_initial_sync(synced_state()).await.unwrap();
        let expected: Vec<Row> = (0..n)
            .map(|id| {
                if again.contains(&id) {
                    row(id, "again", n + id)
                } else {
                    row(id, "v", n_of(id))
                }
            })
            .collect();
        let stored: Vec<Row> = r
            .snapshot()
            .unwrap()
            .scan(&t)
            .unwrap()
            .map(|x| x.unwrap().0)
            .collect();
        assert_eq!(stored.len(), expected.len());
        assert!(stored == expected, "rows differ");
        let mut by_n: Vec<(i64, i64)> = expected
            .iter()
            .map(|row| match (&row[0], &row[2]) {
                (Value::Int(id), Value::Int(n)) => (*n, *id),
                _ => (-1, -1),
            })
            .collect();
        by_n.sort_by(|a, b| b.cmp(a));
        let index: Vec<i64> = index_order(&r);
        assert_eq!(index.len(), by_n.len(), "one index entry per row");
        assert!(
            index == by_n.iter().map(|&(_, id)| id).collect::<Vec<_>>(),
            "index order"
        );
    }

    /// A replica in a temporary directory with an initial sync of [`spec`] begun (version 9).
    async fn syncing_replica() -> (tempfile::TempDir, Replica, TableName) {
        let dir = tempfile::tempdir().unwrap();
        let r = Replica::open(dir.path().join("r.redb")).unwrap();
        r.begin_initial_sync(Lsn(9), vec![Arc::new(spec())])
            .await
            .unwrap();
        (dir, r, TableName::new("public", "t"))
    }

    /// The finish of an initial sync is seen at once but left for the next flush (the
    /// stream's first) to make durable, as a deferred transaction is; a replica closed
    /// before that flush still stores it (redb's close makes pending commits durable).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_finished_initial_sync_is_made_durable_by_the_next_flush() {
        let (dir, r, t) = syncing_replica().await;
        r.copy_rows(&t, batch(vec![row(1, "a", 1), row(2, "b", 2)]))
            .await
            .unwrap();
        r.copied_table(&t).await.unwrap();
        r.finish_initial_sync(synced_state()).await.unwrap();
        assert!(r.sync_state().await.unwrap().is_some(), "seen at once");
        assert!(
            r.inner.deferred.load(Ordering::Acquire),
            "left for the next flush"
        );
        r.flush().await.unwrap();
        assert!(!r.inner.deferred.load(Ordering::Acquire), "durable");
        drop(r);
        let r = Replica::open(dir.path().join("r.redb")).unwrap();
        let state = r.sync_state().await.unwrap().expect("stored");
        assert_eq!(state.watermark, synced_state().watermark);
        assert_eq!(r.snapshot().unwrap().row_count(&t).unwrap(), 2);
    }

    /// `apply_deferred` queues: a burst is applied in order, one version each, and a flush
    /// (or any other write) comes after everything queued before it. A transaction that
    /// fails drops those queued after it, the next call reports the error, and the same
    /// transactions sent again (as the slot does) apply.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_transactions_apply_in_order_and_a_failure_drops_the_rest() {
        let (_dir, r, t) = syncing_replica().await;
        r.finish_initial_sync(synced_state()).await.unwrap();
        let insert = |lsn: u64, id: i64| insert_txn(&t, lsn, id, "q");
        let mut versions = r.subscribe();
        for i in 0..200 {
            r.apply_deferred(insert(100 + 10 * i, 1000 + i as i64))
                .await
                .unwrap();
        }
        r.flush().await.unwrap();
        let snap = r.snapshot().unwrap();
        assert_eq!(snap.version().unwrap(), Lsn(100 + 10 * 199));
        for i in 0..200u64 {
            let (_, version) = snap
                .get(&t, &[Value::Int(1000 + i as i64)])
                .unwrap()
                .unwrap();
            assert_eq!(version, Lsn(100 + 10 * i), "row {i} has its own commit");
        }
        assert_eq!(*versions.borrow_and_update(), Lsn(100 + 10 * 199));
        assert!(!r.inner.deferred.load(Ordering::Acquire), "flushed");

        // A transaction on a table the replica does not hold fails; the two queued after
        // it are dropped, not applied out of order.
        let unknown = txn(
            5000,
            vec![Change::Insert {
                table: TableName::new("public", "nope"),
                row: row(1, "x", 1),
            }],
        );
        r.apply_deferred(unknown).await.unwrap();
        // The error comes back from whichever call follows the failure (as the stream
        // does, nothing more is sent after it).
        let mut reported = None;
        for next in [insert(5010, 5010), insert(5020, 5020)] {
            if let Err(e) = r.apply_deferred(next).await {
                reported = Some(e);
                break;
            }
        }
        let err = match reported {
            Some(e) => e,
            None => r
                .flush()
                .await
                .expect_err("the failed transaction is reported"),
        };
        assert!(err.to_string().contains("nope"), "{err}");
        let snap = r.snapshot().unwrap();
        assert_eq!(snap.version().unwrap(), Lsn(100 + 10 * 199));
        assert!(snap.get(&t, &[Value::Int(5010)]).unwrap().is_none());
        assert!(snap.get(&t, &[Value::Int(5020)]).unwrap().is_none());
        // Reported once: the stream starts over and the slot sends them again.
        r.flush().await.unwrap();
        r.apply_deferred(insert(5010, 5010)).await.unwrap();
        r.apply_deferred(insert(5020, 5020)).await.unwrap();
        r.flush().await.unwrap();
        let snap = r.snapshot().unwrap();
        assert_eq!(snap.version().unwrap(), Lsn(5020));
        assert!(snap.get(&t, &[Value::Int(5010)]).unwrap().is_some());
    }

    #[tokio::test]
    async fn queued_transactions_share_a_commit_and_fail_together() {
        let (_dir, r, t) = syncing_replica().await;
        r.finish_initial_sync(synced_state()).await.unwrap();
        let insert = |lsn: u64, id: i64| insert_txn(&t, lsn, id, "g");
        let unknown = |lsn: u64| {
            txn(
                lsn,
                vec![Change::Insert {
                    table: TableName::new("public", "nope"),
                    row: row(1, "x", 1),
                }],
            )
        };
        // What a drain finds queued (the writer was busy while they arrived).
        let drain = |txns: Vec<Transaction>| {
            {
                let mut q = r.inner.queued.lock().unwrap();
                q.txns.extend(txns);
                q.draining = true;
            }
            let drained = r.inner.drain_queued();
            let q = r.inner.queued.lock().unwrap();
            assert!(q.txns.is_empty() && !q.draining, "the queue is left empty");
            drained
        };
        let before = r.snapshot().unwrap().version().unwrap();

        // Three transactions, one commit: each keeps its own version.
        drain(vec![insert(200, 1), insert(210, 2), insert(220, 3)]).unwrap();
        let snap = r.snapshot().unwrap();
        assert_eq!(snap.version().unwrap(), Lsn(220));
        let logged: Vec<(Lsn, Option<Vec<Value>>)> = snap
            .changes(before, Lsn(220))
            .unwrap()
            .into_iter()
            .map(|c| (c.version, c.key))
            .collect();
        assert_eq!(
            logged,
            vec![
                (Lsn(200), Some(vec![Value::Int(1)])),
                (Lsn(210), Some(vec![Value::Int(2)])),
                (Lsn(220), Some(vec![Value::Int(3)])),
            ]
        );
        assert_eq!(
            snap.get(&t, &[Value::Int(2)]).unwrap().map(|(_, v)| v),
            Some(Lsn(210))
        );

        // A group with a failing transaction is applied not at all: the stream resumes from
        // the watermark before it, and the slot sends the whole group again.
        let err = drain(vec![insert(300, 10), insert(310, 11), unknown(320)]).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let snap = r.snapshot().unwrap();
        assert_eq!(snap.version().unwrap(), Lsn(220));
        assert!(snap.get(&t, &[Value::Int(10)]).unwrap().is_none());
        assert_eq!(snap.watermark().unwrap().unwrap().commit_lsn, Lsn(220));

        // A group ends before the transaction that would take it past GROUP_CHANGES: the
        // large one commits alone, the failure after it takes only its own group.
        let large = txn(
            400,
            (0..GROUP_CHANGES as i64)
                .map(|i| Change::Insert {
                    table: t.clone(),
                    row: row(100_000 + i, "l", i),
                })
                .collect(),
        );
        let err = drain(vec![large, insert(410, 20), unknown(420)]).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let snap = r.snapshot().unwrap();
        assert_eq!(snap.version().unwrap(), Lsn(400));
        assert_eq!(snap.row_count(&t).unwrap(), 3 + GROUP_CHANGES as u64);
        assert!(snap.get(&t, &[Value::Int(20)]).unwrap().is_none());

        // Transactions at or below the watermark (sent again) are skipped inside a group.
        drain(vec![insert(400, 30), insert(430, 31)]).unwrap();
        let snap = r.snapshot().unwrap();
        assert_eq!(snap.version().unwrap(), Lsn(430));
        assert!(snap.get(&t, &[Value::Int(30)]).unwrap().is_none());
        assert!(snap.get(&t, &[Value::Int(31)]).unwrap().is_some());
    }

    #[tokio::test]
    async fn replica_apply_is_atomic_and_idempotent() {
        let (dir, r, t) = syncing_replica().await;
        assert!(
            r.sync_state().await.unwrap().is_none(),
            "no state while syncing"
        );
        r.copy_rows(&t, batch(vec![row(1, "a", 5), row(2, "b", 7)]))
            .await
            .unwrap();
        let state = synced_state();
        r.finish_initial_sync(state.clone()).await.unwrap();
        assert_eq!(r.sync_state().await.unwrap(), Some(state));
        assert_eq!(index_order(&r), vec![2, 1], "descending index on n");

        // Insert, update with a key change, partial update (unchanged TOAST), delete.
        let t1 = txn(
            20,
            vec![
                Change::Insert {
                    table: t.clone(),
                    row: row(3, "c", 1),
                },
                Change::Update {
                    table: t.clone(),
                    old_key: Some(vec![Value::Int(1)]),
                    new: vec![
                        Some(Value::Int(10)),
                        Some(Value::Text("a2".into())),
                        Some(Value::Int(9)),
                    ],
                },
                Change::Update {
                    table: t.clone(),
                    old_key: None,
                    new: vec![Some(Value::Int(2)), None, Some(Value::Int(0))],
                },
            ],
        );
        r.apply(t1.clone()).await.unwrap();
        let snap = r.snapshot().unwrap();
        assert!(
            snap.get(&t, &[Value::Int(1)]).unwrap().is_none(),
            "old key gone"
        );
        let (moved, version) = snap.get(&t, &[Value::Int(10)]).unwrap().unwrap();
        assert_eq!((moved, version), (row(10, "a2", 9), Lsn(20)));
        assert_eq!(
            snap.get(&t, &[Value::Int(2)]).unwrap().unwrap().0,
            row(2, "b", 0),
            "TOASTed value kept"
        );
        assert_eq!(index_order(&r), vec![10, 3, 2]);
        let log = snap.changes(Lsn(9), Lsn(20)).unwrap();
        let ops: Vec<(Option<Vec<Value>>, ChangeOp)> =
            log.iter().map(|e| (e.key.clone(), e.op)).collect();
        assert_eq!(ops.len(), 4);
        assert!(ops.contains(&(Some(vec![Value::Int(1)]), ChangeOp::Delete)));
        assert!(ops.contains(&(Some(vec![Value::Int(10)]), ChangeOp::Set)));
        // Each row's last change, by key: the copied row 1 moved away (a delete), row 10
        // came, row 3 was inserted; row 99 never changed.
        for (k, last) in [
            (1, Some(Lsn(20))),
            (10, Some(Lsn(20))),
            (3, Some(Lsn(20))),
            (99, None),
        ] {
            assert_eq!(
                snap.last_change(&t, &[Value::Int(k)]).unwrap(),
                last,
                "row {k}"
            );
        }
        assert_eq!(
            snap.last_change(&t, &[]).unwrap(),
            None,
            "no table-wide change"
        );
        drop(snap);

        // The same transaction again, and an older one: nothing changes.
        r.apply(t1).await.unwrap();
        r.apply(txn(
            15,
            vec![Change::Delete {
                table: t.clone(),
                key: vec![Value::Int(10)],
            }],
        ))
        .await
        .unwrap();
        assert!(
            r.snapshot()
                .unwrap()
                .get(&t, &[Value::Int(10)])
                .unwrap()
                .is_some()
        );
        assert_eq!(r.snapshot().unwrap().version().unwrap(), Lsn(20));

        // A failing transaction (a row of the wrong shape) leaves nothing behind.
        let bad = txn(
            30,
            vec![
                Change::Delete {
                    table: t.clone(),
                    key: vec![Value::Int(10)],
                },
                Change::Insert {
                    table: t.clone(),
                    row: vec![Value::Int(99)],
                },
            ],
        );
        assert!(r.apply(bad).await.is_err());
        assert!(
            r.snapshot()
                .unwrap()
                .get(&t, &[Value::Int(10)])
                .unwrap()
                .is_some(),
            "rolled back"
        );
        assert_eq!(r.snapshot().unwrap().version().unwrap(), Lsn(20));

        // Truncate empties rows and indexes and logs a table-wide op; the change log keeps
        // one entry per row (the latest).
        r.apply(txn(
            40,
            vec![Change::Truncate {
                tables: vec![t.clone()],
            }],
        ))
        .await
        .unwrap();
        assert_eq!(r.snapshot().unwrap().row_count(&t).unwrap(), 0);
        assert!(index_order(&r).is_empty());
        let log = r.snapshot().unwrap().changes(Lsn(20), Lsn(40)).unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!((log[0].key.clone(), log[0].op), (None, ChangeOp::Truncate));
        assert_eq!(
            r.snapshot().unwrap().last_change(&t, &[]).unwrap(),
            Some(Lsn(40))
        );

        // Reopening keeps everything.
        drop(r);
        let r = Replica::open(dir.path().join("r.redb")).unwrap();
        assert_eq!(r.snapshot().unwrap().version().unwrap(), Lsn(40));
        assert_eq!(*r.subscribe().borrow(), Lsn(40));
    }

    #[tokio::test]
    async fn table_resync_swaps_in_atomically() {
        let (_dir, r, t) = syncing_replica().await;
        r.copy_rows(&t, batch(vec![row(1, "a", 5)])).await.unwrap();
        r.finish_initial_sync(synced_state()).await.unwrap();
        let mut new_spec = spec();
        new_spec.copied_at = Lsn(50);
        r.begin_table_resync(Arc::new(new_spec)).await.unwrap();
        r.copy_rows(&t, batch(vec![row(7, "x", 1), row(8, "y", 2)]))
            .await
            .unwrap();
        // Readers still see the old table until the swap.
        assert_eq!(r.snapshot().unwrap().row_count(&t).unwrap(), 1);
        r.finish_table_resync(&t).await.unwrap();
        let snap = r.snapshot().unwrap();
        assert_eq!(snap.row_count(&t).unwrap(), 2);
        assert_eq!(snap.table(&t).unwrap().copied_at, Lsn(50));
        let mark = snap.watermark().unwrap().unwrap();
        assert_eq!(
            mark,
            Watermark {
                commit_lsn: Lsn(10),
                ack_lsn: Lsn(10)
            },
            "own version, same ack"
        );
        let log = snap.changes(Lsn(9), Lsn(10)).unwrap();
        assert_eq!((log[0].key.clone(), log[0].op), (None, ChangeOp::Reset));
        assert_eq!(index_order(&r), vec![8, 7]);
    }

    /// A copy writes its secondary indexes when it finishes: a row re-delivered by a later
    /// batch keeps only its new index entry, and an index over the key (the primary key's own)
    /// is served by the rows instead of being stored.
    #[tokio::test]
    async fn copied_indexes_are_written_at_the_end_and_key_indexes_are_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let r = Replica::open(dir.path().join("r.redb")).unwrap();
        let t = TableName::new("public", "t");
        let mut with_pkey = spec();
        with_pkey.indexes.push(IndexSpec {
            name: "t_pkey".into(),
            columns: vec![(0, false)],
            unique: true,
        });
        r.begin_initial_sync(Lsn(9), vec![Arc::new(with_pkey)])
            .await
            .unwrap();
        r.copy_rows(&t, batch(vec![row(3, "c", 1), row(1, "a", 5)]))
            .await
            .unwrap();
        // Out of order (2 < 3) and delivered again (3): the batch leaves the appending path.
        r.copy_rows(&t, batch(vec![row(2, "b", 7), row(3, "c2", 9)]))
            .await
            .unwrap();
        // In order again: appended at the table's end.
        r.copy_rows(&t, batch(vec![row(4, "d", 3), row(5, "e", 2)]))
            .await
            .unwrap();
        r.finish_initial_sync(synced_state()).await.unwrap();
        assert_eq!(
            index_order(&r),
            vec![3, 2, 1, 4, 5],
            "row 3's old entry (n=1) is gone"
        );
        let snap = r.snapshot().unwrap();
        let ids = |prefix: &[Value], reverse: bool| -> Vec<i64> {
            snap.scan_index_dir(&t, "t_pkey", prefix, reverse)
                .unwrap()
                .map(|x| match x.unwrap().0[0] {
                    Value::Int(i) => i,
                    _ => -1,
                })
                .collect()
        };
        assert_eq!(ids(&[], false), vec![1, 2, 3, 4, 5]);
        assert_eq!(ids(&[], true), vec![5, 4, 3, 2, 1]);
        assert_eq!(ids(&[Value::Int(2)], false), vec![2]);
        let third: Vec<Row> = snap
            .scan_index_dir(&t, "t_pkey", &[Value::Int(3)], false)
            .unwrap()
            .map(|x| x.unwrap().0)
            .collect();
        assert_eq!(third, vec![row(3, "c2", 9)], "the later delivery wins");
        let stored: Vec<String> = snap
            .txn
            .list_tables()
            .unwrap()
            .map(|h| redb::TableHandle::name(&h).to_owned())
            .collect();
        assert!(
            stored.iter().any(|n| n.ends_with(":t_n"))
                && !stored.iter().any(|n| n.contains("t_pkey")),
            "only the secondary index is stored: {stored:?}"
        );
        assert!(
            !dir.path().join("r.redb.index-build").exists(),
            "no run files are left"
        );
    }

    /// A copied batch is encoded into one buffer: every row comes back whole, with the
    /// copy's version, whatever its values (a zero byte in text, NULL, long text), and of
    /// two rows with the same key in one batch the later one is stored.
    #[tokio::test]
    async fn a_copied_batch_stores_each_row_whole_and_the_last_of_equal_keys() {
        let (_dir, r, t) = syncing_replica().await;
        let long = "x".repeat(10_000);
        let rows = vec![
            row(3, "with \0 zero", 1),
            row(1, "first", 5),
            vec![Value::Int(2), Value::Null, Value::Null],
            row(1, "second", 6),
            row(4, &long, 2),
        ];
        r.copy_rows(&t, batch(rows)).await.unwrap();
        r.finish_initial_sync(synced_state()).await.unwrap();
        let snap = r.snapshot().unwrap();
        let stored: Vec<(Row, Lsn)> = snap.scan(&t).unwrap().map(|x| x.unwrap()).collect();
        let expected = vec![
            row(1, "second", 6),
            vec![Value::Int(2), Value::Null, Value::Null],
            row(3, "with \0 zero", 1),
            row(4, &long, 2),
        ];
        assert_eq!(
            stored
                .iter()
                .map(|(row, _)| row.clone())
                .collect::<Vec<_>>(),
            expected
        );
        assert!(stored.iter().all(|(_, v)| *v == Lsn(9)), "{stored:?}");
        assert_eq!(index_order(&r), vec![1, 4, 3, 2], "one index entry per row");
    }

    #[tokio::test]
    async fn a_copied_tables_indexes_are_written_before_the_copy_finishes() {
        let (_dir, r, t) = syncing_replica().await;
        r.copy_rows(&t, batch(vec![row(2, "b", 7), row(1, "a", 5)]))
            .await
            .unwrap();
        r.copy_rows(&t, batch(vec![row(3, "c", 1)])).await.unwrap();
        // The batches may still be being written: the index waits for them.
        r.copied_table(&t).await.unwrap();
        assert_eq!(
            index_order(&r),
            vec![2, 1, 3],
            "by n descending, before the finish"
        );
        r.finish_initial_sync(synced_state()).await.unwrap();
        assert_eq!(index_order(&r), vec![2, 1, 3], "each entry once");
        // A copy that fails (a row of the wrong shape) is reported, and the next copy of the
        // same replica starts clean.
        r.begin_initial_sync(Lsn(9), vec![Arc::new(spec())])
            .await
            .unwrap();
        assert!(
            r.copy_rows(&t, batch(vec![vec![Value::Int(1)]]))
                .await
                .is_err()
        );
        r.begin_initial_sync(Lsn(9), vec![Arc::new(spec())])
            .await
            .unwrap();
        r.copy_rows(&t, batch(vec![row(4, "d", 2)])).await.unwrap();
        r.copied_table(&t).await.unwrap();
        r.finish_initial_sync(synced_state()).await.unwrap();
        assert_eq!(index_order(&r), vec![4]);
    }
}

//! Where replicated data goes: the [`Destination`] trait.

use std::future::Future;
use std::sync::Arc;

use zc_types::{Lsn, RowBatch, TableName, TableSpec};

use crate::change::Transaction;

/// What a destination has durably stored: where replication resumes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    /// The commit LSN of the last applied transaction (or the initial sync's consistent
    /// point). Transactions with a commit LSN at or below it are skipped on resume.
    pub commit_lsn: Lsn,
    /// The LSN acknowledged to PostgreSQL for it (the commit's end LSN).
    pub ack_lsn: Lsn,
}

/// The durable state a destination reports when replication starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncState {
    /// The replication slot the data came from.
    pub slot: String,
    /// The publications that were replicated (sorted).
    pub publications: Vec<String>,
    /// The consistent point of the initial sync (Zero's replica version).
    pub replica_version: Lsn,
    /// The resume point.
    pub watermark: Watermark,
}

/// The receiving end of replication: a store that applies the initial copy and then each
/// transaction atomically and durably.
///
/// Contract:
/// - `apply` MUST make the whole transaction and the new watermark durable before its future
///   resolves: zc-wal acknowledges `end_lsn` to PostgreSQL right after. It MUST be
///   idempotent for transactions it has already applied (zc-wal skips them, but a
///   destination must not corrupt itself if handed one again).
/// - `apply_deferred` applies a transaction as atomically as `apply` (readers may see it at
///   once) but need not make it durable; `flush` makes everything applied so far durable.
///   It may return before the transaction is applied (queued for a writer, in order); an
///   error applying it is then returned by a later `apply_deferred` or `flush`, and `flush`
///   covers every transaction passed to `apply_deferred` before it.
///   zc-wal acknowledges nothing a deferred transaction covers until a later `apply` or a
///   `flush` has resolved. The stored (durable) watermark MUST be that of the last durable
///   commit: after a crash the destination may be behind the last deferred transaction, never
///   ahead of what it reports, and never torn inside a transaction; `sync_state` then reports
///   the older watermark and the slot sends the lost transactions again. A durable commit
///   MUST also make every earlier deferred one durable (commits become durable in order).
///   The defaults (`apply_deferred` = `apply`, `flush` = nothing) satisfy this for a
///   destination that is always durable.
/// - `sync_state` may report the watermark of a deferred transaction (it describes what
///   readers see); zc-wal calls `flush` before it resumes streaming from it.
/// - The initial sync is `begin_initial_sync`, any number of `copy_rows` calls (possibly from
///   several tasks at once), then `finish_initial_sync`. Until `finish_initial_sync` resolves,
///   `sync_state` MUST report `None` (an interrupted initial sync is started over).
pub trait Destination: Send + Sync + 'static {
    /// The destination's error type.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The durable state, or `None` when no completed initial sync is stored.
    fn sync_state(&self) -> impl Future<Output = Result<Option<SyncState>, Self::Error>> + Send;

    /// The tables the destination holds (their schemas as last replicated).
    fn tables(&self) -> impl Future<Output = Result<Vec<Arc<TableSpec>>, Self::Error>> + Send;

    /// Discards everything and prepares empty tables for a fresh initial sync whose rows
    /// are at version `replica_version` (the slot's consistent point).
    fn begin_initial_sync(
        &self,
        replica_version: Lsn,
        tables: Vec<Arc<TableSpec>>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Stores a batch of copied rows of one table (row order does not matter), each row of
    /// the table's width. A destination may return before the batch is stored; an error
    /// storing it is then returned by a later call of the same copy (`copy_rows`,
    /// `copied_table` or the finish).
    fn copy_rows(
        &self,
        table: &TableName,
        rows: RowBatch,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Says that every row of `table` has been passed to `copy_rows` while other tables may
    /// still be copying: a destination can finish that table's work (such as building its
    /// indexes) now instead of at the end. Does nothing by default.
    fn copied_table(
        &self,
        table: &TableName,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = table;
        async { Ok(()) }
    }

    /// Completes the initial sync with its state, possibly not yet durably (as
    /// [`apply_deferred`](Self::apply_deferred)): zc-wal calls [`flush`](Self::flush) before
    /// it streams from it. After a crash before that, `sync_state` MUST report `None` (the
    /// initial sync starts over) or the completed state, never a partial copy.
    fn finish_initial_sync(
        &self,
        state: SyncState,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Starts replacing one table (after its schema changed upstream) with a fresh copy:
    /// until [`finish_table_resync`](Self::finish_table_resync), `copy_rows` for this table
    /// MUST go to a staging area, and the table as readers see it MUST stay as it was.
    /// `spec.copied_at` is the LSN of the snapshot of the copy.
    fn begin_table_resync(
        &self,
        spec: Arc<TableSpec>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Atomically and durably swaps the staged copy in (schema and rows), as a change of its
    /// own that readers can see, without moving the acknowledged position.
    fn finish_table_resync(
        &self,
        table: &TableName,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Applies one transaction atomically and durably.
    fn apply(&self, txn: Transaction) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Applies one transaction atomically, as [`apply`](Self::apply) does, but possibly not
    /// yet durably: a later `apply` or [`flush`](Self::flush) makes it durable. zc-wal applies
    /// every streamed transaction this way and flushes once no more of the stream is waiting
    /// (before it acknowledges anything), so that readers see a transaction without waiting
    /// for the disk and one fsync covers a burst of upstream transactions. It may be committed
    /// together with transactions deferred before or after it (readers then see their states
    /// only after the last of them), never in part. The default applies it durably.
    fn apply_deferred(
        &self,
        txn: Transaction,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.apply(txn)
    }

    /// Makes every transaction applied so far durable (with its watermark). The default does
    /// nothing (for destinations whose `apply_deferred` is durable).
    fn flush(&self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        std::future::ready(Ok(()))
    }
}

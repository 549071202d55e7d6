//! Where replicated data goes: the [`Destination`] trait.

use std::future::Future;
use std::sync::Arc;

use zc_types::{Lsn, Row, TableName, TableSpec};

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

    /// Stores a batch of copied rows of one table (row order does not matter).
    fn copy_rows(
        &self,
        table: &TableName,
        rows: Vec<Row>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Completes the initial sync durably with its state.
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
}

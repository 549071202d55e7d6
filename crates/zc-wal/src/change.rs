//! The typed changes zc-wal hands to a [`Destination`](crate::Destination).

use std::sync::Arc;

use zc_types::{Lsn, Row, TableName, TableSpec, Value};

/// One upstream transaction, from Begin to Commit, decoded and typed.
///
/// A destination applies it atomically: either every change and the new watermark are
/// durable, or none is.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    /// The LSN of the commit record: the transaction's version.
    pub commit_lsn: Lsn,
    /// The LSN just past the commit record: what is acknowledged to PostgreSQL.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 (PostgreSQL's epoch).
    pub commit_time_micros: i64,
    /// The changes, in upstream order.
    pub changes: Vec<Change>,
}

/// One change inside a transaction.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Change {
    /// A row was inserted (apply as an upsert: replays after a crash are idempotent).
    Insert {
        /// The table.
        table: TableName,
        /// The full new row, in the table's column order.
        row: Row,
    },
    /// A row was updated.
    Update {
        /// The table.
        table: TableName,
        /// The old key values (in key order) when the key changed or the table has
        /// REPLICA IDENTITY FULL; `None` when the key is unchanged.
        old_key: Option<Row>,
        /// The new row; `None` for an unchanged TOASTed value that keeps its old value.
        new: Vec<Option<Value>>,
    },
    /// A row was deleted.
    Delete {
        /// The table.
        table: TableName,
        /// The deleted row's key values, in key order.
        key: Row,
    },
    /// Tables were truncated.
    Truncate {
        /// The truncated tables.
        tables: Vec<TableName>,
    },
    /// A table appeared (created upstream, or newly published) with this schema.
    CreateTable(Arc<TableSpec>),
    /// A table was dropped upstream or left the publications: its rows and indexes go.
    DropTable(TableName),
    /// A logical message (`pg_logical_emit_message`) emitted in this transaction.
    Message {
        /// The message prefix.
        prefix: String,
        /// The message content.
        content: Vec<u8>,
    },
}

impl Change {
    /// The table the change touches, for row changes.
    pub fn table(&self) -> Option<&TableName> {
        match self {
            Change::Insert { table, .. }
            | Change::Update { table, .. }
            | Change::Delete { table, .. } => Some(table),
            Change::CreateTable(spec) => Some(&spec.name),
            Change::DropTable(name) => Some(name),
            Change::Truncate { .. } | Change::Message { .. } => None,
        }
    }
}

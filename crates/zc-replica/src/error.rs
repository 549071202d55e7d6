use zc_types::TableName;

/// Errors of the replica.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The replica file could not be opened or created.
    #[error("could not open replica file {path}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: redb::DatabaseError,
    },
    /// A redb operation failed.
    #[error("replica storage operation failed")]
    Storage(#[from] redb::Error),
    /// A change named a table the replica does not have.
    #[error("table {0} is not in the replica")]
    UnknownTable(TableName),
    /// An index name that the table does not have.
    #[error("table {table} has no index \"{index}\"")]
    UnknownIndex {
        /// The table.
        table: TableName,
        /// The index asked for.
        index: String,
    },
    /// A catalog entry could not be read.
    #[error("replica catalog entry of {table} is corrupt")]
    Catalog {
        /// The table (as stored).
        table: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The stored replication state could not be read.
    #[error("replica state record \"{0}\" is corrupt")]
    State(&'static str),
    /// A stored row could not be decoded.
    #[error("stored row of {0} is corrupt")]
    CorruptRow(TableName),
    /// A row did not match its table's shape.
    #[error("row for {table} has {got} values but the table has {expected} columns")]
    RowShape {
        /// The table.
        table: TableName,
        /// Values in the row.
        got: usize,
        /// Columns in the table.
        expected: usize,
    },
    /// A run file of an index build (next to the replica) could not be written or read.
    #[error("index build file {path} failed")]
    IndexBuild {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The blocking writer task ended abnormally.
    #[error("replica writer task failed")]
    Writer(#[source] tokio::task::JoinError),
    /// Writing a batch of the copy panicked (a bug); the copy cannot complete.
    #[error("writing a batch of the copy panicked")]
    CopyWriterPanicked,
    /// Applying a replicated transaction panicked (a bug); the stream starts over from
    /// the watermark.
    #[error("applying a replicated transaction panicked")]
    ApplyPanicked,
}

/// Result of replica operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Storage(redb::Error::from(e))
            }
        }
    )*};
}

from_redb!(
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::SetDurabilityError,
    redb::CursorError
);

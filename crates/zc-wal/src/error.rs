use zc_types::{Lsn, TableName};

use crate::decode::DecodeError;
use crate::pg_value::ValueError;

/// A boxed error from a layer zc-wal does not expose (sqlx, the walsender transport, the
/// destination).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of zc-wal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The upstream connection string could not be read.
    #[error("invalid upstream connection string: {reason}")]
    InvalidUrl {
        /// What is wrong with it.
        reason: String,
    },
    /// A configuration value is not acceptable.
    #[error("invalid replication setting: {0}")]
    Config(String),
    /// Could not connect to the upstream database.
    #[error("could not connect to the upstream database {target}")]
    Connect {
        /// Host, port and database (no password).
        target: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// Upstream is not configured for logical replication.
    #[error(
        "upstream wal_level is \"{actual}\" but logical replication needs wal_level = logical: \
         run ALTER SYSTEM SET wal_level = logical; and restart PostgreSQL"
    )]
    WalLevel {
        /// The current setting.
        actual: String,
    },
    /// The role may not replicate.
    #[error(
        "role \"{role}\" may not start replication: run ALTER ROLE \"{role}\" WITH REPLICATION; \
         as a superuser, or connect as a role that has it"
    )]
    ReplicationPrivilege {
        /// The connecting role.
        role: String,
    },
    /// Publications named in the configuration do not exist upstream.
    #[error(
        "publications {missing:?} do not exist upstream (create them, or unset ZERO_APP_PUBLICATIONS to publish the public schema)"
    )]
    PublicationMissing {
        /// The missing names.
        missing: Vec<String>,
    },
    /// A control query failed.
    #[error("upstream query failed while trying to {what}")]
    Query {
        /// What zc-wal was doing.
        what: &'static str,
        /// The database error.
        #[source]
        source: BoxError,
    },
    /// The replication session failed.
    #[error("replication session failed while trying to {what}")]
    Replication {
        /// What zc-wal was doing.
        what: &'static str,
        /// The transport error.
        #[source]
        source: BoxError,
        /// True when reconnecting may help.
        transient: bool,
    },
    /// A pgoutput message could not be decoded.
    #[error("could not decode the replication stream near {lsn}")]
    Decode {
        /// Where.
        lsn: Lsn,
        /// Why.
        #[source]
        source: DecodeError,
    },
    /// A value could not be read.
    #[error("could not read column \"{column}\" of {table}")]
    Value {
        /// The table.
        table: TableName,
        /// The column.
        column: String,
        /// Why.
        #[source]
        source: ValueError,
    },
    /// The initial copy of a table failed.
    #[error("could not copy table {table}")]
    Copy {
        /// The table.
        table: TableName,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The stream named a relation zc-wal was never told about.
    #[error("replication stream used relation {0} before describing it")]
    UnknownRelation(u32),
    /// The destination failed to store data.
    #[error("the destination failed to store replicated data")]
    Destination(#[source] BoxError),
    /// A table's columns changed upstream: it is copied again at a new snapshot.
    #[error("table {table} changed upstream and must be copied again")]
    TableResyncRequired {
        /// The table.
        table: TableName,
        /// Its OID.
        oid: u32,
    },
    /// The replica can no longer follow the slot and must be rebuilt from a fresh copy.
    #[error("a full resync is required: {reason}")]
    ResyncRequired {
        /// Why.
        reason: String,
    },
}

impl Error {
    /// True when retrying from the durable watermark may succeed (a lost connection, a slot
    /// still held by a previous session); false when the configuration or data must change.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. } => true,
            Error::Replication { transient, .. } => *transient,
            Error::Query { source, .. } | Error::Copy { source, .. } => is_io(source.as_ref()),
            _ => false,
        }
    }
}

fn is_io(e: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(sqlx_err) = e.downcast_ref::<sqlx::Error>() {
        return match sqlx_err {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|c| transient_sqlstate(&c)),
            _ => false,
        };
    }
    e.source().is_some_and(is_io)
}

/// SQLSTATEs of a server that is shutting down, restarting, or out of connections: retrying
/// later may work.
pub(crate) fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300" | "55006")
}

/// Result of zc-wal operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn query_err(what: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |e| Error::Query {
        what,
        source: Box::new(e),
    }
}

//! The errors of this crate.

use std::path::PathBuf;
use std::process::ExitStatus;

/// Why a server could not be created, started or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `initdb`, `postgres` and `pg_ctl` were not found together in any place we looked.
    #[error(
        "could not find the PostgreSQL binaries initdb, postgres and pg_ctl (tried: {}); \
         set ZC_PG_BIN to the directory that holds them",
        tried.join(", ")
    )]
    BinariesNotFound {
        /// Every place looked at, in order (directories, or a note on how they were found).
        tried: Vec<String>,
    },
    /// We run as root, which PostgreSQL refuses, and there is no `postgres` user to run as.
    #[error("running as root needs a \"postgres\" system user to run PostgreSQL as, found none")]
    NoPostgresUser,
    /// `initdb` exited with a failure.
    #[error("initdb failed for {data_dir:?} ({status}): {output}")]
    Initdb {
        /// The data directory being created.
        data_dir: PathBuf,
        /// How `initdb` exited.
        status: ExitStatus,
        /// What it printed (stdout, then stderr).
        output: String,
    },
    /// The server exited or did not become ready in time.
    #[error(
        "could not start PostgreSQL on port {port} ({reason}); the server log ends with:\n{log_tail}"
    )]
    Start {
        /// The port it was started on.
        port: u16,
        /// What went wrong, e.g. `exited with exit status: 1` or `not ready after 60 s`.
        reason: String,
        /// The last lines of the server log.
        log_tail: String,
    },
    /// `pg_ctl stop` failed.
    #[error("could not stop PostgreSQL ({status}): {output}")]
    Stop {
        /// How `pg_ctl` exited.
        status: ExitStatus,
        /// What it printed (stdout, then stderr).
        output: String,
    },
    /// A file system or process operation failed.
    #[error("could not {action}")]
    Io {
        /// What was being done, e.g. `run "initdb"`.
        action: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Maps an [`std::io::Error`] into [`Error::Io`] saying what was being done.
pub(crate) fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let action = action.into();
    move |source| Error::Io { action, source }
}

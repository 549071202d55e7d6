//! Client view records (CVR): what each client group has, so that a reconnecting client gets
//! only what changed since its cookie.
//!
//! A [`Cvr`] is one group's record: its version (the cookie the group's clients converge
//! to), its clients, the queries each client desires, the queries the group has ("got"),
//! and every row it holds with a reference count per query. Every entry carries the
//! version at which it last changed (its *patch version*), so the changes since any cookie
//! are the entries patched after it ([`Cvr::changes_since`]; for a recent cookie, less the
//! rows that came and went after it).
//!
//! [`CvrStore`] keeps records in PostgreSQL (schema `"{app}_{shard}/zc_cvr"`), loads one
//! group's record when the group becomes active, and writes each change set in one
//! transaction (together with the change sets of other groups that wait to be written at
//! the same time) that also checks the group's version and owner: a second server instance
//! that takes a group over makes the first one's next flush fail with
//! [`Error::OwnershipLost`], so two instances never both serve one group. Flushes do not
//! wait for PostgreSQL's fsync (`synchronous_commit = off`); one lost in a crash of
//! PostgreSQL makes the next flush fail with [`Error::Diverged`] (the group's row is not the
//! one this instance last wrote), so the group reloads the record and clients ahead of it
//! resync.
#![warn(missing_docs, unreachable_pub)]

mod record;
mod store;
mod version;
mod writer;

pub use record::{Changes, Cvr, DesireRecord, QueryRecord, RowId, RowRecord};
pub use store::CvrStore;
pub use version::{CvrVersion, ParseCookieError};

/// Errors of the CVR store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A database operation failed.
    #[error("CVR database operation failed")]
    Database(#[from] sqlx::Error),
    /// Another server instance took the client group over.
    #[error("client group {0} is now served by another instance")]
    OwnershipLost(String),
    /// The group's stored record is not the one this instance last wrote: a flush was lost
    /// (PostgreSQL crashed after acknowledging it, as flushes do not wait for its fsync). The
    /// record must be loaded again; clients ahead of it resync.
    #[error(
        "client group {0}'s stored record is not the one this instance last wrote (a CVR write was lost); reload it"
    )]
    Diverged(String),
    /// The write this group's flush shared with other groups' flushes failed for a reason
    /// that is not the data's (the connection or the pool); the changes stay unwritten.
    #[error("CVR database write failed: {0}")]
    SharedWrite(String),
    /// The stored record is not what this version of zc writes.
    #[error("CVR record of client group {group} is corrupt: {what}")]
    Corrupt {
        /// The client group.
        group: String,
        /// What is wrong.
        what: String,
    },
}

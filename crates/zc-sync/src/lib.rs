//! The view syncer of zc. This layer connects the query engine to the replica:
//! [`SnapshotSources`] serves `zc-query` pipelines from a replica snapshot (using the
//! replica's primary key and mirrored upstream indexes for ordered and constrained reads),
//! and [`diff`] turns the change log between two snapshots into the row changes that
//! advance the pipelines.
#![warn(missing_docs, unreachable_pub)]

pub mod auth;
mod crud;
mod diff;
pub mod forward;
mod group;
mod hub;
pub mod permissions;
mod schema_check;
mod service;
mod source;

pub use diff::{Advance, diff, diff_bounded};
pub use service::{ClientHandle, Connection, SyncConfig, Syncer};
pub use source::SnapshotSources;

/// Errors of the view syncer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the replica failed.
    #[error("reading the replica failed")]
    Replica(#[from] zc_replica::Error),
}

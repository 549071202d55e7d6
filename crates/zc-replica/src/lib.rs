//! The redb replica of zc: the replicated tables, their secondary indexes, a change log and
//! the replication watermark, in one file.
//!
//! [`Replica`] implements [`zc_wal::Destination`]: zc-wal hands it the initial copy and then
//! each upstream transaction, which it applies as one redb write transaction (zc-wal has it
//! committed without an fsync, so readers see it at once, and made durable by one flush
//! for the whole burst before it acknowledges anything). Readers
//! take [`Snapshot`]s (MVCC read transactions) and read rows by key, in key order, by index
//! range, and the change log between two versions.
//!
//! ```no_run
//! # fn main() -> Result<(), zc_replica::Error> {
//! let replica = zc_replica::Replica::open("zero.redb")?;
//! let snap = replica.snapshot()?;
//! for table in snap.tables()? {
//!     println!("{}: {} rows", table.name, snap.row_count(&table.name)?);
//! }
//! # Ok(()) }
//! ```
//!
//! Rows are keyed by an order-preserving encoding of the primary key ([`key`]), stamped with
//! the commit LSN that last wrote them. The change log keeps the latest op per row, as
//! zero-cache's `changeLog2` does. This crate knows nothing of queries, clients or sockets.
#![warn(missing_docs, unreachable_pub)]

mod error;
mod index_build;
pub mod key;
mod store;

pub use error::{Error, Result};
pub use store::{ChangeLogEntry, ChangeOp, DEFAULT_CACHE_BYTES, Replica, RowIter, Snapshot};

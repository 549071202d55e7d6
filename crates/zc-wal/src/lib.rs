//! Embeddable PostgreSQL logical replication, the way zero-cache does it.
//!
//! zc-wal owns a replication slot and the publications of a Zero shard, makes a consistent
//! initial copy of every published table (a slot with an exported snapshot, then parallel
//! binary COPY at that snapshot), and then streams pgoutput changes one transaction at a
//! time into a [`Destination`] you provide. It acknowledges an LSN to PostgreSQL only after
//! the destination made it durable (one fsync may cover a burst of transactions that were
//! already waiting), and acknowledges keepalives when idle so that the slot advances on quiet
//! databases.
//!
//! Concepts:
//! - [`WalConfig`]: the upstream and the shard (`ZERO_APP_ID`, `ZERO_SHARD_NUM`,
//!   `ZERO_APP_PUBLICATIONS`), with zero-cache's naming of schemas, publications and slot.
//! - [`Destination`]: where data goes; it stores the initial copy and applies each
//!   [`Transaction`] atomically. `zc-replica` is one; the `wal_tail` example prints changes.
//! - [`Replicator`]: resume-or-resync, streaming, retries.
//! - [`decode()`]: the pgoutput decoder, a pure total function usable on its own.
//!
//! ```no_run
//! use zc_wal::{Replicator, WalConfig};
//! # async fn demo<D: zc_wal::Destination>(dest: D) -> Result<(), zc_wal::Error> {
//! let cfg = WalConfig::new("postgres://postgres@127.0.0.1:5432/app");
//! let cancel = tokio_util::sync::CancellationToken::new();
//! Replicator::new(cfg, dest).run(cancel).await
//! # }
//! ```
//!
//! zc-wal does not store anything itself, and knows nothing of queries or clients.
#![warn(missing_docs, unreachable_pub)]

mod change;
mod config;
pub mod copy_binary;
pub mod decode;
mod destination;
mod error;
mod initial_sync;
pub mod pg_value;
mod replicator;
mod session;
mod stream;
mod upstream;

pub use change::{Change, Transaction};
pub use config::WalConfig;
pub use decode::{DecodeError, LogicalMessage, decode};
pub use destination::{Destination, SyncState, Watermark};
pub use error::{BoxError, Error, Result};
pub use replicator::Replicator;

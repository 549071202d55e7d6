//! Starts a throwaway local PostgreSQL from the machine's binaries: `initdb` into a
//! temporary directory, then `postgres` on a free 127.0.0.1 port with `wal_level=logical`.
//! zc uses it when no `ZERO_UPSTREAM_DB` is given, and `zc-testkit` uses it for the one
//! cluster of each test process.
//!
//! **Binaries.** `initdb`, `postgres` and `pg_ctl` are looked up in `ZC_PG_BIN`, else on
//! `PATH`, else in `/usr/lib/postgresql/<highest version>/bin`, else in
//! `pg_config --bindir`; [`Error::BinariesNotFound`] lists what was tried.
//!
//! **Root.** PostgreSQL refuses to run as root. When our effective user is root, the
//! programs run as the `postgres` system user and the directories are given to it.
//!
//! **Cluster.** `initdb -A trust -U postgres -E UTF8 --locale=C --no-sync` (C collation: text
//! orders by bytes), then `postgres -c listen_addresses=127.0.0.1 -c wal_level=logical
//! -c max_wal_senders=40 -c max_replication_slots=40 -c max_connections=200 -c fsync=off
//! -c synchronous_commit=off -c full_page_writes=off -c wal_sender_timeout=10s` plus
//! [`PgOptions::extra_settings`]. [`EmbeddedPostgres::start`] returns when the server accepts
//! connections (its `postmaster.pid` says `ready` and the port accepts TCP).
//!
//! **Teardown.** [`EmbeddedPostgres::stop`] is a fast shutdown; dropping the value is an
//! immediate shutdown and deletes a temporary directory. If this process dies without
//! dropping it (panic in a `static`, abort, `SIGKILL`), a sentinel shell that waits on a pipe
//! from this process does the same (see the `sentinel` module).
//!
//! ```no_run
//! use zc_pg_embed::{EmbeddedPostgres, PgOptions};
//!
//! let pg = EmbeddedPostgres::start(PgOptions::default())?;
//! let url = pg.url("postgres"); // postgres://postgres@127.0.0.1:<port>/postgres
//! # let _ = url;
//! drop(pg); // stopped, directory removed
//! # Ok::<(), zc_pg_embed::Error>(())
//! ```
//!
//! Not done here: creating databases or roles, TLS, passwords, or any SQL (no client library
//! is a dependency).
#![warn(missing_docs, unreachable_pub)]

mod account;
mod binaries;
mod error;
mod sentinel;
mod server;

pub use crate::error::{Error, Result};
pub use crate::server::{EmbeddedPostgres, PgOptions};

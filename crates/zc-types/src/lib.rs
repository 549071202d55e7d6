//! Shared vocabulary of zc: the small, stable types every other crate speaks.
//!
//! - [`Lsn`]: a PostgreSQL log sequence number, printed as `X/Y`.
//! - [`LexiVersion`]: Zero's lexicographically sortable version string (base 36 with a
//!   length prefix), used for replica versions, row versions and cookies.
//! - [`Value`] and [`Row`]: a replicated value in Zero's value model (number, boolean,
//!   string, JSON, null) plus the few representations the replica keeps beside it.
//! - [`PgType`] and [`ColumnSpec`]: what a replicated column is upstream and how its values
//!   map to Zero's model.
//! - [`TableName`]: a schema-qualified table name.
//!
//! This crate does no I/O. With the `rt` feature it also offers [`task::spawn_named`].
#![warn(missing_docs, unreachable_pub)]

mod batch;
mod lsn;
mod schema;
#[cfg(feature = "rt")]
pub mod task;
mod value;
mod version;

pub use batch::{RowBatch, RowRef, ValueRef, WidthMismatch};
pub use lsn::{Lsn, ParseLsnError};
pub use schema::{ColumnSpec, IndexSpec, PgType, TableName, TableSpec, TypeKind};
pub use value::{Row, Value};
pub use version::{LexiVersion, ParseLexiVersionError};

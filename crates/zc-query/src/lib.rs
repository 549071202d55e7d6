//! Zero's query engine for zc. This first layer holds the value semantics every operator
//! shares: how values compare and order ([`compare`]), how simple conditions and LIKE
//! patterns evaluate ([`filter`]), and the [`Source`] seam with an in-memory implementation.
//! Operator pipelines (join, exists, take, skip, or) build on it.
//!
//! ```
//! use zc_query::filter::Predicate;
//! use zc_query::ast;
//! let cond = ast::parse(r#"{"table":"t","where":{"type":"simple","left":{"type":"column","name":"title"},"right":{"type":"literal","value":"%bug%"},"op":"ILIKE"}}"#)
//!     .unwrap().where_.unwrap();
//! let columns = ["id".to_string(), "title".to_string()];
//! let p = Predicate::compile(&cond, &columns).unwrap();
//! assert!(p.eval(&[1i64.into(), "Big BUG here".into()]));
//! ```
#![warn(missing_docs, unreachable_pub)]

pub mod compare;
pub mod filter;
pub mod pipeline;
mod source;
pub mod tree;
pub mod view;

pub use source::{
    MemorySource, RowStream, ScanRequest, Source, SourceError, Sources, after_start,
    complete_ordering, satisfies,
};
pub use zc_protocol::ast;

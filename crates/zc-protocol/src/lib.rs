//! Zero's wire types as the `@rocicorp/zero` 1.9.0 client and `@rocicorp/zero/server` speak
//! them: the query [`ast`], the query ids ([`hash`]), the WebSocket [`messages`] of sync
//! protocol v51, and the [`connect`] request (URL parameters and the
//! `Sec-WebSocket-Protocol` header). Serde only, no I/O.
//!
//! ```
//! let json = r#"{"table":"issue","where":{"type":"simple","left":{"type":"column","name":"done"},"right":{"type":"literal","value":false},"op":"="},"orderBy":[["title","asc"]]}"#;
//! let ast = zc_protocol::ast::parse(json).unwrap();
//! assert_eq!(ast.table, "issue");
//! assert_eq!(serde_json::to_string(&ast).unwrap(), json); // byte for byte
//! assert_eq!(zc_protocol::hash::hash_of_ast(&ast), "jta5myd24i33");
//! ```
#![warn(missing_docs, unreachable_pub)]

pub mod ast;
pub mod connect;
pub mod hash;
pub mod messages;

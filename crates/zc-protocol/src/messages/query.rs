//! Desired and got queries, the client schema and per-query transform errors
//! (`queries-patch.ts`, `change-desired-queries.ts`, `client-schema.ts`, `custom-queries.ts`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ast::Ast;
use crate::messages::json::{js_number, present};

/// An upstream query patch operation (in `initConnection` and `changeDesiredQueries`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum UpQueriesPatchOp {
    /// The client wants this query. A named query has `name` + `args` and no `ast`; an ad-hoc
    /// (legacy) query has `ast`.
    Put {
        /// The query id the client computed; echoed, never recomputed.
        hash: String,
        /// The ad-hoc query.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ast: Option<Box<Ast>>,
        /// The named query's name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// The named query's arguments (`[]` or one element).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        args: Option<Vec<Value>>,
        /// Milliseconds to keep syncing after the client drops the query (negative: forever).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            serialize_with = "js_number::serialize_opt"
        )]
        ttl: Option<f64>,
    },
    /// The client no longer wants this query.
    Del {
        /// The query id.
        hash: String,
    },
    /// Drop every desired query (never sent by 1.9.0).
    Clear,
}

impl UpQueriesPatchOp {
    /// The query id, unless this is `clear`.
    pub fn hash(&self) -> Option<&str> {
        match self {
            UpQueriesPatchOp::Put { hash, .. } | UpQueriesPatchOp::Del { hash } => Some(hash),
            UpQueriesPatchOp::Clear => None,
        }
    }
}

/// A downstream query patch operation (`desiredQueriesPatches`, `gotQueriesPatch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum QueriesPatchOp {
    /// The query is desired / complete.
    Put {
        /// The query id.
        hash: String,
        /// Not sent by zero-cache.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            serialize_with = "js_number::serialize_opt"
        )]
        ttl: Option<f64>,
    },
    /// The query is no longer desired / synced.
    Del {
        /// The query id.
        hash: String,
    },
    /// Remove every entry.
    Clear,
}

impl QueriesPatchOp {
    /// `{op: "put", hash}`.
    pub fn put(hash: impl Into<String>) -> Self {
        QueriesPatchOp::Put {
            hash: hash.into(),
            ttl: None,
        }
    }

    /// `{op: "del", hash}`.
    pub fn del(hash: impl Into<String>) -> Self {
        QueriesPatchOp::Del { hash: hash.into() }
    }
}

/// Body of upstream `changeDesiredQueries`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ChangeDesiredQueriesBody {
    /// The changes.
    pub desired_queries_patch: Vec<UpQueriesPatchOp>,
    /// W3C trace context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// The client's view of the schema, with server table and column names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSchema {
    /// Tables by server name.
    pub tables: BTreeMap<String, TableSchema>,
}

/// One table of a [`ClientSchema`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TableSchema {
    /// Columns by server name.
    pub columns: BTreeMap<String, ColumnSchema>,
    /// The primary key columns, sorted by name by the client.
    pub primary_key: Vec<String>,
}

/// One column of a [`TableSchema`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSchema {
    /// The client's value type.
    #[serde(rename = "type")]
    pub value_type: ValueType,
}

/// A column's value type as the client declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    /// `string()` and `enumeration()`.
    String,
    /// `number()`.
    Number,
    /// `boolean()`.
    Boolean,
    /// `null`.
    Null,
    /// `json()`.
    Json,
}

/// A query the app's query endpoint could not transform, reported to the client in
/// `transformError` (tagged by `error`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "error", rename_all = "lowercase")]
pub enum ErroredQuery {
    /// The app's query function failed.
    App {
        /// The query id.
        id: String,
        /// The query name.
        name: String,
        /// The error message.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        /// Extra data.
        #[serde(
            default,
            deserialize_with = "present",
            skip_serializing_if = "Option::is_none"
        )]
        details: Option<Value>,
    },
    /// The app could not parse the query's arguments.
    Parse {
        /// The query id.
        id: String,
        /// The query name.
        name: String,
        /// The error message.
        message: String,
        /// Extra data.
        #[serde(
            default,
            deserialize_with = "present",
            skip_serializing_if = "Option::is_none"
        )]
        details: Option<Value>,
    },
}

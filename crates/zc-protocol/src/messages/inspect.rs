//! The developer inspector's `inspect` messages (`inspect-up.ts`, `inspect-down.ts`).
//!
//! Only `zero.inspector` sends them; a server may answer every request with
//! [`InspectDownBody::Error`]. Metrics and query analyses are kept as JSON values.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ast::Ast;
use crate::messages::json::{js_number, present};

/// Body of upstream `inspect`, tagged by `op`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", deny_unknown_fields)]
pub enum InspectUpBody {
    /// The queries of the client group (or of one client).
    #[serde(rename = "queries")]
    Queries {
        /// Request id, echoed in the answer.
        id: String,
        /// Restrict to this client.
        #[serde(default, rename = "clientID", skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
    },
    /// Server metrics.
    #[serde(rename = "metrics")]
    Metrics {
        /// Request id.
        id: String,
    },
    /// The server's version.
    #[serde(rename = "version")]
    Version {
        /// Request id.
        id: String,
    },
    /// Authenticate with the admin password.
    #[serde(rename = "authenticate")]
    Authenticate {
        /// Request id.
        id: String,
        /// The password.
        value: String,
    },
    /// Analyze a query.
    #[serde(rename = "analyze-query")]
    AnalyzeQuery {
        /// Request id.
        id: String,
        /// Deprecated form of `ast`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<Box<Ast>>,
        /// What to report.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        options: Option<AnalyzeQueryOptions>,
        /// The query.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ast: Option<Box<Ast>>,
        /// A named query's name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// A named query's arguments.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        args: Option<Vec<Value>>,
    },
}

impl InspectUpBody {
    /// The request id.
    pub fn id(&self) -> &str {
        match self {
            InspectUpBody::Queries { id, .. }
            | InspectUpBody::Metrics { id }
            | InspectUpBody::Version { id }
            | InspectUpBody::Authenticate { id, .. }
            | InspectUpBody::AnalyzeQuery { id, .. } => id,
        }
    }
}

/// Options of an `analyze-query` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnalyzeQueryOptions {
    /// Report the rows read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vended_rows: Option<bool>,
    /// Report the rows synced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_rows: Option<bool>,
    /// Report join plans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_plans: Option<bool>,
}

/// Body of downstream `inspect`, tagged by `op`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op")]
pub enum InspectDownBody {
    /// The queries.
    #[serde(rename = "queries")]
    Queries {
        /// The request's id.
        id: String,
        /// One row per (client, query).
        value: Vec<InspectQueryRow>,
    },
    /// Server metrics (t-digests, kept as JSON).
    #[serde(rename = "metrics")]
    Metrics {
        /// The request's id.
        id: String,
        /// `{"query-materialization-server": …, "query-update-server": …}`.
        value: Value,
    },
    /// The server's version.
    #[serde(rename = "version")]
    Version {
        /// The request's id.
        id: String,
        /// The version text.
        value: String,
    },
    /// Whether `authenticate` succeeded.
    #[serde(rename = "authenticated")]
    Authenticated {
        /// The request's id.
        id: String,
        /// True when authenticated.
        value: bool,
    },
    /// A query analysis (kept as JSON).
    #[serde(rename = "analyze-query")]
    AnalyzeQuery {
        /// The request's id.
        id: String,
        /// The analysis.
        value: Value,
    },
    /// The request failed or is not supported.
    #[serde(rename = "error")]
    Error {
        /// The request's id.
        id: String,
        /// The error text.
        value: String,
    },
}

/// One query in an inspector `queries` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InspectQueryRow {
    /// The client.
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// The query id.
    #[serde(rename = "queryID")]
    pub query_id: String,
    /// The AST (`null` for named queries until transformed).
    #[serde(deserialize_with = "Option::deserialize")]
    pub ast: Option<Ast>,
    /// The name of a named query.
    #[serde(deserialize_with = "Option::deserialize")]
    pub name: Option<String>,
    /// The arguments of a named query.
    #[serde(deserialize_with = "Option::deserialize")]
    pub args: Option<Vec<Value>>,
    /// True when the query is complete on the client.
    pub got: bool,
    /// True when the client deleted it.
    pub deleted: bool,
    /// The TTL in milliseconds.
    #[serde(serialize_with = "js_number::serialize")]
    pub ttl: f64,
    /// When the query became inactive (epoch ms).
    #[serde(deserialize_with = "Option::deserialize")]
    pub inactivated_at: Option<i64>,
    /// The number of rows.
    pub row_count: u64,
    /// Per-query metrics (optional and nullable).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub metrics: Option<Value>,
}

//! Connection-level bodies: `initConnection`, `connected`, `updateAuth`, `deleteClients` and
//! `pull` (`connect.ts`, `update-auth.ts`, `delete-clients.ts`, `pull.ts`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::messages::query::{ClientSchema, UpQueriesPatchOp};

/// Body of upstream `initConnection`, sent in the `Sec-WebSocket-Protocol` header or as the
/// first message after `connected`.
///
/// Members are written in the order the 1.9.0 client writes them in the header, so
/// [`crate::connect::encode_sec_protocol`] reproduces the client's header byte for byte.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InitConnectionBody {
    /// The queries the client wants (relative to what the server confirmed for it).
    pub desired_queries_patch: Vec<UpQueriesPatchOp>,
    /// Clients the client deleted locally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<DeleteClientsBody>,
    /// Only sent when the client has no cookie (a new client group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_schema: Option<ClientSchema>,
    /// Overrides the configured mutate URL for this connection.
    #[serde(
        default,
        rename = "userPushURL",
        skip_serializing_if = "Option::is_none"
    )]
    pub user_push_url: Option<String>,
    /// Extra headers for the mutate endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_push_headers: Option<BTreeMap<String, String>>,
    /// Overrides the configured query URL for this connection.
    #[serde(
        default,
        rename = "userQueryURL",
        skip_serializing_if = "Option::is_none"
    )]
    pub user_query_url: Option<String>,
    /// Extra headers for the query endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_query_headers: Option<BTreeMap<String, String>>,
    /// The clients of the group that are alive (header form only); others may be deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_clients: Option<Vec<String>>,
    /// W3C trace context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl InitConnectionBody {
    /// A body with these desired-query changes and nothing else.
    pub fn new(desired_queries_patch: Vec<UpQueriesPatchOp>) -> Self {
        InitConnectionBody {
            desired_queries_patch,
            deleted: None,
            client_schema: None,
            user_push_url: None,
            user_push_headers: None,
            user_query_url: None,
            user_query_headers: None,
            active_clients: None,
            traceparent: None,
        }
    }
}

/// Body of downstream `connected`, the first message of every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectedBody {
    /// The socket id from the URL's `wsid` parameter.
    pub wsid: String,
    /// Milliseconds since the epoch (only used for a latency log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
}

/// Body of `deleteClients`, upstream (clients deleted locally) and downstream (the ids the
/// server actually deleted).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteClientsBody {
    /// Deleted client ids.
    #[serde(default, rename = "clientIDs", skip_serializing_if = "Option::is_none")]
    pub client_ids: Option<Vec<String>>,
    /// Deleted client group ids (ignored by zero-cache).
    #[serde(
        default,
        rename = "clientGroupIDs",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_group_ids: Option<Vec<String>>,
}

/// Body of upstream `updateAuth`: a new token for the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateAuthBody {
    /// The token.
    pub auth: String,
}

/// Body of upstream `pull` (never sent by 1.9.0; zero-cache ignores it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequestBody {
    /// The client group.
    #[serde(rename = "clientGroupID")]
    pub client_group_id: String,
    /// The client's cookie (`null` for none; the member is required).
    #[serde(deserialize_with = "Option::deserialize")]
    pub cookie: Option<String>,
    /// Echoed in the response.
    #[serde(rename = "requestID")]
    pub request_id: String,
}

/// Body of downstream `pull`, the answer to an upstream `pull`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullResponseBody {
    /// The server's cookie.
    pub cookie: String,
    /// The request's id.
    #[serde(rename = "requestID")]
    pub request_id: String,
    /// Last mutation ids by client.
    #[serde(rename = "lastMutationIDChanges")]
    pub last_mutation_id_changes: BTreeMap<String, u64>,
}

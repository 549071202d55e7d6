//! Mutations: the upstream `push` body, CRUD and custom mutations, mutation results
//! (`push.ts`, `mutation.ts`, `mutation-id.ts`, `mutate-server.ts`).

use serde::de::{self, Deserializer};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::messages::json::{WireRow, non_empty_strings, present, primary_key_record};

/// The name every CRUD mutation carries.
pub const CRUD_MUTATION_NAME: &str = "_zero_crud";

/// The name of the cleanup mutation zero-cache sends to the mutate endpoint after
/// `ackMutationResponses` and `deleteClients`.
pub const CLEANUP_RESULTS_MUTATION_NAME: &str = "_zero_cleanupResults";

/// Identifies one mutation: `{clientID, id}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MutationId {
    /// The client that created the mutation.
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// The per-client mutation id (1, 2, 3, …).
    pub id: u64,
}

/// Body of upstream `push`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PushBody {
    /// `Date.now()` when the message was sent.
    pub timestamp: i64,
    /// The client group; must be the connection's.
    #[serde(rename = "clientGroupID")]
    pub client_group_id: String,
    /// The mutations (the 1.9.0 client sends exactly one per push).
    pub mutations: Vec<Mutation>,
    /// Always 1.
    pub push_version: u64,
    /// Never sent by 1.9.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<u64>,
    /// `{clientID}-{sessionID}-{counter}`.
    #[serde(rename = "requestID")]
    pub request_id: String,
    /// Deprecated, never sent by 1.9.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// W3C trace context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// A CRUD or custom mutation, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Mutation {
    /// `type: "crud"`: legacy mutators, executed by the server itself.
    Crud(CrudMutation),
    /// `type: "custom"`: forwarded to the app's mutate endpoint.
    Custom(CustomMutation),
}

impl Mutation {
    /// The mutation's id.
    pub fn id(&self) -> MutationId {
        match self {
            Mutation::Crud(m) => MutationId {
                client_id: m.client_id.clone(),
                id: m.id,
            },
            Mutation::Custom(m) => MutationId {
                client_id: m.client_id.clone(),
                id: m.id,
            },
        }
    }

    /// The client that created it.
    pub fn client_id(&self) -> &str {
        match self {
            Mutation::Crud(m) => &m.client_id,
            Mutation::Custom(m) => &m.client_id,
        }
    }
}

/// A CRUD mutation. On the wire its name is always [`CRUD_MUTATION_NAME`] and its args are
/// exactly one `{ops}` object; here the ops are held directly.
#[derive(Debug, Clone, PartialEq)]
pub struct CrudMutation {
    /// `Date.now()` when the mutation was created.
    pub timestamp: i64,
    /// The per-client mutation id.
    pub id: u64,
    /// The client that created it.
    pub client_id: String,
    /// The operations (`args[0].ops`).
    pub ops: Vec<CrudOp>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CrudArg<T> {
    ops: T,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CrudMutationWire {
    timestamp: i64,
    id: u64,
    #[serde(rename = "clientID")]
    client_id: String,
    name: String,
    args: [CrudArg<Vec<CrudOp>>; 1],
}

impl<'de> Deserialize<'de> for CrudMutation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = CrudMutationWire::deserialize(d)?;
        if w.name != CRUD_MUTATION_NAME {
            return Err(de::Error::invalid_value(
                de::Unexpected::Str(&w.name),
                &CRUD_MUTATION_NAME,
            ));
        }
        let [arg] = w.args;
        Ok(CrudMutation {
            timestamp: w.timestamp,
            id: w.id,
            client_id: w.client_id,
            ops: arg.ops,
        })
    }
}

impl Serialize for CrudMutation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("timestamp", &self.timestamp)?;
        m.serialize_entry("id", &self.id)?;
        m.serialize_entry("clientID", &self.client_id)?;
        m.serialize_entry("name", CRUD_MUTATION_NAME)?;
        m.serialize_entry("args", &[CrudArg { ops: &self.ops }])?;
        m.end()
    }
}

/// A custom mutation, forwarded to the app's mutate endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomMutation {
    /// `Date.now()` when the mutation was created.
    pub timestamp: i64,
    /// The per-client mutation id.
    pub id: u64,
    /// The client that created it.
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// The mutator's name; nested mutators are dot-joined (`issue.setTitle`).
    pub name: String,
    /// The arguments: one element (the mutator argument, `null` when called without one).
    pub args: Vec<Value>,
}

/// One CRUD operation (table and column names are server names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "op",
    rename_all = "lowercase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum CrudOp {
    /// Insert; do nothing if the primary key exists.
    Insert {
        /// The table.
        table_name: String,
        /// The primary key columns (at least one).
        #[serde(deserialize_with = "non_empty_strings")]
        primary_key: Vec<String>,
        /// The row (only the columns the app supplied).
        value: WireRow,
    },
    /// Insert or update the given columns.
    Upsert {
        /// The table.
        table_name: String,
        /// The primary key columns (at least one).
        #[serde(deserialize_with = "non_empty_strings")]
        primary_key: Vec<String>,
        /// The row (only the columns the app supplied).
        value: WireRow,
    },
    /// Update the given columns; do nothing if the row is missing.
    Update {
        /// The table.
        table_name: String,
        /// The primary key columns (at least one).
        #[serde(deserialize_with = "non_empty_strings")]
        primary_key: Vec<String>,
        /// The primary key columns plus the changed columns.
        value: WireRow,
    },
    /// Delete; do nothing if the row is missing.
    Delete {
        /// The table.
        table_name: String,
        /// The primary key columns (at least one).
        #[serde(deserialize_with = "non_empty_strings")]
        primary_key: Vec<String>,
        /// The primary key values.
        #[serde(deserialize_with = "primary_key_record")]
        value: WireRow,
    },
}

/// The result of one mutation, as the app's mutate endpoint reports it and as it reaches
/// the client in `mutationsPatch`.
#[derive(Debug, Clone, PartialEq)]
pub enum MutationResult {
    /// `{data?}`: success.
    Ok {
        /// Whatever the mutator returned.
        data: Option<Value>,
    },
    /// `{error: "app", message?, details?}`: the mutator threw.
    App {
        /// The error message.
        message: Option<String>,
        /// Extra data.
        details: Option<Value>,
    },
    /// `{error: "alreadyProcessed", details?}`.
    AlreadyProcessed {
        /// Extra data.
        details: Option<Value>,
    },
    /// `{error: "oooMutation", details?}` (deprecated: now a `PushFailed` error).
    OutOfOrderMutation {
        /// Extra data.
        details: Option<Value>,
    },
}

#[derive(Deserialize)]
struct RawMutationResult {
    #[serde(default, deserialize_with = "present")]
    data: Option<Value>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default, deserialize_with = "present")]
    details: Option<Value>,
}

impl<'de> Deserialize<'de> for MutationResult {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawMutationResult::deserialize(d)?;
        Ok(match raw.error.as_deref() {
            None => MutationResult::Ok { data: raw.data },
            Some("app") => MutationResult::App {
                message: raw.message,
                details: raw.details,
            },
            Some("alreadyProcessed") => MutationResult::AlreadyProcessed {
                details: raw.details,
            },
            Some("oooMutation") => MutationResult::OutOfOrderMutation {
                details: raw.details,
            },
            Some(other) => {
                return Err(de::Error::unknown_variant(
                    other,
                    &["app", "alreadyProcessed", "oooMutation"],
                ));
            }
        })
    }
}

impl Serialize for MutationResult {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        let details = match self {
            MutationResult::Ok { data } => {
                if let Some(d) = data {
                    m.serialize_entry("data", d)?;
                }
                None
            }
            MutationResult::App { message, details } => {
                m.serialize_entry("error", "app")?;
                if let Some(msg) = message {
                    m.serialize_entry("message", msg)?;
                }
                details.as_ref()
            }
            MutationResult::AlreadyProcessed { details } => {
                m.serialize_entry("error", "alreadyProcessed")?;
                details.as_ref()
            }
            MutationResult::OutOfOrderMutation { details } => {
                m.serialize_entry("error", "oooMutation")?;
                details.as_ref()
            }
        };
        if let Some(d) = details {
            m.serialize_entry("details", d)?;
        }
        m.end()
    }
}

/// `{id, result}`: the result of one mutation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MutationResponse {
    /// Which mutation.
    pub id: MutationId,
    /// Its result.
    pub result: MutationResult,
}

/// Body of downstream `pushResponse` (legacy; zero-cache 1.9.0 never sends it, but the client
/// still settles mutations from it).
#[derive(Debug, Clone, PartialEq)]
pub enum PushResponseBody {
    /// `{mutations}`: per-mutation results.
    Ok {
        /// The results.
        mutations: Vec<MutationResponse>,
    },
    /// `{error: "unsupportedPushVersion", mutationIDs?}`.
    UnsupportedPushVersion {
        /// The affected mutations.
        mutation_ids: Option<Vec<MutationId>>,
    },
    /// `{error: "unsupportedSchemaVersion", mutationIDs?}`.
    UnsupportedSchemaVersion {
        /// The affected mutations.
        mutation_ids: Option<Vec<MutationId>>,
    },
    /// `{error: "http", status, details, mutationIDs?}`.
    Http {
        /// The HTTP status of the mutate endpoint.
        status: u16,
        /// Text describing the failure.
        details: String,
        /// The affected mutations.
        mutation_ids: Option<Vec<MutationId>>,
    },
    /// `{error: "zeroPusher", details, mutationIDs?}`.
    ZeroPusher {
        /// Text describing the failure.
        details: String,
        /// The affected mutations.
        mutation_ids: Option<Vec<MutationId>>,
    },
}

#[derive(Deserialize)]
struct RawPushResponse {
    #[serde(default)]
    mutations: Option<Vec<MutationResponse>>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    details: Option<String>,
    #[serde(default, rename = "mutationIDs")]
    mutation_ids: Option<Vec<MutationId>>,
}

impl<'de> Deserialize<'de> for PushResponseBody {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawPushResponse::deserialize(d)?;
        let details =
            |details: Option<String>| details.ok_or_else(|| de::Error::missing_field("details"));
        Ok(match raw.error.as_deref() {
            None => PushResponseBody::Ok {
                mutations: raw
                    .mutations
                    .ok_or_else(|| de::Error::missing_field("mutations"))?,
            },
            Some("unsupportedPushVersion") => PushResponseBody::UnsupportedPushVersion {
                mutation_ids: raw.mutation_ids,
            },
            Some("unsupportedSchemaVersion") => PushResponseBody::UnsupportedSchemaVersion {
                mutation_ids: raw.mutation_ids,
            },
            Some("http") => PushResponseBody::Http {
                status: raw
                    .status
                    .ok_or_else(|| de::Error::missing_field("status"))?,
                details: details(raw.details)?,
                mutation_ids: raw.mutation_ids,
            },
            Some("zeroPusher") => PushResponseBody::ZeroPusher {
                details: details(raw.details)?,
                mutation_ids: raw.mutation_ids,
            },
            Some(other) => {
                return Err(de::Error::unknown_variant(
                    other,
                    &[
                        "unsupportedPushVersion",
                        "unsupportedSchemaVersion",
                        "http",
                        "zeroPusher",
                    ],
                ));
            }
        })
    }
}

impl Serialize for PushResponseBody {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        let ids = match self {
            PushResponseBody::Ok { mutations } => {
                m.serialize_entry("mutations", mutations)?;
                &None
            }
            PushResponseBody::UnsupportedPushVersion { mutation_ids } => {
                m.serialize_entry("error", "unsupportedPushVersion")?;
                mutation_ids
            }
            PushResponseBody::UnsupportedSchemaVersion { mutation_ids } => {
                m.serialize_entry("error", "unsupportedSchemaVersion")?;
                mutation_ids
            }
            PushResponseBody::Http {
                status,
                details,
                mutation_ids,
            } => {
                m.serialize_entry("error", "http")?;
                m.serialize_entry("status", status)?;
                m.serialize_entry("details", details)?;
                mutation_ids
            }
            PushResponseBody::ZeroPusher {
                details,
                mutation_ids,
            } => {
                m.serialize_entry("error", "zeroPusher")?;
                m.serialize_entry("details", details)?;
                mutation_ids
            }
        };
        if let Some(ids) = ids {
            m.serialize_entry("mutationIDs", ids)?;
        }
        m.end()
    }
}

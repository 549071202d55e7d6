//! The WebSocket messages of sync protocol v51 (`@rocicorp/zero` 1.9.0,
//! `packages/zero-protocol/src/{up,down}.ts`).
//!
//! Every frame is a JSON text `[tag, body]`. [`Upstream`] holds the client → server
//! messages, [`Downstream`] the server → client messages; both (de)serialize as that tuple.
//!
//! ```
//! use zc_protocol::messages::{Downstream, PokeEndBody, Upstream, parse_upstream};
//!
//! assert_eq!(parse_upstream(r#"["ping",{}]"#).unwrap(), Upstream::Ping);
//! let end = Downstream::PokeEnd(PokeEndBody::new("4g4f68", "4g4f68"));
//! assert_eq!(end.to_json(), r#"["pokeEnd",{"pokeID":"4g4f68","cookie":"4g4f68"}]"#);
//! ```
//!
//! # Validation
//!
//! Upstream parsing is strict like zero-cache's: unknown tags, missing members, wrong types
//! and unknown members are errors ([`MessageError`], which maps to an `InvalidMessage`
//! error body). Downstream parsing mirrors the client's "passthrough" mode: unknown members
//! of downstream-only bodies are ignored. Two leniencies remain on both sides: an optional
//! member given as `null` counts as absent, and a nested object given as a JSON array of its
//! members in declaration order is accepted (serde's derive allows it; message bodies
//! themselves must be objects).
//!
//! # Numbers
//!
//! Mutation ids and last mutation ids are `u64`, timestamps `i64`, TTLs `f64` (written as
//! integers when integral, like `JSON.stringify`). zero-cache refuses to send integers beyond
//! ±2^53; keep values in that range.
//!
//! # Member order
//!
//! Serialization writes members in the order zero-cache and the 1.9.0 client write them
//! (checked against captured traffic), so frames can be compared as text; the client itself
//! does not care about order.

mod connection;
mod error;
mod inspect;
mod json;
mod mutation;
mod poke;
mod query;

use serde::de::{self, DeserializeOwned, Deserializer};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

pub use connection::{
    ConnectedBody, DeleteClientsBody, InitConnectionBody, PullRequestBody, PullResponseBody,
    UpdateAuthBody,
};
pub use error::{
    BackoffError, BackoffErrorKind, BasicError, BasicErrorKind, ErrorBody, ErrorKind, ErrorOrigin,
    FailureCause, PushFailedBody, ServerFailureReason, TransformFailedBody, ZeroCacheFailureReason,
};
pub use inspect::{AnalyzeQueryOptions, InspectDownBody, InspectQueryRow, InspectUpBody};
pub use json::WireRow;
pub use mutation::{
    CLEANUP_RESULTS_MUTATION_NAME, CRUD_MUTATION_NAME, CrudMutation, CrudOp, CustomMutation,
    Mutation, MutationId, MutationResponse, MutationResult, PushBody, PushResponseBody,
};
pub use poke::{
    MutationPatchOp, PokeEndBody, PokePartBody, PokeStartBody, RowPatchOp, SchemaVersions,
};
pub use query::{
    ChangeDesiredQueriesBody, ClientSchema, ColumnSchema, ErroredQuery, QueriesPatchOp,
    TableSchema, UpQueriesPatchOp, ValueType,
};

use json::Empty;

/// A client → server message.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Upstream {
    /// `initConnection`: the desired queries (and schema) after `connected`, when they did not
    /// fit in the `Sec-WebSocket-Protocol` header.
    InitConnection(InitConnectionBody),
    /// `ping`: answer with [`Downstream::Pong`] within 5 s.
    Ping,
    /// `deleteClients`: clients the client deleted locally.
    DeleteClients(DeleteClientsBody),
    /// `changeDesiredQueries`: queries added, re-TTLed or dropped.
    ChangeDesiredQueries(ChangeDesiredQueriesBody),
    /// `pull`: never sent by 1.9.0.
    Pull(PullRequestBody),
    /// `updateAuth`: a new token.
    UpdateAuth(UpdateAuthBody),
    /// `push`: mutations.
    Push(PushBody),
    /// `closeConnection`: deprecated, never sent by 1.9.0; the body is not used.
    CloseConnection(Vec<Value>),
    /// `inspect`: inspector requests.
    Inspect(InspectUpBody),
    /// `ackMutationResponses`: mutation results up to this id may be deleted.
    AckMutationResponses(MutationId),
}

/// A server → client message.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Downstream {
    /// `connected`: the first message of every connection.
    Connected(ConnectedBody),
    /// `error`: the client disconnects on every kind except `MutationRateLimited`.
    Error(ErrorBody),
    /// `pong`: the answer to `ping`.
    Pong,
    /// `pokeStart`.
    PokeStart(PokeStartBody),
    /// `pokePart`.
    PokePart(PokePartBody),
    /// `pokeEnd`.
    PokeEnd(PokeEndBody),
    /// `pull`: the answer to an upstream `pull`.
    Pull(PullResponseBody),
    /// `deleteClients`: the clients the server deleted.
    DeleteClients(DeleteClientsBody),
    /// `pushResponse`: legacy mutation results.
    PushResponse(PushResponseBody),
    /// `inspect`: inspector answers.
    Inspect(InspectDownBody),
    /// `transformError`: per-query failures of the query endpoint (not fatal).
    TransformError(Vec<ErroredQuery>),
}

/// Why a frame is not a valid message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// Not JSON text.
    #[error("message is not valid JSON")]
    Json(#[source] serde_json::Error),
    /// Not a JSON array.
    #[error("message is not a [type, body] array")]
    NotAnArray,
    /// An array with other than two elements.
    #[error("message array has {len} elements instead of 2")]
    WrongLength {
        /// The number of elements.
        len: usize,
    },
    /// The first element is not a string.
    #[error("message type is not a string")]
    TypeNotAString,
    /// A type this direction does not have.
    #[error("unknown message type \"{tag}\"")]
    UnknownType {
        /// The type as sent.
        tag: String,
    },
    /// A known type where another one was required.
    #[error("expected a \"{expected}\" message, got \"{tag}\"")]
    UnexpectedType {
        /// The required type.
        expected: &'static str,
        /// The type as sent.
        tag: String,
    },
    /// The body does not fit the type's schema.
    #[error("invalid body of \"{tag}\" message at {path}")]
    InvalidBody {
        /// The message type.
        tag: &'static str,
        /// Where in the body: `.` for the body itself, otherwise e.g.
        /// `desiredQueriesPatch[0].ast` (inside `op`/`type`-tagged objects the path stops at
        /// the tagged object).
        path: String,
        /// What is wrong there.
        #[source]
        source: serde_json::Error,
    },
}

impl MessageError {
    /// The error and its cause in one line, e.g. ``invalid body of "ping" message at x:
    /// unknown field `x`, there are no fields at line 1 column 4`` (the position is within
    /// the body).
    pub fn describe(&self) -> String {
        match self {
            MessageError::Json(e) => format!("{self}: {e}"),
            MessageError::InvalidBody { source, .. } => format!("{self}: {source}"),
            _ => self.to_string(),
        }
    }

    /// The `InvalidMessage` error body to send before closing the connection.
    pub fn to_error_body(&self) -> ErrorBody {
        ErrorBody::invalid_message(self.describe())
    }
}

const UPSTREAM_TAGS: &[&str] = &[
    "initConnection",
    "ping",
    "deleteClients",
    "changeDesiredQueries",
    "pull",
    "updateAuth",
    "push",
    "closeConnection",
    "inspect",
    "ackMutationResponses",
];

const DOWNSTREAM_TAGS: &[&str] = &[
    "connected",
    "error",
    "pong",
    "pokeStart",
    "pokePart",
    "pokeEnd",
    "pull",
    "deleteClients",
    "pushResponse",
    "inspect",
    "transformError",
];

/// Finds `tag` among `tags`.
fn known_tag(tag: &str, tags: &'static [&'static str]) -> Result<&'static str, MessageError> {
    tags.iter()
        .find(|t| **t == tag)
        .copied()
        .ok_or_else(|| MessageError::UnknownType {
            tag: tag.to_owned(),
        })
}

/// Splits a frame value into its known tag (one of `tags`) and body.
fn split_value<'a>(
    value: &'a Value,
    tags: &'static [&'static str],
) -> Result<(&'static str, &'a Value), MessageError> {
    let items = value.as_array().ok_or(MessageError::NotAnArray)?;
    let [tag, body] = items.as_slice() else {
        return Err(MessageError::WrongLength { len: items.len() });
    };
    let tag = tag.as_str().ok_or(MessageError::TypeNotAString)?;
    Ok((known_tag(tag, tags)?, body))
}

/// Splits frame text into its known tag (one of `tags`) and the body's text, without
/// building a [`Value`] (whose maps would lose the members' order).
fn split_text<'a>(
    text: &'a str,
    tags: &'static [&'static str],
) -> Result<(&'static str, &'a str), MessageError> {
    let frame: &RawValue = serde_json::from_str(text).map_err(MessageError::Json)?;
    if !frame.get().starts_with('[') {
        return Err(MessageError::NotAnArray);
    }
    let items: Vec<&RawValue> = serde_json::from_str(frame.get()).map_err(MessageError::Json)?;
    let [tag, body] = items.as_slice() else {
        return Err(MessageError::WrongLength { len: items.len() });
    };
    let tag: String = serde_json::from_str(tag.get()).map_err(|_| MessageError::TypeNotAString)?;
    Ok((known_tag(&tag, tags)?, body.get()))
}

/// A message body to deserialize: frame text or an already decoded value.
#[derive(Clone, Copy)]
enum Body<'a> {
    Text(&'a str),
    Value(&'a Value),
}

impl Body<'_> {
    fn is_object(self) -> bool {
        match self {
            Body::Text(t) => t.starts_with('{'),
            Body::Value(v) => v.is_object(),
        }
    }

    /// Deserializes an object body, keeping the path of the first error.
    fn object<T: DeserializeOwned>(self, tag: &'static str) -> Result<T, MessageError> {
        if !self.is_object() {
            return Err(body_error(tag, ".", "expected an object"));
        }
        self.any(tag)
    }

    /// Deserializes a body of any shape, keeping the path of the first error.
    fn any<T: DeserializeOwned>(self, tag: &'static str) -> Result<T, MessageError> {
        let result = match self {
            Body::Text(t) => {
                serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(t))
            }
            Body::Value(v) => serde_path_to_error::deserialize(v),
        };
        result.map_err(|e| MessageError::InvalidBody {
            tag,
            path: e.path().to_string(),
            source: e.into_inner(),
        })
    }
}

fn body_error(tag: &'static str, path: &str, msg: &str) -> MessageError {
    MessageError::InvalidBody {
        tag,
        path: path.to_owned(),
        source: de::Error::custom(msg),
    }
}

/// Parses an upstream frame. Never panics; every failure is a [`MessageError`].
pub fn parse_upstream(text: &str) -> Result<Upstream, MessageError> {
    let (tag, body) = split_text(text, UPSTREAM_TAGS)?;
    Upstream::from_body(tag, Body::Text(body))
}

/// Parses a downstream frame (for test clients). Never panics.
pub fn parse_downstream(text: &str) -> Result<Downstream, MessageError> {
    let (tag, body) = split_text(text, DOWNSTREAM_TAGS)?;
    Downstream::from_body(tag, Body::Text(body))
}

impl Upstream {
    /// Parses an already decoded JSON frame. Prefer [`parse_upstream`]: a [`Value`] has
    /// lost the order of object members, which rows ([`WireRow`]) would otherwise keep.
    pub fn from_value(value: &Value) -> Result<Upstream, MessageError> {
        let (tag, body) = split_value(value, UPSTREAM_TAGS)?;
        Upstream::from_body(tag, Body::Value(body))
    }

    fn from_body(tag: &'static str, body: Body<'_>) -> Result<Upstream, MessageError> {
        Ok(match tag {
            "initConnection" => Upstream::InitConnection(body.object(tag)?),
            "ping" => {
                body.object::<Empty>(tag)?;
                Upstream::Ping
            }
            "deleteClients" => Upstream::DeleteClients(body.object(tag)?),
            "changeDesiredQueries" => Upstream::ChangeDesiredQueries(body.object(tag)?),
            "pull" => Upstream::Pull(body.object(tag)?),
            "updateAuth" => Upstream::UpdateAuth(body.object(tag)?),
            "push" => Upstream::Push(body.object(tag)?),
            "closeConnection" => Upstream::CloseConnection(body.any(tag)?),
            "inspect" => Upstream::Inspect(body.object(tag)?),
            "ackMutationResponses" => Upstream::AckMutationResponses(body.object(tag)?),
            other => {
                return Err(MessageError::UnknownType {
                    tag: other.to_owned(),
                });
            }
        })
    }

    /// The message type as written on the wire.
    pub fn tag(&self) -> &'static str {
        match self {
            Upstream::InitConnection(_) => "initConnection",
            Upstream::Ping => "ping",
            Upstream::DeleteClients(_) => "deleteClients",
            Upstream::ChangeDesiredQueries(_) => "changeDesiredQueries",
            Upstream::Pull(_) => "pull",
            Upstream::UpdateAuth(_) => "updateAuth",
            Upstream::Push(_) => "push",
            Upstream::CloseConnection(_) => "closeConnection",
            Upstream::Inspect(_) => "inspect",
            Upstream::AckMutationResponses(_) => "ackMutationResponses",
        }
    }

    /// The frame text.
    pub fn to_json(&self) -> String {
        to_json(self)
    }
}

impl Downstream {
    /// Parses an already decoded JSON frame. Prefer [`parse_downstream`]: a [`Value`] has
    /// lost the order of object members, which rows ([`WireRow`]) would otherwise keep.
    pub fn from_value(value: &Value) -> Result<Downstream, MessageError> {
        let (tag, body) = split_value(value, DOWNSTREAM_TAGS)?;
        Downstream::from_body(tag, Body::Value(body))
    }

    fn from_body(tag: &'static str, body: Body<'_>) -> Result<Downstream, MessageError> {
        Ok(match tag {
            "connected" => Downstream::Connected(body.object(tag)?),
            "error" => Downstream::Error(body.object(tag)?),
            "pong" => {
                if !body.is_object() {
                    return Err(body_error(tag, ".", "expected an object"));
                }
                Downstream::Pong
            }
            "pokeStart" => Downstream::PokeStart(body.object(tag)?),
            "pokePart" => Downstream::PokePart(body.object(tag)?),
            "pokeEnd" => Downstream::PokeEnd(body.object(tag)?),
            "pull" => Downstream::Pull(body.object(tag)?),
            "deleteClients" => Downstream::DeleteClients(body.object(tag)?),
            "pushResponse" => Downstream::PushResponse(body.object(tag)?),
            "inspect" => Downstream::Inspect(body.object(tag)?),
            "transformError" => Downstream::TransformError(body.any(tag)?),
            other => {
                return Err(MessageError::UnknownType {
                    tag: other.to_owned(),
                });
            }
        })
    }

    /// The message type as written on the wire.
    pub fn tag(&self) -> &'static str {
        match self {
            Downstream::Connected(_) => "connected",
            Downstream::Error(_) => "error",
            Downstream::Pong => "pong",
            Downstream::PokeStart(_) => "pokeStart",
            Downstream::PokePart(_) => "pokePart",
            Downstream::PokeEnd(_) => "pokeEnd",
            Downstream::Pull(_) => "pull",
            Downstream::DeleteClients(_) => "deleteClients",
            Downstream::PushResponse(_) => "pushResponse",
            Downstream::Inspect(_) => "inspect",
            Downstream::TransformError(_) => "transformError",
        }
    }

    /// The frame text.
    pub fn to_json(&self) -> String {
        to_json(self)
    }
}

impl From<ErrorBody> for Downstream {
    fn from(body: ErrorBody) -> Self {
        Downstream::Error(body)
    }
}

fn to_json<T: Serialize>(message: &T) -> String {
    // Every message serializes to JSON: all maps have string keys and no custom
    // serializer fails.
    serde_json::to_string(message).expect("invariant: messages always serialize to JSON")
}

fn tuple<S: Serializer, B: Serialize + ?Sized>(
    s: S,
    tag: &'static str,
    body: &B,
) -> Result<S::Ok, S::Error> {
    let mut t = s.serialize_tuple(2)?;
    t.serialize_element(tag)?;
    t.serialize_element(body)?;
    t.end()
}

impl Serialize for Upstream {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let tag = self.tag();
        match self {
            Upstream::InitConnection(b) => tuple(s, tag, b),
            Upstream::Ping => tuple(s, tag, &Empty {}),
            Upstream::DeleteClients(b) => tuple(s, tag, b),
            Upstream::ChangeDesiredQueries(b) => tuple(s, tag, b),
            Upstream::Pull(b) => tuple(s, tag, b),
            Upstream::UpdateAuth(b) => tuple(s, tag, b),
            Upstream::Push(b) => tuple(s, tag, b),
            Upstream::CloseConnection(b) => tuple(s, tag, b),
            Upstream::Inspect(b) => tuple(s, tag, b),
            Upstream::AckMutationResponses(b) => tuple(s, tag, b),
        }
    }
}

impl Serialize for Downstream {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let tag = self.tag();
        match self {
            Downstream::Connected(b) => tuple(s, tag, b),
            Downstream::Error(b) => tuple(s, tag, b),
            Downstream::Pong => tuple(s, tag, &Empty {}),
            Downstream::PokeStart(b) => tuple(s, tag, b),
            Downstream::PokePart(b) => tuple(s, tag, b),
            Downstream::PokeEnd(b) => tuple(s, tag, b),
            Downstream::Pull(b) => tuple(s, tag, b),
            Downstream::DeleteClients(b) => tuple(s, tag, b),
            Downstream::PushResponse(b) => tuple(s, tag, b),
            Downstream::Inspect(b) => tuple(s, tag, b),
            Downstream::TransformError(b) => tuple(s, tag, b),
        }
    }
}

impl<'de> Deserialize<'de> for Upstream {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        Upstream::from_value(&value).map_err(|e| de::Error::custom(e.describe()))
    }
}

impl<'de> Deserialize<'de> for Downstream {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        Downstream::from_value(&value).map_err(|e| de::Error::custom(e.describe()))
    }
}

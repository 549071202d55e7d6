//! Error bodies of the downstream `["error", body]` message (`packages/zero-protocol/src/error.ts`).
//!
//! Four shapes share the `kind`/`message`/`origin` members: basic errors, backoff errors
//! (`Rebalance`, `Rehome`, `ServerOverloaded`) and the two endpoint failures `PushFailed` and
//! `TransformFailed`, which carry the failed ids and a cause (`origin` + `reason`).
//!
//! The 1.9.0 client only treats an error as a server error when `origin` is present, so the
//! constructors here always set `origin: "zeroCache"`.

use std::collections::BTreeMap;
use std::fmt;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::connect::PROTOCOL_VERSION;
use crate::messages::json::present;
use crate::messages::mutation::MutationId;

/// Every error kind of protocol v51 (`error-kind-enum.ts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The app rejected the token (deprecated JWT path); the client asks for new auth.
    AuthInvalidated,
    /// The server has no state for the client's cookie; the client drops its group.
    ClientNotFound,
    /// Handshake data is invalid or incomplete.
    InvalidConnectionRequest,
    /// The client's base cookie is ahead of the server.
    InvalidConnectionRequestBaseCookie,
    /// The client's last mutation id is ahead of the server.
    #[serde(rename = "InvalidConnectionRequestLastMutationID")]
    InvalidConnectionRequestLastMutationId,
    /// The server deleted the client.
    InvalidConnectionRequestClientDeleted,
    /// An upstream message failed JSON parsing or schema validation.
    InvalidMessage,
    /// A push could not be applied (wrong group, out-of-order id, no mutate URL).
    InvalidPush,
    /// The mutate endpoint failed.
    PushFailed,
    /// A CRUD mutation failed (transient).
    MutationFailed,
    /// Per-user CRUD rate limit; the only kind that does not disconnect the client.
    MutationRateLimited,
    /// Reconnect after a backoff (load balancing).
    Rebalance,
    /// Reconnect after a backoff (the client group moved).
    Rehome,
    /// The query endpoint failed.
    TransformFailed,
    /// The request is not authorized; the client asks for new auth.
    Unauthorized,
    /// The URL's sync protocol version is outside the supported range.
    VersionNotSupported,
    /// The client schema does not fit the replica.
    SchemaVersionNotSupported,
    /// Reconnect after a backoff (overload).
    ServerOverloaded,
    /// Anything unexpected.
    Internal,
}

impl ErrorKind {
    /// The kind as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::AuthInvalidated => "AuthInvalidated",
            ErrorKind::ClientNotFound => "ClientNotFound",
            ErrorKind::InvalidConnectionRequest => "InvalidConnectionRequest",
            ErrorKind::InvalidConnectionRequestBaseCookie => "InvalidConnectionRequestBaseCookie",
            ErrorKind::InvalidConnectionRequestLastMutationId => {
                "InvalidConnectionRequestLastMutationID"
            }
            ErrorKind::InvalidConnectionRequestClientDeleted => {
                "InvalidConnectionRequestClientDeleted"
            }
            ErrorKind::InvalidMessage => "InvalidMessage",
            ErrorKind::InvalidPush => "InvalidPush",
            ErrorKind::PushFailed => "PushFailed",
            ErrorKind::MutationFailed => "MutationFailed",
            ErrorKind::MutationRateLimited => "MutationRateLimited",
            ErrorKind::Rebalance => "Rebalance",
            ErrorKind::Rehome => "Rehome",
            ErrorKind::TransformFailed => "TransformFailed",
            ErrorKind::Unauthorized => "Unauthorized",
            ErrorKind::VersionNotSupported => "VersionNotSupported",
            ErrorKind::SchemaVersionNotSupported => "SchemaVersionNotSupported",
            ErrorKind::ServerOverloaded => "ServerOverloaded",
            ErrorKind::Internal => "Internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kinds that use the basic body `{kind, message, origin?}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BasicErrorKind {
    /// See [`ErrorKind::AuthInvalidated`].
    AuthInvalidated,
    /// See [`ErrorKind::ClientNotFound`].
    ClientNotFound,
    /// See [`ErrorKind::InvalidConnectionRequest`].
    InvalidConnectionRequest,
    /// See [`ErrorKind::InvalidConnectionRequestBaseCookie`].
    InvalidConnectionRequestBaseCookie,
    /// See [`ErrorKind::InvalidConnectionRequestLastMutationId`].
    InvalidConnectionRequestLastMutationId,
    /// See [`ErrorKind::InvalidConnectionRequestClientDeleted`].
    InvalidConnectionRequestClientDeleted,
    /// See [`ErrorKind::InvalidMessage`].
    InvalidMessage,
    /// See [`ErrorKind::InvalidPush`].
    InvalidPush,
    /// See [`ErrorKind::MutationRateLimited`].
    MutationRateLimited,
    /// See [`ErrorKind::MutationFailed`].
    MutationFailed,
    /// See [`ErrorKind::Unauthorized`].
    Unauthorized,
    /// See [`ErrorKind::VersionNotSupported`].
    VersionNotSupported,
    /// See [`ErrorKind::SchemaVersionNotSupported`].
    SchemaVersionNotSupported,
    /// See [`ErrorKind::Internal`].
    Internal,
}

impl From<BasicErrorKind> for ErrorKind {
    fn from(k: BasicErrorKind) -> Self {
        match k {
            BasicErrorKind::AuthInvalidated => ErrorKind::AuthInvalidated,
            BasicErrorKind::ClientNotFound => ErrorKind::ClientNotFound,
            BasicErrorKind::InvalidConnectionRequest => ErrorKind::InvalidConnectionRequest,
            BasicErrorKind::InvalidConnectionRequestBaseCookie => {
                ErrorKind::InvalidConnectionRequestBaseCookie
            }
            BasicErrorKind::InvalidConnectionRequestLastMutationId => {
                ErrorKind::InvalidConnectionRequestLastMutationId
            }
            BasicErrorKind::InvalidConnectionRequestClientDeleted => {
                ErrorKind::InvalidConnectionRequestClientDeleted
            }
            BasicErrorKind::InvalidMessage => ErrorKind::InvalidMessage,
            BasicErrorKind::InvalidPush => ErrorKind::InvalidPush,
            BasicErrorKind::MutationRateLimited => ErrorKind::MutationRateLimited,
            BasicErrorKind::MutationFailed => ErrorKind::MutationFailed,
            BasicErrorKind::Unauthorized => ErrorKind::Unauthorized,
            BasicErrorKind::VersionNotSupported => ErrorKind::VersionNotSupported,
            BasicErrorKind::SchemaVersionNotSupported => ErrorKind::SchemaVersionNotSupported,
            BasicErrorKind::Internal => ErrorKind::Internal,
        }
    }
}

impl TryFrom<ErrorKind> for BasicErrorKind {
    type Error = ErrorKind;
    fn try_from(k: ErrorKind) -> Result<Self, ErrorKind> {
        Ok(match k {
            ErrorKind::AuthInvalidated => BasicErrorKind::AuthInvalidated,
            ErrorKind::ClientNotFound => BasicErrorKind::ClientNotFound,
            ErrorKind::InvalidConnectionRequest => BasicErrorKind::InvalidConnectionRequest,
            ErrorKind::InvalidConnectionRequestBaseCookie => {
                BasicErrorKind::InvalidConnectionRequestBaseCookie
            }
            ErrorKind::InvalidConnectionRequestLastMutationId => {
                BasicErrorKind::InvalidConnectionRequestLastMutationId
            }
            ErrorKind::InvalidConnectionRequestClientDeleted => {
                BasicErrorKind::InvalidConnectionRequestClientDeleted
            }
            ErrorKind::InvalidMessage => BasicErrorKind::InvalidMessage,
            ErrorKind::InvalidPush => BasicErrorKind::InvalidPush,
            ErrorKind::MutationRateLimited => BasicErrorKind::MutationRateLimited,
            ErrorKind::MutationFailed => BasicErrorKind::MutationFailed,
            ErrorKind::Unauthorized => BasicErrorKind::Unauthorized,
            ErrorKind::VersionNotSupported => BasicErrorKind::VersionNotSupported,
            ErrorKind::SchemaVersionNotSupported => BasicErrorKind::SchemaVersionNotSupported,
            ErrorKind::Internal => BasicErrorKind::Internal,
            other => return Err(other),
        })
    }
}

/// The kinds that use the backoff body: the client reconnects after a delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackoffErrorKind {
    /// See [`ErrorKind::Rebalance`].
    Rebalance,
    /// See [`ErrorKind::Rehome`].
    Rehome,
    /// See [`ErrorKind::ServerOverloaded`].
    ServerOverloaded,
}

impl From<BackoffErrorKind> for ErrorKind {
    fn from(k: BackoffErrorKind) -> Self {
        match k {
            BackoffErrorKind::Rebalance => ErrorKind::Rebalance,
            BackoffErrorKind::Rehome => ErrorKind::Rehome,
            BackoffErrorKind::ServerOverloaded => ErrorKind::ServerOverloaded,
        }
    }
}

/// Who produced an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorOrigin {
    /// The app server (mutate or query endpoint).
    #[serde(rename = "server")]
    Server,
    /// zero-cache (or zc).
    #[serde(rename = "zeroCache")]
    ZeroCache,
}

impl ErrorOrigin {
    /// The origin as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorOrigin::Server => "server",
            ErrorOrigin::ZeroCache => "zeroCache",
        }
    }
}

/// `{kind, message, origin?}`.
#[derive(Debug, Clone, PartialEq)]
pub struct BasicError {
    /// The kind.
    pub kind: BasicErrorKind,
    /// Human-readable text.
    pub message: String,
    /// Optional on the wire, but the client needs it to recognise a server error.
    pub origin: Option<ErrorOrigin>,
}

/// `{kind, message, minBackoffMs?, maxBackoffMs?, reconnectParams?, origin?}`.
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffError {
    /// The kind.
    pub kind: BackoffErrorKind,
    /// Human-readable text.
    pub message: String,
    /// Lower bound of the reconnect delay (the client waits at least 5 s anyway).
    pub min_backoff_ms: Option<u64>,
    /// Upper bound of the reconnect delay.
    pub max_backoff_ms: Option<u64>,
    /// Query parameters added to the next connect URL only.
    pub reconnect_params: Option<BTreeMap<String, String>>,
    /// Only `zeroCache` is allowed here.
    pub origin: Option<ErrorOrigin>,
}

/// Reasons an app server gives for a failed push or transform (`origin: "server"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ServerFailureReason {
    /// `database`
    Database,
    /// `parse`
    Parse,
    /// `oooMutation` (pushes only)
    OutOfOrderMutation,
    /// `unsupportedPushVersion` (pushes only)
    UnsupportedPushVersion,
    /// `internal`
    Internal,
}

impl ServerFailureReason {
    /// The reason as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerFailureReason::Database => "database",
            ServerFailureReason::Parse => "parse",
            ServerFailureReason::OutOfOrderMutation => "oooMutation",
            ServerFailureReason::UnsupportedPushVersion => "unsupportedPushVersion",
            ServerFailureReason::Internal => "internal",
        }
    }
}

/// Reasons zero-cache gives for a failed call to an app endpoint, other than HTTP errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ZeroCacheFailureReason {
    /// `timeout`
    Timeout,
    /// `parse`: the response could not be parsed.
    Parse,
    /// `internal`
    Internal,
}

impl ZeroCacheFailureReason {
    /// The reason as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ZeroCacheFailureReason::Timeout => "timeout",
            ZeroCacheFailureReason::Parse => "parse",
            ZeroCacheFailureReason::Internal => "internal",
        }
    }
}

/// Why a push or transform failed: the `origin`/`reason` (+ `status`, `bodyPreview`) members.
#[derive(Debug, Clone, PartialEq)]
pub enum FailureCause {
    /// `origin: "server"`: the app server answered with a failure body.
    Server(ServerFailureReason),
    /// `origin: "zeroCache", reason: "http"`: the endpoint answered with a non-2xx status.
    /// The client asks for new auth on 401 and 403.
    Http {
        /// The HTTP status.
        status: u16,
        /// The start of the response body.
        body_preview: Option<String>,
    },
    /// `origin: "zeroCache"` with another reason.
    ZeroCache(ZeroCacheFailureReason),
}

impl FailureCause {
    /// The `origin` member.
    pub fn origin(&self) -> ErrorOrigin {
        match self {
            FailureCause::Server(_) => ErrorOrigin::Server,
            FailureCause::Http { .. } | FailureCause::ZeroCache(_) => ErrorOrigin::ZeroCache,
        }
    }

    /// The `reason` member.
    pub fn reason(&self) -> &'static str {
        match self {
            FailureCause::Server(r) => r.as_str(),
            FailureCause::Http { .. } => "http",
            FailureCause::ZeroCache(r) => r.as_str(),
        }
    }
}

/// `PushFailed`: the mutate endpoint failed for these mutations.
#[derive(Debug, Clone, PartialEq)]
pub struct PushFailedBody {
    /// Human-readable text.
    pub message: String,
    /// The mutations that failed (possibly a subset of the push).
    pub mutation_ids: Vec<MutationId>,
    /// Extra data from the app.
    pub details: Option<Value>,
    /// Origin and reason.
    pub cause: FailureCause,
}

/// `TransformFailed`: the query endpoint failed for these queries.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformFailedBody {
    /// Human-readable text.
    pub message: String,
    /// The query ids (hashes) that failed.
    pub query_ids: Vec<String>,
    /// Extra data from the app.
    pub details: Option<Value>,
    /// Origin and reason (`oooMutation`/`unsupportedPushVersion` are not allowed here).
    pub cause: FailureCause,
}

/// The body of `["error", body]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawErrorBody")]
#[non_exhaustive]
pub enum ErrorBody {
    /// Most kinds.
    Basic(BasicError),
    /// `Rebalance`, `Rehome`, `ServerOverloaded`.
    Backoff(BackoffError),
    /// `PushFailed`.
    PushFailed(PushFailedBody),
    /// `TransformFailed`.
    TransformFailed(TransformFailedBody),
}

impl ErrorBody {
    /// A basic error with `origin: "zeroCache"`.
    pub fn basic(kind: BasicErrorKind, message: impl Into<String>) -> Self {
        ErrorBody::Basic(BasicError {
            kind,
            message: message.into(),
            origin: Some(ErrorOrigin::ZeroCache),
        })
    }

    /// `VersionNotSupported` for a client at `client_version`, worded like zero-cache:
    /// `server is at sync protocol v51 and does not support v99. The server must be updated
    /// to a newer release.` ("client" instead of "server" for too-old clients).
    pub fn version_not_supported(client_version: u32) -> Self {
        let who = if client_version > PROTOCOL_VERSION {
            "server"
        } else {
            "client"
        };
        Self::basic(
            BasicErrorKind::VersionNotSupported,
            format!(
                "server is at sync protocol v{PROTOCOL_VERSION} and does not support \
                 v{client_version}. The {who} must be updated to a newer release."
            ),
        )
    }

    /// `InvalidMessage`: an upstream frame was not JSON or failed validation.
    pub fn invalid_message(message: impl Into<String>) -> Self {
        Self::basic(BasicErrorKind::InvalidMessage, message)
    }

    /// `InvalidConnectionRequest`, e.g. a new client group without a client schema.
    pub fn invalid_connection_request(message: impl Into<String>) -> Self {
        Self::basic(BasicErrorKind::InvalidConnectionRequest, message)
    }

    /// `InvalidConnectionRequestBaseCookie`: the client's cookie is ahead of the server.
    pub fn invalid_connection_request_base_cookie(message: impl Into<String>) -> Self {
        Self::basic(BasicErrorKind::InvalidConnectionRequestBaseCookie, message)
    }

    /// `ClientNotFound` with zero-cache's message `Client not found`.
    pub fn client_not_found() -> Self {
        Self::basic(BasicErrorKind::ClientNotFound, "Client not found")
    }

    /// `InvalidPush`, e.g. an out-of-order mutation id or another client group.
    pub fn invalid_push(message: impl Into<String>) -> Self {
        Self::basic(BasicErrorKind::InvalidPush, message)
    }

    /// `Unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::basic(BasicErrorKind::Unauthorized, message)
    }

    /// `AuthInvalidated`.
    pub fn auth_invalidated(message: impl Into<String>) -> Self {
        Self::basic(BasicErrorKind::AuthInvalidated, message)
    }

    /// `SchemaVersionNotSupported`: the client schema does not fit the replica.
    pub fn schema_version_not_supported(message: impl Into<String>) -> Self {
        Self::basic(BasicErrorKind::SchemaVersionNotSupported, message)
    }

    /// `MutationFailed` (sent without closing the connection).
    pub fn mutation_failed(message: impl Into<String>) -> Self {
        Self::basic(BasicErrorKind::MutationFailed, message)
    }

    /// `MutationRateLimited` (the client stays connected).
    pub fn mutation_rate_limited(message: impl Into<String>) -> Self {
        Self::basic(BasicErrorKind::MutationRateLimited, message)
    }

    /// `Internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::basic(BasicErrorKind::Internal, message)
    }

    /// A backoff error with `origin: "zeroCache"`.
    pub fn backoff(
        kind: BackoffErrorKind,
        message: impl Into<String>,
        min_backoff_ms: Option<u64>,
        max_backoff_ms: Option<u64>,
    ) -> Self {
        ErrorBody::Backoff(BackoffError {
            kind,
            message: message.into(),
            min_backoff_ms,
            max_backoff_ms,
            reconnect_params: None,
            origin: Some(ErrorOrigin::ZeroCache),
        })
    }

    /// `PushFailed`.
    pub fn push_failed(
        message: impl Into<String>,
        mutation_ids: Vec<MutationId>,
        cause: FailureCause,
    ) -> Self {
        ErrorBody::PushFailed(PushFailedBody {
            message: message.into(),
            mutation_ids,
            details: None,
            cause,
        })
    }

    /// `TransformFailed`.
    pub fn transform_failed(
        message: impl Into<String>,
        query_ids: Vec<String>,
        cause: FailureCause,
    ) -> Self {
        ErrorBody::TransformFailed(TransformFailedBody {
            message: message.into(),
            query_ids,
            details: None,
            cause,
        })
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ErrorBody::Basic(b) => b.kind.into(),
            ErrorBody::Backoff(b) => b.kind.into(),
            ErrorBody::PushFailed(_) => ErrorKind::PushFailed,
            ErrorBody::TransformFailed(_) => ErrorKind::TransformFailed,
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        match self {
            ErrorBody::Basic(b) => &b.message,
            ErrorBody::Backoff(b) => &b.message,
            ErrorBody::PushFailed(b) => &b.message,
            ErrorBody::TransformFailed(b) => &b.message,
        }
    }

    /// The origin, if any.
    pub fn origin(&self) -> Option<ErrorOrigin> {
        match self {
            ErrorBody::Basic(b) => b.origin,
            ErrorBody::Backoff(b) => b.origin,
            ErrorBody::PushFailed(b) => Some(b.cause.origin()),
            ErrorBody::TransformFailed(b) => Some(b.cause.origin()),
        }
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

/// Mutation ids written `{id, clientID}`, the order zero-cache uses in `PushFailed` (elsewhere
/// it writes `{clientID, id}`).
struct IdFirst<'a>(&'a [MutationId]);

impl Serialize for IdFirst<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Id<'a> {
            id: u64,
            #[serde(rename = "clientID")]
            client_id: &'a str,
        }
        s.collect_seq(self.0.iter().map(|m| Id {
            id: m.id,
            client_id: &m.client_id,
        }))
    }
}

fn serialize_cause<M: SerializeMap>(m: &mut M, cause: &FailureCause) -> Result<(), M::Error> {
    m.serialize_entry("origin", cause.origin().as_str())?;
    m.serialize_entry("reason", cause.reason())?;
    Ok(())
}

impl Serialize for ErrorBody {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        match self {
            ErrorBody::Basic(b) => {
                m.serialize_entry("kind", &ErrorKind::from(b.kind))?;
                m.serialize_entry("message", &b.message)?;
                if let Some(o) = b.origin {
                    m.serialize_entry("origin", &o)?;
                }
            }
            ErrorBody::Backoff(b) => {
                m.serialize_entry("kind", &ErrorKind::from(b.kind))?;
                m.serialize_entry("message", &b.message)?;
                if let Some(v) = b.min_backoff_ms {
                    m.serialize_entry("minBackoffMs", &v)?;
                }
                if let Some(v) = b.max_backoff_ms {
                    m.serialize_entry("maxBackoffMs", &v)?;
                }
                if let Some(v) = &b.reconnect_params {
                    m.serialize_entry("reconnectParams", v)?;
                }
                if let Some(o) = b.origin {
                    m.serialize_entry("origin", &o)?;
                }
            }
            ErrorBody::PushFailed(b) => {
                m.serialize_entry("kind", &ErrorKind::PushFailed)?;
                serialize_cause(&mut m, &b.cause)?;
                m.serialize_entry("message", &b.message)?;
                if let FailureCause::Http {
                    status,
                    body_preview,
                } = &b.cause
                {
                    m.serialize_entry("status", status)?;
                    if let Some(p) = body_preview {
                        m.serialize_entry("bodyPreview", p)?;
                    }
                }
                m.serialize_entry("mutationIDs", &IdFirst(&b.mutation_ids))?;
                if let Some(d) = &b.details {
                    m.serialize_entry("details", d)?;
                }
            }
            ErrorBody::TransformFailed(b) => {
                m.serialize_entry("kind", &ErrorKind::TransformFailed)?;
                serialize_cause(&mut m, &b.cause)?;
                m.serialize_entry("message", &b.message)?;
                if let FailureCause::Http {
                    status,
                    body_preview,
                } = &b.cause
                {
                    m.serialize_entry("status", status)?;
                    if let Some(p) = body_preview {
                        m.serialize_entry("bodyPreview", p)?;
                    }
                }
                m.serialize_entry("queryIDs", &b.query_ids)?;
                if let Some(d) = &b.details {
                    m.serialize_entry("details", d)?;
                }
            }
        }
        m.end()
    }
}

/// Every member any error body may have; validated into [`ErrorBody`]. Unknown members are
/// ignored, as the client does.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawErrorBody {
    kind: ErrorKind,
    message: String,
    #[serde(default)]
    origin: Option<ErrorOrigin>,
    #[serde(default)]
    min_backoff_ms: Option<u64>,
    #[serde(default)]
    max_backoff_ms: Option<u64>,
    #[serde(default)]
    reconnect_params: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "mutationIDs")]
    mutation_ids: Option<Vec<MutationId>>,
    #[serde(default, rename = "queryIDs")]
    query_ids: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    details: Option<Value>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    body_preview: Option<String>,
}

fn cause(raw: &mut RawErrorBody, push: bool) -> Result<FailureCause, String> {
    let kind = raw.kind;
    let reason = raw
        .reason
        .take()
        .ok_or_else(|| format!("missing field `reason` in {kind} error"))?;
    let bad = || format!("invalid reason \"{reason}\" for origin of {kind} error");
    match raw.origin {
        None => Err(format!("missing field `origin` in {kind} error")),
        Some(ErrorOrigin::Server) => Ok(FailureCause::Server(match reason.as_str() {
            "database" => ServerFailureReason::Database,
            "parse" => ServerFailureReason::Parse,
            "internal" => ServerFailureReason::Internal,
            "oooMutation" if push => ServerFailureReason::OutOfOrderMutation,
            "unsupportedPushVersion" if push => ServerFailureReason::UnsupportedPushVersion,
            _ => return Err(bad()),
        })),
        Some(ErrorOrigin::ZeroCache) => match reason.as_str() {
            "http" => Ok(FailureCause::Http {
                status: raw
                    .status
                    .ok_or_else(|| format!("missing field `status` in {kind} error"))?,
                body_preview: raw.body_preview.take(),
            }),
            "timeout" => Ok(FailureCause::ZeroCache(ZeroCacheFailureReason::Timeout)),
            "parse" => Ok(FailureCause::ZeroCache(ZeroCacheFailureReason::Parse)),
            "internal" => Ok(FailureCause::ZeroCache(ZeroCacheFailureReason::Internal)),
            _ => Err(bad()),
        },
    }
}

impl TryFrom<RawErrorBody> for ErrorBody {
    type Error = String;

    fn try_from(mut raw: RawErrorBody) -> Result<Self, String> {
        let kind = raw.kind;
        match kind {
            ErrorKind::PushFailed => {
                let cause = cause(&mut raw, true)?;
                Ok(ErrorBody::PushFailed(PushFailedBody {
                    message: raw.message,
                    mutation_ids: raw
                        .mutation_ids
                        .ok_or("missing field `mutationIDs` in PushFailed error")?,
                    details: raw.details,
                    cause,
                }))
            }
            ErrorKind::TransformFailed => {
                let cause = cause(&mut raw, false)?;
                Ok(ErrorBody::TransformFailed(TransformFailedBody {
                    message: raw.message,
                    query_ids: raw
                        .query_ids
                        .ok_or("missing field `queryIDs` in TransformFailed error")?,
                    details: raw.details,
                    cause,
                }))
            }
            ErrorKind::Rebalance | ErrorKind::Rehome | ErrorKind::ServerOverloaded => {
                if raw.origin == Some(ErrorOrigin::Server) {
                    return Err(format!("origin of {kind} error must be \"zeroCache\""));
                }
                Ok(ErrorBody::Backoff(BackoffError {
                    kind: match kind {
                        ErrorKind::Rebalance => BackoffErrorKind::Rebalance,
                        ErrorKind::Rehome => BackoffErrorKind::Rehome,
                        _ => BackoffErrorKind::ServerOverloaded,
                    },
                    message: raw.message,
                    min_backoff_ms: raw.min_backoff_ms,
                    max_backoff_ms: raw.max_backoff_ms,
                    reconnect_params: raw.reconnect_params,
                    origin: raw.origin,
                }))
            }
            other => {
                let kind = BasicErrorKind::try_from(other)
                    .map_err(|k| format!("unexpected error kind {k}"))?;
                Ok(ErrorBody::Basic(BasicError {
                    kind,
                    message: raw.message,
                    origin: raw.origin,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(json: &str) -> ErrorBody {
        let body: ErrorBody = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
        let back = serde_json::to_value(&body).unwrap();
        let want: Value = serde_json::from_str(json).unwrap();
        assert_eq!(back, want);
        body
    }

    #[test]
    fn every_shape_round_trips() {
        let b = round_trip(
            r#"{"kind":"ClientNotFound","message":"Client not found","origin":"zeroCache"}"#,
        );
        assert_eq!(b, ErrorBody::client_not_found());
        round_trip(r#"{"kind":"Internal","message":"x"}"#);
        round_trip(
            r#"{"kind":"Rehome","message":"moved","minBackoffMs":10,"maxBackoffMs":100,"reconnectParams":{"a":"b"},"origin":"zeroCache"}"#,
        );
        round_trip(
            r#"{"kind":"PushFailed","origin":"zeroCache","reason":"http","message":"m","status":401,"mutationIDs":[{"id":1,"clientID":"c1"}]}"#,
        );
        round_trip(
            r#"{"kind":"PushFailed","origin":"server","reason":"oooMutation","message":"m","mutationIDs":[],"details":null}"#,
        );
        round_trip(
            r#"{"kind":"TransformFailed","origin":"zeroCache","reason":"timeout","message":"m","queryIDs":["q"],"details":{"x":1}}"#,
        );
        round_trip(
            r#"{"kind":"TransformFailed","origin":"zeroCache","reason":"http","message":"m","status":500,"bodyPreview":"oops","queryIDs":["q"]}"#,
        );
    }

    #[test]
    fn invalid_bodies_are_rejected() {
        for (json, needle) in [
            (r#"{"kind":"Nope","message":"m"}"#, "Nope"),
            (r#"{"kind":"Internal"}"#, "message"),
            (
                r#"{"kind":"PushFailed","message":"m","origin":"server","reason":"database"}"#,
                "mutationIDs",
            ),
            (
                r#"{"kind":"TransformFailed","message":"m","origin":"server","reason":"oooMutation","queryIDs":[]}"#,
                "oooMutation",
            ),
            (
                r#"{"kind":"PushFailed","message":"m","origin":"zeroCache","reason":"http","mutationIDs":[]}"#,
                "status",
            ),
            (
                r#"{"kind":"Rehome","message":"m","origin":"server"}"#,
                "zeroCache",
            ),
        ] {
            let err = serde_json::from_str::<ErrorBody>(json)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
    }

    #[test]
    fn kind_names_match_serde() {
        use ErrorKind::*;
        for k in [
            AuthInvalidated,
            ClientNotFound,
            InvalidConnectionRequest,
            InvalidConnectionRequestBaseCookie,
            InvalidConnectionRequestLastMutationId,
            InvalidConnectionRequestClientDeleted,
            InvalidMessage,
            InvalidPush,
            PushFailed,
            MutationFailed,
            MutationRateLimited,
            Rebalance,
            Rehome,
            TransformFailed,
            Unauthorized,
            VersionNotSupported,
            SchemaVersionNotSupported,
            ServerOverloaded,
            Internal,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), Value::from(k.as_str()));
            let body = format!(
                r#"{{"kind":"{k}","message":"m","origin":"zeroCache","reason":"internal","mutationIDs":[],"queryIDs":[]}}"#
            );
            let parsed: ErrorBody = serde_json::from_str(&body).unwrap();
            assert_eq!(parsed.kind(), k);
            assert_eq!(parsed.origin(), Some(ErrorOrigin::ZeroCache));
        }
    }

    #[test]
    fn version_not_supported_is_worded_like_zero_cache() {
        assert_eq!(
            serde_json::to_string(&ErrorBody::version_not_supported(99)).unwrap(),
            r#"{"kind":"VersionNotSupported","message":"server is at sync protocol v51 and does not support v99. The server must be updated to a newer release.","origin":"zeroCache"}"#
        );
        assert!(
            ErrorBody::version_not_supported(29)
                .message()
                .ends_with("The client must be updated to a newer release.")
        );
    }
}

//! The WebSocket connect request: `GET {base}/sync/v{N}/connect?clientID=…` with the
//! `initConnection` message and the auth token in the `Sec-WebSocket-Protocol` header
//! (protocol notes §2; `packages/zero-protocol/src/connect.ts`,
//! `packages/zero-cache/src/workers/connect-params.ts`).
//!
//! ```
//! use zc_protocol::connect::{decode_sec_protocol, encode_sec_protocol, parse_connect_request};
//!
//! let header = encode_sec_protocol(None, Some("token-abc"));
//! let req = parse_connect_request(
//!     "/sync/v51/connect?clientID=c1&clientGroupID=g1&baseCookie=&ts=386.8&lmid=0&wsid=w1",
//!     Some(&header),
//! )
//! .unwrap();
//! assert_eq!(req.path.version, 51);
//! assert_eq!(req.params.client_id, "c1");
//! assert_eq!(req.params.base_cookie, None);
//! assert_eq!(req.params.timestamp, 386);
//! assert_eq!(req.sec_protocol.auth_token.as_deref(), Some("token-abc"));
//! assert_eq!(decode_sec_protocol("e30%3D").unwrap().auth_token, None); // "{}"
//! ```
//!
//! # Failures, as zero-cache reports them
//!
//! zero-cache never rejects the HTTP upgrade. A bad path, a missing or malformed parameter,
//! or an undecodable header closes the socket right after the upgrade with code 1002 and the
//! error text as reason ([`ConnectError::close_reason`]). An unsupported version, or an
//! invalid `initConnection` message inside a well-formed header, is reported with an
//! `["error", …]` message instead ([`ConnectError::error_body`]). [`parse_connect_request`]
//! checks in zero-cache's order: path, parameters, header encoding, version, header message.

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::messages::{ErrorBody, InitConnectionBody, MessageError, Upstream, parse_upstream};

/// The sync protocol version of `@rocicorp/zero` 1.9.0.
pub const PROTOCOL_VERSION: u32 = 51;

/// The oldest client protocol version zero-cache 1.9.0 serves.
pub const MIN_SERVER_SUPPORTED_SYNC_PROTOCOL: u32 = 30;

/// Longest WebSocket close reason in bytes (RFC 6455 control frame limit).
const MAX_CLOSE_REASON: usize = 123;

/// True when a client at `version` can be served (30..=51).
pub fn is_supported_version(version: u32) -> bool {
    (MIN_SERVER_SUPPORTED_SYNC_PROTOCOL..=PROTOCOL_VERSION).contains(&version)
}

/// The request path for a protocol version: `/sync/v{version}/connect`.
pub fn connect_path(version: u32) -> String {
    format!("/sync/v{version}/connect")
}

/// Why a connect request cannot be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The path is not `[/base]/sync/v{N}/{action}`.
    #[error("Invalid URL: {target}")]
    InvalidPath {
        /// The request target.
        target: String,
    },
    /// The `v{N}` segment is not a number.
    #[error("Invalid version: {target}")]
    InvalidVersion {
        /// The request target.
        target: String,
    },
    /// A required query parameter is missing or empty.
    #[error("invalid querystring - missing {name}")]
    MissingParam {
        /// The parameter.
        name: &'static str,
    },
    /// An integer query parameter does not start with an integer.
    #[error("invalid querystring parameter {name}, got: {value}")]
    InvalidInteger {
        /// The parameter.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// An identifier parameter holds a NUL character (which no PostgreSQL text can hold,
    /// so the client's record could not be stored).
    #[error("invalid querystring parameter {name}: it contains a NUL character")]
    NulCharacter {
        /// The parameter.
        name: &'static str,
    },
    /// The `Sec-WebSocket-Protocol` header is missing.
    #[error("missing Sec-WebSocket-Protocol header")]
    MissingSecProtocol,
    /// The `Sec-WebSocket-Protocol` header cannot be decoded.
    #[error("invalid Sec-WebSocket-Protocol header")]
    SecProtocol(#[source] SecProtocolError),
    /// The URL's version is outside 30..=51.
    #[error("unsupported sync protocol version v{version}")]
    VersionNotSupported {
        /// The client's version.
        version: u32,
    },
}

impl ConnectError {
    /// The `["error", body]` to send after the upgrade, for failures zero-cache reports that
    /// way (unsupported version, invalid `initConnection` in the header). `None` means:
    /// close with code 1002 and [`ConnectError::close_reason`].
    pub fn error_body(&self) -> Option<ErrorBody> {
        match self {
            ConnectError::VersionNotSupported { version } => {
                Some(ErrorBody::version_not_supported(*version))
            }
            ConnectError::SecProtocol(SecProtocolError::InitConnection(e)) => {
                Some(e.to_error_body())
            }
            _ => None,
        }
    }

    /// The close reason for code 1002: `Error: ` and the message with its cause, cut to 123
    /// bytes at a character boundary.
    pub fn close_reason(&self) -> String {
        let mut text = format!("Error: {self}");
        if let ConnectError::SecProtocol(e) = self {
            text.push_str(": ");
            text.push_str(&e.describe());
        }
        truncate(text, MAX_CLOSE_REASON)
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Why a `Sec-WebSocket-Protocol` value cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecProtocolError {
    /// `decodeURIComponent` would throw: a `%` not followed by two hex digits, or escapes
    /// that are not UTF-8.
    #[error("malformed percent-encoding at byte {offset}")]
    PercentEncoding {
        /// Where the bad escape starts.
        offset: usize,
    },
    /// Not base64.
    #[error("malformed base64: {reason}")]
    Base64 {
        /// What is wrong.
        reason: String,
    },
    /// Not JSON.
    #[error("decoded value is not JSON")]
    Json(#[source] serde_json::Error),
    /// JSON, but not an object.
    #[error("decoded value is not a JSON object")]
    NotAnObject,
    /// `authToken` is neither a string nor absent.
    #[error("authToken is not a string")]
    AuthTokenNotAString,
    /// `initConnectionMessage` is not a valid `initConnection` message.
    #[error("invalid initConnectionMessage")]
    InitConnection(#[source] MessageError),
}

impl SecProtocolError {
    fn describe(&self) -> String {
        match self {
            SecProtocolError::Json(e) => format!("{self}: {e}"),
            SecProtocolError::InitConnection(e) => format!("{self}: {}", e.describe()),
            _ => self.to_string(),
        }
    }
}

/// What the `Sec-WebSocket-Protocol` header carries.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SecProtocol {
    /// The `initConnection` body, unless the client will send it as the first message
    /// (it does when the header would exceed its `maxHeaderLength`, 8192 by default).
    pub init_connection: Option<InitConnectionBody>,
    /// The auth token; an empty token is reported as `None` (zero-cache treats it as absent).
    pub auth_token: Option<String>,
}

/// The header decoded down to JSON, before the `initConnection` message is validated.
struct RawSecProtocol {
    init_connection: Option<String>,
    auth_token: Option<String>,
}

/// `decodeURIComponent`: `%XX` escapes must be well-formed and decode to UTF-8.
fn decode_uri_component(s: &str) -> Result<String, SecProtocolError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(SecProtocolError::PercentEncoding { offset: i })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|e| SecProtocolError::PercentEncoding {
        offset: e.utf8_error().valid_up_to(),
    })
}

/// `encodeURIComponent`.
fn encode_uri_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Like the browser's `atob`: whitespace ignored, padding optional, trailing bits allowed.
const FORGIVING: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

fn decode_raw(value: &str) -> Result<RawSecProtocol, SecProtocolError> {
    let b64 = decode_uri_component(value.trim())?;
    let b64: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = FORGIVING
        .decode(b64.as_bytes())
        .map_err(|e| SecProtocolError::Base64 {
            reason: e.to_string(),
        })?;
    // TextDecoder replaces invalid UTF-8 rather than failing.
    let text = String::from_utf8_lossy(&bytes);
    // Keep the message as text: a `Value` would lose the order of row members.
    let header: &RawValue = serde_json::from_str(&text).map_err(SecProtocolError::Json)?;
    if !header.get().starts_with('{') {
        return Err(SecProtocolError::NotAnObject);
    }
    let header: HeaderJson<'_> =
        serde_json::from_str(header.get()).map_err(SecProtocolError::Json)?;
    let auth_token = match header.auth_token {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(SecProtocolError::AuthTokenNotAString),
    };
    Ok(RawSecProtocol {
        init_connection: header.init_connection.map(|m| m.get().to_owned()),
        auth_token,
    })
}

/// The decoded header; other members are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeaderJson<'a> {
    #[serde(borrow, default, rename = "initConnectionMessage")]
    init_connection: Option<&'a RawValue>,
    #[serde(default)]
    auth_token: Option<Value>,
}

fn validate_init(raw: RawSecProtocol) -> Result<SecProtocol, SecProtocolError> {
    let init_connection = match raw.init_connection {
        None => None,
        Some(text) => match parse_upstream(&text).map_err(SecProtocolError::InitConnection)? {
            Upstream::InitConnection(body) => Some(body),
            other => {
                return Err(SecProtocolError::InitConnection(
                    MessageError::UnexpectedType {
                        expected: "initConnection",
                        tag: other.tag().to_owned(),
                    },
                ));
            }
        },
    };
    Ok(SecProtocol {
        init_connection,
        auth_token: raw.auth_token,
    })
}

/// Decodes a `Sec-WebSocket-Protocol` value: percent-decoding, base64, UTF-8, JSON
/// `{"initConnectionMessage"?: ["initConnection", body], "authToken"?: string}`. Other
/// members are ignored. Never panics.
pub fn decode_sec_protocol(value: &str) -> Result<SecProtocol, SecProtocolError> {
    validate_init(decode_raw(value)?)
}

/// Encodes a `Sec-WebSocket-Protocol` value exactly as the 1.9.0 client does
/// (`encodeURIComponent(btoa(JSON.stringify({initConnectionMessage, authToken})))`).
/// With neither part the value is `e30%3D` (`{}`).
pub fn encode_sec_protocol(
    init_connection: Option<&InitConnectionBody>,
    auth_token: Option<&str>,
) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Header<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        init_connection_message: Option<(&'static str, &'a InitConnectionBody)>,
        #[serde(skip_serializing_if = "Option::is_none")]
        auth_token: Option<&'a str>,
    }
    let json = serde_json::to_string(&Header {
        init_connection_message: init_connection.map(|b| ("initConnection", b)),
        auth_token,
    })
    .expect("invariant: the header object always serializes to JSON");
    encode_uri_component(&STANDARD.encode(json))
}

/// Where a connect request was routed: `[/base]/sync/v{version}/{action}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectPath {
    /// The optional first path segment (the app may serve Zero under one base path).
    pub base: Option<String>,
    /// The client's sync protocol version.
    pub version: u32,
    /// The last segment; the client always sends `connect`, zero-cache does not check it.
    pub action: String,
}

/// Splits a request target (`/path?query`, or an absolute `ws://host/path?query`) into path
/// and query; the fragment is dropped.
fn split_target(target: &str) -> (&str, &str) {
    let mut rest = target;
    if let Some(i) = rest.find("://")
        && rest[..i]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        let after = &rest[i + 3..];
        rest = after.find(['/', '?', '#']).map_or("", |j| &after[j..]);
    }
    let rest = rest.split('#').next().unwrap_or_default();
    match rest.split_once('?') {
        Some((path, query)) => (path, query),
        None => (rest, ""),
    }
}

/// Parses the path of a connect request (without query), as zero-cache's
/// `(/:base)/:worker/v:version/:action` pattern with worker `sync`.
pub fn parse_connect_path(path: &str) -> Result<ConnectPath, ConnectError> {
    let invalid = || ConnectError::InvalidPath {
        target: path.to_owned(),
    };
    let segments: Vec<&str> = path
        .strip_prefix('/')
        .ok_or_else(invalid)?
        .split('/')
        .collect();
    let (base, rest) = match segments.as_slice() {
        [worker, version, action] => (None, [*worker, *version, *action]),
        [base, worker, version, action] => (Some(*base), [*worker, *version, *action]),
        _ => return Err(invalid()),
    };
    let [worker, version, action] = rest;
    if base.is_some_and(str::is_empty) || worker != "sync" || action.is_empty() {
        return Err(invalid());
    }
    let digits = version.strip_prefix('v').ok_or_else(invalid)?;
    if digits.is_empty() {
        return Err(invalid());
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ConnectError::InvalidVersion {
            target: path.to_owned(),
        });
    }
    let version = digits
        .parse::<u32>()
        .map_err(|_| ConnectError::InvalidVersion {
            target: path.to_owned(),
        })?;
    Ok(ConnectPath {
        base: base.map(str::to_owned),
        version,
        action: action.to_owned(),
    })
}

/// The query parameters of a connect request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectParams {
    /// `clientID` (required).
    pub client_id: String,
    /// `clientGroupID` (required).
    pub client_group_id: String,
    /// `userID`; absent or empty when logged out.
    pub user_id: Option<String>,
    /// `baseCookie`; empty means the client has no snapshot (a new group).
    pub base_cookie: Option<String>,
    /// `ts` (`performance.now()`), parsed like `parseInt` (fraction dropped); required but
    /// otherwise unused.
    pub timestamp: i64,
    /// `lmid`, parsed like `parseInt`; required but otherwise unused.
    pub lmid: i64,
    /// `wsid`, echoed in `connected` (empty when absent).
    pub wsid: String,
    /// `profileID`.
    pub profile_id: Option<String>,
    /// `debugPerf=true`.
    pub debug_perf: bool,
    /// Any other parameters (e.g. `reconnectParams` of a backoff error), in order.
    pub extra: Vec<(String, String)>,
}

const KNOWN_PARAMS: &[&str] = &[
    "clientID",
    "clientGroupID",
    "userID",
    "baseCookie",
    "ts",
    "lmid",
    "wsid",
    "profileID",
    "debugPerf",
];

/// `application/x-www-form-urlencoded` decoding as `URLSearchParams` does it: `+` is a
/// space, malformed escapes stay as they are, invalid UTF-8 becomes U+FFFD.
fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = (b == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, escaped) {
            (_, Some(x)) => {
                out.push(x);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (b, None) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `application/x-www-form-urlencoded` encoding as `URLSearchParams` does it.
fn form_encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"*-._".contains(&b) {
            out.push(char::from(b));
        } else if b == b' ' {
            out.push('+');
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// JavaScript's `parseInt(s)` (radix 10, or 16 with a `0x` prefix), `None` for `NaN` and
/// for values outside `i64`.
fn parse_int(s: &str) -> Option<i64> {
    let s = s.trim_start();
    let (negative, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, s) = match s.get(..2) {
        Some("0x" | "0X") => (16, &s[2..]),
        _ => (10, s),
    };
    let end = s
        .char_indices()
        .find(|(_, c)| !c.is_digit(radix))
        .map_or(s.len(), |(i, _)| i);
    let digits = &s[..end];
    if digits.is_empty() {
        return None;
    }
    let magnitude = i64::from_str_radix(digits, radix).ok()?;
    Some(if negative { -magnitude } else { magnitude })
}

impl ConnectParams {
    /// Parses a query string (without `?`), checking parameters in zero-cache's order.
    pub fn from_query(query: &str) -> Result<ConnectParams, ConnectError> {
        let pairs: Vec<(String, String)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (form_decode(k), form_decode(v))
            })
            .collect();
        // URLSearchParams.get: the first value; an empty value counts as absent.
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .filter(|v| !v.is_empty())
        };
        let required = |name: &'static str| get(name).ok_or(ConnectError::MissingParam { name });
        let integer = |name: &'static str| {
            let v = required(name)?;
            parse_int(v).ok_or_else(|| ConnectError::InvalidInteger {
                name,
                value: v.to_owned(),
            })
        };
        let client_id = required("clientID")?.to_owned();
        let client_group_id = required("clientGroupID")?.to_owned();
        let profile_id = get("profileID").map(str::to_owned);
        let base_cookie = get("baseCookie").map(str::to_owned);
        let timestamp = integer("ts")?;
        let lmid = integer("lmid")?;
        let wsid = get("wsid").unwrap_or_default().to_owned();
        let user_id = get("userID").map(str::to_owned);
        let debug_perf = get("debugPerf") == Some("true");
        for (name, value) in [
            ("clientID", Some(&client_id)),
            ("clientGroupID", Some(&client_group_id)),
            ("userID", user_id.as_ref()),
            ("baseCookie", base_cookie.as_ref()),
        ] {
            if value.is_some_and(|v| v.contains('\0')) {
                return Err(ConnectError::NulCharacter { name });
            }
        }
        let mut extra: Vec<(String, String)> = Vec::new();
        for (k, v) in &pairs {
            if !KNOWN_PARAMS.contains(&k.as_str()) && !extra.iter().any(|(e, _)| e == k) {
                extra.push((k.clone(), v.clone()));
            }
        }
        Ok(ConnectParams {
            client_id,
            client_group_id,
            user_id,
            base_cookie,
            timestamp,
            lmid,
            wsid,
            profile_id,
            debug_perf,
            extra,
        })
    }

    /// The query string (without `?`) in the order the 1.9.0 client writes it; extra
    /// parameters that clash with a known one are skipped, as the client does.
    pub fn to_query(&self) -> String {
        let mut out = String::new();
        let mut param = |k: &str, v: &str| {
            if !out.is_empty() {
                out.push('&');
            }
            form_encode(k, &mut out);
            out.push('=');
            form_encode(v, &mut out);
        };
        param("clientID", &self.client_id);
        param("clientGroupID", &self.client_group_id);
        if let Some(u) = &self.user_id {
            param("userID", u);
        }
        param(
            "baseCookie",
            self.base_cookie.as_deref().unwrap_or_default(),
        );
        param("ts", &self.timestamp.to_string());
        param("lmid", &self.lmid.to_string());
        param("wsid", &self.wsid);
        if let Some(p) = &self.profile_id {
            param("profileID", p);
        }
        if self.debug_perf {
            param("debugPerf", "true");
        }
        for (k, v) in &self.extra {
            if !KNOWN_PARAMS.contains(&k.as_str()) {
                param(k, v);
            }
        }
        out
    }

    /// The request target `{path}?{query}` for a protocol version, optionally under a base
    /// segment (`/zero/sync/v51/connect?…`).
    pub fn to_target(&self, base: Option<&str>, version: u32) -> String {
        let base = base
            .map(|b| format!("/{}", b.trim_matches('/')))
            .unwrap_or_default();
        format!("{base}{}?{}", connect_path(version), self.to_query())
    }
}

/// A parsed connect request.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectRequest {
    /// The path.
    pub path: ConnectPath,
    /// The query parameters.
    pub params: ConnectParams,
    /// The decoded `Sec-WebSocket-Protocol` header.
    pub sec_protocol: SecProtocol,
}

/// Parses a connect request: the request target (`/sync/v51/connect?…`, optionally under a
/// base segment, or an absolute `ws://` URL) and the raw `Sec-WebSocket-Protocol` value.
///
/// Checks in zero-cache's order: path, parameters, header encoding, version (30..=51), and
/// last the `initConnection` message in the header. Never panics.
pub fn parse_connect_request(
    target: &str,
    sec_websocket_protocol: Option<&str>,
) -> Result<ConnectRequest, ConnectError> {
    let (path, query) = split_target(target);
    let path = parse_connect_path(path).map_err(|e| match e {
        ConnectError::InvalidPath { .. } => ConnectError::InvalidPath {
            target: target.to_owned(),
        },
        ConnectError::InvalidVersion { .. } => ConnectError::InvalidVersion {
            target: target.to_owned(),
        },
        other => other,
    })?;
    let params = ConnectParams::from_query(query)?;
    let raw = decode_raw(sec_websocket_protocol.ok_or(ConnectError::MissingSecProtocol)?)
        .map_err(ConnectError::SecProtocol)?;
    if !is_supported_version(path.version) {
        return Err(ConnectError::VersionNotSupported {
            version: path.version,
        });
    }
    let sec_protocol = validate_init(raw).map_err(ConnectError::SecProtocol)?;
    Ok(ConnectRequest {
        path,
        params,
        sec_protocol,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_int_behaves_like_javascript() {
        assert_eq!(parse_int("386.838002"), Some(386));
        assert_eq!(parse_int(" 12abc"), Some(12));
        assert_eq!(parse_int("-7"), Some(-7));
        assert_eq!(parse_int("0x1f"), Some(31));
        assert_eq!(parse_int("abc"), None);
        assert_eq!(parse_int(""), None);
        assert_eq!(parse_int("-"), None);
        assert_eq!(parse_int("99999999999999999999999"), None);
    }

    #[test]
    fn identifiers_with_a_nul_character_are_refused() {
        let ok = "clientID=c&clientGroupID=g&ts=1&lmid=0&userID=u&baseCookie=01";
        assert!(ConnectParams::from_query(ok).is_ok());
        for (name, query) in [
            ("clientID", "clientID=c%00&clientGroupID=g&ts=1&lmid=0"),
            ("clientGroupID", "clientID=c&clientGroupID=%00g&ts=1&lmid=0"),
            (
                "userID",
                "clientID=c&clientGroupID=g&ts=1&lmid=0&userID=u%00",
            ),
            (
                "baseCookie",
                "clientID=c&clientGroupID=g&ts=1&lmid=0&baseCookie=0%001",
            ),
        ] {
            match ConnectParams::from_query(query) {
                Err(ConnectError::NulCharacter { name: n }) => assert_eq!(n, name),
                other => panic!("{name}: expected a NUL refusal, got {other:?}"),
            }
        }
    }

    #[test]
    fn uri_component_codec() {
        assert_eq!(encode_uri_component("a+b/c="), "a%2Bb%2Fc%3D");
        assert_eq!(decode_uri_component("a%2Bb%2fc%3D").unwrap(), "a+b/c=");
        assert!(matches!(
            decode_uri_component("ab%2"),
            Err(SecProtocolError::PercentEncoding { offset: 2 })
        ));
        assert!(decode_uri_component("%FF").is_err());
        assert_eq!(form_decode("a+b%3A%zz"), "a b:%zz");
    }

    #[test]
    fn paths() {
        let p = parse_connect_path("/zero/sync/v51/connect").unwrap();
        assert_eq!(p.base.as_deref(), Some("zero"));
        assert_eq!(p.version, 51);
        assert!(matches!(
            parse_connect_path("/sync/vx/connect"),
            Err(ConnectError::InvalidVersion { .. })
        ));
        for bad in [
            "/foo/bar",
            "/sync/51/connect",
            "sync/v51/connect",
            "/a/b/sync/v51/connect",
        ] {
            assert!(
                matches!(
                    parse_connect_path(bad),
                    Err(ConnectError::InvalidPath { .. })
                ),
                "{bad}"
            );
        }
        assert_eq!(
            split_target("ws://h:1/sync/v51/connect?a=b#f"),
            ("/sync/v51/connect", "a=b")
        );
    }
}

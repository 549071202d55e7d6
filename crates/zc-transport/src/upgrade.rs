//! The WebSocket upgrade (RFC 6455 §4.2), done here rather than by `warp::ws` so that the
//! socket's buffers can be sized: warp 0.4 fixes tungstenite's read buffer at its default
//! of 128 KiB, which is zero-filled on the first read and so resident for every
//! connection, while a client sends a few small messages (pings, query changes, pushes).

use std::future::Future;

use futures::FutureExt;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use warp::Filter;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use warp::hyper::upgrade::{OnUpgrade, Upgraded};

/// The server's end of an upgraded connection.
pub(crate) type Socket = WebSocketStream<hyper_util::rt::TokioIo<Upgraded>>;

/// Bytes read from the socket at a time. Larger messages still arrive whole: the buffer
/// grows for them.
const READ_BUFFER: usize = 8 << 10;
/// The largest message accepted from a client (tungstenite's default, as with warp before).
const MAX_MESSAGE: usize = 64 << 20;
/// Frames are gathered up to this many bytes before they are written to the socket, so
/// that a poke's start, rows and end go out in one write. The buffer keeps the largest
/// size it reached for the life of the connection: at tungstenite's default (128 KiB) a
/// hydration's poke parts grew it to about 256 KiB on every connection.
const WRITE_BUFFER: usize = 16 << 10;

/// A request asking for a WebSocket, to be answered with [`Upgrade::reply`].
pub(crate) struct Upgrade {
    key: HeaderValue,
    on_upgrade: Option<OnUpgrade>,
}

/// Why a request for the sync path is not a WebSocket upgrade.
#[derive(Debug)]
struct NotWebSocket(&'static str);

impl warp::reject::Reject for NotWebSocket {}

/// Matches a WebSocket upgrade request (GET, `Connection: upgrade`, `Upgrade: websocket`,
/// version 13 and a key); anything else is rejected with the reason, answered as 400.
pub(crate) fn websocket() -> impl Filter<Extract = (Upgrade,), Error = warp::Rejection> + Clone {
    warp::method()
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<OnUpgrade>())
        .and_then(
            |method: Method, headers: HeaderMap, on_upgrade: Option<OnUpgrade>| async move {
                check(&method, &headers)
                    .map(|key| Upgrade { key, on_upgrade })
                    .map_err(|reason| warp::reject::custom(NotWebSocket(reason)))
            },
        )
}

/// Turns the rejection of [`websocket`] into a 400 that names what was missing.
pub(crate) async fn recover(
    rejection: warp::Rejection,
) -> Result<impl warp::Reply, warp::Rejection> {
    match rejection.find::<NotWebSocket>() {
        Some(NotWebSocket(reason)) => Ok(warp::reply::with_status(
            format!("not a WebSocket upgrade: {reason}"),
            StatusCode::BAD_REQUEST,
        )),
        None => Err(rejection),
    }
}

/// The request's `Sec-WebSocket-Key`, when the request is an upgrade to WebSocket 13.
fn check(method: &Method, headers: &HeaderMap) -> Result<HeaderValue, &'static str> {
    if method != Method::GET {
        return Err("the method is not GET");
    }
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") {
        return Err("the Connection header does not include \"upgrade\"");
    }
    if !has_token(header::UPGRADE, "websocket") {
        return Err("the Upgrade header is not \"websocket\"");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err("Sec-WebSocket-Version is not 13");
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .cloned()
        .ok_or("Sec-WebSocket-Key is missing")
}

impl Upgrade {
    /// Answers `101 Switching Protocols` (echoing `protocol` as `Sec-WebSocket-Protocol`)
    /// and runs `session` on the socket once the connection is upgraded.
    pub(crate) fn reply<F, U>(self, protocol: Option<String>, session: F) -> warp::reply::Response
    where
        F: FnOnce(Socket) -> U + Send + 'static,
        U: Future<Output = ()> + Send + 'static,
    {
        let mut res = warp::reply::Response::default();
        *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = res.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let accept = derive_accept_key(self.key.as_bytes());
        match HeaderValue::from_str(&accept) {
            Ok(v) => {
                headers.insert(header::SEC_WEBSOCKET_ACCEPT, v);
            }
            Err(_) => {
                *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                return res;
            }
        }
        if let Some(p) = protocol {
            match HeaderValue::from_str(&p) {
                Ok(v) => {
                    headers.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
                }
                Err(_) => {
                    let mut bad = warp::reply::Response::new(
                        "Sec-WebSocket-Protocol is not a valid header value".into(),
                    );
                    *bad.status_mut() = StatusCode::BAD_REQUEST;
                    return bad;
                }
            }
        }
        let Some(on_upgrade) = self.on_upgrade else {
            tracing::debug!("WebSocket request without upgrade state (not HTTP/1.1?)");
            return res;
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(WRITE_BUFFER)
            .max_message_size(Some(MAX_MESSAGE));
        zc_types::task::spawn_named(
            "ws-upgrade",
            on_upgrade.then(move |upgraded| async move {
                match upgraded {
                    Ok(upgraded) => {
                        let io = hyper_util::rt::TokioIo::new(upgraded);
                        let socket =
                            WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                        session(socket).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
                }
            }),
        );
        res
    }
}

//! The WebSocket transport of zc (warp): `/sync/v{N}/connect` as the `@rocicorp/zero` 1.9.0
//! client speaks it, plus health (`/`, `/keepalive`) and `/metrics`.
//!
//! Per connection: the request target and the `Sec-WebSocket-Protocol` header are parsed
//! (`zc_protocol::connect`), the header is echoed back exactly (the client fails the
//! upgrade otherwise), `connected` is sent first, pings are answered here at once, and
//! every other message goes to the client's group in `zc-sync`. A message that cannot be
//! parsed gets the protocol's `InvalidMessage` error and the connection is closed; other
//! connections are not affected.
#![warn(missing_docs, unreachable_pub)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use warp::Filter;
use zc_protocol::connect::{ConnectError, ConnectParams, parse_connect_path};
use zc_protocol::messages::{
    ConnectedBody, Downstream, ErrorBody, ErrorKind, Upstream, parse_upstream,
};
use zc_sync::{Connection, Syncer};

/// The most queued messages written to a socket before it is flushed.
const MAX_FED: usize = 64;

/// How long after `connected` an error that ends the connection is held back.
///
/// The 1.9.0 client handles `connected` in two halves around an await (it reads its
/// desired queries from its store). An error that arrives in between is handled first:
/// the client disconnects and moves to `needs-auth` or `error`, and then the second half
/// of the `connected` handling sets its state back to `connected`, with no socket. Its
/// next ping then fails an assertion and the client stops in the `error` state, where
/// only the app can restart it (a refused token never reaches `needs-auth`). With the
/// desired queries in the connect header, zc can refuse a token (or a cookie) within a
/// millisecond of `connected`, so such an error waits until the client has had time to
/// finish. Errors later in a connection's life are not delayed.
const ERROR_GRACE_AFTER_CONNECTED: Duration = Duration::from_millis(250);

mod upgrade;

use upgrade::Socket;

/// Errors of the transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listening socket could not be set up.
    #[error("could not listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Renders the metrics page.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    syncer: Syncer,
    metrics: MetricsRender,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let health = warp::get()
        .and(warp::path::end().or(warp::path("keepalive").and(warp::path::end())))
        .map(|_| String::from("OK"))
        .boxed();
    let metrics_route = warp::get()
        .and(warp::path("metrics"))
        .and(warp::path::end())
        .map(move || metrics())
        .boxed();
    let sync = warp::path::full()
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::optional::<String>("sec-websocket-protocol"))
        .and(warp::header::optional::<String>("cookie"))
        .and(warp::header::optional::<String>("origin"))
        .and(upgrade::websocket())
        .map(
            move |path: warp::path::FullPath,
                  query: String,
                  protocol: Option<String>,
                  cookie: Option<String>,
                  origin: Option<String>,
                  ws: upgrade::Upgrade| {
                let syncer = syncer.clone();
                let target = if query.is_empty() {
                    path.as_str().to_owned()
                } else {
                    format!("{}?{query}", path.as_str())
                };
                let echo = protocol.clone();
                ws.reply(echo, move |socket| {
                    session(socket, syncer, target, protocol, cookie, origin)
                })
            },
        );
    let routes = health.or(metrics_route).or(sync).recover(upgrade::recover);
    warp::serve(routes)
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}

async fn send(socket: &mut Socket, msg: &Downstream) -> bool {
    socket.send(Message::text(msg.to_json())).await.is_ok()
}

async fn close_with_error(mut socket: Socket, e: ErrorBody) {
    let _ = send(&mut socket, &Downstream::Error(e)).await;
    let _ = socket.close(None).await;
}

/// A close frame with `code` and `reason`.
fn close_frame(code: u16, reason: impl Into<String>) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into().into(),
    }))
}

/// Parses the request; missing header means `initConnection` comes as the first message.
fn parse(
    target: &str,
    protocol: Option<&str>,
) -> Result<
    (
        ConnectParams,
        Option<zc_protocol::messages::InitConnectionBody>,
        Option<String>,
    ),
    ConnectError,
> {
    match zc_protocol::connect::parse_connect_request(target, protocol) {
        Ok(req) => Ok((
            req.params,
            req.sec_protocol.init_connection,
            req.sec_protocol.auth_token,
        )),
        Err(ConnectError::MissingSecProtocol) => {
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let parsed = parse_connect_path(path)?;
            if !zc_protocol::connect::is_supported_version(parsed.version) {
                return Err(ConnectError::VersionNotSupported {
                    version: parsed.version,
                });
            }
            Ok((ConnectParams::from_query(query)?, None, None))
        }
        Err(e) => Err(e),
    }
}

async fn session(
    mut socket: Socket,
    syncer: Syncer,
    target: String,
    protocol: Option<String>,
    cookie: Option<String>,
    origin: Option<String>,
) {
    metrics::counter!("zc_connections_total").increment(1);
    let (params, mut init, auth) = match parse(&target, protocol.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            match e.error_body() {
                Some(body) => close_with_error(socket, body).await,
                None => {
                    let _ = socket.send(close_frame(1002, e.close_reason())).await;
                }
            }
            return;
        }
    };
    // Legacy JWT mode: a bad token is refused before anything else, as zero-cache does.
    let auth_data = match syncer
        .verify_token(auth.as_deref(), params.user_id.as_deref())
        .await
    {
        Ok(claims) => claims,
        Err(e) => {
            let reason: String = e.message().chars().take(120).collect();
            let _ = send(&mut socket, &Downstream::Error(e)).await;
            let _ = socket.send(close_frame(3000, reason)).await;
            return;
        }
    };
    let wsid = params.wsid.clone();
    let connected = Downstream::Connected(ConnectedBody {
        wsid,
        timestamp: Some(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
        ),
    });
    if !send(&mut socket, &connected).await {
        return;
    }
    let connected_at = tokio::time::Instant::now();
    // Without the header, initConnection is the first message.
    if init.is_none() {
        let first = tokio::time::timeout(Duration::from_secs(60), socket.next()).await;
        match first {
            Ok(Some(Ok(m))) if m.is_text() => match parse_upstream(m.to_text().unwrap_or("")) {
                Ok(Upstream::InitConnection(body)) => init = Some(body),
                Ok(other) => {
                    close_with_error(
                        socket,
                        ErrorBody::invalid_message(format!(
                            "expected initConnection, got {}",
                            other.tag()
                        )),
                    )
                    .await;
                    return;
                }
                Err(e) => {
                    close_with_error(socket, e.to_error_body()).await;
                    return;
                }
            },
            _ => return,
        }
    }
    let (out_tx, mut out_rx) = mpsc::channel::<Downstream>(1024);
    let handle = syncer
        .connect(
            Connection {
                client_group_id: params.client_group_id.clone(),
                client_id: params.client_id.clone(),
                user_id: params.user_id.clone(),
                base_cookie: params.base_cookie.clone(),
                init,
                auth,
                cookie_header: cookie,
                origin,
                auth_data,
            },
            out_tx.clone(),
        )
        .await;
    metrics::gauge!("zc_connected_clients").increment(1.0);
    let (mut sink, mut stream) = socket.split();
    // Writer: everything for this client, in order; an error message ends the connection.
    // What is queued together goes out in one write (a poke's start and rows, say): the
    // frames are fed, and the socket is flushed once the queue is empty.
    let writer = zc_types::task::spawn_named("ws-writer", async move {
        'connection: while let Some(first) = out_rx.recv().await {
            let mut next = Some(first);
            let mut fed = 0;
            while let Some(msg) = next.take() {
                // Transient errors leave the connection open (the client decides); auth
                // errors close with 3000 and the message, as zero-cache does; others just
                // close.
                let close = match &msg {
                    Downstream::Error(e) => match e.kind() {
                        ErrorKind::MutationFailed | ErrorKind::MutationRateLimited => None,
                        ErrorKind::AuthInvalidated | ErrorKind::Unauthorized => {
                            Some(Some(e.message().chars().take(120).collect::<String>()))
                        }
                        _ => Some(None),
                    },
                    _ => None,
                };
                if close.is_some() {
                    let hold_until = connected_at + ERROR_GRACE_AFTER_CONNECTED;
                    if tokio::time::Instant::now() < hold_until {
                        if sink.flush().await.is_err() {
                            break 'connection;
                        }
                        tokio::time::sleep_until(hold_until).await;
                    }
                }
                if sink.feed(Message::text(msg.to_json())).await.is_err() {
                    break 'connection;
                }
                if let Some(reason) = close {
                    if let Some(reason) = reason {
                        let _ = sink.feed(close_frame(3000, reason)).await;
                    }
                    let _ = sink.flush().await;
                    break 'connection;
                }
                fed += 1;
                if fed < MAX_FED {
                    next = out_rx.try_recv().ok();
                }
            }
            if sink.flush().await.is_err() {
                break;
            }
        }
        // Completes the close handshake (the client expects 1000 after its own close, and
        // no status after an error message, as zero-cache does).
        let _ = sink.close().await;
    });
    loop {
        tokio::select! {
            frame = stream.next() => {
                let Some(Ok(frame)) = frame else { break };
                if frame.is_close() {
                    break;
                }
                if !frame.is_text() {
                    continue;
                }
                match parse_upstream(frame.to_text().unwrap_or("")) {
                    Ok(Upstream::Ping) => {
                        if out_tx.send(Downstream::Pong).await.is_err() {
                            break;
                        }
                    }
                    Ok(msg) => {
                        if !handle.send(msg).await {
                            let _ = out_tx
                                .send(Downstream::Error(zc_sync::ClientHandle::group_stopped()))
                                .await;
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "invalid message from client");
                        let _ = out_tx.send(Downstream::Error(e.to_error_body())).await;
                        break;
                    }
                }
            }
            _ = out_tx.closed() => break,
        }
    }
    drop(handle);
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    metrics::gauge!("zc_connected_clients").decrement(1.0);
}

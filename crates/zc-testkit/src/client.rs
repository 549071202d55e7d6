//! A protocol-level test client: speaks the sync protocol of `@rocicorp/zero` 1.9.0 over a
//! real WebSocket, so the server's own integration tests can drive many clients, send bad
//! frames and replay captured transcripts.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use zc_protocol::connect::{ConnectParams, PROTOCOL_VERSION, encode_sec_protocol};
use zc_protocol::messages::{
    Downstream, InitConnectionBody, PokeEndBody, PokePartBody, PokeStartBody, Upstream,
    parse_downstream,
};

/// One complete poke.
#[derive(Debug, Clone)]
pub struct Poke {
    /// Its start.
    pub start: PokeStartBody,
    /// Its parts.
    pub parts: Vec<PokePartBody>,
    /// Its end.
    pub end: PokeEndBody,
}

/// A connected test client.
#[derive(Debug)]
pub struct TestClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The connect parameters used.
    pub params: ConnectParams,
    /// Messages received but not consumed yet (non-poke messages seen while waiting for
    /// a poke).
    pub other: Vec<Downstream>,
}

/// Connect parameters for a client of `group`.
pub fn params(group: &str, client: &str, base_cookie: Option<&str>) -> ConnectParams {
    ConnectParams {
        client_id: client.to_owned(),
        client_group_id: group.to_owned(),
        user_id: Some("u1".to_owned()),
        base_cookie: base_cookie.map(str::to_owned),
        timestamp: 1,
        lmid: 0,
        wsid: format!("ws-{client}"),
        profile_id: None,
        debug_perf: false,
        extra: Vec::new(),
    }
}

impl TestClient {
    /// Connects to `http_base` (e.g. `http://127.0.0.1:4848`) with the init message and
    /// token in the `Sec-WebSocket-Protocol` header, as the 1.9.0 client does.
    pub async fn connect(
        http_base: &str,
        params: ConnectParams,
        init: Option<&InitConnectionBody>,
        token: Option<&str>,
    ) -> Result<TestClient, String> {
        let target = params.to_target(None, PROTOCOL_VERSION);
        let url = format!("{}{target}", http_base.replacen("http", "ws", 1));
        let mut request = url.into_client_request().map_err(|e| e.to_string())?;
        let header = encode_sec_protocol(init, token);
        request.headers_mut().insert(
            "sec-websocket-protocol",
            header.parse().map_err(|e| format!("{e}"))?,
        );
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| e.to_string())?;
        Ok(TestClient {
            ws,
            params,
            other: Vec::new(),
        })
    }

    /// Sends a message.
    pub async fn send(&mut self, msg: &Upstream) -> Result<(), String> {
        self.send_raw(&msg.to_json()).await
    }

    /// Sends any text frame.
    pub async fn send_raw(&mut self, text: &str) -> Result<(), String> {
        self.ws
            .send(Message::text(text.to_owned()))
            .await
            .map_err(|e| e.to_string())
    }

    /// The next message (`None`: closed, or nothing within `timeout`).
    pub async fn recv_within(&mut self, timeout: Duration) -> Option<Downstream> {
        loop {
            let frame = tokio::time::timeout(timeout, self.ws.next()).await.ok()??;
            match frame {
                Ok(Message::Text(t)) => return parse_downstream(t.as_str()).ok(),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The next message within 10 s.
    pub async fn recv(&mut self) -> Option<Downstream> {
        self.recv_within(Duration::from_secs(10)).await
    }

    /// The next complete poke (other messages are kept in `other`).
    pub async fn poke(&mut self) -> Option<Poke> {
        let mut start = None;
        let mut parts = Vec::new();
        loop {
            match self.recv().await? {
                Downstream::PokeStart(s) => start = Some(s),
                Downstream::PokePart(p) => parts.push(p),
                Downstream::PokeEnd(end) => {
                    return Some(Poke {
                        start: start?,
                        parts,
                        end,
                    });
                }
                other => self.other.push(other),
            }
        }
    }

    /// True when the server closed the connection (within 10 s).
    pub async fn closed(&mut self) -> bool {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.ws.next()).await {
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return true,
                Ok(Some(Ok(_))) => {}
                Err(_) => return false,
            }
        }
    }
}

//! Requests to the app's endpoints: named queries to `ZERO_QUERY_URL` (the transform
//! protocol) and custom mutations to `ZERO_MUTATE_URL`, with the headers zero-cache sends:
//! the connection's token as a bearer token, the API key, and the upgrade request's cookie
//! and origin where configured.

use std::time::Duration;

use serde_json::{Value, json};
use zc_protocol::ast::Ast;
use zc_protocol::messages::{
    ErrorBody, ErroredQuery, FailureCause, MutationId, PushBody, ZeroCacheFailureReason,
};

/// Where and how to forward.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    /// `ZERO_QUERY_URL` (the first is used).
    pub query_urls: Vec<String>,
    /// `ZERO_MUTATE_URL` (the first is used).
    pub mutate_urls: Vec<String>,
    /// `ZERO_QUERY_API_KEY`.
    pub query_api_key: Option<String>,
    /// `ZERO_MUTATE_API_KEY`.
    pub mutate_api_key: Option<String>,
    /// `ZERO_QUERY_FORWARD_COOKIES`.
    pub query_forward_cookies: bool,
    /// `ZERO_MUTATE_FORWARD_COOKIES`.
    pub mutate_forward_cookies: bool,
    /// The shard schema (`{app}_{shard}`), sent as `?schema=`.
    pub schema: String,
    /// The app id, sent as `?appID=`.
    pub app_id: String,
}

/// What a request carries from the client's connection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Credentials {
    /// The auth token.
    pub token: Option<String>,
    /// The `Cookie` header of the WebSocket upgrade request.
    pub cookie: Option<String>,
    /// The `Origin` header of the WebSocket upgrade request.
    pub origin: Option<String>,
    /// The connection's user.
    pub user_id: Option<String>,
    /// The verified token's claims (legacy JWT mode), bound as `authData` in permissions.
    pub auth_data: Option<Value>,
}

/// A named query to transform.
#[derive(Debug, Clone)]
pub struct NamedQuery {
    /// The query hash (id).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its arguments.
    pub args: Vec<Value>,
}

/// One query's transform outcome.
#[derive(Debug, Clone)]
pub enum Transformed {
    /// The AST to run.
    Ast(Box<Ast>),
    /// The app refused it.
    Error(ErroredQuery),
}

/// HTTP client for the app's endpoints.
#[derive(Debug, Clone)]
pub struct Forwarder {
    http: reqwest::Client,
    endpoints: Endpoints,
}

/// An HTTP client (reqwest is built without a bundled crypto provider: ring is installed
/// as the process default, as sqlx uses it).
pub(crate) fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// The body of a 2xx response; otherwise the message and cause of zero-cache's
/// `reason: "http"` failures (the caller picks TransformFailed or PushFailed).
async fn body_if_ok(response: reqwest::Response) -> Result<String, (String, FailureCause)> {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if status.is_success() {
        return Ok(text);
    }
    Err((
        format!(
            "Fetch from API server returned non-OK status {}",
            status.as_u16()
        ),
        FailureCause::Http {
            status: status.as_u16(),
            body_preview: preview(&text),
        },
    ))
}

fn preview(body: &str) -> Option<String> {
    if body.is_empty() {
        None
    } else {
        Some(body.chars().take(200).collect())
    }
}

impl Forwarder {
    /// A forwarder for these endpoints.
    pub fn new(endpoints: Endpoints) -> Forwarder {
        Forwarder {
            http: http_client(),
            endpoints,
        }
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    fn request(
        &self,
        url: &str,
        api_key: Option<&String>,
        forward_cookies: bool,
        creds: &Credentials,
        body: String,
    ) -> reqwest::RequestBuilder {
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!(
            "{url}{sep}schema={}&appID={}",
            self.endpoints.schema, self.endpoints.app_id
        );
        let mut req = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = &creds.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        if let Some(key) = api_key {
            req = req.header("x-api-key", key);
        }
        if forward_cookies && let Some(cookie) = &creds.cookie {
            req = req.header("cookie", cookie);
        }
        if let Some(origin) = &creds.origin {
            req = req.header("origin", origin);
        }
        req
    }

    /// True when named queries can be resolved.
    pub fn has_query_url(&self) -> bool {
        !self.endpoints.query_urls.is_empty()
    }

    /// True when custom mutations can be forwarded.
    pub fn has_mutate_url(&self) -> bool {
        !self.endpoints.mutate_urls.is_empty()
    }

    /// Sends a transform request; a whole-request failure is the error to send the client.
    pub async fn transform(
        &self,
        creds: &Credentials,
        queries: &[NamedQuery],
    ) -> Result<Vec<(String, Transformed)>, ErrorBody> {
        let ids: Vec<String> = queries.iter().map(|q| q.id.clone()).collect();
        let Some(url) = self.endpoints.query_urls.first() else {
            return Err(ErrorBody::transform_failed(
                "No ZERO_QUERY_URL is configured",
                ids,
                FailureCause::ZeroCache(ZeroCacheFailureReason::Internal),
            ));
        };
        let body = json!([
            "transform",
            queries
                .iter()
                .map(|q| json!({"id": q.id, "name": q.name, "args": q.args}))
                .collect::<Vec<_>>()
        ])
        .to_string();
        let mut attempt = 0;
        let response = loop {
            attempt += 1;
            let sent = self
                .request(
                    url,
                    self.endpoints.query_api_key.as_ref(),
                    self.endpoints.query_forward_cookies,
                    creds,
                    body.clone(),
                )
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_server_error() && attempt < 4 => {}
                Ok(r) => break r,
                Err(_) if attempt < 4 => {}
                Err(e) => {
                    return Err(ErrorBody::transform_failed(
                        format!("Fetch from API server failed: {e}"),
                        ids,
                        FailureCause::ZeroCache(ZeroCacheFailureReason::Internal),
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(100 << attempt.min(3))).await;
        };
        let text = match body_if_ok(response).await {
            Ok(text) => text,
            Err((message, cause)) => return Err(ErrorBody::transform_failed(message, ids, cause)),
        };
        let parse_error = |what: &str| {
            ErrorBody::transform_failed(
                format!("Could not parse the API server's response: {what}"),
                ids.clone(),
                FailureCause::ZeroCache(ZeroCacheFailureReason::Parse),
            )
        };
        let value: Value = serde_json::from_str(&text).map_err(|e| parse_error(&e.to_string()))?;
        // Current form {kind: "QueryResponse", userID?, queries}; legacy ["transformed", [...]].
        let (entries, user_id) = match &value {
            Value::Object(o) if o.get("kind") == Some(&json!("QueryResponse")) => (
                o.get("queries").and_then(Value::as_array).cloned(),
                o.get("userID").cloned(),
            ),
            Value::Object(o) if o.get("kind") == Some(&json!("TransformFailed")) => {
                let message = o
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("transform failed")
                    .to_owned();
                return Err(ErrorBody::transform_failed(
                    message,
                    ids,
                    FailureCause::Server(zc_protocol::messages::ServerFailureReason::Internal),
                ));
            }
            Value::Array(a) if a.first() == Some(&json!("transformed")) => {
                (a.get(1).and_then(Value::as_array).cloned(), None)
            }
            _ => (None, None),
        };
        if let Some(Value::String(u)) = user_id
            && creds.user_id.as_deref() != Some(u.as_str())
        {
            return Err(ErrorBody::unauthorized(
                "Connection userID does not match validated server userID.",
            ));
        }
        let entries = entries.ok_or_else(|| parse_error("not a QueryResponse"))?;
        let mut out = Vec::new();
        for e in entries {
            let id = e
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if e.get("error").is_some() {
                let errored: ErroredQuery = serde_json::from_value(e.clone())
                    .map_err(|err| parse_error(&err.to_string()))?;
                out.push((id, Transformed::Error(errored)));
                continue;
            }
            let ast = e
                .get("ast")
                .ok_or_else(|| parse_error("query without ast"))?;
            let ast = zc_protocol::ast::from_value(ast.clone())
                .map_err(|err| parse_error(&err.to_string()))?;
            out.push((id, Transformed::Ast(Box::new(ast))));
        }
        Ok(out)
    }

    /// Forwards a push of custom mutations; a failure is the error to send the client.
    pub async fn push(&self, creds: &Credentials, push: &PushBody) -> Result<(), ErrorBody> {
        let ids: Vec<MutationId> = push.mutations.iter().map(|m| m.id()).collect();
        let Some(url) = self.endpoints.mutate_urls.first() else {
            return Err(ErrorBody::invalid_push(
                "A ZERO_MUTATE_URL must be set in order to process custom mutations.",
            ));
        };
        let body = serde_json::to_string(push).unwrap_or_default();
        let response = self
            .request(
                url,
                self.endpoints.mutate_api_key.as_ref(),
                self.endpoints.mutate_forward_cookies,
                creds,
                body,
            )
            .send()
            .await
            .map_err(|e| {
                ErrorBody::push_failed(
                    format!("Fetch from API server failed: {e}"),
                    ids.clone(),
                    FailureCause::ZeroCache(ZeroCacheFailureReason::Internal),
                )
            })?;
        let text = match body_if_ok(response).await {
            Ok(text) => text,
            Err((message, cause)) => return Err(ErrorBody::push_failed(message, ids, cause)),
        };
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if let Some(kind) = value.get("kind").and_then(Value::as_str)
            && kind == "PushFailed"
        {
            let message = value
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("push failed")
                .to_owned();
            return Err(ErrorBody::push_failed(
                message,
                ids,
                FailureCause::Server(zc_protocol::messages::ServerFailureReason::Internal),
            ));
        }
        Ok(())
    }

    /// Asks the app to delete mutation results up to `id` (fire and forget).
    pub async fn cleanup(&self, creds: &Credentials, group: &str, client: &str, id: u64) {
        let Some(url) = self.endpoints.mutate_urls.first() else {
            return;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let body = json!({
            "clientGroupID": group,
            "mutations": [{
                "type": "custom", "id": 0, "clientID": client, "name": "_zero_cleanupResults",
                "args": [{"type": "single", "clientGroupID": group, "clientID": client, "upToMutationID": id}],
                "timestamp": now
            }],
            "pushVersion": 1,
            "timestamp": now,
            "requestID": format!("cleanup-{group}-{client}-{id}"),
        })
        .to_string();
        let _ = self
            .request(
                url,
                self.endpoints.mutate_api_key.as_ref(),
                self.endpoints.mutate_forward_cookies,
                creds,
                body,
            )
            .send()
            .await;
    }
}

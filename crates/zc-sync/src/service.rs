//! The view-syncer service: one actor per client group, started on the group's first
//! connection and stopped after it has been idle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use zc_cvr::CvrStore;
use zc_protocol::messages::{Downstream, InitConnectionBody, Upstream};
use zc_replica::Replica;

use crate::auth::{AuthConfig, Verifier};
use crate::forward::{Credentials, Endpoints, Forwarder, NamedQuery, Transformed};
use crate::group::{Group, GroupMsg};

/// What the service needs to know.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// `ZERO_APP_ID`.
    pub app_id: String,
    /// `ZERO_SHARD_NUM`.
    pub shard_num: u32,
    /// The app's endpoints.
    pub endpoints: Endpoints,
    /// Token verification (legacy JWT mode).
    pub auth: AuthConfig,
    /// The upstream database, for legacy CRUD mutations.
    pub upstream_db: Option<String>,
}

impl SyncConfig {
    /// The shard schema, `{app}_{shard}`.
    pub(crate) fn shard_schema(&self) -> String {
        format!("{}_{}", self.app_id, self.shard_num)
    }
}

/// A client's connection, as the transport parsed it.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// `clientGroupID`.
    pub client_group_id: String,
    /// `clientID`.
    pub client_id: String,
    /// `userID`.
    pub user_id: Option<String>,
    /// `baseCookie` (`None` for a new group).
    pub base_cookie: Option<String>,
    /// The `initConnection` message, when it came with the upgrade request.
    pub init: Option<InitConnectionBody>,
    /// The auth token.
    pub auth: Option<String>,
    /// The upgrade request's `Cookie` header.
    pub cookie_header: Option<String>,
    /// The upgrade request's `Origin` header.
    pub origin: Option<String>,
    /// The verified token's claims (legacy JWT mode; see [`Syncer::verify_token`]).
    pub auth_data: Option<serde_json::Value>,
}

impl Connection {
    /// What the app's endpoints get from this connection.
    pub(crate) fn credentials(&self) -> Credentials {
        Credentials {
            token: self.auth.clone(),
            cookie: self.cookie_header.clone(),
            origin: self.origin.clone(),
            user_id: self.user_id.clone(),
            auth_data: self.auth_data.clone(),
        }
    }
}

/// The transform of the named queries a connection's `initConnection` asks for, made with
/// the connection's credentials before the connection reaches its group (see
/// [`Syncer::connect`]).
#[derive(Debug)]
pub(crate) struct Prefetched {
    /// The credentials it was made with: only a resolution with the same ones uses it.
    pub(crate) creds: Credentials,
    /// The app's answer: each query's outcome, or why the request failed.
    pub(crate) outcome: Result<Vec<(String, Transformed)>, zc_protocol::messages::ErrorBody>,
}

pub(crate) struct Shared {
    pub(crate) config: SyncConfig,
    pub(crate) replica: Replica,
    pub(crate) cvr: CvrStore,
    pub(crate) forwarder: Forwarder,
    pub(crate) verifier: Verifier,
    pub(crate) upstream: Option<sqlx::postgres::PgPool>,
    /// Query pipelines shared between groups.
    pub(crate) hub: crate::hub::Hub,
    groups: Mutex<HashMap<String, mpsc::Sender<GroupMsg>>>,
    next_conn: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    /// The shard schema, `{app}_{shard}`.
    pub(crate) fn shard_schema(&self) -> String {
        self.config.shard_schema()
    }

    /// Called by a group actor when it stops.
    pub(crate) fn forget(&self, group: &str) {
        if let Ok(mut groups) = self.groups.lock()
            && groups.get(group).is_some_and(|tx| tx.is_closed())
        {
            groups.remove(group);
            self.count_groups(groups.len());
        }
    }

    /// Publishes the number of running group actors.
    fn count_groups(&self, n: usize) {
        metrics::gauge!("zc_sync_client_groups", "app" => self.config.app_id.clone()).set(n as f64);
    }
}

/// The view syncer: accepts client connections and routes them to their group's actor.
#[derive(Debug, Clone)]
pub struct Syncer {
    shared: Arc<Shared>,
}

/// A connected client's handle: upstream messages go through it; dropping it disconnects.
#[derive(Debug)]
pub struct ClientHandle {
    tx: mpsc::Sender<GroupMsg>,
    client: String,
    conn_id: u64,
}

impl ClientHandle {
    /// Delivers an upstream message; false when the group is gone.
    pub async fn send(&self, msg: Upstream) -> bool {
        self.tx
            .send(GroupMsg::Upstream {
                client: self.client.clone(),
                conn_id: self.conn_id,
                msg: Box::new(msg),
            })
            .await
            .is_ok()
    }

    /// The error for a client whose group stopped under it (the actor left as the client
    /// arrived): `Rebalance`, which the 1.9.0 client answers by connecting again after at
    /// most 100 ms, to a new actor. (An `Internal` error would stop it until the app
    /// reconnects it by hand.)
    pub fn group_stopped() -> zc_protocol::messages::ErrorBody {
        zc_protocol::messages::ErrorBody::backoff(
            zc_protocol::messages::BackoffErrorKind::Rebalance,
            "the client group stopped on this server; connect again",
            None,
            Some(100),
        )
    }
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        let _ = self.tx.try_send(GroupMsg::Disconnect {
            client: self.client.clone(),
            conn_id: self.conn_id,
        });
    }
}

impl Syncer {
    /// A syncer over a replica and a CVR store.
    pub fn new(config: SyncConfig, replica: Replica, cvr: CvrStore) -> Syncer {
        let forwarder = Forwarder::new(config.endpoints.clone());
        let verifier = Verifier::new(config.auth.clone());
        let hub = crate::hub::Hub::new(&config.app_id, &config.shard_schema());
        let upstream = config.upstream_db.as_deref().and_then(|url| {
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect_lazy(url)
                .ok()
        });
        Syncer {
            shared: Arc::new(Shared {
                config,
                replica,
                cvr,
                forwarder,
                verifier,
                upstream,
                hub,
                groups: Mutex::new(HashMap::new()),
                next_conn: AtomicU64::new(1),
            }),
        }
    }

    /// Connects a client: downstream messages for it go to `out`.
    ///
    /// A new group's actor starts first, loading its record, while this task asks the
    /// app's query endpoint to transform the named queries of the connection's
    /// `initConnection`; the group then takes the answers instead of asking again. That
    /// request also stands for the credential check zero-cache makes with an empty
    /// transform on every connection: one request to the app instead of two, and neither
    /// waits for the record.
    pub async fn connect(&self, conn: Connection, out: mpsc::Sender<Downstream>) -> ClientHandle {
        let conn_id = self.shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let client = conn.client_id.clone();
        let group = conn.client_group_id.clone();
        let mut tx = self.group(&group);
        let prefetched = self.prefetch(&conn).await.map(Box::new);
        let mut msg = GroupMsg::Connect {
            conn: Box::new(conn),
            out,
            conn_id,
            prefetched,
        };
        loop {
            match tx.send(msg).await {
                Ok(()) => {
                    return ClientHandle {
                        tx,
                        client,
                        conn_id,
                    };
                }
                // The actor was stopping: start a new one.
                Err(mpsc::error::SendError(m)) => {
                    msg = m;
                    self.shared.forget(&group);
                    tx = self.group(&group);
                }
            }
        }
    }

    /// Transforms the named queries `conn`'s `initConnection` puts (none without a query
    /// endpoint, or without any such query).
    async fn prefetch(&self, conn: &Connection) -> Option<Prefetched> {
        if !self.shared.forwarder.has_query_url() {
            return None;
        }
        let named: Vec<NamedQuery> = conn
            .init
            .as_ref()?
            .desired_queries_patch
            .iter()
            .filter_map(|op| match op {
                zc_protocol::messages::UpQueriesPatchOp::Put {
                    hash,
                    name: Some(name),
                    args,
                    ast,
                    ..
                } if !crate::group::holds_nul(
                    hash,
                    Some(name),
                    args.as_deref(),
                    ast.as_deref(),
                ) =>
                {
                    Some(NamedQuery {
                        id: hash.clone(),
                        name: name.clone(),
                        args: args.clone().unwrap_or_default(),
                    })
                }
                _ => None,
            })
            .collect();
        if named.is_empty() {
            return None;
        }
        let creds = conn.credentials();
        let outcome = self.shared.forwarder.transform(&creds, &named).await;
        Some(Prefetched { creds, outcome })
    }

    fn group(&self, id: &str) -> mpsc::Sender<GroupMsg> {
        let mut groups = match self.shared.groups.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(tx) = groups.get(id)
            && !tx.is_closed()
        {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(1024);
        groups.insert(id.to_owned(), tx.clone());
        self.shared.count_groups(groups.len());
        let shared = Arc::clone(&self.shared);
        let id = id.to_owned();
        zc_types::task::spawn_named("client-group", Group::run(shared, id, rx));
        tx
    }

    /// Legacy JWT mode: verifies a connection's token (its claims become `authData`).
    /// Without JWT settings, or without a token, there is nothing to verify.
    pub async fn verify_token(
        &self,
        token: Option<&str>,
        user_id: Option<&str>,
    ) -> Result<Option<serde_json::Value>, zc_protocol::messages::ErrorBody> {
        match token.filter(|t| !t.is_empty()) {
            Some(t) if self.shared.verifier.is_jwt() => {
                self.shared.verifier.verify(t, user_id).await.map(Some)
            }
            _ => Ok(None),
        }
    }

    /// The number of active client groups.
    pub fn active_groups(&self) -> usize {
        self.shared.groups.lock().map(|g| g.len()).unwrap_or(0)
    }
}

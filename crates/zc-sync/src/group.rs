//! One client group: an actor that owns the group's CVR, its query pipelines and its
//! connected clients.
//!
//! Order per change: advance the pipelines → flush the CVR → poke the clients, so that a
//! client never sees a cookie the CVR does not have. Every poke a client gets is "what
//! changed in the CVR after the client's cookie" ([`zc_cvr::CvrStore::changes_since`]), which is also
//! how a reconnecting client catches up from an old cookie.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use tokio::sync::mpsc;
use zc_cvr::{Cvr, CvrVersion, QueryRecord, RowId};
use zc_protocol::ast::Ast;
use zc_protocol::messages::{
    ChangeDesiredQueriesBody, Downstream, ErrorBody, ErroredQuery, InitConnectionBody, Mutation,
    MutationId, MutationPatchOp, MutationResponse, MutationResult, PokeEndBody, PokePartBody,
    PokeStartBody, PushBody, QueriesPatchOp, RowPatchOp, UpQueriesPatchOp, Upstream, WireRow,
};
use zc_query::pipeline::RowChange;
use zc_query::tree::TreeQuery;
use zc_query::{ScanRequest, Sources};
use zc_types::{Lsn, Row, TableName, Value};

use crate::SnapshotSources;
use crate::forward::{Credentials, NamedQuery, Transformed};
use crate::hub::{Output, Step, StepKind, Subscription};
use crate::permissions::Permissions;
use crate::service::{Connection, Prefetched, Shared};

/// Whether a desired query holds a NUL character anywhere: PostgreSQL's text and jsonb
/// cannot, so its CVR record could not be stored.
pub(crate) fn holds_nul(
    hash: &str,
    name: Option<&str>,
    args: Option<&[Json]>,
    ast: Option<&Ast>,
) -> bool {
    fn json_holds_nul(v: &Json) -> bool {
        match v {
            Json::String(s) => s.contains('\0'),
            Json::Array(a) => a.iter().any(json_holds_nul),
            Json::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || json_holds_nul(v)),
            _ => false,
        }
    }
    hash.contains('\0')
        || name.is_some_and(|n| n.contains('\0'))
        || args.is_some_and(|a| a.iter().any(json_holds_nul))
        || ast.is_some_and(|a| serde_json::to_value(a).is_ok_and(|v| json_holds_nul(&v)))
}

/// Messages to a group actor.
#[derive(Debug)]
pub(crate) enum GroupMsg {
    Connect {
        conn: Box<Connection>,
        out: mpsc::Sender<Downstream>,
        conn_id: u64,
        /// The transform of its `initConnection`'s named queries, made on the way here.
        prefetched: Option<Box<Prefetched>>,
    },
    Upstream {
        client: String,
        conn_id: u64,
        msg: Box<Upstream>,
    },
    Disconnect {
        client: String,
        conn_id: u64,
    },
}

#[derive(Debug)]
struct Client {
    conn_id: u64,
    out: mpsc::Sender<Downstream>,
    creds: Credentials,
    /// The cookie the client has (as it knows it).
    cookie: Option<String>,
}

/// Per-step changes of the shard tables: LMIDs and mutation results of this group.
#[derive(Debug, Default)]
struct Meta {
    lmids: BTreeMap<String, u64>,
    mutations: Vec<MutationPatchOp>,
}

impl Meta {
    fn is_empty(&self) -> bool {
        self.lmids.is_empty() && self.mutations.is_empty()
    }
}

pub(crate) struct Group {
    shared: Arc<Shared>,
    id: String,
    cvr: Cvr,
    sources: SnapshotSources,
    version: Lsn,
    clients: BTreeMap<String, Client>,
    /// The shared pipeline each live query runs on.
    live: BTreeMap<String, Subscription>,
    /// The shared pipelines' steps, in version order.
    steps: mpsc::Receiver<Arc<Step>>,
    /// The AST each live query runs.
    resolved: HashMap<String, Ast>,
    /// The current value of every row the group holds (shared with the pipelines). A tree
    /// rather than a hash map, which keeps up to half its slots empty: every client group
    /// has one of these.
    values: BTreeMap<RowId, Arc<Row>>,
    /// The CVR's queries have been hydrated into pipelines since the group was loaded.
    resumed: bool,
    poke_seq: u64,
    /// When the group last poked its clients (see [`POKE_PACE`]).
    last_poke: Option<Instant>,
    /// Replica versions wait until then: the group poked less than [`POKE_PACE`] ago.
    paced_until: Option<Instant>,
    /// The step taken from the channel when the pacing began (after the pause, `advance`
    /// drains the rest, or rejoins if the hub dropped the group).
    held: Option<Arc<Step>>,
    /// While a connection is handled: the transforms made for it on its way here, by
    /// query hash, with the credentials they were made with.
    prefetched: Option<(Credentials, HashMap<String, Transformed>)>,
}

/// The least time between two pokes of a group for replica changes. Every poke costs each
/// client a merge and a run of its views, which at a few hundred transactions a second
/// takes more CPU than the server; paced, the transactions of those milliseconds go out as
/// one poke (and one CVR flush). Changes further apart than this are not delayed.
const POKE_PACE: Duration = Duration::from_millis(10);

/// How long a group without clients stays (zero-cache keeps a view syncer 5 s): a client
/// reconnecting within it finds its pipelines hydrated. Counted from the moment the last
/// client left, not from the group's last wake-up: upstream changes keep waking it, and an
/// empty group would otherwise advance its pipelines and write its CVR for every write.
const KEEPALIVE: Duration = Duration::from_secs(5);

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn expiry_wait(at: Option<i64>) -> Duration {
    let wait = at.unwrap_or(0) - now_ms();
    Duration::from_millis(u64::try_from(wait.max(0)).unwrap_or(0) + 5)
}

/// A row's primary key values, in the table's key order.
fn key_of(spec: &zc_types::TableSpec, row: &[Value]) -> Vec<Value> {
    spec.key
        .iter()
        .map(|&k| row.get(k).cloned().unwrap_or(Value::Null))
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Drop for Group {
    fn drop(&mut self) {
        self.unsubscribe_all();
        self.steps.close();
        self.shared.hub.leave();
    }
}

impl Group {
    /// Runs the actor until it has had no clients for a while.
    pub(crate) async fn run(shared: Arc<Shared>, id: String, mut rx: mpsc::Receiver<GroupMsg>) {
        // The awaits of this loop are boxed: the task lives as long as the group, and an
        // inline future would keep room for the largest of them (a CVR load or flush) for
        // all that time.
        let load_started = Instant::now();
        let cvr = match Box::pin(shared.cvr.load(&id)).await {
            Ok(c) => {
                tracing::trace!(
                    group = %id,
                    load_ms = load_started.elapsed().as_secs_f64() * 1e3,
                    "client view record loaded"
                );
                c
            }
            Err(e) => {
                tracing::error!(group = %id, error = %e, "could not load the client view record");
                // Tell whoever is waiting.
                while let Ok(msg) = rx.try_recv() {
                    if let GroupMsg::Connect { out, .. } = msg {
                        let _ = out
                            .send(Downstream::Error(ErrorBody::internal(format!(
                                "could not load the client view record: {}",
                                error_chain(&e)
                            ))))
                            .await;
                    }
                }
                return;
            }
        };
        let registered = tokio::task::block_in_place(|| shared.hub.register(&shared.replica));
        let (sources, version, steps) = match registered {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(group = %id, error = %e, "could not read the replica");
                return;
            }
        };
        let mut group = Group {
            shared: Arc::clone(&shared),
            id,
            cvr,
            sources,
            version,
            clients: BTreeMap::new(),
            live: BTreeMap::new(),
            steps,
            resolved: HashMap::new(),
            values: BTreeMap::new(),
            resumed: false,
            poke_seq: 0,
            last_poke: None,
            paced_until: None,
            held: None,
            prefetched: None,
        };
        let mut versions = shared.replica.subscribe();
        // The replica may have moved on since the group registered (or the hub it joined
        // may not have followed it, with no group to advance it): look once at the start.
        versions.mark_changed();
        // When the group, without clients since then, leaves.
        let mut leave_at: Option<Instant> = None;
        loop {
            let expiry = group.next_expiry();
            leave_at = match leave_at {
                _ if !group.clients.is_empty() => None,
                Some(at) => Some(at),
                None => Some(Instant::now() + KEEPALIVE),
            };
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => Box::pin(group.handle(msg)).await,
                    None => break,
                },
                changed = versions.changed(), if group.paced_until.is_none() => {
                    if changed.is_err() {
                        break;
                    }
                    if !group.pace(&mut None) {
                        Box::pin(group.advance_hub_and_self(None)).await;
                    }
                }
                mut step = group.steps.recv(), if group.paced_until.is_none() => {
                    // `None`: the hub dropped this group for lagging; `advance` rejoins.
                    if !group.pace(&mut step)
                        && let Err(e) = Box::pin(group.advance(step)).await
                    {
                        Box::pin(group.fail(e)).await;
                    }
                }
                _ = tokio::time::sleep_until(group.paced_until.unwrap_or_else(Instant::now).into()),
                    if group.paced_until.is_some() => {
                    group.paced_until = None;
                    let held = group.held.take();
                    Box::pin(group.advance_hub_and_self(held)).await;
                }
                _ = tokio::time::sleep(expiry_wait(expiry)), if expiry.is_some() => {
                    if let Err(e) = Box::pin(group.expire()).await {
                        Box::pin(group.fail(e)).await;
                    }
                }
                _ = tokio::time::sleep_until(leave_at.unwrap_or_else(Instant::now).into()),
                    if leave_at.is_some() => {
                    // Idle: leave; the service starts a new actor on the next connect. What
                    // the group followed since its last client left is written before it
                    // stops taking messages: a connection that finds it closed starts a new
                    // actor at once, whose load must not read the record from before (a
                    // client whose cookie equals that older version would never be sent
                    // what changed since, such as its last mutation id).
                    Box::pin(group.commit_on_leaving()).await;
                    // What arrived while the record was written (a connection, say) is
                    // handled before the inbox closes: a client connected after the close
                    // would be left with a group that takes no more of its messages.
                    while let Ok(msg) = rx.try_recv() {
                        Box::pin(group.handle(msg)).await;
                    }
                    if !group.clients.is_empty() {
                        continue;
                    }
                    rx.close();
                    // A connection that reached the inbox between the look above and the
                    // close is told to connect again (to a new actor): this one takes no
                    // more of its messages.
                    while let Ok(msg) = rx.try_recv() {
                        match msg {
                            GroupMsg::Connect { out, .. } => {
                                let _ = out
                                    .send(Downstream::Error(
                                        crate::ClientHandle::group_stopped(),
                                    ))
                                    .await;
                            }
                            other => Box::pin(group.handle(other)).await,
                        }
                    }
                    break;
                }
            }
        }
        rx.close();
        // What is still unwritten when the group stops another way than by leaving (the
        // replica closed, say), for the next load to start from (lost, that load
        // reconciles from the replica's change log instead).
        Box::pin(group.commit_on_leaving()).await;
        shared.forget(&group.id);
    }

    /// Writes the record on the group's way out; a failure is only logged (the next load
    /// reconciles from the replica's change log).
    async fn commit_on_leaving(&mut self) {
        if let Err(e) = self.commit().await {
            tracing::debug!(group = %self.id, error = ?e, "the leaving group's record was not written");
        }
    }

    /// Starts a pause before the next poke if the last one was less than [`POKE_PACE`]
    /// ago, taking `step` (what the channel gave, if anything) to hold for then; false
    /// (and `step` left alone) if the group may poke now.
    fn pace(&mut self, step: &mut Option<Arc<Step>>) -> bool {
        let Some(due) = self.last_poke.map(|t| t + POKE_PACE) else {
            return false;
        };
        if due <= Instant::now() {
            return false;
        }
        self.paced_until = Some(due);
        self.held = step.take();
        true
    }

    /// Brings the shared pipelines to the replica's latest version (the first group to see
    /// a new version does), then applies this group's steps (`first`, then the queued ones).
    async fn advance_hub_and_self(&mut self, first: Option<Arc<Step>>) {
        let hub = Arc::clone(&self.shared);
        // Only the first group to see a version advances the hub; the others need not leave
        // their worker thread (`block_in_place` hands the worker to another thread).
        let latest = *hub.replica.subscribe().borrow();
        let advanced = if hub.hub.is_at(latest) {
            Ok(())
        } else {
            tokio::task::block_in_place(|| hub.hub.advance(&hub.replica))
        };
        if let Err(e) = advanced {
            self.fail(ErrorBody::internal(e.to_string())).await;
        } else if let Err(e) = self.advance(first).await {
            self.fail(e).await;
        }
    }

    async fn handle(&mut self, msg: GroupMsg) {
        let result = match msg {
            GroupMsg::Connect {
                conn,
                out,
                conn_id,
                prefetched,
            } => {
                let result = self.connect(*conn, out, conn_id, prefetched).await;
                // Answers for this connection only.
                self.prefetched = None;
                result
            }
            GroupMsg::Upstream {
                client,
                conn_id,
                msg,
            } => {
                if self
                    .clients
                    .get(&client)
                    .is_some_and(|c| c.conn_id == conn_id)
                {
                    self.upstream(&client, *msg).await
                } else {
                    Ok(())
                }
            }
            GroupMsg::Disconnect { client, conn_id } => {
                if self
                    .clients
                    .get(&client)
                    .is_some_and(|c| c.conn_id == conn_id)
                {
                    self.clients.remove(&client);
                }
                Ok(())
            }
        };
        if let Err(e) = result {
            self.fail(e).await;
        }
    }

    /// A failure of the group itself (CVR or replica): every client gets the error.
    async fn fail(&mut self, e: ErrorBody) {
        tracing::warn!(group = %self.id, error = ?e, "client group failed");
        for (_, c) in std::mem::take(&mut self.clients) {
            let _ = c.out.send(Downstream::Error(e.clone())).await;
        }
        // Start over from the stored record on the next connect.
        if let Ok(cvr) = self.shared.cvr.load(&self.id).await {
            self.cvr = cvr;
        }
        self.unsubscribe_all();
        self.resolved.clear();
        self.values.clear();
        self.resumed = false;
    }

    async fn send_error(&mut self, client: &str, e: ErrorBody) {
        if let Some(c) = self.clients.remove(client) {
            let _ = c.out.send(Downstream::Error(e)).await;
        }
    }

    async fn connect(
        &mut self,
        conn: Connection,
        out: mpsc::Sender<Downstream>,
        conn_id: u64,
        prefetched: Option<Box<Prefetched>>,
    ) -> Result<(), ErrorBody> {
        let client = conn.client_id.clone();
        // Connections reach the group after their named queries' transform, so a client's
        // two connections in quick succession may arrive out of order: the older one is
        // the one replaced.
        if self
            .clients
            .get(&client)
            .is_some_and(|c| c.conn_id > conn_id)
        {
            let _ = out
                .send(Downstream::Error(ErrorBody::invalid_connection_request(
                    "replaced by a newer connection of the same client",
                )))
                .await;
            return Ok(());
        }
        // The cookie must be one this group has been at.
        let empty = self.cvr.clients.is_empty() && self.cvr.queries.is_empty();
        if empty && conn.base_cookie.as_deref().is_some_and(|c| !c.is_empty()) {
            // The client has state this server never had (or lost): it must start over.
            let _ = out
                .send(Downstream::Error(ErrorBody::client_not_found()))
                .await;
            return Ok(());
        }
        let base = match conn.base_cookie.as_deref() {
            None | Some("") => None,
            Some(c) => match CvrVersion::parse(c) {
                Ok(v) if v <= self.cvr.version => Some(v),
                _ => {
                    let _ = out
                        .send(Downstream::Error(
                            ErrorBody::invalid_connection_request_base_cookie(format!(
                                "Client group {} has no cookie {c}; the server is at {}",
                                self.id, self.cvr.version
                            )),
                        ))
                        .await;
                    return Ok(());
                }
            },
        };
        if let (Some(pinned), Some(user)) = (&self.cvr.user_id, &conn.user_id)
            && pinned != user
        {
            let _ = out
                .send(Downstream::Error(ErrorBody::unauthorized(
                    "Client groups are pinned to a single userID. Client group has userID "
                        .to_owned()
                        + pinned
                        + " but connection has userID "
                        + user,
                )))
                .await;
            return Ok(());
        }
        if let Some(schema) = conn.init.as_ref().and_then(|i| i.client_schema.as_ref()) {
            let specs: Vec<&zc_types::TableSpec> = self.sources.specs().collect();
            let problems = crate::schema_check::check(schema, &specs);
            if !problems.is_empty() {
                let _ = out
                    .send(Downstream::Error(ErrorBody::schema_version_not_supported(
                        problems.join("\n"),
                    )))
                    .await;
                return Ok(());
            }
        }
        if self.cvr.user_id.is_none() {
            self.cvr.user_id.clone_from(&conn.user_id);
        }
        // (In legacy JWT mode the transport verified the token; its claims are `authData`.)
        let creds = conn.credentials();
        let check_started = Instant::now();
        match prefetched.map(|p| *p) {
            // The transform made on the way here was refused: so is the connection.
            Some(Prefetched {
                outcome: Err(e), ..
            }) => {
                let _ = out.send(Downstream::Error(e)).await;
                return Ok(());
            }
            // It was accepted, with these credentials: they need no other check.
            Some(Prefetched {
                outcome: Ok(answers),
                creds: made_with,
            }) => {
                self.prefetched = Some((made_with, answers.into_iter().collect()));
            }
            // A new connection's credential is checked by the query endpoint first, as
            // zero-cache does with an empty transform request.
            None => {
                if creds.token.is_some()
                    && !self.shared.verifier.is_jwt()
                    && self.shared.forwarder.has_query_url()
                    && let Err(e) = self.shared.forwarder.transform(&creds, &[]).await
                {
                    let _ = out.send(Downstream::Error(e)).await;
                    return Ok(());
                }
            }
        }
        tracing::trace!(
            group = %self.id,
            check_ms = check_started.elapsed().as_secs_f64() * 1e3,
            "connection's credential checked"
        );
        if let Some(old) = self.clients.insert(
            client.clone(),
            Client {
                conn_id,
                out,
                creds,
                cookie: base.map(|v| v.cookie()),
            },
        ) {
            let _ = old
                .out
                .send(Downstream::Error(ErrorBody::invalid_connection_request(
                    "replaced by a newer connection of the same client",
                )))
                .await;
        }
        self.cvr.add_client(&client);
        self.resume().await?;
        let (patch, active) = conn
            .init
            .map(|i: InitConnectionBody| (i.desired_queries_patch, i.active_clients))
            .unwrap_or_default();
        if let Some(active) = active {
            self.inactivate_clients(&active);
        }
        self.change_queries(&client, patch).await?;
        let meta = self.full_meta(&client);
        self.commit_and_poke(&meta, Some(&client)).await?;
        Ok(())
    }

    async fn upstream(&mut self, client: &str, msg: Upstream) -> Result<(), ErrorBody> {
        match msg {
            Upstream::ChangeDesiredQueries(ChangeDesiredQueriesBody {
                desired_queries_patch,
                ..
            }) => {
                self.change_queries(client, desired_queries_patch).await?;
                self.commit_and_poke(&Meta::default(), None).await?;
            }
            Upstream::Push(push) => self.push(client, push).await,
            Upstream::UpdateAuth(body) => {
                if let Some(c) = self.clients.get_mut(client) {
                    c.creds.token = Some(body.auth).filter(|t| !t.is_empty());
                }
            }
            Upstream::AckMutationResponses(id) => {
                let creds = self.creds(client);
                let forwarder = self.shared.forwarder.clone();
                let group = self.id.clone();
                zc_types::task::spawn_named("mutation-cleanup", async move {
                    forwarder
                        .cleanup(&creds, &group, &id.client_id, id.id)
                        .await;
                });
            }
            Upstream::InitConnection(_) => {
                self.send_error(
                    client,
                    ErrorBody::invalid_message("initConnection was already received"),
                )
                .await;
            }
            // Handled by the transport (ping), or not needed by the 1.9.0 client.
            Upstream::Ping
            | Upstream::Pull(_)
            | Upstream::DeleteClients(_)
            | Upstream::Inspect(_)
            | Upstream::CloseConnection(_) => {}
            _ => {}
        }
        Ok(())
    }

    fn creds(&self, client: &str) -> Credentials {
        self.clients
            .get(client)
            .map(|c| c.creds.clone())
            .unwrap_or_default()
    }

    async fn push(&mut self, client: &str, push: PushBody) {
        if push.client_group_id != self.id {
            self.send_error(
                client,
                ErrorBody::invalid_push("push for another client group"),
            )
            .await;
            return;
        }
        let creds = self.creds(client);
        if push
            .mutations
            .iter()
            .any(|m| matches!(m, Mutation::Crud(_)))
        {
            for m in &push.mutations {
                if let Mutation::Crud(m) = m
                    && let Err(e) = self.crud(&creds, m).await
                {
                    if e.kind() == zc_protocol::messages::ErrorKind::MutationFailed {
                        // Transient: the connection stays (the client decides).
                        if let Some(c) = self.clients.get(client) {
                            let _ = c.out.send(Downstream::Error(e)).await;
                        }
                        continue;
                    }
                    self.send_error(client, e).await;
                    return;
                }
            }
            return;
        }
        // Forwarded in order: the next push of this connection waits for this one.
        if let Err(e) = self.shared.forwarder.push(&creds, &push).await {
            let ids: BTreeSet<String> = push.mutations.iter().map(|m| m.id().client_id).collect();
            for id in ids {
                self.send_error(&id, e.clone()).await;
            }
        }
    }

    /// Applies a legacy CRUD mutation to the upstream database.
    async fn crud(
        &mut self,
        creds: &Credentials,
        m: &zc_protocol::messages::CrudMutation,
    ) -> Result<(), ErrorBody> {
        let Some(pool) = self.shared.upstream.clone() else {
            return Err(ErrorBody::invalid_push(
                "CRUD mutations need the upstream database",
            ));
        };
        let perms = self.permissions();
        let auth = creds
            .auth_data
            .clone()
            .unwrap_or_else(|| serde_json::json!({}));
        let mut statements = Vec::new();
        let mut failure = None;
        for op in &m.ops {
            let table = crud_table(op);
            let Some(spec) = self.sources.spec(table).cloned() else {
                tracing::warn!(group = %self.id, table, "CRUD operation on an unknown table skipped");
                continue;
            };
            // As zero-cache: inserting an existing row, or changing a missing one, fails the
            // whole mutation (checked against the replica).
            if let Some(problem) = self.crud_precondition(&spec, op) {
                failure = Some(problem);
                break;
            }
            if !tokio::task::block_in_place(|| self.write_allowed(&spec, op, &perms, &auth)) {
                tracing::debug!(group = %self.id, table, "CRUD operation denied by the write permissions");
                continue;
            }
            if let Some(stmt) = crate::crud::op_sql(&spec, op) {
                statements.push(stmt);
            }
        }
        let shard = self.shared.shard_schema();
        if failure.is_some() {
            statements.clear();
        }
        match crate::crud::apply(
            &pool,
            &shard,
            &self.id,
            &m.client_id,
            m.id,
            &statements,
            failure,
        )
        .await?
        {
            crate::crud::Outcome::Done => Ok(()),
            crate::crud::Outcome::Failed(message) => Err(ErrorBody::mutation_failed(message)),
        }
    }

    /// True when the write permissions allow `op`; evaluated with the query engine on the
    /// replica as it is (pre-mutation and delete rules) and as it would be after the op
    /// (insert and post-mutation rules). No rule means no.
    fn write_allowed(
        &self,
        spec: &zc_types::TableSpec,
        op: &zc_protocol::messages::CrudOp,
        perms: &Permissions,
        auth: &Json,
    ) -> bool {
        use zc_protocol::messages::CrudOp;
        let Some(rules) = perms.table(&spec.name.zero_name()) else {
            return false;
        };
        let (value, kind) = match op {
            CrudOp::Insert { value, .. } => (value, 0),
            CrudOp::Upsert { value, .. } => (value, 1),
            CrudOp::Update { value, .. } => (value, 2),
            CrudOp::Delete { value, .. } => (value, 3),
            #[allow(unreachable_patterns)]
            _ => return false,
        };
        let given = |row: &mut Row| {
            for (k, v) in value.iter() {
                if let Some(i) = spec.columns.iter().position(|c| c.name == k) {
                    row[i] = json_to_value(&spec.columns[i].pg_type.kind, v);
                }
            }
        };
        let mut key_row = vec![Value::Null; spec.columns.len()];
        given(&mut key_row);
        let existing = self.current_row(spec, &key_row);
        let merged = |base: Option<&Row>| {
            let mut row = base
                .cloned()
                .unwrap_or_else(|| vec![Value::Null; spec.columns.len()]);
            given(&mut row);
            row
        };
        let table = spec.name.clone();
        match (kind, &existing) {
            (0, _) | (1, None) => {
                let new = merged(None);
                let change = RowChange::Add(new.clone());
                self.rule_holds(
                    spec,
                    rules.insert.as_ref(),
                    &new,
                    Some((&table, change)),
                    auth,
                    None,
                )
            }
            (1 | 2, Some(old)) => {
                let new = merged(Some(old));
                let pre = self.row_json(spec, old);
                let change = RowChange::Edit {
                    old: old.clone(),
                    new: new.clone(),
                };
                self.rule_holds(spec, rules.update_pre.as_ref(), old, None, auth, Some(&pre))
                    && self.rule_holds(
                        spec,
                        rules.update_post.as_ref(),
                        &new,
                        Some((&table, change)),
                        auth,
                        Some(&pre),
                    )
            }
            (3, Some(old)) => self.rule_holds(spec, rules.delete.as_ref(), old, None, auth, None),
            // Updating or deleting a missing row is a no-op.
            _ => true,
        }
    }

    /// Why `op` cannot apply to the replica's current rows, if it cannot.
    fn crud_precondition(
        &self,
        spec: &zc_types::TableSpec,
        op: &zc_protocol::messages::CrudOp,
    ) -> Option<String> {
        use zc_protocol::messages::CrudOp;
        let (value, must_exist) = match op {
            CrudOp::Insert { value, .. } => (value, Some(false)),
            CrudOp::Update { value, .. } | CrudOp::Delete { value, .. } => (value, Some(true)),
            _ => return None,
        };
        let mut key_row = vec![Value::Null; spec.columns.len()];
        for (k, v) in value.iter() {
            if let Some(i) = spec.columns.iter().position(|c| c.name == k) {
                key_row[i] = json_to_value(&spec.columns[i].pg_type.kind, v);
            }
        }
        let key: serde_json::Map<String, Json> = spec
            .key
            .iter()
            .map(|&k| (spec.columns[k].name.clone(), key_row[k].to_json()))
            .collect();
        let exists = self.current_row(spec, &key_row).is_some();
        let table = spec.name.zero_name();
        match must_exist {
            Some(false) if exists => Some(format!(
                "Error: Row already exists in table {table} with primary key {}",
                Json::Object(key)
            )),
            Some(true) if !exists => Some(format!(
                "Error: Pre-mutation row not found for table {table} with primary key {}",
                Json::Object(key)
            )),
            _ => None,
        }
    }

    fn row_json(&self, spec: &zc_types::TableSpec, row: &Row) -> Json {
        Json::Object(
            spec.columns
                .iter()
                .zip(row)
                .map(|(c, v)| (c.name.clone(), v.to_json()))
                .collect(),
        )
    }

    fn current_row(&self, spec: &zc_types::TableSpec, key_row: &Row) -> Option<Row> {
        let constraint: Vec<(usize, Value)> =
            spec.key.iter().map(|&k| (k, key_row[k].clone())).collect();
        let src = self.sources.source(&spec.name.zero_name())?;
        src.scan(&ScanRequest {
            constraint: &constraint,
            ..ScanRequest::default()
        })
        .ok()?
        .next()?
        .ok()
    }

    /// True when `row` passes one of `rules` (in the state after `change`, if given).
    fn rule_holds(
        &self,
        spec: &zc_types::TableSpec,
        rules: Option<&Vec<zc_protocol::ast::Condition>>,
        row: &Row,
        change: Option<(&TableName, RowChange)>,
        auth: &Json,
        pre: Option<&Json>,
    ) -> bool {
        use zc_protocol::ast::{Condition, SimpleOp, ValuePosition};
        let Some(rules) = rules.filter(|r| !r.is_empty()) else {
            return false;
        };
        let mut sources = self.sources.clone();
        if let Some((table, change)) = &change {
            sources.apply(table, change);
        }
        let mut conds: Vec<Condition> = spec
            .key
            .iter()
            .map(|&k| Condition::Simple {
                op: SimpleOp::Eq,
                left: ValuePosition::Column {
                    name: spec.columns[k].name.clone(),
                },
                right: ValuePosition::Literal {
                    value: row[k].to_json(),
                },
            })
            .collect();
        let mut rule = Condition::Or {
            conditions: rules.clone(),
        };
        crate::permissions::bind_condition(&mut rule, auth, pre);
        conds.push(rule);
        let ast = Ast {
            schema: None,
            table: spec.name.zero_name(),
            alias: None,
            where_: Some(Condition::And { conditions: conds }),
            related: None,
            start: None,
            limit: Some(1),
            order_by: None,
        };
        match TreeQuery::build(&ast, &sources).and_then(|mut t| t.hydrate(&sources)) {
            Ok(rows) => rows
                .iter()
                .any(|(t, c)| t == &spec.name.zero_name() && matches!(c, RowChange::Add(_))),
            Err(e) => {
                tracing::warn!(group = %self.id, error = %e, "a write rule cannot be evaluated; denied");
                false
            }
        }
    }

    fn next_version(&self) -> CvrVersion {
        self.cvr.version.advance_to(self.version)
    }

    /// Writes the CVR (before any client sees its new version).
    async fn commit(&mut self) -> Result<(), ErrorBody> {
        self.shared
            .cvr
            .flush(&mut self.cvr)
            .await
            .map_err(|e| match e {
                zc_cvr::Error::OwnershipLost(_) => ErrorBody::backoff(
                    zc_protocol::messages::BackoffErrorKind::Rehome,
                    "client group is now served by another instance",
                    None,
                    None,
                ),
                other => {
                    ErrorBody::internal(format!("could not write the client view record: {other}"))
                }
            })
    }

    /// After loading, hydrate the CVR's queries so that they are maintained again, and
    /// reconcile: rows that changed in the replica since the CVR's version are marked.
    async fn resume(&mut self) -> Result<(), ErrorBody> {
        if self.resumed {
            return Ok(());
        }
        self.resumed = true;
        let now = now_ms();
        let wanted: Vec<(String, QueryRecord)> = self
            .cvr
            .queries
            .iter()
            .filter(|(h, q)| !q.deleted && self.cvr.expires_at(h).is_none_or(|t| t > now))
            .map(|(h, q)| (h.clone(), q.clone()))
            .collect();
        let stale: Vec<String> = self
            .cvr
            .queries
            .iter()
            .filter(|(h, q)| !q.deleted && self.cvr.expires_at(h).is_some_and(|t| t <= now))
            .map(|(h, _)| h.clone())
            .collect();
        let at = self.next_version();
        let mut changed = false;
        for h in stale {
            self.drop_query(&h, at);
            changed = true;
        }
        let creds = self
            .clients
            .values()
            .next()
            .map(|c| c.creds.clone())
            .unwrap_or_default();
        let asts = self.resolve(&creds, &wanted, None).await;
        for (hash, ast) in asts {
            let Ok(ast) = ast else { continue };
            let rows = self.hydrate(&hash, &ast)?;
            if self.cvr.queries.get(&hash).is_some_and(|q| !q.got) {
                self.cvr.set_got(&hash, true, at);
                changed = true;
            }
            // Reconcile the query's references with what it holds now.
            let mut fresh: BTreeMap<RowId, i64> = BTreeMap::new();
            for id in rows {
                *fresh.entry(id).or_insert(0) += 1;
            }
            let old: Vec<(RowId, i64)> = self
                .cvr
                .rows
                .iter()
                .filter_map(|(id, r)| r.refs.get(&hash).map(|n| (id.clone(), i64::from(*n))))
                .collect();
            let old_map: BTreeMap<RowId, i64> = old.into_iter().collect();
            for (id, n) in &fresh {
                let before = old_map.get(id).copied().unwrap_or(0);
                if before != *n {
                    self.cvr.adjust_row(id, &hash, n - before, at);
                    changed = true;
                }
            }
            for (id, before) in &old_map {
                if !fresh.contains_key(id) {
                    self.cvr.adjust_row(id, &hash, -before, at);
                    changed = true;
                }
            }
        }
        // Held rows whose contents changed upstream since the CVR was written: each one's
        // last change is looked up in the replica's change log, so that the work follows
        // what the group holds, not how much changed upstream meanwhile (a new group's CVR
        // is at version 0, and the log keeps an entry for every row ever changed). A
        // table-wide entry (a truncation, or the table copied again after a schema change)
        // counts for every held row of the table. Rows the resume itself just added or
        // adjusted are put to the clients anyway.
        if self.version > self.cvr.version.state {
            let since = self.cvr.version.state;
            let changed_since =
                |table: &TableName, key: &[Value]| self.changed_after(table, key, since);
            let mut whole_table: HashMap<&str, bool> = HashMap::new();
            let mut touched = Vec::new();
            for (id, row) in &self.values {
                if self.cvr.rows.get(id).is_none_or(|r| r.patch == at) {
                    continue;
                }
                let Some(spec) = self.sources.spec(&id.table) else {
                    continue;
                };
                let all = match whole_table.get(&*id.table) {
                    Some(&all) => all,
                    None => {
                        let all = changed_since(&spec.name, &[])?;
                        whole_table.insert(&id.table, all);
                        all
                    }
                };
                if all || changed_since(&spec.name, &key_of(spec, row))? {
                    touched.push(id.clone());
                }
            }
            for id in touched {
                self.cvr.touch_row(&id, at);
                changed = true;
            }
            // The group's last mutation ids and mutation results that changed meanwhile
            // (a mutation's commit that replicated after the group had left): the version
            // moves on, so that a client whose cookie is the record's version is sent them.
            if !changed && self.meta_changed_since(since)? {
                changed = true;
            }
        }
        // Rows the CVR holds that no live query produced any more are released above; rows
        // without a value (queries that could not be resumed) are dropped from the record.
        let orphans: Vec<RowId> = self
            .cvr
            .rows
            .iter()
            .filter(|(id, r)| !r.refs.is_empty() && !self.values.contains_key(id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in orphans {
            let refs: Vec<(String, u32)> = self.cvr.rows[&id]
                .refs
                .iter()
                .map(|(h, n)| (h.to_owned(), n))
                .collect();
            for (h, n) in refs {
                self.cvr.adjust_row(&id, &h, -i64::from(n), at);
            }
            changed = true;
        }
        if changed {
            self.cvr.version = at;
        }
        Ok(())
    }

    /// Whether a row of this group in the shard's `clients` or `mutations` table changed in
    /// the replica after `since` (one change log lookup per row of the group).
    fn meta_changed_since(&self, since: Lsn) -> Result<bool, ErrorBody> {
        let shard = self.shared.shard_schema();
        let read = |e: &dyn std::fmt::Display| ErrorBody::internal(format!("replica: {e}"));
        for table in [format!("{shard}.clients"), format!("{shard}.mutations")] {
            let Some(src) = self.sources.source(&table) else {
                continue;
            };
            let spec = src.spec();
            let Some(g) = spec.columns.iter().position(|c| c.name == "clientGroupID") else {
                continue;
            };
            let after = |key: &[Value]| self.changed_after(&spec.name, key, since);
            if after(&[])? {
                return Ok(true);
            }
            let rows = src
                .scan(&ScanRequest {
                    constraint: &[(g, Value::Text(self.id.clone()))],
                    ..ScanRequest::default()
                })
                .map_err(|e| read(&e))?;
            for row in rows {
                let row = row.map_err(|e| read(&e))?;
                if after(&key_of(spec, &row))? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Whether the replica's change log has a change of `table`'s row `key` (a table-wide
    /// one for an empty key) after `since`.
    fn changed_after(
        &self,
        table: &TableName,
        key: &[Value],
        since: Lsn,
    ) -> Result<bool, ErrorBody> {
        self.sources
            .snapshot()
            .last_change(table, key)
            .map(|v| v.is_some_and(|v| v > since))
            .map_err(|e| ErrorBody::internal(format!("replica: {e}")))
    }

    /// Turns desired queries into ASTs: ad-hoc ASTs as they are, named ones through the
    /// query endpoint. Per-query failures are reported to `client`.
    async fn resolve(
        &mut self,
        creds: &Credentials,
        queries: &[(String, QueryRecord)],
        client: Option<&str>,
    ) -> Vec<(String, Result<Ast, ErroredQuery>)> {
        let mut out = Vec::new();
        let mut named = Vec::new();
        let mut answers = Vec::new();
        for (hash, q) in queries {
            if let Some(name) = &q.name {
                // Transformed on the connection's way here, with these credentials.
                if let Some((made_with, prefetched)) = self.prefetched.as_mut()
                    && made_with == creds
                    && let Some(answer) = prefetched.remove(hash)
                {
                    answers.push((hash.clone(), answer));
                    continue;
                }
                let args = match &q.args {
                    Some(Json::Array(a)) => a.clone(),
                    Some(other) => vec![other.clone()],
                    None => vec![],
                };
                named.push(NamedQuery {
                    id: hash.clone(),
                    name: name.clone(),
                    args,
                });
            } else if let Some(ast) = &q.ast {
                // Ad-hoc ASTs (legacy queries) run with the deployed read permissions.
                if let Ok(ast) = zc_protocol::ast::from_value(ast.clone()) {
                    let perms = self.permissions();
                    let auth = creds
                        .auth_data
                        .clone()
                        .unwrap_or_else(|| serde_json::json!({}));
                    out.push((hash.clone(), Ok(perms.transform_query(&ast, &auth))));
                }
            }
        }
        if !named.is_empty() {
            if !self.shared.forwarder.has_query_url() {
                tracing::warn!(group = %self.id, "named queries need ZERO_QUERY_URL; they stay unresolved");
            } else {
                match self.shared.forwarder.transform(creds, &named).await {
                    Ok(results) => answers.extend(results),
                    Err(e) => {
                        if let Some(c) = client {
                            self.send_error(c, e).await;
                        }
                    }
                }
            }
        }
        let mut errors = Vec::new();
        for (id, t) in answers {
            match t {
                Transformed::Ast(ast) => out.push((id, Ok(*ast))),
                Transformed::Error(e) => {
                    errors.push(e.clone());
                    out.push((id, Err(e)));
                }
            }
        }
        if !errors.is_empty()
            && let Some(c) = client.and_then(|c| self.clients.get(c))
        {
            let _ = c.out.send(Downstream::TransformError(errors)).await;
        }
        out
    }

    /// The deployed permissions (none: nothing is readable or writable).
    pub(crate) fn permissions(&self) -> Permissions {
        let table = format!("{}.permissions", self.shared.config.app_id);
        let Some(src) = self.sources.source(&table) else {
            return Permissions::default();
        };
        let Some(col) = src
            .spec()
            .columns
            .iter()
            .position(|c| c.name == "permissions")
        else {
            return Permissions::default();
        };
        let Ok(mut rows) = src.scan(&ScanRequest::default()) else {
            return Permissions::default();
        };
        match rows.next() {
            Some(Ok(row)) => {
                let json = row.get(col).map(Value::to_json).unwrap_or(Json::Null);
                Permissions::parse(&json).unwrap_or_else(|e| {
                    tracing::warn!(group = %self.id, error = %e, "deployed permissions cannot be read; nothing is readable");
                    Permissions::default()
                })
            }
            _ => Permissions::default(),
        }
    }

    /// Subscribes a query to its shared pipeline (built and hydrated if no group runs it
    /// yet); returns the rows it holds (one per holding partition).
    fn hydrate(&mut self, hash: &str, ast: &Ast) -> Result<Vec<RowId>, ErrorBody> {
        let shared = Arc::clone(&self.shared);
        let subscribed = tokio::task::block_in_place(|| shared.hub.subscribe(&shared.replica, ast));
        let (sub, rows) = match subscribed {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(group = %self.id, query = hash, error = %e, "query cannot run");
                if let Some(old) = self.live.remove(hash) {
                    self.shared.hub.unsubscribe(&old);
                }
                return Ok(Vec::new());
            }
        };
        if let Some(old) = self.live.insert(hash.to_owned(), sub) {
            self.shared.hub.unsubscribe(&old);
        }
        self.resolved.insert(hash.to_owned(), ast.clone());
        let mut ids = Vec::new();
        for (id, n, row) in rows {
            for _ in 0..n {
                ids.push(id.clone());
            }
            self.values.insert(id, row);
        }
        Ok(ids)
    }

    fn unsubscribe_all(&mut self) {
        for (_, sub) in std::mem::take(&mut self.live) {
            self.shared.hub.unsubscribe(&sub);
        }
    }

    /// Releases a query's rows and forgets it.
    fn drop_query(&mut self, hash: &str, at: CvrVersion) {
        self.release_refs(hash, at);
        self.cvr.delete_query(hash, at);
    }

    /// Releases a query's rows (its pipeline stops).
    fn release_refs(&mut self, hash: &str, at: CvrVersion) {
        if let Some(sub) = self.live.remove(hash) {
            self.shared.hub.unsubscribe(&sub);
        }
        self.resolved.remove(hash);
        let held: Vec<(RowId, u32)> = self
            .cvr
            .rows
            .iter()
            .filter_map(|(id, r)| r.refs.get(hash).map(|n| (id.clone(), *n)))
            .collect();
        for (id, n) in held {
            if !self.cvr.adjust_row(&id, hash, -i64::from(n), at) {
                self.values.remove(&id);
            }
        }
    }

    /// Applies a client's desired-queries patch: new queries are resolved and hydrated,
    /// queries no client desires any more are dropped.
    async fn change_queries(
        &mut self,
        client: &str,
        patch: Vec<UpQueriesPatchOp>,
    ) -> Result<(), ErrorBody> {
        if patch.is_empty() {
            return Ok(());
        }
        // Catch up with the shared pipelines first, so that new queries join them at the
        // group's own version.
        self.advance(None).await?;
        let at = self.next_version();
        let mut added: Vec<(String, QueryRecord)> = Vec::new();
        let mut removed = Vec::new();
        let mut refused = Vec::new();
        for op in patch {
            match op {
                UpQueriesPatchOp::Put {
                    hash,
                    ast,
                    name,
                    args,
                    ttl,
                } => {
                    if holds_nul(&hash, name.as_deref(), args.as_deref(), ast.as_deref()) {
                        // The CVR could not store it: refused alone, the rest goes on.
                        refused.push(ErroredQuery::Parse {
                            id: hash,
                            name: name.unwrap_or_default(),
                            message: "the query contains a NUL character, which zc cannot store"
                                .to_owned(),
                            details: None,
                        });
                        continue;
                    }
                    self.cvr.desire(client, &hash, ttl, at);
                    let known =
                        self.cvr.queries.get(&hash).is_some_and(|q| {
                            !q.deleted && (q.got || self.live.contains_key(&hash))
                        });
                    if !known {
                        self.release_refs(&hash, at);
                        let record = QueryRecord {
                            name,
                            args: args.map(Json::Array),
                            ast: ast.map(|a| serde_json::to_value(&*a).unwrap_or(Json::Null)),
                            got: false,
                            deleted: false,
                            patch: at,
                        };
                        self.cvr.put_query(&hash, record.clone());
                        added.push((hash, record));
                    }
                }
                UpQueriesPatchOp::Del { hash } => {
                    self.cvr.undesire(client, &hash, at, now_ms());
                    removed.push(hash);
                }
                UpQueriesPatchOp::Clear => {
                    let mine: Vec<String> = self
                        .cvr
                        .desires
                        .iter()
                        .filter(|((c, _), d)| c == client && !d.deleted)
                        .map(|((_, h), _)| h.clone())
                        .collect();
                    for h in mine {
                        self.cvr.undesire(client, &h, at, now_ms());
                        removed.push(h);
                    }
                }
            }
        }
        if !refused.is_empty()
            && let Some(c) = self.clients.get(client)
        {
            let _ = c.out.send(Downstream::TransformError(refused)).await;
        }
        // A query no client desires stays for its time to live (see `expire`).
        let now = now_ms();
        for h in removed {
            if self.cvr.expires_at(&h).is_some_and(|t| t <= now) {
                self.drop_query(&h, at);
            }
        }
        let creds = self.creds(client);
        let started = Instant::now();
        let resolved = self.resolve(&creds, &added, Some(client)).await;
        let resolved_at = started.elapsed();
        let mut rows = 0usize;
        for (hash, ast) in resolved {
            match ast {
                Ok(ast) => {
                    for id in self.hydrate(&hash, &ast)? {
                        self.cvr.adjust_row(&id, &hash, 1, at);
                        rows += 1;
                    }
                    self.cvr.set_got(&hash, true, at);
                }
                Err(_) => {
                    // Reported as a transform error; the query stays desired, not got.
                }
            }
        }
        if !added.is_empty() {
            tracing::debug!(
                group = %self.id,
                queries = added.len(),
                rows,
                resolve_ms = resolved_at.as_secs_f64() * 1e3,
                hydrate_ms = (started.elapsed() - resolved_at).as_secs_f64() * 1e3,
                "queries resolved and hydrated"
            );
        }
        if self.cvr.has_patches() {
            self.cvr.version = at;
        }
        Ok(())
    }

    /// Clients of the group that are not in `active` (as the connecting client knows them)
    /// are gone: their desires end, and their queries live out their time to live.
    fn inactivate_clients(&mut self, active: &[String]) {
        let at = self.next_version();
        let now = now_ms();
        let gone: Vec<(String, String)> = self
            .cvr
            .desires
            .iter()
            .filter(|((c, _), d)| {
                !d.deleted && !active.contains(c) && !self.clients.contains_key(c)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for (c, h) in gone {
            self.cvr.undesire(&c, &h, at, now);
        }
        if self.cvr.has_patches() {
            self.cvr.version = at;
        }
    }

    /// The next time a query no client desires any more must be dropped.
    fn next_expiry(&self) -> Option<i64> {
        self.cvr
            .queries
            .iter()
            .filter(|(_, q)| !q.deleted)
            .filter_map(|(h, _)| self.cvr.expires_at(h))
            .min()
    }

    /// Drops the queries whose time to live has passed.
    async fn expire(&mut self) -> Result<(), ErrorBody> {
        let now = now_ms();
        let due: Vec<String> = self
            .cvr
            .queries
            .iter()
            .filter(|(h, q)| !q.deleted && self.cvr.expires_at(h).is_some_and(|t| t <= now))
            .map(|(h, _)| h.clone())
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let at = self.next_version();
        for h in due {
            self.drop_query(&h, at);
        }
        self.cvr.version = at;
        self.commit_and_poke(&Meta::default(), None).await?;
        Ok(())
    }

    /// LMIDs and mutation results of the whole group, for a client that may lack them.
    fn full_meta(&self, client: &str) -> Meta {
        let mut meta = Meta::default();
        let is_current = self
            .clients
            .get(client)
            .and_then(|c| c.cookie.as_deref())
            .is_some_and(|c| c == self.cvr.version.cookie());
        if is_current {
            return meta;
        }
        let shard = self.shared.shard_schema();
        let group = Value::Text(self.id.clone());
        let clients_table = format!("{shard}.clients");
        if let Some(src) = self.sources.source(&clients_table) {
            let spec = src.spec();
            if let (Some(g), Some(c), Some(l)) = (
                spec.columns.iter().position(|c| c.name == "clientGroupID"),
                spec.columns.iter().position(|c| c.name == "clientID"),
                spec.columns.iter().position(|c| c.name == "lastMutationID"),
            ) && let Ok(rows) = src.scan(&ScanRequest {
                constraint: &[(g, group.clone())],
                ..ScanRequest::default()
            }) {
                for row in rows.flatten() {
                    if let (Some(Value::Text(c)), Some(Value::Int(l))) = (row.get(c), row.get(l)) {
                        meta.lmids.insert(c.clone(), u64::try_from(*l).unwrap_or(0));
                    }
                }
            }
        }
        let mutations_table = format!("{shard}.mutations");
        if let Some(src) = self.sources.source(&mutations_table) {
            let spec = src.spec();
            if let Some(g) = spec.columns.iter().position(|c| c.name == "clientGroupID")
                && let Ok(rows) = src.scan(&ScanRequest {
                    constraint: &[(g, group)],
                    ..ScanRequest::default()
                })
            {
                for row in rows.flatten() {
                    if let Some(op) = mutation_put(spec, &row) {
                        meta.mutations.push(op);
                    }
                }
            }
        }
        meta
    }

    /// Applies the shared pipelines' pending steps (`first`, then whatever else is
    /// queued), then writes the CVR and pokes the clients once for all of them.
    async fn advance(&mut self, first: Option<Arc<Step>>) -> Result<(), ErrorBody> {
        let previous = self.cvr.version;
        let mut meta = Meta::default();
        let mut next = first;
        loop {
            let step = match next.take() {
                Some(s) => s,
                None => match self.steps.try_recv() {
                    Ok(s) => s,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        self.rejoin(&mut meta)?;
                        break;
                    }
                },
            };
            self.apply_step(&step, &mut meta)?;
        }
        if self.cvr.version == previous {
            return Ok(());
        }
        if self.clients.is_empty() {
            // No client was sent this version, so none can come back with it: the record
            // is written when a client connects (before its poke ends) or when the group
            // leaves, not for every upstream write while the group waits for one.
            self.cvr.forget_changes_through(self.cvr.version);
            return Ok(());
        }
        self.commit_and_poke(&meta, None).await?;
        Ok(())
    }

    /// The hub dropped this group (it fell too far behind): register again and rebuild
    /// every query at the hub's current version.
    fn rejoin(&mut self, meta: &mut Meta) -> Result<(), ErrorBody> {
        let shared = Arc::clone(&self.shared);
        let (sources, version, steps) =
            tokio::task::block_in_place(|| shared.hub.register(&shared.replica))
                .map_err(|e| ErrorBody::internal(e.to_string()))?;
        tracing::warn!(group = %self.id, "fell behind the shared pipelines; rebuilding its queries");
        self.steps = steps;
        self.sources = sources;
        self.version = self.version.max(version);
        self.rehydrate_all()?;
        *meta = self.full_meta("");
        Ok(())
    }

    /// One step of the shared pipelines: the outputs of the pipelines this group's queries
    /// run on go into the CVR, at the step's version.
    fn apply_step(&mut self, step: &Step, meta: &mut Meta) -> Result<(), ErrorBody> {
        if step.to <= self.version {
            return Ok(());
        }
        self.version = step.to;
        self.sources = step.sources.clone();
        let at = self.next_version();
        match &step.kind {
            StepKind::Rows { changes, outputs } => {
                self.meta_changes(changes, meta);
                // The queries on each pipeline that subscribed before this step.
                let mut by_key: HashMap<Arc<str>, Vec<String>> = HashMap::new();
                for (hash, sub) in &self.live {
                    if sub.at < step.to {
                        by_key
                            .entry(Arc::clone(&sub.key))
                            .or_default()
                            .push(hash.clone());
                    }
                }
                let mut changed = false;
                for (key, id, out) in outputs {
                    let Some(hashes) = by_key.get(key) else {
                        continue;
                    };
                    changed = true;
                    for hash in hashes {
                        match out {
                            Output::Add(row) => {
                                self.cvr.adjust_row(id, hash, 1, at);
                                self.values.insert(id.clone(), Arc::clone(row));
                            }
                            Output::Remove => {
                                if !self.cvr.adjust_row(id, hash, -1, at) {
                                    self.values.remove(id);
                                }
                            }
                            Output::Edit(new) => {
                                self.cvr.touch_row(id, at);
                                self.values.insert(id.clone(), Arc::clone(new));
                            }
                        }
                    }
                }
                if changed || !meta.is_empty() {
                    self.cvr.version = at;
                }
                // New permissions: ad-hoc queries run again under the new rules.
                let permissions = format!("{}.permissions", self.shared.config.app_id);
                if changes.iter().any(|(t, _)| t.zero_name() == permissions) {
                    self.reapply_permissions()?;
                }
            }
            StepKind::Reset { meta: changes } => {
                // The permissions may have changed along with everything else.
                self.resolve_adhoc_again();
                self.rehydrate_all()?;
                match changes {
                    Some(changes) => self.meta_changes(changes, meta),
                    None => *meta = self.full_meta(""),
                }
            }
        }
        Ok(())
    }

    /// The changes among `changes` to the shard's `clients` and `mutations` tables.
    fn meta_changes(&self, changes: &[(TableName, RowChange)], meta: &mut Meta) {
        let shard = self.shared.shard_schema();
        for (table, change) in changes {
            if table.schema == shard {
                self.meta_change(table, change, meta);
            }
        }
    }

    /// A change to the shard's `clients` or `mutations` table of this group.
    fn meta_change(&self, table: &TableName, change: &RowChange, meta: &mut Meta) {
        let Some(spec) = self.sources.spec(&table.zero_name()) else {
            return;
        };
        let col = |name: &str| spec.columns.iter().position(|c| c.name == name);
        let ours = |row: &Row| {
            col("clientGroupID")
                .and_then(|g| row.get(g))
                .is_some_and(|v| *v == Value::Text(self.id.clone()))
        };
        match (table.name.as_str(), change) {
            ("clients", RowChange::Add(row) | RowChange::Edit { new: row, .. }) if ours(row) => {
                if let (Some(c), Some(l)) = (col("clientID"), col("lastMutationID"))
                    && let (Some(Value::Text(c)), Some(Value::Int(l))) = (row.get(c), row.get(l))
                {
                    meta.lmids.insert(c.clone(), u64::try_from(*l).unwrap_or(0));
                }
            }
            ("mutations", RowChange::Add(row) | RowChange::Edit { new: row, .. }) if ours(row) => {
                if let Some(op) = mutation_put(spec, row) {
                    meta.mutations.push(op);
                }
            }
            ("mutations", RowChange::Remove(row)) if ours(row) => {
                if let (Some(c), Some(m)) = (col("clientID"), col("mutationID"))
                    && let (Some(Value::Text(c)), Some(Value::Int(m))) = (row.get(c), row.get(m))
                {
                    meta.mutations.push(MutationPatchOp::Del {
                        id: MutationId {
                            client_id: c.clone(),
                            id: u64::try_from(*m).unwrap_or(0),
                        },
                    });
                }
            }
            _ => {}
        }
    }

    /// Rebuilds every pipeline from the current snapshot (after a table was truncated or
    /// replaced) and reconciles the CVR.
    fn rehydrate_all(&mut self) -> Result<(), ErrorBody> {
        let at = self.next_version();
        let hashes: Vec<String> = self.live.keys().cloned().collect();
        let old_values = std::mem::take(&mut self.values);
        for hash in hashes {
            let Some(ast) = self.live_ast(&hash) else {
                continue;
            };
            let held: Vec<(RowId, u32)> = self
                .cvr
                .rows
                .iter()
                .filter_map(|(id, r)| r.refs.get(&hash).map(|n| (id.clone(), *n)))
                .collect();
            for (id, n) in held {
                self.cvr.adjust_row(&id, &hash, -i64::from(n), at);
            }
            for id in self.hydrate(&hash, &ast)? {
                self.cvr.adjust_row(&id, &hash, 1, at);
            }
        }
        // Every held row may have changed.
        let ids: Vec<RowId> = self.values.keys().cloned().collect();
        for id in ids {
            if old_values.get(&id) != self.values.get(&id) {
                self.cvr.touch_row(&id, at);
            }
        }
        self.cvr.version = at;
        Ok(())
    }

    /// Re-derives every ad-hoc query from its AST under the current permissions and
    /// rebuilds the pipelines.
    fn reapply_permissions(&mut self) -> Result<(), ErrorBody> {
        if self.resolve_adhoc_again() {
            self.rehydrate_all()
        } else {
            Ok(())
        }
    }

    /// Re-derives every ad-hoc query from its AST under the current permissions (without
    /// rebuilding anything); whether the group has any.
    fn resolve_adhoc_again(&mut self) -> bool {
        let perms = self.permissions();
        let auth = self
            .clients
            .values()
            .find_map(|c| c.creds.auth_data.clone())
            .unwrap_or_else(|| serde_json::json!({}));
        let adhoc: Vec<(String, Json)> = self
            .cvr
            .queries
            .iter()
            .filter(|(h, q)| !q.deleted && q.name.is_none() && self.live.contains_key(*h))
            .filter_map(|(h, q)| q.ast.clone().map(|a| (h.clone(), a)))
            .collect();
        if adhoc.is_empty() {
            return false;
        }
        for (hash, ast) in adhoc {
            if let Ok(ast) = zc_protocol::ast::from_value(ast) {
                self.resolved
                    .insert(hash, perms.transform_query(&ast, &auth));
            }
        }
        true
    }

    fn live_ast(&self, hash: &str) -> Option<Ast> {
        self.resolved.get(hash).cloned()
    }

    /// Writes the CVR and pokes the clients, overlapping the two: every poke's start and
    /// rows go out while the CVR is written, and its end, which carries the new cookie, only
    /// after the write committed. A client applies a poke at its end, so it never holds a
    /// cookie the CVR does not have; if the write fails, the group fails and its clients
    /// drop the unfinished pokes with the connection.
    async fn commit_and_poke(&mut self, meta: &Meta, fresh: Option<&str>) -> Result<(), ErrorBody> {
        let started = Instant::now();
        let ends = self.poke_all(meta, fresh).await;
        let poked_at = started.elapsed();
        self.commit().await?;
        tracing::trace!(
            group = %self.id,
            poke_ms = poked_at.as_secs_f64() * 1e3,
            cvr_flush_ms = (started.elapsed() - poked_at).as_secs_f64() * 1e3,
            "poked and committed"
        );
        for (name, poke_id, end_cookie) in ends {
            let Some(client) = self.clients.get_mut(&name) else {
                continue;
            };
            let sent = client
                .out
                .send(Downstream::PokeEnd(PokeEndBody::new(
                    poke_id,
                    end_cookie.clone(),
                )))
                .await
                .is_ok();
            if sent {
                client.cookie = Some(end_cookie);
            } else {
                self.clients.remove(&name);
            }
        }
        self.last_poke = Some(Instant::now());
        // The record need not list the changes no connected client is behind any more.
        let oldest = self
            .clients
            .values()
            .filter_map(|c| c.cookie.as_deref())
            .map(|c| CvrVersion::parse(c).ok())
            .min();
        match oldest {
            Some(Some(v)) => self.cvr.forget_changes_through(v.min(self.cvr.version)),
            // An unreadable cookie scans anyway.
            Some(None) => {}
            None => self.cvr.forget_changes_through(self.cvr.version),
        }
        Ok(())
    }

    /// Sends every connected client the start and the rows of a poke with what changed
    /// since its cookie (and `meta`); returns the pokes to end: (client, poke id, cookie).
    /// The client `fresh` just connected: it always gets a poke.
    async fn poke_all(
        &mut self,
        meta: &Meta,
        fresh: Option<&str>,
    ) -> Vec<(String, String, String)> {
        let mut ends = Vec::new();
        let version = self.cvr.version;
        let cookie = version.cookie();
        let names: Vec<String> = self.clients.keys().cloned().collect();
        for name in names {
            let Some(client) = self.clients.get(&name) else {
                continue;
            };
            let since = client
                .cookie
                .as_deref()
                .and_then(|c| CvrVersion::parse(c).ok());
            let is_fresh = fresh == Some(name.as_str());
            let client_meta = meta;
            if since == Some(version) && !is_fresh {
                continue;
            }
            let changes = match self.shared.cvr.changes_since(&self.cvr, since).await {
                Ok(changes) => changes,
                Err(e) => {
                    // The deletes it is owed cannot be read: it reconnects and tries again.
                    if let Some(c) = self.clients.remove(&name) {
                        let _ = c
                            .out
                            .send(Downstream::Error(ErrorBody::internal(format!(
                                "reading the client view record failed: {}",
                                error_chain(&e)
                            ))))
                            .await;
                    }
                    continue;
                }
            };
            self.poke_seq += 1;
            let base = client.cookie.clone();
            let up_to_date = since == Some(version);
            let poke_id = if up_to_date {
                format!("{cookie}.{}", self.poke_seq)
            } else {
                cookie.clone()
            };
            let mut part = PokePartBody::new(poke_id.clone());
            if !up_to_date {
                let mut desired: BTreeMap<String, Vec<QueriesPatchOp>> = BTreeMap::new();
                for (c, h, on) in &changes.desires {
                    desired.entry(c.clone()).or_default().push(if *on {
                        QueriesPatchOp::put(h.clone())
                    } else {
                        QueriesPatchOp::del(h.clone())
                    });
                }
                if !desired.is_empty() {
                    part.desired_queries_patches = Some(desired);
                }
                let got: Vec<QueriesPatchOp> = changes
                    .got
                    .iter()
                    .map(|(h, on)| {
                        if *on {
                            QueriesPatchOp::put(h.clone())
                        } else {
                            QueriesPatchOp::del(h.clone())
                        }
                    })
                    .collect();
                if !got.is_empty() {
                    part.got_queries_patch = Some(got);
                }
                let mut rows = Vec::new();
                for (id, present) in &changes.rows {
                    if *present {
                        if let Some(value) = self.values.get(id)
                            && let Some(spec) = self.sources.spec(&id.table)
                        {
                            let wire: WireRow = spec
                                .columns
                                .iter()
                                .zip(value.iter())
                                .map(|(c, v)| (c.name.clone(), v.to_json()))
                                .collect();
                            rows.push(RowPatchOp::Put {
                                table_name: id.table.to_string(),
                                value: wire,
                            });
                        }
                    } else if let Ok(Json::Object(key)) = serde_json::from_str::<Json>(&id.key) {
                        rows.push(RowPatchOp::Del {
                            table_name: id.table.to_string(),
                            id: key.into_iter().collect(),
                        });
                    }
                }
                tracing::trace!(group = %self.id, client = %name, rows = rows.len(), "poke built");
                if !rows.is_empty() {
                    part.rows_patch = Some(rows);
                }
                if !client_meta.lmids.is_empty() {
                    part.last_mutation_id_changes = Some(client_meta.lmids.clone());
                }
                if !client_meta.mutations.is_empty() {
                    part.mutations_patch = Some(client_meta.mutations.clone());
                }
            }
            let end_cookie = if up_to_date {
                base.clone().unwrap_or_else(|| cookie.clone())
            } else {
                cookie.clone()
            };
            let out = client.out.clone();
            let mut start = PokeStartBody::new(poke_id.clone(), base);
            start.timestamp = Some(now_ms());
            let mut ok = out.send(Downstream::PokeStart(start)).await.is_ok();
            if !part.is_empty() {
                for part in split_part(part) {
                    ok = ok && out.send(Downstream::PokePart(part)).await.is_ok();
                }
            }
            if ok {
                ends.push((name, poke_id, end_cookie));
            } else {
                self.clients.remove(&name);
            }
        }
        ends
    }
}

/// Row patches per poke part at most: a large poke (a hydration) goes out as several
/// moderate messages instead of one. A connection's write buffer keeps the size of the
/// largest message it sent, so this bounds what every connection holds (~16 KiB for the
/// benchmark's rows; 100, zero-cache's count, kept twice that).
const POKE_PART_ROWS: usize = 50;

/// Splits `part` into parts of at most [`POKE_PART_ROWS`] row patches, in order; the first
/// keeps every other patch.
fn split_part(mut part: PokePartBody) -> Vec<PokePartBody> {
    let rows = match part.rows_patch.take() {
        Some(rows) if rows.len() > POKE_PART_ROWS => rows,
        rows => {
            part.rows_patch = rows;
            return vec![part];
        }
    };
    let poke_id = part.poke_id.clone();
    let mut parts = vec![part];
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<RowPatchOp> = rows.by_ref().take(POKE_PART_ROWS).collect();
        match parts.last_mut() {
            Some(last) if last.rows_patch.is_none() => last.rows_patch = Some(chunk),
            _ => {
                let mut next = PokePartBody::new(poke_id.clone());
                next.rows_patch = Some(chunk);
                parts.push(next);
            }
        }
    }
    parts
}

fn crud_table(op: &zc_protocol::messages::CrudOp) -> &str {
    use zc_protocol::messages::CrudOp;
    match op {
        CrudOp::Insert { table_name, .. }
        | CrudOp::Upsert { table_name, .. }
        | CrudOp::Update { table_name, .. }
        | CrudOp::Delete { table_name, .. } => table_name,
        #[allow(unreachable_patterns)]
        _ => "",
    }
}

/// A client-sent JSON value as the replica stores a column of this kind.
fn json_to_value(kind: &zc_types::TypeKind, v: &Json) -> Value {
    use zc_types::TypeKind as K;
    match (kind, v) {
        (_, Json::Null) => Value::Null,
        (K::Int, Json::Number(n)) => n
            .as_i64()
            .map(Value::Int)
            .unwrap_or_else(|| Value::Float(n.as_f64().unwrap_or(f64::NAN))),
        (
            K::Float | K::Numeric | K::Timestamp | K::TimestampTz | K::Date | K::Time | K::TimeTz,
            Json::Number(n),
        ) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        (K::Bool, Json::Bool(b)) => Value::Bool(*b),
        (K::Json | K::Jsonb | K::Array(_), other) => Value::Json(other.to_string()),
        (_, Json::String(s)) => Value::Text(s.clone()),
        (_, other) => zc_query::filter::literal_value(other),
    }
}

fn mutation_put(spec: &zc_types::TableSpec, row: &Row) -> Option<MutationPatchOp> {
    let col = |name: &str| spec.columns.iter().position(|c| c.name == name);
    let (Some(Value::Text(client)), Some(Value::Int(id))) =
        (row.get(col("clientID")?), row.get(col("mutationID")?))
    else {
        return None;
    };
    let result_json = row.get(col("result")?)?.to_json();
    let result: MutationResult = serde_json::from_value(result_json).ok()?;
    Some(MutationPatchOp::Put {
        mutation: MutationResponse {
            id: MutationId {
                client_id: client.clone(),
                id: u64::try_from(*id).unwrap_or(0),
            },
            result,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(i: usize) -> RowPatchOp {
        RowPatchOp::Put {
            table_name: "issue".into(),
            value: [("id".to_owned(), Json::from(i))].into_iter().collect(),
        }
    }

    /// A part with more than a part's worth of rows becomes several, in order; the first keeps
    /// the query patches, and a small part stays as it is.
    #[test]
    fn large_parts_are_split_in_order() {
        let mut part = PokePartBody::new("p1");
        part.got_queries_patch = Some(vec![QueriesPatchOp::put("h".to_owned())]);
        let n = POKE_PART_ROWS * 5 / 2;
        part.rows_patch = Some((0..n).map(put).collect());
        let parts = split_part(part);
        let sizes: Vec<usize> = parts
            .iter()
            .map(|p| p.rows_patch.as_ref().map_or(0, Vec::len))
            .collect();
        let half = POKE_PART_ROWS / 2;
        assert_eq!(sizes, vec![POKE_PART_ROWS, POKE_PART_ROWS, half]);
        assert!(parts.iter().all(|p| p.poke_id == "p1"));
        assert!(parts[0].got_queries_patch.is_some());
        assert!(parts[1..].iter().all(|p| p.got_queries_patch.is_none()));
        let ids: Vec<RowPatchOp> = parts
            .into_iter()
            .flat_map(|p| p.rows_patch.unwrap_or_default())
            .collect();
        assert_eq!(ids, (0..n).map(put).collect::<Vec<_>>());

        let mut small = PokePartBody::new("p2");
        small.rows_patch = Some((0..POKE_PART_ROWS).map(put).collect());
        assert_eq!(split_part(small).len(), 1);
    }

    fn future_size<F, Fut>(_: F) -> usize
    where
        F: FnOnce(Arc<Shared>, String, mpsc::Receiver<GroupMsg>) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// A group's task lives as long as the group: its future must not keep room for the
    /// largest thing the group ever awaits (8 KiB before those awaits were boxed).
    #[test]
    fn the_group_task_stays_small() {
        let size = future_size(Group::run);
        assert!(size < 4096, "Group::run's future is {size} bytes");
    }
}

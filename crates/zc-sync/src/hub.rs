//! Query pipelines shared between client groups.
//!
//! A pipeline is keyed by the query as it runs: the resolved AST (after the query
//! endpoint's transform or the read permissions), which already carries whatever of the
//! user's auth context the query depends on. Every client group that runs the same AST
//! subscribes to one pipeline; zero-cache builds one per group.
//!
//! The hub advances with the replica: on each new replica version, the first group to
//! notice calls [`Hub::advance`], which diffs the snapshots once, pushes every change
//! through every pipeline once, and sends each registered group one [`Step`]: the row
//! changes (for the group's own bookkeeping of the shard tables) and every pipeline's
//! output in change order. Groups apply the outputs of the pipelines they subscribe to,
//! in order, to their client view records.
//!
//! When more rows changed between two versions than pushing them is worth (see
//! [`MIN_REBUILD_SPAN`]), the step is a reset instead: the pipelines are rebuilt at the new
//! version and groups rebuild their queries against their CVRs.
//!
//! A group subscribes at the hub's current version and receives the pipeline's rows at
//! that version; outputs of steps up to that version are not for it. Groups catch up on
//! their pending steps before they subscribe, so the two versions are normally equal.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
use zc_cvr::RowId;
use zc_protocol::ast::Ast;
use zc_query::pipeline::RowChange;
use zc_query::tree::TreeQuery;
use zc_replica::Replica;
use zc_types::{Lsn, Row, TableName, Value};

use crate::{Advance, SnapshotSources, diff_bounded};

/// What changed from one replica version to the next, for the groups.
#[derive(Debug)]
pub(crate) struct Step {
    /// The version the step leads to.
    pub(crate) to: Lsn,
    /// The sources at `to` (no overlay).
    pub(crate) sources: SnapshotSources,
    pub(crate) kind: StepKind,
}

#[derive(Debug)]
pub(crate) enum StepKind {
    Rows {
        /// The replica's row changes, in order.
        changes: Vec<(TableName, RowChange)>,
        /// Every pipeline's output, in change order: (pipeline key, row, change).
        outputs: Vec<(Arc<str>, RowId, Output)>,
    },
    /// Every pipeline is gone (tables were rebuilt, or too many rows changed at once to
    /// push them through): groups subscribe again.
    Reset {
        /// The changes of the shard's tables (`clients`, `mutations`), for the groups' own
        /// bookkeeping; `None` when unknown (a table was rebuilt).
        meta: Option<Vec<(TableName, RowChange)>>,
    },
}

/// A pipeline's output as groups need it: a row's new contents, shared by every group that
/// holds the row (and by the pipeline's own record of its rows).
#[derive(Debug)]
pub(crate) enum Output {
    Add(Arc<Row>),
    Remove,
    Edit(Arc<Row>),
}

impl Output {
    fn of(change: RowChange) -> Output {
        match change {
            RowChange::Add(row) => Output::Add(Arc::new(row)),
            RowChange::Remove(_) => Output::Remove,
            RowChange::Edit { new, .. } => Output::Edit(Arc::new(new)),
        }
    }
}

/// Steps a group may have queued before the hub drops it (see [`Hub::advance`]).
const STEP_BACKLOG: usize = 1024;

/// Rows changed between two versions beyond which the hub rebuilds its pipelines at the new
/// version instead of pushing every change through them: at least this many, and more than
/// [`rebuild_limit`] weighs a rebuild at. A rebuild costs about one hydration of every
/// pipeline plus every subscribed group reconciling its CVR with the rebuilt rows, and holds
/// no change in memory; pushing costs and holds every change. zero-cache's view syncers do
/// the same when an advance would take longer than their hydration did. It bounds the work
/// and the memory of a step after a bulk change upstream, and when the pipelines fall behind
/// a write rate they cannot sustain (each step would otherwise span more versions than the
/// last).
const MIN_REBUILD_SPAN: usize = 2048;

/// How many changed rows a step may push before a rebuild is cheaper: twice the rows the
/// pipelines hold (a changed row costs about what hydrating a row does: lookups in two
/// snapshots, then the pipeline), plus a sixteenth of the rows their groups hold through
/// them (a group reconciles a rebuilt row in a small fraction of that).
fn rebuild_limit(pipelines: &HashMap<Arc<str>, Shared>) -> usize {
    let (held, by_groups) = pipelines.values().fold((0usize, 0usize), |(h, g), p| {
        (
            h.saturating_add(p.held.len()),
            g.saturating_add(p.held.len().saturating_mul(p.users)),
        )
    });
    MIN_REBUILD_SPAN.max(held.saturating_mul(2).saturating_add(by_groups / 16))
}

/// A pipeline's rows: id, how many partitions hold it, contents.
pub(crate) type HeldRows = Vec<(RowId, u32, Arc<Row>)>;

/// A group's hold on a shared pipeline.
#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    pub(crate) key: Arc<str>,
    /// The hub version the rows were taken at.
    pub(crate) at: Lsn,
    epoch: u64,
}

struct Shared {
    tree: TreeQuery,
    users: usize,
    /// The rows the pipeline holds, with how many of its partitions hold each.
    held: HashMap<RowId, (u32, Arc<Row>)>,
}

struct State {
    sources: SnapshotSources,
    version: Lsn,
    pipelines: HashMap<Arc<str>, Shared>,
    /// Bumped when every pipeline is dropped (a reset): older subscriptions are void.
    epoch: u64,
    groups: Vec<mpsc::Sender<Arc<Step>>>,
}

/// The shared pipelines of one syncer.
pub(crate) struct Hub {
    /// `None` while no group is registered: the hub then holds no replica snapshot (an
    /// open one would keep the replica from reusing the pages later writes free).
    state: Mutex<Option<State>>,
    /// The last epoch handed out: epochs stay unique when the state is dropped and made
    /// again.
    epochs: AtomicU64,
    /// The version the shared pipelines are at (0 without state), so that the groups that
    /// come after the first one to see a version learn that there is nothing to do without
    /// taking the lock (or leaving their worker thread to wait for it).
    at: AtomicU64,
    /// `ZERO_APP_ID`, the label of the pipeline gauge.
    app: String,
    /// The shard's schema, whose tables' changes groups need row by row.
    shard: String,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

/// The key of a query's pipeline.
pub(crate) fn pipeline_key(ast: &Ast) -> Arc<str> {
    Arc::from(serde_json::to_string(ast).unwrap_or_default())
}

/// The CVR's id of a row of `table`.
pub(crate) fn row_id(sources: &SnapshotSources, table: &str, row: &[Value]) -> Option<RowId> {
    let spec = sources.spec(table)?;
    let mut key = serde_json::Map::new();
    for &k in &spec.key {
        key.insert(
            spec.columns.get(k)?.name.clone(),
            row.get(k)
                .map(Value::to_json)
                .unwrap_or(serde_json::Value::Null),
        );
    }
    Some(RowId::new(
        table,
        serde_json::Value::Object(key).to_string(),
    ))
}

fn hold(held: &mut HashMap<RowId, (u32, Arc<Row>)>, id: &RowId, change: &Output) {
    match change {
        Output::Add(row) => {
            let e = held
                .entry(id.clone())
                .or_insert_with(|| (0, Arc::clone(row)));
            e.0 += 1;
            e.1 = Arc::clone(row);
        }
        Output::Remove => {
            if let Some(e) = held.get_mut(id) {
                e.0 = e.0.saturating_sub(1);
                if e.0 == 0 {
                    held.remove(id);
                }
            }
        }
        Output::Edit(new) => {
            if let Some(e) = held.get_mut(id) {
                e.1 = Arc::clone(new);
            }
        }
    }
}

/// Why a hub operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HubError {
    #[error("replica: {0}")]
    Replica(#[from] crate::Error),
    #[error("replica: {0}")]
    Store(#[from] zc_replica::Error),
    #[error("{0}")]
    Query(#[from] zc_query::tree::TreeError),
    #[error("the shared pipelines are unavailable")]
    Unavailable,
}

impl Hub {
    /// A hub for the app `app` whose shard schema is `shard`.
    pub(crate) fn new(app: &str, shard: &str) -> Hub {
        Hub {
            state: Mutex::new(None),
            epochs: AtomicU64::new(0),
            at: AtomicU64::new(0),
            app: app.to_owned(),
            shard: shard.to_owned(),
        }
    }

    fn gauge(&self, n: usize) {
        metrics::gauge!("zc_sync_pipelines", "app" => self.app.clone()).set(n as f64);
    }

    fn lock(&self) -> MutexGuard<'_, Option<State>> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn next_epoch(&self) -> u64 {
        self.epochs.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn state<'a>(
        &self,
        guard: &'a mut MutexGuard<'_, Option<State>>,
        replica: &Replica,
    ) -> Result<&'a mut State, HubError> {
        let slot: &mut Option<State> = guard;
        if slot.is_none() {
            let snapshot = replica.snapshot()?;
            let version = snapshot.version().unwrap_or_default();
            *slot = Some(State {
                sources: SnapshotSources::new(snapshot)?,
                version,
                pipelines: HashMap::new(),
                epoch: self.next_epoch(),
                groups: Vec::new(),
            });
            self.at.store(version.0, Ordering::Release);
        }
        slot.as_mut().ok_or(HubError::Unavailable)
    }

    /// Registers a group: its steps arrive on the receiver, after the returned version.
    pub(crate) fn register(
        &self,
        replica: &Replica,
    ) -> Result<(SnapshotSources, Lsn, mpsc::Receiver<Arc<Step>>), HubError> {
        let mut guard = self.lock();
        let state = self.state(&mut guard, replica)?;
        let (tx, rx) = mpsc::channel(STEP_BACKLOG);
        state.groups.push(tx);
        Ok((state.sources.clone(), state.version, rx))
    }

    /// Subscribes to the pipeline of `ast` (built and hydrated if no group runs it yet);
    /// returns the rows it holds, with their multiplicities.
    pub(crate) fn subscribe(
        &self,
        replica: &Replica,
        ast: &Ast,
    ) -> Result<(Subscription, HeldRows), HubError> {
        let key = pipeline_key(ast);
        let mut guard = self.lock();
        let state = self.state(&mut guard, replica)?;
        let (version, epoch) = (state.version, state.epoch);
        let sources = &state.sources;
        let p = match state.pipelines.entry(Arc::clone(&key)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let mut tree = TreeQuery::build(ast, sources)?;
                let mut held = HashMap::new();
                for (table, change) in tree.hydrate(sources)? {
                    if let RowChange::Add(r) = &change
                        && let Some(id) = row_id(sources, &table, r)
                    {
                        hold(&mut held, &id, &Output::of(change));
                    }
                }
                e.insert(Shared {
                    tree,
                    users: 0,
                    held,
                })
            }
        };
        p.users += 1;
        let rows = p
            .held
            .iter()
            .map(|(id, (n, row))| (id.clone(), *n, Arc::clone(row)))
            .collect();
        self.gauge(state.pipelines.len());
        Ok((
            Subscription {
                key,
                at: version,
                epoch,
            },
            rows,
        ))
    }

    /// Ends a subscription; the pipeline stops when no group uses it.
    pub(crate) fn unsubscribe(&self, sub: &Subscription) {
        let mut guard = self.lock();
        let Some(state) = guard.as_mut() else {
            return;
        };
        if sub.epoch != state.epoch {
            return;
        }
        if let Some(p) = state.pipelines.get_mut(&sub.key) {
            p.users = p.users.saturating_sub(1);
            if p.users == 0 {
                state.pipelines.remove(&sub.key);
                self.gauge(state.pipelines.len());
            }
        }
    }

    /// Called by a group that stops, after its subscriptions ended and its step channel
    /// closed: without groups, the hub lets its snapshot go, and the next group to register
    /// starts it again at the replica's latest version.
    pub(crate) fn leave(&self) {
        let mut guard = self.lock();
        if let Some(state) = guard.as_mut() {
            state.groups.retain(|g| !g.is_closed());
            if state.groups.is_empty() && state.pipelines.is_empty() {
                *guard = None;
                self.at.store(0, Ordering::Release);
            }
        }
    }

    /// Whether the shared pipelines are at `version` or later already (then [`Hub::advance`]
    /// has nothing to do); does not block.
    pub(crate) fn is_at(&self, version: Lsn) -> bool {
        let at = self.at.load(Ordering::Acquire);
        at != 0 && version.0 <= at
    }

    /// Brings every pipeline to the replica's latest version and sends the step to every
    /// registered group. Does nothing when the hub is already there.
    pub(crate) fn advance(&self, replica: &Replica) -> Result<(), HubError> {
        let mut guard = self.lock();
        let state = self.state(&mut guard, replica)?;
        // Every group calls this on every version; only the first one needs a snapshot.
        if *replica.subscribe().borrow() <= state.version {
            return Ok(());
        }
        let next = replica.snapshot()?;
        let to = next.version().unwrap_or_default();
        if to <= state.version {
            return Ok(());
        }
        let limit = rebuild_limit(&state.pipelines);
        let shard = self.shard.as_str();
        let advance = diff_bounded(
            state.sources.snapshot(),
            &next,
            state.version,
            to,
            limit,
            |t| t.schema == shard,
        )?;
        let kind = match advance {
            Advance::Rows(changes) => match push_all(state, &changes) {
                Ok(outputs) => StepKind::Rows { changes, outputs },
                Err(e) => {
                    tracing::warn!(error = %e, "a shared pipeline failed; every query is rebuilt");
                    StepKind::Reset { meta: None }
                }
            },
            Advance::Reset => StepKind::Reset { meta: None },
            Advance::TooMany { changed, kept } => {
                tracing::info!(
                    changed,
                    limit,
                    pipelines = state.pipelines.len(),
                    from = %state.version,
                    to = %to,
                    "too many rows changed at once to push through the shared pipelines; \
                     rebuilding them at the new version"
                );
                metrics::counter!("zc_sync_pipeline_rebuilds_total", "app" => self.app.clone())
                    .increment(1);
                StepKind::Reset { meta: kept }
            }
        };
        if matches!(kind, StepKind::Reset { .. }) {
            state.pipelines.clear();
            state.epoch = self.next_epoch();
            self.gauge(0);
        }
        state.sources = match kind {
            StepKind::Rows { .. } => state.sources.renewed(next),
            StepKind::Reset { .. } => SnapshotSources::new(next)?,
        };
        state.version = to;
        self.at.store(to.0, Ordering::Release);
        let step = Arc::new(Step {
            to,
            sources: state.sources.clone(),
            kind,
        });
        // A group that has fallen this far behind is dropped: it sees its channel closed,
        // registers again and rebuilds its queries from the current version.
        state
            .groups
            .retain(|g| g.try_send(Arc::clone(&step)).is_ok());
        Ok(())
    }
}

/// Pushes the changes through every pipeline, in order.
fn push_all(
    state: &mut State,
    changes: &[(TableName, RowChange)],
) -> Result<Vec<(Arc<str>, RowId, Output)>, HubError> {
    let mut outputs = Vec::new();
    for (table, change) in changes {
        state.sources.apply(table, change);
        if state.pipelines.is_empty() {
            continue;
        }
        let name = table.zero_name();
        for (key, p) in state.pipelines.iter_mut() {
            for (t, out) in p.tree.push(&name, change, &state.sources)? {
                let row = match &out {
                    RowChange::Add(r) | RowChange::Remove(r) => r,
                    RowChange::Edit { new, .. } => new,
                };
                if let Some(id) = row_id(&state.sources, &t, row) {
                    let out = Output::of(out);
                    hold(&mut p.held, &id, &out);
                    outputs.push((Arc::clone(key), id, out));
                }
            }
        }
    }
    Ok(outputs)
}

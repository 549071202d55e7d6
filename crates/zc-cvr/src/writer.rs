//! Writes the flushes of many client groups together.
//!
//! Every group flushes its record after each change it pokes, so one upstream write
//! watched by fifty groups is fifty flushes of a few rows each. Each written alone is a
//! statement and a commit of its own, whose fixed cost (parse, plan, executor start,
//! commit, and the round trip) is most of PostgreSQL's work. Here a flush is handed to a
//! writer, which takes every flush that is waiting when it gets to them and writes them
//! all in one statement: one commit for many groups under load, and no wait at all when a
//! flush comes alone. A group has at most one flush in a batch (it awaits each before it
//! makes the next), and each group's write still depends on its own ownership check.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Row as _};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::Error;

/// How many batches may be written at once.
const WRITERS: usize = 2;
/// The most groups one batch writes.
const MAX_BATCH: usize = 128;
/// The most entries (clients, queries, desires and rows) one batch writes, unless a single
/// flush has more. A batch of fifty hydrations would be one statement of tens of thousands
/// of rows, and a connection keeps a buffer the size of the largest statement it sent.
const MAX_BATCH_ENTRIES: usize = 1024;
/// How many flushes may wait (a group has at most one waiting; more groups than this wait
/// to hand theirs over).
const QUEUE: usize = 1024;

/// One group's changes, column by column.
#[derive(Debug, Default)]
pub(crate) struct Flush {
    pub(crate) group: String,
    pub(crate) version: String,
    pub(crate) user_id: Option<String>,
    /// The xmin of the group's row as this instance last wrote (or loaded) it; none for a
    /// record that did not come from the store.
    pub(crate) stored_xmin: Option<String>,
    pub(crate) clients: Vec<String>,
    pub(crate) queries: Vec<QueryColumn>,
    pub(crate) desires: Vec<DesireColumn>,
    pub(crate) rows: Vec<RowColumn>,
}

impl Flush {
    /// How many entries the flush writes besides the group's own row.
    fn entries(&self) -> usize {
        self.clients.len() + self.queries.len() + self.desires.len() + self.rows.len()
    }
}

#[derive(Debug)]
pub(crate) struct QueryColumn {
    pub(crate) hash: String,
    pub(crate) name: Option<String>,
    pub(crate) args: Option<String>,
    pub(crate) ast: Option<String>,
    pub(crate) got: bool,
    pub(crate) deleted: bool,
    pub(crate) patch: String,
}

#[derive(Debug)]
pub(crate) struct DesireColumn {
    pub(crate) client: String,
    pub(crate) hash: String,
    pub(crate) ttl: Option<f64>,
    pub(crate) deleted: bool,
    pub(crate) patch: String,
    pub(crate) inactivated_at: Option<i64>,
}

#[derive(Debug)]
pub(crate) struct RowColumn {
    pub(crate) table: String,
    pub(crate) key: String,
    pub(crate) refs: String,
    pub(crate) patch: String,
}

/// What a flush comes to: the group row's new xmin, or none if the group's row was not
/// updated (another owner, or not the row this instance last wrote).
type Written = Result<Option<String>, Error>;

struct Pending {
    flush: Flush,
    reply: oneshot::Sender<Written>,
    queued: Instant,
}

/// The handle groups flush through; its writer tasks end when the last handle is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    queue: mpsc::Sender<Pending>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("group", &self.flush.group)
            .finish()
    }
}

impl Writer {
    /// Starts the writer tasks (on the current tokio runtime).
    pub(crate) fn start(pool: PgPool, schema: String, owner: String) -> Writer {
        let (queue, rx) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared {
            pool,
            sql: batch_sql(&schema),
            owner,
            queue: Mutex::new(rx),
        });
        for _ in 0..WRITERS {
            zc_types::task::spawn_named("cvr-writer", Arc::clone(&shared).run());
        }
        Writer { queue }
    }

    /// Writes one group's changes (in a batch with whatever other groups' changes wait).
    pub(crate) async fn write(&self, flush: Flush) -> Written {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending {
                flush,
                reply,
                queued: Instant::now(),
            })
            .await
            .map_err(|_| Error::Database(sqlx::Error::PoolClosed))?;
        answer
            .await
            .map_err(|_| Error::Database(sqlx::Error::PoolClosed))?
    }
}

struct Shared {
    pool: PgPool,
    sql: String,
    owner: String,
    queue: Mutex<mpsc::Receiver<Pending>>,
}

impl Shared {
    async fn run(self: Arc<Self>) {
        // A flush of a group already in the batch waits for the next one (a group's
        // rows must not be written twice by one statement), as does one that would make
        // the batch too large.
        let mut held: Option<Pending> = None;
        loop {
            let mut batch = Vec::new();
            // The queue's lock is held by a writer that waits for a flush to come: a
            // writer with a flush set aside must not wait for that lock (if no flush
            // comes, the one set aside would never be written and its group would wait
            // for ever), it writes what it has and takes more only if the queue is free.
            let (first, queue) = match held.take() {
                Some(p) => (p, self.queue.try_lock().ok()),
                None => {
                    let mut queue = self.queue.lock().await;
                    match queue.recv().await {
                        Some(p) => (p, Some(queue)),
                        None => return,
                    }
                }
            };
            let mut groups = HashSet::new();
            groups.insert(first.flush.group.clone());
            let mut entries = first.flush.entries();
            batch.push(first);
            if let Some(mut queue) = queue {
                while batch.len() < MAX_BATCH {
                    let Ok(next) = queue.try_recv() else { break };
                    entries += next.flush.entries();
                    if entries > MAX_BATCH_ENTRIES || !groups.insert(next.flush.group.clone()) {
                        held = Some(next);
                        break;
                    }
                    batch.push(next);
                }
            }
            self.write_batch(batch).await;
        }
    }

    async fn write_batch(&self, batch: Vec<Pending>) {
        let flushes: Vec<&Flush> = batch.iter().map(|p| &p.flush).collect();
        let started = Instant::now();
        match self.execute(&flushes).await {
            Ok(mut written) => {
                tracing::trace!(
                    groups = batch.len(),
                    waited_ms = batch
                        .iter()
                        .map(|p| started.duration_since(p.queued))
                        .max()
                        .unwrap_or_default()
                        .as_secs_f64()
                        * 1e3,
                    write_ms = started.elapsed().as_secs_f64() * 1e3,
                    "CVR flushes written"
                );
                for p in batch {
                    let xmin = written.remove(&p.flush.group);
                    let _ = p.reply.send(Ok(xmin));
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some(p) = batch.into_iter().next() {
                    let _ = p.reply.send(Err(e.into()));
                }
            }
            Err(e @ sqlx::Error::Database(_)) => {
                // PostgreSQL refused the statement: one group's data may be what it refused
                // (a NUL in a query's arguments, say). Each group is written alone, so that
                // only that group's flush fails.
                tracing::debug!(groups = batch.len(), error = %e, "a batched CVR write was refused; writing its groups one by one");
                for p in batch {
                    let result = self
                        .execute(&[&p.flush])
                        .await
                        .map(|mut w| w.remove(&p.flush.group))
                        .map_err(Error::from);
                    let _ = p.reply.send(result);
                }
            }
            Err(e) => {
                // Not the data: the connection or the pool. Writing the groups one by one
                // would meet the same failure once per group.
                let message = e.to_string();
                for p in batch {
                    let _ = p.reply.send(Err(Error::SharedWrite(message.clone())));
                }
            }
        }
    }

    /// Writes the flushes in one statement; returns the new xmin of each group row that
    /// was updated.
    async fn execute(&self, flushes: &[&Flush]) -> Result<HashMap<String, String>, sqlx::Error> {
        let mut c = Columns::default();
        for f in flushes {
            c.add(f);
        }
        let rows = sqlx::query(AssertSqlSafe(self.sql.as_str()))
            .bind(&c.i_groups)
            .bind(&c.i_versions)
            .bind(&c.i_users)
            .bind(&c.i_xmins)
            .bind(&self.owner)
            .bind(&c.c_groups)
            .bind(&c.c_clients)
            .bind(&c.q_groups)
            .bind(&c.q_hashes)
            .bind(&c.q_names)
            .bind(&c.q_args)
            .bind(&c.q_asts)
            .bind(&c.q_got)
            .bind(&c.q_deleted)
            .bind(&c.q_patches)
            .bind(&c.d_groups)
            .bind(&c.d_clients)
            .bind(&c.d_hashes)
            .bind(&c.d_ttls)
            .bind(&c.d_deleted)
            .bind(&c.d_patches)
            .bind(&c.d_inactive)
            .bind(&c.r_groups)
            .bind(&c.r_tables)
            .bind(&c.r_keys)
            .bind(&c.r_refs)
            .bind(&c.r_patches)
            .fetch_all(&self.pool)
            .await?;
        let mut written = HashMap::with_capacity(rows.len());
        for r in rows {
            written.insert(r.try_get(0)?, r.try_get(1)?);
        }
        Ok(written)
    }
}

/// The batch's flushes as one array per column, each child row tagged with its group.
#[derive(Default)]
struct Columns<'a> {
    i_groups: Vec<&'a str>,
    i_versions: Vec<&'a str>,
    i_users: Vec<Option<&'a str>>,
    i_xmins: Vec<Option<&'a str>>,
    c_groups: Vec<&'a str>,
    c_clients: Vec<&'a str>,
    q_groups: Vec<&'a str>,
    q_hashes: Vec<&'a str>,
    q_names: Vec<Option<&'a str>>,
    q_args: Vec<Option<&'a str>>,
    q_asts: Vec<Option<&'a str>>,
    q_got: Vec<bool>,
    q_deleted: Vec<bool>,
    q_patches: Vec<&'a str>,
    d_groups: Vec<&'a str>,
    d_clients: Vec<&'a str>,
    d_hashes: Vec<&'a str>,
    d_ttls: Vec<Option<f64>>,
    d_deleted: Vec<bool>,
    d_patches: Vec<&'a str>,
    d_inactive: Vec<Option<i64>>,
    r_groups: Vec<&'a str>,
    r_tables: Vec<&'a str>,
    r_keys: Vec<&'a str>,
    r_refs: Vec<&'a str>,
    r_patches: Vec<&'a str>,
}

impl<'a> Columns<'a> {
    fn add(&mut self, f: &'a Flush) {
        let g = f.group.as_str();
        self.i_groups.push(g);
        self.i_versions.push(&f.version);
        self.i_users.push(f.user_id.as_deref());
        self.i_xmins.push(f.stored_xmin.as_deref());
        for c in &f.clients {
            self.c_groups.push(g);
            self.c_clients.push(c);
        }
        for q in &f.queries {
            self.q_groups.push(g);
            self.q_hashes.push(&q.hash);
            self.q_names.push(q.name.as_deref());
            self.q_args.push(q.args.as_deref());
            self.q_asts.push(q.ast.as_deref());
            self.q_got.push(q.got);
            self.q_deleted.push(q.deleted);
            self.q_patches.push(&q.patch);
        }
        for d in &f.desires {
            self.d_groups.push(g);
            self.d_clients.push(&d.client);
            self.d_hashes.push(&d.hash);
            self.d_ttls.push(d.ttl);
            self.d_deleted.push(d.deleted);
            self.d_patches.push(&d.patch);
            self.d_inactive.push(d.inactivated_at);
        }
        for r in &f.rows {
            self.r_groups.push(g);
            self.r_tables.push(&r.table);
            self.r_keys.push(&r.key);
            self.r_refs.push(&r.refs);
            self.r_patches.push(&r.patch);
        }
    }
}

/// The batch statement. The instance rows are updated only where this instance still owns
/// the group and the row is the one it last wrote (its xmin); a group's other rows are
/// written only if its instance row was. The statement is its own transaction (atomic,
/// and a group's flushes stay in order). `set_config(.., true)` makes its commit not wait
/// for PostgreSQL's WAL fsync: a crash of PostgreSQL itself (not of zc) may lose the last
/// flushes, whose versions clients may already have been sent. The next flush then finds
/// the group's row is not the one this instance last wrote and fails with
/// [`Error::Diverged`]: the group reloads the record, a reconnecting client's cookie is
/// ahead of it and is refused, and that client resyncs from scratch. A rare resync after a
/// database crash is the price of not paying an fsync per flush.
fn batch_sql(s: &str) -> String {
    format!(
        "WITH sc AS (SELECT set_config('synchronous_commit', 'off', true) AS v),
         inst AS (
           UPDATE {s}.instances AS i SET version = u.v, user_id = u.uid, last_active = now()
           FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) AS u(g, v, uid, x)
           WHERE i.client_group_id = u.g AND i.owner = $5
             AND (u.x IS NULL OR i.xmin::text = u.x)
           RETURNING i.client_group_id AS g, i.xmin::text AS xmin),
         cl AS (
           INSERT INTO {s}.clients (client_group_id, client_id)
           SELECT g, c FROM UNNEST($6::text[], $7::text[]) AS u(g, c)
           WHERE g IN (SELECT g FROM inst)
           ON CONFLICT DO NOTHING),
         qu AS (
           INSERT INTO {s}.queries (client_group_id, query_hash, name, args, ast, got,
             deleted, patch_version)
           SELECT g, h, n, a::jsonb, t::jsonb, gt, d, p
           FROM UNNEST($8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
             $13::bool[], $14::bool[], $15::text[]) AS u(g, h, n, a, t, gt, d, p)
           WHERE g IN (SELECT g FROM inst)
           ON CONFLICT (client_group_id, query_hash) DO UPDATE SET name = EXCLUDED.name,
           args = EXCLUDED.args, ast = EXCLUDED.ast, got = EXCLUDED.got,
           deleted = EXCLUDED.deleted, patch_version = EXCLUDED.patch_version),
         de AS (
           INSERT INTO {s}.desires (client_group_id, client_id, query_hash, ttl, deleted,
             inactivated_at, patch_version)
           SELECT g, c, h, t, d, i, p
           FROM UNNEST($16::text[], $17::text[], $18::text[], $19::float8[], $20::bool[],
             $21::text[], $22::int8[]) AS u(g, c, h, t, d, p, i)
           WHERE g IN (SELECT g FROM inst)
           ON CONFLICT (client_group_id, client_id, query_hash) DO UPDATE SET
           ttl = EXCLUDED.ttl, deleted = EXCLUDED.deleted,
           inactivated_at = EXCLUDED.inactivated_at, patch_version = EXCLUDED.patch_version),
         ro AS (
           INSERT INTO {s}.rows (client_group_id, table_name, row_key, refs, patch_version)
           SELECT g, t, k, r::jsonb, p
           FROM UNNEST($23::text[], $24::text[], $25::text[], $26::text[], $27::text[])
             AS u(g, t, k, r, p)
           WHERE g IN (SELECT g FROM inst)
           ON CONFLICT (client_group_id, table_name, row_key) DO UPDATE SET
           refs = EXCLUDED.refs, patch_version = EXCLUDED.patch_version)
         SELECT inst.g, inst.xmin FROM inst, sc"
    )
}

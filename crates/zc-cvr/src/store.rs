//! The PostgreSQL store of client view records.

use std::collections::BTreeMap;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Row as _};

use crate::Error;
use crate::record::{Changes, Cvr, DesireRecord, QueryRecord, RowId, RowRecord};
use crate::version::CvrVersion;

/// Client view records in PostgreSQL.
#[derive(Debug, Clone)]
pub struct CvrStore {
    pool: PgPool,
    schema: String,
    owner: String,
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn corrupt(group: &str, what: impl Into<String>) -> Error {
    Error::Corrupt {
        group: group.to_owned(),
        what: what.into(),
    }
}

fn version(group: &str, cookie: &str) -> Result<CvrVersion, Error> {
    CvrVersion::parse(cookie).map_err(|e| corrupt(group, e.to_string()))
}

impl CvrStore {
    /// Connects (at most `max_connections`) and creates the schema
    /// `"{app_id}_{shard_num}/zc_cvr"` and its tables if needed.
    pub async fn connect(
        url: &str,
        app_id: &str,
        shard_num: u32,
        max_connections: u32,
    ) -> Result<CvrStore, Error> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect(url)
            .await?;
        let schema = quote(&format!("{app_id}_{shard_num}/zc_cvr"));
        let owner = format!("{:016x}", rand::random::<u64>());
        let store = CvrStore {
            pool,
            schema,
            owner,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The instance id this store writes as owner.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    async fn migrate(&self) -> Result<(), Error> {
        let s = &self.schema;
        let mut tx = self.pool.begin().await?;
        // Concurrent first starts must not race on CREATE SCHEMA.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(s)
            .execute(&mut *tx)
            .await?;
        let ddl = format!(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.instances (
               client_group_id text PRIMARY KEY, version text NOT NULL, owner text,
               user_id text, last_active timestamptz NOT NULL DEFAULT now());
             CREATE TABLE IF NOT EXISTS {s}.clients (
               client_group_id text NOT NULL, client_id text NOT NULL,
               PRIMARY KEY (client_group_id, client_id));
             CREATE TABLE IF NOT EXISTS {s}.queries (
               client_group_id text NOT NULL, query_hash text NOT NULL, name text, args jsonb,
               ast jsonb, got bool NOT NULL, deleted bool NOT NULL, patch_version text NOT NULL,
               PRIMARY KEY (client_group_id, query_hash));
             CREATE TABLE IF NOT EXISTS {s}.desires (
               client_group_id text NOT NULL, client_id text NOT NULL, query_hash text NOT NULL,
               ttl float8, deleted bool NOT NULL, inactivated_at bigint, patch_version text NOT NULL,
               PRIMARY KEY (client_group_id, client_id, query_hash));
             ALTER TABLE {s}.desires ADD COLUMN IF NOT EXISTS inactivated_at bigint;
             CREATE TABLE IF NOT EXISTS {s}.rows (
               client_group_id text NOT NULL, table_name text NOT NULL, row_key text NOT NULL,
               refs jsonb NOT NULL, patch_version text NOT NULL,
               PRIMARY KEY (client_group_id, table_name, row_key));"
        );
        sqlx::raw_sql(AssertSqlSafe(ddl)).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Loads a group's record and takes ownership of it (a new group gets an empty record).
    pub async fn load(&self, group: &str) -> Result<Cvr, Error> {
        let s = &self.schema;
        let mut conn = self.pool.acquire().await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {s}.instances (client_group_id, version, owner) VALUES ($1, '00', $2)
             ON CONFLICT (client_group_id) DO UPDATE SET owner = $2, last_active = now()
             RETURNING version, user_id, xmin::text"
        )))
        .bind(group)
        .bind(&self.owner)
        .fetch_one(&mut *conn)
        .await?;
        let mut cvr = Cvr::new(group);
        cvr.version = version(group, row.get::<&str, _>(0))?;
        cvr.stored_version = Some(cvr.version);
        cvr.user_id = row.get(1);
        cvr.stored_xmin = row.get(2);
        for r in sqlx::query(AssertSqlSafe(format!(
            "SELECT client_id FROM {s}.clients WHERE client_group_id = $1"
        )))
        .bind(group)
        .fetch_all(&mut *conn)
        .await?
        {
            cvr.clients.insert(r.get(0));
        }
        for r in sqlx::query(AssertSqlSafe(format!(
            "SELECT query_hash, name, args::text, ast::text, got, deleted, patch_version
             FROM {s}.queries WHERE client_group_id = $1"
        )))
        .bind(group)
        .fetch_all(&mut *conn)
        .await?
        {
            let json = |i: usize| -> Result<Option<serde_json::Value>, Error> {
                r.get::<Option<String>, _>(i)
                    .map(|t| serde_json::from_str(&t).map_err(|e| corrupt(group, e.to_string())))
                    .transpose()
            };
            cvr.queries.insert(
                r.get(0),
                QueryRecord {
                    name: r.get(1),
                    args: json(2)?,
                    ast: json(3)?,
                    got: r.get(4),
                    deleted: r.get(5),
                    patch: version(group, r.get::<&str, _>(6))?,
                },
            );
        }
        for r in sqlx::query(AssertSqlSafe(format!(
            "SELECT client_id, query_hash, ttl, deleted, patch_version, inactivated_at
             FROM {s}.desires WHERE client_group_id = $1"
        )))
        .bind(group)
        .fetch_all(&mut *conn)
        .await?
        {
            cvr.desires.insert(
                (r.get(0), r.get(1)),
                DesireRecord {
                    ttl: r.get(2),
                    deleted: r.get(3),
                    inactivated_at: r.get(5),
                    patch: version(group, r.get::<&str, _>(4))?,
                },
            );
        }
        for r in sqlx::query(AssertSqlSafe(format!(
            "SELECT table_name, row_key, refs::text, patch_version
             FROM {s}.rows WHERE client_group_id = $1 AND refs <> '{{}}'::jsonb"
        )))
        .bind(group)
        .fetch_all(&mut *conn)
        .await?
        {
            let refs: BTreeMap<String, u32> = serde_json::from_str(r.get::<&str, _>(2))
                .map_err(|e| corrupt(group, e.to_string()))?;
            cvr.load_row(
                RowId::new(r.get::<String, _>(0), r.get::<String, _>(1)),
                RowRecord {
                    refs: refs.into_iter().collect(),
                    patch: version(group, r.get::<&str, _>(3))?,
                },
            );
        }
        // Tombstones stay in the store; clients at older cookies get them from there.
        cvr.evicted_through = Some(cvr.version);
        Ok(cvr)
    }

    /// What changed in `cvr` after `since` ([`Cvr::changes_since`]), with the deletes of
    /// rows whose tombstones were dropped from memory read from the store when `since` is
    /// older than them.
    pub async fn changes_since(
        &self,
        cvr: &Cvr,
        since: Option<CvrVersion>,
    ) -> Result<Changes, Error> {
        let mut changes = cvr.changes_since(since);
        let Some(since) = since.filter(|_| cvr.needs_stored_tombstones(since)) else {
            return Ok(changes);
        };
        let s = &self.schema;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT table_name, row_key FROM {s}.rows
             WHERE client_group_id = $1 AND refs = '{{}}'::jsonb
               AND patch_version COLLATE \"C\" > $2"
        )))
        .bind(&cvr.group)
        .bind(since.cookie())
        .fetch_all(&self.pool)
        .await?;
        let mut added = false;
        for r in rows {
            let id = RowId::new(r.get::<String, _>(0), r.get::<String, _>(1));
            // The record in memory is newer than the stored one.
            if !cvr.rows.contains_key(&id) {
                changes.rows.push((id, false));
                added = true;
            }
        }
        if added {
            changes.rows.sort_unstable();
        }
        Ok(changes)
    }

    /// Writes what changed in `cvr` since it was loaded or last flushed, in one
    /// transaction; fails with [`Error::OwnershipLost`] if another instance took the group.
    pub async fn flush(&self, cvr: &mut Cvr) -> Result<(), Error> {
        if cvr.is_clean() {
            return Ok(());
        }
        let s = &self.schema;
        let g = cvr.group.clone();
        let dirty = std::mem::take(&mut cvr.dirty);
        let clients: Vec<String> = dirty.clients.iter().cloned().collect();
        let mut queries = QueryColumns::default();
        for hash in &dirty.queries {
            if let Some(q) = cvr.queries.get(hash) {
                queries.hashes.push(hash.clone());
                queries.names.push(q.name.clone());
                queries.args.push(q.args.as_ref().map(|a| a.to_string()));
                queries.asts.push(q.ast.as_ref().map(|a| a.to_string()));
                queries.got.push(q.got);
                queries.deleted.push(q.deleted);
                queries.patches.push(q.patch.cookie());
            }
        }
        let (mut d_clients, mut d_hashes, mut d_ttls, mut d_deleted, mut d_patches, mut d_inactive) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for key in &dirty.desires {
            if let Some(d) = cvr.desires.get(key) {
                d_clients.push(key.0.clone());
                d_hashes.push(key.1.clone());
                d_ttls.push(d.ttl);
                d_deleted.push(d.deleted);
                d_patches.push(d.patch.cookie());
                d_inactive.push(d.inactivated_at);
            }
        }
        let (mut tables, mut keys, mut refs, mut patches) = (vec![], vec![], vec![], vec![]);
        for id in &dirty.rows {
            if let Some(r) = cvr.rows.get(id) {
                refs.push(serde_json::to_string(&r.refs).unwrap_or_else(|_| "{}".into()));
                patches.push(r.patch.cookie());
                tables.push(id.table.to_string());
                keys.push(id.key.to_string());
            }
        }
        // One statement, one round trip: the instance row is updated only if this instance
        // still owns the group and the row is the one it last wrote (its xmin), and the rest
        // is written only if that update happened. The statement is its own transaction
        // (atomic, and flushes stay in order); `set_config(.., true)` makes its commit not
        // wait for PostgreSQL's WAL fsync. A crash of PostgreSQL itself (not of zc) may lose
        // the last flushes, whose versions clients may already have been sent. The next flush
        // then finds the group's row is not the one this instance last wrote and fails with
        // `Error::Diverged`: the group reloads the record, a reconnecting client's cookie is
        // ahead of it and is refused, and that client resyncs from scratch. A rare resync
        // after a database crash is the price of not paying an fsync per flush. (Schema
        // set-up keeps the server's setting.)
        let written: Result<Option<String>, sqlx::Error> =
            sqlx::query_scalar(AssertSqlSafe(format!(
                "WITH sc AS (SELECT set_config('synchronous_commit', 'off', true) AS v),
             inst AS (
               UPDATE {s}.instances SET version = $2, user_id = $3, last_active = now()
               WHERE client_group_id = $1 AND owner = $4 AND ($5::text IS NULL OR xmin::text = $5)
               RETURNING xmin::text AS xmin),
             cl AS (
               INSERT INTO {s}.clients (client_group_id, client_id)
               SELECT $1, c FROM UNNEST($6::text[]) AS c WHERE EXISTS (SELECT 1 FROM inst)
               ON CONFLICT DO NOTHING),
             qu AS (
               INSERT INTO {s}.queries (client_group_id, query_hash, name, args, ast, got,
                 deleted, patch_version)
               SELECT $1, h, n, a::jsonb, t::jsonb, gt, d, p
               FROM UNNEST($7::text[], $8::text[], $9::text[], $10::text[], $11::bool[],
                 $12::bool[], $13::text[]) AS u(h, n, a, t, gt, d, p)
               WHERE EXISTS (SELECT 1 FROM inst)
               ON CONFLICT (client_group_id, query_hash) DO UPDATE SET name = EXCLUDED.name,
               args = EXCLUDED.args, ast = EXCLUDED.ast, got = EXCLUDED.got,
               deleted = EXCLUDED.deleted, patch_version = EXCLUDED.patch_version),
             de AS (
               INSERT INTO {s}.desires (client_group_id, client_id, query_hash, ttl, deleted,
                 inactivated_at, patch_version)
               SELECT $1, c, h, t, d, i, p
               FROM UNNEST($14::text[], $15::text[], $16::float8[], $17::bool[], $18::text[],
                 $19::int8[]) AS u(c, h, t, d, p, i)
               WHERE EXISTS (SELECT 1 FROM inst)
               ON CONFLICT (client_group_id, client_id, query_hash) DO UPDATE SET
               ttl = EXCLUDED.ttl, deleted = EXCLUDED.deleted,
               inactivated_at = EXCLUDED.inactivated_at, patch_version = EXCLUDED.patch_version),
             ro AS (
               INSERT INTO {s}.rows (client_group_id, table_name, row_key, refs, patch_version)
               SELECT $1, t, k, r::jsonb, p
               FROM UNNEST($20::text[], $21::text[], $22::text[], $23::text[]) AS u(t, k, r, p)
               WHERE EXISTS (SELECT 1 FROM inst)
               ON CONFLICT (client_group_id, table_name, row_key) DO UPDATE SET
               refs = EXCLUDED.refs, patch_version = EXCLUDED.patch_version)
             SELECT (SELECT xmin FROM inst) FROM sc"
            )))
            .bind(&g)
            .bind(cvr.version.cookie())
            .bind(&cvr.user_id)
            .bind(&self.owner)
            .bind(&cvr.stored_xmin)
            .bind(&clients)
            .bind(&queries.hashes)
            .bind(&queries.names)
            .bind(&queries.args)
            .bind(&queries.asts)
            .bind(&queries.got)
            .bind(&queries.deleted)
            .bind(&queries.patches)
            .bind(&d_clients)
            .bind(&d_hashes)
            .bind(&d_ttls)
            .bind(&d_deleted)
            .bind(&d_patches)
            .bind(&d_inactive)
            .bind(&tables)
            .bind(&keys)
            .bind(&refs)
            .bind(&patches)
            .fetch_one(&self.pool)
            .await;
        let written = match written {
            Ok(written) => written,
            Err(e) => {
                // Not written: the changes stay dirty for the next flush.
                cvr.dirty = dirty;
                return Err(e.into());
            }
        };
        let Some(xmin) = written else {
            // Nothing was written: keep the changes dirty, and tell why.
            cvr.dirty = dirty;
            let owner: Option<Option<String>> = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT owner FROM {s}.instances WHERE client_group_id = $1"
            )))
            .bind(&g)
            .fetch_optional(&self.pool)
            .await?;
            return Err(if owner.flatten().as_deref() == Some(self.owner.as_str()) {
                Error::Diverged(g)
            } else {
                Error::OwnershipLost(g)
            });
        };
        cvr.stored_version = Some(cvr.version);
        cvr.stored_xmin = Some(xmin);
        cvr.evict_tombstones(&dirty.rows);
        Ok(())
    }
}

/// The dirty queries of a flush, column by column.
#[derive(Default)]
struct QueryColumns {
    hashes: Vec<String>,
    names: Vec<Option<String>>,
    args: Vec<Option<String>>,
    asts: Vec<Option<String>>,
    got: Vec<bool>,
    deleted: Vec<bool>,
    patches: Vec<String>,
}

//! The PostgreSQL store of client view records.

use std::collections::BTreeMap;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Row as _};

use crate::Error;
use crate::record::{Changes, Cvr, DesireRecord, QueryRecord, RowId, RowRecord};
use crate::version::CvrVersion;
use crate::writer::{DesireColumn, Flush, QueryColumn, RowColumn, Writer};

/// Client view records in PostgreSQL.
#[derive(Debug, Clone)]
pub struct CvrStore {
    pool: PgPool,
    schema: String,
    owner: String,
    writer: Writer,
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
        let writer = Writer::start(pool.clone(), schema.clone(), owner.clone());
        let store = CvrStore {
            pool,
            schema,
            owner,
            writer,
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
        // One statement (one round trip, one snapshot): the instance row, taken over, then
        // the group's clients (1), queries (2), desires (3) and live rows (4), each kind
        // tagged in the first column.
        let rows = sqlx::query(AssertSqlSafe(format!(
            "WITH inst AS (
               INSERT INTO {s}.instances (client_group_id, version, owner) VALUES ($1, '00', $2)
               ON CONFLICT (client_group_id) DO UPDATE SET owner = $2, last_active = now()
               RETURNING version, user_id, xmin::text AS xmin)
             SELECT 0, version, user_id, xmin, NULL::text, NULL::text, NULL::bool,
               NULL::bool, NULL::float8, NULL::int8 FROM inst
             UNION ALL SELECT 1, client_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
               FROM {s}.clients WHERE client_group_id = $1
             UNION ALL SELECT 2, query_hash, name, args::text, ast::text, patch_version, got,
               deleted, NULL, NULL FROM {s}.queries WHERE client_group_id = $1
             UNION ALL SELECT 3, client_id, query_hash, patch_version, NULL, NULL, deleted,
               NULL, ttl, inactivated_at FROM {s}.desires WHERE client_group_id = $1
             UNION ALL SELECT 4, table_name, row_key, refs::text, patch_version, NULL, NULL,
               NULL, NULL, NULL FROM {s}.rows
               WHERE client_group_id = $1 AND refs <> '{{}}'::jsonb"
        )))
        .bind(group)
        .bind(&self.owner)
        .fetch_all(&self.pool)
        .await?;
        let mut cvr = Cvr::new(group);
        let mut instance = false;
        let json = |t: Option<String>| -> Result<Option<serde_json::Value>, Error> {
            t.map(|t| serde_json::from_str(&t).map_err(|e| corrupt(group, e.to_string())))
                .transpose()
        };
        for r in rows {
            match r.get::<i32, _>(0) {
                0 => {
                    instance = true;
                    cvr.version = version(group, r.get::<&str, _>(1))?;
                    cvr.stored_version = Some(cvr.version);
                    cvr.user_id = r.get(2);
                    cvr.stored_xmin = r.get(3);
                }
                1 => {
                    cvr.clients.insert(r.get(1));
                }
                2 => {
                    cvr.queries.insert(
                        r.get(1),
                        QueryRecord {
                            name: r.get(2),
                            args: json(r.get(3))?,
                            ast: json(r.get(4))?,
                            got: r.get(6),
                            deleted: r.get(7),
                            patch: version(group, r.get::<&str, _>(5))?,
                        },
                    );
                }
                3 => {
                    cvr.desires.insert(
                        (r.get(1), r.get(2)),
                        DesireRecord {
                            ttl: r.get(8),
                            deleted: r.get(6),
                            inactivated_at: r.get(9),
                            patch: version(group, r.get::<&str, _>(3))?,
                        },
                    );
                }
                _ => {
                    let refs: BTreeMap<String, u32> = serde_json::from_str(r.get::<&str, _>(3))
                        .map_err(|e| corrupt(group, e.to_string()))?;
                    cvr.load_row(
                        RowId::new(r.get::<String, _>(1), r.get::<String, _>(2)),
                        RowRecord {
                            refs: refs.into_iter().collect(),
                            patch: version(group, r.get::<&str, _>(4))?,
                        },
                    );
                }
            }
        }
        if !instance {
            return Err(corrupt(group, "its instance row was not returned"));
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
    /// transaction (shared with the flushes of other groups that wait at the same time;
    /// see the writer module); fails with [`Error::OwnershipLost`] if another instance
    /// took the group.
    pub async fn flush(&self, cvr: &mut Cvr) -> Result<(), Error> {
        if cvr.is_clean() {
            return Ok(());
        }
        let dirty = std::mem::take(&mut cvr.dirty);
        let mut flush = Flush {
            group: cvr.group.clone(),
            version: cvr.version.cookie(),
            user_id: cvr.user_id.clone(),
            stored_xmin: cvr.stored_xmin.clone(),
            ..Flush::default()
        };
        flush.clients.extend(dirty.clients.iter().cloned());
        for hash in &dirty.queries {
            if let Some(q) = cvr.queries.get(hash) {
                flush.queries.push(QueryColumn {
                    hash: hash.clone(),
                    name: q.name.clone(),
                    args: q.args.as_ref().map(|a| a.to_string()),
                    ast: q.ast.as_ref().map(|a| a.to_string()),
                    got: q.got,
                    deleted: q.deleted,
                    patch: q.patch.cookie(),
                });
            }
        }
        for key in &dirty.desires {
            if let Some(d) = cvr.desires.get(key) {
                flush.desires.push(DesireColumn {
                    client: key.0.clone(),
                    hash: key.1.clone(),
                    ttl: d.ttl,
                    deleted: d.deleted,
                    patch: d.patch.cookie(),
                    inactivated_at: d.inactivated_at,
                });
            }
        }
        // A row that was not held at the last write and is not held now came and went in
        // between: no client was sent it (clients are poked only after a write), and the
        // store has no live record of it to delete. Under a write rate the pipelines barely
        // follow, most changed rows are such (an issue enters a 100-issue window and
        // leaves it again within one flush), and writing a tombstone for each made a flush
        // take ~100 ms for one group at 2,400 writes/s.
        for (id, &held_before) in &dirty.rows {
            if let Some(r) = cvr.rows.get(id) {
                if !held_before && r.refs.is_empty() {
                    continue;
                }
                flush.rows.push(RowColumn {
                    table: id.table.to_string(),
                    key: id.key.to_string(),
                    refs: serde_json::to_string(&r.refs).unwrap_or_else(|_| "{}".into()),
                    patch: r.patch.cookie(),
                });
            }
        }
        let written = self.writer.write(flush).await;
        let written = match written {
            Ok(written) => written,
            Err(e) => {
                // Not written: the changes stay dirty for the next flush.
                cvr.dirty = dirty;
                return Err(e);
            }
        };
        let Some(xmin) = written else {
            // Nothing was written: keep the changes dirty, and tell why.
            cvr.dirty = dirty;
            let s = &self.schema;
            let g = cvr.group.clone();
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

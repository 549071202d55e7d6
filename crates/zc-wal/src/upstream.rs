//! Control-plane SQL against the upstream database: requirements, the shard's schema and
//! publications, and the published tables' schemas.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, Connection, Executor, Row as _};
use tracing::{info, warn};
use zc_types::{ColumnSpec, IndexSpec, PgType, TableName, TableSpec, TypeKind};

use crate::config::{WalConfig, parse_url};
use crate::error::{Error, Result, query_err};

/// Reads a column of a catalog query, as an error (not a panic) when it does not decode.
fn col<'r, T>(row: &'r sqlx::postgres::PgRow, name: &str) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(name).map_err(|e| Error::Query {
        what: "read the upstream catalog",
        source: Box::new(e),
    })
}

/// Quotes an identifier for SQL.
pub(crate) fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a string literal for SQL.
pub(crate) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Opens a control connection (sqlx) to the upstream.
pub(crate) async fn connect(url: &str) -> Result<PgConnection> {
    let parts = parse_url(url)?;
    let opts = PgConnectOptions::from_str(url)
        .map_err(|e| Error::InvalidUrl {
            reason: e.to_string(),
        })?
        .application_name("zc");
    PgConnection::connect_with(&opts)
        .await
        .map_err(|e| Error::Connect {
            target: parts.target(),
            source: Box::new(e),
        })
}

/// Checks what logical replication needs: `wal_level = logical` and the REPLICATION
/// attribute (granted when the role may grant it, as zero-cache does).
pub(crate) async fn check_requirements(conn: &mut PgConnection) -> Result<()> {
    let level: String = sqlx::query_scalar("SELECT current_setting('wal_level')")
        .fetch_one(&mut *conn)
        .await
        .map_err(query_err("read wal_level"))?;
    if level != "logical" {
        return Err(Error::WalLevel { actual: level });
    }
    let (role, can): (String, bool) = sqlx::query_as(
        "SELECT current_user::text, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(query_err("read the role's replication privilege"))?;
    if !can {
        let grant = format!("ALTER ROLE {} WITH REPLICATION", ident(&role));
        if conn.execute(AssertSqlSafe(grant)).await.is_err() {
            return Err(Error::ReplicationPrivilege { role });
        }
        info!(role = %role, "granted REPLICATION to the upstream role");
    }
    Ok(())
}

/// Creates the app and shard schemas with the tables `@rocicorp/zero/server` writes
/// (`clients`, `mutations`) and `permissions`, and the publications. Idempotent.
pub(crate) async fn ensure_shard(conn: &mut PgConnection, cfg: &WalConfig) -> Result<Vec<String>> {
    let app = ident(&cfg.app_schema());
    let shard = ident(&cfg.shard_schema());
    let mut tx = conn
        .begin()
        .await
        .map_err(query_err("begin the shard setup"))?;
    // Serialise concurrent setups of the same shard.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("zc-shard-setup:{}", cfg.shard_schema()))
        .execute(&mut *tx)
        .await
        .map_err(query_err("lock the shard setup"))?;
    let setup = format!(
        r#"
        CREATE SCHEMA IF NOT EXISTS {app};
        CREATE TABLE IF NOT EXISTS {app}."permissions" (
          "permissions" JSONB,
          "hash" TEXT,
          "lock" BOOL PRIMARY KEY DEFAULT true CHECK (lock)
        );
        CREATE OR REPLACE FUNCTION {app}.set_permissions_hash() RETURNS TRIGGER AS $$
        BEGIN
          NEW.hash = md5(NEW.permissions::text);
          RETURN NEW;
        END;
        $$ LANGUAGE plpgsql;
        CREATE OR REPLACE TRIGGER on_set_permissions BEFORE INSERT OR UPDATE ON {app}."permissions"
          FOR EACH ROW EXECUTE FUNCTION {app}.set_permissions_hash();
        INSERT INTO {app}."permissions" (permissions) VALUES (NULL) ON CONFLICT DO NOTHING;
        CREATE SCHEMA IF NOT EXISTS {shard};
        CREATE TABLE IF NOT EXISTS {shard}."clients" (
          "clientGroupID" TEXT NOT NULL,
          "clientID" TEXT NOT NULL,
          "lastMutationID" BIGINT NOT NULL,
          "userID" TEXT,
          PRIMARY KEY ("clientGroupID", "clientID")
        );
        CREATE TABLE IF NOT EXISTS {shard}."mutations" (
          "clientGroupID" TEXT NOT NULL,
          "clientID" TEXT NOT NULL,
          "mutationID" BIGINT NOT NULL,
          "result" JSON NOT NULL,
          PRIMARY KEY ("clientGroupID", "clientID", "mutationID")
        );
        "#
    );
    sqlx::raw_sql(AssertSqlSafe(setup))
        .execute(&mut *tx)
        .await
        .map_err(query_err("create the shard schema"))?;

    let existing: Vec<String> =
        sqlx::query_scalar("SELECT pubname::text FROM pg_publication WHERE pubname = ANY($1)")
            .bind(cfg.all_publications())
            .fetch_all(&mut *tx)
            .await
            .map_err(query_err("list publications"))?;
    let missing: Vec<String> = cfg
        .app_publications
        .iter()
        .filter(|p| !existing.contains(p))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(Error::PublicationMissing { missing });
    }
    if cfg.app_publications.is_empty() && !existing.contains(&cfg.default_publication()) {
        let sql = format!(
            "CREATE PUBLICATION {} FOR TABLES IN SCHEMA public WITH (publish_via_partition_root = true)",
            ident(&cfg.default_publication())
        );
        tx.execute(AssertSqlSafe(sql))
            .await
            .map_err(query_err("create the default publication"))?;
        info!(publication = %cfg.default_publication(), "created publication for schema public");
    }
    if !existing.contains(&cfg.metadata_publication()) {
        let sql = format!(
            r#"CREATE PUBLICATION {} FOR TABLE {app}."permissions", TABLE {shard}."clients", {shard}."mutations""#,
            ident(&cfg.metadata_publication())
        );
        tx.execute(AssertSqlSafe(sql))
            .await
            .map_err(query_err("create the metadata publication"))?;
    }
    // Dropped tables, and the columns of altered ones, are announced in the replication
    // stream by event triggers (pgoutput says nothing of a drop, and sends a table's new
    // columns only before its next row change). Creating one needs superuser rights;
    // without them, drops are noticed at the next start and column changes at the table's
    // next row change.
    sqlx::raw_sql("SAVEPOINT zc_ddl")
        .execute(&mut *tx)
        .await
        .map_err(query_err("set a savepoint"))?;
    let trigger = format!(
        r#"
        CREATE OR REPLACE FUNCTION {shard}.zc_announce_drops() RETURNS event_trigger AS $$
        DECLARE dropped json;
        BEGIN
          SELECT json_agg(json_build_array(schema_name, object_name, objid::int8)) INTO dropped
            FROM pg_event_trigger_dropped_objects()
            WHERE object_type = 'table' AND NOT is_temporary;
          IF dropped IS NOT NULL THEN
            PERFORM pg_logical_emit_message(true, {prefix}, dropped::text);
          END IF;
        END;
        $$ LANGUAGE plpgsql;
        DROP EVENT TRIGGER IF EXISTS {name};
        CREATE EVENT TRIGGER {name} ON sql_drop EXECUTE FUNCTION {shard}.zc_announce_drops();
        CREATE OR REPLACE FUNCTION {shard}.zc_announce_alters() RETURNS event_trigger AS $$
        DECLARE altered json;
        BEGIN
          SELECT json_agg(json_build_array(n.nspname, c.relname, c.oid::int8,
                   (SELECT json_agg(json_build_array(a.attname, a.atttypid::int8) ORDER BY a.attnum)
                      FROM pg_attribute a
                      WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                        AND a.attgenerated = '')))
            INTO altered
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.oid IN (SELECT objid FROM pg_event_trigger_ddl_commands()
                            WHERE object_type = 'table')
              AND c.relkind IN ('r', 'p') AND c.relpersistence = 'p';
          IF altered IS NOT NULL THEN
            PERFORM pg_logical_emit_message(true, {alter_prefix}, altered::text);
          END IF;
        END;
        $$ LANGUAGE plpgsql;
        DROP EVENT TRIGGER IF EXISTS {alters};
        CREATE EVENT TRIGGER {alters} ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
          EXECUTE FUNCTION {shard}.zc_announce_alters();
        "#,
        prefix = literal(&drop_message_prefix(cfg)),
        name = ident(&format!("zc_drops_{}", cfg.shard_schema())),
        alter_prefix = literal(&alter_message_prefix(cfg)),
        alters = ident(&format!("zc_alters_{}", cfg.shard_schema())),
    );
    match sqlx::raw_sql(AssertSqlSafe(trigger))
        .execute(&mut *tx)
        .await
    {
        Ok(_) => {}
        Err(e) => {
            warn!(error = %e, "could not create the DDL event triggers (needs superuser): dropped tables are noticed at the next start, changed columns at the table's next row change");
            sqlx::raw_sql("ROLLBACK TO SAVEPOINT zc_ddl")
                .execute(&mut *tx)
                .await
                .map_err(query_err("roll back to the savepoint"))?;
        }
    }
    tx.commit()
        .await
        .map_err(query_err("commit the shard setup"))?;
    Ok(cfg.all_publications())
}

/// The prefix of the logical message that announces dropped tables.
pub(crate) fn drop_message_prefix(cfg: &WalConfig) -> String {
    format!("zc/{}/drop", cfg.shard_schema())
}

/// The prefix of the logical message that announces the columns of altered tables.
pub(crate) fn alter_message_prefix(cfg: &WalConfig) -> String {
    format!("zc/{}/alter", cfg.shard_schema())
}

/// A published table as the catalog describes it, before type resolution.
struct PublishedTable {
    oid: u32,
    name: TableName,
    attnames: Option<Vec<String>>,
    row_filter: Option<String>,
    bytes: u64,
    pages: u64,
}

/// A published table with what the initial COPY needs.
#[derive(Debug, Clone)]
pub(crate) struct CopySpec {
    pub(crate) spec: Arc<TableSpec>,
    /// Row filters of the publications (OR-ed); `None` when any publication has none.
    pub(crate) row_filter: Option<String>,
    /// The table's size on disk upstream (heap and TOAST): the copy starts with the largest.
    pub(crate) bytes: u64,
    /// Pages of its heap: a large table is copied in ranges of them.
    pub(crate) pages: u64,
}

/// Resolves how zc represents each type OID.
pub(crate) async fn resolve_types(
    conn: &mut PgConnection,
    oids: &[u32],
) -> Result<HashMap<u32, PgType>> {
    let oids: Vec<i64> = oids.iter().map(|&o| i64::from(o)).collect();
    let rows = sqlx::query(
        r#"
        SELECT t.oid::int8 AS oid, format_type(t.oid, NULL) AS display,
               b.typname::text AS base_name, b.typtype::text AS base_type, b.typcategory::text AS base_cat,
               e.typname::text AS elem_name, e.typtype::text AS elem_type
        FROM pg_type t
        JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
        LEFT JOIN pg_type e0 ON e0.oid = b.typelem AND b.typcategory = 'A'
        LEFT JOIN pg_type e ON e.oid = CASE WHEN e0.typtype = 'd' THEN e0.typbasetype ELSE e0.oid END
        WHERE t.oid = ANY($1)
        "#,
    )
    .bind(&oids)
    .fetch_all(&mut *conn)
    .await
    .map_err(query_err("resolve column types"))?;
    let mut out = HashMap::new();
    for row in rows {
        let oid: i64 = col(&row, "oid")?;
        let display: String = col(&row, "display")?;
        let base_name: String = col(&row, "base_name")?;
        let base_type: String = col(&row, "base_type")?;
        let base_cat: String = col(&row, "base_cat")?;
        let elem_name: Option<String> = col(&row, "elem_name")?;
        let elem_type: Option<String> = col(&row, "elem_type")?;
        let scalar = |name: &str, typtype: &str| {
            if typtype == "e" {
                TypeKind::Enum
            } else {
                TypeKind::from_builtin_name(name).unwrap_or(TypeKind::Unsupported)
            }
        };
        let kind = match (base_cat.as_str(), elem_name) {
            ("A", Some(elem)) => {
                TypeKind::Array(Box::new(scalar(&elem, elem_type.as_deref().unwrap_or("b"))))
            }
            _ => scalar(&base_name, &base_type),
        };
        let oid = u32::try_from(oid).unwrap_or_default();
        out.insert(
            oid,
            PgType {
                oid,
                name: display,
                kind,
            },
        );
    }
    Ok(out)
}

/// Waits until the committed transaction `xid` (32 bits, as a Begin message gives it) is
/// visible to new snapshots, for at most `bound`.
///
/// The walsender decodes a transaction once its commit record is in the WAL, and the
/// transaction leaves the running set (becomes visible) a moment after that: a catalog query
/// made on a Relation message could otherwise miss the table the transaction created.
pub(crate) async fn wait_until_visible(
    conn: &mut PgConnection,
    xid: u32,
    bound: std::time::Duration,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + bound;
    while !is_visible(conn, xid).await? {
        if tokio::time::Instant::now() >= deadline {
            warn!(
                xid,
                "a replicated transaction is still not visible upstream; reading the catalog anyway"
            );
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    Ok(())
}

/// Whether transaction `xid` (32 bits) is visible to a snapshot taken now: its full ID has
/// the epoch of the snapshot's xmax, one less when the 32 bits are at or above xmax's (it
/// began before xmax's epoch did).
async fn is_visible(conn: &mut PgConnection, xid: u32) -> Result<bool> {
    sqlx::query_scalar(
        r#"
        WITH s AS (SELECT pg_current_snapshot() AS snap),
             x AS (SELECT snap, pg_snapshot_xmax(snap)::text::int8 AS xmax FROM s)
        SELECT pg_visible_in_snapshot(
                 ((((xmax >> 32) - CASE WHEN $1 >= (xmax & 4294967295) THEN 1 ELSE 0 END) << 32)
                   | $1)::text::xid8,
                 snap)
        FROM x
        "#,
    )
    .bind(i64::from(xid))
    .fetch_one(&mut *conn)
    .await
    .map_err(query_err("check that a transaction is visible"))
}

/// Loads the schemas of every table in `publications`, as the catalog (or the snapshot the
/// connection's transaction is in) shows them. Tables without a usable key are skipped with a
/// warning; `only` restricts to the given table OIDs.
pub(crate) async fn published_tables(
    conn: &mut PgConnection,
    publications: &[String],
    only: Option<&[u32]>,
) -> Result<Vec<CopySpec>> {
    let rows = sqlx::query(
        r#"
        SELECT c.oid::int8 AS oid, pt.schemaname::text AS schema, pt.tablename::text AS name,
               pt.attnames::text[] AS attnames, pt.rowfilter::text AS rowfilter,
               pg_table_size(c.oid)::int8 AS bytes,
               pg_relation_size(c.oid)::int8 / current_setting('block_size')::int8 AS pages
        FROM pg_publication_tables pt
        JOIN pg_namespace n ON n.nspname = pt.schemaname
        JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
        WHERE pt.pubname = ANY($1)
        ORDER BY pt.schemaname, pt.tablename
        "#,
    )
    .bind(publications)
    .fetch_all(&mut *conn)
    .await
    .map_err(query_err("list published tables"))?;

    // A table in several publications: union of row filters (none if any has none).
    let mut tables: BTreeMap<u32, PublishedTable> = BTreeMap::new();
    for row in rows {
        let oid = u32::try_from(col::<i64>(&row, "oid")?).unwrap_or_default();
        if only.is_some_and(|o| !o.contains(&oid)) {
            continue;
        }
        let filter: Option<String> = col(&row, "rowfilter")?;
        let attnames: Option<Vec<String>> = col(&row, "attnames")?;
        let name = TableName::new(col::<String>(&row, "schema")?, col::<String>(&row, "name")?);
        match tables.get_mut(&oid) {
            Some(t) => {
                t.row_filter = match (t.row_filter.take(), filter) {
                    (Some(a), Some(b)) => Some(format!("({a}) OR ({b})")),
                    _ => None,
                };
            }
            None => {
                tables.insert(
                    oid,
                    PublishedTable {
                        oid,
                        name,
                        attnames,
                        row_filter: filter,
                        bytes: u64::try_from(col::<i64>(&row, "bytes")?).unwrap_or_default(),
                        pages: u64::try_from(col::<i64>(&row, "pages")?).unwrap_or_default(),
                    },
                );
            }
        }
    }
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let oids: Vec<i64> = tables.keys().map(|&o| i64::from(o)).collect();
    let cols = sqlx::query(
        r#"
        SELECT a.attrelid::int8 AS rel, a.attnum::int4 AS num, a.attname::text AS name,
               a.atttypid::int8 AS typ, a.attnotnull AS not_null
        FROM pg_attribute a
        WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
        ORDER BY a.attrelid, a.attnum
        "#,
    )
    .bind(&oids)
    .fetch_all(&mut *conn)
    .await
    .map_err(query_err("read table columns"))?;
    let mut type_oids: Vec<u32> = Vec::with_capacity(cols.len());
    for r in &cols {
        type_oids.push(u32::try_from(col::<i64>(r, "typ")?).unwrap_or_default());
    }
    type_oids.sort_unstable();
    type_oids.dedup();
    let types = resolve_types(conn, &type_oids).await?;

    let indexes = sqlx::query(
        r#"
        SELECT i.indrelid::int8 AS rel, ic.relname::text AS name, i.indisprimary AS primary,
               i.indisunique AS uniq, i.indimmediate AS immediate,
               (i.indpred IS NULL AND i.indexprs IS NULL) AS simple,
               string_to_array(i.indkey::text, ' ')::int2[] AS keys, string_to_array(i.indoption::text, ' ')::int2[] AS options
        FROM pg_index i
        JOIN pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_am am ON am.oid = ic.relam
        WHERE i.indrelid = ANY($1) AND am.amname = 'btree' AND i.indisvalid
        ORDER BY i.indrelid, ic.relname
        "#,
    )
    .bind(&oids)
    .fetch_all(&mut *conn)
    .await
    .map_err(query_err("read table indexes"))?;

    let mut out = Vec::new();
    for t in tables.into_values() {
        // attnum → position among published columns.
        let mut columns = Vec::new();
        let mut attnum_pos: HashMap<i32, usize> = HashMap::new();
        for c in &cols {
            if col::<i64>(c, "rel")? != i64::from(t.oid) {
                continue;
            }
            let name: String = col(c, "name")?;
            if t.attnames
                .as_ref()
                .is_some_and(|list| !list.contains(&name))
            {
                continue;
            }
            let typ = u32::try_from(col::<i64>(c, "typ")?).unwrap_or_default();
            let pg_type = types.get(&typ).cloned().unwrap_or(PgType {
                oid: typ,
                name: format!("oid {typ}"),
                kind: TypeKind::Unsupported,
            });
            if !pg_type.kind.is_supported() {
                warn!(table = %t.name, column = %name, r#type = %pg_type.name,
                    "column type is not supported by Zero: replicated, but will not be synced to clients");
            }
            attnum_pos.insert(col::<i32>(c, "num")?, columns.len());
            columns.push(ColumnSpec {
                name,
                pg_type,
                not_null: col(c, "not_null")?,
            });
        }
        let mut primary: Option<Vec<usize>> = None;
        let mut unique_candidates: Vec<Vec<usize>> = Vec::new();
        let mut index_specs = Vec::new();
        for ix in &indexes {
            if col::<i64>(ix, "rel")? != i64::from(t.oid) {
                continue;
            }
            if !col::<bool>(ix, "simple")? {
                continue;
            }
            let keys: Vec<i16> = col(ix, "keys")?;
            let options: Vec<i16> = col(ix, "options")?;
            let positions: Option<Vec<usize>> = keys
                .iter()
                .map(|k| attnum_pos.get(&i32::from(*k)).copied())
                .collect();
            let Some(positions) = positions else { continue };
            let name: String = col(ix, "name")?;
            let is_primary: bool = col(ix, "primary")?;
            let unique: bool = col(ix, "uniq")?;
            if is_primary {
                primary = Some(positions.clone());
            } else if unique
                && col::<bool>(ix, "immediate")?
                && positions
                    .iter()
                    .all(|&p| columns.get(p).is_some_and(|c| c.not_null))
            {
                unique_candidates.push(positions.clone());
            }
            let cols_desc = positions
                .iter()
                .zip(options.iter().chain(std::iter::repeat(&0)))
                .map(|(&p, &o)| (p, o & 1 == 1))
                .collect();
            index_specs.push(IndexSpec {
                name,
                columns: cols_desc,
                unique,
            });
        }
        unique_candidates.sort_by_key(Vec::len);
        let Some(key) = primary.or_else(|| unique_candidates.into_iter().next()) else {
            warn!(table = %t.name,
                "table has no primary key and no unique index over NOT NULL columns: not replicated");
            continue;
        };
        out.push(CopySpec {
            spec: Arc::new(TableSpec {
                name: t.name,
                oid: t.oid,
                columns,
                key,
                indexes: index_specs,
                copied_at: zc_types::Lsn::ZERO,
            }),
            row_filter: t.row_filter,
            bytes: t.bytes,
            pages: t.pages,
        });
    }
    Ok(out)
}

/// Sets `REPLICA IDENTITY USING INDEX` on published tables without a primary key that have
/// a usable unique index, so that updates and deletes carry the key (as zero-cache does).
pub(crate) async fn ensure_replica_identities(
    conn: &mut PgConnection,
    tables: &[CopySpec],
) -> Result<()> {
    for t in tables {
        let has_pk: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = $1::int8::oid AND indisprimary)",
        )
        .bind(i64::from(t.spec.oid))
        .fetch_one(&mut *conn)
        .await
        .map_err(query_err("check primary keys"))?;
        if has_pk {
            continue;
        }
        let ident_kind: String =
            sqlx::query_scalar("SELECT relreplident::text FROM pg_class WHERE oid = $1::int8::oid")
                .bind(i64::from(t.spec.oid))
                .fetch_one(&mut *conn)
                .await
                .map_err(query_err("read replica identity"))?;
        if ident_kind == "f" || ident_kind == "i" {
            continue;
        }
        let key_cols: Vec<&str> = t.spec.key_names();
        if let Some(ix) = t.spec.indexes.iter().find(|i| {
            i.unique && i.columns.iter().map(|(p, _)| *p).collect::<Vec<_>>() == t.spec.key
        }) {
            let sql = format!(
                "ALTER TABLE {} REPLICA IDENTITY USING INDEX {}",
                t.spec.name.quoted(),
                ident(&ix.name)
            );
            conn.execute(AssertSqlSafe(sql))
                .await
                .map_err(query_err("set replica identity"))?;
            info!(table = %t.spec.name, key = ?key_cols, "set REPLICA IDENTITY USING INDEX");
        }
    }
    Ok(())
}

/// State of the replication slot upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SlotState {
    Missing,
    Lost,
    Healthy,
}

pub(crate) async fn slot_state(conn: &mut PgConnection, slot: &str) -> Result<SlotState> {
    let row: Option<(Option<String>, bool)> = sqlx::query_as(
        "SELECT wal_status::text, restart_lsn IS NULL FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(&mut *conn)
    .await
    .map_err(query_err("read the replication slot"))?;
    Ok(match row {
        None => SlotState::Missing,
        Some((status, no_restart)) if no_restart || status.as_deref() == Some("lost") => {
            SlotState::Lost
        }
        Some(_) => SlotState::Healthy,
    })
}

/// Drops the slot if it exists, terminating a walsender that still holds it.
pub(crate) async fn drop_slot(conn: &mut PgConnection, slot: &str) -> Result<()> {
    for _ in 0..50 {
        let active: Option<Option<i32>> =
            sqlx::query_scalar("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1")
                .bind(slot)
                .fetch_optional(&mut *conn)
                .await
                .map_err(query_err("read the replication slot"))?;
        match active {
            None => return Ok(()),
            Some(Some(pid)) => {
                sqlx::query("SELECT pg_terminate_backend($1)")
                    .bind(pid)
                    .execute(&mut *conn)
                    .await
                    .map_err(query_err("stop the slot's walsender"))?;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Some(None) => {
                match sqlx::query("SELECT pg_drop_replication_slot($1)")
                    .bind(slot)
                    .execute(&mut *conn)
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(e) => {
                        warn!(slot, error = %e, "could not drop replication slot yet; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }
    Err(Error::Query {
        what: "drop the replication slot",
        source: format!("slot {slot:?} stayed active").into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use zc_testkit::TestDb;

    #[tokio::test]
    async fn a_transaction_is_visible_once_it_has_committed() {
        let db = TestDb::new().await;
        let mut writer = db.connect().await;
        let mut probe = db.connect().await;
        sqlx::raw_sql("BEGIN").execute(&mut writer).await.unwrap();
        let full: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::int8")
            .fetch_one(&mut writer)
            .await
            .unwrap();
        let xid = u32::try_from(full & 0xffff_ffff).unwrap();
        assert!(!is_visible(&mut probe, xid).await.unwrap(), "still running");
        sqlx::raw_sql("COMMIT").execute(&mut writer).await.unwrap();
        assert!(is_visible(&mut probe, xid).await.unwrap(), "committed");
        wait_until_visible(&mut probe, xid, std::time::Duration::from_secs(60))
            .await
            .unwrap();
        // An earlier transaction is visible too.
        assert!(is_visible(&mut probe, xid - 1).await.unwrap());
    }
}

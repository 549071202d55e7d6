//! Legacy CRUD mutations, applied by the server itself to the upstream database as
//! zero-cache's mutagen does: one SERIALIZABLE transaction (retried on serialization
//! failures) that bumps the client's `lastMutationID` in the shard's `clients` table,
//! skips mutations it already applied, refuses gaps, and runs the operations the write
//! permissions allow. When the operations fail, the mutation is applied again in "error
//! mode" (only the LMID bump), so that the client's queue moves on.

use serde_json::Value as Json;
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Row as _};
use zc_protocol::messages::{CrudOp, ErrorBody, WireRow};
use zc_types::TableSpec;

/// What happened to a CRUD mutation.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Applied (or already applied before).
    Done,
    /// The operations failed; only the LMID was bumped.
    Failed(String),
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn row_json(row: &WireRow) -> String {
    let map: serde_json::Map<String, Json> =
        row.iter().map(|(k, v)| (k.to_owned(), v.clone())).collect();
    Json::Object(map).to_string()
}

/// The SQL of one operation, with its one JSON parameter.
pub(crate) fn op_sql(spec: &TableSpec, op: &CrudOp) -> Option<(String, String)> {
    let t = spec.name.quoted();
    let (pk, value, kind) = match op {
        CrudOp::Insert {
            primary_key, value, ..
        } => (primary_key, value, 0),
        CrudOp::Upsert {
            primary_key, value, ..
        } => (primary_key, value, 1),
        CrudOp::Update {
            primary_key, value, ..
        } => (primary_key, value, 2),
        CrudOp::Delete {
            primary_key, value, ..
        } => (primary_key, value, 3),
        #[allow(unreachable_patterns)]
        _ => return None,
    };
    let known = |c: &str| spec.columns.iter().any(|x| x.name == c);
    let cols: Vec<String> = value
        .iter()
        .map(|(k, _)| k.to_owned())
        .filter(|k| known(k))
        .collect();
    if pk.iter().any(|k| !known(k)) || cols.is_empty() {
        return None;
    }
    let list = |v: &[String]| v.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ");
    let rec = format!("json_populate_record(NULL::{t}, $1::json)");
    let pk_list = list(pk);
    let where_pk = format!("({pk_list}) = (SELECT {pk_list} FROM {rec})");
    let non_pk: Vec<String> = cols.iter().filter(|c| !pk.contains(c)).cloned().collect();
    let sql = match kind {
        0 => format!(
            "INSERT INTO {t} ({c}) SELECT {c} FROM {rec} ON CONFLICT ({pk_list}) DO NOTHING",
            c = list(&cols)
        ),
        1 if non_pk.is_empty() => format!(
            "INSERT INTO {t} ({c}) SELECT {c} FROM {rec} ON CONFLICT ({pk_list}) DO NOTHING",
            c = list(&cols)
        ),
        1 => format!(
            "INSERT INTO {t} ({c}) SELECT {c} FROM {rec} ON CONFLICT ({pk_list}) DO UPDATE SET {sets}",
            c = list(&cols),
            sets = non_pk
                .iter()
                .map(|c| format!("{0} = EXCLUDED.{0}", quote(c)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        2 if non_pk.is_empty() => return None,
        2 => format!(
            "UPDATE {t} SET ({c}) = (SELECT {c} FROM {rec}) WHERE {where_pk}",
            c = list(&non_pk)
        ),
        _ => format!("DELETE FROM {t} WHERE {where_pk}"),
    };
    Some((sql, row_json(value)))
}

fn is_serialization_failure(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "40001" || c == "40P01")
}

/// Applies one CRUD mutation: `ops` are the statements the permissions allow; with
/// `failure`, the mutation is known to fail and only its LMID is recorded.
pub(crate) async fn apply(
    pool: &PgPool,
    shard: &str,
    group: &str,
    client: &str,
    id: u64,
    ops: &[(String, String)],
    failure: Option<String>,
) -> Result<Outcome, ErrorBody> {
    let mut error_mode: Option<String> = failure;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let result = run(pool, shard, group, client, id, ops, error_mode.is_some()).await;
        match result {
            // Processed before (a re-sent push): nothing to report.
            Ok(false) => return Ok(Outcome::Done),
            Ok(true) => {
                return Ok(match error_mode {
                    Some(m) => Outcome::Failed(m),
                    None => Outcome::Done,
                });
            }
            Err(RunError::Protocol(e)) => return Err(e),
            Err(RunError::Db(e)) if is_serialization_failure(&e) && attempts < 10 => {}
            Err(RunError::Db(e)) if error_mode.is_none() => {
                error_mode = Some(e.to_string());
            }
            Err(RunError::Db(e)) => {
                return Err(ErrorBody::internal(format!(
                    "could not record mutation {id} of client {client}: {e}"
                )));
            }
        }
    }
}

enum RunError {
    Db(sqlx::Error),
    Protocol(ErrorBody),
}

impl From<sqlx::Error> for RunError {
    fn from(e: sqlx::Error) -> Self {
        RunError::Db(e)
    }
}

async fn run(
    pool: &PgPool,
    shard: &str,
    group: &str,
    client: &str,
    id: u64,
    ops: &[(String, String)],
    error_mode: bool,
) -> Result<bool, RunError> {
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE")
        .await?;
    let row = sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {s}.clients (\"clientGroupID\", \"clientID\", \"lastMutationID\")
         VALUES ($1, $2, 1)
         ON CONFLICT (\"clientGroupID\", \"clientID\")
         DO UPDATE SET \"lastMutationID\" = {s}.clients.\"lastMutationID\" + 1
         RETURNING \"lastMutationID\"",
        s = quote(shard)
    )))
    .bind(group)
    .bind(client)
    .fetch_one(&mut *tx)
    .await?;
    let stored: i64 = row.get(0);
    let expected = u64::try_from(stored).unwrap_or(0);
    if expected > id {
        // Already applied: nothing to do.
        tx.rollback().await?;
        return Ok(false);
    }
    if expected < id {
        tx.rollback().await?;
        return Err(RunError::Protocol(ErrorBody::invalid_push(format!(
            "Push contains unexpected mutation id {id} for client {client}. Expected mutation id {expected}."
        ))));
    }
    if !error_mode {
        for (sql, param) in ops {
            sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(param)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    Ok(true)
}

//! The initial sync: slot with an exported snapshot, then a parallel binary COPY of every
//! published table at that snapshot, streamed into the destination in bounded batches.
//!
//! Memory stays bounded by `copy_workers × copy_batch_rows` rows (plus one COPY chunk per
//! worker) whatever the table sizes: each worker hands a batch to the destination and waits
//! for it before reading more, and TCP flow control holds PostgreSQL back meanwhile.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use futures::StreamExt;
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection, Executor};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info};
use zc_types::{ColumnSpec, Lsn, Row, TableSpec, TypeKind, Value};

use crate::config::{ConnParts, WalConfig};
use crate::copy_binary::{CopyBinaryDecoder, Fields};
use crate::destination::{Destination, SyncState, Watermark};
use crate::error::{Error, Result, query_err};
use crate::pg_value::{binary_supported, decode_binary, parse_text};
use crate::session::create_slot;
use crate::upstream::{self, CopySpec, ident};

/// Counters of the copy, shared by the workers and the progress reporter.
#[derive(Default)]
struct Progress {
    rows: AtomicU64,
    tables_done: AtomicUsize,
}

/// Runs a fresh initial sync into `dest` and returns the state it stored.
pub(crate) async fn run<D: Destination>(
    cfg: &WalConfig,
    parts: &ConnParts,
    publications: &[String],
    dest: &Arc<D>,
    cancel: &CancellationToken,
) -> Result<SyncState> {
    let started = Instant::now();
    let mut control = upstream::connect(&cfg.upstream_url).await?;
    // Forget the old state durably before the old slot goes: if this sync fails or the
    // process dies, the next start must not resume an old watermark on the new slot.
    dest.begin_initial_sync(Lsn::ZERO, Vec::new())
        .await
        .map_err(|e| Error::Destination(Box::new(e)))?;
    upstream::drop_slot(&mut control, &cfg.slot_name()).await?;
    let before = upstream::published_tables(&mut control, publications, None).await?;
    upstream::ensure_replica_identities(&mut control, &before).await?;

    let (session, slot) = create_slot(parts, cfg, publications, &cfg.slot_name(), false).await?;
    info!(slot = %cfg.slot_name(), consistent_point = %slot.consistent_point, "created replication slot");

    // Every worker imports the snapshot before the slot's session does anything else.
    let mut workers = Vec::with_capacity(cfg.copy_workers);
    for _ in 0..cfg.copy_workers {
        workers.push(snapshot_connection(cfg, &slot.snapshot).await?);
    }
    drop(session);
    drop(control);

    let mut tables = match workers.first_mut() {
        Some(conn) => upstream::published_tables(conn, publications, None).await?,
        None => Vec::new(),
    };
    for t in &mut tables {
        Arc::make_mut(&mut t.spec).copied_at = slot.consistent_point;
    }
    let specs: Vec<Arc<TableSpec>> = tables.iter().map(|t| Arc::clone(&t.spec)).collect();
    // A commit record starting exactly at the consistent point is streamed and is not in the
    // snapshot: the copy is "everything before" it, version consistent_point − 1.
    let copy_version = Lsn(slot.consistent_point.as_u64().saturating_sub(1));
    dest.begin_initial_sync(copy_version, specs)
        .await
        .map_err(|e| Error::Destination(Box::new(e)))?;

    let total_tables = tables.len();
    let queue = Arc::new(Mutex::new(tables.into_iter().collect::<VecDeque<_>>()));
    let progress = Arc::new(Progress::default());
    // Each worker is a task of its own, so that the workers decode their COPY streams on all
    // of the runtime's threads (joined in one task, they took turns on one). Dropping the set
    // (cancelled, or another worker failed) aborts the rest. They log in the caller's span.
    let mut copies = tokio::task::JoinSet::new();
    for conn in workers {
        copies.spawn(
            copy_worker(
                conn,
                Arc::clone(&queue),
                Arc::clone(dest),
                cfg.copy_batch_rows,
                Arc::clone(&progress),
            )
            .in_current_span(),
        );
    }
    let copy = async move {
        while let Some(done) = copies.join_next().await {
            match done {
                Ok(result) => result?,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => {
                    return Err(Error::ResyncRequired {
                        reason: "a copy worker was cancelled".into(),
                    });
                }
            }
        }
        Ok::<(), Error>(())
    };
    let report = async {
        let mut tick = tokio::time::interval(cfg.progress_interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            let rows = progress.rows.load(Ordering::Relaxed);
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            info!(
                rows,
                rows_per_sec = (rows as f64 / secs) as u64,
                tables_done = progress.tables_done.load(Ordering::Relaxed),
                tables = total_tables,
                "initial sync in progress"
            );
        }
    };
    tokio::select! {
        biased;
        // Shutdown: stop copying; the next start begins the initial sync again.
        _ = cancel.cancelled() => return Err(Error::ResyncRequired { reason: "initial sync was interrupted".into() }),
        // The copy: finishes when every table is stored.
        done = copy => { done?; }
        // Progress reports: never finish.
        _ = report => {}
    }

    let state = SyncState {
        slot: cfg.slot_name(),
        publications: publications.to_vec(),
        replica_version: slot.consistent_point,
        watermark: Watermark {
            commit_lsn: copy_version,
            ack_lsn: slot.consistent_point,
        },
    };
    dest.finish_initial_sync(state.clone())
        .await
        .map_err(|e| Error::Destination(Box::new(e)))?;
    let rows = progress.rows.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    info!(
        rows,
        tables = total_tables,
        seconds = format!("{secs:.2}"),
        rows_per_sec = (rows as f64 / secs.max(1e-3)) as u64,
        version = %slot.consistent_point,
        "initial sync complete"
    );
    Ok(state)
}

/// The SELECT list of a table's COPY: binary where we can decode the type, text otherwise.
/// A connection inside a read-only REPEATABLE READ transaction that imported `snapshot`.
async fn snapshot_connection(cfg: &WalConfig, snapshot: &str) -> Result<PgConnection> {
    let mut conn = upstream::connect(&cfg.upstream_url).await?;
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(query_err("begin the snapshot transaction"))?;
    let set = format!("SET TRANSACTION SNAPSHOT {}", upstream::literal(snapshot));
    conn.execute(AssertSqlSafe(set))
        .await
        .map_err(query_err("import the exported snapshot"))?;
    Ok(conn)
}

/// True when a column is copied in binary form: its kind has a binary decoder and its type's
/// binary form is what that decoder reads (inet, macaddr, pg_lsn… are text-like kinds with
/// binary forms of their own; oid is unsigned).
fn copied_as_binary(col: &ColumnSpec) -> bool {
    let name = col.pg_type.name.as_str();
    binary_supported(&col.pg_type.kind)
        && match col.pg_type.kind {
            TypeKind::Text => {
                matches!(name, "text" | "name" | "citext" | "\"char\"")
                    || name.starts_with("character")
            }
            TypeKind::Int => matches!(name, "smallint" | "integer" | "bigint"),
            _ => true,
        }
}

fn select_list(spec: &TableSpec) -> String {
    spec.columns
        .iter()
        .map(|c| {
            if copied_as_binary(c) {
                ident(&c.name)
            } else {
                format!("{}::text", ident(&c.name))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn copy_worker<D: Destination>(
    mut conn: PgConnection,
    queue: Arc<Mutex<VecDeque<CopySpec>>>,
    dest: Arc<D>,
    batch_rows: usize,
    progress: Arc<Progress>,
) -> Result<()> {
    loop {
        let Some(table) = queue.lock().await.pop_front() else {
            break;
        };
        copy_table(&mut conn, &table, dest.as_ref(), batch_rows, &progress).await?;
        progress.tables_done.fetch_add(1, Ordering::Relaxed);
    }
    conn.execute("COMMIT")
        .await
        .map_err(query_err("end the snapshot transaction"))?;
    let _ = conn.close().await;
    Ok(())
}

async fn copy_table<D: Destination>(
    conn: &mut PgConnection,
    table: &CopySpec,
    dest: &D,
    batch_rows: usize,
    progress: &Progress,
) -> Result<()> {
    let spec = &table.spec;
    let copy_err = |e: Box<dyn std::error::Error + Send + Sync>| Error::Copy {
        table: spec.name.clone(),
        source: e,
    };
    let filter = table
        .row_filter
        .as_ref()
        .map(|f| format!(" WHERE {f}"))
        .unwrap_or_default();
    let sql = format!(
        "COPY (SELECT {} FROM {}{filter}) TO STDOUT (FORMAT binary)",
        select_list(spec),
        spec.name.quoted()
    );
    let started = Instant::now();
    let mut stream = conn
        .copy_out_raw(&sql)
        .await
        .map_err(|e| copy_err(Box::new(e)))?;
    let mut decoder = CopyBinaryDecoder::new();
    let binary: Vec<bool> = spec.columns.iter().map(copied_as_binary).collect();
    let mut batch: Vec<Row> = Vec::with_capacity(batch_rows.min(100_000));
    let mut count = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| copy_err(Box::new(e)))?;
        decoder.push(&chunk);
        while let Some(row) = decoder
            .next_row_with(|fields| to_row(spec, &binary, fields))
            .map_err(|e| copy_err(Box::new(e)))?
        {
            batch.push(row?);
            if batch.len() >= batch_rows {
                count += batch.len() as u64;
                progress
                    .rows
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                let full =
                    std::mem::replace(&mut batch, Vec::with_capacity(batch_rows.min(100_000)));
                dest.copy_rows(&spec.name, full)
                    .await
                    .map_err(|e| Error::Destination(Box::new(e)))?;
            }
        }
    }
    drop(stream);
    decoder.finish().map_err(|e| copy_err(Box::new(e)))?;
    if !batch.is_empty() {
        count += batch.len() as u64;
        progress
            .rows
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        dest.copy_rows(&spec.name, batch)
            .await
            .map_err(|e| Error::Destination(Box::new(e)))?;
    }
    dest.copied_table(&spec.name)
        .await
        .map_err(|e| Error::Destination(Box::new(e)))?;
    info!(table = %spec.name, rows = count, ms = started.elapsed().as_millis() as u64, "copied table");
    Ok(())
}

/// A COPY row as the replica stores it; `binary[i]`: column `i` was copied in binary form.
fn to_row(spec: &TableSpec, binary: &[bool], fields: Fields<'_>) -> Result<Row> {
    if fields.len() != spec.columns.len() {
        return Err(Error::Copy {
            table: spec.name.clone(),
            source: format!(
                "COPY row has {} fields, expected {}",
                fields.len(),
                spec.columns.len()
            )
            .into(),
        });
    }
    let mut row = Vec::with_capacity(spec.columns.len());
    for ((field, col), &binary) in fields.iter().zip(&spec.columns).zip(binary) {
        let Some(bytes) = field else {
            row.push(Value::Null);
            continue;
        };
        let kind = &col.pg_type.kind;
        let value = if binary {
            decode_binary(kind, bytes)
        } else {
            match std::str::from_utf8(bytes) {
                Ok(text) => parse_text(kind, text),
                Err(_) => Ok(Value::Bytes(bytes.to_vec())),
            }
        };
        row.push(value.map_err(|source| Error::Value {
            table: spec.name.clone(),
            column: col.name.clone(),
            source,
        })?);
    }
    Ok(row)
}

/// Copies one table again at a new snapshot (after its columns changed upstream) and swaps
/// the copy in. A temporary slot exports the snapshot; its consistent point becomes the
/// table's `copied_at`, so the stream then ignores changes to the table in transactions
/// the copy already contains.
pub(crate) async fn resync_table<D: Destination>(
    cfg: &WalConfig,
    parts: &ConnParts,
    publications: &[String],
    dest: &D,
    table: &zc_types::TableName,
    oid: u32,
) -> Result<()> {
    let started = Instant::now();
    let tmp_slot = format!("{}_resync", cfg.slot_name());
    // A temporary slot of an earlier attempt may still exist while its session lingers.
    let mut control = upstream::connect(&cfg.upstream_url).await?;
    upstream::drop_slot(&mut control, &tmp_slot).await?;
    drop(control);
    let (session, slot) = create_slot(parts, cfg, publications, &tmp_slot, true).await?;
    let mut conn = snapshot_connection(cfg, &slot.snapshot).await?;
    // The temporary slot goes with its session; the snapshot stays valid in our transaction.
    drop(session);
    let Some(mut copy) = upstream::published_tables(&mut conn, publications, Some(&[oid]))
        .await?
        .into_iter()
        .next()
    else {
        return Err(Error::ResyncRequired {
            reason: format!("table {table} is no longer published with a usable key"),
        });
    };
    Arc::make_mut(&mut copy.spec).copied_at = slot.consistent_point;
    dest.begin_table_resync(Arc::clone(&copy.spec))
        .await
        .map_err(|e| Error::Destination(Box::new(e)))?;
    let progress = Progress::default();
    copy_table(&mut conn, &copy, dest, cfg.copy_batch_rows, &progress).await?;
    conn.execute("COMMIT")
        .await
        .map_err(query_err("end the snapshot transaction"))?;
    dest.finish_table_resync(&copy.spec.name)
        .await
        .map_err(|e| Error::Destination(Box::new(e)))?;
    info!(
        table = %copy.spec.name,
        rows = progress.rows.load(Ordering::Relaxed),
        snapshot = %slot.consistent_point,
        ms = started.elapsed().as_millis() as u64,
        "table copied again after a schema change"
    );
    Ok(())
}

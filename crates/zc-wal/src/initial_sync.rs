//! The initial sync: slot with an exported snapshot, then a parallel binary COPY of every
//! published table at that snapshot, streamed into the destination in bounded batches
//! ([`RowBatch`]es). A table larger than its share of the copy is copied in parts, ranges
//! of its heap pages (`ctid` ranges: a TID range scan, PostgreSQL 14+; zc needs 15 for
//! publication row filters anyway), by several workers at once.
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
use zc_types::{ColumnSpec, Lsn, RowBatch, TableSpec, TypeKind, ValueRef};

use crate::config::{ConnParts, WalConfig};
use crate::copy_binary::{CopyBinaryDecoder, Fields};
use crate::destination::{Destination, SyncState, Watermark};
use crate::error::{Error, Result, query_err};
use crate::pg_value::{binary_supported, parse_text, push_binary};
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
    let parts = plan_parts(tables, cfg.copy_workers, cfg.copy_part_bytes);
    let queue = Arc::new(Mutex::new(parts.into_iter().collect::<VecDeque<_>>()));
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

/// A table of the initial copy, shared by the parts it is copied in.
#[derive(Debug)]
struct TableCopy {
    copy: CopySpec,
    /// Parts not copied yet: the worker that copies the last one finishes the table.
    parts_left: AtomicUsize,
    /// Rows its finished parts copied.
    rows: AtomicU64,
    /// When the copy's parts were planned: a table's "copied table" line gives the time
    /// from there to its end (its parts may start at different times).
    started: Instant,
}

/// Heap pages `[from, to)` of a table (an open end where `None`); `None`: the whole table.
type PageRange = Option<(Option<u64>, Option<u64>)>;

/// What one worker copies at a time: a whole table, or a range of its heap pages.
#[derive(Debug)]
struct CopyPart {
    table: Arc<TableCopy>,
    pages: PageRange,
    /// The part's share of the table's size, to order the queue by.
    bytes: u64,
}

/// Splits the tables into the parts the workers copy, largest first.
///
/// The copy lasts as long as its slowest worker. A table larger than its share of the whole
/// (the total size over the workers) and than `min_part` is split into ranges of heap pages
/// of about that share, which several workers copy at once; the largest parts start first
/// and the small tables fill the workers' time around them.
fn plan_parts(tables: Vec<CopySpec>, workers: usize, min_part: u64) -> Vec<CopyPart> {
    let total: u64 = tables.iter().map(|t| t.bytes).sum();
    let share = (total / workers.max(1) as u64).max(min_part).max(1);
    let started = Instant::now();
    let mut parts = Vec::new();
    for copy in tables {
        let n = if copy.pages >= 2 && copy.bytes > share {
            copy.bytes
                .div_ceil(share)
                .min(workers as u64)
                .min(copy.pages)
        } else {
            1
        };
        let bytes = copy.bytes / n;
        let pages = copy.pages;
        let table = Arc::new(TableCopy {
            copy,
            parts_left: AtomicUsize::new(n as usize),
            rows: AtomicU64::new(0),
            started,
        });
        if n == 1 {
            parts.push(CopyPart {
                table,
                pages: None,
                bytes,
            });
            continue;
        }
        for i in 0..n {
            let from = (i > 0).then(|| pages * i / n);
            let to = (i + 1 < n).then(|| pages * (i + 1) / n);
            parts.push(CopyPart {
                table: Arc::clone(&table),
                pages: Some((from, to)),
                bytes,
            });
        }
    }
    // Stable: parts of one table stay in page order.
    parts.sort_by_key(|p| std::cmp::Reverse(p.bytes));
    parts
}

/// The WHERE clause of a part's COPY: the publications' row filter and the part's pages.
fn where_clause(row_filter: Option<&str>, pages: PageRange) -> String {
    let mut terms = Vec::new();
    if let Some(filter) = row_filter {
        terms.push(format!("({filter})"));
    }
    if let Some((from, to)) = pages {
        if let Some(from) = from {
            terms.push(format!("ctid >= '({from},0)'::tid"));
        }
        if let Some(to) = to {
            terms.push(format!("ctid < '({to},0)'::tid"));
        }
    }
    if terms.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", terms.join(" AND "))
    }
}

async fn copy_worker<D: Destination>(
    mut conn: PgConnection,
    queue: Arc<Mutex<VecDeque<CopyPart>>>,
    dest: Arc<D>,
    batch_rows: usize,
    progress: Arc<Progress>,
) -> Result<()> {
    loop {
        let Some(part) = queue.lock().await.pop_front() else {
            break;
        };
        let table = &part.table;
        let rows = copy_table(
            &mut conn,
            &table.copy,
            part.pages,
            dest.as_ref(),
            batch_rows,
            &progress,
        )
        .await?;
        table.rows.fetch_add(rows, Ordering::Relaxed);
        if table.parts_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let spec = &table.copy.spec;
            dest.copied_table(&spec.name)
                .await
                .map_err(|e| Error::Destination(Box::new(e)))?;
            progress.tables_done.fetch_add(1, Ordering::Relaxed);
            info!(
                table = %spec.name,
                rows = table.rows.load(Ordering::Relaxed),
                ms = table.started.elapsed().as_millis() as u64,
                "copied table"
            );
        }
    }
    conn.execute("COMMIT")
        .await
        .map_err(query_err("end the snapshot transaction"))?;
    let _ = conn.close().await;
    Ok(())
}

/// Copies a table, or the part of it in heap pages `pages`, into `dest`; returns the rows.
async fn copy_table<D: Destination>(
    conn: &mut PgConnection,
    table: &CopySpec,
    pages: PageRange,
    dest: &D,
    batch_rows: usize,
    progress: &Progress,
) -> Result<u64> {
    let spec = &table.spec;
    let copy_err = |e: Box<dyn std::error::Error + Send + Sync>| Error::Copy {
        table: spec.name.clone(),
        source: e,
    };
    let sql = format!(
        "COPY (SELECT {} FROM {}{}) TO STDOUT (FORMAT binary)",
        select_list(spec),
        spec.name.quoted(),
        where_clause(table.row_filter.as_deref(), pages),
    );
    let mut stream = conn
        .copy_out_raw(&sql)
        .await
        .map_err(|e| copy_err(Box::new(e)))?;
    let mut decoder = CopyBinaryDecoder::new();
    let binary: Vec<bool> = spec.columns.iter().map(copied_as_binary).collect();
    let width = spec.columns.len();
    let rows_per_batch = batch_rows.min(100_000);
    // Sized like the batch before it: one allocation of string bytes per batch.
    let mut batch = RowBatch::with_capacity(width, rows_per_batch, 0);
    let mut count = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| copy_err(Box::new(e)))?;
        decoder.push(&chunk);
        while decoder
            .next_row_with(|fields| push_row(spec, &binary, fields, &mut batch))
            .map_err(|e| copy_err(Box::new(e)))?
            .transpose()?
            .is_some()
        {
            if batch.len() >= batch_rows {
                count += batch.len() as u64;
                progress
                    .rows
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                let next = RowBatch::with_capacity(width, rows_per_batch, batch.byte_len());
                let full = std::mem::replace(&mut batch, next);
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
    Ok(count)
}

/// Appends a COPY row to `batch`; `binary[i]`: column `i` was copied in binary form.
fn push_row(
    spec: &TableSpec,
    binary: &[bool],
    fields: Fields<'_>,
    batch: &mut RowBatch,
) -> Result<()> {
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
    for ((field, col), &binary) in fields.iter().zip(&spec.columns).zip(binary) {
        let Some(bytes) = field else {
            batch.push(ValueRef::Null);
            continue;
        };
        let kind = &col.pg_type.kind;
        let pushed = if binary {
            push_binary(kind, bytes, batch)
        } else {
            match std::str::from_utf8(bytes) {
                Ok(text) => parse_text(kind, text).map(|v| batch.push(v.as_value_ref())),
                Err(_) => {
                    batch.push(ValueRef::Bytes(bytes));
                    Ok(())
                }
            }
        };
        if let Err(source) = pushed {
            batch.discard_row();
            return Err(Error::Value {
                table: spec.name.clone(),
                column: col.name.clone(),
                source,
            });
        }
    }
    batch.end_row().map_err(|e| Error::Copy {
        table: spec.name.clone(),
        source: Box::new(e),
    })
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
    copy_table(&mut conn, &copy, None, dest, cfg.copy_batch_rows, &progress).await?;
    dest.copied_table(&copy.spec.name)
        .await
        .map_err(|e| Error::Destination(Box::new(e)))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use zc_types::TableName;

    fn table(name: &str, bytes: u64, pages: u64) -> CopySpec {
        CopySpec {
            spec: Arc::new(TableSpec {
                name: TableName::new("public", name),
                oid: 0,
                columns: Vec::new(),
                key: Vec::new(),
                indexes: Vec::new(),
                copied_at: Lsn::ZERO,
            }),
            row_filter: None,
            bytes,
            pages,
        }
    }

    fn plan(tables: Vec<CopySpec>, workers: usize, min_part: u64) -> Vec<(String, PageRange)> {
        plan_parts(tables, workers, min_part)
            .into_iter()
            .map(|p| (p.table.copy.spec.name.name.clone(), p.pages))
            .collect()
    }

    #[test]
    fn large_tables_are_split_into_page_ranges_and_the_largest_parts_go_first() {
        let tables = vec![
            table("small", 1 << 20, 128),
            table("big", 360 << 20, 46_154),
            table("mid", 151 << 20, 19_333),
            table("tiny", 0, 0),
        ];
        // 512 MiB over 5 workers: parts of about 102 MiB.
        let parts = plan(tables, 5, 8 << 20);
        assert_eq!(
            parts,
            vec![
                ("big".into(), Some((None, Some(11_538)))),
                ("big".into(), Some((Some(11_538), Some(23_077)))),
                ("big".into(), Some((Some(23_077), Some(34_615)))),
                ("big".into(), Some((Some(34_615), None))),
                ("mid".into(), Some((None, Some(9_666)))),
                ("mid".into(), Some((Some(9_666), None))),
                ("small".into(), None),
                ("tiny".into(), None),
            ]
        );
        let plan = plan_parts(vec![table("big", 360 << 20, 46_154)], 5, 8 << 20);
        assert_eq!(plan.len(), 5, "at most one part per worker");
        assert_eq!(plan[0].table.parts_left.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn small_copies_are_not_split() {
        // Under the smallest part, one table per worker.
        let parts = plan(
            vec![table("a", 6 << 20, 700), table("b", 1 << 20, 100)],
            5,
            8 << 20,
        );
        assert_eq!(parts, vec![("a".into(), None), ("b".into(), None)]);
        // A table of one page cannot be split.
        let parts = plan(vec![table("a", 1 << 30, 1)], 5, 1);
        assert_eq!(parts, vec![("a".into(), None)]);
    }

    #[test]
    fn a_part_selects_its_pages_beside_the_row_filter() {
        assert_eq!(where_clause(None, None), "");
        assert_eq!(where_clause(Some("a > 1"), None), " WHERE (a > 1)");
        assert_eq!(
            where_clause(None, Some((None, Some(10)))),
            " WHERE ctid < '(10,0)'::tid"
        );
        assert_eq!(
            where_clause(Some("a > 1"), Some((Some(10), Some(20)))),
            " WHERE (a > 1) AND ctid >= '(10,0)'::tid AND ctid < '(20,0)'::tid"
        );
        assert_eq!(
            where_clause(None, Some((Some(20), None))),
            " WHERE ctid >= '(20,0)'::tid"
        );
    }
}

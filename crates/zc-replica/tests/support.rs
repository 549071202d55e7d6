//! Shared helpers: running the replicator, waiting for it, and the PostgreSQL oracle.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::Row as _;
use tokio_util::sync::CancellationToken;
use zc_replica::Replica;
use zc_testkit::TestDb;
use zc_types::{Lsn, TableName, TypeKind, Value};
use zc_types::{RowBatch, TableSpec};
use zc_wal::{Destination, Replicator, SyncState, Transaction, WalConfig};

/// Replication settings for a test database. Slots are cluster-wide, so each test uses its
/// database name as the app id (and so its own slot).
pub fn wal_config(db: &TestDb) -> WalConfig {
    let mut cfg = WalConfig::new(db.url()).with_app_id(db.name.clone());
    cfg.copy_workers = 3;
    cfg.copy_batch_rows = 1000;
    cfg.status_interval = Duration::from_millis(200);
    cfg
}

/// A replicator running in this process.
pub struct Running {
    pub replica: Replica,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), zc_wal::Error>>,
}

impl Running {
    pub fn start(cfg: WalConfig, path: &Path) -> Running {
        let replica = Replica::open(path).expect("open replica");
        Running::start_into(cfg, replica.clone(), replica)
    }

    /// Like [`start`](Self::start), counting the stream's durable flushes (calls of
    /// `Destination::flush`).
    pub fn start_counting_flushes(cfg: WalConfig, path: &Path) -> (Running, Arc<AtomicUsize>) {
        let replica = Replica::open(path).expect("open replica");
        let flushes = Arc::new(AtomicUsize::new(0));
        let dest = CountingFlushes {
            inner: replica.clone(),
            flushes: Arc::clone(&flushes),
        };
        (Running::start_into(cfg, replica, dest), flushes)
    }

    fn start_into(cfg: WalConfig, replica: Replica, dest: impl Destination) -> Running {
        let cancel = CancellationToken::new();
        let replicator = Replicator::new(cfg, dest);
        let c = cancel.clone();
        #[allow(clippy::disallowed_methods)]
        let task = tokio::spawn(async move { replicator.run(c).await });
        Running {
            replica,
            cancel,
            task,
        }
    }

    /// Stops it and returns the replica, checking it ended without error.
    pub async fn stop(self) {
        self.cancel.cancel();
        let result = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("replicator stops within 30 s")
            .expect("replicator task");
        result.expect("replicator ends without error");
    }
}

/// The replica as a destination that counts `flush` calls.
struct CountingFlushes {
    inner: Replica,
    flushes: Arc<AtomicUsize>,
}

impl Destination for CountingFlushes {
    type Error = zc_replica::Error;

    async fn sync_state(&self) -> Result<Option<SyncState>, Self::Error> {
        self.inner.sync_state().await
    }
    async fn tables(&self) -> Result<Vec<Arc<TableSpec>>, Self::Error> {
        Destination::tables(&self.inner).await
    }
    async fn begin_initial_sync(
        &self,
        replica_version: Lsn,
        tables: Vec<Arc<TableSpec>>,
    ) -> Result<(), Self::Error> {
        self.inner.begin_initial_sync(replica_version, tables).await
    }
    async fn copy_rows(&self, table: &TableName, rows: RowBatch) -> Result<(), Self::Error> {
        self.inner.copy_rows(table, rows).await
    }
    async fn copied_table(&self, table: &TableName) -> Result<(), Self::Error> {
        self.inner.copied_table(table).await
    }
    async fn finish_initial_sync(&self, state: SyncState) -> Result<(), Self::Error> {
        self.inner.finish_initial_sync(state).await
    }
    async fn begin_table_resync(&self, spec: Arc<TableSpec>) -> Result<(), Self::Error> {
        self.inner.begin_table_resync(spec).await
    }
    async fn finish_table_resync(&self, table: &TableName) -> Result<(), Self::Error> {
        self.inner.finish_table_resync(table).await
    }
    async fn apply(&self, txn: Transaction) -> Result<(), Self::Error> {
        self.inner.apply(txn).await
    }
    async fn apply_deferred(&self, txn: Transaction) -> Result<(), Self::Error> {
        self.inner.apply_deferred(txn).await
    }
    async fn flush(&self) -> Result<(), Self::Error> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.inner.flush().await
    }
}

/// The marker table: tests bump its counter and wait until the replica has the new value,
/// which proves every earlier commit was applied.
pub const MARKER_DDL: &str = "CREATE TABLE zc_marker (id int PRIMARY KEY, n bigint NOT NULL); INSERT INTO zc_marker VALUES (1, 0);";

pub async fn bump_marker(db: &TestDb) -> i64 {
    let mut conn = db.connect().await;
    sqlx::query_scalar("UPDATE zc_marker SET n = n + 1 WHERE id = 1 RETURNING n")
        .fetch_one(&mut conn)
        .await
        .expect("bump marker")
}

/// Waits (on the replica's version signal) until the marker reaches `n`; fails at once if
/// the replicator stopped.
pub async fn wait_marker(running: &Running, n: i64) {
    let replica = &running.replica;
    let mut rx = replica.subscribe();
    let marker = TableName::new("public", "zc_marker");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        // Only a completed sync counts: during an initial sync a snapshot shows a partial copy.
        let seen = replica
            .snapshot()
            .ok()
            .filter(|s| s.watermark().ok().flatten().is_some())
            .and_then(|s| s.get(&marker, &[Value::Int(1)]).ok().flatten())
            .and_then(|(row, _)| match row.get(1) {
                Some(Value::Int(v)) => Some(*v),
                _ => None,
            });
        if seen.is_some_and(|v| v >= n) {
            return;
        }
        assert!(
            !running.task.is_finished(),
            "the replicator stopped before reaching marker {n}"
        );
        tokio::select! {
            r = rx.changed() => r.expect("replica alive"),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = tokio::time::sleep_until(deadline) => panic!("replica did not reach marker {n} (saw {seen:?})"),
        }
    }
}

/// Waits until no walsender holds the slot (its process ends a little after the
/// replicator disconnects).
pub async fn wait_slot_inactive(db: &TestDb, slot: &str) {
    let mut conn = db.connect().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let active: bool =
            sqlx::query_scalar("SELECT active FROM pg_replication_slots WHERE slot_name = $1")
                .bind(slot)
                .fetch_one(&mut conn)
                .await
                .expect("slot query");
        if !active {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot stayed active after the replicator left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The slot's `confirmed_flush_lsn`: what the replicator acknowledged.
pub async fn confirmed_flush(db: &TestDb, slot: &str) -> Lsn {
    let mut conn = db.connect().await;
    let lsn: Option<String> = sqlx::query_scalar(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_one(&mut conn)
    .await
    .expect("slot");
    lsn.expect("confirmed_flush_lsn").parse().expect("lsn")
}

/// The upstream's current WAL position.
pub async fn current_lsn(db: &TestDb) -> Lsn {
    let mut conn = db.connect().await;
    let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut conn)
        .await
        .expect("lsn");
    lsn.parse().expect("lsn")
}

/// Makes numbers comparable across integer/float JSON forms.
fn normalize(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Number(n) => serde_json::json!(n.as_f64()),
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.into_iter().map(normalize).collect())
        }
        serde_json::Value::Object(o) => {
            serde_json::Value::Object(o.into_iter().map(|(k, v)| (k, normalize(v))).collect())
        }
        other => other,
    }
}

fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Bytes(b) => {
            serde_json::Value::String(b.iter().map(|x| format!("{x:02x}")).collect())
        }
        other => normalize(other.to_json()),
    }
}

/// The SQL expression whose JSON form equals what zc stores for a column of this kind,
/// computed by PostgreSQL independently of zc's parsers.
fn oracle_expr(col: &str, kind: &TypeKind) -> String {
    let c = format!("\"{col}\"");
    match kind {
        TypeKind::Numeric => format!("{c}::float8"),
        TypeKind::Timestamp | TypeKind::TimestampTz | TypeKind::Time => {
            format!("(extract(epoch from {c}) * 1000)::float8")
        }
        TypeKind::Date => format!("(extract(epoch from {c}::timestamp) * 1000)::float8"),
        TypeKind::Uuid | TypeKind::Enum => format!("{c}::text"),
        TypeKind::Array(_) => format!("array_to_json({c})"),
        TypeKind::Bytea => format!("encode({c}, 'hex')"),
        _ => c,
    }
}

/// Rows of a table as PostgreSQL sees them, keyed by the JSON of their key.
pub async fn pg_rows(
    db: &TestDb,
    spec: &zc_types::TableSpec,
) -> BTreeMap<String, Vec<serde_json::Value>> {
    let exprs: Vec<String> = spec
        .columns
        .iter()
        .map(|c| oracle_expr(&c.name, &c.pg_type.kind))
        .collect();
    let sql = format!(
        "SELECT json_build_array({})::text FROM {}",
        exprs.join(", "),
        spec.name.quoted()
    );
    let mut conn = db.connect().await;
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut conn)
        .await
        .expect("oracle query");
    let mut out = BTreeMap::new();
    for r in rows {
        let text: String = r.get(0);
        let serde_json::Value::Array(vals) = serde_json::from_str(&text).expect("json") else {
            panic!("not an array")
        };
        let vals: Vec<serde_json::Value> = vals.into_iter().map(normalize).collect();
        let key: Vec<&serde_json::Value> = spec.key.iter().map(|&i| &vals[i]).collect();
        out.insert(serde_json::to_string(&key).expect("key"), vals);
    }
    out
}

/// Rows of a table as the replica has them, keyed like [`pg_rows`].
pub fn replica_rows(
    replica: &Replica,
    spec: &zc_types::TableSpec,
) -> BTreeMap<String, Vec<serde_json::Value>> {
    let snap = replica.snapshot().expect("snapshot");
    let mut out = BTreeMap::new();
    let mut last_key: Option<Vec<u8>> = None;
    for row in snap.scan(&spec.name).expect("scan") {
        let (row, _) = row.expect("row");
        // Rows come in primary-key order.
        let k = zc_replica::key::encode(spec.key.iter().map(|&i| &row[i]));
        if let Some(prev) = &last_key {
            assert!(prev < &k, "scan of {} is not in key order", spec.name);
        }
        last_key = Some(k);
        let vals: Vec<serde_json::Value> = row.iter().map(value_json).collect();
        let key: Vec<&serde_json::Value> = spec.key.iter().map(|&i| &vals[i]).collect();
        out.insert(serde_json::to_string(&key).expect("key"), vals);
    }
    out
}

/// Asserts that every replicated table of the public schema equals PostgreSQL, row by row,
/// and that the replica has exactly the published tables.
pub async fn assert_converged(db: &TestDb, replica: &Replica) {
    let tables = replica
        .snapshot()
        .expect("snapshot")
        .tables()
        .expect("tables");
    let mut conn = db.connect().await;
    let upstream: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .expect("list tables");
    let mut replicated: Vec<String> = tables
        .iter()
        .filter(|t| t.name.schema == "public")
        .map(|t| t.name.name.clone())
        .collect();
    replicated.sort();
    assert_eq!(
        replicated, upstream,
        "replicated tables differ from upstream"
    );
    for spec in tables.iter().filter(|t| t.name.schema == "public") {
        let expected = pg_rows(db, spec).await;
        let actual = replica_rows(replica, spec);
        if expected != actual {
            let missing: Vec<_> = expected
                .keys()
                .filter(|k| !actual.contains_key(*k))
                .take(5)
                .collect();
            let extra: Vec<_> = actual
                .keys()
                .filter(|k| !expected.contains_key(*k))
                .take(5)
                .collect();
            let differing: Vec<_> = expected
                .iter()
                .filter(|(k, v)| actual.get(*k).is_some_and(|a| a != *v))
                .take(3)
                .map(|(k, v)| format!("{k}: pg={v:?} replica={:?}", actual.get(k)))
                .collect();
            panic!(
                "table {} differs: {} rows upstream, {} in replica; missing {missing:?}; extra {extra:?}; differing {differing:?}",
                spec.name,
                expected.len(),
                actual.len()
            );
        }
        // Secondary indexes hold exactly the rows.
        let snap = replica.snapshot().expect("snapshot");
        for index in &spec.indexes {
            let n = snap
                .scan_index(&spec.name, &index.name, &[])
                .expect("index scan")
                .count();
            assert_eq!(
                n,
                expected.len(),
                "index {} of {} has {n} entries",
                index.name,
                spec.name
            );
        }
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ZC_TEST_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

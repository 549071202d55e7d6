//! Replication throughput: initial sync of N generated rows (default 1M, `ZC_BENCH_ROWS`),
//! and streaming apply of pre-written changes (catch-up after a restart).
//!
//! ```text
//! cargo bench -p zc-benches --bench replication
//! ```
#![allow(clippy::print_stderr, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio_util::sync::CancellationToken;
use zc_replica::Replica;
use zc_testkit::TestDb;
use zc_types::{TableName, Value};
use zc_wal::{Replicator, WalConfig};

fn rows() -> u64 {
    std::env::var("ZC_BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000)
}

struct Bench {
    rt: tokio::runtime::Runtime,
    db: TestDb,
}

fn setup(rows: u64) -> Bench {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = rt.block_on(async {
        let db = TestDb::new().await;
        db.exec("CREATE TABLE zc_marker (id int PRIMARY KEY, n bigint NOT NULL); INSERT INTO zc_marker VALUES (1, 0);").await;
        db.exec(&format!(
            "CREATE TABLE issue (id int8 PRIMARY KEY, title text NOT NULL, open bool NOT NULL,
                                 modified timestamptz NOT NULL, creator text NOT NULL, score float8, meta jsonb);
             CREATE INDEX issue_modified ON issue (modified DESC);
             INSERT INTO issue SELECT g, 'issue number ' || g, g % 3 = 0,
                 timestamptz '2024-01-01' + g * interval '1 second', 'user' || (g % 100), g / 7.0,
                 jsonb_build_object('n', g)
             FROM generate_series(1, {rows}) g;
             ANALYZE issue;"
        )).await;
        db
    });
    Bench { rt, db }
}

fn config(db: &TestDb) -> WalConfig {
    let mut cfg = WalConfig::new(db.url());
    cfg.status_interval = Duration::from_millis(100);
    cfg.progress_interval = Duration::from_secs(30);
    cfg
}

async fn wait_marker(replica: &Replica, n: i64) {
    let mut rx = replica.subscribe();
    let marker = TableName::new("public", "zc_marker");
    loop {
        let seen = replica
            .snapshot()
            .ok()
            .and_then(|s| s.get(&marker, &[Value::Int(1)]).ok().flatten());
        if seen.is_some_and(|(row, _)| matches!(row.get(1), Some(Value::Int(v)) if *v >= n)) {
            return;
        }
        rx.changed().await.unwrap();
    }
}

async fn bump(db: &TestDb) -> i64 {
    let mut conn = db.connect().await;
    sqlx::query_scalar("UPDATE zc_marker SET n = n + 1 WHERE id = 1 RETURNING n")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

fn initial_sync(c: &mut Criterion) {
    let n = rows();
    let b = setup(n);
    let mut group = c.benchmark_group("replication");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(1))
        .warm_up_time(Duration::from_millis(1));
    group.throughput(Throughput::Elements(n));
    group.bench_function(format!("initial_sync_{n}_rows"), |bench| {
        bench.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().unwrap();
                total += b.rt.block_on(async {
                    // A fresh replica each time: always a full initial sync.
                    let replica = Replica::open(dir.path().join("r.redb")).unwrap();
                    let cancel = CancellationToken::new();
                    let rep = Replicator::new(config(&b.db), replica.clone());
                    let marker = bump(&b.db).await;
                    let started = Instant::now();
                    let c2 = cancel.clone();
                    let run = async move { rep.run(c2).await.unwrap() };
                    let wait = async {
                        wait_marker(&replica, marker).await;
                        let took = started.elapsed();
                        cancel.cancel();
                        took
                    };
                    let (_, took) = tokio::join!(run, wait);
                    took
                });
            }
            total
        });
    });
    group.finish();
}

fn streaming_apply(c: &mut Criterion) {
    let b = setup(1000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.redb");
    let changes_per_iter: u64 = 20_000;
    let mut next_id: i64 = 10_000_000;
    let mut group = c.benchmark_group("replication");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(1))
        .warm_up_time(Duration::from_millis(1));
    group.throughput(Throughput::Elements(changes_per_iter));
    group.bench_function("streaming_apply_catch_up", |bench| {
        bench.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += b.rt.block_on(async {
                    // Write the changes while the replicator is down, in transactions of 100:
                    // half inserts, half updates of the rows just inserted.
                    let mut sql = String::new();
                    for _ in 0..(changes_per_iter / 200) {
                        let (lo, hi) = (next_id, next_id + 99);
                        next_id += 100;
                        sql.push_str(&format!(
                            "BEGIN; INSERT INTO issue SELECT g, 'new ' || g, true, now(), 'u', 1.5, '{{}}' FROM generate_series({lo}, {hi}) g;
                             UPDATE issue SET open = false, score = score + 1 WHERE id BETWEEN {lo} AND {hi}; COMMIT;"
                        ));
                    }
                    b.db.exec(&sql).await;
                    let marker = bump(&b.db).await;
                    let replica = Replica::open(&path).unwrap();
                    let cancel = CancellationToken::new();
                    let rep = Replicator::new(config(&b.db), replica.clone());
                    let started = Instant::now();
                    let c2 = cancel.clone();
                    let run = async move { rep.run(c2).await.unwrap() };
                    let wait = async {
                        wait_marker(&replica, marker).await;
                        let took = started.elapsed();
                        cancel.cancel();
                        took
                    };
                    let (_, took) = tokio::join!(run, wait);
                    took
                });
            }
            total
        });
    });
    group.finish();
}

criterion_group!(benches, initial_sync, streaming_apply);
criterion_main!(benches);

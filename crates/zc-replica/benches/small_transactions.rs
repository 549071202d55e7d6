//! Streaming many small upstream transactions into the replica (the per-transaction cost of
//! the replication stream): `ZC_BENCH_TXNS` (default 2,000) single-row transactions,
//!
//! - `catch_up`: written while the replicator is down, then streamed after a restart;
//! - `live`: committed one after another on one connection while the replicator runs.
//!
//! Each is timed until the replica shows a marker bumped after the last transaction, over
//! `ZC_BENCH_ITERS` (default 5) runs; the median is printed in transactions per second.
//!
//! ```text
//! cargo bench -p zc-replica --bench small_transactions
//! ```
//!
//! Without `--bench` (e.g. `cargo test --all-targets`) it runs once with 20 transactions as a
//! smoke test. A plain harness rather than criterion: each run needs a running replicator
//! and a PostgreSQL, and the figure of interest is the end-to-end rate.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use zc_replica::Replica;
use zc_testkit::TestDb;
use zc_types::{TableName, Value};
use zc_wal::{Replicator, WalConfig};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

struct Running {
    replica: Replica,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), zc_wal::Error>>,
}

impl Running {
    fn start(db: &TestDb, path: &Path) -> Running {
        let replica = Replica::open(path).unwrap();
        let mut cfg = WalConfig::new(db.url()).with_app_id(db.name.clone());
        cfg.status_interval = Duration::from_millis(100);
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let replicator = Replicator::new(cfg, replica.clone());
        #[allow(clippy::disallowed_methods)]
        let task = tokio::spawn(async move { replicator.run(c).await });
        Running {
            replica,
            cancel,
            task,
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap().unwrap();
    }

    async fn wait_marker(&self, n: i64) {
        let mut rx = self.replica.subscribe();
        let marker = TableName::new("public", "zc_marker");
        loop {
            let seen = self
                .replica
                .snapshot()
                .ok()
                .filter(|s| s.watermark().ok().flatten().is_some())
                .and_then(|s| s.get(&marker, &[Value::Int(1)]).ok().flatten());
            if seen.is_some_and(|(row, _)| matches!(row.get(1), Some(Value::Int(v)) if *v >= n)) {
                return;
            }
            assert!(!self.task.is_finished(), "the replicator stopped");
            tokio::select! {
                r = rx.changed() => r.unwrap(),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
}

async fn bump(db: &TestDb) -> i64 {
    let mut conn = db.connect().await;
    sqlx::query_scalar("UPDATE zc_marker SET n = n + 1 WHERE id = 1 RETURNING n")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (txns, iters) = if bench {
        (env_or("ZC_BENCH_TXNS", 2000), env_or("ZC_BENCH_ITERS", 5))
    } else {
        (20, 1)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let db = TestDb::new().await;
        db.exec(
            "CREATE TABLE zc_marker (id int PRIMARY KEY, n bigint NOT NULL);
             INSERT INTO zc_marker VALUES (1, 0);
             CREATE TABLE item (id int8 PRIMARY KEY, title text NOT NULL, n int8 NOT NULL);",
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.redb");
        let running = Running::start(&db, &path);
        running.wait_marker(bump(&db).await).await;
        running.stop().await;

        let mut next_id: i64 = 1;
        let mut catch_up = Vec::new();
        for _ in 0..iters {
            let mut sql = String::new();
            for _ in 0..txns {
                sql.push_str(&format!(
                    "BEGIN; INSERT INTO item VALUES ({next_id}, 'item {next_id}', {next_id}); COMMIT;\n"
                ));
                next_id += 1;
            }
            db.exec(&sql).await;
            let marker = bump(&db).await;
            let started = Instant::now();
            let running = Running::start(&db, &path);
            running.wait_marker(marker).await;
            let took = started.elapsed();
            running.stop().await;
            catch_up.push(txns as f64 / took.as_secs_f64());
        }

        let mut live = Vec::new();
        let running = Running::start(&db, &path);
        running.wait_marker(bump(&db).await).await;
        let mut conn = db.connect().await;
        for _ in 0..iters {
            let started = Instant::now();
            for _ in 0..txns {
                sqlx::query("INSERT INTO item VALUES ($1, 'item', $1)")
                    .bind(next_id)
                    .execute(&mut conn)
                    .await
                    .unwrap();
                next_id += 1;
            }
            let marker = bump(&db).await;
            running.wait_marker(marker).await;
            live.push(txns as f64 / started.elapsed().as_secs_f64());
        }
        running.stop().await;

        let show = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "small_transactions/catch_up: {txns} single-row txns, median {:.0} txn/s (runs: {})",
            median(catch_up.clone()),
            show(&catch_up)
        );
        println!(
            "small_transactions/live:     {txns} single-row txns, median {:.0} txn/s (runs: {})",
            median(live.clone()),
            show(&live)
        );
    });
}

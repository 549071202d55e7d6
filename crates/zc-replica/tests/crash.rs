//! Crash safety: the replication process is killed (SIGKILL) at random points during the
//! initial sync and during streaming, restarted, and in the end the replica equals
//! PostgreSQL — no change lost, none applied twice.
//!
//! The replicator runs in a child process: this same test binary, re-run with
//! `ZC_CRASH_CHILD` set, executes only [`crash_child_replicator`].

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;
use zc_replica::Replica;
use zc_testkit::TestDb;
use zc_wal::Replicator;

use crate::random::{Table, create_schema, random_transactions};
use crate::support::*;

const CHILD_ENV: &str = "ZC_CRASH_CHILD";

/// Entry point of the child process; does nothing in a normal test run.
#[test]
fn crash_child_replicator() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.splitn(3, '|');
    let (url, app, path) = (
        parts.next().expect("url"),
        parts.next().expect("app"),
        parts.next().expect("path"),
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let replica = Replica::open(path).expect("open replica");
        let mut cfg = zc_wal::WalConfig::new(url).with_app_id(app);
        cfg.copy_workers = 2;
        cfg.copy_batch_rows = 500;
        cfg.status_interval = Duration::from_millis(100);
        Replicator::new(cfg, replica)
            .run(CancellationToken::new())
            .await
            .expect("replicate");
    });
}

pub(crate) fn spawn_child(db: &TestDb, path: &std::path::Path) -> Child {
    Command::new(std::env::current_exe().expect("current exe"))
        .args([
            "crash::crash_child_replicator",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            CHILD_ENV,
            format!("{}|{}|{}", db.url(), db.name, path.display()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child replicator")
}

async fn wait_slot_active(db: &TestDb, slot: &str) {
    let mut conn = db.connect().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let active: Option<bool> =
            sqlx::query_scalar("SELECT active FROM pg_replication_slots WHERE slot_name = $1")
                .bind(slot)
                .fetch_optional(&mut conn)
                .await
                .expect("slot query");
        if active == Some(true) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the child never started streaming"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_and_restart_converges() {
    init_tracing();
    let seed: u64 = std::env::var("ZC_PROPTEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash_and_restart_converges seed={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let db = TestDb::new().await;
    let tables: Vec<Table> = (0..2)
        .map(|i| Table::random(&format!("t{i}"), &mut rng))
        .collect();
    create_schema(&db, &tables).await;
    // A table big enough that a kill often lands inside the initial copy.
    db.exec(
        "CREATE TABLE big (id int PRIMARY KEY, payload text, n int8);
             INSERT INTO big SELECT g, md5(g::text), g FROM generate_series(1, 150000) g;",
    )
    .await;
    random_transactions(&db, &tables, &mut rng, 20).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("replica.redb");
    let cycles = 6;
    for cycle in 0..cycles {
        let mut child = spawn_child(&db, &path);
        if cycle > 0 {
            // Let it reach streaming (the slot is held by its walsender), so that the kills
            // after the first land while transactions are being applied.
            wait_slot_active(&db, &format!("{}_0_zc", db.name)).await;
        }
        // Write while it runs, then kill it without warning.
        let writes = rng.random_range(5..40);
        random_transactions(&db, &tables, &mut rng, writes).await;
        db.exec(&format!(
            "UPDATE big SET n = n + 1 WHERE id % 1000 = {}",
            cycle
        ))
        .await;
        // The first kill lands early, inside the initial copy of `big`.
        let wait = if cycle == 0 {
            100
        } else {
            rng.random_range(0..800)
        };
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        let reopened = Replica::open(&path);
        let phase = match reopened.as_ref().map_err(|e| e.to_string()).and_then(|r| {
            r.snapshot()
                .and_then(|s| s.watermark())
                .map_err(|e| e.to_string())
        }) {
            Ok(Some(w)) => format!("streaming at {}", w.commit_lsn),
            Ok(None) => "initial sync".to_string(),
            Err(e) => panic!("the replica must open after a kill: {e}"),
        };
        drop(reopened);
        eprintln!("cycle {cycle}: killed after {writes} transactions + {wait} ms, during {phase}");
    }
    // A last, uninterrupted run must converge exactly.
    random_transactions(&db, &tables, &mut rng, 20).await;
    let running = Running::start(wal_config(&db), &path);
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;
    assert_converged(&db, &running.replica).await;
    running.stop().await;
}

//! The differential test of query trees, through the real stack: PostgreSQL → logical
//! replication (zc-wal) → the redb replica → `SnapshotSources` → `zc-query`, advanced by the
//! change log between snapshots (`diff`). Random data, random trees (nested related,
//! EXISTS / NOT EXISTS inside or, limit, start) and random multi-row transactions; after
//! hydration and after every replicated transaction, the tree's rows equal what PostgreSQL
//! returns for the same tree.
//!
//! Budget: `ZC_PROPTEST_BUDGET_SECS` (default 6). Failing cases are saved to
//! `tests/regressions/replica_trees.seeds` and replayed first.

// The case printout is what a failing run shows (libtest captures it otherwise).
#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;
use zc_query::tree::TreeQuery;
use zc_query::view::FlatView;
use zc_replica::Replica;
use zc_sync::{Advance, SnapshotSources, diff};
use zc_testkit::TestDb;
use zc_testkit::regressions::Regressions;
use zc_testkit::trees::{DDL, TABLES, delete_sql, exec, level, oracle, random_row, upsert_sql};
use zc_types::{TableName, Value};
use zc_wal::{Replicator, WalConfig};

struct World {
    db: TestDb,
    conn: sqlx::PgConnection,
    replica: Replica,
    marker: i64,
}

impl World {
    /// Commits a marker bump and waits until the replica has it (so every earlier commit).
    async fn sync(&mut self) {
        self.marker += 1;
        exec(
            &mut self.conn,
            format!("UPDATE zc_marker SET n = {} WHERE id = 1", self.marker),
        )
        .await;
        let marker = TableName::new("public", "zc_marker");
        let mut rx = self.replica.subscribe();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let seen = self
                .replica
                .snapshot()
                .ok()
                .filter(|s| s.watermark().ok().flatten().is_some())
                .and_then(|s| s.get(&marker, &[Value::Int(1)]).ok().flatten())
                .and_then(|(row, _)| match row.get(1) {
                    Some(Value::Int(v)) => Some(*v),
                    _ => None,
                });
            if seen.is_some_and(|v| v >= self.marker) {
                return;
            }
            assert!(Instant::now() < deadline, "replica did not catch up");
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
}

async fn run_case(w: &mut World, seed: u64) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    exec(
        &mut w.conn,
        "BEGIN; DELETE FROM \"user\"; DELETE FROM issue; DELETE FROM comment; DELETE FROM issue_label;".into(),
    )
    .await;
    for _ in 0..rng.random_range(0..25) {
        let t = rng.random_range(0..TABLES.len());
        exec(&mut w.conn, upsert_sql(t, &random_row(&mut rng, t))).await;
    }
    exec(&mut w.conn, "COMMIT".into()).await;
    w.sync().await;
    let snapshot = w.replica.snapshot().expect("snapshot");
    let mut version = snapshot.version().expect("version");
    let mut sources = SnapshotSources::new(snapshot).expect("sources");
    let root = [0, 1, 1, 1, 2, 3][rng.random_range(0..6)];
    let q = level(&mut rng, root, 2);
    eprintln!("case {seed}: {q}");
    let ast = zc_query::ast::parse(&q).unwrap_or_else(|e| panic!("{e}: {q}"));
    let mut tree = TreeQuery::build(&ast, &sources).unwrap_or_else(|e| panic!("{e}: {q}"));
    let mut view = FlatView::new();
    view.apply(&tree.hydrate(&sources).expect("hydrate"), &sources)
        .expect("consistent output");
    assert_eq!(
        view.rows(),
        oracle(&mut w.conn, &ast).await,
        "hydration of {q}\nseed {seed}"
    );
    let mut checks = 0;
    for _ in 0..rng.random_range(1..6) {
        // One upstream transaction of a few row changes.
        exec(&mut w.conn, "BEGIN".into()).await;
        for _ in 0..rng.random_range(1..5) {
            let t = rng.random_range(0..TABLES.len());
            let row = random_row(&mut rng, t);
            let sql = if rng.random_range(0..3) == 0 {
                delete_sql(t, &row)
            } else {
                upsert_sql(t, &row)
            };
            exec(&mut w.conn, sql).await;
        }
        exec(&mut w.conn, "COMMIT".into()).await;
        w.sync().await;
        let next = w.replica.snapshot().expect("snapshot");
        let next_version = next.version().expect("version");
        let changes = match diff(sources.snapshot(), &next, version, next_version).expect("diff") {
            Advance::Rows(rows) => rows,
            Advance::Reset | Advance::TooMany { .. } => panic!("unexpected reset"),
        };
        for (table, change) in &changes {
            eprintln!("  push {table} {change:?}");
            sources.apply(table, change);
            let outs = tree
                .push(&table.zero_name(), change, &sources)
                .unwrap_or_else(|e| panic!("{e}: {q}"));
            view.apply(&outs, &sources).expect("consistent output");
        }
        sources = SnapshotSources::new(next).expect("sources");
        version = next_version;
        assert_eq!(
            view.rows(),
            oracle(&mut w.conn, &ast).await,
            "{q}\nafter {changes:?}\nseed {seed}"
        );
        // A tree rebuilt on the new snapshot agrees too.
        let mut fresh = TreeQuery::build(&ast, &sources).expect("build");
        let mut again = FlatView::new();
        again
            .apply(&fresh.hydrate(&sources).expect("hydrate"), &sources)
            .expect("consistent output");
        assert_eq!(again.rows(), view.rows(), "{q}\nseed {seed}");
        checks += 1;
    }
    checks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trees_over_the_replica_match_postgres() {
    let budget = Duration::from_secs(
        std::env::var("ZC_PROPTEST_BUDGET_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(6),
    );
    let db = TestDb::new().await;
    db.exec(DDL).await;
    db.exec("CREATE TABLE zc_marker (id int PRIMARY KEY, n bigint NOT NULL); INSERT INTO zc_marker VALUES (1, 0);")
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = Replica::open(dir.path().join("replica.db")).expect("replica");
    let mut cfg = WalConfig::new(db.url()).with_app_id(db.name.clone());
    cfg.status_interval = Duration::from_millis(200);
    let cancel = CancellationToken::new();
    let replicator = Replicator::new(cfg, replica.clone());
    let c = cancel.clone();
    #[allow(clippy::disallowed_methods)]
    let task = tokio::spawn(async move { replicator.run(c).await });
    let conn = db.connect().await;
    let mut world = World {
        db,
        conn,
        replica,
        marker: 0,
    };
    world.sync().await;

    let regressions = Regressions::new(env!("CARGO_MANIFEST_DIR"), "replica_trees");
    let saved = regressions.saved();
    let mut checks = 0;
    for &seed in &saved {
        let _guard = regressions.guard(seed);
        checks += run_case(&mut world, seed).await;
    }
    let fixed: Option<u64> = std::env::var("ZC_PROPTEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    let started = Instant::now();
    let mut cases = 0;
    while started.elapsed() < budget || cases < 10 {
        let seed = fixed.unwrap_or_else(rand::random);
        let _guard = regressions.guard(seed);
        checks += run_case(&mut world, seed).await;
        cases += 1;
        if fixed.is_some() {
            break;
        }
    }
    eprintln!(
        "{} saved + {cases} random trees over the replica, {checks} replicated transactions checked against PostgreSQL",
        saved.len()
    );
    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("replicator stops")
        .expect("replicator task");
    result.expect("replicator ends without error");
    drop(world.db);
}

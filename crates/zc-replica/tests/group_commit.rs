//! Group commit: zc-wal applies each transaction without an fsync (`apply_deferred`) and
//! acknowledges it only once a later durable commit (at most 100 ms or 500 transactions
//! later) covers it. Bursts of small upstream transactions must still arrive one replica
//! commit (one version) per upstream transaction, in order; a restart must lose and repeat nothing;
//! and the slot's acknowledged position must never pass what the replica file holds durably
//! (checked by killing the replicator process and reopening its file).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use zc_replica::{ChangeOp, Replica};
use zc_testkit::TestDb;
use zc_types::{Lsn, TableName, Value};

use crate::crash::spawn_child;
use crate::support::*;

const BURST_DDL: &str = "CREATE TABLE burst (id int8 PRIMARY KEY, n int8 NOT NULL)";

fn burst() -> TableName {
    TableName::new("public", "burst")
}

/// `n` single-row transactions from `first` on, sent as one string so that they commit
/// back to back.
fn burst_sql(first: i64, n: i64) -> String {
    (first..first + n)
        .map(|i| format!("BEGIN; INSERT INTO burst VALUES ({i}, {i}); COMMIT;\n"))
        .collect()
}

/// The ids and versions of the rows of `burst`, in id order.
fn burst_rows(replica: &Replica) -> Vec<(i64, Lsn)> {
    let snap = replica.snapshot().expect("snapshot");
    snap.scan(&burst())
        .expect("scan")
        .map(|r| {
            let (row, version) = r.expect("row");
            match row[0] {
                Value::Int(id) => (id, version),
                ref other => panic!("id {other:?}"),
            }
        })
        .collect()
}

/// Every upstream transaction inserted the next id: the replica must hold ids `1..=n`, each
/// at its own version, versions rising with the id (one commit per transaction, in commit
/// order), and the change log must name each row once, at that version.
fn assert_one_version_per_transaction(replica: &Replica, n: i64) -> Vec<(i64, Lsn)> {
    let rows = burst_rows(replica);
    let ids: Vec<i64> = rows.iter().map(|&(id, _)| id).collect();
    assert_eq!(ids, (1..=n).collect::<Vec<_>>(), "rows lost or extra");
    for pair in rows.windows(2) {
        assert!(
            pair[0].1 < pair[1].1,
            "transactions {} and {} share or swap versions ({} then {})",
            pair[0].0,
            pair[1].0,
            pair[0].1,
            pair[1].1
        );
    }
    let snap = replica.snapshot().expect("snapshot");
    let log: Vec<(i64, Lsn)> = snap
        .changes(Lsn::ZERO, snap.version().expect("version"))
        .expect("change log")
        .into_iter()
        .filter(|e| e.table == burst())
        .map(|e| {
            assert_eq!(e.op, ChangeOp::Set);
            match e.key.as_deref() {
                Some([Value::Int(id)]) => (*id, e.version),
                other => panic!("key {other:?}"),
            }
        })
        .collect();
    assert_eq!(
        log, rows,
        "the change log must have one entry per transaction"
    );
    rows
}

/// A test database with the marker and `burst` tables, and a directory for the replica
/// file (kept while the returned guard lives) with the file's path.
async fn burst_db() -> (TestDb, tempfile::TempDir, std::path::PathBuf) {
    init_tracing();
    let db = TestDb::new().await;
    db.exec(MARKER_DDL).await;
    db.exec(BURST_DDL).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.redb");
    (db, dir, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_small_transactions_keep_one_version_each_across_restarts() {
    let (db, _dir, path) = burst_db().await;
    let cfg = wal_config(&db);

    let running = Running::start(cfg.clone(), &path);
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;
    running.stop().await;

    // A backlog written while zc is down arrives as one burst after the restart...
    db.exec(&burst_sql(1, 1000)).await;
    let running = Running::start(cfg.clone(), &path);
    // ...and more while it catches up.
    db.exec(&burst_sql(1001, 1000)).await;
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;
    let before = assert_one_version_per_transaction(&running.replica, 2000);
    // Readers were told of the last commit.
    assert_eq!(
        *running.replica.subscribe().borrow(),
        running
            .replica
            .snapshot()
            .expect("snap")
            .version()
            .expect("v")
    );
    running.stop().await;

    // Reopened from its file: nothing lost, nothing applied twice (every row keeps the
    // version of its one commit), and streaming goes on from there.
    db.exec(&burst_sql(2001, 500)).await;
    let running = Running::start(cfg, &path);
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;
    let after = assert_one_version_per_transaction(&running.replica, 2500);
    assert_eq!(&after[..before.len()], &before[..]);
    assert_converged(&db, &running.replica).await;
    running.stop().await;
}

/// A steady stream of small transactions: PostgreSQL's walsender sends a keepalive each
/// time it has caught up while the replicator's reported position is behind what it sent,
/// which with deferred acknowledgements is after almost every transaction. Those keepalives
/// must not each cost a durable flush: the transactions still share one flush per 100 ms
/// (or 500 transactions), and the slot still moves up to the last of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_between_transactions_do_not_each_flush() {
    let (db, _dir, path) = burst_db().await;
    let slot = format!("{}_0_zc", db.name);
    let (running, flushes) = Running::start_counting_flushes(wal_config(&db), &path);
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;

    // Small transactions from a few connections at once, each connection waiting for its
    // last, with transactions on an unpublished table in between (as zc's own CVR writes
    // are): the walsender keeps catching up with the WAL between them.
    db.exec("CREATE SCHEMA side; CREATE TABLE side.t (id int8 PRIMARY KEY)")
        .await;
    let txns: usize = 400;
    let writers: usize = 4;
    let before = flushes.load(std::sync::atomic::Ordering::Relaxed);
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut conn = db.connect().await;
        // The test cluster commits asynchronously (its WAL reaches the walsender in
        // batches); a production one flushes the WAL at each commit, and the walsender
        // wakes for each.
        sqlx::query("SET synchronous_commit = on")
            .execute(&mut conn)
            .await
            .expect("synchronous commit");
        #[allow(clippy::disallowed_methods)]
        tasks.push(tokio::spawn(async move {
            for i in (1..=txns as i64).filter(|i| *i as usize % writers == w) {
                sqlx::query("INSERT INTO burst VALUES ($1, $1)")
                    .bind(i)
                    .execute(&mut conn)
                    .await
                    .expect("insert");
                sqlx::query("INSERT INTO side.t VALUES ($1)")
                    .bind(i)
                    .execute(&mut conn)
                    .await
                    .expect("unpublished insert");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;
    let elapsed = started.elapsed();
    let used = flushes.load(std::sync::atomic::Ordering::Relaxed) - before;
    eprintln!("{txns} transactions in {elapsed:?}: {used} flushes");
    // One flush per 100 ms of the stream, and a few for the marker and the idle timer
    // (twice that for a stream that a busy machine spread out over a long time).
    let allowed = (txns / 5).max((elapsed.as_millis() / 50) as usize + 5);
    assert!(
        used <= allowed,
        "{used} durable flushes for {txns} transactions (in {elapsed:?}): keepalives flushed"
    );
    let rows = burst_rows(&running.replica);
    assert_eq!(rows.len(), txns, "rows lost");
    // The slot still moves past the last transaction.
    let target = current_lsn(&db).await;
    wait_confirmed(&db, &slot, target).await;
    running.stop().await;
}

/// Waits until the slot (once it exists) has acknowledged `target`.
async fn wait_confirmed(db: &TestDb, slot: &str, target: Lsn) {
    let mut conn = db.connect().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let lsn: Option<Option<String>> = sqlx::query_scalar(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(slot)
        .fetch_optional(&mut conn)
        .await
        .expect("slot query");
        let confirmed: Option<Lsn> = lsn.flatten().map(|l| l.parse().expect("lsn"));
        if confirmed.is_some_and(|c| c >= target) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replicator never acknowledged {target}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_never_pass_the_durable_watermark() {
    let seed: u64 = std::env::var("ZC_PROPTEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("acks_never_pass_the_durable_watermark seed={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let (db, _dir, path) = burst_db().await;
    let slot = format!("{}_0_zc", db.name);
    // The initial sync first (in this process): then a marker acknowledged by the child below
    // means it is streaming.
    let running = Running::start(wal_config(&db), &path);
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;
    running.stop().await;

    // (acknowledged LSN after a kill, rows the reopened file held durably)
    let mut kills: Vec<(Lsn, i64)> = Vec::new();
    let mut next: i64 = 1;
    for cycle in 0..4 {
        let mut child = spawn_child(&db, &path);
        // Streaming (and caught up): it acknowledged a transaction committed just now (the
        // slot exists, so its position is behind this one until the child moves it).
        bump_marker(&db).await;
        let target = current_lsn(&db).await;
        wait_confirmed(&db, &slot, target).await;

        // A burst of single-row transactions, and a kill somewhere in its stream.
        let n = 1500;
        let sql = burst_sql(next, n);
        next += n;
        let mut conn = db.connect().await;
        #[allow(clippy::disallowed_methods)]
        let writer = tokio::spawn(async move {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .expect("burst");
        });
        let wait = rng.random_range(0..600);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        writer.await.expect("writer");
        wait_slot_inactive(&db, &slot).await;
        let acked = confirmed_flush(&db, &slot).await;

        // What the file holds after the kill is a prefix of the transactions, in order.
        let replica = Replica::open(&path).expect("the replica opens after a kill");
        let rows = burst_rows(&replica);
        let held = rows.len() as i64;
        assert_eq!(
            rows.iter().map(|&(id, _)| id).collect::<Vec<_>>(),
            (1..=held).collect::<Vec<_>>(),
            "cycle {cycle}: the durable rows are not a prefix of the transactions"
        );
        let mark = replica
            .snapshot()
            .expect("snap")
            .watermark()
            .expect("watermark")
            .expect("synced");
        if let Some(&(_, last)) = rows.last() {
            assert!(
                mark.commit_lsn >= last,
                "cycle {cycle}: watermark behind rows"
            );
        }
        drop(replica);
        eprintln!(
            "cycle {cycle}: killed after {wait} ms; slot acknowledged {acked}, file holds {held} of {} burst rows at {}",
            next - 1,
            mark.commit_lsn
        );
        kills.push((acked, held));
    }

    // An uninterrupted run brings everything, once; then every transaction the slot had
    // acknowledged at a kill must have been in the file reopened after it.
    let running = Running::start(wal_config(&db), &path);
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;
    let rows = assert_one_version_per_transaction(&running.replica, next - 1);
    assert_converged(&db, &running.replica).await;
    running.stop().await;
    for (cycle, &(acked, held)) in kills.iter().enumerate() {
        // The first transaction the file did not hold committed after the acknowledged LSN
        // (its commit record starts at its version; the acknowledgement of a transaction is
        // the end of that record).
        if let Some(&(id, version)) = rows.get(held as usize) {
            assert!(
                version >= acked,
                "cycle {cycle}: the slot acknowledged {acked}, past transaction {id} (commit {version}), which the replica had not made durable"
            );
        }
    }
}

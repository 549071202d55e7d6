//! Slot and restart behaviour: keepalive acknowledgements, resume, resync, schema changes,
//! and clear errors for bad set-ups.

use std::time::Duration;

use zc_replica::Replica;
use zc_testkit::TestDb;
use zc_types::{Lsn, TableName, Value};
use zc_wal::{Destination, Replicator, WalConfig};

use crate::support::*;

async fn replica_version(replica: &Replica) -> Lsn {
    replica
        .sync_state()
        .await
        .expect("state")
        .expect("synced")
        .replica_version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_database_advances_the_slot() {
    init_tracing();
    let db = TestDb::new().await;
    db.exec(MARKER_DDL).await;
    db.exec("CREATE SCHEMA private; CREATE TABLE private.noise (id serial PRIMARY KEY, v text);")
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = wal_config(&db);
    let slot = cfg.slot_name();
    let running = Running::start(cfg, &dir.path().join("r.redb"));
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;

    // 10k rows into a table no publication covers: pgoutput sends no changes for them.
    db.exec("INSERT INTO private.noise (v) SELECT md5(g::text) FROM generate_series(1, 10000) g")
        .await;
    let target = current_lsn(&db).await;
    let before = confirmed_flush(&db, &slot).await;
    assert!(
        before < target,
        "the slot should start behind the unpublished writes"
    );
    // Keepalives come every wal_sender_timeout/2 (5 s in the test cluster); only their
    // acknowledgement can move the slot past the unpublished writes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = confirmed_flush(&db, &slot).await;
        if now >= target {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot stuck at {now}, writes ended at {target}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_restart_resumes_without_resync_and_dropped_slot_resyncs() {
    init_tracing();
    let db = TestDb::new().await;
    db.exec(MARKER_DDL).await;
    db.exec(
        "CREATE TABLE items (id int PRIMARY KEY, name text, qty int8);
             INSERT INTO items SELECT g, 'item ' || g, g * 10 FROM generate_series(1, 500) g;",
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.redb");
    let cfg = wal_config(&db);

    let running = Running::start(cfg.clone(), &path);
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;
    let first_version = replica_version(&running.replica).await;
    running.stop().await;

    // Changes while zc is down arrive after a restart, without a new initial sync.
    db.exec(
        "UPDATE items SET qty = qty + 1 WHERE id <= 100; DELETE FROM items WHERE id > 450;
             INSERT INTO items VALUES (1000, 'new', 1);",
    )
    .await;
    let running = Running::start(cfg.clone(), &path);
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;
    assert_eq!(
        replica_version(&running.replica).await,
        first_version,
        "a clean restart must not resync"
    );
    assert_converged(&db, &running.replica).await;
    let items = TableName::new("public", "items");
    let snap = running.replica.snapshot().expect("snap");
    let (row, version) = snap
        .get(&items, &[Value::Int(1000)])
        .expect("get")
        .expect("row 1000");
    assert_eq!(row[1], Value::Text("new".into()));
    assert!(
        version > first_version,
        "streamed rows carry their commit version"
    );
    drop(snap);
    running.stop().await;

    // The slot disappears while zc is down: the next start resyncs from a new snapshot.
    wait_slot_inactive(&db, &cfg.slot_name()).await;
    let mut conn = db.connect().await;
    sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(cfg.slot_name())
        .execute(&mut conn)
        .await
        .expect("drop slot");
    db.exec("UPDATE items SET name = 'renamed' WHERE id = 1")
        .await;
    let running = Running::start(cfg, &path);
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;
    assert!(
        replica_version(&running.replica).await > first_version,
        "a lost slot must cause a full resync"
    );
    assert_converged(&db, &running.replica).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_are_replicated() {
    init_tracing();
    let db = TestDb::new().await;
    db.exec(MARKER_DDL).await;
    db.exec(
        "CREATE TABLE a (id int PRIMARY KEY, v text); INSERT INTO a VALUES (1, 'x'), (2, 'y');",
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let running = Running::start(wal_config(&db), &dir.path().join("r.redb"));
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;

    // A new table, created and filled after the initial sync.
    db.exec(
        "CREATE TABLE b (id text PRIMARY KEY, n int8); INSERT INTO b VALUES ('k', 1), ('l', 2);",
    )
    .await;
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;
    assert_converged(&db, &running.replica).await;

    // Columns added, dropped and retyped: only those tables are copied again.
    let version_before = replica_version(&running.replica).await;
    db.exec("ALTER TABLE a ADD COLUMN w int DEFAULT 7; UPDATE a SET v = 'z' WHERE id = 1;")
        .await;
    db.exec("INSERT INTO a VALUES (3, 'later', 8)").await;
    db.exec("ALTER TABLE b DROP COLUMN n; INSERT INTO b VALUES ('m');")
        .await;
    db.exec("ALTER TABLE a ALTER COLUMN w TYPE int8; UPDATE a SET w = w + 1;")
        .await;
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;
    assert_converged(&db, &running.replica).await;
    assert_eq!(
        replica_version(&running.replica).await,
        version_before,
        "a column change must copy only the changed table, not resync the replica"
    );
    // Table `a` as the replica holds it now.
    let table_a = || {
        running
            .replica
            .snapshot()
            .expect("snap")
            .table(&TableName::new("public", "a"))
            .expect("a")
    };
    let a = table_a();
    assert_eq!(a.columns.len(), 3);
    assert!(a.copied_at > version_before);

    // A column added with a default and no row change after it: the shard's event trigger
    // announces it, so the rows have the column's value without waiting for the table's
    // next change (pgoutput alone says nothing until then).
    db.exec("ALTER TABLE a ADD COLUMN u text DEFAULT 'dflt'")
        .await;
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;
    let a = table_a();
    assert_eq!(
        a.columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["id", "v", "w", "u"]
    );
    assert_converged(&db, &running.replica).await;
    // An ALTER TABLE that leaves the replicated columns as they are copies nothing (a
    // generated column is not replicated: pgoutput leaves it out).
    let copied_at = a.copied_at;
    db.exec("ALTER TABLE a ALTER COLUMN u SET DEFAULT 'other'")
        .await;
    db.exec("ALTER TABLE a ADD COLUMN g int GENERATED ALWAYS AS (id * 2) STORED")
        .await;
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;
    let a = table_a();
    assert_eq!(a.copied_at, copied_at);

    // A renamed table: its rows move to the new name (the stream alone could not know them).
    db.exec("ALTER TABLE a RENAME TO a2; UPDATE a2 SET v = 'renamed' WHERE id = 2;")
        .await;
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;
    assert_converged(&db, &running.replica).await;

    // A table dropped for good.
    db.exec("CREATE TABLE c (id int PRIMARY KEY); INSERT INTO c VALUES (1);")
        .await;
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;
    db.exec("DROP TABLE c").await;
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;
    assert_converged(&db, &running.replica).await;

    // A table dropped and created again under the same name.
    db.exec("DROP TABLE b; CREATE TABLE b (id int PRIMARY KEY, label text); INSERT INTO b VALUES (5, 'five');").await;
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;
    assert_converged(&db, &running.replica).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_setups_get_clear_errors() {
    init_tracing();
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = Replica::open(dir.path().join("r.redb")).expect("open");

    // A malformed connection string.
    let err = Replicator::new(WalConfig::new("mysql://nope"), replica.clone())
        .preflight()
        .await
        .expect_err("bad url");
    assert!(
        err.to_string()
            .contains("invalid upstream connection string"),
        "{err}"
    );

    // Nothing listening.
    let err = Replicator::new(
        WalConfig::new("postgres://postgres@127.0.0.1:1/x"),
        replica.clone(),
    )
    .preflight()
    .await
    .expect_err("no server");
    assert!(err.to_string().contains("could not connect"), "{err}");
    assert!(err.is_transient());

    // A role without the REPLICATION attribute that cannot grant it to itself.
    db.exec("CREATE ROLE weak LOGIN NOSUPERUSER NOREPLICATION")
        .await;
    let url = db.url().replacen("postgres@", "weak@", 1);
    let err = Replicator::new(WalConfig::new(url), replica.clone())
        .preflight()
        .await
        .expect_err("no privilege");
    assert!(
        err.to_string()
            .contains("ALTER ROLE \"weak\" WITH REPLICATION"),
        "{err}"
    );
    assert!(!err.is_transient());

    // Publications that do not exist.
    db.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    let cfg = wal_config(&db).with_publications(vec!["nope".into()]);
    let err = Replicator::new(cfg, replica.clone())
        .run(tokio_util::sync::CancellationToken::new())
        .await
        .expect_err("missing publication");
    assert!(err.to_string().contains("do not exist upstream"), "{err}");
}

#[test]
fn wal_level_must_be_logical() {
    let pg = zc_pg_embed_start_with_wal_level_replica();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = Replica::open(dir.path().join("r.redb")).expect("open");
    let err = rt
        .block_on(Replicator::new(WalConfig::new(pg.url("postgres")), replica).preflight())
        .expect_err("wal_level replica");
    assert!(err.to_string().contains("wal_level = logical"), "{err}");
}

fn zc_pg_embed_start_with_wal_level_replica() -> zc_pg_embed::EmbeddedPostgres {
    let mut opts = zc_pg_embed::PgOptions::default();
    opts.extra_settings
        .push(("wal_level".into(), "replica".into()));
    zc_pg_embed::EmbeddedPostgres::start(opts).expect("start postgres")
}

/// Tables larger than their share of the copy are copied in parts (ranges of heap pages) by
/// several workers at once: every row arrives once, with its index entries, whether the
/// table's heap is in key order (a cursor per part's range) or not (random keys, and rows
/// moved to later pages by updates).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_tables_are_copied_whole_in_parts() {
    init_tracing();
    let db = TestDb::new().await;
    db.exec(MARKER_DDL).await;
    db.exec(
        "CREATE TABLE in_order (id text PRIMARY KEY, grp int NOT NULL, body text);
         CREATE INDEX in_order_grp ON in_order (grp DESC, body);
         INSERT INTO in_order
           SELECT 'k' || lpad(g::text, 6, '0'), g % 37, repeat(md5(g::text), 3)
           FROM generate_series(1, 20000) g;
         CREATE TABLE at_random (id uuid PRIMARY KEY, n int NOT NULL, note text);
         CREATE INDEX at_random_n ON at_random (n);
         INSERT INTO at_random
           SELECT md5('r' || g)::uuid, g % 101, repeat(md5(g::text), 2)
           FROM generate_series(1, 20000) g;
         UPDATE in_order SET body = 'moved' WHERE grp = 3;
         UPDATE at_random SET n = n + 1000 WHERE n < 10;",
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = wal_config(&db);
    // Every table larger than a third of the whole is split.
    cfg.copy_part_bytes = 1;
    let running = Running::start(cfg, &dir.path().join("r.redb"));
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;
    assert_converged(&db, &running.replica).await;
    // The index entries are the rows' (not only as many): in index order, the first group
    // of the descending index is the highest.
    let snap = running.replica.snapshot().expect("snapshot");
    let first = snap
        .scan_index(&TableName::new("public", "in_order"), "in_order_grp", &[])
        .expect("index scan")
        .next()
        .expect("an entry")
        .expect("a row");
    assert_eq!(first.0[1], Value::Int(36), "{first:?}");
    drop(snap);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_tables_use_a_unique_index_or_are_skipped() {
    init_tracing();
    let db = TestDb::new().await;
    db.exec(MARKER_DDL).await;
    db.exec(
        "CREATE TABLE by_unique (code text NOT NULL, n int);
         CREATE UNIQUE INDEX by_unique_code ON by_unique (code);
         INSERT INTO by_unique VALUES ('a', 1), ('b', 2);
         CREATE TABLE no_key (v text);
         INSERT INTO no_key VALUES ('x');",
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let running = Running::start(wal_config(&db), &dir.path().join("r.redb"));
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;
    // Updates and deletes of the unique-keyed table carry its key (zc set REPLICA IDENTITY
    // USING INDEX); inserts into the key-less table are ignored without stopping replication
    // (PostgreSQL itself refuses updates of a published table without a replica identity).
    db.exec(
        "UPDATE by_unique SET n = 10 WHERE code = 'a'; DELETE FROM by_unique WHERE code = 'b';
         UPDATE by_unique SET code = 'c' WHERE code = 'a';
         INSERT INTO no_key VALUES ('y');",
    )
    .await;
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;
    let snap = running.replica.snapshot().expect("snapshot");
    let names: Vec<String> = snap
        .tables()
        .expect("tables")
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(names.contains(&"public.by_unique".to_string()), "{names:?}");
    assert!(!names.contains(&"public.no_key".to_string()), "{names:?}");
    let spec = snap
        .table(&TableName::new("public", "by_unique"))
        .expect("spec");
    let rows = crate::support::replica_rows(&running.replica, &spec);
    let expected = crate::support::pg_rows(&db, &spec).await;
    assert_eq!(rows, expected);
    assert_eq!(rows.len(), 1);
    drop(snap);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_added_to_the_publication_is_copied() {
    init_tracing();
    let db = TestDb::new().await;
    db.exec(MARKER_DDL).await;
    db.exec(
        "CREATE TABLE x (id int PRIMARY KEY, v text); INSERT INTO x VALUES (1, 'x1');
         CREATE TABLE y (id int PRIMARY KEY, v text);
         INSERT INTO y SELECT g, 'y' || g FROM generate_series(1, 50) g;
         CREATE PUBLICATION app_pub FOR TABLE x, zc_marker;",
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = wal_config(&db).with_publications(vec!["app_pub".into()]);
    let running = Running::start(cfg, &dir.path().join("r.redb"));
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;
    let y = TableName::new("public", "y");
    assert!(
        running.replica.snapshot().expect("snap").table(&y).is_err(),
        "y is not published yet"
    );

    // y joins the publication with 50 existing rows; one of them changes afterwards.
    db.exec("ALTER PUBLICATION app_pub ADD TABLE y; UPDATE y SET v = 'changed' WHERE id = 7;")
        .await;
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;
    let spec = running
        .replica
        .snapshot()
        .expect("snap")
        .table(&y)
        .expect("y replicated");
    let expected = crate::support::pg_rows(&db, &spec).await;
    assert_eq!(expected.len(), 50);
    assert_eq!(
        crate::support::replica_rows(&running.replica, &spec),
        expected
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_publications_cause_a_full_resync() {
    init_tracing();
    let db = TestDb::new().await;
    db.exec(MARKER_DDL).await;
    db.exec(
        "CREATE TABLE x (id int PRIMARY KEY); INSERT INTO x VALUES (1);
         CREATE TABLE y (id int PRIMARY KEY); INSERT INTO y VALUES (2);
         CREATE PUBLICATION only_x FOR TABLE x, zc_marker;",
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.redb");
    let running = Running::start(wal_config(&db), &path);
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;
    let first = replica_version(&running.replica).await;
    running.stop().await;

    let running = Running::start(
        wal_config(&db).with_publications(vec!["only_x".into()]),
        &path,
    );
    let n = bump_marker(&db).await;
    wait_marker(&running, n).await;
    assert!(
        replica_version(&running.replica).await > first,
        "new publications, new copy"
    );
    let names: Vec<String> = running
        .replica
        .snapshot()
        .expect("snap")
        .tables()
        .expect("tables")
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(
        names.contains(&"public.x".to_string()) && !names.contains(&"public.y".to_string()),
        "{names:?}"
    );
    running.stop().await;
}

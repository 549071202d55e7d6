//! The CVR store against a real PostgreSQL: records survive a reload, catch-up from a cookie
//! names only what changed after it, and a second owner makes the first one's flush fail.

use zc_cvr::{Cvr, CvrStore, CvrVersion, Error, QueryRecord, RowId};
use zc_testkit::TestDb;
use zc_types::Lsn;

fn row(key: &str) -> RowId {
    RowId {
        table: "issue".into(),
        key: format!("{{\"id\":\"{key}\"}}").into(),
    }
}

async fn connect(db: &TestDb, max_connections: u32) -> CvrStore {
    CvrStore::connect(db.url(), "zero", 0, max_connections)
        .await
        .expect("store")
}

/// Loads groups `g0`..`g{n-1}`.
async fn load_groups(store: &CvrStore, n: usize) -> Vec<Cvr> {
    let mut cvrs = Vec::with_capacity(n);
    for i in 0..n {
        cvrs.push(store.load(&format!("g{i}")).await.expect("load"));
    }
    cvrs
}

/// Changes every record with `edit` (given its index) and flushes them all at once, each
/// from a task of its own; the records and results come back in index order.
async fn flush_at_once(
    store: &CvrStore,
    cvrs: Vec<Cvr>,
    edit: impl Fn(usize, &mut Cvr) + Clone + Send + 'static,
) -> Vec<(usize, Cvr, Result<(), Error>)> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut cvr) in cvrs.into_iter().enumerate() {
        let store = store.clone();
        let edit = edit.clone();
        tasks.spawn(async move {
            edit(i, &mut cvr);
            let result = store.flush(&mut cvr).await;
            (i, cvr, result)
        });
    }
    let mut done = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        done.push(joined.expect("flush task"));
    }
    done.sort_by_key(|(i, ..)| *i);
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_and_catch_up_from_a_cookie() {
    let db = TestDb::new().await;
    let store = connect(&db, 2).await;
    let mut cvr = store.load("g1").await.expect("load");
    assert_eq!(cvr.version, CvrVersion::default());

    let v1 = cvr.version.next_config();
    cvr.version = v1;
    cvr.add_client("c1");
    cvr.desire("c1", "q1", Some(300_000.0), v1);
    cvr.put_query(
        "q1",
        QueryRecord {
            name: Some("openIssues".into()),
            args: Some(serde_json::json!([])),
            ast: None,
            got: false,
            deleted: false,
            patch: v1,
        },
    );
    store.flush(&mut cvr).await.expect("flush");

    let v2 = v1.advance_to(Lsn(100));
    cvr.version = v2;
    cvr.set_got("q1", true, v2);
    cvr.adjust_row(&row("a"), "q1", 1, v2);
    cvr.adjust_row(&row("b"), "q1", 1, v2);
    store.flush(&mut cvr).await.expect("flush");

    let v3 = v2.advance_to(Lsn(200));
    cvr.version = v3;
    assert!(!cvr.adjust_row(&row("b"), "q1", -1, v3));
    cvr.touch_row(&row("a"), v3);
    store.flush(&mut cvr).await.expect("flush");

    let loaded = store.load("g1").await.expect("reload");
    assert_eq!(loaded.version, v3);
    assert_eq!(loaded.queries, cvr.queries);
    assert_eq!(loaded.desires, cvr.desires);
    assert_eq!(loaded.rows, cvr.rows);
    assert!(loaded.clients.contains("c1"));

    // b's tombstone is stored, and no longer held in memory (neither before nor after the
    // reload): the store supplies it to clients at older cookies.
    assert!(!cvr.rows.contains_key(&row("b")));
    assert!(cvr.needs_stored_tombstones(Some(v2)));
    assert!(!cvr.needs_stored_tombstones(Some(v3)));
    for record in [&cvr, &loaded] {
        // A client at v2 learns only that a changed and b left.
        let since_v2 = store
            .changes_since(record, Some(v2))
            .await
            .expect("changes");
        assert!(since_v2.desires.is_empty() && since_v2.got.is_empty());
        assert_eq!(since_v2.rows, vec![(row("a"), true), (row("b"), false)]);
        // A client at v3 needs nothing.
        let since_v3 = store
            .changes_since(record, Some(v3))
            .await
            .expect("changes");
        assert!(since_v3.rows.is_empty());
    }
    // A row that comes back is live again, for clients at any cookie.
    // (The reload took the group over, so the loaded record goes on.)
    let mut cvr = loaded.clone();
    let v4 = v3.advance_to(Lsn(300));
    cvr.version = v4;
    assert!(cvr.adjust_row(&row("b"), "q1", 1, v4));
    store.flush(&mut cvr).await.expect("flush");
    let since_v2 = store.changes_since(&cvr, Some(v2)).await.expect("changes");
    assert_eq!(since_v2.rows, vec![(row("a"), true), (row("b"), true)]);
    // A new client gets the live state only.
    let fresh = loaded.changes_since(None);
    assert_eq!(fresh.rows, vec![(row("a"), true)]);
    assert_eq!(fresh.got, vec![("q1".to_string(), true)]);
    assert_eq!(fresh.desires.len(), 1);

    // Between two writes, c comes and goes (no client can have it) while a, stored live,
    // goes: only a's tombstone is written, and neither stays in memory.
    let v5 = v4.advance_to(Lsn(400));
    cvr.version = v5;
    assert!(cvr.adjust_row(&row("c"), "q1", 1, v5));
    let v6 = v5.advance_to(Lsn(500));
    cvr.version = v6;
    assert!(!cvr.adjust_row(&row("c"), "q1", -1, v6));
    assert!(!cvr.adjust_row(&row("a"), "q1", -1, v6));
    store.flush(&mut cvr).await.expect("flush");
    let stored: Vec<(String, String)> = sqlx::query_as(
        r#"SELECT row_key, refs::text FROM "zero_0/zc_cvr".rows
           WHERE client_group_id = 'g1' ORDER BY row_key"#,
    )
    .fetch_all(&db.pool().await)
    .await
    .expect("stored rows");
    assert_eq!(
        stored,
        vec![
            (row("a").key.to_string(), "{}".to_string()),
            (row("b").key.to_string(), r#"{"q1": 1}"#.to_string()),
        ]
    );
    assert!(!cvr.rows.contains_key(&row("a")) && !cvr.rows.contains_key(&row("c")));
    let since_v4 = store.changes_since(&cvr, Some(v4)).await.expect("changes");
    assert_eq!(since_v4.rows, vec![(row("a"), false)]);
    let reloaded = store.load("g1").await.expect("reload");
    assert_eq!(reloaded.rows, cvr.rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_takes_a_group_over() {
    let db = TestDb::new().await;
    let first = connect(&db, 2).await;
    let second = connect(&db, 2).await;
    let mut mine = first.load("g").await.expect("load");
    let _theirs = second.load("g").await.expect("load");
    mine.version = mine.version.next_config();
    match first.flush(&mut mine).await {
        Err(Error::OwnershipLost(g)) => assert_eq!(g, "g"),
        other => panic!("expected ownership lost, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_flush_makes_the_next_one_fail_until_reloaded() {
    let db = TestDb::new().await;
    let store = connect(&db, 2).await;
    let mut cvr = store.load("g").await.expect("load");
    let v1 = cvr.version.next_config();
    cvr.version = v1;
    cvr.add_client("c1");
    store.flush(&mut cvr).await.expect("flush");
    let v2 = v1.advance_to(Lsn(100));
    cvr.version = v2;
    cvr.adjust_row(&row("a"), "q1", 1, v2);
    store.flush(&mut cvr).await.expect("flush");

    // What a crash of PostgreSQL losing the last (asynchronously committed) flush leaves:
    // the group's row as an earlier write left it, not the one this instance wrote last.
    db.exec(&format!(
        "UPDATE \"zero_0/zc_cvr\".instances SET version = '{}' WHERE client_group_id = 'g';
         DELETE FROM \"zero_0/zc_cvr\".rows WHERE client_group_id = 'g';",
        v1.cookie()
    ))
    .await;
    let v3 = v2.advance_to(Lsn(200));
    cvr.version = v3;
    cvr.touch_row(&row("a"), v3);
    match store.flush(&mut cvr).await {
        Err(Error::Diverged(g)) => assert_eq!(g, "g"),
        other => panic!("expected a diverged record, got {other:?}"),
    }

    // Reloaded, the record is what the database has, and it can be written again.
    let mut cvr = store.load("g").await.expect("reload");
    assert_eq!(cvr.version, v1);
    assert!(cvr.rows.is_empty());
    cvr.version = v3;
    store.flush(&mut cvr).await.expect("flush after reload");
    assert_eq!(store.load("g").await.expect("reload").version, v3);
}

/// Flushes that wait at the same time are written together; each group's own ownership
/// check still decides for it alone, and what each wrote is its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushes_of_many_groups_at_once_are_each_written_and_checked() {
    const GROUPS: usize = 40;
    let db = TestDb::new().await;
    let store = connect(&db, 4).await;
    let other = connect(&db, 1).await;
    let mut cvrs = load_groups(&store, GROUPS).await;
    // Another instance takes one group over.
    let _taken = other.load("g7").await.expect("load");

    for round in 1..=2u64 {
        let done = flush_at_once(&store, cvrs, move |i, cvr| {
            let v = cvr.version.advance_to(Lsn(round * 100));
            cvr.version = v;
            cvr.add_client(&format!("c{i}"));
            cvr.adjust_row(&row(&format!("{i}-{round}")), "q1", 1, v);
        })
        .await;
        cvrs = Vec::with_capacity(done.len());
        for (i, cvr, result) in done {
            match (i, result) {
                (7, Err(Error::OwnershipLost(g))) => assert_eq!(g, "g7"),
                (7, other) => panic!("round {round}: expected g7's ownership lost, got {other:?}"),
                (_, Ok(())) => {}
                (_, Err(e)) => panic!("round {round}: g{i}'s flush failed: {e}"),
            }
            cvrs.push(cvr);
        }
    }

    for i in (0..GROUPS).filter(|i| *i != 7) {
        let loaded = store.load(&format!("g{i}")).await.expect("reload");
        assert_eq!(loaded.version, cvrs[i].version, "g{i}'s version");
        assert_eq!(
            loaded.clients.iter().cloned().collect::<Vec<_>>(),
            vec![format!("c{i}")],
            "g{i}'s clients"
        );
        let mut keys: Vec<String> = loaded.rows.keys().map(|id| id.key.to_string()).collect();
        keys.sort();
        assert_eq!(
            keys,
            vec![
                format!("{{\"id\":\"{i}-1\"}}"),
                format!("{{\"id\":\"{i}-2\"}}")
            ],
            "g{i}'s rows"
        );
    }
    // The group taken over has none of the writes.
    let taken = other.load("g7").await.expect("reload");
    assert_eq!(taken.version, CvrVersion::default());
    assert!(taken.rows.is_empty() && taken.clients.is_empty());
}

/// A flush PostgreSQL refuses (jsonb has no NUL character, which a query's arguments may
/// carry) fails alone: the other groups written with it in one batch are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_flush_fails_alone_in_a_batch() {
    const GROUPS: usize = 30;
    const BAD: usize = 25;
    let db = TestDb::new().await;
    let store = connect(&db, 4).await;
    let cvrs = load_groups(&store, GROUPS).await;
    // All flush at once (the refused one among the last), so that it shares a batch.
    let done = flush_at_once(&store, cvrs, |i, cvr| {
        let v = cvr.version.next_config();
        cvr.version = v;
        cvr.add_client("c");
        let arg = if i == BAD { "a\u{0}b" } else { "ab" };
        cvr.put_query(
            "q1",
            QueryRecord {
                name: Some("issues".into()),
                args: Some(serde_json::json!([arg])),
                ast: None,
                got: false,
                deleted: false,
                patch: v,
            },
        );
    })
    .await;
    let mut failed = Vec::new();
    for (i, _, result) in done {
        match result {
            Ok(()) => assert_ne!(i, BAD, "the NUL argument was written"),
            Err(Error::Database(_)) => failed.push(i),
            Err(e) => panic!("g{i}: unexpected error {e}"),
        }
    }
    assert_eq!(failed, vec![BAD]);
    for i in (0..GROUPS).filter(|i| *i != BAD) {
        let loaded = store.load(&format!("g{i}")).await.expect("reload");
        assert!(loaded.queries.contains_key("q1"), "g{i}'s query");
    }
    let bad = store.load(&format!("g{BAD}")).await.expect("reload");
    assert!(bad.queries.is_empty());
}

/// Flushes too large to share one batch (a hydration puts hundreds of rows) all complete
/// when they come at once and nothing comes after them: a writer that set one aside for
/// its next batch writes it without waiting for the queue, which the other writer holds
/// while it waits for a flush that may never come. The hang depends on timing, hence the
/// rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_flushes_at_once_are_all_written() {
    const GROUPS: usize = 4;
    const ROWS: usize = 600;
    let db = TestDb::new().await;
    let store = connect(&db, 4).await;
    let mut cvrs = load_groups(&store, GROUPS).await;
    for round in 0..20 {
        let done = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            flush_at_once(&store, cvrs, move |i, cvr| {
                let v = cvr.version.next_config();
                cvr.version = v;
                cvr.add_client("c");
                for r in 0..ROWS {
                    cvr.adjust_row(&row(&format!("{i}-{round}-{r}")), "q1", 1, v);
                }
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("round {round}: a flush never completed"));
        cvrs = Vec::with_capacity(GROUPS);
        for (i, cvr, result) in done {
            result.unwrap_or_else(|e| panic!("round {round}: g{i}'s flush failed: {e}"));
            cvrs.push(cvr);
        }
    }
    for (i, cvr) in cvrs.iter().enumerate() {
        let loaded = store.load(&format!("g{i}")).await.expect("reload");
        assert_eq!(loaded.version, cvr.version, "g{i}'s version");
        assert_eq!(loaded.rows.len(), 20 * ROWS, "g{i}'s rows");
    }
}

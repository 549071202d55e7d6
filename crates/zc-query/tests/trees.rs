//! Differential test of whole query trees against PostgreSQL: four related tables (users,
//! issues with a self-reference, comments, a junction with a composite key), random data,
//! random ASTs with nested `related` subqueries, EXISTS / NOT EXISTS (also inside `or` and
//! nested), orderBy, limit and start, and random change sequences. After hydration and
//! after every change, the rows the incrementally maintained tree holds equal the rows
//! PostgreSQL returns for the same tree (one query per level and parent, the subquery rows
//! that conditions sync included), compared row by row.
//!
//! Budget: `ZC_PROPTEST_BUDGET_SECS` (default 6). Failing cases are saved to
//! `tests/regressions/trees.seeds` and replayed first on every run.

// The case printout is what a failing run shows (libtest captures it otherwise).
#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use zc_query::pipeline::RowChange;
use zc_query::tree::TreeQuery;
use zc_query::view::{FlatView, MemorySources};
use zc_query::{MemorySource, ScanRequest, Source};
use zc_testkit::TestDb;
use zc_testkit::regressions::Regressions;
use zc_testkit::trees::{
    DDL, TABLES, delete_sql, exec, key_of, level, oracle, random_row, spec, upsert_sql,
};

fn table(db: &mut MemorySources, t: usize) -> &mut MemorySource {
    db.table_mut(TABLES[t].0).expect("table")
}

async fn run_case(conn: &mut sqlx::PgConnection, seed: u64) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    exec(
        conn,
        "TRUNCATE \"user\", issue, comment, issue_label".into(),
    )
    .await;
    let mut db = MemorySources::new();
    for i in 0..TABLES.len() {
        db.add(MemorySource::new(spec(i)));
    }
    for _ in 0..rng.random_range(0..25) {
        let t = rng.random_range(0..TABLES.len());
        let row = random_row(&mut rng, t);
        exec(conn, upsert_sql(t, &row)).await;
        table(&mut db, t).upsert(row).expect("upsert");
    }
    let root = [0, 1, 1, 1, 2, 3][rng.random_range(0..6)];
    let q = level(&mut rng, root, 2);
    let ast = zc_query::ast::parse(&q).unwrap_or_else(|e| panic!("{e}: {q}"));
    eprintln!("case {seed}: {q}");
    let mut tree = TreeQuery::build(&ast, &db).unwrap_or_else(|e| panic!("{e}: {q}"));
    let mut view = FlatView::new();
    let hydrated = tree.hydrate(&db).expect("hydrate");
    eprintln!("  hydrated {hydrated:?}");
    view.apply(&hydrated, &db).expect("consistent output");
    assert_eq!(
        view.rows(),
        oracle(conn, &ast).await,
        "hydration of {q}\nseed {seed}"
    );
    let mut checks = 0;
    for _ in 0..rng.random_range(1..12) {
        let t = rng.random_range(0..TABLES.len());
        let new = random_row(&mut rng, t);
        let existing = table(&mut db, t)
            .scan(&ScanRequest::default())
            .expect("scan")
            .map(|r| r.expect("row"))
            .find(|r| key_of(t, r) == key_of(t, &new));
        let change = match (rng.random_range(0..3), existing) {
            (0, Some(old)) => {
                exec(conn, delete_sql(t, &old)).await;
                table(&mut db, t).remove(&old);
                RowChange::Remove(old)
            }
            (_, existing) => {
                exec(conn, upsert_sql(t, &new)).await;
                table(&mut db, t).upsert(new.clone()).expect("upsert");
                match existing {
                    Some(old) => RowChange::Edit { old, new },
                    None => RowChange::Add(new),
                }
            }
        };
        eprintln!("  push {} {change:?}", TABLES[t].0);
        let outs = tree
            .push(TABLES[t].0, &change, &db)
            .unwrap_or_else(|e| panic!("{e}: {q}"));
        eprintln!("  -> {outs:?}");
        view.apply(&outs, &db).expect("consistent output");
        assert_eq!(
            view.rows(),
            oracle(conn, &ast).await,
            "{q}\nafter {} {change:?}\nseed {seed}",
            TABLES[t].0
        );
        checks += 1;
    }
    checks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trees_match_postgres() {
    let budget = Duration::from_secs(
        std::env::var("ZC_PROPTEST_BUDGET_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(6),
    );
    let db = TestDb::new().await;
    db.exec(DDL).await;
    let mut conn = db.connect().await;
    let regressions = Regressions::new(env!("CARGO_MANIFEST_DIR"), "trees");
    let saved = regressions.saved();
    let mut checks = 0;
    for &seed in &saved {
        let _guard = regressions.guard(seed);
        checks += run_case(&mut conn, seed).await;
    }
    let fixed: Option<u64> = std::env::var("ZC_PROPTEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    let started = Instant::now();
    let mut cases = 0;
    while started.elapsed() < budget || cases < 30 {
        let seed = fixed.unwrap_or_else(rand::random);
        let _guard = regressions.guard(seed);
        checks += run_case(&mut conn, seed).await;
        cases += 1;
        if fixed.is_some() {
            break;
        }
    }
    eprintln!(
        "{} saved + {cases} random trees, {checks} incremental checks against PostgreSQL",
        saved.len()
    );
}

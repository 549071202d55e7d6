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

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use zc_query::pipeline::RowChange;
use zc_query::tree::{Sources, TreeQuery};
use zc_query::{MemorySource, ScanRequest, Source};
use zc_testkit::TestDb;
use zc_testkit::regressions::Regressions;
use zc_testkit::trees::{
    DDL, TABLES, delete_sql, exec, key_of, level, oracle, random_row, spec, table_index, upsert_sql,
};
use zc_types::Row;

struct Db {
    tables: Vec<MemorySource>,
}

impl Sources for Db {
    fn source(&self, table: &str) -> Option<&dyn Source> {
        TABLES
            .iter()
            .position(|(n, _, _)| *n == table)
            .map(|i| &self.tables[i] as &dyn Source)
    }
}

type View = BTreeMap<(String, String), (usize, Row)>;

fn apply(view: &mut View, outs: &[(String, RowChange)]) {
    for (table, c) in outs {
        let t = table_index(table);
        match c {
            RowChange::Add(r) => {
                let e = view
                    .entry((table.clone(), key_of(t, r)))
                    .or_insert((0, r.clone()));
                e.0 += 1;
                e.1 = r.clone();
            }
            RowChange::Remove(r) => {
                let k = (table.clone(), key_of(t, r));
                let e = view
                    .get_mut(&k)
                    .unwrap_or_else(|| panic!("remove of absent {k:?}"));
                e.0 -= 1;
                if e.0 == 0 {
                    view.remove(&k);
                }
            }
            RowChange::Edit { old, new } => {
                assert_eq!(key_of(t, old), key_of(t, new), "edit changes the key");
                let k = (table.clone(), key_of(t, new));
                view.get_mut(&k)
                    .unwrap_or_else(|| panic!("edit of absent {k:?}"))
                    .1 = new.clone();
            }
        }
    }
}

async fn run_case(conn: &mut sqlx::PgConnection, seed: u64) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    exec(
        conn,
        "TRUNCATE \"user\", issue, comment, issue_label".into(),
    )
    .await;
    let mut db = Db {
        tables: (0..TABLES.len())
            .map(|i| MemorySource::new(spec(i)))
            .collect(),
    };
    for _ in 0..rng.random_range(0..25) {
        let t = rng.random_range(0..TABLES.len());
        let row = random_row(&mut rng, t);
        exec(conn, upsert_sql(t, &row)).await;
        db.tables[t].upsert(row).expect("upsert");
    }
    let root = [0, 1, 1, 1, 2, 3][rng.random_range(0..6)];
    let q = level(&mut rng, root, 2);
    let ast = zc_query::ast::parse(&q).unwrap_or_else(|e| panic!("{e}: {q}"));
    eprintln!("case {seed}: {q}");
    let mut tree = TreeQuery::build(&ast, &db).unwrap_or_else(|e| panic!("{e}: {q}"));
    let mut view = View::new();
    let hydrated = tree.hydrate(&db).expect("hydrate");
    eprintln!("  hydrated {hydrated:?}");
    apply(&mut view, &hydrated);
    let strip = |v: &View| -> BTreeMap<(String, String), Row> {
        v.iter().map(|(k, (_, r))| (k.clone(), r.clone())).collect()
    };
    assert_eq!(
        strip(&view),
        oracle(conn, &ast).await,
        "hydration of {q}\nseed {seed}"
    );
    let mut checks = 0;
    for _ in 0..rng.random_range(1..12) {
        let t = rng.random_range(0..TABLES.len());
        let new = random_row(&mut rng, t);
        let existing = db.tables[t]
            .scan(&ScanRequest::default())
            .expect("scan")
            .map(|r| r.expect("row"))
            .find(|r| key_of(t, r) == key_of(t, &new));
        let change = match (rng.random_range(0..3), existing) {
            (0, Some(old)) => {
                exec(conn, delete_sql(t, &old)).await;
                db.tables[t].remove(&old);
                RowChange::Remove(old)
            }
            (_, existing) => {
                exec(conn, upsert_sql(t, &new)).await;
                db.tables[t].upsert(new.clone()).expect("upsert");
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
        apply(&mut view, &outs);
        assert_eq!(
            strip(&view),
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

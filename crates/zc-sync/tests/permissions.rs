//! Property test of read permissions: random rows, random select rules per table (none,
//! allow-all, random conditions with EXISTS, a rule on `authData.sub`), random queries;
//! the rows a client receives (the query restricted by the rules, maintained by the engine
//! through random changes) equal what PostgreSQL returns for the query with the rules'
//! conditions applied at every level.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use zc_query::pipeline::RowChange;
use zc_query::tree::TreeQuery;
use zc_query::view::{FlatView, MemorySources};
use zc_query::{MemorySource, ScanRequest, Source};
use zc_sync::permissions::Permissions;
use zc_testkit::TestDb;
use zc_testkit::regressions::Regressions;
use zc_testkit::trees::{
    DDL, TABLES, condition, delete_sql, exec, key_of, level, oracle, random_row, spec, upsert_sql,
};

fn table(db: &mut MemorySources, t: usize) -> &mut MemorySource {
    db.table_mut(TABLES[t].0).expect("table")
}

fn random_permissions(rng: &mut StdRng) -> serde_json::Value {
    let mut tables = serde_json::Map::new();
    for (t, (name, _, _)) in TABLES.iter().enumerate() {
        let rule = match rng.random_range(0..5) {
            0 => continue, // no rules: nothing readable
            1 => json!({"type": "and", "conditions": []}),
            2 if *name == "issue" => json!({"type": "simple", "op": "=",
                "left": {"type": "column", "name": "creator"},
                "right": {"type": "static", "anchor": "authData", "field": "sub"}}),
            _ => serde_json::from_str(&condition(rng, t, 1)).expect("condition"),
        };
        let mut rules = vec![json!(["allow", rule])];
        if rng.random_range(0..3) == 0 {
            let more: serde_json::Value =
                serde_json::from_str(&condition(rng, t, 0)).expect("condition");
            rules.push(json!(["allow", more]));
        }
        tables.insert((*name).to_owned(), json!({"row": {"select": rules}}));
    }
    json!({ "tables": tables })
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
    let perms_json = random_permissions(&mut rng);
    let perms = Permissions::parse(&perms_json).expect("permissions");
    let auth = json!({"sub": rng.random_range(0..7)});
    let root = rng.random_range(0..TABLES.len());
    let q = level(&mut rng, root, 2);
    let ast = zc_query::ast::parse(&q).expect("ast");
    let restricted = perms.transform_query(&ast, &auth);
    let mut tree = TreeQuery::build(&restricted, &db).expect("build");
    let mut view = FlatView::new();
    view.apply(&tree.hydrate(&db).expect("hydrate"), &db)
        .expect("consistent output");
    let context = format!("query {q}\npermissions {perms_json}\nauth {auth}\nseed {seed}");
    assert_eq!(view.rows(), oracle(conn, &restricted).await, "{context}");
    let mut checks = 0;
    for _ in 0..rng.random_range(1..8) {
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
        let outs = tree.push(TABLES[t].0, &change, &db).expect("push");
        view.apply(&outs, &db).expect("consistent output");
        assert_eq!(
            view.rows(),
            oracle(conn, &restricted).await,
            "{context}\nafter {change:?}"
        );
        checks += 1;
    }
    // With no rules anywhere, nothing is readable.
    let none = Permissions::default().transform_query(&ast, &auth);
    let mut empty = TreeQuery::build(&none, &db).expect("build");
    assert!(empty.hydrate(&db).expect("hydrate").is_empty(), "{context}");
    checks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_receive_what_postgres_returns_under_the_rules() {
    let budget = Duration::from_secs(
        std::env::var("ZC_PROPTEST_BUDGET_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(4),
    );
    let db = TestDb::new().await;
    db.exec(DDL).await;
    let mut conn = db.connect().await;
    let regressions = Regressions::new(env!("CARGO_MANIFEST_DIR"), "permissions");
    for seed in regressions.saved() {
        let _guard = regressions.guard(seed);
        run_case(&mut conn, seed).await;
    }
    let started = Instant::now();
    let mut cases = 0;
    while started.elapsed() < budget || cases < 20 {
        let seed = rand::random();
        let _guard = regressions.guard(seed);
        run_case(&mut conn, seed).await;
        cases += 1;
    }
}

//! Property test of read permissions: random rows, random select rules per table (none,
//! allow-all, random conditions with EXISTS, a rule on `authData.sub`), random queries;
//! the rows a client receives (the query restricted by the rules, maintained by the engine
//! through random changes) equal what PostgreSQL returns for the query with the rules'
//! conditions applied at every level.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use zc_query::pipeline::RowChange;
use zc_query::tree::{Sources, TreeQuery};
use zc_query::{MemorySource, ScanRequest, Source};
use zc_sync::permissions::Permissions;
use zc_testkit::TestDb;
use zc_testkit::regressions::Regressions;
use zc_testkit::trees::{
    DDL, TABLES, condition, delete_sql, exec, key_of, level, oracle, random_row, spec, table_index,
    upsert_sql,
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
                let e = view.get_mut(&k).expect("remove of a present row");
                e.0 -= 1;
                if e.0 == 0 {
                    view.remove(&k);
                }
            }
            RowChange::Edit { new, .. } => {
                view.get_mut(&(table.clone(), key_of(t, new)))
                    .expect("edit of a present row")
                    .1 = new.clone();
            }
        }
    }
}

fn rows_only(v: &View) -> BTreeMap<(String, String), Row> {
    v.iter().map(|(k, (_, r))| (k.clone(), r.clone())).collect()
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
    let perms_json = random_permissions(&mut rng);
    let perms = Permissions::parse(&perms_json).expect("permissions");
    let auth = json!({"sub": rng.random_range(0..7)});
    let root = rng.random_range(0..TABLES.len());
    let q = level(&mut rng, root, 2);
    let ast = zc_query::ast::parse(&q).expect("ast");
    let restricted = perms.transform_query(&ast, &auth);
    let mut tree = TreeQuery::build(&restricted, &db).expect("build");
    let mut view = View::new();
    apply(&mut view, &tree.hydrate(&db).expect("hydrate"));
    let context = format!("query {q}\npermissions {perms_json}\nauth {auth}\nseed {seed}");
    assert_eq!(
        rows_only(&view),
        oracle(conn, &restricted).await,
        "{context}"
    );
    let mut checks = 0;
    for _ in 0..rng.random_range(1..8) {
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
        apply(
            &mut view,
            &tree.push(TABLES[t].0, &change, &db).expect("push"),
        );
        assert_eq!(
            rows_only(&view),
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

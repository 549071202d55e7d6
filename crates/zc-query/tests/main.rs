//! Differential test against PostgreSQL: random data, random single-table queries and random
//! change sequences; after every change the incrementally maintained result equals the same
//! query run by PostgreSQL (translated by `zc_testkit::oracle`).

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::Row as _;
use zc_query::pipeline::{Pipeline, RowChange};
use zc_query::{MemorySource, ScanRequest, Source};
use zc_testkit::TestDb;
use zc_types::{ColumnSpec, Row, TableName, TableSpec, TypeKind, Value};

fn spec() -> TableSpec {
    TableSpec::new(
        TableName::new("public", "issue"),
        vec![
            ColumnSpec::new("id", TypeKind::Int),
            ColumnSpec::new("a", TypeKind::Int),
            ColumnSpec::new("b", TypeKind::Text),
        ],
        vec![0],
    )
}

const TEXTS: [&str; 6] = ["a", "b", "ab", "é", "B", "a%"];

fn random_row(rng: &mut StdRng, id: i64) -> Row {
    let a = if rng.random_range(0..5) == 0 {
        Value::Null
    } else {
        Value::Int(rng.random_range(-2..4))
    };
    let b = if rng.random_range(0..6) == 0 {
        Value::Null
    } else {
        Value::Text(TEXTS[rng.random_range(0..TEXTS.len())].into())
    };
    vec![Value::Int(id), a, b]
}

fn literal(rng: &mut StdRng, col: &str) -> String {
    if rng.random_range(0..6) == 0 {
        return "null".into();
    }
    match col {
        "b" => format!("\"{}\"", TEXTS[rng.random_range(0..TEXTS.len())]),
        _ => rng.random_range(-2..4).to_string(),
    }
}

fn simple(rng: &mut StdRng) -> String {
    let col = ["a", "b", "id"][rng.random_range(0..3)];
    let ops = [
        "=",
        "!=",
        "<",
        "<=",
        ">",
        ">=",
        "IS",
        "IS NOT",
        "IN",
        "NOT IN",
        "LIKE",
        "NOT LIKE",
        "ILIKE",
        "NOT ILIKE",
    ];
    let mut op = ops[rng.random_range(0..ops.len())];
    if op.contains("LIKE") && col != "b" {
        op = "=";
    }
    let right = if op.ends_with("IN") {
        let n = rng.random_range(1..4);
        let items: Vec<String> = (0..n)
            .map(|_| literal(rng, col).replace("null", if col == "b" { "\"a\"" } else { "0" }))
            .collect();
        format!("[{}]", items.join(","))
    } else if op.contains("LIKE") {
        ["\"a%\"", "\"%b\"", "\"_\"", "\"A%\"", "\"%\""][rng.random_range(0..5)].into()
    } else {
        literal(rng, col)
    };
    format!(
        r#"{{"type":"simple","left":{{"type":"column","name":"{col}"}},"right":{{"type":"literal","value":{right}}},"op":"{op}"}}"#
    )
}

fn condition(rng: &mut StdRng, depth: u32) -> String {
    if depth == 0 || rng.random_range(0..3) > 0 {
        return simple(rng);
    }
    let kind = if rng.random() { "and" } else { "or" };
    let n = rng.random_range(0..4);
    let parts: Vec<String> = (0..n).map(|_| condition(rng, depth - 1)).collect();
    format!(r#"{{"type":"{kind}","conditions":[{}]}}"#, parts.join(","))
}

fn random_query(rng: &mut StdRng) -> String {
    let mut parts = vec![r#""table":"issue""#.to_string()];
    if rng.random_range(0..4) > 0 {
        parts.push(format!(r#""where":{}"#, condition(rng, 2)));
    }
    let order: Vec<(&str, &str)> = (0..rng.random_range(0..3))
        .map(|_| {
            (
                ["a", "b", "id"][rng.random_range(0..3)],
                if rng.random() { "asc" } else { "desc" },
            )
        })
        .collect();
    let mut order_dedup: Vec<(&str, &str)> = Vec::new();
    for o in order {
        if !order_dedup.iter().any(|(c, _)| *c == o.0) {
            order_dedup.push(o);
        }
    }
    if rng.random_range(0..3) == 0 {
        let a = literal(rng, "a");
        parts.push(format!(
            r#""start":{{"row":{{"id":{},"a":{a},"b":{}}},"exclusive":{}}}"#,
            rng.random_range(0..20),
            literal(rng, "b"),
            rng.random::<bool>()
        ));
    }
    if rng.random() {
        parts.push(format!(r#""limit":{}"#, rng.random_range(0..6)));
    }
    if !order_dedup.is_empty() {
        let o: Vec<String> = order_dedup
            .iter()
            .map(|(c, d)| format!(r#"["{c}","{d}"]"#))
            .collect();
        parts.push(format!(r#""orderBy":[{}]"#, o.join(",")));
    }
    format!("{{{}}}", parts.join(","))
}

fn sql_value(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Int(i) => i.to_string(),
        Value::Text(s) => format!("'{}'", s.replace('\'', "''")),
        other => panic!("unexpected {other:?}"),
    }
}

async fn pg_rows(conn: &mut sqlx::PgConnection, sql: &str) -> Vec<Row> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_all(conn)
        .await
        .unwrap_or_else(|e| panic!("{e}: {sql}"));
    rows.iter()
        .map(|r| {
            vec![
                Value::Int(i64::from(r.get::<i32, _>("id"))),
                r.get::<Option<i32>, _>("a")
                    .map(|a| Value::Int(i64::from(a)))
                    .unwrap_or(Value::Null),
                r.get::<Option<String>, _>("b")
                    .map(Value::Text)
                    .unwrap_or(Value::Null),
            ]
        })
        .collect()
}

fn by_id(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort_by_key(|r| match r[0] {
        Value::Int(i) => i,
        _ => 0,
    });
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_match_postgres() {
    let budget = Duration::from_secs(
        std::env::var("ZC_PROPTEST_BUDGET_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(6),
    );
    let seed: u64 = std::env::var("ZC_PROPTEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("pipelines_match_postgres seed={seed} (replay with ZC_PROPTEST_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let db = TestDb::new().await;
    db.exec("CREATE TABLE issue (id int4 PRIMARY KEY, a int4, b text)")
        .await;
    let mut conn = db.connect().await;
    let started = Instant::now();
    let mut cases = 0;
    let mut checks = 0;
    while started.elapsed() < budget || cases < 20 {
        cases += 1;
        sqlx::raw_sql("TRUNCATE issue")
            .execute(&mut conn)
            .await
            .expect("truncate");
        let mut source = MemorySource::new(spec());
        for id in 0..rng.random_range(0..15) {
            if rng.random_range(0..3) > 0 {
                let row = random_row(&mut rng, id);
                let sql = format!(
                    "INSERT INTO issue VALUES ({}, {}, {})",
                    sql_value(&row[0]),
                    sql_value(&row[1]),
                    sql_value(&row[2])
                );
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await
                    .expect("insert");
                source.upsert(row).expect("upsert");
            }
        }
        let q = random_query(&mut rng);
        let ast = zc_query::ast::parse(&q).unwrap_or_else(|e| panic!("{e}: {q}"));
        let sql = zc_testkit::oracle::ast_to_sql(&ast, &["id"]);
        let mut pipeline = Pipeline::build(&ast, &source).expect("build");
        let mut view = pipeline.hydrate(&source).expect("hydrate");
        // Hydration also matches PostgreSQL's order.
        assert_eq!(
            view,
            pg_rows(&mut conn, &sql).await,
            "hydration of {q}\nSQL: {sql}\nseed {seed}"
        );
        for _ in 0..rng.random_range(1..15) {
            let id = rng.random_range(0..18);
            let existing = source
                .scan(&ScanRequest::default())
                .expect("scan")
                .map(|r| r.expect("row"))
                .find(|r| r[0] == Value::Int(id));
            let change = match (rng.random_range(0..3), existing) {
                (0, Some(old)) => {
                    source.remove(&old);
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DELETE FROM issue WHERE id = {id}"
                    )))
                    .execute(&mut conn)
                    .await
                    .expect("delete");
                    RowChange::Remove(old)
                }
                (_, existing) => {
                    let new = random_row(&mut rng, id);
                    let sql = format!(
                        "INSERT INTO issue VALUES ({}, {}, {}) ON CONFLICT (id) DO UPDATE SET a = EXCLUDED.a, b = EXCLUDED.b",
                        sql_value(&new[0]),
                        sql_value(&new[1]),
                        sql_value(&new[2])
                    );
                    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut conn)
                        .await
                        .expect("upsert");
                    source.upsert(new.clone()).expect("upsert");
                    match existing {
                        Some(old) => RowChange::Edit { old, new },
                        None => RowChange::Add(new),
                    }
                }
            };
            for out in pipeline.push(&change, &source).expect("push") {
                match out {
                    RowChange::Add(r) => view.push(r),
                    RowChange::Remove(r) => view.retain(|v| v != &r),
                    RowChange::Edit { old, new } => {
                        for v in view.iter_mut().filter(|v| **v == old) {
                            *v = new.clone();
                        }
                    }
                }
            }
            let expected = pg_rows(&mut conn, &sql).await;
            assert_eq!(
                by_id(view.clone()),
                by_id(expected),
                "{q} after {change:?}\nSQL: {sql}\nseed {seed}"
            );
            checks += 1;
        }
    }
    eprintln!("{cases} queries, {checks} incremental checks against PostgreSQL");
}

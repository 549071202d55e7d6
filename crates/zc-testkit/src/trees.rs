//! A random world for differential query tests: four related tables (users, issues with a
//! self-reference, comments, a junction with a composite key), random rows, random query
//! trees (nested `related`, EXISTS / NOT EXISTS also inside `or`, orderBy, limit, start),
//! SQL to write rows, and the oracle: the rows a whole tree holds, computed by PostgreSQL.

use std::collections::BTreeMap;

use rand::Rng;
use rand::rngs::StdRng;
use sqlx::Row as _;
use zc_protocol::ast::{Ast, Condition, CorrelatedSubquery, System};
use zc_types::{ColumnSpec, Row, TableName, TableSpec, TypeKind, Value};

/// Rows zero-cache syncs per parent for a client EXISTS condition.
pub const EXISTS_LIMIT: u64 = 3;

/// The tables in PostgreSQL.
pub const DDL: &str = "CREATE TABLE \"user\" (id int4 PRIMARY KEY, name text, age int4);
     CREATE TABLE issue (id int4 PRIMARY KEY, a int4, b text, creator int4, parent int4);
     CREATE INDEX issue_creator ON issue (creator);
     CREATE TABLE comment (id int4 PRIMARY KEY, issue int4, author int4, a int4);
     CREATE INDEX comment_issue ON comment (issue);
     CREATE TABLE issue_label (issue int4, label int4, w int4, PRIMARY KEY (issue, label));";

/// (name, columns as (name, is text), key columns)
pub type Table = (
    &'static str,
    &'static [(&'static str, bool)],
    &'static [usize],
);

pub const TABLES: [Table; 4] = [
    (
        "user",
        &[("id", false), ("name", true), ("age", false)],
        &[0],
    ),
    (
        "issue",
        &[
            ("id", false),
            ("a", false),
            ("b", true),
            ("creator", false),
            ("parent", false),
        ],
        &[0],
    ),
    (
        "comment",
        &[
            ("id", false),
            ("issue", false),
            ("author", false),
            ("a", false),
        ],
        &[0],
    ),
    (
        "issue_label",
        &[("issue", false), ("label", false), ("w", false)],
        &[0, 1],
    ),
];

/// (parent table, parent column, child table, child column)
pub const RELATIONS: [(&str, &str, &str, &str); 9] = [
    ("issue", "id", "comment", "issue"),
    ("issue", "creator", "user", "id"),
    ("issue", "parent", "issue", "id"),
    ("issue", "id", "issue_label", "issue"),
    ("comment", "author", "user", "id"),
    ("comment", "issue", "issue", "id"),
    ("user", "id", "issue", "creator"),
    ("user", "id", "comment", "author"),
    ("issue_label", "issue", "issue", "id"),
];

const TEXTS: [&str; 5] = ["a", "b", "ab", "é", "B"];

pub fn spec(i: usize) -> TableSpec {
    let (name, cols, key) = TABLES[i];
    TableSpec::new(
        TableName::new("public", name),
        cols.iter()
            .map(|(c, text)| {
                ColumnSpec::new(*c, if *text { TypeKind::Text } else { TypeKind::Int })
            })
            .collect(),
        key.to_vec(),
    )
}

pub fn table_index(name: &str) -> usize {
    TABLES
        .iter()
        .position(|(n, _, _)| *n == name)
        .unwrap_or_else(|| panic!("table {name}"))
}

fn random_value(rng: &mut StdRng, text: bool, column: &str) -> Value {
    if column != "id" && rng.random_range(0..6) == 0 {
        return Value::Null;
    }
    if text {
        Value::Text(TEXTS[rng.random_range(0..TEXTS.len())].into())
    } else if column == "a" || column == "w" || column == "age" {
        Value::Int(rng.random_range(-1..3))
    } else {
        Value::Int(rng.random_range(0..7))
    }
}

pub fn random_row(rng: &mut StdRng, t: usize) -> Row {
    TABLES[t]
        .1
        .iter()
        .map(|(c, text)| {
            let v = random_value(rng, *text, c);
            if TABLES[t]
                .2
                .contains(&TABLES[t].1.iter().position(|x| x.0 == *c).unwrap_or(99))
                && v.is_null()
            {
                Value::Int(0)
            } else {
                v
            }
        })
        .collect()
}

fn json_value(v: &Value) -> String {
    v.to_json().to_string()
}

fn simple(rng: &mut StdRng, t: usize) -> String {
    let cols = TABLES[t].1;
    let (col, text) = cols[rng.random_range(0..cols.len())];
    let ops: &[&str] = if text {
        &[
            "=", "!=", "<", ">=", "IS", "IS NOT", "LIKE", "ILIKE", "NOT LIKE", "IN",
        ]
    } else {
        &[
            "=", "!=", "<", "<=", ">", ">=", "IS", "IS NOT", "IN", "NOT IN",
        ]
    };
    let op = ops[rng.random_range(0..ops.len())];
    let right = if op.ends_with("IN") {
        let items: Vec<String> = (0..rng.random_range(1..3))
            .map(|_| match random_value(rng, text, col) {
                Value::Null if text => "\"a\"".into(),
                Value::Null => "1".into(),
                v => json_value(&v),
            })
            .collect();
        format!("[{}]", items.join(","))
    } else if op.contains("LIKE") {
        ["\"a%\"", "\"%b\"", "\"_\"", "\"A%\""][rng.random_range(0..4)].into()
    } else {
        json_value(&random_value(rng, text, col))
    };
    format!(
        r#"{{"type":"simple","left":{{"type":"column","name":"{col}"}},"right":{{"type":"literal","value":{right}}},"op":"{op}"}}"#
    )
}

fn relation(rng: &mut StdRng, t: usize) -> (&'static str, &'static str, usize) {
    let name = TABLES[t].0;
    let options: Vec<_> = RELATIONS.iter().filter(|r| r.0 == name).collect();
    let r = options[rng.random_range(0..options.len())];
    (r.1, r.3, table_index(r.2))
}

fn exists(rng: &mut StdRng, t: usize, depth: u32) -> String {
    let (pf, cf, child) = relation(rng, t);
    let mut sub = vec![format!(r#""table":"{}""#, TABLES[child].0)];
    if rng.random() {
        sub.push(format!(r#""where":{}"#, condition(rng, child, depth - 1)));
    }
    if rng.random_range(0..12) == 0 {
        sub.push(r#""limit":0"#.into());
    }
    let op = if rng.random_range(0..3) == 0 {
        "NOT EXISTS"
    } else {
        "EXISTS"
    };
    let system = if rng.random_range(0..4) == 0 {
        "permissions"
    } else {
        "client"
    };
    format!(
        r#"{{"type":"correlatedSubquery","related":{{"system":"{system}","correlation":{{"parentField":["{pf}"],"childField":["{cf}"]}},"subquery":{{{}}}}},"op":"{op}"}}"#,
        sub.join(",")
    )
}

/// A random condition on table `t` (JSON), with subqueries up to `depth` levels.
pub fn condition(rng: &mut StdRng, t: usize, depth: u32) -> String {
    match rng.random_range(0..6) {
        0 | 1 if depth > 0 => exists(rng, t, depth),
        2 if depth > 0 => {
            let kind = if rng.random() { "and" } else { "or" };
            let parts: Vec<String> = (0..rng.random_range(0..4))
                .map(|_| condition(rng, t, depth - 1))
                .collect();
            format!(r#"{{"type":"{kind}","conditions":[{}]}}"#, parts.join(","))
        }
        _ => simple(rng, t),
    }
}

pub fn level(rng: &mut StdRng, t: usize, depth: u32) -> String {
    let mut parts = vec![format!(r#""table":"{}""#, TABLES[t].0)];
    if rng.random_range(0..3) > 0 {
        parts.push(format!(r#""where":{}"#, condition(rng, t, depth)));
    }
    if depth > 0 && rng.random() {
        let related: Vec<String> = (0..rng.random_range(1..3))
            .map(|i| {
                let (pf, cf, child) = relation(rng, t);
                format!(
                    r#"{{"correlation":{{"parentField":["{pf}"],"childField":["{cf}"]}},"subquery":{}}}"#,
                    level(rng, child, depth - 1).replacen(
                        '{',
                        &format!(r#"{{"alias":"r{i}","#),
                        1
                    )
                )
            })
            .collect();
        parts.push(format!(r#""related":[{}]"#, related.join(",")));
    }
    let cols = TABLES[t].1;
    let mut order: Vec<String> = Vec::new();
    for _ in 0..rng.random_range(0..3) {
        let c = cols[rng.random_range(0..cols.len())].0;
        if !order.iter().any(|o| o.contains(&format!("\"{c}\""))) {
            let d = if rng.random() { "asc" } else { "desc" };
            order.push(format!(r#"["{c}","{d}"]"#));
        }
    }
    if rng.random_range(0..5) == 0 {
        let row: Vec<String> = cols
            .iter()
            .map(|(c, text)| format!(r#""{c}":{}"#, json_value(&random_value(rng, *text, c))))
            .collect();
        parts.push(format!(
            r#""start":{{"row":{{{}}},"exclusive":{}}}"#,
            row.join(","),
            rng.random::<bool>()
        ));
    }
    if rng.random() {
        parts.push(format!(r#""limit":{}"#, rng.random_range(0..5)));
    }
    if !order.is_empty() {
        parts.push(format!(r#""orderBy":[{}]"#, order.join(",")));
    }
    format!("{{{}}}", parts.join(","))
}

pub fn key_of(t: usize, row: &[Value]) -> String {
    format!(
        "{:?}",
        TABLES[t].2.iter().map(|&k| &row[k]).collect::<Vec<_>>()
    )
}

fn subqueries<'a>(c: &'a Condition, out: &mut Vec<&'a CorrelatedSubquery>) {
    match c {
        Condition::And { conditions } | Condition::Or { conditions } => {
            conditions.iter().for_each(|c| subqueries(c, out))
        }
        Condition::CorrelatedSubquery { related, .. } => out.push(related),
        Condition::Simple { .. } => {}
    }
}

/// The rows the whole tree holds, by PostgreSQL: each level's SQL per parent row.
pub async fn oracle(conn: &mut sqlx::PgConnection, ast: &Ast) -> BTreeMap<(String, String), Row> {
    let mut out = BTreeMap::new();
    let mut queue: Vec<(Ast, Vec<(String, serde_json::Value)>)> = vec![(ast.clone(), vec![])];
    while let Some((level, constraint)) = queue.pop() {
        let t = table_index(&level.table);
        let key: Vec<String> = TABLES[t]
            .2
            .iter()
            .map(|&k| TABLES[t].1[k].0.into())
            .collect();
        let sql = crate::oracle::level_sql(&level, &key, &constraint);
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{e}: {sql}"));
        let mut children: Vec<(Ast, &[String], &[String])> = Vec::new();
        for r in level.related.iter().flatten() {
            children.push((
                (*r.subquery).clone(),
                &r.correlation.parent_field,
                &r.correlation.child_field,
            ));
        }
        let mut conds = Vec::new();
        if let Some(w) = &level.where_ {
            subqueries(w, &mut conds);
        }
        for r in conds {
            // Rows of permission-rule conditions are never synced.
            if r.system == Some(System::Permissions) {
                continue;
            }
            let cap = EXISTS_LIMIT;
            let mut sub = (*r.subquery).clone();
            sub.limit = Some(sub.limit.map_or(cap, |l| l.min(cap)));
            children.push((sub, &r.correlation.parent_field, &r.correlation.child_field));
        }
        for pg in &rows {
            let row: Row = TABLES[t]
                .1
                .iter()
                .enumerate()
                .map(|(i, (_, text))| {
                    if *text {
                        pg.get::<Option<String>, _>(i)
                            .map(Value::Text)
                            .unwrap_or(Value::Null)
                    } else {
                        pg.get::<Option<i32>, _>(i)
                            .map(|v| Value::Int(i64::from(v)))
                            .unwrap_or(Value::Null)
                    }
                })
                .collect();
            for (sub, pf, cf) in &children {
                let mut c = Vec::new();
                for (p, ch) in pf.iter().zip(cf.iter()) {
                    let i = TABLES[t].1.iter().position(|x| x.0 == p).expect("column");
                    c.push((ch.clone(), row[i].to_json()));
                }
                if c.iter().all(|(_, v)| !v.is_null()) {
                    queue.push((sub.clone(), c));
                }
            }
            out.insert((level.table.clone(), key_of(t, &row)), row);
        }
    }
    out
}

fn sql_literal(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Int(i) => i.to_string(),
        Value::Text(s) => format!("'{}'", s.replace('\'', "''")),
        other => panic!("unexpected {other:?}"),
    }
}

/// Runs one statement, failing the test with the SQL on error.
pub async fn exec(conn: &mut sqlx::PgConnection, sql: String) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
        .execute(conn)
        .await
        .unwrap_or_else(|e| panic!("{e}: {sql}"));
}

pub fn upsert_sql(t: usize, row: &[Value]) -> String {
    let (name, cols, key) = TABLES[t];
    let names: Vec<String> = cols.iter().map(|c| format!("\"{}\"", c.0)).collect();
    let keys: Vec<String> = key.iter().map(|&k| format!("\"{}\"", cols[k].0)).collect();
    let sets: Vec<String> = cols
        .iter()
        .enumerate()
        .filter(|(i, _)| !key.contains(i))
        .map(|(_, c)| format!("\"{0}\" = EXCLUDED.\"{0}\"", c.0))
        .collect();
    format!(
        "INSERT INTO \"{name}\" ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}",
        names.join(", "),
        row.iter().map(sql_literal).collect::<Vec<_>>().join(", "),
        keys.join(", "),
        sets.join(", ")
    )
}

pub fn delete_sql(t: usize, row: &[Value]) -> String {
    let (name, cols, key) = TABLES[t];
    let conds: Vec<String> = key
        .iter()
        .map(|&k| format!("\"{}\" = {}", cols[k].0, sql_literal(&row[k])))
        .collect();
    format!("DELETE FROM \"{name}\" WHERE {}", conds.join(" AND "))
}

//! Step 3: a query tree. Each issue comes with its comments (`related`), and the tree stays
//! up to date when a comment is added: only the affected issue's partition moves.
//!
//! ```text
//! cargo run -p zc-examples --example query_03_related
//! ```
#![allow(clippy::print_stdout)]

use zc_query::pipeline::RowChange;
use zc_query::tree::TreeQuery;
use zc_query::view::MemorySources;
use zc_query::{MemorySource, ast};
use zc_types::{ColumnSpec, TableName, TableSpec, TypeKind, Value};

fn main() {
    let mut db = MemorySources::new();
    db.add(MemorySource::new(TableSpec::new(
        TableName::new("public", "issue"),
        vec![
            ColumnSpec::new("id", TypeKind::Int),
            ColumnSpec::new("title", TypeKind::Text),
        ],
        vec![0],
    )));
    db.add(MemorySource::new(TableSpec::new(
        TableName::new("public", "comment"),
        vec![
            ColumnSpec::new("id", TypeKind::Int),
            ColumnSpec::new("issueID", TypeKind::Int),
            ColumnSpec::new("body", TypeKind::Text),
        ],
        vec![0],
    )));
    for (id, title) in [(1, "crash on start"), (2, "slow sync")] {
        db.table_mut("issue")
            .expect("issue table")
            .upsert(vec![Value::Int(id), title.into()])
            .expect("row fits");
    }
    db.table_mut("comment")
        .expect("comment table")
        .upsert(vec![Value::Int(10), Value::Int(1), "same here".into()])
        .expect("row fits");

    // issue.related('comments', q => q.orderBy('id', 'desc').limit(2))
    let query = ast::parse(
        r#"{"table":"issue","orderBy":[["id","asc"]],
            "related":[{"correlation":{"parentField":["id"],"childField":["issueID"]},
                        "subquery":{"table":"comment","alias":"comments","orderBy":[["id","desc"]],"limit":2}}]}"#,
    )
    .expect("a valid AST");
    let mut tree = TreeQuery::build(&query, &db).expect("the query fits the tables");
    for (table, change) in tree.hydrate(&db).expect("hydration") {
        println!("hydrated {table}: {change:?}");
    }

    // A comment on issue 2 arrives: only issue 2's comments partition emits a change.
    let row = vec![Value::Int(11), Value::Int(2), "fixed in 1.2".into()];
    db.table_mut("comment")
        .expect("comment table")
        .upsert(row.clone())
        .expect("row fits");
    for (table, change) in tree
        .push("comment", &RowChange::Add(row), &db)
        .expect("push")
    {
        println!("change {table}: {change:?}");
    }
}

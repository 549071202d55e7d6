//! Step 4: `whereExists`. Only issues with at least one comment are in the result; the first
//! comment on an issue brings the issue in, deleting the last one takes it out again. As in
//! zero-cache, the comments that prove the condition (up to 3 per issue) are synced too, so
//! that a client can evaluate the condition itself.
//!
//! ```text
//! cargo run -p zc-examples --example query_04_exists
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
        ],
        vec![0],
    )));
    for (id, title) in [(1, "crash on start"), (2, "slow sync")] {
        db.table_mut("issue")
            .expect("issue table")
            .upsert(vec![Value::Int(id), title.into()])
            .expect("row fits");
    }

    // issue.whereExists('comments')
    let query = ast::parse(
        r#"{"table":"issue","where":{"type":"correlatedSubquery","op":"EXISTS",
            "related":{"system":"client","correlation":{"parentField":["id"],"childField":["issueID"]},
                       "subquery":{"table":"comment","alias":"zsubq_comments"}}}}"#,
    )
    .expect("a valid AST");
    let mut tree = TreeQuery::build(&query, &db).expect("the query fits the tables");
    println!("hydrated: {:?}", tree.hydrate(&db).expect("hydration"));

    let comment = vec![Value::Int(10), Value::Int(2)];
    db.table_mut("comment")
        .expect("comment table")
        .upsert(comment.clone())
        .expect("row fits");
    println!(
        "first comment on issue 2: {:?}",
        tree.push("comment", &RowChange::Add(comment.clone()), &db)
            .expect("push")
    );

    db.table_mut("comment")
        .expect("comment table")
        .remove(&comment);
    println!(
        "comment deleted: {:?}",
        tree.push("comment", &RowChange::Remove(comment), &db)
            .expect("push")
    );
}

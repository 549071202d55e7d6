//! Step 5: keep a query up to date from row changes, without running it again.
//!
//! ```text
//! cargo run -p zc-examples --example query_05_incremental_updates
//! ```
#![allow(clippy::print_stdout)]

use zc_query::pipeline::{Pipeline, RowChange};
use zc_query::{MemorySource, ast};
use zc_types::{ColumnSpec, TableName, TableSpec, TypeKind, Value};

fn main() {
    let spec = TableSpec::new(
        TableName::new("public", "score"),
        vec![
            ColumnSpec::new("player", TypeKind::Text),
            ColumnSpec::new("points", TypeKind::Int),
        ],
        vec![0],
    );
    let mut source = MemorySource::new(spec);
    for (p, n) in [("ann", 30), ("bob", 20), ("cid", 10), ("dan", 5)] {
        source
            .upsert(vec![p.into(), Value::Int(n)])
            .expect("row fits");
    }
    // The top two players.
    let top2 = ast::parse(r#"{"table":"score","limit":2,"orderBy":[["points","desc"]]}"#)
        .expect("a valid AST");
    let mut pipeline = Pipeline::build(&top2, &source).expect("the query fits");
    println!(
        "hydrated: {:?}",
        pipeline.hydrate(&source).expect("hydration")
    );

    // cid overtakes everyone: it enters the window, bob leaves it.
    let old = vec!["cid".into(), Value::Int(10)];
    let new = vec!["cid".into(), Value::Int(50)];
    source.upsert(new.clone()).expect("row fits");
    for out in pipeline
        .push(&RowChange::Edit { old, new }, &source)
        .expect("push")
    {
        println!("change: {out:?}");
    }

    // ann leaves: the window refills with the next row (bob), read from the source.
    let ann = source
        .remove(&["ann".into(), Value::Null])
        .expect("ann was there");
    for out in pipeline
        .push(&RowChange::Remove(ann), &source)
        .expect("push")
    {
        println!("change: {out:?}");
    }
}

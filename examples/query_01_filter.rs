//! Step 1: filter a table with a Zero query AST, on an in-memory source.
//!
//! ```text
//! cargo run -p zc-examples --example query_01_filter
//! ```
#![allow(clippy::print_stdout)]

use zc_query::pipeline::Pipeline;
use zc_query::{MemorySource, ast};
use zc_types::{ColumnSpec, TableName, TableSpec, TypeKind, Value};

fn issue_table() -> MemorySource {
    let spec = TableSpec::new(
        TableName::new("public", "issue"),
        vec![
            ColumnSpec::new("id", TypeKind::Text),
            ColumnSpec::new("title", TypeKind::Text),
            ColumnSpec::new("open", TypeKind::Bool),
        ],
        vec![0],
    );
    let mut source = MemorySource::new(spec);
    for (id, title, open) in [
        ("i1", "Crash on start", true),
        ("i2", "Typo in docs", false),
        ("i3", "Crash on exit", true),
    ] {
        source
            .upsert(vec![id.into(), title.into(), Value::Bool(open)])
            .expect("row fits the table");
    }
    source
}

fn main() {
    let source = issue_table();
    // issue.where('open', true).where('title', 'LIKE', 'Crash%'), as the client would send it.
    let query = ast::parse(
        r#"{"table":"issue","where":{"type":"and","conditions":[
            {"type":"simple","left":{"type":"column","name":"open"},"right":{"type":"literal","value":true},"op":"="},
            {"type":"simple","left":{"type":"column","name":"title"},"right":{"type":"literal","value":"Crash%"},"op":"LIKE"}]}}"#,
    )
    .expect("a valid AST");
    let mut pipeline = Pipeline::build(&query, &source).expect("the query fits the table");
    for row in pipeline.hydrate(&source).expect("hydration") {
        println!("{row:?}");
    }
}

//! Step 2: order, limit and start (cursor pagination); the primary key completes the order.
//!
//! ```text
//! cargo run -p zc-examples --example query_02_order_limit
//! ```
#![allow(clippy::print_stdout)]

use zc_query::pipeline::Pipeline;
use zc_query::{MemorySource, ast};
use zc_types::{ColumnSpec, TableName, TableSpec, TypeKind, Value};

fn main() {
    let spec = TableSpec::new(
        TableName::new("public", "issue"),
        vec![
            ColumnSpec::new("id", TypeKind::Int),
            ColumnSpec::new("modified", TypeKind::Float),
        ],
        vec![0],
    );
    let mut source = MemorySource::new(spec);
    for id in 1..=10 {
        source
            .upsert(vec![Value::Int(id), Value::Float((id % 4) as f64)])
            .expect("row fits");
    }
    // The three most recently modified issues after the cursor (modified 3, id 3).
    let page = ast::parse(
        r#"{"table":"issue","start":{"row":{"id":3,"modified":3},"exclusive":true},"limit":3,"orderBy":[["modified","desc"]]}"#,
    )
    .expect("a valid AST");
    let mut pipeline = Pipeline::build(&page, &source).expect("the query fits");
    for row in pipeline.hydrate(&source).expect("hydration") {
        println!("{row:?}");
    }
}

//! Step 2: order, limit and start (cursor pagination); the primary key completes the order.
//!
//! ```text
//! cargo run -p zc-examples --example query_02_order_limit
//! ```
#![allow(clippy::print_stdout)]

use zc_query::pipeline::Pipeline;
use zc_query::{MemorySource, ast};
use zc_types::{ColumnSpec, Lsn, PgType, TableName, TableSpec, TypeKind, Value};

fn main() {
    let col = |name: &str, kind| ColumnSpec {
        name: name.into(),
        pg_type: PgType {
            oid: 0,
            name: name.into(),
            kind,
        },
        not_null: false,
    };
    let spec = TableSpec {
        name: TableName::new("public", "issue"),
        oid: 1,
        columns: vec![col("id", TypeKind::Int), col("modified", TypeKind::Float)],
        key: vec![0],
        indexes: vec![],
        copied_at: Lsn::ZERO,
    };
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

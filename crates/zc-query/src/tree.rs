//! Queries with `related` subqueries: a tree of [`Pipeline`]s. Each related subquery keeps
//! one pipeline per distinct correlation value among its parent rows (Zero's partitioned
//! join), created when the first parent row with that value enters the result and dropped
//! when the last one leaves.
//!
//! A change is pushed to the partitions that exist *before* the node's own pipeline sees it;
//! partitions created while handling the change hydrate from the source, which already holds
//! the change, so nothing is counted twice (`tree_matches_from_scratch_evaluation`).
//!
//! Output is flat: `(table, change)` pairs. A row under several parents (or queries) is
//! added once per partition that holds it; consumers keep a reference count per row.

use std::collections::BTreeMap;

use zc_protocol::ast::{Ast, Condition, CorrelatedSubquery, SimpleOp, ValuePosition};
use zc_types::{Row, Value};

use crate::pipeline::{BuildError, Pipeline, RowChange};
use crate::source::{Source, SourceError};

/// The tables a query reads.
pub trait Sources {
    /// The source of a table, by the name used in ASTs.
    fn source(&self, table: &str) -> Option<&dyn Source>;
}

/// A tree query could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TreeError {
    /// A table the query names has no source.
    #[error("unknown table \"{0}\"")]
    UnknownTable(String),
    /// A level of the query is invalid.
    #[error("invalid query on \"{table}\"")]
    Build {
        /// The level's table.
        table: String,
        /// Why.
        #[source]
        source: BuildError,
    },
    /// A correlation names a missing column, or its two sides differ in length.
    #[error("invalid correlation between \"{parent}\" and \"{child}\"")]
    Correlation {
        /// Parent table.
        parent: String,
        /// Child table.
        child: String,
    },
    /// Reading a source failed.
    #[error("reading a source failed")]
    Source(#[from] SourceError),
}

/// One output change: the table and the change to one of its rows.
pub type TreeOutput = (String, RowChange);

#[derive(Debug)]
struct Slot {
    parent_cols: Vec<usize>,
    child_cols: Vec<usize>,
    child_table: String,
    subquery: Ast,
    partitions: BTreeMap<Vec<u8>, Partition>,
}

#[derive(Debug)]
struct Partition {
    refs: usize,
    node: Node,
}

#[derive(Debug)]
struct Node {
    table: String,
    pipeline: Pipeline,
    key: Vec<usize>,
    /// The node's current rows by encoded key.
    rows: BTreeMap<Vec<u8>, Row>,
    slots: Vec<Slot>,
}

fn encode(values: &[&Value]) -> Vec<u8> {
    // serde_json of the values is an unambiguous, comparable-enough key for a map.
    serde_json::to_vec(&values.iter().map(|v| v.to_json()).collect::<Vec<_>>()).unwrap_or_default()
}

fn column_positions(source: &dyn Source, names: &[String]) -> Option<Vec<usize>> {
    names
        .iter()
        .map(|n| source.spec().columns.iter().position(|c| &c.name == n))
        .collect()
}

fn json_literal(v: &Value) -> serde_json::Value {
    v.to_json()
}

impl Node {
    fn build(ast: &Ast, sources: &dyn Sources) -> Result<Node, TreeError> {
        let source = sources
            .source(&ast.table)
            .ok_or_else(|| TreeError::UnknownTable(ast.table.clone()))?;
        let mut level = ast.clone();
        let related = level.related.take().unwrap_or_default();
        let pipeline = Pipeline::build(&level, source).map_err(|e| TreeError::Build {
            table: ast.table.clone(),
            source: e,
        })?;
        let mut slots = Vec::new();
        for r in &related {
            slots.push(Self::slot(ast, r, source, sources)?);
        }
        Ok(Node {
            table: ast.table.clone(),
            pipeline,
            key: source.spec().key.clone(),
            rows: BTreeMap::new(),
            slots,
        })
    }

    fn slot(
        parent: &Ast,
        r: &CorrelatedSubquery,
        parent_source: &dyn Source,
        sources: &dyn Sources,
    ) -> Result<Slot, TreeError> {
        let child_source = sources
            .source(&r.subquery.table)
            .ok_or_else(|| TreeError::UnknownTable(r.subquery.table.clone()))?;
        let bad = || TreeError::Correlation {
            parent: parent.table.clone(),
            child: r.subquery.table.clone(),
        };
        let parent_cols =
            column_positions(parent_source, &r.correlation.parent_field).ok_or_else(bad)?;
        let child_cols =
            column_positions(child_source, &r.correlation.child_field).ok_or_else(bad)?;
        if parent_cols.len() != child_cols.len() || parent_cols.is_empty() {
            return Err(bad());
        }
        Ok(Slot {
            parent_cols,
            child_cols,
            child_table: r.subquery.table.clone(),
            subquery: (*r.subquery).clone(),
            partitions: BTreeMap::new(),
        })
    }

    fn row_key(&self, row: &[Value]) -> Vec<u8> {
        encode(
            &self
                .key
                .iter()
                .map(|&k| row.get(k).unwrap_or(&Value::Null))
                .collect::<Vec<_>>(),
        )
    }

    fn hydrate(
        &mut self,
        sources: &dyn Sources,
        out: &mut Vec<TreeOutput>,
    ) -> Result<(), TreeError> {
        let source = sources
            .source(&self.table)
            .ok_or_else(|| TreeError::UnknownTable(self.table.clone()))?;
        for row in self.pipeline.hydrate(source)? {
            self.add_row(row, sources, out)?;
        }
        Ok(())
    }

    fn add_row(
        &mut self,
        row: Row,
        sources: &dyn Sources,
        out: &mut Vec<TreeOutput>,
    ) -> Result<(), TreeError> {
        for i in 0..self.slots.len() {
            self.acquire(i, &row, sources, out)?;
        }
        out.push((self.table.clone(), RowChange::Add(row.clone())));
        self.rows.insert(self.row_key(&row), row);
        Ok(())
    }

    fn remove_row(&mut self, row: &Row, out: &mut Vec<TreeOutput>) {
        self.rows.remove(&self.row_key(row));
        out.push((self.table.clone(), RowChange::Remove(row.clone())));
        for i in 0..self.slots.len() {
            self.release(i, row, out);
        }
    }

    /// One more parent row needs the partition for its correlation values.
    fn acquire(
        &mut self,
        slot: usize,
        parent: &Row,
        sources: &dyn Sources,
        out: &mut Vec<TreeOutput>,
    ) -> Result<(), TreeError> {
        let s = &mut self.slots[slot];
        let values: Vec<&Value> = s
            .parent_cols
            .iter()
            .map(|&c| parent.get(c).unwrap_or(&Value::Null))
            .collect();
        let key = encode(&values);
        if let Some(p) = s.partitions.get_mut(&key) {
            p.refs += 1;
            return Ok(());
        }
        // The partition's query: the subquery AND child columns = the parent's values.
        let child_source = sources
            .source(&s.child_table)
            .ok_or_else(|| TreeError::UnknownTable(s.child_table.clone()))?;
        let mut ast = s.subquery.clone();
        let mut conds: Vec<Condition> = ast.where_.take().into_iter().collect();
        for (&cc, v) in s.child_cols.iter().zip(&values) {
            let name = child_source
                .spec()
                .columns
                .get(cc)
                .map(|c| c.name.clone())
                .unwrap_or_default();
            conds.push(Condition::Simple {
                op: SimpleOp::Eq,
                left: ValuePosition::Column { name },
                right: ValuePosition::Literal {
                    value: json_literal(v),
                },
            });
        }
        ast.where_ = Some(Condition::And { conditions: conds });
        let mut node = Node::build(&ast, sources)?;
        node.hydrate(sources, out)?;
        s.partitions.insert(key, Partition { refs: 1, node });
        Ok(())
    }

    fn release(&mut self, slot: usize, parent: &Row, out: &mut Vec<TreeOutput>) {
        let s = &mut self.slots[slot];
        let values: Vec<&Value> = s
            .parent_cols
            .iter()
            .map(|&c| parent.get(c).unwrap_or(&Value::Null))
            .collect();
        let key = encode(&values);
        let drop_it = match s.partitions.get_mut(&key) {
            Some(p) => {
                p.refs -= 1;
                p.refs == 0
            }
            None => false,
        };
        if drop_it && let Some(mut p) = s.partitions.remove(&key) {
            p.node.clear(out);
        }
    }

    /// Removes every row of this node and its partitions from the output.
    fn clear(&mut self, out: &mut Vec<TreeOutput>) {
        let rows: Vec<Row> = std::mem::take(&mut self.rows).into_values().collect();
        for row in &rows {
            out.push((self.table.clone(), RowChange::Remove(row.clone())));
        }
        for s in &mut self.slots {
            for (_, mut p) in std::mem::take(&mut s.partitions) {
                p.node.clear(out);
            }
        }
    }

    fn push(
        &mut self,
        table: &str,
        change: &RowChange,
        sources: &dyn Sources,
        out: &mut Vec<TreeOutput>,
    ) -> Result<(), TreeError> {
        // Existing partitions first: ones created below hydrate with the change included.
        for s in &mut self.slots {
            let keys: Vec<Vec<u8>> = if s.child_table == table {
                // Only the partitions the old or new row correlates with can change at
                // this level; deeper levels may read other tables, so those see every change.
                let mut ks = Vec::new();
                for row in match change {
                    RowChange::Add(r) | RowChange::Remove(r) => vec![r],
                    RowChange::Edit { old, new } => vec![old, new],
                } {
                    ks.push(encode(
                        &s.child_cols
                            .iter()
                            .map(|&c| row.get(c).unwrap_or(&Value::Null))
                            .collect::<Vec<_>>(),
                    ));
                }
                let deep = s.partitions.values().any(|p| !p.node.slots.is_empty());
                if deep {
                    s.partitions.keys().cloned().collect()
                } else {
                    ks
                }
            } else {
                s.partitions.keys().cloned().collect()
            };
            for k in keys {
                if let Some(p) = s.partitions.get_mut(&k) {
                    p.node.push(table, change, sources, out)?;
                }
            }
        }
        if table != self.table {
            return Ok(());
        }
        let source = sources
            .source(&self.table)
            .ok_or_else(|| TreeError::UnknownTable(self.table.clone()))?;
        for c in self.pipeline.push(change, source)? {
            match c {
                RowChange::Add(row) => self.add_row(row, sources, out)?,
                RowChange::Remove(row) => self.remove_row(&row, out),
                RowChange::Edit { old, new } => {
                    for i in 0..self.slots.len() {
                        let pc = &self.slots[i].parent_cols;
                        if pc.iter().any(|&c| old.get(c) != new.get(c)) {
                            self.acquire(i, &new, sources, out)?;
                            self.release(i, &old, out);
                        }
                    }
                    self.rows.insert(self.row_key(&new), new.clone());
                    out.push((self.table.clone(), RowChange::Edit { old, new }));
                }
            }
        }
        Ok(())
    }
}

/// An incrementally maintained query with related subqueries.
#[derive(Debug)]
pub struct TreeQuery {
    root: Node,
}

impl TreeQuery {
    /// Builds the query's pipelines (no hydration yet).
    pub fn build(ast: &Ast, sources: &dyn Sources) -> Result<TreeQuery, TreeError> {
        Ok(TreeQuery {
            root: Node::build(ast, sources)?,
        })
    }

    /// Hydrates: every row of the result tree, flat.
    pub fn hydrate(&mut self, sources: &dyn Sources) -> Result<Vec<TreeOutput>, TreeError> {
        let mut out = Vec::new();
        self.root.hydrate(sources, &mut out)?;
        Ok(out)
    }

    /// Pushes a change to `table` (already applied to its source).
    pub fn push(
        &mut self,
        table: &str,
        change: &RowChange,
        sources: &dyn Sources,
    ) -> Result<Vec<TreeOutput>, TreeError> {
        let mut out = Vec::new();
        self.root.push(table, change, sources, &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use zc_types::{ColumnSpec, TableName, TableSpec, TypeKind};

    use super::*;
    use crate::source::MemorySource;

    struct Db {
        issue: MemorySource,
        comment: MemorySource,
    }

    impl Sources for Db {
        fn source(&self, table: &str) -> Option<&dyn Source> {
            match table {
                "issue" => Some(&self.issue),
                "comment" => Some(&self.comment),
                _ => None,
            }
        }
    }

    fn table(name: &str, cols: &[&str]) -> MemorySource {
        let columns = cols
            .iter()
            .map(|n| ColumnSpec::new(*n, TypeKind::Int))
            .collect();
        MemorySource::new(TableSpec::new(
            TableName::new("public", name),
            columns,
            vec![0],
        ))
    }

    type View = BTreeMap<(String, String), (usize, Row)>;

    fn apply(view: &mut View, outs: &[TreeOutput]) {
        for (t, c) in outs {
            let key = |r: &Row| (t.clone(), format!("{:?}", r[0]));
            match c {
                RowChange::Add(r) => {
                    let e = view.entry(key(r)).or_insert((0, r.clone()));
                    e.0 += 1;
                    e.1 = r.clone();
                }
                RowChange::Remove(r) => {
                    let k = key(r);
                    let e = view
                        .get_mut(&k)
                        .unwrap_or_else(|| panic!("remove of absent {k:?}"));
                    e.0 -= 1;
                    if e.0 == 0 {
                        view.remove(&k);
                    }
                }
                RowChange::Edit { new, .. } => {
                    let k = key(new);
                    view.get_mut(&k)
                        .unwrap_or_else(|| panic!("edit of absent {k:?}"))
                        .1 = new.clone();
                }
            }
        }
    }

    fn query() -> impl Strategy<Value = String> {
        (0u64..4, any::<bool>(), 0u64..3, any::<bool>(), any::<bool>(), 0i64..3).prop_map(|(limit, use_limit, child_limit, child_desc, nested, filter)| {
            let nested = if nested {
                r#","related":[{"correlation":{"parentField":["issue"],"childField":["id"]},"subquery":{"table":"issue","alias":"parent"}}]"#
            } else {
                ""
            };
            let child_limit = if child_limit > 0 { format!(r#","limit":{child_limit}"#) } else { String::new() };
            let limit = if use_limit { format!(r#","limit":{limit}"#) } else { String::new() };
            format!(
                r#"{{"table":"issue","where":{{"type":"simple","left":{{"type":"column","name":"a"}},"right":{{"type":"literal","value":{filter}}},"op":"!="}},"related":[{{"correlation":{{"parentField":["id"],"childField":["issue"]}},"subquery":{{"table":"comment","alias":"comments"{child_limit},"orderBy":[["a","{}"]]{nested}}}}}]{limit},"orderBy":[["a","asc"]]}}"#,
                if child_desc { "desc" } else { "asc" }
            )
        })
    }

    fn change(
        db: &mut Db,
        table_pick: bool,
        id: i64,
        x: i64,
        y: i64,
        remove: bool,
    ) -> Option<(String, RowChange)> {
        let (name, src, row) = if table_pick {
            (
                "issue",
                &mut db.issue,
                vec![Value::Int(id), Value::Int(x), Value::Int(y)],
            )
        } else {
            (
                "comment",
                &mut db.comment,
                vec![Value::Int(id), Value::Int(x % 5), Value::Int(y)],
            )
        };
        if remove {
            return src
                .remove(&row)
                .map(|old| (name.to_string(), RowChange::Remove(old)));
        }
        let c = match src.upsert(row.clone()).ok()? {
            Some(old) => RowChange::Edit { old, new: row },
            None => RowChange::Add(row),
        };
        Some((name.to_string(), c))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn tree_matches_from_scratch_evaluation(
            q in query(),
            init in proptest::collection::vec((any::<bool>(), 0i64..6, 0i64..4, 0i64..4), 0..12),
            ops in proptest::collection::vec((any::<bool>(), 0i64..6, 0i64..4, 0i64..4, any::<bool>()), 1..25),
        ) {
            let ast = zc_protocol::ast::parse(&q).unwrap();
            let mut db = Db { issue: table("issue", &["id", "a", "b"]), comment: table("comment", &["id", "issue", "a"]) };
            for (t, id, x, y) in init {
                change(&mut db, t, id, x, y, false);
            }
            let mut tq = TreeQuery::build(&ast, &db).unwrap();
            let mut view = View::new();
            apply(&mut view, &tq.hydrate(&db).unwrap());
            for (t, id, x, y, remove) in ops {
                let Some((table, c)) = change(&mut db, t, id, x, y, remove) else { continue };
                let outs = tq.push(&table, &c, &db).unwrap();
                apply(&mut view, &outs);
                let mut fresh = TreeQuery::build(&ast, &db).unwrap();
                let mut expected = View::new();
                apply(&mut expected, &fresh.hydrate(&db).unwrap());
                prop_assert_eq!(&view, &expected, "query {} after {} {:?}", q, table, c);
            }
        }
    }

    #[test]
    fn bad_trees_are_errors() {
        let db = Db {
            issue: table("issue", &["id", "a", "b"]),
            comment: table("comment", &["id", "issue", "a"]),
        };
        let build =
            |s: &str| TreeQuery::build(&zc_protocol::ast::parse(s).unwrap(), &db).map(|_| ());
        assert!(matches!(
            build(r#"{"table":"nope"}"#),
            Err(TreeError::UnknownTable(_))
        ));
        assert!(matches!(
            build(
                r#"{"table":"issue","related":[{"correlation":{"parentField":["id"],"childField":["zz"]},"subquery":{"table":"comment"}}]}"#
            ),
            Err(TreeError::Correlation { .. })
        ));
    }
}

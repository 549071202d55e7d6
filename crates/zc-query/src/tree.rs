//! Queries with `related` subqueries and `EXISTS` / `NOT EXISTS` conditions: a tree of
//! [`Pipeline`]s.
//!
//! - A related subquery keeps one pipeline per distinct correlation value among its parent
//!   rows (Zero's partitioned join), created when the first parent row with that value
//!   enters the result and dropped when the last one leaves.
//! - A correlated subquery condition (also inside `or`, also nested) is evaluated per row
//!   by reading the child table through its correlation. When a change to a table that a
//!   condition reads arrives, the parent rows it may flip are found through the same
//!   correlations, their membership before the change (read through an overlay that undoes
//!   it) and after it are compared, and only flips enter the parent's pipeline.
//! - As in zero-cache, the rows a condition's subquery matches are synced too, capped at 3
//!   per parent row in the result, so that the client can evaluate the condition itself:
//!   each condition also acts as a hidden related subquery. Conditions of permission rules
//!   (`system: "permissions"`) are not: their rows are never sent.
//!
//! A change is pushed to the partitions that exist *before* the node's own pipeline sees it;
//! partitions created while handling the change hydrate from the source, which already holds
//! the change, so nothing is counted twice (`tree_matches_from_scratch_evaluation`).
//!
//! Output is flat: `(table, change)` pairs. A row under several parents (or queries) is
//! added once per partition that holds it; consumers keep a reference count per row.

use std::collections::{BTreeMap, BTreeSet};

use zc_protocol::ast::{Ast, CorrelatedSubquery, ExistsOp, System};
use zc_types::{Row, TableSpec, Value};

use crate::compare::compare_rows;
use crate::filter::{FilterError, Predicate};
use crate::pipeline::{BuildError, Pipeline, RowChange};
pub use crate::source::Sources;
use crate::source::{
    RowStream, ScanRequest, Source, SourceError, after_start, complete_ordering, satisfies,
};

/// Rows zero-cache syncs per parent for a client EXISTS condition.
pub const EXISTS_LIMIT: u64 = 3;

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

fn source_of<'s>(sources: &'s dyn Sources, table: &str) -> Result<&'s dyn Source, SourceError> {
    sources
        .source(table)
        .ok_or_else(|| SourceError::Read(format!("no source for table \"{table}\"")))
}

fn column_positions(spec: &TableSpec, names: &[String]) -> Option<Vec<usize>> {
    names
        .iter()
        .map(|n| spec.columns.iter().position(|c| &c.name == n))
        .collect()
}

fn same_key(key: &[usize], a: &[Value], b: &[Value]) -> bool {
    key.iter().all(|&k| a.get(k) == b.get(k))
}

/// The constraint a correlation puts on the other side, or `None` when a value is NULL
/// (NULL never correlates).
fn correlate(row: &[Value], from: &[usize], to: &[usize]) -> Option<Vec<(usize, Value)>> {
    from.iter()
        .zip(to)
        .map(|(&f, &t)| match row.get(f) {
            Some(v) if !v.is_null() => Some((t, v.clone())),
            _ => None,
        })
        .collect()
}

/// A correlated subquery condition, compiled.
#[derive(Debug, Clone)]
struct ExistsCheck {
    parent_cols: Vec<usize>,
    child_cols: Vec<usize>,
    child: Level,
    /// `limit: 0`: the subquery never has rows.
    never: bool,
}

/// The filter of one AST level: which rows of its table pass its `where`.
#[derive(Debug, Clone)]
struct Level {
    table: String,
    key: Vec<usize>,
    predicate: Option<Predicate>,
    exists: Vec<ExistsCheck>,
    /// Tables (other than through this level's own rows) whose changes can flip rows here.
    reads: BTreeSet<String>,
}

impl Level {
    fn compile(ast: &Ast, sources: &dyn Sources) -> Result<Level, TreeError> {
        let source = sources
            .source(&ast.table)
            .ok_or_else(|| TreeError::UnknownTable(ast.table.clone()))?;
        let spec = source.spec();
        let columns: Vec<String> = spec.columns.iter().map(|c| c.name.clone()).collect();
        let mut subqueries: Vec<CorrelatedSubquery> = Vec::new();
        let predicate = ast
            .where_
            .as_ref()
            .map(|w| {
                Predicate::compile_with(w, &columns, &mut |csq, _op: ExistsOp| {
                    subqueries.push(csq.clone());
                    Ok::<usize, FilterError>(subqueries.len() - 1)
                })
            })
            .transpose()
            .map_err(|e| TreeError::Build {
                table: ast.table.clone(),
                source: BuildError::Filter(e),
            })?;
        let mut exists = Vec::new();
        let mut reads = BTreeSet::new();
        for csq in &subqueries {
            let (parent_cols, child_cols) = correlation_columns(ast, csq, spec, sources)?;
            let child = Level::compile(&csq.subquery, sources)?;
            reads.insert(child.table.clone());
            reads.extend(child.reads.iter().cloned());
            exists.push(ExistsCheck {
                parent_cols,
                child_cols,
                never: csq.subquery.limit == Some(0),
                child,
            });
        }
        Ok(Level {
            table: ast.table.clone(),
            key: spec.key.clone(),
            predicate,
            exists,
            reads,
        })
    }

    /// True when `row` passes this level's `where` in the state `sources` shows.
    fn passes(&self, row: &[Value], sources: &dyn Sources) -> Result<bool, SourceError> {
        match &self.predicate {
            None => Ok(true),
            Some(p) => p.eval_with(row, &mut |i, r| self.holds(i, r, sources)),
        }
    }

    /// True when condition `i` finds a child row for `row`.
    fn holds(&self, i: usize, row: &[Value], sources: &dyn Sources) -> Result<bool, SourceError> {
        let Some(check) = self.exists.get(i) else {
            return Ok(false);
        };
        if check.never {
            return Ok(false);
        }
        let Some(constraint) = correlate(row, &check.parent_cols, &check.child_cols) else {
            return Ok(false);
        };
        let child = source_of(sources, &check.child.table)?;
        for r in child.scan(&ScanRequest {
            constraint: &constraint,
            ..ScanRequest::default()
        })? {
            if check.child.passes(&r?, sources)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Rows of this level's table (in the current state) whose membership a change to
    /// `table` (`changed`: its old and new rows) may have flipped through a condition.
    fn affected(
        &self,
        table: &str,
        changed: &[&Row],
        sources: &dyn Sources,
    ) -> Result<Vec<Row>, SourceError> {
        let mut out: Vec<Row> = Vec::new();
        for check in &self.exists {
            let child = &check.child;
            if child.table != table && !child.reads.contains(table) {
                continue;
            }
            let mut child_rows: Vec<Row> = Vec::new();
            if child.table == table {
                child_rows.extend(changed.iter().map(|r| (*r).clone()));
            }
            child_rows.extend(child.affected(table, changed, sources)?);
            let parent = source_of(sources, &self.table)?;
            for c in &child_rows {
                let Some(constraint) = correlate(c, &check.child_cols, &check.parent_cols) else {
                    continue;
                };
                for p in parent.scan(&ScanRequest {
                    constraint: &constraint,
                    ..ScanRequest::default()
                })? {
                    let p = p?;
                    if !out.iter().any(|o| same_key(&self.key, o, &p)) {
                        out.push(p);
                    }
                }
            }
        }
        Ok(out)
    }
}

fn correlation_columns(
    parent: &Ast,
    r: &CorrelatedSubquery,
    parent_spec: &TableSpec,
    sources: &dyn Sources,
) -> Result<(Vec<usize>, Vec<usize>), TreeError> {
    let child_source = sources
        .source(&r.subquery.table)
        .ok_or_else(|| TreeError::UnknownTable(r.subquery.table.clone()))?;
    let bad = || TreeError::Correlation {
        parent: parent.table.clone(),
        child: r.subquery.table.clone(),
    };
    let parent_cols = column_positions(parent_spec, &r.correlation.parent_field).ok_or_else(bad)?;
    let child_cols =
        column_positions(child_source.spec(), &r.correlation.child_field).ok_or_else(bad)?;
    if parent_cols.len() != child_cols.len() || parent_cols.is_empty() {
        return Err(bad());
    }
    Ok((parent_cols, child_cols))
}

/// A table's source as it was before one change: the change's new row hidden, its old row
/// shown again.
struct Undo<'a> {
    inner: &'a dyn Source,
    old: Option<&'a Row>,
    new: Option<&'a Row>,
}

impl Source for Undo<'_> {
    fn spec(&self) -> &TableSpec {
        self.inner.spec()
    }

    fn scan(&self, request: &ScanRequest<'_>) -> Result<RowStream<'_>, SourceError> {
        let spec = self.inner.spec();
        let key = spec.key.clone();
        let full = complete_ordering(spec, request.ordering);
        let hide = self.new.cloned();
        let mut pending = self
            .old
            .filter(|o| satisfies(o, request.constraint) && after_start(o, request.start, &full))
            .cloned();
        let mut rows = self.inner.scan(request)?.filter(move |r| match (r, &hide) {
            (Ok(r), Some(h)) => !same_key(&key, r, h),
            _ => true,
        });
        let mut next: Option<Result<Row, SourceError>> = rows.next();
        Ok(Box::new(std::iter::from_fn(move || {
            match (&next, &pending) {
                (Some(Ok(r)), Some(o)) if compare_rows(o, r, &full).is_lt() => {
                    pending.take().map(Ok)
                }
                (Some(_), _) => std::mem::replace(&mut next, rows.next()),
                (None, _) => pending.take().map(Ok),
            }
        })))
    }
}

/// All sources as they were before one change to `table`.
struct Before<'a> {
    inner: &'a dyn Sources,
    table: &'a str,
    undo: Option<Undo<'a>>,
}

impl Sources for Before<'_> {
    fn source(&self, table: &str) -> Option<&dyn Source> {
        if table == self.table {
            self.undo.as_ref().map(|u| u as &dyn Source)
        } else {
            self.inner.source(table)
        }
    }
}

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
    level: Level,
    pipeline: Pipeline,
    /// The node's current rows by encoded key.
    rows: BTreeMap<Vec<u8>, Row>,
    slots: Vec<Slot>,
}

fn encode(values: &[&Value]) -> Vec<u8> {
    // serde_json of the values is an unambiguous, comparable-enough key for a map.
    serde_json::to_vec(&values.iter().map(|v| v.to_json()).collect::<Vec<_>>()).unwrap_or_default()
}

fn encode_cols(row: &[Value], cols: &[usize]) -> Vec<u8> {
    encode(
        &cols
            .iter()
            .map(|&c| row.get(c).unwrap_or(&Value::Null))
            .collect::<Vec<_>>(),
    )
}

impl Node {
    fn build(
        ast: &Ast,
        constraint: Vec<(usize, Value)>,
        sources: &dyn Sources,
    ) -> Result<Node, TreeError> {
        let source = sources
            .source(&ast.table)
            .ok_or_else(|| TreeError::UnknownTable(ast.table.clone()))?;
        let level = Level::compile(ast, sources)?;
        let pipeline =
            Pipeline::with_parts(ast, source.spec(), level.predicate.clone(), constraint).map_err(
                |e| TreeError::Build {
                    table: ast.table.clone(),
                    source: e,
                },
            )?;
        let mut slots = Vec::new();
        for r in ast.related.iter().flatten() {
            slots.push(Self::slot(ast, r, source.spec(), sources, None)?);
        }
        // The rows each condition's subquery matches are synced too (capped), except for
        // permission rules: the client never evaluates those, and their rows may be ones
        // the user cannot read.
        let mut conditions = Vec::new();
        if let Some(w) = &ast.where_ {
            collect_subqueries(w, &mut conditions);
        }
        for r in conditions {
            if r.system == Some(System::Permissions) {
                continue;
            }
            slots.push(Self::slot(
                ast,
                r,
                source.spec(),
                sources,
                Some(EXISTS_LIMIT),
            )?);
        }
        Ok(Node {
            level,
            pipeline,
            rows: BTreeMap::new(),
            slots,
        })
    }

    fn slot(
        parent: &Ast,
        r: &CorrelatedSubquery,
        parent_spec: &TableSpec,
        sources: &dyn Sources,
        cap: Option<u64>,
    ) -> Result<Slot, TreeError> {
        let (parent_cols, child_cols) = correlation_columns(parent, r, parent_spec, sources)?;
        let mut subquery = (*r.subquery).clone();
        if let Some(cap) = cap {
            subquery.limit = Some(subquery.limit.map_or(cap, |l| l.min(cap)));
        }
        Ok(Slot {
            parent_cols,
            child_cols,
            child_table: r.subquery.table.clone(),
            subquery,
            partitions: BTreeMap::new(),
        })
    }

    fn table(&self) -> &str {
        &self.level.table
    }

    fn row_key(&self, row: &[Value]) -> Vec<u8> {
        encode_cols(row, &self.level.key)
    }

    /// True when `row` belongs to this node's query in the state `sources` shows.
    fn admits(&self, row: &[Value], sources: &dyn Sources) -> Result<bool, SourceError> {
        let level = &self.level;
        self.pipeline
            .admits(row, &mut |i, r| level.holds(i, r, sources))
    }

    fn hydrate(
        &mut self,
        sources: &dyn Sources,
        out: &mut Vec<TreeOutput>,
    ) -> Result<(), TreeError> {
        let source = source_of(sources, self.table())?;
        let level = &self.level;
        let rows = self
            .pipeline
            .hydrate_with(source, &mut |i, r| level.holds(i, r, sources))?;
        for row in rows {
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
        out.push((self.table().to_owned(), RowChange::Add(row.clone())));
        self.rows.insert(self.row_key(&row), row);
        Ok(())
    }

    fn remove_row(&mut self, row: &Row, out: &mut Vec<TreeOutput>) {
        self.rows.remove(&self.row_key(row));
        out.push((self.table().to_owned(), RowChange::Remove(row.clone())));
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
        let key = encode_cols(parent, &s.parent_cols);
        if let Some(p) = s.partitions.get_mut(&key) {
            p.refs += 1;
            return Ok(());
        }
        // The partition: the subquery's rows whose child columns equal the parent's values
        // (none when one of them is NULL).
        let constraint: Vec<(usize, Value)> = s
            .child_cols
            .iter()
            .zip(&s.parent_cols)
            .map(|(&c, &p)| (c, parent.get(p).cloned().unwrap_or(Value::Null)))
            .collect();
        let mut node = Node::build(&s.subquery, constraint, sources)?;
        node.hydrate(sources, out)?;
        s.partitions.insert(key, Partition { refs: 1, node });
        Ok(())
    }

    fn release(&mut self, slot: usize, parent: &Row, out: &mut Vec<TreeOutput>) {
        let s = &mut self.slots[slot];
        let key = encode_cols(parent, &s.parent_cols);
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
            out.push((self.table().to_owned(), RowChange::Remove(row.clone())));
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
        let (old, new) = match change {
            RowChange::Add(r) => (None, Some(r)),
            RowChange::Remove(r) => (Some(r), None),
            RowChange::Edit { old, new } => (Some(old), Some(new)),
        };
        let changed: Vec<&Row> = old.into_iter().chain(new).collect();
        // Existing partitions first: ones created below hydrate with the change included.
        for s in &mut self.slots {
            // Every partition of a slot runs the same subquery: one tells whether any of
            // them reads more than the child table.
            let deep = s
                .partitions
                .values()
                .next()
                .is_some_and(|p| !p.node.slots.is_empty() || !p.node.level.reads.is_empty());
            if deep {
                for p in s.partitions.values_mut() {
                    p.node.push(table, change, sources, out)?;
                }
            } else if s.child_table == table {
                // Only the partitions the old or new row correlates with can change.
                let mut keys: Vec<Vec<u8>> = changed
                    .iter()
                    .map(|r| encode_cols(r, &s.child_cols))
                    .collect();
                keys.dedup();
                for k in keys {
                    if let Some(p) = s.partitions.get_mut(&k) {
                        p.node.push(table, change, sources, out)?;
                    }
                }
            }
            // Otherwise no partition reads `table`.
        }
        let own = table == self.table();
        let reads = self.level.reads.contains(table);
        if !own && !reads {
            return Ok(());
        }
        let source = source_of(sources, self.table())?;
        let before = Before {
            inner: sources,
            table,
            undo: Some(Undo {
                inner: source_of(sources, table)?,
                old,
                new,
            }),
        };
        // Membership changes: (old version if it belonged, new version if it belongs).
        let mut flips: Vec<(Option<Row>, Option<Row>)> = Vec::new();
        if own {
            let was = match old {
                Some(o) if self.admits(o, &before)? => Some(o.clone()),
                _ => None,
            };
            let is = match new {
                Some(n) if self.admits(n, sources)? => Some(n.clone()),
                _ => None,
            };
            flips.push((was, is));
        }
        if reads {
            for p in self.level.affected(table, &changed, sources)? {
                if own && changed.iter().any(|c| same_key(&self.level.key, c, &p)) {
                    continue;
                }
                let was = self.admits(&p, &before)?;
                let is = self.admits(&p, sources)?;
                if was != is {
                    flips.push((was.then(|| p.clone()), is.then_some(p)));
                }
            }
        }
        for (was, is) in flips {
            let level = &self.level;
            let outs = self
                .pipeline
                .apply(was.as_ref(), is.as_ref(), source, &mut |i, r| {
                    level.holds(i, r, sources)
                })?;
            for c in outs {
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
                        out.push((self.table().to_owned(), RowChange::Edit { old, new }));
                    }
                }
            }
        }
        Ok(())
    }
}

fn collect_subqueries<'a>(
    cond: &'a zc_protocol::ast::Condition,
    out: &mut Vec<&'a CorrelatedSubquery>,
) {
    use zc_protocol::ast::Condition;
    match cond {
        Condition::And { conditions } | Condition::Or { conditions } => {
            for c in conditions {
                collect_subqueries(c, out);
            }
        }
        Condition::CorrelatedSubquery { related, .. } => out.push(related),
        Condition::Simple { .. } => {}
    }
}

/// An incrementally maintained query with related subqueries and subquery conditions.
#[derive(Debug)]
pub struct TreeQuery {
    root: Node,
}

impl TreeQuery {
    /// Builds the query's pipelines (no hydration yet).
    pub fn build(ast: &Ast, sources: &dyn Sources) -> Result<TreeQuery, TreeError> {
        Ok(TreeQuery {
            root: Node::build(ast, Vec::new(), sources)?,
        })
    }

    /// Hydrates: every row of the result tree, flat.
    pub fn hydrate(&mut self, sources: &dyn Sources) -> Result<Vec<TreeOutput>, TreeError> {
        let mut out = Vec::new();
        self.root.hydrate(sources, &mut out)?;
        Ok(out)
    }

    /// Pushes a change to `table`. `sources` must show the state right after this change
    /// and before any later one (see [`Source`]).
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

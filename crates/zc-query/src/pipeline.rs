//! Single-table pipelines: filter → start bound (skip) → ordered limit (take), hydrated from
//! a [`Source`] and then maintained incrementally from row changes.
//!
//! ```text
//!  source change ──▶ Filter (predicate on old/new row) ──▶ Skip (row after `start`?)
//!                ──▶ Take (window of `limit` rows with its bound; refill from the source
//!                    after a row leaves a full window) ──▶ output: Add / Remove / Edit
//! ```
//!
//! A change is never answered by running the query again: a row is tested against the
//! predicate and the window, and only a row leaving a full window costs one ordered source
//! read (starting at the window's last row) to find the row that enters.
//!
//! Invariant: after every [`Pipeline::push`], the rows added minus the rows removed so far
//! equal the query's result over the source (`pipeline_matches_brute_force`).

use std::cmp::Ordering;

use zc_protocol::ast::{Ast, Direction, SimpleOp};
use zc_types::{Row, TableSpec, Value};

use crate::compare::compare_rows;
use crate::filter::{FilterError, Predicate, literal_value};
use crate::source::{ScanRequest, Source, SourceError, after_start, complete_ordering, satisfies};

/// A query that cannot be built into a pipeline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The AST names another table than the source's.
    #[error("query is on table \"{query}\" but the source is \"{source_table}\"")]
    WrongTable {
        /// The AST's table.
        query: String,
        /// The source's table.
        source_table: String,
    },
    /// A column in `orderBy` or `start` the table does not have.
    #[error("unknown column \"{0}\" in orderBy or start")]
    UnknownColumn(String),
    /// A bad `where`.
    #[error("invalid where clause")]
    Filter(#[from] FilterError),
    /// Not yet supported by this pipeline (related subqueries).
    #[error("{0} is not supported by single-table pipelines")]
    Unsupported(&'static str),
}

/// A change to a table's rows (the source has already applied it when it is pushed).
#[derive(Debug, Clone, PartialEq)]
pub enum RowChange {
    /// A row was inserted.
    Add(Row),
    /// A row was deleted.
    Remove(Row),
    /// A row was updated (same key).
    Edit {
        /// Before.
        old: Row,
        /// After.
        new: Row,
    },
}

/// A change to the query's result.
pub type Output = RowChange;

/// How a pipeline asks whether a row passes correlated subquery condition `index`.
pub(crate) type ExistsFn<'a> = dyn FnMut(usize, &[Value]) -> Result<bool, SourceError> + 'a;

fn no_subqueries(_: usize, _: &[Value]) -> Result<bool, SourceError> {
    Ok(false)
}

/// An incrementally maintained single-table query.
#[derive(Debug)]
pub struct Pipeline {
    predicate: Option<Predicate>,
    ordering: Vec<(usize, bool)>,
    start: Option<(Row, bool)>,
    limit: Option<usize>,
    /// Equalities every row must meet (a related subquery's correlation to its parent).
    constraint: Vec<(usize, Value)>,
    /// `column = literal` conditions the predicate requires (for the source's choice of
    /// index; see [`ScanRequest::hints`]).
    hints: Vec<(usize, Value)>,
    /// With a limit: the rows in the window, in order.
    window: Vec<Row>,
    key: Vec<usize>,
}

/// The `column = literal` comparisons (non-null literal) that every row passing `p` meets:
/// `p` itself or members of a top-level `and`.
fn required_equalities(p: &Predicate) -> Vec<(usize, Value)> {
    let one = |p: &Predicate| match p {
        Predicate::Compare {
            column,
            op: SimpleOp::Eq,
            right,
            ..
        } => match right.as_slice() {
            [v] if !v.is_null() => Some((*column, v.clone())),
            _ => None,
        },
        _ => None,
    };
    match p {
        Predicate::And(all) => all.iter().filter_map(one).collect(),
        other => one(other).into_iter().collect(),
    }
}

fn check_table(ast: &Ast, spec: &TableSpec) -> Result<(), BuildError> {
    if ast.table != spec.name.zero_name() && ast.table != spec.name.name {
        return Err(BuildError::WrongTable {
            query: ast.table.clone(),
            source_table: spec.name.zero_name(),
        });
    }
    Ok(())
}

impl Pipeline {
    /// Builds a pipeline for `ast` over `source` (no hydration yet).
    pub fn build(ast: &Ast, source: &dyn Source) -> Result<Pipeline, BuildError> {
        let spec = source.spec();
        check_table(ast, spec)?;
        if ast.related.as_ref().is_some_and(|r| !r.is_empty()) {
            return Err(BuildError::Unsupported("related"));
        }
        let columns: Vec<String> = spec.columns.iter().map(|c| c.name.clone()).collect();
        let predicate = ast
            .where_
            .as_ref()
            .map(|w| Predicate::compile(w, &columns))
            .transpose()?;
        Self::with_parts(ast, spec, predicate, Vec::new())
    }

    /// A pipeline with an already compiled predicate (which may hold subquery conditions)
    /// and a constraint; `related` is ignored.
    pub(crate) fn with_parts(
        ast: &Ast,
        spec: &TableSpec,
        predicate: Option<Predicate>,
        constraint: Vec<(usize, Value)>,
    ) -> Result<Pipeline, BuildError> {
        check_table(ast, spec)?;
        let columns: Vec<String> = spec.columns.iter().map(|c| c.name.clone()).collect();
        let position = |name: &str| {
            columns
                .iter()
                .position(|c| c == name)
                .ok_or_else(|| BuildError::UnknownColumn(name.into()))
        };
        let mut ordering = Vec::new();
        for part in ast.order_by.iter().flatten() {
            ordering.push((position(&part.0)?, part.1 == Direction::Desc));
        }
        let ordering = complete_ordering(spec, &ordering);
        let start = match &ast.start {
            Some(b) => {
                let mut row = vec![Value::Null; columns.len()];
                for (name, v) in &b.row {
                    row[position(name)?] = literal_value(v);
                }
                Some((row, b.exclusive))
            }
            None => None,
        };
        let hints = predicate
            .as_ref()
            .map(required_equalities)
            .unwrap_or_default();
        Ok(Pipeline {
            hints,
            predicate,
            ordering,
            start,
            limit: ast.limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX)),
            constraint,
            window: Vec::new(),
            key: spec.key.clone(),
        })
    }

    /// The complete ordering (with the key) of this pipeline's rows.
    pub fn ordering(&self) -> &[(usize, bool)] {
        &self.ordering
    }

    /// True when the row passes the constraint, the start bound and the filter.
    pub(crate) fn admits(
        &self,
        row: &[Value],
        exists: &mut ExistsFn<'_>,
    ) -> Result<bool, SourceError> {
        if !satisfies(row, &self.constraint)
            || !after_start(
                row,
                self.start.as_ref().map(|(b, e)| (b.as_slice(), *e)),
                &self.ordering,
            )
        {
            return Ok(false);
        }
        match &self.predicate {
            None => Ok(true),
            Some(p) => p.eval_with(row, exists),
        }
    }

    fn cmp(&self, a: &[Value], b: &[Value]) -> Ordering {
        compare_rows(a, b, &self.ordering)
    }

    fn same_key(&self, a: &[Value], b: &[Value]) -> bool {
        self.key.iter().all(|&k| a.get(k) == b.get(k))
    }

    /// Reads the first `n` admitted rows after `after` (or from the start).
    fn fetch(
        &self,
        source: &dyn Source,
        after: Option<&[Value]>,
        n: usize,
        exists: &mut ExistsFn<'_>,
    ) -> Result<Vec<Row>, SourceError> {
        let start = match (after, &self.start) {
            (Some(a), _) => Some((a, true)),
            (None, Some((b, excl))) => Some((b.as_slice(), *excl)),
            (None, None) => None,
        };
        let mut out = Vec::new();
        // A NULL in the constraint (a parent's correlation value) matches nothing.
        if n == 0 || self.constraint.iter().any(|(_, v)| v.is_null()) {
            return Ok(out);
        }
        // Sources return rows from the bound on; the predicate is applied here.
        for row in source.scan(&ScanRequest {
            ordering: &self.ordering,
            start,
            constraint: &self.constraint,
            hints: &self.hints,
        })? {
            let row = row?;
            if self.admits(&row, exists)? {
                out.push(row);
                if out.len() >= n {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Hydrates: the query's rows, in order.
    pub fn hydrate(&mut self, source: &dyn Source) -> Result<Vec<Row>, SourceError> {
        self.hydrate_with(source, &mut no_subqueries)
    }

    pub(crate) fn hydrate_with(
        &mut self,
        source: &dyn Source,
        exists: &mut ExistsFn<'_>,
    ) -> Result<Vec<Row>, SourceError> {
        let rows = self.fetch(source, None, self.limit.unwrap_or(usize::MAX), exists)?;
        if self.limit.is_some() {
            self.window = rows.clone();
        }
        Ok(rows)
    }

    /// Pushes one change (already applied to `source`) and returns the result's changes.
    pub fn push(
        &mut self,
        change: &RowChange,
        source: &dyn Source,
    ) -> Result<Vec<Output>, SourceError> {
        let (old, new) = match change {
            RowChange::Add(r) => (None, Some(r)),
            RowChange::Remove(r) => (Some(r), None),
            RowChange::Edit { old, new } => (Some(old), Some(new)),
        };
        let exists = &mut no_subqueries;
        let was = match old {
            Some(o) if self.admits(o, exists)? => Some(o),
            _ => None,
        };
        let is = match new {
            Some(n) if self.admits(n, exists)? => Some(n),
            _ => None,
        };
        self.apply(was, is, source, exists)
    }

    /// Applies a change of membership: `was` is the row's old version if it belonged to the
    /// query before, `is` its new version if it belongs now (the caller evaluated both, each
    /// against its own state). Adding a row the window already holds replaces it, removing
    /// one it does not hold is a no-op, so a caller may push the rows that one upstream
    /// change affects in any order.
    pub(crate) fn apply(
        &mut self,
        was: Option<&Row>,
        is: Option<&Row>,
        source: &dyn Source,
        exists: &mut ExistsFn<'_>,
    ) -> Result<Vec<Output>, SourceError> {
        let Some(limit) = self.limit else {
            // No window: membership is the answer.
            return Ok(match (was, is) {
                (Some(o), Some(n)) if o == n => vec![],
                (Some(o), Some(n)) => vec![RowChange::Edit {
                    old: o.clone(),
                    new: n.clone(),
                }],
                (Some(o), None) => vec![RowChange::Remove(o.clone())],
                (None, Some(n)) => vec![RowChange::Add(n.clone())],
                (None, None) => vec![],
            });
        };
        let was_full = self.window.len() >= limit;
        // A full window's last row bounds it: every admitted row outside the window sorts
        // after it. A window that was not full held every admitted row.
        let inside = is.is_some_and(|n| {
            !was_full || self.window.last().is_some_and(|l| self.cmp(n, l).is_lt())
        });
        // What leaves and what enters the window, matched by key below (no copy of the
        // window, no comparison of every row with every other).
        let mut left: Vec<Row> = Vec::new();
        let mut entered: Vec<Row> = Vec::new();
        for row in [was, is].into_iter().flatten() {
            if let Some(i) = self.window.iter().position(|r| self.same_key(r, row)) {
                left.push(self.window.remove(i));
            }
        }
        if let Some(n) = is.filter(|_| inside) {
            let at = self.window.partition_point(|r| self.cmp(r, n).is_lt());
            self.window.insert(at, n.clone());
            entered.push(n.clone());
            if self.window.len() > limit {
                left.extend(self.window.drain(limit..));
            }
        }
        if was_full && self.window.len() < limit {
            // A row left a full window: the next admitted rows after the window enter.
            let after = self.window.last().cloned();
            let need = limit - self.window.len();
            let more = self.fetch(source, after.as_deref(), need, exists)?;
            for r in more {
                if !self.window.iter().any(|w| self.same_key(w, &r)) {
                    entered.push(r.clone());
                    self.window.push(r);
                }
            }
        }
        Ok(self.changes(left, entered))
    }

    /// The output of rows that `left` and `entered` the window: a key in both is an edit
    /// (or nothing when the row is unchanged). Removals and edits first, then additions.
    fn changes(&self, left: Vec<Row>, mut entered: Vec<Row>) -> Vec<Output> {
        let mut out = Vec::with_capacity(left.len() + entered.len());
        for old in left {
            match entered.iter().position(|n| self.same_key(n, &old)) {
                Some(i) => {
                    let new = entered.remove(i);
                    if new != old {
                        out.push(RowChange::Edit { old, new });
                    }
                }
                None => out.push(RowChange::Remove(old)),
            }
        }
        out.extend(entered.into_iter().map(RowChange::Add));
        out
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use zc_types::{ColumnSpec, TableName, TableSpec, TypeKind};

    use super::*;
    use crate::source::MemorySource;

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

    /// The query's result by brute force: filter, order, start, limit over all rows.
    fn brute_force(p: &Pipeline, source: &MemorySource) -> Vec<Row> {
        let mut rows: Vec<Row> = source
            .scan(&ScanRequest::default())
            .unwrap()
            .map(Result::unwrap)
            .filter(|r| p.admits(r, &mut no_subqueries).unwrap())
            .collect();
        rows.sort_by(|a, b| p.cmp(a, b));
        rows.truncate(p.limit.unwrap_or(usize::MAX));
        rows
    }

    fn apply(view: &mut Vec<Row>, out: &[Output], key: usize) {
        for o in out {
            match o {
                RowChange::Add(r) => {
                    assert!(
                        !view.iter().any(|v| v[key] == r[key]),
                        "add of a present row {r:?}"
                    );
                    view.push(r.clone());
                }
                RowChange::Remove(r) => {
                    let i = view
                        .iter()
                        .position(|v| v == r)
                        .expect("remove of an absent row");
                    view.remove(i);
                }
                RowChange::Edit { old, new } => {
                    let i = view
                        .iter()
                        .position(|v| v == old)
                        .expect("edit of an absent row");
                    view[i] = new.clone();
                }
            }
        }
    }

    fn value_json(i: u8) -> String {
        match i % 4 {
            0 => "null".into(),
            1 => format!("{}", i % 5),
            2 => format!("\"{}\"", ["a", "b", "ab", "é"][usize::from(i % 4)]),
            _ => format!("{}", i % 3),
        }
    }

    fn query() -> impl Strategy<Value = String> {
        (
            proptest::option::of((0u8..2, prop_oneof![Just("="), Just("!="), Just("<"), Just(">="), Just("IS"), Just("IS NOT"), Just("LIKE"), Just("IN")], any::<u8>())),
            proptest::option::of((0u8..3, any::<bool>())),
            proptest::option::of(0u64..5),
            proptest::option::of((0i64..6, any::<bool>())),
        )
            .prop_map(|(filter, order, limit, start)| {
                let mut parts = vec![r#""table":"issue""#.to_string()];
                if let Some((col, op, v)) = filter {
                    let col = ["a", "b"][usize::from(col)];
                    let right = match op {
                        "IN" => format!("[{}]", value_json(v).replace("null", "1")),
                        "LIKE" => "\"a%\"".into(),
                        _ => value_json(v),
                    };
                    parts.push(format!(
                        r#""where":{{"type":"simple","left":{{"type":"column","name":"{col}"}},"right":{{"type":"literal","value":{right}}},"op":"{op}"}}"#
                    ));
                }
                if let Some((s, _)) = start {
                    parts.push(format!(r#""start":{{"row":{{"id":{s},"a":1}},"exclusive":{}}}"#, start.map(|x| x.1).unwrap_or(false)));
                }
                if let Some(l) = limit {
                    parts.push(format!(r#""limit":{l}"#));
                }
                if let Some((c, desc)) = order {
                    let col = ["a", "b", "id"][usize::from(c)];
                    parts.push(format!(r#""orderBy":[["{col}","{}"]]"#, if desc { "desc" } else { "asc" }));
                }
                format!("{{{}}}", parts.join(","))
            })
    }

    fn op() -> impl Strategy<Value = (u8, i64, u8, u8)> {
        (0u8..3, 0i64..8, any::<u8>(), any::<u8>())
    }

    fn row(id: i64, a: u8, b: u8) -> Row {
        let a = if a.is_multiple_of(5) {
            Value::Null
        } else {
            Value::Int(i64::from(a % 4))
        };
        let b = if b.is_multiple_of(6) {
            Value::Null
        } else {
            Value::Text(["a", "b", "ab", "é", "ba"][usize::from(b % 5)].into())
        };
        vec![Value::Int(id), a, b]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn pipeline_matches_brute_force(q in query(), init in proptest::collection::vec(op(), 0..8), ops in proptest::collection::vec(op(), 1..30)) {
            let ast = zc_protocol::ast::parse(&q).unwrap();
            let mut source = MemorySource::new(spec());
            for (_, id, a, b) in init {
                source.upsert(row(id, a, b)).unwrap();
            }
            let mut p = Pipeline::build(&ast, &source).unwrap();
            let mut view = p.hydrate(&source).unwrap();
            prop_assert_eq!(&view, &brute_force(&p, &source));
            for (kind, id, a, b) in ops {
                let change = match kind {
                    0 => {
                        let new = row(id, a, b);
                        match source.upsert(new.clone()).unwrap() {
                            Some(old) => RowChange::Edit { old, new },
                            None => RowChange::Add(new),
                        }
                    }
                    1 => match source.remove(&row(id, 0, 0)) {
                        Some(old) => RowChange::Remove(old),
                        None => continue,
                    },
                    _ => {
                        let Some(old) = source.remove(&row(id, 0, 0)) else { continue };
                        let new = row(id, a, b);
                        source.upsert(new.clone()).unwrap();
                        RowChange::Edit { old, new }
                    }
                };
                let out = p.push(&change, &source).unwrap();
                apply(&mut view, &out, 0);
                let mut sorted = view.clone();
                sorted.sort_by(|x, y| p.cmp(x, y));
                prop_assert_eq!(sorted, brute_force(&p, &source), "query {} after {:?}", q, change);
            }
        }
    }

    #[test]
    fn bad_queries_are_errors() {
        let source = MemorySource::new(spec());
        let q = |s: &str| Pipeline::build(&zc_protocol::ast::parse(s).unwrap(), &source);
        assert!(matches!(
            q(r#"{"table":"user"}"#),
            Err(BuildError::WrongTable { .. })
        ));
        assert!(matches!(
            q(r#"{"table":"issue","orderBy":[["nope","asc"]]}"#),
            Err(BuildError::UnknownColumn(_))
        ));
        assert!(matches!(
            q(
                r#"{"table":"issue","where":{"type":"simple","left":{"type":"column","name":"zz"},"right":{"type":"literal","value":1},"op":"="}}"#
            ),
            Err(BuildError::Filter(_))
        ));
    }
}

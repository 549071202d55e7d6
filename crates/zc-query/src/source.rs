//! The seam between the engine and the data: a [`Source`] yields a table's rows in an order,
//! and [`MemorySource`] is the in-memory implementation that examples and tests use.

use std::cmp::Ordering;

use zc_types::{Row, TableSpec, Value};

use crate::compare::{compare_rows, compare_values};

/// A source could not serve a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The row does not fit the table.
    #[error("row has {got} values but table {table} has {expected} columns")]
    RowShape {
        /// The table.
        table: String,
        /// Values given.
        got: usize,
        /// Columns.
        expected: usize,
    },
    /// A column named in an ordering does not exist.
    #[error("unknown column \"{0}\"")]
    UnknownColumn(String),
    /// Reading the underlying store failed.
    #[error("source read failed: {0}")]
    Read(String),
}

/// Rows read from a source, lazily: a source may stop reading as soon as the consumer does.
pub type RowStream<'a> = Box<dyn Iterator<Item = Result<Row, SourceError>> + 'a>;

/// What a pipeline asks a source for.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanRequest<'a> {
    /// Column positions, `true` = descending; the source completes it with the key.
    pub ordering: &'a [(usize, bool)],
    /// Start at this row in that order (`true` = exclusive: skip rows equal to it).
    pub start: Option<(&'a [Value], bool)>,
    /// Only rows whose columns equal these (non-null) values, as a join correlation asks.
    pub constraint: &'a [(usize, Value)],
    /// Equalities the caller's filter requires of every row it keeps (`column = literal`
    /// conditions at the top of a `where`). A source MAY use them to read less (an index
    /// whose leading column is one of them) and MAY return rows that do not meet them:
    /// the caller filters anyway.
    pub hints: &'a [(usize, Value)],
}

/// A table's rows, read in a requested order.
///
/// Contract: `scan` MUST return every row that satisfies the request's constraint exactly
/// once, ordered by the request's ordering and then by the primary key (so the order is
/// total), starting at or after `start` when given.
///
/// During a push, a source reflects every change pushed so far and none after: the state
/// right after the change being pushed.
pub trait Source {
    /// The table's schema.
    fn spec(&self) -> &TableSpec;

    /// Rows as the request asks.
    fn scan(&self, request: &ScanRequest<'_>) -> Result<RowStream<'_>, SourceError>;
}

/// The tables a query reads.
pub trait Sources {
    /// The source of a table, by the name used in ASTs.
    fn source(&self, table: &str) -> Option<&dyn Source>;
}

/// True when `row` satisfies a scan's constraint.
pub fn satisfies(row: &[Value], constraint: &[(usize, Value)]) -> bool {
    constraint.iter().all(|(c, v)| {
        row.get(*c)
            .is_some_and(|x| !x.is_null() && compare_values(x, v) == Ordering::Equal)
    })
}

/// True when `row` lies at or after `start` in `full` (a complete ordering).
pub fn after_start(row: &[Value], start: Option<(&[Value], bool)>, full: &[(usize, bool)]) -> bool {
    match start {
        None => true,
        Some((bound, exclusive)) => match compare_rows(row, bound, full) {
            Ordering::Greater => true,
            Ordering::Equal => !exclusive,
            Ordering::Less => false,
        },
    }
}

/// A table held in memory, kept in primary-key order.
#[derive(Debug, Clone)]
pub struct MemorySource {
    spec: TableSpec,
    rows: Vec<Row>,
}

/// An ordering completed with the primary key columns (ascending) not already in it.
pub fn complete_ordering(spec: &TableSpec, ordering: &[(usize, bool)]) -> Vec<(usize, bool)> {
    let mut full = ordering.to_vec();
    for &k in &spec.key {
        if !full.iter().any(|&(c, _)| c == k) {
            full.push((k, false));
        }
    }
    full
}

impl MemorySource {
    /// An empty table.
    pub fn new(spec: TableSpec) -> Self {
        MemorySource {
            spec,
            rows: Vec::new(),
        }
    }

    fn key_order(&self) -> Vec<(usize, bool)> {
        self.spec.key.iter().map(|&k| (k, false)).collect()
    }

    fn check(&self, row: &[Value]) -> Result<(), SourceError> {
        if row.len() != self.spec.columns.len() {
            return Err(SourceError::RowShape {
                table: self.spec.name.to_string(),
                got: row.len(),
                expected: self.spec.columns.len(),
            });
        }
        Ok(())
    }

    /// Inserts or replaces a row (by key); returns the row it replaced.
    pub fn upsert(&mut self, row: Row) -> Result<Option<Row>, SourceError> {
        self.check(&row)?;
        let order = self.key_order();
        match self
            .rows
            .binary_search_by(|r| compare_rows(r, &row, &order))
        {
            Ok(i) => Ok(Some(std::mem::replace(&mut self.rows[i], row))),
            Err(i) => {
                self.rows.insert(i, row);
                Ok(None)
            }
        }
    }

    /// Removes the row with the same key as `row`; returns it.
    pub fn remove(&mut self, row: &[Value]) -> Option<Row> {
        let order = self.key_order();
        match self.rows.binary_search_by(|r| compare_rows(r, row, &order)) {
            Ok(i) => Some(self.rows.remove(i)),
            Err(_) => None,
        }
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl Source for MemorySource {
    fn spec(&self) -> &TableSpec {
        &self.spec
    }

    fn scan(&self, request: &ScanRequest<'_>) -> Result<RowStream<'_>, SourceError> {
        let columns = self.spec.columns.len();
        if let Some(&(c, _)) = request.ordering.iter().find(|&&(c, _)| c >= columns) {
            return Err(SourceError::UnknownColumn(format!("#{c}")));
        }
        if let Some((c, _)) = request.constraint.iter().find(|(c, _)| *c >= columns) {
            return Err(SourceError::UnknownColumn(format!("#{c}")));
        }
        let full = complete_ordering(&self.spec, request.ordering);
        let mut rows: Vec<Row> = self
            .rows
            .iter()
            .filter(|r| satisfies(r, request.constraint))
            .filter(|r| after_start(r, request.start, &full))
            .cloned()
            .collect();
        rows.sort_by(|a, b| compare_rows(a, b, &full));
        Ok(Box::new(rows.into_iter().map(Ok)))
    }
}

#[cfg(test)]
mod tests {
    use zc_types::{ColumnSpec, TableName, TypeKind};

    use super::*;

    fn spec() -> TableSpec {
        TableSpec::new(
            TableName::new("public", "issue"),
            vec![
                ColumnSpec::new("id", TypeKind::Int),
                ColumnSpec::new("modified", TypeKind::Float),
            ],
            vec![0],
        )
    }

    #[test]
    fn ordered_scans_with_a_start_bound() {
        let mut s = MemorySource::new(spec());
        for (id, m) in [(1, 5.0), (2, 3.0), (3, 5.0), (4, 1.0)] {
            s.upsert(vec![Value::Int(id), Value::Float(m)]).unwrap();
        }
        assert!(s.upsert(vec![Value::Int(1)]).is_err());
        let ids = |rows: RowStream<'_>| rows.map(|r| r.unwrap()[0].clone()).collect::<Vec<_>>();
        let scan = |ordering: &[(usize, bool)], start: Option<(&[Value], bool)>| {
            s.scan(&ScanRequest {
                ordering,
                start,
                constraint: &[],
                hints: &[],
            })
            .unwrap()
        };
        // modified desc, then id asc (the key completes the order).
        let order = [(1, true)];
        assert_eq!(
            ids(scan(&order, None)),
            vec![Value::Int(1), Value::Int(3), Value::Int(2), Value::Int(4)]
        );
        let bound = [Value::Int(3), Value::Float(5.0)];
        assert_eq!(
            ids(scan(&order, Some((&bound, true)))),
            vec![Value::Int(2), Value::Int(4)]
        );
        assert_eq!(ids(scan(&order, Some((&bound, false)))).len(), 3);
        assert_eq!(
            s.remove(&[Value::Int(2), Value::Null]),
            Some(vec![Value::Int(2), Value::Float(3.0)])
        );
        assert_eq!(s.len(), 3);
    }
}

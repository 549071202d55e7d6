//! `zc-query` sources over a replica snapshot.
//!
//! Reads use the replica's own orders: the primary key and the mirrored upstream indexes.
//! A request is served, in order of preference, by
//! 1. a key or index whose leading columns are the request's constraint columns and whose
//!    remaining columns give the requested order: a range read, streamed, that stops when
//!    the pipeline has enough rows;
//! 2. a key or index whose leading columns are the constraint columns: a range read of
//!    just the matching rows, sorted in memory;
//! 3. a key or index that gives the requested order: streamed, filtered;
//! 4. otherwise the whole table, filtered and sorted.
//!
//! While pipelines advance from one snapshot to the next, the changes pushed so far are
//! held in an overlay ([`SnapshotSources::apply`]), so that each push sees the state right
//! after its own change and before the later ones, as `zc-query` requires.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use zc_query::compare::compare_rows;
use zc_query::pipeline::RowChange;
use zc_query::{
    RowStream, ScanRequest, Source, SourceError, Sources, after_start, complete_ordering, satisfies,
};
use zc_replica::{RowIter, Snapshot, key};
use zc_types::{Row, TableName, TableSpec, Value};

use crate::Error;

/// Every replicated table of one snapshot, as query sources.
#[derive(Debug, Clone)]
pub struct SnapshotSources {
    snapshot: Arc<Snapshot>,
    tables: BTreeMap<String, TableSource>,
}

#[derive(Debug, Clone)]
struct TableSource {
    spec: TableSpec,
    snapshot: Arc<Snapshot>,
    /// Changes applied on top of the snapshot, by encoded primary key.
    overlay: BTreeMap<Vec<u8>, Option<Row>>,
}

impl SnapshotSources {
    /// Sources for every table of `snapshot`, named as queries name them.
    pub fn new(snapshot: Snapshot) -> Result<SnapshotSources, Error> {
        let snapshot = Arc::new(snapshot);
        let mut tables = BTreeMap::new();
        for spec in snapshot.tables()? {
            tables.insert(
                spec.name.zero_name(),
                TableSource {
                    spec,
                    snapshot: Arc::clone(&snapshot),
                    overlay: BTreeMap::new(),
                },
            );
        }
        Ok(SnapshotSources { snapshot, tables })
    }

    /// The snapshot under the overlay.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The schema of a table.
    pub fn spec(&self, table: &str) -> Option<&TableSpec> {
        self.tables.get(table).map(|t| &t.spec)
    }

    /// Every table's schema.
    pub fn specs(&self) -> impl Iterator<Item = &TableSpec> {
        self.tables.values().map(|t| &t.spec)
    }

    /// Records a change on top of the snapshot (the change about to be pushed).
    pub fn apply(&mut self, table: &TableName, change: &RowChange) {
        let Some(t) = self.tables.get_mut(&table.zero_name()) else {
            return;
        };
        let (row, value) = match change {
            RowChange::Add(r) | RowChange::Edit { new: r, .. } => (r, Some(r.clone())),
            RowChange::Remove(r) => (r, None),
        };
        let pk = key::encode(
            t.spec
                .key
                .iter()
                .map(|&k| row.get(k).unwrap_or(&Value::Null)),
        );
        t.overlay.insert(pk, value);
    }
}

impl Sources for SnapshotSources {
    fn source(&self, table: &str) -> Option<&dyn Source> {
        self.tables.get(table).map(|t| t as &dyn Source)
    }
}

fn read_error(e: zc_replica::Error) -> SourceError {
    SourceError::Read(e.to_string())
}

/// One way to read the table: the primary key (`index: None`) or an index, and the order
/// it yields (the index columns completed by the key).
struct Path<'a> {
    index: Option<&'a str>,
    columns: Vec<(usize, bool)>,
}

impl TableSource {
    fn paths(&self) -> Vec<Path<'_>> {
        let key: Vec<(usize, bool)> = self.spec.key.iter().map(|&k| (k, false)).collect();
        let mut paths = vec![Path {
            index: None,
            columns: key.clone(),
        }];
        for idx in &self.spec.indexes {
            let mut columns = idx.columns.clone();
            for &(k, d) in &key {
                if !columns.iter().any(|&(c, _)| c == k) {
                    columns.push((k, d));
                }
            }
            paths.push(Path {
                index: Some(&idx.name),
                columns,
            });
        }
        paths
    }

    /// Chooses how to read; returns the rows and whether they come in `full` order.
    fn read(
        &self,
        constraint: &[(usize, Value)],
        full: &[(usize, bool)],
    ) -> Result<(RowIter<'static>, bool), SourceError> {
        let fixed: BTreeSet<usize> = constraint.iter().map(|(c, _)| *c).collect();
        let rest: Vec<(usize, bool)> = full
            .iter()
            .copied()
            .filter(|(c, _)| !fixed.contains(c))
            .collect();
        let paths = self.paths();
        let prefixed = |p: &Path<'_>| {
            p.columns.len() >= fixed.len()
                && p.columns[..fixed.len()]
                    .iter()
                    .map(|(c, _)| *c)
                    .collect::<BTreeSet<_>>()
                    == fixed
        };
        let ordered = |p: &Path<'_>| p.columns[fixed.len()..] == rest[..];
        let choice = paths
            .iter()
            .find(|p| prefixed(p) && ordered(p))
            .map(|p| (p, true, true))
            .or_else(|| {
                paths
                    .iter()
                    .find(|p| !fixed.is_empty() && prefixed(p))
                    .map(|p| (p, true, false))
            })
            .or_else(|| {
                paths
                    .iter()
                    .find(|p| p.columns == full)
                    .map(|p| (p, false, true))
            });
        let name = &self.spec.name;
        let Some((path, use_prefix, in_order)) = choice else {
            return Ok((self.snapshot.scan(name).map_err(read_error)?, false));
        };
        let prefix: Vec<Value> = if use_prefix {
            path.columns[..fixed.len()]
                .iter()
                .map(|(c, _)| {
                    constraint
                        .iter()
                        .find(|(x, _)| x == c)
                        .map(|(_, v)| v.clone())
                        .unwrap_or(Value::Null)
                })
                .collect()
        } else {
            Vec::new()
        };
        let rows = match path.index {
            Some(index) => self
                .snapshot
                .scan_index(name, index, &prefix)
                .map_err(read_error)?,
            None if prefix.is_empty() => self.snapshot.scan(name).map_err(read_error)?,
            None => {
                let lower = key::encode(prefix.iter());
                let upper = match key::prefix_end(&lower) {
                    Some(end) => Bound::Excluded(end),
                    None => Bound::Unbounded,
                };
                self.snapshot
                    .scan_key_range(name, Bound::Included(lower), upper)
                    .map_err(read_error)?
            }
        };
        Ok((rows, in_order))
    }
}

impl Source for TableSource {
    fn spec(&self) -> &TableSpec {
        &self.spec
    }

    fn scan(&self, request: &ScanRequest<'_>) -> Result<RowStream<'_>, SourceError> {
        let columns = self.spec.columns.len();
        if let Some(&(c, _)) = request.ordering.iter().find(|&&(c, _)| c >= columns) {
            return Err(SourceError::UnknownColumn(format!("#{c}")));
        }
        if request
            .constraint
            .iter()
            .any(|(c, v)| *c >= columns || v.is_null())
        {
            return Ok(Box::new(std::iter::empty()));
        }
        let full = complete_ordering(&self.spec, request.ordering);
        let (rows, in_order) = self.read(request.constraint, &full)?;
        let constraint = request.constraint.to_vec();
        let start: Option<(Row, bool)> = request.start.map(|(r, e)| (r.to_vec(), e));
        let key_cols = self.spec.key.clone();
        let overlay = &self.overlay;
        let keep = {
            let full = full.clone();
            let start = start.clone();
            move |row: &Row| {
                satisfies(row, &constraint)
                    && after_start(row, start.as_ref().map(|(r, e)| (r.as_slice(), *e)), &full)
            }
        };
        let hidden = move |row: &Row| {
            !overlay.is_empty()
                && overlay.contains_key(&key::encode(
                    key_cols.iter().map(|&k| row.get(k).unwrap_or(&Value::Null)),
                ))
        };
        let mut extra: Vec<Row> = overlay
            .values()
            .flatten()
            .filter(|r| keep(r))
            .cloned()
            .collect();
        extra.sort_by(|a, b| compare_rows(a, b, &full));
        let base = rows.filter_map(move |r| match r {
            Ok((row, _)) if !hidden(&row) && keep(&row) => Some(Ok(row)),
            Ok(_) => None,
            Err(e) => Some(Err(read_error(e))),
        });
        if !in_order {
            let mut all = base.collect::<Result<Vec<Row>, SourceError>>()?;
            all.extend(extra);
            all.sort_by(|a, b| compare_rows(a, b, &full));
            return Ok(Box::new(all.into_iter().map(Ok)));
        }
        Ok(Box::new(Merge {
            base: base.peekable(),
            extra: extra.into_iter().peekable(),
            full,
        }))
    }
}

/// Two ordered row streams merged into one.
struct Merge<I: Iterator<Item = Result<Row, SourceError>>> {
    base: std::iter::Peekable<I>,
    extra: std::iter::Peekable<std::vec::IntoIter<Row>>,
    full: Vec<(usize, bool)>,
}

impl<I: Iterator<Item = Result<Row, SourceError>>> Iterator for Merge<I> {
    type Item = Result<Row, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        let take_extra = match (self.base.peek(), self.extra.peek()) {
            (Some(Ok(b)), Some(e)) => compare_rows(e, b, &self.full).is_lt(),
            (None, Some(_)) => true,
            _ => false,
        };
        if take_extra {
            self.extra.next().map(Ok)
        } else {
            self.base.next()
        }
    }
}

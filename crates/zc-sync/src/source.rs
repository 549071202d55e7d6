//! `zc-query` sources over a replica snapshot.
//!
//! Reads use the replica's own orders: the primary key and the mirrored upstream indexes,
//! each readable forwards and backwards. A request's constraint (and the `column = literal`
//! hints of its filter, when their values have the column's own kind) pin columns; the
//! read chosen is the key or index that
//! 1. has the most constraint columns as its leading columns (a range read of just those
//!    rows), then
//! 2. gives the requested order on the rest (streamed: the pipeline stops reading when it
//!    has enough rows), or else the longest leading part of it (streamed, each run of rows
//!    that tie on that part sorted in memory), then
//! 3. pins the most columns.
//!
//! Reads with no useful order are sorted in memory.
//!
//! While pipelines advance from one snapshot to the next, the changes pushed so far are
//! held in an overlay ([`SnapshotSources::apply`]), so that each push sees the state right
//! after its own change and before the later ones, as `zc-query` requires.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use zc_query::compare::compare_rows;
use zc_query::pipeline::RowChange;
use zc_query::{
    RowStream, ScanRequest, Source, SourceError, Sources, after_start, complete_ordering, satisfies,
};
use zc_replica::{RowIter, Snapshot, key};
use zc_types::{Row, TableName, TableSpec, TypeKind, Value};

use crate::Error;

/// Every replicated table of one snapshot, as query sources.
#[derive(Debug, Clone)]
pub struct SnapshotSources {
    snapshot: Arc<Snapshot>,
    /// Shared until an overlay is applied: every group takes the hub's sources at each
    /// step, so a copy costs a reference count.
    tables: Arc<BTreeMap<String, TableSource>>,
}

#[derive(Debug, Clone)]
struct TableSource {
    spec: Arc<TableSpec>,
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
                    spec: Arc::new(spec),
                    snapshot: Arc::clone(&snapshot),
                    overlay: BTreeMap::new(),
                },
            );
        }
        Ok(SnapshotSources {
            snapshot,
            tables: Arc::new(tables),
        })
    }

    /// Sources for a later snapshot whose table schemas are those of these sources (no
    /// table was created, dropped or replaced in between: [`crate::Advance::Rows`]); the
    /// catalog is not read again. The overlay is not carried over.
    pub fn renewed(&self, snapshot: Snapshot) -> SnapshotSources {
        let snapshot = Arc::new(snapshot);
        let tables = self
            .tables
            .iter()
            .map(|(name, t)| {
                (
                    name.clone(),
                    TableSource {
                        spec: Arc::clone(&t.spec),
                        snapshot: Arc::clone(&snapshot),
                        overlay: BTreeMap::new(),
                    },
                )
            })
            .collect();
        SnapshotSources {
            snapshot,
            tables: Arc::new(tables),
        }
    }

    /// The snapshot under the overlay.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The schema of a table.
    pub fn spec(&self, table: &str) -> Option<&TableSpec> {
        self.tables.get(table).map(|t| &*t.spec)
    }

    /// Every table's schema.
    pub fn specs(&self) -> impl Iterator<Item = &TableSpec> {
        self.tables.values().map(|t| &*t.spec)
    }

    /// Records a change on top of the snapshot (the change about to be pushed).
    pub fn apply(&mut self, table: &TableName, change: &RowChange) {
        let Some(t) = Arc::make_mut(&mut self.tables).get_mut(&table.zero_name()) else {
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

/// The order a read yields its rows in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Yield {
    /// The request's complete order.
    Full,
    /// Ordered by the first `n` columns of the request's order (without the pinned
    /// columns); rows that tie on them come in some other order.
    Leading(usize),
    /// No useful order.
    Unordered,
}

/// A read chosen for a request.
struct Plan<'p> {
    path: &'p Path<'p>,
    /// How many leading path columns are pinned to a value (a range read).
    pinned: usize,
    reverse: bool,
    order: Yield,
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

    /// The hints a read can rely on: a value of the column's own kind (so that its key
    /// encoding and equality are those of the stored values), on a column not already
    /// constrained.
    fn usable_hints(
        &self,
        constraint: &[(usize, Value)],
        hints: &[(usize, Value)],
    ) -> Vec<(usize, Value)> {
        let mut out: Vec<(usize, Value)> = Vec::new();
        for (c, v) in hints {
            let Some(col) = self.spec.columns.get(*c) else {
                continue;
            };
            let same_kind = matches!(
                (&col.pg_type.kind, v),
                (TypeKind::Bool, Value::Bool(_))
                    | (TypeKind::Text, Value::Text(_))
                    | (TypeKind::Int, Value::Int(_))
            );
            if same_kind
                && !constraint.iter().any(|(x, _)| x == c)
                && !out.iter().any(|(x, _)| x == c)
            {
                out.push((*c, v.clone()));
            }
        }
        out
    }

    /// Picks the read for rows meeting `pins` (the constraint, then usable hints: the
    /// first `required` of them are the request's constraint) in order `full`.
    fn plan<'p>(
        paths: &'p [Path<'p>],
        pins: &[(usize, Value)],
        required: usize,
        full: &[(usize, bool)],
    ) -> Plan<'p> {
        let pinned_col = |c: usize| pins.iter().any(|(x, _)| *x == c);
        let rest: Vec<(usize, bool)> = full
            .iter()
            .copied()
            .filter(|(c, _)| !pinned_col(*c))
            .collect();
        let mut best: Option<((usize, bool, usize, usize), Plan<'p>)> = None;
        for path in paths {
            let pinned = path
                .columns
                .iter()
                .take_while(|(c, _)| pinned_col(*c))
                .count();
            let covered = path.columns[..pinned]
                .iter()
                .filter(|(c, _)| pins[..required].iter().any(|(x, _)| x == c))
                .count();
            // Pinned columns are constant among the rows read: they do not order them.
            let tail: Vec<(usize, bool)> = path.columns[pinned..]
                .iter()
                .copied()
                .filter(|(c, _)| !pinned_col(*c))
                .collect();
            let run = |flip: bool| {
                tail.iter()
                    .zip(&rest)
                    .take_while(|((pc, pd), (rc, rd))| pc == rc && (*pd != *rd) == flip)
                    .count()
            };
            let (forward, backward) = (run(false), run(true));
            let (k, reverse) = if backward > forward {
                (backward, true)
            } else {
                (forward, false)
            };
            let order = if k == rest.len() {
                Yield::Full
            } else if k > 0 {
                Yield::Leading(k)
            } else {
                Yield::Unordered
            };
            let score = (covered, order == Yield::Full, k, pinned);
            if best.as_ref().is_none_or(|(b, _)| score > *b) {
                best = Some((
                    score,
                    Plan {
                        path,
                        pinned,
                        reverse,
                        order,
                    },
                ));
            }
        }
        let (_, plan) = best.unwrap_or_else(|| {
            (
                (0, false, 0, 0),
                Plan {
                    path: &paths[0],
                    pinned: 0,
                    reverse: false,
                    order: Yield::Unordered,
                },
            )
        });
        plan
    }

    /// Reads the rows meeting `pins` (at least; the caller filters) as `plan` says.
    fn read(
        &self,
        plan: &Plan<'_>,
        pins: &[(usize, Value)],
    ) -> Result<RowIter<'static>, SourceError> {
        let name = &self.spec.name;
        let prefix: Vec<Value> = plan.path.columns[..plan.pinned]
            .iter()
            .map(|(c, _)| {
                pins.iter()
                    .find(|(x, _)| x == c)
                    .map(|(_, v)| v.clone())
                    .unwrap_or(Value::Null)
            })
            .collect();
        match plan.path.index {
            Some(index) => self
                .snapshot
                .scan_index_of(&self.spec, index, &prefix, plan.reverse)
                .map_err(read_error),
            None => {
                let (lower, upper) = if prefix.is_empty() {
                    (Bound::Unbounded, Bound::Unbounded)
                } else {
                    let lower = key::encode(prefix.iter());
                    let upper = match key::prefix_end(&lower) {
                        Some(end) => Bound::Excluded(end),
                        None => Bound::Unbounded,
                    };
                    (Bound::Included(lower), upper)
                };
                self.snapshot
                    .scan_key_range_dir(name, lower, upper, plan.reverse)
                    .map_err(read_error)
            }
        }
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
        // The rows must meet the constraint and may be narrowed by the usable hints.
        let mut pins = request.constraint.to_vec();
        let required = pins.len();
        pins.extend(self.usable_hints(request.constraint, request.hints));
        let paths = self.paths();
        let plan = Self::plan(&paths, &pins, required, &full);
        let rows = self.read(&plan, &pins)?;
        let order = plan.order;
        let rest: Vec<(usize, bool)> = full
            .iter()
            .copied()
            .filter(|(c, _)| !pins.iter().any(|(x, _)| x == c))
            .collect();
        let start: Option<(Row, bool)> = request.start.map(|(r, e)| (r.to_vec(), e));
        let key_cols = self.spec.key.clone();
        let overlay = &self.overlay;
        let keep = {
            let full = full.clone();
            let start = start.clone();
            let pins = pins.clone();
            move |row: &Row| {
                satisfies(row, &pins)
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
        let base: RowStream<'_> = match order {
            Yield::Full => Box::new(base),
            Yield::Leading(k) => Box::new(TieSort {
                inner: base.peekable(),
                group: Vec::new().into_iter(),
                leading: rest[..k].to_vec(),
                full: full.clone(),
            }),
            Yield::Unordered => {
                let mut all = base.collect::<Result<Vec<Row>, SourceError>>()?;
                all.extend(extra);
                all.sort_by(|a, b| compare_rows(a, b, &full));
                return Ok(Box::new(all.into_iter().map(Ok)));
            }
        };
        Ok(Box::new(Merge {
            base: base.peekable(),
            extra: extra.into_iter().peekable(),
            full,
        }))
    }
}

/// Completes the order of a stream ordered by its leading columns: each run of rows that
/// tie on them is sorted by the full order (index ties are usually short).
struct TieSort<I: Iterator<Item = Result<Row, SourceError>>> {
    inner: std::iter::Peekable<I>,
    group: std::vec::IntoIter<Row>,
    leading: Vec<(usize, bool)>,
    full: Vec<(usize, bool)>,
}

impl<I: Iterator<Item = Result<Row, SourceError>>> Iterator for TieSort<I> {
    type Item = Result<Row, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(row) = self.group.next() {
            return Some(Ok(row));
        }
        let first = match self.inner.next()? {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        let mut group = vec![first];
        while let Some(Ok(next)) = self.inner.peek() {
            if compare_rows(&group[0], next, &self.leading).is_ne() {
                break;
            }
            if let Some(Ok(row)) = self.inner.next() {
                group.push(row);
            }
        }
        if group.len() > 1 {
            group.sort_by(|a, b| compare_rows(a, b, &self.full));
        }
        self.group = group.into_iter();
        self.group.next().map(Ok)
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

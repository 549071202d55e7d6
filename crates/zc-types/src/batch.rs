//! Rows of one table in flat buffers: how the initial copy hands its rows over.
//!
//! A [`Row`] holds each string in an allocation of its own. A copy decodes millions of rows,
//! and with several workers decoding at once their allocations (and the frees at the other
//! end) were a large part of the copy's time and contended for the allocator's locks. A
//! [`RowBatch`] keeps every value of a batch in one vector, the text of its strings in one
//! string and the bytes of its byte values in one vector, so a batch costs a few allocations
//! however many rows it holds; its rows are read as [`RowRef`]s of borrowed [`ValueRef`]s.

use crate::value::{Row, Value};

/// A value borrowed from a [`Value`] or a [`RowBatch`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValueRef<'a> {
    /// SQL NULL.
    Null,
    /// A boolean.
    Bool(bool),
    /// An exact integer.
    Int(i64),
    /// A floating point number.
    Float(f64),
    /// A string.
    Text(&'a str),
    /// JSON text.
    Json(&'a str),
    /// Raw bytes.
    Bytes(&'a [u8]),
}

impl ValueRef<'_> {
    /// The owned value.
    pub fn to_value(self) -> Value {
        match self {
            ValueRef::Null => Value::Null,
            ValueRef::Bool(b) => Value::Bool(b),
            ValueRef::Int(i) => Value::Int(i),
            ValueRef::Float(f) => Value::Float(f),
            ValueRef::Text(s) => Value::Text(s.to_owned()),
            ValueRef::Json(s) => Value::Json(s.to_owned()),
            ValueRef::Bytes(b) => Value::Bytes(b.to_vec()),
        }
    }
}

impl Value {
    /// The value, borrowed.
    pub fn as_value_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::Bool(b) => ValueRef::Bool(*b),
            Value::Int(i) => ValueRef::Int(*i),
            Value::Float(f) => ValueRef::Float(*f),
            Value::Text(s) => ValueRef::Text(s),
            Value::Json(s) => ValueRef::Json(s),
            Value::Bytes(b) => ValueRef::Bytes(b),
        }
    }
}

/// A value of a batch; strings and byte values are spans of the batch's buffers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(usize, usize),
    Json(usize, usize),
    Bytes(usize, usize),
}

/// Rows of one table, all of the same width, with their values in two flat buffers.
///
/// Rows are built value by value (`push_*`) and ended with [`end_row`](Self::end_row), or
/// pushed whole ([`push_row`](Self::push_row)).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RowBatch {
    width: usize,
    rows: usize,
    cells: Vec<Cell>,
    /// Text of the `Text` and `Json` values.
    text: String,
    /// Bytes of the `Bytes` values.
    bytes: Vec<u8>,
}

/// A row that does not have the batch's width.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a row of {got} values in a batch of rows of {width}")]
pub struct WidthMismatch {
    /// Values the row had.
    pub got: usize,
    /// The batch's width.
    pub width: usize,
}

impl RowBatch {
    /// An empty batch of rows of `width` values.
    pub fn new(width: usize) -> RowBatch {
        RowBatch {
            width,
            ..RowBatch::default()
        }
    }

    /// An empty batch with room for `rows` rows and `bytes` bytes of strings.
    pub fn with_capacity(width: usize, rows: usize, bytes: usize) -> RowBatch {
        RowBatch {
            width,
            rows: 0,
            cells: Vec::with_capacity(width * rows),
            text: String::with_capacity(bytes),
            bytes: Vec::new(),
        }
    }

    /// Values per row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Complete rows.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// True when it holds no complete row.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Bytes of strings and byte values held.
    pub fn byte_len(&self) -> usize {
        self.text.len() + self.bytes.len()
    }

    fn text_span(&mut self, s: &str) -> (usize, usize) {
        let at = self.text.len();
        self.text.push_str(s);
        (at, s.len())
    }

    /// Appends a value to the row being built.
    pub fn push(&mut self, value: ValueRef<'_>) {
        let cell = match value {
            ValueRef::Null => Cell::Null,
            ValueRef::Bool(b) => Cell::Bool(b),
            ValueRef::Int(i) => Cell::Int(i),
            ValueRef::Float(f) => Cell::Float(f),
            ValueRef::Text(s) => {
                let (at, len) = self.text_span(s);
                Cell::Text(at, len)
            }
            ValueRef::Json(s) => {
                let (at, len) = self.text_span(s);
                Cell::Json(at, len)
            }
            ValueRef::Bytes(b) => {
                let at = self.bytes.len();
                self.bytes.extend_from_slice(b);
                Cell::Bytes(at, b.len())
            }
        };
        self.cells.push(cell);
    }

    /// Ends the row being built. A row of the wrong width is dropped and reported.
    pub fn end_row(&mut self) -> Result<(), WidthMismatch> {
        let start = self.rows * self.width;
        let got = self.cells.len() - start;
        if got != self.width {
            self.discard_row();
            return Err(WidthMismatch {
                got,
                width: self.width,
            });
        }
        self.rows += 1;
        Ok(())
    }

    /// Drops the values of the row being built.
    pub fn discard_row(&mut self) {
        let start = self.rows * self.width;
        let row = self.cells.get(start..).unwrap_or_default();
        let first_text = row.iter().find_map(|c| match *c {
            Cell::Text(at, _) | Cell::Json(at, _) => Some(at),
            _ => None,
        });
        let first_bytes = row.iter().find_map(|c| match *c {
            Cell::Bytes(at, _) => Some(at),
            _ => None,
        });
        if let Some(at) = first_text {
            self.text.truncate(at);
        }
        if let Some(at) = first_bytes {
            self.bytes.truncate(at);
        }
        self.cells.truncate(start);
    }

    /// Appends a whole row.
    pub fn push_row(&mut self, row: &[Value]) -> Result<(), WidthMismatch> {
        for value in row {
            self.push(value.as_value_ref());
        }
        self.end_row()
    }

    /// The row at `index`.
    pub fn row(&self, index: usize) -> Option<RowRef<'_>> {
        (index < self.rows).then(|| self.row_ref(index))
    }

    /// The complete rows, in order.
    pub fn rows(&self) -> impl ExactSizeIterator<Item = RowRef<'_>> + '_ {
        (0..self.rows).map(move |i| self.row_ref(i))
    }

    /// The row at `index`, which must be below `rows`.
    fn row_ref(&self, index: usize) -> RowRef<'_> {
        let start = index * self.width;
        RowRef {
            cells: self
                .cells
                .get(start..start + self.width)
                .unwrap_or_default(),
            text: &self.text,
            bytes: &self.bytes,
        }
    }

    /// The rows as owned [`Row`]s.
    pub fn to_rows(&self) -> Vec<Row> {
        self.rows().map(|r| r.to_row()).collect()
    }
}

impl TryFrom<Vec<Row>> for RowBatch {
    type Error = WidthMismatch;

    /// A batch of `rows`; its width is the first row's. Every row must have that width.
    fn try_from(rows: Vec<Row>) -> Result<RowBatch, WidthMismatch> {
        let width = rows.first().map_or(0, Vec::len);
        let mut batch = RowBatch::with_capacity(width, rows.len(), 0);
        for row in &rows {
            batch.push_row(row)?;
        }
        Ok(batch)
    }
}

/// One row of a [`RowBatch`].
#[derive(Clone, Copy, Debug)]
pub struct RowRef<'a> {
    cells: &'a [Cell],
    text: &'a str,
    bytes: &'a [u8],
}

impl<'a> RowRef<'a> {
    /// Values in the row.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// True for a row of no values.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// The value at `index`.
    pub fn get(&self, index: usize) -> Option<ValueRef<'a>> {
        self.cells.get(index).map(|c| self.value(c))
    }

    fn value(&self, cell: &Cell) -> ValueRef<'a> {
        let (text, bytes) = (self.text, self.bytes);
        // Spans of whole pushed strings: always on character boundaries.
        let text = |at: usize, len: usize| text.get(at..at + len).unwrap_or_default();
        match *cell {
            Cell::Null => ValueRef::Null,
            Cell::Bool(b) => ValueRef::Bool(b),
            Cell::Int(i) => ValueRef::Int(i),
            Cell::Float(f) => ValueRef::Float(f),
            Cell::Text(at, len) => ValueRef::Text(text(at, len)),
            Cell::Json(at, len) => ValueRef::Json(text(at, len)),
            Cell::Bytes(at, len) => ValueRef::Bytes(bytes.get(at..at + len).unwrap_or_default()),
        }
    }

    /// The values, in column order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = ValueRef<'a>> + '_ {
        self.cells.iter().map(|c| self.value(c))
    }

    /// The row, owned.
    pub fn to_row(&self) -> Row {
        self.iter().map(ValueRef::to_value).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Row> {
        vec![
            vec![
                Value::Int(1),
                Value::Text("héllo".into()),
                Value::Null,
                Value::Bytes(vec![0, 1]),
            ],
            vec![
                Value::Float(2.5),
                Value::Json("[1]".into()),
                Value::Bool(true),
                Value::Text(String::new()),
            ],
        ]
    }

    #[test]
    fn rows_come_back_as_they_went_in() {
        let batch = RowBatch::try_from(sample()).expect("same widths");
        assert_eq!(batch.len(), 2);
        assert_eq!(batch.width(), 4);
        assert_eq!(batch.to_rows(), sample());
        let second = batch.row(1).expect("row 1");
        assert_eq!(second.get(1), Some(ValueRef::Json("[1]")));
        assert_eq!(second.get(4), None);
        assert!(batch.row(2).is_none());
    }

    #[test]
    fn a_row_of_the_wrong_width_is_refused_and_leaves_nothing_behind() {
        let mut batch = RowBatch::new(2);
        batch.push(ValueRef::Text("kept"));
        batch.push(ValueRef::Int(1));
        batch.end_row().expect("two values");
        batch.push(ValueRef::Text("dropped"));
        batch.push(ValueRef::Int(2));
        batch.push(ValueRef::Text("one too many"));
        assert_eq!(batch.end_row(), Err(WidthMismatch { got: 3, width: 2 }));
        assert_eq!(batch.len(), 1);
        assert_eq!(batch.byte_len(), 4);
        batch.push(ValueRef::Bytes(b"xy"));
        batch.discard_row();
        assert_eq!(batch.byte_len(), 4);
        batch.push(ValueRef::Null);
        batch.push(ValueRef::Text("next"));
        batch.end_row().expect("two values");
        assert_eq!(
            batch.to_rows(),
            vec![
                vec![Value::Text("kept".into()), Value::Int(1)],
                vec![Value::Null, Value::Text("next".into())],
            ]
        );
        let mut rows = sample();
        rows[1].pop();
        assert!(RowBatch::try_from(rows).is_err());
    }
}

//! An incremental parser for the output of `COPY … TO STDOUT (FORMAT binary)`.
//!
//! The data arrives in chunks that may split the header, rows and fields anywhere. The
//! decoder keeps the unread bytes in one buffer and hands out a row once all of it is
//! there: its fields borrowed from the buffer ([`CopyBinaryDecoder::next_row_with`], no
//! allocation per row) or split off its front as zero-copy [`Bytes`]
//! ([`CopyBinaryDecoder::next_row`]). A row split between chunks has its field lengths read
//! again when more bytes arrive; its data is not looked at until then.
//!
//! Layout (PostgreSQL manual, "COPY", binary format): the 11-byte signature
//! `PGCOPY\n\xff\r\n\0`, an Int32 flags field, an Int32 header extension length and that many
//! bytes; then tuples, each an Int16 field count followed by, per field, an Int32 length
//! (−1 for NULL) and that many bytes; then the trailer, a field count of −1.

use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};

use crate::decode::DecodeError;

/// The binary COPY signature.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Signature, flags and header extension length.
const FIXED_HEADER: usize = 11 + 4 + 4;
/// Flag bits 16–31 mark critical format changes a reader must understand (bit 16: OIDs
/// included); zc knows none of them.
const CRITICAL_FLAGS: u32 = 0xFFFF_0000;

/// Where the decoder is in the COPY stream.
#[derive(Debug, Default)]
enum State {
    /// Waiting for (the rest of) the file header.
    #[default]
    Header,
    /// At the start of a tuple (or the trailer).
    Rows,
    /// The trailer was read.
    Done,
}

/// Incremental decoder of binary COPY data: [`push`](Self::push) chunks as they arrive,
/// take rows with [`next_row`](Self::next_row) (owned fields) or
/// [`next_row_with`](Self::next_row_with) (borrowed fields, no allocation), and call
/// [`finish`](Self::finish) at the end.
#[derive(Debug, Default)]
pub struct CopyBinaryDecoder {
    /// Bytes received and not consumed yet.
    buf: BytesMut,
    state: State,
    /// Bytes consumed before the start of `buf`, for error offsets.
    consumed: usize,
    /// Where the fields of the row at the front of `buf` are (`None`: NULL), once it is
    /// all there.
    fields: Vec<Option<Range<usize>>>,
}

/// The fields of one row, borrowed from the decoder's buffer.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    row: &'a [u8],
    fields: &'a [Option<Range<usize>>],
}

impl<'a> Fields<'a> {
    /// The number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// True for a row of no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The fields in order: their bytes, `None` for NULL.
    pub fn iter(&self) -> impl Iterator<Item = Option<&'a [u8]>> + 'a {
        let row = self.row;
        self.fields
            .iter()
            .map(move |f| f.clone().and_then(|r| row.get(r)))
    }
}

impl CopyBinaryDecoder {
    /// A decoder expecting the COPY header.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a chunk of COPY data (chunks may split the header and rows anywhere).
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// True once the trailer was read.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The next complete row: one entry per field, `None` for NULL; the fields share the
    /// decoder's buffer (no copy).
    ///
    /// `Ok(None)` when more bytes are needed, or once the trailer was read. Malformed data
    /// (a bad signature, unknown critical flags, negative lengths other than −1, bytes after
    /// the trailer) is an error.
    pub fn next_row(&mut self) -> Result<Option<Vec<Option<Bytes>>>, DecodeError> {
        let Some(end) = self.next_row_end()? else {
            return Ok(None);
        };
        let row = self.buf.split_to(end).freeze();
        self.consumed = self.consumed.saturating_add(end);
        Ok(Some(
            self.fields
                .iter()
                .map(|f| f.clone().map(|r| row.slice(r)))
                .collect(),
        ))
    }

    /// Like [`next_row`](Self::next_row), but hands the row's fields, borrowed, to `f` and
    /// returns what it returns: nothing is allocated per row.
    pub fn next_row_with<T>(
        &mut self,
        f: impl FnOnce(Fields<'_>) -> T,
    ) -> Result<Option<T>, DecodeError> {
        let Some(end) = self.next_row_end()? else {
            return Ok(None);
        };
        let out = f(Fields {
            row: self.buf.get(..end).unwrap_or_default(),
            fields: &self.fields,
        });
        self.advance(end);
        Ok(Some(out))
    }

    /// At the end of the data: `Ok` only when the header and the trailer were read and no
    /// bytes remain.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.state {
            State::Header => Err(self.err(0, "binary copy data ended before its header")),
            State::Rows => {
                Err(self.err(self.buf.len(), "binary copy data ended before its trailer"))
            }
            State::Done if !self.buf.is_empty() => {
                Err(self.err(0, "data after the binary copy trailer"))
            }
            State::Done => Ok(()),
        }
    }

    /// Reads up to the next row: its length, with `fields` set, once all of it is buffered
    /// (a row split between chunks is looked at again, lengths only, when more arrive).
    fn next_row_end(&mut self) -> Result<Option<usize>, DecodeError> {
        loop {
            match self.state {
                State::Header => {
                    if !self.read_header()? {
                        return Ok(None);
                    }
                }
                State::Rows => {
                    let Some(count) = self.peek_array::<2>().map(i16::from_be_bytes) else {
                        return Ok(None);
                    };
                    if count == -1 {
                        self.advance(2);
                        self.state = State::Done;
                        continue;
                    }
                    let Ok(count) = usize::try_from(count) else {
                        return Err(self.err(0, format!("invalid field count {count}")));
                    };
                    return self.scan_fields(count);
                }
                State::Done => {
                    if !self.buf.is_empty() {
                        return Err(self.err(0, "data after the binary copy trailer"));
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// Finds the `count` fields of the row at the front of the buffer (after its count).
    /// `fields` only grows with fields that arrived, whatever count the row announces.
    fn scan_fields(&mut self, count: usize) -> Result<Option<usize>, DecodeError> {
        self.fields.clear();
        let mut at = 2usize;
        for _ in 0..count {
            let Some(len) = self.peek_array_at::<4>(at).map(i32::from_be_bytes) else {
                return Ok(None);
            };
            let start = at + 4;
            if len == -1 {
                self.fields.push(None);
                at = start;
                continue;
            }
            let Ok(n) = usize::try_from(len) else {
                return Err(self.err(at, format!("invalid field length {len}")));
            };
            let Some(end) = start.checked_add(n) else {
                return Err(self.err(at, "field too long"));
            };
            if end > self.buf.len() {
                return Ok(None);
            }
            self.fields.push(Some(start..end));
            at = end;
        }
        Ok(Some(at))
    }

    fn err(&self, at: usize, reason: impl Into<String>) -> DecodeError {
        DecodeError {
            offset: self.consumed.saturating_add(at),
            tag: None,
            reason: reason.into(),
        }
    }

    /// Drops `n` buffered bytes (which must be there).
    fn advance(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        self.buf.advance(n);
        self.consumed = self.consumed.saturating_add(n);
    }

    /// The first `N` buffered bytes, if there are that many.
    fn peek_array<const N: usize>(&self) -> Option<[u8; N]> {
        self.peek_array_at(0)
    }

    fn peek_array_at<const N: usize>(&self, at: usize) -> Option<[u8; N]> {
        let end = at.checked_add(N)?;
        self.buf
            .get(at..end)
            .and_then(|b| <[u8; N]>::try_from(b).ok())
    }

    /// Reads the file header; false when more bytes are needed.
    fn read_header(&mut self) -> Result<bool, DecodeError> {
        let seen = self.buf.len().min(SIGNATURE.len());
        if self.buf.get(..seen) != SIGNATURE.get(..seen) {
            return Err(self.err(0, "not binary copy data: bad signature"));
        }
        let (Some(flags), Some(ext)) = (
            self.peek_array_at::<4>(11).map(u32::from_be_bytes),
            self.peek_array_at::<4>(15).map(i32::from_be_bytes),
        ) else {
            return Ok(false);
        };
        if flags & CRITICAL_FLAGS != 0 {
            return Err(self.err(11, format!("unsupported binary copy flags 0x{flags:08x}")));
        }
        let Ok(ext) = usize::try_from(ext) else {
            return Err(self.err(15, format!("negative header extension length {ext}")));
        };
        let Some(total) = FIXED_HEADER.checked_add(ext) else {
            return Err(self.err(15, "header extension too long"));
        };
        if self.buf.len() < total {
            return Ok(false);
        }
        self.advance(total);
        self.state = State::Rows;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    type Rows = Vec<Vec<Option<Vec<u8>>>>;

    fn header(flags: u32, ext: &[u8]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&i32::try_from(ext.len()).unwrap().to_be_bytes());
        out.extend_from_slice(ext);
        out
    }

    fn encode_with(ext: &[u8], rows: &[Vec<Option<Vec<u8>>>]) -> Vec<u8> {
        let mut out = header(0, ext);
        for r in rows {
            out.extend_from_slice(&i16::try_from(r.len()).unwrap().to_be_bytes());
            for f in r {
                match f {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(b) => {
                        out.extend_from_slice(&i32::try_from(b.len()).unwrap().to_be_bytes());
                        out.extend_from_slice(b);
                    }
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    fn encode(rows: &[Vec<Option<Vec<u8>>>]) -> Vec<u8> {
        encode_with(&[], rows)
    }

    /// Feeds the chunks one by one, draining rows after each (borrowed), then finishes.
    fn decode_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Result<Rows, DecodeError> {
        let mut d = CopyBinaryDecoder::new();
        let mut out = Vec::new();
        for chunk in chunks {
            d.push(chunk);
            while let Some(row) =
                d.next_row_with(|f| f.iter().map(|f| f.map(<[u8]>::to_vec)).collect())?
            {
                out.push(row);
            }
        }
        d.finish()?;
        Ok(out)
    }

    /// The same with owned rows.
    fn decode_chunks_owned<'a>(
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Rows, DecodeError> {
        let mut d = CopyBinaryDecoder::new();
        let mut out = Vec::new();
        for chunk in chunks {
            d.push(chunk);
            while let Some(row) = d.next_row()? {
                out.push(row.into_iter().map(|f| f.map(|b| b.to_vec())).collect());
            }
        }
        d.finish()?;
        Ok(out)
    }

    fn decode_in_chunks(bytes: &[u8], size: usize) -> Result<Rows, DecodeError> {
        let borrowed = decode_chunks(bytes.chunks(size.max(1)));
        let owned = decode_chunks_owned(bytes.chunks(size.max(1)));
        assert_eq!(borrowed, owned, "both ways agree, errors included");
        borrowed
    }

    fn sample() -> Rows {
        vec![
            vec![Some(b"abc".to_vec()), None, Some(vec![])],
            vec![Some(vec![0, 1, 2, 3]), Some(b"x".to_vec()), None],
            vec![],
            vec![None],
        ]
    }

    #[test]
    fn rows_split_at_every_boundary() {
        let rows = sample();
        let bytes = encode_with(b"ext", &rows);
        assert_eq!(decode_chunks([bytes.as_slice()]).unwrap(), rows);
        for cut in 0..=bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(decode_chunks([a, b]).unwrap(), rows, "cut at {cut}");
        }
        for size in 1..=bytes.len() {
            assert_eq!(decode_in_chunks(&bytes, size).unwrap(), rows, "size {size}");
        }
    }

    #[test]
    fn fields_are_zero_copy_slices() {
        let bytes = encode(&[vec![Some(b"hello".to_vec())]]);
        let mut d = CopyBinaryDecoder::new();
        d.push(&bytes);
        let row = d.next_row().unwrap().unwrap();
        assert_eq!(row, vec![Some(Bytes::from_static(b"hello"))]);
        assert_eq!(d.next_row().unwrap(), None);
        assert!(d.is_done());
        d.finish().unwrap();
    }

    #[test]
    fn empty_table() {
        let bytes = encode(&[]);
        assert_eq!(bytes.len(), 21);
        let mut d = CopyBinaryDecoder::new();
        d.push(&bytes);
        assert!(!d.is_done());
        assert_eq!(d.next_row().unwrap(), None);
        assert!(d.is_done());
        d.finish().unwrap();
        assert_eq!(d.next_row().unwrap(), None);
    }

    #[test]
    fn bad_signature_fails_early() {
        let mut d = CopyBinaryDecoder::new();
        d.push(b"PGCOPY\n");
        assert_eq!(d.next_row().unwrap(), None);
        d.push(b"X");
        let err = d.next_row().unwrap_err();
        assert_eq!(err.offset, 0);
        assert!(err.reason.contains("signature"), "{err}");
        // Text COPY output is not binary.
        assert!(decode_in_chunks(b"1\tabc\n", 3).is_err());
    }

    #[test]
    fn bad_headers_are_errors() {
        // OIDs included (bit 16).
        let mut bytes = header(1 << 16, &[]);
        bytes.extend_from_slice(&(-1i16).to_be_bytes());
        let err = decode_in_chunks(&bytes, 64).unwrap_err();
        assert!(err.reason.contains("flags"), "{err}");
        // Non-critical flag bits are ignored.
        let mut bytes = header(1, &[]);
        bytes.extend_from_slice(&(-1i16).to_be_bytes());
        assert_eq!(decode_in_chunks(&bytes, 64).unwrap(), Rows::new());
        // Negative header extension length.
        let mut bytes = SIGNATURE.to_vec();
        bytes.extend_from_slice(&0u32.to_be_bytes());
        bytes.extend_from_slice(&(-4i32).to_be_bytes());
        assert!(decode_in_chunks(&bytes, 64).is_err());
    }

    #[test]
    fn bad_tuples_are_errors() {
        let mut bytes = header(0, &[]);
        bytes.extend_from_slice(&(-2i16).to_be_bytes());
        let err = decode_in_chunks(&bytes, 64).unwrap_err();
        assert_eq!(err.offset, 19);
        assert!(err.reason.contains("field count -2"), "{err}");

        let mut bytes = header(0, &[]);
        bytes.extend_from_slice(&1i16.to_be_bytes());
        bytes.extend_from_slice(&(-7i32).to_be_bytes());
        let err = decode_in_chunks(&bytes, 64).unwrap_err();
        assert_eq!(err.offset, 21);
        assert!(err.reason.contains("field length -7"), "{err}");
    }

    #[test]
    fn huge_counts_do_not_allocate() {
        // 32767 fields announced, 2 GiB field announced: both just wait for more bytes.
        let mut bytes = header(0, &[]);
        bytes.extend_from_slice(&i16::MAX.to_be_bytes());
        bytes.extend_from_slice(&i32::MAX.to_be_bytes());
        let mut d = CopyBinaryDecoder::new();
        d.push(&bytes);
        assert_eq!(d.next_row().unwrap(), None);
        assert!(d.finish().is_err());
    }

    #[test]
    fn truncated_or_extended_input_fails_at_finish() {
        let bytes = encode(&sample());
        for cut in 0..bytes.len() {
            assert!(decode_in_chunks(&bytes[..cut], 7).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        let err = decode_in_chunks(&extra, 4).unwrap_err();
        assert!(
            err.reason.contains("after the binary copy trailer"),
            "{err}"
        );
        // Data pushed after the trailer was already read.
        let mut d = CopyBinaryDecoder::new();
        d.push(&bytes);
        while d.next_row().unwrap().is_some() {}
        assert!(d.is_done());
        d.push(b"x");
        assert!(d.next_row().is_err());
        assert!(d.finish().is_err());
    }

    fn rows() -> impl Strategy<Value = Rows> {
        let field = proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8));
        proptest::collection::vec(proptest::collection::vec(field, 0..4), 0..6)
    }

    proptest! {
        #[test]
        fn round_trips(rows in rows(), ext in proptest::collection::vec(any::<u8>(), 0..4), size in 1usize..40) {
            let bytes = encode_with(&ext, &rows);
            prop_assert_eq!(decode_in_chunks(&bytes, size).unwrap(), rows);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..96), size in 1usize..20) {
            let _ = decode_in_chunks(&bytes, size);
            let mut input = header(0, &[]);
            input.extend_from_slice(&bytes);
            let _ = decode_in_chunks(&input, size);
        }

        #[test]
        fn mutated_input_never_panics(
            rows in rows(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            size in 1usize..20,
        ) {
            let mut bytes = encode(&rows);
            for (at, x) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= x;
            }
            let _ = decode_in_chunks(&bytes, size);
        }
    }
}

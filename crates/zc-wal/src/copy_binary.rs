//! An incremental parser for `COPY … TO STDOUT (FORMAT binary)` output.
//!
//! Chunks may split the header and rows anywhere. Consumed bytes are split off the buffer
//! (zero-copy `Bytes` per field), so each byte is looked at once.

use bytes::{Buf, Bytes, BytesMut};

use crate::decode::DecodeError;

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Incremental binary COPY decoder.
#[derive(Debug, Default)]
pub struct CopyBinaryDecoder {
    buf: BytesMut,
    header_done: bool,
    done: bool,
    /// Bytes consumed so far, for error offsets.
    consumed: usize,
}

impl CopyBinaryDecoder {
    /// A decoder expecting the header.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a chunk of COPY data.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// True once the trailer was read.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn err(&self, at: usize, reason: impl Into<String>) -> DecodeError {
        DecodeError {
            offset: self.consumed + at,
            tag: None,
            reason: reason.into(),
        }
    }

    fn be_i32(&self, at: usize) -> Option<i32> {
        let b = self.buf.get(at..at + 4)?;
        Some(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The next complete row (`None` per field for NULL); `Ok(None)` when more bytes are
    /// needed or the trailer was seen.
    pub fn next_row(&mut self) -> Result<Option<Vec<Option<Bytes>>>, DecodeError> {
        if self.done {
            if !self.buf.is_empty() {
                return Err(self.err(0, "data after the COPY trailer"));
            }
            return Ok(None);
        }
        if !self.header_done {
            if self.buf.len() < 19 {
                if !SIGNATURE.starts_with(&self.buf[..self.buf.len().min(11)]) {
                    return Err(self.err(0, "not a binary COPY signature"));
                }
                return Ok(None);
            }
            if &self.buf[..11] != SIGNATURE {
                return Err(self.err(0, "not a binary COPY signature"));
            }
            let ext = self.be_i32(15).unwrap_or(0);
            let ext = usize::try_from(ext)
                .map_err(|_| self.err(15, "negative header extension length"))?;
            let total = 19usize
                .checked_add(ext)
                .ok_or_else(|| self.err(15, "header too long"))?;
            if self.buf.len() < total {
                return Ok(None);
            }
            self.buf.advance(total);
            self.consumed += total;
            self.header_done = true;
        }
        // First pass: is a whole row buffered? (only lengths are read)
        let Some(count) = self.buf.get(..2).map(|b| i16::from_be_bytes([b[0], b[1]])) else {
            return Ok(None);
        };
        if count == -1 {
            self.buf.advance(2);
            self.consumed += 2;
            self.done = true;
            if !self.buf.is_empty() {
                return Err(self.err(0, "data after the COPY trailer"));
            }
            return Ok(None);
        }
        let count =
            usize::try_from(count).map_err(|_| self.err(0, format!("bad field count {count}")))?;
        let mut at = 2usize;
        for _ in 0..count {
            let Some(len) = self.be_i32(at) else {
                return Ok(None);
            };
            at += 4;
            if len == -1 {
                continue;
            }
            let len = usize::try_from(len)
                .map_err(|_| self.err(at - 4, format!("bad field length {len}")))?;
            at = at
                .checked_add(len)
                .ok_or_else(|| self.err(at, "field too long"))?;
            if at > self.buf.len() {
                return Ok(None);
            }
        }
        // Second pass: split the row off.
        let mut row = self.buf.split_to(at).freeze();
        self.consumed += at;
        row.advance(2);
        let mut fields = Vec::with_capacity(count);
        for _ in 0..count {
            let len = row.get_i32();
            if len == -1 {
                fields.push(None);
            } else {
                fields.push(Some(row.split_to(len as usize)));
            }
        }
        Ok(Some(fields))
    }

    /// At end of data: `Ok` only when the header and the trailer were seen and nothing remains.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if !self.header_done {
            return Err(self.err(0, "COPY data ended before its header"));
        }
        if !self.done {
            return Err(self.err(0, "COPY data ended before its trailer"));
        }
        if !self.buf.is_empty() {
            return Err(self.err(0, "data after the COPY trailer"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn encode(rows: &[Vec<Option<Vec<u8>>>]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0i32.to_be_bytes());
        out.extend_from_slice(&0i32.to_be_bytes());
        for r in rows {
            out.extend_from_slice(&(r.len() as i16).to_be_bytes());
            for f in r {
                match f {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(b) => {
                        out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                        out.extend_from_slice(b);
                    }
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    fn decode_in_chunks(
        bytes: &[u8],
        split: usize,
    ) -> Result<Vec<Vec<Option<Vec<u8>>>>, DecodeError> {
        let mut d = CopyBinaryDecoder::new();
        let mut out = Vec::new();
        for chunk in bytes.chunks(split.max(1)) {
            d.push(chunk);
            while let Some(row) = d.next_row()? {
                out.push(row.into_iter().map(|f| f.map(|b| b.to_vec())).collect());
            }
        }
        d.finish()?;
        Ok(out)
    }

    #[test]
    fn rows_split_at_every_boundary() {
        let rows = vec![
            vec![Some(b"abc".to_vec()), None, Some(vec![])],
            vec![Some(vec![0, 1, 2, 3]), Some(b"x".to_vec()), None],
        ];
        let bytes = encode(&rows);
        for split in 1..=bytes.len() {
            assert_eq!(
                decode_in_chunks(&bytes, split).unwrap(),
                rows,
                "split {split}"
            );
        }
        assert_eq!(
            decode_in_chunks(&encode(&[]), 3).unwrap(),
            Vec::<Vec<Option<Vec<u8>>>>::new()
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(decode_in_chunks(b"PGCOPX\n\xff\r\n\0\0\0\0\0\0\0\0\0\xff\xff", 5).is_err());
        let bytes = encode(&[vec![Some(b"abc".to_vec())]]);
        assert!(decode_in_chunks(&bytes[..bytes.len() - 1], 4).is_err());
        let mut extra = bytes.clone();
        extra.push(1);
        assert!(decode_in_chunks(&extra, 4).is_err());
    }

    proptest! {
        #[test]
        fn round_trips(rows in proptest::collection::vec(proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)), 0..4), 0..6), split in 1usize..40) {
            let bytes = encode(&rows);
            prop_assert_eq!(decode_in_chunks(&bytes, split).unwrap(), rows);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80), split in 1usize..20) {
            let mut input = SIGNATURE.to_vec();
            input.extend_from_slice(&bytes);
            let _ = decode_in_chunks(&input, split);
            let _ = decode_in_chunks(&bytes, split);
        }
    }
}

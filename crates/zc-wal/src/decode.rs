//! The pgoutput decoder (protocol version 1): the bytes of one logical replication message
//! → a [`LogicalMessage`], or a [`DecodeError`] naming the offset and the reason.
//!
//! [`decode`] is a pure, total function: it never panics, and it never reserves memory for
//! more items than the bytes left could hold (every count is checked against the remaining
//! input before anything is allocated). Layouts follow the PostgreSQL manual, "Logical
//! Replication Message Formats"; only the protocol version 1 messages exist here (no
//! streaming or two-phase commit messages).

use std::fmt;

use bytes::Bytes;
use zc_types::Lsn;

/// A pgoutput message (or binary COPY data) could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("could not decode pgoutput message ({}) at byte {offset}: {reason}", TagDisplay(*tag))]
pub struct DecodeError {
    /// Byte offset in the input where decoding failed.
    pub offset: usize,
    /// The message tag (its first byte), when there was one.
    pub tag: Option<u8>,
    /// What was wrong.
    pub reason: String,
}

/// Shows a tag as `tag 'I'` when it is printable ASCII, else as `tag 0x05`.
struct TagDisplay(Option<u8>);

impl fmt::Display for TagDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(t) if t.is_ascii_graphic() => write!(f, "tag '{}'", char::from(t)),
            Some(t) => write!(f, "tag 0x{t:02x}"),
            None => f.write_str("no tag"),
        }
    }
}

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum LogicalMessage {
    /// Start of a transaction ('B').
    Begin {
        /// The LSN of the transaction's commit record.
        final_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01 00:00:00 UTC.
        commit_time_micros: i64,
        /// Transaction id.
        xid: u32,
    },
    /// End of a transaction ('C').
    Commit {
        /// Flags (currently unused, 0).
        flags: u8,
        /// The LSN of the commit record.
        commit_lsn: Lsn,
        /// The LSN just past the commit record.
        end_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01 00:00:00 UTC.
        commit_time_micros: i64,
    },
    /// The transaction came from another replication origin ('O').
    Origin {
        /// The commit LSN on the origin server.
        commit_lsn: Lsn,
        /// The origin's name.
        name: String,
    },
    /// A relation's schema, sent before its first change and after it changes ('R').
    Relation(Relation),
    /// A type's name, sent for types that are not built in ('Y').
    Type {
        /// The type OID.
        oid: u32,
        /// Its schema ("" means pg_catalog).
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A row insert ('I').
    Insert {
        /// The relation OID.
        relation_id: u32,
        /// The new row.
        new: Vec<TupleValue>,
    },
    /// A row update ('U').
    Update {
        /// The relation OID.
        relation_id: u32,
        /// The old key or row, when the server sent it.
        old: Option<OldTuple>,
        /// The new row.
        new: Vec<TupleValue>,
    },
    /// A row delete ('D').
    Delete {
        /// The relation OID.
        relation_id: u32,
        /// The old key or row.
        old: OldTuple,
    },
    /// Relations were truncated ('T').
    Truncate {
        /// Bit 1: CASCADE; bit 2: RESTART IDENTITY.
        options: u8,
        /// The truncated relations' OIDs.
        relation_ids: Vec<u32>,
    },
    /// A message from `pg_logical_emit_message` ('M').
    Message {
        /// True when emitted as part of a transaction.
        transactional: bool,
        /// The LSN of the message.
        lsn: Lsn,
        /// The prefix.
        prefix: String,
        /// The content.
        content: Vec<u8>,
    },
}

/// The old side of an update or a delete.
#[derive(Debug, Clone, PartialEq)]
pub enum OldTuple {
    /// Only the replica identity key columns ('K'); the other columns are null.
    Key(Vec<TupleValue>),
    /// The whole old row ('O', with `REPLICA IDENTITY FULL`).
    Full(Vec<TupleValue>),
}

/// A relation as pgoutput describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    /// The relation OID.
    pub id: u32,
    /// Its schema ("" means pg_catalog).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The replica identity setting: `d` (default), `n` (nothing), `f` (full), `i` (index).
    pub replica_identity: u8,
    /// The published columns, in order.
    pub columns: Vec<RelationColumn>,
}

/// A column of a [`Relation`].
#[derive(Debug, Clone, PartialEq)]
pub struct RelationColumn {
    /// Flags: bit 1 marks a column of the replica identity key.
    pub flags: u8,
    /// The column name.
    pub name: String,
    /// The column's type OID.
    pub type_oid: u32,
    /// The type modifier (`atttypmod`).
    pub type_modifier: i32,
}

impl RelationColumn {
    /// True when the column is part of the replica identity key.
    pub fn is_key(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq)]
pub enum TupleValue {
    /// NULL ('n').
    Null,
    /// An unchanged TOASTed value that was not sent ('u').
    UnchangedToast,
    /// The value's text form ('t').
    Text(Bytes),
    /// The value's binary form ('b').
    Binary(Bytes),
}

/// The smallest encoding of a relation column: flags, an empty name, type OID, modifier.
const MIN_COLUMN_BYTES: usize = 1 + 1 + 4 + 4;

/// A cursor over one message that reports errors with the current offset and the tag.
struct Reader<'a> {
    rest: &'a [u8],
    pos: usize,
    tag: Option<u8>,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader {
            rest: buf,
            pos: 0,
            tag: None,
        }
    }

    fn err(&self, reason: impl Into<String>) -> DecodeError {
        DecodeError {
            offset: self.pos,
            tag: self.tag,
            reason: reason.into(),
        }
    }

    fn remaining(&self) -> usize {
        self.rest.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let Some((head, tail)) = self.rest.split_at_checked(n) else {
            return Err(self.err(format!(
                "needed {n} bytes but only {} are left",
                self.rest.len()
            )));
        };
        self.rest = tail;
        self.pos = self.pos.saturating_add(n);
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N)?;
        <[u8; N]>::try_from(bytes).map_err(|_| self.err("short read"))
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array()?)))
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self) -> Result<String, DecodeError> {
        let Some(len) = self.rest.iter().position(|&b| b == 0) else {
            return Err(self.err("string is not NUL-terminated"));
        };
        let start = self.pos;
        let bytes = self.take(len)?;
        let text = std::str::from_utf8(bytes).map_err(|e| DecodeError {
            offset: start.saturating_add(e.valid_up_to()),
            tag: self.tag,
            reason: "string is not valid UTF-8".into(),
        })?;
        self.take(1)?;
        Ok(text.to_owned())
    }

    /// An Int32 length that must not be negative.
    fn length(&mut self, what: &str) -> Result<usize, DecodeError> {
        let len = self.i32()?;
        usize::try_from(len).map_err(|_| self.err(format!("negative {what} length {len}")))
    }

    /// Checks that `count` items of at least `min_bytes` each can fit in what is left.
    fn check_count(&self, count: usize, min_bytes: usize, what: &str) -> Result<(), DecodeError> {
        if count.saturating_mul(min_bytes) > self.remaining() {
            return Err(self.err(format!(
                "{count} {what} cannot fit in the {} bytes left",
                self.remaining()
            )));
        }
        Ok(())
    }

    /// The submessage byte that must come next.
    fn expect(&mut self, want: u8) -> Result<(), DecodeError> {
        let at = self.pos;
        let got = self.u8()?;
        if got == want {
            Ok(())
        } else {
            Err(DecodeError {
                offset: at,
                tag: self.tag,
                reason: format!("expected '{}', got {}", char::from(want), byte_name(got)),
            })
        }
    }

    /// TupleData: an Int16 column count, then one submessage per column.
    fn tuple(&mut self) -> Result<Vec<TupleValue>, DecodeError> {
        let count = self.i16()?;
        let count = usize::try_from(count)
            .map_err(|_| self.err(format!("negative column count {count}")))?;
        // Every column takes at least its kind byte.
        self.check_count(count, 1, "columns")?;
        let mut values = Vec::with_capacity(count);
        for _ in 0..count {
            let at = self.pos;
            let value = match self.u8()? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' => {
                    let len = self.length("value")?;
                    TupleValue::Text(Bytes::copy_from_slice(self.take(len)?))
                }
                b'b' => {
                    let len = self.length("value")?;
                    TupleValue::Binary(Bytes::copy_from_slice(self.take(len)?))
                }
                other => {
                    return Err(DecodeError {
                        offset: at,
                        tag: self.tag,
                        reason: format!("unknown tuple value kind {}", byte_name(other)),
                    });
                }
            };
            values.push(value);
        }
        Ok(values)
    }

    /// 'K' or 'O' (already read as `kind`) followed by TupleData.
    fn old_tuple(&mut self, kind: u8, at: usize) -> Result<OldTuple, DecodeError> {
        match kind {
            b'K' => Ok(OldTuple::Key(self.tuple()?)),
            b'O' => Ok(OldTuple::Full(self.tuple()?)),
            other => Err(DecodeError {
                offset: at,
                tag: self.tag,
                reason: format!("expected 'K' or 'O', got {}", byte_name(other)),
            }),
        }
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let id = self.u32()?;
        let namespace = self.string()?;
        let name = self.string()?;
        let replica_identity = self.u8()?;
        let count = self.i16()?;
        let count = usize::try_from(count)
            .map_err(|_| self.err(format!("negative column count {count}")))?;
        self.check_count(count, MIN_COLUMN_BYTES, "columns")?;
        let mut columns = Vec::with_capacity(count);
        for _ in 0..count {
            columns.push(RelationColumn {
                flags: self.u8()?,
                name: self.string()?,
                type_oid: self.u32()?,
                type_modifier: self.i32()?,
            });
        }
        Ok(Relation {
            id,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    fn update(&mut self) -> Result<LogicalMessage, DecodeError> {
        let relation_id = self.u32()?;
        let at = self.pos;
        let old = match self.u8()? {
            b'N' => None,
            kind @ (b'K' | b'O') => {
                let old = self.old_tuple(kind, at)?;
                self.expect(b'N')?;
                Some(old)
            }
            other => {
                return Err(DecodeError {
                    offset: at,
                    tag: self.tag,
                    reason: format!("expected 'K', 'O' or 'N', got {}", byte_name(other)),
                });
            }
        };
        Ok(LogicalMessage::Update {
            relation_id,
            old,
            new: self.tuple()?,
        })
    }

    fn truncate(&mut self) -> Result<LogicalMessage, DecodeError> {
        let count = self.u32()?;
        let options = self.u8()?;
        let count = usize::try_from(count).map_err(|_| self.err("relation count too large"))?;
        self.check_count(count, 4, "relations")?;
        let mut relation_ids = Vec::with_capacity(count);
        for _ in 0..count {
            relation_ids.push(self.u32()?);
        }
        Ok(LogicalMessage::Truncate {
            options,
            relation_ids,
        })
    }

    fn message(&mut self) -> Result<LogicalMessage, DecodeError> {
        let flags = self.u8()?;
        let lsn = self.lsn()?;
        let prefix = self.string()?;
        let len = self.length("content")?;
        let content = self.take(len)?.to_vec();
        Ok(LogicalMessage::Message {
            transactional: flags & 1 != 0,
            lsn,
            prefix,
            content,
        })
    }
}

/// A byte in an error message: as a quoted character when printable ASCII.
fn byte_name(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}'", char::from(b))
    } else {
        format!("0x{b:02x}")
    }
}

/// Decodes one pgoutput (protocol version 1) message: the payload of an XLogData message.
///
/// The whole buffer must be exactly one message; bytes after it are an error.
pub fn decode(buf: &[u8]) -> Result<LogicalMessage, DecodeError> {
    let mut r = Reader::new(buf);
    let tag = r
        .u8()
        .map_err(|_| r.err("empty message: no message type"))?;
    r.tag = Some(tag);
    let msg = match tag {
        b'B' => LogicalMessage::Begin {
            final_lsn: r.lsn()?,
            commit_time_micros: r.i64()?,
            xid: r.u32()?,
        },
        b'C' => LogicalMessage::Commit {
            flags: r.u8()?,
            commit_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            commit_time_micros: r.i64()?,
        },
        b'O' => LogicalMessage::Origin {
            commit_lsn: r.lsn()?,
            name: r.string()?,
        },
        b'R' => LogicalMessage::Relation(r.relation()?),
        b'Y' => LogicalMessage::Type {
            oid: r.u32()?,
            namespace: r.string()?,
            name: r.string()?,
        },
        b'I' => {
            let relation_id = r.u32()?;
            r.expect(b'N')?;
            LogicalMessage::Insert {
                relation_id,
                new: r.tuple()?,
            }
        }
        b'U' => r.update()?,
        b'D' => {
            let relation_id = r.u32()?;
            let at = r.pos;
            let kind = r.u8()?;
            LogicalMessage::Delete {
                relation_id,
                old: r.old_tuple(kind, at)?,
            }
        }
        b'T' => r.truncate()?,
        b'M' => r.message()?,
        other => {
            return Err(DecodeError {
                offset: 0,
                tag: Some(other),
                reason: format!("unknown message type {}", byte_name(other)),
            });
        }
    };
    if r.remaining() != 0 {
        return Err(r.err(format!(
            "{} bytes of trailing garbage after the message",
            r.remaining()
        )));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A test-only byte builder.
    #[derive(Default)]
    struct Enc(Vec<u8>);

    impl Enc {
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn i16(mut self, v: i16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn bytes(mut self, v: &[u8]) -> Self {
            self.0.extend_from_slice(v);
            self
        }
        fn str(self, v: &str) -> Self {
            self.bytes(v.as_bytes()).u8(0)
        }
        fn tuple(self, t: &[TupleValue]) -> Self {
            let mut e = self.i16(i16::try_from(t.len()).unwrap());
            for v in t {
                e = match v {
                    TupleValue::Null => e.u8(b'n'),
                    TupleValue::UnchangedToast => e.u8(b'u'),
                    TupleValue::Text(b) => e.u8(b't').i32(i32::try_from(b.len()).unwrap()).bytes(b),
                    TupleValue::Binary(b) => {
                        e.u8(b'b').i32(i32::try_from(b.len()).unwrap()).bytes(b)
                    }
                };
            }
            e
        }
        fn old(self, o: &OldTuple) -> Self {
            match o {
                OldTuple::Key(t) => self.u8(b'K').tuple(t),
                OldTuple::Full(t) => self.u8(b'O').tuple(t),
            }
        }
    }

    /// The test-only encoder: the inverse of `decode`.
    fn encode(m: &LogicalMessage) -> Vec<u8> {
        let e = Enc::default();
        let e = match m {
            LogicalMessage::Begin {
                final_lsn,
                commit_time_micros,
                xid,
            } => e
                .u8(b'B')
                .u64(final_lsn.0)
                .i64(*commit_time_micros)
                .u32(*xid),
            LogicalMessage::Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_time_micros,
            } => e
                .u8(b'C')
                .u8(*flags)
                .u64(commit_lsn.0)
                .u64(end_lsn.0)
                .i64(*commit_time_micros),
            LogicalMessage::Origin { commit_lsn, name } => e.u8(b'O').u64(commit_lsn.0).str(name),
            LogicalMessage::Relation(r) => {
                let mut e = e
                    .u8(b'R')
                    .u32(r.id)
                    .str(&r.namespace)
                    .str(&r.name)
                    .u8(r.replica_identity)
                    .i16(i16::try_from(r.columns.len()).unwrap());
                for c in &r.columns {
                    e = e
                        .u8(c.flags)
                        .str(&c.name)
                        .u32(c.type_oid)
                        .i32(c.type_modifier);
                }
                e
            }
            LogicalMessage::Type {
                oid,
                namespace,
                name,
            } => e.u8(b'Y').u32(*oid).str(namespace).str(name),
            LogicalMessage::Insert { relation_id, new } => {
                e.u8(b'I').u32(*relation_id).u8(b'N').tuple(new)
            }
            LogicalMessage::Update {
                relation_id,
                old,
                new,
            } => {
                let e = e.u8(b'U').u32(*relation_id);
                let e = match old {
                    Some(o) => e.old(o),
                    None => e,
                };
                e.u8(b'N').tuple(new)
            }
            LogicalMessage::Delete { relation_id, old } => e.u8(b'D').u32(*relation_id).old(old),
            LogicalMessage::Truncate {
                options,
                relation_ids,
            } => {
                let mut e = e
                    .u8(b'T')
                    .u32(u32::try_from(relation_ids.len()).unwrap())
                    .u8(*options);
                for id in relation_ids {
                    e = e.u32(*id);
                }
                e
            }
            LogicalMessage::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => e
                .u8(b'M')
                .u8(u8::from(*transactional))
                .u64(lsn.0)
                .str(prefix)
                .i32(i32::try_from(content.len()).unwrap())
                .bytes(content),
        };
        e.0
    }

    fn text(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// Hand-written bytes for every message type, with what they decode to.
    fn fixtures() -> Vec<(Vec<u8>, LogicalMessage)> {
        vec![
            (
                vec![
                    b'B', 0, 0, 0, 0, 0x01, 0x59, 0xE5, 0x28, // final LSN 0/159E528
                    0, 0, 0, 0, 0, 0, 0x03, 0xE8, // commit time 1000
                    0, 0, 0x02, 0xA0, // xid 672
                ],
                LogicalMessage::Begin {
                    final_lsn: Lsn(0x159E528),
                    commit_time_micros: 1000,
                    xid: 672,
                },
            ),
            (
                vec![
                    b'C', 0, // flags
                    0, 0, 0, 0, 0, 0, 0, 0x10, // commit LSN
                    0, 0, 0, 0, 0, 0, 0, 0x20, // end LSN
                    0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, // commit time -1
                ],
                LogicalMessage::Commit {
                    flags: 0,
                    commit_lsn: Lsn(0x10),
                    end_lsn: Lsn(0x20),
                    commit_time_micros: -1,
                },
            ),
            (
                [b"O\0\0\0\x01\0\0\0\x02".as_slice(), b"origin1\0"].concat(),
                LogicalMessage::Origin {
                    commit_lsn: Lsn(0x1_0000_0002),
                    name: "origin1".into(),
                },
            ),
            (
                [
                    b"R\0\0\x40\0".as_slice(), // relation 16384
                    b"\0",                     // namespace "" (pg_catalog)
                    b"t\xc3\xa9\0",            // name "té"
                    b"d",                      // replica identity default
                    b"\0\x02",                 // 2 columns
                    b"\x01id\0\0\0\0\x17\xff\xff\xff\xff",
                    b"\x00name\0\0\0\x04\x13\0\0\0\x44",
                ]
                .concat(),
                LogicalMessage::Relation(Relation {
                    id: 16384,
                    namespace: String::new(),
                    name: "té".into(),
                    replica_identity: b'd',
                    columns: vec![
                        RelationColumn {
                            flags: 1,
                            name: "id".into(),
                            type_oid: 23,
                            type_modifier: -1,
                        },
                        RelationColumn {
                            flags: 0,
                            name: "name".into(),
                            type_oid: 1043,
                            type_modifier: 68,
                        },
                    ],
                }),
            ),
            (
                [b"Y\0\0\x40\x01".as_slice(), b"public\0", b"mood\0"].concat(),
                LogicalMessage::Type {
                    oid: 16385,
                    namespace: "public".into(),
                    name: "mood".into(),
                },
            ),
            (
                vec![
                    b'I', 0, 0, 0x40, 0, b'N', 0, 4, // 4 columns
                    b't', 0, 0, 0, 1, b'1', // '1'
                    b'n', b'u', // null, unchanged toast
                    b'b', 0, 0, 0, 2, 0xAB, 0xCD,
                ],
                LogicalMessage::Insert {
                    relation_id: 16384,
                    new: vec![
                        text("1"),
                        TupleValue::Null,
                        TupleValue::UnchangedToast,
                        TupleValue::Binary(Bytes::from_static(&[0xAB, 0xCD])),
                    ],
                },
            ),
            (
                vec![b'U', 0, 0, 0, 7, b'N', 0, 1, b't', 0, 0, 0, 0],
                LogicalMessage::Update {
                    relation_id: 7,
                    old: None,
                    new: vec![text("")],
                },
            ),
            (
                vec![
                    b'U', 0, 0, 0, 7, b'K', 0, 2, b't', 0, 0, 0, 1, b'5', b'n', b'N', 0, 2, b't',
                    0, 0, 0, 1, b'6', b'u',
                ],
                LogicalMessage::Update {
                    relation_id: 7,
                    old: Some(OldTuple::Key(vec![text("5"), TupleValue::Null])),
                    new: vec![text("6"), TupleValue::UnchangedToast],
                },
            ),
            (
                vec![
                    b'U', 0, 0, 0, 7, b'O', 0, 1, b'n', b'N', 0, 1, b't', 0, 0, 0, 2, b'h', b'i',
                ],
                LogicalMessage::Update {
                    relation_id: 7,
                    old: Some(OldTuple::Full(vec![TupleValue::Null])),
                    new: vec![text("hi")],
                },
            ),
            (
                vec![b'D', 0, 0, 0, 9, b'K', 0, 1, b't', 0, 0, 0, 1, b'5'],
                LogicalMessage::Delete {
                    relation_id: 9,
                    old: OldTuple::Key(vec![text("5")]),
                },
            ),
            (
                vec![b'D', 0, 0, 0, 9, b'O', 0, 0],
                LogicalMessage::Delete {
                    relation_id: 9,
                    old: OldTuple::Full(vec![]),
                },
            ),
            (
                vec![b'T', 0, 0, 0, 2, 3, 0, 0, 0x40, 0, 0, 0, 0x40, 1],
                LogicalMessage::Truncate {
                    options: 3,
                    relation_ids: vec![16384, 16385],
                },
            ),
            (
                [
                    b"M\x01\0\0\0\0\0\0\0\x30".as_slice(),
                    b"zero/v1\0",
                    b"\0\0\0\x03",
                    b"a\0b",
                ]
                .concat(),
                LogicalMessage::Message {
                    transactional: true,
                    lsn: Lsn(0x30),
                    prefix: "zero/v1".into(),
                    content: b"a\0b".to_vec(),
                },
            ),
        ]
    }

    #[test]
    fn fixtures_decode_and_encode() {
        for (bytes, msg) in fixtures() {
            assert_eq!(decode(&bytes).unwrap(), msg, "{bytes:?}");
            assert_eq!(encode(&msg), bytes, "{msg:?}");
            // Every strict prefix is an error, and so is any extra byte.
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut]).is_err(), "{msg:?} cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            let err = decode(&longer).unwrap_err();
            assert_eq!(err.offset, bytes.len());
            assert!(err.reason.contains("trailing garbage"), "{err}");
        }
    }

    #[test]
    fn key_flag() {
        let col = |flags| RelationColumn {
            flags,
            name: "c".into(),
            type_oid: 23,
            type_modifier: -1,
        };
        assert!(col(1).is_key());
        assert!(col(3).is_key());
        assert!(!col(0).is_key());
        assert!(!col(2).is_key());
    }

    #[test]
    fn errors_name_tag_offset_and_reason() {
        let err = decode(b"").unwrap_err();
        assert_eq!(err.tag, None);
        assert_eq!(
            err.to_string(),
            "could not decode pgoutput message (no tag) at byte 0: empty message: no message type"
        );

        let err = decode(b"Z").unwrap_err();
        assert_eq!(err.tag, Some(b'Z'));
        assert_eq!(
            err.to_string(),
            "could not decode pgoutput message (tag 'Z') at byte 0: unknown message type 'Z'"
        );
        assert!(
            decode(&[0x05])
                .unwrap_err()
                .to_string()
                .contains("(tag 0x05)")
        );

        // Stream and two-phase messages are not protocol version 1.
        for tag in [b'S', b'E', b'c', b'A', b'b', b'P', b'K', b'r', b'p'] {
            assert!(decode(&[tag, 0, 0, 0, 0]).is_err());
        }
    }

    #[test]
    fn bad_strings_are_errors() {
        // Not NUL-terminated.
        let err = decode(b"O\0\0\0\0\0\0\0\x01abc").unwrap_err();
        assert_eq!(err.offset, 9);
        assert!(err.reason.contains("NUL"), "{err}");
        // Invalid UTF-8, reported at the bad byte.
        let err = decode(b"Y\0\0\0\x01ok\xff\0name\0").unwrap_err();
        assert_eq!(err.offset, 7);
        assert!(err.reason.contains("UTF-8"), "{err}");
    }

    #[test]
    fn bad_tuples_are_errors() {
        // Unknown value kind.
        let err = decode(&[b'I', 0, 0, 0, 1, b'N', 0, 1, b'x']).unwrap_err();
        assert_eq!(err.offset, 8);
        assert!(err.reason.contains("unknown tuple value kind 'x'"), "{err}");
        // Negative value length.
        let err =
            decode(&[b'I', 0, 0, 0, 1, b'N', 0, 1, b't', 0xFF, 0xFF, 0xFF, 0xFE]).unwrap_err();
        assert!(err.reason.contains("negative value length -2"), "{err}");
        // Negative column count.
        let err = decode(&[b'I', 0, 0, 0, 1, b'N', 0xFF, 0xFF]).unwrap_err();
        assert!(err.reason.contains("negative column count"), "{err}");
        // Missing 'N'.
        let err = decode(&[b'I', 0, 0, 0, 1, b'K', 0, 0]).unwrap_err();
        assert_eq!(err.offset, 5);
        assert!(err.reason.contains("expected 'N', got 'K'"), "{err}");
        // Update with a bad old-tuple marker, delete without one.
        assert!(decode(&[b'U', 0, 0, 0, 1, b'X', 0, 0]).is_err());
        assert!(decode(&[b'U', 0, 0, 0, 1, b'K', 0, 0, b'K', 0, 0]).is_err());
        assert!(decode(&[b'D', 0, 0, 0, 1, b'N', 0, 0]).is_err());
        // Negative message content length.
        assert!(decode(b"M\0\0\0\0\0\0\0\0\0p\0\xff\xff\xff\xff").is_err());
    }

    #[test]
    fn huge_counts_fail_fast() {
        // An insert claiming 32767 columns with 3 bytes left.
        let b = Enc::default()
            .u8(b'I')
            .u32(1)
            .u8(b'N')
            .i16(i16::MAX)
            .bytes(b"nnn")
            .0;
        let err = decode(&b).unwrap_err();
        assert!(err.reason.contains("32767 columns"), "{err}");
        // A relation claiming 100 columns with the bytes for 2.
        let b = Enc::default()
            .u8(b'R')
            .u32(1)
            .str("s")
            .str("t")
            .u8(b'd')
            .i16(100)
            .bytes(&[0; 20])
            .0;
        assert!(decode(&b).unwrap_err().reason.contains("100 columns"));
        // A truncate claiming u32::MAX relations.
        let b = Enc::default().u8(b'T').u32(u32::MAX).u8(0).u32(1).0;
        assert!(decode(&b).unwrap_err().reason.contains("relations"));
        // A message claiming 2 GiB of content.
        let b = Enc::default()
            .u8(b'M')
            .u8(0)
            .u64(0)
            .str("p")
            .i32(i32::MAX)
            .0;
        assert!(decode(&b).is_err());
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-zA-Z_é0-9 ]{0,10}"
    }

    fn value() -> impl Strategy<Value = TupleValue> {
        prop_oneof![
            Just(TupleValue::Null),
            Just(TupleValue::UnchangedToast),
            proptest::collection::vec(any::<u8>(), 0..12)
                .prop_map(|v| TupleValue::Text(Bytes::from(v))),
            proptest::collection::vec(any::<u8>(), 0..12)
                .prop_map(|v| TupleValue::Binary(Bytes::from(v))),
        ]
    }

    fn tuple() -> impl Strategy<Value = Vec<TupleValue>> {
        proptest::collection::vec(value(), 0..6)
    }

    fn old() -> impl Strategy<Value = OldTuple> {
        prop_oneof![
            tuple().prop_map(OldTuple::Key),
            tuple().prop_map(OldTuple::Full)
        ]
    }

    fn column() -> impl Strategy<Value = RelationColumn> {
        (any::<u8>(), name(), any::<u32>(), any::<i32>()).prop_map(
            |(flags, name, type_oid, type_modifier)| RelationColumn {
                flags,
                name,
                type_oid,
                type_modifier,
            },
        )
    }

    fn message() -> impl Strategy<Value = LogicalMessage> {
        prop_oneof![
            (any::<u64>(), any::<i64>(), any::<u32>()).prop_map(|(l, t, xid)| {
                LogicalMessage::Begin {
                    final_lsn: Lsn(l),
                    commit_time_micros: t,
                    xid,
                }
            }),
            (any::<u8>(), any::<u64>(), any::<u64>(), any::<i64>()).prop_map(|(f, a, b, t)| {
                LogicalMessage::Commit {
                    flags: f,
                    commit_lsn: Lsn(a),
                    end_lsn: Lsn(b),
                    commit_time_micros: t,
                }
            }),
            (any::<u64>(), name()).prop_map(|(l, name)| LogicalMessage::Origin {
                commit_lsn: Lsn(l),
                name
            }),
            (
                any::<u32>(),
                name(),
                name(),
                any::<u8>(),
                proptest::collection::vec(column(), 0..5)
            )
                .prop_map(|(id, namespace, name, replica_identity, columns)| {
                    LogicalMessage::Relation(Relation {
                        id,
                        namespace,
                        name,
                        replica_identity,
                        columns,
                    })
                }),
            (any::<u32>(), name(), name()).prop_map(|(oid, namespace, name)| {
                LogicalMessage::Type {
                    oid,
                    namespace,
                    name,
                }
            }),
            (any::<u32>(), tuple())
                .prop_map(|(relation_id, new)| LogicalMessage::Insert { relation_id, new }),
            (any::<u32>(), proptest::option::of(old()), tuple()).prop_map(
                |(relation_id, old, new)| LogicalMessage::Update {
                    relation_id,
                    old,
                    new,
                }
            ),
            (any::<u32>(), old())
                .prop_map(|(relation_id, old)| LogicalMessage::Delete { relation_id, old }),
            (any::<u8>(), proptest::collection::vec(any::<u32>(), 0..5)).prop_map(
                |(options, relation_ids)| LogicalMessage::Truncate {
                    options,
                    relation_ids,
                }
            ),
            (
                any::<bool>(),
                any::<u64>(),
                name(),
                proptest::collection::vec(any::<u8>(), 0..16)
            )
                .prop_map(|(transactional, l, prefix, content)| {
                    LogicalMessage::Message {
                        transactional,
                        lsn: Lsn(l),
                        prefix,
                        content,
                    }
                }),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(m in message()) {
            prop_assert_eq!(decode(&encode(&m)).unwrap(), m);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn arbitrary_bodies_after_valid_tags_never_panic(
            tag in prop::sample::select(b"BCORYIUDTM".to_vec()),
            body in proptest::collection::vec(any::<u8>(), 0..96),
        ) {
            let mut bytes = vec![tag];
            bytes.extend_from_slice(&body);
            if let Err(e) = decode(&bytes) {
                prop_assert!(e.offset <= bytes.len());
                prop_assert_eq!(e.tag, Some(tag));
            }
        }

        #[test]
        fn truncated_and_mutated_messages_never_panic(
            m in message(),
            cut in any::<prop::sample::Index>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let bytes = encode(&m);
            let cut = cut.index(bytes.len() + 1);
            let truncated = decode(&bytes[..cut]);
            if cut < bytes.len() {
                prop_assert!(truncated.is_err());
            }
            let mut mutated = bytes.clone();
            for (at, x) in flips {
                let i = at.index(mutated.len());
                mutated[i] ^= x;
            }
            let _ = decode(&mutated);
        }
    }
}

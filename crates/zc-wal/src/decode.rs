//! The pgoutput decoder (protocol version 1): bytes of one logical replication message →
//! [`LogicalMessage`], or a [`DecodeError`] naming the offset and the reason.
//!
//! A pure, total function: it never panics and never allocates more than the input can
//! describe (counts are checked against the bytes left before anything is reserved). The
//! layouts follow the PostgreSQL manual, "Logical Replication Message Formats".

use bytes::Bytes;
use zc_types::Lsn;

/// A pgoutput message could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("could not decode pgoutput message{} at byte {offset}: {reason}", tag_text(*tag))]
pub struct DecodeError {
    /// Byte offset in the message where decoding failed.
    pub offset: usize,
    /// The message tag, when there was one.
    pub tag: Option<u8>,
    /// What was wrong.
    pub reason: String,
}

fn tag_text(tag: Option<u8>) -> String {
    match tag {
        Some(t) if t.is_ascii_graphic() => format!(" '{}'", t as char),
        Some(t) => format!(" 0x{t:02x}"),
        None => String::new(),
    }
}

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum LogicalMessage {
    /// Start of a transaction.
    Begin {
        /// The LSN of the transaction's commit record.
        final_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01.
        commit_time_micros: i64,
        /// Transaction id.
        xid: u32,
    },
    /// End of a transaction.
    Commit {
        /// Flags (unused, 0).
        flags: u8,
        /// The LSN of the commit record.
        commit_lsn: Lsn,
        /// The LSN just past the commit record.
        end_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01.
        commit_time_micros: i64,
    },
    /// The transaction came from another replication origin.
    Origin {
        /// The commit LSN on the origin server.
        commit_lsn: Lsn,
        /// The origin's name.
        name: String,
    },
    /// A relation's schema, sent before its first change and after it changes.
    Relation(Relation),
    /// A type's name, sent for non-built-in types.
    Type {
        /// The type OID.
        oid: u32,
        /// Its schema.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A row insert.
    Insert {
        /// The relation.
        relation_id: u32,
        /// The new row.
        new: Vec<TupleValue>,
    },
    /// A row update.
    Update {
        /// The relation.
        relation_id: u32,
        /// The old key or row, when sent.
        old: Option<OldTuple>,
        /// The new row.
        new: Vec<TupleValue>,
    },
    /// A row delete.
    Delete {
        /// The relation.
        relation_id: u32,
        /// The old key or row.
        old: OldTuple,
    },
    /// Relations were truncated.
    Truncate {
        /// Bit 1: CASCADE; bit 2: RESTART IDENTITY.
        options: u8,
        /// The relations.
        relation_ids: Vec<u32>,
    },
    /// A logical message from `pg_logical_emit_message`.
    Message {
        /// Emitted inside a transaction.
        transactional: bool,
        /// Its LSN.
        lsn: Lsn,
        /// The prefix.
        prefix: String,
        /// The content.
        content: Vec<u8>,
    },
}

/// The old side of an update or delete.
#[derive(Debug, Clone, PartialEq)]
pub enum OldTuple {
    /// Only the replica identity key columns ('K'; other columns are null).
    Key(Vec<TupleValue>),
    /// The whole old row ('O', REPLICA IDENTITY FULL).
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
    /// Replica identity setting (d, n, f, i).
    pub replica_identity: u8,
    /// The published columns, in order.
    pub columns: Vec<RelationColumn>,
}

/// A column of a [`Relation`].
#[derive(Debug, Clone, PartialEq)]
pub struct RelationColumn {
    /// Flags: 1 = part of the key.
    pub flags: u8,
    /// Column name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// Type modifier.
    pub type_modifier: i32,
}

impl RelationColumn {
    /// True when the column is part of the replica identity key.
    pub fn is_key(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq)]
pub enum TupleValue {
    /// NULL ('n').
    Null,
    /// An unchanged TOASTed value that was not sent ('u').
    UnchangedToast,
    /// Text form ('t').
    Text(Bytes),
    /// Binary form ('b').
    Binary(Bytes),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    tag: Option<u8>,
}

impl<'a> Reader<'a> {
    fn err(&self, reason: impl Into<String>) -> DecodeError {
        DecodeError {
            offset: self.pos,
            tag: self.tag,
            reason: reason.into(),
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| self.err(format!("needed {n} bytes, {} left", self.remaining())))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| self.err("out of bounds"))?;
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?.first().copied().unwrap_or_default())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
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

    fn cstr(&mut self) -> Result<String, DecodeError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.err("string without terminator"))?;
        let bytes = self.take(nul)?;
        self.take(1)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.err("string is not valid UTF-8"))
    }

    fn tuple(&mut self) -> Result<Vec<TupleValue>, DecodeError> {
        let n = self.i16()?;
        let n = usize::try_from(n).map_err(|_| self.err(format!("negative column count {n}")))?;
        // Every column takes at least one byte.
        if n > self.remaining() {
            return Err(self.err(format!(
                "{n} columns but only {} bytes left",
                self.remaining()
            )));
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let kind = self.u8()?;
            out.push(match kind {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' | b'b' => {
                    let len = self.i32()?;
                    let len = usize::try_from(len)
                        .map_err(|_| self.err(format!("negative value length {len}")))?;
                    let bytes = Bytes::copy_from_slice(self.take(len)?);
                    if kind == b't' {
                        TupleValue::Text(bytes)
                    } else {
                        TupleValue::Binary(bytes)
                    }
                }
                other => return Err(self.err(format!("unknown tuple value kind 0x{other:02x}"))),
            });
        }
        Ok(out)
    }

    fn old_tuple(&mut self, kind: u8) -> Result<OldTuple, DecodeError> {
        match kind {
            b'K' => Ok(OldTuple::Key(self.tuple()?)),
            b'O' => Ok(OldTuple::Full(self.tuple()?)),
            other => Err(self.err(format!("expected 'K' or 'O', got 0x{other:02x}"))),
        }
    }
}

/// Decodes one pgoutput message.
pub fn decode(buf: &[u8]) -> Result<LogicalMessage, DecodeError> {
    let mut r = Reader {
        buf,
        pos: 0,
        tag: None,
    };
    let tag = r.u8()?;
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
            name: r.cstr()?,
        },
        b'R' => {
            let id = r.u32()?;
            let namespace = r.cstr()?;
            let name = r.cstr()?;
            let replica_identity = r.u8()?;
            let n = r.i16()?;
            let n = usize::try_from(n).map_err(|_| r.err(format!("negative column count {n}")))?;
            // Each column takes at least 10 bytes.
            if n.saturating_mul(10) > r.remaining() {
                return Err(r.err(format!("{n} columns but only {} bytes left", r.remaining())));
            }
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                columns.push(RelationColumn {
                    flags: r.u8()?,
                    name: r.cstr()?,
                    type_oid: r.u32()?,
                    type_modifier: r.i32()?,
                });
            }
            LogicalMessage::Relation(Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => LogicalMessage::Type {
            oid: r.u32()?,
            namespace: r.cstr()?,
            name: r.cstr()?,
        },
        b'I' => {
            let relation_id = r.u32()?;
            match r.u8()? {
                b'N' => {}
                other => return Err(r.err(format!("expected 'N', got 0x{other:02x}"))),
            }
            LogicalMessage::Insert {
                relation_id,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation_id = r.u32()?;
            let kind = r.u8()?;
            let old = match kind {
                b'K' | b'O' => {
                    let old = r.old_tuple(kind)?;
                    match r.u8()? {
                        b'N' => {}
                        other => return Err(r.err(format!("expected 'N', got 0x{other:02x}"))),
                    }
                    Some(old)
                }
                b'N' => None,
                other => return Err(r.err(format!("expected 'K', 'O' or 'N', got 0x{other:02x}"))),
            };
            LogicalMessage::Update {
                relation_id,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation_id = r.u32()?;
            let kind = r.u8()?;
            LogicalMessage::Delete {
                relation_id,
                old: r.old_tuple(kind)?,
            }
        }
        b'T' => {
            let n = r.u32()?;
            let options = r.u8()?;
            let n = usize::try_from(n).map_err(|_| r.err("relation count too large"))?;
            if n.saturating_mul(4) > r.remaining() {
                return Err(r.err(format!(
                    "{n} relations but only {} bytes left",
                    r.remaining()
                )));
            }
            let mut relation_ids = Vec::with_capacity(n);
            for _ in 0..n {
                relation_ids.push(r.u32()?);
            }
            LogicalMessage::Truncate {
                options,
                relation_ids,
            }
        }
        b'M' => {
            let flags = r.u8()?;
            let lsn = r.lsn()?;
            let prefix = r.cstr()?;
            let len = r.i32()?;
            let len = usize::try_from(len)
                .map_err(|_| r.err(format!("negative content length {len}")))?;
            let content = r.take(len)?.to_vec();
            LogicalMessage::Message {
                transactional: flags & 1 == 1,
                lsn,
                prefix,
                content,
            }
        }
        other => {
            r.pos = 0;
            return Err(r.err(format!("unknown message type 0x{other:02x}")));
        }
    };
    if r.remaining() != 0 {
        return Err(r.err(format!("{} bytes of trailing garbage", r.remaining())));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A test-only encoder: the inverse of `decode`.
    fn encode(m: &LogicalMessage) -> Vec<u8> {
        fn s(out: &mut Vec<u8>, v: &str) {
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        fn tuple(out: &mut Vec<u8>, t: &[TupleValue]) {
            out.extend_from_slice(&(t.len() as i16).to_be_bytes());
            for v in t {
                match v {
                    TupleValue::Null => out.push(b'n'),
                    TupleValue::UnchangedToast => out.push(b'u'),
                    TupleValue::Text(b) | TupleValue::Binary(b) => {
                        out.push(if matches!(v, TupleValue::Text(_)) {
                            b't'
                        } else {
                            b'b'
                        });
                        out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                        out.extend_from_slice(b);
                    }
                }
            }
        }
        fn old(out: &mut Vec<u8>, o: &OldTuple) {
            match o {
                OldTuple::Key(t) => {
                    out.push(b'K');
                    tuple(out, t);
                }
                OldTuple::Full(t) => {
                    out.push(b'O');
                    tuple(out, t);
                }
            }
        }
        let mut out = Vec::new();
        match m {
            LogicalMessage::Begin {
                final_lsn,
                commit_time_micros,
                xid,
            } => {
                out.push(b'B');
                out.extend_from_slice(&final_lsn.0.to_be_bytes());
                out.extend_from_slice(&commit_time_micros.to_be_bytes());
                out.extend_from_slice(&xid.to_be_bytes());
            }
            LogicalMessage::Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_time_micros,
            } => {
                out.push(b'C');
                out.push(*flags);
                out.extend_from_slice(&commit_lsn.0.to_be_bytes());
                out.extend_from_slice(&end_lsn.0.to_be_bytes());
                out.extend_from_slice(&commit_time_micros.to_be_bytes());
            }
            LogicalMessage::Origin { commit_lsn, name } => {
                out.push(b'O');
                out.extend_from_slice(&commit_lsn.0.to_be_bytes());
                s(&mut out, name);
            }
            LogicalMessage::Relation(r) => {
                out.push(b'R');
                out.extend_from_slice(&r.id.to_be_bytes());
                s(&mut out, &r.namespace);
                s(&mut out, &r.name);
                out.push(r.replica_identity);
                out.extend_from_slice(&(r.columns.len() as i16).to_be_bytes());
                for c in &r.columns {
                    out.push(c.flags);
                    s(&mut out, &c.name);
                    out.extend_from_slice(&c.type_oid.to_be_bytes());
                    out.extend_from_slice(&c.type_modifier.to_be_bytes());
                }
            }
            LogicalMessage::Type {
                oid,
                namespace,
                name,
            } => {
                out.push(b'Y');
                out.extend_from_slice(&oid.to_be_bytes());
                s(&mut out, namespace);
                s(&mut out, name);
            }
            LogicalMessage::Insert { relation_id, new } => {
                out.push(b'I');
                out.extend_from_slice(&relation_id.to_be_bytes());
                out.push(b'N');
                tuple(&mut out, new);
            }
            LogicalMessage::Update {
                relation_id,
                old: o,
                new,
            } => {
                out.push(b'U');
                out.extend_from_slice(&relation_id.to_be_bytes());
                if let Some(o) = o {
                    old(&mut out, o);
                }
                out.push(b'N');
                tuple(&mut out, new);
            }
            LogicalMessage::Delete {
                relation_id,
                old: o,
            } => {
                out.push(b'D');
                out.extend_from_slice(&relation_id.to_be_bytes());
                old(&mut out, o);
            }
            LogicalMessage::Truncate {
                options,
                relation_ids,
            } => {
                out.push(b'T');
                out.extend_from_slice(&(relation_ids.len() as u32).to_be_bytes());
                out.push(*options);
                for id in relation_ids {
                    out.extend_from_slice(&id.to_be_bytes());
                }
            }
            LogicalMessage::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => {
                out.push(b'M');
                out.push(u8::from(*transactional));
                out.extend_from_slice(&lsn.0.to_be_bytes());
                s(&mut out, prefix);
                out.extend_from_slice(&(content.len() as i32).to_be_bytes());
                out.extend_from_slice(content);
            }
        }
        out
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z_é]{0,8}"
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

    fn message() -> impl Strategy<Value = LogicalMessage> {
        prop_oneof![
            (any::<u64>(), any::<i64>(), any::<u32>()).prop_map(|(l, t, x)| {
                LogicalMessage::Begin {
                    final_lsn: Lsn(l),
                    commit_time_micros: t,
                    xid: x,
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
            (any::<u64>(), name()).prop_map(|(l, n)| LogicalMessage::Origin {
                commit_lsn: Lsn(l),
                name: n
            }),
            (
                any::<u32>(),
                name(),
                name(),
                any::<u8>(),
                proptest::collection::vec((any::<u8>(), name(), any::<u32>(), any::<i32>()), 0..5)
            )
                .prop_map(|(id, ns, n, ri, cols)| {
                    LogicalMessage::Relation(Relation {
                        id,
                        namespace: ns,
                        name: n,
                        replica_identity: ri,
                        columns: cols
                            .into_iter()
                            .map(|(flags, name, type_oid, type_modifier)| RelationColumn {
                                flags,
                                name,
                                type_oid,
                                type_modifier,
                            })
                            .collect(),
                    })
                }),
            (any::<u32>(), name(), name()).prop_map(|(oid, namespace, name)| {
                LogicalMessage::Type {
                    oid,
                    namespace,
                    name,
                }
            }),
            (any::<u32>(), tuple()).prop_map(|(r, t)| LogicalMessage::Insert {
                relation_id: r,
                new: t
            }),
            (any::<u32>(), proptest::option::of(old()), tuple()).prop_map(|(r, o, t)| {
                LogicalMessage::Update {
                    relation_id: r,
                    old: o,
                    new: t,
                }
            }),
            (any::<u32>(), old()).prop_map(|(r, o)| LogicalMessage::Delete {
                relation_id: r,
                old: o
            }),
            (any::<u8>(), proptest::collection::vec(any::<u32>(), 0..5)).prop_map(|(o, ids)| {
                LogicalMessage::Truncate {
                    options: o,
                    relation_ids: ids,
                }
            }),
            (
                any::<bool>(),
                any::<u64>(),
                name(),
                proptest::collection::vec(any::<u8>(), 0..16)
            )
                .prop_map(|(t, l, p, c)| LogicalMessage::Message {
                    transactional: t,
                    lsn: Lsn(l),
                    prefix: p,
                    content: c
                }),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(m in message()) {
            prop_assert_eq!(decode(&encode(&m)).unwrap(), m);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn truncated_and_mutated_messages_never_panic(m in message(), cut in any::<usize>(), flip in any::<(usize, u8)>()) {
            let bytes = encode(&m);
            let cut = cut % (bytes.len() + 1);
            let _ = decode(&bytes[..cut]);
            let mut mutated = bytes.clone();
            if !mutated.is_empty() {
                let i = flip.0 % mutated.len();
                mutated[i] ^= flip.1;
                let _ = decode(&mutated);
            }
            if cut < bytes.len() {
                prop_assert!(decode(&bytes[..cut]).is_err());
            }
        }
    }

    #[test]
    fn huge_counts_fail_fast() {
        // Insert claiming 32767 columns with 3 bytes left.
        let mut b = vec![b'I', 0, 0, 0, 1, b'N'];
        b.extend_from_slice(&i16::MAX.to_be_bytes());
        b.extend_from_slice(b"nnn");
        let err = decode(&b).unwrap_err();
        assert!(err.reason.contains("columns"), "{err}");
        // Truncate claiming u32::MAX relations.
        let mut b = vec![b'T'];
        b.extend_from_slice(&u32::MAX.to_be_bytes());
        b.push(0);
        assert!(decode(&b).is_err());
    }

    #[test]
    fn known_insert_fixture() {
        // Insert into relation 16384: (1, NULL, unchanged toast)
        let b = [
            b'I', 0, 0, 0x40, 0, b'N', 0, 3, b't', 0, 0, 0, 1, b'1', b'n', b'u',
        ];
        assert_eq!(
            decode(&b).unwrap(),
            LogicalMessage::Insert {
                relation_id: 16384,
                new: vec![
                    TupleValue::Text(Bytes::from_static(b"1")),
                    TupleValue::Null,
                    TupleValue::UnchangedToast
                ]
            }
        );
        let err = decode(b"Z").unwrap_err();
        assert!(err.to_string().contains("unknown message type"), "{err}");
        let mut trailing = b.to_vec();
        trailing.push(0);
        assert!(decode(&trailing).unwrap_err().reason.contains("trailing"));
    }
}

//! Order-preserving ("memcomparable") byte encoding of value tuples.
//!
//! `encode(a) < encode(b)` (bytewise) exactly when tuple `a` sorts before tuple `b` under
//! zc's value order: NULL first, then by value; numbers numerically, strings by their UTF-8
//! bytes. redb compares `&[u8]` keys bytewise, so rows keyed this way are stored in primary
//! key order and index scans return rows in index order without a comparator callback.
//!
//! Layout per value: a tag byte, then the payload.
//! - NULL `0x01`; false/true `0x02 00/01`; integers `0x03` + big-endian `i64` with the sign
//!   bit flipped; floats `0x04` + the IEEE bits flipped so that their order is numeric;
//! - text `0x05`, JSON `0x06`, bytes `0x07` + the bytes with `0x00` escaped as `0x00 0xFF`,
//!   terminated by `0x00 0x00` (so a prefix sorts before its extensions).
//!
//! Descending index columns invert every byte of the column's encoding.

use zc_types::{Value, ValueRef};

const NULL: u8 = 0x01;
const BOOL: u8 = 0x02;
const INT: u8 = 0x03;
const FLOAT: u8 = 0x04;
const TEXT: u8 = 0x05;
const JSON: u8 = 0x06;
const BYTES: u8 = 0x07;

/// Appends the encoding of one value.
pub fn encode_value(out: &mut Vec<u8>, value: &Value) {
    encode_value_ref(out, value.as_value_ref());
}

/// Appends a borrowed value's encoding (ascending), the same as [`encode_value`]'s.
pub fn encode_value_ref(out: &mut Vec<u8>, value: ValueRef<'_>) {
    match value {
        ValueRef::Null => out.push(NULL),
        ValueRef::Bool(b) => {
            out.push(BOOL);
            out.push(u8::from(b));
        }
        ValueRef::Int(i) => {
            out.push(INT);
            out.extend_from_slice(&((i as u64) ^ (1 << 63)).to_be_bytes());
        }
        ValueRef::Float(f) => {
            out.push(FLOAT);
            // -0.0 and 0.0 compare equal: normalise.
            let f = if f == 0.0 { 0.0 } else { f };
            let bits = f.to_bits();
            let ordered = if bits >> 63 == 1 {
                !bits
            } else {
                bits ^ (1 << 63)
            };
            out.extend_from_slice(&ordered.to_be_bytes());
        }
        ValueRef::Text(s) => escaped(out, TEXT, s.as_bytes()),
        ValueRef::Json(s) => escaped(out, JSON, s.as_bytes()),
        ValueRef::Bytes(b) => escaped(out, BYTES, b),
    }
}

/// The length of [`encode_value`]'s output for `value`, exact unless a string or byte value
/// holds zero bytes (each adds one escape byte): for sizing a buffer once.
pub fn encoded_len(value: &Value) -> usize {
    encoded_len_ref(value.as_value_ref())
}

/// [`encoded_len`] of a borrowed value.
pub fn encoded_len_ref(value: ValueRef<'_>) -> usize {
    match value {
        ValueRef::Null => 1,
        ValueRef::Bool(_) => 2,
        ValueRef::Int(_) | ValueRef::Float(_) => 9,
        ValueRef::Text(s) | ValueRef::Json(s) => s.len() + 3,
        ValueRef::Bytes(b) => b.len() + 3,
    }
}

fn escaped(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    out.reserve(bytes.len() + 3);
    out.push(tag);
    // Copy the runs between zero bytes whole (text rarely has any).
    let mut rest = bytes;
    while let Some(at) = memchr::memchr(0, rest) {
        out.extend_from_slice(&rest[..=at]);
        out.push(0xFF);
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
    out.extend_from_slice(&[0, 0]);
}

/// Encodes a tuple of values (ascending).
pub fn encode<'a>(values: impl IntoIterator<Item = &'a Value>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    for v in values {
        encode_value(&mut out, v);
    }
    out
}

/// Appends a value's encoding in descending order (every byte inverted).
pub fn encode_value_desc(out: &mut Vec<u8>, value: &Value) {
    encode_value_desc_ref(out, value.as_value_ref());
}

/// [`encode_value_desc`] of a borrowed value.
pub fn encode_value_desc_ref(out: &mut Vec<u8>, value: ValueRef<'_>) {
    let start = out.len();
    encode_value_ref(out, value);
    for b in &mut out[start..] {
        *b = !*b;
    }
}

/// Decodes one value from the front of `buf`, returning it and the rest; `None` when the
/// bytes are not a valid encoding.
pub fn decode_value(buf: &[u8]) -> Option<(Value, &[u8])> {
    let (&tag, rest) = buf.split_first()?;
    match tag {
        NULL => Some((Value::Null, rest)),
        BOOL => {
            let (&b, rest) = rest.split_first()?;
            Some((Value::Bool(b != 0), rest))
        }
        INT => {
            let (raw, rest) = rest.split_at_checked(8)?;
            let n = u64::from_be_bytes(raw.try_into().ok()?) ^ (1 << 63);
            Some((Value::Int(n as i64), rest))
        }
        FLOAT => {
            let (raw, rest) = rest.split_at_checked(8)?;
            let ordered = u64::from_be_bytes(raw.try_into().ok()?);
            let bits = if ordered >> 63 == 1 {
                ordered ^ (1 << 63)
            } else {
                !ordered
            };
            Some((Value::Float(f64::from_bits(bits)), rest))
        }
        TEXT | JSON | BYTES => {
            let mut bytes = Vec::new();
            let mut rest = rest;
            loop {
                let at = memchr::memchr(0, rest)?;
                bytes.extend_from_slice(&rest[..at]);
                let escape = *rest.get(at + 1)?;
                rest = &rest[at + 2..];
                match escape {
                    0 => break,
                    0xFF => bytes.push(0),
                    _ => return None,
                }
            }
            let value = match tag {
                TEXT => Value::Text(String::from_utf8(bytes).ok()?),
                JSON => Value::Json(String::from_utf8(bytes).ok()?),
                _ => Value::Bytes(bytes),
            };
            Some((value, rest))
        }
        _ => None,
    }
}

/// The length in bytes of the value encoded at the front of `buf` (ascending, or descending
/// when `desc`); `None` when the bytes are not a valid encoding.
pub fn value_len(buf: &[u8], desc: bool) -> Option<usize> {
    let at = |i: usize| buf.get(i).map(|&b| if desc { !b } else { b });
    match at(0)? {
        NULL => Some(1),
        BOOL => at(1).map(|_| 2),
        INT | FLOAT => (buf.len() >= 9).then_some(9),
        TEXT | JSON | BYTES => {
            // A zero byte (inverted when descending) ends the value or escapes a zero.
            let zero = if desc { 0xFF } else { 0 };
            let mut i = 1;
            loop {
                i += memchr::memchr(zero, buf.get(i..)?)?;
                match at(i + 1)? {
                    0 => return Some(i + 2),
                    0xFF => i += 2,
                    _ => return None,
                }
            }
        }
        _ => None,
    }
}

/// Decodes a whole ascending tuple.
pub fn decode(mut buf: &[u8]) -> Option<Vec<Value>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let (v, rest) = decode_value(buf)?;
        out.push(v);
        buf = rest;
    }
    Some(out)
}

/// The smallest byte string greater than every string that starts with `prefix`, for
/// prefix range scans; `None` when no such bound exists (all `0xFF`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cmp_values(a: &Value, b: &Value) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        match (a, b) {
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Null, _) => Ordering::Less,
            (_, Value::Null) => Ordering::Greater,
            (Value::Int(x), Value::Int(y)) => x.cmp(y),
            (Value::Float(x), Value::Float(y)) => x.partial_cmp(y).unwrap_or(Ordering::Equal),
            (Value::Text(x), Value::Text(y)) => x.as_bytes().cmp(y.as_bytes()),
            (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
            (Value::Bytes(x), Value::Bytes(y)) => x.cmp(y),
            _ => unreachable!(),
        }
    }

    fn same_kind() -> impl Strategy<Value = (Value, Value)> {
        prop_oneof![
            (any::<i64>(), any::<i64>()).prop_map(|(a, b)| (Value::Int(a), Value::Int(b))),
            (-1e12f64..1e12, -1e12f64..1e12).prop_map(|(a, b)| (Value::Float(a), Value::Float(b))),
            (".{0,6}", ".{0,6}").prop_map(|(a, b)| (Value::Text(a), Value::Text(b))),
            ("[\\x00a]{0,4}", "[\\x00a]{0,4}").prop_map(|(a, b)| (Value::Text(a), Value::Text(b))),
            (any::<Vec<u8>>(), any::<Vec<u8>>())
                .prop_map(|(a, b)| (Value::Bytes(a), Value::Bytes(b))),
            (any::<bool>(), any::<bool>()).prop_map(|(a, b)| (Value::Bool(a), Value::Bool(b))),
            any::<i64>().prop_map(|a| (Value::Null, Value::Int(a))),
        ]
    }

    proptest! {
        #[test]
        fn encoding_preserves_order_and_round_trips(
            (a, b) in same_kind(), (c, d) in same_kind()
        ) {
            let ea = encode([&a, &c]);
            let eb = encode([&b, &d]);
            let expected = cmp_values(&a, &b).then_with(|| {
                if std::mem::discriminant(&c) == std::mem::discriminant(&d) {
                    cmp_values(&c, &d)
                } else {
                    std::cmp::Ordering::Equal
                }
            });
            if std::mem::discriminant(&c) == std::mem::discriminant(&d) || cmp_values(&a, &b).is_ne() {
                prop_assert_eq!(ea.cmp(&eb), expected);
            }
            prop_assert_eq!(decode(&ea).unwrap(), vec![a, c]);
        }

        #[test]
        fn descending_inverts_order((a, b) in same_kind()) {
            let (mut ea, mut eb) = (Vec::new(), Vec::new());
            encode_value_desc(&mut ea, &a);
            encode_value_desc(&mut eb, &b);
            prop_assert_eq!(ea.cmp(&eb), cmp_values(&a, &b).reverse());
        }

        #[test]
        fn decode_never_panics(bytes: Vec<u8>) {
            let _ = decode(&bytes);
            let _ = value_len(&bytes, true);
            let _ = value_len(&bytes, false);
        }

        #[test]
        fn value_len_matches_encoding((a, _b) in same_kind(), desc: bool) {
            let mut enc = Vec::new();
            if desc { encode_value_desc(&mut enc, &a) } else { encode_value(&mut enc, &a) }
            let n = enc.len();
            enc.extend_from_slice(&[7, 7]);
            prop_assert_eq!(value_len(&enc, desc), Some(n));
        }
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF]), None);
    }
}

//! PostgreSQL values → [`zc_types::Value`], from the text output form (pgoutput text tuples
//! and `::text` casts) and from the binary send form (binary COPY).
//!
//! The mapping is zero-cache's (see [`zc_types::TypeKind`]): timestamps and dates become
//! epoch milliseconds whose fraction keeps the microseconds, times become milliseconds since
//! midnight, arrays become JSON arrays. The text forms are those of the session settings zc
//! pins on its connections: `DateStyle=ISO, MDY`, `TimeZone=UTC`, `extra_float_digits=3`,
//! `IntervalStyle=postgres`, `bytea_output=hex`.
//!
//! Both functions are total: any input gives a value or a [`ValueError`], never a panic.

use zc_types::{RowBatch, TypeKind, Value, ValueRef};

/// A value could not be read as its expected kind.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("could not read {kind} value: {reason}")]
pub struct ValueError {
    /// A short name of the kind of value expected (`timestamptz`, `int[]`, …).
    pub kind: String,
    /// What was wrong.
    pub reason: String,
}

/// A short, lowercase name of a kind, for errors.
fn kind_name(kind: &TypeKind) -> String {
    let name = match kind {
        TypeKind::Int => "int",
        TypeKind::Float => "float",
        TypeKind::Numeric => "numeric",
        TypeKind::Bool => "bool",
        TypeKind::Text => "text",
        TypeKind::Uuid => "uuid",
        TypeKind::Json => "json",
        TypeKind::Jsonb => "jsonb",
        TypeKind::Timestamp => "timestamp",
        TypeKind::TimestampTz => "timestamptz",
        TypeKind::Date => "date",
        TypeKind::Time => "time",
        TypeKind::TimeTz => "timetz",
        TypeKind::Enum => "enum",
        TypeKind::Bytea => "bytea",
        TypeKind::Unsupported => "unsupported",
        TypeKind::Array(elem) => return format!("{}[]", kind_name(elem)),
    };
    name.to_owned()
}

fn err(kind: &TypeKind, reason: impl Into<String>) -> ValueError {
    ValueError {
        kind: kind_name(kind),
        reason: reason.into(),
    }
}

/// Microseconds from 1970-01-01 to 2000-01-01, PostgreSQL's epoch.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days from 1970-01-01 to 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;
const DAY_MICROS: i64 = 86_400_000_000;
const DAY_MILLIS: i64 = 86_400_000;

/// Microseconds as (fractional) milliseconds, the way every time-like value is kept.
fn micros_to_ms(micros: i128) -> f64 {
    micros as f64 / 1000.0
}

// ---------------------------------------------------------------------------------------
// Binary
// ---------------------------------------------------------------------------------------

/// True when [`decode_binary`] reads this kind; otherwise a binary COPY should select the
/// column as `col::text` and read it with [`parse_text`].
pub fn binary_supported(kind: &TypeKind) -> bool {
    match kind {
        TypeKind::Int
        | TypeKind::Float
        | TypeKind::Bool
        | TypeKind::Text
        | TypeKind::Uuid
        | TypeKind::Json
        | TypeKind::Jsonb
        | TypeKind::Timestamp
        | TypeKind::TimestampTz
        | TypeKind::Date
        | TypeKind::Time
        | TypeKind::TimeTz
        | TypeKind::Bytea => true,
        TypeKind::Numeric | TypeKind::Enum | TypeKind::Unsupported | TypeKind::Array(_) => false,
    }
}

/// Exactly `N` bytes, or an error naming the length found.
fn fixed<const N: usize>(kind: &TypeKind, b: &[u8]) -> Result<[u8; N], ValueError> {
    <[u8; N]>::try_from(b).map_err(|_| err(kind, format!("expected {N} bytes, got {}", b.len())))
}

/// Reads PostgreSQL's binary send form (as `COPY … (FORMAT binary)` produces it).
///
/// Kinds for which [`binary_supported`] is false are an error.
pub fn decode_binary(kind: &TypeKind, bytes: &[u8]) -> Result<Value, ValueError> {
    Ok(match kind {
        TypeKind::Int => Value::Int(match bytes.len() {
            2 => i64::from(i16::from_be_bytes(fixed(kind, bytes)?)),
            4 => i64::from(i32::from_be_bytes(fixed(kind, bytes)?)),
            8 => i64::from_be_bytes(fixed(kind, bytes)?),
            n => {
                return Err(err(
                    kind,
                    format!("an integer has 2, 4 or 8 bytes, not {n}"),
                ));
            }
        }),
        TypeKind::Float => Value::Float(match bytes.len() {
            4 => float4_to_f64(f32::from_be_bytes(fixed(kind, bytes)?)),
            8 => f64::from_be_bytes(fixed(kind, bytes)?),
            n => return Err(err(kind, format!("a float has 4 or 8 bytes, not {n}"))),
        }),
        TypeKind::Bool => match fixed::<1>(kind, bytes)? {
            [0] => Value::Bool(false),
            [1] => Value::Bool(true),
            [b] => return Err(err(kind, format!("invalid boolean byte 0x{b:02x}"))),
        },
        TypeKind::Text => Value::Text(utf8(kind, bytes)?),
        TypeKind::Json => Value::Json(utf8(kind, bytes)?),
        TypeKind::Jsonb => match bytes.split_first() {
            Some((1, rest)) => Value::Json(utf8(kind, rest)?),
            Some((v, _)) => return Err(err(kind, format!("unknown jsonb version {v}"))),
            None => return Err(err(kind, "empty jsonb value")),
        },
        TypeKind::Uuid => Value::Text(format_uuid(&fixed::<16>(kind, bytes)?)),
        TypeKind::Timestamp | TypeKind::TimestampTz => {
            match i64::from_be_bytes(fixed(kind, bytes)?) {
                i64::MAX => Value::Float(f64::INFINITY),
                i64::MIN => Value::Float(f64::NEG_INFINITY),
                micros => Value::Float(micros_to_ms(
                    i128::from(micros) + i128::from(PG_EPOCH_MICROS),
                )),
            }
        }
        TypeKind::Date => match i32::from_be_bytes(fixed(kind, bytes)?) {
            i32::MAX => Value::Float(f64::INFINITY),
            i32::MIN => Value::Float(f64::NEG_INFINITY),
            days => Value::Float(days_to_ms(i64::from(days) + PG_EPOCH_DAYS)),
        },
        TypeKind::Time => {
            let micros = i64::from_be_bytes(fixed(kind, bytes)?);
            Value::Float(micros_to_ms(i128::from(micros)))
        }
        TypeKind::TimeTz => {
            let b: [u8; 12] = fixed(kind, bytes)?;
            let (time, zone) = b.split_at(8);
            let micros = i64::from_be_bytes(fixed(kind, time)?);
            // The zone is in seconds west of UTC: utc = local + zone.
            let zone = i32::from_be_bytes(fixed(kind, zone)?);
            Value::Float(timetz_ms(i128::from(micros), -i128::from(zone)))
        }
        TypeKind::Bytea => Value::Bytes(bytes.to_vec()),
        TypeKind::Numeric | TypeKind::Enum | TypeKind::Unsupported | TypeKind::Array(_) => {
            return Err(err(kind, "no binary form is supported for this type"));
        }
    })
}

/// Appends the value of a field in binary send form to the row `batch` is building: the
/// same value as [`decode_binary`] gives, without an allocation of its own for strings.
pub(crate) fn push_binary(
    kind: &TypeKind,
    bytes: &[u8],
    batch: &mut RowBatch,
) -> Result<(), ValueError> {
    let text = |b| utf8_str(kind, b);
    match kind {
        TypeKind::Text => batch.push(ValueRef::Text(text(bytes)?)),
        TypeKind::Json => batch.push(ValueRef::Json(text(bytes)?)),
        TypeKind::Jsonb => match bytes.split_first() {
            Some((1, rest)) => batch.push(ValueRef::Json(text(rest)?)),
            _ => batch.push(decode_binary(kind, bytes)?.as_value_ref()),
        },
        TypeKind::Uuid => {
            let ascii = uuid_text(&fixed::<16>(kind, bytes)?);
            batch.push(ValueRef::Text(text(&ascii)?));
        }
        TypeKind::Bytea => batch.push(ValueRef::Bytes(bytes)),
        // Scalars (no allocation), and the errors of the rest.
        _ => batch.push(decode_binary(kind, bytes)?.as_value_ref()),
    }
    Ok(())
}

/// A float4 as the number its shortest decimal text names, so that a value read in binary
/// (initial copy) equals the one read from text (pgoutput prints float4 that way with
/// `extra_float_digits` ≥ 1), e.g. 1.1f32 → 1.1 rather than 1.100000023841858.
fn float4_to_f64(f: f32) -> f64 {
    if !f.is_finite() {
        return f64::from(f);
    }
    format!("{f}").parse().unwrap_or(f64::from(f))
}

fn utf8(kind: &TypeKind, b: &[u8]) -> Result<String, ValueError> {
    utf8_str(kind, b).map(str::to_owned)
}

fn utf8_str<'a>(kind: &TypeKind, b: &'a [u8]) -> Result<&'a str, ValueError> {
    std::str::from_utf8(b)
        .map_err(|e| err(kind, format!("invalid UTF-8 at byte {}", e.valid_up_to())))
}

fn format_uuid(b: &[u8; 16]) -> String {
    uuid_text(b).iter().map(|&c| char::from(c)).collect()
}

/// A uuid's canonical text (lowercase hex, dashes after bytes 4, 6, 8 and 10), in ASCII.
fn uuid_text(b: &[u8; 16]) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; 36];
    let mut at = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        if let Some(pair) = out.get_mut(at..at + 2) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0x0f)];
        }
        at += 2;
    }
    out
}

/// Milliseconds since midnight UTC of a local time with an offset east of UTC, wrapped into
/// one day.
fn timetz_ms(local_micros: i128, east_secs: i128) -> f64 {
    let utc = (local_micros - east_secs * 1_000_000).rem_euclid(i128::from(DAY_MICROS));
    micros_to_ms(utc)
}

fn days_to_ms(days_since_1970: i64) -> f64 {
    (i128::from(days_since_1970) * i128::from(DAY_MILLIS)) as f64
}

// ---------------------------------------------------------------------------------------
// Text
// ---------------------------------------------------------------------------------------

/// Reads PostgreSQL's text output form (as pgoutput text tuples and `::text` casts give it,
/// under the session settings in the module documentation).
pub fn parse_text(kind: &TypeKind, text: &str) -> Result<Value, ValueError> {
    let invalid = || err(kind, format!("invalid input {:?}", clip(text)));
    Ok(match kind {
        TypeKind::Int => Value::Int(text.trim().parse().map_err(|_| invalid())?),
        TypeKind::Float | TypeKind::Numeric => Value::Float(parse_float(text).ok_or_else(invalid)?),
        TypeKind::Bool => match text.trim() {
            "t" | "true" => Value::Bool(true),
            "f" | "false" => Value::Bool(false),
            _ => return Err(invalid()),
        },
        TypeKind::Text | TypeKind::Uuid | TypeKind::Enum | TypeKind::Unsupported => {
            Value::Text(text.to_owned())
        }
        TypeKind::Json | TypeKind::Jsonb => Value::Json(text.to_owned()),
        TypeKind::Timestamp | TypeKind::TimestampTz => {
            Value::Float(parse_timestamp(text).ok_or_else(invalid)?)
        }
        TypeKind::Date => Value::Float(parse_date_text(text).ok_or_else(invalid)?),
        TypeKind::Time => {
            let (micros, rest) = parse_time(text).ok_or_else(invalid)?;
            if !rest.is_empty() {
                return Err(invalid());
            }
            Value::Float(micros_to_ms(i128::from(micros)))
        }
        TypeKind::TimeTz => {
            let (micros, rest) = parse_time(text).ok_or_else(invalid)?;
            let (east, rest) = parse_offset(rest).ok_or_else(invalid)?;
            if !rest.is_empty() {
                return Err(invalid());
            }
            Value::Float(timetz_ms(i128::from(micros), i128::from(east)))
        }
        TypeKind::Bytea => {
            let hex = text
                .strip_prefix("\\x")
                .ok_or_else(|| err(kind, "expected the hex format (\\x…)"))?;
            Value::Bytes(parse_hex(hex).ok_or_else(|| err(kind, "invalid hex digits"))?)
        }
        TypeKind::Array(elem) => {
            let json = parse_array(text, elem).map_err(|reason| err(kind, reason))?;
            Value::Json(json.to_string())
        }
    })
}

/// The start of a long input, for error messages.
fn clip(text: &str) -> &str {
    match text.char_indices().nth(64) {
        Some((i, _)) => text.get(..i).unwrap_or(text),
        None => text,
    }
}

fn parse_float(text: &str) -> Option<f64> {
    match text.trim() {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        t => t.parse().ok(),
    }
}

fn parse_hex(hex: &str) -> Option<Vec<u8>> {
    let digits = hex.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    digits
        .chunks_exact(2)
        .map(|pair| match pair {
            [hi, lo] => Some((nibble(*hi)? << 4) | nibble(*lo)?),
            _ => None,
        })
        .collect()
}

/// Days from 1970-01-01 to a proleptic Gregorian date (astronomical years: 1 BC is year 0).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let shifted_month = (month + 9) % 12; // March = 0
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => 31,
    }
}

/// Between `min` and `max` ASCII digits at the start of `s`, as a number, and the rest.
fn digits(s: &str, min: usize, max: usize) -> Option<(i64, &str)> {
    let n = s.bytes().take_while(u8::is_ascii_digit).count();
    if n < min || n > max {
        return None;
    }
    let (d, rest) = s.split_at_checked(n)?;
    Some((d.parse().ok()?, rest))
}

/// Splits off a trailing " BC".
fn strip_bc(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(t) => (t, true),
        None => (text, false),
    }
}

/// "YYYY-MM-DD" (four or more year digits) → (days since 1970-01-01, rest).
fn parse_date(s: &str, bc: bool) -> Option<(i64, &str)> {
    let (y, rest) = digits(s, 4, 8)?;
    let (m, rest) = digits(rest.strip_prefix('-')?, 2, 2)?;
    let (d, rest) = digits(rest.strip_prefix('-')?, 2, 2)?;
    if y == 0 {
        return None;
    }
    let year = if bc { 1 - y } else { y };
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(year, m) {
        return None;
    }
    Some((days_from_civil(year, m, d), rest))
}

fn parse_date_text(text: &str) -> Option<f64> {
    match text {
        "infinity" => return Some(f64::INFINITY),
        "-infinity" => return Some(f64::NEG_INFINITY),
        _ => {}
    }
    let (t, bc) = strip_bc(text);
    let (days, rest) = parse_date(t, bc)?;
    rest.is_empty().then(|| days_to_ms(days))
}

/// "HH:MM:SS[.ffffff]" → (microseconds since midnight, rest). "24:00:00" is allowed.
fn parse_time(s: &str) -> Option<(i64, &str)> {
    let (h, rest) = digits(s, 2, 2)?;
    let (m, rest) = digits(rest.strip_prefix(':')?, 2, 2)?;
    let (sec, mut rest) = digits(rest.strip_prefix(':')?, 2, 2)?;
    let mut frac = 0i64;
    if let Some(r) = rest.strip_prefix('.') {
        let n = r.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 || n > 6 {
            return None;
        }
        let (f, r) = r.split_at_checked(n)?;
        let scale = 10i64.checked_pow(u32::try_from(6 - n).ok()?)?;
        frac = f.parse::<i64>().ok()?.checked_mul(scale)?;
        rest = r;
    }
    if m > 59 || sec > 60 {
        return None;
    }
    let micros = ((h * 60 + m) * 60 + sec) * 1_000_000 + frac;
    (micros <= DAY_MICROS).then_some((micros, rest))
}

/// "+HH[:MM[:SS]]" or "-…" → (offset in seconds east of UTC, rest).
fn parse_offset(s: &str) -> Option<(i64, &str)> {
    let (sign, rest) = match s.strip_prefix('+') {
        Some(r) => (1, r),
        None => (-1, s.strip_prefix('-')?),
    };
    let (h, mut rest) = digits(rest, 2, 2)?;
    let mut secs = h * 3600;
    if let Some(r) = rest.strip_prefix(':') {
        let (m, r) = digits(r, 2, 2)?;
        secs += m * 60;
        rest = r;
        if let Some(r) = rest.strip_prefix(':') {
            let (sec, r) = digits(r, 2, 2)?;
            secs += sec;
            rest = r;
        }
    }
    Some((sign * secs, rest))
}

/// Timestamp text, with or without an offset, optionally ending in " BC" → epoch ms.
fn parse_timestamp(text: &str) -> Option<f64> {
    match text {
        "infinity" => return Some(f64::INFINITY),
        "-infinity" => return Some(f64::NEG_INFINITY),
        _ => {}
    }
    let (t, bc) = strip_bc(text);
    let (days, rest) = parse_date(t, bc)?;
    let rest = rest.strip_prefix(' ').or_else(|| rest.strip_prefix('T'))?;
    let (micros, rest) = parse_time(rest)?;
    let east = if rest.is_empty() {
        0
    } else {
        let (east, rest) = parse_offset(rest)?;
        if !rest.is_empty() {
            return None;
        }
        east
    };
    let utc = i128::from(days) * i128::from(DAY_MICROS) + i128::from(micros)
        - i128::from(east) * 1_000_000;
    Some(micros_to_ms(utc))
}

// ---------------------------------------------------------------------------------------
// Arrays
// ---------------------------------------------------------------------------------------

/// PostgreSQL's limit on array dimensions.
const MAX_DIMENSIONS: usize = 6;

/// An array literal → a JSON array whose elements are read with `elem`.
fn parse_array(text: &str, elem: &TypeKind) -> Result<serde_json::Value, String> {
    let body = strip_dimensions(text.trim())?;
    let mut p = ArrayParser {
        rest: body,
        elem,
        offset: text.len().saturating_sub(body.len()),
    };
    let value = p.array(1)?;
    p.skip_space();
    if !p.rest.is_empty() {
        return Err(format!("unexpected text after the array at {}", p.offset));
    }
    Ok(value)
}

/// Strips a dimension decoration such as `[0:1]=` or `[1:2][0:1]=`.
fn strip_dimensions(text: &str) -> Result<&str, String> {
    if !text.starts_with('[') {
        return Ok(text);
    }
    let mut rest = text;
    while let Some(r) = rest.strip_prefix('[') {
        let (bounds, r) = r.split_once(']').ok_or("unterminated array dimension")?;
        let (lo, hi) = bounds.split_once(':').ok_or("invalid array dimension")?;
        let bound = |s: &str| s.trim().parse::<i32>().is_ok();
        if !bound(lo) || !bound(hi) {
            return Err(format!("invalid array dimension [{bounds}]"));
        }
        rest = r;
    }
    rest.trim_start()
        .strip_prefix('=')
        .map(str::trim_start)
        .ok_or_else(|| "expected '=' after the array dimensions".to_owned())
}

struct ArrayParser<'a> {
    rest: &'a str,
    elem: &'a TypeKind,
    /// Byte offset of `rest` in the whole text, for errors.
    offset: usize,
}

impl ArrayParser<'_> {
    fn peek(&self) -> Option<char> {
        self.rest.chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.rest = self.rest.get(c.len_utf8()..).unwrap_or_default();
        self.offset += c.len_utf8();
        Some(c)
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.bump();
        }
    }

    /// `{…}`, at nesting level `depth` (1 for the outermost).
    fn array(&mut self, depth: usize) -> Result<serde_json::Value, String> {
        if depth > MAX_DIMENSIONS {
            return Err(format!("more than {MAX_DIMENSIONS} array dimensions"));
        }
        self.skip_space();
        if self.bump() != Some('{') {
            return Err(format!("expected '{{' at {}", self.offset));
        }
        let mut items = Vec::new();
        self.skip_space();
        if self.peek() == Some('}') {
            self.bump();
            return Ok(serde_json::Value::Array(items));
        }
        loop {
            self.skip_space();
            let item = match self.peek() {
                Some('{') => self.array(depth + 1)?,
                Some('"') => {
                    let s = self.quoted()?;
                    element_json(&s, self.elem)?
                }
                Some(_) => match self.unquoted()? {
                    None => serde_json::Value::Null,
                    Some(s) => element_json(&s, self.elem)?,
                },
                None => return Err("unterminated array".into()),
            };
            items.push(item);
            self.skip_space();
            match self.bump() {
                Some(',') => {}
                Some('}') => return Ok(serde_json::Value::Array(items)),
                Some(c) => {
                    return Err(format!(
                        "expected ',' or '}}' at {}, got {c:?}",
                        self.offset
                    ));
                }
                None => return Err("unterminated array".into()),
            }
        }
    }

    /// A double-quoted element with backslash escapes.
    fn quoted(&mut self) -> Result<String, String> {
        self.bump();
        let mut s = String::new();
        loop {
            match self.bump() {
                Some('\\') => s.push(self.bump().ok_or("unterminated escape in an array")?),
                Some('"') => return Ok(s),
                Some(c) => s.push(c),
                None => return Err("unterminated quoted array element".into()),
            }
        }
    }

    /// An unquoted element up to `,` or `}`; `None` for NULL.
    fn unquoted(&mut self) -> Result<Option<String>, String> {
        let mut s = String::new();
        // Length of `s` up to its last escaped character: escaped spaces are not trimmed.
        let mut kept = 0;
        let mut escaped = false;
        while let Some(c) = self.peek() {
            match c {
                ',' | '}' => break,
                '{' | '"' => {
                    return Err(format!(
                        "unexpected {c:?} in an array element at {}",
                        self.offset
                    ));
                }
                '\\' => {
                    self.bump();
                    s.push(self.bump().ok_or("unterminated escape in an array")?);
                    kept = s.len();
                    escaped = true;
                }
                _ => {
                    self.bump();
                    s.push(c);
                }
            }
        }
        let trimmed_len = s.trim_end().len().max(kept);
        s.truncate(trimmed_len);
        if s.is_empty() {
            return Err(format!("empty array element at {}", self.offset));
        }
        if !escaped && s.eq_ignore_ascii_case("NULL") {
            return Ok(None);
        }
        Ok(Some(s))
    }
}

/// One array element's text → its JSON value.
fn element_json(text: &str, elem: &TypeKind) -> Result<serde_json::Value, String> {
    match parse_text(elem, text).map_err(|e| e.to_string())? {
        Value::Json(json) => {
            serde_json::from_str(&json).map_err(|e| format!("invalid JSON element: {e}"))
        }
        other => Ok(other.to_json()),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn float(kind: TypeKind, text: &str) -> f64 {
        match parse_text(&kind, text).unwrap() {
            Value::Float(f) => f,
            other => panic!("{other:?}"),
        }
    }

    fn array(elem: TypeKind, text: &str) -> Result<Value, ValueError> {
        parse_text(&TypeKind::Array(Box::new(elem)), text)
    }

    fn json(text: &str) -> Value {
        Value::Json(text.into())
    }

    #[test]
    fn timestamps() {
        let tz = |t| float(TypeKind::TimestampTz, t);
        assert_eq!(tz("2024-01-02 03:04:05.123456+00"), 1704164645123.456);
        assert_eq!(tz("2024-01-02 03:04:05.5+00"), 1704164645500.0);
        assert_eq!(tz("1970-01-01 00:00:00+00"), 0.0);
        assert_eq!(tz("1970-01-01 05:30:00+05:30"), 0.0);
        assert_eq!(tz("1970-01-01 05:45:30+05:45:30"), 0.0);
        assert_eq!(tz("1969-12-31 19:00:00-05"), 0.0);
        assert_eq!(tz("1969-12-31 23:59:59-00:00:01"), 0.0);
        assert_eq!(tz("infinity"), f64::INFINITY);
        assert_eq!(tz("-infinity"), f64::NEG_INFINITY);
        assert_eq!(tz("10000-01-01 00:00:00+00"), 253402300800000.0);
        assert_eq!(
            float(TypeKind::Timestamp, "2000-01-01 00:00:00"),
            946684800000.0
        );
        assert_eq!(float(TypeKind::Timestamp, "1970-01-01T00:00:01"), 1000.0);
        // 0001-01-01 BC is year 0, a leap year: 366 days before 0001-01-01.
        let ad1 = float(TypeKind::Timestamp, "0001-01-01 00:00:00");
        let bc1 = float(TypeKind::Timestamp, "0001-01-01 00:00:00 BC");
        assert_eq!(ad1 - bc1, 366.0 * 86_400_000.0);
        assert_eq!(tz("0001-01-01 00:00:00+00 BC"), bc1);
        assert_eq!(ad1, -62135596800000.0);
        for bad in [
            "",
            "2024-13-01 00:00:00+00",
            "2023-02-29 00:00:00+00",
            "2024-01-01",
            "2024-01-01 25:00:00",
            "2024-01-01 24:00:01",
            "2024-01-01 00:00:00.1234567",
            "2024-01-01 00:00:00+",
            "2024-01-01 00:00:00+00 AD",
            "0000-01-01 00:00:00",
            "Infinity",
        ] {
            assert!(parse_text(&TypeKind::TimestampTz, bad).is_err(), "{bad}");
        }
        assert_eq!(tz("2024-02-29 00:00:00+00"), 1709164800000.0);
    }

    #[test]
    fn dates_and_times() {
        assert_eq!(float(TypeKind::Date, "1970-01-01"), 0.0);
        assert_eq!(float(TypeKind::Date, "1970-01-02"), 86_400_000.0);
        assert_eq!(float(TypeKind::Date, "1969-12-31"), -86_400_000.0);
        assert_eq!(float(TypeKind::Date, "2000-01-01"), 946684800000.0);
        assert_eq!(
            float(TypeKind::Date, "4714-11-24 BC"),
            -210866803200000.0 // Julian day 0
        );
        assert_eq!(float(TypeKind::Date, "infinity"), f64::INFINITY);
        assert_eq!(float(TypeKind::Date, "-infinity"), f64::NEG_INFINITY);
        assert!(parse_text(&TypeKind::Date, "yesterday").is_err());
        assert!(parse_text(&TypeKind::Date, "2024-04-31").is_err());
        assert!(parse_text(&TypeKind::Date, "1900-02-29").is_err());
        assert_eq!(float(TypeKind::Date, "2000-02-29"), 951782400000.0);

        assert_eq!(float(TypeKind::Time, "00:00:00"), 0.0);
        assert_eq!(float(TypeKind::Time, "01:00:00.5"), 3_600_500.0);
        assert_eq!(float(TypeKind::Time, "12:34:56.000789"), 45_296_000.789);
        assert_eq!(float(TypeKind::Time, "24:00:00"), 86_400_000.0);
        assert!(parse_text(&TypeKind::Time, "24:00:00.000001").is_err());
        assert!(parse_text(&TypeKind::Time, "12:60:00").is_err());
        assert!(parse_text(&TypeKind::Time, "12:00").is_err());
        assert!(parse_text(&TypeKind::Time, "12:00:00+00").is_err());

        assert_eq!(float(TypeKind::TimeTz, "01:00:00+02"), 82_800_000.0);
        assert_eq!(float(TypeKind::TimeTz, "23:00:00-02"), 3_600_000.0);
        assert_eq!(float(TypeKind::TimeTz, "05:30:00.25+05:30"), 250.0);
        assert_eq!(float(TypeKind::TimeTz, "00:00:10+00:00:10"), 0.0);
        assert_eq!(float(TypeKind::TimeTz, "24:00:00+00"), 0.0);
        assert!(parse_text(&TypeKind::TimeTz, "01:00:00").is_err());
    }

    #[test]
    fn scalars() {
        assert_eq!(parse_text(&TypeKind::Int, "-42").unwrap(), Value::Int(-42));
        assert_eq!(
            parse_text(&TypeKind::Int, "9223372036854775807").unwrap(),
            Value::Int(i64::MAX)
        );
        assert!(parse_text(&TypeKind::Int, "1.5").is_err());
        assert!(parse_text(&TypeKind::Int, "9223372036854775808").is_err());
        assert_eq!(float(TypeKind::Numeric, "123.4500"), 123.45);
        assert_eq!(float(TypeKind::Numeric, "-1e-7"), -1e-7);
        assert!(float(TypeKind::Numeric, "NaN").is_nan());
        assert_eq!(float(TypeKind::Float, "Infinity"), f64::INFINITY);
        assert_eq!(float(TypeKind::Float, "-Infinity"), f64::NEG_INFINITY);
        assert_eq!(float(TypeKind::Float, "1.1"), 1.1);
        assert!(parse_text(&TypeKind::Float, "one").is_err());
        assert_eq!(parse_text(&TypeKind::Bool, "t").unwrap(), Value::Bool(true));
        assert_eq!(
            parse_text(&TypeKind::Bool, "false").unwrap(),
            Value::Bool(false)
        );
        assert!(parse_text(&TypeKind::Bool, "yes").is_err());
        assert_eq!(
            parse_text(&TypeKind::Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap(),
            Value::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into())
        );
        assert_eq!(
            parse_text(&TypeKind::Enum, "happy").unwrap(),
            Value::Text("happy".into())
        );
        assert_eq!(
            parse_text(&TypeKind::Jsonb, r#"{"a": 1}"#).unwrap(),
            json(r#"{"a": 1}"#)
        );
        assert_eq!(
            parse_text(&TypeKind::Bytea, "\\x00fFa0").unwrap(),
            Value::Bytes(vec![0, 255, 160])
        );
        assert_eq!(
            parse_text(&TypeKind::Bytea, "\\x").unwrap(),
            Value::Bytes(vec![])
        );
        assert!(parse_text(&TypeKind::Bytea, "\\x0").is_err());
        assert!(parse_text(&TypeKind::Bytea, "\\xzz").is_err());
        assert!(parse_text(&TypeKind::Bytea, "abc").is_err());
    }

    #[test]
    fn error_messages() {
        let e = parse_text(&TypeKind::TimestampTz, "soon").unwrap_err();
        assert_eq!(
            e.to_string(),
            "could not read timestamptz value: invalid input \"soon\""
        );
        let e = array(TypeKind::Int, "{x}").unwrap_err();
        assert_eq!(e.kind, "int[]");
        let e = decode_binary(&TypeKind::Numeric, &[0, 0]).unwrap_err();
        assert_eq!(e.kind, "numeric");
    }

    #[test]
    fn arrays() {
        assert_eq!(
            array(TypeKind::Int, "{1,2,NULL}").unwrap(),
            json("[1,2,null]")
        );
        assert_eq!(
            array(
                TypeKind::Text,
                r#"{"a b","c\"d",NULL,"NULL",null,x,"back\\slash"}"#
            )
            .unwrap(),
            json(r#"["a b","c\"d",null,"NULL",null,"x","back\\slash"]"#)
        );
        assert_eq!(
            array(TypeKind::Int, "{{1,2},{3,4}}").unwrap(),
            json("[[1,2],[3,4]]")
        );
        assert_eq!(array(TypeKind::Int, "{}").unwrap(), json("[]"));
        assert_eq!(array(TypeKind::Int, "[0:1]={5,6}").unwrap(), json("[5,6]"));
        assert_eq!(
            array(TypeKind::Int, "[0:1][-1:0]={{5,6},{7,8}}").unwrap(),
            json("[[5,6],[7,8]]")
        );
        assert_eq!(array(TypeKind::Int, " { 1 , 2 } ").unwrap(), json("[1,2]"));
        assert_eq!(
            array(TypeKind::Jsonb, r#"{"{\"a\": 1}",NULL,"[1, 2]"}"#).unwrap(),
            json(r#"[{"a":1},null,[1,2]]"#)
        );
        assert_eq!(
            array(TypeKind::Float, "{1.5,NaN,-Infinity}").unwrap(),
            json("[1.5,null,null]")
        );
        assert_eq!(
            array(TypeKind::Numeric, "{1.50,-2}").unwrap(),
            json("[1.5,-2.0]")
        );
        assert_eq!(
            array(TypeKind::Bool, "{t,f}").unwrap(),
            json("[true,false]")
        );
        assert_eq!(
            array(
                TypeKind::TimestampTz,
                r#"{"1970-01-01 00:00:01+00",infinity}"#
            )
            .unwrap(),
            json("[1000.0,null]")
        );
        assert_eq!(
            array(TypeKind::Bytea, r#"{"\\x00"}"#).unwrap(),
            json("[null]")
        );
        assert_eq!(
            array(TypeKind::Text, r#"{a\ ,"",é}"#).unwrap(),
            json(r#"["a ","","é"]"#)
        );
        for bad in [
            "",
            "{",
            "{1,2",
            "{1,,2}",
            "{1}}",
            "{1} x",
            "{x}",
            "{\"1}",
            "1",
            "[0:1]{1}",
            "[a:b]={1}",
            "{{{{{{{1}}}}}}}",
            "{1\"2}",
            "{1,}",
        ] {
            assert!(array(TypeKind::Int, bad).is_err(), "{bad}");
        }
        assert!(array(TypeKind::Jsonb, "{\"{bad\"}").is_err());
    }

    #[test]
    fn binary_values() {
        let bin = |k: TypeKind, b: &[u8]| {
            let decoded = decode_binary(&k, b).unwrap();
            let mut batch = RowBatch::new(1);
            push_binary(&k, b, &mut batch).unwrap();
            batch.end_row().unwrap();
            assert_eq!(batch.to_rows(), vec![vec![decoded.clone()]], "{k:?}");
            decoded
        };
        assert_eq!(bin(TypeKind::Int, &7i16.to_be_bytes()), Value::Int(7));
        assert_eq!(bin(TypeKind::Int, &(-7i32).to_be_bytes()), Value::Int(-7));
        assert_eq!(
            bin(TypeKind::Int, &i64::MIN.to_be_bytes()),
            Value::Int(i64::MIN)
        );
        assert!(decode_binary(&TypeKind::Int, &[1, 2, 3]).is_err());
        assert_eq!(
            bin(TypeKind::Float, &1.5f32.to_be_bytes()),
            Value::Float(1.5)
        );
        assert_eq!(
            bin(TypeKind::Float, &1.1f32.to_be_bytes()),
            Value::Float(1.1)
        );
        assert_eq!(
            bin(TypeKind::Float, &0.1f64.to_be_bytes()),
            Value::Float(0.1)
        );
        assert_eq!(
            bin(TypeKind::Float, &f32::NEG_INFINITY.to_be_bytes()),
            Value::Float(f64::NEG_INFINITY)
        );
        assert_eq!(bin(TypeKind::Bool, &[1]), Value::Bool(true));
        assert_eq!(bin(TypeKind::Bool, &[0]), Value::Bool(false));
        assert!(decode_binary(&TypeKind::Bool, &[2]).is_err());
        assert_eq!(bin(TypeKind::Text, "é".as_bytes()), Value::Text("é".into()));
        assert!(decode_binary(&TypeKind::Text, &[0xff]).is_err());
        assert_eq!(bin(TypeKind::Json, b"[1]"), json("[1]"));
        assert_eq!(bin(TypeKind::Jsonb, b"\x01{\"a\": 1}"), json("{\"a\": 1}"));
        assert!(decode_binary(&TypeKind::Jsonb, b"\x02{}").is_err());
        assert!(decode_binary(&TypeKind::Jsonb, b"").is_err());
        assert_eq!(
            bin(
                TypeKind::Uuid,
                &[
                    0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd,
                    0x38, 0x0a, 0x11
                ]
            ),
            Value::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into())
        );
        assert!(decode_binary(&TypeKind::Uuid, &[0; 15]).is_err());
        assert_eq!(
            bin(TypeKind::TimestampTz, &0i64.to_be_bytes()),
            Value::Float(946684800000.0)
        );
        assert_eq!(
            bin(TypeKind::Timestamp, &i64::MAX.to_be_bytes()),
            Value::Float(f64::INFINITY)
        );
        assert_eq!(
            bin(TypeKind::Timestamp, &i64::MIN.to_be_bytes()),
            Value::Float(f64::NEG_INFINITY)
        );
        assert_eq!(
            bin(TypeKind::Date, &0i32.to_be_bytes()),
            Value::Float(946684800000.0)
        );
        assert_eq!(
            bin(TypeKind::Date, &(-10957i32).to_be_bytes()),
            Value::Float(0.0)
        );
        assert_eq!(
            bin(TypeKind::Date, &i32::MIN.to_be_bytes()),
            Value::Float(f64::NEG_INFINITY)
        );
        assert_eq!(
            bin(TypeKind::Time, &3_600_500_000i64.to_be_bytes()),
            Value::Float(3_600_500.0)
        );
        // 01:00:00+02 is sent as 01:00:00 with zone -7200 (seconds west).
        let mut timetz = 3_600_000_000i64.to_be_bytes().to_vec();
        timetz.extend_from_slice(&(-7200i32).to_be_bytes());
        assert_eq!(bin(TypeKind::TimeTz, &timetz), Value::Float(82_800_000.0));
        assert!(decode_binary(&TypeKind::TimeTz, &[0; 8]).is_err());
        assert_eq!(bin(TypeKind::Bytea, &[0, 1]), Value::Bytes(vec![0, 1]));
        for kind in [
            TypeKind::Numeric,
            TypeKind::Enum,
            TypeKind::Unsupported,
            TypeKind::Array(Box::new(TypeKind::Int)),
        ] {
            assert!(!binary_supported(&kind));
            assert!(decode_binary(&kind, b"1").is_err());
        }
    }

    /// Formats epoch microseconds the way PostgreSQL prints a timestamptz at UTC.
    fn format_timestamp(epoch_micros: i64, with_zone: bool) -> String {
        let days = epoch_micros.div_euclid(DAY_MICROS);
        let tod = epoch_micros.rem_euclid(DAY_MICROS);
        let (y, m, d) = civil_from_days(days);
        let (year, bc) = if y <= 0 { (1 - y, " BC") } else { (y, "") };
        let secs = tod / 1_000_000;
        let frac = tod % 1_000_000;
        let mut s = format!(
            "{year:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        );
        if frac != 0 {
            s.push_str(format!(".{frac:06}").trim_end_matches('0'));
        }
        if with_zone {
            s.push_str("+00");
        }
        s.push_str(bc);
        s
    }

    /// The inverse of `days_from_civil`, written independently for the tests.
    fn civil_from_days(days: i64) -> (i64, i64, i64) {
        // Walk 400-year cycles, then years, then months.
        let mut y = 1970 + days.div_euclid(146_097) * 400;
        let mut rest = days.rem_euclid(146_097);
        let leap = |y: i64| y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
        loop {
            let len = if leap(y) { 366 } else { 365 };
            if rest < len {
                break;
            }
            rest -= len;
            y += 1;
        }
        let mut m = 1;
        loop {
            let len = days_in_month(y, m);
            if rest < len {
                break;
            }
            rest -= len;
            m += 1;
        }
        (y, m, rest + 1)
    }

    fn all_kinds() -> Vec<TypeKind> {
        let scalars = vec![
            TypeKind::Int,
            TypeKind::Float,
            TypeKind::Numeric,
            TypeKind::Bool,
            TypeKind::Text,
            TypeKind::Uuid,
            TypeKind::Json,
            TypeKind::Jsonb,
            TypeKind::Timestamp,
            TypeKind::TimestampTz,
            TypeKind::Date,
            TypeKind::Time,
            TypeKind::TimeTz,
            TypeKind::Enum,
            TypeKind::Bytea,
            TypeKind::Unsupported,
        ];
        let arrays: Vec<_> = scalars
            .iter()
            .map(|k| TypeKind::Array(Box::new(k.clone())))
            .collect();
        scalars.into_iter().chain(arrays).collect()
    }

    proptest! {
        #[test]
        fn text_and_binary_timestamps_agree(
            pg_micros in -211_813_488_000_000_000i64..9_000_000_000_000_000_000,
        ) {
            let epoch = pg_micros + PG_EPOCH_MICROS;
            for (kind, zone) in [(TypeKind::TimestampTz, true), (TypeKind::Timestamp, false)] {
                let bin = decode_binary(&kind, &pg_micros.to_be_bytes()).unwrap();
                let text = parse_text(&kind, &format_timestamp(epoch, zone)).unwrap();
                prop_assert_eq!(bin, text);
            }
        }

        #[test]
        fn text_and_binary_dates_agree(pg_days in -2_451_545i32..2_145_000_000) {
            let (y, m, d) = civil_from_days(i64::from(pg_days) + PG_EPOCH_DAYS);
            let (year, bc) = if y <= 0 { (1 - y, " BC") } else { (y, "") };
            let text = format!("{year:04}-{m:02}-{d:02}{bc}");
            let bin = decode_binary(&TypeKind::Date, &pg_days.to_be_bytes()).unwrap();
            prop_assert_eq!(bin, parse_text(&TypeKind::Date, &text).unwrap());
        }

        #[test]
        fn text_and_binary_times_agree(
            micros in 0i64..=DAY_MICROS,
            zone_secs in -15 * 3600i32..=15 * 3600,
        ) {
            let (secs, frac) = (micros / 1_000_000, micros % 1_000_000);
            let time = format!("{:02}:{:02}:{:02}.{frac:06}", secs / 3600, secs / 60 % 60, secs % 60);
            prop_assert_eq!(
                decode_binary(&TypeKind::Time, &micros.to_be_bytes()).unwrap(),
                parse_text(&TypeKind::Time, &time).unwrap()
            );
            // Text shows the offset east of UTC; binary sends seconds west.
            let east = -zone_secs;
            let a = east.unsigned_abs();
            let sign = if east < 0 { '-' } else { '+' };
            let text = format!("{time}{sign}{:02}:{:02}:{:02}", a / 3600, a / 60 % 60, a % 60);
            let mut bin = micros.to_be_bytes().to_vec();
            bin.extend_from_slice(&zone_secs.to_be_bytes());
            let from_bin = decode_binary(&TypeKind::TimeTz, &bin).unwrap();
            prop_assert_eq!(&from_bin, &parse_text(&TypeKind::TimeTz, &text).unwrap());
            let Value::Float(ms) = from_bin else { panic!("{from_bin:?}") };
            prop_assert!((0.0..86_400_000.0).contains(&ms));
        }

        #[test]
        fn text_and_binary_floats_agree(f in any::<f32>(), g in any::<f64>()) {
            prop_assume!(f.is_finite() && g.is_finite());
            prop_assert_eq!(
                decode_binary(&TypeKind::Float, &f.to_be_bytes()).unwrap(),
                parse_text(&TypeKind::Float, &format!("{f:e}")).unwrap()
            );
            prop_assert_eq!(
                decode_binary(&TypeKind::Float, &g.to_be_bytes()).unwrap(),
                parse_text(&TypeKind::Float, &format!("{g:e}")).unwrap()
            );
        }

        #[test]
        fn text_arrays_round_trip(items in proptest::collection::vec(proptest::option::of(".{0,6}"), 0..6)) {
            let literal = items
                .iter()
                .map(|i| match i {
                    None => "NULL".to_owned(),
                    Some(s) => format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")),
                })
                .collect::<Vec<_>>()
                .join(",");
            let expected = serde_json::to_string(&items).unwrap();
            prop_assert_eq!(array(TypeKind::Text, &format!("{{{literal}}}")).unwrap(), json(&expected));
        }

        #[test]
        fn text_never_panics(s in "\\PC{0,40}", t in "[-+0-9:. {}\",\\\\NULBCinfty\\[\\]=]{0,40}") {
            for kind in all_kinds() {
                let _ = parse_text(&kind, &s);
                let _ = parse_text(&kind, &t);
            }
        }

        #[test]
        fn pushed_binary_values_are_the_decoded_ones(
            b in proptest::collection::vec(any::<u8>(), 0..20),
            s in ".{0,12}",
        ) {
            let mut jsonb = vec![1u8];
            jsonb.extend_from_slice(s.as_bytes());
            for bytes in [&b[..], s.as_bytes(), &jsonb[..]] {
                for kind in all_kinds() {
                    let mut batch = RowBatch::new(1);
                    let pushed = push_binary(&kind, bytes, &mut batch).map(|()| {
                        let _ = batch.end_row();
                        batch.row(0).and_then(|r| r.get(0)).map(ValueRef::to_value)
                    });
                    let decoded = decode_binary(&kind, bytes).map(Some);
                    // Debug forms: NaN equals itself there.
                    prop_assert_eq!(format!("{pushed:?}"), format!("{decoded:?}"), "{:?}", kind);
                }
            }
        }

        #[test]
        fn binary_never_panics(b in proptest::collection::vec(any::<u8>(), 0..20)) {
            for kind in all_kinds() {
                let _ = decode_binary(&kind, &b);
            }
        }
    }
}

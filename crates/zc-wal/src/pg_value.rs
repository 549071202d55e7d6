//! PostgreSQL values → [`zc_types::Value`], from the text form (pgoutput text tuples and
//! `::text` casts) and from the binary form (binary COPY).
//!
//! The mapping is zero-cache's (see `zc_types::TypeKind`): timestamps and dates become epoch
//! milliseconds (the fraction keeps microseconds), times milliseconds since midnight, arrays
//! JSON arrays. The text forms assume the session settings zc pins on its connections:
//! `DateStyle=ISO, MDY`, `TimeZone=UTC`, `extra_float_digits=3`, `bytea_output=hex`.

use zc_types::{TypeKind, Value};

/// A value could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("could not read {kind} value: {reason}")]
pub struct ValueError {
    /// The kind of value expected.
    pub kind: String,
    /// What was wrong.
    pub reason: String,
}

fn kind_name(kind: &TypeKind) -> String {
    match kind {
        TypeKind::Array(elem) => format!("{}[]", kind_name(elem)),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn err(kind: &TypeKind, reason: impl Into<String>) -> ValueError {
    ValueError {
        kind: kind_name(kind),
        reason: reason.into(),
    }
}

/// Microseconds between 1970-01-01 and 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
const DAY_MICROS: i64 = 86_400_000_000;

/// True when [`decode_binary`] reads this kind (otherwise COPY selects the column as text).
pub fn binary_supported(kind: &TypeKind) -> bool {
    matches!(
        kind,
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
            | TypeKind::Bytea
    )
}

fn micros_to_ms(micros: i64) -> f64 {
    micros as f64 / 1000.0
}

/// Decodes PostgreSQL's binary send form.
pub fn decode_binary(kind: &TypeKind, b: &[u8]) -> Result<Value, ValueError> {
    let fixed = |n: usize| -> Result<&[u8], ValueError> {
        if b.len() == n {
            Ok(b)
        } else {
            Err(err(kind, format!("expected {n} bytes, got {}", b.len())))
        }
    };
    let i64_of = |s: &[u8]| -> i64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        i64::from_be_bytes(a)
    };
    Ok(match kind {
        TypeKind::Int => match b.len() {
            2 => Value::Int(i64::from(i16::from_be_bytes([b[0], b[1]]))),
            4 => Value::Int(i64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))),
            8 => Value::Int(i64_of(b)),
            n => return Err(err(kind, format!("integer of {n} bytes"))),
        },
        TypeKind::Float => match b.len() {
            4 => Value::Float(f64::from(f32::from_be_bytes([b[0], b[1], b[2], b[3]]))),
            8 => Value::Float(f64::from_bits(u64::from_be_bytes([
                b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
            ]))),
            n => return Err(err(kind, format!("float of {n} bytes"))),
        },
        TypeKind::Bool => Value::Bool(fixed(1)?[0] != 0),
        TypeKind::Text => Value::Text(utf8(kind, b)?),
        TypeKind::Json => Value::Json(utf8(kind, b)?),
        TypeKind::Jsonb => match b.split_first() {
            Some((1, rest)) => Value::Json(utf8(kind, rest)?),
            _ => return Err(err(kind, "unknown jsonb version")),
        },
        TypeKind::Uuid => {
            let b = fixed(16)?;
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            Value::Text(format!(
                "{}-{}-{}-{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..32]
            ))
        }
        TypeKind::Timestamp | TypeKind::TimestampTz => {
            let v = i64_of(fixed(8)?);
            match v {
                i64::MAX => Value::Float(f64::INFINITY),
                i64::MIN => Value::Float(f64::NEG_INFINITY),
                v => Value::Float(micros_to_ms(v.saturating_add(PG_EPOCH_MICROS))),
            }
        }
        TypeKind::Date => {
            let b = fixed(4)?;
            match i32::from_be_bytes([b[0], b[1], b[2], b[3]]) {
                i32::MAX => Value::Float(f64::INFINITY),
                i32::MIN => Value::Float(f64::NEG_INFINITY),
                d => Value::Float(
                    (i128::from(d) * i128::from(DAY_MICROS) + i128::from(PG_EPOCH_MICROS)) as f64
                        / 1000.0,
                ),
            }
        }
        TypeKind::Time => Value::Float(micros_to_ms(i64_of(fixed(8)?))),
        TypeKind::Bytea => Value::Bytes(b.to_vec()),
        other => return Err(err(other, "no binary decoder for this type")),
    })
}

fn utf8(kind: &TypeKind, b: &[u8]) -> Result<String, ValueError> {
    String::from_utf8(b.to_vec()).map_err(|_| err(kind, "not valid UTF-8"))
}

/// Parses PostgreSQL's text output form.
pub fn parse_text(kind: &TypeKind, text: &str) -> Result<Value, ValueError> {
    Ok(match kind {
        TypeKind::Int => Value::Int(
            text.trim()
                .parse()
                .map_err(|_| err(kind, format!("{text:?} is not an integer")))?,
        ),
        TypeKind::Float | TypeKind::Numeric => Value::Float(
            parse_float(text).ok_or_else(|| err(kind, format!("{text:?} is not a number")))?,
        ),
        TypeKind::Bool => match text {
            "t" | "true" => Value::Bool(true),
            "f" | "false" => Value::Bool(false),
            _ => return Err(err(kind, format!("{text:?} is not a boolean"))),
        },
        TypeKind::Text | TypeKind::Uuid | TypeKind::Enum | TypeKind::Unsupported => {
            Value::Text(text.to_owned())
        }
        TypeKind::Json | TypeKind::Jsonb => Value::Json(text.to_owned()),
        TypeKind::Timestamp | TypeKind::TimestampTz => Value::Float(
            parse_timestamp(text)
                .ok_or_else(|| err(kind, format!("{text:?} is not a timestamp")))?,
        ),
        TypeKind::Date => Value::Float(
            parse_date_value(text).ok_or_else(|| err(kind, format!("{text:?} is not a date")))?,
        ),
        TypeKind::Time => {
            let (micros, rest) =
                parse_time(text).ok_or_else(|| err(kind, format!("{text:?} is not a time")))?;
            if !rest.is_empty() {
                return Err(err(kind, format!("{text:?} is not a time")));
            }
            Value::Float(micros_to_ms(micros))
        }
        TypeKind::TimeTz => {
            let bad = || err(kind, format!("{text:?} is not a time with time zone"));
            let (micros, rest) = parse_time(text).ok_or_else(bad)?;
            let (offset, rest) = parse_offset(rest).ok_or_else(bad)?;
            if !rest.is_empty() {
                return Err(bad());
            }
            let utc = (micros - offset.saturating_mul(1_000_000)).rem_euclid(DAY_MICROS);
            Value::Float(micros_to_ms(utc))
        }
        TypeKind::Bytea => {
            let hex = text
                .strip_prefix("\\x")
                .ok_or_else(|| err(kind, "expected hex output (\\x...)"))?;
            Value::Bytes(parse_hex(hex).ok_or_else(|| err(kind, "invalid hex digits"))?)
        }
        TypeKind::Array(elem) => {
            let json = parse_array(text, elem).map_err(|reason| err(kind, reason))?;
            Value::Json(json.to_string())
        }
    })
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
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect()
}

/// Days from 1970-01-01 to the proleptic Gregorian date (astronomical year numbering).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn digits(s: &str, min: usize, max: usize) -> Option<(i64, &str)> {
    let n = s.bytes().take_while(u8::is_ascii_digit).count();
    if n < min || n > max {
        return None;
    }
    let (d, rest) = s.split_at(n);
    Some((d.parse().ok()?, rest))
}

/// "YYYY-MM-DD" → (days since 1970-01-01, rest). Handles the " BC" suffix at the end of the
/// whole value separately.
fn parse_date(s: &str, bc: bool) -> Option<(i64, &str)> {
    let (y, rest) = digits(s, 4, 9)?;
    let rest = rest.strip_prefix('-')?;
    let (m, rest) = digits(rest, 2, 2)?;
    let rest = rest.strip_prefix('-')?;
    let (d, rest) = digits(rest, 2, 2)?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y == 0 {
        return None;
    }
    let year = if bc { 1 - y } else { y };
    Some((days_from_civil(year, m, d), rest))
}

fn strip_bc(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(t) => (t, true),
        None => (text, false),
    }
}

fn parse_date_value(text: &str) -> Option<f64> {
    match text {
        "infinity" => return Some(f64::INFINITY),
        "-infinity" => return Some(f64::NEG_INFINITY),
        _ => {}
    }
    let (t, bc) = strip_bc(text);
    let (days, rest) = parse_date(t, bc)?;
    if !rest.is_empty() {
        return None;
    }
    Some((i128::from(days) * i128::from(DAY_MICROS)) as f64 / 1000.0)
}

/// "HH:MM:SS[.ffffff]" → (microseconds since midnight, rest).
fn parse_time(s: &str) -> Option<(i64, &str)> {
    let (h, rest) = digits(s, 2, 2)?;
    let rest = rest.strip_prefix(':')?;
    let (m, rest) = digits(rest, 2, 2)?;
    let rest = rest.strip_prefix(':')?;
    let (sec, mut rest) = digits(rest, 2, 2)?;
    let mut frac = 0i64;
    if let Some(r) = rest.strip_prefix('.') {
        let n = r.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 || n > 6 {
            return None;
        }
        let (f, r) = r.split_at(n);
        frac = f.parse::<i64>().ok()? * 10i64.pow(6 - n as u32);
        rest = r;
    }
    if h > 24 || m > 59 || sec > 60 {
        return None;
    }
    Some((((h * 60 + m) * 60 + sec) * 1_000_000 + frac, rest))
}

/// "+HH[:MM[:SS]]" → (offset seconds east of UTC, rest).
fn parse_offset(s: &str) -> Option<(i64, &str)> {
    let sign = match s.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, mut rest) = digits(s.get(1..)?, 2, 2)?;
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

/// Timestamp text (with or without an offset) → epoch milliseconds.
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
    let offset = if rest.is_empty() {
        0
    } else {
        let (o, rest) = parse_offset(rest)?;
        if !rest.is_empty() {
            return None;
        }
        o
    };
    let total = i128::from(days) * i128::from(DAY_MICROS) + i128::from(micros)
        - i128::from(offset) * 1_000_000;
    Some(total as f64 / 1000.0)
}

/// Parses an array literal into JSON, converting elements with `elem`.
fn parse_array(text: &str, elem: &TypeKind) -> Result<serde_json::Value, String> {
    let body = match text.strip_prefix('[') {
        // Dimension decoration: "[0:1]={...}".
        Some(_) => text
            .split_once('=')
            .map(|(_, b)| b)
            .ok_or("bad dimension decoration")?,
        None => text,
    };
    let bytes = body.as_bytes();
    let mut pos = 0;
    let value = parse_array_level(bytes, &mut pos, elem, 0)?;
    if pos != bytes.len() {
        return Err("trailing characters after the array".into());
    }
    Ok(value)
}

fn parse_array_level(
    b: &[u8],
    pos: &mut usize,
    elem: &TypeKind,
    depth: usize,
) -> Result<serde_json::Value, String> {
    if depth > 6 {
        return Err("array nested too deeply".into());
    }
    if b.get(*pos) != Some(&b'{') {
        return Err(format!("expected '{{' at {pos}"));
    }
    *pos += 1;
    let mut items = Vec::new();
    if b.get(*pos) == Some(&b'}') {
        *pos += 1;
        return Ok(serde_json::Value::Array(items));
    }
    loop {
        match b.get(*pos) {
            Some(b'{') => items.push(parse_array_level(b, pos, elem, depth + 1)?),
            Some(b'"') => {
                *pos += 1;
                let mut s = Vec::new();
                loop {
                    match b.get(*pos) {
                        Some(b'\\') => {
                            let c = *b.get(*pos + 1).ok_or("unterminated escape")?;
                            s.push(c);
                            *pos += 2;
                        }
                        Some(b'"') => {
                            *pos += 1;
                            break;
                        }
                        Some(&c) => {
                            s.push(c);
                            *pos += 1;
                        }
                        None => return Err("unterminated quoted element".into()),
                    }
                }
                let s = String::from_utf8(s).map_err(|_| "element is not UTF-8")?;
                items.push(element_json(&s, elem)?);
            }
            Some(_) => {
                let start = *pos;
                while let Some(&c) = b.get(*pos) {
                    if c == b',' || c == b'}' {
                        break;
                    }
                    *pos += 1;
                }
                let raw = std::str::from_utf8(b.get(start..*pos).unwrap_or_default())
                    .map_err(|_| "element is not UTF-8")?
                    .trim();
                if raw.eq_ignore_ascii_case("NULL") {
                    items.push(serde_json::Value::Null);
                } else {
                    items.push(element_json(raw, elem)?);
                }
            }
            None => return Err("unterminated array".into()),
        }
        match b.get(*pos) {
            Some(b',') => *pos += 1,
            Some(b'}') => {
                *pos += 1;
                return Ok(serde_json::Value::Array(items));
            }
            _ => return Err(format!("expected ',' or '}}' at {pos}")),
        }
    }
}

fn element_json(s: &str, elem: &TypeKind) -> Result<serde_json::Value, String> {
    let v = parse_text(elem, s).map_err(|e| e.to_string())?;
    Ok(match v {
        Value::Json(text) => {
            serde_json::from_str(&text).map_err(|e| format!("invalid JSON element: {e}"))?
        }
        other => other.to_json(),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ts(text: &str) -> f64 {
        match parse_text(&TypeKind::TimestampTz, text).unwrap() {
            Value::Float(f) => f,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn timestamps_dates_and_times() {
        assert_eq!(ts("2024-01-02 03:04:05.123456+00"), 1704164645123.456);
        assert_eq!(ts("1970-01-01 00:00:00+00"), 0.0);
        assert_eq!(ts("1970-01-01 05:30:00+05:30"), 0.0);
        assert_eq!(ts("1969-12-31 23:59:59-00:00:01"), 0.0);
        assert_eq!(ts("infinity"), f64::INFINITY);
        assert_eq!(ts("10000-01-01 00:00:00+00"), 253402300800000.0);
        assert_eq!(
            parse_text(&TypeKind::Timestamp, "2000-01-01 00:00:00").unwrap(),
            Value::Float(946684800000.0)
        );
        assert_eq!(
            parse_text(&TypeKind::Date, "1970-01-02").unwrap(),
            Value::Float(86_400_000.0)
        );
        // 1 BC is year 0: 0001-01-01 BC is 366 days before 0001-01-01.
        let ad1 = match parse_text(&TypeKind::Date, "0001-01-01").unwrap() {
            Value::Float(f) => f,
            _ => 0.0,
        };
        let bc1 = match parse_text(&TypeKind::Date, "0001-01-01 BC").unwrap() {
            Value::Float(f) => f,
            _ => 0.0,
        };
        assert_eq!(ad1 - bc1, 366.0 * 86_400_000.0);
        assert_eq!(
            parse_text(&TypeKind::Time, "01:00:00.5").unwrap(),
            Value::Float(3_600_500.0)
        );
        assert_eq!(
            parse_text(&TypeKind::Time, "24:00:00").unwrap(),
            Value::Float(86_400_000.0)
        );
        assert_eq!(
            parse_text(&TypeKind::TimeTz, "01:00:00+02").unwrap(),
            Value::Float(82_800_000.0)
        );
        assert!(parse_text(&TypeKind::TimestampTz, "2024-13-01 00:00:00+00").is_err());
        assert!(parse_text(&TypeKind::Date, "yesterday").is_err());
    }

    #[test]
    fn binary_agrees_with_text() {
        let b = 0i64.to_be_bytes();
        assert_eq!(
            decode_binary(&TypeKind::TimestampTz, &b).unwrap(),
            Value::Float(946684800000.0)
        );
        assert_eq!(
            decode_binary(&TypeKind::Date, &0i32.to_be_bytes()).unwrap(),
            Value::Float(946684800000.0)
        );
        assert_eq!(
            decode_binary(&TypeKind::Int, &7i16.to_be_bytes()).unwrap(),
            Value::Int(7)
        );
        assert_eq!(
            decode_binary(&TypeKind::Float, &1.5f32.to_be_bytes()).unwrap(),
            Value::Float(1.5)
        );
        assert_eq!(
            decode_binary(&TypeKind::Jsonb, b"\x01{\"a\":1}").unwrap(),
            Value::Json("{\"a\":1}".into())
        );
        assert_eq!(
            decode_binary(&TypeKind::Uuid, &[0x12; 16]).unwrap(),
            Value::Text("12121212-1212-1212-1212-121212121212".into())
        );
        assert!(decode_binary(&TypeKind::Int, &[1, 2, 3]).is_err());
        assert!(decode_binary(&TypeKind::Numeric, &[0, 0]).is_err());
    }

    #[test]
    fn scalars() {
        assert_eq!(
            parse_text(&TypeKind::Numeric, "123.4500").unwrap(),
            Value::Float(123.45)
        );
        assert!(
            matches!(parse_text(&TypeKind::Float, "NaN").unwrap(), Value::Float(f) if f.is_nan())
        );
        assert_eq!(parse_text(&TypeKind::Bool, "t").unwrap(), Value::Bool(true));
        assert_eq!(
            parse_text(&TypeKind::Bytea, "\\x00ff").unwrap(),
            Value::Bytes(vec![0, 255])
        );
        assert!(parse_text(&TypeKind::Int, "1.5").is_err());
        assert!(parse_text(&TypeKind::Bytea, "\\x0").is_err());
    }

    #[test]
    fn arrays() {
        let a = |k: TypeKind, t: &str| parse_text(&TypeKind::Array(Box::new(k)), t);
        assert_eq!(
            a(TypeKind::Int, "{1,2,NULL}").unwrap(),
            Value::Json("[1,2,null]".into())
        );
        assert_eq!(
            a(TypeKind::Text, r#"{"a b","c\"d",NULL,"NULL",x}"#).unwrap(),
            Value::Json(r#"["a b","c\"d",null,"NULL","x"]"#.into())
        );
        assert_eq!(
            a(TypeKind::Int, "{{1,2},{3,4}}").unwrap(),
            Value::Json("[[1,2],[3,4]]".into())
        );
        assert_eq!(a(TypeKind::Int, "{}").unwrap(), Value::Json("[]".into()));
        assert_eq!(
            a(TypeKind::Int, "[0:1]={5,6}").unwrap(),
            Value::Json("[5,6]".into())
        );
        assert_eq!(
            a(TypeKind::Jsonb, r#"{"{\"a\": 1}"}"#).unwrap(),
            Value::Json(r#"[{"a":1}]"#.into())
        );
        assert!(a(TypeKind::Int, "{1,2").is_err());
        assert!(a(TypeKind::Int, "{x}").is_err());
    }

    fn format_ts(micros: i64) -> String {
        let days = micros.div_euclid(DAY_MICROS);
        let tod = micros.rem_euclid(DAY_MICROS);
        // civil_from_days
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let y = yoe + era * 400;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = if m <= 2 { y + 1 } else { y };
        let (yy, bc) = if y <= 0 { (1 - y, " BC") } else { (y, "") };
        let secs = tod / 1_000_000;
        format!(
            "{yy:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06}+00{bc}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            tod % 1_000_000
        )
    }

    proptest! {
        #[test]
        fn text_and_binary_timestamps_agree(pg_micros in -200_000_000_000_000_000i64..200_000_000_000_000_000) {
            let bin = decode_binary(&TypeKind::TimestampTz, &pg_micros.to_be_bytes()).unwrap();
            let text = parse_text(&TypeKind::TimestampTz, &format_ts(pg_micros + PG_EPOCH_MICROS)).unwrap();
            prop_assert_eq!(bin, text);
        }

        #[test]
        fn text_never_panics(s in ".{0,40}") {
            for kind in [TypeKind::Int, TypeKind::Float, TypeKind::Numeric, TypeKind::Bool, TypeKind::Timestamp,
                         TypeKind::TimestampTz, TypeKind::Date, TypeKind::Time, TypeKind::TimeTz, TypeKind::Bytea,
                         TypeKind::Array(Box::new(TypeKind::Int)), TypeKind::Array(Box::new(TypeKind::Text))] {
                let _ = parse_text(&kind, &s);
            }
        }

        #[test]
        fn binary_never_panics(b in proptest::collection::vec(any::<u8>(), 0..20)) {
            for kind in [TypeKind::Int, TypeKind::Float, TypeKind::Bool, TypeKind::Text, TypeKind::Uuid, TypeKind::Json,
                         TypeKind::Jsonb, TypeKind::Timestamp, TypeKind::Date, TypeKind::Time, TypeKind::Bytea] {
                let _ = decode_binary(&kind, &b);
            }
        }
    }
}

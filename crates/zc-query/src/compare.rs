//! Zero's value order (`zql/src/ivm/data.ts`): NULL first, then booleans (false < true),
//! numbers numerically (integers and floats compare as numbers), strings by their UTF-8
//! bytes (SQLite BINARY order), JSON by its text. Orderings are completed with the primary
//! key, so rows are totally ordered.

use std::cmp::Ordering;

use zc_types::Value;

fn kind_rank(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Int(_) | Value::Float(_) => 2,
        Value::Text(_) => 3,
        Value::Json(_) => 4,
        Value::Bytes(_) => 5,
    }
}

/// Compares two numbers given as an integer or a float, exactly (no rounding of large
/// integers through f64).
fn cmp_numbers(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => x.cmp(y),
        (Value::Float(x), Value::Float(y)) => x.total_cmp(y),
        (Value::Int(x), Value::Float(y)) => cmp_int_float(*x, *y),
        (Value::Float(x), Value::Int(y)) => cmp_int_float(*y, *x).reverse(),
        _ => Ordering::Equal,
    }
}

fn cmp_int_float(i: i64, f: f64) -> Ordering {
    if f.is_nan() {
        return Ordering::Less;
    }
    // Rounding is monotonic, so when `i as f64` differs from `f` it orders them correctly;
    // when they are equal, `f` is an integer and the exact comparison decides.
    match (i as f64).partial_cmp(&f) {
        Some(Ordering::Equal) => {
            const TWO_63: f64 = 9_223_372_036_854_775_808.0;
            if f >= TWO_63 {
                Ordering::Less
            } else if f < -TWO_63 {
                Ordering::Greater
            } else {
                i.cmp(&(f as i64))
            }
        }
        Some(o) => o,
        None => Ordering::Equal,
    }
}

/// Total order of values.
pub fn compare_values(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => cmp_numbers(a, b),
        (Value::Text(x), Value::Text(y)) | (Value::Json(x), Value::Json(y)) => {
            x.as_bytes().cmp(y.as_bytes())
        }
        (Value::Bytes(x), Value::Bytes(y)) => x.cmp(y),
        _ => kind_rank(a).cmp(&kind_rank(b)),
    }
}

/// SQL equality: `None` (unknown) when either side is NULL.
pub fn sql_eq(a: &Value, b: &Value) -> Option<bool> {
    if a.is_null() || b.is_null() {
        return None;
    }
    Some(compare_values(a, b) == Ordering::Equal && kind_rank(a) == kind_rank(b))
}

/// Compares two rows by an ordering: column positions with `true` for descending.
pub fn compare_rows(a: &[Value], b: &[Value], ordering: &[(usize, bool)]) -> Ordering {
    for &(col, desc) in ordering {
        let (x, y) = (
            a.get(col).unwrap_or(&Value::Null),
            b.get(col).unwrap_or(&Value::Null),
        );
        let o = compare_values(x, y);
        if o != Ordering::Equal {
            return if desc { o.reverse() } else { o };
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn zero_order() {
        let mut vals = vec![
            Value::Text("b".into()),
            Value::Int(3),
            Value::Null,
            Value::Float(2.5),
            Value::Bool(true),
            Value::Text("a".into()),
            Value::Text("é".into()),
            Value::Text("z".into()),
            Value::Bool(false),
        ];
        vals.sort_by(compare_values);
        assert_eq!(
            vals,
            vec![
                Value::Null,
                Value::Bool(false),
                Value::Bool(true),
                Value::Float(2.5),
                Value::Int(3),
                Value::Text("a".into()),
                Value::Text("b".into()),
                Value::Text("z".into()),
                Value::Text("é".into()),
            ]
        );
        assert_eq!(sql_eq(&Value::Int(1), &Value::Float(1.0)), Some(true));
        assert_eq!(sql_eq(&Value::Null, &Value::Null), None);
        assert_eq!(
            compare_values(&Value::Int(i64::MAX), &Value::Float(9.223372036854776e18)),
            Ordering::Less
        );
    }

    proptest! {
        #[test]
        fn int_float_comparison_is_exact(i in any::<i64>(), f in -1e19f64..1e19, near in any::<bool>()) {
            // Also probe floats right next to the integer.
            let f = if near { i as f64 } else { f };
            let fl = f.floor();
            let reference = if f == fl {
                (i as i128).cmp(&(fl as i128))
            } else if (i as i128) <= (fl as i128) {
                Ordering::Less
            } else {
                Ordering::Greater
            };
            prop_assert_eq!(cmp_int_float(i, f), reference);
        }

        #[test]
        fn order_is_total_and_antisymmetric(a in -5i64..5, b in -5.0f64..5.0) {
            let (x, y) = (Value::Int(a), Value::Float(b));
            prop_assert_eq!(compare_values(&x, &y), compare_values(&y, &x).reverse());
        }
    }
}

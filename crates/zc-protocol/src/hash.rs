//! Query ids as the 1.9.0 client computes them (`packages/shared/src/hash.ts`,
//! `packages/zero-protocol/src/query-hash.ts`): `h64` is XXH32 with seed 0 (high half) and
//! seed 1 (low half) of the UTF-8 text, printed in lowercase base 36.
//!
//! zero-cache never recomputes a client's query id (it echoes it), so these exist for tests
//! and for ids zc mints itself.

use crate::ast::{Ast, Condition, CorrelatedSubquery, ValuePosition};

const P1: u32 = 0x9E37_79B1;
const P2: u32 = 0x85EB_CA77;
const P3: u32 = 0xC2B2_AE3D;
const P4: u32 = 0x27D4_EB2F;
const P5: u32 = 0x1656_67B1;

fn read_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// XXH32 of `input` with `seed` (the reference algorithm).
pub fn xxh32(input: &[u8], seed: u32) -> u32 {
    let round = |acc: u32, lane: u32| {
        acc.wrapping_add(lane.wrapping_mul(P2))
            .rotate_left(13)
            .wrapping_mul(P1)
    };
    let mut chunks = input.chunks_exact(16);
    let mut h = if input.len() >= 16 {
        let mut v = [
            seed.wrapping_add(P1).wrapping_add(P2),
            seed.wrapping_add(P2),
            seed,
            seed.wrapping_sub(P1),
        ];
        for c in &mut chunks {
            for (i, lane) in v.iter_mut().enumerate() {
                *lane = round(*lane, read_u32(&c[i * 4..]));
            }
        }
        v[0].rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18))
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(input.len() as u32);
    let mut rest = if input.len() >= 16 {
        chunks.remainder()
    } else {
        input
    };
    while rest.len() >= 4 {
        h = h
            .wrapping_add(read_u32(rest).wrapping_mul(P3))
            .rotate_left(17)
            .wrapping_mul(P4);
        rest = &rest[4..];
    }
    for &b in rest {
        h = h
            .wrapping_add(u32::from(b).wrapping_mul(P5))
            .rotate_left(11)
            .wrapping_mul(P1);
    }
    h ^= h >> 15;
    h = h.wrapping_mul(P2);
    h ^= h >> 13;
    h = h.wrapping_mul(P3);
    h ^ (h >> 16)
}

/// Zero's `h64`: 64 bits from two XXH32 seeds, in base 36.
pub fn h64(text: &str) -> String {
    let b = text.as_bytes();
    let n = (u64::from(xxh32(b, 0)) << 32) | u64::from(xxh32(b, 1));
    base36(n)
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// The id of a named query: `h64(name + ":" + JSON.stringify(args))`.
pub fn hash_of_name_and_args(name: &str, args: &serde_json::Value) -> String {
    h64(&format!("{name}:{args}"))
}

/// The id of an ad-hoc query: `h64` of its normalised JSON.
pub fn hash_of_ast(ast: &Ast) -> String {
    h64(&serde_json::to_string(&normalize(ast)).unwrap_or_default())
}

/// Zero's `normalizeAST`: `and`/`or` flattened (nested groups of the same kind merged,
/// single-member groups unwrapped, empty groups removed), conditions sorted, `related`
/// sorted by subquery alias.
pub fn normalize(ast: &Ast) -> Ast {
    let mut out = ast.clone();
    out.where_ = ast
        .where_
        .as_ref()
        .and_then(|w| flatten(normalize_condition(w)));
    out.related = ast.related.as_ref().map(|rs| {
        let mut rs: Vec<CorrelatedSubquery> = rs.iter().map(normalize_related).collect();
        rs.sort_by(cmp_related);
        rs
    });
    out
}

fn normalize_related(r: &CorrelatedSubquery) -> CorrelatedSubquery {
    CorrelatedSubquery {
        subquery: Box::new(normalize(&r.subquery)),
        ..r.clone()
    }
}

fn normalize_condition(c: &Condition) -> Condition {
    match c {
        Condition::CorrelatedSubquery {
            related,
            op,
            flip,
            scalar,
        } => Condition::CorrelatedSubquery {
            related: Box::new(normalize_related(related)),
            op: *op,
            flip: *flip,
            scalar: *scalar,
        },
        Condition::And { conditions } => Condition::And {
            conditions: conditions.iter().map(normalize_condition).collect(),
        },
        Condition::Or { conditions } => Condition::Or {
            conditions: conditions.iter().map(normalize_condition).collect(),
        },
        simple => simple.clone(),
    }
}

fn flatten(c: Condition) -> Option<Condition> {
    let (is_and, conditions) = match c {
        Condition::And { conditions } => (true, conditions),
        Condition::Or { conditions } => (false, conditions),
        other => return Some(other),
    };
    let mut flat = Vec::new();
    for c in conditions.into_iter().filter_map(flatten) {
        match c {
            Condition::And { conditions } if is_and => flat.extend(conditions),
            Condition::Or { conditions } if !is_and => flat.extend(conditions),
            other => flat.push(other),
        }
    }
    flat.sort_by(cmp_condition);
    match flat.len() {
        0 => None,
        1 => flat.pop(),
        _ => Some(if is_and {
            Condition::And { conditions: flat }
        } else {
            Condition::Or { conditions: flat }
        }),
    }
}

fn cmp_related(a: &CorrelatedSubquery, b: &CorrelatedSubquery) -> std::cmp::Ordering {
    a.subquery
        .alias
        .as_deref()
        .unwrap_or("")
        .as_bytes()
        .cmp(b.subquery.alias.as_deref().unwrap_or("").as_bytes())
}

fn position_key(v: &ValuePosition) -> String {
    match v {
        ValuePosition::Column { name } => name.clone(),
        ValuePosition::Literal { value } => value.to_string(),
        ValuePosition::Static { anchor, field } => format!("{anchor:?}:{field:?}"),
    }
}

fn rank(c: &Condition) -> u8 {
    match c {
        Condition::Simple { .. } => 0,
        Condition::CorrelatedSubquery { .. } => 1,
        Condition::And { .. } | Condition::Or { .. } => 2,
    }
}

fn cmp_condition(a: &Condition, b: &Condition) -> std::cmp::Ordering {
    match (a, b) {
        (
            Condition::Simple {
                op: oa,
                left: la,
                right: ra,
            },
            Condition::Simple {
                op: ob,
                left: lb,
                right: rb,
            },
        ) => position_key(la)
            .cmp(&position_key(lb))
            .then_with(|| oa.as_str().cmp(ob.as_str()))
            .then_with(|| position_key(ra).cmp(&position_key(rb))),
        (
            Condition::CorrelatedSubquery { related: x, .. },
            Condition::CorrelatedSubquery { related: y, .. },
        ) => cmp_related(x, y),
        _ => rank(a).cmp(&rank(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxh32_reference_vectors() {
        assert_eq!(xxh32(b"", 0), 0x02CC_5D05);
        assert_eq!(xxh32(b"a", 0), 0x550D_7456);
        assert_eq!(xxh32(b"abc", 0), 0x32D1_53FF);
        assert_eq!(
            xxh32(b"Nobody inspects the spammish repetition", 0),
            0xE229_3B2F
        );
    }

    #[test]
    fn query_ids_match_the_client() {
        assert_eq!(
            hash_of_name_and_args("openIssues", &serde_json::json!([])),
            "j89s9yb1osb"
        );
        assert_eq!(
            hash_of_name_and_args("issueByID", &serde_json::json!([{"id": "i1"}])),
            "utzqmu14j875"
        );
        let ast = crate::ast::parse(r#"{"table":"issue","where":{"type":"simple","left":{"type":"column","name":"done"},"right":{"type":"literal","value":false},"op":"="},"orderBy":[["title","asc"]]}"#).unwrap();
        assert_eq!(hash_of_ast(&ast), "jta5myd24i33");
    }

    #[test]
    fn normalisation_flattens_and_sorts() {
        let ast = crate::ast::parse(r#"{"table":"t","where":{"type":"and","conditions":[{"type":"and","conditions":[{"type":"simple","left":{"type":"column","name":"b"},"right":{"type":"literal","value":1},"op":"="}]},{"type":"or","conditions":[]},{"type":"simple","left":{"type":"column","name":"a"},"right":{"type":"literal","value":2},"op":"="}]}}"#).unwrap();
        let n = serde_json::to_string(&normalize(&ast)).unwrap();
        assert_eq!(
            n,
            r#"{"table":"t","where":{"type":"and","conditions":[{"type":"simple","left":{"type":"column","name":"a"},"right":{"type":"literal","value":2},"op":"="},{"type":"simple","left":{"type":"column","name":"b"},"right":{"type":"literal","value":1},"op":"="}]}}"#
        );
    }
}

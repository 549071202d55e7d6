use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Lsn;

/// Zero's lexicographically sortable version: the base-36 digits of a number, prefixed by
/// one base-36 digit holding (number of digits − 1). String order equals numeric order.
///
/// `0 → "00"`, `10 → "0a"`, `36 → "110"`. The replica stamps rows with the LexiVersion of
/// the commit LSN that last wrote them, as zero-cache does.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LexiVersion(String);

const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

impl LexiVersion {
    /// Encodes a number.
    pub fn from_u64(n: u64) -> Self {
        Self::from_u128(u128::from(n))
    }

    fn from_u128(mut n: u128) -> Self {
        let mut digits = Vec::with_capacity(14);
        loop {
            digits.push(DIGITS[(n % 36) as usize]);
            n /= 36;
            if n == 0 {
                break;
            }
        }
        digits.reverse();
        let mut out = String::with_capacity(digits.len() + 1);
        out.push(DIGITS[digits.len() - 1] as char);
        out.extend(digits.iter().map(|&b| b as char));
        LexiVersion(out)
    }

    /// The LexiVersion of an LSN (its 64-bit position).
    pub fn from_lsn(lsn: Lsn) -> Self {
        Self::from_u64(lsn.0)
    }

    /// Decodes the number, when it fits in 64 bits.
    pub fn to_u64(&self) -> Option<u64> {
        u64::try_from(parse(&self.0).ok()?).ok()
    }

    /// The version string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn digit(b: u8) -> Option<u32> {
    (b as char).to_digit(36).filter(|_| !b.is_ascii_uppercase())
}

fn parse(s: &str) -> Result<u128, ParseLexiVersionError> {
    let err = || ParseLexiVersionError(s.to_owned());
    let bytes = s.as_bytes();
    let (&len, rest) = bytes.split_first().ok_or_else(err)?;
    let len = digit(len).ok_or_else(err)? as usize + 1;
    if rest.len() != len {
        return Err(err());
    }
    let mut n: u128 = 0;
    for &b in rest {
        let d = digit(b).ok_or_else(err)?;
        n = n
            .checked_mul(36)
            .and_then(|n| n.checked_add(u128::from(d)))
            .ok_or_else(err)?;
    }
    Ok(n)
}

/// The text was not a LexiVersion.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid version {0:?}: expected a length-prefixed base-36 number")]
pub struct ParseLexiVersionError(pub String);

impl FromStr for LexiVersion {
    type Err = ParseLexiVersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)?;
        Ok(LexiVersion(s.to_owned()))
    }
}

impl fmt::Display for LexiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn known_values_match_zero() {
        assert_eq!(LexiVersion::from_u64(0).as_str(), "00");
        assert_eq!(LexiVersion::from_u64(10).as_str(), "0a");
        assert_eq!(LexiVersion::from_u64(35).as_str(), "0z");
        assert_eq!(LexiVersion::from_u64(36).as_str(), "110");
        assert_eq!(
            LexiVersion::from_u128(1u128 << 64).as_str(),
            "c3w5e11264sgsg"
        );
    }

    proptest! {
        #[test]
        fn order_and_round_trip(a: u64, b: u64) {
            let (va, vb) = (LexiVersion::from_u64(a), LexiVersion::from_u64(b));
            prop_assert_eq!(va.cmp(&vb), a.cmp(&b));
            prop_assert_eq!(va.to_u64(), Some(a));
            prop_assert_eq!(va.as_str().parse::<LexiVersion>().unwrap(), va);
        }

        #[test]
        fn parse_never_panics(s in ".{0,20}") {
            let _ = s.parse::<LexiVersion>();
        }
    }
}

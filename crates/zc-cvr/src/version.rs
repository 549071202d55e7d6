//! CVR versions and the cookies that name them, in zero-cache's format:
//! `<stateVersion>` or `<stateVersion>:<configVersion>`, both LexiVersions, so that string
//! order is version order. The state version is the replica version the rows are at; the
//! config version counts query-set changes at one state version.

use std::cmp::Ordering;
use std::fmt;

use zc_types::{LexiVersion, Lsn};

/// A client group's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CvrVersion {
    /// The replica version (commit LSN) the group's rows are at.
    pub state: Lsn,
    /// Query-set changes at that state.
    pub config: u64,
}

/// A cookie that is not a CVR version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cookie \"{0}\"")]
pub struct ParseCookieError(pub String);

impl CvrVersion {
    /// The version after a change of the query set at the same state.
    pub fn next_config(self) -> CvrVersion {
        CvrVersion {
            state: self.state,
            config: self.config + 1,
        }
    }

    /// The version for rows at replica version `state` (a config bump when the state did
    /// not advance, so that the version always grows).
    pub fn advance_to(self, state: Lsn) -> CvrVersion {
        if state > self.state {
            CvrVersion { state, config: 0 }
        } else {
            self.next_config()
        }
    }

    /// The cookie.
    pub fn cookie(&self) -> String {
        let state = LexiVersion::from_u64(self.state.as_u64());
        if self.config == 0 {
            state.as_str().to_owned()
        } else {
            format!(
                "{}:{}",
                state.as_str(),
                LexiVersion::from_u64(self.config).as_str()
            )
        }
    }

    /// Parses a cookie.
    pub fn parse(cookie: &str) -> Result<CvrVersion, ParseCookieError> {
        let bad = || ParseCookieError(cookie.to_owned());
        let (state, config) = match cookie.split_once(':') {
            Some((s, c)) => (s, Some(c)),
            None => (cookie, None),
        };
        let state: LexiVersion = state.parse().map_err(|_| bad())?;
        let state = state.to_u64().ok_or_else(bad)?;
        let config = match config {
            Some(c) => {
                let c: LexiVersion = c.parse().map_err(|_| bad())?;
                c.to_u64().ok_or_else(bad)?
            }
            None => 0,
        };
        Ok(CvrVersion {
            state: Lsn(state),
            config,
        })
    }
}

impl fmt::Display for CvrVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.cookie())
    }
}

impl PartialOrd for CvrVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for CvrVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.state, self.config).cmp(&(other.state, other.config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_sort_as_versions_and_round_trip() {
        let versions = [
            CvrVersion::default(),
            CvrVersion::default().next_config(),
            CvrVersion {
                state: Lsn(35),
                config: 0,
            },
            CvrVersion {
                state: Lsn(36),
                config: 0,
            },
            CvrVersion {
                state: Lsn(36),
                config: 2,
            },
            CvrVersion {
                state: Lsn(1 << 40),
                config: 0,
            },
        ];
        assert_eq!(versions[0].cookie(), "00");
        assert_eq!(versions[1].cookie(), "00:01");
        for w in versions.windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[0].cookie() < w[1].cookie(), "{} {}", w[0], w[1]);
        }
        for v in versions {
            assert_eq!(CvrVersion::parse(&v.cookie()), Ok(v));
        }
        assert!(CvrVersion::parse("").is_err());
        assert!(CvrVersion::parse("zz:").is_err());
        assert!(CvrVersion::parse("not a cookie").is_err());
    }
}

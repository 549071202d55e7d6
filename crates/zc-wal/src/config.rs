//! Replication settings and the names derived from them (zero-cache's naming).

use std::time::Duration;

use crate::error::{Error, Result};

/// What to replicate from where.
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// The upstream connection string (`postgres://user:pass@host:port/db?sslmode=...`).
    pub upstream_url: String,
    /// `ZERO_APP_ID`: names the app schema, the shard schema, publications and the slot.
    pub app_id: String,
    /// `ZERO_SHARD_NUM`.
    pub shard_num: u32,
    /// `ZERO_APP_PUBLICATIONS`; empty means "publish every table of the public schema"
    /// through an internal publication, as zero-cache does.
    pub app_publications: Vec<String>,
    /// Parallel COPY connections during the initial sync (`ZERO_INITIAL_SYNC_TABLE_COPY_WORKERS`).
    pub copy_workers: usize,
    /// Rows per batch handed to the destination during the initial copy (bounds memory).
    pub copy_batch_rows: usize,
    /// The smallest part a table is split into for the initial copy, in bytes on disk
    /// upstream. A table larger than its share of the copy (all tables' size over
    /// `copy_workers`) and than this is copied in parts (ranges of its heap pages) by several
    /// workers at once, so that one large table does not make the copy wait for one worker.
    pub copy_part_bytes: u64,
    /// How often standby status updates are sent at most.
    pub status_interval: Duration,
    /// How often progress is logged during the initial copy.
    pub progress_interval: Duration,
}

impl WalConfig {
    /// Settings with zero-cache's defaults for everything but the upstream.
    pub fn new(upstream_url: impl Into<String>) -> Self {
        WalConfig {
            upstream_url: upstream_url.into(),
            app_id: "zero".into(),
            shard_num: 0,
            app_publications: Vec::new(),
            copy_workers: 5,
            copy_batch_rows: 5_000,
            copy_part_bytes: 8 << 20,
            status_interval: Duration::from_secs(1),
            progress_interval: Duration::from_secs(2),
        }
    }

    /// Sets the app id.
    pub fn with_app_id(mut self, app_id: impl Into<String>) -> Self {
        self.app_id = app_id.into();
        self
    }

    /// Sets the shard number.
    pub fn with_shard_num(mut self, shard_num: u32) -> Self {
        self.shard_num = shard_num;
        self
    }

    /// Sets the app publications.
    pub fn with_publications(mut self, publications: Vec<String>) -> Self {
        self.app_publications = publications;
        self
    }

    /// Checks names (app id `[a-z0-9_]+`, publications are identifiers not starting with `_`).
    pub fn validate(&self) -> Result<()> {
        if self.app_id.is_empty()
            || !self
                .app_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(Error::Config(format!(
                "app id {:?} must match [a-z0-9_]+",
                self.app_id
            )));
        }
        for p in &self.app_publications {
            let ok = !p.is_empty()
                && p.len() <= 63
                && p.bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return Err(Error::Config(format!(
                    "publication name {p:?} is not a valid identifier"
                )));
            }
            if p.starts_with('_') {
                return Err(Error::Config(format!(
                    "publication names starting with \"_\" are reserved: {p:?}"
                )));
            }
        }
        if self.copy_workers == 0 || self.copy_batch_rows == 0 {
            return Err(Error::Config(
                "copy workers and batch rows must be positive".into(),
            ));
        }
        Ok(())
    }

    /// The app schema (`zero`): holds `permissions`.
    pub fn app_schema(&self) -> String {
        self.app_id.clone()
    }

    /// The shard schema (`zero_0`): holds `clients` and `mutations`.
    pub fn shard_schema(&self) -> String {
        format!("{}_{}", self.app_id, self.shard_num)
    }

    /// The internal publication of the public schema (`_zero_public_0`).
    pub fn default_publication(&self) -> String {
        format!("_{}_public_{}", self.app_id, self.shard_num)
    }

    /// The internal publication of the shard's metadata tables (`_zero_metadata_0`).
    pub fn metadata_publication(&self) -> String {
        format!("_{}_metadata_{}", self.app_id, self.shard_num)
    }

    /// Every publication replicated, sorted.
    pub fn all_publications(&self) -> Vec<String> {
        let mut pubs = if self.app_publications.is_empty() {
            vec![self.default_publication()]
        } else {
            self.app_publications.clone()
        };
        pubs.push(self.metadata_publication());
        pubs.sort();
        pubs.dedup();
        pubs
    }

    /// The replication slot zc uses for this shard (`zero_0_zc`): under the shard's slot
    /// prefix, as zero-cache's slots are, and distinct from the names zero-cache picks.
    pub fn slot_name(&self) -> String {
        format!("{}_{}_zc", self.app_id, self.shard_num)
    }
}

/// The parts of a connection string the walsender session needs.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ConnParts {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) password: String,
    pub(crate) database: String,
    pub(crate) sslmode: String,
}

impl std::fmt::Debug for ConnParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.target())
    }
}

impl ConnParts {
    /// `host:port/database`, for messages (never the password).
    pub(crate) fn target(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.database)
    }
}

fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3).ok_or_else(|| Error::InvalidUrl {
                    reason: "truncated percent escape".into(),
                })?;
                let b = u8::from_str_radix(hex, 16).map_err(|_| Error::InvalidUrl {
                    reason: format!("bad percent escape %{hex}"),
                })?;
                out.push(b);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| Error::InvalidUrl {
        reason: "not UTF-8".into(),
    })
}

/// Parses `postgres://` / `postgresql://` URLs.
pub(crate) fn parse_url(url: &str) -> Result<ConnParts> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| Error::InvalidUrl {
            reason: "expected postgres://user:password@host:port/database".into(),
        })?;
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, database) = main.split_once('/').unwrap_or((main, ""));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (u, h),
        None => ("", authority),
    };
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (percent_decode(u)?, percent_decode(p)?),
        None => (percent_decode(userinfo)?, String::new()),
    };
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        let (h, p) = h.split_once(']').ok_or_else(|| Error::InvalidUrl {
            reason: "unterminated IPv6 address".into(),
        })?;
        (h.to_owned(), p.strip_prefix(':').unwrap_or(""))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p),
            None => (hostport.to_owned(), ""),
        }
    };
    let port = if port.is_empty() {
        5432
    } else {
        port.parse().map_err(|_| Error::InvalidUrl {
            reason: format!("bad port {port:?}"),
        })?
    };
    let mut host = percent_decode(&host)?;
    let mut sslmode = "prefer".to_owned();
    let mut user = user;
    let mut password = password;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v)?;
        match k {
            "sslmode" => sslmode = v,
            "host" => host = v,
            "user" => user = v,
            "password" => password = v,
            _ => {}
        }
    }
    if host.is_empty() {
        host = "localhost".into();
    }
    let database = percent_decode(database)?;
    let database = if database.is_empty() {
        user.clone()
    } else {
        database
    };
    if user.is_empty() {
        return Err(Error::InvalidUrl {
            reason: "no user name".into(),
        });
    }
    Ok(ConnParts {
        host,
        port,
        user,
        password,
        database,
        sslmode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_urls() {
        let p = parse_url("postgres://u:p%40ss@db.example.com:6543/app?sslmode=require").unwrap();
        assert_eq!(
            (
                p.host.as_str(),
                p.port,
                p.user.as_str(),
                p.password.as_str(),
                p.database.as_str()
            ),
            ("db.example.com", 6543, "u", "p@ss", "app")
        );
        assert_eq!(p.sslmode, "require");
        let p = parse_url("postgresql://postgres@127.0.0.1/x").unwrap();
        assert_eq!((p.port, p.password.as_str()), (5432, ""));
        assert!(parse_url("mysql://x").is_err());
        assert!(parse_url("postgres://u@h:notaport/db").is_err());
    }

    #[test]
    fn names_follow_zero_cache() {
        let c = WalConfig::new("postgres://u@h/db");
        assert_eq!(c.shard_schema(), "zero_0");
        assert_eq!(
            c.all_publications(),
            vec!["_zero_metadata_0", "_zero_public_0"]
        );
        assert!(
            c.clone()
                .with_publications(vec!["_x".into()])
                .validate()
                .is_err()
        );
        assert!(c.clone().with_app_id("Bad").validate().is_err());
    }
}

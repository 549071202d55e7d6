//! Which operating-system user runs PostgreSQL.
//!
//! `initdb`, `pg_ctl` and `postgres` refuse to run as root. When this process's effective
//! user is root we run them as the `postgres` system user instead (safe
//! [`CommandExt::uid`]/[`CommandExt::gid`]; Rust also drops root's supplementary groups), and
//! hand the directories they write to that user.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{Error, Result, io};

/// The user and group that PostgreSQL's programs run as, when it is not us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunAs {
    /// User id.
    pub(crate) uid: u32,
    /// Primary group id.
    pub(crate) gid: u32,
}

impl RunAs {
    /// `None` when we may run PostgreSQL ourselves; the `postgres` user when we are root.
    pub(crate) fn detect() -> Result<Option<RunAs>> {
        if effective_uid()? != 0 {
            return Ok(None);
        }
        postgres_user().map(Some).ok_or(Error::NoPostgresUser)
    }

    /// Gives `path` and everything below it to this user (symlinks themselves, never their
    /// targets). Entries already owned by the user are left alone.
    pub(crate) fn chown_tree(self, path: &Path) -> Result<()> {
        let meta = std::fs::symlink_metadata(path).map_err(io(format!("inspect {path:?}")))?;
        if meta.uid() != self.uid || meta.gid() != self.gid {
            std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
                .map_err(io(format!("give {path:?} to the postgres user")))?;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).map_err(io(format!("list {path:?}")))? {
                let entry = entry.map_err(io(format!("list {path:?}")))?;
                self.chown_tree(&entry.path())?;
            }
        }
        Ok(())
    }
}

/// A command for one of PostgreSQL's programs: run as `run_as` when given, in `cwd` (the
/// user must be able to enter it, or `initdb` fails to identify its directory), with no
/// stdin, the C locale and no `PG*` variables that could redirect it.
pub(crate) fn command(program: &Path, run_as: Option<RunAs>, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    if let Some(user) = run_as {
        cmd.uid(user.uid).gid(user.gid);
    }
    cmd.current_dir(cwd).stdin(Stdio::null()).env("LC_ALL", "C");
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|n| n.starts_with("PG")) {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Our effective user id: the owner of `/proc/self`, or what `id -u` says without `/proc`.
fn effective_uid() -> Result<u32> {
    if let Ok(meta) = std::fs::metadata("/proc/self") {
        return Ok(meta.uid());
    }
    let out = Command::new("id")
        .arg("-u")
        .stdin(Stdio::null())
        .output()
        .map_err(io("run \"id -u\" to learn our user id"))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| Error::Io {
            action: "read our user id from \"id -u\"".to_owned(),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
        })
}

/// The `postgres` user from `/etc/passwd`, else from `id` (which also asks NSS).
fn postgres_user() -> Option<RunAs> {
    if let Some(user) = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| parse_passwd(&passwd, "postgres"))
    {
        return Some(user);
    }
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some(RunAs {
        uid: id("-u")?,
        gid: id("-g")?,
    })
}

/// Finds `name` in the text of a `passwd` file (`name:x:uid:gid:...`).
fn parse_passwd(passwd: &str, name: &str) -> Option<RunAs> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some(RunAs { uid, gid })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_postgres_line_of_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      postgresql:x:7:7::/:/bin/false\n\
                      postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n";
        assert_eq!(
            parse_passwd(passwd, "postgres"),
            Some(RunAs { uid: 101, gid: 104 })
        );
        assert_eq!(parse_passwd(passwd, "nobody"), None);
        assert_eq!(parse_passwd("postgres:x:oops:1:::\n", "postgres"), None);
    }

    #[test]
    fn detects_root_and_picks_the_postgres_user() {
        let run_as = RunAs::detect().expect("detect");
        let uid = std::fs::metadata("/proc/self").expect("/proc/self").uid();
        assert_eq!(run_as.is_some(), uid == 0);
        if let Some(user) = run_as {
            assert_ne!(user.uid, 0);
        }
    }
}

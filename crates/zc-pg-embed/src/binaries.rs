//! Finding the PostgreSQL server binaries (`initdb`, `postgres`, `pg_ctl`).
//!
//! Order: the directory in `ZC_PG_BIN` (when set, it is the only place looked at, so a wrong
//! value is reported rather than silently replaced), then each directory on `PATH`, then
//! `/usr/lib/postgresql/<version>/bin` (highest version first, Debian's layout), then
//! `pg_config --bindir`.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// The programs that must all be present in one directory.
const PROGRAMS: [&str; 3] = ["initdb", "postgres", "pg_ctl"];

/// Where the Debian/Ubuntu packages install one directory per major version.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// Finds the directory of the server binaries from this process's environment.
pub(crate) fn find() -> Result<PathBuf> {
    find_with(
        std::env::var_os("ZC_PG_BIN"),
        std::env::var_os("PATH"),
        Path::new(DEBIAN_ROOT),
    )
}

/// [`find`] with its inputs given, so tests need not change the process environment.
fn find_with(
    zc_pg_bin: Option<OsString>,
    path: Option<OsString>,
    debian_root: &Path,
) -> Result<PathBuf> {
    let mut tried = Vec::new();
    if let Some(dir) = zc_pg_bin.filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if has_programs(&dir) {
            return Ok(dir);
        }
        tried.push(format!("ZC_PG_BIN={}", dir.display()));
        return Err(Error::BinariesNotFound { tried });
    }
    for dir in path.iter().flat_map(std::env::split_paths) {
        if has_programs(&dir) {
            return Ok(resolve_links(dir));
        }
        tried.push(dir.display().to_string());
    }
    for dir in versioned_dirs(debian_root) {
        if has_programs(&dir) {
            return Ok(dir);
        }
        tried.push(dir.display().to_string());
    }
    tried.push(format!("{}/*/bin", debian_root.display()));
    match pg_config_bindir() {
        Some(dir) if has_programs(&dir) => return Ok(dir),
        Some(dir) => tried.push(format!("pg_config --bindir ({})", dir.display())),
        None => tried.push("pg_config --bindir (not available)".to_owned()),
    }
    Err(Error::BinariesNotFound { tried })
}

/// True when all of [`PROGRAMS`] are executable files in `dir`.
fn has_programs(dir: &Path) -> bool {
    PROGRAMS.iter().all(|p| {
        std::fs::metadata(dir.join(p))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// `/usr/local/bin/initdb` may be a symlink into the real installation; use the real
/// directory when it holds all programs, so log lines and errors name the installation.
fn resolve_links(dir: PathBuf) -> PathBuf {
    std::fs::canonicalize(dir.join("initdb"))
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .filter(|real| has_programs(real))
        .unwrap_or(dir)
}

/// `<root>/<version>/bin` for every numeric version directory, highest version first.
fn versioned_dirs(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut versions: Vec<(u32, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

/// The output of `pg_config --bindir`, if `pg_config` runs.
fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    let dir = dir.trim();
    (out.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_zc_pg_bin_is_reported_not_replaced() {
        let err = find_with(
            Some("/nonexistent/zc-pg-bin".into()),
            std::env::var_os("PATH"),
            Path::new(DEBIAN_ROOT),
        )
        .expect_err("ZC_PG_BIN points nowhere");
        match &err {
            Error::BinariesNotFound { tried } => {
                assert_eq!(tried, &["ZC_PG_BIN=/nonexistent/zc-pg-bin".to_owned()]);
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(err.to_string().contains("ZC_PG_BIN"), "{err}");
    }

    #[test]
    fn the_error_lists_every_place_tried() {
        let empty = tempfile::tempdir().expect("tempdir");
        let path =
            std::env::join_paths([empty.path().join("a"), empty.path().join("b")]).expect("path");
        // pg_config may exist on this machine and find the binaries; only check the listing
        // when the search fails.
        if let Err(Error::BinariesNotFound { tried }) = find_with(None, Some(path), empty.path()) {
            assert_eq!(tried[0], empty.path().join("a").display().to_string());
            assert_eq!(tried[1], empty.path().join("b").display().to_string());
            assert!(tried[2].ends_with("/*/bin"), "{tried:?}");
            assert!(tried[3].starts_with("pg_config --bindir"), "{tried:?}");
        }
    }

    #[test]
    fn versions_are_tried_highest_first() {
        let root = tempfile::tempdir().expect("tempdir");
        for v in ["9", "15", "13", "not-a-version"] {
            std::fs::create_dir_all(root.path().join(v).join("bin")).expect("mkdir");
        }
        let dirs = versioned_dirs(root.path());
        let names: Vec<_> = dirs
            .iter()
            .map(|d| {
                d.parent()
                    .and_then(Path::file_name)
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(names, ["15", "13", "9"]);
    }

    #[test]
    fn finds_the_machines_binaries() {
        let dir = find().expect("PostgreSQL binaries on this machine");
        assert!(has_programs(&dir), "{}", dir.display());
    }
}

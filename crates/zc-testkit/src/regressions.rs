//! Failing seeds of randomized tests, kept as regression files: a case that fails writes
//! its seed to `tests/regressions/<name>.seeds` of the crate under test, and every later run
//! replays the saved seeds before new random ones.

use std::io::Write as _;
use std::path::PathBuf;

/// The regression file of one randomized test.
#[derive(Debug, Clone)]
pub struct Regressions {
    path: PathBuf,
}

impl Regressions {
    /// The file for test `name` of the crate at `manifest_dir` (pass
    /// `env!("CARGO_MANIFEST_DIR")`).
    pub fn new(manifest_dir: &str, name: &str) -> Regressions {
        Regressions {
            path: PathBuf::from(manifest_dir)
                .join("tests")
                .join("regressions")
                .join(format!("{name}.seeds")),
        }
    }

    /// The saved seeds (lines of decimal numbers; `#` starts a comment).
    pub fn saved(&self) -> Vec<u64> {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split('#').next()?.trim().parse().ok())
            .collect()
    }

    /// Watches one case: if the thread panics while the guard lives, the seed is saved.
    pub fn guard(&self, seed: u64) -> SeedGuard {
        SeedGuard {
            path: self.path.clone(),
            seed,
        }
    }
}

/// Saves its seed when dropped during a panic.
#[derive(Debug)]
pub struct SeedGuard {
    path: PathBuf,
    seed: u64,
}

#[allow(clippy::print_stderr)] // a test helper reporting to the test output
impl Drop for SeedGuard {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let known = Regressions {
            path: self.path.clone(),
        }
        .saved();
        if known.contains(&self.seed) {
            return;
        }
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            let _ = writeln!(f, "{}", self.seed);
            eprintln!(
                "failing seed {} saved to {}",
                self.seed,
                self.path.display()
            );
        }
    }
}

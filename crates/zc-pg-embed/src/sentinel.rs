//! Teardown that survives panics and aborts of the owning process.
//!
//! Statics are not dropped at exit and `PR_SET_PDEATHSIG` fires when the spawning *thread*
//! exits, so neither can stop the server reliably. Instead a tiny shell waits on a pipe whose
//! only write end this process holds:
//!
//! ```text
//!  this process ──(pipe, write end)──▶ sh: read _; pg_ctl -m immediate stop; rm -rf <tmp>
//! ```
//!
//! When this process ends for any reason the kernel closes the write end, `read` returns, and
//! the shell stops the server and removes the temporary directory. The write end comes from
//! [`Stdio::piped`], which is close-on-exec, so `postgres` and every other program we start do
//! not inherit it (otherwise `read` would never return). The shell sits in its own process
//! group so a terminal's Ctrl-C does not kill it before it has cleaned up. Test:
//! `closing_the_pipe_stops_the_server`, `an_aborted_owner_leaves_nothing_behind`.

use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};

use crate::account::{self, RunAs};
use crate::error::{Error, Result, io};

/// The script; `$1` = pg_ctl, `$2` = data directory, `$3` = directory to remove or empty.
const SCRIPT: &str = r#"read _ignored
"$1" -D "$2" -m immediate -w stop >/dev/null 2>&1
if [ -n "$3" ]; then rm -rf -- "$3"; fi
"#;

/// The running sentinel shell and the write end of its stdin.
#[derive(Debug)]
pub(crate) struct Sentinel {
    child: Child,
    pipe: Option<ChildStdin>,
}

impl Sentinel {
    /// Starts the shell. `remove` is deleted after the stop (only for temporary directories).
    pub(crate) fn spawn(
        pg_ctl: &Path,
        data_dir: &Path,
        remove: Option<&Path>,
        run_as: Option<RunAs>,
        cwd: &Path,
    ) -> Result<Sentinel> {
        use std::os::unix::process::CommandExt;

        let mut child = account::command(Path::new("/bin/sh"), run_as, cwd)
            .arg("-c")
            .arg(SCRIPT)
            .arg("zc-pg-sentinel")
            .arg(pg_ctl)
            .arg(data_dir)
            .arg(remove.unwrap_or(Path::new("")))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(io("start the clean-up sentinel shell"))?;
        let pipe = child.stdin.take().ok_or_else(|| Error::Io {
            action: "start the clean-up sentinel shell".to_owned(),
            source: std::io::Error::other("its stdin is not a pipe"),
        })?;
        Ok(Sentinel {
            child,
            pipe: Some(pipe),
        })
    }

    /// The write end of the pipe (for tests).
    #[cfg(test)]
    pub(crate) fn take_pipe(&mut self) -> Option<ChildStdin> {
        self.pipe.take()
    }

    /// The shell's process (for tests).
    #[cfg(test)]
    pub(crate) fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Sentinel {
    /// Closes the pipe and waits for the shell to finish its clean-up.
    fn drop(&mut self) {
        drop(self.pipe.take());
        if let Err(error) = self.child.wait() {
            tracing::warn!(error = %error, "could not wait for the clean-up sentinel");
        }
    }
}

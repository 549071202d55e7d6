//! [`EmbeddedPostgres`]: initdb, start, readiness, stop.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::account::{self, RunAs};
use crate::binaries;
use crate::error::{Error, Result, io};
use crate::sentinel::Sentinel;

/// How long [`EmbeddedPostgres::start`] waits for the server to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Pause between readiness checks.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Free ports tried when the chosen one is taken between choosing and binding.
const PORT_ATTEMPTS: usize = 5;

/// Lines of the server log quoted in [`Error::Start`].
const LOG_TAIL_LINES: usize = 20;

/// Unix socket paths longer than this do not fit `sockaddr_un` (107 bytes plus the file name).
const MAX_SOCKET_DIR_LEN: usize = 90;

/// The server settings; [`PgOptions::extra_settings`] override them by name.
const DEFAULT_SETTINGS: [(&str, &str); 9] = [
    ("listen_addresses", "127.0.0.1"),
    ("wal_level", "logical"),
    ("max_wal_senders", "40"),
    ("max_replication_slots", "40"),
    ("max_connections", "200"),
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    // Keepalives arrive every half of this, which keepalive-acknowledgement tests rely on.
    ("wal_sender_timeout", "10s"),
];

/// What to start; [`Default`] is a throwaway cluster on a free port.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// The PostgreSQL data directory. `None`: a new temporary directory, deleted when the
    /// server is dropped or this process ends. `Some`: created with `initdb` unless it already
    /// holds a cluster (a `PG_VERSION` file), and kept afterwards; the server log is written
    /// to `postgres.log` inside it. When running as root, the directory is given to the
    /// `postgres` user, and that user must be able to reach it (search permission on every
    /// parent directory).
    pub data_dir: Option<PathBuf>,
    /// The TCP port on 127.0.0.1. `None`: a free port, chosen again if it is taken by the
    /// time the server binds it.
    pub port: Option<u16>,
    /// Extra server settings, passed as `-c name=value`; a name that is also a default
    /// setting replaces the default.
    pub extra_settings: Vec<(String, String)>,
}

/// A running PostgreSQL server on 127.0.0.1 with `trust` authentication for user `postgres`.
///
/// Dropping it stops the server (immediate shutdown) and deletes a temporary data directory;
/// if this process dies without dropping it (abort, `SIGKILL`, a `static`), a sentinel
/// process does the same.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    port: u16,
    data_dir: PathBuf,
    log_file: PathBuf,
    /// Where the programs run: a directory the server's user can enter.
    work_dir: PathBuf,
    bin_dir: PathBuf,
    run_as: Option<RunAs>,
    /// The postmaster, our child; `None` once stopped.
    postmaster: Option<Child>,
    /// Dropped after the server is stopped (it stops it again, harmlessly, and removes the
    /// temporary directory).
    sentinel: Option<Sentinel>,
    /// Dropped last: removes what the sentinel left, if anything.
    _temp_dir: Option<TempDir>,
}

/// The directories of one cluster.
struct Layout {
    /// The directory the programs run in, owned by the server's user.
    work_dir: PathBuf,
    data_dir: PathBuf,
    log_file: PathBuf,
    /// Unix socket directory; `None` to listen on TCP only.
    socket_dir: Option<PathBuf>,
    temp_dir: Option<TempDir>,
}

impl Layout {
    fn new(data_dir: Option<&Path>) -> Result<Layout> {
        let layout = match data_dir {
            None => {
                let temp_dir = tempfile::Builder::new()
                    .prefix("zc-pg-")
                    .tempdir()
                    .map_err(io("create a temporary directory for PostgreSQL"))?;
                let root = temp_dir.path().to_path_buf();
                Layout {
                    data_dir: root.join("data"),
                    log_file: root.join("postgres.log"),
                    socket_dir: Some(root.clone()),
                    work_dir: root,
                    temp_dir: Some(temp_dir),
                }
            }
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(io(format!("create data directory {dir:?}")))?;
                let dir = std::fs::canonicalize(dir)
                    .map_err(io(format!("resolve data directory {dir:?}")))?;
                Layout {
                    log_file: dir.join("postgres.log"),
                    socket_dir: Some(dir.clone()),
                    work_dir: dir.clone(),
                    data_dir: dir,
                    temp_dir: None,
                }
            }
        };
        let socket_dir = layout
            .socket_dir
            .filter(|d| d.as_os_str().len() <= MAX_SOCKET_DIR_LEN);
        Ok(Layout {
            socket_dir,
            ..layout
        })
    }
}

/// How one start attempt ended.
enum Attempt {
    Ready(Child),
    /// Another process took the port; try a new one.
    PortTaken(Error),
    Failed(Error),
}

impl EmbeddedPostgres {
    /// Creates the cluster with `initdb` if its data directory has no `PG_VERSION`, starts
    /// the server and returns once it accepts TCP connections (at most 60 s).
    ///
    /// Blocking: call it from `tokio::task::spawn_blocking` in async code.
    pub fn start(opts: PgOptions) -> Result<Self> {
        let bin_dir = binaries::find()?;
        let run_as = RunAs::detect()?;
        let layout = Layout::new(opts.data_dir.as_deref())?;
        if let Some(user) = run_as {
            user.chown_tree(&layout.work_dir)?;
        }
        // From here on, our death stops the server and removes a temporary directory.
        let sentinel = Sentinel::spawn(
            &bin_dir.join("pg_ctl"),
            &layout.data_dir,
            layout.temp_dir.as_ref().map(TempDir::path),
            run_as,
            &layout.work_dir,
        )?;
        if !layout.data_dir.join("PG_VERSION").exists() {
            initdb(&bin_dir, run_as, &layout)?;
        }
        let mut pg = EmbeddedPostgres {
            port: 0,
            data_dir: layout.data_dir,
            log_file: layout.log_file,
            work_dir: layout.work_dir.clone(),
            bin_dir,
            run_as,
            postmaster: None,
            sentinel: Some(sentinel),
            _temp_dir: layout.temp_dir,
        };
        let settings = settings(&opts.extra_settings);
        let attempts = if opts.port.is_some() {
            1
        } else {
            PORT_ATTEMPTS
        };
        for attempt in 1..=attempts {
            let port = match opts.port {
                Some(port) => port,
                None => free_port()?,
            };
            match pg.launch(port, layout.socket_dir.as_deref(), &settings)? {
                Attempt::Ready(child) => {
                    pg.port = port;
                    pg.postmaster = Some(child);
                    tracing::info!(
                        port,
                        data_dir = %pg.data_dir.display(),
                        "embedded PostgreSQL is ready"
                    );
                    return Ok(pg);
                }
                Attempt::PortTaken(err) if attempt < attempts => {
                    tracing::debug!(port, error = %err, "port taken, trying another");
                }
                Attempt::PortTaken(err) | Attempt::Failed(err) => return Err(err),
            }
        }
        // The loop returns on its last attempt.
        Err(Error::Start {
            port: 0,
            reason: "no start attempt was made".to_owned(),
            log_tail: String::new(),
        })
    }

    /// Starts `postgres` on `port` and waits until it is ready, exits, or times out.
    fn launch(
        &self,
        port: u16,
        socket_dir: Option<&Path>,
        settings: &[(String, String)],
    ) -> Result<Attempt> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .map_err(io(format!("open the server log {:?}", self.log_file)))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log_err = log
            .try_clone()
            .map_err(io("duplicate the server log handle"))?;
        let mut cmd = account::command(&self.bin_dir.join("postgres"), self.run_as, &self.work_dir);
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(port.to_string());
        match socket_dir {
            Some(dir) => cmd.arg("-k").arg(dir),
            None => cmd.arg("-k").arg(""),
        };
        for (name, value) in settings {
            cmd.arg("-c").arg(format!("{name}={value}"));
        }
        // Its own process group: a terminal's Ctrl-C is for our process, which then stops
        // the server in order (or the sentinel does).
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(io(format!("run {:?}", self.bin_dir.join("postgres"))))?;
        tracing::debug!(
            port,
            pid = child.id(),
            "postgres started, waiting until it is ready"
        );

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().map_err(io("wait for postgres"))? {
                let log_tail = log_tail(&self.log_file, log_start);
                let taken = log_tail.contains("could not create any TCP/IP sockets")
                    || log_tail.contains("Address already in use");
                let err = Error::Start {
                    port,
                    reason: format!("postgres {status}"),
                    log_tail,
                };
                return Ok(if taken {
                    Attempt::PortTaken(err)
                } else {
                    Attempt::Failed(err)
                });
            }
            if self.is_ready(child.id(), port) {
                return Ok(Attempt::Ready(child));
            }
            if Instant::now() >= deadline {
                self.pg_ctl_stop("immediate").ok();
                child.kill().ok();
                child.wait().ok();
                return Ok(Attempt::Failed(Error::Start {
                    port,
                    reason: format!("not ready after {} s", READY_TIMEOUT.as_secs()),
                    log_tail: log_tail(&self.log_file, log_start),
                }));
            }
            pause(POLL_INTERVAL);
        }
    }

    /// Ready when `postmaster.pid` is our child's and says `ready`, and the port accepts a
    /// TCP connection.
    fn is_ready(&self, pid: u32, port: u16) -> bool {
        let Ok(pid_file) = std::fs::read_to_string(self.data_dir.join("postmaster.pid")) else {
            return false;
        };
        let lines: Vec<&str> = pid_file.lines().map(str::trim).collect();
        // Lines: pid, data directory, start time, port, socket directory, listen address,
        // shared memory key, status.
        let ours = lines.first().and_then(|l| l.parse::<u32>().ok()) == Some(pid);
        let ready = lines.get(7) == Some(&"ready");
        ours && ready
            && TcpStream::connect_timeout(
                &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                Duration::from_secs(1),
            )
            .is_ok()
    }

    /// Runs `pg_ctl stop -m <mode>` and waits for the shutdown to finish.
    fn pg_ctl_stop(&self, mode: &str) -> Result<Output> {
        account::command(&self.bin_dir.join("pg_ctl"), self.run_as, &self.work_dir)
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", mode, "-w", "stop"])
            .output()
            .map_err(io(format!("run {:?}", self.bin_dir.join("pg_ctl"))))
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db`: `postgres://postgres@127.0.0.1:{port}/{db}` (trust
    /// authentication, no password).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The PostgreSQL data directory (the one holding `PG_VERSION`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log (the server's stdout and stderr).
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// Stops the server with a fast shutdown (`pg_ctl stop -m fast`), waiting until it has
    /// exited. Does nothing when it is already stopped. A temporary data directory stays
    /// until the value is dropped.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.postmaster.take() else {
            return Ok(());
        };
        if child.try_wait().map_err(io("wait for postgres"))?.is_some() {
            return Ok(());
        }
        let out = match self.pg_ctl_stop("fast") {
            Ok(out) => out,
            Err(err) => {
                self.postmaster = Some(child);
                return Err(err);
            }
        };
        if !out.status.success() && child.try_wait().ok().flatten().is_none() {
            self.postmaster = Some(child);
            return Err(Error::Stop {
                status: out.status,
                output: output_text(&out),
            });
        }
        child.wait().map_err(io("wait for postgres to exit"))?;
        tracing::info!(port = self.port, "embedded PostgreSQL stopped");
        Ok(())
    }
}

impl Drop for EmbeddedPostgres {
    /// Stops the server with an immediate shutdown (errors ignored), then lets the sentinel
    /// finish and removes a temporary data directory.
    fn drop(&mut self) {
        if let Some(mut child) = self.postmaster.take() {
            if child.try_wait().ok().flatten().is_none() {
                if let Err(error) = self.pg_ctl_stop("immediate") {
                    tracing::warn!(error = %error, "could not stop the embedded PostgreSQL");
                }
                if child.try_wait().ok().flatten().is_none() {
                    child.kill().ok();
                }
            }
            child.wait().ok();
        }
        drop(self.sentinel.take());
    }
}

/// Runs `initdb` into the layout's data directory.
fn initdb(bin_dir: &Path, run_as: Option<RunAs>, layout: &Layout) -> Result<()> {
    let started = Instant::now();
    let program = bin_dir.join("initdb");
    let out = account::command(&program, run_as, &layout.work_dir)
        .arg("-D")
        .arg(&layout.data_dir)
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .output()
        .map_err(io(format!("run {program:?}")))?;
    if !out.status.success() {
        return Err(Error::Initdb {
            data_dir: layout.data_dir.clone(),
            status: out.status,
            output: output_text(&out),
        });
    }
    tracing::debug!(
        data_dir = %layout.data_dir.display(),
        elapsed_ms = started.elapsed().as_millis(),
        "initdb done"
    );
    Ok(())
}

/// The default settings with `extra` applied (same name: extra wins, keeps its order).
fn settings(extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = DEFAULT_SETTINGS
        .iter()
        .filter(|(name, _)| !extra.iter().any(|(n, _)| n == name))
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    all.extend(extra.iter().cloned());
    all
}

/// A port that was free a moment ago (bind port 0, read it, release it).
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io("find a free port"))?;
    let addr = listener.local_addr().map_err(io("find a free port"))?;
    Ok(addr.port())
}

/// The last [`LOG_TAIL_LINES`] lines written to `log` from byte `from` on.
fn log_tail(log: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(log)
        && file.seek(SeekFrom::Start(from)).is_ok()
    {
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).ok();
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// stdout then stderr of a finished program, trimmed.
fn output_text(out: &Output) -> String {
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text.trim().to_owned()
}

/// Waits between readiness polls. `start` is a blocking function by contract.
#[allow(clippy::disallowed_methods)]
fn pause(duration: Duration) {
    std::thread::sleep(duration);
}

#[cfg(test)]
mod tests {
    use std::io::BufRead;
    use std::os::unix::fs::MetadataExt;
    use std::process::Command;

    use super::*;

    /// The postmaster's pid from `postmaster.pid`.
    fn postmaster_pid(data_dir: &Path) -> u32 {
        let text =
            std::fs::read_to_string(data_dir.join("postmaster.pid")).expect("postmaster.pid");
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("pid line")
    }

    /// True while `pid` runs (a zombie, which an init without reaping may leave, is dead).
    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
    }

    /// Polls `done` for up to 30 s.
    fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            pause(Duration::from_millis(20));
        }
    }

    #[test]
    fn settings_override_defaults_by_name() {
        let s = settings(&[
            ("wal_level".into(), "replica".into()),
            ("work_mem".into(), "8MB".into()),
        ]);
        assert_eq!(s.iter().filter(|(n, _)| n == "wal_level").count(), 1);
        assert_eq!(
            s[s.len() - 2],
            ("wal_level".to_owned(), "replica".to_owned())
        );
        assert_eq!(s[s.len() - 1], ("work_mem".to_owned(), "8MB".to_owned()));
        assert_eq!(s.len(), DEFAULT_SETTINGS.len() + 1);
    }

    #[test]
    fn starts_accepts_connections_and_cleans_up_on_drop() {
        let pg = EmbeddedPostgres::start(PgOptions::default()).expect("start");
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, pg.port())).is_ok());
        assert_eq!(
            pg.url("app"),
            format!("postgres://postgres@127.0.0.1:{}/app", pg.port())
        );
        assert!(pg.data_dir().join("PG_VERSION").is_file());
        let opts = std::fs::read_to_string(pg.data_dir().join("postmaster.opts")).expect("opts");
        assert!(opts.contains("wal_level=logical"), "{opts}");
        assert!(opts.contains("listen_addresses=127.0.0.1"), "{opts}");
        if RunAs::detect().expect("detect").is_some() {
            // We are root: the server runs as (and its files belong to) the postgres user.
            let owner = std::fs::metadata(pg.data_dir()).expect("data dir").uid();
            assert_ne!(owner, 0);
            let pid = postmaster_pid(pg.data_dir());
            assert_eq!(
                std::fs::metadata(format!("/proc/{pid}"))
                    .expect("proc")
                    .uid(),
                owner
            );
        }
        let pid = postmaster_pid(pg.data_dir());
        let root = pg.data_dir().parent().expect("temp root").to_path_buf();
        drop(pg);
        assert!(!alive(pid), "postmaster {pid} still runs after drop");
        assert!(!root.exists(), "{root:?} still exists after drop");
    }

    #[test]
    fn extra_settings_reach_the_server_and_stop_is_idempotent() {
        let mut pg = EmbeddedPostgres::start(PgOptions {
            extra_settings: vec![("wal_level".into(), "replica".into())],
            ..PgOptions::default()
        })
        .expect("start");
        let opts = std::fs::read_to_string(pg.data_dir().join("postmaster.opts")).expect("opts");
        assert!(
            opts.contains("wal_level=replica") && !opts.contains("wal_level=logical"),
            "{opts}"
        );
        let pid = postmaster_pid(pg.data_dir());
        pg.stop().expect("stop");
        assert!(!alive(pid));
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, pg.port())).is_err());
        pg.stop().expect("second stop");
        assert!(
            pg.data_dir().join("PG_VERSION").is_file(),
            "stop keeps the data until drop"
        );
    }

    #[test]
    fn a_given_data_dir_is_kept_and_reused() {
        let parent = tempfile::tempdir().expect("tempdir");
        // The postgres user (when we are root) must be able to reach the directory.
        std::fs::set_permissions(
            parent.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let dir = parent.path().join("cluster");
        let first = EmbeddedPostgres::start(PgOptions {
            data_dir: Some(dir.clone()),
            ..PgOptions::default()
        })
        .expect("first start");
        let pid = postmaster_pid(first.data_dir());
        let version = std::fs::metadata(dir.join("PG_VERSION"))
            .expect("PG_VERSION")
            .modified()
            .expect("mtime");
        drop(first);
        assert!(!alive(pid));
        assert!(
            dir.join("PG_VERSION").is_file(),
            "a given data directory is kept"
        );
        let mut second = EmbeddedPostgres::start(PgOptions {
            data_dir: Some(dir.clone()),
            ..PgOptions::default()
        })
        .expect("second start");
        let again = std::fs::metadata(dir.join("PG_VERSION"))
            .expect("PG_VERSION")
            .modified()
            .expect("mtime");
        assert_eq!(version, again, "no second initdb");
        second.stop().expect("stop");
        drop(second);
        assert!(dir.join("PG_VERSION").is_file());
    }

    #[test]
    fn a_taken_fixed_port_fails_with_the_log_tail() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let err = EmbeddedPostgres::start(PgOptions {
            port: Some(port),
            ..PgOptions::default()
        })
        .expect_err("port is taken");
        match &err {
            Error::Start {
                port: p, log_tail, ..
            } => {
                assert_eq!(*p, port);
                assert!(log_tail.contains("could not bind"), "{log_tail}");
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(
            err.to_string().starts_with("could not start PostgreSQL"),
            "{err}"
        );
    }

    #[test]
    fn closing_the_pipe_stops_the_server() {
        // If postgres had inherited the write end, the sentinel's read would never return.
        let mut pg = EmbeddedPostgres::start(PgOptions::default()).expect("start");
        let pid = postmaster_pid(pg.data_dir());
        let root = pg.data_dir().parent().expect("temp root").to_path_buf();
        let sentinel = pg.sentinel.as_mut().expect("sentinel");
        drop(sentinel.take_pipe());
        eventually("the sentinel exits", || {
            sentinel.child_mut().try_wait().ok().flatten().is_some()
        });
        assert!(!alive(pid), "postmaster {pid} still runs");
        assert!(!root.exists(), "{root:?} still exists");
        drop(pg);
    }

    /// Helper for `an_aborted_owner_leaves_nothing_behind`: run in a child process.
    #[test]
    #[ignore = "helper run by an_aborted_owner_leaves_nothing_behind in a child process"]
    fn abort_helper() {
        if std::env::var_os("ZC_PG_EMBED_ABORT_HELPER").is_none() {
            return;
        }
        let pg = EmbeddedPostgres::start(PgOptions::default()).expect("start");
        println!("zc-pid={}", postmaster_pid(pg.data_dir()));
        println!(
            "zc-root={}",
            pg.data_dir().parent().expect("root").display()
        );
        std::process::abort();
    }

    #[test]
    fn an_aborted_owner_leaves_nothing_behind() {
        let out = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "server::tests::abort_helper",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("ZC_PG_EMBED_ABORT_HELPER", "1")
            .stdin(Stdio::null())
            .output()
            .expect("run helper");
        assert!(!out.status.success(), "the helper aborts");
        let mut pid = None;
        let mut root = None;
        for line in out.stdout.lines() {
            let line = line.expect("utf-8");
            // libtest prints "test ... " without a newline before the helper's output.
            if let Some((_, p)) = line.split_once("zc-pid=") {
                pid = p.trim().parse::<u32>().ok();
            } else if let Some((_, r)) = line.split_once("zc-root=") {
                root = Some(PathBuf::from(r.trim()));
            }
        }
        let (Some(pid), Some(root)) = (pid, root) else {
            panic!(
                "helper printed no pid/root:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        eventually("the orphaned server stops", || !alive(pid));
        eventually("the temporary directory is removed", || !root.exists());
    }
}

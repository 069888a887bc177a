//! Helpers shared by the end-to-end tests: they run real processes of the `filesync`
//! binary against real sockets and real files, and compare the resulting trees.
//!
//! - [`filesync_bin`] builds the binary once per test process (a no-op when it is up to
//!   date, so a test never runs a stale binary while others edit the CLI) and returns
//!   its path.
//! - [`ServeCmd`] / [`Server`] start `filesync serve` on port 0, read the port from the
//!   line it prints, collect its log, and stop it with SIGTERM when dropped.
//! - [`SyncCmd`] runs `filesync sync --once` and returns its exit code and output.
//! - Both can run the binary under a descriptor limit (`nofile_limit`), read back with
//!   [`nofile_limits`].
//! - [`write_file`], [`make_dir`], [`write_big_file`] build trees;
//!   [`assert_trees_equal`] compares two trees exactly.
//! - [`connect_from`], [`hold_slot`] and [`read_until_closed`] play raw peers;
//!   [`open_fds`] counts a process's descriptors.
//! - [`Netns`] creates throwaway network namespaces, so that discovery's multicast never
//!   leaves the test; [`Netns::run`] runs a closure with its sockets inside one.
//! - [`Lan`] joins several namespaces ([`LanHost`]s) on one bridged LAN with multicast.
//! - [`GarageCluster`] runs a real Garage cluster (S3-compatible object store) and [`Etcd`]
//!   a real etcd, on loopback or on a [`LanHost`]; [`garage_or_skip`] and
//!   [`etcd_or_skip`] gate the tests that need them.
//! - [`Relay`] forwards TCP connections with a [`Fault`]: cut, or stalled with both
//!   sockets held open; [`Relay::recording`] keeps what each connection carried; [`free_port`] gives a port a restarted server can listen on again.
//!
//! Every wait is bounded, and every child process is killed when its handle is dropped,
//! including when a test panics.

pub mod etcd;
pub mod fsimage;
pub mod garage;
pub mod lan;

pub use etcd::{etcd_or_skip, Etcd};
pub use garage::{garage_or_skip, GarageCluster};
pub use lan::{Lan, LanHost};

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use filetime::FileTime;

/// How long a `filesync sync` may run before the test gives up on it.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------------------

/// The path of the `filesync` binary, built on first use.
///
/// `CARGO_BIN_EXE_filesync` exists only for tests of the crate that owns the binary, so
/// this crate finds it next to its own test executable (`<target>/<profile>/deps/..`),
/// which follows `CARGO_TARGET_DIR` and the profile by construction. The first call runs
/// `cargo build -p filesync-cli` for that profile: cheap when nothing changed, and it
/// keeps the tests from running a binary older than the sources. `FILESYNC_BIN` names
/// a binary to use instead, without building.
pub fn filesync_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("FILESYNC_BIN") {
            return PathBuf::from(p);
        }
        let (profile_dir, profile) = profile_dir();
        let bin = profile_dir.join("filesync");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&workspace)
            .args([
                "build",
                "--quiet",
                "-p",
                "filesync-cli",
                "--bin",
                "filesync",
            ])
            .args(["--profile", &profile]);
        // `cargo test` runs this executable with the variables of the package under test
        // set (CARGO_MANIFEST_DIR, CARGO_PKG_NAME, …), which the `cargo test` that built
        // it did not have. Build scripts that watch them (ring's, by
        // `rerun-if-env-changed`) would see a change: ring, rustls and everything above
        // them would be rebuilt here, and again by the next `cargo test`, every run.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            let set_by_cargo_test = [
                "CARGO_MANIFEST_",
                "CARGO_PKG_",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
            ]
            .iter()
            .any(|p| k.starts_with(p))
                || k == "OUT_DIR";
            if set_by_cargo_test {
                cmd.env_remove(&*k);
            }
        }
        // The target directory is the one this test executable was built into, wherever
        // CARGO_TARGET_DIR put it.
        if let Some(target) = profile_dir.parent() {
            cmd.arg("--target-dir").arg(target);
        }
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("running cargo to build filesync: {e}"));
        assert!(
            out.status.success(),
            "`cargo build -p filesync-cli` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            bin.is_file(),
            "built filesync but {} is missing",
            bin.display()
        );
        bin
    })
}

/// `<target>/<profile>` and the cargo profile name, from this test executable's path.
fn profile_dir() -> (PathBuf, String) {
    let exe = std::env::current_exe().expect("the test executable's path");
    // <target>/<profile>/deps/<test>-<hash>
    let mut dir = exe.parent().expect("deps dir").to_path_buf();
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir.pop();
    }
    let profile = match dir.file_name().and_then(OsStr::to_str) {
        Some("debug") | None => "dev".to_string(),
        Some("release") => "release".to_string(),
        Some(other) => other.to_string(),
    };
    (dir, profile)
}

// ---------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------

/// A child process that is killed (and reaped) when dropped, with its output collected
/// by background threads.
#[derive(Debug)]
struct Proc {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

fn collect(r: impl Read + Send + 'static, into: Arc<Mutex<String>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => lock(&into).push_str(&String::from_utf8_lossy(&line)),
            }
        }
    })
}

fn lock(m: &Mutex<String>) -> std::sync::MutexGuard<'_, String> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Proc {
    fn spawn(mut cmd: Command, first_stdout_line: Option<mpsc::Sender<String>>) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // The logs are parsed; colours only get in the way (tracing-subscriber
            // honours NO_COLOR; `strip_ansi` covers it if not).
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG");
        // The CLI reads FILESYNC_* variables as flag defaults; the tests pass flags. A
        // variable the test set on `cmd` itself (such as a test hook) is kept.
        let set: Vec<OsString> = cmd
            .get_envs()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k.to_owned())
            .collect();
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("FILESYNC_") && !set.contains(&k) {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let mut readers = vec![collect(err, Arc::clone(&stderr))];
        let so = Arc::clone(&stdout);
        readers.push(thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut first = first_stdout_line;
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let s = String::from_utf8_lossy(&line).into_owned();
                        if let Some(tx) = first.take() {
                            let _ = tx.send(s.clone());
                        }
                        lock(&so).push_str(&s);
                    }
                }
            }
        }));
        Proc {
            child,
            stdout,
            stderr,
            readers,
            status: None,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit.
    fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends SIGTERM.
    fn signal_term(&mut self) {
        self.signal(rustix::process::Signal::TERM);
    }

    /// Stops the process (SIGSTOP) and returns once every one of its threads is stopped:
    /// the signal is asynchronous, and a thread running on another core would otherwise
    /// go on for a moment after `kill` returned.
    fn pause(&mut self) {
        self.signal(rustix::process::Signal::STOP);
        let tasks = PathBuf::from(format!("/proc/{}/task", self.pid()));
        let stopped = poll_until(Duration::from_secs(5), || {
            let Ok(rd) = fs::read_dir(&tasks) else {
                return true;
            };
            rd.filter_map(Result::ok).all(|t| {
                fs::read_to_string(t.path().join("stat"))
                    .ok()
                    .and_then(|st| st.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
                    .unwrap_or(true)
            })
        });
        assert!(stopped, "the process did not stop within 5 s of SIGSTOP");
    }

    /// Sends `sig`, unless the process has been reaped (its pid may be reused).
    fn signal(&mut self, sig: rustix::process::Signal) {
        if self.try_wait().is_some() {
            return;
        }
        let pid = i32::try_from(self.pid())
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, sig);
        }
    }

    /// Waits for the output readers, once the process has exited.
    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    fn stdout(&self) -> String {
        lock(&self.stdout).clone()
    }

    fn stderr(&self) -> String {
        lock(&self.stderr).clone()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            self.signal_term();
            if self.wait_timeout(Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        self.join_readers();
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`), such as tracing's colours.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------

/// How to start `filesync serve`. Defaults: `--port 0 --bind 127.0.0.1 --no-discovery
/// --interval 30 --max-sessions 1 --idle-timeout 60` (see [`ServeCmd::port`],
/// [`ServeCmd::interval`], [`ServeCmd::idle_timeout`]).
#[derive(Debug, Clone)]
pub struct ServeCmd {
    root: PathBuf,
    store: Option<String>,
    bind: String,
    group: Option<String>,
    max_sessions: u32,
    extra: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    nofile: Option<u64>,
    netns: Option<String>,
    user: Option<(u32, u32)>,
    port: u16,
    interval: String,
    idle_timeout: String,
}

impl ServeCmd {
    /// A server keeping its data under `root`.
    pub fn new(root: &Path) -> ServeCmd {
        ServeCmd {
            root: root.to_path_buf(),
            store: None,
            bind: "127.0.0.1".into(),
            group: None,
            max_sessions: 1,
            extra: Vec::new(),
            envs: Vec::new(),
            nofile: None,
            netns: None,
            user: None,
            port: 0,
            interval: "30".into(),
            idle_timeout: "60".into(),
        }
    }

    /// Keeps the archive in this object store (`--store s3://…`) instead of the root.
    pub fn store(mut self, url: &str) -> ServeCmd {
        self.store = Some(url.to_owned());
        self
    }

    /// Adds these environment variables (the object store's `AWS_*`, say).
    pub fn envs(mut self, vars: impl IntoIterator<Item = (String, String)>) -> ServeCmd {
        self.envs
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Listens on this port instead of a free one (0), so that a restarted server is
    /// found where the last one was.
    pub fn port(mut self, port: u16) -> ServeCmd {
        self.port = port;
        self
    }

    /// Sets `--interval` (default `30`).
    pub fn interval(mut self, d: &str) -> ServeCmd {
        self.interval = d.into();
        self
    }

    /// Sets `--idle-timeout` (default `60`).
    pub fn idle_timeout(mut self, d: &str) -> ServeCmd {
        self.idle_timeout = d.into();
        self
    }

    /// Runs the server as this user and group (the test must be root to switch), so that
    /// permission checks apply to it as to a server run by an ordinary account.
    pub fn user(mut self, uid: u32, gid: u32) -> ServeCmd {
        self.user = Some((uid, gid));
        self
    }

    /// Listens on `addr` instead of 127.0.0.1.
    pub fn bind(mut self, addr: &str) -> ServeCmd {
        self.bind = addr.into();
        self
    }

    /// Answers discovery on `group` (`ADDR:PORT`) instead of `--no-discovery`.
    /// Only use inside a [`Netns`]: the server joins the group.
    pub fn discovery(mut self, group: &str) -> ServeCmd {
        self.group = Some(group.into());
        self
    }

    /// Sets `--max-sessions`.
    pub fn max_sessions(mut self, n: u32) -> ServeCmd {
        self.max_sessions = n;
        self
    }

    /// Adds a raw argument.
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> ServeCmd {
        self.extra.push(a.as_ref().to_owned());
        self
    }

    /// Runs the server inside a network namespace.
    pub fn netns(mut self, ns: &Netns) -> ServeCmd {
        self.netns = Some(ns.name().to_owned());
        self
    }

    /// Sets an environment variable of the server (kept even if it is a `FILESYNC_*`
    /// variable, which the server otherwise never inherits from the test).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> ServeCmd {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Runs the server with at most `n` open descriptors: soft and hard `RLIMIT_NOFILE`
    /// both `n`, so that the binary cannot raise its soft limit past it.
    pub fn nofile_limit(mut self, n: u64) -> ServeCmd {
        self.nofile = Some(n);
        self
    }

    /// Starts the server and waits (at most [`START_TIMEOUT`]) for its listening line.
    pub fn start(&self) -> Server {
        let mut cmd = filesync_command(self.netns.as_deref(), self.nofile);
        if let Some((uid, gid)) = self.user {
            use std::os::unix::process::CommandExt;
            // std drops root's supplementary groups when it sets the uid.
            cmd.uid(uid).gid(gid);
        }
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        cmd.arg("serve")
            .args(["--port", &self.port.to_string(), "--bind", &self.bind]);
        match &self.store {
            Some(url) => cmd.args(["--store", url]),
            None => cmd.arg("--root").arg(&self.root),
        };
        cmd.args(["--interval", &self.interval])
            .args(["--idle-timeout", &self.idle_timeout])
            .args(["--max-sessions", &self.max_sessions.to_string()]);
        match &self.group {
            Some(g) => cmd.args(["--group", g]),
            None => cmd.arg("--no-discovery"),
        };
        cmd.args(&self.extra);
        let (tx, rx) = mpsc::channel();
        let mut proc = Proc::spawn(cmd, Some(tx));
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(l) => l,
            Err(_) => {
                let status = proc.wait_timeout(Duration::from_millis(500));
                panic!(
                    "filesync serve printed no listening line within {START_TIMEOUT:?} \
                     (exit: {status:?}); stderr:\n{}",
                    strip_ansi(&proc.stderr())
                );
            }
        };
        let port = parse_listening_port(&line)
            .unwrap_or_else(|| panic!("cannot parse the port from {line:?}"));
        Server {
            proc,
            port,
            listening_line: line.trim_end().to_owned(),
        }
    }
}

/// The port in `filesync serve: listening on HOST:PORT, root DIR, discovery ...`.
pub fn parse_listening_port(line: &str) -> Option<u16> {
    let rest = line.strip_prefix("filesync serve: listening on ")?;
    let addr = rest.split(',').next()?;
    addr.rsplit_once(':')?.1.parse().ok()
}

/// A running `filesync serve`; sent SIGTERM (then killed, if it lingers) when dropped.
#[derive(Debug)]
pub struct Server {
    proc: Proc,
    port: u16,
    listening_line: String,
}

impl Server {
    /// Starts a server with the defaults of [`ServeCmd`].
    pub fn start(root: &Path) -> Server {
        ServeCmd::new(root).start()
    }

    /// The TCP port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, for `--server`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The process id (for signals).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The line the server printed on start.
    pub fn listening_line(&self) -> &str {
        &self.listening_line
    }

    /// Everything the server printed on stdout so far (the listening line first).
    pub fn stdout(&self) -> String {
        self.proc.stdout()
    }

    /// The log (stderr) so far, colours removed.
    pub fn log(&self) -> String {
        strip_ansi(&self.proc.stderr())
    }

    /// Waits until the log contains `needle`; false after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        poll_until(timeout, || self.log().contains(needle))
    }

    /// Waits until `needle` occurs at least `n` times in the log; false after `timeout`.
    pub fn wait_for_log_count(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        poll_until(timeout, || self.log().matches(needle).count() >= n)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.proc.try_wait().is_none()
    }

    /// Sends SIGTERM and waits for the exit; `None` if it did not exit within `timeout`
    /// (the process is then killed when the `Server` is dropped).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.stop_with(rustix::process::Signal::TERM, timeout)
    }

    /// Sends SIGINT (Ctrl-C) and waits for the exit, as [`terminate`](Self::terminate).
    pub fn interrupt(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.stop_with(rustix::process::Signal::INT, timeout)
    }

    /// Freezes the server (SIGSTOP), as a long pause of its host would (a VM paused, a
    /// machine swapping), and returns once every thread of it is stopped.
    pub fn pause(&mut self) {
        self.proc.pause();
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&mut self) {
        self.proc.signal(rustix::process::Signal::CONT);
    }

    /// Kills the server with SIGKILL (a crash, a power cut of the process: nothing of it
    /// runs any more) and waits for it to be gone.
    pub fn kill(&mut self) -> ExitStatus {
        self.stop_with(rustix::process::Signal::KILL, Duration::from_secs(10))
            .expect("a process killed with SIGKILL is gone within 10 s")
    }

    fn stop_with(&mut self, sig: rustix::process::Signal, timeout: Duration) -> Option<ExitStatus> {
        self.proc.signal(sig);
        let s = self.proc.wait_timeout(timeout);
        if s.is_some() {
            self.proc.join_readers();
        }
        s
    }
}

// ---------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------

/// How to run `filesync sync --once`.
#[derive(Debug, Clone)]
pub struct SyncCmd {
    args: Vec<OsString>,
    netns: Option<String>,
    nofile: Option<u64>,
    timeout: Duration,
    envs: Vec<(OsString, OsString)>,
    via: Vec<OsString>,
}

/// A finished `filesync sync`.
#[derive(Debug, Clone)]
pub struct SyncOutput {
    /// The exit code (`-1` if killed by a signal).
    pub code: i32,
    /// Everything printed on stdout.
    pub stdout: String,
    /// Everything printed on stderr, colours removed.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl SyncOutput {
    /// The `--json` summary (the last non-empty stdout line), parsed.
    pub fn json(&self) -> serde_json::Value {
        let line = self
            .stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_else(|| panic!("no JSON summary on stdout; {self}"));
        serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON summary {line:?}: {e}"))
    }

    /// A number from the `--json` summary.
    pub fn count(&self, key: &str) -> u64 {
        self.json()[key]
            .as_u64()
            .unwrap_or_else(|| panic!("no count {key:?} in the summary; {self}"))
    }

    /// Panics with the output unless the exit code is `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &SyncOutput {
        assert_eq!(self.code, code, "unexpected exit code; {self}");
        self
    }
}

impl std::fmt::Display for SyncOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "filesync sync exited {} after {:?}\n--- stdout\n{}--- stderr\n{}---",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }
}

impl SyncCmd {
    /// `filesync sync --once --id ID --dir DIR --json`.
    pub fn new(id: &str, dir: &Path) -> SyncCmd {
        SyncCmd {
            args: vec![
                "--once".into(),
                "--json".into(),
                "--id".into(),
                id.into(),
                "--dir".into(),
                dir.into(),
            ],
            netns: None,
            nofile: None,
            timeout: SYNC_TIMEOUT,
            envs: Vec::new(),
            via: Vec::new(),
        }
    }

    /// Without `--once`: the client syncs in a loop on the server's schedule, retrying
    /// on failure, until it is stopped (with `--json`, one summary line per sync).
    pub fn looping(mut self) -> SyncCmd {
        self.args.retain(|a| a != "--once");
        self
    }

    /// Without `--json`: the client prints its text summary.
    pub fn text(mut self) -> SyncCmd {
        self.args.retain(|a| a != "--json");
        self
    }

    /// Sets an environment variable of the client (kept even if it is a `FILESYNC_*`
    /// variable, which the client otherwise never inherits from the test).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> SyncCmd {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Runs the binary through `program` (with `args`), which must exec it as its last
    /// argument, so that signals still reach it: `setpriv ...`, for instance. Not with
    /// [`netns`](Self::netns) or [`nofile_limit`](Self::nofile_limit).
    pub fn via(mut self, program: &str, args: &[&str]) -> SyncCmd {
        self.via = std::iter::once(program)
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        self
    }

    /// Adds `--server ADDR`.
    pub fn server(self, addr: &str) -> SyncCmd {
        self.arg("--server").arg(addr)
    }

    /// Adds `--encoding ENC`.
    pub fn encoding(self, enc: &str) -> SyncCmd {
        self.arg("--encoding").arg(enc)
    }

    /// Adds a raw argument.
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> SyncCmd {
        self.args.push(a.as_ref().to_owned());
        self
    }

    /// Runs the client inside a network namespace.
    pub fn netns(mut self, ns: &Netns) -> SyncCmd {
        self.netns = Some(ns.name().to_owned());
        self
    }

    /// Runs the client with at most `n` open descriptors (soft and hard limit), as
    /// [`ServeCmd::nofile_limit`].
    pub fn nofile_limit(mut self, n: u64) -> SyncCmd {
        self.nofile = Some(n);
        self
    }

    /// Sets how long [`run`](Self::run) waits before killing the client and panicking.
    pub fn timeout(mut self, t: Duration) -> SyncCmd {
        self.timeout = t;
        self
    }

    /// Starts the client in the background.
    pub fn spawn(&self) -> RunningSync {
        let mut cmd = match self.via.split_first() {
            None => filesync_command(self.netns.as_deref(), self.nofile),
            Some((program, args)) => {
                assert!(
                    self.netns.is_none() && self.nofile.is_none(),
                    "SyncCmd::via does not combine with netns or nofile_limit"
                );
                let mut c = Command::new(program);
                c.args(args).arg(filesync_bin());
                c
            }
        };
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        cmd.arg("sync").args(&self.args);
        RunningSync {
            proc: Proc::spawn(cmd, None),
            started: Instant::now(),
            timeout: self.timeout,
        }
    }

    /// Runs the client to completion.
    pub fn run(&self) -> SyncOutput {
        self.spawn().wait()
    }
}

/// A `filesync sync` running in the background; killed if dropped unfinished.
#[derive(Debug)]
pub struct RunningSync {
    proc: Proc,
    started: Instant,
    timeout: Duration,
}

impl RunningSync {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Whether it has exited.
    pub fn has_exited(&mut self) -> bool {
        self.proc.try_wait().is_some()
    }

    /// Its stderr so far, colours removed.
    pub fn stderr(&self) -> String {
        strip_ansi(&self.proc.stderr())
    }

    /// Its stdout so far.
    pub fn stdout(&self) -> String {
        self.proc.stdout()
    }

    /// Sends SIGTERM.
    pub fn terminate(&mut self) {
        self.proc.signal_term();
    }

    /// Kills it with SIGKILL (nothing of it runs any more: no cleanup, no goodbye to the
    /// server) and waits for it to be gone. False if it had already exited by itself.
    pub fn kill(&mut self) -> bool {
        let running = self.proc.try_wait().is_none();
        self.proc.signal(rustix::process::Signal::KILL);
        assert!(
            self.proc.wait_timeout(Duration::from_secs(10)).is_some(),
            "a process killed with SIGKILL is gone within 10 s"
        );
        running
    }

    /// Stops the process (SIGSTOP), freezing it mid-transfer, and returns once every one
    /// of its threads is stopped.
    pub fn pause(&mut self) {
        self.proc.pause();
    }

    /// Lets a paused process go on (SIGCONT).
    pub fn resume(&mut self) {
        self.proc.signal(rustix::process::Signal::CONT);
    }

    /// Waits for the exit (panics after the command's timeout).
    pub fn wait(mut self) -> SyncOutput {
        let left = self.timeout.saturating_sub(self.started.elapsed());
        let Some(status) = self.proc.wait_timeout(left) else {
            let _ = self.proc.child.kill();
            let _ = self.proc.child.wait();
            self.proc.join_readers();
            panic!(
                "filesync sync did not finish within {:?}; stderr:\n{}",
                self.timeout,
                strip_ansi(&self.proc.stderr())
            );
        };
        let elapsed = self.started.elapsed();
        self.proc.join_readers();
        SyncOutput {
            code: status.code().unwrap_or(-1),
            stdout: self.proc.stdout(),
            stderr: strip_ansi(&self.proc.stderr()),
            elapsed,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Trees
// ---------------------------------------------------------------------------------------

/// `cp -a`: a reference copy keeping modes, times, links and FIFOs.
pub fn copy_tree(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp")
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

/// Writes `data` to `root/rel` (creating parent directories) and sets its mtime.
pub fn write_file(root: &Path, rel: &str, data: &[u8], mtime: FileTime) {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
    }
    fs::write(&p, data).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
    set_mtime(root, rel, mtime);
}

/// Sets the mtime of `root/rel` (and its atime, which nothing compares).
pub fn set_mtime(root: &Path, rel: &str, mtime: FileTime) {
    let p = root.join(rel);
    filetime::set_file_times(&p, mtime, mtime)
        .unwrap_or_else(|e| panic!("setting the mtime of {}: {e}", p.display()));
}

/// `secs.nanos` since the epoch as a [`FileTime`].
pub fn ts(secs: i64, nanos: u32) -> FileTime {
    FileTime::from_unix_time(secs, nanos)
}

/// Creates the directory `root/rel` and its parents.
pub fn make_dir(root: &Path, rel: &str) {
    let p = root.join(rel);
    fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
}

/// Removes `root/rel`, a file or a whole directory.
pub fn remove(root: &Path, rel: &str) {
    let p = root.join(rel);
    let r = if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
        fs::remove_dir_all(&p)
    } else {
        fs::remove_file(&p)
    };
    r.unwrap_or_else(|e| panic!("removing {}: {e}", p.display()));
}

/// `len` deterministic pseudo-random bytes (xorshift), different for each `seed`.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes a file of `mib` MiB at `path`: pseudo-random blocks, each stamped with its
/// index, so that a lost, repeated or misplaced block shows in a comparison.
pub fn write_big_file(path: &Path, mib: usize, seed: u64, mtime: FileTime) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
    }
    let mut block = pseudo_random(1 << 20, seed);
    let mut f = std::io::BufWriter::new(
        fs::File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display())),
    );
    for i in 0..mib as u64 {
        block[..8].copy_from_slice(&i.to_le_bytes());
        block[8..16].copy_from_slice(&seed.to_le_bytes());
        f.write_all(&block)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
    f.flush()
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    drop(f);
    filetime::set_file_times(path, mtime, mtime)
        .unwrap_or_else(|e| panic!("setting the mtime of {}: {e}", path.display()));
}

/// One entry of a tree, as compared by [`assert_trees_equal`]. Modes are the permission
/// bits (`st_mode & 0o7777`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory and its mode (its mtime is compared by [`assert_dir_mtimes_equal`]).
    Dir {
        /// Permission bits.
        mode: u32,
    },
    /// A regular file: size, mtime (seconds, nanoseconds) and mode.
    File {
        /// Size in bytes.
        size: u64,
        /// Modification time: seconds since the epoch and nanoseconds.
        mtime: (i64, u32),
        /// Permission bits.
        mode: u32,
    },
    /// A symbolic link and its target.
    Symlink(PathBuf),
    /// A FIFO and its mode.
    Fifo {
        /// Permission bits.
        mode: u32,
    },
    /// Anything else (socket, device).
    Other,
}

/// Every entry under `root` (not `root` itself), by relative path (names of any bytes).
/// Panics if `root` is not a directory.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let m = fs::symlink_metadata(root)
        .unwrap_or_else(|e| panic!("{} is not there: {e}", root.display()));
    assert!(m.is_dir(), "{} is not a directory", root.display());
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), &mut out);
    out
}

fn walk(dir: &Path, prefix: &Path, out: &mut BTreeMap<PathBuf, Node>) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let rd = fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
    for e in rd {
        let e = e.unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
        let rel = prefix.join(e.file_name());
        let m = fs::symlink_metadata(e.path())
            .unwrap_or_else(|err| panic!("stat {}: {err}", e.path().display()));
        let mode = m.mode() & 0o7777;
        let node = if m.is_dir() {
            walk(&e.path(), &rel, out);
            Node::Dir { mode }
        } else if m.is_file() {
            let t = FileTime::from_last_modification_time(&m);
            Node::File {
                size: m.len(),
                mtime: (t.unix_seconds(), t.nanoseconds()),
                mode,
            }
        } else if m.file_type().is_symlink() {
            Node::Symlink(fs::read_link(e.path()).unwrap_or_default())
        } else if m.file_type().is_fifo() {
            Node::Fifo { mode }
        } else {
            Node::Other
        };
        out.insert(rel, node);
    }
}

/// Asserts that every directory under `a` has the same mtime, to the nanosecond, as the
/// directory at the same path under `b` (native sessions mirror directory times; the
/// original dialect does not list directories at all).
#[track_caller]
pub fn assert_dir_mtimes_equal(a: &Path, b: &Path) {
    let mut diffs = Vec::new();
    for (p, n) in snapshot(a) {
        if !matches!(n, Node::Dir { .. }) {
            continue;
        }
        let ta = FileTime::from_last_modification_time(&fs::metadata(a.join(&p)).unwrap());
        match fs::metadata(b.join(&p)) {
            Ok(m) => {
                let tb = FileTime::from_last_modification_time(&m);
                if ta != tb {
                    diffs.push(format!("{p:?}: {ta} vs {tb}"));
                }
            }
            Err(e) => diffs.push(format!("{p:?}: {e}")),
        }
    }
    assert!(
        diffs.is_empty(),
        "directory mtimes differ:\n{}",
        diffs.join("\n")
    );
}

/// Asserts that the trees at `a` and `b` are identical: the same set of paths (empty
/// directories included), the same kinds, files of the same size and mtime to the
/// nanosecond, and the same bytes. Nothing is ignored.
#[track_caller]
pub fn assert_trees_equal(a: &Path, b: &Path) {
    let ta = snapshot(a);
    let tb = snapshot(b);
    let mut diffs = Vec::new();
    for (p, na) in &ta {
        match tb.get(p) {
            None => diffs.push(format!("only in {}: {p:?} ({na:?})", a.display())),
            Some(nb) if nb != na => diffs.push(format!("{p:?}: {na:?} vs {nb:?}")),
            Some(_) => {}
        }
    }
    for (p, nb) in &tb {
        if !ta.contains_key(p) {
            diffs.push(format!("only in {}: {p:?} ({nb:?})", b.display()));
        }
    }
    for (p, n) in &ta {
        if matches!(n, Node::File { .. }) && tb.get(p) == Some(n) {
            if let Some(off) = first_difference(&a.join(p), &b.join(p)) {
                diffs.push(format!("{p:?}: contents differ at byte {off}"));
            }
        }
    }
    assert!(
        diffs.is_empty(),
        "trees {} and {} differ:\n  {}",
        a.display(),
        b.display(),
        diffs.join("\n  ")
    );
}

/// The offset of the first differing byte of two files, `None` if they are equal.
pub fn first_difference(a: &Path, b: &Path) -> Option<u64> {
    let open = |p: &Path| {
        BufReader::with_capacity(
            1 << 20,
            fs::File::open(p).unwrap_or_else(|e| panic!("opening {}: {e}", p.display())),
        )
    };
    let (mut fa, mut fb) = (open(a), open(b));
    let mut off = 0u64;
    loop {
        let ba = fa
            .fill_buf()
            .unwrap_or_else(|e| panic!("reading {}: {e}", a.display()));
        let bb = fb
            .fill_buf()
            .unwrap_or_else(|e| panic!("reading {}: {e}", b.display()));
        let n = ba.len().min(bb.len());
        if n == 0 {
            return (ba.len() != bb.len()).then_some(off);
        }
        // Slice equality is a memcmp even in debug builds; the byte loop only runs to
        // find where a difference is.
        if ba[..n] != bb[..n] {
            let i = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y);
            return Some(off + i.unwrap_or(0) as u64);
        }
        fa.consume(n);
        fb.consume(n);
        off += n as u64;
    }
}

/// Number of regular files and their total size in a snapshot.
pub fn file_totals(tree: &BTreeMap<PathBuf, Node>) -> (u64, u64) {
    tree.values().fold((0, 0), |(n, bytes), node| match node {
        Node::File { size, .. } => (n + 1, bytes + size),
        _ => (n, bytes),
    })
}

/// The names directly under `dir`, sorted.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| {
            e.expect("listing")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// The temporary files left under `<root>/.filesync/tmp` (empty if the dir is missing).
pub fn temp_files(root: &Path) -> Vec<String> {
    let tmp = root.join(".filesync").join("tmp");
    if !tmp.exists() {
        return Vec::new();
    }
    dir_names(&tmp)
}

/// Polls `f` every few milliseconds until it holds; false after `timeout`.
pub fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------
// Descriptor limits
// ---------------------------------------------------------------------------------------

/// A command running the `filesync` binary, inside `netns` if given, with soft and hard
/// `RLIMIT_NOFILE` set to `nofile` if given. The limit is set by bash's `ulimit -n` (which
/// sets both), and bash then execs the binary, so the child's pid is the binary's and
/// signals reach it. (`pre_exec` with `setrlimit` would need `unsafe`, which the
/// workspace forbids.)
fn filesync_command(netns: Option<&str>, nofile: Option<u64>) -> Command {
    match nofile {
        None => netns_command(netns, filesync_bin()),
        Some(n) => {
            let mut c = netns_command(netns, Path::new("bash"));
            c.arg("-c")
                .arg(format!("ulimit -n {n} && exec \"$@\""))
                .arg("filesync")
                .arg(filesync_bin());
            c
        }
    }
}

/// The soft and hard limits on open descriptors of process `pid`, as
/// `/proc/PID/limits` shows them (`"256"`, or `"unlimited"`); `None` if it is gone.
pub fn nofile_limits(pid: u32) -> Option<(String, String)> {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut f = line["Max open files".len()..].split_whitespace();
    Some((f.next()?.to_owned(), f.next()?.to_owned()))
}

// ---------------------------------------------------------------------------------------
// Network namespaces
// ---------------------------------------------------------------------------------------

fn netns_command(netns: Option<&str>, program: &Path) -> Command {
    match netns {
        // `ip netns exec` execs the program itself (no fork), so the child's pid is the
        // program's and SIGTERM reaches it.
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

static NETNS_SEQ: AtomicU32 = AtomicU32::new(0);
/// Names of the namespaces the tests make: `<prefix><pid>-<tag>-<n>`.
const NETNS_PREFIX: &str = "filesync-test-";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running `ip {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace made for one test and deleted when dropped. Its loopback is up,
/// multicast-capable and routes 224.0.0.0/4, so discovery works inside and never reaches
/// the machine's real interfaces.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named after the process id, `tag` and a counter.
    pub fn create(tag: &str) -> Result<Netns, String> {
        static SWEPT: OnceLock<()> = OnceLock::new();
        SWEPT.get_or_init(sweep_stale_namespaces);
        let n = NETNS_SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NETNS_PREFIX}{}-{tag}-{n}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        ns.exec(&["ip", "link", "set", "lo", "multicast", "on"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace and checks that it succeeds.
    pub fn exec(&self, args: &[&str]) -> Result<(), String> {
        let mut v = vec!["netns", "exec", &self.name];
        v.extend_from_slice(args);
        ip(&v)
    }

    /// Runs `f` on a thread that has entered the namespace, so that the sockets it opens
    /// live there (as those of a process started with [`exec`](Self::exec) would): a test
    /// can connect to a server that only the namespace can reach.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, String> {
        in_netns(Some(&self.name), f)
    }

    /// Routes multicast (224.0.0.0/4) through `dev` inside the namespace.
    pub fn route_multicast(&self, dev: &str) -> Result<(), String> {
        self.exec(&["ip", "route", "add", "224.0.0.0/4", "dev", dev])
    }

    /// Joins `self` and `other` with a veth pair: `10.99.<subnet>.1/24` here and
    /// `.2/24` there, both up with multicast routed over the link. Returns the
    /// addresses (here, there).
    pub fn link(&self, other: &Netns, subnet: u8) -> Result<(String, String), String> {
        // Made inside the namespaces, so the root namespace never sees the link; the
        // names are private to each namespace.
        let n = NETNS_SEQ.fetch_add(1, Ordering::Relaxed);
        let (a, b) = (format!("fsveth{n}a"), format!("fsveth{n}b"));
        self.exec(&[
            "ip",
            "link",
            "add",
            &a,
            "type",
            "veth",
            "peer",
            "name",
            &b,
            "netns",
            &other.name,
        ])?;
        let here = format!("10.99.{subnet}.1");
        let there = format!("10.99.{subnet}.2");
        for (ns, dev, addr) in [(self, &a, &here), (other, &b, &there)] {
            ns.exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ns.exec(&["ip", "link", "set", dev, "multicast", "on"])?;
            ns.exec(&["ip", "link", "set", dev, "up"])?;
            ns.route_multicast(dev)?;
        }
        Ok((here, there))
    }
}

/// Runs `f` inside the network namespace `netns` (on a thread of its own, which `setns(2)`
/// moves there; other threads are unaffected), or right here if `netns` is `None`.
pub(crate) fn in_netns<T: Send>(
    netns: Option<&str>,
    f: impl FnOnce() -> T + Send,
) -> Result<T, String> {
    let Some(name) = netns else {
        return Ok(f());
    };
    let path = Path::new("/run/netns").join(name);
    let file = fs::File::open(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    thread::scope(|s| {
        s.spawn(move || {
            use std::os::fd::AsFd;
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map_err(|e| format!("entering network namespace {name}: {e}"))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Deletes namespaces left by test processes that were killed before their `Drop` ran
/// (their names carry the pid of a process that no longer exists).
fn sweep_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also deletes the veth ends inside it.
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Runs `f` to set up namespaces; if that fails, prints a loud `SKIPPED` line and
/// returns `None`, or panics when `FILESYNC_REQUIRE_NETNS=1` (as CI sets).
pub fn netns_or_skip<T>(test: &str, f: impl FnOnce() -> Result<T, String>) -> Option<T> {
    match f() {
        Ok(t) => Some(t),
        Err(e) => {
            report_skip(
                test,
                &format!("cannot set up network namespaces (needs root and iproute2): {e}"),
                "FILESYNC_REQUIRE_NETNS",
            );
            None
        }
    }
}

/// Reports that `test` is skipped because of `why`: a loud `SKIPPED` line, or a panic
/// when the environment variable `require` is `1` (CI sets it where the test must run).
pub fn report_skip(test: &str, why: &str, require: &str) {
    if std::env::var(require).as_deref() == Ok("1") {
        panic!("{test}: {why}, and {require}=1");
    }
    // Straight to the stderr handle: the test harness captures `eprintln!` of passing
    // tests, and a skip must be seen.
    let msg = format!("\n!!!!!!!!\nSKIPPED: {test}: {why}\n!!!!!!!!\n");
    let _ = std::io::stderr().write_all(msg.as_bytes());
}

/// The absolute path of `program`: the first executable file of that name on `PATH`, else
/// in `fallbacks` (such as `~/.cargo/bin`, which a test's `PATH` may lack).
pub(crate) fn find_program(program: &str, fallbacks: &[PathBuf]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(fallbacks.iter().cloned())
        .map(|d| d.join(program))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

// ---------------------------------------------------------------------------------------
// Raw connections
// ---------------------------------------------------------------------------------------

/// A TCP connection to `addr` from the source address `from` (any 127.x address works on
/// loopback), so that a test can play several peers.
pub fn connect_from(from: &str, addr: &str) -> std::io::Result<std::net::TcpStream> {
    use socket2::{Domain, Socket, Type};
    let from: std::net::SocketAddr = format!("{from}:0").parse().expect("a source address");
    let to: std::net::SocketAddr = addr.parse().expect("an address");
    let s = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    s.bind(&from.into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(10))?;
    Ok(s.into())
}

/// Raises this process's soft limit on open descriptors to its hard limit (tests that
/// open many connections need more than the usual 1024); returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// How many descriptors process `pid` has open (`/proc/PID/fd`); `None` if it is gone.
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Reads until the server closes `s`, at most until `deadline`: the bytes read, or `None`
/// if it was still open then. A reset counts as closed.
pub fn read_until_closed(s: &mut std::net::TcpStream, deadline: Instant) -> Option<usize> {
    let mut total = 0;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left)).ok()?;
        match s.read(&mut buf) {
            Ok(0) => return Some(total),
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(_) => return Some(total),
        }
    }
}

/// A native client, spoken by hand (JSON encoding), that identifies itself as `id` and
/// then holds the session's slot in silence until dropped: the server has sent it READY
/// and waits (up to `--idle-timeout`) for its manifest.
pub fn hold_slot(addr: &str, id: &str) -> std::net::TcpStream {
    let stream = std::net::TcpStream::connect(addr).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut greeting = String::new();
    reader.read_line(&mut greeting).expect("the greeting");
    assert!(greeting.contains("\"filesync\""), "greeting: {greeting:?}");
    let hello = format!(
        r#"{{"type":"HELLO","version":3,"agent":"slot-holder","client_id":"{id}","capabilities":[],"allow_empty":false}}"#
    );
    let mut out = b"FSNC\x01\x01".to_vec();
    out.extend_from_slice(&(hello.len() as u32 + 1).to_be_bytes());
    out.push(0);
    out.extend_from_slice(hello.as_bytes());
    (&stream).write_all(&out).expect("sending HELLO");
    loop {
        let mut len = [0u8; 4];
        reader.read_exact(&mut len).expect("a frame");
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        reader.read_exact(&mut body).expect("a frame");
        let msg: serde_json::Value = serde_json::from_slice(&body[1..]).expect("JSON");
        match msg["type"].as_str() {
            Some("READY") => return stream,
            Some("WELCOME" | "QUEUED") => {}
            _ => panic!("holding a slot: unexpected {msg}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// A faulty network: a TCP relay
// ---------------------------------------------------------------------------------------

/// What a [`Relay`] does to each connection once `after` bytes have gone from the client
/// to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    None,
    /// Cut the connection: both sockets are shut down and closed, as when a cable is
    /// pulled and the peers learn it (a reset or an end of stream).
    Cut {
        /// Bytes forwarded from the client before the cut.
        after: u64,
    },
    /// Stop forwarding in both directions and stop reading, but keep both sockets open,
    /// as a peer that hangs or a path that silently drops everything: neither side hears
    /// anything, ever, until it gives up by itself.
    Stall {
        /// Bytes forwarded from the client before the stall.
        after: u64,
    },
}

#[derive(Debug, Default)]
struct RelayShared {
    stop: std::sync::atomic::AtomicBool,
    /// Bytes forwarded client → server, over all connections.
    upstream: std::sync::atomic::AtomicU64,
    /// Connections on which the fault happened.
    faulted: AtomicU32,
    /// Whether the bytes of every connection are kept, in `captures`.
    record: bool,
    /// What each connection carried, in the order they were accepted (if `record`).
    captures: Mutex<Vec<Capture>>,
}

/// The bytes one connection through a recording [`Relay`] carried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capture {
    /// Client → server, as forwarded.
    pub up: Vec<u8>,
    /// Server → client, as forwarded.
    pub down: Vec<u8>,
}

/// The receive buffer of the relay's client-facing sockets.
const RELAY_RCVBUF: usize = 64 << 10;

/// How often the relay's threads look at the stop flag.
const RELAY_POLL: Duration = Duration::from_millis(50);

/// A TCP relay on `127.0.0.1:<free port>` forwarding each connection to a target, with a
/// [`Fault`] applied to every connection. Threads only, each polling a stop flag, so that
/// dropping the relay ends them and closes every socket.
#[derive(Debug)]
pub struct Relay {
    addr: std::net::SocketAddr,
    shared: Arc<RelayShared>,
    acceptor: Option<JoinHandle<Vec<JoinHandle<()>>>>,
}

impl Relay {
    /// Starts a relay to `target` (`HOST:PORT`).
    pub fn start(target: &str, fault: Fault) -> Relay {
        Relay::start_with(target, fault, false)
    }

    /// Starts a relay to `target` that forwards everything and keeps a copy of what each
    /// connection carried in both directions, read back with [`captures`](Self::captures)
    /// (as a capture on the wire would see it).
    pub fn recording(target: &str) -> Relay {
        Relay::start_with(target, Fault::None, true)
    }

    fn start_with(target: &str, fault: Fault, record: bool) -> Relay {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the relay");
        // A small receive buffer, inherited by every accepted socket (and fixed: no
        // autotuning): what a client has in flight is bounded by its own send buffer, so
        // that a stall stops its writes too, whatever the machine's tcp_rmem.
        rustix::net::sockopt::set_socket_recv_buffer_size(&listener, RELAY_RCVBUF)
            .expect("setting the relay's receive buffer");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let addr = listener.local_addr().expect("the relay's address");
        let target: std::net::SocketAddr = target.parse().expect("a HOST:PORT target");
        let shared = Arc::new(RelayShared {
            record,
            ..RelayShared::default()
        });
        let sh = Arc::clone(&shared);
        let acceptor = thread::spawn(move || {
            let mut threads = Vec::new();
            while !sh.stop.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                for s in [&client, &server] {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_nodelay(true);
                    let _ = s.set_read_timeout(Some(RELAY_POLL));
                    // A peer that stops reading must not hold the relay's threads
                    // forever when it is dropped.
                    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
                }
                let capture = sh.record.then(|| {
                    let mut caps = sh.captures.lock().unwrap_or_else(|e| e.into_inner());
                    caps.push(Capture::default());
                    caps.len() - 1
                });
                let conn = Arc::new(Conn {
                    shared: Arc::clone(&sh),
                    fault,
                    capture,
                    stalled: std::sync::atomic::AtomicBool::new(false),
                });
                let (c2, s2) = (
                    client.try_clone().expect("cloning a socket"),
                    server.try_clone().expect("cloning a socket"),
                );
                let c = Arc::clone(&conn);
                threads.push(thread::spawn(move || c.pump_up(client, server)));
                threads.push(thread::spawn(move || conn.pump_down(s2, c2)));
            }
            threads
        });
        Relay {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// `127.0.0.1:PORT`, for the client's `--server`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Bytes forwarded from clients to the server so far.
    pub fn upstream_bytes(&self) -> u64 {
        self.shared.upstream.load(Ordering::SeqCst)
    }

    /// How many connections the fault has happened to.
    pub fn faulted(&self) -> u32 {
        self.shared.faulted.load(Ordering::SeqCst)
    }

    /// What each connection carried so far, in the order they were accepted (empty unless
    /// the relay was started with [`recording`](Self::recording)).
    pub fn captures(&self) -> Vec<Capture> {
        self.shared
            .captures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// One relayed connection.
struct Conn {
    shared: Arc<RelayShared>,
    fault: Fault,
    /// The index of this connection's [`Capture`], if the relay records.
    capture: Option<usize>,
    /// The stall has happened: nothing more is read or forwarded either way.
    stalled: std::sync::atomic::AtomicBool,
}

/// What a read with the relay's poll timeout gave.
enum Got {
    Data(usize),
    Nothing,
    End,
}

fn read_polling(from: &mut std::net::TcpStream, buf: &mut [u8]) -> Got {
    match from.read(buf) {
        Ok(0) => Got::End,
        Ok(n) => Got::Data(n),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted
            ) =>
        {
            Got::Nothing
        }
        Err(_) => Got::End,
    }
}

impl Conn {
    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// Keeps a copy of forwarded bytes, if the relay records.
    fn record(&self, up: bool, bytes: &[u8]) {
        if let Some(i) = self.capture {
            let mut caps = self
                .shared
                .captures
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let c = &mut caps[i];
            if up { &mut c.up } else { &mut c.down }.extend_from_slice(bytes);
        }
    }

    /// Holds the sockets open, reading and forwarding nothing, until the relay stops.
    fn hang(&self) {
        while !self.stopping() {
            thread::sleep(RELAY_POLL);
        }
    }

    /// Client → server, counting bytes and applying the fault.
    fn pump_up(&self, mut from: std::net::TcpStream, mut to: std::net::TcpStream) {
        let limit = match self.fault {
            Fault::None => u64::MAX,
            Fault::Cut { after } | Fault::Stall { after } => after,
        };
        let mut sent = 0u64;
        let mut buf = vec![0u8; 64 << 10];
        while !self.stopping() {
            let room = usize::try_from(limit - sent)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            if room == 0 {
                self.shared.faulted.fetch_add(1, Ordering::SeqCst);
                if let Fault::Stall { .. } = self.fault {
                    self.stalled.store(true, Ordering::SeqCst);
                    self.hang();
                    return;
                }
                // The cut: both peers hear the end now, and any further byte from either
                // is answered with a reset once the sockets are closed (dropped below and
                // in `pump_down`, which stops when its read ends).
                let _ = from.shutdown(std::net::Shutdown::Both);
                let _ = to.shutdown(std::net::Shutdown::Both);
                return;
            }
            let n = match read_polling(&mut from, &mut buf[..room]) {
                Got::Data(n) => n,
                Got::Nothing => continue,
                Got::End => break,
            };
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            self.record(true, &buf[..n]);
            sent += n as u64;
            self.shared.upstream.fetch_add(n as u64, Ordering::SeqCst);
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    }

    /// Server → client, until the stall.
    fn pump_down(&self, mut from: std::net::TcpStream, mut to: std::net::TcpStream) {
        let mut buf = vec![0u8; 64 << 10];
        while !self.stopping() {
            if self.stalled.load(Ordering::SeqCst) {
                self.hang();
                return;
            }
            let n = match read_polling(&mut from, &mut buf) {
                Got::Data(n) => n,
                Got::Nothing => continue,
                Got::End => break,
            };
            // Read just before the stall: held, the client never gets it.
            if self.stalled.load(Ordering::SeqCst) {
                continue;
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            self.record(false, &buf[..n]);
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            for t in a.join().unwrap_or_default() {
                let _ = t.join();
            }
        }
    }
}

/// A TCP port on 127.0.0.1 that is free and outside the kernel's ephemeral range
/// (`ip_local_port_range`), for a server that must be restarted on the same port: no
/// `--port 0` of another test and no outgoing connection takes it in between.
pub fn free_port() -> u16 {
    let low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = if low > 12_000 {
        (10_000, low)
    } else {
        (61_000, 65_000)
    };
    // Spread by the process id and a counter, so that parallel tests try different ports.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(to - from);
    for _ in 0..span {
        let n = std::process::id()
            .wrapping_mul(7919)
            .wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(104_729));
        let port = from + (n % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {from}..{to}");
}

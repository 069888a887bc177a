//! A real single-node etcd for end-to-end tests, on loopback ([`Etcd::start`]) or on a
//! [`LanHost`] ([`Etcd::start_in`]), with its data in a temporary directory. Killed when
//! dropped.
//!
//! ```no_run
//! # use filesync_tests::{etcd_or_skip, Etcd};
//! let Some(_) = etcd_or_skip("my_test") else {
//!     return;
//! };
//! let etcd = Etcd::start().unwrap_or_else(|e| panic!("{e}"));
//! let url = etcd.url(); // etcd://127.0.0.1:PORT
//! ```

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::garage::REQUIRE_ENV;
use crate::{find_program, free_port, in_netns, netns_command, report_skip, LanHost};

/// How long etcd may take to answer its health check.
pub const ETCD_START_TIMEOUT: Duration = Duration::from_secs(30);

/// The `etcd` binary: `ETCD_BIN` if set (none if that is not a file), else `etcd` on
/// `PATH` or in `/usr/bin`.
pub fn etcd_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ETCD_BIN") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    find_program("etcd", &["/usr/bin".into(), "/usr/local/bin".into()])
}

/// The `etcd` binary, or `None` after a loud `SKIPPED` line if there is none; panics
/// instead when `FILESYNC_REQUIRE_GARAGE=1` (as CI sets: the storage tests need both).
pub fn etcd_or_skip(test: &str) -> Option<PathBuf> {
    let bin = etcd_bin();
    if bin.is_none() {
        report_skip(
            test,
            "no `etcd` binary (apt-get install etcd-server, or set ETCD_BIN)",
            REQUIRE_ENV,
        );
    }
    bin
}

/// A running single-node etcd.
#[derive(Debug)]
pub struct Etcd {
    bin: PathBuf,
    dir: tempfile::TempDir,
    netns: Option<String>,
    ip: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    started_in: Duration,
}

impl Etcd {
    /// Starts etcd on 127.0.0.1 (free ports) and waits until it reports itself healthy.
    pub fn start() -> Result<Etcd, String> {
        Etcd::start_on(None, "127.0.0.1")
    }

    /// Starts etcd on `host`, listening on its LAN address, so that every host of the LAN
    /// reaches it. Drop it before the host.
    pub fn start_in(host: &LanHost) -> Result<Etcd, String> {
        Etcd::start_on(Some(host.name()), host.addr())
    }

    fn start_on(netns: Option<&str>, ip: &str) -> Result<Etcd, String> {
        let began = Instant::now();
        let bin = etcd_bin().ok_or("no `etcd` binary (see etcd_or_skip)")?;
        let dir = tempfile::Builder::new()
            .prefix("filesync-etcd-")
            .tempdir()
            .map_err(|e| format!("making a temporary directory: {e}"))?;
        let client_port = free_port();
        let mut peer_port = free_port();
        while peer_port == client_port {
            peer_port = free_port();
        }
        let mut etcd = Etcd {
            bin,
            dir,
            netns: netns.map(str::to_owned),
            ip: ip.to_owned(),
            client_port,
            peer_port,
            child: None,
            started_in: Duration::ZERO,
        };
        etcd.spawn()?;
        etcd.started_in = began.elapsed();
        Ok(etcd)
    }

    /// Starts the process (again, on the same data and ports) and waits for `/health`.
    fn spawn(&mut self) -> Result<(), String> {
        let log_path = self.log_path();
        let open = || {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| format!("opening {}: {e}", log_path.display()))
        };
        let mut log = open()?;
        let _ = writeln!(log, "==== filesync-tests: starting etcd ====");
        let client = format!("http://{}:{}", self.ip, self.client_port);
        let peer = format!("http://{}:{}", self.ip, self.peer_port);
        let mut cmd = netns_command(self.netns.as_deref(), &self.bin);
        cmd.arg("--name")
            .arg("filesync-test")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("filesync-test={peer}")])
            .args(["--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(open()?);
        // etcd reads ETCD_* variables as flags; only the ones above count.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + ETCD_START_TIMEOUT;
        let addr: SocketAddr = format!("{}:{}", self.ip, self.client_port)
            .parse()
            .map_err(|e| format!("etcd's address: {e}"))?;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(self.with_log(&format!("etcd exited ({status})")));
            }
            let health = in_netns(self.netns.as_deref(), || http_get(addr, "/health"))?;
            match health {
                Ok(body) if body.contains(r#""health":"true""#) => return Ok(()),
                _ if Instant::now() >= deadline => {
                    let last = match health {
                        Ok(b) => b,
                        Err(e) => e,
                    };
                    return Err(self.with_log(&format!(
                        "etcd not healthy after {ETCD_START_TIMEOUT:?}; last: {last}"
                    )));
                }
                _ => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// etcd's log so far (every run of it).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn with_log(&self, msg: &str) -> String {
        format!(
            "{msg}\n--- {}",
            crate::garage::log_excerpt(&self.log(), &self.log_path())
        )
    }

    /// `etcd://IP:PORT`, the address of the client API.
    pub fn url(&self) -> String {
        format!("etcd://{}:{}", self.ip, self.client_port)
    }

    /// `http://IP:PORT`, the client API as `etcdctl --endpoints` takes it.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.ip, self.client_port)
    }

    /// Kills etcd (SIGKILL, as a crash would) and reaps it; a no-op if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts etcd again after [`kill`](Self::kill), on the same data and ports, and waits
    /// until it is healthy.
    pub fn restart(&mut self) -> Result<(), String> {
        if self.child.is_some() {
            return Err("etcd is already running".into());
        }
        self.spawn()
    }

    /// Whether etcd runs (it has not been killed, and has not exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// How long [`start`](Self::start) took, up to the first healthy answer.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The body of `GET path` at `addr` (HTTP/1.0, so the server closes the connection).
fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .map_err(|e| format!("writing to {addr}: {e}"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    Ok(resp
        .split_once("\r\n\r\n")
        .map_or(resp.as_str(), |(_, body)| body)
        .to_owned())
}

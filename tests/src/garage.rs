//! A real Garage cluster (an S3-compatible object store) for end-to-end tests of
//! `filesync serve --store s3://…`.
//!
//! [`GarageCluster::start`] makes a temporary directory, writes one configuration per node,
//! starts `garage server` for each, connects them, gives each a role in zone `dc1`,
//! applies the layout, waits until every node sees a healthy cluster and serves S3, then
//! creates a key and a bucket the key may read, write and own. The nodes are killed when
//! the cluster is dropped. The same steps, by hand, are in `tests/garage-cluster.sh`.
//!
//! With three nodes the replication factor is 3 in `consistent` mode: reads and writes
//! need two nodes, so one node can be stopped ([`GarageCluster::stop_node`]) and
//! everything still works.
//!
//! ```no_run
//! # use filesync_tests::{garage_or_skip, GarageCluster, ServeCmd};
//! # let root = std::path::Path::new("/tmp/root");
//! let Some(_) = garage_or_skip("my_test") else {
//!     return;
//! };
//! let garage = GarageCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
//! let mut serve = ServeCmd::new(root).arg("--store").arg(garage.store_url("run1"));
//! for (k, v) in garage.env() {
//!     serve = serve.env(k, v);
//! }
//! let server = serve.start();
//! ```

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::{find_program, free_port, in_netns, netns_command, report_skip, LanHost, Proc};

/// The environment variable that turns a missing `garage` or `etcd` from a skip into a
/// failure (CI sets it to `1`).
pub const REQUIRE_ENV: &str = "FILESYNC_REQUIRE_GARAGE";
/// The S3 region of the cluster (`s3_region`), which clients must sign requests for.
pub const REGION: &str = "garage";
/// The bucket [`GarageCluster::start`] creates.
pub const BUCKET: &str = "filesync-test";
/// The name of the key [`GarageCluster::start`] creates.
const KEY_NAME: &str = "filesync-test";
/// The rclone remote that [`GarageCluster::env`] defines (`RCLONE_CONFIG_GARAGE_*`).
pub const RCLONE_REMOTE: &str = "garage";
/// How long the cluster may take to start, from the first `garage server` to the bucket.
pub const GARAGE_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node waits for another's answer before it asks a third (Garage's
/// `rpc_timeout_msec`, 300 s by default). A crashed node refuses connections, and is
/// skipped at once; an unreachable one (a cable pulled, [`LanHost::unplug`]) is only
/// skipped after this timeout, or after about a minute of failed pings, so that each
/// quorum read that picked it stalls this long.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one `garage` command may run.
const CLI_TIMEOUT: Duration = Duration::from_secs(20);
/// How many lines of a node's log an error shows.
const LOG_TAIL: usize = 30;

/// The `garage` binary: `GARAGE_BIN` if set (none if that is not a file), else `garage`
/// on `PATH`, else in `$CARGO_HOME/bin` or `~/.cargo/bin` (where `cargo install garage`
/// puts it, and which a test's `PATH` may lack).
pub fn garage_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GARAGE_BIN") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    find_program("garage", &cargo_bin_dirs())
}

/// `$CARGO_HOME/bin` and `~/.cargo/bin`.
pub(crate) fn cargo_bin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(h).join("bin"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".cargo/bin"));
    }
    dirs
}

/// The `garage` binary, or `None` after a loud `SKIPPED` line if there is none; panics
/// instead when `FILESYNC_REQUIRE_GARAGE=1` (as CI sets). A test calls it first:
/// `let Some(_) = garage_or_skip("name") else { return };`.
pub fn garage_or_skip(test: &str) -> Option<PathBuf> {
    let bin = garage_bin();
    if bin.is_none() {
        report_skip(
            test,
            "no `garage` binary (`cargo install garage --locked`, or set GARAGE_BIN)",
            REQUIRE_ENV,
        );
    }
    bin
}

/// Where one node runs: a namespace (or the test's own) and the address it binds.
#[derive(Debug, Clone)]
struct Place {
    netns: Option<String>,
    ip: String,
}

/// One `garage server`.
#[derive(Debug)]
struct Node {
    place: Place,
    config: PathBuf,
    /// stdout and stderr of every run of the node, appended.
    log: PathBuf,
    rpc_port: u16,
    s3_port: u16,
    /// The full node id (hex public key), known once the node has started once.
    id: String,
    child: Option<Child>,
}

impl Node {
    fn s3_addr(&self) -> SocketAddr {
        SocketAddr::new(self.place.ip.parse().expect("an IP address"), self.s3_port)
    }

    fn rpc_addr(&self) -> String {
        format!("{}:{}", self.place.ip, self.rpc_port)
    }
}

/// Whether `rclone` runs; if not, a loud skip (or a panic under
/// `FILESYNC_REQUIRE_GARAGE=1`).
pub fn rclone_or_skip(test: &str) -> bool {
    let ok = std::process::Command::new("rclone")
        .arg("version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        crate::report_skip(test, "no `rclone` (apt-get install rclone)", REQUIRE_ENV);
    }
    ok
}

/// A running Garage cluster with a bucket ([`bucket`](Self::bucket)) and a key that may
/// read, write and own it. Every node is killed when the cluster is dropped.
///
/// Started on loopback ([`start`](Self::start)), the cluster is reached at `127.0.0.1`
/// from the test's namespace. Started on a [`LanHost`] ([`start_in`](Self::start_in),
/// [`start_across`](Self::start_across)), it is reached at the host's address from every
/// host of that LAN (and not from the test's namespace): drop the cluster before the
/// hosts, that is, declare the hosts first.
#[derive(Debug)]
pub struct GarageCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
    key_id: String,
    secret: String,
    started_in: Duration,
}

impl GarageCluster {
    /// Starts `n_nodes` nodes on 127.0.0.1 (free ports) and waits until the cluster is
    /// healthy and has its bucket. The replication factor is `min(n_nodes, 3)`.
    pub fn start(n_nodes: usize) -> Result<GarageCluster, String> {
        GarageCluster::start_on(vec![
            Place {
                netns: None,
                ip: "127.0.0.1".into(),
            };
            n_nodes
        ])
    }

    /// Starts `n_nodes` nodes on `host`, all on its LAN address, so that every host of
    /// the LAN reaches them.
    pub fn start_in(host: &LanHost, n_nodes: usize) -> Result<GarageCluster, String> {
        GarageCluster::start_on(vec![
            Place {
                netns: Some(host.name().to_owned()),
                ip: host.addr().to_owned(),
            };
            n_nodes
        ])
    }

    /// Starts one node on each host (node `i` on `hosts[i]`), so that a test can cut a
    /// node off the network ([`LanHost::unplug`]) rather than stop it.
    pub fn start_across(hosts: &[&LanHost]) -> Result<GarageCluster, String> {
        GarageCluster::start_on(
            hosts
                .iter()
                .map(|h| Place {
                    netns: Some(h.name().to_owned()),
                    ip: h.addr().to_owned(),
                })
                .collect(),
        )
    }

    fn start_on(places: Vec<Place>) -> Result<GarageCluster, String> {
        let began = Instant::now();
        let deadline = began + GARAGE_START_TIMEOUT;
        let n = places.len();
        if n == 0 {
            return Err("a Garage cluster needs at least one node".into());
        }
        let bin = garage_bin().ok_or("no `garage` binary (see garage_or_skip)")?;
        let dir = tempfile::Builder::new()
            .prefix("filesync-garage-")
            .tempdir()
            .map_err(|e| format!("making a temporary directory: {e}"))?;
        let secret = random_hex(32)?;
        let mut ports = HashSet::new();
        let mut port = || loop {
            let p = free_port();
            if ports.insert(p) {
                return p;
            }
        };
        let mut nodes = Vec::with_capacity(n);
        for (i, place) in places.into_iter().enumerate() {
            let node_dir = dir.path().join(format!("node{i}"));
            for sub in ["meta", "data"] {
                fs::create_dir_all(node_dir.join(sub))
                    .map_err(|e| format!("making {}/{sub}: {e}", node_dir.display()))?;
            }
            let (rpc_port, s3_port) = (port(), port());
            let config = node_dir.join("garage.toml");
            let text = node_config(&node_dir, &place.ip, rpc_port, s3_port, n.min(3), &secret);
            fs::write(&config, text).map_err(|e| format!("writing {}: {e}", config.display()))?;
            nodes.push(Node {
                place,
                config,
                log: node_dir.join("garage.log"),
                rpc_port,
                s3_port,
                id: String::new(),
                child: None,
            });
        }
        let mut c = GarageCluster {
            bin,
            dir,
            nodes,
            key_id: String::new(),
            secret: String::new(),
            started_in: Duration::ZERO,
        };
        for i in 0..n {
            c.spawn(i)?;
        }
        // Each node writes its key (its id) into its metadata directory as it starts.
        for i in 0..n {
            c.wait(i, "the node's id", deadline, |c| {
                let out = c.garage(i, &["node", "id", "--quiet"])?;
                let id = out.trim().split('@').next().unwrap_or("").to_owned();
                let ok = id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
                if ok {
                    c.nodes[i].id = id;
                }
                Ok(ok)
            })?;
        }
        // `garage node connect`, from node 0 to each other node (until it listens).
        for i in 1..n {
            let peer = format!("{}@{}", c.nodes[i].id, c.nodes[i].rpc_addr());
            c.wait(i, "node 0 to connect to the node", deadline, |c| {
                c.garage(0, &["node", "connect", &peer]).map(|_| true)
            })?;
        }
        let all: Vec<usize> = (0..n).collect();
        c.wait_all("every node to be up, seen from node 0", deadline, |c| {
            let ids: Vec<String> = c.nodes.iter().map(|n| n.id.clone()).collect();
            c.nodes_up(0, &ids)
        })?;
        // One role each, in one zone, then the first layout version.
        let ids: Vec<String> = c.nodes.iter().map(|n| n.id.clone()).collect();
        let mut assign = vec!["layout", "assign", "-z", "dc1", "-c", "1G"];
        assign.extend(ids.iter().map(String::as_str));
        c.garage(0, &assign).map_err(|e| c.with_logs(&e, &all))?;
        c.garage(0, &["layout", "apply", "--version", "1"])
            .map_err(|e| c.with_logs(&e, &all))?;
        for i in 0..n {
            c.wait_ready(i, deadline)?;
        }
        let (key_id, secret) = c.create_key_and_bucket(deadline)?;
        c.key_id = key_id;
        c.secret = secret;
        c.started_in = began.elapsed();
        Ok(c)
    }

    /// `garage key create`, `garage bucket create`, `garage bucket allow --read --write
    /// --owner`; retried until `deadline`, since a cluster that just became healthy may
    /// still refuse a write for a moment.
    fn create_key_and_bucket(&mut self, deadline: Instant) -> Result<(String, String), String> {
        let mut key = None;
        self.wait(0, "`garage key create`", deadline, |c| {
            let out = c.garage(0, &["key", "create", KEY_NAME])?;
            let field = |name: &str| {
                out.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_owned())
            };
            match (field("Key ID:"), field("Secret key:")) {
                (Some(id), Some(secret)) => {
                    key = Some((id, secret));
                    Ok(true)
                }
                _ => Err(format!("no key id and secret in:\n{out}")),
            }
        })?;
        let (key_id, secret) = key.expect("set when the wait succeeded");
        self.wait(0, "`garage bucket create`", deadline, |c| {
            match c.garage(0, &["bucket", "create", BUCKET]) {
                Ok(_) => Ok(true),
                // A retry after a create that worked but timed out.
                Err(e) if e.contains("already exists") => Ok(true),
                Err(e) => Err(e),
            }
        })?;
        self.wait(0, "`garage bucket allow`", deadline, |c| {
            c.garage(
                0,
                &[
                    "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", &key_id,
                ],
            )
            .map(|_| true)
        })?;
        Ok((key_id, secret))
    }

    /// Starts `garage server` for node `i`, its output appended to its log.
    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let node = &self.nodes[i];
        let open = || {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&node.log)
                .map_err(|e| format!("opening {}: {e}", node.log.display()))
        };
        let mut log = open()?;
        let _ = writeln!(log, "==== filesync-tests: starting node {i} ====");
        let mut cmd = netns_command(node.place.netns.as_deref(), &self.bin);
        cmd.arg("-c")
            .arg(&node.config)
            .arg("server")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(open()?)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG");
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.bin.display()))?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// Runs the `garage` command line against node `i` (with its configuration, inside
    /// its namespace) and returns its standard output; an error carries its standard
    /// error. For instance `cluster.garage(0, &["bucket", "info", BUCKET])`.
    pub fn garage(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let node = &self.nodes[i];
        let mut cmd = netns_command(node.place.netns.as_deref(), &self.bin);
        cmd.arg("-c").arg(&node.config).args(args);
        let mut p = Proc::spawn(cmd, None);
        let status = p.wait_timeout(CLI_TIMEOUT);
        if status.is_some() {
            p.join_readers();
        }
        let what = format!("`garage {}` on node {i}", args.join(" "));
        match status {
            None => Err(format!("{what} did not finish in {CLI_TIMEOUT:?}")),
            Some(s) if s.success() => Ok(p.stdout()),
            Some(s) => Err(format!("{what} failed ({s}): {}", p.stderr().trim())),
        }
    }

    /// Whether node `i` (as seen by itself) is connected to every other running node,
    /// has the layout, and has a write quorum for every partition.
    fn ready(&self, i: usize) -> Result<bool, String> {
        let running = self.nodes.iter().filter(|n| n.child.is_some()).count();
        let out = self.garage(i, &["json-api", "GetClusterHealth"])?;
        let h: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| format!("GetClusterHealth: {e}: {out}"))?;
        let num = |k: &str| h[k].as_u64().unwrap_or(0);
        let ok = num("storageNodes") == self.nodes.len() as u64
            && num("storageNodesUp") == running as u64
            && num("partitions") > 0
            && num("partitionsQuorum") == num("partitions");
        if ok {
            Ok(true)
        } else {
            Err(format!("not ready yet: {}", out.trim()))
        }
    }

    /// Whether node `i` sees every node of `ids` up.
    fn nodes_up(&self, i: usize, ids: &[String]) -> Result<bool, String> {
        let out = self.garage(i, &["json-api", "GetClusterStatus"])?;
        let s: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| format!("GetClusterStatus: {e}: {out}"))?;
        let up: HashSet<&str> = s["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["isUp"].as_bool() == Some(true))
            .filter_map(|n| n["id"].as_str())
            .collect();
        let missing: Vec<&str> = ids
            .iter()
            .map(String::as_str)
            .filter(|id| !up.contains(id))
            .collect();
        if missing.is_empty() {
            Ok(true)
        } else {
            Err(format!("not up yet: {missing:?}"))
        }
    }

    /// Waits until node `i` serves S3 and is [`ready`](Self::ready).
    fn wait_ready(&mut self, i: usize, deadline: Instant) -> Result<(), String> {
        let (netns, addr) = (self.nodes[i].place.netns.clone(), self.nodes[i].s3_addr());
        self.wait(i, &format!("the S3 port {addr}"), deadline, |_| {
            Ok(port_open(netns.as_deref(), addr))
        })?;
        self.wait(i, "a healthy cluster", deadline, |c| c.ready(i))
    }

    /// Polls `f` until it gives `Ok(true)`, failing with node `i`'s log if the node exits
    /// or `deadline` passes (with `f`'s last error).
    fn wait(
        &mut self,
        i: usize,
        what: &str,
        deadline: Instant,
        f: impl FnMut(&mut GarageCluster) -> Result<bool, String>,
    ) -> Result<(), String> {
        self.wait_on(&[i], what, deadline, f)
    }

    /// [`wait`](Self::wait) for a condition on every node.
    fn wait_all(
        &mut self,
        what: &str,
        deadline: Instant,
        f: impl FnMut(&mut GarageCluster) -> Result<bool, String>,
    ) -> Result<(), String> {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.wait_on(&all, what, deadline, f)
    }

    fn wait_on(
        &mut self,
        nodes: &[usize],
        what: &str,
        deadline: Instant,
        mut f: impl FnMut(&mut GarageCluster) -> Result<bool, String>,
    ) -> Result<(), String> {
        loop {
            self.check_running()?;
            let last = match f(self) {
                Ok(true) => return Ok(()),
                Ok(false) => "not yet".to_owned(),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                let msg =
                    format!("Garage: timed out waiting for {what} (node {nodes:?}); last: {last}");
                return Err(self.with_logs(&msg, nodes));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fails with the node's log if a node that should run has exited.
    fn check_running(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            let Some(child) = self.nodes[i].child.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                self.nodes[i].child = None;
                let msg = format!("Garage node {i} exited ({status})");
                return Err(self.with_logs(&msg, &[i]));
            }
        }
        Ok(())
    }

    /// `msg` followed by the last lines of the logs of `nodes`.
    fn with_logs(&self, msg: &str, nodes: &[usize]) -> String {
        let mut s = msg.to_owned();
        for &i in nodes {
            let log = &self.nodes[i].log;
            let text = fs::read_to_string(log).unwrap_or_default();
            s.push_str(&format!("\n--- node {i}: {}", log_excerpt(&text, log)));
        }
        s
    }

    /// Stops node `i` with SIGKILL, as a crash would, and reaps it.
    pub fn stop_node(&mut self, i: usize) -> Result<(), String> {
        let mut child = self.nodes[i]
            .child
            .take()
            .ok_or_else(|| format!("Garage node {i} is not running"))?;
        let _ = child.kill();
        child
            .wait()
            .map_err(|e| format!("reaping Garage node {i}: {e}"))?;
        Ok(())
    }

    /// Starts node `i` again (same configuration, data and ports), connects it to every
    /// running node, and waits until it serves S3 and has a write quorum everywhere.
    ///
    /// The connections are made here, as at the start: a node saves its peers to disk only
    /// once a minute, so one restarted sooner would know none, and would wait for the
    /// others to retry it, which takes them up to half a minute.
    pub fn start_node(&mut self, i: usize) -> Result<(), String> {
        if self.nodes[i].child.is_some() {
            return Err(format!("Garage node {i} is already running"));
        }
        let deadline = Instant::now() + GARAGE_START_TIMEOUT;
        self.spawn(i)?;
        for j in 0..self.nodes.len() {
            if j == i || self.nodes[j].child.is_none() {
                continue;
            }
            let peer = format!("{}@{}", self.nodes[j].id, self.nodes[j].rpc_addr());
            self.wait(
                i,
                &format!("node {i} to connect to node {j}"),
                deadline,
                |c| c.garage(i, &["node", "connect", &peer]).map(|_| true),
            )?;
        }
        self.wait_ready(i, deadline)
    }

    /// Whether node `i` runs (it has not been stopped, and has not exited).
    pub fn is_running(&mut self, i: usize) -> bool {
        match self.nodes[i].child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.nodes[i].child = None;
                false
            }
            None => false,
        }
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The S3 endpoint of node 0, `http://IP:PORT`. Any node serves the whole cluster;
    /// after [`stop_node(0)`](Self::stop_node), use another one's
    /// ([`endpoints`](Self::endpoints), [`env_for_node`](Self::env_for_node)).
    pub fn endpoint(&self) -> String {
        self.endpoints().swap_remove(0)
    }

    /// The S3 endpoint of every node, by node number.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("http://{}", n.s3_addr()))
            .collect()
    }

    /// The bucket, which the key may read, write and own.
    pub fn bucket(&self) -> &str {
        BUCKET
    }

    /// The access key id (`GK…`).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The secret access key.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The S3 region, `garage`.
    pub fn region(&self) -> &str {
        REGION
    }

    /// `s3://BUCKET/prefix` (or `s3://BUCKET` for an empty prefix), for `--store`.
    pub fn store_url(&self, prefix: &str) -> String {
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            format!("s3://{BUCKET}")
        } else {
            format!("s3://{BUCKET}/{prefix}")
        }
    }

    /// `garage:BUCKET`, the bucket as an rclone path under the remote [`env`](Self::env)
    /// defines: `rclone cat garage:filesync-test/some/key`.
    pub fn rclone_remote(&self) -> String {
        format!("{RCLONE_REMOTE}:{BUCKET}")
    }

    /// The environment that points a client at node 0: the `AWS_*` variables that
    /// `object_store` (and the AWS tools) read, `AWS_ENDPOINT` and `AWS_ENDPOINT_URL`
    /// both, `AWS_ALLOW_HTTP=true`; and an rclone remote named `garage` by
    /// `RCLONE_CONFIG_GARAGE_*` (see [`rclone_remote`](Self::rclone_remote)).
    pub fn env(&self) -> Vec<(String, String)> {
        self.env_for_node(0)
    }

    /// [`env`](Self::env) pointing at node `i`.
    pub fn env_for_node(&self, i: usize) -> Vec<(String, String)> {
        let endpoint = format!("http://{}", self.nodes[i].s3_addr());
        let r = format!("RCLONE_CONFIG_{}_", RCLONE_REMOTE.to_uppercase());
        [
            ("AWS_ACCESS_KEY_ID", self.key_id.as_str()),
            ("AWS_SECRET_ACCESS_KEY", &self.secret),
            ("AWS_REGION", REGION),
            ("AWS_DEFAULT_REGION", REGION),
            ("AWS_ENDPOINT", &endpoint),
            ("AWS_ENDPOINT_URL", &endpoint),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .chain(
            [
                ("TYPE", "s3"),
                ("PROVIDER", "Other"),
                ("ACCESS_KEY_ID", self.key_id.as_str()),
                ("SECRET_ACCESS_KEY", &self.secret),
                ("REGION", REGION),
                ("ENDPOINT", &endpoint),
                ("FORCE_PATH_STYLE", "true"),
                // The bucket exists; rclone need not try to create it.
                ("NO_CHECK_BUCKET", "true"),
            ]
            .into_iter()
            .map(|(k, v)| (format!("{r}{k}"), v.to_owned())),
        )
        .collect()
    }

    /// The cluster's temporary directory: `node<i>/garage.toml`, `node<i>/garage.log`,
    /// `node<i>/meta`, `node<i>/data`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Node `i`'s log so far (every run of it).
    pub fn node_log(&self, i: usize) -> String {
        fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// How long [`start`](Self::start) took, up to the bucket being ready.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }
}

impl Drop for GarageCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// The first error lines of a log (a panic's backtrace can push the cause out of its
/// tail), then its last lines.
pub(crate) fn log_excerpt(text: &str, path: &Path) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| {
            // Garage's ERROR lines and panics; etcd's (JSON) error and fatal lines.
            [
                " ERROR ",
                "panicked",
                "\"level\":\"error\"",
                "\"level\":\"fatal\"",
            ]
            .iter()
            .any(|n| l.contains(n))
                || l.starts_with("Error:")
        })
        .take(10)
        .collect();
    let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
    format!(
        "{} ---\nerrors: {}\nlast {} lines:\n{}",
        path.display(),
        if errors.is_empty() {
            "none".to_owned()
        } else {
            format!("\n{}", errors.join("\n"))
        },
        tail.len(),
        tail.join("\n")
    )
}

/// One node's `garage.toml`.
fn node_config(
    dir: &Path,
    ip: &str,
    rpc_port: u16,
    s3_port: u16,
    replication: usize,
    secret: &str,
) -> String {
    let dir = dir.display();
    let rpc_timeout = RPC_TIMEOUT.as_millis();
    format!(
        r#"metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "sqlite"
replication_factor = {replication}
consistency_mode = "consistent"
rpc_bind_addr = "{ip}:{rpc_port}"
rpc_public_addr = "{ip}:{rpc_port}"
rpc_secret = "{secret}"
rpc_timeout_msec = {rpc_timeout}

[s3_api]
api_bind_addr = "{ip}:{s3_port}"
s3_region = "{REGION}"
root_domain = ".s3.garage.localhost"
"#
    )
}

/// `n` random bytes from the kernel, in hex.
pub(crate) fn random_hex(n: usize) -> Result<String, String> {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether something accepts TCP connections at `addr`, from inside `netns`.
pub(crate) fn port_open(netns: Option<&str>, addr: SocketAddr) -> bool {
    in_netns(netns, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
    })
    .unwrap_or(false)
}

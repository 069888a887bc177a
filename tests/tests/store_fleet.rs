//! Several servers, one archive: `filesync serve --store s3://…` on server hosts of a LAN of
//! network namespaces, in front of one real three-node Garage cluster on a storage host,
//! with a real etcd beside it for `--lease`, and real clients on a client host that find
//! the servers by discovery (multicast over the LAN's bridge) or are told where they are.
//!
//! - [`three_servers_share_the_archive_and_answer_discovery`]: clients of different ids
//!   are served by whichever server answered first, and every tree is in the store.
//! - [`a_server_killed_mid_upload_leaves_no_torn_object_and_its_client_moves_on`]: kill -9
//!   mid multipart upload; the large file's key never shows a partial object; the looping
//!   client is refused while the dead server's lease lives, then served elsewhere.
//! - [`one_session_per_id_across_servers_with_a_lease`]: the same id on two servers at
//!   once; one is refused, the other completes.
//! - [`without_a_lease_concurrent_sessions_lose_nothing`]: no `--lease`, the same id on
//!   two servers at once; nothing either stored is lost, and nothing one stored is deleted
//!   by the other's older plan.
//!
//! Without `garage`, `etcd` or `rclone` the tests print `SKIPPED` and pass, unless
//! `FILESYNC_REQUIRE_GARAGE=1` (as CI sets); without root (namespaces) they skip unless
//! `FILESYNC_REQUIRE_NETNS=1`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use filesync_tests::garage::rclone_or_skip;
use filesync_tests::{
    assert_trees_equal, etcd_or_skip, filesync_bin, garage_or_skip, make_dir, netns_or_skip,
    poll_until, pseudo_random, ts, write_big_file, write_file, Etcd, GarageCluster, Lan, LanHost,
    RunningSync, ServeCmd, Server, SyncCmd,
};

/// The prefix of the archive in the bucket.
const PREFIX: &str = "fleet";
/// How long a looping client may take to be served again after its server died: the
/// dead server's lease (10 s) plus the client's backoff, generously.
const RECOVERY: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------
// The fleet
// ---------------------------------------------------------------------------------------

/// A LAN with a storage host (Garage, etcd), server hosts each running `filesync serve
/// --store` answering discovery, and a client host. Fields drop in order: the servers,
/// etcd and Garage before the hosts they run on, the LAN last.
struct Fleet {
    servers: Vec<Server>,
    etcd: Option<Etcd>,
    g: GarageCluster,
    client: LanHost,
    srv_hosts: Vec<LanHost>,
    _storage: LanHost,
    _lan: Lan,
    group: String,
    store: String,
}

impl Fleet {
    /// Builds the LAN `10.<subnet>.0.0/24` and starts Garage (3 nodes), etcd if `lease`,
    /// and `n_servers` servers (with `--lease` if `lease`); `None` (the test is skipped)
    /// if a tool or namespaces are missing.
    fn start(test: &str, tag: &str, subnet: u8, n_servers: usize, lease: bool) -> Option<Fleet> {
        garage_or_skip(test)?;
        if lease {
            etcd_or_skip(test)?;
        }
        if !rclone_or_skip(test) {
            return None;
        }
        let (lan, storage, srv_hosts, client) = netns_or_skip(test, || {
            let lan = Lan::create(tag, subnet)?;
            let storage = lan.add_host(&format!("{tag}-storage"))?;
            let srv = (0..n_servers)
                .map(|i| lan.add_host(&format!("{tag}-srv{i}")))
                .collect::<Result<Vec<_>, _>>()?;
            let client = lan.add_host(&format!("{tag}-client"))?;
            Ok((lan, storage, srv, client))
        })?;
        let began = Instant::now();
        let g = GarageCluster::start_in(&storage, 3).unwrap_or_else(|e| panic!("{e}"));
        let etcd = lease.then(|| Etcd::start_in(&storage).unwrap_or_else(|e| panic!("{e}")));
        eprintln!("{test}: Garage and etcd up in {:?}", began.elapsed());
        let group = format!(
            "224.1.1.{}:{}",
            subnet % 200 + 10,
            20_000 + std::process::id() % 20_000
        );
        let mut f = Fleet {
            servers: Vec::new(),
            store: g.store_url(PREFIX),
            etcd,
            g,
            client,
            srv_hosts,
            _storage: storage,
            _lan: lan,
            group,
        };
        for i in 0..n_servers {
            let t = Instant::now();
            let s = f.serve(i);
            eprintln!("{test}: server {i} up in {:?}", t.elapsed());
            f.servers.push(s);
        }
        eprintln!("{test}: fleet up in {:?}", began.elapsed());
        Some(f)
    }

    /// Starts a server on server host `i`, answering discovery on the LAN.
    fn serve(&self, i: usize) -> Server {
        let host = &self.srv_hosts[i];
        let mut cmd = ServeCmd::new(Path::new("/nonexistent-root-unused"))
            .store(&self.store)
            .envs(self.g.env())
            .netns(host)
            .bind(host.addr())
            .discovery(&self.group);
        if let Some(etcd) = &self.etcd {
            cmd = cmd.arg("--lease").arg(etcd.url());
        }
        cmd.start()
    }

    /// `HOST:PORT` of server `i`, as clients on the LAN reach it.
    fn addr(&self, i: usize) -> String {
        format!("{}:{}", self.srv_hosts[i].addr(), self.servers[i].port())
    }

    /// A client of `id` for `dir` on the client host, finding its server by discovery.
    fn discovering(&self, id: &str, dir: &Path) -> SyncCmd {
        SyncCmd::new(id, dir)
            .arg("--group")
            .arg(&self.group)
            .arg("--discovery-timeout")
            .arg("5")
            .netns(&self.client)
    }

    /// A client of `id` for `dir` on the client host, told to use server `i`.
    fn direct(&self, id: &str, dir: &Path, i: usize) -> SyncCmd {
        SyncCmd::new(id, dir)
            .server(&self.addr(i))
            .netns(&self.client)
    }

    /// Runs `program ARGS` on the client host with the cluster's environment.
    fn on_client(&self, program: &Path, args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.client.name()])
            .arg(program)
            .args(args)
            .envs(self.g.env())
            // rclone refuses to work at all when AWS_CA_BUNDLE is set, even for plain
            // http; filesync reads the AWS_* variables only.
            .env_remove("AWS_CA_BUNDLE")
            .env_remove("FILESYNC_ROOT")
            .env_remove("FILESYNC_ID")
            .env_remove("FILESYNC_JSON")
            .stdin(Stdio::null());
        cmd.output()
            .unwrap_or_else(|e| panic!("running {}: {e}", program.display()))
    }

    /// `rclone ARGS` on the client host; its stdout, or the error with its stderr.
    fn rclone(&self, args: &[&str]) -> Result<String, String> {
        let mut all = args.to_vec();
        all.extend(["--retries", "1", "--low-level-retries", "2"]);
        let out = self.on_client(Path::new("rclone"), &all);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "`rclone {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// The object keys in client `id`'s folder, relative to it, as rclone lists them
    /// (none if the folder is not there).
    fn keys(&self, id: &str) -> BTreeSet<String> {
        let remote = format!("{}/{PREFIX}/client_{id}", self.g.rclone_remote());
        match self.rclone(&["lsf", "-R", "--files-only", &remote]) {
            Ok(s) => s.lines().map(str::to_owned).collect(),
            Err(e) if e.contains("directory not found") => BTreeSet::new(),
            Err(e) => panic!("{e}"),
        }
    }

    /// The body of client `id`'s object for `rel`.
    fn cat(&self, id: &str, rel: &str) -> Vec<u8> {
        let remote = format!("{}/{PREFIX}/client_{id}/{rel}", self.g.rclone_remote());
        let out = self.on_client(Path::new("rclone"), &["cat", &remote]);
        assert!(
            out.status.success(),
            "rclone cat {remote}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// The keys of the unfinished multipart uploads in the bucket.
    fn multipart_uploads(&self) -> Vec<String> {
        let out = self
            .rclone(&["backend", "list-multipart-uploads", &self.g.rclone_remote()])
            .unwrap_or_else(|e| panic!("{e}"));
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        v.as_object()
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(|l| l.as_array())
            .flatten()
            .filter_map(|u| u["Key"].as_str().map(str::to_owned))
            .collect()
    }

    /// `filesync restore --store` of client `id` into a new folder (under `into`).
    fn restore(&self, id: &str, into: &Path) -> std::path::PathBuf {
        let to = into.join(format!("restored-{id}"));
        let out = self.on_client(
            filesync_bin(),
            &[
                "restore",
                "--store",
                &self.store,
                "--id",
                id,
                "--to",
                to.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "restore {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        to
    }

    /// `filesync versions --store --json` of client `id`: (path, size) of each version.
    fn versions(&self, id: &str) -> Vec<(String, u64)> {
        let out = self.on_client(
            filesync_bin(),
            &["--json", "versions", "--store", &self.store, "--id", id],
        );
        assert!(
            out.status.success(),
            "versions {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
        });
        v.as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["path"].as_str().unwrap_or_default().to_owned(),
                    e["size"].as_u64().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Slows the client host's uplink to `rate` (a `tc` rate, `160mbit`), so that a
    /// session carrying a large file lasts seconds; false (and a note) if `tc` cannot.
    fn throttle_client(&self, rate: &str) -> bool {
        let r = self.client.exec(&[
            "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate, "burst", "64kb",
            "latency", "400ms",
        ]);
        if let Err(e) = &r {
            eprintln!("note: the client's link is not throttled ({e}); the sessions are as fast as they go");
        }
        r.is_ok()
    }
}

/// Whether `server` logged a "session started" for client `id`.
fn started(server: &Server, id: &str) -> bool {
    let field = format!("client={id} ");
    server
        .log()
        .lines()
        .any(|l| l.contains("session started") && l.contains(&field))
}

/// Bytes received on `host`'s LAN interface so far (from its `/proc/net/dev`): what
/// clients sent its server, mostly.
fn rx_bytes(host: &LanHost) -> u64 {
    // Read by a thread inside the namespace: /proc/thread-self/net is its namespace's.
    let dev = host
        .run(|| std::fs::read_to_string("/proc/thread-self/net/dev"))
        .unwrap()
        .expect("reading /proc/thread-self/net/dev");
    dev.lines()
        .find_map(|l| l.trim_start().strip_prefix(&format!("{}:", host.dev())))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {} in /proc/net/dev of {}", host.dev(), host.name()))
}

/// A small tree, different for each `seed`: files in folders, an empty folder, a link.
fn small_tree(dir: &Path, seed: u64, files: usize) {
    let t = 1_700_000_000 + seed as i64 * 1000;
    write_file(
        dir,
        "top.txt",
        format!("client {seed}").as_bytes(),
        ts(t, 1),
    );
    for i in 0..files {
        let data = pseudo_random(500 + i * 397, seed * 100 + i as u64);
        write_file(
            dir,
            &format!("docs/part {}/file-{i}.bin", i % 3),
            &data,
            ts(t + i as i64, i as u32),
        );
    }
    make_dir(dir, "empty/inner");
    std::os::unix::fs::symlink("../top.txt", dir.join("docs/link")).unwrap();
}

/// The regular files of a tree, by relative path, with their bytes.
fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    filesync_tests::snapshot(dir)
        .into_iter()
        .filter(|(_, n)| matches!(n, filesync_tests::Node::File { .. }))
        .map(|(p, _)| {
            let data = std::fs::read(dir.join(&p)).unwrap();
            (p.to_string_lossy().into_owned(), data)
        })
        .collect()
}

/// Waits for a running client, killing it (and failing) after `timeout`.
fn finish(mut c: RunningSync, timeout: Duration, what: &str) -> filesync_tests::SyncOutput {
    if !poll_until(timeout, || c.has_exited()) {
        c.kill();
        panic!(
            "{what}: did not finish within {timeout:?}\n--- stderr\n{}",
            c.stderr()
        );
    }
    c.wait()
}

// ---------------------------------------------------------------------------------------
// 1. Three servers, one archive, discovery
// ---------------------------------------------------------------------------------------

#[test]
fn three_servers_share_the_archive_and_answer_discovery() {
    let test = "three_servers_share_the_archive_and_answer_discovery";
    let Some(f) = Fleet::start(test, "f1", 81, 3, true) else {
        return;
    };
    // Six clients of different ids at once, each finding a server by discovery: the
    // first OFFER wins, so they spread over the servers.
    let ids = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"];
    let trees: Vec<tempfile::TempDir> = ids.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    for (i, t) in trees.iter().enumerate() {
        small_tree(t.path(), i as u64 + 1, 6 + i);
    }
    // One of them with a file large enough for a multipart upload.
    write_big_file(
        &trees[0].path().join("big.bin"),
        20,
        9,
        ts(1_700_000_500, 5),
    );
    // The first round stores every tree; further rounds (nothing to store) only run if
    // the first answers all came from one server, until another one answers.
    let mut answered = BTreeMap::<String, Vec<String>>::new();
    for round in 0..4 {
        let running: Vec<RunningSync> = ids
            .iter()
            .zip(&trees)
            .map(|(id, t)| f.discovering(id, t.path()).timeout(RECOVERY).spawn())
            .collect();
        for (id, r) in ids.iter().zip(running) {
            let out = finish(r, RECOVERY, id);
            out.assert_code(0);
            if round == 0 {
                let files = files_of(trees[ids.iter().position(|i| i == id).unwrap()].path());
                assert_eq!(out.count("files_stored"), files.len() as u64, "{out}");
            }
            let server = out.json()["server"].as_str().unwrap().to_owned();
            answered
                .entry(server)
                .or_default()
                .push(format!("{id}#{round}"));
        }
        if answered.len() >= 2 {
            break;
        }
    }
    eprintln!("{test}: served by {answered:?}");
    // Every address is one of the fleet's, and the server at it logged the session.
    for (addr, served) in &answered {
        let i = (0..3)
            .find(|&i| &f.addr(i) == addr)
            .unwrap_or_else(|| panic!("{addr} is none of the servers"));
        for id in served {
            let id = id.split('#').next().unwrap();
            assert!(
                started(&f.servers[i], id),
                "server {i} answered {id} but did not log its session:\n{}",
                f.servers[i].log()
            );
        }
    }
    let serving = (0..3)
        .filter(|&i| ids.iter().any(|id| started(&f.servers[i], id)))
        .count();
    assert!(
        serving >= 2,
        "one server served every client (no spread by discovery): {answered:?}"
    );
    // Each session took its id's lease and gave it back: none was lost.
    for s in &f.servers {
        let log = s.log();
        assert!(
            log.contains("etcd leases"),
            "not serving with --lease:\n{log}"
        );
        assert!(
            !log.contains("lease was lost"),
            "a session that ended logged its lease lost:\n{log}"
        );
        assert!(!log.contains("session failed"), "{log}");
    }

    // Every tree is in the store, whichever server took it: restored from the store
    // alone, exactly; and each client's objects are under its own folder.
    let out = tempfile::tempdir().unwrap();
    for (id, t) in ids.iter().zip(&trees) {
        let back = f.restore(id, out.path());
        assert_trees_equal(t.path(), &back);
        let want: BTreeSet<String> = files_of(t.path())
            .into_keys()
            .chain(["docs/link".into()])
            .collect();
        assert_eq!(f.keys(id), want, "objects of {id}");
    }
}

// ---------------------------------------------------------------------------------------
// 2. A server killed mid-upload; the looping client moves on
// ---------------------------------------------------------------------------------------

#[test]
fn a_server_killed_mid_upload_leaves_no_torn_object_and_its_client_moves_on() {
    let test = "a_server_killed_mid_upload_leaves_no_torn_object_and_its_client_moves_on";
    let Some(mut f) = Fleet::start(test, "f2", 82, 3, true) else {
        return;
    };
    f.throttle_client("160mbit");
    let src = tempfile::tempdir().unwrap();
    small_tree(src.path(), 20, 8);
    // 64 MiB: eight parts of a multipart upload, seconds on the throttled link.
    write_big_file(&src.path().join("big.bin"), 64, 21, ts(1_700_000_900, 9));
    let mut client = f
        .discovering("roamer", src.path())
        .looping()
        .timeout(Duration::from_secs(600))
        .spawn();

    // The server that answered starts the session; once it has received a quarter of the
    // large file (its upload is under way), it is killed.
    let mut serving = None;
    assert!(
        poll_until(Duration::from_secs(30), || {
            serving = (0..3).find(|&i| started(&f.servers[i], "roamer"));
            serving.is_some()
        }),
        "no server started a session for roamer; client:\n{}",
        client.stderr()
    );
    let dead = serving.unwrap();
    let dead_addr = f.addr(dead);
    let host = &f.srv_hosts[dead];
    let before = rx_bytes(host);
    assert!(
        poll_until(Duration::from_secs(60), || rx_bytes(host)
            >= before + (24 << 20)),
        "server {dead} did not receive 24 MiB within 60 s; its log:\n{}",
        f.servers[dead].log()
    );
    let got = (rx_bytes(host) - before) >> 20;
    let killed_at = Instant::now();
    f.servers[dead].kill();
    eprintln!("{test}: killed server {dead} ({dead_addr}) after it received {got} MiB");

    // No partial object under the final key: the large file is an unfinished multipart
    // upload, invisible, and its key absent.
    let keys = f.keys("roamer");
    assert!(
        !keys.contains("big.bin"),
        "a torn big.bin is visible: {keys:?}"
    );
    let uploads = f.multipart_uploads();
    assert!(
        uploads.iter().any(|k| k.ends_with("client_roamer/big.bin")),
        "the killed session's upload is not an unfinished multipart upload: {uploads:?}"
    );

    // The looping client retries, rediscovers, is refused while the dead server's lease
    // lives, then another server serves it.
    let synced = poll_until(RECOVERY, || {
        client.stdout().lines().any(|l| l.starts_with('{'))
    });
    let took = killed_at.elapsed();
    let stderr = client.stderr();
    assert!(
        synced,
        "the client was not served again within {RECOVERY:?} of the kill:\n{stderr}"
    );
    eprintln!("{test}: served again {took:?} after the kill; the client said:\n{stderr}");
    let summary: serde_json::Value = serde_json::from_str(
        client
            .stdout()
            .lines()
            .find(|l| l.starts_with('{'))
            .unwrap(),
    )
    .unwrap();
    let new_addr = summary["server"].as_str().unwrap().to_owned();
    assert_ne!(new_addr, dead_addr, "{summary}");
    let survivor = (0..3).find(|&i| f.addr(i) == new_addr).unwrap();
    assert!(started(&f.servers[survivor], "roamer"));
    // While the lease of the dead server lived, the others refused the client, naming
    // the dead server as the holder.
    assert!(
        stderr.contains("already running on") && stderr.contains(&dead_addr),
        "the client was never refused for the dead server's lease:\n{stderr}"
    );
    client.terminate();
    let out = finish(client, Duration::from_secs(20), "the looping client");
    out.assert_code(0);

    // The archive is the source, exactly; the large file whole.
    let back = tempfile::tempdir().unwrap();
    let restored = f.restore("roamer", back.path());
    assert_trees_equal(src.path(), &restored);
    assert!(f.keys("roamer").contains("big.bin"));
}

// ---------------------------------------------------------------------------------------
// 3. One session per id across servers, with a lease
// ---------------------------------------------------------------------------------------

#[test]
fn one_session_per_id_across_servers_with_a_lease() {
    let test = "one_session_per_id_across_servers_with_a_lease";
    let Some(f) = Fleet::start(test, "f3", 83, 2, true) else {
        return;
    };
    let (a, b) = (0, 1);
    let first = tempfile::tempdir().unwrap();
    small_tree(first.path(), 30, 10);
    write_big_file(&first.path().join("big.bin"), 32, 31, ts(1_700_001_000, 3));
    let second = tempfile::tempdir().unwrap();
    small_tree(second.path(), 32, 4);
    write_file(
        second.path(),
        "only-second.txt",
        b"never stored",
        ts(1_700_001_100, 0),
    );

    // A session of `twin` held on A (a hand-spoken client on the client host that says
    // HELLO and then nothing): a client of `twin` on B is refused, naming A.
    let held = f
        .client
        .run(|| filesync_tests::hold_slot(&f.addr(a), "twin"))
        .unwrap();
    assert!(f.servers[a].wait_for_log("session started", Duration::from_secs(15)));
    let out = f.direct("twin", second.path(), b).run();
    out.assert_code(4);
    assert!(
        out.stderr.contains("already running on") && out.stderr.contains(&f.addr(a)),
        "{out}"
    );
    drop(held);

    // Two real clients of `twin` at once: the first on A, frozen mid-session (its session
    // and lease stay), the second on B, refused; the first then completes.
    f.throttle_client("160mbit");
    let mut one = f.direct("twin", first.path(), a).timeout(RECOVERY).spawn();
    assert!(
        poll_until(Duration::from_secs(30), || f.servers[a]
            .log()
            .matches("session started")
            .count()
            >= 2),
        "A did not start the first client's session: {}",
        one.stderr()
    );
    one.pause();
    assert!(
        !one.has_exited() && !f.servers[a].log().contains("session done"),
        "the first client's session ended before it could be overlapped: {}",
        f.servers[a].log()
    );
    let out = f.direct("twin", second.path(), b).run();
    out.assert_code(4);
    assert!(
        out.stderr.contains("already running on") && out.stderr.contains(&f.addr(a)),
        "{out}"
    );
    one.resume();
    let out = finish(one, RECOVERY, "the first client");
    out.assert_code(0);

    // Nothing lost, nothing of the refused one stored: the archive is the first tree.
    let back = tempfile::tempdir().unwrap();
    assert_trees_equal(first.path(), &f.restore("twin", back.path()));
    assert!(!f.keys("twin").contains("only-second.txt"));
    assert!(f.versions("twin").is_empty(), "{:?}", f.versions("twin"));
}

// ---------------------------------------------------------------------------------------
// 4. Without --lease
// ---------------------------------------------------------------------------------------

#[test]
fn without_a_lease_concurrent_sessions_lose_nothing() {
    let test = "without_a_lease_concurrent_sessions_lose_nothing";
    let Some(f) = Fleet::start(test, "f4", 84, 2, false) else {
        return;
    };
    let (a, b) = (0, 1);
    for s in &f.servers {
        assert!(
            s.wait_for_log("no --lease", Duration::from_secs(10)),
            "{}",
            s.log()
        );
    }
    // The archive first holds `base`: kept files and files the first client will delete.
    let base = tempfile::tempdir().unwrap();
    let t = 1_700_002_000;
    for i in 0..4 {
        write_file(
            base.path(),
            &format!("keep/k{i}"),
            format!("keep {i}").as_bytes(),
            ts(t, i),
        );
        write_file(
            base.path(),
            &format!("doomed/d{i}"),
            format!("old {i}").as_bytes(),
            ts(t, i),
        );
    }
    f.direct("pair", base.path(), a).run().assert_code(0);

    // The first client (on A) drops doomed/ and adds files, one of them large; the
    // second (on B) rewrites doomed/ and adds others.
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    for d in [&one, &two] {
        for i in 0..4 {
            write_file(
                d.path(),
                &format!("keep/k{i}"),
                format!("keep {i}").as_bytes(),
                ts(t, i),
            );
        }
    }
    for i in 0..4 {
        write_file(
            one.path(),
            &format!("a/a{i}"),
            format!("from one {i}").as_bytes(),
            ts(t + 1, i),
        );
        write_file(
            two.path(),
            &format!("b/b{i}"),
            format!("from two {i}").as_bytes(),
            ts(t + 2, i),
        );
        write_file(
            two.path(),
            &format!("doomed/d{i}"),
            format!("new {i}").as_bytes(),
            ts(t + 3, i),
        );
    }
    write_big_file(&one.path().join("big.bin"), 32, 41, ts(t + 4, 0));
    f.throttle_client("160mbit");

    // The first session plans (its deletions of doomed/ included) and is frozen while
    // its large file goes up; the second runs whole meanwhile, on the other server.
    let mut first = f.direct("pair", one.path(), a).timeout(RECOVERY).spawn();
    assert!(poll_until(Duration::from_secs(30), || f.servers[a]
        .log()
        .matches("session started")
        .count()
        >= 2));
    let before = rx_bytes(&f.srv_hosts[a]);
    assert!(
        poll_until(Duration::from_secs(60), || rx_bytes(&f.srv_hosts[a])
            >= before + (4 << 20)),
        "A did not receive the large file: {}",
        f.servers[a].log()
    );
    first.pause();
    assert_eq!(
        f.servers[a].log().matches("session done").count(),
        1,
        "the first session ended before it could be overlapped:\n{}",
        f.servers[a].log()
    );
    let out = f.direct("pair", two.path(), b).run();
    out.assert_code(0);
    assert_eq!(out.count("files_stored"), 8, "{out}");
    first.resume();
    let out_one = finish(first, RECOVERY, "the first client");
    eprintln!("{test}: the first client: {out_one}");
    // It was not told it holds its tree: its deletions of doomed/ were not done, and it
    // says why (exit 8, as for a deletion cap).
    out_one.assert_code(8);
    assert_eq!(out_one.count("deletions_held_back"), 4, "{out_one}");
    assert!(
        out_one.stderr.contains("another session wrote them"),
        "{out_one}"
    );
    assert!(
        f.servers[a]
            .log()
            .contains("not deleted: another session wrote it after this one planned"),
        "{}",
        f.servers[a].log()
    );

    // Every file a session stored is live, or kept as a version.
    let live = f.keys("pair");
    let versions = f.versions("pair");
    let mut stored: Vec<(String, Vec<u8>)> = Vec::new();
    for (p, data) in files_of(one.path()) {
        if !p.starts_with("keep/") {
            stored.push((p, data));
        }
    }
    for (p, data) in files_of(two.path()) {
        if !p.starts_with("keep/") {
            stored.push((p, data));
        }
    }
    for (p, data) in &stored {
        let kept = live.contains(p) && f.cat("pair", p) == *data
            || versions
                .iter()
                .any(|(vp, size)| vp == p && *size == data.len() as u64);
        assert!(kept, "{p} was stored and is neither live nor a version; live {live:?}, versions {versions:?}");
    }
    // And what the second session wrote after the first planned to delete it is live:
    // the first's older plan did not delete it.
    for i in 0..4 {
        let p = format!("doomed/d{i}");
        assert!(
            live.contains(&p),
            "{p} deleted by an older plan; live {live:?}"
        );
        assert_eq!(f.cat("pair", &p), format!("new {i}").as_bytes());
    }
    for p in ["b/b0", "big.bin", "keep/k0"] {
        assert!(live.contains(p), "{p}: {live:?}");
    }
}

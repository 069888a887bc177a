//! Faults (issue "Nothing lost"): a client or a server killed with SIGKILL at random
//! moments, a connection cut or stalled mid-stream, a full disk on the server. Whatever
//! happens, every file under a final name on the server is a complete version the client
//! had (byte for byte, with its mtime), kept versions are complete too, the side that
//! survives recovers by itself within a bounded time, and a last sync converges to an
//! exact copy.
//!
//! The random tests print their seed; `FILESYNC_FAULT_SEED=N` replays its changes and
//! delays (where a kill lands depends on the machine's timing too). CI runs as root, and
//! the full-disk test, which mounts a tmpfs, must run there (`CI`, or
//! `FILESYNC_REQUIRE_MOUNT=1`); elsewhere it is skipped without root, saying so.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::hash::Hasher;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use filesync_tests::fsimage::tmpfs_or_skip;
use filesync_tests::{
    assert_trees_equal, free_port, poll_until, pseudo_random, snapshot, temp_files, ts,
    write_big_file, write_file, Fault, Node, Relay, ServeCmd, Server, SyncCmd,
};

// ---------------------------------------------------------------------------------------
// Randomness and reporting
// ---------------------------------------------------------------------------------------

/// xorshift64*: small, seeded, good enough to pick moments and file sizes.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..hi` (`lo` if the range is empty).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next() % (hi - lo)
        }
    }

    /// Uniform in `0..=max`.
    fn duration(&mut self, max: Duration) -> Duration {
        let us = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(self.range(0, us.saturating_add(1)))
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.range(0, 100) < percent
    }
}

/// The seed of a random test: `FILESYNC_FAULT_SEED`, or the clock; printed so that a
/// failure can be replayed.
fn seed(test: &str) -> u64 {
    let seed = std::env::var("FILESYNC_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    say(&format!(
        "{test}: seed {seed} (FILESYNC_FAULT_SEED={seed} replays it)"
    ));
    seed
}

/// A line on the test's stderr that the harness does not capture.
fn say(line: &str) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

// ---------------------------------------------------------------------------------------
// A client folder that remembers every version it ever had
// ---------------------------------------------------------------------------------------

/// One version of a file: its content's hash and length, and its mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    hash: u64,
    len: u64,
    mtime: (i64, u32),
}

fn hash(data: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(data);
    h.finish()
}

/// The client's folder and its history: every content and mtime each path ever had, and
/// every folder that ever existed. Files change by rename from a staging folder on the
/// same filesystem, as careful writers do, so a running client only ever sees versions
/// that are in the history.
struct Source {
    dir: PathBuf,
    staging: tempfile::TempDir,
    history: BTreeMap<PathBuf, Vec<Version>>,
    dirs: BTreeSet<PathBuf>,
    /// Numbers the versions: each gets its own content and mtime.
    written: u64,
    /// Bytes written so far.
    bytes: u64,
    rng: Rng,
}

/// Sizes of the large files: a few MiB, so that kills land mid-file.
const LARGE: (u64, u64) = (2 << 20, 6 << 20);

impl Source {
    fn new(dir: &Path, seed: u64) -> Source {
        let staging = tempfile::Builder::new()
            .prefix("staging")
            .tempdir_in(dir.parent().expect("a client folder has a parent"))
            .unwrap();
        Source {
            dir: dir.to_path_buf(),
            staging,
            history: BTreeMap::new(),
            dirs: BTreeSet::new(),
            written: 0,
            bytes: 0,
            rng: Rng::new(seed ^ 0x5EED),
        }
    }

    /// A first tree: four folders, small files in each, three large files.
    fn populate(&mut self) {
        for d in 0..4 {
            for f in 0..6 {
                let len = self.rng.range(0, 48 << 10);
                self.write(&format!("d{d}/f{f}.dat"), len);
            }
        }
        for i in 0..3 {
            let len = self.rng.range(LARGE.0, LARGE.1);
            self.write(&format!("large/l{i}.bin"), len);
        }
    }

    /// Writes a new version of `rel` (`len` bytes, content and mtime never used before):
    /// noted in the history first, then staged and renamed into place.
    fn write(&mut self, rel: &str, len: u64) {
        self.written += 1;
        self.bytes += len;
        let n = self.written;
        let data = pseudo_random(len as usize, self.rng.next() ^ n);
        let mtime = (
            1_700_000_000 + n as i64,
            (n as u32).wrapping_mul(7919) % 1_000_000_000,
        );
        let rel = PathBuf::from(rel);
        self.history.entry(rel.clone()).or_default().push(Version {
            hash: hash(&data),
            len,
            mtime,
        });
        for a in rel.ancestors().skip(1) {
            if !a.as_os_str().is_empty() {
                self.dirs.insert(a.to_path_buf());
            }
        }
        let staged = self.staging.path().join(format!("v{n}"));
        fs::write(&staged, &data).unwrap();
        filetime::set_file_mtime(&staged, ts(mtime.0, mtime.1)).unwrap();
        let dest = self.dir.join(&rel);
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::rename(&staged, &dest).unwrap();
    }

    /// The files the folder holds now.
    fn files(&self) -> Vec<PathBuf> {
        snapshot(&self.dir)
            .into_iter()
            .filter(|(_, n)| matches!(n, Node::File { .. }))
            .map(|(p, _)| p)
            .collect()
    }

    /// Changes between rounds: a large file rewritten (another size and content) or
    /// added, a few small files rewritten, added and deleted, now and then a folder
    /// deleted or added. Returns the bytes written.
    fn mutate(&mut self) -> u64 {
        let before = self.bytes;
        let files = self.files();
        let pick = |rng: &mut Rng, from: &[PathBuf]| -> Option<PathBuf> {
            (!from.is_empty()).then(|| from[rng.range(0, from.len() as u64) as usize].clone())
        };
        let large: Vec<PathBuf> = files
            .iter()
            .filter(|p| p.starts_with("large"))
            .cloned()
            .collect();
        let small: Vec<PathBuf> = files
            .iter()
            .filter(|p| !p.starts_with("large"))
            .cloned()
            .collect();
        // A large file each round, so that every round has something to cut into.
        let len = self.rng.range(LARGE.0, LARGE.1);
        match pick(&mut self.rng, &large) {
            Some(p) if large.len() >= 4 || self.rng.chance(70) => {
                self.write(p.to_str().unwrap(), len)
            }
            _ => {
                let name = format!("large/l{}.bin", self.written);
                self.write(&name, len);
            }
        }
        if large.len() >= 4 && self.rng.chance(30) {
            let p = pick(&mut self.rng, &large).unwrap();
            let _ = fs::remove_file(self.dir.join(p));
        }
        for _ in 0..self.rng.range(1, 4) {
            if let Some(p) = pick(&mut self.rng, &small) {
                let len = self.rng.range(0, 64 << 10);
                self.write(p.to_str().unwrap(), len);
            }
        }
        for _ in 0..self.rng.range(0, 3) {
            let name = format!("d{}/n{}.dat", self.rng.range(0, 5), self.written);
            let len = self.rng.range(0, 64 << 10);
            self.write(&name, len);
        }
        for _ in 0..self.rng.range(0, 3) {
            if let Some(p) = pick(&mut self.rng, &small) {
                let _ = fs::remove_file(self.dir.join(p));
            }
        }
        if self.rng.chance(10) {
            let d = format!("d{}", self.rng.range(0, 5));
            let _ = fs::remove_dir_all(self.dir.join(d));
        }
        if self.rng.chance(15) {
            let d = PathBuf::from(format!("empty{}", self.written));
            fs::create_dir_all(self.dir.join(&d)).unwrap();
            self.dirs.insert(d);
        }
        self.bytes - before
    }

    /// Asserts that every entry under `stored` (a client folder on the server, or the
    /// `tree/` of a kept-versions record) is complete: a folder the client had, or a file
    /// whose content and mtime are those of one version the client had of that path.
    /// Nothing else: no partial file, no temporary name. Returns the number of files.
    #[track_caller]
    fn assert_complete(&self, stored: &Path, what: &str) -> usize {
        if !stored.exists() {
            return 0;
        }
        let mut files = 0;
        for (p, node) in snapshot(stored) {
            match node {
                Node::Dir { .. } => assert!(
                    self.dirs.contains(&p),
                    "{what}: folder {p:?} was never a folder of the client"
                ),
                Node::File { size, mtime, .. } => {
                    let Some(versions) = self.history.get(&p) else {
                        panic!("{what}: {p:?} ({size} bytes) was never a file of the client");
                    };
                    let data = fs::read(stored.join(&p)).unwrap();
                    let got = Version {
                        hash: hash(&data),
                        len: data.len() as u64,
                        mtime,
                    };
                    assert!(
                        versions.contains(&got),
                        "{what}: {p:?} is not a version the client had: {got:?}, the client's \
                         versions: {versions:?}"
                    );
                    files += 1;
                }
                other => panic!("{what}: {p:?} is a {other:?}, which the client never had"),
            }
        }
        files
    }

    /// [`assert_complete`](Self::assert_complete) for every kept-versions record of
    /// client `id` under `root`. Returns the number of files they hold.
    #[track_caller]
    fn assert_versions_complete(&self, root: &Path, id: &str) -> usize {
        let base = root.join(".filesync/versions").join(format!("client_{id}"));
        let Ok(records) = fs::read_dir(&base) else {
            return 0;
        };
        let mut files = 0;
        for r in records {
            let r = r.unwrap().path();
            files +=
                self.assert_complete(&r.join("tree"), &format!("kept version {}", r.display()));
        }
        files
    }
}

// ---------------------------------------------------------------------------------------
// Watching the server
// ---------------------------------------------------------------------------------------

/// The peers (`peer=ADDR`) of the log lines containing `what`.
fn peers(log: &str, what: &str) -> BTreeSet<String> {
    log.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("peer=")))
        .map(str::to_owned)
        .collect()
}

/// Waits until every session the server started has ended (its files placed or
/// discarded and its log line written): after it, the server's folders stand still.
#[track_caller]
fn wait_sessions_over(server: &Server) {
    let over = poll_until(Duration::from_secs(30), || {
        let log = server.log();
        let ended: BTreeSet<String> = peers(&log, "session done")
            .union(&peers(&log, "session failed"))
            .cloned()
            .collect();
        peers(&log, "session started").is_subset(&ended)
    });
    assert!(
        over,
        "a session did not end within 30 s; log:\n{}\nthe server's threads:\n{}\nsockets:\n{}",
        server.log(),
        threads(server.pid()),
        String::from_utf8_lossy(
            &std::process::Command::new("ss")
                .args(["-tanpi"])
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default()
        )
    );
}

/// What each thread of process `pid` is doing (name, state, kernel wait channel), for a
/// report on a hang.
fn threads(pid: u32) -> String {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return "(gone)".into();
    };
    let mut out = String::new();
    for t in tasks.flatten() {
        let read = |f: &str| fs::read_to_string(t.path().join(f)).unwrap_or_default();
        let stat = read("stat");
        let state = stat.rsplit_once(") ").map_or("?", |(_, r)| &r[..1]);
        out.push_str(&format!(
            "  {} {} {state} wchan={} syscall={}\n",
            t.file_name().to_string_lossy(),
            read("comm").trim(),
            read("wchan").trim(),
            read("syscall").split_whitespace().next().unwrap_or("?")
        ));
    }
    out
}

/// The bytes of the files the client holds and `stored` does not (missing, or another
/// size or mtime): what a sync sends.
fn bytes_to_send(client: &Path, stored: &Path) -> u64 {
    let held = if stored.exists() {
        snapshot(stored)
    } else {
        BTreeMap::new()
    };
    snapshot(client)
        .into_iter()
        .filter_map(|(p, n)| match n {
            Node::File { size, .. } if held.get(&p) != Some(&n) => Some(size),
            _ => None,
        })
        .sum()
}

/// How long a sync of `dir` to `addr` takes here, under other ids: with nothing to send,
/// and per byte sent. Each is the best of two runs, as other tests load the machine.
fn calibrate(dir: &Path, addr: &str) -> (Duration, f64) {
    let (mut full, mut noop, mut bytes) = (Duration::MAX, Duration::MAX, 0);
    for id in ["calibration-1", "calibration-2"] {
        let out = SyncCmd::new(id, dir).server(addr).run();
        out.assert_code(0);
        full = full.min(out.elapsed);
        bytes = out.count("bytes_sent");
        let out = SyncCmd::new(id, dir).server(addr).run();
        out.assert_code(0);
        noop = noop.min(out.elapsed);
    }
    let per_byte = full.saturating_sub(noop).as_secs_f64() / bytes.max(1) as f64;
    (noop, per_byte)
}

// ---------------------------------------------------------------------------------------
// 1. The client killed at random moments
// ---------------------------------------------------------------------------------------

const CLIENT_KILLS: usize = 20;

/// Twenty `sync --once` runs killed with SIGKILL at a random moment of their transfer,
/// the folder changing between runs (large files rewritten with new sizes, small files
/// added, rewritten and deleted, folders deleted). After every kill the server's folder
/// holds only complete versions the client had, and so do the kept versions; a last
/// clean sync gives an exact copy.
#[test]
fn client_killed_at_random_moments_leaves_only_complete_files() {
    let seed = seed("client_killed_at_random_moments");
    let mut rng = Rng::new(seed);
    let base = tempfile::tempdir().unwrap();
    let c = base.path().join("client");
    fs::create_dir(&c).unwrap();
    let root = tempfile::tempdir().unwrap();
    let id = "killed";
    let stored = root.path().join(format!("client_{id}"));
    let mut src = Source::new(&c, seed);
    src.populate();
    // Deletions pile up while sessions are cut short: no cap, this test is not about them.
    let server = ServeCmd::new(root.path())
        .arg("--max-delete-percent")
        .arg("100")
        .start();

    let (noop, per_byte) = calibrate(&c, &server.addr());

    let (mut mid_transfer, mut mid_file) = (0, 0);
    // The window is the expected transfer time times `scale`, which follows how the
    // kills land: a calibration taken while other tests load the machine must not leave
    // every kill after the end.
    let mut scale: f64 = 1.3;
    let started = Instant::now();
    for round in 0..CLIENT_KILLS {
        if round > 0 {
            src.mutate();
        }
        let expected = noop + Duration::from_secs_f64(per_byte * bytes_to_send(&c, &stored) as f64);
        let delay = rng.duration(expected.mul_f64(scale));
        let mut sync = SyncCmd::new(id, &c).server(&server.addr()).spawn();
        std::thread::sleep(delay);
        let partial = !temp_files(root.path()).is_empty();
        let killed = sync.kill();
        let out = sync.wait();
        if killed {
            mid_transfer += 1;
            mid_file += usize::from(partial);
            scale = (scale * 1.15).min(2.0);
        } else {
            scale = (scale * 0.5).max(0.02);
            // It finished before the kill: then it must have finished well.
            out.assert_code(0);
        }
        wait_sessions_over(&server);
        let files = src.assert_complete(&stored, &format!("round {round}"));
        src.assert_versions_complete(root.path(), id);
        say(&format!(
            "client kill {round}: after {delay:?} of about {expected:?}{}, {files} files stored",
            if killed { "" } else { " (already done)" }
        ));
    }
    let out = SyncCmd::new(id, &c).server(&server.addr()).run();
    out.assert_code(0);
    assert_trees_equal(&c, &stored);
    let kept = src.assert_versions_complete(root.path(), id);
    assert!(temp_files(root.path()).is_empty());
    say(&format!(
        "client kills: {mid_transfer} of {CLIENT_KILLS} mid-transfer ({mid_file} with a file \
         half-received), {kept} kept versions, {:?}",
        started.elapsed()
    ));
    // The kills must have hit transfers, or the test proved nothing.
    assert!(
        mid_transfer >= CLIENT_KILLS / 4,
        "only {mid_transfer} of {CLIENT_KILLS} kills landed before the sync was done"
    );
}

const GREETING_KILLS: usize = 300;

/// Clients killed in the first milliseconds of their session, around the greeting, 300
/// times: every session ends (a session whose client died before it was told READY used to
/// wait for its writer thread forever, holding the server's only slot), and the next
/// client syncs.
#[test]
fn client_killed_around_its_greeting_frees_the_server() {
    let seed = seed("client_killed_around_its_greeting");
    let mut rng = Rng::new(seed);
    let base = tempfile::tempdir().unwrap();
    let c = base.path().join("client");
    write_file(&c, "f.txt", b"greeting", ts(1_700_300_000, 1));
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(root.path());
    for _ in 0..GREETING_KILLS {
        let mut sync = SyncCmd::new("greet", &c).server(&server.addr()).spawn();
        std::thread::sleep(rng.duration(Duration::from_millis(8)));
        sync.kill();
    }
    wait_sessions_over(&server);
    let log = server.log();
    say(&format!(
        "greeting kills: {} connections, {} sessions started",
        log.matches("session failed").count() + log.matches("session done").count(),
        log.matches("session started").count()
    ));
    let out = SyncCmd::new("greet", &c)
        .server(&server.addr())
        .arg("--idle-timeout")
        .arg("10s")
        .timeout(Duration::from_secs(30))
        .run();
    out.assert_code(0);
    assert_trees_equal(&c, &root.path().join("client_greet"));
}

// ---------------------------------------------------------------------------------------
// 2. The server killed at random moments
// ---------------------------------------------------------------------------------------

const SERVER_KILLS: usize = 20;
/// How long a looping client may take to sync again with a restarted server. Its first
/// retries wait 1-2 s, then 2-4 s (exponential backoff with jitter); a session follows.
const RECOVERY: Duration = Duration::from_secs(45);

/// A looping client (`sync` without `--once`, `--server` on a fixed port) and a server
/// killed with SIGKILL at random moments and restarted on the same root and port, the
/// folder changing between kills. After every kill, the server's folder and its kept
/// versions hold only complete versions the client had; the client comes back by itself
/// within [`RECOVERY`]; at the end the copy is exact.
#[test]
fn server_killed_at_random_moments_keeps_complete_files_and_client_recovers() {
    let seed = seed("server_killed_at_random_moments");
    let mut rng = Rng::new(seed);
    let base = tempfile::tempdir().unwrap();
    let c = base.path().join("client");
    fs::create_dir(&c).unwrap();
    let root = tempfile::tempdir().unwrap();
    let id = "crashy";
    let stored = root.path().join(format!("client_{id}"));
    let mut src = Source::new(&c, seed);
    src.populate();
    let port = free_port();
    // Interval 0: the client comes back within a second of each sync.
    let serve = ServeCmd::new(root.path())
        .port(port)
        .interval("0")
        .arg("--max-delete-percent")
        .arg("100");
    let mut server = serve.start();
    let addr = server.addr();

    let (noop, per_byte) = calibrate(&c, &addr);

    let mut client = SyncCmd::new(id, &c)
        .server(&addr)
        .looping()
        .timeout(Duration::from_secs(600))
        .spawn();
    assert!(
        server.wait_for_log("session done client=crashy ", RECOVERY),
        "the looping client never synced; its stderr:\n{}",
        client.stderr()
    );
    let started = Instant::now();
    let (mut slowest, mut mid_session, mut mid_file) = (Duration::ZERO, 0, 0);
    // As in the client's test: the window follows where the kills land.
    let mut scale: f64 = 1.3;
    for round in 0..SERVER_KILLS {
        // The client is between syncs (it comes back within a second): change the folder,
        // and kill the server at a random moment of the session that sends the change.
        let sessions = server.log().matches("session started").count();
        let written = src.mutate();
        assert!(
            poll_until(RECOVERY, || server.log().matches("session started").count()
                > sessions),
            "round {round}: the client did not come back; its stderr:\n{}",
            client.stderr()
        );
        let expected = noop + Duration::from_secs_f64(per_byte * written as f64);
        let delay = rng.duration(expected.mul_f64(scale));
        std::thread::sleep(delay);
        let partial = !temp_files(root.path()).is_empty();
        let status = server.kill();
        assert_eq!(status.code(), None, "the server was killed by a signal");
        let log = server.log();
        let ended: BTreeSet<String> = peers(&log, "session done")
            .union(&peers(&log, "session failed"))
            .cloned()
            .collect();
        let cut_short = !peers(&log, "session started").is_subset(&ended);
        if cut_short {
            mid_session += 1;
            mid_file += usize::from(partial);
            scale = (scale * 1.15).min(2.0);
        } else {
            scale = (scale * 0.5).max(0.02);
        }
        let files = src.assert_complete(&stored, &format!("round {round}"));
        let kept = src.assert_versions_complete(root.path(), id);
        let restarted = Instant::now();
        server = serve.start();
        assert!(
            server.wait_for_log("session done client=crashy ", RECOVERY),
            "round {round}: the client did not sync with the restarted server within \
             {RECOVERY:?}; its stderr:\n{}\nserver log:\n{}",
            client.stderr(),
            server.log()
        );
        let took = restarted.elapsed();
        slowest = slowest.max(took);
        say(&format!(
            "server kill {round}: after {delay:?} of about {expected:?}{}, {files} files stored, \
             {kept} kept versions, client back in {took:?}",
            if cut_short {
                ""
            } else {
                " (session already done)"
            }
        ));
    }
    // The last session of the restarted server began after the last change: the copy
    // is whole.
    client.terminate();
    let out = client.wait();
    assert_eq!(out.code, 0, "SIGTERM ends the loop with 0; {out}");
    assert!(server.terminate(Duration::from_secs(15)).is_some());
    assert_trees_equal(&c, &stored);
    src.assert_versions_complete(root.path(), id);
    say(&format!(
        "server kills: {mid_session} of {SERVER_KILLS} mid-session ({mid_file} with a file \
         half-received) in {:?}, slowest recovery {slowest:?}",
        started.elapsed()
    ));
    assert!(
        mid_session >= SERVER_KILLS / 4,
        "only {mid_session} of {SERVER_KILLS} kills landed in a session"
    );
}

// ---------------------------------------------------------------------------------------
// 3. A connection cut, a connection stalled
// ---------------------------------------------------------------------------------------

/// Small files around a large one, sent in this order: the cut and the stall land in the
/// large one, with complete files before it.
fn relay_tree(c: &Path) {
    for i in 0..8 {
        write_file(
            c,
            &format!("a/f{i}.txt"),
            &pseudo_random(10_000 + i * 1000, i as u64),
            ts(1_700_100_000 + i as i64, 1),
        );
    }
    write_big_file(&c.join("m-large.bin"), 32, 99, ts(1_700_100_100, 2));
    write_file(
        c,
        "z-after.txt",
        b"after the large file",
        ts(1_700_100_200, 3),
    );
}

/// Every file under `stored` is the client's file of that path, whole.
#[track_caller]
fn assert_only_complete(client: &Path, stored: &Path) {
    let src = snapshot(client);
    for (p, n) in snapshot(stored) {
        assert_eq!(src.get(&p), Some(&n), "{p:?} on the server differs");
        if matches!(n, Node::File { .. }) {
            assert_eq!(
                filesync_tests::first_difference(&client.join(&p), &stored.join(&p)),
                None,
                "{p:?}: stored bytes differ"
            );
        }
    }
}

/// The connection is cut after 8 MiB, in the middle of the large file: the client exits 4
/// at once, the server keeps the complete files (never the cut one) and serves the next
/// client, which completes the copy.
#[test]
fn connection_cut_mid_stream() {
    let base = tempfile::tempdir().unwrap();
    let c = base.path();
    let root = tempfile::tempdir().unwrap();
    let stored = root.path().join("client_cut");
    relay_tree(c);
    let server = Server::start(root.path());
    let relay = Relay::start(&server.addr(), Fault::Cut { after: 8 << 20 });

    let out = SyncCmd::new("cut", c)
        .server(&relay.addr())
        .timeout(Duration::from_secs(30))
        .run();
    assert_eq!(relay.faulted(), 1, "the relay did not cut; {out}");
    assert_eq!(out.code, 4, "a lost connection exits 4; {out}");
    assert!(
        out.elapsed < Duration::from_secs(10),
        "the client took {:?} to see the cut; {out}",
        out.elapsed
    );
    wait_sessions_over(&server);
    assert!(server.log().contains("session failed"), "{}", server.log());
    assert_only_complete(c, &stored);
    assert!(!stored.join("m-large.bin").exists());
    assert!(temp_files(root.path()).is_empty());

    let out = SyncCmd::new("cut", c).server(&server.addr()).run();
    out.assert_code(0);
    assert_trees_equal(c, &stored);
}

/// The connection stalls after 8 MiB: nothing more flows either way, and both sockets
/// stay open. The client gives up after its idle timeout (exit 4), the server drops the
/// session after its own (the client's id is free again) and serves the next client; no
/// partial file under a final name.
#[test]
fn connection_stalled_mid_stream() {
    let base = tempfile::tempdir().unwrap();
    let c = base.path();
    let root = tempfile::tempdir().unwrap();
    let stored = root.path().join("client_stall");
    relay_tree(c);
    let server = ServeCmd::new(root.path()).idle_timeout("3s").start();
    let relay = Relay::start(&server.addr(), Fault::Stall { after: 8 << 20 });

    let mut sync = SyncCmd::new("stall", c)
        .server(&relay.addr())
        .arg("--idle-timeout")
        .arg("3s")
        .timeout(Duration::from_secs(40))
        .spawn();
    assert!(
        poll_until(Duration::from_secs(30), || relay.faulted() > 0
            || sync.has_exited()),
        "the relay never stalled"
    );
    let stalled = Instant::now();
    // Both sides give up by themselves; the relay holds both sockets open all along.
    let (mut client_gave_up, mut server_gave_up) = (None, None);
    poll_until(Duration::from_secs(30), || {
        if client_gave_up.is_none() && sync.has_exited() {
            client_gave_up = Some(stalled.elapsed());
        }
        let log = server.log();
        if server_gave_up.is_none() && log.contains("session failed") {
            // Its own timeout: the relay never closed the server's socket.
            assert!(
                log.lines()
                    .any(|l| l.contains("session failed") && l.contains("timed out after 3s")),
                "the server dropped the session, but not for its idle timeout; log:\n{log}"
            );
            server_gave_up = Some(stalled.elapsed());
        }
        client_gave_up.is_some() && server_gave_up.is_some()
    });
    let out = sync.wait();
    assert_eq!(relay.faulted(), 1, "{out}");
    assert_eq!(out.code, 4, "a silent server exits 4; {out}");
    assert!(
        out.stderr.contains("timed out after 3s"),
        "the client says it timed out; {out}"
    );
    let client_gave_up = client_gave_up.expect("the client exited");
    assert!(
        client_gave_up < Duration::from_secs(10),
        "the client gave up {client_gave_up:?} after the stall (idle timeout 3 s); {out}"
    );
    let server_gave_up = server_gave_up.unwrap_or_else(|| {
        panic!(
            "the server did not drop the stalled session; log:\n{}",
            server.log()
        )
    });
    assert!(
        server_gave_up < Duration::from_secs(10),
        "the server dropped the stalled session {server_gave_up:?} after the stall (idle \
         timeout 3 s); log:\n{}",
        server.log()
    );
    wait_sessions_over(&server);
    assert_only_complete(c, &stored);
    assert!(!stored.join("m-large.bin").exists());

    // The same id syncs at once: the stalled session no longer holds it.
    let out = SyncCmd::new("stall", c).server(&server.addr()).run();
    out.assert_code(0);
    assert_trees_equal(c, &stored);
    assert!(temp_files(root.path()).is_empty());
    drop(relay);
    say(&format!(
        "stall: the client gave up after {client_gave_up:?}, the server after {server_gave_up:?}"
    ));
}

// ---------------------------------------------------------------------------------------
// 4. A full disk
// ---------------------------------------------------------------------------------------

/// The server's disk fills up while a changed large file arrives: the sync exits 6, the
/// summary counts the file as failed and says why (no space), the server still holds the
/// old version byte for byte, the other changes are stored, and once space is freed the
/// next sync completes.
#[test]
fn disk_full_keeps_the_old_version_and_exits_6() {
    let Some(disk) = tmpfs_or_skip("disk_full_keeps_the_old_version_and_exits_6", "16m") else {
        return;
    };
    let root = disk.path().join("root");
    let ballast = disk.path().join("ballast");
    let base = tempfile::tempdir().unwrap();
    let c = base.path().join("client");
    let old = base.path().join("old-a-large.bin");
    let stored = root.join("client_full");

    write_big_file(&c.join("a-large.bin"), 4, 1, ts(1_700_200_000, 1));
    write_file(&c, "b.txt", b"first b", ts(1_700_200_001, 2));
    write_file(&c, "c/d.txt", b"unchanged", ts(1_700_200_002, 3));
    fs::copy(c.join("a-large.bin"), &old).unwrap();
    filetime::set_file_mtime(&old, ts(1_700_200_000, 1)).unwrap();
    let server = Server::start(&root);
    SyncCmd::new("full", &c)
        .server(&server.addr())
        .run()
        .assert_code(0);
    assert_trees_equal(&c, &stored);

    // 4 MiB held, 8 MiB of ballast: about 4 MiB free, and the new version is 6 MiB.
    write_big_file(&ballast, 8, 2, ts(1, 0));
    write_big_file(&c.join("a-large.bin"), 6, 3, ts(1_700_200_100, 4));
    write_file(&c, "b.txt", b"second b, longer", ts(1_700_200_101, 5));
    write_file(&c, "e.txt", b"new", ts(1_700_200_102, 6));
    let out = SyncCmd::new("full", &c).server(&server.addr()).run();
    assert_eq!(
        out.code, 6,
        "a file the server cannot store makes exit 6; {out}"
    );
    assert_eq!(out.count("files_failed"), 1, "{out}");
    assert_eq!(out.count("files_stored"), 2, "{out}");
    assert!(
        out.stderr.contains("a-large.bin") && out.stderr.contains("No space left on device"),
        "the client names the file and the reason; {out}"
    );
    assert_eq!(
        filesync_tests::first_difference(&old, &stored.join("a-large.bin")),
        None,
        "the server must still hold the old version whole"
    );
    assert_eq!(
        snapshot(&stored)[Path::new("a-large.bin")],
        snapshot(base.path())[Path::new("old-a-large.bin")],
        "the old version keeps its size and mtime"
    );
    assert_eq!(fs::read(stored.join("b.txt")).unwrap(), b"second b, longer");
    assert_eq!(fs::read(stored.join("e.txt")).unwrap(), b"new");
    assert!(temp_files(&root).is_empty(), "{:?}", temp_files(&root));

    // Space freed: the next sync stores the new version and keeps the old one aside.
    fs::remove_file(&ballast).unwrap();
    let out = SyncCmd::new("full", &c).server(&server.addr()).run();
    out.assert_code(0);
    assert_eq!(out.count("files_stored"), 1, "{out}");
    assert_trees_equal(&c, &stored);
    let kept: Vec<PathBuf> = fs::read_dir(root.join(".filesync/versions/client_full"))
        .unwrap()
        .map(|r| r.unwrap().path().join("tree/a-large.bin"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(kept.len(), 1, "the old version is kept once: {kept:?}");
    assert_eq!(filesync_tests::first_difference(&old, &kept[0]), None);
    drop(server);
}

//! SIGTERM to the server in the middle of a transfer: the server exits 0 promptly, keeps
//! only complete files (never a torn one under a final name), the client reports the
//! lost connection, and a restarted server cleans its temporary files and completes
//! the sync.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use filesync_tests::{
    assert_trees_equal, dir_names, first_difference, poll_until, snapshot, temp_files, ts,
    write_big_file, write_file, Node, Server, SyncCmd,
};

const BIG_FILES: usize = 5;
const MIB_EACH: usize = 64;

/// The files under `dir` (relative paths).
fn files(dir: &Path) -> BTreeSet<std::path::PathBuf> {
    if !dir.exists() {
        return BTreeSet::new();
    }
    snapshot(dir)
        .into_iter()
        .filter(|(_, n)| matches!(n, Node::File { .. }))
        .map(|(p, _)| p)
        .collect()
}

/// Every entry of `stored` exists in `client` with the same kind, size, mtime and
/// bytes: the server may hold less than the client, never something different.
#[track_caller]
fn assert_subset(client: &Path, stored: &Path) {
    if !stored.exists() {
        return;
    }
    let c = snapshot(client);
    for (p, n) in snapshot(stored) {
        assert_eq!(
            c.get(&p),
            Some(&n),
            "{p:?} on the server differs from the client"
        );
        if matches!(n, Node::File { .. }) {
            assert_eq!(
                first_difference(&client.join(&p), &stored.join(&p)),
                None,
                "{p:?}: stored bytes differ"
            );
        }
    }
}

#[test]
fn sigterm_mid_transfer_keeps_only_complete_files() {
    let client = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let c = client.path();
    let id = "term";
    let stored = root.path().join(format!("client_{id}"));
    for i in 0..BIG_FILES {
        write_big_file(
            &c.join(format!("big/f{i}.bin")),
            MIB_EACH,
            i as u64,
            ts(1_690_000_000 + i as i64, 123_456_789),
        );
    }
    write_file(
        c,
        "small/after.txt",
        b"sent after the big ones",
        ts(1_690_001_000, 1),
    );
    write_file(c, "small/empty", b"", ts(1_690_001_001, 2));

    let mut server = Server::start(root.path());
    let sync = SyncCmd::new(id, c).server(&server.addr()).spawn();

    // Wait until the transfer is well under way: a batch of complete files has been
    // placed and a later file is being written to a temporary file.
    let mut sync = sync;
    let under_way = poll_until(Duration::from_secs(60), || {
        sync.has_exited() || !temp_files(root.path()).is_empty()
    });
    assert!(under_way, "the transfer never got under way");
    assert!(
        !sync.has_exited(),
        "the sync finished before the server could be stopped; stderr:\n{}",
        sync.stderr()
    );
    // Freeze the client so that the transfer is certainly unfinished when the server
    // stops, however fast this machine moves the data.
    sync.pause();
    let placed_before = files(&stored);

    let status = server
        .terminate(Duration::from_secs(15))
        .expect("the server did not exit within 15 s of SIGTERM");
    assert_eq!(status.code(), Some(0), "server log:\n{}", server.log());
    sync.resume();
    let out = sync.wait();
    assert_eq!(out.code, 4, "the client must report the lost server; {out}");

    // Complete files are kept, partial ones are not: every stored file equals the
    // client's, nothing placed before the signal was lost, and the unfinished files
    // are absent.
    assert_subset(c, &stored);
    let kept = files(&stored);
    assert!(
        placed_before.is_subset(&kept),
        "files placed before SIGTERM were lost: before {placed_before:?}, after {kept:?}"
    );
    assert!(
        kept.len() < files(c).len(),
        "everything was stored although the transfer was interrupted: {kept:?}"
    );
    assert_eq!(
        temp_files(root.path()),
        Vec::<String>::new(),
        "a clean shutdown discards its partial files"
    );
    // Nothing but filesync's own folder and the client's (which may not exist yet if no
    // batch was placed before the signal).
    let names = dir_names(root.path());
    assert!(
        names
            .iter()
            .all(|n| *n == ".filesync" || *n == format!("client_{id}")),
        "unexpected entries in the server root: {names:?}"
    );

    // A crash would leave temporary files behind; a restarted server removes them.
    let tmp = root.path().join(".filesync/tmp");
    fs::write(tmp.join("999999-0.part"), vec![7u8; 4096]).unwrap();
    fs::create_dir_all(tmp.join("stale-dir")).unwrap();
    fs::write(tmp.join("stale-dir/x.part"), b"x").unwrap();
    let server = Server::start(root.path());
    assert_eq!(
        temp_files(root.path()),
        Vec::<String>::new(),
        "stale temporary files kept"
    );

    let out = SyncCmd::new(id, c).server(&server.addr()).run();
    out.assert_code(0);
    assert_trees_equal(c, &stored);
    // Only what was missing is sent again.
    let missing = (files(c).len() - kept.len()) as u64;
    assert_eq!(out.count("files_stored"), missing, "{}", out.json());
    assert!(temp_files(root.path()).is_empty());
}

/// SIGTERM while one client is transferring and two wait in the queue: the queued
/// clients hear that the server is going away, every client exits 4, and the server
/// exits 0 promptly.
#[test]
fn sigterm_with_clients_queued() {
    let root = tempfile::tempdir().unwrap();
    let busy = tempfile::tempdir().unwrap();
    for i in 0..3 {
        write_big_file(
            &busy.path().join(format!("f{i}.bin")),
            MIB_EACH,
            10 + i as u64,
            ts(1_690_002_000, i),
        );
    }
    let waiting = tempfile::tempdir().unwrap();
    write_file(waiting.path(), "f.txt", b"never sent", ts(1_690_002_000, 0));
    let mut server = Server::start(root.path());

    let mut transferring = SyncCmd::new("busy", busy.path())
        .server(&server.addr())
        .spawn();
    assert!(
        poll_until(Duration::from_secs(30), || transferring.has_exited()
            || !temp_files(root.path()).is_empty()),
        "the transfer never started"
    );
    // Freeze the transferring client so that its session is certainly still running when
    // the server stops, however fast this machine moves the data.
    transferring.pause();
    let queued: Vec<_> = (0..2)
        .map(|i| {
            let r = SyncCmd::new(&format!("w{i}"), waiting.path())
                .server(&server.addr())
                .spawn();
            assert!(
                poll_until(Duration::from_secs(10), || r.stderr().contains("queued")),
                "client w{i} was not queued; stderr:\n{}",
                r.stderr()
            );
            r
        })
        .collect();
    assert!(!transferring.has_exited(), "the transfer ended too soon");

    let started = Instant::now();
    let status = server.terminate(Duration::from_secs(10));
    let status = status.unwrap_or_else(|| {
        panic!(
            "the server did not exit within 10 s of SIGTERM; log:\n{}",
            server.log()
        )
    });
    assert_eq!(status.code(), Some(0), "server log:\n{}", server.log());
    transferring.resume();
    let out = transferring.wait();
    assert_eq!(out.code, 4, "{out}");
    for r in queued {
        let out = r.wait();
        assert_eq!(out.code, 4, "{out}");
        assert!(out.stderr.contains("shutting down"), "{out}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_subset(busy.path(), &root.path().join("client_busy"));
    assert!(!root.path().join("client_w0").exists());
    assert!(!root.path().join("client_w1").exists());
    assert!(temp_files(root.path()).is_empty());
}

/// A connection that never says anything (a port scan, a hung peer) must not hold up
/// shutdown: the server ends it at once like any other session.
#[test]
fn silent_connection_does_not_delay_shutdown() {
    let root = tempfile::tempdir().unwrap();
    let mut server = Server::start(root.path());
    let silent = TcpStream::connect(server.addr()).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut greeting = String::new();
    BufReader::new(&silent).read_line(&mut greeting).unwrap();
    assert!(greeting.contains("SERVER_STATUS"), "{greeting:?}");

    let status = server.terminate(Duration::from_secs(5)).unwrap_or_else(|| {
        panic!(
            "the server did not exit within 5 s of SIGTERM; log:\n{}",
            server.log()
        )
    });
    assert_eq!(status.code(), Some(0), "server log:\n{}", server.log());
    drop(silent);
}

/// SIGINT (Ctrl-C) stops an idle server with exit 0, as SIGTERM does.
#[test]
fn sigint_stops_an_idle_server() {
    let root = tempfile::tempdir().unwrap();
    let mut server = Server::start(root.path());
    // See `signal_right_after_start_is_graceful`: a signal in the first moments after
    // the listening line kills the server outright.
    std::thread::sleep(Duration::from_millis(300));
    let status = server
        .interrupt(Duration::from_secs(10))
        .expect("the server did not exit within 10 s of SIGINT");
    assert_eq!(status.code(), Some(0), "server log:\n{}", server.log());
}

/// The listening line tells scripts (and these tests) that the server is up; a stop
/// request right after it must still be a graceful one, with exit 0.
#[test]
fn signal_right_after_start_is_graceful() {
    let root = tempfile::tempdir().unwrap();
    let mut codes = Vec::new();
    for i in 0..20 {
        let mut server = Server::start(root.path());
        let status = if i % 2 == 0 {
            server.terminate(Duration::from_secs(10))
        } else {
            server.interrupt(Duration::from_secs(10))
        };
        let status = status.expect("the server did not exit within 10 s");
        // `code()` is None when the signal killed the process.
        codes.push(status.code());
    }
    assert!(
        codes.iter().all(|c| *c == Some(0)),
        "exit codes of servers stopped right after their listening line: {codes:?}"
    );
}

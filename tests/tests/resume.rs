//! Resuming an interrupted large file: a relay cuts the connection after most of the file
//! has crossed it; the next sync sends only the rest, and only if the file is unchanged.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use filesync_tests::{assert_trees_equal, pseudo_random, ts, write_file, Server, SyncCmd};

/// A relay on 127.0.0.1 to `target` that forwards one connection and cuts it (both ways)
/// once `cut_after` bytes have gone from the client to the server. Returns its address.
fn cutting_relay(target: &str, cut_after: u64) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let target = target.to_owned();
    thread::spawn(move || {
        let (client, _) = l.accept().unwrap();
        let server = TcpStream::connect(&target).unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        // Server to client: as it comes.
        let back = thread::spawn(move || {
            let (mut from, mut to) = (s2, c2);
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Both);
        });
        let (mut from, mut to) = (client, server);
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let before = sent.fetch_add(n as u64, Ordering::Relaxed);
            let room = cut_after.saturating_sub(before) as usize;
            if to.write_all(&buf[..n.min(room)]).is_err() || n >= room {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
        let _ = back.join();
    });
    addr
}

const SIZE: usize = 48 << 20;

fn big(dir: &Path, seed: u64, secs: i64) {
    write_file(dir, "big.bin", &pseudo_random(SIZE, seed), ts(secs, 0));
}

#[test]
fn an_interrupted_file_resumes_where_it_stopped() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(root.path());
    let c = tempfile::tempdir().unwrap();
    write_file(c.path(), "small.txt", b"small", ts(1_600_000_000, 0));
    big(c.path(), 1, 1_600_000_001);

    // Cut at 90% of the file.
    let relay = cutting_relay(&server.addr(), SIZE as u64 * 9 / 10);
    let out = SyncCmd::new("r", c.path()).server(&relay).run();
    out.assert_code(4);
    assert!(
        !root.path().join("client_r/big.bin").exists(),
        "nothing partial under a final name"
    );
    // The server keeps the beginning out of the client folder; the log says so.
    assert!(
        server.wait_for_log(
            "kept the beginning of an interrupted file",
            Duration::from_secs(10)
        ),
        "{}",
        server.log()
    );

    let out = SyncCmd::new("r", c.path()).server(&server.addr()).run();
    out.assert_code(0);
    assert_eq!(out.count("files_resumed"), 1, "{out}");
    let sent = out.count("bytes_sent");
    assert!(
        sent <= SIZE as u64 * 15 / 100,
        "{sent} bytes sent to finish a file of {SIZE}: {out}"
    );
    assert_trees_equal(c.path(), &root.path().join("client_r"));
}

#[test]
fn a_changed_file_is_sent_whole_not_resumed() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(root.path());
    let c = tempfile::tempdir().unwrap();
    big(c.path(), 2, 1_600_000_002);
    let relay = cutting_relay(&server.addr(), SIZE as u64 / 2);
    SyncCmd::new("w", c.path())
        .server(&relay)
        .run()
        .assert_code(4);
    assert!(server.wait_for_log("kept the beginning", Duration::from_secs(10)));

    // Same size, new content and time: the held beginning is of no use.
    big(c.path(), 3, 1_600_000_003);
    let out = SyncCmd::new("w", c.path()).server(&server.addr()).run();
    out.assert_code(0);
    assert_eq!(out.count("files_resumed"), 0, "{out}");
    assert_eq!(out.count("bytes_sent"), SIZE as u64, "{out}");
    assert_trees_equal(c.path(), &root.path().join("client_w"));

    // Same size and time but other bytes at the start (a file rewritten in place with its
    // time put back): the prefix hash tells, and it is sent whole too. (A new file: a
    // changed file the server holds goes as a delta, which is not kept to resume.)
    let relay = cutting_relay(&server.addr(), SIZE as u64 / 2);
    let mut data = pseudo_random(SIZE, 4);
    write_file(c.path(), "new.bin", &data, ts(1_600_000_004, 0));
    SyncCmd::new("w", c.path())
        .server(&relay)
        .run()
        .assert_code(4);
    assert!(
        server.wait_for_log_count("kept the beginning", 2, Duration::from_secs(10)),
        "{}",
        server.log()
    );
    data[0] ^= 0xff;
    write_file(c.path(), "new.bin", &data, ts(1_600_000_004, 0));
    let out = SyncCmd::new("w", c.path()).server(&server.addr()).run();
    out.assert_code(0);
    assert_eq!(out.count("files_resumed"), 0, "{out}");
    assert_trees_equal(c.path(), &root.path().join("client_w"));
}

//! Connections that never say a byte (a port scan, a hung or hostile peer) must not jam
//! the queue: a connection takes a place in line only once it has identified itself, is
//! closed if it has not within `--handshake-timeout`, and the unidentified ones are
//! capped per IP address (`--max-unidentified-per-ip`, past which new ones are closed at
//! once) and in total (`--max-unidentified`, past which a new one evicts the oldest).
//!
//! Loopback accepts any 127.x source address, so each test plays many peers by binding
//! its connections to 127.0.0.2, 127.0.0.3, ... The real clients connect from 127.0.0.1.

use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use filesync_tests::{
    assert_trees_equal, connect_from, open_fds, poll_until, raise_nofile_limit, read_until_closed,
    ts, write_file, ServeCmd, Server, SyncCmd,
};

const SILENT: usize = 1000;
/// Silent connections per source address: under the per-IP cap, so that it is the total
/// cap that bounds them.
const PER_ADDRESS: usize = 25;
const HANDSHAKE: Duration = Duration::from_secs(8);
const MAX_UNIDENTIFIED: usize = 256;

fn tree(dir: &Path, tag: &str) {
    write_file(dir, "a.txt", tag.as_bytes(), ts(1_700_000_000, 0));
    write_file(dir, "sub/b.bin", &[7u8; 10_000], ts(1_700_000_001, 5));
}

/// Runs a real client from 127.0.0.1 and checks it was served, quickly.
fn served_quickly(server: &Server, id: &str) {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path(), id);
    let out = SyncCmd::new(id, dir.path())
        .server(&server.addr())
        .timeout(Duration::from_secs(30))
        .run();
    out.assert_code(0);
    // Generous, but well before any silent connection's handshake time is up: the client
    // was not queued behind them.
    assert!(
        out.elapsed < HANDSHAKE / 2,
        "the client took {:?} (handshake timeout {HANDSHAKE:?}); {out}",
        out.elapsed
    );
    let root = server_root(server);
    assert_trees_equal(dir.path(), &root.join(format!("client_{id}")));
}

/// The server's root, from its listening line (`..., root DIR, discovery ...`).
fn server_root(server: &Server) -> std::path::PathBuf {
    let line = server.listening_line();
    let at = line.find(", root ").expect("root in the listening line") + ", root ".len();
    let end = line[at..].find(", discovery").expect("discovery") + at;
    line[at..end].into()
}

#[test]
fn a_thousand_silent_connections_do_not_delay_a_real_client() {
    let limit = raise_nofile_limit();
    // The test holds the silent connections, the server at most its caps' worth.
    let silent = SILENT.min(
        usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .saturating_sub(200),
    );
    assert!(
        silent >= 2 * MAX_UNIDENTIFIED,
        "RLIMIT_NOFILE {limit} is too low for this test"
    );
    if silent < SILENT {
        eprintln!("note: RLIMIT_NOFILE {limit}: {silent} silent connections, not {SILENT}");
    }
    let root = tempfile::tempdir().unwrap();
    let server = ServeCmd::new(root.path())
        .arg("--handshake-timeout")
        .arg(format!("{}s", HANDSHAKE.as_secs()))
        .arg("--max-unidentified")
        .arg(MAX_UNIDENTIFIED.to_string())
        .arg("--max-unidentified-per-ip")
        .arg("32")
        .start();
    let addr = server.addr();
    let before = open_fds(server.pid()).unwrap();

    let opened = Instant::now();
    let mut conns: Vec<TcpStream> = (0..silent)
        .map(|i| {
            let from = format!("127.0.0.{}", 2 + i / PER_ADDRESS);
            connect_from(&from, &addr).unwrap_or_else(|e| panic!("connection {i}: {e}"))
        })
        .collect();
    eprintln!(
        "{silent} silent connections open after {:?}",
        opened.elapsed()
    );

    // The server holds at most its cap of them (the evicted ones are closed as soon as
    // their tasks run).
    let bound = before + MAX_UNIDENTIFIED + 16;
    assert!(
        poll_until(Duration::from_secs(5), || open_fds(server.pid())
            .is_some_and(|n| n <= bound)),
        "the server has {:?} descriptors open with {silent} silent peers (bound {bound})",
        open_fds(server.pid())
    );

    served_quickly(&server, "real");
    let fds = open_fds(server.pid()).unwrap();
    assert!(fds <= bound, "{fds} descriptors open (bound {bound})");

    // Every silent connection is closed by the server: at once past the cap, otherwise
    // when its handshake time is up (twice that for one greeted BUSY that was told READY
    // when a slot came free, which starts its time again).
    let deadline = opened + 2 * HANDSHAKE + Duration::from_secs(10);
    let mut greeted = 0;
    for (i, c) in conns.iter_mut().enumerate() {
        let read = read_until_closed(c, deadline).unwrap_or_else(|| {
            panic!(
                "silent connection {i} still open {:?} after it was made",
                opened.elapsed()
            )
        });
        if read > 0 {
            greeted += 1;
        }
    }
    eprintln!(
        "all closed after {:?}; {greeted} had been greeted",
        opened.elapsed()
    );
    assert!(
        greeted >= MAX_UNIDENTIFIED,
        "only {greeted} connections were greeted"
    );
    drop(conns);
    assert!(
        poll_until(Duration::from_secs(5), || open_fds(server.pid())
            .is_some_and(|n| n <= before + 8)),
        "descriptors left open: {:?} (before: {before})",
        open_fds(server.pid())
    );

    // Still serving, and the log was not flooded: closed connections are summed up.
    served_quickly(&server, "after");
    assert!(
        server.wait_for_log(
            "closed connections that did not identify themselves",
            Duration::from_secs(15)
        ),
        "no summary of the closed connections:\n{}",
        server.log()
    );
    let log = server.log();
    let warnings = log.lines().filter(|l| l.contains("WARN")).count();
    assert!(warnings < 5, "{warnings} warnings in the log:\n{log}");
}

/// Under the caps, nothing is evicted or refused: the silent connections stay open until
/// their handshake time is up, and still the client that identifies itself goes first.
#[test]
fn silent_connections_under_the_caps_hold_no_place_in_line() {
    let root = tempfile::tempdir().unwrap();
    let server = ServeCmd::new(root.path())
        .arg("--handshake-timeout")
        .arg(format!("{}s", HANDSHAKE.as_secs()))
        .start();
    let addr = server.addr();
    let opened = Instant::now();
    let mut conns: Vec<TcpStream> = (0..30)
        .map(|_| connect_from("127.0.0.2", &addr).unwrap())
        .collect();
    // The first is greeted READY, the others BUSY; none has said a word.
    let mut first = [0u8; 256];
    conns[0]
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let n = std::io::Read::read(&mut conns[0], &mut first).unwrap();
    let greeting = String::from_utf8_lossy(&first[..n]);
    assert!(greeting.contains("\"READY\""), "{greeting}");

    served_quickly(&server, "real");

    // Each silent one is closed once its handshake time is up, not before.
    let deadline = opened + 2 * HANDSHAKE + Duration::from_secs(10);
    for (i, c) in conns.iter_mut().enumerate() {
        assert!(
            read_until_closed(c, deadline).is_some(),
            "silent connection {i} still open {:?} after it was made",
            opened.elapsed()
        );
    }
    assert!(
        opened.elapsed() >= HANDSHAKE - Duration::from_millis(500),
        "closed after {:?}, before the handshake timeout",
        opened.elapsed()
    );
}

#[test]
fn past_the_per_ip_cap_new_connections_are_closed_at_once() {
    let root = tempfile::tempdir().unwrap();
    let server = ServeCmd::new(root.path())
        .arg("--handshake-timeout")
        .arg("60s")
        .arg("--max-unidentified-per-ip")
        .arg("8")
        .start();
    let addr = server.addr();

    let mut held: Vec<TcpStream> = (0..8)
        .map(|_| connect_from("127.0.0.2", &addr).unwrap())
        .collect();
    // Each of these is greeted, and stays open.
    for c in &mut held {
        let mut line = String::new();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&*c), &mut line).unwrap();
        assert!(line.contains("SERVER_STATUS"), "{line:?}");
    }
    // Past the cap: closed at once, before any greeting.
    for _ in 0..4 {
        let mut extra = connect_from("127.0.0.2", &addr).unwrap();
        let read = read_until_closed(&mut extra, Instant::now() + Duration::from_secs(5));
        assert_eq!(
            read,
            Some(0),
            "a connection past the per-IP cap was not closed at once"
        );
    }
    // Another address, and real clients, are not affected.
    let mut other = connect_from("127.0.0.3", &addr).unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut first = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut other, &mut first).unwrap(), 1);
    served_quickly(&server, "neighbour");

    // A place freed is a place again.
    drop(held.pop());
    assert!(
        poll_until(Duration::from_secs(10), || {
            let Ok(mut c) = connect_from("127.0.0.2", &addr) else {
                return false;
            };
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let ok = std::io::Read::read(&mut c, &mut first).is_ok_and(|n| n == 1);
            if ok {
                held.push(c);
            }
            ok
        }),
        "no connection from 127.0.0.2 was let in after one of its eight closed"
    );
    // The held connections are still open: nothing read, no EOF.
    let still = read_until_closed(&mut held[0], Instant::now() + Duration::from_millis(300));
    assert_eq!(still, None, "a connection under the cap was closed");
}

#[test]
fn past_the_total_cap_the_oldest_is_evicted() {
    let root = tempfile::tempdir().unwrap();
    let server = ServeCmd::new(root.path())
        .arg("--handshake-timeout")
        .arg("60s")
        .arg("--max-unidentified")
        .arg("16")
        .arg("--max-unidentified-per-ip")
        .arg("16")
        .start();
    let addr = server.addr();
    let mut conns: Vec<TcpStream> = Vec::new();
    for _ in 0..16 {
        let mut c = connect_from("127.0.0.2", &addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut c, &mut b).unwrap(), 1, "greeted");
        conns.push(c);
    }
    let newcomer = connect_from("127.0.0.3", &addr).unwrap();
    let closed = read_until_closed(&mut conns[0], Instant::now() + Duration::from_secs(5));
    assert!(
        closed.is_some(),
        "the oldest unidentified connection was not evicted for a newcomer"
    );
    let still = read_until_closed(&mut conns[1], Instant::now() + Duration::from_millis(300));
    assert_eq!(still, None, "more than the oldest was evicted");
    drop(newcomer);
    served_quickly(&server, "real");
}

//! Eight clients at once against `--max-sessions 1`: every one is served in turn, each
//! into its own folder, and no two sessions ever run at the same time.

use std::path::Path;
use std::thread;
use std::time::Duration;

use filesync_tests::{
    assert_trees_equal, dir_names, hold_slot, make_dir, poll_until, pseudo_random, temp_files, ts,
    write_file, Server, SyncCmd,
};

const CLIENTS: usize = 8;

/// A tree of its own for client `i`: some small files, a 1 MiB one (so that a session
/// lasts long enough for the others to pile up), and an empty directory.
fn build(dir: &Path, i: usize) {
    let seed = i as u64 + 100;
    write_file(
        dir,
        "id.txt",
        format!("client {i}\n").as_bytes(),
        ts(1_700_000_000 + i as i64, i as u32),
    );
    write_file(
        dir,
        "big.bin",
        &pseudo_random(1 << 20, seed),
        ts(1_700_000_100, 1),
    );
    for k in 0..=i {
        write_file(
            dir,
            &format!("files/{k}/f{k}.dat"),
            &pseudo_random(1000 * k + i, seed * 31 + k as u64),
            ts(1_700_000_200 + k as i64, 999),
        );
    }
    make_dir(dir, &format!("empty-{i}"));
}

/// One parsed "session started" or "session done" line.
#[derive(Debug)]
struct Event {
    started: bool,
    client: String,
    line: String,
}

/// The value of `field=` in a log line, without quotes.
fn field(line: &str, name: &str) -> Option<String> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    let v = line[at..].split_whitespace().next()?;
    Some(v.trim_matches('"').to_string())
}

fn events(log: &str) -> Vec<Event> {
    log.lines()
        .filter_map(|l| {
            let started = if l.contains(" session started") {
                true
            } else if l.contains(" session done") || l.contains(" session failed") {
                false
            } else {
                return None;
            };
            Some(Event {
                started,
                client: field(l, "client").unwrap_or_default(),
                line: l.to_string(),
            })
        })
        .collect()
}

/// Runs eight clients at once against one `--max-sessions 1` server and checks what
/// every client and the server's folders show. Returns the server's log.
fn eight_at_once() -> String {
    let root = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let d = tempfile::tempdir().unwrap();
            build(d.path(), i);
            d
        })
        .collect();
    let server = Server::start(root.path());
    let addr = server.addr();

    // Start all eight before waiting for any: they race for the single slot.
    let running: Vec<_> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            SyncCmd::new(&format!("q{i}"), d.path())
                .server(&addr)
                .spawn()
        })
        .collect();
    let outs: Vec<_> = thread::scope(|s| {
        let handles: Vec<_> = running
            .into_iter()
            .map(|r| s.spawn(move || r.wait()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    for (i, out) in outs.iter().enumerate() {
        out.assert_code(0);
        assert_eq!(out.json()["client_id"], format!("q{i}"));
        assert_eq!(out.count("files_failed"), 0);
    }
    for (i, d) in dirs.iter().enumerate() {
        assert_trees_equal(d.path(), &root.path().join(format!("client_q{i}")));
    }
    let mut expected: Vec<String> = (0..CLIENTS).map(|i| format!("client_q{i}")).collect();
    expected.push(".filesync".into());
    expected.sort();
    assert_eq!(dir_names(root.path()), expected);
    assert!(temp_files(root.path()).is_empty());

    assert!(
        server.wait_for_log_count("session done", CLIENTS, Duration::from_secs(10)),
        "not every session logged its end:\n{}",
        server.log()
    );
    let log = server.log();
    assert!(!log.contains("session failed"), "server log:\n{log}");
    // Every client had exactly one session.
    let ev = events(&log);
    assert_eq!(ev.len(), 2 * CLIENTS, "session lines:\n{log}");
    for i in 0..CLIENTS {
        let id = format!("q{i}");
        let (starts, ends) = ev
            .iter()
            .filter(|e| e.client == id)
            .fold(
                (0, 0),
                |(s, d), e| if e.started { (s + 1, d) } else { (s, d + 1) },
            );
        assert_eq!((starts, ends), (1, 1), "sessions of {id}:\n{log}");
    }
    log
}

#[test]
fn eight_clients_at_once_each_get_their_own_folder() {
    eight_at_once();
}

/// The server's log is how an operator sees the queue: with `--max-sessions 1` it must
/// read started, done, started, done..., each "done" for the client that started just
/// before it.
#[test]
fn session_log_lines_strictly_alternate() {
    // The window is narrow (the time it takes to format one log line). Busy threads
    // competing for the CPU make the server's task lose it there more often; a few rounds
    // then show it reliably.
    let stop = std::sync::atomic::AtomicBool::new(false);
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            });
        }
        let result = std::panic::catch_unwind(|| alternation_rounds(10));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    });
}

fn alternation_rounds(rounds: usize) {
    for _ in 0..rounds {
        let log = eight_at_once();
        let ev = events(&log);
        for pair in ev.chunks(2) {
            let [start, done] = pair else { unreachable!() };
            assert!(
                start.started && !done.started && start.client == done.client,
                "sessions overlap in the log:\n  {}\n  {}\nfull log:\n{log}",
                start.line,
                done.line
            );
        }
    }
}

/// While one connection holds the only slot, queued clients wait (none starts, none
/// gives up), and they are then served one at a time in the order they arrived.
#[test]
fn queued_clients_wait_their_turn_in_order() {
    let root = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let d = tempfile::tempdir().unwrap();
            build(d.path(), i);
            d
        })
        .collect();
    let server = Server::start(root.path());

    // A native client that says HELLO and then nothing takes the slot: the server waits
    // (up to --idle-timeout) for its manifest. (A connection that never speaks would
    // not: it holds no place in line, tests/silent_peers.rs.)
    let holder = hold_slot(&server.addr(), "holder");

    // Queue the clients one by one, so that their order of arrival is known.
    let mut running = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let r = SyncCmd::new(&format!("q{i}"), d.path())
            .server(&server.addr())
            .spawn();
        let want = format!("position={}", i + 1);
        assert!(
            poll_until(Duration::from_secs(10), || {
                let e = r.stderr();
                e.contains("queued") && e.contains(&want)
            }),
            "client q{i} was not queued at {want}; stderr:\n{}",
            r.stderr()
        );
        running.push(r);
    }
    thread::sleep(Duration::from_millis(500));
    for (i, r) in running.iter_mut().enumerate() {
        assert!(!r.has_exited(), "q{i} ended while the slot was taken");
    }
    assert_eq!(
        server.log().matches("session started").count(),
        1,
        "a session other than the holder's started while the slot was taken:\n{}",
        server.log()
    );

    drop(holder);
    for (i, r) in running.into_iter().enumerate() {
        r.wait().assert_code(0);
        assert_trees_equal(dirs[i].path(), &root.path().join(format!("client_q{i}")));
    }
    let log = server.log();
    let order: Vec<String> = events(&log)
        .into_iter()
        .filter(|e| e.started && e.client != "holder")
        .map(|e| e.client)
        .collect();
    let arrival: Vec<String> = (0..CLIENTS).map(|i| format!("q{i}")).collect();
    assert_eq!(order, arrival, "first come, first served:\n{log}");
}

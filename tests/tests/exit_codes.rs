//! The exit codes of `filesync sync --once` (filesync-cli/src/exit.rs), each provoked for
//! real, and what the server holds afterwards.

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use filesync_tests::{
    assert_trees_equal, make_dir, pseudo_random, snapshot, ts, write_file, ServeCmd, Server,
    SyncCmd,
};

fn build(dir: &Path) {
    write_file(dir, "a.txt", b"precious", ts(1_650_000_000, 1));
    write_file(
        dir,
        "sub/b.bin",
        &pseudo_random(5000, 9),
        ts(1_650_000_001, 2),
    );
    write_file(dir, "sub/deeper/empty", b"", ts(1_650_000_002, 3));
    make_dir(dir, "empty-dir");
}

/// A server holding the tree of [`build`] for `id`, and a reference copy of that tree.
fn server_holding(
    id: &str,
) -> (
    Server,
    tempfile::TempDir,
    tempfile::TempDir,
    tempfile::TempDir,
) {
    let root = tempfile::tempdir().unwrap();
    let client = tempfile::tempdir().unwrap();
    let reference = tempfile::tempdir().unwrap();
    build(client.path());
    build(reference.path());
    // These tests delete most of a small tree on purpose: the percentage cap (tested in
    // delete_caps.rs) is off.
    let server = ServeCmd::new(root.path())
        .arg("--max-delete-percent")
        .arg("100")
        .start();
    SyncCmd::new(id, client.path())
        .server(&server.addr())
        .run()
        .assert_code(0);
    assert_trees_equal(reference.path(), &root.path().join(format!("client_{id}")));
    (server, root, client, reference)
}

#[test]
fn closed_port_is_a_connection_failure() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    // A port that was free a moment ago and that nobody listens on now.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = SyncCmd::new("c", dir.path())
        .server(&format!("127.0.0.1:{port}"))
        .timeout(Duration::from_secs(20))
        .run();
    out.assert_code(4);
    assert!(out.stdout.trim().is_empty(), "no summary on failure; {out}");
}

#[test]
fn hostile_ids_are_refused_and_the_server_untouched() {
    // The server root sits one level down, so that an id escaping it would land in
    // `outer`, which is watched too.
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("srv");
    let client = tempfile::tempdir().unwrap();
    build(client.path());
    let server = Server::start(&root);
    SyncCmd::new("good", client.path())
        .server(&server.addr())
        .run()
        .assert_code(0);
    let before = snapshot(outer.path());

    let too_long = "x".repeat(65);
    for id in [
        "../x",
        "..",
        ".",
        "a/b",
        "/etc",
        "..\\x",
        "",
        "with space",
        "naïve",
        too_long.as_str(),
    ] {
        let out = SyncCmd::new(id, client.path()).server(&server.addr()).run();
        assert_eq!(out.code, 5, "id {id:?}; {out}");
    }
    assert_eq!(snapshot(outer.path()), before, "the server root changed");
    assert!(!outer.path().join("x").exists());
    assert!(!root.join("x").exists());
    // Refused before connecting: the server saw exactly one session, the good one.
    let log = server.log();
    assert_eq!(log.matches("session started").count(), 1, "{log}");
    assert!(!log.contains("session failed"), "{log}");
}

/// A hostile id with no server at all: refused locally (5), not "no server" (3) or
/// "connection failed" (4).
#[test]
fn hostile_id_is_refused_without_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    SyncCmd::new("../x", dir.path())
        .server(&format!("127.0.0.1:{port}"))
        .run()
        .assert_code(5);
}

#[test]
fn empty_folder_would_empty_the_archive() {
    let id = "e";
    let (server, root, client, reference) = server_holding(id);
    let stored = root.path().join(format!("client_{id}"));
    for e in fs::read_dir(client.path()).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            fs::remove_dir_all(p).unwrap();
        } else {
            fs::remove_file(p).unwrap();
        }
    }

    let out = SyncCmd::new(id, client.path()).server(&server.addr()).run();
    out.assert_code(7);
    assert_trees_equal(reference.path(), &stored);

    let out = SyncCmd::new(id, client.path())
        .server(&server.addr())
        .arg("--allow-empty")
        .run();
    out.assert_code(0);
    assert_trees_equal(client.path(), &stored);
    // a.txt, sub, sub/b.bin, sub/deeper, sub/deeper/empty, empty-dir
    assert_eq!(out.count("deleted"), 6, "{}", out.json());
    assert_eq!(out.count("files_stored"), 0);
}

#[test]
fn missing_folder_would_empty_the_archive() {
    let id = "m";
    let (server, root, client, reference) = server_holding(id);
    let stored = root.path().join(format!("client_{id}"));
    let missing = client.path().join("not-mounted");

    SyncCmd::new(id, &missing)
        .server(&server.addr())
        .run()
        .assert_code(7);
    assert_trees_equal(reference.path(), &stored);
    assert!(!missing.exists(), "the client must not create its folder");

    // --allow-empty: "let an empty or missing folder empty the server's copy".
    SyncCmd::new(id, &missing)
        .server(&server.addr())
        .arg("--allow-empty")
        .run()
        .assert_code(0);
    assert_eq!(snapshot(&stored).len(), 0, "{:?}", snapshot(&stored));
}

/// Refusing to empty is about archives that hold files: a first sync of an empty
/// folder, or of one holding only empty directories, is fine.
#[test]
fn empty_folder_with_nothing_stored_is_fine() {
    let root = tempfile::tempdir().unwrap();
    let client = tempfile::tempdir().unwrap();
    let server = Server::start(root.path());
    SyncCmd::new("n", client.path())
        .server(&server.addr())
        .run()
        .assert_code(0);
    assert_trees_equal(client.path(), &root.path().join("client_n"));

    make_dir(client.path(), "only/empty/dirs");
    SyncCmd::new("n", client.path())
        .server(&server.addr())
        .run()
        .assert_code(0);
    assert_trees_equal(client.path(), &root.path().join("client_n"));
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for extra in [
        &["--no-such-flag"][..],
        &["--encoding", "xml"],
        &["--discovery-timeout", "soon"],
    ] {
        let mut cmd = SyncCmd::new("u", dir.path()).server("127.0.0.1:1");
        for a in extra {
            cmd = cmd.arg(a);
        }
        let out = cmd.run();
        assert_eq!(out.code, 2, "{extra:?}; {out}");
    }
}

/// The built binary, with no stdin and without `FILESYNC_JSON` from the environment
/// (these tests read its text).
fn filesync() -> std::process::Command {
    let mut cmd = std::process::Command::new(filesync_tests::filesync_bin());
    cmd.env_remove("FILESYNC_JSON")
        .stdin(std::process::Stdio::null());
    cmd
}

/// The writing end of a pipe whose reader is gone (`| head` after it has read a line).
fn closed_pipe() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    writer
}

/// Output into a pipe whose reader has gone (`filesync versions … | head -1`) ends the
/// process quietly with 141, as a shell reports a process killed by SIGPIPE, instead of
/// a panic and its backtrace (101).
#[test]
fn a_closed_output_pipe_ends_quietly() {
    let out = filesync()
        .arg("gen-secret")
        .stdout(closed_pipe())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A log whose reader has gone (`filesync serve 2>&1 | head`) stops neither the server
/// nor a client: the log lines are lost, the work goes on. (The log used to panic on the
/// closed stderr, and the process aborted with 134.)
#[test]
fn a_closed_log_pipe_stops_nothing() {
    use std::io::{BufRead, BufReader};
    let root = tempfile::tempdir().unwrap();
    let mut server = filesync()
        .args(["serve", "--port", "0", "--no-discovery", "--root"])
        .arg(root.path())
        .stdout(std::process::Stdio::piped())
        .stderr(closed_pipe())
        .spawn()
        .unwrap();
    let mut line = String::new();
    // Kept open to the end: the server prints more on stdout, and a closed stdout ends it
    // (141), as it should.
    let mut stdout = BufReader::new(server.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    let port = line
        .split_once("listening on ")
        .and_then(|(_, rest)| rest.split(',').next())
        .and_then(|a| a.rsplit(':').next())
        .unwrap_or_else(|| panic!("no listening line: {line:?}"));
    let addr = format!("127.0.0.1:{port}");
    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "a.txt", b"a", ts(1_700_000_000, 0));
    for round in 0..2 {
        // The client logs into a closed pipe too (-v: a line for everything it does).
        let out = filesync()
            .args([
                "sync", "--once", "-v", "--id", "logs", "--server", &addr, "--dir",
            ])
            .arg(src.path())
            .stderr(closed_pipe())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "round {round}: {out:?}");
        assert!(
            server.try_wait().unwrap().is_none(),
            "the server died: {:?}",
            server.try_wait()
        );
    }
    assert_eq!(
        fs::read(root.path().join("client_logs/a.txt")).unwrap(),
        b"a"
    );
    let _ = server.kill();
    let _ = server.wait();
    drop(stdout);
}

/// Output that could not be written is not success: `gen-secret > /dev/full` exits 1
/// (a script would carry on with an empty secret), as does a sync whose summary is lost.
#[test]
fn an_output_that_cannot_be_written_is_a_failure() {
    let full = || {
        fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let out = filesync()
        .arg("gen-secret")
        .stdout(full())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("writing to stdout"), "{stderr}");
}

/// A server whose stdout and stderr readers are gone (`filesync serve 2>&1 | head -1`)
/// keeps serving: its start-up lines and its log are lost, its clients are not.
#[test]
fn a_server_with_closed_output_keeps_serving() {
    let root = tempfile::tempdir().unwrap();
    // Its port is chosen here, since the server cannot say it with its stdout closed.
    let port = filesync_tests::free_port();
    let mut server = filesync()
        .args(["serve", "--no-discovery", "--bind", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .arg("--root")
        .arg(root.path())
        .stdout(closed_pipe())
        .stderr(closed_pipe())
        .spawn()
        .unwrap();
    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "a.txt", b"a", ts(1_700_000_000, 0));
    let addr = format!("127.0.0.1:{port}");
    let synced = filesync_tests::poll_until(Duration::from_secs(20), || {
        SyncCmd::new("closed", src.path()).server(&addr).run().code == 0
    });
    let alive = server.try_wait().unwrap().is_none();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        alive && synced,
        "the server died or never served: alive {alive}"
    );
    assert_eq!(
        fs::read(root.path().join("client_closed/a.txt")).unwrap(),
        b"a"
    );
}

/// A `--store` URL whose bucket is no bucket name is a usage error (2), for every
/// command, before any request (a space used to crash the request builder, and `b?x`
/// went to bucket `b`).
#[test]
fn a_bad_bucket_name_is_a_usage_error() {
    for url in [
        "s3://bucket name/lab",
        "s3://b?x/lab",
        "s3://Bad_Bucket!/lab",
    ] {
        for args in [
            &["serve", "--port", "0", "--no-discovery", "--store", url][..],
            &["versions", "--id", "x", "--store", url],
            &[
                "restore",
                "--id",
                "x",
                "--to",
                "/nonexistent/r",
                "--store",
                url,
            ],
        ] {
            let out = filesync().args(args).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
            assert!(stderr.contains("not a bucket name"), "{args:?}: {stderr}");
        }
    }
}

/// A store that cannot be reached is said in one line, with the innermost cause, not
/// after a line per retry of the request (object_store logs those at INFO).
#[test]
fn an_unreachable_store_is_one_line() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{closed}");
    let out = filesync()
        .args([
            "serve",
            "--port",
            "0",
            "--no-discovery",
            "--store",
            "s3://bucket/x",
        ])
        .env_remove("RUST_LOG")
        .env("AWS_ENDPOINT", &endpoint)
        .env("AWS_ENDPOINT_URL", &endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "GK0")
        .env("AWS_SECRET_ACCESS_KEY", "s")
        .env("AWS_REGION", "garage")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("Error: opening the store"), "{stderr}");
    assert!(lines[0].contains("Connection refused"), "{stderr}");
}

#[test]
fn folder_that_is_a_file_is_a_local_error() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(root.path());
    let f = tempfile::NamedTempFile::new().unwrap();
    let out = SyncCmd::new("f", f.path()).server(&server.addr()).run();
    out.assert_code(1);
    assert!(!root.path().join("client_f").exists());
}

/// A deletion the server cannot apply (here an immutable folder, which even root cannot
/// move into the kept versions or remove) is not a success: the sync exits 6 and counts
/// it, and the next sync, once the folder can go, completes the mirror.
#[test]
fn a_deletion_the_server_cannot_apply_is_partial() {
    let (server, root, client, _reference) = server_holding("tail");
    let stored = root.path().join("client_tail");
    let locked = stored.join("sub");
    let chattr = |flag: &str| {
        std::process::Command::new("chattr")
            .arg(flag)
            .arg(&locked)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !chattr("+i") {
        eprintln!("skipped: chattr +i is not available here");
        return;
    }
    fs::remove_dir_all(client.path().join("sub")).unwrap();
    let out = SyncCmd::new("tail", client.path())
        .server(&server.addr())
        .run();
    assert!(
        chattr("-i"),
        "cannot undo chattr +i on {}",
        locked.display()
    );
    out.assert_code(6);
    assert_eq!(out.count("tail_failures"), 1, "{out}");
    assert_eq!(out.count("files_failed"), 0, "{out}");
    assert!(
        locked.join("b.bin").exists(),
        "the locked folder is still held"
    );

    let out = SyncCmd::new("tail", client.path())
        .server(&server.addr())
        .run();
    out.assert_code(0);
    assert_trees_equal(client.path(), &stored);
}

//! Deletion caps: a session that would delete too much deletes only what the caps allow,
//! completes everything else, tells the client why, and `sync --once` exits 8.

use std::path::Path;

use filesync_tests::{make_dir, snapshot, ts, write_file, ServeCmd, Server, SyncCmd};

/// Ten files in the client folder, synced to `server` as `id`.
fn ten_files(server: &Server, id: &str, dir: &Path) {
    for i in 0..10 {
        write_file(dir, &format!("f{i}"), b"data", ts(1_600_000_000 + i, 0));
    }
    SyncCmd::new(id, dir)
        .server(&server.addr())
        .run()
        .assert_code(0);
}

fn held(root: &Path, id: &str) -> usize {
    snapshot(&root.join(format!("client_{id}"))).len()
}

#[test]
fn more_than_half_deleted_deletes_nothing_by_default() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(root.path());
    let c = tempfile::tempdir().unwrap();
    ten_files(&server, "pct", c.path());

    // Six of ten gone (a wrong folder, ransomware renaming files...), one new file.
    for i in 0..6 {
        std::fs::remove_file(c.path().join(format!("f{i}"))).unwrap();
    }
    write_file(c.path(), "new", b"new", ts(1_600_001_000, 0));
    let out = SyncCmd::new("pct", c.path()).server(&server.addr()).run();
    out.assert_code(8);
    assert_eq!(out.count("deletions_held_back"), 6, "{out}");
    assert_eq!(out.count("deleted"), 0, "{out}");
    assert_eq!(
        out.count("files_stored"),
        1,
        "the rest of the session completes"
    );
    assert_eq!(held(root.path(), "pct"), 11, "nothing deleted");
    assert!(out.stderr.contains("more than 50%"), "{out}");

    // A client cannot lift the server's cap (its --max-delete only tightens).
    let out = SyncCmd::new("pct", c.path())
        .server(&server.addr())
        .arg("--max-delete")
        .arg("100")
        .run();
    out.assert_code(8);
    // Put the files back (the archive still has them), then delete exactly half.
    std::fs::remove_file(c.path().join("new")).unwrap();
    for i in 0..6 {
        write_file(
            c.path(),
            &format!("f{i}"),
            b"data",
            ts(1_600_000_000 + i, 0),
        );
    }
    SyncCmd::new("pct", c.path())
        .server(&server.addr())
        .run()
        .assert_code(0);
    for i in 0..5 {
        std::fs::remove_file(c.path().join(format!("f{i}"))).unwrap();
    }
    let out = SyncCmd::new("pct", c.path()).server(&server.addr()).run();
    out.assert_code(0);
    assert_eq!(
        out.count("deleted"),
        5,
        "half of ten is not more than half: {out}"
    );
}

#[test]
fn max_delete_on_either_side_stops_deletions_past_n() {
    let root = tempfile::tempdir().unwrap();
    let server = ServeCmd::new(root.path())
        .arg("--max-delete-percent")
        .arg("100")
        .start();
    let c = tempfile::tempdir().unwrap();
    ten_files(&server, "n", c.path());
    for i in 0..5 {
        std::fs::remove_file(c.path().join(format!("f{i}"))).unwrap();
    }
    let out = SyncCmd::new("n", c.path())
        .server(&server.addr())
        .arg("--max-delete")
        .arg("2")
        .run();
    out.assert_code(8);
    assert_eq!(out.count("deleted"), 2, "{out}");
    assert_eq!(out.count("deletions_held_back"), 3, "{out}");
    assert!(out.stderr.contains("--max-delete 2"), "{out}");
    assert_eq!(held(root.path(), "n"), 8);

    // The server's own cap, and a folder that does not fit is kept whole.
    let root = tempfile::tempdir().unwrap();
    let server = ServeCmd::new(root.path())
        .arg("--max-delete")
        .arg("2")
        .arg("--max-delete-percent")
        .arg("100")
        .start();
    let c = tempfile::tempdir().unwrap();
    make_dir(c.path(), "d");
    write_file(c.path(), "d/a", b"a", ts(1_600_000_000, 0));
    write_file(c.path(), "d/b", b"b", ts(1_600_000_000, 0));
    write_file(c.path(), "x", b"x", ts(1_600_000_000, 0));
    SyncCmd::new("srv", c.path())
        .server(&server.addr())
        .run()
        .assert_code(0);
    std::fs::remove_dir_all(c.path().join("d")).unwrap();
    let out = SyncCmd::new("srv", c.path()).server(&server.addr()).run();
    out.assert_code(8);
    assert_eq!(
        out.count("deleted"),
        0,
        "a folder of 3 entries is more than 2: {out}"
    );
    assert_eq!(out.count("deletions_held_back"), 3, "{out}");
    assert!(root.path().join("client_srv/d/b").exists());
}

#[test]
fn an_original_server_cannot_keep_a_cap_so_the_client_refuses() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(root.path());
    let c = tempfile::tempdir().unwrap();
    write_file(c.path(), "f", b"1", ts(1_600_000_000, 0));
    let out = SyncCmd::new("seed", c.path())
        .server(&server.addr())
        .arg("--dialect")
        .arg("seed")
        .arg("--max-delete")
        .arg("5")
        .run();
    out.assert_code(5);
    assert!(out.stderr.contains("--max-delete"), "{out}");
    assert!(!root.path().join("client_seed").exists());
}

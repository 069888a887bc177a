//! One client and one server on 127.0.0.1: a first sync, a sync of every kind of change,
//! and a sync of nothing, in both encodings. The server's copy must equal the client's
//! folder exactly (bytes, mtimes to the nanosecond, empty files and directories), and
//! the `--json` counts must say what happened.

use std::path::Path;
use std::time::Duration;

use filesync_tests::{
    assert_dir_mtimes_equal, assert_trees_equal, dir_names, file_totals, make_dir, pseudo_random,
    remove, set_mtime, snapshot, temp_files, ts, write_file, Server, SyncCmd, SyncOutput,
};

/// Base of the mtimes used below: 2020-09-13, with nanoseconds that a microsecond or
/// millisecond round trip would lose.
const T0: i64 = 1_600_000_000;

/// The first tree: several levels, empty files, empty directories, a 3 MiB file, names
/// with spaces and non-ASCII characters, mtimes with and without nanoseconds.
fn build_initial(c: &Path) {
    write_file(c, "top.txt", b"top level\n", ts(T0, 123_456_789));
    write_file(c, "empty.txt", b"", ts(T0 + 1, 0));
    write_file(
        c,
        "a/b/c/d/e/deep.txt",
        b"five levels down",
        ts(T0 + 2, 999_999_999),
    );
    write_file(c, "a/b/empty", b"", ts(T0 + 3, 1));
    write_file(
        c,
        "a/b/c/sibling.bin",
        &pseudo_random(10_000, 1),
        ts(T0 + 4, 500),
    );
    make_dir(c, "a/b/c/empty-leaf");
    make_dir(c, "empty dir");
    write_file(
        c,
        "dir with spaces/file name with spaces.txt",
        b"spaces",
        ts(T0 + 5, 42),
    );
    write_file(
        c,
        "ünïcødé/日本語.txt",
        "こんにちは".as_bytes(),
        ts(T0 + 6, 7),
    );
    write_file(
        c,
        "ünïcødé/emoji 🎉.bin",
        &pseudo_random(777, 2),
        ts(T0 + 7, 8),
    );
    write_file(
        c,
        "big/three-mib.bin",
        &pseudo_random(3 << 20, 3),
        ts(T0 + 8, 9),
    );
    // Changed below in ways a careless check misses.
    write_file(
        c,
        "restore/report.txt",
        b"version 2 of the report",
        ts(T0 + 100, 0),
    );
    write_file(c, "rewrite/same-size.txt", b"AAAAAAAAAA", ts(T0 + 200, 5));
    write_file(c, "grow/log.txt", b"line 1\n", ts(T0 + 300, 0));
    // Deleted below.
    write_file(c, "gone.txt", b"soon deleted", ts(T0 + 400, 0));
    write_file(c, "old/x.txt", b"x", ts(T0 + 401, 0));
    write_file(c, "old/sub/y.txt", b"y", ts(T0 + 402, 0));
    make_dir(c, "old/sub/empty");
}

/// Changes of every kind that keeps each path's type. Returns (files changed or added,
/// their bytes, entries deleted).
fn modify(c: &Path) -> (u64, u64, u64) {
    let mut files = 0;
    let mut bytes = 0;
    let mut count = |len: usize| {
        files += 1;
        bytes += len as u64;
    };
    // Restored from a backup: an OLDER mtime and the same size (rsync's quick check must
    // compare for equality, not "newer").
    let old = b"version 1 of the report";
    assert_eq!(old.len(), b"version 2 of the report".len());
    write_file(c, "restore/report.txt", old, ts(T0 + 50, 0));
    count(old.len());
    // Same size, other content, other mtime (only nanoseconds apart).
    write_file(c, "rewrite/same-size.txt", b"BBBBBBBBBB", ts(T0 + 200, 6));
    count(10);
    // Grown, mtime unchanged: the size alone must trigger the send.
    write_file(c, "grow/log.txt", b"line 1\nline 2\n", ts(T0 + 300, 0));
    count(14);
    // Additions: in a new deep directory, in existing ones, an empty file, an empty dir.
    write_file(c, "new/deeper/still/n.txt", b"new file", ts(T0 + 500, 1));
    count(8);
    write_file(c, "a/b/c/d/added.txt", b"added", ts(T0 + 501, 2));
    count(5);
    write_file(c, "ünïcødé/nouveau é.txt", b"", ts(T0 + 502, 3));
    count(0);
    make_dir(c, "new/empty one");
    // Deletions: a file, and a whole directory with files, a subdirectory and an empty
    // one (old, old/x.txt, old/sub, old/sub/y.txt, old/sub/empty).
    remove(c, "gone.txt");
    remove(c, "old");
    // Touching a directory's mtime is not a change of the mirror.
    set_mtime(c, "a/b", ts(T0 + 999, 0));
    (files, bytes, 6)
}

/// Only `.filesync/` and the client's folder may appear in the server root, and no
/// temporary file may outlive a clean session.
#[track_caller]
fn assert_clean_root(root: &Path, id: &str) {
    assert_eq!(
        dir_names(root),
        [".filesync".to_string(), format!("client_{id}")],
        "unexpected entries in the server root"
    );
    assert_eq!(
        temp_files(root),
        Vec::<String>::new(),
        "temporary files left"
    );
}

#[track_caller]
fn assert_counts(out: &SyncOutput, files: u64, bytes: u64, deleted: u64) {
    let j = out.json();
    let got = (
        out.count("files_requested"),
        out.count("files_stored"),
        out.count("files_failed"),
        out.count("bytes_sent"),
        out.count("deleted"),
    );
    assert_eq!(
        got,
        (files, files, 0, bytes, deleted),
        "(files_requested, files_stored, files_failed, bytes_sent, deleted) in {j}"
    );
}

fn sequence(encoding: &str) {
    let client = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let c = client.path();
    let id = format!("loop-{encoding}");
    let stored = root.path().join(format!("client_{id}"));
    let server = Server::start(root.path());
    let sync = || {
        SyncCmd::new(&id, c)
            .server(&server.addr())
            .encoding(encoding)
            .run()
    };

    build_initial(c);
    let (files, bytes) = file_totals(&snapshot(c));
    let out = sync();
    out.assert_code(0);
    assert_eq!(out.json()["client_id"], id.as_str());
    assert_trees_equal(c, &stored);
    assert_dir_mtimes_equal(c, &stored);
    assert_counts(&out, files, bytes, 0);
    assert_clean_root(root.path(), &id);

    let (files, bytes, deleted) = modify(c);
    let out = sync();
    out.assert_code(0);
    assert_trees_equal(c, &stored);
    assert_dir_mtimes_equal(c, &stored);
    assert_counts(&out, files, bytes, deleted);
    assert_clean_root(root.path(), &id);

    let out = sync();
    out.assert_code(0);
    assert_trees_equal(c, &stored);
    assert_dir_mtimes_equal(c, &stored);
    assert_counts(&out, 0, 0, 0);
    assert_clean_root(root.path(), &id);

    assert!(
        server.wait_for_log_count("session done", 3, Duration::from_secs(10)),
        "server log:\n{}",
        server.log()
    );
    let log = server.log();
    assert!(!log.contains("session failed"), "server log:\n{log}");
}

#[test]
fn loopback_postcard() {
    sequence("postcard");
}

#[test]
fn loopback_json() {
    sequence("json");
}

/// A file replaced by a directory and a directory replaced by a file.
fn swap_types(encoding: &str) {
    let client = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let c = client.path();
    let id = format!("swap-{encoding}");
    let stored = root.path().join(format!("client_{id}"));
    let server = Server::start(root.path());
    let sync = || {
        SyncCmd::new(&id, c)
            .server(&server.addr())
            .encoding(encoding)
            .run()
    };

    write_file(c, "was-file", b"a file for now", ts(T0, 1));
    write_file(c, "was-dir/inner.txt", b"inside", ts(T0, 2));
    make_dir(c, "was-dir/sub/empty");
    write_file(c, "keep.txt", b"keep", ts(T0, 3));
    sync().assert_code(0);
    assert_trees_equal(c, &stored);
    assert_dir_mtimes_equal(c, &stored);

    remove(c, "was-file");
    write_file(
        c,
        "was-file/now-inside.txt",
        b"the file became a dir",
        ts(T0, 4),
    );
    make_dir(c, "was-file/empty");
    remove(c, "was-dir");
    write_file(c, "was-dir", b"the dir became a file", ts(T0, 5));
    let out = sync();
    out.assert_code(0);
    assert_trees_equal(c, &stored);
    assert_dir_mtimes_equal(c, &stored);
    assert_eq!(out.count("files_stored"), 2, "{}", out.json());
    assert_clean_root(root.path(), &id);

    let out = sync();
    out.assert_code(0);
    assert_trees_equal(c, &stored);
    assert_dir_mtimes_equal(c, &stored);
    assert_eq!(out.count("files_stored"), 0, "{}", out.json());
}

// Regression: up to ff55675 the server stored the new content of a path whose type
// changed, then deleted that path as part of the old tree (the new file, or the new
// directory with everything just stored in it), and the client still exited 0.
#[test]
fn file_and_directory_swapped_postcard() {
    swap_types("postcard");
}

#[test]
fn file_and_directory_swapped_json() {
    swap_types("json");
}

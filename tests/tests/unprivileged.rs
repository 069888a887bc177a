//! A server run by an ordinary account, for which permission checks apply: read-only
//! folders of a client must still be kept up to date (rsync opens them up for the
//! moment of the write), and keep their modes.

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::Path;

use filesync_tests::{assert_trees_equal, make_dir, ts, write_file, ServeCmd, SyncCmd};

/// `nobody` on Debian.
const NOBODY: u32 = 65534;

fn chmod(root: &Path, rel: &str, mode: u32) {
    fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn read_only_folders_are_updated_by_a_server_that_is_not_root() {
    if !is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root, which this test needs to switch the server's user"
        );
        eprintln!("SKIPPED: switching the server to another user needs root");
        return;
    }
    let base = tempfile::tempdir().unwrap();
    // The temporary folder is private to root: the server's root goes in a folder of
    // its own that `nobody` can enter.
    fs::set_permissions(base.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let root = base.path().join("srv");
    fs::create_dir(&root).unwrap();
    chown(&root, Some(NOBODY), Some(NOBODY)).unwrap();
    let server = ServeCmd::new(&root).user(NOBODY, NOBODY).start();

    let c = tempfile::tempdir().unwrap();
    let dir = c.path();
    write_file(dir, "ro/a.txt", b"first", ts(1_700_000_000, 1));
    make_dir(dir, "ro/gone");
    write_file(dir, "ro/gone/x", b"x", ts(1_700_000_000, 2));
    chmod(dir, "ro/gone", 0o555);
    chmod(dir, "ro", 0o555);
    let stored = root.join("client_ro");
    SyncCmd::new("ro", dir)
        .server(&server.addr())
        .run()
        .assert_code(0);
    assert_trees_equal(dir, &stored);

    // A new file in the read-only folder, a changed one, and a read-only subfolder
    // deleted whole: all need write access to folders the server holds as 0555.
    chmod(dir, "ro", 0o755);
    chmod(dir, "ro/gone", 0o755);
    fs::remove_dir_all(dir.join("ro/gone")).unwrap();
    write_file(dir, "ro/b.txt", b"second", ts(1_700_000_100, 3));
    write_file(dir, "ro/a.txt", b"changed", ts(1_700_000_200, 4));
    chmod(dir, "ro", 0o555);
    let out = SyncCmd::new("ro", dir).server(&server.addr()).run();
    out.assert_code(0);
    assert_eq!(out.count("files_stored"), 2, "{out}");
    assert_eq!(out.count("deleted"), 2, "{out}");
    assert_trees_equal(dir, &stored);
    chmod(dir, "ro", 0o755);
}

/// Whether this process's effective uid is 0 (the third field of `Uid:`).
fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

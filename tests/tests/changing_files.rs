//! Files that change or vanish on the client while a sync is sending them (issue 3): the
//! change is detected, the file is reported and not stored, the stream stays in step so
//! the rest of the tree lands, and the next sync sends the file whole.

use std::fs;
use std::time::Duration;

use filesync_tests::{
    assert_trees_equal, poll_until, temp_files, ts, write_big_file, write_file, Server, SyncCmd,
};

#[test]
fn changed_and_vanished_files_are_skipped_then_sent_next_time() {
    let client = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let c = client.path();
    // Sent in name order: the big file first, then the two small ones.
    write_big_file(&c.join("a-big.bin"), 64, 7, ts(1_700_000_000, 1));
    write_file(c, "b-stays.txt", b"unchanged", ts(1_700_000_001, 2));
    write_file(c, "c-vanishes.txt", b"soon gone", ts(1_700_000_002, 3));
    let stored = root.path().join("client_chg");
    let server = Server::start(root.path());

    let mut sync = SyncCmd::new("chg", c).server(&server.addr()).spawn();
    // The big file is under way once the server writes its temporary file. Freeze the
    // client there, change the tree under it, and let it go on.
    assert!(
        poll_until(Duration::from_secs(60), || sync.has_exited()
            || !temp_files(root.path()).is_empty()),
        "the transfer never started"
    );
    sync.pause();
    assert!(
        !sync.has_exited(),
        "the sync finished before the tree changed"
    );
    fs::write(c.join("a-big.bin"), b"rewritten while being sent").unwrap();
    fs::remove_file(c.join("c-vanishes.txt")).unwrap();
    sync.resume();
    let out = sync.wait();

    assert_eq!(out.code, 6, "a partial sync exits 6; {out}");
    assert_eq!(out.count("files_failed"), 2, "{out}");
    assert_eq!(out.count("files_stored"), 1, "{out}");
    assert!(
        !stored.join("a-big.bin").exists(),
        "a file torn by a change must not be stored"
    );
    assert!(!stored.join("c-vanishes.txt").exists());
    assert_eq!(fs::read(stored.join("b-stays.txt")).unwrap(), b"unchanged");
    assert_eq!(temp_files(root.path()), Vec::<String>::new());

    // The next sync sends the file as it is now, and mirrors the deletion.
    let out = SyncCmd::new("chg", c).server(&server.addr()).run();
    out.assert_code(0);
    assert_trees_equal(c, &stored);
}

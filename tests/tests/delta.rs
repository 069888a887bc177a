//! Block deltas end to end: a file changed in a few places is sent as the blocks that
//! differ; a file rewritten entirely is still stored exactly (the client falls back to
//! plain data), and every rebuilt file is verified by its hash before it replaces the old.

use std::os::unix::fs::FileExt;
use std::path::Path;

use filesync_tests::{assert_trees_equal, pseudo_random, ts, write_file, Server, SyncCmd};

const SIZE: usize = 32 << 20;

fn poke(dir: &Path, at: u64, bytes: &[u8], secs: i64) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("big.bin"))
        .unwrap();
    f.write_all_at(bytes, at).unwrap();
    drop(f);
    filesync_tests::set_mtime(dir, "big.bin", ts(secs, 0));
}

/// A server, and a client folder holding `big.bin` (`SIZE` bytes of seed `seed`) that
/// was synced to it as `id`: the start of every test here.
struct Synced {
    root: tempfile::TempDir,
    server: Server,
    dir: tempfile::TempDir,
}

fn synced(id: &str, seed: u64) -> Synced {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(root.path());
    let dir = tempfile::tempdir().unwrap();
    write_file(
        dir.path(),
        "big.bin",
        &pseudo_random(SIZE, seed),
        ts(1_600_000_000, 0),
    );
    SyncCmd::new(id, dir.path())
        .server(&server.addr())
        .run()
        .assert_code(0);
    Synced { root, server, dir }
}

#[test]
fn a_poked_file_sends_only_the_changed_blocks() {
    let Synced {
        root,
        server,
        dir: c,
    } = synced("d", 7);

    // 4 KiB changed in the middle.
    poke(
        c.path(),
        SIZE as u64 / 2 + 123,
        &[0xAB; 4096],
        1_600_000_100,
    );
    let out = SyncCmd::new("d", c.path()).server(&server.addr()).run();
    out.assert_code(0);
    assert_eq!(out.count("files_delta"), 1, "{out}");
    let sent = out.count("bytes_sent");
    assert!(
        sent <= 64 << 10,
        "{sent} literal bytes for 4 KiB changed: {out}"
    );
    assert_trees_equal(c.path(), &root.path().join("client_d"));

    // Bytes inserted near the start shift everything after them: still a small delta.
    let mut data = std::fs::read(c.path().join("big.bin")).unwrap();
    data.splice(1000..1000, b"inserted!".iter().copied());
    write_file(c.path(), "big.bin", &data, ts(1_600_000_200, 0));
    let out = SyncCmd::new("d", c.path()).server(&server.addr()).run();
    out.assert_code(0);
    assert!(out.count("bytes_sent") <= 64 << 10, "{out}");
    assert_trees_equal(c.path(), &root.path().join("client_d"));
}

/// `--whole-file` (rsync's `-W`): the same poked file is sent whole, not as a delta, and
/// stored exactly.
#[test]
fn whole_file_sends_a_poked_file_whole() {
    let Synced {
        root,
        server,
        dir: c,
    } = synced("wf", 10);
    poke(c.path(), SIZE as u64 / 2, &[0xCD; 4096], 1_600_000_100);
    let out = SyncCmd::new("wf", c.path())
        .server(&server.addr())
        .arg("--whole-file")
        .run();
    out.assert_code(0);
    assert_eq!(out.count("files_delta"), 0, "{out}");
    assert_eq!(out.count("bytes_sent"), SIZE as u64, "{out}");
    assert_trees_equal(c.path(), &root.path().join("client_wf"));

    // From the environment, as a systemd unit or a crontab would set it: 1 and 0 work
    // as well as true and false.
    // The command line wins: --whole-file=false turns off what the environment turned on.
    for (i, (value, arg, deltas)) in [
        ("1", None, 0),
        ("0", None, 1),
        ("yes", None, 0),
        ("false", None, 1),
        ("1", Some("--whole-file=false"), 1),
    ]
    .into_iter()
    .enumerate()
    {
        poke(
            c.path(),
            SIZE as u64 / 3,
            &[i as u8; 4096],
            1_600_000_200 + i as i64,
        );
        let mut cmd = SyncCmd::new("wf", c.path())
            .server(&server.addr())
            .env("FILESYNC_WHOLE_FILE", value);
        if let Some(a) = arg {
            cmd = cmd.arg(a);
        }
        let out = cmd.run();
        out.assert_code(0);
        assert_eq!(
            out.count("files_delta"),
            deltas,
            "FILESYNC_WHOLE_FILE={value} {arg:?}: {out}"
        );
        assert_trees_equal(c.path(), &root.path().join("client_wf"));
    }
}

#[test]
fn a_rewritten_file_is_stored_exactly() {
    let Synced {
        root,
        server,
        dir: c,
    } = synced("w", 8);
    write_file(
        c.path(),
        "big.bin",
        &pseudo_random(SIZE + 5, 9),
        ts(1_600_000_300, 0),
    );
    let out = SyncCmd::new("w", c.path()).server(&server.addr()).run();
    out.assert_code(0);
    assert_eq!(out.count("bytes_sent"), SIZE as u64 + 5, "{out}");
    // A delta that found nothing to copy fell back to a whole-file send, and is not
    // counted as a delta.
    assert_eq!(out.count("files_delta"), 0, "{out}");
    assert_trees_equal(c.path(), &root.path().join("client_w"));
}

#[test]
fn a_delta_that_fails_its_check_is_sent_whole_next_time() {
    let Synced {
        root,
        server,
        dir: c,
    } = synced("f", 10);

    // The server's copy changes under its cached signature (same size and mtime), so the
    // client's COPY of that block rebuilds wrong bytes: what a false match of a block hash
    // would do.
    let stored = root.path().join("client_f");
    poke(&stored, 1 << 20, &[0x55; 4096], 1_600_000_000);
    poke(c.path(), SIZE as u64 / 2, &[0xAB; 4096], 1_600_000_100);
    let out = SyncCmd::new("f", c.path()).server(&server.addr()).run();
    assert_ne!(out.code, 0, "the rebuilt file was accepted: {out}");
    assert_ne!(
        std::fs::read(stored.join("big.bin")).unwrap(),
        std::fs::read(c.path().join("big.bin")).unwrap(),
    );

    // The next sync gets no signature of that copy and sends the file whole.
    let out = SyncCmd::new("f", c.path()).server(&server.addr()).run();
    out.assert_code(0);
    assert_eq!(out.count("files_delta"), 0, "{out}");
    assert_eq!(out.count("bytes_sent"), SIZE as u64, "{out}");
    assert_trees_equal(c.path(), &stored);

    // Stored whole, the copy is signed again: the next change is a delta.
    poke(c.path(), 123, &[0xCD; 100], 1_600_000_200);
    let out = SyncCmd::new("f", c.path()).server(&server.addr()).run();
    out.assert_code(0);
    assert_eq!(out.count("files_delta"), 1, "{out}");
    assert_trees_equal(c.path(), &stored);
}

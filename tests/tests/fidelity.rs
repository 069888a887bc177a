//! A faithful archive (protocol version 3), end to end: the real `filesync` binary, a
//! server and a client on 127.0.0.1, real files. One test per requirement; each checks
//! what the server's folder `<root>/client_<id>` holds (names as bytes, modes, kinds,
//! link targets, sizes, mtimes and content), the exit code and the `--json` counts.
//!
//! CI runs as root, which ignores permission bits: where that matters (read-only
//! directories, unreadable files) the test says how it copes.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use filesync_tests::fsimage::coarse_fs_or_skip;
use filesync_tests::{
    assert_dir_mtimes_equal, assert_trees_equal, first_difference, make_dir, remove, set_mtime,
    snapshot, ts, write_file, Node, ServeCmd, Server, SyncCmd, SyncOutput,
};
use tempfile::TempDir;

/// Base of the mtimes used below (2023-11-14), with nanoseconds wherever they matter.
const T0: i64 = 1_700_000_000;

/// How long one `filesync sync` of these small trees may take.
const SYNC_LIMIT: Duration = Duration::from_secs(30);

/// A server on 127.0.0.1 and a client folder.
struct Rig {
    id: String,
    root: PathBuf,
    client: TempDir,
    // Dropped after the server has stopped (fields drop in order).
    server: Server,
    _root_dir: Option<TempDir>,
}

impl Rig {
    /// A server with default flags on a fresh temporary root.
    fn new(id: &str) -> Rig {
        Rig::with(id, &[])
    }

    /// A server on a fresh temporary root, with extra `serve` flags.
    fn with(id: &str, serve_args: &[&str]) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let mut rig = Rig::on(id, &root, serve_args);
        rig._root_dir = Some(dir);
        rig
    }

    /// A server keeping its data in `root` (which the caller owns).
    fn on(id: &str, root: &Path, serve_args: &[&str]) -> Rig {
        let mut serve = ServeCmd::new(root);
        for a in serve_args {
            serve = serve.arg(a);
        }
        Rig {
            id: id.to_owned(),
            root: root.to_path_buf(),
            client: tempfile::tempdir().unwrap(),
            server: serve.start(),
            _root_dir: None,
        }
    }

    /// The client's folder.
    fn c(&self) -> &Path {
        self.client.path()
    }

    /// The server's copy: `<root>/client_<id>`.
    fn stored(&self) -> PathBuf {
        self.root.join(format!("client_{}", self.id))
    }

    /// `filesync sync --once --json` of the client's folder to this server.
    fn sync(&self) -> SyncCmd {
        SyncCmd::new(&self.id, self.c())
            .server(&self.server.addr())
            .timeout(SYNC_LIMIT)
    }

    /// Panics if the server logged a failed session.
    #[track_caller]
    fn assert_no_failed_session(&self) {
        let log = self.server.log();
        assert!(!log.contains("session failed"), "server log:\n{log}");
    }
}

/// `(files_requested, files_stored, files_failed, deleted)` of a `--json` summary.
fn counts(out: &SyncOutput) -> (u64, u64, u64, u64) {
    (
        out.count("files_requested"),
        out.count("files_stored"),
        out.count("files_failed"),
        out.count("deleted"),
    )
}

/// Writes `data` at `root/rel` (a name of any bytes), creating its parents, with `mtime`.
fn write_bytes_name(root: &Path, rel: &[u8], data: &[u8], mtime: filetime::FileTime) {
    let p = root.join(OsStr::from_bytes(rel));
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, data).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
    filetime::set_file_times(&p, mtime, mtime).unwrap();
}

/// `chmod MODE root/rel` (follows symlinks: never call it on one).
fn chmod(root: &Path, rel: &str, mode: u32) {
    let p = root.join(rel);
    fs::set_permissions(&p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", p.display()));
}

/// The permission bits of `root/rel`, not following a symlink.
fn mode_of(root: &Path, rel: &str) -> u32 {
    fs::symlink_metadata(root.join(rel)).unwrap().mode() & 0o7777
}

/// `mkfifo -m MODE root/rel` (the mode set apart from mknod, which the umask trims).
fn mkfifo(root: &Path, rel: &str, mode: u32) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &p,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap_or_else(|e| panic!("mkfifo {}: {e}", p.display()));
    chmod(root, rel, mode);
}

/// `snapshot(root)` without the entries at or under `paths`.
fn snapshot_without(root: &Path, paths: &[&str]) -> BTreeMap<PathBuf, Node> {
    let mut s = snapshot(root);
    s.retain(|p, _| !paths.iter().any(|x| p.starts_with(x)));
    s
}

/// Asserts that `stored` holds exactly the entries of `expected`, and that each of its
/// files whose entry is the one `client` has now holds the client's bytes.
#[track_caller]
fn assert_holds(expected: &BTreeMap<PathBuf, Node>, client: &Path, stored: &Path) {
    let got = snapshot(stored);
    let mut diffs = Vec::new();
    for (p, want) in expected {
        match got.get(p) {
            None => diffs.push(format!("missing on the server: {p:?} ({want:?})")),
            Some(n) if n != want => diffs.push(format!("{p:?}: want {want:?}, got {n:?}")),
            Some(_) => {}
        }
    }
    for (p, n) in &got {
        if !expected.contains_key(p) {
            diffs.push(format!("unexpected on the server: {p:?} ({n:?})"));
        }
    }
    let now = snapshot(client);
    for (p, n) in expected {
        if matches!(n, Node::File { .. }) && now.get(p) == Some(n) && got.get(p) == Some(n) {
            if let Some(off) = first_difference(&client.join(p), &stored.join(p)) {
                diffs.push(format!("{p:?}: contents differ at byte {off}"));
            }
        }
    }
    assert!(
        diffs.is_empty(),
        "{} does not hold what was expected:\n  {}",
        stored.display(),
        diffs.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------
// 1. Names of any bytes
// ---------------------------------------------------------------------------------------

fn names_of_any_bytes(encoding: &str) {
    let rig = Rig::new(&format!("names-{encoding}"));
    let c = rig.c();
    let sync = || rig.sync().encoding(encoding).run();
    // Latin-1 "café" (not UTF-8), a backslash, a directory whose name is not UTF-8, a
    // newline, and the UTF-8 name that the non-UTF-8 one is *displayed* as: an escape on
    // the wire that looked like it would store both under one name.
    write_bytes_name(c, b"caf\xe9.txt", b"latin-1", ts(T0, 1));
    write_bytes_name(c, b"back\\slash.txt", b"backslash", ts(T0, 2));
    write_bytes_name(c, b"dir\xff\xfe/inner \xe9.bin", &[0, 159, 255], ts(T0, 3));
    write_bytes_name(c, b"new\nline.txt", b"newline", ts(T0, 4));
    write_bytes_name(c, b"caf\\xE9.txt", b"the escape, literally", ts(T0, 5));

    let out = sync();
    out.assert_code(0);
    assert_eq!(counts(&out), (5, 5, 0, 0), "{}", out.json());
    assert_trees_equal(c, &rig.stored());
    assert_dir_mtimes_equal(c, &rig.stored());
    // The same bytes, not a lossy or escaped spelling of them.
    let stored = rig.stored();
    assert_eq!(
        fs::read(stored.join(OsStr::from_bytes(b"caf\xe9.txt"))).unwrap(),
        b"latin-1"
    );
    assert_eq!(
        fs::read(stored.join(OsStr::from_bytes(b"caf\\xE9.txt"))).unwrap(),
        b"the escape, literally"
    );
    assert_eq!(
        fs::read(stored.join("back\\slash.txt")).unwrap(),
        b"backslash"
    );

    // Nothing changed: nothing is sent.
    let out = sync();
    out.assert_code(0);
    assert_eq!(counts(&out), (0, 0, 0, 0), "{}", out.json());
    assert_eq!(out.count("bytes_sent"), 0);

    // Deleted by its exact bytes: the look-alike stays.
    fs::remove_file(c.join(OsStr::from_bytes(b"caf\xe9.txt"))).unwrap();
    let out = sync();
    out.assert_code(0);
    assert_eq!(counts(&out), (0, 0, 0, 1), "{}", out.json());
    assert_trees_equal(c, &rig.stored());
    rig.assert_no_failed_session();
}

#[test]
fn names_of_any_bytes_postcard() {
    names_of_any_bytes("postcard");
}

#[test]
fn names_of_any_bytes_json() {
    names_of_any_bytes("json");
}

// ---------------------------------------------------------------------------------------
// 2. Modes
// ---------------------------------------------------------------------------------------

#[test]
fn modes_are_kept_and_a_chmod_is_not_a_resend() {
    let rig = Rig::new("modes");
    let c = rig.c();
    write_file(c, "bin/run.sh", b"#!/bin/sh\necho hi\n", ts(T0, 1));
    chmod(c, "bin/run.sh", 0o755);
    write_file(c, "keys/id_ed25519", b"-----BEGIN KEY-----", ts(T0, 2));
    chmod(c, "keys/id_ed25519", 0o600);
    write_file(c, "private/diary.txt", b"dear diary", ts(T0, 3));
    chmod(c, "private", 0o700);
    // Root (as CI runs) writes into a 0555 directory regardless, on both sides; what is
    // checked here is that the bits arrive, after what is inside was stored.
    write_file(c, "ro/readme.txt", b"read me, do not write", ts(T0, 4));
    chmod(c, "ro/readme.txt", 0o444);
    chmod(c, "ro", 0o555);
    make_dir(c, "shared");
    chmod(c, "shared", 0o1777);
    for d in ["bin", "keys", "private", "ro", "shared"] {
        set_mtime(c, d, ts(T0 + 10, 5));
    }

    let out = rig.sync().run();
    out.assert_code(0);
    assert_eq!(counts(&out), (4, 4, 0, 0), "{}", out.json());
    assert_trees_equal(c, &rig.stored());
    assert_dir_mtimes_equal(c, &rig.stored());
    assert_eq!(mode_of(&rig.stored(), "ro"), 0o555);
    assert_eq!(mode_of(&rig.stored(), "private"), 0o700);
    assert_eq!(mode_of(&rig.stored(), "shared"), 0o1777);
    assert_eq!(mode_of(&rig.stored(), "keys/id_ed25519"), 0o600);

    // Only the modes change: the content and mtimes are as they were.
    let inode = |rel: &str| fs::metadata(rig.stored().join(rel)).unwrap().ino();
    let inodes = (inode("bin/run.sh"), inode("keys/id_ed25519"));
    chmod(c, "bin/run.sh", 0o700);
    chmod(c, "keys/id_ed25519", 0o640);
    chmod(c, "ro/readme.txt", 0o644);
    chmod(c, "private", 0o750);
    chmod(c, "ro", 0o755);
    let out = rig.sync().run();
    out.assert_code(0);
    assert_eq!(counts(&out), (0, 0, 0, 0), "{}", out.json());
    assert_eq!(out.count("bytes_sent"), 0);
    assert_trees_equal(c, &rig.stored());
    assert_dir_mtimes_equal(c, &rig.stored());
    assert_eq!(mode_of(&rig.stored(), "bin/run.sh"), 0o700);
    assert_eq!(mode_of(&rig.stored(), "ro"), 0o755);
    assert_eq!(
        (inode("bin/run.sh"), inode("keys/id_ed25519")),
        inodes,
        "changed in place, not replaced by a new copy"
    );
    rig.assert_no_failed_session();
}

// ---------------------------------------------------------------------------------------
// 3. setuid and setgid
// ---------------------------------------------------------------------------------------

fn setid_tree(c: &Path) {
    write_file(c, "suid", b"\x7fELF pretend", ts(T0, 1));
    chmod(c, "suid", 0o4755);
    write_file(c, "sgid", b"group program", ts(T0, 2));
    chmod(c, "sgid", 0o2711);
    write_file(c, "team/notes.txt", b"shared", ts(T0, 3));
    chmod(c, "team", 0o2775);
    write_file(c, "plain", b"plain", ts(T0, 4));
    chmod(c, "plain", 0o644);
}

#[test]
fn setid_bits_are_dropped_unless_the_server_keeps_them() {
    for keep in [false, true] {
        let args: &[&str] = if keep { &["--keep-setid"] } else { &[] };
        let rig = Rig::with(&format!("setid-{keep}"), args);
        let c = rig.c();
        setid_tree(c);
        let out = rig.sync().run();
        out.assert_code(0);
        assert_eq!(counts(&out), (4, 4, 0, 0), "{}", out.json());
        let mut expected = snapshot(c);
        if !keep {
            for (p, mode) in [("suid", 0o755), ("sgid", 0o711), ("team", 0o775)] {
                match expected.get_mut(Path::new(p)).unwrap() {
                    Node::File { mode: m, .. } | Node::Dir { mode: m } => *m = mode,
                    other => panic!("{p}: {other:?}"),
                }
            }
        }
        assert_holds(&expected, c, &rig.stored());
        let want = if keep { 0o4755 } else { 0o755 };
        assert_eq!(mode_of(&rig.stored(), "suid"), want, "keep {keep}");

        // The dropped bits are not a difference to repair at every sync.
        let out = rig.sync().run();
        out.assert_code(0);
        assert_eq!(counts(&out), (0, 0, 0, 0), "{}", out.json());
        assert_holds(&expected, c, &rig.stored());
        rig.assert_no_failed_session();
    }
}

// ---------------------------------------------------------------------------------------
// 4. Symlinks
// ---------------------------------------------------------------------------------------

#[test]
fn symlinks_are_stored_verbatim_updated_and_deleted() {
    let rig = Rig::new("links");
    let c = rig.c();
    write_file(c, "target", b"the target", ts(T0, 1));
    write_file(c, "sub/inside.txt", b"in sub", ts(T0, 2));
    symlink("target", c.join("link")).unwrap();
    symlink("/etc/passwd", c.join("abs")).unwrap();
    symlink("no/such/file", c.join("dangling")).unwrap();
    symlink("../../outside", c.join("sub/out")).unwrap();
    symlink("sub", c.join("dirlink")).unwrap();
    symlink(OsStr::from_bytes(b"not utf-8 \xff\xfe"), c.join("bytes")).unwrap();

    let out = rig.sync().run();
    out.assert_code(0);
    // Links are made from the listing: only the two regular files are requested.
    assert_eq!(counts(&out), (2, 2, 0, 0), "{}", out.json());
    let stored = rig.stored();
    assert_trees_equal(c, &stored);
    assert_dir_mtimes_equal(c, &stored);
    for (l, t) in [
        ("abs", "/etc/passwd"),
        ("sub/out", "../../outside"),
        ("dirlink", "sub"),
    ] {
        let m = fs::symlink_metadata(stored.join(l)).unwrap();
        assert!(m.file_type().is_symlink(), "{l} is not a symlink");
        assert_eq!(fs::read_link(stored.join(l)).unwrap(), Path::new(t));
    }

    // A new target, a link that became a file, and one that became a directory.
    fs::remove_file(c.join("link")).unwrap();
    symlink("sub/inside.txt", c.join("link")).unwrap();
    fs::remove_file(c.join("dirlink")).unwrap();
    write_file(c, "dirlink", b"now a file", ts(T0, 3));
    fs::remove_file(c.join("abs")).unwrap();
    write_file(c, "abs/now-a-dir.txt", b"now a directory", ts(T0, 4));
    let out = rig.sync().run();
    out.assert_code(0);
    assert_eq!(out.count("files_requested"), 2, "{}", out.json());
    assert_eq!(out.count("files_failed"), 0, "{}", out.json());
    assert_trees_equal(c, &stored);
    assert_eq!(
        fs::read_link(stored.join("link")).unwrap(),
        Path::new("sub/inside.txt")
    );
    assert_eq!(
        fs::read_to_string("/etc/passwd").ok().map(|s| s.is_empty()),
        Some(false),
        "/etc/passwd survived"
    );

    // Deleted on the client, deleted on the server (the link, never its target).
    fs::remove_file(c.join("dangling")).unwrap();
    fs::remove_file(c.join("link")).unwrap();
    let out = rig.sync().run();
    out.assert_code(0);
    assert_eq!(counts(&out), (0, 0, 0, 2), "{}", out.json());
    assert_trees_equal(c, &stored);
    assert!(fs::symlink_metadata(stored.join("dangling")).is_err());
    assert_eq!(
        fs::read(stored.join("sub/inside.txt")).unwrap(),
        b"in sub",
        "the link's target stays"
    );

    let out = rig.sync().run();
    out.assert_code(0);
    assert_eq!(counts(&out), (0, 0, 0, 0), "{}", out.json());
    rig.assert_no_failed_session();
}

/// Someone with access to the server replaced directories of a client's copy with
/// symlinks pointing outside the server root. Files stored under them, and deletions,
/// must not go through the links: the store replaces each link with a real directory (or
/// deletes the link itself).
#[test]
fn symlinks_planted_on_the_server_are_never_followed() {
    let outside = tempfile::tempdir().unwrap();
    let o = outside.path();
    // Names the client uses under d/, e/ and f/: a write or deletion through a link
    // would land on one of them (new.txt would appear).
    for (i, n) in ["old.txt", "keep.txt", "gone.txt", "x.txt"]
        .iter()
        .enumerate()
    {
        write_file(
            o,
            n,
            format!("outside {n}").as_bytes(),
            ts(T0 - 1000, i as u32),
        );
    }
    let outside_before = snapshot(o);

    let rig = Rig::new("planted");
    let c = rig.c();
    write_file(c, "d/old.txt", b"client old", ts(T0, 1));
    write_file(c, "d/keep.txt", b"client keep", ts(T0, 2));
    write_file(c, "e/gone.txt", b"client gone", ts(T0, 3));
    write_file(c, "f/x.txt", b"client x", ts(T0, 4));
    write_file(c, "top.txt", b"top", ts(T0, 5));
    rig.sync().run().assert_code(0);
    let stored = rig.stored();
    assert_trees_equal(c, &stored);

    for n in ["d", "e", "f"] {
        fs::remove_dir_all(stored.join(n)).unwrap();
        symlink(o, stored.join(n)).unwrap();
    }
    // d: a new file stored under it and a file deleted; e: deleted whole on the client;
    // f: its only file deleted.
    write_file(c, "d/new.txt", b"client new", ts(T0, 6));
    remove(c, "d/old.txt");
    remove(c, "e");
    remove(c, "f/x.txt");
    set_mtime(c, "d", ts(T0 + 20, 0));
    set_mtime(c, "f", ts(T0 + 21, 0));
    let out = rig.sync().run();
    out.assert_code(0);
    assert_eq!(out.count("files_failed"), 0, "{}", out.json());

    assert_eq!(snapshot(o), outside_before, "outside the root changed");
    for n in outside_before.keys() {
        let text = format!("outside {}", n.display());
        assert_eq!(
            fs::read_to_string(o.join(n)).unwrap(),
            text,
            "{n:?} rewritten"
        );
    }
    assert!(fs::symlink_metadata(stored.join("d")).unwrap().is_dir());
    assert!(fs::symlink_metadata(stored.join("f")).unwrap().is_dir());
    assert!(
        fs::symlink_metadata(stored.join("e")).is_err(),
        "the link standing for e/ is deleted"
    );
    assert_trees_equal(c, &stored);
    assert_dir_mtimes_equal(c, &stored);
    rig.assert_no_failed_session();
}

// ---------------------------------------------------------------------------------------
// 5. FIFOs
// ---------------------------------------------------------------------------------------

#[test]
fn fifos_are_recreated_never_opened() {
    let rig = Rig::new("fifo");
    let c = rig.c();
    mkfifo(c, "pipe", 0o620);
    mkfifo(c, "sub/deep/pipe2", 0o644);
    write_file(c, "sub/file.txt", b"beside the pipes", ts(T0, 1));
    // Opening a FIFO nobody writes to blocks: a client or server that opened one would
    // hang here until the sync's time limit.
    let quick = Duration::from_secs(20);
    let out = rig.sync().timeout(quick).run();
    out.assert_code(0);
    assert_eq!(counts(&out), (1, 1, 0, 0), "{}", out.json());
    assert_trees_equal(c, &rig.stored());
    assert_eq!(
        snapshot(&rig.stored()).get(Path::new("pipe")),
        Some(&Node::Fifo { mode: 0o620 })
    );

    chmod(c, "pipe", 0o600);
    let out = rig.sync().timeout(quick).run();
    out.assert_code(0);
    assert_eq!(counts(&out), (0, 0, 0, 0), "{}", out.json());
    assert_trees_equal(c, &rig.stored());

    remove(c, "sub/deep/pipe2");
    let out = rig.sync().timeout(quick).run();
    out.assert_code(0);
    assert_eq!(counts(&out), (0, 0, 0, 1), "{}", out.json());
    assert_trees_equal(c, &rig.stored());
    rig.assert_no_failed_session();
}

// ---------------------------------------------------------------------------------------
// 6. Sockets and devices
// ---------------------------------------------------------------------------------------

#[test]
fn sockets_and_devices_are_skipped_and_counted() {
    let rig = Rig::new("special");
    let c = rig.c();
    write_file(c, "a.txt", b"a", ts(T0, 1));
    let _listener = std::os::unix::net::UnixListener::bind(c.join("app.sock")).unwrap();
    // A character device with /dev/null's numbers: only root may make one.
    let root = rustix::process::geteuid().is_root();
    if root {
        make_dir(c, "dev");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            c.join("dev/null"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
    } else {
        eprintln!("not root: the device-file part of this test is skipped");
    }
    let devices = u64::from(root);

    let out = rig.sync().run();
    out.assert_code(0);
    assert_eq!(counts(&out), (1, 1, 0, 0), "{}", out.json());
    assert_eq!(out.count("skipped_sockets"), 1, "{}", out.json());
    assert_eq!(out.count("skipped_devices"), devices, "{}", out.json());
    let expected = snapshot_without(c, &["app.sock", "dev/null"]);
    assert_holds(&expected, c, &rig.stored());

    // The text summary names what it left out.
    let out = rig.sync().text().run();
    out.assert_code(0);
    assert!(
        out.stdout.contains("1 sockets not archived"),
        "{}",
        out.stdout
    );
    if root {
        assert!(
            out.stdout.contains("1 device files not archived"),
            "{}",
            out.stdout
        );
    }
    assert_holds(&expected, c, &rig.stored());
    rig.assert_no_failed_session();
}

// ---------------------------------------------------------------------------------------
// 7. Sparse files
// ---------------------------------------------------------------------------------------

#[test]
fn sparse_files_send_data_only_and_stay_sparse() {
    const SIZE: u64 = 5 << 30;
    const AT: u64 = SIZE / 2 + 12_345;
    let rig = Rig::new("sparse");
    let c = rig.c();
    let f = fs::File::create(c.join("disk.img")).unwrap();
    f.set_len(SIZE).unwrap();
    f.write_all_at(b"8 bytes!", AT).unwrap();
    drop(f);
    set_mtime(c, "disk.img", ts(T0, 77));
    write_file(c, "small.txt", b"dense", ts(T0, 78));
    let allocated = fs::metadata(c.join("disk.img")).unwrap().blocks() * 512;
    assert!(
        allocated <= 1 << 20,
        "the client's filesystem does not keep holes ({allocated} bytes allocated)"
    );

    let out = rig.sync().run();
    out.assert_code(0);
    assert_eq!(counts(&out), (2, 2, 0, 0), "{}", out.json());
    let sent = out.count("bytes_sent");
    assert!(sent <= 1 << 20, "{sent} bytes sent for 13 bytes of data");
    assert!(sent >= 13, "{sent} bytes sent");
    // Sizes, mtimes and modes (the snapshot reads no content).
    let stored = rig.stored();
    assert_eq!(snapshot(c), snapshot(&stored));
    assert_eq!(
        first_difference(&c.join("small.txt"), &stored.join("small.txt")),
        None
    );
    let copy = stored.join("disk.img");
    let m = fs::metadata(&copy).unwrap();
    assert_eq!(m.len(), SIZE);
    assert!(
        m.blocks() * 512 <= 4 << 20,
        "the server's copy allocates {} bytes",
        m.blocks() * 512
    );
    // The same content without reading 5 GiB twice: every data range of either file
    // holds the same bytes in the other (everything else is hole, which reads as zeros).
    let (a, b) = (
        fs::File::open(c.join("disk.img")).unwrap(),
        fs::File::open(&copy).unwrap(),
    );
    for file in [&a, &b] {
        for r in filesync_core::sparse::data_ranges(file, SIZE) {
            let r = r.unwrap();
            assert!(r.len <= 4 << 20, "a data range of {} bytes", r.len);
            let (mut x, mut y) = (vec![0u8; r.len as usize], vec![0u8; r.len as usize]);
            a.read_exact_at(&mut x, r.offset).unwrap();
            b.read_exact_at(&mut y, r.offset).unwrap();
            assert!(x == y, "the copies differ in {r:?}");
        }
    }
    let mut around = [0u8; 16];
    b.read_exact_at(&mut around, AT - 4).unwrap();
    assert_eq!(&around, b"\0\0\0\08 bytes!\0\0\0\0");

    let out = rig.sync().run();
    out.assert_code(0);
    assert_eq!(counts(&out), (0, 0, 0, 0), "{}", out.json());
    rig.assert_no_failed_session();
}

// ---------------------------------------------------------------------------------------
// 8. Exclusions
// ---------------------------------------------------------------------------------------

/// The tree of the exclusion test: every file holds its own path.
fn exclusion_tree(c: &Path) {
    let t = ts(T0, 9);
    for f in [
        "a.txt",
        "notes.txt",
        "logs/l.txt",
        "top.o",
        // For --exclude '*.tmp' and --exclude /build/.
        "x.tmp",
        "build/out.bin",
        // /build/ is anchored at the folder: not this one.
        "sub/build/y.txt",
        // For FILESYNC_EXCLUDE's two lines.
        "debug.log",
        "cache/c.bin",
        // The root's .filesyncignore excludes *.bak, sub's re-includes keep.bak (deeper
        // files win) and keep.tmp (unless the command line excludes it: it wins), and
        // excludes *.o in sub only.
        "sub/x.bak",
        "sub/keep.bak",
        "sub/keep.tmp",
        "sub/z.o",
    ] {
        write_file(c, f, f.as_bytes(), t);
    }
    write_file(c, ".filesyncignore", b"*.bak\n", t);
    write_file(c, "sub/.filesyncignore", b"!keep.bak\n!keep.tmp\n*.o\n", t);
}

#[test]
fn exclusions_from_the_environment_and_filesyncignore_files() {
    let rig = Rig::new("exclude-env");
    let c = rig.c();
    exclusion_tree(c);
    // One pattern a line; a blank line excludes nothing.
    let out = rig
        .sync()
        .env("FILESYNC_EXCLUDE", "*.log\n\ncache/\n")
        .run();
    out.assert_code(0);
    let excluded = ["debug.log", "cache", "sub/x.bak", "sub/z.o"];
    assert_eq!(out.count("excluded"), 4, "{}", out.json());
    // 15 files and 2 .filesyncignore, less debug.log, cache/c.bin, sub/x.bak, sub/z.o
    assert_eq!(counts(&out), (11, 11, 0, 0), "{}", out.json());
    assert_holds(&snapshot_without(c, &excluded), c, &rig.stored());
    assert!(rig.stored().join("sub/keep.tmp").is_file(), "re-included");
    assert!(rig.stored().join("x.tmp").is_file());
    rig.assert_no_failed_session();
}

#[test]
fn exclusions_are_not_sent_kept_on_the_server_and_deleted_only_when_asked() {
    let rig = Rig::new("exclude");
    let c = rig.c();
    exclusion_tree(c);
    let excluded = ["x.tmp", "build", "sub/x.bak", "sub/keep.tmp", "sub/z.o"];
    let sync = |extra: &[&str]| {
        let mut cmd = rig.sync();
        for a in ["--exclude", "*.tmp", "--exclude", "/build/"]
            .iter()
            .chain(extra)
        {
            cmd = cmd.arg(a);
        }
        cmd.run()
    };

    let out = sync(&[]);
    out.assert_code(0);
    assert_eq!(out.count("excluded"), 5, "{}", out.json());
    // 15 files and 2 .filesyncignore, less x.tmp, build/out.bin, sub/x.bak, sub/keep.tmp,
    // sub/z.o
    assert_eq!(counts(&out), (10, 10, 0, 0), "{}", out.json());
    let first = snapshot_without(c, &excluded);
    assert_holds(&first, c, &rig.stored());
    assert!(rig.stored().join("sub/build/y.txt").is_file());
    assert!(rig.stored().join("sub/keep.bak").is_file());

    // Synced before, excluded now: left as the server has it, even once changed.
    write_file(c, "notes.txt", b"changed, but excluded now", ts(T0, 10));
    write_file(c, "logs/more.txt", b"more", ts(T0, 11));
    let more = ["--exclude", "/notes.txt", "--exclude", "logs/"];
    let out = sync(&more);
    out.assert_code(0);
    assert_eq!(counts(&out), (0, 0, 0, 0), "{}", out.json());
    assert_eq!(out.count("excluded"), 7, "{}", out.json());
    assert_holds(&first, c, &rig.stored());
    assert_eq!(
        fs::read(rig.stored().join("notes.txt")).unwrap(),
        b"notes.txt"
    );

    // --delete-excluded: the server's copies of excluded paths go.
    let out = sync(&[&more[..], &["--delete-excluded"]].concat());
    out.assert_code(0);
    // notes.txt, logs, logs/l.txt
    assert_eq!(counts(&out), (0, 0, 0, 3), "{}", out.json());
    assert_eq!(out.count("excluded"), 7, "{}", out.json());
    let now = snapshot_without(c, &[&excluded[..], &["notes.txt", "logs"]].concat());
    assert_holds(&now, c, &rig.stored());
    rig.assert_no_failed_session();
}

// ---------------------------------------------------------------------------------------
// 9. Honest exit codes
// ---------------------------------------------------------------------------------------

/// Files the client cannot read are failures (exit 6), and the server keeps its copies.
/// Root reads any file whatever its mode, so as root the client runs without
/// CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (`setpriv`, util-linux): still uid 0, but
/// bound by permission bits like anyone else.
#[test]
fn unreadable_entries_make_the_sync_partial() {
    let rig = Rig::new("unreadable");
    let c = rig.c();
    write_file(c, "ok.txt", b"fine", ts(T0, 1));
    write_file(c, "secret.txt", b"version 1", ts(T0, 2));
    write_file(c, "locked/inside.txt", b"inside", ts(T0, 3));
    rig.sync().run().assert_code(0);
    let stored = rig.stored();
    assert_trees_equal(c, &stored);
    let before = snapshot(&stored);

    // Changed, so that the server asks for it, and then unreadable; a directory that
    // cannot be listed, holding a new file.
    write_file(c, "secret.txt", b"version 2, longer", ts(T0, 20));
    write_file(c, "locked/new.txt", b"new", ts(T0, 21));
    write_file(c, "ok2.txt", b"also fine", ts(T0, 22));
    chmod(c, "secret.txt", 0o000);
    chmod(c, "locked", 0o000);
    let mut cmd = rig.sync();
    if rustix::process::geteuid().is_root() {
        let caps = "-dac_override,-dac_read_search";
        cmd = cmd.via("setpriv", &["--inh-caps", caps, "--bounding-set", caps]);
    }
    let out = cmd.run();
    chmod(c, "locked", 0o755);
    chmod(c, "secret.txt", 0o644);
    out.assert_code(6);
    // secret.txt could not be read, locked/ could not be listed; ok2.txt is stored.
    assert_eq!(out.count("files_failed"), 2, "{}", out.json());
    assert_eq!(out.count("files_stored"), 1, "{}", out.json());
    assert_eq!(out.count("deleted"), 0, "{}", out.json());
    let mut expected = before.clone();
    expected.insert("ok2.txt".into(), snapshot(c)[Path::new("ok2.txt")].clone());
    // The server keeps what it had: the old secret.txt, locked/ and what was in it.
    let got = snapshot(&stored);
    assert_eq!(got.len(), expected.len(), "{got:?}");
    for (p, n) in &expected {
        assert_eq!(got.get(p), Some(n), "{p:?}");
    }
    assert_eq!(fs::read(stored.join("secret.txt")).unwrap(), b"version 1");
    assert_eq!(
        fs::read(stored.join("locked/inside.txt")).unwrap(),
        b"inside"
    );

    // Readable again: the next sync completes the mirror.
    let out = rig.sync().run();
    out.assert_code(0);
    assert_eq!(counts(&out), (2, 2, 0, 0), "{}", out.json());
    assert_trees_equal(c, &stored);
}

/// The original dialect cannot carry a name that is not UTF-8, nor a symlink: each is a
/// failure (exit 6), and everything else is stored.
#[test]
fn the_seed_dialect_fails_what_it_cannot_carry() {
    let rig = Rig::new("seed");
    let c = rig.c();
    // Whole microseconds: the dialect keeps no more.
    write_file(c, "good.txt", b"good", ts(T0, 1_000));
    write_file(c, "sub/other.txt", b"other", ts(T0, 2_000));
    write_bytes_name(c, b"caf\xe9.txt", b"latin-1", ts(T0, 3_000));
    symlink("good.txt", c.join("link")).unwrap();

    let out = rig.sync().arg("--dialect").arg("seed").run();
    out.assert_code(6);
    assert_eq!(out.json()["dialect"], "seed", "{}", out.json());
    assert_eq!(out.count("files_failed"), 2, "{}", out.json());
    assert_eq!(out.count("files_stored"), 2, "{}", out.json());
    let stored = rig.stored();
    let got = snapshot(&stored);
    let names: Vec<&Path> = got.keys().map(PathBuf::as_path).collect();
    assert_eq!(
        names,
        [
            Path::new("good.txt"),
            Path::new("sub"),
            Path::new("sub/other.txt")
        ]
    );
    for f in ["good.txt", "sub/other.txt"] {
        assert_eq!(first_difference(&c.join(f), &stored.join(f)), None, "{f}");
        let (a, b) = (&snapshot(c)[Path::new(f)], &got[Path::new(f)]);
        match (a, b) {
            (Node::File { mtime: ma, .. }, Node::File { mtime: mb, .. }) => {
                assert_eq!(ma, mb, "{f}")
            }
            _ => panic!("{f}: {a:?} {b:?}"),
        }
    }

    // Still partial next time: what cannot be carried is not quietly dropped.
    let out = rig.sync().arg("--dialect").arg("seed").run();
    out.assert_code(6);
    assert_eq!(out.count("files_failed"), 2, "{}", out.json());
    assert_eq!(out.count("files_requested"), 0, "{}", out.json());
}

// ---------------------------------------------------------------------------------------
// 10. Coarse timestamps
// ---------------------------------------------------------------------------------------

/// A server whose root keeps whole-second mtimes (ext4 with 128-byte inodes) must not see
/// every file as changed at every sync: it compares mtimes within its precision.
#[test]
fn a_server_on_a_coarse_filesystem_does_not_resend_everything() {
    let Some(coarse) =
        coarse_fs_or_skip("a_server_on_a_coarse_filesystem_does_not_resend_everything")
    else {
        return;
    };
    let rig = Rig::on("coarse", coarse.path(), &[]);
    let c = rig.c();
    write_file(c, "a.txt", b"a", ts(T0, 123_456_789));
    write_file(c, "b/c.txt", b"see", ts(T0 + 1, 999_999_999));
    write_file(c, "d.bin", &[7u8; 5000], ts(T0 + 2, 1));
    let stored = rig.stored();
    // Each file as the server can hold it: the mtime truncated to the second.
    let truncated = |tree: BTreeMap<PathBuf, Node>| -> BTreeMap<PathBuf, Node> {
        tree.into_iter()
            .map(|(p, n)| match n {
                Node::File { size, mtime, mode } => (
                    p,
                    Node::File {
                        size,
                        mtime: (mtime.0, 0),
                        mode,
                    },
                ),
                n => (p, n),
            })
            .collect()
    };

    let out = rig.sync().run();
    out.assert_code(0);
    assert_eq!(counts(&out), (3, 3, 0, 0), "{}", out.json());
    assert_eq!(snapshot(&stored), truncated(snapshot(c)));
    for f in ["a.txt", "b/c.txt", "d.bin"] {
        assert_eq!(first_difference(&c.join(f), &stored.join(f)), None, "{f}");
    }
    assert!(
        rig.server.log().contains("coarse mtimes"),
        "the server did not notice: {}",
        rig.server.log()
    );

    let out = rig.sync().run();
    out.assert_code(0);
    assert_eq!(counts(&out), (0, 0, 0, 0), "{}", out.json());
    assert_eq!(out.count("bytes_sent"), 0);

    // A real change, to another second: only that file goes.
    write_file(c, "b/c.txt", b"sea", ts(T0 + 100, 5));
    let out = rig.sync().run();
    out.assert_code(0);
    assert_eq!(counts(&out), (1, 1, 0, 0), "{}", out.json());
    assert_eq!(out.count("bytes_sent"), 3);
    assert_eq!(snapshot(&stored), truncated(snapshot(c)));
    assert_eq!(fs::read(stored.join("b/c.txt")).unwrap(), b"sea");

    let out = rig.sync().run();
    out.assert_code(0);
    assert_eq!(counts(&out), (0, 0, 0, 0), "{}", out.json());
    rig.assert_no_failed_session();
    drop(rig);
    drop(coarse);
}

//! Kept versions and point-in-time restore, end to end: a real server keeps what each sync
//! replaces or deletes, `filesync versions` lists it, and `filesync restore` writes the
//! client's folder exactly as the archive held it at any time between syncs.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use filesync_tests::{
    assert_dir_mtimes_equal, assert_trees_equal, copy_tree, filesync_bin, make_dir, remove,
    snapshot, ts, write_file, ServeCmd, Server, SyncCmd,
};

/// Runs `filesync ARGS`; returns its output.
fn filesync(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(filesync_bin())
        .args(args)
        .env_remove("FILESYNC_ROOT")
        .env_remove("FILESYNC_ID")
        .output()
        .expect("running filesync")
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

/// The current time as RFC 3339 with nanoseconds, between two syncs: sessions are
/// stamped with their start, so a pause on each side keeps it strictly between.
fn instant_between() -> String {
    std::thread::sleep(Duration::from_millis(20));
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let secs = t.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    // Civil date from days since 1970 (Howard Hinnant's algorithm), to avoid a dependency.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        t.subsec_nanos()
    )
}

fn sync(server: &Server, id: &str, dir: &Path) {
    SyncCmd::new(id, dir)
        .server(&server.addr())
        .run()
        .assert_code(0);
}

fn restore(root: &Path, id: &str, to: &Path, at: Option<&str>, paths: &[&str]) -> Output {
    let mut args = vec![
        os("restore"),
        os("--root"),
        root.as_os_str(),
        os("--id"),
        os(id),
        os("--to"),
        to.as_os_str(),
    ];
    if let Some(at) = at {
        args.extend([os("--at"), os(at)]);
    }
    args.extend(paths.iter().map(|p| os(p)));
    filesync(&args)
}

#[track_caller]
fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chmod(root: &Path, rel: &str, mode: u32) {
    fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).unwrap();
}

/// Four syncs that overwrite, delete, swap a file and a folder, and change links and
/// modes; a restore at each instant between them gives exactly the tree of that moment.
#[test]
fn restore_at_any_time_gives_the_tree_of_that_moment() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("srv");
    let server = Server::start(&root);
    let c = base.path().join("client");
    fs::create_dir(&c).unwrap();
    let refs = base.path().join("refs");
    fs::create_dir(&refs).unwrap();
    let mut points = Vec::new();

    // State 0: before anything was synced.
    points.push((instant_between(), None));

    // State 1.
    write_file(&c, "a.txt", b"first a", ts(1_600_000_000, 1));
    write_file(&c, "keep/k.bin", &[7u8; 3000], ts(1_600_000_001, 2));
    write_file(
        &c,
        "swap",
        b"a file that becomes a folder",
        ts(1_600_000_002, 3),
    );
    make_dir(&c, "was-dir/inner");
    write_file(&c, "was-dir/inner/x", b"x", ts(1_600_000_003, 4));
    write_file(&c, "secret", b"0600", ts(1_600_000_004, 5));
    chmod(&c, "secret", 0o600);
    std::os::unix::fs::symlink("a.txt", c.join("link")).unwrap();
    sync(&server, "v", &c);
    copy_tree(&c, &refs.join("1"));
    points.push((instant_between(), Some(refs.join("1"))));

    // State 2: overwrite, new file, file -> folder, folder -> file, link retargeted,
    // mode changed with new content.
    write_file(&c, "a.txt", b"second a, longer", ts(1_600_000_100, 6));
    write_file(&c, "new.txt", b"new", ts(1_600_000_101, 7));
    remove(&c, "swap");
    write_file(&c, "swap/now-a-folder", b"inside", ts(1_600_000_102, 8));
    remove(&c, "was-dir");
    write_file(&c, "was-dir", b"now a file", ts(1_600_000_103, 9));
    fs::remove_file(c.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", c.join("link")).unwrap();
    write_file(&c, "secret", b"0644 now", ts(1_600_000_104, 10));
    chmod(&c, "secret", 0o644);
    sync(&server, "v", &c);
    copy_tree(&c, &refs.join("2"));
    points.push((instant_between(), Some(refs.join("2"))));

    // State 3: a folder deleted whole, a file deleted, the link deleted.
    remove(&c, "keep");
    remove(&c, "new.txt");
    fs::remove_file(c.join("link")).unwrap();
    sync(&server, "v", &c);
    copy_tree(&c, &refs.join("3"));
    points.push((instant_between(), Some(refs.join("3"))));

    // An unchanged sync changes nothing and keeps nothing.
    sync(&server, "v", &c);

    let out = filesync(&[
        os("versions"),
        os("--root"),
        root.as_os_str(),
        os("--id"),
        os("v"),
        os("--json"),
    ]);
    assert_ok(&out);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = list.as_array().unwrap();
    let paths: Vec<_> = list.iter().map(|v| v["path"].as_str().unwrap()).collect();
    for p in [
        "keep",
        "keep/k.bin",
        "new.txt",
        "link",
        "a.txt",
        "swap",
        "was-dir",
        "secret",
    ] {
        assert!(paths.contains(&p), "{p} missing from {paths:?}");
    }
    let replaced: Vec<_> = list
        .iter()
        .map(|v| v["replaced_at"].as_str().unwrap())
        .collect();
    let mut newest_first = replaced.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(replaced, newest_first, "newest first");
    let a = list.iter().find(|v| v["path"] == "a.txt").unwrap();
    assert_eq!(a["size"], 7, "{a}");
    let s = list.iter().find(|v| v["path"] == "secret").unwrap();
    assert_eq!(s["mode"], "0600", "{s}");

    for (i, (at, reference)) in points.iter().enumerate() {
        let to = base.path().join(format!("restored-{i}"));
        let out = restore(&root, "v", &to, Some(at), &[]);
        match reference {
            Some(r) => {
                assert_ok(&out);
                assert_trees_equal(r, &to);
                assert_dir_mtimes_equal(r, &to);
            }
            // Before the first sync the archive held nothing: an error (5), not an
            // empty folder that would look like lost data.
            None => {
                assert_eq!(out.status.code(), Some(5), "{out:?}");
                assert!(!to.exists(), "before the first sync: no folder");
            }
        }
    }
    // A REPLACED AT as the table prints it (to the millisecond, cut), pasted back into
    // --at, gives the tree just after that change: the earliest is state 2's sync, the
    // first that replaced anything. (Read as that exact millisecond, it gave state 1.)
    let table = filesync(&[
        os("versions"),
        os("--root"),
        root.as_os_str(),
        os("--id"),
        os("v"),
    ]);
    assert_ok(&table);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    let earliest = table
        .lines()
        .skip(1)
        .map(|l| l[..29].trim())
        .min()
        .unwrap_or_else(|| panic!("no versions listed: {table}"));
    let pasted = base.path().join("restored-pasted");
    assert_ok(&restore(&root, "v", &pasted, Some(earliest), &[]));
    assert_trees_equal(&refs.join("2"), &pasted);

    // Without --at: as it is now.
    let now = base.path().join("restored-now");
    assert_ok(&restore(&root, "v", &now, None, &[]));
    assert_trees_equal(&c, &now);

    // Some paths only, at state 1.
    let part = base.path().join("restored-part");
    assert_ok(&restore(
        &root,
        "v",
        &part,
        Some(&points[1].0),
        &["keep", "was-dir/inner/x"],
    ));
    let got: Vec<_> = snapshot(&part).into_keys().collect();
    let want: Vec<std::path::PathBuf> = [
        "keep",
        "keep/k.bin",
        "was-dir",
        "was-dir/inner",
        "was-dir/inner/x",
    ]
    .iter()
    .map(Into::into)
    .collect();
    assert_eq!(got, want);
    assert_eq!(fs::read(part.join("keep/k.bin")).unwrap(), vec![7u8; 3000]);
}

#[test]
fn restore_never_writes_into_the_archive_or_over_files() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("srv");
    let server = Server::start(&root);
    let c = base.path().join("c");
    write_file(&c, "f", b"1", ts(1_600_000_000, 0));
    sync(&server, "r", &c);
    let before = snapshot(&root);
    for to in [
        root.join("inside"),
        root.join("client_r/x"),
        base.path().to_path_buf(),
    ] {
        let out = restore(&root, "r", &to, None, &[]);
        assert_eq!(out.status.code(), Some(5), "{}: {out:?}", to.display());
    }
    // A non-empty destination is refused too.
    let full = base.path().join("full");
    write_file(&full, "mine", b"do not touch", ts(1, 0));
    assert_eq!(restore(&root, "r", &full, None, &[]).status.code(), Some(5));
    assert_eq!(fs::read(full.join("mine")).unwrap(), b"do not touch");
    assert_eq!(snapshot(&root), before, "the archive is untouched");
    // An unknown client and a bad time are clear errors.
    let to = base.path().join("nobody");
    assert_eq!(
        restore(&root, "nobody", &to, None, &[]).status.code(),
        Some(5)
    );
    let out = restore(
        &root,
        "r",
        &base.path().join("t"),
        Some("last tuesday"),
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // A time before the client's first sync: the archive held nothing for it then.
    let early = base.path().join("early");
    let out = restore(&root, "r", &early, Some("2000-01-01T00:00:00Z"), &[]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("held nothing for client r"),
        "{out:?}"
    );
    assert!(!early.exists(), "no empty folder is left behind");

    // `versions` says the same of an unknown client (5) and of a root that is not there
    // (1), rather than "no kept versions"; a known client without any is not an error.
    let versions = |root: &Path, id: &str| {
        filesync(&[
            os("versions"),
            os("--root"),
            root.as_os_str(),
            os("--id"),
            os(id),
        ])
    };
    let out = versions(&root, "nobody");
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds nothing for client nobody"));
    let out = versions(&base.path().join("no-such-root"), "r");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-root"),
        "{out:?}"
    );
    let out = versions(&root, "r");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("no kept versions for client r"));
    // A folder that exists but is no server root says so.
    let out = versions(base.path(), "r");
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no .filesync folder"),
        "{out:?}"
    );
    // A path the archive did not hold: an error, and no empty folder left behind.
    let nowhere = base.path().join("nowhere");
    let out = restore(&root, "r", &nowhere, None, &["no-such-file"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("held nothing at no-such-file"),
        "{out:?}"
    );
    assert!(!nowhere.exists());
    // The path that is there restores.
    let there = base.path().join("there");
    assert_ok(&restore(&root, "r", &there, None, &["f"]));
    assert_eq!(fs::read(there.join("f")).unwrap(), b"1");
}

/// `--keep-versions 0` keeps nothing; a short retention purges old records after a
/// session, and a restore to before them says so instead of rebuilding a wrong tree.
#[test]
fn retention_purges_and_zero_keeps_nothing() {
    let base = tempfile::tempdir().unwrap();
    let c = base.path().join("c");
    write_file(&c, "f", b"1", ts(1_600_000_000, 0));

    let off = base.path().join("off");
    let server = ServeCmd::new(&off).arg("--keep-versions").arg("0").start();
    sync(&server, "z", &c);
    write_file(&c, "f", b"2", ts(1_600_000_001, 0));
    sync(&server, "z", &c);
    assert!(!off.join(".filesync/versions").exists(), "nothing kept");
    drop(server);

    let short = base.path().join("short");
    let server = ServeCmd::new(&short)
        .arg("--keep-versions")
        .arg("2s")
        .start();
    sync(&server, "p", &c);
    let early = instant_between();
    write_file(&c, "f", b"3", ts(1_600_000_002, 0));
    sync(&server, "p", &c);
    let records = || {
        fs::read_dir(short.join(".filesync/versions/client_p"))
            .unwrap()
            .count()
    };
    assert!(records() >= 2, "records and no purge yet");
    std::thread::sleep(Duration::from_millis(2500));
    write_file(&c, "f", b"4", ts(1_600_000_003, 0));
    sync(&server, "p", &c);
    let out = restore(&short, "p", &base.path().join("old"), Some(&early), &[]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("purged"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

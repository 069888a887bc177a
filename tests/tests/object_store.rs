//! The archive in an object store, end to end: `filesync serve --store s3://…` in front of a
//! real three-node Garage cluster (replication factor 3), with the real client, `filesync
//! restore --store` and `filesync versions --store`, and `rclone` reading the bucket as any
//! S3 tool would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use filesync_tests::garage::{garage_or_skip, GarageCluster};
use filesync_tests::{
    assert_trees_equal, copy_tree, filesync_bin, hold_slot, make_dir, remove, snapshot, ts,
    write_big_file, write_file, Relay, ServeCmd, Server, SyncCmd,
};

/// A three-node cluster, or `None` (the test is skipped) if Garage is not installed.
fn cluster(test: &str) -> Option<GarageCluster> {
    garage_or_skip(test)?;
    Some(GarageCluster::start(3).unwrap_or_else(|e| panic!("starting Garage: {e}")))
}

/// A server on the cluster's bucket under `prefix`.
fn serve(g: &GarageCluster, prefix: &str, extra: &[&str]) -> Server {
    let mut cmd = ServeCmd::new(Path::new("/nonexistent-root-unused"))
        .store(&g.store_url(prefix))
        .envs(g.env());
    for a in extra {
        cmd = cmd.arg(a);
    }
    cmd.start()
}

/// Runs `filesync ARGS` with the cluster's environment.
fn filesync(g: &GarageCluster, args: &[&str]) -> Output {
    Command::new(filesync_bin())
        .args(args)
        .envs(g.env())
        .env_remove("FILESYNC_ROOT")
        .env_remove("FILESYNC_ID")
        .output()
        .expect("running filesync")
}

/// Runs rclone against the cluster (its remote is in the environment); its stdout.
fn rclone(g: &GarageCluster, args: &[&str]) -> String {
    let out = Command::new("rclone")
        .args(args)
        .envs(g.env())
        // rclone's S3 client refuses a custom CA bundle it cannot use for plain HTTP.
        .env_remove("AWS_CA_BUNDLE")
        .output()
        .expect("running rclone");
    assert!(
        out.status.success(),
        "rclone {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Puts an object with rclone, as another tool would.
fn rclone_put(g: &GarageCluster, remote: &str, data: &[u8]) {
    use std::io::Write;
    let mut child = Command::new("rclone")
        .args(["rcat", remote])
        .envs(g.env())
        .env_remove("AWS_CA_BUNDLE")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("running rclone");
    child.stdin.take().unwrap().write_all(data).unwrap();
    assert!(child.wait().unwrap().success(), "rclone rcat {remote}");
}

/// The keys under `prefix` in the bucket, as rclone lists them.
fn keys(g: &GarageCluster, prefix: &str) -> Vec<String> {
    let mut k: Vec<String> = rclone(
        g,
        &[
            "lsf",
            "-R",
            "--files-only",
            &format!("{}/{prefix}", g.rclone_remote()),
        ],
    )
    .lines()
    .map(str::to_owned)
    .collect();
    k.sort();
    k
}

/// Restores client `id` from `store` into a new folder, at `at` if given.
fn restore(g: &GarageCluster, store: &str, id: &str, at: Option<&str>) -> tempfile::TempDir {
    let dest = tempfile::tempdir().unwrap();
    let to = dest.path().join("r");
    let mut args = vec![
        "restore",
        "--store",
        store,
        "--id",
        id,
        "--to",
        to.to_str().unwrap(),
    ];
    if let Some(t) = at {
        args.extend(["--at", t]);
    }
    let out = filesync(g, &args);
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dest
}

/// Now, as RFC 3339 with nanoseconds, strictly between two syncs.
fn now_rfc3339() -> String {
    std::thread::sleep(Duration::from_millis(20));
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%NZ"])
        .output()
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A tree with what fidelity asks for: names of any bytes, modes, nanosecond times, an
/// empty folder, a symlink, a FIFO, and a file large enough for a multipart upload.
fn varied_tree(dir: &Path) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    write_file(dir, "plain.txt", b"hello", ts(1_700_000_000, 123_456_789));
    write_file(
        dir,
        "données/été 100%.csv",
        "a;b\n".as_bytes(),
        ts(1_700_000_001, 1),
    );
    write_file(dir, "odd/[x] {y} #z ~w?.txt", b"odd", ts(1_700_000_002, 2));
    let latin1 = std::ffi::OsStr::from_bytes(b"odd/latin1-\xe9t\xe9");
    std::fs::write(dir.join(latin1), b"bytes").unwrap();
    filetime::set_file_mtime(dir.join(latin1), ts(1_700_000_003, 3)).unwrap();
    write_file(dir, "secret.key", b"k", ts(1_700_000_004, 4));
    std::fs::set_permissions(
        dir.join("secret.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    write_file(dir, "run.sh", b"#!/bin/sh\n", ts(1_700_000_005, 5));
    std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    make_dir(dir, "empty/inner");
    std::os::unix::fs::symlink("../plain.txt", dir.join("odd/link")).unwrap();
    filetime::set_symlink_file_times(
        dir.join("odd/link"),
        ts(1_700_000_006, 6),
        ts(1_700_000_006, 6),
    )
    .unwrap();
    let fifo = dir.join("odd/pipe");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    filetime::set_symlink_file_times(&fifo, ts(1_700_000_007, 7), ts(1_700_000_007, 7)).unwrap();
    write_big_file(&dir.join("big.bin"), 20, 7, ts(1_700_000_008, 8));
    // Folder times last: filling a folder moves its time.
    for d in ["données", "odd", "empty/inner", "empty"] {
        filetime::set_file_mtime(dir.join(d), ts(1_600_000_000, 9)).unwrap();
    }
}

#[test]
fn sync_change_delete_and_restore_through_the_store() {
    let Some(g) = cluster("sync_change_delete_and_restore_through_the_store") else {
        return;
    };
    let store = g.store_url("lab");
    let server = serve(&g, "lab", &[]);
    let src = tempfile::tempdir().unwrap();
    let c = src.path();
    varied_tree(c);

    let out = SyncCmd::new("scope", c).server(&server.addr()).run();
    out.assert_code(0);
    assert_eq!(out.count("files_stored"), 7, "{out}");

    // One object per file (links and FIFOs too) under PREFIX/client_<id>/<path>, with
    // the names people gave: any S3 tool reads the archive.
    let listed = keys(&g, "lab/client_scope");
    for k in [
        "big.bin",
        "données/été 100%25.csv",
        "odd/link",
        "odd/pipe",
        "plain.txt",
        "run.sh",
        "secret.key",
    ] {
        assert!(listed.iter().any(|l| l == k), "{k} not in {listed:?}");
    }
    assert_eq!(
        rclone(
            &g,
            &[
                "cat",
                &format!("{}/lab/client_scope/plain.txt", g.rclone_remote())
            ]
        ),
        "hello"
    );
    // The large file went up as a multipart upload (its ETag says how many parts).
    let etag = rclone(
        &g,
        &[
            "lsjson",
            "--hash",
            &format!("{}/lab/client_scope/big.bin", g.rclone_remote()),
        ],
    );
    assert!(etag.contains("big.bin"), "{etag}");

    // The whole tree comes back exactly: content, modes, mtimes to the nanosecond, empty
    // folders, the link's target, the FIFO, the bytes of every name.
    let back = restore(&g, &store, "scope", None);
    assert_trees_equal(c, &back.path().join("r"));

    // A sync that changes nothing stores nothing.
    let out = SyncCmd::new("scope", c).server(&server.addr()).run();
    out.assert_code(0);
    assert_eq!(out.count("files_stored"), 0, "{out}");

    // What other tools read: rclone sees the file's mtime (it reads its own `mtime`
    // key), not the upload's. A mode-only change writes the object anew, so that its
    // metadata says the new mode (S3 cannot change metadata in place).
    let meta = || -> serde_json::Value {
        let out = rclone(
            &g,
            &[
                "lsjson",
                "-M",
                &format!("{}/lab/client_scope/plain.txt", g.rclone_remote()),
            ],
        );
        serde_json::from_str::<serde_json::Value>(&out).unwrap()[0].clone()
    };
    let m = meta();
    assert!(
        m["ModTime"]
            .as_str()
            .is_some_and(|t| t.starts_with("2023-11-14T22:13:20.123456789")),
        "{m}"
    );
    assert_eq!(m["Metadata"]["filesync-mode"], "644", "{m}");
    std::fs::set_permissions(
        c.join("plain.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let out = SyncCmd::new("scope", c).server(&server.addr()).run();
    out.assert_code(0);
    assert_eq!(out.count("files_stored"), 1, "{out}");
    assert_eq!(meta()["Metadata"]["filesync-mode"], "600", "{}", meta());

    // Change, delete, add; the state before is kept.
    let before = tempfile::tempdir().unwrap();
    copy_tree(c, &before.path().join("t"));
    let t1 = now_rfc3339();
    write_file(c, "plain.txt", b"changed", ts(1_700_000_100, 0));
    remove(c, "odd");
    write_file(c, "new/file", b"new", ts(1_700_000_101, 0));
    let out = SyncCmd::new("scope", c).server(&server.addr()).run();
    out.assert_code(0);
    assert_eq!(out.count("files_stored"), 2, "{out}");
    assert!(out.count("deleted") >= 4, "{out}");
    assert!(!keys(&g, "lab/client_scope")
        .iter()
        .any(|k| k.starts_with("odd/")));

    assert_trees_equal(c, &restore(&g, &store, "scope", None).path().join("r"));
    let then = restore(&g, &store, "scope", Some(&t1));
    let then = then.path().join("r");
    let reference = before.path().join("t");
    // Folder times are not versioned (as on the local store): compare everything else.
    let strip = |m: BTreeMap<PathBuf, filesync_tests::Node>| {
        m.into_iter()
            .filter(|(_, n)| !matches!(n, filesync_tests::Node::Dir { .. }))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(strip(snapshot(&then)), strip(snapshot(&reference)));

    let v = filesync(&g, &["versions", "--store", &store, "--id", "scope"]);
    let v = String::from_utf8_lossy(&v.stdout).into_owned();
    assert!(v.contains("plain.txt") && v.contains("odd/pipe"), "{v}");

    // A mistyped id or prefix is an error (5), as on a local root, not "no kept versions";
    // a client held without versions is listed as having none (0).
    let other_prefix = g.store_url("scopee");
    for (store, id) in [(store.as_str(), "nosuch"), (other_prefix.as_str(), "scope")] {
        let out = filesync(&g, &["versions", "--store", store, "--id", id]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{store} {id}: {err}");
        assert!(err.contains("holds nothing for client"), "{err}");
    }
    let fresh = tempfile::tempdir().unwrap();
    write_file(fresh.path(), "f", b"f", ts(1_700_000_000, 0));
    SyncCmd::new("unversioned", fresh.path())
        .server(&server.addr())
        .run()
        .assert_code(0);
    let out = filesync(&g, &["versions", "--store", &store, "--id", "unversioned"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("no kept versions"));
}

#[test]
fn changes_made_by_other_tools_are_noticed_and_the_guards_hold() {
    let Some(g) = cluster("changes_made_by_other_tools_are_noticed_and_the_guards_hold") else {
        return;
    };
    let server = serve(&g, "x", &["--max-delete-percent", "100"]);
    let src = tempfile::tempdir().unwrap();
    let c = src.path();
    for i in 0..10 {
        write_file(
            c,
            &format!("f{i}"),
            format!("data {i}").as_bytes(),
            ts(1_700_000_000, i),
        );
    }
    SyncCmd::new("t", c)
        .server(&server.addr())
        .run()
        .assert_code(0);

    // Another tool deletes one object and adds one: the next sync puts back the first
    // and deletes the second, although the index said otherwise.
    let remote = format!("{}/x/client_t", g.rclone_remote());
    rclone(&g, &["deletefile", &format!("{remote}/f3")]);
    rclone_put(&g, &format!("{remote}/intruder"), b"put by another tool");
    let out = SyncCmd::new("t", c).server(&server.addr()).run();
    out.assert_code(0);
    assert_eq!(out.count("files_stored"), 1, "{out}");
    assert_eq!(out.count("deleted"), 1, "{out}");
    let k = keys(&g, "x/client_t");
    assert!(
        k.contains(&"f3".to_owned()) && !k.contains(&"intruder".to_owned()),
        "{k:?}"
    );

    // An empty source never empties the archive.
    let empty = tempfile::tempdir().unwrap();
    let out = SyncCmd::new("t", empty.path()).server(&server.addr()).run();
    out.assert_code(7);
    assert_eq!(keys(&g, "x/client_t").len(), 10);

    // --max-delete holds.
    for i in 0..4 {
        std::fs::remove_file(c.join(format!("f{i}"))).unwrap();
    }
    let out = SyncCmd::new("t", c)
        .server(&server.addr())
        .arg("--max-delete")
        .arg("1")
        .run();
    out.assert_code(8);
    assert_eq!(out.count("deleted"), 1, "{out}");
    assert_eq!(keys(&g, "x/client_t").len(), 9);
}

#[test]
fn servers_of_one_store_share_a_key_and_a_lease() {
    let Some(g) = cluster("servers_of_one_store_share_a_key_and_a_lease") else {
        return;
    };
    let Some(mut etcd) = filesync_tests::etcd::etcd_or_skip("servers_share_a_lease")
        .map(|_| filesync_tests::etcd::Etcd::start().expect("starting etcd"))
    else {
        return;
    };
    let lease = etcd.url();
    let a = serve(&g, "shared", &["--lease", &lease]);
    let b = serve(&g, "shared", &["--lease", &lease]);
    // One key for all: a client pins one per id, whichever server answers.
    let key = |s: &Server| {
        let line = "filesync serve: server key ";
        assert!(filesync_tests::poll_until(Duration::from_secs(10), || s
            .stdout()
            .contains(line)));
        s.stdout()
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .map(|k| k.trim_end_matches(" (new)").to_owned())
    };
    assert!(key(&a).is_some());
    assert_eq!(key(&a), key(&b));
    // Three servers started at once on a new prefix make one key between them: they
    // look for it, and make it, under a lock in etcd.
    let racing: Vec<Server> = std::thread::scope(|s| {
        let starts: Vec<_> = (0..3)
            .map(|_| s.spawn(|| serve(&g, "racing", &["--lease", &lease])))
            .collect();
        starts.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let keys: Vec<_> = racing.iter().map(|s| key(s).unwrap()).collect();
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
    let made = racing
        .iter()
        .filter(|s| s.stdout().contains(" (new)"))
        .count();
    assert_eq!(made, 1, "one server made the key");
    drop(racing);

    // While a session of `lab` runs on A, B refuses one.
    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "f", b"f", ts(1_700_000_000, 0));
    let held = hold_slot(&a.addr(), "lab");
    assert!(a.wait_for_log("session started", Duration::from_secs(10)));
    let out = SyncCmd::new("lab", src.path()).server(&b.addr()).run();
    out.assert_code(4);
    assert!(out.stderr.contains("already running on"), "{out}");
    drop(held);
    // Once A's session ends, B serves it.
    assert!(filesync_tests::poll_until(Duration::from_secs(20), || {
        SyncCmd::new("lab", src.path()).server(&b.addr()).run().code == 0
    }));

    // Without etcd, no session starts (no unguarded session), and the servers keep
    // serving once it is back.
    etcd.kill();
    // A server that cannot reach its lease service at start fails (1) without ever
    // saying it listens; a malformed --lease or --store is a usage error (2).
    let start = |store: &str, lease: &str| {
        Command::new(filesync_bin())
            .args(["serve", "--port", "0", "--no-discovery", "--store", store])
            .args(["--lease", lease])
            .envs(g.env())
            .output()
            .expect("running filesync serve")
    };
    let out = start(&g.store_url("shared"), &lease);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "{out:?}"
    );
    for (store, lease) in [
        (g.store_url("shared"), "http://127.0.0.1:2379".to_owned()),
        ("filesync-test/shared".to_owned(), lease.clone()),
    ] {
        let out = start(&store, &lease);
        assert_eq!(out.status.code(), Some(2), "{store} {lease}: {out:?}");
    }
    let out = SyncCmd::new("lab", src.path()).server(&a.addr()).run();
    assert_ne!(out.code, 0, "{out}");
    assert!(out.stderr.contains("lease service"), "{out}");
    etcd.restart().unwrap();
    assert!(filesync_tests::poll_until(Duration::from_secs(20), || {
        SyncCmd::new("lab", src.path()).server(&a.addr()).run().code == 0
    }));
}

/// A server that stalls past its lease (its host paused) while another server serves the
/// same client writes nothing once it wakes: the other session's archive stands whole,
/// the empty folder and folder modes that live only in the client's index included.
#[test]
fn a_server_paused_past_its_lease_writes_nothing_when_it_wakes() {
    use std::os::unix::fs::PermissionsExt;
    let test = "a_server_paused_past_its_lease_writes_nothing_when_it_wakes";
    let Some(g) = cluster(test) else {
        return;
    };
    let Some(etcd) = filesync_tests::etcd::etcd_or_skip(test)
        .map(|_| filesync_tests::etcd::Etcd::start().expect("starting etcd"))
    else {
        return;
    };
    let lease = etcd.url();
    let mut a = serve(&g, "fenced", &["--lease", &lease]);
    let b = serve(&g, "fenced", &["--lease", &lease]);

    // A's client: 40 files of 64 KiB, through a relay that stalls after 1 MiB, so that
    // A's session has planned, holds the client's tree and has stored a part of it.
    let first = tempfile::tempdir().unwrap();
    for i in 0..40u32 {
        let data = vec![u8::try_from(i).unwrap(); 64 << 10];
        write_file(
            first.path(),
            &format!("d/f{i:02}"),
            &data,
            ts(1_700_000_000, i),
        );
    }
    let relay = Relay::start(&a.addr(), filesync_tests::Fault::Stall { after: 1 << 20 });
    let stalled = SyncCmd::new("lab", first.path())
        .server(&relay.addr())
        .timeout(Duration::from_secs(120))
        .spawn();
    assert!(
        filesync_tests::poll_until(Duration::from_secs(30), || relay.faulted() > 0),
        "the relay never stalled: {}",
        a.log()
    );
    // Its first files stored, A freezes past its lease.
    std::thread::sleep(Duration::from_secs(1));
    a.pause();

    // Meanwhile B serves the client, once etcd has let A's lease go: the same files, and
    // a folder that only the index holds (empty, mode 700).
    let tmp = tempfile::tempdir().unwrap();
    let second = tmp.path().join("second");
    copy_tree(first.path(), &second);
    write_file(&second, "b-only/x", b"x", ts(1_700_000_100, 0));
    make_dir(&second, "b-only/empty");
    for d in ["b-only/empty", "b-only"] {
        std::fs::set_permissions(second.join(d), std::fs::Permissions::from_mode(0o700)).unwrap();
        filesync_tests::set_mtime(&second, d, ts(1_700_000_200, 0));
    }
    assert!(
        filesync_tests::poll_until(Duration::from_secs(40), || {
            SyncCmd::new("lab", &second).server(&b.addr()).run().code == 0
        }),
        "B never served the client: {}",
        b.log()
    );

    // A wakes, finds its lease lost, and ends its session without writing.
    a.resume();
    assert!(
        a.wait_for_log("session failed", Duration::from_secs(30)),
        "A's session did not end: {}",
        a.log()
    );
    let log = a.log();
    assert!(log.contains("the session's lease was lost"), "{log}");
    assert!(log.contains("index was not written"), "{log}");
    drop(stalled);

    // The archive is B's tree, whole.
    let back = restore(&g, &g.store_url("fenced"), "lab", None);
    assert_trees_equal(&second, &back.path().join("r"));
    filesync_tests::assert_dir_mtimes_equal(&second, &back.path().join("r"));
}

/// A server on a store keeps its sessions' spools in a scratch folder under `TMPDIR`; one
/// killed with SIGKILL leaves it, and the next server to start removes it.
#[test]
fn a_killed_servers_scratch_folder_is_removed_by_the_next_server() {
    let Some(g) = cluster("a_killed_servers_scratch_folder_is_removed_by_the_next_server") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let scratch = || -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("filesync-scratch-"))
            })
            .collect();
        v.sort();
        v
    };
    let start = || {
        ServeCmd::new(Path::new("/nonexistent-root-unused"))
            .store(&g.store_url("scratch"))
            .envs(g.env())
            .env("TMPDIR", tmp.path())
            .start()
    };
    let mut first = start();
    let left = scratch();
    assert_eq!(left.len(), 1, "{left:?}");
    first.kill();
    assert_eq!(scratch(), left, "SIGKILL left no scratch folder behind");

    let mut second = start();
    let now = scratch();
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(
        now, left,
        "the killed server's scratch folder is still there"
    );
    // A server that stops removes its own.
    second
        .terminate(Duration::from_secs(20))
        .expect("the server stops");
    assert_eq!(scratch(), Vec::<PathBuf>::new());
}

#[test]
fn authentication_holds_and_a_pin_fits_every_server_of_the_store() {
    use std::os::unix::fs::PermissionsExt;
    let Some(g) = cluster("authentication_holds_and_a_pin_fits_every_server_of_the_store") else {
        return;
    };
    let secrets = tempfile::tempdir().unwrap();
    let secret = "5".repeat(64);
    let auth = secrets.path().join("auth");
    std::fs::write(&auth, format!("cam {secret}\n")).unwrap();
    let secret_file = secrets.path().join("secret");
    std::fs::write(&secret_file, &secret).unwrap();
    for f in [&auth, &secret_file] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let known = secrets.path().join("known_servers");
    let auth_arg = auth.to_str().unwrap();
    let a = serve(&g, "sec", &["--auth-file", auth_arg]);
    let b = serve(&g, "sec", &["--auth-file", auth_arg]);
    let src = tempfile::tempdir().unwrap();
    write_file(src.path(), "f", b"secret data", ts(1_700_000_000, 0));
    let sync = |s: &Server, secret: &Path| {
        SyncCmd::new("cam", src.path())
            .server(&s.addr())
            .arg("--secret-file")
            .arg(secret)
            .arg("--known-servers")
            .arg(&known)
            .run()
    };
    // First use pins the store's key on A; B, another process on another port, has
    // the same key, so the pin holds there too.
    sync(&a, &secret_file).assert_code(0);
    write_file(src.path(), "g", b"more", ts(1_700_000_001, 0));
    sync(&b, &secret_file).assert_code(0);
    // A wrong secret gets nothing in.
    let wrong = secrets.path().join("wrong");
    std::fs::write(&wrong, "6".repeat(64)).unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    write_file(src.path(), "h", b"not stored", ts(1_700_000_002, 0));
    sync(&b, &wrong).assert_code(9);
    assert_eq!(keys(&g, "sec/client_cam"), ["f", "g"]);
}

/// The S3 requests (`METHOD /path`) the relay carried so far, by connection, each in
/// order (connections are kept alive and reused from one session to the next).
fn requests(relay: &Relay) -> Vec<Vec<String>> {
    let mut all = Vec::new();
    for c in relay.captures() {
        let mut out = Vec::new();
        let text = String::from_utf8_lossy(&c.up).into_owned();
        // A request line may follow a body with no line break between.
        for line in text.split("\r\n").filter(|l| l.ends_with(" HTTP/1.1")) {
            let at = ["GET /", "PUT /", "HEAD /", "POST /", "DELETE /"]
                .iter()
                .filter_map(|m| line.find(m))
                .min();
            if let Some(at) = at {
                out.push(line[at..].trim_end_matches(" HTTP/1.1").to_owned());
            }
        }
        all.push(out);
    }
    all
}

/// The requests in `after` that `before` did not have yet.
fn since(before: &[Vec<String>], after: Vec<Vec<String>>) -> Vec<String> {
    after
        .into_iter()
        .enumerate()
        .flat_map(|(i, mut c)| c.split_off(before.get(i).map_or(0, Vec::len)))
        .collect()
}

#[test]
fn a_sync_that_changes_nothing_costs_a_few_requests_not_one_per_file() {
    let Some(g) = cluster("a_sync_that_changes_nothing_costs_a_few_requests_not_one_per_file")
    else {
        return;
    };
    // The server reaches Garage through a relay that records every request.
    let relay = Relay::recording(g.endpoint().trim_start_matches("http://"));
    let env = g.env().into_iter().map(|(k, v)| match k.as_str() {
        "AWS_ENDPOINT" | "AWS_ENDPOINT_URL" => (k, format!("http://{}", relay.addr())),
        _ => (k, v),
    });
    let server = ServeCmd::new(Path::new("/nonexistent-root-unused"))
        .store(&g.store_url("idx"))
        .envs(env)
        .start();
    let src = tempfile::tempdir().unwrap();
    for i in 0..300 {
        write_file(
            src.path(),
            &format!("d{}/f{i}", i % 7),
            b"x",
            ts(1_700_000_000, i),
        );
    }
    SyncCmd::new("n", src.path())
        .server(&server.addr())
        .run()
        .assert_code(0);
    let before = requests(&relay);
    let puts = before
        .iter()
        .flatten()
        .filter(|r| r.starts_with("PUT "))
        .count();
    assert!(puts >= 300, "one put per file at first: {puts}");

    let out = SyncCmd::new("n", src.path()).server(&server.addr()).run();
    out.assert_code(0);
    assert_eq!(out.count("files_stored"), 0, "{out}");
    let during = since(&before, requests(&relay));
    // The index and one listing page (1,000 keys a page): no HEAD, no GET per file,
    // and nothing written when nothing changed.
    assert!(during.len() <= 3, "{during:#?}");
    assert!(during.iter().all(|r| r.starts_with("GET ")), "{during:#?}");

    // A change by another tool costs a request for that object only.
    rclone_put(
        &g,
        &format!("{}/idx/client_n/d0/f0", g.rclone_remote()),
        b"changed elsewhere",
    );
    let before = requests(&relay);
    let out = SyncCmd::new("n", src.path()).server(&server.addr()).run();
    out.assert_code(0);
    assert_eq!(out.count("files_stored"), 1, "put back: {out}");
    let during = since(&before, requests(&relay));
    let heads = during.iter().filter(|r| r.starts_with("HEAD ")).count();
    assert_eq!(heads, 1, "{during:#?}");
    assert!(during.len() <= 8, "{during:#?}");
}

#[test]
fn a_stopped_storage_node_does_not_stop_syncs_or_restores() {
    let Some(mut g) = cluster("a_stopped_storage_node_does_not_stop_syncs_or_restores") else {
        return;
    };
    let store = g.store_url("ha");
    let server = serve(&g, "ha", &[]);
    let src = tempfile::tempdir().unwrap();
    let c = src.path();
    write_file(c, "before", b"1", ts(1_700_000_000, 0));
    SyncCmd::new("ha", c)
        .server(&server.addr())
        .run()
        .assert_code(0);
    // The server talks to node 0; stopping another leaves a quorum of two of three.
    g.stop_node(2).unwrap();
    write_file(c, "during", &vec![7u8; 3 << 20], ts(1_700_000_001, 0));
    write_file(c, "before", b"2", ts(1_700_000_002, 0));
    let out = SyncCmd::new("ha", c).server(&server.addr()).run();
    out.assert_code(0);
    assert_eq!(out.count("files_stored"), 2, "{out}");
    assert_trees_equal(c, &restore(&g, &store, "ha", None).path().join("r"));
    g.start_node(2).unwrap();
}

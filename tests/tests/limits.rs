//! Many files under an ordinary descriptor limit, with a disk slower than the network.
//!
//! Server and client each run with `RLIMIT_NOFILE` 256, soft and hard (the binary raises
//! its soft limit to the hard one at start, so both are set), and the server's disk is
//! made slower than the loopback network with the [`SLOW_DISK_ENV`] test hook. Each sync
//! must exit 0 with nothing failed, and the server's copy must equal the client's folder
//! exactly.
//!
//! Regression: before 028e52f the server kept every staged temporary file open until its
//! batch of 512 was synced, and queued batches for the disk without bound, so files came
//! back "storage (6) creating a temporary file: Too many open files" (exit 6) as soon as
//! a batch outgrew the limit or the disk lagged behind the network.

use std::path::Path;
use std::time::{Duration, Instant};

use filesync_core::store::SLOW_DISK_ENV;
use filesync_tests::{
    assert_dir_mtimes_equal, assert_trees_equal, file_totals, make_dir, nofile_limits, poll_until,
    snapshot, temp_files, ts, write_file, ServeCmd, SyncCmd, SyncOutput,
};

/// Soft and hard limit on open descriptors of the server and the client.
const NOFILE: u64 = 256;
/// Milliseconds the server's disk adds to each batch sync.
const SLOW_DISK_MS: u64 = 150;
/// Base of the files' mtimes (2020-09-13).
const T0: i64 = 1_600_000_000;

/// The shape of a generated tree: `top` folders, each holding `sub` folders and an empty
/// one; files spread round-robin over the `top * sub` leaf folders, sizes `0..=max_size`
/// bytes. `top * (sub + 2)` folders in all.
struct Shape {
    top: usize,
    sub: usize,
    files: usize,
    max_size: usize,
}

/// A generated file: its path and current size.
struct Gen {
    rel: String,
    size: usize,
}

/// The content of file `i` in its `version`: `size` bytes cut from a fixed pseudo-random
/// block at an offset of its own, stamped with its index and version, so that a file
/// stored under the wrong name, or an old version, shows in the comparison.
fn content(block: &[u8], i: usize, version: u64, size: usize) -> Vec<u8> {
    let off = (i.wrapping_mul(7919) + version as usize * 131) % (block.len() - size);
    let mut v = block[off..off + size].to_vec();
    let stamp = [(i as u64).to_le_bytes(), version.to_le_bytes()].concat();
    let n = v.len().min(stamp.len());
    v[..n].copy_from_slice(&stamp[..n]);
    v
}

/// A size in `0..=max` for file `i` (a multiplicative hash, so that sizes vary between
/// neighbours and some files are empty).
fn size_of(i: usize, max: usize) -> usize {
    (i.wrapping_mul(2_654_435_761) >> 7) % (max + 1)
}

/// Writes the tree under `c` and returns its files. Mtimes differ per file, with
/// nanoseconds. Each top folder also holds one empty folder.
fn build(c: &Path, shape: &Shape) -> Vec<Gen> {
    let block = filesync_tests::pseudo_random(1 << 16, 42);
    let leaves = shape.top * shape.sub;
    for t in 0..shape.top {
        make_dir(c, &format!("t{t:03}/empty"));
        for s in 0..shape.sub {
            make_dir(c, &format!("t{t:03}/s{s:03}"));
        }
    }
    (0..shape.files)
        .map(|i| {
            let leaf = i % leaves;
            let rel = format!(
                "t{:03}/s{:03}/f{i:06}.dat",
                leaf / shape.sub,
                leaf % shape.sub
            );
            let size = size_of(i, shape.max_size);
            write_file(
                c,
                &rel,
                &content(&block, i, 0, size),
                ts(T0 + i as i64, (i as u32 * 7_919) % 1_000_000_000),
            );
            Gen { rel, size }
        })
        .collect()
}

/// Rewrites every hundredth file (content, size and mtime change). Returns how many.
fn change_one_percent(c: &Path, files: &mut [Gen], max_size: usize) -> u64 {
    let block = filesync_tests::pseudo_random(1 << 16, 42);
    let mut changed = 0;
    for (i, f) in files.iter_mut().enumerate().filter(|(i, _)| i % 100 == 42) {
        f.size = (f.size + 1) % (max_size + 1);
        write_file(
            c,
            &f.rel,
            &content(&block, i, 1, f.size),
            ts(T0 + 10_000_000 + i as i64, 123_456_789),
        );
        changed += 1;
    }
    changed
}

/// Asserts that process `pid` runs with both descriptor limits at [`NOFILE`].
#[track_caller]
fn assert_limited(pid: u32, who: &str) {
    let want = NOFILE.to_string();
    let mut seen = None;
    // Both are started through bash, which sets the limit just before it execs the
    // binary: give it a moment.
    let ok = poll_until(Duration::from_secs(10), || {
        seen = nofile_limits(pid);
        seen.as_ref().is_some_and(|(s, h)| *s == want && *h == want)
    });
    assert!(
        ok,
        "{who} (pid {pid}) should run with soft and hard RLIMIT_NOFILE {NOFILE}; \
         /proc says {seen:?}"
    );
}

/// The output of a sync for a failure message, its log cut to the first lines: a sync
/// whose files all fail logs one warning per file, 20,000 lines here.
fn brief(out: &SyncOutput) -> String {
    const SHOWN: usize = 20;
    let lines: Vec<&str> = out.stderr.lines().collect();
    format!(
        "filesync sync exited {} after {:?}\n--- stdout\n{}\
         --- stderr ({} lines, the first {})\n{}\n---",
        out.code,
        out.elapsed,
        out.stdout,
        lines.len(),
        SHOWN.min(lines.len()),
        lines[..SHOWN.min(lines.len())].join("\n")
    )
}

/// Asserts exit 0 and the summary's counts: `files` requested and stored, none failed,
/// nothing deleted, and `bytes` sent if given.
#[track_caller]
fn assert_synced(out: &SyncOutput, files: u64, bytes: Option<u64>) {
    assert_eq!(out.code, 0, "unexpected exit code; {}", brief(out));
    let got = (
        out.count("files_requested"),
        out.count("files_stored"),
        out.count("files_failed"),
        out.count("deleted"),
    );
    assert_eq!(
        got,
        (files, files, 0, 0),
        "(files_requested, files_stored, files_failed, deleted); {}",
        brief(out)
    );
    if let Some(b) = bytes {
        assert_eq!(out.count("bytes_sent"), b, "bytes_sent; {}", brief(out));
    }
}

/// Asserts that the server holds exactly the client's folder and nothing half-done.
#[track_caller]
fn assert_mirrored(c: &Path, root: &Path, stored: &Path) {
    assert_trees_equal(c, stored);
    assert_dir_mtimes_equal(c, stored);
    assert_eq!(
        temp_files(root),
        Vec::<String>::new(),
        "temporary files left"
    );
}

/// Three syncs of the tree `shape` (initial, 1% changed, no change), server and client
/// both under the descriptor limit and the server's disk slowed by `slow_disk_ms`.
fn three_syncs_under_limit(id: &str, shape: &Shape, slow_disk_ms: u64, timeout: Duration) {
    let client = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let c = client.path();
    let stored = root.path().join(format!("client_{id}"));

    let t = Instant::now();
    let mut files = build(c, shape);
    let (n, bytes) = file_totals(&snapshot(c));
    assert_eq!(n, shape.files as u64);
    eprintln!(
        "{id}: built {} files ({bytes} bytes) in {} folders in {:?}",
        shape.files,
        shape.top * (shape.sub + 2),
        t.elapsed()
    );

    let mut server = ServeCmd::new(root.path())
        .nofile_limit(NOFILE)
        .env(SLOW_DISK_ENV, slow_disk_ms.to_string())
        .start();
    assert_limited(server.pid(), "the server");
    let sync = || {
        SyncCmd::new(id, c)
            .server(&server.addr())
            .nofile_limit(NOFILE)
            .timeout(timeout)
    };

    // Initial sync: every file crosses, in hundreds of batches.
    let run = sync().spawn();
    assert_limited(run.pid(), "the client");
    let out = run.wait();
    eprintln!("{id}: initial sync took {:?}", out.elapsed);
    assert_synced(&out, n, Some(bytes));
    let t = Instant::now();
    assert_mirrored(c, root.path(), &stored);
    eprintln!("{id}: compared the trees in {:?}", t.elapsed());

    // 1% changed.
    let changed = change_one_percent(c, &mut files, shape.max_size);
    let out = sync().run();
    eprintln!("{id}: 1% sync took {:?}", out.elapsed);
    assert_synced(&out, changed, None);
    assert_mirrored(c, root.path(), &stored);

    // No change.
    let out = sync().run();
    eprintln!("{id}: no-change sync took {:?}", out.elapsed);
    assert_synced(&out, 0, Some(0));
    assert_mirrored(c, root.path(), &stored);

    assert!(
        server.wait_for_log_count("session done", 3, Duration::from_secs(10)),
        "server log:\n{}",
        server.log()
    );
    let log = server.log();
    assert!(
        !log.contains("session failed") && !log.contains("Too many open files"),
        "server log:\n{log}"
    );
    assert!(server.is_running(), "server log:\n{log}");
    assert!(
        server
            .terminate(Duration::from_secs(10))
            .is_some_and(|s| s.success()),
        "the server did not exit 0 on SIGTERM; log:\n{}",
        server.log()
    );
}

/// 20,000 files of 0 to 2 KiB in 330 folders: about 40 batches of 512, each held up
/// [`SLOW_DISK_MS`] by the disk, so the receiver runs ahead of the placer all along.
#[test]
fn twenty_thousand_files_under_ulimit_256_with_a_slow_disk() {
    let shape = Shape {
        top: 10,
        sub: 31,
        files: 20_000,
        max_size: 2048,
    };
    three_syncs_under_limit("limits-20k", &shape, SLOW_DISK_MS, Duration::from_secs(180));
}

/// 200,000 entries (2,080 folders, 197,920 files of 0 to 1 KiB), same limits and slow disk:
/// about 390 batches, so the placer's queue stays full for over a minute.
///
/// Ignored by default: in a debug build it took 3 to 4.5 minutes on a busy 2-core machine
/// (building and comparing the trees and deleting 400,000 files take as long as the
/// syncs). Run it with
/// `cargo test -p filesync-tests --test limits -- --ignored two_hundred_thousand`.
/// The benchmark's `many` case (`bench/run.sh --cases many`, 200,000 tiny files) covers
/// this scale in release builds, though without the lowered descriptor limit.
#[test]
#[ignore = "3 to 5 minutes in a debug build; run with --ignored (see its doc)"]
fn two_hundred_thousand_entries_under_ulimit_256_with_a_slow_disk() {
    let shape = Shape {
        top: 40,
        sub: 50,
        files: 200_000 - 40 * 52,
        max_size: 1024,
    };
    three_syncs_under_limit(
        "limits-200k",
        &shape,
        SLOW_DISK_MS,
        Duration::from_secs(600),
    );
}

//! How finely a filesystem keeps modification times, and comparing times within that
//! precision (rsync's `--modify-window`, rclone's automatic precision).
//!
//! A file synced onto a filesystem that keeps whole seconds reads back with a different
//! mtime than the client's nanosecond one, and would be sent again on every sync unless
//! the comparison allows for it. [`detect`] measures the precision of the filesystem
//! under a directory by setting probe times on a scratch file and reading them back;
//! [`classify`] is its pure part, and [`same_within`] the comparison.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use filetime::FileTime;

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// The steps [`classify`] can report, coarsest first, in nanoseconds: 2 s (FAT), 1 s (ext4
/// with 128-byte inodes, ext3, HFS+, some NFS servers), each power of ten down to 1 ns
/// (10 ms exFAT, 100 ns NTFS and SMB, 1 µs some FUSE and network filesystems, 1 ns ext4,
/// xfs, btrfs, tmpfs). Each divides the ones before it.
const STEPS: [i128; 11] = [
    2_000_000_000,
    1_000_000_000,
    100_000_000,
    10_000_000,
    1_000_000,
    100_000,
    10_000,
    1_000,
    100,
    10,
    1,
];

/// A time as (seconds since the epoch, nanoseconds below 1e9); negative seconds are before
/// 1970.
pub type Stamp = (i64, u32);

/// The probe times [`detect`] sets, as (seconds, nanoseconds) since the epoch, all in
/// 2020 (within the range of FAT, and of ext4's 32-bit seconds).
///
/// Chosen so that rounding to any step [`classify`] knows, down, up or to the nearest, leaves
/// at least one read-back that is not a multiple of the next coarser step: nonzero digits
/// at every decimal place, and odd and even seconds with fractions, so that even a
/// filesystem that rounds up to whole seconds shows an odd second (`…002.71` → `…003`).
pub const PROBES: [Stamp; 3] = [
    (1_600_000_001, 123_456_789),
    (1_600_000_002, 712_345_678),
    (1_600_000_003, 999_999_999),
];

/// The finest mtime step the filesystem under `dir` keeps: 1 ns on ext4 with large
/// inodes, xfs, btrfs and tmpfs; 1 s on ext4 with 128-byte inodes and some NFS servers;
/// 2 s on FAT.
///
/// Creates a scratch file in `dir` (a hidden, unique name, removed again, also on
/// error), sets its mtime to each of [`PROBES`] and reads it back, then [`classify`]s the
/// pairs. Fails if the file cannot be made or its time set (a read-only directory), or
/// with [`io::ErrorKind::Unsupported`] if the times read back are not the probes at any
/// step up to 2 s (a filesystem that ignores or mangles mtimes).
pub fn detect(dir: &Path) -> io::Result<Duration> {
    let (file, guard) = scratch_file(dir)?;
    let mut pairs = [((0, 0), (0, 0)); PROBES.len()];
    for (pair, &(secs, nanos)) in pairs.iter_mut().zip(PROBES.iter()) {
        let requested = FileTime::from_unix_time(secs, nanos);
        filetime::set_file_handle_times(&file, None, Some(requested))?;
        let got = FileTime::from_last_modification_time(&file.metadata()?);
        *pair = ((secs, nanos), (got.unix_seconds(), got.nanoseconds()));
    }
    drop(file);
    guard.remove()?;
    classify(&pairs).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "the filesystem under {} does not keep modification times: \
                 set (requested, read back) {pairs:?}",
                dir.display()
            ),
        )
    })
}

/// Classifies what a filesystem did to the mtimes it was given: `pairs` of (requested,
/// read back) times.
///
/// The step is the coarsest of 2 s, 1 s, 100 ms, …, 10 ns, 1 ns of which every read-back
/// time is a multiple, provided every read-back is within that step of its request
/// (truncated, rounded up or rounded to the nearest). `None` if it is not (the times were
/// not kept), or if `pairs` is empty.
///
/// The answer is only as good as the requests: a request that is already a multiple of a
/// coarse step reads back as one on any filesystem. [`PROBES`] are chosen to rule that
/// out.
pub fn classify(pairs: &[(Stamp, Stamp)]) -> Option<Duration> {
    if pairs.is_empty() {
        return None;
    }
    let got = |p: &(Stamp, Stamp)| total_nanos(p.1 .0, p.1 .1);
    let step = STEPS
        .into_iter()
        .find(|&s| pairs.iter().all(|p| got(p).rem_euclid(s) == 0))?;
    let kept = pairs
        .iter()
        .all(|p| (got(p) - total_nanos(p.0 .0, p.0 .1)).abs() < step);
    kept.then(|| Duration::from_nanos(step as u64))
}

/// Whether two mtimes, each as (seconds since the epoch, nanoseconds), are the same
/// within `window`: `|a - b| < window`. A window of 1 ns or less asks for exact equality.
///
/// With the precision of the filesystem that holds one of them as the window, a time
/// truncated or rounded (up or down) by that filesystem still matches its original.
/// Negative seconds are times before 1970 (`-2 s + 500_000_000 ns` is -1.5 s). Nanoseconds
/// of 1e9 or more are taken arithmetically (`(0, 1_000_000_000)` is 1 s).
pub fn same_within(a_secs: i64, a_nanos: u32, b_secs: i64, b_nanos: u32, window: Duration) -> bool {
    let diff = (total_nanos(a_secs, a_nanos) - total_nanos(b_secs, b_nanos)).unsigned_abs();
    if window <= Duration::from_nanos(1) {
        diff == 0
    } else {
        diff < window.as_nanos()
    }
}

fn total_nanos(secs: i64, nanos: u32) -> i128 {
    i128::from(secs) * NANOS_PER_SEC + i128::from(nanos)
}

/// Removes the scratch file when dropped, unless [`ScratchGuard::remove`] did already.
struct ScratchGuard {
    path: Option<PathBuf>,
}

impl ScratchGuard {
    /// Removes the file now, reporting an error (which `Drop` would have to swallow).
    fn remove(mut self) -> io::Result<()> {
        match self.path.take() {
            Some(p) => std::fs::remove_file(p),
            None => Ok(()),
        }
    }
}

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Creates a new file in `dir` under a name no one else uses: hidden, and made of the
/// process id, the clock and a counter, retried if it exists all the same.
fn scratch_file(dir: &Path) -> io::Result<(File, ScratchGuard)> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut tries = 0;
    loop {
        let clock = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            ".filesync-precision-{}-{clock}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => return Ok((f, ScratchGuard { path: Some(path) })),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 10 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: Duration = Duration::from_nanos(1);
    const US: Duration = Duration::from_micros(1);
    const MS: Duration = Duration::from_millis(1);
    const S: Duration = Duration::from_secs(1);

    /// What a filesystem with `step` (in ns) returns for each probe under `round`.
    fn fs(step: i128, round: fn(i128, i128) -> i128) -> Vec<(Stamp, Stamp)> {
        PROBES
            .iter()
            .map(|&(s, n)| {
                let t = round(total_nanos(s, n), step);
                let got = (
                    t.div_euclid(NANOS_PER_SEC) as i64,
                    t.rem_euclid(NANOS_PER_SEC) as u32,
                );
                ((s, n), got)
            })
            .collect()
    }
    fn down(t: i128, s: i128) -> i128 {
        t.div_euclid(s) * s
    }
    fn up(t: i128, s: i128) -> i128 {
        -(-t).div_euclid(s) * s
    }
    fn nearest(t: i128, s: i128) -> i128 {
        down(t + s / 2, s)
    }

    #[test]
    fn every_step_is_found_whatever_the_rounding() {
        for step in STEPS {
            for (name, round) in [
                ("down", down as fn(i128, i128) -> i128),
                ("up", up),
                ("nearest", nearest),
            ] {
                assert_eq!(
                    classify(&fs(step, round)),
                    Some(Duration::from_nanos(step as u64)),
                    "step {step} ns rounded {name}"
                );
            }
        }
    }

    #[test]
    fn the_usual_filesystems() {
        let p = |req: Stamp, got: Stamp| (req, got);
        // ext4, xfs, btrfs, tmpfs: exact.
        let exact = [p(
            (1_600_000_001, 123_456_789),
            (1_600_000_001, 123_456_789),
        )];
        assert_eq!(classify(&exact), Some(NS));
        // Microseconds (truncated), as some FUSE filesystems keep.
        let micros = [
            p((1_600_000_001, 123_456_789), (1_600_000_001, 123_456_000)),
            p((1_600_000_003, 999_999_999), (1_600_000_003, 999_999_000)),
        ];
        assert_eq!(classify(&micros), Some(US));
        // Microseconds, rounded: the second probe carries into the next second.
        let micros_rounded = [
            p((1_600_000_001, 123_456_789), (1_600_000_001, 123_457_000)),
            p((1_600_000_003, 999_999_999), (1_600_000_004, 0)),
        ];
        assert_eq!(classify(&micros_rounded), Some(US));
        // ext4 with 128-byte inodes: whole seconds.
        let secs = [
            p((1_600_000_001, 123_456_789), (1_600_000_001, 0)),
            p((1_600_000_003, 999_999_999), (1_600_000_003, 0)),
        ];
        assert_eq!(classify(&secs), Some(S));
        // FAT: even seconds, down (Linux) or up (Windows).
        let fat_down = [
            p((1_600_000_001, 123_456_789), (1_600_000_000, 0)),
            p((1_600_000_003, 999_999_999), (1_600_000_002, 0)),
        ];
        assert_eq!(classify(&fat_down), Some(2 * S));
        let fat_up = [
            p((1_600_000_001, 123_456_789), (1_600_000_002, 0)),
            p((1_600_000_002, 712_345_678), (1_600_000_004, 0)),
        ];
        assert_eq!(classify(&fat_up), Some(2 * S));
        // exFAT: 10 ms.
        let exfat = [p(
            (1_600_000_001, 123_456_789),
            (1_600_000_001, 120_000_000),
        )];
        assert_eq!(classify(&exfat), Some(10 * MS));
    }

    #[test]
    fn times_not_kept_are_none() {
        let p = |req: Stamp, got: Stamp| (req, got);
        // The mtime was ignored: the file kept its creation time.
        let ignored = [p(
            (1_600_000_001, 123_456_789),
            (1_700_000_000, 555_000_001),
        )];
        assert_eq!(classify(&ignored), None);
        // Coarser than 2 s (here 4 s, truncated): not a step this module knows.
        let four = [
            p((1_600_000_001, 123_456_789), (1_600_000_000, 0)),
            p((1_600_000_003, 999_999_999), (1_600_000_000, 0)),
        ];
        assert_eq!(classify(&four), None);
        // Off by a whole step: not rounding.
        let off = [p(
            (1_600_000_001, 123_456_789),
            (1_600_000_002, 123_456_789),
        )];
        assert_eq!(classify(&off), None);
        assert_eq!(classify(&[]), None);
    }

    #[test]
    fn negative_times_classify_too() {
        // -1.5 s truncated towards minus infinity to whole seconds is -2 s.
        let pairs = [((-2, 500_000_000), (-2, 0)), ((-1, 300_000_000), (-1, 0))];
        assert_eq!(classify(&pairs), Some(S));
    }

    #[test]
    fn same_within_windows() {
        // Exact: 1 ns and zero windows.
        assert!(same_within(10, 5, 10, 5, NS));
        assert!(!same_within(10, 5, 10, 6, NS));
        assert!(same_within(10, 5, 10, 5, Duration::ZERO));
        assert!(!same_within(10, 5, 10, 6, Duration::ZERO));
        // Whole seconds, truncated.
        assert!(same_within(1_600_000_001, 999_999_999, 1_600_000_001, 0, S));
        assert!(
            !same_within(1_600_000_002, 0, 1_600_000_001, 0, S),
            "1 s apart is not < 1 s"
        );
        // FAT, 2 s: rounded down and rounded up both match; 2 s apart does not.
        assert!(same_within(
            1_600_000_001,
            123_456_789,
            1_600_000_000,
            0,
            2 * S
        ));
        assert!(same_within(
            1_600_000_001,
            123_456_789,
            1_600_000_002,
            0,
            2 * S
        ));
        assert!(same_within(
            1_600_000_000,
            0,
            1_600_000_001,
            999_999_999,
            2 * S
        ));
        assert!(!same_within(1_600_000_000, 0, 1_600_000_002, 0, 2 * S));
        // Symmetric.
        assert!(same_within(
            1_600_000_002,
            0,
            1_600_000_001,
            123_456_789,
            2 * S
        ));
        // Microseconds across a second boundary.
        assert!(same_within(1, 999_999_999, 2, 0, US));
        assert!(!same_within(1, 999_998_999, 2, 0, US));
    }

    #[test]
    fn same_within_negative_times() {
        // -1.5 s and -1 s: 0.5 s apart.
        assert!(same_within(-2, 500_000_000, -1, 0, S));
        assert!(!same_within(-2, 500_000_000, -1, 0, 500 * MS));
        // Across the epoch: -0.25 s and +0.25 s.
        assert!(same_within(-1, 750_000_000, 0, 250_000_000, S));
        assert!(!same_within(-1, 750_000_000, 0, 250_000_000, 500 * MS));
        // FAT's range starts in 1980, but other filesystems keep older times: -2 s vs -3 s.
        assert!(same_within(-3, 0, -2, 0, 2 * S));
        assert!(!same_within(-3, 0, -1, 0, 2 * S));
        // Extremes do not overflow.
        assert!(!same_within(
            i64::MIN,
            0,
            i64::MAX,
            999_999_999,
            Duration::MAX
        ));
        assert!(same_within(i64::MIN, 0, i64::MIN, 0, NS));
    }

    #[test]
    fn detect_on_a_temp_dir_is_finer_than_a_second_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let step = detect(dir.path()).unwrap();
        assert!(step < S, "{step:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn detect_on_a_missing_dir_fails() {
        let dir = tempfile::tempdir().unwrap();
        let err = detect(&dir.path().join("missing")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}

//! The coarse-timestamp fixture ([`CoarseFs`]) really keeps whole seconds, and
//! `precision::detect` sees it. Needs root, `mkfs.ext4` and loop devices; without them
//! the mount test prints `SKIPPED` and passes, unless in CI (`CI` set or
//! `FILESYNC_REQUIRE_MOUNT=1`).

use std::time::Duration;

use filesync_core::precision;
use filesync_tests::fsimage::{coarse_fs_or_skip, CoarseFs};
use filetime::FileTime;

#[test]
fn coarse_fs_keeps_whole_seconds_and_detect_says_one_second() {
    let Some(fs) = coarse_fs_or_skip("coarse_fs_keeps_whole_seconds_and_detect_says_one_second")
    else {
        return;
    };
    let file = fs.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    filetime::set_file_mtime(&file, FileTime::from_unix_time(1_600_000_001, 123_456_789)).unwrap();
    let got = FileTime::from_last_modification_time(&std::fs::metadata(&file).unwrap());
    assert_eq!((got.unix_seconds(), got.nanoseconds()), (1_600_000_001, 0));

    assert_eq!(
        precision::detect(fs.path()).unwrap(),
        Duration::from_secs(1)
    );
    // The probe's scratch file is gone; only ours and ext4's lost+found remain.
    let mut names: Vec<_> = std::fs::read_dir(fs.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["f", "lost+found"]);
}

#[test]
fn coarse_fs_is_unmounted_and_removed_when_dropped() {
    let Some(fs) = coarse_fs_or_skip("coarse_fs_is_unmounted_and_removed_when_dropped") else {
        return;
    };
    let (mount, image) = (fs.path().to_owned(), fs.image().to_owned());
    assert!(image.is_file());
    // A file held open makes the plain unmount fail; the lazy one still detaches it.
    let held = std::fs::File::create(mount.join("held")).unwrap();
    drop::<CoarseFs>(fs);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(mount.to_str().unwrap()),
        "{} still mounted",
        mount.display()
    );
    assert!(!mount.exists() && !image.exists());
    drop(held);
}

#[test]
fn temp_dir_is_finer_than_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let step = precision::detect(dir.path()).unwrap();
    assert!(step < Duration::from_secs(1), "{step:?}");
}

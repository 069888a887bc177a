//! Filesystems made for a test: one that keeps modification times in whole seconds, for
//! tests of what the sync does when the server's filesystem is coarser than the client's,
//! and a small one that fills up.
//!
//! [`CoarseFs`] is a small ext4 image made with 128-byte inodes (which have no room for
//! nanoseconds: the kernel truncates every timestamp to the second when it is set),
//! loop-mounted on a temporary directory, and unmounted and deleted when dropped. It
//! needs root, `mkfs.ext4` (Debian package `e2fsprogs`) and loop devices; without them
//! [`coarse_fs_or_skip`] prints `SKIPPED` and the test passes, unless it runs in CI
//! (`CI` set, or `FILESYNC_REQUIRE_MOUNT=1`), where it fails instead.
//!
//! [`Tmpfs`] is a small tmpfs of a fixed size, for tests of a full disk, with the same
//! rules ([`tmpfs_or_skip`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The prefix of the temporary directories holding images and mount points; followed by
/// the process id, so that mounts left by killed test processes can be found and undone.
const PREFIX: &str = "filesync-coarsefs-";

/// The image's size, as `mkfs.ext4` takes it.
const IMAGE_SIZE: &str = "64M";

/// A loop-mounted ext4 image that keeps whole-second mtimes, unmounted and deleted when
/// dropped (also when the test panics).
#[derive(Debug)]
pub struct CoarseFs {
    /// Where the filesystem is mounted.
    mount: PathBuf,
    /// The image file.
    image: PathBuf,
    /// Holds `image` and `mount`; removed last, after the unmount.
    dir: Option<tempfile::TempDir>,
}

impl CoarseFs {
    /// Makes a 64 MiB ext4 image with 128-byte inodes (`mkfs.ext4 -q -F -I 128`) in a
    /// new temporary directory and mounts it (`mount -o loop`) on a directory beside it.
    /// Fails, saying why, when not root or when a command fails.
    pub fn create() -> Result<CoarseFs, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("not root (mounting a loop device needs root)".into());
        }
        sweep_stale_mounts();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-", std::process::id()))
            .tempdir()
            .map_err(|e| format!("creating a temporary directory: {e}"))?;
        let image = dir.path().join("ext4.img");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).map_err(|e| format!("creating {}: {e}", mount.display()))?;
        let mut mkfs = Command::new(mkfs_ext4());
        mkfs.args(["-q", "-F", "-I", "128"])
            .arg(&image)
            .arg(IMAGE_SIZE);
        run(mkfs)?;
        let mut mnt = Command::new("mount");
        mnt.args(["-o", "loop"]).arg(&image).arg(&mount);
        run(mnt)?;
        Ok(CoarseFs {
            mount,
            image,
            dir: Some(dir),
        })
    }

    /// The mount point: the root directory of the coarse filesystem.
    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// The image file behind the mount.
    pub fn image(&self) -> &Path {
        &self.image
    }
}

impl Drop for CoarseFs {
    fn drop(&mut self) {
        if !unmount(&self.mount) {
            // Still mounted: removing the directory would delete the filesystem's
            // contents and then fail; leave it for the next sweep.
            if let Some(dir) = self.dir.take() {
                let _ = dir.keep();
            }
        }
        // `dir` (if still held) now removes the image and the empty mount point.
    }
}

/// Unmounts `mount`, lazily if it is busy (a test still holding a file open in it), so
/// that the mount point is detached at once and the loop device freed when the last file
/// closes. True if it is no longer mounted.
fn unmount(mount: &Path) -> bool {
    let ok = |args: &[&str]| {
        Command::new("umount")
            .args(args)
            .arg(mount)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    ok(&[]) || ok(&["-l"])
}

/// Runs a setup command; its output (stdout and stderr) goes into the error.
fn run(mut cmd: Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| format!("running {shown}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{shown} failed ({}): {} {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `mkfs.ext4` from `PATH`, or from the sbin directories that a non-login root shell may
/// not have in `PATH`.
fn mkfs_ext4() -> PathBuf {
    ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("mkfs.ext4"))
}

/// Unmounts and deletes the images of test processes that were killed before their
/// `Drop` ran (their directories carry the pid of a process that no longer exists).
fn sweep_stale_mounts() {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    for line in mounts.lines() {
        let Some(mount) = line.split_whitespace().nth(1) else {
            continue;
        };
        let mount = Path::new(mount);
        let Some(dir) = mount.parent() else { continue };
        let Some(rest) = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(PREFIX))
        else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !pid.is_empty()
            && !Path::new("/proc").join(pid).exists()
            && mount.file_name() == Some("mnt".as_ref())
            && unmount(mount)
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Whether a fixture that cannot be set up must fail the test instead of skipping it:
/// in CI (`CI` set to anything but empty, `0` or `false`), or with
/// `FILESYNC_REQUIRE_MOUNT=1`.
pub fn mount_required() -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"));
    ci || std::env::var("FILESYNC_REQUIRE_MOUNT").as_deref() == Ok("1")
}

/// Creates a [`CoarseFs`]; if that fails, prints a loud `SKIPPED` line and returns
/// `None`, or panics when [`mount_required`].
pub fn coarse_fs_or_skip(test: &str) -> Option<CoarseFs> {
    match CoarseFs::create() {
        Ok(fs) => Some(fs),
        Err(e) => {
            if mount_required() {
                panic!("{test}: cannot mount a coarse-timestamp filesystem ({e}) in CI");
            }
            // Straight to the stderr handle: the test harness captures `eprintln!` of
            // passing tests, and a skip must be seen.
            let msg = format!(
                "\n!!!!!!!!\nSKIPPED: {test}: cannot mount a coarse-timestamp filesystem \
                 (needs root, mkfs.ext4 from e2fsprogs and loop devices): {e}\n!!!!!!!!\n"
            );
            let _ = std::io::stderr().write_all(msg.as_bytes());
            None
        }
    }
}

/// A small tmpfs, for tests of a full disk: mounted on a new temporary directory with a
/// fixed size, unmounted and removed when dropped. Needs root.
#[derive(Debug)]
pub struct Tmpfs {
    mount: PathBuf,
    /// Holds `mount`; removed after the unmount.
    dir: Option<tempfile::TempDir>,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it: `16m`). Fails, saying
    /// why, when not root or when `mount` fails.
    pub fn create(size: &str) -> Result<Tmpfs, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("not root (mounting a tmpfs needs root)".into());
        }
        sweep_stale_mounts();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-", std::process::id()))
            .tempdir()
            .map_err(|e| format!("creating a temporary directory: {e}"))?;
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).map_err(|e| format!("creating {}: {e}", mount.display()))?;
        let mut mnt = Command::new("mount");
        mnt.args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0755"),
            "tmpfs",
        ])
        .arg(&mount);
        run(mnt)?;
        Ok(Tmpfs {
            mount,
            dir: Some(dir),
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mount
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if !unmount(&self.mount) {
            if let Some(dir) = self.dir.take() {
                let _ = dir.keep();
            }
        }
    }
}

/// Creates a [`Tmpfs`]; if that fails, prints a loud `SKIPPED` line and returns `None`,
/// or panics when [`mount_required`].
pub fn tmpfs_or_skip(test: &str, size: &str) -> Option<Tmpfs> {
    match Tmpfs::create(size) {
        Ok(fs) => Some(fs),
        Err(e) => {
            if mount_required() {
                panic!("{test}: cannot mount a tmpfs ({e}) in CI");
            }
            let msg = format!(
                "\n!!!!!!!!\nSKIPPED: {test}: cannot mount a small tmpfs (needs root): {e}\n!!!!!!!!\n"
            );
            let _ = std::io::stderr().write_all(msg.as_bytes());
            None
        }
    }
}

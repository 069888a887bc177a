//! The local scratch folder of a server on an object store, where its sessions' plan
//! tails are spooled ([`crate::store::Spool`]) before they are applied.
//!
//! The server keeps nothing else on local disk, and this folder is removed when the server
//! stops. A server killed with `SIGKILL`, or whose machine lost power, cannot remove it,
//! and a spool can be large (a line per deletion of a client of millions of files). So
//! each folder, `filesync-scratch-XXXXXX` in the system's temporary directory (`TMPDIR`),
//! holds a lock file that its server keeps locked (`flock`) while it lives; a server that
//! starts removes every such folder whose lock nobody holds. The kernel drops a dead
//! process's locks, so no pid or clock is judged.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use rustix::fs::{flock, FlockOperation};

/// The name of every scratch folder starts with this.
pub(crate) const PREFIX: &str = "filesync-scratch-";
/// The lock file in a scratch folder. It appears under this name only once it is locked
/// (it is made under another name and renamed), so a folder being made is never taken
/// for an abandoned one.
const LOCK: &str = ".lock";

/// A server's scratch folder, locked while this lives, removed when it is dropped.
#[derive(Debug)]
pub(crate) struct Scratch {
    dir: tempfile::TempDir,
    /// Held locked; dropped after `dir` is removed.
    _lock: File,
}

impl Scratch {
    /// Removes the scratch folders in `parent` that servers which are gone left behind,
    /// then makes and locks a new one there.
    ///
    /// # Errors
    ///
    /// Making the folder or its lock file fails, or the fresh lock cannot be taken.
    pub(crate) fn create_in(parent: &Path) -> io::Result<Scratch> {
        let swept = sweep(parent);
        if swept > 0 {
            tracing::info!(parent = %parent.display(), folders = swept,
                "removed the scratch folders of servers that are gone");
        }
        let dir = tempfile::Builder::new().prefix(PREFIX).tempdir_in(parent)?;
        let making = dir.path().join(".lock.new");
        let lock = File::create(&making)?;
        try_lock(&lock)?;
        fs::rename(&making, dir.path().join(LOCK))?;
        Ok(Scratch { dir, _lock: lock })
    }

    /// The folder.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Takes an exclusive `flock` on `file` without waiting (`WouldBlock` if another open
/// file holds one). `File::try_lock` would do, but is newer than this crate's MSRV.
fn try_lock(file: &File) -> io::Result<()> {
    flock(file, FlockOperation::NonBlockingLockExclusive).map_err(io::Error::from)
}

/// Removes every scratch folder in `parent` whose lock file exists and is not locked: its
/// server is gone. Folders in use, or without a lock file (being made, or not ours), are
/// left alone, and failures are logged, not returned: sweeping is a courtesy. Returns how
/// many folders were removed.
pub(crate) fn sweep(parent: &Path) -> usize {
    let Ok(entries) = fs::read_dir(parent) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .as_encoded_bytes()
            .starts_with(PREFIX.as_bytes())
        {
            continue;
        }
        let dir = entry.path();
        let Ok(lock) = File::open(dir.join(LOCK)) else {
            continue;
        };
        match try_lock(&lock) {
            Ok(()) => match fs::remove_dir_all(&dir) {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(folder = %dir.display(), error = %e,
                    "cannot remove the scratch folder of a server that is gone"),
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => tracing::debug!(folder = %dir.display(),
                error = %e, "cannot check the lock of a scratch folder"),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder as a killed server leaves it: its lock file there, unlocked, and a spool.
    fn abandoned(parent: &Path, name: &str) -> std::path::PathBuf {
        let dir = parent.join(format!("{PREFIX}{name}"));
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join(LOCK), b"").unwrap();
        fs::write(dir.join("0.tail"), vec![7u8; 4096]).unwrap();
        dir
    }

    #[test]
    fn folders_of_servers_that_are_gone_are_removed_and_live_ones_kept() {
        let parent = tempfile::tempdir().unwrap();
        let live = Scratch::create_in(parent.path()).unwrap();
        assert!(live.path().join(LOCK).is_file());
        let dead = abandoned(parent.path(), "dead");
        // Not ours, or being made (no lock file yet): left alone.
        let other = parent.path().join("filesync-other");
        fs::create_dir(&other).unwrap();
        let making = parent.path().join(format!("{PREFIX}making"));
        fs::create_dir(&making).unwrap();

        let next = Scratch::create_in(parent.path()).unwrap();
        assert!(!dead.exists(), "the abandoned folder is still there");
        assert!(live.path().is_dir(), "a live server's folder was removed");
        assert!(other.is_dir() && making.is_dir());
        assert!(next.path().is_dir());

        // A server that stops removes its own; one that is killed leaves it, unlocked.
        let (live_path, next_path) = (live.path().to_owned(), next.path().to_owned());
        drop(live);
        assert!(!live_path.exists());
        std::mem::forget(next.dir);
        drop(next._lock);
        assert_eq!(sweep(parent.path()), 1);
        assert!(!next_path.exists());
    }
}

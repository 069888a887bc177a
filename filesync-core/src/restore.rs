//! `filesync restore`: a client's folder, or some paths of it, written out as the archive
//! held it now or at an earlier time, from the live folder and the kept versions
//! ([`crate::versions`]).
//!
//! The state at time T is the live folder with every session that started after T undone,
//! newest first: what the session added is removed, what it replaced or deleted is put
//! back. The restore does exactly that in the destination folder: it copies the live
//! folder there, then undoes the sessions in it. Nothing is ever written under the server
//! root: the destination may be neither inside the root nor around it.
//!
//! Copies keep content (holes stay holes), mtimes to the nanosecond, permission bits,
//! symlinks (verbatim, never followed) and FIFOs. Folder times and modes are set last,
//! deepest first, so that filling a folder does not move its time and a read-only folder
//! is filled before it becomes read-only.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::messages::MODE_BITS;
use crate::paths::{ClientId, RelPath};
use crate::time::MTime;
use crate::versions::{self, stamp, wanted};

/// Why a restore could not be done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The destination is unusable: not empty, inside the server root, or around it.
    #[error("{0}")]
    Destination(String),
    /// The time asked for is before the oldest version kept.
    #[error(
        "versions from before {0} were purged (serve --keep-versions): the archive as it was \
         then cannot be rebuilt"
    )]
    Purged(String),
    /// The time is before the session that created the client's folder (its first
    /// sync): the archive held nothing for it then, and restoring an empty folder would
    /// only hide the mistake.
    #[error(
        "the archive held nothing for client {id} at {at}: its folder was created at {created}"
    )]
    NotYet {
        /// The id.
        id: String,
        /// The time asked for.
        at: String,
        /// When the session that created the folder started.
        created: String,
    },
    /// The client has no folder and no versions in this archive (a server root, or a store).
    #[error("the archive {root} holds nothing for client {id}")]
    UnknownClient {
        /// The archive: a server root, or a store's URL.
        root: String,
        /// The id.
        id: String,
    },
    /// Reading the archive or writing the destination failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The failure.
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> RestoreError {
    let what = what.into();
    move |source| RestoreError::Io { what, source }
}

/// What a restore wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Regular files.
    pub files: u64,
    /// Their bytes (apparent size).
    pub bytes: u64,
    /// Folders.
    pub dirs: u64,
    /// Symlinks.
    pub links: u64,
    /// FIFOs.
    pub fifos: u64,
    /// Sessions undone to reach the time asked for.
    pub sessions_undone: u64,
}

/// Writes into `dest` the folder of client `id` under the server root `root` as it was at
/// `at` (`None`: as it is now); only `paths` (and what is under them) if not empty.
/// `dest` must not exist or be an empty folder, and may be neither inside `root` nor
/// around it.
pub fn restore(
    root: &Path,
    id: &ClientId,
    dest: &Path,
    at: Option<MTime>,
    paths: &[RelPath],
) -> Result<Restored, RestoreError> {
    check_destination(root, dest)?;
    let live = root.join(id.folder_name());
    let sessions = held_sessions(root, id)?;
    if let Some(t) = at {
        if let Some(p) =
            versions::purged_before(root, id).map_err(io_err("reading the versions"))?
        {
            if t < p {
                return Err(RestoreError::Purged(stamp(p)));
            }
        }
        // The earliest session undone: if it made the whole folder, there was none at `t`.
        if let Some(first) = sessions.iter().find(|s| s.at > t) {
            if first
                .added()
                .map_err(io_err("reading the versions"))?
                .is_none()
            {
                return Err(RestoreError::NotYet {
                    id: id.to_string(),
                    at: stamp(t),
                    created: stamp(first.at),
                });
            }
        }
    }
    fs::create_dir_all(dest).map_err(io_err(format!("making {}", dest.display())))?;
    let mut w = Writer {
        dest: dest.to_path_buf(),
        dirs: BTreeMap::new(),
        done: Restored::default(),
    };
    if live.is_dir() {
        w.copy_tree(&live, paths)?;
    }
    if let Some(t) = at {
        for s in sessions.iter().rev().filter(|s| s.at > t) {
            w.undo(s, paths)?;
            w.done.sessions_undone += 1;
        }
    }
    w.finish()
}

/// The sessions with kept versions of client `id` under the server root `root`, oldest
/// first; [`RestoreError::UnknownClient`] if the root holds neither its folder nor any.
pub fn held_sessions(root: &Path, id: &ClientId) -> Result<Vec<versions::Session>, RestoreError> {
    let sessions = versions::sessions(root, id).map_err(io_err("reading the versions"))?;
    if sessions.is_empty() && !root.join(id.folder_name()).exists() {
        return Err(RestoreError::UnknownClient {
            root: root.display().to_string(),
            id: id.to_string(),
        });
    }
    Ok(sessions)
}

/// Refuses a destination that holds anything, or that overlaps the server root.
fn check_destination(root: &Path, dest: &Path) -> Result<(), RestoreError> {
    let root = fs::canonicalize(root).map_err(io_err(format!("reading {}", root.display())))?;
    let d = resolved(dest).map_err(io_err(format!("reading {}", dest.display())))?;
    if d.starts_with(&root) || root.starts_with(&d) {
        return Err(RestoreError::Destination(format!(
            "{} overlaps the server root {}: a restore never writes into the archive",
            dest.display(),
            root.display()
        )));
    }
    match fs::read_dir(dest).map(|mut rd| rd.next().is_some()) {
        Ok(true) => Err(RestoreError::Destination(format!(
            "{} is not empty: restore into a new or empty folder",
            dest.display()
        ))),
        Ok(false) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RestoreError::Destination(format!(
            "{}: {e}",
            dest.display()
        ))),
    }
}

/// `p` with symlinks resolved as far as it exists, the rest appended.
fn resolved(p: &Path) -> io::Result<PathBuf> {
    let abs = std::path::absolute(p)?;
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        match fs::canonicalize(existing) {
            Ok(c) => {
                let mut out = c;
                out.extend(rest.iter().rev());
                return Ok(out);
            }
            Err(_) => match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_owned());
                    existing = parent;
                }
                _ => return Ok(abs),
            },
        }
    }
}

/// Writes entries into the destination and remembers folder attributes for the end.
struct Writer {
    dest: PathBuf,
    /// Folders written and the (mtime, mode) they get once everything is in them.
    dirs: BTreeMap<PathBuf, (MTime, u32)>,
    done: Restored,
}

impl Writer {
    /// Copies the entries of `from` (a client folder, or a record's `tree/`) that
    /// `paths` asks for.
    fn copy_tree(&mut self, from: &Path, paths: &[RelPath]) -> Result<(), RestoreError> {
        if paths.is_empty() {
            for e in crate::walk::tree_walk(from) {
                let e = e.map_err(|e| io_err("reading the archive")(io::Error::other(e)))?;
                let rel = e
                    .path()
                    .strip_prefix(from)
                    .unwrap_or(e.path())
                    .to_path_buf();
                self.put(e.path(), &rel)?;
            }
            return Ok(());
        }
        for p in paths {
            self.put_subtree(&p.to_path(from), p.as_path())?;
        }
        Ok(())
    }

    /// Puts `src` (and everything in it) at `rel`, replacing what is there.
    fn put_subtree(&mut self, src: &Path, rel: &Path) -> Result<(), RestoreError> {
        if fs::symlink_metadata(src).is_err() {
            return Ok(());
        }
        self.remove(rel)?;
        self.put(src, rel)?;
        if fs::symlink_metadata(src).is_ok_and(|m| m.is_dir()) {
            for e in crate::walk::tree_walk(src) {
                let e = e.map_err(|e| io_err("reading the archive")(io::Error::other(e)))?;
                let sub = rel.join(e.path().strip_prefix(src).unwrap_or(e.path()));
                self.put(e.path(), &sub)?;
            }
        }
        Ok(())
    }

    /// Undoes one session: removes what it added, puts back what it replaced.
    fn undo(&mut self, s: &versions::Session, paths: &[RelPath]) -> Result<(), RestoreError> {
        let what = format!("reading the session record {}", s.dir.display());
        match s.added().map_err(io_err(what.clone()))? {
            // It made the whole folder: before it, there was nothing.
            None if paths.is_empty() => {
                let all: Vec<PathBuf> = fs::read_dir(&self.dest)
                    .map_err(io_err("reading the destination"))?
                    .filter_map(|e| e.ok().map(|e| PathBuf::from(e.file_name())))
                    .collect();
                for p in all {
                    self.remove(&p)?;
                }
            }
            None => {
                for f in paths {
                    self.remove(f.as_path())?;
                }
            }
            Some(added) => {
                for p in added.iter().filter(|p| wanted(p, paths)) {
                    self.remove(p.as_path())?;
                }
            }
        }
        let tree = s.tree();
        for p in s.replaced().map_err(io_err(what))? {
            if wanted(&p, paths) {
                self.put_subtree(&p.to_path(&tree), p.as_path())?;
            } else if paths.iter().any(|f| p.is_ancestor_of(f)) {
                // A folder replaced whole, of which only some paths are asked for.
                for f in paths.iter().filter(|f| p.is_ancestor_of(f)) {
                    self.remove(f.as_path())?;
                    self.put_subtree(&f.to_path(&tree), f.as_path())?;
                }
            }
        }
        Ok(())
    }

    /// Removes whatever is at `rel` in the destination.
    fn remove(&mut self, rel: &Path) -> Result<(), RestoreError> {
        let p = self.dest.join(rel);
        let r = match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {
                let full = p.clone();
                self.dirs.retain(|d, _| !d.starts_with(&full));
                fs::remove_dir_all(&p)
            }
            Ok(_) => fs::remove_file(&p),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        r.map_err(io_err(format!("removing {}", p.display())))
    }

    /// Copies the one entry `src` (a folder without its content) to `rel`.
    fn put(&mut self, src: &Path, rel: &Path) -> Result<(), RestoreError> {
        let to = self.dest.join(rel);
        let what = format!("restoring {}", to.display());
        let m = fs::symlink_metadata(src).map_err(io_err(format!("reading {}", src.display())))?;
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(io_err(what.clone()))?;
        }
        let ft = m.file_type();
        let mtime = crate::walk::mtime_of(&m);
        let mode = m.mode() & MODE_BITS;
        let ft_time = filetime::FileTime::from_unix_time(mtime.secs, mtime.nanos);
        if ft.is_dir() {
            match fs::create_dir(&to) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && to.is_dir() => {}
                Err(e) => return Err(io_err(what)(e)),
            }
            self.dirs.insert(to, (mtime, mode));
        } else if ft.is_file() {
            copy_file(src, &to, m.len()).map_err(io_err(what.clone()))?;
            fs::set_permissions(&to, fs::Permissions::from_mode(mode))
                .map_err(io_err(what.clone()))?;
            filetime::set_file_times(&to, ft_time, ft_time).map_err(io_err(what))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(src).map_err(io_err(what.clone()))?;
            std::os::unix::fs::symlink(target, &to).map_err(io_err(what.clone()))?;
            filetime::set_symlink_file_times(&to, ft_time, ft_time).map_err(io_err(what))?;
        } else if ft.is_fifo() {
            crate::store::make_fifo(&to, mode, ft_time).map_err(io_err(what))?;
        }
        Ok(())
    }

    /// Counts what the destination holds in the end, then gives folders their times and
    /// modes, deepest first.
    fn finish(mut self) -> Result<Restored, RestoreError> {
        for e in crate::walk::tree_walk(&self.dest) {
            let e = e.map_err(|e| io_err("reading the destination")(io::Error::other(e)))?;
            let ft = e.file_type();
            if ft.is_dir() {
                self.done.dirs += 1;
            } else if ft.is_file() {
                self.done.files += 1;
                self.done.bytes += e.metadata().map_or(0, |m| m.len());
            } else if ft.is_symlink() {
                self.done.links += 1;
            } else if ft.is_fifo() {
                self.done.fifos += 1;
            }
        }
        for (d, (mtime, mode)) in self.dirs.iter().rev() {
            let what = format!("restoring {}", d.display());
            fs::set_permissions(d, fs::Permissions::from_mode(*mode))
                .map_err(io_err(what.clone()))?;
            let t = filetime::FileTime::from_unix_time(mtime.secs, mtime.nanos);
            filetime::set_file_mtime(d, t).map_err(io_err(what))?;
        }
        Ok(self.done)
    }
}

/// Copies a file's data ranges (holes stay holes) and gives it its size.
fn copy_file(src: &Path, to: &Path, size: u64) -> io::Result<()> {
    let from = File::open(src)?;
    let out = OpenOptions::new().write(true).create_new(true).open(to)?;
    let mut buf = vec![0u8; 1 << 20];
    for r in crate::sparse::data_ranges(&from, size) {
        let r = r?;
        let mut off = r.offset;
        while off < r.end() {
            let want = usize::try_from(r.end() - off)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let n = from.read_at(&mut buf[..want], off)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the archived file shrank while being restored",
                ));
            }
            out.write_all_at(&buf[..n], off)?;
            off += n as u64;
        }
    }
    out.set_len(size)?;
    out.sync_all()
}

//! The client's side of the filesystem: listing the tree and reading files for sending.
//!
//! Symlinks are not followed (they are skipped with a warning), so a link cannot pull
//! files from outside the folder into the archive.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};

use crate::messages::{Entry, EntryKind};
use crate::paths::RelPath;
use crate::time::MTime;

/// A listing of the client's folder.
#[derive(Debug, Default)]
pub struct Scan {
    /// Files and directories, parents before children, names sorted.
    pub entries: Vec<Entry>,
    /// Entries left out, with why.
    pub skipped: Vec<(PathBuf, String)>,
}

impl Scan {
    /// Marks a path that could not be read as [`EntryKind::Keep`], so that the server
    /// keeps its copy instead of deleting it as gone (a permission error must not erase
    /// a subtree of the archive).
    fn keep(&mut self, root: &Path, path: &Path) {
        let Ok(rel) = RelPath::from_local(path.strip_prefix(root).unwrap_or(path)) else {
            return;
        };
        // An unreadable directory was already listed before its contents failed.
        if let Some(e) = self.entries.iter_mut().rev().find(|e| e.path == rel) {
            e.kind = EntryKind::Keep;
            return;
        }
        self.entries.push(Entry {
            path: rel,
            kind: EntryKind::Keep,
            size: 0,
            mtime: MTime::EPOCH,
        });
    }
}

/// Lists `root`. Fails if `root` is not a readable directory; entries that cannot be
/// read are skipped and reported.
pub fn scan(root: &Path) -> io::Result<Scan> {
    let meta = std::fs::metadata(root)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a directory", root.display()),
        ));
    }
    let mut scan = Scan::default();
    let walker = walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name();
    for e in walker {
        let e = match e {
            Ok(e) => e,
            Err(err) => {
                let p = err.path().map(Path::to_path_buf).unwrap_or_default();
                scan.keep(root, &p);
                scan.skipped.push((p, err.to_string()));
                continue;
            }
        };
        let rel = match RelPath::from_local(e.path().strip_prefix(root).unwrap_or(e.path())) {
            Ok(r) => r,
            Err(err) => {
                scan.skipped.push((e.path().to_path_buf(), err.to_string()));
                continue;
            }
        };
        let ft = e.file_type();
        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_file() {
            EntryKind::File
        } else if ft.is_symlink() {
            scan.skipped
                .push((e.path().to_path_buf(), "symbolic link, not followed".into()));
            continue;
        } else {
            scan.skipped
                .push((e.path().to_path_buf(), "not a regular file".into()));
            continue;
        };
        let m = match e.metadata() {
            Ok(m) => m,
            Err(err) => {
                scan.keep(root, e.path());
                scan.skipped.push((e.path().to_path_buf(), err.to_string()));
                continue;
            }
        };
        let size = if kind == EntryKind::File { m.len() } else { 0 };
        let mtime = mtime_of(&m);
        scan.entries.push(Entry {
            path: rel,
            kind,
            size,
            mtime,
        });
    }
    Ok(scan)
}

/// Opens for reading without following a symlink in the last component: a link that
/// replaced a listed file after the listing must not be read through.
fn open_nofollow(path: &Path) -> io::Result<File> {
    let fd = rustix::fs::open(
        path,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    Ok(File::from(fd))
}

fn mtime_of(m: &std::fs::Metadata) -> MTime {
    m.modified()
        .ok()
        .and_then(MTime::from_system)
        .unwrap_or(MTime::EPOCH)
}

/// Why a file could not be sent as listed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file differs from its manifest entry, before or after reading.
    #[error("changed while being sent ({0}); will retry next sync")]
    Changed(String),
    /// The file could not be opened or read.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// An open file being read for sending, checked against its manifest entry.
#[derive(Debug)]
pub struct Source {
    file: File,
    expect: Entry,
    read: u64,
}

impl Source {
    /// Opens `entry` under `root` without following a symlink, and checks that it is
    /// still the file that was listed.
    pub fn open(root: &Path, entry: &Entry) -> Result<Source, ReadError> {
        let src = Source {
            file: open_nofollow(&entry.path.to_path(root))?,
            expect: entry.clone(),
            read: 0,
        };
        src.check("before reading")?;
        Ok(src)
    }

    /// Opens the file at `path` as it is now, whatever the listing said: for a protocol
    /// whose header carries the size and mtime of what is actually sent. Reading still
    /// fails if the file changes while it is read.
    pub fn open_current(root: &Path, path: &RelPath) -> Result<Source, ReadError> {
        let file = open_nofollow(&path.to_path(root))?;
        let m = file.metadata()?;
        if !m.is_file() {
            return Err(ReadError::Changed("no longer a regular file".into()));
        }
        let expect = Entry {
            path: path.clone(),
            kind: EntryKind::File,
            size: m.len(),
            mtime: mtime_of(&m),
        };
        Ok(Source {
            file,
            expect,
            read: 0,
        })
    }

    /// The size and mtime the content is checked against.
    pub fn entry(&self) -> &Entry {
        &self.expect
    }

    fn check(&self, when: &str) -> Result<(), ReadError> {
        let m = self.file.metadata()?;
        if !m.is_file() {
            return Err(ReadError::Changed(format!(
                "no longer a regular file {when}"
            )));
        }
        if m.len() != self.expect.size || mtime_of(&m) != self.expect.mtime {
            return Err(ReadError::Changed(format!(
                "size or mtime differ from the listing {when}"
            )));
        }
        Ok(())
    }

    /// The next chunk of at most `max` bytes; `None` after exactly the listed size, once
    /// the file has been checked unchanged.
    pub fn next_chunk(&mut self, max: usize) -> Result<Option<Bytes>, ReadError> {
        let left = self.expect.size - self.read;
        if left == 0 {
            self.check("after reading")?;
            return Ok(None);
        }
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(max);
        let mut buf = BytesMut::zeroed(want);
        let mut got = 0;
        while got < want {
            match self.file.read(&mut buf[got..]) {
                Ok(0) => return Err(ReadError::Changed("shrank while being read".into())),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.read += got as u64;
        Ok(Some(buf.freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn scan_lists_sorted_and_skips_links() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("b/empty")).unwrap();
        fs::write(d.path().join("b/x"), b"12").unwrap();
        fs::write(d.path().join("a"), b"").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("link")).unwrap();
        let s = scan(d.path()).unwrap();
        let names: Vec<_> = s
            .entries
            .iter()
            .map(|e| (e.path.as_str(), e.kind, e.size))
            .collect();
        assert_eq!(
            names,
            [
                ("a", EntryKind::File, 0),
                ("b", EntryKind::Dir, 0),
                ("b/empty", EntryKind::Dir, 0),
                ("b/x", EntryKind::File, 2)
            ]
        );
        assert_eq!(s.skipped.len(), 1);
        assert!(scan(&d.path().join("missing")).is_err());
    }

    #[test]
    fn unreadable_paths_become_keep_entries() {
        // Permission errors cannot be provoked as root, which CI is; exercise the
        // bookkeeping that walk errors go through instead.
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("locked")).unwrap();
        let mut s = scan(d.path()).unwrap();
        s.keep(d.path(), &d.path().join("locked"));
        s.keep(d.path(), &d.path().join("other/f"));
        let kinds: Vec<_> = s
            .entries
            .iter()
            .map(|e| (e.path.as_str(), e.kind))
            .collect();
        assert_eq!(
            kinds,
            [("locked", EntryKind::Keep), ("other/f", EntryKind::Keep)]
        );
    }

    #[test]
    fn source_detects_changes() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("f"), vec![7u8; 1000]).unwrap();
        let entry = scan(d.path()).unwrap().entries.remove(0);
        let mut src = Source::open(d.path(), &entry).unwrap();
        let mut total = 0;
        while let Some(c) = src.next_chunk(300).unwrap() {
            total += c.len();
        }
        assert_eq!(total, 1000);

        let mut src = Source::open(d.path(), &entry).unwrap();
        src.next_chunk(300).unwrap();
        fs::write(d.path().join("f"), vec![1u8; 10]).unwrap();
        assert!(matches!(
            (|| -> Result<(), ReadError> {
                while src.next_chunk(300)?.is_some() {}
                Ok(())
            })(),
            Err(ReadError::Changed(_))
        ));
        fs::remove_file(d.path().join("f")).unwrap();
        assert!(Source::open(d.path(), &entry).is_err());
    }
}

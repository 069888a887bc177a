//! The client's side of the filesystem: listing the tree and reading files for sending.
//!
//! Symlinks are listed as links with their target, never followed, so a link cannot pull
//! files from outside the folder into the archive. FIFOs are listed (and never opened);
//! sockets and device files are skipped and counted, since a file copy cannot hold them.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use crate::exclude::Excluder;
use crate::messages::{Entry, EntryKind, MODE_BITS};
use crate::paths::{LinkTarget, RelPath};
use crate::time::MTime;

/// Entries per chunk a background listing hands over.
pub const LIST_CHUNK: usize = 1024;

/// The client's folder, listed lazily in tree order ([`RelPath::tree_cmp`]): parents before
/// children, names sorted by their bytes. Memory stays bounded by the tree's depth and its
/// largest directory, whatever its size.
///
/// Sockets and device files are logged, skipped and counted; a path that could not be
/// read (a permission error) is listed as [`EntryKind::Keep`], so that the server keeps its
/// copy instead of deleting it as gone, and counted as unreadable: the sync did not archive
/// it, and must say so.
#[derive(Debug)]
pub struct Lister {
    root: PathBuf,
    walk: walkdir::IntoIter,
    excluder: Excluder,
    /// Excluded entries are left out of the listing, so the server deletes its copies
    /// (`--delete-excluded`), instead of listed as `Keep`, so that it keeps them.
    delete_excluded: bool,
    /// One entry of look-ahead: a directory whose contents then fail to read is turned
    /// into a `Keep` entry before it is handed out.
    ahead: Option<Entry>,
    stats: ListStats,
    done: bool,
}

/// What a listing left out, by reason: the entries of the folder that the server will not
/// hold after the sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListStats {
    /// Sockets skipped (not archived, by design: one exists only while a program runs).
    pub sockets: u64,
    /// Block and character devices skipped (not archived: a copy would not be a device).
    pub devices: u64,
    /// Entries excluded by `--exclude` or a `.filesyncignore` (an excluded directory
    /// counts once).
    pub excluded: u64,
    /// Entries that could not be read: failures, which make the sync partial.
    pub unreadable: u64,
    /// The first [`ListStats::KEPT`] unreadable paths and why.
    pub unreadable_paths: Vec<(RelPath, String)>,
}

impl ListStats {
    /// How many unreadable paths are kept by name.
    pub const KEPT: usize = 1000;
}

/// What a listing leaves out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Gitignore patterns rooted at the folder (`--exclude`), on top of the folder's
    /// `.filesyncignore` files (see [`crate::exclude`] for the precedence).
    pub exclude: Vec<String>,
    /// Let the server delete its copies of excluded paths (`--delete-excluded`). Without
    /// it, each excluded entry is listed as `Keep` and the server keeps what it holds
    /// there, as rsync protects excluded files on the receiver.
    pub delete_excluded: bool,
}

/// Starts listing `root`, with no exclusions but its `.filesyncignore` files. Fails if
/// `root` is not a readable directory.
pub fn lister(root: &Path) -> io::Result<Lister> {
    lister_with(root, &ListOptions::default())
}

/// Starts listing `root`. Fails if `root` is not a readable directory, or if a pattern
/// on the command line or in the root's `.filesyncignore` is bad.
pub fn lister_with(root: &Path, opts: &ListOptions) -> io::Result<Lister> {
    let meta = std::fs::metadata(root)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a directory", root.display()),
        ));
    }
    let excluder = Excluder::new(root, &opts.exclude)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    Ok(Lister {
        root: root.to_path_buf(),
        walk: tree_walk(root),
        excluder,
        delete_excluded: opts.delete_excluded,
        ahead: None,
        stats: ListStats::default(),
        done: false,
    })
}

impl Lister {
    /// What was left out so far.
    pub fn stats(&self) -> &ListStats {
        &self.stats
    }

    /// A path that could not be read becomes a `Keep` entry, returned, and is counted as
    /// unreadable; the directory in hand, if it is that path, is marked instead.
    fn unreadable(&mut self, path: &Path, why: &str) -> Option<Entry> {
        tracing::warn!(path = %path.display(), why, "cannot read; the server keeps its copy");
        self.stats.unreadable += 1;
        let rel = RelPath::from_local(path.strip_prefix(&self.root).unwrap_or(path)).ok()?;
        if self.stats.unreadable_paths.len() < ListStats::KEPT {
            self.stats
                .unreadable_paths
                .push((rel.clone(), why.to_owned()));
        }
        if let Some(e) = self.ahead.as_mut().filter(|e| e.path == rel) {
            e.kind = EntryKind::Keep;
            e.target = None;
            return None;
        }
        Some(keep_entry(rel))
    }

    /// The next entry of the walk itself, before the look-ahead; `None` at the end.
    fn walk_next(&mut self) -> Option<Entry> {
        loop {
            let e = match self.walk.next()? {
                Ok(e) => e,
                Err(err) => {
                    let p = err.path().map(Path::to_path_buf).unwrap_or_default();
                    match self.unreadable(&p, &err.to_string()) {
                        Some(k) => return Some(k),
                        None => continue,
                    }
                }
            };
            let rel =
                match RelPath::from_local(e.path().strip_prefix(&self.root).unwrap_or(e.path())) {
                    Ok(r) => r,
                    Err(err) => match self.unreadable(e.path(), &err.to_string()) {
                        Some(k) => return Some(k),
                        None => continue,
                    },
                };
            let ft = e.file_type();
            {
                let rel_local = e.path().strip_prefix(&self.root).unwrap_or(e.path());
                match self.excluder.is_excluded(rel_local, ft.is_dir()) {
                    Ok(false) => {}
                    Ok(true) => {
                        if ft.is_dir() {
                            self.walk.skip_current_dir();
                        }
                        self.stats.excluded += 1;
                        if self.delete_excluded {
                            continue;
                        }
                        return Some(keep_entry(rel));
                    }
                    // A `.filesyncignore` that cannot be used: its folder is unreadable.
                    Err(err) => {
                        if ft.is_dir() {
                            self.walk.skip_current_dir();
                        }
                        match self.unreadable(e.path(), &err.to_string()) {
                            Some(k) => return Some(k),
                            None => continue,
                        }
                    }
                }
            }
            let kind = if ft.is_dir() {
                EntryKind::Dir
            } else if ft.is_file() {
                EntryKind::File
            } else if ft.is_symlink() {
                EntryKind::Symlink
            } else if ft.is_fifo() {
                EntryKind::Fifo
            } else {
                let what = if ft.is_socket() {
                    self.stats.sockets += 1;
                    "a socket"
                } else {
                    self.stats.devices += 1;
                    "a device file"
                };
                tracing::info!(path = %e.path().display(), "skipped {what}: not archived");
                continue;
            };
            let m = match e.metadata() {
                Ok(m) => m,
                Err(err) => match self.unreadable(e.path(), &err.to_string()) {
                    Some(k) => return Some(k),
                    None => continue,
                },
            };
            let target = if kind == EntryKind::Symlink {
                let t = std::fs::read_link(e.path())
                    .map_err(|e| e.to_string())
                    .and_then(|t| {
                        LinkTarget::from_bytes(t.as_os_str().as_bytes()).map_err(|e| e.to_string())
                    });
                match t {
                    Ok(t) => Some(t),
                    Err(why) => match self.unreadable(e.path(), &why) {
                        Some(k) => return Some(k),
                        None => continue,
                    },
                }
            } else {
                None
            };
            let size = if kind == EntryKind::File { m.len() } else { 0 };
            return Some(Entry {
                path: rel,
                kind,
                size,
                mtime: mtime_of(&m),
                mode: m.mode() & MODE_BITS,
                target,
            });
        }
    }
}

impl Iterator for Lister {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        if self.ahead.is_none() && !self.done {
            self.ahead = self.walk_next();
            self.done = self.ahead.is_none();
        }
        if self.done {
            return self.ahead.take();
        }
        // Read one further, so that an error about the entry in hand can still mark it.
        let next = self.walk_next();
        self.done = next.is_none();
        std::mem::replace(&mut self.ahead, next)
    }
}

/// An entry telling the server to keep what it holds at `path`.
fn keep_entry(path: RelPath) -> Entry {
    Entry {
        path,
        kind: EntryKind::Keep,
        size: 0,
        mtime: MTime::EPOCH,
        mode: 0,
        target: None,
    }
}

/// Lists `root` whole. For tests and small trees; syncs use [`Lister`].
pub fn scan(root: &Path) -> io::Result<Vec<Entry>> {
    Ok(lister(root)?.collect())
}

/// Opens for reading without following a symlink in the last component: a link that
/// replaced a listed file after the listing must not be read through.
pub(crate) fn open_nofollow(path: &Path) -> io::Result<File> {
    let fd = rustix::fs::open(
        path,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// Walks what is under `root` in tree order ([`RelPath::tree_cmp`]): depth first, each
/// directory's entries sorted by their bytes, symlinks not followed. The client's listing
/// and the server's index both walk this way, so the planner can merge them in one pass.
pub(crate) fn tree_walk(root: &Path) -> walkdir::IntoIter {
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
}

/// A file's mtime; the epoch where the filesystem gives none it can represent.
pub(crate) fn mtime_of(m: &std::fs::Metadata) -> MTime {
    m.modified()
        .ok()
        .and_then(MTime::from_system)
        .unwrap_or(MTime::EPOCH)
}

/// [`Source::reader`].
struct SourceReader<'a> {
    src: &'a mut Source,
}

impl Read for SourceReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let left = self.src.expect.size - self.src.read;
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let n = self.src.file.read_at(&mut buf[..want], self.src.read)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "shrank while being read",
            ));
        }
        self.src.read += n as u64;
        Ok(n)
    }
}

/// Feeds the first `len` bytes of `file` to `h`, with positioned reads (the file offset is
/// not moved). `UnexpectedEof` if the file is shorter.
pub(crate) fn hash_file_prefix(file: &File, len: u64, h: &mut blake3::Hasher) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        let want = usize::try_from(len - off)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = file.read_at(&mut buf[..want], off)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file is shorter than the bytes to hash",
            ));
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(())
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
///
/// A sparse file is read as its data ranges, found with `SEEK_DATA`/`SEEK_HOLE`
/// ([`crate::sparse`]), and its holes come out as [`Piece::Hole`], never read or sent as
/// zeros. Only a file with fewer blocks allocated than its size is looked at this way.
#[derive(Debug)]
pub struct Source {
    file: File,
    expect: Entry,
    read: u64,
    /// The file may have holes.
    sparse: bool,
    /// The end of the data range being read (sparse files only).
    data_end: u64,
}

/// A piece of a file's content, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// These bytes.
    Data(Bytes),
    /// This many bytes of hole, which read as zeros and need not be stored.
    Hole(u64),
}

impl Source {
    /// Opens `entry` under `root` without following a symlink, and checks that it is
    /// still the file that was listed.
    pub fn open(root: &Path, entry: &Entry) -> Result<Source, ReadError> {
        let mut src = Source {
            file: open_nofollow(&entry.path.to_path(root))?,
            expect: entry.clone(),
            read: 0,
            sparse: false,
            data_end: 0,
        };
        let m = src.check("before reading")?;
        src.sparse = crate::sparse::may_be_sparse(&m);
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
            mode: m.mode() & MODE_BITS,
            target: None,
        };
        Ok(Source {
            file,
            expect,
            read: 0,
            // The original dialect cannot carry holes: read everything.
            sparse: false,
            data_end: 0,
        })
    }

    /// The size and mtime the content is checked against.
    pub fn entry(&self) -> &Entry {
        &self.expect
    }

    /// Checks the open file against its listing; returns its metadata.
    fn check(&self, when: &str) -> Result<std::fs::Metadata, ReadError> {
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
        Ok(m)
    }

    /// BLAKE3 of the file's first `len` bytes (positioned reads: the read position is not
    /// moved). Fails if the file is shorter.
    pub fn prefix_hash(&self, len: u64) -> io::Result<crate::messages::Hash> {
        let mut h = blake3::Hasher::new();
        self.hash_into(len, &mut h)?;
        Ok(crate::messages::Hash(*h.finalize().as_bytes()))
    }

    /// Feeds the file's first `len` bytes to `h` (positioned reads). Fails if the file is
    /// shorter.
    pub fn hash_into(&self, len: u64, h: &mut blake3::Hasher) -> io::Result<()> {
        hash_file_prefix(&self.file, len, h)
    }

    /// Whether the file may have holes (it is then read as data and holes, never as a
    /// delta).
    pub fn may_be_sparse(&self) -> bool {
        self.sparse
    }

    /// The bytes from the read position to the listed size, read in order (positioned
    /// reads); ends early with `UnexpectedEof` if the file shrank. Moves the read
    /// position. Check the file with [`check_unchanged`](Self::check_unchanged) after.
    pub fn reader(&mut self) -> impl Read + '_ {
        SourceReader { src: self }
    }

    /// Checks that the file still has its listed size and mtime, after reading it.
    pub fn check_unchanged(&self) -> Result<(), ReadError> {
        self.check("after reading").map(drop)
    }

    /// The read position: bytes of the file read or skipped so far.
    pub fn position(&self) -> u64 {
        self.read
    }

    /// Continues from `offset` (of a resumed file): what comes before is not read.
    pub fn skip_to(&mut self, offset: u64) {
        self.read = offset.min(self.expect.size);
        self.data_end = 0;
    }

    /// The next chunk of at most `max` bytes, reading holes as zeros; `None` after
    /// exactly the listed size, once the file has been checked unchanged. For a protocol
    /// that cannot carry holes.
    pub fn next_chunk(&mut self, max: usize) -> Result<Option<Bytes>, ReadError> {
        let left = self.expect.size - self.read;
        if left == 0 {
            self.check("after reading").map(drop)?;
            return Ok(None);
        }
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(max);
        self.read_data(want).map(Some)
    }

    /// The next piece: data of at most `max` bytes, or a hole of any length; `None`
    /// after exactly the listed size, once the file has been checked unchanged.
    pub fn next_piece(&mut self, max: usize) -> Result<Option<Piece>, ReadError> {
        let size = self.expect.size;
        if !self.sparse {
            return Ok(self.next_chunk(max)?.map(Piece::Data));
        }
        if self.read == size {
            self.check("after reading").map(drop)?;
            return Ok(None);
        }
        if self.read >= self.data_end {
            match crate::sparse::data_ranges_from(&self.file, self.read, size).next() {
                Some(r) => {
                    let r = r?;
                    self.data_end = r.end();
                    if r.offset > self.read {
                        let hole = r.offset - self.read;
                        self.read = r.offset;
                        return Ok(Some(Piece::Hole(hole)));
                    }
                }
                // The rest is a trailing hole.
                None => {
                    let hole = size - self.read;
                    self.read = size;
                    return Ok(Some(Piece::Hole(hole)));
                }
            }
        }
        let left = self.data_end - self.read;
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(max);
        self.read_data(want).map(|b| Some(Piece::Data(b)))
    }

    /// Reads exactly `want` bytes at the read position (positioned reads: finding holes
    /// moves the file offset), into a buffer that is not zeroed first: every byte of a
    /// file sent whole would otherwise be written twice on its way to the socket.
    fn read_data(&mut self, want: usize) -> Result<Bytes, ReadError> {
        let mut buf = Vec::with_capacity(want);
        while buf.len() < want {
            let at = self.read + buf.len() as u64;
            match rustix::io::pread(&self.file, rustix::buffer::spare_capacity(&mut buf), at) {
                Ok(0) => return Err(ReadError::Changed("shrank while being read".into())),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(io::Error::from(e).into()),
            }
        }
        // The allocator may have given more room than asked, and a read filled it.
        buf.truncate(want);
        self.read += want as u64;
        Ok(Bytes::from(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn scan_lists_every_kind_with_modes_and_counts_what_it_skips() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("b/empty")).unwrap();
        fs::write(d.path().join("b/x"), b"12").unwrap();
        fs::set_permissions(d.path().join("b/x"), fs::Permissions::from_mode(0o4750)).unwrap();
        fs::write(d.path().join("a"), b"").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("link")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            d.path().join("pipe"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o640),
            0,
        )
        .unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(d.path().join("sock")).unwrap();
        let odd = d.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
        fs::write(&odd, b"").unwrap();
        let s = scan(d.path()).unwrap();
        let names: Vec<_> = s
            .iter()
            .map(|e| (e.path.to_string(), e.kind, e.size))
            .collect();
        assert_eq!(
            names,
            [
                ("a".to_string(), EntryKind::File, 0),
                ("b".to_string(), EntryKind::Dir, 0),
                ("b/empty".to_string(), EntryKind::Dir, 0),
                ("b/x".to_string(), EntryKind::File, 2),
                ("caf\\xE9".to_string(), EntryKind::File, 0),
                ("link".to_string(), EntryKind::Symlink, 0),
                ("pipe".to_string(), EntryKind::Fifo, 0),
            ]
        );
        assert_eq!(s[3].mode, 0o4750);
        assert_eq!(s[5].target.as_ref().unwrap().as_bytes(), b"/etc/passwd");
        assert_eq!(s[6].mode, 0o640, "umask 022 leaves 0640 as it is");
        let mut l = lister(d.path()).unwrap();
        assert_eq!(l.by_ref().count(), 7);
        assert_eq!(
            l.stats(),
            &ListStats {
                sockets: 1,
                ..ListStats::default()
            }
        );
        assert!(scan(&d.path().join("missing")).is_err());
    }

    #[test]
    fn unreadable_paths_become_keep_entries() {
        // Permission errors cannot be provoked as root, which CI is; exercise the
        // bookkeeping that walk errors go through instead.
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("locked")).unwrap();
        let mut l = lister(d.path()).unwrap();
        l.ahead = Some(Entry {
            kind: EntryKind::Dir,
            ..keep_entry(RelPath::parse("locked").unwrap())
        });
        assert_eq!(
            l.unreadable(&d.path().join("locked"), "denied"),
            None,
            "marks the entry in hand"
        );
        assert_eq!(l.ahead.as_ref().unwrap().kind, EntryKind::Keep);
        let other = l.unreadable(&d.path().join("other/f"), "denied").unwrap();
        assert_eq!(
            (other.path.to_str().unwrap(), other.kind),
            ("other/f", EntryKind::Keep)
        );
        assert_eq!(l.stats().unreadable, 2, "both count as failures");
        assert_eq!(l.stats().unreadable_paths[1].1, "denied");
    }

    #[test]
    fn the_listing_is_in_tree_order() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("a")).unwrap();
        fs::write(d.path().join("a/x"), b"").unwrap();
        fs::write(d.path().join("a.b"), b"").unwrap();
        fs::write(d.path().join("a0"), b"").unwrap();
        let names: Vec<_> = scan(d.path())
            .unwrap()
            .into_iter()
            .map(|e| e.path.to_string())
            .collect();
        assert_eq!(names, ["a", "a/x", "a.b", "a0"]);
    }

    #[test]
    fn excluded_entries_are_kept_unless_deleted_and_broken_ignore_files_are_unreadable() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "a.tmp",
            "b.txt",
            "build/x",
            "sub/keep.tmp",
            "sub/c.tmp",
            "bad/y",
        ] {
            let p = d.path().join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b"").unwrap();
        }
        fs::write(d.path().join(".filesyncignore"), "*.tmp\n").unwrap();
        fs::write(d.path().join("sub/.filesyncignore"), "!keep.tmp\n").unwrap();
        fs::write(d.path().join("bad/.filesyncignore"), "{a\n").unwrap();
        let opts = |delete_excluded| ListOptions {
            exclude: vec!["/build/".into()],
            delete_excluded,
        };
        let listed = |delete| {
            let mut l = lister_with(d.path(), &opts(delete)).unwrap();
            let v: Vec<_> = l.by_ref().map(|e| (e.path.to_string(), e.kind)).collect();
            (v, l.stats().clone())
        };
        let (kept, stats) = listed(false);
        use EntryKind::*;
        assert_eq!(
            kept,
            [
                (".filesyncignore".to_string(), File),
                ("a.tmp".into(), Keep),
                ("b.txt".into(), File),
                ("bad".into(), Keep),
                ("build".into(), Keep),
                ("sub".into(), Dir),
                ("sub/.filesyncignore".into(), File),
                ("sub/c.tmp".into(), Keep),
                ("sub/keep.tmp".into(), File),
            ]
        );
        assert_eq!((stats.excluded, stats.unreadable), (3, 1), "{stats:?}");
        let (deleted, _) = listed(true);
        let names: Vec<_> = deleted.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            names,
            [
                ".filesyncignore",
                "b.txt",
                "bad",
                "sub",
                "sub/.filesyncignore",
                "sub/keep.tmp"
            ],
            "excluded entries are left out; the broken folder is still kept"
        );
        // A bad pattern on the command line fails the listing.
        let bad = ListOptions {
            exclude: vec!["{a".into()],
            delete_excluded: false,
        };
        assert!(lister_with(d.path(), &bad).is_err());
    }

    #[test]
    fn sparse_files_are_read_as_data_and_holes() {
        let d = tempfile::tempdir().unwrap();
        let f = fs::File::create(d.path().join("s")).unwrap();
        let size = 5u64 << 30;
        f.set_len(size).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"12345678", 3 << 30).unwrap();
        drop(f);
        let entry = scan(d.path()).unwrap().remove(0);
        let mut src = Source::open(d.path(), &entry).unwrap();
        let mut pieces = Vec::new();
        while let Some(p) = src.next_piece(1 << 20).unwrap() {
            pieces.push(match p {
                Piece::Data(b) => (true, b.len() as u64, b.iter().any(|&x| x != 0)),
                Piece::Hole(n) => (false, n, false),
            });
        }
        assert_eq!(pieces.iter().map(|p| p.1).sum::<u64>(), size);
        let data: u64 = pieces.iter().filter(|p| p.0).map(|p| p.1).sum();
        assert!(data <= 1 << 20, "{data} bytes of data read for 8");
        assert!(pieces.iter().any(|p| p.2), "the 8 bytes are in the data");
        assert!(!pieces[0].0 && !pieces.last().unwrap().0, "{pieces:?}");
        // A dense file is all data.
        fs::write(d.path().join("dense"), vec![1u8; 3000]).unwrap();
        let e = scan(d.path()).unwrap().remove(0);
        let mut src = Source::open(d.path(), &e).unwrap();
        let mut n = 0;
        while let Some(p) = src.next_piece(1000).unwrap() {
            let Piece::Data(b) = p else {
                panic!("a hole in a dense file")
            };
            n += b.len();
        }
        assert_eq!(n, 3000);
    }

    #[test]
    fn source_detects_changes() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("f"), vec![7u8; 1000]).unwrap();
        let entry = scan(d.path()).unwrap().remove(0);
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

//! The server's filesystem: the only place that writes under the server root.
//!
//! Safety rules, each enforced here:
//! - A client's files live in `<root>/client_<id>` and nothing else does: temporary files
//!   and state live in `<root>/.filesync/`.
//! - Content is written to a temporary file, made durable, then renamed into place, so no
//!   partial file ever appears under a final name, even across a crash.
//! - No symlink inside the root is ever followed when writing or deleting: every ancestor
//!   of a target is checked with `lstat`, and a symlink or file standing where the client
//!   has a directory is replaced, never traversed.
//!
//! Durability is paid per batch, not per file: temporary files are synced together with
//! one `syncfs(2)` (per-file `fsync` where that is unavailable), then renamed; a last sync
//! before `NEXT_SYNC` covers the renames and deletions.
//!
//! Descriptors: a session holds the file being received, its plan's spool, and, for the
//! moment of a batch's `syncfs`, the temporary directory: three at most. A staged file is
//! closed as soon as it is written, so a batch of any size costs no descriptors.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use crate::delta::{self, Applier, BlockLayout, Signature};
use crate::messages::{
    stored_mode_bits, EntryKind, ErrorCode, FileHeader, Hash, Outcome, ResumeAt, MODE_BITS,
    SETID_BITS,
};
use crate::paths::{ClientId, LinkTarget, RelPath};
use crate::planner::{DeleteBudget, Held, TailOp};
use crate::time::MTime;
use crate::versions::{self, SessionRecord};
use crate::walk;

/// Files staged before a batch is synced and renamed. Each batch costs one `syncfs`
/// (a journal commit); for trees of tiny files, 4096 cut the syncs eightfold from 512 with
/// no measurable cost (`bench/README.md`). A staged file holds no descriptor.
const BATCH_FILES: usize = 4096;
/// Bytes staged before a batch is synced and renamed.
const BATCH_BYTES: u64 = 128 << 20;
/// Batches handed to the placer and not yet placed. When the disk lags behind the network
/// the receiving thread waits here, which backs up into the socket: staged files and
/// their bytes in memory stay bounded however slow the disk is.
const BATCHES_QUEUED: usize = 2;
/// Directories a placer remembers as checked (see `Placer::dirs_ok`).
const DIRS_CACHED: usize = 4096;

/// The server root.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    tmp: PathBuf,
    /// Where sessions spool their plans' tails.
    spools: PathBuf,
    /// Where the beginnings of files an interrupted session was receiving are kept, to
    /// be resumed (see [`Store::resume_offers`]).
    partials: PathBuf,
    /// Where block signatures of stored files are cached, for deltas (see
    /// [`Store::delta_bases`]).
    sigs: PathBuf,
    seq: AtomicU64,
    /// This process's id, naming its temporary files.
    pid: u32,
    /// Test hook: extra time each batch sync takes (see [`SLOW_DISK_ENV`]).
    slow_disk: std::time::Duration,
    /// Permission bits files, directories and FIFOs may be given: setuid and setgid
    /// are dropped unless [`Store::keep_setid`].
    mode_mask: u32,
    /// The finest mtime step the root's filesystem keeps.
    mtime_precision: std::time::Duration,
    /// How long replaced and deleted entries are kept (`None`: not kept at all).
    keep_versions: Option<std::time::Duration>,
}

/// How long versions are kept unless told otherwise: 30 days.
pub const DEFAULT_KEEP_VERSIONS: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// Environment variable for tests: milliseconds added to every batch sync, making the disk
/// slower than the network so that back-pressure and descriptor bounds are exercised on any
/// test machine. Not for production use.
pub const SLOW_DISK_ENV: &str = "FILESYNC_TEST_SLOW_DISK_MS";

impl Store {
    /// Opens (creating if needed) a server root, and removes temporary files left by a
    /// previous run that stopped mid-transfer.
    pub fn open(root: &Path) -> io::Result<Store> {
        let tmp = root.join(".filesync").join("tmp");
        let spools = root.join(".filesync").join("spool");
        let mut stale = 0;
        for dir in [&tmp, &spools] {
            fs::create_dir_all(dir)?;
            for e in fs::read_dir(dir)? {
                let e = e?;
                if e.file_type()?.is_dir() {
                    fs::remove_dir_all(e.path())?;
                } else {
                    fs::remove_file(e.path())?;
                }
                stale += 1;
            }
        }
        if stale > 0 {
            tracing::info!(stale, "removed stale temporary files");
        }
        let partials = root.join(".filesync").join("partial");
        fs::create_dir_all(&partials)?;
        purge_partials(&partials);
        let sigs = root.join(".filesync").join("sigs");
        fs::create_dir_all(&sigs)?;
        // Probed in the temporary directory, on the root's filesystem (temporary files are
        // renamed into client folders, which only works on one filesystem).
        let mtime_precision = match crate::precision::detect(&tmp) {
            Ok(p) => {
                if p > std::time::Duration::from_nanos(1) {
                    tracing::info!(precision = ?p, "the server root keeps coarse mtimes; comparing at that precision");
                }
                p
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell the mtime precision of the server root; comparing exactly");
                std::time::Duration::from_nanos(1)
            }
        };
        Ok(Store {
            root: root.to_path_buf(),
            tmp,
            spools,
            partials,
            sigs,
            seq: AtomicU64::new(0),
            pid: std::process::id(),
            slow_disk: std::env::var(SLOW_DISK_ENV)
                .ok()
                .and_then(|v| v.parse().ok())
                .map(std::time::Duration::from_millis)
                .unwrap_or_default(),
            mode_mask: stored_mode_bits(false),
            mtime_precision,
            keep_versions: Some(DEFAULT_KEEP_VERSIONS),
        })
    }

    /// Keeps what sessions replace or delete for this long (`serve --keep-versions`;
    /// `None` or zero: destroyed at once, as a plain mirror does). See [`crate::versions`].
    pub fn keep_versions(mut self, keep: Option<std::time::Duration>) -> Self {
        self.keep_versions = keep.filter(|d| !d.is_zero());
        self
    }

    /// Removes kept versions older than the retention, of every client; returns how many
    /// session records went. Run at start and after each session.
    pub fn purge_versions(&self) -> io::Result<u64> {
        let Some(keep) = self.keep_versions else {
            return Ok(0);
        };
        let cutoff = crate::versions::retention_cutoff(keep);
        crate::versions::purge(&self.root, cutoff)
    }

    /// The finest mtime step the root's filesystem keeps, found when the store was
    /// opened: 1 ns on ext4, xfs, btrfs or tmpfs; 1 s or 2 s on coarse ones (FAT, ext4
    /// with 128-byte inodes, some NFS exports). Planning compares mtimes at this precision.
    pub fn mtime_precision(&self) -> std::time::Duration {
        self.mtime_precision
    }

    /// Keeps setuid and setgid bits from clients (`serve --keep-setid`). By default they
    /// are dropped: a server must not grow setuid programs from the network.
    pub fn keep_setid(mut self, keep: bool) -> Self {
        self.mode_mask = stored_mode_bits(keep);
        self
    }

    /// Whether setuid and setgid bits are kept.
    pub fn keeps_setid(&self) -> bool {
        self.mode_mask & SETID_BITS != 0
    }

    /// The server root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/client_<id>`.
    pub fn client_dir(&self, id: &ClientId) -> PathBuf {
        self.root.join(id.folder_name())
    }

    /// What the server holds for a client, in tree order ([`RelPath::tree_cmp`]), read
    /// lazily as the planner merges it with the manifest: memory stays bounded by the
    /// tree's depth and its largest directory, whatever its size. Symlinks are listed with
    /// their target (read, never followed); sockets and devices, which no client sends,
    /// as files that match nothing, so the plan replaces or deletes them.
    pub fn index(&self, id: &ClientId) -> Index {
        let dir = self.client_dir(id);
        let mut error = None;
        let walk = match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => Some(walk::tree_walk(&dir)),
            // Nothing held yet (a file in the folder's place is replaced by the first
            // store): an empty index.
            Ok(_) => None,
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            // Any other failure must not pass for an empty archive.
            Err(e) => {
                error = Some(e);
                None
            }
        };
        Index { dir, walk, error }
    }

    /// A new, empty spool for a session's tail, in `<root>/.filesync/spool/` (emptied at
    /// start, like the temporary directory).
    pub fn spool(&self) -> io::Result<Spool> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        Spool::create(self.spools.join(format!("{}-{n}.tail", self.pid)))
    }

    /// What the store holds of the beginnings of `paths` (the files a `TASKS` asks for)
    /// from interrupted sessions of `id`: one [`ResumeAt`] per file with a usable partial,
    /// in `paths` order, with the BLAKE3 hash of what is held. Reads each partial whole to
    /// hash it; a partial that cannot be read is dropped.
    pub fn resume_offers(&self, id: &ClientId, paths: &[RelPath]) -> Vec<ResumeAt> {
        let dir = self.partials.join(id.folder_name());
        if !dir.exists() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (i, p) in paths.iter().enumerate() {
            let (data, meta) = partial_paths(&dir, p);
            let Ok(m) = fs::read(&meta)
                .map_err(|_| ())
                .and_then(|b| postcard::from_bytes::<PartialMeta>(&b).map_err(|_| ()))
            else {
                continue;
            };
            if m.path != *p {
                continue;
            }
            match hash_prefix(&data, m.len) {
                Ok(hash) => out.push(ResumeAt {
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    offset: m.len,
                    size: m.size,
                    mtime: m.mtime,
                    hash,
                }),
                Err(e) => {
                    tracing::debug!(path = %p, error = %e, "dropping an unreadable partial");
                    let _ = fs::remove_file(&data);
                    let _ = fs::remove_file(&meta);
                }
            }
        }
        out
    }

    /// Block signatures of the copies the store holds of `paths` (the files a `TASKS`
    /// asks for), for the client to send deltas against: for regular files of at least
    /// [`SIGN_MIN`] bytes whose signature fits a frame, at most [`BASES_PER_TASKS`]. A
    /// signature comes from the cache written when the file was stored, or, if that is
    /// missing or stale (a file stored before, or changed by hand), is computed now and
    /// cached.
    pub fn delta_bases(&self, id: &ClientId, paths: &[RelPath]) -> Vec<(RelPath, Signature)> {
        let dir = self.client_dir(id);
        let cache = self.sigs.join(id.folder_name());
        let mut out = Vec::new();
        for p in paths {
            if out.len() == BASES_PER_TASKS {
                break;
            }
            let real = real_dirs_to(&dir, p);
            let Ok(m) = fs::symlink_metadata(p.to_path(&dir)) else {
                continue;
            };
            if !real || !m.is_file() || !worth_signing(m.len()) {
                continue;
            }
            match signature_of(&cache, &dir, p) {
                Ok(sig) => out.push((p.clone(), sig)),
                Err(e) => tracing::debug!(path = %p, error = %e, "no signature; sent whole"),
            }
        }
        out
    }

    /// A writer for one session of `id`. `report` is called, from another thread, with
    /// the outcome of every file once it is settled: stored (durable and in place) or
    /// rejected.
    pub fn receiver(
        &self,
        id: &ClientId,
        report: impl Fn(Vec<(RelPath, Outcome)>) + Send + 'static,
    ) -> io::Result<Receiver<'_>> {
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(BATCHES_QUEUED);
        let dir = self.client_dir(id);
        let record = self.keep_versions.map(|_| {
            let started = MTime::from_system(std::time::SystemTime::now()).unwrap_or(MTime::EPOCH);
            let new_folder = fs::symlink_metadata(&dir).is_err();
            SessionRecord::new(
                versions::client_versions(&self.root, id),
                started,
                new_folder,
            )
        });
        let mut placer = Placer {
            record,
            dir,
            tmp: self.tmp.clone(),
            temp_prefix: format!("{}-{}", self.pid, self.seq.fetch_add(1, Ordering::Relaxed)),
            temps: 0,
            dirs_ok: HashSet::new(),
            slow_disk: self.slow_disk,
            mode_mask: self.mode_mask,
            checked: !rustix::process::geteuid().is_root(),
            loosened: Vec::new(),
            sigs: self.sigs.join(id.folder_name()),
        };
        let thread = std::thread::Builder::new()
            .name("filesync-placer".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        Job::Batch(batch) => report(placer.place_batch(batch)),
                        Job::Finish(mut spool, budget, done) => {
                            let r = placer.finish(&mut spool, &budget);
                            // Gone before the session hears it is done.
                            drop(spool);
                            let _ = done.send(r);
                        }
                    }
                }
            })?;
        Ok(Receiver {
            store: self,
            id: id.clone(),
            partials: self.partials.join(id.folder_name()),
            open: None,
            staged: Vec::new(),
            staged_bytes: 0,
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    fn temp_path(&self) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.tmp.join(format!("{}-{n}.part", self.pid))
    }
}

/// The server's index of one client folder, in tree order: an iterator of
/// `(path, what is held)`. A read error ends the iteration and is kept for
/// [`Index::take_error`]: a session must not go on with a partial index.
#[derive(Debug)]
pub struct Index {
    dir: PathBuf,
    walk: Option<walkdir::IntoIter>,
    error: Option<io::Error>,
}

impl Index {
    /// The error that ended the iteration early (or kept it from starting), if any.
    pub fn take_error(&mut self) -> Option<io::Error> {
        self.error.take()
    }

    /// Ends the iteration on a read error, kept for [`Index::take_error`].
    fn stop(&mut self, err: walkdir::Error) -> Option<(RelPath, Held)> {
        self.error = Some(io::Error::other(err));
        self.walk = None;
        None
    }
}

impl Iterator for Index {
    type Item = (RelPath, Held);

    fn next(&mut self) -> Option<(RelPath, Held)> {
        loop {
            let e = match self.walk.as_mut()?.next()? {
                Ok(e) => e,
                Err(err) => return self.stop(err),
            };
            let Ok(rel) = RelPath::from_local(e.path().strip_prefix(&self.dir).unwrap_or(e.path()))
            else {
                // Only a path longer than a client can send gets here.
                tracing::warn!(path = %e.path().display(), "ignoring a path too long to sync");
                continue;
            };
            let m = match e.metadata() {
                Ok(m) => m,
                Err(err) => return self.stop(err),
            };
            let ft = m.file_type();
            let mut held = Held {
                kind: EntryKind::File,
                size: 0,
                mtime: walk::mtime_of(&m),
                mode: m.mode() & MODE_BITS,
                target: None,
            };
            if ft.is_dir() {
                held.kind = EntryKind::Dir;
            } else if ft.is_file() {
                held.size = m.len();
            } else if ft.is_symlink() {
                held.kind = EntryKind::Symlink;
                // A target that cannot be read or held matches no listed link, so the
                // plan replaces it.
                held.target = fs::read_link(e.path())
                    .ok()
                    .and_then(|t| LinkTarget::from_bytes(t.as_os_str().as_bytes()).ok());
            } else if ft.is_fifo() {
                held.kind = EntryKind::Fifo;
            } else {
                held.size = u64::MAX;
                held.mtime = MTime::EPOCH;
            }
            return Some((rel, held));
        }
    }
}

/// A session's tail ([`TailOp`]s) on disk, in the order the planner emitted them: a plan
/// can delete or touch more entries than fit in memory. Each op is a record
/// (`records.rs`: a little-endian `u32` length, then the bytes) holding it in postcard.
/// Removed when dropped.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    out: Option<io::BufWriter<File>>,
    error: Option<io::Error>,
}

impl Spool {
    /// A new spool at `path`, which must not exist.
    pub fn create(path: PathBuf) -> io::Result<Spool> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Spool {
            path,
            out: Some(io::BufWriter::new(file)),
            error: None,
        })
    }

    /// Appends an op. A write error is kept and reported by [`Spool::check`]; later
    /// pushes are ignored.
    pub fn push(&mut self, op: &TailOp) {
        if self.error.is_some() {
            return;
        }
        let Some(out) = self.out.as_mut() else {
            return;
        };
        let r = postcard::to_stdvec(op)
            .map_err(io::Error::other)
            .and_then(|b| crate::records::write(out, &b));
        if let Err(e) = r {
            self.error = Some(e);
        }
    }

    /// The first write error, if any.
    pub fn check(&mut self) -> io::Result<()> {
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Reads the ops back, in order.
    pub(crate) fn read(&mut self) -> io::Result<impl Iterator<Item = io::Result<TailOp>> + '_> {
        use std::io::Seek;
        self.check()?;
        let mut file = match self.out.take() {
            Some(w) => w.into_inner().map_err(|e| e.into_error())?,
            None => File::open(&self.path)?,
        };
        file.seek(io::SeekFrom::Start(0))?;
        let mut r = io::BufReader::new(file);
        Ok(std::iter::from_fn(move || {
            crate::records::read(&mut r)
                .and_then(|b| {
                    b.map(|b| postcard::from_bytes(&b).map_err(io::Error::other))
                        .transpose()
                })
                .transpose()
        }))
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// The file being received.
#[derive(Debug)]
enum Open {
    Writing {
        path: RelPath,
        mtime: MTime,
        /// Permission bits to give it, `None` to leave the default.
        mode: Option<u32>,
        size: u64,
        temp: PathBuf,
        file: Sink,
        /// A hole was skipped: the file is given its full size at the end, so a trailing
        /// hole exists too.
        sparse: bool,
        /// Bytes of the file accounted for so far (resumed, written or skipped).
        pos: u64,
    },
    /// Opening or writing failed; the rest of the content is dropped and the file rejected.
    Failed { path: RelPath, error: String },
}

/// The open file, once writing it failed: its temporary file is removed, and the rest of
/// its content will be dropped.
fn failed(path: &RelPath, temp: &Path, error: String) -> Open {
    let _ = fs::remove_file(temp);
    Open::Failed {
        path: path.clone(),
        error,
    }
}

/// Whether the client folder `dir` itself and every ancestor of `rel` in it are real
/// directories by `lstat`: a symlink standing in the folder's place would otherwise be
/// followed as the first component of every path.
fn real_dirs_to(dir: &Path, rel: &RelPath) -> bool {
    std::iter::once(dir.to_path_buf())
        .chain(rel.ancestors().map(|a| a.to_path(dir)))
        .all(|d| fs::symlink_metadata(d).is_ok_and(|m| m.is_dir()))
}

/// A short file name standing for `rel` (hex of 16 bytes of its BLAKE3 hash), for the
/// files the store keeps about a path (partials, signatures): names of any length and
/// bytes map to one short name.
fn path_key(rel: &RelPath) -> String {
    hex::encode(&blake3::hash(rel.as_bytes()).as_bytes()[..16])
}

/// Where the content of the open file goes.
#[derive(Debug)]
enum Sink {
    /// Straight into the temporary file, signed as it is written if it is worth it (not
    /// when resumed, nor once it has a hole).
    Plain(File, Option<delta::Signer>),
    /// Rebuilt from the server's copy and the delta's literal bytes (hashed as written).
    Delta(Box<Applier<File, File>>),
}

impl Sink {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Sink::Plain(f, signer) => {
                if let Some(s) = signer {
                    s.update(data);
                }
                f.write_all(data)
            }
            Sink::Delta(a) => a.literal(data),
        }
    }
}

/// A written, closed temporary file waiting for its batch's sync and rename.
#[derive(Debug)]
struct Staged {
    path: RelPath,
    temp: PathBuf,
    /// Its size, to tell without opening it whether it is worth signing.
    size: u64,
    /// Its signature, made as it was written; `None`: the placer signs it if it is worth
    /// it and has no holes.
    signature: Option<Signature>,
    /// Whether it was written with holes: not signed then (reading its holes back costs
    /// as much as data, and a client never sends a file with holes as a delta).
    sparse: bool,
}

/// Work for the placer thread, done in order.
enum Job {
    /// Make these durable and move them into place.
    Batch(Vec<Staged>),
    /// Apply the plan's tail within the deletion budget, sync, and answer.
    Finish(Spool, DeleteBudget, std::sync::mpsc::Sender<Applied>),
}

/// What applying a plan's tail did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Entries deleted (every entry of a deleted folder counts).
    pub deleted: u64,
    /// Entries not deleted because the budget did not allow them, or (in an object
    /// store) because another session wrote them after this one planned their deletion.
    pub held_back: u64,
    /// What could not be done (a deletion, a folder, a link, a mode), for the log; each
    /// counts as a failure of the session.
    pub errors: Vec<String>,
}

type JobSender = std::sync::mpsc::SyncSender<Job>;

/// Receives one session's files into a client folder.
///
/// Two threads share the work: the caller's writes temporary files, and a placer thread
/// makes each full batch durable and renames it into place, so that waiting for the disk
/// overlaps with receiving the next batch instead of adding to it.
#[derive(Debug)]
pub struct Receiver<'a> {
    store: &'a Store,
    id: ClientId,
    /// `<root>/.filesync/partial/client_<id>`.
    partials: PathBuf,
    open: Option<Open>,
    staged: Vec<Staged>,
    staged_bytes: u64,
    jobs: Option<JobSender>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Batch(b) => write!(f, "Batch({})", b.len()),
            Job::Finish(..) => f.write_str("Finish"),
        }
    }
}

/// The placer thread's state: everything that renames or deletes in the client folder.
#[derive(Debug)]
struct Placer {
    /// Where what the session replaces, deletes and adds is recorded (`None`: versions
    /// are not kept, and replaced entries are destroyed).
    record: Option<SessionRecord>,
    dir: PathBuf,
    /// The temporary directory, on the same filesystem as every staged file.
    tmp: PathBuf,
    /// Names the symlinks and FIFOs this placer makes in `tmp` before moving them.
    temp_prefix: String,
    temps: u64,
    /// Directories already checked or made in this session: a cache, emptied whenever it
    /// reaches [`DIRS_CACHED`] so that a session's memory does not grow with the tree.
    /// Files arrive in tree order, so the folders in use are the few most recent ones.
    dirs_ok: HashSet<PathBuf>,
    slow_disk: std::time::Duration,
    /// See [`Store::keep_setid`].
    mode_mask: u32,
    /// Permission checks apply to this process (it is not root): a read-only directory
    /// must be opened up before anything is placed in or deleted from it.
    checked: bool,
    /// Directories opened up (see [`Placer::loosen`]) and the modes to give back.
    loosened: Vec<(PathBuf, u32)>,
    /// `<root>/.filesync/sigs/client_<id>`: the signatures of stored files.
    sigs: PathBuf,
}

fn rejected(code: ErrorCode, reason: impl Into<String>) -> Outcome {
    Outcome::Rejected {
        code,
        reason: reason.into(),
    }
}

impl Receiver<'_> {
    /// Starts a file, to be given `mode` (masked by the store's policy) or, with `None`,
    /// the default mode for new files. Failure is not returned but remembered: the content
    /// that follows is dropped and [`commit`](Self::commit) reports the file rejected.
    pub fn open(&mut self, h: &FileHeader, mode: Option<u32>) {
        self.discard();
        let temp = self.store.temp_path();
        let (data, meta) = partial_paths(&self.partials, &h.path);
        let opened = if h.delta {
            // A delta: the file is rebuilt from the copy held now and what the client sends.
            // Readable too: the applier hashes what it copied by reading it back.
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&temp)
                .and_then(|out| {
                    let written = out.try_clone()?;
                    let base = self.base(&h.path)?;
                    let m = base.metadata()?;
                    let len = m.len();
                    let layout = BlockLayout {
                        block_size: delta::block_size(len),
                        file_len: len,
                    };
                    let mut applier = Applier::new(base, layout, out)?;
                    // A delta that turns out all literal is hashed no more than a plain
                    // file (see `commit`).
                    applier.hash_lazily();
                    // Copied blocks go from file to file inside the kernel, and the hash
                    // of what was written overlaps that on another core.
                    applier.copy_in_kernel(written);
                    if worth_signing(h.size) {
                        // The copy's cached signature, if it is of the copy as it is.
                        let cache = self.store.sigs.join(self.id.folder_name());
                        let old = read_cached(&sig_path(&cache, &h.path))
                            .filter(|c| c.size == len && c.mtime == walk::mtime_of(&m))
                            .and_then(|c| c.signature);
                        applier.sign(h.size, old)?;
                    }
                    Ok(Sink::Delta(Box::new(applier)))
                })
        } else if h.offset > 0 {
            // Resumed: what an interrupted session received becomes the temporary file.
            let _ = fs::remove_file(&meta);
            fs::rename(&data, &temp).and_then(|()| {
                let mut f = OpenOptions::new().write(true).open(&temp)?;
                f.set_len(h.offset)?;
                io::Seek::seek(&mut f, io::SeekFrom::Start(h.offset))?;
                Ok(Sink::Plain(f, None))
            })
        } else {
            // Sent whole: whatever was held of an older version is of no use.
            let _ = fs::remove_file(&meta);
            let _ = fs::remove_file(&data);
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp)
                .and_then(|f| {
                    let signer = if worth_signing(h.size) {
                        Some(delta::Signer::new(h.size)?)
                    } else {
                        None
                    };
                    Ok(Sink::Plain(f, signer))
                })
        };
        self.open = Some(match opened {
            Ok(file) => Open::Writing {
                path: h.path.clone(),
                mtime: h.mtime,
                mode: mode.map(|m| m & self.store.mode_mask),
                size: h.size,
                temp,
                file,
                sparse: false,
                pos: h.offset,
            },
            Err(e) => Open::Failed {
                path: h.path.clone(),
                error: format!("creating a temporary file: {e}"),
            },
        });
    }

    /// Appends content to the open file.
    pub fn write(&mut self, data: &[u8]) {
        self.on_writing("writing", |file, _, pos, _| {
            *pos += data.len() as u64;
            file.write_all(data)
        });
    }

    /// Does `step` to the file being written, if any (its sink, its temporary file, the
    /// bytes written so far, whether it has holes); an error makes it a failed file, the
    /// message saying `what` was being done.
    fn on_writing(
        &mut self,
        what: &str,
        step: impl FnOnce(&mut Sink, &Path, &mut u64, &mut bool) -> io::Result<()>,
    ) {
        if let Some(Open::Writing {
            path,
            temp,
            file,
            pos,
            sparse,
            ..
        }) = &mut self.open
        {
            if let Err(e) = step(file, temp, pos, sparse) {
                let failed = failed(path, temp, format!("{what}: {e}"));
                self.open = Some(failed);
            }
        }
    }

    /// Starts a file with the default mode for new files.
    #[cfg(test)]
    fn open_default(&mut self, h: &FileHeader) {
        self.open(h, None);
    }

    /// Skips `len` bytes of the open file, leaving a hole: nothing is written or
    /// allocated for them.
    pub fn skip(&mut self, len: u64) {
        use std::io::Seek;
        self.on_writing("skipping a hole", |file, _, pos, sparse| {
            *pos += len;
            *sparse = true;
            match file {
                Sink::Plain(f, signer) => {
                    // Holes are not signed as they pass: the placer signs the file.
                    *signer = None;
                    i64::try_from(len)
                        .map_err(io::Error::other)
                        .and_then(|n| f.seek(io::SeekFrom::Current(n)))
                        .map(drop)
                }
                Sink::Delta(_) => Err(io::Error::other("a hole in a delta")),
            }
        });
    }

    /// In a delta, copies `count` blocks from `block` of the server's copy into the open
    /// file.
    pub fn copy(&mut self, block: u32, count: u32) {
        self.on_writing(
            "copying blocks of the stored copy",
            |file, temp, pos, _| match file {
                Sink::Delta(a) => {
                    let before = a.written();
                    // The literal bytes before the first COPY are hashed now.
                    let r = if a.unhashed() > 0 {
                        File::open(temp).and_then(|f| a.catch_up(f))
                    } else {
                        Ok(())
                    }
                    .and_then(|()| a.copy(block, count));
                    *pos += a.written() - before;
                    r
                }
                Sink::Plain(..) => Err(io::Error::other("COPY outside a delta")),
            },
        );
    }

    /// The copy of `rel` the store holds now, opened for reading: the base of a delta.
    /// Never through a symlink.
    fn base(&self, rel: &RelPath) -> io::Result<File> {
        let dir = self.store.client_dir(&self.id);
        if !real_dirs_to(&dir, rel) {
            return Err(io::Error::other("no stored copy to apply a delta to"));
        }
        let f = walk::open_nofollow(&rel.to_path(&dir))?;
        if !f.metadata()?.is_file() {
            return Err(io::Error::other("the stored copy is not a regular file"));
        }
        Ok(f)
    }

    /// Drops the open file, if any.
    pub fn discard(&mut self) {
        if let Some(Open::Writing { temp, .. }) = self.open.take() {
            let _ = fs::remove_file(temp);
        }
    }

    /// Completes the open file: gives it its mtime and stages it; a full batch goes to the
    /// placer. A file that failed is returned rejected at once.
    pub fn commit(&mut self, hash: Option<Hash>) -> Vec<(RelPath, Outcome)> {
        match self.open.take() {
            None => Vec::new(),
            Some(Open::Failed { path, error }) => vec![(path, rejected(ErrorCode::STORAGE, error))],
            Some(Open::Writing {
                path,
                mtime,
                mode,
                size,
                temp,
                file,
                sparse,
                ..
            }) => {
                let delta = matches!(file, Sink::Delta(_));
                let mut signature = None;
                let file = match file {
                    Sink::Plain(f, signer) => {
                        signature = signer.and_then(|s| s.finish().ok());
                        Ok(f)
                    }
                    // A rebuilt file is kept only if it is the client's, byte for byte.
                    // Without COPY (the session refuses a FILE_END without a hash after
                    // one) the file is its DATA, as if sent whole, and needs no hash; with
                    // a hash given, it is checked whatever came.
                    Sink::Delta(mut a) => (match hash {
                        Some(_) if a.unhashed() > 0 => File::open(&temp)
                            .and_then(|f| a.catch_up(f))
                            .map_err(|e| format!("hashing the rebuilt file: {e}")),
                        None if a.copied() => {
                            Err("a delta with COPY ended without its hash".into())
                        }
                        _ => Ok(()),
                    })
                    .and_then(|()| {
                        a.finish_signed()
                            .map_err(|e| format!("rebuilding from the delta: {e}"))
                    })
                    .and_then(|(applied, f, sig)| {
                        let matches = match hash {
                            Some(h) => h == Hash(applied.hash),
                            None => true,
                        };
                        if matches && applied.len == size {
                            signature = sig;
                            Ok(f)
                        } else {
                            Err("the file rebuilt from the delta differs from the client's \
                                     (its hash does not match); it will be sent whole next sync"
                                .to_owned())
                        }
                    }),
                };
                let file = match file {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = fs::remove_file(&temp);
                        if delta {
                            // A false match of a block hash, or a copy changed under its
                            // signature: the file must come whole next time.
                            let cache = self.store.sigs.join(self.id.folder_name());
                            let dir = self.store.client_dir(&self.id);
                            if let Err(e) = refuse_deltas(&cache, &dir, &path) {
                                tracing::warn!(path = %path, error = %e,
                                    "cannot note that a delta failed against the stored copy");
                            }
                        }
                        return vec![(path, rejected(ErrorCode::STORAGE, e))];
                    }
                };
                let t = filetime::FileTime::from_unix_time(mtime.secs, mtime.nanos);
                let done = (if sparse { file.set_len(size) } else { Ok(()) })
                    .map_err(|e| format!("sizing: {e}"))
                    .and_then(|()| {
                        mode.map_or(Ok(()), |m| {
                            file.set_permissions(fs::Permissions::from_mode(m))
                        })
                        .map_err(|e| format!("setting the mode: {e}"))
                    })
                    .and_then(|()| {
                        filetime::set_file_handle_times(&file, Some(t), Some(t))
                            .map_err(|e| format!("setting mtime: {e}"))
                    });
                if let Err(e) = done {
                    let _ = fs::remove_file(&temp);
                    return vec![(path, rejected(ErrorCode::STORAGE, e))];
                }
                // Closed here: a batch waiting for the disk holds names, not descriptors.
                drop(file);
                self.staged.push(Staged {
                    path,
                    temp,
                    size,
                    signature,
                    sparse,
                });
                self.staged_bytes += size;
                if self.staged.len() >= BATCH_FILES || self.staged_bytes >= BATCH_BYTES {
                    self.flush();
                }
                Vec::new()
            }
        }
    }

    /// Hands the staged files to the placer, which makes them durable and moves them into
    /// place; their outcomes go to the `report` callback.
    pub fn flush(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        self.staged_bytes = 0;
        let batch = std::mem::take(&mut self.staged);
        if let Some(jobs) = &self.jobs {
            if let Err(std::sync::mpsc::SendError(Job::Batch(batch))) = jobs.send(Job::Batch(batch))
            {
                for s in batch {
                    let _ = fs::remove_file(s.temp);
                }
            }
        }
    }

    /// Ends the session's writes: every staged file placed, deletions applied as far as
    /// `budget` allows, directories made, and all of it durable. Every file's outcome has
    /// been reported when this returns.
    pub fn finish(&mut self, tail: Spool, budget: &DeleteBudget) -> Applied {
        self.discard();
        self.flush();
        let (tx, rx) = std::sync::mpsc::channel();
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|j| j.send(Job::Finish(tail, budget.clone(), tx)).is_ok());
        match rx.recv() {
            Ok(r) if sent => r,
            _ => Applied {
                errors: vec!["the placer thread stopped".into()],
                ..Applied::default()
            },
        }
    }
}

impl Placer {
    fn place_batch(&mut self, staged: Vec<Staged>) -> Vec<(RelPath, Outcome)> {
        std::thread::sleep(self.slow_disk);
        let synced = sync_all(&self.tmp, staged.iter().map(|s| s.temp.as_path()));
        let outcomes = staged
            .into_iter()
            .map(|s| {
                let outcome = match &synced {
                    Err(e) => {
                        let _ = fs::remove_file(&s.temp);
                        rejected(ErrorCode::STORAGE, format!("syncing: {e}"))
                    }
                    Ok(()) => match self.place(&s.temp, &s.path) {
                        Ok(()) => {
                            // Signed now, so that a delta against it later need not read
                            // it whole again: with the signature made as it was written,
                            // if any, otherwise reading it while it is in the page cache.
                            // Small files (most of a tree) are not even opened again.
                            let signed = match s.signature {
                                Some(sig) => self.cache_signature(&s.path, sig),
                                None if !s.sparse && worth_signing(s.size) => {
                                    signature_of(&self.sigs, &self.dir, &s.path).map(|_| ())
                                }
                                None => Ok(()),
                            };
                            if let Err(e) = signed {
                                tracing::debug!(path = %s.path, error = %e, "cannot sign");
                            }
                            Outcome::Stored
                        }
                        Err(e) => {
                            let _ = fs::remove_file(&s.temp);
                            rejected(ErrorCode::STORAGE, format!("moving into place: {e}"))
                        }
                    },
                };
                (s.path, outcome)
            })
            .collect::<Vec<_>>();
        // What the batch added is noted before the next sync makes its renames durable.
        if let Some(Err(e)) = self.record.as_mut().map(SessionRecord::flush) {
            tracing::warn!(error = %e, "cannot write the session's record of added entries");
        }
        outcomes
    }

    /// Caches `sig`, made from the bytes of the file just placed at `rel`, under the
    /// placed file's size and mtime (an error if its size is not the signature's).
    fn cache_signature(&self, rel: &RelPath, sig: Signature) -> io::Result<()> {
        let m = fs::symlink_metadata(rel.to_path(&self.dir))?;
        if !m.is_file() || m.len() != sig.file_len {
            return Err(io::Error::other("the placed file is not the one signed"));
        }
        write_cached(
            &self.sigs,
            rel,
            &CachedSig {
                size: m.len(),
                mtime: walk::mtime_of(&m),
                signature: Some(sig),
            },
        )
    }

    fn finish(&mut self, tail: &mut Spool, budget: &DeleteBudget) -> Applied {
        let mut done = Applied::default();
        match tail.read() {
            Err(e) => done.errors.push(format!("reading the plan's tail: {e}")),
            Ok(ops) => {
                for op in ops {
                    match op {
                        Err(e) => {
                            done.errors.push(format!("reading the plan's tail: {e}"));
                            break;
                        }
                        Ok(op) => self.apply(op, budget, &mut done),
                    }
                }
            }
        }
        let errors = &mut done.errors;
        if let Err(e) = ensure_dir(&self.dir) {
            errors.push(format!("making the client folder: {e}"));
        }
        self.restore();
        if let Some(Err(e)) = self.record.as_mut().map(SessionRecord::flush) {
            errors.push(format!(
                "writing the session's record of added entries: {e}"
            ));
        }
        if let Err(e) = sync_tree(&self.dir) {
            errors.push(format!("syncing: {e}"));
        }
        done
    }

    /// Applies one op of the tail; ops come in tree order, so a directory's time is set
    /// after everything inside it is done. Deletions go only as far as `budget` allows.
    fn apply(&mut self, op: TailOp, budget: &DeleteBudget, done: &mut Applied) {
        let errors = &mut done.errors;
        match op {
            TailOp::Delete(p) => {
                // Counting a subtree costs a walk: only a capped budget needs it.
                let allowed = match budget {
                    DeleteBudget::All => true,
                    DeleteBudget::Nothing(_) => false,
                    DeleteBudget::UpTo(..) => {
                        let n = self.count(&p);
                        let fits = budget.allows(done.deleted, n);
                        if !fits {
                            done.held_back += n;
                        }
                        fits
                    }
                };
                if allowed {
                    match self.remove(&p) {
                        Ok(n) => done.deleted += n,
                        Err(e) => errors.push(format!("deleting {p}: {e}")),
                    }
                }
            }
            TailOp::MakeDir(d) => {
                if let Err(e) = self.ensure_parents(&d).and_then(|_| self.make_dir(&d)) {
                    errors.push(format!("making directory {d}: {e}"));
                }
            }
            TailOp::DirAttrs(d, t, mode) => {
                if self.is_real(&d, fs::Metadata::is_dir) {
                    let full = d.to_path(&self.dir);
                    // Its mode is set here; nothing to give back later.
                    self.loosened.retain(|(p, _)| *p != full);
                    let ft = filetime::FileTime::from_unix_time(t.secs, t.nanos);
                    let r = mode
                        .map_or(Ok(()), |m| {
                            fs::set_permissions(
                                &full,
                                fs::Permissions::from_mode(m & self.mode_mask),
                            )
                        })
                        .and_then(|()| filetime::set_file_mtime(&full, ft));
                    if let Err(e) = r {
                        errors.push(format!("setting the mode and mtime of {d}: {e}"));
                    }
                }
            }
            TailOp::Link(p, target, t) => {
                if let Err(e) = self.place_special(&p, |tmp| {
                    std::os::unix::fs::symlink(target.as_path(), tmp)?;
                    let ft = filetime::FileTime::from_unix_time(t.secs, t.nanos);
                    filetime::set_symlink_file_times(tmp, ft, ft)
                }) {
                    errors.push(format!("making the symlink {p}: {e}"));
                }
            }
            TailOp::Fifo(p, mode, t) => {
                let mode = mode & self.mode_mask;
                let ft = filetime::FileTime::from_unix_time(t.secs, t.nanos);
                if let Err(e) = self.place_special(&p, |tmp| make_fifo(tmp, mode, ft)) {
                    errors.push(format!("making the FIFO {p}: {e}"));
                }
            }
            TailOp::Chmod(p, mode) => {
                // Only a regular file reached through real directories: chmod(2)
                // follows symlinks, so a link must never be given to it.
                if self.is_real(&p, fs::Metadata::is_file) {
                    let full = p.to_path(&self.dir);
                    let perm = fs::Permissions::from_mode(mode & self.mode_mask);
                    if let Err(e) = fs::set_permissions(full, perm) {
                        errors.push(format!("setting the mode of {p}: {e}"));
                    }
                } else {
                    errors.push(format!("setting the mode of {p}: no longer a regular file"));
                }
            }
        }
    }

    /// Whether `rel` is reached through real directories (no symlink) and is, by
    /// `lstat`, what `is` asks.
    fn is_real(&self, rel: &RelPath, is: fn(&fs::Metadata) -> bool) -> bool {
        self.real_dirs_to(rel) && fs::symlink_metadata(rel.to_path(&self.dir)).is_ok_and(|m| is(&m))
    }

    /// See the free function [`real_dirs_to`].
    fn real_dirs_to(&self, rel: &RelPath) -> bool {
        real_dirs_to(&self.dir, rel)
    }

    /// Makes a symlink or FIFO with `make` under a temporary name, then moves it into
    /// place as files are, replacing what stands there.
    fn place_special(
        &mut self,
        rel: &RelPath,
        make: impl FnOnce(&Path) -> io::Result<()>,
    ) -> io::Result<()> {
        self.temps += 1;
        let tmp = self
            .tmp
            .join(format!("{}-s{}.part", self.temp_prefix, self.temps));
        let r = make(&tmp).and_then(|()| self.place(&tmp, rel));
        if r.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        r
    }

    /// Ensures every ancestor of `rel` is a real directory under the client folder,
    /// replacing files or symlinks in the way; returns the full target path.
    fn ensure_parents(&mut self, rel: &RelPath) -> io::Result<PathBuf> {
        if self.dirs_ok.len() >= DIRS_CACHED {
            self.dirs_ok.clear();
        }
        if self.dirs_ok.insert(self.dir.clone()) {
            ensure_dir(&self.dir)?;
            self.loosen(&self.dir.clone())?;
        }
        for a in rel.ancestors() {
            let p = a.to_path(&self.dir);
            if !self.dirs_ok.contains(&p) {
                self.make_dir(&a)?;
                self.loosen(&p)?;
                self.dirs_ok.insert(p);
            }
        }
        Ok(rel.to_path(&self.dir))
    }

    /// Makes `rel` a real directory (its parents must be): an existing directory stays, a
    /// file or symlink in its place is replaced (kept as a version when versions are
    /// kept; never followed), a missing one is created (and noted as added).
    fn make_dir(&mut self, rel: &RelPath) -> io::Result<()> {
        let p = rel.to_path(&self.dir);
        let Some(rec) = self.record.as_mut() else {
            return ensure_dir(&p);
        };
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => {
                fs::rename(&p, rec.version_path(rel)?)?;
                rec.note_added(rel)?;
                fs::create_dir(&p)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                rec.note_added(rel)?;
                fs::create_dir(&p)
            }
            Err(e) => Err(e),
        }
    }

    /// Opens up a directory its owner cannot write or search (a client's read-only
    /// folder, given mode 0555 by an earlier session), so that a server not running as
    /// root can place and delete entries in it, as rsync does; its mode is given back
    /// at the end of the session ([`Placer::restore`]), unless the plan sets a new one.
    fn loosen(&mut self, dir: &Path) -> io::Result<()> {
        if !self.checked {
            return Ok(());
        }
        let m = fs::symlink_metadata(dir)?;
        let mode = m.mode() & MODE_BITS;
        if m.is_dir() && mode & 0o300 != 0o300 {
            fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o700))?;
            self.loosened.push((dir.to_path_buf(), mode));
        }
        Ok(())
    }

    /// Gives back the modes of the directories [`Placer::loosen`] opened up, where
    /// nothing else changed them since.
    fn restore(&mut self) {
        for (dir, mode) in std::mem::take(&mut self.loosened).into_iter().rev() {
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() && m.mode() & MODE_BITS == mode | 0o700 => {
                    if let Err(e) = fs::set_permissions(&dir, fs::Permissions::from_mode(mode)) {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot give a folder its mode back");
                    }
                }
                _ => {}
            }
        }
    }

    fn place(&mut self, temp: &Path, rel: &RelPath) -> io::Result<()> {
        let dest = self.ensure_parents(rel)?;
        if let Some(rec) = self.record.as_mut() {
            // What stands at the path is kept as a version first: a hard link (the path
            // keeps the old version until the rename below swaps in the new one), or, for
            // a directory the client replaced with a file, the whole directory moved.
            match fs::symlink_metadata(&dest) {
                Ok(m) if m.is_dir() => {
                    let v = rec.version_path(rel)?;
                    move_dir(&dest, &v, &m, self.checked)?;
                    self.dirs_ok.retain(|d| !d.starts_with(&dest));
                }
                // link(2) does not follow a symlink: the link itself is kept.
                Ok(_) => fs::hard_link(&dest, rec.version_path(rel)?)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => rec.note_added(rel)?,
                Err(e) => return Err(e),
            }
            return fs::rename(temp, &dest);
        }
        // rename(2) replaces a file or a symlink (never following it) but not a directory.
        match fs::rename(temp, &dest) {
            Err(_) if fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) => {
                // The client replaced a directory with a file: the plan deletes everything
                // in it, and the file cannot land until it is gone.
                fs::remove_dir_all(&dest)?;
                self.dirs_ok.retain(|d| !d.starts_with(&dest));
                fs::rename(temp, dest)
            }
            other => other,
        }
    }

    /// How many entries deleting `rel` would remove: 0 if it is gone or reached through
    /// a symlink, 1 for a non-directory, the whole subtree for a directory.
    fn count(&self, rel: &RelPath) -> u64 {
        if !self.real_dirs_to(rel) {
            return 0;
        }
        let p = rel.to_path(&self.dir);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => walkdir::WalkDir::new(&p)
                .follow_links(false)
                .into_iter()
                .count() as u64,
            Ok(_) => 1,
            Err(_) => 0,
        }
    }

    /// Deletes one entry, and everything in it if it is a directory, without following
    /// symlinks; returns how many entries were deleted (0 if it was already gone).
    fn remove(&mut self, rel: &RelPath) -> io::Result<u64> {
        // Through a symlinked ancestor (or a symlinked client folder) the path would name
        // something outside the folder.
        if !self.real_dirs_to(rel) {
            return Ok(0);
        }
        let p = rel.to_path(&self.dir);
        if let Some(parent) = p.parent() {
            self.loosen(parent)?;
        }
        if let Some(rec) = self.record.as_mut() {
            // Kept, not destroyed: one rename moves the entry, a folder whole, aside.
            return match fs::symlink_metadata(&p) {
                Ok(m) => {
                    let v = rec.version_path(rel)?;
                    let n = if m.is_dir() {
                        let n = walkdir::WalkDir::new(&p)
                            .follow_links(false)
                            .into_iter()
                            .count();
                        move_dir(&p, &v, &m, self.checked)?;
                        n as u64
                    } else {
                        fs::rename(&p, v)?;
                        1
                    };
                    self.dirs_ok.retain(|d| !d.starts_with(&p));
                    Ok(n)
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
                Err(e) => Err(e),
            };
        }
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {
                // Counted first, for the session's tally; walkdir never follows links.
                let n = walkdir::WalkDir::new(&p)
                    .follow_links(false)
                    .into_iter()
                    .count();
                if let Err(e) = fs::remove_dir_all(&p) {
                    if e.kind() != io::ErrorKind::PermissionDenied || !self.checked {
                        return Err(e);
                    }
                    // Read-only folders inside: open every one up (they are going), then
                    // try again.
                    for d in walkdir::WalkDir::new(&p).follow_links(false) {
                        let d = d.map_err(io::Error::other)?;
                        if d.file_type().is_dir() {
                            fs::set_permissions(d.path(), fs::Permissions::from_mode(0o700))?;
                        }
                    }
                    fs::remove_dir_all(&p)?;
                }
                self.dirs_ok.retain(|d| !d.starts_with(&p));
                Ok(n as u64)
            }
            Ok(_) => fs::remove_file(&p).map(|()| 1),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Placer {
    /// A session that ends early gives back the modes it opened up, too.
    fn drop(&mut self) {
        self.restore();
    }
}

impl Receiver<'_> {
    /// Keeps what arrived of the open file, if enough did, for a later session to resume
    /// ([`Store::resume_offers`]); drops it otherwise.
    fn keep_partial(&mut self) {
        let Some(Open::Writing {
            path,
            mtime,
            size,
            temp,
            file,
            pos,
            ..
        }) = self.open.take()
        else {
            return;
        };
        let Sink::Plain(file, _) = file else {
            // A half-rebuilt delta is no beginning of the file to resume.
            let _ = fs::remove_file(&temp);
            return;
        };
        if pos < RESUME_MIN {
            let _ = fs::remove_file(&temp);
            return;
        }
        let (data, meta) = partial_paths(&self.partials, &path);
        let kept = file
            .set_len(pos)
            .and_then(|()| file.sync_data())
            .and_then(|()| fs::create_dir_all(&self.partials))
            .and_then(|()| fs::rename(&temp, &data))
            .and_then(|()| {
                let m = PartialMeta {
                    path: path.clone(),
                    size,
                    mtime,
                    len: pos,
                };
                let bytes = postcard::to_stdvec(&m).map_err(io::Error::other)?;
                let tmp = meta.with_extension("meta.tmp");
                fs::write(&tmp, bytes)?;
                fs::rename(tmp, &meta)
            });
        match kept {
            Ok(()) => {
                tracing::info!(path = %path, bytes = pos, "kept the beginning of an interrupted file, to resume")
            }
            Err(e) => {
                tracing::debug!(path = %path, error = %e, "cannot keep an interrupted file");
                let _ = fs::remove_file(&temp);
                let _ = fs::remove_file(&data);
            }
        }
    }
}

impl Drop for Receiver<'_> {
    /// An interrupted session keeps the files that arrived whole (they are placed), and
    /// the beginning of the one being received, out of the client folder, to resume it
    /// next time (see [`RESUME_MIN`]); the placer is waited for, so that nothing is still
    /// being renamed once the session is reported over.
    fn drop(&mut self) {
        self.keep_partial();
        self.flush();
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Moves the directory `from` (whose metadata is `m`) to `to`. Renaming a directory
/// rewrites its `..` entry, which needs write permission on it when permission checks
/// apply (`checked`): a read-only one is opened up for the rename, and its mode given
/// back where it lands.
fn move_dir(from: &Path, to: &Path, m: &fs::Metadata, checked: bool) -> io::Result<()> {
    let mode = m.mode() & MODE_BITS;
    if !checked || mode & 0o200 != 0 {
        return fs::rename(from, to);
    }
    fs::set_permissions(from, fs::Permissions::from_mode(mode | 0o200))?;
    let r = fs::rename(from, to);
    let at = if r.is_ok() { to } else { from };
    fs::set_permissions(at, fs::Permissions::from_mode(mode))?;
    r
}

/// Makes `p` a real directory: an existing directory stays, a file or symlink in its
/// place is removed (never followed), a missing one is created.
fn ensure_dir(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => {
            fs::remove_file(p)?;
            fs::create_dir(p)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(p),
        Err(e) => Err(e),
    }
}

/// Files smaller than this get no block signature and are always sent whole: below it a
/// delta saves less than its round trip and signature cost.
pub const SIGN_MIN: u64 = 1 << 20;

/// Signatures sent with one `TASKS`, at most (a client holds a bounded number at once).
pub const BASES_PER_TASKS: usize = 8;

/// Whether a file of `len` bytes gets a block signature: at least [`SIGN_MIN`], and its
/// signature fits in one frame with 64 KiB to spare (up to about 10 GiB).
fn worth_signing(len: u64) -> bool {
    len >= SIGN_MIN
        && delta::signature_wire_len(len) + 64 * 1024 <= crate::codec::MAX_FRAME_LEN as u64
}

/// The first bytes of a cached signature file: a name and the format's version, 3 since
/// strong hashes are XXH3-64 (version 2 had 8 bytes of BLAKE3; version 1, 16-byte hashes,
/// had no header). A file without this header is ignored and the signature computed
/// again, never misread.
const SIG_CACHE_MAGIC: &[u8; 6] = b"FSSIG\x03";

/// What a cached signature is of: the stored file's size and mtime when signed.
#[derive(serde::Serialize, serde::Deserialize)]
struct CachedSig {
    size: u64,
    mtime: MTime,
    /// `None`: a delta against this copy failed its whole-file check, so none is offered
    /// until the copy is replaced (the client then sends the file whole).
    signature: Option<Signature>,
}

/// The path of the cached signature of `rel` in `cache`.
fn sig_path(cache: &Path, rel: &RelPath) -> PathBuf {
    cache.join(format!("{}.sig", path_key(rel)))
}

/// The cache entry at `path`, if it is of the current format.
fn read_cached(path: &Path) -> Option<CachedSig> {
    let bytes = fs::read(path).ok()?;
    let body = bytes.strip_prefix(SIG_CACHE_MAGIC.as_slice())?;
    postcard::from_bytes(body).ok()
}

/// Writes a cache entry atomically (a temporary file renamed over the old entry).
fn write_cached(cache: &Path, rel: &RelPath, entry: &CachedSig) -> io::Result<()> {
    let mut bytes = SIG_CACHE_MAGIC.to_vec();
    bytes.extend(postcard::to_stdvec(entry).map_err(io::Error::other)?);
    fs::create_dir_all(cache)?;
    let path = sig_path(cache, rel);
    let tmp = path.with_extension("sig.tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(tmp, &path)
}

/// The signature of the stored file `rel` under `dir`: from the cache in `cache` if it
/// matches the file's size and mtime, otherwise computed (reading the file once) and
/// cached. Errors: files too small or too large to sign, and a copy that a delta failed
/// against ([`refuse_deltas`]).
fn signature_of(cache: &Path, dir: &Path, rel: &RelPath) -> io::Result<Signature> {
    let f = walk::open_nofollow(&rel.to_path(dir))?;
    let m = f.metadata()?;
    if !m.is_file() || !worth_signing(m.len()) {
        return Err(io::Error::other("not a file to sign"));
    }
    let mtime = walk::mtime_of(&m);
    if let Some(c) = read_cached(&sig_path(cache, rel)) {
        if c.size == m.len() && c.mtime == mtime {
            match c.signature {
                None => {
                    return Err(io::Error::other(
                        "a delta against this copy failed its check",
                    ))
                }
                Some(sig) if sig.validate().is_ok() => return Ok(sig),
                Some(_) => {}
            }
        }
    }
    let signature = Signature::compute(&f, m.len())?;
    write_cached(
        cache,
        rel,
        &CachedSig {
            size: m.len(),
            mtime,
            signature: Some(signature.clone()),
        },
    )?;
    Ok(signature)
}

/// Stops offering deltas against the stored copy of `rel` under `dir` as it is now (its
/// size and mtime), after one failed its whole-file check: the next `TASKS` for it gets
/// no `SIGNATURE`, so the client sends it whole. Replacing the copy lifts this.
fn refuse_deltas(cache: &Path, dir: &Path, rel: &RelPath) -> io::Result<()> {
    let m = walk::open_nofollow(&rel.to_path(dir))?.metadata()?;
    write_cached(
        cache,
        rel,
        &CachedSig {
            size: m.len(),
            mtime: walk::mtime_of(&m),
            signature: None,
        },
    )
}

/// What an interrupted session must have received of a file for its beginning to be
/// kept and resumed: below it, sending the file again costs less than the bookkeeping.
pub const RESUME_MIN: u64 = 1 << 20;

/// How long the beginning of an interrupted file is kept for a session to resume it.
const PARTIAL_KEEP: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// What a kept partial file is the beginning of.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct PartialMeta {
    path: RelPath,
    size: u64,
    mtime: MTime,
    /// Bytes kept.
    len: u64,
}

/// `<dir>/<key>.data` and `<dir>/<key>.meta` for the partial of `rel` ([`path_key`]).
fn partial_paths(dir: &Path, rel: &RelPath) -> (PathBuf, PathBuf) {
    let key = path_key(rel);
    (
        dir.join(format!("{key}.data")),
        dir.join(format!("{key}.meta")),
    )
}

/// BLAKE3 of the first `len` bytes of the file at `path`; an error if it is shorter.
fn hash_prefix(path: &Path, len: u64) -> io::Result<Hash> {
    let mut h = blake3::Hasher::new();
    walk::hash_file_prefix(&File::open(path)?, len, &mut h)?;
    Ok(Hash(*h.finalize().as_bytes()))
}

/// Removes partials older than [`PARTIAL_KEEP`]; a failure only costs space.
fn purge_partials(partials: &Path) {
    let old = |p: &Path| {
        fs::symlink_metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > PARTIAL_KEEP)
    };
    for client in fs::read_dir(partials).into_iter().flatten().flatten() {
        for f in fs::read_dir(client.path()).into_iter().flatten().flatten() {
            if old(&f.path()) {
                let _ = fs::remove_file(f.path());
            }
        }
    }
}

/// Makes the given closed files, all under `dir`, durable: one `syncfs` of `dir`'s
/// filesystem when the platform has it, which costs one journal commit for the whole batch
/// instead of one per file; otherwise each file is reopened and synced in turn, so at most
/// one descriptor is open at a time.
fn sync_all<'f>(dir: &Path, files: impl Iterator<Item = &'f Path>) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    if File::open(dir).is_ok_and(|d| rustix::fs::syncfs(&d).is_ok()) {
        return Ok(());
    }
    files
        .into_iter()
        .try_for_each(|p| OpenOptions::new().write(true).open(p)?.sync_data())
}

/// Makes renames and deletions under `dir` durable.
fn sync_tree(dir: &Path) -> io::Result<()> {
    let d = File::open(dir)?;
    #[cfg(target_os = "linux")]
    if rustix::fs::syncfs(&d).is_ok() {
        return Ok(());
    }
    d.sync_all()
}

/// Makes a FIFO at `path` with exactly `mode` and `mtime` (also its atime). The mode is
/// set apart from mknod, which the umask would trim; a FIFO is never opened, so its mode
/// and times are set by name.
pub(crate) fn make_fifo(path: &Path, mode: u32, mtime: filetime::FileTime) -> io::Result<()> {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    filetime::set_symlink_file_times(path, mtime, mtime)
}

impl crate::archive::HeldIndex for Index {
    fn take_error(&mut self) -> Option<io::Error> {
        Index::take_error(self)
    }
}

impl crate::archive::Archive for Store {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn keeps_setid(&self) -> bool {
        Store::keeps_setid(self)
    }

    fn mtime_precision(&self) -> std::time::Duration {
        Store::mtime_precision(self)
    }

    fn index(&self, id: &ClientId) -> Box<dyn crate::archive::HeldIndex> {
        Box::new(Store::index(self, id))
    }

    fn spool(&self) -> io::Result<Spool> {
        Store::spool(self)
    }

    fn resume_offers(&self, id: &ClientId, paths: &[RelPath]) -> Vec<ResumeAt> {
        Store::resume_offers(self, id, paths)
    }

    fn delta_bases(&self, id: &ClientId, paths: &[RelPath]) -> Vec<(RelPath, Signature)> {
        Store::delta_bases(self, id, paths)
    }

    fn writer<'a>(
        &'a self,
        id: &ClientId,
        report: crate::archive::Report,
        // A local root has one server, which runs one session per client itself: no
        // shared lease, so nothing ever raises the fence.
        _fence: crate::archive::Fence,
    ) -> io::Result<Box<dyn crate::archive::Writer + 'a>> {
        Ok(Box::new(self.receiver(id, report)?))
    }

    fn purge_versions(&self) -> io::Result<u64> {
        Store::purge_versions(self)
    }
}

impl crate::archive::Writer for Receiver<'_> {
    fn open(&mut self, h: &FileHeader, mode: Option<u32>) {
        Receiver::open(self, h, mode);
    }

    fn write(&mut self, data: &[u8]) {
        Receiver::write(self, data);
    }

    fn skip(&mut self, len: u64) {
        Receiver::skip(self, len);
    }

    fn copy(&mut self, block: u32, count: u32) {
        Receiver::copy(self, block, count);
    }

    fn discard(&mut self) {
        Receiver::discard(self);
    }

    fn commit(&mut self, hash: Option<Hash>) -> Vec<(RelPath, Outcome)> {
        Receiver::commit(self, hash)
    }

    fn flush(&mut self) {
        Receiver::flush(self);
    }

    fn finish(&mut self, tail: Spool, budget: &DeleteBudget) -> Applied {
        Receiver::finish(self, tail, budget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::Tail;

    /// Files from 1 MiB up to about 10 GiB get a signature (blocks grow past rsync's
    /// rule from about 6 GiB on so that it fits one frame); larger ones are sent whole.
    #[test]
    fn files_up_to_about_10_gib_are_signed() {
        assert!(!worth_signing(SIGN_MIN - 1));
        assert!(worth_signing(SIGN_MIN));
        for len in [6u64 << 30, 8 << 30, 9 << 30] {
            assert!(worth_signing(len), "{len}");
        }
        // 81,918 blocks of 128 KiB: the most whose signature leaves 64 KiB of the frame.
        let last = 81_918 * u64::from(delta::MAX_BLOCK_SIZE);
        assert!(worth_signing(last));
        assert!(!worth_signing(last + 1));
        assert!(!worth_signing(16 << 30));
    }

    fn spool(store: &Store, tail: Tail) -> Spool {
        let mut s = store.spool().unwrap();
        for op in tail.into_ops() {
            s.push(&op);
        }
        s
    }

    type Reported = std::sync::Arc<std::sync::Mutex<Vec<(RelPath, Outcome)>>>;

    fn collect() -> (Reported, impl Fn(Vec<(RelPath, Outcome)>) + Send + 'static) {
        let seen: Reported = Default::default();
        let sink = std::sync::Arc::clone(&seen);
        (seen, move |v| sink.lock().unwrap().extend(v))
    }

    fn header(p: &str, size: u64) -> FileHeader {
        FileHeader {
            path: RelPath::parse(p).unwrap(),
            size,
            mtime: MTime::new(1_600_000_000, 123_456_789).unwrap(),
            mode: 0o644,
            delta: false,
            offset: 0,
        }
    }

    #[test]
    fn stores_atomically_with_mtime() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let id = ClientId::parse("a").unwrap();
        let (seen, report) = collect();
        let mut r = store.receiver(&id, report).unwrap();
        r.open_default(&header("d/x.txt", 5));
        r.write(b"hel");
        let dest = root.path().join("client_a/d/x.txt");
        assert!(!dest.exists(), "nothing under the final name before commit");
        r.write(b"lo");
        assert!(r.commit(None).is_empty(), "staged, not yet placed");
        assert!(!dest.exists());
        r.finish(spool(&store, Tail::default()), &DeleteBudget::All);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(RelPath::parse("d/x.txt").unwrap(), Outcome::Stored)]
        );
        assert_eq!(fs::read(&dest).unwrap(), b"hello");
        let m = fs::metadata(&dest).unwrap();
        assert_eq!(
            MTime::from_system(m.modified().unwrap()).unwrap(),
            MTime::new(1_600_000_000, 123_456_789).unwrap()
        );
        drop(r);
        assert_eq!(
            fs::read_dir(root.path().join(".filesync/tmp"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn an_interrupted_session_keeps_whole_files_only() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let id = ClientId::parse("a").unwrap();
        let (seen, report) = collect();
        let mut r = store.receiver(&id, report).unwrap();
        r.open_default(&header("whole", 1));
        r.write(b"1");
        r.commit(None);
        r.open_default(&header("partial", 10));
        r.write(b"12");
        drop(r);
        assert_eq!(fs::read(root.path().join("client_a/whole")).unwrap(), b"1");
        assert!(!root.path().join("client_a/partial").exists());
        assert_eq!(seen.lock().unwrap().len(), 1);
        assert_eq!(
            fs::read_dir(root.path().join(".filesync/tmp"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn never_follows_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let id = ClientId::parse("a").unwrap();
        fs::create_dir_all(root.path().join("client_a")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("client_a/d")).unwrap();
        fs::write(outside.path().join("victim"), b"keep").unwrap();
        let (seen, report) = collect();
        let mut r = store.receiver(&id, report).unwrap();
        r.open_default(&header("d/x.txt", 1));
        r.write(b"!");
        r.commit(None);
        let tail = Tail {
            delete: vec![RelPath::parse("d/victim").unwrap()],
            ..Tail::default()
        };
        let Applied {
            deleted, errors, ..
        } = r.finish(spool(&store, tail), &DeleteBudget::All);
        assert_eq!(seen.lock().unwrap()[0].1, Outcome::Stored);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(deleted, 0);
        assert_eq!(fs::read(outside.path().join("victim")).unwrap(), b"keep");
        assert!(!outside.path().join("x.txt").exists());
        assert!(fs::symlink_metadata(root.path().join("client_a/d"))
            .unwrap()
            .is_dir());
    }

    #[test]
    fn directory_times_are_set_after_everything_else() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let id = ClientId::parse("a").unwrap();
        let mut r = store.receiver(&id, |_| {}).unwrap();
        r.open_default(&header("d/f", 1));
        r.write(b"1");
        r.commit(None);
        let when = MTime::new(1_500_000_000, 42).unwrap();
        let tail = Tail {
            make_dirs: vec![RelPath::parse("d/empty").unwrap()],
            dir_attrs: vec![
                (RelPath::parse("d").unwrap(), when, None),
                (RelPath::parse("d/empty").unwrap(), when, Some(0o700)),
            ],
            ..Tail::default()
        };
        let Applied { errors, .. } = r.finish(spool(&store, tail), &DeleteBudget::All);
        assert!(errors.is_empty(), "{errors:?}");
        for d in ["client_a/d", "client_a/d/empty"] {
            let m = fs::metadata(root.path().join(d)).unwrap();
            assert_eq!(
                MTime::from_system(m.modified().unwrap()).unwrap(),
                when,
                "{d}"
            );
        }
    }

    #[test]
    fn replaces_dir_with_file_and_cleans_stale_temps() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join(".filesync/tmp")).unwrap();
        fs::write(root.path().join(".filesync/tmp/old.part"), b"x").unwrap();
        let store = Store::open(root.path()).unwrap();
        assert_eq!(
            fs::read_dir(root.path().join(".filesync/tmp"))
                .unwrap()
                .count(),
            0
        );
        fs::create_dir_all(root.path().join("client_a/a/b")).unwrap();
        let id = ClientId::parse("a").unwrap();
        let (seen, report) = collect();
        let mut r = store.receiver(&id, report).unwrap();
        r.open_default(&header("a", 2));
        r.write(b"hi");
        r.commit(None);
        let Applied { errors, .. } = r.finish(spool(&store, Tail::default()), &DeleteBudget::All);
        assert_eq!(seen.lock().unwrap()[0].1, Outcome::Stored);
        assert!(errors.is_empty());
        assert_eq!(fs::read(root.path().join("client_a/a")).unwrap(), b"hi");
    }

    #[test]
    fn index_lists_every_kind_without_following_links() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let d = root.path().join("client_a");
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("sub/f"), b"123").unwrap();
        fs::set_permissions(d.join("sub/f"), fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink("/etc", d.join("link")).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
        let idx: Vec<_> = store.index(&ClientId::parse("a").unwrap()).collect();
        let names: Vec<_> = idx
            .iter()
            .map(|(p, h)| (p.to_string(), h.kind, h.size))
            .collect();
        assert_eq!(
            names,
            [
                ("link".into(), EntryKind::Symlink, 0),
                ("sock".into(), EntryKind::File, u64::MAX),
                ("sub".into(), EntryKind::Dir, 0),
                ("sub/f".into(), EntryKind::File, 3)
            ]
        );
        assert_eq!(idx[0].1.target.as_ref().unwrap().as_bytes(), b"/etc");
        assert_eq!(idx[3].1.mode, 0o600);
    }

    #[test]
    fn files_get_their_modes_and_setid_bits_only_when_kept() {
        for keep in [false, true] {
            let root = tempfile::tempdir().unwrap();
            let store = Store::open(root.path()).unwrap().keep_setid(keep);
            let id = ClientId::parse("a").unwrap();
            let mut r = store.receiver(&id, |_| {}).unwrap();
            for (name, mode) in [("key", 0o600), ("script", 0o755), ("suid", 0o4755)] {
                r.open(&header(name, 1), Some(mode));
                r.write(b"x");
                r.commit(None);
            }
            let tail = Tail {
                specials: vec![TailOp::Fifo(p("fifo"), 0o2640, MTime::EPOCH)],
                dir_attrs: vec![],
                ..Tail::default()
            };
            let Applied { errors, .. } = r.finish(spool(&store, tail), &DeleteBudget::All);
            assert!(errors.is_empty(), "{errors:?}");
            let mode = |n: &str| {
                fs::symlink_metadata(root.path().join("client_a").join(n))
                    .unwrap()
                    .mode()
                    & 0o7777
            };
            assert_eq!((mode("key"), mode("script")), (0o600, 0o755));
            let setid = if keep { 0o6000 } else { 0 };
            assert_eq!(mode("suid"), 0o755 | (0o4000 & setid), "keep {keep}");
            assert_eq!(mode("fifo"), 0o640 | (0o2000 & setid), "keep {keep}");
        }
    }

    fn p(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    #[test]
    fn symlinks_and_fifos_are_made_verbatim_and_replace_what_stands_there() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("victim"), b"keep").unwrap();
        let store = Store::open(root.path()).unwrap();
        let d = root.path().join("client_a");
        fs::create_dir_all(d.join("was-dir/inner")).unwrap();
        fs::write(d.join("was-file"), b"old").unwrap();
        // A link the server holds that points outside: replacing or changing the mode of
        // what it names must touch the link, never its target.
        std::os::unix::fs::symlink(outside.path().join("victim"), d.join("out")).unwrap();
        let when = MTime::new(1_234_567_890, 5).unwrap();
        let target = |b: &[u8]| LinkTarget::from_bytes(b).unwrap();
        let tail = Tail {
            specials: vec![
                TailOp::Link(p("abs"), target(b"/etc/passwd"), when),
                TailOp::Link(p("dangling"), target(b"../../nowhere/\xff"), when),
                TailOp::Link(p("was-dir"), target(b"x"), when),
                TailOp::Fifo(p("was-file"), 0o644, when),
                TailOp::Chmod(p("out"), 0o777),
            ],
            ..Tail::default()
        };
        let mut r = store
            .receiver(&ClientId::parse("a").unwrap(), |_| {})
            .unwrap();
        let Applied { errors, .. } = r.finish(spool(&store, tail), &DeleteBudget::All);
        assert_eq!(
            errors.len(),
            1,
            "chmod through a link is refused: {errors:?}"
        );
        let link = |n: &str| fs::read_link(d.join(n)).unwrap();
        assert_eq!(link("abs"), Path::new("/etc/passwd"));
        assert_eq!(
            link("dangling").as_os_str().as_bytes(),
            b"../../nowhere/\xff"
        );
        assert_eq!(link("was-dir"), Path::new("x"));
        let m = fs::symlink_metadata(d.join("abs")).unwrap();
        assert_eq!(walk::mtime_of(&m), when, "the link's own time");
        let f = fs::symlink_metadata(d.join("was-file")).unwrap();
        assert!(f.file_type().is_fifo());
        assert_eq!(f.mode() & 0o7777, 0o644);
        let victim = fs::metadata(outside.path().join("victim")).unwrap();
        assert_ne!(victim.mode() & 0o777, 0o777);
        assert_eq!(fs::read(outside.path().join("victim")).unwrap(), b"keep");
    }

    #[test]
    fn holes_stay_holes() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let mut r = store
            .receiver(&ClientId::parse("a").unwrap(), |_| {})
            .unwrap();
        let size = 1u64 << 30;
        r.open_default(&header("sparse", size));
        r.skip(size / 2);
        r.write(b"data");
        r.skip(size / 2 - 4);
        r.commit(None);
        let Applied { errors, .. } = r.finish(spool(&store, Tail::default()), &DeleteBudget::All);
        assert!(errors.is_empty(), "{errors:?}");
        let m = fs::metadata(root.path().join("client_a/sparse")).unwrap();
        assert_eq!(m.len(), size);
        assert!(
            m.blocks() * 512 < 1 << 20,
            "{} bytes allocated",
            m.blocks() * 512
        );
        use std::io::{Read, Seek};
        let mut f = File::open(root.path().join("client_a/sparse")).unwrap();
        f.seek(io::SeekFrom::Start(size / 2 - 2)).unwrap();
        let mut buf = [9u8; 8];
        f.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"\0\0data\0\0");
    }

    #[test]
    fn the_tail_is_applied_from_its_spool_and_deletions_count_subtrees() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let d = root.path().join("client_a");
        fs::create_dir_all(d.join("gone/sub")).unwrap();
        fs::write(d.join("gone/sub/f"), b"1").unwrap();
        fs::write(d.join("gone/g"), b"1").unwrap();
        fs::write(d.join("file"), b"1").unwrap();
        let id = ClientId::parse("a").unwrap();
        let mut r = store.receiver(&id, |_| {}).unwrap();
        let when = MTime::new(1_500_000_000, 7).unwrap();
        let tail = Tail {
            delete: vec![
                RelPath::parse("gone").unwrap(),
                RelPath::parse("file").unwrap(),
            ],
            make_dirs: vec![RelPath::parse("new/deep").unwrap()],
            dir_attrs: vec![(RelPath::parse("new").unwrap(), when, None)],
            ..Tail::default()
        };
        let spool = spool(&store, tail);
        let spool_path = spool.path.clone();
        assert!(spool_path.starts_with(root.path().join(".filesync/spool")));
        let Applied {
            deleted, errors, ..
        } = r.finish(spool, &DeleteBudget::All);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(deleted, 5, "gone, gone/sub, gone/sub/f, gone/g, file");
        assert!(!d.join("gone").exists() && !d.join("file").exists());
        assert!(d.join("new/deep").is_dir());
        assert_eq!(
            MTime::from_system(fs::metadata(d.join("new")).unwrap().modified().unwrap()).unwrap(),
            when
        );
        assert!(!spool_path.exists(), "the spool is removed once applied");
    }

    #[test]
    fn the_index_is_in_tree_order() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let d = root.path().join("client_a");
        fs::create_dir_all(d.join("a")).unwrap();
        fs::write(d.join("a/x"), b"").unwrap();
        fs::write(d.join("a.b"), b"").unwrap();
        let names: Vec<_> = store
            .index(&ClientId::parse("a").unwrap())
            .map(|(p, _)| p.to_string())
            .collect();
        assert_eq!(names, ["a", "a/x", "a.b"]);
    }

    #[test]
    fn a_signature_cache_of_another_format_is_computed_again_not_misread() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let id = ClientId::parse("s").unwrap();
        let dir = store.client_dir(&id);
        fs::create_dir_all(&dir).unwrap();
        let data: Vec<u8> = (0..(2u32 << 20))
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        fs::write(dir.join("big.bin"), &data).unwrap();
        let m = fs::metadata(dir.join("big.bin")).unwrap();
        let rel = RelPath::parse("big.bin").unwrap();

        // Version 1 of the cache: no header, 16-byte strong hashes, for this very file.
        #[derive(serde::Serialize)]
        struct V1 {
            size: u64,
            mtime: MTime,
            block_size: u32,
            file_len: u64,
            blocks: Vec<([u8; 4], [u8; 16])>,
        }
        let bs = delta::block_size(m.len());
        let v1 = V1 {
            size: m.len(),
            mtime: walk::mtime_of(&m),
            block_size: bs,
            file_len: m.len(),
            blocks: data
                .chunks(bs as usize)
                .map(|b| {
                    let mut strong = [0u8; 16];
                    strong.copy_from_slice(&blake3::hash(b).as_bytes()[..16]);
                    (delta::weak_checksum(b).to_le_bytes(), strong)
                })
                .collect(),
        };
        let cache = store.sigs.join(id.folder_name());
        fs::create_dir_all(&cache).unwrap();
        fs::write(sig_path(&cache, &rel), postcard::to_stdvec(&v1).unwrap()).unwrap();

        let bases = store.delta_bases(&id, std::slice::from_ref(&rel));
        assert_eq!(bases.len(), 1);
        assert_eq!(
            bases[0].1,
            Signature::compute(&data[..], data.len() as u64).unwrap()
        );
        // And the entry was rewritten in the current format.
        assert!(read_cached(&sig_path(&cache, &rel)).is_some());
    }
}

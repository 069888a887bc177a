//! Where a server keeps the archive: the one small interface the server's sessions drive,
//! with two implementations, the local filesystem ([`crate::store::Store`], the default)
//! and an S3-compatible object store ([`crate::objstore::ObjectArchive`],
//! `serve --store s3://…`).
//!
//! A session drives an archive in three steps, the same for both:
//! 1. [`Archive::index`]: what is held for the client, merged by the planner with the
//!    client's manifest (read on a blocking thread, lazily: the local index streams).
//! 2. [`Archive::writer`]: a [`Writer`] that receives the files the plan asks for, on a
//!    blocking thread of its own, and reports each file's outcome once it is durable (or
//!    rejected).
//! 3. [`Writer::finish`]: the plan's tail (deletions, folders, links, modes), within the
//!    deletion budget, and everything durable before the session ends.
//!
//! Both keep versions of what a session replaces or deletes ([`crate::versions`] for the
//! local layout, [`crate::objstore`] for the object layout).

use std::io;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::delta::Signature;
use crate::messages::{FileHeader, Hash, Outcome, ResumeAt};
use crate::paths::{ClientId, RelPath};
use crate::planner::{DeleteBudget, Held};
use crate::store::{Applied, Spool};

/// What an archive holds for one client, in tree order ([`RelPath::tree_cmp`]).
pub trait HeldIndex: Iterator<Item = (RelPath, Held)> + Send {
    /// The error that ended the iteration early (or kept it from starting), if any: a
    /// session must not go on with a partial index, which would pass for deletions.
    fn take_error(&mut self) -> Option<io::Error>;
}

/// Called, from any thread, with the outcomes of files once they are settled: stored
/// (durable and in place) or rejected.
pub type Report = Box<dyn Fn(Vec<(RelPath, Outcome)>) + Send + 'static>;

/// Whether a session may still write to the archive: raised, for good, when the session's
/// shared lease (`serve --lease`) is lost, since another server may be serving the client
/// from then on. A writer that sees it raised sends no further request that changes what
/// the client's folder or index holds: the classic fence against a paused or cut-off lease
/// holder (Kleppmann, "How to do distributed locking", 2016), kept on this side because S3
/// stores such as Garage take no fencing token. Requests already sent cannot be recalled;
/// the lease is reported lost a fifth of its TTL before etcd can give it away
/// ([`crate::lease::SessionLease`]), and the writer aborts what it has in flight then.
///
/// Clones share one flag. A session without a shared lease never raises it.
#[derive(Clone, Debug, Default)]
pub struct Fence(CancellationToken);

impl Fence {
    /// Raises the fence: the session must write nothing more.
    pub fn raise(&self) {
        self.0.cancel();
    }

    /// Whether the fence was raised.
    pub fn is_raised(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once the fence is raised (at once if it is), to stop waiting for
    /// requests that must be aborted.
    pub async fn raised(&self) {
        self.0.cancelled().await;
    }
}

/// A server's archive of every client's folder.
pub trait Archive: Send + Sync + std::fmt::Debug + 'static {
    /// Where it is, for logs and the start-up line (`/srv/filesync`,
    /// `s3://bucket/prefix`).
    fn location(&self) -> String;

    /// Whether setuid and setgid bits from clients are kept (`serve --keep-setid`).
    fn keeps_setid(&self) -> bool;

    /// The finest mtime step the archive keeps; planning compares mtimes at it.
    fn mtime_precision(&self) -> Duration;

    /// Whether a stored file's mode can be changed in place; if not, a file whose mode
    /// alone changed is sent again ([`crate::planner::Planner::modes_in_place`]). Yes by
    /// default.
    fn modes_in_place(&self) -> bool {
        true
    }

    /// What is held for `id`. Called from async code: it must not block; the iteration
    /// itself runs on a blocking thread and may.
    fn index(&self, id: &ClientId) -> Box<dyn HeldIndex>;

    /// A new, empty spool for a session's tail, on local disk.
    fn spool(&self) -> io::Result<Spool>;

    /// What is held of the beginnings of `paths` from interrupted sessions of `id`, to be
    /// resumed (see [`crate::store::Store::resume_offers`]). None by default.
    fn resume_offers(&self, _id: &ClientId, _paths: &[RelPath]) -> Vec<ResumeAt> {
        Vec::new()
    }

    /// Block signatures of held copies of `paths`, for deltas (see
    /// [`crate::store::Store::delta_bases`]). None by default: every file is sent whole.
    fn delta_bases(&self, _id: &ClientId, _paths: &[RelPath]) -> Vec<(RelPath, Signature)> {
        Vec::new()
    }

    /// A writer for one session of `id`; `report` hears every file's outcome. Once
    /// `fence` is raised the writer must change nothing more in the archive. Called on a
    /// blocking thread.
    fn writer<'a>(
        &'a self,
        id: &ClientId,
        report: Report,
        fence: Fence,
    ) -> io::Result<Box<dyn Writer + 'a>>;

    /// Removes kept versions past their retention, of every client; returns how many
    /// session records went. Called on a blocking thread.
    fn purge_versions(&self) -> io::Result<u64>;
}

/// Receives one session's files, in the order the session sends them. Failures are not
/// returned but remembered, and reported as the file's outcome.
pub trait Writer: Send {
    /// Starts a file, to be given `mode` (masked by the archive's policy) or, with `None`,
    /// the default mode for new files.
    fn open(&mut self, h: &FileHeader, mode: Option<u32>);
    /// Appends content to the open file.
    fn write(&mut self, data: &[u8]);
    /// Skips `len` bytes of the open file: a hole, read back as zeros.
    fn skip(&mut self, len: u64);
    /// In a delta, copies `count` blocks from `block` of the held copy.
    fn copy(&mut self, block: u32, count: u32);
    /// Drops the open file, if any.
    fn discard(&mut self);
    /// Completes the open file (`hash`: the client's whole-file BLAKE3, when sent);
    /// outcomes known at once are returned, the rest go to the report.
    fn commit(&mut self, hash: Option<Hash>) -> Vec<(RelPath, Outcome)>;
    /// Hands what is staged on towards durability.
    fn flush(&mut self);
    /// Ends the session's writes: every file settled and reported, the tail applied as
    /// far as `budget` allows, all of it durable.
    fn finish(&mut self, tail: Spool, budget: &DeleteBudget) -> Applied;
}

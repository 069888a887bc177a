//! One session's writes into the object store: files as objects (small ones buffered and
//! put with up to [`REQUESTS_IN_FLIGHT`] requests in flight, large ones as multipart
//! uploads streamed part by part), then the plan's tail, the index and the session's
//! record.

use std::io;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};
use tokio::task::JoinSet;

use super::layout::{self, Entry, Record};
use super::upload::Upload;
use super::{dir_held, load_tree, Loaded, ObjectArchive, Tree, REQUESTS_IN_FLIGHT};
use crate::archive::{Fence, Report, Writer};
use crate::messages::{EntryKind, ErrorCode, FileHeader, Hash, Outcome};
use crate::paths::{ClientId, RelPath};
use crate::planner::{DeleteBudget, Held, TailOp};
use crate::store::{Applied, Spool};
use crate::time::MTime;

/// Files at least this large go up as multipart uploads; smaller ones are buffered and
/// put in one request.
pub const MULTIPART_MIN: u64 = 16 << 20;
/// Bytes of buffered files in flight at once: bounds a session's memory.
const BYTES_IN_FLIGHT: u64 = 64 << 20;

/// The file being received.
enum Open {
    Buffer {
        path: RelPath,
        attrs: (MTime, u32),
        buf: Vec<u8>,
    },
    Multipart {
        path: RelPath,
        attrs: (MTime, u32),
        size: u64,
        /// What it replaces, versioned before the upload completes.
        replaced: Option<Entry>,
        upload: Box<Upload>,
    },
    Failed {
        path: RelPath,
        error: String,
    },
}

/// A put's result, settled on the writer's thread.
struct Put {
    path: RelPath,
    /// Its body's size, counted in [`ObjectWriter::bytes_in_flight`] while it runs.
    bytes: u64,
    held: Held,
    replaced: Option<Entry>,
    result: Result<Option<String>, String>,
}

pub(super) struct ObjectWriter<'a> {
    ar: &'a ObjectArchive,
    id: ClientId,
    base: ObjectPath,
    /// Where the index leaves the tree it loaded.
    slot: Arc<Mutex<Option<Loaded>>>,
    tree: Option<Tree>,
    report: Report,
    open: Option<Open>,
    puts: JoinSet<Put>,
    bytes_in_flight: u64,
    record: Record,
    /// `.filesync/versions/client_<id>/<stamp>`, if versions are kept.
    versions: Option<ObjectPath>,
    /// The index must be written.
    dirty: bool,
    /// What failed in the tail (and the links and FIFOs it put), for [`Applied::errors`].
    tail_errors: Vec<String>,
    /// Raised when the session's lease is lost: from then on nothing is put, copied,
    /// deleted or completed, and the index is not written.
    fence: Fence,
}

/// Why a request was not sent once the session's lease is lost.
pub(super) const FENCED: &str =
    "the session's lease was lost (another server may be serving this client)";

fn rejected(reason: impl Into<String>) -> Outcome {
    Outcome::Rejected {
        code: ErrorCode::STORAGE,
        reason: reason.into(),
    }
}

fn attributes(kind: EntryKind, mtime: MTime, mode: u32) -> Attributes {
    let mut a = Attributes::new();
    for (k, v) in layout::metadata(kind, mtime, mode) {
        a.insert(Attribute::Metadata(k.into()), v.into());
    }
    a
}

fn file_held(kind: EntryKind, size: u64, (mtime, mode): (MTime, u32)) -> Held {
    Held {
        kind,
        size,
        mtime,
        mode,
        target: None,
    }
}

impl<'a> ObjectWriter<'a> {
    pub(super) fn new(
        ar: &'a ObjectArchive,
        id: &ClientId,
        slot: Arc<Mutex<Option<Loaded>>>,
        report: Report,
        fence: Fence,
    ) -> Self {
        let now = MTime::from_system(std::time::SystemTime::now()).unwrap_or(MTime::EPOCH);
        let versions = ar.keep_versions.map(|_| {
            ObjectPath::from_iter(
                ar.loc
                    .versions(id)
                    .parts()
                    .chain(std::iter::once(crate::versions::stamp(now).as_str().into())),
            )
        });
        ObjectWriter {
            ar,
            id: id.clone(),
            base: ar.loc.client(id),
            slot,
            tree: None,
            report,
            open: None,
            puts: JoinSet::new(),
            bytes_in_flight: 0,
            record: Record::default(),
            versions,
            dirty: false,
            tail_errors: Vec::new(),
            fence,
        }
    }

    /// `Err` once the fence is raised; then the puts still in flight are aborted too.
    fn unfenced(&mut self) -> Result<(), String> {
        if !self.fence.is_raised() {
            return Ok(());
        }
        self.abort_puts();
        Err(FENCED.into())
    }

    /// Aborts the puts in flight, the fence being raised, and settles them at once (those
    /// that finished first are recorded as stored), so that this happens, and is logged,
    /// once. Their requests may have reached the store already: those cannot be
    /// recalled, which is why the lease is reported lost before etcd can give the client
    /// to another server.
    fn abort_puts(&mut self) {
        if self.puts.is_empty() {
            return;
        }
        tracing::warn!(client = %self.id, aborted = self.puts.len(),
            "the session's lease was lost: aborting the uploads in flight");
        self.puts.abort_all();
        let rt = self.ar.rt.clone();
        while let Some(joined) = rt.block_on(self.puts.join_next()) {
            self.joined(joined);
        }
    }

    /// The client's tree: the one the session's index loaded, or read now.
    fn tree(&mut self) -> io::Result<&mut Tree> {
        if self.tree.is_none() {
            let loaded = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            let loaded = match loaded {
                Some(t) => t,
                None => self
                    .ar
                    .rt
                    .block_on(load_tree(&self.ar.store, &self.ar.loc, &self.id))?,
            };
            // An index that the listing contradicted is written again even if nothing
            // changes.
            self.dirty |= loaded.stale;
            let tree = loaded.tree;
            // A session that makes the client's folder adds everything it places.
            self.record.whole_folder = tree.is_empty();
            self.tree = Some(tree);
        }
        Ok(self.tree.as_mut().expect("just loaded"))
    }

    fn key(&self, rel: &RelPath) -> Result<ObjectPath, String> {
        layout::under(&self.base, rel)
    }

    /// Where the version of `rel` goes, if versions are kept.
    fn version_key(&self, rel: &RelPath) -> Option<ObjectPath> {
        Some(layout::version_key(self.versions.as_ref()?, rel))
    }

    /// Makes room for an entry at `rel`: its ancestors become folders (anything else
    /// standing there is versioned and removed), and a folder standing at `rel` itself
    /// goes likewise. Returns the non-folder entry at `rel`, which the new one replaces.
    fn prepare(&mut self, rel: &RelPath) -> Result<Option<Entry>, String> {
        self.make_parents(rel)?;
        let current = self.tree().map_err(|e| e.to_string())?.get(rel).cloned();
        match current {
            Some(e) if e.held.kind == EntryKind::Dir => {
                self.remove_now(rel, false)?;
                Ok(None)
            }
            other => Ok(other),
        }
    }

    /// Makes the ancestors of `rel` folders, top down, versioning and removing anything
    /// else standing where one must be.
    fn make_parents(&mut self, rel: &RelPath) -> Result<(), String> {
        self.dirty = true;
        let ancestors: Vec<RelPath> = rel.ancestors().collect();
        for a in ancestors.into_iter().rev() {
            self.make_dir(&a)?;
        }
        Ok(())
    }

    /// Makes `rel` a folder, replacing whatever else stands there.
    fn make_dir(&mut self, rel: &RelPath) -> Result<(), String> {
        let current = self.tree().map_err(|e| e.to_string())?.get(rel).cloned();
        match current {
            Some(e) if e.held.kind == EntryKind::Dir => {}
            Some(_) => {
                self.remove_now(rel, false)?;
                self.add_dir(rel);
            }
            None => self.add_dir(rel),
        }
        Ok(())
    }

    /// Notes a folder made where nothing stood (attributes come with the tail).
    fn add_dir(&mut self, rel: &RelPath) {
        let now = MTime::from_system(std::time::SystemTime::now()).unwrap_or(MTime::EPOCH);
        if let Some(t) = self.tree.as_mut() {
            t.insert(
                rel.clone(),
                Entry {
                    path: rel.clone(),
                    held: dir_held(now, 0o755),
                    e_tag: None,
                },
            );
        }
        if !self.record.whole_folder {
            self.record.added.push(rel.clone());
        }
    }

    /// The entries at and under `rel`, in key order.
    fn subtree(&mut self, rel: &RelPath) -> io::Result<Vec<Entry>> {
        let tree = self.tree()?;
        Ok(tree
            .range(rel.clone()..)
            .take_while(|(k, _)| k.as_bytes().starts_with(rel.as_bytes()))
            .filter(|(k, _)| *k == rel || rel.is_ancestor_of(k))
            .map(|(_, e)| e.clone())
            .collect())
    }

    /// Removes `rel` and everything under it now: each object is first copied under the
    /// session's versions, then deleted, unless (with `verify`) its ETag is no longer the
    /// one the plan saw, which means another session wrote it meanwhile: then it is kept.
    /// (The check and the deletion are separate requests: this narrows the window for a
    /// session without a lease, and the copy keeps what falls in it.) Returns the entries
    /// removed and the objects kept that way.
    fn remove_now(&mut self, rel: &RelPath, verify: bool) -> Result<(u64, u64), String> {
        self.unfenced()?;
        let entries = self.subtree(rel).map_err(|e| e.to_string())?;
        let store = Arc::clone(&self.ar.store);
        let fence = &self.fence;
        let jobs = entries
            .iter()
            // Folders have no object; everything else has one.
            .filter(|e| e.held.kind != EntryKind::Dir)
            .map(|e| {
                let key = self.key(&e.path);
                let vkey = self.version_key(&e.path);
                (e.clone(), key, vkey)
            })
            .collect::<Vec<_>>();
        let results: Vec<(RelPath, Result<bool, String>)> = self.ar.rt.block_on(
            futures::stream::iter(jobs)
                .map(|(e, key, vkey)| {
                    let store = Arc::clone(&store);
                    async move {
                        let r = async {
                            let key = key?;
                            if fence.is_raised() {
                                return Err(FENCED.to_string());
                            }
                            if verify {
                                match store.head(&key).await {
                                    Ok(m) if e.e_tag.is_some() && m.e_tag != e.e_tag => {
                                        return Ok(false)
                                    }
                                    Ok(_) => {}
                                    // Gone already: nothing to keep or delete.
                                    Err(object_store::Error::NotFound { .. }) => return Ok(true),
                                    Err(err) => return Err(format!("checking {key}: {err}")),
                                }
                            }
                            if let Some(vkey) = vkey {
                                match store.copy(&key, &vkey).await {
                                    Ok(()) => {}
                                    Err(object_store::Error::NotFound { .. }) => return Ok(true),
                                    Err(err) => return Err(format!("keeping a version: {err}")),
                                }
                            }
                            if fence.is_raised() {
                                return Err(FENCED.to_string());
                            }
                            match store.delete(&key).await {
                                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
                                Err(err) => Err(format!("deleting: {err}")),
                            }
                        }
                        .await;
                        (e.path, r)
                    }
                })
                .buffer_unordered(REQUESTS_IN_FLIGHT)
                .collect(),
        );
        let mut errors = Vec::new();
        let mut changed = 0;
        let mut kept = std::collections::HashSet::new();
        for (p, r) in results {
            match r {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(client = %self.id, path = %p,
                        "not deleted: another session wrote it after this one planned");
                    changed += 1;
                    kept.insert(p);
                }
                Err(e) => {
                    errors.push(format!("{p}: {e}"));
                    kept.insert(p);
                }
            }
        }
        let tree = self.tree.as_mut().expect("loaded by subtree");
        let mut removed = 0;
        for e in entries {
            // A folder stays while anything in it stays.
            let stays = kept.contains(&e.path)
                || (e.held.kind == EntryKind::Dir && kept.iter().any(|k| e.path.is_ancestor_of(k)));
            if stays {
                continue;
            }
            tree.remove(&e.path);
            removed += 1;
            if self.versions.is_some() {
                self.record.replaced.push(e);
            }
        }
        self.dirty = true;
        if errors.is_empty() {
            Ok((removed, changed))
        } else {
            Err(errors.join("; "))
        }
    }

    /// Puts an object for `rel` in the background; its outcome is settled later.
    fn spawn_put(
        &mut self,
        rel: RelPath,
        held: Held,
        body: Vec<u8>,
        replaced: Option<Entry>,
    ) -> Result<(), String> {
        let key = self.key(&rel)?;
        let vkey = match &replaced {
            Some(e) if e.held.kind != EntryKind::Dir => self.version_key(&rel),
            _ => None,
        };
        // Bounded memory: wait for earlier puts when too much is in flight.
        let size = body.len() as u64;
        while !self.puts.is_empty()
            && (self.puts.len() >= REQUESTS_IN_FLIGHT
                || self.bytes_in_flight + size > BYTES_IN_FLIGHT)
        {
            self.settle_one(true);
        }
        self.unfenced()?;
        self.bytes_in_flight += size;
        let store = Arc::clone(&self.ar.store);
        let attrs = attributes(held.kind, held.mtime, held.mode);
        let handle = self.ar.rt.clone();
        let _guard = handle.enter();
        self.puts.spawn(async move {
            let result = async {
                if let Some(vkey) = vkey {
                    match store.copy(&key, &vkey).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(format!("keeping the version it replaces: {e}")),
                    }
                }
                let opts = PutOptions {
                    attributes: attrs,
                    ..PutOptions::default()
                };
                store
                    .put_opts(&key, PutPayload::from(body), opts)
                    .await
                    .map(|r| r.e_tag)
                    .map_err(|e| format!("storing: {e}"))
            }
            .await;
            Put {
                path: rel,
                bytes: size,
                held,
                replaced,
                result,
            }
        });
        Ok(())
    }

    /// Settles one finished put (waiting for one if `wait`); false if none was ready.
    fn settle_one(&mut self, wait: bool) -> bool {
        if self.fence.is_raised() {
            self.abort_puts();
        }
        let next = if wait {
            let rt = self.ar.rt.clone();
            let fence = self.fence.clone();
            let puts = &mut self.puts;
            // Waiting for a slow put must not outlast the lease.
            let waited = rt.block_on(async {
                tokio::select! {
                    next = puts.join_next() => Some(next),
                    () = fence.raised() => None,
                }
            });
            match waited {
                Some(next) => next,
                None => {
                    self.abort_puts();
                    return true;
                }
            }
        } else {
            let _guard = self.ar.rt.enter();
            self.puts.try_join_next()
        };
        match next {
            Some(joined) => {
                self.joined(joined);
                true
            }
            None => false,
        }
    }

    /// Settles a put task that ended: its outcome reported, or its failure logged.
    fn joined(&mut self, joined: Result<Put, tokio::task::JoinError>) {
        match joined {
            Ok(put) => {
                self.bytes_in_flight = self.bytes_in_flight.saturating_sub(put.bytes);
                if let Some(o) = self.settled(put) {
                    (self.report)(vec![o]);
                }
            }
            // Aborted by the fence: the session is over, its outcome unheard.
            Err(e) if e.is_cancelled() => {}
            Err(e) => tracing::error!(error = %e, "an upload task failed"),
        }
    }

    /// Records a finished put in the tree and the session's record; the file's outcome
    /// (`None` for a link or FIFO of the tail, whose failure is the tail's).
    fn settled(&mut self, put: Put) -> Option<(RelPath, Outcome)> {
        let is_file = put.held.kind == EntryKind::File;
        match put.result {
            Ok(e_tag) => {
                match put.replaced {
                    Some(old) if self.versions.is_some() => self.record.replaced.push(old),
                    Some(_) => {}
                    None if !self.record.whole_folder => self.record.added.push(put.path.clone()),
                    None => {}
                }
                if let Some(t) = self.tree.as_mut() {
                    t.insert(
                        put.path.clone(),
                        Entry {
                            path: put.path.clone(),
                            held: put.held,
                            e_tag,
                        },
                    );
                }
                is_file.then_some((put.path, Outcome::Stored))
            }
            Err(e) => {
                if is_file {
                    Some((put.path, rejected(e)))
                } else {
                    self.tail_errors.push(format!("{}: {e}", put.path));
                    None
                }
            }
        }
    }
}

impl ObjectWriter<'_> {
    /// Settles every put in flight.
    fn drain(&mut self) {
        while self.settle_one(true) {}
    }

    /// Writes the index (if anything changed) and the session's record (if it added or
    /// replaced anything).
    fn write_index_and_record(&mut self) -> Result<(), String> {
        let Some(tree) = self.tree.as_ref() else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        // Once fenced, the index is not written: another session may have written its own
        // since. The next session reads objects the index lacks from the listing. The
        // record goes to this session's own key, so it still says what was kept.
        let index_body = (!self.fence.is_raised()).then(|| layout::encode_index(tree.values()));
        let store = Arc::clone(&self.ar.store);
        let index = self.ar.loc.index(&self.id);
        let record = self.versions.as_ref().and_then(|v| {
            let r = &self.record;
            let something = !r.added.is_empty() || !r.replaced.is_empty() || r.whole_folder;
            something.then(|| {
                (
                    ObjectPath::from_iter(v.parts().chain(std::iter::once("record".into()))),
                    layout::encode_record(r),
                )
            })
        });
        self.ar.rt.block_on(async move {
            if let Some((key, body)) = record {
                store
                    .put(&key, body.into())
                    .await
                    .map_err(|e| format!("writing the session's record of versions: {e}"))?;
            }
            let Some(body) = index_body else {
                return Err(format!("the client's index was not written: {FENCED}"));
            };
            store
                .put(&index, body.into())
                .await
                .map_err(|e| format!("writing the client's index: {e}"))?;
            Ok::<(), String>(())
        })?;
        self.dirty = false;
        Ok(())
    }

    fn fail(&mut self, path: RelPath, error: String) {
        self.open = Some(Open::Failed { path, error });
    }

    /// Applies one op of the tail.
    fn apply(&mut self, op: TailOp, budget: &DeleteBudget, done: &mut Applied) {
        match op {
            TailOp::Delete(p) => {
                let n = match self.subtree(&p) {
                    Ok(s) => s.len() as u64,
                    Err(e) => {
                        self.tail_errors.push(format!("deleting {p}: {e}"));
                        return;
                    }
                };
                if !budget.allows(done.deleted, n) {
                    done.held_back += n;
                    return;
                }
                // Objects another session rewrote since this one planned are kept, and
                // held back: the client hears that the archive still has them, and why.
                match self.remove_now(&p, true) {
                    Ok((removed, changed)) => {
                        done.deleted += removed;
                        done.held_back += changed;
                    }
                    Err(e) => self.tail_errors.push(format!("deleting {p}: {e}")),
                }
            }
            TailOp::MakeDir(d) => {
                if let Err(e) = self.make_parents(&d).and_then(|()| self.make_dir(&d)) {
                    self.tail_errors.push(format!("making directory {d}: {e}"));
                }
            }
            TailOp::DirAttrs(d, t, mode) => {
                let mask = self.ar.mode_mask;
                if let Some(e) = self.tree.as_mut().and_then(|tr| tr.get_mut(&d)) {
                    if e.held.kind == EntryKind::Dir {
                        e.held.mtime = t;
                        if let Some(m) = mode {
                            e.held.mode = m & mask;
                        }
                        self.dirty = true;
                    }
                }
            }
            TailOp::Link(p, target, t) => {
                let held = Held {
                    kind: EntryKind::Symlink,
                    size: 0,
                    mtime: t,
                    mode: 0o777,
                    target: Some(target.clone()),
                };
                self.put_special(p, held, target.as_bytes().to_vec(), "symlink");
            }
            TailOp::Fifo(p, mode, t) => {
                let held = file_held(EntryKind::Fifo, 0, (t, mode & self.ar.mode_mask));
                self.put_special(p, held, Vec::new(), "FIFO");
            }
            TailOp::Chmod(p, mode) => {
                let mask = self.ar.mode_mask;
                match self.tree.as_mut().and_then(|tr| tr.get_mut(&p)) {
                    Some(e) if e.held.kind == EntryKind::File => {
                        // The index holds attributes; the object's metadata keeps the mode
                        // it was put with (S3 cannot change metadata without a copy).
                        e.held.mode = mode & mask;
                        self.dirty = true;
                    }
                    _ => self
                        .tail_errors
                        .push(format!("setting the mode of {p}: no longer a regular file")),
                }
            }
        }
    }

    fn put_special(&mut self, p: RelPath, held: Held, body: Vec<u8>, what: &str) {
        let r = self
            .prepare(&p)
            .and_then(|replaced| self.spawn_put(p.clone(), held, body, replaced));
        if let Err(e) = r {
            self.tail_errors.push(format!("making the {what} {p}: {e}"));
        }
    }
}

impl Writer for ObjectWriter<'_> {
    fn open(&mut self, h: &FileHeader, mode: Option<u32>) {
        self.discard();
        let path = h.path.clone();
        if h.delta || h.offset > 0 {
            // Never asked for: this archive offers neither bases nor resumes.
            self.fail(path, "this archive takes files whole".into());
            return;
        }
        let attrs = (h.mtime, mode.unwrap_or(0o644) & self.ar.mode_mask);
        if h.size < MULTIPART_MIN {
            self.open = Some(Open::Buffer {
                path,
                attrs,
                buf: Vec::with_capacity(usize::try_from(h.size).unwrap_or(0)),
            });
            return;
        }
        let started = self
            .unfenced()
            .and_then(|()| self.prepare(&path))
            .and_then(|replaced| {
                let key = self.key(&path)?;
                let upload = self
                    .ar
                    .rt
                    .block_on(Upload::start(
                        Arc::clone(&self.ar.store),
                        Arc::clone(&self.ar.parts),
                        &self.ar.loc,
                        key,
                        attributes(EntryKind::File, attrs.0, attrs.1),
                    ))
                    .map_err(|e| e.to_string())?;
                Ok((replaced, Box::new(upload)))
            });
        match started {
            Ok((replaced, upload)) => {
                self.open = Some(Open::Multipart {
                    path,
                    attrs,
                    size: h.size,
                    replaced,
                    upload,
                });
            }
            Err(e) => self.fail(path, e),
        }
    }

    fn write(&mut self, data: &[u8]) {
        let rt = self.ar.rt.clone();
        let failed = match &mut self.open {
            Some(Open::Buffer { buf, .. }) => {
                buf.extend_from_slice(data);
                None
            }
            Some(Open::Multipart { path, .. }) if self.fence.is_raised() => {
                Some((path.clone(), FENCED.to_string()))
            }
            Some(Open::Multipart { path, upload, .. }) => rt
                .block_on(upload.write(data))
                .err()
                .map(|e| (path.clone(), e.to_string())),
            _ => None,
        };
        if let Some((path, e)) = failed {
            self.discard();
            self.fail(path, e);
        }
    }

    fn skip(&mut self, len: u64) {
        // Objects have no holes: a hole is stored as the zeros it reads as.
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let mut left = len;
        while left > 0
            && matches!(
                self.open,
                Some(Open::Buffer { .. } | Open::Multipart { .. })
            )
        {
            let n = left.min(ZEROS.len() as u64);
            self.write(&ZEROS[..n as usize]);
            left -= n;
        }
    }

    fn copy(&mut self, _block: u32, _count: u32) {
        if let Some(Open::Buffer { path, .. } | Open::Multipart { path, .. }) = &self.open {
            let path = path.clone();
            self.discard();
            self.fail(path, "COPY outside a delta".into());
        }
    }

    fn discard(&mut self) {
        if let Some(Open::Multipart { upload, .. }) = self.open.take() {
            // Never visible; aborted so that its parts do not linger.
            self.ar.rt.block_on(upload.abort());
        }
    }

    fn commit(&mut self, _hash: Option<Hash>) -> Vec<(RelPath, Outcome)> {
        // The whole-file hash is checked by the session for deltas only, which this
        // archive never takes; plain files are checked by TCP and TLS, as on disk.
        match self.open.take() {
            None => Vec::new(),
            Some(Open::Failed { path, error }) => vec![(path, rejected(error))],
            Some(Open::Buffer { path, attrs, buf }) => {
                let held = file_held(EntryKind::File, buf.len() as u64, attrs);
                let r = self
                    .prepare(&path)
                    .and_then(|replaced| self.spawn_put(path.clone(), held, buf, replaced));
                self.flush();
                match r {
                    Ok(()) => Vec::new(),
                    Err(e) => vec![(path, rejected(e))],
                }
            }
            Some(Open::Multipart {
                path,
                attrs,
                size,
                replaced,
                upload,
            }) => {
                let vkey = match &replaced {
                    Some(e) if e.held.kind != EntryKind::Dir => self.version_key(&path),
                    _ => None,
                };
                let key = self.key(&path);
                let store = Arc::clone(&self.ar.store);
                let fence = self.fence.clone();
                let result = self.ar.rt.block_on(async move {
                    if fence.is_raised() {
                        upload.abort().await;
                        return Err(FENCED.to_string());
                    }
                    if let (Some(vkey), Ok(key)) = (vkey, key) {
                        match store.copy(&key, &vkey).await {
                            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                            Err(e) => {
                                upload.abort().await;
                                return Err(format!("keeping the version it replaces: {e}"));
                            }
                        }
                    }
                    upload
                        .finish(&fence)
                        .await
                        .map(|r| r.e_tag)
                        .map_err(|e| e.to_string())
                });
                let put = Put {
                    path,
                    bytes: 0,
                    held: file_held(EntryKind::File, size, attrs),
                    replaced,
                    result,
                };
                self.settled(put).into_iter().collect()
            }
        }
    }

    fn flush(&mut self) {
        while self.settle_one(false) {}
    }

    fn finish(&mut self, mut tail: Spool, budget: &DeleteBudget) -> Applied {
        self.discard();
        self.drain();
        let mut done = Applied::default();
        if let Err(e) = self.tree() {
            done.errors.push(format!("reading the client's index: {e}"));
            return done;
        }
        match tail.read() {
            Err(e) => done.errors.push(format!("reading the plan's tail: {e}")),
            Ok(ops) => {
                let ops: Vec<io::Result<TailOp>> = ops.collect();
                for op in ops {
                    match op {
                        Ok(op) => self.apply(op, budget, &mut done),
                        Err(e) => {
                            done.errors.push(format!("reading the plan's tail: {e}"));
                            break;
                        }
                    }
                }
            }
        }
        self.drain();
        if let Err(e) = self.write_index_and_record() {
            done.errors.push(e);
        }
        done.errors.append(&mut self.tail_errors);
        done
    }
}

impl Drop for ObjectWriter<'_> {
    /// A session that ended early: the files that arrived whole are kept (their puts
    /// finish), the partial one is dropped, and the index and record say what happened.
    fn drop(&mut self) {
        self.discard();
        self.drain();
        if let Err(e) = self.write_index_and_record() {
            tracing::warn!(client = %self.id, error = %e, "after an interrupted session");
        }
        self.ar.drop_slot(&self.id, &self.slot);
    }
}

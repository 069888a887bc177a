//! Large files as S3 multipart uploads, journaled so that an upload a killed server
//! leaves behind is found and aborted later.
//!
//! An upload in progress is invisible (S3 makes the object visible only at
//! `CompleteMultipartUpload`), but its parts are stored, and S3 has no way to list what
//! a dead process started unless one lists every upload of the bucket. So each upload
//! has a journal entry, `PREFIX/.filesync/uploads/<hex of the upload id>`, holding the
//! object's key, put before the first part and deleted once the upload is completed or
//! aborted. [`sweep`] aborts the uploads whose entries are older than a day (no upload
//! of one file lasts that long; a store's own lifecycle rule,
//! `AbortIncompleteMultipartUpload`, would use the same age).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::{
    Attributes, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutPayload, PutResult,
};
use tokio::task::JoinSet;

use super::layout::Location;
use super::req_err;
use crate::archive::Fence;

/// The size of each part (S3's minimum is 5 MiB, but for the last).
pub(crate) const PART_SIZE: usize = 8 << 20;
/// Parts of one upload in flight at once: bounds its memory to this many parts.
const PARTS_IN_FLIGHT: usize = 4;
/// Uploads whose journal entry is older than this are taken for abandoned.
pub(crate) const ABANDONED_AFTER: Duration = Duration::from_secs(86_400);

/// `PREFIX/.filesync/uploads`.
fn journal(loc: &Location) -> ObjectPath {
    let s = if loc.prefix.is_empty() {
        ".filesync/uploads".to_owned()
    } else {
        format!("{}/.filesync/uploads", loc.prefix)
    };
    ObjectPath::from(s.as_str())
}

fn entry(loc: &Location, id: &str) -> ObjectPath {
    ObjectPath::from_iter(
        journal(loc)
            .parts()
            .chain(std::iter::once(hex::encode(id).as_str().into())),
    )
}

/// One multipart upload of one object, parts put as they fill.
pub(crate) struct Upload {
    store: Arc<dyn ObjectStore>,
    parts_store: Arc<dyn MultipartStore>,
    key: ObjectPath,
    id: String,
    journal: ObjectPath,
    buf: Vec<u8>,
    next: usize,
    parts: Vec<Option<PartId>>,
    running: JoinSet<(usize, object_store::Result<PartId>)>,
}

impl Upload {
    /// Starts the upload of `key` with `attributes`, journaled.
    pub(crate) async fn start(
        store: Arc<dyn ObjectStore>,
        parts_store: Arc<dyn MultipartStore>,
        loc: &Location,
        key: ObjectPath,
        attributes: Attributes,
    ) -> io::Result<Upload> {
        let opts = PutMultipartOptions {
            attributes,
            ..PutMultipartOptions::default()
        };
        let id = parts_store
            .create_multipart_opts(&key, opts)
            .await
            .map_err(req_err("starting a multipart upload"))?;
        let journal = entry(loc, &id);
        if let Err(e) = store
            .put(&journal, key.as_ref().as_bytes().to_vec().into())
            .await
        {
            let _ = parts_store.abort_multipart(&key, &id).await;
            return Err(req_err("journaling a multipart upload")(e));
        }
        Ok(Upload {
            store,
            parts_store,
            key,
            id,
            journal,
            buf: Vec::with_capacity(PART_SIZE),
            next: 0,
            parts: Vec::new(),
            running: JoinSet::new(),
        })
    }

    /// Appends bytes; full parts are put, at most [`PARTS_IN_FLIGHT`] at once (this waits
    /// for one when that many run).
    pub(crate) async fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = (PART_SIZE - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == PART_SIZE {
                self.put_part().await?;
            }
        }
        Ok(())
    }

    async fn put_part(&mut self) -> io::Result<()> {
        while self.running.len() >= PARTS_IN_FLIGHT {
            self.reap().await?;
        }
        let body = std::mem::replace(&mut self.buf, Vec::with_capacity(PART_SIZE));
        let (store, key, id, idx) = (
            Arc::clone(&self.parts_store),
            self.key.clone(),
            self.id.clone(),
            self.next,
        );
        self.next += 1;
        self.running.spawn(async move {
            (
                idx,
                store.put_part(&key, &id, idx, PutPayload::from(body)).await,
            )
        });
        Ok(())
    }

    async fn reap(&mut self) -> io::Result<()> {
        if let Some(r) = self.running.join_next().await {
            let (idx, part) = r.map_err(io::Error::other)?;
            let part = part.map_err(req_err("uploading a part"))?;
            if self.parts.len() <= idx {
                self.parts.resize(idx + 1, None);
            }
            self.parts[idx] = Some(part);
        }
        Ok(())
    }

    /// Puts the last part and completes the upload: the object appears whole, now. Not
    /// completed (but aborted) if `fence` is raised by then: completing is what makes
    /// the object visible, so it is the last moment to check.
    pub(crate) async fn finish(mut self, fence: &Fence) -> io::Result<PutResult> {
        let r = async {
            if !self.buf.is_empty() || self.next == 0 {
                self.put_part().await?;
            }
            while !self.running.is_empty() {
                self.reap().await?;
            }
            let parts = self
                .parts
                .iter()
                .cloned()
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| io::Error::other("a part of the upload is missing"))?;
            if fence.is_raised() {
                return Err(io::Error::other(super::writer::FENCED));
            }
            self.parts_store
                .complete_multipart(&self.key, &self.id, parts)
                .await
                .map_err(req_err("completing the multipart upload"))
        }
        .await;
        match r {
            Ok(done) => {
                self.forget().await;
                Ok(done)
            }
            Err(e) => {
                self.abort().await;
                Err(e)
            }
        }
    }

    /// Aborts the upload: its parts are dropped, nothing ever appears.
    pub(crate) async fn abort(mut self) {
        self.running.abort_all();
        if let Err(e) = self.parts_store.abort_multipart(&self.key, &self.id).await {
            // Left journaled: a later sweep tries again.
            tracing::debug!(key = %self.key, error = %e, "cannot abort a multipart upload");
            return;
        }
        self.forget().await;
    }

    async fn forget(&mut self) {
        if let Err(e) = self.store.delete(&self.journal).await {
            tracing::debug!(entry = %self.journal, error = %e, "cannot remove a journal entry");
        }
    }
}

/// Aborts the multipart uploads journaled more than `older_than` ago (a server that was
/// killed, or lost the store, mid-file), and forgets them; returns how many.
pub(crate) async fn sweep(
    store: &Arc<dyn ObjectStore>,
    parts_store: &Arc<dyn MultipartStore>,
    loc: &Location,
    older_than: Duration,
) -> io::Result<u64> {
    let cutoff = chrono::Utc::now()
        - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
    let entries: Vec<_> = store
        .list(Some(&journal(loc)))
        .try_filter(|m| std::future::ready(m.last_modified < cutoff))
        .try_collect()
        .await
        .map_err(req_err("listing the upload journal"))?;
    let mut aborted = 0;
    for m in entries {
        let id = m
            .location
            .filename()
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| String::from_utf8(b).ok());
        let key = match store.get(&m.location).await {
            Ok(r) => r
                .bytes()
                .await
                .ok()
                .and_then(|b| String::from_utf8(b.to_vec()).ok()),
            Err(_) => None,
        };
        if let (Some(id), Some(key)) = (id, key.and_then(|k| ObjectPath::parse(k).ok())) {
            match parts_store.abort_multipart(&key, &id).await {
                Ok(()) => aborted += 1,
                // Gone already (completed, or cleaned by the store's lifecycle).
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    tracing::warn!(%key, error = %e, "cannot abort an abandoned multipart upload");
                    continue;
                }
            }
        }
        store
            .delete(&m.location)
            .await
            .map_err(req_err("forgetting an abandoned upload"))?;
    }
    Ok(aborted)
}

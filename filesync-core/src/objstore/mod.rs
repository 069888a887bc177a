//! The archive in an S3-compatible object store (`serve --store s3://BUCKET[/PREFIX]`),
//! through the `object_store` crate: one object per file under `PREFIX/client_<id>/`,
//! readable by any S3 tool, with the servers in front of it keeping no state of their own
//! (the layout: [`layout`]).
//!
//! Guarantees, the same as the local store's:
//! - A file is reported stored only once the store acknowledged its `PutObject` (or the
//!   `CompleteMultipartUpload` of a large file). Large files go up as multipart uploads,
//!   which S3 makes visible only when complete: no torn object, ever.
//! - What a session replaces or deletes is first copied, server-side, under
//!   `.filesync/versions/` (Garage has no S3 object versioning, so this does not lean on
//!   it), and a record of the session says what it added.
//! - A deletion removes an object only if its `ETag` is still the one the plan saw: an
//!   object another session wrote in the meantime is kept. The check is a request of its
//!   own before the copy and the delete: with `--lease` no other session of the client
//!   runs; without, it narrows the window, and the copy keeps what falls in it.
//!
//! The client's index (`.filesync/index/client_<id>`) makes a session that changes nothing
//! cost one `GET` and one `LIST` per thousand objects, not one request per file: each
//! listed object whose `ETag` is the index's is taken from the index; any other (changed
//! or put by another tool) is read with a `HEAD`, and objects gone from the listing are
//! gone from the index. Folders have no object: they live in the index (an empty folder
//! only there), and folders implied by keys are added.

pub mod layout;
pub mod restore;
mod scratch;
#[cfg(test)]
mod tests;
mod upload;
mod writer;

pub use object_store;
pub use writer::MULTIPART_MIN;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjectPath;
use object_store::{Attribute, GetOptions, ObjectStore, ObjectStoreExt};

use crate::archive::{Archive, Fence, HeldIndex, Report, Writer};
use crate::messages::{stored_mode_bits, EntryKind, SETID_BITS};
use crate::paths::{ClientId, RelPath};
use crate::planner::Held;
use crate::store::Spool;
use crate::time::MTime;

use layout::{Entry, Location};

/// Requests in flight at once for one session (puts, heads, copies, deletes): per-object
/// latency, not bandwidth, bounds a tree of small files, so they are overlapped. 128
/// pushed 20,000 small files into a 3-node Garage 10 % faster than 32 (bench/README.md);
/// the bytes of buffered puts in flight stay bounded on their own (64 MiB).
pub const REQUESTS_IN_FLIGHT: usize = 128;

/// The tree of one client as the archive holds it: every entry by path.
pub(crate) type Tree = BTreeMap<RelPath, Entry>;

/// A client's tree as loaded, and whether the stored index disagreed with the listing
/// (and must be written again).
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) tree: Tree,
    pub(crate) stale: bool,
}

/// An archive in an S3-compatible object store.
pub struct ObjectArchive {
    store: Arc<dyn ObjectStore>,
    /// The same store, for multipart uploads part by part ([`upload`]).
    parts: Arc<dyn MultipartStore>,
    loc: Location,
    rt: tokio::runtime::Handle,
    /// Local scratch space for the plans' spools (removed when the archive is dropped, or
    /// by the next server to start if this one is killed).
    scratch: scratch::Scratch,
    seq: AtomicU64,
    mode_mask: u32,
    keep_versions: Option<Duration>,
    /// The tree of each client with a session running, loaded by the session's index and
    /// changed by its writer (one session per id at a time on a server).
    trees: Mutex<HashMap<ClientId, Arc<Mutex<Option<Loaded>>>>>,
    /// When versions were last purged: listing every client's versions costs requests
    /// that grow with the clients, so it is done at most every [`PURGE_EVERY`].
    purged: Mutex<Option<std::time::Instant>>,
}

/// How often versions past their retention are looked for (the retention is in days).
pub const PURGE_EVERY: Duration = Duration::from_secs(3600);

impl std::fmt::Debug for ObjectArchive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectArchive")
            .field("store", &self.store)
            .field("loc", &self.loc)
            .field("keep_versions", &self.keep_versions)
            .finish_non_exhaustive()
    }
}

/// What looks wrong in the `AWS_*` settings (`env` reads one), for the end of an error
/// from a store that cannot be reached or refuses the request: the mistakes seen most,
/// which `object_store`'s own messages do not name ("builder error", a request to the EC2
/// metadata service, "AuthorizationHeaderMalformed"). Empty if nothing looks wrong.
pub fn settings_hint(env: impl Fn(&str) -> Option<String>) -> String {
    let set = |k: &str| env(k).is_some_and(|v| !v.is_empty());
    let mut hints = Vec::new();
    let endpoint = env("AWS_ENDPOINT").or_else(|| env("AWS_ENDPOINT_URL"));
    let allow_http = env("AWS_ALLOW_HTTP").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if endpoint
        .as_deref()
        .is_some_and(|e| e.trim().to_ascii_lowercase().starts_with("http://"))
        && !allow_http
    {
        hints.push("the endpoint is http://, which needs AWS_ALLOW_HTTP=true".to_owned());
    }
    let missing: Vec<&str> = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
        .into_iter()
        .filter(|k| !set(k))
        .collect();
    if !missing.is_empty() {
        hints.push(format!(
            "{} not set, so credentials were asked of the EC2 instance metadata service",
            missing.join(" and ")
        ));
    }
    if endpoint.is_none_or(|e| e.trim().is_empty()) {
        hints.push("no AWS_ENDPOINT is set, so the store asked was AWS S3 itself".to_owned());
    }
    if !set("AWS_REGION") && !set("AWS_DEFAULT_REGION") {
        hints.push(
            "AWS_REGION is not set, so us-east-1 was used (a Garage cluster's is in its \
             garage.toml, s3_region, often \"garage\")"
                .to_owned(),
        );
    }
    if hints.is_empty() {
        String::new()
    } else {
        format!("check the settings: {}", hints.join("; "))
    }
}

/// What an error from the store most likely means, from its text, for the mistakes seen
/// most (wrong secret, unknown key id, missing bucket, an endpoint that does not
/// resolve); `None` if it is none of them.
pub fn error_hint(text: &str) -> Option<&'static str> {
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    if has(&["SignatureDoesNotMatch", "Invalid signature"]) {
        Some("the store refused the signature: check AWS_SECRET_ACCESS_KEY")
    } else if has(&["InvalidAccessKeyId", "No such key"]) {
        Some("the store does not know the key: check AWS_ACCESS_KEY_ID")
    } else if has(&["NoSuchBucket"]) {
        Some("the bucket does not exist: create it (garage bucket create NAME) and allow the key on it")
    } else if has(&["dns error", "failed to lookup address"]) {
        Some("the endpoint's name does not resolve: check AWS_ENDPOINT")
    } else {
        None
    }
}

/// `text` with an S3 error document (`<?xml …><Error><Code>…</Code><Message>…</Message>…`)
/// cut down to `Code: Message`: the rest (resource, request id, region) makes a line of
/// several hundred characters that says nothing more.
pub fn tidy_s3_error(text: &str) -> String {
    let between = |open: &str, close: &str| -> Option<&str> {
        let start = text.find(open)? + open.len();
        let len = text[start..].find(close)?;
        Some(&text[start..start + len])
    };
    let (Some(xml), Some(end)) = (text.find("<?xml"), text.find("</Error>")) else {
        return text.to_owned();
    };
    if end < xml {
        return text.to_owned();
    }
    let said = match (
        between("<Code>", "</Code>"),
        between("<Message>", "</Message>"),
    ) {
        (Some(c), Some(m)) => format!("{c}: {}", m.replace("&apos;", "'").replace("&quot;", "\"")),
        (Some(c), None) => c.to_owned(),
        _ => return text.to_owned(),
    };
    format!("{}{said}{}", &text[..xml], &text[end + "</Error>".len()..])
}

/// A failed request, as an `io::Error` naming what was being done.
pub(crate) fn req_err(
    what: impl std::fmt::Display,
) -> impl FnOnce(object_store::Error) -> io::Error {
    move |e| match e {
        object_store::Error::NotFound { .. } => {
            io::Error::new(io::ErrorKind::NotFound, format!("{what}: {e}"))
        }
        e => io::Error::other(format!("{what}: {}", crate::error::chain(&e))),
    }
}

impl ObjectArchive {
    /// Opens the archive at `url` (`s3://BUCKET[/PREFIX]`), with credentials, endpoint and
    /// region from the `AWS_*` environment variables as `object_store` reads them
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT`, `AWS_REGION`,
    /// `AWS_ALLOW_HTTP`, …), and checks that the bucket answers. Must be called within a
    /// tokio runtime, whose handle the blocking parts use.
    ///
    /// # Errors
    ///
    /// A bad URL, settings `object_store` refuses, or a store that does not answer; the
    /// message then ends with what looks wrong in the `AWS_*` settings, if anything
    /// ([`settings_hint`]).
    pub async fn open(url: &str) -> io::Result<ObjectArchive> {
        let loc = Location::parse(url).map_err(io::Error::other)?;
        crate::net::tls::install_default_provider();
        let hinted = |e: io::Error| {
            let text = tidy_s3_error(&e.to_string());
            let mut hints: Vec<String> = error_hint(&text).map(str::to_owned).into_iter().collect();
            let settings = settings_hint(|k| std::env::var(k).ok());
            if !settings.is_empty() {
                hints.push(settings);
            }
            if hints.is_empty() {
                io::Error::new(e.kind(), text)
            } else {
                io::Error::new(e.kind(), format!("{text} ({})", hints.join("; ")))
            }
        };
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(&loc.bucket)
            .build()
            .map_err(|e| {
                hinted(io::Error::other(format!(
                    "configuring {}: {}",
                    loc.url(),
                    crate::error::chain(&e)
                )))
            })?;
        Self::with_store(Arc::new(store), loc).await.map_err(hinted)
    }

    /// Opens an archive at `loc` in `store`, and checks that it answers.
    pub async fn with_store<S: ObjectStore + MultipartStore>(
        s: Arc<S>,
        loc: Location,
    ) -> io::Result<Self> {
        let parts: Arc<dyn MultipartStore> = s.clone();
        let store: Arc<dyn ObjectStore> = s;
        let top = (!loc.prefix.is_empty()).then(|| ObjectPath::from(loc.prefix.as_str()));
        store
            .list_with_delimiter(top.as_ref())
            .await
            .map_err(req_err(format!("listing {}", loc.url())))?;
        Ok(ObjectArchive {
            store,
            parts,
            loc,
            rt: tokio::runtime::Handle::current(),
            scratch: scratch::Scratch::create_in(&std::env::temp_dir())?,
            seq: AtomicU64::new(0),
            mode_mask: stored_mode_bits(false),
            keep_versions: Some(crate::store::DEFAULT_KEEP_VERSIONS),
            trees: Mutex::new(HashMap::new()),
            purged: Mutex::new(None),
        })
    }

    /// Keeps setuid and setgid bits from clients (see [`crate::store::Store::keep_setid`]).
    pub fn keep_setid(mut self, keep: bool) -> Self {
        self.mode_mask = stored_mode_bits(keep);
        self
    }

    /// Keeps what sessions replace or delete for this long; `None` or zero: not at all.
    pub fn keep_versions(mut self, keep: Option<Duration>) -> Self {
        self.keep_versions = keep.filter(|d| !d.is_zero());
        self
    }

    /// Where it is.
    pub fn location(&self) -> &Location {
        &self.loc
    }

    /// The object store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The servers' shared TLS key (PEM), made and put by the first server that finds
    /// none. Two servers starting at once may both make one: each reads the key back
    /// after a pause and uses what the store holds then, the last one put.
    pub async fn tls_key(&self) -> io::Result<(String, bool)> {
        let key = self.loc.tls_key();
        let pem_of = |b: bytes::Bytes| {
            String::from_utf8(b.to_vec())
                .map_err(|_| io::Error::other("the stored TLS key is not PEM"))
        };
        if let Some(b) = get_if_any(&self.store, &key, "reading the TLS key").await? {
            return Ok((pem_of(b)?, false));
        }
        let pem = crate::net::tls::ServerTls::generate_key_pem().map_err(io::Error::other)?;
        self.store
            .put(&key, pem.clone().into_bytes().into())
            .await
            .map_err(req_err("storing the new TLS key"))?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let stored = get_if_any(&self.store, &key, "reading the TLS key back")
            .await?
            .ok_or_else(|| io::Error::other("the TLS key just stored is gone"))?;
        let stored = pem_of(stored)?;
        let ours = stored == pem;
        Ok((stored, ours))
    }

    /// The shared tree slot of `id`, made if missing.
    fn tree_slot(&self, id: &ClientId) -> Arc<Mutex<Option<Loaded>>> {
        let mut trees = self.trees.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(trees.entry(id.clone()).or_default())
    }

    /// Forgets the slot of `id` once its session's writer is done.
    fn drop_slot(&self, id: &ClientId, slot: &Arc<Mutex<Option<Loaded>>>) {
        let mut trees = self.trees.lock().unwrap_or_else(|e| e.into_inner());
        if trees.get(id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            trees.remove(id);
        }
    }
}

/// The whole content of the object at `key`, or `None` if there is none; `what` names
/// the read in an error.
pub(crate) async fn get_if_any(
    store: &Arc<dyn ObjectStore>,
    key: &ObjectPath,
    what: &str,
) -> io::Result<Option<bytes::Bytes>> {
    match store.get(key).await {
        Ok(r) => r.bytes().await.map(Some).map_err(req_err(what)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(req_err(what)(e)),
    }
}

/// What the store holds for a client: the index checked against a listing (see the
/// module's doc).
pub(crate) async fn load_tree(
    store: &Arc<dyn ObjectStore>,
    loc: &Location,
    id: &ClientId,
) -> io::Result<Loaded> {
    load_tree_listing_by_folder_above(store, loc, id, LIST_BY_FOLDER_ABOVE).await
}

/// Above this many entries in a client's index, its folder is listed one top-level
/// folder at a time, [`LISTS_IN_FLIGHT`] at once ([`list_objects`]).
const LIST_BY_FOLDER_ABOVE: usize = 1000;

/// Listings in flight at once when a client's folder is listed by top-level folder.
const LISTS_IN_FLIGHT: usize = 16;

/// The objects under `base`, in no particular order. With `by_folder`, one listing per
/// top-level folder, [`LISTS_IN_FLIGHT`] at once, after one listing with a delimiter:
/// S3 lists 1,000 keys a page, each page asked for after the one before, so a single
/// listing of a large folder is a long chain of round trips, while a few more requests
/// side by side take a fraction of the time (20,000 objects in 10 top-level folders:
/// 2.31 s against 1.44 s for a whole no-change sync on a 3-node Garage, bench/README.md).
/// Small folders are listed at once: there the extra requests would cost more than they
/// save.
async fn list_objects(
    store: &Arc<dyn ObjectStore>,
    base: &ObjectPath,
    by_folder: bool,
) -> io::Result<futures::stream::BoxStream<'static, io::Result<object_store::ObjectMeta>>> {
    let listing = |p: &ObjectPath| {
        let what = format!("listing {p}");
        store
            .list(Some(p))
            .map_err(move |e| req_err(&what)(e))
            .boxed()
    };
    if !by_folder {
        return Ok(listing(base));
    }
    let top = store
        .list_with_delimiter(Some(base))
        .await
        .map_err(req_err(format!("listing {base}")))?;
    let folders: Vec<_> = top.common_prefixes.iter().map(listing).collect();
    Ok(futures::stream::iter(top.objects.into_iter().map(Ok))
        .chain(futures::stream::iter(folders).flatten_unordered(LISTS_IN_FLIGHT))
        .boxed())
}

/// [`load_tree`], listing by top-level folder above `by_folder_above` index entries.
async fn load_tree_listing_by_folder_above(
    store: &Arc<dyn ObjectStore>,
    loc: &Location,
    id: &ClientId,
    by_folder_above: usize,
) -> io::Result<Loaded> {
    let base = loc.client(id);
    let mut stale = false;
    let index = match get_if_any(store, &loc.index(id), "reading the index").await? {
        Some(b) => layout::decode_index(&b).unwrap_or_else(|| {
            tracing::warn!(client = %id, "the stored index is unreadable; rebuilt from a listing");
            stale = true;
            Vec::new()
        }),
        None => Vec::new(),
    };
    // The index's entries, sorted by path (as written, from the tree), found by binary
    // search as the listing goes, and marked when their object is listed unchanged. A
    // HashMap of them took 280 bytes an entry more, the largest part of the peak memory
    // of a large client's load (heaptrack, 60,000 files: 16.9 of 41.7 MB).
    let mut index = index;
    if !index.is_sorted_by(|a, b| a.path < b.path) {
        index.sort_by(|a, b| a.path.cmp(&b.path));
        index.dedup_by(|a, b| a.path == b.path);
    }
    let mut listed_unchanged = vec![false; index.len()];
    let mut unknown = Vec::new();
    let mut foreign = 0u64;
    let mut listing = list_objects(store, &base, index.len() > by_folder_above).await?;
    while let Some(meta) = listing.try_next().await? {
        let Some(rel) = layout::rel_of(&base, &meta.location) else {
            foreign += 1;
            continue;
        };
        match index.binary_search_by(|e| e.path.cmp(&rel)) {
            Ok(i) if index[i].e_tag.is_some() && index[i].e_tag == meta.e_tag => {
                listed_unchanged[i] = true;
            }
            _ => unknown.push((rel, meta)),
        }
    }
    let mut tree = Tree::new();
    // Folders live in the index only; a folder whose objects went is now empty.
    for (e, unchanged) in index.into_iter().zip(listed_unchanged) {
        if unchanged || e.held.kind == EntryKind::Dir {
            tree.insert(e.path.clone(), e);
        } else {
            // Gone from the store, or changed (read again below).
            stale = true;
        }
    }
    if foreign > 0 {
        tracing::warn!(client = %id, objects = foreign,
            "objects under the client's folder whose keys no path maps to are left alone");
    }
    // Objects changed or put by another tool: their metadata says what they are.
    let heads = futures::stream::iter(unknown)
        .map(|(rel, meta)| {
            let store = Arc::clone(store);
            async move {
                match head_entry(&store, &meta).await {
                    Ok(held) => Ok(Some(Entry {
                        path: rel,
                        held,
                        e_tag: meta.e_tag,
                    })),
                    // Gone since the listing, or a folder marker another tool made
                    // (`dir/`, listed without its slash): nothing held there.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                }
            }
        })
        .buffer_unordered(REQUESTS_IN_FLIGHT)
        .try_collect::<Vec<Option<Entry>>>()
        .await?;
    let heads: Vec<Entry> = heads.into_iter().flatten().collect();
    stale |= !heads.is_empty();
    for e in heads {
        tree.insert(e.path.clone(), e);
    }
    // Folders implied by keys (objects another tool put, or an index lost).
    let implied: Vec<RelPath> = tree
        .keys()
        .flat_map(|p| p.ancestors().collect::<Vec<_>>())
        .filter(|a| !tree.contains_key(a))
        .collect();
    stale |= !implied.is_empty();
    for a in implied {
        tree.entry(a.clone()).or_insert_with(|| Entry {
            path: a,
            held: dir_held(MTime::EPOCH, 0o755),
            e_tag: None,
        });
    }
    Ok(Loaded { tree, stale })
}

/// A folder's attributes.
pub(crate) fn dir_held(mtime: MTime, mode: u32) -> Held {
    Held {
        kind: EntryKind::Dir,
        size: 0,
        mtime,
        mode,
        target: None,
    }
}

/// What an object stands for, read from its metadata (and a symlink's body).
pub(crate) async fn head_entry(
    store: &Arc<dyn ObjectStore>,
    meta: &object_store::ObjectMeta,
) -> io::Result<Held> {
    let what = || format!("reading the metadata of {}", meta.location);
    let r = store
        .get_opts(
            &meta.location,
            GetOptions {
                head: true,
                ..GetOptions::default()
            },
        )
        .await
        .map_err(req_err(what()))?;
    let attrs = r.attributes;
    let get = |k: &str| {
        attrs
            .get(&Attribute::Metadata(k.to_owned().into()))
            .map(|v| v.as_ref().to_owned())
    };
    let last = MTime::from_system(meta.last_modified.into()).unwrap_or(MTime::EPOCH);
    let body = if get(layout::META_KIND).as_deref() == Some("symlink") {
        Some(
            store
                .get(&meta.location)
                .await
                .map_err(req_err(what()))?
                .bytes()
                .await
                .map_err(req_err(what()))?,
        )
    } else {
        None
    };
    Ok(layout::held_from(get, meta.size, last, body.as_deref()))
}

/// The archive's index of one client, loaded on first use (on the planner's blocking
/// thread), in tree order.
struct ObjectIndex {
    store: Arc<dyn ObjectStore>,
    loc: Location,
    id: ClientId,
    rt: tokio::runtime::Handle,
    slot: Arc<Mutex<Option<Loaded>>>,
    entries: Option<std::vec::IntoIter<(RelPath, Held)>>,
    error: Option<io::Error>,
}

impl Iterator for ObjectIndex {
    type Item = (RelPath, Held);

    fn next(&mut self) -> Option<(RelPath, Held)> {
        if self.entries.is_none() {
            let loaded = self
                .rt
                .block_on(load_tree(&self.store, &self.loc, &self.id));
            let loaded = match loaded {
                Ok(t) => t,
                Err(e) => {
                    self.error = Some(e);
                    self.entries = Some(Vec::new().into_iter());
                    return None;
                }
            };
            let mut v: Vec<(RelPath, Held)> = loaded
                .tree
                .values()
                .map(|e| (e.path.clone(), e.held.clone()))
                .collect();
            // Paths are unique, so an unstable sort orders them the same, without the
            // stable sort's buffer of half the entries.
            v.sort_unstable_by(|a, b| a.0.tree_cmp(&b.0));
            *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(loaded);
            self.entries = Some(v.into_iter());
        }
        self.entries.as_mut()?.next()
    }
}

impl HeldIndex for ObjectIndex {
    fn take_error(&mut self) -> Option<io::Error> {
        self.error.take()
    }
}

impl Archive for ObjectArchive {
    fn location(&self) -> String {
        self.loc.url()
    }

    fn keeps_setid(&self) -> bool {
        self.mode_mask & SETID_BITS != 0
    }

    fn modes_in_place(&self) -> bool {
        // An object's metadata (its mode among it) is fixed once put: changing it takes a
        // copy of the object onto itself, which the object_store crate does not offer
        // with new metadata. The file is sent again, and the old object kept as a
        // version, so the metadata that other tools read stays true.
        false
    }

    fn mtime_precision(&self) -> Duration {
        // Written as text to the nanosecond.
        Duration::from_nanos(1)
    }

    fn index(&self, id: &ClientId) -> Box<dyn HeldIndex> {
        let slot = Arc::new(Mutex::new(None));
        self.trees
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), Arc::clone(&slot));
        Box::new(ObjectIndex {
            store: Arc::clone(&self.store),
            loc: self.loc.clone(),
            id: id.clone(),
            rt: self.rt.clone(),
            slot,
            entries: None,
            error: None,
        })
    }

    fn spool(&self) -> io::Result<Spool> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        Spool::create(self.scratch.path().join(format!("{n}.tail")))
    }

    fn writer<'a>(
        &'a self,
        id: &ClientId,
        report: Report,
        fence: Fence,
    ) -> io::Result<Box<dyn Writer + 'a>> {
        // The writer starts with the session, before the manifest is planned: it takes
        // the tree the index loads when it first needs it.
        let slot = self.tree_slot(id);
        Ok(Box::new(writer::ObjectWriter::new(
            self, id, slot, report, fence,
        )))
    }

    fn purge_versions(&self) -> io::Result<u64> {
        let Some(keep) = self.keep_versions else {
            return Ok(0);
        };
        {
            let mut last = self.purged.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < PURGE_EVERY) {
                return Ok(0);
            }
            *last = Some(std::time::Instant::now());
        }
        let cutoff = crate::versions::retention_cutoff(keep);
        // Housekeeping at the same pace: uploads a killed server left behind.
        match self.rt.block_on(upload::sweep(
            &self.store,
            &self.parts,
            &self.loc,
            upload::ABANDONED_AFTER,
        )) {
            Ok(0) => {}
            Ok(n) => tracing::info!(uploads = n, "aborted abandoned multipart uploads"),
            Err(e) => tracing::warn!(error = %e, "cannot sweep abandoned multipart uploads"),
        }
        self.rt
            .block_on(restore::purge(&self.store, &self.loc, cutoff))
    }
}

//! The object store's writer, index and versions against `object_store`'s in-memory
//! store (the same trait the S3 client implements; the end-to-end tests run a real Garage
//! cluster).

use std::sync::{Arc, Mutex};

use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::layout::{self, Location};
use super::{load_tree, load_tree_listing_by_folder_above, restore, ObjectArchive, Tree};
use crate::archive::{Archive, Fence};
use crate::messages::{EntryKind, FileHeader, Outcome};
use crate::paths::{ClientId, LinkTarget, RelPath};
use crate::planner::{DeleteBudget, TailOp};
use crate::store::Applied;
use crate::time::MTime;

fn rel(s: &str) -> RelPath {
    RelPath::parse(s).unwrap()
}

fn t(s: i64) -> MTime {
    MTime::new(s, 7).unwrap()
}

fn id() -> ClientId {
    ClientId::parse("lab").unwrap()
}

async fn archive(store: &Arc<InMemory>) -> Arc<ObjectArchive> {
    let loc = Location::parse("s3://bkt/pre").unwrap();
    Arc::new(
        ObjectArchive::with_store(Arc::clone(store), loc)
            .await
            .unwrap(),
    )
}

/// A file to send: its path, content and mode.
struct F(&'static str, Vec<u8>, u32);

/// One session, as the server runs it: the index read, the files written, the tail
/// applied. Returns the outcomes and what the tail did.
async fn session(
    ar: &Arc<ObjectArchive>,
    files: Vec<F>,
    tail: Vec<TailOp>,
    budget: DeleteBudget,
) -> (Vec<(RelPath, Outcome)>, Applied) {
    fenced_session(ar, files, tail, budget, None).await
}

/// [`session`], with the session's lease lost (its fence raised) just before file
/// `lost_before_commit` is committed, all its data written.
async fn fenced_session(
    ar: &Arc<ObjectArchive>,
    files: Vec<F>,
    tail: Vec<TailOp>,
    budget: DeleteBudget,
    lost_before_commit: Option<usize>,
) -> (Vec<(RelPath, Outcome)>, Applied) {
    let ar = Arc::clone(ar);
    tokio::task::spawn_blocking(move || {
        let mut index = ar.index(&id());
        // The planner reads the index before any file comes.
        let _held: Vec<_> = index.by_ref().collect();
        assert!(index.take_error().is_none());
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let o = Arc::clone(&outcomes);
        let fence = Fence::default();
        let mut w = ar
            .writer(
                &id(),
                Box::new(move |v| o.lock().unwrap().extend(v)),
                fence.clone(),
            )
            .unwrap();
        for (i, f) in files.into_iter().enumerate() {
            let h = FileHeader {
                path: rel(f.0),
                size: f.1.len() as u64,
                mtime: t(100),
                mode: f.2,
                delta: false,
                offset: 0,
            };
            w.open(&h, Some(f.2));
            for chunk in f.1.chunks(1 << 20) {
                w.write(chunk);
            }
            if lost_before_commit == Some(i) {
                fence.raise();
            }
            let now = w.commit(None);
            outcomes.lock().unwrap().extend(now);
        }
        let mut spool = ar.spool().unwrap();
        for op in &tail {
            spool.push(op);
        }
        let applied = w.finish(spool, &budget);
        drop(w);
        let out = outcomes.lock().unwrap().clone();
        (out, applied)
    })
    .await
    .unwrap()
}

async fn tree(store: &Arc<InMemory>) -> Tree {
    let s: Arc<dyn ObjectStore> = store.clone();
    load_tree(&s, &Location::parse("s3://bkt/pre").unwrap(), &id())
        .await
        .unwrap()
        .tree
}

/// A large client's folder is listed one top-level folder at a time: the same tree as
/// one listing, objects at the top and objects another tool put or changed included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_by_folder_finds_what_one_listing_finds() {
    let mem = Arc::new(InMemory::new());
    let ar = archive(&mem).await;
    let mut files = vec![F("top.txt", b"t".to_vec(), 0o644)];
    for dir in ["a", "b/c", "b/d", "e"] {
        for i in 0..5 {
            let name: &'static str = Box::leak(format!("{dir}/{i}").into_boxed_str());
            files.push(F(name, vec![i as u8; 10 + i], 0o640));
        }
    }
    let (out, _) = session(&ar, files, vec![], DeleteBudget::All).await;
    assert_eq!(stored(&out), 21);
    // Another tool changes one object and adds one in a new top-level folder.
    for (key, bytes) in [
        ("pre/client_lab/b/c/1", "changed"),
        ("pre/client_lab/z/new", "n"),
    ] {
        mem.put(
            &ObjectPath::parse(key).unwrap(),
            bytes.as_bytes().to_vec().into(),
        )
        .await
        .unwrap();
    }
    let s: Arc<dyn ObjectStore> = mem.clone();
    let loc = Location::parse("s3://bkt/pre").unwrap();
    let whole = load_tree_listing_by_folder_above(&s, &loc, &id(), usize::MAX)
        .await
        .unwrap();
    let by_folder = load_tree_listing_by_folder_above(&s, &loc, &id(), 0)
        .await
        .unwrap();
    assert_eq!(by_folder.tree, whole.tree);
    assert_eq!(by_folder.stale, whole.stale);
    assert!(whole.stale, "changed objects make the index stale");
    for p in ["top.txt", "a", "a/4", "b/c/1", "b/d/0", "e/2", "z", "z/new"] {
        assert!(whole.tree.contains_key(&rel(p)), "{p} missing");
    }
    assert_eq!(whole.tree[&rel("b/c/1")].held.size, 7);
}

async fn body(store: &Arc<InMemory>, key: &str) -> Option<Vec<u8>> {
    match store.get(&ObjectPath::parse(key).unwrap()).await {
        Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
        Err(_) => None,
    }
}

fn stored(out: &[(RelPath, Outcome)]) -> usize {
    out.iter().filter(|(_, o)| *o == Outcome::Stored).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_the_tail_become_objects_and_an_index() {
    let mem = Arc::new(InMemory::new());
    let ar = archive(&mem).await;
    let big = vec![5u8; (super::MULTIPART_MIN + 3) as usize];
    let (out, applied) = session(
        &ar,
        vec![
            F("a/x.txt", b"x".to_vec(), 0o640),
            F("big", big.clone(), 0o644),
            F("100%", b"p".to_vec(), 0o4755),
        ],
        vec![
            TailOp::MakeDir(rel("empty")),
            TailOp::DirAttrs(rel("empty"), t(5), Some(0o700)),
            TailOp::Link(rel("a/l"), LinkTarget::from_bytes(b"../big").unwrap(), t(6)),
            TailOp::Fifo(rel("a/p"), 0o600, t(7)),
        ],
        DeleteBudget::All,
    )
    .await;
    assert_eq!(stored(&out), 3, "{out:?}");
    assert!(applied.errors.is_empty(), "{applied:?}");
    assert_eq!(body(&mem, "pre/client_lab/a/x.txt").await.unwrap(), b"x");
    assert_eq!(body(&mem, "pre/client_lab/big").await.unwrap(), big);
    assert_eq!(body(&mem, "pre/client_lab/a/l").await.unwrap(), b"../big");
    assert_eq!(body(&mem, "pre/client_lab/100%25").await.unwrap(), b"p");

    let held = tree(&mem).await;
    let kind = |p: &str| held.get(&rel(p)).map(|e| e.held.kind);
    assert_eq!(kind("a"), Some(EntryKind::Dir));
    assert_eq!(kind("a/l"), Some(EntryKind::Symlink));
    assert_eq!(kind("a/p"), Some(EntryKind::Fifo));
    assert_eq!(kind("empty"), Some(EntryKind::Dir));
    let e = &held[&rel("empty")].held;
    assert_eq!((e.mtime, e.mode), (t(5), 0o700));
    // setuid dropped by default.
    assert_eq!(held[&rel("100%")].held.mode, 0o755);
    assert_eq!(held[&rel("a/x.txt")].held.mtime, t(100));
    assert_eq!(
        held[&rel("a/l")].held.target.as_ref().unwrap().as_bytes(),
        b"../big"
    );

    // The index alone describes it: a lost index is rebuilt from metadata, the same.
    mem.delete(&ObjectPath::from("pre/.filesync/index/client_lab"))
        .await
        .unwrap();
    let rebuilt = tree(&mem).await;
    for p in ["a/x.txt", "big", "a/l", "a/p", "100%"] {
        assert_eq!(rebuilt[&rel(p)].held, held[&rel(p)].held, "{p}");
    }
    // Folders without objects live only in the index.
    assert!(!rebuilt.contains_key(&rel("empty")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_and_deleted_objects_are_kept_and_restorable() {
    let mem = Arc::new(InMemory::new());
    let ar = archive(&mem).await;
    let (out, _) = session(
        &ar,
        vec![
            F("keep", b"v1".to_vec(), 0o644),
            F("d/gone", b"g".to_vec(), 0o644),
        ],
        vec![],
        DeleteBudget::All,
    )
    .await;
    assert_eq!(stored(&out), 2);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let between = MTime::from_system(std::time::SystemTime::now()).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (out, applied) = session(
        &ar,
        vec![
            F("keep", b"v2".to_vec(), 0o644),
            F("new", b"n".to_vec(), 0o644),
        ],
        vec![TailOp::Delete(rel("d"))],
        DeleteBudget::All,
    )
    .await;
    assert_eq!(stored(&out), 2);
    assert_eq!(applied.deleted, 2, "{applied:?}");
    assert_eq!(body(&mem, "pre/client_lab/d/gone").await, None);

    let s: Arc<dyn ObjectStore> = mem.clone();
    let loc = Location::parse("s3://bkt/pre").unwrap();
    let sessions = restore::sessions(&s, &loc, &id()).await.unwrap();
    assert_eq!(sessions.len(), 2);
    assert!(sessions[0].record.whole_folder);
    let r = &sessions[1].record;
    assert_eq!(r.added, vec![rel("new")]);
    let mut replaced: Vec<String> = r.replaced.iter().map(|e| e.path.to_string()).collect();
    replaced.sort();
    assert_eq!(replaced, ["d", "d/gone", "keep"]);

    let dest = tempfile::tempdir().unwrap();
    let to = dest.path().join("r");
    let done = restore::restore(&s, &loc, &id(), &to, Some(between), &[])
        .await
        .unwrap();
    assert_eq!(done.sessions_undone, 1);
    assert_eq!(std::fs::read(to.join("keep")).unwrap(), b"v1");
    assert_eq!(std::fs::read(to.join("d/gone")).unwrap(), b"g");
    assert!(!to.join("new").exists());

    // Before the first session the archive held nothing: an error, and no folder made.
    let early = dest.path().join("early");
    let before_first = MTime::from_system(
        std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(946_684_800),
    )
    .unwrap();
    let err = restore::restore(&s, &loc, &id(), &early, Some(before_first), &[])
        .await
        .unwrap_err();
    assert!(
        matches!(err, crate::restore::RestoreError::NotYet { .. }),
        "{err}"
    );
    assert!(!early.exists());

    // A record lost with its server: the tree/ objects still restore, from metadata.
    mem.delete(&layout_record(&sessions[1].dir)).await.unwrap();
    let again = restore::sessions(&s, &loc, &id()).await.unwrap();
    let mut replaced: Vec<String> = again[1]
        .record
        .replaced
        .iter()
        .map(|e| e.path.to_string())
        .collect();
    replaced.sort();
    assert_eq!(replaced, ["d/gone", "keep"]);
}

fn layout_record(dir: &ObjectPath) -> ObjectPath {
    ObjectPath::from_iter(dir.parts().chain(std::iter::once("record".into())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_rewritten_after_planning_is_not_deleted() {
    let mem = Arc::new(InMemory::new());
    let ar = archive(&mem).await;
    session(
        &ar,
        vec![F("a", b"1".to_vec(), 0o644), F("b", b"1".to_vec(), 0o644)],
        vec![],
        DeleteBudget::All,
    )
    .await;
    // Another session (another server, no lease) rewrites `a` after this one planned
    // its deletion: the index still has the old ETag.
    let ar2 = Arc::clone(&ar);
    let mem2 = Arc::clone(&mem);
    let applied = tokio::task::spawn_blocking(move || {
        let mut index = ar2.index(&id());
        let _: Vec<_> = index.by_ref().collect();
        let mut w = ar2
            .writer(&id(), Box::new(|_| {}), Fence::default())
            .unwrap();
        ar2.rt.block_on(async {
            mem2.put(&ObjectPath::from("pre/client_lab/a"), b"2".to_vec().into())
                .await
                .unwrap();
        });
        let mut spool = ar2.spool().unwrap();
        spool.push(&TailOp::Delete(rel("a")));
        spool.push(&TailOp::Delete(rel("b")));
        w.finish(spool, &DeleteBudget::All)
    })
    .await
    .unwrap();
    assert_eq!(applied.deleted, 1, "{applied:?}");
    // Kept, held back (the client hears why), not a failure.
    assert_eq!(applied.held_back, 1, "{applied:?}");
    assert!(applied.errors.is_empty(), "{applied:?}");
    assert_eq!(body(&mem, "pre/client_lab/a").await.unwrap(), b"2");
    assert_eq!(body(&mem, "pre/client_lab/b").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_stay_within_the_budget() {
    let mem = Arc::new(InMemory::new());
    let ar = archive(&mem).await;
    session(
        &ar,
        vec![
            F("x", b"1".to_vec(), 0o644),
            F("d/1", b"1".to_vec(), 0o644),
            F("d/2", b"1".to_vec(), 0o644),
        ],
        vec![],
        DeleteBudget::All,
    )
    .await;
    let (_, applied) = session(
        &ar,
        vec![],
        vec![TailOp::Delete(rel("d")), TailOp::Delete(rel("x"))],
        DeleteBudget::UpTo(2, "test".into()),
    )
    .await;
    // The folder (three entries) does not fit; the file does.
    assert_eq!((applied.deleted, applied.held_back), (1, 3), "{applied:?}");
    assert!(body(&mem, "pre/client_lab/d/1").await.is_some());
    assert_eq!(body(&mem, "pre/client_lab/x").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_replaces_a_folder_and_a_folder_a_file() {
    let mem = Arc::new(InMemory::new());
    let ar = archive(&mem).await;
    session(
        &ar,
        vec![
            F("p/in", b"1".to_vec(), 0o644),
            F("q", b"q".to_vec(), 0o644),
        ],
        vec![],
        DeleteBudget::All,
    )
    .await;
    let (out, applied) = session(
        &ar,
        vec![
            F("p", b"now a file".to_vec(), 0o644),
            F("q/in", b"2".to_vec(), 0o644),
        ],
        vec![],
        DeleteBudget::All,
    )
    .await;
    assert_eq!(stored(&out), 2, "{out:?} {applied:?}");
    assert_eq!(body(&mem, "pre/client_lab/p/in").await, None);
    assert_eq!(body(&mem, "pre/client_lab/p").await.unwrap(), b"now a file");
    assert_eq!(body(&mem, "pre/client_lab/q").await, None);
    assert_eq!(body(&mem, "pre/client_lab/q/in").await.unwrap(), b"2");
    let held = tree(&mem).await;
    assert_eq!(held[&rel("p")].held.kind, EntryKind::File);
    assert_eq!(held[&rel("q")].held.kind, EntryKind::Dir);
}

#[test]
fn keys_of_the_layout_are_where_the_spec_says() {
    let loc = Location::parse("s3://bkt/pre").unwrap();
    assert_eq!(loc.tls_key().as_ref(), "pre/.filesync/tls/server.key");
    assert_eq!(
        loc.versions(&id()).as_ref(),
        "pre/.filesync/versions/client_lab"
    );
    assert_eq!(
        layout::under(&loc.client(&id()), &rel("a b/c"))
            .unwrap()
            .as_ref(),
        "pre/client_lab/a b/c"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_near_the_key_limit_can_be_replaced_and_its_version_restored() {
    let mem = Arc::new(InMemory::new());
    let ar = archive(&mem).await;
    let long: &'static str = Box::leak(vec!["n".repeat(199); 5].join("/").into_boxed_str());
    let (out, _) = session(
        &ar,
        vec![F(long, b"v1".to_vec(), 0o644)],
        vec![],
        DeleteBudget::All,
    )
    .await;
    assert_eq!(stored(&out), 1, "{out:?}");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let between = MTime::from_system(std::time::SystemTime::now()).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (out, _) = session(
        &ar,
        vec![F(long, b"v2".to_vec(), 0o644)],
        vec![],
        DeleteBudget::All,
    )
    .await;
    assert_eq!(
        stored(&out),
        1,
        "replaced although its version key is long: {out:?}"
    );
    let s: Arc<dyn ObjectStore> = mem.clone();
    let loc = Location::parse("s3://bkt/pre").unwrap();
    let dest = tempfile::tempdir().unwrap();
    let to = dest.path().join("r");
    restore::restore(&s, &loc, &id(), &to, Some(between), &[])
        .await
        .unwrap();
    assert_eq!(std::fs::read(to.join(long)).unwrap(), b"v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_left_by_a_killed_server_is_swept_and_a_finished_one_leaves_no_journal() {
    let mem = Arc::new(InMemory::new());
    let ar = archive(&mem).await;
    let store: Arc<dyn ObjectStore> = mem.clone();
    let parts: Arc<dyn object_store::multipart::MultipartStore> = mem.clone();
    let loc = Location::parse("s3://bkt/pre").unwrap();
    let journal = ObjectPath::from("pre/.filesync/uploads");
    let journaled = || async {
        let v: Vec<_> = futures::TryStreamExt::try_collect(mem.list(Some(&journal)))
            .await
            .unwrap();
        v.len()
    };
    // A file sent whole through the writer: completed, journal entry gone.
    let big = vec![1u8; (super::MULTIPART_MIN + 1) as usize];
    let (out, _) = session(
        &ar,
        vec![F("big", big.clone(), 0o644)],
        vec![],
        DeleteBudget::All,
    )
    .await;
    assert_eq!(stored(&out), 1);
    assert_eq!(journaled().await, 0);
    assert_eq!(body(&mem, "pre/client_lab/big").await.unwrap(), big);

    // An upload whose server was killed after a part: journaled, invisible.
    let key = ObjectPath::from("pre/client_lab/half");
    let mut up = super::upload::Upload::start(
        Arc::clone(&store),
        Arc::clone(&parts),
        &loc,
        key.clone(),
        object_store::Attributes::new(),
    )
    .await
    .unwrap();
    up.write(&vec![2u8; super::upload::PART_SIZE])
        .await
        .unwrap();
    std::mem::forget(up);
    assert_eq!(journaled().await, 1);
    assert_eq!(body(&mem, "pre/client_lab/half").await, None);
    // Too young to be taken for abandoned.
    let n = super::upload::sweep(&store, &parts, &loc, std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!((n, journaled().await), (0, 1));
    // Old enough: aborted and forgotten.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let n = super::upload::sweep(&store, &parts, &loc, std::time::Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!((n, journaled().await), (1, 0));
    assert_eq!(body(&mem, "pre/client_lab/half").await, None);
}

/// Once the session's lease is lost (the fence raised), the writer changes nothing more:
/// a large file's upload is not completed, a small file is not put, the tail deletes
/// nothing, and the index another server's session may have written since is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_fence_stops_every_write() {
    let mem = Arc::new(InMemory::new());
    let ar = archive(&mem).await;
    let (out, _) = session(
        &ar,
        vec![
            F("old", b"1".to_vec(), 0o644),
            F("keep", b"k".to_vec(), 0o644),
        ],
        vec![],
        DeleteBudget::All,
    )
    .await;
    assert_eq!(stored(&out), 2);
    let index_key = "pre/.filesync/index/client_lab";
    let index_before = body(&mem, index_key).await.expect("the index was written");

    // A large file whose parts went up before the lease was lost, then a small one.
    let big = vec![3u8; (super::MULTIPART_MIN + 1) as usize];
    let (outcomes, applied) = fenced_session(
        &ar,
        vec![F("big", big, 0o644), F("small", b"new".to_vec(), 0o644)],
        vec![TailOp::Delete(rel("old")), TailOp::MakeDir(rel("made"))],
        DeleteBudget::All,
        Some(0),
    )
    .await;

    let mut rejected: Vec<String> = outcomes
        .iter()
        .map(|(p, o)| match o {
            Outcome::Rejected { reason, .. } if reason.contains("lease was lost") => p.to_string(),
            other => panic!("{p}: {other:?}"),
        })
        .collect();
    rejected.sort();
    assert_eq!(rejected, ["big", "small"]);
    assert_eq!(applied.deleted, 0, "{applied:?}");
    assert!(
        applied
            .errors
            .iter()
            .any(|e| e.contains("index was not written")),
        "{applied:?}"
    );
    assert_eq!(body(&mem, "pre/client_lab/big").await, None);
    assert_eq!(body(&mem, "pre/client_lab/small").await, None);
    assert_eq!(body(&mem, "pre/client_lab/old").await.unwrap(), b"1");
    assert_eq!(body(&mem, index_key).await.unwrap(), index_before);
    // The large file's upload was aborted, not left for the sweep.
    let uploads: Vec<_> = futures::TryStreamExt::try_collect(
        mem.list(Some(&ObjectPath::from("pre/.filesync/uploads"))),
    )
    .await
    .unwrap();
    assert!(uploads.is_empty(), "{uploads:?}");
}

/// The common mistakes in the `AWS_*` settings are named after a store's error; good
/// settings add nothing.
#[test]
fn settings_hints_name_the_common_mistakes() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    let good: &[(&str, &str)] = &[
        ("AWS_ENDPOINT", "http://127.0.0.1:3900"),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "GK1"),
        ("AWS_SECRET_ACCESS_KEY", "s"),
        ("AWS_REGION", "garage"),
    ];
    assert_eq!(super::settings_hint(env(good)), "");
    let no_http: &[(&str, &str)] = &[
        ("AWS_ENDPOINT_URL", "HTTP://h:1"),
        ("AWS_ACCESS_KEY_ID", "GK1"),
        ("AWS_SECRET_ACCESS_KEY", "s"),
        ("AWS_REGION", "garage"),
    ];
    let h = super::settings_hint(env(no_http));
    assert!(h.contains("AWS_ALLOW_HTTP=true"), "{h}");
    assert!(!h.contains("us-east-1") && !h.contains("metadata"), "{h}");
    let nothing: &[(&str, &str)] = &[("AWS_SECRET_ACCESS_KEY", "")];
    let h = super::settings_hint(env(nothing));
    assert!(
        h.contains("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY not set"),
        "{h}"
    );
    assert!(h.contains("us-east-1"), "{h}");
    assert!(
        !h.contains("AWS_ALLOW_HTTP"),
        "an https or AWS endpoint needs none: {h}"
    );
}

/// Errors from the store are cut to their S3 code and message, and the common ones say
/// what to check.
#[test]
fn store_errors_are_short_and_say_what_to_check() {
    let raw = "listing s3://b/x: Generic S3 error: Error performing list request: 403 \
               Forbidden: <?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>\
               SignatureDoesNotMatch</Code><Message>Invalid signature for &apos;x&apos;\
               </Message><Resource>/b</Resource><Region>garage</Region></Error> (retried)";
    let tidy = super::tidy_s3_error(raw);
    assert_eq!(
        tidy,
        "listing s3://b/x: Generic S3 error: Error performing list request: 403 Forbidden: \
         SignatureDoesNotMatch: Invalid signature for 'x' (retried)"
    );
    assert!(super::error_hint(&tidy)
        .unwrap()
        .contains("AWS_SECRET_ACCESS_KEY"));
    assert!(super::error_hint("<Code>NoSuchBucket</Code>")
        .unwrap()
        .contains("bucket does not exist"));
    assert!(super::error_hint("Forbidden: No such key: GK123")
        .unwrap()
        .contains("AWS_ACCESS_KEY_ID"));
    assert_eq!(super::error_hint("Connection refused"), None);
    // Text without an error document is left as it is.
    assert_eq!(
        super::tidy_s3_error("Connection refused"),
        "Connection refused"
    );
    assert_eq!(
        super::tidy_s3_error("a </Error> b <?xml"),
        "a </Error> b <?xml"
    );
    // No endpoint: AWS S3 itself was asked.
    let h = super::settings_hint(|k| {
        matches!(
            k,
            "AWS_ACCESS_KEY_ID" | "AWS_SECRET_ACCESS_KEY" | "AWS_REGION"
        )
        .then(|| "v".to_owned())
    });
    assert!(h.contains("no AWS_ENDPOINT"), "{h}");
}

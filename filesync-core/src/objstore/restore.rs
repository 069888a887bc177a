//! Kept versions in the object store: `filesync versions --store`, `filesync restore
//! --store`, and their retention.
//!
//! The model is the local store's ([`crate::versions`]): the live folder is the newest
//! state, and undoing the sessions after a time, newest first (remove what each added,
//! put back what each replaced), gives the folder as it was then. A session's replaced
//! objects are under `<stamp>/tree/`, copied there server-side before they were
//! overwritten or deleted; its `record` lists what it added and what it replaced. A
//! session whose server died before writing its record still has its `tree/`: its
//! objects are read with their metadata, so nothing replaced is ever out of reach.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::layout::{self, Entry, Location, Record};
use super::{get_if_any, head_entry, load_tree, req_err, Tree};
use crate::messages::EntryKind;
use crate::paths::{ClientId, RelPath};
use crate::planner::Held;
use crate::restore::{RestoreError, Restored};
use crate::time::MTime;
use crate::versions::{parse_stamp, stamp, wanted, Version};

/// One session's versions.
#[derive(Debug, Clone)]
pub struct Session {
    /// When it started.
    pub at: MTime,
    /// `.filesync/versions/client_<id>/<stamp>`.
    pub dir: ObjectPath,
    /// What it added and replaced.
    pub record: Record,
}

fn child(p: &ObjectPath, name: &str) -> ObjectPath {
    ObjectPath::from_iter(p.parts().chain(std::iter::once(name.into())))
}

/// The sessions of `id` with kept versions, oldest first, with their records (rebuilt
/// from `tree/` for a session that has none).
pub async fn sessions(
    store: &Arc<dyn ObjectStore>,
    loc: &Location,
    id: &ClientId,
) -> io::Result<Vec<Session>> {
    let base = loc.versions(id);
    let listed = store
        .list_with_delimiter(Some(&base))
        .await
        .map_err(req_err(format!("listing {base}")))?;
    let mut out = Vec::new();
    for dir in listed.common_prefixes {
        let Some(at) = dir.filename().and_then(parse_stamp) else {
            continue;
        };
        let record = match get_if_any(store, &child(&dir, "record"), "reading a record").await? {
            Some(b) => layout::decode_record(&b)
                .ok_or_else(|| io::Error::other(format!("{dir}/record is unreadable")))?,
            None => rebuilt_record(store, &dir).await?,
        };
        out.push(Session { at, dir, record });
    }
    out.sort_by_key(|s| s.at);
    Ok(out)
}

/// The record of a session that has only its `tree/`.
async fn rebuilt_record(store: &Arc<dyn ObjectStore>, dir: &ObjectPath) -> io::Result<Record> {
    let tree = child(dir, "tree");
    let metas: Vec<_> = store
        .list(Some(&tree))
        .try_collect()
        .await
        .map_err(req_err(format!("listing {tree}")))?;
    let mut record = Record::default();
    for m in metas {
        if let Some(path) = layout::rel_of(&tree, &m.location) {
            let held = head_entry(store, &m).await?;
            record.replaced.push(Entry {
                path,
                held,
                e_tag: m.e_tag,
            });
        }
    }
    Ok(record)
}

/// The time before which versions of `id` were purged, if any were.
async fn purged_before(
    store: &Arc<dyn ObjectStore>,
    loc: &Location,
    id: &ClientId,
) -> io::Result<Option<MTime>> {
    let key = child(&loc.versions(id), "purged-before");
    Ok(get_if_any(store, &key, "reading purged-before")
        .await?
        .and_then(|b| std::str::from_utf8(&b).ok().and_then(parse_stamp)))
}

/// Removes the session records of every client that started before `cutoff`, after
/// noting the cutoff for restores; returns how many went.
pub async fn purge(store: &Arc<dyn ObjectStore>, loc: &Location, cutoff: MTime) -> io::Result<u64> {
    let all = loc.all_versions();
    let clients = store
        .list_with_delimiter(Some(&all))
        .await
        .map_err(req_err(format!("listing {all}")))?;
    let mut removed = 0;
    for c in clients.common_prefixes {
        let Some(id) = c
            .filename()
            .and_then(|n| n.strip_prefix("client_"))
            .and_then(|n| ClientId::parse(n).ok())
        else {
            continue;
        };
        let dirs = store
            .list_with_delimiter(Some(&c))
            .await
            .map_err(req_err(format!("listing {c}")))?;
        let old: Vec<ObjectPath> = dirs
            .common_prefixes
            .into_iter()
            .filter(|d| {
                d.filename()
                    .and_then(parse_stamp)
                    .is_some_and(|t| t < cutoff)
            })
            .collect();
        if old.is_empty() {
            continue;
        }
        // The mark first: a restore must not reach a time whose records are half gone.
        store
            .put(
                &child(&loc.versions(&id), "purged-before"),
                stamp(cutoff).into_bytes().into(),
            )
            .await
            .map_err(req_err("noting purged-before"))?;
        for d in old {
            let keys = Box::pin(store.list(Some(&d)).map_ok(|m| m.location));
            store
                .delete_stream(keys)
                .try_collect::<Vec<_>>()
                .await
                .map_err(req_err(format!("purging {d}")))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Whether the store holds anything of client `id`: its index, an object in its folder,
/// or kept versions. At most three requests, each stopping at the first answer; for
/// `versions`, which must tell "no kept versions" from a mistyped id or prefix.
pub async fn holds(
    store: &Arc<dyn ObjectStore>,
    loc: &Location,
    id: &ClientId,
) -> io::Result<bool> {
    match store.head(&loc.index(id)).await {
        Ok(_) => return Ok(true),
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(req_err("reading the index")(e)),
    }
    for base in [loc.client(id), loc.versions(id)] {
        if let Some(first) = store.list(Some(&base)).next().await {
            first.map_err(req_err(format!("listing {base}")))?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// The kept versions of `id`, newest first; only those at or under one of `filter` if it
/// is not empty.
pub async fn list(
    store: &Arc<dyn ObjectStore>,
    loc: &Location,
    id: &ClientId,
    filter: &[RelPath],
) -> io::Result<Vec<Version>> {
    let mut out = Vec::new();
    for s in sessions(store, loc, id).await?.into_iter().rev() {
        let mut replaced = s.record.replaced;
        replaced.sort_by(|a, b| a.path.tree_cmp(&b.path));
        for e in replaced.into_iter().filter(|e| wanted(&e.path, filter)) {
            out.push(Version {
                kind: match e.held.kind {
                    EntryKind::Dir => "dir",
                    EntryKind::File => "file",
                    EntryKind::Symlink => "symlink",
                    EntryKind::Fifo => "fifo",
                    EntryKind::Keep => "other",
                },
                size: e.held.size,
                mtime: e.held.mtime,
                mode: e.held.mode,
                replaced_at: s.at,
                path: e.path,
            });
        }
    }
    Ok(out)
}

/// Where a restored entry's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// The live object (or a folder).
    Live,
    /// A version kept by the session in this folder (see [`layout::version_key`]).
    Kept(ObjectPath),
}

/// The entries of the archive at a time: `live` with `undo` (the sessions after that
/// time, newest first) undone, then filtered by `paths`. Pure.
pub(crate) fn state_at(
    live: &Tree,
    undo: &[Session],
    paths: &[RelPath],
) -> BTreeMap<RelPath, (Held, Source)> {
    let mut state: BTreeMap<RelPath, (Held, Source)> = live
        .iter()
        .map(|(p, e)| (p.clone(), (e.held.clone(), Source::Live)))
        .collect();
    let remove_subtree = |state: &mut BTreeMap<RelPath, (Held, Source)>, p: &RelPath| {
        state.retain(|k, _| k != p && !p.is_ancestor_of(k));
    };
    for s in undo {
        if s.record.whole_folder {
            state.clear();
        }
        for p in &s.record.added {
            remove_subtree(&mut state, p);
        }
        for e in &s.record.replaced {
            let source = if e.held.kind == EntryKind::Dir {
                Source::Live
            } else {
                Source::Kept(s.dir.clone())
            };
            state.insert(e.path.clone(), (e.held.clone(), source));
        }
    }
    state.retain(|p, _| wanted(p, paths));
    state
}

/// Writes into `dest` the folder of client `id` as the archive held it at `at` (`None`:
/// now); only `paths` (and what is under them) if not empty. `dest` must not exist or be
/// an empty folder.
pub async fn restore(
    store: &Arc<dyn ObjectStore>,
    loc: &Location,
    id: &ClientId,
    dest: &Path,
    at: Option<MTime>,
    paths: &[RelPath],
) -> Result<Restored, RestoreError> {
    let io_err = |what: &str| {
        let what = what.to_owned();
        move |source| RestoreError::Io { what, source }
    };
    match fs::read_dir(dest).map(|mut rd| rd.next().is_some()) {
        Ok(true) => {
            return Err(RestoreError::Destination(format!(
                "{} is not empty: restore into a new or empty folder",
                dest.display()
            )))
        }
        Ok(false) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(RestoreError::Destination(format!(
                "{}: {e}",
                dest.display()
            )))
        }
    }
    let live = load_tree(store, loc, id)
        .await
        .map_err(io_err("reading the archive"))?
        .tree;
    let all = sessions(store, loc, id)
        .await
        .map_err(io_err("reading the versions"))?;
    if live.is_empty() && all.is_empty() {
        return Err(RestoreError::UnknownClient {
            root: loc.url(),
            id: id.to_string(),
        });
    }
    let mut undo: Vec<Session> = match at {
        Some(t) => {
            if let Some(p) = purged_before(store, loc, id)
                .await
                .map_err(io_err("reading the versions"))?
            {
                if t < p {
                    return Err(RestoreError::Purged(stamp(p)));
                }
            }
            let undo: Vec<Session> = all.into_iter().filter(|s| s.at > t).collect();
            // The earliest session undone: if it made the whole folder, there was none
            // at `t` (as the local store says it).
            if let Some(first) = undo.first().filter(|s| s.record.whole_folder) {
                return Err(RestoreError::NotYet {
                    id: id.to_string(),
                    at: stamp(t),
                    created: stamp(first.at),
                });
            }
            undo
        }
        None => Vec::new(),
    };
    undo.reverse();
    let state = state_at(&live, &undo, paths);
    fs::create_dir_all(dest).map_err(io_err("making the destination"))?;
    let client = loc.client(id);
    let mut done = Restored {
        sessions_undone: undo.len() as u64,
        ..Restored::default()
    };
    let mut dirs: Vec<(PathBuf, MTime, u32)> = Vec::new();
    let mut files = Vec::new();
    for (rel, (held, source)) in &state {
        let to = rel.to_path(dest);
        let what = format!("restoring {}", to.display());
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(io_err(&what))?;
        }
        let t = filetime::FileTime::from_unix_time(held.mtime.secs, held.mtime.nanos);
        match held.kind {
            EntryKind::Dir => {
                fs::create_dir_all(&to).map_err(io_err(&what))?;
                dirs.push((to, held.mtime, held.mode));
                done.dirs += 1;
            }
            EntryKind::Symlink => {
                let Some(target) = &held.target else { continue };
                std::os::unix::fs::symlink(target.as_path(), &to).map_err(io_err(&what))?;
                filetime::set_symlink_file_times(&to, t, t).map_err(io_err(&what))?;
                done.links += 1;
            }
            EntryKind::Fifo => {
                crate::store::make_fifo(&to, held.mode, t).map_err(io_err(&what))?;
                done.fifos += 1;
            }
            // Never held: a manifest's marker only.
            EntryKind::Keep => {}
            EntryKind::File => {
                let key = match source {
                    Source::Live => layout::under(&client, rel)
                        .map_err(|e| io_err(&what)(io::Error::other(e)))?,
                    Source::Kept(session) => layout::version_key(session, rel),
                };
                let kept = matches!(source, Source::Kept(_));
                files.push((rel.clone(), key, to, held.mode, t, kept));
            }
        }
    }
    // Files are fetched many at once: one at a time, per-request latency (tens of ms
    // on a cluster) would make a restore of many small files take minutes.
    let fetched: Vec<Option<u64>> = futures::stream::iter(files)
        .map(|(rel, key, to, mode, t, kept)| async move {
            let what = format!("restoring {}", to.display());
            let n = match download(store, &key, &to).await {
                Ok(n) => n,
                // A version noted by a session whose copy found the object gone
                // already (another tool deleted it): nothing to put back.
                Err(e) if e.kind() == io::ErrorKind::NotFound && kept => {
                    tracing::warn!(path = %rel, "a kept version is missing from the store; left out");
                    let _ = fs::remove_file(&to);
                    return Ok(None);
                }
                Err(e) => return Err(io_err(&what)(e)),
            };
            fs::set_permissions(&to, fs::Permissions::from_mode(mode)).map_err(io_err(&what))?;
            filetime::set_file_times(&to, t, t).map_err(io_err(&what))?;
            Ok::<_, RestoreError>(Some(n))
        })
        .buffer_unordered(super::REQUESTS_IN_FLIGHT)
        .try_collect()
        .await?;
    for n in fetched.into_iter().flatten() {
        done.files += 1;
        done.bytes += n;
    }
    // Folder times and modes last, deepest first.
    for (d, mtime, mode) in dirs.iter().rev() {
        let what = format!("restoring {}", d.display());
        fs::set_permissions(d, fs::Permissions::from_mode(*mode)).map_err(io_err(&what))?;
        let t = filetime::FileTime::from_unix_time(mtime.secs, mtime.nanos);
        filetime::set_file_mtime(d, t).map_err(io_err(&what))?;
    }
    Ok(done)
}

/// Streams the object at `key` into a new file `to`, made durable; returns its size.
async fn download(store: &Arc<dyn ObjectStore>, key: &ObjectPath, to: &Path) -> io::Result<u64> {
    let mut out = OpenOptions::new().write(true).create_new(true).open(to)?;
    let mut body = store
        .get(key)
        .await
        .map_err(req_err(format!("reading {key}")))?
        .into_stream();
    let mut n = 0;
    while let Some(chunk) = body
        .try_next()
        .await
        .map_err(req_err(format!("reading {key}")))?
    {
        out.write_all(&chunk)?;
        n += chunk.len() as u64;
    }
    out.sync_all()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }

    fn entry(p: &str, kind: EntryKind, size: u64) -> Entry {
        Entry {
            path: rel(p),
            held: Held {
                kind,
                size,
                mtime: MTime::new(size as i64, 0).unwrap(),
                mode: 0o644,
                target: None,
            },
            e_tag: (kind != EntryKind::Dir).then(|| format!("e{size}")),
        }
    }

    fn tree(entries: &[Entry]) -> Tree {
        entries
            .iter()
            .map(|e| (e.path.clone(), e.clone()))
            .collect()
    }

    fn session(n: i64, record: Record) -> Session {
        Session {
            at: MTime::new(n, 0).unwrap(),
            dir: ObjectPath::from(format!("v/{n}")),
            record,
        }
    }

    #[test]
    fn undoing_sessions_puts_back_what_they_replaced_and_drops_what_they_added() {
        // Now: a/x (changed by session 2), b (added by session 2); session 2 deleted c/
        // and its file; session 1 made the folder.
        let live = tree(&[
            entry("a", EntryKind::Dir, 0),
            entry("a/x", EntryKind::File, 20),
            entry("b", EntryKind::File, 21),
        ]);
        let s1 = session(
            1,
            Record {
                whole_folder: true,
                ..Record::default()
            },
        );
        let s2 = session(
            2,
            Record {
                whole_folder: false,
                added: vec![rel("b")],
                replaced: vec![
                    entry("a/x", EntryKind::File, 10),
                    entry("c", EntryKind::Dir, 0),
                    entry("c/y", EntryKind::File, 11),
                ],
            },
        );
        let now = state_at(&live, &[], &[]);
        assert_eq!(now.len(), 3);
        let before_2 = state_at(&live, std::slice::from_ref(&s2), &[]);
        let names: Vec<String> = before_2.keys().map(|p| p.to_string()).collect();
        assert_eq!(names, ["a", "a/x", "c", "c/y"]);
        assert_eq!(before_2[&rel("a/x")].0.size, 10);
        assert_eq!(
            before_2[&rel("a/x")].1,
            Source::Kept(ObjectPath::from("v/2"))
        );
        assert_eq!(before_2[&rel("a")].1, Source::Live);
        // Before the first session: nothing.
        assert!(state_at(&live, &[s2.clone(), s1], &[]).is_empty());
        // Only some paths.
        let only_c = state_at(&live, &[s2], &[rel("c")]);
        assert_eq!(only_c.len(), 2);
    }

    #[test]
    fn a_folder_replaced_by_a_file_comes_back_as_a_folder() {
        let live = tree(&[entry("d", EntryKind::File, 5)]);
        let s = session(
            3,
            Record {
                whole_folder: false,
                added: vec![rel("d")],
                replaced: vec![
                    entry("d", EntryKind::Dir, 0),
                    entry("d/in", EntryKind::File, 4),
                ],
            },
        );
        let before = state_at(&live, &[s], &[]);
        assert_eq!(before[&rel("d")].0.kind, EntryKind::Dir);
        assert_eq!(before[&rel("d/in")].0.size, 4);
    }
}

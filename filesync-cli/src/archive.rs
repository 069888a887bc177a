//! `filesync versions` and `filesync restore`: reading a server root's archive, on the
//! server, with no server process needed.

use std::path::Path;
use std::sync::Arc;

use filesync_core::objstore::{self, layout::Location, ObjectArchive};
use objstore::object_store::ObjectStore;

use filesync_core::paths::{ClientId, RelPath};
use filesync_core::restore::{self, RestoreError};
use filesync_core::time::MTime;
use filesync_core::versions;

use crate::cli::{RestoreArgs, VersionsArgs};
use crate::text::{errln, outln};
use crate::{exit, text};

/// Parses the id, the paths and the `--store` URL if any, or says why not (exit 2, a
/// usage error).
fn parse(
    id: &str,
    paths: &[std::path::PathBuf],
    store: Option<&str>,
) -> Result<(ClientId, Vec<RelPath>), String> {
    if let Some(url) = store {
        Location::parse(url).map_err(|e| format!("--store: {e}"))?;
    }
    let id = ClientId::parse(id).map_err(|e| e.to_string())?;
    let paths = paths
        .iter()
        .map(|p| RelPath::from_local(p).map_err(|e| format!("{}: {e}", p.display())))
        .collect::<Result<_, _>>()?;
    Ok((id, paths))
}

fn now() -> MTime {
    MTime::from_system(std::time::SystemTime::now()).unwrap_or(MTime::EPOCH)
}

/// Local time, for people.
fn local(t: MTime) -> String {
    let dt: chrono::DateTime<chrono::Local> = t.to_system().into();
    dt.format("%Y-%m-%d %H:%M:%S%.3f %z").to_string()
}

pub(crate) fn versions(args: VersionsArgs, json: bool) -> i32 {
    let (id, paths) = match parse(&args.id, &args.paths, args.store.as_deref()) {
        Ok(v) => v,
        Err(e) => {
            errln!("Error: {e}");
            return exit::USAGE;
        }
    };
    if args.store.is_none() {
        // As `restore` does: a mistyped root or id is an error, not "no kept versions".
        if let Err((e, code)) = known_client(&args.root, &id) {
            errln!("Error: {e}");
            return code;
        }
    }
    let asked: Vec<String> = paths.iter().map(ToString::to_string).collect();
    let listed = match &args.store {
        None => versions::list(&args.root, &id, &paths)
            .map_err(|e| format!("reading the versions under {}: {e}", args.root.display())),
        Some(url) => {
            let found = on_store(url, |store, loc| {
                let id = id.clone();
                async move {
                    let list = objstore::restore::list(&store, &loc, &id, &paths)
                        .await
                        .map_err(|e| format!("reading the versions in {}: {e}", loc.url()))?;
                    // As on a local root: a mistyped id or prefix is an error, not "no
                    // kept versions".
                    let held = !list.is_empty()
                        || objstore::restore::holds(&store, &loc, &id)
                            .await
                            .map_err(|e| format!("reading {}: {e}", loc.url()))?;
                    Ok(held.then_some(list).ok_or(RestoreError::UnknownClient {
                        root: loc.url(),
                        id: id.to_string(),
                    }))
                }
            });
            match found {
                Ok(Err(unknown)) => {
                    errln!("Error: {unknown}");
                    return exit::REFUSED;
                }
                Ok(Ok(list)) => Ok(list),
                Err(e) => Err(e),
            }
        }
    };
    let list = match listed {
        Ok(l) => l,
        Err(e) => {
            errln!("Error: {e}");
            return exit::LOCAL;
        }
    };
    if json {
        let v: Vec<_> = list
            .iter()
            .map(|v| {
                serde_json::json!({
                    "path": v.path,
                    "kind": v.kind,
                    "size": v.size,
                    "mtime": versions::stamp(v.mtime),
                    "mode": format!("{:04o}", v.mode),
                    "replaced_at": versions::stamp(v.replaced_at),
                })
            })
            .collect();
        outln!("{}", serde_json::Value::Array(v));
    } else if list.is_empty() && !asked.is_empty() {
        outln!("no kept versions for client {id} at {}", asked.join(", "));
    } else if list.is_empty() {
        outln!("no kept versions for client {id}");
    } else {
        outln!(
            "{:<29}  {:>12}  {:<29}  {:<7}  PATH",
            "REPLACED AT",
            "SIZE",
            "MTIME",
            "KIND"
        );
        for v in &list {
            outln!(
                "{:<29}  {:>12}  {:<29}  {:<7}  {}",
                local(v.replaced_at),
                v.size,
                local(v.mtime),
                v.kind,
                v.path
            );
        }
    }
    exit::OK
}

/// Whether the server root `root` exists and holds client `id` (its folder or kept
/// versions); otherwise the error to print and the exit code: 1 for a root that cannot be
/// read, 5 for a client it does not hold (as `restore` says it).
fn known_client(root: &Path, id: &ClientId) -> Result<(), (String, i32)> {
    match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err((
                format!("the server root {} is not a folder", root.display()),
                exit::LOCAL,
            ))
        }
        Err(e) => {
            return Err((
                format!(
                    "reading the server root {} (give --root): {e}",
                    root.display()
                ),
                exit::LOCAL,
            ))
        }
    }
    match restore::held_sessions(root, id) {
        Ok(_) => Ok(()),
        Err(e @ RestoreError::UnknownClient { .. }) => {
            Err((format!("{e}{}", root_hint(root)), exit::REFUSED))
        }
        Err(e) => Err((e.to_string(), exit::LOCAL)),
    }
}

/// Said after "holds nothing for client" of a folder that is no server root at all (a
/// mistyped `--root` that exists), empty otherwise.
fn root_hint(root: &Path) -> &'static str {
    if root.join(".filesync").is_dir() {
        ""
    } else {
        " (it has no .filesync folder: is it the server's --root?)"
    }
}

pub(crate) fn restore(args: RestoreArgs, json: bool) -> i32 {
    let (id, paths) = match parse(&args.id, &args.paths, args.store.as_deref()) {
        Ok(v) => v,
        Err(e) => {
            errln!("Error: {e}");
            return exit::USAGE;
        }
    };
    let at = match args
        .at
        .as_deref()
        .map(|s| versions::parse_at(s, now(), &chrono::Local))
    {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            errln!("Error: --at: {e}");
            return exit::USAGE;
        }
    };
    let existed = args.to.exists();
    let asked_for = paths.clone();
    let restored = match &args.store {
        None => restore::restore(&args.root, &id, &args.to, at, &paths),
        Some(url) => {
            let to = args.to.clone();
            match on_store(url, |store, loc| async move {
                Ok(objstore::restore::restore(&store, &loc, &id, &to, at, &paths).await)
            }) {
                Ok(r) => r,
                Err(e) => {
                    errln!("Error: {e}");
                    return exit::LOCAL;
                }
            }
        }
    };
    let id = ClientId::parse(&args.id).expect("parsed above");
    match restored {
        // Paths asked for that the archive did not hold then: an error, as a mistyped
        // path must not look like a restore of nothing.
        Ok(r) if !asked_for.is_empty() && r.files + r.dirs + r.links + r.fifos == 0 => {
            if !existed {
                let _ = std::fs::remove_dir(&args.to);
            }
            let list: Vec<String> = asked_for.iter().map(ToString::to_string).collect();
            errln!(
                "Error: client {id}'s archive held nothing at {} {}",
                list.join(", "),
                at.map_or("now".to_string(), |t| format!("at {}", local(t)))
            );
            exit::REFUSED
        }
        Ok(r) => {
            if json {
                outln!(
                    "{}",
                    serde_json::json!({
                        "to": args.to.display().to_string(),
                        "at": at.map(versions::stamp),
                        "files": r.files,
                        "bytes": r.bytes,
                        "dirs": r.dirs,
                        "symlinks": r.links,
                        "fifos": r.fifos,
                        "sessions_undone": r.sessions_undone,
                    })
                );
            } else {
                outln!(
                    "restored client {id} {} into {}: {} ({} bytes), {}, {}, {}",
                    at.map_or("as it is now".to_string(), |t| format!(
                        "as it was at {}",
                        local(t)
                    )),
                    display(&args.to),
                    text::count(r.files, "file", "files"),
                    r.bytes,
                    text::count(r.dirs, "folder", "folders"),
                    text::count(r.links, "symlink", "symlinks"),
                    text::count(r.fifos, "FIFO", "FIFOs"),
                );
            }
            exit::OK
        }
        Err(
            e @ (RestoreError::Destination(_)
            | RestoreError::Purged(_)
            | RestoreError::NotYet { .. }
            | RestoreError::UnknownClient { .. }),
        ) => {
            let hint = match (&e, &args.store) {
                (RestoreError::UnknownClient { .. }, None) => root_hint(&args.root),
                _ => "",
            };
            errln!("Error: {e}{hint}");
            exit::REFUSED
        }
        Err(e) => {
            errln!("Error: {e}");
            exit::LOCAL
        }
    }
}

/// Runs `f` on the archive in the object store at `url` (from `main`'s runtime, whose
/// worker this blocks).
fn on_store<T, F>(
    url: &str,
    f: impl FnOnce(Arc<dyn ObjectStore>, Location) -> F,
) -> Result<T, String>
where
    F: std::future::Future<Output = Result<T, String>>,
{
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(async {
            let archive = ObjectArchive::open(url)
                .await
                .map_err(|e| format!("opening the store {url}: {e}"))?;
            f(Arc::clone(archive.store()), archive.location().clone()).await
        })
    })
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

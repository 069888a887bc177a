//! The original dialect's session rules, as pure functions: listings converted both ways,
//! the plan for an original client, and the limits of an original server.
//!
//! The original has no typestate worth the name: a fixed sequence with no optional steps
//! (status, listing, tasks, files, next sync), driven linearly in [`crate::net`]. What
//! needs care is here: time zones, the mtime rule, and what an original peer can take.

use chrono::TimeZone;

use crate::error::ProtocolError;
use crate::messages::seed::{ClientFilesInfo, FileHeader, FileInfo};
use crate::messages::{Entry, EntryKind};
use crate::paths::{ClientId, RelPath};
use crate::planner::{Held, Planner, Rule, Tail};
use crate::time::{MTime, SeedTime};

/// The original server reads `CLIENT_FILES_INFO` with one `recv` of at most this many bytes
/// and fails on anything longer.
pub const SEED_SERVER_MAX_LISTING: usize = 8192;

/// An original client's listing as manifest entries (files only; sizes unknown, so 0),
/// reading its naive timestamps in `tz`.
pub fn entries_from_listing<Tz: TimeZone>(info: &ClientFilesInfo, tz: &Tz) -> Vec<Entry> {
    info.files
        .iter()
        .map(|f| Entry {
            path: f.path.clone(),
            kind: EntryKind::File,
            size: 0,
            mtime: f.last_mod.to_mtime(tz),
            // The original carries no modes: the server's are left as they are.
            mode: 0,
            target: None,
        })
        .collect()
}

/// Our listing in the original's shape: files only, naive local timestamps in `tz`; and
/// the entries it cannot carry, with why. The original's names are JSON strings and it
/// knows only files, so a name that is not UTF-8, a symlink or a FIFO cannot reach its
/// server: the caller counts each as a failure. Directories are implied by the files'
/// paths, and modes are not kept, as the original keeps none.
pub fn listing_from_entries<Tz: TimeZone>(
    client_id: Option<ClientId>,
    entries: &[Entry],
    tz: &Tz,
) -> (ClientFilesInfo, Vec<(RelPath, String)>) {
    let mut files = Vec::new();
    let mut cannot = Vec::new();
    for e in entries {
        let why = match e.kind {
            EntryKind::Dir | EntryKind::Keep => continue,
            EntryKind::Symlink => "a symlink, which the original FileSync cannot store",
            EntryKind::Fifo => "a FIFO, which the original FileSync cannot store",
            EntryKind::File if e.path.to_str().is_none() => {
                "a name that is not UTF-8, which the original FileSync cannot carry"
            }
            EntryKind::File => {
                files.push(FileInfo {
                    name: String::from_utf8_lossy(e.path.file_name()).into_owned(),
                    path: e.path.clone(),
                    last_mod: SeedTime::from_mtime(e.mtime, tz),
                });
                continue;
            }
        };
        cannot.push((e.path.clone(), why.to_owned()));
    }
    (ClientFilesInfo { client_id, files }, cannot)
}

/// A file header in the original's shape (for a file [`listing_from_entries`] carried).
pub fn header<Tz: TimeZone>(e: &Entry, tz: &Tz) -> FileHeader {
    FileHeader {
        name: String::from_utf8_lossy(e.path.file_name()).into_owned(),
        path: e.path.clone(),
        size: e.size,
        last_mod: SeedTime::from_mtime(e.mtime, tz),
    }
}

/// The plan for an original client: files to request (listing order), the tail, and the
/// size of the archive (for the deletion caps).
///
/// Differences from the original server, each on purpose:
/// - a file is requested when its mtime *differs* (to the microsecond, or to what the
///   server's filesystem keeps if coarser), not only when the client's is later, so a
///   file restored to an older version is stored;
/// - only files are deleted, as the original does (it lists no directories, so it cannot
///   say which empty ones it still has);
/// - an empty listing never empties an archive that holds files: an unmounted disk on an
///   original client must not wipe its copy. The plan then deletes nothing.
pub fn plan(
    entries: &[Entry],
    held: impl IntoIterator<Item = (RelPath, Held)>,
    mtime_window: std::time::Duration,
) -> Result<SeedPlan, ProtocolError> {
    // An original listing is unordered and small (one 8 KiB read): sort it whole. `held`
    // must come in tree order, as the store's index does.
    let mut entries = entries.to_vec();
    entries.sort_by(|a, b| a.path.tree_cmp(&b.path));
    let mut ops = Vec::new();
    let mut planner = Planner::new(Rule::Micros)
        .files_only()
        .mtime_window(mtime_window);
    let mut index = held.into_iter();
    let send = planner.batch(&entries, &mut index, &mut |op| ops.push(op))?;
    let finished = planner.finish(&mut index, true, &mut |op| ops.push(op))?;
    let held = finished.map_or(0, |f| f.held);
    let mut tail = Tail::from_ops(ops);
    tail.make_dirs.clear();
    tail.dir_attrs.clear();
    if finished.is_err() {
        tracing::warn!(
            "an original client listed no files; keeping its archive instead of emptying it"
        );
        tail.delete.clear();
    }
    Ok(SeedPlan { send, tail, held })
}

/// The plan for an original client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedPlan {
    /// Files to request, in listing order.
    pub send: Vec<RelPath>,
    /// What to do once they are stored (file deletions only).
    pub tail: Tail,
    /// Entries the server held for the client before the session.
    pub held: u64,
}

/// The delay until a naive local `time` read in `tz`, from `now`; zero if it has passed.
pub fn delay_until<Tz: TimeZone>(time: SeedTime, now: MTime, tz: &Tz) -> std::time::Duration {
    let at = time.to_mtime(tz);
    let ns = (i128::from(at.secs) - i128::from(now.secs)) * 1_000_000_000 + i128::from(at.nanos)
        - i128::from(now.nanos);
    std::time::Duration::from_nanos(u64::try_from(ns.max(0)).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;

    /// An exact mtime comparison.
    const NS: std::time::Duration = std::time::Duration::from_nanos(1);

    fn held(p: &str, kind: EntryKind, secs: i64) -> (RelPath, Held) {
        (
            RelPath::parse(p).unwrap(),
            Held {
                kind,
                size: 9,
                mtime: MTime::new(secs, 0).unwrap(),
                mode: 0o644,
                target: None,
            },
        )
    }

    #[test]
    fn listing_round_trips_through_a_zone() {
        let tz = FixedOffset::east_opt(5 * 3600 + 1800).unwrap();
        let entries = vec![
            Entry {
                path: RelPath::parse("d/x.txt").unwrap(),
                kind: EntryKind::File,
                size: 3,
                mtime: MTime::new(1_700_000_000, 123_456_789).unwrap(),
                mode: 0o600,
                target: None,
            },
            Entry {
                path: RelPath::parse("d").unwrap(),
                kind: EntryKind::Dir,
                size: 0,
                mtime: MTime::new(0, 0).unwrap(),
                mode: 0o755,
                target: None,
            },
            Entry {
                path: RelPath::from_bytes(b"d/caf\xe9").unwrap(),
                kind: EntryKind::File,
                size: 3,
                mtime: MTime::new(0, 0).unwrap(),
                mode: 0o644,
                target: None,
            },
            Entry {
                path: RelPath::parse("d/link").unwrap(),
                kind: EntryKind::Symlink,
                size: 0,
                mtime: MTime::new(0, 0).unwrap(),
                mode: 0o777,
                target: Some(crate::paths::LinkTarget::from_bytes(b"x").unwrap()),
            },
        ];
        let (info, cannot) = listing_from_entries(None, &entries, &tz);
        assert_eq!(info.files.len(), 1);
        let cannot: Vec<_> = cannot.iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(
            cannot,
            ["d/caf\\xE9", "d/link"],
            "failures, not silent skips"
        );
        assert_eq!(info.files[0].name, "x.txt");
        let back = entries_from_listing(&info, &tz);
        assert_eq!(
            back[0].mtime,
            MTime::new(1_700_000_000, 123_456_000).unwrap()
        );
    }

    #[test]
    fn plan_keeps_folders_and_refuses_to_empty() {
        let entries = entries_from_listing(
            &ClientFilesInfo {
                client_id: None,
                files: vec![],
            },
            &chrono::Utc,
        );
        let SeedPlan { send, tail, .. } =
            plan(&entries, vec![held("a", EntryKind::File, 1)], NS).unwrap();
        assert!(send.is_empty());
        assert!(tail.delete.is_empty(), "an empty listing empties nothing");

        let e = vec![Entry {
            path: RelPath::parse("keep").unwrap(),
            kind: EntryKind::File,
            size: 0,
            mtime: MTime::new(5, 0).unwrap(),
            mode: 0,
            target: None,
        }];
        let SeedPlan { send, tail, .. } = plan(
            &e,
            // The index comes in tree order.
            vec![
                held("dir", EntryKind::Dir, 0),
                held("dir/f", EntryKind::File, 1),
                held("keep", EntryKind::File, 9),
                held("old", EntryKind::File, 1),
            ],
            NS,
        )
        .unwrap();
        assert_eq!(
            send,
            vec![RelPath::parse("keep").unwrap()],
            "older mtime is sent"
        );
        assert_eq!(
            tail.delete,
            vec![
                RelPath::parse("dir/f").unwrap(),
                RelPath::parse("old").unwrap()
            ],
            "files are deleted one by one; folders are left"
        );
    }
}

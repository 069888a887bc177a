//! Kept versions: what a sync replaced or deleted on the server, moved aside instead of
//! destroyed, so that a client's mistake (a wrong command, a cloned instrument with
//! another machine's id, ransomware encrypting the folder) never destroys the archive.
//!
//! # Layout
//!
//! Each session that replaces or deletes anything, or adds something new, has a record
//! under `<root>/.filesync/versions/client_<id>/<stamp>/`, where `<stamp>` is the time the
//! session started ([`stamp`]; fixed width, so names sort by time):
//!
//! - `tree/<path>`: every entry the session replaced or deleted, as it was: a file keeps
//!   its content, mtime and mode (it is the same inode, hard-linked or renamed here, never
//!   copied), a deleted folder keeps its whole subtree, symlinks and FIFOs stay what they
//!   were.
//! - `replaced`: the paths of what `tree/` holds, as entries in their own right (the
//!   folders leading to them in `tree/` are only scaffolding).
//! - `added`: the paths the session created where nothing stood before, so that a restore
//!   to an earlier time can leave them out. A zero-length record means the session
//!   created the client folder itself (its first sync): everything it placed was new.
//!
//! Both logs hold records of a little-endian `u32` length and the path's bytes.
//!
//! This is the reverse-increment model of rdiff-backup: the live folder is the newest
//! state, and undoing the sessions after a time, newest first (remove what each added,
//! put back what each replaced), gives the folder as it was then. A session's "replaced
//! at" time is its start.
//!
//! # Crash safety
//!
//! A replaced file is hard-linked into `tree/` before the new one is renamed over it, so
//! the live path always holds the old or the new version; a deleted entry is renamed into
//! `tree/` in one step. Everything is on the root's filesystem and made durable with the
//! session's last `syncfs`. A crash at any moment leaves every file either in place (old
//! or new) or in `tree/`, never lost.
//!
//! # Retention
//!
//! Session records older than the retention (`serve --keep-versions`, default 30 days)
//! are purged whole; `purged-before` then records the oldest time a restore can still
//! reach.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};

use crate::messages::MODE_BITS;
use crate::paths::{ClientId, RelPath};
use crate::time::MTime;

/// `<root>/.filesync/versions`.
pub fn versions_root(root: &Path) -> PathBuf {
    root.join(".filesync").join("versions")
}

/// `<root>/.filesync/versions/client_<id>`.
pub fn client_versions(root: &Path, id: &ClientId) -> PathBuf {
    versions_root(root).join(id.folder_name())
}

/// The time before which kept versions are past a retention of `keep`: now less `keep`
/// (the epoch if that is earlier).
pub fn retention_cutoff(keep: std::time::Duration) -> MTime {
    let now = MTime::from_system(std::time::SystemTime::now()).unwrap_or(MTime::EPOCH);
    MTime::new(
        now.secs
            .saturating_sub(i64::try_from(keep.as_secs()).unwrap_or(i64::MAX)),
        now.nanos,
    )
    .unwrap_or(MTime::EPOCH)
}

/// The name of a session record: its start as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` (UTC, fixed
/// width, so that names sort by time).
pub fn stamp(t: MTime) -> String {
    let dt: DateTime<Utc> = t.to_system().into();
    dt.format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string()
}

/// The time a [`stamp`] names; `None` for any other name.
pub fn parse_stamp(s: &str) -> Option<MTime> {
    if s.len() != 30 || !s.ends_with('Z') {
        return None;
    }
    let dt = NaiveDateTime::parse_from_str(&s[..29], "%Y-%m-%dT%H:%M:%S%.9f").ok()?;
    MTime::from_system(Utc.from_utc_datetime(&dt).into())
}

/// Reads a `--at` time: RFC 3339 (`2026-11-30T09:00:00+01:00`), a local date and time
/// (`2026-11-30 09:00` or `2026-11-30 09:00:30`), or an age before `now` (`90m`, `2h`,
/// `3d`, `1w`).
///
/// A written time stands for the whole of its last digit's unit, and is read as its last
/// nanosecond: `11:52:22.045` as 11:52:22.045999999, `11:52:22` as 11:52:22.999999999,
/// `11:52` as 11:52:59.999999999. `filesync versions` prints times to the millisecond,
/// cut, not rounded, so a time pasted back from it is then at or just after the change
/// it names (a change at 11:52:22.045251 is printed .045, and `--at` of that shows it).
pub fn parse_at<Tz: TimeZone>(s: &str, now: MTime, tz: &Tz) -> Result<MTime, String> {
    let s = s.trim();
    let out_of_range = || format!("{s:?} is out of range");
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        let t = MTime::from_system(dt.into()).ok_or_else(out_of_range)?;
        return end_of_written_unit(t, s, true).ok_or_else(out_of_range);
    }
    // As `filesync versions` prints a time (`2026-11-30 11:52:22.045 +0000`), so that
    // one can be pasted back.
    for f in ["%Y-%m-%d %H:%M:%S%.f %z", "%Y-%m-%d %H:%M:%S %z"] {
        if let Ok(dt) = DateTime::parse_from_str(s, f) {
            let t = MTime::from_system(dt.into()).ok_or_else(out_of_range)?;
            return end_of_written_unit(t, s, true).ok_or_else(out_of_range);
        }
    }
    for (f, seconds) in [
        ("%Y-%m-%d %H:%M:%S%.f", true),
        ("%Y-%m-%d %H:%M:%S", true),
        ("%Y-%m-%d %H:%M", false),
        ("%Y-%m-%dT%H:%M:%S%.f", true),
        ("%Y-%m-%dT%H:%M:%S", true),
        ("%Y-%m-%dT%H:%M", false),
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(s, f) {
            let local = tz
                .from_local_datetime(&naive)
                .earliest()
                .ok_or_else(|| format!("{s:?} does not exist in the local time zone"))?;
            let t =
                MTime::from_system(local.with_timezone(&Utc).into()).ok_or_else(out_of_range)?;
            return end_of_written_unit(t, s, seconds).ok_or_else(out_of_range);
        }
    }
    if let Ok(age) = humantime::parse_duration(s) {
        let ns = i128::from(now.secs) * 1_000_000_000 + i128::from(now.nanos)
            - i128::try_from(age.as_nanos()).unwrap_or(i128::MAX / 2);
        return MTime::new(
            i64::try_from(ns.div_euclid(1_000_000_000)).map_err(|e| e.to_string())?,
            u32::try_from(ns.rem_euclid(1_000_000_000)).map_err(|e| e.to_string())?,
        )
        .ok_or_else(|| format!("{s:?} is out of range"));
    }
    Err(format!(
        "cannot read the time {s:?}: use RFC 3339 (2026-11-30T09:00:00Z), a local \
         `YYYY-MM-DD HH:MM[:SS]`, or an age (2h, 3d)"
    ))
}

/// `t`, read from `written`, moved to the last nanosecond of the unit of its last digit:
/// of the minute if `seconds` were not written, else of the second, or of the fraction's
/// last digit (`.045` → +999,999 ns). `None` past the end of time.
fn end_of_written_unit(t: MTime, written: &str, seconds: bool) -> Option<MTime> {
    let unit_ns: u64 = if !seconds {
        60_000_000_000
    } else {
        let digits = written.split_once('.').map_or(0, |(_, frac)| {
            frac.bytes().take_while(u8::is_ascii_digit).count()
        });
        10u64.pow(9 - digits.min(9) as u32)
    };
    let ns = u64::from(t.nanos) + unit_ns - 1;
    MTime::new(
        t.secs
            .checked_add(i64::try_from(ns / 1_000_000_000).ok()?)?,
        (ns % 1_000_000_000) as u32,
    )
}

/// The record one session writes as it replaces, deletes and adds entries. Created on
/// first use, so a session that changes nothing leaves no record.
#[derive(Debug)]
pub struct SessionRecord {
    /// `<root>/.filesync/versions/client_<id>`.
    base: PathBuf,
    at: MTime,
    /// The record's folder, once made.
    dir: Option<PathBuf>,
    added: Option<BufWriter<File>>,
    replaced: Option<BufWriter<File>>,
    /// The client folder did not exist when the session started: everything it places
    /// is new, which one record says.
    whole: bool,
    /// The whole-folder record is written.
    whole_noted: bool,
}

impl SessionRecord {
    /// A record for a session of the client whose versions live in `base`, started at
    /// `at`; `new_folder` when the client folder does not exist yet.
    pub fn new(base: PathBuf, at: MTime, new_folder: bool) -> Self {
        SessionRecord {
            base,
            at,
            dir: None,
            added: None,
            replaced: None,
            whole: new_folder,
            whole_noted: false,
        }
    }

    fn dir(&mut self) -> io::Result<&Path> {
        if self.dir.is_none() {
            fs::create_dir_all(&self.base)?;
            // Two sessions of one client never run at once (the lease), but a clock may
            // step back: never reuse a record.
            let mut at = self.at;
            let dir = loop {
                let d = self.base.join(stamp(at));
                match fs::create_dir(&d) {
                    Ok(()) => break d,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        at = at.plus(std::time::Duration::from_nanos(1));
                    }
                    Err(e) => return Err(e),
                }
            };
            self.dir = Some(dir);
        }
        Ok(self.dir.as_deref().expect("just made"))
    }

    /// Where the version of `rel` goes (`<record>/tree/<rel>`), its parents made. Fails
    /// if something already stands there: a path is replaced at most once per session.
    pub fn version_path(&mut self, rel: &RelPath) -> io::Result<PathBuf> {
        let tree = self.dir()?.join("tree");
        let p = rel.to_path(&tree);
        // The folders leading to it are made one by one, never through a symlink: an
        // entry kept earlier in this session may be a symlink (to anywhere) standing
        // where a later path needs a folder.
        let mut d = tree.clone();
        for c in std::iter::once(None).chain(rel.ancestors().map(Some)) {
            if let Some(a) = c {
                d = a.to_path(&tree);
            }
            match fs::symlink_metadata(&d) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!(
                            "{rel} cannot be kept under an entry kept earlier that is not a folder"
                        ),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&d)?,
                Err(e) => return Err(e),
            }
        }
        if fs::symlink_metadata(&p).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{rel} was already versioned in this session"),
            ));
        }
        if self.replaced.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir()?.join("replaced"))?;
            self.replaced = Some(BufWriter::new(f));
        }
        crate::records::write(self.replaced.as_mut().expect("just opened"), rel.as_bytes())?;
        Ok(p)
    }

    /// Notes that the session created `rel` where nothing stood.
    pub fn note_added(&mut self, rel: &RelPath) -> io::Result<()> {
        if self.whole && self.whole_noted {
            return Ok(());
        }
        if self.added.is_none() {
            let path = self.dir()?.join("added");
            let f = OpenOptions::new().create(true).append(true).open(path)?;
            self.added = Some(BufWriter::new(f));
        }
        let out = self.added.as_mut().expect("just opened");
        if self.whole {
            self.whole_noted = true;
            return crate::records::write(out, b"");
        }
        crate::records::write(out, rel.as_bytes())
    }

    /// Writes out what is buffered (before the session's last sync makes it durable).
    pub fn flush(&mut self) -> io::Result<()> {
        for log in [&mut self.added, &mut self.replaced].into_iter().flatten() {
            log.flush()?;
        }
        Ok(())
    }
}

/// Reads a log of records; `None` at a zero-length record (the whole folder). A record
/// cut short by a crash ends the list; a missing log is empty.
fn read_log(path: &Path) -> io::Result<Option<Vec<RelPath>>> {
    let mut input = match File::open(path) {
        Ok(f) => io::BufReader::new(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Some(Vec::new())),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    loop {
        match crate::records::read(&mut input) {
            Ok(Some(b)) if b.is_empty() => return Ok(None),
            Ok(Some(b)) => {
                if let Ok(p) = RelPath::from_bytes(&b) {
                    out.push(p);
                }
            }
            Ok(None) => break,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
    }
    Ok(Some(out))
}

/// One session record on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// When the session started: the "replaced at" time of its versions.
    pub at: MTime,
    /// Its folder.
    pub dir: PathBuf,
}

impl Session {
    /// `<record>/tree`.
    pub fn tree(&self) -> PathBuf {
        self.dir.join("tree")
    }

    /// What the session added: `Ok(None)` if it created the whole client folder,
    /// otherwise the paths.
    pub fn added(&self) -> io::Result<Option<Vec<RelPath>>> {
        read_log(&self.dir.join("added"))
    }

    /// The paths whose versions `tree/` holds.
    pub fn replaced(&self) -> io::Result<Vec<RelPath>> {
        Ok(read_log(&self.dir.join("replaced"))?.unwrap_or_default())
    }
}

/// The session records of a client, oldest first. Names that are not stamps are ignored.
pub fn sessions(root: &Path, id: &ClientId) -> io::Result<Vec<Session>> {
    let base = client_versions(root, id);
    let mut out = Vec::new();
    let rd = match fs::read_dir(&base) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in rd {
        let e = e?;
        if let Some(at) = e.file_name().to_str().and_then(parse_stamp) {
            if e.file_type()?.is_dir() {
                out.push(Session { at, dir: e.path() });
            }
        }
    }
    out.sort_by_key(|s| s.at);
    Ok(out)
}

/// The time before which a client's records were purged, if any were.
pub fn purged_before(root: &Path, id: &ClientId) -> io::Result<Option<MTime>> {
    match fs::read_to_string(client_versions(root, id).join("purged-before")) {
        Ok(s) => Ok(parse_stamp(s.trim())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes the session records of every client that started before `cutoff`, and notes
/// the cutoff for restores. Returns how many records were removed.
pub fn purge(root: &Path, cutoff: MTime) -> io::Result<u64> {
    let mut removed = 0;
    let rd = match fs::read_dir(versions_root(root)) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for e in rd {
        let e = e?;
        let Some(id) = e
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("client_"))
            .and_then(|n| ClientId::parse(n).ok())
        else {
            continue;
        };
        let old: Vec<_> = sessions(root, &id)?
            .into_iter()
            .filter(|s| s.at < cutoff)
            .collect();
        if old.is_empty() {
            continue;
        }
        // The mark first: a crash mid-purge must not let a restore reach a time whose
        // records are half gone.
        let mark = e.path().join("purged-before");
        let tmp = e.path().join("purged-before.tmp");
        fs::write(&tmp, stamp(cutoff))?;
        File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, &mark)?;
        for s in old {
            make_removable(&s.dir);
            fs::remove_dir_all(&s.dir)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Opens up read-only folders of a record (versions keep the client's modes) so that a
/// process that is not root can remove it.
fn make_removable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for e in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .flatten()
    {
        if e.file_type().is_dir() {
            let _ = fs::set_permissions(e.path(), fs::Permissions::from_mode(0o700));
        }
    }
}

/// One kept version, as `filesync versions` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The path in the client's folder.
    pub path: RelPath,
    /// `file`, `dir`, `symlink`, `fifo` or `other`.
    pub kind: &'static str,
    /// Size in bytes (0 but for files).
    pub size: u64,
    /// Its mtime.
    pub mtime: MTime,
    /// Its permission bits.
    pub mode: u32,
    /// When a session replaced or deleted it (the session's start).
    pub replaced_at: MTime,
}

/// The kept versions of a client, newest first, each folder's entries by name; only those
/// at or under one of `filter` if it is not empty.
pub fn list(root: &Path, id: &ClientId, filter: &[RelPath]) -> io::Result<Vec<Version>> {
    let mut out = Vec::new();
    for s in sessions(root, id)?.into_iter().rev() {
        let tree = s.tree();
        let tops = s.replaced()?;
        if !tree.exists() {
            continue;
        }
        for e in crate::walk::tree_walk(&tree) {
            let e = e.map_err(io::Error::other)?;
            let Ok(path) = RelPath::from_local(e.path().strip_prefix(&tree).unwrap_or(e.path()))
            else {
                continue;
            };
            // Folders made only to hold a version are not versions themselves.
            let is_version = tops.iter().any(|t| *t == path || t.is_ancestor_of(&path));
            if !is_version || !wanted(&path, filter) {
                continue;
            }
            let m = e.metadata().map_err(io::Error::other)?;
            let ft = m.file_type();
            use std::os::unix::fs::FileTypeExt;
            out.push(Version {
                kind: if ft.is_dir() {
                    "dir"
                } else if ft.is_file() {
                    "file"
                } else if ft.is_symlink() {
                    "symlink"
                } else if ft.is_fifo() {
                    "fifo"
                } else {
                    "other"
                },
                size: if ft.is_file() { m.len() } else { 0 },
                mtime: crate::walk::mtime_of(&m),
                mode: m.mode() & MODE_BITS,
                replaced_at: s.at,
                path,
            });
        }
    }
    Ok(out)
}

/// Whether `p` is one of `filter`, or inside one, or `filter` is empty.
pub(crate) fn wanted(p: &RelPath, filter: &[RelPath]) -> bool {
    filter.is_empty() || filter.iter().any(|f| f == p || f.is_ancestor_of(p))
}

/// The name of a version path for messages.
pub fn display_path(p: &Path) -> String {
    String::from_utf8_lossy(p.as_os_str().as_bytes()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_sort_by_time_and_read_back() {
        let times = [
            MTime::new(0, 0).unwrap(),
            MTime::new(1_700_000_000, 5).unwrap(),
            MTime::new(1_700_000_000, 999_999_999).unwrap(),
            MTime::new(1_700_000_001, 0).unwrap(),
        ];
        let names: Vec<_> = times.iter().map(|t| stamp(*t)).collect();
        assert_eq!(names[1], "2023-11-14T22:13:20.000000005Z");
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, names);
        for (t, n) in times.iter().zip(&names) {
            assert_eq!(parse_stamp(n), Some(*t), "{n}");
        }
        assert_eq!(parse_stamp("purged-before"), None);
        assert_eq!(parse_stamp("2023-11-14T22:13:20Z"), None);
    }

    #[test]
    fn at_times_in_three_forms() {
        let now = MTime::new(1_700_000_000, 0).unwrap();
        // The last nanosecond of `now`'s second: a time written to the second.
        let end_of_now = MTime::new(1_700_000_000, 999_999_999).unwrap();
        let utc = chrono::Utc;
        assert_eq!(
            parse_at("2023-11-14T22:13:20Z", now, &utc).unwrap(),
            end_of_now,
            "RFC 3339"
        );
        assert_eq!(
            parse_at("2023-11-14T23:13:20+01:00", now, &utc).unwrap(),
            end_of_now
        );
        assert_eq!(
            parse_at("2023-11-14T22:13:20.123456789Z", now, &utc).unwrap(),
            MTime::new(now.secs, 123_456_789).unwrap(),
            "to the nanosecond: exactly"
        );
        let plus2 = chrono::FixedOffset::east_opt(2 * 3600).unwrap();
        assert_eq!(
            parse_at("2023-11-15 00:13:20", now, &plus2).unwrap(),
            end_of_now,
            "local, read in the given zone"
        );
        let minute = parse_at("2023-11-15 00:13", now, &plus2).unwrap();
        assert_eq!(
            (minute.secs, minute.nanos),
            (now.secs - 20 + 59, 999_999_999)
        );
        assert_eq!(parse_at("2h", now, &utc).unwrap().secs, now.secs - 7200);
        assert_eq!(
            parse_at("3d", now, &utc).unwrap().secs,
            now.secs - 3 * 86400
        );
        assert!(parse_at("yesterday-ish", now, &utc).is_err());
        // As `versions` prints them, fraction and offset included: to the end of the
        // printed millisecond, so that a change it names (cut to .045) is included.
        let printed = parse_at("2023-11-15 00:13:20.045 +0200", now, &utc).unwrap();
        assert_eq!((printed.secs, printed.nanos), (now.secs, 45_999_999));
        assert!(printed >= MTime::new(now.secs, 45_251_243).unwrap());
        assert_eq!(
            parse_at("2023-11-14 22:13:20 +0000", now, &plus2).unwrap(),
            end_of_now
        );
        let local = parse_at("2023-11-15 00:13:20.5", now, &plus2).unwrap();
        assert_eq!((local.secs, local.nanos), (now.secs, 599_999_999));
        let local = parse_at("2023-11-15T00:13:20.25", now, &plus2).unwrap();
        assert_eq!((local.secs, local.nanos), (now.secs, 259_999_999));
        assert_eq!(
            parse_at("2023-11-15T00:13:20", now, &plus2).unwrap(),
            end_of_now
        );
        // Ages are exact.
        let age = parse_at("90s", now, &utc).unwrap();
        assert_eq!((age.secs, age.nanos), (now.secs - 90, 0));
    }

    #[test]
    fn records_are_made_on_first_use_and_list_added_paths() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("v");
        let at = MTime::new(1_700_000_000, 0).unwrap();
        let mut r = SessionRecord::new(base.clone(), at, false);
        r.flush().unwrap();
        assert!(!base.exists(), "nothing done, no record");
        let p = |s: &str| RelPath::parse(s).unwrap();
        r.note_added(&p("a/new")).unwrap();
        let v = r.version_path(&p("a/old")).unwrap();
        fs::write(&v, b"old").unwrap();
        assert!(r.version_path(&p("a/old")).is_err(), "once per session");
        // A symlink kept earlier is never gone through to keep what is under its name.
        let outside = d.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let v = r.version_path(&p("link")).unwrap();
        std::os::unix::fs::symlink(&outside, &v).unwrap();
        assert!(r.version_path(&p("link/x")).is_err());
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        r.flush().unwrap();
        let s = Session {
            at,
            dir: base.join(stamp(at)),
        };
        assert_eq!(s.added().unwrap(), Some(vec![p("a/new")]));
        // A second record at the same instant gets the next nanosecond.
        let mut r2 = SessionRecord::new(base.clone(), at, true);
        r2.note_added(&p("x")).unwrap();
        r2.note_added(&p("y")).unwrap();
        r2.flush().unwrap();
        let mut all: Vec<_> = fs::read_dir(&base)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        all.sort();
        assert_eq!(all.len(), 2);
        let second = Session {
            at: parse_stamp(&all[1]).unwrap(),
            dir: base.join(&all[1]),
        };
        assert_eq!(second.at, at.plus(std::time::Duration::from_nanos(1)));
        assert_eq!(second.added().unwrap(), None, "the whole folder was new");
    }
}

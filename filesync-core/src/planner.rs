//! Planning: the client's manifest against the server's index gives the files to send and
//! what to do once they are stored (deletions, new directories, directory times).
//!
//! Pure, and in bounded memory: the manifest and the server's index both arrive in tree
//! order ([`RelPath::tree_cmp`]: a depth-first walk, names sorted), and the planner merges
//! them in one pass, as a sort-merge join. It is fed the manifest batch by batch and pulls
//! the index entries each batch reaches, so it never holds either listing whole: what it
//! keeps is one look-ahead entry, the stack of open directories (bounded by the tree's
//! depth) and a few paths. Its answers come out as they are known: the files to request
//! for each batch, and [`TailOp`]s (the work to do after every file is stored) through a
//! sink that the caller may write to disk.
//!
//! The rule (rsync's "quick check"): send a file when the server has no such file, or when
//! its size or its mtime differ. The original FileSync sends only when the client's mtime is
//! *later*, which misses a file restored from a backup to an older version; equality is the
//! right test for a mirror. Mtimes are equal when they differ by less than the server
//! filesystem's precision (rsync's `--modify-window`), so a server on a filesystem keeping
//! whole seconds does not see every file as changed. A file whose content is unchanged but
//! whose mode differs is given its mode in place (a `Chmod`), not sent again. Symlinks and
//! FIFOs carry everything in their manifest entry and are made by the tail; a symlink is
//! the same when its target text is. Deletions are everything the server holds that the manifest
//! does not list, applied only after every file is stored, so an interrupted session never
//! leaves the server with less than it had.

use std::cmp::Ordering;
use std::time::Duration;

use crate::error::ProtocolError;
use crate::messages::{stored_mode_bits, Entry, EntryKind, MODE_BITS};
use crate::paths::{LinkTarget, RelPath};
use crate::time::MTime;

/// How two versions of a file are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Native: size and mtime to the nanosecond.
    QuickCheck,
    /// The original dialect lists no sizes, no modes, and timestamps to the microsecond:
    /// compare mtimes at that precision, and leave modes as the server has them.
    Micros,
}

/// What the server holds for one path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Held {
    /// What kind of entry.
    pub kind: EntryKind,
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: MTime,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// A symlink's target.
    pub target: Option<LinkTarget>,
}

/// Work for after every file of the session is stored, in the order the planner emits it.
/// Applied in that order it is always valid: a directory's time comes after everything
/// done inside it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TailOp {
    /// Delete this entry, and everything under it if it is a directory: the manifest
    /// lists neither it nor anything inside it. Only the top of a deleted subtree is
    /// emitted.
    Delete(RelPath),
    /// Make this listed directory, which the server lacks (or holds as a non-directory).
    MakeDir(RelPath),
    /// Give this listed directory this mtime and, if given, these permission bits: they
    /// differ from the server's, or the session changes what is in it (which moves its
    /// time on the server).
    DirAttrs(RelPath, MTime, Option<u32>),
    /// Make this symlink with this target and mtime, replacing what stands at the path.
    Link(RelPath, LinkTarget, MTime),
    /// Make this FIFO with these permission bits and mtime, replacing what stands there.
    Fifo(RelPath, u32, MTime),
    /// Give this file, whose content the server already holds, these permission bits.
    Chmod(RelPath, u32),
}

/// The plan's tail gathered in memory: [`TailOp`]s sorted by kind. For tests and small
/// listings; sessions stream the ops instead.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tail {
    /// Tops of deleted subtrees, in tree order.
    pub delete: Vec<RelPath>,
    /// Directories to make, parents first.
    pub make_dirs: Vec<RelPath>,
    /// Symlinks and FIFOs to make, and modes to change.
    pub specials: Vec<TailOp>,
    /// Directory times (and modes) to set.
    pub dir_attrs: Vec<(RelPath, MTime, Option<u32>)>,
}

impl Tail {
    /// Gathers ops.
    pub fn from_ops(ops: impl IntoIterator<Item = TailOp>) -> Self {
        let mut t = Tail::default();
        for op in ops {
            match op {
                TailOp::Delete(p) => t.delete.push(p),
                TailOp::MakeDir(p) => t.make_dirs.push(p),
                TailOp::DirAttrs(p, m, mode) => t.dir_attrs.push((p, m, mode)),
                op @ (TailOp::Link(..) | TailOp::Fifo(..) | TailOp::Chmod(..)) => {
                    t.specials.push(op)
                }
            }
        }
        t
    }

    /// The ops again, in an order valid to apply: deletions, directories, links, FIFOs
    /// and modes, directory attributes (deepest first, so that a read-only directory is
    /// made read-only only once nothing more is done inside it).
    pub fn into_ops(mut self) -> impl Iterator<Item = TailOp> {
        self.dir_attrs
            .sort_by_key(|d| std::cmp::Reverse(d.0.depth()));
        self.delete
            .into_iter()
            .map(TailOp::Delete)
            .chain(self.make_dirs.into_iter().map(TailOp::MakeDir))
            .chain(self.specials)
            .chain(
                self.dir_attrs
                    .into_iter()
                    .map(|(p, m, mode)| TailOp::DirAttrs(p, m, mode)),
            )
    }
}

/// A listed directory whose subtree the merge is inside.
#[derive(Debug)]
struct OpenDir {
    path: RelPath,
    mtime: MTime,
    /// The mode to give it, `None` to leave it.
    mode: Option<u32>,
    /// The server holds it as a directory with the same mtime and mode.
    same_attrs: bool,
    /// The plan changes what is in it.
    touched: bool,
}

/// Plans one session, batch by batch, merging the manifest with the server's index.
#[derive(Debug)]
pub struct Planner {
    rule: Rule,
    /// The next index entry, read but not yet merged.
    ahead: Option<(RelPath, Held)>,
    /// The index is exhausted.
    index_done: bool,
    /// The last index entry read, to check the index's order.
    last_held: Option<RelPath>,
    /// The last manifest entry, to check the manifest's order.
    last_listed: Option<RelPath>,
    /// The last listed non-directory: nothing may be listed inside it.
    last_leaf: Option<RelPath>,
    /// The last `Keep` entry: the server keeps what it holds under it.
    kept: Option<RelPath>,
    /// The top of the subtree being deleted.
    deleting: Option<RelPath>,
    /// Listed directories that enclose the merge position, outermost first.
    open_dirs: Vec<OpenDir>,
    /// Whether the index held a regular file, seen so far.
    held_files: bool,
    /// Delete only regular files (see [`Planner::files_only`]).
    files_only: bool,
    /// Permission bits the server keeps (setuid and setgid dropped unless asked).
    mode_mask: u32,
    /// Mtimes this close are equal (see [`Planner::mtime_window`]).
    window: Duration,
    /// A mode-only change is a `Chmod` (see [`Planner::modes_in_place`]).
    modes_in_place: bool,
    files: u64,
    bytes: u64,
    deletions: u64,
    /// Index entries read: the size of the archive, once the plan is finished.
    held: u64,
}

impl Planner {
    /// A planner for one session.
    pub fn new(rule: Rule) -> Self {
        Self {
            rule,
            ahead: None,
            index_done: false,
            last_held: None,
            last_listed: None,
            last_leaf: None,
            kept: None,
            deleting: None,
            open_dirs: Vec::new(),
            held_files: false,
            files_only: false,
            mode_mask: stored_mode_bits(false),
            window: Duration::from_nanos(1),
            modes_in_place: true,
            files: 0,
            bytes: 0,
            deletions: 0,
            held: 0,
        }
    }

    /// Deletes regular files only, one by one, never directories: for a client that
    /// lists no directories and so cannot say which empty ones it still has.
    pub fn files_only(mut self) -> Self {
        self.files_only = true;
        self
    }

    /// Keeps setuid and setgid bits (`serve --keep-setid`); by default they are dropped,
    /// so that a server never grows setuid programs from the network.
    pub fn keep_setid(mut self, keep: bool) -> Self {
        self.mode_mask = stored_mode_bits(keep);
        self
    }

    /// Mtimes that differ by less than `window` are equal: the precision the server's
    /// filesystem keeps (1 ns by default; 1 s or 2 s on coarse filesystems). See
    /// `precision::detect`.
    pub fn mtime_window(mut self, window: Duration) -> Self {
        self.window = window.max(Duration::from_nanos(1));
        self
    }

    /// With `false`, a file whose mode alone changed is requested again instead of given
    /// its mode in place (a `Chmod`): for an archive that cannot change a stored file's
    /// mode without writing it anew (an object store, whose objects' metadata is fixed
    /// once put). The file then also replaces the old one as a version. `true` by default.
    pub fn modes_in_place(mut self, in_place: bool) -> Self {
        self.modes_in_place = in_place;
        self
    }

    /// Plans one manifest batch; returns the files of it to request, in manifest order.
    /// `index` yields the server's entries in tree order; it is
    /// read only as far as this batch reaches (plus one entry of look-ahead), and must be
    /// the same iterator, continued, at every call. `tail` receives the ops found.
    ///
    /// Fails if the manifest is not in strictly increasing tree order (which also refuses
    /// a path listed twice), or lists an entry inside a listed file.
    pub fn batch(
        &mut self,
        entries: &[Entry],
        index: &mut dyn Iterator<Item = (RelPath, Held)>,
        tail: &mut dyn FnMut(TailOp),
    ) -> Result<Vec<RelPath>, ProtocolError> {
        let mut send = Vec::new();
        for e in entries {
            if let Some(last) = &self.last_listed {
                if last.tree_cmp(&e.path) != Ordering::Less {
                    return Err(ProtocolError::Inconsistent(format!(
                        "{} listed after {last}: listed twice or out of tree order",
                        e.path
                    )));
                }
            }
            if let Some(f) = &self.last_leaf {
                if f.is_ancestor_of(&e.path) {
                    return Err(ProtocolError::Inconsistent(format!(
                        "{} is listed inside the non-directory {f}",
                        e.path
                    )));
                }
            }
            if (e.kind == EntryKind::Symlink) != e.target.is_some() || e.mode & !MODE_BITS != 0 {
                return Err(ProtocolError::Inconsistent(format!(
                    "{}: a {:?} entry with mode {:o} and target {:?}",
                    e.path, e.kind, e.mode, e.target
                )));
            }
            self.last_listed = Some(e.path.clone());
            // Everything the server holds before this entry is either one of its
            // ancestors (kept: an implied directory) or gone from the client.
            let mut held = None;
            while let Some((p, _)) = self.peek(index)? {
                match p.tree_cmp(&e.path) {
                    Ordering::Less => {
                        let (p, h) = self.take();
                        if !p.is_ancestor_of(&e.path) {
                            self.gone(p, h, tail);
                        }
                    }
                    Ordering::Equal => {
                        held = Some(self.take().1);
                        break;
                    }
                    Ordering::Greater => break,
                }
            }
            self.enter(&e.path, tail);
            let mode = self.mode_of(e);
            let same_kind = held.filter(|h| h.kind == e.kind);
            if !matches!(e.kind, EntryKind::Dir | EntryKind::Keep) {
                self.last_leaf = Some(e.path.clone());
            }
            match e.kind {
                EntryKind::File => match same_kind {
                    Some(h)
                        if self.same_content(&h, e)
                            && (self.modes_in_place || mode.is_none_or(|m| m == h.mode)) =>
                    {
                        if let Some(m) = mode.filter(|m| *m != h.mode) {
                            tail(TailOp::Chmod(e.path.clone(), m));
                        }
                    }
                    _ => {
                        self.files += 1;
                        self.bytes = self.bytes.saturating_add(e.size);
                        self.touch_parent_of(&e.path);
                        send.push(e.path.clone());
                    }
                },
                EntryKind::Symlink => {
                    let target = e.target.clone().expect("checked above");
                    if same_kind.is_none_or(|h| h.target.as_ref() != Some(&target)) {
                        self.touch_parent_of(&e.path);
                        tail(TailOp::Link(e.path.clone(), target, e.mtime));
                    }
                }
                EntryKind::Fifo => {
                    let m = mode.unwrap_or(e.mode);
                    if same_kind.is_none_or(|h| h.mode != m) {
                        self.touch_parent_of(&e.path);
                        tail(TailOp::Fifo(e.path.clone(), m, e.mtime));
                    }
                }
                EntryKind::Dir => {
                    if same_kind.is_none() {
                        self.touch_parent_of(&e.path);
                        tail(TailOp::MakeDir(e.path.clone()));
                    }
                    self.open_dirs.push(OpenDir {
                        path: e.path.clone(),
                        mtime: e.mtime,
                        mode,
                        same_attrs: same_kind.is_some_and(|h| {
                            self.same_time(h.mtime, e.mtime) && mode.is_none_or(|m| m == h.mode)
                        }),
                        touched: false,
                    });
                }
                EntryKind::Keep => self.kept = Some(e.path.clone()),
            }
        }
        Ok(send)
    }

    /// Completes the plan once the manifest has ended: whatever the index holds past the
    /// last listed entry is gone from the client, and every open directory is closed.
    ///
    /// With `refuse_empty`, an empty manifest against an index holding a regular file is
    /// refused with `Ok(Err(WouldEmpty))`; the caller then discards every op emitted.
    pub fn finish(
        mut self,
        index: &mut dyn Iterator<Item = (RelPath, Held)>,
        refuse_empty: bool,
        tail: &mut dyn FnMut(TailOp),
    ) -> Result<Result<Finished, WouldEmpty>, ProtocolError> {
        let refusing = refuse_empty && self.last_listed.is_none();
        while self.peek(index)?.is_some() {
            if refusing && self.held_files {
                return Ok(Err(WouldEmpty));
            }
            let (p, h) = self.take();
            self.gone(p, h, tail);
        }
        self.close_dirs_until(None, tail);
        Ok(Ok(Finished {
            files: self.files,
            bytes: self.bytes,
            deletions: self.deletions,
            held: self.held,
        }))
    }

    /// Server entries found to be deleted so far (every entry of a deleted subtree
    /// counts).
    pub fn deletions(&self) -> u64 {
        self.deletions
    }

    fn peek(
        &mut self,
        index: &mut dyn Iterator<Item = (RelPath, Held)>,
    ) -> Result<Option<&(RelPath, Held)>, ProtocolError> {
        if self.ahead.is_none() && !self.index_done {
            match index.next() {
                None => self.index_done = true,
                Some((p, h)) => {
                    if let Some(last) = &self.last_held {
                        if last.tree_cmp(&p) != Ordering::Less {
                            return Err(ProtocolError::Inconsistent(format!(
                                "the server's index lists {p} after {last}"
                            )));
                        }
                    }
                    self.last_held = Some(p.clone());
                    self.held_files |= h.kind == EntryKind::File;
                    self.held += 1;
                    self.ahead = Some((p, h));
                }
            }
        }
        Ok(self.ahead.as_ref())
    }

    fn take(&mut self) -> (RelPath, Held) {
        self.ahead.take().expect("peeked just before")
    }

    /// An index entry the manifest does not list.
    fn gone(&mut self, p: RelPath, h: Held, tail: &mut dyn FnMut(TailOp)) {
        if self
            .kept
            .as_ref()
            .is_some_and(|k| *k == p || k.is_ancestor_of(&p))
        {
            return;
        }
        if self.files_only {
            if h.kind == EntryKind::File {
                self.deletions += 1;
                tail(TailOp::Delete(p));
            }
            return;
        }
        self.deletions += 1;
        if self.deleting.as_ref().is_some_and(|d| d.is_ancestor_of(&p)) {
            return;
        }
        self.enter(&p, tail);
        self.touch_parent_of(&p);
        self.deleting = Some(p.clone());
        tail(TailOp::Delete(p));
    }

    /// Moves the merge position to `p`: directories that do not enclose it are done.
    fn enter(&mut self, p: &RelPath, tail: &mut dyn FnMut(TailOp)) {
        self.close_dirs_until(Some(p), tail);
    }

    fn close_dirs_until(&mut self, p: Option<&RelPath>, tail: &mut dyn FnMut(TailOp)) {
        while let Some(top) = self.open_dirs.last() {
            if p.is_some_and(|p| top.path.is_ancestor_of(p)) {
                break;
            }
            let d = self.open_dirs.pop().expect("just looked");
            if !d.same_attrs || d.touched {
                tail(TailOp::DirAttrs(d.path, d.mtime, d.mode));
            }
        }
    }

    fn touch_parent_of(&mut self, p: &RelPath) {
        if let Some(parent) = self.open_dirs.last_mut() {
            if parent.path.is_ancestor_of(p) && parent.path.depth() + 1 == p.depth() {
                parent.touched = true;
            }
        }
    }

    /// Whether a held file has the listed file's content, by the quick check.
    fn same_content(&self, held: &Held, e: &Entry) -> bool {
        match self.rule {
            Rule::QuickCheck => held.size == e.size && self.same_time(held.mtime, e.mtime),
            Rule::Micros => held.mtime.same_micros(e.mtime) || self.same_time(held.mtime, e.mtime),
        }
    }

    fn same_time(&self, a: MTime, b: MTime) -> bool {
        a.within(b, self.window)
    }

    /// The mode the server gives a listed entry, or `None` where the listing carries no
    /// modes (the original dialect) and the server's are left as they are.
    fn mode_of(&self, e: &Entry) -> Option<u32> {
        match self.rule {
            Rule::QuickCheck => Some(e.mode & self.mode_mask),
            Rule::Micros => None,
        }
    }
}

/// Totals of a completed plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// Files requested.
    pub files: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Server entries to delete (every entry of a deleted subtree counts).
    pub deletions: u64,
    /// Entries the server held for the client before the session (files, folders,
    /// links, FIFOs).
    pub held: u64,
}

/// Limits on what one session may delete: a mistake on a client (a wrong folder, a
/// cloned instrument syncing under another machine's id, ransomware) shows up as a mass
/// deletion, which these stop. Deletions are applied last, so what is held back is
/// simply not done; everything else of the session completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeleteCaps {
    /// At most this many entries (rsync's `--max-delete`): deletions are applied in plan
    /// order while they fit, a deleted folder counting every entry in it.
    pub max: Option<u64>,
    /// A session that would delete more than this percentage of the archive's entries
    /// deletes nothing.
    pub max_percent: Option<u32>,
}

/// What a session may delete, decided once its plan is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteBudget {
    /// Every deletion of the plan.
    All,
    /// Deletions while their entries add up to at most this many.
    UpTo(u64, String),
    /// None at all.
    Nothing(String),
}

impl DeleteBudget {
    /// Whether a deletion of `n` entries fits, `deleted` entries having gone already.
    pub fn allows(&self, deleted: u64, n: u64) -> bool {
        match self {
            DeleteBudget::All => true,
            DeleteBudget::Nothing(_) => false,
            DeleteBudget::UpTo(max, _) => deleted + n <= *max,
        }
    }

    /// Why deletions may be held back; `None` for [`DeleteBudget::All`].
    pub fn reason(&self) -> Option<&str> {
        match self {
            DeleteBudget::All => None,
            DeleteBudget::UpTo(_, r) | DeleteBudget::Nothing(r) => Some(r),
        }
    }
}

impl DeleteCaps {
    /// The tighter of two sets of caps (the server's and the client's).
    pub fn and(self, other: DeleteCaps) -> DeleteCaps {
        let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        DeleteCaps {
            max: min(self.max, other.max),
            max_percent: min(
                self.max_percent.map(u64::from),
                other.max_percent.map(u64::from),
            )
            .map(|p| u32::try_from(p).unwrap_or(u32::MAX)),
        }
    }

    /// The budget for a plan that deletes `deletions` of the `held` entries.
    pub fn budget(&self, deletions: u64, held: u64) -> DeleteBudget {
        if deletions == 0 {
            return DeleteBudget::All;
        }
        if let Some(p) = self.max_percent {
            if u128::from(deletions) * 100 > u128::from(p) * u128::from(held) {
                return DeleteBudget::Nothing(format!(
                    "the sync would delete {deletions} of the {held} entries the server holds, \
                     more than {p}% (serve --max-delete-percent)"
                ));
            }
        }
        match self.max {
            Some(n) if deletions > n => DeleteBudget::UpTo(
                n,
                format!("the sync would delete {deletions} entries, more than --max-delete {n}"),
            ),
            _ => DeleteBudget::All,
        }
    }
}

/// An empty manifest met an archive that holds files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WouldEmpty;

/// The whole plan at once: files to send (manifest order) and the tail. Sorts both inputs
/// into tree order first, so it takes listings in any order (the original dialect's are
/// unordered, and small). For tests and tools; sessions use [`Planner`] batch by batch.
pub fn plan(
    manifest: &[Entry],
    held: impl IntoIterator<Item = (RelPath, Held)>,
    rule: Rule,
) -> Result<(Vec<RelPath>, Tail), ProtocolError> {
    let mut manifest = manifest.to_vec();
    manifest.sort_by(|a, b| a.path.tree_cmp(&b.path));
    let mut held: Vec<_> = held.into_iter().collect();
    held.sort_by(|a, b| a.0.tree_cmp(&b.0));
    let mut index = held.into_iter();
    let mut ops = Vec::new();
    let mut p = Planner::new(rule);
    let send = p.batch(&manifest, &mut index, &mut |op| ops.push(op))?;
    let _ = p
        .finish(&mut index, false, &mut |op| ops.push(op))?
        .map_err(|_| ProtocolError::Inconsistent("unreachable: not refusing".into()))?;
    Ok((send, Tail::from_ops(ops)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn p(s: &str) -> RelPath {
        RelPath::parse(s).unwrap()
    }
    fn file(path: &str, size: u64, secs: i64) -> Entry {
        Entry {
            path: p(path),
            kind: EntryKind::File,
            size,
            mtime: MTime::new(secs, 0).unwrap(),
            mode: 0o644,
            target: None,
        }
    }
    fn dir(path: &str) -> Entry {
        Entry {
            path: p(path),
            kind: EntryKind::Dir,
            size: 0,
            mtime: MTime::new(0, 0).unwrap(),
            mode: 0o755,
            target: None,
        }
    }
    fn held(entries: &[Entry]) -> Vec<(RelPath, Held)> {
        entries
            .iter()
            .map(|e| {
                (
                    e.path.clone(),
                    Held {
                        kind: e.kind,
                        size: e.size,
                        mtime: e.mtime,
                        mode: e.mode,
                        target: e.target.clone(),
                    },
                )
            })
            .collect()
    }
    fn strs(v: &[RelPath]) -> Vec<&str> {
        v.iter().map(|p| p.to_str().unwrap()).collect()
    }

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            client: Vec<Entry>,
            server: Vec<Entry>,
            send: Vec<&'static str>,
            delete: Vec<&'static str>,
            make: Vec<&'static str>,
        }
        let cases = [
            Case {
                name: "empty server gets everything",
                client: vec![dir("d"), file("d/a", 1, 1), file("b", 2, 2)],
                server: vec![],
                send: vec!["b", "d/a"],
                delete: vec![],
                make: vec!["d"],
            },
            Case {
                name: "identical trees send nothing",
                client: vec![dir("d"), file("d/a", 1, 1)],
                server: vec![dir("d"), file("d/a", 1, 1)],
                send: vec![],
                delete: vec![],
                make: vec![],
            },
            Case {
                name: "older mtime (restored file) is sent",
                client: vec![file("a", 1, 5)],
                server: vec![file("a", 1, 9)],
                send: vec!["a"],
                delete: vec![],
                make: vec![],
            },
            Case {
                name: "same mtime, other size is sent",
                client: vec![file("a", 2, 5)],
                server: vec![file("a", 1, 5)],
                send: vec!["a"],
                delete: vec![],
                make: vec![],
            },
            Case {
                name: "a removed directory is deleted as one subtree",
                client: vec![file("keep", 1, 1)],
                server: vec![
                    file("keep", 1, 1),
                    dir("x"),
                    dir("x/y"),
                    file("x/y/z", 1, 1),
                ],
                send: vec![],
                delete: vec!["x"],
                make: vec![],
            },
            Case {
                name: "file replaced by dir: replaced in place, never deleted after",
                client: vec![dir("a"), file("a/b", 1, 1)],
                server: vec![file("a", 1, 1)],
                send: vec!["a/b"],
                delete: vec![],
                make: vec!["a"],
            },
            Case {
                name: "dir replaced by file: only its content is deleted",
                client: vec![file("a", 1, 1)],
                server: vec![dir("a"), file("a/b", 1, 1)],
                send: vec!["a"],
                delete: vec!["a/b"],
                make: vec![],
            },
            Case {
                name: "a file where an original client implies a dir is replaced, not deleted",
                client: vec![file("a/b", 1, 1)],
                server: vec![file("a", 1, 1)],
                send: vec!["a/b"],
                delete: vec![],
                make: vec![],
            },
            Case {
                name: "unreadable entries keep what the server holds under them",
                client: vec![
                    file("x", 1, 1),
                    Entry {
                        kind: EntryKind::Keep,
                        ..dir("locked")
                    },
                ],
                server: vec![
                    file("x", 1, 1),
                    dir("locked"),
                    file("locked/f", 1, 1),
                    file("gone", 1, 1),
                ],
                send: vec![],
                delete: vec!["gone"],
                make: vec![],
            },
            Case {
                name: "implied dirs of an original-dialect listing survive",
                client: vec![file("d/e/f", 1, 1)],
                server: vec![dir("d"), dir("d/e"), file("d/e/f", 1, 1), dir("gone")],
                send: vec![],
                delete: vec!["gone"],
                make: vec![],
            },
        ];
        for c in cases {
            let (send, tail) = plan(&c.client, held(&c.server), Rule::QuickCheck).unwrap();
            assert_eq!(strs(&send), c.send, "{}: send", c.name);
            assert_eq!(strs(&tail.delete), c.delete, "{}: delete", c.name);
            assert_eq!(strs(&tail.make_dirs), c.make, "{}: make", c.name);
        }
    }

    #[test]
    fn directory_times_are_set_where_they_differ_or_content_changes() {
        let t = |secs| MTime::new(secs, 0).unwrap();
        let d = |p: &str, secs| Entry {
            mtime: t(secs),
            ..dir(p)
        };
        let client = [
            d("same", 5),
            d("other-time", 6),
            d("new", 7),
            d("changed", 8),
            file("changed/f", 1, 2),
            d("emptied", 9),
            d("same/sub", 4),
        ];
        let server = [
            d("same", 5),
            d("same/sub", 4),
            d("other-time", 1),
            d("changed", 8),
            file("changed/f", 1, 1),
            d("emptied", 9),
            file("emptied/gone", 1, 1),
        ];
        let (_, tail) = plan(&client, held(&server), Rule::QuickCheck).unwrap();
        let mut got: Vec<_> = tail
            .dir_attrs
            .iter()
            .map(|(p, m, _)| (p.to_str().unwrap(), m.secs))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("changed", 8),
                ("emptied", 9),
                ("new", 7),
                ("other-time", 6)
            ]
        );
    }

    #[test]
    fn delete_caps() {
        let none = DeleteCaps::default();
        assert_eq!(none.budget(1000, 1000), DeleteBudget::All);
        let pct = DeleteCaps {
            max: None,
            max_percent: Some(50),
        };
        assert_eq!(
            pct.budget(5, 10),
            DeleteBudget::All,
            "exactly half is allowed"
        );
        assert!(matches!(pct.budget(6, 10), DeleteBudget::Nothing(_)));
        assert_eq!(pct.budget(0, 0), DeleteBudget::All);
        let max = DeleteCaps {
            max: Some(3),
            max_percent: None,
        };
        assert_eq!(max.budget(3, 100), DeleteBudget::All);
        assert!(matches!(max.budget(4, 100), DeleteBudget::UpTo(3, _)));
        let both = pct.and(DeleteCaps {
            max: Some(2),
            max_percent: Some(80),
        });
        assert_eq!(
            both,
            DeleteCaps {
                max: Some(2),
                max_percent: Some(50)
            }
        );
        assert!(both
            .budget(4, 10)
            .reason()
            .unwrap()
            .contains("--max-delete 2"));
    }

    #[test]
    fn the_plan_counts_what_the_server_held() {
        let server = held(&[dir("d"), file("d/f", 1, 1), file("g", 1, 1)]);
        let mut index = server.into_iter();
        let mut p = Planner::new(Rule::QuickCheck);
        p.batch(&[file("g", 1, 1)], &mut index, &mut |_| {})
            .unwrap();
        let done = p.finish(&mut index, false, &mut |_| {}).unwrap().unwrap();
        assert_eq!((done.deletions, done.held), (2, 3));
    }

    /// A file whose mode alone changed gets a `Chmod`; where modes cannot change in place
    /// (an object store), it is requested again instead, and nothing else changes.
    #[test]
    fn a_mode_only_change_is_a_chmod_or_a_resend() {
        let mut c = file("a", 1, 1);
        c.mode = 0o600;
        let client = [c, file("b", 1, 1)];
        let server = held(&[file("a", 1, 1), file("b", 1, 1)]);
        for (in_place, want_send, want_ops) in [
            (true, vec![], vec![TailOp::Chmod(p("a"), 0o600)]),
            (false, vec!["a"], vec![]),
        ] {
            let mut index = server.clone().into_iter();
            let mut ops = Vec::new();
            let mut planner = Planner::new(Rule::QuickCheck).modes_in_place(in_place);
            let send = planner
                .batch(&client, &mut index, &mut |op| ops.push(op))
                .unwrap();
            planner
                .finish(&mut index, false, &mut |op| ops.push(op))
                .unwrap()
                .unwrap();
            assert_eq!(strs(&send), want_send, "in place: {in_place}");
            assert_eq!(ops, want_ops, "in place: {in_place}");
        }
    }

    #[test]
    fn micros_rule_ignores_size_and_sub_micro_noise() {
        let mut c = file("a", 0, 5);
        c.mtime.nanos = 1_000_999;
        let mut s = file("a", 77, 5);
        s.mtime.nanos = 1_000_001;
        let (send, _) = plan(&[c.clone()], held(&[s.clone()]), Rule::Micros).unwrap();
        assert!(send.is_empty());
        let (send, _) = plan(&[c], held(&[s]), Rule::QuickCheck).unwrap();
        assert_eq!(send.len(), 1);
    }

    #[test]
    fn the_merge_counts_every_deleted_entry_and_reads_the_index_lazily() {
        let server = held(&[
            dir("a"),
            file("a/1", 1, 1),
            file("a/2", 1, 1),
            file("b", 1, 1),
            file("c", 1, 1),
        ]);
        let mut reads = 0;
        let mut index = server.into_iter().inspect(|_| reads += 1);
        let mut ops = Vec::new();
        let mut p = Planner::new(Rule::QuickCheck);
        let send = p
            .batch(&[file("b", 1, 1)], &mut index, &mut |op| ops.push(op))
            .unwrap();
        assert!(send.is_empty());
        assert_eq!(p.deletions(), 3, "a, a/1, a/2");
        assert_eq!(ops, [TailOp::Delete(p_("a"))]);
        drop(index);
        assert_eq!(reads, 4, "read up to b, which matches, and no further");
    }

    fn p_(s: &str) -> RelPath {
        p(s)
    }

    #[test]
    fn manifests_out_of_tree_order_are_refused() {
        let mut p = Planner::new(Rule::QuickCheck);
        let mut none = std::iter::empty();
        // Byte order puts "a.b" first; tree order puts "a/x" (inside "a") first.
        assert!(p
            .batch(
                &[dir("a"), file("a.b", 1, 1), file("a/x", 1, 1)],
                &mut none,
                &mut |_| {}
            )
            .is_err());
        let mut p = Planner::new(Rule::QuickCheck);
        assert!(p
            .batch(
                &[dir("a"), file("a/x", 1, 1), file("a.b", 1, 1)],
                &mut none,
                &mut |_| {}
            )
            .is_ok());
        let mut p = Planner::new(Rule::QuickCheck);
        p.batch(&[file("b", 1, 1)], &mut none, &mut |_| {}).unwrap();
        assert!(
            p.batch(&[file("a", 1, 1)], &mut none, &mut |_| {}).is_err(),
            "order holds across batches"
        );
    }

    #[test]
    fn an_empty_manifest_is_refused_against_files_only_when_asked() {
        let server = || held(&[dir("d"), file("d/f", 1, 1)]).into_iter();
        let p = Planner::new(Rule::QuickCheck);
        assert_eq!(
            p.finish(&mut server(), true, &mut |_| {}).unwrap(),
            Err(WouldEmpty)
        );
        let p = Planner::new(Rule::QuickCheck);
        let mut ops = Vec::new();
        let done = p
            .finish(&mut server(), false, &mut |op| ops.push(op))
            .unwrap()
            .unwrap();
        assert_eq!(done.deletions, 2);
        assert_eq!(ops, [TailOp::Delete(p_("d"))]);
        let p = Planner::new(Rule::QuickCheck);
        let dirs_only = held(&[dir("d")]);
        assert!(p
            .finish(&mut dirs_only.into_iter(), true, &mut |_| {})
            .unwrap()
            .is_ok());
    }

    #[test]
    fn inconsistent_manifests_are_refused() {
        assert!(plan(
            &[file("a", 1, 1), file("a", 1, 1)],
            vec![],
            Rule::QuickCheck
        )
        .is_err());
        assert!(plan(
            &[file("a", 1, 1), file("a/b", 1, 1)],
            vec![],
            Rule::QuickCheck
        )
        .is_err());
    }

    /// A tree as path -> (is_dir, size, mtime), closed under ancestors.
    fn tree() -> impl Strategy<Value = BTreeMap<String, (bool, u64, i64)>> {
        let name = prop::sample::select(vec!["a", "b", "c"]);
        prop::collection::vec(
            (
                prop::collection::vec(name, 1..4),
                any::<bool>(),
                0u64..3,
                0i64..3,
            ),
            0..12,
        )
        .prop_map(|items| {
            let mut t = BTreeMap::new();
            for (parts, is_dir, size, mtime) in items {
                let path = parts.join("/");
                // Ancestors must be directories; skip entries that clash with a file.
                let mut ok = true;
                for i in 1..parts.len() {
                    let a = parts[..i].join("/");
                    match t.get(&a) {
                        Some((false, _, _)) => {
                            ok = false;
                            break;
                        }
                        _ => {
                            t.insert(a, (true, 0, 0));
                        }
                    }
                }
                let has_children = t
                    .keys()
                    .any(|k: &String| k.starts_with(&format!("{path}/")));
                if ok && !t.contains_key(&path) && (is_dir || !has_children) {
                    t.insert(
                        path,
                        if is_dir {
                            (true, 0, 0)
                        } else {
                            (false, size, mtime)
                        },
                    );
                }
            }
            t
        })
    }

    fn entries(t: &BTreeMap<String, (bool, u64, i64)>) -> Vec<Entry> {
        t.iter()
            .map(|(k, (d, s, m))| if *d { dir(k) } else { file(k, *s, *m) })
            .collect()
    }

    /// A name set where byte order and tree order differ (`.` sorts before `/`).
    fn tricky_tree() -> impl Strategy<Value = BTreeMap<String, (bool, u64, i64)>> {
        tree().prop_map(|t| {
            t.into_iter()
                .map(|(k, v)| (k.replace('c', "a.b"), v))
                .collect()
        })
    }

    proptest! {
        /// Applying the plan to the server's tree always yields exactly the client's tree,
        /// and the plan never deletes a listed file.
        #[test]
        fn applying_the_plan_yields_the_client_tree(client in tricky_tree(), server in tricky_tree()) {
            let c = entries(&client);
            let s = entries(&server);
            let (send, tail) = plan(&c, held(&s), Rule::QuickCheck).unwrap();
            // Apply the plan exactly as the store does: place files (replacing what clashes
            // on the way), then delete, then make directories.
            let mut result: BTreeMap<String, (bool, u64, i64)> = server.clone();
            fn remove_tree(r: &mut BTreeMap<String, (bool, u64, i64)>, key: &str) {
                r.retain(|k, _| k != key && !k.starts_with(&format!("{key}/")));
            }
            fn ensure_dir(r: &mut BTreeMap<String, (bool, u64, i64)>, key: &str) {
                if r.get(key).is_some_and(|(d, _, _)| !d) {
                    r.remove(key);
                }
                r.entry(key.to_owned()).or_insert((true, 0, 0));
            }
            for path in &send {
                for a in path.ancestors() {
                    ensure_dir(&mut result, a.to_str().unwrap());
                }
                if result.get(path.to_str().unwrap()).is_some_and(|(d, _, _)| *d) {
                    remove_tree(&mut result, path.to_str().unwrap());
                }
                result.insert(path.to_str().unwrap().to_owned(), client[path.to_str().unwrap()]);
            }
            for d in &tail.delete {
                prop_assert!(!client.contains_key(d.to_str().unwrap()), "deleted listed entry {}", d);
                let parents_ok = d.ancestors().all(|a| result.get(a.to_str().unwrap()).is_some_and(|(d, _, _)| *d));
                if parents_ok {
                    remove_tree(&mut result, d.to_str().unwrap());
                }
            }
            for m in &tail.make_dirs {
                for a in m.ancestors() {
                    ensure_dir(&mut result, a.to_str().unwrap());
                }
                ensure_dir(&mut result, m.to_str().unwrap());
            }
            prop_assert_eq!(result, client);
        }
    }
}

//! Planning: the client's manifest against the server's index gives the files to send and
//! the entries to delete.
//!
//! Pure. The planner is fed the manifest batch by batch as it arrives, and answers each
//! batch at once with the files it needs, so the server sends `TASKS` while the client is
//! still listing: the plan is complete a moment after the listing is, with no round trip
//! per file.
//!
//! The rule (rsync's "quick check"): send a file when the server has no such file, or when
//! its size or its mtime differ. The original FileSync sends only when the client's mtime is
//! *later*, which misses a file restored from a backup to an older version; equality is the
//! right test for a mirror. Deletions are everything the server holds that the manifest
//! does not list, applied only after every file is stored, so an interrupted session never
//! leaves the server with less than it had.

use std::collections::{HashMap, HashSet};

use crate::error::ProtocolError;
use crate::messages::{Entry, EntryKind};
use crate::paths::RelPath;
use crate::time::MTime;

/// How two versions of a file are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Native: size and mtime to the nanosecond.
    QuickCheck,
    /// The original dialect lists no sizes and timestamps to the microsecond: compare
    /// mtimes at that precision.
    Micros,
}

/// What the server holds for one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// File or directory.
    pub kind: EntryKind,
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: MTime,
}

/// The plan's tail, known once the whole manifest is in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tail {
    /// Server entries the manifest does not list (nor imply as a parent, nor cover with a
    /// `Keep`), deepest first, so that a directory comes after everything inside it.
    pub delete: Vec<RelPath>,
    /// Directories the manifest lists that the server lacks (empty directories included).
    pub make_dirs: Vec<RelPath>,
    /// Listed directories whose mtime must be set once everything else is done: those
    /// whose mtime differs from the server's, and those the session changes the content
    /// of (which moves their mtime on the server).
    pub dir_times: Vec<(RelPath, MTime)>,
}

/// Plans one session, batch by batch.
#[derive(Debug)]
pub struct Planner {
    held: HashMap<RelPath, Held>,
    rule: Rule,
    listed: HashSet<RelPath>,
    listed_files: HashSet<RelPath>,
    kept: HashSet<RelPath>,
    make_dirs: Vec<RelPath>,
    /// Listed directories and their mtimes.
    dirs: Vec<(RelPath, MTime)>,
    /// Directories whose content the plan changes so far (parents of requested files).
    touched: HashSet<RelPath>,
    /// Listed directories whose mtime already matches the server's.
    unchanged_dirs: HashSet<RelPath>,
    files: u64,
    bytes: u64,
}

impl Planner {
    /// A planner over the server's index of the client's folder.
    pub fn new(held: impl IntoIterator<Item = (RelPath, Held)>, rule: Rule) -> Self {
        Self {
            held: held.into_iter().collect(),
            rule,
            listed: HashSet::new(),
            listed_files: HashSet::new(),
            kept: HashSet::new(),
            make_dirs: Vec::new(),
            dirs: Vec::new(),
            touched: HashSet::new(),
            unchanged_dirs: HashSet::new(),
            files: 0,
            bytes: 0,
        }
    }

    /// Whether the server holds anything for this client.
    pub fn server_has_files(&self) -> bool {
        self.held.values().any(|h| h.kind == EntryKind::File)
    }

    /// Plans one manifest batch; returns the files of it to request, in manifest order.
    /// A path listed twice is the client's fault.
    pub fn batch(&mut self, entries: &[Entry]) -> Result<Vec<RelPath>, ProtocolError> {
        let mut send = Vec::new();
        for e in entries {
            if !self.listed.insert(e.path.clone()) {
                return Err(ProtocolError::Inconsistent(format!(
                    "{} listed twice",
                    e.path
                )));
            }
            let held = self.held.get(&e.path);
            match e.kind {
                EntryKind::File => {
                    self.listed_files.insert(e.path.clone());
                    if held.is_none_or(|h| self.differs(h, e)) {
                        self.files += 1;
                        self.bytes += e.size;
                        if let Some(parent) = e.path.parent() {
                            self.touched.insert(parent);
                        }
                        send.push(e.path.clone());
                    }
                }
                EntryKind::Dir => {
                    let same_dir = held.filter(|h| h.kind == EntryKind::Dir);
                    if same_dir.is_none() {
                        self.make_dirs.push(e.path.clone());
                    }
                    if same_dir.is_some_and(|h| h.mtime == e.mtime) {
                        // Its time is set only if the plan changes what is in it.
                        self.unchanged_dirs.insert(e.path.clone());
                    }
                    self.dirs.push((e.path.clone(), e.mtime));
                }
                EntryKind::Keep => {
                    self.kept.insert(e.path.clone());
                }
            }
        }
        Ok(send)
    }

    fn differs(&self, held: &Held, e: &Entry) -> bool {
        held.kind != EntryKind::File
            || match self.rule {
                Rule::QuickCheck => held.size != e.size || held.mtime != e.mtime,
                Rule::Micros => !held.mtime.same_micros(e.mtime),
            }
    }

    /// Files requested so far and their total size.
    pub fn requested(&self) -> (u64, u64) {
        (self.files, self.bytes)
    }

    /// Completes the plan once the manifest has ended.
    ///
    /// Fails if the manifest lists an entry inside something it lists as a file: no tree
    /// can hold both, and storing it would need to delete a file the client just listed.
    pub fn finish(mut self) -> Result<Tail, ProtocolError> {
        // Ancestors of listed entries are implied directories: the original dialect lists
        // only files, and a directory holding listed entries must never be deleted.
        let mut implied = HashSet::new();
        for p in &self.listed {
            for a in p.ancestors() {
                if self.listed_files.contains(&a) {
                    return Err(ProtocolError::Inconsistent(format!(
                        "{p} is listed inside the file {a}"
                    )));
                }
                implied.insert(a);
            }
        }
        // A listed path is never deleted, whatever the server holds there: storing the file
        // or making the directory replaces a clashing entry in place. Deleting it at the
        // end would remove what was just stored.
        let kept = &self.kept;
        let mut delete: Vec<RelPath> = self
            .held
            .keys()
            .filter(|p| {
                !self.listed.contains(*p)
                    && !implied.contains(*p)
                    && !kept.contains(*p)
                    && !p.ancestors().any(|a| kept.contains(&a))
            })
            .cloned()
            .collect();
        delete.sort_by(|a, b| b.depth().cmp(&a.depth()).then_with(|| a.cmp(b)));
        self.make_dirs.sort();
        let mut touched = self.touched;
        touched.extend(
            delete
                .iter()
                .chain(self.make_dirs.iter())
                .filter_map(RelPath::parent),
        );
        let unchanged = &self.unchanged_dirs;
        let dir_times = self
            .dirs
            .into_iter()
            .filter(|(p, _)| !unchanged.contains(p) || touched.contains(p))
            .collect();
        Ok(Tail {
            delete,
            make_dirs: self.make_dirs,
            dir_times,
        })
    }
}

/// The whole plan at once: files to send (manifest order) and the tail. For tests and
/// tools; sessions use [`Planner`] batch by batch.
pub fn plan(
    manifest: &[Entry],
    held: impl IntoIterator<Item = (RelPath, Held)>,
    rule: Rule,
) -> Result<(Vec<RelPath>, Tail), ProtocolError> {
    let mut p = Planner::new(held, rule);
    let send = p.batch(manifest)?;
    Ok((send, p.finish()?))
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
        }
    }
    fn dir(path: &str) -> Entry {
        Entry {
            path: p(path),
            kind: EntryKind::Dir,
            size: 0,
            mtime: MTime::new(0, 0).unwrap(),
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
                    },
                )
            })
            .collect()
    }
    fn strs(v: &[RelPath]) -> Vec<&str> {
        v.iter().map(RelPath::as_str).collect()
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
                send: vec!["d/a", "b"],
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
                name: "removed files and emptied dirs are deleted deepest first",
                client: vec![file("keep", 1, 1)],
                server: vec![
                    file("keep", 1, 1),
                    dir("x"),
                    dir("x/y"),
                    file("x/y/z", 1, 1),
                ],
                send: vec![],
                delete: vec!["x/y/z", "x/y", "x"],
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
            .dir_times
            .iter()
            .map(|(p, m)| (p.as_str(), m.secs))
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

    proptest! {
        /// Applying the plan to the server's tree always yields exactly the client's tree,
        /// and the plan never deletes a listed file.
        #[test]
        fn applying_the_plan_yields_the_client_tree(client in tree(), server in tree()) {
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
                    ensure_dir(&mut result, a.as_str());
                }
                if result.get(path.as_str()).is_some_and(|(d, _, _)| *d) {
                    remove_tree(&mut result, path.as_str());
                }
                result.insert(path.as_str().to_owned(), client[path.as_str()]);
            }
            for d in &tail.delete {
                prop_assert!(!client.contains_key(d.as_str()), "deleted listed entry {}", d);
                let parents_ok = d.ancestors().all(|a| result.get(a.as_str()).is_some_and(|(d, _, _)| *d));
                if parents_ok {
                    remove_tree(&mut result, d.as_str());
                }
            }
            for m in &tail.make_dirs {
                for a in m.ancestors() {
                    ensure_dir(&mut result, a.as_str());
                }
                ensure_dir(&mut result, m.as_str());
            }
            prop_assert_eq!(result, client);
        }
    }
}

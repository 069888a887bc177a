//! Which entries of the client's folder are left out of a sync: gitignore semantics, as in
//! git and rsync's per-directory merge files, matched by the `ignore` crate.
//!
//! # Where patterns come from
//!
//! - **The command line** (`--exclude PATTERN`, repeatable, or `FILESYNC_EXCLUDE`): rooted
//!   at the synced folder, as if written in a gitignore file there (`/build` is the
//!   top-level `build` only; `*.tmp` matches at any depth).
//! - **`.filesyncignore` files** ([`IGNORE_FILE`]), in any folder of the tree: gitignore
//!   syntax, rooted at the folder that holds the file, applying to everything under it.
//!   They are ordinary files otherwise, and are synced unless a pattern excludes them.
//!
//! # Who decides
//!
//! The last matching pattern decides, as in git: within one source later lines win, and a
//! `!pattern` that matches re-includes. Sources are asked in this order, and the first
//! that has a matching pattern decides:
//!
//! 1. the command line;
//! 2. the `.filesyncignore` of the entry's own folder, then its parent's, and so on up to
//!    the root's (deeper files take precedence over shallower ones).
//!
//! An entry no pattern matches is included.
//!
//! **The command line has the highest precedence.** The person running the sync states
//! their intent there; the `.filesyncignore` files are part of the data being synced and
//! may be written by someone else. So `--exclude secrets/` is a guarantee that no file in
//! the tree can undo with a `!secrets/`, and a command-line `!pattern` overrides the tree's
//! files the other way (it re-includes what a `.filesyncignore` excluded). This is
//! rsync's order when `--exclude` comes before the merge-file rule; it is the reverse of
//! git's, where `core.excludesFile` and `info/exclude` are overridden by `.gitignore`s.
//!
//! # Excluded directories are not entered
//!
//! As in git, a directory that is excluded is not looked into: the walker skips it, so
//! a `!` pattern (in any source) cannot re-include a file below an excluded directory.
//! Exclude `dir/*` rather than `dir/` to be able to re-include some of its contents.
//!
//! # The walk
//!
//! An [`Excluder`] is built once per sync and asked about each entry in walk order
//! (depth-first, parents before children). It keeps one matcher per directory along the
//! current path, reading a directory's `.filesyncignore` when the directory itself is
//! asked about and found included, and dropping it when the walk leaves the directory:
//! memory is bounded by the depth of the tree, not its size. It touches the filesystem
//! only to read `.filesyncignore` files.
//!
//! # Broken `.filesyncignore` files
//!
//! A `.filesyncignore` that cannot be read, or that has a bad pattern or a line that is
//! not UTF-8, is never treated as empty or applied in part: either would sync files meant
//! to be excluded, or leave out (and so have the server delete) files meant to be kept.
//! [`Excluder::is_excluded`] returns an [`ExcludeError`] instead, naming the file, and the
//! walker should treat that directory as unreadable (list it as kept, do not descend), as
//! for a permission error. A broken `.filesyncignore` at the root, or a bad command-line
//! pattern, fails [`Excluder::new`]. A `.filesyncignore` that is a symlink, or not a
//! regular file, or larger than [`MAX_IGNORE_FILE_LEN`], is such an error too (symlinks are
//! not followed, as in the walk).
//!
//! # Syntax
//!
//! The `ignore` crate's gitignore dialect (the one ripgrep uses): `#` comments, `!`
//! negation, a leading `/` anchors, a trailing `/` matches directories only, a `/`
//! elsewhere anchors the pattern to its folder, `*`, `?`, `[...]`, `**`, backslash escapes,
//! and, unlike git, `{a,b}` alternation. Names are matched as bytes, so names that are not
//! UTF-8 are matched too; a pattern itself must be UTF-8. Matching is case-sensitive.

use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use ignore::Match;

/// The name of the per-directory pattern files.
pub const IGNORE_FILE: &str = ".filesyncignore";

/// The largest `.filesyncignore` read (1 MiB); a larger one is an error.
pub const MAX_IGNORE_FILE_LEN: u64 = 1 << 20;

/// Why patterns could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExcludeError {
    /// A command-line pattern is not a valid glob.
    #[error("bad exclude pattern {pattern:?}: {reason}")]
    Pattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `.filesyncignore` could not be read (or is not a regular file, or too large).
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The directory holding the file, relative to the synced folder (empty for the
        /// root): the directory to treat as unreadable.
        dir: PathBuf,
        /// The file's full path.
        path: PathBuf,
        /// The OS error, or what is wrong with the file.
        source: io::Error,
    },
    /// A line of a `.filesyncignore` is not a valid pattern (or not UTF-8).
    #[error("{}:{line}: bad pattern {pattern:?}: {reason}", path.display())]
    FilePattern {
        /// The directory holding the file, relative to the synced folder (empty for the
        /// root): the directory to treat as unreadable.
        dir: PathBuf,
        /// The file's full path.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// The line (lossily decoded if it is not UTF-8).
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ExcludeError {
    /// The directory (relative to the synced folder; empty for the root) whose
    /// `.filesyncignore` could not be used, which the walker should treat as unreadable;
    /// `None` for a bad command-line pattern.
    pub fn dir(&self) -> Option<&Path> {
        match self {
            ExcludeError::Pattern { .. } => None,
            ExcludeError::Read { dir, .. } | ExcludeError::FilePattern { dir, .. } => Some(dir),
        }
    }
}

/// One directory on the walk's current path, with its `.filesyncignore` if it has one.
#[derive(Debug)]
struct Frame {
    /// Relative to the synced folder; empty for the root.
    dir: PathBuf,
    ignore: Option<Gitignore>,
}

/// Decides which entries of the client's folder are excluded (see the [module
/// docs](self)). Built once per sync, then asked about every entry in walk order.
///
/// ```no_run
/// # use std::path::Path;
/// # use filesync_core::exclude::Excluder;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let root = Path::new("/srv/photos");
/// let mut excluder = Excluder::new(root, &["*.tmp".to_string()])?;
/// let mut walk = walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name().into_iter();
/// while let Some(entry) = walk.next() {
///     let entry = entry?;
///     let rel = entry.path().strip_prefix(root)?;
///     let is_dir = entry.file_type().is_dir();
///     match excluder.is_excluded(rel, is_dir) {
///         Ok(false) => { /* list `rel` */ }
///         Ok(true) => {
///             if is_dir {
///                 walk.skip_current_dir();
///             }
///         }
///         Err(e) => {
///             // `rel` (= e.dir()) is a directory whose `.filesyncignore` is unusable:
///             // warn, list it as kept, and do not descend.
///             eprintln!("warning: {e}");
///             walk.skip_current_dir();
///         }
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Excluder {
    root: PathBuf,
    /// The command-line patterns, rooted at the synced folder.
    cli: Gitignore,
    /// The directories along the current path, root first; each frame's directory is
    /// the parent of the next one's. Never empty: the root's frame is never popped.
    stack: Vec<Frame>,
}

impl Excluder {
    /// Starts excluding in the folder `root` with the command-line `patterns`, and reads
    /// the root's `.filesyncignore`. Fails on a bad pattern (naming it) or a root
    /// `.filesyncignore` that cannot be used.
    pub fn new(root: &Path, patterns: &[String]) -> Result<Self, ExcludeError> {
        let mut builder = matcher_builder();
        for pattern in patterns {
            builder
                .add_line(None, pattern)
                .map_err(|e| ExcludeError::Pattern {
                    pattern: pattern.clone(),
                    reason: reason(e),
                })?;
        }
        let cli = builder.build().map_err(|e| ExcludeError::Pattern {
            pattern: patterns.join(" "),
            reason: reason(e),
        })?;
        let mut excluder = Excluder {
            root: root.to_path_buf(),
            cli,
            stack: Vec::new(),
        };
        excluder.push(Path::new(""))?;
        Ok(excluder)
    }

    /// Whether the entry at `rel` (relative to the synced folder, made of plain names) is
    /// excluded; `is_dir` tells whether it is a directory.
    ///
    /// Entries must be asked about in walk order: depth-first, each directory before its
    /// contents, and the contents of an excluded directory not at all (they would be
    /// reported excluded). When an included directory is asked about, its
    /// `.filesyncignore` is read, and an `Err` then means that the directory must be
    /// treated as unreadable (see [`ExcludeError::dir`]); the walk may go on with its
    /// siblings. Matchers of directories the walk has left are dropped.
    pub fn is_excluded(&mut self, rel: &Path, is_dir: bool) -> Result<bool, ExcludeError> {
        debug_assert!(
            rel.components().all(|c| matches!(c, Component::Normal(_))),
            "not a relative path of plain names: {}",
            rel.display()
        );
        let Some(parent) = rel.parent() else {
            return Ok(false); // the root itself
        };
        if self.enter(parent)? {
            return Ok(true);
        }
        let excluded = self.decide(rel, is_dir);
        if is_dir && !excluded {
            self.push(rel)?;
        }
        Ok(excluded)
    }

    /// How many directories' matchers are held: the depth of the current path plus one
    /// for the root. Bounded by the depth of the tree; for tests and diagnostics.
    pub fn depth(&self) -> usize {
        self.stack.len()
    }

    /// Makes `dir` the top of the stack: pops the directories the walk has left, and
    /// pushes those it entered without asking (which a walker keeping to walk order does
    /// not do). True if one of those is itself excluded.
    fn enter(&mut self, dir: &Path) -> Result<bool, ExcludeError> {
        while !dir.starts_with(&self.top().dir) {
            self.stack.pop();
        }
        let held = self.top().dir.components().count();
        for n in held..dir.components().count() {
            let sub: PathBuf = dir.components().take(n + 1).collect();
            if self.decide(&sub, true) {
                return Ok(true);
            }
            self.push(&sub)?;
        }
        Ok(false)
    }

    /// The verdict for `rel`, whose parent is the top of the stack.
    fn decide(&self, rel: &Path, is_dir: bool) -> bool {
        let frames = self.stack.iter().rev().filter_map(|f| {
            let ignore = f.ignore.as_ref()?;
            Some((ignore, rel.strip_prefix(&f.dir).ok()?))
        });
        for (matcher, path) in std::iter::once((&self.cli, rel)).chain(frames) {
            match matcher.matched(path, is_dir) {
                Match::Ignore(_) => return true,
                Match::Whitelist(_) => return false,
                Match::None => {}
            }
        }
        false
    }

    fn top(&self) -> &Frame {
        self.stack.last().expect("the root's frame is never popped")
    }

    /// Reads `dir`'s `.filesyncignore` and pushes its frame.
    fn push(&mut self, dir: &Path) -> Result<(), ExcludeError> {
        let ignore = load(&self.root, dir)?;
        self.stack.push(Frame {
            dir: dir.to_path_buf(),
            ignore,
        });
        Ok(())
    }
}

/// A builder for one source's patterns. Paths are always matched relative to the
/// source's directory, so the builder's root is one that no relative path starts with:
/// the crate's stripping of its root from candidate paths never applies.
fn matcher_builder() -> GitignoreBuilder {
    GitignoreBuilder::new("/")
}

/// The message of a pattern error, without the crate's repetition of the pattern.
fn reason(e: ignore::Error) -> String {
    match e {
        ignore::Error::Glob { err, .. } => err,
        e => e.to_string(),
    }
}

/// The matcher of `dir`'s `.filesyncignore`; `None` if it has none or it has no patterns.
fn load(root: &Path, dir: &Path) -> Result<Option<Gitignore>, ExcludeError> {
    let path = root.join(dir).join(IGNORE_FILE);
    let read_error = |source| ExcludeError::Read {
        dir: dir.to_path_buf(),
        path: path.clone(),
        source,
    };
    let meta = match fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_error(e)),
    };
    if !meta.is_file() {
        let what = if meta.is_symlink() {
            "is a symlink, which is not followed"
        } else {
            "is not a regular file"
        };
        return Err(read_error(io::Error::new(io::ErrorKind::InvalidData, what)));
    }
    let mut bytes = Vec::new();
    fs::File::open(&path)
        .and_then(|f| f.take(MAX_IGNORE_FILE_LEN + 1).read_to_end(&mut bytes))
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_IGNORE_FILE_LEN {
        return Err(read_error(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_IGNORE_FILE_LEN} bytes"),
        )));
    }
    let mut builder = matcher_builder();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let pattern_error = |reason: String| ExcludeError::FilePattern {
            dir: dir.to_path_buf(),
            path: path.clone(),
            line: i + 1,
            pattern: String::from_utf8_lossy(line).into_owned(),
            reason,
        };
        let text = std::str::from_utf8(line).map_err(|e| pattern_error(e.to_string()))?;
        let text = if i == 0 {
            text.trim_start_matches('\u{feff}')
        } else {
            text
        };
        builder
            .add_line(Some(path.clone()), text)
            .map_err(|e| pattern_error(reason(e)))?;
    }
    let matcher = builder.build().map_err(|e| ExcludeError::FilePattern {
        dir: dir.to_path_buf(),
        path: path.clone(),
        line: 0,
        pattern: String::new(),
        reason: reason(e),
    })?;
    Ok((!matcher.is_empty()).then_some(matcher))
}

#[cfg(test)]
mod tests {
    use std::ffi::{OsStr, OsString};
    use std::os::unix::ffi::OsStrExt;

    use super::*;

    /// A temp folder built from `(path, contents)` pairs; a path ending in `/` is a
    /// directory.
    fn tree(entries: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, contents) in entries {
            let full = dir.path().join(path);
            if path.ends_with('/') {
                fs::create_dir_all(&full).unwrap();
            } else {
                fs::create_dir_all(full.parent().unwrap()).unwrap();
                fs::write(&full, contents).unwrap();
            }
        }
        dir
    }

    /// The included entries of `root`, walked as the client's walker does (sorted,
    /// depth-first, excluded directories skipped), as `/`-joined strings, directories
    /// with a trailing `/`.
    fn walk(root: &Path, patterns: &[&str]) -> Vec<String> {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        let mut excluder = Excluder::new(root, &patterns).unwrap();
        let mut included = Vec::new();
        let mut it = walkdir::WalkDir::new(root)
            .min_depth(1)
            .sort_by_file_name()
            .into_iter();
        while let Some(entry) = it.next() {
            let entry = entry.unwrap();
            let rel = entry.path().strip_prefix(root).unwrap();
            let is_dir = entry.file_type().is_dir();
            if excluder.is_excluded(rel, is_dir).unwrap() {
                if is_dir {
                    it.skip_current_dir();
                }
            } else {
                let mut s = rel.to_string_lossy().into_owned();
                if is_dir {
                    s.push('/');
                }
                included.push(s);
            }
        }
        included
    }

    #[test]
    fn cli_patterns() {
        let dir = tree(&[
            ("a.tmp", ""),
            ("keep.txt", ""),
            ("build/out.o", ""),
            ("src/build/gen.rs", ""),
            ("src/cache/c", ""),
            ("src/main.rs", ""),
            ("cache", ""),
            ("deep/er/x", ""),
            ("deep/er/y", ""),
            ("x/z", ""),
        ]);
        let got = walk(dir.path(), &["*.tmp", "/build/", "cache/", "**/x"]);
        assert_eq!(
            got,
            [
                "cache", // a file: `cache/` matches directories only
                "deep/",
                "deep/er/",
                "deep/er/y",
                "keep.txt",
                "src/",
                "src/build/", // `/build/` is anchored at the root
                "src/build/gen.rs",
                "src/main.rs",
            ]
        );
    }

    #[test]
    fn ignore_files_at_root_and_in_subfolder() {
        let dir = tree(&[
            (".filesyncignore", "*.log\n/top\n"),
            ("a.log", ""),
            ("top", ""),
            ("sub/.filesyncignore", "# comment\n/anchored\nanywhere\n"),
            ("sub/anchored", ""),
            ("sub/anywhere", ""),
            ("sub/top", ""), // root's `/top` is the root's only
            ("sub/b.log", ""),
            ("sub/inner/anchored", ""), // sub's `/anchored` is sub's only
            ("sub/inner/anywhere", ""),
            ("other/anywhere", ""), // sub's patterns stay in sub
        ]);
        let got = walk(dir.path(), &[]);
        assert_eq!(
            got,
            [
                ".filesyncignore",
                "other/",
                "other/anywhere",
                "sub/",
                "sub/.filesyncignore",
                "sub/inner/",
                "sub/inner/anchored",
                "sub/top",
            ]
        );
    }

    #[test]
    fn negation_within_one_file_last_line_wins() {
        let dir = tree(&[
            (
                ".filesyncignore",
                "*.log\n!keep.log\nkeep2.log\n!keep2.log\nx.log\n",
            ),
            ("a.log", ""),
            ("keep.log", ""),
            ("keep2.log", ""),
            ("x.log", ""),
        ]);
        let got = walk(dir.path(), &[]);
        assert_eq!(got, [".filesyncignore", "keep.log", "keep2.log"]);
    }

    #[test]
    fn deeper_file_overrides_shallower() {
        let dir = tree(&[
            (".filesyncignore", "*.log\n"),
            ("a.log", ""),
            ("sub/.filesyncignore", "!*.log\n*.txt\n"),
            ("sub/b.log", ""),
            ("sub/c.txt", ""),
            ("sub/deeper/d.log", ""),
            ("e.txt", ""),
        ]);
        let got = walk(dir.path(), &[]);
        assert_eq!(
            got,
            [
                ".filesyncignore",
                "e.txt",
                "sub/",
                "sub/.filesyncignore",
                "sub/b.log",
                "sub/deeper/",
                "sub/deeper/d.log",
            ]
        );
    }

    #[test]
    fn cli_takes_precedence_over_files() {
        let dir = tree(&[
            (".filesyncignore", "!*.tmp\n*.bak\n"),
            ("sub/.filesyncignore", "!secret\n"),
            ("a.tmp", ""),
            ("a.bak", ""),
            ("keep.bak", ""),
            ("sub/secret", ""),
        ]);
        let got = walk(dir.path(), &["*.tmp", "secret", "!keep.bak"]);
        assert_eq!(
            got,
            [".filesyncignore", "keep.bak", "sub/", "sub/.filesyncignore"]
        );
    }

    #[test]
    fn directory_only_patterns() {
        let dir = tree(&[("logs/", ""), ("a/logs", ""), ("b/logs/x", "")]);
        let got = walk(dir.path(), &["logs/"]);
        assert_eq!(got, ["a/", "a/logs", "b/"]);
    }

    #[test]
    fn excluded_directory_hides_its_contents() {
        let dir = tree(&[
            (".filesyncignore", "build/\n!build/keep\n"),
            ("build/keep", ""),
            ("build/.filesyncignore", "!*\n"),
            ("out/keep", ""),
            ("out2/keep", ""),
        ]);
        let got = walk(dir.path(), &["out", "!out/keep", "out2/*", "!out2/keep"]);
        // `out2/*` excludes the contents, not the directory, so `!` can re-include.
        assert_eq!(got, [".filesyncignore", "out2/", "out2/keep"]);
    }

    #[test]
    fn entries_below_an_excluded_directory_are_excluded_if_asked() {
        let dir = tree(&[("build/sub/x", ""), ("build/sub/.filesyncignore", "!*\n")]);
        let mut ex = Excluder::new(dir.path(), &["build/".to_string()]).unwrap();
        assert!(ex.is_excluded(Path::new("build/sub/x"), false).unwrap());
        assert!(!ex.is_excluded(Path::new("other"), false).unwrap());
    }

    #[test]
    fn non_utf8_names() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = OsStr::from_bytes(b"caf\xe9.tmp");
        let txt = OsStr::from_bytes(b"caf\xe9.txt");
        fs::write(dir.path().join(tmp), "").unwrap();
        fs::write(dir.path().join(txt), "").unwrap();
        let mut ex = Excluder::new(dir.path(), &["*.tmp".to_string()]).unwrap();
        assert!(ex.is_excluded(Path::new(tmp), false).unwrap());
        assert!(!ex.is_excluded(Path::new(txt), false).unwrap());
        // And in a directory whose name is not UTF-8, with an anchored file pattern.
        let sub: OsString = OsStr::from_bytes(b"d\xff").to_owned();
        fs::create_dir(dir.path().join(&sub)).unwrap();
        fs::write(dir.path().join(&sub).join(IGNORE_FILE), "/*.txt\n").unwrap();
        let mut ex = Excluder::new(dir.path(), &[]).unwrap();
        assert!(!ex.is_excluded(Path::new(&sub), true).unwrap());
        assert!(ex.is_excluded(&Path::new(&sub).join(txt), false).unwrap());
        assert!(!ex.is_excluded(&Path::new(&sub).join(tmp), false).unwrap());
    }

    #[test]
    fn matchers_are_dropped_when_the_walk_leaves_a_directory() {
        let dir = tree(&[
            ("a/b/c/.filesyncignore", "x\n"),
            ("a/b/c/x", ""),
            ("a/b/y", ""),
            ("z/x", ""),
        ]);
        let mut ex = Excluder::new(dir.path(), &[]).unwrap();
        assert_eq!(ex.depth(), 1);
        assert!(!ex.is_excluded(Path::new("a"), true).unwrap());
        assert!(!ex.is_excluded(Path::new("a/b"), true).unwrap());
        assert!(!ex.is_excluded(Path::new("a/b/c"), true).unwrap());
        assert_eq!(ex.depth(), 4);
        assert!(ex.is_excluded(Path::new("a/b/c/x"), false).unwrap());
        assert_eq!(ex.depth(), 4);
        assert!(!ex.is_excluded(Path::new("a/b/y"), false).unwrap());
        assert_eq!(ex.depth(), 3);
        assert!(!ex.is_excluded(Path::new("z"), true).unwrap());
        assert_eq!(ex.depth(), 2);
        // c's pattern went with c.
        assert!(!ex.is_excluded(Path::new("z/x"), false).unwrap());
        assert_eq!(ex.depth(), 2);
        assert!(!ex.is_excluded(Path::new("zz"), false).unwrap());
        assert_eq!(ex.depth(), 1);
    }

    #[test]
    fn bad_cli_pattern_is_named() {
        let err =
            Excluder::new(Path::new("/nonexistent"), &["ok".into(), "a{b".into()]).unwrap_err();
        assert!(matches!(&err, ExcludeError::Pattern { pattern, .. } if pattern == "a{b"));
        assert!(err.to_string().contains("\"a{b\""), "{err}");
        assert_eq!(err.dir(), None);
    }

    #[test]
    fn bad_ignore_file_fails_its_directory() {
        let dir = tree(&[
            ("bad/.filesyncignore", "ok\n\n[z-a]\n"),
            ("bad/x", ""),
            ("good/x", ""),
        ]);
        let mut ex = Excluder::new(dir.path(), &[]).unwrap();
        let err = ex.is_excluded(Path::new("bad"), true).unwrap_err();
        match &err {
            ExcludeError::FilePattern {
                dir, line, pattern, ..
            } => {
                assert_eq!(dir, Path::new("bad"));
                assert_eq!(*line, 3);
                assert_eq!(pattern, "[z-a]");
            }
            e => panic!("{e:?}"),
        }
        assert_eq!(err.dir(), Some(Path::new("bad")));
        assert!(err.to_string().contains(".filesyncignore:3"), "{err}");
        // The walk goes on with the siblings.
        assert!(!ex.is_excluded(Path::new("good"), true).unwrap());
        assert!(!ex.is_excluded(Path::new("good/x"), false).unwrap());
    }

    #[test]
    fn non_utf8_ignore_file_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(IGNORE_FILE), b"a\r\nb\xff\n").unwrap();
        let err = Excluder::new(dir.path(), &[]).unwrap_err();
        assert!(
            matches!(&err, ExcludeError::FilePattern { line: 2, .. }),
            "{err:?}"
        );
        assert_eq!(err.dir(), Some(Path::new("")));
    }

    #[test]
    fn crlf_and_bom_are_tolerated() {
        let dir = tree(&[
            (".filesyncignore", "\u{feff}a\r\nb\r\n"),
            ("a", ""),
            ("b", ""),
            ("c", ""),
        ]);
        assert_eq!(walk(dir.path(), &[]), [".filesyncignore", "c"]);
    }

    #[test]
    fn unusable_ignore_file_is_an_error_not_empty() {
        let dir = tree(&[("d/.filesyncignore/", ""), ("e/", ""), ("f/x", "")]);
        std::os::unix::fs::symlink("../f/x", dir.path().join("e").join(IGNORE_FILE)).unwrap();
        let mut ex = Excluder::new(dir.path(), &[]).unwrap();
        let err = ex.is_excluded(Path::new("d"), true).unwrap_err();
        assert!(matches!(&err, ExcludeError::Read { dir, .. } if dir == Path::new("d")));
        let err = ex.is_excluded(Path::new("e"), true).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        // A root one that cannot be read fails the sync.
        let root = tree(&[(".filesyncignore/", "")]);
        assert!(matches!(
            Excluder::new(root.path(), &[]),
            Err(ExcludeError::Read { .. })
        ));
    }

    #[test]
    fn ignore_file_can_exclude_itself() {
        let dir = tree(&[(".filesyncignore", ".filesyncignore\n"), ("a", "")]);
        assert_eq!(walk(dir.path(), &[]), ["a"]);
    }
}

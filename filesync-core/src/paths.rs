//! Validated names that arrive from the network: relative paths and client ids.
//!
//! Pure: no filesystem access. Every path a peer sends is parsed into a [`RelPath`] before
//! anything else looks at it, so "is this path safe to join under a client folder?" is
//! answered once, here, by construction.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Longest accepted relative path, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest accepted path component, in bytes (Linux `NAME_MAX`).
pub const MAX_COMPONENT_LEN: usize = 255;
/// Longest accepted client id, in bytes.
pub const MAX_CLIENT_ID_LEN: usize = 64;

/// Why a path or id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The path was empty.
    #[error("empty path")]
    Empty,
    /// The path is longer than [`MAX_PATH_LEN`] or a component longer than
    /// [`MAX_COMPONENT_LEN`].
    #[error("path too long")]
    TooLong,
    /// The path starts with `/` or a drive prefix such as `C:`.
    #[error("absolute path {0:?}")]
    Absolute(String),
    /// A component is empty (`a//b`, trailing `/`), `.` or `..`.
    #[error("path {0:?} has an empty, `.` or `..` component")]
    BadComponent(String),
    /// The path holds a NUL byte or a backslash.
    #[error("path {0:?} holds a NUL or a backslash")]
    BadCharacter(String),
    /// A local path is not valid UTF-8 and cannot be put on the wire.
    #[error("path {0:?} is not valid UTF-8")]
    NotUtf8(PathBuf),
    /// A client id outside `[A-Za-z0-9._-]{1,64}`, or `.` / `..`.
    #[error("invalid client id {0:?}: use 1 to 64 of A-Z a-z 0-9 . _ -, not . or ..")]
    BadClientId(String),
}

/// A normalised relative path: `/`-separated, non-empty components, never absolute, never
/// `.` or `..`, no NUL, no backslash, bounded length.
///
/// Joining a `RelPath` under a directory can therefore never name anything outside it
/// (symlinks aside, which the store refuses separately).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RelPath(String);

impl RelPath {
    /// Parses a wire path. This is the only way to build a `RelPath` from text.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_PATH_LEN {
            return Err(NameError::TooLong);
        }
        if s.contains('\0') || s.contains('\\') {
            return Err(NameError::BadCharacter(s.to_owned()));
        }
        if s.starts_with('/') || has_drive_prefix(s) {
            return Err(NameError::Absolute(s.to_owned()));
        }
        for c in s.split('/') {
            if c.is_empty() || c == "." || c == ".." {
                return Err(NameError::BadComponent(s.to_owned()));
            }
            if c.len() > MAX_COMPONENT_LEN {
                return Err(NameError::TooLong);
            }
        }
        Ok(Self(s.to_owned()))
    }

    /// Builds a `RelPath` from a path relative to a local root, as found by a tree walk.
    pub fn from_local(p: &Path) -> Result<Self, NameError> {
        let mut out = String::new();
        for c in p.components() {
            match c {
                Component::Normal(os) => {
                    let s = os
                        .to_str()
                        .ok_or_else(|| NameError::NotUtf8(p.to_owned()))?;
                    if !out.is_empty() {
                        out.push('/');
                    }
                    out.push_str(s);
                }
                Component::CurDir => {}
                _ => return Err(NameError::BadComponent(p.display().to_string())),
            }
        }
        Self::parse(&out)
    }

    /// The path as sent on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last component (the original protocol's `name` field).
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The parent path, or `None` for a top-level entry.
    pub fn parent(&self) -> Option<RelPath> {
        self.0.rfind('/').map(|i| RelPath(self.0[..i].to_owned()))
    }

    /// Every proper ancestor, outermost first: `a/b/c` gives `a`, `a/b`.
    pub fn ancestors(&self) -> impl Iterator<Item = RelPath> + '_ {
        self.0
            .match_indices('/')
            .map(|(i, _)| RelPath(self.0[..i].to_owned()))
    }

    /// The components, outermost first.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Whether `self` is a proper ancestor of `other` (`a` of `a/b`, not of `ab`).
    pub fn is_ancestor_of(&self, other: &RelPath) -> bool {
        other.0.len() > self.0.len()
            && other.0.starts_with(&self.0)
            && other.0.as_bytes()[self.0.len()] == b'/'
    }

    /// Tree order: components compared one by one, each by its bytes; a directory comes
    /// before everything inside it, and everything inside it comes before its next
    /// sibling. This is the order of a depth-first walk that visits each directory's
    /// entries sorted by name, on client and server alike, so a manifest and an index can
    /// be merged in one pass. It differs from byte order: `a/b` < `a.b` here, since `/`
    /// ends a component and so sorts before any byte a name can hold.
    pub fn tree_cmp(&self, other: &RelPath) -> std::cmp::Ordering {
        let key = |b: u8| if b == b'/' { 0 } else { b };
        self.0.bytes().map(key).cmp(other.0.bytes().map(key))
    }

    /// Number of components.
    pub fn depth(&self) -> usize {
        self.components().count()
    }

    /// `base` joined with this path. Stays under `base` by construction.
    pub fn to_path(&self, base: &Path) -> PathBuf {
        let mut p = base.to_path_buf();
        p.extend(self.components());
        p
    }
}

/// `C:` or `c:` as the first component, which Windows would read as a drive.
fn has_drive_prefix(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':'
}

impl TryFrom<String> for RelPath {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<RelPath> for String {
    fn from(p: RelPath) -> String {
        p.0
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A client's identity: `[A-Za-z0-9._-]{1,64}`, not `.` or `..`. It names the client's
/// folder on the server (`client_<id>`), so it must be a safe single path component.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientId(String);

impl ClientId {
    /// Parses an id given on the command line or by a peer.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let ok = !s.is_empty()
            && s.len() <= MAX_CLIENT_ID_LEN
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::BadClientId(s.to_owned()))
        }
    }

    /// The id derived from a client's IPv4 address when it sends none, as the original
    /// does: `10.0.0.7` becomes `10_0_0_7`. IPv6 colons become `_` too.
    pub fn from_addr(ip: std::net::IpAddr) -> Self {
        // A server bound to `::` sees IPv4 clients as `::ffff:10.0.0.7`; they are still
        // `client_10_0_0_7`.
        let s: String = ip
            .to_canonical()
            .to_string()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        Self(s)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The folder name under the server root: `client_<id>`.
    pub fn folder_name(&self) -> String {
        format!("client_{}", self.0)
    }
}

impl TryFrom<String> for ClientId {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<ClientId> for String {
    fn from(p: ClientId) -> String {
        p.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_normal_paths() {
        for ok in [
            "a",
            "a/b",
            "dir/x.txt",
            ".hidden",
            "a..b",
            "...",
            "é/ü",
            "a b/c",
        ] {
            assert_eq!(RelPath::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_hostile_paths() {
        let long = "a".repeat(MAX_COMPONENT_LEN + 1);
        let too_long = ["a"; 3000].join("/");
        for bad in [
            "",
            "/",
            "/etc/passwd",
            "..",
            "../x",
            "a/../b",
            "a/..",
            ".",
            "./a",
            "a/./b",
            "a//b",
            "a/",
            "C:",
            "c:/x",
            "C:x",
            "a\\b",
            "..\\x",
            "a\0b",
            &long,
            &too_long,
        ] {
            assert!(RelPath::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn names_and_parents() {
        let p = RelPath::parse("a/b/c.txt").unwrap();
        assert_eq!(p.file_name(), "c.txt");
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        let anc: Vec<_> = p.ancestors().map(String::from).collect();
        assert_eq!(anc, ["a", "a/b"]);
        assert_eq!(RelPath::parse("x").unwrap().parent(), None);
        assert_eq!(p.to_path(Path::new("/srv")), Path::new("/srv/a/b/c.txt"));
    }

    #[test]
    fn from_local_normalises() {
        let p = RelPath::from_local(Path::new("./a/b")).unwrap();
        assert_eq!(p.as_str(), "a/b");
        assert!(RelPath::from_local(Path::new("/abs")).is_err());
        assert!(RelPath::from_local(Path::new("a/../b")).is_err());
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<RelPath>(r#""../x""#).is_err());
        assert!(serde_json::from_str::<ClientId>(r#""../x""#).is_err());
        let p: RelPath = serde_json::from_str(r#""a/b""#).unwrap();
        assert_eq!(p.as_str(), "a/b");
    }

    #[test]
    fn client_ids() {
        for ok in ["a", "lab-7", "A.b_c", &"x".repeat(64), "..."] {
            assert!(ClientId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a b",
            &"x".repeat(65),
            "é",
            "a\0",
        ] {
            assert!(ClientId::parse(bad).is_err(), "{bad:?}");
        }
        let ip: std::net::IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(ClientId::from_addr(ip).folder_name(), "client_10_0_0_7");
        let mapped: std::net::IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(ClientId::from_addr(mapped).folder_name(), "client_10_0_0_7");
    }

    proptest! {
        #[test]
        fn never_escapes(s in "(\\.\\.|\\.|/|a|b|\\\\|:|C|\\x00){0,12}") {
            if let Ok(p) = RelPath::parse(&s) {
                let joined = p.to_path(Path::new("/base"));
                prop_assert!(joined.starts_with("/base"));
                for c in joined.strip_prefix("/base").unwrap().components() {
                    prop_assert!(matches!(c, Component::Normal(_)), "{:?}", joined);
                }
            }
        }

        #[test]
        fn arbitrary_strings_never_escape(s in any::<String>()) {
            if let Ok(p) = RelPath::parse(&s) {
                let joined = p.to_path(Path::new("/base"));
                for c in joined.strip_prefix("/base").unwrap().components() {
                    prop_assert!(matches!(c, Component::Normal(_)));
                }
                prop_assert_eq!(RelPath::parse(p.as_str()).unwrap(), p);
            }
        }

        #[test]
        fn ids_are_single_safe_components(s in any::<String>()) {
            if let Ok(id) = ClientId::parse(&s) {
                prop_assert!(RelPath::parse(&id.folder_name()).unwrap().depth() == 1);
            }
        }
    }
}

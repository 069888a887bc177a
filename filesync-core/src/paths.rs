//! Validated names that arrive from the network: relative paths, symlink targets and
//! client ids.
//!
//! Pure: no filesystem access. Every path a peer sends is parsed into a [`RelPath`] before
//! anything else looks at it, so "is this path safe to join under a client folder?" is
//! answered once, here, by construction.
//!
//! Names are bytes, as Linux has them: any byte but `/` and NUL may be part of a name, in
//! any encoding or none. On the wire, postcard carries the bytes as they are; JSON carries
//! a name that is valid UTF-8 as a string and any other as `{"hex": "…"}` (see
//! [`wire_name`] and `spec/PROTOCOL.md` §5).

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Longest accepted relative path, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest accepted path component, in bytes (Linux `NAME_MAX`).
pub const MAX_COMPONENT_LEN: usize = 255;
/// Longest accepted client id, in bytes.
pub const MAX_CLIENT_ID_LEN: usize = 64;
/// Longest accepted symlink target, in bytes (`PATH_MAX` less the terminating NUL).
pub const MAX_LINK_TARGET_LEN: usize = 4095;

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
    /// The path starts with `/`.
    #[error("absolute path {0}")]
    Absolute(String),
    /// A component is empty (`a//b`, trailing `/`), `.` or `..`.
    #[error("path {0} has an empty, `.` or `..` component")]
    BadComponent(String),
    /// The path or link target holds a NUL byte.
    #[error("{0} holds a NUL byte")]
    BadCharacter(String),
    /// A name is not valid UTF-8, where a peer (the original dialect) needs text.
    #[error("{0} is not valid UTF-8")]
    NotUtf8(String),
    /// A symlink target that is empty, too long or holds a NUL.
    #[error("bad symlink target {0}")]
    BadLinkTarget(String),
    /// A client id outside `[A-Za-z0-9._-]{1,64}`, or `.` / `..`.
    #[error("invalid client id {0:?}: use 1 to 64 of A-Z a-z 0-9 . _ -, not . or ..")]
    BadClientId(String),
}

/// A normalised relative path: `/`-separated, non-empty components, never absolute, never
/// `.` or `..`, no NUL, bounded length. Any other byte may appear, valid UTF-8 or not:
/// `caf\xE9.txt` and `back\slash.txt` are names like any other.
///
/// Joining a `RelPath` under a directory can therefore never name anything outside it
/// (symlinks aside, which the store refuses separately).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(Vec<u8>);

impl RelPath {
    /// Parses a path given as text (tests, the original dialect, the command line).
    pub fn parse(s: &str) -> Result<Self, NameError> {
        Self::from_bytes(s.as_bytes())
    }

    /// Parses a wire path of any bytes. This and [`parse`](Self::parse) are the only ways
    /// to build a `RelPath` from outside.
    pub fn from_bytes(b: &[u8]) -> Result<Self, NameError> {
        if b.is_empty() {
            return Err(NameError::Empty);
        }
        if b.len() > MAX_PATH_LEN {
            return Err(NameError::TooLong);
        }
        if b.contains(&0) {
            return Err(NameError::BadCharacter(escaped(b)));
        }
        if b[0] == b'/' {
            return Err(NameError::Absolute(escaped(b)));
        }
        for c in b.split(|&x| x == b'/') {
            if c.is_empty() || c == b"." || c == b".." {
                return Err(NameError::BadComponent(escaped(b)));
            }
            if c.len() > MAX_COMPONENT_LEN {
                return Err(NameError::TooLong);
            }
        }
        Ok(Self(b.to_vec()))
    }

    /// Builds a `RelPath` from a path relative to a local root, as found by a tree walk.
    pub fn from_local(p: &Path) -> Result<Self, NameError> {
        let mut out = Vec::new();
        for c in p.components() {
            match c {
                Component::Normal(os) => {
                    if !out.is_empty() {
                        out.push(b'/');
                    }
                    out.extend_from_slice(os.as_bytes());
                }
                Component::CurDir => {}
                _ => return Err(NameError::BadComponent(escaped(p.as_os_str().as_bytes()))),
            }
        }
        Self::from_bytes(&out)
    }

    /// The path's bytes, as sent on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The path as text, if it is valid UTF-8.
    pub fn to_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The path as a relative filesystem path.
    pub fn as_path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.0))
    }

    /// The last component (the original protocol's `name` field).
    pub fn file_name(&self) -> &[u8] {
        self.0.rsplit(|&b| b == b'/').next().unwrap_or(&self.0)
    }

    /// The parent path, or `None` for a top-level entry.
    pub fn parent(&self) -> Option<RelPath> {
        self.slash_positions()
            .last()
            .map(|i| RelPath(self.0[..i].to_vec()))
    }

    /// Every proper ancestor, outermost first: `a/b/c` gives `a`, `a/b`.
    pub fn ancestors(&self) -> impl Iterator<Item = RelPath> + '_ {
        self.slash_positions()
            .map(|i| RelPath(self.0[..i].to_vec()))
    }

    fn slash_positions(&self) -> impl DoubleEndedIterator<Item = usize> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'/')
            .map(|(i, _)| i)
    }

    /// The components, outermost first.
    pub fn components(&self) -> impl Iterator<Item = &OsStr> {
        self.0.split(|&b| b == b'/').map(OsStr::from_bytes)
    }

    /// Whether `self` is a proper ancestor of `other` (`a` of `a/b`, not of `ab`).
    pub fn is_ancestor_of(&self, other: &RelPath) -> bool {
        other.0.len() > self.0.len()
            && other.0.starts_with(&self.0)
            && other.0[self.0.len()] == b'/'
    }

    /// Tree order: components compared one by one, each by its bytes; a directory comes
    /// before everything inside it, and everything inside it comes before its next
    /// sibling. This is the order of a depth-first walk that visits each directory's
    /// entries sorted by name, on client and server alike, so a manifest and an index can
    /// be merged in one pass. It differs from byte order: `a/b` < `a.b` here, since `/`
    /// ends a component and so sorts before any byte a name can hold.
    pub fn tree_cmp(&self, other: &RelPath) -> std::cmp::Ordering {
        let key = |&b: &u8| if b == b'/' { 0 } else { b };
        self.0.iter().map(key).cmp(other.0.iter().map(key))
    }

    /// Number of components.
    pub fn depth(&self) -> usize {
        self.components().count()
    }

    /// `base` joined with this path. Stays under `base` by construction.
    pub fn to_path(&self, base: &Path) -> PathBuf {
        base.join(self.as_path())
    }
}

/// Bytes for people: valid UTF-8 as it is, every other byte as `\xNN`.
fn escaped(b: &[u8]) -> String {
    let mut s = String::new();
    for chunk in b.utf8_chunks() {
        s.push_str(chunk.valid());
        for x in chunk.invalid() {
            s.push_str(&format!("\\x{x:02X}"));
        }
    }
    s
}

impl fmt::Display for RelPath {
    /// The path for logs and messages: bytes that are not UTF-8 appear as `\xNN`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escaped(&self.0))
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl Serialize for RelPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        wire_name::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let b = wire_name::deserialize(d)?;
        RelPath::from_bytes(&b).map_err(serde::de::Error::custom)
    }
}

/// A symlink's target, verbatim: 1 to [`MAX_LINK_TARGET_LEN`] bytes, no NUL, otherwise
/// anything (absolute, dangling, through `..`). It is stored as the link's text and never
/// resolved: neither side follows a symlink.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LinkTarget(Vec<u8>);

impl LinkTarget {
    /// Checks a target read from a link or the wire.
    pub fn from_bytes(b: &[u8]) -> Result<Self, NameError> {
        if b.is_empty() || b.len() > MAX_LINK_TARGET_LEN || b.contains(&0) {
            return Err(NameError::BadLinkTarget(escaped(b)));
        }
        Ok(Self(b.to_vec()))
    }

    /// The target's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The target as a path, to give to `symlink(2)`; never to be opened.
    pub fn as_path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.0))
    }
}

impl fmt::Display for LinkTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escaped(&self.0))
    }
}

impl fmt::Debug for LinkTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl Serialize for LinkTarget {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        wire_name::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for LinkTarget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let b = wire_name::deserialize(d)?;
        LinkTarget::from_bytes(&b).map_err(serde::de::Error::custom)
    }
}

/// How a name of any bytes is written in each encoding.
///
/// - postcard (and any binary format): serde bytes, a varint length then the bytes. For a
///   UTF-8 name this is the same bytes as a serde string, so version 2 postcard vectors of
///   UTF-8 names are unchanged.
/// - JSON (any human-readable format): a name that is valid UTF-8 is a JSON string, as
///   before; any other is the object `{"hex": "<lowercase hex of every byte>"}`. The two
///   shapes cannot be confused, the common case stays readable, and no character of a
///   UTF-8 name is ever escaped differently (unlike `%XX` or surrogate-escape schemes,
///   which change names holding `%` or cannot be represented by strict JSON parsers).
pub mod wire_name {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// The JSON form of a name that is not UTF-8.
    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Hex {
        hex: String,
    }

    /// Writes `b` as bytes (binary formats), a string or `{"hex": …}` (JSON).
    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            return s.serialize_bytes(b);
        }
        match std::str::from_utf8(b) {
            Ok(text) => s.serialize_str(text),
            Err(_) => Hex {
                hex: hex::encode(b),
            }
            .serialize(s),
        }
    }

    /// Reads what [`serialize`] writes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if !d.is_human_readable() {
            return d.deserialize_bytes(BytesVisitor);
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Name {
            Text(String),
            Hex(Hex),
        }
        match Name::deserialize(d)
            .map_err(|_| serde::de::Error::custom("a name must be a string or {\"hex\": \"…\"}"))?
        {
            Name::Text(t) => Ok(t.into_bytes()),
            Name::Hex(h) => hex::decode(&h.hex).map_err(serde::de::Error::custom),
        }
    }

    struct BytesVisitor;

    impl serde::de::Visitor<'_> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a name as bytes")
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
            Ok(v.as_bytes().to_vec())
        }
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
            "back\\slash.txt",
            "C:x",
            "%41",
        ] {
            assert_eq!(RelPath::parse(ok).unwrap().to_str(), Some(ok));
        }
        let latin1 = RelPath::from_bytes(b"d/caf\xe9.txt").unwrap();
        assert_eq!(latin1.as_bytes(), b"d/caf\xe9.txt");
        assert_eq!(latin1.to_str(), None);
        assert_eq!(latin1.to_string(), "d/caf\\xE9.txt");
        assert_eq!(latin1.file_name(), b"caf\xe9.txt");
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
        assert_eq!(p.file_name(), b"c.txt");
        assert_eq!(p.parent().unwrap().to_str(), Some("a/b"));
        let anc: Vec<_> = p.ancestors().map(|a| a.to_string()).collect();
        assert_eq!(anc, ["a", "a/b"]);
        assert_eq!(RelPath::parse("x").unwrap().parent(), None);
        assert_eq!(p.to_path(Path::new("/srv")), Path::new("/srv/a/b/c.txt"));
    }

    #[test]
    fn from_local_normalises() {
        let p = RelPath::from_local(Path::new("./a/b")).unwrap();
        assert_eq!(p.to_str(), Some("a/b"));
        let raw = Path::new(OsStr::from_bytes(b"x/\xff\xfe"));
        assert_eq!(RelPath::from_local(raw).unwrap().as_bytes(), b"x/\xff\xfe");
        assert!(RelPath::from_local(Path::new("/abs")).is_err());
        assert!(RelPath::from_local(Path::new("a/../b")).is_err());
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<RelPath>(r#""../x""#).is_err());
        assert!(serde_json::from_str::<ClientId>(r#""../x""#).is_err());
        let p: RelPath = serde_json::from_str(r#""a/b""#).unwrap();
        assert_eq!(p.to_str(), Some("a/b"));
    }

    #[test]
    fn names_of_any_bytes_round_trip_in_both_encodings() {
        let latin1 = RelPath::from_bytes(b"caf\xe9.txt").unwrap();
        let json = serde_json::to_string(&latin1).unwrap();
        assert_eq!(json, r#"{"hex":"636166e92e747874"}"#);
        assert_eq!(serde_json::from_str::<RelPath>(&json).unwrap(), latin1);
        let pc = postcard::to_stdvec(&latin1).unwrap();
        assert_eq!(pc, b"\x08caf\xe9.txt");
        assert_eq!(postcard::from_bytes::<RelPath>(&pc).unwrap(), latin1);
        // A UTF-8 name is a plain string in JSON and the same bytes as a string in postcard.
        let utf8 = RelPath::parse("é/%41").unwrap();
        assert_eq!(serde_json::to_string(&utf8).unwrap(), r#""é/%41""#);
        assert_eq!(
            postcard::to_stdvec(&utf8).unwrap(),
            postcard::to_stdvec("é/%41").unwrap()
        );
        // The hex form is checked like any other path, and only that shape is accepted.
        assert!(serde_json::from_str::<RelPath>(r#"{"hex":"2e2e2f78"}"#).is_err());
        assert!(serde_json::from_str::<RelPath>(r#"{"hex":"6z"}"#).is_err());
        assert!(serde_json::from_str::<RelPath>(r#"{"hex":"61","x":1}"#).is_err());
        assert!(serde_json::from_str::<RelPath>("7").is_err());
    }

    #[test]
    fn link_targets_are_verbatim() {
        for ok in [&b"/etc/passwd"[..], b"../../outside", b"dangling", b"\xff"] {
            let t = LinkTarget::from_bytes(ok).unwrap();
            assert_eq!(t.as_bytes(), ok);
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(serde_json::from_str::<LinkTarget>(&json).unwrap(), t);
        }
        assert!(LinkTarget::from_bytes(b"").is_err());
        assert!(LinkTarget::from_bytes(b"a\0b").is_err());
        assert!(LinkTarget::from_bytes(&[b'a'; MAX_LINK_TARGET_LEN + 1]).is_err());
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
                prop_assert_eq!(RelPath::from_bytes(p.as_bytes()).unwrap(), p);
            }
        }

        #[test]
        fn arbitrary_bytes_never_escape_and_round_trip(b in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(p) = RelPath::from_bytes(&b) {
                let joined = p.to_path(Path::new("/base"));
                for c in joined.strip_prefix("/base").unwrap().components() {
                    prop_assert!(matches!(c, Component::Normal(_)));
                }
                let json = serde_json::to_string(&p).unwrap();
                prop_assert_eq!(serde_json::from_str::<RelPath>(&json).unwrap(), p.clone());
                let pc = postcard::to_stdvec(&p).unwrap();
                prop_assert_eq!(postcard::from_bytes::<RelPath>(&pc).unwrap(), p);
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

//! Where things live in the bucket, and how names and attributes are written there: pure
//! functions, so that the layout is the same in every server and readable by any S3 tool.
//!
//! ```text
//! PREFIX/client_<id>/<path>                          one object per file, symlink, FIFO
//! PREFIX/.filesync/index/client_<id>                 the client's index (see `Entry`)
//! PREFIX/.filesync/versions/client_<id>/<stamp>/tree/<path>   replaced or deleted objects
//! PREFIX/.filesync/versions/client_<id>/<stamp>/record        what the session added
//! PREFIX/.filesync/tls/server.key                    the servers' shared TLS key
//! ```
//!
//! Object keys: each path component is written as itself when it is UTF-8, escaping only
//! `%` (as `%25`), ASCII control characters and bytes that are not UTF-8 (as `%XX`), so
//! that `rclone ls` shows the names people gave and every name of bytes maps to one key
//! and back.
//!
//! Object metadata (`x-amz-meta-*`): `filesync-kind` (`file`, `symlink`, `fifo`),
//! `filesync-mtime` (`<seconds>.<9 digits of nanoseconds>`, Unix time) and
//! `filesync-mode` (octal permission bits). A symlink's object holds its target's bytes.

use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};

use crate::messages::EntryKind;
use crate::paths::{ClientId, LinkTarget, RelPath};
use crate::planner::Held;
use crate::time::MTime;

/// Metadata key: what the object stands for.
pub const META_KIND: &str = "filesync-kind";
/// Metadata key: the entry's mtime.
pub const META_MTIME: &str = "filesync-mtime";
/// Metadata key: the entry's permission bits, in octal.
pub const META_MODE: &str = "filesync-mode";
/// Metadata key: the entry's mtime again, under the name rclone's S3 backend reads
/// (`X-Amz-Meta-Mtime`, seconds and a fraction, the form of [`format_mtime`]), so that
/// `rclone lsl` shows, and `rclone copy` out of the bucket keeps, the file's mtime rather
/// than the upload's. Not read back: [`META_MTIME`] is filesync's own.
pub const META_RCLONE_MTIME: &str = "mtime";

/// The longest object key S3 allows, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// The bucket and key prefix an archive lives under (`s3://BUCKET[/PREFIX]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The bucket's name.
    pub bucket: String,
    /// The prefix, without leading or trailing `/`; empty for the bucket's top.
    pub prefix: String,
}

impl Location {
    /// Parses `s3://BUCKET[/PREFIX]`.
    pub fn parse(url: &str) -> Result<Location, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{url:?}: a store is given as s3://BUCKET[/PREFIX]"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("{url:?}: no bucket name"));
        }
        // S3's rule, loosened to the legacy names AWS still serves (capitals, `_`):
        // anything else would be cut or mangled in the request's URL (a space made
        // object_store panic; `b?x` went to bucket `b`).
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !bucket_ok {
            return Err(format!(
                "{url:?}: {bucket:?} is not a bucket name (3 to 63 letters, digits, '.', '-' or '_')"
            ));
        }
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() && ObjectPath::parse(prefix).is_err() {
            return Err(format!("{url:?}: the prefix is not a valid key prefix"));
        }
        Ok(Location {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
    }

    fn join(&self, rest: &str) -> String {
        if self.prefix.is_empty() {
            rest.to_owned()
        } else {
            format!("{}/{rest}", self.prefix)
        }
    }

    /// `PREFIX/client_<id>`: where the client's objects are.
    pub fn client(&self, id: &ClientId) -> ObjectPath {
        path(self.join(&id.folder_name()))
    }

    /// The key of `rel` in the client's folder, or an error if it is longer than S3
    /// allows.
    pub fn object(&self, id: &ClientId, rel: &RelPath) -> Result<ObjectPath, String> {
        under(&self.client(id), rel)
    }

    /// `PREFIX/.filesync/index/client_<id>`.
    pub fn index(&self, id: &ClientId) -> ObjectPath {
        path(self.join(&format!(".filesync/index/{}", id.folder_name())))
    }

    /// `PREFIX/.filesync/versions/client_<id>`.
    pub fn versions(&self, id: &ClientId) -> ObjectPath {
        path(self.join(&format!(".filesync/versions/{}", id.folder_name())))
    }

    /// `PREFIX/.filesync/versions`.
    pub fn all_versions(&self) -> ObjectPath {
        path(self.join(".filesync/versions"))
    }

    /// `PREFIX/.filesync/tls/server.key`.
    pub fn tls_key(&self) -> ObjectPath {
        path(self.join(".filesync/tls/server.key"))
    }

    /// `s3://BUCKET[/PREFIX]`.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// A key made of parts known to be valid.
fn path(s: String) -> ObjectPath {
    ObjectPath::parse(&s).unwrap_or_else(|_| ObjectPath::from(s.as_str()))
}

/// The key of `rel` under `base`, or an error if it is longer than S3 allows.
pub fn under(base: &ObjectPath, rel: &RelPath) -> Result<ObjectPath, String> {
    let key = format!("{base}/{}", encode(rel));
    if key.len() > MAX_KEY_LEN {
        return Err(format!(
            "its object key would be {} bytes, more than S3's {MAX_KEY_LEN}",
            key.len()
        ));
    }
    ObjectPath::parse(&key).map_err(|e| format!("no object key for it: {e}"))
}

/// Where a session keeps the version of `rel`: `<session>/tree/<path>`, or, for a path
/// whose key would pass S3's limit there (the version key is longer than the live one),
/// `<session>/long/<hex of its BLAKE3 hash>`. Never fails, so that no file is ever kept
/// from being replaced or deleted by its version's name.
pub fn version_key(session: &ObjectPath, rel: &RelPath) -> ObjectPath {
    let tree = ObjectPath::from_iter(session.parts().chain(std::iter::once("tree".into())));
    under(&tree, rel).unwrap_or_else(|_| {
        let hash = hex::encode(blake3::hash(rel.as_bytes()).as_bytes());
        ObjectPath::from_iter(session.parts().chain(["long".into(), hash.as_str().into()]))
    })
}

/// The path a key under `base` stands for; `None` for a key outside `base` or one that
/// no path maps to (an object another tool put there under a name filesync would write
/// differently).
pub fn rel_of(base: &ObjectPath, key: &ObjectPath) -> Option<RelPath> {
    let rest = key
        .as_ref()
        .strip_prefix(base.as_ref())?
        .strip_prefix('/')?;
    let rel = RelPath::from_bytes(&decode(rest)?).ok()?;
    (encode(&rel) == rest).then_some(rel)
}

/// A path as the tail of a key (see the module's doc).
pub fn encode(rel: &RelPath) -> String {
    let mut out = String::with_capacity(rel.as_bytes().len());
    for chunk in rel.as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '%' || c.is_ascii_control() {
                out.push_str(&format!("%{:02X}", c as u32));
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The bytes a key tail stands for; `None` if a `%` is not followed by two hex digits.
fn decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// `secs.nnnnnnnnn`.
pub fn format_mtime(t: MTime) -> String {
    format!("{}.{:09}", t.secs, t.nanos)
}

/// Reads [`format_mtime`]'s form.
pub fn parse_mtime(s: &str) -> Option<MTime> {
    let (secs, nanos) = s.split_once('.')?;
    if nanos.len() != 9 {
        return None;
    }
    MTime::new(secs.parse().ok()?, nanos.parse().ok()?)
}

/// The metadata an object of `kind` is written with.
pub fn metadata(kind: EntryKind, mtime: MTime, mode: u32) -> Vec<(&'static str, String)> {
    let kind = match kind {
        EntryKind::Symlink => "symlink",
        EntryKind::Fifo => "fifo",
        _ => "file",
    };
    vec![
        (META_KIND, kind.to_owned()),
        (META_MTIME, format_mtime(mtime)),
        (META_MODE, format!("{mode:o}")),
        (META_RCLONE_MTIME, format_mtime(mtime)),
    ]
}

/// What an object stands for, from its metadata (`get(key)` for each key), its size, its
/// last-modified time and, for a symlink, its content. An object another tool put there
/// (no metadata) is a file of mode 0644 with the object's time.
pub fn held_from(
    get: impl Fn(&str) -> Option<String>,
    size: u64,
    last_modified: MTime,
    link_body: Option<&[u8]>,
) -> Held {
    let mtime = get(META_MTIME)
        .and_then(|s| parse_mtime(&s))
        .unwrap_or(last_modified);
    let mode = get(META_MODE)
        .and_then(|s| u32::from_str_radix(&s, 8).ok())
        .unwrap_or(0o644)
        & crate::messages::MODE_BITS;
    let kind = match get(META_KIND).as_deref() {
        Some("symlink") => EntryKind::Symlink,
        Some("fifo") => EntryKind::Fifo,
        _ => EntryKind::File,
    };
    Held {
        kind,
        size: if kind == EntryKind::File { size } else { 0 },
        mtime,
        mode,
        target: (kind == EntryKind::Symlink)
            .then(|| link_body.and_then(|b| LinkTarget::from_bytes(b).ok()))
            .flatten(),
    }
}

/// One entry of a client's index: what is held at a path, and for an object the `ETag`
/// the store gave it, by which a listing tells whether the object is still the one the
/// index describes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The path.
    pub path: RelPath,
    /// What is held there.
    pub held: Held,
    /// The object's ETag; `None` for a folder, which has no object.
    pub e_tag: Option<String>,
}

/// The first bytes of an index object: a name and a format number, so that another
/// format is recognised and rebuilt from the listing, never misread.
pub const INDEX_MAGIC: &[u8] = b"filesync-index 1\n";

/// An index object: [`INDEX_MAGIC`], then the entries in postcard, as a sequence (the
/// encoding of a `Vec<Entry>`). Serialized straight from the iterator, e.g. the values of
/// the session's tree, so that a client's entries are not copied once more to be written.
pub fn encode_index<'a, I>(entries: I) -> Vec<u8>
where
    I: IntoIterator<Item = &'a Entry>,
    I::IntoIter: ExactSizeIterator + Clone,
{
    /// A sequence serialized from a cloneable iterator of known length (postcard needs
    /// the length first).
    struct Seq<I>(I);
    impl<'a, I: ExactSizeIterator<Item = &'a Entry> + Clone> Serialize for Seq<I> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(self.0.clone())
        }
    }
    let mut out = INDEX_MAGIC.to_vec();
    out.extend(postcard::to_stdvec(&Seq(entries.into_iter())).unwrap_or_default());
    out
}

/// Reads an index object; `None` if it is of another format or damaged.
pub fn decode_index(b: &[u8]) -> Option<Vec<Entry>> {
    postcard::from_bytes(b.strip_prefix(INDEX_MAGIC)?).ok()
}

/// A session's record: what it added where nothing stood (so that a restore to an
/// earlier time leaves it out) and what it replaced or deleted, whose objects are kept
/// under `tree/`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The session made the client's folder: everything it placed was new.
    pub whole_folder: bool,
    /// Paths it added.
    pub added: Vec<RelPath>,
    /// Entries it replaced or deleted, as they were (folders included: they have no
    /// object in `tree/`).
    pub replaced: Vec<Entry>,
}

/// The first bytes of a record object.
pub const RECORD_MAGIC: &[u8] = b"filesync-record 1\n";

/// A record object: [`RECORD_MAGIC`], then the record in postcard.
pub fn encode_record(r: &Record) -> Vec<u8> {
    let mut out = RECORD_MAGIC.to_vec();
    out.extend(postcard::to_stdvec(r).unwrap_or_default());
    out
}

/// Reads a record object; `None` if it is of another format or damaged.
pub fn decode_record(b: &[u8]) -> Option<Record> {
    postcard::from_bytes(b.strip_prefix(RECORD_MAGIC)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(b: &[u8]) -> RelPath {
        RelPath::from_bytes(b).unwrap()
    }

    #[test]
    fn locations_parse() {
        let l = Location::parse("s3://lab/archive/2026/").unwrap();
        assert_eq!(l.bucket, "lab");
        assert_eq!(l.prefix, "archive/2026");
        assert_eq!(l.url(), "s3://lab/archive/2026");
        let id = ClientId::parse("scope-1").unwrap();
        assert_eq!(l.client(&id).as_ref(), "archive/2026/client_scope-1");
        assert_eq!(
            l.index(&id).as_ref(),
            "archive/2026/.filesync/index/client_scope-1"
        );
        let top = Location::parse("s3://lab").unwrap();
        assert_eq!(top.prefix, "");
        assert_eq!(top.client(&id).as_ref(), "client_scope-1");
        for bad in [
            "lab",
            "s3://",
            "s3:///x",
            "file:///srv",
            "s3://bucket name/lab",
            "s3:// bad/lab",
            "s3://b?x/lab",
            "s3://b#x/lab",
            "s3://Bad_Bucket!/lab",
            "s3://ab",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Location::parse("s3://My_Legacy.bucket-1").unwrap().bucket,
            "My_Legacy.bucket-1"
        );
    }

    #[test]
    fn names_map_to_keys_and_back() {
        let base = ObjectPath::parse("p/client_a").unwrap();
        for b in [
            &b"plain/name.txt"[..],
            "données/été 2026.csv".as_bytes(),
            b"100%/a%41",
            b"tab\there/new\nline",
            b"latin1-\xe9t\xe9",
            b"back\\slash [x] {y} #z ~w ?q *s",
        ] {
            let r = rel(b);
            let key = under(&base, &r).unwrap();
            assert_eq!(rel_of(&base, &key), Some(r.clone()), "{r}");
        }
        // UTF-8 stays readable; only `%`, controls and non-UTF-8 bytes are escaped.
        assert_eq!(encode(&rel("été/a b".as_bytes())), "été/a b");
        assert_eq!(encode(&rel(b"100%")), "100%25");
        assert_eq!(encode(&rel(b"\xe9\x01")), "%E9%01");
    }

    #[test]
    fn foreign_keys_that_no_path_maps_to_are_left_alone() {
        let base = ObjectPath::parse("client_a").unwrap();
        for k in [
            "client_a/bad%zz",
            "client_a/lower%e9",
            "client_b/x",
            "client_ab/x",
        ] {
            assert_eq!(rel_of(&base, &ObjectPath::parse(k).unwrap()), None, "{k}");
        }
    }

    #[test]
    fn too_long_keys_are_refused_but_their_versions_have_a_key() {
        let base = ObjectPath::parse("client_a").unwrap();
        let long = rel("d/".repeat(600).trim_end_matches('/').as_bytes());
        assert!(under(&base, &long).unwrap_err().contains("1024"));
        // A path whose live key fits but whose version key would not.
        let near = rel(vec!["n".repeat(200); 5].join("/").as_bytes());
        assert!(under(&base, &near).is_ok());
        let session =
            ObjectPath::parse("pre/.filesync/versions/client_a/2026-11-30T07:00:00.000000000Z")
                .unwrap();
        let v = version_key(&session, &near);
        assert!(
            v.as_ref().contains("/long/") && v.as_ref().len() <= MAX_KEY_LEN,
            "{v}"
        );
        assert_eq!(
            version_key(&session, &rel(b"a/b")).as_ref(),
            format!("{session}/tree/a/b")
        );
    }

    #[test]
    fn metadata_round_trips() {
        let t = MTime::new(1_700_000_000, 123_456_789).unwrap();
        for (kind, body) in [
            (EntryKind::File, None),
            (EntryKind::Symlink, Some(&b"../target"[..])),
            (EntryKind::Fifo, None),
        ] {
            let m = metadata(kind, t, 0o4755);
            let get = |k: &str| m.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
            let h = held_from(get, 9, MTime::EPOCH, body);
            assert_eq!(h.kind, kind);
            assert_eq!(h.mtime, t);
            assert_eq!(h.mode, 0o4755);
            assert_eq!(h.size, if kind == EntryKind::File { 9 } else { 0 });
            assert_eq!(h.target.is_some(), kind == EntryKind::Symlink);
        }
        // An object put by another tool.
        let h = held_from(|_| None, 5, t, None);
        assert_eq!(
            (h.kind, h.size, h.mtime, h.mode),
            (EntryKind::File, 5, t, 0o644)
        );
        assert_eq!(parse_mtime("-1.000000001"), MTime::new(-1, 1));
        assert_eq!(parse_mtime("1.5"), None);
    }

    #[test]
    fn index_and_record_round_trip_and_refuse_other_formats() {
        let e = Entry {
            path: rel(b"a/\xff"),
            held: Held {
                kind: EntryKind::Symlink,
                size: 0,
                mtime: MTime::new(3, 4).unwrap(),
                mode: 0o777,
                target: Some(LinkTarget::from_bytes(b"/x").unwrap()),
            },
            e_tag: Some("\"abc\"".into()),
        };
        let b = encode_index(std::slice::from_ref(&e));
        assert_eq!(decode_index(&b), Some(vec![e.clone()]));
        // The same bytes as a `Vec<Entry>` in postcard, the format readers expect.
        let mut two = vec![e.clone(), e.clone()];
        two[1].path = rel(b"b");
        let mut want = INDEX_MAGIC.to_vec();
        want.extend(postcard::to_stdvec(&two).unwrap());
        assert_eq!(encode_index(&two), want);
        assert_eq!(
            encode_index(Vec::<Entry>::new().iter()),
            b"filesync-index 1\n\0"
        );
        assert_eq!(decode_index(b"filesync-index 2\n"), None);
        assert_eq!(decode_index(&b[..b.len() - 1]), None);
        let r = Record {
            whole_folder: false,
            added: vec![rel(b"new")],
            replaced: vec![e],
        };
        assert_eq!(decode_record(&encode_record(&r)), Some(r));
    }
}

//! The messages of the native protocol, one enum per direction, and the original dialect's
//! messages in [`seed`].
//!
//! Pure data: serde types and constants, no I/O. Every enum here encodes as JSON with a
//! `type` tag and as postcard by variant index (see `wire_enum.rs` for why there are two
//! shapes). The normative description is `spec/PROTOCOL.md`.

pub mod seed;

use serde::{Deserialize, Serialize};

use crate::paths::{ClientId, LinkTarget, RelPath};
use crate::time::MTime;
use crate::wire_enum::wire_enum;

/// The native protocol version this library speaks. A server announces the versions it
/// accepts in its greeting; the client picks the highest both know and says so in
/// [`Hello`].
///
/// Version 3 (this one) archives what `rsync -a` would: names are bytes (not only UTF-8),
/// entries carry permission bits, symlinks (with their target) and FIFOs are listed, and
/// sparse files are sent as data ranges and holes (`HOLE`). Version 2 introduced streaming:
/// manifest entries in tree order, file content following each batch's `TASKS` while the
/// listing is still being sent, postcard manifests sharing path prefixes. Versions 1 and 2
/// are no longer spoken.
pub const PROTOCOL_VERSION: u16 = 3;

/// The most entries one `MANIFEST` batch may hold.
pub const MANIFEST_BATCH_MAX: usize = 8192;

/// Flow control: a client keeps at most this many `MANIFEST` batches *open*, a batch
/// being open from when it is sent until its `TASKS` has arrived and every file requested
/// in it has been sent (or aborted). It sends the next batch only when fewer are open.
/// With this, each side holds at most this many batches' worth of listing and requests at
/// any time, whatever the tree's size.
pub const MANIFEST_WINDOW: usize = 4;

/// The most files a server will have requested and not yet received: the window's worth.
/// A client past it breaks the protocol.
pub const MAX_OUTSTANDING: usize = MANIFEST_WINDOW * MANIFEST_BATCH_MAX;

/// How the frames of a native session are encoded. Chosen by the client in the preamble,
/// from the encodings the server announced in its greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// postcard: compact binary; the default.
    #[default]
    Postcard,
    /// JSON with a `type` tag: readable, for debugging and for peers in other languages.
    Json,
}

impl Encoding {
    /// The byte that names this encoding in the native preamble.
    pub fn code(self) -> u8 {
        match self {
            Encoding::Postcard => 0,
            Encoding::Json => 1,
        }
    }

    /// The encoding a preamble byte names, if any.
    pub fn from_code(b: u8) -> Option<Self> {
        match b {
            0 => Some(Encoding::Postcard),
            1 => Some(Encoding::Json),
            _ => None,
        }
    }

    /// The lowercase name used in greetings and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Postcard => "postcard",
            Encoding::Json => "json",
        }
    }
}

/// A machine-readable error or rejection code. A number rather than an enum so that a
/// newer peer's codes still decode in postcard; unknown codes are shown by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// The peer broke the protocol: wrong message for the state, bad frame, bad encoding.
    pub const PROTOCOL: ErrorCode = ErrorCode(1);
    /// No protocol version in common.
    pub const VERSION: ErrorCode = ErrorCode(2);
    /// The client id is missing where required, or not valid.
    pub const BAD_CLIENT_ID: ErrorCode = ErrorCode(3);
    /// The client is not allowed to sync (reserved for authentication).
    pub const UNAUTHORIZED: ErrorCode = ErrorCode(4);
    /// A path was refused (escapes the folder, clashes with another entry).
    pub const BAD_PATH: ErrorCode = ErrorCode(5);
    /// The server could not store a file (disk full, permissions).
    pub const STORAGE: ErrorCode = ErrorCode(6);
    /// The client aborted the file (it changed or vanished while being read).
    pub const ABORTED: ErrorCode = ErrorCode(7);
    /// The peer was silent for longer than the idle timeout.
    pub const IDLE_TIMEOUT: ErrorCode = ErrorCode(8);
    /// The server is shutting down.
    pub const SHUTTING_DOWN: ErrorCode = ErrorCode(9);
    /// The client would empty an archive that holds files (see `--allow-empty`).
    pub const WOULD_EMPTY: ErrorCode = ErrorCode(10);
    /// Anything else that went wrong on the sender's side.
    pub const INTERNAL: ErrorCode = ErrorCode(11);
    /// Another session for the same client id is running; try again later.
    pub const IN_PROGRESS: ErrorCode = ErrorCode(12);

    /// A short name for logs.
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "protocol",
            2 => "version",
            3 => "bad-client-id",
            4 => "unauthorized",
            5 => "bad-path",
            6 => "storage",
            7 => "aborted",
            8 => "idle-timeout",
            9 => "shutting-down",
            10 => "would-empty",
            11 => "internal",
            12 => "in-progress",
            _ => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// `ERROR`: either side ends the session and says why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    /// What kind of failure.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

/// `HELLO`: the client's first frame after the preamble.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the client chose (highest both sides know).
    pub version: u16,
    /// Free text naming the client software, for the server's log.
    pub agent: String,
    /// The client's id; `None` lets the server derive one from the address.
    pub client_id: Option<ClientId>,
    /// Optional features the client supports (unknown names are ignored). Extensions such
    /// as content hashes, block deltas, resume or authentication are switched on only when
    /// both sides list them.
    pub capabilities: Vec<String>,
    /// The client knows its folder is empty or missing and still wants the server copy
    /// emptied (`--allow-empty`).
    pub allow_empty: bool,
    /// The most entries this session may delete on the server (`sync --max-delete`);
    /// past it, deletions stop and `NEXT_SYNC` says how many were held back.
    pub max_delete: Option<u64>,
}

/// `AUTH`: sent right after `HELLO` in a TLS session, the client's proof that it knows the
/// secret of the id it claims (see [`crate::auth`] and spec §16). Never sent in the clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth {
    /// HMAC-SHA256 keyed by the client's secret over the client's role label, the TLS
    /// session's exported value and the client id ([`crate::auth::proof`]).
    pub proof: Hash,
}

/// `AUTH_OK`: the server accepted the client's proof, and proves in turn that it knows the
/// same secret. It comes before `WELCOME`; a client sends nothing of its folder until it has
/// checked it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthOk {
    /// HMAC-SHA256 as in [`Auth`], with the server's role label.
    pub proof: Hash,
}

/// `WELCOME`: the server accepted the hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The version this session runs.
    pub version: u16,
    /// The capabilities both sides share.
    pub capabilities: Vec<String>,
    /// The id the server files this client under.
    pub client_id: ClientId,
}

/// `QUEUED`: the server is busy; the client waits at this position (1 = next).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    /// Place in line: 1 is served next.
    pub position: u32,
}

/// `READY`: the client's turn has come; it may send its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Ready {}

/// What an entry of a manifest is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory (listed so that empty directories are mirrored too).
    Dir,
    /// Something the client could not read this time (a permission error, say), or that
    /// it excludes: the server keeps whatever it holds at and under this path, instead of
    /// deleting it as gone. Never requested.
    Keep,
    /// A symbolic link; its target is in [`Entry::target`]. Stored as a link with that
    /// text, never followed. Never requested: the entry carries all of it.
    Symlink,
    /// A named pipe (FIFO): recreated empty with its mode, never opened. Never requested.
    Fifo,
}

impl EntryKind {
    /// Whether the server needs content for this kind (only regular files have any).
    pub fn has_content(self) -> bool {
        self == EntryKind::File
    }
}

/// One entry of a manifest: a file or directory in the client's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Where it sits, relative to the synced folder.
    pub path: RelPath,
    /// File or directory.
    pub kind: EntryKind,
    /// Size in bytes (0 for everything but files).
    pub size: u64,
    /// Modification time, to the nanosecond.
    pub mtime: MTime,
    /// Permission bits as `st_mode & 0o7777`: read, write and execute for user, group and
    /// others, plus setuid (0o4000), setgid (0o2000) and sticky (0o1000). 0 for `Keep`;
    /// ignored for symlinks, whose mode Linux does not use.
    pub mode: u32,
    /// A symlink's target; `None` for every other kind.
    pub target: Option<LinkTarget>,
}

/// The permission bits an entry's `mode` may carry.
pub const MODE_BITS: u32 = 0o7777;
/// The setuid and setgid bits, which a server drops unless told to keep them.
pub const SETID_BITS: u32 = 0o6000;

/// The permission bits a server gives what it stores: all of [`MODE_BITS`] with
/// `keep_setid` (`serve --keep-setid`), otherwise all but [`SETID_BITS`], so that a server
/// never grows setuid programs from the network.
pub fn stored_mode_bits(keep_setid: bool) -> u32 {
    if keep_setid {
        MODE_BITS
    } else {
        MODE_BITS & !SETID_BITS
    }
}

/// `MANIFEST`: one batch of the client's listing. A listing of any size is sent as many
/// batches, so neither side ever needs one frame or allocation for the whole tree.
///
/// Entries are in strictly increasing tree order ([`RelPath::tree_cmp`]) across the whole
/// listing, and the server answers every batch with exactly one `TASKS`.
///
/// In JSON each entry carries its whole path. In postcard each entry carries how many
/// leading bytes its path shares with the previous entry's in the same batch, then the
/// rest (rsync's file lists do the same): a tree's paths repeat their folders, and this
/// makes a listing a fraction of its plain size. See `spec/PROTOCOL.md` for the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The entries of this batch.
    pub entries: Vec<Entry>,
}

/// A manifest entry in postcard: the path as a shared prefix length and a suffix.
#[derive(Serialize, Deserialize)]
struct PackedEntry<'a> {
    shared: u32,
    #[serde(borrow, with = "serde_bytes_cow")]
    suffix: std::borrow::Cow<'a, [u8]>,
    kind: EntryKind,
    size: u64,
    mtime: MTime,
    mode: u32,
    target: Option<LinkTarget>,
}

/// A postcard suffix as serde bytes (the same layout as a string: a varint length, then
/// the bytes), borrowed from the frame when it can be.
mod serde_bytes_cow {
    use std::borrow::Cow;

    pub(super) fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(b)
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Cow<'de, [u8]>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Cow<'de, [u8]>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_vec()))
            }
        }
        d.deserialize_bytes(V)
    }
}

impl Serialize for Manifest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        #[derive(Serialize)]
        struct Plain<'a> {
            entries: &'a [Entry],
        }
        if s.is_human_readable() {
            return Plain {
                entries: &self.entries,
            }
            .serialize(s);
        }
        let mut seq = s.serialize_seq(Some(self.entries.len()))?;
        let mut prev: &[u8] = b"";
        for e in &self.entries {
            let path = e.path.as_bytes();
            let shared = path.iter().zip(prev).take_while(|(a, b)| a == b).count();
            seq.serialize_element(&PackedEntry {
                shared: u32::try_from(shared).map_err(serde::ser::Error::custom)?,
                suffix: std::borrow::Cow::Borrowed(&path[shared..]),
                kind: e.kind,
                size: e.size,
                mtime: e.mtime,
                mode: e.mode,
                target: e.target.clone(),
            })?;
            prev = path;
        }
        seq.end()
    }
}

/// The most path bytes one decoded `MANIFEST` may rebuild from shared prefixes: a frame
/// of a few bytes per entry could otherwise expand into thousands of long paths. A batch
/// within a client's frame budget stays far below it.
pub const MANIFEST_PATH_BYTES_MAX: usize = 4 << 20;

impl<'de> Deserialize<'de> for Manifest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Plain {
            entries: Vec<Entry>,
        }
        if d.is_human_readable() {
            return Ok(Manifest {
                entries: Plain::deserialize(d)?.entries,
            });
        }
        d.deserialize_seq(PackedVisitor)
    }
}

/// Rebuilds a postcard manifest entry by entry, refusing more than
/// [`MANIFEST_BATCH_MAX`] entries or [`MANIFEST_PATH_BYTES_MAX`] path bytes before
/// building them.
struct PackedVisitor;

impl<'de> serde::de::Visitor<'de> for PackedVisitor {
    type Value = Manifest;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a sequence of prefix-shared manifest entries")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Manifest, A::Error> {
        use serde::de::Error as _;
        let n = seq.size_hint().unwrap_or(0);
        if n > MANIFEST_BATCH_MAX {
            return Err(A::Error::custom(format!(
                "a MANIFEST of {n} entries (at most {MANIFEST_BATCH_MAX})"
            )));
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(n);
        let mut path_bytes = 0usize;
        while let Some(p) = seq.next_element::<PackedEntry<'_>>()? {
            if entries.len() == MANIFEST_BATCH_MAX {
                return Err(A::Error::custom(format!(
                    "a MANIFEST of more than {MANIFEST_BATCH_MAX} entries"
                )));
            }
            let prev = entries.last().map_or(&b""[..], |e| e.path.as_bytes());
            let shared = usize::try_from(p.shared).unwrap_or(usize::MAX);
            let head = prev.get(..shared).ok_or_else(|| {
                A::Error::custom(format!(
                    "manifest entry shares {shared} bytes with a previous path of {}",
                    prev.len()
                ))
            })?;
            path_bytes += head.len() + p.suffix.len();
            if path_bytes > MANIFEST_PATH_BYTES_MAX {
                return Err(A::Error::custom(format!(
                    "a MANIFEST whose paths add up to more than {MANIFEST_PATH_BYTES_MAX} bytes"
                )));
            }
            let path =
                RelPath::from_bytes(&[head, &p.suffix[..]].concat()).map_err(A::Error::custom)?;
            entries.push(Entry {
                path,
                kind: p.kind,
                size: p.size,
                mtime: p.mtime,
                mode: p.mode,
                target: p.target,
            });
        }
        Ok(Manifest { entries })
    }
}

/// `MANIFEST_END`: the listing is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEnd {
    /// How many entries all batches held, as a check.
    pub entries: u64,
}

/// `TASKS`: the files the server wants from one `MANIFEST` batch, in its order; exactly one
/// per batch, possibly empty, in the order of the batches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tasks {
    /// Files to send.
    pub paths: Vec<RelPath>,
    /// Files of `paths` of which the server holds the beginning from an interrupted
    /// session (only with the `resume` capability; empty otherwise), in `paths` order.
    pub resume: Vec<ResumeAt>,
}

/// The capability for resuming interrupted files ([`ResumeAt`], `FILE_HEADER.offset`).
pub const CAP_RESUME: &str = "resume";

/// Capabilities this library supports, offered in `HELLO` and answered in `WELCOME`.
pub const CAPABILITIES: &[&str] = &[CAP_RESUME, CAP_DELTA];

/// A requested file that can be resumed: the server holds its first `offset` bytes, as
/// received from a version of the file of `size` bytes and mtime `mtime`. A client whose
/// file still has that size and mtime, and whose first `offset` bytes have BLAKE3 hash
/// `hash`, may send `FILE_HEADER` with this `offset` and only the bytes after it;
/// otherwise it sends the file whole (offset 0) and the server drops what it held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeAt {
    /// Index of the file in `TASKS.paths`.
    pub index: u32,
    /// Bytes held.
    pub offset: u64,
    /// The file's size when those bytes were sent.
    pub size: u64,
    /// The file's mtime when those bytes were sent.
    pub mtime: MTime,
    /// BLAKE3 of the bytes held.
    pub hash: Hash,
}

/// 32 bytes of a BLAKE3 hash (or, in `AUTH` and `AUTH_OK`, of an HMAC-SHA256): raw bytes
/// in postcard, lowercase hex in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hash(pub [u8; 32]);

impl std::fmt::Debug for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(self.0))
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let bytes = if d.is_human_readable() {
            hex::decode(String::deserialize(d)?).map_err(D::Error::custom)?
        } else {
            crate::paths::wire_name::deserialize(d)?
        };
        let arr: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            D::Error::custom(format!("a hash of {} bytes, not 32", b.len()))
        })?;
        Ok(Hash(arr))
    }
}

/// `DELETIONS`: version 1 listed here the entries the server would delete. Version 2 does
/// not send it (a deletion plan can be larger than memory; `PLAN_END` counts it), and a
/// version 2 peer that receives it treats it as a protocol error. Kept so that postcard
/// variant indices never move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletions {
    /// Server entries that the client no longer has.
    pub paths: Vec<RelPath>,
}

/// `PLAN_END`: the plan is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanEnd {
    /// Files requested in all `TASKS` batches.
    pub files: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Server entries to delete once every file is stored (each entry of a deleted
    /// folder counts).
    pub deletions: u64,
}

/// `FILE_HEADER`: a file's content follows in `DATA` frames, `size` bytes in all, then
/// `FILE_END` or `FILE_ABORT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHeader {
    /// Which requested file.
    pub path: RelPath,
    /// Exact content length.
    pub size: u64,
    /// Modification time the server gives the stored file.
    pub mtime: MTime,
    /// Permission bits the server gives the stored file ([`Entry::mode`]).
    pub mode: u32,
    /// The content is a delta against the server's copy, whose `SIGNATURE` the server
    /// sent: `COPY` and `DATA` follow, and `FILE_END` carries the file's hash.
    pub delta: bool,
    /// Where the content starts. Always 0 unless both sides list the `resume` capability.
    pub offset: u64,
}

/// `HOLE`: the next `len` bytes of the open file are a hole (they read as zeros). A sparse
/// file is sent as its data ranges in `DATA` and its holes as `HOLE`, so a hole crosses
/// the wire as a few bytes and stays unallocated on the server. Counts toward the
/// `FILE_HEADER`'s size like `DATA`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hole {
    /// Bytes of hole, at least 1.
    pub len: u64,
}

/// `FILE_END`: the file's content is complete and was unchanged while it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FileEnd {
    /// BLAKE3 of the whole file as sent. Required after a delta (`FILE_HEADER.delta`)
    /// that had a `COPY`: the server stores the rebuilt file only if its hash is this
    /// one. Optional after a delta without `COPY` (its file is its `DATA`).
    pub hash: Option<Hash>,
}

/// `COPY`: in a delta (`FILE_HEADER.delta`), the next bytes of the file are `count`
/// blocks of the server's copy starting at block `block`, as its `SIGNATURE` cut them.
/// Counts toward the `FILE_HEADER`'s size like `DATA`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyBlocks {
    /// First block, counted from 0.
    pub block: u32,
    /// Blocks, at least 1.
    pub count: u32,
}

/// `SIGNATURE`: with the `delta2` capability, sent just before the `TASKS` that asks for
/// `path`, when the server holds an older version of that file: the block signature of
/// that version (block size, length, and per block a rolling weak checksum and a BLAKE3
/// strong one; see [`crate::delta`]). The client may then send the file as a delta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureMsg {
    /// Which file.
    pub path: RelPath,
    /// The signature of the server's copy.
    pub signature: crate::delta::Signature,
}

/// The capability for block deltas (`SIGNATURE`, `FILE_HEADER.delta`, `COPY`), with 8-byte
/// strong hashes per block. The previous release's `delta` (16-byte strong hashes, a hash
/// after every delta) is not spoken: a peer of that release and this one negotiate no
/// deltas at all, and sync whole files, rather than misread each other's signatures.
pub const CAP_DELTA: &str = "delta2";

/// `FILE_ABORT`: the file changed or vanished while being read; the server discards it and
/// the client retries on its next sync. Sent after the file's `FILE_HEADER` (its `DATA`
/// may have stopped short of `size`), or alone for a requested file that could not even be
/// opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileAbort {
    /// Which file.
    pub path: RelPath,
    /// Why, for the server's log.
    pub reason: String,
}

/// `TRANSFER_END`: the client has sent every requested file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TransferEnd {}

/// What became of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Written, given its mtime and renamed into place. Made durable before `NEXT_SYNC`.
    Stored,
    /// Not stored; the previous copy, if any, is untouched.
    Rejected {
        /// Why, for programs.
        code: ErrorCode,
        /// Why, for people.
        reason: String,
    },
}

/// `FILE_RESULT`: the server's verdict on one file, sent as soon as it is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileResult {
    /// Which file.
    pub path: RelPath,
    /// Stored or rejected.
    pub outcome: Outcome,
}

/// `NEXT_SYNC`: the session is over, everything stored is durable on disk, and the client
/// should come back at `at` (equivalently after `delay_ms`, which is immune to clock skew).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextSync {
    /// When to come back, server clock.
    pub at: MTime,
    /// When to come back, relative to receipt.
    pub delay_ms: u64,
    /// Files stored this session.
    pub stored: u64,
    /// Files rejected or aborted this session.
    pub rejected: u64,
    /// Entries deleted this session.
    pub deleted: u64,
    /// Entries the plan would have deleted but a deletion cap held back (the client's
    /// `max_delete`, the server's `--max-delete` or `--max-delete-percent`), or that
    /// another session of the same client wrote after this one planned (servers sharing
    /// an object store without `--lease`); 0 normally.
    pub held_back: u64,
    /// Why they were held back, for people; empty when nothing was.
    pub held_back_reason: String,
}

wire_enum! {
    /// A message from client to server in a native session.
    pub enum ClientMsg {
        /// See [`Hello`].
        Hello(Hello) = "HELLO",
        /// See [`Manifest`].
        Manifest(Manifest) = "MANIFEST",
        /// See [`ManifestEnd`].
        ManifestEnd(ManifestEnd) = "MANIFEST_END",
        /// See [`FileHeader`].
        FileHeader(FileHeader) = "FILE_HEADER",
        /// See [`FileEnd`].
        FileEnd(FileEnd) = "FILE_END",
        /// See [`FileAbort`].
        FileAbort(FileAbort) = "FILE_ABORT",
        /// See [`TransferEnd`].
        TransferEnd(TransferEnd) = "TRANSFER_END",
        /// See [`ErrorMsg`].
        Error(ErrorMsg) = "ERROR",
        /// See [`Hole`].
        Hole(Hole) = "HOLE",
        /// See [`CopyBlocks`].
        Copy(CopyBlocks) = "COPY",
        /// See [`Auth`].
        Auth(Auth) = "AUTH",
    }
}

wire_enum! {
    /// A message from server to client in a native session (after the greeting, which is
    /// always the JSON [`seed::ServerStatus`]).
    pub enum ServerMsg {
        /// See [`Welcome`].
        Welcome(Welcome) = "WELCOME",
        /// See [`Queued`].
        Queued(Queued) = "QUEUED",
        /// See [`Ready`].
        Ready(Ready) = "READY",
        /// See [`Tasks`].
        Tasks(Tasks) = "TASKS",
        /// See [`Deletions`].
        Deletions(Deletions) = "DELETIONS",
        /// See [`PlanEnd`].
        PlanEnd(PlanEnd) = "PLAN_END",
        /// See [`FileResult`].
        FileResult(FileResult) = "FILE_RESULT",
        /// See [`NextSync`].
        NextSync(NextSync) = "NEXT_SYNC",
        /// See [`ErrorMsg`].
        Error(ErrorMsg) = "ERROR",
        /// See [`SignatureMsg`].
        Signature(SignatureMsg) = "SIGNATURE",
        /// See [`AuthOk`].
        AuthOk(AuthOk) = "AUTH_OK",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> Entry {
        Entry {
            path: RelPath::parse(path).unwrap(),
            kind: EntryKind::File,
            size: 1,
            mtime: MTime::EPOCH,
            mode: 0o644,
            target: None,
        }
    }

    #[test]
    fn postcard_manifests_share_prefixes_and_round_trip() {
        let m = Manifest {
            entries: [
                "lab/run1/a.dat",
                "lab/run1/b.dat",
                "lab/run2",
                "lab/ü",
                "lab/ý",
            ]
            .into_iter()
            .map(entry)
            .chain([Entry {
                path: RelPath::from_bytes(b"lab/\xfd").unwrap(),
                kind: EntryKind::Symlink,
                size: 0,
                mtime: MTime::EPOCH,
                mode: 0o777,
                target: Some(LinkTarget::from_bytes(b"/etc/\xff").unwrap()),
            }])
            .collect(),
        };
        let bytes = postcard::to_stdvec(&m).unwrap();
        let plain = postcard::to_stdvec(&m.entries).unwrap();
        assert!(
            bytes.len() + 15 < plain.len(),
            "{} bytes shared, {} plain",
            bytes.len(),
            plain.len()
        );
        assert_eq!(postcard::from_bytes::<Manifest>(&bytes).unwrap(), m);
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"path\":\"lab/run1/b.dat\""), "{json}");
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
    }

    /// Hand-made postcard: `count`, then entries of (shared, suffix, kind 0, size 0,
    /// mtime 0/0, mode 0, no target).
    fn packed(count: u32, entries: &[(u32, &str)]) -> Vec<u8> {
        #[derive(Serialize)]
        struct Raw<'a>(u32, &'a str, u8, u8, u8, u8, u8, Option<u8>);
        let mut out = Vec::new();
        let mut buf = [0u8; 10];
        out.extend_from_slice(postcard::to_slice(&count, &mut buf).unwrap());
        for (shared, suffix) in entries {
            out.extend(postcard::to_stdvec(&Raw(*shared, suffix, 0, 0, 0, 0, 0, None)).unwrap());
        }
        out
    }

    #[test]
    fn postcard_manifests_that_lie_about_prefixes_are_refused() {
        // Sharing more than the previous path holds, or from nothing.
        assert!(postcard::from_bytes::<Manifest>(&packed(2, &[(0, "ab"), (3, "c")])).is_err());
        assert!(postcard::from_bytes::<Manifest>(&packed(1, &[(1, "x")])).is_err());
        // Sharing into the middle of a character is fine: names are bytes.
        let mid = postcard::from_bytes::<Manifest>(&packed(2, &[(0, "é"), (1, "x")])).unwrap();
        assert_eq!(mid.entries[1].path.as_bytes(), b"\xc3x");
        // A rebuilt path that is not a valid one.
        assert!(postcard::from_bytes::<Manifest>(&packed(2, &[(0, "a"), (1, "/../x")])).is_err());
        let ok = postcard::from_bytes::<Manifest>(&packed(2, &[(0, "ab"), (2, "c")])).unwrap();
        assert_eq!(ok.entries[1].path.as_bytes(), b"abc");
    }

    #[test]
    fn postcard_manifests_cannot_expand_past_their_limits() {
        // More entries than a batch may hold: refused from the count alone.
        let too_many = packed(MANIFEST_BATCH_MAX as u32 + 1, &[]);
        assert!(postcard::from_bytes::<Manifest>(&too_many).is_err());
        // A few bytes per entry that would rebuild megabytes of paths.
        let long = "d/".repeat(2000) + "f";
        let mut entries = vec![(0u32, long.as_str())];
        let again: Vec<(u32, &str)> = (0..4000).map(|_| (long.len() as u32 - 1, "g")).collect();
        entries.extend(again);
        let bytes = packed(entries.len() as u32, &entries);
        assert!(bytes.len() < 64 << 10, "{} bytes", bytes.len());
        assert!(postcard::from_bytes::<Manifest>(&bytes).is_err());
    }
}

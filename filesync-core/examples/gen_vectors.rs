//! Writes the golden wire vectors under `spec/vectors/` (layout: `spec/vectors/README.md`).
//!
//! ```text
//! cargo run -p filesync-core --example gen_vectors [-- OUTPUT_DIR]
//! ```
//!
//! The vectors are *frozen*: they are committed, and `tests/vectors.rs` checks the code
//! against them, never against this program. Run it only to add vectors, then review the
//! diff: a changed byte in an existing vector is a change of the wire protocol and needs a
//! protocol version bump (`spec/PROTOCOL.md`, "Versioning and extensions").
//!
//! The session transcripts are produced by driving the real client and server typestate
//! machines against each other in memory, so they show the message order the code follows.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use serde::Serialize;

use filesync_core::codec::native::{self, ClientCodec};
use filesync_core::codec::preamble;
use filesync_core::messages::seed::{self, NativeOffer, ServerStatus, Status};
use filesync_core::messages::{
    Auth, AuthOk, ClientMsg, CopyBlocks, Deletions, Encoding, Entry, EntryKind, ErrorCode,
    ErrorMsg, FileAbort, FileEnd, FileHeader, FileResult, Hash, Hello, Hole, Manifest, ManifestEnd,
    NextSync, Outcome, PlanEnd, Queued, Ready, ServerMsg, SignatureMsg, Tasks, TransferEnd,
    Welcome, PROTOCOL_VERSION,
};
use filesync_core::paths::{ClientId, LinkTarget, RelPath};
use filesync_core::planner::Held;
use filesync_core::session::client::{ClientParams, Finish, Waiting};
use filesync_core::session::server::{Listed, Receipt, Receive, ServerParams};
use filesync_core::session::{Client, Server};
use filesync_core::time::{MTime, SeedTime};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let out = match std::env::args_os().nth(1) {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/vectors"),
    };
    let native_dir = out.join("native");
    let seed_dir = out.join("seed");
    for d in [&native_dir, &seed_dir] {
        std::fs::create_dir_all(d)?;
        // Start from a clean slate so that a renamed vector leaves no stale file behind.
        for e in std::fs::read_dir(d)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "json") {
                std::fs::remove_file(p)?;
            }
        }
    }
    let mut n = 0;
    for (name, file) in native_vectors()? {
        write(&native_dir, &name, &file)?;
        n += 1;
    }
    for (name, file) in seed_vectors()? {
        write(&seed_dir, &name, &file)?;
        n += 1;
    }
    for (name, file) in [session_vector()?, sparse_session_vector()?] {
        write(&native_dir, &name, &file)?;
        n += 1;
    }
    eprintln!("wrote {n} vectors under {}", out.display());
    Ok(())
}

fn write(dir: &Path, name: &str, text: &str) -> Res<()> {
    std::fs::write(dir.join(format!("{name}.json")), format!("{text}\n"))?;
    Ok(())
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

fn p(s: &str) -> RelPath {
    RelPath::parse(s).expect("vector paths are valid")
}

/// A path of any bytes (a name that is not UTF-8).
fn pb(b: &[u8]) -> RelPath {
    RelPath::from_bytes(b).expect("vector paths are valid")
}

fn link(b: &[u8]) -> Option<LinkTarget> {
    Some(LinkTarget::from_bytes(b).expect("vector link targets are valid"))
}

/// A manifest entry; `target` only for symlinks.
fn entry(path: RelPath, kind: EntryKind, size: u64, mtime: MTime, mode: u32) -> Entry {
    Entry {
        path,
        kind,
        size,
        mtime,
        mode,
        target: None,
    }
}

fn id(s: &str) -> ClientId {
    ClientId::parse(s).expect("vector ids are valid")
}

fn t(secs: i64, nanos: u32) -> MTime {
    MTime::new(secs, nanos).expect("vector times are valid")
}

fn st(s: &str) -> SeedTime {
    SeedTime::parse(s).expect("vector timestamps are valid")
}

/// 2025-05-06T14:23:00Z, the instant of the original's documentation example.
const T0: i64 = 1_746_541_380;

// ---------------------------------------------------------------------------------------
// Native messages

/// The layout of one `native/*.json` message vector. Field order is the file's key order.
#[derive(Serialize)]
struct MsgVector<'a, M: Serialize> {
    kind: &'static str,
    direction: &'static str,
    #[serde(rename = "type")]
    ty: &'static str,
    variant_index: u32,
    note: &'a str,
    message: &'a M,
    json: String,
    postcard_hex: String,
    frame_hex: String,
    json_frame_hex: String,
}

fn msg_vector<M: Serialize>(
    direction: &'static str,
    ty: &'static str,
    index: u32,
    note: &str,
    m: &M,
) -> Res<String> {
    let postcard = postcard::to_stdvec(m)?;
    let v = MsgVector {
        kind: "message",
        direction,
        ty,
        variant_index: index,
        note,
        message: m,
        json: serde_json::to_string(m)?,
        postcard_hex: hex(&postcard),
        frame_hex: hex(&native::frame_bytes(Encoding::Postcard, m)?),
        json_frame_hex: hex(&native::frame_bytes(Encoding::Json, m)?),
    };
    Ok(serde_json::to_string_pretty(&v)?)
}

fn client(name: &str, note: &str, m: ClientMsg) -> Res<(String, String)> {
    let text = msg_vector("client", m.kind(), m.index(), note, &m)?;
    Ok((format!("client-{name}"), text))
}

fn server(name: &str, note: &str, m: ServerMsg) -> Res<(String, String)> {
    let text = msg_vector("server", m.kind(), m.index(), note, &m)?;
    Ok((format!("server-{name}"), text))
}

#[derive(Serialize)]
struct DataVector<'a> {
    kind: &'static str,
    direction: &'static str,
    note: &'a str,
    data_hex: String,
    frame_hex: String,
}

#[derive(Serialize)]
struct PreambleVector<'a> {
    kind: &'static str,
    direction: &'static str,
    note: &'a str,
    encoding: &'static str,
    hex: String,
}

#[derive(Serialize)]
struct InvalidVector<'a> {
    kind: &'static str,
    direction: &'static str,
    note: &'a str,
    encoding: &'static str,
    frame_hex: String,
    /// `too_large`, `empty`, `unknown_kind`, `message`, `truncated`.
    error: &'static str,
}

fn native_vectors() -> Res<Vec<(String, String)>> {
    let secret = filesync_core::auth::Secret::parse("0123456789abcdef0123")?;
    let hello = Hello {
        version: PROTOCOL_VERSION,
        agent: "filesync/0.1.0".into(),
        client_id: Some(id("laptop")),
        capabilities: vec![],
        allow_empty: false,
        max_delete: None,
    };
    let mut v = vec![
        client(
            "hello",
            "HELLO with a client id and no capabilities.",
            ClientMsg::Hello(hello),
        )?,
        client(
            "hello-anonymous",
            "HELLO with no id (the server derives one from the address), an extension \
             capability the server does not know (it is ignored), allow_empty, and \
             max_delete 100 (the server deletes at most 100 entries this session).",
            ClientMsg::Hello(Hello {
                version: PROTOCOL_VERSION,
                agent: "other-impl/2.3".into(),
                client_id: None,
                capabilities: vec!["x-example".into()],
                allow_empty: true,
                max_delete: Some(100),
            }),
        )?,
        client(
            "manifest",
            "One MANIFEST batch in tree order: a directory (mode 0755 = 493), files (mode \
             0644 = 420), one with a nanosecond mtime, one before 1970 (negative secs, zigzag \
             varint in postcard), and non-ASCII names. In postcard each path is a \
             shared-prefix length and a suffix: `photos/été.png` shares 13 bytes with the \
             entry before it, and `photos/êtes` shares 8, `photos/` and the byte c3 that \
             begins both `é` (c3 a9) and `ê` (c3 aa): names are bytes, the longest common \
             byte prefix is shared even where it ends inside a UTF-8 character, and the \
             suffix (aa 74 65 73) need not be UTF-8 on its own.",
            ClientMsg::Manifest(Manifest {
                entries: vec![
                    Entry {
                        path: p("docs"),
                        kind: EntryKind::Dir,
                        size: 0,
                        mtime: t(T0, 0),
                        mode: 0o755,
                        target: None,
                    },
                    Entry {
                        path: p("docs/report.txt"),
                        kind: EntryKind::File,
                        size: 2048,
                        mtime: t(T0, 123_456_789),
                        mode: 0o644,
                        target: None,
                    },
                    Entry {
                        path: p("old.bin"),
                        kind: EntryKind::File,
                        size: 1,
                        mtime: t(-1, 500_000_000),
                        mode: 0o644,
                        target: None,
                    },
                    Entry {
                        path: p("photos/été.jpg"),
                        kind: EntryKind::File,
                        size: 300_000,
                        mtime: t(T0 + 60, 0),
                        mode: 0o644,
                        target: None,
                    },
                    Entry {
                        path: p("photos/été.png"),
                        kind: EntryKind::File,
                        size: 7,
                        mtime: t(T0 + 61, 0),
                        mode: 0o644,
                        target: None,
                    },
                    Entry {
                        path: p("photos/êtes"),
                        kind: EntryKind::File,
                        size: 0,
                        mtime: t(T0 + 62, 0),
                        mode: 0o644,
                        target: None,
                    },
                ],
            }),
        )?,
        client(
            "manifest-names",
            "Names are bytes. `C:\\notes.txt` is one ordinary name: a backslash and a drive \
             letter mean nothing. `café.txt` is UTF-8, a plain JSON string. `caf\\xE9.txt` \
             (Latin-1) is not UTF-8: in JSON it is {\"hex\": ...}, lowercase hex of every \
             byte; in postcard it is its bytes (varint length, bytes, as a string would be), \
             sharing `caf` with the entry before it. The folder `d\\xE9j\\xE0` and the file \
             in it are not UTF-8 either: JSON writes each whole path in hex, postcard shares \
             the folder's 4 bytes and sends the suffix `/vu.txt`.",
            ClientMsg::Manifest(Manifest {
                entries: vec![
                    entry(p("C:\\notes.txt"), EntryKind::File, 5, t(T0, 0), 0o644),
                    entry(p("café.txt"), EntryKind::File, 6, t(T0, 0), 0o644),
                    entry(pb(b"caf\xe9.txt"), EntryKind::File, 7, t(T0, 0), 0o644),
                    entry(pb(b"d\xe9j\xe0"), EntryKind::Dir, 0, t(T0, 0), 0o755),
                    entry(
                        pb(b"d\xe9j\xe0/vu.txt"),
                        EntryKind::File,
                        8,
                        t(T0, 0),
                        0o644,
                    ),
                ],
            }),
        )?,
        client(
            "manifest-kinds",
            "Entries with no content, which the server never requests: a FIFO (made empty \
             with its mode), a symlink with an absolute target and one whose target is not \
             UTF-8 (JSON {\"hex\": ...}), both stored verbatim and never followed (their \
             mode, 0777 from lstat, is ignored; `target` is set for symlinks only), and a \
             `keep` entry, which a client sends for a path it could not read or excludes: \
             the server keeps what it holds at and under it (size 0, mtime 0, mode 0).",
            ClientMsg::Manifest(Manifest {
                entries: vec![
                    entry(p("fifo"), EntryKind::Fifo, 0, t(T0, 0), 0o644),
                    Entry {
                        target: link(b"/etc/hostname"),
                        ..entry(p("link-abs"), EntryKind::Symlink, 0, t(T0, 0), 0o777)
                    },
                    Entry {
                        target: link(b"caf\xe9.txt"),
                        ..entry(p("link-latin1"), EntryKind::Symlink, 0, t(T0, 0), 0o777)
                    },
                    entry(p("private"), EntryKind::Keep, 0, t(0, 0), 0),
                ],
            }),
        )?,
        client(
            "manifest-modes",
            "Permission bits, `st_mode & 07777`: a directory 0755 (493), an executable 0755, \
             a setuid program 04755 (2541), a private file 0600 (384), a sticky directory \
             01777 (1023). The wire carries the client's bits as they are; the server drops \
             setuid and setgid (04755 is stored as 0755) unless it runs with --keep-setid, \
             and never applies ownership.",
            ClientMsg::Manifest(Manifest {
                entries: vec![
                    entry(p("bin"), EntryKind::Dir, 0, t(T0, 0), 0o755),
                    entry(p("bin/tool"), EntryKind::File, 9, t(T0, 0), 0o755),
                    entry(p("bin/tool-setuid"), EntryKind::File, 9, t(T0, 0), 0o4755),
                    entry(p("secret.key"), EntryKind::File, 32, t(T0, 0), 0o600),
                    entry(p("tmp"), EntryKind::Dir, 0, t(T0, 0), 0o1777),
                ],
            }),
        )?,
        client(
            "manifest-empty",
            "A MANIFEST batch with no entries (legal; a client with nothing to list \
             normally sends MANIFEST_END alone).",
            ClientMsg::Manifest(Manifest { entries: vec![] }),
        )?,
        client(
            "manifest-end",
            "MANIFEST_END: all batches held 4 entries.",
            ClientMsg::ManifestEnd(ManifestEnd { entries: 4 }),
        )?,
        client(
            "file-header",
            "FILE_HEADER: 2048 bytes of DATA follow; the server gives the stored file mode \
             0644 (420) and the mtime; offset is 0 without `resume`.",
            ClientMsg::FileHeader(FileHeader {
                path: p("docs/report.txt"),
                size: 2048,
                mtime: t(T0, 123_456_789),
                mode: 0o644,
                delta: false,
                offset: 0,
            }),
        )?,
        client(
            "file-header-sparse",
            "FILE_HEADER of a sparse file: `size` (1 GiB here) counts data and holes alike; \
             DATA and HOLE frames follow, adding up to it. Mode 0600 (384).",
            ClientMsg::FileHeader(FileHeader {
                path: p("vm/disk.img"),
                size: 1 << 30,
                mtime: t(T0, 0),
                mode: 0o600,
                delta: false,
                offset: 0,
            }),
        )?,
        client(
            "hole",
            "HOLE (variant 8, appended after ERROR so that no older index moves): the next \
             1 MiB of the open file is a hole, reading as zeros. Sent instead of DATA for \
             a range SEEK_HOLE found; counts toward FILE_HEADER.size like DATA; at least 1.",
            ClientMsg::Hole(Hole { len: 1 << 20 }),
        )?,
        client(
            "file-header-delta",
            "FILE_HEADER with delta: the content follows as COPY (blocks of the server's \
             copy, whose SIGNATURE it sent) and DATA (literal bytes), and FILE_END carries \
             the file's BLAKE3 hash.",
            ClientMsg::FileHeader(FileHeader {
                path: p("data/run.bin"),
                size: 3 << 20,
                mtime: t(T0 + 90, 0),
                mode: 0o644,
                delta: true,
                offset: 0,
            }),
        )?,
        client(
            "copy",
            "COPY (variant 9): the next bytes are 40 blocks of the server's copy from block \
             12, as its SIGNATURE cut them.",
            ClientMsg::Copy(CopyBlocks {
                block: 12,
                count: 40,
            }),
        )?,
        client(
            "auth",
            "AUTH (variant 10), only inside TLS, right after HELLO: HMAC-SHA256 keyed by the \
             client's secret over the client label, the session's TLS exporter value and the \
             client id (here secret `0123456789abcdef0123`, exporter 32 bytes of 0x07, id \
             `lab-1`).",
            ClientMsg::Auth(Auth {
                proof: filesync_core::auth::proof(
                    &secret,
                    filesync_core::auth::Role::Client,
                    &[7u8; 32],
                    &id("lab-1"),
                ),
            }),
        )?,
        client(
            "file-end-hash",
            "FILE_END after a delta: the BLAKE3 hash of the whole file (hex in JSON, 32 raw \
             bytes in postcard); the server stores the rebuilt file only if it matches.",
            ClientMsg::FileEnd(FileEnd {
                hash: Some(Hash(*blake3::hash(b"the whole file").as_bytes())),
            }),
        )?,
        client(
            "file-end",
            "FILE_END: the open file is complete and was unchanged while read.",
            ClientMsg::FileEnd(FileEnd { hash: None }),
        )?,
        client(
            "file-abort",
            "FILE_ABORT: the file vanished or changed; sent after its FILE_HEADER or alone.",
            ClientMsg::FileAbort(FileAbort {
                path: p("photos/été.jpg"),
                reason: "file changed while being read".into(),
            }),
        )?,
        client(
            "transfer-end",
            "TRANSFER_END: every requested file was sent or aborted.",
            ClientMsg::TransferEnd(TransferEnd {}),
        )?,
        client(
            "error",
            "ERROR from the client: it ends the session.",
            ClientMsg::Error(ErrorMsg {
                code: ErrorCode::INTERNAL,
                message: "walk failed".into(),
            }),
        )?,
        server(
            "welcome",
            "WELCOME: version 3, no shared capabilities, the id the server files under.",
            ServerMsg::Welcome(Welcome {
                version: PROTOCOL_VERSION,
                capabilities: vec![],
                client_id: id("laptop"),
            }),
        )?,
        server(
            "welcome-derived-id",
            "WELCOME to a client that sent no id, connecting from 10.0.0.7.",
            ServerMsg::Welcome(Welcome {
                version: PROTOCOL_VERSION,
                capabilities: vec![],
                client_id: ClientId::from_addr(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))),
            }),
        )?,
        server(
            "queued",
            "QUEUED: one session is ahead of this one.",
            ServerMsg::Queued(Queued { position: 1 }),
        )?,
        server(
            "ready",
            "READY: the client's turn; it may send its manifest.",
            ServerMsg::Ready(Ready {}),
        )?,
        server(
            "tasks",
            "TASKS: the files of one manifest batch the server wants, in manifest order.",
            ServerMsg::Tasks(Tasks {
                paths: vec![p("docs/report.txt"), p("photos/été.jpg")],
                resume: vec![],
            }),
        )?,
        server(
            "deletions",
            "DELETIONS: not sent since version 2 (PLAN_END counts deletions); kept so that \
             every variant has a vector and postcard indices never move. A version-3 client \
             treats it as an unexpected message.",
            ServerMsg::Deletions(Deletions {
                paths: vec![p("gone/sub/file.txt"), p("gone/sub"), p("gone")],
            }),
        )?,
        server(
            "plan-end",
            "PLAN_END, after MANIFEST_END: the files and bytes all TASKS asked for, and the \
             server entries to delete (each entry inside a deleted folder counts).",
            ServerMsg::PlanEnd(PlanEnd {
                files: 2,
                bytes: 302_048,
                deletions: 3,
            }),
        )?,
        server(
            "file-result-stored",
            "FILE_RESULT: stored (written, mtime set, renamed into place).",
            ServerMsg::FileResult(FileResult {
                path: p("docs/report.txt"),
                outcome: Outcome::Stored,
            }),
        )?,
        server(
            "file-result-rejected",
            "FILE_RESULT: rejected with a code (6 = storage); the old copy is untouched.",
            ServerMsg::FileResult(FileResult {
                path: p("docs/report.txt"),
                outcome: Outcome::Rejected {
                    code: ErrorCode::STORAGE,
                    reason: "No space left on device".into(),
                },
            }),
        )?,
        server(
            "next-sync",
            "NEXT_SYNC: come back in 10 minutes; counts of the session.",
            ServerMsg::NextSync(NextSync {
                at: t(T0 + 600, 250_000_000),
                delay_ms: 600_000,
                stored: 1,
                rejected: 1,
                deleted: 3,
                held_back: 0,
                held_back_reason: String::new(),
            }),
        )?,
        server(
            "signature",
            "SIGNATURE (variant 9): the block signature of the server's copy of a file the \
             next TASKS asks for; here a 2,100-byte copy in 700-byte blocks, each with its \
             rolling weak checksum and its XXH3-64 (8 bytes, little-endian).",
            ServerMsg::Signature(SignatureMsg {
                path: p("data/small.bin"),
                signature: filesync_core::delta::Signature::compute(
                    &(0..2100u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>()[..],
                    2100,
                )?,
            }),
        )?,
        server(
            "auth-ok",
            "AUTH_OK (variant 10): the server accepted AUTH and proves it knows the same \
             secret, with the server label (inputs as in `auth`).",
            ServerMsg::AuthOk(AuthOk {
                proof: filesync_core::auth::proof(
                    &secret,
                    filesync_core::auth::Role::Server,
                    &[7u8; 32],
                    &id("lab-1"),
                ),
            }),
        )?,
        server(
            "next-sync-held-back",
            "NEXT_SYNC after a deletion cap held 40 deletions back: the session is \
             otherwise complete; the client reports it (sync --once exits 8).",
            ServerMsg::NextSync(NextSync {
                at: t(T0 + 600, 0),
                delay_ms: 600_000,
                stored: 0,
                rejected: 0,
                deleted: 0,
                held_back: 40,
                held_back_reason: "the sync would delete 40 of the 50 entries the server holds, \
                                   more than 50% (serve --max-delete-percent)"
                    .into(),
            }),
        )?,
        server(
            "error-would-empty",
            "ERROR 10: the client listed nothing, the archive holds files, no allow_empty.",
            ServerMsg::Error(ErrorMsg {
                code: ErrorCode::WOULD_EMPTY,
                message: "refusing to empty the archive".into(),
            }),
        )?,
    ];

    // DATA frames: the same bytes in both encodings.
    let mut codec: ClientCodec = native::NativeCodec::new(Encoding::Postcard);
    let mut buf = BytesMut::new();
    codec.encode_data(b"hello, world\n", &mut buf)?;
    v.push((
        "client-data".into(),
        serde_json::to_string_pretty(&DataVector {
            kind: "data",
            direction: "client",
            note: "A DATA frame (kind 1): raw file content, identical in both encodings.",
            data_hex: hex(b"hello, world\n"),
            frame_hex: hex(&buf),
        })?,
    ));
    let mut buf = BytesMut::new();
    codec.encode_data(b"", &mut buf)?;
    v.push((
        "client-data-empty".into(),
        serde_json::to_string_pretty(&DataVector {
            kind: "data",
            direction: "client",
            note: "An empty DATA frame: legal, carries nothing (senders need not send one).",
            data_hex: String::new(),
            frame_hex: hex(&buf),
        })?,
    ));

    for (enc, note) in [
        (
            Encoding::Postcard,
            "Native preamble choosing postcard: FSNC, framing version 1, encoding 0.",
        ),
        (
            Encoding::Json,
            "Native preamble choosing JSON: FSNC, framing version 1, encoding 1.",
        ),
    ] {
        v.push((
            format!("client-preamble-{}", enc.name()),
            serde_json::to_string_pretty(&PreambleVector {
                kind: "preamble",
                direction: "client",
                note,
                encoding: enc.name(),
                hex: hex(&preamble::encode(enc)),
            })?,
        ));
    }

    let invalid: [(&str, &str, Encoding, Vec<u8>, &str); 6] = [
        (
            "invalid-too-large",
            "Length 0x00100001 (1 MiB + 1) is refused from the 4 length bytes alone, \
             before any payload is buffered.",
            Encoding::Postcard,
            vec![0x00, 0x10, 0x00, 0x01],
            "too_large",
        ),
        (
            "invalid-empty",
            "Length 0: a frame with no kind byte.",
            Encoding::Postcard,
            vec![0, 0, 0, 0],
            "empty",
        ),
        (
            "invalid-unknown-kind",
            "Kind byte 2 is not defined by framing version 1.",
            Encoding::Postcard,
            vec![0, 0, 0, 1, 2],
            "unknown_kind",
        ),
        (
            "invalid-trailing-bytes",
            "A postcard READY (variant 2) followed by one stray byte in the same frame.",
            Encoding::Postcard,
            vec![0, 0, 0, 3, 0, 2, 0],
            "message",
        ),
        (
            "invalid-unknown-variant",
            "Postcard variant index 99 is no server message of version 3.",
            Encoding::Postcard,
            vec![0, 0, 0, 2, 0, 99],
            "message",
        ),
        (
            "invalid-truncated",
            "The stream ends 8 bytes short of the announced 9-byte frame.",
            Encoding::Postcard,
            vec![0, 0, 0, 9, 0],
            "truncated",
        ),
    ];
    for (name, note, enc, bytes, error) in invalid {
        v.push((
            format!("server-{name}"),
            serde_json::to_string_pretty(&InvalidVector {
                kind: "invalid",
                direction: "server",
                note,
                encoding: enc.name(),
                frame_hex: hex(&bytes),
                error,
            })?,
        ));
    }

    // Names a server must refuse while decoding: the hex form is checked like any other
    // path, and only its exact shape is accepted.
    let json_frame = |json: &str| {
        let mut f = u32::try_from(json.len() + 1)
            .expect("a small frame")
            .to_be_bytes()
            .to_vec();
        f.push(native::KIND_MSG);
        f.extend_from_slice(json.as_bytes());
        f
    };
    let invalid_client: [(&str, &str, Encoding, Vec<u8>); 4] = [
        (
            "invalid-hex-dotdot",
            "A JSON FILE_ABORT whose path is {\"hex\": \"2e2e2f78\"}, that is `../x`: the \
             escape is decoded, then the path is validated and refused like any other.",
            Encoding::Json,
            json_frame(r#"{"type":"FILE_ABORT","path":{"hex":"2e2e2f78"},"reason":"x"}"#),
        ),
        (
            "invalid-hex-extra-key",
            "A JSON name escape with a member besides `hex`: refused, only {\"hex\": ...} \
             is a name.",
            Encoding::Json,
            json_frame(r#"{"type":"FILE_ABORT","path":{"hex":"e9","x":1},"reason":"x"}"#),
        ),
        (
            "invalid-hex-digits",
            "A JSON name escape whose value is not hex digits: refused.",
            Encoding::Json,
            json_frame(r#"{"type":"FILE_ABORT","path":{"hex":"zz"},"reason":"x"}"#),
        ),
        (
            "invalid-nul-name",
            "A postcard FILE_ABORT (variant 5) whose path is the 3 bytes `a`, NUL, `b`: \
             names may hold any byte but NUL (and `/` only as the separator).",
            Encoding::Postcard,
            vec![0, 0, 0, 7, 0, 5, 3, b'a', 0, b'b', 0],
        ),
    ];
    for (name, note, enc, bytes) in invalid_client {
        v.push((
            format!("client-{name}"),
            serde_json::to_string_pretty(&InvalidVector {
                kind: "invalid",
                direction: "client",
                note,
                encoding: enc.name(),
                frame_hex: hex(&bytes),
                error: "message",
            })?,
        ));
    }
    Ok(v)
}

// ---------------------------------------------------------------------------------------
// Original dialect

/// The layout of one `seed/*.json` vector.
#[derive(Serialize)]
struct SeedVector<'a, M: Serialize> {
    kind: &'static str,
    /// `udp` (discovery datagrams) or `tcp`.
    channel: &'static str,
    direction: &'static str,
    #[serde(rename = "type")]
    ty: &'a str,
    note: &'a str,
    /// The decoded meaning, as our encoder prints it.
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a M>,
    /// The exact text on the wire.
    json: &'a str,
    /// What our encoder prints for the decoded value, when not `json` itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    canonical: Option<String>,
    /// Whether a `\n` follows the JSON text on the wire.
    newline: bool,
    /// Raw bytes that follow (a FILE_HEADER's content).
    #[serde(skip_serializing_if = "Option::is_none")]
    body_hex: Option<String>,
    /// For `kind: "reject"`: the text must not decode.
    #[serde(skip_serializing_if = "Option::is_none")]
    expect: Option<&'static str>,
}

struct Seed<'a> {
    name: &'a str,
    channel: &'static str,
    direction: &'static str,
    note: &'a str,
    json: String,
    newline: bool,
    body: Option<&'a [u8]>,
}

/// A seed vector whose `json` decodes as `M`; `canonical` is recorded when our
/// compact re-encoding differs from the input text.
fn seed_vector<M>(s: Seed<'_>) -> Res<(String, String)>
where
    M: Serialize + serde::de::DeserializeOwned + Kind,
{
    let m: M = serde_json::from_str(&s.json)?;
    let canon = serde_json::to_string(&m)?;
    let v = SeedVector {
        kind: "message",
        channel: s.channel,
        direction: s.direction,
        ty: m.kind(),
        note: s.note,
        message: Some(&m),
        json: &s.json,
        canonical: (canon != s.json).then_some(canon),
        newline: s.newline,
        body_hex: s.body.map(hex),
        expect: None,
    };
    Ok((s.name.to_owned(), serde_json::to_string_pretty(&v)?))
}

fn reject(name: &str, direction: &'static str, note: &str, json: &str) -> Res<(String, String)> {
    let ty = serde_json::from_str::<serde_json::Value>(json)?["type"]
        .as_str()
        .unwrap_or("?")
        .to_owned();
    let v: SeedVector<'_, ()> = SeedVector {
        kind: "reject",
        channel: "tcp",
        direction,
        ty: &ty,
        note,
        message: None,
        json,
        canonical: None,
        newline: false,
        body_hex: None,
        expect: Some("error"),
    };
    Ok((name.to_owned(), serde_json::to_string_pretty(&v)?))
}

trait Kind {
    fn kind(&self) -> &'static str;
}
impl Kind for seed::Datagram {
    fn kind(&self) -> &'static str {
        seed::Datagram::kind(self)
    }
}
impl Kind for seed::ServerMsg {
    fn kind(&self) -> &'static str {
        seed::ServerMsg::kind(self)
    }
}
impl Kind for seed::ClientMsg {
    fn kind(&self) -> &'static str {
        seed::ClientMsg::kind(self)
    }
}

fn seed_vectors() -> Res<Vec<(String, String)>> {
    let udp = |name, direction, note, json: &str| Seed {
        name,
        channel: "udp",
        direction,
        note,
        json: json.to_owned(),
        newline: false,
        body: None,
    };
    let tcp = |name, direction, note, json: String, newline| Seed {
        name,
        channel: "tcp",
        direction,
        note,
        json,
        newline,
        body: None,
    };
    let native_greeting = |status, queue_position, auth| -> Res<String> {
        Ok(serde_json::to_string(&seed::ServerMsg::Status(
            ServerStatus {
                status,
                queue_position,
                filesync: Some(NativeOffer {
                    versions: vec![PROTOCOL_VERSION],
                    encodings: vec![Encoding::Postcard, Encoding::Json],
                    auth,
                }),
            },
        ))?)
    };

    let v = vec![
        seed_vector::<seed::Datagram>(udp(
            "discover",
            "client",
            "DISCOVER, sent to 224.1.1.1:9999 with multicast TTL 2.",
            r#"{"type":"DISCOVER"}"#,
        ))?,
        seed_vector::<seed::Datagram>(udp(
            "offer",
            "server",
            "OFFER, unicast to the DISCOVER's source; the client takes the datagram's source IP.",
            r#"{"type":"OFFER","port":9000}"#,
        ))?,
        seed_vector::<seed::ServerMsg>(tcp(
            "greeting-ready",
            "server",
            "The original server's greeting: no delimiter, no extensions.",
            r#"{"type":"SERVER_STATUS_MESSAGE","status":"READY"}"#.into(),
            false,
        ))?,
        seed_vector::<seed::ServerMsg>(tcp(
            "greeting-busy",
            "server",
            "The original server's BUSY greeting.",
            r#"{"type":"SERVER_STATUS_MESSAGE","status":"BUSY"}"#.into(),
            false,
        ))?,
        seed_vector::<seed::ServerMsg>(tcp(
            "greeting-alias",
            "server",
            "The documented spelling SERVER_STATUS is read; we always write \
             SERVER_STATUS_MESSAGE.",
            r#"{"type":"SERVER_STATUS","status":"READY"}"#.into(),
            false,
        ))?,
        seed_vector::<seed::ServerMsg>(tcp(
            "greeting-native-ready",
            "server",
            "A filesync server's greeting: the `filesync` extension (ignored by original \
             clients) offers native versions and encodings; terminated by a newline.",
            native_greeting(Status::Ready, None, false)?,
            true,
        ))?,
        seed_vector::<seed::ServerMsg>(tcp(
            "greeting-native-auth",
            "server",
            "The greeting of a server with --auth-file: `auth` is true, so a client opens TLS \
             (a ClientHello, first byte 0x16) instead of sending the preamble in the clear.",
            native_greeting(Status::Ready, None, true)?,
            true,
        ))?,
        seed_vector::<seed::ServerMsg>(tcp(
            "greeting-native-busy",
            "server",
            "A busy filesync server's greeting with the queue position extension.",
            native_greeting(Status::Busy, Some(2), false)?,
            true,
        ))?,
        seed_vector::<seed::ClientMsg>(tcp(
            "client-files-info",
            "client",
            "The documented CLIENT_FILES_INFO: no delimiter; a timestamp with microseconds.",
            r#"{"type":"CLIENT_FILES_INFO","client_id":"a","files":[{"name":"x.txt","path":"dir/x.txt","last_mod":"2025-05-06T14:23:00.123456"}]}"#.into(),
            false,
        ))?,
        seed_vector::<seed::ClientMsg>(tcp(
            "client-files-info-null-id",
            "client",
            "client_id null: the server files the client under its address \
             (client_10_0_0_7); a timestamp with zero microseconds has no fraction.",
            r#"{"type":"CLIENT_FILES_INFO","client_id":null,"files":[{"name":"a.txt","path":"a.txt","last_mod":"2025-05-06T14:23:00"}]}"#.into(),
            false,
        ))?,
        seed_vector::<seed::ClientMsg>(tcp(
            "client-files-info-spaced",
            "client",
            "Python's default json.dumps separators (`, ` and `: `) and a trailing newline \
             are read as well; we write compact JSON.",
            "{\"type\": \"CLIENT_FILES_INFO\", \"client_id\": \"a\", \"files\": [{\"name\": \"x.txt\", \"path\": \"dir/x.txt\", \"last_mod\": \"2025-05-06T14:23:00.123456\"}]}".into(),
            false,
        ))?,
        seed_vector::<seed::ClientMsg>(tcp(
            "client-files-info-large",
            "client",
            "A CLIENT_FILES_INFO over 8192 bytes: one JSON value that spans many reads; the \
             reference server (single 8192-byte recv) fails on it, ours must not.",
            large_files_info()?,
            false,
        ))?,
        seed_vector::<seed::ClientMsg>(tcp(
            "client-files-info-empty",
            "client",
            "An empty listing: a filesync server then deletes nothing (an unmounted folder must \
             not wipe the archive).",
            r#"{"type":"CLIENT_FILES_INFO","client_id":"a","files":[]}"#.into(),
            false,
        ))?,
        seed_vector::<seed::ServerMsg>(tcp(
            "tasks",
            "server",
            "TASKS, followed on the wire by a newline.",
            r#"{"type":"TASKS","files_to_send":["dir/x.txt"]}"#.into(),
            true,
        ))?,
        seed_vector::<seed::ServerMsg>(tcp(
            "tasks-empty",
            "server",
            "TASKS with nothing to send; still followed by a newline.",
            r#"{"type":"TASKS","files_to_send":[]}"#.into(),
            true,
        ))?,
        {
            let body = b"hello world";
            let s = Seed {
                name: "file-header",
                channel: "tcp",
                direction: "client",
                note: "FILE_HEADER, a newline, then exactly `size` raw bytes.",
                json: r#"{"type":"FILE_HEADER","name":"x.txt","path":"dir/x.txt","size":11,"last_mod":"2025-05-06T14:23:00.123456"}"#.into(),
                newline: true,
                body: Some(body),
            };
            seed_vector::<seed::ClientMsg>(s)?
        },
        {
            let s = Seed {
                name: "file-header-empty",
                channel: "tcp",
                direction: "client",
                note: "An empty file: FILE_HEADER with size 0 and its newline, no content.",
                json: r#"{"type":"FILE_HEADER","name":"empty","path":"empty","size":0,"last_mod":"2025-05-06T14:23:00"}"#.into(),
                newline: true,
                body: Some(b""),
            };
            seed_vector::<seed::ClientMsg>(s)?
        },
        {
            let s = Seed {
                name: "file-header-millis",
                channel: "tcp",
                direction: "client",
                note: "A timestamp with 3 fractional digits (Python's fromisoformat reads it); \
                       we print 6.",
                json: r#"{"type":"FILE_HEADER","name":"x.txt","path":"x.txt","size":1,"last_mod":"2025-05-06T14:23:00.500"}"#.into(),
                newline: true,
                body: Some(b"x"),
            };
            seed_vector::<seed::ClientMsg>(s)?
        },
        seed_vector::<seed::ServerMsg>(tcp(
            "next-sync",
            "server",
            "NEXT_SYNC, naive local time with microseconds, no delimiter; the server closes.",
            r#"{"type":"NEXT_SYNC","time":"2025-05-07T16:30:00.123456"}"#.into(),
            false,
        ))?,
        seed_vector::<seed::ServerMsg>(tcp(
            "next-sync-no-micros",
            "server",
            "NEXT_SYNC whose time has zero microseconds: no fraction is printed.",
            r#"{"type":"NEXT_SYNC","time":"2025-05-07T16:30:00"}"#.into(),
            false,
        ))?,
        reject(
            "reject-next-sync-utc",
            "server",
            "A timestamp with an offset is refused: the reference client fails on it.",
            r#"{"type":"NEXT_SYNC","time":"2025-05-07T16:30:00Z"}"#,
        )?,
        reject(
            "reject-next-sync-offset",
            "server",
            "A timestamp with a numeric offset is refused as well.",
            r#"{"type":"NEXT_SYNC","time":"2025-05-07T16:30:00+00:00"}"#,
        )?,
        reject(
            "reject-path-escape",
            "client",
            "A path that climbs out of the client's folder is refused while decoding.",
            r#"{"type":"CLIENT_FILES_INFO","client_id":"a","files":[{"name":"passwd","path":"../../etc/passwd","last_mod":"2025-05-06T14:23:00"}]}"#,
        )?,
        reject(
            "reject-absolute-path",
            "client",
            "An absolute path is refused.",
            r#"{"type":"FILE_HEADER","name":"x","path":"/etc/x","size":1,"last_mod":"2025-05-06T14:23:00"}"#,
        )?,
        reject(
            "reject-client-id",
            "client",
            "A client id that is not one safe path component is refused.",
            r#"{"type":"CLIENT_FILES_INFO","client_id":"../other","files":[]}"#,
        )?,
    ];
    // Check the large listing really is large, so the vector keeps its point.
    let large = v.iter().find(|(n, _)| n == "client-files-info-large");
    if let Some((_, text)) = large {
        let f: serde_json::Value = serde_json::from_str(text)?;
        let len = f["json"].as_str().map_or(0, str::len);
        assert!(len > 8192, "large listing is only {len} bytes");
    }
    Ok(v)
}

fn large_files_info() -> Res<String> {
    let files = (0..120)
        .map(|i| {
            let path = p(&format!("photos/2025/{:02}/IMG_{i:04}.jpg", i % 12 + 1));
            seed::FileInfo {
                name: String::from_utf8_lossy(path.file_name()).into_owned(),
                path,
                last_mod: st(&format!(
                    "2025-{:02}-{:02}T{:02}:{:02}:{:02}{}",
                    i % 12 + 1,
                    i % 28 + 1,
                    i % 24,
                    i % 60,
                    (i * 7) % 60,
                    if i % 3 == 0 {
                        String::new()
                    } else {
                        format!(".{:06}", i * 8191 % 1_000_000)
                    }
                )),
            }
        })
        .collect();
    Ok(serde_json::to_string(&seed::ClientMsg::FilesInfo(
        seed::ClientFilesInfo {
            client_id: Some(id("camera-01")),
            files,
        },
    ))?)
}

// ---------------------------------------------------------------------------------------
// A whole native session, from the real state machines

#[derive(Serialize)]
struct SessionVector {
    kind: &'static str,
    direction: &'static str,
    note: &'static str,
    encoding: &'static str,
    peer: String,
    agent: String,
    client_id: String,
    allow_empty: bool,
    queue_position: Option<u32>,
    server_index: Vec<Entry>,
    steps: Vec<Step>,
}

#[derive(Serialize)]
struct Step {
    from: &'static str,
    what: String,
    hex: String,
}

fn frame_hex<M: Serialize>(m: &M) -> Res<String> {
    Ok(hex(&native::frame_bytes(Encoding::Postcard, m)?))
}

fn session_vector() -> Res<(String, String)> {
    let enc = Encoding::Postcard;
    let peer = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));
    let params = ClientParams {
        client_id: Some(id("laptop")),
        encoding: enc,
        agent: "filesync/0.1.0".into(),
        allow_empty: false,
        max_delete: None,
        whole_file: false,
    };
    // The server holds an unchanged file, an outdated one and a directory the client
    // removed; the client lists a new empty directory and a file that vanishes mid-sync.
    let server_index = vec![
        Entry {
            path: p("keep.txt"),
            kind: EntryKind::File,
            size: 4,
            mtime: t(T0, 0),
            mode: 0o644,
            target: None,
        },
        Entry {
            path: p("notes.txt"),
            kind: EntryKind::File,
            size: 3,
            mtime: t(T0 - 86_400, 0),
            mode: 0o644,
            target: None,
        },
        Entry {
            path: p("old"),
            kind: EntryKind::Dir,
            size: 0,
            mtime: t(T0 - 86_400, 0),
            mode: 0o755,
            target: None,
        },
        Entry {
            path: p("old/a.txt"),
            kind: EntryKind::File,
            size: 1,
            mtime: t(T0 - 86_400, 0),
            mode: 0o644,
            target: None,
        },
    ];
    let manifest = vec![
        Entry {
            path: p("empty"),
            kind: EntryKind::Dir,
            size: 0,
            mtime: t(T0, 0),
            mode: 0o755,
            target: None,
        },
        Entry {
            path: p("keep.txt"),
            kind: EntryKind::File,
            size: 4,
            mtime: t(T0, 0),
            mode: 0o644,
            target: None,
        },
        Entry {
            path: p("notes.txt"),
            kind: EntryKind::File,
            size: 13,
            mtime: t(T0 + 30, 5),
            mode: 0o644,
            target: None,
        },
        Entry {
            path: p("tmp.log"),
            kind: EntryKind::File,
            size: 100,
            mtime: t(T0 + 40, 0),
            mode: 0o644,
            target: None,
        },
    ];
    let content = b"hello, world\n";
    let queue_position = Some(1);
    let mut steps = Vec::new();
    let mut push = |from: &'static str, what: &str, hex: String| {
        steps.push(Step {
            from,
            what: what.to_owned(),
            hex,
        })
    };

    // Greeting (JSON, newline-terminated), preamble, HELLO.
    let server = Server::new(ServerParams::default(), peer);
    let (server, status) = server.greet(queue_position);
    let mut greeting = serde_json::to_vec(&seed::ServerMsg::Status(status.clone()))?;
    greeting.push(b'\n');
    push("server", "GREETING", hex(&greeting));
    let (client, g) = Client::new(params).on_greeting(&status)?;
    push("client", "PREAMBLE", hex(&g.preamble));
    push("client", g.hello.kind(), frame_hex(&g.hello)?);
    let (server, welcome) = server
        .on_hello(enc, g.hello)
        .map_err(|r| r.error.to_string())?;
    push("server", welcome.kind(), frame_hex(&welcome)?);
    let Waiting::Waiting(client, _) = client.on_message(welcome)? else {
        return Err("client not waiting after WELCOME".into());
    };
    let queued = server.queued(1);
    push("server", queued.kind(), frame_hex(&queued)?);
    let Waiting::Waiting(client, _) = client.on_message(queued)? else {
        return Err("client not waiting after QUEUED".into());
    };
    let held = server_index.iter().map(|e| {
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
    });
    let (server, ready) = server.ready();
    push("server", ready.kind(), frame_hex(&ready)?);
    let Waiting::Ready(client) = client.on_message(ready)? else {
        return Err("client not ready after READY".into());
    };
    let mut index = held.collect::<Vec<_>>().into_iter();
    let mut ops = Vec::new();

    // One MANIFEST batch and its TASKS; the files asked for flow before MANIFEST_END,
    // as versions 2 and 3 allow, then the plan closes and the transfer ends.
    let mut client = client.start();
    let m = client.list(manifest.clone());
    push("client", m.kind(), frame_hex(&m)?);
    let Listed::Listing(mut server, tasks) =
        server.on_message(m, &mut index, &mut |op| ops.push(op))?
    else {
        return Err("server not listing after MANIFEST".into());
    };
    push("server", tasks.kind(), frame_hex(&tasks)?);
    let work = client.on_message(tasks)?;

    // Files: notes.txt is sent whole, tmp.log vanished before it could be opened.
    let mut results = Vec::new();
    for (task, _) in work {
        if task.path().to_str() == Some("notes.txt") {
            let notes = Entry {
                size: content.len() as u64,
                ..manifest[2].clone()
            };
            let h = client.header(&task, &notes);
            push("client", h.kind(), frame_hex(&h)?);
            let Listed::File(s, Receive::Open(_)) =
                server.on_message(h, &mut index, &mut |op| ops.push(op))?
            else {
                return Err("server did not open notes.txt".into());
            };
            server = s;
            let mut buf = BytesMut::new();
            let mut codec: ClientCodec = native::NativeCodec::new(enc);
            codec.encode_data(content, &mut buf)?;
            push("client", "DATA", hex(&buf));
            server.on_data(content.len())?;
            let end = client.file_end(task, content.len() as u64);
            push("client", end.kind(), frame_hex(&end)?);
            let Listed::File(mut s, Receive::Commit(done, _)) =
                server.on_message(end, &mut index, &mut |op| ops.push(op))?
            else {
                return Err("server did not commit notes.txt".into());
            };
            results.push(s.file_result(done, Outcome::Stored));
            server = s;
        } else {
            let a = client.abort(task, "No such file or directory (os error 2)".into());
            push("client", a.kind(), frame_hex(&a)?);
            let Listed::File(s, Receive::Discard(..)) =
                server.on_message(a, &mut index, &mut |op| ops.push(op))?
            else {
                return Err("server did not discard the aborted file".into());
            };
            server = s;
        }
    }
    let end = client.end_manifest();
    push("client", end.kind(), frame_hex(&end)?);
    let Listed::Receiving(server, plan_end) =
        server.on_message(end, &mut index, &mut |op| ops.push(op))?
    else {
        return Err("server not receiving after MANIFEST_END".into());
    };
    for r in results {
        push("server", r.kind(), frame_hex(&r)?);
        client.on_message(r)?;
    }
    push("server", plan_end.kind(), frame_hex(&plan_end)?);
    let deletions = match &plan_end {
        ServerMsg::PlanEnd(e) => e.deletions,
        _ => 0,
    };
    client.on_message(plan_end)?;
    let (client, end) = client.finish()?;
    push("client", end.kind(), frame_hex(&end)?);
    let Receipt::Received(mut server) = server.on_message(end)? else {
        return Err("server not done after TRANSFER_END".into());
    };
    server.deleted(deletions, 0);
    let (_server, next) = server.next_sync(t(T0 + 600, 0), 600_000);
    push("server", next.kind(), frame_hex(&next)?);
    let Finish::Done(_) = client.on_message(next)? else {
        return Err("client not done after NEXT_SYNC".into());
    };

    let v = SessionVector {
        kind: "session",
        direction: "both",
        note: "A whole native session in postcard, produced by the client and server state \
               machines: BUSY greeting, QUEUED, READY, one manifest batch and its TASKS, \
               the requested files sent before MANIFEST_END (one whole, one vanished), \
               PLAN_END counting two deletions, NEXT_SYNC. Steps are in one valid wire \
               order; `hex` is exactly the bytes sent.",
        encoding: enc.name(),
        peer: peer.to_string(),
        agent: "filesync/0.1.0".into(),
        client_id: "laptop".into(),
        allow_empty: false,
        queue_position,
        server_index,
        steps,
    };
    Ok(("session-postcard".into(), serde_json::to_string_pretty(&v)?))
}

/// A version-3 session: a sparse file sent as DATA, HOLE, DATA; a name that is not UTF-8;
/// a symlink, a FIFO and a `keep` entry, never requested; a file whose only change is its
/// mode, and a setuid file the server holds without the bit, neither requested.
fn sparse_session_vector() -> Res<(String, String)> {
    let enc = Encoding::Postcard;
    let peer = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 8));
    let params = ClientParams {
        client_id: Some(id("build-box")),
        encoding: enc,
        agent: "filesync/0.1.0".into(),
        allow_empty: false,
        max_delete: None,
        whole_file: false,
    };
    let head = b"BOOT";
    let tail = b"END\n";
    let hole: u64 = 1 << 20;
    let sparse_size = head.len() as u64 + hole + tail.len() as u64;
    let server_index = vec![
        entry(p("private"), EntryKind::Dir, 0, t(T0 - 86_400, 0), 0o700),
        entry(
            p("private/a.txt"),
            EntryKind::File,
            1,
            t(T0 - 86_400, 0),
            0o600,
        ),
        entry(p("run.sh"), EntryKind::File, 10, t(T0, 0), 0o644),
        entry(p("tool"), EntryKind::File, 20, t(T0, 0), 0o755),
    ];
    let manifest = vec![
        entry(pb(b"caf\xe9.txt"), EntryKind::File, 5, t(T0, 0), 0o644),
        entry(
            p("disk.img"),
            EntryKind::File,
            sparse_size,
            t(T0 + 10, 0),
            0o600,
        ),
        Entry {
            target: link(b"disk.img"),
            ..entry(p("link"), EntryKind::Symlink, 0, t(T0, 0), 0o777)
        },
        entry(p("pipe"), EntryKind::Fifo, 0, t(T0, 0), 0o644),
        entry(p("private"), EntryKind::Keep, 0, t(0, 0), 0),
        entry(p("run.sh"), EntryKind::File, 10, t(T0, 0), 0o755),
        entry(p("tool"), EntryKind::File, 20, t(T0, 0), 0o4755),
    ];
    let mut steps = Vec::new();
    let mut push = |from: &'static str, what: &str, hex: String| {
        steps.push(Step {
            from,
            what: what.to_owned(),
            hex,
        })
    };
    let data_frame = |bytes: &[u8]| -> Res<String> {
        let mut buf = BytesMut::new();
        let mut codec: ClientCodec = native::NativeCodec::new(enc);
        codec.encode_data(bytes, &mut buf)?;
        Ok(hex(&buf))
    };

    // Greeting (READY: no queue), preamble, HELLO, WELCOME, READY.
    let (server, status) = Server::new(ServerParams::default(), peer).greet(None);
    let mut greeting = serde_json::to_vec(&seed::ServerMsg::Status(status.clone()))?;
    greeting.push(b'\n');
    push("server", "GREETING", hex(&greeting));
    let (client, g) = Client::new(params).on_greeting(&status)?;
    push("client", "PREAMBLE", hex(&g.preamble));
    push("client", g.hello.kind(), frame_hex(&g.hello)?);
    let (server, welcome) = server
        .on_hello(enc, g.hello)
        .map_err(|r| r.error.to_string())?;
    push("server", welcome.kind(), frame_hex(&welcome)?);
    let Waiting::Waiting(client, _) = client.on_message(welcome)? else {
        return Err("client not waiting after WELCOME".into());
    };
    let (server, ready) = server.ready();
    push("server", ready.kind(), frame_hex(&ready)?);
    let Waiting::Ready(client) = client.on_message(ready)? else {
        return Err("client not ready after READY".into());
    };
    let mut index = server_index
        .iter()
        .map(|e| {
            let h = Held {
                kind: e.kind,
                size: e.size,
                mtime: e.mtime,
                mode: e.mode,
                target: e.target.clone(),
            };
            (e.path.clone(), h)
        })
        .collect::<Vec<_>>()
        .into_iter();
    let mut ops = Vec::new();

    // One batch, its TASKS (the two files with content), MANIFEST_END, PLAN_END; this
    // time the files follow PLAN_END.
    let mut client = client.start();
    let m = client.list(manifest.clone());
    push("client", m.kind(), frame_hex(&m)?);
    let Listed::Listing(server, tasks) =
        server.on_message(m, &mut index, &mut |op| ops.push(op))?
    else {
        return Err("server not listing after MANIFEST".into());
    };
    push("server", tasks.kind(), frame_hex(&tasks)?);
    let work = client.on_message(tasks)?;
    let end = client.end_manifest();
    push("client", end.kind(), frame_hex(&end)?);
    let Listed::Receiving(mut server, plan_end) =
        server.on_message(end, &mut index, &mut |op| ops.push(op))?
    else {
        return Err("server not receiving after MANIFEST_END".into());
    };
    push("server", plan_end.kind(), frame_hex(&plan_end)?);
    client.on_message(plan_end)?;

    for (task, e) in work {
        let h = client.header(&task, &e);
        push("client", h.kind(), frame_hex(&h)?);
        let Receipt::Receiving(s, Receive::Open(_)) = server.on_message(h)? else {
            return Err("server did not open a file".into());
        };
        server = s;
        let sent = if e.size == sparse_size {
            // Data, a hole, data: what SEEK_DATA and SEEK_HOLE find.
            push("client", "DATA", data_frame(head)?);
            server.on_data(head.len())?;
            let h = client.hole(hole);
            push("client", h.kind(), frame_hex(&h)?);
            let Receipt::Receiving(s, Receive::Hole(_)) = server.on_message(h)? else {
                return Err("server did not take the HOLE".into());
            };
            server = s;
            push("client", "DATA", data_frame(tail)?);
            server.on_data(tail.len())?;
            head.len() + tail.len()
        } else {
            push("client", "DATA", data_frame(b"hello")?);
            server.on_data(5)?;
            5
        };
        let end = client.file_end(task, sent as u64);
        push("client", end.kind(), frame_hex(&end)?);
        let Receipt::Receiving(mut s, Receive::Commit(done, _)) = server.on_message(end)? else {
            return Err("server did not commit a file".into());
        };
        let r = s.file_result(done, Outcome::Stored);
        push("server", r.kind(), frame_hex(&r)?);
        client.on_message(r)?;
        server = s;
    }
    let (client, end) = client.finish()?;
    push("client", end.kind(), frame_hex(&end)?);
    let Receipt::Received(mut server) = server.on_message(end)? else {
        return Err("server not done after TRANSFER_END".into());
    };
    server.deleted(0, 0);
    let (_server, next) = server.next_sync(t(T0 + 600, 0), 600_000);
    push("server", next.kind(), frame_hex(&next)?);
    let Finish::Done(_) = client.on_message(next)? else {
        return Err("client not done after NEXT_SYNC".into());
    };
    // The tail the plan left for after the transfer: the link, the FIFO and the mode.
    let want = ["Link", "Fifo", "Chmod"];
    let got: Vec<String> = ops
        .iter()
        .map(|op| format!("{op:?}").split('(').next().unwrap_or("").to_owned())
        .collect();
    if got != want {
        return Err(format!("unexpected tail {ops:?}").into());
    }

    let v = SessionVector {
        kind: "session",
        direction: "both",
        note: "A version-3 session in postcard, produced by the client and server state \
               machines: READY greeting, one manifest batch holding a name that is not \
               UTF-8 (`caf\\xE9.txt`), a sparse file, a symlink, a FIFO, a `keep` entry over \
               a folder the server holds, a file whose only change is its mode (0644 to \
               0755) and a setuid file (04755) the server holds as 0755. TASKS asks for the \
               two files with new content only: links, FIFOs and keep entries are never \
               requested, a mode-only change becomes a chmod after the transfer, and setuid \
               is dropped so 04755 matches 0755. The files follow PLAN_END; the sparse file \
               is FILE_HEADER (size 1048584), DATA (4 bytes), HOLE (1 MiB), DATA (4 bytes), \
               FILE_END (real data ranges are whole filesystem blocks; these are short to \
               keep the vector small). Nothing is deleted. `hex` is exactly the bytes sent.",
        encoding: enc.name(),
        peer: peer.to_string(),
        agent: "filesync/0.1.0".into(),
        client_id: "build-box".into(),
        allow_empty: false,
        queue_position: None,
        server_index,
        steps,
    };
    Ok((
        "session-sparse-postcard".into(),
        serde_json::to_string_pretty(&v)?,
    ))
}

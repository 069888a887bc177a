//! Fuzzing on a stable toolchain: property-based fuzz tests of everything that takes bytes,
//! names or messages from a peer, with proptest as the engine (cargo-fuzz needs nightly).
//!
//! 1. The native frame decoders (`ServerCodec`, `ClientCodec`, both encodings) and the
//!    preamble, fed arbitrary bytes and mutated real frames in arbitrary pieces, checked
//!    against a reference framer written here from the specification.
//! 2. The original dialect's JSON stream scanner (`ObjectScanner`, `JsonCodec`,
//!    `SeedServerCodec`): garbage, deep nesting, escapes, valid streams as an oracle.
//! 3. The server's session driven by arbitrary message sequences against an in-memory
//!    index, with a model that predicts every acceptance and refusal.
//! 4. The store on a real temporary directory with symlinks planted to a sibling
//!    directory that must stay byte-identical.
//!
//! The default run is bounded (each property has its own case count, the whole file runs
//! in well under a minute in debug). A longer run sets the number of cases of every
//! property at once (the manifest-window property, whose cases list tens of thousands of
//! files each, runs a twentieth of them):
//!
//! ```text
//! FILESYNC_FUZZ_CASES=100000 cargo test -p filesync-core --release --test fuzz
//! ```
//!
//! A failure is shrunk to a minimal input and its seed saved under
//! `filesync-core/proptest-regressions/fuzz.txt`, which later runs replay first.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use filesync_core::codec::json_stream::{JsonCodec, ObjectScanner, SeedServerCodec};
use filesync_core::codec::native::{self, ClientCodec, NativeCodec, ServerCodec};
use filesync_core::codec::preamble::{self, Dialect};
use filesync_core::codec::{CodecError, Frame, DATA_CHUNK, MAX_FRAME_LEN};
use filesync_core::error::ProtocolError;
use filesync_core::messages::seed;
use filesync_core::messages::{
    ClientMsg, Deletions, Encoding, Entry, EntryKind, ErrorCode, ErrorMsg, FileAbort, FileEnd,
    FileHeader, FileResult, Hello, Hole, Manifest, ManifestEnd, NextSync, Outcome, PlanEnd, Queued,
    Ready, ServerMsg, Tasks, TransferEnd, Welcome, MANIFEST_BATCH_MAX, MAX_OUTSTANDING, MODE_BITS,
    PROTOCOL_VERSION, SETID_BITS,
};
use filesync_core::paths::{ClientId, LinkTarget, RelPath};
use filesync_core::planner::{DeleteBudget, Held, TailOp};
use filesync_core::session::server::{
    Listed, Listing, Receipt, Receive, Received, Receiving, ServerParams,
};
use filesync_core::session::Server;
use filesync_core::store::{Applied, Store};
use filesync_core::time::MTime;
use filesync_core::Error;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::codec::Decoder;

// ---------------------------------------------------------------------------------------
// Run length
// ---------------------------------------------------------------------------------------

/// Environment variable setting the number of cases of every property in this file.
const CASES_ENV: &str = "FILESYNC_FUZZ_CASES";

/// `default` cases, or as many as [`CASES_ENV`] says.
fn config(default: u32) -> ProptestConfig {
    scaled_config(default, 1)
}

/// `default` cases, or a `1/divisor` share of what [`CASES_ENV`] says (at least one): for
/// a property whose cases are a hundred times heavier than the others'.
fn scaled_config(default: u32, divisor: u32) -> ProptestConfig {
    let cases = std::env::var(CASES_ENV)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(default, |n| (n / divisor).max(1));
    ProptestConfig {
        cases,
        // Relative to the package, where `cargo test` runs a test binary. (The default
        // looks for a `lib.rs` beside the test file and, finding none, writes next to it.)
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/fuzz.txt",
        ))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// Strategies shared by the sections
// ---------------------------------------------------------------------------------------

/// A name component: mostly from a small alphabet (so paths collide, nest and sort in
/// tree order unlike byte order: `a.b` after `a/…`), sometimes any bytes a name may hold.
fn component() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => prop::sample::select(vec![
            &b"a"[..], b"b", b"a.b", b"c", b"\xff", b"\xc3", b"{\"}", b"...", b"a b",
        ])
        .prop_map(<[u8]>::to_vec),
        1 => prop::collection::vec(any::<u8>().prop_filter("sep", |b| *b != b'/' && *b != 0), 1..12)
            .prop_filter("dots", |c| c != b"." && c != b".."),
    ]
}

fn rel_path() -> impl Strategy<Value = RelPath> {
    prop::collection::vec(component(), 1..4)
        .prop_map(|cs| RelPath::from_bytes(&cs.join(&b'/')).expect("valid components"))
}

fn link_target() -> impl Strategy<Value = LinkTarget> {
    prop_oneof![
        prop::sample::select(vec![
            &b".."[..],
            b"../..",
            b"/",
            b"a/../../b",
            b"x",
            b"\xff\xfe",
        ])
        .prop_map(|b| LinkTarget::from_bytes(b).unwrap()),
        prop::collection::vec(any::<u8>().prop_filter("nul", |b| *b != 0), 1..24)
            .prop_map(|b| LinkTarget::from_bytes(&b).unwrap()),
    ]
}

fn t0() -> MTime {
    MTime::new(1_700_000_000, 123_456_789).unwrap()
}

fn t1() -> MTime {
    MTime::new(1_700_000_001, 0).unwrap()
}

fn mtime() -> impl Strategy<Value = MTime> {
    prop_oneof![
        4 => prop::sample::select(vec![t0(), t1(), MTime::EPOCH]),
        1 => (any::<i64>(), 0u32..1_000_000_000).prop_map(|(s, n)| MTime::new(s, n).unwrap()),
    ]
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0u64..8,
        1 => Just(u64::MAX),
        1 => any::<u64>(),
    ]
}

fn mode() -> impl Strategy<Value = u32> {
    prop_oneof![
        6 => prop::sample::select(vec![0o644u32, 0o755, 0o4755, 0o2640, 0o1777, 0o600, 0]),
        2 => 0u32..0o10000,
        1 => any::<u32>(),
    ]
}

fn kind() -> impl Strategy<Value = EntryKind> {
    prop::sample::select(vec![
        EntryKind::File,
        EntryKind::File,
        EntryKind::Dir,
        EntryKind::Keep,
        EntryKind::Symlink,
        EntryKind::Fifo,
    ])
}

/// A manifest entry; its target matches its kind nine times in ten.
fn entry() -> impl Strategy<Value = Entry> {
    (
        rel_path(),
        kind(),
        size(),
        mtime(),
        mode(),
        link_target(),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(path, kind, size, mtime, mode, target, odd)| Entry {
            path,
            kind,
            size,
            mtime,
            mode,
            target: ((kind == EntryKind::Symlink) != odd).then_some(target),
        })
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![r#"[a-z "\\{}]{0,12}"#, any::<String>()]
}

fn error_msg() -> impl Strategy<Value = ErrorMsg> {
    (any::<u16>(), text()).prop_map(|(c, message)| ErrorMsg {
        code: ErrorCode(c),
        message,
    })
}

fn client_id() -> impl Strategy<Value = ClientId> {
    "[a-zA-Z0-9._-]{1,64}".prop_filter_map("dots", |s| ClientId::parse(&s).ok())
}

fn client_msg() -> impl Strategy<Value = ClientMsg> {
    prop_oneof![
        (
            any::<u16>(),
            text(),
            prop::option::of(client_id()),
            prop::collection::vec(text(), 0..3),
            any::<bool>(),
            prop::option::of(any::<u64>())
        )
            .prop_map(
                |(version, agent, client_id, capabilities, allow_empty, max_delete)| {
                    ClientMsg::Hello(Hello {
                        version,
                        agent,
                        client_id,
                        capabilities,
                        allow_empty,
                        max_delete,
                    })
                }
            ),
        prop::collection::vec(entry(), 0..8)
            .prop_map(|entries| ClientMsg::Manifest(Manifest { entries })),
        any::<u64>().prop_map(|entries| ClientMsg::ManifestEnd(ManifestEnd { entries })),
        (
            rel_path(),
            size(),
            mtime(),
            mode(),
            prop_oneof![3 => Just(0u64), 1 => any::<u64>()]
        )
            .prop_map(|(path, size, mtime, mode, offset)| {
                ClientMsg::FileHeader(FileHeader {
                    path,
                    size,
                    mtime,
                    mode,
                    delta: false,
                    offset,
                })
            }),
        any::<u64>().prop_map(|len| ClientMsg::Hole(Hole { len })),
        Just(ClientMsg::FileEnd(FileEnd { hash: None })),
        (rel_path(), text())
            .prop_map(|(path, reason)| ClientMsg::FileAbort(FileAbort { path, reason })),
        Just(ClientMsg::TransferEnd(TransferEnd {})),
        error_msg().prop_map(ClientMsg::Error),
    ]
}

fn server_msg() -> impl Strategy<Value = ServerMsg> {
    let paths = || prop::collection::vec(rel_path(), 0..6);
    prop_oneof![
        (
            any::<u16>(),
            prop::collection::vec(text(), 0..3),
            client_id()
        )
            .prop_map(
                |(version, capabilities, client_id)| ServerMsg::Welcome(Welcome {
                    version,
                    capabilities,
                    client_id,
                })
            ),
        any::<u32>().prop_map(|position| ServerMsg::Queued(Queued { position })),
        Just(ServerMsg::Ready(Ready {})),
        paths().prop_map(|paths| ServerMsg::Tasks(Tasks {
            paths,
            resume: vec![]
        })),
        paths().prop_map(|paths| ServerMsg::Deletions(Deletions { paths })),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(files, bytes, deletions)| {
            ServerMsg::PlanEnd(PlanEnd {
                files,
                bytes,
                deletions,
            })
        }),
        (rel_path(), prop::option::of((any::<u16>(), text()))).prop_map(|(path, rej)| {
            ServerMsg::FileResult(FileResult {
                path,
                outcome: match rej {
                    None => Outcome::Stored,
                    Some((code, reason)) => Outcome::Rejected {
                        code: ErrorCode(code),
                        reason,
                    },
                },
            })
        }),
        (
            mtime(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(
                |(at, delay_ms, stored, rejected, deleted)| ServerMsg::NextSync(NextSync {
                    at,
                    delay_ms,
                    stored,
                    rejected,
                    deleted,
                    held_back: deleted / 2,
                    held_back_reason: "cap".into(),
                })
            ),
        error_msg().prop_map(ServerMsg::Error),
    ]
}

fn encoding() -> impl Strategy<Value = Encoding> {
    prop_oneof![Just(Encoding::Postcard), Just(Encoding::Json)]
}

/// Sizes of the pieces a stream is cut into, cycled over the input; empty means at once.
fn cuts() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        1 => Just(vec![]),
        1 => Just(vec![1]),
        4 => prop::collection::vec(1usize..97, 1..16),
        1 => prop::collection::vec(1usize..5000, 1..4),
    ]
}

// ---------------------------------------------------------------------------------------
// Feeding a decoder
// ---------------------------------------------------------------------------------------

/// Everything a decoder did with an input fed in pieces.
struct Fed<T> {
    items: Vec<T>,
    error: Option<CodecError>,
    /// The most bytes left buffered while the decoder asked for more.
    peak_pending: usize,
    /// The largest capacity the buffer had after a decode call.
    peak_capacity: usize,
    /// The largest piece fed.
    largest_piece: usize,
}

/// Feeds `input` to `dec` in pieces whose sizes cycle through `cuts`, decoding all it can
/// after each piece (as `FramedRead` does), then `decode_eof`. Stops at the first error.
/// Panics if the decoder returns an item without consuming a byte: it could then loop
/// forever on the same input.
fn feed<D: Decoder<Error = CodecError>>(dec: &mut D, input: &[u8], cuts: &[usize]) -> Fed<D::Item> {
    let mut fed = Fed {
        items: Vec::new(),
        error: None,
        peak_pending: 0,
        peak_capacity: 0,
        largest_piece: 0,
    };
    let mut buf = BytesMut::new();
    let mut rest = input;
    let mut sizes = cuts.iter().copied().cycle();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        fed.largest_piece = fed.largest_piece.max(n);
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            let before = buf.len();
            let r = dec.decode(&mut buf);
            fed.peak_capacity = fed.peak_capacity.max(buf.capacity());
            match r {
                Ok(Some(item)) => {
                    assert!(buf.len() < before, "an item decoded from no input");
                    fed.items.push(item);
                }
                Ok(None) => {
                    fed.peak_pending = fed.peak_pending.max(buf.len());
                    break;
                }
                Err(e) => {
                    fed.error = Some(e);
                    return fed;
                }
            }
        }
    }
    // At the end of the stream every call must consume or stop.
    for _ in 0..=input.len() + 1 {
        let before = buf.len();
        match dec.decode_eof(&mut buf) {
            Ok(Some(item)) => {
                assert!(buf.len() < before, "an item decoded from no input at EOF");
                fed.items.push(item);
            }
            Ok(None) => return fed,
            Err(e) => {
                fed.error = Some(e);
                return fed;
            }
        }
    }
    panic!("decode_eof never stopped");
}

/// A decoder's error, reduced to what must not depend on how the input was cut.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fault {
    TooLarge(usize),
    UnknownKind(u8),
    Empty,
    Message,
    Truncated,
}

fn fault(e: &CodecError) -> Fault {
    match e {
        CodecError::TooLarge { len, .. } => Fault::TooLarge(*len),
        CodecError::UnknownKind(k) => Fault::UnknownKind(*k),
        CodecError::Empty => Fault::Empty,
        CodecError::Message { .. } => Fault::Message,
        CodecError::Truncated(_) => Fault::Truncated,
        other => panic!("a decoder of bytes in memory failed with {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// 1. Native frames
// ---------------------------------------------------------------------------------------

/// The native framing as `spec/PROTOCOL.md` describes it, decoding a whole input at once:
/// a 4-byte big-endian length (at most `max`), a kind byte, the payload. The message
/// payload is decoded by the library's own message decoder; what is under test here is the
/// framing and its limits, however the input is cut.
fn reference_frames<M: DeserializeOwned>(
    enc: Encoding,
    max: usize,
    input: &[u8],
) -> (Vec<Frame<M>>, Option<Fault>) {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let rest = &input[pos..];
        if rest.is_empty() {
            return (out, None);
        }
        if rest.len() < 4 {
            return (out, Some(Fault::Truncated));
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > max {
            return (out, Some(Fault::TooLarge(len)));
        }
        if rest.len() - 4 < len {
            return (out, Some(Fault::Truncated));
        }
        let payload = &rest[4..4 + len];
        pos += 4 + len;
        let Some((&kind, body)) = payload.split_first() else {
            return (out, Some(Fault::Empty));
        };
        match kind {
            native::KIND_MSG => match native::decode_message::<M>(enc, body) {
                Ok(m) => out.push(Frame::Msg(m)),
                Err(_) => return (out, Some(Fault::Message)),
            },
            native::KIND_DATA => out.push(Frame::Data(Bytes::copy_from_slice(body))),
            k => return (out, Some(Fault::UnknownKind(k))),
        }
    }
}

/// A decoded message survives being encoded again, in its own encoding and in the other.
fn assert_round_trips<M>(m: &M)
where
    M: Serialize + DeserializeOwned + PartialEq + Debug,
{
    for enc in [Encoding::Postcard, Encoding::Json] {
        let mut buf = BytesMut::new();
        native::encode_message(enc, m, &mut buf)
            .unwrap_or_else(|e| panic!("{m:?} decoded but does not encode in {enc:?}: {e}"));
        assert_eq!(
            native::encoded_len(enc, m).unwrap(),
            buf.len(),
            "encoded_len of {m:?}"
        );
        let back: M = native::decode_message(enc, &buf)
            .unwrap_or_else(|e| panic!("{m:?} re-encoded in {enc:?} does not decode: {e}"));
        assert_eq!(&back, m, "{enc:?} round trip");
    }
}

/// Feeds `input` to a native decoder in pieces and checks it against the reference:
/// the same frames and the same fault however the input was cut, never more than one
/// frame's worth buffered, and every message round-trips.
fn check_native<Rx, Tx>(
    mut codec: NativeCodec<Rx, Tx>,
    max: usize,
    input: &[u8],
    cuts: &[usize],
) -> Result<(), TestCaseError>
where
    Rx: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let enc = codec.encoding();
    let (want, want_fault) = reference_frames::<Rx>(enc, max, input);
    let fed = feed(&mut codec, input, cuts);
    let got_fault = fed.error.as_ref().map(fault);
    prop_assert_eq!(&fed.items, &want);
    prop_assert_eq!(got_fault, want_fault);
    // Waiting for more, the decoder holds at most a header or part of one frame.
    prop_assert!(
        fed.peak_pending < max.max(4),
        "{} bytes pending with a limit of {max}",
        fed.peak_pending
    );
    // What it reserved is bounded by the frame limit too (plus the buffer's own growth
    // by doubling over the pieces fed): a length past the limit reserves nothing.
    let bound = 2 * (max + 5 + fed.largest_piece) + 64;
    prop_assert!(
        fed.peak_capacity <= bound,
        "capacity {} with a limit of {max} (bound {bound})",
        fed.peak_capacity
    );
    for item in &fed.items {
        match item {
            Frame::Msg(m) => assert_round_trips(m),
            Frame::Data(d) => prop_assert!(d.len() < max),
        }
    }
    Ok(())
}

/// How a frame's announced length is chosen, relative to the limit known only at run time.
#[derive(Debug, Clone)]
enum LenSpec {
    /// The body's length plus the kind byte: a well-formed frame.
    Exact,
    Small(u32),
    Any(u32),
    /// The limit plus this (around the boundary).
    NearMax(i8),
}

#[derive(Debug, Clone)]
enum Piece<M> {
    Raw(Vec<u8>),
    Framed {
        len: LenSpec,
        kind: u8,
        body: Vec<u8>,
    },
    Valid(Frame<M>),
}

fn piece<M: Debug + Clone + 'static>(
    msg: impl Strategy<Value = M> + 'static,
) -> impl Strategy<Value = Piece<M>> {
    let len = prop_oneof![
        4 => Just(LenSpec::Exact),
        2 => (0u32..64).prop_map(LenSpec::Small),
        1 => any::<u32>().prop_map(LenSpec::Any),
        1 => (-2i8..3).prop_map(LenSpec::NearMax),
    ];
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..24).prop_map(Piece::Raw),
        2 => (len, prop_oneof![3 => 0u8..2, 1 => any::<u8>()], prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(len, kind, body)| Piece::Framed { len, kind, body }),
        3 => prop_oneof![
            3 => msg.prop_map(Frame::Msg),
            1 => prop::collection::vec(any::<u8>(), 0..128).prop_map(|d| Frame::Data(Bytes::from(d))),
        ]
        .prop_map(Piece::Valid),
    ]
}

fn limit() -> impl Strategy<Value = usize> {
    prop_oneof![2 => Just(MAX_FRAME_LEN), 3 => 8usize..600]
}

/// The bytes of `pieces`; frames encoded in `enc`, with lengths resolved against `max`.
fn assemble<M: Serialize + Clone>(enc: Encoding, max: usize, pieces: &[Piece<M>]) -> Vec<u8> {
    let mut out = BytesMut::new();
    let mut tx: NativeCodec<(), M> = NativeCodec::new(enc);
    for p in pieces {
        match p {
            Piece::Raw(b) => out.extend_from_slice(b),
            Piece::Framed { len, kind, body } => {
                let n = match len {
                    LenSpec::Exact => body.len() as u32 + 1,
                    LenSpec::Small(n) | LenSpec::Any(n) => *n,
                    LenSpec::NearMax(d) => {
                        (max as i64 + i64::from(*d)).clamp(0, u32::MAX.into()) as u32
                    }
                };
                out.extend_from_slice(&n.to_be_bytes());
                out.extend_from_slice(&[*kind]);
                out.extend_from_slice(body);
            }
            Piece::Valid(Frame::Msg(m)) => tx.encode_msg(m, &mut out).expect("encodes"),
            Piece::Valid(Frame::Data(d)) => tx.encode_data(d, &mut out).expect("encodes"),
        }
    }
    out.to_vec()
}

/// A change to a real stream of frames.
#[derive(Debug, Clone)]
enum Mutation {
    /// XOR a byte.
    Flip(Index, u8),
    Insert(Index, u8),
    Delete(Index),
    /// Overwrite the length of the n-th frame.
    Length(Index, LenSpec),
    /// Cut the stream short.
    Truncate(Index),
    /// Repeat a slice of the stream (a frame sent twice, or half of one).
    Duplicate(Index, Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let len = prop_oneof![
        (0u32..64).prop_map(LenSpec::Small),
        any::<u32>().prop_map(LenSpec::Any),
        (-2i8..3).prop_map(LenSpec::NearMax),
    ];
    prop_oneof![
        4 => (any::<Index>(), 1u8..).prop_map(|(i, x)| Mutation::Flip(i, x)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => any::<Index>().prop_map(Mutation::Delete),
        2 => (any::<Index>(), len).prop_map(|(i, l)| Mutation::Length(i, l)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Duplicate(a, b)),
    ]
}

/// Encodes `frames` in `enc`, remembering where each frame starts.
fn encode_stream<M: Serialize + Clone>(
    enc: Encoding,
    frames: &[Frame<M>],
) -> (Vec<u8>, Vec<usize>) {
    let mut out = BytesMut::new();
    let mut starts = Vec::new();
    let mut tx: NativeCodec<(), M> = NativeCodec::new(enc);
    for f in frames {
        starts.push(out.len());
        match f {
            Frame::Msg(m) => tx.encode_msg(m, &mut out).expect("encodes"),
            Frame::Data(d) => tx.encode_data(d, &mut out).expect("encodes"),
        }
    }
    (out.to_vec(), starts)
}

fn mutate(mut bytes: Vec<u8>, starts: &[usize], max: usize, muts: &[Mutation]) -> Vec<u8> {
    // Length rewrites first, while the frame starts are still where they were.
    for m in muts {
        if let Mutation::Length(i, spec) = m {
            if starts.is_empty() {
                continue;
            }
            let at = starts[i.index(starts.len())];
            let n = match spec {
                LenSpec::Exact => continue,
                LenSpec::Small(n) | LenSpec::Any(n) => *n,
                LenSpec::NearMax(d) => {
                    (max as i64 + i64::from(*d)).clamp(0, u32::MAX.into()) as u32
                }
            };
            bytes[at..at + 4].copy_from_slice(&n.to_be_bytes());
        }
    }
    for m in muts {
        let len = bytes.len();
        match m {
            Mutation::Length(..) => {}
            Mutation::Flip(i, x) if len > 0 => bytes[i.index(len)] ^= x,
            Mutation::Insert(i, b) => bytes.insert(i.index(len + 1), *b),
            Mutation::Delete(i) if len > 0 => {
                bytes.remove(i.index(len));
            }
            Mutation::Truncate(i) => bytes.truncate(i.index(len + 1)),
            Mutation::Duplicate(a, b) if len > 0 => {
                let (a, b) = (a.index(len), b.index(len));
                let (from, to) = (a.min(b), a.max(b) + 1);
                let copy = bytes[from..to].to_vec();
                bytes.splice(to..to, copy);
            }
            _ => {}
        }
    }
    bytes
}

fn client_frames() -> impl Strategy<Value = Vec<Frame<ClientMsg>>> {
    prop::collection::vec(
        prop_oneof![
            3 => client_msg().prop_map(Frame::Msg),
            1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(|d| Frame::Data(Bytes::from(d))),
        ],
        1..8,
    )
}

fn server_frames() -> impl Strategy<Value = Vec<Frame<ServerMsg>>> {
    prop::collection::vec(
        prop_oneof![
            3 => server_msg().prop_map(Frame::Msg),
            1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(|d| Frame::Data(Bytes::from(d))),
        ],
        1..8,
    )
}

proptest! {
    #![proptest_config(config(1024))]

    /// Uniformly random bytes: never a panic, the reference's frames and fault.
    #[test]
    fn native_decoders_on_random_bytes(
        enc in encoding(),
        max in limit(),
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        cuts in cuts(),
    ) {
        check_native(ServerCodec::with_max(enc, max), max, &bytes, &cuts)?;
        check_native(ClientCodec::with_max(enc, max), max, &bytes, &cuts)?;
    }

    /// Streams of frame-like pieces: good frames, frames with lengths around and past
    /// the limit or lying about their body, unknown kinds, raw noise.
    #[test]
    fn server_codec_on_frame_like_streams(
        enc in encoding(),
        max in limit(),
        pieces in prop::collection::vec(piece(client_msg()), 0..10),
        cuts in cuts(),
    ) {
        let bytes = assemble(enc, max, &pieces);
        check_native(ServerCodec::with_max(enc, max), max, &bytes, &cuts)?;
        // The same bytes read in the other encoding: any mix of postcard and JSON.
        check_native(ServerCodec::with_max(other(enc), max), max, &bytes, &cuts)?;
    }

    #[test]
    fn client_codec_on_frame_like_streams(
        enc in encoding(),
        max in limit(),
        pieces in prop::collection::vec(piece(server_msg()), 0..10),
        cuts in cuts(),
    ) {
        let bytes = assemble(enc, max, &pieces);
        check_native(ClientCodec::with_max(enc, max), max, &bytes, &cuts)?;
        check_native(ClientCodec::with_max(other(enc), max), max, &bytes, &cuts)?;
    }

    /// Real frames of arbitrary valid messages, mutated: bytes flipped, inserted,
    /// deleted, lengths rewritten, the stream cut short or partly repeated.
    #[test]
    fn server_codec_on_mutated_frames(
        enc in encoding(),
        max in limit(),
        frames in client_frames(),
        muts in prop::collection::vec(mutation(), 0..6),
        cuts in cuts(),
    ) {
        let (bytes, starts) = encode_stream(enc, &frames);
        if muts.is_empty() && max == MAX_FRAME_LEN {
            // Unchanged, the stream decodes to exactly what was sent.
            let fed = feed(&mut ServerCodec::new(enc), &bytes, &cuts);
            prop_assert!(fed.error.is_none(), "{:?}", fed.error);
            prop_assert_eq!(&fed.items, &frames);
        }
        let bytes = mutate(bytes, &starts, max, &muts);
        check_native(ServerCodec::with_max(enc, max), max, &bytes, &cuts)?;
    }

    #[test]
    fn client_codec_on_mutated_frames(
        enc in encoding(),
        max in limit(),
        frames in server_frames(),
        muts in prop::collection::vec(mutation(), 0..6),
        cuts in cuts(),
    ) {
        let (bytes, starts) = encode_stream(enc, &frames);
        if muts.is_empty() && max == MAX_FRAME_LEN {
            let fed = feed(&mut ClientCodec::new(enc), &bytes, &cuts);
            prop_assert!(fed.error.is_none(), "{:?}", fed.error);
            prop_assert_eq!(&fed.items, &frames);
        }
        let bytes = mutate(bytes, &starts, max, &muts);
        check_native(ClientCodec::with_max(enc, max), max, &bytes, &cuts)?;
    }

    /// A length prefix past the limit is refused as soon as its four bytes are in,
    /// whatever follows and however it is cut, with nothing reserved for it.
    #[test]
    fn oversized_lengths_are_refused_before_buffering(
        enc in encoding(),
        max in limit(),
        over in prop_oneof![1u64..4, 1u64..=(u32::MAX as u64)],
        tail in prop::collection::vec(any::<u8>(), 0..512),
        cuts in cuts(),
    ) {
        let len = (max as u64 + over).min(u32::MAX.into());
        prop_assume!(len > max as u64);
        let mut bytes = (len as u32).to_be_bytes().to_vec();
        bytes.extend(&tail);
        let mut codec = ServerCodec::with_max(enc, max);
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let mut sizes = cuts.iter().copied().cycle();
        let err = loop {
            prop_assert!(fed < bytes.len(), "all {} bytes read and no error", bytes.len());
            let n = sizes.next().unwrap_or(bytes.len()).clamp(1, bytes.len() - fed);
            buf.extend_from_slice(&bytes[fed..fed + n]);
            fed += n;
            match codec.decode(&mut buf) {
                Ok(None) => prop_assert!(fed < 4, "{fed} bytes read past a bad length"),
                Ok(Some(f)) => return Err(TestCaseError::fail(format!("decoded {f:?}"))),
                Err(e) => break e,
            }
        };
        prop_assert!(
            matches!(err, CodecError::TooLarge { len: l, max: m } if l as u64 == len && m == max),
            "{err:?}"
        );
        prop_assert!(buf.capacity() <= fed.max(64) * 2, "capacity {}", buf.capacity());
    }
}

fn other(enc: Encoding) -> Encoding {
    match enc {
        Encoding::Postcard => Encoding::Json,
        Encoding::Json => Encoding::Postcard,
    }
}

/// What a server makes of the first bytes of a connection, as `net::server` reads them:
/// the first byte tells the dialect, a native client's six-byte preamble its encoding,
/// and native frames follow.
fn server_start(input: &[u8], cuts: &[usize]) -> Result<Option<Vec<Frame<ClientMsg>>>, CodecError> {
    let Some(&first) = input.first() else {
        return Ok(None);
    };
    if Dialect::sniff(first)? == Dialect::Seed {
        return Ok(None);
    }
    let Some(pre) = input.get(..preamble::LEN) else {
        return Ok(None);
    };
    let enc = preamble::decode(pre.try_into().unwrap())?;
    let fed = feed(&mut ServerCodec::new(enc), &input[preamble::LEN..], cuts);
    match fed.error {
        Some(e) => Err(e),
        None => Ok(Some(fed.items)),
    }
}

#[test]
fn every_first_byte_is_classified() {
    for b in 0..=255u8 {
        match Dialect::sniff(b) {
            Ok(Dialect::Native) => assert_eq!(b, b'F'),
            Ok(Dialect::Seed) => assert!(b"{ \t\r\n".contains(&b), "{b:#04x}"),
            Err(CodecError::Preamble(_)) => assert!(!b"F{ \t\r\n".contains(&b)),
            Err(e) => panic!("{b:#04x}: {e:?}"),
        }
    }
}

proptest! {
    #![proptest_config(config(1024))]

    /// Any six bytes: the preamble decodes exactly when they are one a client sends, and
    /// is otherwise refused as a bad preamble.
    #[test]
    fn preamble_decodes_exactly_the_valid_ones(
        bytes in prop_oneof![
            any::<[u8; 6]>(),
            (encoding(), 0usize..6, any::<u8>()).prop_map(|(e, i, b)| {
                let mut p = preamble::encode(e);
                p[i] = b;
                p
            }),
        ],
    ) {
        let valid = [Encoding::Postcard, Encoding::Json]
            .into_iter()
            .find(|e| preamble::encode(*e) == bytes);
        match preamble::decode(&bytes) {
            Ok(e) => prop_assert_eq!(Some(e), valid),
            Err(CodecError::Preamble(_)) => prop_assert_eq!(valid, None),
            Err(e) => return Err(TestCaseError::fail(format!("{e:?}"))),
        }
    }

    /// A connection's first bytes, valid or mutated, then frames: never a panic, and a
    /// valid start reads the frames that follow.
    #[test]
    fn connection_start_never_panics(
        enc in encoding(),
        frames in client_frames(),
        muts in prop::collection::vec(mutation(), 0..3),
        cuts in cuts(),
    ) {
        let mut bytes = preamble::encode(enc).to_vec();
        let (body, _) = encode_stream(enc, &frames);
        bytes.extend(&body);
        if muts.is_empty() {
            prop_assert_eq!(server_start(&bytes, &cuts).unwrap(), Some(frames));
        } else {
            let bytes = mutate(bytes, &[], MAX_FRAME_LEN, &muts);
            let _ = server_start(&bytes, &cuts);
        }
    }
}

// ---------------------------------------------------------------------------------------
// 2. JSON off a byte stream (the original dialect)
// ---------------------------------------------------------------------------------------

fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        r#"[a-z"\\{}\[\]:, ]{0,10}"#,
        any::<String>(),
        "[\u{0}-\u{1f}\u{7f}\u{2028}\u{2029}\u{fffd}\u{10ffff}]{0,6}",
    ]
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        json_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((json_string(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = serde_json::Value> {
    prop::collection::vec((json_string(), json_value()), 0..6)
        .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect()))
}

fn whitespace() -> impl Strategy<Value = String> {
    "[ \t\r\n]{0,6}"
}

/// JSON-ish noise: structure, strings with escapes, deep nesting, long runs, raw bytes.
fn json_noise() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        4 => prop::sample::select(vec![
            &b"{"[..], b"}", b"[", b"]", b"\"", b"\\", b"\\\"", b"\\\\", b"\\u00", b"\\ud800",
            b" ", b"\n", b":", b",", b"\"type\"", b"\"TASKS\"", b"\"FILE_HEADER\"", b"\"size\":",
            b"{\"type\":\"TASKS\",\"files_to_send\":[\"a\"]}",
            b"{\"type\":\"SERVER_STATUS_MESSAGE\",\"status\":\"READY\"}",
            b"{\"type\":\"FILE_HEADER\",\"name\":\"x\",\"path\":\"x\",\"size\":3,\"last_mod\":\"2025-05-06T14:23:00\"}\n",
            b"{\"type\":\"CLIENT_FILES_INFO\",\"files\":[]}",
        ])
        .prop_map(<[u8]>::to_vec),
        1 => (prop::sample::select(vec![b'[', b'{', b'"', b'\\', b' ', b'x']), 1usize..3000)
            .prop_map(|(b, n)| vec![b; n]),
        2 => "[a-z0-9]{1,6}".prop_map(String::into_bytes),
        2 => prop::collection::vec(any::<u8>(), 1..8),
        1 => json_object().prop_map(|v| serde_json::to_vec(&v).unwrap()),
    ];
    prop::collection::vec(token, 0..60).prop_map(|v| v.concat())
}

fn json_limit() -> impl Strategy<Value = usize> {
    prop_oneof![3 => 2usize..4096, 1 => Just(1 << 20)]
}

/// Consecutive `DATA` frames merged: where a body is cut depends on how it arrived.
fn merge_data<M>(items: Vec<Frame<M>>) -> Vec<Frame<M>> {
    let mut out: Vec<Frame<M>> = Vec::new();
    for f in items {
        match (out.last_mut(), f) {
            (Some(Frame::Data(prev)), Frame::Data(d)) => {
                let mut both = prev.to_vec();
                both.extend_from_slice(&d);
                *prev = Bytes::from(both);
            }
            (_, f) => out.push(f),
        }
    }
    out
}

/// A JSON decoder fed in pieces and at once: never a panic, never an I/O error, never
/// more than `max` bytes held waiting, and the same values and the same success either way.
fn check_json<D, T>(
    new: impl Fn() -> D,
    max: usize,
    input: &[u8],
    cuts: &[usize],
) -> Result<Vec<T>, TestCaseError>
where
    D: Decoder<Item = T, Error = CodecError>,
    T: PartialEq + Debug,
{
    let fed = feed(&mut new(), input, cuts);
    let whole = feed(&mut new(), input, &[]);
    if let Some(e) = &fed.error {
        fault(e);
    }
    prop_assert!(
        fed.peak_pending <= max,
        "{} bytes pending, limit {max}",
        fed.peak_pending
    );
    prop_assert!(whole.peak_pending <= max);
    prop_assert_eq!(&fed.items, &whole.items);
    prop_assert_eq!(
        fed.error.is_some(),
        whole.error.is_some(),
        "{:?} vs {:?}",
        fed.error,
        whole.error
    );
    Ok(fed.items)
}

proptest! {
    #![proptest_config(config(512))]

    /// A stream of valid JSON objects with whitespace between them: each is found
    /// exactly, whatever the escapes, nesting and cuts, and one whose bytes (leading
    /// whitespace included) pass the limit is refused as too large.
    #[test]
    fn json_codec_splits_valid_streams_exactly(
        values in prop::collection::vec((whitespace(), json_object(), any::<bool>()), 0..6),
        trailing in whitespace(),
        max in json_limit(),
        cuts in cuts(),
    ) {
        let mut wire = Vec::new();
        let mut want = Vec::new();
        let mut too_large = false;
        for (ws, v, pretty) in &values {
            let text = if *pretty {
                serde_json::to_vec_pretty(v).unwrap()
            } else {
                serde_json::to_vec(v).unwrap()
            };
            if !too_large && ws.len() + text.len() > max {
                too_large = true;
            }
            if !too_large {
                want.push(v.clone());
            }
            wire.extend(ws.as_bytes());
            wire.extend(&text);
        }
        too_large |= trailing.len() > max;
        wire.extend(trailing.as_bytes());
        let fed = feed(&mut JsonCodec::<serde_json::Value>::with_max(max), &wire, &cuts);
        prop_assert_eq!(&fed.items, &want);
        if too_large {
            prop_assert!(matches!(fed.error, Some(CodecError::TooLarge { .. })), "{:?}", fed.error);
        } else {
            prop_assert!(fed.error.is_none(), "{:?}", fed.error);
        }
    }

    /// The scanner resumes: scanning a growing buffer piece by piece finds what one scan
    /// of the whole buffer finds.
    #[test]
    fn object_scanner_resumes_where_it_stopped(
        bytes in json_noise(),
        max in json_limit(),
        cuts in cuts(),
    ) {
        let whole = ObjectScanner::default().scan(&bytes, max);
        let mut s = ObjectScanner::default();
        let mut end = 0;
        let mut sizes = cuts.iter().copied().cycle();
        let pieces = loop {
            end = (end + sizes.next().unwrap_or(bytes.len()).max(1)).min(bytes.len());
            match s.scan(&bytes[..end], max) {
                Ok(None) if end < bytes.len() => {}
                other => break other,
            }
        };
        match (&whole, &pieces) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            _ => return Err(TestCaseError::fail(format!("at once {whole:?}, in pieces {pieces:?}"))),
        }
        if let Ok(Some(n)) = whole {
            prop_assert!(n <= bytes.len() && n <= max, "object of {n} bytes, limit {max}");
        }
    }

    /// Noise to every JSON reader of the original dialect.
    #[test]
    fn json_codecs_on_noise(bytes in json_noise(), max in json_limit(), cuts in cuts()) {
        check_json(|| JsonCodec::<serde_json::Value>::with_max(max), max, &bytes, &cuts)?;
        check_json(|| JsonCodec::<seed::ServerMsg>::with_max(max), max, &bytes, &cuts)?;
        check_json(|| JsonCodec::<seed::ClientMsg>::with_max(max), max, &bytes, &cuts)?;
    }

    /// Noise to the server's reader of an original client, where a `FILE_HEADER` switches
    /// to raw content: data never exceeds what the headers announced, and is cut into
    /// chunks of at most `DATA_CHUNK`.
    #[test]
    fn seed_server_codec_on_noise(bytes in json_noise(), max in json_limit(), cuts in cuts()) {
        let new = || SeedServerCodec::with_max(max);
        let fed = feed(&mut new(), &bytes, &cuts);
        let whole = feed(&mut new(), &bytes, &[]);
        if let Some(e) = &fed.error {
            fault(e);
        }
        prop_assert!(fed.peak_pending <= max, "{} bytes pending, limit {max}", fed.peak_pending);
        prop_assert_eq!(fed.error.is_some(), whole.error.is_some(), "{:?} vs {:?}", fed.error, whole.error);
        let mut announced: Option<u64> = None;
        for f in &fed.items {
            match f {
                Frame::Msg(seed::ClientMsg::FileHeader(h)) => announced = Some(h.size),
                Frame::Msg(_) => announced = None,
                Frame::Data(d) => {
                    prop_assert!(!d.is_empty() && d.len() <= DATA_CHUNK);
                    let left = announced.as_mut().expect("DATA after a FILE_HEADER");
                    prop_assert!(d.len() as u64 <= *left);
                    *left -= d.len() as u64;
                }
            }
        }
        prop_assert_eq!(merge_data(fed.items), merge_data(whole.items));
    }
}

// ---------------------------------------------------------------------------------------
// 3. The server's session
// ---------------------------------------------------------------------------------------

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));

fn listing(enc: Encoding, allow_empty: bool) -> Server<Listing> {
    let (s, _) = Server::new(ServerParams::default(), PEER).greet(None);
    let hello = ClientMsg::Hello(Hello {
        version: PROTOCOL_VERSION,
        agent: "fuzz".into(),
        client_id: Some(ClientId::parse("fuzz").unwrap()),
        capabilities: vec![],
        allow_empty,
        max_delete: None,
    });
    let (s, _) = s.on_hello(enc, hello).expect("hello accepted");
    s.ready().0
}

/// Paths of a session: a small alphabet, so listed, held and sent paths meet.
fn session_path() -> impl Strategy<Value = RelPath> {
    prop::collection::vec(
        prop::sample::select(vec![&b"a"[..], b"b", b"a.b", b"\xff"]),
        1..4,
    )
    .prop_map(|cs| RelPath::from_bytes(&cs.join(&b'/')).unwrap())
}

fn session_target() -> impl Strategy<Value = LinkTarget> {
    prop::sample::select(vec![&b"x"[..], b"../..", b"/etc"])
        .prop_map(|b| LinkTarget::from_bytes(b).unwrap())
}

fn session_entry() -> impl Strategy<Value = Entry> {
    (
        session_path(),
        kind(),
        prop_oneof![6 => prop::sample::select(vec![0u64, 1, 5]), 1 => Just(u64::MAX), 1 => any::<u64>()],
        prop_oneof![6 => prop::sample::select(vec![t0(), t1()]), 1 => mtime()],
        prop_oneof![20 => prop::sample::select(vec![0o644u32, 0o755, 0o4755]), 1 => any::<u32>()],
        session_target(),
        prop::bool::weighted(0.02),
    )
        .prop_map(|(path, kind, size, mtime, mode, target, odd)| Entry {
            path,
            kind,
            size,
            mtime,
            mode,
            target: ((kind == EntryKind::Symlink) != odd).then_some(target),
        })
}

/// The server's index: arbitrary entries in tree order, consistent or not (a file with
/// entries under it, a `Keep`), as a damaged archive might read.
fn held_index() -> impl Strategy<Value = Vec<(RelPath, Held)>> {
    let held = (
        kind(),
        prop::sample::select(vec![0u64, 1, 5]),
        prop::sample::select(vec![t0(), t1()]),
        prop::sample::select(vec![0o644u32, 0o755, 0o4755]),
        prop::option::of(session_target()),
    )
        .prop_map(|(kind, size, mtime, mode, target)| Held {
            kind,
            size,
            mtime,
            mode,
            target: if kind == EntryKind::Symlink {
                target
            } else {
                None
            },
        });
    prop::collection::vec((session_path(), held), 0..12).prop_map(|mut v| {
        v.sort_by(|a, b| a.0.tree_cmp(&b.0));
        v.dedup_by(|a, b| a.0 == b.0);
        v
    })
}

/// The server's index and a sorted listing with no duplicates (the material of
/// well-behaved batches), part of it copied from the index, unchanged or with another
/// mode, size or time, so that the plan has files to keep, to send and to chmod.
fn index_and_listing() -> impl Strategy<Value = (Vec<(RelPath, Held)>, Vec<Entry>)> {
    held_index().prop_flat_map(|index| {
        let copies = index.len();
        (
            Just(index),
            prop::collection::vec(
                (
                    any::<bool>(),
                    0u8..4,
                    prop::sample::select(vec![0o644u32, 0o600, 0o755]),
                ),
                copies,
            ),
            prop::collection::vec(session_entry(), 0..16),
        )
            .prop_map(|(index, how, fresh)| {
                let mut v: Vec<Entry> = index
                    .iter()
                    .zip(how)
                    .filter(|(_, (keep, ..))| *keep)
                    .map(|((path, h), (_, change, mode))| Entry {
                        path: path.clone(),
                        kind: h.kind,
                        size: if change == 1 { h.size + 1 } else { h.size },
                        mtime: if change == 2 { t1() } else { h.mtime },
                        mode: if change == 3 { mode } else { h.mode },
                        target: h.target.clone(),
                    })
                    .collect();
                v.extend(fresh);
                v.sort_by(|a, b| a.path.tree_cmp(&b.path));
                v.dedup_by(|a, b| a.path == b.path);
                // Nothing inside a listed file (raw batches break that rule).
                let mut leaf: Option<RelPath> = None;
                v.retain(|e| {
                    if leaf.as_ref().is_some_and(|l| l.is_ancestor_of(&e.path)) {
                        return false;
                    }
                    if !matches!(e.kind, EntryKind::Dir | EntryKind::Keep) {
                        leaf = Some(e.path.clone());
                    }
                    true
                });
                (index, v)
            })
    })
}

/// One step of a client, chosen against what the server asked for so that sessions get
/// deep, or raw.
#[derive(Debug, Clone)]
enum Step {
    /// The next `n` entries of the sorted listing as one batch.
    Next(usize),
    /// A batch of arbitrary entries.
    Batch(Vec<Entry>),
    /// `MANIFEST_END` with the right count, or this one.
    End(Option<u64>),
    /// `FILE_HEADER` for a requested file (or this path), of this size, at offset 0 or not.
    Header(Index, Option<RelPath>, u64, bool),
    /// `DATA` of this length, or exactly what the open file still lacks.
    Data(usize, bool),
    /// `HOLE` likewise.
    Hole(u64, bool),
    FileEnd,
    /// `FILE_ABORT` for the open file, a requested one (or this path).
    Abort(Index, bool, Option<RelPath>),
    TransferEnd,
    Error,
    Hello,
    /// The driver reports a verdict on the file committed last.
    Verdict(bool),
    /// One of the moves a well-behaved client could make now (chosen by the index), so
    /// that sessions get deep between the raw steps.
    Auto(Index, u64),
}

/// Steps of a session: raw ones one time in `1 + auto_weight`, the rest well-behaved.
fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop_oneof![Just(3u32), Just(12), Just(60)].prop_flat_map(|auto| {
        prop::collection::vec(
            prop_oneof![
                1 => raw_step(),
                auto => (any::<Index>(), any::<u64>()).prop_map(|(i, n)| Step::Auto(i, n)),
            ],
            0..64,
        )
    })
}

fn raw_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1usize..6).prop_map(Step::Next),
        1 => prop::collection::vec(session_entry(), 0..5).prop_map(Step::Batch),
        2 => prop_oneof![4 => Just(None), 1 => any::<u64>().prop_map(Some)].prop_map(Step::End),
        4 => (
            any::<Index>(),
            prop::option::weighted(0.1, session_path()),
            prop_oneof![prop::sample::select(vec![0u64, 1, 5, 100]), any::<u64>()],
            prop::bool::weighted(0.95),
        )
            .prop_map(|(i, p, s, o)| Step::Header(i, p, s, o)),
        3 => (0usize..40, prop::bool::weighted(0.6)).prop_map(|(n, r)| Step::Data(n, r)),
        2 => (prop_oneof![0u64..40, any::<u64>()], prop::bool::weighted(0.5)).prop_map(|(n, r)| Step::Hole(n, r)),
        3 => Just(Step::FileEnd),
        1 => (any::<Index>(), any::<bool>(), prop::option::weighted(0.1, session_path()))
            .prop_map(|(i, o, p)| Step::Abort(i, o, p)),
        1 => Just(Step::TransferEnd),
        1 => Just(Step::Hello),
        1 => Just(Step::Error),
        2 => any::<bool>().prop_map(Step::Verdict),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Listing,
    Receiving,
    Received,
}

/// What the server should do: the protocol's rules, written from the specification.
#[derive(Debug, Default)]
struct Model {
    held: HashMap<RelPath, Held>,
    held_file: bool,
    allow_empty: bool,
    listed: HashMap<RelPath, Entry>,
    count: u64,
    last_listed: Option<RelPath>,
    last_leaf: Option<RelPath>,
    /// Requested and not yet sent, in request order.
    requested: Vec<RelPath>,
    open: Option<(RelPath, u64, u64)>,
    requested_total: u64,
    bytes_total: u64,
    aborted: u64,
    committed: Vec<RelPath>,
    stored: u64,
    rejected: u64,
}

impl Model {
    /// A move a well-behaved client could make in `phase`, with `listing_left` entries of
    /// the listing not yet sent.
    fn auto(&self, phase: Phase, listing_left: usize, pick: Index, n: u64) -> Step {
        let mut moves = Vec::new();
        let open_left = self.open.as_ref().map(|(_, size, got)| size - got);
        if phase == Phase::Listing {
            if listing_left > 0 {
                moves.push(Step::Next(1 + (n % 8) as usize));
                moves.push(Step::Next(1 + (n % 8) as usize));
            } else {
                moves.push(Step::End(None));
            }
        }
        if phase != Phase::Received {
            match open_left {
                None if !self.requested.is_empty() => {
                    let size = [0, 1, 5, 100][(n % 4) as usize];
                    moves.push(Step::Header(pick, None, size, true));
                    moves.push(Step::Header(pick, None, size, true));
                    moves.push(Step::Abort(pick, false, None));
                }
                None if phase == Phase::Receiving => moves.push(Step::TransferEnd),
                None => {}
                Some(0) => {
                    moves.push(Step::FileEnd);
                    moves.push(Step::FileEnd);
                    moves.push(Step::Abort(pick, true, None));
                }
                Some(left) => {
                    moves.push(Step::Data(
                        (n % left.min(40)) as usize + 1,
                        n.is_multiple_of(3),
                    ));
                    moves.push(Step::Hole(n % left + 1, n.is_multiple_of(2)));
                    moves.push(Step::Abort(pick, true, None));
                }
            }
        }
        if !self.committed.is_empty() {
            moves.push(Step::Verdict(!n.is_multiple_of(4)));
        }
        if moves.is_empty() {
            return Step::Verdict(true);
        }
        moves.swap_remove(pick.index(moves.len()))
    }

    /// The files a batch requests, or `None` if the server must refuse it.
    fn batch(&self, entries: &[Entry]) -> Option<Vec<RelPath>> {
        if entries.len() > MANIFEST_BATCH_MAX {
            return None;
        }
        let mut last = self.last_listed.clone();
        let mut leaf = self.last_leaf.clone();
        let mut send = Vec::new();
        for e in entries {
            if last.as_ref().is_some_and(|l| l.tree_cmp(&e.path).is_ge()) {
                return None;
            }
            if leaf.as_ref().is_some_and(|f| f.is_ancestor_of(&e.path)) {
                return None;
            }
            if (e.kind == EntryKind::Symlink) != e.target.is_some() || e.mode & !MODE_BITS != 0 {
                return None;
            }
            last = Some(e.path.clone());
            if !matches!(e.kind, EntryKind::Dir | EntryKind::Keep) {
                leaf = Some(e.path.clone());
            }
            if e.kind == EntryKind::File {
                let same = self.held.get(&e.path).is_some_and(|h| {
                    h.kind == EntryKind::File && h.size == e.size && h.mtime == e.mtime
                });
                if !same {
                    send.push(e.path.clone());
                }
            }
        }
        if self.requested.len() + send.len() > MAX_OUTSTANDING {
            return None;
        }
        Some(send)
    }

    fn accept_batch(&mut self, entries: &[Entry], send: &[RelPath]) {
        for e in entries {
            self.last_listed = Some(e.path.clone());
            if !matches!(e.kind, EntryKind::Dir | EntryKind::Keep) {
                self.last_leaf = Some(e.path.clone());
            }
            self.listed.insert(e.path.clone(), e.clone());
            if send.contains(&e.path) {
                self.bytes_total = self.bytes_total.saturating_add(e.size);
            }
        }
        self.count += entries.len() as u64;
        self.requested_total += send.len() as u64;
        self.requested.extend(send.iter().cloned());
    }

    /// What the server should answer a file message with, `None` for a refusal.
    fn file_msg(&mut self, m: &ClientMsg) -> Option<Receive> {
        match m {
            ClientMsg::FileHeader(h) => {
                let i = self.requested.iter().position(|p| *p == h.path);
                if self.open.is_some() || h.offset != 0 || i.is_none() {
                    return None;
                }
                self.requested.remove(i.unwrap());
                self.open = Some((h.path.clone(), h.size, 0));
                Some(Receive::Open(h.clone()))
            }
            ClientMsg::Hole(h) => {
                (h.len > 0 && self.advance(h.len)).then_some(Receive::Hole(h.len))
            }
            ClientMsg::FileEnd(_) => match self.open.take() {
                Some((p, size, got)) if size == got => {
                    self.committed.push(p.clone());
                    Some(Receive::Commit(p, None))
                }
                _ => None,
            },
            ClientMsg::FileAbort(a) => {
                let ok = match self.open.take() {
                    Some((p, ..)) => p == a.path,
                    None => match self.requested.iter().position(|p| *p == a.path) {
                        Some(i) => {
                            self.requested.remove(i);
                            true
                        }
                        None => false,
                    },
                };
                self.aborted += 1;
                ok.then(|| Receive::Discard(a.path.clone(), a.reason.clone()))
            }
            _ => None,
        }
    }

    fn advance(&mut self, n: u64) -> bool {
        match &mut self.open {
            Some((_, size, got)) => {
                *got = got.saturating_add(n);
                *got <= *size
            }
            None => false,
        }
    }
}

/// What the model expects the server to answer.
#[derive(Debug)]
enum Expect {
    Tasks(Vec<RelPath>),
    PlanEnd,
    File(Receive),
    Received,
}

#[allow(clippy::large_enum_variant)]
enum Session {
    Listing(Box<Server<Listing>>),
    Receiving(Server<Receiving>),
    Received(Server<Received>),
}

/// Checks the tail ops of a session against what was listed and held.
fn check_tail(model: &Model, ops: &[TailOp]) -> Result<(), TestCaseError> {
    let mask = MODE_BITS & !SETID_BITS;
    let listed = |p: &RelPath, k: EntryKind| model.listed.get(p).filter(|e| e.kind == k);
    // A `Keep` under which the client listed nothing: the server keeps all it holds there.
    let clean_keeps: Vec<&RelPath> = model
        .listed
        .values()
        .filter(|e| e.kind == EntryKind::Keep)
        .map(|e| &e.path)
        .filter(|k| !model.listed.keys().any(|p| k.is_ancestor_of(p)))
        .collect();
    for op in ops {
        match op {
            TailOp::Delete(p) => {
                prop_assert!(model.held.contains_key(p), "deletes {p}, which is not held");
                prop_assert!(
                    !model.listed.keys().any(|l| l == p || p.is_ancestor_of(l)),
                    "deletes {p}, which holds a listed entry"
                );
                prop_assert!(
                    !clean_keeps.iter().any(|k| *k == p || k.is_ancestor_of(p)),
                    "deletes {p}, which the client asked to keep"
                );
            }
            TailOp::MakeDir(p) => {
                prop_assert!(
                    listed(p, EntryKind::Dir).is_some(),
                    "makes {p}, not a listed directory"
                );
            }
            TailOp::DirAttrs(p, t, m) => {
                let e = listed(p, EntryKind::Dir);
                prop_assert!(e.is_some(), "sets the time of {p}, not a listed directory");
                let e = e.unwrap();
                prop_assert_eq!((e.mtime, Some(e.mode & mask)), (*t, *m));
            }
            TailOp::Link(p, target, t) => {
                let e = listed(p, EntryKind::Symlink);
                prop_assert!(e.is_some(), "links {p}, not a listed symlink");
                let e = e.unwrap();
                prop_assert_eq!((e.target.as_ref(), e.mtime), (Some(target), *t));
            }
            TailOp::Fifo(p, m, t) => {
                let e = listed(p, EntryKind::Fifo);
                prop_assert!(e.is_some(), "makes the FIFO {p}, not listed as one");
                let e = e.unwrap();
                prop_assert_eq!((e.mode & mask, e.mtime), (*m, *t));
            }
            TailOp::Chmod(p, m) => {
                let e = listed(p, EntryKind::File);
                prop_assert!(e.is_some(), "changes the mode of {p}, not a listed file");
                prop_assert!(
                    model.held.get(p).is_some_and(|h| h.kind == EntryKind::File),
                    "changes the mode of {p}, not a held file"
                );
                prop_assert_eq!(e.unwrap().mode & mask, *m);
            }
        }
    }
    Ok(())
}

/// Asserts that a refusal is one of the protocol's: the peer's fault, a refusal to empty
/// the archive, or the peer's own `ERROR`; never a local failure or a codec error.
fn check_refusal(e: &Error, step: &Step) -> Result<(), TestCaseError> {
    match e {
        Error::Remote { .. } => prop_assert!(matches!(step, Step::Error), "{e} after {step:?}"),
        Error::Protocol(p) => {
            let _ = p.code();
        }
        Error::Refused { code, .. } => prop_assert_eq!(*code, ErrorCode::WOULD_EMPTY),
        other => {
            return Err(TestCaseError::fail(format!(
                "refused with {other:?} after {step:?}"
            )))
        }
    }
    prop_assert!(!e.to_string().is_empty());
    Ok(())
}

/// Drives a listing server through `steps`, checking every answer against the model.
fn drive_session(
    enc: Encoding,
    allow_empty: bool,
    index: Vec<(RelPath, Held)>,
    listing_entries: Vec<Entry>,
    steps: Vec<Step>,
) -> Result<(), TestCaseError> {
    let mut model = Model {
        held: index.iter().cloned().collect(),
        held_file: index.iter().any(|(_, h)| h.kind == EntryKind::File),
        allow_empty,
        ..Model::default()
    };
    let mut idx = index.into_iter();
    let mut ops: Vec<TailOp> = Vec::new();
    let mut next = listing_entries.into_iter();
    let mut session = Session::Listing(Box::new(listing(enc, allow_empty)));
    let mut phase = Phase::Listing;
    for step in steps {
        let step = match step {
            Step::Auto(pick, n) => model.auto(phase, next.len(), pick, n),
            raw => raw,
        };
        // The message this step sends, if any.
        let msg = match &step {
            Step::Next(n) => Some(ClientMsg::Manifest(Manifest {
                entries: next.by_ref().take(*n).collect(),
            })),
            Step::Batch(entries) => Some(ClientMsg::Manifest(Manifest {
                entries: entries.clone(),
            })),
            Step::End(n) => Some(ClientMsg::ManifestEnd(ManifestEnd {
                entries: n.unwrap_or(model.count),
            })),
            Step::Header(i, raw, size, zero) => {
                let path = match (raw, model.requested.is_empty()) {
                    (Some(p), _) => p.clone(),
                    (None, false) => model.requested[i.index(model.requested.len())].clone(),
                    (None, true) => RelPath::parse("a").unwrap(),
                };
                Some(ClientMsg::FileHeader(FileHeader {
                    path,
                    size: *size,
                    mtime: t0(),
                    mode: 0o644,
                    delta: false,
                    offset: if *zero { 0 } else { 1 },
                }))
            }
            Step::Hole(n, rest) => {
                let len = match (&model.open, rest) {
                    (Some((_, size, got)), true) => size - got,
                    _ => *n,
                };
                Some(ClientMsg::Hole(Hole { len }))
            }
            Step::FileEnd => Some(ClientMsg::FileEnd(FileEnd { hash: None })),
            Step::Abort(i, open, raw) => {
                let path = match (raw, &model.open, model.requested.is_empty()) {
                    (Some(p), _, _) => p.clone(),
                    (None, Some((p, ..)), _) if *open => p.clone(),
                    (None, _, false) => model.requested[i.index(model.requested.len())].clone(),
                    _ => RelPath::parse("b").unwrap(),
                };
                Some(ClientMsg::FileAbort(FileAbort {
                    path,
                    reason: "changed".into(),
                }))
            }
            Step::TransferEnd => Some(ClientMsg::TransferEnd(TransferEnd {})),
            Step::Error => Some(ClientMsg::Error(ErrorMsg {
                code: ErrorCode::INTERNAL,
                message: "gone".into(),
            })),
            Step::Hello => Some(ClientMsg::Hello(Hello {
                version: PROTOCOL_VERSION,
                agent: "again".into(),
                client_id: None,
                capabilities: vec![],
                allow_empty,
                max_delete: None,
            })),
            Step::Data(..) | Step::Verdict(_) | Step::Auto(..) => None,
        };
        match (session, &step, msg) {
            (s, Step::Verdict(stored), _) => {
                let Some(path) = model.committed.pop() else {
                    session = s;
                    continue;
                };
                let outcome = if *stored {
                    model.stored += 1;
                    Outcome::Stored
                } else {
                    model.rejected += 1;
                    Outcome::Rejected {
                        code: ErrorCode::STORAGE,
                        reason: "disk full".into(),
                    }
                };
                let want = ServerMsg::FileResult(FileResult {
                    path: path.clone(),
                    outcome: outcome.clone(),
                });
                let (s, got) = match s {
                    Session::Listing(mut s) => {
                        let m = s.file_result(path, outcome);
                        (Session::Listing(s), m)
                    }
                    Session::Receiving(mut s) => {
                        let m = s.file_result(path, outcome);
                        (Session::Receiving(s), m)
                    }
                    Session::Received(mut s) => {
                        let m = s.file_result(path, outcome);
                        (Session::Received(s), m)
                    }
                };
                prop_assert_eq!(got, want);
                session = s;
            }
            (s @ Session::Received(_), _, _) => {
                // Nothing more is read once TRANSFER_END is in.
                session = s;
            }
            (s, Step::Data(n, rest), None) => {
                let len = match (&model.open, rest) {
                    (Some((_, size, got)), true) => {
                        usize::try_from(size - got).unwrap_or(*n).min(1 << 20)
                    }
                    _ => *n,
                };
                let ok = model.advance(len as u64);
                let (s, r) = match s {
                    Session::Listing(mut s) => {
                        let r = s.on_data(len);
                        (Session::Listing(s), r)
                    }
                    Session::Receiving(mut s) => {
                        let r = s.on_data(len);
                        (Session::Receiving(s), r)
                    }
                    Session::Received(_) => unreachable!(),
                };
                match r {
                    Ok(()) => prop_assert!(ok, "DATA of {len} accepted against {:?}", model.open),
                    Err(e) => {
                        prop_assert!(!ok, "DATA of {len} refused: {e}");
                        check_refusal(&e, &step)?;
                        return Ok(());
                    }
                }
                session = s;
            }
            (Session::Listing(s), _, Some(msg)) => {
                let expect: Option<Expect> = match &msg {
                    ClientMsg::Manifest(m) => model.batch(&m.entries).map(|send| {
                        model.accept_batch(&m.entries, &send);
                        Expect::Tasks(send)
                    }),
                    ClientMsg::ManifestEnd(end) => {
                        let would_empty =
                            !model.allow_empty && model.last_listed.is_none() && model.held_file;
                        (end.entries == model.count && !would_empty).then_some(Expect::PlanEnd)
                    }
                    ClientMsg::TransferEnd(_) | ClientMsg::Hello(_) | ClientMsg::Error(_) => None,
                    m => model.file_msg(m).map(Expect::File),
                };
                let mut new_ops = Vec::new();
                let r = (*s).on_message(msg.clone(), &mut idx, &mut |op| new_ops.push(op));
                match r {
                    Err(e) => {
                        prop_assert!(expect.is_none(), "{} refused: {e}", msg.kind());
                        check_refusal(&e, &step)?;
                        return Ok(());
                    }
                    Ok(listed) => {
                        let Some(expect) = expect else {
                            return Err(TestCaseError::fail(format!(
                                "{} accepted: {msg:?}",
                                msg.kind()
                            )));
                        };
                        ops.extend(new_ops);
                        check_tail(&model, &ops)?;
                        match (listed, expect) {
                            (Listed::Listing(s, ServerMsg::Tasks(t)), Expect::Tasks(want)) => {
                                prop_assert_eq!(&t.paths, &want);
                                // Whatever the server requests fits in a frame.
                                let mut buf = BytesMut::new();
                                ServerCodec::new(enc)
                                    .encode_msg(&ServerMsg::Tasks(t), &mut buf)
                                    .expect("TASKS fits in a frame");
                                prop_assert!(model.requested.len() <= MAX_OUTSTANDING);
                                session = Session::Listing(Box::new(s));
                            }
                            (Listed::File(s, got), Expect::File(want)) => {
                                prop_assert_eq!(got, want);
                                session = Session::Listing(Box::new(s));
                            }
                            (Listed::Receiving(s, ServerMsg::PlanEnd(end)), Expect::PlanEnd) => {
                                prop_assert_eq!(end.files, model.requested_total);
                                prop_assert_eq!(end.bytes, model.bytes_total);
                                let tops = ops
                                    .iter()
                                    .filter(|o| matches!(o, TailOp::Delete(_)))
                                    .count();
                                prop_assert!(
                                    end.deletions >= tops as u64,
                                    "{} deletions, {tops} deleted trees",
                                    end.deletions
                                );
                                phase = Phase::Receiving;
                                session = Session::Receiving(s);
                            }
                            (other, want) => {
                                return Err(TestCaseError::fail(format!(
                                    "answered {other:?}, expected {want:?}"
                                )))
                            }
                        }
                    }
                }
            }
            (Session::Receiving(s), _, Some(msg)) => {
                let expect: Option<Expect> = match &msg {
                    ClientMsg::TransferEnd(_) => model.open.is_none().then_some(Expect::Received),
                    ClientMsg::Manifest(_)
                    | ClientMsg::ManifestEnd(_)
                    | ClientMsg::Hello(_)
                    | ClientMsg::Error(_) => None,
                    m => model.file_msg(m).map(Expect::File),
                };
                match (s.on_message(msg.clone()), expect) {
                    (Err(e), expect) => {
                        prop_assert!(expect.is_none(), "{} refused: {e}", msg.kind());
                        check_refusal(&e, &step)?;
                        return Ok(());
                    }
                    (Ok(Receipt::Receiving(s, got)), Some(Expect::File(want))) => {
                        prop_assert_eq!(got, want);
                        session = Session::Receiving(s);
                    }
                    (Ok(Receipt::Received(s)), Some(Expect::Received)) => {
                        phase = Phase::Received;
                        session = Session::Received(s);
                    }
                    (Ok(got), want) => {
                        return Err(TestCaseError::fail(format!(
                            "{} answered {got:?}, expected {want:?}",
                            msg.kind()
                        )))
                    }
                }
            }
            (s, _, None) => session = s,
        }
    }
    if let (Session::Received(s), Phase::Received) = (session, phase) {
        let never_sent = model.requested.len() as u64;
        let (done, msg) = s.next_sync(t1(), 1000);
        let ServerMsg::NextSync(n) = msg else {
            return Err(TestCaseError::fail("no NEXT_SYNC"));
        };
        prop_assert_eq!(n.stored, model.stored);
        prop_assert_eq!(n.rejected, model.rejected + model.aborted + never_sent);
        let tally = done.tally();
        prop_assert_eq!(tally.requested, model.requested_total);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(1024))]

    /// Arbitrary sequences of client messages against a listing server: it never
    /// panics, accepts exactly what the protocol allows (the model says), answers each
    /// batch with the files it lacks, and plans only work on listed or held paths.
    #[test]
    fn server_session_follows_the_protocol(
        enc in encoding(),
        allow_empty in any::<bool>(),
        (index, listing_entries) in index_and_listing(),
        steps in steps(),
    ) {
        drive_session(enc, allow_empty, index, listing_entries, steps)?;
    }
}

/// One step of a client pushing at the manifest window.
#[derive(Debug, Clone)]
enum WindowStep {
    /// A batch of this many new files.
    Batch(usize),
    /// Sends (or aborts, every third) this many of the files requested.
    Send(usize),
}

proptest! {
    #![proptest_config(scaled_config(12, 20))]

    /// Large batches: the server holds at most `MAX_OUTSTANDING` files requested and not
    /// sent, refuses the batch that would pass it, and every TASKS it sends fits in a
    /// frame (a batch of long paths whose TASKS would not is refused).
    #[test]
    fn requests_stay_within_the_window(
        enc in encoding(),
        pad in prop::sample::select(vec![0usize, 40, 120]),
        steps in prop::collection::vec(
            prop_oneof![
                3 => prop_oneof![1usize..64, (MANIFEST_BATCH_MAX - 64)..=MANIFEST_BATCH_MAX, 1..=MANIFEST_BATCH_MAX].prop_map(WindowStep::Batch),
                2 => (0usize..2 * MANIFEST_BATCH_MAX).prop_map(WindowStep::Send),
            ],
            1..10,
        ),
    ) {
        let mut server = listing(enc, false);
        let mut idx = std::iter::empty();
        let mut outstanding: std::collections::VecDeque<RelPath> = Default::default();
        let mut n = 0usize;
        let padding = "x".repeat(pad);
        for s in steps {
            match s {
                WindowStep::Batch(k) => {
                    let entries: Vec<Entry> = (n..n + k)
                        .map(|i| Entry {
                            path: RelPath::parse(&format!("f{i:07}{padding}")).unwrap(),
                            kind: EntryKind::File,
                            size: 1,
                            mtime: t0(),
                            mode: 0o644,
                            target: None,
                        })
                        .collect();
                    n += k;
                    let tasks = ServerMsg::Tasks(Tasks { paths: entries.iter().map(|e| e.path.clone()).collect(), resume: vec![] });
                    let fits = native::encoded_len(enc, &tasks).unwrap() < MAX_FRAME_LEN;
                    let ok = fits && outstanding.len() + k <= MAX_OUTSTANDING;
                    match server.on_message(ClientMsg::Manifest(Manifest { entries }), &mut idx, &mut |_| {}) {
                        Ok(Listed::Listing(s, ServerMsg::Tasks(t))) => {
                            prop_assert!(ok, "a batch of {k} accepted with {} outstanding", outstanding.len());
                            let mut buf = BytesMut::new();
                            ServerCodec::new(enc).encode_msg(&ServerMsg::Tasks(t.clone()), &mut buf).expect("TASKS fits");
                            prop_assert_eq!(t.paths.len(), k);
                            outstanding.extend(t.paths);
                            prop_assert!(outstanding.len() <= MAX_OUTSTANDING);
                            server = s;
                        }
                        Ok(other) => return Err(TestCaseError::fail(format!("{other:?}"))),
                        Err(e) => {
                            prop_assert!(!ok, "a batch of {k} refused with {} outstanding: {e}", outstanding.len());
                            prop_assert!(matches!(e, Error::Protocol(ProtocolError::Inconsistent(_))), "{e:?}");
                            return Ok(());
                        }
                    }
                }
                WindowStep::Send(k) => {
                    for j in 0..k.min(outstanding.len()) {
                        let path = outstanding.pop_front().unwrap();
                        let msgs = if j % 3 == 2 {
                            vec![ClientMsg::FileAbort(FileAbort { path, reason: String::new() })]
                        } else {
                            vec![
                                ClientMsg::FileHeader(FileHeader { path, size: 1, mtime: t0(), mode: 0o644, delta: false, offset: 0 }),
                                ClientMsg::Hole(Hole { len: 1 }),
                                ClientMsg::FileEnd(FileEnd { hash: None }),
                            ]
                        };
                        for m in msgs {
                            match server.on_message(m, &mut idx, &mut |_| {}) {
                                Ok(Listed::File(s, _)) => server = s,
                                other => return Err(TestCaseError::fail(format!("{other:?}"))),
                            }
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// 4. The store on a real directory
// ---------------------------------------------------------------------------------------

/// A scratch directory, on tmpfs where there is one (the store syncs every batch).
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let b = tempfile::Builder::new()
        .prefix("filesync-fuzz-")
        .tempdir_in(shm);
    b.or_else(|_| tempfile::Builder::new().prefix("filesync-fuzz-").tempdir())
        .expect("a scratch directory")
}

/// Names in the client folder: those planted there, and new ones.
fn store_component() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::sample::select(vec![
            &b"out"[..], b"out_rel", b"victim", b"other", b"in", b"up", b"chain", b"f", b"pipe",
            b"new", b"x", b"\xff", b"sub",
        ])
        .prop_map(<[u8]>::to_vec),
        1 => prop::collection::vec(any::<u8>().prop_filter("sep", |b| *b != b'/' && *b != 0), 1..6)
            .prop_filter("dots", |c| c != b"." && c != b".."),
    ]
}

fn store_path() -> impl Strategy<Value = RelPath> {
    prop::collection::vec(store_component(), 1..4)
        .prop_map(|cs| RelPath::from_bytes(&cs.join(&b'/')).unwrap())
}

/// A symlink target; `Outside` is resolved at run time to the outside directory (which a
/// broken store would write through). Every target stays inside the scratch directory
/// when followed, so that even a broken store cannot reach the rest of the machine.
#[derive(Debug, Clone)]
enum TargetSpec {
    Outside(&'static str),
    Plain(&'static [u8]),
}

fn target_spec() -> impl Strategy<Value = TargetSpec> {
    prop_oneof![
        prop::sample::select(vec!["", "victim", "sub", "sub/deep", "nothing"])
            .prop_map(TargetSpec::Outside),
        prop::sample::select(vec![
            &b".."[..],
            b"../..",
            b"../../outside",
            b"../../outside/victim",
            b"in",
            b"x",
            b"\xff",
            b"../client_b",
            b"up/../..",
        ])
        .prop_map(TargetSpec::Plain),
    ]
}

#[derive(Debug, Clone)]
enum TailSpec {
    Delete(RelPath),
    MakeDir(RelPath),
    DirAttrs(RelPath, MTime, Option<u32>),
    Link(RelPath, TargetSpec, MTime),
    Fifo(RelPath, u32, MTime),
    Chmod(RelPath, u32),
}

fn tail_spec() -> impl Strategy<Value = TailSpec> {
    let store_mode = || prop_oneof![3 => prop::sample::select(vec![0o755u32, 0o700, 0o555, 0o644, 0o4755, 0o777]), 1 => any::<u32>()];
    prop_oneof![
        3 => store_path().prop_map(TailSpec::Delete),
        2 => store_path().prop_map(TailSpec::MakeDir),
        2 => (store_path(), mtime(), prop::option::of(store_mode())).prop_map(|(p, t, m)| TailSpec::DirAttrs(p, t, m)),
        2 => (store_path(), target_spec(), mtime()).prop_map(|(p, t, m)| TailSpec::Link(p, t, m)),
        1 => (store_path(), store_mode(), mtime()).prop_map(|(p, m, t)| TailSpec::Fifo(p, m, t)),
        2 => (store_path(), store_mode()).prop_map(|(p, m)| TailSpec::Chmod(p, m)),
    ]
}

impl TailSpec {
    fn op(&self, outside: &Path) -> TailOp {
        match self.clone() {
            TailSpec::Delete(p) => TailOp::Delete(p),
            TailSpec::MakeDir(p) => TailOp::MakeDir(p),
            TailSpec::DirAttrs(p, t, m) => TailOp::DirAttrs(p, t, m),
            TailSpec::Link(p, t, m) => {
                let bytes = match t {
                    TargetSpec::Outside(s) => outside.join(s).into_os_string().into_vec(),
                    TargetSpec::Plain(b) => b.to_vec(),
                };
                TailOp::Link(p, LinkTarget::from_bytes(&bytes).unwrap(), m)
            }
            TailSpec::Fifo(p, m, t) => TailOp::Fifo(p, m, t),
            TailSpec::Chmod(p, m) => TailOp::Chmod(p, m),
        }
    }
}

#[derive(Debug, Clone)]
enum Body {
    Data(Vec<u8>),
    Hole(u64),
}

/// How a received file ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    Commit,
    Discard,
    /// Left open: the next file (or the end of the session) drops it.
    Abandon,
}

#[derive(Debug, Clone)]
enum StoreStep {
    File {
        path: RelPath,
        mtime: MTime,
        mode: Option<u32>,
        body: Vec<Body>,
        close: Close,
    },
    Flush,
}

fn store_step() -> impl Strategy<Value = StoreStep> {
    let body = prop::collection::vec(
        prop_oneof![
            3 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Body::Data),
            1 => prop_oneof![1u64..5000, 1u64..(1 << 20)].prop_map(Body::Hole),
        ],
        0..4,
    );
    prop_oneof![
        8 => (
            store_path(),
            prop_oneof![4 => prop::sample::select(vec![t0(), t1()]), 1 => mtime()],
            prop::option::of(prop_oneof![prop::sample::select(vec![0o644u32, 0o755, 0o4755, 0o600]), any::<u32>()]),
            body,
            prop_oneof![6 => Just(Close::Commit), 1 => Just(Close::Discard), 1 => Just(Close::Abandon)],
        )
            .prop_map(|(path, mtime, mode, body, close)| StoreStep::File { path, mtime, mode, body, close }),
        1 => Just(StoreStep::Flush),
    ]
}

#[derive(Debug, Clone)]
struct StoreSession {
    steps: Vec<StoreStep>,
    tail: Vec<TailSpec>,
}

fn store_session() -> impl Strategy<Value = StoreSession> {
    (
        prop::collection::vec(store_step(), 0..8),
        prop_oneof![1 => Just(vec![]), 3 => prop::collection::vec(tail_spec(), 0..10)],
    )
        .prop_map(|(steps, tail)| StoreSession { steps, tail })
}

/// What stands in `<root>/client_a` before the sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientFolder {
    /// A directory with symlinks planted in it.
    Planted,
    /// A symlink to the outside directory.
    LinkOutside,
    /// A symlink to another client's folder.
    LinkOther,
    /// Missing.
    Missing,
}

/// Metadata and content of one entry, to tell whether anything changed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    ino: u64,
    nlink: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    content: Option<Vec<u8>>,
    target: Option<PathBuf>,
}

/// Everything under `base`, read without following a symlink, except the subtrees in
/// `skip` (and only the kind of those in `opaque`).
fn snapshot(base: &Path, skip: &[PathBuf], opaque: &[PathBuf]) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let walk = walkdir::WalkDir::new(base)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| !skip.iter().any(|s| e.path() == s));
    for e in walk {
        let e = e.expect("walk");
        let m = fs::symlink_metadata(e.path()).expect("lstat");
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else {
            "other"
        };
        let node = if opaque.iter().any(|o| e.path() == o) {
            Node {
                kind,
                mode: 0,
                uid: 0,
                gid: 0,
                ino: 0,
                nlink: 0,
                size: 0,
                mtime: (0, 0),
                ctime: (0, 0),
                content: None,
                target: None,
            }
        } else {
            Node {
                kind,
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                ino: m.ino(),
                nlink: m.nlink(),
                size: if ft.is_dir() { 0 } else { m.size() },
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
                content: ft.is_file().then(|| fs::read(e.path()).expect("read")),
                target: ft
                    .is_symlink()
                    .then(|| fs::read_link(e.path()).expect("readlink")),
            }
        };
        out.insert(e.path().to_path_buf(), node);
    }
    out
}

fn mkfifo(p: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .expect("mkfifo");
}

/// `<base>/root` (the server root, with another client's folder and a file of its own)
/// and `<base>/outside`; the client folder as `folder` says.
fn plant(base: &Path, folder: ClientFolder) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::symlink;
    let root = base.join("root");
    let outside = base.join("outside");
    fs::create_dir_all(outside.join("sub")).unwrap();
    fs::write(outside.join("victim"), b"precious").unwrap();
    fs::write(outside.join("sub/deep"), b"deep").unwrap();
    symlink("victim", outside.join("link")).unwrap();
    fs::create_dir_all(root.join("client_b/d")).unwrap();
    fs::write(root.join("client_b/keep"), b"b's").unwrap();
    fs::write(root.join("top"), b"root's own").unwrap();
    let a = root.join("client_a");
    match folder {
        ClientFolder::Missing => {}
        ClientFolder::LinkOutside => symlink(&outside, &a).unwrap(),
        ClientFolder::LinkOther => symlink("client_b", &a).unwrap(),
        ClientFolder::Planted => {
            fs::create_dir_all(a.join("in/sub")).unwrap();
            fs::write(a.join("in/f"), b"inner").unwrap();
            fs::write(a.join("f"), b"top").unwrap();
            symlink(&outside, a.join("out")).unwrap();
            symlink("../../outside", a.join("out_rel")).unwrap();
            symlink(outside.join("victim"), a.join("victim")).unwrap();
            symlink("../client_b", a.join("other")).unwrap();
            symlink("..", a.join("in/up")).unwrap();
            symlink("../../../outside", a.join("in/out")).unwrap();
            symlink("in/up/out", a.join("chain")).unwrap();
            mkfifo(&a.join("pipe"));
        }
    }
    (root, outside)
}

/// Reads `rel` under `dir` only through real directories.
fn read_real(dir: &Path, rel: &RelPath) -> Option<(fs::Metadata, Vec<u8>)> {
    for a in rel.ancestors() {
        if !fs::symlink_metadata(a.to_path(dir)).ok()?.is_dir() {
            return None;
        }
    }
    let p = rel.to_path(dir);
    let m = fs::symlink_metadata(&p).ok()?;
    if !m.is_file() {
        return None;
    }
    Some((m, fs::read(&p).ok()?))
}

/// Gives the owner access to every folder under `base` (a session may have made some
/// unreadable), so that a test not run as root can read and remove them.
fn open_up(base: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for e in walkdir::WalkDir::new(base)
        .follow_links(false)
        .into_iter()
        .flatten()
    {
        if e.file_type().is_dir() {
            let _ = fs::set_permissions(e.path(), fs::Permissions::from_mode(0o700));
        }
    }
}

fn run_store(folder: ClientFolder, sessions: Vec<StoreSession>) -> Result<(), TestCaseError> {
    let scratch = scratch();
    let r = store_sessions(scratch.path(), folder, sessions);
    open_up(scratch.path());
    r
}

fn store_sessions(
    base: &Path,
    folder: ClientFolder,
    sessions: Vec<StoreSession>,
) -> Result<(), TestCaseError> {
    // A server not run as root cannot read what a client made unreadable to its owner.
    let superuser = rustix::process::geteuid().is_root();
    let (root, outside) = plant(base, folder);
    let store = Store::open(&root).expect("store opens");
    let id = ClientId::parse("a").unwrap();
    let client = root.join("client_a");
    let fs_dir = root.join(".filesync");
    // Everything but the client folder and the server's own directory, which the store
    // may change, and the root's own times, which change when the client folder is made.
    let guard = || {
        snapshot(
            base,
            &[client.clone(), fs_dir.clone()],
            std::slice::from_ref(&root),
        )
    };
    let before = guard();
    let mask = MODE_BITS & !SETID_BITS;
    for session in sessions {
        let reported: Arc<Mutex<Vec<(RelPath, Outcome)>>> = Default::default();
        let sink = Arc::clone(&reported);
        let mut r = store
            .receiver(&id, move |v| sink.lock().unwrap().extend(v))
            .expect("receiver");
        let mut committed: Vec<(RelPath, Vec<u8>, MTime, Option<u32>)> = Vec::new();
        let mut at_once = Vec::new();
        for step in &session.steps {
            match step {
                StoreStep::Flush => r.flush(),
                StoreStep::File {
                    path,
                    mtime,
                    mode,
                    body,
                    close,
                } => {
                    let mut content = Vec::new();
                    for b in body {
                        match b {
                            Body::Data(d) => content.extend(d),
                            Body::Hole(n) => content.resize(content.len() + *n as usize, 0),
                        }
                    }
                    let h = FileHeader {
                        path: path.clone(),
                        size: content.len() as u64,
                        mtime: *mtime,
                        mode: mode.unwrap_or(0o644),
                        delta: false,
                        offset: 0,
                    };
                    r.open(&h, *mode);
                    for b in body {
                        match b {
                            Body::Data(d) => r.write(d),
                            Body::Hole(n) => r.skip(*n),
                        }
                    }
                    match close {
                        Close::Commit => {
                            at_once.extend(r.commit(None));
                            committed.push((path.clone(), content, *mtime, *mode));
                        }
                        Close::Discard => r.discard(),
                        Close::Abandon => {}
                    }
                }
            }
        }
        let mut spool = store.spool().expect("spool");
        for t in &session.tail {
            spool.push(&t.op(&outside));
        }
        let Applied { errors, .. } = r.finish(spool, &DeleteBudget::All);
        prop_assert!(
            !errors.iter().any(|e| e.contains("placer thread stopped")),
            "the placer died: {errors:?}"
        );
        drop(r);
        // Nothing lost: every committed file has exactly one verdict.
        let mut verdicts = reported.lock().unwrap().clone();
        verdicts.extend(at_once);
        prop_assert_eq!(verdicts.len(), committed.len(), "{:?}", verdicts);
        // Nothing left behind in the server's own directory.
        for d in ["tmp", "spool"] {
            let left: Vec<_> = fs::read_dir(fs_dir.join(d))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            prop_assert!(left.is_empty(), "left in .filesync/{d}: {left:?}");
        }
        // A file stored whole, where nothing else of the session touched it, reads back
        // as sent, with its time and mode.
        if session.tail.is_empty() {
            for (i, (path, content, mtime, mode)) in committed.iter().enumerate() {
                let stored = verdicts
                    .iter()
                    .filter(|(p, _)| p == path)
                    .all(|(_, o)| *o == Outcome::Stored);
                let alone = committed.iter().enumerate().all(|(j, (q, ..))| {
                    j == i || (q != path && !q.is_ancestor_of(path) && !path.is_ancestor_of(q))
                });
                let readable = superuser || mode.is_none_or(|m| m & 0o400 != 0);
                if !(stored && alone && readable) {
                    continue;
                }
                let got = read_real(&client, path);
                if got.is_none() && !superuser {
                    // Under a folder an earlier session made unreadable, and given back.
                    continue;
                }
                prop_assert!(got.is_some(), "{path} was stored but cannot be read");
                let (m, bytes) = got.unwrap();
                prop_assert!(
                    bytes == *content,
                    "{path}: {} bytes back of {}",
                    bytes.len(),
                    content.len()
                );
                // Times far from now may be clamped by the filesystem.
                if (-(1i64 << 31)..1 << 33).contains(&mtime.secs) {
                    prop_assert_eq!(
                        (m.mtime(), m.mtime_nsec() as u32),
                        (mtime.secs, mtime.nanos),
                        "{}",
                        path
                    );
                }
                if let Some(mode) = mode {
                    prop_assert_eq!(m.mode() & MODE_BITS, mode & mask, "{}", path);
                }
            }
        }
        // The index of what the folder now holds is in tree order, read without
        // following a link.
        let mut index = store.index(&id);
        let held: Vec<(RelPath, Held)> = index.by_ref().collect();
        if let Some(e) = index.take_error() {
            prop_assert!(
                !superuser && e.to_string().contains("ermission denied"),
                "reading the index: {e}"
            );
        }
        for w in held.windows(2) {
            prop_assert!(
                w[0].0.tree_cmp(&w[1].0).is_lt(),
                "index order: {} then {}",
                w[0].0,
                w[1].0
            );
        }
        let after = guard();
        if after != before {
            let changed: Vec<_> = before
                .keys()
                .chain(after.keys())
                .filter(|k| before.get(*k) != after.get(*k))
                .collect();
            return Err(TestCaseError::fail(format!(
                "changed outside the client folder: {changed:?} (session {session:?})"
            )));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    /// Sessions of arbitrary files and tail ops on a client folder with symlinks planted
    /// to the outside: nothing outside `<root>/client_a` and `<root>/.filesync` is ever
    /// created, changed or deleted; every committed file gets a verdict; no temporary
    /// file is left; files stored read back as sent.
    #[test]
    fn the_store_never_writes_outside_the_client_folder(
        folder in prop_oneof![
            6 => Just(ClientFolder::Planted),
            1 => Just(ClientFolder::LinkOutside),
            1 => Just(ClientFolder::LinkOther),
            1 => Just(ClientFolder::Missing),
        ],
        sessions in prop::collection::vec(store_session(), 1..3),
    ) {
        run_store(folder, sessions)?;
    }
}

/// Found by the property above: a client folder that is itself a symlink (to the outside,
/// or to another client's folder) was followed by the tail's deletions, mode changes and
/// folder times, which check only the ancestors *inside* the folder.
#[test]
fn a_client_folder_that_is_a_symlink_is_never_followed() {
    for folder in [ClientFolder::LinkOutside, ClientFolder::LinkOther] {
        let scratch = scratch();
        let (root, outside) = plant(scratch.path(), folder);
        let before = snapshot(scratch.path(), &[root.join(".filesync")], &[]);
        let store = Store::open(&root).unwrap();
        let mut r = store
            .receiver(&ClientId::parse("a").unwrap(), |_| {})
            .unwrap();
        let mut spool = store.spool().unwrap();
        for op in [
            TailOp::Delete(RelPath::parse("victim").unwrap()),
            TailOp::Delete(RelPath::parse("sub").unwrap()),
            TailOp::Delete(RelPath::parse("keep").unwrap()),
            TailOp::Chmod(RelPath::parse("victim").unwrap(), 0o777),
            TailOp::Chmod(RelPath::parse("keep").unwrap(), 0o777),
            TailOp::DirAttrs(RelPath::parse("sub").unwrap(), MTime::EPOCH, Some(0o700)),
            TailOp::DirAttrs(RelPath::parse("d").unwrap(), MTime::EPOCH, Some(0o700)),
        ] {
            spool.push(&op);
        }
        let Applied { deleted, .. } = r.finish(spool, &DeleteBudget::All);
        drop(r);
        assert_eq!(deleted, 0, "{folder:?}");
        // The symlink in the folder's place was replaced by a real folder at the end, and
        // nothing it pointed to changed.
        let mut after = snapshot(scratch.path(), &[root.join(".filesync")], &[]);
        assert!(fs::symlink_metadata(root.join("client_a"))
            .unwrap()
            .is_dir());
        after.remove(&root.join("client_a"));
        let mut before = before;
        before.remove(&root.join("client_a"));
        before.remove(&root);
        after.remove(&root);
        assert_eq!(before, after, "{folder:?}");
        let _ = outside;
    }
}

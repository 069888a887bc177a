//! The golden wire vectors of `spec/vectors/` (layout: `spec/vectors/README.md`) against
//! the code.
//!
//! Every vector file must parse and be of a known kind; each message decodes from its JSON
//! text and from its postcard bytes to the same value, and re-encodes byte for byte. The
//! session transcript is replayed through the client and the server state machines, each
//! fed the other side's frames and checked to produce its own. A vector that fails here
//! means the code changed the wire format: fix the code, or bump the protocol version and
//! add new vectors (`spec/PROTOCOL.md`, "Versioning and extensions").

use std::collections::{BTreeSet, VecDeque};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use tokio_util::codec::Decoder;

use filesync_core::codec::json_stream::{encode_seed, JsonCodec, SeedServerCodec};
use filesync_core::codec::native::{self, ClientCodec, NativeCodec};
use filesync_core::codec::preamble::{self, Dialect};
use filesync_core::codec::{CodecError, Frame};
use filesync_core::messages::{
    seed, ClientMsg, Encoding, Entry, EntryKind, FileHeader, Outcome, ServerMsg,
};
use filesync_core::paths::ClientId;
use filesync_core::planner::Held;
use filesync_core::session::client::{self, ClientParams, Finish, Waiting};
use filesync_core::session::server::{self, Listed, Receipt, Receive, ServerParams};
use filesync_core::session::{Client, Server};

/// Fewer files than this means vectors went missing (or the directory moved).
const MIN_VECTORS: usize = 50;

/// The postcard variant index of every native message, as `spec/PROTOCOL.md` lists them.
const CLIENT_VARIANTS: [(&str, u32); 11] = [
    ("HELLO", 0),
    ("MANIFEST", 1),
    ("MANIFEST_END", 2),
    ("FILE_HEADER", 3),
    ("FILE_END", 4),
    ("FILE_ABORT", 5),
    ("TRANSFER_END", 6),
    ("ERROR", 7),
    ("HOLE", 8),
    ("COPY", 9),
    ("AUTH", 10),
];
/// As [`CLIENT_VARIANTS`], server to client.
const SERVER_VARIANTS: [(&str, u32); 11] = [
    ("WELCOME", 0),
    ("QUEUED", 1),
    ("READY", 2),
    ("TASKS", 3),
    ("DELETIONS", 4),
    ("PLAN_END", 5),
    ("FILE_RESULT", 6),
    ("NEXT_SYNC", 7),
    ("ERROR", 8),
    ("SIGNATURE", 9),
    ("AUTH_OK", 10),
];

#[test]
fn all_vectors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/vectors");
    let mut seen = Seen::default();
    let mut count = 0;
    for (dir, check) in [
        ("native", check_native as fn(&Path, &Value, &mut Seen)),
        ("seed", check_seed),
    ] {
        for path in json_files(&root.join(dir)) {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
            check(&path, &v, &mut seen);
            count += 1;
        }
    }
    assert!(
        count >= MIN_VECTORS,
        "found {count} vectors under {}, expected at least {MIN_VECTORS}",
        root.display()
    );

    // Every variant of every enum has at least one vector.
    let names = |t: &[(&'static str, u32)]| t.iter().map(|(n, _)| *n).collect::<BTreeSet<_>>();
    assert_eq!(
        seen.client,
        names(&CLIENT_VARIANTS),
        "native client messages"
    );
    assert_eq!(
        seen.server,
        names(&SERVER_VARIANTS),
        "native server messages"
    );
    let all = |v: &[&'static str]| v.iter().copied().collect::<BTreeSet<_>>();
    assert_eq!(seen.datagram, all(&["DISCOVER", "OFFER"]));
    assert_eq!(
        seen.seed_server,
        all(&["SERVER_STATUS_MESSAGE", "TASKS", "NEXT_SYNC"])
    );
    assert_eq!(seen.seed_client, all(&["CLIENT_FILES_INFO", "FILE_HEADER"]));
    for k in ["data", "preamble", "invalid", "session", "reject"] {
        assert!(seen.kinds.contains(k), "no vector of kind {k}");
    }
}

#[derive(Default)]
struct Seen {
    client: BTreeSet<&'static str>,
    server: BTreeSet<&'static str>,
    datagram: BTreeSet<&'static str>,
    seed_server: BTreeSet<&'static str>,
    seed_client: BTreeSet<&'static str>,
    kinds: BTreeSet<String>,
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------
// Field access that names the file on failure

fn field<'a>(path: &Path, v: &'a Value, key: &str) -> &'a Value {
    v.get(key)
        .unwrap_or_else(|| panic!("{}: missing field {key:?}", path.display()))
}

fn text<'a>(path: &Path, v: &'a Value, key: &str) -> &'a str {
    field(path, v, key)
        .as_str()
        .unwrap_or_else(|| panic!("{}: field {key:?} is not a string", path.display()))
}

fn unhex(path: &Path, s: &str) -> Vec<u8> {
    assert!(
        s.len().is_multiple_of(2),
        "{}: odd hex length",
        path.display()
    );
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16)
                .unwrap_or_else(|e| panic!("{}: bad hex {s:?}: {e}", path.display()))
        })
        .collect()
}

fn bytes_field(path: &Path, v: &Value, key: &str) -> Vec<u8> {
    unhex(path, text(path, v, key))
}

fn encoding(path: &Path, v: &Value) -> Encoding {
    match text(path, v, "encoding") {
        "postcard" => Encoding::Postcard,
        "json" => Encoding::Json,
        e => panic!("{}: unknown encoding {e:?}", path.display()),
    }
}

// ---------------------------------------------------------------------------------------
// Native vectors

fn check_native(path: &Path, v: &Value, seen: &mut Seen) {
    let kind = text(path, v, "kind");
    seen.kinds.insert(kind.to_owned());
    match (kind, text(path, v, "direction")) {
        ("message", "client") => {
            let m: ClientMsg = check_message(path, v, &CLIENT_VARIANTS);
            assert_eq!(
                m.index(),
                field(path, v, "variant_index")
                    .as_u64()
                    .map(|i| i as u32)
                    .unwrap()
            );
            seen.client.insert(m.kind());
            check_frames::<ClientMsg>(path, v, &m);
        }
        ("message", "server") => {
            let m: ServerMsg = check_message(path, v, &SERVER_VARIANTS);
            assert_eq!(
                m.index(),
                field(path, v, "variant_index")
                    .as_u64()
                    .map(|i| i as u32)
                    .unwrap()
            );
            seen.server.insert(m.kind());
            check_frames::<ServerMsg>(path, v, &m);
        }
        ("data", _) => check_data(path, v),
        ("preamble", "client") => check_preamble(path, v),
        ("invalid", "server") => check_invalid::<ServerMsg>(path, v),
        ("invalid", "client") => check_invalid::<ClientMsg>(path, v),
        ("session", _) => check_session(path, v),
        (k, d) => panic!("{}: unknown vector kind {k:?}/{d:?}", path.display()),
    }
}

/// The JSON text and the postcard bytes decode to the same message, which re-encodes to
/// both exactly; the type name and variant index agree with the spec's table.
fn check_message<M>(path: &Path, v: &Value, table: &[(&str, u32)]) -> M
where
    M: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let json = text(path, v, "json");
    let from_json: M = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("{}: JSON does not decode: {e}", path.display()));
    assert_eq!(
        serde_json::to_string(&from_json).unwrap(),
        json,
        "{}: JSON re-encoding differs",
        path.display()
    );
    assert_eq!(
        &serde_json::to_value(&from_json).unwrap(),
        field(path, v, "message"),
        "{}: `message` and `json` disagree",
        path.display()
    );

    let pc = bytes_field(path, v, "postcard_hex");
    let from_pc: M = native::decode_message(Encoding::Postcard, &pc)
        .unwrap_or_else(|e| panic!("{}: postcard does not decode: {e}", path.display()));
    assert_eq!(from_pc, from_json, "{}: encodings disagree", path.display());
    assert_eq!(
        postcard::to_stdvec(&from_pc).unwrap(),
        pc,
        "{}: postcard re-encoding differs",
        path.display()
    );

    let ty = text(path, v, "type");
    let index = field(path, v, "variant_index").as_u64().unwrap();
    assert_eq!(
        table
            .iter()
            .find(|(n, _)| *n == ty)
            .map(|(_, i)| u64::from(*i)),
        Some(index),
        "{}: {ty} has another index in the spec's table",
        path.display()
    );
    // Variant indices of version 1 are below 128: one varint byte.
    assert_eq!(
        u64::from(pc[0]),
        index,
        "{}: postcard variant byte",
        path.display()
    );
    assert_eq!(
        serde_json::from_str::<Value>(json).unwrap()["type"],
        ty,
        "{}: JSON tag",
        path.display()
    );
    from_json
}

/// The full frames, in both encodings, decode to `m` (also when fed one byte at a time)
/// and are what the encoder writes.
fn check_frames<M>(path: &Path, v: &Value, m: &M)
where
    M: Serialize + DeserializeOwned + PartialEq + Clone + std::fmt::Debug,
{
    for (key, enc) in [
        ("frame_hex", Encoding::Postcard),
        ("json_frame_hex", Encoding::Json),
    ] {
        let frame = bytes_field(path, v, key);
        assert_eq!(
            native::frame_bytes(enc, m).unwrap().as_ref(),
            frame.as_slice(),
            "{}: {key} re-encoding differs",
            path.display()
        );
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(
            len,
            frame.len() - 4,
            "{}: {key} length prefix",
            path.display()
        );
        assert_eq!(
            frame[4],
            native::KIND_MSG,
            "{}: {key} kind byte",
            path.display()
        );
        let frames = decode_split::<M>(enc, &frame);
        assert_eq!(
            frames,
            vec![Frame::Msg(m.clone())],
            "{}: {key} decodes to another message",
            path.display()
        );
    }
}

/// Feeds `bytes` to a fresh decoder one byte at a time, then all at once; both must give
/// the same frames and leave nothing behind.
fn decode_split<M: DeserializeOwned + PartialEq + std::fmt::Debug>(
    enc: Encoding,
    bytes: &[u8],
) -> Vec<Frame<M>> {
    let mut codec: NativeCodec<M, ()> = NativeCodec::new(enc);
    let mut buf = BytesMut::new();
    let mut split = Vec::new();
    for &b in bytes {
        buf.extend_from_slice(&[b]);
        while let Some(f) = codec.decode(&mut buf).expect("valid frame") {
            split.push(f);
        }
    }
    assert_eq!(codec.decode_eof(&mut buf).expect("clean end"), None);
    let mut codec: NativeCodec<M, ()> = NativeCodec::new(enc);
    let mut buf = BytesMut::from(bytes);
    let mut whole = Vec::new();
    while let Some(f) = codec.decode_eof(&mut buf).expect("valid frame") {
        whole.push(f);
    }
    assert_eq!(split, whole);
    whole
}

fn check_data(path: &Path, v: &Value) {
    let data = bytes_field(path, v, "data_hex");
    let frame = bytes_field(path, v, "frame_hex");
    assert_eq!(frame[4], native::KIND_DATA, "{}: kind byte", path.display());
    for enc in [Encoding::Postcard, Encoding::Json] {
        let mut c: ClientCodec = NativeCodec::new(enc);
        let mut out = BytesMut::new();
        c.encode_data(&data, &mut out).unwrap();
        assert_eq!(
            out.as_ref(),
            frame.as_slice(),
            "{}: DATA encoding",
            path.display()
        );
        let frames = decode_split::<ClientMsg>(enc, &frame);
        assert_eq!(
            frames,
            vec![Frame::Data(data.clone().into())],
            "{}",
            path.display()
        );
    }
}

fn check_preamble(path: &Path, v: &Value) {
    let enc = encoding(path, v);
    let bytes = bytes_field(path, v, "hex");
    let arr: [u8; preamble::LEN] = bytes.as_slice().try_into().expect("six bytes");
    assert_eq!(preamble::encode(enc), arr, "{}", path.display());
    assert_eq!(preamble::decode(&arr).unwrap(), enc, "{}", path.display());
    assert_eq!(Dialect::sniff(arr[0]).unwrap(), Dialect::Native);
}

fn check_invalid<M: DeserializeOwned + std::fmt::Debug>(path: &Path, v: &Value) {
    let enc = encoding(path, v);
    let mut buf = BytesMut::from(bytes_field(path, v, "frame_hex").as_slice());
    let mut codec: NativeCodec<M, ()> = NativeCodec::new(enc);
    let res = codec.decode_eof(&mut buf);
    let want = text(path, v, "error");
    let ok = matches!(
        (&res, want),
        (Err(CodecError::TooLarge { .. }), "too_large")
            | (Err(CodecError::Empty), "empty")
            | (Err(CodecError::UnknownKind(_)), "unknown_kind")
            | (Err(CodecError::Message { .. }), "message")
            | (Err(CodecError::Truncated(_)), "truncated")
    );
    assert!(ok, "{}: expected {want}, got {res:?}", path.display());
}

// ---------------------------------------------------------------------------------------
// Original-dialect vectors

fn check_seed(path: &Path, v: &Value, seen: &mut Seen) {
    let kind = text(path, v, "kind");
    seen.kinds.insert(kind.to_owned());
    let json = text(path, v, "json");
    let channel = text(path, v, "channel");
    let direction = text(path, v, "direction");
    if kind == "reject" {
        assert_eq!(text(path, v, "expect"), "error");
        let failed = match (channel, direction) {
            ("udp", _) => serde_json::from_str::<seed::Datagram>(json).is_err(),
            ("tcp", "server") => serde_json::from_str::<seed::ServerMsg>(json).is_err(),
            ("tcp", "client") => serde_json::from_str::<seed::ClientMsg>(json).is_err(),
            other => panic!("{}: unknown channel/direction {other:?}", path.display()),
        };
        assert!(failed, "{}: decoded but must be refused", path.display());
        return;
    }
    assert_eq!(kind, "message", "{}: unknown kind", path.display());
    let canonical = v
        .get("canonical")
        .map(|c| c.as_str().expect("canonical is a string"))
        .unwrap_or(json);
    let newline = field(path, v, "newline")
        .as_bool()
        .expect("newline is a bool");
    match (channel, direction) {
        ("udp", _) => {
            let m: seed::Datagram = check_seed_text(path, v, json, canonical);
            assert!(!newline, "{}: datagrams have no newline", path.display());
            seen.datagram.insert(m.kind());
        }
        ("tcp", "server") => {
            let m: seed::ServerMsg = check_seed_text(path, v, json, canonical);
            let want_newline = match &m {
                seed::ServerMsg::Tasks(_) => true,
                seed::ServerMsg::NextSync(_) => false,
                // A filesync server ends its greeting with `\n`; the original does not.
                seed::ServerMsg::Status(s) => s.filesync.is_some(),
            };
            assert_eq!(newline, want_newline, "{}: newline", path.display());
            check_seed_stream(path, json, canonical, newline, &m);
            seen.seed_server.insert(m.kind());
        }
        ("tcp", "client") => {
            let m: seed::ClientMsg = check_seed_text(path, v, json, canonical);
            let want_newline = matches!(m, seed::ClientMsg::FileHeader(_));
            assert_eq!(newline, want_newline, "{}: newline", path.display());
            let body = v.get("body_hex").map(|b| unhex(path, b.as_str().unwrap()));
            check_seed_client_stream(path, json, newline, body.as_deref(), &m);
            let mut out = BytesMut::new();
            encode_seed(&m, newline, &mut out);
            let mut want = canonical.as_bytes().to_vec();
            if newline {
                want.push(b'\n');
            }
            assert_eq!(
                out.as_ref(),
                want.as_slice(),
                "{}: encode_seed",
                path.display()
            );
            // The server tells an original client by its first byte.
            assert_eq!(Dialect::sniff(json.as_bytes()[0]).unwrap(), Dialect::Seed);
            seen.seed_client.insert(m.kind());
        }
        other => panic!("{}: unknown channel/direction {other:?}", path.display()),
    }
}

/// `json` and `canonical` decode to the same value, which prints as `canonical` and as
/// the vector's `message`.
fn check_seed_text<M>(path: &Path, v: &Value, json: &str, canonical: &str) -> M
where
    M: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let m: M = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("{}: does not decode: {e}", path.display()));
    let c: M = serde_json::from_str(canonical)
        .unwrap_or_else(|e| panic!("{}: canonical does not decode: {e}", path.display()));
    assert_eq!(m, c, "{}: json and canonical disagree", path.display());
    assert_eq!(
        serde_json::to_string(&m).unwrap(),
        canonical,
        "{}: re-encoding differs",
        path.display()
    );
    assert_eq!(
        &serde_json::to_value(&m).unwrap(),
        field(path, v, "message"),
        "{}: `message` disagrees",
        path.display()
    );
    if v.get("canonical").is_some() {
        assert_ne!(json, canonical, "{}: canonical equals json", path.display());
    }
    m
}

/// A server message read off a stream by [`JsonCodec`], whole and one byte at a time,
/// with its newline if it has one.
fn check_seed_stream(path: &Path, json: &str, canonical: &str, newline: bool, m: &seed::ServerMsg) {
    let mut wire = json.as_bytes().to_vec();
    if newline {
        wire.push(b'\n');
    }
    let mut codec = JsonCodec::<seed::ServerMsg>::default();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for &b in &wire {
        buf.extend_from_slice(&[b]);
        while let Some(x) = codec.decode(&mut buf).unwrap() {
            got.push(x);
        }
    }
    assert_eq!(
        codec.decode_eof(&mut buf).unwrap(),
        None,
        "{}",
        path.display()
    );
    assert_eq!(got, vec![m.clone()], "{}: stream decoding", path.display());

    let mut out = BytesMut::new();
    encode_seed(m, newline, &mut out);
    assert_eq!(
        &out[..canonical.len()],
        canonical.as_bytes(),
        "{}: encode_seed",
        path.display()
    );
}

/// A client message as our server reads it: JSON, optional newline, then `body`, as
/// frames, whether the bytes come whole or one at a time.
fn check_seed_client_stream(
    path: &Path,
    json: &str,
    newline: bool,
    body: Option<&[u8]>,
    m: &seed::ClientMsg,
) {
    let mut wire = json.as_bytes().to_vec();
    if newline {
        wire.push(b'\n');
    }
    wire.extend_from_slice(body.unwrap_or_default());
    let collect = |split: bool| {
        let mut codec = SeedServerCodec::default();
        let mut buf = BytesMut::new();
        let mut msgs = Vec::new();
        let mut data = Vec::new();
        let step = if split { 1 } else { wire.len() };
        for chunk in wire.chunks(step) {
            buf.extend_from_slice(chunk);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                match f {
                    Frame::Msg(x) => msgs.push(x),
                    Frame::Data(d) => data.extend_from_slice(&d),
                }
            }
        }
        assert_eq!(
            codec.decode_eof(&mut buf).unwrap(),
            None,
            "{}",
            path.display()
        );
        (msgs, data)
    };
    for split in [false, true] {
        let (msgs, data) = collect(split);
        assert_eq!(msgs, vec![m.clone()], "{}: messages", path.display());
        assert_eq!(data, body.unwrap_or_default(), "{}: body", path.display());
    }
}

// ---------------------------------------------------------------------------------------
// The session transcript, replayed through both state machines

struct StepBytes {
    from: String,
    what: String,
    bytes: Vec<u8>,
}

fn check_session(path: &Path, v: &Value) {
    let enc = encoding(path, v);
    let steps: Vec<StepBytes> = field(path, v, "steps")
        .as_array()
        .expect("steps is an array")
        .iter()
        .map(|s| StepBytes {
            from: text(path, s, "from").to_owned(),
            what: text(path, s, "what").to_owned(),
            bytes: bytes_field(path, s, "hex"),
        })
        .collect();
    let index: Vec<Entry> =
        serde_json::from_value(field(path, v, "server_index").clone()).expect("server_index");
    let peer: IpAddr = text(path, v, "peer").parse().expect("peer address");
    let queue_position = field(path, v, "queue_position").as_u64().map(|p| p as u32);
    let params = ClientParams {
        client_id: Some(ClientId::parse(text(path, v, "client_id")).unwrap()),
        encoding: enc,
        agent: text(path, v, "agent").to_owned(),
        allow_empty: field(path, v, "allow_empty").as_bool().unwrap(),
        max_delete: v.get("max_delete").and_then(Value::as_u64),
        whole_file: false,
    };
    replay_server(path, enc, &steps, &index, peer, queue_position);
    replay_client(path, enc, &steps, params);
}

fn msg_frame<M: DeserializeOwned + PartialEq + std::fmt::Debug>(
    enc: Encoding,
    bytes: &[u8],
) -> Frame<M> {
    let mut frames = decode_split::<M>(enc, bytes);
    assert_eq!(frames.len(), 1, "one frame per step");
    frames.remove(0)
}

fn server_frame(enc: Encoding, m: &ServerMsg) -> Vec<u8> {
    native::frame_bytes(enc, m).unwrap().to_vec()
}

fn client_frame(enc: Encoding, m: &ClientMsg) -> Vec<u8> {
    native::frame_bytes(enc, m).unwrap().to_vec()
}

// The states differ in size (the planner is large); a test replays a handful of steps.
#[allow(clippy::large_enum_variant)]
enum Srv {
    Greeted(Server<server::Greeted>),
    Welcomed(Server<server::Welcomed>),
    Listing(Server<server::Listing>),
    Receiving(Server<server::Receiving>),
    Received(Server<server::Received>),
    Done,
}

/// The server machine reads the client's steps and must write the server's steps.
fn replay_server(
    path: &Path,
    enc: Encoding,
    steps: &[StepBytes],
    index: &[Entry],
    peer: IpAddr,
    queue_position: Option<u32>,
) {
    let ctx =
        |i: usize, s: &StepBytes| format!("{} step {i} ({} {})", path.display(), s.from, s.what);
    let (srv, status) = Server::new(ServerParams::default(), peer).greet(queue_position);
    let mut greeting = serde_json::to_vec(&seed::ServerMsg::Status(status)).unwrap();
    greeting.push(b'\n');
    let mut pending: VecDeque<Vec<u8>> = VecDeque::from([greeting]);
    let mut state = Srv::Greeted(srv);
    let mut chosen = None;
    // The store's index is in tree order.
    let mut held: Vec<(filesync_core::paths::RelPath, Held)> = index
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
        .collect();
    held.sort_by(|a, b| a.0.tree_cmp(&b.0));
    let mut held = held.into_iter();
    let mut deletions = 0;
    for (i, s) in steps.iter().enumerate() {
        let at = ctx(i, s);
        if s.from == "server" {
            let produced = match pending.pop_front() {
                Some(p) => p,
                None => {
                    // Messages the server sends on its own initiative: the driver's
                    // decisions (queue position, turn, time of the next sync).
                    let Frame::Msg(m) = msg_frame::<ServerMsg>(enc, &s.bytes) else {
                        panic!("{at}: DATA from the server");
                    };
                    let (next, out) = match (state, m) {
                        (Srv::Welcomed(w), ServerMsg::Queued(q)) => {
                            let out = w.queued(q.position);
                            (Srv::Welcomed(w), out)
                        }
                        (Srv::Welcomed(w), ServerMsg::Ready(_)) => {
                            let (l, out) = w.ready();
                            (Srv::Listing(l), out)
                        }
                        (Srv::Received(mut r), ServerMsg::NextSync(n)) => {
                            r.deleted(deletions, 0);
                            let (_done, out) = r.next_sync(n.at, n.delay_ms);
                            (Srv::Done, out)
                        }
                        (_, m) => panic!("{at}: the server would not send {} here", m.kind()),
                    };
                    state = next;
                    server_frame(enc, &out)
                }
            };
            assert_eq!(produced, s.bytes, "{at}: the server writes other bytes");
            continue;
        }
        // The server may still owe messages here: both sides write without waiting for
        // the other (pipelining), so its answers can cross the client's next frames.
        if s.what == "PREAMBLE" {
            assert_eq!(Dialect::sniff(s.bytes[0]).unwrap(), Dialect::Native);
            let arr: [u8; preamble::LEN] = s.bytes.as_slice().try_into().expect("6 bytes");
            chosen = Some(preamble::decode(&arr).expect("valid preamble"));
            continue;
        }
        let enc_in = chosen.expect("preamble before frames");
        assert_eq!(enc_in, enc);
        state = match (state, msg_frame::<ClientMsg>(enc, &s.bytes)) {
            (Srv::Greeted(g), Frame::Msg(m)) => {
                let (w, out) = g
                    .on_hello(enc_in, m)
                    .unwrap_or_else(|r| panic!("{at}: refused: {}", r.error));
                pending.push_back(server_frame(enc, &out));
                Srv::Welcomed(w)
            }
            (Srv::Listing(l), Frame::Msg(m)) => {
                match l.on_message(m, &mut held, &mut |_| {}).unwrap() {
                    Listed::Listing(l, out) => {
                        pending.push_back(server_frame(enc, &out));
                        Srv::Listing(l)
                    }
                    Listed::File(mut l, Receive::Commit(p, _)) => {
                        let out = l.file_result(p, Outcome::Stored);
                        pending.push_back(server_frame(enc, &out));
                        Srv::Listing(l)
                    }
                    Listed::File(
                        l,
                        Receive::Open(_)
                        | Receive::Hole(_)
                        | Receive::Copy { .. }
                        | Receive::Discard(..),
                    ) => Srv::Listing(l),
                    Listed::Receiving(r, out) => {
                        if let ServerMsg::PlanEnd(e) = &out {
                            deletions = e.deletions;
                        }
                        pending.push_back(server_frame(enc, &out));
                        Srv::Receiving(r)
                    }
                }
            }
            (Srv::Listing(mut l), Frame::Data(d)) => {
                l.on_data(d.len()).unwrap();
                Srv::Listing(l)
            }
            (Srv::Receiving(r), Frame::Msg(m)) => match r.on_message(m).unwrap() {
                Receipt::Receiving(mut r, Receive::Commit(p, _)) => {
                    // The store succeeded.
                    let out = r.file_result(p, Outcome::Stored);
                    pending.push_back(server_frame(enc, &out));
                    Srv::Receiving(r)
                }
                Receipt::Receiving(
                    r,
                    Receive::Open(_)
                    | Receive::Hole(_)
                    | Receive::Copy { .. }
                    | Receive::Discard(..),
                ) => Srv::Receiving(r),
                Receipt::Received(r) => Srv::Received(r),
            },
            (Srv::Receiving(mut r), Frame::Data(d)) => {
                r.on_data(d.len()).unwrap();
                Srv::Receiving(r)
            }
            (_, f) => panic!("{at}: the server cannot take {f:?} here"),
        };
    }
    assert!(
        pending.is_empty(),
        "{}: unsent server messages",
        path.display()
    );
    assert!(
        matches!(state, Srv::Done),
        "{}: server not done",
        path.display()
    );
}

enum Cli {
    Start(Client<client::Discovered>),
    Connected(Client<client::Connected>),
    Ready(Client<client::Ready>),
    Syncing(Client<client::Syncing>),
    Finishing(Client<client::Finishing>),
    Done(Client<client::Done>),
}

/// The client machine reads the server's steps and must write the client's steps.
fn replay_client(path: &Path, enc: Encoding, steps: &[StepBytes], params: ClientParams) {
    let ctx =
        |i: usize, s: &StepBytes| format!("{} step {i} ({} {})", path.display(), s.from, s.what);
    let mut tasks: VecDeque<filesync_core::session::client::Task> = VecDeque::new();
    let mut pending: VecDeque<Vec<u8>> = VecDeque::new();
    let mut state = Cli::Start(Client::new(params));
    let mut open: Option<(filesync_core::session::client::Task, u64)> = None;
    let mut next_sync = None;
    for (i, s) in steps.iter().enumerate() {
        let at = ctx(i, s);
        if s.from == "server" {
            if s.what == "GREETING" {
                let mut codec = JsonCodec::<seed::ServerMsg>::default();
                let mut buf = BytesMut::from(s.bytes.as_slice());
                let Some(seed::ServerMsg::Status(status)) = codec.decode(&mut buf).unwrap() else {
                    panic!("{at}: not a greeting");
                };
                // What follows the greeting object before the first frame: its newline.
                assert!(
                    buf.iter().all(u8::is_ascii_whitespace),
                    "{at}: greeting tail"
                );
                let Cli::Start(c) = state else {
                    panic!("{at}: second greeting")
                };
                let (c, g) = c.on_greeting(&status).unwrap();
                assert_eq!(g.queue_position, status.queue_position);
                pending.push_back(g.preamble.to_vec());
                pending.push_back(client_frame(enc, &g.hello));
                state = Cli::Connected(c);
                continue;
            }
            let Frame::Msg(m) = msg_frame::<ServerMsg>(enc, &s.bytes) else {
                panic!("{at}: DATA from the server");
            };
            if let ServerMsg::NextSync(n) = &m {
                next_sync = Some(n.clone());
            }
            state = match state {
                Cli::Connected(c) => match c.on_message(m).unwrap() {
                    Waiting::Waiting(c, _) => Cli::Connected(c),
                    Waiting::Ready(c) => Cli::Ready(c),
                },
                Cli::Syncing(mut c) => {
                    tasks.extend(c.on_message(m).unwrap().into_iter().map(|(t, _)| t));
                    Cli::Syncing(c)
                }
                Cli::Finishing(c) => match c.on_message(m).unwrap() {
                    Finish::Finishing(c) => Cli::Finishing(c),
                    Finish::Done(c) => Cli::Done(c),
                },
                _ => panic!("{at}: the client cannot take {} here", m.kind()),
            };
            continue;
        }
        if let Some(p) = pending.pop_front() {
            assert_eq!(p, s.bytes, "{at}: the client writes other bytes");
            continue;
        }
        let frame = msg_frame::<ClientMsg>(enc, &s.bytes);
        let produced = match (state, frame) {
            (Cli::Ready(c), Frame::Msg(ClientMsg::Manifest(m))) => {
                let mut c = c.start();
                let out = c.list(m.entries);
                state = Cli::Syncing(c);
                client_frame(enc, &out)
            }
            (Cli::Syncing(mut c), Frame::Msg(ClientMsg::Manifest(m))) => {
                assert!(c.can_list(), "{at}: past the window");
                let out = c.list(m.entries);
                state = Cli::Syncing(c);
                client_frame(enc, &out)
            }
            (Cli::Syncing(mut c), Frame::Msg(ClientMsg::ManifestEnd(_))) => {
                let out = c.end_manifest();
                state = Cli::Syncing(c);
                client_frame(enc, &out)
            }
            (Cli::Syncing(mut c), Frame::Msg(ClientMsg::FileHeader(h))) => {
                let FileHeader {
                    size, mtime, mode, ..
                } = h;
                let task = tasks.pop_front().expect("a task left");
                assert_eq!(task.path(), &h.path, "{at}: files go in the server's order");
                let e = Entry {
                    path: h.path.clone(),
                    kind: EntryKind::File,
                    size,
                    mtime,
                    mode,
                    target: None,
                };
                let out = c.header(&task, &e);
                open = Some((task, 0));
                state = Cli::Syncing(c);
                client_frame(enc, &out)
            }
            (Cli::Syncing(c), Frame::Data(d)) => {
                let (_, n) = open.as_mut().expect("DATA inside a file");
                *n += d.len() as u64;
                state = Cli::Syncing(c);
                s.bytes.clone()
            }
            (Cli::Syncing(c), Frame::Msg(ClientMsg::Hole(h))) => {
                // A hole is skipped, not sent: it adds nothing to the bytes sent.
                assert!(open.is_some(), "{at}: HOLE inside a file");
                let out = c.hole(h.len);
                state = Cli::Syncing(c);
                client_frame(enc, &out)
            }
            (Cli::Syncing(mut c), Frame::Msg(ClientMsg::FileEnd(_))) => {
                let (task, n) = open.take().expect("FILE_END closes an open file");
                let out = c.file_end(task, n);
                state = Cli::Syncing(c);
                client_frame(enc, &out)
            }
            (Cli::Syncing(mut c), Frame::Msg(ClientMsg::FileAbort(a))) => {
                let task = match open.take() {
                    Some((task, _)) => task,
                    None => tasks.pop_front().expect("a task left"),
                };
                assert_eq!(task.path(), &a.path);
                let out = c.abort(task, a.reason);
                state = Cli::Syncing(c);
                client_frame(enc, &out)
            }
            (Cli::Syncing(c), Frame::Msg(ClientMsg::TransferEnd(_))) => {
                assert!(c.all_sent(), "{at}: files left unsent");
                let (f, out) = c.finish().unwrap();
                state = Cli::Finishing(f);
                client_frame(enc, &out)
            }
            (_, f) => panic!("{at}: the client would not send {f:?} here"),
        };
        assert_eq!(produced, s.bytes, "{at}: the client writes other bytes");
    }
    let Cli::Done(done) = state else {
        panic!("{}: client not done", path.display());
    };
    let n = next_sync.expect("NEXT_SYNC");
    let report = done.report();
    assert_eq!(report.stored, n.stored, "{}: stored", path.display());
    assert_eq!(
        report.failed.len() as u64,
        n.rejected,
        "{}: rejected",
        path.display()
    );
    assert_eq!(report.deleted, n.deleted, "{}: deleted", path.display());
    assert_eq!(done.next_sync(), n);
    assert!(pending.is_empty());
}

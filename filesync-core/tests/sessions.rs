//! The two typestate sessions driven against each other in memory, with no sockets: every
//! message is encoded by one side's codec and decoded by the other's (fed in small
//! pieces), so the sessions and the codecs are exercised together.
//!
//! The happy path runs a whole session; the rest are peers misbehaving on purpose, each of
//! which must end in an `Err` (never a panic) that says what went wrong.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Debug;
use std::net::{IpAddr, Ipv4Addr};

use bytes::{Bytes, BytesMut};
use filesync_core::codec::json_stream::{encode_seed, JsonCodec};
use filesync_core::codec::native::{ClientCodec, ServerCodec};
use filesync_core::codec::{preamble, CodecError, Frame, DATA_CHUNK};
use filesync_core::error::ProtocolError;
use filesync_core::messages::seed::{self, ServerStatus, Status};
use filesync_core::messages::{
    ClientMsg, Deletions, Encoding, Entry, EntryKind, ErrorCode, ErrorMsg, FileAbort, FileEnd,
    FileHeader, FileResult, Hello, Manifest, ManifestEnd, NextSync, Outcome, PlanEnd, Queued,
    Ready, ServerMsg, Tasks, TransferEnd, Welcome, MANIFEST_BATCH_MAX, MANIFEST_WINDOW,
    MAX_OUTSTANDING, PROTOCOL_VERSION,
};
use filesync_core::paths::{ClientId, RelPath};
use filesync_core::planner::{Held, TailOp};
use filesync_core::session::client::{
    self, ClientParams, Connected, Finish, Finishing, Greeting, Syncing, Task, Waiting,
};
use filesync_core::session::server::{
    self, Receipt, Receive, Received, Receiving, ServerParams, Welcomed,
};
use filesync_core::session::{Client, Server};
use filesync_core::time::MTime;
use filesync_core::Error;
use tokio_util::codec::{Decoder, Encoder};

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));
const ENCODINGS: [Encoding; 2] = [Encoding::Postcard, Encoding::Json];

// ---------------------------------------------------------------------------------------
// The in-memory wire
// ---------------------------------------------------------------------------------------

/// Encodes `frame` with `tx` and feeds the bytes to `rx` `piece` bytes at a time, as a
/// slow TCP connection would: the frame must decode exactly when its last byte arrives.
fn carry<T, E, D>(tx: &mut E, rx: &mut D, frame: Frame<T>, piece: usize) -> D::Item
where
    E: Encoder<Frame<T>, Error = CodecError>,
    D: Decoder<Error = CodecError>,
    D::Item: Debug,
{
    let mut wire = BytesMut::new();
    tx.encode(frame, &mut wire).expect("encodes");
    let mut buf = BytesMut::new();
    let mut out = None;
    for bytes in wire.chunks(piece) {
        assert!(
            out.is_none(),
            "a frame decoded before its last byte: {out:?}"
        );
        buf.extend_from_slice(bytes);
        out = rx.decode(&mut buf).expect("decodes");
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    out.expect("the whole frame arrived")
}

/// Both ends of one native connection.
struct Wire {
    client: ClientCodec,
    server: ServerCodec,
    piece: usize,
    /// Frames sent each way, by kind, for assertions on batching.
    up_kinds: BTreeMap<&'static str, usize>,
    down_kinds: BTreeMap<&'static str, usize>,
}

impl Wire {
    fn new(enc: Encoding) -> Self {
        Wire {
            client: ClientCodec::new(enc),
            server: ServerCodec::new(enc),
            piece: 13,
            up_kinds: BTreeMap::new(),
            down_kinds: BTreeMap::new(),
        }
    }

    /// Client to server.
    fn up(&mut self, m: ClientMsg) -> ClientMsg {
        *self.up_kinds.entry(m.kind()).or_default() += 1;
        match carry(
            &mut self.client,
            &mut self.server,
            Frame::Msg(m),
            self.piece,
        ) {
            Frame::Msg(m) => m,
            Frame::Data(d) => panic!("message arrived as DATA {d:?}"),
        }
    }

    /// File content, client to server.
    fn up_data(&mut self, chunk: &[u8]) -> Bytes {
        let piece = self.piece.max(chunk.len() / 64);
        let frame = Frame::Data(Bytes::copy_from_slice(chunk));
        match carry(&mut self.client, &mut self.server, frame, piece) {
            Frame::Data(d) => d,
            Frame::Msg(m) => panic!("DATA arrived as {m:?}"),
        }
    }

    /// Server to client.
    fn down(&mut self, m: ServerMsg) -> ServerMsg {
        *self.down_kinds.entry(m.kind()).or_default() += 1;
        match carry(
            &mut self.server,
            &mut self.client,
            Frame::Msg(m),
            self.piece,
        ) {
            Frame::Msg(m) => m,
            Frame::Data(d) => panic!("message arrived as DATA {d:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Trees and session set-up
// ---------------------------------------------------------------------------------------

fn p(s: &str) -> RelPath {
    RelPath::parse(s).unwrap()
}

fn t0() -> MTime {
    MTime::new(1_700_000_000, 123_456_789).unwrap()
}

fn file(path: &str, size: u64, mtime: MTime) -> Entry {
    Entry {
        path: p(path),
        kind: EntryKind::File,
        size,
        mtime,
        mode: 0o644,
        target: None,
    }
}

fn dir(path: &str) -> Entry {
    Entry {
        path: p(path),
        kind: EntryKind::Dir,
        size: 0,
        mtime: t0(),
        mode: 0o755,
        target: None,
    }
}

fn held(e: &Entry) -> (RelPath, Held) {
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
}

/// The content the client holds for a file: `size` bytes derived from the path.
fn content(path: &RelPath, size: u64) -> Vec<u8> {
    let seed = path
        .as_bytes()
        .iter()
        .fold(7u8, |a, &b| a.wrapping_mul(31) ^ b);
    (0..size)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect()
}

fn params(enc: Encoding, id: Option<&str>, allow_empty: bool) -> ClientParams {
    ClientParams {
        client_id: id.map(|s| ClientId::parse(s).unwrap()),
        encoding: enc,
        agent: "sessions-test".into(),
        allow_empty,
        max_delete: None,
        whole_file: false,
    }
}

/// The greeting as the bytes of the original dialect's `SERVER_STATUS_MESSAGE`, read back
/// with the JSON stream codec, as a client reads it.
fn carry_greeting(status: ServerStatus) -> ServerStatus {
    let mut buf = BytesMut::new();
    encode_seed(&seed::ServerMsg::Status(status), false, &mut buf);
    let mut rx = JsonCodec::<seed::ServerMsg>::default();
    let mut got = BytesMut::new();
    let mut out = None;
    for b in buf.chunks(5) {
        got.extend_from_slice(b);
        if let Some(m) = rx.decode(&mut got).unwrap() {
            out = Some(m);
        }
    }
    match out {
        Some(seed::ServerMsg::Status(s)) => s,
        other => panic!("{other:?}"),
    }
}

/// Greeting and preamble: the client has sent `HELLO`, which the server holds (decoded).
struct Opened {
    client: Client<Connected>,
    server: Server<server::Greeted>,
    wire: Wire,
    enc: Encoding,
    hello: ClientMsg,
    greeting_position: Option<u32>,
}

fn open(params: ClientParams, server_params: ServerParams, position: Option<u32>) -> Opened {
    let (server, status) = Server::new(server_params, PEER).greet(position);
    let status = carry_greeting(status);
    let (
        client,
        Greeting {
            preamble: pre,
            hello,
            queue_position,
        },
    ) = Client::new(params)
        .on_greeting(&status)
        .expect("greeting accepted");
    let enc = preamble::decode(&pre).expect("valid preamble");
    let mut wire = Wire::new(enc);
    let hello = wire.up(hello);
    Opened {
        client,
        server,
        wire,
        enc,
        hello,
        greeting_position: queue_position,
    }
}

/// Up to `WELCOME` received by the client.
fn welcomed(params: ClientParams) -> (Client<Connected>, Server<Welcomed>, Wire) {
    let o = open(params, ServerParams::default(), None);
    let (server, welcome) = o.server.on_hello(o.enc, o.hello).expect("hello accepted");
    let mut wire = o.wire;
    let client = match o.client.on_message(wire.down(welcome)).unwrap() {
        Waiting::Waiting(c, None) => c,
        other => panic!("{other:?}"),
    };
    (client, server, wire)
}

/// Up to `READY` received by the client; the server's index of the client folder is
/// `index`.
fn ready(
    params: ClientParams,
    index: &[Entry],
) -> (Client<client::Ready>, Server<server::Listing>, Plan, Wire) {
    let (client, server, mut wire) = welcomed(params);
    let (server, msg) = server.ready();
    let client = match client.on_message(wire.down(msg)).unwrap() {
        Waiting::Ready(c) => c,
        other => panic!("{other:?}"),
    };
    (client, server, Plan::new(index), wire)
}

/// What the server's planning reads and writes: its index (in tree order, as the store
/// gives it) and the tail ops emitted so far.
struct Plan {
    index: std::vec::IntoIter<(RelPath, Held)>,
    ops: Vec<TailOp>,
}

impl Plan {
    fn new(index: &[Entry]) -> Self {
        let mut held: Vec<_> = index.iter().map(held).collect();
        held.sort_by(|a, b| a.0.tree_cmp(&b.0));
        Plan {
            index: held.into_iter(),
            ops: Vec::new(),
        }
    }

    /// Hands a message to a listing server.
    fn feed(
        &mut self,
        server: Server<server::Listing>,
        msg: ClientMsg,
    ) -> Result<server::Listed, Error> {
        let ops = &mut self.ops;
        server.on_message(msg, &mut self.index, &mut |op| ops.push(op))
    }
}

/// A session past `PLAN_END`: the client with the tasks it was handed, the server
/// receiving, and the tail the plan emitted.
struct Planned {
    client: Client<Syncing>,
    tasks: VecDeque<(Task, Entry)>,
    server: Server<server::Receiving>,
    ops: Vec<TailOp>,
    wire: Wire,
}

/// Lists `entries` (sorted into tree order) in batches of at most `MANIFEST_BATCH_MAX`,
/// no more batches than the window holds, and runs the plan to `PLAN_END`; no file is
/// sent yet.
fn planned(params: ClientParams, entries: &[Entry], index: &[Entry]) -> Planned {
    let mut entries = entries.to_vec();
    entries.sort_by(|a, b| a.path.tree_cmp(&b.path));
    assert!(entries.len() <= MANIFEST_WINDOW * MANIFEST_BATCH_MAX);
    let (client, mut server, mut plan, mut wire) = ready(params, index);
    let mut client = client.start();
    let mut tasks = VecDeque::new();
    for chunk in entries.chunks(MANIFEST_BATCH_MAX) {
        assert!(client.can_list());
        let m = wire.up(client.list(chunk.to_vec()));
        let server::Listed::Listing(s, t) = plan.feed(server, m).unwrap() else {
            panic!("not listing");
        };
        server = s;
        tasks.extend(client.on_message(wire.down(t)).unwrap());
    }
    let end = wire.up(client.end_manifest());
    let server::Listed::Receiving(server, plan_end) = plan.feed(server, end).unwrap() else {
        panic!("not receiving");
    };
    assert!(client.on_message(wire.down(plan_end)).unwrap().is_empty());
    Planned {
        client,
        tasks,
        server,
        ops: plan.ops,
        wire,
    }
}

/// A small tree: `d/a` (new), `d/b` (unchanged), `d/c` (new, empty); the server also
/// holds `old`, to delete.
fn small() -> (Vec<Entry>, Vec<Entry>) {
    let entries = vec![
        dir("d"),
        file("d/a", 5, t0()),
        file("d/b", 3, t0()),
        file("d/c", 0, t0()),
    ];
    let index = vec![dir("d"), file("d/b", 3, t0()), file("old", 1, t0())];
    (entries, index)
}

fn small_planned(enc: Encoding) -> Planned {
    let (entries, index) = small();
    planned(params(enc, Some("lab-7"), false), &entries, &index)
}

fn recv(server: Server<Receiving>, msg: ClientMsg) -> (Server<Receiving>, Receive) {
    match server.on_message(msg).unwrap() {
        Receipt::Receiving(s, r) => (s, r),
        Receipt::Received(_) => panic!("transfer ended early"),
    }
}

fn received(server: Server<Receiving>, msg: ClientMsg) -> Server<Received> {
    match server.on_message(msg).unwrap() {
        Receipt::Received(s) => s,
        Receipt::Receiving(_, r) => panic!("still receiving after {r:?}"),
    }
}

fn finish_step(client: Client<Finishing>, msg: ServerMsg) -> Finish {
    client.on_message(msg).unwrap()
}

// ---------------------------------------------------------------------------------------
// Error helpers
// ---------------------------------------------------------------------------------------

/// The `(expected, got)` of an unexpected-message error.
fn unexpected<T: Debug>(r: Result<T, Error>) -> (&'static str, &'static str) {
    match r {
        Err(Error::Protocol(ProtocolError::Unexpected { expected, got })) => (expected, got),
        other => panic!("wanted ProtocolError::Unexpected, got {other:?}"),
    }
}

fn protocol<T: Debug>(r: Result<T, Error>) -> ProtocolError {
    match r {
        Err(Error::Protocol(e)) => e,
        other => panic!("wanted a protocol error, got {other:?}"),
    }
}

fn data_error<T: Debug>(r: Result<T, Error>) -> String {
    match protocol(r) {
        ProtocolError::Data(s) => s,
        other => panic!("wanted ProtocolError::Data, got {other:?}"),
    }
}

fn inconsistent<T: Debug>(r: Result<T, Error>) -> String {
    match protocol(r) {
        ProtocolError::Inconsistent(s) => s,
        other => panic!("wanted ProtocolError::Inconsistent, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// The happy path
// ---------------------------------------------------------------------------------------

/// A fake store on the server side: what the driver would write.
#[derive(Default)]
struct Store {
    open: Option<(RelPath, Vec<u8>)>,
    files: HashMap<RelPath, Vec<u8>>,
}

#[test]
fn full_session_with_batches_equal_changed_and_deleted_files() {
    for (enc, id) in [(Encoding::Postcard, Some("lab-7")), (Encoding::Json, None)] {
        full_session(enc, id);
    }
}

fn full_session(enc: Encoding, id: Option<&str>) {
    let t = t0();
    let later = MTime::new(t.secs, t.nanos + 1).unwrap();
    // The client's tree: 9,007 entries, more than one batch can hold.
    let mut entries = vec![
        dir("docs"),
        file("docs/same.txt", 3, t),
        file("docs/size.txt", (DATA_CHUNK + 1000) as u64, t),
        file("docs/mtime.txt", 4, t),
        file("docs/new.txt", 7, t),
        file("empty.bin", 0, t),
        dir("bulk"),
    ];
    let mut index = vec![
        file("docs/same.txt", 3, t),
        file("docs/size.txt", (DATA_CHUNK + 999) as u64, t),
        file("docs/mtime.txt", 4, later),
        dir("bulk"),
        file("gone.txt", 1, t),
        dir("old"),
        file("old/x", 1, t),
        dir("trash"),
    ];
    for i in 0..9000u64 {
        let e = file(&format!("bulk/f{i:05}"), i % 5, t);
        match i % 9 {
            0 => index.push(file(e.path.to_str().unwrap(), e.size, later)), // changed
            3 | 6 => {}                                                     // new
            _ => index.push(e.clone()),                                     // equal
        }
        entries.push(e);
    }
    // 3,000 stale entries: more deletions than one batch holds.
    for i in 0..3000 {
        index.push(file(&format!("trash/t{i:04}"), 1, t));
    }
    assert!(entries.len() > MANIFEST_BATCH_MAX);
    // Manifests and tasks come in tree order.
    entries.sort_by(|a, b| a.path.tree_cmp(&b.path));

    let index_map: HashMap<RelPath, Entry> =
        index.iter().map(|e| (e.path.clone(), e.clone())).collect();
    let expected_tasks: Vec<RelPath> = entries
        .iter()
        .filter(|e| {
            e.kind == EntryKind::File
                && index_map
                    .get(&e.path)
                    .is_none_or(|h| h.size != e.size || h.mtime != e.mtime)
        })
        .map(|e| e.path.clone())
        .collect();
    assert_eq!(expected_tasks.len(), 4 + 3000);
    let task_set: std::collections::HashSet<&RelPath> = expected_tasks.iter().collect();
    let expected_bytes: u64 = entries
        .iter()
        .filter(|e| task_set.contains(&e.path))
        .map(|e| e.size)
        .sum();
    let local: HashMap<RelPath, Entry> = entries
        .iter()
        .map(|e| (e.path.clone(), e.clone()))
        .collect();

    // Greeting, HELLO, WELCOME, READY, manifest and plan.
    let Planned {
        client,
        tasks,
        server,
        ops,
        mut wire,
    } = planned(params(enc, id, false), &entries, &index);
    assert!(wire.up_kinds["MANIFEST"] > 1, "{:?}", wire.up_kinds);
    assert_eq!(wire.up_kinds["MANIFEST_END"], 1);
    assert_eq!(
        wire.down_kinds["TASKS"], wire.up_kinds["MANIFEST"],
        "one per batch"
    );
    assert!(
        !wire.down_kinds.contains_key("DELETIONS"),
        "not sent in version 2"
    );
    assert_eq!(wire.down_kinds["PLAN_END"], 1);

    let task_paths: Vec<RelPath> = tasks.iter().map(|(t, _)| t.path().clone()).collect();
    assert_eq!(task_paths, expected_tasks, "tasks in manifest order");
    // Only the top of a deleted subtree is in the tail; every entry in it counts.
    let tail = filesync_core::planner::Tail::from_ops(ops);
    assert_eq!(tail.delete, [p("gone.txt"), p("old"), p("trash")]);
    assert_eq!(tail.make_dirs, [p("docs")]);
    let deletions = 3000 + 4;
    assert_eq!(
        client.plan_end(),
        Some(PlanEnd {
            files: expected_tasks.len() as u64,
            bytes: expected_bytes,
            deletions,
        })
    );
    let expected_id = id.map_or("10_0_0_7", |s| s);
    assert_eq!(server.client_id().as_str(), expected_id);

    // Files: header, DATA, FILE_END, each answered by FILE_RESULT as soon as committed,
    // except the last one, whose result comes after TRANSFER_END.
    let mut client: Client<Syncing> = client;
    let mut tasks = tasks;
    let mut server = server;
    let mut store = Store::default();
    let rejected = p("docs/mtime.txt");
    let mut held_back = None;
    while let Some((task, _)) = tasks.pop_front() {
        assert!(!client.all_sent());
        let path = task.path().clone();
        let e = &local[&path];
        let body = content(&path, e.size);
        let h = wire.up(client.header(&task, e));
        let (s, r) = recv(server, h);
        server = s;
        match r {
            Receive::Open(h) => {
                assert_eq!((&h.path, h.size, h.mtime), (&path, e.size, e.mtime));
                store.open = Some((h.path, Vec::new()));
            }
            other => panic!("{other:?}"),
        }
        for chunk in body.chunks(DATA_CHUNK) {
            let d = wire.up_data(chunk);
            server.on_data(d.len()).unwrap();
            store.open.as_mut().unwrap().1.extend_from_slice(&d);
        }
        let end = wire.up(client.file_end(task, e.size));
        let (s, r) = recv(server, end);
        server = s;
        assert_eq!(r, Receive::Commit(path.clone(), None));
        let (name, bytes) = store.open.take().unwrap();
        let outcome = if path == rejected {
            Outcome::Rejected {
                code: ErrorCode::STORAGE,
                reason: "disk full".into(),
            }
        } else {
            store.files.insert(name, bytes);
            Outcome::Stored
        };
        if tasks.is_empty() {
            held_back = Some((path, outcome));
        } else {
            let result = wire.down(server.file_result(path, outcome));
            client.on_message(result).unwrap();
        }
    }
    assert_eq!(client.report().sent, expected_tasks.len() as u64);
    assert_eq!(client.report().bytes_sent, expected_bytes);

    assert!(client.all_sent());
    let (client, end) = client.finish().unwrap();
    let mut server = received(server, wire.up(end));
    let (path, outcome) = held_back.expect("a last file");
    let client = match finish_step(client, wire.down(server.file_result(path, outcome))) {
        Finish::Finishing(c) => c,
        Finish::Done(_) => panic!("done before NEXT_SYNC"),
    };
    server.deleted(deletions, 0);
    let at = MTime::new(1_700_003_600, 0).unwrap();
    let (server, next) = server.next_sync(at, 3_600_000);
    let client = match finish_step(client, wire.down(next)) {
        Finish::Done(c) => c,
        Finish::Finishing(_) => panic!("NEXT_SYNC did not end the session"),
    };

    // Both sides agree on what happened.
    let files = expected_tasks.len() as u64;
    let report = client.report();
    assert_eq!(report.requested, files);
    assert_eq!(report.requested_bytes, expected_bytes);
    assert_eq!(report.sent, files);
    assert_eq!(report.stored, files - 1);
    assert_eq!(
        report.failed,
        vec![(rejected.clone(), ErrorCode::STORAGE, "disk full".to_owned())]
    );
    assert_eq!(report.deleted, deletions);
    assert_eq!(
        client.next_sync(),
        NextSync {
            at,
            delay_ms: 3_600_000,
            stored: files - 1,
            rejected: 1,
            deleted: deletions,
            held_back: 0,
            held_back_reason: String::new(),
        }
    );
    assert_eq!(client.client_id().as_str(), expected_id);
    let tally = server.tally();
    assert_eq!(tally.requested, files);
    assert_eq!(tally.requested_bytes, expected_bytes);
    assert_eq!(tally.bytes, expected_bytes);
    assert_eq!(tally.stored, files - 1);
    assert_eq!(tally.rejected, 1);
    assert_eq!(tally.deleted, deletions);
    assert_eq!(server.client_id().as_str(), expected_id);

    // The stored content is the client's, byte for byte.
    assert_eq!(store.files.len() as u64, files - 1);
    for (path, bytes) in &store.files {
        assert_eq!(bytes, &content(path, local[path].size), "{path}");
    }
}

#[test]
fn busy_greeting_then_queued_then_ready() {
    for enc in ENCODINGS {
        let o = open(params(enc, None, false), ServerParams::default(), Some(2));
        assert_eq!(o.greeting_position, Some(2));
        let (server, welcome) = o.server.on_hello(o.enc, o.hello).unwrap();
        let mut wire = o.wire;
        let client = match o.client.on_message(wire.down(welcome)).unwrap() {
            Waiting::Waiting(c, None) => c,
            other => panic!("{other:?}"),
        };
        assert_eq!(client.welcome().unwrap().client_id.as_str(), "10_0_0_7");
        let mut client = client;
        for position in [2, 1] {
            client = match client
                .on_message(wire.down(server.queued(position)))
                .unwrap()
            {
                Waiting::Waiting(c, Some(n)) => {
                    assert_eq!(n, position);
                    c
                }
                other => panic!("{other:?}"),
            };
        }
        let (server, ready) = server.ready();
        let client = match client.on_message(wire.down(ready)).unwrap() {
            Waiting::Ready(c) => c,
            other => panic!("{other:?}"),
        };
        assert_eq!(client.welcome().client_id, *server.client_id());
    }
}

#[test]
fn busy_greeting_shape() {
    let (_, status) = Server::new(ServerParams::default(), PEER).greet(Some(4));
    assert_eq!(status.status, Status::Busy);
    assert_eq!(status.queue_position, Some(4));
    let offer = status.filesync.expect("native offer");
    assert!(offer.versions.contains(&PROTOCOL_VERSION));
    assert_eq!(offer.encodings, ServerParams::default().encodings);
    let (_, status) = Server::new(ServerParams::default(), PEER).greet(None);
    assert_eq!(
        (status.status, status.queue_position),
        (Status::Ready, None)
    );
}

#[test]
fn files_aborted_by_the_client_alone_and_after_a_header() {
    for enc in ENCODINGS {
        let entries = vec![file("a", 5, t0()), file("b", 5, t0()), file("c", 3, t0())];
        let Planned {
            mut client,
            mut tasks,
            server,
            mut wire,
            ..
        } = planned(params(enc, Some("x"), false), &entries, &[]);

        // `a` could not even be opened: FILE_ABORT alone.
        let a = take(&mut tasks);
        assert_eq!(a.path(), &p("a"));
        let abort = wire.up(client.abort(a, "vanished".into()));
        let (server, r) = recv(server, abort);
        assert_eq!(r, Receive::Discard(p("a"), "vanished".into()));

        // `b` changed while being read: header, some DATA, then FILE_ABORT.
        let b = take(&mut tasks);
        let (mut server, r) = recv(server, wire.up(client.header(&b, &file("-", 5, t0()))));
        assert!(matches!(r, Receive::Open(_)));
        server.on_data(wire.up_data(b"he").len()).unwrap();
        let abort = wire.up(client.abort(b, "changed".into()));
        let (server, r) = recv(server, abort);
        assert_eq!(r, Receive::Discard(p("b"), "changed".into()));

        // `c` goes through.
        let c = take(&mut tasks);
        let (mut server, _) = recv(server, wire.up(client.header(&c, &file("-", 3, t0()))));
        server.on_data(wire.up_data(b"abc").len()).unwrap();
        let (mut server, r) = recv(server, wire.up(client.file_end(c, 3)));
        assert_eq!(r, Receive::Commit(p("c"), None));
        client
            .on_message(wire.down(server.file_result(p("c"), Outcome::Stored)))
            .unwrap();

        let (client, end) = client.finish().unwrap();
        let server = received(server, wire.up(end));
        let (server, next) = server.next_sync(t0(), 1000);
        let Finish::Done(client) = finish_step(client, wire.down(next)) else {
            panic!("not done");
        };
        let report = client.report();
        assert_eq!((report.requested, report.sent, report.stored), (3, 1, 1));
        assert_eq!(
            report.failed,
            vec![
                (p("a"), ErrorCode::ABORTED, "vanished".to_owned()),
                (p("b"), ErrorCode::ABORTED, "changed".to_owned()),
            ]
        );
        let tally = server.tally();
        assert_eq!((tally.stored, tally.rejected, tally.bytes), (1, 2, 5));
        assert_eq!(
            (client.next_sync().stored, client.next_sync().rejected),
            (1, 2)
        );
    }
}

/// The next task handed out.
fn take(tasks: &mut VecDeque<(Task, Entry)>) -> Task {
    tasks.pop_front().expect("a task left").0
}

/// A client cannot end the transfer with requested files neither sent nor aborted; a
/// server whose client does anyway counts them as failed.
#[test]
fn files_never_sent_count_as_failed() {
    let pl = small_planned(Encoding::Postcard);
    assert_eq!(pl.tasks.len(), 2);
    assert!(!pl.client.all_sent());
    assert!(inconsistent(pl.client.finish().map(drop)).contains("before the plan"));
    let mut wire = pl.wire;
    let server = received(pl.server, wire.up(ClientMsg::TransferEnd(TransferEnd {})));
    let (server, _) = server.next_sync(t0(), 0);
    assert_eq!(server.tally().rejected, 2);
}

/// More batches than the window: the client lists only while fewer than
/// `MANIFEST_WINDOW` batches are open, and a batch closes once its files are sent.
#[test]
fn the_manifest_window_interleaves_listing_and_files() {
    let batches = MANIFEST_WINDOW * 3;
    let per = 10;
    let entries: Vec<Entry> = (0..batches * per)
        .map(|i| file(&format!("f{i:04}"), 1, t0()))
        .collect();
    // The server holds every other file already.
    let index: Vec<Entry> = entries.iter().step_by(2).cloned().collect();
    let (client, mut server, mut plan, mut wire) =
        ready(params(Encoding::Postcard, None, false), &index);
    let mut client = client.start();
    let mut chunks = entries.chunks(per);
    let mut queue: VecDeque<(Task, Entry)> = VecDeque::new();
    let mut in_flight: VecDeque<ClientMsg> = VecDeque::new();
    let mut max_open = 0;
    let mut sent = 0;
    let mut receiving = None;
    loop {
        // List while the window allows.
        while client.can_list() {
            match chunks.next() {
                Some(c) => in_flight.push_back(wire.up(client.list(c.to_vec()))),
                None => in_flight.push_back(wire.up(client.end_manifest())),
            }
        }
        max_open = max_open.max(in_flight.len());
        // The server answers the oldest message.
        let Some(m) = in_flight.pop_front() else {
            break;
        };
        match plan.feed(server, m).unwrap() {
            server::Listed::Listing(s, tasks) => {
                server = s;
                queue.extend(client.on_message(wire.down(tasks)).unwrap());
            }
            server::Listed::Receiving(s, end) => {
                assert!(client.on_message(wire.down(end)).unwrap().is_empty());
                receiving = Some(s);
                break;
            }
            server::Listed::File(..) => unreachable!(),
        }
        // Send every file handed out, through the listing server.
        while let Some((t, e)) = queue.pop_front() {
            let h = wire.up(client.header(&t, &e));
            let server::Listed::File(s, _) = plan.feed(server, h).unwrap() else {
                panic!("header refused")
            };
            server = s;
            server.on_data(wire.up_data(b"x").len()).unwrap();
            let end = wire.up(client.file_end(t, 1));
            let server::Listed::File(s, r) = plan.feed(server, end).unwrap() else {
                panic!()
            };
            assert!(matches!(r, Receive::Commit(..)));
            server = s;
            sent += 1;
        }
    }
    assert!(
        max_open <= MANIFEST_WINDOW,
        "{max_open} batches open at once"
    );
    assert_eq!(wire.up_kinds["MANIFEST"], batches);
    assert_eq!(sent, batches * per / 2);
    assert!(client.all_sent());
    let (_, end) = client.finish().unwrap();
    let server = received(receiving.expect("PLAN_END"), wire.up(end));
    assert_eq!(server.next_sync(t0(), 0).0.tally().rejected, 0);
}

/// A client that keeps listing without sending the files it was asked for is refused
/// once the server holds more than `MAX_OUTSTANDING` requests.
#[test]
fn a_client_past_the_window_is_refused() {
    let (_, mut server, mut plan, mut wire) = ready(params(Encoding::Postcard, None, false), &[]);
    let mut n = 0;
    loop {
        let batch: Vec<Entry> = (n..n + MANIFEST_BATCH_MAX)
            .map(|i| file(&format!("f{i:07}"), 1, t0()))
            .collect();
        n += MANIFEST_BATCH_MAX;
        match plan.feed(server, wire.up(manifest(batch))) {
            Ok(server::Listed::Listing(s, _)) => server = s,
            Ok(other) => panic!("{other:?}"),
            Err(e) => {
                assert!(n > MAX_OUTSTANDING, "refused at {n}");
                assert!(inconsistent::<()>(Err(e)).contains("window"));
                break;
            }
        }
        assert!(n <= MAX_OUTSTANDING + MANIFEST_BATCH_MAX, "never refused");
    }
}

/// `TASKS` must answer an outstanding batch and name its files in order.
#[test]
fn client_refuses_tasks_it_did_not_ask_for() {
    let tasks = |paths: &[&str]| {
        ServerMsg::Tasks(Tasks {
            paths: paths.iter().map(|s| p(s)).collect(),
            resume: vec![],
        })
    };
    let (client, _, _, mut wire) = ready(params(Encoding::Json, None, false), &[]);
    let mut client = client.start();
    // No batch outstanding.
    inconsistent(client.on_message(wire.down(tasks(&[]))));
    let (client, _, _, mut wire) = ready(params(Encoding::Json, None, false), &[]);
    let mut client = client.start();
    let _ = client.list(vec![dir("d"), file("d/a", 1, t0()), file("d/b", 1, t0())]);
    // A directory, an unlisted file, files out of order.
    for bad in [&["d"][..], &["zzz"], &["d/b", "d/a"]] {
        let mut c = {
            let (client, _, _, _) = ready(params(Encoding::Json, None, false), &[]);
            client.start()
        };
        let _ = c.list(vec![dir("d"), file("d/a", 1, t0()), file("d/b", 1, t0())]);
        let err = inconsistent(c.on_message(wire.down(tasks(bad))));
        assert!(err.contains("not a listed file"), "{err}");
    }
    assert_eq!(
        client
            .on_message(wire.down(tasks(&["d/a", "d/b"])))
            .unwrap()
            .len(),
        2
    );
}

// ---------------------------------------------------------------------------------------
// Misbehaving peers: wrong message for the state
// ---------------------------------------------------------------------------------------

#[test]
fn client_refuses_messages_out_of_order() {
    let welcome = || {
        ServerMsg::Welcome(Welcome {
            version: 1,
            capabilities: vec![],
            client_id: ClientId::parse("x").unwrap(),
        })
    };
    let tasks = || {
        ServerMsg::Tasks(Tasks {
            paths: vec![p("d/a")],
            resume: vec![],
        })
    };
    let plan_end = || {
        ServerMsg::PlanEnd(PlanEnd {
            files: 0,
            bytes: 0,
            deletions: 0,
        })
    };
    let next = || {
        ServerMsg::NextSync(NextSync {
            at: t0(),
            delay_ms: 0,
            stored: 0,
            rejected: 0,
            deleted: 0,
            held_back: 0,
            held_back_reason: String::new(),
        })
    };
    for enc in ENCODINGS {
        // Connected, before WELCOME.
        for (msg, got) in [
            (tasks(), "TASKS"),
            (ServerMsg::Queued(Queued { position: 1 }), "QUEUED"),
            (ServerMsg::Ready(Ready {}), "READY"),
        ] {
            let mut o = open(params(enc, None, false), ServerParams::default(), None);
            let msg = o.wire.down(msg);
            assert_eq!(unexpected(o.client.on_message(msg)), ("WELCOME", got));
        }
        // Connected, after WELCOME.
        for (msg, got) in [(welcome(), "WELCOME"), (plan_end(), "PLAN_END")] {
            let (client, _, mut wire) = welcomed(params(enc, None, false));
            let msg = wire.down(msg);
            assert_eq!(unexpected(client.on_message(msg)), ("QUEUED or READY", got));
        }
        // Syncing: the plan and results.
        let deletions = || ServerMsg::Deletions(Deletions { paths: vec![] });
        for (msg, got) in [
            (welcome(), "WELCOME"),
            (next(), "NEXT_SYNC"),
            (ServerMsg::Ready(Ready {}), "READY"),
            (deletions(), "DELETIONS"),
        ] {
            let (entries, index) = small();
            let (client, _, _, mut wire) = ready(params(enc, None, false), &index);
            let mut client = client.start();
            let _ = client.list(entries);
            let msg = wire.down(msg);
            assert_eq!(
                unexpected(client.on_message(msg)),
                ("TASKS, PLAN_END or FILE_RESULT", got)
            );
        }
        // Finishing: results and NEXT_SYNC.
        let (client, _, _, mut wire) = ready(params(enc, None, false), &[]);
        let mut client = client.start();
        let _ = client.end_manifest();
        client.on_message(wire.down(plan_end())).unwrap();
        let (client, _) = client.finish().unwrap();
        let msg = wire.down(tasks());
        assert_eq!(
            unexpected(client.on_message(msg)),
            ("FILE_RESULT or NEXT_SYNC", "TASKS")
        );
    }
}

#[test]
fn server_refuses_messages_out_of_order() {
    let manifest = || ClientMsg::Manifest(Manifest { entries: vec![] });
    let header = || {
        ClientMsg::FileHeader(FileHeader {
            path: p("d/a"),
            size: 5,
            mtime: t0(),
            mode: 0o644,
            delta: false,
            offset: 0,
        })
    };
    let hello = || {
        ClientMsg::Hello(Hello {
            version: 1,
            agent: String::new(),
            client_id: None,
            capabilities: vec![],
            allow_empty: false,
            max_delete: None,
        })
    };
    for enc in ENCODINGS {
        // Greeted: only HELLO; anything else is refused with an ERROR to send.
        let mut o = open(params(enc, None, false), ServerParams::default(), None);
        let msg = o.wire.up(manifest());
        let refusal = o.server.on_hello(o.enc, msg).unwrap_err();
        assert_eq!(unexpected::<()>(Err(refusal.error)), ("HELLO", "MANIFEST"));
        match *refusal.msg {
            ServerMsg::Error(ErrorMsg { code, .. }) => assert_eq!(code, ErrorCode::PROTOCOL),
            other => panic!("{other:?}"),
        }
        // Listing: the manifest and the files of answered batches.
        for (msg, got) in [
            (hello(), "HELLO"),
            (ClientMsg::TransferEnd(TransferEnd {}), "TRANSFER_END"),
        ] {
            let (_, server, mut plan, mut wire) = ready(params(enc, None, false), &[]);
            let msg = wire.up(msg);
            assert_eq!(
                unexpected(plan.feed(server, msg)),
                ("MANIFEST, MANIFEST_END or a file", got)
            );
        }
        let (_, server, mut plan, mut wire) = ready(params(enc, None, false), &[]);
        assert!(data_error(plan.feed(server, wire.up(header()))).contains("not requested"));
        let (_, server, mut plan, mut wire) = ready(params(enc, None, false), &[]);
        assert_eq!(
            unexpected(plan.feed(server, wire.up(ClientMsg::FileEnd(FileEnd { hash: None })))),
            ("FILE_HEADER", "FILE_END")
        );
        // Receiving: only files.
        for (msg, got) in [
            (manifest(), "MANIFEST"),
            (hello(), "HELLO"),
            (
                ClientMsg::ManifestEnd(ManifestEnd { entries: 0 }),
                "MANIFEST_END",
            ),
        ] {
            let Planned {
                server, mut wire, ..
            } = small_planned(enc);
            let msg = wire.up(msg);
            assert_eq!(
                unexpected(server.on_message(msg)),
                ("FILE_HEADER, FILE_END, FILE_ABORT or TRANSFER_END", got)
            );
        }
        // FILE_END with no file open.
        let Planned {
            server, mut wire, ..
        } = small_planned(enc);
        let msg = wire.up(ClientMsg::FileEnd(FileEnd { hash: None }));
        assert_eq!(
            unexpected(server.on_message(msg)),
            ("FILE_HEADER", "FILE_END")
        );
    }
}

/// An `ERROR` from the peer ends the session with the peer's code and text, in any state.
#[test]
fn peer_errors_are_reported_as_remote() {
    let err = |code| ErrorMsg {
        code,
        message: "going away".into(),
    };
    let check = |r: Result<(), Error>, code: ErrorCode| match r {
        Err(Error::Remote { code: c, message }) => {
            assert_eq!(c, code);
            assert_eq!(message, "going away");
        }
        other => panic!("{other:?}"),
    };
    let enc = Encoding::Json;
    let (client, _, mut wire) = welcomed(params(enc, None, false));
    let msg = wire.down(ServerMsg::Error(err(ErrorCode::SHUTTING_DOWN)));
    check(client.on_message(msg).map(drop), ErrorCode::SHUTTING_DOWN);

    let (_, server, mut plan, mut wire) = ready(params(enc, None, false), &[]);
    let msg = wire.up(ClientMsg::Error(err(ErrorCode::INTERNAL)));
    check(plan.feed(server, msg).map(drop), ErrorCode::INTERNAL);

    let Planned {
        mut client,
        server,
        mut wire,
        ..
    } = small_planned(enc);
    let msg = wire.up(ClientMsg::Error(err(ErrorCode::IDLE_TIMEOUT)));
    check(server.on_message(msg).map(drop), ErrorCode::IDLE_TIMEOUT);
    let msg = wire.down(ServerMsg::Error(err(ErrorCode::STORAGE)));
    check(client.on_message(msg).map(drop), ErrorCode::STORAGE);
}

// ---------------------------------------------------------------------------------------
// Misbehaving peers: file content
// ---------------------------------------------------------------------------------------

/// The server after `FILE_HEADER` for `d/a` (5 bytes).
fn with_open_file(enc: Encoding) -> (Server<Receiving>, Wire) {
    let Planned {
        server, mut wire, ..
    } = small_planned(enc);
    let h = wire.up(ClientMsg::FileHeader(FileHeader {
        path: p("d/a"),
        size: 5,
        mtime: t0(),
        mode: 0o644,
        delta: false,
        offset: 0,
    }));
    let (server, r) = recv(server, h);
    assert!(matches!(r, Receive::Open(_)));
    (server, wire)
}

fn header(path: &str, size: u64) -> ClientMsg {
    ClientMsg::FileHeader(FileHeader {
        path: p(path),
        size,
        mtime: t0(),
        mode: 0o644,
        delta: false,
        offset: 0,
    })
}

#[test]
fn data_beyond_the_announced_size_is_refused() {
    for enc in ENCODINGS {
        let (mut server, mut wire) = with_open_file(enc);
        server.on_data(wire.up_data(b"abc").len()).unwrap();
        let err = data_error(server.on_data(wire.up_data(b"def").len()));
        assert!(err.contains("d/a"), "{err}");
        // All at once, too.
        let (mut server, mut wire) = with_open_file(enc);
        data_error(server.on_data(wire.up_data(b"abcdef").len()));
    }
}

#[test]
fn data_with_no_open_file_is_refused() {
    let Planned {
        mut server,
        mut wire,
        ..
    } = small_planned(Encoding::Postcard);
    data_error(server.on_data(wire.up_data(b"x").len()));
    // Nor after the file was committed.
    let (mut server, mut wire) = with_open_file(Encoding::Postcard);
    server.on_data(wire.up_data(b"abcde").len()).unwrap();
    let (mut server, r) = recv(server, wire.up(ClientMsg::FileEnd(FileEnd { hash: None })));
    assert_eq!(r, Receive::Commit(p("d/a"), None));
    data_error(server.on_data(wire.up_data(b"f").len()));
}

#[test]
fn file_end_short_of_the_size_is_refused() {
    for enc in ENCODINGS {
        let (mut server, mut wire) = with_open_file(enc);
        server.on_data(wire.up_data(b"abcd").len()).unwrap();
        let err =
            data_error(server.on_message(wire.up(ClientMsg::FileEnd(FileEnd { hash: None }))));
        assert!(err.contains("4 of 5"), "{err}");
    }
}

#[test]
fn header_for_a_path_not_requested_is_refused() {
    for enc in ENCODINGS {
        // `d/b` is listed but unchanged; `zzz` was never listed.
        for path in ["d/b", "zzz", "old"] {
            let Planned {
                server, mut wire, ..
            } = small_planned(enc);
            let err = data_error(server.on_message(wire.up(header(path, 3))));
            assert!(err.contains("not requested"), "{err}");
        }
    }
}

#[test]
fn header_for_a_file_sent_twice_is_refused() {
    for enc in ENCODINGS {
        let (mut server, mut wire) = with_open_file(enc);
        server.on_data(wire.up_data(b"abcde").len()).unwrap();
        let (server, _) = recv(server, wire.up(ClientMsg::FileEnd(FileEnd { hash: None })));
        data_error(server.on_message(wire.up(header("d/a", 5))));
        // After an abort as well.
        let Planned {
            server, mut wire, ..
        } = small_planned(enc);
        let (server, _) = recv(
            server,
            wire.up(ClientMsg::FileAbort(FileAbort {
                path: p("d/a"),
                reason: "gone".into(),
            })),
        );
        data_error(server.on_message(wire.up(header("d/a", 5))));
    }
}

#[test]
fn other_framing_faults_are_refused() {
    let enc = Encoding::Json;
    // A second header while a file is open.
    let (server, mut wire) = with_open_file(enc);
    data_error(server.on_message(wire.up(header("d/c", 0))));
    // An offset without the resume capability.
    let Planned {
        server, mut wire, ..
    } = small_planned(enc);
    let h = ClientMsg::FileHeader(FileHeader {
        path: p("d/a"),
        size: 5,
        mtime: t0(),
        mode: 0o644,
        delta: false,
        offset: 2,
    });
    data_error(server.on_message(wire.up(h)));
    // TRANSFER_END with a file open.
    let (server, mut wire) = with_open_file(enc);
    data_error(server.on_message(wire.up(ClientMsg::TransferEnd(TransferEnd {}))));
    // FILE_ABORT for another file than the open one, or for one never requested.
    let (server, mut wire) = with_open_file(enc);
    let abort = |path: &str| {
        ClientMsg::FileAbort(FileAbort {
            path: p(path),
            reason: String::new(),
        })
    };
    data_error(server.on_message(wire.up(abort("d/c"))));
    let Planned {
        server, mut wire, ..
    } = small_planned(enc);
    data_error(server.on_message(wire.up(abort("d/b"))));
}

// ---------------------------------------------------------------------------------------
// Misbehaving peers: manifest and plan
// ---------------------------------------------------------------------------------------

/// Sends `msgs` to a listing server; returns the first error.
fn listing_error(index: &[Entry], allow_empty: bool, msgs: Vec<ClientMsg>) -> Error {
    for enc in ENCODINGS {
        let (_, mut server, mut plan, mut wire) = ready(params(enc, None, allow_empty), index);
        let mut error = None;
        for m in msgs.clone() {
            match plan.feed(server, wire.up(m)) {
                Ok(server::Listed::Listing(s, _) | server::Listed::File(s, _)) => server = s,
                Ok(server::Listed::Receiving(..)) => panic!("manifest accepted"),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        let error = error.expect("no error");
        if enc == Encoding::Json {
            return error;
        }
    }
    unreachable!("JSON is the last encoding")
}

fn manifest(entries: Vec<Entry>) -> ClientMsg {
    ClientMsg::Manifest(Manifest { entries })
}

fn manifest_end(n: u64) -> ClientMsg {
    ClientMsg::ManifestEnd(ManifestEnd { entries: n })
}

#[test]
fn manifest_end_with_a_wrong_count_is_refused() {
    for n in [0, 1, 3] {
        let e = listing_error(
            &[],
            false,
            vec![
                manifest(vec![file("a", 1, t0())]),
                manifest(vec![file("b", 1, t0())]),
                manifest_end(n),
            ],
        );
        let msg = inconsistent::<()>(Err(e));
        assert!(msg.contains("MANIFEST_END"), "{msg}");
    }
}

#[test]
fn duplicate_paths_in_the_manifest_are_refused() {
    // In one batch.
    let e = listing_error(
        &[],
        false,
        vec![manifest(vec![file("a", 1, t0()), file("a", 2, t0())])],
    );
    assert!(inconsistent::<()>(Err(e)).contains("twice"));
    // Across batches, and as file and directory.
    let e = listing_error(
        &[],
        false,
        vec![manifest(vec![dir("a")]), manifest(vec![file("a", 1, t0())])],
    );
    assert!(inconsistent::<()>(Err(e)).contains("twice"));
    // An entry inside something listed as a file.
    let e = listing_error(
        &[],
        false,
        vec![
            manifest(vec![file("a", 1, t0()), file("a/b", 1, t0())]),
            manifest_end(2),
        ],
    );
    inconsistent::<()>(Err(e));
}

#[test]
fn empty_manifest_against_held_files_needs_allow_empty() {
    let index = [dir("d"), file("d/x", 1, t0())];
    match listing_error(&index, false, vec![manifest_end(0)]) {
        Error::Refused { code, .. } => assert_eq!(code, ErrorCode::WOULD_EMPTY),
        other => panic!("{other:?}"),
    }
    // Also when the manifest came as empty batches.
    match listing_error(&index, false, vec![manifest(vec![]), manifest_end(0)]) {
        Error::Refused { code, .. } => assert_eq!(code, ErrorCode::WOULD_EMPTY),
        other => panic!("{other:?}"),
    }
    // With --allow-empty the plan deletes everything.
    let pl = planned(params(Encoding::Postcard, None, true), &[], &index);
    assert_eq!(pl.tasks.len(), 0);
    assert_eq!(pl.client.plan_end().unwrap().deletions, 2);
    assert_eq!(pl.ops, [TailOp::Delete(p("d"))]);
    // An empty listing against an empty archive, or one holding only directories, is fine.
    let pl = planned(params(Encoding::Postcard, None, false), &[], &[]);
    assert_eq!(pl.client.plan_end().unwrap().deletions, 0);
    let pl = planned(params(Encoding::Postcard, None, false), &[], &[dir("e")]);
    assert_eq!(pl.ops, [TailOp::Delete(p("e"))]);
}

#[test]
fn wrong_protocol_version_in_hello_is_refused_with_version() {
    for enc in ENCODINGS {
        let mut o = open(params(enc, None, false), ServerParams::default(), None);
        let ClientMsg::Hello(mut hello) = o.hello else {
            panic!("not a hello");
        };
        hello.version = PROTOCOL_VERSION + 1;
        let msg = o.wire.up(ClientMsg::Hello(hello));
        let refusal = o.server.on_hello(o.enc, msg).unwrap_err();
        match *refusal.msg {
            ServerMsg::Error(ErrorMsg { code, message }) => {
                assert_eq!(code, ErrorCode::VERSION);
                assert!(
                    message.contains(&format!("version {}", PROTOCOL_VERSION + 1)),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        match protocol::<()>(Err(refusal.error)) {
            e @ ProtocolError::Version(_) => assert_eq!(e.code(), ErrorCode::VERSION),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn encoding_the_server_does_not_offer_is_refused() {
    // The server offers postcard only; a client that insists on JSON is refused at once...
    let only_postcard = ServerParams {
        encodings: vec![Encoding::Postcard],
        ..ServerParams::default()
    };
    let (_, status) = Server::new(only_postcard.clone(), PEER).greet(None);
    let err = Client::new(params(Encoding::Json, None, false))
        .on_greeting(&carry_greeting(status))
        .unwrap_err();
    assert!(
        matches!(err, Error::Protocol(ProtocolError::Version(_))),
        "{err:?}"
    );
    // ...and a preamble naming it anyway is refused by the server.
    let o = open(params(Encoding::Postcard, None, false), only_postcard, None);
    let refusal = o.server.on_hello(Encoding::Json, o.hello).unwrap_err();
    assert!(matches!(
        *refusal.msg,
        ServerMsg::Error(ErrorMsg {
            code: ErrorCode::VERSION,
            ..
        })
    ));
}

#[test]
fn client_refuses_greetings_it_cannot_answer() {
    let plain = ServerStatus {
        status: Status::Ready,
        queue_position: None,
        filesync: None,
    };
    let other_version = ServerStatus {
        filesync: Some(seed::NativeOffer {
            versions: vec![PROTOCOL_VERSION + 1],
            encodings: vec![Encoding::Postcard],
            auth: false,
        }),
        ..plain.clone()
    };
    for status in [plain, other_version] {
        let err = Client::new(params(Encoding::Postcard, None, false))
            .on_greeting(&carry_greeting(status))
            .unwrap_err();
        assert!(
            matches!(err, Error::Protocol(ProtocolError::Version(_))),
            "{err:?}"
        );
    }
}

#[test]
fn next_sync_while_results_are_missing_is_refused() {
    for enc in ENCODINGS {
        let Planned {
            mut client,
            mut tasks,
            server,
            mut wire,
            ..
        } = small_planned(enc);
        let a = take(&mut tasks);
        assert_eq!(a.path(), &p("d/a"));
        let (mut server, _) = recv(server, wire.up(client.header(&a, &file("-", 5, t0()))));
        server.on_data(wire.up_data(b"abcde").len()).unwrap();
        let (server, _) = recv(server, wire.up(client.file_end(a, 5)));
        let c = take(&mut tasks);
        let (server, _) = recv(server, wire.up(client.abort(c, "gone".into())));
        let (client, end) = client.finish().unwrap();
        let server = received(server, wire.up(end));
        // The server "forgets" the FILE_RESULT for d/a.
        let (_, next) = server.next_sync(t0(), 0);
        let err = inconsistent(client.on_message(wire.down(next)));
        assert!(err.contains("1 files await"), "{err}");
    }
}

#[test]
fn file_results_for_files_not_awaiting_one_are_refused() {
    let stored = |path: &str| {
        ServerMsg::FileResult(FileResult {
            path: p(path),
            outcome: Outcome::Stored,
        })
    };
    for enc in ENCODINGS {
        // A file never sent.
        let mut pl = small_planned(enc);
        inconsistent(pl.client.on_message(pl.wire.down(stored("d/a"))));
        // A result twice.
        let mut pl = small_planned(enc);
        let a = take(&mut pl.tasks);
        let _ = pl.client.file_end(a, 5);
        let c = take(&mut pl.tasks);
        let _ = pl.client.abort(c, "gone".into());
        pl.client.on_message(pl.wire.down(stored("d/a"))).unwrap();
        let (client, _) = pl.client.finish().unwrap();
        inconsistent(client.on_message(pl.wire.down(stored("d/a"))));
        // A file the client aborted.
        let mut pl = small_planned(enc);
        let a = take(&mut pl.tasks);
        let _ = pl.client.abort(a, "gone".into());
        inconsistent(pl.client.on_message(pl.wire.down(stored("d/a"))));
    }
}

#[test]
fn plan_end_that_does_not_match_is_refused() {
    // (files announced, bytes announced, MANIFEST_END sent, TASKS answered)
    let cases = [
        (2, 2, true, true),  // one file asked for, two announced
        (0, 0, true, true),  // one asked for, none announced
        (1, 7, true, true),  // bytes differ
        (1, 1, false, true), // the listing has not ended
        (0, 0, true, false), // a batch is unanswered
    ];
    for enc in ENCODINGS {
        for (files, bytes, ended, answered) in cases {
            let (client, _, _, mut wire) = ready(params(enc, None, false), &[]);
            let mut client = client.start();
            let _ = client.list(vec![file("a", 1, t0()), file("b", 1, t0())]);
            if answered {
                let t = ServerMsg::Tasks(Tasks {
                    paths: vec![p("a")],
                    resume: vec![],
                });
                client.on_message(wire.down(t)).unwrap();
            }
            if ended {
                let _ = client.end_manifest();
            }
            let end = ServerMsg::PlanEnd(PlanEnd {
                files,
                bytes,
                deletions: 0,
            });
            let err = inconsistent(client.on_message(wire.down(end)));
            assert!(err.contains("PLAN_END"), "{err}");
        }
    }
}

#[test]
fn a_second_plan_end_is_refused() {
    let mut pl = small_planned(Encoding::Postcard);
    let again = ServerMsg::PlanEnd(pl.client.plan_end().unwrap());
    let err = inconsistent(pl.client.on_message(pl.wire.down(again)));
    assert!(err.contains("second PLAN_END"), "{err}");
}

/// A batch whose shared prefixes make it small, but whose TASKS (which repeats every path
/// whole) would not fit in a frame, is refused instead of breaking the connection.
#[test]
fn a_batch_whose_tasks_would_not_fit_in_a_frame_is_refused() {
    let deep = "d/".repeat(100);
    let batch: Vec<Entry> = (0..MANIFEST_BATCH_MAX)
        .map(|i| file(&format!("{deep}f{i:05}"), 1, t0()))
        .collect();
    let m = manifest(batch);
    let postcard = filesync_core::codec::native::encoded_len(Encoding::Postcard, &m).unwrap();
    assert!(postcard < filesync_core::codec::MAX_FRAME_LEN, "{postcard}");
    let (_, server, mut plan, mut wire) = ready(params(Encoding::Postcard, None, false), &[]);
    let err = inconsistent::<()>(plan.feed(server, wire.up(m)).map(drop));
    assert!(err.contains("smaller batches"), "{err}");
}

/// The client chose a version in `HELLO`; a `WELCOME` announcing another one means the two
/// sides would run different protocols. The client checks versions in the greeting but
/// takes whatever `WELCOME.version` says.
#[test]
fn welcome_for_another_version_is_refused() {
    let o = open(
        params(Encoding::Postcard, None, false),
        ServerParams::default(),
        None,
    );
    let mut wire = o.wire;
    let welcome = wire.down(ServerMsg::Welcome(Welcome {
        version: PROTOCOL_VERSION + 1,
        capabilities: vec![],
        client_id: ClientId::parse("x").unwrap(),
    }));
    match protocol(o.client.on_message(welcome)) {
        ProtocolError::Version(_) => {}
        other => panic!("{other:?}"),
    }
}

//! Framing properties: however TCP cuts a stream, the decoders see the same frames; and
//! whatever bytes a hostile peer sends, they never panic and never hold more than their
//! limit.

use std::fmt::Debug;

use bytes::{Bytes, BytesMut};
use filesync_core::codec::json_stream::{encode_seed, JsonCodec, SeedServerCodec};
use filesync_core::codec::native::{ClientCodec, NativeCodec, ServerCodec};
use filesync_core::codec::{CodecError, Frame, DATA_CHUNK, MAX_FRAME_LEN};
use filesync_core::messages::seed;
use filesync_core::messages::{
    Auth, AuthOk, ClientMsg, CopyBlocks, Deletions, Encoding, Entry, EntryKind, ErrorCode,
    ErrorMsg, FileAbort, FileEnd, FileHeader, FileResult, Hash, Hello, Hole, Manifest, ManifestEnd,
    NextSync, Outcome, PlanEnd, Queued, Ready, ServerMsg, Tasks, TransferEnd, Welcome,
};
use filesync_core::paths::{ClientId, LinkTarget, RelPath};
use filesync_core::time::{MTime, SeedTime};
use proptest::prelude::*;
use serde::Serialize;
use tokio_util::codec::{Decoder, Encoder};

// ---------------------------------------------------------------------------------------
// Strategies (valid values only; JSON-hostile characters in paths on purpose)
// ---------------------------------------------------------------------------------------

fn rel_path() -> impl Strategy<Value = RelPath> {
    // `"`, braces and brackets stress the JSON scanner; none can form a drive prefix.
    prop::collection::vec(
        r#"[a-zA-Z0-9 ._"{}\[\]é-]{1,10}"#.prop_filter("dots", |c| c != "." && c != ".."),
        1..4,
    )
    .prop_map(|cs| RelPath::parse(&cs.join("/")).expect("valid components"))
}

/// Any bytes a Linux name may hold (not `/`, not NUL), so non-UTF-8 names too: native
/// sessions carry them in both encodings.
fn byte_path() -> impl Strategy<Value = RelPath> {
    prop_oneof![
        rel_path(),
        prop::collection::vec(
            prop::collection::vec(
                any::<u8>().prop_filter("sep", |b| *b != b'/' && *b != 0),
                1..8
            )
            .prop_filter("dots", |c| c != b"." && c != b".."),
            1..4,
        )
        .prop_map(|cs| RelPath::from_bytes(&cs.join(&b'/')).expect("valid components")),
    ]
}

fn link_target() -> impl Strategy<Value = LinkTarget> {
    prop::collection::vec(any::<u8>().prop_filter("nul", |b| *b != 0), 1..20)
        .prop_map(|b| LinkTarget::from_bytes(&b).unwrap())
}

fn mtime() -> impl Strategy<Value = MTime> {
    (any::<i64>(), 0u32..1_000_000_000).prop_map(|(s, n)| MTime::new(s, n).unwrap())
}

fn client_id() -> impl Strategy<Value = ClientId> {
    "[a-z0-9_-]{1,12}".prop_map(|s| ClientId::parse(&s).unwrap())
}

fn text() -> impl Strategy<Value = String> {
    r#"[a-z "\\{}]{0,12}"#
}

fn error_msg() -> impl Strategy<Value = ErrorMsg> {
    (any::<u16>(), text()).prop_map(|(c, message)| ErrorMsg {
        code: ErrorCode(c),
        message,
    })
}

fn client_msg() -> impl Strategy<Value = ClientMsg> {
    let kind = prop::sample::select(vec![
        EntryKind::File,
        EntryKind::Dir,
        EntryKind::Keep,
        EntryKind::Symlink,
        EntryKind::Fifo,
    ]);
    let entry = (
        byte_path(),
        kind,
        any::<u64>(),
        mtime(),
        0u32..0o10000,
        link_target(),
    )
        .prop_map(|(path, kind, size, mtime, mode, target)| Entry {
            path,
            kind,
            size,
            mtime,
            mode,
            target: (kind == EntryKind::Symlink).then_some(target),
        });
    prop_oneof![
        (
            any::<u16>(),
            text(),
            prop::option::of(client_id()),
            any::<bool>(),
            prop::option::of(any::<u64>())
        )
            .prop_map(|(version, agent, client_id, allow_empty, max_delete)| {
                ClientMsg::Hello(Hello {
                    version,
                    agent,
                    client_id,
                    capabilities: vec!["x".into()],
                    allow_empty,
                    max_delete,
                })
            }),
        prop::collection::vec(entry, 0..6)
            .prop_map(|entries| ClientMsg::Manifest(Manifest { entries })),
        any::<u64>().prop_map(|entries| ClientMsg::ManifestEnd(ManifestEnd { entries })),
        (
            byte_path(),
            any::<u64>(),
            mtime(),
            any::<u32>(),
            any::<bool>()
        )
            .prop_map(|(path, size, mtime, mode, delta)| {
                ClientMsg::FileHeader(FileHeader {
                    path,
                    size,
                    mtime,
                    mode,
                    delta,
                    offset: 0,
                })
            }),
        (1u64..).prop_map(|len| ClientMsg::Hole(Hole { len })),
        (any::<u32>(), 1u32..)
            .prop_map(|(block, count)| ClientMsg::Copy(CopyBlocks { block, count })),
        Just(ClientMsg::FileEnd(FileEnd { hash: None })),
        any::<[u8; 32]>().prop_map(|h| ClientMsg::Auth(Auth { proof: Hash(h) })),
        any::<[u8; 32]>().prop_map(|h| ClientMsg::FileEnd(FileEnd {
            hash: Some(Hash(h))
        })),
        (rel_path(), text())
            .prop_map(|(path, reason)| ClientMsg::FileAbort(FileAbort { path, reason })),
        Just(ClientMsg::TransferEnd(TransferEnd {})),
        error_msg().prop_map(ClientMsg::Error),
    ]
}

fn server_msg() -> impl Strategy<Value = ServerMsg> {
    let paths = || prop::collection::vec(rel_path(), 0..5);
    prop_oneof![
        client_id().prop_map(|client_id| ServerMsg::Welcome(Welcome {
            version: 1,
            capabilities: vec![],
            client_id,
        })),
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
        (rel_path(), prop::option::of(text())).prop_map(|(path, rej)| {
            ServerMsg::FileResult(FileResult {
                path,
                outcome: match rej {
                    None => Outcome::Stored,
                    Some(reason) => Outcome::Rejected {
                        code: ErrorCode::STORAGE,
                        reason,
                    },
                },
            })
        }),
        (mtime(), any::<u64>(), text()).prop_map(|(at, delay_ms, why)| ServerMsg::NextSync(
            NextSync {
                at,
                delay_ms,
                stored: 1,
                rejected: 2,
                deleted: 3,
                held_back: 4,
                held_back_reason: why,
            }
        )),
        error_msg().prop_map(ServerMsg::Error),
        any::<[u8; 32]>().prop_map(|h| ServerMsg::AuthOk(AuthOk { proof: Hash(h) })),
    ]
}

fn data() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

fn frames<M: Debug + Clone + 'static>(
    msg: impl Strategy<Value = M> + 'static,
    max: usize,
) -> impl Strategy<Value = Vec<Frame<M>>> {
    prop::collection::vec(
        prop_oneof![2 => msg.prop_map(Frame::Msg), 1 => data().prop_map(Frame::Data)],
        1..max,
    )
}

fn encoding() -> impl Strategy<Value = Encoding> {
    prop_oneof![Just(Encoding::Postcard), Just(Encoding::Json)]
}

/// Cut sizes for a chunking; cycled over the input.
fn cuts() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..97, 1..24)
}

// ---------------------------------------------------------------------------------------
// Feeding helpers
// ---------------------------------------------------------------------------------------

/// Everything one decoder did with an input fed in pieces.
struct Fed<T> {
    items: Vec<T>,
    error: Option<CodecError>,
    /// The most bytes the decoder left buffered while asking for more.
    peak_pending: usize,
}

/// Feeds `input` to `dec` in chunks whose sizes cycle through `cuts` (all of it at once if
/// `cuts` is empty), decoding everything after each chunk, as `FramedRead` does. Stops at
/// the first error; otherwise finishes with `decode_eof`.
fn feed<D>(dec: &mut D, input: &[u8], cuts: &[usize]) -> Fed<D::Item>
where
    D: Decoder<Error = CodecError>,
{
    let mut fed = Fed {
        items: Vec::new(),
        error: None,
        peak_pending: 0,
    };
    let mut buf = BytesMut::new();
    let mut rest = input;
    let mut sizes = cuts.iter().copied().cycle();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(item)) => fed.items.push(item),
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
    loop {
        match dec.decode_eof(&mut buf) {
            Ok(Some(item)) => fed.items.push(item),
            Ok(None) => break,
            Err(e) => {
                fed.error = Some(e);
                break;
            }
        }
    }
    fed
}

/// Feeds `input` split at `at` into two pieces.
fn feed_split<D>(dec: &mut D, input: &[u8], at: usize) -> Fed<D::Item>
where
    D: Decoder<Error = CodecError>,
{
    let cuts = [at, input.len()];
    if at == 0 {
        feed(dec, input, &[])
    } else {
        feed(dec, input, &cuts)
    }
}

fn encode_native<Rx, Tx>(codec: &mut NativeCodec<Rx, Tx>, frames: &[Frame<Tx>]) -> BytesMut
where
    Tx: Serialize + Clone,
{
    let mut buf = BytesMut::new();
    for f in frames {
        codec.encode(f.clone(), &mut buf).expect("encodes");
    }
    buf
}

fn unwrap_fed<T: Debug>(fed: Fed<T>) -> Vec<T> {
    if let Some(e) = fed.error {
        panic!("decoding failed: {e} after {:?}", fed.items);
    }
    fed.items
}

/// One frame of each message kind both ways, and DATA frames (one empty) between them.
fn sample_client_frames() -> Vec<Frame<ClientMsg>> {
    let p = RelPath::parse(r#"dir/we"ird}{/x.txt"#).unwrap();
    let t = MTime::new(1_700_000_000, 123_456_789).unwrap();
    vec![
        Frame::Msg(ClientMsg::Hello(Hello {
            version: 1,
            agent: "filesync/0.1".into(),
            client_id: Some(ClientId::parse("lab-7").unwrap()),
            capabilities: vec![],
            allow_empty: false,
            max_delete: None,
        })),
        Frame::Msg(ClientMsg::Manifest(Manifest {
            entries: vec![
                Entry {
                    path: RelPath::parse("dir").unwrap(),
                    kind: EntryKind::Dir,
                    size: 0,
                    mtime: t,
                    mode: 0o755,
                    target: None,
                },
                Entry {
                    path: p.clone(),
                    kind: EntryKind::File,
                    size: 5,
                    mtime: t,
                    mode: 0o644,
                    target: None,
                },
            ],
        })),
        Frame::Msg(ClientMsg::ManifestEnd(ManifestEnd { entries: 2 })),
        Frame::Msg(ClientMsg::FileHeader(FileHeader {
            path: p.clone(),
            size: 5,
            mtime: t,
            mode: 0o644,
            delta: false,
            offset: 0,
        })),
        Frame::Data(Bytes::from_static(b"he")),
        Frame::Data(Bytes::new()),
        Frame::Data(Bytes::from_static(b"\0\0\x01\xff")),
        Frame::Msg(ClientMsg::FileEnd(FileEnd { hash: None })),
        Frame::Msg(ClientMsg::FileAbort(FileAbort {
            path: p,
            reason: "vanished".into(),
        })),
        Frame::Msg(ClientMsg::TransferEnd(TransferEnd {})),
        Frame::Msg(ClientMsg::Error(ErrorMsg {
            code: ErrorCode::INTERNAL,
            message: "bye".into(),
        })),
    ]
}

fn sample_server_frames() -> Vec<Frame<ServerMsg>> {
    let p = RelPath::parse("a/b").unwrap();
    vec![
        Frame::Msg(ServerMsg::Welcome(Welcome {
            version: 1,
            capabilities: vec!["x".into()],
            client_id: ClientId::parse("c").unwrap(),
        })),
        Frame::Msg(ServerMsg::Queued(Queued { position: 3 })),
        Frame::Msg(ServerMsg::Ready(Ready {})),
        Frame::Msg(ServerMsg::Tasks(Tasks {
            paths: vec![p.clone()],
            resume: vec![],
        })),
        Frame::Msg(ServerMsg::Deletions(Deletions {
            paths: vec![p.clone()],
        })),
        Frame::Msg(ServerMsg::PlanEnd(PlanEnd {
            files: 1,
            bytes: 2,
            deletions: 1,
        })),
        Frame::Msg(ServerMsg::FileResult(FileResult {
            path: p.clone(),
            outcome: Outcome::Stored,
        })),
        Frame::Msg(ServerMsg::FileResult(FileResult {
            path: p,
            outcome: Outcome::Rejected {
                code: ErrorCode::STORAGE,
                reason: "disk full".into(),
            },
        })),
        Frame::Data(Bytes::from_static(b"{\"not\":\"a message\"}")),
        Frame::Msg(ServerMsg::NextSync(NextSync {
            at: MTime::new(-5, 1).unwrap(),
            delay_ms: 60_000,
            stored: 1,
            rejected: 1,
            deleted: 1,
            held_back: 0,
            held_back_reason: String::new(),
        })),
        Frame::Msg(ServerMsg::Error(ErrorMsg {
            code: ErrorCode::SHUTTING_DOWN,
            message: String::new(),
        })),
    ]
}

// ---------------------------------------------------------------------------------------
// Native framing: same frames however the stream is cut
// ---------------------------------------------------------------------------------------

#[test]
fn native_client_stream_split_at_every_position() {
    for enc in [Encoding::Postcard, Encoding::Json] {
        let frames = sample_client_frames();
        let wire = encode_native(&mut ClientCodec::new(enc), &frames);
        for at in 0..=wire.len() {
            let got = unwrap_fed(feed_split(&mut ServerCodec::new(enc), &wire, at));
            assert_eq!(got, frames, "{enc:?} split at {at}");
        }
    }
}

#[test]
fn native_server_stream_split_at_every_position() {
    for enc in [Encoding::Postcard, Encoding::Json] {
        let frames = sample_server_frames();
        let wire = encode_native(&mut ServerCodec::new(enc), &frames);
        for at in 0..=wire.len() {
            let got = unwrap_fed(feed_split(&mut ClientCodec::new(enc), &wire, at));
            assert_eq!(got, frames, "{enc:?} split at {at}");
        }
    }
}

#[test]
fn native_stream_one_byte_at_a_time() {
    for enc in [Encoding::Postcard, Encoding::Json] {
        let frames = sample_client_frames();
        let wire = encode_native(&mut ClientCodec::new(enc), &frames);
        let fed = feed(&mut ServerCodec::new(enc), &wire, &[1]);
        assert!(fed.peak_pending < 4 + MAX_FRAME_LEN);
        assert_eq!(unwrap_fed(fed), frames, "{enc:?}");
    }
}

proptest! {
    #[test]
    fn native_client_frames_survive_any_chunking(
        enc in encoding(),
        frames in frames(client_msg(), 12),
        cuts in cuts(),
    ) {
        let wire = encode_native(&mut ClientCodec::new(enc), &frames);
        let got = unwrap_fed(feed(&mut ServerCodec::new(enc), &wire, &cuts));
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn native_server_frames_survive_any_chunking(
        enc in encoding(),
        frames in frames(server_msg(), 12),
        cuts in cuts(),
    ) {
        let wire = encode_native(&mut ServerCodec::new(enc), &frames);
        let got = unwrap_fed(feed(&mut ClientCodec::new(enc), &wire, &cuts));
        prop_assert_eq!(got, frames);
    }
}

proptest! {
    // Every split position of every case: quadratic, so fewer and shorter cases.
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn native_frames_split_at_every_position(
        enc in encoding(),
        frames in frames(client_msg(), 5),
    ) {
        let wire = encode_native(&mut ClientCodec::new(enc), &frames);
        for at in 0..=wire.len() {
            let got = unwrap_fed(feed_split(&mut ServerCodec::new(enc), &wire, at));
            prop_assert_eq!(&got, &frames, "split at {}", at);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Native framing: hostile input
// ---------------------------------------------------------------------------------------

/// Bytes that look like frames often enough to get past the length check: a mix of
/// well-formed small headers with random kinds and payloads, and raw garbage.
fn frame_like_garbage() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        (
            0u32..80,
            any::<u8>(),
            prop::collection::vec(any::<u8>(), 0..80)
        )
            .prop_map(|(len, kind, body)| {
                let mut v = len.to_be_bytes().to_vec();
                v.push(kind % 4);
                v.extend(body);
                v
            }),
        prop::collection::vec(any::<u8>(), 0..40),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn native_decoder_survives_garbage(
        enc in encoding(),
        bytes in frame_like_garbage(),
        cuts in cuts(),
    ) {
        const MAX: usize = 64;
        let mut server = ServerCodec::with_max(enc, MAX);
        let fed = feed(&mut server, &bytes, &cuts);
        // While waiting for more, at most one header or one frame under the limit.
        prop_assert!(fed.peak_pending < MAX.max(4), "{} bytes pending", fed.peak_pending);
        for f in &fed.items {
            if let Frame::Data(d) = f {
                prop_assert!(d.len() < MAX);
            }
        }
        let mut client = ClientCodec::with_max(enc, MAX);
        let fed = feed(&mut client, &bytes, &cuts);
        prop_assert!(fed.peak_pending < MAX.max(4), "{} bytes pending", fed.peak_pending);
    }

    #[test]
    fn native_decoder_survives_uniform_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let fed = feed(&mut ServerCodec::with_max(Encoding::Json, 32), &bytes, &[7]);
        prop_assert!(fed.peak_pending < 32);
        let fed = feed(&mut ClientCodec::with_max(Encoding::Postcard, 32), &bytes, &[]);
        prop_assert!(fed.peak_pending < 32);
    }
}

#[test]
fn length_prefix_of_u32_max_is_refused_before_buffering() {
    for enc in [Encoding::Postcard, Encoding::Json] {
        let mut buf = BytesMut::from(&[0xff_u8, 0xff, 0xff, 0xff][..]);
        let before = buf.capacity();
        match ServerCodec::new(enc).decode(&mut buf) {
            Err(CodecError::TooLarge { len, max }) => {
                assert_eq!(len, 0xffff_ffff);
                assert_eq!(max, MAX_FRAME_LEN);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(buf.capacity(), before, "nothing was reserved for the frame");
        let mut buf = BytesMut::from(&[0xff_u8, 0xff, 0xff, 0xff, 0][..]);
        assert!(matches!(
            ClientCodec::new(enc).decode(&mut buf),
            Err(CodecError::TooLarge {
                len: 0xffff_ffff,
                ..
            })
        ));
    }
}

#[test]
fn length_at_the_limit_is_accepted_one_past_is_not() {
    const MAX: usize = 100;
    let mut codec = ServerCodec::with_max(Encoding::Postcard, MAX);
    let mut frame = (MAX as u32).to_be_bytes().to_vec();
    frame.push(1);
    frame.extend([7u8; MAX - 1]);
    let mut buf = BytesMut::from(&frame[..]);
    assert_eq!(
        codec.decode(&mut buf).unwrap(),
        Some(Frame::Data(Bytes::from(vec![7u8; MAX - 1])))
    );
    let mut buf = BytesMut::from(&((MAX + 1) as u32).to_be_bytes()[..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(CodecError::TooLarge { len: 101, max: MAX })
    ));
    // The encoder refuses what the decoder would refuse.
    let mut out = BytesMut::new();
    let mut tx = ClientCodec::with_max(Encoding::Postcard, MAX);
    assert!(tx.encode_data(&[0; MAX - 1], &mut out).is_ok());
    assert!(matches!(
        tx.encode_data(&[0; MAX], &mut out),
        Err(CodecError::TooLarge { .. })
    ));
    assert_eq!(out.len(), 4 + MAX, "the refused frame left nothing behind");
}

// ---------------------------------------------------------------------------------------
// JSON off a byte stream (original dialect)
// ---------------------------------------------------------------------------------------

/// JSON-ish noise: structural characters, strings, escapes, whitespace and raw bytes.
fn json_like_garbage() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        prop::sample::select(vec![
            &b"{"[..],
            b"}",
            b"[",
            b"]",
            b"\"",
            b"\\",
            b"\\\"",
            b" ",
            b"\n",
            b":",
            b",",
            b"\"type\"",
            b"\"TASKS\"",
            b"{\"type\":\"TASKS\",\"files_to_send\":[\"a\"]}",
            b"{\"type\":\"SERVER_STATUS_MESSAGE\",\"status\":\"READY\"}",
        ])
        .prop_map(<[u8]>::to_vec),
        "[a-z0-9]{1,6}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 1..8),
    ];
    prop::collection::vec(token, 0..120).prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn json_codec_survives_garbage(bytes in json_like_garbage(), cuts in cuts()) {
        const MAX: usize = 128;
        let mut codec = JsonCodec::<seed::ServerMsg>::with_max(MAX);
        let fed = feed(&mut codec, &bytes, &cuts);
        prop_assert!(fed.peak_pending <= MAX, "{} bytes pending", fed.peak_pending);
    }

    #[test]
    fn seed_server_codec_survives_garbage(bytes in json_like_garbage(), cuts in cuts()) {
        const MAX: usize = 128;
        let mut codec = SeedServerCodec::with_max(MAX);
        let fed = feed(&mut codec, &bytes, &cuts);
        prop_assert!(fed.peak_pending <= MAX, "{} bytes pending", fed.peak_pending);
        for f in &fed.items {
            if let Frame::Data(d) = f {
                prop_assert!(d.len() <= DATA_CHUNK);
            }
        }
    }

    /// A header with random content behind it: the body is never parsed as JSON.
    #[test]
    fn seed_server_codec_survives_garbage_after_a_header(
        body in prop::collection::vec(any::<u8>(), 0..200),
        size in 0u64..300,
        cuts in cuts(),
    ) {
        let mut wire = format!(
            r#"{{"type":"FILE_HEADER","name":"x","path":"x","size":{size},"last_mod":"2025-05-06T14:23:00"}}"#
        )
        .into_bytes();
        wire.push(b'\n');
        wire.extend(&body);
        let fed = feed(&mut SeedServerCodec::with_max(256), &wire, &cuts);
        prop_assert!(fed.peak_pending <= 256);
        let data: usize = fed.items.iter().map(|f| match f {
            Frame::Data(d) => d.len(),
            Frame::Msg(_) => 0,
        }).sum();
        prop_assert!(data as u64 <= size);
        prop_assert_eq!(data, body.len().min(size as usize));
    }
}

/// 10 KiB of an unterminated string against a 1 KiB limit: refused as soon as the buffer
/// passes the limit, not at the end.
#[test]
fn json_codec_refuses_an_endless_value() {
    let mut wire = br#"{"a":""#.to_vec();
    wire.extend(std::iter::repeat_n(b'x', 10 << 10));
    for cut in [1, 100, 1000, 4096, wire.len()] {
        let fed = feed(
            &mut JsonCodec::<seed::ServerMsg>::with_max(1024),
            &wire,
            &[cut],
        );
        assert!(
            matches!(fed.error, Some(CodecError::TooLarge { max: 1024, .. })),
            "cut {cut}: {:?}",
            fed.error
        );
        assert!(fed.peak_pending <= 1024);
        let fed = feed(&mut SeedServerCodec::with_max(1024), &wire, &[cut]);
        assert!(
            matches!(fed.error, Some(CodecError::TooLarge { max: 1024, .. })),
            "cut {cut}: {:?}",
            fed.error
        );
    }
    // Nesting and whitespace count too.
    let deep = vec![b'['; 4096];
    let mut wire = b"{\"a\":".to_vec();
    wire.extend(&deep);
    let fed = feed(
        &mut JsonCodec::<seed::ServerMsg>::with_max(1024),
        &wire,
        &[64],
    );
    assert!(matches!(fed.error, Some(CodecError::TooLarge { .. })));
    let spaces = vec![b' '; 4096];
    let fed = feed(
        &mut JsonCodec::<seed::ServerMsg>::with_max(1024),
        &spaces,
        &[64],
    );
    assert!(matches!(fed.error, Some(CodecError::TooLarge { .. })));
}

/// A *complete* value over the limit must be refused too, however it was cut. The scanner
/// checks the limit only after bytes outside strings and at the end of the buffer, and
/// returns an object's end before checking: a value whose excess sits in one string that
/// closes the object (an unknown trailing field, which the types ignore) is accepted
/// whole when it arrives in one read, so the limit can be overshot by a read's size.
#[test]
fn json_codec_refuses_a_complete_value_over_the_limit() {
    let mut wire = br#"{"type":"TASKS","files_to_send":["a"],"pad":""#.to_vec();
    wire.extend(std::iter::repeat_n(b'x', 10 << 10));
    wire.extend(br#""}"#);
    // The value is valid: the limit is the only reason to refuse it.
    assert!(serde_json::from_slice::<seed::ServerMsg>(&wire).is_ok());
    for cut in [64, 4096, wire.len()] {
        let fed = feed(
            &mut JsonCodec::<seed::ServerMsg>::with_max(1024),
            &wire,
            &[cut],
        );
        assert!(
            matches!(fed.error, Some(CodecError::TooLarge { .. })),
            "cut {cut}: decoded {} value(s) of {} bytes with a limit of 1024",
            fed.items.len(),
            wire.len()
        );
    }
}

// ---------------------------------------------------------------------------------------
// The seed server codec on real traffic
// ---------------------------------------------------------------------------------------

/// A `CLIENT_FILES_INFO` of well over 64 KiB, with JSON-hostile names.
fn big_files_info() -> seed::ClientMsg {
    let t = SeedTime::parse("2025-05-06T14:23:00.123456").unwrap();
    let t0 = SeedTime::parse("2025-05-06T14:23:00").unwrap();
    let files = (0..1200)
        .map(|i| {
            let path = RelPath::parse(&format!(
                "dir {}/sub\"{{{}}}/file-[{i}] é.txt",
                i % 17,
                i % 5
            ))
            .unwrap();
            seed::FileInfo {
                name: String::from_utf8_lossy(path.file_name()).into_owned(),
                path,
                last_mod: if i % 2 == 0 { t } else { t0 },
            }
        })
        .collect();
    seed::ClientMsg::FilesInfo(seed::ClientFilesInfo {
        client_id: Some(ClientId::parse("a").unwrap()),
        files,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn seed_files_info_over_64k_in_small_segments(cuts in prop::collection::vec(1usize..300, 1..32)) {
        let msg = big_files_info();
        let mut wire = BytesMut::new();
        // No delimiter after CLIENT_FILES_INFO, as the original sends it.
        encode_seed(&msg, false, &mut wire);
        prop_assert!(wire.len() > 64 << 10, "only {} bytes", wire.len());
        let got = unwrap_fed(feed(&mut SeedServerCodec::default(), &wire, &cuts));
        prop_assert_eq!(got, vec![Frame::Msg(msg)]);
    }
}

/// Splits the frames of a seed stream into (header, concatenated body) pairs.
fn files_of(frames: Vec<Frame<seed::ClientMsg>>) -> Vec<(seed::FileHeader, Vec<u8>)> {
    let mut out: Vec<(seed::FileHeader, Vec<u8>)> = Vec::new();
    for f in frames {
        match f {
            Frame::Msg(seed::ClientMsg::FileHeader(h)) => out.push((h, Vec::new())),
            Frame::Msg(other) => panic!("unexpected {other:?}"),
            Frame::Data(d) => {
                assert!(!d.is_empty(), "empty DATA chunk");
                assert!(d.len() <= DATA_CHUNK);
                out.last_mut().expect("DATA before any header").1.extend(&d);
            }
        }
    }
    out
}

fn seed_header(path: &str, size: usize) -> seed::FileHeader {
    let path = RelPath::parse(path).unwrap();
    seed::FileHeader {
        name: String::from_utf8_lossy(path.file_name()).into_owned(),
        path,
        size: size as u64,
        last_mod: SeedTime::parse("2025-05-06T14:23:00.5").unwrap(),
    }
}

proptest! {
    #[test]
    fn seed_header_then_raw_bytes_in_any_segments(
        bodies in prop::collection::vec(
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..600),
                // Bodies that look like the protocol: a newline first, JSON inside.
                Just(b"\n{\"type\":\"FILE_HEADER\"}\n".to_vec()),
            ],
            1..4,
        ),
        cuts in cuts(),
    ) {
        let mut wire = BytesMut::new();
        let mut expected = Vec::new();
        for (i, body) in bodies.iter().enumerate() {
            let h = seed_header(&format!("d/f{i}\"}}.bin"), body.len());
            encode_seed(&seed::ClientMsg::FileHeader(h.clone()), true, &mut wire);
            wire.extend_from_slice(body);
            expected.push((h, body.clone()));
        }
        let got = unwrap_fed(feed(&mut SeedServerCodec::default(), &wire, &cuts));
        prop_assert_eq!(files_of(got), expected);
    }
}

#[test]
fn seed_body_larger_than_a_chunk_is_cut_into_chunks() {
    let body: Vec<u8> = (0..(DATA_CHUNK * 2 + 123))
        .map(|i| (i % 251) as u8)
        .collect();
    let mut wire = BytesMut::new();
    let h = seed_header("big", body.len());
    encode_seed(&seed::ClientMsg::FileHeader(h.clone()), true, &mut wire);
    wire.extend_from_slice(&body);
    let fed = feed(&mut SeedServerCodec::default(), &wire, &[]);
    assert!(fed.items.len() >= 4, "header and three chunks");
    assert_eq!(files_of(unwrap_fed(fed)), vec![(h, body)]);
}

/// The original always writes `\n` after `FILE_HEADER`; a body that itself starts with
/// `\n` keeps that byte.
#[test]
fn seed_body_starting_with_a_newline_keeps_it() {
    let body = b"\n\nline".to_vec();
    let mut wire = BytesMut::new();
    let h = seed_header("n", body.len());
    encode_seed(&seed::ClientMsg::FileHeader(h.clone()), true, &mut wire);
    wire.extend_from_slice(&body);
    for at in 0..=wire.len() {
        let got = unwrap_fed(feed_split(&mut SeedServerCodec::default(), &wire, at));
        assert_eq!(
            files_of(got),
            vec![(h.clone(), body.clone())],
            "split at {at}"
        );
    }
}

/// The stream ends right after a frame's length: the frame is cut short, but the length
/// header was already consumed by `LengthDelimitedCodec`, so the buffer is empty and
/// `decode_eof` reports a clean end instead of `Truncated`.
#[test]
fn native_eof_after_a_length_header_is_truncated() {
    for enc in [Encoding::Postcard, Encoding::Json] {
        let mut codec = ServerCodec::new(enc);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 9][..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(
            matches!(codec.decode_eof(&mut buf), Err(CodecError::Truncated(_))),
            "{enc:?}: a frame announced 9 bytes and none came"
        );
    }
}

/// The same stream cut one byte later is reported, as it should be.
#[test]
fn native_eof_inside_a_payload_is_truncated() {
    let mut codec = ServerCodec::new(Encoding::Postcard);
    let mut buf = BytesMut::from(&[0u8, 0, 0, 9, 1][..]);
    assert_eq!(codec.decode(&mut buf).unwrap(), None);
    assert!(matches!(
        codec.decode_eof(&mut buf),
        Err(CodecError::Truncated(_))
    ));
    let mut codec = ServerCodec::new(Encoding::Postcard);
    let mut buf = BytesMut::from(&[0u8, 0, 0][..]);
    assert!(matches!(
        codec.decode_eof(&mut buf),
        Err(CodecError::Truncated(3))
    ));
}

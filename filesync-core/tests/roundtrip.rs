//! Every message of both dialects round-trips through JSON and through postcard, and the
//! original dialect's documented JSON (`../shared/seed-protocol.md`) is read and written
//! byte for byte.
//!
//! The src types do not derive `Arbitrary`, so the strategies live here. They only build
//! valid values: paths through [`RelPath::parse`] from valid components, ids through
//! [`ClientId::parse`], mtimes with `nanos < 1e9`, seed times at microsecond precision.

use std::fmt::Debug;

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use filesync_core::messages::seed::{self, NativeOffer, ServerStatus, Status};
use filesync_core::messages::{
    ClientMsg, Deletions, Encoding, Entry, EntryKind, ErrorCode, ErrorMsg, FileAbort, FileEnd,
    FileHeader, FileResult, Hello, Manifest, ManifestEnd, NextSync, Outcome, PlanEnd, Queued,
    Ready, ServerMsg, Tasks, TransferEnd, Welcome,
};
use filesync_core::paths::{ClientId, RelPath};
use filesync_core::time::{MTime, SeedTime};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

// ---------------------------------------------------------------------------------------
// Strategies: names and times
// ---------------------------------------------------------------------------------------

/// `C:` and the like as a first component would be read as a Windows drive.
fn has_drive_prefix(c: &str) -> bool {
    let b = c.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':'
}

/// One valid path component: anything but `/`, `\` and NUL, not `.` or `..`, mostly
/// plain ASCII with some arbitrary Unicode mixed in.
fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9._ -]{1,12}",
        1 => r"[^/\\\x00]{1,8}",
    ]
    .prop_filter("`.` and `..` are not components", |c| c != "." && c != "..")
}

/// A valid relative path of one to four components, built with the only public
/// constructor: if `RelPath::parse` refused a valid path, this panics and the test fails.
fn rel_path() -> impl Strategy<Value = RelPath> {
    prop::collection::vec(component(), 1..5)
        .prop_filter("a drive prefix makes a path absolute", |cs| {
            !has_drive_prefix(&cs[0])
        })
        .prop_map(|cs| {
            let s = cs.join("/");
            RelPath::parse(&s).unwrap_or_else(|e| panic!("valid path {s:?} refused: {e}"))
        })
}

fn client_id() -> impl Strategy<Value = ClientId> {
    "[A-Za-z0-9._-]{1,64}"
        .prop_filter("`.` and `..` are not ids", |s| s != "." && s != "..")
        .prop_map(|s| ClientId::parse(&s).unwrap_or_else(|e| panic!("valid id {s:?}: {e}")))
}

prop_compose! {
    fn mtime()(secs in any::<i64>(), nanos in 0u32..1_000_000_000) -> MTime {
        MTime::new(secs, nanos).expect("nanos below 1e9")
    }
}

prop_compose! {
    /// A naive datetime in years 1..=9999 (Python's range), at microsecond precision.
    fn seed_time()(
        days in 1i32..=3_652_059,
        secs in 0u32..86_400,
        micros in prop_oneof![Just(0u32), 0u32..1_000_000],
    ) -> SeedTime {
        let date = NaiveDate::from_num_days_from_ce_opt(days).expect("in range");
        let time = NaiveTime::from_num_seconds_from_midnight_opt(secs, micros * 1000)
            .expect("valid time");
        SeedTime(NaiveDateTime::new(date, time))
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,16}", any::<String>()]
}

fn capabilities() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec("[a-z-]{1,10}", 0..4)
}

fn encoding() -> impl Strategy<Value = Encoding> {
    prop_oneof![Just(Encoding::Postcard), Just(Encoding::Json)]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        (1u16..=11).prop_map(ErrorCode),
        any::<u16>().prop_map(ErrorCode)
    ]
}

// ---------------------------------------------------------------------------------------
// Strategies: native payloads
// ---------------------------------------------------------------------------------------

prop_compose! {
    fn hello()(
        version in any::<u16>(),
        agent in text(),
        client_id in prop::option::of(client_id()),
        capabilities in capabilities(),
        allow_empty in any::<bool>(),
        max_delete in prop::option::of(any::<u64>()),
    ) -> Hello {
        Hello { version, agent, client_id, capabilities, allow_empty, max_delete }
    }
}

prop_compose! {
    fn entry()(
        path in rel_path(),
        kind in prop_oneof![Just(EntryKind::File), Just(EntryKind::Dir), Just(EntryKind::Fifo)],
        size in any::<u64>(),
        mtime in mtime(),
        mode in 0u32..0o10000,
    ) -> Entry {
        Entry { path, kind, size, mtime, mode, target: None }
    }
}

prop_compose! {
    fn file_header()(path in rel_path(), size in any::<u64>(), mtime in mtime(), mode in any::<u32>(), offset in any::<u64>())
        -> FileHeader {
        FileHeader { path, size, mtime, mode, delta: false, offset }
    }
}

prop_compose! {
    fn error_msg()(code in error_code(), message in text()) -> ErrorMsg {
        ErrorMsg { code, message }
    }
}

prop_compose! {
    fn welcome()(version in any::<u16>(), capabilities in capabilities(), client_id in client_id())
        -> Welcome {
        Welcome { version, capabilities, client_id }
    }
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Stored),
        (error_code(), text()).prop_map(|(code, reason)| Outcome::Rejected { code, reason }),
    ]
}

prop_compose! {
    fn next_sync()(
        at in mtime(),
        delay_ms in any::<u64>(),
        stored in any::<u64>(),
        rejected in any::<u64>(),
        deleted in any::<u64>(),
        held_back in any::<u64>(),
        held_back_reason in text(),
    ) -> NextSync {
        NextSync { at, delay_ms, stored, rejected, deleted, held_back, held_back_reason }
    }
}

fn paths() -> impl Strategy<Value = Vec<RelPath>> {
    prop::collection::vec(rel_path(), 0..6)
}

const CLIENT_VARIANTS: usize = 8;

/// One strategy per `ClientMsg` variant, in wire order.
fn client_msg_variants() -> Vec<BoxedStrategy<ClientMsg>> {
    vec![
        hello().prop_map(ClientMsg::Hello).boxed(),
        prop::collection::vec(entry(), 0..8)
            .prop_map(|entries| ClientMsg::Manifest(Manifest { entries }))
            .boxed(),
        any::<u64>()
            .prop_map(|entries| ClientMsg::ManifestEnd(ManifestEnd { entries }))
            .boxed(),
        file_header().prop_map(ClientMsg::FileHeader).boxed(),
        Just(ClientMsg::FileEnd(FileEnd { hash: None })).boxed(),
        (rel_path(), text())
            .prop_map(|(path, reason)| ClientMsg::FileAbort(FileAbort { path, reason }))
            .boxed(),
        Just(ClientMsg::TransferEnd(TransferEnd {})).boxed(),
        error_msg().prop_map(ClientMsg::Error).boxed(),
    ]
}

fn client_msg() -> impl Strategy<Value = ClientMsg> {
    prop::strategy::Union::new(client_msg_variants())
}

const SERVER_VARIANTS: usize = 9;

/// One strategy per `ServerMsg` variant, in wire order.
fn server_msg_variants() -> Vec<BoxedStrategy<ServerMsg>> {
    vec![
        welcome().prop_map(ServerMsg::Welcome).boxed(),
        any::<u32>()
            .prop_map(|position| ServerMsg::Queued(Queued { position }))
            .boxed(),
        Just(ServerMsg::Ready(Ready {})).boxed(),
        paths()
            .prop_map(|paths| {
                ServerMsg::Tasks(Tasks {
                    paths,
                    resume: vec![],
                })
            })
            .boxed(),
        paths()
            .prop_map(|paths| ServerMsg::Deletions(Deletions { paths }))
            .boxed(),
        (any::<u64>(), any::<u64>(), any::<u64>())
            .prop_map(|(files, bytes, deletions)| {
                ServerMsg::PlanEnd(PlanEnd {
                    files,
                    bytes,
                    deletions,
                })
            })
            .boxed(),
        (rel_path(), outcome())
            .prop_map(|(path, outcome)| ServerMsg::FileResult(FileResult { path, outcome }))
            .boxed(),
        next_sync().prop_map(ServerMsg::NextSync).boxed(),
        error_msg().prop_map(ServerMsg::Error).boxed(),
    ]
}

fn server_msg() -> impl Strategy<Value = ServerMsg> {
    prop::strategy::Union::new(server_msg_variants())
}

// ---------------------------------------------------------------------------------------
// Strategies: the original dialect
// ---------------------------------------------------------------------------------------

fn datagram() -> impl Strategy<Value = seed::Datagram> {
    prop_oneof![
        Just(seed::Datagram::Discover(seed::Discover {})),
        any::<u16>().prop_map(|port| seed::Datagram::Offer(seed::Offer { port })),
    ]
}

prop_compose! {
    fn native_offer()(
        versions in prop::collection::vec(any::<u16>(), 0..4),
        encodings in prop::collection::vec(encoding(), 0..3),
        auth in any::<bool>(),
    ) -> NativeOffer {
        NativeOffer { versions, encodings, auth }
    }
}

prop_compose! {
    /// Both statuses, each optional field present or absent.
    fn server_status()(
        status in prop_oneof![Just(Status::Ready), Just(Status::Busy)],
        queue_position in prop::option::of(any::<u32>()),
        filesync in prop::option::of(native_offer()),
    ) -> ServerStatus {
        ServerStatus { status, queue_position, filesync }
    }
}

prop_compose! {
    fn file_info()(path in rel_path(), last_mod in seed_time()) -> seed::FileInfo {
        seed::FileInfo { name: String::from_utf8_lossy(path.file_name()).into_owned(), path, last_mod }
    }
}

prop_compose! {
    fn seed_file_header()(path in rel_path(), size in any::<u64>(), last_mod in seed_time())
        -> seed::FileHeader {
        seed::FileHeader { name: String::from_utf8_lossy(path.file_name()).into_owned(), path, size, last_mod }
    }
}

fn seed_server_msg() -> impl Strategy<Value = seed::ServerMsg> {
    prop_oneof![
        server_status().prop_map(seed::ServerMsg::Status),
        paths().prop_map(|files_to_send| seed::ServerMsg::Tasks(seed::Tasks { files_to_send })),
        seed_time().prop_map(|time| seed::ServerMsg::NextSync(seed::NextSync { time })),
    ]
}

fn seed_client_msg() -> impl Strategy<Value = seed::ClientMsg> {
    prop_oneof![
        (
            prop::option::of(client_id()),
            prop::collection::vec(file_info(), 0..6)
        )
            .prop_map(|(client_id, files)| {
                seed::ClientMsg::FilesInfo(seed::ClientFilesInfo { client_id, files })
            }),
        seed_file_header().prop_map(seed::ClientMsg::FileHeader),
    ]
}

// ---------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------

/// JSON and postcard both give back an equal value, and JSON re-encodes to the same bytes.
fn round_trip<T>(v: &T) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let json = serde_json::to_vec(v).map_err(|e| TestCaseError::fail(format!("json: {e}")))?;
    let back: T = serde_json::from_slice(&json).map_err(|e| {
        TestCaseError::fail(format!(
            "json decode of {}: {e}",
            String::from_utf8_lossy(&json)
        ))
    })?;
    prop_assert_eq!(&back, v);
    let again = serde_json::to_vec(&back).expect("serialises");
    prop_assert_eq!(&again, &json, "JSON is not canonical");

    let bytes =
        postcard::to_allocvec(v).map_err(|e| TestCaseError::fail(format!("postcard: {e}")))?;
    let back: T = postcard::from_bytes(&bytes)
        .map_err(|e| TestCaseError::fail(format!("postcard decode: {e}")))?;
    prop_assert_eq!(&back, v);
    Ok(())
}

/// The JSON form is an object whose `type` is the message's wire name.
fn type_tag<T: Serialize>(v: &T) -> String {
    let value = serde_json::to_value(v).expect("serialises");
    value["type"]
        .as_str()
        .unwrap_or_else(|| panic!("no type tag in {value}"))
        .to_owned()
}

proptest! {
    #[test]
    fn native_client_messages_round_trip(m in client_msg()) {
        round_trip(&m)?;
        prop_assert_eq!(type_tag(&m), m.kind());
    }

    #[test]
    fn native_server_messages_round_trip(m in server_msg()) {
        round_trip(&m)?;
        prop_assert_eq!(type_tag(&m), m.kind());
    }

    #[test]
    fn seed_datagrams_round_trip(m in datagram()) {
        round_trip(&m)?;
        prop_assert_eq!(type_tag(&m), m.kind());
    }

    #[test]
    fn seed_server_messages_round_trip(m in seed_server_msg()) {
        round_trip(&m)?;
        prop_assert_eq!(type_tag(&m), m.kind());
    }

    #[test]
    fn seed_client_messages_round_trip(m in seed_client_msg()) {
        round_trip(&m)?;
        prop_assert_eq!(type_tag(&m), m.kind());
    }

    /// The bare greeting struct too, outside its enum.
    #[test]
    fn server_status_round_trips_and_omits_absent_fields(s in server_status()) {
        round_trip(&s)?;
        let value = serde_json::to_value(&s).unwrap();
        let keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
        prop_assert_eq!(keys.contains(&"queue_position"), s.queue_position.is_some());
        prop_assert_eq!(keys.contains(&"filesync"), s.filesync.is_some());
    }

    /// The documentation's name for the greeting, `SERVER_STATUS`, reads as the same value.
    #[test]
    fn server_status_alias_decodes(s in server_status()) {
        let msg = seed::ServerMsg::Status(s);
        let json = serde_json::to_string(&msg).unwrap();
        let aliased = json.replacen(
            r#"{"type":"SERVER_STATUS_MESSAGE""#,
            r#"{"type":"SERVER_STATUS""#,
            1,
        );
        prop_assert_ne!(&aliased, &json);
        let back: seed::ServerMsg = serde_json::from_str(&aliased).unwrap();
        prop_assert_eq!(&back, &msg);
        // Written back, it carries the name the reference code requires.
        prop_assert_eq!(serde_json::to_string(&back).unwrap(), json);
    }

    /// Seed timestamps print `.ffffff` only when the microseconds are not zero.
    #[test]
    fn seed_time_text_form(t in seed_time()) {
        use chrono::Timelike;
        let s = serde_json::to_string(&t).unwrap();
        prop_assert_eq!(s.contains('.'), t.0.nanosecond() != 0, "{}", s);
        prop_assert!(!s.contains('Z') && !s.contains('+'), "{}", s);
    }
}

/// Each variant strategy yields its own variant, and together they cover the enum.
#[test]
fn strategies_cover_every_variant() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let client = client_msg_variants();
    assert_eq!(client.len(), CLIENT_VARIANTS);
    for (i, s) in client.iter().enumerate() {
        let m = s.new_tree(&mut runner).unwrap().current();
        assert_eq!(m.index() as usize, i, "{m:?}");
    }
    let server = server_msg_variants();
    assert_eq!(server.len(), SERVER_VARIANTS);
    for (i, s) in server.iter().enumerate() {
        let m = s.new_tree(&mut runner).unwrap().current();
        assert_eq!(m.index() as usize, i, "{m:?}");
    }
}

// ---------------------------------------------------------------------------------------
// The original's documented JSON, byte for byte
// ---------------------------------------------------------------------------------------

/// Decodes `wire` as `T` and checks that it re-encodes to exactly `wire` (compact JSON).
fn byte_exact<T>(wire: &str) -> T
where
    T: Serialize + DeserializeOwned + Debug,
{
    let v: T = serde_json::from_str(wire).unwrap_or_else(|e| panic!("{wire}: {e}"));
    assert_eq!(
        serde_json::to_string(&v).unwrap(),
        wire,
        "re-encoding {v:?}"
    );
    v
}

fn path(s: &str) -> RelPath {
    RelPath::parse(s).unwrap()
}

fn seed_time_of(s: &str) -> SeedTime {
    SeedTime::parse(s).unwrap()
}

#[test]
fn documented_discovery_datagrams() {
    assert_eq!(
        byte_exact::<seed::Datagram>(r#"{"type":"DISCOVER"}"#),
        seed::Datagram::Discover(seed::Discover {})
    );
    assert_eq!(
        byte_exact::<seed::Datagram>(r#"{"type":"OFFER","port":9000}"#),
        seed::Datagram::Offer(seed::Offer { port: 9000 })
    );
}

#[test]
fn documented_greetings() {
    for (wire, status) in [
        (
            r#"{"type":"SERVER_STATUS_MESSAGE","status":"READY"}"#,
            Status::Ready,
        ),
        (
            r#"{"type":"SERVER_STATUS_MESSAGE","status":"BUSY"}"#,
            Status::Busy,
        ),
    ] {
        let expected = seed::ServerMsg::Status(ServerStatus {
            status,
            queue_position: None,
            filesync: None,
        });
        assert_eq!(byte_exact::<seed::ServerMsg>(wire), expected);
        // The documented name reads the same.
        let documented = wire.replace("SERVER_STATUS_MESSAGE", "SERVER_STATUS");
        assert_eq!(
            serde_json::from_str::<seed::ServerMsg>(&documented).unwrap(),
            expected
        );
    }
}

#[test]
fn server_status_without_extras_has_exactly_the_original_shape() {
    let msg = seed::ServerMsg::Status(ServerStatus {
        status: Status::Ready,
        queue_position: None,
        filesync: None,
    });
    assert_eq!(
        serde_json::to_string(&msg).unwrap(),
        r#"{"type":"SERVER_STATUS_MESSAGE","status":"READY"}"#
    );
    let value = serde_json::to_value(&msg).unwrap();
    let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    // The bare struct, as the greeting codec may write it.
    let bare = ServerStatus {
        status: Status::Busy,
        queue_position: None,
        filesync: None,
    };
    assert_eq!(
        serde_json::to_string(&bare).unwrap(),
        r#"{"status":"BUSY"}"#
    );
}

#[test]
fn server_status_with_extras_has_a_stable_shape() {
    let msg = seed::ServerMsg::Status(ServerStatus {
        status: Status::Busy,
        queue_position: Some(3),
        filesync: Some(NativeOffer {
            versions: vec![1],
            encodings: vec![Encoding::Postcard, Encoding::Json],
            auth: true,
        }),
    });
    let wire = r#"{"type":"SERVER_STATUS_MESSAGE","status":"BUSY","queue_position":3,"filesync":{"versions":[1],"encodings":["postcard","json"],"auth":true}}"#;
    assert_eq!(byte_exact::<seed::ServerMsg>(wire), msg);
}

#[test]
fn documented_client_files_info() {
    let with_id = r#"{"type":"CLIENT_FILES_INFO","client_id":"a","files":[{"name":"x.txt","path":"dir/x.txt","last_mod":"2025-05-06T14:23:00.123456"}]}"#;
    let files = vec![seed::FileInfo {
        name: "x.txt".into(),
        path: path("dir/x.txt"),
        last_mod: seed_time_of("2025-05-06T14:23:00.123456"),
    }];
    assert_eq!(
        byte_exact::<seed::ClientMsg>(with_id),
        seed::ClientMsg::FilesInfo(seed::ClientFilesInfo {
            client_id: Some(ClientId::parse("a").unwrap()),
            files: files.clone(),
        })
    );
    let null_id = with_id.replace(r#""client_id":"a""#, r#""client_id":null"#);
    assert_eq!(
        byte_exact::<seed::ClientMsg>(&null_id),
        seed::ClientMsg::FilesInfo(seed::ClientFilesInfo {
            client_id: None,
            files,
        })
    );
}

#[test]
fn documented_tasks_file_header_and_next_sync() {
    assert_eq!(
        byte_exact::<seed::ServerMsg>(r#"{"type":"TASKS","files_to_send":["dir/x.txt"]}"#),
        seed::ServerMsg::Tasks(seed::Tasks {
            files_to_send: vec![path("dir/x.txt")]
        })
    );
    for last_mod in ["2025-05-06T14:23:00.123456", "2025-05-06T14:23:00"] {
        let wire = format!(
            r#"{{"type":"FILE_HEADER","name":"x.txt","path":"dir/x.txt","size":2048,"last_mod":"{last_mod}"}}"#
        );
        assert_eq!(
            byte_exact::<seed::ClientMsg>(&wire),
            seed::ClientMsg::FileHeader(seed::FileHeader {
                name: "x.txt".into(),
                path: path("dir/x.txt"),
                size: 2048,
                last_mod: seed_time_of(last_mod),
            })
        );
    }
    assert_eq!(
        byte_exact::<seed::ServerMsg>(
            r#"{"type":"NEXT_SYNC","time":"2025-05-07T16:30:00.123456"}"#
        ),
        seed::ServerMsg::NextSync(seed::NextSync {
            time: seed_time_of("2025-05-07T16:30:00.123456")
        })
    );
}

/// `TASKS` and `FILE_HEADER` end in `\n` on the wire; the others do not.
#[test]
fn seed_newlines_on_the_wire() {
    use bytes::BytesMut;
    use filesync_core::codec::json_stream::encode_seed;
    let mut dst = BytesMut::new();
    let tasks = seed::ServerMsg::Tasks(seed::Tasks {
        files_to_send: vec![path("dir/x.txt")],
    });
    encode_seed(&tasks, true, &mut dst);
    assert_eq!(
        &dst[..],
        b"{\"type\":\"TASKS\",\"files_to_send\":[\"dir/x.txt\"]}\n"
    );
    let mut dst = BytesMut::new();
    let next = seed::ServerMsg::NextSync(seed::NextSync {
        time: seed_time_of("2025-05-07T16:30:00"),
    });
    encode_seed(&next, false, &mut dst);
    assert_eq!(
        &dst[..],
        b"{\"type\":\"NEXT_SYNC\",\"time\":\"2025-05-07T16:30:00\"}"
    );
}

/// The reference peers ignore unknown fields and do not care where `type` sits.
#[test]
fn tolerant_reading() {
    let m: seed::Datagram =
        serde_json::from_str(r#"{"port":9000,"type":"OFFER","x":[1]}"#).unwrap();
    assert_eq!(m, seed::Datagram::Offer(seed::Offer { port: 9000 }));
    let m: seed::ServerMsg =
        serde_json::from_str(r#"{"status":"READY","type":"SERVER_STATUS","queue_position":null}"#)
            .unwrap();
    assert_eq!(
        m,
        seed::ServerMsg::Status(ServerStatus {
            status: Status::Ready,
            queue_position: None,
            filesync: None
        })
    );
}

/// Values a peer must not get past the types: escaping paths, bad ids, offsets.
#[test]
fn invalid_values_are_refused_when_decoding() {
    for bad in [
        r#"{"type":"TASKS","files_to_send":["../etc/passwd"]}"#,
        r#"{"type":"TASKS","files_to_send":["/abs"]}"#,
        r#"{"type":"NEXT_SYNC","time":"2025-05-07T16:30:00Z"}"#,
        r#"{"type":"NEXT_SYNC","time":"2025-05-07T16:30:00+00:00"}"#,
        r#"{"type":"SERVER_STATUS_MESSAGE","status":"MAYBE"}"#,
        r#"{"type":"SERVER_STATUS_MESSAGE"}"#,
        r#"{"type":"NOPE"}"#,
        r#"{"status":"READY"}"#,
    ] {
        assert!(
            serde_json::from_str::<seed::ServerMsg>(bad).is_err(),
            "accepted {bad}"
        );
    }
    let bad_id = r#"{"type":"CLIENT_FILES_INFO","client_id":"../x","files":[]}"#;
    assert!(serde_json::from_str::<seed::ClientMsg>(bad_id).is_err());
    // postcard validates too: a path string of "..".
    let tasks = seed::Tasks {
        files_to_send: vec![path("ab")],
    };
    let mut bytes = postcard::to_allocvec(&seed::ServerMsg::Tasks(tasks)).unwrap();
    let n = bytes.len();
    bytes[n - 2..].copy_from_slice(b"..");
    assert!(postcard::from_bytes::<seed::ServerMsg>(&bytes).is_err());
    // An MTime with nanos of 1e9 or more is out of range. This one is accepted today:
    // see `mtime_with_nanos_out_of_range_is_refused` below.
}

/// `MTime`'s fields are public and its `Deserialize` is derived, so a peer can send
/// `nanos >= 1e9`, which `MTime::new` refuses and the type documents as impossible. Such a
/// value compares unequal to the same instant normalised (`{0, 1e9}` vs `{1, 0}`), so the
/// quick check would re-send the file on every sync, and it reaches the store unchecked.
#[test]
fn mtime_with_nanos_out_of_range_is_refused() {
    let json = r#"{"secs":0,"nanos":1000000000}"#;
    assert!(serde_json::from_str::<MTime>(json).is_err());
    let bytes = postcard::to_allocvec(&(0i64, 2_000_000_000u32)).unwrap();
    assert!(postcard::from_bytes::<MTime>(&bytes).is_err());
}

// ---------------------------------------------------------------------------------------
// The design trap of internally tagged enums
// ---------------------------------------------------------------------------------------

/// serde's `#[serde(tag = "type")]` needs `deserialize_any`, which postcard (not
/// self-describing) cannot offer: such an enum *serialises* to postcard but never decodes.
/// That is why `wire_enum!` switches representation on `is_human_readable()`.
#[test]
fn postcard_cannot_decode_internally_tagged_enums_but_ours_round_trip() {
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type")]
    enum Naive {
        #[serde(rename = "OFFER")]
        Offer { port: u16 },
    }
    let naive = Naive::Offer { port: 9000 };
    assert_eq!(
        serde_json::to_string(&naive).unwrap(),
        r#"{"type":"OFFER","port":9000}"#
    );
    let bytes = postcard::to_allocvec(&naive).expect("serialising works");
    let err = postcard::from_bytes::<Naive>(&bytes).unwrap_err();
    assert_eq!(err, postcard::Error::WontImplement);

    // Same JSON shape, but postcard decodes.
    let ours = seed::Datagram::Offer(seed::Offer { port: 9000 });
    assert_eq!(
        serde_json::to_string(&ours).unwrap(),
        r#"{"type":"OFFER","port":9000}"#
    );
    let bytes = postcard::to_allocvec(&ours).unwrap();
    assert_eq!(
        bytes,
        [1, 0xa8, 0x46],
        "variant index, then the varint port"
    );
    assert_eq!(
        postcard::from_bytes::<seed::Datagram>(&bytes).unwrap(),
        ours
    );

    let hello = ClientMsg::Hello(Hello {
        version: 1,
        agent: "t".into(),
        client_id: None,
        capabilities: vec![],
        allow_empty: false,
        max_delete: Some(3),
    });
    let bytes = postcard::to_allocvec(&hello).unwrap();
    assert_eq!(postcard::from_bytes::<ClientMsg>(&bytes).unwrap(), hello);
}

/// postcard identifies variants by position (`spec/PROTOCOL.md`, "Versioning"): pin the
/// first byte of each so that a reordering is caught.
#[test]
fn postcard_variant_indices_are_wire_order() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for s in client_msg_variants() {
        let m = s.new_tree(&mut runner).unwrap().current();
        let bytes = postcard::to_allocvec(&m).unwrap();
        assert_eq!(usize::from(bytes[0]), m.index() as usize, "{m:?}");
    }
    for s in server_msg_variants() {
        let m = s.new_tree(&mut runner).unwrap().current();
        let bytes = postcard::to_allocvec(&m).unwrap();
        assert_eq!(usize::from(bytes[0]), m.index() as usize, "{m:?}");
    }
}

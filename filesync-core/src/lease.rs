//! Leases on client ids in etcd, so that several servers sharing one archive run at most
//! one session per client id at a time.
//!
//! Every server of the archive points at the same etcd cluster (`--lease etcd://HOST:PORT[,…]`).
//! Before a session a server [acquires](EtcdLeases::acquire) the client's id; the
//! [`SessionLease`] it gets is kept alive on a tokio task while the session runs and revoked
//! when it is dropped. Nothing here is home-made consensus: the atomic step is etcd's own, a
//! transaction that puts the key only if it does not exist (`create_revision == 0`),
//! attached to an etcd lease with a TTL, so the key vanishes by itself when its server stops
//! renewing it.
//!
//! The requests go to etcd's v3 API through its JSON gateway (the grpc-gateway that etcd
//! serves on its client URLs under `/v3/`), as plain HTTP:
//!
//! | step | request | what it does |
//! | --- | --- | --- |
//! | grant | `POST /v3/lease/grant {"TTL":"10"}` | a new etcd lease; etcd may raise the TTL to its minimum (2 s with the default election timeout) |
//! | take | `POST /v3/kv/txn` | if `create_revision(key) == 0`, put `key = holder` with the lease, else read the key |
//! | renew | `POST /v3/lease/keepalive {"ID":"…"}` | every TTL/3; an answer without `TTL` means the lease is gone |
//! | release | `POST /v3/lease/revoke {"ID":"…"}` | deletes the lease and with it the key |
//!
//! Keys and values are base64 in the JSON, 64-bit integers are decimal strings (proto3's
//! JSON mapping), and fields that hold their default value (`false`, `0`, empty) are left
//! out of etcd's answers. The etcd key of a client id is `<prefix>/sessions/<id>`
//! ([`DEFAULT_PREFIX`] is `filesync`), its value the holder's name (e.g. `host:pid`), so
//! `etcdctl get --prefix filesync/sessions/` lists the running sessions and their servers.
//!
//! The module has a pure part (URL parsing, key naming, the JSON shapes of requests and
//! answers and their interpretation), tested without etcd, and the I/O part
//! ([`EtcdLeases`], [`SessionLease`]), tested against a real etcd process.
//!
//! # Example
//!
//! A server connects once at start, then takes the client's id for each session and runs
//! the session only while the lease holds:
//!
//! ```no_run
//! use std::time::Duration;
//! use filesync_core::lease::{Acquired, EtcdLeases, LeaseError};
//!
//! # async fn run_session() -> Result<(), LeaseError> { Ok(()) }
//! # async fn serve() -> Result<(), LeaseError> {
//! let holder = format!("{}:{}", "host-a", std::process::id());
//! let leases = EtcdLeases::connect("etcd://etcd-1:2379,etcd-2:2379", Duration::from_secs(10), holder)
//!     .await?; // etcd unreachable: refuse to start
//! // For each session, once the client id is known (an Err: refuse the session):
//! match leases.acquire("lab-7").await? {
//!     Acquired::Taken { holder } => {
//!         // Refuse: another session of lab-7 runs, on `holder`; the client retries later.
//!     }
//!     Acquired::Held(lease) => {
//!         let lost = lease.lost();
//!         tokio::select! {
//!             result = run_session() => {
//!                 lease.release().await?; // or just drop it
//!                 result?;
//!             }
//!             // Stop at once: another server may take the client after the TTL.
//!             lost = lost => return Err(lost.into()),
//!         }
//!     }
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::chain;

/// The key prefix of [`EtcdLeases::connect`]: client `c1`'s key is `filesync/sessions/c1`.
pub const DEFAULT_PREFIX: &str = "filesync";

/// The longest TTL etcd grants, in seconds (etcd's `MaxLeaseTTL`).
pub const MAX_TTL_SECS: u64 = 9_000_000_000;

/// What can go wrong talking to etcd, or with a lease once held.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// The `--lease` URL is not `etcd://HOST:PORT[,HOST:PORT…]`.
    #[error("bad etcd URL {url:?}: {reason} (expected etcd://HOST:PORT[,HOST:PORT…])")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting or argument was refused before asking etcd (zero TTL, empty holder or
    /// key, a `/` in a key).
    #[error("{0}")]
    BadSetting(String),
    /// No endpoint answered: each was tried once, in order, and each failed to connect,
    /// timed out, or answered that it cannot serve (HTTP 502, 503 or 504, as etcd does
    /// without a leader).
    #[error("etcd unreachable at {}", list(.tried))]
    Unreachable {
        /// Each endpoint tried and why it failed, in the order tried.
        tried: Vec<EndpointFailure>,
    },
    /// An endpoint answered with an error (not one that another endpoint might not have).
    #[error("etcd at {endpoint} refused {operation}: {message} (HTTP {status})")]
    Refused {
        /// The endpoint, `HOST:PORT`.
        endpoint: String,
        /// The request: `grant`, `txn`, `keepalive`, `revoke` or `range`.
        operation: &'static str,
        /// The HTTP status.
        status: u16,
        /// etcd's message (e.g. `etcdserver: requested lease not found`).
        message: String,
    },
    /// An endpoint answered 200 with something that is not the expected JSON (not etcd,
    /// or an etcd whose gateway speaks another version).
    #[error("etcd at {endpoint} gave an unexpected answer to {operation}: {reason}")]
    BadAnswer {
        /// The endpoint, `HOST:PORT`.
        endpoint: String,
        /// The request: `grant`, `txn`, `keepalive`, `revoke` or `range`.
        operation: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// A held lease was lost (see [`SessionLease::lost`]).
    #[error(transparent)]
    Lost(#[from] LeaseLost),
    /// A lock ([`EtcdLeases::lock`]) was still held by another server when the wait ran
    /// out.
    #[error("{key} is still held by {holder} after {wait:?}")]
    Busy {
        /// The etcd key of the lock.
        key: String,
        /// Who holds it.
        holder: String,
        /// How long this server waited.
        wait: Duration,
    },
}

/// One endpoint's failure within [`LeaseError::Unreachable`]; shown as `HOST:PORT (why)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointFailure {
    /// The endpoint, `HOST:PORT`.
    pub endpoint: String,
    /// Why: e.g. `cannot connect: Connection refused (os error 111)`, `no answer within
    /// 3.3 s`, `HTTP 503: etcdserver: no leader`.
    pub error: String,
}

impl fmt::Display for EndpointFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.endpoint, self.error)
    }
}

fn list(tried: &[EndpointFailure]) -> String {
    let parts: Vec<String> = tried.iter().map(ToString::to_string).collect();
    parts.join(", ")
}

/// A held lease that ended while its session ran: what [`SessionLease::lost`] resolves to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lease on {key} lost: {reason}")]
pub struct LeaseLost {
    /// The etcd key, `<prefix>/sessions/<id>`.
    pub key: String,
    /// Why.
    pub reason: LostReason,
}

/// Why a lease was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LostReason {
    /// etcd answered a keepalive saying the lease no longer exists (it expired, or was
    /// revoked by someone else, e.g. `etcdctl lease revoke`).
    Expired,
    /// No keepalive reached etcd for four fifths of the TTL, counted from the sending of
    /// the last successful one; etcd may let the lease expire a fifth of the TTL later.
    Unreachable {
        /// The last keepalive's failure.
        last_error: String,
    },
    /// The [`SessionLease`] was dropped or released; only a [`SessionLease::lost`] future
    /// that outlived it sees this.
    Released,
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LostReason::Expired => write!(f, "etcd says the lease expired"),
            LostReason::Unreachable { last_error } => {
                write!(f, "no keepalive reached etcd in time, so etcd may let the lease go ({last_error})")
            }
            LostReason::Released => write!(f, "released"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The pure part: URLs, keys, TTLs, the JSON of requests and answers.
// ---------------------------------------------------------------------------------------

/// One etcd member's client address, as written in the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    /// A name, an IPv4 address, or an IPv6 address in brackets.
    host: String,
    port: u16,
}

impl Endpoint {
    fn url(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.host, self.port)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Checks a `--lease` URL (`etcd://HOST:PORT[,HOST:PORT…]`) without reaching etcd.
///
/// # Errors
///
/// [`LeaseError::BadUrl`], saying what is wrong, as [`EtcdLeases::connect`] would.
pub fn check_url(url: &str) -> Result<(), LeaseError> {
    parse_url(url).map(|_| ())
}

/// Parses `etcd://HOST:PORT[,HOST:PORT…]`: HOST a DNS name, an IPv4 address or an IPv6
/// address in brackets, PORT 1–65535. No user, path, query or fragment.
fn parse_url(url: &str) -> Result<Vec<Endpoint>, LeaseError> {
    let bad = |reason: &str| LeaseError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("etcd") => rest,
        Some((scheme, _)) => return Err(bad(&format!("scheme {scheme:?} is not etcd"))),
        None => return Err(bad("no etcd:// scheme")),
    };
    if let Some(c) = rest.chars().find(|c| matches!(c, '/' | '?' | '#' | '@')) {
        return Err(bad(&format!("{c:?} not allowed: only HOST:PORT endpoints")));
    }
    let mut endpoints = Vec::new();
    for (i, part) in rest.split(',').enumerate() {
        let n = i + 1;
        if part.is_empty() {
            return Err(bad(&format!("endpoint {n} is empty")));
        }
        let (host, port) = if let Some(inner) = part.strip_prefix('[') {
            let (addr, after) = inner
                .split_once(']')
                .ok_or_else(|| bad(&format!("endpoint {n}: no ] after the IPv6 address")))?;
            addr.parse::<Ipv6Addr>()
                .map_err(|_| bad(&format!("endpoint {n}: {addr:?} is not an IPv6 address")))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| bad(&format!("endpoint {n}: no :PORT")))?;
            (format!("[{addr}]"), port)
        } else {
            let (host, port) = part
                .rsplit_once(':')
                .ok_or_else(|| bad(&format!("endpoint {n} ({part:?}) has no :PORT")))?;
            if host.contains(':') {
                return Err(bad(&format!(
                    "endpoint {n}: an IPv6 address goes in brackets, [{host}]:{port}"
                )));
            }
            let name_ok = host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
            if host.is_empty() || !name_ok {
                return Err(bad(&format!("endpoint {n}: {host:?} is not a host name")));
            }
            (host.to_owned(), port)
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => p,
            _ => return Err(bad(&format!("endpoint {n}: port {port:?} is not 1-65535"))),
        };
        endpoints.push(Endpoint { host, port });
    }
    Ok(endpoints)
}

/// The etcd key of `key` under `prefix`: `<prefix>/sessions/<key>`.
fn etcd_key(prefix: &str, key: &str) -> String {
    format!("{prefix}/sessions/{key}")
}

/// A TTL in whole seconds as etcd takes it: rounded up, at least 1, at most [`MAX_TTL_SECS`].
fn ttl_secs(ttl: Duration) -> Result<i64, LeaseError> {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    if secs == 0 || secs > MAX_TTL_SECS {
        return Err(LeaseError::BadSetting(format!(
            "lease TTL {ttl:?} is not between 1 s and {MAX_TTL_SECS} s"
        )));
    }
    i64::try_from(secs).map_err(|_| LeaseError::BadSetting(format!("lease TTL {ttl:?}")))
}

/// How often a lease of `ttl` is renewed: a third of it, so two keepalives in a row may
/// fail before it expires.
fn keepalive_period(ttl: Duration) -> Duration {
    ttl / 3
}

/// How long before etcd may expire a lease its holder declares it lost, if renewing
/// fails: a fifth of the TTL, so that the session has stopped writing, and aborted what
/// it had in flight, before another server can take the key.
fn fence_margin(ttl: Duration) -> Duration {
    ttl / 5
}

/// How soon a failed keepalive is tried again: a tenth of the TTL, at least 100 ms.
fn retry_period(ttl: Duration) -> Duration {
    (ttl / 10).max(Duration::from_millis(100))
}

/// How long one request may take, per endpoint: a third of the TTL, within 1–5 s.
fn request_timeout(ttl: Duration) -> Duration {
    (ttl / 3).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

/// serde for proto3's int64: a decimal string out, a string or a number in.
mod int64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Int {
            Text(String),
            Number(i64),
        }
        match Int::deserialize(d)? {
            Int::Number(n) => Ok(n),
            Int::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// serde for proto3's bytes: standard base64 with padding.
mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// `LeaseGrantRequest`.
#[derive(Debug, Serialize)]
struct GrantRequest {
    #[serde(rename = "TTL", with = "int64")]
    ttl: i64,
}

/// `LeaseGrantResponse`.
#[derive(Debug, Deserialize)]
struct GrantResponse {
    #[serde(rename = "ID", with = "int64", default)]
    id: i64,
    #[serde(rename = "TTL", with = "int64", default)]
    ttl: i64,
    #[serde(default)]
    error: String,
}

/// `LeaseKeepAliveRequest` and `LeaseRevokeRequest`.
#[derive(Debug, Serialize)]
struct LeaseIdRequest {
    #[serde(rename = "ID", with = "int64")]
    id: i64,
}

/// `TxnRequest`.
#[derive(Debug, Serialize)]
struct TxnRequest {
    compare: Vec<Compare>,
    success: Vec<RequestOp>,
    failure: Vec<RequestOp>,
}

/// `Compare`, only the `create_revision` target.
#[derive(Debug, Serialize)]
struct Compare {
    #[serde(with = "b64")]
    key: Vec<u8>,
    target: &'static str,
    result: &'static str,
    #[serde(with = "int64")]
    create_revision: i64,
}

/// `RequestOp`: a oneof, one field set.
#[derive(Debug, Serialize)]
enum RequestOp {
    #[serde(rename = "request_put")]
    Put(PutRequest),
    #[serde(rename = "request_range")]
    Range(RangeRequest),
}

/// `PutRequest`.
#[derive(Debug, Serialize)]
struct PutRequest {
    #[serde(with = "b64")]
    key: Vec<u8>,
    #[serde(with = "b64")]
    value: Vec<u8>,
    #[serde(with = "int64")]
    lease: i64,
}

/// `RangeRequest`, one key.
#[derive(Debug, Serialize)]
struct RangeRequest {
    #[serde(with = "b64")]
    key: Vec<u8>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    count_only: bool,
}

/// `ResponseHeader`: required in every unary answer, so an HTTP server that is not etcd
/// is not mistaken for one.
#[derive(Debug, Deserialize)]
struct Header {
    #[serde(with = "int64", default)]
    revision: i64,
}

/// `TxnResponse`.
#[derive(Debug, Deserialize)]
struct TxnResponse {
    header: Header,
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    responses: Vec<ResponseOp>,
}

/// `ResponseOp`: only the range answer is read.
#[derive(Debug, Deserialize)]
struct ResponseOp {
    #[serde(default)]
    response_range: Option<RangeResponse>,
}

/// `RangeResponse`.
#[derive(Debug, Deserialize)]
struct RangeResponse {
    #[serde(default)]
    kvs: Vec<KeyValue>,
}

/// A range answer with only its header read (the probe of [`EtcdLeases::connect`], revoke).
#[derive(Debug, Deserialize)]
struct HeaderOnly {
    header: Header,
}

/// `mvccpb.KeyValue`.
#[derive(Debug, Deserialize)]
struct KeyValue {
    #[serde(with = "b64", default)]
    value: Vec<u8>,
    #[serde(with = "int64", default)]
    lease: i64,
    #[serde(with = "int64", default)]
    create_revision: i64,
}

/// One message of the keepalive stream: `{"result": LeaseKeepAliveResponse}` or
/// `{"error": …}`.
#[derive(Debug, Deserialize)]
struct KeepAliveMessage {
    #[serde(default)]
    result: Option<KeepAliveResult>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// `LeaseKeepAliveResponse`.
#[derive(Debug, Deserialize)]
struct KeepAliveResult {
    #[serde(rename = "TTL", with = "int64", default)]
    ttl: i64,
}

/// The gateway's error body on a non-200 answer: `{"error":…,"message":…,"code":N}`.
#[derive(Debug, Deserialize)]
struct GatewayError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    error: String,
}

/// The transaction that takes `etcd_key` for `holder` under lease `lease` if nobody has
/// it, and otherwise reads it.
fn take_txn(etcd_key: &str, holder: &str, lease: i64) -> TxnRequest {
    let key = etcd_key.as_bytes().to_vec();
    TxnRequest {
        compare: vec![Compare {
            key: key.clone(),
            target: "CREATE",
            result: "EQUAL",
            create_revision: 0,
        }],
        success: vec![RequestOp::Put(PutRequest {
            key: key.clone(),
            value: holder.as_bytes().to_vec(),
            lease,
        })],
        failure: vec![RequestOp::Range(RangeRequest {
            key,
            count_only: false,
        })],
    }
}

/// What the transaction of [`take_txn`] says.
#[derive(Debug, PartialEq, Eq)]
enum TakeOutcome {
    /// The key is ours, under our lease, created at etcd revision `revision`: the put was
    /// done, or the key already had our lease (an earlier try of this transaction was done
    /// but its answer lost, a timeout then failover).
    Taken {
        /// The key's `create_revision`.
        revision: i64,
    },
    /// The key exists, under another lease: `holder` is its value.
    HeldBy(String),
}

/// Reads the answer to [`take_txn`] made with lease `lease`.
fn take_outcome(answer: &TxnResponse, lease: i64) -> Result<TakeOutcome, String> {
    if answer.succeeded {
        return Ok(TakeOutcome::Taken {
            revision: answer.header.revision,
        });
    }
    let kv = answer
        .responses
        .first()
        .and_then(|r| r.response_range.as_ref())
        .and_then(|r| r.kvs.first())
        .ok_or("the compare failed but the key was not in the answer")?;
    if kv.lease == lease {
        Ok(TakeOutcome::Taken {
            revision: kv.create_revision,
        })
    } else {
        Ok(TakeOutcome::HeldBy(
            String::from_utf8_lossy(&kv.value).into_owned(),
        ))
    }
}

/// The TTL left, in seconds, from a keepalive stream's body; 0 if etcd no longer knows the
/// lease. `Err` for an `{"error":…}` message or a body that is not one.
fn keepalive_ttl(body: &[u8]) -> Result<i64, String> {
    let first = serde_json::Deserializer::from_slice(body)
        .into_iter::<KeepAliveMessage>()
        .next()
        .ok_or("an empty keepalive stream")?
        .map_err(|e| format!("not a keepalive message: {e}"))?;
    match (first.result, first.error) {
        (Some(result), _) => Ok(result.ttl),
        (None, Some(error)) => Err(format!("keepalive error {error}")),
        (None, None) => Err("a keepalive message without result".to_owned()),
    }
}

/// etcd's message in a non-200 answer, or the body itself if it is not the gateway's JSON.
fn gateway_message(body: &[u8]) -> String {
    match serde_json::from_slice::<GatewayError>(body) {
        Ok(e) if !e.message.is_empty() => e.message,
        Ok(e) if !e.error.is_empty() => e.error,
        _ => String::from_utf8_lossy(body)
            .trim()
            .chars()
            .take(200)
            .collect(),
    }
}

fn check_key(key: &str) -> Result<(), LeaseError> {
    if key.is_empty() || key.contains('/') {
        return Err(LeaseError::BadSetting(format!(
            "lease key {key:?} must be non-empty and have no /"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The I/O part.
// ---------------------------------------------------------------------------------------

/// An HTTP client for the gateway: plain HTTP (a TLS setup with no roots is given only
/// because reqwest wants one), no proxy from the environment, `timeout` per request.
fn http_client(timeout: Duration) -> Result<reqwest::Client, LeaseError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LeaseError::BadSetting(format!("TLS setup for the etcd client: {e}")))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .connect_timeout(timeout)
        .timeout(timeout)
        .build()
        .map_err(|e| LeaseError::BadSetting(format!("the etcd HTTP client: {}", chain(&e))))
}

/// Why a request to one endpoint failed at the transport, short: the innermost cause
/// (`Connection refused (os error 111)`) or the timeout.
fn transport_error(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {:.1} s", timeout.as_secs_f64());
    }
    let mut inner: &dyn std::error::Error = e;
    while let Some(s) = inner.source() {
        inner = s;
    }
    if e.is_connect() {
        format!("cannot connect: {inner}")
    } else {
        chain(e)
    }
}

/// The endpoints and the HTTP client, shared by the [`EtcdLeases`] and the keepalive
/// tasks of its leases.
#[derive(Debug)]
struct Gateway {
    endpoints: Vec<Endpoint>,
    http: reqwest::Client,
    timeout: Duration,
    /// The endpoint that answered last: the next request starts there.
    preferred: AtomicUsize,
}

impl Gateway {
    /// POSTs `request` to `path` on each endpoint in turn, from the preferred one, until
    /// one answers; returns its 200 body and the endpoint's name.
    async fn post(
        &self,
        operation: &'static str,
        path: &str,
        request: &impl Serialize,
    ) -> Result<(bytes::Bytes, String), LeaseError> {
        let start = self.preferred.load(Ordering::Relaxed);
        let n = self.endpoints.len();
        let mut tried = Vec::new();
        for i in 0..n {
            let index = (start + i) % n;
            let endpoint = &self.endpoints[index];
            let failure = |error: String| EndpointFailure {
                endpoint: endpoint.to_string(),
                error,
            };
            let answer = match self
                .http
                .post(endpoint.url(path))
                .json(request)
                .send()
                .await
            {
                Ok(answer) => answer,
                Err(e) => {
                    tried.push(failure(transport_error(&e, self.timeout)));
                    continue;
                }
            };
            let status = answer.status();
            let body = match answer.bytes().await {
                Ok(body) => body,
                Err(e) => {
                    tried.push(failure(transport_error(&e, self.timeout)));
                    continue;
                }
            };
            if status.is_success() {
                if i > 0 {
                    tracing::warn!("etcd: {} did not answer, {endpoint} did", list(&tried));
                }
                self.preferred.store(index, Ordering::Relaxed);
                return Ok((body, endpoint.to_string()));
            }
            let message = gateway_message(&body);
            if matches!(status.as_u16(), 502..=504) {
                tried.push(failure(format!("HTTP {}: {message}", status.as_u16())));
                continue;
            }
            return Err(LeaseError::Refused {
                endpoint: endpoint.to_string(),
                operation,
                status: status.as_u16(),
                message,
            });
        }
        Err(LeaseError::Unreachable { tried })
    }

    /// [`post`](Self::post), then parses the JSON answer; returns it with the endpoint
    /// that gave it.
    async fn call<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        path: &str,
        request: &impl Serialize,
    ) -> Result<(T, String), LeaseError> {
        let (body, endpoint) = self.post(operation, path, request).await?;
        match serde_json::from_slice(&body) {
            Ok(answer) => Ok((answer, endpoint)),
            Err(e) => Err(LeaseError::BadAnswer {
                endpoint,
                operation,
                reason: format!("{e}: {}", String::from_utf8_lossy(&body)),
            }),
        }
    }

    /// A new etcd lease: its id and granted TTL in seconds.
    async fn grant(&self, ttl_secs: i64) -> Result<(i64, i64), LeaseError> {
        let (body, endpoint) = self
            .post("grant", "/v3/lease/grant", &GrantRequest { ttl: ttl_secs })
            .await?;
        let bad = |reason: String| LeaseError::BadAnswer {
            endpoint: endpoint.clone(),
            operation: "grant",
            reason,
        };
        let answer: GrantResponse =
            serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?;
        if !answer.error.is_empty() {
            return Err(LeaseError::Refused {
                endpoint,
                operation: "grant",
                status: 200,
                message: answer.error,
            });
        }
        if answer.id == 0 || answer.ttl <= 0 {
            return Err(bad(format!(
                "no lease id or TTL in {}",
                String::from_utf8_lossy(&body)
            )));
        }
        Ok((answer.id, answer.ttl))
    }

    /// One keepalive: the TTL left in seconds, 0 if the lease is gone.
    async fn keepalive(&self, id: i64) -> Result<i64, LeaseError> {
        let (body, endpoint) = self
            .post("keepalive", "/v3/lease/keepalive", &LeaseIdRequest { id })
            .await?;
        keepalive_ttl(&body).map_err(|reason| LeaseError::BadAnswer {
            endpoint,
            operation: "keepalive",
            reason,
        })
    }

    /// Revokes lease `id`, deleting its keys; a lease etcd no longer knows counts as
    /// revoked.
    async fn revoke(&self, id: i64) -> Result<(), LeaseError> {
        match self
            .call::<HeaderOnly>("revoke", "/v3/lease/revoke", &LeaseIdRequest { id })
            .await
        {
            Ok((HeaderOnly { .. }, _)) => Ok(()),
            Err(LeaseError::Refused { message, .. }) if message.contains("lease not found") => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// Leases on client ids in etcd, shared by every server of one archive.
///
/// Cheap to clone (the HTTP client and endpoints are shared). Needs a tokio runtime.
#[derive(Debug, Clone)]
pub struct EtcdLeases {
    gateway: Arc<Gateway>,
    ttl_secs: i64,
    prefix: String,
    holder: String,
}

impl EtcdLeases {
    /// Parses `url` (`etcd://HOST:PORT[,HOST:PORT…]`, the members' client addresses, plain
    /// HTTP) and checks that etcd answers, with a linearizable read (so a member without a
    /// leader does not count), trying the endpoints in order.
    ///
    /// `ttl` is the lease's time to live, rounded up to whole seconds (etcd counts in
    /// seconds; it also raises TTLs below its minimum, 2 s with default settings). `holder`
    /// names this server in etcd, so that [`Acquired::Taken`] can tell who has a client
    /// (e.g. `host:pid`). Keys go under [`DEFAULT_PREFIX`]; see [`with_prefix`](Self::with_prefix).
    ///
    /// # Errors
    ///
    /// [`LeaseError::BadUrl`] for anything but that form, [`LeaseError::BadSetting`] for a
    /// zero TTL or an empty holder, [`LeaseError::Unreachable`] naming each endpoint and why
    /// if none answers, [`LeaseError::Refused`] or [`LeaseError::BadAnswer`] if one answers
    /// but not as etcd does.
    pub async fn connect(
        url: &str,
        ttl: Duration,
        holder: String,
    ) -> Result<EtcdLeases, LeaseError> {
        let endpoints = parse_url(url)?;
        let ttl_secs = ttl_secs(ttl)?;
        if holder.is_empty() {
            return Err(LeaseError::BadSetting(
                "the lease holder's name is empty".into(),
            ));
        }
        let timeout = request_timeout(Duration::from_secs(ttl_secs.unsigned_abs()));
        let gateway = Gateway {
            endpoints,
            http: http_client(timeout)?,
            timeout,
            preferred: AtomicUsize::new(0),
        };
        let probe = RangeRequest {
            key: DEFAULT_PREFIX.as_bytes().to_vec(),
            count_only: true,
        };
        let (answer, endpoint) = gateway
            .call::<HeaderOnly>("range", "/v3/kv/range", &probe)
            .await?;
        tracing::debug!(
            "etcd answers at {endpoint}, revision {}",
            answer.header.revision
        );
        Ok(EtcdLeases {
            gateway: Arc::new(gateway),
            ttl_secs,
            prefix: DEFAULT_PREFIX.to_owned(),
            holder,
        })
    }

    /// The same leases under another key prefix (`<prefix>/sessions/<key>`), e.g. one per
    /// archive when one etcd serves several.
    ///
    /// # Errors
    ///
    /// [`LeaseError::BadSetting`] for an empty prefix or one that begins or ends with `/`.
    pub fn with_prefix(mut self, prefix: &str) -> Result<EtcdLeases, LeaseError> {
        if prefix.is_empty() || prefix.starts_with('/') || prefix.ends_with('/') {
            return Err(LeaseError::BadSetting(format!(
                "lease key prefix {prefix:?} must be non-empty, without / at either end"
            )));
        }
        prefix.clone_into(&mut self.prefix);
        Ok(self)
    }

    /// The etcd key that [`acquire`](Self::acquire) takes for `key`:
    /// `<prefix>/sessions/<key>`.
    pub fn etcd_key(&self, key: &str) -> String {
        etcd_key(&self.prefix, key)
    }

    /// The TTL asked of etcd, in whole seconds.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs.unsigned_abs())
    }

    /// This server's name as stored in its keys.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Takes the lease on `key` (a client id) for this holder, or tells who holds it.
    ///
    /// Grants an etcd lease, then in one transaction puts `<prefix>/sessions/<key>` =
    /// holder with that lease if the key does not exist (`create_revision == 0`), or reads
    /// it. Of any number of servers calling this at once for one key, exactly one gets
    /// [`Acquired::Held`]. When the key is taken, the new etcd lease is revoked again.
    /// Each request tries the endpoints in turn, from the one that answered last.
    ///
    /// Must be called within a tokio runtime: the returned lease's keepalive runs on it.
    ///
    /// # Errors
    ///
    /// [`LeaseError::BadSetting`] for an empty key or one with `/`;
    /// [`LeaseError::Unreachable`] if no endpoint answers (refuse the session: the client
    /// will come back); [`LeaseError::Refused`] or [`LeaseError::BadAnswer`] if etcd
    /// answers with an error or an unexpected answer.
    pub async fn acquire(&self, key: &str) -> Result<Acquired, LeaseError> {
        check_key(key)?;
        self.take(self.etcd_key(key)).await
    }

    /// Takes the lock `<prefix>/locks/<name>`, waiting while another server holds it
    /// (trying again every TTL/10) for at most `wait`: a short critical section among the
    /// servers, such as making their shared TLS key once. The lock is an etcd lease like a
    /// session's (kept alive, and freed by etcd if its server dies); release it with
    /// [`SessionLease::release`], or drop it.
    ///
    /// # Errors
    ///
    /// Those of [`acquire`](Self::acquire); [`LeaseError::Busy`] if another server still
    /// holds the lock after `wait`.
    pub async fn lock(&self, name: &str, wait: Duration) -> Result<SessionLease, LeaseError> {
        check_key(name)?;
        let key = format!("{}/locks/{name}", self.prefix);
        let started = Instant::now();
        loop {
            match self.take(key.clone()).await? {
                Acquired::Held(lease) => return Ok(lease),
                Acquired::Taken { holder } if started.elapsed() >= wait => {
                    return Err(LeaseError::Busy { key, holder, wait });
                }
                Acquired::Taken { .. } => tokio::time::sleep(retry_period(self.ttl())).await,
            }
        }
    }

    /// Takes `etcd_key` if no one holds it ([`acquire`](Self::acquire)'s work).
    async fn take(&self, etcd_key: String) -> Result<Acquired, LeaseError> {
        // Sent before the grant: the lease cannot expire in etcd before `granted + TTL`.
        let granted = Instant::now();
        let (id, ttl) = self.gateway.grant(self.ttl_secs).await?;
        let txn = take_txn(&etcd_key, &self.holder, id);
        let outcome = match self
            .gateway
            .call::<TxnResponse>("txn", "/v3/kv/txn", &txn)
            .await
        {
            Ok((answer, endpoint)) => {
                take_outcome(&answer, id).map_err(|reason| LeaseError::BadAnswer {
                    endpoint,
                    operation: "txn",
                    reason,
                })
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(TakeOutcome::Taken { revision }) => {
                let ttl = Duration::from_secs(ttl.unsigned_abs());
                tracing::debug!(
                    "etcd: took {etcd_key} at revision {revision} with lease {id:x}, TTL {ttl:?}"
                );
                Ok(Acquired::Held(SessionLease::start(
                    self.gateway.clone(),
                    etcd_key,
                    id,
                    revision,
                    ttl,
                    granted + ttl,
                )))
            }
            Ok(TakeOutcome::HeldBy(holder)) => {
                self.revoke_quietly(id).await;
                Ok(Acquired::Taken { holder })
            }
            Err(e) => {
                self.revoke_quietly(id).await;
                Err(e)
            }
        }
    }

    /// Revokes a lease that holds nothing; if that fails it expires after its TTL anyway.
    async fn revoke_quietly(&self, id: i64) {
        if let Err(e) = self.gateway.revoke(id).await {
            tracing::debug!("etcd: revoking unused lease {id:x}: {e}");
        }
    }
}

/// What [`EtcdLeases::acquire`] got.
#[derive(Debug)]
#[must_use = "dropping a held lease releases it at once"]
pub enum Acquired {
    /// The lease is ours: run the session while holding this, and stop it if
    /// [`SessionLease::lost`] resolves.
    Held(SessionLease),
    /// Another session holds the key.
    Taken {
        /// The holder name of the server that holds it (its `holder` at
        /// [`EtcdLeases::connect`]).
        holder: String,
    },
}

/// A held lease on one key: kept alive while this value lives, revoked when it is dropped.
///
/// A tokio task sends a keepalive every TTL/3 (retried every TTL/10 after a failure,
/// trying each endpoint). The lease is lost when etcd answers that it no longer exists, or
/// when no keepalive has succeeded for four fifths of the TTL counted from the sending of
/// the last good one (so the session hears of it a fifth of the TTL before etcd can
/// expire the key, time to stop its writes);
/// [`lost`](Self::lost) then resolves and the task ends.
///
/// Dropping it stops the keepalive and spawns a revoke on the runtime it was acquired on:
/// best effort, since if the revoke fails, or the process dies first, etcd frees the key
/// when the TTL runs out. [`release`](Self::release) revokes and waits.
#[derive(Debug)]
pub struct SessionLease {
    gateway: Arc<Gateway>,
    key: String,
    id: i64,
    revision: i64,
    ttl: Duration,
    lost: watch::Receiver<Option<LeaseLost>>,
    keepalive: tokio::task::JoinHandle<()>,
    runtime: tokio::runtime::Handle,
    revoke_on_drop: bool,
}

impl SessionLease {
    fn start(
        gateway: Arc<Gateway>,
        key: String,
        id: i64,
        revision: i64,
        ttl: Duration,
        deadline: Instant,
    ) -> SessionLease {
        let (tx, rx) = watch::channel(None);
        let keepalive = tokio::spawn(keep_alive(
            gateway.clone(),
            key.clone(),
            id,
            ttl,
            deadline,
            tx,
        ));
        SessionLease {
            gateway,
            key,
            id,
            revision,
            ttl,
            lost: rx,
            keepalive,
            runtime: tokio::runtime::Handle::current(),
            revoke_on_drop: true,
        }
    }

    /// The etcd key held, `<prefix>/sessions/<key>`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// etcd's id of the lease (shown by `etcdctl lease list`, in hex).
    pub fn lease_id(&self) -> i64 {
        self.id
    }

    /// The etcd revision at which the key was created for this lease. Every later
    /// acquisition of any key in the same etcd gets a greater one, so it can serve as a
    /// fencing token (e.g. recorded with what the session writes).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The TTL etcd granted, in whole seconds (at least etcd's minimum).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Resolves when the lease is lost (see [`SessionLease`]), with why; the session should
    /// then stop, as another server may take the client at any moment. Never resolves
    /// while the lease is kept alive. Independent of `self`'s lifetime, for `select!`; if
    /// it outlives the lease it resolves with [`LostReason::Released`].
    pub fn lost(&self) -> impl Future<Output = LeaseLost> + Send + 'static {
        let mut rx = self.lost.clone();
        let key = self.key.clone();
        async move {
            if let Ok(lost) = rx.wait_for(Option::is_some).await {
                if let Some(lost) = lost.clone() {
                    return lost;
                }
            }
            LeaseLost {
                key,
                reason: LostReason::Released,
            }
        }
    }

    /// Why the lease was lost, if it was.
    pub fn is_lost(&self) -> Option<LeaseLost> {
        self.lost.borrow().clone()
    }

    /// Stops the keepalive and revokes the lease, waiting for etcd's answer, so the key is
    /// free when this returns `Ok`. A lease etcd no longer knows counts as released.
    ///
    /// # Errors
    ///
    /// Those of [`EtcdLeases::acquire`]'s requests; the key then stays held until the TTL
    /// runs out.
    pub async fn release(mut self) -> Result<(), LeaseError> {
        self.revoke_on_drop = false;
        self.keepalive.abort();
        self.gateway.revoke(self.id).await
    }

    /// Stops the keepalive without revoking, as if the process had died (tests).
    #[cfg(test)]
    fn abandon(mut self) {
        self.revoke_on_drop = false;
        self.keepalive.abort();
    }
}

impl Drop for SessionLease {
    fn drop(&mut self) {
        self.keepalive.abort();
        if self.revoke_on_drop {
            let gateway = self.gateway.clone();
            let (id, key) = (self.id, self.key.clone());
            self.runtime.spawn(async move {
                if let Err(e) = gateway.revoke(id).await {
                    tracing::warn!("etcd: releasing {key}: {e} (it expires after its TTL)");
                }
            });
        }
    }
}

/// The keepalive task: renews lease `id` every TTL/3 until it is aborted or the lease is
/// lost; `expires` is when etcd may expire it at the earliest.
async fn keep_alive(
    gateway: Arc<Gateway>,
    key: String,
    id: i64,
    ttl: Duration,
    expires: Instant,
    lost: watch::Sender<Option<LeaseLost>>,
) {
    let period = keepalive_period(ttl);
    let mut next = expires - ttl + period;
    // When the lease is declared lost: ahead of etcd's earliest expiry.
    let mut deadline = expires - fence_margin(ttl);
    let mut last_error = String::from("no keepalive tried");
    let reason = loop {
        tokio::time::sleep_until(next.min(deadline)).await;
        let sent = Instant::now();
        if sent >= deadline {
            break LostReason::Unreachable { last_error };
        }
        match tokio::time::timeout_at(deadline, gateway.keepalive(id)).await {
            Ok(Ok(left)) if left > 0 => {
                deadline = sent + Duration::from_secs(left.unsigned_abs()) - fence_margin(ttl);
                next = sent + period;
            }
            Ok(Ok(_)) => break LostReason::Expired,
            Ok(Err(e)) => {
                tracing::warn!("etcd: keepalive of {key}: {e}");
                last_error = e.to_string();
                next = sent + retry_period(ttl);
            }
            Err(_) => {
                break LostReason::Unreachable {
                    last_error: "the last keepalive had no answer by the deadline".into(),
                }
            }
        }
    };
    let lost_lease = LeaseLost { key, reason };
    tracing::warn!("etcd: {lost_lease}");
    lost.send_replace(Some(lost_lease));
}

#[cfg(test)]
mod tests {
    use super::*;

    // ----- the pure part -----

    #[test]
    fn urls_parse_into_endpoints_in_order() {
        let eps = parse_url("etcd://127.0.0.1:2379,etcd-2.example.com:23790,[::1]:1").unwrap();
        let names: Vec<String> = eps.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            ["127.0.0.1:2379", "etcd-2.example.com:23790", "[::1]:1"]
        );
        assert_eq!(eps[0].url("/v3/kv/txn"), "http://127.0.0.1:2379/v3/kv/txn");
        assert_eq!(eps[2].url("/v3/kv/txn"), "http://[::1]:1/v3/kv/txn");
        assert_eq!(parse_url("ETCD://h:65535").unwrap()[0].port, 65535);
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        for (url, reason) in [
            ("http://h:2379", "scheme \"http\" is not etcd"),
            ("h:2379", "no etcd:// scheme"),
            ("etcd://", "endpoint 1 is empty"),
            ("etcd://h:1,", "endpoint 2 is empty"),
            ("etcd://,h:1", "endpoint 1 is empty"),
            ("etcd://h", "has no :PORT"),
            ("etcd://h:", "port \"\" is not 1-65535"),
            ("etcd://h:0", "port \"0\" is not 1-65535"),
            ("etcd://h:65536", "port \"65536\" is not 1-65535"),
            ("etcd://h:+1", "port \"+1\" is not 1-65535"),
            ("etcd://h:1/", "'/' not allowed"),
            ("etcd://h:1/prefix", "'/' not allowed"),
            ("etcd://h:1?x=1", "'?' not allowed"),
            ("etcd://user@h:1", "'@' not allowed"),
            ("etcd://::1:2379", "an IPv6 address goes in brackets"),
            ("etcd://[::1]", "no :PORT"),
            ("etcd://[::1:2379", "no ]"),
            ("etcd://[nope]:1", "not an IPv6 address"),
            ("etcd://h st:1", "is not a host name"),
            ("etcd://:1", "\"\" is not a host name"),
        ] {
            match parse_url(url) {
                Err(e @ LeaseError::BadUrl { .. }) => {
                    let text = e.to_string();
                    assert!(text.contains(reason), "{url}: {text}");
                    assert!(text.contains("expected etcd://HOST:PORT"), "{url}: {text}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn keys_ttls_and_periods() {
        assert_eq!(etcd_key("filesync", "lab-7"), "filesync/sessions/lab-7");
        assert!(check_key("lab-7.a_b").is_ok());
        for key in ["", "a/b", "/"] {
            assert!(
                matches!(check_key(key), Err(LeaseError::BadSetting(_))),
                "{key:?}"
            );
        }
        assert_eq!(ttl_secs(Duration::from_secs(10)).unwrap(), 10);
        assert_eq!(ttl_secs(Duration::from_millis(1500)).unwrap(), 2);
        assert_eq!(ttl_secs(Duration::from_nanos(1)).unwrap(), 1);
        assert!(ttl_secs(Duration::ZERO).is_err());
        assert!(ttl_secs(Duration::from_secs(MAX_TTL_SECS + 1)).is_err());
        assert_eq!(
            keepalive_period(Duration::from_secs(9)),
            Duration::from_secs(3)
        );
        assert_eq!(
            retry_period(Duration::from_secs(10)),
            Duration::from_secs(1)
        );
        assert_eq!(
            fence_margin(Duration::from_secs(10)),
            Duration::from_secs(2)
        );
        assert_eq!(
            retry_period(Duration::from_millis(500)),
            Duration::from_millis(100)
        );
        assert_eq!(
            request_timeout(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
        assert_eq!(
            request_timeout(Duration::from_secs(60)),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn requests_have_the_gateways_json_shape() {
        let grant = serde_json::to_value(GrantRequest { ttl: 10 }).unwrap();
        assert_eq!(grant, serde_json::json!({"TTL": "10"}));
        let id = serde_json::to_value(LeaseIdRequest {
            id: 4111120341379091724,
        })
        .unwrap();
        assert_eq!(id, serde_json::json!({"ID": "4111120341379091724"}));
        // The transaction as etcd 3.4.23 took it (key `filesync/sessions/c1`, value
        // `hostA:1`).
        let txn = serde_json::to_value(take_txn("filesync/sessions/c1", "hostA:1", 42)).unwrap();
        assert_eq!(
            txn,
            serde_json::json!({
                "compare": [{
                    "key": "ZmlsZXN5bmMvc2Vzc2lvbnMvYzE=",
                    "target": "CREATE",
                    "result": "EQUAL",
                    "create_revision": "0"
                }],
                "success": [{"request_put": {
                    "key": "ZmlsZXN5bmMvc2Vzc2lvbnMvYzE=",
                    "value": "aG9zdEE6MQ==",
                    "lease": "42"
                }}],
                "failure": [{"request_range": {"key": "ZmlsZXN5bmMvc2Vzc2lvbnMvYzE="}}]
            })
        );
        let probe = RangeRequest {
            key: b"filesync".to_vec(),
            count_only: true,
        };
        assert_eq!(
            serde_json::to_value(probe).unwrap(),
            serde_json::json!({"key": "ZmlsZXN5bmM=", "count_only": true})
        );
    }

    // Answers as etcd 3.4.23's gateway wrote them.
    const HEADER: &str = r#""header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"2","raft_term":"2"}"#;

    #[test]
    fn answers_are_read_as_etcd_writes_them() {
        let grant: GrantResponse = serde_json::from_str(&format!(
            r#"{{{HEADER},"ID":"4111120341379091718","TTL":"2"}}"#
        ))
        .unwrap();
        assert_eq!(
            (grant.id, grant.ttl, grant.error.as_str()),
            (4111120341379091718, 2, "")
        );

        let won: TxnResponse = serde_json::from_str(&format!(
            r#"{{{HEADER},"succeeded":true,"responses":[{{"response_put":{{"header":{{"revision":"2"}}}}}}]}}"#
        ))
        .unwrap();
        assert_eq!(
            take_outcome(&won, 7),
            Ok(TakeOutcome::Taken { revision: 2 })
        );

        // `succeeded` false is left out.
        let lost = format!(
            r#"{{{HEADER},"responses":[{{"response_range":{{"header":{{"revision":"2"}},"kvs":[{{"key":"ZmlsZXN5bmMvc2Vzc2lvbnMvYzE=","create_revision":"2","mod_revision":"2","version":"1","value":"aG9zdEE6MQ==","lease":"4111120341379091724"}}],"count":"1"}}}}]}}"#
        );
        let lost: TxnResponse = serde_json::from_str(&lost).unwrap();
        assert_eq!(
            take_outcome(&lost, 7),
            Ok(TakeOutcome::HeldBy("hostA:1".into()))
        );
        // Our own lease on the key: an earlier try that succeeded.
        assert_eq!(
            take_outcome(&lost, 4111120341379091724),
            Ok(TakeOutcome::Taken { revision: 2 })
        );
        let empty: TxnResponse = serde_json::from_str(&format!(
            r#"{{{HEADER},"responses":[{{"response_range":{{}}}}]}}"#
        ))
        .unwrap();
        assert!(take_outcome(&empty, 7).is_err());
        // No header: not etcd.
        assert!(serde_json::from_str::<TxnResponse>(r#"{"succeeded":true}"#).is_err());
        assert!(serde_json::from_str::<HeaderOnly>("{}").is_err());

        let alive = format!(r#"{{"result":{{{HEADER},"ID":"4111120341379091724","TTL":"5"}}}}"#);
        assert_eq!(keepalive_ttl(alive.as_bytes()), Ok(5));
        // Two messages in the stream: the first counts.
        let two = format!("{alive}\n{}", alive.replace("\"5\"", "\"3\""));
        assert_eq!(keepalive_ttl(two.as_bytes()), Ok(5));
        // A lease etcd does not know: no TTL.
        let gone = format!(r#"{{"result":{{{HEADER},"ID":"123"}}}}"#);
        assert_eq!(keepalive_ttl(gone.as_bytes()), Ok(0));
        let error =
            br#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader"}}"#;
        assert!(keepalive_ttl(error).unwrap_err().contains("no leader"));
        assert!(keepalive_ttl(b"").is_err());
        assert!(keepalive_ttl(b"<html>").is_err());

        let refused = br#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#;
        assert_eq!(
            gateway_message(refused),
            "etcdserver: requested lease not found"
        );
        assert_eq!(
            gateway_message(b"404 page not found\n"),
            "404 page not found"
        );
    }

    #[test]
    fn errors_say_what_and_where() {
        let e = LeaseError::Unreachable {
            tried: vec![
                EndpointFailure {
                    endpoint: "10.0.0.1:2379".into(),
                    error: "cannot connect: Connection refused (os error 111)".into(),
                },
                EndpointFailure {
                    endpoint: "10.0.0.2:2379".into(),
                    error: "no answer within 5.0 s".into(),
                },
            ],
        };
        assert_eq!(
            e.to_string(),
            "etcd unreachable at 10.0.0.1:2379 (cannot connect: Connection refused (os error \
             111)), 10.0.0.2:2379 (no answer within 5.0 s)"
        );
        let lost = LeaseError::from(LeaseLost {
            key: "filesync/sessions/c1".into(),
            reason: LostReason::Expired,
        });
        assert_eq!(
            lost.to_string(),
            "lease on filesync/sessions/c1 lost: etcd says the lease expired"
        );
    }

    // ----- against a real etcd -----

    use std::fs::File;
    use std::path::Path;
    use std::process::{Child, Command, Stdio};

    const ETCD: &str = "/usr/bin/etcd";

    /// A single-member etcd on free loopback ports, in a temporary data directory; killed
    /// when dropped.
    struct Etcd {
        child: Option<Child>,
        dir: tempfile::TempDir,
        port: u16,
    }

    /// `n` distinct ports that were free a moment ago.
    fn free_ports<const N: usize>() -> [u16; N] {
        let listeners: Vec<std::net::TcpListener> = (0..N)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
    }

    impl Etcd {
        /// `None`, with a loud line, if etcd is not installed, unless the environment
        /// requires these tests to run (`FILESYNC_REQUIRE_GARAGE=1`, as CI sets): then
        /// a missing etcd fails them.
        async fn start() -> Option<Etcd> {
            if !Path::new(ETCD).exists() {
                let required = std::env::var("FILESYNC_REQUIRE_GARAGE").is_ok_and(|v| v == "1");
                assert!(
                    !required,
                    "{ETCD} is missing: the lease tests run a real etcd; install it with \
                     `apt-get install etcd-server`"
                );
                eprintln!("SKIPPED: {ETCD} is missing (apt-get install etcd-server)");
                return None;
            }
            for _ in 0..3 {
                let [port, peer] = free_ports::<2>();
                let dir = tempfile::tempdir().unwrap();
                let log = File::create(dir.path().join("etcd.log")).unwrap();
                let client_url = format!("http://127.0.0.1:{port}");
                let peer_url = format!("http://127.0.0.1:{peer}");
                let child = Command::new(ETCD)
                    .arg("--name=default")
                    .arg(format!("--data-dir={}", dir.path().join("data").display()))
                    .arg(format!("--listen-client-urls={client_url}"))
                    .arg(format!("--advertise-client-urls={client_url}"))
                    .arg(format!("--listen-peer-urls={peer_url}"))
                    .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                    .arg(format!("--initial-cluster=default={peer_url}"))
                    .arg("--logger=zap")
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .unwrap();
                let mut etcd = Etcd {
                    child: Some(child),
                    dir,
                    port,
                };
                if etcd.wait_ready().await {
                    return Some(etcd);
                }
                // Most likely a port taken meanwhile: try others.
                etcd.kill();
                eprintln!("etcd did not start:\n{}", etcd.log());
            }
            panic!("etcd did not start three times");
        }

        /// Waits up to 10 s for `/health` to say true; false if etcd exits or does not.
        async fn wait_ready(&mut self) -> bool {
            let http = http_client(Duration::from_secs(1)).unwrap();
            let url = format!("http://127.0.0.1:{}/health", self.port);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                    return false;
                }
                if let Ok(answer) = http.get(&url).send().await {
                    if answer
                        .text()
                        .await
                        .unwrap_or_default()
                        .contains(r#""health":"true""#)
                    {
                        return true;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        }

        fn url(&self) -> String {
            format!("etcd://127.0.0.1:{}", self.port)
        }

        fn log(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
        }

        fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    impl Drop for Etcd {
        fn drop(&mut self) {
            self.kill();
        }
    }

    async fn leases(url: &str, ttl_secs: u64, holder: &str) -> EtcdLeases {
        EtcdLeases::connect(url, Duration::from_secs(ttl_secs), holder.into())
            .await
            .unwrap()
    }

    fn held(acquired: Acquired) -> SessionLease {
        match acquired {
            Acquired::Held(lease) => lease,
            Acquired::Taken { holder } => panic!("taken by {holder}"),
        }
    }

    fn taken_by(acquired: Acquired) -> String {
        match acquired {
            Acquired::Taken { holder } => holder,
            Acquired::Held(lease) => panic!("held: {lease:?}"),
        }
    }

    /// Acquires `key` every 50 ms until held; how long that took.
    async fn acquire_when_free(leases: &EtcdLeases, key: &str, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if let Acquired::Held(_) = leases.acquire(key).await.unwrap() {
                return start.elapsed();
            }
            assert!(start.elapsed() < within, "{key} not free within {within:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How many leases etcd has (`LeaseLeases`).
    async fn lease_count(leases: &EtcdLeases) -> usize {
        #[derive(Deserialize)]
        struct Leases {
            #[serde(default)]
            leases: Vec<serde_json::Value>,
        }
        let (answer, _) = leases
            .gateway
            .call::<Leases>("leases", "/v3/lease/leases", &serde_json::json!({}))
            .await
            .unwrap();
        answer.leases.len()
    }

    #[tokio::test]
    async fn a_held_key_is_taken_for_others_with_the_holders_name() {
        let Some(etcd) = Etcd::start().await else {
            return;
        };
        let a = leases(&etcd.url(), 10, "server-a:1").await;
        let b = leases(&etcd.url(), 10, "server-b:2").await;
        let lease = held(a.acquire("c1").await.unwrap());
        assert_eq!(lease.key(), "filesync/sessions/c1");
        assert_eq!(lease.ttl(), Duration::from_secs(10));
        assert!(lease.revision() > 0);
        assert_eq!(taken_by(b.acquire("c1").await.unwrap()), "server-a:1");
        // The same server too: one session per client, whoever asks.
        assert_eq!(taken_by(a.acquire("c1").await.unwrap()), "server-a:1");
        // The leases granted for the two refused tries were revoked.
        assert_eq!(lease_count(&a).await, 1);
        // Other keys and other prefixes are independent.
        let other = held(b.acquire("c2").await.unwrap());
        assert!(other.revision() > lease.revision());
        let archive2 = b.clone().with_prefix("archive-2").unwrap();
        assert_eq!(
            held(archive2.acquire("c1").await.unwrap()).key(),
            "archive-2/sessions/c1"
        );
        assert!(lease.is_lost().is_none());
    }

    /// A server spawns its sessions: what they hold and await must be `Send`.
    #[allow(dead_code)]
    fn usable_from_spawned_tasks(leases: EtcdLeases, lease: SessionLease) {
        fn send<T: Send + 'static>(_: T) {}
        send(async move { leases.acquire("c1").await });
        send(lease.lost());
        send(lease.release());
    }

    /// A lock is held by one server at a time: another waits for it, gets it once it is
    /// released, or gives up after its wait with who holds it. Locks are not sessions.
    #[tokio::test]
    async fn a_lock_waits_for_its_holder_or_gives_up() {
        let Some(etcd) = Etcd::start().await else {
            return;
        };
        let a = leases(&etcd.url(), 10, "server-a").await;
        let b = leases(&etcd.url(), 10, "server-b").await;
        let held_by_a = a.lock("tls-key", Duration::ZERO).await.unwrap();
        assert_eq!(held_by_a.key(), "filesync/locks/tls-key");
        // A session of a client named like the lock is another key.
        drop(held(a.acquire("tls-key").await.unwrap()));
        match b.lock("tls-key", Duration::from_millis(300)).await {
            Err(LeaseError::Busy { key, holder, .. }) => {
                assert_eq!(
                    (key.as_str(), holder.as_str()),
                    ("filesync/locks/tls-key", "server-a")
                );
            }
            other => panic!("{other:?}"),
        }
        let waiting = tokio::spawn(async move { b.lock("tls-key", Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!waiting.is_finished(), "b took a lock a holds");
        held_by_a.release().await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("b never got the released lock")
            .unwrap()
            .unwrap();
        assert_eq!(got.key(), "filesync/locks/tls-key");
    }

    #[tokio::test]
    async fn of_racing_servers_exactly_one_gets_the_key() {
        let Some(etcd) = Etcd::start().await else {
            return;
        };
        let mut servers = Vec::new();
        for i in 0..6 {
            servers.push(leases(&etcd.url(), 10, &format!("server-{i}")).await);
        }
        let results = futures::future::join_all(servers.iter().map(|s| s.acquire("lab-7"))).await;
        let mut winners = Vec::new();
        let mut holders = Vec::new();
        for (i, result) in results.into_iter().enumerate() {
            match result.unwrap() {
                Acquired::Held(lease) => winners.push((i, lease)),
                Acquired::Taken { holder } => holders.push(holder),
            }
        }
        assert_eq!(winners.len(), 1, "{winners:?}");
        let winner = format!("server-{}", winners[0].0);
        assert!(
            holders.iter().all(|h| *h == winner),
            "{holders:?} vs {winner}"
        );
    }

    #[tokio::test]
    async fn dropping_or_releasing_a_lease_frees_the_key_at_once() {
        let Some(etcd) = Etcd::start().await else {
            return;
        };
        let a = leases(&etcd.url(), 10, "server-a").await;
        let b = leases(&etcd.url(), 10, "server-b").await;
        let lease = held(a.acquire("c1").await.unwrap());
        drop(lease);
        // The spawned revoke, well before the 10 s TTL.
        let took = acquire_when_free(&b, "c1", Duration::from_secs(3)).await;
        assert!(took < Duration::from_secs(3), "{took:?}");
        // acquire_when_free dropped b's lease too: released by now or soon.
        let lease = held(a.acquire("c2").await.unwrap());
        lease.release().await.unwrap();
        held(b.acquire("c2").await.unwrap());
    }

    #[tokio::test]
    async fn a_lease_is_kept_alive_past_its_ttl_and_expires_after_it_when_abandoned() {
        let Some(etcd) = Etcd::start().await else {
            return;
        };
        let a = leases(&etcd.url(), 2, "server-a").await;
        let b = leases(&etcd.url(), 2, "server-b").await;
        let lease = held(a.acquire("c1").await.unwrap());
        assert_eq!(lease.ttl(), Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(2600)).await;
        assert_eq!(taken_by(b.acquire("c1").await.unwrap()), "server-a");
        assert!(lease.is_lost().is_none());

        // As if the server died: no more keepalives, no revoke.
        lease.abandon();
        assert_eq!(taken_by(b.acquire("c1").await.unwrap()), "server-a");
        let took = acquire_when_free(&b, "c1", Duration::from_secs(10)).await;
        // The last keepalive went out at most TTL/3 before; etcd checks expiry every 500 ms.
        // The upper bound only says "it expires": a loaded CI machine schedules late.
        assert!(
            took > Duration::from_millis(1200) && took < Duration::from_secs(8),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn etcds_minimum_ttl_is_what_the_lease_gets() {
        let Some(etcd) = Etcd::start().await else {
            return;
        };
        let a = leases(&etcd.url(), 1, "server-a").await;
        let lease = held(a.acquire("c1").await.unwrap());
        assert_eq!(a.ttl(), Duration::from_secs(1));
        assert_eq!(lease.ttl(), Duration::from_secs(2));
    }

    #[tokio::test]
    async fn lost_resolves_within_the_ttl_when_etcd_dies() {
        let Some(mut etcd) = Etcd::start().await else {
            return;
        };
        let a = leases(&etcd.url(), 2, "server-a").await;
        let lease = held(a.acquire("c1").await.unwrap());
        let lost = lease.lost();
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(lease.is_lost().is_none());
        etcd.kill();
        let killed = Instant::now();
        let lost = tokio::time::timeout(Duration::from_secs(10), lost)
            .await
            .expect("lost() did not resolve");
        let took = killed.elapsed();
        assert!(
            matches!(&lost.reason, LostReason::Unreachable { last_error } if last_error.contains("cannot connect")),
            "{lost}"
        );
        assert_eq!(lost.key, "filesync/sessions/c1");
        // Not at the first failed keepalive, and about TTL after the last good one (which
        // went out at most TTL/3 before the kill); the upper bound leaves room for a
        // loaded machine's scheduling.
        assert!(
            took > Duration::from_millis(900) && took <= Duration::from_secs(6),
            "{took:?}"
        );
        assert_eq!(lease.is_lost(), Some(lost));
    }

    #[tokio::test]
    async fn lost_resolves_when_etcd_says_the_lease_is_gone() {
        let Some(etcd) = Etcd::start().await else {
            return;
        };
        let a = leases(&etcd.url(), 2, "server-a").await;
        let lease = held(a.acquire("c1").await.unwrap());
        // Someone revokes it (`etcdctl lease revoke`).
        a.gateway.revoke(lease.lease_id()).await.unwrap();
        let lost = tokio::time::timeout(Duration::from_secs(2), lease.lost())
            .await
            .expect("lost() did not resolve");
        assert_eq!(lost.reason, LostReason::Expired);
        // A lost() that outlives its lease.
        let late = held(a.acquire("c1").await.unwrap());
        let outlives = late.lost();
        drop(late);
        assert_eq!(outlives.await.reason, LostReason::Released);
    }

    #[tokio::test]
    async fn bad_settings_are_refused_before_asking_etcd() {
        for url in [
            "http://127.0.0.1:2379",
            "etcd://127.0.0.1",
            "etcd://a:1,,b:2",
        ] {
            let e = EtcdLeases::connect(url, Duration::from_secs(10), "s".into())
                .await
                .unwrap_err();
            assert!(matches!(e, LeaseError::BadUrl { .. }), "{url}: {e}");
        }
        let url = "etcd://127.0.0.1:1";
        let e = EtcdLeases::connect(url, Duration::ZERO, "s".into())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("TTL"), "{e}");
        let e = EtcdLeases::connect(url, Duration::from_secs(10), String::new())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("holder"), "{e}");
    }

    /// A port that accepts connections and never answers, while the task runs.
    async fn silent_endpoint() -> (u16, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        (port, task)
    }

    #[tokio::test]
    async fn unreachable_endpoints_are_named_in_the_error() {
        let [p1, p2] = free_ports::<2>();
        let (p3, silent) = silent_endpoint().await;
        let url = format!("etcd://127.0.0.1:{p1},localhost:{p2},127.0.0.1:{p3}");
        // A 2 s TTL: requests time out after 1 s.
        let e = EtcdLeases::connect(&url, Duration::from_secs(2), "s".into())
            .await
            .unwrap_err();
        silent.abort();
        let text = e.to_string();
        assert!(
            matches!(&e, LeaseError::Unreachable { tried } if tried.len() == 3),
            "{e:?}"
        );
        assert!(
            text.ends_with(&format!(", 127.0.0.1:{p3} (no answer within 1.0 s)")),
            "{text}"
        );
        assert!(
            text.starts_with(&format!(
                "etcd unreachable at 127.0.0.1:{p1} (cannot connect: "
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(", localhost:{p2} (cannot connect: ")),
            "{text}"
        );
    }

    #[tokio::test]
    async fn requests_fail_over_from_dead_and_silent_endpoints() {
        let Some(etcd) = Etcd::start().await else {
            return;
        };
        let [dead] = free_ports::<1>();
        let (silent_port, accepting) = silent_endpoint().await;
        let url = format!(
            "etcd://127.0.0.1:{dead},127.0.0.1:{silent_port},127.0.0.1:{}",
            etcd.port
        );
        let started = Instant::now();
        let a = leases(&url, 2, "server-a").await;
        // The silent one cost its request timeout, 1 s.
        assert!(started.elapsed() >= Duration::from_secs(1));
        let lease = held(a.acquire("c1").await.unwrap());
        // Keepalives go to the live endpoint, the one that answered last.
        tokio::time::sleep(Duration::from_millis(2600)).await;
        assert!(lease.is_lost().is_none());
        let b = leases(
            &format!("etcd://127.0.0.1:{dead},{}", &etcd.url()[7..]),
            2,
            "b",
        )
        .await;
        assert_eq!(taken_by(b.acquire("c1").await.unwrap()), "server-a");
        accepting.abort();
    }
}

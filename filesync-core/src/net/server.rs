//! The server's drive loop: accepts connections, queues them fairly, and runs each
//! session's typestate machine over the socket, with the store's writes on a blocking
//! thread so that reading the network and writing the disk overlap.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, Framed};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::queue::{Admission, Admitted, Gate, Pending, Queue, Ticket};
use super::tls::{ServerTls, Transport};
use crate::auth::AuthFile;
use crate::codec::json_stream::{encode_seed, SeedServerCodec};
use crate::codec::native::ServerCodec;
use crate::codec::preamble::{self, Dialect};
use crate::codec::{Frame, DATA_CHUNK};
use crate::error::Error;
use crate::messages::{
    seed, AuthOk, ClientMsg, Encoding, ErrorCode, ErrorMsg, FileHeader, Outcome, ServerMsg,
};
use crate::paths::{ClientId, RelPath};

use crate::archive::{Archive, Fence, HeldIndex};
use crate::lease::{Acquired, EtcdLeases, LostReason, SessionLease};
use crate::planner::{DeleteBudget, DeleteCaps};
use crate::schedule::Scheduler;
use crate::session::server::{
    Listed, Listing, Receipt, Receive, Received, Receiving, Server, ServerParams, Tally, Welcomed,
};
use crate::session::unexpected;
use crate::store::{Applied, Spool};
use crate::time::MTime;

/// How a server runs its sessions.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// How long clients wait between syncs.
    pub interval: Duration,
    /// Sessions served at once; the rest queue.
    pub max_sessions: usize,
    /// A client silent this long loses its turn.
    pub idle_timeout: Duration,
    /// Encodings offered, preferred first.
    pub encodings: Vec<Encoding>,
    /// Limits on what one session may delete.
    pub delete_caps: DeleteCaps,
    /// A connection must identify itself (native preamble and `HELLO`, or the original
    /// dialect's `CLIENT_FILES_INFO`) this soon after it is accepted, or be closed. Until
    /// then it holds no place in the queue.
    pub handshake_timeout: Duration,
    /// Connections not yet identified, at most, in all: past it, a new one evicts the
    /// oldest.
    pub max_unidentified: usize,
    /// Connections not yet identified, at most, from one peer (an IPv4 address or an
    /// IPv6 /64): past it, new ones from that peer are closed at once.
    pub max_unidentified_per_ip: usize,
    /// The server's TLS key, for clients that authenticate; `None` accepts no TLS.
    pub tls: Option<ServerTls>,
    /// The clients allowed in (`serve --auth-file`). `None` serves anyone, in the clear,
    /// original FileSync clients included; with a file, every session must open TLS and
    /// prove its id's secret before it is queued (spec §16).
    pub auth: Option<Arc<AuthFile>>,
    /// Leases on client ids shared by every server of one archive (`serve --lease`):
    /// `None` holds ids in this process only.
    pub leases: Option<EtcdLeases>,
}

/// How often a queued client hears its position, so it knows the server is alive.
const QUEUE_KEEPALIVE: Duration = Duration::from_secs(10);
/// After a BUSY greeting, how long to wait for a native preamble once the turn has come
/// before taking the silent client for an original one waiting for READY.
const DIALECT_GRACE: Duration = Duration::from_secs(1);
/// How long shutdown waits for sessions to wind down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// How much of an original client's `CLIENT_FILES_INFO` is read before it counts as
/// identified: all of it, up to this size (the rest of a longer one is read when its turn
/// comes). As a native frame, it bounds what an unidentified connection makes us buffer.
const HANDSHAKE_BYTES: usize = crate::codec::MAX_FRAME_LEN;
/// How often the server sums up the unidentified connections it closed (one log line,
/// not one per connection).
const DROPPED_REPORT: Duration = Duration::from_secs(10);

pub(super) struct Ctx {
    pub(super) store: Arc<dyn Archive>,
    pub(super) queue: Arc<Queue>,
    pub(super) sched: Mutex<Scheduler>,
    pub(super) cfg: ServeConfig,
    /// Client ids with a session running: two sessions of one id at once (possible with
    /// `--max-sessions` above 1) could delete what the other stores.
    active_ids: Mutex<HashSet<ClientId>>,
    /// Counts the connections that have not identified themselves.
    gate: Arc<Gate>,
    /// Unidentified connections closed since the last report.
    dropped: Dropped,
}

/// Unidentified connections closed, by reason, for the periodic log line.
#[derive(Debug, Default)]
struct Dropped {
    peer_full: AtomicU64,
    evicted: AtomicU64,
    silent: AtomicU64,
}

impl Dropped {
    /// Logs and resets the counts, if any.
    fn report(&self, gate: &Gate) {
        let peer_full = self.peer_full.swap(0, Ordering::Relaxed);
        let evicted = self.evicted.swap(0, Ordering::Relaxed);
        let silent = self.silent.swap(0, Ordering::Relaxed);
        if peer_full + evicted + silent > 0 {
            tracing::info!(
                refused_peer_full = peer_full,
                evicted,
                handshake_timeouts = silent,
                unidentified_now = gate.unidentified(),
                "closed connections that did not identify themselves"
            );
        }
    }
}

/// Holds a client id for one session; released on drop.
pub(super) struct Lease<'a> {
    ctx: &'a Ctx,
    id: ClientId,
}

impl Ctx {
    /// When `id` should come back, counted from now: the `NEXT_SYNC` time and delay.
    pub(super) fn next_visit(&self, id: &ClientId) -> (MTime, Duration) {
        self.sched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next(super::now(), id)
    }

    /// Takes the id for a session, or `None` if another session holds it.
    pub(super) fn lease(&self, id: &ClientId) -> Option<Lease<'_>> {
        let mut ids = self.active_ids.lock().unwrap_or_else(|e| e.into_inner());
        ids.insert(id.clone()).then(|| Lease {
            ctx: self,
            id: id.clone(),
        })
    }

    /// Takes the lease on `id` shared by the servers of the archive, if they share one
    /// (`Ok(None)` if not); a session must not start without it. If the lease is lost
    /// mid-session, `fence` is raised, so that the session's writer changes nothing more
    /// in the archive, and `cancel` cancelled, so that the session stops, both before
    /// another server may start one.
    pub(super) async fn shared_lease(
        &self,
        id: &ClientId,
        cancel: &CancellationToken,
        fence: &Fence,
    ) -> Result<Option<SessionLease>, Error> {
        let Some(leases) = &self.cfg.leases else {
            return Ok(None);
        };
        match leases.acquire(id.as_str()).await {
            Ok(Acquired::Held(lease)) => {
                let lost = lease.lost();
                let cancel = cancel.clone();
                let fence = fence.clone();
                let client = id.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        l = lost => {
                            // Released: the session ended and let it go.
                            if !matches!(l.reason, LostReason::Released) {
                                tracing::error!(%client, lost = %l, "the session's lease was lost: stopping it");
                                fence.raise();
                                cancel.cancel();
                            }
                        }
                        _ = cancel.cancelled() => {}
                    }
                });
                Ok(Some(lease))
            }
            Ok(Acquired::Taken { holder }) => Err(Error::Refused {
                code: ErrorCode::IN_PROGRESS,
                message: format!(
                    "a session for client {id} is already running on {holder}; try again later"
                ),
            }),
            Err(e) => {
                tracing::error!(client = %id, error = %e, "cannot take the session's lease");
                Err(Error::Refused {
                    code: ErrorCode::INTERNAL,
                    message: "the server cannot reach its lease service; try again later".into(),
                })
            }
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.ctx
            .active_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// The error for a second session of an id that is already syncing.
pub(super) fn in_progress(id: &ClientId) -> Error {
    Error::Refused {
        code: ErrorCode::IN_PROGRESS,
        message: format!("a session for client {id} is already running; try again later"),
    }
}

/// What one session did, for its log line.
#[derive(Debug, Default)]
pub(super) struct Summary {
    pub(super) client: Option<ClientId>,
    /// The id a `HELLO` claimed, for the log line of a session refused before it was
    /// let in (authentication, version): who tried, not who was served.
    pub(super) claimed: Option<ClientId>,
    pub(super) dialect: Option<Dialect>,
    pub(super) tally: Tally,
    pub(super) queue_wait: Duration,
    /// Why a connection ended, quietly, before it identified itself.
    pub(super) unidentified_end: Option<&'static str>,
}

/// Serves until `shutdown` resolves, then stops accepting, ends the running sessions
/// (complete files are kept, partial ones discarded) and returns.
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn Archive>,
    cfg: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    purge_versions(&store).await;
    let ctx = Arc::new(Ctx {
        store,
        queue: Queue::new(cfg.max_sessions),
        sched: Mutex::new(Scheduler::new(cfg.interval)),
        gate: Gate::new(cfg.max_unidentified, cfg.max_unidentified_per_ip),
        cfg,
        active_ids: Mutex::new(HashSet::new()),
        dropped: Dropped::default(),
    });
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let mut report = tokio::time::interval(DROPPED_REPORT);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = report.tick() => ctx.dropped.report(&ctx.gate),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match ctx.gate.admit(peer.ip()) {
                    Admission::PeerFull => {
                        // Closed at once, before any byte: the descriptor is freed now.
                        ctx.dropped.peer_full.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, "too many unidentified connections from this peer; closed");
                        drop(stream);
                    }
                    Admission::In { admitted, evicted } => {
                        if evicted {
                            ctx.dropped.evicted.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!("too many unidentified connections; evicted the oldest");
                        }
                        let _ = stream.set_nodelay(true);
                        // Greeted here, in accept order, not in the spawned task: with
                        // several worker threads, tasks may start out of order, and the
                        // first to connect must be the one greeted READY.
                        let pending = ctx.queue.greet();
                        tracker.spawn(handle(
                            Arc::clone(&ctx),
                            stream,
                            peer,
                            admitted,
                            pending,
                            cancel.child_token(),
                        ));
                    }
                },
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    ctx.dropped.report(&ctx.gate);
    tracing::info!(active = ctx.queue.active(), "shutting down");
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("sessions did not end in time");
    }
    Ok(())
}

async fn handle(
    ctx: Arc<Ctx>,
    stream: TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
    pending: Pending,
    cancel: CancellationToken,
) {
    let started = Instant::now();
    let mut summary = Summary::default();
    // The ticket (the queue slot) outlives the session's log line, so that with one session
    // at a time the log never shows the next one starting before this one is done.
    let mut ticket = None;
    let result = session(
        &ctx,
        stream,
        peer,
        admitted,
        pending,
        &mut ticket,
        &cancel,
        &mut summary,
    )
    .await;
    if let (Some(why), Err(e)) = (summary.unidentified_end, &result) {
        // Silent or evicted before identifying: one debug line each, and a count in the
        // periodic summary; hundreds of these must not flood the log.
        if why == HANDSHAKE_TIMEOUT {
            ctx.dropped.silent.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(%peer, duration = ?started.elapsed(), error = %e, "{why}");
        return;
    }
    let t = summary.tally;
    let client = summary
        .client
        .as_ref()
        .or(summary.claimed.as_ref())
        .map_or("-", ClientId::as_str);
    let dialect = summary.dialect.map_or("-", Dialect::name);
    match result {
        Ok(()) => tracing::info!(
            %client, %peer, %dialect, stored = t.stored, rejected = t.rejected, bytes = t.bytes,
            deleted = t.deleted, duration = ?started.elapsed(), queue_wait = ?summary.queue_wait,
            "session done"
        ),
        Err(e) => tracing::warn!(
            %client, %peer, %dialect, stored = t.stored, bytes = t.bytes,
            duration = ?started.elapsed(), error = %e, "session failed"
        ),
    }
    if summary.client.is_some() {
        purge_versions(&ctx.store).await;
    }
    drop(ticket);
}

/// Removes versions past their retention, off the async threads; a failure is logged.
pub async fn purge_versions(store: &Arc<dyn Archive>) {
    let store = Arc::clone(store);
    match tokio::task::spawn_blocking(move || store.purge_versions()).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!(records = n, "purged versions past their retention"),
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot purge old versions"),
        Err(e) => tracing::warn!(error = %e, "the version purge stopped"),
    }
}

pub(super) async fn within<T>(d: Duration, f: impl Future<Output = T>) -> Result<T, Error> {
    tokio::time::timeout(d, f)
        .await
        .map_err(|_| Error::Timeout(d))
}

/// Why an unidentified connection ended quietly (logged at debug and counted).
const HANDSHAKE_TIMEOUT: &str = "no handshake in time; closed";
const EVICTED: &str = "evicted to make room for a newer unidentified connection";
const CLOSED_SILENT: &str = "closed by the peer before it said anything";
const SHUTDOWN_UNIDENTIFIED: &str = "closed at shutdown before it identified itself";

/// The original dialect's connection.
pub(super) type SeedConn = Framed<TcpStream, SeedServerCodec>;

/// A connection that has identified itself.
enum Identified {
    /// Preamble and `HELLO` read and accepted; `WELCOME` to send.
    Native {
        srv: Server<Welcomed>,
        framed: Conn,
        welcome: ServerMsg,
    },
    /// An original client: its `CLIENT_FILES_INFO`, unless it was longer than
    /// [`HANDSHAKE_BYTES`] (then read when its turn comes).
    Seed {
        framed: SeedConn,
        first: Option<Frame<seed::ClientMsg>>,
    },
}

#[allow(clippy::too_many_arguments)]
async fn session(
    ctx: &Ctx,
    stream: TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
    pending: Pending,
    ticket: &mut Option<Ticket>,
    cancel: &CancellationToken,
    summary: &mut Summary,
) -> Result<(), Error> {
    let idle = ctx.cfg.idle_timeout;
    // Until it has identified itself, a connection holds no place in line, is closed
    // after the handshake timeout, and may be evicted by a newer one (see `Gate`).
    let identified = tokio::select! {
        r = handshake(ctx, stream, peer, pending, ticket, summary) => r?,
        _ = admitted.evicted() => {
            summary.unidentified_end = Some(EVICTED);
            return Err(Error::Closed);
        }
        _ = cancel.cancelled() => {
            summary.unidentified_end = Some(SHUTDOWN_UNIDENTIFIED);
            return Err(shutdown_error());
        }
    };
    drop(admitted);
    let queued_at = Instant::now();
    let ticket = ticket.as_mut().expect("a ticket once identified");

    let (srv, mut framed, welcome) = match identified {
        Identified::Seed { framed, first } => {
            summary.dialect = Some(Dialect::Seed);
            return super::seed_server::session(
                ctx, framed, first, peer, ticket, queued_at, cancel, summary,
            )
            .await;
        }
        Identified::Native {
            srv,
            framed,
            welcome,
        } => (srv, framed, welcome),
    };
    summary.dialect = Some(Dialect::Native);
    summary.client = Some(srv.client_id().clone());
    send(&mut framed, welcome, idle).await?;

    wait_turn(&srv, &mut framed, ticket, cancel).await?;
    summary.queue_wait = queued_at.elapsed();
    // Waiting, a connection needs a small read buffer; receiving, room for DATA frames
    // of a quarter mebibyte.
    framed.read_buffer_mut().reserve(DATA_CHUNK + 64);

    let id = srv.client_id().clone();
    let Some(_lease) = ctx.lease(&id) else {
        return Err(fail(&mut framed, in_progress(&id), idle).await);
    };
    // Stopped by shutdown, or by the loss of the shared lease.
    let cancel = &cancel.child_token();
    let fence = Fence::default();
    let _shared = match ctx.shared_lease(&id, cancel, &fence).await {
        Ok(l) => l,
        Err(e) => return Err(fail(&mut framed, e, idle).await),
    };
    // The index is read lazily, batch by batch, as the planner merges it with the
    // manifest; the tail goes to a spool on disk. Neither is ever held whole in memory.
    let plan = PlanIo {
        index: ctx.store.index(&id),
        spool: ctx
            .store
            .spool()
            .map_err(|e| Error::io("creating the plan's spool", e))?,
        store: Arc::clone(&ctx.store),
        id: id.clone(),
    };
    let (ops, mut results, writer) = spawn_writer(Arc::clone(&ctx.store), id.clone(), fence);
    let (srv, ready) = srv.ready();
    tracing::info!(client = %srv.client_id(), %peer, queue_wait = ?summary.queue_wait, "session started");
    let outcome = match send(&mut framed, ready, idle).await {
        Ok(()) => {
            receive(
                ctx,
                srv,
                plan,
                &mut framed,
                ops,
                &mut results,
                cancel,
                summary,
            )
            .await
        }
        Err(e) => {
            // The writer ends when its channel closes: close it before waiting for it.
            drop(ops);
            Err(e)
        }
    };
    // Whatever happened, wait for the writer: it keeps complete files and removes partial
    // ones, and must be done before the session is reported over.
    let _ = writer.await;
    outcome
}

/// Greets the connection (its place, `pending`, taken in accept order) and reads until it has identified itself, all within the
/// handshake timeout; then it joins the queue (`ticket`).
///
/// The greeting is provisional: READY if a slot is free and nobody is owed it, else BUSY
/// with the place in line the connection would take if it identified now. A native client
/// sends its preamble and `HELLO` at once and hears its real place in `QUEUED`. An original
/// client greeted READY sends `CLIENT_FILES_INFO` at once; one greeted BUSY stays silent
/// until READY, which it is sent (after [`DIALECT_GRACE`], in case it is a native client
/// whose preamble is late) if a slot frees, with nobody identified waiting, before its
/// handshake time is up; its handshake time then starts again. A silent connection holds
/// no place in line: it is closed when its time is up.
async fn handshake(
    ctx: &Ctx,
    mut stream: TcpStream,
    peer: SocketAddr,
    mut pending: Pending,
    ticket: &mut Option<Ticket>,
    summary: &mut Summary,
) -> Result<Identified, Error> {
    let limit = ctx.cfg.handshake_timeout;
    let mut deadline = tokio::time::Instant::now() + limit;
    let timed_out = |summary: &mut Summary| {
        summary.unidentified_end = Some(HANDSHAKE_TIMEOUT);
        Error::Timeout(limit)
    };
    let params = ServerParams {
        encodings: ctx.cfg.encodings.clone(),
        keep_setid: ctx.store.keeps_setid(),
        mtime_window: ctx.store.mtime_precision(),
        modes_in_place: ctx.store.modes_in_place(),
        delete_caps: ctx.cfg.delete_caps,
        auth_required: ctx.cfg.auth.is_some(),
    };
    let (srv, status) = Server::new(params, peer.ip()).greet(pending.greeting());
    let mut greeting = BytesMut::new();
    // The greeting ends in `\n` although the original's does not: its clients parse one
    // `recv` with `json.loads`, which allows trailing whitespace.
    encode_seed(&seed::ServerMsg::Status(status), true, &mut greeting);
    tokio::time::timeout_at(deadline, stream.write_all(&greeting))
        .await
        .map_err(|_| timed_out(summary))?
        .map_err(|e| Error::io("sending the greeting", e))?;

    let opening = match sniff(&mut stream, &mut pending, &mut deadline, limit).await {
        Ok(o) => o,
        Err(Sniffed::TimedOut) => return Err(timed_out(summary)),
        Err(Sniffed::Closed) => {
            summary.unidentified_end = Some(CLOSED_SILENT);
            return Err(Error::Closed);
        }
        Err(Sniffed::Failed(e)) => return Err(e),
    };
    let mut stream = match opening {
        Opening::Plain(Dialect::Seed) => {
            summary.dialect = Some(Dialect::Seed);
            if ctx.cfg.auth.is_some() {
                // The original dialect has no error message and no way to authenticate:
                // the connection is closed before a byte of its list is read.
                return Err(Error::Refused {
                    code: ErrorCode::UNAUTHORIZED,
                    message: "an original FileSync client cannot authenticate, and this \
                              server lets in only clients that do (--auth-file)"
                        .into(),
                });
            }
            return seed_handshake(stream, deadline, limit, ticket, pending, summary).await;
        }
        Opening::Plain(Dialect::Native) => Transport::Plain(stream),
        Opening::Tls => {
            let Some(tls) = &ctx.cfg.tls else {
                return Err(Error::Refused {
                    code: ErrorCode::UNAUTHORIZED,
                    message: "a TLS handshake, and this server has no TLS key".into(),
                });
            };
            let accepted = tokio::time::timeout_at(deadline, tls.acceptor.accept(stream))
                .await
                .map_err(|_| timed_out(summary))?
                .map_err(|e| Error::io("TLS handshake", e))?;
            Transport::Server(Box::new(accepted))
        }
    };
    summary.dialect = Some(Dialect::Native);

    let idle = ctx.cfg.idle_timeout;
    let mut pre = [0u8; preamble::LEN];
    tokio::time::timeout_at(deadline, stream.read_exact(&mut pre))
        .await
        .map_err(|_| timed_out(summary))?
        .map_err(|e| Error::io("reading the preamble", e))?;
    let encoding = preamble::decode(&pre)?;
    let mut framed = Framed::new(stream, ServerCodec::new(encoding));
    let greeted = match next_handshake_frame(&mut framed, deadline, "HELLO").await {
        Ok(hello) => {
            if let ClientMsg::Hello(h) = &hello {
                summary.claimed.clone_from(&h.client_id);
            }
            authenticate(ctx, &mut framed, &hello, peer, deadline)
                .await
                .map(|()| hello)
        }
        Err(e) => Err(e),
    };
    let hello = match greeted {
        Ok(hello) => hello,
        Err(e) => {
            let e = if matches!(e, Error::Timeout(_)) {
                timed_out(summary)
            } else {
                e
            };
            return Err(fail(&mut framed, e, idle).await);
        }
    };
    match srv.on_hello(encoding, hello) {
        Ok((srv, welcome)) => {
            *ticket = Some(pending.identify());
            Ok(Identified::Native {
                srv,
                framed,
                welcome,
            })
        }
        Err(refusal) => {
            let _ = send(&mut framed, *refusal.msg, idle).await;
            Err(refusal.error)
        }
    }
}

/// Reads an original client's `CLIENT_FILES_INFO` (up to [`HANDSHAKE_BYTES`]) and queues it.
async fn seed_handshake(
    mut stream: TcpStream,
    deadline: tokio::time::Instant,
    limit: Duration,
    ticket: &mut Option<Ticket>,
    pending: Pending,
    summary: &mut Summary,
) -> Result<Identified, Error> {
    let mut codec = SeedServerCodec::default();
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let first = loop {
        if let Some(f) = codec.decode(&mut buf)? {
            break Some(f);
        }
        if buf.len() >= HANDSHAKE_BYTES {
            break None;
        }
        buf.reserve(16 * 1024);
        let n = match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_) => {
                summary.unidentified_end = Some(HANDSHAKE_TIMEOUT);
                return Err(Error::Timeout(limit));
            }
            Ok(r) => r.map_err(|e| Error::io("reading from the client", e))?,
        };
        if n == 0 {
            return Err(Error::Closed);
        }
    };
    *ticket = Some(pending.identify());
    // Through its parts, so that what is buffered is decoded before reading more.
    let mut parts = Framed::new(stream, codec).into_parts();
    parts.read_buf = buf;
    Ok(Identified::Seed {
        framed: Framed::from_parts(parts),
        first,
    })
}

/// The next frame of the handshake, a message, by the deadline.
async fn next_handshake_frame(
    framed: &mut Conn,
    deadline: tokio::time::Instant,
    expected: &'static str,
) -> Result<ClientMsg, Error> {
    match tokio::time::timeout_at(deadline, framed.next()).await {
        Err(_) => Err(Error::Timeout(Duration::ZERO)),
        Ok(None) => Err(Error::Closed),
        Ok(Some(Err(e))) => Err(e.into()),
        Ok(Some(Ok(Frame::Data(_)))) => Err(unexpected(expected, "DATA")),
        Ok(Some(Ok(Frame::Msg(m)))) => Ok(m),
    }
}

/// Checks that the session is allowed in, after its `HELLO`: with an auth file, it must run
/// over TLS, name its id, and send an `AUTH` whose proof verifies with that id's secret;
/// then `AUTH_OK` carries the server's proof. Without one, a TLS session is refused, since
/// its client wants a server that can prove it knows its secret. The refusal says why
/// without telling an unknown id from a wrong secret; the log tells the two apart.
async fn authenticate(
    ctx: &Ctx,
    framed: &mut Conn,
    hello: &ClientMsg,
    peer: SocketAddr,
    deadline: tokio::time::Instant,
) -> Result<(), Error> {
    let refuse = |message: String| Error::Refused {
        code: ErrorCode::UNAUTHORIZED,
        message,
    };
    let exporter = framed.get_ref().exporter();
    let Some(file) = &ctx.cfg.auth else {
        return match exporter {
            None => Ok(()),
            Some(_) => Err(refuse(
                "this server does not authenticate clients (it runs without --auth-file), so \
                 it cannot prove it holds your secret; sync without --secret-file, or give \
                 the server an auth file"
                    .into(),
            )),
        };
    };
    let Some(exporter) = exporter else {
        return Err(refuse(
            "this server lets in only clients that authenticate: sync with --secret-file FILE \
             (or FILESYNC_SECRET)"
                .into(),
        ));
    };
    let ClientMsg::Hello(h) = hello else {
        // Not a HELLO: `on_hello` refuses it with the reason.
        return Ok(());
    };
    let Some(id) = &h.client_id else {
        return Err(refuse(
            "an authenticating client must name its id (--id)".into(),
        ));
    };
    let proof = match next_handshake_frame(framed, deadline, "AUTH").await? {
        ClientMsg::Auth(a) => a.proof,
        other => return Err(unexpected("AUTH", other.kind())),
    };
    let ok = match file.table().admit(id, &exporter, &proof) {
        Ok(server_proof) => ServerMsg::AuthOk(AuthOk {
            proof: server_proof,
        }),
        Err(why) => {
            tracing::warn!(client = %id, %peer, "authentication failed: {}", why.reason());
            return Err(refuse(format!(
                "authentication failed for client id {id}: the id is unknown or the secret is wrong"
            )));
        }
    };
    within(ctx.cfg.idle_timeout, framed.send(Frame::Msg(ok))).await??;
    tracing::debug!(client = %id, %peer, "authenticated");
    Ok(())
}

/// What a connection's first byte says it is.
enum Opening {
    /// A dialect in the clear.
    Plain(Dialect),
    /// A TLS ClientHello (a record of content type 22, handshake).
    Tls,
}

/// How sniffing the dialect failed.
enum Sniffed {
    /// Silent until the deadline.
    TimedOut,
    /// Closed before a byte.
    Closed,
    Failed(Error),
}

/// Reads the first byte the client sends to tell the dialects apart (without consuming
/// it), by the deadline. A connection greeted BUSY that is still silent when a slot frees
/// for it is, after [`DIALECT_GRACE`], taken for an original client waiting for READY: it
/// is sent READY and given a new deadline.
async fn sniff(
    stream: &mut TcpStream,
    pending: &mut Pending,
    deadline: &mut tokio::time::Instant,
    limit: Duration,
) -> Result<Opening, Sniffed> {
    let mut b = [0u8; 1];
    let peeked = if pending.standing_by() {
        let mut watch = pending.watch();
        loop {
            if pending.try_promote() {
                *deadline = tokio::time::Instant::now() + limit;
                match tokio::time::timeout(DIALECT_GRACE, stream.peek(&mut b)).await {
                    Ok(r) => break r,
                    Err(_) => {
                        send_seed_ready(stream, *deadline).await?;
                        return Ok(Opening::Plain(Dialect::Seed));
                    }
                }
            }
            tokio::select! {
                r = stream.peek(&mut b) => break r,
                changed = watch.changed() => {
                    if changed.is_err() {
                        // The queue is gone (never while serving): wait for the deadline.
                        tokio::time::sleep_until(*deadline).await;
                        return Err(Sniffed::TimedOut);
                    }
                }
                _ = tokio::time::sleep_until(*deadline) => return Err(Sniffed::TimedOut),
            }
        }
    } else {
        match tokio::time::timeout_at(*deadline, stream.peek(&mut b)).await {
            Ok(r) => r,
            Err(_) => return Err(Sniffed::TimedOut),
        }
    };
    match peeked {
        Ok(0) => Err(Sniffed::Closed),
        Ok(_) if b[0] == TLS_HANDSHAKE_RECORD => Ok(Opening::Tls),
        Ok(_) => Dialect::sniff(b[0])
            .map(Opening::Plain)
            .map_err(|e| Sniffed::Failed(e.into())),
        Err(e) => Err(Sniffed::Failed(Error::io("reading from the client", e))),
    }
}

/// The first byte of a TLS record of content type handshake (RFC 8446 §5.1): how a
/// client that authenticates opens its session, instead of the native magic.
const TLS_HANDSHAKE_RECORD: u8 = 22;

/// The second greeting, for an original client that waited after BUSY: the original's
/// bytes exactly (no extensions, no newline).
async fn send_seed_ready(
    stream: &mut TcpStream,
    deadline: tokio::time::Instant,
) -> Result<(), Sniffed> {
    let mut ready = BytesMut::new();
    let status = seed::ServerStatus {
        status: seed::Status::Ready,
        queue_position: None,
        filesync: None,
    };
    encode_seed(&seed::ServerMsg::Status(status), false, &mut ready);
    match tokio::time::timeout_at(deadline, stream.write_all(&ready)).await {
        Err(_) => Err(Sniffed::TimedOut),
        Ok(Err(e)) => Err(Sniffed::Failed(Error::io("sending READY", e))),
        Ok(Ok(())) => Ok(()),
    }
}

type Conn = Framed<Transport, ServerCodec>;

async fn send(framed: &mut Conn, msg: ServerMsg, idle: Duration) -> Result<(), Error> {
    within(idle, framed.send(Frame::Msg(msg))).await??;
    Ok(())
}

/// Tells the client why the session ends (best effort) and returns the error.
async fn fail(framed: &mut Conn, e: Error, idle: Duration) -> Error {
    let code = match &e {
        Error::Protocol(p) => p.code(),
        Error::Refused { code, .. } | Error::Remote { code, .. } => *code,
        Error::Codec(_) => ErrorCode::PROTOCOL,
        Error::Timeout(_) => ErrorCode::IDLE_TIMEOUT,
        _ => ErrorCode::INTERNAL,
    };
    let msg = ServerMsg::Error(ErrorMsg {
        code,
        message: match &e {
            Error::Refused { message, .. } => message.clone(),
            other => other.to_string(),
        },
    });
    let _ = tokio::time::timeout(
        idle.min(Duration::from_secs(5)),
        framed.send(Frame::Msg(msg)),
    )
    .await;
    e
}

async fn next_frame(framed: &mut Conn, idle: Duration) -> Result<Frame<ClientMsg>, Error> {
    match within(idle, framed.next()).await? {
        Some(Ok(f)) => Ok(f),
        Some(Err(e)) => Err(e.into()),
        None => Err(Error::Closed),
    }
}

fn shutdown_error() -> Error {
    Error::Refused {
        code: ErrorCode::SHUTTING_DOWN,
        message: "the server is shutting down".into(),
    }
}

async fn shutting_down(framed: &mut Conn) -> Error {
    fail(framed, shutdown_error(), Duration::from_secs(2)).await
}

/// Holds a welcomed client until its turn, telling it its position when it changes and
/// every [`QUEUE_KEEPALIVE`]. A client that speaks or hangs up while queued leaves.
async fn wait_turn(
    srv: &Server<Welcomed>,
    framed: &mut Conn,
    ticket: &mut Ticket,
    cancel: &CancellationToken,
) -> Result<(), Error> {
    let mut watch = ticket.watch();
    let mut last = None;
    loop {
        let pos = match ticket.try_activate() {
            Ok(()) => return Ok(()),
            Err(p) => p,
        };
        if last != Some(pos) {
            send(framed, srv.queued(pos), QUEUE_KEEPALIVE).await?;
            last = Some(pos);
        }
        tokio::select! {
            _ = watch.changed() => {}
            _ = tokio::time::sleep(QUEUE_KEEPALIVE) => last = None,
            f = framed.next() => {
                return Err(match f {
                    None => Error::Closed,
                    Some(Err(e)) => e.into(),
                    // A client may give up while it waits, and say why.
                    Some(Ok(Frame::Msg(ClientMsg::Error(e)))) => Error::Remote {
                        code: e.code,
                        message: e.message,
                    },
                    Some(Ok(Frame::Msg(m))) => unexpected("silence while queued", m.kind()),
                    Some(Ok(Frame::Data(_))) => unexpected("silence while queued", "DATA"),
                });
            }
            _ = cancel.cancelled() => return Err(shutting_down(framed).await),
        }
    }
}

/// Work for the writer thread.
#[derive(Debug)]
pub(super) enum Op {
    /// A file to receive, and the mode to give it (`None`: the default for new files).
    Open(FileHeader, Option<u32>),
    Data(Bytes),
    Hole(u64),
    /// Blocks of the stored copy, in a delta.
    Copy(u32, u32),
    /// The open file is complete (after a delta, with the client's hash of it).
    Commit(Option<crate::messages::Hash>),
    Discard,
    /// Apply the tail, deleting what the budget allows.
    Finish(Spool, DeleteBudget),
}

/// What the writer thread reports.
#[derive(Debug)]
pub(super) enum Written {
    Results(Vec<(RelPath, Outcome)>),
    Finished(Applied),
}

/// The error for a writer thread that is no longer there to take work.
fn writer_gone() -> Error {
    Error::io("storing", std::io::Error::other("the writer stopped"))
}

/// Store operations gathered before they cross to the writer thread.
pub(super) struct OpBatch {
    tx: mpsc::Sender<Vec<Op>>,
    ops: Vec<Op>,
    bytes: usize,
}

impl OpBatch {
    const OPS: usize = 256;
    const BYTES: usize = 1 << 20;

    pub(super) fn new(tx: mpsc::Sender<Vec<Op>>) -> Self {
        OpBatch {
            tx,
            ops: Vec::with_capacity(Self::OPS),
            bytes: 0,
        }
    }

    /// Queues an operation; sends the batch once it is full.
    pub(super) async fn push(&mut self, op: Op, bytes: usize) -> Result<(), Error> {
        self.ops.push(op);
        self.bytes += bytes;
        if self.ops.len() >= Self::OPS || self.bytes >= Self::BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends what is queued.
    pub(super) async fn flush(&mut self) -> Result<(), Error> {
        self.bytes = 0;
        if self.ops.is_empty() {
            return Ok(());
        }
        let ops = std::mem::replace(&mut self.ops, Vec::with_capacity(Self::OPS));
        self.tx.send(ops).await.map_err(|_| writer_gone())
    }

    /// The channel, once nothing is queued.
    pub(super) fn into_sender(self) -> mpsc::Sender<Vec<Op>> {
        self.tx
    }
}

pub(super) fn spawn_writer(
    store: Arc<dyn Archive>,
    id: ClientId,
    fence: Fence,
) -> (
    mpsc::Sender<Vec<Op>>,
    mpsc::UnboundedReceiver<Written>,
    tokio::task::JoinHandle<()>,
) {
    // Bounded: a slow disk pushes back on the network instead of filling memory.
    let (op_tx, mut op_rx) = mpsc::channel::<Vec<Op>>(8);
    let (res_tx, res_rx) = mpsc::unbounded_channel();
    let handle = tokio::task::spawn_blocking(move || {
        let placed = res_tx.clone();
        let mut r = match store.writer(
            &id,
            Box::new(move |out| {
                let _ = placed.send(Written::Results(out));
            }),
            fence,
        ) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the placer thread");
                return;
            }
        };
        while let Some(ops) = op_rx.blocking_recv() {
            for op in ops {
                match op {
                    Op::Open(h, mode) => r.open(&h, mode),
                    Op::Data(b) => r.write(&b),
                    Op::Hole(n) => r.skip(n),
                    Op::Discard => r.discard(),
                    Op::Copy(block, count) => r.copy(block, count),
                    Op::Commit(hash) => {
                        let out = r.commit(hash);
                        if !out.is_empty() {
                            let _ = res_tx.send(Written::Results(out));
                        }
                    }
                    Op::Finish(tail, budget) => {
                        let _ = res_tx.send(Written::Finished(r.finish(tail, &budget)));
                        return;
                    }
                }
            }
        }
        // The session ended early: dropping the receiver keeps the files that arrived
        // whole and removes the partial one.
    });
    (op_tx, res_rx, handle)
}

/// The planner's I/O: the server's index of the client folder, read as the manifest
/// arrives, and the spool its tail goes to.
struct PlanIo {
    index: Box<dyn HeldIndex>,
    spool: Spool,
    /// For resume offers: the store and the client it files under.
    store: Arc<dyn Archive>,
    id: ClientId,
}

/// Where a session stands while files flow.
enum Phase {
    /// The manifest is still arriving (files of answered batches may too). Both states
    /// are boxed: they are moved at every frame.
    Listing(Box<Server<Listing>>),
    /// `PLAN_END` was sent; the last files arrive.
    Receiving(Box<Server<Receiving>>),
}

impl Phase {
    fn on_data(&mut self, len: usize) -> Result<(), Error> {
        match self {
            Phase::Listing(s) => s.on_data(len),
            Phase::Receiving(s) => s.on_data(len),
        }
    }

    fn file_result(&mut self, path: RelPath, outcome: Outcome) -> ServerMsg {
        match self {
            Phase::Listing(s) => s.file_result(path, outcome),
            Phase::Receiving(s) => s.file_result(path, outcome),
        }
    }
}

/// What one frame did to a session.
enum Step {
    /// Files still flow; send these, in order, now.
    Going(Phase, Vec<ServerMsg>),
    /// `TRANSFER_END`: every file was sent.
    Received(Server<Received>),
}

/// Applies one frame to the session, queueing the store's work in `batch`. Manifest
/// batches are planned on a blocking thread, since planning reads the server's index.
async fn step(
    phase: Phase,
    frame: Frame<ClientMsg>,
    batch: &mut OpBatch,
    plan: &mut Option<PlanIo>,
) -> Result<Step, Error> {
    let msg = match frame {
        Frame::Data(b) => {
            let mut phase = phase;
            phase.on_data(b.len())?;
            let len = b.len();
            batch.push(Op::Data(b), len).await?;
            return Ok(Step::Going(phase, Vec::new()));
        }
        Frame::Msg(m) => m,
    };
    let (act, phase) = match phase {
        Phase::Listing(srv) => {
            let srv = *srv;
            let planning = matches!(msg, ClientMsg::Manifest(_) | ClientMsg::ManifestEnd(_));
            let listed = if planning {
                let mut io = plan.take().ok_or_else(|| {
                    Error::io("planning", std::io::Error::other("the plan's I/O is gone"))
                })?;
                let (listed, mut io) = tokio::task::spawn_blocking(move || {
                    let PlanIo {
                        index,
                        spool,
                        store,
                        id,
                    } = &mut io;
                    let r = match srv.on_message(msg, index, &mut |op| spool.push(&op)) {
                        // What the store holds of the requested files, offered to resume.
                        Ok(Listed::Listing(mut s, ServerMsg::Tasks(t))) => {
                            let offers = if s.resumes() {
                                store.resume_offers(id, &t.paths)
                            } else {
                                Vec::new()
                            };
                            let tasks = s.offer_resume(ServerMsg::Tasks(t), offers);
                            // Signatures of older copies go just before their TASKS.
                            let sigs = match &tasks {
                                ServerMsg::Tasks(t) if s.deltas() => {
                                    let bases = store.delta_bases(id, &t.paths);
                                    s.offer_bases(&tasks, bases)
                                }
                                _ => Vec::new(),
                            };
                            Ok((Listed::Listing(s, tasks), sigs))
                        }
                        other => other.map(|l| (l, Vec::new())),
                    };
                    (r, io)
                })
                .await
                .map_err(|e| Error::io("planning", std::io::Error::other(e)))?;
                if let Some(e) = io.index.take_error() {
                    return Err(Error::io("indexing the client folder", e));
                }
                io.spool
                    .check()
                    .map_err(|e| Error::io("writing the plan's spool", e))?;
                *plan = Some(io);
                listed?
            } else {
                (
                    srv.on_message(msg, &mut std::iter::empty(), &mut |_| {})?,
                    Vec::new(),
                )
            };
            match listed {
                (Listed::Listing(s, tasks), mut replies) => {
                    replies.push(tasks);
                    return Ok(Step::Going(Phase::Listing(Box::new(s)), replies));
                }
                (Listed::Receiving(s, end), _) => {
                    return Ok(Step::Going(Phase::Receiving(Box::new(s)), vec![end]))
                }
                (Listed::File(s, act), _) => (act, Phase::Listing(Box::new(s))),
            }
        }
        Phase::Receiving(srv) => match srv.on_message(msg)? {
            Receipt::Receiving(s, act) => (act, Phase::Receiving(Box::new(s))),
            Receipt::Received(s) => return Ok(Step::Received(s)),
        },
    };
    let op = match act {
        Receive::Open(h) => {
            let mode = h.mode;
            Op::Open(h, Some(mode))
        }
        Receive::Hole(n) => Op::Hole(n),
        Receive::Commit(_, hash) => Op::Commit(hash),
        Receive::Copy { block, count } => Op::Copy(block, count),
        Receive::Discard(p, reason) => {
            tracing::info!(path = %p, reason, "client dropped a file");
            Op::Discard
        }
    };
    batch.push(op, 0).await?;
    Ok(Step::Going(phase, Vec::new()))
}

#[allow(clippy::too_many_arguments)]
async fn receive(
    ctx: &Ctx,
    srv: Server<Listing>,
    plan: PlanIo,
    framed: &mut Conn,
    ops: mpsc::Sender<Vec<Op>>,
    results: &mut mpsc::UnboundedReceiver<Written>,
    cancel: &CancellationToken,
    summary: &mut Summary,
) -> Result<(), Error> {
    let idle = ctx.cfg.idle_timeout;
    let mut batch = OpBatch::new(ops);
    let mut plan = Some(plan);
    let mut going = Some(Phase::Listing(Box::new(srv)));
    let mut srv = loop {
        tokio::select! {
            Some(w) = results.recv() => {
                if let (Written::Results(out), Some(phase)) = (w, going.as_mut()) {
                    for (p, o) in out {
                        within(idle, framed.feed(Frame::Msg(phase.file_result(p, o)))).await??;
                    }
                    within(idle, framed.flush()).await??;
                }
            }
            f = next_frame(framed, idle) => {
                // Take every frame that is already here, then hand the store their work
                // in one batch: one wake-up of the writer thread per read, not per frame.
                let mut next = Some(f);
                let mut received = None;
                let mut replies = false;
                while let Some(f) = next.take() {
                    let phase = going.take().expect("present until TRANSFER_END");
                    let stepped = match f {
                        Ok(f) => step(phase, f, &mut batch, &mut plan).await,
                        Err(e) => Err(e),
                    };
                    match stepped {
                        Ok(Step::Going(s, reply)) => {
                            going = Some(s);
                            for m in reply {
                                within(idle, framed.feed(Frame::Msg(m))).await??;
                                replies = true;
                            }
                        }
                        Ok(Step::Received(s)) => {
                            received = Some(s);
                            break;
                        }
                        Err(e) => {
                            // Files that arrived whole before the fault are kept; the
                            // writer drops the partial one when the channel closes.
                            let _ = batch.flush().await;
                            return Err(fail(framed, e, idle).await);
                        }
                    }
                    next = match framed.next().now_or_never() {
                        Some(Some(r)) => Some(r.map_err(Error::from)),
                        Some(None) => Some(Err(Error::Closed)),
                        None => None,
                    };
                }
                if replies {
                    within(idle, framed.flush()).await??;
                }
                batch.flush().await?;
                if let Some(s) = received {
                    break s;
                }
            }
            _ = cancel.cancelled() => return Err(shutting_down(framed).await),
        }
    };
    let spool = plan.take().map(|p| p.spool).ok_or_else(|| {
        Error::io(
            "finishing",
            std::io::Error::other("the plan's spool is gone"),
        )
    })?;
    let ops = batch.into_sender();
    // Deletions come next: never once the session's lease is gone (another server may
    // be serving the client by now).
    if cancel.is_cancelled() {
        return Err(shutting_down(framed).await);
    }
    if let Some(why) = srv.delete_budget().reason() {
        tracing::warn!(client = %srv.client_id(), "deletions may be held back: {why}");
    }
    ops.send(vec![Op::Finish(spool, srv.delete_budget().clone())])
        .await
        .map_err(|_| writer_gone())?;
    // Finishing (the last sync, the deletions) can take a while on a slow disk; the client
    // hears FILE_RESULTs meanwhile and waits for NEXT_SYNC.
    loop {
        match results.recv().await {
            Some(Written::Results(out)) => {
                for (p, o) in out {
                    within(idle, framed.feed(Frame::Msg(srv.file_result(p, o)))).await??;
                }
            }
            Some(Written::Finished(applied)) => {
                srv.deleted(applied.deleted, applied.held_back);
                srv.tail_failed(applied.errors.len() as u64);
                for e in &applied.errors {
                    tracing::warn!(client = %srv.client_id(), error = %e, "finishing");
                }
                break;
            }
            None => return Err(writer_gone()),
        }
    }
    let (at, delay) = ctx.next_visit(srv.client_id());
    let (done, msg) = srv.next_sync(at, u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
    summary.tally = done.tally();
    within(idle, framed.feed(Frame::Msg(msg))).await??;
    within(idle, framed.flush()).await??;
    Ok(())
}

//! The server's drive loop: accepts connections, queues them fairly, and runs each
//! session's typestate machine over the socket, with the store's writes on a blocking
//! thread so that reading the network and writing the disk overlap.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::queue::{Queue, Ticket};
use crate::codec::json_stream::encode_seed;
use crate::codec::native::ServerCodec;
use crate::codec::preamble::{self, Dialect};
use crate::codec::{Frame, DATA_CHUNK};
use crate::error::{Error, ProtocolError};
use crate::messages::{
    seed, ClientMsg, Encoding, ErrorCode, ErrorMsg, FileHeader, Outcome, ServerMsg,
};
use crate::paths::{ClientId, RelPath};

use crate::planner::{DeleteBudget, DeleteCaps};
use crate::schedule::Scheduler;
use crate::session::server::{
    Listed, Listing, Receipt, Receive, Received, Receiving, Server, ServerParams, Tally, Welcomed,
};
use crate::session::unexpected;
use crate::store::{Applied, Index, Spool, Store};
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
}

/// How often a queued client hears its position, so it knows the server is alive.
const QUEUE_KEEPALIVE: Duration = Duration::from_secs(10);
/// After a BUSY greeting, how long to wait for a native preamble once the turn has come
/// before taking the silent client for an original one waiting for READY.
const DIALECT_GRACE: Duration = Duration::from_secs(1);
/// How long shutdown waits for sessions to wind down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

pub(super) struct Ctx {
    pub(super) store: Arc<Store>,
    pub(super) queue: Arc<Queue>,
    pub(super) sched: Mutex<Scheduler>,
    pub(super) cfg: ServeConfig,
    /// Client ids with a session running: two sessions of one id at once (possible with
    /// `--max-sessions` above 1) could delete what the other stores.
    active_ids: Mutex<HashSet<ClientId>>,
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
    pub(super) dialect: Option<Dialect>,
    pub(super) tally: Tally,
    pub(super) queue_wait: Duration,
}

/// Serves until `shutdown` resolves, then stops accepting, ends the running sessions
/// (complete files are kept, partial ones discarded) and returns.
pub async fn serve(
    listener: TcpListener,
    store: Store,
    cfg: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let store = Arc::new(store);
    purge_versions(&store).await;
    let ctx = Arc::new(Ctx {
        store,
        queue: Queue::new(cfg.max_sessions),
        sched: Mutex::new(Scheduler::new(cfg.interval)),
        cfg,
        active_ids: Mutex::new(HashSet::new()),
    });
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tracker.spawn(handle(Arc::clone(&ctx), stream, peer, cancel.child_token()));
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
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

async fn handle(ctx: Arc<Ctx>, stream: TcpStream, peer: SocketAddr, cancel: CancellationToken) {
    let started = Instant::now();
    let mut summary = Summary::default();
    // The ticket (the queue slot) outlives the session's log line, so that with one session
    // at a time the log never shows the next one starting before this one is done.
    let mut ticket = ctx.queue.join();
    let result = session(&ctx, stream, peer, &mut ticket, &cancel, &mut summary).await;
    let t = summary.tally;
    let client = summary.client.as_ref().map_or("-", ClientId::as_str);
    let dialect = summary.dialect.map_or("-", Dialect::name);
    match result {
        Ok(()) => tracing::info!(
            client, %peer, dialect, stored = t.stored, rejected = t.rejected, bytes = t.bytes,
            deleted = t.deleted, duration = ?started.elapsed(), queue_wait = ?summary.queue_wait,
            "session done"
        ),
        Err(e) => tracing::warn!(
            client, %peer, dialect, stored = t.stored, bytes = t.bytes,
            duration = ?started.elapsed(), error = %e, "session failed"
        ),
    }
    if summary.client.is_some() {
        purge_versions(&ctx.store).await;
    }
    drop(ticket);
}

/// Removes versions past their retention, off the async threads; a failure is logged.
pub async fn purge_versions(store: &Arc<Store>) {
    let store = Arc::clone(store);
    match tokio::task::spawn_blocking(move || store.purge_versions()).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!(records = n, "purged versions past their retention"),
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot purge old versions"),
        Err(e) => tracing::warn!(error = %e, "the version purge stopped"),
    }
}

/// Runs `f` unless the server shuts down first.
async fn unless_cancelled<T>(
    cancel: &CancellationToken,
    f: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::select! {
        r = f => r,
        _ = cancel.cancelled() => Err(shutdown_error()),
    }
}

pub(super) async fn within<T>(d: Duration, f: impl Future<Output = T>) -> Result<T, Error> {
    tokio::time::timeout(d, f)
        .await
        .map_err(|_| Error::Timeout(d))
}

async fn session(
    ctx: &Ctx,
    mut stream: TcpStream,
    peer: SocketAddr,
    ticket: &mut Ticket,
    cancel: &CancellationToken,
    summary: &mut Summary,
) -> Result<(), Error> {
    let idle = ctx.cfg.idle_timeout;
    let queued_at = Instant::now();
    let params = ServerParams {
        encodings: ctx.cfg.encodings.clone(),
        keep_setid: ctx.store.keeps_setid(),
        mtime_window: ctx.store.mtime_precision(),
        delete_caps: ctx.cfg.delete_caps,
    };
    let (srv, status) = Server::new(params, peer.ip()).greet(ticket.position());
    let mut greeting = BytesMut::new();
    // The greeting ends in `\n` although the original's does not: its clients parse one
    // `recv` with `json.loads`, which allows trailing whitespace.
    encode_seed(&seed::ServerMsg::Status(status), true, &mut greeting);
    unless_cancelled(cancel, async {
        within(idle, stream.write_all(&greeting))
            .await?
            .map_err(|e| Error::io("sending the greeting", e))
    })
    .await?;

    let greeted_busy = ticket.position().is_some();
    let dialect = unless_cancelled(cancel, sniff(&mut stream, ticket, idle, cancel)).await?;
    summary.dialect = Some(dialect);
    if dialect == Dialect::Seed {
        let turn = TurnState {
            greeted_busy,
            queued_at,
        };
        return super::seed_server::session(ctx, stream, peer, ticket, turn, cancel, summary).await;
    }

    let mut pre = [0u8; preamble::LEN];
    unless_cancelled(cancel, async {
        within(idle, stream.read_exact(&mut pre))
            .await?
            .map_err(|e| Error::io("reading the preamble", e))
    })
    .await?;
    let encoding = preamble::decode(&pre)?;
    // Reads of a quarter mebibyte: file content arrives in DATA frames of that size.
    let mut framed = Framed::with_capacity(stream, ServerCodec::new(encoding), DATA_CHUNK + 64);

    let hello = match next_msg_or_cancel(&mut framed, idle, cancel).await {
        Ok(m) => m,
        Err(e) => return Err(fail(&mut framed, e, idle).await),
    };
    let srv = match srv.on_hello(encoding, hello) {
        Ok((srv, welcome)) => {
            send(&mut framed, welcome, idle).await?;
            srv
        }
        Err(refusal) => {
            let _ = send(&mut framed, *refusal.msg, idle).await;
            return Err(refusal.error);
        }
    };
    summary.client = Some(srv.client_id().clone());

    wait_turn(&srv, &mut framed, ticket, cancel).await?;
    summary.queue_wait = queued_at.elapsed();

    let id = srv.client_id().clone();
    let Some(_lease) = ctx.lease(&id) else {
        return Err(fail(&mut framed, in_progress(&id), idle).await);
    };
    // The index is read lazily, batch by batch, as the planner merges it with the
    // manifest; the tail goes to a spool on disk. Neither is ever held whole in memory.
    let plan = PlanIo {
        index: ctx.store.index(&id),
        spool: ctx
            .store
            .spool()
            .map_err(|e| Error::io("creating the plan's spool", e))?,
    };
    let (ops, mut results, writer) = spawn_writer(Arc::clone(&ctx.store), id.clone());
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
        Err(e) => Err(e),
    };
    // Whatever happened, wait for the writer: it keeps complete files and removes partial
    // ones, and must be done before the session is reported over.
    let _ = writer.await;
    outcome
}

/// How a connection's turn began, for the original dialect, whose READY after BUSY is
/// sent by its driver.
pub(super) struct TurnState {
    /// The greeting said BUSY.
    pub(super) greeted_busy: bool,
    /// When the connection joined the queue.
    pub(super) queued_at: Instant,
}

/// Reads the first byte the client sends to tell the dialects apart (without consuming
/// it). After a BUSY greeting an original client stays silent until READY, so the turn
/// coming first (plus a grace period for a slow native preamble) means the original.
async fn sniff(
    stream: &mut TcpStream,
    ticket: &mut Ticket,
    idle: Duration,
    cancel: &CancellationToken,
) -> Result<Dialect, Error> {
    let mut b = [0u8; 1];
    let peeked = if ticket.position().is_none() {
        Some(within(idle, stream.peek(&mut b)).await?)
    } else {
        let mut watch = ticket.watch();
        loop {
            tokio::select! {
                r = stream.peek(&mut b) => break Some(r),
                _ = watch.changed() => {
                    if ticket.try_activate().is_ok() {
                        break tokio::time::timeout(DIALECT_GRACE, stream.peek(&mut b)).await.ok();
                    }
                }
                _ = cancel.cancelled() => return Err(shutdown_error()),
            }
        }
    };
    match peeked {
        None => Ok(Dialect::Seed),
        Some(Ok(0)) => Err(Error::Closed),
        Some(Ok(_)) => Ok(Dialect::sniff(b[0])?),
        Some(Err(e)) => Err(Error::io("reading from the client", e)),
    }
}

type Conn = Framed<TcpStream, ServerCodec>;

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

async fn next_msg(framed: &mut Conn, idle: Duration) -> Result<ClientMsg, Error> {
    match next_frame(framed, idle).await? {
        Frame::Msg(m) => Ok(m),
        Frame::Data(_) => Err(Error::Protocol(ProtocolError::Data(
            "DATA outside a file".into(),
        ))),
    }
}

async fn next_msg_or_cancel(
    framed: &mut Conn,
    idle: Duration,
    cancel: &CancellationToken,
) -> Result<ClientMsg, Error> {
    tokio::select! {
        m = next_msg(framed, idle) => m,
        _ = cancel.cancelled() => Err(shutdown_error()),
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
    Commit,
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
    store: Arc<Store>,
    id: ClientId,
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
        let mut r = match store.receiver(&id, move |out| {
            let _ = placed.send(Written::Results(out));
        }) {
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
                    Op::Commit => {
                        let out = r.commit();
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
    index: Index,
    spool: Spool,
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
    /// Files still flow; send this, if anything, now.
    Going(Phase, Option<ServerMsg>),
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
            return Ok(Step::Going(phase, None));
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
                    let PlanIo { index, spool } = &mut io;
                    let r = srv.on_message(msg, index, &mut |op| spool.push(&op));
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
                srv.on_message(msg, &mut std::iter::empty(), &mut |_| {})?
            };
            match listed {
                Listed::Listing(s, tasks) => {
                    return Ok(Step::Going(Phase::Listing(Box::new(s)), Some(tasks)))
                }
                Listed::Receiving(s, end) => {
                    return Ok(Step::Going(Phase::Receiving(Box::new(s)), Some(end)))
                }
                Listed::File(s, act) => (act, Phase::Listing(Box::new(s))),
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
        Receive::Commit(_) => Op::Commit,
        Receive::Discard(p, reason) => {
            tracing::info!(path = %p, reason, "client dropped a file");
            Op::Discard
        }
    };
    batch.push(op, 0).await?;
    Ok(Step::Going(phase, None))
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
                            if let Some(m) = reply {
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

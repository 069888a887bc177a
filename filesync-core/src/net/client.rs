//! The client's drive loop: one sync over a TCP connection.
//!
//! Reading and writing run concurrently: a task forwards everything the server sends into
//! a channel while the loop writes the manifest and file content, so neither side can
//! block the other with full socket buffers, and no step waits for a round trip per file.
//! File reads run on a blocking thread a few chunks ahead of the socket.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, FramedParts};

use crate::auth::{Role, Secret};
use crate::codec::json_stream::JsonCodec;
use crate::codec::native::ClientCodec;
use crate::codec::preamble::Dialect;
use crate::codec::{Frame, DATA_CHUNK};
use crate::delta;
use crate::error::{Error, ProtocolError};
use crate::messages::Hash;
use crate::messages::{seed, Auth, ClientMsg, Entry, ErrorCode, NextSync, ServerMsg};
use crate::paths::{ClientId, RelPath};
use crate::pins::{Fingerprint, KnownServers, PinCheck};
use crate::session::client::{Client, ClientParams, Finish, Report, Task, Waiting};
use crate::session::unexpected;
use crate::session::{batches, entry_weight};
use crate::walk;
use crate::walk::{ListOptions, ListStats, Piece, ReadError, Source};

use super::tls::{self, PinVerifier, Transport};

// Writes are bounded by the idle timeout as reads are: a server that stops reading (a hung
// peer, a path that drops everything) is as gone as one that stops talking, and a write
// into a full socket would otherwise wait forever.
use super::server::within;

/// Progress callbacks, for a progress bar or log lines. All methods have empty defaults.
pub trait Progress: Send + Sync {
    /// The server queued us at `position`.
    fn queued(&self, _position: u32) {}
    /// The plan so far: this many files and bytes requested (it grows while the listing
    /// is sent).
    fn requested(&self, _files: u64, _bytes: u64) {}
    /// The plan is complete: this many files and bytes to send, this many deletions.
    fn planned(&self, _files: u64, _bytes: u64, _deletions: u64) {}
    /// Content bytes were handed to the socket.
    fn sent(&self, _bytes: u64) {}
    /// A file was sent whole.
    fn file_done(&self) {}
    /// A file could not be sent this time.
    fn file_failed(&self, _path: &RelPath, _why: &str) {}
}

/// Progress that reports nothing.
#[derive(Debug, Default)]
pub struct Silent;
impl Progress for Silent {}

/// What a client sync needs besides the connection.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// The folder to push.
    pub dir: PathBuf,
    /// Session parameters (id, encoding, agent, allow-empty).
    pub params: ClientParams,
    /// Longest silence from the server before giving up.
    pub idle_timeout: Duration,
    /// Which protocol to speak.
    pub dialect: DialectChoice,
    /// What the listing leaves out (`--exclude`, `--delete-excluded`).
    pub list: ListOptions,
    /// Authenticate with a secret over TLS (`--secret-file`); `None` syncs in the clear.
    pub auth: Option<ClientAuth>,
}

/// How a client authenticates (`sync --secret-file`, spec §16): its secret, and the
/// known-servers file in which the key of the server that holds its archive is pinned.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// The client's secret, as listed for its id in the server's auth file.
    pub secret: Secret,
    /// The known-servers file (`--known-servers`).
    pub known_servers: PathBuf,
}

/// Which protocol a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DialectChoice {
    /// Native if the server's greeting offers it, the original's otherwise.
    #[default]
    Auto,
    /// Native only; an original server is an error.
    Native,
    /// The original's, even with a filesync server (which serves it too).
    Seed,
}

/// The client's folder as it is listed, in tree order, chunk by chunk, by a thread of its
/// own: see [`list_in_background`].
#[derive(Debug)]
pub struct Listing {
    rx: mpsc::Receiver<Result<Vec<Entry>, Error>>,
    stats: Arc<std::sync::Mutex<ListStats>>,
}

impl Listing {
    /// The next chunk of entries; `None` once the listing is complete.
    pub async fn recv(&mut self) -> Option<Result<Vec<Entry>, Error>> {
        self.rx.recv().await
    }

    /// What the listing left out; complete once [`recv`](Self::recv) has returned `None`.
    pub fn stats(&self) -> ListStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Lists `dir` on a thread of its own, a few chunks ahead of the session, which takes
/// them only as its window allows: the listing never sits whole in memory. A missing
/// folder is listed as empty (the server then refuses to empty an archive that holds
/// files, unless the client allows it), so an unmounted disk cannot wipe the archive.
pub fn list_in_background(dir: PathBuf, opts: ListOptions) -> Listing {
    let (tx, rx) = mpsc::channel(2);
    let stats = Arc::new(std::sync::Mutex::new(ListStats::default()));
    let shared = Arc::clone(&stats);
    tokio::task::spawn_blocking(move || {
        let mut lister = match walk::lister_with(&dir, &opts) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(dir = %dir.display(), "folder does not exist; listing it as empty");
                return;
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(Error::Listing(e)));
                return;
            }
        };
        let mut chunk = Vec::with_capacity(walk::LIST_CHUNK);
        for e in lister.by_ref() {
            chunk.push(e);
            if chunk.len() == walk::LIST_CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(walk::LIST_CHUNK));
                if tx.blocking_send(Ok(full)).is_err() {
                    return;
                }
            }
        }
        // Before the last chunk goes, so that the stats are complete once the channel
        // closes.
        if let Ok(mut s) = shared.lock() {
            *s = lister.stats().clone();
        }
        if !chunk.is_empty() {
            let _ = tx.blocking_send(Ok(chunk));
        }
    });
    Listing { rx, stats }
}

/// Books what a listing left out into a session's report: unreadable entries as failed
/// files, sockets, devices and exclusions by count.
fn book_listing(report: &mut Report, stats: &ListStats) {
    for (path, why) in &stats.unreadable_paths {
        report.fail(
            path.clone(),
            ErrorCode::ABORTED,
            format!("cannot read: {why}"),
        );
    }
    report.failed_count += stats.unreadable - stats.unreadable_paths.len() as u64;
    report.sockets = stats.sockets;
    report.devices = stats.devices;
    report.excluded = stats.excluded;
}

/// The result of a completed session.
#[derive(Debug, Clone)]
pub struct Synced {
    /// What was sent, stored and deleted.
    pub report: Report,
    /// When the server wants us back.
    pub next: NextSync,
    /// The id the server filed us under.
    pub client_id: ClientId,
    /// The protocol the session spoke.
    pub dialect: Dialect,
}

type Sink = SplitSink<Framed<Transport, ClientCodec>, Frame<ClientMsg>>;

/// Runs one sync of `cfg.dir` against the server at `addr`. Returns once the server has
/// confirmed with `NEXT_SYNC` that everything it stored is durable.
///
/// `listing` yields the folder's entries in tree order (see [`list_in_background`]); it is
/// read only once the server is ready, so a walk started before connecting overlaps the
/// connection.
pub async fn sync(
    addr: SocketAddr,
    cfg: &SyncConfig,
    mut listing: Listing,
    progress: Arc<dyn Progress>,
) -> Result<Synced, Error> {
    let idle = cfg.idle_timeout;
    let stream = super::connect(addr).await?;

    // The greeting is JSON in both dialects; read it with the JSON codec, then hand what
    // may already be buffered behind it to the native codec.
    // A greeting is a few hundred bytes; a server sending more is not one to wait for.
    let mut greet = Framed::new(stream, JsonCodec::<seed::ServerMsg>::with_max(64 << 10));
    let status = match tokio::time::timeout(idle, greet.next()).await {
        Err(_) => return Err(Error::Timeout(idle)),
        Ok(None) => return Err(Error::Closed),
        Ok(Some(Err(e))) => return Err(e.into()),
        Ok(Some(Ok(seed::ServerMsg::Status(s)))) => s,
        Ok(Some(Ok(other))) => return Err(unexpected("SERVER_STATUS_MESSAGE", other.kind())),
    };
    let old = greet.into_parts();
    let stream = old.io;
    let mut leftover = old.read_buf;
    let skip = leftover
        .iter()
        .take_while(|b| b.is_ascii_whitespace())
        .count();
    let _ = leftover.split_to(skip);

    let native = status.filesync.is_some();
    let seed = match cfg.dialect {
        DialectChoice::Seed => true,
        DialectChoice::Auto => !native,
        // An original server is refused by `on_greeting` below, with the reason.
        DialectChoice::Native => false,
    };
    if seed && cfg.auth.is_some() {
        return Err(refused(format!(
            "the server at {addr} {}; refusing to send the folder unauthenticated with \
             --secret-file given",
            if native {
                "would be spoken to in the original dialect, which cannot authenticate"
            } else {
                "is an original FileSync server, which cannot authenticate"
            }
        )));
    }
    if seed && status.filesync.as_ref().is_some_and(|o| o.auth) {
        // Such a server closes an original-dialect connection without a word (§16): say
        // why here, with the exit code of a refusal, rather than report a reset.
        return Err(refused(format!(
            "the server at {addr} lets in only clients that authenticate, which the original \
             dialect (--dialect seed) cannot; sync in the native dialect with --secret-file \
             FILE (or FILESYNC_SECRET) and --id"
        )));
    }
    if seed {
        tracing::info!(%addr, dialect = "seed", server_speaks_native = native, "syncing in the original FileSync dialect");
        // The original takes its listing in one message: gather it whole.
        let mut entries = Vec::new();
        while let Some(chunk) = listing.recv().await {
            entries.extend(chunk?);
        }
        if let Some(n) = cfg.params.max_delete {
            return Err(Error::Refused {
                code: crate::messages::ErrorCode::VERSION,
                message: format!(
                    "--max-delete {n} cannot be kept by an original FileSync server, which \
                     deletes every file the list leaves out; sync without it, or run \
                     `filesync serve` on the server"
                ),
            });
        }
        if listing.stats().excluded > 0 && !cfg.list.delete_excluded {
            tracing::warn!(
                "the original FileSync server deletes every file the list leaves out: \
                 excluded files are deleted from it too"
            );
        }
        let mut synced =
            super::seed_client::sync(stream, leftover, status, cfg, &entries, progress).await?;
        book_listing(&mut synced.report, &listing.stats());
        return Ok(synced);
    }
    tracing::debug!(%addr, dialect = "native", "syncing");
    let (client, greeting) = Client::new(cfg.params.clone()).on_greeting(&status)?;
    if let Some(p) = greeting.queue_position {
        progress.queued(p);
    }
    let (mut stream, first_use) = match &cfg.auth {
        Some(auth) => {
            if !leftover.is_empty() {
                return Err(Error::Protocol(ProtocolError::Inconsistent(
                    "the server sent more than its greeting before the TLS handshake".into(),
                )));
            }
            let id = cfg
                .params
                .client_id
                .as_ref()
                .ok_or_else(|| refused("authenticating needs a client id (--id)".into()))?;
            open_tls(stream, addr, auth, id, idle).await?
        }
        None => {
            if status.filesync.as_ref().is_some_and(|o| o.auth) {
                return Err(refused(format!(
                    "the server at {addr} lets in only clients that authenticate: sync with \
                     --secret-file FILE (or FILESYNC_SECRET) and --id"
                )));
            }
            (Transport::Plain(stream), None)
        }
    };
    within(idle, stream.write_all(&greeting.preamble))
        .await?
        .map_err(|e| Error::io("sending the preamble", e))?;
    let exporter = stream.exporter();
    let mut parts =
        FramedParts::new::<Frame<ClientMsg>>(stream, ClientCodec::new(cfg.params.encoding));
    parts.read_buf = leftover;
    let framed = Framed::from_parts(parts);
    let (mut sink, mut source) = framed.split();

    // Everything the server says flows through this channel, read by a task of its own so
    // that the server never blocks on a full socket while we are busy writing.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(f) = source.next().await {
            let stop = f.is_err();
            if tx.send(f).is_err() || stop {
                break;
            }
        }
    });
    let greeted = async {
        within(idle, sink.feed(Frame::Msg(greeting.hello))).await??;
        if let (Some(auth), Some(exporter)) = (&cfg.auth, exporter) {
            let id = cfg.params.client_id.as_ref().expect("checked above");
            authenticate(&mut sink, &mut rx, auth, id, &exporter, first_use, idle).await?;
        }
        within(idle, sink.flush()).await??;
        Ok::<(), Error>(())
    };
    let result = match greeted.await {
        Ok(()) => {
            drive(
                client,
                &mut sink,
                &mut rx,
                cfg,
                &mut listing,
                progress,
                idle,
            )
            .await
        }
        Err(e) => Err(e),
    };
    let result = result.map(|mut synced| {
        book_listing(&mut synced.report, &listing.stats());
        synced
    });
    reader.abort();
    // After a failure what is still buffered may never go (a stalled peer): the socket is
    // just dropped.
    if result.is_ok() {
        let _ = within(idle, sink.close()).await;
    }
    result
}

fn refused(message: String) -> Error {
    Error::Refused {
        code: ErrorCode::UNAUTHORIZED,
        message,
    }
}

/// Opens TLS over `stream`, trusting only the server keys pinned for `id` (any key if none
/// is: first use). Returns the stream and, on first use, the known-servers file and the
/// key to pin once the server has proved it knows the secret.
async fn open_tls(
    stream: TcpStream,
    addr: SocketAddr,
    auth: &ClientAuth,
    id: &ClientId,
    idle: Duration,
) -> Result<(Transport, Option<(KnownServers, Fingerprint)>), Error> {
    let known = KnownServers::load(&auth.known_servers)?;
    let verifier = Arc::new(PinVerifier::new(known.pins_for(id).cloned().collect()));
    let connector = tls::connector(Arc::clone(&verifier))?;
    match within(idle, connector.connect(tls::server_name(), stream)).await? {
        Ok(s) => {
            let first_use = match verifier.verdict() {
                Some((fp, PinCheck::FirstUse)) => Some((known, fp)),
                _ => None,
            };
            Ok((Transport::Client(Box::new(s)), first_use))
        }
        Err(e) => {
            if let Some((fp, PinCheck::Changed(pins))) = verifier.verdict() {
                let lines: Vec<String> = pins.iter().map(|p| p.line.to_string()).collect();
                return Err(refused(format!(
                    "the server at {addr} presented key {fp}, but client id {id} trusts only \
                     {} (pinned in {}, line {}). Someone may be impersonating the server. If \
                     its key was replaced on purpose, delete that line and sync again",
                    pins.iter()
                        .map(|p| p.fingerprint.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    known.path().display(),
                    lines.join(", "),
                )));
            }
            Err(Error::io(format!("TLS handshake with {addr}"), e))
        }
    }
}

/// Sends `AUTH` after `HELLO` and checks the server's `AUTH_OK` before anything of the
/// folder is sent; on first use, pins the server's key once it has proved it knows the
/// secret.
async fn authenticate(
    sink: &mut Sink,
    rx: &mut mpsc::UnboundedReceiver<Result<Frame<ServerMsg>, crate::codec::CodecError>>,
    auth: &ClientAuth,
    id: &ClientId,
    exporter: &[u8; crate::auth::EXPORTER_LEN],
    first_use: Option<(KnownServers, Fingerprint)>,
    idle: Duration,
) -> Result<(), Error> {
    let proof = crate::auth::proof(&auth.secret, Role::Client, exporter, id);
    within(idle, sink.send(Frame::Msg(ClientMsg::Auth(Auth { proof })))).await??;
    match recv(rx, idle).await? {
        ServerMsg::AuthOk(ok)
            if crate::auth::verify(&auth.secret, Role::Server, exporter, id, &ok.proof) => {}
        ServerMsg::AuthOk(_) => {
            return Err(refused(format!(
                "the server could not prove it knows the secret of client id {id}: it is not \
                 the server that holds this archive, or the secrets differ"
            )))
        }
        ServerMsg::Error(e) => {
            return Err(Error::Remote {
                code: e.code,
                message: e.message,
            })
        }
        other => return Err(unexpected("AUTH_OK", other.kind())),
    }
    if let Some((mut known, fp)) = first_use {
        known.pin(id, fp).map_err(|e| {
            Error::io(
                format!("pinning the server key in {}", known.path().display()),
                e,
            )
        })?;
        tracing::warn!(
            client = %id, key = %fp, file = %known.path().display(),
            "first sync with this server: pinned its key; a different key will be refused"
        );
    }
    Ok(())
}

async fn recv(
    rx: &mut mpsc::UnboundedReceiver<Result<Frame<ServerMsg>, crate::codec::CodecError>>,
    idle: Duration,
) -> Result<ServerMsg, Error> {
    match tokio::time::timeout(idle, rx.recv()).await {
        Err(_) => Err(Error::Timeout(idle)),
        Ok(None) => Err(Error::Closed),
        Ok(Some(Err(e))) => Err(e.into()),
        Ok(Some(Ok(Frame::Msg(m)))) => Ok(m),
        Ok(Some(Ok(Frame::Data(_)))) => Err(Error::Protocol(ProtocolError::Data(
            "the server sent DATA".into(),
        ))),
    }
}

/// What the file-reading thread hands the socket loop, in order.
enum Read {
    /// A file was opened and checked: send its header; its content follows, from this
    /// offset (0, or where a resumed file starts), or as a delta.
    Start(Task, Entry, HowSent),
    /// Content of the started file.
    Chunk(Bytes),
    /// A hole in the started file, this many bytes.
    Hole(u64),
    /// The started file was sent whole, this many bytes.
    End(u64),
    /// Blocks of the server's copy, in a delta.
    Copy(u32, u32),
    /// The started delta is complete: this many literal bytes, and the file's hash
    /// (`None` for a delta without `COPY`, which needs none).
    EndDelta(u64, Option<Hash>),
    /// The started file changed or failed while being read.
    Abort(String),
    /// A file that could not even be opened.
    Skip(Task, String),
}

async fn drive(
    mut c: Client<crate::session::client::Connected>,
    sink: &mut Sink,
    rx: &mut mpsc::UnboundedReceiver<Result<Frame<ServerMsg>, crate::codec::CodecError>>,
    cfg: &SyncConfig,
    listing: &mut Listing,
    progress: Arc<dyn Progress>,
    idle: Duration,
) -> Result<Synced, Error> {
    // Queued: the server keeps us posted, so silence past `idle` means it is gone.
    let ready = loop {
        match c.on_message(recv(rx, idle).await?)? {
            Waiting::Waiting(next, pos) => {
                if let Some(p) = pos {
                    progress.queued(p);
                }
                c = next;
            }
            Waiting::Ready(r) => break r,
        }
    };
    let mut t = ready.start();

    // Requested files go to a blocking thread that reads them in order, a few batches of
    // content ahead of the socket. Its work queue is bounded by the manifest window.
    let (work_tx, work_rx) = std::sync::mpsc::channel::<Vec<(Task, Entry)>>();
    let (read_tx, mut read_rx) = mpsc::channel::<Vec<Read>>(2);
    let root = cfg.dir.clone();
    let reader = tokio::task::spawn_blocking(move || read_files(&root, work_rx, read_tx));

    // The task whose content is flowing: the reader hands it over with the header.
    let mut open: Option<Task> = None;
    // Batches cut from the listing and not yet sent: a chunk of the listing may make
    // several, and each waits for room in the window.
    let mut unsent: VecDeque<Vec<Entry>> = VecDeque::new();
    let mut listed_all = false;
    while !t.all_sent() {
        let mut wrote = false;
        while t.can_list() {
            match unsent.pop_front() {
                Some(b) => within(idle, sink.feed(Frame::Msg(t.list(b)))).await??,
                None if listed_all => {
                    within(idle, sink.feed(Frame::Msg(t.end_manifest()))).await??
                }
                None => break,
            }
            wrote = true;
        }
        if wrote {
            within(idle, sink.flush()).await??;
        }
        tokio::select! {
            chunk = listing.recv(), if t.can_list() && unsent.is_empty() && !listed_all => {
                match chunk {
                    Some(entries) => unsent.extend(batches(entries?, entry_weight)),
                    None => listed_all = true,
                }
            }
            batch = read_rx.recv() => {
                let Some(batch) = batch else {
                    return Err(Error::Listing(std::io::Error::other("the file reader stopped")));
                };
                for ev in batch {
                    let frame = match ev {
                        Read::Start(task, e, how) => {
                            let h = match how {
                                HowSent::From(offset) => t.header_from(&task, &e, offset),
                                HowSent::Delta => t.header_delta(&task, &e),
                            };
                            open = Some(task);
                            Frame::Msg(h)
                        }
                        Read::Copy(block, count) => Frame::Msg(t.copy(block, count)),
                        Read::EndDelta(n, hash) => {
                            progress.file_done();
                            let task = open.take().expect("the reader ends only a started file");
                            Frame::Msg(t.file_end_hashed(task, n, hash))
                        }
                        Read::Chunk(b) => {
                            progress.sent(b.len() as u64);
                            Frame::Data(b)
                        }
                        Read::Hole(n) => Frame::Msg(t.hole(n)),
                        Read::End(n) => {
                            progress.file_done();
                            let task = open.take().expect("the reader ends only a started file");
                            Frame::Msg(t.file_end(task, n))
                        }
                        Read::Abort(why) => {
                            let task = open.take().expect("the reader aborts only a started file");
                            progress.file_failed(task.path(), &why);
                            Frame::Msg(t.abort(task, why))
                        }
                        Read::Skip(task, why) => {
                            progress.file_failed(task.path(), &why);
                            Frame::Msg(t.abort(task, why))
                        }
                    };
                    within(idle, sink.feed(frame)).await??;
                }
                within(idle, sink.flush()).await??;
            }
            m = recv(rx, idle) => {
                let m = m?;
                let plan_end = matches!(m, ServerMsg::PlanEnd(_));
                let tasks = t.on_message(m)?;
                if let Some(end) = t.plan_end().filter(|_| plan_end) {
                    progress.planned(end.files, end.bytes, end.deletions);
                } else if !tasks.is_empty() {
                    let (files, bytes) = t.requested();
                    progress.requested(files, bytes);
                }
                if !tasks.is_empty() && work_tx.send(tasks).is_err() {
                    return Err(Error::Listing(std::io::Error::other("the file reader stopped")));
                }
            }
        }
    }
    drop(work_tx);
    within(idle, sink.flush()).await??;
    let _ = reader.await;

    let (mut fin, end) = t.finish()?;
    within(idle, sink.send(Frame::Msg(end))).await??;
    // After TRANSFER_END the server applies deletions and syncs its disk, saying nothing
    // until NEXT_SYNC: allow that more than an ordinary silence.
    let finish_wait = idle.saturating_mul(5);
    let done = loop {
        match fin.on_message(recv(rx, finish_wait).await?)? {
            Finish::Finishing(f) => fin = f,
            Finish::Done(d) => break d,
        }
    };
    Ok(Synced {
        report: done.report().clone(),
        next: done.next_sync(),
        client_id: done.client_id().clone(),
        dialect: Dialect::Native,
    })
}

/// Reads the requested files in order on a blocking thread, checking each against its
/// listing so that a file changed mid-read is aborted instead of stored torn. Ends when
/// the work channel closes.
fn read_files(
    root: &std::path::Path,
    work: std::sync::mpsc::Receiver<Vec<(Task, Entry)>>,
    tx: mpsc::Sender<Vec<Read>>,
) {
    let mut batch = Batch::new(tx);
    loop {
        // Send what is gathered before waiting for more work: the socket must not wait
        // for the next TASKS to get the end of this one.
        let tasks = match work.try_recv() {
            Ok(t) => t,
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                if !batch.send() {
                    return;
                }
                match work.recv() {
                    Ok(t) => t,
                    Err(_) => return,
                }
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
        };
        for (task, e) in tasks {
            if !read_one(root, task, e, &mut batch) {
                return;
            }
        }
    }
    batch.send();
}

/// How a file's content is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HowSent {
    /// From this offset (0: whole; more: resumed).
    From(u64),
    /// As a delta against the server's copy.
    Delta,
}

/// Reads one file into `batch`; `false` once the socket loop has gone away.
fn read_one(root: &std::path::Path, mut task: Task, e: Entry, batch: &mut Batch) -> bool {
    let mut src = match Source::open(root, &e) {
        Ok(s) => s,
        Err(err) => return batch.push(Read::Skip(task, err.to_string()), 0),
    };
    // A delta where the server holds an older copy and it can pay; never for a file with
    // holes, which the plain path sends as data ranges.
    if let Some(sig) = task.take_base().filter(|s| {
        !src.may_be_sparse()
            && delta::delta_worthwhile(s.file_len, e.size, delta::DEFAULT_ROUND_TRIP_BYTES)
    }) {
        if !batch.push(Read::Start(task, e, HowSent::Delta), 0) {
            return false;
        }
        return send_delta(&mut src, &sig, batch);
    }
    // Resumed where the server holds the beginning of this very file: same size and
    // mtime as when it was sent, and the same bytes (by BLAKE3) up to the offset.
    let offset = match task.resume() {
        Some(r) if r.size == e.size && r.mtime == e.mtime => match src.prefix_hash(r.offset) {
            Ok(h) if h == r.hash => {
                src.skip_to(r.offset);
                r.offset
            }
            _ => 0,
        },
        _ => 0,
    };
    if !batch.push(Read::Start(task, e, HowSent::From(offset)), 0) {
        return false;
    }
    let mut n = 0u64;
    let last = loop {
        match src.next_piece(DATA_CHUNK) {
            Ok(Some(Piece::Data(c))) => {
                n += c.len() as u64;
                let len = c.len();
                if !batch.push(Read::Chunk(c), len) {
                    return false;
                }
            }
            Ok(Some(Piece::Hole(h))) => {
                if !batch.push(Read::Hole(h), 0) {
                    return false;
                }
            }
            Ok(None) => break Read::End(n),
            Err(err @ (ReadError::Changed(_) | ReadError::Io(_))) => {
                break Read::Abort(err.to_string())
            }
        }
    };
    batch.push(last, 0)
}

/// Sends the started file as a delta against `sig` (rsync's algorithm, [`crate::delta`]):
/// `COPY` for blocks the server holds, literal bytes as `DATA`, then the file's hash. If
/// the first MiB turns out to be almost all literal ([`delta::should_fall_back`]), the
/// rest is sent as plain data, which costs the same on the wire and far less CPU; and
/// if no `COPY` was sent at all, without the file's hash (none is needed, §13.2), so that
/// neither side hashes the file.
/// `false` once the socket loop has gone away.
fn send_delta(src: &mut Source, sig: &delta::Signature, batch: &mut Batch) -> bool {
    /// Why the matcher was stopped from the callback: carried out in the `io::Error`
    /// and told apart from a read error by its type.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Stop {
        FallBack,
        Gone,
    }
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(match self {
                Stop::FallBack => "delta fall back",
                Stop::Gone => "reader gone",
            })
        }
    }
    impl std::error::Error for Stop {}
    let stop_of = |e: &std::io::Error| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<Stop>())
            .copied()
    };
    let matcher = match delta::Matcher::new(sig) {
        Ok(m) => m,
        Err(e) => return batch.push(Read::Abort(format!("the server's signature: {e}")), 0),
    };
    let mut literal = 0u64;
    let mut covered = 0u64;
    let mut copied = 0u64;
    let run = matcher.run(src.reader(), |op, progress| {
        covered = progress.scanned();
        // A COPY weighs the file bytes it covers, so that the batch holding one of
        // `delta::MAX_COPY_RUN` bytes goes at once: the server copies while we match.
        let weight = (progress.copied - copied) as usize;
        copied = progress.copied;
        let ok = match op {
            delta::DeltaOp::Copy { block, count } => batch.push(Read::Copy(block, count), weight),
            delta::DeltaOp::Literal(bytes) => {
                literal += bytes.len() as u64;
                let len = bytes.len();
                batch.push(Read::Chunk(Bytes::from(bytes)), len)
            }
        };
        if !ok {
            return Err(std::io::Error::other(Stop::Gone));
        }
        if delta::should_fall_back(progress) {
            return Err(std::io::Error::other(Stop::FallBack));
        }
        Ok(())
    });
    let hash = match run {
        Ok(summary) => Some(Hash(summary.new_hash)),
        Err(e) if stop_of(&e) == Some(Stop::Gone) => return false,
        Err(e) if stop_of(&e) == Some(Stop::FallBack) => {
            // The rest as plain data; the hash, needed only after a COPY, covers the
            // bytes already sent too.
            let mut h = (copied > 0).then(blake3::Hasher::new);
            if let Some(h) = &mut h {
                if let Err(e) = src.hash_into(covered, h) {
                    return batch.push(Read::Abort(e.to_string()), 0);
                }
            }
            src.skip_to(covered);
            loop {
                match src.next_chunk(DATA_CHUNK) {
                    Ok(Some(c)) => {
                        if let Some(h) = &mut h {
                            h.update(&c);
                        }
                        literal += c.len() as u64;
                        let len = c.len();
                        if !batch.push(Read::Chunk(c), len) {
                            return false;
                        }
                    }
                    Ok(None) => break h.map(|h| Hash(*h.finalize().as_bytes())),
                    Err(e) => return batch.push(Read::Abort(e.to_string()), 0),
                }
            }
        }
        Err(e) => return batch.push(Read::Abort(e.to_string()), 0),
    };
    match src.check_unchanged() {
        Ok(()) => batch.push(Read::EndDelta(literal, hash), 0),
        Err(e) => batch.push(Read::Abort(e.to_string()), 0),
    }
}

/// Read events gathered before they cross to the socket loop: one channel hand-off and
/// one socket write per batch instead of per event, which for small files is most of the
/// cost of moving them.
struct Batch {
    tx: mpsc::Sender<Vec<Read>>,
    events: Vec<Read>,
    bytes: usize,
}

impl Batch {
    /// Events per batch.
    const EVENTS: usize = 256;
    /// Content bytes per batch.
    const BYTES: usize = 2 * DATA_CHUNK;

    fn new(tx: mpsc::Sender<Vec<Read>>) -> Self {
        Batch {
            tx,
            events: Vec::with_capacity(Self::EVENTS),
            bytes: 0,
        }
    }

    /// Adds an event; `false` once the socket loop has gone away.
    fn push(&mut self, ev: Read, bytes: usize) -> bool {
        self.events.push(ev);
        self.bytes += bytes;
        if self.events.len() >= Self::EVENTS || self.bytes >= Self::BYTES {
            return self.send();
        }
        true
    }

    fn send(&mut self) -> bool {
        self.bytes = 0;
        if self.events.is_empty() {
            return true;
        }
        let events = std::mem::replace(&mut self.events, Vec::with_capacity(Self::EVENTS));
        self.tx.blocking_send(events).is_ok()
    }
}

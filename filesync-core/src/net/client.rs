//! The client's drive loop: one sync over a TCP connection.
//!
//! Reading and writing run concurrently: a task forwards everything the server sends into
//! a channel while the loop writes the manifest and file content, so neither side can
//! block the other with full socket buffers, and no step waits for a round trip per file.
//! File reads run on a blocking thread a few chunks ahead of the socket.

use std::collections::HashMap;
use std::future::Future;
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

use crate::codec::json_stream::JsonCodec;
use crate::codec::native::ClientCodec;
use crate::codec::preamble::Dialect;
use crate::codec::{Frame, DATA_CHUNK};
use crate::error::{Error, ProtocolError};
use crate::messages::{seed, ClientMsg, Entry, EntryKind, NextSync, ServerMsg};
use crate::paths::{ClientId, RelPath};
use crate::session::client::{Client, ClientParams, Finish, Planning, Report, Task, Waiting};
use crate::session::unexpected;
use crate::walk::{ReadError, Source};

/// Progress callbacks, for a progress bar or log lines. All methods have empty defaults.
pub trait Progress: Send + Sync {
    /// The server queued us at `position`.
    fn queued(&self, _position: u32) {}
    /// The plan is known: this many files and bytes to send, this many deletions.
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

type Sink = SplitSink<Framed<TcpStream, ClientCodec>, Frame<ClientMsg>>;

/// Runs one sync of `cfg.dir` against the server at `addr`. Returns once the server has
/// confirmed with `NEXT_SYNC` that everything it stored is durable.
///
/// `listing` yields the folder's entries; it is awaited only once the server is ready, so
/// a caller that starts the walk before connecting overlaps it with the connection and the
/// server's own indexing.
pub async fn sync(
    addr: SocketAddr,
    cfg: &SyncConfig,
    listing: impl Future<Output = Result<Vec<Entry>, Error>>,
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
    let mut stream = old.io;
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
    if seed {
        tracing::info!(%addr, dialect = "seed", server_speaks_native = native, "syncing in the original FileSync dialect");
        let entries = listing.await?;
        return super::seed_client::sync(stream, leftover, status, cfg, &entries, progress).await;
    }
    tracing::debug!(%addr, dialect = "native", "syncing");
    let (client, greeting) = Client::new(cfg.params.clone()).on_greeting(&status)?;
    if let Some(p) = greeting.queue_position {
        progress.queued(p);
    }
    stream
        .write_all(&greeting.preamble)
        .await
        .map_err(|e| Error::io("sending the preamble", e))?;
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
    let result = match sink.send(Frame::Msg(greeting.hello)).await {
        Ok(()) => drive(client, &mut sink, &mut rx, cfg, listing, progress, idle).await,
        Err(e) => Err(e.into()),
    };
    reader.abort();
    let _ = sink.close().await;
    result
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
    /// A file was opened and checked: send its header; its content follows.
    Start(Task, Entry),
    /// Content of the started file.
    Chunk(Bytes),
    /// The started file was sent whole, this many bytes.
    End(u64),
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
    listing: impl Future<Output = Result<Vec<Entry>, Error>>,
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

    let entries = listing.await?;
    let entries = &entries[..];
    let (mut listed, manifest) = ready.send_manifest(entries);
    for m in manifest {
        sink.feed(Frame::Msg(m)).await?;
    }
    sink.flush().await?;

    let planned = loop {
        match listed.on_message(recv(rx, idle).await?)? {
            Planning::Listed(l) => listed = l,
            Planning::Planned(p) => break p,
        }
    };
    let end = planned.plan_end();
    progress.planned(end.files, end.bytes, end.deletions);

    let by_path: HashMap<&RelPath, &Entry> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .map(|e| (&e.path, e))
        .collect();
    let mut tasks = Vec::with_capacity(planned.tasks().len());
    for p in planned.tasks() {
        match by_path.get(p) {
            Some(e) => tasks.push((*e).clone()),
            None => {
                return Err(Error::Protocol(ProtocolError::Inconsistent(format!(
                    "the server asked for {p}, which is not a listed file"
                ))))
            }
        }
    }
    let mut t = planned.start();
    let mut work = Vec::with_capacity(tasks.len());
    for entry in tasks {
        let task = t.next_task().expect("one task per requested file");
        work.push((task, entry));
    }

    // A few batches in flight keep the disk reads ahead of the socket.
    let (read_tx, mut read_rx) = mpsc::channel::<Vec<Read>>(4);
    let root = cfg.dir.clone();
    let reader = tokio::task::spawn_blocking(move || read_files(&root, work, read_tx));

    // The task whose content is flowing: the reader hands it over with the header.
    let mut open: Option<Task> = None;
    loop {
        tokio::select! {
            batch = read_rx.recv() => {
                let Some(batch) = batch else { break };
                for ev in batch {
                    let frame = match ev {
                        Read::Start(task, e) => {
                            let h = t.header(&task, e.size, e.mtime);
                            open = Some(task);
                            Frame::Msg(h)
                        }
                        Read::Chunk(b) => {
                            progress.sent(b.len() as u64);
                            Frame::Data(b)
                        }
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
                    sink.feed(frame).await?;
                }
                sink.flush().await?;
            }
            m = recv(rx, idle) => t.on_message(m?)?,
        }
    }
    sink.flush().await?;
    let _ = reader.await;

    let (mut fin, end) = t.finish();
    sink.send(Frame::Msg(end)).await?;
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
/// listing so that a file changed mid-read is aborted instead of stored torn.
fn read_files(root: &std::path::Path, work: Vec<(Task, Entry)>, tx: mpsc::Sender<Vec<Read>>) {
    let mut batch = Batch::new(tx);
    for (task, e) in work {
        let mut src = match Source::open(root, &e) {
            Ok(s) => s,
            Err(err) => {
                if !batch.push(Read::Skip(task, err.to_string()), 0) {
                    return;
                }
                continue;
            }
        };
        if !batch.push(Read::Start(task, e), 0) {
            return;
        }
        let mut n = 0u64;
        let last = loop {
            match src.next_chunk(DATA_CHUNK) {
                Ok(Some(c)) => {
                    n += c.len() as u64;
                    let len = c.len();
                    if !batch.push(Read::Chunk(c), len) {
                        return;
                    }
                }
                Ok(None) => break Read::End(n),
                Err(err @ (ReadError::Changed(_) | ReadError::Io(_))) => {
                    break Read::Abort(err.to_string())
                }
            }
        };
        if !batch.push(last, 0) {
            return;
        }
    }
    batch.send();
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

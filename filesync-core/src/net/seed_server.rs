//! Serving a client of the original FileSync on the native port.
//!
//! The original's bytes exactly (`spec/PROTOCOL.md` §"Original dialect"), with its
//! weaknesses removed: messages are parsed off the stream whatever their size and however
//! TCP cut them, files are stored atomically through the same store and queue as native
//! sessions, and a client that skips a requested file (the original does so silently when
//! a file vanished) does not desynchronise the stream: once it falls silent between files,
//! the rest counts as skipped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::queue::Ticket;
use super::server::{spawn_writer, within, Ctx, Op, OpBatch, SeedConn, Summary, Written};
use crate::archive::Fence;
use crate::codec::json_stream::encode_seed;
use crate::codec::Frame;
use crate::error::{Error, ProtocolError};
use crate::messages::seed::{self, NextSync, Tasks};
use crate::messages::{FileHeader, Outcome};
use crate::paths::ClientId;
use crate::session::seed as rules;
use crate::session::unexpected;
use crate::time::SeedTime;

/// Between files, how long an original client may stay silent before the files it has not
/// sent count as skipped.
const SKIP_WAIT: Duration = Duration::from_secs(5);

/// Serves an original client that has identified itself: `first` is its
/// `CLIENT_FILES_INFO` (`None` if it was too long to read before it joined the queue; it is
/// read here, once the turn has come). Any READY after a BUSY greeting was sent by the
/// handshake, before the client spoke.
#[allow(clippy::too_many_arguments)]
pub(super) async fn session(
    ctx: &Ctx,
    mut framed: SeedConn,
    first: Option<Frame<seed::ClientMsg>>,
    peer: SocketAddr,
    ticket: &mut Ticket,
    queued_at: Instant,
    cancel: &CancellationToken,
    summary: &mut Summary,
) -> Result<(), Error> {
    let idle = ctx.cfg.idle_timeout;
    // It waits for TASKS in silence; the dialect has no message to tell it its place.
    let mut watch = ticket.watch();
    while ticket.try_activate().is_err() {
        tokio::select! {
            _ = watch.changed() => {}
            _ = cancel.cancelled() => return Err(Error::Closed),
        }
    }
    summary.queue_wait = queued_at.elapsed();

    let first = match first {
        Some(f) => Some(Ok(f)),
        None => tokio::select! {
            f = within(idle, framed.next()) => f?,
            _ = cancel.cancelled() => return Err(Error::Closed),
        },
    };
    let info = match first {
        Some(Ok(Frame::Msg(seed::ClientMsg::FilesInfo(i)))) => i,
        Some(Ok(Frame::Msg(other))) => return Err(unexpected("CLIENT_FILES_INFO", other.kind())),
        // The codec yields content only after a FILE_HEADER, which ends the session above.
        Some(Ok(Frame::Data(_))) => {
            return Err(Error::Protocol(ProtocolError::Data(
                "content before any FILE_HEADER".into(),
            )))
        }
        Some(Err(e)) => return Err(e.into()),
        None => return Err(Error::Closed),
    };
    let id = info
        .client_id
        .clone()
        .unwrap_or_else(|| ClientId::from_addr(peer.ip()));
    summary.client = Some(id.clone());
    // The original has no error message: a second session of a busy id is just closed.
    let Some(_lease) = ctx.lease(&id) else {
        return Err(super::server::in_progress(&id));
    };
    let cancel = &cancel.child_token();
    let fence = Fence::default();
    let _shared = ctx.shared_lease(&id, cancel, &fence).await?;
    tracing::info!(client = %id, %peer, dialect = "seed", files = info.files.len(), "session started");

    let store = Arc::clone(&ctx.store);
    let idx_id = id.clone();
    let entries = rules::entries_from_listing(&info, &chrono::Local);
    // An original listing is small, but the archive it is compared with may not be: the
    // index is merged as it is read, and the tail goes to a spool.
    let caps = ctx.cfg.delete_caps;
    let window = ctx.store.mtime_precision();
    let (send, tail, budget) = tokio::task::spawn_blocking(move || {
        let mut index = store.index(&idx_id);
        let planned = rules::plan(&entries, &mut index, window);
        if let Some(e) = index.take_error() {
            return Err(Error::io("indexing the client folder", e));
        }
        let rules::SeedPlan { send, tail, held } = planned?;
        // An original client cannot be told why; the server's log says it.
        let budget = caps.budget(tail.delete.len() as u64, held);
        let mut spool = store
            .spool()
            .map_err(|e| Error::io("creating the plan's spool", e))?;
        for op in tail.into_ops() {
            spool.push(&op);
        }
        spool
            .check()
            .map_err(|e| Error::io("writing the plan's spool", e))?;
        Ok((send, spool, budget))
    })
    .await
    .map_err(|e| Error::io("planning", std::io::Error::other(e)))??;
    summary.tally.requested = send.len() as u64;

    let mut out = BytesMut::new();
    encode_seed(
        &seed::ServerMsg::Tasks(Tasks {
            files_to_send: send.clone(),
        }),
        true,
        &mut out,
    );
    within(idle, framed.get_mut().write_all(&out))
        .await?
        .map_err(|e| Error::io("sending TASKS", e))?;

    let mut expected: std::collections::HashSet<_> = send.into_iter().collect();
    let (ops, mut results, writer) = spawn_writer(Arc::clone(&ctx.store), id.clone(), fence);
    let mut batch = OpBatch::new(ops);
    let received = async {
        let mut left: u64 = 0;
        while !expected.is_empty() || left > 0 {
            // Hand the store what is queued before waiting for the network.
            if left == 0 || framed.read_buffer().is_empty() {
                batch.flush().await?;
            }
            let wait = if left > 0 { idle } else { SKIP_WAIT.min(idle) };
            let frame = tokio::select! {
                f = tokio::time::timeout(wait, framed.next()) => f,
                _ = cancel.cancelled() => return Err(Error::Closed),
            };
            let frame = match frame {
                Err(_) if left == 0 => {
                    tracing::warn!(client = %id, skipped = expected.len(), "the client did not send every requested file");
                    summary.tally.rejected += expected.len() as u64;
                    return Ok(());
                }
                Err(_) => return Err(Error::Timeout(wait)),
                Ok(None) => return Err(Error::Closed),
                Ok(Some(f)) => f?,
            };
            match frame {
                Frame::Msg(seed::ClientMsg::FileHeader(h)) => {
                    if !expected.remove(&h.path) {
                        return Err(Error::Protocol(ProtocolError::Data(format!(
                            "FILE_HEADER for {}, which was not requested or was already sent",
                            h.path
                        ))));
                    }
                    // The original stores the header's time, read as local time.
                    let header = FileHeader {
                        path: h.path.clone(),
                        size: h.size,
                        mtime: h.last_mod.to_mtime(&chrono::Local),
                        mode: 0,
                        delta: false,
                        offset: 0,
                    };
                    // The original sends no modes: new files get the default.
                    batch.push(Op::Open(header, None), 0).await?;
                    left = h.size;
                    if left == 0 {
                        batch.push(Op::Commit(None), 0).await?;
                    }
                }
                Frame::Data(b) => {
                    left -= b.len() as u64;
                    summary.tally.bytes += b.len() as u64;
                    let len = b.len();
                    batch.push(Op::Data(b), len).await?;
                    if left == 0 {
                        batch.push(Op::Commit(None), 0).await?;
                    }
                }
                Frame::Msg(other) => {
                    return Err(unexpected("FILE_HEADER", other.kind()))
                }
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = received {
        // Files that arrived whole are kept; the writer drops a partial one.
        let _ = batch.flush().await;
        drop(batch);
        let _ = writer.await;
        return Err(e);
    }
    if let Some(why) = budget.reason() {
        tracing::warn!(client = %id, "deletions may be held back: {why}");
    }
    batch.push(Op::Finish(tail, budget), 0).await?;
    batch.flush().await?;
    drop(batch);
    while let Some(w) = results.recv().await {
        match w {
            Written::Results(out) => {
                for (p, o) in out {
                    match o {
                        Outcome::Stored => summary.tally.stored += 1,
                        Outcome::Rejected { reason, .. } => {
                            summary.tally.rejected += 1;
                            tracing::warn!(client = %id, path = %p, reason, "not stored");
                        }
                    }
                }
            }
            Written::Finished(applied) => {
                summary.tally.deleted = applied.deleted;
                if applied.held_back > 0 {
                    tracing::warn!(client = %id, held_back = applied.held_back, "deletions held back by a cap");
                }
                for e in applied.errors {
                    tracing::warn!(client = %id, error = %e, "finishing");
                }
            }
        }
    }
    let _ = writer.await;

    let (at, _) = ctx.next_visit(&id);
    let mut out = BytesMut::new();
    encode_seed(
        &seed::ServerMsg::NextSync(NextSync {
            time: SeedTime::from_mtime(at, &chrono::Local),
        }),
        false,
        &mut out,
    );
    let stream = framed.get_mut();
    within(idle, stream.write_all(&out))
        .await?
        .map_err(|e| Error::io("sending NEXT_SYNC", e))?;
    let _ = stream.shutdown().await;
    Ok(())
}

//! Syncing into a server of the original FileSync.
//!
//! Its server reads `CLIENT_FILES_INFO` with one 8192-byte `recv`, so a longer listing is
//! refused here with an explanation instead of being sent to break it. Each message goes
//! out in one write. The original cannot be told to drop a file half-sent, so a file that
//! changes while being read ends the session (the next sync sends it whole); a file that
//! vanished before it was opened is skipped, as the original client does.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::BytesMut;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, FramedParts};

use super::client::{Progress, SyncConfig, Synced};
use super::server::within;
use crate::codec::json_stream::{encode_seed, JsonCodec};
use crate::codec::preamble::Dialect;
use crate::codec::DATA_CHUNK;
use crate::error::{Error, ProtocolError};
use crate::messages::seed::{self, ServerStatus, Status};
use crate::messages::{Entry, EntryKind, ErrorCode, NextSync};
use crate::paths::ClientId;
use crate::session::client::Report;
use crate::session::seed as rules;
use crate::session::unexpected;
use crate::walk::Source;

/// Writes are gathered up to this size, so small files do not cost a packet each.
const WRITE_BATCH: usize = 256 << 10;

type Conn = Framed<TcpStream, JsonCodec<seed::ServerMsg>>;

async fn next(
    framed: &mut Conn,
    cfg: &SyncConfig,
    want: &'static str,
) -> Result<seed::ServerMsg, Error> {
    match tokio::time::timeout(cfg.idle_timeout, framed.next()).await {
        Err(_) => Err(Error::Timeout(cfg.idle_timeout)),
        Ok(None) => Err(Error::Closed),
        Ok(Some(Err(e))) => Err(e.into()),
        Ok(Some(Ok(m))) => {
            tracing::trace!(want, got = m.kind(), "original server");
            Ok(m)
        }
    }
}

pub(super) async fn sync(
    stream: TcpStream,
    leftover: BytesMut,
    status: ServerStatus,
    cfg: &SyncConfig,
    entries: &[Entry],
    progress: Arc<dyn Progress>,
) -> Result<Synced, Error> {
    let local_ip = stream.local_addr().map(|a| a.ip()).ok();
    let mut parts =
        FramedParts::new::<&seed::ServerMsg>(stream, JsonCodec::<seed::ServerMsg>::default());
    parts.read_buf = leftover;
    let mut framed = Framed::from_parts(parts);

    if status.status == Status::Busy {
        progress.queued(status.queue_position.unwrap_or(1));
        loop {
            match next(&mut framed, cfg, "READY").await? {
                seed::ServerMsg::Status(s) if s.status == Status::Ready => break,
                seed::ServerMsg::Status(s) => progress.queued(s.queue_position.unwrap_or(1)),
                other => return Err(unexpected("SERVER_STATUS_MESSAGE", other.kind())),
            }
        }
    }

    let tz = chrono::Local;
    let (info, cannot) = rules::listing_from_entries(cfg.params.client_id.clone(), entries, &tz);
    let files = info.files.len();
    let mut out = BytesMut::new();
    encode_seed(&seed::ClientMsg::FilesInfo(info), false, &mut out);
    if status.filesync.is_none() && out.len() > rules::SEED_SERVER_MAX_LISTING {
        return Err(Error::Refused {
            code: ErrorCode::VERSION,
            message: format!(
                "the original FileSync server reads the file list in one {}-byte receive, and this \
                 folder's list is {} bytes ({files} files): it would break that server. Sync a \
                 smaller folder, or run `filesync serve` on the server, which takes lists of any size",
                rules::SEED_SERVER_MAX_LISTING,
                out.len()
            ),
        });
    }
    within(cfg.idle_timeout, framed.get_mut().write_all(&out))
        .await?
        .map_err(|e| Error::io("sending the file list", e))?;

    let tasks = match next(&mut framed, cfg, "TASKS").await? {
        seed::ServerMsg::Tasks(t) => t.files_to_send,
        other => return Err(unexpected("TASKS", other.kind())),
    };
    let wanted: HashSet<_> = tasks.iter().collect();
    let todo: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::File && wanted.contains(&e.path))
        .collect();
    if todo.len() != wanted.len() {
        return Err(Error::Protocol(ProtocolError::Inconsistent(
            "the server asked for files that are not in the list".into(),
        )));
    }
    let mut report = Report {
        requested: todo.len() as u64,
        requested_bytes: todo.iter().map(|e| e.size).sum(),
        ..Report::default()
    };
    for (path, why) in cannot {
        progress.file_failed(&path, &why);
        report.fail(path, ErrorCode::BAD_PATH, why);
    }
    progress.planned(report.requested, report.requested_bytes, 0);

    let mut out = BytesMut::with_capacity(WRITE_BATCH + DATA_CHUNK);
    for e in todo {
        let mut src = match Source::open(&cfg.dir, e) {
            Ok(s) => s,
            Err(err) => {
                progress.file_failed(&e.path, &err.to_string());
                report.fail(e.path.clone(), ErrorCode::ABORTED, err.to_string());
                continue;
            }
        };
        encode_seed(
            &seed::ClientMsg::FileHeader(rules::header(e, &tz)),
            true,
            &mut out,
        );
        loop {
            match src.next_chunk(DATA_CHUNK) {
                Ok(Some(c)) => {
                    progress.sent(c.len() as u64);
                    out.extend_from_slice(&c);
                }
                Ok(None) => break,
                Err(err) => {
                    return Err(Error::io(
                        format!(
                            "{} changed while being sent; the original protocol cannot drop a file \
                             half-sent, so the session ends and the next sync sends it whole",
                            e.path
                        ),
                        std::io::Error::other(err.to_string()),
                    ))
                }
            }
            if out.len() >= WRITE_BATCH {
                within(cfg.idle_timeout, framed.get_mut().write_all(&out))
                    .await?
                    .map_err(|e| Error::io("sending", e))?;
                out.clear();
            }
        }
        report.sent += 1;
        report.bytes_sent += e.size;
        progress.file_done();
    }
    within(cfg.idle_timeout, framed.get_mut().write_all(&out))
        .await?
        .map_err(|e| Error::io("sending", e))?;

    let time = match next(&mut framed, cfg, "NEXT_SYNC").await? {
        seed::ServerMsg::NextSync(n) => n.time,
        other => return Err(unexpected("NEXT_SYNC", other.kind())),
    };
    // The original confirms nothing per file; NEXT_SYNC after the last byte is its word.
    report.stored = report.sent;
    let delay = rules::delay_until(time, super::now(), &tz);
    let client_id = cfg
        .params
        .client_id
        .clone()
        .or_else(|| local_ip.map(ClientId::from_addr))
        .unwrap_or_else(|| ClientId::parse("unknown").expect("static id is valid"));
    Ok(Synced {
        next: NextSync {
            at: time.to_mtime(&tz),
            delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            stored: report.stored,
            rejected: report.failed_count,
            deleted: 0,
            held_back: 0,
            held_back_reason: String::new(),
        },
        report,
        client_id,
        dialect: Dialect::Seed,
    })
}

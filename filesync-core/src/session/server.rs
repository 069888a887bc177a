//! The server's side of a native session.

use std::collections::HashSet;
use std::net::IpAddr;

use super::{batches, path_weight, remote, sealed, unexpected, ServerState};
use crate::error::{Error, ProtocolError};
use crate::messages::seed::{NativeOffer, ServerStatus, Status};
use crate::messages::{
    ClientMsg, Deletions, Encoding, ErrorCode, ErrorMsg, FileHeader, FileResult, NextSync, Outcome,
    PlanEnd, Queued, Ready, ServerMsg, Tasks, Welcome, PROTOCOL_VERSION,
};
use crate::paths::{ClientId, RelPath};
use crate::planner::{Held, Planner, Rule, Tail};
use crate::time::MTime;

/// What a server offers every session.
#[derive(Debug, Clone)]
pub struct ServerParams {
    /// Encodings accepted, preferred first.
    pub encodings: Vec<Encoding>,
}

impl Default for ServerParams {
    fn default() -> Self {
        Self {
            encodings: vec![Encoding::Postcard, Encoding::Json],
        }
    }
}

/// A native server session in state `S`.
#[must_use = "a session does nothing unless driven to its next state"]
#[derive(Debug)]
pub struct Server<S: ServerState> {
    params: ServerParams,
    peer: IpAddr,
    state: S,
}

/// A connection was accepted; nothing sent yet.
#[derive(Debug)]
pub struct Accepted;
/// The greeting was sent; waiting for the client's preamble and `HELLO`.
#[derive(Debug)]
pub struct Greeted;
/// `WELCOME` was sent; the client waits for its turn.
#[derive(Debug)]
pub struct Welcomed {
    client_id: ClientId,
    allow_empty: bool,
}
/// `READY` was sent; receiving the manifest and answering it with `TASKS`.
#[derive(Debug)]
pub struct Listing {
    client_id: ClientId,
    allow_empty: bool,
    planner: Planner,
    entries: u64,
    requested: HashSet<RelPath>,
}
/// The plan was sent; receiving files.
#[derive(Debug)]
pub struct Receiving {
    client_id: ClientId,
    tail: Tail,
    requested: HashSet<RelPath>,
    open: Option<Open>,
    tally: Tally,
}
/// `TRANSFER_END` arrived; storing the last files and applying deletions.
#[derive(Debug)]
pub struct Received {
    client_id: ClientId,
    tail: Tail,
    tally: Tally,
}
/// `NEXT_SYNC` was sent; the session is over.
#[derive(Debug)]
pub struct Done {
    client_id: ClientId,
    tally: Tally,
}

macro_rules! server_states {
    ($($s:ident),*) => { $( impl sealed::Sealed for $s {} impl ServerState for $s {} )* };
}
server_states!(Accepted, Greeted, Welcomed, Listing, Receiving, Received, Done);

#[derive(Debug)]
struct Open {
    header: FileHeader,
    received: u64,
}

/// Counts of one session, for the server's log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Files requested.
    pub requested: u64,
    /// Bytes requested.
    pub requested_bytes: u64,
    /// Content bytes received.
    pub bytes: u64,
    /// Files stored.
    pub stored: u64,
    /// Files rejected, aborted or never sent.
    pub rejected: u64,
    /// Entries deleted.
    pub deleted: u64,
}

/// What the driver must do with a message received while files flow.
#[derive(Debug, PartialEq, Eq)]
pub enum Receive {
    /// Open a temporary file for this header; `DATA` follows.
    Open(FileHeader),
    /// The open file is complete: make it durable and move it into place.
    Commit(RelPath),
    /// Drop the open file (or a file never opened): the client could not send it.
    Discard(RelPath, String),
}

/// Where a receiving server stands after a message.
#[derive(Debug)]
pub enum Receipt {
    /// Files still flow; the driver acts on the [`Receive`].
    Receiving(Server<Receiving>, Receive),
    /// `TRANSFER_END`: every file was sent.
    Received(Server<Received>),
}

/// Where a listing server stands after a message.
#[derive(Debug)]
pub enum Listed {
    /// More manifest to come; send these (`TASKS`) now.
    Listing(Server<Listing>, Vec<ServerMsg>),
    /// The plan is complete; send these (`DELETIONS`, `PLAN_END`) now.
    Receiving(Server<Receiving>, Vec<ServerMsg>),
}

/// A refused `HELLO`: send `msg`, then close.
#[derive(Debug)]
pub struct Refusal {
    /// The `ERROR` message for the client.
    pub msg: ServerMsg,
    /// The same fault for the log.
    pub error: Error,
}

fn refusal(code: ErrorCode, error: Error) -> Refusal {
    Refusal {
        msg: ServerMsg::Error(ErrorMsg {
            code,
            message: error.to_string(),
        }),
        error,
    }
}

impl<S: ServerState> Server<S> {
    /// The client's address.
    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    fn with<T: ServerState>(self, state: T) -> Server<T> {
        Server {
            params: self.params,
            peer: self.peer,
            state,
        }
    }
}

impl Server<Accepted> {
    /// A session for a connection from `peer`.
    pub fn new(params: ServerParams, peer: IpAddr) -> Self {
        Server {
            params,
            peer,
            state: Accepted,
        }
    }

    /// The greeting: READY if the client may start now, BUSY with its position if it must
    /// wait. Written as JSON, since the dialect is not known yet.
    pub fn greet(self, queue_position: Option<u32>) -> (Server<Greeted>, ServerStatus) {
        let status = ServerStatus {
            status: if queue_position.is_some() {
                Status::Busy
            } else {
                Status::Ready
            },
            queue_position,
            filesync: Some(NativeOffer {
                versions: vec![PROTOCOL_VERSION],
                encodings: self.params.encodings.clone(),
            }),
        };
        (self.with(Greeted), status)
    }
}

impl Server<Greeted> {
    /// Call with the client's first message, decoded in the encoding its preamble chose.
    pub fn on_hello(
        self,
        encoding: Encoding,
        msg: ClientMsg,
    ) -> Result<(Server<Welcomed>, ServerMsg), Refusal> {
        let hello = match msg {
            ClientMsg::Hello(h) => h,
            other => {
                return Err(refusal(
                    ErrorCode::PROTOCOL,
                    unexpected("HELLO", other.kind()),
                ))
            }
        };
        if !self.params.encodings.contains(&encoding) {
            return Err(refusal(
                ErrorCode::VERSION,
                Error::Protocol(ProtocolError::Version(format!(
                    "encoding {} is not offered",
                    encoding.name()
                ))),
            ));
        }
        if hello.version != PROTOCOL_VERSION {
            return Err(refusal(
                ErrorCode::VERSION,
                Error::Protocol(ProtocolError::Version(format!(
                    "client speaks version {}, this server {PROTOCOL_VERSION}",
                    hello.version
                ))),
            ));
        }
        let client_id = hello
            .client_id
            .unwrap_or_else(|| ClientId::from_addr(self.peer));
        let welcome = ServerMsg::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            capabilities: Vec::new(),
            client_id: client_id.clone(),
        });
        Ok((
            self.with(Welcomed {
                client_id,
                allow_empty: hello.allow_empty,
            }),
            welcome,
        ))
    }
}

impl Server<Welcomed> {
    /// The id this session files under.
    pub fn client_id(&self) -> &ClientId {
        &self.state.client_id
    }

    /// Tells a waiting client its position.
    pub fn queued(&self, position: u32) -> ServerMsg {
        ServerMsg::Queued(Queued { position })
    }

    /// The client's turn: `held` is the server's index of the client's folder.
    pub fn ready(
        self,
        held: impl IntoIterator<Item = (RelPath, Held)>,
    ) -> (Server<Listing>, ServerMsg) {
        let Welcomed {
            client_id,
            allow_empty,
        } = self.state;
        let listing = Listing {
            client_id,
            allow_empty,
            planner: Planner::new(held, Rule::QuickCheck),
            entries: 0,
            requested: HashSet::new(),
        };
        (
            Server {
                params: self.params,
                peer: self.peer,
                state: listing,
            },
            ServerMsg::Ready(Ready {}),
        )
    }
}

impl Server<Listing> {
    /// The id this session files under.
    pub fn client_id(&self) -> &ClientId {
        &self.state.client_id
    }

    /// Call with each message until the manifest ends.
    pub fn on_message(mut self, msg: ClientMsg) -> Result<Listed, Error> {
        match msg {
            ClientMsg::Manifest(m) => {
                self.state.entries += m.entries.len() as u64;
                let send = self.state.planner.batch(&m.entries)?;
                self.state.requested.extend(send.iter().cloned());
                let out = if send.is_empty() {
                    Vec::new()
                } else {
                    vec![ServerMsg::Tasks(Tasks { paths: send })]
                };
                Ok(Listed::Listing(self, out))
            }
            ClientMsg::ManifestEnd(end) => {
                let st = self.state;
                if end.entries != st.entries {
                    return Err(Error::Protocol(ProtocolError::Inconsistent(format!(
                        "MANIFEST_END counts {} entries, batches held {}",
                        end.entries, st.entries
                    ))));
                }
                if st.entries == 0 && !st.allow_empty && st.planner.server_has_files() {
                    return Err(Error::Refused {
                        code: ErrorCode::WOULD_EMPTY,
                        message:
                            "the client listed nothing but the server holds files for it; \
                                  refusing to empty the archive (the client may pass --allow-empty)"
                                .into(),
                    });
                }
                let (files, bytes) = st.planner.requested();
                let tail = st.planner.finish()?;
                let mut out: Vec<ServerMsg> = batches(tail.delete.iter().cloned(), path_weight)
                    .into_iter()
                    .map(|paths| ServerMsg::Deletions(Deletions { paths }))
                    .collect();
                out.push(ServerMsg::PlanEnd(PlanEnd {
                    files,
                    bytes,
                    deletions: tail.delete.len() as u64,
                }));
                let next = Receiving {
                    client_id: st.client_id,
                    tail,
                    requested: st.requested,
                    open: None,
                    tally: Tally {
                        requested: files,
                        requested_bytes: bytes,
                        ..Tally::default()
                    },
                };
                Ok(Listed::Receiving(
                    Server {
                        params: self.params,
                        peer: self.peer,
                        state: next,
                    },
                    out,
                ))
            }
            ClientMsg::Error(e) => Err(remote(e)),
            other => Err(unexpected("MANIFEST or MANIFEST_END", other.kind())),
        }
    }
}

impl Server<Receiving> {
    /// The id this session files under.
    pub fn client_id(&self) -> &ClientId {
        &self.state.client_id
    }

    /// The plan's tail: directories to make, entries to delete.
    pub fn tail(&self) -> &Tail {
        &self.state.tail
    }

    /// Call with each message while files flow.
    pub fn on_message(mut self, msg: ClientMsg) -> Result<Receipt, Error> {
        let st = &mut self.state;
        match msg {
            ClientMsg::FileHeader(h) => {
                if let Some(open) = &st.open {
                    return Err(data_err(format!(
                        "FILE_HEADER for {} while {} is open",
                        h.path, open.header.path
                    )));
                }
                if h.offset != 0 {
                    return Err(data_err(format!(
                        "FILE_HEADER for {} starts at offset {} without the resume capability",
                        h.path, h.offset
                    )));
                }
                if !st.requested.remove(&h.path) {
                    return Err(data_err(format!(
                        "FILE_HEADER for {}, which was not requested or was already sent",
                        h.path
                    )));
                }
                st.open = Some(Open {
                    header: h.clone(),
                    received: 0,
                });
                Ok(Receipt::Receiving(self, Receive::Open(h)))
            }
            ClientMsg::FileEnd(_) => match st.open.take() {
                Some(o) if o.received == o.header.size => {
                    Ok(Receipt::Receiving(self, Receive::Commit(o.header.path)))
                }
                Some(o) => Err(data_err(format!(
                    "FILE_END for {} after {} of {} bytes",
                    o.header.path, o.received, o.header.size
                ))),
                None => Err(unexpected("FILE_HEADER", "FILE_END")),
            },
            ClientMsg::FileAbort(a) => {
                let ok = match st.open.take() {
                    Some(o) => o.header.path == a.path,
                    None => st.requested.remove(&a.path),
                };
                if !ok {
                    return Err(data_err(format!(
                        "FILE_ABORT for {}, which is neither open nor requested",
                        a.path
                    )));
                }
                st.tally.rejected += 1;
                Ok(Receipt::Receiving(self, Receive::Discard(a.path, a.reason)))
            }
            ClientMsg::TransferEnd(_) => {
                if let Some(o) = &st.open {
                    return Err(data_err(format!(
                        "TRANSFER_END while {} is open",
                        o.header.path
                    )));
                }
                let Receiving {
                    client_id,
                    tail,
                    requested,
                    mut tally,
                    ..
                } = self.state;
                tally.rejected += requested.len() as u64;
                Ok(Receipt::Received(Server {
                    params: self.params,
                    peer: self.peer,
                    state: Received {
                        client_id,
                        tail,
                        tally,
                    },
                }))
            }
            ClientMsg::Error(e) => Err(remote(e)),
            other => Err(unexpected(
                "FILE_HEADER, FILE_END, FILE_ABORT or TRANSFER_END",
                other.kind(),
            )),
        }
    }

    /// Call with the length of each `DATA` frame; refuses content with no open file or
    /// past the announced size.
    pub fn on_data(&mut self, len: usize) -> Result<(), Error> {
        let Some(o) = &mut self.state.open else {
            return Err(data_err("DATA with no open file".into()));
        };
        o.received += len as u64;
        self.state.tally.bytes += len as u64;
        if o.received > o.header.size {
            return Err(data_err(format!(
                "{} bytes of DATA for {}, which announced {}",
                o.received, o.header.path, o.header.size
            )));
        }
        Ok(())
    }

    /// The verdict to send once the store has committed (or failed) a file.
    pub fn file_result(&mut self, path: RelPath, outcome: Outcome) -> ServerMsg {
        file_result(&mut self.state.tally, path, outcome)
    }
}

fn data_err(s: String) -> Error {
    Error::Protocol(ProtocolError::Data(s))
}

fn file_result(tally: &mut Tally, path: RelPath, outcome: Outcome) -> ServerMsg {
    match outcome {
        Outcome::Stored => tally.stored += 1,
        Outcome::Rejected { .. } => tally.rejected += 1,
    }
    ServerMsg::FileResult(FileResult { path, outcome })
}

impl Server<Received> {
    /// The id this session files under.
    pub fn client_id(&self) -> &ClientId {
        &self.state.client_id
    }

    /// The plan's tail: directories to make, entries to delete.
    pub fn tail(&self) -> &Tail {
        &self.state.tail
    }

    /// The verdict on a file committed after `TRANSFER_END` arrived.
    pub fn file_result(&mut self, path: RelPath, outcome: Outcome) -> ServerMsg {
        file_result(&mut self.state.tally, path, outcome)
    }

    /// Books the deletions the store applied.
    pub fn deleted(&mut self, n: u64) {
        self.state.tally.deleted += n;
    }

    /// Ends the session. Call only once every file is durable and deletions are applied:
    /// `NEXT_SYNC` promises the client that the server holds its tree.
    pub fn next_sync(self, at: MTime, delay_ms: u64) -> (Server<Done>, ServerMsg) {
        let tally = self.state.tally;
        let msg = ServerMsg::NextSync(NextSync {
            at,
            delay_ms,
            stored: tally.stored,
            rejected: tally.rejected,
            deleted: tally.deleted,
        });
        let done = Done {
            client_id: self.state.client_id,
            tally,
        };
        (
            Server {
                params: self.params,
                peer: self.peer,
                state: done,
            },
            msg,
        )
    }
}

impl Server<Done> {
    /// The id this session filed under.
    pub fn client_id(&self) -> &ClientId {
        &self.state.client_id
    }

    /// What the session did.
    pub fn tally(&self) -> Tally {
        self.state.tally
    }
}

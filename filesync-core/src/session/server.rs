//! The server's side of a native session.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use super::{remote, sealed, unexpected, ServerState};
use crate::codec::native;
use crate::delta::{BlockLayout, Signature};
use crate::error::{Error, ProtocolError};
use crate::messages::seed::{NativeOffer, ServerStatus, Status};
use crate::messages::{
    ClientMsg, Encoding, ErrorCode, ErrorMsg, FileHeader, FileResult, Hash, NextSync, Outcome,
    PlanEnd, Queued, Ready, ResumeAt, ServerMsg, SignatureMsg, Tasks, Welcome, CAPABILITIES,
    CAP_DELTA, CAP_RESUME, MANIFEST_BATCH_MAX, MANIFEST_WINDOW, MAX_OUTSTANDING, PROTOCOL_VERSION,
};
use crate::paths::{ClientId, RelPath};
use crate::planner::{DeleteBudget, DeleteCaps, Held, Planner, Rule, TailOp};
use crate::time::MTime;

/// What a server offers every session.
#[derive(Debug, Clone)]
pub struct ServerParams {
    /// Encodings accepted, preferred first.
    pub encodings: Vec<Encoding>,
    /// Keep setuid and setgid bits (`serve --keep-setid`); dropped by default.
    pub keep_setid: bool,
    /// The mtime precision of the server's filesystem: mtimes closer than this are equal
    /// (see [`Planner::mtime_window`]).
    pub mtime_window: std::time::Duration,
    /// The archive can change a stored file's mode in place; if not, a file whose mode
    /// alone changed is requested again (see [`Planner::modes_in_place`]).
    pub modes_in_place: bool,
    /// The server's limits on what a session may delete (`serve --max-delete`,
    /// `--max-delete-percent`); a client's `max_delete` tightens them.
    pub delete_caps: DeleteCaps,
    /// Only clients that authenticate are let in (`serve --auth-file`); said in the
    /// greeting.
    pub auth_required: bool,
}

impl Default for ServerParams {
    fn default() -> Self {
        Self {
            encodings: vec![Encoding::Postcard, Encoding::Json],
            keep_setid: false,
            mtime_window: std::time::Duration::from_nanos(1),
            modes_in_place: true,
            delete_caps: DeleteCaps::default(),
            auth_required: false,
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
    encoding: Encoding,
    max_delete: Option<u64>,
    resume: bool,
    delta: bool,
}
/// `READY` was sent; receiving the manifest, answering each batch with `TASKS`, and
/// receiving the files already requested.
#[derive(Debug)]
pub struct Listing {
    client_id: ClientId,
    allow_empty: bool,
    encoding: Encoding,
    max_delete: Option<u64>,
    /// Both sides speak [`CAP_RESUME`].
    resume: bool,
    /// Both sides speak [`CAP_DELTA`].
    delta: bool,
    planner: Planner,
    entries: u64,
    files: Files,
}
/// The plan was sent (`PLAN_END`); receiving the last files.
#[derive(Debug)]
pub struct Receiving {
    client_id: ClientId,
    files: Files,
    deletions: Deletions,
}
/// `TRANSFER_END` arrived; storing the last files and applying the tail.
#[derive(Debug)]
pub struct Received {
    client_id: ClientId,
    tally: Tally,
    deletions: Deletions,
}

/// Why deletions were held back when no cap was in force: the object store does not
/// delete an object another session wrote after this one planned its deletion.
const CHANGED_SINCE_PLANNED: &str = "another session wrote them after this one planned to \
     delete them (servers sharing a store without --lease); the next sync deletes them if \
     they are still gone from the folder";

/// The plan's deletions and what the caps allow of them.
#[derive(Debug, Clone)]
struct Deletions {
    planned: u64,
    budget: DeleteBudget,
    held_back: u64,
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
    /// A delta: the layout of the server's copy it copies blocks from.
    base: Option<BlockLayout>,
    /// Whether a `COPY` came: a delta without one may end without the file's hash.
    copied: bool,
}

/// The files of a session: requested and not yet received (at most
/// [`MAX_OUTSTANDING`]), the one being received, and the counts.
#[derive(Debug, Default)]
struct Files {
    requested: HashSet<RelPath>,
    /// Requested files offered for resuming, and the offset offered.
    resumable: HashMap<RelPath, u64>,
    /// Requested files whose signature was sent, and its block layout.
    bases: HashMap<RelPath, BlockLayout>,
    open: Option<Open>,
    tally: Tally,
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
    /// Open a temporary file for this header; `DATA` and `HOLE` follow.
    Open(FileHeader),
    /// Skip this many bytes of the open file, leaving a hole.
    Hole(u64),
    /// The open file is complete: make it durable and move it into place (after a delta,
    /// only if the rebuilt file has this BLAKE3 hash).
    Commit(RelPath, Option<Hash>),
    /// Copy these blocks of the server's copy into the open file (a delta).
    Copy {
        /// First block.
        block: u32,
        /// Blocks.
        count: u32,
    },
    /// Drop the open file (or a file never opened): the client could not send it.
    Discard(RelPath, String),
}

/// Where a receiving server stands after a message.
// The receiving state is the large variant and the common one; the driver boxes it in
// its phase right away, so boxing it here too would only add an allocation per frame.
#[allow(clippy::large_enum_variant)]
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
    /// A manifest batch was planned: send its `TASKS` now.
    Listing(Server<Listing>, ServerMsg),
    /// A file message: the driver acts on the [`Receive`].
    File(Server<Listing>, Receive),
    /// The plan is complete: send `PLAN_END` now.
    Receiving(Server<Receiving>, ServerMsg),
}

/// A refused `HELLO`: send `msg`, then close.
#[derive(Debug)]
pub struct Refusal {
    /// The `ERROR` message for the client (boxed: a refusal is rare, and the largest
    /// message would make every `Result` of `on_hello` as large).
    pub msg: Box<ServerMsg>,
    /// The same fault for the log.
    pub error: Error,
}

fn refusal(code: ErrorCode, error: Error) -> Refusal {
    Refusal {
        msg: Box::new(ServerMsg::Error(ErrorMsg {
            code,
            message: error.to_string(),
        })),
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
                auth: self.params.auth_required,
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
        // The capabilities both sides list, in the client's order; unknown ones ignored.
        let capabilities: Vec<String> = hello
            .capabilities
            .iter()
            .filter(|c| CAPABILITIES.contains(&c.as_str()))
            .cloned()
            .collect();
        let resume = capabilities.iter().any(|c| c == CAP_RESUME);
        let delta = capabilities.iter().any(|c| c == CAP_DELTA);
        let welcome = ServerMsg::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            capabilities,
            client_id: client_id.clone(),
        });
        Ok((
            self.with(Welcomed {
                client_id,
                allow_empty: hello.allow_empty,
                encoding,
                max_delete: hello.max_delete,
                resume,
                delta,
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

    /// The client's turn: it may send its manifest.
    pub fn ready(self) -> (Server<Listing>, ServerMsg) {
        let Welcomed {
            client_id,
            allow_empty,
            encoding,
            max_delete,
            resume,
            delta,
        } = self.state;
        let listing = Listing {
            client_id,
            allow_empty,
            encoding,
            max_delete,
            resume,
            delta,
            planner: Planner::new(Rule::QuickCheck)
                .keep_setid(self.params.keep_setid)
                .mtime_window(self.params.mtime_window)
                .modes_in_place(self.params.modes_in_place),
            entries: 0,
            files: Files::default(),
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

    /// Whether both sides speak [`CAP_RESUME`]: the driver may then look for what the
    /// store holds of the files a `TASKS` asks for, and offer it with
    /// [`offer_resume`](Self::offer_resume).
    pub fn resumes(&self) -> bool {
        self.state.resume
    }

    /// Whether both sides speak [`CAP_DELTA`]: the driver may then send the signatures
    /// of the server's copies of files a `TASKS` asks for, with
    /// [`offer_bases`](Self::offer_bases).
    pub fn deltas(&self) -> bool {
        self.state.delta
    }

    /// The `SIGNATURE` messages to send just before a `TASKS` this session just made, for
    /// the files of it whose older copy the store holds; remembers their layouts so that a
    /// `FILE_HEADER` may be a delta and `COPY` may name their blocks. Signatures for files
    /// the `TASKS` does not ask for are dropped.
    pub fn offer_bases(
        &mut self,
        tasks: &ServerMsg,
        bases: Vec<(RelPath, Signature)>,
    ) -> Vec<ServerMsg> {
        let ServerMsg::Tasks(t) = tasks else {
            return Vec::new();
        };
        if !self.state.delta {
            return Vec::new();
        }
        bases
            .into_iter()
            .filter(|(p, _)| t.paths.contains(p))
            .map(|(path, signature)| {
                self.state
                    .files
                    .bases
                    .insert(path.clone(), signature.layout());
                ServerMsg::Signature(SignatureMsg { path, signature })
            })
            .collect()
    }

    /// Adds resume offers to a `TASKS` this session just made, and remembers them: a
    /// `FILE_HEADER` may then start at an offered offset. Offers for files the `TASKS`
    /// does not ask for, out of order, or without the capability, are dropped.
    pub fn offer_resume(&mut self, tasks: ServerMsg, offers: Vec<ResumeAt>) -> ServerMsg {
        let ServerMsg::Tasks(mut t) = tasks else {
            return tasks;
        };
        if !self.state.resume {
            return ServerMsg::Tasks(t);
        }
        let mut last = None;
        for o in offers {
            let Some(p) = t.paths.get(o.index as usize) else {
                continue;
            };
            if o.offset == 0 || o.offset > o.size || last.is_some_and(|l| l >= o.index) {
                continue;
            }
            last = Some(o.index);
            self.state.files.resumable.insert(p.clone(), o.offset);
            t.resume.push(o);
        }
        ServerMsg::Tasks(t)
    }

    /// Call with each message until the manifest ends. `index` is the server's index of
    /// the client's folder in tree order, the same iterator at every call; it is read
    /// only for `MANIFEST` and `MANIFEST_END`, which the driver should therefore run
    /// where blocking is allowed. `tail` receives the work for after the transfer; after
    /// an error, discard what it received.
    pub fn on_message(
        mut self,
        msg: ClientMsg,
        index: &mut dyn Iterator<Item = (RelPath, Held)>,
        tail: &mut dyn FnMut(TailOp),
    ) -> Result<Listed, Error> {
        match msg {
            ClientMsg::Manifest(m) => {
                if m.entries.len() > MANIFEST_BATCH_MAX {
                    return Err(Error::Protocol(ProtocolError::Inconsistent(format!(
                        "a MANIFEST of {} entries (at most {MANIFEST_BATCH_MAX})",
                        m.entries.len()
                    ))));
                }
                let st = &mut self.state;
                st.entries += m.entries.len() as u64;
                let send = st.planner.batch(&m.entries, index, tail)?;
                st.files.requested.extend(send.iter().cloned());
                let tasks = ServerMsg::Tasks(Tasks {
                    paths: send,
                    resume: Vec::new(),
                });
                // TASKS repeats the requested paths whole, where the MANIFEST may have
                // shared their prefixes: it must still fit in a frame.
                let len = native::encoded_len(st.encoding, &tasks)?;
                if len + 1 > crate::codec::MAX_FRAME_LEN {
                    return Err(Error::Protocol(ProtocolError::Inconsistent(format!(
                        "the TASKS answering a MANIFEST of {} entries would take {len} bytes, \
                         more than a frame holds; the client must send smaller batches",
                        m.entries.len()
                    ))));
                }
                if st.files.requested.len() > MAX_OUTSTANDING {
                    return Err(Error::Protocol(ProtocolError::Inconsistent(format!(
                        "{} files requested and not sent: the client exceeds the manifest \
                         window of {MANIFEST_WINDOW} batches",
                        st.files.requested.len()
                    ))));
                }
                Ok(Listed::Listing(self, tasks))
            }
            ClientMsg::ManifestEnd(end) => {
                let st = self.state;
                if end.entries != st.entries {
                    return Err(Error::Protocol(ProtocolError::Inconsistent(format!(
                        "MANIFEST_END counts {} entries, batches held {}",
                        end.entries, st.entries
                    ))));
                }
                let Ok(plan) = st.planner.finish(index, !st.allow_empty, tail)? else {
                    return Err(Error::Refused {
                        code: ErrorCode::WOULD_EMPTY,
                        message:
                            "the client listed nothing but the server holds files for it; \
                                  refusing to empty the archive (the client may pass --allow-empty)"
                                .into(),
                    });
                };
                let mut files = st.files;
                files.tally.requested = plan.files;
                files.tally.requested_bytes = plan.bytes;
                let mut caps = self.params.delete_caps.and(DeleteCaps {
                    max: st.max_delete,
                    max_percent: None,
                });
                // A client that passes --allow-empty has said the archive may be emptied;
                // a count cap still holds.
                if st.allow_empty {
                    caps.max_percent = None;
                }
                let deletions = Deletions {
                    planned: plan.deletions,
                    budget: caps.budget(plan.deletions, plan.held),
                    held_back: 0,
                };
                let msg = ServerMsg::PlanEnd(PlanEnd {
                    files: plan.files,
                    bytes: plan.bytes,
                    deletions: plan.deletions,
                });
                Ok(Listed::Receiving(
                    Server {
                        params: self.params,
                        peer: self.peer,
                        state: Receiving {
                            client_id: st.client_id,
                            files,
                            deletions,
                        },
                    },
                    msg,
                ))
            }
            other => {
                let act = self
                    .state
                    .files
                    .on_message(other, "MANIFEST, MANIFEST_END or a file")?;
                Ok(Listed::File(self, act))
            }
        }
    }

    /// Call with the length of each `DATA` frame; refuses content with no open file or
    /// past the announced size.
    pub fn on_data(&mut self, len: usize) -> Result<(), Error> {
        self.state.files.on_data(len)
    }

    /// The verdict to send once the store has committed (or failed) a file.
    pub fn file_result(&mut self, path: RelPath, outcome: Outcome) -> ServerMsg {
        file_result(&mut self.state.files.tally, path, outcome)
    }
}

impl Files {
    /// A file message: `FILE_HEADER`, `FILE_END`, `FILE_ABORT` (or the client's `ERROR`);
    /// anything else is unexpected, the state expecting what `expected` says.
    fn on_message(&mut self, msg: ClientMsg, expected: &'static str) -> Result<Receive, Error> {
        match msg {
            ClientMsg::FileHeader(h) => {
                if let Some(open) = &self.open {
                    return Err(data_err(format!(
                        "FILE_HEADER for {} while {} is open",
                        h.path, open.header.path
                    )));
                }
                let offered = self.resumable.remove(&h.path);
                if h.offset != 0 && offered != Some(h.offset) {
                    return Err(data_err(format!(
                        "FILE_HEADER for {} starts at offset {}, which was not offered",
                        h.path, h.offset
                    )));
                }
                let base = self.bases.remove(&h.path);
                if h.delta && (base.is_none() || h.offset != 0) {
                    return Err(data_err(format!(
                        "FILE_HEADER for {} is a delta without a SIGNATURE sent for it",
                        h.path
                    )));
                }
                if !self.requested.remove(&h.path) {
                    return Err(data_err(format!(
                        "FILE_HEADER for {}, which was not requested or was already sent",
                        h.path
                    )));
                }
                self.open = Some(Open {
                    header: h.clone(),
                    received: h.offset,
                    base: base.filter(|_| h.delta),
                    copied: false,
                });
                Ok(Receive::Open(h))
            }
            ClientMsg::Hole(h) => {
                if h.len == 0 {
                    return Err(data_err("an empty HOLE".into()));
                }
                self.advance(h.len, "HOLE")?;
                Ok(Receive::Hole(h.len))
            }
            ClientMsg::Copy(c) => {
                let range = self
                    .open
                    .as_ref()
                    .and_then(|o| o.base)
                    .and_then(|b| b.range(c.block, c.count));
                let Some((_, len)) = range else {
                    return Err(data_err(format!(
                        "COPY of blocks {}+{} outside a delta or its base",
                        c.block, c.count
                    )));
                };
                self.advance(len, "COPY")?;
                if let Some(o) = &mut self.open {
                    o.copied = true;
                }
                Ok(Receive::Copy {
                    block: c.block,
                    count: c.count,
                })
            }
            ClientMsg::FileEnd(end) => match self.open.take() {
                Some(o) if o.copied && end.hash.is_none() => Err(data_err(format!(
                    "FILE_END for the delta of {} with COPY but without the file's hash",
                    o.header.path
                ))),
                Some(o) if o.received == o.header.size => {
                    Ok(Receive::Commit(o.header.path, end.hash))
                }
                Some(o) => Err(data_err(format!(
                    "FILE_END for {} after {} of {} bytes",
                    o.header.path, o.received, o.header.size
                ))),
                None => Err(unexpected("FILE_HEADER", "FILE_END")),
            },
            ClientMsg::FileAbort(a) => {
                self.resumable.remove(&a.path);
                self.bases.remove(&a.path);
                let ok = match self.open.take() {
                    Some(o) => o.header.path == a.path,
                    None => self.requested.remove(&a.path),
                };
                if !ok {
                    return Err(data_err(format!(
                        "FILE_ABORT for {}, which is neither open nor requested",
                        a.path
                    )));
                }
                self.tally.rejected += 1;
                Ok(Receive::Discard(a.path, a.reason))
            }
            ClientMsg::Error(e) => Err(remote(e)),
            other => Err(unexpected(expected, other.kind())),
        }
    }

    fn on_data(&mut self, len: usize) -> Result<(), Error> {
        self.advance(len as u64, "DATA")?;
        self.tally.bytes += len as u64;
        Ok(())
    }

    /// Moves the open file's position by `len` bytes of `DATA` or `HOLE`, refusing
    /// content with no open file or past the announced size.
    fn advance(&mut self, len: u64, what: &str) -> Result<(), Error> {
        let Some(o) = &mut self.open else {
            return Err(data_err(format!("{what} with no open file")));
        };
        o.received = o.received.saturating_add(len);
        if o.received > o.header.size {
            return Err(data_err(format!(
                "{} bytes of DATA and HOLE for {}, which announced {}",
                o.received, o.header.path, o.header.size
            )));
        }
        Ok(())
    }
}

impl Server<Receiving> {
    /// The id this session files under.
    pub fn client_id(&self) -> &ClientId {
        &self.state.client_id
    }

    /// Call with each message while files flow.
    pub fn on_message(mut self, msg: ClientMsg) -> Result<Receipt, Error> {
        match msg {
            ClientMsg::TransferEnd(_) => {
                let files = self.state.files;
                if let Some(o) = &files.open {
                    return Err(data_err(format!(
                        "TRANSFER_END while {} is open",
                        o.header.path
                    )));
                }
                let mut tally = files.tally;
                tally.rejected += files.requested.len() as u64;
                Ok(Receipt::Received(Server {
                    params: self.params,
                    peer: self.peer,
                    state: Received {
                        client_id: self.state.client_id,
                        tally,
                        deletions: self.state.deletions,
                    },
                }))
            }
            other => {
                let act = self
                    .state
                    .files
                    .on_message(other, "FILE_HEADER, FILE_END, FILE_ABORT or TRANSFER_END")?;
                Ok(Receipt::Receiving(self, act))
            }
        }
    }

    /// Call with the length of each `DATA` frame; refuses content with no open file or
    /// past the announced size.
    pub fn on_data(&mut self, len: usize) -> Result<(), Error> {
        self.state.files.on_data(len)
    }

    /// The verdict to send once the store has committed (or failed) a file.
    pub fn file_result(&mut self, path: RelPath, outcome: Outcome) -> ServerMsg {
        file_result(&mut self.state.files.tally, path, outcome)
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

    /// The verdict on a file committed after `TRANSFER_END` arrived.
    pub fn file_result(&mut self, path: RelPath, outcome: Outcome) -> ServerMsg {
        file_result(&mut self.state.tally, path, outcome)
    }

    /// What the store may delete: the plan's deletions within the caps.
    pub fn delete_budget(&self) -> &DeleteBudget {
        &self.state.deletions.budget
    }

    /// Books the deletions the store applied, and the entries it held back under the
    /// budget.
    pub fn deleted(&mut self, n: u64, held_back: u64) {
        self.state.tally.deleted += n;
        self.state.deletions.held_back += held_back;
    }

    /// Books work of the tail the store could not do (a deletion, a folder, a folder's
    /// time): counted with the rejected files in `NEXT_SYNC`, so that the client does not
    /// report a tree the server does not wholly hold as synced.
    pub fn tail_failed(&mut self, n: u64) {
        self.state.tally.rejected += n;
    }

    /// Ends the session. Call only once every file is durable and deletions are applied:
    /// `NEXT_SYNC` promises the client that the server holds its tree.
    pub fn next_sync(self, at: MTime, delay_ms: u64) -> (Server<Done>, ServerMsg) {
        let tally = self.state.tally;
        let d = &self.state.deletions;
        // Nothing at all under a refusing budget, whatever the store counted.
        let held_back = match d.budget {
            DeleteBudget::Nothing(_) => d.planned,
            _ => d.held_back,
        };
        let msg = ServerMsg::NextSync(NextSync {
            at,
            delay_ms,
            stored: tally.stored,
            rejected: tally.rejected,
            deleted: tally.deleted,
            held_back,
            held_back_reason: if held_back > 0 {
                // No cap: the store kept objects that changed since the plan (see
                // `Applied::held_back`).
                d.budget
                    .reason()
                    .unwrap_or(CHANGED_SINCE_PLANNED)
                    .to_owned()
            } else {
                String::new()
            },
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

//! The client's side of a native session.

use std::collections::{HashSet, VecDeque};
use std::marker::PhantomData;

use super::{remote, sealed, unexpected, ClientState};
use crate::codec::preamble;
use crate::delta::Signature;
use crate::error::{Error, ProtocolError};
use crate::messages::seed::ServerStatus;
use crate::messages::{
    ClientMsg, CopyBlocks, Encoding, Entry, EntryKind, ErrorCode, FileAbort, FileEnd, FileHeader,
    Hash, Hello, Hole, Manifest, ManifestEnd, NextSync, Outcome, PlanEnd, ResumeAt, ServerMsg,
    TransferEnd, Welcome, CAPABILITIES, CAP_DELTA, MANIFEST_BATCH_MAX, MANIFEST_WINDOW,
    PROTOCOL_VERSION,
};
use crate::paths::{ClientId, RelPath};

/// What a client needs to open a session.
#[derive(Debug, Clone)]
pub struct ClientParams {
    /// The id to sync as; `None` lets the server name the folder after the address.
    pub client_id: Option<ClientId>,
    /// Preferred encoding; must be one the server offers.
    pub encoding: Encoding,
    /// Software name and version, for the server's log.
    pub agent: String,
    /// Allow an empty listing to empty the server's copy.
    pub allow_empty: bool,
    /// The most entries the session may delete on the server (`--max-delete`).
    pub max_delete: Option<u64>,
    /// Never send a block delta (`--whole-file`, rsync's `-W`): `HELLO` leaves
    /// [`CAP_DELTA`] out, so the server sends no signatures and every changed file goes
    /// whole. Resume is still offered.
    pub whole_file: bool,
}

/// A native client session in state `S`.
#[must_use = "a session does nothing unless driven to its next state"]
#[derive(Debug)]
pub struct Client<S: ClientState> {
    params: ClientParams,
    state: S,
}

/// The server's address is known; nothing has been exchanged yet.
#[derive(Debug)]
pub struct Discovered(PhantomData<()>);
/// The greeting arrived and `HELLO` was sent; waiting for `WELCOME`, `QUEUED`, `READY`.
#[derive(Debug)]
pub struct Connected {
    welcome: Option<Welcome>,
}
/// `READY` arrived: the client may list its tree.
#[derive(Debug)]
pub struct Ready {
    welcome: Welcome,
}
/// Listing and sending at once: manifest batches go out while the window allows, each
/// batch's `TASKS` comes back, and the files it asks for are sent.
#[derive(Debug)]
pub struct Syncing {
    welcome: Welcome,
    /// Open batches, oldest first (see [`MANIFEST_WINDOW`]).
    open: VecDeque<OpenBatch>,
    /// Sequence number of the batch at the front of `open`.
    front_seq: u64,
    /// Entries listed so far.
    listed: u64,
    manifest_ended: bool,
    /// Files and bytes requested so far.
    requested: (u64, u64),
    end: Option<PlanEnd>,
    awaiting: Awaiting,
    report: Report,
    /// Signatures received for the next `TASKS`, by path.
    bases: std::collections::HashMap<RelPath, Signature>,
    /// Tasks handed out with a signature and not yet ended.
    bases_in_flight: usize,
    /// Whether the file being sent as a delta had a `COPY` yet: only such a file counts
    /// in [`Report::deltas`] (one that fell back to plain data from the start does not).
    copied: bool,
}

/// Signatures a client keeps for the next `TASKS`, at most.
const MAX_PENDING_BASES: usize = 16;
/// Signatures a client holds at once, at most, waiting and with tasks in flight: with
/// signatures of at most a frame each, this bounds their memory (64 MiB) whatever the
/// server sends. Past it, files are sent whole.
const MAX_BASES_IN_FLIGHT: usize = 64;

/// `TRANSFER_END` was sent; waiting for the last results and `NEXT_SYNC`.
#[derive(Debug)]
pub struct Finishing {
    welcome: Welcome,
    awaiting: Awaiting,
    report: Report,
}
/// `NEXT_SYNC` arrived; the session is over.
#[derive(Debug)]
pub struct Done {
    welcome: Welcome,
    report: Report,
    next: NextSync,
}

macro_rules! client_states {
    ($($s:ident),*) => { $( impl sealed::Sealed for $s {} impl ClientState for $s {} )* };
}
client_states!(Discovered, Connected, Ready, Syncing, Finishing, Done);

/// A manifest batch sent and not yet done with.
#[derive(Debug)]
struct OpenBatch {
    /// Its files, until its `TASKS` arrives.
    files: Option<Vec<Entry>>,
    /// Files requested from it and not yet sent or aborted.
    pending: usize,
}

/// What a session achieved, for the summary line and the exit code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Files the server asked for.
    pub requested: u64,
    /// Their total size.
    pub requested_bytes: u64,
    /// Files whose content was sent completely.
    pub sent: u64,
    /// Content bytes sent.
    pub bytes_sent: u64,
    /// Files the server reported stored.
    pub stored: u64,
    /// Files not stored: (path, code, reason), from the server or from our own reads; the
    /// first [`Report::FAILED_KEPT`] of them (a failing disk must not make the report grow
    /// with the tree). [`failed_count`](Report::failed_count) counts them all.
    pub failed: Vec<(RelPath, ErrorCode, String)>,
    /// How many files were not stored.
    pub failed_count: u64,
    /// Work after the transfer (deletions, new folders, folder times) that the server
    /// could not do: `NEXT_SYNC` counts more failures than the files did.
    pub tail_failures: u64,
    /// Entries the server deleted.
    pub deleted: u64,
    /// Sockets in the folder, not archived (by design; see the README).
    pub sockets: u64,
    /// Device files in the folder, not archived.
    pub devices: u64,
    /// Entries excluded by `--exclude` or `.filesyncignore` (an excluded folder counts
    /// once).
    pub excluded: u64,
    /// Entries the server did not delete because a deletion cap held them back.
    pub held_back: u64,
    /// Files resumed from what an interrupted session had sent.
    pub resumed: u64,
    /// Files sent as a delta against the server's older copy that copied at least one
    /// of its blocks (a delta that found nothing to copy is a whole-file send).
    pub deltas: u64,
    /// Why, as the server put it; empty when nothing was held back.
    pub held_back_reason: String,
}

impl Report {
    /// How many failures [`Report::failed`] lists.
    pub const FAILED_KEPT: usize = 1000;

    /// Books a file that was not stored.
    pub fn fail(&mut self, path: RelPath, code: ErrorCode, reason: String) {
        self.failed_count += 1;
        if self.failed.len() < Self::FAILED_KEPT {
            self.failed.push((path, code, reason));
        }
    }
}

/// What the driver must send after the greeting: the preamble bytes, then `HELLO`.
#[derive(Debug)]
pub struct Greeting {
    /// The six preamble bytes, sent raw before any frame.
    pub preamble: [u8; preamble::LEN],
    /// The `HELLO` message.
    pub hello: ClientMsg,
    /// The position the greeting announced, if the server is busy.
    pub queue_position: Option<u32>,
}

/// Where a connected client stands after a message.
#[derive(Debug)]
pub enum Waiting {
    /// Still waiting (after `WELCOME` or `QUEUED`); the position if one was given.
    Waiting(Client<Connected>, Option<u32>),
    /// `READY`: the client's turn.
    Ready(Client<Ready>),
}

/// Where a finishing client stands after a message.
#[derive(Debug)]
pub enum Finish {
    /// Waiting for more results and `NEXT_SYNC`.
    Finishing(Client<Finishing>),
    /// The session is over.
    Done(Client<Done>),
}

impl<S: ClientState> Client<S> {
    /// The parameters the session was opened with.
    pub fn params(&self) -> &ClientParams {
        &self.params
    }

    fn with<T: ClientState>(self, state: T) -> Client<T> {
        Client {
            params: self.params,
            state,
        }
    }
}

impl Client<Discovered> {
    /// A new session, to be driven once a TCP connection to the server is open.
    pub fn new(params: ClientParams) -> Self {
        Client {
            params,
            state: Discovered(PhantomData),
        }
    }

    /// Call with the server's greeting, the first JSON object of the connection. Returns
    /// what to send: the preamble and `HELLO`, even when the server is busy, so that a bad
    /// id is refused at once rather than after the wait.
    ///
    /// Fails if the server speaks only the original dialect or shares no version or
    /// encoding with us.
    pub fn on_greeting(
        self,
        status: &ServerStatus,
    ) -> Result<(Client<Connected>, Greeting), Error> {
        let offer = status.filesync.as_ref().ok_or_else(|| {
            Error::Protocol(ProtocolError::Version(
                "the server speaks only the original FileSync dialect".into(),
            ))
        })?;
        if !offer.versions.contains(&PROTOCOL_VERSION) {
            return Err(Error::Protocol(ProtocolError::Version(format!(
                "server accepts versions {:?}, this client speaks {PROTOCOL_VERSION}",
                offer.versions
            ))));
        }
        let enc = self.params.encoding;
        if !offer.encodings.contains(&enc) {
            return Err(Error::Protocol(ProtocolError::Version(format!(
                "server does not accept the {} encoding (it offers {:?})",
                enc.name(),
                offer.encodings
            ))));
        }
        let hello = ClientMsg::Hello(Hello {
            version: PROTOCOL_VERSION,
            agent: self.params.agent.clone(),
            client_id: self.params.client_id.clone(),
            capabilities: CAPABILITIES
                .iter()
                .filter(|c| !(self.params.whole_file && **c == CAP_DELTA))
                .map(|c| (*c).to_owned())
                .collect(),
            allow_empty: self.params.allow_empty,
            max_delete: self.params.max_delete,
        });
        let greeting = Greeting {
            preamble: preamble::encode(enc),
            hello,
            queue_position: status.queue_position,
        };
        Ok((self.with(Connected { welcome: None }), greeting))
    }
}

impl Client<Connected> {
    /// Call with each message until `READY`.
    pub fn on_message(self, msg: ServerMsg) -> Result<Waiting, Error> {
        match msg {
            ServerMsg::Welcome(w) if self.state.welcome.is_none() => {
                if w.version != PROTOCOL_VERSION {
                    return Err(Error::Protocol(ProtocolError::Version(format!(
                        "server welcomed version {}, but this client asked for {PROTOCOL_VERSION}",
                        w.version
                    ))));
                }
                Ok(Waiting::Waiting(
                    self.with(Connected { welcome: Some(w) }),
                    None,
                ))
            }
            ServerMsg::Queued(q) if self.state.welcome.is_some() => {
                Ok(Waiting::Waiting(self, Some(q.position)))
            }
            ServerMsg::Ready(_) => match self.state.welcome {
                Some(_) => {
                    let Connected { welcome } = self.state;
                    let welcome = welcome.expect("checked just above");
                    Ok(Waiting::Ready(Client {
                        params: self.params,
                        state: Ready { welcome },
                    }))
                }
                None => Err(unexpected("WELCOME", "READY")),
            },
            ServerMsg::Error(e) => Err(remote(e)),
            other if self.state.welcome.is_none() => Err(unexpected("WELCOME", other.kind())),
            other => Err(unexpected("QUEUED or READY", other.kind())),
        }
    }

    /// The server's `WELCOME`, once it arrived.
    pub fn welcome(&self) -> Option<&Welcome> {
        self.state.welcome.as_ref()
    }
}

impl Client<Ready> {
    /// Starts listing and sending.
    pub fn start(self) -> Client<Syncing> {
        let welcome = self.state.welcome.clone();
        self.with(Syncing {
            welcome,
            open: VecDeque::new(),
            front_seq: 0,
            listed: 0,
            manifest_ended: false,
            requested: (0, 0),
            end: None,
            awaiting: Awaiting::default(),
            report: Report::default(),
            bases: std::collections::HashMap::new(),
            bases_in_flight: 0,
            copied: false,
        })
    }

    /// The server's `WELCOME`.
    pub fn welcome(&self) -> &Welcome {
        &self.state.welcome
    }
}

/// A file the server asked for, taken from the plan. Only the session hands these out, so
/// only requested files can be sent: [`Client::<Syncing>::header`] takes one by
/// reference, and [`file_end`](Client::<Syncing>::file_end) or
/// [`abort`](Client::<Syncing>::abort) consume it.
#[must_use = "a task is sent (header, content, file_end) or aborted"]
#[derive(Debug, PartialEq, Eq)]
pub struct Task {
    path: RelPath,
    /// The manifest batch that listed it.
    batch: u64,
    /// What the server holds of it from an interrupted session, if it said.
    resume: Option<ResumeAt>,
    /// The signature of the server's older copy, if it sent one (`delta`).
    base: Option<Signature>,
    /// It came with a signature (counted in flight until the task ends).
    had_base: bool,
}

impl Task {
    /// The file to send.
    pub fn path(&self) -> &RelPath {
        &self.path
    }

    /// What the server holds of the file from an interrupted session: the client may
    /// resume from there if its file is unchanged (same size, mtime and prefix hash).
    pub fn resume(&self) -> Option<&ResumeAt> {
        self.resume.as_ref()
    }

    /// Takes the signature of the server's older copy, if it sent one: the file may be
    /// sent as a delta against it ([`Client::header_delta`]).
    pub fn take_base(&mut self) -> Option<Signature> {
        self.base.take()
    }
}

impl Client<Syncing> {
    /// Whether another `MANIFEST` batch may be sent now: the listing has not ended and
    /// fewer than [`MANIFEST_WINDOW`] batches are open.
    pub fn can_list(&self) -> bool {
        !self.state.manifest_ended && self.state.open.len() < MANIFEST_WINDOW
    }

    /// The `MANIFEST` for the next entries of the listing, in tree order; at most
    /// [`MANIFEST_BATCH_MAX`] of them, sent only when [`can_list`](Self::can_list).
    pub fn list(&mut self, entries: Vec<Entry>) -> ClientMsg {
        debug_assert!(self.can_list() && entries.len() <= MANIFEST_BATCH_MAX);
        let st = &mut self.state;
        st.listed += entries.len() as u64;
        st.open.push_back(OpenBatch {
            files: Some(
                entries
                    .iter()
                    .filter(|e| e.kind == EntryKind::File)
                    .cloned()
                    .collect(),
            ),
            pending: 0,
        });
        ClientMsg::Manifest(Manifest { entries })
    }

    /// `MANIFEST_END`, once the listing is exhausted.
    pub fn end_manifest(&mut self) -> ClientMsg {
        self.state.manifest_ended = true;
        ClientMsg::ManifestEnd(ManifestEnd {
            entries: self.state.listed,
        })
    }

    /// Call with each message from the server. Returns the files a `TASKS` asks for, with
    /// their listed size and mtime, to be sent in that order.
    pub fn on_message(&mut self, msg: ServerMsg) -> Result<Vec<(Task, Entry)>, Error> {
        let st = &mut self.state;
        match msg {
            ServerMsg::Tasks(t) => {
                let seq = st.front_seq;
                let Some((batch_no, batch)) = st
                    .open
                    .iter_mut()
                    .enumerate()
                    .find(|(_, b)| b.files.is_some())
                else {
                    return Err(Error::Protocol(ProtocolError::Inconsistent(
                        "TASKS for no outstanding MANIFEST".into(),
                    )));
                };
                let files = batch.files.take().expect("found with files");
                let mut offers = t.resume.into_iter().peekable();
                // Both in manifest order: one merge pass matches them.
                let mut listed = files.into_iter();
                let mut out = Vec::with_capacity(t.paths.len());
                for (i, p) in t.paths.into_iter().enumerate() {
                    let Some(e) = listed.by_ref().find(|e| e.path == p) else {
                        return Err(Error::Protocol(ProtocolError::Inconsistent(format!(
                            "the server asked for {p}, which is not a listed file of the batch \
                             (or is out of order)"
                        ))));
                    };
                    st.requested.0 += 1;
                    st.requested.1 += e.size;
                    let resume = offers
                        .next_if(|o| o.index as usize == i)
                        .filter(|o| o.offset > 0 && o.offset <= o.size);
                    let base = st.bases.remove(&p);
                    st.bases_in_flight += usize::from(base.is_some());
                    out.push((
                        Task {
                            had_base: base.is_some(),
                            path: p,
                            batch: seq + batch_no as u64,
                            resume,
                            base,
                        },
                        e,
                    ));
                }
                if offers.next().is_some() {
                    return Err(Error::Protocol(ProtocolError::Inconsistent(
                        "TASKS offers to resume a file it does not ask for, or out of order".into(),
                    )));
                }
                batch.pending = out.len();
                st.close_done_batches();
                // A signature for a file this TASKS did not ask for is of no use.
                st.bases.clear();
                Ok(out)
            }
            ServerMsg::Signature(sig) => {
                if st.bases.len() >= MAX_PENDING_BASES
                    || st.bases_in_flight + st.bases.len() >= MAX_BASES_IN_FLIGHT
                {
                    // Past the bound the file is simply sent whole: memory stays bounded
                    // whatever the server sends.
                    return Ok(Vec::new());
                }
                sig.signature.validate().map_err(|e| {
                    Error::Protocol(ProtocolError::Inconsistent(format!(
                        "SIGNATURE for {}: {e}",
                        sig.path
                    )))
                })?;
                st.bases.insert(sig.path, sig.signature);
                Ok(Vec::new())
            }
            ServerMsg::PlanEnd(end) => {
                if st.end.is_some() {
                    return Err(Error::Protocol(ProtocolError::Inconsistent(
                        "a second PLAN_END".into(),
                    )));
                }
                if !st.manifest_ended || st.open.iter().any(|b| b.files.is_some()) {
                    return Err(Error::Protocol(ProtocolError::Inconsistent(
                        "PLAN_END before every MANIFEST was answered".into(),
                    )));
                }
                if end.files != st.requested.0 || end.bytes != st.requested.1 {
                    return Err(Error::Protocol(ProtocolError::Inconsistent(format!(
                        "PLAN_END announces {} files of {} bytes, TASKS asked for {} of {}",
                        end.files, end.bytes, st.requested.0, st.requested.1
                    ))));
                }
                st.report.requested = end.files;
                st.report.requested_bytes = end.bytes;
                st.end = Some(end);
                Ok(Vec::new())
            }
            ServerMsg::FileResult(r) => {
                record(&mut st.awaiting, &mut st.report, r.path, r.outcome)?;
                Ok(Vec::new())
            }
            ServerMsg::Error(e) => Err(remote(e)),
            other => Err(unexpected("TASKS, PLAN_END or FILE_RESULT", other.kind())),
        }
    }

    /// Files and bytes requested so far.
    pub fn requested(&self) -> (u64, u64) {
        self.state.requested
    }

    /// The plan's totals, once `PLAN_END` has arrived.
    pub fn plan_end(&self) -> Option<PlanEnd> {
        self.state.end
    }

    /// Whether everything is sent: the plan is complete and every requested file was sent
    /// or aborted. Then [`finish`](Self::finish) may be called.
    pub fn all_sent(&self) -> bool {
        self.state.end.is_some() && self.state.open.is_empty()
    }

    /// The header to send before a task's content: the size, mtime and mode of `e`, the
    /// file as it is read.
    pub fn header(&mut self, task: &Task, e: &Entry) -> ClientMsg {
        self.header_from(task, e, 0)
    }

    /// The header of a task sent as a delta against the signature the server sent for
    /// it ([`Task::take_base`]): `COPY` and `DATA` follow, then [`file_end_hashed`]
    /// with the file's hash.
    ///
    /// [`file_end_hashed`]: Self::file_end_hashed
    pub fn header_delta(&mut self, task: &Task, e: &Entry) -> ClientMsg {
        self.state.copied = false;
        ClientMsg::FileHeader(FileHeader {
            path: task.path.clone(),
            size: e.size,
            mtime: e.mtime,
            mode: e.mode,
            delta: true,
            offset: 0,
        })
    }

    /// `COPY`: `count` blocks of the server's copy from `block`, in a delta.
    pub fn copy(&mut self, block: u32, count: u32) -> ClientMsg {
        self.state.copied = true;
        ClientMsg::Copy(CopyBlocks { block, count })
    }

    /// The header of a task resumed at `offset` (only an offset the server offered, see
    /// [`Task::resume`]); the content that follows starts there.
    pub fn header_from(&mut self, task: &Task, e: &Entry, offset: u64) -> ClientMsg {
        if offset > 0 {
            self.state.report.resumed += 1;
        }
        ClientMsg::FileHeader(FileHeader {
            path: task.path.clone(),
            size: e.size,
            mtime: e.mtime,
            mode: e.mode,
            delta: false,
            offset,
        })
    }

    /// A hole of `len` bytes in the open task's content (see [`Hole`]).
    pub fn hole(&self, len: u64) -> ClientMsg {
        ClientMsg::Hole(Hole { len })
    }

    /// The message closing a task whose content was sent whole and unchanged; `bytes`
    /// counts what was sent (after the offset of a resumed file).
    pub fn file_end(&mut self, task: Task, bytes: u64) -> ClientMsg {
        self.file_end_hashed(task, bytes, None)
    }

    /// [`file_end`](Self::file_end) with the file's BLAKE3 hash, which a delta with `COPY` needs
    /// (`None` after a delta without one).
    pub fn file_end_hashed(&mut self, task: Task, bytes: u64, hash: Option<Hash>) -> ClientMsg {
        let st = &mut self.state;
        st.report.sent += 1;
        st.report.bytes_sent += bytes;
        st.report.deltas += u64::from(std::mem::take(&mut st.copied));
        st.bases_in_flight -= usize::from(task.had_base);
        st.task_done(task.batch);
        st.awaiting.insert(&task.path);
        ClientMsg::FileEnd(FileEnd { hash })
    }

    /// The message dropping a task whose file changed, vanished or could not be read;
    /// sent after its header (if one was sent) or on its own. The file is retried next
    /// sync.
    pub fn abort(&mut self, task: Task, reason: String) -> ClientMsg {
        let st = &mut self.state;
        st.bases_in_flight -= usize::from(task.had_base);
        st.task_done(task.batch);
        let path = task.path;
        st.report
            .fail(path.clone(), ErrorCode::ABORTED, reason.clone());
        ClientMsg::FileAbort(FileAbort { path, reason })
    }

    /// Progress so far.
    pub fn report(&self) -> &Report {
        &self.state.report
    }

    /// Ends the transfer. Fails unless [`all_sent`](Self::all_sent).
    pub fn finish(self) -> Result<(Client<Finishing>, ClientMsg), Error> {
        if !self.all_sent() {
            return Err(Error::Protocol(ProtocolError::Inconsistent(
                "ending the transfer before the plan is complete and sent".into(),
            )));
        }
        let Syncing {
            welcome,
            awaiting,
            report,
            ..
        } = self.state;
        Ok((
            Client {
                params: self.params,
                state: Finishing {
                    welcome,
                    awaiting,
                    report,
                },
            },
            ClientMsg::TransferEnd(TransferEnd {}),
        ))
    }
}

impl Syncing {
    /// One task of batch `seq` was sent or aborted.
    fn task_done(&mut self, seq: u64) {
        let i = usize::try_from(seq - self.front_seq).unwrap_or(usize::MAX);
        if let Some(b) = self.open.get_mut(i) {
            b.pending = b.pending.saturating_sub(1);
        }
        self.close_done_batches();
    }

    /// Batches whose tasks arrived and were all sent leave the window, oldest first.
    fn close_done_batches(&mut self) {
        while self
            .open
            .front()
            .is_some_and(|b| b.files.is_none() && b.pending == 0)
        {
            self.open.pop_front();
            self.front_seq += 1;
        }
    }
}

/// Files sent whole and awaiting their `FILE_RESULT`. The server confirms a file only once
/// its batch is durable, so thousands can wait at once; each is kept as a 64-bit hash of
/// its path rather than the path, which is all a check against a confused server needs
/// (SipHash with fixed keys: a collision takes a server that means one, and could at
/// worst let one stray result pass).
#[derive(Debug, Default)]
struct Awaiting(HashSet<u64>);

impl Awaiting {
    fn key(path: &RelPath) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        path.hash(&mut h);
        h.finish()
    }

    fn insert(&mut self, path: &RelPath) {
        self.0.insert(Self::key(path));
    }

    fn remove(&mut self, path: &RelPath) -> bool {
        self.0.remove(&Self::key(path))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Books a `FILE_RESULT` against the files awaiting one.
fn record(
    awaiting: &mut Awaiting,
    report: &mut Report,
    path: RelPath,
    outcome: Outcome,
) -> Result<(), Error> {
    if !awaiting.remove(&path) {
        return Err(Error::Protocol(ProtocolError::Inconsistent(format!(
            "FILE_RESULT for {path}, which awaits no result"
        ))));
    }
    match outcome {
        Outcome::Stored => report.stored += 1,
        Outcome::Rejected { code, reason } => report.fail(path, code, reason),
    }
    Ok(())
}

impl Client<Finishing> {
    /// Call with each message until `NEXT_SYNC`.
    pub fn on_message(mut self, msg: ServerMsg) -> Result<Finish, Error> {
        match msg {
            ServerMsg::FileResult(r) => {
                record(
                    &mut self.state.awaiting,
                    &mut self.state.report,
                    r.path,
                    r.outcome,
                )?;
                Ok(Finish::Finishing(self))
            }
            ServerMsg::NextSync(next) => {
                if !self.state.awaiting.is_empty() {
                    return Err(Error::Protocol(ProtocolError::Inconsistent(format!(
                        "NEXT_SYNC while {} files await a result",
                        self.state.awaiting.len()
                    ))));
                }
                let Finishing {
                    welcome,
                    mut report,
                    ..
                } = self.state;
                report.deleted = next.deleted;
                report.tail_failures = next.rejected.saturating_sub(report.failed_count);
                report.held_back = next.held_back;
                report.held_back_reason = next.held_back_reason.clone();
                Ok(Finish::Done(Client {
                    params: self.params,
                    state: Done {
                        welcome,
                        report,
                        next,
                    },
                }))
            }
            ServerMsg::Error(e) => Err(remote(e)),
            other => Err(unexpected("FILE_RESULT or NEXT_SYNC", other.kind())),
        }
    }
}

impl Client<Done> {
    /// What the session achieved.
    pub fn report(&self) -> &Report {
        &self.state.report
    }

    /// When the server wants the client back.
    pub fn next_sync(&self) -> NextSync {
        self.state.next.clone()
    }

    /// The id the server filed this client under.
    pub fn client_id(&self) -> &ClientId {
        &self.state.welcome.client_id
    }
}

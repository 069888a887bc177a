//! The client's side of a native session.

use std::collections::{HashSet, VecDeque};
use std::marker::PhantomData;

use super::{batches, path_weight, remote, sealed, unexpected, ClientState};
use crate::codec::preamble;
use crate::error::{Error, ProtocolError};
use crate::messages::seed::ServerStatus;
use crate::messages::{
    ClientMsg, Encoding, Entry, ErrorCode, FileAbort, FileEnd, FileHeader, Hello, Manifest,
    ManifestEnd, NextSync, Outcome, PlanEnd, ServerMsg, TransferEnd, Welcome, PROTOCOL_VERSION,
};
use crate::paths::{ClientId, RelPath};
use crate::time::MTime;

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
/// The manifest was sent; waiting for the plan.
#[derive(Debug)]
pub struct Listed {
    welcome: Welcome,
    plan: PlanState,
}
/// The whole plan arrived.
#[derive(Debug)]
pub struct Planned {
    welcome: Welcome,
    plan: PlanState,
    end: PlanEnd,
}
/// Sending the requested files.
#[derive(Debug)]
pub struct Transferring {
    welcome: Welcome,
    queue: VecDeque<RelPath>,
    end: PlanEnd,
    deletions: Vec<RelPath>,
    awaiting: HashSet<RelPath>,
    report: Report,
}
/// `TRANSFER_END` was sent; waiting for the last results and `NEXT_SYNC`.
#[derive(Debug)]
pub struct Finishing {
    welcome: Welcome,
    awaiting: HashSet<RelPath>,
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
client_states!(
    Discovered,
    Connected,
    Ready,
    Listed,
    Planned,
    Transferring,
    Finishing,
    Done
);

#[derive(Debug, Default)]
struct PlanState {
    tasks: VecDeque<RelPath>,
    deletions: Vec<RelPath>,
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
    /// Files not stored: (path, code, reason), from the server or from our own reads.
    pub failed: Vec<(RelPath, ErrorCode, String)>,
    /// Entries the server deleted.
    pub deleted: u64,
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

/// Where a listed client stands after a message.
#[derive(Debug)]
pub enum Planning {
    /// More of the plan is to come.
    Listed(Client<Listed>),
    /// The plan is complete.
    Planned(Client<Planned>),
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
            capabilities: Vec::new(),
            allow_empty: self.params.allow_empty,
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
    /// Sends the listing: returns the `MANIFEST` batches and the closing `MANIFEST_END`,
    /// to be written in order. The driver must keep reading while it writes them: the
    /// server answers each batch with `TASKS` as it goes.
    pub fn send_manifest(self, entries: &[Entry]) -> (Client<Listed>, Vec<ClientMsg>) {
        let mut out: Vec<ClientMsg> = batches(entries.iter().cloned(), |e| path_weight(&e.path))
            .into_iter()
            .map(|entries| ClientMsg::Manifest(Manifest { entries }))
            .collect();
        out.push(ClientMsg::ManifestEnd(ManifestEnd {
            entries: entries.len() as u64,
        }));
        let welcome = self.state.welcome.clone();
        (
            self.with(Listed {
                welcome,
                plan: PlanState::default(),
            }),
            out,
        )
    }

    /// The server's `WELCOME`.
    pub fn welcome(&self) -> &Welcome {
        &self.state.welcome
    }
}

impl Client<Listed> {
    /// Call with each message until the plan is complete.
    pub fn on_message(mut self, msg: ServerMsg) -> Result<Planning, Error> {
        match msg {
            ServerMsg::Tasks(t) => {
                self.state.plan.tasks.extend(t.paths);
                Ok(Planning::Listed(self))
            }
            ServerMsg::Deletions(d) => {
                self.state.plan.deletions.extend(d.paths);
                Ok(Planning::Listed(self))
            }
            ServerMsg::PlanEnd(end) => {
                let plan = &self.state.plan;
                if end.files != plan.tasks.len() as u64
                    || end.deletions != plan.deletions.len() as u64
                {
                    return Err(Error::Protocol(ProtocolError::Inconsistent(format!(
                        "PLAN_END announces {} files and {} deletions, batches held {} and {}",
                        end.files,
                        end.deletions,
                        plan.tasks.len(),
                        plan.deletions.len()
                    ))));
                }
                let Listed { welcome, plan } = self.state;
                Ok(Planning::Planned(Client {
                    params: self.params,
                    state: Planned { welcome, plan, end },
                }))
            }
            ServerMsg::Error(e) => Err(remote(e)),
            other => Err(unexpected("TASKS, DELETIONS or PLAN_END", other.kind())),
        }
    }
}

impl Client<Planned> {
    /// Files the server asked for, in order.
    pub fn tasks(&self) -> impl ExactSizeIterator<Item = &RelPath> {
        self.state.plan.tasks.iter()
    }

    /// Entries the server will delete.
    pub fn deletions(&self) -> &[RelPath] {
        &self.state.plan.deletions
    }

    /// Totals of the plan.
    pub fn plan_end(&self) -> PlanEnd {
        self.state.end
    }

    /// Starts sending the requested files.
    pub fn start(self) -> Client<Transferring> {
        let Planned { welcome, plan, end } = self.state;
        let report = Report {
            requested: end.files,
            requested_bytes: end.bytes,
            ..Report::default()
        };
        Client {
            params: self.params,
            state: Transferring {
                welcome,
                queue: plan.tasks,
                end,
                deletions: plan.deletions,
                awaiting: HashSet::new(),
                report,
            },
        }
    }
}

/// A file the server asked for, taken from the plan. Only the session hands these out, so
/// only requested files can be sent: [`Client::<Transferring>::header`] takes one by
/// reference, and [`file_end`](Client::<Transferring>::file_end) or
/// [`abort`](Client::<Transferring>::abort) consume it.
#[must_use = "a task is sent (header, content, file_end) or aborted"]
#[derive(Debug, PartialEq, Eq)]
pub struct Task {
    path: RelPath,
}

impl Task {
    /// The file to send.
    pub fn path(&self) -> &RelPath {
        &self.path
    }
}

impl Client<Transferring> {
    /// The next file to send, in the server's order; `None` when all were taken.
    pub fn next_task(&mut self) -> Option<Task> {
        self.state.queue.pop_front().map(|path| Task { path })
    }

    /// Files not yet taken.
    pub fn remaining(&self) -> usize {
        self.state.queue.len()
    }

    /// The header to send before a task's content.
    pub fn header(&self, task: &Task, size: u64, mtime: MTime) -> ClientMsg {
        ClientMsg::FileHeader(FileHeader {
            path: task.path.clone(),
            size,
            mtime,
            offset: 0,
        })
    }

    /// The message closing a task whose content was sent whole and unchanged.
    pub fn file_end(&mut self, task: Task, bytes: u64) -> ClientMsg {
        self.state.report.sent += 1;
        self.state.report.bytes_sent += bytes;
        self.state.awaiting.insert(task.path);
        ClientMsg::FileEnd(FileEnd {})
    }

    /// The message dropping a task whose file changed, vanished or could not be read;
    /// sent after its header (if one was sent) or on its own. The file is retried next
    /// sync.
    pub fn abort(&mut self, task: Task, reason: String) -> ClientMsg {
        let path = task.path;
        self.state
            .report
            .failed
            .push((path.clone(), ErrorCode::ABORTED, reason.clone()));
        ClientMsg::FileAbort(FileAbort { path, reason })
    }

    /// Call with each message that arrives while sending.
    pub fn on_message(&mut self, msg: ServerMsg) -> Result<(), Error> {
        match msg {
            ServerMsg::FileResult(r) => record(
                &mut self.state.awaiting,
                &mut self.state.report,
                r.path,
                r.outcome,
            ),
            ServerMsg::Error(e) => Err(remote(e)),
            other => Err(unexpected("FILE_RESULT", other.kind())),
        }
    }

    /// Progress so far.
    pub fn report(&self) -> &Report {
        &self.state.report
    }

    /// Totals of the plan.
    pub fn plan_end(&self) -> PlanEnd {
        self.state.end
    }

    /// Entries the server will delete.
    pub fn deletions(&self) -> &[RelPath] {
        &self.state.deletions
    }

    /// Ends the transfer; files never taken from the queue count as failed.
    pub fn finish(mut self) -> (Client<Finishing>, ClientMsg) {
        for p in std::mem::take(&mut self.state.queue) {
            self.state
                .report
                .failed
                .push((p, ErrorCode::ABORTED, "not sent".into()));
        }
        let Transferring {
            welcome,
            awaiting,
            report,
            ..
        } = self.state;
        (
            Client {
                params: self.params,
                state: Finishing {
                    welcome,
                    awaiting,
                    report,
                },
            },
            ClientMsg::TransferEnd(TransferEnd {}),
        )
    }
}

/// Books a `FILE_RESULT` against the files awaiting one.
fn record(
    awaiting: &mut HashSet<RelPath>,
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
        Outcome::Rejected { code, reason } => report.failed.push((path, code, reason)),
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
        self.state.next
    }

    /// The id the server filed this client under.
    pub fn client_id(&self) -> &ClientId {
        &self.state.welcome.client_id
    }
}

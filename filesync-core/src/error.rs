//! The crate's error type: faults of the peer kept apart from local failures.

use crate::codec::CodecError;
use crate::messages::ErrorCode;
use crate::paths::NameError;

/// Everything that can end a session or an operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer broke the protocol (wrong message for the state, inconsistent counts).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The byte stream could not be decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// This side refuses to go on (its own decision, not the peer's fault), and tells the
    /// peer so with this code where the dialect allows.
    #[error("{message}")]
    Refused {
        /// The code sent to the peer.
        code: ErrorCode,
        /// Why.
        message: String,
    },
    /// The peer reported an error and ended the session.
    #[error("peer reported {code}: {message}")]
    Remote {
        /// The peer's code.
        code: ErrorCode,
        /// The peer's text.
        message: String,
    },
    /// A local filesystem or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The folder to sync could not be listed (a local fault, not the network's).
    #[error("listing the folder: {0}")]
    Listing(std::io::Error),
    /// The peer stayed silent past a deadline.
    #[error("timed out after {0:?} waiting for the peer")]
    Timeout(std::time::Duration),
    /// The connection closed before the session finished.
    #[error("connection closed by the peer")]
    Closed,
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// A peer's violation of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A message arrived that the current state does not accept.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        /// What the state waits for.
        expected: &'static str,
        /// The wire name of what came.
        got: &'static str,
    },
    /// A path or id in a message was refused.
    #[error(transparent)]
    Name(#[from] NameError),
    /// Content arrived with no open file, or more than the header announced.
    #[error("{0}")]
    Data(String),
    /// Counts or references in the stream do not add up.
    #[error("{0}")]
    Inconsistent(String),
    /// No protocol version or encoding in common.
    #[error("{0}")]
    Version(String),
}

impl ProtocolError {
    /// The error code to send the peer for this fault.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::Name(NameError::BadClientId(_)) => ErrorCode::BAD_CLIENT_ID,
            ProtocolError::Name(_) => ErrorCode::BAD_PATH,
            ProtocolError::Version(_) => ErrorCode::VERSION,
            _ => ErrorCode::PROTOCOL,
        }
    }
}

/// `e` and its sources, joined by `": "`, each left out whose text the ones before already
/// say (libraries often repeat their source in their own message). The innermost cause
/// is what a person can act on: `error sending request` says little, `Connection refused`
/// does.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod chain_tests {
    use std::io;

    #[derive(Debug, thiserror::Error)]
    #[error("sending the request")]
    struct Outer(#[source] io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("sending the request: {0}")]
    struct Repeats(#[source] io::Error);

    #[test]
    fn the_innermost_cause_is_said_once() {
        let refused = || io::Error::new(io::ErrorKind::ConnectionRefused, "Connection refused");
        assert_eq!(
            super::chain(&Outer(refused())),
            "sending the request: Connection refused"
        );
        assert_eq!(
            super::chain(&Repeats(refused())),
            "sending the request: Connection refused"
        );
    }
}

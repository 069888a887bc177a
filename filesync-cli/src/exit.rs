//! Exit codes: part of the interface (scripts and cron rely on them), documented in the
//! README. Each failure a user can act on has its own.

use filesync_core::messages::ErrorCode;
use filesync_core::Error;

/// Success. For `sync --once`: the server holds the whole tree durably.
pub(crate) const OK: i32 = 0;
/// A local error: bad folder, unreadable files list, cannot bind, and the unexpected.
pub(crate) const LOCAL: i32 = 1;
/// A bad command line (clap uses it too).
pub(crate) const USAGE: i32 = 2;
/// No server answered discovery within --discovery-timeout.
pub(crate) const NO_SERVER: i32 = 3;
/// The connection failed, was lost, timed out, or the server broke the protocol.
pub(crate) const CONNECTION: i32 = 4;
/// The server refused the client (bad id, no common version).
pub(crate) const REFUSED: i32 = 5;
/// The sync completed but some files could not be read or stored; they are retried next
/// time.
pub(crate) const PARTIAL: i32 = 6;
/// Refused to empty an archive: the folder is empty or missing while the server holds
/// files (see --allow-empty).
pub(crate) const WOULD_EMPTY: i32 = 7;
/// The sync completed but a deletion cap (`--max-delete`, the server's
/// `--max-delete-percent`) held deletions back (rsync uses 25 for the same).
pub(crate) const DELETE_LIMIT: i32 = 8;
/// Authentication failed: the server refused the client's secret (wrong, missing, or for
/// another id), the server requires one the client does not have, the server could not
/// prove it knows the client's secret, or it presented a key other than the one pinned.
pub(crate) const AUTH: i32 = 9;

/// The exit code for a failed session.
pub(crate) fn for_error(e: &Error) -> i32 {
    match e {
        Error::Remote { code, .. } | Error::Refused { code, .. } => match *code {
            ErrorCode::UNAUTHORIZED => AUTH,
            ErrorCode::BAD_CLIENT_ID | ErrorCode::VERSION => REFUSED,
            ErrorCode::WOULD_EMPTY => WOULD_EMPTY,
            _ => CONNECTION,
        },
        Error::Protocol(filesync_core::error::ProtocolError::Version(_)) => REFUSED,
        Error::Listing(_) => LOCAL,
        _ => CONNECTION,
    }
}

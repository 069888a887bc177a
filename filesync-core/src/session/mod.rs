//! Typestate sessions: each side of a native session as a struct generic over its state.
//!
//! Pure: transitions take a decoded message (and, where time matters, `now`) and return the
//! next state plus the messages to send; they never touch a socket (the drive loops in
//! [`crate::net`] do). Each transition consumes `self`, so a state cannot be used twice, and
//! each state has its own `impl` block, so a method called in the wrong state does not
//! compile:
//!
//! ```text
//! client: Discovered --on_greeting--> Connected --READY--> Ready --start--> Syncing
//!         --finish--> Finishing --NEXT_SYNC--> Done
//! server: Accepted --greet--> Greeted --on_hello--> Welcomed --ready--> Listing
//!         --MANIFEST_END--> Receiving --TRANSFER_END--> Received --next_sync--> Done
//! ```
//!
//! While `Syncing` (client) and `Listing` (server), the manifest and the files flow at
//! once: the client sends a `MANIFEST` batch whenever fewer than
//! [`MANIFEST_WINDOW`](crate::messages::MANIFEST_WINDOW) batches are open, the server
//! answers each with `TASKS`, and the files asked for follow while later batches are still
//! being listed. Neither side ever holds the whole listing.
//!
//! A peer that sends the wrong message for the state gets
//! [`ProtocolError::Unexpected`], never a panic.

pub mod client;
pub mod seed;
pub mod server;

pub use client::Client;
pub use server::Server;

use crate::error::{Error, ProtocolError};
use crate::messages::ErrorMsg;

mod sealed {
    pub trait Sealed {}
}

/// A state of the client's session. Sealed: the states are those of [`client`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a client session state",
    label = "client sessions move through Discovered, Connected, Ready, Syncing, Finishing, Done"
)]
pub trait ClientState: sealed::Sealed {}

/// A state of the server's session. Sealed: the states are those of [`server`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a server session state",
    label = "server sessions move through Accepted, Greeted, Welcomed, Listing, Receiving, Received, Done"
)]
pub trait ServerState: sealed::Sealed {}

/// The error for a message the current state does not accept.
pub(crate) fn unexpected(expected: &'static str, got: &'static str) -> Error {
    Error::Protocol(ProtocolError::Unexpected { expected, got })
}

/// The error for an `ERROR` message from the peer.
pub(crate) fn remote(e: ErrorMsg) -> Error {
    Error::Remote {
        code: e.code,
        message: e.message,
    }
}

/// Cuts a list into batches whose estimated encoded size stays well under the frame limit,
/// whatever the path lengths.
pub(crate) fn batches<T>(
    items: impl IntoIterator<Item = T>,
    weight: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    /// Target batch size: a quarter of the frame limit leaves room for JSON's overhead.
    const BUDGET: usize = crate::codec::MAX_FRAME_LEN / 4;
    const MAX_ITEMS: usize = crate::messages::MANIFEST_BATCH_MAX;
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut used = 0;
    for item in items {
        let w = weight(&item);
        if !cur.is_empty() && (used + w > BUDGET || cur.len() == MAX_ITEMS) {
            out.push(std::mem::take(&mut cur));
            used = 0;
        }
        used += w;
        cur.push(item);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Upper bound of a path's encoded size: JSON may escape every byte of a path as a
/// six-byte `\u00XX` (or, for a name that is not UTF-8, two hex digits), plus the fixed
/// fields and their names.
pub(crate) fn path_weight(p: &crate::paths::RelPath) -> usize {
    p.as_bytes().len() * 6 + 96
}

/// Upper bound of a manifest entry's encoded size: its path's, and its symlink target's
/// by the same measure.
pub(crate) fn entry_weight(e: &crate::messages::Entry) -> usize {
    path_weight(&e.path) + e.target.as_ref().map_or(0, |t| t.as_bytes().len() * 6 + 16)
}

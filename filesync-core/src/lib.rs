//! # filesync-core
//!
//! The filesync protocol as a library: one-way sync of a client's folder onto a server.
//!
//! Most of this crate is *pure*: it performs no networking, no filesystem access and never
//! reads the clock (time is always an argument), so every rule of the protocol can be
//! tested with byte literals and in-memory streams. Those modules are:
//!
//! - [`paths`]: [`paths::RelPath`] (names of any bytes), [`paths::LinkTarget`] and
//!   [`paths::ClientId`], parsed once, safe by construction.
//! - [`time`]: nanosecond mtimes and the original dialect's naive local timestamps.
//! - [`messages`]: the serde types of both dialects, JSON and postcard from the same types.
//! - [`codec`]: tokio-util decoders and encoders with size limits.
//! - [`planner`]: client manifest + server index → files to send and entries to delete.
//! - [`session`]: the typestate session machines of both sides.
//! - [`discovery`]: DISCOVER/OFFER datagrams and the retry schedule, as data.
//! - [`schedule`]: when a client comes back (`NEXT_SYNC`), spread to avoid a herd.
//! - [`auth`]: the auth file, shared secrets and the HMAC proofs of an authenticated
//!   session.
//! - [`delta`]: block signatures, the rolling-checksum matcher and reconstruction
//!   (rsync's algorithm), for sending only the changed blocks of a large file.
//!
//! The modules that touch the OS are few and named for it:
//!
//! - [`pins`]: the client's known servers (server keys pinned on first use).
//! - [`net`]: sockets (multicast discovery, TCP) and the drive loops of both sides.
//! - [`store`]: the server's filesystem writes (temp file, durable rename, prune).
//! - [`walk`]: the client's tree walk and file reads.
//! - [`exclude`]: which entries a walk leaves out (`--exclude`, `.filesyncignore` files).
//! - [`sparse`]: a file's data ranges (`SEEK_DATA`/`SEEK_HOLE`), so holes are not sent.
//! - [`precision`]: the mtime step a filesystem keeps, probed once at server start.
//! - [`versions`]: what syncs replaced or deleted, kept under `.filesync/versions`.
//! - [`restore`]: a client's folder as it was at a time, written out of the archive.
//! - [`lease`]: leases on client ids in etcd, so that several servers sharing one
//!   archive run at most one session per client at a time.
//!
//! The specification is `spec/PROTOCOL.md` in the repository.

pub mod archive;
pub mod auth;
pub mod codec;
pub mod delta;
pub mod discovery;
pub mod error;
pub mod exclude;
pub mod lease;
pub mod messages;
pub mod net;
pub mod objstore;
pub mod paths;
pub mod pins;
pub mod planner;
pub mod precision;
mod records;
pub mod restore;
pub mod schedule;
pub mod session;
pub mod sparse;
pub mod store;
pub mod time;
pub mod versions;
pub mod walk;
mod wire_enum;

pub use error::Error;

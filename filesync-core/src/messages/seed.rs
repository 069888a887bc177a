//! The original FileSync's messages, with exactly its JSON shapes
//! (`../shared/seed-protocol.md`, `spec/PROTOCOL.md` §"Original dialect").
//!
//! The greeting [`ServerStatus`] is shared by both dialects: a filesync server adds fields
//! that the original's clients ignore, and which tell a native client what the server
//! speaks. Pure data, no I/O.

use serde::{Deserialize, Serialize};

use super::Encoding;
use crate::paths::{ClientId, RelPath};
use crate::time::SeedTime;
use crate::wire_enum::wire_enum;

/// `DISCOVER`: a client looks for servers on the multicast group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Discover {}

/// `OFFER`: a server answers a `DISCOVER` with its TCP port; the client takes the
/// datagram's source address as the server's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The server's TCP port.
    pub port: u16,
}

wire_enum! {
    /// A discovery datagram (UDP), in either direction.
    pub enum Datagram {
        /// See [`Discover`].
        Discover(Discover) = "DISCOVER",
        /// See [`Offer`].
        Offer(Offer) = "OFFER",
    }
}

/// The server's answer to a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// The client's turn: it may start.
    #[serde(rename = "READY")]
    Ready,
    /// Another client is being served; this one is queued.
    #[serde(rename = "BUSY")]
    Busy,
}

/// What a filesync server adds to its greeting. The original's clients ignore it; a native
/// client reads it to know that it may answer with the native preamble.
///
/// Serialised by hand so that `auth` is omitted from JSON when false: the greeting of a
/// server without authentication stays byte for byte what it was before `auth` existed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NativeOffer {
    /// Native protocol versions the server accepts.
    pub versions: Vec<u16>,
    /// Encodings the server accepts, preferred first. Names this version does not know
    /// are skipped when reading, so a later server may offer more.
    #[serde(deserialize_with = "known_encodings")]
    pub encodings: Vec<Encoding>,
    /// The server lets in only clients that authenticate (`serve --auth-file`): a client
    /// must open TLS instead of sending the preamble in the clear (spec §16). Only a hint,
    /// since the greeting itself is not protected: a client that has a secret always
    /// authenticates, and a server that requires it refuses any session that does not.
    #[serde(default)]
    pub auth: bool,
}

impl Serialize for NativeOffer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let all = !s.is_human_readable() || self.auth;
        let mut st = s.serialize_struct("NativeOffer", if all { 3 } else { 2 })?;
        st.serialize_field("versions", &self.versions)?;
        st.serialize_field("encodings", &self.encodings)?;
        if all {
            st.serialize_field("auth", &self.auth)?;
        }
        st.end()
    }
}

/// Reads an encoding list, skipping unknown names in JSON (the greeting is always JSON,
/// and must stay readable by older clients when a server learns a new encoding).
fn known_encodings<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Encoding>, D::Error> {
    if d.is_human_readable() {
        let names = Vec::<String>::deserialize(d)?;
        Ok(names
            .iter()
            .filter_map(|n| match n.as_str() {
                "postcard" => Some(Encoding::Postcard),
                "json" => Some(Encoding::Json),
                _ => None,
            })
            .collect())
    } else {
        Vec::<Encoding>::deserialize(d)
    }
}

/// `SERVER_STATUS_MESSAGE` (documented as `SERVER_STATUS`): the greeting, the first bytes
/// of every TCP session, in JSON whatever the dialect.
///
/// Serialised by hand so that absent optional fields are *omitted* in JSON (the original's
/// exact shape) but present in postcard, which has no field names and so cannot skip any.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ServerStatus {
    /// READY or BUSY.
    pub status: Status,
    /// With BUSY: how many sessions are ahead (filesync extension).
    #[serde(default)]
    pub queue_position: Option<u32>,
    /// Present when the server speaks the native protocol (filesync extension).
    #[serde(default)]
    pub filesync: Option<NativeOffer>,
}

impl Serialize for ServerStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let readable = s.is_human_readable();
        let n = if readable {
            1 + usize::from(self.queue_position.is_some()) + usize::from(self.filesync.is_some())
        } else {
            3
        };
        let mut st = s.serialize_struct("ServerStatus", n)?;
        st.serialize_field("status", &self.status)?;
        if !readable || self.queue_position.is_some() {
            st.serialize_field("queue_position", &self.queue_position)?;
        }
        if !readable || self.filesync.is_some() {
            st.serialize_field("filesync", &self.filesync)?;
        }
        st.end()
    }
}

/// One file of a `CLIENT_FILES_INFO` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// The last component of `path`.
    pub name: String,
    /// Relative, `/`-separated.
    pub path: RelPath,
    /// Naive local modification time.
    pub last_mod: SeedTime,
}

/// `CLIENT_FILES_INFO`: the client's whole listing, in one JSON value of any size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientFilesInfo {
    /// The client's id, or `null`.
    pub client_id: Option<ClientId>,
    /// Every regular file of the client's tree.
    pub files: Vec<FileInfo>,
}

/// `TASKS`: the files the server wants, followed on the wire by `\n`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tasks {
    /// Relative paths from the client's list.
    pub files_to_send: Vec<RelPath>,
}

/// `FILE_HEADER`: followed on the wire by `\n` and exactly `size` raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHeader {
    /// The last component of `path`.
    pub name: String,
    /// Which file.
    pub path: RelPath,
    /// Content length in bytes.
    pub size: u64,
    /// Naive local modification time, given to the stored file.
    pub last_mod: SeedTime,
}

/// `NEXT_SYNC`: when to come back, as naive local time; the server then closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextSync {
    /// Naive local time of the next sync.
    pub time: SeedTime,
}

wire_enum! {
    /// A message from server to client in the original dialect.
    pub enum ServerMsg {
        /// See [`ServerStatus`]. The reference code sends `SERVER_STATUS_MESSAGE`; its
        /// documentation says `SERVER_STATUS`. Both are read.
        Status(ServerStatus) = "SERVER_STATUS_MESSAGE" | "SERVER_STATUS",
        /// See [`Tasks`].
        Tasks(Tasks) = "TASKS",
        /// See [`NextSync`].
        NextSync(NextSync) = "NEXT_SYNC",
    }
}

wire_enum! {
    /// A message from client to server in the original dialect.
    pub enum ClientMsg {
        /// See [`ClientFilesInfo`].
        FilesInfo(ClientFilesInfo) = "CLIENT_FILES_INFO",
        /// See [`FileHeader`].
        FileHeader(FileHeader) = "FILE_HEADER",
    }
}

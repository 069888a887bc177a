//! Framing: how messages and file content become bytes and back.
//!
//! Pure: `tokio_util::codec` `Decoder`/`Encoder` impls over `BytesMut`, no sockets. Every
//! decoder checks a size limit before it buffers or allocates, so a hostile peer can make
//! the reader hold at most one frame (or one JSON value) of bounded size.
//!
//! - [`native`]: the native protocol's length-delimited frames, messages in postcard or
//!   JSON, file content in raw `DATA` frames.
//! - [`preamble`]: the six bytes with which a native client answers the greeting.
//! - [`json_stream`]: JSON values read off a byte stream with no delimiter, as the original
//!   dialect needs, and the original's `FILE_HEADER` + raw bytes.

pub mod json_stream;
pub mod native;
pub mod preamble;

use bytes::Bytes;

/// Largest frame payload (kind byte included) either side sends or accepts: 1 MiB.
/// Bounds the memory one frame can make the reader buffer.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Size of the `DATA` chunks file content is cut into. Large enough that per-frame costs
/// vanish next to the copy, small enough that many sessions can buffer one each.
pub const DATA_CHUNK: usize = 256 << 10;

/// Largest JSON value accepted from a peer of the original dialect: its
/// `CLIENT_FILES_INFO` is one value holding the whole listing, so this bounds the listing
/// (about 300,000 files at typical path lengths).
pub const MAX_JSON_VALUE: usize = 64 << 20;

/// One decoded unit of a stream: a message, or a chunk of the current file's content.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame<M> {
    /// A protocol message.
    Msg(M),
    /// Raw file content belonging to the last `FILE_HEADER`.
    Data(Bytes),
}

/// A stream that cannot be decoded. The session ends: after a framing error the reader
/// no longer knows where the next frame starts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// A frame or JSON value announced or reached a size over the limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced or reached size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame with no kind byte, or a kind this version does not know.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// An empty frame.
    #[error("empty frame")]
    Empty,
    /// The bytes of a message do not decode (or trailing bytes follow it).
    #[error("undecodable {encoding} message: {detail}")]
    Message {
        /// `postcard` or `json`.
        encoding: &'static str,
        /// The decoder's complaint.
        detail: String,
    },
    /// The first bytes are neither a native preamble nor the original dialect's JSON.
    #[error("bad preamble: {0}")]
    Preamble(String),
    /// The stream ended inside a frame.
    #[error("connection closed in the middle of a frame ({0} bytes left over)")]
    Truncated(usize),
    /// The transport failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

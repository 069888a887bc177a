//! The native protocol's frames: a 4-byte big-endian length, then a kind byte, then the
//! payload. Kind 0 carries one message in the session's encoding; kind 1 carries raw file
//! content, so content is never run through a serializer in either encoding.
//!
//! Lengths are checked against [`MAX_FRAME_LEN`] before anything is buffered, using
//! tokio-util's `LengthDelimitedCodec` for the decoding half.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use tokio_util::codec::LengthDelimitedCodec;
use tokio_util::codec::{length_delimited::LengthDelimitedCodecError, Decoder, Encoder};

use super::{CodecError, Frame, MAX_FRAME_LEN};
use crate::messages::{ClientMsg, Encoding, ServerMsg};

/// Frame kind of a message.
pub const KIND_MSG: u8 = 0;
/// Frame kind of raw file content.
pub const KIND_DATA: u8 = 1;

/// Decodes frames of `Rx` messages and encodes frames of `Tx` messages.
#[derive(Debug)]
pub struct NativeCodec<Rx, Tx> {
    inner: LengthDelimitedCodec,
    encoding: Encoding,
    max: usize,
    /// The inner codec has consumed a length header and waits for the payload: an end of
    /// stream now is a truncated frame even though no bytes are buffered.
    mid_frame: bool,
    _types: PhantomData<fn(Tx) -> Rx>,
}

/// The server's side of a native session.
pub type ServerCodec = NativeCodec<ClientMsg, ServerMsg>;
/// The client's side of a native session.
pub type ClientCodec = NativeCodec<ServerMsg, ClientMsg>;

impl<Rx, Tx> NativeCodec<Rx, Tx> {
    /// A codec for `encoding` with the default frame limit.
    pub fn new(encoding: Encoding) -> Self {
        Self::with_max(encoding, MAX_FRAME_LEN)
    }

    /// A codec with a custom frame limit (tests use small ones).
    pub fn with_max(encoding: Encoding, max: usize) -> Self {
        Self {
            inner: LengthDelimitedCodec::builder()
                .length_field_length(4)
                .max_frame_length(max)
                .new_codec(),
            encoding,
            max,
            mid_frame: false,
            _types: PhantomData,
        }
    }

    /// The encoding messages use.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }
}

/// Decodes one message from a frame payload in `encoding`, refusing trailing bytes.
pub fn decode_message<M: DeserializeOwned>(
    encoding: Encoding,
    payload: &[u8],
) -> Result<M, CodecError> {
    match encoding {
        Encoding::Postcard => {
            let (m, rest) =
                postcard::take_from_bytes::<M>(payload).map_err(|e| CodecError::Message {
                    encoding: "postcard",
                    detail: e.to_string(),
                })?;
            if !rest.is_empty() {
                return Err(CodecError::Message {
                    encoding: "postcard",
                    detail: format!("{} trailing bytes", rest.len()),
                });
            }
            Ok(m)
        }
        Encoding::Json => serde_json::from_slice(payload).map_err(|e| CodecError::Message {
            encoding: "json",
            detail: e.to_string(),
        }),
    }
}

/// Appends the encoding of `msg` to `dst`.
pub fn encode_message<M: Serialize>(
    encoding: Encoding,
    msg: &M,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    let res = match encoding {
        Encoding::Postcard => postcard::to_io(msg, dst.writer())
            .map(drop)
            .map_err(|e| e.to_string()),
        Encoding::Json => serde_json::to_writer(dst.writer(), msg).map_err(|e| e.to_string()),
    };
    res.map_err(|detail| CodecError::Message {
        encoding: encoding.name(),
        detail,
    })
}

/// The length in bytes of `msg` encoded in `encoding`, without building it: for a sender
/// that must know whether a message fits in a frame before committing to it.
pub fn encoded_len<M: Serialize>(encoding: Encoding, msg: &M) -> Result<usize, CodecError> {
    /// A writer that only counts.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    let res = match encoding {
        Encoding::Postcard => postcard::to_io(msg, &mut n)
            .map(drop)
            .map_err(|e| e.to_string()),
        Encoding::Json => serde_json::to_writer(&mut n, msg).map_err(|e| e.to_string()),
    };
    res.map_err(|detail| CodecError::Message {
        encoding: encoding.name(),
        detail,
    })?;
    Ok(n.0)
}

impl<Rx: DeserializeOwned, Tx> Decoder for NativeCodec<Rx, Tx> {
    type Item = Frame<Rx>;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame<Rx>>, CodecError> {
        let had_head = src.len() >= 4;
        let frame = match self.inner.decode(src) {
            Ok(Some(f)) => f,
            Ok(None) => {
                self.mid_frame |= had_head;
                return Ok(None);
            }
            Err(e) => return Err(self.map_err(e, src)),
        };
        self.mid_frame = false;
        decode_frame(self.encoding, frame).map(Some)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame<Rx>>, CodecError> {
        match self.decode(src)? {
            Some(f) => Ok(Some(f)),
            None if src.is_empty() && !self.mid_frame => Ok(None),
            None => Err(CodecError::Truncated(src.len())),
        }
    }
}

impl<Rx, Tx> NativeCodec<Rx, Tx> {
    fn map_err(&self, e: std::io::Error, src: &BytesMut) -> CodecError {
        if e.get_ref()
            .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>())
        {
            let len = src
                .get(..4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .unwrap_or(0);
            CodecError::TooLarge { len, max: self.max }
        } else {
            CodecError::Io(e)
        }
    }
}

fn decode_frame<M: DeserializeOwned>(
    encoding: Encoding,
    mut frame: BytesMut,
) -> Result<Frame<M>, CodecError> {
    if frame.is_empty() {
        return Err(CodecError::Empty);
    }
    let kind = frame.get_u8();
    match kind {
        KIND_MSG => decode_message(encoding, &frame).map(Frame::Msg),
        KIND_DATA => Ok(Frame::Data(frame.freeze())),
        k => Err(CodecError::UnknownKind(k)),
    }
}

impl<Rx, Tx: Serialize> Encoder<Frame<Tx>> for NativeCodec<Rx, Tx> {
    type Error = CodecError;

    fn encode(&mut self, item: Frame<Tx>, dst: &mut BytesMut) -> Result<(), CodecError> {
        match item {
            Frame::Msg(m) => self.encode_msg(&m, dst),
            Frame::Data(b) => self.encode_data(&b, dst),
        }
    }
}

impl<Rx, Tx: Serialize> NativeCodec<Rx, Tx> {
    /// Appends a message frame without taking the message by value.
    pub fn encode_msg(&mut self, msg: &Tx, dst: &mut BytesMut) -> Result<(), CodecError> {
        let start = dst.len();
        dst.put_u32(0);
        dst.put_u8(KIND_MSG);
        if let Err(e) = encode_message(self.encoding, msg, dst) {
            dst.truncate(start);
            return Err(e);
        }
        self.finish_frame(start, dst)
    }
}

impl<Rx, Tx> NativeCodec<Rx, Tx> {
    /// Appends a `DATA` frame holding `chunk`.
    pub fn encode_data(&mut self, chunk: &[u8], dst: &mut BytesMut) -> Result<(), CodecError> {
        let start = dst.len();
        dst.reserve(5 + chunk.len());
        dst.put_u32(0);
        dst.put_u8(KIND_DATA);
        dst.extend_from_slice(chunk);
        self.finish_frame(start, dst)
    }

    /// Writes the length of the frame that starts at `start`, or removes the frame if it
    /// is over the limit: we refuse to send what the peer must refuse to read.
    fn finish_frame(&self, start: usize, dst: &mut BytesMut) -> Result<(), CodecError> {
        let len = dst.len() - start - 4;
        if len > self.max {
            dst.truncate(start);
            return Err(CodecError::TooLarge { len, max: self.max });
        }
        let len32 = u32::try_from(len).map_err(|_| CodecError::TooLarge { len, max: self.max })?;
        dst[start..start + 4].copy_from_slice(&len32.to_be_bytes());
        Ok(())
    }
}

/// Convenience for tests and tools: a frame's complete bytes.
pub fn frame_bytes<M: Serialize>(encoding: Encoding, msg: &M) -> Result<Bytes, CodecError> {
    let mut dst = BytesMut::new();
    let mut c: NativeCodec<(), M> = NativeCodec::new(encoding);
    c.encode_msg(msg, &mut dst)?;
    Ok(dst.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{Ready, ServerMsg};

    #[test]
    fn message_and_data_frames_round_trip() {
        for enc in [Encoding::Postcard, Encoding::Json] {
            let mut tx: ServerCodec = NativeCodec::new(enc);
            let mut rx: ClientCodec = NativeCodec::new(enc);
            let mut buf = BytesMut::new();
            tx.encode_msg(&ServerMsg::Ready(Ready {}), &mut buf)
                .unwrap();
            tx.encode_data(b"hello", &mut buf).unwrap();
            assert_eq!(
                rx.decode(&mut buf).unwrap(),
                Some(Frame::Msg(ServerMsg::Ready(Ready {})))
            );
            assert_eq!(
                rx.decode(&mut buf).unwrap(),
                Some(Frame::Data(Bytes::from_static(b"hello")))
            );
            assert_eq!(rx.decode(&mut buf).unwrap(), None);
        }
    }

    #[test]
    fn oversized_length_is_refused_before_buffering() {
        let mut rx: ClientCodec = NativeCodec::with_max(Encoding::Postcard, 16);
        let mut buf = BytesMut::from(&[0u8, 0, 1, 0, 0][..]);
        match rx.decode(&mut buf) {
            Err(CodecError::TooLarge { len: 256, max: 16 }) => {}
            other => panic!("{other:?}"),
        }
        let mut tx: ClientCodec = NativeCodec::with_max(Encoding::Postcard, 16);
        let mut out = BytesMut::new();
        assert!(tx.encode_data(&[0; 32], &mut out).is_err());
        assert!(out.is_empty(), "a refused frame leaves nothing behind");
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut rx: ClientCodec = NativeCodec::new(Encoding::Postcard);
        let mut empty = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert!(matches!(rx.decode(&mut empty), Err(CodecError::Empty)));
        let mut kind = BytesMut::from(&[0u8, 0, 0, 1, 9][..]);
        assert!(matches!(
            rx.decode(&mut kind),
            Err(CodecError::UnknownKind(9))
        ));
        let mut trailing = BytesMut::from(&[0u8, 0, 0, 3, 0, 2, 0][..]);
        assert!(matches!(
            rx.decode(&mut trailing),
            Err(CodecError::Message { .. })
        ));
        let mut cut = BytesMut::from(&[0u8, 0, 0, 9, 0][..]);
        assert!(matches!(
            rx.decode_eof(&mut cut),
            Err(CodecError::Truncated(_))
        ));
    }
}

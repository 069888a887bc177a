//! JSON values read off a byte stream, for the original dialect.
//!
//! The original sends `SERVER_STATUS_MESSAGE`, `CLIENT_FILES_INFO` and `NEXT_SYNC` with no
//! delimiter and reads each with a single `recv`, which breaks as soon as TCP splits a
//! message. Here a small scanner finds where a top-level JSON object ends (tracking depth,
//! strings and escapes), resuming where it stopped when more bytes arrive, so a value of any
//! size is scanned once and parsed once, however the stream was cut.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use tokio_util::codec::{Decoder, Encoder};

use super::{CodecError, Frame, DATA_CHUNK, MAX_JSON_VALUE};
use crate::messages::seed;

/// Finds the end of one top-level JSON object in a growing buffer.
#[derive(Debug, Default, Clone)]
pub struct ObjectScanner {
    /// Bytes of the buffer already scanned.
    pos: usize,
    depth: u32,
    started: bool,
    in_string: bool,
    escaped: bool,
}

impl ObjectScanner {
    /// Scans `buf` from where the last call stopped. Returns the length of the first
    /// complete object (leading whitespace included), `None` if more bytes are needed.
    pub fn scan(&mut self, buf: &[u8], max: usize) -> Result<Option<usize>, CodecError> {
        while self.pos < buf.len() {
            let b = buf[self.pos];
            self.pos += 1;
            if !self.started {
                match b {
                    b' ' | b'\t' | b'\r' | b'\n' => continue,
                    b'{' => {
                        self.started = true;
                        self.depth = 1;
                        continue;
                    }
                    _ => {
                        return Err(CodecError::Message {
                            encoding: "json",
                            detail: format!("expected a JSON object, found byte {b:#04x}"),
                        })
                    }
                }
            }
            if self.pos > max {
                return Err(CodecError::TooLarge { len: self.pos, max });
            }
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        let end = self.pos;
                        *self = Self::default();
                        return Ok(Some(end));
                    }
                }
                _ => {}
            }
        }
        if self.pos > max {
            return Err(CodecError::TooLarge { len: self.pos, max });
        }
        Ok(None)
    }
}

/// Decodes a stream of JSON objects of type `T` (each optionally followed by whitespace)
/// and encodes `T` as compact JSON. Used for the greeting and for reading an original
/// server.
#[derive(Debug)]
pub struct JsonCodec<T> {
    scanner: ObjectScanner,
    max: usize,
    _t: PhantomData<fn() -> T>,
}

impl<T> Default for JsonCodec<T> {
    fn default() -> Self {
        Self::with_max(MAX_JSON_VALUE)
    }
}

impl<T> JsonCodec<T> {
    /// A codec refusing values over `max` bytes.
    pub fn with_max(max: usize) -> Self {
        Self {
            scanner: ObjectScanner::default(),
            max,
            _t: PhantomData,
        }
    }
}

/// Parses exactly one complete JSON value.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    serde_json::from_slice(bytes).map_err(|e| CodecError::Message {
        encoding: "json",
        detail: e.to_string(),
    })
}

impl<T: DeserializeOwned> Decoder for JsonCodec<T> {
    type Item = T;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<T>, CodecError> {
        let Some(end) = self.scanner.scan(src, self.max)? else {
            return Ok(None);
        };
        let value = src.split_to(end);
        parse(&value).map(Some)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<T>, CodecError> {
        match self.decode(src)? {
            Some(v) => Ok(Some(v)),
            None if src.iter().all(u8::is_ascii_whitespace) => Ok(None),
            None => Err(CodecError::Truncated(src.len())),
        }
    }
}

impl<T: Serialize> Encoder<&T> for JsonCodec<T> {
    type Error = CodecError;

    fn encode(&mut self, item: &T, dst: &mut BytesMut) -> Result<(), CodecError> {
        serde_json::to_writer(dst.writer(), item).map_err(|e| CodecError::Message {
            encoding: "json",
            detail: e.to_string(),
        })
    }
}

/// Appends an original-dialect message as its peers expect it: compact JSON, with a `\n`
/// after exactly `TASKS` and `FILE_HEADER`.
pub fn encode_seed<M: Serialize>(msg: &M, newline: bool, dst: &mut BytesMut) {
    // Serialising these plain data types to memory cannot fail.
    serde_json::to_writer(dst.writer(), msg).expect("seed messages serialise");
    if newline {
        dst.put_u8(b'\n');
    }
}

/// Where the server-side reader of an original client stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeedState {
    /// Expecting a JSON message.
    Message,
    /// A `FILE_HEADER` was read; expecting its `\n`, then `size` bytes.
    AfterHeader(u64),
    /// Inside a file body, this many bytes left.
    Body(u64),
}

/// Reads what an original client sends: `CLIENT_FILES_INFO` (no delimiter, any size), then
/// `FILE_HEADER` + `\n` + exactly `size` raw bytes, as [`Frame::Data`] chunks of at most
/// [`DATA_CHUNK`] bytes, so a file body is never buffered whole.
#[derive(Debug)]
pub struct SeedServerCodec {
    json: JsonCodec<seed::ClientMsg>,
    state: SeedState,
}

impl Default for SeedServerCodec {
    fn default() -> Self {
        Self::with_max(MAX_JSON_VALUE)
    }
}

impl SeedServerCodec {
    /// A reader refusing JSON values over `max` bytes.
    pub fn with_max(max: usize) -> Self {
        Self {
            json: JsonCodec::with_max(max),
            state: SeedState::Message,
        }
    }
}

impl Decoder for SeedServerCodec {
    type Item = Frame<seed::ClientMsg>;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, CodecError> {
        loop {
            match self.state {
                SeedState::Message => {
                    let Some(msg) = self.json.decode(src)? else {
                        return Ok(None);
                    };
                    if let seed::ClientMsg::FileHeader(h) = &msg {
                        self.state = SeedState::AfterHeader(h.size);
                    }
                    return Ok(Some(Frame::Msg(msg)));
                }
                SeedState::AfterHeader(size) => {
                    let Some(&first) = src.first() else {
                        return Ok(None);
                    };
                    // The original always sends the newline; tolerate its absence
                    // rather than eat the first content byte.
                    if first == b'\n' {
                        src.advance(1);
                    }
                    self.state = if size == 0 {
                        SeedState::Message
                    } else {
                        SeedState::Body(size)
                    };
                }
                SeedState::Body(left) => {
                    if src.is_empty() {
                        return Ok(None);
                    }
                    let n = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(src.len())
                        .min(DATA_CHUNK);
                    let chunk = src.split_to(n).freeze();
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        SeedState::Message
                    } else {
                        SeedState::Body(left)
                    };
                    return Ok(Some(Frame::Data(chunk)));
                }
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, CodecError> {
        match self.decode(src)? {
            Some(f) => Ok(Some(f)),
            None => match self.state {
                SeedState::Message if src.iter().all(u8::is_ascii_whitespace) => Ok(None),
                SeedState::AfterHeader(0) => Ok(None),
                _ => Err(CodecError::Truncated(src.len())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_handles_strings_escapes_and_nesting() {
        let text = br#" {"a":"}\"{","b":[{"c":1}],"d":"\\"} {"x":1}"#;
        let mut s = ObjectScanner::default();
        let end = s.scan(text, 1 << 20).unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&text[..end]).unwrap();
        assert_eq!(v["a"], "}\"{");
        assert_eq!(v["d"], "\\");
        let rest = &text[end..];
        let end2 = s.scan(rest, 1 << 20).unwrap().unwrap();
        assert_eq!(&rest[..end2], br#" {"x":1}"#);
    }

    #[test]
    fn scanner_resumes_byte_by_byte() {
        let text = br#"{"type":"TASKS","files_to_send":["a/b","c"]}"#;
        let mut s = ObjectScanner::default();
        for i in 1..text.len() {
            assert_eq!(s.scan(&text[..i], 1 << 20).unwrap(), None, "at {i}");
        }
        assert_eq!(s.scan(text, 1 << 20).unwrap(), Some(text.len()));
    }

    #[test]
    fn scanner_limits_and_refuses_non_objects() {
        let mut s = ObjectScanner::default();
        assert!(matches!(
            s.scan(br#"{"a":"xxxxxxxxxxxxxxxxxxxx"#, 8),
            Err(CodecError::TooLarge { .. })
        ));
        let mut s = ObjectScanner::default();
        assert!(s.scan(b"[1]", 8).is_err());
    }

    #[test]
    fn seed_server_codec_splits_header_and_body() {
        let wire = b"{\"type\":\"FILE_HEADER\",\"name\":\"x\",\"path\":\"d/x\",\"size\":5,\"last_mod\":\"2025-05-06T14:23:00\"}\nhello{\"type\":\"FILE_HEADER\",\"name\":\"e\",\"path\":\"e\",\"size\":0,\"last_mod\":\"2025-05-06T14:23:00\"}\n";
        let mut all = Vec::new();
        // Feed one byte at a time: the worst TCP segmentation there is.
        let mut c = SeedServerCodec::default();
        let mut buf = BytesMut::new();
        for &b in wire.iter() {
            buf.put_u8(b);
            while let Some(f) = c.decode(&mut buf).unwrap() {
                all.push(f);
            }
        }
        assert_eq!(c.decode_eof(&mut buf).unwrap(), None);
        let data: Vec<u8> = all
            .iter()
            .filter_map(|f| match f {
                Frame::Data(d) => Some(d.to_vec()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(data, b"hello");
        let headers = all.iter().filter(|f| matches!(f, Frame::Msg(_))).count();
        assert_eq!(headers, 2);
    }

    #[test]
    fn seed_body_cut_short_is_truncated() {
        let wire = b"{\"type\":\"FILE_HEADER\",\"name\":\"x\",\"path\":\"x\",\"size\":5,\"last_mod\":\"2025-05-06T14:23:00\"}\nhel";
        let mut c = SeedServerCodec::default();
        let mut buf = BytesMut::from(&wire[..]);
        while c.decode(&mut buf).unwrap().is_some() {}
        assert!(matches!(
            c.decode_eof(&mut buf),
            Err(CodecError::Truncated(_))
        ));
    }
}

//! The native preamble: how a native client answers the greeting, and how the server tells
//! a native client from one of the original dialect by the first byte it receives.
//!
//! An original client's first byte is `{` (its `CLIENT_FILES_INFO`); a native client's
//! is `F`, the start of [`MAGIC`]. Pure.

use super::CodecError;
use crate::messages::Encoding;

/// The native preamble's first four bytes.
pub const MAGIC: [u8; 4] = *b"FSNC";
/// Version of the framing that follows the preamble.
pub const FRAMING_VERSION: u8 = 1;
/// Length of the preamble in bytes.
pub const LEN: usize = 6;

/// Which dialect a connection speaks, judged from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// The filesync native protocol.
    Native,
    /// The original FileSync's JSON protocol.
    Seed,
}

impl Dialect {
    /// Classifies the first byte a client sent after the greeting.
    pub fn sniff(first: u8) -> Result<Dialect, CodecError> {
        match first {
            b if b == MAGIC[0] => Ok(Dialect::Native),
            b'{' | b' ' | b'\t' | b'\r' | b'\n' => Ok(Dialect::Seed),
            b => Err(CodecError::Preamble(format!(
                "first byte {b:#04x} is neither the native magic nor JSON"
            ))),
        }
    }

    /// Lower-case name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Native => "native",
            Dialect::Seed => "seed",
        }
    }
}

/// `MAGIC`, framing version, encoding code.
pub fn encode(encoding: Encoding) -> [u8; LEN] {
    let [a, b, c, d] = MAGIC;
    [a, b, c, d, FRAMING_VERSION, encoding.code()]
}

/// Reads a preamble, returning the encoding the client chose.
pub fn decode(bytes: &[u8; LEN]) -> Result<Encoding, CodecError> {
    if bytes[..4] != MAGIC {
        return Err(CodecError::Preamble(format!("bad magic {:?}", &bytes[..4])));
    }
    if bytes[4] != FRAMING_VERSION {
        return Err(CodecError::Preamble(format!(
            "framing version {} (this side speaks {FRAMING_VERSION})",
            bytes[4]
        )));
    }
    Encoding::from_code(bytes[5])
        .ok_or_else(|| CodecError::Preamble(format!("unknown encoding code {}", bytes[5])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        for e in [Encoding::Postcard, Encoding::Json] {
            assert_eq!(decode(&encode(e)).unwrap(), e);
        }
        assert!(decode(b"FSNC\x02\x00").is_err());
        assert!(decode(b"FSNC\x01\x07").is_err());
        assert!(decode(b"XSNC\x01\x00").is_err());
        assert_eq!(Dialect::sniff(b'F').unwrap(), Dialect::Native);
        assert_eq!(Dialect::sniff(b'{').unwrap(), Dialect::Seed);
        assert!(Dialect::sniff(0).is_err());
    }
}

//! Length-prefixed records, the format of the server's own logs on disk (the tail spool
//! in `store`, the version logs in `versions`): a little-endian `u32` length, then that
//! many bytes.

use std::io::{self, Read, Write};

/// Appends one record holding `bytes` (at most `u32::MAX` of them).
pub(crate) fn write(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(io::Error::other)?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(bytes)
}

/// Reads the next record: `Ok(None)` at the end of the input, an error of kind
/// `UnexpectedEof` for a record cut short (by a crash while it was written).
pub(crate) fn read(input: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match input.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
    input.read_exact(&mut buf)?;
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_end_and_cut() {
        let mut out = Vec::new();
        for r in [&b"one"[..], b"", b"three"] {
            write(&mut out, r).unwrap();
        }
        let mut input = &out[..];
        assert_eq!(read(&mut input).unwrap().unwrap(), b"one");
        assert_eq!(read(&mut input).unwrap().unwrap(), b"");
        assert_eq!(read(&mut input).unwrap().unwrap(), b"three");
        assert!(read(&mut input).unwrap().is_none());
        // The last record, "three", is 9 bytes; any shorter part of it is a cut record.
        let last = &out[out.len() - 9..];
        for cut in 1..last.len() {
            let e = read(&mut &last[..cut]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}");
        }
    }
}

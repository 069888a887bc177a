//! Reconstruction: the old file and the ops give the new file.

use std::io::{self, ErrorKind, Read, Seek, SeekFrom, Write};

use super::matcher::DeltaOp;
use super::signature::{invalid, BlockLayout};

/// What [`Applier::finish`] and [`apply`] report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Bytes written.
    pub len: u64,
    /// The BLAKE3 hash of the bytes written: equal to the sender's
    /// [`DeltaSummary::new_hash`](super::DeltaSummary::new_hash) when the new file was
    /// rebuilt exactly.
    pub hash: [u8; 32],
}

/// The size of the copy buffer, in bytes.
const COPY_CHUNK: usize = 256 * 1024;

/// Rebuilds the new file op by op, for ops that arrive one at a time (from the network).
///
/// `old` is the file the signature was computed from, with the same [`BlockLayout`];
/// `Copy` ops are read from it with a seek (only when not already at the right offset)
/// and reads of at most 256 KiB. Everything written to `out` is hashed.
#[derive(Debug)]
pub struct Applier<R, W> {
    old: R,
    layout: BlockLayout,
    out: W,
    hasher: blake3::Hasher,
    len: u64,
    /// Where `old` is positioned, if known.
    old_pos: Option<u64>,
    buf: Vec<u8>,
}

impl<R: Read + Seek, W: Write> Applier<R, W> {
    /// An applier writing to `out`; `InvalidData` if `layout` is not valid
    /// ([`BlockLayout::validate`]).
    pub fn new(old: R, layout: BlockLayout, out: W) -> io::Result<Self> {
        layout.validate()?;
        Ok(Applier {
            old,
            layout,
            out,
            hasher: blake3::Hasher::new(),
            len: 0,
            old_pos: None,
            buf: Vec::new(),
        })
    }

    /// Applies one op. Errors: `InvalidData` for a `Copy` of no block or past the last
    /// block; `UnexpectedEof` if the old file is shorter than its layout says; those of
    /// `old` and `out`. After an error the output is incomplete.
    pub fn op(&mut self, op: &DeltaOp) -> io::Result<()> {
        match op {
            DeltaOp::Copy { block, count } => self.copy(*block, *count),
            DeltaOp::Literal(bytes) => self.literal(bytes),
        }
    }

    /// Writes `bytes` (a literal) to the output.
    pub fn literal(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Copies `count` blocks of the old file from block `block` to the output.
    pub fn copy(&mut self, block: u32, count: u32) -> io::Result<()> {
        let (offset, mut left) = self.layout.range(block, count).ok_or_else(|| {
            invalid(format!(
                "copy of {count} blocks from block {block}, the old file has {}",
                self.layout.block_count()
            ))
        })?;
        if self.old_pos != Some(offset) {
            self.old.seek(SeekFrom::Start(offset))?;
            self.old_pos = Some(offset);
        }
        if self.buf.is_empty() {
            self.buf = vec![0u8; COPY_CHUNK];
        }
        while left > 0 {
            let n = left.min(COPY_CHUNK as u64) as usize;
            let chunk = &mut self.buf[..n];
            if let Err(e) = self.old.read_exact(chunk) {
                self.old_pos = None;
                return Err(if e.kind() == ErrorKind::UnexpectedEof {
                    io::Error::new(
                        ErrorKind::UnexpectedEof,
                        format!(
                            "the old file is shorter than the {} bytes it was signed with",
                            self.layout.file_len
                        ),
                    )
                } else {
                    e
                });
            }
            self.out.write_all(chunk)?;
            self.hasher.update(chunk);
            self.len += n as u64;
            self.old_pos = self.old_pos.map(|p| p + n as u64);
            left -= n as u64;
        }
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.len
    }

    /// Flushes the output and returns the length and hash of what was written, with the
    /// output itself.
    pub fn finish(mut self) -> io::Result<(Applied, W)> {
        self.out.flush()?;
        Ok((
            Applied {
                len: self.len,
                hash: *self.hasher.finalize().as_bytes(),
            },
            self.out,
        ))
    }
}

/// Applies all of `ops` to `old` (laid out as `layout`, from
/// [`Signature::layout`](super::Signature::layout)), writing the new file to `out`.
/// Errors: those of [`Applier::op`].
pub fn apply<R, W, I>(old: R, layout: BlockLayout, ops: I, out: W) -> io::Result<Applied>
where
    R: Read + Seek,
    W: Write,
    I: IntoIterator<Item = DeltaOp>,
{
    let mut applier = Applier::new(old, layout, out)?;
    for op in ops {
        applier.op(&op)?;
    }
    Ok(applier.finish()?.0)
}

//! Reconstruction: the old file and the ops give the new file.

use std::io::{self, ErrorKind, Read, Seek, SeekFrom, Write};

use super::matcher::DeltaOp;
use super::signature::{invalid, BlockLayout, BlockSig, Signature, Signer};

/// What [`Applier::finish`] and [`apply`] report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Bytes written.
    pub len: u64,
    /// The BLAKE3 hash of the bytes written: equal to the sender's
    /// [`DeltaSummary::new_hash`](super::DeltaSummary::new_hash) when the new file was
    /// rebuilt exactly. Of all of them only if [`Applier::unhashed`] was 0 at the end
    /// (always, unless [`Applier::hash_lazily`] was asked for).
    pub hash: [u8; 32],
}

/// The size of the copy buffer, in bytes.
const COPY_CHUNK: usize = 256 * 1024;

/// Rebuilds the new file op by op, for ops that arrive one at a time (from the network).
///
/// `old` is the file the signature was computed from, with the same [`BlockLayout`];
/// `Copy` ops are read from it with a seek (only when not already at the right offset)
/// and reads of at most 256 KiB. Everything written to `out` is hashed, unless
/// [`Applier::hash_lazily`] says otherwise.
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
    /// Signs the output as it is written, if asked ([`Applier::sign`]).
    signer: Option<Signer>,
    /// The old file's block checksums, reused for blocks copied to the same position.
    old_blocks: Vec<BlockSig>,
    /// Literal bytes are hashed only from the first `Copy` on ([`Applier::hash_lazily`]).
    lazy: bool,
    /// Whether a `Copy` was applied.
    copied: bool,
    /// The output's first bytes that were hashed.
    hashed: u64,
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
            signer: None,
            old_blocks: Vec::new(),
            lazy: false,
            copied: false,
            hashed: 0,
        })
    }

    /// Hashes literal bytes only once a `Copy` has come. A delta without any (one whose
    /// sender fell back to plain data from the start) then costs no whole-file hash:
    /// its output is its literal bytes, which need no more checking than a file sent
    /// whole. Before the first `Copy` that follows literal bytes, the caller hands those
    /// back with [`Applier::catch_up`] (a `Copy` is refused while
    /// [`Applier::unhashed`] is not 0), and so before it relies on [`Applied::hash`].
    pub fn hash_lazily(&mut self) {
        self.lazy = true;
    }

    /// The bytes written and not hashed yet: the literal bytes before the first `Copy`
    /// under [`Applier::hash_lazily`], otherwise 0.
    pub fn unhashed(&self) -> u64 {
        self.len - self.hashed
    }

    /// Whether a `Copy` was applied.
    pub fn copied(&self) -> bool {
        self.copied
    }

    /// Hashes the output written so far, read back from `written` (the output from its
    /// first byte), when [`Applier::unhashed`] is not 0. Errors: `written`'s, and
    /// `UnexpectedEof` if it holds fewer bytes than were written.
    pub fn catch_up(&mut self, written: impl Read) -> io::Result<()> {
        if self.hashed == self.len {
            return Ok(());
        }
        debug_assert_eq!(self.hashed, 0, "only a literal prefix is left unhashed");
        let mut hasher = blake3::Hasher::new();
        let mut take = written.take(self.len);
        let n = io::copy(&mut take, &mut hasher)?;
        if n != self.len {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                format!("{n} bytes of the output read back, {} written", self.len),
            ));
        }
        self.hasher = hasher;
        self.hashed = self.len;
        Ok(())
    }

    /// Also signs the output, a file of `new_len` bytes, as it is written (see
    /// [`Applier::finish_signed`]). With `old`, the signature of the old file with the
    /// applier's layout, a whole block copied to the same block position (the same block
    /// size, which [`block_size`](super::block_size) gives files of close lengths) takes
    /// the old block's checksums instead of being hashed: a delta that changed a few
    /// blocks costs a few blocks' hashing. A signature of another layout is not used.
    /// Errors: those of [`Signer::new`].
    pub fn sign(&mut self, new_len: u64, old: Option<Signature>) -> io::Result<()> {
        let signer = Signer::new(new_len)?;
        self.old_blocks = match old {
            Some(sig)
                if sig.layout() == self.layout
                    && sig.block_size == signer.block_size()
                    && sig.validate().is_ok() =>
            {
                sig.blocks
            }
            _ => Vec::new(),
        };
        self.signer = Some(signer);
        Ok(())
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
        if !self.lazy || self.copied {
            self.hasher.update(bytes);
            self.hashed += bytes.len() as u64;
        }
        if let Some(s) = &mut self.signer {
            s.update(bytes);
        }
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
        if self.hashed != self.len {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                "a copy after literal bytes not hashed yet (catch_up first)",
            ));
        }
        self.copied = true;
        if self.old_pos != Some(offset) {
            self.old.seek(SeekFrom::Start(offset))?;
            self.old_pos = Some(offset);
        }
        if self.buf.is_empty() {
            self.buf = vec![0u8; COPY_CHUNK];
        }
        // Whole blocks per read, so that each can be signed or reused on its own.
        let bs = u64::from(self.layout.block_size);
        let per_read = (COPY_CHUNK as u64 / bs).max(1) * bs;
        let mut at_block = block as usize;
        while left > 0 {
            let n = left.min(per_read) as usize;
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
            self.hashed += n as u64;
            if let Some(signer) = &mut self.signer {
                for piece in chunk.chunks(bs as usize) {
                    let reused = piece.len() as u64 == bs
                        && self
                            .old_blocks
                            .get(at_block)
                            .is_some_and(|sig| signer.reuse(*sig));
                    if !reused {
                        signer.update(piece);
                    }
                    at_block += 1;
                }
            }
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

    /// [`Applier::finish`], and the signature of the output if [`Applier::sign`] asked
    /// for it (`None` otherwise, or if the output's length is not the one given there).
    pub fn finish_signed(mut self) -> io::Result<(Applied, W, Option<Signature>)> {
        let signature = self.signer.take().and_then(|s| s.finish().ok());
        let (applied, out) = self.finish()?;
        Ok((applied, out, signature))
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

//! Reconstruction: the old file and the ops give the new file.

use std::fs::File;
use std::io::{self, ErrorKind, Read, Seek, SeekFrom, Write};

use super::hash_thread::HashThread;
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
    /// Whether to hash on a thread of its own ([`Applier::hash_in_background`]).
    background: bool,
    /// That thread, from the first `Copy` on; `hasher` is its starting state.
    thread: Option<HashThread>,
    /// Copies `len` bytes from the old file's position to the output's inside the kernel,
    /// and the output open for reading, which the hashing thread then reads them back
    /// from ([`Applier::copy_in_kernel`]).
    kernel: Option<(KernelCopy<R, W>, File)>,
}

/// Copies `len` bytes from `old` to `out`, each from its current position, without
/// passing them through user space if the system can; returns the bytes copied (fewer
/// only at the end of `old`).
type KernelCopy<R, W> = fn(old: &mut R, out: &mut W, len: u64) -> io::Result<u64>;

impl Applier<File, File> {
    /// Copies the blocks of `Copy` ops with `copy_file_range(2)` (through `std::io::copy`,
    /// which falls back to reading and writing where the kernel cannot): one copy of each
    /// byte inside the kernel instead of two through a buffer, and none at all where the
    /// filesystem shares the extents (a reflink on Btrfs or XFS). The whole-file hash
    /// is then computed in the background ([`Applier::hash_in_background`]) from the
    /// output as written, read back through `written` (the output file opened for
    /// reading), so what is checked is what is on disk. A run whose blocks the signer
    /// needs to read (see [`Applier::sign`]) is still read and written.
    pub fn copy_in_kernel(&mut self, written: File) {
        fn copy(old: &mut File, out: &mut File, len: u64) -> io::Result<u64> {
            io::copy(&mut Read::by_ref(old).take(len), out)
        }
        self.background = true;
        self.kernel = Some((copy, written));
    }
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
            background: false,
            thread: None,
            kernel: None,
        })
    }

    /// Hashes on a thread of its own from the first `Copy` on, so that hashing a chunk
    /// overlaps reading and writing the next (on another core, where there is one). The
    /// output and the hash are the same; it costs a thread, 1 MiB of buffers and a copy
    /// of each literal. If the thread cannot be started, hashing stays inline.
    pub fn hash_in_background(&mut self) {
        self.background = true;
    }

    /// Hashes `bytes`, the next of the output: inline, or by the thread once it runs.
    fn hash(&mut self, bytes: &[u8]) {
        match &mut self.thread {
            Some(t) => {
                let mut chunk = t.buffer(bytes.len());
                chunk.clear();
                chunk.extend_from_slice(bytes);
                t.update(chunk);
            }
            None => {
                self.hasher.update(bytes);
            }
        }
        self.hashed += bytes.len() as u64;
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
        debug_assert!(self.thread.is_none(), "the thread starts at the first Copy");
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
            self.hash(bytes);
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
        if self.background && self.thread.is_none() {
            // Continues from the hash of the literal bytes before this copy, if any.
            let written = self.kernel.as_ref().and_then(|(_, f)| f.try_clone().ok());
            if let Ok(t) = HashThread::spawn(self.hasher.clone(), written) {
                self.thread = Some(t);
            }
        }
        if self.old_pos != Some(offset) {
            self.old.seek(SeekFrom::Start(offset))?;
            self.old_pos = Some(offset);
        }
        if let Some(copy) = self.kernel_copy_for(block, count) {
            return self.copy_kernel(copy, block, count, left);
        }
        // Whole blocks per read, so that each can be signed or reused on its own.
        let bs = u64::from(self.layout.block_size);
        let per_read = (COPY_CHUNK as u64 / bs).max(1) * bs;
        let mut at_block = block as usize;
        while left > 0 {
            let n = left.min(per_read) as usize;
            let mut buf = match &mut self.thread {
                Some(t) => t.buffer(n),
                None => std::mem::take(&mut self.buf),
            };
            if buf.len() < n {
                buf.resize(n, 0);
            }
            let chunk = &mut buf[..n];
            if let Err(e) = self.old.read_exact(chunk) {
                self.old_pos = None;
                return Err(if e.kind() == ErrorKind::UnexpectedEof {
                    self.old_too_short()
                } else {
                    e
                });
            }
            self.out.write_all(chunk)?;
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
            match &mut self.thread {
                Some(t) => {
                    buf.truncate(n);
                    t.update(buf);
                }
                None => {
                    self.hasher.update(&buf[..n]);
                    self.buf = buf;
                }
            }
            self.hashed += n as u64;
            self.len += n as u64;
            self.old_pos = self.old_pos.map(|p| p + n as u64);
            left -= n as u64;
        }
        Ok(())
    }

    /// The kernel copy, if [`Applier::copy_in_kernel`] asked for it and the run of
    /// `count` blocks from `block` can do without its bytes: the hashing thread reads the
    /// output back, and the signer (if any) reuses the old checksums of every block.
    fn kernel_copy_for(&self, block: u32, count: u32) -> Option<KernelCopy<R, W>> {
        let (copy, _) = self.kernel.as_ref()?;
        if !self.thread.as_ref().is_some_and(HashThread::reads_back) {
            return None;
        }
        if let Some(signer) = &self.signer {
            let end = block as usize + count as usize;
            let whole = (end as u64) * u64::from(self.layout.block_size) <= self.layout.file_len;
            if !(whole && end <= self.old_blocks.len() && signer.can_reuse_run(u64::from(count))) {
                return None;
            }
        }
        Some(*copy)
    }

    /// Copies `len` bytes, the `count` blocks from `block` (the old file positioned at
    /// the first), with `copy` (see [`Applier::kernel_copy_for`]).
    fn copy_kernel(
        &mut self,
        copy: KernelCopy<R, W>,
        block: u32,
        count: u32,
        len: u64,
    ) -> io::Result<()> {
        let at = self.len;
        let n = copy(&mut self.old, &mut self.out, len).inspect_err(|_| self.old_pos = None)?;
        if n != len {
            self.old_pos = None;
            return Err(self.old_too_short());
        }
        if let Some(signer) = &mut self.signer {
            for sig in &self.old_blocks[block as usize..block as usize + count as usize] {
                let reused = signer.reuse(*sig);
                debug_assert!(reused, "checked by kernel_copy_for");
            }
        }
        if let Some(t) = &mut self.thread {
            t.update_written(at, len);
        }
        self.hashed += len;
        self.len += len;
        self.old_pos = self.old_pos.map(|p| p + len);
        Ok(())
    }

    /// The error for an old file that ended before its layout says.
    fn old_too_short(&self) -> io::Error {
        io::Error::new(
            ErrorKind::UnexpectedEof,
            format!(
                "the old file is shorter than the {} bytes it was signed with",
                self.layout.file_len
            ),
        )
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
        if let Some(t) = self.thread.take() {
            self.hasher = t.finish()?;
        }
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

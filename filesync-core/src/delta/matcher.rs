//! The matcher: the new file against the old file's signature, as a stream of ops.

use std::io::{self, ErrorKind, Read};

use serde::{Deserialize, Serialize};

use super::signature::{strong_checksum, Signature};
use super::weak::Rolling;
use super::{BlockSig, MAX_LITERAL, STRONG_LEN};

/// One instruction for rebuilding the new file from the old one, in new-file order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeltaOp {
    /// Copy `count` (≥ 1) consecutive blocks of the old file, starting with block number
    /// `block` (0-based): bytes `block × block_size` to
    /// `min((block + count) × block_size, old_len)`.
    Copy {
        /// The first block.
        block: u32,
        /// How many blocks, at least 1.
        count: u32,
    },
    /// Bytes of the new file, 1 to [`MAX_LITERAL`] of them.
    Literal(Vec<u8>),
}

/// How far the matcher has come: the bytes of the new file covered by the ops emitted so
/// far, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeltaProgress {
    /// New-file bytes covered by `Copy` ops.
    pub copied: u64,
    /// New-file bytes sent in `Literal` ops.
    pub literal: u64,
}

impl DeltaProgress {
    /// All new-file bytes covered: `copied + literal`.
    pub fn scanned(&self) -> u64 {
        self.copied + self.literal
    }
}

/// The outcome of [`Matcher::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaSummary {
    /// The final progress: `copied + literal` is the new file's length.
    pub progress: DeltaProgress,
    /// The new file's length in bytes (what was read).
    pub new_len: u64,
    /// The BLAKE3 hash of the new file (what was read), as [`file_hash`](super::file_hash)
    /// gives it: the receiver compares it with [`Applied::hash`](super::Applied::hash).
    pub new_hash: [u8; 32],
    /// The number of ops emitted.
    pub ops: u64,
    /// Windows whose weak checksum matched a block's but whose strong one did not (for
    /// diagnosis: each cost a strong hash of a block).
    pub false_alarms: u64,
}

/// The new-file bytes one coalesced `Copy` covers at most (it ends at the first block
/// that reaches this): 4 MiB. An unchanged file is then not one `Copy` sent after the
/// whole file was matched, but one every 4 MiB, so that the receiver rebuilds while the
/// sender matches (a 512 MiB file: 128 ops of a few bytes each).
pub const MAX_COPY_RUN: u64 = 4 << 20;

/// The bytes read from the new file at a time.
const READ_CHUNK: usize = 1 << 20;

/// Bits of each prefilter bitmap per bucket of the hash table, as a power of 2: 2⁶ = 64
/// bits (8 bytes) per block. Measured: 2⁵ and 2⁷ were slower on unrelated data (the
/// first bitmap's false positives against its cache footprint).
const FILTER_EXTRA_BITS: u32 = 6;

/// A signature made searchable: a two-bitmap prefilter on the weak checksum (in the spirit
/// of rsync's tag table) and a hash table from the weak checksum to block numbers.
///
/// The first bitmap and the table are indexed by the top bits of `weak × 0x9E3779B1`
/// (Fibonacci hashing): the bitmap by `fine_bits` of them (≈ 64 bits per block, so a
/// window of unrelated data passes with probability ≈ 1/64), the table by the top
/// `fine_bits − 6` (≈ one bucket per block). The second bitmap, of the same size, is
/// indexed by another hash of the weak checksum, so that only ≈ 1/4000 of unrelated
/// windows leave the rolling loop to probe the table. The table is compressed (CSR):
/// `starts[h]..starts[h + 1]` is bucket h's range of `entries`, (weak, block) pairs sorted
/// by (weak, strong, block), so that candidates with the same weak and strong checksums
/// are found by binary search, and the preferred one among equal blocks too. The short
/// last block is not in the table (see the module docs).
#[derive(Debug)]
struct Index {
    filter: Vec<u64>,
    filter2: Vec<u64>,
    /// `32 − fine_bits`.
    shift: u32,
    starts: Vec<u32>,
    entries: Vec<(u32, u32)>,
}

impl Index {
    fn new(sig: &Signature) -> Index {
        let full = match sig.short_last_block() {
            Some(_) => sig.blocks.len() - 1,
            None => sig.blocks.len(),
        };
        // ≥ 2⁴ buckets, so that a bitmap has whole words; ≤ 2²¹, so that a bitmap has at
        // most 2²⁷ bits (16 MiB, for 2 M blocks: 256 GiB in blocks of 128 KiB).
        let bucket_bits = (full.max(1).next_power_of_two().trailing_zeros()).clamp(4, 21);
        let fine_bits = bucket_bits + FILTER_EXTRA_BITS;
        let shift = 32 - fine_bits;
        let mut filter = vec![0u64; (1usize << fine_bits) / 64];
        let mut filter2 = filter.clone();
        let mut keyed: Vec<(u32, u32, [u8; STRONG_LEN], u32)> = Vec::with_capacity(full);
        for (i, b) in sig.blocks[..full].iter().enumerate() {
            let h = hash(b.weak, shift);
            filter[(h >> 6) as usize] |= 1 << (h & 63);
            let h2 = hash2(b.weak, shift);
            filter2[(h2 >> 6) as usize] |= 1 << (h2 & 63);
            keyed.push((h >> FILTER_EXTRA_BITS, b.weak, b.strong, i as u32));
        }
        keyed.sort_unstable();
        let mut starts = vec![0u32; (1usize << bucket_bits) + 1];
        for k in &keyed {
            starts[k.0 as usize + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        Index {
            filter,
            filter2,
            shift,
            starts,
            entries: keyed.into_iter().map(|k| (k.1, k.3)).collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether some block may have weak checksum `weak` (false positives ≈ 1/4000 for
    /// unrelated data).
    #[inline(always)]
    fn maybe(&self, weak: u32) -> bool {
        let h = hash(weak, self.shift);
        if self.filter[(h >> 6) as usize] & (1 << (h & 63)) == 0 {
            return false;
        }
        let h2 = hash2(weak, self.shift);
        self.filter2[(h2 >> 6) as usize] & (1 << (h2 & 63)) != 0
    }

    /// The block with weak checksum `weak` and strong checksum `strong()` (computed only
    /// if some block has that weak checksum): `preferred` if it is one of them, else the
    /// lowest-numbered. `Err(true)` when no block matched but the weak checksum did (a
    /// false alarm), `Err(false)` when not even that.
    fn find(
        &self,
        blocks: &[BlockSig],
        weak: u32,
        preferred: u32,
        strong: impl FnOnce() -> [u8; STRONG_LEN],
    ) -> Result<u32, bool> {
        let bucket = (hash(weak, self.shift) >> FILTER_EXTRA_BITS) as usize;
        let range = &self.entries[self.starts[bucket] as usize..self.starts[bucket + 1] as usize];
        let lo = range.partition_point(|&(w, _)| w < weak);
        let range = &range[lo..];
        let range = &range[..range.partition_point(|&(w, _)| w == weak)];
        if range.is_empty() {
            return Err(false);
        }
        let st = strong();
        let lo = range.partition_point(|&(_, i)| blocks[i as usize].strong < st);
        let range = &range[lo..];
        let same = &range[..range.partition_point(|&(_, i)| blocks[i as usize].strong == st)];
        match same.first() {
            None => Err(true),
            Some(&(_, first)) => Ok(
                if same.binary_search_by_key(&preferred, |&(_, i)| i).is_ok() {
                    preferred
                } else {
                    first
                },
            ),
        }
    }
}

#[inline(always)]
fn hash(weak: u32, shift: u32) -> u32 {
    weak.wrapping_mul(0x9E37_79B1) >> shift
}

/// A second hash, independent enough of [`hash`]: the weak checksum's halves swapped and
/// mixed, then another odd multiplier.
#[inline(always)]
fn hash2(weak: u32, shift: u32) -> u32 {
    let x = weak.rotate_left(16) ^ (weak >> 7);
    x.wrapping_mul(0x85EB_CA6B) >> shift
}

/// Matches new files against one [`Signature`]; reusable for several runs.
///
/// Memory: the index is ~12 bytes a block of the signature plus two bitmaps of 8 to 16
/// bytes a block (powers of two; 2 MiB in all for a 16 GiB file's 131,072 blocks); a run holds a buffer of
/// 2 × block size + [`MAX_LITERAL`] + 1 MiB, and no more, whatever the new file's size.
#[derive(Debug)]
pub struct Matcher<'s> {
    sig: &'s Signature,
    index: Index,
    /// The number of whole blocks (all but a short last one).
    full_blocks: usize,
}

impl<'s> Matcher<'s> {
    /// Builds the index of `sig`, after [`Signature::validate`] (its error if invalid).
    pub fn new(sig: &'s Signature) -> io::Result<Matcher<'s>> {
        sig.validate()?;
        Ok(Matcher {
            sig,
            index: Index::new(sig),
            full_blocks: sig.blocks.len() - usize::from(sig.short_last_block().is_some()),
        })
    }

    /// Reads the new file from `reader` to its end and passes the ops that rebuild it from
    /// the old one to `emit`, in order, each with the progress *including* that op.
    ///
    /// Consecutive block matches are coalesced into one `Copy` of up to
    /// [`MAX_COPY_RUN`] bytes (at least one block); literals are cut at [`MAX_LITERAL`]
    /// bytes; a `Copy` follows a `Copy` that it could extend only when that one reached
    /// [`MAX_COPY_RUN`] bytes, and no op is empty. An error from `emit` stops the run and is returned as it is: that is
    /// how a sender abandons a delta (see [`should_fall_back`](super::should_fall_back)).
    /// Errors: the reader's, and `emit`'s.
    pub fn run<R, F>(&self, reader: R, emit: F) -> io::Result<DeltaSummary>
    where
        R: Read,
        F: FnMut(DeltaOp, &DeltaProgress) -> io::Result<()>,
    {
        let bs = self.sig.block_size as usize;
        let mut input = Input::new(reader, bs);
        let mut out = Emitter {
            emit,
            pending: None,
            progress: DeltaProgress::default(),
            block_size: self.sig.block_size,
            ops: 0,
        };
        let blocks = &self.sig.blocks[..];
        let short = self.sig.short_last_block();
        let mut false_alarms = 0u64;

        // Offsets into `input.data`: the window starts at `pos`, the literal not yet
        // emitted is `lit..pos`. `roll` is the window's weak checksum when known.
        let mut pos = 0usize;
        let mut lit = 0usize;
        let mut roll: Option<Rolling> = None;
        // The block that would extend the current run (rsync's `want_i`); and whether
        // `pos` follows a match (or is the start), where the short last block is tried.
        let mut preferred = 0u32;
        let mut after_match = true;

        loop {
            input.fill(&mut pos, &mut lit, bs + 1)?;
            let data = &input.data[..input.end];
            let avail = data.len() - pos;
            // The window at `pos` is `len` bytes of old block `block`: the literal bytes
            // before it go first, then the copy; the next window starts after it, and the
            // block after this one is tried first there.
            macro_rules! matched {
                ($block:expr, $len:expr) => {{
                    let (block, len): (u32, usize) = ($block, $len);
                    out.literal(&data[lit..pos])?;
                    out.copy(block, len as u64)?;
                    pos += len;
                    lit = pos;
                    preferred = block + 1;
                    roll = None;
                    after_match = true;
                    continue;
                }};
            }

            if after_match {
                after_match = false;
                if let Some((last, len)) = short {
                    if preferred == last
                        && avail >= len
                        && is_block(&blocks[last as usize], &data[pos..pos + len])
                    {
                        matched!(last, len);
                    }
                }
            }
            if avail < bs || self.index.is_empty() {
                break;
            }

            // Right after a match, the block that would extend the run is tried first, by
            // its strong hash alone: where blocks keep matching, that spares computing each
            // window's weak checksum from scratch. (A false match of the 8-byte hash
            // against this one block is as unlikely as one the weak checksum let through;
            // the whole-file hash catches either.)
            let window = &data[pos..pos + bs];
            let mut strong = None;
            if roll.is_none() && (preferred as usize) < self.full_blocks {
                let st = strong_checksum(window);
                if st == blocks[preferred as usize].strong {
                    matched!(preferred, bs);
                }
                strong = Some(st);
            }
            let mut r = roll.unwrap_or_else(|| Rolling::new(window));
            let weak = r.digest();
            if self.index.maybe(weak) {
                match self.index.find(blocks, weak, preferred, || {
                    strong.unwrap_or_else(|| strong_checksum(window))
                }) {
                    Ok(block) => matched!(block, bs),
                    Err(alarm) => false_alarms += u64::from(alarm),
                }
            }
            if pos - lit >= MAX_LITERAL {
                out.literal(&data[lit..pos])?;
                lit = pos;
            }
            // Roll over every position up to `limit` (the window must stay inside the
            // data, the literal within MAX_LITERAL) until the prefilter fires.
            let limit = (data.len() - bs).min(lit + MAX_LITERAL);
            if pos >= limit {
                // Only at the end of the input (`fill` would have read more otherwise).
                break;
            }
            pos = scan(data, pos, limit, bs, &mut r, &self.index);
            roll = Some(r);
        }

        // The rest, [lit, end of input), is literal, except that its last bytes may be the
        // old file's short last block.
        pos = lit;
        loop {
            input.fill(&mut pos, &mut lit, MAX_LITERAL + bs + 1)?;
            let data = &input.data[..input.end];
            if data.len() - lit > MAX_LITERAL + bs {
                out.literal(&data[lit..lit + MAX_LITERAL])?;
                lit += MAX_LITERAL;
                pos = lit;
                continue;
            }
            // End of input, and fewer than MAX_LITERAL + bs + 1 bytes left.
            let end = data.len();
            match short {
                Some((last, len))
                    if end - lit >= len && is_block(&blocks[last as usize], &data[end - len..]) =>
                {
                    out.literal(&data[lit..end - len])?;
                    out.copy(last, len as u64)?;
                }
                _ => out.literal(&data[lit..])?,
            }
            break;
        }
        out.flush_copy()?;
        Ok(DeltaSummary {
            progress: out.progress,
            new_len: input.total,
            new_hash: *input.hasher.finalize().as_bytes(),
            ops: out.ops,
            false_alarms,
        })
    }
}

/// Rolls the window from `pos` (already looked up) one byte at a time up to `limit`
/// (`limit + bs ≤ data.len()`), stopping at the first window that passes the prefilter.
/// Returns the window's offset; `r` is its checksum.
#[inline(always)]
fn scan(data: &[u8], pos: usize, limit: usize, bs: usize, r: &mut Rolling, index: &Index) -> usize {
    let outgoing = &data[pos..limit];
    let incoming = &data[pos + bs..limit + bs];
    for (k, (&o, &i)) in outgoing.iter().zip(incoming).enumerate() {
        r.roll(o, i);
        if index.maybe(r.digest()) {
            return pos + k + 1;
        }
    }
    limit
}

/// Whether `data` has the checksums of `block` (weak first, the strong only if it agrees).
fn is_block(block: &BlockSig, data: &[u8]) -> bool {
    super::weak_checksum(data) == block.weak && strong_checksum(data) == block.strong
}

/// The new file as it is read: a buffer, and the whole-file hash of what was read.
struct Input<R> {
    reader: R,
    data: Box<[u8]>,
    end: usize,
    eof: bool,
    total: u64,
    hasher: blake3::Hasher,
}

impl<R: Read> Input<R> {
    fn new(reader: R, bs: usize) -> Self {
        Input {
            reader,
            data: vec![0u8; MAX_LITERAL + 2 * bs + READ_CHUNK + 2].into_boxed_slice(),
            end: 0,
            eof: false,
            total: 0,
            hasher: blake3::Hasher::new(),
        }
    }

    /// Reads until `need` bytes are available from `*pos` or the input ends. Bytes
    /// before `*lit` (already emitted) may be dropped: `*pos` and `*lit` then move back.
    /// Requires `*lit ≤ *pos` and `*pos − *lit ≤ MAX_LITERAL`, `need ≤ MAX_LITERAL + bs + 1`
    /// counted from `*lit`, so that the buffer always has room.
    fn fill(&mut self, pos: &mut usize, lit: &mut usize, need: usize) -> io::Result<()> {
        while self.end - *pos < need && !self.eof {
            if self.data.len() - self.end < READ_CHUNK && *lit > 0 {
                self.data.copy_within(*lit..self.end, 0);
                self.end -= *lit;
                *pos -= *lit;
                *lit = 0;
            }
            match self.reader.read(&mut self.data[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.hasher.update(&self.data[self.end..self.end + n]);
                    self.end += n;
                    self.total += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Emits ops, coalescing copies and cutting literals, and counts.
struct Emitter<F> {
    emit: F,
    /// A run of copies not emitted yet: first block, count, bytes.
    pending: Option<(u32, u32, u64)>,
    progress: DeltaProgress,
    block_size: u32,
    ops: u64,
}

impl<F: FnMut(DeltaOp, &DeltaProgress) -> io::Result<()>> Emitter<F> {
    fn send(&mut self, op: DeltaOp) -> io::Result<()> {
        self.ops += 1;
        (self.emit)(op, &self.progress)
    }

    fn copy(&mut self, block: u32, len: u64) -> io::Result<()> {
        debug_assert!(len <= u64::from(self.block_size));
        if let Some((first, count, bytes)) = &mut self.pending {
            if *first + *count == block {
                *count += 1;
                *bytes += len;
                if *bytes >= MAX_COPY_RUN {
                    // Sent now, so that the receiver copies while the rest is matched.
                    self.flush_copy()?;
                }
                return Ok(());
            }
        }
        self.flush_copy()?;
        self.pending = Some((block, 1, len));
        Ok(())
    }

    fn flush_copy(&mut self) -> io::Result<()> {
        if let Some((block, count, bytes)) = self.pending.take() {
            self.progress.copied += bytes;
            self.send(DeltaOp::Copy { block, count })?;
        }
        Ok(())
    }

    fn literal(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.flush_copy()?;
        for chunk in bytes.chunks(MAX_LITERAL) {
            self.progress.literal += chunk.len() as u64;
            self.send(DeltaOp::Literal(chunk.to_vec()))?;
        }
        Ok(())
    }
}

/// [`Matcher::run`] collecting the ops in a `Vec`: for tests and small files only (the
/// literals of a large changed file would all be in memory).
pub fn compute_delta(sig: &Signature, new: impl Read) -> io::Result<(Vec<DeltaOp>, DeltaSummary)> {
    let mut ops = Vec::new();
    let summary = Matcher::new(sig)?.run(new, |op, _| {
        ops.push(op);
        Ok(())
    })?;
    Ok((ops, summary))
}

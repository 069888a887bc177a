//! The old file's signature: per block, a weak and a strong checksum.

use std::io::{self, ErrorKind, Read};

use serde::{Deserialize, Serialize};

use super::weak::weak_checksum;
use super::{block_count, block_size, MAX_BLOCK_SIZE, STRONG_LEN};

/// The checksums of one block of the old file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlockSig {
    /// The weak rolling checksum ([`weak_checksum`](super::weak_checksum)). Encoded as 4
    /// little-endian bytes, not a varint (random values would take 5).
    #[serde(with = "weak_le")]
    pub weak: u32,
    /// The block's XXH3-64 ([`strong_checksum`]).
    pub strong: [u8; STRONG_LEN],
}

/// How a file is cut into blocks: all that [`Applier`](super::Applier) needs of a
/// [`Signature`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlockLayout {
    /// The block size in bytes, 1 to [`MAX_BLOCK_SIZE`].
    pub block_size: u32,
    /// The file's length in bytes; the last block holds the remainder
    /// (`file_len % block_size` bytes, when that is not 0).
    pub file_len: u64,
}

impl BlockLayout {
    /// The number of blocks, ⌈file_len / block_size⌉.
    pub fn block_count(&self) -> u64 {
        block_count(self.file_len, self.block_size)
    }

    /// The byte range `(offset, len)` of the old file covered by `count` blocks from
    /// `block`, or `None` when the range is empty or goes past the last block.
    pub fn range(&self, block: u32, count: u32) -> Option<(u64, u64)> {
        let end = u64::from(block) + u64::from(count);
        if count == 0 || end > self.block_count() {
            return None;
        }
        let bs = u64::from(self.block_size);
        let offset = u64::from(block) * bs;
        Some((offset, (end * bs).min(self.file_len) - offset))
    }

    /// Checks that the block size is in 1..=[`MAX_BLOCK_SIZE`] and that the block count
    /// fits a `u32`.
    pub fn validate(&self) -> io::Result<()> {
        if self.block_size == 0 || self.block_size > MAX_BLOCK_SIZE {
            return Err(invalid(format!(
                "block size {} outside 1..={MAX_BLOCK_SIZE}",
                self.block_size
            )));
        }
        if self.block_count() > u64::from(u32::MAX) {
            return Err(invalid(format!(
                "{} bytes in blocks of {} is more than 2^32 blocks",
                self.file_len, self.block_size
            )));
        }
        Ok(())
    }
}

/// The signature of the old file: its layout and the checksums of its blocks, in order.
///
/// ~[`BLOCK_SIG_WIRE_LEN`](super::BLOCK_SIG_WIRE_LEN) bytes a block in postcard; see
/// [`signature_wire_len`](super::signature_wire_len). A signature received from a peer
/// is checked by [`Signature::validate`] (which [`Matcher::new`](super::Matcher::new)
/// calls).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Signature {
    /// The block size in bytes, 1 to [`MAX_BLOCK_SIZE`]; normally
    /// [`block_size`]`(file_len)`.
    pub block_size: u32,
    /// The signed file's length in bytes.
    pub file_len: u64,
    /// One entry per block, ⌈file_len / block_size⌉ of them.
    pub blocks: Vec<BlockSig>,
}

impl Signature {
    /// Signs the first `len` bytes of `reader` with blocks of [`block_size`]`(len)`.
    ///
    /// Streams: reads about 1 MiB at a time, never the whole file. Errors: those of the
    /// reader, `UnexpectedEof` if it ends before `len` bytes (bytes past `len` are not
    /// read), `InvalidInput` if `len` needs more than 2³² blocks (over 512 TiB).
    pub fn compute(reader: impl Read, len: u64) -> io::Result<Signature> {
        Signature::compute_with_block_size(reader, len, block_size(len))
    }

    /// [`Signature::compute`] with a given block size, 1 to [`MAX_BLOCK_SIZE`] bytes
    /// (`InvalidInput` otherwise). Small block sizes are for tests.
    pub fn compute_with_block_size(
        mut reader: impl Read,
        len: u64,
        block_size: u32,
    ) -> io::Result<Signature> {
        let layout = BlockLayout {
            block_size,
            file_len: len,
        };
        layout
            .validate()
            .map_err(|e| io::Error::new(ErrorKind::InvalidInput, e.to_string()))?;
        let bs = block_size as usize;
        let count = layout.block_count() as usize;
        // Capacity is trusted: `len` is the caller's own file size.
        let mut blocks = Vec::with_capacity(count);
        let per_read = (1 << 20) / bs + 1;
        let mut buf = vec![0u8; per_read * bs];
        let mut left = len;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            reader.read_exact(&mut buf[..want]).map_err(|e| {
                if e.kind() == ErrorKind::UnexpectedEof {
                    io::Error::new(
                        ErrorKind::UnexpectedEof,
                        format!("file ended {} bytes before its expected length {len}", left),
                    )
                } else {
                    e
                }
            })?;
            blocks.extend(buf[..want].chunks(bs).map(block_sig));
            left -= want as u64;
        }
        Ok(Signature {
            block_size,
            file_len: len,
            blocks,
        })
    }

    /// The layout: block size and file length.
    pub fn layout(&self) -> BlockLayout {
        BlockLayout {
            block_size: self.block_size,
            file_len: self.file_len,
        }
    }

    /// Checks a signature from a peer: a valid [`BlockLayout`] and exactly
    /// ⌈file_len / block_size⌉ blocks. `InvalidData` otherwise.
    pub fn validate(&self) -> io::Result<()> {
        self.layout().validate()?;
        let want = self.layout().block_count();
        if self.blocks.len() as u64 != want {
            return Err(invalid(format!(
                "signature of {} bytes in blocks of {} has {} blocks, not {want}",
                self.file_len,
                self.block_size,
                self.blocks.len()
            )));
        }
        Ok(())
    }

    /// The last block and its length, if it is shorter than the block size.
    pub(super) fn short_last_block(&self) -> Option<(u32, usize)> {
        let rem = self.file_len % u64::from(self.block_size);
        (rem != 0).then(|| ((self.blocks.len() - 1) as u32, rem as usize))
    }
}

/// Signs a file from its bytes as they are written, in order, so that the writer need
/// not read it again: [`Signature::compute`] without the reads.
///
/// Where the caller knows a whole block's checksums already (a block copied unchanged
/// from a signed file to the same block position, with the same block size),
/// [`Signer::reuse`] takes them instead of hashing the bytes: that is how a receiver
/// derives the signature of a file rebuilt from a delta from the old file's signature,
/// hashing only the blocks the delta changed.
#[derive(Debug)]
pub struct Signer {
    layout: BlockLayout,
    blocks: Vec<BlockSig>,
    /// The bytes of the current block seen so far (fewer than a block).
    partial: Vec<u8>,
    /// Bytes accounted for: hashed, in `partial`, or reused.
    done: u64,
}

impl Signer {
    /// A signer for a file of `file_len` bytes, in blocks of [`block_size`]`(file_len)`.
    /// `InvalidInput` if that needs more than 2³² blocks.
    pub fn new(file_len: u64) -> io::Result<Signer> {
        let layout = BlockLayout {
            block_size: block_size(file_len),
            file_len,
        };
        layout
            .validate()
            .map_err(|e| io::Error::new(ErrorKind::InvalidInput, e.to_string()))?;
        Ok(Signer {
            layout,
            // Bounded: `file_len` may come from a peer, and the vector grows as bytes do.
            blocks: Vec::with_capacity(layout.block_count().min(1 << 16) as usize),
            partial: Vec::new(),
            done: 0,
        })
    }

    /// The block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.layout.block_size
    }

    /// Whether the next block is a whole one (not the short last block) and nothing of it
    /// was written yet: then [`Signer::reuse`] may stand for its bytes.
    pub fn can_reuse(&self) -> bool {
        self.partial.is_empty()
            && self.done + u64::from(self.layout.block_size) <= self.layout.file_len
    }

    /// Whether the next `blocks` blocks are all whole ones and nothing of the first was
    /// written yet: then [`Signer::reuse`] may stand for the bytes of each.
    pub fn can_reuse_run(&self, blocks: u64) -> bool {
        self.partial.is_empty()
            && blocks
                .checked_mul(u64::from(self.layout.block_size))
                .and_then(|n| n.checked_add(self.done))
                .is_some_and(|end| end <= self.layout.file_len)
    }

    /// Takes `sig` as the checksums of the next whole block, whose bytes the caller will
    /// not pass to [`Signer::update`]. Only where [`Signer::can_reuse`]; `false` (and
    /// nothing done) otherwise.
    pub fn reuse(&mut self, sig: BlockSig) -> bool {
        if !self.can_reuse() {
            return false;
        }
        self.blocks.push(sig);
        self.done += u64::from(self.layout.block_size);
        true
    }

    /// Signs the next `data` bytes of the file.
    pub fn update(&mut self, mut data: &[u8]) {
        let bs = self.layout.block_size as usize;
        self.done += data.len() as u64;
        if !self.partial.is_empty() {
            let take = (bs - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() < bs {
                return;
            }
            self.blocks.push(block_sig(&self.partial));
            self.partial.clear();
        }
        let mut whole = data.chunks_exact(bs);
        for block in &mut whole {
            self.blocks.push(block_sig(block));
        }
        self.partial.extend_from_slice(whole.remainder());
    }

    /// The signature, once exactly `file_len` bytes were signed or reused;
    /// `InvalidData` otherwise.
    pub fn finish(mut self) -> io::Result<Signature> {
        if self.done != self.layout.file_len {
            return Err(invalid(format!(
                "{} bytes signed of a file of {}",
                self.done, self.layout.file_len
            )));
        }
        if !self.partial.is_empty() {
            self.blocks.push(block_sig(&self.partial));
        }
        Ok(Signature {
            block_size: self.layout.block_size,
            file_len: self.layout.file_len,
            blocks: self.blocks,
        })
    }
}

fn block_sig(block: &[u8]) -> BlockSig {
    BlockSig {
        weak: weak_checksum(block),
        strong: strong_checksum(block),
    }
}

/// A block's strong checksum: its XXH3-64 hash (seed 0), as 8 little-endian bytes.
pub fn strong_checksum(block: &[u8]) -> [u8; STRONG_LEN] {
    xxhash_rust::xxh3::xxh3_64(block).to_le_bytes()
}

/// The BLAKE3 hash (32 bytes) of everything `reader` yields, read in bounded chunks.
/// The same hash as [`DeltaSummary::new_hash`](super::DeltaSummary::new_hash) and
/// [`Applied::hash`](super::Applied::hash). Errors: the reader's.
pub fn file_hash(reader: impl Read) -> io::Result<[u8; 32]> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(reader)?;
    Ok(*hasher.finalize().as_bytes())
}

pub(super) fn invalid(msg: String) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, msg)
}

/// A `u32` as 4 little-endian bytes, so that postcard does not varint-encode it.
mod weak_le {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
        v.to_le_bytes().serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        <[u8; 4]>::deserialize(d).map(u32::from_le_bytes)
    }
}

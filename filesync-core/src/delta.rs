//! Block-level deltas: send only the parts of a file that the server's copy lacks.
//!
//! The algorithm is rsync's (A. Tridgell and P. Mackerras, "The rsync algorithm", 1996,
//! TR-CS-96-05), in four pure steps:
//!
//! 1. The holder of the **old** file (the server) cuts it into blocks of [`block_size`]
//!    bytes (the last one may be shorter) and computes a [`Signature`]: for each block a
//!    32-bit rolling checksum ([`weak_checksum`]) and an 8-byte strong hash (XXH3-64,
//!    [`strong_checksum`]). [`Signature::compute`] reads the file once, block by block.
//! 2. The holder of the **new** file (the client) slides a window of one block over it,
//!    rolling the weak checksum one byte at a time ([`Rolling`]). Where the weak checksum
//!    is one of the signature's and the strong one agrees, the window is a copy of that old
//!    block; the bytes between two matches are literal. [`Matcher::run`] streams the result
//!    as [`DeltaOp`]s: `Copy { block, count }` for a run of consecutive old blocks,
//!    `Literal(bytes)` for at most [`MAX_LITERAL`] bytes of new data.
//! 3. The old file's holder rebuilds the new file from its old copy and the ops
//!    ([`Applier`], [`apply`]), hashing what it writes with the whole-file BLAKE3. File to
//!    file, copied blocks stay in the kernel (`copy_file_range(2)`) and the hash runs on a
//!    thread of its own, reading back what was written ([`Applier::copy_in_kernel`]).
//! 4. That hash is compared with the new file's ([`DeltaSummary::new_hash`] on the sending
//!    side, the same as [`file_hash`]): a mismatch means that the old file changed under
//!    the server, or (unlikely, see below) a false match of a block's strong hash; the
//!    file is then sent whole (the server stops offering a signature of that copy).
//!
//! Nothing here touches the filesystem or the network: every function takes
//! `impl Read`/`impl Write`/`impl Seek`, and memory stays bounded whatever the file's size
//! (the signature itself is 12 bytes per block, ≤ 0.1 % of a file of 150 MiB or more).
//!
//! # Block size
//!
//! [`block_size`] is rsync's rule (`sum_sizes_sqroot` in rsync's `generator.c`, protocol
//! ≥ 30): 700 bytes up to 700² = 490,000 bytes; above, ⌊√len⌋ rounded down to a multiple
//! of 8; at most 128 KiB (reached at 16 GiB). One departure: from 80,000² bytes (about
//! 6 GiB) on, blocks grow as `len / 80,000` instead ([`MAX_SIGNATURE_BLOCKS`]), so that a
//! signature stays within one frame, up to 128 KiB blocks at about 9.8 GiB; from about
//! 10 GiB on the signature no longer fits, and the file is sent whole. The block count is then ≈ √len, so both the
//! signature (12 bytes a block) and the literal overhead of one changed spot (≤ 2 blocks)
//! grow as √len, which is what minimizes their sum. Syncthing's ladder (128 KiB to 16 MiB
//! blocks, ≤ ~2000 a file) makes signatures smaller but a 4 KiB edit in a 512 MiB file
//! would cost ~1 MiB of literal data instead of ~46 KiB; here the signature is already
//! below 0.1 % of the file from ~150 MiB on. Postcard sizes ([`signature_wire_len`]):
//!
//! | file     | block size | blocks  | signature  | share of the file |
//! |----------|-----------:|--------:|-----------:|------------------:|
//! | 1 MiB    |  1,024 B   |   1,024 |    12 KiB  | 1.17 %            |
//! | 512 MiB  | 23,168 B   |  23,173 |   272 KiB  | 0.052 %           |
//! | 1 GiB    | 32,768 B   |  32,768 |   384 KiB  | 0.037 %           |
//! | 8 GiB    | 107,376 B  |  79,999 |   937 KiB  | 0.011 %           |
//! | 16 GiB   | 128 KiB    | 131,072 |  1.5 MiB   | 0.009 %           |
//!
//! (16 GiB is beyond one frame: such a file gets no signature.)
//!
//! (A 1 MiB file's 1.2 % is 12 KiB: less than one round trip on a fast link, and
//! [`delta_worthwhile`] decides whether to bother at all.)
//!
//! # Checksums
//!
//! - Weak: rsync's `get_checksum1` without its `CHAR_OFFSET` (0 in rsync too), on
//!   *unsigned* bytes (rsync sums `signed char`s, so the values differ from rsync's for
//!   bytes ≥ 0x80; nothing here needs to talk to rsync): with `a = Σ xᵢ mod 2¹⁶` and
//!   `b = Σ (n − i)·xᵢ mod 2¹⁶` over the n bytes of a window, the checksum is
//!   `a | b << 16`; rolling one byte costs O(1).
//! - Strong: XXH3-64 of the block (Yann Collet's xxHash, seed 0; [`STRONG_LEN`] = 8
//!   bytes), from the `xxhash-rust` crate. Not a cryptographic hash, and it need not be:
//!   integrity rests on the whole-file BLAKE3 in `FILE_END`, and the block hash only has
//!   to make false matches rare on real data; XXH3 does at ~4 times BLAKE3's speed what
//!   the first 8 bytes of BLAKE3 did (the matcher hashes every block of a file that
//!   mostly matches, so this was a third of its time). It is compared
//!   only where the weak checksum already matched. Its length follows the idea of rsync's
//!   `s2length` rule (`sum_sizes_sqroot`): a block hash need only make a false match
//!   rare, because the whole-file hash in `FILE_END` catches one and the file is then
//!   sent again whole. rsync takes `(10 + 2·log₂ len − log₂ block_size)` bits, credits
//!   the weak checksum with 32 of them and keeps the rest (3 bytes for 512 MiB); here
//!   the weak checksum is credited nothing (it is weak on structured data), and 64 bits
//!   cover that rule for every file up to 16 GiB (61 bits there). For unrelated data,
//!   the chance that any of the at most `new_len × blocks` comparisons of a transfer is a
//!   false match is below `new_len × blocks / 2⁶⁴` even if every weak checksum matched:
//!   about 2⁻¹⁹ for 1 GiB against 32,768 blocks, and ≈ 2⁻⁵¹ with the weak checksum's 32
//!   random bits. A client crafting a collision on purpose only corrupts its own file,
//!   which the whole-file hash (full 32 bytes) catches.
//!
//! # What matches where
//!
//! Full blocks match at any offset of the new file. Where several old blocks have the
//! same content, the one following the previous match is preferred (rsync's `want_i`),
//! so runs coalesce into one `Copy`. The old file's short last block (when its length is
//! not a multiple of the block size) matches, as in rsync, at the very end of the new
//! file; and, unlike rsync, also right after a match of the block before it (or at the
//! start of the new file when it is the only block). That second place is the append
//! case (a log that grew, an interrupted transfer being resumed), which then costs
//! exactly the appended bytes. Elsewhere a short last block is not looked for (that
//! would need a second rolling window for a gain below one block).
//!
//! # Throughput
//!
//! `cargo run --release -p filesync-core --example delta_speed` on the 2-core AMD EPYC
//! development machine (one core used; BLAKE3 picks AVX-512 at run time, the rest is
//! plain x86-64), 512 MiB of random data in memory, 4 KiB changed in the middle:
//!
//! | step                                          | MB/s        |
//! |-----------------------------------------------|------------:|
//! | [`file_hash`] (BLAKE3 alone, for comparison)  | ~4400       |
//! | [`Signature::compute`]                        | ~2200       |
//! | [`Matcher::run`], 4 KiB changed               | ~2000       |
//! | [`apply`] (to a sink, hashing)                | ~4000       |
//! | [`Matcher::run`], unrelated data (all literal)| ~300–350    |
//!
//! On matching data the matcher skips a whole block per match: one XXH3 of the block,
//! compared first with the block that would extend the run (so no weak checksum while
//! blocks keep matching; otherwise one from scratch, ~10 GB/s, vectorized like
//! Adler-32), plus the whole-file hash. On literal data it rolls one byte at a time and probes two bitmaps
//! (a prefilter in the spirit of rsync's tag table; the hash table is looked at for ≈ 1
//! window in 4000), ~3 ns a byte.
//!
//! # For the caller
//!
//! - The matcher hashes the new file as it reads it ([`DeltaSummary::new_hash`]): no
//!   second pass is needed for the whole-file hash.
//! - The signature's blocks and the ops refer to the old file *as it was signed*: the
//!   server must apply to the same content (keep the file open, or check size/mtime), and
//!   the final hash comparison catches the rest.
//! - [`delta_worthwhile`] says whether to start; [`should_fall_back`] (from the
//!   [`DeltaProgress`] passed with every op) says when the data turns out unrelated.
//!   A delta that fell back before any `Copy` needs no whole-file hash: its output is
//!   its literal bytes ([`Applier::hash_lazily`] spares the receiver hashing them).
//! - The receiver gets the new file's signature for free while applying
//!   ([`Applier::sign`]): blocks copied in place keep the old checksums, the others are
//!   hashed as they are written ([`Signer`]).

mod apply;
mod hash_thread;
mod matcher;
mod signature;
mod weak;

pub use apply::{apply, Applied, Applier};
pub use matcher::{compute_delta, DeltaOp, DeltaProgress, DeltaSummary, Matcher, MAX_COPY_RUN};
pub use signature::{file_hash, strong_checksum, BlockLayout, BlockSig, Signature, Signer};
pub use weak::{weak_checksum, Rolling};

/// The smallest block size [`block_size`] chooses, in bytes (rsync's `BLOCK_SIZE`).
pub const MIN_BLOCK_SIZE: u32 = 700;

/// The largest block size, in bytes (rsync's `MAX_BLOCK_SIZE` for protocol ≥ 30): also the
/// largest a [`Signature`] may declare.
pub const MAX_BLOCK_SIZE: u32 = 128 * 1024;

/// The most bytes one [`DeltaOp::Literal`] carries.
pub const MAX_LITERAL: usize = 256 * 1024;

/// The length of a block's strong hash, in bytes (an XXH3-64): see the
/// [module documentation](self#checksums) for why 8 are enough.
pub const STRONG_LEN: usize = 8;

/// The bytes one block adds to a postcard-encoded [`Signature`]: the weak checksum as 4
/// fixed bytes and the strong one.
pub const BLOCK_SIG_WIRE_LEN: u64 = 4 + STRONG_LEN as u64;

/// Files (old or new) shorter than this, in bytes, are sent whole: the signature's round
/// trip costs more than it could save. See [`delta_worthwhile`].
pub const DELTA_MIN_FILE_LEN: u64 = 64 * 1024;

/// A default for the `round_trip_bytes` of [`delta_worthwhile`]: what a ~1 Gbit/s link
/// carries in ~0.5 ms.
pub const DEFAULT_ROUND_TRIP_BYTES: u64 = 64 * 1024;

/// The most blocks [`block_size`] makes of a file unless its blocks would exceed
/// [`MAX_BLOCK_SIZE`]: 80,000 blocks are a signature of at most 960,020 bytes, which fits
/// one frame (1 MiB) with 64 KiB to spare.
pub const MAX_SIGNATURE_BLOCKS: u64 = 80_000;

/// The block size, in bytes, for signing a file of `file_len` bytes: rsync's rule, with
/// blocks made larger where it would give more than [`MAX_SIGNATURE_BLOCKS`].
///
/// 700 ([`MIN_BLOCK_SIZE`]) up to 490,000 bytes; then ⌊√file_len⌋ rounded down to a
/// multiple of 8; from 80,000² bytes (about 6 GiB) on, ⌈file_len / 80,000⌉ rounded up to
/// a multiple of 8; at most 128 KiB ([`MAX_BLOCK_SIZE`]), from about 9.8 GiB on. Monotone
/// in `file_len`. See the [module documentation](self) for the reasoning and sizes.
pub fn block_size(file_len: u64) -> u32 {
    let min = u64::from(MIN_BLOCK_SIZE);
    if file_len <= min * min {
        return MIN_BLOCK_SIZE;
    }
    let root = file_len.isqrt() & !7;
    let fitting = file_len.div_ceil(MAX_SIGNATURE_BLOCKS).next_multiple_of(8);
    let size = root.max(fitting).min(u64::from(MAX_BLOCK_SIZE));
    // size ≤ 2^17 here, so the cast is lossless.
    (size as u32).max(MIN_BLOCK_SIZE)
}

/// The number of blocks of `block_size` bytes covering `file_len` bytes (the last one may
/// be short): ⌈file_len / block_size⌉. `block_size` must not be 0.
pub fn block_count(file_len: u64, block_size: u32) -> u64 {
    file_len.div_ceil(u64::from(block_size))
}

/// An upper bound, in bytes, of the postcard encoding of the [`Signature`] of a file of
/// `file_len` bytes signed with [`block_size`]`(file_len)`: [`BLOCK_SIG_WIRE_LEN`] per
/// block plus at most 20 bytes of varint header (block size, length, block count).
pub fn signature_wire_len(file_len: u64) -> u64 {
    block_count(file_len, block_size(file_len)) * BLOCK_SIG_WIRE_LEN + 20
}

/// Whether a block delta is worth trying, from the sizes alone, against sending the new
/// file whole.
///
/// A delta costs the signature (server to client, [`signature_wire_len`]`(old_len)`) and
/// one more round trip before any data flows (`round_trip_bytes`: what the link carries
/// during one, [`DEFAULT_ROUND_TRIP_BYTES`] if unknown); it saves at most
/// `min(old_len, new_len)` bytes. It is tried when both files have at least
/// [`DELTA_MIN_FILE_LEN`] bytes and that best case saves at least 4 times the cost.
///
/// The content may still turn out unrelated: literal data costs as much as the whole file
/// plus a few bytes of framing, so a delta that matched nothing loses only the signature
/// and the round trip, but the matcher is slower on literal data than a plain send; see
/// [`should_fall_back`].
pub fn delta_worthwhile(old_len: u64, new_len: u64, round_trip_bytes: u64) -> bool {
    if old_len < DELTA_MIN_FILE_LEN || new_len < DELTA_MIN_FILE_LEN {
        return false;
    }
    let cost = signature_wire_len(old_len).saturating_add(round_trip_bytes);
    old_len.min(new_len) >= cost.saturating_mul(4)
}

/// The new-file bytes that [`should_fall_back`] looks at before judging, 1 MiB.
///
/// Matching literal data runs at ~300 MB/s, against ~1.2 GB/s for a plain send on
/// loopback: each MiB looked at costs a file rewritten whole ~3 ms. At 16 MiB a 512 MiB
/// rewrite took 1.06 times its `--whole-file` send; at 1 MiB, 0.92–1.0 times (tmpfs, 11
/// runs interleaved, `bench/README.md`).
pub const FALL_BACK_AFTER: u64 = 1024 * 1024;

/// Whether a sender should abandon a delta under way and send the rest of the file
/// whole: at least [`FALL_BACK_AFTER`] bytes of the new file were covered and at least
/// 90 % of them were literal.
///
/// A heuristic for CPU, not for bandwidth: literal bytes cost what whole-file bytes cost
/// on the wire, but finding them costs one roll and one probe per byte. A file whose
/// first MiB was rewritten and whose rest is unchanged loses its later matches when
/// this is followed; callers who prefer bandwidth to CPU ignore it (`sync` follows it).
pub fn should_fall_back(progress: &DeltaProgress) -> bool {
    progress.scanned() >= FALL_BACK_AFTER
        && u128::from(progress.literal) * 10 >= u128::from(progress.scanned()) * 9
}

#[cfg(test)]
mod tests;

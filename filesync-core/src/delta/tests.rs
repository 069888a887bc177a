//! Tests of the whole engine: signature, matcher and applier together.

use std::io::{self, Cursor, ErrorKind, Read};

use proptest::prelude::*;

use super::*;

/// Deterministic pseudo-random bytes (xorshift64*).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        out.extend_from_slice(&s.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A reader that returns at most `step` bytes per read and, every third read,
/// `Interrupted` first: the matcher must not care how its input is cut.
struct Choppy<'a> {
    data: &'a [u8],
    step: usize,
    calls: u32,
}

impl Read for Choppy<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.calls.is_multiple_of(3) {
            return Err(io::Error::new(ErrorKind::Interrupted, "again"));
        }
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Signs `old` with blocks of `bs`, matches `new` (read in pieces of `step` bytes), checks
/// the ops' invariants, rebuilds `new` and checks it and its hash.
fn roundtrip_with(old: &[u8], new: &[u8], bs: u32, step: usize) -> (Vec<DeltaOp>, DeltaSummary) {
    let sig = Signature::compute_with_block_size(old, old.len() as u64, bs).unwrap();
    sig.validate().unwrap();
    let reader = Choppy {
        data: new,
        step,
        calls: 0,
    };
    let mut seen = Vec::new();
    let summary = Matcher::new(&sig)
        .unwrap()
        .run(reader, |op, progress| {
            seen.push((op, *progress));
            Ok(())
        })
        .unwrap();
    let ops: Vec<DeltaOp> = seen.iter().map(|(op, _)| op.clone()).collect();

    // Invariants of the op stream.
    let layout = sig.layout();
    let mut progress = DeltaProgress::default();
    let mut prev_copy: Option<(u32, u32, u64)> = None;
    for (op, reported) in &seen {
        match op {
            DeltaOp::Copy { block, count } => {
                let (_, len) = layout.range(*block, *count).expect("copy in range");
                if let Some((b, c, bytes)) = prev_copy {
                    assert!(
                        b + c != *block || bytes >= MAX_COPY_RUN,
                        "uncoalesced copies in {ops:?}"
                    );
                }
                prev_copy = Some((*block, *count, len));
                progress.copied += len;
            }
            DeltaOp::Literal(bytes) => {
                assert!(!bytes.is_empty() && bytes.len() <= MAX_LITERAL);
                prev_copy = None;
                progress.literal += bytes.len() as u64;
            }
        }
        assert_eq!(*reported, progress, "progress includes the op");
    }
    assert_eq!(summary.progress, progress);
    assert_eq!(progress.scanned(), new.len() as u64);
    assert_eq!(summary.new_len, new.len() as u64);
    assert_eq!(summary.ops, ops.len() as u64);
    let hash = file_hash(new).unwrap();
    assert_eq!(summary.new_hash, hash);
    assert_eq!(hash, *blake3::hash(new).as_bytes());

    // Rebuild.
    let mut out = Vec::new();
    let applied = apply(Cursor::new(old), layout, ops.iter().cloned(), &mut out).unwrap();
    assert!(out == new, "rebuilt file differs");
    assert_eq!(
        applied,
        Applied {
            len: new.len() as u64,
            hash
        }
    );

    // Rebuilt and signed as it is written, reusing the old checksums where it can: the
    // same signature as reading the new file again. Hashed on a thread of its own: the
    // same hash.
    let mut applier = Applier::new(Cursor::new(old), layout, Vec::new()).unwrap();
    applier.sign(new.len() as u64, Some(sig.clone())).unwrap();
    applier.hash_in_background();
    for op in &ops {
        applier.op(op).unwrap();
    }
    let (applied_bg, out, signed) = applier.finish_signed().unwrap();
    assert!(
        out == new,
        "rebuilt file differs (hashed in the background)"
    );
    assert_eq!(applied_bg, applied, "hashed in the background");
    assert_eq!(
        signed,
        Some(Signature::compute(new, new.len() as u64).unwrap()),
        "the signature made while applying"
    );

    // File to file, the copies inside the kernel: the same file, hash and signature.
    let (out, applied_files, signed) = apply_files(old, &sig, &ops, new.len() as u64);
    assert!(out == new, "rebuilt file differs (copied in the kernel)");
    assert_eq!(applied_files, applied, "copied in the kernel");
    assert_eq!(
        signed,
        Some(Signature::compute(new, new.len() as u64).unwrap()),
        "the signature made while copying in the kernel"
    );
    (ops, summary)
}

/// Applies `ops` from a file holding `old` to a file, signing the output (a file of
/// `new_len` bytes) with `sig`'s help and copying in the kernel; returns the output's
/// bytes, what the applier reported and the signature.
fn apply_files(
    old: &[u8],
    sig: &Signature,
    ops: &[DeltaOp],
    new_len: u64,
) -> (Vec<u8>, Applied, Option<Signature>) {
    let dir = tempfile::tempdir().unwrap();
    let mut applier = kernel_applier(dir.path(), old, sig.layout());
    applier.sign(new_len, Some(sig.clone())).unwrap();
    for op in ops {
        applier.op(op).unwrap();
    }
    let (applied, _, signed) = applier.finish_signed().unwrap();
    (
        std::fs::read(dir.path().join("new")).unwrap(),
        applied,
        signed,
    )
}

/// An applier from `dir/old` (holding `old`, laid out as `layout`) to `dir/new`,
/// copying in the kernel and hashing what it wrote, read back from `dir/new`.
fn kernel_applier(
    dir: &std::path::Path,
    old: &[u8],
    layout: BlockLayout,
) -> Applier<std::fs::File, std::fs::File> {
    std::fs::write(dir.join("old"), old).unwrap();
    let out = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dir.join("new"))
        .unwrap();
    let written = out.try_clone().unwrap();
    let old_file = std::fs::File::open(dir.join("old")).unwrap();
    let mut applier = Applier::new(old_file, layout, out).unwrap();
    applier.copy_in_kernel(written);
    applier
}

/// Copied in the kernel from an old file that has shrunk since it was signed: an
/// `UnexpectedEof` error, as when copying through a buffer.
#[test]
fn a_kernel_copy_from_a_shrunk_old_file_is_an_error() {
    let old = noise(33, 1 << 20);
    let sig = Signature::compute(&old[..], old.len() as u64).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut applier = kernel_applier(dir.path(), &old[..old.len() / 2], sig.layout());
    let blocks = sig.blocks.len() as u32;
    let err = applier.copy(0, blocks).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnexpectedEof, "{err}");
    assert!(err.to_string().contains("shorter"), "{err}");
}

/// Copied in the kernel, the hash is of the output as read back from the file given for
/// it, not of bytes that passed through the applier: given another file to read, the
/// hash is that file's, and the output is still right.
#[test]
fn copies_in_the_kernel_are_hashed_from_the_file_written() {
    let old = noise(31, 1 << 20);
    let mut new = old.clone();
    new[500_000..504_096].fill(0x5A);
    let sig = Signature::compute(&old[..], old.len() as u64).unwrap();
    let (ops, _) = compute_delta(&sig, &new[..]).unwrap();
    assert!(ops.iter().any(|op| matches!(op, DeltaOp::Copy { .. })));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("old"), &old).unwrap();
    // The decoy: the same length, other bytes.
    let decoy = noise(32, new.len());
    std::fs::write(dir.path().join("decoy"), &decoy).unwrap();
    let out = std::fs::File::create(dir.path().join("new")).unwrap();
    let mut applier = Applier::new(
        std::fs::File::open(dir.path().join("old")).unwrap(),
        sig.layout(),
        out,
    )
    .unwrap();
    applier.copy_in_kernel(std::fs::File::open(dir.path().join("decoy")).unwrap());
    for op in &ops {
        applier.op(op).unwrap();
    }
    let (applied, _) = applier.finish().unwrap();
    assert!(std::fs::read(dir.path().join("new")).unwrap() == new);
    assert_ne!(applied.hash, *blake3::hash(&new).as_bytes());
    // Literal bytes are hashed as passed; copied ranges as read from the decoy.
    let mut expect = blake3::Hasher::new();
    let mut at = 0usize;
    for op in &ops {
        match op {
            DeltaOp::Copy { block, count } => {
                let (_, len) = sig.layout().range(*block, *count).unwrap();
                expect.update(&decoy[at..at + len as usize]);
                at += len as usize;
            }
            DeltaOp::Literal(b) => {
                expect.update(b);
                at += b.len();
            }
        }
    }
    assert_eq!(applied.hash, *expect.finalize().as_bytes());
}

fn roundtrip(old: &[u8], new: &[u8], bs: u32) -> (Vec<DeltaOp>, DeltaSummary) {
    roundtrip_with(old, new, bs, usize::MAX)
}

fn literal_bytes(s: &DeltaSummary) -> u64 {
    s.progress.literal
}

#[test]
fn block_size_follows_rsync() {
    assert_eq!(block_size(0), 700);
    assert_eq!(block_size(490_000), 700);
    assert_eq!(block_size(490_001), 700);
    assert_eq!(block_size(704 * 704 - 1), 700);
    assert_eq!(block_size(704 * 704), 704);
    assert_eq!(block_size(1 << 20), 1024);
    assert_eq!(block_size(8 << 20), 2896);
    assert_eq!(block_size(512 << 20), 23_168);
    assert_eq!(block_size(1 << 30), 32_768);
    // rsync's rule up to 80,000² bytes; then blocks that keep 80,000 of them at most.
    assert_eq!(block_size(80_000 * 80_000), 80_000);
    assert_eq!(block_size(80_000 * 80_000 + 1), 80_008);
    assert_eq!(block_size(8 << 30), 107_376);
    assert_eq!(block_size(80_000 * 131_072), MAX_BLOCK_SIZE);
    assert_eq!(block_size(80_000 * 131_072 + 1), MAX_BLOCK_SIZE);
    assert_eq!(block_size(1 << 34), MAX_BLOCK_SIZE);
    assert_eq!(block_size(u64::MAX), MAX_BLOCK_SIZE);
    // Monotone, and never more than 80,000 blocks while the blocks may grow.
    let mut lens: Vec<u64> = (0..=(11u64 << 30)).step_by(97_331_977).collect();
    lens.extend([80_000 * 80_000, 1 << 33]);
    lens.sort_unstable();
    let mut last = 0;
    for len in lens {
        let bs = block_size(len);
        assert!(bs >= last, "{len}");
        last = bs;
        if bs < MAX_BLOCK_SIZE {
            assert!(block_count(len, bs) <= MAX_SIGNATURE_BLOCKS, "{len}");
        }
    }
}

#[test]
fn signature_sizes() {
    // (file, blocks, upper bound of the postcard size)
    let cases: [(u64, u64, u64); 5] = [
        (1 << 20, 1024, 12 * 1024 + 20),
        (512 << 20, 23_173, 23_173 * 12 + 20),
        (1 << 30, 32_768, 32_768 * 12 + 20),
        (8 << 30, 79_999, 79_999 * 12 + 20),
        (16 << 30, 131_072, 131_072 * 12 + 20),
    ];
    for (len, blocks, wire) in cases {
        assert_eq!(block_count(len, block_size(len)), blocks, "{len}");
        assert_eq!(signature_wire_len(len), wire, "{len}");
    }
    // At most 0.1 % of the file from 512 MiB on.
    for len in [512u64 << 20, 1 << 30, 16 << 30, 1 << 40] {
        assert!(signature_wire_len(len) * 1000 <= len, "{len}");
    }
    // The real encoding of a 1 MiB file's signature.
    let data = noise(1, 1 << 20);
    let sig = Signature::compute(&data[..], data.len() as u64).unwrap();
    let bytes = postcard::to_allocvec(&sig).unwrap();
    assert!(bytes.len() as u64 <= signature_wire_len(data.len() as u64));
    assert!(bytes.len() as u64 >= 1024 * BLOCK_SIG_WIRE_LEN);
    let back: Signature = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, sig);
}

#[test]
fn identical_files_are_one_copy() {
    let data = noise(2, 1 << 20);
    let bs = block_size(data.len() as u64);
    let (ops, s) = roundtrip(&data, &data, bs);
    assert_eq!(literal_bytes(&s), 0);
    assert_eq!(
        ops,
        vec![DeltaOp::Copy {
            block: 0,
            count: 1024
        }]
    );
    // With a short last block too.
    let data = &data[..data.len() - 100];
    let (ops, s) = roundtrip(data, data, bs);
    assert_eq!(literal_bytes(&s), 0);
    assert_eq!(
        ops,
        vec![DeltaOp::Copy {
            block: 0,
            count: 1024
        }]
    );
}

#[test]
fn four_kib_changed_in_the_middle_of_8_mib() {
    let old = noise(3, 8 << 20);
    let bs = block_size(old.len() as u64);
    let mut new = old.clone();
    let mid = old.len() / 2 + 123;
    new[mid..mid + 4096].copy_from_slice(&noise(4, 4096));
    let (ops, s) = roundtrip(&old, &new, bs);
    assert!(literal_bytes(&s) <= 4096 + 2 * u64::from(bs), "{s:?}");
    assert_eq!(ops.len(), 3, "copy, literal, copy");
    assert_eq!(s.false_alarms, 0);

    // 4 KiB inserted instead: everything after shifts.
    let mut new = old[..mid].to_vec();
    new.extend_from_slice(&noise(5, 4096));
    new.extend_from_slice(&old[mid..]);
    let (_, s) = roundtrip(&old, &new, bs);
    assert!(literal_bytes(&s) <= 4096 + 2 * u64::from(bs), "{s:?}");

    // 4 KiB deleted.
    let mut new = old[..mid].to_vec();
    new.extend_from_slice(&old[mid + 4096..]);
    let (_, s) = roundtrip(&old, &new, bs);
    assert!(literal_bytes(&s) <= 2 * u64::from(bs), "{s:?}");
}

#[test]
fn one_byte_shift_costs_one_byte() {
    let old = noise(6, 200_000);
    let mut new = vec![0x55];
    new.extend_from_slice(&old);
    let (ops, s) = roundtrip(&old, &new, 700);
    assert_eq!(literal_bytes(&s), 1);
    assert_eq!(ops.len(), 2);
    // And one byte removed at the start: the first block is lost, nothing more.
    let (_, s) = roundtrip(&old, &old[1..], 700);
    assert!(literal_bytes(&s) < 700);
}

#[test]
fn appended_data_costs_only_the_appended_bytes() {
    // 100_000 = 142 × 700 + 600: a short last block, which must match in place.
    let old = noise(7, 100_000);
    let mut new = old.clone();
    new.extend_from_slice(&noise(8, 5000));
    let (ops, s) = roundtrip(&old, &new, 700);
    assert_eq!(literal_bytes(&s), 5000);
    assert_eq!(
        ops[0],
        DeltaOp::Copy {
            block: 0,
            count: 143
        }
    );
    assert_eq!(ops.len(), 2);
    // The resume case: the server holds the first part of the file.
    let (_, s) = roundtrip(&new[..77_777], &new, 700);
    assert_eq!(literal_bytes(&s), new.len() as u64 - 77_777);
}

#[test]
fn truncated_new_file() {
    let old = noise(9, 100_000);
    let (ops, s) = roundtrip(&old, &old[..49_750], 700);
    assert_eq!(literal_bytes(&s), 50);
    assert_eq!(
        ops[0],
        DeltaOp::Copy {
            block: 0,
            count: 71
        }
    );
}

#[test]
fn empty_and_tiny_files() {
    let data = noise(10, 3000);
    let (ops, s) = roundtrip(b"", &data, 700);
    assert_eq!((ops.len(), literal_bytes(&s)), (1, 3000));
    let (ops, _) = roundtrip(&data, b"", 700);
    assert!(ops.is_empty());
    let (ops, s) = roundtrip(b"", b"", 700);
    assert!(ops.is_empty());
    assert_eq!(s.new_hash, *blake3::hash(b"").as_bytes());

    // Old shorter than one block: its one short block matches at the start…
    let old = &data[..100];
    let (ops, s) = roundtrip(old, &data, 700);
    assert_eq!(ops[0], DeltaOp::Copy { block: 0, count: 1 });
    assert_eq!(literal_bytes(&s), 2900);
    // …and at the end.
    let mut new = noise(11, 500);
    new.extend_from_slice(old);
    let (ops, s) = roundtrip(old, &new, 700);
    assert_eq!(ops[1], DeltaOp::Copy { block: 0, count: 1 });
    assert_eq!(literal_bytes(&s), 500);
    // Old equal to new, shorter than a block.
    let (ops, _) = roundtrip(old, old, 700);
    assert_eq!(ops, vec![DeltaOp::Copy { block: 0, count: 1 }]);
}

#[test]
fn unrelated_data_is_literal_in_bounded_chunks() {
    let old = noise(12, 1 << 20);
    let new = noise(13, (1 << 20) + 12345);
    let (ops, s) = roundtrip_with(&old, &new, 1024, 7777);
    assert_eq!(literal_bytes(&s), new.len() as u64);
    assert_eq!(ops.len(), 5);
    assert!(ops
        .iter()
        .all(|op| matches!(op, DeltaOp::Literal(b) if b.len() <= MAX_LITERAL)));
}

#[test]
fn long_literals_between_matches_and_choppy_reads() {
    // old A B C; new A X(600 KiB) B C: literal runs past MAX_LITERAL between matches, and
    // the buffer is compacted while reads come in odd pieces.
    let old = noise(14, 300_000);
    let mut new = old[..100_000].to_vec();
    new.extend_from_slice(&noise(15, 600 * 1024));
    new.extend_from_slice(&old[100_000..]);
    for step in [1 << 20, 4093, 700, 1] {
        let (_, s) = roundtrip_with(&old, &new, 1000, step);
        assert_eq!(literal_bytes(&s), 600 * 1024, "step {step}");
    }
}

#[test]
fn repeated_blocks_coalesce() {
    // All zeros: every block has the same checksums; the run must still be one op.
    let old = vec![0u8; 100_000];
    let new = vec![0u8; 150_000];
    let (ops, _) = roundtrip(&old, &new, 700);
    // 150_000 = 100_000 + 71 × 700 + 300, and 300 bytes are too few for the short block.
    assert_eq!(
        ops,
        vec![
            DeltaOp::Copy {
                block: 0,
                count: 143
            },
            DeltaOp::Copy {
                block: 0,
                count: 71
            },
            DeltaOp::Literal(vec![0; 300]),
        ]
    );
}

#[test]
fn emit_error_stops_the_run() {
    let old = noise(16, 100_000);
    let new = noise(17, 100_000);
    let sig = Signature::compute(&old[..], old.len() as u64).unwrap();
    let mut calls = 0;
    let err = Matcher::new(&sig)
        .unwrap()
        .run(&new[..], |_, _| {
            calls += 1;
            Err(io::Error::other("enough"))
        })
        .unwrap_err();
    assert_eq!(err.to_string(), "enough");
    assert_eq!(calls, 1);
}

#[test]
fn bad_input_is_an_error() {
    let old = noise(18, 10_000);
    // The reader ends early.
    let e = Signature::compute(&old[..], 10_001).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnexpectedEof);
    // Bad block sizes.
    for bs in [0, MAX_BLOCK_SIZE + 1] {
        let e = Signature::compute_with_block_size(&old[..], 10_000, bs).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }
    // A signature from a peer with the wrong block count.
    let mut sig = Signature::compute(&old[..], old.len() as u64).unwrap();
    sig.blocks.pop();
    assert_eq!(
        Matcher::new(&sig).unwrap_err().kind(),
        ErrorKind::InvalidData
    );
    sig.file_len = 0;
    sig.block_size = 0;
    assert_eq!(sig.validate().unwrap_err().kind(), ErrorKind::InvalidData);

    // Copies out of range, and an old file shorter than its layout.
    let layout = BlockLayout {
        block_size: 700,
        file_len: 10_000,
    };
    for (block, count) in [(15, 1), (0, 0), (14, 2), (u32::MAX, u32::MAX)] {
        let e = apply(
            Cursor::new(&old),
            layout,
            [DeltaOp::Copy { block, count }],
            io::sink(),
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidData, "{block} {count}");
    }
    let e = apply(
        Cursor::new(&old[..5000]),
        layout,
        [DeltaOp::Copy {
            block: 0,
            count: 15,
        }],
        io::sink(),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnexpectedEof);
    // The last (short) block alone.
    let mut out = Vec::new();
    apply(
        Cursor::new(&old),
        layout,
        [DeltaOp::Copy {
            block: 14,
            count: 1,
        }],
        &mut out,
    )
    .unwrap();
    assert_eq!(out, &old[9800..]);
}

#[test]
fn cost_model() {
    let rt = DEFAULT_ROUND_TRIP_BYTES;
    assert!(!delta_worthwhile(10_000, 10_000, rt));
    assert!(!delta_worthwhile(1 << 30, 1000, rt));
    assert!(delta_worthwhile(1 << 20, 1 << 20, rt));
    assert!(delta_worthwhile(1 << 30, 1 << 30, rt));
    // A small old file can save little against a large new one's round trip.
    assert!(!delta_worthwhile(100 << 10, 1 << 30, rt));
    // A slow-to-answer link (4 MiB per round trip) needs larger files.
    assert!(!delta_worthwhile(8 << 20, 8 << 20, 4 << 20));
    assert!(delta_worthwhile(64 << 20, 64 << 20, 4 << 20));

    let p = |copied, literal| DeltaProgress { copied, literal };
    // Judged from the first MiB on, by the share of literal bytes (90 %).
    assert!(!should_fall_back(&p(0, (1 << 20) - 1)));
    assert!(should_fall_back(&p(0, 1 << 20)));
    assert!(should_fall_back(&p(100 << 10, 924 << 10)));
    assert!(!should_fall_back(&p(110 << 10, 914 << 10)));
    assert!(should_fall_back(&p(1 << 20, 15 << 20)));
    assert!(!should_fall_back(&p(4 << 20, 12 << 20)));
}

/// An edit of a file, positions taken modulo its length at the time.
#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Replace(usize, Vec<u8>),
    Append(Vec<u8>),
    Truncate(usize),
    ShiftByOne(u8),
}

fn edit(mut data: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let at = |p: usize| {
            if data.is_empty() {
                0
            } else {
                p % (data.len() + 1)
            }
        };
        match e {
            Edit::Insert(p, bytes) => {
                let p = at(*p);
                data.splice(p..p, bytes.iter().copied());
            }
            Edit::Delete(p, n) => {
                let p = at(*p);
                let end = (p + n).min(data.len());
                data.drain(p..end);
            }
            Edit::Replace(p, bytes) => {
                let p = at(*p);
                let end = (p + bytes.len()).min(data.len());
                data.splice(p..end, bytes.iter().copied());
            }
            Edit::Append(bytes) => data.extend_from_slice(bytes),
            Edit::Truncate(n) => {
                let keep = at(*n);
                data.truncate(keep);
            }
            Edit::ShiftByOne(b) => data.insert(0, *b),
        }
    }
    data
}

/// Bytes of either full entropy or two values only (many equal blocks, weak collisions).
fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..max),
        proptest::collection::vec(0u8..2, 0..max),
    ]
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let e = prop_oneof![
        (any::<usize>(), bytes(200)).prop_map(|(p, b)| Edit::Insert(p, b)),
        (any::<usize>(), 0usize..300).prop_map(|(p, n)| Edit::Delete(p, n)),
        (any::<usize>(), bytes(200)).prop_map(|(p, b)| Edit::Replace(p, b)),
        bytes(300).prop_map(Edit::Append),
        any::<usize>().prop_map(Edit::Truncate),
        any::<u8>().prop_map(Edit::ShiftByOne),
    ];
    proptest::collection::vec(e, 0..5)
}

#[test]
fn applying_a_delta_reuses_the_checksums_of_blocks_copied_in_place() {
    let old = noise(21, 2 << 20);
    let mut new = old.clone();
    new[(1 << 20) + 5..(1 << 20) + 5 + 4096].fill(0xAB);
    let sig = Signature::compute(&old[..], old.len() as u64).unwrap();
    let (ops, _) = compute_delta(&sig, &new[..]).unwrap();
    // Mark every old block's checksums: a block whose checksums were reused shows the mark.
    let mut marked = sig.clone();
    for b in &mut marked.blocks {
        b.strong = [0xEE; STRONG_LEN];
    }
    let mut applier = Applier::new(Cursor::new(&old[..]), sig.layout(), Vec::new()).unwrap();
    applier.sign(new.len() as u64, Some(marked)).unwrap();
    for op in &ops {
        applier.op(op).unwrap();
    }
    let (_, out, signed) = applier.finish_signed().unwrap();
    assert!(out == new);
    let signed = signed.unwrap();
    let computed = Signature::compute(&new[..], new.len() as u64).unwrap();
    let changed: Vec<usize> = (0..computed.blocks.len())
        .filter(|&i| computed.blocks[i] != sig.blocks[i])
        .collect();
    assert_eq!(changed.len(), 3, "{changed:?}");
    for (i, b) in signed.blocks.iter().enumerate() {
        // The short last block is hashed, never reused.
        if changed.contains(&i) || i + 1 == signed.blocks.len() {
            assert_eq!(*b, computed.blocks[i], "block {i} was hashed");
        } else {
            assert_eq!(b.strong, [0xEE; STRONG_LEN], "block {i} was reused");
        }
    }

    // A signature of another layout is not used.
    let other = Signature::compute_with_block_size(&old[..], old.len() as u64, 1000).unwrap();
    let mut applier = Applier::new(Cursor::new(&old[..]), sig.layout(), Vec::new()).unwrap();
    applier.sign(new.len() as u64, Some(other)).unwrap();
    for op in &ops {
        applier.op(op).unwrap();
    }
    assert_eq!(applier.finish_signed().unwrap().2, Some(computed));
}

#[test]
fn a_lazy_applier_hashes_from_the_first_copy_on() {
    let old = noise(23, 100_000);
    let sig = Signature::compute_with_block_size(&old[..], old.len() as u64, 1000).unwrap();
    let lit = noise(24, 3000);
    let mut new = lit.clone();
    new.extend_from_slice(&old[..2000]);
    new.extend_from_slice(b"tail");

    for background in [false, true] {
        // All literal: nothing hashed, nothing copied.
        let mut a = Applier::new(Cursor::new(&old[..]), sig.layout(), Vec::new()).unwrap();
        a.hash_lazily();
        if background {
            a.hash_in_background();
        }
        a.literal(&lit).unwrap();
        assert_eq!(a.unhashed(), 3000);
        assert!(!a.copied());

        // A copy after literal bytes waits for them to be handed back.
        let err = a.copy(0, 2).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(
            a.catch_up(&lit[..2999]).is_err(),
            "fewer bytes than written"
        );
        a.catch_up(&lit[..]).unwrap();
        assert_eq!(a.unhashed(), 0);
        a.copy(0, 2).unwrap();
        a.literal(b"tail").unwrap();
        assert!(a.copied());
        assert_eq!(a.unhashed(), 0);
        let (applied, out) = a.finish().unwrap();
        assert!(out == new);
        assert_eq!(
            applied.hash,
            *blake3::hash(&new).as_bytes(),
            "background {background}"
        );
    }
}

#[test]
fn long_runs_of_copies_are_cut_so_the_receiver_can_start() {
    let data = noise(25, 9 << 20);
    let bs = block_size(data.len() as u64);
    assert_eq!(bs, 3072);
    let (ops, s) = roundtrip(&data, &data, bs);
    assert_eq!(literal_bytes(&s), 0);
    // 1366 blocks are the first to reach MAX_COPY_RUN (4 MiB) bytes.
    assert_eq!(
        ops,
        vec![
            DeltaOp::Copy {
                block: 0,
                count: 1366
            },
            DeltaOp::Copy {
                block: 1366,
                count: 1366
            },
            DeltaOp::Copy {
                block: 2732,
                count: 340
            },
        ]
    );
}

#[test]
fn a_signer_needs_exactly_the_file_length() {
    let data = noise(22, 5000);
    let mut s = Signer::new(5000).unwrap();
    s.update(&data[..4999]);
    assert!(s.finish().is_err());
    let mut s = Signer::new(5000).unwrap();
    s.update(&data);
    s.update(b"x");
    assert!(s.finish().is_err());
    // No reuse for the short last block, nor in the middle of a block.
    let mut s = Signer::new(1000).unwrap();
    assert!(s.can_reuse());
    s.update(&data[..10]);
    assert!(!s.can_reuse());
    s.update(&data[10..700]);
    assert!(!s.can_reuse(), "the 300-byte last block is short");
    assert!(!s.reuse(Signature::compute(&data[..300], 300).unwrap().blocks[0]));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_signer_fed_in_pieces_equals_compute(data in bytes(5000), cuts in proptest::collection::vec(0usize..5000, 0..6)) {
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
        cuts.push(0);
        cuts.push(data.len());
        cuts.sort_unstable();
        let mut s = Signer::new(data.len() as u64).unwrap();
        for w in cuts.windows(2) {
            s.update(&data[w[0]..w[1]]);
        }
        prop_assert_eq!(s.finish().unwrap(), Signature::compute(&data[..], data.len() as u64).unwrap());
    }

    #[test]
    fn edited_files_rebuild(
        old in bytes(4000),
        edits in edits(),
        bs in prop_oneof![1u32..8, 8u32..200, Just(700)],
        step in prop_oneof![Just(usize::MAX), 1usize..300],
    ) {
        let new = edit(old.clone(), &edits);
        let (_, s) = roundtrip_with(&old, &new, bs, step);
        if edits.is_empty() {
            prop_assert_eq!(s.progress.literal, 0);
        }
    }

    #[test]
    fn unrelated_files_rebuild(
        old in bytes(3000),
        new in bytes(3000),
        bs in 1u32..100,
    ) {
        roundtrip(&old, &new, bs);
    }

    #[test]
    fn identical_files_have_no_literal(old in bytes(5000), bs in 1u32..1000) {
        let (ops, s) = roundtrip(&old, &old, bs);
        prop_assert_eq!(s.progress.literal, 0);
        // Unique blocks (or equal ones, preferring the next) give a single run.
        if !old.is_empty() {
            prop_assert_eq!(ops.len(), 1);
        }
    }

    #[test]
    fn block_size_is_monotone_and_bounded(a in any::<u64>(), b in any::<u64>()) {
        let (lo, hi) = (a.min(b), a.max(b));
        let (x, y) = (block_size(lo), block_size(hi));
        prop_assert!(x <= y);
        for s in [x, y] {
            prop_assert!((MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&s));
            prop_assert!(s == MIN_BLOCK_SIZE || s % 8 == 0);
        }
        // ⌊√len⌋ rounded down to 8, between the bounds.
        if hi < 1 << 34 {
            prop_assert_eq!(u64::from(y), (hi.isqrt() & !7).max(700));
        }
    }
}

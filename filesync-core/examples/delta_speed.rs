//! Throughput of the block-delta engine ([`filesync_core::delta`]) on one core.
//!
//! `cargo run --release -p filesync-core --example delta_speed [MiB]` (default 512): signs
//! a buffer of random data, matches a copy with 4 KiB changed in the middle, rebuilds it,
//! then matches 64 MiB of unrelated data (all literal, the matcher's slowest case), and
//! prints the signature sizes of the block-size rule. Needs ~3 × the size in memory.
//!
//! Numbers on the 2-core AMD EPYC development machine (AVX-512 for BLAKE3), 512 MiB,
//! three runs:
//!
//! | step                                   | MB/s        |
//! |----------------------------------------|------------:|
//! | `file_hash` (BLAKE3 alone, baseline)   | 4370–4670   |
//! | `Signature::compute`                   | 5170 (2140–2470 with BLAKE3 block hashes) |
//! | match, 4 KiB changed                   | 4100 (1600–2170 with BLAKE3 block hashes) |
//! | apply (to a sink, hashing)             | 3590–4400   |
//! | match, unrelated 64 MiB (all literal)  |  300–360    |
//!
//! The block hashes became XXH3-64 instead of 8 bytes of BLAKE3: the matcher hashes every
//! block of a file that mostly matches, and the whole-file BLAKE3 is what guards
//! integrity.
//!
//! The signature is 23,173 blocks of 23,168 bytes, 278,087 bytes in postcard (0.052 %;
//! 463,471 with the 16-byte hashes of before); the 4 KiB change costs 129 ops (`COPY`
//! runs are cut at 4 MiB) and 23,168 literal bytes (one block: the change fell
//! within one).

use std::io::{self, Cursor};
use std::time::Instant;

use filesync_core::delta::{
    apply, block_size, file_hash, signature_wire_len, DeltaOp, Matcher, Signature,
};

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = vec![0u8; len];
    for chunk in out.chunks_mut(8) {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        let v = s.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    out
}

fn mbps(bytes: usize, t: Instant) -> String {
    let s = t.elapsed().as_secs_f64();
    format!("{:7.0} MB/s ({s:.3} s)", bytes as f64 / s / 1e6)
}

fn run_match(sig: &Signature, new: &[u8]) -> io::Result<(Vec<DeltaOp>, u64, u64)> {
    let matcher = Matcher::new(sig)?;
    let mut ops = Vec::new();
    let summary = matcher.run(new, |op, _| {
        ops.push(op);
        Ok(())
    })?;
    Ok((ops, summary.progress.literal, summary.false_alarms))
}

fn main() -> io::Result<()> {
    let mib: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("size in MiB"))
        .unwrap_or(512);
    let len = mib << 20;
    println!("{mib} MiB, block size {} B", block_size(len as u64));

    let old = noise(1, len);
    let mut new = old.clone();
    let mid = len / 2 + 1234;
    new[mid..mid + 4096].copy_from_slice(&noise(2, 4096));

    let t = Instant::now();
    let h = file_hash(&new[..])?;
    println!("file_hash (BLAKE3)       {}", mbps(len, t));

    let t = Instant::now();
    let sig = Signature::compute(&old[..], len as u64)?;
    println!("signature                {}", mbps(len, t));
    let wire = postcard::to_allocvec(&sig).expect("encode").len();
    println!(
        "  {} blocks, {wire} bytes in postcard ({:.3} % of the file)",
        sig.blocks.len(),
        wire as f64 * 100.0 / len as f64
    );

    let t = Instant::now();
    let (ops, literal, alarms) = run_match(&sig, &new)?;
    println!("match, 4 KiB changed     {}", mbps(len, t));
    println!(
        "  {} ops, {literal} literal bytes, {alarms} false alarms",
        ops.len()
    );

    let t = Instant::now();
    // To a sink: the hash checks the output, and page faults of a fresh 512 MiB buffer
    // would be most of the time.
    let applied = apply(Cursor::new(&old[..]), sig.layout(), ops, io::sink())?;
    println!("apply                    {}", mbps(len, t));
    assert!(
        applied.len == len as u64 && applied.hash == h,
        "rebuilt file differs"
    );

    let unrelated = noise(3, 64 << 20);
    let t = Instant::now();
    let (_, literal, alarms) = run_match(&sig, &unrelated)?;
    println!("match, unrelated 64 MiB  {}", mbps(unrelated.len(), t));
    println!("  {literal} literal bytes, {alarms} false alarms");

    println!("signature sizes (postcard, upper bound):");
    for (name, l) in [
        ("1 MiB", 1u64 << 20),
        ("512 MiB", 512 << 20),
        ("1 GiB", 1 << 30),
        ("16 GiB", 16 << 30),
    ] {
        let w = signature_wire_len(l);
        println!(
            "  {name:>8}: block {:>6} B, {:>7} bytes = {:.3} %",
            block_size(l),
            w,
            w as f64 * 100.0 / l as f64
        );
    }
    Ok(())
}

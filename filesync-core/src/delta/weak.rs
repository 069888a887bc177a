//! rsync's weak rolling checksum.

/// The weak checksum of a window of bytes, rolled one byte at a time in O(1).
///
/// rsync's `get_checksum1` on unsigned bytes: for a window `x₀ … xₙ₋₁`,
/// `a = Σ xᵢ` and `b = Σ (n − i)·xᵢ`, both mod 2¹⁶, and the checksum is `a | b << 16`.
/// The sums are kept mod 2³² (a multiple of 2¹⁶), so wrapping arithmetic is exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rolling {
    a: u32,
    b: u32,
    len: u32,
}

impl Rolling {
    /// The checksum of `window`, computed from scratch (vectorizable: ~one pass at memory
    /// speed). Windows longer than `u32::MAX` bytes are not supported (blocks are at most
    /// [`MAX_BLOCK_SIZE`](super::MAX_BLOCK_SIZE)); the length is kept mod 2³².
    pub fn new(window: &[u8]) -> Self {
        let (a, b) = sums(window);
        Rolling {
            a,
            b,
            len: window.len() as u32,
        }
    }

    /// The 32-bit checksum of the current window: `a & 0xffff | b << 16`.
    #[inline(always)]
    pub fn digest(&self) -> u32 {
        (self.a & 0xffff) | (self.b << 16)
    }

    /// Slides the window one byte: `out` (its first byte) leaves, `incoming` (the byte
    /// just past its end) enters. The length stays the same.
    #[inline(always)]
    pub fn roll(&mut self, out: u8, incoming: u8) {
        let (out, incoming) = (u32::from(out), u32::from(incoming));
        self.a = self.a.wrapping_sub(out).wrapping_add(incoming);
        self.b = self
            .b
            .wrapping_sub(self.len.wrapping_mul(out))
            .wrapping_add(self.a);
    }

    /// The window's length in bytes.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The weak checksum of `data` (see [`Rolling`]).
pub fn weak_checksum(data: &[u8]) -> u32 {
    Rolling::new(data).digest()
}

/// `(Σ xᵢ, Σ (n − i)·xᵢ)` mod 2³², vectorized as Adler-32 is: over chunks of L bytes,
/// lane j keeps `s1[j]`, the sum of its bytes so far, and `s2[j]`, the sum of its `s1[j]`
/// before each chunk. A byte of chunk k (of K) in lane j has weight
/// `L·(K − 1 − k) + (L − j)`, so `b = L·Σ s2[j] + Σ (L − j)·s1[j]`. The remainder is added
/// byte by byte (`a += x; b += a`).
fn sums(data: &[u8]) -> (u32, u32) {
    const L: usize = 32;
    let mut s1 = [0u32; L];
    let mut s2 = [0u32; L];
    let mut chunks = data.chunks_exact(L);
    for chunk in &mut chunks {
        let chunk: &[u8; L] = chunk.try_into().expect("chunks_exact");
        for ((s2, s1), x) in s2.iter_mut().zip(s1.iter_mut()).zip(chunk) {
            *s2 = s2.wrapping_add(*s1);
            *s1 = s1.wrapping_add(u32::from(*x));
        }
    }
    let (mut a, mut b) = (0u32, 0u32);
    for j in 0..L {
        a = a.wrapping_add(s1[j]);
        b = b
            .wrapping_add(s2[j].wrapping_mul(L as u32))
            .wrapping_add(s1[j].wrapping_mul((L - j) as u32));
    }
    for x in chunks.remainder() {
        a = a.wrapping_add(u32::from(*x));
        b = b.wrapping_add(a);
    }
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definition, byte by byte.
    fn naive(data: &[u8]) -> u32 {
        let (mut a, mut b) = (0u32, 0u32);
        for (i, x) in data.iter().enumerate() {
            a = a.wrapping_add(u32::from(*x));
            b = b.wrapping_add((data.len() - i) as u32 * u32::from(*x));
        }
        (a & 0xffff) | (b << 16)
    }

    #[test]
    fn known_values() {
        assert_eq!(weak_checksum(b""), 0);
        // a = 1+2+3 = 6, b = 3·1 + 2·2 + 1·3 = 10.
        assert_eq!(weak_checksum(&[1, 2, 3]), 6 | 10 << 16);
        // 0xff × 1000: a = 255000 mod 65536 = 58392; b = 255·500500 mod 65536.
        let v = vec![0xffu8; 1000];
        let b = (255u64 * 500_500 % 65536) as u32;
        assert_eq!(weak_checksum(&v), 58392 | b << 16);
        assert_eq!(weak_checksum(&v), naive(&v));
    }

    proptest! {
        #[test]
        fn chunked_sums_equal_the_definition(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(weak_checksum(&data), naive(&data));
        }

        #[test]
        fn rolling_equals_recomputation_at_every_offset(
            data in proptest::collection::vec(any::<u8>(), 1..400),
            window in 1usize..100,
        ) {
            let window = window.min(data.len());
            let mut r = Rolling::new(&data[..window]);
            prop_assert_eq!(r.len() as usize, window);
            for start in 0..data.len() - window {
                r.roll(data[start], data[start + window]);
                prop_assert_eq!(r.digest(), weak_checksum(&data[start + 1..start + 1 + window]),
                    "offset {}", start + 1);
            }
        }
    }
}

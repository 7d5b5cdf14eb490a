//! CRC32C of a concatenation from the CRCs of its parts, in well under a microsecond.
//!
//! A frame's CRC and an epoch's digest are derived from the payload's CRC32C (computed in
//! one pass while the payload streams out) by combining it with the header's CRC or the
//! digest so far. The `crc32c` crate's `crc32c_combine` follows zlib's original method
//! (squaring a 32x32 GF(2) matrix once per bit of the length): tens of microseconds per
//! call on a busy nested host, which profiled as more of the sender's CPU than the CRC of
//! the data itself. This computes the same value as a product in GF(2)[x] modulo the
//! CRC32C polynomial: crc(A || B) = crc(A) * x^(8 * len(B)) + crc(B), with x^(2^k) mod P
//! taken from a table built at compile time, so a combine costs about log2(len) carry-less
//! multiplications of 32 bits.

/// The CRC32C (Castagnoli) polynomial, bit-reflected.
const POLY: u32 = 0x82F6_3B78;

/// `a * b mod P` in the reflected bit order (bit 31 is x^0).
const fn mul_mod_p(a: u32, mut b: u32) -> u32 {
    let mut m: u32 = 1 << 31;
    let mut p: u32 = 0;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                break;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
    p
}

/// `X2N[k]` = x^(2^k) mod P, for every k a 64-bit length times 8 can reach.
const X2N: [u32; 68] = {
    let mut t = [0u32; 68];
    // x^1: the coefficient of x^1 is bit 30 in the reflected order.
    let mut p: u32 = 1 << 30;
    let mut k = 0;
    while k < 68 {
        t[k] = p;
        p = mul_mod_p(p, p);
        k += 1;
    }
    t
};

/// x^(n * 2^k) mod P, for k <= 3.
fn x_pow_n_2k(mut n: u64, mut k: usize) -> u32 {
    // x^0 = 1: bit 31.
    let mut p: u32 = 1 << 31;
    while n != 0 {
        if n & 1 != 0 {
            p = mul_mod_p(X2N[k], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// The CRC32C of `A || B` from `crc1` = CRC32C(A), `crc2` = CRC32C(B) and `len2` = len(B):
/// the same value as `crc32c::crc32c_combine(crc1, crc2, len2)`.
pub fn crc32c_combine(crc1: u32, crc2: u32, len2: usize) -> u32 {
    if len2 == 0 {
        return crc1;
    }
    // x^(8 * len2) = x^(len2 * 2^3).
    mul_mod_p(x_pow_n_2k(len2 as u64, 3), crc1) ^ crc2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combines_like_the_crc_of_the_concatenation() {
        // A deterministic pseudo-random byte source (splitmix64).
        let mut s = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let data: Vec<u8> = (0..(3 << 20) + 77).map(|_| next() as u8).collect();
        let mut cases: Vec<(usize, usize)> = vec![
            (0, 0),
            (0, 1),
            (1, 0),
            (5, 4096),
            (4096, 1 << 20),
            (28, (1 << 20) + 12 + 12 * 256),
            (0, 3 << 20),
        ];
        for _ in 0..200 {
            let a = (next() % (1 << 20)) as usize;
            let b = (next() % (2 << 20)) as usize;
            cases.push((a, b));
        }
        for (a, b) in cases {
            let (x, y) = data.split_at(a);
            let y = &y[..b];
            let (c1, c2) = (crc32c::crc32c(x), crc32c::crc32c(y));
            let whole = crc32c::crc32c_append(c1, y);
            assert_eq!(crc32c_combine(c1, c2, b), whole, "lengths {a} + {b}");
            assert_eq!(
                crc32c_combine(c1, c2, b),
                crc32c::crc32c_combine(c1, c2, b),
                "lengths {a} + {b}"
            );
        }
        // Lengths beyond what the data holds: agree with the reference combine.
        for len2 in [1usize << 31, (1 << 32) + 3, usize::MAX >> 1] {
            assert_eq!(
                crc32c_combine(0xdead_beef, 0x0123_4567, len2),
                crc32c::crc32c_combine(0xdead_beef, 0x0123_4567, len2)
            );
        }
    }
}

//! Whether a live guest page is all zero: the full copy of a migration or an initial sync
//! asks this of every page of guest memory (most of a fresh guest's memory is zero, and a
//! zero page goes out as a run descriptor instead of 4 KiB of data).
//!
//! The guest may be writing the page meanwhile, so every load is volatile (the answer is
//! then either, and the dirty log has the page). Wide loads make the scan of a zero page
//! cheaper: 32-byte AVX2 loads where the CPU has them (detected at run time), 16-byte SSE2
//! loads otherwise on x86-64 (part of its baseline), 8-byte loads elsewhere. All three
//! give the same answer (unit tests below).

const PAGE: usize = ftvm_vmm::layout::PAGE_SIZE as usize;

/// Whether the 4 KiB page at `page` is all zero, with the widest loads this CPU has.
///
/// # Safety
/// `page .. page + 4096` must be readable memory (a live guest mapping), 32-byte aligned
/// (guest pages are 4 KiB aligned).
pub unsafe fn live_page_is_zero(page: *const u8) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present (checked just above); the caller vouches for the page.
            return unsafe { x86::page_is_zero_avx2(page) };
        }
        // SAFETY: SSE2 is part of the x86-64 baseline; the caller vouches for the page.
        unsafe { x86::page_is_zero_sse2(page) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // SAFETY: the caller vouches for the page.
        unsafe { page_is_zero_u64(page) }
    }
}

/// The portable scan: 8-byte volatile loads, 64 bytes per test.
///
/// # Safety
/// As [`live_page_is_zero`] (8-byte alignment is enough).
pub unsafe fn page_is_zero_u64(page: *const u8) -> bool {
    let words = page.cast::<u64>();
    for block in 0..PAGE / 64 {
        let mut acc = 0u64;
        for i in 0..8 {
            // SAFETY: `block * 8 + i < PAGE / 8`: inside the page the caller vouches for,
            // and the page is 8-byte aligned.
            acc |= unsafe { std::ptr::read_volatile(words.add(block * 8 + i)) };
        }
        if acc != 0 {
            return false;
        }
    }
    true
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::{
        __m128i, __m256i, _mm256_or_si256, _mm256_testz_si256, _mm_cmpeq_epi8, _mm_movemask_epi8,
        _mm_or_si128, _mm_setzero_si128,
    };

    use super::PAGE;

    /// 32-byte volatile loads, 128 bytes per test.
    ///
    /// # Safety
    /// AVX2 must be present; as [`super::live_page_is_zero`] otherwise.
    #[target_feature(enable = "avx2")]
    pub unsafe fn page_is_zero_avx2(page: *const u8) -> bool {
        let v = page.cast::<__m256i>();
        for block in 0..PAGE / 128 {
            let i = block * 4;
            // SAFETY: `i + 3 < PAGE / 32`: inside the page the caller vouches for; the page
            // is 32-byte aligned, so the loads are aligned.
            let (a, b, c, d) = unsafe {
                (
                    std::ptr::read_volatile(v.add(i)),
                    std::ptr::read_volatile(v.add(i + 1)),
                    std::ptr::read_volatile(v.add(i + 2)),
                    std::ptr::read_volatile(v.add(i + 3)),
                )
            };
            let any = _mm256_or_si256(_mm256_or_si256(a, b), _mm256_or_si256(c, d));
            if _mm256_testz_si256(any, any) == 0 {
                return false;
            }
        }
        true
    }

    /// 16-byte volatile loads, 64 bytes per test (SSE2: every x86-64 CPU).
    ///
    /// # Safety
    /// As [`super::live_page_is_zero`] (16-byte alignment is enough).
    #[target_feature(enable = "sse2")]
    pub unsafe fn page_is_zero_sse2(page: *const u8) -> bool {
        let v = page.cast::<__m128i>();
        for block in 0..PAGE / 64 {
            let i = block * 4;
            // SAFETY: `i + 3 < PAGE / 16`: inside the page the caller vouches for; the page
            // is 16-byte aligned, so the loads are aligned.
            let (a, b, c, d) = unsafe {
                (
                    std::ptr::read_volatile(v.add(i)),
                    std::ptr::read_volatile(v.add(i + 1)),
                    std::ptr::read_volatile(v.add(i + 2)),
                    std::ptr::read_volatile(v.add(i + 3)),
                )
            };
            let any = _mm_or_si128(_mm_or_si128(a, b), _mm_or_si128(c, d));
            if _mm_movemask_epi8(_mm_cmpeq_epi8(any, _mm_setzero_si128())) != 0xffff {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page-aligned 4 KiB buffer.
    #[repr(C, align(4096))]
    struct Page([u8; PAGE]);

    /// A page scan: `true` if the page is all zero.
    type Scan = unsafe fn(*const u8) -> bool;

    /// Every implementation this machine can run, by name.
    fn scans() -> Vec<(&'static str, Scan)> {
        let mut v: Vec<(&'static str, Scan)> =
            vec![("u64", page_is_zero_u64), ("dispatch", live_page_is_zero)];
        #[cfg(target_arch = "x86_64")]
        {
            v.push(("sse2", x86::page_is_zero_sse2));
            if std::arch::is_x86_feature_detected!("avx2") {
                v.push(("avx2", x86::page_is_zero_avx2));
            } else {
                println!("zero_scan: no AVX2 on this CPU, its scan is not tested here");
            }
        }
        v
    }

    #[test]
    fn every_scan_finds_one_nonzero_byte_at_every_position_and_passes_a_zero_page() {
        let mut p = Box::new(Page([0; PAGE]));
        for (name, scan) in scans() {
            // SAFETY: `p` is a 4 KiB-aligned, 4 KiB buffer.
            assert!(unsafe { scan(p.0.as_ptr()) }, "{name}: zero page");
            for pos in 0..PAGE {
                for value in [1u8, 0x80, 0xff] {
                    p.0[pos] = value;
                    // SAFETY: as above.
                    let zero = unsafe { scan(p.0.as_ptr()) };
                    assert!(!zero, "{name}: byte {pos} = {value:#x} not seen");
                    p.0[pos] = 0;
                }
            }
            // SAFETY: as above.
            assert!(unsafe { scan(p.0.as_ptr()) }, "{name}: zero page again");
        }
    }

    #[test]
    fn every_scan_agrees_on_pages_of_mixed_content() {
        // Pseudo-random sparse pages: a few bytes set, or none.
        let mut p = Box::new(Page([0; PAGE]));
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..2_000 {
            p.0.fill(0);
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let set = (x % 4) as usize; // 0..3 bytes set
            for k in 0..set {
                let pos = ((x >> (16 + 12 * k)) as usize) % PAGE;
                p.0[pos] = (x >> 8) as u8 | 1;
            }
            let want = p.0.iter().all(|&b| b == 0);
            for (name, scan) in scans() {
                // SAFETY: `p` is a 4 KiB-aligned, 4 KiB buffer.
                let got = unsafe { scan(p.0.as_ptr()) };
                assert_eq!(got, want, "{name}: round {round}");
            }
        }
    }
}

//! copy: why the epoch copy runs at the speed it does. Copies a dirty-set-like list of
//! scattered 4 KiB pages out of a 256 MiB anonymous mapping (like guest RAM) into staging,
//! with and without transparent huge pages on the source, into fresh (never touched) and
//! into reused (already faulted-in) staging, next to a contiguous memcpy of the same size
//! (this machine's plain copy bandwidth).

use std::time::Instant;

use serde_json::json;

use crate::util::{fmt, median, Res};
use crate::{Ctx, Table};

const MEM: usize = 256 << 20;
const PAGE: usize = 4096;

/// An anonymous private mapping of `len` bytes, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize, huge: bool) -> Res<Self> {
        // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!("mmap of {len} bytes failed"));
        }
        if huge {
            // SAFETY: the range is the mapping just created; advice only.
            let _best_effort = unsafe { libc::madvise(ptr, len, libc::MADV_HUGEPAGE) };
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr..ptr+len` is this mapping, readable and writable, alive while
        // `self` is; the returned borrow is tied to `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    fn touch(&mut self) {
        for i in (0..self.len).step_by(PAGE) {
            self.bytes()[i] = 1;
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping this value owns; nothing borrows it any more.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn copy_us(src: &mut Mapping, dst: &mut Mapping, pages: &[usize]) -> f64 {
    let (s, d) = (src.bytes().as_ptr(), dst.bytes().as_mut_ptr());
    let t = Instant::now();
    for (k, &p) in pages.iter().enumerate() {
        // SAFETY: page `p` is inside `src` (p < MEM / PAGE) and slot `k` inside `dst` (it
        // holds pages.len() pages); the mappings are distinct.
        unsafe { std::ptr::copy_nonoverlapping(s.add(p * PAGE), d.add(k * PAGE), PAGE) };
    }
    t.elapsed().as_secs_f64() * 1e6
}

/// The group.
pub fn copy(ctx: &Ctx) -> Res<Table> {
    let mut t = Table::new(&[
        "guest-RAM-like source",
        "staging",
        "pages",
        "us per page (median)",
        "GB/s",
    ]);
    let reps = ctx.pick(3, 7);
    let mut data = Vec::new();
    for huge in [false, true] {
        let mut src = Mapping::new(MEM, huge)?;
        src.touch();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for n in [1024usize, 8192] {
            let mut pages: Vec<usize> = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x as usize) % (MEM / PAGE)
                })
                .collect();
            pages.sort_unstable();
            pages.dedup();
            for (label, reused) in [("fresh (first touch)", false), ("reused", true)] {
                let mut samples = Vec::new();
                for _ in 0..reps {
                    let mut dst = Mapping::new(pages.len() * PAGE, huge)?;
                    if reused {
                        dst.touch();
                    }
                    samples.push(copy_us(&mut src, &mut dst, &pages) / pages.len() as f64);
                }
                let us = median(&samples).unwrap_or(f64::NAN);
                t.row(vec![
                    if huge {
                        "THP (MADV_HUGEPAGE)"
                    } else {
                        "4 KiB pages"
                    }
                    .into(),
                    label.into(),
                    pages.len().to_string(),
                    format!("{us:.2}"),
                    format!("{:.2}", PAGE as f64 / us / 1e3),
                ]);
                data.push(
                    json!({"thp": huge, "reused": reused, "pages": pages.len(), "us_per_page": us}),
                );
            }
        }
        // The machine's plain copy bandwidth: one contiguous 32 MiB memcpy, reused target.
        let mut samples = Vec::new();
        let len = 32 << 20;
        let mut dst = Mapping::new(len, huge)?;
        dst.touch();
        for _ in 0..reps {
            let (s, d) = (src.bytes().as_ptr(), dst.bytes().as_mut_ptr());
            let t0 = Instant::now();
            // SAFETY: both ranges are inside their (distinct) mappings.
            unsafe { std::ptr::copy_nonoverlapping(s, d, len) };
            samples.push(t0.elapsed().as_secs_f64() * 1e6 / (len / PAGE) as f64);
        }
        let us = median(&samples).unwrap_or(f64::NAN);
        t.row(vec![
            if huge {
                "THP (MADV_HUGEPAGE)"
            } else {
                "4 KiB pages"
            }
            .into(),
            "contiguous 32 MiB memcpy (reused)".into(),
            (len / PAGE).to_string(),
            format!("{us:.2}"),
            fmt(PAGE as f64 / us / 1e3),
        ]);
        data.push(json!({"thp": huge, "contiguous": true, "us_per_page": us}));
    }
    t.notes.push(format!(
        "Median of {reps} copies each; pages picked at random over 256 MiB and sorted (a dirty \
         set), copied with a plain memcpy per page."
    ));
    t.data = json!(data);
    Ok(t)
}

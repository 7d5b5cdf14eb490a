//! Which guest pages a receiver has written into a VM whose memory started all zero.
//!
//! The migration target's placer and a fresh backup replica both skip zero runs over pages
//! they never wrote (that memory is still zero): the first full copy's zero pages then
//! cost neither a write nor a page fault on the receiving side.

/// One bit per guest page frame written so far; grows on demand.
#[derive(Debug, Default, Clone)]
pub(crate) struct WrittenPages {
    words: Vec<u64>,
}

impl WrittenPages {
    /// Whether page frame `pfn` was written.
    pub(crate) fn contains(&self, pfn: u64) -> bool {
        self.words
            .get((pfn / 64) as usize)
            .is_some_and(|w| w & (1 << (pfn % 64)) != 0)
    }

    /// Record the `npages` page frames from `pfn` as written.
    pub(crate) fn mark(&mut self, pfn: u64, npages: u64) {
        if npages == 0 {
            return;
        }
        let last_word = ((pfn + npages - 1) / 64) as usize;
        if self.words.len() <= last_word {
            self.words.resize(last_word + 1, 0);
        }
        for p in pfn..pfn + npages {
            self.words[(p / 64) as usize] |= 1 << (p % 64);
        }
    }

    /// Call `f(start, count)` for each maximal stretch of written pages among the
    /// `npages` page frames from `first`, in order; stops at the first error.
    pub(crate) fn for_each_written_run<E>(
        &self,
        first: u64,
        npages: u64,
        mut f: impl FnMut(u64, u64) -> Result<(), E>,
    ) -> Result<(), E> {
        let end = first + npages;
        let mut p = first;
        while p < end {
            if !self.contains(p) {
                p += 1;
                continue;
            }
            let start = p;
            while p < end && self.contains(p) {
                p += 1;
            }
            f(start, p - start)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(w: &WrittenPages, first: u64, n: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        w.for_each_written_run(first, n, |s, c| {
            out.push((s, c));
            Ok::<(), ()>(())
        })
        .unwrap();
        out
    }

    #[test]
    fn marked_pages_and_only_they_are_written() {
        let mut w = WrittenPages::default();
        assert!(!w.contains(0) && !w.contains(1_000_000));
        w.mark(62, 4); // crosses a word boundary
        w.mark(200, 0);
        for p in 0..300 {
            assert_eq!(w.contains(p), (62..66).contains(&p), "page {p}");
        }
    }

    #[test]
    fn written_runs_are_maximal_and_clipped_to_the_range() {
        let mut w = WrittenPages::default();
        w.mark(10, 5); // 10..15
        w.mark(15, 1); // joins: 10..16
        w.mark(20, 3); // 20..23
        assert_eq!(runs(&w, 0, 100), vec![(10, 6), (20, 3)]);
        assert_eq!(runs(&w, 12, 9), vec![(12, 4), (20, 1)]);
        assert_eq!(runs(&w, 16, 4), Vec::<(u64, u64)>::new());
    }

    #[test]
    fn the_first_error_stops_the_walk() {
        let mut w = WrittenPages::default();
        w.mark(1, 1);
        w.mark(3, 1);
        let mut seen = 0;
        let r = w.for_each_written_run(0, 10, |_, _| {
            seen += 1;
            Err("stop")
        });
        assert_eq!((r, seen), (Err("stop"), 1));
    }
}

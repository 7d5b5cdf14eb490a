//! Sending an epoch's changed pages straight from the pause's staging.
//!
//! The pause copies every dirty page (logged, carried or hot) into a staging buffer, back
//! to back in page order. After the resume the hot-page tracker (crate::hot) compares the
//! watched pages with the previous epoch's staging and drops the unchanged ones from the
//! epoch; the staging itself then becomes the next epoch's compare shadow. So the staging
//! is shared (an `Arc`) between the sender, which sends the changed pages from it in place
//! (runs with their slots, [`crate::sync::CapturedEpoch::slots`]), and the tracker, which
//! reads it in the next epoch's compare. Nobody writes it while the other holds it: the
//! engine captures only into a staging it holds alone ([`staging_mut`]), and a staging
//! still shared when the engine wants it is set aside for a fresh or a free one
//! ([`StagingSpares`]). No page is copied a second time after the pause.

use std::io::Write;
use std::ops::Range;
use std::sync::Arc;

use ftvm_vmm::layout::PAGE_SIZE;
use ftvm_wire::MessageWriter;

use crate::error::ReplicationError;

const PAGE: usize = PAGE_SIZE as usize;
/// A staging span at least this long (256 KiB, the frame writer's buffer) is framed on its
/// own: each frame's data then leaves in one write, straight from the staging to the
/// socket. Shorter spans are packed together into shared frames (the frame writer's buffer
/// collects them).
pub const DIRECT_PAGES: u32 = 64;
/// Most staging buffers set aside while still shared (see [`StagingSpares`]).
const MAX_SPARES: usize = 2;

/// Write access to a staging buffer, for the pause's copy. A staging still read by someone
/// else (the sender, or the tracker as its shadow) is never written: it is replaced by a
/// new empty buffer first (the engine avoids that case with [`StagingSpares`] before the
/// pause; this is the last guard).
pub fn staging_mut(staging: &mut Arc<Vec<u8>>) -> &mut Vec<u8> {
    if Arc::get_mut(staging).is_none() {
        *staging = Arc::default();
    }
    // Unique now, so this never clones.
    Arc::make_mut(staging)
}

/// Staging buffers the engine set aside because the tracker or the sender still read them;
/// each is used again once it is the last holder's.
#[derive(Debug, Default)]
pub struct StagingSpares {
    spares: Vec<Arc<Vec<u8>>>,
    /// Buffers allocated because none was free (for the tests and the status).
    pub allocated: u64,
}

impl StagingSpares {
    /// Make `staging` a buffer nobody else holds, keeping its memory when it can: a shared
    /// one is set aside and replaced by a free spare, or by a new buffer.
    pub fn make_unique(&mut self, staging: &mut Arc<Vec<u8>>) {
        if Arc::get_mut(staging).is_some() {
            return;
        }
        let free = self
            .spares
            .iter_mut()
            .position(|s| Arc::get_mut(s).is_some());
        let replacement = match free {
            Some(i) => self.spares.swap_remove(i),
            None => {
                self.allocated += 1;
                Arc::default()
            }
        };
        let shared = std::mem::replace(staging, replacement);
        self.spares.push(shared);
        if self.spares.len() > MAX_SPARES {
            // The oldest goes; its last holder frees it.
            self.spares.remove(0);
        }
    }
}

/// Runs that lie back to back in the staging, sent together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// Indices into the runs.
    pub runs: Range<usize>,
    /// Byte range in the staging.
    pub bytes: Range<usize>,
    /// Pages in the span.
    pub pages: u32,
}

/// Group `runs` (starting at page `slots[i]` of a staging of `staging_len` bytes) into
/// spans that are contiguous in the staging. An empty `slots` means back to back from 0.
/// A run outside the staging, overlapping the one before or a count mismatch is an error.
pub fn spans(
    runs: &[(u64, u32)],
    slots: &[usize],
    staging_len: usize,
) -> Result<Vec<Span>, ReplicationError> {
    if !slots.is_empty() && slots.len() != runs.len() {
        return Err(ReplicationError::Memory {
            gpa: runs.first().map_or(0, |r| r.0),
            reason: format!("{} runs but {} staging slots", runs.len(), slots.len()),
        });
    }
    let mut out: Vec<Span> = Vec::new();
    let mut next = 0usize;
    for (i, &(gpa, n)) in runs.iter().enumerate() {
        let start = match slots.get(i) {
            Some(&s) => s.saturating_mul(PAGE),
            None => next,
        };
        let end = start.saturating_add(n as usize * PAGE);
        if start < next || end > staging_len {
            return Err(ReplicationError::Memory {
                gpa,
                reason: format!(
                    "run of {n} pages at staging byte {start} overlaps the run before (ends at \
                     {next}) or lies past the staging's {staging_len} bytes"
                ),
            });
        }
        match out.last_mut() {
            Some(s) if s.bytes.end == start => {
                s.runs.end = i + 1;
                s.bytes.end = end;
                s.pages += n;
            }
            _ => out.push(Span {
                runs: i..i + 1,
                bytes: start..end,
                pages: n,
            }),
        }
        next = end;
    }
    Ok(out)
}

/// Send the pages of `runs` of the open epoch from `staging` (each run at page `slots[i]`,
/// or back to back from 0 if `slots` is empty), in order. Returns the pages sent.
pub fn send_staged<W: Write>(
    w: &mut MessageWriter<W>,
    runs: &[(u64, u32)],
    slots: &[usize],
    staging: &[u8],
) -> Result<u64, ReplicationError> {
    if runs.is_empty() {
        return Ok(0);
    }
    let spans = spans(runs, slots, staging.len())?;
    let mut sent = 0;
    let mut i = 0;
    while i < spans.len() {
        let s = &spans[i];
        if s.pages >= DIRECT_PAGES {
            sent += w.send_page_runs(&runs[s.runs.clone()], &staging[s.bytes.clone()])?;
            i += 1;
            continue;
        }
        // A stretch of short spans, packed into shared frames.
        let j = spans[i..]
            .iter()
            .position(|s| s.pages >= DIRECT_PAGES)
            .map_or(spans.len(), |k| i + k);
        let items = spans[i..j].iter().flat_map(|s| {
            let mut at = s.bytes.start;
            runs[s.runs.clone()].iter().map(move |&(gpa, n)| {
                let len = n as usize * PAGE;
                let item = (gpa, &staging[at..at + len]);
                at += len;
                item
            })
        });
        sent += w.send_pages(items)?;
        i = j;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftvm_wire::{AssemblerConfig, EpochAssembler, MessageReader, PageWrite, Progress};

    fn page(pfn: u64, salt: u8) -> Vec<u8> {
        (0..PAGE)
            .map(|i| (pfn as u8).wrapping_mul(31) ^ (i as u8) ^ salt)
            .collect()
    }

    #[test]
    fn spans_join_runs_that_are_contiguous_in_the_staging_only() {
        let runs = [(0x1000, 2), (0x5000, 1), (0x9000, 3), (0x20000, 1)];
        // Slots: 0..2, 2, 4..7 (slot 3 skipped: unchanged), 7.
        let s = spans(&runs, &[0, 2, 4, 7], 8 * PAGE).unwrap();
        assert_eq!(
            s,
            vec![
                Span {
                    runs: 0..2,
                    bytes: 0..3 * PAGE,
                    pages: 3
                },
                Span {
                    runs: 2..4,
                    bytes: 4 * PAGE..8 * PAGE,
                    pages: 4
                },
            ]
        );
        // Back to back.
        assert_eq!(spans(&runs, &[], 7 * PAGE).unwrap().len(), 1);
        // Past the end, overlapping, mismatched.
        assert!(spans(&runs, &[0, 2, 4, 8], 8 * PAGE).is_err());
        assert!(spans(&runs, &[0, 1, 4, 7], 8 * PAGE).is_err());
        assert!(spans(&runs, &[0, 2], 8 * PAGE).is_err());
        assert!(spans(&runs, &[], 6 * PAGE).is_err());
    }

    /// Send `runs` at `slots` of a staging holding page(pfn, salt) at every slot (`pfns`
    /// gives each slot's page), read the stream back with the backup's assembler and
    /// return what it released: (gpa, bytes) per page, and the frames used.
    fn round_trip(
        pfns: &[u64],
        runs: &[(u64, u32)],
        slots: &[usize],
    ) -> (Vec<(u64, Vec<u8>)>, u64) {
        let staging: Vec<u8> = pfns.iter().flat_map(|&p| page(p, 7)).collect();
        let mut w = MessageWriter::new(Vec::new());
        w.begin_epoch(3).unwrap();
        let sent = send_staged(&mut w, runs, slots, &staging).unwrap();
        assert_eq!(sent, runs.iter().map(|r| u64::from(r.1)).sum::<u64>());
        w.send_state(b"state").unwrap();
        w.commit_epoch().unwrap();
        w.flush().unwrap();
        let frames = w.frames().frames_written();
        let bytes = w.frames().get_ref().clone();
        let mut r = MessageReader::new(&bytes[..]);
        let mut asm = EpochAssembler::new(AssemblerConfig::replication());
        let mut out = Vec::new();
        while let Some(m) = r.recv().unwrap() {
            if let Progress::Committed(e) = asm.feed(&m).unwrap() {
                for wr in e.page_writes() {
                    let PageWrite::Data { gpa, data } = wr else {
                        panic!("zero pages sent")
                    };
                    for (k, p) in data.chunks(PAGE).enumerate() {
                        out.push((gpa + (k * PAGE) as u64, p.to_vec()));
                    }
                }
            }
        }
        (out, frames)
    }

    #[test]
    fn pages_skipped_in_the_staging_are_not_sent_and_the_others_arrive_whole() {
        // 300 copied pages: a long stretch (direct frames), then short spans with gaps
        // (packed frames), then a long stretch again; gpas not contiguous everywhere.
        let pfns: Vec<u64> = (0..300u64).map(|i| 10 + i + i / 50).collect();
        let skip = |i: usize| (100..200).contains(&i) && i % 3 == 1;
        let mut runs: Vec<(u64, u32)> = Vec::new();
        let mut slots: Vec<usize> = Vec::new();
        let mut last: Option<(u64, usize)> = None;
        for (i, &pfn) in pfns.iter().enumerate() {
            if skip(i) {
                continue;
            }
            match (runs.last_mut(), last) {
                (Some(r), Some((lp, li))) if lp + 1 == pfn && li + 1 == i => r.1 += 1,
                _ => {
                    runs.push((pfn * PAGE_SIZE, 1));
                    slots.push(i);
                }
            }
            last = Some((pfn, i));
        }
        let (got, frames) = round_trip(&pfns, &runs, &slots);
        let want: Vec<(u64, Vec<u8>)> = pfns
            .iter()
            .enumerate()
            .filter(|(i, _)| !skip(*i))
            .map(|(_, &p)| (p * PAGE_SIZE, page(p, 7)))
            .collect();
        assert_eq!(got.len(), want.len());
        assert!(
            got == want,
            "a page arrived at the wrong gpa or with wrong bytes"
        );
        // The short spans share frames: far fewer frames than spans.
        let n_spans = spans(&runs, &slots, pfns.len() * PAGE).unwrap().len();
        assert!(n_spans > 30, "{n_spans}");
        assert!(frames < 12, "{frames} frames for {n_spans} spans");
    }

    #[test]
    fn a_staging_still_held_elsewhere_is_never_written() {
        let mut spares = StagingSpares::default();
        let mut staging: Arc<Vec<u8>> = Arc::new(vec![1; PAGE]);
        let held = staging.clone(); // the sender, or the tracker's shadow
        spares.make_unique(&mut staging);
        assert!(!Arc::ptr_eq(&staging, &held));
        staging_mut(&mut staging).clear();
        staging_mut(&mut staging).extend_from_slice(&[2; PAGE]);
        assert_eq!(*held, vec![1; PAGE], "the held staging was written");
        // The last guard, without the spares.
        let mut again = held.clone();
        staging_mut(&mut again).push(9);
        assert_eq!(*held, vec![1; PAGE]);
        // Once its other holders are done, the set-aside buffer is used again.
        drop(again);
        let ptr = Arc::as_ptr(&held);
        drop(held);
        let mut other = staging.clone();
        spares.make_unique(&mut other);
        assert_eq!(Arc::as_ptr(&other), ptr, "a free spare was not reused");
        assert_eq!(spares.allocated, 1);
    }
}

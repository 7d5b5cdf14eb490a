//! Host-side reference implementation: runs the guest's workload (the same
//! `workload.rs`) on host memory and produces exactly the lines the guest prints.
//!
//! Iterations are numbered from 1: the first seq line of a run with `every=1` is `seq=1`,
//! with `every=k` it is `seq=k`. Lines end with `\n` on the serial port (no `\r`).

use std::fmt;

use crate::params::GuestParams;
use crate::workload::{self, ParamError, DONE_LINE, MAX_CPUS, PAGE_SIZE, READY_LINE, SEQ_LINE_MAX};

/// Why the guest (and so the reference) cannot run with some parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// The parameters themselves are invalid.
    Params(ParamError),
    /// `cpus` is 0 or above [`MAX_CPUS`].
    Cpus(u32),
    /// The working set has fewer pages than there are vCPUs.
    TooSmall { wss_mib: u64, cpus: u32 },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayoutError::Params(e) => write!(f, "invalid parameters: {e}"),
            LayoutError::Cpus(n) => write!(f, "{n} vCPUs: the guest supports 1 to {MAX_CPUS}"),
            LayoutError::TooSmall { wss_mib, cpus } => write!(
                f,
                "wss_mib={wss_mib} is too small for {cpus} vCPUs (one page each at least)"
            ),
        }
    }
}

impl std::error::Error for LayoutError {}

/// The guest's computation for given parameters and vCPU count, one iteration at a time.
#[derive(Debug)]
pub struct Reference {
    params: GuestParams,
    cpus: u32,
    seeds: Vec<u64>,
    regions: Vec<Vec<u8>>,
    hashes: Vec<u64>,
    n: u64,
}

impl Reference {
    /// Sets up the working set (all regions, `wss_mib` of host memory) as the guest does.
    pub fn new(params: &GuestParams, cpus: u32) -> Result<Self, LayoutError> {
        params.validate().map_err(LayoutError::Params)?;
        if cpus == 0 || cpus > MAX_CPUS {
            return Err(LayoutError::Cpus(cpus));
        }
        let pages = params.region_pages(cpus);
        if pages == 0 {
            return Err(LayoutError::TooSmall {
                wss_mib: params.wss_mib,
                cpus,
            });
        }
        let len = pages as usize * PAGE_SIZE;
        let seeds: Vec<u64> = (0..cpus).map(|c| params.stream_seed(cpus, c)).collect();
        let regions = seeds
            .iter()
            .map(|&seed| {
                let mut r = vec![0u8; len];
                workload::init_region(&mut r, seed);
                r
            })
            .collect();
        let hashes = seeds.iter().map(|&s| workload::stream_start(s)).collect();
        Ok(Reference {
            params: *params,
            cpus,
            seeds,
            regions,
            hashes,
            n: 0,
        })
    }

    /// Iterations run so far.
    pub fn iterations(&self) -> u64 {
        self.n
    }

    /// Runs the next iteration and returns `(n, sum)`, or `None` once `iters` iterations
    /// ran (never with `iters=0`).
    pub fn next_sum(&mut self) -> Option<(u64, u64)> {
        if self.params.iters != 0 && self.n >= self.params.iters {
            return None;
        }
        self.n += 1;
        let n = self.n;
        for ((region, h), &seed) in self
            .regions
            .iter_mut()
            .zip(self.hashes.iter_mut())
            .zip(self.seeds.iter())
        {
            *h = workload::step(region, *h, seed, n, &self.params);
        }
        Some((n, workload::line_sum(n, self.hashes.iter().copied())))
    }

    /// Runs iterations up to the next printed one and returns its line (without newline).
    pub fn next_line(&mut self) -> Option<String> {
        loop {
            let (n, sum) = self.next_sum()?;
            if n % self.params.every == 0 {
                return Some(seq_line(n, sum));
            }
        }
    }

    /// The vCPU count this reference runs.
    pub fn cpus(&self) -> u32 {
        self.cpus
    }
}

/// Formats a seq line exactly as the guest does: `seq=<n> sum=<16 lowercase hex>`.
pub fn seq_line(n: u64, sum: u64) -> String {
    let mut buf = [0u8; SEQ_LINE_MAX];
    let len = workload::format_seq_line(n, sum, &mut buf);
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// Parses a seq line into `(n, sum)`.
pub fn parse_seq_line(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("seq=")?;
    let (n, sum) = rest.split_once(" sum=")?;
    if sum.len() != 16
        || !sum
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return None;
    }
    Some((n.parse().ok()?, u64::from_str_radix(sum, 16).ok()?))
}

/// Iterator over the seq lines the guest prints (see [`expected_lines`]).
#[derive(Debug)]
pub struct ExpectedLines {
    reference: Reference,
}

impl Iterator for ExpectedLines {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        self.reference.next_line()
    }
}

/// The seq lines a guest with `params` and `cpus` vCPUs prints, in order, without the
/// ready and done lines and without newlines. The first one is `seq=<every>` (iterations
/// count from 1). Infinite when `params.iters` is 0. Allocates the working set
/// (`wss_mib`) on the first call.
///
/// # Panics
/// If the guest would refuse the parameters ([`Reference::new`] fails); use
/// [`Reference::new`] to get the error instead.
pub fn expected_lines(params: &GuestParams, cpus: u32) -> ExpectedLines {
    match Reference::new(params, cpus) {
        Ok(reference) => ExpectedLines { reference },
        Err(e) => panic!("ftvm-testguest reference: {e}"),
    }
}

/// Result of [`check_output`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputCheck {
    /// Seq lines checked (all matched).
    pub lines: u64,
    /// Iteration of the last checked seq line (0 if none).
    pub last_seq: u64,
    /// Whether the done line was printed after the last expected seq line.
    pub done: bool,
}

/// A mismatch found by [`check_output`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputError {
    /// The ready line never appeared.
    NoReady,
    /// The guest reported an error or a panic.
    GuestFailed(String),
    /// A line differs from the reference.
    Mismatch {
        /// 1-based index of the seq line after the ready line.
        index: u64,
        expected: String,
        got: String,
    },
    /// A line after the done line, or a done line too early.
    Unexpected(String),
    /// The parameters cannot run.
    Layout(LayoutError),
}

impl fmt::Display for OutputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutputError::NoReady => write!(f, "no '{READY_LINE}' line in the output"),
            OutputError::GuestFailed(l) => write!(f, "the guest failed: {l}"),
            OutputError::Mismatch {
                index,
                expected,
                got,
            } => write!(f, "seq line #{index}: expected '{expected}', got '{got}'"),
            OutputError::Unexpected(l) => write!(f, "unexpected line '{l}'"),
            OutputError::Layout(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for OutputError {}

/// Checks a guest's serial output against the reference: everything up to and including
/// the first `ftvm-testguest ready` is skipped (firmware noise, e.g. SeaBIOS under QEMU),
/// then every complete line (`\r` ignored) must be the next expected seq line, and a done
/// line may only follow the last one. A final line without newline is ignored (the VM may
/// still be running). An error or panic line fails the check.
pub fn check_output(
    params: &GuestParams,
    cpus: u32,
    output: &str,
) -> Result<OutputCheck, OutputError> {
    let start = output.find(READY_LINE).ok_or(OutputError::NoReady)?;
    let after = &output[start + READY_LINE.len()..];
    let mut reference = Reference::new(params, cpus).map_err(OutputError::Layout)?;
    let mut check = OutputCheck {
        lines: 0,
        last_seq: 0,
        done: false,
    };
    let complete = match after.rfind('\n') {
        Some(i) => &after[..i],
        None => "",
    };
    // The first piece is the rest of the ready line itself.
    for line in complete.split('\n').skip(1) {
        let line = line.trim_end_matches('\r');
        if line.starts_with(workload::ERROR_PREFIX) || line.starts_with(workload::PANIC_PREFIX) {
            return Err(OutputError::GuestFailed(line.to_string()));
        }
        if check.done {
            return Err(OutputError::Unexpected(line.to_string()));
        }
        if line == DONE_LINE {
            if reference.next_line().is_some() {
                return Err(OutputError::Unexpected(line.to_string()));
            }
            check.done = true;
            continue;
        }
        let expected = reference
            .next_line()
            .ok_or_else(|| OutputError::Unexpected(line.to_string()))?;
        check.lines += 1;
        if line != expected {
            return Err(OutputError::Mismatch {
                index: check.lines,
                expected,
                got: line.to_string(),
            });
        }
        check.last_seq = reference.iterations();
    }
    Ok(check)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> GuestParams {
        GuestParams::from_cmdline(s).unwrap()
    }

    #[test]
    fn deterministic() {
        let a: Vec<String> = expected_lines(&p("iters=20 wss_mib=8 full=5"), 1).collect();
        let b: Vec<String> = expected_lines(&p("iters=20 wss_mib=8 full=5"), 1).collect();
        assert_eq!(a.len(), 20);
        assert_eq!(a, b);
        assert_eq!(parse_seq_line(&a[0]).unwrap().0, 1);
        for (i, l) in a.iter().enumerate() {
            let (n, _) = parse_seq_line(l).unwrap();
            assert_eq!(n, i as u64 + 1);
            assert_eq!(l.len(), format!("seq={n} sum=").len() + 16);
        }
    }

    #[test]
    fn iters_and_every_select_lines_of_one_stream() {
        let all: Vec<String> = expected_lines(&p("iters=30 wss_mib=4"), 2).collect();
        let short: Vec<String> = expected_lines(&p("iters=10 wss_mib=4"), 2).collect();
        assert_eq!(short[..], all[..10]);
        let every: Vec<String> = expected_lines(&p("iters=30 every=7 wss_mib=4"), 2).collect();
        let want: Vec<String> = all.iter().skip(6).step_by(7).cloned().collect();
        assert_eq!(every, want);
        assert_eq!(parse_seq_line(&every[0]).unwrap().0, 7);
        // iters=0 runs forever.
        assert!(expected_lines(&p("iters=0 wss_mib=4"), 2).nth(40).is_some());
    }

    #[test]
    fn different_params_different_lines() {
        let base = "iters=5 wss_mib=4 pages=16 full=3";
        let a: Vec<String> = expected_lines(&p(base), 1).collect();
        for other in [
            "iters=5 wss_mib=5 pages=16 full=3",
            "iters=5 wss_mib=4 pages=17 full=3",
            "iters=5 wss_mib=4 pages=16 full=4",
            "iters=5 wss_mib=4 pages=0 full=3",
        ] {
            let b: Vec<String> = expected_lines(&p(other), 1).collect();
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(&b) {
                assert_ne!(x, y, "{base} vs {other}");
            }
        }
        let two: Vec<String> = expected_lines(&p(base), 2).collect();
        for (x, y) in a.iter().zip(&two) {
            assert_ne!(x, y, "1 vs 2 cpus");
        }
    }

    #[test]
    fn a_lost_page_changes_every_later_line() {
        let params = p("iters=40 wss_mib=1 pages=64 full=10");
        let mut good = Reference::new(&params, 1).unwrap();
        let mut bad = Reference::new(&params, 1).unwrap();
        for _ in 0..5 {
            assert_eq!(good.next_sum(), bad.next_sum());
        }
        // Corrupt one word of one page (as a stale page after a bad restore would be).
        bad.regions[0][3 * PAGE_SIZE + 8] ^= 1;
        let mut diverged = false;
        while let (Some(g), Some(b)) = (good.next_sum(), bad.next_sum()) {
            diverged |= g != b;
            if diverged {
                assert_ne!(g, b, "a later line matched again");
            }
        }
        assert!(diverged, "corruption never detected");
    }

    #[test]
    fn pages_zero_still_counts() {
        let a: Vec<String> = expected_lines(&p("iters=3 pages=0 full=0 wss_mib=1"), 1).collect();
        assert_eq!(a.len(), 3);
        assert_ne!(a[0][6..], a[1][6..]);
    }

    #[test]
    fn seq_line_format() {
        assert_eq!(seq_line(1, 0xab), "seq=1 sum=00000000000000ab");
        assert_eq!(
            seq_line(u64::MAX, u64::MAX),
            "seq=18446744073709551615 sum=ffffffffffffffff"
        );
        assert_eq!(
            parse_seq_line("seq=12 sum=00000000000000ab"),
            Some((12, 0xab))
        );
        assert_eq!(parse_seq_line("seq=12 sum=00000000000000AB"), None);
        assert_eq!(parse_seq_line("seq=12 sum=ab"), None);
    }

    #[test]
    fn layout_errors() {
        assert_eq!(
            Reference::new(&GuestParams::default(), 0).unwrap_err(),
            LayoutError::Cpus(0)
        );
        assert_eq!(
            Reference::new(&GuestParams::default(), 65).unwrap_err(),
            LayoutError::Cpus(65)
        );
    }

    #[test]
    fn check_output_accepts_and_rejects() {
        let params = p("iters=4 every=2 wss_mib=2");
        let lines: Vec<String> = expected_lines(&params, 1).collect();
        let good = format!(
            "SeaBIOS noise..{READY_LINE}\r\n{}\r\n{}\n{DONE_LINE}\n",
            lines[0], lines[1]
        );
        assert_eq!(
            check_output(&params, 1, &good),
            Ok(OutputCheck {
                lines: 2,
                last_seq: 4,
                done: true
            })
        );
        let partial = format!("{READY_LINE}\n{}\nseq=4 su", lines[0]);
        assert_eq!(check_output(&params, 1, &partial).unwrap().lines, 1);
        let bad = format!("{READY_LINE}\n{}\n", lines[1]);
        assert!(matches!(
            check_output(&params, 1, &bad),
            Err(OutputError::Mismatch { index: 1, .. })
        ));
        let early = format!("{READY_LINE}\n{}\n{DONE_LINE}\n", lines[0]);
        assert!(matches!(
            check_output(&params, 1, &early),
            Err(OutputError::Unexpected(_))
        ));
        let failed = format!("{READY_LINE}\nftvm-testguest panic: cpu exception 14\n");
        assert!(matches!(
            check_output(&params, 1, &failed),
            Err(OutputError::GuestFailed(_))
        ));
        assert_eq!(
            check_output(&params, 1, "nothing"),
            Err(OutputError::NoReady)
        );
    }
}

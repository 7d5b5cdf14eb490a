//! The guest's command-line parameters.
//!
//! The type itself lives in the shared workload file (the guest parses its command line
//! with the very same code); this module adds the host-only helpers.

use std::fmt::Write as _;
use std::str::FromStr;

pub use crate::workload::{GuestParams, ParamError};
use crate::workload::{PAGE_SIZE, WSS_BASE};

impl std::error::Error for ParamError {}

impl FromStr for GuestParams {
    type Err = ParamError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GuestParams::from_cmdline(s)
    }
}

impl GuestParams {
    /// The command line that makes the guest use these parameters (every key spelled
    /// out, so it does not depend on the defaults): `wss_mib=64 pages=256 iters=0 every=1
    /// full=1000`. Append other words (`console=ttyS0`) as you like; the guest ignores them.
    pub fn to_cmdline(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "wss_mib={} pages={} iters={} every={} full={}",
            self.wss_mib, self.pages, self.iters, self.every, self.full
        );
        s
    }

    /// Smallest `--memory` (MiB) with which the guest runs with `cpus` vCPUs, assuming the
    /// VMM gives it contiguous RAM from 1 MiB up to the memory size (below the 32-bit PCI
    /// hole): the working set starts at 16 MiB and takes `cpus` equal regions of whole
    /// pages out of `wss_mib`.
    pub fn min_memory_mib(&self, cpus: u32) -> u64 {
        let bytes = self
            .region_pages(cpus.max(1))
            .saturating_mul(u64::from(cpus.max(1)))
            .saturating_mul(PAGE_SIZE as u64);
        let end = WSS_BASE.saturating_add(bytes);
        end.div_ceil(1 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let p = GuestParams::default();
        assert_eq!(
            (p.wss_mib, p.pages, p.iters, p.every, p.full),
            (64, 256, 0, 1, 1000)
        );
        assert_eq!(GuestParams::from_cmdline("").unwrap(), p);
    }

    #[test]
    fn parse_and_ignore_unknown() {
        let p = GuestParams::from_cmdline(
            "console=ttyS0 quiet  wss_mib=8 pages=0x10 iters=100 every=10 full=0 reboot=k",
        )
        .unwrap();
        assert_eq!(
            p,
            GuestParams {
                wss_mib: 8,
                pages: 16,
                iters: 100,
                every: 10,
                full: 0
            }
        );
        assert_eq!(GuestParams::from_cmdline("wss=32").unwrap().wss_mib, 32);
        // The last occurrence wins.
        assert_eq!(
            GuestParams::from_cmdline("pages=1 pages=2").unwrap().pages,
            2
        );
        assert_eq!("iters=7".parse::<GuestParams>().unwrap().iters, 7);
    }

    #[test]
    fn parse_errors() {
        assert_eq!(
            GuestParams::from_cmdline("pages=abc"),
            Err(ParamError::NotANumber("pages"))
        );
        assert_eq!(
            GuestParams::from_cmdline("iters=-1"),
            Err(ParamError::NotANumber("iters"))
        );
        assert_eq!(
            GuestParams::from_cmdline("every=0"),
            Err(ParamError::Zero("every"))
        );
        assert_eq!(
            GuestParams::from_cmdline("wss_mib=0"),
            Err(ParamError::Zero("wss_mib"))
        );
        assert_eq!(
            GuestParams::from_cmdline("wss_mib=4096"),
            Err(ParamError::TooLarge("wss_mib"))
        );
        assert!(GuestParams::from_cmdline("wss_mib=4080").is_ok());
        let msg = ParamError::NotANumber("pages").to_string();
        assert!(msg.contains("pages="), "{msg}");
    }

    #[test]
    fn fault_words() {
        use crate::workload::{fault_from_cmdline, Fault};
        assert_eq!(fault_from_cmdline("iters=3"), None);
        assert_eq!(fault_from_cmdline("fault=ud"), Some((Fault::Ud, 1)));
        assert_eq!(
            fault_from_cmdline("fault_at=7 fault=pf"),
            Some((Fault::Pf, 7))
        );
        assert_eq!(fault_from_cmdline("fault=bogus"), None);
        // Fault words do not change the parameters (or the sums).
        assert_eq!(
            GuestParams::from_cmdline("fault=gp fault_at=2").unwrap(),
            GuestParams::default()
        );
    }

    #[test]
    fn cmdline_roundtrip() {
        let p = GuestParams {
            wss_mib: 3,
            pages: 4096,
            iters: 5,
            every: 2,
            full: 7,
        };
        let line = p.to_cmdline();
        assert_eq!(line, "wss_mib=3 pages=4096 iters=5 every=2 full=7");
        assert_eq!(GuestParams::from_cmdline(&line).unwrap(), p);
        let d = GuestParams::default();
        assert_eq!(GuestParams::from_cmdline(&d.to_cmdline()).unwrap(), d);
    }

    #[test]
    fn min_memory() {
        let p = GuestParams::default();
        assert_eq!(p.min_memory_mib(1), 80);
        assert_eq!(p.min_memory_mib(2), 80);
        // 3 regions of 5461 pages: 16383 of 16384 pages used, still rounds up to 80 MiB.
        assert_eq!(p.min_memory_mib(3), 80);
        let small = GuestParams { wss_mib: 1, ..p };
        assert_eq!(small.min_memory_mib(1), 17);
    }
}

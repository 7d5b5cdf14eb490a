//! Host CPU placement (`--cpu-affinity vcpus=LIST,replication=LIST`).
//!
//! A protected VM's vCPU threads and its replication threads (epoch engine, sender,
//! acknowledgement reader, heartbeats) compete for the same host CPUs: every epoch the
//! engine copies and compares the hot pages and the sender streams them while the guest
//! runs. Pinning the vCPUs to some host CPUs and everything else to others keeps that work
//! off the guest's CPUs (the way Cloud Hypervisor's `--cpus affinity=` pins vCPUs).
//!
//! `vcpus=` applies to every vCPU thread (set by the thread itself when it starts);
//! `replication=` applies to every other thread of the process (the main thread is pinned
//! when the VM is configured, so the threads it starts later inherit it: replication,
//! console, API, device I/O). A LIST is Linux's CPU list syntax, `0`, `2-3` or `0,2-3`;
//! since `,` also separates the keys, a list with commas is written in brackets:
//! `vcpus=[0,2],replication=1`. Every CPU must be one this process may run on.

use std::fmt;
use std::sync::OnceLock;

/// Highest CPU number accepted (the size of `cpu_set_t`).
const MAX_CPU: usize = 1023;

/// A set of host CPUs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuList(Vec<usize>);

impl CpuList {
    /// The CPUs, ascending.
    pub fn cpus(&self) -> &[usize] {
        &self.0
    }

    /// Parse Linux's CPU list syntax: `0`, `0-3`, `0,2-3` (optionally in brackets).
    pub fn parse(s: &str) -> Result<Self, AffinityError> {
        let inner = s.trim();
        let inner = inner
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(inner);
        let bad = |why: String| AffinityError::BadList {
            list: s.to_string(),
            why,
        };
        let mut cpus = Vec::new();
        for part in inner.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(bad("an empty entry".into()));
            }
            let num = |t: &str| -> Result<usize, AffinityError> {
                let n: usize = t
                    .trim()
                    .parse()
                    .map_err(|_| bad(format!("`{t}` is not a CPU number")))?;
                if n > MAX_CPU {
                    return Err(bad(format!("CPU {n} is above {MAX_CPU}")));
                }
                Ok(n)
            };
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => {
                    let n = num(part)?;
                    (n, n)
                }
            };
            if lo > hi {
                return Err(bad(format!("the range {part} runs backwards")));
            }
            cpus.extend(lo..=hi);
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(Self(cpus))
    }

    fn to_set(&self) -> libc::cpu_set_t {
        // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &c in &self.0 {
            // SAFETY: `c <= MAX_CPU` < CPU_SETSIZE (checked when parsed), inside the set.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
        set
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut i = 0;
        while i < self.0.len() {
            let start = self.0[i];
            let mut end = start;
            while i + 1 < self.0.len() && self.0[i + 1] == end + 1 {
                i += 1;
                end += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
            i += 1;
        }
        Ok(())
    }
}

/// Where the process's threads run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuAffinity {
    /// The vCPU threads' CPUs (`None`: not pinned).
    pub vcpus: Option<CpuList>,
    /// Every other thread's CPUs (`None`: not pinned).
    pub replication: Option<CpuList>,
}

/// Why `--cpu-affinity` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AffinityError {
    /// A CPU list that does not parse.
    #[error("--cpu-affinity: bad CPU list `{list}`: {why}")]
    BadList {
        /// The list as given.
        list: String,
        /// What is wrong with it.
        why: String,
    },
    /// Something other than `vcpus=LIST` or `replication=LIST`.
    #[error("--cpu-affinity: `{0}`: expected vcpus=LIST and/or replication=LIST (e.g. vcpus=0,replication=1)")]
    BadKey(String),
    /// A CPU this process may not run on.
    #[error("--cpu-affinity {key}={list}: CPU {cpu} is not available to this process (it may run on {allowed})")]
    Unavailable {
        /// Which key.
        key: &'static str,
        /// The list as given.
        list: String,
        /// The first CPU not available.
        cpu: usize,
        /// The CPUs this process may run on.
        allowed: String,
    },
    /// The kernel refused the affinity.
    #[error("--cpu-affinity: sched_setaffinity({list}) failed: {why}")]
    Set {
        /// The CPUs.
        list: String,
        /// The error.
        why: String,
    },
}

/// Split `s` on the commas that are not inside brackets.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, ch) in s.char_indices() {
        match ch {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

impl CpuAffinity {
    /// Parse `vcpus=LIST,replication=LIST` (either key may be left out; a list with commas
    /// goes in brackets). Does not check the CPUs against the host: see [`Self::check`].
    pub fn parse(s: &str) -> Result<Self, AffinityError> {
        let mut a = CpuAffinity::default();
        // A bare list with commas (`vcpus=0,1`) would read as a second key: the keys are
        // recognized, anything else is an error that names the fix.
        for part in split_top(s) {
            let part = part.trim();
            let Some((key, list)) = part.split_once('=') else {
                return Err(AffinityError::BadKey(part.to_string()));
            };
            let slot = match key.trim() {
                "vcpus" | "vcpu" => &mut a.vcpus,
                "replication" => &mut a.replication,
                _ => return Err(AffinityError::BadKey(part.to_string())),
            };
            if slot.is_some() {
                return Err(AffinityError::BadKey(format!("{part} (given twice)")));
            }
            *slot = Some(CpuList::parse(list)?);
        }
        Ok(a)
    }

    /// Every CPU named must be one this process may run on.
    pub fn check(&self) -> Result<(), AffinityError> {
        let allowed = allowed_cpus()?;
        for (key, list) in [("vcpus", &self.vcpus), ("replication", &self.replication)] {
            let Some(list) = list else { continue };
            if let Some(&cpu) = list.cpus().iter().find(|c| !allowed.0.contains(c)) {
                return Err(AffinityError::Unavailable {
                    key,
                    list: list.to_string(),
                    cpu,
                    allowed: allowed.to_string(),
                });
            }
        }
        Ok(())
    }
}

static PLAN: OnceLock<CpuAffinity> = OnceLock::new();
/// The CPUs the process could use before [`install`].
static BEFORE: OnceLock<CpuList> = OnceLock::new();

/// Check `a`, pin every thread the process has now to `a.replication` (the threads they
/// start later inherit it), and remember `a.vcpus` for the vCPU threads. Call before the
/// vCPU threads start. Once per process; a second call with a different placement is
/// refused.
pub fn install(a: CpuAffinity) -> Result<(), AffinityError> {
    a.check()?;
    let _first_install_wins = BEFORE.set(allowed_cpus()?);
    if let Some(list) = &a.replication {
        pin_this_thread(list)?;
        pin_other_threads(list);
    }
    if let Err(other) = PLAN.set(a.clone()) {
        if other != a {
            return Err(AffinityError::BadKey(
                "the placement was already set differently in this process".into(),
            ));
        }
    }
    Ok(())
}

/// Called by each vCPU thread as it starts: pin it to the `vcpus=` CPUs, if any.
pub fn apply_to_vcpu_thread() {
    if let Some(list) = PLAN.get().and_then(|a| a.vcpus.as_ref()) {
        if let Err(e) = pin_this_thread(list) {
            // The CPUs were checked at start; a host that took them away since leaves the
            // thread where it was (placement is a performance setting).
            eprintln!("ftvm: WARNING: {e}");
        }
    }
}

/// Called by the dirty-log calibration VM's thread: back on every CPU the process could
/// use before the placement (`--cpu-affinity` set), like an unpinned process.
pub fn apply_to_calibration_thread() {
    if let Some(all) = BEFORE.get() {
        if let Err(e) = pin_this_thread(all) {
            eprintln!("ftvm: WARNING: {e}");
        }
    }
}

/// Pin the calling thread to `list`.
pub fn pin_this_thread(list: &CpuList) -> Result<(), AffinityError> {
    let set = list.to_set();
    // SAFETY: sched_setaffinity(0, ...) sets the calling thread's mask from `set`, a valid
    // cpu_set_t of the size passed.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(AffinityError::Set {
            list: list.to_string(),
            why: std::io::Error::last_os_error().to_string(),
        });
    }
    Ok(())
}

/// Pin the process's other threads that exist now (console, fence keeper, ...) to `list`;
/// best effort (a thread that ended meanwhile is skipped).
fn pin_other_threads(list: &CpuList) {
    let set = list.to_set();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for t in tasks.flatten() {
        let Some(tid) = t
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: sched_setaffinity on a thread id of this process, from a valid cpu_set_t
        // of the size passed; a thread that has ended makes it fail with ESRCH, ignored.
        let _ended_or_pinned =
            unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    }
}

/// The CPUs the calling thread may run on.
pub fn allowed_cpus() -> Result<CpuList, AffinityError> {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity(0, ...) writes at most the size passed into `set`.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Err(AffinityError::Set {
            list: "(reading the current mask)".into(),
            why: std::io::Error::last_os_error().to_string(),
        });
    }
    // SAFETY: CPU_ISSET reads bit `c` < CPU_SETSIZE of the set just filled in.
    Ok(CpuList(
        (0..=MAX_CPU)
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_like_linux_and_bad_ones_say_why() {
        assert_eq!(CpuList::parse("0").map(|l| l.0), Ok(vec![0]));
        assert_eq!(CpuList::parse("2-4").map(|l| l.0), Ok(vec![2, 3, 4]));
        assert_eq!(CpuList::parse("[0,2-3]").map(|l| l.0), Ok(vec![0, 2, 3]));
        assert_eq!(CpuList::parse("3,1,1").map(|l| l.0), Ok(vec![1, 3]));
        assert_eq!(
            CpuList::parse("[0,2-3,5]").map(|l| l.to_string()),
            Ok("0,2-3,5".to_string())
        );
        for bad in ["", "a", "1-", "3-1", "0,,1", "99999", "-1"] {
            let e = CpuList::parse(bad).expect_err(bad);
            assert!(e.to_string().contains("bad CPU list"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_option_names_both_thread_groups() {
        let a = CpuAffinity::parse("vcpus=0,replication=1").expect("parses");
        assert_eq!(a.vcpus.map(|l| l.0), Some(vec![0]));
        assert_eq!(a.replication.map(|l| l.0), Some(vec![1]));
        let a = CpuAffinity::parse("vcpus=[0,2],replication=[1,3]").expect("parses");
        assert_eq!(a.vcpus.map(|l| l.0), Some(vec![0, 2]));
        assert_eq!(a.replication.map(|l| l.0), Some(vec![1, 3]));
        let a = CpuAffinity::parse("replication=1-2").expect("parses");
        assert_eq!(
            (a.vcpus, a.replication.map(|l| l.0)),
            (None, Some(vec![1, 2]))
        );
        // A list with a comma outside brackets reads as a key: refused, with the syntax.
        let e = CpuAffinity::parse("vcpus=0,1").expect_err("ambiguous");
        assert!(e.to_string().contains("expected vcpus=LIST"), "{e}");
        for bad in ["cpus=0", "vcpus", "vcpus=0,vcpus=1", "vcpus=x"] {
            assert!(CpuAffinity::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_cpu_the_process_may_not_use_is_refused_by_number() {
        let allowed = allowed_cpus().expect("sched_getaffinity");
        assert!(!allowed.cpus().is_empty());
        let outside = MAX_CPU;
        assert!(!allowed.cpus().contains(&outside));
        let a = CpuAffinity::parse(&format!("vcpus={outside}")).expect("parses");
        let e = a.check().expect_err("not available");
        assert!(
            e.to_string()
                .contains(&format!("CPU {outside} is not available")),
            "{e}"
        );
        let ok = CpuAffinity {
            vcpus: Some(allowed.clone()),
            replication: Some(allowed),
        };
        assert_eq!(ok.check(), Ok(()));
    }

    #[test]
    fn pinning_a_thread_shows_in_the_kernel() {
        let allowed = allowed_cpus().expect("sched_getaffinity");
        let first = CpuList(vec![allowed.cpus()[0]]);
        let seen = std::thread::spawn(move || {
            pin_this_thread(&first).expect("pin");
            std::fs::read_to_string("/proc/thread-self/status").expect("status")
        })
        .join()
        .expect("thread");
        let line = seen
            .lines()
            .find(|l| l.starts_with("Cpus_allowed_list:"))
            .expect("Cpus_allowed_list");
        assert_eq!(
            line.split_whitespace().nth(1),
            Some(allowed.cpus()[0].to_string().as_str())
        );
    }
}

//! Scheduling of the replication threads against the guest.
//!
//! A protected primary's vCPU, epoch engine and sender share one CPU share when the host
//! is busy (one process; with autogroup scheduling one session). The sender streams every
//! epoch's pages, so at equal weight it takes CPU time the vCPU would have run the guest
//! with: measured on a loaded 2-core host, the test guest (a ~1k-page hot set, 10 ms
//! epochs) ran 2.2x faster with the sender at nice +10 than at the vCPU's nice
//! (docs/benchmarks.md). With `FTVM_SENDER_NICE=N` the sender runs N nice levels below
//! the vCPUs while the backup keeps up: epochs then wait for in-flight slots and grow longer (fewer
//! pauses, later output) instead of slowing the guest. Once the oldest unacknowledged
//! epoch has waited a quarter of the acknowledgement deadline, the sender returns to the
//! process's priority, so a starved sender never makes the primary give up on a healthy
//! backup. The heartbeat and acknowledgement threads keep the vCPUs' priority.
//!
//! It is off by default: in one of ~14 loaded benchmark runs with it on, the backup
//! closed the connection (its read timeout: the link was silent for a heartbeat timeout,
//! plausibly the lowered sender preempted while it held the link), which never happened
//! with it off. Until that is understood the guest's speed is not bought with it.

/// How much nicer than the rest of the process the replication sender runs, unless
/// `FTVM_SENDER_NICE` says otherwise: 0, off (see the module docs).
pub const SENDER_NICE: i32 = 0;

/// The sender's niceness increment: `FTVM_SENDER_NICE` (0-19) or [`SENDER_NICE`].
pub fn sender_nice() -> i32 {
    nice_from(std::env::var("FTVM_SENDER_NICE").ok().as_deref())
}

fn nice_from(v: Option<&str>) -> i32 {
    match v.map(str::trim) {
        Some(s) => s.parse::<i32>().map_or(SENDER_NICE, |n| n.clamp(0, 19)),
        None => SENDER_NICE,
    }
}

/// The sender thread's priority: `increment` nicer than the process while the backup keeps
/// up, back at the process's priority when it lags (so that the primary never gives up on
/// a healthy backup because its own sender was starved: see `Primary::sender_lagging`).
/// Only used where the thread may raise its priority again (root, CAP_SYS_NICE or
/// RLIMIT_NICE); elsewhere the sender keeps the process's priority.
#[derive(Debug)]
pub struct SenderPriority {
    tid: libc::id_t,
    base: i32,
    niced: i32,
    lowered: bool,
    enabled: bool,
}

impl SenderPriority {
    /// For the calling thread (the sender), `increment` nicer while not lagging. Any
    /// thread of the process may then call [`SenderPriority::update`].
    pub fn new(increment: i32) -> Self {
        // SAFETY: gettid has no preconditions; it returns this thread's id.
        let tid = unsafe { libc::gettid() } as libc::id_t;
        let base = lower_this_thread(0);
        let enabled = increment > 0 && base.is_some_and(may_return_to);
        let base = base.unwrap_or(0);
        Self {
            tid,
            base,
            niced: (base + increment.max(0)).min(19),
            lowered: false,
            enabled,
        }
    }

    /// Whether the sender may run below the vCPUs at all here.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether it currently runs below the vCPUs.
    pub fn lowered(&self) -> bool {
        self.lowered
    }

    /// Nicer when `lagging` is false, the process's priority when true.
    pub fn update(&mut self, lagging: bool) {
        if !self.enabled || self.lowered != lagging {
            return;
        }
        let want = if lagging { self.base } else { self.niced };
        if set_thread(self.tid, want) {
            self.lowered = !lagging;
        } else if !lagging {
            // Could not lower: leave it. (A failed return is tried again next epoch.)
            self.enabled = false;
        }
    }
}

/// Whether a thread at niceness `base` may return to it after lowering its priority.
fn may_return_to(base: i32) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct, which `lim` is.
    if unsafe { libc::getrlimit(libc::RLIMIT_NICE, &mut lim) } != 0 {
        return false;
    }
    // RLIMIT_NICE: a thread may set niceness down to 20 - rlim_cur.
    20 - (lim.rlim_cur.min(40) as i32) <= base
}

fn set_thread(tid: libc::id_t, nice: i32) -> bool {
    // SAFETY: setpriority(PRIO_PROCESS, tid, n) changes only that thread's niceness (a
    // thread of this process: the sender registered its own id).
    unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) == 0 }
}

/// Make the calling thread `increment` nicer (lower priority) than it is now, at most 19.
/// Best effort: lowering one's own priority needs no privilege; on failure the thread
/// keeps its priority. Returns the thread's niceness afterwards (`None` if unknown).
pub fn lower_this_thread(increment: i32) -> Option<i32> {
    // SAFETY: gettid has no preconditions; it returns this thread's id.
    let tid = unsafe { libc::gettid() } as libc::id_t;
    // getpriority can legitimately return -1, so errno tells failure apart.
    // SAFETY: errno location is this thread's; setting it is how getpriority is used.
    unsafe { *libc::__errno_location() = 0 };
    // SAFETY: getpriority(PRIO_PROCESS, tid) only reads the scheduling niceness of this
    // thread (Linux applies PRIO_PROCESS to a single thread id).
    let now = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
    // SAFETY: reads this thread's errno.
    if now == -1 && unsafe { *libc::__errno_location() } != 0 {
        return None;
    }
    if increment <= 0 {
        return Some(now);
    }
    let want = (now + increment).min(19);
    // SAFETY: setpriority(PRIO_PROCESS, tid, n) changes only this thread's niceness.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, want) };
    (r == 0).then_some(want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nice_setting_is_parsed_and_bounded() {
        assert_eq!(nice_from(None), SENDER_NICE);
        assert_eq!(nice_from(Some("0")), 0);
        assert_eq!(nice_from(Some(" 5 ")), 5);
        assert_eq!(nice_from(Some("40")), 19);
        assert_eq!(nice_from(Some("-3")), 0);
        assert_eq!(nice_from(Some("fast")), SENDER_NICE);
        assert_eq!(SENDER_NICE, 0, "off unless asked for");
    }

    #[test]
    fn the_sender_returns_to_the_process_priority_while_lagging() {
        let seen = std::thread::spawn(|| {
            let base = lower_this_thread(0);
            let mut p = SenderPriority::new(7);
            let mut seen = vec![(base, p.enabled())];
            for lagging in [false, false, true, false] {
                p.update(lagging);
                seen.push((lower_this_thread(0), p.lowered()));
            }
            seen
        })
        .join()
        .expect("thread");
        let (Some(base), enabled) = seen[0] else {
            panic!("getpriority failed: {seen:?}");
        };
        if !enabled {
            // Neither root nor RLIMIT_NICE: the sender must never have lowered itself.
            eprintln!("SKIPPED the lowering part: this user may not raise priority again");
            assert!(
                seen[1..].iter().all(|s| *s == (Some(base), false)),
                "{seen:?}"
            );
            return;
        }
        let niced = Some((base + 7).min(19));
        // Another thread returns the sender to the base while it is busy (lagging).
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let sender = std::thread::spawn(move || {
            let mut p = SenderPriority::new(7);
            p.update(false);
            let _ = tx.send(p);
            let _ = done_rx.recv();
            lower_this_thread(0)
        });
        let mut p = rx.recv().expect("priority");
        p.update(true);
        let _ = done_tx.send(());
        assert_eq!(sender.join().expect("sender"), Some(base));
        assert_eq!(
            seen[1..],
            [
                (niced, true),
                (niced, true),
                (Some(base), false),
                (niced, true)
            ],
            "lowered while keeping up, back at the base while lagging"
        );
    }

    #[test]
    fn a_thread_lowers_only_its_own_priority() {
        let main_before = std::thread::spawn(|| lower_this_thread(0))
            .join()
            .ok()
            .flatten();
        let lowered = std::thread::spawn(|| {
            let before = lower_this_thread(0);
            let after = lower_this_thread(3);
            // Read back from the kernel, not from our own return value.
            (before, after, lower_this_thread(0))
        })
        .join()
        .expect("thread");
        let (Some(before), Some(after), Some(read)) = lowered else {
            panic!("getpriority/setpriority failed: {lowered:?}");
        };
        assert_eq!(after, (before + 3).min(19));
        assert_eq!(read, after, "the kernel holds the new niceness");
        // Another thread (a new one, like the vCPUs) keeps the process's niceness.
        let other = std::thread::spawn(|| lower_this_thread(0))
            .join()
            .ok()
            .flatten();
        assert_eq!(other, main_before);
    }
}

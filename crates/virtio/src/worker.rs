//! What every device type's worker thread needs the same way: an epoll set over the
//! queues' eventfds plus a kick eventfd, the handle to stop the thread, and the config
//! space read.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::device::DeviceError;

/// A running device thread: stopped by setting `stop` and kicking it awake.
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) kick: Arc<EventFd>,
    pub(crate) handle: JoinHandle<()>,
}

impl Worker {
    /// Stop the thread and wait for it.
    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.kick.write(1);
        let _ = self.handle.join();
    }
}

/// An `io::Error` mapper naming `device` and what was being done.
pub(crate) fn io_error(
    device: &'static str,
    what: &str,
) -> impl FnOnce(std::io::Error) -> DeviceError {
    let what = what.to_string();
    move |source| DeviceError::Io {
        device,
        what,
        source,
    }
}

/// A kick eventfd and an epoll set watching `queue_fds` and the kick for input (each
/// event carries its fd as data).
pub(crate) fn watch_queues(
    device: &'static str,
    queue_fds: &[RawFd],
) -> Result<(Arc<EventFd>, Epoll), DeviceError> {
    let kick = Arc::new(
        EventFd::new(libc::EFD_NONBLOCK).map_err(io_error(device, "creating an eventfd"))?,
    );
    let epoll = Epoll::new().map_err(io_error(device, "creating an epoll instance"))?;
    for &fd in queue_fds.iter().chain([kick.as_raw_fd()].iter()) {
        epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, fd as u64),
            )
            .map_err(io_error(device, "watching a queue eventfd"))?;
    }
    Ok((kick, epoll))
}

/// Copy `config[offset..]` into `data`; bytes past the end read as zero.
pub(crate) fn read_config(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|j| config.get(j))
            .copied()
            .unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_past_the_end_are_zero() {
        let mut d = [0xffu8; 4];
        read_config(&[1, 2, 3], 1, &mut d);
        assert_eq!(d, [2, 3, 0, 0]);
        read_config(&[1, 2, 3], u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }
}

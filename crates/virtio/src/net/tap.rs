//! A host TAP device, opened by name (created if it does not exist).

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, Ordering};

use ftvm_devices::FrameWriter;

const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_UP: i16 = 0x1;
/// _IOW('T', 202, int)
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str) -> Self {
        let mut r = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        r
    }
}

/// Why a TAP could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// Not a usable interface name.
    #[error("TAP name '{0}' is not valid: 1 to 15 characters, no '/', ':' or white space")]
    Name(String),
    /// /dev/net/tun is missing or not accessible.
    #[error("cannot open /dev/net/tun for TAP {name}: {source} (is the tun module loaded?)")]
    Tun {
        /// TAP name.
        name: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Creating or attaching the TAP was refused.
    #[error("cannot open TAP {name}: {source}{hint}")]
    Attach {
        /// TAP name.
        name: String,
        /// The OS error.
        source: std::io::Error,
        /// What to do about it.
        hint: &'static str,
    },
}

/// An open TAP device (no packet information header, no vnet header: one read or write
/// is one Ethernet frame).
#[derive(Debug)]
pub struct Tap {
    name: String,
    file: File,
    sent: AtomicU64,
    send_errors: AtomicU64,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

impl Tap {
    /// Open TAP `name`, creating it if it does not exist, and bring its link up. Needs
    /// CAP_NET_ADMIN unless the TAP already exists and belongs to this user.
    pub fn open(name: &str) -> Result<Self, TapError> {
        if !valid_name(name) {
            return Err(TapError::Name(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| TapError::Tun {
                name: name.to_string(),
                source,
            })?;
        let mut req = IfReq::new(name);
        req.flags = IFF_TAP | IFF_NO_PI;
        // SAFETY: TUNSETIFF reads (and writes back) one `struct ifreq`; `req` is a
        // properly sized, live ifreq (16-byte name + 24-byte union) for the call.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) };
        if ret < 0 {
            let source = std::io::Error::last_os_error();
            let hint = match source.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => " (creating or attaching a TAP needs CAP_NET_ADMIN: run as root, or create it beforehand with `ip tuntap add NAME mode tap user USER`)",
                Some(libc::EBUSY) => " (another process has it open)",
                Some(libc::EINVAL) => " (an interface of that name exists and is not a TAP)",
                _ => "",
            };
            return Err(TapError::Attach {
                name: name.to_string(),
                source,
                hint,
            });
        }
        if let Err(e) = set_up(name) {
            eprintln!("ftvm: net: TAP {name} is open but its link could not be set up: {e} (set it up with `ip link set {name} up`)");
        }
        Ok(Self {
            name: name.to_string(),
            file,
            sent: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Read one frame into `buf`; `Ok(None)` when none is waiting.
    pub fn read_frame(&self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        match (&self.file).read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Frames written and frames the kernel refused.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.send_errors.load(Ordering::Relaxed),
        )
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl FrameWriter for Tap {
    fn write_frame(&self, frame: &[u8]) {
        // A full TAP queue or a link that is down drops the frame, as a wire would.
        // A TAP write is all or nothing: one frame.
        match (&self.file).write(frame) {
            Ok(n) if n == frame.len() => self.sent.fetch_add(1, Ordering::Relaxed),
            _ => self.send_errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn set_up(name: &str) -> std::io::Result<()> {
    // SAFETY: plain socket(2) call; the fd is owned by `sock` right after.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut req = IfReq::new(name);
    // SAFETY: SIOCGIFFLAGS fills the flags of a live, properly sized ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if req.flags & IFF_UP != 0 {
        return Ok(());
    }
    req.flags |= IFF_UP;
    // SAFETY: SIOCSIFFLAGS reads a live, properly sized ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for bad in ["", "a/b", "a b", "x:1", "0123456789abcdef"] {
            assert!(matches!(Tap::open(bad), Err(TapError::Name(_))), "{bad}");
        }
    }
}

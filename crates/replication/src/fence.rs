//! Fencing with a lock file: at most one side runs the VM (invariant 5).
//!
//! The primary holds an exclusive `flock` on a file for as long as its process lives; a
//! backup must take the same lock before it resumes the VM. The kernel releases the lock
//! when the primary's process dies (SIGKILL included), so a dead primary never blocks a
//! takeover, while a live one (say, behind a cut replication link) always does. The file
//! must be on a filesystem both hosts lock coherently: the same host, or a shared
//! filesystem with working `flock` (NFSv4, CephFS, ...).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::ReplicationError;

/// A held fence; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct Fence {
    file: File,
    path: PathBuf,
}

fn open(path: &Path) -> Result<File, ReplicationError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| ReplicationError::io(&format!("opening fence lock {}", path.display()), e))
}

fn try_lock(file: &File) -> Result<bool, std::io::Error> {
    // SAFETY: flock on a file descriptor we own; LOCK_NB makes it return at once.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

impl Fence {
    /// Take the fence now, or fail saying another process holds it.
    pub fn acquire_now(path: &Path) -> Result<Self, ReplicationError> {
        let file = open(path)?;
        match try_lock(&file) {
            Ok(true) => Ok(Self {
                file,
                path: path.to_path_buf(),
            }),
            Ok(false) => Err(ReplicationError::Peer(format!(
                "fence lock {} is held by another process: another ftvm runs this VM",
                path.display()
            ))),
            Err(e) => Err(ReplicationError::io(
                &format!("locking {}", path.display()),
                e,
            )),
        }
    }

    /// Wait until the fence is free, then take it; `waiting` is called every few seconds
    /// with the time waited so far.
    pub fn acquire_wait(
        path: &Path,
        mut waiting: impl FnMut(Duration),
    ) -> Result<Self, ReplicationError> {
        let file = open(path)?;
        let t0 = Instant::now();
        let mut last_report = Instant::now();
        loop {
            match try_lock(&file) {
                Ok(true) => {
                    return Ok(Self {
                        file,
                        path: path.to_path_buf(),
                    })
                }
                Ok(false) => {}
                Err(e) => {
                    return Err(ReplicationError::io(
                        &format!("locking {}", path.display()),
                        e,
                    ))
                }
            }
            if last_report.elapsed() >= Duration::from_secs(2)
                || t0.elapsed() < Duration::from_millis(20)
            {
                waiting(t0.elapsed());
                last_report = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lock file's content, read through the locked file.
    pub fn read_content(&self) -> Result<Vec<u8>, ReplicationError> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = self
                .file
                .read_at(&mut buf, out.len() as u64)
                .map_err(|e| self.err("reading", e))?;
            if n == 0 || out.len() >= 1 << 16 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    /// Replace the lock file's content and make it durable (`fdatasync`) before
    /// returning, through the locked file: the flock is not touched. Written over the old
    /// content first, then cut to length, so the file is never empty in between.
    pub fn write_content(&self, value: &[u8]) -> Result<(), ReplicationError> {
        self.file
            .write_all_at(value, 0)
            .and_then(|()| self.file.set_len(value.len() as u64))
            .and_then(|()| self.file.sync_data())
            .map_err(|e| self.err("writing", e))
    }

    fn err(&self, what: &str, e: std::io::Error) -> ReplicationError {
        ReplicationError::io(&format!("{what} fence lock {}", self.path.display()), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fence");
        let a = Fence::acquire_now(&p).unwrap();
        // flock locks belong to open file descriptions: a second open conflicts, even in
        // the same process.
        assert!(Fence::acquire_now(&p).is_err());
        drop(a);
        let _b = Fence::acquire_now(&p).unwrap();
    }
}

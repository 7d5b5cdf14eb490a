//! Snapshots: a directory with the state file and a full or diff memory file.
//!
//! ```text
//! DIR/state        state container (ftvm-wire), body = SnapshotBody (postcard)
//! DIR/memory       full snapshot: sparse raw image, file offset = guest-physical address
//! DIR/memory.diff  diff snapshot: the pages written since the parent snapshot
//! ```
//! A diff snapshot names its parent directory; restoring it restores the chain from the
//! full snapshot forward. Formats: docs/snapshot-format.md.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ftvm_vmm::memory::{for_each_region, for_each_region_mut};
use ftvm_vmm::state::{VmShape, VmState};
use ftvm_vmm::{RunState, Vm, VmmError};
use ftvm_wire::snapshot::{
    read_memory_diff, read_memory_region, read_state_file, write_state_file, DiffWriter,
    MemoryFileWriter, FLAG_DIFF_MEMORY,
};
use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress};

use crate::dirty::{copy_runs, runs, take_dirty_pages};
use crate::error::ReplicationError;
use crate::snapshot_disks::{self, DiskChain};
use ftvm_devices::disk::Disk;
use std::sync::Arc;

const STATE_FILE: &str = "state";
const MEMORY_FILE: &str = "memory";
const DIFF_FILE: &str = "memory.diff";

/// The state file's body.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotBody {
    /// For a diff snapshot, the directory of the snapshot it is relative to.
    pub parent: Option<PathBuf>,
    /// The encoded [`VmState`].
    pub vm_state: Vec<u8>,
}

/// What a snapshot took.
#[derive(Debug, Clone, Copy, Default)]
pub struct SnapshotStats {
    /// Time the vCPUs were paused for (pause request to resume).
    pub paused: Duration,
    /// Pages written to the memory file.
    pub pages: u64,
    /// Whether it is a diff snapshot.
    pub diff: bool,
}

/// Tracks what a diff snapshot is relative to.
#[derive(Debug, Default)]
pub struct SnapshotChain {
    last: Option<PathBuf>,
    /// Staging buffer reused across snapshots: fresh memory costs a page fault per 4 KiB
    /// on first touch, which would land inside the pause.
    staging: Vec<u8>,
    /// The VM's disks: copied into each snapshot (or their written blocks, for a diff).
    disks: DiskChain,
}

impl SnapshotChain {
    /// A chain for a VM with `disks` (in `--disk` order).
    pub fn with_disks(disks: Vec<Arc<Disk>>) -> Self {
        Self {
            disks: DiskChain::new(disks),
            ..Self::default()
        }
    }

    /// Take a snapshot of `vm` into `dir` (created if needed; must be empty of snapshot
    /// files). With `diff`, only pages written since the previous snapshot of this chain
    /// are saved. With `keep_paused` the VM stays paused afterwards.
    pub fn take(
        &mut self,
        vm: &Vm,
        dir: &Path,
        diff: bool,
        keep_paused: bool,
    ) -> Result<SnapshotStats, ReplicationError> {
        let parent = match (diff, &self.last) {
            (true, Some(p)) => Some(p.clone()),
            (true, None) => return Err(ReplicationError::SnapshotDir {
                path: dir.to_path_buf(),
                reason:
                    "a diff snapshot needs an earlier snapshot of this VM: take a full one first"
                        .into(),
            }),
            (false, _) => None,
        };
        if parent.is_some() {
            self.disks.check_diff(dir)?;
        }
        prepare_dir(dir)?;
        for f in snapshot_disks::file_names(self.disks.len()) {
            if dir.join(&f).exists() {
                return Err(ReplicationError::SnapshotDir {
                    path: dir.to_path_buf(),
                    reason: format!(
                        "already holds a snapshot ({f} exists): choose an empty directory"
                    ),
                });
            }
        }
        let was_running = vm.run_state() == RunState::Running;
        let t0 = Instant::now();
        vm.pause()?;
        // Only the capture happens while paused: state, dirty set, and a copy of the pages.
        // Files are written (and fsynced) after the vCPUs run again.
        let captured = capture(vm, parent.is_some(), std::mem::take(&mut self.staging));
        let disks = match &captured {
            Ok(_) => self.disks.capture_paused(dir, parent.is_some()),
            Err(_) => Ok(Default::default()),
        };
        let paused = t0.elapsed();
        if was_running && !keep_paused {
            vm.resume()?;
        }
        let mut captured = captured?;
        let disks = disks?;
        // The disk files before the state file: a directory with a state file is complete.
        let pages = disks
            .write(dir)
            .and_then(|()| write(dir, parent, &captured));
        self.staging = std::mem::take(&mut captured.bytes);
        let pages = pages?;
        self.last = Some(dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()));
        Ok(SnapshotStats {
            paused,
            pages,
            diff,
        })
    }
}

/// What was taken from a paused VM.
struct Captured {
    state: VmState,
    /// (gpa, page count) runs and their bytes, back to back.
    runs: Vec<(u64, u32)>,
    bytes: Vec<u8>,
}

fn capture(vm: &Vm, diff: bool, mut bytes: Vec<u8>) -> Result<Captured, ReplicationError> {
    let t = Instant::now();
    let state = vm.save_state()?;
    let t_state = t.elapsed();
    if diff {
        let r = runs(&take_dirty_pages(vm)?);
        let t_dirty = t.elapsed();
        copy_runs(vm, &r, &mut bytes)?;
        if std::env::var_os("FTVM_TRACE_CAPTURE").is_some() {
            eprintln!(
                "capture: state {t_state:?} dirty {:?} copy {:?}",
                t_dirty - t_state,
                t.elapsed() - t_dirty
            );
        }
        return Ok(Captured {
            state,
            runs: r,
            bytes,
        });
    }
    // From here on, track writes so that a later diff has its base. Clearing both logs
    // now, while paused, makes "dirty" mean "since this snapshot".
    vm.set_dirty_logging(true)?;
    let _ = take_dirty_pages(vm)?;
    let mut r = Vec::new();
    bytes.clear();
    // SAFETY: the VM is paused (or never started), so nothing writes guest memory while
    // it is read.
    unsafe {
        for_each_region(vm.memory(), |gpa, region| -> Result<(), ReplicationError> {
            r.push((gpa, (region.len() / 4096) as u32));
            bytes.extend_from_slice(region);
            Ok(())
        })?;
    }
    Ok(Captured {
        state,
        runs: r,
        bytes,
    })
}

fn write(dir: &Path, parent: Option<PathBuf>, c: &Captured) -> Result<u64, ReplicationError> {
    let diff = parent.is_some();
    let mut pages = 0u64;
    if diff {
        let mut w = DiffWriter::create(&dir.join(DIFF_FILE))?;
        let mut off = 0;
        for (gpa, n) in &c.runs {
            let len = *n as usize * 4096;
            w.write_run(*gpa, &c.bytes[off..off + len])?;
            off += len;
            pages += u64::from(*n);
        }
        w.finish()?;
    } else {
        let mut w = MemoryFileWriter::create(&dir.join(MEMORY_FILE))?;
        let mut off = 0;
        for (gpa, n) in &c.runs {
            let len = *n as usize * 4096;
            w.write_region(*gpa, &c.bytes[off..off + len])?;
            off += len;
        }
        pages = w.finish()?.bytes_written / 4096;
    }
    let body = SnapshotBody {
        parent,
        vm_state: c.state.to_bytes()?,
    };
    let body = postcard::to_stdvec(&body).map_err(|e| ReplicationError::SnapshotDir {
        path: dir.to_path_buf(),
        reason: format!("encoding the state: {e}"),
    })?;
    write_state_file(
        &dir.join(STATE_FILE),
        &body,
        if diff { FLAG_DIFF_MEMORY } else { 0 },
    )?;
    Ok(pages)
}

fn prepare_dir(dir: &Path) -> Result<(), ReplicationError> {
    let err = |reason: String| ReplicationError::SnapshotDir {
        path: dir.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create: {e}")))?;
    for f in [STATE_FILE, MEMORY_FILE, DIFF_FILE] {
        if dir.join(f).exists() {
            return Err(err(format!(
                "already holds a snapshot ({f} exists): choose an empty directory"
            )));
        }
    }
    Ok(())
}

/// A snapshot read back: its state and the memory chain to apply (full first).
#[derive(Debug)]
pub struct LoadedSnapshot {
    /// The VM state of the newest snapshot.
    pub state: VmState,
    /// Snapshot directories from the full one to this one.
    pub chain: Vec<PathBuf>,
}

impl LoadedSnapshot {
    /// The shape of the VM to create for this snapshot.
    pub fn shape(&self) -> VmShape {
        self.state.shape
    }
}

fn read_body(dir: &Path) -> Result<(u32, SnapshotBody), ReplicationError> {
    let (flags, body) = read_state_file(&dir.join(STATE_FILE))?;
    let (body, rest): (SnapshotBody, _) =
        postcard::take_from_bytes(&body).map_err(|e| ReplicationError::SnapshotDir {
            path: dir.to_path_buf(),
            reason: format!("state body does not decode: {e}"),
        })?;
    if !rest.is_empty() {
        return Err(ReplicationError::SnapshotDir {
            path: dir.to_path_buf(),
            reason: format!("{} trailing bytes after the state body", rest.len()),
        });
    }
    Ok((flags, body))
}

/// Read the snapshot in `dir` (and its parents, for a diff).
pub fn load(dir: &Path) -> Result<LoadedSnapshot, ReplicationError> {
    let (flags, body) = read_body(dir)?;
    let state = VmState::from_bytes(&body.vm_state).map_err(|e| ReplicationError::SnapshotDir {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut chain = vec![dir.to_path_buf()];
    let mut is_diff = flags & FLAG_DIFF_MEMORY != 0;
    let mut parent = body.parent;
    while is_diff {
        let p = parent.ok_or_else(|| ReplicationError::SnapshotDir {
            path: chain[0].clone(),
            reason: "diff snapshot without a parent".into(),
        })?;
        if chain.contains(&p) || chain.len() > 10_000 {
            return Err(ReplicationError::SnapshotDir {
                path: p,
                reason: "snapshot parents form a loop".into(),
            });
        }
        let (f, b) = read_body(&p)?;
        let parent_state =
            VmState::from_bytes(&b.vm_state).map_err(|e| ReplicationError::SnapshotDir {
                path: p.clone(),
                reason: e.to_string(),
            })?;
        if let Some(d) = parent_state.shape.diff(&state.shape) {
            return Err(ReplicationError::SnapshotDir {
                path: p,
                reason: format!("parent snapshot is of another VM: {d}"),
            });
        }
        chain.insert(0, p);
        is_diff = f & FLAG_DIFF_MEMORY != 0;
        parent = b.parent;
    }
    Ok(LoadedSnapshot { state, chain })
}

/// Fill a created, never-started VM's memory from the snapshot chain, then its state.
pub fn restore_into(vm: &Vm, snap: &LoadedSnapshot) -> Result<(), ReplicationError> {
    if let Some(d) = vm.shape().diff(&snap.state.shape) {
        return Err(VmmError::StateMismatch(d).into());
    }
    for (i, dir) in snap.chain.iter().enumerate() {
        if i == 0 {
            let path = dir.join(MEMORY_FILE);
            // SAFETY: the VM is created and not started: nothing else touches its memory.
            unsafe {
                for_each_region_mut(vm.memory(), |gpa, bytes| -> Result<(), ReplicationError> {
                    read_memory_region(&path, gpa, bytes)?;
                    Ok(())
                })?;
            }
        } else {
            read_memory_diff(&dir.join(DIFF_FILE), |gpa, page| {
                vm.memory()
                    .write_slice(page, GuestAddress(gpa))
                    .map_err(|e| std::io::Error::other(e.to_string()))
            })?;
        }
    }
    vm.restore_state(&snap.state)?;
    Ok(())
}

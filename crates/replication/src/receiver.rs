//! The receiving side of migration and replication: a replica of the VM that is built,
//! epoch by epoch, from complete and verified epochs only.

use std::collections::VecDeque;
use std::sync::Arc;

use ftvm_devices::output::DirectOutput;
use ftvm_vmm::state::VmState;
use ftvm_vmm::Vm;
use ftvm_wire::{PageWrite, StagedEpoch};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::error::ReplicationError;
use crate::outputs::EpochOutput;
use crate::written_pages::WrittenPages;

const PAGE: u64 = 4096;

/// A replica: a created, never-started VM whose memory holds the last committed epoch,
/// plus that epoch's state and the recent epochs' outputs.
#[derive(Debug)]
pub struct Replica {
    vm: Arc<Vm>,
    state: Option<Vec<u8>>,
    committed: Option<u64>,
    outputs: VecDeque<EpochOutput>,
    zero: Vec<u8>,
    /// Pages the replica has written (one bit per page frame). Memory of a fresh VM is
    /// all zero, so zero runs over pages never written here need no write at all: that
    /// spares the first full copy ~3/4 of its memory writes (and the target the page
    /// faults and RAM of the untouched zero pages).
    written: WrittenPages,
    /// Whether the memory was all zero when the replica began (see [`Replica::fresh`]).
    fresh: bool,
    disks: Vec<Arc<ftvm_devices::disk::Disk>>,
    /// The newest epoch the primary said it has released the output of.
    pub primary_released: u64,
}

impl Replica {
    /// A replica over `vm` (created with the primary's shape, never started). Its memory
    /// may hold anything (e.g. a replica of an earlier connection): every write is done.
    pub fn new(vm: Arc<Vm>) -> Self {
        Self {
            vm,
            state: None,
            committed: None,
            outputs: VecDeque::new(),
            zero: vec![0u8; 2 << 20],
            written: WrittenPages::default(),
            fresh: false,
            disks: Vec::new(),
            primary_released: 0,
        }
    }

    /// A replica over a VM created just now and never written to: its memory is all
    /// zero, so zero runs over pages the replica has not written are skipped.
    pub fn fresh(vm: Arc<Vm>) -> Self {
        Self {
            fresh: true,
            ..Self::new(vm)
        }
    }

    /// A replica over a VM that already holds epoch `epoch` (memory, disks) whose
    /// encoded state is `state`, and whose output through `epoch` was released: a former
    /// primary that became the backup at a planned switchover (crate::switchover).
    pub fn seeded(vm: Arc<Vm>, state: Vec<u8>, epoch: u64) -> Self {
        Self {
            state: Some(state),
            committed: Some(epoch),
            primary_released: epoch,
            ..Self::new(vm)
        }
    }

    /// The replica's disks: each verified epoch's disk writes are written to them.
    pub fn with_disks(mut self, disks: Vec<Arc<ftvm_devices::disk::Disk>>) -> Self {
        self.disks = disks;
        self
    }

    /// The VM.
    pub fn vm(&self) -> &Arc<Vm> {
        &self.vm
    }

    /// The last committed epoch.
    pub fn committed(&self) -> Option<u64> {
        self.committed
    }

    /// Whether the replica has a complete VM state (can be resumed).
    pub fn has_state(&self) -> bool {
        self.state.is_some()
    }

    /// Apply a complete, verified epoch: memory first, then its state and outputs become
    /// the replica's. Only whole epochs reach here (the assembler discards partial ones).
    /// Check `staged` before any of it touches the replica: every page run inside guest
    /// memory, the state decodable (so an acknowledged epoch can always be resumed), and
    /// present in every epoch once the replica has one. A refused epoch leaves the
    /// replica as it was.
    pub fn validate(&self, staged: &StagedEpoch) -> Result<(), ReplicationError> {
        let mem = self.vm.memory();
        for w in staged.page_writes() {
            let (gpa, len) = match w {
                PageWrite::Data { gpa, data } => (gpa, data.len()),
                PageWrite::Zero { gpa, npages } => (gpa, (npages as usize).saturating_mul(4096)),
            };
            if !GuestMemoryBackend::check_range(mem, GuestAddress(gpa), len) {
                return Err(ReplicationError::Memory {
                    gpa,
                    reason: format!(
                        "epoch {} writes {len} bytes outside guest memory; epoch refused",
                        staged.epoch()
                    ),
                });
            }
        }
        match staged.state() {
            Some(s) => {
                VmState::from_bytes(s)?;
            }
            None if self.state.is_some() => {
                return Err(ReplicationError::Peer(format!(
                    "protected epoch {} carries no VM state; epoch refused",
                    staged.epoch()
                )))
            }
            None => {}
        }
        Ok(())
    }

    /// Apply a verified epoch ([`validate`](Self::validate) it first).
    pub fn apply(&mut self, staged: &StagedEpoch) -> Result<(), ReplicationError> {
        self.validate(staged)?;
        for w in staged.page_writes() {
            self.write_pages(w)?;
        }
        // The disk writes of the same verified epoch; flushed images are fdatasync'ed
        // before this returns (and so before the caller acknowledges the epoch).
        crate::disk_epoch::apply_disk_epoch(&self.disks, staged)?;
        if let Some(s) = staged.state() {
            self.state = Some(s.to_vec());
        }
        let chunks: Vec<(u16, Vec<u8>)> = staged
            .outputs()
            .map(|(stream, bytes)| (stream, bytes.to_vec()))
            .collect();
        self.outputs.push_back(EpochOutput {
            epoch: staged.epoch(),
            chunks,
        });
        // Outputs the primary has released can never be needed again.
        while self
            .outputs
            .front()
            .is_some_and(|e| e.epoch <= self.primary_released)
        {
            self.outputs.pop_front();
        }
        self.committed = Some(staged.epoch());
        Ok(())
    }

    /// Apply one `Pages` or `ZeroPages` message right away (a migration target, whose
    /// assembler runs with [`pages_applied_on_arrival`](ftvm_wire::EpochAssembler::pages_applied_on_arrival)
    /// and has accepted the message): every run is checked to lie inside guest memory
    /// before any is written. Other messages are ignored. Returns whether it wrote.
    pub fn apply_pages_on_arrival(
        &mut self,
        msg: &ftvm_wire::Message<'_>,
    ) -> Result<bool, ReplicationError> {
        let writes: Vec<PageWrite<'_>> = match msg {
            ftvm_wire::Message::Pages(p) => p
                .runs()
                .map(|(gpa, data)| PageWrite::Data { gpa, data })
                .collect(),
            ftvm_wire::Message::ZeroPages(z) => z
                .runs()
                .map(|(gpa, npages)| PageWrite::Zero { gpa, npages })
                .collect(),
            _ => return Ok(false),
        };
        let epoch = msg.data_epoch().unwrap_or_default();
        for w in &writes {
            self.check_page_write(w, epoch)?;
        }
        for w in writes {
            self.write_pages(w)?;
        }
        Ok(true)
    }

    fn check_page_write(&self, w: &PageWrite<'_>, epoch: u64) -> Result<(), ReplicationError> {
        let (gpa, len) = match *w {
            PageWrite::Data { gpa, data } => (gpa, data.len()),
            PageWrite::Zero { gpa, npages } => (gpa, (npages as usize).saturating_mul(4096)),
        };
        if !GuestMemoryBackend::check_range(self.vm.memory(), GuestAddress(gpa), len) {
            return Err(ReplicationError::Memory {
                gpa,
                reason: format!(
                    "epoch {epoch} writes {len} bytes outside guest memory; epoch refused"
                ),
            });
        }
        Ok(())
    }

    fn write_pages(&mut self, w: PageWrite<'_>) -> Result<(), ReplicationError> {
        let vm = self.vm.clone();
        let mem = vm.memory();
        match w {
            PageWrite::Data { gpa, data } => {
                self.written.mark(gpa / PAGE, data.len() as u64 / PAGE);
                mem.write_slice(data, GuestAddress(gpa))
                    .map_err(|e| ReplicationError::Memory {
                        gpa,
                        reason: e.to_string(),
                    })?;
            }
            PageWrite::Zero { gpa, npages } => {
                // Only the stretches that hold something need zeroing (on a fresh
                // replica, those it wrote; otherwise all of them).
                let (first, n) = (gpa / PAGE, u64::from(npages));
                if !self.fresh {
                    return self.write_zeros(gpa, (n * PAGE) as usize);
                }
                self.written
                    .for_each_written_run(first, n, |start, count| {
                        self.write_zeros(start * PAGE, (count * PAGE) as usize)
                    })?;
            }
        }
        Ok(())
    }

    fn write_zeros(&self, gpa: u64, len: usize) -> Result<(), ReplicationError> {
        let mem = self.vm.memory();
        let mut left = len;
        let mut at = gpa;
        while left > 0 {
            let n = left.min(self.zero.len());
            mem.write_slice(&self.zero[..n], GuestAddress(at))
                .map_err(|e| ReplicationError::Memory {
                    gpa: at,
                    reason: e.to_string(),
                })?;
            left -= n;
            at += n as u64;
        }
        Ok(())
    }

    /// Turn the replica into the running VM's starting point: restore the last committed
    /// state onto the fresh vCPUs and release the outputs the primary may not have
    /// released (every kept epoch after the one the primary last reported released).
    /// The caller then starts the VM.
    pub fn take_over(&mut self, out: &DirectOutput) -> Result<u64, ReplicationError> {
        let state = self.state.as_ref().ok_or_else(|| {
            ReplicationError::Peer(
                "no complete epoch with VM state was received: nothing to take over".into(),
            )
        })?;
        let state = VmState::from_bytes(state)?;
        // The pages the replica writes are not guest writes: start the new primary's
        // dirty tracking clean.
        let _ = ftvm_vmm::memory::take_vmm_dirty_pages(self.vm.memory());
        self.vm.restore_state(&state)?;
        // Tell the network where the guest is now, before its held frames leave from here.
        self.vm.announce_network();
        for e in self
            .outputs
            .iter()
            .filter(|e| e.epoch > self.primary_released)
        {
            for (stream, bytes) in &e.chunks {
                out.write_stream(*stream, bytes);
            }
        }
        Ok(self.committed.unwrap_or(0))
    }
}

#[cfg(test)]
#[path = "receiver_tests.rs"]
mod tests;

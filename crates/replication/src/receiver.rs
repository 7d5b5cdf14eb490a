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

/// A replica: a created, never-started VM whose memory holds the last committed epoch,
/// plus that epoch's state and the recent epochs' outputs.
#[derive(Debug)]
pub struct Replica {
    vm: Arc<Vm>,
    state: Option<Vec<u8>>,
    committed: Option<u64>,
    outputs: VecDeque<EpochOutput>,
    zero: Vec<u8>,
    /// The newest epoch the primary said it has released the output of.
    pub primary_released: u64,
}

impl Replica {
    /// A replica over `vm` (created with the primary's shape, never started).
    pub fn new(vm: Arc<Vm>) -> Self {
        Self {
            vm,
            state: None,
            committed: None,
            outputs: VecDeque::new(),
            zero: vec![0u8; 2 << 20],
            primary_released: 0,
        }
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
        let mem = self.vm.memory();
        for w in staged.page_writes() {
            match w {
                PageWrite::Data { gpa, data } => {
                    mem.write_slice(data, GuestAddress(gpa)).map_err(|e| {
                        ReplicationError::Memory {
                            gpa,
                            reason: e.to_string(),
                        }
                    })?;
                }
                PageWrite::Zero { gpa, npages } => {
                    let mut left = npages as usize * 4096;
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
                }
            }
        }
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
        for e in self
            .outputs
            .iter()
            .filter(|e| e.epoch > self.primary_released)
        {
            for (_, bytes) in &e.chunks {
                out.write_now(bytes);
            }
        }
        Ok(self.committed.unwrap_or(0))
    }
}

//! Checked access to descriptor chains popped from a `virtio_queue::Queue`.
//!
//! `virtio-queue` parses descriptors and stops a looping chain after as many descriptors
//! as the queue has; these helpers turn such a chain, a chain whose next index is out of
//! range, a chain longer than a device accepts, and buffers outside guest memory into
//! errors the device reports as NEEDS_RESET.

use std::ops::Deref;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemory as _};

use crate::GuestMemory;

/// What is wrong with a chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The chain loops or points past the table (it still had a next descriptor when the
    /// queue-size limit or an invalid index ended it).
    #[error("descriptor chain at head {head} loops or points outside the descriptor table")]
    Unterminated {
        /// Head index.
        head: u16,
    },
    /// More bytes than the device accepts.
    #[error("descriptor chain at head {head} holds more than {limit} bytes")]
    TooLong {
        /// Head index.
        head: u16,
        /// The device's limit.
        limit: usize,
    },
    /// A device-readable buffer after a device-writable one.
    #[error("descriptor chain at head {head} has a readable buffer after a writable one")]
    Order {
        /// Head index.
        head: u16,
    },
    /// A buffer of the wrong direction for this queue.
    #[error("descriptor chain at head {head} has a {found} buffer on a queue the device only {expected}")]
    Direction {
        /// Head index.
        head: u16,
        /// What was found.
        found: &'static str,
        /// What the queue is for.
        expected: &'static str,
    },
    /// A buffer not inside guest RAM.
    #[error("descriptor chain at head {head}: buffer {addr:#x}+{len} is not in guest memory")]
    BadAddress {
        /// Head index.
        head: u16,
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
}

/// The descriptors of a chain, checked: terminated, readable ones first, at most `limit`
/// bytes in total, every buffer inside guest memory.
pub fn collect<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemory,
    limit: usize,
) -> Result<(u16, Vec<Descriptor>), ChainError>
where
    M: Deref,
    M::Target: vm_memory::GuestMemory,
{
    let head = chain.head_index();
    let mut descs: Vec<Descriptor> = Vec::new();
    let mut total: usize = 0;
    let mut seen_writable = false;
    for d in chain {
        if d.is_write_only() {
            seen_writable = true;
        } else if seen_writable {
            return Err(ChainError::Order { head });
        }
        total = total.saturating_add(d.len() as usize);
        if total > limit {
            return Err(ChainError::TooLong { head, limit });
        }
        if d.len() > 0
            && !mem.check_range(
                d.addr(),
                d.len() as usize,
                vm_memory::Permissions::ReadWrite,
            )
        {
            return Err(ChainError::BadAddress {
                head,
                addr: d.addr().0,
                len: d.len(),
            });
        }
        descs.push(d);
    }
    match descs.last() {
        Some(d) if !d.has_next() => Ok((head, descs)),
        _ => Err(ChainError::Unterminated { head }),
    }
}

/// Read every device-readable buffer of a chain (only readable ones are allowed).
pub fn read_all(head: u16, descs: &[Descriptor], mem: &GuestMemory) -> Result<Vec<u8>, ChainError> {
    let mut out = Vec::with_capacity(descs.iter().map(|d| d.len() as usize).sum());
    for d in descs {
        if d.is_write_only() {
            return Err(ChainError::Direction {
                head,
                found: "device-writable",
                expected: "reads",
            });
        }
        let start = out.len();
        out.resize(start + d.len() as usize, 0);
        mem.read_slice(&mut out[start..], d.addr())
            .map_err(|_| ChainError::BadAddress {
                head,
                addr: d.addr().0,
                len: d.len(),
            })?;
    }
    Ok(out)
}

/// Write `data` into the chain's device-writable buffers (only writable ones are allowed),
/// through the dirty-tracked guest memory. Returns how many bytes fitted.
pub fn write_all(
    head: u16,
    descs: &[Descriptor],
    mem: &GuestMemory,
    data: &[u8],
) -> Result<usize, ChainError> {
    let mut done = 0;
    for d in descs {
        if !d.is_write_only() {
            return Err(ChainError::Direction {
                head,
                found: "device-readable",
                expected: "writes",
            });
        }
        if done == data.len() {
            break;
        }
        let n = (d.len() as usize).min(data.len() - done);
        mem.write_slice(&data[done..done + n], d.addr())
            .map_err(|_| ChainError::BadAddress {
                head,
                addr: d.addr().0,
                len: d.len(),
            })?;
        done += n;
    }
    Ok(done)
}

/// Total capacity of a chain's buffers.
pub fn capacity(descs: &[Descriptor]) -> usize {
    descs.iter().map(|d| d.len() as usize).sum()
}

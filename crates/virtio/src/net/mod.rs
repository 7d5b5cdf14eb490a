//! virtio-net over a host TAP device.
//!
//! Frames the guest transmits go to the VM's output sink on the device's frame stream
//! (`NET_STREAM_BASE + index`), so a protected VM's frames are held until the backup has
//! the epoch they were sent in (output commit); the sink releases them to the [`Tap`].
//! Frames arriving on the TAP are written into the guest's receive buffers at once,
//! through dirty-tracked guest memory, so they are part of the next epoch.

pub mod announce;
pub mod device;
pub mod mac;
pub mod tap;

pub use device::{NetDevice, NetSpec};
pub use mac::MacAddr;
pub use tap::{Tap, TapError};

#[cfg(test)]
mod tests;

//! virtio-blk over a raw image file ([`ftvm_devices::disk::Disk`]).
//!
//! One request queue, served by a worker thread inside the VM's I/O gate (so an epoch
//! boundary sees every request either completed or not started). Guest writes go to the
//! image at once and into the disk's write log, which the replication engine drains into
//! each epoch; a guest FLUSH is an `fdatasync` of the image, recorded in the log so the
//! backup flushes too before it acknowledges the epoch.

pub mod device;
pub mod request;

pub use device::BlockDevice;

//! ftvm's state movers, all built on the same capture/restore of complete VM state:
//! snapshot and restore, live migration, and epoch replication with output commit and
//! failover.

pub mod backup;
pub mod dirty;
pub mod disk_epoch;
pub mod disk_sync;
pub mod error;
pub mod failpoint;
pub mod fence;
pub mod fence_etcd;
pub mod fence_marker;
pub mod fencing;
pub mod guest_placer;
pub mod heartbeat;
pub mod hot;
pub mod link;
pub mod low_water;
pub mod migrate;
pub mod outputs;
pub mod pause_phases;
pub mod precopy;
pub mod primary;
pub mod receiver;
pub mod recv_ahead;
pub mod sched;
pub mod send_queue;
pub mod snapshot;
pub mod snapshot_disks;
pub mod staged_send;
pub mod staging;
pub mod status;
pub mod switchover;
pub mod sync;
#[cfg(test)]
mod test_support;
mod written_pages;
pub mod zero_scan;

pub use error::ReplicationError;

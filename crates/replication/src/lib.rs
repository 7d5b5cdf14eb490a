//! ftvm's state movers, all built on the same capture/restore of complete VM state:
//! snapshot and restore, live migration, and epoch replication with output commit and
//! failover.

pub mod backup;
pub mod dirty;
pub mod disk_epoch;
pub mod disk_sync;
pub mod error;
pub mod fence;
pub mod fence_etcd;
pub mod fencing;
pub mod heartbeat;
pub mod hot;
pub mod link;
pub mod migrate;
pub mod outputs;
pub mod pause_phases;
pub mod primary;
pub mod receiver;
pub mod sched;
pub mod snapshot;
pub mod snapshot_disks;
pub mod staging;
pub mod status;
pub mod switchover;
pub mod sync;

pub use error::ReplicationError;

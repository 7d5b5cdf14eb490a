//! ftvm's emulated devices.
//!
//! Every device sits on the port-I/O bus ([`PortBus`]) and implements [`Stateful`], so that
//! snapshot, migration and epoch replication capture and restore it without knowing its type.
//! Everything a device sends out of the VM goes through an [`output::OutputSink`], the single
//! point where output commit holds output back until the backup has the epoch it belongs to.

pub mod acpi_pm;
pub mod bus;
pub mod console_writer;
pub mod debug_exit;
pub mod disk;
pub mod i8042;
pub mod mmio;
pub mod output;
pub mod serial;
pub mod state;

pub use bus::{DeviceAction, PortBus, PortDevice};
pub use mmio::{MmioBus, MmioDevice};
pub use output::{FrameWriter, OutputSink, StreamId};
pub use state::{StateError, Stateful};

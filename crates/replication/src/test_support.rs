//! Helpers shared by this crate's unit tests: a real KVM VM without devices, and a
//! connected loopback TCP pair.
#![allow(clippy::unwrap_used)]

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use ftvm_devices::output::{OutputSink, StreamId};
use ftvm_vmm::arch::cpuid::CpuProfile;
use ftvm_vmm::{Vm, VmConfig};

/// Guest output goes nowhere: these tests look at memory and state, not the console.
struct Discard;

impl OutputSink for Discard {
    fn emit(&self, _stream: StreamId, _bytes: &[u8]) {}
}

/// A one-vCPU VM with `memory` bytes and no devices, or `None` after a loud SKIPPED line
/// naming `test` and what went untested (`what`) when /dev/kvm is missing.
pub(crate) fn test_vm(test: &str, memory: u64, what: &str) -> Option<Arc<Vm>> {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("\n*** SKIPPED {test}: /dev/kvm missing; {what} was NOT tested ***\n");
        return None;
    }
    Some(Arc::new(
        Vm::create(VmConfig {
            memory,
            cpus: 1,
            cpu_profile: CpuProfile::detect(),
            output: Arc::new(Discard),
            net: Vec::new(),
            disks: Vec::new(),
            syscall_fixup: false,
        })
        .unwrap(),
    ))
}

/// Both ends of a fresh loopback TCP connection: (connecting side, accepted side).
pub(crate) fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    (a, b)
}

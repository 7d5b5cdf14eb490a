//! A port-I/O exit is completed before the vCPU state is captured.
//!
//! KVM finishes a port-I/O exit (the `in` value into RAX, RIP past the instruction) only
//! inside the next KVM_RUN. State read right after the exit describes a vCPU that has not
//! yet executed the instruction, so a replica restored from it executes it again: an
//! `out` is written twice, an `in` reads the device a second time and gets the next value.
//! `park_if_asked` (crates/vmm/src/vcpu.rs) therefore re-enters KVM_RUN with
//! `immediate_exit` set before it parks; epochs, snapshots and migration all capture state
//! through that park (`Vm::pause`, then `Vm::save_state`).
//!
//! Each test runs a few instructions of raw guest code on real KVM, stops the vCPU exactly
//! at a port-I/O exit (the test holds the serial port's lock, so the vCPU blocks inside the
//! access; it asks the vCPU to park before letting it go), captures the state as the
//! engine does, restores it together with guest memory into a second VM and runs that to
//! the guest's end. The console output of both VMs together must be what the guest wrote,
//! each byte once, and the serial input must have been read exactly once.
//!
//! What the host does without the completion (measured with `complete_pending_exit`
//! removed from `park_if_asked`):
//! - `in`: on every KVM the saved RIP still points at the `in` and RAX lacks the value;
//!   the replica reads the port again. [`an_in_at_a_pause_is_read_once_across_a_restore`]
//!   fails on this host (nested PVM) as it would on hardware KVM.
//! - `out`: hardware KVM (VMX/SVM fast PIO) leaves RIP at the `out` until the next
//!   KVM_RUN, so the replica writes the byte again. A host that runs guest ring-0 code
//!   through KVM's instruction emulator (PVM, as here) advances RIP past an `out` before
//!   the exit, so [`an_out_at_a_pause_is_written_once_across_a_restore`] passes on such a
//!   host even without the completion; it guards hardware hosts.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ftvm_devices::output::{OutputSink, StreamId};
use ftvm_devices::serial::SerialSnapshot;
use ftvm_vmm::arch::cpuid::CpuProfile;
use ftvm_vmm::loader::KernelImage;
use ftvm_vmm::state::VmState;
use ftvm_vmm::vcpu::VmEvent;
use ftvm_vmm::{BootSource, RunState, Vm, VmConfig};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// Where the raw guest code goes (free RAM below the kernel, identity-mapped).
const CODE: u64 = 0x30000;
/// The exit code the guest ends with.
const EXIT_CODE: u32 = 42;

#[derive(Default)]
struct Capture(Mutex<Vec<u8>>);

impl OutputSink for Capture {
    fn emit(&self, _stream: StreamId, bytes: &[u8]) {
        self.0.lock().unwrap().extend_from_slice(bytes);
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn kvm_missing(test: &str) -> bool {
    if std::path::Path::new("/dev/kvm").exists() {
        return false;
    }
    eprintln!("\n*** SKIPPED {test}: /dev/kvm missing ***\n");
    true
}

/// `mov dx, 0xf4; mov eax, EXIT_CODE; out dx, eax; 1: hlt; jmp 1b`
fn exit_tail() -> Vec<u8> {
    let mut code = vec![0x66, 0xba, 0xf4, 0x00, 0xb8];
    code.extend_from_slice(&EXIT_CODE.to_le_bytes());
    code.extend_from_slice(&[0xef, 0xf4, 0xeb, 0xfd]);
    code
}

fn new_vm(output: Arc<Capture>) -> Vm {
    Vm::create(VmConfig {
        memory: 32 << 20,
        cpus: 1,
        cpu_profile: CpuProfile::detect(),
        output,
        net: Vec::new(),
        disks: Vec::new(),
        syscall_fixup: false,
    })
    .unwrap()
}

/// A VM in 64-bit mode (the test guest's boot sets up GDT, page tables, registers) whose
/// vCPU starts at `code` instead of the test guest's entry.
fn vm_running_code(code: &[u8], output: Arc<Capture>) -> Vm {
    let vm = new_vm(output);
    vm.boot(&BootSource {
        kernel: KernelImage {
            name: "@testguest".into(),
            bytes: ftvm_testguest::ELF.to_vec(),
        },
        cmdline: String::new(),
        initrd: None,
    })
    .unwrap();
    vm.memory().write_slice(code, GuestAddress(CODE)).unwrap();
    let fd = vm.vcpus()[0].lock().unwrap();
    let mut regs = fd.get_regs().unwrap();
    regs.rip = CODE;
    regs.rflags = 0x2; // interrupts off
    fd.set_regs(&regs).unwrap();
    drop(fd);
    vm
}

/// Start `vm` with the serial port's lock held by the test, wait until the vCPU is inside
/// its first port access (the serial one, blocked on the lock), ask it to park, let the
/// access finish, and capture the state once it parked: the state the engine captures
/// when an epoch boundary falls on an I/O exit.
fn capture_at_first_io(vm: &Vm) -> VmState {
    let serial = vm.devices().serial.clone();
    let held = serial.lock().unwrap();
    vm.start(false).unwrap();
    let io_exits = || vm.vcpu_counters()[0].1;
    let t0 = Instant::now();
    while io_exits() == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the guest never reached its first port access"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(io_exits(), 1, "the vCPU went past the held serial port");
    // The park request is in place before the access returns, so the vCPU parks right
    // after this exit, before running another guest instruction.
    vm.set_hold(true);
    drop(held);
    vm.pause().unwrap();
    vm.set_hold(false);
    assert_eq!(vm.run_state(), RunState::Paused);
    assert_eq!(io_exits(), 1, "the vCPU ran on past the I/O exit");
    // Through the wire encoding, as epochs and snapshots carry it.
    VmState::from_bytes(&vm.save_state().unwrap().to_bytes().unwrap()).unwrap()
}

/// A fresh VM with `from`'s memory and `state`, run to the guest's end.
fn run_replica(from: &Vm, state: &VmState, output: Arc<Capture>) -> Vm {
    let replica = new_vm(output);
    for region in from.memory().iter() {
        let mut bytes = vec![0u8; region.len() as usize];
        from.memory()
            .read_slice(&mut bytes, region.start_addr())
            .unwrap();
        replica
            .memory()
            .write_slice(&bytes, region.start_addr())
            .unwrap();
    }
    replica.restore_state(state).unwrap();
    replica.start(false).unwrap();
    let event = replica.wait_event(Some(Duration::from_secs(120)));
    assert_eq!(event, Some(VmEvent::Exit(EXIT_CODE)), "the replica's end");
    replica
}

fn serial_input_left(vm: &Vm) -> Vec<u8> {
    let state = vm.save_state().unwrap();
    let serial = state.devices.iter().find(|d| d.id == "serial0").unwrap();
    let snapshot: SerialSnapshot = postcard::from_bytes(&serial.bytes).unwrap();
    snapshot.in_buffer
}

#[test]
fn an_in_at_a_pause_is_read_once_across_a_restore() {
    if kvm_missing("an_in_at_a_pause_is_read_once_across_a_restore") {
        return;
    }
    // mov dx, 0x3f8; in al, dx; out dx, al; mov al, '.'; out dx, al; exit
    let mut code = vec![0x66, 0xba, 0xf8, 0x03, 0xec, 0xee, 0xb0, b'.', 0xee];
    let after_in = CODE + 5;
    code.extend(exit_tail());

    let first = Arc::new(Capture::default());
    let vm = vm_running_code(&code, first.clone());
    // Console input: the guest's `in` from the receive buffer takes 'x'; a second read
    // would take 'y'.
    vm.devices().serial.lock().unwrap().enqueue_input(b"xy");
    let state = capture_at_first_io(&vm);
    let regs = state.vcpus[0].regs;
    let second = Arc::new(Capture::default());
    let replica = run_replica(&vm, &state, second.clone());

    let (before, after) = (first.text(), second.text());
    assert_eq!(
        format!("{before}{after}"),
        "x.",
        "the guest's `in` was not read exactly once across the capture: the first VM wrote \
         {before:?}, the replica {after:?}; saved rip {:#x} (the instruction after the `in` \
         is at {after_in:#x}), saved al {:#x}",
        regs.rip,
        regs.rax & 0xff
    );
    assert_eq!(
        serial_input_left(&replica),
        b"y",
        "the serial input was not consumed exactly once"
    );
    assert_eq!(regs.rip, after_in, "the saved RIP is not past the `in`");
    assert_eq!(
        regs.rax & 0xff,
        u64::from(b'x'),
        "the saved AL lacks the value read"
    );
}

#[test]
fn an_out_at_a_pause_is_written_once_across_a_restore() {
    if kvm_missing("an_out_at_a_pause_is_written_once_across_a_restore") {
        return;
    }
    // mov dx, 0x3f8; mov al, 'A'; out dx, al; mov al, 'B'; out dx, al; exit
    let mut code = vec![0x66, 0xba, 0xf8, 0x03, 0xb0, b'A', 0xee, 0xb0, b'B', 0xee];
    let after_out = CODE + 7;
    code.extend(exit_tail());

    let first = Arc::new(Capture::default());
    let vm = vm_running_code(&code, first.clone());
    let state = capture_at_first_io(&vm);
    let regs = state.vcpus[0].regs;
    let second = Arc::new(Capture::default());
    run_replica(&vm, &state, second.clone());

    let (before, after) = (first.text(), second.text());
    assert_eq!(before, "A", "the first VM's output up to the capture");
    assert_eq!(
        format!("{before}{after}"),
        "AB",
        "the guest's `out` was not written exactly once across the capture: the first VM \
         wrote {before:?}, the replica {after:?}; saved rip {:#x} (the instruction after \
         the `out` is at {after_out:#x})",
        regs.rip
    );
    assert_eq!(regs.rip, after_out, "the saved RIP is not past the `out`");
}

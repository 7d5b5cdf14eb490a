//! A pause that times out must not leave the VM frozen. The real test guest on real KVM;
//! its vCPU is made to hang in a device by holding the serial port's lock from the test
//! (as a blocked device would), so the pause cannot complete in time.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ftvm_devices::output::{OutputSink, StreamId};
use ftvm_vmm::arch::cpuid::CpuProfile;
use ftvm_vmm::error::VmmError;
use ftvm_vmm::loader::KernelImage;
use ftvm_vmm::{BootSource, RunState, Vm, VmConfig};

#[derive(Default)]
struct Count(AtomicU64);

impl OutputSink for Count {
    fn emit(&self, _stream: StreamId, bytes: &[u8]) {
        self.0.fetch_add(bytes.len() as u64, Ordering::SeqCst);
    }
}

fn grows(count: &Count, within: Duration) -> bool {
    let before = count.0.load(Ordering::SeqCst);
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if count.0.load(Ordering::SeqCst) > before + 100 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn a_pause_that_times_out_leaves_the_vcpus_running() {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!(
            "\n*** SKIPPED a_pause_that_times_out_leaves_the_vcpus_running: /dev/kvm missing ***\n"
        );
        return;
    }
    let console = Arc::new(Count::default());
    let vm = Vm::create(VmConfig {
        memory: 64 << 20,
        cpus: 1,
        cpu_profile: CpuProfile::detect(),
        output: console.clone(),
        net: Vec::new(),
        disks: Vec::new(),
        syscall_fixup: false,
    })
    .unwrap();
    vm.boot(&BootSource {
        kernel: KernelImage {
            name: "@testguest".into(),
            bytes: ftvm_testguest::ELF.to_vec(),
        },
        cmdline: "pages=16 wss=8".into(),
        initrd: None,
    })
    .unwrap();
    vm.start(false).unwrap();
    assert!(
        grows(&console, Duration::from_secs(30)),
        "the guest never printed"
    );

    // The vCPU hangs at its next serial access while the test holds the port.
    let serial = vm.devices().serial.clone();
    let held = serial.lock().unwrap();
    // Wait until the vCPU is stuck in the port access (its exit count stands still).
    let exits = || vm.vcpu_counters()[0].0;
    let t0 = Instant::now();
    loop {
        let before = exits();
        std::thread::sleep(Duration::from_millis(200));
        if exits() == before {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the vCPU never blocked"
        );
    }
    let t0 = Instant::now();
    let err = vm.pause().unwrap_err();
    assert!(matches!(err, VmmError::PauseTimeout(_)), "{err}");
    assert!(t0.elapsed() >= Duration::from_secs(4), "{:?}", t0.elapsed());
    assert_eq!(vm.run_state(), RunState::Running);
    drop(held);

    // The device lets go: the guest runs on (it was not left parked).
    assert!(
        grows(&console, Duration::from_secs(10)),
        "the VM stayed frozen after the pause timed out"
    );
    // And pausing works again, and stops the guest.
    vm.pause().unwrap();
    assert_eq!(vm.run_state(), RunState::Paused);
    assert!(
        !grows(&console, Duration::from_millis(300)),
        "paused guest printed"
    );
    vm.resume().unwrap();
    assert!(grows(&console, Duration::from_secs(10)));
    vm.shutdown();
}

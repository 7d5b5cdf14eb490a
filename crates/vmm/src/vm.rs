//! A KVM virtual machine: memory, irqchip, devices, vCPUs, and their control.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ftvm_devices::acpi_pm::{AcpiPm, ACPI_PM_PORT, ACPI_PM_PORT_LEN};
use ftvm_devices::bus::lock;
use ftvm_devices::debug_exit::{DebugExit, DEBUG_EXIT_PORT};
use ftvm_devices::i8042::{I8042, I8042_PORT, I8042_PORT_LEN};
use ftvm_devices::output::SERIAL_STREAM;
use ftvm_devices::serial::{Serial, COM1_IRQ, COM1_PORT, COM1_PORT_LEN};
use ftvm_devices::{MmioBus, OutputSink, PortBus};
use ftvm_virtio::net::{NetDevice, NetSpec};
use ftvm_virtio::VirtioDevice;
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::cpuid::{self, CpuProfile};
use crate::arch::{acpi, gdt, mptable, regs};
use crate::dirty;
use crate::error::{kvm_err, VmmError};
use crate::layout::{KVM_TSS_ADDR, MIN_MEMORY, PAGE_SIZE, ZERO_PAGE_ADDR};
use crate::loader::{self, BootInfo, KernelImage};
use crate::memory::{self, GuestMemory};
use crate::state::{self, DeviceState, VmShape, VmState};
use crate::vcpu::{self, Control, VcpuContext, VcpuStats, VcpuThread, VmEvent};
use crate::virtio::VirtioDevices;
use ftvm_devices::Stateful;

/// The shape and boot inputs of a VM. Both sides of a migration or replication pair must
/// agree on the shape (memory, vCPUs, devices).
#[derive(Clone)]
pub struct VmConfig {
    /// Guest memory in bytes.
    pub memory: u64,
    /// vCPU count.
    pub cpus: u32,
    /// Which CPU features the guest sees.
    pub cpu_profile: CpuProfile,
    /// Where device output goes.
    pub output: Arc<dyn OutputSink>,
    /// Network devices (virtio-net), in slot order from slot 0.
    pub net: Vec<NetSpec>,
    /// Disks (virtio-blk), in the slots after the network devices.
    pub disks: Vec<Arc<ftvm_devices::disk::Disk>>,
    /// Complete ring-3 `syscall`/`int $0x80` that the host leaves half done
    /// (crates/vmm/src/syscall_fixup.rs).
    pub syscall_fixup: bool,
}

impl std::fmt::Debug for VmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmConfig")
            .field("memory", &self.memory)
            .field("cpus", &self.cpus)
            .field("cpu_profile", &self.cpu_profile)
            .field("net", &self.net)
            .field("disks", &self.disks)
            .field("syscall_fixup", &self.syscall_fixup)
            .finish_non_exhaustive()
    }
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct BootSource {
    /// The kernel.
    pub kernel: KernelImage,
    /// Its command line.
    pub cmdline: String,
    /// Optional initrd path.
    pub initrd: Option<PathBuf>,
}

/// Whether the vCPUs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Created, vCPU threads not started.
    Created,
    /// vCPUs running.
    Running,
    /// vCPUs parked.
    Paused,
    /// The guest ended.
    Stopped,
}

impl RunState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Created => "created",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Stopped => "stopped",
        }
    }
}

/// The devices of a VM.
#[derive(Debug)]
pub struct Devices {
    /// COM1.
    pub serial: Arc<Mutex<Serial>>,
    /// The keyboard controller.
    pub i8042: Arc<Mutex<I8042>>,
    /// ACPI power management registers (power-off, reset).
    pub acpi_pm: Arc<Mutex<AcpiPm>>,
}

/// A KVM virtual machine.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
    mem: GuestMemory,
    config: VmConfig,
    vcpus: Vec<Arc<Mutex<VcpuFd>>>,
    cpuids: Vec<CpuId>,
    stats: Vec<Arc<VcpuStats>>,
    control: Arc<Control>,
    threads: Mutex<Vec<VcpuThread>>,
    devices: Devices,
    bus: PortBus,
    mmio: MmioBus,
    virtio: VirtioDevices,
    events_tx: Sender<VmEvent>,
    events_rx: Mutex<Receiver<VmEvent>>,
    state: Mutex<RunState>,
    created: Instant,
    dirty_logging: Mutex<bool>,
    boot: Mutex<Option<BootInfo>>,
    msr_indices: Mutex<Option<Vec<u32>>>,
    manual_dirty_protect: bool,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("config", &self.config)
            .field("state", &self.run_state())
            .finish_non_exhaustive()
    }
}

/// How long a pause may take before it is reported as failed.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

impl Vm {
    /// Create a VM of the given shape: memory, irqchip, PIT, devices and vCPUs with their
    /// CPUID set (KVM refuses KVM_SET_CPUID2 after a vCPU first ran, so it is done here,
    /// once, on fresh vCPUs, both for a boot and for a restore). Not booted, not running.
    pub fn create(config: VmConfig) -> Result<Self, VmmError> {
        let kvm = Kvm::new().map_err(VmmError::KvmUnavailable)?;
        check_shape(&kvm, &config)?;
        vcpu::install_kick_handler().map_err(|reason| VmmError::BootSetup {
            what: "signal handler",
            reason,
        })?;
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        fd.set_tss_address(KVM_TSS_ADDR)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        fd.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        fd.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(kvm_err("KVM_CREATE_PIT2"))?;

        let manual_dirty_protect = dirty::enable_manual_protect(&fd);
        let mem = memory::create(config.memory)?;
        register_memory(&fd, &mem, false)?;

        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VmmError::Io {
            what: "creating the serial interrupt eventfd".into(),
            source,
        })?;
        fd.register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(kvm_err("KVM_IRQFD (serial)"))?;
        let serial =
            Serial::new(serial_irq, config.output.clone(), SERIAL_STREAM).map_err(|source| {
                VmmError::Io {
                    what: "creating the serial device".into(),
                    source,
                }
            })?;
        let devices = Devices {
            serial: Arc::new(Mutex::new(serial)),
            i8042: Arc::new(Mutex::new(I8042::default())),
            acpi_pm: Arc::new(Mutex::new(AcpiPm::default())),
        };
        let mut bus = PortBus::default();
        bus.insert(COM1_PORT, COM1_PORT_LEN, devices.serial.clone());
        bus.insert(I8042_PORT, I8042_PORT_LEN, devices.i8042.clone());
        bus.insert(DEBUG_EXIT_PORT, 4, Arc::new(Mutex::new(DebugExit)));
        bus.insert(ACPI_PM_PORT, ACPI_PM_PORT_LEN, devices.acpi_pm.clone());
        let mut mmio = MmioBus::default();
        let virtio_devices: Vec<Box<dyn VirtioDevice>> = config
            .net
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                Box::new(NetDevice::new(spec, i, config.output.clone())) as Box<dyn VirtioDevice>
            })
            .chain(config.disks.iter().enumerate().map(|(i, disk)| {
                Box::new(ftvm_virtio::block::BlockDevice::new(disk.clone(), i))
                    as Box<dyn VirtioDevice>
            }))
            .collect();
        let virtio = VirtioDevices::attach(&fd, &mem, &mut mmio, virtio_devices)?;

        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let mut vcpus = Vec::new();
        let mut cpuids = Vec::new();
        for index in 0..config.cpus {
            let vcpu = fd
                .create_vcpu(u64::from(index))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            let cpuid = cpuid::for_vcpu(&supported, index, config.cpus, config.cpu_profile);
            vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
            vcpus.push(Arc::new(Mutex::new(vcpu)));
            cpuids.push(cpuid);
        }
        let (events_tx, events_rx) = channel();
        Ok(Self {
            kvm,
            fd,
            mem,
            stats: (0..config.cpus).map(|_| Arc::default()).collect(),
            config,
            vcpus,
            cpuids,
            control: Arc::default(),
            threads: Mutex::new(Vec::new()),
            devices,
            bus,
            mmio,
            virtio,
            events_tx,
            events_rx: Mutex::new(events_rx),
            state: Mutex::new(RunState::Created),
            created: Instant::now(),
            dirty_logging: Mutex::new(false),
            boot: Mutex::new(None),
            msr_indices: Mutex::new(None),
            manual_dirty_protect,
        })
    }

    /// Load the kernel and put every vCPU at its boot state.
    pub fn boot(&self, source: &BootSource) -> Result<BootInfo, VmmError> {
        let initrd = match &source.initrd {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|e| VmmError::Initrd {
                    path: path.clone(),
                    reason: format!("cannot read: {e}"),
                })?;
                Some((path.clone(), bytes))
            }
            None => None,
        };
        let cmdline = if self.virtio.is_empty() {
            source.cmdline.clone()
        } else {
            format!("{} {}", source.cmdline, self.virtio.cmdline_words())
        };
        let info = loader::load(&self.mem, &source.kernel, &cmdline, initrd)?;
        gdt::write_tables(&self.mem)?;
        gdt::write_identity_map(&self.mem)?;
        mptable::write(&self.mem, self.config.cpus)?;
        acpi::write(&self.mem, self.config.cpus)?;
        for (index, vcpu) in self.vcpus.iter().enumerate() {
            let fd = lock(vcpu);
            regs::set_boot_msrs(&fd)?;
            regs::set_fpu(&fd)?;
            regs::set_lint(&fd)?;
            if index == 0 || info.ap_entry.is_some() {
                let entry = if index == 0 {
                    info.entry
                } else {
                    info.ap_entry.unwrap_or(info.entry)
                };
                regs::set_long_mode(&fd)?;
                fd.set_regs(&regs::boot_regs(entry, ZERO_PAGE_ADDR, index as u64))
                    .map_err(kvm_err("KVM_SET_REGS"))?;
                if index > 0 {
                    // ftvm's AP start protocol: the AP runs from its entry at once instead
                    // of waiting for INIT/SIPI.
                    fd.set_mp_state(kvm_bindings::kvm_mp_state {
                        mp_state: kvm_bindings::KVM_MP_STATE_RUNNABLE,
                    })
                    .map_err(kvm_err("KVM_SET_MP_STATE"))?;
                }
            }
        }
        *lock(&self.boot) = Some(info);
        Ok(info)
    }

    /// Start the vCPU threads; with `paused`, they park before running any guest code.
    pub fn start(&self, paused: bool) -> Result<(), VmmError> {
        let mut threads = lock(&self.threads);
        if !threads.is_empty() {
            return Err(VmmError::WrongState {
                actual: self.run_state().as_str(),
                needed: "created",
            });
        }
        if paused {
            self.control.lock().pause = true;
        }
        for (index, fd) in self.vcpus.iter().enumerate() {
            let ctx = VcpuContext {
                index: index as u32,
                fd: fd.clone(),
                control: self.control.clone(),
                bus: self.bus.clone(),
                mmio: self.mmio.clone(),
                stats: self.stats[index].clone(),
                events: self.events_tx.clone(),
                syscall_fixup: self
                    .config
                    .syscall_fixup
                    .then(|| crate::syscall_fixup::SyscallFixup::new(self.mem.clone())),
            };
            let thread = VcpuThread::spawn(ctx).map_err(|source| VmmError::Thread {
                name: format!("vcpu{index}"),
                source,
            })?;
            threads.push(thread);
        }
        if let Some(interval) = crate::vcpu_sample::interval_from_env() {
            let handles = threads.iter().map(VcpuThread::pthread).collect();
            crate::vcpu_sample::spawn(self.control.clone(), handles, interval);
        }
        drop(threads);
        if paused {
            self.wait_parked()?;
            *lock(&self.state) = RunState::Paused;
        } else {
            self.virtio.open();
            *lock(&self.state) = RunState::Running;
        }
        Ok(())
    }

    /// Park every vCPU; returns how long it took from the request until all were parked.
    pub fn pause(&self) -> Result<Duration, VmmError> {
        let t0 = Instant::now();
        match self.run_state() {
            RunState::Running => {}
            RunState::Paused => return Ok(Duration::ZERO),
            other => {
                return Err(VmmError::WrongState {
                    actual: other.as_str(),
                    needed: "running",
                })
            }
        }
        self.control.lock().pause = true;
        for t in lock(&self.threads).iter() {
            t.kick();
        }
        if let Err(e) = self.wait_parked() {
            // A vCPU did not park in time (stuck in a device): the pause failed, and
            // the vCPUs that did park must run again, else the VM stays frozen for good.
            crate::pause_timeout::undo_pause(&self.control);
            return Err(e);
        }
        // Device threads stop too, so memory and device state form one consistent image.
        self.virtio.close();
        *lock(&self.state) = RunState::Paused;
        Ok(t0.elapsed())
    }

    fn wait_parked(&self) -> Result<(), VmmError> {
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        let n = self.config.cpus;
        let mut st = self.control.lock();
        while st.parked < n {
            let now = Instant::now();
            if now >= deadline {
                return Err(VmmError::PauseTimeout(PAUSE_TIMEOUT.as_millis() as u64));
            }
            st = self.control.wait_timeout(st, deadline - now);
        }
        Ok(())
    }

    /// Park the vCPUs (`true`) or let them run again (`false`) independently of
    /// pause/resume: while held, a resume leaves them parked. Used when the fence cannot
    /// be proven held. Does not wait for the vCPUs to park.
    pub fn set_hold(&self, hold: bool) {
        self.control.lock().hold = hold;
        if hold {
            for t in lock(&self.threads).iter() {
                t.kick();
            }
        }
        self.control.notify();
    }

    /// Let the vCPUs run again.
    pub fn resume(&self) -> Result<(), VmmError> {
        match self.run_state() {
            RunState::Paused => {}
            RunState::Running => return Ok(()),
            other => {
                return Err(VmmError::WrongState {
                    actual: other.as_str(),
                    needed: "paused",
                })
            }
        }
        *lock(&self.state) = RunState::Running;
        self.virtio.open();
        self.control.lock().pause = false;
        self.control.notify();
        Ok(())
    }

    /// Wait until the guest ends (or `timeout` passes: `None`).
    pub fn wait_event(&self, timeout: Option<Duration>) -> Option<VmEvent> {
        let rx = lock(&self.events_rx);
        let event = match timeout {
            Some(t) => match rx.recv_timeout(t) {
                Ok(e) => Some(e),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    Some(VmEvent::Crash("all vCPU threads ended".into()))
                }
            },
            None => Some(
                rx.recv()
                    .unwrap_or(VmEvent::Crash("all vCPU threads ended".into())),
            ),
        };
        if event.is_some() {
            *lock(&self.state) = RunState::Stopped;
        }
        event
    }

    /// A sender for VM events, for other parts of the VMM that end the VM (for example a
    /// failed replication step).
    pub fn event_sender(&self) -> Sender<VmEvent> {
        self.events_tx.clone()
    }

    /// Stop and join every vCPU thread.
    pub fn shutdown(&self) {
        {
            let mut st = self.control.lock();
            st.stop = true;
        }
        self.control.notify();
        let threads: Vec<VcpuThread> = std::mem::take(&mut *lock(&self.threads));
        for t in &threads {
            t.kick();
        }
        for t in threads {
            t.join();
        }
        self.virtio.shutdown();
        *lock(&self.state) = RunState::Stopped;
    }

    /// Current run state.
    pub fn run_state(&self) -> RunState {
        *lock(&self.state)
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// The VM's configuration.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// The KVM VM fd.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The KVM system fd.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The vCPUs (lock only while paused).
    pub fn vcpus(&self) -> &[Arc<Mutex<VcpuFd>>] {
        &self.vcpus
    }

    /// The CPUID each vCPU was given.
    pub fn cpuids(&self) -> &[CpuId] {
        &self.cpuids
    }

    /// The devices.
    pub fn devices(&self) -> &Devices {
        &self.devices
    }

    /// The virtio devices.
    pub fn virtio(&self) -> &VirtioDevices {
        &self.virtio
    }

    /// The VM now runs on this host after a takeover or an incoming migration: network
    /// devices announce the guest's MAC (RARP, a few rounds with growing gaps).
    pub fn announce_network(&self) {
        self.virtio.announce();
    }

    /// Boot information, once booted.
    pub fn boot_info(&self) -> Option<BootInfo> {
        *lock(&self.boot)
    }

    /// Seconds since the VM was created.
    pub fn uptime(&self) -> Duration {
        self.created.elapsed()
    }

    /// Per-vCPU counters: (exits, io exits, kicks).
    pub fn vcpu_counters(&self) -> Vec<(u64, u64, u64)> {
        self.stats
            .iter()
            .map(|s| {
                (
                    s.exits.load(Ordering::Relaxed),
                    s.io_exits.load(Ordering::Relaxed),
                    s.kicks.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// Per-vCPU MMIO exits (virtio register accesses that reached user space).
    pub fn mmio_exit_counts(&self) -> Vec<u64> {
        self.stats
            .iter()
            .map(|s| s.mmio_exits.load(Ordering::Relaxed))
            .collect()
    }

    /// Switch KVM dirty-page logging on or off for all guest memory.
    pub fn set_dirty_logging(&self, on: bool) -> Result<(), VmmError> {
        let mut cur = lock(&self.dirty_logging);
        if *cur != on {
            register_memory(&self.fd, &self.mem, on)?;
            *cur = on;
        }
        Ok(())
    }

    /// Pages written by vCPUs since the last call (KVM dirty log; logging must be on),
    /// as guest page frame numbers in ascending order. The pages are write-protected again
    /// so later writes are caught.
    pub fn take_guest_dirty_pages(&self) -> Result<Vec<u64>, VmmError> {
        let pages = self.peek_guest_dirty_pages()?;
        if self.manual_dirty_protect {
            self.clear_guest_dirty_pages(&pages)?;
        }
        Ok(pages)
    }

    /// Whether KVM leaves write-protection to [`Vm::clear_guest_dirty_pages`]
    /// (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2). Then reading the log is cheap at any time and
    /// re-protecting can be done while the vCPUs run.
    pub fn manual_dirty_protect(&self) -> bool {
        self.manual_dirty_protect
    }

    /// The dirty log as page frame numbers. With manual protection the log is left as it
    /// is (pages stay dirty and writable until cleared); without it this is
    /// [`Vm::take_guest_dirty_pages`].
    pub fn peek_guest_dirty_pages(&self) -> Result<Vec<u64>, VmmError> {
        let mut pages = Vec::new();
        for (slot, region) in self.mem.iter().enumerate() {
            let size = usize::try_from(region.len()).map_err(|_| {
                VmmError::MemoryAlloc("region larger than the address space".into())
            })?;
            let bitmap = self
                .fd
                .get_dirty_log(slot as u32, size)
                .map_err(kvm_err("KVM_GET_DIRTY_LOG"))?;
            memory::push_set_pages(region.start_addr().0 / PAGE_SIZE, &bitmap, &mut pages);
        }
        Ok(pages)
    }

    /// Clear the dirty bits of `pfns` (sorted) and write-protect them again, so that the
    /// next write to each is logged. No-op without manual protection.
    pub fn clear_guest_dirty_pages(&self, pfns: &[u64]) -> Result<(), VmmError> {
        if !self.manual_dirty_protect || pfns.is_empty() {
            return Ok(());
        }
        for (slot, region) in self.mem.iter().enumerate() {
            let base = region.start_addr().0 / PAGE_SIZE;
            let npages = region.len() / PAGE_SIZE;
            let mut bitmap = vec![0u64; npages.div_ceil(64) as usize];
            let mut any = false;
            for &pfn in pfns {
                if pfn >= base && pfn < base + npages {
                    let i = (pfn - base) as usize;
                    bitmap[i / 64] |= 1 << (i % 64);
                    any = true;
                }
            }
            if any {
                dirty::clear_dirty_log(&self.fd, slot as u32, npages as u32, &mut bitmap)?;
            }
        }
        Ok(())
    }
}

impl Vm {
    /// The shape both sides of a migration or replication must agree on.
    pub fn shape(&self) -> VmShape {
        VmShape {
            memory: self.config.memory,
            cpus: self.config.cpus,
            cpu_profile: self.config.cpu_profile,
        }
    }

    /// Each vCPU's general registers; only while paused (a running vCPU's registers live
    /// inside KVM_RUN).
    pub fn vcpu_regs(&self) -> Result<Vec<kvm_bindings::kvm_regs>, VmmError> {
        if self.run_state() != RunState::Paused {
            return Err(VmmError::WrongState {
                actual: self.run_state().as_str(),
                needed: "paused",
            });
        }
        self.vcpus
            .iter()
            .map(|fd| lock(fd).get_regs().map_err(kvm_err("KVM_GET_REGS")))
            .collect()
    }

    /// Capture vCPU, VM and device state. The VM must be paused (or never started).
    pub fn save_state(&self) -> Result<VmState, VmmError> {
        let st = self.run_state();
        if !matches!(st, RunState::Paused | RunState::Created | RunState::Stopped) {
            return Err(VmmError::WrongState {
                actual: st.as_str(),
                needed: "paused",
            });
        }
        let msrs = {
            let mut cached = lock(&self.msr_indices);
            if cached.is_none() {
                *cached = Some(state::msr_list(&self.kvm)?);
            }
            cached.clone().unwrap_or_default()
        };
        let mut vcpus = Vec::with_capacity(self.vcpus.len());
        for fd in &self.vcpus {
            vcpus.push(state::save_vcpu(&lock(fd), &msrs)?);
        }
        let vm = state::save_vm(&self.fd)?;
        let serial = lock(&self.devices.serial);
        let i8042 = lock(&self.devices.i8042);
        let acpi_pm = lock(&self.devices.acpi_pm);
        let mut devices = vec![
            DeviceState {
                id: serial.state_id().to_string(),
                bytes: serial.save()?,
            },
            DeviceState {
                id: i8042.state_id().to_string(),
                bytes: i8042.save()?,
            },
            DeviceState {
                id: acpi_pm.state_id().to_string(),
                bytes: acpi_pm.save()?,
            },
        ];
        devices.extend(self.virtio.save()?);
        Ok(VmState {
            version: state::STATE_VERSION,
            shape: self.shape(),
            vcpus,
            vm,
            devices,
        })
    }

    /// Put saved state onto this freshly created VM (never started), or onto a paused one
    /// (every vCPU parked: a former primary that became a backup at a planned switchover
    /// and now runs the VM again). Memory is restored separately, before this.
    pub fn restore_state(&self, saved: &VmState) -> Result<(), VmmError> {
        let fresh = self.run_state() == RunState::Created && lock(&self.threads).is_empty();
        if !fresh && self.run_state() != RunState::Paused {
            return Err(VmmError::WrongState {
                actual: self.run_state().as_str(),
                needed: "created and never run, or paused",
            });
        }
        if let Some(diff) = self.shape().diff(&saved.shape) {
            return Err(VmmError::StateMismatch(format!(
                "this VM vs the saved one: {diff}"
            )));
        }
        // VM-level state first: the IOAPIC/PIC routing and the clock must be in place
        // before vCPU LAPIC state refers to them.
        state::restore_vm(&self.fd, &saved.vm)?;
        for (fd, s) in self.vcpus.iter().zip(&saved.vcpus) {
            state::restore_vcpu(&lock(fd), s)?;
        }
        state::restore_clock(&self.fd, &saved.vm)?;
        let mut missing = self.virtio.state_ids();
        for d in &saved.devices {
            if let Some(result) = self.virtio.restore(&d.id, &d.bytes) {
                result?;
                missing.retain(|id| *id != d.id);
                continue;
            }
            match d.id.as_str() {
                "serial0" => lock(&self.devices.serial).restore(&d.bytes)?,
                "i8042" => lock(&self.devices.i8042).restore(&d.bytes)?,
                "acpi_pm" => lock(&self.devices.acpi_pm).restore(&d.bytes)?,
                other => {
                    return Err(VmmError::StateMismatch(format!(
                        "saved state has a device '{other}' this VM does not have"
                    )))
                }
            }
        }
        if !missing.is_empty() {
            return Err(VmmError::StateMismatch(format!(
                "this VM has device(s) {} that the saved state does not have (give both sides the same --net devices)",
                missing.join(", ")
            )));
        }
        Ok(())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn check_shape(kvm: &Kvm, config: &VmConfig) -> Result<(), VmmError> {
    if config.memory < MIN_MEMORY {
        return Err(VmmError::MemorySize(format!(
            "{} MiB is below the minimum of {} MiB",
            config.memory >> 20,
            MIN_MEMORY >> 20
        )));
    }
    let host = host_memory_bytes();
    if host > 0 && config.memory > host {
        return Err(VmmError::MemorySize(format!(
            "{} MiB is more than this host's {} MiB of RAM",
            config.memory >> 20,
            host >> 20
        )));
    }
    let max = kvm.get_max_vcpus().min(mptable::MAX_CPUS as usize) as u32;
    if config.cpus == 0 || config.cpus > max {
        return Err(VmmError::VcpuCount {
            requested: config.cpus,
            reason: format!("ftvm supports 1 to {max} vCPUs on this host"),
        });
    }
    Ok(())
}

/// Total RAM of this host in bytes (0 if unknown).
pub fn host_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn register_memory(fd: &VmFd, mem: &GuestMemory, dirty_log: bool) -> Result<(), VmmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = memory::region_host_addr(region)?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: if dirty_log {
                KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
        };
        // SAFETY: the region describes a live anonymous mapping owned by `mem`, which the Vm
        // keeps alive for as long as the VM fd exists (both are fields of the same Vm, and the
        // memory is dropped after the fd). Re-registering the same slot only changes flags.
        unsafe { fd.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

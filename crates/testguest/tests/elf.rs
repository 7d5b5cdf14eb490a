//! Checks the embedded guest image against the boot contract (docs/testguest.md).

use ftvm_testguest::{ELF, FTVM_NOTE_AP_ENTRY, FTVM_NOTE_NAME, LOAD_ADDR};

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().expect("2 bytes"))
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

#[derive(Debug)]
struct Phdr {
    kind: u32,
    flags: u32,
    offset: u64,
    vaddr: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
    align: u64,
}

fn phdrs() -> Vec<Phdr> {
    let phoff = u64_at(ELF, 0x20) as usize;
    let phentsize = u16_at(ELF, 0x36) as usize;
    let phnum = u16_at(ELF, 0x38) as usize;
    (0..phnum)
        .map(|i| {
            let o = phoff + i * phentsize;
            Phdr {
                kind: u32_at(ELF, o),
                flags: u32_at(ELF, o + 4),
                offset: u64_at(ELF, o + 8),
                vaddr: u64_at(ELF, o + 16),
                paddr: u64_at(ELF, o + 24),
                filesz: u64_at(ELF, o + 32),
                memsz: u64_at(ELF, o + 40),
                align: u64_at(ELF, o + 48),
            }
        })
        .collect()
}

/// (name, type, desc) of every note in every PT_NOTE segment.
fn notes() -> Vec<(String, u32, Vec<u8>)> {
    let mut out = Vec::new();
    for ph in phdrs().iter().filter(|p| p.kind == 4) {
        assert_eq!(
            ph.align, 4,
            "PT_NOTE must be 4-aligned (QEMU aligns the name to p_align)"
        );
        let seg = &ELF[ph.offset as usize..(ph.offset + ph.filesz) as usize];
        let mut o = 0;
        while o + 12 <= seg.len() {
            let namesz = u32_at(seg, o) as usize;
            let descsz = u32_at(seg, o + 4) as usize;
            let kind = u32_at(seg, o + 8);
            let name = &seg[o + 12..o + 12 + namesz];
            let name =
                String::from_utf8_lossy(name.strip_suffix(&[0]).unwrap_or(name)).into_owned();
            let d = o + 12 + namesz.div_ceil(4) * 4;
            out.push((name, kind, seg[d..d + descsz].to_vec()));
            o = d + descsz.div_ceil(4) * 4;
        }
    }
    out
}

/// The PT_LOAD segment holding `addr`, if any.
fn segment_of(addr: u64) -> Option<Phdr> {
    phdrs()
        .into_iter()
        .find(|p| p.kind == 1 && p.vaddr <= addr && addr < p.vaddr + p.memsz)
}

#[test]
fn elf64_exec_x86_64_at_1mib() {
    assert_eq!(&ELF[..4], b"\x7fELF");
    assert_eq!(ELF[4], 2, "ELFCLASS64");
    assert_eq!(ELF[5], 1, "little endian");
    assert_eq!(u16_at(ELF, 0x10), 2, "ET_EXEC");
    assert_eq!(u16_at(ELF, 0x12), 62, "EM_X86_64");
    let loads: Vec<Phdr> = phdrs().into_iter().filter(|p| p.kind == 1).collect();
    assert!(!loads.is_empty());
    assert_eq!(loads.iter().map(|p| p.paddr).min(), Some(LOAD_ADDR));
    for p in &loads {
        assert_eq!(p.paddr, p.vaddr, "{p:?}");
        assert!(p.filesz <= p.memsz);
        assert!(
            p.paddr + p.memsz <= 16 << 20,
            "image must end below the working set: {p:?}"
        );
        assert_ne!(p.flags & 4, 0, "readable");
    }
    let entry = u64_at(ELF, 0x18);
    let seg = segment_of(entry).expect("e_entry in a PT_LOAD segment");
    assert_ne!(seg.flags & 1, 0, "e_entry is executable");
}

#[test]
fn has_ftvm_ap_note() {
    let notes = notes();
    let ftvm: Vec<_> = notes
        .iter()
        .filter(|(n, k, _)| n == FTVM_NOTE_NAME && *k == FTVM_NOTE_AP_ENTRY)
        .collect();
    assert_eq!(ftvm.len(), 1, "{notes:?}");
    let desc = &ftvm[0].2;
    assert_eq!(desc.len(), 8);
    let ap = u64_at(desc, 0);
    assert!(
        segment_of(ap).is_some_and(|s| s.flags & 1 != 0),
        "AP entry {ap:#x}"
    );
    assert_ne!(ap, u64_at(ELF, 0x18), "AP entry differs from the BSP entry");
}

#[test]
fn has_xen_pvh_note() {
    let notes = notes();
    let xen: Vec<_> = notes
        .iter()
        .filter(|(n, k, _)| n == "Xen" && *k == 18)
        .collect();
    assert_eq!(xen.len(), 1, "{notes:?}");
    let desc = &xen[0].2;
    // QEMU reads the PVH entry as a 64-bit word; linux-loader as a u32.
    assert_eq!(desc.len(), 8);
    let entry = u64_at(desc, 0);
    assert!(entry < 1 << 32);
    assert!(
        segment_of(entry).is_some_and(|s| s.flags & 1 != 0),
        "PVH entry {entry:#x}"
    );
}

#[test]
fn symbols() {
    assert_eq!(
        ftvm_testguest::symbol("ftvm_entry64"),
        Some(u64_at(ELF, 0x18))
    );
    let progress = ftvm_testguest::symbol(ftvm_testguest::PROGRESS_SYMBOL).expect("progress");
    let seg = segment_of(progress).expect("progress counters in a PT_LOAD segment");
    assert_ne!(seg.flags & 2, 0, "progress counters are writable data");
    assert_eq!(progress % 8, 0);
    assert!(progress + 64 * 8 <= seg.vaddr + seg.memsz);
    assert_eq!(ftvm_testguest::symbol("no_such_symbol"), None);
}

/// The ring-0 code (ftvm_entry64 .. ftvm_ring0_end, all of boot.s's text) must use only
/// plain integer instructions: KVM's emulator runs it on the project's hosts.
#[test]
fn ring0_code_is_plain_integer() {
    let start = ftvm_testguest::symbol("ftvm_entry64").expect("ftvm_entry64");
    let end = ftvm_testguest::symbol("ftvm_ring0_end").expect("ftvm_ring0_end");
    assert!(start < end && end - start < 0x1000, "{start:#x}..{end:#x}");
    let elf = std::env::temp_dir().join(format!("ftvm-testguest-elf-{}", std::process::id()));
    std::fs::write(&elf, ELF).expect("write ELF");
    let out = std::process::Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(format!("--start-address={start:#x}"))
        .arg(format!("--stop-address={end:#x}"))
        .arg(&elf)
        .output();
    let _ = std::fs::remove_file(&elf);
    let Ok(out) = out.map_err(|e| eprintln!("\n!!! SKIPPED: objdump not runnable ({e}) !!!\n"))
    else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("iretq"), "{text}");
    let forbidden_regs = ["%xmm", "%ymm", "%zmm", "%mm", "%st", "%k"];
    let forbidden_ops = [
        "xsave",
        "xrstor",
        "fxsave",
        "fxrstor",
        "cmpxchg16b",
        "popcnt",
        "lzcnt",
        "tzcnt",
        "clac",
        "stac",
        "fwait",
        "wait",
        "movs",
        "stos",
        "int3",
        "ud2",
        "rdrand",
        "ldmxcsr",
        "stmxcsr",
        "vzeroupper",
    ];
    let mut n = 0;
    for line in text.lines() {
        // "  100015:\tlgdt   0x110436(%rip)        # 210452 <...>": keep the instruction.
        let Some((_, insn)) = line.split_once(":\t") else {
            continue;
        };
        let insn = insn.split(['#', '<']).next().unwrap_or("");
        n += 1;
        // The PVH stub is 32-bit code that objdump decodes as 64-bit: harmless here.
        for word in insn
            .split_whitespace()
            .take_while(|w| !w.contains(['%', '$', '(']))
        {
            for f in forbidden_ops {
                assert!(!word.starts_with(f), "forbidden in ring 0 ({f}): {line}");
            }
        }
        for r in forbidden_regs {
            assert!(!insn.contains(r), "forbidden in ring 0 ({r}): {line}");
        }
    }
    assert!(n > 50, "too few instructions decoded: {text}");
}

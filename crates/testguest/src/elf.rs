//! Just enough ELF64 reading to find the guest's symbols (host side, for tests and tools).

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// The address of symbol `name` in the ELF64 image `elf` (its `.symtab`), if present.
pub fn symbol_in(elf: &[u8], name: &str) -> Option<u64> {
    let shoff = usize::try_from(u64_at(elf, 0x28)?).ok()?;
    let shentsize = usize::from(u16_at(elf, 0x3a)?);
    let shnum = usize::from(u16_at(elf, 0x3c)?);
    let section = |i: usize| -> Option<(u32, usize, usize, u32, usize)> {
        let o = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((
            u32_at(elf, o + 4)?,                           // sh_type
            usize::try_from(u64_at(elf, o + 0x18)?).ok()?, // sh_offset
            usize::try_from(u64_at(elf, o + 0x20)?).ok()?, // sh_size
            u32_at(elf, o + 0x28)?,                        // sh_link
            usize::try_from(u64_at(elf, o + 0x38)?).ok()?, // sh_entsize
        ))
    };
    for i in 0..shnum {
        let (kind, off, size, link, entsize) = section(i)?;
        if kind != 2 || entsize < 24 {
            continue; // not SHT_SYMTAB
        }
        let (_, stroff, strsize, _, _) = section(link as usize)?;
        let strtab = elf.get(stroff..stroff.checked_add(strsize)?)?;
        for s in 0..size / entsize {
            let e = off + s * entsize;
            let name_off = u32_at(elf, e)? as usize;
            let rest = strtab.get(name_off..)?;
            let end = rest.iter().position(|&b| b == 0)?;
            if &rest[..end] == name.as_bytes() {
                return u64_at(elf, e + 8);
            }
        }
    }
    None
}

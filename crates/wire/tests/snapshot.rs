//! Snapshot files: state container, full (sparse) memory file, diff file.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::MetadataExt;

use ftvm_wire::snapshot::{
    decode_state, encode_state, read_memory_diff, read_memory_region, read_state_file,
    write_state_file, DiffReader, DiffWriter, FormatError, MemoryFileWriter, SnapshotError,
    FLAG_DIFF_MEMORY,
};
use ftvm_wire::PAGE_SIZE;

#[test]
fn state_round_trip_via_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.state");
    write_state_file(&path, b"the body", FLAG_DIFF_MEMORY).unwrap();
    assert!(!dir.path().join("vm.state.tmp").exists());
    let (flags, body) = read_state_file(&path).unwrap();
    assert_eq!((flags, &body[..]), (FLAG_DIFF_MEMORY, &b"the body"[..]));
}

#[test]
fn state_errors_say_what_and_where() {
    let good = encode_state(b"0123456789", 0);
    let err = |b: &[u8]| decode_state(b).unwrap_err().to_string();

    assert_eq!(
        err(b"\x7fELF\x02\x01\x01\x00 more bytes of an elf file"),
        "not an ftvm snapshot state file: magic 7f454c4602010100 (\"\\u{7f}ELF\\u{2}\\u{1}\\u{1}\\0\"), expected FTVMSNAP"
    );
    let mut v2 = good.clone();
    v2[8] = 2;
    assert_eq!(
        err(&v2),
        "snapshot state format version 2 not supported: this build reads version 1 (file written by a newer ftvm)"
    );
    v2[8] = 0;
    assert!(err(&v2).contains(
        "version 0 not supported: this build reads version 1 (file written by an older ftvm)"
    ));
    assert_eq!(
        err(&good[..5]),
        "file is 5 bytes, too short for an ftvm snapshot state header (24 bytes)"
    );
    assert_eq!(
        err(&good[..30]),
        "truncated: body needs bytes 24..34 but the file ends at byte 30"
    );
    assert_eq!(
        err(&good[..36]),
        "truncated: checksum needs bytes 34..38 but the file ends at byte 36"
    );
    let mut bad = good.clone();
    bad[26] ^= 1;
    assert!(
        err(&bad).starts_with("CRC32C mismatch: stored"),
        "{}",
        err(&bad)
    );
    assert!(err(&bad).ends_with("over 34 bytes: file corrupt"));
    let mut long = good.clone();
    long.push(0);
    assert_eq!(
        err(&long),
        "1 unexpected bytes after the checksum at byte 38"
    );
    let flags = encode_state(b"x", 0x80);
    assert_eq!(err(&flags), "unknown flags 0x80 (this build knows 0x1)");
    // Huge announced body: refused without allocating.
    let mut huge = good.clone();
    huge[16..24].copy_from_slice(&(u64::MAX).to_le_bytes());
    assert!(matches!(
        decode_state(&huge),
        Err(FormatError::BodyTooLarge { .. })
    ));
    // Every truncation is an error, never a panic.
    for cut in 0..good.len() {
        assert!(decode_state(&good[..cut]).is_err());
    }
}

#[test]
fn state_file_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.state");
    let e = read_state_file(&path).unwrap_err();
    assert!(matches!(e, SnapshotError::Io { op: "open", .. }));
    assert!(e
        .to_string()
        .starts_with(&format!("{}: cannot open: ", path.display())));
    std::fs::write(&path, b"FTVMSNAP\x01\x00\x00\x00").unwrap();
    let e = read_state_file(&path).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: file is 12 bytes, too short for an ftvm snapshot state header (24 bytes)",
            path.display()
        )
    );
}

#[test]
fn full_memory_file_is_sparse_and_addressed_by_gpa() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.mem");
    let mut low = vec![0u8; 256 * PAGE_SIZE]; // 1 MiB, mostly zero
    low[5 * PAGE_SIZE] = 1;
    low[6 * PAGE_SIZE + 7] = 2;
    low[200 * PAGE_SIZE..201 * PAGE_SIZE].fill(3);
    let high = vec![4u8; 2 * PAGE_SIZE];
    let mut w = MemoryFileWriter::create(&path).unwrap();
    w.write_region(0, &low).unwrap();
    w.write_region(64 << 20, &high).unwrap(); // after a 63 MiB hole
    assert!(w.write_region(0x800, &high).is_err());
    let stats = w.finish().unwrap();
    assert_eq!(stats.bytes_written, 5 * PAGE_SIZE as u64);
    assert_eq!(stats.zero_pages, 253);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), (64 << 20) + 2 * PAGE_SIZE as u64);
    // Sparse: far fewer blocks than the length (512-byte blocks).
    assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());

    let mut back = vec![9u8; low.len()];
    read_memory_region(&path, 0, &mut back).unwrap();
    assert_eq!(back, low);
    let mut back = vec![0u8; high.len()];
    read_memory_region(&path, 64 << 20, &mut back).unwrap();
    assert_eq!(back, high);
    let e = read_memory_region(&path, 64 << 20, &mut vec![0u8; 3 * PAGE_SIZE]).unwrap_err();
    assert!(
        e.to_string()
            .contains("truncated: memory region needs bytes 67108864..67121152"),
        "{e}"
    );
}

fn write_diff(path: &std::path::Path, pages: &[(u64, u8)]) -> u64 {
    let mut w = DiffWriter::create(path).unwrap();
    for (gpa, fill) in pages {
        w.write_page(*gpa, &[*fill; PAGE_SIZE]).unwrap();
    }
    w.finish().unwrap()
}

#[test]
fn diff_file_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.diff");
    let pages = [(0x1000u64, 1u8), (0x2000, 2), (0x7fff_f000, 3)];
    assert_eq!(write_diff(&path, &pages), 3);
    let mut got = Vec::new();
    let n = read_memory_diff(&path, |gpa, page| {
        assert!(page.iter().all(|b| *b == page[0]));
        got.push((gpa, page[0]));
        Ok(())
    })
    .unwrap();
    assert_eq!(n, 3);
    assert_eq!(got, pages);
    // Empty diff.
    assert_eq!(write_diff(&path, &[]), 0);
    assert_eq!(read_memory_diff(&path, |_, _| Ok(())).unwrap(), 0);
    // Writer refuses out-of-order and misaligned pages.
    let mut w = DiffWriter::create(&path).unwrap();
    w.write_page(0x2000, &[0; PAGE_SIZE]).unwrap();
    assert!(w.write_page(0x2000, &[0; PAGE_SIZE]).is_err());
    assert!(w.write_page(0x3001, &[0; PAGE_SIZE]).is_err());
    w.write_run(0x3000, &[0; 2 * PAGE_SIZE]).unwrap();
    assert_eq!(w.finish().unwrap(), 3);
}

#[test]
fn diff_file_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.diff");
    write_diff(&path, &[(0x1000, 1), (0x2000, 2)]);
    let good = std::fs::read(&path).unwrap();
    let read = |b: &[u8], hint: bool| -> Result<u64, FormatError> {
        let mut r = DiffReader::new(b, hint.then_some(b.len() as u64))?;
        let mut n = 0;
        while r.next_page()?.is_some() {
            n += 1;
        }
        Ok(n)
    };
    assert_eq!(read(&good, true).unwrap(), 2);
    assert_eq!(read(&good, false).unwrap(), 2);
    for cut in 0..good.len() {
        assert!(read(&good[..cut], true).is_err(), "cut {cut}");
        assert!(read(&good[..cut], false).is_err(), "cut {cut}");
    }
    let e = read(&good[..5000], true).unwrap_err();
    assert_eq!(
        e.to_string(),
        "truncated: page records and checksum needs bytes 24..8236 but the file ends at byte 5000"
    );
    // Out-of-order record (swap the gpas), with a fixed-up CRC.
    let mut bad = good.clone();
    bad[24..32].copy_from_slice(&0x3000u64.to_le_bytes());
    let e = read(&bad, true).unwrap_err();
    assert!(matches!(e, FormatError::BadPage { index: 1, .. }), "{e}");
    assert!(e.to_string().contains("not above the previous page"), "{e}");
    bad[24..32].copy_from_slice(&0x1001u64.to_le_bytes());
    assert!(read(&bad, true)
        .unwrap_err()
        .to_string()
        .contains("gpa 0x1001 is not page-aligned"));
    // Corrupt page content.
    let mut bad = good.clone();
    bad[100] ^= 1;
    assert!(matches!(read(&bad, true), Err(FormatError::Crc { .. })));
    // Other page size.
    let mut bad = good.clone();
    bad[13] = 0x20;
    assert!(matches!(
        read(&bad, true),
        Err(FormatError::PageSize { found: 0x2000, .. })
    ));
    // State file fed as diff.
    let e = read(&encode_state(b"x", 0), true).unwrap_err();
    assert!(
        e.to_string().starts_with("not an ftvm memory diff file"),
        "{e}"
    );
    // Via path: the error names the file.
    std::fs::write(&path, &good[..good.len() - 1]).unwrap();
    let e = read_memory_diff(&path, |_, _| Ok(())).unwrap_err();
    assert!(
        e.to_string().starts_with(&path.display().to_string()),
        "{e}"
    );
}

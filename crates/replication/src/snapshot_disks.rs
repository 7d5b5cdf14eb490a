//! The disks of a snapshot: what `ctl snapshot` writes next to the state and memory
//! files, and what `ftvm restore` rebuilds the VM's images from.
//!
//! ```text
//! DIR/disks       manifest (JSON): one entry per disk, in --disk order: size, full|diff
//! DIR/diskN.img   full snapshot: a sparse copy of disk N's image (holes stay holes)
//! DIR/diskN.diff  diff snapshot: the 64 KiB blocks of disk N written since the parent
//! ```
//!
//! A diff holds the blocks the guest wrote since the parent snapshot of the same chain.
//! The writes are found with the disk's block tracking, which replication and migration
//! use too (one tracking state per disk): a diff is refused when anything else set the
//! disk's tracking since the parent (protection, a migration attempt), rather than miss
//! writes.
//!
//! The copies are taken while the vCPUs and the device threads are paused, so disks,
//! memory and device state are one point in time: a full snapshot's pause grows with the
//! images' allocated data; a diff's with the data written since the parent.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ftvm_devices::disk::{Disk, Tracking, TRACK_BLOCK};
use serde::{Deserialize, Serialize};

use crate::error::ReplicationError;

/// The manifest's file name.
pub const MANIFEST: &str = "disks";
const DIFF_MAGIC: &[u8; 8] = b"FTVMDDF1";
/// The block index of the record that ends a diff file (its length field: record count).
const END: u64 = u64::MAX;
/// Bytes per copy chunk.
const CHUNK: usize = 1 << 20;

/// How one disk is stored in one snapshot directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskKind {
    /// `diskN.img`: the whole image.
    Full,
    /// `diskN.diff`: blocks written since the parent snapshot.
    Diff,
}

/// One disk in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskEntry {
    /// Image size in bytes.
    pub size: u64,
    /// Full copy or diff.
    pub kind: DiskKind,
    /// Bytes of data stored (a full copy's non-hole data; a diff's block data).
    pub bytes: u64,
}

/// The manifest: every disk of the VM, in `--disk` order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The disks.
    pub disks: Vec<DiskEntry>,
}

fn dir_err(dir: &Path, reason: String) -> ReplicationError {
    ReplicationError::SnapshotDir {
        path: dir.to_path_buf(),
        reason,
    }
}

/// The disk file names a snapshot directory may hold (checked before writing one).
pub fn file_names(disks: usize) -> Vec<String> {
    let mut v = vec![MANIFEST.to_string()];
    for i in 0..disks {
        v.push(format!("disk{i}.img"));
        v.push(format!("disk{i}.diff"));
    }
    v
}

/// What the pause took from the disks; written to files after the vCPUs run again.
#[derive(Debug, Default)]
pub struct DiskCapture {
    /// Per disk: the blocks (index, bytes) of a diff; empty for a full copy (already
    /// written while paused).
    diffs: Vec<Vec<(u64, Vec<u8>)>>,
    manifest: Option<Manifest>,
}

/// Tracks the disks of one snapshot chain: which tracking generation each disk's
/// "written since the last snapshot" blocks belong to.
#[derive(Debug, Default)]
pub struct DiskChain {
    disks: Vec<Arc<Disk>>,
    generations: Vec<u64>,
}

impl DiskChain {
    /// The chain of `disks` (the VM's, in `--disk` order).
    pub fn new(disks: Vec<Arc<Disk>>) -> Self {
        Self {
            disks,
            generations: Vec::new(),
        }
    }

    /// How many disks the VM has.
    pub fn len(&self) -> usize {
        self.disks.len()
    }

    /// Whether the VM has disks.
    pub fn is_empty(&self) -> bool {
        self.disks.is_empty()
    }

    /// Refuses a diff that could miss writes: called before pausing.
    pub fn check_diff(&self, dir: &Path) -> Result<(), ReplicationError> {
        for (i, d) in self.disks.iter().enumerate() {
            let ours = self.generations.get(i).copied();
            if d.tracking() != Tracking::Blocks || ours != Some(d.tracking_generation()) {
                return Err(dir_err(dir, format!(
                    "disk {i} ({}): its written blocks were not tracked continuously since the parent snapshot (protection or migration used the disk's tracking since): take a full snapshot",
                    d.image().path().display()
                )));
            }
        }
        Ok(())
    }

    /// With the VM paused: a full copy of every image into `dir` (sparse), or for a
    /// diff the written blocks' data. Either way tracking restarts, so that the next
    /// diff holds the writes from now on.
    pub fn capture_paused(
        &mut self,
        dir: &Path,
        diff: bool,
    ) -> Result<DiskCapture, ReplicationError> {
        let mut cap = DiskCapture::default();
        if self.disks.is_empty() {
            return Ok(cap);
        }
        let mut manifest = Manifest { disks: Vec::new() };
        let mut generations = Vec::new();
        for (i, d) in self.disks.iter().enumerate() {
            if diff {
                let blocks = d.take_written_blocks();
                let mut data = Vec::with_capacity(blocks.len());
                let mut bytes = 0u64;
                for b in blocks {
                    let (off, len) = d.block_range(b);
                    let mut buf = vec![0u8; len];
                    d.read(off, &mut buf)
                        .map_err(|e| dir_err(dir, format!("reading disk {i}: {e}")))?;
                    bytes += len as u64;
                    data.push((b, buf));
                }
                cap.diffs.push(data);
                generations.push(d.tracking_generation());
                manifest.disks.push(DiskEntry {
                    size: d.size(),
                    kind: DiskKind::Diff,
                    bytes,
                });
            } else {
                let src = d.image().path();
                let dst = dir.join(format!("disk{i}.img"));
                let bytes = copy_image(src, &dst, d.size()).map_err(|e| {
                    dir_err(
                        dir,
                        format!(
                            "copying disk {i} ({}) to {}: {e}",
                            src.display(),
                            dst.display()
                        ),
                    )
                })?;
                generations.push(d.start_tracking(Tracking::Blocks));
                cap.diffs.push(Vec::new());
                manifest.disks.push(DiskEntry {
                    size: d.size(),
                    kind: DiskKind::Full,
                    bytes,
                });
            }
        }
        self.generations = generations;
        cap.manifest = Some(manifest);
        Ok(cap)
    }
}

impl DiskCapture {
    /// Writes the diff files and the manifest (after the VM runs again).
    pub fn write(&self, dir: &Path) -> Result<(), ReplicationError> {
        let Some(manifest) = &self.manifest else {
            return Ok(());
        };
        for (i, blocks) in self.diffs.iter().enumerate() {
            if manifest.disks[i].kind == DiskKind::Diff {
                let path = dir.join(format!("disk{i}.diff"));
                write_diff(&path, manifest.disks[i].size, blocks)
                    .map_err(|e| dir_err(dir, format!("writing {}: {e}", path.display())))?;
            }
        }
        let json = serde_json::to_vec_pretty(manifest)
            .map_err(|e| dir_err(dir, format!("encoding the disk manifest: {e}")))?;
        let path = dir.join(MANIFEST);
        write_synced(&path, &json)
            .map_err(|e| dir_err(dir, format!("writing {}: {e}", path.display())))
    }
}

fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

fn write_diff(path: &Path, size: u64, blocks: &[(u64, Vec<u8>)]) -> std::io::Result<()> {
    let f = File::create(path)?;
    let mut w = BufWriter::new(&f);
    w.write_all(DIFF_MAGIC)?;
    w.write_all(&size.to_le_bytes())?;
    w.write_all(&(TRACK_BLOCK as u32).to_le_bytes())?;
    for (b, data) in blocks {
        w.write_all(&b.to_le_bytes())?;
        w.write_all(&(data.len() as u32).to_le_bytes())?;
        w.write_all(data)?;
    }
    w.write_all(&END.to_le_bytes())?;
    w.write_all(&(blocks.len() as u32).to_le_bytes())?;
    w.flush()?;
    drop(w);
    f.sync_all()
}

/// Reads a diff file, calling `apply(offset, data)` per block; checks every field.
fn read_diff(
    path: &Path,
    size: u64,
    mut apply: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
) -> Result<u64, String> {
    let f = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut r = BufReader::new(f);
    let mut head = [0u8; 20];
    r.read_exact(&mut head)
        .map_err(|e| format!("header: {e}"))?;
    if &head[..8] != DIFF_MAGIC {
        return Err("not a disk diff (bad magic)".into());
    }
    let file_size = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
    let block = u32::from_le_bytes(head[16..20].try_into().unwrap_or_default());
    if file_size != size {
        return Err(format!(
            "for an image of {file_size} bytes, the manifest says {size}"
        ));
    }
    if u64::from(block) != TRACK_BLOCK {
        return Err(format!("block size {block}, expected {TRACK_BLOCK}"));
    }
    let mut count = 0u32;
    let mut buf = vec![0u8; TRACK_BLOCK as usize];
    let mut rec = 0u64;
    loop {
        let mut h = [0u8; 12];
        r.read_exact(&mut h)
            .map_err(|e| format!("record {rec}: {e} (the file is truncated: no end record)"))?;
        let b = u64::from_le_bytes(h[..8].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(h[8..12].try_into().unwrap_or_default());
        if b == END {
            if len != count {
                return Err(format!(
                    "end record counts {len} blocks, the file holds {count}"
                ));
            }
            let mut rest = [0u8; 1];
            if r.read(&mut rest).map_err(|e| e.to_string())? != 0 {
                return Err("bytes after the end record".into());
            }
            return Ok(u64::from(count));
        }
        let off = b
            .checked_mul(TRACK_BLOCK)
            .filter(|o| *o < size)
            .ok_or_else(|| {
                format!("record {rec}: block {b} is past the image's end ({size} bytes)")
            })?;
        let want = (size - off).min(TRACK_BLOCK);
        if u64::from(len) != want {
            return Err(format!(
                "record {rec}: block {b} has {len} bytes, expected {want}"
            ));
        }
        let data = &mut buf[..len as usize];
        r.read_exact(data)
            .map_err(|e| format!("record {rec} (block {b}): {e}"))?;
        apply(off, data).map_err(|e| format!("writing block {b}: {e}"))?;
        count += 1;
        rec += 1;
    }
}

/// `lseek(fd, off, whence)`: `None` when there is no data/hole at or after `off` (ENXIO)
/// or the file system cannot tell (EINVAL: then everything counts as data).
fn seek(f: &File, off: u64, whence: i32) -> std::io::Result<Option<u64>> {
    // SAFETY: lseek on a file descriptor we own; it only moves the file offset, which
    // nothing else uses (all I/O here is positional).
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENXIO) => Ok(None),
        _ => Err(e),
    }
}

/// The data extents of `f` (up to `len`): SEEK_DATA/SEEK_HOLE, or one extent when the
/// file system does not support them (or `f` is a block device).
fn data_extents(f: &File, len: u64) -> Vec<(u64, u64)> {
    let mut v = Vec::new();
    let mut off = 0;
    while off < len {
        let start = match seek(f, off, libc::SEEK_DATA) {
            Ok(Some(s)) => s.min(len),
            Ok(None) => break,
            Err(_) => return vec![(0, len)],
        };
        if start >= len {
            break;
        }
        let end = match seek(f, start, libc::SEEK_HOLE) {
            Ok(Some(e)) => e.min(len),
            Ok(None) | Err(_) => len,
        };
        if end <= start {
            return vec![(0, len)];
        }
        v.push((start, end));
        off = end;
    }
    v
}

/// Copies `len` bytes of `src` into `dst` (created or truncated), leaving holes where
/// `src` has holes or all-zero chunks. Returns the bytes of data written.
pub fn copy_image(src: &Path, dst: &Path, len: u64) -> std::io::Result<u64> {
    let input = File::open(src)?;
    let out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dst)?;
    out.set_len(len)?;
    let mut buf = vec![0u8; CHUNK];
    let mut written = 0;
    for (start, end) in data_extents(&input, len) {
        let mut off = start;
        while off < end {
            let n = ((end - off) as usize).min(CHUNK);
            let chunk = &mut buf[..n];
            input.read_exact_at(chunk, off)?;
            if chunk.iter().any(|b| *b != 0) {
                out.write_all_at(chunk, off)?;
                written += n as u64;
            }
            off += n as u64;
        }
    }
    out.sync_all()?;
    Ok(written)
}

fn read_manifest(dir: &Path) -> Result<Option<Manifest>, ReplicationError> {
    let path = dir.join(MANIFEST);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(dir_err(dir, format!("cannot read {}: {e}", path.display()))),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| dir_err(dir, format!("{} does not parse: {e}", path.display())))
}

/// What [`restore_images`] did for one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredDisk {
    /// The image written.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Diff blocks applied over the full copy.
    pub diff_blocks: u64,
}

/// Rebuilds the VM's images `targets` (in `--disk` order) from the snapshot chain
/// `chain` (full snapshot first): each target is overwritten with the full copy, then
/// every diff is applied in order. A chain whose snapshots hold no disks (taken from a
/// VM without disks) returns an empty list and leaves `targets` as they are.
pub fn restore_images(
    chain: &[PathBuf],
    targets: &[PathBuf],
) -> Result<Vec<RestoredDisk>, ReplicationError> {
    let Some(newest) = chain.last() else {
        return Ok(Vec::new());
    };
    let Some(last) = read_manifest(newest)? else {
        return Ok(Vec::new());
    };
    if last.disks.len() != targets.len() {
        return Err(dir_err(newest, format!(
            "the snapshot holds {} disk(s), {} --disk option(s) given: give one --disk path=FILE per disk (FILE is overwritten with the snapshot's disk)",
            last.disks.len(),
            targets.len()
        )));
    }
    // Check the whole chain before writing anything.
    let mut manifests = Vec::new();
    for (n, dir) in chain.iter().enumerate() {
        let m = read_manifest(dir)?.ok_or_else(|| {
            dir_err(
                dir,
                "this snapshot of the chain holds no disks (no disks manifest)".into(),
            )
        })?;
        if m.disks.len() != last.disks.len() {
            return Err(dir_err(
                dir,
                format!(
                    "holds {} disk(s), the newest snapshot of the chain {}",
                    m.disks.len(),
                    last.disks.len()
                ),
            ));
        }
        for (i, e) in m.disks.iter().enumerate() {
            let want = if n == 0 {
                DiskKind::Full
            } else {
                DiskKind::Diff
            };
            if e.kind != want || e.size != last.disks[i].size {
                return Err(dir_err(
                    dir,
                    format!(
                        "disk {i} is a {:?} of {} bytes; expected a {want:?} of {} bytes",
                        e.kind, e.size, last.disks[i].size
                    ),
                ));
            }
            let file = dir.join(match e.kind {
                DiskKind::Full => format!("disk{i}.img"),
                DiskKind::Diff => format!("disk{i}.diff"),
            });
            if !file.is_file() {
                return Err(dir_err(dir, format!("{} is missing", file.display())));
            }
            if e.kind == DiskKind::Diff {
                read_diff(&file, e.size, |_, _| Ok(()))
                    .map_err(|why| dir_err(dir, format!("{}: {why}", file.display())))?;
            }
        }
        manifests.push(m);
    }
    for (t, target) in targets.iter().enumerate() {
        if chain
            .iter()
            .any(|d| same_file(target, &d.join(format!("disk{t}.img"))))
        {
            return Err(dir_err(
                &chain[0],
                format!(
                "--disk path={} is the snapshot's own copy: give another file (it is overwritten)",
                target.display()
            ),
            ));
        }
    }
    let mut restored = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        let size = last.disks[i].size;
        let full = chain[0].join(format!("disk{i}.img"));
        copy_image(&full, target, size).map_err(|e| {
            dir_err(
                &chain[0],
                format!(
                    "restoring disk {i} from {} into {}: {e}",
                    full.display(),
                    target.display()
                ),
            )
        })?;
        let out = OpenOptions::new()
            .write(true)
            .open(target)
            .map_err(|e| dir_err(&chain[0], format!("{}: {e}", target.display())))?;
        let mut diff_blocks = 0;
        for dir in &chain[1..] {
            let path = dir.join(format!("disk{i}.diff"));
            diff_blocks += read_diff(&path, size, |off, data| out.write_all_at(data, off))
                .map_err(|e| dir_err(dir, format!("{}: {e}", path.display())))?;
        }
        out.sync_all()
            .map_err(|e| dir_err(&chain[0], format!("{}: {e}", target.display())))?;
        restored.push(RestoredDisk {
            path: target.clone(),
            size,
            diff_blocks,
        });
    }
    Ok(restored)
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &Path, name: &str, len: u64) -> (PathBuf, Arc<Disk>) {
        let p = dir.join(name);
        File::create(&p).unwrap().set_len(len).unwrap();
        let d = Arc::new(Disk::open(&p, false).unwrap());
        (p, d)
    }

    #[test]
    fn full_then_diff_chain_restores_each_point_in_time() {
        let t = tempfile::tempdir().unwrap();
        let len = 40 * TRACK_BLOCK + 512; // a partial last block
        let (p, d) = image(t.path(), "vm.img", len);
        d.write(3 * TRACK_BLOCK + 7 * 512, &[1u8; 1024]).unwrap();
        let mut chain = DiskChain::new(vec![d.clone()]);
        let s1 = t.path().join("s1");
        std::fs::create_dir(&s1).unwrap();
        assert!(chain.check_diff(&s1).is_err(), "a diff without a parent");
        chain
            .capture_paused(&s1, false)
            .unwrap()
            .write(&s1)
            .unwrap();
        let at_s1 = std::fs::read(&p).unwrap();
        // The copy is sparse: the 1 KiB written (rounded to the file system's extents).
        let m: Manifest =
            serde_json::from_slice(&std::fs::read(s1.join(MANIFEST)).unwrap()).unwrap();
        let copied = m.disks[0].bytes;
        assert!(
            (1024..=CHUNK as u64).contains(&copied),
            "{copied} bytes copied"
        );
        use std::os::unix::fs::MetadataExt;
        let allocated = std::fs::metadata(s1.join("disk0.img")).unwrap().blocks() * 512;
        assert!(
            allocated < len / 4,
            "the copy is not sparse: {allocated} bytes allocated"
        );
        d.write(len - 512, &[2u8; 512]).unwrap(); // the partial last block
        d.write(TRACK_BLOCK - 512, &[3u8; 1024]).unwrap(); // straddles blocks 0 and 1
        let s2 = t.path().join("s2");
        std::fs::create_dir(&s2).unwrap();
        chain.check_diff(&s2).unwrap();
        let c = chain.capture_paused(&s2, true).unwrap();
        c.write(&s2).unwrap();
        let at_s2 = std::fs::read(&p).unwrap();
        d.write(20 * TRACK_BLOCK, &[4u8; 512]).unwrap();
        let s3 = t.path().join("s3");
        std::fs::create_dir(&s3).unwrap();
        chain.capture_paused(&s3, true).unwrap().write(&s3).unwrap();
        let at_s3 = std::fs::read(&p).unwrap();
        let m: Manifest =
            serde_json::from_slice(&std::fs::read(s2.join(MANIFEST)).unwrap()).unwrap();
        assert_eq!(m.disks[0].kind, DiskKind::Diff);
        assert_eq!(
            m.disks[0].bytes,
            2 * TRACK_BLOCK + 512,
            "blocks 0, 1 and the last"
        );

        let target = t.path().join("restored.img");
        // Stale content in the target must not survive.
        std::fs::write(&target, vec![9u8; 4096]).unwrap();
        for (chain_dirs, want) in [
            (vec![s1.clone()], &at_s1),
            (vec![s1.clone(), s2.clone()], &at_s2),
            (vec![s1.clone(), s2.clone(), s3.clone()], &at_s3),
        ] {
            let r = restore_images(&chain_dirs, std::slice::from_ref(&target)).unwrap();
            assert_eq!(r[0].size, len);
            assert_eq!(
                &std::fs::read(&target).unwrap(),
                want,
                "chain {chain_dirs:?}"
            );
        }
        assert_ne!(at_s1, at_s2);
        assert_ne!(at_s2, at_s3);
    }

    #[test]
    fn diff_refused_when_tracking_was_taken_over() {
        let t = tempfile::tempdir().unwrap();
        let (_p, d) = image(t.path(), "vm.img", 4 * TRACK_BLOCK);
        let mut chain = DiskChain::new(vec![d.clone()]);
        let s1 = t.path().join("s1");
        std::fs::create_dir(&s1).unwrap();
        chain
            .capture_paused(&s1, false)
            .unwrap()
            .write(&s1)
            .unwrap();
        chain.check_diff(&s1).unwrap();
        // Protection (or a migration) sets the disk's tracking for its own use.
        d.set_tracking(Tracking::Blocks);
        let e = chain.check_diff(&s1).unwrap_err().to_string();
        assert!(e.contains("take a full snapshot"), "{e}");
    }

    #[test]
    fn bad_chains_and_diff_files_are_refused_with_reasons() {
        let t = tempfile::tempdir().unwrap();
        let (_p, d) = image(t.path(), "vm.img", 4 * TRACK_BLOCK);
        let mut chain = DiskChain::new(vec![d.clone()]);
        let s1 = t.path().join("s1");
        let s2 = t.path().join("s2");
        std::fs::create_dir(&s1).unwrap();
        std::fs::create_dir(&s2).unwrap();
        chain
            .capture_paused(&s1, false)
            .unwrap()
            .write(&s1)
            .unwrap();
        d.write(0, &[1u8; 512]).unwrap();
        chain.capture_paused(&s2, true).unwrap().write(&s2).unwrap();
        let target = t.path().join("r.img");
        let both = [s1.clone(), s2.clone()];
        // Wrong number of --disk.
        let e = restore_images(&both, &[]).unwrap_err().to_string();
        assert!(e.contains("1 disk(s), 0 --disk"), "{e}");
        // The snapshot's own copy as the target.
        let e = restore_images(&both, &[s1.join("disk0.img")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("snapshot's own copy"), "{e}");
        // A diff chain without its full snapshot.
        let e = restore_images(std::slice::from_ref(&s2), std::slice::from_ref(&target))
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected a Full"), "{e}");
        // Corrupt diff files: truncated, bad magic, block past the end, bad count.
        let good = std::fs::read(s2.join("disk0.diff")).unwrap();
        let mut past = good.clone();
        past[20..28].copy_from_slice(&100u64.to_le_bytes());
        let mut count = good.clone();
        let n = count.len();
        count[n - 4..].copy_from_slice(&5u32.to_le_bytes());
        let mut magic = good.clone();
        magic[0] = b'X';
        for (bad, want) in [
            (good[..good.len() - 3].to_vec(), "truncated"),
            (magic, "bad magic"),
            (past, "past the image's end"),
            (count, "end record counts 5"),
            ([good.clone(), vec![0]].concat(), "after the end record"),
        ] {
            std::fs::write(s2.join("disk0.diff"), &bad).unwrap();
            let e = restore_images(&both, std::slice::from_ref(&target))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want) && e.contains("disk0.diff"), "{want}: {e}");
        }
        std::fs::write(s2.join("disk0.diff"), &good).unwrap();
        restore_images(&both, std::slice::from_ref(&target)).unwrap();
    }
}

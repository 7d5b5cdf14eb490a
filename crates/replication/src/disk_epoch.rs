//! Disk writes in the epoch stream.
//!
//! Primary: while the vCPUs are parked, each disk's write log is drained into the
//! captured epoch ([`drain_disks`]); the sender puts those writes (and a `DiskFlush` for
//! every disk the guest flushed) into the epoch ([`send_disk_epoch`]).
//!
//! Receiver (backup, migration target): [`apply_disk_epoch`] writes a verified epoch's
//! disk writes to the local images, in order, and `fdatasync`s every image the guest
//! flushed in that epoch. It runs only on complete, verified epochs (the assembler never
//! hands out a torn one), and the caller acknowledges the epoch only after it returned
//! `Ok`: an acknowledged flush is durable on both hosts, and a failed write (disk full,
//! I/O error) is never acknowledged.

use std::io::Write;
use std::sync::Arc;

use ftvm_devices::disk::{Disk, EpochDiskWrites, Tracking};
use ftvm_wire::{Message, MessageWriter, StagedEpoch};

use crate::error::ReplicationError;

/// Drains every disk's write log into `into` (one entry per disk, reused). Call with the
/// vCPUs parked, so the writes are exactly the guest's writes of this epoch.
pub fn drain_disks(
    disks: &[Arc<Disk>],
    into: &mut Vec<EpochDiskWrites>,
) -> Result<(), ReplicationError> {
    into.resize_with(disks.len(), EpochDiskWrites::default);
    for (disk, e) in disks.iter().zip(into.iter_mut()) {
        disk.drain(e)?;
    }
    Ok(())
}

/// Sends the disk writes and flushes of a captured epoch (the epoch must be open).
pub fn send_disk_epoch<W: Write>(
    w: &mut MessageWriter<W>,
    epoch: u64,
    disks: &[EpochDiskWrites],
) -> Result<(), ReplicationError> {
    for (i, d) in disks.iter().enumerate() {
        let idx = i as u8;
        if d.writes().next().is_some() {
            w.send_disk_writes(idx, d.writes())?;
        }
        if d.flushed() {
            w.send(&Message::DiskFlush { epoch, disk: idx })?;
        }
    }
    Ok(())
}

/// Writes a verified epoch's disk writes to `disks`, then flushes the disks the guest
/// flushed. Errors name the disk and the OS error (ENOSPC, EIO, ...).
pub fn apply_disk_epoch(disks: &[Arc<Disk>], staged: &StagedEpoch) -> Result<(), ReplicationError> {
    for (d, offset, data) in staged.disk_writes() {
        let disk = disk_at(disks, d, staged.epoch())?;
        disk.apply(offset, data)?;
    }
    for d in staged.flushed_disks() {
        disk_at(disks, d, staged.epoch())?.image().flush()?;
    }
    Ok(())
}

fn disk_at(disks: &[Arc<Disk>], d: u8, epoch: u64) -> Result<&Arc<Disk>, ReplicationError> {
    disks.get(usize::from(d)).ok_or_else(|| {
        ReplicationError::Peer(format!(
            "epoch {epoch} writes to disk {d}, but this side has {} disk(s) (--disk)",
            disks.len()
        ))
    })
}

/// Stops recording guest writes on every disk (protection ended).
pub fn stop_tracking(disks: &[Arc<Disk>]) {
    for d in disks {
        d.set_tracking(Tracking::Off);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ftvm_wire::{
        AssemblerConfig, EpochAssembler, FrameWriter, MessageReader, MessageWriter, Progress,
    };

    fn disk(len: u64) -> (tempfile::NamedTempFile, Arc<Disk>) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(len).unwrap();
        let d = Arc::new(Disk::open(f.path(), false).unwrap());
        (f, d)
    }

    fn read_all(d: &Disk) -> Vec<u8> {
        let mut v = vec![0u8; d.size() as usize];
        d.read(0, &mut v).unwrap();
        v
    }

    /// Primary disk -> log -> epoch stream -> assembler -> backup disk.
    fn stream_epoch(primary: &[Arc<Disk>], epoch: u64) -> Vec<u8> {
        let mut captured = Vec::new();
        drain_disks(primary, &mut captured).unwrap();
        let mut w = MessageWriter::from_frames(FrameWriter::new(Vec::new()));
        w.begin_epoch(epoch).unwrap();
        send_disk_epoch(&mut w, epoch, &captured).unwrap();
        w.send_state(b"state").unwrap();
        w.commit_epoch().unwrap();
        w.flush().unwrap();
        w.frames().get_ref().clone()
    }

    #[allow(clippy::vec_box)]
    fn receive(bytes: &[u8], asm: &mut EpochAssembler) -> Vec<Box<StagedEpoch>> {
        let mut r = MessageReader::new(bytes);
        let mut out = Vec::new();
        while let Ok(Some(m)) = r.recv() {
            if let Ok(Progress::Committed(e)) = asm.feed(&m) {
                out.push(e);
            }
        }
        out
    }

    #[test]
    fn writes_reach_the_backup_image_only_at_commit_and_in_order() {
        let (_pf, p) = disk(64 << 10);
        let (_bf, b) = disk(64 << 10);
        let (_pf2, p2) = disk(64 << 10);
        let (_bf2, b2) = disk(64 << 10);
        let primary = [p.clone(), p2.clone()];
        let backup = [b.clone(), b2.clone()];
        for d in &primary {
            d.set_tracking(Tracking::Data);
        }
        p.write(0, &[1u8; 4096]).unwrap();
        p.write(512, &[2u8; 512]).unwrap(); // overwrites part of the first write
        p2.write(32768, &[3u8; 1024]).unwrap();
        p2.flush().unwrap();
        let bytes = stream_epoch(&primary, 1);

        let mut asm = EpochAssembler::new(AssemblerConfig::replication());
        // Torn epoch: every strict prefix stages nothing that reaches the image.
        for cut in 0..bytes.len() {
            let mut a = EpochAssembler::new(AssemblerConfig::replication());
            for e in receive(&bytes[..cut], &mut a) {
                apply_disk_epoch(&backup, &e).unwrap();
            }
            assert!(read_all(&b).iter().all(|x| *x == 0), "cut {cut}");
            assert!(read_all(&b2).iter().all(|x| *x == 0), "cut {cut}");
        }
        let epochs = receive(&bytes, &mut asm);
        assert_eq!(epochs.len(), 1);
        assert_eq!(epochs[0].flushed_disks().collect::<Vec<_>>(), vec![1]);
        apply_disk_epoch(&backup, &epochs[0]).unwrap();
        assert_eq!(read_all(&p), read_all(&b));
        assert_eq!(read_all(&p2), read_all(&b2));
        assert_ne!(read_all(&p), vec![0u8; 64 << 10]);
    }

    #[test]
    fn a_write_to_a_disk_the_backup_lacks_is_refused() {
        let (_pf, p) = disk(1 << 20);
        let (_pf2, p2) = disk(1 << 20);
        let (_bf, b) = disk(1 << 20);
        p2.set_tracking(Tracking::Data);
        p2.write(0, &[1u8; 512]).unwrap();
        let bytes = stream_epoch(&[p, p2], 1);
        let mut asm = EpochAssembler::new(AssemblerConfig::replication());
        let e = receive(&bytes, &mut asm);
        let err = apply_disk_epoch(&[b], &e[0]).unwrap_err();
        assert!(err.to_string().contains("disk 1"), "{err}");
    }

    #[test]
    fn a_write_past_the_backup_image_end_fails_loudly() {
        let (_pf, p) = disk(1 << 20);
        let (_bf, b) = disk(1 << 19);
        p.set_tracking(Tracking::Data);
        p.write(1 << 19, &[1u8; 512]).unwrap();
        let bytes = stream_epoch(std::slice::from_ref(&p), 1);
        let mut asm = EpochAssembler::new(AssemblerConfig::replication());
        let e = receive(&bytes, &mut asm);
        let err = apply_disk_epoch(&[b], &e[0]).unwrap_err();
        assert!(err.to_string().contains("beyond its end"), "{err}");
    }
}

//! What must match between the two sides of a replication or migration for the replica to
//! be valid: guest RAM, vCPUs, the format of the vCPU/device state, and the devices (count
//! and size of each disk, network devices, and a fingerprint of the rest). Announced in
//! `Hello`; a responder refuses a peer whose shape differs, naming both shapes.

use std::fmt;

use crate::codec::{human_bytes, Cursor, Sink};
use crate::message::{DecodeError, MAX_DISKS};

/// Most network devices of a VM.
pub const MAX_NETS: usize = 4;

/// One disk as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DiskShape {
    /// Capacity in bytes.
    pub bytes: u64,
    /// Read-only (the guest sees `VIRTIO_BLK_F_RO`).
    pub readonly: bool,
}

/// What must match between the two sides for a replica to be valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VmShape {
    /// Guest RAM in bytes.
    pub memory_bytes: u64,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Hash of the rest of the configuration (CPU profile, device models): computed by
    /// the VMM, compared verbatim here. (A MAC need not match: it travels in the state.)
    pub device_fingerprint: u64,
    /// Version of the vCPU/device state encoding the sender writes and reads.
    pub state_version: u32,
    /// Network devices (virtio-net).
    pub nets: u8,
    /// Disks (virtio-blk), in slot order; only the first `disk_count` are meaningful.
    pub disks: [DiskShape; MAX_DISKS],
    /// Number of disks.
    pub disk_count: u8,
}

impl VmShape {
    /// The disks, in slot order.
    pub fn disks(&self) -> &[DiskShape] {
        &self.disks[..usize::from(self.disk_count).min(MAX_DISKS)]
    }

    /// Sets the disks (at most [`MAX_DISKS`]; more is an error naming the count).
    pub fn with_disks(mut self, disks: &[DiskShape]) -> Result<Self, DecodeError> {
        if disks.len() > MAX_DISKS {
            return Err(DecodeError::TooLong {
                what: "disk list",
                len: disks.len(),
                limit: MAX_DISKS,
            });
        }
        self.disks = [DiskShape::default(); MAX_DISKS];
        self.disks[..disks.len()].copy_from_slice(disks);
        self.disk_count = disks.len() as u8;
        Ok(self)
    }

    /// `None` if equal; otherwise "differ in X, Y: here <shape>; peer <shape>".
    pub fn diff(&self, peer: &VmShape) -> Option<String> {
        let what = self.differences(peer);
        if what.is_empty() {
            None
        } else {
            Some(format!(
                "differ in {}: here {self}; peer {peer}",
                what.join(", ")
            ))
        }
    }

    /// The names of the parts that differ (empty if equal).
    pub fn differences(&self, peer: &VmShape) -> Vec<&'static str> {
        let mut what = Vec::new();
        if self.memory_bytes != peer.memory_bytes {
            what.push("memory");
        }
        if self.vcpus != peer.vcpus {
            what.push("vcpus");
        }
        if self.state_version != peer.state_version {
            what.push("state format version");
        }
        if self.nets != peer.nets {
            what.push("network devices");
        }
        if self.disks() != peer.disks() {
            what.push("disks");
        }
        if self.device_fingerprint != peer.device_fingerprint {
            what.push("device configuration (CPU profile, device models)");
        }
        what
    }

    /// Encoded length in bytes.
    pub(crate) fn encoded_len(&self) -> u64 {
        // memory, vcpus, fingerprint | state version, nets, disk count, disks.
        20 + 6 + 9 * u64::from(self.disk_count)
    }

    /// The fields before the nonce in `Hello`.
    pub(crate) fn encode_head(&self, s: &mut impl Sink) {
        s.put_u64(self.memory_bytes);
        s.put_u32(self.vcpus);
        s.put_u64(self.device_fingerprint);
    }

    /// The fields after the nonce in `Hello`.
    pub(crate) fn encode_tail(&self, s: &mut impl Sink) {
        s.put_u32(self.state_version);
        s.put_u8(self.nets);
        s.put_u8(self.disk_count);
        for d in self.disks() {
            s.put_u64(d.bytes);
            s.put_u8(u8::from(d.readonly));
        }
    }

    /// Decodes what [`VmShape::encode_head`] wrote.
    pub(crate) fn decode_head(c: &mut Cursor<'_>) -> Result<VmShape, DecodeError> {
        Ok(VmShape {
            memory_bytes: c.u64("memory_bytes")?,
            vcpus: c.u32("vcpus")?,
            device_fingerprint: c.u64("device_fingerprint")?,
            ..VmShape::default()
        })
    }

    /// Decodes what [`VmShape::encode_tail`] wrote into `self`.
    pub(crate) fn decode_tail(&mut self, c: &mut Cursor<'_>) -> Result<(), DecodeError> {
        self.state_version = c.u32("state_version")?;
        let offset = c.pos();
        self.nets = c.u8("nets")?;
        if usize::from(self.nets) > MAX_NETS {
            return Err(DecodeError::BadValue {
                what: "network device count",
                value: u64::from(self.nets),
                offset,
            });
        }
        let offset = c.pos();
        let count = c.u8("disk count")?;
        if usize::from(count) > MAX_DISKS {
            return Err(DecodeError::BadValue {
                what: "disk count",
                value: u64::from(count),
                offset,
            });
        }
        self.disk_count = count;
        for i in 0..usize::from(count) {
            let bytes = c.u64("disk bytes")?;
            let offset = c.pos();
            let readonly = match c.u8("disk readonly")? {
                0 => false,
                1 => true,
                v => {
                    return Err(DecodeError::BadValue {
                        what: "disk readonly flag",
                        value: u64::from(v),
                        offset,
                    })
                }
            };
            self.disks[i] = DiskShape { bytes, readonly };
        }
        Ok(())
    }
}

impl fmt::Display for VmShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[memory {}, {} vCPU{}, state format {}, {} net, disks ",
            human_bytes(self.memory_bytes),
            self.vcpus,
            if self.vcpus == 1 { "" } else { "s" },
            self.state_version,
            self.nets,
        )?;
        if self.disks().is_empty() {
            f.write_str("none")?;
        }
        for (i, d) in self.disks().iter().enumerate() {
            if i > 0 {
                f.write_str(" + ")?;
            }
            write!(
                f,
                "{}{}",
                human_bytes(d.bytes),
                if d.readonly { " ro" } else { "" }
            )?;
        }
        write!(f, ", devices {:#018x}]", self.device_fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> VmShape {
        VmShape {
            memory_bytes: 128 << 20,
            vcpus: 1,
            device_fingerprint: 0xfeed,
            state_version: 1,
            nets: 1,
            ..VmShape::default()
        }
        .with_disks(&[DiskShape {
            bytes: 64 << 20,
            readonly: false,
        }])
        .unwrap()
    }

    #[test]
    fn equal_shapes_do_not_differ() {
        assert_eq!(base().diff(&base()), None);
    }

    #[test]
    fn every_field_is_compared_and_both_shapes_are_named() {
        let a = base();
        let cases: Vec<(VmShape, &str)> = vec![
            (
                VmShape {
                    memory_bytes: 256 << 20,
                    ..a
                },
                "memory",
            ),
            (VmShape { vcpus: 2, ..a }, "vcpus"),
            (
                VmShape {
                    state_version: 2,
                    ..a
                },
                "state format version",
            ),
            (VmShape { nets: 0, ..a }, "network devices"),
            (a.with_disks(&[]).unwrap(), "disks"),
            (
                a.with_disks(&[DiskShape {
                    bytes: 32 << 20,
                    readonly: false,
                }])
                .unwrap(),
                "disks",
            ),
            (
                a.with_disks(&[DiskShape {
                    bytes: 64 << 20,
                    readonly: true,
                }])
                .unwrap(),
                "disks",
            ),
            (
                VmShape {
                    device_fingerprint: 1,
                    ..a
                },
                "device configuration",
            ),
        ];
        for (b, what) in cases {
            let d = a.diff(&b).unwrap_or_else(|| panic!("{what} not compared"));
            assert!(d.starts_with(&format!("differ in {what}")), "{d}");
            assert!(d.contains(&format!("here {a}")), "{d}");
            assert!(d.contains(&format!("peer {b}")), "{d}");
        }
    }

    #[test]
    fn display_names_each_part() {
        let s = base().to_string();
        assert_eq!(
            s,
            "[memory 128 MiB, 1 vCPU, state format 1, 1 net, disks 64 MiB, devices 0x000000000000feed]"
        );
    }

    #[test]
    fn too_many_disks_is_an_error() {
        assert!(base().with_disks(&[DiskShape::default(); 5]).is_err());
    }
}

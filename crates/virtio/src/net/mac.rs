//! MAC addresses: parsing, printing, and ftvm's stable default.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ftvm's default MAC for network device `index` attached to TAP `tap`: locally
    /// administered, unicast, `02:f7:` followed by the first four bytes of the 64-bit
    /// FNV-1a hash of `"<tap>/<index>"`. The same command line gives the same MAC on
    /// every start. (A backup, a restore and a migration target take the MAC from the
    /// saved device state instead, so the guest keeps its MAC whatever the TAP is called
    /// there.)
    pub fn default_for(tap: &str, index: usize) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in format!("{tap}/{index}").bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let b = h.to_be_bytes();
        MacAddr([0x02, 0xf7, b[0], b[1], b[2], b[3]])
    }

    /// Whether this is a unicast address (bit 0 of the first byte clear).
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!(
                "'{s}' is not a MAC address (six hex bytes with ':')"
            ));
        }
        let mut m = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 {
                return Err(format!("'{s}': byte '{p}' is not two hex digits"));
            }
            m[i] = u8::from_str_radix(p, 16)
                .map_err(|_| format!("'{s}': byte '{p}' is not two hex digits"))?;
        }
        let mac = MacAddr(m);
        if !mac.is_unicast() {
            return Err(format!(
                "'{s}' is a multicast address; a NIC needs a unicast one"
            ));
        }
        Ok(mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prints_and_refuses() {
        let m: MacAddr = "02:F7:00:aa:10:ff".parse().unwrap();
        assert_eq!(m.to_string(), "02:f7:00:aa:10:ff");
        for bad in [
            "",
            "02:f7:00:aa:10",
            "02:f7:00:aa:10:ff:00",
            "0g:00:00:00:00:00",
            "01:00:5e:00:00:01",
            "2:f7:00:aa:10:ff",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn default_is_stable_unicast_local_and_differs_per_device() {
        let a = MacAddr::default_for("tap0", 0);
        assert_eq!(a, MacAddr::default_for("tap0", 0));
        assert_ne!(a, MacAddr::default_for("tap0", 1));
        assert_ne!(a, MacAddr::default_for("tap1", 0));
        assert!(a.is_unicast());
        assert_eq!(a.0[0] & 2, 2, "locally administered");
    }
}

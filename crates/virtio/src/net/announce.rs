//! Telling the network where a guest's MAC now lives, after a takeover or migration.
//!
//! Like QEMU's announce-self: a RARP request from the guest's MAC to the broadcast
//! address, sent several times with growing gaps (50 ms, then 100 ms more each round),
//! so bridges and switches that missed one still learn the new port. RARP needs no IP
//! address, which the VMM does not know.

use std::sync::Arc;
use std::time::Duration;

use ftvm_devices::FrameWriter;

use super::MacAddr;

/// Rounds sent.
pub const ANNOUNCE_ROUNDS: u32 = 5;
/// Gap before the second round.
pub const ANNOUNCE_INITIAL: Duration = Duration::from_millis(50);
/// Added to the gap each round.
pub const ANNOUNCE_STEP: Duration = Duration::from_millis(100);

/// A RARP "request reverse" frame from `mac` (60 bytes: the Ethernet minimum).
pub fn rarp_frame(mac: MacAddr) -> Vec<u8> {
    let m = mac.0;
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&[0xff; 6]); // destination: broadcast
    f.extend_from_slice(&m); // source: the guest
    f.extend_from_slice(&[0x80, 0x35]); // ethertype RARP
    f.extend_from_slice(&[0x00, 0x01]); // hardware: Ethernet
    f.extend_from_slice(&[0x08, 0x00]); // protocol: IPv4
    f.push(6); // hardware address length
    f.push(4); // protocol address length
    f.extend_from_slice(&[0x00, 0x03]); // opcode: request reverse
    f.extend_from_slice(&m); // sender hardware address
    f.extend_from_slice(&[0; 4]); // sender protocol address
    f.extend_from_slice(&m); // target hardware address
    f.extend_from_slice(&[0; 4]); // target protocol address
    f.resize(60, 0);
    f
}

/// Send the first announcement now and the others from a background thread.
pub fn announce(mac: MacAddr, out: Arc<dyn FrameWriter>) {
    let frame = rarp_frame(mac);
    out.write_frame(&frame);
    let spawned = std::thread::Builder::new()
        .name("net-announce".into())
        .spawn(move || {
            let mut gap = ANNOUNCE_INITIAL;
            for _ in 1..ANNOUNCE_ROUNDS {
                std::thread::sleep(gap);
                out.write_frame(&frame);
                gap += ANNOUNCE_STEP;
            }
        });
    if let Err(e) = spawned {
        eprintln!("ftvm: net: announcing {mac} only once: cannot start a thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rarp_frame_layout() {
        let mac = MacAddr([2, 0xf7, 1, 2, 3, 4]);
        let f = rarp_frame(mac);
        assert_eq!(f.len(), 60);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac.0);
        assert_eq!(&f[12..14], &[0x80, 0x35]);
        assert_eq!(&f[20..22], &[0, 3]);
        assert_eq!(&f[22..28], &mac.0);
        assert_eq!(&f[32..38], &mac.0);
    }
}

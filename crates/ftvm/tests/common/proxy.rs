//! TCP proxies that cut the replication link between a primary and its backup while both
//! processes live.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A proxy on a free loopback port (returned) for the replication link to the backup at
/// `target`: it forwards both ways and cuts both directions after `cut_after` bytes from
/// the primary (both processes live on).
pub fn cutting_proxy(target: u16, cut_after: u64) -> u16 {
    cutting_proxy_or_on_demand(target, cut_after, Arc::new(AtomicBool::new(false)))
}

/// [`cutting_proxy`] that also cuts as soon as `cut_now` is set (at the next data the
/// primary sends: it sends epochs and heartbeats all the time).
pub fn cutting_proxy_or_on_demand(target: u16, cut_after: u64, cut_now: Arc<AtomicBool>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut from_primary, _) = l.accept().unwrap();
        let mut to_backup = TcpStream::connect(("127.0.0.1", target)).unwrap();
        let mut back_from = to_backup.try_clone().unwrap();
        let mut back_to = from_primary.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut back_from, &mut back_to);
        });
        let mut sent = 0u64;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from_primary.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if cut_now.load(Ordering::SeqCst) {
                break;
            }
            let take = (cut_after - sent).min(n as u64) as usize;
            if to_backup.write_all(&buf[..take]).is_err() {
                break;
            }
            sent += take as u64;
            if sent >= cut_after {
                break;
            }
        }
        let _ = to_backup.shutdown(Shutdown::Both);
        let _ = from_primary.shutdown(Shutdown::Both);
    });
    port
}

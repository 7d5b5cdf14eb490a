//! Times the host reference: `cargo run --release -p ftvm-testguest --example refbench --
//! "<cmdline>" [cpus]` (default: 1000 iterations of the default parameters, 1 vCPU).

use std::time::Instant;

use ftvm_testguest::params::GuestParams;
use ftvm_testguest::reference::Reference;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cmdline = args.get(1).map(String::as_str).unwrap_or("iters=1000");
    let cpus: u32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    let params = match GuestParams::from_cmdline(cmdline) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bad command line: {e}");
            std::process::exit(2);
        }
    };
    let t0 = Instant::now();
    let mut r = match Reference::new(&params, cpus) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let t1 = Instant::now();
    let mut last = None;
    while let Some(s) = r.next_sum() {
        last = Some(s);
        if params.iters == 0 && s.0 >= 1000 {
            break;
        }
    }
    let t2 = Instant::now();
    println!(
        "{cmdline} cpus={cpus}: init {:?}, {} iterations {:?} ({:.0} it/s), last {:?}",
        t1 - t0,
        r.iterations(),
        t2 - t1,
        r.iterations() as f64 / (t2 - t1).as_secs_f64(),
        last
    );
}

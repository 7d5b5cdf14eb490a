//! Checks a captured serial log of the test guest against the reference implementation.
//!
//! `cargo run -p ftvm-testguest --example check -- "<cmdline>" [cpus] < serial.log`
//!
//! Prints how many lines matched; exits 1 on the first mismatch.

use std::io::Read;
use std::process::ExitCode;

use ftvm_testguest::params::GuestParams;
use ftvm_testguest::reference::check_output;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let cmdline = args.get(1).map(String::as_str).unwrap_or("");
    let cpus: u32 = match args.get(2).map(|s| s.parse()) {
        None => 1,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("bad cpu count: {e}");
            return ExitCode::from(2);
        }
    };
    let params = match GuestParams::from_cmdline(cmdline) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bad command line: {e}");
            return ExitCode::from(2);
        }
    };
    let mut text = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut text) {
        eprintln!("cannot read stdin: {e}");
        return ExitCode::from(2);
    }
    match check_output(&params, cpus, &text) {
        Ok(c) => {
            println!(
                "ok: {} seq lines match (last seq={}), done={}",
                c.lines, c.last_seq, c.done
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("MISMATCH: {e}");
            ExitCode::FAILURE
        }
    }
}

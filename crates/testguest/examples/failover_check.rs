//! Checks the consoles of a failover: what the primary released and what the backup
//! released after taking over must together be exactly the uninterrupted run: the primary's
//! output a prefix of it, the backup's output continuing it from a point at or before the
//! primary's end (no gap), nothing contradicting it (duplicates of the last epochs allowed).
//!
//! `cargo run -p ftvm-testguest --example failover_check -- "<cmdline>" <cpus> primary.log backup.log`

use std::process::ExitCode;

use ftvm_testguest::params::GuestParams;
use ftvm_testguest::reference::{check_output, parse_seq_line, Reference};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: failover_check \"<cmdline>\" <cpus> primary.log backup.log");
        return ExitCode::from(2);
    }
    let (Ok(params), Ok(cpus)) = (GuestParams::from_cmdline(&args[1]), args[2].parse::<u32>())
    else {
        eprintln!("bad command line or cpu count");
        return ExitCode::from(2);
    };
    let (Ok(p), Ok(b)) = (
        std::fs::read_to_string(&args[3]),
        std::fs::read_to_string(&args[4]),
    ) else {
        eprintln!("cannot read the logs");
        return ExitCode::from(2);
    };
    let last = |t: &str| {
        t.lines()
            .filter_map(|l| parse_seq_line(l).map(|(n, _)| n))
            .max()
            .unwrap_or(0)
    };
    let max = last(&p).max(last(&b)) + 1;
    let Ok(mut r) = Reference::new(&params, cpus) else {
        eprintln!("the guest would refuse these parameters");
        return ExitCode::from(2);
    };
    let mut s = String::from("ftvm-testguest ready\n");
    while let Some(line) = r.next_line() {
        s.push_str(&line);
        s.push('\n');
        if parse_seq_line(&line).is_some_and(|(n, _)| n >= max) {
            break;
        }
    }
    if !s.starts_with(&p) {
        println!("FAIL: the primary released output the uninterrupted run does not have");
        return ExitCode::FAILURE;
    }
    let probe = &b[..b.len().min(200)];
    let Some(o) = (0..=p.len()).rev().find(|&o| s[o..].starts_with(probe)) else {
        println!("FAIL: the backup's output does not continue the primary's: gap or contradiction");
        return ExitCode::FAILURE;
    };
    let merged = format!("{}{}", &p[..o], b);
    match check_output(&params, cpus, &merged) {
        Ok(c) => {
            println!(
                "ok: primary released up to seq {}, backup continued; {} lines in all, every one correct, no gap ({} bytes released by both)",
                last(&p),
                c.lines,
                p.len() - o
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("FAIL: {e}");
            ExitCode::FAILURE
        }
    }
}

//! The `ftvm` command.

mod api;
mod backup;
mod cli;
mod ctl;
mod disks;
mod error;
mod fencing;
mod net;
mod output;
mod receive;
mod restore;
mod roles;
mod run;
mod service;
mod size;
mod vmargs;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let result = match &cli.command {
        cli::Command::Run(args) => run::run(args),
        cli::Command::Restore(args) => restore::restore(args),
        cli::Command::Receive(args) => receive::receive(args),
        cli::Command::Backup(args) => backup::backup(args),
        cli::Command::Ctl(args) => ctl::ctl(args),
        cli::Command::Audit(args) => match ftvm_audit::cli::run(args) {
            Ok(code) => Ok(code),
            Err(e) => {
                eprintln!("ftvm: audit: {e}");
                std::process::exit(2);
            }
        },
    };
    // The console has a writer thread of its own: let it write what the guest printed
    // last (bounded: a console nobody reads does not keep the process alive).
    ftvm_devices::console_writer::drain_all(std::time::Duration::from_secs(5));
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("ftvm: error: {e}");
            std::process::exit(1);
        }
    }
}

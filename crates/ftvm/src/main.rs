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
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("ftvm: error: {e}");
            std::process::exit(1);
        }
    }
}

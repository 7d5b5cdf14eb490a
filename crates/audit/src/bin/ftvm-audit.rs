//! Stand-alone `ftvm-audit` binary (same arguments as `ftvm audit`).

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "ftvm-audit", version)]
struct Cli {
    #[command(flatten)]
    args: ftvm_audit::cli::AuditArgs,
}

fn main() {
    let cli = Cli::parse();
    let code = match ftvm_audit::cli::run(&cli.args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ftvm audit: {e}");
            2
        }
    };
    std::process::exit(code);
}

//! `cargo bench -p ftvm-audit`: scan a large real source tree and print files, lines,
//! seconds and lines/s/core; the numbers also go to `<target>/bench/audit.json`.
//!
//! The tree is `$FTVM_AUDIT_BENCH_PATH` (one or more paths separated by `:`), or, if unset,
//! the cargo registry sources of this machine (`$CARGO_HOME/registry/src`), which every
//! build of this workspace populates.

use ftvm_audit::scan::ScanOptions;
use ftvm_audit::{bench, walk};
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let roots: Vec<PathBuf> = match std::env::var_os("FTVM_AUDIT_BENCH_PATH") {
        Some(p) => std::env::split_paths(&p).collect(),
        None => {
            let home = std::env::var_os("CARGO_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
                .ok_or("set FTVM_AUDIT_BENCH_PATH or CARGO_HOME")?;
            vec![home.join("registry").join("src")]
        }
    };
    let (files, _) = walk::collect(&roots, &walk::build_excludes(&[])?, &[])?;
    eprintln!(
        "ftvm-audit bench: {} source files under {:?}",
        files.len(),
        roots
    );
    let result = bench::run(&files, &ScanOptions::default())?;
    bench::print_table(&result);
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let out = target.join("bench").join("audit.json");
    bench::write_json(&result, &out)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

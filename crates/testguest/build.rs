//! Builds the freestanding guest (`guest/main.rs` + `guest/boot.s` + `guest/linker.ld`)
//! with the same rustc, for the host target, into `$OUT_DIR/ftvm-testguest.elf`, which
//! `src/lib.rs` embeds as `ELF`. No other target or toolchain is needed: the guest is a
//! `#![no_std]` static executable linked by our own linker script.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| ".".into()));
    let out_dir = PathBuf::from(
        env::var_os("OUT_DIR").unwrap_or_else(|| panic!("OUT_DIR is not set (not run by cargo?)")),
    );
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let guest = manifest.join("guest");
    let main_rs = guest.join("main.rs");
    let linker_ld = guest.join("linker.ld");
    let elf = out_dir.join("ftvm-testguest.elf");

    for f in [
        "guest/main.rs",
        "guest/boot.s",
        "guest/linker.ld",
        "src/workload.rs",
    ] {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-changed=build.rs");

    let mut cmd = Command::new(&rustc);
    cmd.arg("--edition=2021")
        .args(["--crate-type", "bin", "--crate-name", "ftvm_testguest"])
        .args(["--target", "x86_64-unknown-linux-gnu"])
        // Baseline x86-64 (SSE2, no AVX): ring 3 needs no XSAVE state beyond FXSR.
        .args(["-C", "target-cpu=x86-64"])
        .args(["-C", "opt-level=3"])
        .args(["-C", "panic=abort"])
        .args(["-C", "relocation-model=static"])
        .args(["-C", "code-model=small"])
        .args(["-C", "codegen-units=1"])
        .args(["-C", "debuginfo=0"])
        .args(["-C", "strip=debuginfo"])
        .args(["-C", "force-unwind-tables=no"])
        .args(["-C", "link-arg=-nostartfiles"])
        .args(["-C", "link-arg=-nostdlib"])
        .args(["-C", "link-arg=-static"])
        .arg("-C")
        .arg(format!("link-arg=-Wl,-T,{}", linker_ld.display()))
        .args(["-C", "link-arg=-Wl,--build-id=none"])
        .args(["-C", "link-arg=-Wl,-z,norelro"])
        // Panic messages name `crates/testguest/guest/main.rs`, not this checkout's path,
        // so the image is the same wherever it is built.
        .arg(format!(
            "--remap-path-prefix={}=crates/testguest",
            manifest.display()
        ))
        .arg("-o")
        .arg(&elf)
        .arg(&main_rs)
        // The guest must not pick up flags meant for the host crates.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS");

    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", rustc.to_string_lossy()));
    if !output.status.success() {
        panic!(
            "building the test guest failed ({}):\n{:?}\n{}{}",
            output.status,
            cmd,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // Surface guest warnings: nothing lints guest/main.rs otherwise.
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        if line.starts_with("warning") {
            println!("cargo:warning=guest: {line}");
        }
    }
}

//! Builds the freestanding guest (the package in `guest/`: `guest/main.rs` and its
//! modules, `guest/boot.s`, `guest/linker.ld`, and its crates.io dependencies such as
//! `smoltcp`) with a nested `cargo build` for the host target, into
//! `$OUT_DIR/ftvm-testguest.elf`, which `src/lib.rs` embeds as `ELF`. No other target or
//! toolchain is needed: the guest is a `#![no_std]` static executable linked by our own
//! linker script, its dependencies are built from source with `panic=abort`.
//!
//! The guest package is its own workspace with its own `Cargo.lock` (committed) and its
//! own target directory under `OUT_DIR`, so it never shares flags, features or locks with
//! the host crates.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| ".".into()));
    let out_dir = PathBuf::from(
        env::var_os("OUT_DIR").unwrap_or_else(|| panic!("OUT_DIR is not set (not run by cargo?)")),
    );
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let guest = manifest.join("guest");
    let linker_ld = guest.join("linker.ld");
    let elf = out_dir.join("ftvm-testguest.elf");
    let target_dir = out_dir.join("guest-target");
    let target = "x86_64-unknown-linux-gnu";

    rerun_if_changed_dir(&guest);
    for f in [
        "src/workload.rs",
        "src/resp.rs",
        "src/kvstore.rs",
        "src/kvlog.rs",
    ] {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CARGO_NET_OFFLINE");

    // Flags for every crate of the guest (dependencies included). Link arguments only
    // matter where something is linked: the guest binary.
    let flags: Vec<String> = [
        // Baseline x86-64 (SSE2, no AVX): ring 3 needs no XSAVE state beyond FXSR.
        "-Ctarget-cpu=x86-64".to_string(),
        "-Crelocation-model=static".to_string(),
        "-Ccode-model=small".to_string(),
        "-Cforce-unwind-tables=no".to_string(),
        "-Clink-arg=-nostartfiles".to_string(),
        "-Clink-arg=-nostdlib".to_string(),
        "-Clink-arg=-static".to_string(),
        format!("-Clink-arg=-Wl,-T,{}", linker_ld.display()),
        "-Clink-arg=-Wl,--build-id=none".to_string(),
        "-Clink-arg=-Wl,-z,norelro".to_string(),
        // Panic messages name `crates/testguest/guest/main.rs`, not this checkout's path,
        // so the image is the same wherever it is built.
        // (cargo names the guest's own files relative to guest/, dependencies by their
        // absolute path in the registry).
        "--remap-path-prefix==crates/testguest/guest".to_string(),
        format!(
            "--remap-path-prefix={}=crates/testguest",
            manifest.display()
        ),
        format!("--remap-path-prefix={}=cargo-home", cargo_home().display()),
    ]
    .into();

    let mut cmd = Command::new(&cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--locked")
        .arg("--manifest-path")
        .arg(guest.join("Cargo.toml"))
        .args(["--target", target])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
        // The guest must not pick up settings meant for the host crates.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_PROFILE_RELEASE_PANIC")
        .env_remove("CARGO_PROFILE_DEV_PANIC");
    if let Some(rustc) = env::var_os("RUSTC") {
        cmd.env("RUSTC", rustc);
    }
    if env::var_os("CARGO_NET_OFFLINE").is_some_and(|v| v == "true" || v == "1") {
        cmd.arg("--offline");
    }

    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cargo.to_string_lossy()));
    if !output.status.success() {
        panic!(
            "building the test guest failed ({}):\n{:?}\n{}{}",
            output.status,
            cmd,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // Surface guest warnings: nothing lints guest/ otherwise.
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        if line.starts_with("warning") {
            println!("cargo:warning=guest: {line}");
        }
    }
    let built = target_dir
        .join(target)
        .join("release")
        .join("ftvm-testguest");
    std::fs::copy(&built, &elf).unwrap_or_else(|e| {
        panic!(
            "cannot copy the guest image {} to {}: {e}",
            built.display(),
            elf.display()
        )
    });
}

/// Cargo's home directory (where the registry sources live).
fn cargo_home() -> PathBuf {
    if let Some(h) = env::var_os("CARGO_HOME") {
        return PathBuf::from(h);
    }
    PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo")
}

/// Prints `rerun-if-changed` for every file under `dir` (the guest's sources).
fn rerun_if_changed_dir(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rerun_if_changed_dir(&p);
        } else {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}

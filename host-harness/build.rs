//! Builds the guest component for `wasm32-wasip2`, so that `cargo run` and
//! `cargo test` need nothing else, and exports its path as `EDGE_CACHE_GUEST`.
//!
//! The guest gets a target directory of its own: the nested cargo then never
//! waits on the outer build's lock, and the host's features never leak into
//! the guest's dependency graph.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .expect("the harness lives in the workspace")
        .to_path_buf();
    for watched in ["guest/src", "guest/Cargo.toml", "wit", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(watched).display());
    }

    check_target_installed();

    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("guest");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&workspace)
        .args([
            "build",
            "--package",
            "edge-cache-guest",
            "--release",
            "--target",
            TARGET,
            "--target-dir",
        ])
        .arg(&target_dir);
    // Flags and wrappers meant for the host build (clippy's driver, coverage
    // instrumentation) must not apply to the guest.
    for variable in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
    ] {
        command.env_remove(variable);
    }
    let status = command.status().expect("failed to run cargo for the guest");
    assert!(
        status.success(),
        "building the guest component for {TARGET} failed (see the output above)"
    );

    let component = target_dir.join(TARGET).join("release").join("edge_cache_guest.wasm");
    assert!(
        component.is_file(),
        "the guest build did not produce {}",
        component.display()
    );
    println!("cargo:rustc-env=EDGE_CACHE_GUEST={}", component.display());
}

/// Fails early, with the fix, when the WebAssembly target is missing.
fn check_target_installed() {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()));
    if let Some(sysroot) = sysroot
        && !Path::new(&sysroot).join("lib/rustlib").join(TARGET).is_dir()
    {
        panic!(
            "\n\nThe Rust target {TARGET} is not installed; the guest component needs it.\n\
             Install it with:\n\n    rustup target add {TARGET}\n\n\
             (or `rustup toolchain install` in this repository, which reads rust-toolchain.toml)\n"
        );
    }
}

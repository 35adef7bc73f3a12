//! Builds a workspace package as a `wasm32-wasip2` component from a build
//! script, so that `cargo run` and `cargo test` need no other step.
//!
//! Components get a target directory of their own (`target/guest`): the
//! nested cargo then never waits on the outer build's lock, and the host's
//! features never leak into a guest's dependency graph.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const TARGET: &str = "wasm32-wasip2";

/// The cargo profile components are built with (see the workspace manifest).
pub const PROFILE: &str = "component";

/// Builds `package` (a member of the workspace at `workspace`) with the
/// [`PROFILE`] profile and returns the component's path. Tells cargo to rebuild when
/// anything under `watched` (relative to the workspace) changes.
pub fn build_component(workspace: &Path, package: &str, watched: &[&str]) -> PathBuf {
    for path in watched.iter().chain(&["wit", "Cargo.lock"]) {
        println!("cargo:rerun-if-changed={}", workspace.join(path).display());
    }
    check_target_installed();

    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("guest");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args([
            "build",
            "--package",
            package,
            "--profile",
            PROFILE,
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
    let status = command.status().expect("failed to run cargo for a guest component");
    assert!(
        status.success(),
        "building {package} for {TARGET} failed (see the output above)"
    );

    let component = target_dir
        .join(TARGET)
        .join(PROFILE)
        .join(format!("{}.wasm", package.replace('-', "_")));
    assert!(
        component.is_file(),
        "the build of {package} did not produce {}",
        component.display()
    );
    component
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
        && !sysroot.join("lib/rustlib").join(TARGET).is_dir()
    {
        panic!(
            "\n\nThe Rust target {TARGET} is not installed; the guest components need it.\n\
             Install it with:\n\n    rustup target add {TARGET}\n\n\
             (or `rustup toolchain install` in this repository, which reads rust-toolchain.toml)\n"
        );
    }
}

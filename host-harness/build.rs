//! Builds the edge function component and exports its path as
//! `EDGE_CACHE_GUEST`, the harness's default component.

fn main() {
    let manifest_dir = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir.parent().expect("the harness lives in the workspace");
    let guest = edge_cache_build_support::build_component(workspace, "edge-cache-guest", &["guest", "sdk", "contract"]);
    println!("cargo:rustc-env=EDGE_CACHE_GUEST={}", guest.display());
}

//! Builds the test-only components and exports their paths.

fn main() {
    let manifest_dir = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir.parent().expect("the tests live in the workspace");
    let misbehaving =
        edge_cache_build_support::build_component(workspace, "misbehaving-guest", &["tests/guests/misbehaving"]);
    println!("cargo:rustc-env=MISBEHAVING_GUEST={}", misbehaving.display());
    let keyvalue = edge_cache_build_support::build_component(workspace, "keyvalue-guest", &["tests/guests/keyvalue"]);
    println!("cargo:rustc-env=KEYVALUE_GUEST={}", keyvalue.display());
    let gateway = edge_cache_build_support::build_component(workspace, "gateway", &["examples/gateway"]);
    println!("cargo:rustc-env=GATEWAY_COMPONENT={}", gateway.display());
}

//! Builds the floor component (`bench/floor`) and the hosts workloads'
//! component (`bench/hello`), and exports their paths as
//! `EDGE_CACHE_BENCH_FLOOR` and `EDGE_CACHE_BENCH_HELLO`.

fn main() {
    let manifest_dir = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir
        .ancestors()
        .nth(2)
        .expect("the driver lives in the workspace");
    let floor = edge_cache_build_support::build_component(workspace, "edge-cache-bench-floor", &["bench/floor"]);
    println!("cargo:rustc-env=EDGE_CACHE_BENCH_FLOOR={}", floor.display());
    let hello = edge_cache_build_support::build_component(workspace, "edge-cache-bench-hello", &["bench/hello"]);
    println!("cargo:rustc-env=EDGE_CACHE_BENCH_HELLO={}", hello.display());
}

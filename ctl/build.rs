//! Records the target triple, for `dwbase bundle create` (a bundle names the target its
//! binaries were built for).

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=DWBASE_BUILD_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}

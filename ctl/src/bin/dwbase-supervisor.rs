//! `dwbase`: the CLI.
fn main() {}

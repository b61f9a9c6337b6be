//! `dwbase-node`: one DWBase node (the logic lives in the `dwbase-node` library).
fn main() -> std::process::ExitCode {
    dwbase_node::cli::main()
}

//! `dwbase-supervisor`: the supervisor daemon (logic in the dwbase-supervisor crate).
fn main() -> std::process::ExitCode {
    dwbase_supervisor::cli::main()
}

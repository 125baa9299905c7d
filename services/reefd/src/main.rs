//! The `reefd` binary: the node daemon of the `reefd` library (also `reef node`).

fn main() -> std::process::ExitCode {
    reefd::run_if_launcher();
    reefd::main(std::env::args_os())
}

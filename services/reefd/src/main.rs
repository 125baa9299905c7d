//! The `reefd` binary: the node daemon of the `reefd` library (also `reef node`).

fn main() -> std::process::ExitCode {
    reefd::main(std::env::args_os())
}

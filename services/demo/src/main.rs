//! The `reef-demo` binary (also `reef demo`).

fn main() -> std::process::ExitCode {
    reef_demo::main(std::env::args_os())
}

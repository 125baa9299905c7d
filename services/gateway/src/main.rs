//! The `reef-gateway` binary (also `reef gateway`).

fn main() -> std::process::ExitCode {
    reef_gateway::main(std::env::args_os())
}

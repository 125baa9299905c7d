//! Logging for reef's binaries.

/// Logs to stderr, filtered by `REEF_LOG` (e.g. `debug`, `reef_platform=trace`), or by
/// `default_filter` when it is unset.
pub fn init(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REEF_LOG")
        .unwrap_or_else(|_| default_filter.into());
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in container log files.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
}

//! The tokio runtime reef's binaries run on.

/// A runtime with `threads` worker threads: `Some(1)` is a single-threaded runtime (no
/// cross-thread wake-ups, which pays off on small machines), `None` one worker per CPU.
pub fn build(threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    match threads {
        Some(0 | 1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(threads) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
}

/// A binary's `main`: runs `main` to its end on a runtime of `threads` (see [`build`]),
/// or says `PROGRAM: cannot start the runtime: …` and fails.
pub fn run_main(
    program: &str,
    threads: Option<usize>,
    main: impl std::future::Future<Output = std::process::ExitCode>,
) -> std::process::ExitCode {
    match build(threads) {
        Ok(runtime) => runtime.block_on(main),
        Err(error) => {
            eprintln!("{program}: cannot start the runtime: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

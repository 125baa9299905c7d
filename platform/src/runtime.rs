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

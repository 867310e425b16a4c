//! A timer that may not be set: one helper for every `select!` loop whose
//! deadline is optional (rotation times, retry queues).

use tokio::time::Instant;

/// Sleeps until `at`, or forever when there is no deadline.
pub(crate) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

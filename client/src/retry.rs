//! Retries of calls that failed because the server was briefly unavailable.

use std::future::Future;
use std::time::Duration;

/// How often and how patiently to retry UNAVAILABLE.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Whether a status is worth another attempt: the server (or the path to it) was not
/// there, not that it refused the request. RESOURCE_EXHAUSTED is not: a full blob store
/// (or a message over the size limit) does not change within a retry's backoff.
pub fn retryable(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
}

impl RetryPolicy {
    /// Backoff before attempt `n` (1-based retries): doubling, capped, with jitter.
    pub fn backoff(&self, retry: u32) -> Duration {
        let base = self
            .first_backoff
            .saturating_mul(1u32 << retry.min(16))
            .min(self.max_backoff);
        // Up to 25% jitter so that many clients do not retry in lock step.
        let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as u32;
        base + base / 4 * jitter / 1000
    }

    /// Runs `call` until it succeeds, fails with a non-retryable status, or runs out of
    /// attempts.
    pub async fn run<T, F, Fut>(&self, mut call: F) -> Result<T, tonic::Status>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let mut retry = 0;
        loop {
            match call().await {
                Err(s) if retryable(&s) && retry + 1 < self.attempts => {
                    tracing::warn!(code = ?s.code(), message = s.message(), retry, "retrying");
                    tokio::time::sleep(self.backoff(retry)).await;
                    retry += 1;
                }
                other => return other,
            }
        }
    }
}

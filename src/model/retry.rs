//! Retrying transient model-server faults: exponential backoff with jitter, a bounded
//! number of retries, and the server's `Retry-After` honoured up to a cap.

use std::future::Future;
use std::time::Duration;

use super::{ChatReply, ModelError};

/// How often and how patiently a call is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries after the first try (0 disables retrying).
    pub retries: u32,
    /// The first backoff; each retry doubles it.
    pub base: Duration,
    /// No wait is longer than this, whatever the backoff or `Retry-After` says: a local
    /// server asking for minutes is better reported than waited for.
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: crate::defaults::RETRIES,
            base: Duration::from_millis(crate::defaults::RETRY_BASE_MS),
            max_wait: crate::defaults::RETRY_MAX_WAIT,
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0-based): the server's `Retry-After` when it
    /// sent one, else `base * 2^retry` with jitter in its upper half, both capped.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let wait = retry_after.unwrap_or_else(|| {
            let backoff = self.base.saturating_mul(2u32.saturating_pow(retry));
            // Jitter spreads retries of concurrent runs so they do not hit the server together.
            backoff.mul_f64(0.5 + fastrand::f64() * 0.5)
        });
        wait.min(self.max_wait)
    }

    /// Runs `call` until it succeeds, fails permanently, or the retries are spent. A reply
    /// that came after retries carries a note for each fault it survived; a final error
    /// says how many tries it took.
    pub async fn run<F, Fut>(&self, mut call: F) -> Result<ChatReply, ModelError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<ChatReply, ModelError>>,
    {
        let mut notes = Vec::new();
        let mut retry = 0;
        loop {
            match call().await {
                Ok(mut reply) => {
                    notes.append(&mut reply.notes);
                    reply.notes = notes;
                    return Ok(reply);
                }
                Err(error) if error.kind.is_transient() && retry < self.retries => {
                    let wait = self.delay(retry, error.retry_after);
                    let asked = error.retry_after.map_or_else(String::new, |asked| {
                        format!(" (Retry-After {} s)", asked.as_secs())
                    });
                    notes.push(format!(
                        "retried after {}: {}; waited {:.2} s{asked}",
                        error.kind.as_str(),
                        error.message,
                        wait.as_secs_f64()
                    ));
                    tokio::time::sleep(wait).await;
                    retry += 1;
                }
                Err(mut error) => {
                    if retry > 0 {
                        error.message = format!(
                            "{} (after {} tries; retried faults: {})",
                            error.message,
                            retry + 1,
                            notes.len()
                        );
                    }
                    return Err(error);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_respects_the_cap() {
        let policy = RetryPolicy {
            retries: 5,
            base: Duration::from_millis(100),
            max_wait: Duration::from_millis(350),
        };
        for _ in 0..50 {
            let first = policy.delay(0, None);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let second = policy.delay(1, None);
            assert!(second >= Duration::from_millis(100) && second <= Duration::from_millis(200));
            assert!(policy.delay(4, None) <= Duration::from_millis(350));
        }
        assert_eq!(
            policy.delay(0, Some(Duration::from_secs(1))),
            Duration::from_millis(350)
        );
        assert_eq!(
            policy.delay(0, Some(Duration::from_millis(200))),
            Duration::from_millis(200)
        );
    }
}

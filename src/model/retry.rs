//! Retrying transient model-server faults: exponential backoff with jitter, a bounded
//! number of retries, and the server's `Retry-After` honoured up to a cap.

use std::future::Future;
use std::time::{Duration, SystemTime};

use super::http::seconds;
use super::{ChatReply, ModelError, ModelErrorKind};

/// The end of a whole model call (`--total-timeout`): every try and every wait before a
/// retry falls before it.
pub struct Deadline {
    at: tokio::time::Instant,
    total: Duration,
    /// The endpoint, as shown, for the message.
    endpoint: String,
}

impl Deadline {
    /// `total` from now.
    pub fn after(total: Duration, endpoint: String) -> Self {
        Self {
            at: tokio::time::Instant::now() + total,
            total,
            endpoint,
        }
    }

    /// The `total_timeout` error after `tries` tries, naming the last try's fault when it
    /// ended in one (rather than being cut by the deadline).
    fn expired(&self, tries: u32, last: Option<&ModelError>) -> ModelError {
        let mut detail = Vec::new();
        if tries > 1 {
            detail.push(format!("{tries} tries"));
        }
        if let Some(error) = last {
            detail.push(format!(
                "the last: {}: {}",
                error.kind.as_str(),
                error.message
            ));
        }
        let detail = if detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", detail.join("; "))
        };
        ModelError::new(
            ModelErrorKind::TotalTimeout,
            format!(
                "{}: no complete reply within {}{detail}",
                self.endpoint,
                seconds(self.total)
            ),
        )
        .with_hint(
            "raise --total-timeout: a large model, a long reply or a busy server may need more",
        )
    }
}

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

    /// Runs `call` until it succeeds, fails permanently, the retries are spent, or the
    /// deadline passes (`total_timeout`; a retry that would start after it is not made). A
    /// reply that came after retries carries a note for each fault it survived; a final
    /// error says how many tries it took.
    pub async fn run<F, Fut>(
        &self,
        deadline: &Deadline,
        mut call: F,
    ) -> Result<ChatReply, ModelError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<ChatReply, ModelError>>,
    {
        let mut notes = Vec::new();
        let mut retry = 0;
        loop {
            let Ok(outcome) = tokio::time::timeout_at(deadline.at, call()).await else {
                return Err(deadline.expired(retry + 1, None));
            };
            match outcome {
                Ok(mut reply) => {
                    notes.append(&mut reply.notes);
                    reply.notes = notes;
                    return Ok(reply);
                }
                Err(error) if error.kind.is_transient() && retry < self.retries => {
                    let wait = self.delay(retry, error.retry_after);
                    // A retry that would start at or after the deadline could not finish.
                    if tokio::time::Instant::now() + wait >= deadline.at {
                        return Err(deadline.expired(retry + 1, Some(&error)));
                    }
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

/// The wait a `Retry-After` header asks for: seconds (`120`) or an HTTP date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`, the IMF-fixdate form servers send), measured from
/// `now`; a date already past asks for no wait. `None` for anything else. The caller
/// caps it ([`RetryPolicy::delay`]).
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) as a time, when it is one. The two
/// obsolete HTTP date forms are not read: servers must not send them (RFC 9110, 5.6.7).
fn http_date(value: &str) -> Option<SystemTime> {
    let [_weekday, day, month, year, clock, "GMT"] =
        value.split_whitespace().collect::<Vec<_>>()[..]
    else {
        return None;
    };
    let month = time::Month::January.nth_next(
        [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ]
        .iter()
        .position(|name| *name == month)?
        .try_into()
        .ok()?,
    );
    let date = time::Date::from_calendar_date(year.parse().ok()?, month, day.parse().ok()?).ok()?;
    let mut clock = clock.splitn(3, ':').map(str::parse::<u8>);
    let (Some(Ok(hour)), Some(Ok(minute)), Some(Ok(second))) =
        (clock.next(), clock.next(), clock.next())
    else {
        return None;
    };
    let at = date
        .with_hms(hour, minute, second)
        .ok()?
        .assume_utc()
        .unix_timestamp();
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(at).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_000); // 07:20:00
        assert_eq!(retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(480))
        );
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        for bad in [
            "soon",
            "-1",
            "Wed, 32 Oct 2015 07:28:00 GMT",
            "Wed, 21 Oct 2015 07:28:00 CET",
        ] {
            assert_eq!(retry_after(bad, now), None, "{bad}");
        }
        // Capped like the seconds form.
        let policy = RetryPolicy::default();
        let far = retry_after("Fri, 01 Jan 2100 00:00:00 GMT", now);
        assert_eq!(policy.delay(0, far), policy.max_wait);
    }

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

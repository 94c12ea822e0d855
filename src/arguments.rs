//! The command line's numbers: each flag's allowed range, checked as clap parses it.
//!
//! A value out of range is refused before anything runs, as a usage error (exit 2) whose
//! message names the flag (clap adds it) and the range. Without these checks
//! `--temperature nan` was sent to the server as `null`, `--max-tokens 0` asked for an
//! empty reply, and `1e308` seconds overflowed later.

use std::time::Duration;

/// The hottest sampling temperature servers accept (the `OpenAI` API allows 0 to 2).
pub const MAX_TEMPERATURE: f64 = 2.0;
/// More reply tokens than any local model's context holds.
pub const MAX_TOKENS: u32 = 1_048_576;
/// The longest a timeout may be: a day.
pub const MAX_TIMEOUT_SECS: f64 = 86_400.0;
/// The longest wait before a retry: an hour.
pub const MAX_RETRY_WAIT_SECS: f64 = 3_600.0;
/// More retries than any server is worth.
pub const MAX_RETRIES: u32 = 100;
/// The longest first backoff: ten minutes.
pub const MAX_RETRY_BASE_MS: u64 = 600_000;
/// The largest byte cap (a reply, all context files): 1 GiB.
pub const MAX_BYTES: usize = 1 << 30;

/// A duration on the command line, in whole or fractional seconds (`5`, `0.2`); `--help`
/// shows its default the same way.
#[derive(Debug, Clone, Copy)]
pub struct Secs(pub Duration);

impl std::fmt::Display for Secs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.as_secs_f64())
    }
}

/// A finite number within `min..=max`.
fn number_in(text: &str, min: f64, max: f64, what: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{what} must be a number from {min} to {max}"))?;
    if value.is_finite() && (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{what} must be a number from {min} to {max}"))
    }
}

/// A whole number within `min..=max`.
fn whole_in<T>(text: &str, min: T, max: T, what: &str) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let message = || format!("{what} must be a whole number from {min} to {max}");
    let value: T = text.trim().parse().map_err(|_| message())?;
    if value < min || value > max {
        return Err(message());
    }
    Ok(value)
}

/// `--temperature`: 0 to 2.
pub fn temperature(text: &str) -> Result<f64, String> {
    number_in(text, 0.0, MAX_TEMPERATURE, "the temperature")
}

/// `--max-tokens`: at least one token.
pub fn max_tokens(text: &str) -> Result<u32, String> {
    whole_in(text, 1, MAX_TOKENS, "the reply's token cap")
}

/// A timeout: more than nothing, at most a day.
pub fn timeout(text: &str) -> Result<Secs, String> {
    let message =
        || format!("a timeout in seconds must be more than 0 and at most {MAX_TIMEOUT_SECS}");
    let secs = number_in(text, 0.0, MAX_TIMEOUT_SECS, "").map_err(|_| message())?;
    if secs == 0.0 {
        return Err(message());
    }
    Ok(Secs(Duration::from_secs_f64(secs)))
}

/// `--retry-max-wait`: 0 (retry at once) to an hour.
pub fn retry_wait(text: &str) -> Result<Secs, String> {
    let secs = number_in(
        text,
        0.0,
        MAX_RETRY_WAIT_SECS,
        "the longest wait in seconds",
    )?;
    Ok(Secs(Duration::from_secs_f64(secs)))
}

/// `--retries`: 0 (no retry) to 100.
pub fn retries(text: &str) -> Result<u32, String> {
    whole_in(text, 0, MAX_RETRIES, "the number of retries")
}

/// `--retry-base-ms`: 0 to ten minutes.
pub fn retry_base_ms(text: &str) -> Result<u64, String> {
    whole_in(
        text,
        0,
        MAX_RETRY_BASE_MS,
        "the first backoff in milliseconds",
    )
}

/// `--lock-timeout`: 0 (do not wait) to a day, in whole seconds.
pub fn lock_timeout(text: &str) -> Result<u64, String> {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let max = MAX_TIMEOUT_SECS as u64;
    whole_in(text, 0, max, "the lock wait in seconds")
}

/// `--max-reply-bytes` and `--max-context-bytes`: at least one byte, at most 1 GiB.
pub fn bytes(text: &str) -> Result<usize, String> {
    whole_in(text, 1, MAX_BYTES, "a size in bytes")
}

/// `prune --keep`: a number of runs.
pub fn runs(text: &str) -> Result<usize, String> {
    whole_in(text, 0, 1_000_000, "the number of runs to keep")
}

/// `prune --older-than`: days, up to a hundred years.
pub fn days(text: &str) -> Result<u64, String> {
    whole_in(text, 0, 36_500, "the age in days")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_outside_their_range_are_refused_with_the_range() {
        assert_eq!(temperature("0.7"), Ok(0.7));
        assert_eq!(temperature("0"), Ok(0.0));
        for bad in ["nan", "inf", "-1", "2.5", "1e308", "warm"] {
            let message = temperature(bad).unwrap_err();
            assert!(message.contains("from 0 to 2"), "{bad}: {message}");
        }
        assert_eq!(max_tokens("1"), Ok(1));
        for bad in ["0", "-5", "99999999999", "1.5"] {
            assert!(max_tokens(bad).is_err(), "{bad}");
        }
        assert_eq!(timeout("0.25").unwrap().0, Duration::from_millis(250));
        for bad in ["0", "-1", "1e308", "nan", "86401"] {
            let message = timeout(bad).err().unwrap_or_default();
            assert!(message.contains("86400"), "{bad}: {message}");
        }
        assert_eq!(retry_wait("0").unwrap().0, Duration::ZERO);
        assert!(retry_wait("-1").is_err());
        assert_eq!(retries("0"), Ok(0));
        assert!(retries("101").is_err() && retries("-1").is_err());
        assert!(retry_base_ms("-1").is_err());
        assert_eq!(lock_timeout("0"), Ok(0));
        assert!(lock_timeout("-3").is_err());
        assert!(bytes("0").is_err() && bytes("1").is_ok());
        assert!(runs("-1").is_err() && runs("0").is_ok());
        assert!(days("-1").is_err() && days("36501").is_err() && days("14").is_ok());
    }
}

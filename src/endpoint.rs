//! An endpoint URL as the user gives it: checked once where it is resolved ([`check`]), and
//! shown or stored only with its secrets masked ([`redact`]).
//!
//! A URL may carry a password (`http://user:pass@host/v1`, basic auth) or a key in its
//! query (`?api_key=…`). The real URL is what requests are sent to; everything a person or
//! a file can see (the result's `model.endpoint`, progress, error messages, `--dry-run`,
//! cassettes, `models`) goes through [`redact`] first.

use crate::error::Error;

/// What replaces a secret.
const MASK: &str = "***";

/// Query parameters whose value is a credential.
const SECRET_PARAMETERS: &[&str] = &[
    "api_key",
    "api-key",
    "apikey",
    "key",
    "token",
    "access_token",
];

/// `url` with the password of its user information (or a lone user name, which is often a
/// token) and the values of credential query parameters masked; everything else as given.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(at) => url.split_at(at + 3),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{user}:{MASK}@{host}"),
            None => format!("{MASK}@{host}"),
        },
        None => authority.to_owned(),
    };
    format!("{scheme}{authority}{}", redact_query(tail))
}

/// The path, query and fragment with credential parameters' values masked.
fn redact_query(tail: &str) -> String {
    let Some((path, after)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let (query, fragment) = after
        .split_once('#')
        .map_or((after, None), |(query, fragment)| (query, Some(fragment)));
    let query = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if SECRET_PARAMETERS.contains(&name.to_ascii_lowercase().as_str()) => {
                format!("{name}={MASK}")
            }
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&");
    match fragment {
        Some(fragment) => format!("{path}?{query}#{fragment}"),
        None => format!("{path}?{query}"),
    }
}

/// Checks that `url`, which came from `source` (`--endpoint`, `LOCAL_TASK_ENDPOINT`,
/// `OPENAI_BASE_URL`, `OLLAMA_HOST`) as `given`, is an `http` or `https` URL with a host; a
/// missing scheme means `http`. `given` differs from `url` for `OLLAMA_HOST`, which is
/// completed to a URL first; messages show what the user wrote.
///
/// # Errors
///
/// [`Error::Usage`] naming the source and the (masked) value: an endpoint the tool cannot
/// speak to is the user's input, not a server that failed.
pub fn check(url: &str, given: &str, source: &str) -> Result<(), Error> {
    let bad = |why: &str| {
        Error::Usage(format!(
            "{source} is `{}`, which {why}; give an http or https URL such as http://127.0.0.1:11434 or http://127.0.0.1:1234/v1",
            redact(given)
        ))
    };
    let trimmed = url.trim();
    if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("contains a space or a control character"));
    }
    if !trimmed.contains("://") {
        // `http//host` or `http:/host` read as a bare host would become `http://http//host`.
        let lower = trimmed.to_ascii_lowercase();
        if trimmed.contains("//") || lower.starts_with("http:") || lower.starts_with("https:") {
            return Err(bad("is not a URL (a scheme is written `http://`)"));
        }
    }
    let url = reqwest::Url::parse(&crate::server::with_scheme(trimmed))
        .map_err(|error| bad(&format!("is not a URL ({error})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(&format!("uses the scheme `{}`", url.scheme())));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_and_nothing_else_changes() {
        for (given, shown) in [
            ("http://user:pass@host/v1", "http://user:***@host/v1"),
            ("https://u:p@h:8443", "https://u:***@h:8443"),
            ("http://token@host:1/v1", "http://***@host:1/v1"),
            ("user:pass@host:1", "user:***@host:1"),
            ("http://h/v1?api_key=sk-1", "http://h/v1?api_key=***"),
            (
                "http://h/v1?a=1&KEY=s&token=t#f",
                "http://h/v1?a=1&KEY=***&token=***#f",
            ),
            ("http://h:1/v1", "http://h:1/v1"),
            ("http://h:1/a@b", "http://h:1/a@b"),
            ("replay of x.json", "replay of x.json"),
        ] {
            assert_eq!(redact(given), shown, "{given}");
        }
    }

    #[test]
    fn only_http_urls_with_a_host_pass() {
        for good in [
            "http://127.0.0.1:1234/v1",
            "https://box",
            "localhost:11434",
            "[::1]:8080",
            "http://u:p@h/v1",
        ] {
            assert!(check(good, good, "--endpoint").is_ok(), "{good}");
        }
        for (bad, why) in [
            ("ftp://h/v1", "scheme `ftp`"),
            ("file:///tmp/x", "scheme `file`"),
            ("http//x", "is not a URL"),
            ("http:/x", "is not a URL"),
            ("http://", "is not a URL"),
            ("http://h /v1", "space"),
            ("http://u:secret@h:99999", "is not a URL"),
        ] {
            let error = check(bad, bad, "OPENAI_BASE_URL").unwrap_err();
            let message = error.to_string();
            assert_eq!(error.kind(), "usage");
            assert!(message.starts_with("OPENAI_BASE_URL is `"), "{message}");
            assert!(message.contains(why), "{bad}: {message}");
            assert!(!message.contains("secret"), "{message}");
        }
    }
}

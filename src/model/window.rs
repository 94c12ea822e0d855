//! The context window a model call must fit: its size and where it was learned (the
//! server's own report, a profile's `context_window`), the cap it puts on Ollama's
//! `num_ctx`, and the check that stops a prompt that cannot fit before it is sent.
//!
//! Why before the call: Ollama cuts a prompt longer than `num_ctx` from the front without
//! an error, and the model answers a task it never fully saw; other servers refuse it only
//! after the connection and the wait. A prompt that cannot fit fails the same way on
//! every attempt and every server of that model: it is the task's size, not a fault.
//!
//! The honest limit: token counts are estimated from bytes (no tokenizer is loaded), the
//! same estimate that sizes `num_ctx`, so the check errs towards refusing a prompt at
//! the very edge of the window rather than sending one that would be cut.

use super::{ChatRequest, ModelError, ModelErrorKind};

/// Tokens reserved for the reply when no `--max-tokens` is given: room for a whole file.
pub const DEFAULT_REPLY_TOKENS: u64 = 4096;

/// A model's context window, prompt and reply together, and where that figure came from,
/// for messages: the server's answer (`` `qwen2.context_length` in http://…/api/show ``)
/// or the profile's setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub tokens: u64,
    pub source: String,
}

impl Window {
    /// The smaller of two windows: a profile may ask for less than the model supports,
    /// and a server's limit is a hard one whatever the profile says.
    pub fn smaller(a: Option<Window>, b: Option<Window>) -> Option<Window> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if b.tokens < a.tokens { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// The reply's share of the window: `--max-tokens` when given, else the default
    /// reserve, but never more than half a small window (a 4096-token model must still
    /// take a prompt when no reply cap was asked for).
    fn reply_tokens(&self, request: &ChatRequest) -> u64 {
        request
            .max_tokens
            .map_or_else(|| DEFAULT_REPLY_TOKENS.min(self.tokens / 2), u64::from)
    }

    /// Refuses `request` when its prompt and reply cannot fit: the error of kind
    /// `prompt_too_large` names the window, where it came from, and the prompt's size.
    pub fn check(&self, request: &ChatRequest) -> Result<(), ModelError> {
        let prompt = prompt_tokens(request);
        let reply = self.reply_tokens(request);
        if prompt + reply <= self.tokens {
            return Ok(());
        }
        let reply_from = if request.max_tokens.is_some() {
            "--max-tokens"
        } else {
            "the default reply reserve"
        };
        Err(ModelError::new(
            ModelErrorKind::PromptTooLarge,
            format!(
                "the prompt (about {prompt} tokens) and the reply ({reply} tokens, {reply_from}) do not fit `{}`'s context window of {} tokens ({}); the model was not called",
                request.model, self.tokens, self.source
            ),
        ))
    }
}

/// The prompt's tokens, estimated generously: [`tokens_in`] its bytes and a few for each
/// message's framing.
pub fn prompt_tokens(request: &ChatRequest) -> u64 {
    let bytes: usize = request.messages.iter().map(|m| m.content.len() + 16).sum();
    tokens_in(bytes)
}

/// The tokens `bytes` of prompt take, estimated generously at three bytes a token (code
/// tokenizes densely). Triage and the check before the call use this one estimate, so
/// `check` never calls a task fitting that the run then refuses for its prompt.
pub fn tokens_in(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Message;

    fn request(bytes: usize, max_tokens: Option<u32>) -> ChatRequest {
        ChatRequest {
            model: "m".to_owned(),
            messages: vec![Message::user("x".repeat(bytes))],
            temperature: 0.2,
            max_tokens,
            schema: None,
        }
    }

    #[test]
    fn a_prompt_fits_or_is_refused_naming_window_source_and_size() {
        let window = Window {
            tokens: 8192,
            source: "the test".to_owned(),
        };
        assert!(window.check(&request(3000, None)).is_ok());
        // 4096 for the reply leaves about 4096 tokens, 12 000 bytes, for the prompt.
        let error = window.check(&request(13_000, None)).unwrap_err();
        assert_eq!(error.kind, ModelErrorKind::PromptTooLarge);
        for part in ["8192", "the test", "about 4339 tokens", "`m`"] {
            assert!(error.message.contains(part), "{part}: {}", error.message);
        }
        // A smaller reply cap lets the same prompt through.
        assert!(window.check(&request(13_000, Some(1000))).is_ok());
    }

    #[test]
    fn a_small_window_keeps_half_for_the_prompt_when_no_reply_cap_is_given() {
        let window = Window {
            tokens: 4096,
            source: "s".to_owned(),
        };
        assert!(window.check(&request(3000, None)).is_ok());
        assert!(window.check(&request(3000, Some(4000))).is_err());
    }

    #[test]
    fn the_smaller_window_wins() {
        let w = |tokens| {
            Some(Window {
                tokens,
                source: tokens.to_string(),
            })
        };
        assert_eq!(Window::smaller(w(10), w(5)), w(5));
        assert_eq!(Window::smaller(w(5), w(10)), w(5));
        assert_eq!(Window::smaller(None, w(7)), w(7));
        assert_eq!(Window::smaller(None, None), None);
    }
}

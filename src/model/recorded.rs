//! Replies recorded earlier and served in order, without a server: the demo runs on these.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::{ChatReply, ModelError, ModelErrorKind};

pub struct Recorded {
    /// Names where the replies came from, shown as the endpoint.
    source: String,
    replies: Mutex<VecDeque<ChatReply>>,
}

impl Recorded {
    pub fn new(source: impl Into<String>, replies: Vec<ChatReply>) -> Self {
        Self {
            source: source.into(),
            replies: Mutex::new(replies.into()),
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn next_reply(&self) -> Result<ChatReply, ModelError> {
        let mut replies = self
            .replies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        replies.pop_front().ok_or_else(|| {
            ModelError::new(
                ModelErrorKind::Replay,
                format!(
                    "{}: no recorded reply is left for this request",
                    self.source
                ),
            )
        })
    }
}

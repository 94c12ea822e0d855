//! Reading a whole (non-streamed) response body under the same limits as a stream.
//!
//! A model list, a server that ignores `stream: true`, or an error page can be as endless
//! or as stalled as any stream, so every body is read chunk by chunk with the size cap
//! (`max_reply_bytes`) and the idle timeout, never with `Response::text()` or `json()`.

use futures_util::StreamExt;
use serde_json::Value;

use super::http::{Pace, transport_error};
use super::{Limits, ModelError, ModelErrorKind};

/// The whole body, or the fault that stopped it: `reply_too_large` past the size cap,
/// `idle_timeout` when it stalls, `stream_cut` when the connection breaks.
pub(crate) async fn read(
    url: &str,
    response: reqwest::Response,
    limits: &Limits,
) -> Result<Vec<u8>, ModelError> {
    let mut pace = Pace::start(limits);
    pace.flowing();
    read_paced(url, response, limits, &mut pace).await
}

/// Like [`read`], for a model's whole reply: until its first bytes the first-byte limit of
/// `pace` applies (the server computes the whole reply before sending any), then the idle
/// limit.
pub(crate) async fn read_paced(
    url: &str,
    response: reqwest::Response,
    limits: &Limits,
    pace: &mut Pace,
) -> Result<Vec<u8>, ModelError> {
    let mut chunks = response.bytes_stream();
    let mut body = Vec::new();
    loop {
        let next = pace.next(url, body.len(), chunks.next()).await?;
        pace.flowing();
        let Some(chunk) = next else {
            return Ok(body);
        };
        let chunk = chunk.map_err(|error| {
            ModelError::new(
                ModelErrorKind::StreamCut,
                format!(
                    "{url}: the answer broke off after {} bytes: {}",
                    body.len(),
                    transport_error(url, &error).message
                ),
            )
        })?;
        if body.len() + chunk.len() > limits.max_reply_bytes {
            return Err(ModelError::new(
                ModelErrorKind::ReplyTooLarge,
                format!(
                    "{url}: the answer passed {} bytes without ending",
                    limits.max_reply_bytes
                ),
            ));
        }
        body.extend_from_slice(&chunk);
    }
}

/// The body as JSON; `what` names it in the error ("the model list").
pub(crate) async fn read_json(
    url: &str,
    response: reqwest::Response,
    limits: &Limits,
    what: &str,
) -> Result<Value, ModelError> {
    let bytes = read(url, response, limits).await?;
    serde_json::from_slice(&bytes).map_err(|error| {
        ModelError::new(
            ModelErrorKind::MalformedStream,
            format!("{url}: {what} is not JSON: {error}"),
        )
    })
}

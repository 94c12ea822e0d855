//! Recorded model exchanges: the cassette file (`--record`), and replies served from one
//! instead of a server (`--replay`, and the demo's bundled replies).
//!
//! One mechanism, two ways of matching. `--replay` is strict: the n-th request must equal
//! the n-th recorded request (model, messages, temperature, max tokens), so a spec or
//! prompt change shows up as a loud `replay` error instead of a stale reply. The demo is
//! sequential: it serves its replies in order whatever was asked, so it keeps working when
//! the prompt templates change wording.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{ChatReply, ChatRequest, ModelError, ModelErrorKind};

/// Names the file format, so a cassette is recognisable on its own.
pub const FORMAT: &str = "execute-local-task cassette";
pub const VERSION: u32 = 1;

/// A cassette: every exchange of one run, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cassette {
    pub format: String,
    pub version: u32,
    /// The protocol and server the exchanges were recorded from (informational).
    pub provider: String,
    pub endpoint: String,
    pub exchanges: Vec<Exchange>,
}

/// One model call: what was asked, and the reply or the fault that ended it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exchange {
    pub request: ChatRequest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<ChatReply>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RecordedError>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedError {
    pub kind: String,
    pub message: String,
}

impl Cassette {
    pub fn new(provider: &str, endpoint: &str) -> Self {
        Self {
            format: FORMAT.to_owned(),
            version: VERSION,
            provider: provider.to_owned(),
            endpoint: endpoint.to_owned(),
            exchanges: Vec::new(),
        }
    }

    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let replay_error = |message: String| {
            ModelError::new(
                ModelErrorKind::Replay,
                format!("cassette {}: {message}", path.display()),
            )
        };
        let text = crate::input_file::read_text(path, crate::input_file::MAX_CASSETTE_BYTES)
            .map_err(|error| replay_error(format!("cannot read it: {error}")))?;
        let cassette: Self = serde_json::from_str(&text)
            .map_err(|error| replay_error(format!("not a cassette: {error}")))?;
        if cassette.format != FORMAT || cassette.version != VERSION {
            return Err(replay_error(format!(
                "format `{}` version {} is not `{FORMAT}` version {VERSION}",
                cassette.format, cassette.version
            )));
        }
        Ok(cassette)
    }

    /// The model of the first exchange: what a replayed run uses when none is named.
    pub fn model(&self) -> Option<&str> {
        self.exchanges.first().map(|e| e.request.model.as_str())
    }
}

/// How a replayed request is compared with the recorded one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matching {
    /// The request must equal the recorded one.
    Strict,
    /// Replies are served in order; requests are not compared.
    Sequential,
}

/// Serves the replies of a cassette in order.
pub struct Replayer {
    /// Names where the replies come from, shown as the endpoint.
    source: String,
    matching: Matching,
    exchanges: Vec<Exchange>,
    next: Mutex<usize>,
}

impl Replayer {
    pub fn new(source: impl Into<String>, cassette: Cassette, matching: Matching) -> Self {
        Self {
            source: source.into(),
            matching,
            exchanges: cassette.exchanges,
            next: Mutex::new(0),
        }
    }

    /// Bare replies served in order, for the demo.
    pub fn sequential(source: impl Into<String>, replies: Vec<ChatReply>) -> Self {
        let mut cassette = Cassette::new("recorded", "");
        cassette.exchanges = replies
            .into_iter()
            .map(|reply| Exchange {
                request: ChatRequest {
                    model: String::new(),
                    messages: Vec::new(),
                    temperature: 0.0,
                    max_tokens: None,
                    schema: None,
                },
                reply: Some(reply),
                error: None,
            })
            .collect();
        Self::new(source, cassette, Matching::Sequential)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn next_reply(&self, request: &ChatRequest) -> Result<ChatReply, ModelError> {
        let mut next = self
            .next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = *next;
        let Some(exchange) = self.exchanges.get(n) else {
            return Err(ModelError::new(
                ModelErrorKind::Replay,
                format!(
                    "{}: request {} has no recorded reply ({} recorded)",
                    self.source,
                    n + 1,
                    self.exchanges.len()
                ),
            )
            .with_hint("record the run again with --record FILE"));
        };
        if self.matching == Matching::Strict
            && let Some(difference) = difference(&exchange.request, request)
        {
            return Err(ModelError::new(
                ModelErrorKind::Replay,
                format!(
                    "{}: request {} does not match the recording: {difference}",
                    self.source,
                    n + 1
                ),
            )
            .with_hint("the spec, context files, prompts or options changed since the recording; record it again with --record FILE"));
        }
        *next += 1;
        match (&exchange.reply, &exchange.error) {
            (Some(reply), _) => Ok(reply.clone()),
            (None, Some(error)) => Err(ModelError::new(
                kind_named(&error.kind),
                format!("{} (recorded)", error.message),
            )),
            (None, None) => Err(ModelError::new(
                ModelErrorKind::Replay,
                format!(
                    "{}: exchange {} has neither a reply nor an error",
                    self.source,
                    n + 1
                ),
            )),
        }
    }
}

/// The first way `now` differs from `recorded`, in words.
fn difference(recorded: &ChatRequest, now: &ChatRequest) -> Option<String> {
    if recorded.model != now.model {
        return Some(format!(
            "model `{}` was recorded, `{}` is asked for",
            recorded.model, now.model
        ));
    }
    if (recorded.temperature - now.temperature).abs() > f64::EPSILON {
        return Some(format!(
            "temperature {} was recorded, {} is asked for",
            recorded.temperature, now.temperature
        ));
    }
    if recorded.max_tokens != now.max_tokens {
        return Some(format!(
            "max tokens {:?} were recorded, {:?} are asked for",
            recorded.max_tokens, now.max_tokens
        ));
    }
    if recorded.messages.len() != now.messages.len() {
        return Some(format!(
            "{} messages were recorded, {} are sent",
            recorded.messages.len(),
            now.messages.len()
        ));
    }
    recorded
        .messages
        .iter()
        .zip(&now.messages)
        .enumerate()
        .find(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| {
            if a.role != b.role {
                return format!("message {} has another role", i + 1);
            }
            let at = a
                .content
                .char_indices()
                .zip(b.content.chars())
                .find(|((_, x), y)| x != y)
                .map_or_else(|| a.content.len().min(b.content.len()), |((at, _), _)| at);
            let role = serde_json::to_value(a.role)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            format!(
                "message {} ({role}) differs at byte {at}: recorded {:?}, now {:?}",
                i + 1,
                excerpt(&a.content, at),
                excerpt(&b.content, at)
            )
        })
}

fn excerpt(text: &str, at: usize) -> String {
    text[at..].chars().take(60).collect()
}

fn kind_named(name: &str) -> ModelErrorKind {
    use ModelErrorKind as K;
    [
        K::NoServer,
        K::NoModel,
        K::ConnectionRefused,
        K::ConnectionReset,
        K::Dns,
        K::ConnectTimeout,
        K::FirstByteTimeout,
        K::IdleTimeout,
        K::TotalTimeout,
        K::ModelNotFound,
        K::ModelNotLoaded,
        K::ContextTooLong,
        K::RateLimited,
        K::Unavailable,
        K::HttpClientError,
        K::HttpServerError,
        K::StreamCut,
        K::MalformedStream,
        K::ReplyTooLarge,
        K::Record,
    ]
    .into_iter()
    .find(|kind| kind.as_str() == name)
    .unwrap_or(K::Replay)
}

/// Refuses, before the model is called, the cassette files a run cannot use: a `--record`
/// destination that would destroy something (the spec, an output file, a file that is
/// not a cassette) or could not be written (its directory missing or read-only), and a
/// `--replay` file that is not a regular file or is over [`MAX_CASSETTE_BYTES`]. Bad input
/// of the command line: exit 2, naming the file.
///
/// [`MAX_CASSETTE_BYTES`]: crate::input_file::MAX_CASSETTE_BYTES
pub fn check_files(
    record: Option<&Path>,
    replay: Option<&Path>,
    spec: &Path,
    root: &Path,
    outputs: &[String],
) -> crate::error::Result<()> {
    let refuse = |flag: &str, path: &Path, reason: String| {
        crate::error::Error::Usage(format!("{flag} {}: {reason}", path.display()))
    };
    if let Some(path) = replay {
        // A missing cassette is left to the replay itself, which reports it (kind `replay`).
        if let Err(error) =
            crate::input_file::check_regular(path, crate::input_file::MAX_CASSETTE_BYTES)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            return Err(refuse("--replay", path, error.to_string()));
        }
    }
    let Some(path) = record else {
        return Ok(());
    };
    if same_file(path, spec) {
        return Err(refuse(
            "--record",
            path,
            "is the spec of this run; choose another file for the cassette".to_owned(),
        ));
    }
    if let Some(output) = outputs
        .iter()
        .find(|output| same_file(path, &root.join(output)))
    {
        return Err(refuse(
            "--record",
            path,
            format!(
                "is `{output}`, an output file of this run; choose another file for the cassette"
            ),
        ));
    }
    check_writable_dir(path).map_err(|reason| refuse("--record", path, reason))?;
    match crate::input_file::read_text(path, crate::input_file::MAX_CASSETTE_BYTES) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Ok(text) if is_cassette(&text) => Ok(()),
        outcome => {
            let why = match outcome {
                Err(error) => error.to_string(),
                Ok(_) => format!("its JSON has no \"format\": \"{FORMAT}\""),
            };
            Err(refuse(
                "--record",
                path,
                format!(
                    "exists and is not a cassette ({why}); it was left as it is: move it away or choose another file"
                ),
            ))
        }
    }
}

/// Whether `text` is a cassette, by its own mark: overwriting an older one is expected.
fn is_cassette(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text)
        .is_ok_and(|value| value.get("format").and_then(|f| f.as_str()) == Some(FORMAT))
}

/// The directory the cassette goes in exists and takes a new file: the cassette is
/// written as a temp file there and renamed, so that is what is tried.
fn check_writable_dir(path: &Path) -> Result<(), String> {
    let dir = parent_dir(path);
    match std::fs::metadata(dir) {
        Ok(metadata) if metadata.is_dir() => tempfile::NamedTempFile::new_in(dir)
            .map(drop)
            .map_err(|error| format!("cannot create a file in {}: {error}", dir.display())),
        Ok(_) => Err(format!("{} is not a directory", dir.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("the directory {} does not exist", dir.display()))
        }
        Err(error) => Err(format!(
            "cannot use the directory {}: {error}",
            dir.display()
        )),
    }
}

fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."))
}

/// Whether `a` and `b` name one file however they are spelled (`./x`, `d/../x`, a symlink),
/// also before it exists.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if let (Ok(a), Ok(b)) = (std::fs::metadata(a), std::fs::metadata(b)) {
        return (a.dev(), a.ino()) == (b.dev(), b.ino());
    }
    let resolved = |path: &Path| {
        let dir = std::fs::canonicalize(parent_dir(path)).ok()?;
        Some(dir.join(path.file_name()?))
    };
    resolved(a).is_some_and(|a| resolved(b) == Some(a))
}

/// Appends every exchange of a run to a cassette file, rewriting it after each one so a
/// killed run still leaves the exchanges it had.
pub struct Recorder {
    path: PathBuf,
    cassette: Mutex<Cassette>,
}

impl Recorder {
    /// Starts an empty cassette at `path` (checked writable now, not after the first call).
    pub fn create(path: &Path, provider: &str, endpoint: &str) -> Result<Self, ModelError> {
        let recorder = Self {
            path: path.to_path_buf(),
            cassette: Mutex::new(Cassette::new(provider, endpoint)),
        };
        let cassette = recorder
            .cassette
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        recorder.save(&cassette)?;
        Ok(recorder)
    }

    pub fn record(
        &self,
        request: &ChatRequest,
        outcome: &Result<ChatReply, ModelError>,
    ) -> Result<(), ModelError> {
        let mut cassette = self
            .cassette
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cassette.exchanges.push(Exchange {
            request: request.clone(),
            reply: outcome.as_ref().ok().cloned(),
            error: outcome.as_ref().err().map(|error| RecordedError {
                kind: error.kind.as_str().to_owned(),
                message: error.message.clone(),
            }),
        });
        self.save(&cassette)
    }

    fn save(&self, cassette: &Cassette) -> Result<(), ModelError> {
        let record_error = |error: std::io::Error| {
            ModelError::new(
                ModelErrorKind::Record,
                format!("cannot write the cassette {}: {error}", self.path.display()),
            )
        };
        let text = serde_json::to_string_pretty(cassette).map_err(std::io::Error::other);
        let text = text.map_err(record_error)?;
        // Written beside the target and renamed over it: never a half-written cassette.
        let dir = parent_dir(&self.path);
        let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(record_error)?;
        std::io::Write::write_all(&mut temp, format!("{text}\n").as_bytes())
            .map_err(record_error)?;
        temp.persist(&self.path)
            .map_err(|error| record_error(error.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Finish, Message};

    fn request(text: &str) -> ChatRequest {
        ChatRequest {
            model: "m".to_owned(),
            messages: vec![Message::user(text)],
            temperature: 0.2,
            max_tokens: None,
            schema: None,
        }
    }

    fn cassette() -> Cassette {
        let mut cassette = Cassette::new("openai", "http://x/v1");
        cassette.exchanges.push(Exchange {
            request: request("write a.py"),
            reply: Some(ChatReply {
                content: "ok".to_owned(),
                finish: Finish::Stop,
                usage: None,
                notes: Vec::new(),
            }),
            error: None,
        });
        cassette
    }

    #[test]
    fn strict_replay_names_the_first_difference() {
        let replayer = Replayer::new("c.json", cassette(), Matching::Strict);
        let error = replayer.next_reply(&request("write b.py")).unwrap_err();
        assert_eq!(error.kind, ModelErrorKind::Replay);
        assert!(
            error.message.contains("differs at byte 6"),
            "{}",
            error.message
        );
        assert!(replayer.next_reply(&request("write a.py")).is_ok());
        let error = replayer.next_reply(&request("write a.py")).unwrap_err();
        assert!(
            error.message.contains("no recorded reply"),
            "{}",
            error.message
        );
    }

    #[test]
    fn sequential_replay_ignores_the_request() {
        let replayer = Replayer::new("c.json", cassette(), Matching::Sequential);
        assert!(replayer.next_reply(&request("anything")).is_ok());
    }
}

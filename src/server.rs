//! Decides which server, protocol and model a run uses, and connects to it ([`connect`]);
//! finding a server on the usual local ports is [`crate::discovery`]'s.
//!
//! Precedence: command-line flag > spec > `LOCAL_TASK_*` > the ecosystem's own variables
//! (`OLLAMA_HOST`, `OPENAI_BASE_URL` + `OPENAI_API_KEY`) > discovery of the usual local
//! ports. With `--provider auto`, a server that answers `/api/version` is Ollama and gets
//! its native API; anything answering `/v1/models` is OpenAI-compatible.

use std::path::PathBuf;

use crate::discovery::{PORTS_VARIABLE, discover, discovery_ports, probe, probe_limits};
use crate::endpoint;
use crate::error::Error;
use crate::model::ollama::Ollama;
use crate::model::openai::OpenAi;
use crate::model::recorded::{Cassette, Matching, Recorder, Replayer};
use crate::model::retry::RetryPolicy;
use crate::model::{
    Backend, ChatRequest, Client, Limits, ModelError, ModelErrorKind, Provider, request_body,
};

const OLLAMA_DEFAULT_PORT: u16 = 11434;

/// The values `--provider` and `LOCAL_TASK_PROVIDER` accept.
pub const PROVIDERS: &[&str] = &["auto", "openai", "ollama"];

/// What the user asked for, before anything is probed.
#[derive(Debug, Clone, Default)]
pub struct ModelChoice {
    pub endpoint: Option<String>,
    /// `openai` or `ollama`; `None` is auto.
    pub provider: Option<String>,
    pub model: Option<String>,
    pub api_key: Option<String>,
    /// Where the API key came from (a variable's name), for `--dry-run`; never the key.
    pub api_key_source: Option<String>,
    /// The ports discovery probes, with what usually listens there; empty means
    /// [`crate::discovery::LOCAL_PORTS`].
    pub ports: Vec<(u16, String)>,
}

impl ModelChoice {
    /// Merges flags, the spec's model, and the environment in precedence order.
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] when the provider (flag or `LOCAL_TASK_PROVIDER`) is not one of
    /// [`PROVIDERS`], or the endpoint is not an http(s) URL ([`endpoint::check`]): a typo
    /// is the user's input, not a server that could not be used.
    pub fn resolve(
        flags: &ModelChoice,
        spec_model: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, Error> {
        let env = |name: &str| env(name).filter(|value| !value.trim().is_empty());
        let provider = match (&flags.provider, env("LOCAL_TASK_PROVIDER")) {
            (Some(flag), _) => Some(checked_provider(flag, "--provider")?),
            (None, Some(variable)) => Some(checked_provider(&variable, "LOCAL_TASK_PROVIDER")?),
            (None, None) => None,
        }
        .filter(|p| p != "auto");
        let given = given_endpoint(flags.endpoint.as_deref(), provider.as_deref(), &env);
        // Checked once, here, for runs and `models` alike: a URL the tool cannot speak to
        // is bad input (exit 2), not a server fault found later.
        if let Some(given) = &given {
            endpoint::check(&given.url, &given.text, given.source)?;
        }
        // Whether the endpoint is `OPENAI_BASE_URL`'s: its key goes only there.
        let from_openai_base_url = given
            .as_ref()
            .is_some_and(|given| given.source == "OPENAI_BASE_URL");
        let endpoint = given.map(|given| given.url);
        // `LOCAL_TASK_API_KEY` is meant for whatever server this tool talks to;
        // `OPENAI_API_KEY` belongs to the `OPENAI_BASE_URL` server (often a hosted one) and
        // must not leak to a local port or an `OLLAMA_HOST`.
        let (api_key, api_key_source) = if let Some(key) = flags.api_key.clone() {
            let source = flags
                .api_key_source
                .clone()
                .or_else(|| Some("flag".to_owned()));
            (Some(key), source)
        } else if let Some(key) = env("LOCAL_TASK_API_KEY") {
            (Some(key), Some("LOCAL_TASK_API_KEY".to_owned()))
        } else if let Some(key) = env("OPENAI_API_KEY").filter(|_| from_openai_base_url) {
            (Some(key), Some("OPENAI_API_KEY".to_owned()))
        } else {
            (None, None)
        };
        Ok(Self {
            endpoint,
            provider,
            model: flags
                .model
                .clone()
                .or_else(|| spec_model.map(str::to_owned))
                .or_else(|| env("LOCAL_TASK_MODEL")),
            api_key,
            api_key_source,
            ports: if flags.ports.is_empty() {
                discovery_ports(env(PORTS_VARIABLE).as_deref())
            } else {
                flags.ports.clone()
            },
        })
    }

    fn ports(&self) -> Vec<(u16, String)> {
        if self.ports.is_empty() {
            discovery_ports(None)
        } else {
            self.ports.clone()
        }
    }
}

/// The endpoint a run uses, with the text it came from and where (for messages).
struct GivenEndpoint {
    url: String,
    /// As the user wrote it (differs from `url` for `OLLAMA_HOST`).
    text: String,
    /// `--endpoint` or the variable's name.
    source: &'static str,
}

/// The flag and `LOCAL_TASK_ENDPOINT` first; the ecosystem's variables after, in the order
/// the provider makes sensible.
fn given_endpoint(
    flag: Option<&str>,
    provider: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<GivenEndpoint> {
    let as_given = |text: String, source| GivenEndpoint {
        url: text.clone(),
        text,
        source,
    };
    let openai_base_url = || env("OPENAI_BASE_URL").map(|url| as_given(url, "OPENAI_BASE_URL"));
    let ollama_host_url = |suffix: &str| {
        env("OLLAMA_HOST").map(|host| GivenEndpoint {
            url: format!("{}{suffix}", ollama_host(&host)),
            text: host,
            source: "OLLAMA_HOST",
        })
    };
    if let Some(flag) = flag {
        return Some(as_given(flag.to_owned(), "--endpoint"));
    }
    if let Some(variable) = env("LOCAL_TASK_ENDPOINT") {
        return Some(as_given(variable, "LOCAL_TASK_ENDPOINT"));
    }
    match provider {
        Some("ollama") => ollama_host_url("").or_else(openai_base_url),
        // OpenAI explicitly: Ollama's host is used through its `/v1`.
        Some("openai") => openai_base_url().or_else(|| ollama_host_url("/v1")),
        // Auto: the bare host is probed and gets Ollama's native API.
        _ => openai_base_url().or_else(|| ollama_host_url("")),
    }
}

/// `value` as a provider name, or a usage error naming where it came from and what is
/// accepted.
fn checked_provider(value: &str, source: &str) -> Result<String, Error> {
    let name = value.trim();
    if PROVIDERS.contains(&name) {
        Ok(name.to_owned())
    } else {
        Err(Error::Usage(format!(
            "{source} is `{value}`, which is not a provider; accepted values: {}",
            PROVIDERS.join(", ")
        )))
    }
}

/// `OLLAMA_HOST` as a URL, read the way Ollama reads it: the scheme (default `http`) and a
/// path are kept, a missing port is 11434, and only the unspecified address a server binds
/// to (`0.0.0.0`, `[::]`, or no host at all) means this machine and is reached through
/// loopback. Any other address is kept as it is. Anything left malformed is caught by the
/// endpoint check, which names `OLLAMA_HOST`.
fn ollama_host(host: &str) -> String {
    let host = host.trim().trim_end_matches('/');
    let (scheme, rest) = host.split_once("://").unwrap_or(("http", host));
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let (user_info, host_port) = authority
        .rsplit_once('@')
        .map_or(("", authority), |(user, host)| (user, host));
    let (name, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (inside, after) = bracketed.split_once(']').unwrap_or((bracketed, ""));
        (
            format!("[{inside}]"),
            after.strip_prefix(':').unwrap_or(after),
        )
    } else if host_port.matches(':').count() > 1 {
        // A bare IPv6 address (`::1`): every colon is the address's own.
        (format!("[{host_port}]"), "")
    } else {
        let (name, port) = host_port.split_once(':').unwrap_or((host_port, ""));
        (name.to_owned(), port)
    };
    let name = match name.as_str() {
        "" | "0.0.0.0" => "127.0.0.1".to_owned(),
        "[::]" | "[0:0:0:0:0:0:0:0]" => "[::1]".to_owned(),
        _ => name,
    };
    let port = if port.is_empty() {
        OLLAMA_DEFAULT_PORT.to_string()
    } else {
        port.to_owned()
    };
    let user_info = if user_info.is_empty() {
        String::new()
    } else {
        format!("{user_info}@")
    };
    let path = if path.is_empty() {
        String::new()
    } else {
        format!("/{path}")
    };
    format!("{scheme}://{user_info}{name}:{port}{path}")
}

pub(crate) fn with_scheme(url: &str) -> String {
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

/// True for `http://host:port` without a path: the protocol is then found by probing.
pub(crate) fn is_bare(endpoint: &str) -> bool {
    let url = with_scheme(endpoint.trim());
    let url = url.trim_end_matches('/');
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    !after_scheme.contains('/')
}

/// The API root of an OpenAI-compatible server: a bare `http://host:port` gets `/v1`.
pub fn openai_base(endpoint: &str) -> String {
    let url = with_scheme(endpoint.trim());
    let url = url.trim_end_matches('/');
    let url = url.trim_end_matches("/chat/completions");
    if is_bare(url) {
        format!("{url}/v1")
    } else {
        url.to_owned()
    }
}

/// The root of an Ollama server: whatever API path was given is dropped.
pub fn ollama_base(endpoint: &str) -> String {
    let url = with_scheme(endpoint.trim());
    let mut url = url.trim_end_matches('/');
    for suffix in ["/api/chat", "/api", "/v1"] {
        url = url.trim_end_matches(suffix);
    }
    url.to_owned()
}

/// How a run reaches its model besides the server itself: retries, recording, replay.
#[derive(Debug, Clone)]
pub struct Connection {
    pub retry: RetryPolicy,
    /// Save every exchange to this cassette.
    pub record: Option<PathBuf>,
    /// Serve replies from this cassette instead of a server.
    pub replay: Option<PathBuf>,
    pub replay_matching: Matching,
}

impl Default for Connection {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            record: None,
            replay: None,
            replay_matching: Matching::Strict,
        }
    }
}

/// A connected model server: the client to call and the model name.
pub struct Connected {
    pub client: Client,
    pub model: String,
    /// What the supervisor should know about the choice (a name the server did not have).
    pub notes: Vec<String>,
}

/// Connects to the chosen server (discovering one when none was named) and settles the
/// model name (the server's only model when none was named).
pub async fn connect(
    choice: &ModelChoice,
    limits: Limits,
    connection: &Connection,
) -> Result<Connected, ModelError> {
    if let Some(path) = &connection.replay {
        let cassette = Cassette::load(path)?;
        let model = choice
            .model
            .clone()
            .or_else(|| cassette.model().map(str::to_owned))
            .unwrap_or_default();
        let source = format!("replay of {}", path.display());
        return Ok(Connected {
            client: Client::new(Backend::Recorded(Replayer::new(
                source,
                cassette,
                connection.replay_matching,
            ))),
            model,
            notes: Vec::new(),
        });
    }
    let (backend, models) = open_backend(choice, limits).await?;
    let client = Client::new(backend).with_retry(connection.retry);
    let (model, notes) = if let Some(named) = &choice.model {
        // A server that cannot list its models is taken at its word.
        let listed = match models {
            Some(models) => models.ok(),
            None => list_models(&client).await.ok(),
        };
        settle_named(&client.endpoint(), client.provider(), named, listed)?
    } else {
        let models = match models {
            Some(models) => models?,
            None => list_models(&client).await?,
        };
        (only_model(&client.endpoint(), models)?, Vec::new())
    };
    let client = match &connection.record {
        Some(path) => {
            let recorder = Recorder::create(path, client.provider().as_str(), &client.endpoint())?;
            client.with_recorder(recorder)
        }
        None => client,
    };
    Ok(Connected {
        client,
        model,
        notes,
    })
}

/// Checks a model name against the server's list, so the result never names a model that
/// did not answer. Ollama, and any server with several models, must have it: there the
/// name picks the model. An OpenAI-compatible server with one model (llama.cpp's, which
/// answers with that model whatever the name) is asked for that one, and a note says so.
fn settle_named(
    base: &str,
    provider: Provider,
    named: &str,
    listed: Option<Vec<String>>,
) -> Result<(String, Vec<String>), ModelError> {
    let Some(mut models) = listed.filter(|models| !models.is_empty()) else {
        return Ok((named.to_owned(), Vec::new()));
    };
    // Ollama lists `name:latest` for a model pulled as `name`.
    let found = models
        .iter()
        .any(|model| model == named || *model == format!("{named}:latest"));
    if found {
        return Ok((named.to_owned(), Vec::new()));
    }
    if models.len() == 1 && provider == Provider::OpenAi {
        let served = models.remove(0);
        let note =
            format!("{base} has no model `{named}`; it serves only `{served}`, which was used");
        return Ok((served, vec![note]));
    }
    let error = ModelError::new(
        ModelErrorKind::ModelNotFound,
        format!(
            "{base} has no model `{named}`; it offers: {}",
            models.join(", ")
        ),
    );
    Err(if provider == Provider::Ollama {
        error.with_hint(format!(
            "pull it first (`ollama pull {named}`) or choose one of the listed models with --model"
        ))
    } else {
        error
    })
}

async fn list_models(client: &Client) -> Result<Vec<String>, ModelError> {
    match client.backend() {
        Backend::OpenAi(openai) => openai.list_models().await,
        Backend::Ollama(ollama) => ollama.list_models().await,
        Backend::Recorded(_) => Ok(Vec::new()),
    }
}

/// The backend for the chosen provider and endpoint, with the model list when probing
/// already fetched it.
async fn open_backend(
    choice: &ModelChoice,
    limits: Limits,
) -> Result<(Backend, Option<Result<Vec<String>, ModelError>>), ModelError> {
    let api_key = choice.api_key.clone();
    if let Some(provider) = choice.provider.as_deref()
        && provider != "openai"
        && provider != "ollama"
    {
        return Err(ModelError::new(
            ModelErrorKind::NoServer,
            format!("unknown provider `{provider}`"),
        )
        .with_hint("use --provider auto, openai or ollama"));
    }
    match (choice.provider.as_deref(), choice.endpoint.as_deref()) {
        (Some("ollama"), Some(endpoint)) => Ok((
            Backend::Ollama(Ollama::new(&ollama_base(endpoint), limits)?),
            None,
        )),
        (Some(_), Some(endpoint)) => Ok((
            Backend::OpenAi(OpenAi::new(&openai_base(endpoint), api_key, limits)?),
            None,
        )),
        // A path (`/v1`, `/api/v1`) names the OpenAI-compatible API explicitly.
        (None, Some(endpoint)) if !is_bare(endpoint) => Ok((
            Backend::OpenAi(OpenAi::new(&openai_base(endpoint), api_key, limits)?),
            None,
        )),
        (None, Some(endpoint)) => {
            let root = with_scheme(endpoint.trim())
                .trim_end_matches('/')
                .to_owned();
            match probe(&root, api_key.clone(), probe_limits(limits)).await {
                Ok(found) => Ok((found.backend(api_key, limits)?, Some(found.models))),
                // Probing failed: the chat call will fail with the real reason, or work
                // on a server without a model list.
                Err(_) if choice.model.is_some() => Ok((
                    Backend::OpenAi(OpenAi::new(&openai_base(&root), api_key, limits)?),
                    None,
                )),
                Err(error) => Err(error),
            }
        }
        (provider, None) => {
            let ports = choice.ports();
            let found = discover(&ports, api_key.clone(), provider).await.ok_or_else(|| {
                ModelError::new(
                    ModelErrorKind::NoServer,
                    format!(
                        "no model server given and none answers on the usual local ports ({})",
                        ports
                            .iter()
                            .map(|(port, name)| format!("{name} {port}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
                .with_hint("start Ollama or LM Studio's server, or pass --endpoint URL (or set LOCAL_TASK_ENDPOINT)")
            })?;
            Ok((found.backend(api_key, limits)?, Some(found.models)))
        }
    }
}

fn only_model(base: &str, mut models: Vec<String>) -> Result<String, ModelError> {
    match models.len() {
        1 => Ok(models.remove(0)),
        0 => Err(ModelError::new(
            ModelErrorKind::NoModel,
            format!("{base} offers no model"),
        )
        .with_hint("load a model in the server (e.g. `ollama pull qwen2.5-coder:7b`) and pass --model NAME")),
        _ => Err(ModelError::new(
            ModelErrorKind::NoModel,
            format!(
                "{base} offers {} models and none was chosen: {}; choose one with --model NAME, the spec's \"model\" field, or LOCAL_TASK_MODEL",
                models.len(),
                models.join(", ")
            ),
        )
        .with_hint("choose one with --model NAME, the spec's \"model\" field, or LOCAL_TASK_MODEL")),
    }
}

/// The protocol a run will speak, when it is settled without probing: named by the flag
/// or `LOCAL_TASK_PROVIDER`, or by an endpoint with an API path (`/v1`), which
/// [`connect`] always treats as OpenAI-compatible.
fn known_provider(choice: &ModelChoice) -> Option<Provider> {
    match (choice.provider.as_deref(), choice.endpoint.as_deref()) {
        (Some("ollama"), _) => Some(Provider::Ollama),
        (Some(_), _) => Some(Provider::OpenAi),
        (None, Some(endpoint)) if !is_bare(endpoint) => Some(Provider::OpenAi),
        (None, _) => None,
    }
}

/// What `--dry-run` shows, computed without calling anything.
///
/// When the protocol is settled ([`known_provider`]) it is the one request a run sends:
/// `provider`, `endpoint`, `url`, `authorization` and the `request` body. When a run would
/// probe the server first, the probe's outcome is unknown, so both candidates are shown
/// under `requests` (`openai` and `ollama`, each with `endpoint`, `url`, `authorization`
/// and `request`) and `provider` says `auto (not probed)`. Without an endpoint, discovery
/// picks the server, so the addresses are null and `note` says which ports are probed.
pub fn dry_run(choice: &ModelChoice, request: &ChatRequest) -> serde_json::Value {
    let candidate = |provider: Provider| {
        // Shown with its secrets masked, like every printed endpoint.
        let endpoint = choice.endpoint.as_deref().map(|endpoint| match provider {
            Provider::Ollama => endpoint::redact(&ollama_base(endpoint)),
            _ => endpoint::redact(&openai_base(endpoint)),
        });
        let url = endpoint.as_deref().map(|base| match provider {
            Provider::Ollama => format!("{base}/api/chat"),
            _ => format!("{base}/chat/completions"),
        });
        // Only the OpenAI-compatible client sends a key; the key itself is never shown.
        let authorization = match (provider, choice.api_key_source.as_deref()) {
            (Provider::OpenAi, Some(source)) if choice.api_key.is_some() => {
                Some(format!("Bearer <{source}>"))
            }
            _ => None,
        };
        serde_json::json!({
            "endpoint": endpoint,
            "url": url,
            "authorization": authorization,
            "request": request_body(provider, request),
        })
    };
    let discovery_note = || {
        let ports = choice
            .ports()
            .iter()
            .map(|(port, name)| format!("{port} ({name})"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "no endpoint given: a run uses the first of these local ports that answers: {ports}"
        )
    };
    let mut printed = if let Some(provider) = known_provider(choice) {
        let mut printed = serde_json::json!({"provider": provider.as_str()});
        if let (Some(fields), serde_json::Value::Object(more)) =
            (printed.as_object_mut(), candidate(provider))
        {
            fields.extend(more);
        }
        printed
    } else {
        let probed = choice
            .endpoint
            .as_deref()
            .map(|e| endpoint::redact(with_scheme(e.trim()).trim_end_matches('/')));
        serde_json::json!({
            "provider": "auto (not probed)",
            "endpoint": probed,
            "note": "a run first probes the server: one answering /api/version is Ollama and gets the `ollama` request, anything else the `openai` one",
            "requests": {
                "openai": candidate(Provider::OpenAi),
                "ollama": candidate(Provider::Ollama),
            },
        })
    };
    if choice.endpoint.is_none() {
        let mut note = discovery_note();
        if choice.provider.is_none() {
            note.push_str("; one answering /api/version is Ollama and gets the `ollama` request, any other the `openai` one");
        }
        printed["note"] = serde_json::Value::String(note);
    }
    printed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_normalise_to_the_api_root() {
        assert_eq!(
            openai_base("http://127.0.0.1:1234"),
            "http://127.0.0.1:1234/v1"
        );
        assert_eq!(openai_base("localhost:8080/"), "http://localhost:8080/v1");
        assert_eq!(openai_base("http://h:1/v1/"), "http://h:1/v1");
        assert_eq!(
            openai_base("http://h:1/api/v1/chat/completions"),
            "http://h:1/api/v1"
        );
    }

    #[test]
    fn ollama_addresses_normalise_to_the_server_root() {
        assert_eq!(ollama_base("http://h:11434/v1/"), "http://h:11434");
        assert_eq!(ollama_base("h:11434/api/chat"), "http://h:11434");
        assert!(is_bare("http://h:1/") && !is_bare("http://h:1/v1"));
    }

    #[test]
    fn ollama_host_keeps_every_address_but_the_unspecified_one() {
        for (given, url) in [
            ("0.0.0.0", "http://127.0.0.1:11434"),
            ("0.0.0.0:8080", "http://127.0.0.1:8080"),
            ("http://0.0.0.0:11434/", "http://127.0.0.1:11434"),
            (":11434", "http://127.0.0.1:11434"),
            ("10.0.0.0", "http://10.0.0.0:11434"),
            ("100.0.0.0", "http://100.0.0.0:11434"),
            ("10.0.0.0:11434", "http://10.0.0.0:11434"),
            ("192.168.1.20:9000", "http://192.168.1.20:9000"),
            ("box", "http://box:11434"),
            (" box ", "http://box:11434"),
            ("box/prefix", "http://box:11434/prefix"),
            ("https://box", "https://box:11434"),
            ("https://box:8443/", "https://box:8443"),
            ("http://user:pw@box", "http://user:pw@box:11434"),
            ("[::]", "http://[::1]:11434"),
            ("[::]:9999", "http://[::1]:9999"),
            ("::", "http://[::1]:11434"),
            ("[::1]", "http://[::1]:11434"),
            ("fe80::1", "http://[fe80::1]:11434"),
            ("[fe80::1]:8080", "http://[fe80::1]:8080"),
        ] {
            assert_eq!(ollama_host(given), url, "{given}");
        }
    }

    #[test]
    fn a_malformed_endpoint_is_a_usage_error_naming_its_source() {
        let resolve = |name: &'static str, value: &'static str| {
            let env = move |n: &str| (n == name).then(|| value.to_owned());
            ModelChoice::resolve(&ModelChoice::default(), None, &env)
        };
        for (name, value) in [
            ("LOCAL_TASK_ENDPOINT", "ftp://h/v1"),
            ("OPENAI_BASE_URL", "file:///tmp/sock"),
            ("OLLAMA_HOST", "box:port"),
            ("LOCAL_TASK_ENDPOINT", "http//x"),
        ] {
            let error = resolve(name, value).unwrap_err();
            assert_eq!(error.kind(), "usage", "{name}={value}");
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("{name} is `{value}`")),
                "{error}"
            );
        }
        let flags = ModelChoice {
            endpoint: Some("http://".to_owned()),
            ..ModelChoice::default()
        };
        let error = ModelChoice::resolve(&flags, None, &|_: &str| None).unwrap_err();
        assert!(
            error.to_string().starts_with("--endpoint is `http://`"),
            "{error}"
        );
    }

    #[test]
    fn ollama_host_follows_the_provider() {
        let env = |name: &str| (name == "OLLAMA_HOST").then(|| "box:11434".to_owned());
        let with = |provider: Option<&str>| {
            let flags = ModelChoice {
                provider: provider.map(str::to_owned),
                ..ModelChoice::default()
            };
            ModelChoice::resolve(&flags, None, &env).unwrap().endpoint
        };
        assert_eq!(with(None).as_deref(), Some("http://box:11434"));
        assert_eq!(with(Some("ollama")).as_deref(), Some("http://box:11434"));
        assert_eq!(with(Some("openai")).as_deref(), Some("http://box:11434/v1"));
    }

    #[test]
    fn a_provider_typo_is_a_usage_error_naming_its_source() {
        let env = |name: &str| (name == "LOCAL_TASK_PROVIDER").then(|| "olama".to_owned());
        let error = ModelChoice::resolve(&ModelChoice::default(), None, &env).unwrap_err();
        assert_eq!(error.kind(), "usage");
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("LOCAL_TASK_PROVIDER is `olama`"));

        // The flag wins over the variable, so a good flag hides a bad variable.
        let flags = ModelChoice {
            provider: Some("ollama".to_owned()),
            ..ModelChoice::default()
        };
        let choice = ModelChoice::resolve(&flags, None, &env).unwrap();
        assert_eq!(choice.provider.as_deref(), Some("ollama"));
    }

    #[test]
    fn openai_api_key_follows_only_openai_base_url() {
        let resolve = |vars: &'static [(&'static str, &'static str)]| {
            let env = move |name: &str| {
                vars.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
            };
            let choice = ModelChoice::resolve(&ModelChoice::default(), None, &env).unwrap();
            (choice.api_key, choice.api_key_source)
        };
        let key = |k: &str, s: &str| (Some(k.to_owned()), Some(s.to_owned()));
        assert_eq!(resolve(&[("OPENAI_API_KEY", "sk")]), (None, None));
        assert_eq!(
            resolve(&[("OPENAI_API_KEY", "sk"), ("OLLAMA_HOST", "box")]),
            (None, None)
        );
        assert_eq!(
            resolve(&[("OPENAI_API_KEY", "sk"), ("LOCAL_TASK_ENDPOINT", "h:1")]),
            (None, None)
        );
        assert_eq!(
            resolve(&[
                ("OPENAI_API_KEY", "sk"),
                ("OPENAI_BASE_URL", "https://h/v1")
            ]),
            key("sk", "OPENAI_API_KEY")
        );
        // LOCAL_TASK_ENDPOINT wins over OPENAI_BASE_URL, and so the key stays home.
        assert_eq!(
            resolve(&[
                ("OPENAI_API_KEY", "sk"),
                ("OPENAI_BASE_URL", "https://h/v1"),
                ("LOCAL_TASK_ENDPOINT", "h:1")
            ]),
            (None, None)
        );
        assert_eq!(
            resolve(&[("LOCAL_TASK_API_KEY", "lk"), ("OLLAMA_HOST", "box")]),
            key("lk", "LOCAL_TASK_API_KEY")
        );
    }

    #[test]
    fn dry_run_shows_one_request_only_when_nothing_would_be_probed() {
        let request = ChatRequest {
            model: "m".to_owned(),
            messages: vec![crate::model::Message::user("hi")],
            temperature: 0.2,
            max_tokens: None,
            schema: None,
        };
        let with = |endpoint: Option<&str>, provider: Option<&str>| {
            let choice = ModelChoice {
                endpoint: endpoint.map(str::to_owned),
                provider: provider.map(str::to_owned),
                ports: vec![(11434, "Ollama".to_owned())],
                ..ModelChoice::default()
            };
            dry_run(&choice, &request)
        };
        let bare = with(Some("h:1"), None);
        assert_eq!(bare["provider"], "auto (not probed)");
        assert_eq!(bare["endpoint"], "http://h:1");
        assert_eq!(bare["requests"]["ollama"]["url"], "http://h:1/api/chat");
        assert_eq!(
            bare["requests"]["openai"]["url"],
            "http://h:1/v1/chat/completions"
        );

        let path = with(Some("h:1/v1"), None);
        assert_eq!(path["provider"], "openai");
        assert_eq!(path["url"], "http://h:1/v1/chat/completions");

        let native = with(Some("h:1/v1"), Some("ollama"));
        assert_eq!(native["provider"], "ollama");
        assert_eq!(native["url"], "http://h:1/api/chat");
        assert!(native["request"]["options"]["num_ctx"].is_u64());

        let discovered = with(None, Some("openai"));
        assert_eq!(discovered["provider"], "openai");
        assert!(discovered["url"].is_null());
        assert!(
            discovered["note"]
                .as_str()
                .is_some_and(|note| note.contains("11434 (Ollama)"))
        );
    }

    #[test]
    fn precedence_flag_spec_env_ecosystem() {
        let env = |name: &str| match name {
            "LOCAL_TASK_MODEL" => Some("env-model".to_owned()),
            "OLLAMA_HOST" => Some("0.0.0.0:11434".to_owned()),
            _ => None,
        };
        let choice =
            ModelChoice::resolve(&ModelChoice::default(), Some("spec-model"), &env).unwrap();
        assert_eq!(choice.model.as_deref(), Some("spec-model"));
        assert_eq!(choice.endpoint.as_deref(), Some("http://127.0.0.1:11434"));

        let flags = ModelChoice {
            model: Some("flag-model".to_owned()),
            endpoint: Some("http://x:1".to_owned()),
            ..ModelChoice::default()
        };
        let choice = ModelChoice::resolve(&flags, Some("spec-model"), &env).unwrap();
        assert_eq!(choice.model.as_deref(), Some("flag-model"));
        assert_eq!(choice.endpoint.as_deref(), Some("http://x:1"));

        let choice = ModelChoice::resolve(&ModelChoice::default(), None, &env).unwrap();
        assert_eq!(choice.model.as_deref(), Some("env-model"));
    }
}

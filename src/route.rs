//! Decides which server, protocol and model a run uses.
//!
//! Precedence: command-line flag > spec > `LOCAL_TASK_*` > the ecosystem's own variables
//! (`OPENAI_BASE_URL`, `OLLAMA_HOST`) > discovery of the usual local ports.

use std::time::Duration;

use crate::model::openai::OpenAi;
use crate::model::{Client, Limits, ModelError, ModelErrorKind};

/// The usual local ports, in the order discovery prefers them.
pub const LOCAL_PORTS: &[(u16, &str)] = &[
    (11434, "Ollama"),
    (1234, "LM Studio"),
    (8080, "llama.cpp server"),
    (8000, "vLLM"),
];

/// What the user asked for, before anything is probed.
#[derive(Debug, Clone, Default)]
pub struct ModelChoice {
    pub endpoint: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub api_key: Option<String>,
}

impl ModelChoice {
    /// Merges flags, the spec's model, and the environment in precedence order.
    pub fn resolve(
        flags: &ModelChoice,
        spec_model: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Self {
        let env = |name: &str| env(name).filter(|value| !value.trim().is_empty());
        let provider = flags
            .provider
            .clone()
            .or_else(|| env("LOCAL_TASK_PROVIDER"))
            .filter(|p| p != "auto");
        let endpoint = flags
            .endpoint
            .clone()
            .or_else(|| env("LOCAL_TASK_ENDPOINT"))
            .or_else(|| {
                if provider.as_deref() == Some("ollama") {
                    env("OLLAMA_HOST").or_else(|| env("OPENAI_BASE_URL"))
                } else {
                    env("OPENAI_BASE_URL")
                        .or_else(|| env("OLLAMA_HOST").map(|host| ollama_openai_base(&host)))
                }
            });
        Self {
            endpoint,
            provider,
            model: flags
                .model
                .clone()
                .or_else(|| spec_model.map(str::to_owned))
                .or_else(|| env("LOCAL_TASK_MODEL")),
            api_key: flags
                .api_key
                .clone()
                .or_else(|| env("LOCAL_TASK_API_KEY"))
                .or_else(|| env("OPENAI_API_KEY")),
        }
    }
}

/// `OLLAMA_HOST` may be `host:port` without a scheme; its OpenAI-compatible API is `/v1`.
fn ollama_openai_base(host: &str) -> String {
    let url = with_scheme(host);
    format!("{}/v1", url.trim_end_matches('/'))
}

fn with_scheme(url: &str) -> String {
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

/// The API root of an OpenAI-compatible server: a bare `http://host:port` gets `/v1`.
pub fn openai_base(endpoint: &str) -> String {
    let url = with_scheme(endpoint.trim());
    let url = url.trim_end_matches('/');
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let url = url.trim_end_matches("/chat/completions");
    if after_scheme.contains('/') {
        url.to_owned()
    } else {
        format!("{url}/v1")
    }
}

/// A resolved model: the client to call and the model name.
pub struct Route {
    pub client: Client,
    pub model: String,
}

/// Connects to the chosen server (discovering one when none was named) and settles the
/// model name (the server's only model when none was named).
pub async fn connect(choice: &ModelChoice, limits: Limits) -> Result<Route, ModelError> {
    if let Some(provider) = choice.provider.as_deref()
        && provider != "openai"
    {
        return Err(ModelError::new(
            ModelErrorKind::NoServer,
            format!("unknown provider `{provider}`"),
        )
        .with_hint("use --provider auto or openai"));
    }
    let base = match &choice.endpoint {
        Some(endpoint) => openai_base(endpoint),
        None => discover().await.ok_or_else(|| {
            ModelError::new(
                ModelErrorKind::NoServer,
                format!(
                    "no model server given and none answers on the usual local ports ({})",
                    LOCAL_PORTS
                        .iter()
                        .map(|(port, name)| format!("{name} {port}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .with_hint("start Ollama or LM Studio's server, or pass --endpoint URL (or set LOCAL_TASK_ENDPOINT)")
        })?,
    };
    let client = OpenAi::new(&base, choice.api_key.clone(), limits)?;
    let model = match &choice.model {
        Some(model) => model.clone(),
        None => only_model(&base, client.list_models().await?)?,
    };
    Ok(Route {
        client: Client::OpenAi(client),
        model,
    })
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
                "{base} offers {} models and none was chosen: {}",
                models.len(),
                models.join(", ")
            ),
        )
        .with_hint("choose one with --model NAME, the spec's \"model\" field, or LOCAL_TASK_MODEL")),
    }
}

/// The first usual local port whose server answers `GET /v1/models`, probed all at once
/// with short timeouts.
async fn discover() -> Option<String> {
    let probes = LOCAL_PORTS.iter().map(|(port, _)| async move {
        let base = format!("http://127.0.0.1:{port}/v1");
        let client = OpenAi::new(
            &base,
            None,
            Limits {
                connect: Duration::from_millis(300),
                first_byte: Duration::from_millis(1500),
                ..Limits::default()
            },
        )
        .ok()?;
        client.list_models().await.ok().map(|_| base)
    });
    futures_util::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .next()
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
    fn precedence_flag_spec_env_ecosystem() {
        let env = |name: &str| match name {
            "LOCAL_TASK_MODEL" => Some("env-model".to_owned()),
            "OLLAMA_HOST" => Some("0.0.0.0:11434".to_owned()),
            _ => None,
        };
        let choice = ModelChoice::resolve(&ModelChoice::default(), Some("spec-model"), &env);
        assert_eq!(choice.model.as_deref(), Some("spec-model"));
        assert_eq!(choice.endpoint.as_deref(), Some("http://0.0.0.0:11434/v1"));

        let flags = ModelChoice {
            model: Some("flag-model".to_owned()),
            endpoint: Some("http://x:1".to_owned()),
            ..ModelChoice::default()
        };
        let choice = ModelChoice::resolve(&flags, Some("spec-model"), &env);
        assert_eq!(choice.model.as_deref(), Some("flag-model"));
        assert_eq!(choice.endpoint.as_deref(), Some("http://x:1"));

        let choice = ModelChoice::resolve(&ModelChoice::default(), None, &env);
        assert_eq!(choice.model.as_deref(), Some("env-model"));
    }
}

/// One server `models` looked at.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ServerReport {
    pub endpoint: String,
    /// What usually listens there, e.g. "LM Studio".
    pub kind: String,
    pub reachable: bool,
    pub models: Vec<String>,
    pub error: Option<String>,
}

/// Probes `endpoint`, or every usual local port at once, with short timeouts.
pub async fn survey(endpoint: Option<&str>, api_key: Option<String>) -> Vec<ServerReport> {
    let targets: Vec<(String, String)> = match endpoint {
        Some(endpoint) => vec![(openai_base(endpoint), "OpenAI-compatible".to_owned())],
        None => LOCAL_PORTS
            .iter()
            .map(|(port, name)| (format!("http://127.0.0.1:{port}/v1"), (*name).to_owned()))
            .collect(),
    };
    let limits = Limits {
        connect: Duration::from_millis(500),
        first_byte: Duration::from_millis(1500),
        ..Limits::default()
    };
    let probes = targets.into_iter().map(|(base, kind)| {
        let api_key = api_key.clone();
        async move {
            let listed = match OpenAi::new(&base, api_key, limits) {
                Ok(client) => client.list_models().await,
                Err(error) => Err(error),
            };
            match listed {
                Ok(models) => ServerReport {
                    endpoint: base,
                    kind,
                    reachable: true,
                    models,
                    error: None,
                },
                Err(error) => ServerReport {
                    endpoint: base,
                    kind,
                    reachable: false,
                    models: Vec::new(),
                    error: Some(error.to_string()),
                },
            }
        }
    });
    futures_util::future::join_all(probes).await
}

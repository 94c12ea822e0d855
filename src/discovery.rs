//! Finding local model servers: the usual local ports, probing an address for the protocol
//! it speaks, discovery of the first server that answers, and the survey `models` prints.

use std::time::Duration;

use crate::model::ollama::Ollama;
use crate::model::openai::OpenAi;
use crate::model::{Backend, Limits, ModelError, ModelErrorKind, Provider};
use crate::server::{is_bare, ollama_base, openai_base, with_scheme};

/// The usual local ports, in the order discovery prefers them.
pub const LOCAL_PORTS: &[(u16, &str)] = &[
    (11434, "Ollama"),
    (1234, "LM Studio"),
    (8080, "llama.cpp server"),
    (9931, "llama.cpp server"),
    (8000, "vLLM"),
];

/// Replaces [`LOCAL_PORTS`] for discovery (comma-separated ports). Undocumented for users:
/// it exists so tests can point discovery at ports they own.
pub const PORTS_VARIABLE: &str = "LOCAL_TASK_DISCOVERY_PORTS";

/// The ports to probe: the override's (labelled from [`LOCAL_PORTS`] when known) or the
/// usual ones.
pub fn discovery_ports(over: Option<&str>) -> Vec<(u16, String)> {
    let label = |port: u16| {
        LOCAL_PORTS
            .iter()
            .find(|(p, _)| *p == port)
            .map_or("unknown", |(_, name)| name)
            .to_owned()
    };
    match over {
        Some(list) => list
            .split(',')
            .filter_map(|port| port.trim().parse::<u16>().ok())
            .map(|port| (port, label(port)))
            .collect(),
        None => LOCAL_PORTS
            .iter()
            .map(|(port, name)| (*port, (*name).to_owned()))
            .collect(),
    }
}

/// What answered at one address.
pub(crate) struct Found {
    pub(crate) provider: Provider,
    /// The API root the client uses.
    pub(crate) base: String,
    /// An Ollama server may answer `/api/version` and still fail to list its models.
    pub(crate) models: Result<Vec<String>, ModelError>,
    version: Option<String>,
}

impl Found {
    pub(crate) fn backend(
        &self,
        api_key: Option<String>,
        limits: Limits,
    ) -> Result<Backend, ModelError> {
        Ok(match self.provider {
            Provider::Ollama => Backend::Ollama(Ollama::new(&self.base, limits)?),
            _ => Backend::OpenAi(OpenAi::new(&self.base, api_key, limits)?),
        })
    }
}

/// Short limits for probing: a local server answers these at once or not at all.
pub(crate) fn probe_limits(limits: Limits) -> Limits {
    Limits {
        connect: limits.connect.min(Duration::from_millis(500)),
        first_byte: limits.first_byte.min(Duration::from_millis(1200)),
        idle: limits.idle.min(Duration::from_millis(1200)),
        ..limits
    }
}

/// Asks `root` (`http://host:port`) whether it is Ollama (`/api/version`) or
/// OpenAI-compatible (`/v1/models`), both at once; `only` restricts to one protocol.
async fn probe_as(
    root: &str,
    api_key: Option<String>,
    limits: Limits,
    only: Option<&str>,
) -> Result<Found, ModelError> {
    let ollama = async {
        if only == Some("openai") {
            return None;
        }
        let client = Ollama::new(root, limits).ok()?;
        let version = client.version().await.ok()?;
        Some((client.list_models().await, version))
    };
    let openai_base = format!("{root}/v1");
    let openai = async {
        if only == Some("ollama") {
            return Err(ModelError::new(
                ModelErrorKind::NoServer,
                format!("{}: not an Ollama server", crate::endpoint::redact(root)),
            ));
        }
        OpenAi::new(&openai_base, api_key, limits)?
            .list_models()
            .await
    };
    let (ollama, openai) = futures_util::future::join(ollama, openai).await;
    if let Some((models, version)) = ollama {
        return Ok(Found {
            provider: Provider::Ollama,
            base: root.to_owned(),
            models,
            version: Some(version),
        });
    }
    Ok(Found {
        provider: Provider::OpenAi,
        base: openai_base,
        models: Ok(openai?),
        version: None,
    })
}

pub(crate) async fn probe(
    root: &str,
    api_key: Option<String>,
    limits: Limits,
) -> Result<Found, ModelError> {
    probe_as(root, api_key, limits, None).await
}

/// The first port, in preference order, with a server that answers; all probed at once.
pub(crate) async fn discover(
    ports: &[(u16, String)],
    api_key: Option<String>,
    only: Option<&str>,
) -> Option<Found> {
    let limits = probe_limits(Limits::default());
    let probes = ports.iter().map(|(port, _)| {
        let api_key = api_key.clone();
        async move {
            probe_as(&format!("http://127.0.0.1:{port}"), api_key, limits, only)
                .await
                .ok()
        }
    });
    futures_util::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .next()
}

/// One server `models` looked at.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ServerReport {
    pub endpoint: String,
    /// The server: "Ollama" when it answered as one, else what usually listens on that
    /// port (e.g. "LM Studio"), or "OpenAI-compatible" for a named endpoint.
    pub kind: String,
    /// The protocol the tool speaks to it (`ollama` or `openai`); null when unreachable.
    pub provider: Option<String>,
    /// The server's version, when it tells (Ollama does).
    pub version: Option<String>,
    pub reachable: bool,
    pub models: Vec<String>,
    pub error: Option<String>,
    /// How long the probe took.
    pub probe_ms: u64,
}

/// Probes `endpoint`, or every discovery port at once, with short timeouts.
pub async fn survey(
    endpoint: Option<&str>,
    provider: Option<&str>,
    api_key: Option<String>,
    ports: &[(u16, String)],
) -> Vec<ServerReport> {
    let targets: Vec<(String, String)> = match endpoint {
        Some(endpoint) => vec![(endpoint.to_owned(), "OpenAI-compatible".to_owned())],
        None => ports
            .iter()
            .map(|(port, name)| (format!("http://127.0.0.1:{port}"), name.clone()))
            .collect(),
    };
    let limits = probe_limits(Limits::default());
    let provider = provider.filter(|p| *p != "auto");
    let probes = targets.into_iter().map(|(target, kind)| {
        let api_key = api_key.clone();
        async move {
            let started = std::time::Instant::now();
            let found = if provider == Some("openai") || (provider.is_none() && !is_bare(&target)) {
                let base = openai_base(&target);
                match OpenAi::new(&base, api_key, limits) {
                    Ok(client) => client.list_models().await.map(|models| Found {
                        provider: Provider::OpenAi,
                        base,
                        models: Ok(models),
                        version: None,
                    }),
                    Err(error) => Err(error),
                }
            } else {
                let root = if provider == Some("ollama") {
                    ollama_base(&target)
                } else {
                    with_scheme(target.trim()).trim_end_matches('/').to_owned()
                };
                probe_as(&root, api_key, limits, provider).await
            };
            let probe_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            match found {
                // Shown with its secrets masked, like every printed endpoint.
                Ok(found) => ServerReport {
                    endpoint: crate::endpoint::redact(&found.base),
                    kind: if found.provider == Provider::Ollama {
                        "Ollama".to_owned()
                    } else {
                        kind
                    },
                    provider: Some(found.provider.as_str().to_owned()),
                    version: found.version,
                    reachable: true,
                    error: found
                        .models
                        .as_ref()
                        .err()
                        .map(|e| format!("{}: {}", e.kind.as_str(), e.message)),
                    models: found.models.unwrap_or_default(),
                    probe_ms,
                },
                Err(error) => ServerReport {
                    endpoint: crate::endpoint::redact(&target),
                    kind,
                    provider: None,
                    version: None,
                    reachable: false,
                    models: Vec::new(),
                    error: Some(format!("{}: {}", error.kind.as_str(), error.message)),
                    probe_ms,
                },
            }
        }
    });
    futures_util::future::join_all(probes).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_ports_can_be_overridden() {
        assert_eq!(discovery_ports(None).len(), LOCAL_PORTS.len());
        assert_eq!(
            discovery_ports(Some("1234, 7, x")),
            [(1234, "LM Studio".to_owned()), (7, "unknown".to_owned())]
        );
    }
}

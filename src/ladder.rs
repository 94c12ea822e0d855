//! Which server answers a task's next model call: the one mechanism the attempt loop asks,
//! handling fallback (a profile's server fails: the next of its `fallback`) and escalation
//! (a profile's attempts fail: its `escalate_to`), and bounding the model calls of a task
//! (`routing.max_calls`).
//!
//! A run without a routed profile (no profiles configured, or a run pinned by the command
//! line) has one rung and connects exactly as it always did: its errors end the run. With
//! a profile, a server that cannot be reached, or keeps failing after the client's retries,
//! is put on the shared cool-down ([`crate::cooldown`]) and the next profile of its
//! `fallback` list is tried; what happened goes into the next attempt's notes.

use std::sync::Arc;

use crate::config::Config;
use crate::cooldown::Cooldowns;
use crate::endpoint;
use crate::error::Error;
use crate::model::{ModelError, ModelErrorKind};
use crate::options::RunOptions;
use crate::pipeline::{Env, Progress};
use crate::prepare::Prepared;
use crate::result::ModelInfo;
use crate::route;
use crate::server::{self, Connected, ModelChoice};

/// The server a task asks now, and how it climbs or falls back.
pub struct Ladder {
    rung: Rung,
    /// Boxed: the run's future carries the ladder and must stay small.
    profiles: Box<Profiles>,
    calls: u32,
    max_calls: u32,
    /// The profile the task climbed from, once it has.
    climbed_from: Option<String>,
}

/// What connecting a profile needs, and what it leaves for the next attempt to say.
struct Profiles {
    config: Arc<Config>,
    flags: ModelChoice,
    base: ModelChoice,
    env: Env,
    options: RunOptions,
    cooldowns: Cooldowns,
    /// Profiles this task has used or passed over: no fallback returns to one.
    tried: Vec<String>,
    /// What the next attempt should say (a fallback, a climb).
    notes: Vec<String>,
    /// Each profile whose server failed this task, with its server and error: what the
    /// run's error names when no server is left, so the user sees every one, not the last.
    failures: Vec<String>,
}

/// One profile's connected server and its sampling.
struct Rung {
    profile: Option<String>,
    /// The profile whose fallback list this rung came from (itself, mostly): a failing
    /// server hands on to the next of that list.
    head: Option<String>,
    server: Connected,
    temperature: f64,
    max_tokens: Option<u32>,
}

impl Rung {
    /// A server without a profile: the run's own sampling.
    fn plain(server: Connected, options: &RunOptions) -> Self {
        Self {
            profile: None,
            head: None,
            server,
            temperature: options.temperature,
            max_tokens: options.max_tokens,
        }
    }
}

/// Whether a model error is the server's fault (cool it down), the model's absence (try
/// another profile, the server is fine), or neither (the run ends as it always did).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Server,
    Model,
    Other,
}

fn fault(kind: ModelErrorKind) -> Fault {
    use ModelErrorKind as K;
    match kind {
        K::NoServer
        | K::ConnectionRefused
        | K::ConnectionReset
        | K::Dns
        | K::ConnectTimeout
        | K::FirstByteTimeout
        | K::IdleTimeout
        | K::TotalTimeout
        | K::RateLimited
        | K::Unavailable
        | K::HttpServerError
        | K::StreamCut => Fault::Server,
        K::NoModel | K::ModelNotFound | K::ModelNotLoaded => Fault::Model,
        _ => Fault::Other,
    }
}

impl Ladder {
    /// Connects the task's first rung: `server` when the caller gives one, else the routed
    /// profile's server (or its fallbacks'), else the run's own choice.
    pub async fn start(
        prepared: &Prepared,
        options: &RunOptions,
        server: Option<Connected>,
        env: &Env,
        progress: Progress<'_>,
    ) -> Result<Self, Error> {
        let profile = prepared
            .route
            .as_ref()
            .and_then(|route| route.profile.clone());
        let mut profiles = Profiles {
            config: Arc::new(prepared.config.clone()),
            flags: options.model_flags.clone(),
            base: prepared.base_choice.clone(),
            env: Arc::clone(env),
            options: options.clone(),
            cooldowns: prepared.cooldowns.clone(),
            tried: Vec::new(),
            notes: Vec::new(),
            failures: Vec::new(),
        };
        let rung = match (server, profile) {
            (Some(server), _) => Rung::plain(server, options),
            (None, None) => {
                progress("connecting to the model server");
                let server = options
                    .cancel
                    .or_cancel(server::connect(
                        &prepared.choice,
                        options.limits,
                        &options.connection,
                    ))
                    .await??;
                Rung::plain(server, options)
            }
            (None, Some(name)) => match profiles.connect_from(&name, progress).await {
                Ok(rung) => rung,
                Err(error) => return Err(profiles.explain(error)),
            },
        };
        Ok(Self {
            rung,
            profiles: Box::new(profiles),
            calls: 0,
            max_calls: prepared.config.routing.max_calls.value,
            climbed_from: None,
        })
    }

    /// The connected server the next call goes to.
    pub fn server(&self) -> &Connected {
        &self.rung.server
    }

    /// The profile the next call is made with (`None` without profiles).
    pub fn profile(&self) -> Option<&str> {
        self.rung.profile.as_deref()
    }

    /// The temperature and reply cap of the next call.
    pub fn sampling(&self) -> (f64, Option<u32>) {
        (self.rung.temperature, self.rung.max_tokens)
    }

    /// The model the result names now.
    pub fn model_info(&self) -> ModelInfo {
        let server = &self.rung.server;
        ModelInfo {
            provider: server.client.provider().as_str().to_owned(),
            endpoint: server.client.endpoint(),
            name: server.model.clone(),
        }
    }

    /// The notes the next attempt carries (how its server was reached), once.
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.profiles.notes)
    }

    /// Counts one model call, or says why none may be made: the task used its
    /// `routing.max_calls`.
    pub fn call(&mut self) -> Result<(), String> {
        if self.calls >= self.max_calls {
            return Err(format!(
                "the task made its {} model calls (routing.max_calls)",
                self.max_calls
            ));
        }
        self.calls += 1;
        Ok(())
    }

    /// After a failed model call: when the current profile's server is at fault (or lacks
    /// the model) and a fallback is left, moves to it and says so; `Ok(false)` when the run
    /// should end with `error` as it always did. A signal meanwhile is the outer error: an
    /// interrupted run, not the server's failure.
    pub async fn fall_back(
        &mut self,
        error: &Error,
        progress: Progress<'_>,
    ) -> Result<bool, Error> {
        let (Error::Model(model_error), Some(name)) = (error, self.rung.profile.clone()) else {
            return Ok(false);
        };
        if fault(model_error.kind) == Fault::Other {
            return Ok(false);
        }
        self.profiles.failed(&name, model_error);
        let head = self.rung.head.clone().unwrap_or_else(|| name.clone());
        if self.profiles.chain(&head).is_empty() {
            return Ok(false);
        }
        self.profiles.stall("fall_back").await;
        match self.profiles.connect_from(&head, progress).await {
            Ok(rung) => {
                self.profiles.notes.insert(
                    0,
                    format!(
                        "profile `{name}` failed ({}); fell back to profile `{}`",
                        one_line(&model_error.message),
                        rung.profile.as_deref().unwrap_or_default()
                    ),
                );
                self.rung = rung;
                Ok(true)
            }
            Err(error @ Error::Interrupted(_)) => Err(error),
            Err(_) => Ok(false),
        }
    }

    /// The error a run ends with when no fallback is left: a server's fault names every
    /// profile that failed this task and its server, not only the last.
    pub fn explain(&self, error: Error) -> Error {
        self.profiles.explain(error)
    }

    /// After a failed call that [`Ladder::fall_back`] could not hand on: on a rung the task
    /// climbed to, a server fault ends the ladder rather than the run (the task goes back
    /// to the supervisor as `escalate`, as its lower rung's attempts failed), and why.
    pub fn ends_climb(&self, error: &Error) -> Option<String> {
        let from = self.climbed_from.as_deref()?;
        let Error::Model(model_error) = error else {
            return None;
        };
        (fault(model_error.kind) != Fault::Other).then(|| {
            format!(
                "could not escalate from profile `{from}` to profile `{}`: {}",
                self.rung.profile.as_deref().unwrap_or_default(),
                one_line(&model_error.message)
            )
        })
    }

    /// After the current profile's attempts all failed: climbs to its `escalate_to` (or
    /// that one's fallbacks) and says so; `Ok(false)` when the ladder ends here, and why
    /// when its next rung cannot be reached. A signal meanwhile is the outer error: an
    /// interrupted run, not the ladder's end.
    pub async fn climb(
        &mut self,
        failed: u32,
        progress: Progress<'_>,
    ) -> Result<Result<bool, String>, Error> {
        let Some(from) = self.rung.profile.clone() else {
            return Ok(Ok(false));
        };
        // A fallback standing in for a profile climbs where that profile would, unless it
        // names its own `escalate_to`.
        let config = &self.profiles.config;
        let escalate_to = [Some(from.as_str()), self.rung.head.as_deref()]
            .into_iter()
            .flatten()
            .find_map(|name| config.profile(name).and_then(|p| p.escalate_to.as_ref()));
        let Some(next) = escalate_to.map(|e| e.value.clone()) else {
            return Ok(Ok(false));
        };
        let model = self.rung.server.model.clone();
        self.profiles.stall("climb").await;
        match self.profiles.connect_from(&next, progress).await {
            Ok(rung) => {
                let note = format!(
                    "escalated from profile `{from}` ({model}) after {failed} failed attempt(s) to profile `{}` ({})",
                    rung.profile.as_deref().unwrap_or(&next),
                    rung.server.model
                );
                progress(&note);
                self.profiles.notes.insert(0, note);
                self.rung = rung;
                self.climbed_from = Some(from);
                Ok(Ok(true))
            }
            Err(error @ Error::Interrupted(_)) => Err(error),
            Err(error) => {
                let why = format!(
                    "could not escalate from profile `{from}` to profile `{next}`: {}",
                    one_line(&error.to_string())
                );
                progress(&why);
                Ok(Err(why))
            }
        }
    }
}

impl Profiles {
    /// The debug-only test hook ([`crate::cancel::stall_point`]) before connecting a new
    /// rung. It blocks, so it runs off the async threads: the signal must still arrive.
    async fn stall(&self, phase: &'static str) {
        #[cfg(debug_assertions)]
        {
            let cancel = self.options.cancel.clone();
            let stall = move || crate::cancel::stall_point(phase, Some(&cancel));
            let _ = tokio::task::spawn_blocking(stall).await;
        }
        #[cfg(not(debug_assertions))]
        let _ = phase;
    }

    /// Records that profile `name`'s server failed: on cool-down when the server is at fault.
    fn failed(&mut self, name: &str, error: &ModelError) {
        self.failures
            .push(format!("profile `{name}`: {}", one_line(&error.message)));
        if fault(error.kind) != Fault::Server {
            return;
        }
        if let Some(endpoint) = self
            .config
            .profile(name)
            .and_then(|p| p.endpoints.as_ref())
            .and_then(|e| e.value.first())
        {
            self.cooldowns.mark(endpoint, error.kind.as_str());
        }
    }

    /// `error` naming every profile that failed this task, when more than its own message
    /// is known; its kind (and so the exit code) and hint stay.
    fn explain(&self, error: Error) -> Error {
        match error {
            Error::Model(mut model_error)
                if fault(model_error.kind) != Fault::Other && !self.failures.is_empty() =>
            {
                model_error.message = format!(
                    "no server of the profiles tried could be used: {}",
                    self.failures.join("; ")
                );
                Error::Model(model_error)
            }
            other => other,
        }
    }

    /// Profile `name` and its fallback list, in order, less those this task has tried.
    fn chain(&self, name: &str) -> Vec<String> {
        let fallback = self.config.profile(name).and_then(|p| p.fallback.as_ref());
        std::iter::once(name.to_owned())
            .chain(
                fallback
                    .into_iter()
                    .flat_map(|list| list.value.iter().cloned()),
            )
            .filter(|n| !self.tried.contains(n))
            .collect()
    }

    /// Connects the first of [`Profiles::chain`] that can be used: profile `name`, else its
    /// fallbacks in order; one whose server cools down is passed over at once, and one that
    /// cannot be reached is cooled. Each passing is a note for the next attempt.
    async fn connect_from(&mut self, name: &str, progress: Progress<'_>) -> Result<Rung, Error> {
        let mut last: Option<Error> = None;
        let mut cooled = Vec::new();
        for current in self.chain(name) {
            self.tried.push(current.clone());
            let Some(profile) = self.config.profile(&current).cloned() else {
                continue;
            };
            if let Some(why) = route::cooling(&profile, &self.cooldowns) {
                let passed = format!("profile `{current}` passed over: {why}");
                self.notes.push(passed.clone());
                cooled.push(passed);
                continue;
            }
            match self.connect_one(&profile, progress).await? {
                Ok(server) => {
                    let (temperature, max_tokens) = route::sampling(Some(&profile), &self.options);
                    return Ok(Rung {
                        profile: Some(current),
                        head: Some(name.to_owned()),
                        server,
                        temperature,
                        max_tokens,
                    });
                }
                Err(error) if fault(error.kind) != Fault::Other => {
                    self.failed(&current, &error);
                    self.notes.push(format!(
                        "profile `{current}` could not be used ({})",
                        one_line(&error.message)
                    ));
                    last = Some(Error::Model(error));
                }
                Err(error) => return Err(Error::Model(error)),
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::Model(
                ModelError::new(
                    ModelErrorKind::NoServer,
                    if cooled.is_empty() {
                        format!("no profile left to try for `{name}`")
                    } else {
                        format!("no server to ask: {}", cooled.join("; "))
                    },
                )
                .with_hint("the cool-down ends by itself; `routing.cooldown_secs = 0` in the config turns it off"),
            )
        }))
    }

    /// Connects `profile`'s server (an interruption is the outer error).
    async fn connect_one(
        &self,
        profile: &crate::profile::Profile,
        progress: Progress<'_>,
    ) -> Result<Result<Connected, ModelError>, Error> {
        let choice = route::choice(profile, &self.flags, &self.base, &*self.env);
        progress(&format!(
            "connecting to profile `{}` at {}",
            profile.name,
            choice
                .endpoint
                .as_deref()
                .map_or_else(|| "a discovered server".to_owned(), endpoint::redact)
        ));
        self.options
            .cancel
            .or_cancel(server::connect(
                &choice,
                self.options.limits,
                &self.options.connection,
            ))
            .await
    }
}

fn one_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_owned()
}

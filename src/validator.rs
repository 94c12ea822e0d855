//! The validator checkpoint: a second local model (a profile with `role = "validator"`)
//! reviews each attempt's extracted code against the task's description and constraints
//! before it is written, and answers `{"pass": bool, "issues": [...], "confidence": 0..1}`
//! in the server's structured-output mode.
//!
//! What it guarantees: the review runs after the guards and before `write_and_test`, so
//! its model call never holds the repository lock (other runs keep writing meanwhile) and
//! rejected code is never written; a rejection's issues are the next attempt's repair
//! input; the verdict and its tokens are on the attempt. A malformed verdict is asked for
//! once more; a second one lets the attempt go on unvalidated, with a note, because the
//! writer cannot fix a reviewer that cannot answer — the tests still judge the code.
//!
//! Its honest limit: a reviewer is a model, so a passing verdict is advice, not proof,
//! and a rejection can be wrong (the writer then spends an attempt on it).

use std::time::Instant;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::OnceCell;

use crate::config::Config;
use crate::defaults;
use crate::error::{Error, Result};
use crate::extract;
use crate::model::{ChatReply, ChatRequest, Finish, Message, ReplySchema};
use crate::options::RunOptions;
use crate::pipeline::Progress;
use crate::prepare::Prepared;
use crate::prompt::{self, OutputView};
use crate::reply::{Failure, one_line};
use crate::result::{Outcome, Usage};
use crate::server::{self, Connected, Connection, ModelChoice};
use crate::targets::{before_of, fence_language};

/// The most issues a verdict carries: the repair prompt of a small model has room for a
/// few concrete problems, not a review.
pub const MAX_ISSUES: usize = 3;

/// A run's validator, resolved before any model call; its server is connected at the
/// first review and kept for the run's later attempts.
pub struct Plan {
    pub profile: String,
    /// Why this profile reviews: `--validate`, or the writer profile's `validator` key.
    pub reason: String,
    choice: ModelChoice,
    temperature: f64,
    max_tokens: Option<u32>,
    min_confidence: f64,
    server: OnceCell<Connected>,
}

/// The validator's verdict on one attempt, as the result reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidatorReport {
    /// The validator profile.
    pub profile: String,
    /// The model that reviewed.
    pub model: String,
    /// The verdict; null when the validator gave no usable one (two malformed answers)
    /// and the attempt went on unvalidated.
    pub pass: Option<bool>,
    /// At most three problems, the next attempt's repair input when the code was rejected.
    pub issues: Vec<String>,
    /// The validator's confidence in its verdict, 0 to 1; null with `pass`.
    pub confidence: Option<f64>,
    /// True when the verdict failed the attempt: `pass` false, or `confidence` under
    /// `validator.min_confidence`.
    pub rejected: bool,
    /// The validator's tokens (both calls when the first verdict was malformed).
    pub usage: Usage,
    /// Wall time of the validator's calls in milliseconds.
    pub model_ms: u64,
    /// What to know about the verdict: a malformed answer asked for again, issues beyond
    /// the first three dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// What the checkpoint decided about an attempt's code.
pub(crate) enum Review {
    /// Write and test it; with the report when a validator reviewed it.
    Pass(Option<ValidatorReport>),
    /// Do not write it: the report, and the failure that goes back to the writer.
    Reject(Box<ValidatorReport>, Failure),
}

/// The run's validator: `--validate PROFILE`, else the `validator` of the profile routing
/// picks for the task; none with `--record` or `--replay`, whose cassettes hold the
/// writer's exchanges only (`--validate` with them is refused).
///
/// A profile the validator leaves without an endpoint reviews on the writer's server (and
/// with its API key); one with its own endpoint gets a key only as the key rule allows.
///
/// # Errors
///
/// [`Error::Usage`] when `--validate` names no configured profile, a writer profile, or
/// comes with `--record` or `--replay`.
pub fn plan(
    config: &Config,
    routed: Option<&str>,
    options: &RunOptions,
    writer: &ModelChoice,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Plan>> {
    let recorded = options.connection.record.is_some() || options.connection.replay.is_some();
    let (name, reason) = if let Some(name) = &options.validate {
        if recorded {
            return Err(Error::Usage(
                "--validate cannot be combined with --record or --replay: a cassette holds the writer's exchanges only".to_owned(),
            ));
        }
        (name.clone(), "--validate".to_owned())
    } else {
        let routed = routed.and_then(|name| config.profile(name));
        let Some((writer_profile, validator)) =
            routed.and_then(|p| p.validator.as_ref().map(|v| (p, v)))
        else {
            return Ok(None);
        };
        if recorded {
            return Ok(None);
        }
        (
            validator.value.clone(),
            format!("profiles.{}.validator", writer_profile.name),
        )
    };
    let profile = config.profile(&name).filter(|p| !p.is_writer());
    let Some(profile) = profile else {
        let validators: Vec<&str> = config
            .profiles
            .values()
            .filter(|p| !p.is_writer())
            .map(|p| p.name.as_str())
            .collect();
        let what = if config.profile(&name).is_some() {
            "is a writer profile; a validator needs `role = \"validator\"`"
        } else {
            "is not a configured profile"
        };
        return Err(Error::Usage(format!(
            "--validate: `{name}` {what}; validator profiles: {}",
            if validators.is_empty() {
                "none (see `execute-local-task config`)".to_owned()
            } else {
                validators.join(", ")
            }
        )));
    };
    let mut choice = profile.choice(env);
    if choice.endpoint.is_none() {
        // The writer's server: its endpoint, and only the key the writer may send there.
        // The validator's own key was allowed for want of an endpoint; the writer's may be
        // one only a repository named, which no key may reach.
        choice.endpoint.clone_from(&writer.endpoint);
        choice.provider = choice.provider.or_else(|| writer.provider.clone());
        choice.api_key.clone_from(&writer.api_key);
        choice.api_key_source.clone_from(&writer.api_key_source);
        choice.ports.clone_from(&writer.ports);
    }
    Ok(Some(Plan {
        profile: name,
        reason,
        choice,
        temperature: profile
            .temperature
            .as_ref()
            .map_or(defaults::VALIDATOR_TEMPERATURE, |t| t.value),
        max_tokens: profile.max_tokens.as_ref().map(|m| m.value),
        min_confidence: config.validator.min_confidence.value,
        server: OnceCell::new(),
    }))
}

/// Reviews the checked `files` of an attempt, when the run has a validator.
///
/// # Errors
///
/// A signal, or a validator server that cannot be used ([`Error::Model`], exit 3).
pub(crate) async fn review(
    prepared: &Prepared,
    options: &RunOptions,
    progress: Progress<'_>,
    files: &[(String, String)],
) -> Result<Review> {
    let Some(plan) = &prepared.validator else {
        return Ok(Review::Pass(None));
    };
    let connection = Connection {
        retry: options.connection.retry,
        ..Connection::default()
    };
    let connect = plan
        .server
        .get_or_try_init(|| server::connect(&plan.choice, options.limits, &connection));
    let server = options.cancel.or_cancel(connect).await??;
    progress(&format!(
        "validator `{}`: asking {} at {} to review the code",
        plan.profile,
        server.model,
        server.client.endpoint()
    ));
    let views = views(prepared, files);
    let mut request = ChatRequest {
        model: server.model.clone(),
        messages: vec![prepared.templates.review_message(&prepared.spec, &views)?],
        temperature: plan.temperature,
        max_tokens: plan.max_tokens,
        schema: Some(verdict_schema()),
    };
    let started = Instant::now();
    let mut usage = Usage::default();
    let mut notes = Vec::new();
    let verdict = loop {
        // A batch's gate bounds the validator's calls too, held for the call only.
        let _permit = match &options.model_gate {
            Some(pass) => Some(pass.next(&options.cancel).await?),
            None => None,
        };
        let reply = options
            .cancel
            .or_cancel(server.client.chat(&request))
            .await?
            .map_err(Error::from)?;
        usage.add(&reply.usage_for(&request));
        match parse_verdict(&reply) {
            Ok(verdict) => break Some(verdict),
            Err(why) if notes.is_empty() => {
                notes.push(format!(
                    "the first verdict was malformed ({why}); asked again"
                ));
                request.messages.push(Message::assistant(reply.content));
                request.messages.push(Message::user(format!(
                    "That answer is not a valid verdict: {why}. Answer with only the JSON object {{\"pass\": true or false, \"issues\": [at most {MAX_ISSUES} strings], \"confidence\": a number from 0 to 1}}."
                )));
            }
            Err(why) => {
                notes.push(format!(
                    "the second verdict was malformed too ({why}): the code went on unvalidated"
                ));
                break None;
            }
        }
    };
    let mut report = ValidatorReport {
        profile: plan.profile.clone(),
        model: server.model.clone(),
        pass: None,
        issues: Vec::new(),
        confidence: None,
        rejected: false,
        usage,
        model_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        notes,
    };
    let Some(mut verdict) = verdict else {
        progress(&format!("validator `{}`: no usable verdict", plan.profile));
        return Ok(Review::Pass(Some(report)));
    };
    if verdict.issues.len() > MAX_ISSUES {
        report.notes.push(format!(
            "the verdict named {} issues; only the first {MAX_ISSUES} are kept",
            verdict.issues.len()
        ));
        verdict.issues.truncate(MAX_ISSUES);
    }
    report.pass = Some(verdict.pass);
    report.confidence = Some(verdict.confidence);
    report.issues.clone_from(&verdict.issues);
    match rejection(&verdict, plan.min_confidence) {
        None => {
            progress(&format!("validator `{}`: passed", plan.profile));
            Ok(Review::Pass(Some(report)))
        }
        Some(failure) => {
            report.rejected = true;
            Ok(Review::Reject(Box::new(report), failure))
        }
    }
}

/// The files as the reviewer sees them: each in a fence of its own language.
fn views(prepared: &Prepared, files: &[(String, String)]) -> Vec<OutputView> {
    files
        .iter()
        .map(|(path, code)| OutputView {
            path: path.clone(),
            language: fence_language(path, &prepared.language, files.len()),
            exists: before_of(&prepared.targets, path).is_some(),
            body: code.strip_suffix('\n').unwrap_or(code).to_owned(),
            fence: prompt::fence_for(code),
        })
        .collect()
}

/// The verdict's JSON Schema, as the server constrains the reply to it.
pub fn verdict_schema() -> ReplySchema {
    ReplySchema {
        name: "verdict".to_owned(),
        schema: json!({
            "type": "object",
            "properties": {
                "pass": {"type": "boolean"},
                "issues": {"type": "array", "items": {"type": "string"}, "maxItems": MAX_ISSUES},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            },
            "required": ["pass", "issues", "confidence"],
            "additionalProperties": false,
        }),
    }
}

/// A verdict as the validator gave it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Verdict {
    pass: bool,
    issues: Vec<String>,
    confidence: f64,
}

/// The verdict in a reply, or why it is malformed. Lenient about the wrapping a server
/// that only approximates the schema adds (thinking, a fence, words around the object),
/// strict about the object itself.
fn parse_verdict(reply: &ChatReply) -> std::result::Result<Verdict, String> {
    if reply.finish != Finish::Stop {
        return Err("the answer was cut off before it ended".to_owned());
    }
    let text = extract::strip_thinking(&reply.content);
    let object = match (text.find('{'), text.rfind('}')) {
        (Some(start), Some(end)) if start < end => &text[start..=end],
        _ => {
            return Err(format!(
                "no JSON object in `{}`",
                one_line(text).chars().take(80).collect::<String>()
            ));
        }
    };
    let mut verdict: Verdict = serde_json::from_str(object)
        .map_err(|error| format!("not the verdict's shape: {error}"))?;
    if !(0.0..=1.0).contains(&verdict.confidence) {
        return Err(format!(
            "confidence {} is not between 0 and 1",
            verdict.confidence
        ));
    }
    verdict.issues = verdict
        .issues
        .iter()
        .map(|issue| one_line(issue))
        .filter(|issue| !issue.is_empty())
        .collect();
    Ok(verdict)
}

/// The failure a verdict gives the attempt, if it fails it: `pass: false`, or a
/// confidence under `min_confidence` (a reviewer unsure of its approval has not approved).
fn rejection(verdict: &Verdict, min_confidence: f64) -> Option<Failure> {
    let listed = verdict.issues.join("; ");
    let problem = if !verdict.pass {
        if listed.is_empty() {
            "a reviewing model rejected the code without naming an issue".to_owned()
        } else {
            format!("a reviewing model rejected the code: {listed}")
        }
    } else if verdict.confidence < min_confidence {
        let why = format!(
            "a reviewing model was not confident the code is right (confidence {}, below {min_confidence})",
            verdict.confidence
        );
        if listed.is_empty() {
            why
        } else {
            format!("{why}: {listed}")
        }
    } else {
        return None;
    };
    let details = if verdict.issues.is_empty() {
        "Check the code against the task and every constraint.".to_owned()
    } else {
        let listed: Vec<String> = verdict.issues.iter().map(|i| format!("- {i}")).collect();
        format!(
            "The reviewer found:\n{}\nFix each of them.",
            listed.join("\n")
        )
    };
    Some(Failure::new(Outcome::ValidatorRejected, problem).with_details(details))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str) -> ChatReply {
        ChatReply {
            content: text.to_owned(),
            finish: Finish::Stop,
            usage: None,
            notes: Vec::new(),
            served_by: None,
        }
    }

    #[test]
    fn a_verdict_is_read_through_its_wrapping_but_not_past_its_shape() {
        let wrapped = "<think>hm</think>\n```json\n{\"pass\": false, \"issues\": [\"off by\\none\"], \"confidence\": 0.9}\n```";
        assert_eq!(
            parse_verdict(&reply(wrapped)),
            Ok(Verdict {
                pass: false,
                issues: vec!["off by one".to_owned()],
                confidence: 0.9
            })
        );
        assert!(parse_verdict(&reply("looks fine to me")).is_err());
        assert!(
            parse_verdict(&reply(
                "{\"pass\": \"yes\", \"issues\": [], \"confidence\": 1}"
            ))
            .is_err()
        );
        assert!(parse_verdict(&reply("{\"pass\": true, \"confidence\": 1}")).is_err());
        assert!(
            parse_verdict(&reply(
                "{\"pass\": true, \"issues\": [], \"confidence\": 7}"
            ))
            .is_err()
        );
        let cut = ChatReply {
            finish: Finish::Length,
            ..reply("{\"pass\": true, \"issues\": [], \"confidence\": 1}")
        };
        assert!(parse_verdict(&cut).is_err());
    }

    /// The schema goes in each protocol's own structured-output field, and nowhere else.
    #[test]
    fn each_protocol_carries_the_schema_in_its_own_field() {
        use crate::model::{Provider, request_body};
        let request = ChatRequest {
            model: "m".to_owned(),
            messages: vec![Message::user("review")],
            temperature: 0.0,
            max_tokens: None,
            schema: Some(verdict_schema()),
        };
        let ollama = request_body(Provider::Ollama, &request);
        assert_eq!(ollama["format"], verdict_schema().schema);
        assert!(ollama.get("response_format").is_none());
        let openai = request_body(Provider::OpenAi, &request);
        assert_eq!(
            openai["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "verdict", "strict": true, "schema": verdict_schema().schema}})
        );
        assert!(openai.get("format").is_none());
        let plain = ChatRequest {
            schema: None,
            ..request
        };
        assert!(
            request_body(Provider::Ollama, &plain)
                .get("format")
                .is_none()
        );
        assert!(
            request_body(Provider::OpenAi, &plain)
                .get("response_format")
                .is_none()
        );
    }

    #[test]
    fn a_verdict_fails_the_attempt_when_it_rejects_or_doubts() {
        let verdict = |pass, confidence| Verdict {
            pass,
            issues: vec!["x".to_owned()],
            confidence,
        };
        assert!(rejection(&verdict(true, 0.9), 0.5).is_none());
        assert!(rejection(&verdict(true, 0.5), 0.5).is_none());
        let doubt = rejection(&verdict(true, 0.2), 0.5).expect("a rejection");
        assert!(
            doubt.repair.problem.contains("not confident"),
            "{}",
            doubt.repair.problem
        );
        let no = rejection(&verdict(false, 0.9), 0.5).expect("a rejection");
        assert_eq!(no.outcome, Outcome::ValidatorRejected);
        assert_eq!(no.repair.problem, "a reviewing model rejected the code: x");
        assert!(no.repair.details.contains("- x"), "{}", no.repair.details);
    }
}

//! A pool: several servers serving the same model, used as one. Each call goes to the
//! member with the fewest calls in flight (ties: the first listed, so a run's repair
//! lands on the server that already holds its conversation in its prompt cache), and a
//! member that cannot be reached or answers with a server fault is set aside for a
//! while ([`crate::defaults::POOL_SET_ASIDE`]) while the same call moves on to the next.
//! Set-aside members are still tried, last, when no other is left: the pool fails only
//! when every member fails, with the usual model error.
//!
//! The counts and the set-aside times belong to the process, keyed by the member's
//! address, so every client of it shares them: a batch's tasks and the MCP server's runs
//! spread over the members and do not each pay a dead member's connection timeout.
//! Separate processes do not see each other's counts.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::{Backend, ChatReply, ModelError, ModelErrorKind};

/// Servers serving one model. Every member is an [`Backend::OpenAi`] or
/// [`Backend::Ollama`] of the same protocol.
pub struct Pool {
    members: Vec<Backend>,
}

/// One member's share of the process's traffic.
#[derive(Default)]
struct MemberState {
    in_flight: usize,
    set_aside_until: Option<Instant>,
}

static MEMBERS: LazyLock<Mutex<HashMap<String, MemberState>>> = LazyLock::new(Mutex::default);

/// The shared table; a panic elsewhere while it was held leaves counts that are still
/// the best there are.
fn members() -> MutexGuard<'static, HashMap<String, MemberState>> {
    MEMBERS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A call in flight on one member: counted while it lives, so a call dropped half way
/// (a cancelled run) is uncounted too.
struct InFlight(String);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(state) = members().get_mut(&self.0) {
            state.in_flight = state.in_flight.saturating_sub(1);
        }
    }
}

/// Faults that say this member cannot serve now, where another member may: it is not
/// there, not ready, overloaded, or lacks the model. A fault of the request itself (too
/// long, malformed, refused as a client error) would fail on every member.
fn is_member_fault(kind: ModelErrorKind) -> bool {
    matches!(
        kind,
        ModelErrorKind::ConnectionRefused
            | ModelErrorKind::ConnectionReset
            | ModelErrorKind::Dns
            | ModelErrorKind::ConnectTimeout
            | ModelErrorKind::FirstByteTimeout
            | ModelErrorKind::Unavailable
            | ModelErrorKind::RateLimited
            | ModelErrorKind::HttpServerError
            | ModelErrorKind::ModelNotFound
            | ModelErrorKind::ModelNotLoaded
    )
}

impl Pool {
    /// A pool of `members`, in the order the configuration lists them; `None` for no
    /// members.
    pub fn new(members: Vec<Backend>) -> Option<Self> {
        (!members.is_empty()).then_some(Self { members })
    }

    pub fn members(&self) -> &[Backend] {
        &self.members
    }

    /// The first member: what stands for the pool before a call says who answered.
    pub fn first(&self) -> &Backend {
        &self.members[0]
    }

    /// Sets `member` aside after `error`, as a failed call does: for a member found
    /// dead while connecting.
    pub fn set_aside(member: &Backend) {
        let mut table = members();
        table
            .entry(member_endpoint(member).to_owned())
            .or_default()
            .set_aside_until = Some(Instant::now() + crate::defaults::POOL_SET_ASIDE);
    }

    /// Claims the best member not yet `tried` for one call: not set aside before set
    /// aside, then the fewest in flight, then the first listed. Chosen and counted under
    /// one lock, so two calls starting together do not both pick the same idle member.
    fn claim(&self, tried: &[usize]) -> Option<(usize, InFlight)> {
        let now = Instant::now();
        let mut table = members();
        let index = (0..self.members.len())
            .filter(|index| !tried.contains(index))
            .min_by_key(|&index| {
                let state = table.get(member_endpoint(&self.members[index]));
                let aside = state
                    .and_then(|state| state.set_aside_until)
                    .is_some_and(|until| until > now);
                (aside, state.map_or(0, |state| state.in_flight), index)
            })?;
        let key = member_endpoint(&self.members[index]).to_owned();
        table.entry(key.clone()).or_default().in_flight += 1;
        Some((index, InFlight(key)))
    }

    /// Runs `call` on the members in turn until one serves it. Returns what it gave, the
    /// member that gave it, and a note for each member set aside on the way. When every
    /// member fails, the error is the last one's kind with every member's fault.
    pub async fn each<'p, T, F, Fut>(
        &'p self,
        call: F,
    ) -> Result<(T, String, Vec<String>), ModelError>
    where
        F: Fn(&'p Backend) -> Fut,
        Fut: Future<Output = Result<T, ModelError>>,
    {
        let mut tried = Vec::new();
        let mut notes = Vec::new();
        let mut faults: Vec<String> = Vec::new();
        let mut last = None;
        while let Some((index, in_flight)) = self.claim(&tried) {
            tried.push(index);
            let member = &self.members[index];
            let outcome = call(member).await;
            drop(in_flight);
            match outcome {
                Ok(value) => {
                    if let Some(state) = members().get_mut(member_endpoint(member)) {
                        state.set_aside_until = None;
                    }
                    return Ok((value, member_endpoint(member).to_owned(), notes));
                }
                Err(error) if is_member_fault(error.kind) => {
                    Self::set_aside(member);
                    let seconds = crate::defaults::POOL_SET_ASIDE.as_secs();
                    notes.push(format!(
                        "pool member {} set aside for {seconds} s after {}: {}",
                        member_endpoint(member),
                        error.kind.as_str(),
                        error.message
                    ));
                    faults.push(format!("{}: {}", error.kind.as_str(), error.message));
                    last = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        let mut error = last.unwrap_or_else(|| {
            ModelError::new(ModelErrorKind::NoServer, "the pool has no members")
        });
        if faults.len() > 1 {
            error.message = format!("every member of the pool failed: {}", faults.join("; "));
        }
        Err(error)
    }

    /// One chat call on the best member: the reply says who answered, and carries a
    /// note for each member set aside on the way.
    pub async fn chat<'p, F, Fut>(&'p self, call: F) -> Result<ChatReply, ModelError>
    where
        F: Fn(&'p Backend) -> Fut,
        Fut: Future<Output = Result<ChatReply, ModelError>>,
    {
        let (mut reply, endpoint, mut notes) = self.each(call).await?;
        notes.push(format!(
            "answered by pool member {endpoint} (of {})",
            self.members.len()
        ));
        notes.append(&mut reply.notes);
        reply.notes = notes;
        reply.served_by = Some(endpoint);
        Ok(reply)
    }
}

/// A member's address as shown (credentials masked): its key in the shared table too.
pub fn member_endpoint(backend: &Backend) -> &str {
    match backend {
        Backend::OpenAi(client) => client.endpoint(),
        Backend::Ollama(client) => client.endpoint(),
        Backend::Recorded(replayer) => replayer.source(),
        Backend::Pool(pool) => member_endpoint(pool.first()),
    }
}

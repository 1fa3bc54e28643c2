//! The task document (SPEC §3): what a task is, its states and reasons, and the checks its
//! fields obey. How a task moves from one state to the next is [`machine`]'s alone.

pub mod machine;

use serde::{Deserialize, Serialize};

use crate::error::{Class, LoopError};
use crate::policy::TriageSection;
use crate::time::Timestamp;

/// Limits that keep a task document something every command can read quickly.
pub const MAX_TITLE_BYTES: usize = 1024;
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
pub const MAX_NAME_CHARS: usize = 100;

/// The states of SPEC §3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Ready,
    Running,
    AwaitingJudge,
    NeedsRework,
    QuotaWait,
    Promoting,
    Blocked,
    HumanGated,
    Done,
    Cancelled,
}

impl State {
    pub const ALL: [State; 10] = [
        State::Ready,
        State::Running,
        State::AwaitingJudge,
        State::NeedsRework,
        State::QuotaWait,
        State::Promoting,
        State::Blocked,
        State::HumanGated,
        State::Done,
        State::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Ready => "ready",
            State::Running => "running",
            State::AwaitingJudge => "awaiting_judge",
            State::NeedsRework => "needs_rework",
            State::QuotaWait => "quota_wait",
            State::Promoting => "promoting",
            State::Blocked => "blocked",
            State::HumanGated => "human_gated",
            State::Done => "done",
            State::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// States in which the loop itself owns the task (a worker, judge or promotion is on it).
    pub fn is_owned_by_loop(self) -> bool {
        matches!(
            self,
            State::Running | State::AwaitingJudge | State::Promoting
        )
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Machine-readable reasons of `blocked` and `human_gated` (SPEC §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Blocked: the body is thinner than `[triage]` asks; re-armed by an edit.
    ThinTask,
    /// Human-gated by a person's `task gate`.
    Gated,
    /// Blocked on the conflict-fix task its promotion filed.
    Conflict,
    /// Blocked on the activation-gap task its failed verify filed.
    VerifyFailed,
    /// Blocked: a round of attempts failed; the next round starts after `retry.cooloff`.
    AttemptsExhausted,
    /// Human-gated: `retry.escalate_after` rounds of attempts failed.
    Escalated,
    /// Blocked: the promotion was refused for a reason retrying cannot change; re-armed by a
    /// new commit on the task branch or a person's `task reopen`.
    PromotionRefused,
    /// Human-gated at filing: `triage.max_discovered` tasks already descend, discovered, from
    /// the task a person filed that this one comes from.
    DiscoveryLimit,
    /// Blocked: `[trust] signers` is set and no listed key signed the task's title and body
    /// as they stand; re-armed by a person's signed edit or reopen.
    Untrusted,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ThinTask => "thin_task",
            Reason::Gated => "gated",
            Reason::Conflict => "conflict",
            Reason::VerifyFailed => "verify_failed",
            Reason::AttemptsExhausted => "attempts_exhausted",
            Reason::Escalated => "escalated",
            Reason::PromotionRefused => "promotion_refused",
            Reason::DiscoveryLimit => "discovery_limit",
            Reason::Untrusted => "untrusted",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task. The body is kept beside the document as its own blob (`body.md`), byte for byte.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub title: String,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub batch: String,
    #[serde(default)]
    pub priority: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutex: Option<String>,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at: Option<Timestamp>,
    /// Failure signatures of the runs since the last success, newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signatures: Vec<String>,
    /// The previous failure, given to the next run's prompt as `{context}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Rounds of attempts that ended `blocked: attempts_exhausted` (for escalation).
    #[serde(default)]
    pub rounds: u32,
    /// The run under way (or the last one) was a rework: claimed from `needs_rework`. The same
    /// failure repeated in a rework ends the round at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rework: bool,
    /// Quota hits in a row (not attempts; bounded all the same, see [`machine`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub quota_waits: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovered_from: Option<String>,
    pub branch: String,
    pub created: Timestamp,
    pub updated: Timestamp,
    /// The branch head that the judge (or a person's `promote`, through the gates) approved:
    /// only exactly this commit is ever promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_commit: Option<String>,
    #[serde(skip)]
    pub body: String,
}

impl Task {
    /// A new task of `batch`: `ready`, or held as `blocked: thin_task` when triage says why
    /// (`thin`). Its branch is `loop/<short id>`.
    pub fn new(
        id: String,
        title: String,
        body: String,
        batch: String,
        thin: Option<String>,
    ) -> Task {
        let now = Timestamp::now();
        let (state, reason) = match thin {
            Some(_) => (State::Blocked, Some(Reason::ThinTask)),
            None => (State::Ready, None),
        };
        Task {
            branch: format!("loop/{}", crate::ids::short(&id)),
            id,
            title,
            state,
            reason,
            detail: thin,
            batch,
            priority: 0,
            after: Vec::new(),
            mutex: None,
            attempts: 0,
            next_at: None,
            signatures: Vec::new(),
            context: None,
            rounds: 0,
            rework: false,
            quota_waits: 0,
            discovered_from: None,
            created: now,
            updated: now,
            approved: None,
            promoted_commit: None,
            body,
        }
    }

    /// The document as stored (`task.toml`), without the body.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        Ok(toml::to_string(self)?)
    }

    /// Parses a stored document; the body is read separately.
    pub fn from_toml(text: &str) -> Result<Task, String> {
        let task: Task = toml::from_str(text).map_err(|e| e.message().to_string())?;
        if !crate::ids::is_full_id(&task.id) {
            return Err(format!("bad id {:?}", task.id));
        }
        Ok(task)
    }

    pub fn set_state(&mut self, state: State, reason: Option<Reason>, detail: Option<String>) {
        self.state = state;
        self.reason = reason;
        self.detail = detail;
    }

    /// Whether the task is `state` for `reason`.
    pub fn is(&self, state: State, reason: Reason) -> bool {
        self.state == state && self.reason == Some(reason)
    }

    /// `state` or `state: reason`, for messages.
    pub fn state_label(&self) -> String {
        match &self.reason {
            Some(r) => format!("{}: {r}", self.state),
            None => self.state.to_string(),
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Checks a title before it is stored.
pub fn check_title(title: &str) -> Result<(), LoopError> {
    if title.trim().is_empty() {
        return Err(LoopError::new(Class::Usage, "the title must not be empty"));
    }
    if title.len() > MAX_TITLE_BYTES {
        return Err(LoopError::new(
            Class::Usage,
            format!(
                "the title is {} bytes long; titles are at most {MAX_TITLE_BYTES}",
                title.len()
            ),
        )
        .with_hint("put the details in the body (--body or --body-file)"));
    }
    Ok(())
}

/// Turns body bytes into text, refusing what cannot be stored faithfully.
pub fn body_from_bytes(bytes: Vec<u8>) -> Result<String, LoopError> {
    if bytes.len() > MAX_BODY_BYTES {
        return Err(LoopError::new(
            Class::Usage,
            format!(
                "the body is {} bytes long; bodies are at most {MAX_BODY_BYTES}",
                bytes.len()
            ),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        LoopError::new(
            Class::Usage,
            format!(
                "the body is not valid UTF-8 (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
        .with_hint("task bodies are text; convert the file to UTF-8 first")
    })
}

/// Checks a batch or mutex name: short, and free of spaces and control characters.
pub fn check_name(what: &str, name: &str) -> Result<(), LoopError> {
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(LoopError::new(
            Class::Usage,
            format!(
                "{what} {:?} is not a valid name (1 to {MAX_NAME_CHARS} characters, no spaces or control characters)",
                name
            ),
        ));
    }
    Ok(())
}

/// Why a body is too thin for `[triage]`, if it is.
pub fn triage(body: &str, policy: &TriageSection) -> Option<String> {
    let chars = body.trim().chars().count() as u64;
    if chars < policy.min_body_chars {
        return Some(format!(
            "the body has {chars} characters; [triage] min_body_chars asks for {}",
            policy.min_body_chars
        ));
    }
    if policy.require_acceptance && !says_how_done_is_checked(body) {
        return Some(
            "the body does not say how done is checked; add a line such as \
             `Acceptance: ...` or `Done when: ...`, or a checklist (`- [ ] ...`)"
                .to_string(),
        );
    }
    None
}

/// Words that, starting a line, introduce how a task's completion is checked.
const ACCEPTANCE_MARKERS: &[&str] = &[
    "acceptance",
    "accepted when",
    "done when",
    "definition of done",
    "success criteria",
    "how to verify",
    "verify",
    "verification",
    "verified by",
    "test plan",
    "tests",
    "expected",
];

/// Phrases that say how done is checked wherever they stand.
const ACCEPTANCE_PHRASES: &[&str] = &[
    "acceptance:",
    "acceptance criteria",
    "done when:",
    "definition of done",
];

/// True when `body` states acceptance criteria: a line that starts with a marker such as
/// "Acceptance" or "Done when", a checklist item, or an explicit phrase anywhere.
pub fn says_how_done_is_checked(body: &str) -> bool {
    let lower = body.to_lowercase();
    if ACCEPTANCE_PHRASES.iter().any(|p| lower.contains(p)) {
        return true;
    }
    lower.lines().any(|line| {
        let trimmed = line.trim_start_matches(|c: char| {
            c.is_whitespace() || matches!(c, '#' | '*' | '-' | '>' | '_' | '+')
        });
        trimmed.starts_with("[ ]")
            || trimmed.starts_with("[x]")
            || ACCEPTANCE_MARKERS.iter().any(|m| trimmed.starts_with(m))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acceptance_markers() {
        assert!(says_how_done_is_checked("## Acceptance\n- it works"));
        assert!(says_how_done_is_checked("Done when: `cargo test` passes"));
        assert!(says_how_done_is_checked("- [ ] the page renders"));
        assert!(says_how_done_is_checked(
            "Fix it. Acceptance: the test passes."
        ));
        assert!(!says_how_done_is_checked("make it better somehow"));
        assert!(!says_how_done_is_checked(
            "we accept that the tests are slow"
        ));
    }
}

//! The task state machine (SPEC §3). Every change of a task's state — a runner's claim, the
//! agent's end, the judge's verdict, a promotion's progress, the reaper's requeue, a person's
//! `task cancel` — is an [`Event`] given to [`apply`]: a pure function of the task as read, the
//! event, who acts, the policy and a [`Clock`]. It answers with the next document and the
//! message naming the transition, or with a [`Refusal`]. Writers then compare-and-swap the task
//! ref from the commit they read ([`crate::store::Store::update`]), so a decision made
//! meanwhile — a person's cancel while an agent ran, a hand promotion — makes the writer's
//! swap fail, and the event applied again to what is there now is refused.
//!
//! The budgets live here and nowhere else. Whatever sends a task back to an agent (a transient
//! failure, a stall, a timeout, the judge's rejection, a requeue after its runner died) is an
//! attempt and waits a full-jitter backoff first; `retry.max_attempts` attempts make a round,
//! then `blocked: attempts_exhausted` for `retry.cooloff`, and `human_gated` once
//! `retry.escalate_after` rounds failed. The same failure signature `retry.same_signature`
//! times in a row moves a task off the retry path onto rework (`needs_rework`), and the same
//! failure again in a rework ends the round at once. Quota hits are not attempts, but their
//! waits double only up to `retry.max`: one more hit after that ends the round too.

use std::time::Duration;

use crate::error::{Class, LoopError};
use crate::policy::{Policy, RetrySection};
use crate::task::{Reason, State, Task};
use crate::time::{Timestamp, format_duration};

/// How many failure signatures a task keeps (newest last): enough for `same_signature` and
/// for people, without a document that grows with every failure.
const SIGNATURES_KEPT: usize = 32;

/// The signature of a branch that moved after it was judged.
const BRANCH_MOVED: &str = "policy:judge:branch-moved-after-judging";

/// The signature of a judging cut short (its runner died while the gates ran).
const INTERRUPTED: &str = "transient:judge:interrupted";

/// The time of a transition and the jitter of any backoff it sets (`0.0..=1.0`): the only
/// inputs of [`apply`] that are not in the task, the event or the policy.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub now: Timestamp,
    pub jitter: f64,
}

impl Clock {
    /// Now, with a random jitter.
    pub fn now() -> Clock {
        const SCALE: u64 = 1 << 20;
        Clock {
            now: Timestamp::now(),
            jitter: crate::rand::below_or_equal(SCALE) as f64 / SCALE as f64,
        }
    }
}

/// What of the policy the budgets read: `[retry]` and `agent.quota_cooldown`.
#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    pub retry: RetrySection,
    pub quota_cooldown: Duration,
}

impl Default for Budget {
    /// The budgets of a policy that sets none (SPEC §6).
    fn default() -> Budget {
        Budget {
            retry: RetrySection::default(),
            quota_cooldown: crate::policy::DEFAULT_QUOTA_COOLDOWN,
        }
    }
}

impl From<&Policy> for Budget {
    fn from(policy: &Policy) -> Budget {
        Budget {
            retry: policy.retry.clone(),
            quota_cooldown: policy.agent.quota_cooldown,
        }
    }
}

/// Who acts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    /// A person at a command line.
    Person,
    /// A runner, by its id: its workers, judges and promotions.
    Runner(String),
    /// `git loop reap`, or a runner's recovery, by the name its leases carry.
    Reaper(String),
    /// A command run from inside an agent's run (`GIT_LOOP_TASK` set): the task and the run.
    Agent { task: String, run: String },
}

impl Actor {
    /// Who runs a command in `cwd`: an agent's run when the runner's variables are set (it
    /// sets `GIT_LOOP_TASK`, `GIT_LOOP_RUN` and `GIT_LOOP_WORKTREE` for everything an agent
    /// starts) or when the command runs inside git-loop's own directory (a task's worktree, a
    /// gate's checkout); else a person. An agent that clears its environment and leaves its
    /// worktree is told apart only by the sandbox, which keeps it from writing loop state at all.
    pub fn at_command_line(cwd: &std::path::Path) -> Actor {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let (task, run, worktree) = (
            var("GIT_LOOP_TASK"),
            var("GIT_LOOP_RUN"),
            var("GIT_LOOP_WORKTREE"),
        );
        if task.is_some() || run.is_some() || worktree.is_some() {
            return Actor::Agent {
                task: task.unwrap_or_default(),
                run: run.unwrap_or_default(),
            };
        }
        let inside_loop = crate::git::Repo::discover(cwd).ok().is_some_and(|repo| {
            let loop_dir = repo.common_dir().join("loop");
            match (cwd.canonicalize(), loop_dir.canonicalize()) {
                (Ok(cwd), Ok(dir)) => cwd.starts_with(dir),
                _ => false,
            }
        });
        if inside_loop {
            return Actor::Agent {
                task: String::new(),
                run: String::new(),
            };
        }
        Actor::Person
    }

    /// How the actor is named in a task's history.
    pub fn name(&self) -> String {
        match self {
            Actor::Person => "a person".to_string(),
            Actor::Runner(id) | Actor::Reaper(id) => id.clone(),
            Actor::Agent { task, run } if !task.is_empty() => {
                format!("the agent of task {} (run {run})", crate::ids::short(task))
            }
            Actor::Agent { .. } => "an agent's run".to_string(),
        }
    }

    /// Refuses an agent's run: from inside one, only filing discovered work is allowed.
    pub fn refuse_agent(&self, what: &str) -> Result<(), Refusal> {
        match self {
            Actor::Agent { task, .. } => Err(Refusal::new(
                Class::Policy,
                if task.is_empty() {
                    format!("{what} is not allowed from inside an agent's run (in git-loop's own directory)")
                } else {
                    format!(
                        "{what} is not allowed from inside an agent's run (GIT_LOOP_TASK={})",
                        crate::ids::short(task)
                    )
                },
            )
            .hint(
                "an agent may only file discovered work: `git loop task add --from ID`, or \
                 `Loop-Task:` / `Loop-Blocker:` trailers on its commits",
            )),
            _ => Ok(()),
        }
    }
}

/// A failed run, as the history and the next prompt need it.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// How it ended, for the history: `stalled`, `timed_out`, `reaped (…)`, …
    pub how: String,
    /// One line for the task's detail and the judge's message: `gate failed: …`.
    pub summary: String,
    /// SPEC §3: the class, the step and the error text without its volatile parts.
    pub signature: String,
    /// What the next run's prompt is told (`{context}`).
    pub context: String,
}

/// Why a run is handed back without counting as an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveBack {
    /// The runner is stopping.
    Stopped,
    /// The agent could not be started (a `config` failure: the breaker opens).
    NotStarted,
}

/// What happened to a task.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A runner leases the task for an agent run; `deps_done`: every dependency is done.
    Lease { deps_done: bool },
    /// The agent printed the completion token: a claim, for the judge.
    Completed,
    /// The agent's run failed: it stalled, timed out, exited without the token, or its runner
    /// died (a requeue by the reaper).
    Failed(Failure),
    /// The agent hit a quota or rate limit.
    Quota,
    /// The run is handed back, not counted as an attempt.
    GiveBack(GiveBack),
    /// The judge approved this branch head.
    Approved { head: String, summary: String },
    /// The judge rejected the run.
    Rejected(Failure),
    /// The judging was cut short (its runner died while the gates ran): judged again, but
    /// the same interruption `retry.same_signature` times in a row ends the round.
    Interrupted { why: String },
    /// A promotion starts; `approve` when it approved a head itself (a person's promotion ran
    /// the gates): the head and how many gate commands passed.
    Promote { approve: Option<(String, usize)> },
    /// The branch moved after it was judged: the new commits are judged first.
    BranchMoved { detail: String },
    /// The promotion filed a follow-up task and waits for it (`conflict`, `verify_failed`).
    Wait {
        reason: Reason,
        on: String,
        detail: String,
    },
    /// The promotion was refused for a reason retrying cannot change (class `policy`).
    PromotionRefused { detail: String },
    /// The promotion cannot finish without a person (its follow-up would file another of
    /// its kind: an activation gap whose own verify fails).
    Escalate { why: String },
    /// The promotion failed in a way worth trying again later.
    PromotionFailed { signature: String, line: String },
    /// The approved work is in the target and verified.
    Promoted { commit: String },
    /// The follow-up task this one waited for is done.
    Unblocked { by: String },
    /// The cool-off after a round of failed attempts has passed.
    CooledOff,
    /// A person drops the task.
    Cancel,
    /// A person takes the task over.
    Gate { reason: String },
    /// A person requeues the task with a fresh budget; `thin` when triage holds it.
    Reopen { thin: Option<String> },
    /// A person edited the task (`what` names the fields); `thin` is triage's verdict now.
    Edited { what: String, thin: Option<String> },
    /// A runner found the task's title and body signed by no key `[trust] signers` lists.
    Untrusted { why: String },
}

/// The kinds of [`Event`], for saying which events move a task on ([`Next`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Lease,
    Completed,
    Failed,
    Quota,
    GiveBack,
    Approved,
    Rejected,
    Interrupted,
    Promote,
    BranchMoved,
    Wait,
    PromotionRefused,
    Escalate,
    PromotionFailed,
    Promoted,
    Unblocked,
    CooledOff,
    Cancel,
    Gate,
    Reopen,
    Edited,
    Untrusted,
}

impl Event {
    pub fn kind(&self) -> Kind {
        match self {
            Event::Lease { .. } => Kind::Lease,
            Event::Completed => Kind::Completed,
            Event::Failed(_) => Kind::Failed,
            Event::Quota => Kind::Quota,
            Event::GiveBack(_) => Kind::GiveBack,
            Event::Approved { .. } => Kind::Approved,
            Event::Rejected(_) => Kind::Rejected,
            Event::Interrupted { .. } => Kind::Interrupted,
            Event::Promote { .. } => Kind::Promote,
            Event::BranchMoved { .. } => Kind::BranchMoved,
            Event::Wait { .. } => Kind::Wait,
            Event::PromotionRefused { .. } => Kind::PromotionRefused,
            Event::Escalate { .. } => Kind::Escalate,
            Event::PromotionFailed { .. } => Kind::PromotionFailed,
            Event::Promoted { .. } => Kind::Promoted,
            Event::Unblocked { .. } => Kind::Unblocked,
            Event::CooledOff => Kind::CooledOff,
            Event::Cancel => Kind::Cancel,
            Event::Gate { .. } => Kind::Gate,
            Event::Reopen { .. } => Kind::Reopen,
            Event::Edited { .. } => Kind::Edited,
            Event::Untrusted { .. } => Kind::Untrusted,
        }
    }

    /// What the event is, for refusals.
    fn name(&self) -> &'static str {
        match self {
            Event::Lease { .. } => "a lease for an agent run",
            Event::Completed => "the completion token",
            Event::Failed(_) => "a failed run",
            Event::Quota => "a quota hit",
            Event::GiveBack(GiveBack::Stopped) => "the runner's stop",
            Event::GiveBack(GiveBack::NotStarted) => "an agent that could not start",
            Event::Approved { .. } => "the judge's approval",
            Event::Rejected(_) => "the judge's rejection",
            Event::Interrupted { .. } => "an interrupted judging",
            Event::Promote { .. } => "a promotion",
            Event::BranchMoved { .. } => "a branch moved after judging",
            Event::Wait { .. } => "a promotion's follow-up task",
            Event::PromotionRefused { .. } => "a refused promotion",
            Event::Escalate { .. } => "an escalation",
            Event::PromotionFailed { .. } => "a failed promotion",
            Event::Promoted { .. } => "a finished promotion",
            Event::Unblocked { .. } => "a follow-up task's completion",
            Event::CooledOff => "the end of the cool-off",
            Event::Cancel => "cancel",
            Event::Gate { .. } => "gate",
            Event::Reopen { .. } => "reopen",
            Event::Edited { .. } => "edit",
            Event::Untrusted { .. } => "an untrusted task's hold",
        }
    }
}

/// A transition [`apply`] allows: the next document, and the message that names it.
#[derive(Clone, Debug)]
pub struct Transition {
    pub task: Task,
    pub message: String,
    /// The backoff set before the next try, if any.
    pub backoff: Option<Duration>,
}

/// An event the task's state does not allow.
#[derive(Debug)]
pub struct Refusal(pub LoopError);

impl Refusal {
    fn new(class: Class, message: impl Into<String>) -> Refusal {
        Refusal(LoopError::new(class, message))
    }

    fn hint(self, hint: impl Into<String>) -> Refusal {
        Refusal(self.0.with_hint(hint))
    }

    /// The task was taken from a run while it worked: its lease changed hands, or a person's
    /// decision moved the task on.
    pub fn withdrawn(message: impl Into<String>) -> Refusal {
        Refusal::new(Class::Policy, message)
    }

    /// The refusal in an error chain, if that is what the error is.
    pub fn of(err: &anyhow::Error) -> Option<&Refusal> {
        err.chain().find_map(|e| e.downcast_ref::<Refusal>())
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Refusal {}

/// Applies `event`, by `actor`, to `task` as read: the next document and its message, or why
/// the event does not apply. Pure: the same inputs give the same answer.
pub fn apply(
    task: &Task,
    event: &Event,
    actor: &Actor,
    policy: &Budget,
    clock: Clock,
) -> Result<Transition, Refusal> {
    actor.refuse_agent(&format!("changing task {}", crate::ids::short(&task.id)))?;
    let persons = matches!(
        event,
        Event::Cancel | Event::Gate { .. } | Event::Reopen { .. } | Event::Edited { .. }
    );
    if persons && *actor != Actor::Person {
        return Err(refusal(
            task,
            event,
            actor,
            format!("only a person decides that, not {}", actor.name()),
        ));
    }
    let mut t = task.clone();
    let from = task.state_label();
    let refuse = |why: String| refusal(task, event, actor, why);
    let mut backoff = None;
    let message = match event {
        Event::Lease { deps_done } => {
            expect(
                task,
                event,
                actor,
                &[State::Ready, State::NeedsRework, State::QuotaWait],
            )?;
            if let Some(at) = task.next_at.filter(|at| *at > clock.now) {
                return Err(refuse(format!(
                    "its next try is not before {}",
                    at.to_rfc3339()
                )));
            }
            if !deps_done {
                return Err(refuse("a task it runs after is not done".into()));
            }
            t.rework = match task.state {
                State::NeedsRework => true,
                State::QuotaWait => task.rework,
                _ => false,
            };
            t.attempts = task.attempts.saturating_add(1);
            t.next_at = None;
            t.set_state(State::Running, None, None);
            format!(
                "{from} -> running: leased by {} (attempt {})",
                actor.name(),
                t.attempts
            )
        }
        Event::Completed => {
            expect(task, event, actor, &[State::Running])?;
            t.quota_waits = 0;
            t.set_state(State::AwaitingJudge, None, None);
            format!("{from} -> awaiting_judge: completion token found")
        }
        Event::Failed(failure) | Event::Rejected(failure) => {
            let judged = matches!(event, Event::Rejected(_));
            let expected = if judged {
                State::AwaitingJudge
            } else {
                State::Running
            };
            expect(task, event, actor, &[expected])?;
            let (message, wait) = fail(&mut t, failure, judged, policy, clock);
            backoff = wait;
            format!("{from} -> {message}")
        }
        Event::Quota => {
            expect(task, event, actor, &[State::Running])?;
            // Not an attempt: the claim counted one, which is given back.
            t.attempts = task.attempts.saturating_sub(1);
            t.quota_waits = task.quota_waits.saturating_add(1);
            let cap = policy.retry.max.max(policy.quota_cooldown);
            let wait_of = |n: u32| {
                policy
                    .quota_cooldown
                    .saturating_mul(1u32 << n.saturating_sub(1).min(20))
                    .min(cap)
            };
            if t.quota_waits > 1 && wait_of(t.quota_waits - 1) >= cap {
                let why = format!(
                    "the quota persisted after {} waits, the last of {}",
                    t.quota_waits - 1,
                    format_duration(cap)
                );
                format!("{from} -> {}", exhaust(&mut t, &why, policy, clock))
            } else {
                let wait = wait_of(t.quota_waits);
                t.next_at = Some(clock.now.plus(wait));
                backoff = Some(wait);
                t.set_state(
                    State::QuotaWait,
                    None,
                    Some(format!("quota hit; retry after {}", format_duration(wait))),
                );
                format!(
                    "{from} -> quota_wait: quota or rate limit ({} wait)",
                    format_duration(wait)
                )
            }
        }
        Event::GiveBack(why) => {
            expect(task, event, actor, &[State::Running])?;
            t.attempts = task.attempts.saturating_sub(1);
            t.next_at = None;
            let (said, detail) = match why {
                GiveBack::Stopped => ("the runner stopped", "requeued: the runner stopped"),
                GiveBack::NotStarted => (
                    "the agent could not be started",
                    "requeued: the agent could not be started",
                ),
            };
            let back = if task.rework {
                State::NeedsRework
            } else {
                State::Ready
            };
            t.set_state(back, None, Some(detail.to_string()));
            format!("{from} -> {back}: {said}")
        }
        Event::Approved { head, summary } => {
            expect(task, event, actor, &[State::AwaitingJudge])?;
            t.approved = Some(head.clone());
            // The signatures stay until the task is done: a branch that keeps moving after
            // its approval repeats one, and that ends the round.
            t.context = None;
            t.rework = false;
            t.set_state(State::Promoting, None, None);
            format!("{from} -> promoting: {summary}")
        }
        Event::Promote { approve } => {
            expect_promotable(task, event, actor)?;
            if let Some((head, _)) = approve {
                t.approved = Some(head.clone());
            }
            t.next_at = None;
            t.set_state(State::Promoting, None, None);
            match approve {
                Some((head, gates)) => format!(
                    "{from} -> promoting: approved {} ({gates} gate command(s) passed at promote)",
                    crate::ids::short(head)
                ),
                None if task.state == State::Promoting && task.next_at.is_none() => {
                    return Ok(unchanged(task));
                }
                None => format!("{from} -> promoting: promotion started"),
            }
        }
        Event::BranchMoved { detail } => {
            expect_promotable(task, event, actor)?;
            if task.state == State::AwaitingJudge {
                return Ok(unchanged(task));
            }
            t.next_at = None;
            // Judging again is a re-run like an agent's: it counts.
            let used_up = task.attempts >= policy.retry.max_attempts;
            if !used_up {
                t.attempts = task.attempts + 1;
            }
            push_signature(&mut t, BRANCH_MOVED);
            if used_up || crate::retry::repeated(&t.signatures, policy.retry.same_signature) {
                let why = "the branch moved after judging, again".to_string();
                format!("{from} -> {}", exhaust(&mut t, &why, policy, clock))
            } else {
                t.set_state(State::AwaitingJudge, None, Some(detail.clone()));
                format!("{from} -> awaiting_judge: branch moved after judging")
            }
        }
        Event::Interrupted { why } => {
            expect(task, event, actor, &[State::AwaitingJudge])?;
            let used_up = task.attempts >= policy.retry.max_attempts;
            if !used_up {
                t.attempts = task.attempts + 1;
            }
            push_signature(&mut t, INTERRUPTED);
            if used_up || crate::retry::repeated(&t.signatures, policy.retry.same_signature) {
                let why = format!("judging was interrupted, again ({why})");
                format!("{from} -> {}", exhaust(&mut t, &why, policy, clock))
            } else {
                t.detail = Some(format!("judging was interrupted: {why}"));
                format!("awaiting_judge: judging interrupted ({why}); judged again")
            }
        }
        Event::Escalate { why } => {
            expect(task, event, actor, &[State::Promoting])?;
            t.next_at = None;
            t.set_state(
                State::HumanGated,
                Some(Reason::Escalated),
                Some(why.clone()),
            );
            format!("{from} -> human_gated: escalated: {why}")
        }
        Event::Wait { reason, on, detail } => {
            if !matches!(reason, Reason::Conflict | Reason::VerifyFailed) {
                return Err(refuse(format!("{reason} is not a reason to wait")));
            }
            if !task.is(State::Blocked, *reason) {
                expect(task, event, actor, &[State::Promoting])?;
            }
            if !t.after.contains(on) {
                t.after.push(on.clone());
            }
            t.next_at = None;
            t.set_state(State::Blocked, Some(*reason), Some(detail.clone()));
            format!(
                "{from} -> blocked: {reason}: waits for {}",
                crate::ids::short(on)
            )
        }
        Event::PromotionRefused { detail } => {
            expect(task, event, actor, &[State::Promoting])?;
            t.next_at = None;
            t.set_state(
                State::Blocked,
                Some(Reason::PromotionRefused),
                Some(detail.clone()),
            );
            format!("{from} -> blocked: promotion_refused: {detail}")
        }
        Event::PromotionFailed { signature, line } => {
            expect(task, event, actor, &[State::Promoting])?;
            push_signature(&mut t, signature);
            let step = signature.split(':').nth(1);
            let in_a_row = t
                .signatures
                .iter()
                .rev()
                .take_while(|s| s.split(':').nth(1) == step)
                .count() as u32;
            if in_a_row >= policy.retry.max_attempts {
                // Tried as often as an agent would be: a person looks, or a new commit.
                t.next_at = None;
                let detail = format!("the promotion failed {in_a_row} times in a row: {line}");
                t.set_state(
                    State::Blocked,
                    Some(Reason::PromotionRefused),
                    Some(detail.clone()),
                );
                format!("promoting -> blocked: promotion_refused: {detail}")
            } else {
                let wait = jittered(policy, in_a_row, clock).max(Duration::from_millis(100));
                t.next_at = Some(clock.now.plus(wait));
                t.detail = Some(line.clone());
                backoff = Some(wait);
                format!(
                    "promoting: promotion failed ({in_a_row} in a row: {line}); next try after {}",
                    format_duration(wait)
                )
            }
        }
        Event::Promoted { commit } => {
            if task.state == State::Done && task.promoted_commit.as_deref() == Some(commit) {
                return Ok(unchanged(task));
            }
            expect(task, event, actor, &[State::Promoting])?;
            t.promoted_commit = Some(commit.clone());
            t.signatures.clear();
            t.next_at = None;
            t.set_state(State::Done, None, None);
            format!("{from} -> done: promoted as {}", crate::ids::short(commit))
        }
        Event::Unblocked { by } => {
            if !(task.is(State::Blocked, Reason::Conflict)
                || task.is(State::Blocked, Reason::VerifyFailed))
            {
                return Err(refuse(format!(
                    "it is {from}, not waiting for a follow-up task"
                )));
            }
            t.set_state(State::Promoting, None, None);
            format!("{from} -> promoting: {} is done", crate::ids::short(by))
        }
        Event::CooledOff => {
            if !task.is(State::Blocked, Reason::AttemptsExhausted) {
                return Err(refuse(format!("it is {from}, not cooling off")));
            }
            if let Some(at) = task.next_at.filter(|at| *at > clock.now) {
                return Err(refuse(format!(
                    "the cool-off lasts until {}",
                    at.to_rfc3339()
                )));
            }
            t.next_at = None;
            if task.rounds >= policy.retry.escalate_after.max(1) {
                t.set_state(
                    State::HumanGated,
                    Some(Reason::Escalated),
                    Some(format!(
                        "{} rounds of attempts failed; a person must look",
                        task.rounds
                    )),
                );
                format!("{from} -> human_gated: escalated after the cool-off")
            } else {
                t.attempts = 0;
                t.rework = false;
                t.set_state(State::Ready, None, None);
                format!("{from} -> ready: cool-off over (round {})", task.rounds + 1)
            }
        }
        Event::Cancel => {
            if task.state == State::Cancelled {
                return Ok(unchanged(task));
            }
            final_(task, event, actor)?;
            t.next_at = None;
            t.set_state(State::Cancelled, None, None);
            format!("{from} -> cancelled: cancelled by {}", actor.name())
        }
        Event::Gate { reason } => {
            if task.state == State::Cancelled {
                return Err(refuse("it is cancelled; reopen it first".into()));
            }
            final_(task, event, actor)?;
            t.next_at = None;
            t.set_state(State::HumanGated, Some(Reason::Gated), Some(reason.clone()));
            format!(
                "{from} -> human_gated: gated by {}: {}",
                actor.name(),
                crate::output::safe(reason.lines().next().unwrap_or_default(), false)
            )
        }
        Event::Reopen { thin } => {
            final_(task, event, actor)?;
            if matches!(
                task.state,
                State::Running | State::AwaitingJudge | State::Promoting
            ) {
                return Err(refuse(format!("it is {from}: the loop is working on it"))
                    .hint("wait for it, or stop the runner first (`git loop stop`)"));
            }
            t.attempts = 0;
            t.rounds = 0;
            t.rework = false;
            t.quota_waits = 0;
            t.next_at = None;
            t.signatures.clear();
            // Requeued work is judged again.
            t.approved = None;
            match thin {
                Some(why) => t.set_state(State::Blocked, Some(Reason::ThinTask), Some(why.clone())),
                None => t.set_state(State::Ready, None, None),
            }
            format!(
                "{from} -> {}: reopened by {}",
                t.state_label(),
                actor.name()
            )
        }
        Event::Untrusted { why } => {
            // Never from a run under way (its lease stands until it ends) nor from a
            // decision made.
            expect(task, event, actor, &CLAIMABLE)?;
            t.next_at = None;
            t.set_state(State::Blocked, Some(Reason::Untrusted), Some(why.clone()));
            format!("{from} -> blocked: untrusted: {why}")
        }
        Event::Edited { what, thin } => {
            final_(task, event, actor)?;
            let held = task.is(State::Blocked, Reason::ThinTask)
                || task.is(State::Blocked, Reason::Untrusted);
            let untrusted = task.is(State::Blocked, Reason::Untrusted);
            match (held, thin) {
                (true, None) if untrusted => {
                    t.set_state(State::Ready, None, None);
                    format!("blocked -> ready: {what}; its signature is checked before it runs")
                }
                (true, None) => {
                    t.set_state(State::Ready, None, None);
                    format!("blocked -> ready: {what}; triage passes")
                }
                (true, Some(why)) if untrusted => {
                    t.set_state(State::Blocked, Some(Reason::ThinTask), Some(why.clone()));
                    format!("blocked: {what}; thin_task")
                }
                (true, Some(why)) => {
                    t.detail = Some(why.clone());
                    what.clone()
                }
                (false, Some(why)) if task.state == State::Ready => {
                    t.set_state(State::Blocked, Some(Reason::ThinTask), Some(why.clone()));
                    format!("ready -> blocked: {what}; thin_task")
                }
                _ => what.clone(),
            }
        }
    };
    Ok(Transition {
        task: t,
        message,
        backoff,
    })
}

/// A failed run: the signature and context recorded, then the round's budget decides. Returns
/// the rest of the message (`needs_rework: …`) and the backoff set.
fn fail(
    t: &mut Task,
    failure: &Failure,
    judged: bool,
    policy: &Budget,
    clock: Clock,
) -> (String, Option<Duration>) {
    let retry = &policy.retry;
    push_signature(t, &failure.signature);
    t.context = Some(failure.context.clone());
    t.quota_waits = 0;
    let repeated = crate::retry::repeated(&t.signatures, retry.same_signature);
    if repeated && t.rework {
        let why = format!("the same failure again in a rework: {}", failure.how);
        return (exhaust(t, &why, policy, clock), None);
    }
    if t.attempts >= retry.max_attempts {
        let why = format!(
            "{}; {} of {} attempts used",
            failure.how, t.attempts, retry.max_attempts
        );
        return (exhaust(t, &why, policy, clock), None);
    }
    let wait = jittered(policy, t.attempts, clock);
    t.next_at = Some(clock.now.plus(wait));
    let after = format_duration(wait);
    if repeated || judged {
        let (detail, said) = if repeated {
            (
                format!(
                    "the same failure {} times in a row: {}",
                    retry.same_signature, failure.summary
                ),
                format!(
                    "the same failure {} times ({})",
                    retry.same_signature, failure.how
                ),
            )
        } else {
            (failure.summary.clone(), failure.summary.clone())
        };
        t.set_state(
            State::NeedsRework,
            None,
            Some(format!("{detail}; rework after {after}")),
        );
        return (
            format!("needs_rework: {said}; rework after {after}"),
            Some(wait),
        );
    }
    t.set_state(
        State::Ready,
        None,
        Some(format!("{}; retry after {after}", failure.summary)),
    );
    (
        format!(
            "ready: {}; retry {} of {} after {after}",
            failure.how,
            t.attempts + 1,
            retry.max_attempts
        ),
        Some(wait),
    )
}

/// Ends a round of attempts: `blocked: attempts_exhausted` until the cool-off, or a person
/// once `retry.escalate_after` rounds have failed. Returns the rest of the message.
fn exhaust(t: &mut Task, why: &str, policy: &Budget, clock: Clock) -> String {
    let retry = &policy.retry;
    t.rounds = t.rounds.saturating_add(1);
    t.rework = false;
    t.quota_waits = 0;
    if t.rounds >= retry.escalate_after.max(1) {
        t.next_at = None;
        t.set_state(
            State::HumanGated,
            Some(Reason::Escalated),
            Some(format!(
                "{} round(s) of attempts failed ({why}); a person must look",
                t.rounds
            )),
        );
        return format!("human_gated: escalated after {} round(s) ({why})", t.rounds);
    }
    t.next_at = Some(clock.now.plus(retry.cooloff));
    t.set_state(
        State::Blocked,
        Some(Reason::AttemptsExhausted),
        Some(format!(
            "round {} failed ({why}); round {} after {}",
            t.rounds,
            t.rounds + 1,
            format_duration(retry.cooloff)
        )),
    );
    format!("blocked: attempts_exhausted ({why})")
}

fn push_signature(t: &mut Task, signature: &str) {
    t.signatures.push(signature.to_string());
    if t.signatures.len() > SIGNATURES_KEPT {
        let cut = t.signatures.len() - SIGNATURES_KEPT;
        t.signatures.drain(..cut);
    }
}

/// The full-jitter backoff of the `n`th retry (SPEC §5).
fn jittered(policy: &Budget, n: u32, clock: Clock) -> Duration {
    let cap = crate::retry::backoff_cap(&policy.retry, n.max(1));
    let ms = (cap.as_millis() as f64 * clock.jitter.clamp(0.0, 1.0)).floor();
    Duration::from_millis(ms as u64)
}

fn unchanged(task: &Task) -> Transition {
    Transition {
        task: task.clone(),
        message: "unchanged".into(),
        backoff: None,
    }
}

fn refusal(task: &Task, event: &Event, actor: &Actor, why: String) -> Refusal {
    let class = match actor {
        Actor::Person => Class::Usage,
        _ => Class::Policy,
    };
    Refusal::new(
        class,
        format!(
            "task {}: {} refused: {why}",
            crate::ids::short(&task.id),
            event.name()
        ),
    )
}

/// Refuses the event unless the task is in one of `states`; the words say whose decision
/// stands when a person's is in the way.
fn expect(task: &Task, event: &Event, actor: &Actor, states: &[State]) -> Result<(), Refusal> {
    if states.contains(&task.state) {
        return Ok(());
    }
    let why = match task.state {
        State::Done => "it is done, and done is final".to_string(),
        State::Cancelled => {
            "a person cancelled it; only `git loop task reopen` brings it back".into()
        }
        State::HumanGated => format!(
            "it is {}: it waits for a person; only `git loop task reopen` brings it back",
            task.state_label()
        ),
        _ => format!(
            "it is {}, not {}",
            task.state_label(),
            states
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" or ")
        ),
    };
    Err(refusal(task, event, actor, why))
}

/// Refuses what would overwrite a final decision: `done` always.
fn final_(task: &Task, event: &Event, actor: &Actor) -> Result<(), Refusal> {
    if task.state == State::Done {
        return Err(
            refusal(task, event, actor, "it is done, and done is final".into())
                .hint("file a follow-up with `git loop task add --from ID`"),
        );
    }
    Ok(())
}

/// The states a runner claims a task from: for an agent, a judge or a promotion.
const CLAIMABLE: [State; 5] = [
    State::Ready,
    State::NeedsRework,
    State::QuotaWait,
    State::AwaitingJudge,
    State::Promoting,
];

/// A promotion may start (or find the branch moved) from anything but a running agent, a
/// person's decision or the end.
fn expect_promotable(task: &Task, event: &Event, actor: &Actor) -> Result<(), Refusal> {
    let mut states = CLAIMABLE.to_vec();
    states.push(State::Blocked);
    expect(task, event, actor, &states).map_err(|r| match task.state {
        State::Running => {
            r.hint("an agent works on it; if its runner died, `git loop reap` takes the task back")
        }
        _ => r,
    })
}

/// What moves a task on from where it is: who acts, what they do, and from when. `pending`
/// are the dependencies not done yet. `None` for `done`, which nothing moves.
#[derive(Clone, Debug, PartialEq)]
pub struct Next {
    /// For people: `runs when a worker is free`, `a person decides, then …`.
    pub action: String,
    pub at: Option<Timestamp>,
    /// The events that move the task on from here.
    pub events: &'static [Kind],
}

/// What re-arms `task` (SPEC §1.9: nothing waits without saying what moves it on).
pub fn next(task: &Task, pending: &[&str], now: Timestamp) -> Option<Next> {
    let timer = |what: &str, events: &'static [Kind]| {
        let (action, at) = match task.next_at {
            Some(at) if at > now => (
                format!(
                    "{what} in {}",
                    format_duration(Duration::from_micros((at.0 - now.0) as u64))
                ),
                Some(at),
            ),
            _ => (format!("{what} when a worker is free"), None),
        };
        Next { action, at, events }
    };
    let now_by = |action: String, events: &'static [Kind]| Next {
        action,
        at: None,
        events,
    };
    let waits = || format!("waits for {}", pending.join(", "));
    Some(match task.state {
        State::Done => return None,
        State::Ready | State::NeedsRework | State::QuotaWait if !pending.is_empty() => {
            now_by(waits(), &[Kind::Lease])
        }
        State::Ready => timer("runs", &[Kind::Lease]),
        State::NeedsRework => timer("reworked with the last failure as context", &[Kind::Lease]),
        State::QuotaWait => timer("retries after the quota wait", &[Kind::Lease]),
        State::Running => now_by(
            "the agent runs (no lease: `git loop start` or `git loop reap` takes it back)".into(),
            &[Kind::Completed, Kind::Failed, Kind::Quota, Kind::GiveBack],
        ),
        State::AwaitingJudge => now_by(
            "judged next".into(),
            &[Kind::Approved, Kind::Rejected, Kind::Interrupted],
        ),
        State::Promoting if task.detail.is_some() => timer(
            &format!(
                "promotion resumes (it failed: {})",
                task.detail.as_deref().unwrap_or_default()
            ),
            &[
                Kind::Promoted,
                Kind::Wait,
                Kind::PromotionRefused,
                Kind::PromotionFailed,
                Kind::BranchMoved,
            ],
        ),
        State::Promoting => timer(
            "promotion resumes",
            &[
                Kind::Promoted,
                Kind::Wait,
                Kind::PromotionRefused,
                Kind::PromotionFailed,
                Kind::BranchMoved,
            ],
        ),
        State::Blocked => match task.reason {
            Some(Reason::ThinTask) => now_by(
                "a person edits it (`git loop task edit`) to re-arm it".into(),
                &[Kind::Edited, Kind::Reopen],
            ),
            Some(Reason::Untrusted) => now_by(
                "a person whose key [trust] signers lists signs an edit or a reopen of it \
                 (`git loop task reopen` with commit.gpgSign on)"
                    .into(),
                &[Kind::Edited, Kind::Reopen],
            ),
            Some(Reason::Conflict | Reason::VerifyFailed) if !pending.is_empty() => now_by(
                format!("{}; then its promotion resumes", waits()),
                &[Kind::Unblocked],
            ),
            Some(Reason::Conflict | Reason::VerifyFailed) => {
                now_by("its promotion resumes".into(), &[Kind::Unblocked])
            }
            Some(Reason::AttemptsExhausted) => {
                timer("next round of attempts (or escalation)", &[Kind::CooledOff])
            }
            Some(Reason::PromotionRefused) => now_by(
                "a new commit on its branch (judged again) or `git loop task reopen`".into(),
                &[Kind::BranchMoved, Kind::Reopen],
            ),
            _ => now_by(
                "a person looks (`git loop task reopen`)".into(),
                &[Kind::Reopen],
            ),
        },
        State::HumanGated => now_by(
            "a person decides, then `git loop task reopen`".into(),
            &[Kind::Reopen],
        ),
        State::Cancelled => now_by(
            "nothing (`git loop task reopen` brings it back)".into(),
            &[Kind::Reopen],
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small seeded generator (xorshift64*): the same seed, the same sequence.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len() as u64) as usize]
        }
    }

    const ALL: [Kind; 22] = [
        Kind::Lease,
        Kind::Completed,
        Kind::Failed,
        Kind::Quota,
        Kind::GiveBack,
        Kind::Approved,
        Kind::Rejected,
        Kind::Interrupted,
        Kind::Promote,
        Kind::BranchMoved,
        Kind::Wait,
        Kind::PromotionRefused,
        Kind::Escalate,
        Kind::PromotionFailed,
        Kind::Promoted,
        Kind::Unblocked,
        Kind::CooledOff,
        Kind::Cancel,
        Kind::Gate,
        Kind::Reopen,
        Kind::Edited,
        Kind::Untrusted,
    ];

    /// The events the loop itself makes, without a person's or a stop's (a stop and an agent
    /// that cannot start give their attempt back: a person, or the breaker, bounds those).
    const LOOP: [Kind; 16] = [
        Kind::Lease,
        Kind::Completed,
        Kind::Failed,
        Kind::Quota,
        Kind::Approved,
        Kind::Rejected,
        Kind::Interrupted,
        Kind::Escalate,
        Kind::BranchMoved,
        Kind::Wait,
        Kind::PromotionRefused,
        Kind::PromotionFailed,
        Kind::Promoted,
        Kind::Unblocked,
        Kind::CooledOff,
        Kind::Untrusted,
    ];

    fn budget() -> Budget {
        Budget {
            retry: RetrySection {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
                multiplier: 2.0,
                max_attempts: 3,
                same_signature: 2,
                escalate_after: 2,
                cooloff: Duration::from_secs(600),
            },
            quota_cooldown: Duration::from_secs(10),
        }
    }

    fn task() -> Task {
        Task::new(
            "0123456789abcdef0123456789abcdef".into(),
            "a task".into(),
            "a body".into(),
            "default".into(),
            None,
        )
    }

    fn failure(rng: &mut Rng) -> Failure {
        let sig = format!("transient:agent:{}", rng.below(3));
        Failure {
            how: "stalled".into(),
            summary: "no output".into(),
            signature: sig,
            context: "it stalled".into(),
        }
    }

    /// An event of `kind` with random contents.
    fn event(kind: Kind, rng: &mut Rng) -> Event {
        match kind {
            Kind::Lease => Event::Lease {
                deps_done: rng.below(4) != 0,
            },
            Kind::Completed => Event::Completed,
            Kind::Failed => Event::Failed(failure(rng)),
            Kind::Quota => Event::Quota,
            Kind::GiveBack => {
                Event::GiveBack(*rng.pick(&[GiveBack::Stopped, GiveBack::NotStarted]))
            }
            Kind::Approved => Event::Approved {
                head: format!("{:040x}", rng.below(3)),
                summary: "approved".into(),
            },
            Kind::Rejected => Event::Rejected(failure(rng)),
            Kind::Interrupted => Event::Interrupted {
                why: "the runner died".into(),
            },
            Kind::Escalate => Event::Escalate {
                why: "its follow-up fails as it did".into(),
            },
            Kind::Promote => Event::Promote {
                approve: (rng.below(2) == 0).then(|| (format!("{:040x}", rng.below(3)), 1)),
            },
            Kind::BranchMoved => Event::BranchMoved {
                detail: "moved".into(),
            },
            Kind::Wait => Event::Wait {
                reason: *rng.pick(&[Reason::Conflict, Reason::VerifyFailed, Reason::Gated]),
                on: "fedcba9876543210fedcba9876543210".into(),
                detail: "a follow-up".into(),
            },
            Kind::PromotionRefused => Event::PromotionRefused {
                detail: "refused".into(),
            },
            Kind::PromotionFailed => Event::PromotionFailed {
                signature: "transient:promote:1".into(),
                line: "failed".into(),
            },
            Kind::Promoted => Event::Promoted {
                commit: format!("{:040x}", rng.below(2)),
            },
            Kind::Unblocked => Event::Unblocked {
                by: "fedcba9876543210fedcba9876543210".into(),
            },
            Kind::CooledOff => Event::CooledOff,
            Kind::Cancel => Event::Cancel,
            Kind::Gate => Event::Gate {
                reason: "a person looks".into(),
            },
            Kind::Reopen => Event::Reopen {
                thin: (rng.below(3) == 0).then(|| "thin".to_string()),
            },
            Kind::Edited => Event::Edited {
                what: "edit: body".into(),
                thin: (rng.below(2) == 0).then(|| "thin".to_string()),
            },
            Kind::Untrusted => Event::Untrusted {
                why: "signed by no listed key".into(),
            },
        }
    }

    fn actor(kind: Kind) -> Actor {
        match kind {
            Kind::Cancel | Kind::Gate | Kind::Reopen | Kind::Edited => Actor::Person,
            _ => Actor::Runner("runner-1".into()),
        }
    }

    /// A clock that goes forward by up to an hour per step, so that timers pass.
    fn tick(rng: &mut Rng, now: &mut Timestamp) -> Clock {
        *now = now.plus(Duration::from_millis(rng.below(3_600_000)));
        Clock {
            now: *now,
            jitter: rng.below(1001) as f64 / 1000.0,
        }
    }

    #[test]
    fn random_event_sequences_never_leave_done_nor_overwrite_a_persons_decision() {
        let budget = budget();
        for seed in 1..=300u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut t = task();
            let mut now = Timestamp(1_800_000_000_000_000);
            for _ in 0..300 {
                let kind = *rng.pick(&ALL);
                let e = event(kind, &mut rng);
                let clock = tick(&mut rng, &mut now);
                let by = actor(kind);
                let before = t.clone();
                let Ok(next) = apply(&t, &e, &by, &budget, clock) else {
                    continue;
                };
                if before.state == State::Done {
                    assert_eq!(next.task, before, "seed {seed}: {e:?} changed a done task");
                }
                let persons = matches!(before.state, State::Cancelled | State::HumanGated);
                if persons && by != Actor::Person {
                    assert_eq!(
                        next.task.state, before.state,
                        "seed {seed}: {e:?} by the loop moved a task a person holds"
                    );
                }
                t = next.task;
            }
        }
    }

    #[test]
    fn an_agents_run_may_change_no_task() {
        let budget = budget();
        let mut rng = Rng(7);
        let agent = Actor::Agent {
            task: "0123456789abcdef0123456789abcdef".into(),
            run: "1".into(),
        };
        for kind in ALL {
            let e = event(kind, &mut rng);
            let refused = apply(&task(), &e, &agent, &budget, Clock::now());
            let err = refused.expect_err("refused");
            assert_eq!(err.0.class, Class::Policy, "{e:?}");
        }
    }

    #[test]
    fn random_loop_events_stay_within_the_budgets() {
        let budget = budget();
        let r = &budget.retry;
        let rounds = r.escalate_after.max(1);
        // Quota waits double from quota_cooldown up to the cap; one more hit ends the round.
        let cap = r.max.max(budget.quota_cooldown);
        let mut waits = 1u32;
        while budget.quota_cooldown * (1 << (waits - 1)) < cap {
            waits += 1;
        }
        for seed in 1..=500u64 {
            let mut rng = Rng(seed.wrapping_mul(0xd1b5_4a32_d192_ed03));
            let mut t = task();
            let mut now = Timestamp(1_800_000_000_000_000);
            let (mut runs, mut quota_runs, mut judged) = (0u32, 0u32, 0u32);
            for _ in 0..2000 {
                let kind = *rng.pick(&LOOP);
                let e = event(kind, &mut rng);
                let clock = tick(&mut rng, &mut now);
                let Ok(next) = apply(&t, &e, &actor(kind), &budget, clock) else {
                    continue;
                };
                match kind {
                    Kind::Lease => runs += 1,
                    Kind::Quota => quota_runs += 1,
                    Kind::Approved | Kind::Rejected | Kind::Interrupted => judged += 1,
                    _ => {}
                }
                if let Some(wait) = next.backoff
                    && matches!(kind, Kind::Failed | Kind::Rejected)
                {
                    let cap = crate::retry::backoff_cap(r, t.attempts.max(1));
                    assert!(
                        wait <= cap,
                        "seed {seed}: backoff {wait:?} over the cap {cap:?}"
                    );
                }
                if next.task.state != State::Running {
                    assert!(
                        t.attempts <= r.max_attempts,
                        "seed {seed}: attempt {} of {}",
                        t.attempts,
                        r.max_attempts
                    );
                }
                t = next.task;
            }
            assert!(
                runs - quota_runs <= r.max_attempts * rounds,
                "seed {seed}: {runs} runs ({quota_runs} quota hits), budget {} × {rounds}",
                r.max_attempts
            );
            assert!(
                judged <= (r.max_attempts + 1) * rounds,
                "seed {seed}: judged {judged} times, budget {} × {rounds}",
                r.max_attempts
            );
            assert!(
                quota_runs <= rounds * waits,
                "seed {seed}: {quota_runs} quota hits, {waits} waits a round"
            );
        }
    }

    #[test]
    fn every_state_but_done_says_what_moves_it_on_and_that_event_is_allowed() {
        let budget = budget();
        let mut seen = std::collections::HashSet::new();
        for seed in 1..=300u64 {
            let mut rng = Rng(seed * 31 + 5);
            let mut t = task();
            let mut now = Timestamp(1_800_000_000_000_000);
            for _ in 0..200 {
                if t.state != State::Done {
                    let next = next(&t, &[], now).expect("a next step");
                    assert!(!next.action.is_empty());
                    assert!(!next.events.is_empty(), "{:?}", t.state);
                    if matches!(t.state, State::Blocked | State::HumanGated) {
                        assert!(t.reason.is_some(), "{} without a reason", t.state);
                    }
                    // Once its time has come, one of the events named is accepted.
                    let at = t.next_at.map_or(now, |a| a.max(now));
                    let clock = Clock {
                        now: at,
                        jitter: 0.5,
                    };
                    let accepted = next.events.iter().any(|k| {
                        (0..8).any(|_| {
                            let mut e = event(*k, &mut rng);
                            if let Event::Lease { deps_done } = &mut e {
                                *deps_done = true;
                            }
                            apply(&t, &e, &actor(*k), &budget, clock).is_ok()
                        })
                    });
                    assert!(
                        accepted,
                        "seed {seed}: nothing moves {} on",
                        t.state_label()
                    );
                    seen.insert(t.state);
                }
                let kind = *rng.pick(&ALL);
                let e = event(kind, &mut rng);
                let clock = tick(&mut rng, &mut now);
                if let Ok(next) = apply(&t, &e, &actor(kind), &budget, clock) {
                    t = next.task;
                }
            }
        }
        assert!(seen.len() >= 9, "the walk reached {seen:?}");
    }

    #[test]
    fn the_same_failure_goes_to_rework_then_ends_the_round() {
        let budget = Budget {
            retry: RetrySection {
                max_attempts: 10,
                same_signature: 2,
                ..budget().retry
            },
            ..budget()
        };
        let runner = Actor::Runner("r".into());
        let fail = Failure {
            how: "transient".into(),
            summary: "boom".into(),
            signature: "transient:agent:1".into(),
            context: "boom".into(),
        };
        let mut t = task();
        let mut now = Timestamp(1_800_000_000_000_000);
        let mut step = |t: &mut Task, e: Event| {
            now = now.plus(Duration::from_secs(3600));
            let clock = Clock { now, jitter: 1.0 };
            *t = apply(t, &e, &runner, &budget, clock).expect("allowed").task;
        };
        step(&mut t, Event::Lease { deps_done: true });
        step(&mut t, Event::Failed(fail.clone()));
        assert_eq!(t.state, State::Ready, "a first failure is retried");
        step(&mut t, Event::Lease { deps_done: true });
        step(&mut t, Event::Failed(fail.clone()));
        assert_eq!(
            t.state,
            State::NeedsRework,
            "the same failure twice: rework"
        );
        assert!(t.next_at.is_some(), "a rework waits its backoff too");
        step(&mut t, Event::Lease { deps_done: true });
        assert!(t.rework);
        step(&mut t, Event::Failed(fail));
        assert!(
            t.is(State::Blocked, Reason::AttemptsExhausted),
            "the rework failed the same way: {}",
            t.state_label()
        );
        assert_eq!(t.rounds, 1);
    }

    #[test]
    fn a_lease_waits_for_its_time_and_its_dependencies() {
        let budget = budget();
        let runner = Actor::Runner("r".into());
        let mut t = task();
        t.next_at = Some(Timestamp(2_000));
        let at = |now| Clock {
            now: Timestamp(now),
            jitter: 0.0,
        };
        let lease = Event::Lease { deps_done: true };
        assert!(apply(&t, &lease, &runner, &budget, at(1_000)).is_err());
        let blocked = Event::Lease { deps_done: false };
        assert!(apply(&t, &blocked, &runner, &budget, at(3_000)).is_err());
        let ran = apply(&t, &lease, &runner, &budget, at(3_000)).expect("leased");
        assert_eq!(ran.task.state, State::Running);
        assert_eq!(ran.task.attempts, 1);
    }
}

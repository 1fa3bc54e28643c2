//! Promotion (SPEC §7): one idempotent, resumable attempt to bring a task's approved commit into
//! the target branch.
//!
//! The phases are `preflight → push_source → merge → push_target → verify → cleanup →
//! delete_remote_branch → done`. Each observes the world before acting, and each is recorded as
//! a checkpoint commit on `refs/loop/promote/<id>` (written by compare-and-swap) after it acts,
//! so that no phase does two irreversible things without a checkpoint between them. A process
//! killed at any instant and run again converges on one merge and the same final target.

use crate::ids::short;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use gix::ObjectId;

mod checkpoint;
mod cleanup;
mod done;
mod dry_run;
mod merge;
mod preflight;
mod push;
mod verify;

use checkpoint::Chain;
pub use checkpoint::Record;
pub use done::rearm_waiting;

use crate::error::{Class, LoopError};
use crate::finish_line::Frozen;
use crate::gate;
use crate::git::cli::{Git, MergeTree, PROMOTE_ENV, Push, PushedRef};
use crate::git::{Cas, CasOutcome, Repo, oid, tracking_ref};
use crate::policy::{Policy, Strategy};
use crate::rescue::{rescue_files, rescue_worktree, save_rescue, worktree_link_valid};
use crate::store::Store;
use crate::task::machine::{self, Actor, Budget, Event};
use crate::task::{Reason, State, Task};
use crate::time::Timestamp;

/// Set to `<phase>:before` or `<phase>:after` to make promotion SIGKILL itself there (tests).
pub const CRASH_ENV: &str = "GIT_LOOP_CRASH_AT";

/// The remote targets this process last saw — by its own fetch or its own target push — and
/// when, by repository, remote and target. A promotion that starts within [`SEEN_FRESH`] of
/// that, with the remote-tracking ref unchanged, builds on it without fetching again (a runner
/// promoting one task after another fetched once per task before): its target push carries a
/// lease on that value, so a remote that moved meanwhile fails the push as `transient`, and
/// that failure fetches before the next try.
static SEEN: std::sync::LazyLock<std::sync::Mutex<Seen>> =
    std::sync::LazyLock::new(Default::default);

/// (common dir, remote, target) → (tip, when seen).
type Seen = std::collections::HashMap<(PathBuf, String, String), (ObjectId, std::time::Instant)>;

/// How long a remote target seen by this process counts as observed.
const SEEN_FRESH: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Preflight,
    PushSource,
    Merge,
    PushTarget,
    Verify,
    Cleanup,
    DeleteRemoteBranch,
    Done,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Preflight,
        Phase::PushSource,
        Phase::Merge,
        Phase::PushTarget,
        Phase::Verify,
        Phase::Cleanup,
        Phase::DeleteRemoteBranch,
        Phase::Done,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Preflight => "preflight",
            Phase::PushSource => "push_source",
            Phase::Merge => "merge",
            Phase::PushTarget => "push_target",
            Phase::Verify => "verify",
            Phase::Cleanup => "cleanup",
            Phase::DeleteRemoteBranch => "delete_remote_branch",
            Phase::Done => "done",
        }
    }
}

#[derive(Clone)]
pub struct Options {
    pub dry_run: bool,
    /// Who promotes: a runner id, or the person's name.
    pub by: String,
    /// Who acts, for the state machine: the runner, or a person.
    pub actor: Actor,
    /// A runner's lease on the task, released with the task's move to `done`.
    pub release: Option<Release>,
    /// The runner's stop flag: a stop ends the verify or gate commands that run.
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// A lease to release when the task is done: the one held by `runner` for run `run`.
#[derive(Clone, Debug)]
pub struct Release {
    pub runner: String,
    pub run: String,
}

/// What a promotion attempt ended with (failures are errors with their class).
#[derive(Debug)]
pub enum Outcome {
    AlreadyPromoted { merge: Option<String> },
    Promoted { merge: String, notes: Vec<String> },
    DryRun { plan: Vec<String> },
}

/// How many times a promotion by hand looks at a task's lease before it gives up on a race.
const LEASE_LOOKS: u32 = 3;

/// How many times one promotion builds its merge on a remote target that others keep moving.
const TARGET_RACES: u32 = 8;

/// Runs one promotion attempt of task `id` (a full id).
pub fn promote(repo: &Repo, policy: &Policy, id: &str, options: &Options) -> Result<Outcome> {
    // A promotion by hand of a task another holder has (a runner's agent, judge or
    // promotion) would pull the work from under it: busy, naming the holder. One that goes
    // ahead holds the task's lease while it runs, so that no runner claims the task meanwhile
    // (and if it dies, its lease is reaped like any holder's, or taken over by the next
    // promotion by hand).
    let hand = match (&options.release, options.dry_run) {
        (None, false) => Some(HandLease::take(repo, id)?),
        (None, true) => {
            refuse_a_live_holder(repo, id)?;
            None
        }
        _ => None,
    };
    let options = Options {
        release: options
            .release
            .clone()
            .or_else(|| hand.as_ref().map(HandLease::release)),
        ..options.clone()
    };
    let outcome = promote_holding(repo, policy, id, &options);
    if let Some(hand) = hand {
        hand.drop_if_held(repo);
    }
    outcome
}

/// The lease a promotion by hand takes for its duration.
struct HandLease {
    runner: String,
    run: String,
    id: String,
}

impl HandLease {
    fn take(repo: &Repo, id: &str) -> Result<HandLease> {
        let runner = format!("promote-{}-{}", crate::process::host(), std::process::id());
        let run = format!("{:013}", Timestamp::now().0 / 1000);
        let lease = crate::lease::Lease::new(
            id,
            &runner,
            &run,
            crate::lease::Purpose::Promote,
            Duration::from_secs(24 * 3600),
        );
        let new = lease.commit(repo)?;
        let name = crate::refs::lease(id);
        // A lost race decides again from what won it: with a shared remote, the view here
        // may have been behind (a promotion killed after the remote took its lease).
        for look in 1..=LEASE_LOOKS {
            let edit = match crate::lease::read(repo, id)? {
                None => Cas::Create {
                    name: name.clone(),
                    new,
                },
                // A promotion by hand that died: this one carries on from its checkpoints.
                Some((old, Ok(l))) if l.runner.starts_with("promote-") && l.holder_dead() => {
                    Cas::Update {
                        name: name.clone(),
                        old,
                        new,
                    }
                }
                Some(_) => {
                    refuse_a_live_holder(repo, id)?;
                    // The lease went between the two looks: try again.
                    return Err(LoopError::new(
                        Class::Transient,
                        format!(
                            "the lease of task {} changed while the promotion started",
                            short(id)
                        ),
                    )
                    .into());
                }
            };
            if repo.cas(&[edit])? == CasOutcome::Applied {
                return Ok(HandLease {
                    runner,
                    run,
                    id: id.to_string(),
                });
            }
            if look == LEASE_LOOKS {
                // Someone took it between the look and now.
                refuse_a_live_holder(repo, id)?;
            }
        }
        Err(LoopError::new(
            Class::Busy,
            format!("task {} was leased while the promotion started", short(id)),
        )
        .into())
    }

    fn release(&self) -> Release {
        Release {
            runner: self.runner.clone(),
            run: self.run.clone(),
        }
    }

    /// Deletes the lease if the promotion did not (it goes with `done`).
    fn drop_if_held(self, repo: &Repo) {
        if let Ok(Some((tip, Ok(l)))) = crate::lease::read(repo, &self.id)
            && l.runner == self.runner
            && l.run == self.run
        {
            let _ = repo.cas(&[Cas::Delete {
                name: crate::refs::lease(&self.id),
                old: tip,
            }]);
        }
    }
}

fn promote_holding(repo: &Repo, policy: &Policy, id: &str, options: &Options) -> Result<Outcome> {
    // One promotion of a task at a time. The kernel releases the lock when its holder dies, so
    // while we hold it, a lock left on this task's checkpoint ref is a dead writer's.
    let _held = if options.dry_run {
        None
    } else {
        let lock = lock_promotion(repo, id)?;
        repo.remove_stale_lock(&crate::refs::promote(id), Duration::ZERO);
        // Promotions into one target on this machine queue up rather than race each other's
        // compare-and-swap on it.
        let queue = lock_target(repo, &policy.loop_.target)?;
        Some((lock, queue))
    };
    let store = Store::new(repo);
    let task = store.load(id)?.task;
    let chain = Chain::load(repo, id)?;
    if let Some(rec) = &chain.rec
        && rec.has(Phase::Done)
    {
        return Ok(Outcome::AlreadyPromoted {
            merge: rec.merge.clone(),
        });
    }
    match task.state {
        State::Cancelled | State::HumanGated => {
            return Err(policy_error(format!(
                "task {} is {}: a person decided so",
                short(id),
                task.state_label()
            ))
            .with_hint("`git loop task reopen` it first")
            .into());
        }
        State::Done if chain.rec.is_none() => {
            return Err(policy_error(format!(
                "task {} is done; there is nothing to promote",
                short(id)
            ))
            .into());
        }
        _ => {}
    }
    let workdir = repo.workdir().map(Path::to_path_buf);
    let git = Git::new(
        workdir
            .clone()
            .unwrap_or_else(|| repo.common_dir().to_path_buf()),
        !repo.has_identity(),
    )
    .with_env(PROMOTE_ENV, id)
    .locking_worktrees(repo.common_dir());
    let mut p = Promotion {
        repo,
        policy,
        store,
        git,
        id: id.to_string(),
        task,
        chain,
        notes: Vec::new(),
        by: options.by.clone(),
        actor: options.actor.clone(),
        budget: Budget::from(policy),
        frozen: None,
        stop: options.stop.clone(),
        sandbox: crate::sandbox::Sandbox::for_policy(repo, policy)?,
        remote_tip: None,
        skipped: Vec::new(),
        release: options.release.clone(),
    };
    if options.dry_run {
        return p.dry_run();
    }
    p.run()
}

struct Promotion<'r> {
    repo: &'r Repo,
    policy: &'r Policy,
    store: Store<'r>,
    git: Git,
    id: String,
    task: Task,
    chain: Chain<'r>,
    notes: Vec<String>,
    by: String,
    actor: Actor,
    budget: Budget,
    /// The finish line from the pin, once preflight found the target to match it.
    frozen: Option<Frozen>,
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Where gates and verify commands run.
    sandbox: crate::sandbox::Sandbox,
    /// The remote target's tip as fetched in this run (one fetch per run: pushes carry a lease,
    /// so a stale view can only lose a race, never overwrite anything).
    remote_tip: Option<ObjectId>,
    /// Phases found to have nothing to do, with why, not yet in a checkpoint: the next
    /// checkpoint records them before its own phase. Whether a phase has nothing to do depends
    /// on the policy alone, so a run killed before that checkpoint finds the same again.
    skipped: Vec<(Phase, String)>,
    /// The runner's lease to delete in the transaction that marks the task done.
    release: Option<Release>,
}

impl Promotion<'_> {
    fn run(&mut self) -> Result<Outcome> {
        self.preflight()?;
        self.push_source()?;
        // Another promotion (another runner, another clone) that moved the remote target
        // between this one's merge and its push is no failure: the merge is built again on the
        // new tip and pushed, a few times, with a growing random pause between tries. The
        // push phase drops the recorded merge exactly when the target moved.
        for race in 1.. {
            self.merge()?;
            match self.push_target() {
                Err(_) if !self.rec().has(Phase::Merge) && race < TARGET_RACES => {
                    let pause = 10 * u64::from(race);
                    std::thread::sleep(std::time::Duration::from_millis(
                        pause + crate::rand::below_or_equal(pause),
                    ));
                }
                pushed => {
                    pushed?;
                    break;
                }
            }
        }
        self.verify()?;
        self.cleanup()?;
        self.delete_remote_branch()?;
        self.done()?;
        Ok(Outcome::Promoted {
            merge: self.rec().merge.clone().unwrap_or_default(),
            notes: std::mem::take(&mut self.notes),
        })
    }

    fn rec(&self) -> &Record {
        self.chain
            .rec
            .as_ref()
            .expect("preflight writes the first checkpoint")
    }

    fn short(&self) -> &str {
        short(&self.id)
    }

    fn target(&self) -> &str {
        &self.policy.loop_.target
    }

    fn remote(&self) -> Option<&str> {
        self.policy.loop_.remote.as_deref()
    }

    fn target_ref(&self) -> String {
        format!("refs/heads/{}", self.target())
    }

    fn branch_ref(&self) -> String {
        format!("refs/heads/{}", self.task.branch)
    }

    fn source(&self) -> Result<ObjectId> {
        oid(&self.rec().source)
    }

    /// Records that `phase` is done (or was observed done), with `message` saying how.
    fn checkpoint(
        &mut self,
        phase: Phase,
        message: &str,
        edit: impl FnOnce(&mut Record),
        keep: &[ObjectId],
    ) -> Result<()> {
        self.record(
            &format!("{}: {message}", phase.name()),
            |rec| {
                edit(rec);
                if !rec.has(phase) {
                    rec.completed.push(phase.name().to_string());
                }
            },
            keep,
        )
    }

    /// Notes a phase that has nothing to do; the next checkpoint records it.
    fn skip(&mut self, phase: Phase, why: &str) -> Result<()> {
        crash_point(phase, "after");
        self.skipped.push((phase, why.to_string()));
        Ok(())
    }

    /// Records a step within a phase, without marking any phase done (phases skipped since
    /// the last checkpoint are marked done first).
    fn record(
        &mut self,
        message: &str,
        edit: impl FnOnce(&mut Record),
        keep: &[ObjectId],
    ) -> Result<()> {
        let mut rec = self.rec().clone();
        let mut said: Vec<String> = Vec::new();
        for (phase, why) in &self.skipped {
            if !rec.has(*phase) {
                rec.completed.push(phase.name().to_string());
            }
            said.push(format!("{}: skipped: {why}", phase.name()));
        }
        said.push(message.to_string());
        edit(&mut rec);
        rec.updated = Timestamp::now();
        rec.by = self.by.clone();
        self.chain.write(rec, &said.join("; "), keep)?;
        self.skipped.clear();
        Ok(())
    }

    /// The finish line from the pin (see [`crate::finish_line::frozen`]), read on first use
    /// against the target as this run last saw it.
    fn frozen(&self) -> Result<&Frozen> {
        self.frozen.as_ref().ok_or_else(|| {
            anyhow::anyhow!("the finish line is read by preflight, which has not run")
        })
    }

    /// Reads the finish line from the pin, against the target as this run sees it now.
    fn freeze(&mut self) -> Result<()> {
        self.target_tip()?;
        self.frozen = Some(crate::finish_line::frozen(self.repo, self.policy)?);
        Ok(())
    }

    /// Moves the task by `event` through the state machine, from the state read; the task as
    /// it is now is kept.
    fn transition(&mut self, event: Event) -> Result<()> {
        let moved =
            self.store
                .transition(&self.id, &event, &self.actor, &self.budget, |_, _| Ok(()))?;
        self.task = moved.task;
        Ok(())
    }

    /// Refuses to go on with an irreversible step when the task is no longer being promoted (a
    /// person cancelled or gated it meanwhile): their decision stands.
    fn still_promoting(&mut self) -> Result<()> {
        let task = self.store.load(&self.id)?.task;
        if task.state == State::Promoting {
            self.task = task;
            return Ok(());
        }
        Err(machine::Refusal::withdrawn(format!(
            "task {}: the promotion stops before {}: the task is {} now",
            self.short(),
            if self.rec().has(Phase::Merge) {
                "pushing"
            } else {
                "merging"
            },
            task.state_label()
        ))
        .into())
    }

    // ---- helpers --------------------------------------------------------------------------

    /// Runs `commands` in a temporary detached worktree at `commit`, removed afterwards.
    fn run_in_temp_worktree(
        &self,
        commit: ObjectId,
        commands: &[Vec<String>],
        timeout: Duration,
    ) -> Result<Vec<gate::CommandResult>> {
        gate::run_at(
            self.repo,
            &self.git,
            commit,
            self.frozen()?,
            commands,
            self.short(),
            gate::Limits {
                timeout,
                started: &|_| {},
                stop: self.stop.as_deref(),
                sandbox: Some(&self.sandbox),
            },
        )
    }
}

enum Advance {
    Moved,
    AlreadyThere,
    LeftDirty(PathBuf),
    Diverged,
    /// A checkout is rebasing the target, or merging, cherry-picking or reverting onto it.
    Busy(PathBuf, &'static str),
}

/// A promotion by hand of a task that another holder has leased — a runner's agent works on
/// it, or a judge or promotion — would pull the work out from under it: busy (exit 6), naming
/// the holder.
fn refuse_a_live_holder(repo: &Repo, id: &str) -> Result<()> {
    let Some((_, lease)) = crate::lease::read(repo, id)? else {
        return Ok(());
    };
    let (who, hint) = match lease {
        Ok(l) if l.holder_dead() || l.expired(Timestamp::now()) => (
            format!(
                "{} ({}), which is gone or expired, for {}",
                l.runner,
                l.holder.describe(),
                l.purpose
            ),
            "`git loop reap` takes the task back; then promote it".to_string(),
        ),
        Ok(l) => (
            format!(
                "{} ({}) for {}, until {}",
                l.runner,
                l.holder.describe(),
                l.purpose,
                l.expires.to_rfc3339()
            ),
            "let it finish, or `git loop task cancel` / `git loop stop` first".to_string(),
        ),
        Err(why) => (
            format!("an unreadable lease ({why})"),
            "`git loop reap` takes the task back; then promote it".to_string(),
        ),
    };
    Err(LoopError::new(
        Class::Busy,
        format!("task {} is leased to {who}", short(id)),
    )
    .with_hint(hint)
    .into())
}

/// Waits for, then holds, the OS lock that queues promotions into `target` on this machine.
fn lock_target(repo: &Repo, target: &str) -> Result<std::fs::File> {
    let name: String = target
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    crate::lockfile::wait(&crate::lockfile::path(
        repo.common_dir(),
        &format!("target-{name}"),
    ))
}

/// Takes the OS lock that serialises promotions of task `id`.
fn lock_promotion(repo: &Repo, id: &str) -> Result<std::fs::File> {
    crate::lockfile::try_take(&promotion_lock_path(repo, id))?.ok_or_else(|| {
        LoopError::new(
            Class::Transient,
            format!("another promotion of task {} is running", short(id)),
        )
        .with_hint("let it finish; run the promotion again to see where it stands")
        .into()
    })
}

/// The commit a promotion of task `id` that runs right now is pushing to the target: the
/// merge its checkpoint recorded, while its lock is held (by the promoting process) and its
/// target push is not recorded yet. `None` otherwise — whatever an environment says.
pub fn pushing(repo: &Repo, id: &str) -> Result<Option<ObjectId>> {
    if !crate::ids::is_full_id(id) || repo.read_ref(&crate::refs::task(id))?.is_none() {
        return Ok(None);
    }
    let held = crate::lockfile::try_take(&promotion_lock_path(repo, id))?.is_none();
    if !held {
        return Ok(None);
    }
    let chain = Chain::load(repo, id)?;
    Ok(chain.rec.and_then(|r| {
        (r.has(Phase::Merge) && !r.has(Phase::PushTarget))
            .then(|| r.merge.as_deref().and_then(|m| oid(m).ok()))
            .flatten()
    }))
}

/// The lock a promotion of task `id` holds while it runs.
pub fn promotion_lock_path(repo: &Repo, id: &str) -> std::path::PathBuf {
    crate::lockfile::path(repo.common_dir(), &format!("promote-{id}"))
}

/// Refuses while the breaker is open or paused, or cannot be read (SPEC §5): exit 7.
fn check_breaker(repo: &Repo) -> Result<()> {
    crate::breaker::read(repo)?
        .1
        .refuse_unless_admitting("the promotion")
}

fn crash_point(phase: Phase, when: &str) {
    crash_at(|| format!("{}:{when}", phase.name()));
}

/// Dies by SIGKILL when [`CRASH_ENV`] names the point `point()` describes.
pub fn crash_at(point: impl FnOnce() -> String) {
    if let Some(spec) = std::env::var_os(CRASH_ENV)
        && spec.to_string_lossy() == point()
    {
        crate::process::signal_process(std::process::id(), crate::process::Signal::Kill);
        std::process::abort();
    }
}

fn policy_error(message: impl Into<String>) -> LoopError {
    LoopError::new(Class::Policy, message)
}

fn one_line(s: &str) -> String {
    crate::output::safe(s.lines().next().unwrap_or_default(), false)
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

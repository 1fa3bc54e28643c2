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

use checkpoint::Chain;
pub use checkpoint::Record;

use crate::error::{Class, LoopError};
use crate::gate;
use crate::git::cli::{Git, MergeTree, PROMOTE_ENV, Push, PushedRef};
use crate::git::{Cas, CasOutcome, Repo, oid, tracking_ref};
use crate::policy::{PROTECTED_SECTIONS, Policy, Strategy};
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

pub struct Options {
    pub dry_run: bool,
    /// Who promotes: a runner id, or the person's name.
    pub by: String,
    /// Who acts, for the state machine: the runner, or a person.
    pub actor: Actor,
    /// A runner's lease on the task, released with the task's move to `done`.
    pub release: Option<Release>,
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

/// Runs one promotion attempt of task `id` (a full id).
pub fn promote(repo: &Repo, policy: &Policy, id: &str, options: &Options) -> Result<Outcome> {
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
    if options.release.is_none() {
        refuse_a_live_holder(repo, id)?;
    }
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
        self.merge()?;
        self.push_target()?;
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

    // ---- preflight ------------------------------------------------------------------------

    fn preflight(&mut self) -> Result<()> {
        crash_point(Phase::Preflight, "before");
        if let Some(remote) = self.remote()
            && !self.repo.remote_names().iter().any(|r| r == remote)
        {
            return Err(LoopError::new(
                Class::Config,
                format!("policy.toml names the remote {remote:?}, but this repository has no such remote"),
            )
            .with_hint(format!("add it with `git remote add {remote} URL`, or remove loop.remote"))
            .into());
        }
        check_breaker(self.repo)?;
        if self.task.is(State::Blocked, Reason::Conflict)
            || self.task.is(State::Blocked, Reason::VerifyFailed)
        {
            let listed = self.store.list()?;
            let graph =
                crate::graph::Graph::new(listed.iter().filter_map(|l| l.task.as_ref().ok()));
            let pending: Vec<String> = graph
                .pending_deps(&self.task)
                .iter()
                .map(|d| short(d).to_string())
                .collect();
            if !pending.is_empty() {
                return Err(policy_error(format!(
                    "task {} is blocked ({}) and waits for task {}",
                    self.short(),
                    self.task.state_label(),
                    pending.join(", ")
                ))
                .with_hint("its promotion resumes when that task is done")
                .into());
            }
        }
        let target_tip = self.target_tip()?;
        self.check_manifest(target_tip)?;

        // Which commit this promotion is for. A recorded promotion goes on with its source,
        // unless it has not merged yet and the branch or its approval has moved on since (the
        // task was reworked): then it starts over from the branch head.
        let head = self.repo.read_ref(&self.branch_ref())?;
        let merged = self.chain.rec.as_ref().is_some_and(|r| r.has(Phase::Merge));
        let recorded = match &self.chain.rec {
            Some(_) => Some(self.source()?),
            None => None,
        };
        let approved_is = |c: ObjectId| {
            self.task
                .approved
                .as_deref()
                .is_none_or(|a| oid(a).ok() == Some(c))
        };
        let (source, fresh) = match (recorded, head) {
            (Some(src), _) if merged => (src, false),
            (Some(src), Some(h)) if h == src && approved_is(src) => (src, false),
            (Some(src), None) => (src, false),
            (_, Some(h)) => (h, true),
            (None, None) => {
                return Err(policy_error(format!(
                    "task {} has no branch {}: there is nothing to promote",
                    self.short(),
                    self.task.branch
                ))
                .into());
            }
        };
        if fresh
            && self.repo.is_ancestor(source, target_tip)?
            && self
                .task
                .approved
                .as_deref()
                .is_none_or(|a| oid(a).ok() != Some(source))
        {
            // (An approved head that is already in the target is finished, not refused.)
            return Err(policy_error(format!(
                "{} has no commits beyond {}: there is nothing to promote",
                self.task.branch,
                self.target()
            ))
            .into());
        }
        if !merged {
            self.check_frozen_finish_line(target_tip, source)?;
        }
        if fresh {
            self.approve(source)?;
        }
        self.set_task_promoting()?;
        if fresh {
            let rec = Record {
                task: self.id.clone(),
                strategy: self.policy.promote.strategy.as_str().to_string(),
                target: self.target().to_string(),
                remote: self.remote().map(str::to_string),
                source: source.to_string(),
                completed: vec![Phase::Preflight.name().to_string()],
                base: None,
                merge: None,
                follow_up: None,
                follow_up_reason: None,
                remote_branch_deleted: false,
                by: self.by.clone(),
                updated: Timestamp::now(),
            };
            let verb = if recorded.is_some() {
                "starting over"
            } else {
                "promoting"
            };
            self.chain.write(
                rec,
                &format!(
                    "preflight: {verb}: {} into {}",
                    &source.to_string()[..7],
                    self.target()
                ),
                &[source],
            )?;
        }
        crash_point(Phase::Preflight, "after");
        Ok(())
    }

    /// The target's tip: the remote's when a remote is set (fetched once per run, unless this
    /// process saw it a moment ago), else the local one.
    fn target_tip(&mut self) -> Result<ObjectId> {
        if let Some(tip) = self.remote_tip {
            return Ok(tip);
        }
        if let Some(tip) = self.recently_seen()? {
            self.remote_tip = Some(tip);
            return Ok(tip);
        }
        self.fresh_target_tip()
    }

    /// The remote target as this process last saw it, by its own fetch or its own push, if
    /// that was less than [`SEEN_FRESH`] ago and the remote-tracking ref still says so.
    fn recently_seen(&self) -> Result<Option<ObjectId>> {
        let Some(key) = self.seen_key() else {
            return Ok(None);
        };
        let seen = SEEN
            .lock()
            .ok()
            .and_then(|m| m.get(&key).copied())
            .filter(|(_, at)| at.elapsed() < SEEN_FRESH);
        let Some((tip, _)) = seen else {
            return Ok(None);
        };
        Ok((self.repo.read_ref(&tracking_ref(&key.1, &key.2))? == Some(tip)).then_some(tip))
    }

    /// Remembers the remote target's tip as seen now (see [`SEEN`]).
    fn saw_remote_tip(&self, tip: ObjectId) {
        if let Some(key) = self.seen_key()
            && let Ok(mut seen) = SEEN.lock()
        {
            seen.insert(key, (tip, std::time::Instant::now()));
        }
    }

    /// This promotion's key in [`SEEN`], when there is a remote.
    fn seen_key(&self) -> Option<(PathBuf, String, String)> {
        Some((
            self.repo.common_dir().to_path_buf(),
            self.remote()?.to_string(),
            self.target().to_string(),
        ))
    }

    /// The target's tip, fetched again from the remote when there is one.
    fn fresh_target_tip(&mut self) -> Result<ObjectId> {
        let (name, shown) = match self.remote() {
            Some(remote) => {
                let tracking = tracking_ref(remote, self.target());
                self.git
                    .fetch(remote, &format!("+{}:{tracking}", self.target_ref()))?;
                (tracking, format!("{remote}/{}", self.target()))
            }
            None => (self.target_ref(), self.target().to_string()),
        };
        let tip = self.repo.read_ref(&name)?.ok_or_else(|| {
            LoopError::new(
                Class::Config,
                format!("the target branch {shown} does not exist"),
            )
            .with_hint("create it, or set loop.target in policy.toml")
        })?;
        if self.remote().is_some() {
            self.remote_tip = Some(tip);
            self.saw_remote_tip(tip);
        }
        Ok(tip)
    }

    fn check_manifest(&self, target_tip: ObjectId) -> Result<()> {
        for path in &self.policy.runtime.manifest {
            if self.repo.file_at(target_tip, path)?.is_none() {
                return Err(LoopError::new(
                    Class::Config,
                    format!(
                        "the runtime file {path} is not committed on {}",
                        self.target()
                    ),
                )
                .with_hint(format!(
                    "git add {path} && git commit, on {}",
                    self.target()
                ))
                .into());
            }
        }
        Ok(())
    }

    /// Refuses a source that changes the protected sections of policy.toml (SPEC §9).
    fn check_frozen_finish_line(&self, target_tip: ObjectId, source: ObjectId) -> Result<()> {
        // What the branch changes: from where it forked, not from where the target is now
        // (a person may have tightened the gates on the target since).
        let base = self
            .repo
            .merge_base(target_tip, source)?
            .unwrap_or(target_tip);
        let Some(diff) = crate::oracle::protected_diff(
            self.repo,
            base,
            source,
            &format!("{}:policy.toml", self.target()),
            &format!("{}:policy.toml", self.task.branch),
        )?
        else {
            return Ok(());
        };
        Err(policy_error(format!(
            "{} changes the protected sections of policy.toml ([{}]); the finish line is frozen:\n{}",
            self.task.branch,
            PROTECTED_SECTIONS.join("], ["),
            diff.trim_end()
        ))
        .with_hint("a person changes gates on the target itself and re-pins with `git loop init --repin`")
        .into())
    }

    /// Makes sure exactly `head` is approved: the judge's approval must name it; without one,
    /// the gates run here on `head` (a person promoting by hand).
    fn approve(&mut self, head: ObjectId) -> Result<()> {
        let head_hex = head.to_string();
        match self.task.approved.clone() {
            Some(approved) if approved == head_hex => Ok(()),
            Some(approved) => {
                let message = format!(
                    "{} moved after judging (approved {}, now {}): the new commits are not judged",
                    self.task.branch,
                    short(&approved),
                    &head_hex[..7]
                );
                self.transition(Event::BranchMoved {
                    detail: message.clone(),
                })?;
                Err(policy_error(message)
                    .with_hint("the judge must approve the branch head before it is promoted")
                    .into())
            }
            None => {
                let results = self.run_in_temp_worktree(
                    head,
                    &self.policy.gate.commands.clone(),
                    self.policy.gate.timeout,
                )?;
                if let Some(failed) = results.iter().find(|r| !r.passed) {
                    return Err(policy_error(format!(
                        "the gate failed on {} ({}): {}\n{}",
                        self.task.branch,
                        &head_hex[..7],
                        failed.summary(),
                        failed.tail.trim_end()
                    ))
                    .with_hint("fix the branch, then promote again")
                    .into());
                }
                // Approved and promoting in one write.
                self.transition(Event::Promote {
                    approve: Some((head_hex, results.len())),
                })?;
                Ok(())
            }
        }
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

    fn set_task_promoting(&mut self) -> Result<()> {
        if matches!(self.task.state, State::Promoting | State::Done) {
            return Ok(());
        }
        self.transition(Event::Promote { approve: None })
    }

    // ---- push_source ----------------------------------------------------------------------

    fn push_source(&mut self) -> Result<()> {
        if self.rec().has(Phase::PushSource) {
            return Ok(());
        }
        crash_point(Phase::PushSource, "before");
        let Some(remote) = self.remote().map(str::to_string) else {
            return self.skip(Phase::PushSource, "no remote");
        };
        let source = self.rec().source.clone();
        let branch_ref = self.branch_ref();
        // Never forced: a push of what the remote already has is reported up to date ('=').
        let pushed = match self
            .git
            .push(&remote, &[], &[format!("{source}:{branch_ref}")])?
        {
            Push::Ok(refs) => refs,
            // The remote's task branch has commits the approved source lacks: someone pushed
            // there. Retrying cannot help, and git-loop never forces.
            Push::LostRace(why)
                if why.contains("fetch first") || why.contains("non-fast-forward") =>
            {
                return Err(policy_error(format!(
                    "{remote} has a {} with commits that the approved {} lacks: {why}",
                    self.task.branch,
                    short(&source)
                ))
                .with_hint(format!(
                    "look at {remote}/{}: merge what belongs into the task branch (it is then judged again), or delete the remote branch",
                    self.task.branch
                ))
                .into());
            }
            Push::LostRace(why) => {
                return Err(
                    LoopError::new(Class::Transient, format!("{remote} was busy: {why}")).into(),
                );
            }
            Push::Rejected(why) => {
                return Err(policy_error(format!("{remote} rejected the push: {why}")).into());
            }
        };
        let message = if pushed.iter().all(|r| r.flag == '=') {
            format!(
                "{remote} already has {} at {}",
                self.task.branch,
                &source[..7]
            )
        } else {
            format!(
                "pushed {} to {remote} at {}",
                self.task.branch,
                &source[..7]
            )
        };
        crash_point(Phase::PushSource, "after");
        self.checkpoint(Phase::PushSource, &message, |_| {}, &[])
    }

    fn push_or_classify(
        &self,
        remote: &str,
        leases: &[String],
        specs: &[String],
    ) -> Result<Vec<PushedRef>> {
        match self.git.push(remote, leases, specs)? {
            Push::Ok(refs) => Ok(refs),
            Push::LostRace(why) => Err(LoopError::new(
                Class::Transient,
                format!("{remote} moved while pushing: {why}"),
            )
            .with_hint("run the promotion again: it merges onto the new tip")
            .into()),
            Push::Rejected(why) => Err(policy_error(format!("{remote} rejected the push: {why}"))
                .with_hint("the remote's rules refused it; a person must look")
                .into()),
        }
    }

    // ---- merge ----------------------------------------------------------------------------

    fn merge(&mut self) -> Result<()> {
        if self.rec().has(Phase::Merge) {
            return Ok(());
        }
        crash_point(Phase::Merge, "before");
        self.still_promoting()?;
        let tip = self.target_tip()?;
        if let Some(found) = self.work_in(tip)? {
            let message = format!(
                "{} already contains the work ({})",
                self.target(),
                &found.to_string()[..7]
            );
            crash_point(Phase::Merge, "after");
            return self.checkpoint(
                Phase::Merge,
                &message,
                |r| {
                    r.merge = Some(found.to_string());
                    r.base.get_or_insert_with(|| tip.to_string());
                },
                &[],
            );
        }
        // A merge built earlier on this same tip is still good; otherwise build one.
        let built = match (&self.rec().merge, &self.rec().base) {
            (Some(m), Some(b)) if oid(b)? == tip => oid(m)?,
            _ if self.remote().is_some() => {
                // With a remote nothing is applied here (push_target moves the remote's
                // target), so building and recording the merge is the whole phase.
                let m = self.build_merge(tip)?;
                crash_point(Phase::Merge, "after");
                return self.checkpoint(
                    Phase::Merge,
                    &format!(
                        "built {} on {}, ready to push",
                        &m.to_string()[..7],
                        &tip.to_string()[..7]
                    ),
                    |r| {
                        r.merge = Some(m.to_string());
                        r.base = Some(tip.to_string());
                    },
                    &[m],
                );
            }
            _ => {
                let m = self.build_merge(tip)?;
                // Built, not applied: the phase is not done until the target holds it.
                self.record(
                    &format!(
                        "merge: built {} on {}",
                        &m.to_string()[..7],
                        &tip.to_string()[..7]
                    ),
                    |r| {
                        r.merge = Some(m.to_string());
                        r.base = Some(tip.to_string());
                    },
                    &[m],
                )?;
                m
            }
        };
        if self.remote().is_some() {
            // The remote's target is moved by push_target; nothing is applied locally yet.
            crash_point(Phase::Merge, "after");
            return self.checkpoint(
                Phase::Merge,
                &format!(
                    "{} is ready to push onto {}",
                    &built.to_string()[..7],
                    &tip.to_string()[..7]
                ),
                |_| {},
                &[],
            );
        }
        match self.advance_local_target(built)? {
            Advance::Moved | Advance::AlreadyThere => {}
            Advance::LeftDirty(path) => {
                return Err(LoopError::new(
                    Class::Transient,
                    format!(
                        "{} is checked out in {} with uncommitted changes; it was left as it is",
                        self.target(),
                        path.display()
                    ),
                )
                .with_hint("commit or stash those changes, then promote again")
                .into());
            }
            Advance::Diverged => {
                return Err(LoopError::new(
                    Class::Transient,
                    format!("{} moved while merging", self.target()),
                )
                .with_hint("promote again: the merge is rebuilt on the new tip")
                .into());
            }
        }
        crash_point(Phase::Merge, "after");
        self.checkpoint(
            Phase::Merge,
            &format!("{} moved to {}", self.target(), &built.to_string()[..7]),
            |_| {},
            &[],
        )
    }

    /// The commit of `tip`'s history that holds this task's work, if any.
    fn work_in(&self, tip: ObjectId) -> Result<Option<ObjectId>> {
        let source = self.source()?;
        if let Some(m) = &self.rec().merge
            && self.repo.is_ancestor(oid(m)?, tip)?
        {
            return Ok(Some(oid(m)?));
        }
        if self.repo.is_ancestor(source, tip)? {
            return Ok(Some(tip));
        }
        // A conflict-fix task merged this source and resolved it; once promoted, its commit
        // holds this work even where a squash left no ancestry.
        if self.rec().follow_up_reason.as_deref() == Some(Reason::Conflict.as_str())
            && let Some(fix) = &self.rec().follow_up
            && let Ok(fixed) = self.store.load(fix)
            && fixed.task.state == State::Done
            && let Some(promoted) = fixed
                .task
                .promoted_commit
                .as_deref()
                .and_then(|c| oid(c).ok())
            && self.repo.is_ancestor(promoted, tip)?
        {
            return Ok(Some(promoted));
        }
        if self.policy.promote.strategy == Strategy::Squash {
            // A squash leaves no ancestry; its commit carries a Loop-Task trailer instead.
            let trailer = format!("Loop-Task: {}", self.id);
            let stop = self.rec().base.as_deref().map(oid).transpose()?;
            let mut next = Some(tip);
            for _ in 0..10_000 {
                let Some(id) = next else { break };
                if Some(id) == stop {
                    break;
                }
                let info = self.repo.commit_info(id)?;
                if info.message.lines().any(|l| l.trim() == trailer) {
                    return Ok(Some(id));
                }
                next = info.parents.first().copied();
            }
        }
        Ok(None)
    }

    /// Builds the commit that brings the source onto `tip` by the policy's strategy, touching
    /// no index or work tree. A conflict files a fix task and blocks this one.
    fn build_merge(&mut self, tip: ObjectId) -> Result<ObjectId> {
        let source = self.source()?;
        let fast_forward = self.repo.is_ancestor(tip, source)?;
        let strategy = self.policy.promote.strategy;
        if strategy == Strategy::FfOnly {
            if fast_forward {
                return Ok(source);
            }
            return Err(policy_error(format!(
                "{} cannot be fast-forwarded to {}: promote.strategy is ff-only",
                self.target(),
                self.task.branch
            ))
            .with_hint(format!(
                "rebase {} onto {}, or use another strategy",
                self.task.branch,
                self.target()
            ))
            .into());
        }
        let tree = if fast_forward {
            self.repo.commit_info(source)?.tree
        } else {
            match self.git.merge_tree(&tip.to_string(), &source.to_string())? {
                MergeTree::Clean(tree) => oid(&tree)?,
                MergeTree::Conflict(paths) => return Err(self.conflict(tip, paths)),
            }
        };
        let title = one_line(&self.task.title);
        let trailer = format!("Loop-Task: {}", self.id);
        match strategy {
            Strategy::Squash => {
                if tree == self.repo.commit_info(tip)?.tree {
                    // Everything is already there (e.g. through a conflict fix): nothing to add.
                    return Ok(tip);
                }
                self.repo
                    .write_commit(&format!("{title}\n\n{trailer}\n"), tree, &[tip])
            }
            _ => self.repo.write_commit(
                &format!("Merge {}: {title}\n\n{trailer}\n", self.task.branch),
                tree,
                &[tip, source],
            ),
        }
    }

    /// Files (or finds) the conflict-fix task, blocks this task on it, and returns the error.
    fn conflict(&mut self, tip: ObjectId, paths: Vec<String>) -> anyhow::Error {
        let title = format!(
            "resolve conflict: merge {} into {}",
            self.short(),
            self.target()
        );
        let listing = paths
            .iter()
            .map(|p| format!("- {p}"))
            .collect::<Vec<_>>()
            .join("\n");
        let source = self.rec().source.clone();
        let body = format!(
            "Merging {branch} (task {short}: {task_title}) into {target} conflicts in:\n\n{listing}\n\n\
             On this task's branch (which starts from {target}), merge {branch} at {src7} and \
             resolve the conflicts, keeping the intent of both sides.\n\n\
             Acceptance: `git merge-base --is-ancestor {source} HEAD` succeeds on this branch and \
             the gates pass. When this task is done, task {short} is promoted again.",
            branch = self.task.branch,
            short = self.short(),
            task_title = one_line(&self.task.title),
            target = self.target(),
            src7 = &source[..7],
        );
        match self.file_follow_up(&title, &body, Reason::Conflict, &format!(
            "merging into {} at {} conflicts in {} path(s)", self.target(), &tip.to_string()[..7], paths.len()
        )) {
            Ok(fix) => policy_error(format!(
                "merging {} into {} conflicts in: {}; filed task {} to resolve it, and task {} waits for it",
                self.task.branch,
                self.target(),
                paths.join(", "),
                short(&fix),
                self.short()
            ))
            .into(),
            Err(e) => e,
        }
    }

    /// Files a follow-up task (unless an open one with this title exists), makes this task
    /// wait for it as `blocked: <why>`, and records it in the checkpoint.
    fn file_follow_up(
        &mut self,
        title: &str,
        body: &str,
        why: Reason,
        detail: &str,
    ) -> Result<String> {
        let existing = self.store.list()?.into_iter().find_map(|l| {
            let t = l.task.ok()?;
            (t.discovered_from.as_deref() == Some(self.id.as_str())
                && t.title == title
                && !matches!(t.state, State::Done | State::Cancelled))
            .then_some(t.id)
        });
        let fix = match existing {
            Some(id) => id,
            None => {
                let ids = self.store.ids()?;
                let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                let id = crate::ids::generate(&refs);
                let mut task = Task::new(
                    id.clone(),
                    title.to_string(),
                    body.to_string(),
                    self.task.batch.clone(),
                    None,
                );
                task.priority = self.task.priority.saturating_add(1);
                task.mutex = self.task.mutex.clone();
                task.discovered_from = Some(self.id.clone());
                self.store.create(&task)?;
                id
            }
        };
        self.transition(Event::Wait {
            reason: why,
            on: fix.clone(),
            detail: detail.to_string(),
        })?;
        let fix_for_rec = fix.clone();
        let why_for_rec = why.as_str().to_string();
        self.record(
            &format!("{}: filed {}", why.as_str(), short(&fix)),
            |r| {
                r.follow_up = Some(fix_for_rec);
                r.follow_up_reason = Some(why_for_rec);
            },
            &[],
        )?;
        Ok(fix)
    }

    /// Fast-forwards the local target branch to `to`, never clobbering a checkout of it.
    fn advance_local_target(&mut self, to: ObjectId) -> Result<Advance> {
        let name = self.target_ref();
        let current = self.repo.read_ref(&name)?;
        if current == Some(to) {
            return Ok(Advance::AlreadyThere);
        }
        if let Some(cur) = current
            && !self.repo.is_ancestor(cur, to)?
        {
            return Ok(Advance::Diverged);
        }
        let checkout =
            self.repo.worktrees()?.into_iter().find(|w| {
                w.branch.as_deref() == Some(name.as_str()) && !w.prunable && w.path.exists()
            });
        match checkout {
            None => {
                let edit = match current {
                    Some(old) => Cas::Update { name, old, new: to },
                    None => Cas::Create { name, new: to },
                };
                match self.repo.cas(&[edit])? {
                    CasOutcome::Applied => Ok(Advance::Moved),
                    CasOutcome::Lost => Ok(Advance::Diverged),
                }
            }
            Some(wt) => {
                let there = self.git.in_worktree(&wt.path);
                if there.has_tracked_changes()? {
                    return Ok(Advance::LeftDirty(wt.path));
                }
                // In its own process group: stopping git-loop must not kill git half way
                // through the person's checkout.
                let out = there.in_own_process_group().output(&[
                    "merge",
                    "--ff-only",
                    "--quiet",
                    &to.to_string(),
                ])?;
                if !out.status.success() {
                    return Err(LoopError::new(
                        Class::Transient,
                        format!(
                            "could not fast-forward the checkout of {} in {}: {}",
                            self.target(),
                            wt.path.display(),
                            String::from_utf8_lossy(&out.stderr).trim()
                        ),
                    )
                    .into());
                }
                Ok(Advance::Moved)
            }
        }
    }

    // ---- push_target ----------------------------------------------------------------------

    fn push_target(&mut self) -> Result<()> {
        if self.rec().has(Phase::PushTarget) {
            return Ok(());
        }
        crash_point(Phase::PushTarget, "before");
        let Some(remote) = self.remote().map(str::to_string) else {
            return self.skip(Phase::PushTarget, "no remote");
        };
        self.still_promoting()?;
        let merge = oid(self
            .rec()
            .merge
            .as_deref()
            .context("merge phase recorded no commit")?)?;
        let base = self.rec().base.clone().unwrap_or_default();
        let tip = self.target_tip()?;
        let mut deleted_with_it = false;
        let message = if self.repo.is_ancestor(merge, tip)? {
            format!(
                "{remote}/{} already contains {}",
                self.target(),
                &merge.to_string()[..7]
            )
        } else {
            let lease = format!("{}:{base}", self.target_ref());
            let spec = format!("{merge}:{}", self.target_ref());
            // With no verify commands nothing stands between the target push and the remote
            // task branch's deletion: one atomic push does both, so the branch cannot go
            // without the target being updated. If that push fails for any reason, the plain
            // push below says why, and the branch is left to delete_remote_branch.
            if self.policy.promote.delete_remote_branch && self.policy.verify.commands.is_empty() {
                let branch_ref = self.branch_ref();
                let branch_lease = format!("{branch_ref}:{}", self.rec().source);
                if let Ok(Push::Ok(_)) = self.git.push(
                    &remote,
                    &[lease.clone(), branch_lease],
                    &[spec.clone(), format!(":{branch_ref}")],
                ) {
                    deleted_with_it = true;
                }
            }
            let pushed = if deleted_with_it {
                Ok(Vec::new())
            } else {
                self.push_or_classify(&remote, &[lease], &[spec])
            };
            if let Err(e) = pushed {
                if crate::error::class_of(&e) == Class::Transient {
                    // The target moved since the merge was built: build it again next time.
                    let moved = self.fresh_target_tip().unwrap_or(tip);
                    if oid(&base).ok() != Some(moved) {
                        self.record(
                            &format!(
                                "push_target: {remote}/{} moved to {}; the merge will be rebuilt",
                                self.target(),
                                &moved.to_string()[..7]
                            ),
                            |r| {
                                r.merge = None;
                                r.base = None;
                                r.completed.retain(|p| p != Phase::Merge.name());
                            },
                            &[],
                        )?;
                    }
                }
                return Err(e);
            }
            self.remote_tip = Some(merge);
            self.saw_remote_tip(merge);
            format!(
                "pushed {} to {remote}/{}{}",
                &merge.to_string()[..7],
                self.target(),
                if deleted_with_it {
                    format!(" and deleted {remote}/{} with it", self.task.branch)
                } else {
                    String::new()
                }
            )
        };
        crash_point(Phase::PushTarget, "after");
        // Bring the local target along when that is safe, and say so when it is not, before
        // the checkpoint: a kill in between runs this phase again, which observes the push.
        match self.advance_local_target(merge)? {
            Advance::Moved | Advance::AlreadyThere => {}
            Advance::LeftDirty(path) => self.notes.push(format!(
                "{} is checked out in {} with uncommitted changes; left as it is (`git pull --ff-only` there later)",
                self.target(),
                path.display()
            )),
            Advance::Diverged => self.notes.push(format!(
                "the local {} has commits that {remote}/{} does not; left as it is",
                self.target(),
                self.target()
            )),
        }
        self.checkpoint(
            Phase::PushTarget,
            &message,
            |r| r.remote_branch_deleted = deleted_with_it,
            &[],
        )
    }

    // ---- verify ---------------------------------------------------------------------------

    fn verify(&mut self) -> Result<()> {
        if self.rec().has(Phase::Verify) {
            return Ok(());
        }
        crash_point(Phase::Verify, "before");
        let commands = self.policy.verify.commands.clone();
        if commands.is_empty() {
            return self.skip(Phase::Verify, "no verify.commands");
        }
        let tip = self.target_tip()?;
        let results = self.run_in_temp_worktree(tip, &commands, self.policy.gate.timeout)?;
        if let Some(failed) = results.iter().find(|r| !r.passed) {
            let title = format!(
                "activation gap: {} fails verify on {}",
                self.short(),
                self.target()
            );
            let body = format!(
                "Task {short} ({task_title}) was merged into {target}, but verify fails on {target} at {tip7}:\n\n\
                 {summary}\n\n```\n{tail}\n```\n\n\
                 Make the merged change work on {target}.\n\n\
                 Acceptance: every `verify.commands` of policy.toml passes on {target} once this \
                 task is promoted. Then task {short} finishes its promotion.",
                short = self.short(),
                task_title = one_line(&self.task.title),
                target = self.target(),
                tip7 = &tip.to_string()[..7],
                summary = failed.summary(),
                tail = failed.tail.trim_end(),
            );
            let gap =
                self.file_follow_up(&title, &body, Reason::VerifyFailed, &failed.summary())?;
            crash_point(Phase::Verify, "after");
            return Err(policy_error(format!(
                "verify failed on {} after merging {}: {}\n{}",
                self.target(),
                self.short(),
                failed.summary(),
                failed.tail.trim_end()
            ))
            .with_hint(format!(
                "filed task {} (activation gap); task {} finishes its promotion when it is done",
                short(&gap),
                self.short()
            ))
            .into());
        }
        crash_point(Phase::Verify, "after");
        self.checkpoint(
            Phase::Verify,
            &format!(
                "{} command(s) passed on {}",
                results.len(),
                &tip.to_string()[..7]
            ),
            |_| {},
            &[],
        )
    }

    // ---- cleanup --------------------------------------------------------------------------

    fn cleanup(&mut self) -> Result<()> {
        if self.rec().has(Phase::Cleanup) {
            return Ok(());
        }
        crash_point(Phase::Cleanup, "before");
        let branch_ref = self.branch_ref();
        let loop_dir = self
            .repo
            .common_dir()
            .join("loop")
            .join("worktrees")
            .join(self.short());
        let mut said: Vec<String> = (self.repo.interrupted_adds(true)?)
            .iter()
            .map(|p| format!("removed the half-made worktree {}", p.display()))
            .collect();
        let main_worktree = self.repo.workdir().map(Path::to_path_buf);
        // One look at the worktrees: the task's own (saved, then removed), temporary checkouts
        // for gates and verify that a killed promotion left behind (removed), and any other
        // checkout of the task branch (which keeps the branch).
        let tmp_dir = self.repo.common_dir().join("loop").join("tmp");
        let tmp_prefix = format!("{}-", self.short());
        let target_tip = match self.remote() {
            Some(remote) => self.repo.read_ref(&tracking_ref(remote, self.target()))?,
            None => self.repo.read_ref(&self.target_ref())?,
        };
        let branch_head = self.repo.read_ref(&branch_ref)?;
        let worktrees = self.repo.worktrees()?;
        // Whether worktree metadata may be left without its directory.
        let mut prune = worktrees.iter().any(|w| w.prunable || !w.path.exists());
        let mut checked_out = false;
        let mut listed_ours = false;
        for wt in &worktrees {
            let is_main = main_worktree
                .as_deref()
                .is_some_and(|m| same_path(m, &wt.path));
            let temp = wt.path.parent().is_some_and(|p| same_path(p, &tmp_dir))
                && wt
                    .path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&tmp_prefix));
            // Only git-loop's own worktree of the task goes; a person's checkout of the branch
            // elsewhere is theirs, and keeps the branch.
            let ours = !is_main && same_path(&wt.path, &loop_dir);
            if temp {
                prune |= self.remove_worktree(&wt.path);
            } else if ours && wt.path.exists() {
                if worktree_link_valid(&wt.path) {
                    match self.save_and_remove(
                        &wt.path,
                        wt.branch.is_none(),
                        target_tip,
                        branch_head,
                    ) {
                        Ok(done) => said.extend(done),
                        // Its git link went while we looked: another process is removing it
                        // (a killed promotion's `git worktree remove` still running). What it
                        // leaves is handled below like any half-removed checkout.
                        Err(e) if !worktree_link_valid(&wt.path) => {
                            tracing::debug!("{} changed under us: {e:#}", wt.path.display());
                        }
                        Err(e) => return Err(e),
                    }
                }
                if wt.path.exists() {
                    prune |= self.clear_leftover(&wt.path, branch_head, &mut said)?;
                }
                said.push(format!("removed the worktree {}", wt.path.display()));
                listed_ours = true;
            } else if wt.branch.as_deref() == Some(branch_ref.as_str()) && !wt.prunable {
                checked_out = true;
            }
        }
        // A directory git no longer knows as a worktree (its metadata went first).
        if !listed_ours && loop_dir.exists() {
            prune |= self.clear_leftover(&loop_dir, branch_head, &mut said)?;
            said.push(format!("removed the directory {}", loop_dir.display()));
        }
        if let Ok(entries) = std::fs::read_dir(&tmp_dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&tmp_prefix) {
                    let _ = std::fs::remove_dir_all(entry.path());
                    prune = true;
                }
            }
        }
        if prune {
            self.git.run(&["worktree", "prune"])?;
        }
        // The local task branch goes only if its commits are safe in the target or a rescue ref.
        if let Some(head) = branch_head {
            if checked_out {
                said.push(format!("kept {} (it is checked out)", self.task.branch));
            } else {
                let contained = match target_tip {
                    Some(tip) => self.repo.is_ancestor(head, tip)?,
                    None => false,
                };
                if !contained {
                    let rescue = save_rescue(self.repo, &self.id, head)?;
                    said.push(format!("saved {} in {rescue}", self.task.branch));
                }
                match self.repo.cas(&[Cas::Delete {
                    name: branch_ref.clone(),
                    old: head,
                }])? {
                    CasOutcome::Applied => said.push(format!("deleted {}", self.task.branch)),
                    CasOutcome::Lost if self.repo.read_ref(&branch_ref)? == Some(head) => {
                        // Not moved, so locked: by a live git for a moment, or a dead one.
                        return Err(LoopError::new(
                            Class::Transient,
                            format!("{} is locked by another git process", self.task.branch),
                        )
                        .with_hint("run the promotion again in a moment")
                        .into());
                    }
                    CasOutcome::Lost => said.push(format!("kept {} (it moved)", self.task.branch)),
                }
            }
        }
        crash_point(Phase::Cleanup, "after");
        let message = if said.is_empty() {
            "nothing to clean".to_string()
        } else {
            said.join("; ")
        };
        self.checkpoint(Phase::Cleanup, &message, |_| {}, &[])
    }

    /// Saves what the task's worktree at `path` holds that is nowhere else — commits on a
    /// detached HEAD, uncommitted and untracked files — then removes it. Says what it did.
    fn save_and_remove(
        &self,
        path: &Path,
        detached: bool,
        target_tip: Option<ObjectId>,
        branch_head: Option<ObjectId>,
    ) -> Result<Vec<String>> {
        let mut said = Vec::new();
        let there = self.git.in_worktree(path);
        // Commits made on a detached HEAD are on no branch: save them first.
        if detached
            && let Ok(head) = there.run(&["rev-parse", "--verify", "-q", "HEAD"])
            && let Ok(head) = oid(&head)
        {
            let kept = target_tip.is_some_and(|t| self.repo.is_ancestor(head, t).unwrap_or(false))
                || branch_head.is_some_and(|b| self.repo.is_ancestor(head, b).unwrap_or(false));
            if !kept {
                let rescue = save_rescue(self.repo, &self.id, head)?;
                said.push(format!("saved the detached HEAD's commits in {rescue}"));
            }
        }
        // Only a clean worktree is removed so: then there is nothing to save.
        let clean_removed = self.repo.remove_worktree(path, false).is_ok();
        if !clean_removed && let Some(rescue) = rescue_worktree(self.repo, &there, &self.id)? {
            said.push(format!("saved uncommitted work in {rescue}"));
        }
        Ok(said)
    }

    /// Clears a checkout directory of the task that has lost its git link (a removal stopped
    /// half way, or under way in another process): files that differ from the branch are
    /// saved first. Returns whether `git worktree prune` should run.
    fn clear_leftover(
        &self,
        path: &Path,
        branch_head: Option<ObjectId>,
        said: &mut Vec<String>,
    ) -> Result<bool> {
        if !worktree_link_valid(path) {
            let saved = rescue_files(self.repo, &self.git, path, &self.id, branch_head);
            match saved {
                Ok(Some(rescue)) => said.push(format!("saved its files in {rescue}")),
                Ok(None) => {}
                // Gone meanwhile: removed by whoever was removing it.
                Err(_) if !path.exists() => return Ok(true),
                Err(e) => {
                    return Err(LoopError::new(
                        Class::Transient,
                        format!("could not save the files of {}: {e:#}", path.display()),
                    )
                    .with_hint("another git process may be removing it; run the promotion again in a moment")
                    .into());
                }
            }
        }
        Ok(path.exists() && self.remove_worktree(path))
    }

    /// Removes a worktree (see [`crate::rescue::remove_worktree`]); true when `git worktree
    /// prune` should run after it.
    fn remove_worktree(&self, path: &Path) -> bool {
        crate::rescue::remove_worktree(self.repo, path).unwrap_or(true)
    }

    // ---- delete_remote_branch -------------------------------------------------------------

    fn delete_remote_branch(&mut self) -> Result<()> {
        if self.rec().has(Phase::DeleteRemoteBranch) {
            return Ok(());
        }
        crash_point(Phase::DeleteRemoteBranch, "before");
        let Some(remote) = self.remote().map(str::to_string) else {
            return self.skip(Phase::DeleteRemoteBranch, "no remote");
        };
        if !self.policy.promote.delete_remote_branch {
            return self.skip(
                Phase::DeleteRemoteBranch,
                "promote.delete_remote_branch is false",
            );
        }
        if self.rec().remote_branch_deleted {
            crash_point(Phase::DeleteRemoteBranch, "after");
            let message = format!("deleted {remote}/{} with the target push", self.task.branch);
            return self.checkpoint(Phase::DeleteRemoteBranch, &message, |_| {}, &[]);
        }
        let branch_ref = self.branch_ref();
        let source = self.rec().source.clone();
        // Best effort: a failure is said, not fatal. The lease deletes only what we pushed.
        let lease = format!("{branch_ref}:{source}");
        let message = match self
            .git
            .push(&remote, &[lease], &[format!(":{branch_ref}")])
        {
            Ok(Push::Ok(_)) => format!("deleted {remote}/{}", self.task.branch),
            Ok(Push::LostRace(_)) => match self.git.ls_remote(&remote, &branch_ref) {
                Ok(None) => format!("{remote} has no {}", self.task.branch),
                Ok(Some(at)) => format!(
                    "kept {remote}/{}: it moved to {}",
                    self.task.branch,
                    &at[..at.len().min(7)]
                ),
                Err(e) => format!("kept {remote}/{}: {e:#}", self.task.branch),
            },
            Ok(Push::Rejected(why)) => format!("kept {remote}/{}: {why}", self.task.branch),
            Err(e) => format!("kept {remote}/{}: {e:#}", self.task.branch),
        };
        crash_point(Phase::DeleteRemoteBranch, "after");
        self.checkpoint(Phase::DeleteRemoteBranch, &message, |_| {}, &[])
    }

    // ---- done -----------------------------------------------------------------------------

    fn done(&mut self) -> Result<()> {
        crash_point(Phase::Done, "before");
        let merge = self
            .rec()
            .merge
            .clone()
            .context("merge phase recorded no commit")?;
        let note = format!(
            "task: {}\ntitle: {}\nstrategy: {}\ntarget: {}\npromoted: {}\nby: {}\n",
            self.id,
            one_line(&self.task.title),
            self.rec().strategy,
            self.target(),
            Timestamp::now().to_rfc3339(),
            self.by
        );
        self.repo
            .set_note(crate::refs::NOTES, oid(&merge)?, &note)?;
        let (repo, release) = (self.repo, self.release.clone());
        let event = Event::Promoted { commit: merge };
        self.store
            .transition(&self.id, &event, &self.actor, &self.budget, |_, edit| {
                // The runner's lease goes in the same transaction: one commit and one ref
                // update fewer than a release of its own, and never a done task still leased.
                if let Some(r) = &release
                    && let Some((tip, Ok(l))) = crate::lease::read(repo, &self.id)?
                    && l.runner == r.runner
                    && l.run == r.run
                {
                    edit.message
                        .push_str(&format!("; released by {}", r.runner));
                    edit.also.push(Cas::Delete {
                        name: crate::refs::lease(&self.id),
                        old: tip,
                    });
                }
                Ok(())
            })?;
        // Re-arm before the last checkpoint: a crash in between re-runs this phase.
        for id in rearm_waiting(&self.store, &self.id, &self.actor, &self.budget)? {
            self.notes.push(format!(
                "task {} was waiting for this one; its promotion resumes",
                short(&id)
            ));
        }
        crash_point(Phase::Done, "after");
        self.checkpoint(
            Phase::Done,
            &format!("{} is done", self.short()),
            |_| {},
            &[],
        )?;
        // The maintenance git would have started after each fetch and push, started once, and
        // without the ref packing that can bring deleted refs back (see `maintenance`).
        crate::maintenance::after_promotion(self.repo, &self.git);
        Ok(())
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
            commands,
            timeout,
            self.short(),
            &|_| {},
        )
    }

    fn dry_run(&mut self) -> Result<Outcome> {
        let mut plan = Vec::new();
        let tip = self.target_tip()?;
        self.check_manifest(tip)?;
        let shown_target = match self.remote() {
            Some(r) => format!("{r}/{}", self.target()),
            None => self.target().to_string(),
        };
        let source = match &self.chain.rec {
            Some(rec) => {
                plan.push(format!(
                    "resume the promotion begun by {} (done: {})",
                    rec.by,
                    rec.completed.join(", ")
                ));
                oid(&rec.source)?
            }
            None => {
                let head = self.repo.read_ref(&self.branch_ref())?.ok_or_else(|| {
                    policy_error(format!(
                        "task {} has no branch {}",
                        self.short(),
                        self.task.branch
                    ))
                })?;
                if self.repo.is_ancestor(head, tip)? {
                    return Err(policy_error(format!(
                        "{} has no commits beyond {shown_target}",
                        self.task.branch
                    ))
                    .into());
                }
                match &self.task.approved {
                    Some(a) if oid(a).ok() == Some(head) => {
                        plan.push(format!("promote {} (approved)", &a[..7]))
                    }
                    Some(_) => plan.push("refuse: the branch moved after judging".to_string()),
                    None => plan.push(format!(
                        "run {} gate command(s) on {} and approve it",
                        self.policy.gate.commands.len(),
                        &head.to_string()[..7]
                    )),
                }
                head
            }
        };
        self.check_frozen_finish_line(tip, source)?;
        let strategy = self.policy.promote.strategy.as_str();
        let merge = if self.repo.is_ancestor(source, tip)? {
            format!(
                "nothing to merge: {shown_target} already contains {}",
                &source.to_string()[..7]
            )
        } else if self.repo.is_ancestor(tip, source)? {
            format!(
                "{strategy}: {shown_target} is an ancestor of the source (fast-forward possible)"
            )
        } else {
            match self.git.merge_tree(&tip.to_string(), &source.to_string())? {
                MergeTree::Clean(_) => format!(
                    "{strategy} merge onto {shown_target} at {}: clean",
                    &tip.to_string()[..7]
                ),
                MergeTree::Conflict(paths) => {
                    format!("{strategy} merge conflicts in: {}", paths.join(", "))
                }
            }
        };
        if let Some(remote) = self.remote() {
            plan.push(format!("push {} to {remote}", self.task.branch));
            plan.push(merge);
            plan.push(format!(
                "push {shown_target} with a lease on {}",
                &tip.to_string()[..7]
            ));
        } else {
            plan.push(merge);
        }
        plan.push(format!(
            "run {} verify command(s)",
            self.policy.verify.commands.len()
        ));
        plan.push(
            "remove the task's worktree (saving uncommitted work) and its branch".to_string(),
        );
        if self.remote().is_some() && self.policy.promote.delete_remote_branch {
            plan.push("delete the remote task branch".to_string());
        }
        plan.push("mark the task done and note the promoted commit".to_string());
        Ok(Outcome::DryRun { plan })
    }
}

enum Advance {
    Moved,
    AlreadyThere,
    LeftDirty(PathBuf),
    Diverged,
}

/// Moves tasks blocked on `done_id` (a conflict fix or an activation gap) back to `promoting`
/// once everything they wait for is done. Returns their ids.
pub fn rearm_waiting(
    store: &Store<'_>,
    done_id: &str,
    actor: &Actor,
    budget: &Budget,
) -> Result<Vec<String>> {
    let listed = store.list()?;
    let tasks: Vec<&Task> = listed.iter().filter_map(|l| l.task.as_ref().ok()).collect();
    let waiting: Vec<&Task> = tasks
        .iter()
        .copied()
        .filter(|t| {
            (t.is(State::Blocked, Reason::Conflict) || t.is(State::Blocked, Reason::VerifyFailed))
                && t.after.iter().any(|d| d == done_id)
        })
        .collect();
    if waiting.is_empty() {
        return Ok(Vec::new());
    }
    let graph = crate::graph::Graph::new(tasks.iter().copied());
    let mut rearmed = Vec::new();
    let event = Event::Unblocked {
        by: done_id.to_string(),
    };
    for t in waiting {
        if !graph.pending_deps(t).is_empty() {
            continue;
        }
        match store.transition(&t.id, &event, actor, budget, |_, _| Ok(())) {
            Ok(moved) if moved.changed => rearmed.push(t.id.clone()),
            Ok(_) => {}
            // It moved on meanwhile (a person's decision, another promotion's re-arm).
            Err(e) if machine::Refusal::of(&e).is_some() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(rearmed)
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
                "{} (pid {} on {}), which is gone or expired, for {}",
                l.runner, l.pid, l.host, l.purpose
            ),
            "`git loop reap` takes the task back; then promote it".to_string(),
        ),
        Ok(l) => (
            format!(
                "{} (pid {} on {}) for {}, until {}",
                l.runner,
                l.pid,
                l.host,
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

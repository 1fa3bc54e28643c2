//! One claimed task, carried by a worker thread: the agent run, the judge, the promotion.
//!
//! Every change of the task is an event given to the state machine ([`crate::task::machine`])
//! and written by compare-and-swap from the state read, in a transaction that also requires
//! the lease to still be this run's; the lease is released in the transaction that moves the
//! task on. When the machine refuses — a person cancelled or gated the task while the agent
//! ran, or its lease changed hands — the decision made meanwhile stands: the worker saves what
//! the run left to rescue refs, lets go of the task and records the refusal
//! (`refs/loop/refused/<id>`). The agent is ended as soon as the task is no longer its.

use crate::ids::short;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;

use anyhow::{Context, Result};
use gix::ObjectId;
use serde::Serialize;

use crate::agent;
use crate::error::{Class, LoopError};
use crate::git::cli::Git;
use crate::git::{Cas, CasOutcome, Repo};
use crate::lease::{self, Purpose};
use crate::policy::Policy;
use crate::refs;
use crate::retry;
use crate::sandbox::{Sandbox, Session};
use crate::store::{Edit, Store};
use crate::task::machine::{Actor, Budget, Event, Failure, GiveBack, Refusal, Transition};
use crate::task::{State, Task};
use crate::time::Timestamp;

use super::attempt::Verdict;
use super::worktree::{target_tip, worktree, worktree_path};
use super::{Msg, Phase};

/// What a worker was given.
pub struct Job {
    pub workdir: PathBuf,
    pub policy: Policy,
    pub runner: String,
    pub id: String,
    pub run: String,
    pub purpose: Purpose,
    /// Set when the runner is stopping.
    pub stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Where the worker reports its phases and, at the end, its result.
    pub report: Sender<Msg>,
    /// `[trust] signers` when the finish line names them (SPEC §13): the task was checked
    /// before the claim, and only what a listed key signed or this clone wrote reaches the
    /// agent.
    pub signers: Option<crate::trust::Signers>,
}

/// A run record, `runs/<run>.toml` in the task's tree.
#[derive(Clone, Debug, Default, Serialize)]
struct RunRecord {
    run: String,
    attempt: u32,
    runner: String,
    started: String,
    ended: String,
    /// completed, quota, transient, config, stalled, timed_out, stopped, approved, rejected: …
    outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    token_seen: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    signature: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    backoff_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    head: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    tail: String,
}

/// Carries the job as far as it goes; returns one line saying where the task ended up.
pub fn work(job: &Job) -> Result<String> {
    let repo = Repo::discover(&job.workdir)?;
    let w = Worker {
        job,
        repo: &repo,
        store: Store::new(&repo),
        git: Git::new(&job.workdir, !repo.has_identity()).locking_worktrees(repo.common_dir()),
        actor: Actor::Runner(job.runner.clone()),
        budget: Budget::from(&job.policy),
        sandbox: Sandbox::for_policy(&repo, &job.policy)?,
    };
    match w.carry() {
        Err(e) if Refusal::of(&e).is_some() => w.let_go(&e),
        Err(e) => {
            w.after_error(&e);
            Err(e)
        }
        ok => ok,
    }
}

struct Worker<'a> {
    job: &'a Job,
    repo: &'a Repo,
    store: Store<'a>,
    git: Git,
    actor: Actor,
    budget: Budget,
    sandbox: Sandbox,
}

impl Worker<'_> {
    fn carry(&self) -> Result<String> {
        let mut purpose = self.job.purpose;
        if purpose == Purpose::Agent {
            let task = self.run_agent()?;
            if task.state != State::AwaitingJudge {
                return Ok(task.state_label());
            }
            purpose = Purpose::Judge;
        }
        if purpose == Purpose::Judge {
            if self.stopping() {
                return self.hand_back("before judging");
            }
            self.phase(Phase::Judge);
            let task = self.judge()?;
            if task.state != State::Promoting {
                return Ok(task.state_label());
            }
        }
        if self.stopping() {
            return self.hand_back("before promoting");
        }
        self.phase(Phase::Promote);
        self.promote()
    }

    fn stopping(&self) -> bool {
        self.job.stop.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The runner is stopping: the task stays where it is (awaiting its judge, or its
    /// promotion), and only the lease goes, for the next runner.
    fn hand_back(&self, when: &str) -> Result<String> {
        if let Ok((tip, _)) = self.ours() {
            self.repo.cas(&[Cas::Delete {
                name: refs::lease(&self.job.id),
                old: tip,
            }])?;
        }
        let task = self.store.load(&self.job.id)?.task;
        Ok(format!(
            "{}: handed back {when}: the runner is stopping",
            task.state_label()
        ))
    }

    /// A failure outside any transition (the worktree could not be made, the finish line
    /// changed, the judge's git failed) must not leave the task held: an agent run that never
    /// got to its end counts as a failed attempt (a `config` one is handed back: the breaker
    /// opens), and a judging or promotion lets go of its lease for the next try.
    fn after_error(&self, e: &anyhow::Error) {
        let Ok((tip, _)) = self.ours() else {
            return;
        };
        let running = self
            .store
            .load(&self.job.id)
            .is_ok_and(|s| s.task.state == State::Running);
        let text = format!("{e:#}");
        let mut line = text.lines().next().unwrap_or_default().to_string();
        if crate::error::disk_full(e) {
            line = format!("the disk is full: {line}");
        }
        let moved = if !running {
            None
        } else if crate::error::class_of(e) == Class::Config {
            Some(self.transition(Event::GiveBack(GiveBack::NotStarted), None, None, true))
        } else {
            let failure = Failure {
                how: format!("the run failed: {line}"),
                summary: line.clone(),
                signature: retry::signature(crate::error::class_of(e).name(), "runner", &text),
                context: format!("The previous attempt could not run: {text}"),
            };
            Some(self.transition(Event::Failed(failure), None, None, true))
        };
        if !matches!(moved, Some(Ok(_))) {
            let _ = self.repo.cas(&[Cas::Delete {
                name: refs::lease(&self.job.id),
                old: tip,
            }]);
        }
    }

    fn phase(&self, phase: Phase) {
        let _ = self.job.report.send(Msg::Phase {
            id: self.job.id.clone(),
            phase,
        });
    }

    /// Moves the task by `event`, writing `rec` with it, keeping the lease (`release` false)
    /// or releasing it in the same transaction.
    fn transition(
        &self,
        event: Event,
        rec: Option<&RunRecord>,
        keep: Option<ObjectId>,
        release: bool,
    ) -> Result<Task> {
        let moved = self.store.transition(
            &self.job.id,
            &event,
            &self.actor,
            &self.budget,
            |t: &Transition, edit: &mut Edit| {
                let (tip, lease) = self.ours()?;
                if let Some(rec) = rec {
                    let mut rec = rec.clone();
                    rec.backoff_ms = t.backoff.map(|b| b.as_millis() as u64);
                    edit.files = vec![(
                        format!("runs/{}.toml", rec.run),
                        toml::to_string(&rec)?.into_bytes(),
                    )];
                }
                edit.keep = keep.into_iter().collect();
                if release {
                    edit.also = vec![Cas::Delete {
                        name: refs::lease(&self.job.id),
                        old: tip,
                    }];
                } else {
                    // The lease must still be ours when the task moves on: it is renewed in
                    // the same transaction, a write, because a remote checks a ref only read
                    // against what it advertised, not under its lock (see
                    // [`crate::git::shared`]).
                    edit.also = vec![Cas::Update {
                        name: refs::lease(&self.job.id),
                        old: tip,
                        new: lease::renewed(&lease, self.job.policy.lease.ttl).commit(self.repo)?,
                    }];
                }
                Ok(())
            },
        )?;
        Ok(moved.task)
    }

    /// The lease of the job's task, if it is still this run's; a refusal otherwise.
    fn ours(&self) -> Result<(ObjectId, lease::Lease)> {
        ours(self.repo, self.job)
    }

    // ---- the agent ------------------------------------------------------------------------

    fn run_agent(&self) -> Result<Task> {
        let (job, repo) = (self.job, self.repo);
        let stored = self.store.load(&job.id)?;
        let mut task = stored.task;
        if let Some(signers) = &job.signers {
            // What is given to the agent is read after the claim: it must still be what a
            // listed key signed (a push since would have changed it under the claim).
            if let crate::trust::Verdict::Untrusted(why) =
                crate::trust::verify(repo, signers, &job.id, stored.commit)?
            {
                return Err(LoopError::new(
                    Class::Policy,
                    format!(
                        "task {} changed since it was claimed: {why}",
                        short(&job.id)
                    ),
                )
                .into());
            }
            // A failure's account another clone (or anyone who can push) wrote is not shown.
            if let Some(context) = &task.context
                && !crate::trust::is_ours(repo, crate::trust::Kept::Context, &job.id, context)
            {
                task.context = Some(
                    "A previous attempt failed; its account was recorded outside this clone \
                     and is not shown (the loop's [trust] setting)."
                        .to_string(),
                );
            }
        }
        let policy = &job.policy;
        let wt = worktree(job, repo, &self.git, &task)?;
        let target = target_tip(job, repo, &self.git)?;
        let template = super::attempt::template(repo, target, policy)?;
        let prompt = super::attempt::prompt(&template, &task, policy)?;
        let prompt_file = prompt_path(repo.common_dir(), &task.id, &job.run);
        if let Some(dir) = prompt_file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&prompt_file, prompt)?;
        let wt_shown = wt.to_string_lossy().into_owned();
        let argv =
            super::attempt::command(policy, &task, &prompt_file.to_string_lossy(), &wt_shown)?;
        // The sandbox: the worktree writable, the repository and the person's checkout not;
        // the branch and new objects go to a scratch the runner takes from after the run.
        let session = Session::prepare(
            &self.sandbox,
            repo,
            &wt,
            crate::sandbox::Owner::Run {
                task: &task.id,
                run: &job.run,
                branch: &task.branch,
            },
        )?;
        let mut env = vec![
            ("GIT_LOOP_TASK".into(), task.id.clone()),
            ("GIT_LOOP_RUN".into(), job.run.clone()),
            ("GIT_LOOP_WORKTREE".into(), wt_shown.clone()),
        ];
        if let Some(outbox) = session.outbox() {
            env.push((
                "GIT_LOOP_OUTBOX".into(),
                outbox.to_string_lossy().into_owned(),
            ));
        }
        let runnable = match (session.is_on(), argv.first()) {
            (true, Some(program)) => crate::sandbox::check_program(program, &wt).map_err(|why| {
                LoopError::new(
                    Class::Config,
                    format!("the agent program {program} cannot be run: {why}"),
                )
                .with_hint("fix agent.command in policy.toml, or install the program")
                .into()
            }),
            _ => Ok(()),
        };
        let start_head = repo.read_ref(&refs::branch(&task.branch))?;
        let spec = agent::Spec {
            argv: session.wrap(argv, &wt),
            cwd: wt.clone(),
            env,
            log: agent::log_path(repo.common_dir(), &task.id, &job.run),
            tail_bytes: policy.agent.tail_bytes as usize,
            token: policy.loop_.completion_token.clone(),
            stall_timeout: policy.agent.stall_timeout,
            timeout: policy.agent.timeout,
            exit_grace: policy.agent.exit_grace,
            stop: job.stop.clone(),
        };
        let started = Timestamp::now();
        let branch_ref = refs::branch(&task.branch);
        let watcher = repo.another_handle();
        let mut seen_tip = stored.commit;
        let mut withdrawn: Option<String> = None;
        let outcome = runnable.and_then(|()| {
            agent::run(
                &spec,
                || match still_ours(&watcher, job, &mut seen_tip) {
                    Ok(()) => agent::Watch::Progress(session.branch_mark().unwrap_or_else(|| {
                        watcher
                            .read_ref(&branch_ref)
                            .ok()
                            .flatten()
                            .map(|id| id.to_string())
                    })),
                    Err(why) => {
                        withdrawn = Some(why);
                        agent::Watch::Withdrawn
                    }
                },
                |pgid| {
                    let _ = record_pgid(repo, job, pgid);
                },
            )
        });
        // What the run made: its objects and its branch, out of the sandbox's scratch.
        let outbox = match session.harvest(repo) {
            Ok((said, outbox)) => {
                for s in said {
                    tracing::warn!("{}: {s}", short(&job.id));
                }
                outbox
            }
            Err(e) => {
                tracing::warn!("{}: taking the run's work: {e:#}", short(&job.id));
                None
            }
        };
        let mut rec = run_record(job, &task, started);
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) if crate::error::class_of(&e) == Class::Config => {
                // Not an attempt: nothing ran. The task goes back; the breaker opens.
                rec.outcome = "config".into();
                self.transition(
                    Event::GiveBack(GiveBack::NotStarted),
                    Some(&rec),
                    None,
                    true,
                )?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let head = repo.read_ref(&branch_ref)?;
        // Discovered work (trailers of the run's new commits, the outbox), and notes on those
        // commits: what the post-commit hook does outside a sandbox, done for the run.
        crate::hooks::take_run(
            repo,
            &self.store,
            &task.id,
            &job.run,
            (start_head, head),
            outbox.as_deref(),
        );
        rec.token_seen = outcome.token_seen;
        rec.tail = outcome.tail.clone();
        rec.head = head.map(|h| h.to_string());
        if let agent::Ended::Exited(code) = outcome.ended {
            rec.exit_code = code;
        }
        match outcome.ended {
            agent::Ended::Withdrawn => {
                let why = withdrawn.unwrap_or_else(|| "the task is no longer this run's".into());
                return Err(Refusal::withdrawn(format!(
                    "task {}: the agent's run was ended: {why}",
                    short(&job.id)
                ))
                .into());
            }
            agent::Ended::Stopped => {
                // The runner is stopping: not the agent's failure, and not an attempt.
                rec.outcome = "stopped".into();
                return self.transition(Event::GiveBack(GiveBack::Stopped), Some(&rec), head, true);
            }
            _ => {}
        }
        match super::attempt::verdict(&outcome, rec.exit_code, policy) {
            Verdict::Completed => {
                rec.outcome = "completed".into();
                self.transition(Event::Completed, Some(&rec), head, false)
            }
            Verdict::Quota => {
                rec.outcome = "quota".into();
                rec.signature = retry::signature("quota", "agent", "quota");
                self.transition(Event::Quota, Some(&rec), head, true)
            }
            Verdict::Failed { how, text } => {
                rec.outcome = how.into();
                rec.signature = retry::signature("transient", "agent", &text);
                let failure = Failure {
                    how: how.to_string(),
                    summary: text.lines().next().unwrap_or_default().to_string(),
                    signature: rec.signature.clone(),
                    context: format!("The previous attempt ({how}): {text}"),
                };
                self.transition(Event::Failed(failure), Some(&rec), head, true)
            }
        }
    }

    // ---- the judge ------------------------------------------------------------------------

    fn judge(&self) -> Result<Task> {
        let (job, repo) = (self.job, self.repo);
        let task = self.store.load(&job.id)?.task;
        // The work as the task's latest run left it, wherever that ran.
        super::worktree::settle(job, repo, &self.git, &task)?;
        // The target as last seen: the judge compares the branch with the target it grew from,
        // and the promotion that follows fetches the remote's target anyway.
        target_tip(job, repo, &self.git)?;
        // The finish line from the pin, once the target is found to match it: never from a
        // working file, never from the branch.
        let frozen = crate::finish_line::frozen(repo, &job.policy)?;
        // Each gate's process group goes into the lease, so that a reaper ends it if we die.
        let started = |pgid| {
            let _ = record_pgid(repo, job, pgid);
        };
        let verdict = crate::judge::judge(
            repo,
            &self.git,
            &job.policy.loop_.target,
            &frozen,
            &task,
            crate::gate::Limits {
                timeout: frozen.sections.gate.timeout,
                started: &started,
                stop: Some(&job.stop),
                sandbox: Some(&self.sandbox),
            },
        )?;
        if let Some(head) = verdict.head {
            let note = format!(
                "task: {}\nrun: {}\njudged: {}\n{}\n",
                task.id,
                job.run,
                if verdict.passed { "passed" } else { "failed" },
                verdict.results.join("\n")
            );
            let _ = repo.set_note(refs::NOTES, head, &note);
        }
        let mut rec = RunRecord {
            run: format!("{}-judge", job.run),
            attempt: task.attempts,
            runner: job.runner.clone(),
            started: Timestamp::now().to_rfc3339(),
            ended: Timestamp::now().to_rfc3339(),
            outcome: if verdict.passed {
                "approved".into()
            } else {
                format!("rejected: {}", verdict.step)
            },
            head: verdict.head.map(|h| h.to_string()),
            // What each command did, and for a rejection what the next run is told.
            tail: verdict
                .results
                .iter()
                .cloned()
                .chain((!verdict.passed).then(|| verdict.context.clone()))
                .collect::<Vec<_>>()
                .join("\n"),
            ..RunRecord::default()
        };
        if verdict.passed {
            let head = verdict
                .head
                .context("an approval names a commit")?
                .to_string();
            crate::trust::remember(repo, crate::trust::Kept::Approved, &job.id, &head);
            let event = Event::Approved {
                head,
                summary: verdict.summary.clone(),
            };
            // The judged head is kept reachable from the task: it travels with the task to
            // every clone, for the promotion wherever it runs.
            return self.transition(event, Some(&rec), verdict.head, false);
        }
        rec.signature = retry::signature("policy", verdict.step, &verdict.summary);
        let failure = Failure {
            how: format!("rejected: {}", verdict.step),
            summary: verdict.summary.clone(),
            signature: rec.signature.clone(),
            context: verdict.context.clone(),
        };
        self.transition(Event::Rejected(failure), Some(&rec), verdict.head, true)
    }

    // ---- the promotion --------------------------------------------------------------------

    fn promote(&self) -> Result<String> {
        let (job, repo) = (self.job, self.repo);
        // A promotion not begun yet starts from the approved work, wherever it was judged;
        // one begun goes on from its checkpoints, whatever its cleanup did to the branch.
        if repo.read_ref(&refs::promote(&job.id))?.is_none() {
            let task = self.store.load(&job.id)?.task;
            super::worktree::settle(job, repo, &self.git, &task)?;
        }
        let result = crate::promote::promote(
            repo,
            &job.policy,
            &job.id,
            &crate::promote::Options {
                dry_run: false,
                by: job.runner.clone(),
                actor: self.actor.clone(),
                release: Some(crate::promote::Release {
                    runner: job.runner.clone(),
                    run: job.run.clone(),
                }),
                stop: Some(job.stop.clone()),
            },
        );
        if let Err(e) = &result
            && Refusal::of(e).is_some()
        {
            return result.map(|_| String::new());
        }
        let Ok((lease_tip, _)) = self.ours() else {
            // A promotion that made the task done released the lease with it.
            return match result {
                Ok(_) => Ok(self.store.load(&job.id)?.task.state_label()),
                Err(e) => Err(e),
            };
        };
        let promoting = self.store.load(&job.id)?.task.state == State::Promoting;
        // The promotion moved the task itself where it knew where to (done, blocked on a
        // follow-up, back to the judge). What is left: a promotion that failed and left the
        // task `promoting` is classified — a refusal retrying cannot change blocks the task;
        // anything else waits a backoff that grows with the failures in a row, and the runner
        // counts it toward the breaker — and the lease goes in the same transaction.
        let event = match &result {
            // A stop that ended a verify command is no failure of the promotion.
            Err(_) if self.stopping() => None,
            Err(e) if promoting => {
                let text = format!("{e:#}");
                let line = text.lines().next().unwrap_or_default().to_string();
                match crate::error::class_of(e) {
                    Class::Policy => Some(Event::PromotionRefused { detail: line }),
                    // Config opens the breaker, which re-arms by itself; a breaker that is
                    // open refused the promotion: the task waits for it, as it is.
                    Class::Config | Class::Breaker => None,
                    // Anything else is tried again after a backoff, a bounded number of times.
                    class => Some(Event::PromotionFailed {
                        signature: retry::signature(class.name(), PROMOTE_STEP, &text),
                        line,
                    }),
                }
            }
            _ => None,
        };
        match event {
            Some(event) => {
                self.transition(event, None, None, true)?;
            }
            None => {
                self.repo.cas(&[Cas::Delete {
                    name: refs::lease(&job.id),
                    old: lease_tip,
                }])?;
            }
        }
        match result {
            Ok(_) => Ok(self.store.load(&job.id)?.task.state_label()),
            Err(e) => Err(e),
        }
    }

    // ---- letting go -----------------------------------------------------------------------

    /// The state machine refused what this run would do: the task is someone else's now.
    /// The agent's group is already ended (a run never outlives [`agent::run`]); what the run
    /// left is saved — uncommitted work, and the branch's commits — the worktree removed, the
    /// lease released if it is still this run's, and the refusal recorded.
    fn let_go(&self, refusal: &anyhow::Error) -> Result<String> {
        let (job, repo) = (self.job, self.repo);
        let why = format!("{refusal:#}");
        let mut said = Vec::new();
        let wt = worktree_path(repo, &job.id);
        let mut keep = Vec::new();
        let task = self.store.load(&job.id).ok().map(|s| s.task);
        let branch_head = match &task {
            Some(t) => repo.read_ref(&refs::branch(&t.branch))?,
            None => None,
        };
        // The worktree is this run's to clear unless the task's lease is someone else's now
        // (another run may be working in it).
        let someone_else = matches!(lease::read(repo, &job.id)?, Some((_, Ok(l))) if l.run != job.run || l.runner != job.runner);
        if someone_else {
            said.push(format!(
                "left {}: the task is leased to another run",
                wt.display()
            ));
        } else if wt.exists() {
            match crate::rescue::save_checkout(repo, &self.git, &wt, &job.id, branch_head) {
                Ok(saved) => {
                    said.extend(saved);
                    match crate::rescue::remove_worktree(repo, &wt) {
                        Ok(_) => said.push(format!("removed {}", wt.display())),
                        Err(e) => said.push(format!("left {}: {e:#}", wt.display())),
                    }
                }
                // Nothing is removed that could not be saved: the worktree stays for a person
                // (or the next reap) to look at.
                Err(e) => said.push(format!(
                    "left {} where it is: its work could not be saved: {e:#}",
                    wt.display()
                )),
            }
        }
        if let Some(task) = &task
            && let Some(head) = branch_head
        {
            let in_target = target_tip(job, repo, &self.git)
                .ok()
                .is_some_and(|t| repo.is_ancestor(head, t).unwrap_or(false));
            if !in_target {
                let rescue = crate::rescue::save_rescue(repo, &job.id, head)?;
                said.push(format!("saved {} in {rescue}", task.branch));
                keep.push(head);
            }
        }
        if let Ok((tip, _)) = self.ours() {
            repo.cas(&[Cas::Delete {
                name: refs::lease(&job.id),
                old: tip,
            }])?;
            said.push("released the lease".to_string());
        }
        let line = why.lines().next().unwrap_or_default().to_string();
        let mut message = format!("refused by {}: {line}", job.runner);
        if !said.is_empty() {
            message.push_str(&format!("; {}", said.join("; ")));
        }
        self.store.note_refusal(&job.id, &message, &keep)?;
        Ok(format!(
            "refused: {line}{}",
            task.map(|t| format!(" (the task is {})", t.state_label()))
                .unwrap_or_default()
        ))
    }
}

/// Whether the task is still the run's: its lease is, and the task is `running` (read again
/// only when its ref moved since `seen`). `Err` says why not.
fn still_ours(repo: &Repo, job: &Job, seen: &mut ObjectId) -> std::result::Result<(), String> {
    if let Err(e) = ours(repo, job) {
        return Err(format!("{e:#}"));
    }
    let tip = repo
        .read_ref(&refs::task(&job.id))
        .map_err(|e| format!("{e:#}"))?
        .ok_or_else(|| "its task ref is gone".to_string())?;
    if tip != *seen {
        let task = Store::new(repo)
            .load(&job.id)
            .map_err(|e| format!("{e:#}"))?
            .task;
        if task.state != State::Running {
            return Err(format!("the task is {} now", task.state_label()));
        }
        *seen = tip;
    }
    Ok(())
}

fn run_record(job: &Job, task: &Task, started: Timestamp) -> RunRecord {
    RunRecord {
        run: job.run.clone(),
        attempt: task.attempts,
        runner: job.runner.clone(),
        started: started.to_rfc3339(),
        ended: Timestamp::now().to_rfc3339(),
        ..RunRecord::default()
    }
}

/// The lease of the job's task, if it is still this run's; a refusal otherwise.
fn ours(repo: &Repo, job: &Job) -> Result<(ObjectId, lease::Lease)> {
    match lease::read(repo, &job.id)? {
        Some((tip, Ok(l))) if l.runner == job.runner && l.run == job.run => Ok((tip, l)),
        Some((_, Ok(l))) => Err(Refusal::withdrawn(format!(
            "task {} is no longer leased to this run: {} holds it for {}",
            short(&job.id),
            l.runner,
            l.purpose
        ))
        .into()),
        _ => Err(Refusal::withdrawn(format!(
            "task {} is no longer leased to this run",
            short(&job.id)
        ))
        .into()),
    }
}

/// Records a process group of the job (the agent's, a gate's) in its lease, so that a reaper
/// or `stop` can end it; nothing when the lease is no longer the job's.
fn record_pgid(repo: &Repo, job: &Job, pgid: u32) -> Result<()> {
    for _ in 0..20 {
        let Ok((tip, mut l)) = ours(repo, job) else {
            return Ok(());
        };
        l.pgid = Some(pgid);
        l.pgid_start = crate::process::start_time(pgid);
        let new = l.commit(repo)?;
        if repo.cas(&[Cas::Update {
            name: refs::lease(&job.id),
            old: tip,
            new,
        }])? == CasOutcome::Applied
        {
            return Ok(());
        }
    }
    Ok(())
}

/// The step name in the failure signatures of promotions.
const PROMOTE_STEP: &str = "promote";

/// The prompt file of a run (for tests and status).
pub fn prompt_path(common_dir: &Path, id: &str, run: &str) -> PathBuf {
    common_dir
        .join("loop")
        .join("prompts")
        .join(format!("{id}-{run}.md"))
}

//! One claimed task, carried by a worker thread: the agent run, the judge, the promotion. Every
//! state change is a compare-and-swap on the task ref that checks the task is still ours; the
//! lease is released in the transaction that moves the task on.

use crate::ids::short;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use gix::ObjectId;
use serde::Serialize;

use crate::agent;
use crate::error::{Class, LoopError};
use crate::git::cli::Git;
use crate::git::{Cas, CasOutcome, Repo};
use crate::lease::{self, lease_ref};
use crate::policy::Policy;
use crate::retry;
use crate::store::{Edit, Store, Updated};
use crate::task::{State, Task, reason};
use crate::time::Timestamp;

/// What a worker was given.
pub struct Job {
    pub workdir: PathBuf,
    pub policy: Policy,
    pub runner: String,
    pub id: String,
    pub run: String,
    pub purpose: String,
    /// Set when the runner is stopping.
    pub stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// A run record, `runs/<run>.toml` in the task's tree.
#[derive(Debug, Default, Serialize)]
struct RunRecord {
    run: String,
    attempt: u32,
    runner: String,
    started: String,
    ended: String,
    /// completed, quota, transient, config, stalled, timed_out
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
    let store = Store::new(&repo);
    let git = Git::new(&job.workdir, !repo.has_identity()).locking_worktrees(repo.common_dir());
    let mut purpose = job.purpose.as_str();
    if purpose == "agent" {
        let task = run_agent(job, &repo, &store, &git)?;
        if task.state != State::AwaitingJudge {
            return Ok(task.state_label());
        }
        purpose = "judge";
    }
    if purpose == "judge" {
        let task = judge(job, &repo, &store, &git)?;
        if task.state != State::Promoting {
            return Ok(task.state_label());
        }
    }
    promote(job, &repo, &store)
}

/// The task's worktree, made (or reused) on its branch.
fn worktree(job: &Job, repo: &Repo, git: &Git, task: &Task) -> Result<PathBuf> {
    let path = repo
        .common_dir()
        .join("loop")
        .join("worktrees")
        .join(short(&task.id));
    let shown = path.to_string_lossy().into_owned();
    repo.interrupted_adds(true)?;
    if crate::rescue::worktree_link_valid(&path) {
        return Ok(path);
    }
    let branch_ref = format!("refs/heads/{}", task.branch);
    let branch_head = repo.read_ref(&branch_ref)?;
    if path.exists() {
        // A directory without working git metadata: a removal interrupted. Save what differs
        // from the branch, then start it again.
        crate::rescue::rescue_files(repo, git, &path, &task.id, branch_head)?;
        std::fs::remove_dir_all(&path).with_context(|| format!("clearing {shown}"))?;
    }
    if branch_head.is_none() {
        let start = target_tip(job, repo, git)?;
        let created = repo.cas(&[Cas::Create {
            name: branch_ref.clone(),
            new: start,
        }])?;
        if created != CasOutcome::Applied {
            return Err(LoopError::new(
                Class::Transient,
                format!(
                    "the branch {} could not be made (it appeared meanwhile, or is locked)",
                    task.branch
                ),
            )
            .into());
        }
    }
    let add = || repo.add_worktree(git, &path, &task.branch);
    if let Err(e) = add() {
        // A worktree whose directory was deleted by hand is still registered (and still holds
        // the branch): its metadata is stale, so prune it and try once more. (Asked of the
        // metadata, not of the error's wording.)
        let ours = Path::new("loop").join("worktrees").join(short(&task.id));
        let stale = repo
            .worktrees()?
            .iter()
            .any(|w| w.path.ends_with(&ours) && !w.path.exists());
        if !stale {
            return Err(e);
        }
        git.run(&["worktree", "prune"])?;
        add()?;
    }
    Ok(path)
}

/// The target's tip: the remote's as last fetched (fetched now if never) when there is one,
/// else the local one. Promotion fetches before it merges; everything before it may work from
/// the last view.
fn target_tip(job: &Job, repo: &Repo, git: &Git) -> Result<ObjectId> {
    let target = &job.policy.loop_.target;
    let name = match &job.policy.loop_.remote {
        Some(remote) => {
            let tracking = crate::git::tracking_ref(remote, target);
            if repo.read_ref(&tracking)?.is_none() {
                git.fetch(remote, &format!("+refs/heads/{target}:{tracking}"))?;
            }
            tracking
        }
        None => format!("refs/heads/{target}"),
    };
    repo.read_ref(&name)?.ok_or_else(|| {
        LoopError::new(
            Class::Config,
            format!("the target branch {target} does not exist"),
        )
        .into()
    })
}

fn run_agent(job: &Job, repo: &Repo, store: &Store<'_>, git: &Git) -> Result<Task> {
    let task = store.load(&job.id)?.task;
    let policy = &job.policy;
    let wt = worktree(job, repo, git, &task)?;
    let template_path = wt.join(&policy.agent.prompt);
    let template = std::fs::read_to_string(&template_path).map_err(|e| {
        LoopError::new(
            Class::Config,
            format!(
                "the prompt template {} cannot be read: {e}",
                policy.agent.prompt
            ),
        )
        .with_hint(format!(
            "commit {} on {}",
            policy.agent.prompt, policy.loop_.target
        ))
    })?;
    let attempt = task.attempts.to_string();
    let context = task.context.clone().unwrap_or_default();
    let prompt = agent::render(
        &template,
        &[
            ("id", &task.id),
            ("title", &task.title),
            ("body", &task.body),
            ("attempt", &attempt),
            ("context", &context),
            ("token", &policy.loop_.completion_token),
            ("branch", &task.branch),
        ],
        &policy.agent.prompt,
    )?;
    let prompts = repo.common_dir().join("loop").join("prompts");
    std::fs::create_dir_all(&prompts)?;
    let prompt_file = prompts.join(format!("{}-{}.md", task.id, job.run));
    std::fs::write(&prompt_file, prompt)?;
    let wt_shown = wt.to_string_lossy().into_owned();
    let pf = prompt_file.to_string_lossy().into_owned();
    let values = [
        ("prompt_file", pf.as_str()),
        ("task_id", task.id.as_str()),
        ("worktree", wt_shown.as_str()),
        ("branch", task.branch.as_str()),
        ("attempt", attempt.as_str()),
    ];
    let argv = policy
        .agent
        .command
        .iter()
        .map(|a| agent::render(a, &values, "agent.command"))
        .collect::<Result<Vec<_>>>()?;
    let spec = agent::Spec {
        argv,
        cwd: wt.clone(),
        env: vec![
            ("GIT_LOOP_TASK".into(), task.id.clone()),
            ("GIT_LOOP_RUN".into(), job.run.clone()),
            ("GIT_LOOP_WORKTREE".into(), wt_shown.clone()),
        ],
        log: agent::log_path(repo.common_dir(), &task.id, task.attempts),
        tail_bytes: policy.agent.tail_bytes as usize,
        token: policy.loop_.completion_token.clone(),
        stall_timeout: policy.agent.stall_timeout,
        timeout: policy.agent.timeout,
        exit_grace: policy.agent.exit_grace,
        stop: job.stop.clone(),
    };
    let started = Timestamp::now();
    let branch_ref = format!("refs/heads/{}", task.branch);
    let progress_repo = repo.another_handle();
    let outcome = agent::run(
        &spec,
        || {
            progress_repo
                .read_ref(&branch_ref)
                .ok()
                .flatten()
                .map(|id| id.to_string())
        },
        |pgid| {
            let _ = record_pgid(repo, job, pgid);
        },
    );
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) if crate::error::class_of(&e) == Class::Config => {
            // Not an attempt: nothing ran. The task goes back; the runner stops for a person.
            finish(
                store,
                repo,
                job,
                &RunRecord {
                    outcome: "config".into(),
                    ..run_record(job, &task, started)
                },
                |t, _| {
                    t.attempts = t.attempts.saturating_sub(1);
                    t.set_state(State::Ready, None, None);
                    "running -> ready: the agent could not be started".into()
                },
            )?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let head = repo.read_ref(&branch_ref)?;
    let mut rec = run_record(job, &task, started);
    rec.token_seen = outcome.token_seen;
    rec.tail = outcome.tail.clone();
    rec.head = head.map(|h| h.to_string());
    if let agent::Ended::Exited(code) = outcome.ended {
        rec.exit_code = code;
    }
    let code = rec.exit_code;
    if outcome.ended == agent::Ended::Stopped {
        // The runner is stopping: not the agent's failure, and not an attempt.
        rec.outcome = "stopped".into();
        return finish(store, repo, job, &rec, |t, _| {
            t.attempts = t.attempts.saturating_sub(1);
            t.set_state(
                State::Ready,
                None,
                Some("requeued: the runner stopped".into()),
            );
            "running -> ready: the runner stopped".into()
        });
    }
    if outcome.token_seen {
        rec.outcome = "completed".into();
        return finish_keeping_lease(store, job, &rec, head, |t| {
            t.set_state(State::AwaitingJudge, None, None);
            "running -> awaiting_judge: completion token found".into()
        });
    }
    let retry_policy = policy.retry.clone();
    if retry::is_quota(
        &outcome.tail,
        code,
        &policy.agent.quota_patterns,
        &policy.agent.quota_exit_codes,
    ) {
        rec.outcome = "quota".into();
        rec.signature = retry::signature("quota", "agent", "quota");
        let cooldown = policy.agent.quota_cooldown;
        let sig = rec.signature.clone();
        return finish(store, repo, job, &rec, move |t, _| {
            // Not an attempt; the wait doubles while the quota persists.
            t.attempts = t.attempts.saturating_sub(1);
            let streak = t.signatures.iter().rev().take_while(|s| **s == sig).count() as u32;
            t.signatures.push(sig.clone());
            let wait = cooldown
                .saturating_mul(1u32 << streak.min(16))
                .min(retry_policy.max.max(cooldown));
            t.next_at = Some(Timestamp::now().plus(wait));
            t.set_state(
                State::QuotaWait,
                None,
                Some(format!(
                    "quota hit; retry after {}",
                    crate::time::format_duration(wait)
                )),
            );
            format!(
                "running -> quota_wait: quota or rate limit ({} wait)",
                crate::time::format_duration(wait)
            )
        });
    }
    let (how, text) = match outcome.ended {
        agent::Ended::Stalled => (
            "stalled",
            "no output and no new commit within agent.stall_timeout".to_string(),
        ),
        agent::Ended::TimedOut => ("timed_out", "still running after agent.timeout".to_string()),
        agent::Ended::Exited(c) => (
            "transient",
            format!(
                "exited {} without the completion token: {}",
                c.map_or("by a signal".into(), |c| c.to_string()),
                last_lines(&outcome.tail, 20)
            ),
        ),
        agent::Ended::EndedAfterToken | agent::Ended::Stopped => ("completed", String::new()),
    };
    rec.outcome = how.into();
    rec.signature = retry::signature("transient", "agent", &text);
    transient(store, repo, job, rec, text)
}

/// A transient failure: the same signature too often → needs_rework; attempts used up →
/// blocked: attempts_exhausted; otherwise ready again after a full-jitter backoff.
fn transient(
    store: &Store<'_>,
    repo: &Repo,
    job: &Job,
    mut rec: RunRecord,
    text: String,
) -> Result<Task> {
    let policy = job.policy.retry.clone();
    let sig = rec.signature.clone();
    let wait = retry::backoff(&policy, rec.attempt.max(1));
    rec.backoff_ms = Some(wait.as_millis() as u64);
    let how = rec.outcome.clone();
    finish(store, repo, job, &rec, move |t, _| {
        t.signatures.push(sig.clone());
        t.context = Some(format!("The previous attempt ({how}): {text}"));
        if retry::repeated(&t.signatures, policy.same_signature) {
            t.set_state(
                State::NeedsRework,
                None,
                Some(format!(
                    "the same failure {} times in a row",
                    policy.same_signature
                )),
            );
            return format!(
                "running -> needs_rework: the same failure {} times ({how})",
                policy.same_signature
            );
        }
        if t.attempts >= policy.max_attempts {
            t.rounds += 1;
            t.next_at = Some(Timestamp::now().plus(policy.cooloff));
            t.set_state(
                State::Blocked,
                Some(reason::ATTEMPTS_EXHAUSTED),
                Some(format!(
                    "{} attempts failed; next round after {}",
                    t.attempts,
                    crate::time::format_duration(policy.cooloff)
                )),
            );
            return format!("running -> blocked: attempts_exhausted ({how})");
        }
        t.next_at = Some(Timestamp::now().plus(wait));
        t.set_state(
            State::Ready,
            None,
            Some(format!(
                "retry after {}",
                crate::time::format_duration(wait)
            )),
        );
        format!(
            "running -> ready: {how}; retry {} of {} after {} ms",
            t.attempts + 1,
            policy.max_attempts,
            wait.as_millis()
        )
    })
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

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Writes the run record and the task's next state, releasing the lease in the same
/// transaction. Refuses if the task is no longer ours (its lease changed hands).
fn finish(
    store: &Store<'_>,
    repo: &Repo,
    job: &Job,
    rec: &RunRecord,
    mut next: impl FnMut(&mut Task, &Repo) -> String,
) -> Result<Task> {
    let file = (
        format!("runs/{}.toml", job.run),
        toml::to_string(rec)?.into_bytes(),
    );
    let keep: Vec<ObjectId> = rec
        .head
        .as_deref()
        .and_then(|h| crate::git::oid(h).ok())
        .into_iter()
        .collect();
    let updated = store.update(&job.id, |t| {
        let (tip, lease) = ours(repo, job)?;
        let message = next(t, repo);
        let mut edit = Edit::new(message);
        edit.files = vec![file.clone()];
        edit.keep = keep.clone();
        edit.also = vec![Cas::Delete {
            name: lease_ref(&job.id),
            old: tip,
        }];
        let _ = lease;
        Ok(edit)
    })?;
    Ok(match updated {
        Updated::Changed(t) | Updated::Unchanged(t) => t,
    })
}

/// Like [`finish`], keeping the lease (the worker goes on to judge the task).
fn finish_keeping_lease(
    store: &Store<'_>,
    job: &Job,
    rec: &RunRecord,
    head: Option<ObjectId>,
    mut next: impl FnMut(&mut Task) -> String,
) -> Result<Task> {
    let file = (
        format!("runs/{}.toml", job.run),
        toml::to_string(rec)?.into_bytes(),
    );
    let updated = store.update(&job.id, |t| {
        let mut edit = Edit::new(next(t));
        edit.files = vec![file.clone()];
        edit.keep = head.into_iter().collect();
        Ok(edit)
    })?;
    Ok(match updated {
        Updated::Changed(t) | Updated::Unchanged(t) => t,
    })
}

/// The lease of the job's task, if it is still this runner's; a refusal otherwise.
fn ours(repo: &Repo, job: &Job) -> Result<(ObjectId, lease::Lease)> {
    match lease::read(repo, &job.id)? {
        Some((tip, Ok(l))) if l.runner == job.runner && l.run == job.run => Ok((tip, l)),
        _ => Err(LoopError::new(
            Class::Generic,
            format!("task {} is no longer leased to this runner", short(&job.id)),
        )
        .into()),
    }
}

/// Records a process group of the job (the agent's, a gate's) in its lease, so that a reaper
/// or `stop` can end it; nothing when the lease is no longer the job's.
fn record_pgid(repo: &Repo, job: &Job, pgid: u32) -> Result<()> {
    let id = &job.id;
    for _ in 0..20 {
        let Ok((tip, mut l)) = ours(repo, job) else {
            return Ok(());
        };
        l.pgid = Some(pgid);
        l.pgid_start = crate::process::start_time(pgid);
        let new = l.commit(repo)?;
        if repo.cas(&[Cas::Update {
            name: lease_ref(id),
            old: tip,
            new,
        }])? == crate::git::CasOutcome::Applied
        {
            return Ok(());
        }
    }
    Ok(())
}

fn judge(job: &Job, repo: &Repo, store: &Store<'_>, git: &Git) -> Result<Task> {
    let task = store.load(&job.id)?.task;
    // The target as last seen: the judge compares the branch with the target it grew from,
    // and the promotion that follows fetches the remote's target anyway.
    let tip = target_tip(job, repo, git)?;
    // Each gate's process group goes into the lease, so that a reaper ends it if we die.
    let started = |pgid| {
        let _ = record_pgid(repo, job, pgid);
    };
    let verdict = crate::judge::judge(repo, git, &job.policy, &task, tip, &started)?;
    if let Some(head) = verdict.head {
        let note = format!(
            "task: {}\nrun: {}\njudged: {}\n{}\n",
            task.id,
            job.run,
            if verdict.passed { "passed" } else { "failed" },
            verdict.results.join("\n")
        );
        let _ = repo.set_note(crate::promote::NOTES_REF, head, &note);
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
        tail: verdict.results.join("\n"),
        ..RunRecord::default()
    };
    if verdict.passed {
        let head = verdict
            .head
            .context("an approval names a commit")?
            .to_string();
        let summary = verdict.summary.clone();
        let file = (
            format!("runs/{}.toml", rec.run),
            toml::to_string(&rec)?.into_bytes(),
        );
        let updated = store.update(&job.id, |t| {
            ours(repo, job)?;
            t.approved = Some(head.clone());
            t.signatures.clear();
            t.context = None;
            t.set_state(State::Promoting, None, None);
            let mut edit = Edit::new(format!("awaiting_judge -> promoting: {summary}"));
            edit.files = vec![file.clone()];
            Ok(edit)
        })?;
        return Ok(match updated {
            Updated::Changed(t) | Updated::Unchanged(t) => t,
        });
    }
    rec.signature = retry::signature("policy", verdict.step, &verdict.summary);
    let sig = rec.signature.clone();
    let (summary, context, same) = (
        verdict.summary.clone(),
        verdict.context.clone(),
        job.policy.retry.same_signature,
    );
    finish(store, repo, job, &rec, move |t, _| {
        t.signatures.push(sig.clone());
        t.context = Some(context.clone());
        let again = if retry::repeated(&t.signatures, same) {
            " (the same failure again)"
        } else {
            ""
        };
        t.set_state(State::NeedsRework, None, Some(summary.clone()));
        format!("awaiting_judge -> needs_rework: {summary}{again}")
    })
}

/// The step name in the failure signatures of promotions.
const PROMOTE_STEP: &str = "promote";

fn promote(job: &Job, repo: &Repo, store: &Store<'_>) -> Result<String> {
    let result = crate::promote::promote(
        repo,
        &job.policy,
        &job.id,
        &crate::promote::Options {
            dry_run: false,
            by: job.runner.clone(),
            release: Some(crate::promote::Release {
                runner: job.runner.clone(),
                run: job.run.clone(),
            }),
        },
    );
    // A promotion that made the task done released the lease with it.
    if result.is_ok() && ours(repo, job).is_err() {
        return Ok(store.load(&job.id)?.task.state_label());
    }
    // The promotion itself moved the task; what is left is the lease and, when it failed and
    // left the task `promoting`, a wait before the next try. A failure that nobody classified
    // (say, an unexpected `git merge-tree` error) would fail again at once: the wait grows with
    // each failure in a row, and the runner counts them toward the breaker.
    let failure = result.as_ref().err().map(|e| {
        let text = format!("{e:#}");
        let line = text.lines().next().unwrap_or_default().to_string();
        (
            retry::signature(crate::error::class_of(e).name(), PROMOTE_STEP, &text),
            line,
        )
    });
    let _ = store.update(&job.id, |t| {
        let (tip, _) = ours(repo, job)?;
        let mut message = format!("{}: released by {}", t.state_label(), job.runner);
        if let Some((sig, line)) = &failure
            && t.state == State::Promoting
        {
            t.signatures.push(sig.clone());
            let in_a_row = t
                .signatures
                .iter()
                .rev()
                .take_while(|s| s.split(':').nth(1) == Some(PROMOTE_STEP))
                .count() as u32;
            let wait = retry::backoff(&job.policy.retry, in_a_row).max(Duration::from_millis(100));
            t.next_at = Some(Timestamp::now().plus(wait));
            message = format!(
                "promoting: promotion failed ({in_a_row} in a row: {line}); next try after {}; \
                 released by {}",
                crate::time::format_duration(wait),
                job.runner
            );
        }
        let mut edit = Edit::new(message);
        edit.also = vec![Cas::Delete {
            name: lease_ref(&job.id),
            old: tip,
        }];
        Ok(edit)
    });
    match result {
        Ok(_) => Ok(store.load(&job.id)?.task.state_label()),
        Err(e) => Err(e),
    }
}

/// The prompt file of a run (for tests and status).
pub fn prompt_path(common_dir: &Path, id: &str, run: &str) -> PathBuf {
    common_dir
        .join("loop")
        .join("prompts")
        .join(format!("{id}-{run}.md"))
}

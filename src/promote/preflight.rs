//! `preflight`: the promotion's preconditions, which commit it is for, and its approval.

use super::*;

impl Promotion<'_> {
    pub(super) fn preflight(&mut self) -> Result<()> {
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
        self.freeze()?;
        self.check_manifest(target_tip)?;
        // Under [trust], a checkpoint (its source, its merge) and an approval are anyone's who
        // can push refs/loop/*: only a checkpoint this clone wrote is gone on from, and a
        // runner promotes only what this clone's judge (or gates, here) approved — any other
        // goes back to the judge.
        if self.frozen()?.sections.trust.signers.is_some() {
            use crate::trust::{Kept, is_ours};
            if let Some(tip) = self.chain.tip
                && !is_ours(self.repo, Kept::Promote, &self.id, &tip.to_string())
            {
                return Err(policy_error(format!(
                    "the promotion checkpoint of task {} ({}) was not written by this clone \
                     ([trust]): it is not gone on from",
                    self.short(),
                    short(&tip.to_string())
                ))
                .with_hint(format!(
                    "look at refs/loop/promote/{}; delete it to promote from this clone's branch",
                    self.id
                ))
                .into());
            }
            let approved_here = self
                .task
                .approved
                .as_deref()
                .is_some_and(|a| is_ours(self.repo, Kept::Approved, &self.id, a));
            if matches!(self.actor, crate::task::machine::Actor::Runner(_)) && !approved_here {
                let message = format!(
                    "task {} was not approved by this clone's judge ([trust]): it is judged again",
                    self.short()
                );
                self.transition(Event::BranchMoved {
                    detail: message.clone(),
                })?;
                return Err(policy_error(message).into());
            }
        }

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
    pub(super) fn target_tip(&mut self) -> Result<ObjectId> {
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
    pub(super) fn recently_seen(&self) -> Result<Option<ObjectId>> {
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
    pub(super) fn saw_remote_tip(&self, tip: ObjectId) {
        if let Some(key) = self.seen_key()
            && let Ok(mut seen) = SEEN.lock()
        {
            seen.insert(key, (tip, std::time::Instant::now()));
        }
    }

    /// This promotion's key in [`SEEN`], when there is a remote.
    pub(super) fn seen_key(&self) -> Option<(PathBuf, String, String)> {
        Some((
            self.repo.common_dir().to_path_buf(),
            self.remote()?.to_string(),
            self.target().to_string(),
        ))
    }

    /// The target's tip, fetched again from the remote when there is one.
    pub(super) fn fresh_target_tip(&mut self) -> Result<ObjectId> {
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

    pub(super) fn check_manifest(&self, target_tip: ObjectId) -> Result<()> {
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
    pub(super) fn check_frozen_finish_line(
        &self,
        target_tip: ObjectId,
        source: ObjectId,
    ) -> Result<()> {
        // What the branch changes: from where it forked, not from where the target is now
        // (a person may have tightened the gates on the target since).
        let base = self
            .repo
            .merge_base(target_tip, source)?
            .unwrap_or(target_tip);
        let Some(diff) = crate::finish_line::branch_changes(
            self.repo,
            &self.git,
            self.frozen()?,
            base,
            source,
            (self.target(), &self.task.branch),
        )?
        else {
            return Ok(());
        };
        Err(policy_error(format!(
            "{} changes the protected sections of policy.toml ([gate], [review], [verify]) or \
             the files they run; the finish line is frozen:\n{}",
            self.task.branch,
            diff.trim_end()
        ))
        .with_hint(
            "a person changes gates on the target itself and re-pins with `git loop init --repin`",
        )
        .into())
    }

    /// Makes sure exactly `head` is approved: the judge's approval must name it; without one,
    /// the gates run here on `head` (a person promoting by hand).
    pub(super) fn approve(&mut self, head: ObjectId) -> Result<()> {
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
                let gate = self.frozen()?.sections.gate.clone();
                let results = self.run_in_temp_worktree(head, &gate.commands, gate.timeout)?;
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
                crate::trust::remember(
                    self.repo,
                    crate::trust::Kept::Approved,
                    &self.id,
                    &head_hex,
                );
                self.transition(Event::Promote {
                    approve: Some((head_hex, results.len())),
                })?;
                Ok(())
            }
        }
    }

    pub(super) fn set_task_promoting(&mut self) -> Result<()> {
        if matches!(self.task.state, State::Promoting | State::Done) {
            return Ok(());
        }
        self.transition(Event::Promote { approve: None })
    }
}

//! The pushes: `push_source`, `push_target` and `delete_remote_branch`.

use super::*;

impl Promotion<'_> {
    /// Whether the target's push carries the source (SPEC §7): the remote task branch would be
    /// deleted in the same breath (`delete_remote_branch`, no verify commands, a strategy
    /// whose result contains the source's commits), so it is not pushed on its own first.
    pub(super) fn carried(&self) -> Result<bool> {
        Ok(self.remote().is_some()
            && self.policy.promote.delete_remote_branch
            && self.policy.promote.strategy != Strategy::Squash
            && self.frozen()?.sections.verify.commands.is_empty())
    }

    pub(super) fn push_source(&mut self) -> Result<()> {
        if self.rec().has(Phase::PushSource) {
            return Ok(());
        }
        crash_point(Phase::PushSource, "before");
        let Some(remote) = self.remote().map(str::to_string) else {
            return self.skip(Phase::PushSource, "no remote");
        };
        if self.carried()? {
            return self.skip(Phase::PushSource, "carried by push_target");
        }
        let how = if self.push_branch(&remote)? {
            "already has"
        } else {
            "was pushed"
        };
        crash_point(Phase::PushSource, "after");
        let message = format!(
            "{remote} {how} {} at {}",
            self.task.branch,
            &self.rec().source[..7]
        );
        self.checkpoint(Phase::PushSource, &message, |_| {}, &[])
    }

    /// Pushes the approved source to the remote task branch, never forced; `true` when the
    /// remote already had it there.
    pub(super) fn push_branch(&mut self, remote: &str) -> Result<bool> {
        let source = self.rec().source.clone();
        let branch_ref = self.branch_ref();
        // Never forced: a push of what the remote already has is reported up to date ('=').
        let pushed = match self
            .git
            .push(remote, &[], &[format!("{source}:{branch_ref}")])?
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
        Ok(pushed.iter().all(|r| r.flag == '='))
    }

    pub(super) fn push_or_classify(
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

    pub(super) fn push_target(&mut self) -> Result<()> {
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
            // When the source was not pushed on its own (carried), the remote has no task
            // branch as a rule: the push deletes it on condition that it is absent (one push
            // for the whole promotion); one left there by an earlier attempt is deleted at
            // the source it holds.
            if self.policy.promote.delete_remote_branch
                && self.frozen()?.sections.verify.commands.is_empty()
            {
                let branch_ref = self.branch_ref();
                let mut expected = vec![self.rec().source.clone()];
                if self.carried()? {
                    expected.insert(0, String::new());
                }
                for old in expected {
                    if let Ok(Push::Ok(_)) = self.git.push(
                        &remote,
                        &[lease.clone(), format!("{branch_ref}:{old}")],
                        &[spec.clone(), format!(":{branch_ref}")],
                    ) {
                        deleted_with_it = true;
                        break;
                    }
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
            Advance::Busy(path, what) => self.notes.push(format!(
                "the checkout in {} is {what} {}; the local branch was left as it is",
                path.display(),
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

    pub(super) fn delete_remote_branch(&mut self) -> Result<()> {
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
            // Nothing to do, as the record says: noted in the next checkpoint (no write, and
            // with a shared remote no push, of its own).
            let message = format!("deleted {remote}/{} with the target push", self.task.branch);
            return self.skip(Phase::DeleteRemoteBranch, &message);
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
}

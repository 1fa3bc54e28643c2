//! `merge`: the commit that brings the work into the target, built without touching an index
//! or work tree; conflicts file a fix task; the local target moved by compare-and-swap.

use super::*;

impl Promotion<'_> {
    pub(super) fn merge(&mut self) -> Result<()> {
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
            Advance::Busy(path, what) => {
                return Err(LoopError::new(
                    Class::Transient,
                    format!(
                        "the checkout in {} is {what} {}: the promotion waits until it is done",
                        path.display(),
                        self.target()
                    ),
                )
                .with_hint("finish or abort it there; the promotion is tried again")
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
    pub(super) fn work_in(&self, tip: ObjectId) -> Result<Option<ObjectId>> {
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
    pub(super) fn build_merge(&mut self, tip: ObjectId) -> Result<ObjectId> {
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
    /// A source the target's push was to carry is pushed first, so that a person (and the
    /// fix's agent in another clone) can see the branch.
    pub(super) fn conflict(&mut self, tip: ObjectId, paths: Vec<String>) -> anyhow::Error {
        if let Some(remote) = self.remote().map(str::to_string)
            && self.carried().unwrap_or(false)
            && let Err(e) = self.push_branch(&remote)
        {
            return e;
        }
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

    /// The task this one is the `why` follow-up of, if it is one: its promotion filed this
    /// task for that reason.
    fn follow_up_of(&self, why: Reason) -> Option<String> {
        let parent = self.task.discovered_from.as_deref()?;
        let rec = Chain::load(self.repo, parent).ok()?.rec?;
        (rec.follow_up.as_deref() == Some(self.id.as_str())
            && rec.follow_up_reason.as_deref() == Some(why.as_str()))
        .then(|| parent.to_string())
    }

    /// Files a follow-up task (unless an open one with this title exists), makes this task
    /// wait for it as `blocked: <why>`, and records it in the checkpoint.
    pub(super) fn file_follow_up(
        &mut self,
        title: &str,
        body: &str,
        why: Reason,
        detail: &str,
    ) -> Result<String> {
        // A follow-up whose own promotion would file another of its kind (an activation gap
        // whose verify fails too) would chain tasks for ever: a person looks instead.
        if let Some(parent) = self.follow_up_of(why) {
            let reason = format!(
                "{detail}; this task is itself the {why} follow-up of task {}, and another would \
                 only repeat it",
                short(&parent)
            );
            self.transition(Event::Escalate {
                why: reason.clone(),
            })?;
            return Err(policy_error(format!(
                "task {} is escalated to a person: {reason}",
                self.short()
            ))
            .into());
        }
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
    pub(super) fn advance_local_target(&mut self, to: ObjectId) -> Result<Advance> {
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
        // The person's checkouts, never git-loop's own: an agent's worktree metadata is the
        // agent's to write, and its HEAD or a `rebase-merge/head-name` there naming the target
        // would otherwise make the promotion wait for ever, or merge in the agent's checkout.
        let own = self.repo.common_dir().join("loop");
        let worktrees: Vec<_> = self
            .repo
            .worktrees()?
            .into_iter()
            .filter(|w| !w.path.starts_with(&own))
            .collect();
        // A person's git in the middle of something on the target finishes with an update of
        // the branch from where it started: moving it meanwhile would fail their last step.
        if let Some((wt, what)) = worktrees
            .iter()
            .filter(|w| !w.prunable)
            .find_map(|w| w.operating_on(&name).map(|what| (w, what)))
        {
            return Ok(Advance::Busy(wt.path.clone(), what));
        }
        let checkout = worktrees
            .into_iter()
            .find(|w| w.branch.as_deref() == Some(name.as_str()) && !w.prunable && w.path.exists());
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
}

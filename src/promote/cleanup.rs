//! `cleanup`: what the task's worktree holds is saved, then it goes, and the local branch.

use super::*;

impl Promotion<'_> {
    pub(super) fn cleanup(&mut self) -> Result<()> {
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
    pub(super) fn save_and_remove(
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
    pub(super) fn clear_leftover(
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
    pub(super) fn remove_worktree(&self, path: &Path) -> bool {
        crate::rescue::remove_worktree(self.repo, path).unwrap_or(true)
    }
}

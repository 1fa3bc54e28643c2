//! `promote --dry-run`: what a promotion would do, checked, nothing written.

use super::*;

impl Promotion<'_> {
    pub(super) fn dry_run(&mut self) -> Result<Outcome> {
        let mut plan = Vec::new();
        let tip = self.target_tip()?;
        self.freeze()?;
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
                        self.frozen()?.sections.gate.commands.len(),
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
            self.frozen()?.sections.verify.commands.len()
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

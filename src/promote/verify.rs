//! `verify`: the verify commands on the promoted target; a failure files an activation gap.

use super::*;

impl Promotion<'_> {
    pub(super) fn verify(&mut self) -> Result<()> {
        if self.rec().has(Phase::Verify) {
            return Ok(());
        }
        crash_point(Phase::Verify, "before");
        let sections = &self.frozen()?.sections;
        let (commands, timeout) = (sections.verify.commands.clone(), sections.gate.timeout);
        if commands.is_empty() {
            return self.skip(Phase::Verify, "no verify.commands");
        }
        let tip = self.target_tip()?;
        let results = self.run_in_temp_worktree(tip, &commands, timeout)?;
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
}

//! `done`: the task records the promoted commit (releasing the runner's lease with it), and
//! tasks that waited for it resume.

use super::*;

impl Promotion<'_> {
    pub(super) fn done(&mut self) -> Result<()> {
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

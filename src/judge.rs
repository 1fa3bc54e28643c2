//! The judge (SPEC §5): the agent's claim of completion is not a result. The judge requires
//! commits on the task branch beyond the target, no change to the protected policy sections,
//! every gate passing on the committed branch head, and the reviewer's approval when
//! `review.command` is set.

use anyhow::Result;
use gix::ObjectId;

use crate::finish_line::Frozen;
use crate::gate;
use crate::git::Repo;
use crate::git::cli::Git;
use crate::task::Task;

/// What the judge decided.
#[derive(Debug)]
pub struct Verdict {
    pub passed: bool,
    /// The branch head that was judged.
    pub head: Option<ObjectId>,
    /// The step that failed: `commits`, `policy`, `gate` or `review`.
    pub step: &'static str,
    /// One line saying what happened.
    pub summary: String,
    /// What the next attempt needs to know (failing output), for its prompt.
    pub context: String,
    /// One line per command run.
    pub results: Vec<String>,
}

impl Verdict {
    fn fail(
        head: Option<ObjectId>,
        step: &'static str,
        summary: String,
        context: String,
    ) -> Verdict {
        Verdict {
            passed: false,
            head,
            step,
            summary,
            context,
            results: Vec::new(),
        }
    }
}

/// Judges the committed head of `task`'s branch against `target_tip`.
pub fn judge(
    repo: &Repo,
    git: &Git,
    target: &str,
    frozen: &Frozen,
    task: &Task,
    limits: crate::gate::Limits<'_>,
) -> Result<Verdict> {
    let target_tip = frozen.target;
    let gate = &frozen.sections.gate;
    let review = &frozen.sections.review;
    let short = &task.id[..crate::ids::MIN_SHORT.min(task.id.len())];
    let Some(head) = repo.read_ref(&format!("refs/heads/{}", task.branch))? else {
        return Ok(Verdict::fail(
            None,
            "commits",
            format!("{} does not exist: the agent committed nothing", task.branch),
            "Nothing was committed on the task branch. Commit the work; uncommitted work is not judged.".into(),
        ));
    };
    if repo.is_ancestor(head, target_tip)? {
        return Ok(Verdict::fail(
            Some(head),
            "commits",
            format!("{} has no commits beyond {target}", task.branch),
            "No new commits were found on the task branch. Commit the work; uncommitted work is not judged.".into(),
        ));
    }
    let base = repo.merge_base(target_tip, head)?.unwrap_or(target_tip);
    if let Some(diff) =
        crate::finish_line::branch_changes(repo, git, frozen, base, head, ("before", "branch"))?
    {
        return Ok(Verdict::fail(
            Some(head),
            "policy",
            format!(
                "{} changes the protected sections of policy.toml or the files they run",
                task.branch
            ),
            format!(
                "The branch changed the finish line (the gates, review or verify of policy.toml, \
                 or the files they run), which is not the agent's to change. Undo this change:\n{}",
                diff.trim_end()
            ),
        ));
    }
    let mut results = Vec::new();
    let gates = gate::run_at(
        repo,
        git,
        head,
        frozen,
        &gate.commands,
        short,
        crate::gate::Limits {
            timeout: gate.timeout,
            ..limits
        },
    )?;
    for r in &gates {
        results.push(r.summary());
    }
    if let Some(failed) = gates.iter().find(|r| !r.passed) {
        let mut v = Verdict::fail(
            Some(head),
            "gate",
            format!("gate failed: {}", failed.summary()),
            format!(
                "The gate `{}` failed on the committed branch head:\n{}",
                failed.argv.join(" "),
                failed.tail.trim_end()
            ),
        );
        v.results = results;
        return Ok(v);
    }
    if !review.command.is_empty() {
        let review = gate::run_at(
            repo,
            git,
            head,
            frozen,
            std::slice::from_ref(&review.command),
            short,
            crate::gate::Limits {
                timeout: gate.timeout,
                ..limits
            },
        )?;
        for r in &review {
            results.push(format!("review: {}", r.summary()));
        }
        if let Some(failed) = review.iter().find(|r| !r.passed) {
            let mut v = Verdict::fail(
                Some(head),
                "review",
                format!("the reviewer did not approve: {}", failed.summary()),
                format!(
                    "The reviewer did not approve the change:\n{}",
                    failed.tail.trim_end()
                ),
            );
            v.results = results;
            return Ok(v);
        }
    }
    Ok(Verdict {
        passed: true,
        head: Some(head),
        step: "judge",
        summary: format!(
            "approved {} ({} gate command(s) passed)",
            &head.to_string()[..7],
            gates.len()
        ),
        context: String::new(),
        results,
    })
}

//! What an agent's run is given, and what its end means: the prompt and the command, from the
//! policy and the task; and the outcome of a run that ended by itself (not stopped, not
//! withdrawn) as what the state machine is told. Nothing here runs or writes anything.

use anyhow::Result;

use crate::agent::{self, Ended, Outcome};
use crate::error::{Class, LoopError};
use crate::git::Repo;
use crate::policy::Policy;
use crate::retry;
use crate::task::Task;

/// The prompt template (`agent.prompt`) as the target's commit `target` has it — never a
/// worktree's copy, which the agent of an earlier attempt may have rewritten or deleted.
pub(super) fn template(repo: &Repo, target: gix::ObjectId, policy: &Policy) -> Result<String> {
    let prompt = &policy.agent.prompt;
    let target_name = &policy.loop_.target;
    repo.file_at(target, prompt)?
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .ok_or_else(|| {
            LoopError::new(
                Class::Config,
                format!("the prompt template {prompt} is not committed on {target_name}"),
            )
            .with_hint(format!("commit {prompt} on {target_name}"))
            .into()
        })
}

/// The prompt of `task`'s run from `template` (the target's committed copy of
/// `agent.prompt`).
pub(super) fn prompt(template: &str, task: &Task, policy: &Policy) -> Result<String> {
    let attempt = task.attempts.to_string();
    let context = task.context.clone().unwrap_or_default();
    agent::render(
        template,
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
    )
}

/// `agent.command` for `task`'s run, its placeholders filled.
pub(super) fn command(
    policy: &Policy,
    task: &Task,
    prompt_file: &str,
    worktree: &str,
) -> Result<Vec<String>> {
    let attempt = task.attempts.to_string();
    let values = [
        ("prompt_file", prompt_file),
        ("task_id", task.id.as_str()),
        ("worktree", worktree),
        ("branch", task.branch.as_str()),
        ("attempt", attempt.as_str()),
    ];
    policy
        .agent
        .command
        .iter()
        .map(|a| agent::render(a, &values, "agent.command"))
        .collect()
}

/// What a run that ended by itself comes to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// It printed the completion token: to the judge.
    Completed,
    /// It hit a quota or a rate limit: a wait, not an attempt.
    Quota,
    /// It failed: `how` (`stalled`, `timed_out`, `transient`) and what the next attempt is
    /// told.
    Failed { how: &'static str, text: String },
}

/// The verdict on `outcome` (its exit code `code`) under `policy`: the token wins, then the
/// quota patterns and exit codes, then how it ended.
pub(super) fn verdict(outcome: &Outcome, code: Option<i32>, policy: &Policy) -> Verdict {
    if outcome.token_seen {
        return Verdict::Completed;
    }
    if retry::is_quota(
        &outcome.tail,
        code,
        &policy.agent.quota_patterns,
        &policy.agent.quota_exit_codes,
    ) {
        return Verdict::Quota;
    }
    match outcome.ended {
        Ended::Stalled => Verdict::Failed {
            how: "stalled",
            text: "no output and no new commit within agent.stall_timeout".into(),
        },
        Ended::TimedOut => Verdict::Failed {
            how: "timed_out",
            text: "still running after agent.timeout".into(),
        },
        Ended::Exited(c) => Verdict::Failed {
            how: "transient",
            text: format!(
                "exited {} without the completion token: {}",
                c.map_or("by a signal".into(), |c| c.to_string()),
                last_lines(&outcome.tail, 20)
            ),
        },
        // Ended after the token was seen: the token would have won above.
        Ended::EndedAfterToken | Ended::Stopped | Ended::Withdrawn => Verdict::Completed,
    }
}

/// The last `n` lines of `text`.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::parse(
            "[loop]\ntarget = \"main\"\n[agent]\ncommand = [\"agent\", \"{prompt_file}\", \"{attempt}\"]\n",
            "policy.toml",
        )
        .expect("policy")
    }

    fn outcome(ended: Ended, token: bool, tail: &str) -> Outcome {
        Outcome {
            ended,
            token_seen: token,
            tail: tail.into(),
            pgid: 1,
        }
    }

    #[test]
    fn the_token_wins_then_the_quota_then_how_it_ended() {
        let p = policy();
        let quota = "Error: 429 Too Many Requests";
        assert_eq!(
            verdict(&outcome(Ended::Exited(Some(1)), true, quota), Some(1), &p),
            Verdict::Completed
        );
        assert_eq!(
            verdict(&outcome(Ended::Exited(Some(1)), false, quota), Some(1), &p),
            Verdict::Quota
        );
        assert_eq!(
            verdict(&outcome(Ended::Stalled, false, ""), None, &p),
            Verdict::Failed {
                how: "stalled",
                text: "no output and no new commit within agent.stall_timeout".into()
            }
        );
        let Verdict::Failed { how, text } = verdict(
            &outcome(
                Ended::Exited(None),
                false,
                "a\nb\nbuild failed after 14290 ms",
            ),
            None,
            &p,
        ) else {
            panic!("a failure")
        };
        assert_eq!(how, "transient");
        assert!(
            text.starts_with("exited by a signal without the completion token"),
            "{text}"
        );
        assert!(text.ends_with("build failed after 14290 ms"), "{text}");
        let long: String = (0..50).map(|i| format!("line {i}\n")).collect();
        let Verdict::Failed { text, .. } =
            verdict(&outcome(Ended::Exited(Some(2)), false, &long), Some(2), &p)
        else {
            panic!("a failure")
        };
        assert!(
            !text.contains("line 29\n") && text.contains("line 30"),
            "{text}"
        );
    }

    #[test]
    fn the_command_and_prompt_are_filled_from_the_task() {
        let p = policy();
        let mut task = Task::new(
            "0123456789abcdef0123456789abcdef".into(),
            "Fix it".into(),
            "the body".into(),
            "default".into(),
            None,
        );
        task.attempts = 3;
        assert_eq!(
            command(&p, &task, "/p.md", "/w").expect("command"),
            ["agent", "/p.md", "3"]
        );
        let text = prompt("{title} ({attempt}) on {branch}: {body}", &task, &p).expect("prompt");
        assert_eq!(text, "Fix it (3) on loop/0123456: the body");
    }
}

//! `git loop init`: write a commented `policy.toml` and the prompt template.

use std::path::Path;

use anyhow::{Context, Result};

use crate::cli::Ctx;
use crate::finish_line;
use crate::git::Repo;
use crate::policy::{self, Policy, toml_string};

/// Set up git-loop in this repository.
///
/// Writes a commented policy.toml at the root of the working tree and the prompt template
/// loop/PROMPT.md, and installs the hooks. Files that exist are left as they are unless --force
/// is given. The target
/// branch is the one checked out; the remote is `origin` when there is one. Commit both files:
/// the loop reads them from Git, and a fresh clone must see them.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Overwrite policy.toml and loop/PROMPT.md if they exist
    #[arg(long)]
    force: bool,

    /// Accept the protected sections ([gate], [review], [verify]) as they are now committed on
    /// the target: re-pin the frozen finish line
    #[arg(long)]
    repin: bool,
}

pub fn run(ctx: &mut Ctx<'_>, args: Args) -> Result<()> {
    crate::task::machine::Actor::at_command_line(&ctx.cwd).refuse_agent("`git loop init`")?;
    let repo = ctx.repo()?;
    let root = repo.require_workdir()?;
    if args.repin {
        return repin(ctx, &repo, &root);
    }
    let policy_text = policy_template(&repo, &root);
    // The template must always be a valid policy; refuse to write one that is not.
    Policy::parse(&policy_text, policy::FILE)?;

    let files = [
        (policy::FILE, policy_text),
        ("loop/PROMPT.md", PROMPT_TEMPLATE.to_string()),
    ];
    let mut wrote = Vec::new();
    for (rel, text) in &files {
        let path = root.join(rel);
        if path.exists() && !args.force {
            eprintln!("{rel} exists; left as it is (--force overwrites it)");
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        writeln!(ctx.out, "wrote {rel}")?;
        wrote.push(*rel);
    }
    // The pin of the frozen finish line, from what the target has committed (unless one
    // exists): the person who runs init decides what done means.
    let target_policy = Policy::load(&root).ok().flatten();
    if finish_line::read_pin(&repo)?.is_none() {
        match target_policy
            .as_ref()
            .map(|p| target_line(&repo, p))
            .transpose()?
            .flatten()
        {
            Some((line, source)) => {
                if finish_line::write_pin(&repo, None, &line, source.clone())? {
                    writeln!(
                        ctx.out,
                        "pinned the finish line of {source} in refs/loop/oracle"
                    )?;
                }
            }
            None => eprintln!(
                "the finish line is not pinned yet: commit policy.toml on the target, then run \
                 `git loop init --repin`"
            ),
        }
    }
    // The hooks, where they are this repository's own (a global hooks directory is left to
    // `git loop hooks install --force`).
    let git = crate::git::cli::Git::new(&root, false);
    match crate::hooks::hooks_dir(&repo, &git) {
        Ok((dir, true)) => {
            for line in crate::hooks::install(&dir, &crate::hooks::current_bin()?)? {
                writeln!(ctx.out, "hook {line}")?;
            }
        }
        Ok((dir, false)) => eprintln!(
            "hooks not installed: {} is outside this repository (`git loop hooks install --force`)",
            dir.display()
        ),
        Err(e) => eprintln!("hooks not installed: {e:#}"),
    }
    if !wrote.is_empty() {
        eprintln!(
            "hint: review them, then commit: git add {} && git commit -m \"Set up git-loop\"",
            wrote.join(" ")
        );
    }
    Ok(())
}

/// A person accepts the finish line as committed on the target.
fn repin(ctx: &mut Ctx<'_>, repo: &Repo, root: &Path) -> Result<()> {
    let policy = Policy::load_required(root)?;
    let Some((line, source)) = target_line(repo, &policy)? else {
        // With a remote, the target is the remote's (as last fetched): a commit made here
        // counts once it is pushed there.
        let (target, hint) = match &policy.loop_.remote {
            Some(remote) => (
                format!("{remote}/{}", policy.loop_.target),
                format!(
                    "commit policy.toml on {} and push it (`git push --no-verify {remote} {}`: \
                     git-loop's pre-push hook keeps other pushes off the target)",
                    policy.loop_.target, policy.loop_.target
                ),
            ),
            None => (
                policy.loop_.target.clone(),
                "commit policy.toml on the target first".to_string(),
            ),
        };
        return Err(
            crate::error::config(format!("{target} has no committed policy.toml to pin"))
                .with_hint(hint)
                .into(),
        );
    };
    loop {
        let old = finish_line::read_pin(repo)?.map(|(tip, _)| tip);
        if finish_line::write_pin(repo, old, &line, source.clone())? {
            writeln!(ctx.out, "re-pinned the finish line of {source}")?;
            for (path, held) in &line.files {
                writeln!(ctx.out, "  pinned {path} ({held})")?;
            }
            return Ok(());
        }
    }
}

/// The finish line as the target has it committed (the remote's, as last fetched, when a
/// remote is set), and where it was read.
fn target_line(repo: &Repo, policy: &Policy) -> Result<Option<(finish_line::Line, String)>> {
    let Some((tip, shown)) =
        repo.last_seen_tip(policy.loop_.remote.as_deref(), &policy.loop_.target)?
    else {
        return Ok(None);
    };
    Ok(finish_line::at(repo, tip)?.map(|line| (line, format!("{shown} at {tip}"))))
}

fn policy_template(repo: &Repo, root: &Path) -> String {
    let target = repo.head_branch().unwrap_or_else(|| "main".to_string());
    let remote = if repo.remote_names().iter().any(|r| r == "origin") {
        "remote = \"origin\"            # shares loop state and promotions there; omit for a local-only loop".to_string()
    } else {
        "# remote = \"origin\"          # set to push promotions to a remote".to_string()
    };
    let gate = guess_gate(root)
        .map(|argv| {
            format!(
                "commands = [[{}]]",
                argv.iter()
                    .map(|a| toml_string(a))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .unwrap_or_else(|| "commands = []                 # e.g. [[\"make\", \"test\"]]".into());
    POLICY_TEMPLATE
        .replace("{target}", &toml_string(&target))
        .replace("{remote}", &remote)
        .replace("{gate}", &gate)
}

/// The test command a project of this shape most likely uses.
fn guess_gate(root: &Path) -> Option<Vec<&'static str>> {
    let has = |f: &str| root.join(f).exists();
    if has("Cargo.toml") {
        Some(vec!["cargo", "test"])
    } else if has("go.mod") {
        Some(vec!["go", "test", "./..."])
    } else if has("package.json") {
        Some(vec!["npm", "test"])
    } else if has("pyproject.toml") || has("setup.py") {
        Some(vec!["python3", "-m", "pytest"])
    } else {
        None
    }
}

const POLICY_TEMPLATE: &str = r#"# git-loop policy. Commit this file: the loop reads it from Git.
# Durations are written like "30s", "45m", "2h" or "1h30m".

[loop]
target = {target}              # the branch that finished work is promoted into
{remote}
batch = "default"             # tasks join this batch unless `task add --batch` says otherwise
workers = 1                   # agents running at once
completion_token = "LOOP_DONE" # what the agent prints when it believes it is done

[agent]
# The agent's argv. Never run through a shell unless you write one.
# Placeholders: {prompt_file} {task_id} {worktree} {branch} {attempt}
command = ["claude", "-p", "--output-format", "text", "@{prompt_file}"]
prompt = "loop/PROMPT.md"     # tracked template of the prompt
timeout = "45m"               # wall time for one run
stall_timeout = "10m"         # no output and no commit for this long: stalled
tail_bytes = 65536            # how much output the run record keeps
exit_grace = "30s"            # still running this long after the token: ended
quota_patterns = ["rate limit", "usage limit", "429"]
quota_exit_codes = []
quota_cooldown = "10m"        # first wait after a quota hit; doubles while it persists
sandbox = "auto"              # "auto" (bwrap where it works) | "bwrap" | "none"
# What a sandboxed agent may write besides its checkout and /tmp (if it exists when it starts):
writable = ["~/.cache", "~/.claude", "~/.claude.json", "~/.codex", "~/.aider", "~/.npm", "~/.local/state"]

[triage]
min_body_chars = 140          # thinner tasks are held as blocked: thin_task
require_acceptance = true     # the body must say how done is checked
max_discovered = 20           # tasks agents file below one of a person's before a person looks

[gate]                        # protected: the agent's branch may not change it
{gate}
timeout = "20m"
protected_paths = []          # files or directories pinned with the gates, e.g. ["tests/"]

[review]                      # protected; optional second-model reviewer
command = []

[promote]
strategy = "no-ff"            # "ff-only" | "no-ff" | "squash"
guard_target = true           # the pre-push hook refuses direct pushes to the target
delete_remote_branch = true

[verify]                      # protected; run on the promoted target
commands = []

[retry]
initial = "30s"
max = "30m"
multiplier = 2.0
max_attempts = 5
same_signature = 3            # the same failure this often in a row: needs_rework
escalate_after = 2            # rounds of attempts before a person is asked
cooloff = "1h"                # wait after attempts_exhausted before the next round

[breaker]
failures = 3
open_for = "15m"
probes = 1

[lease]
ttl = "60m"
heartbeat = "30s"

[runtime]                     # files that must exist AND be tracked
manifest = ["policy.toml", "loop/PROMPT.md"]

# [trust]                     # protected: with a shared remote, who may give agents work
# signers = ".gitsigners"     # git's SSH allowed-signers file, committed here; only tasks a
#                             # listed key signed run (task add signs with commit.gpgSign on)
"#;

const PROMPT_TEMPLATE: &str = r#"You are working on one task of a backlog, in a Git worktree of your own, on the
branch {branch}. This is attempt {attempt}.

# Task {id}: {title}

{body}

{context}

# How to work

- Make the change the task asks for, with tests, and commit it on this branch.
  Uncommitted work is not judged.
- Do not edit policy.toml: the gates that judge your work are not yours to change.
- If you find other work that needs doing, file it instead of doing it:
  `git loop task add "TITLE" --from {id} --body "..."`.
- When the work is committed and you believe it is complete, print {token} on a
  line of its own. The gates decide whether it is done, not you.
"#;

//! `git loop doctor`

use anyhow::Result;
use serde::Serialize;

use crate::cli::Ctx;
use crate::doctor::{self, Check, Status};
use crate::error::{Class, LoopError};
use crate::output::{json, safe};

/// How long `doctor` waits for the remote to answer.
const REMOTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Check everything the loop relies on, as a fresh clone would see it, and say how to fix it
///
/// Each check prints ok, warn or fail, the class of failure it is about (config, transient,
/// breaker), what it saw, and how to fix it. The checks, by their stable names:
///
///   git-version       git is 2.38 or later (`git merge-tree --write-tree`)
///   repository        a work tree, not bare; no rebase or merge in progress; HEAD on a branch
///   ref-storage       refs stored as files, not reftable
///   policy            policy.toml parses and validates
///   policy-committed  the policy on disk is the one committed on the target
///   runtime-files     the runtime manifest, the prompt template and every script the agent
///                     or a gate runs from the repository exist, are in the index and are
///                     committed on the target: a fresh clone has them
///   programs          the agent, gate, review and verify programs resolve on PATH or in the
///                     repository
///   sandbox           agents, gates and verify run in the OS sandbox (agent.sandbox; warns
///                     when they run unsandboxed, fails when "bwrap" is asked for and absent)
///   hooks             the shims are installed, current (else a diff) and chain correctly
///   remote            loop.remote is configured and answers, and holds the loop's state
///                     (its refs/loop/oracle; not asked with --offline)
///   worktrees         no worktree deleted by hand; every loop worktree has a lease
///   branch-locks      no branch held by a stale worktree
///   git-locks         no lock file of git's (a ref's, an index's, packed-refs') left by a git
///                     that is gone (older than ten minutes)
///   leases            none expired, none held by a dead process on this host
///   runner            the runner lock and the freshness of runner heartbeats
///   breaker           closed, or open/paused with its reason
///   oracle-pin        the frozen finish line ([gate], [review], [verify], [trust]) matches
///                     its pin
///   trust             [trust] signers is committed on the target, lists keys, and
///                     ssh-keygen is there to check signatures with
///   tasks             every task ref reads; no dependency cycle or dangling dependency
///   macos-privacy     on macOS, the repository is not under ~/Desktop, ~/Documents,
///                     ~/Downloads or a cloud drive, which an unattended runner cannot read
///
/// Doctor changes nothing: no ref, no file, not even the task cache. It exits 0 when no check
/// fails (warnings included) and 3 when any does.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Print JSON: {"ok": bool, "checks": [{"name", "status", "class", "saw", "fix"}]}
    #[arg(long)]
    json: bool,

    /// Do not contact the remote (the remote check then only looks at the configuration)
    #[arg(long)]
    offline: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    ok: bool,
    checks: &'a [Check],
}

pub fn run(ctx: &mut Ctx<'_>, args: Args) -> Result<()> {
    let checks = doctor::run(
        &ctx.cwd,
        &doctor::Options {
            offline: args.offline,
            remote_timeout: REMOTE_TIMEOUT,
        },
    );
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .map(|c| c.name)
        .collect();
    if args.json {
        json(
            ctx.out,
            &Report {
                ok: failed.is_empty(),
                checks: &checks,
            },
        )?;
    } else {
        draw(ctx.out, &checks)?;
    }
    if failed.is_empty() {
        return Ok(());
    }
    Err(LoopError::new(
        Class::Config,
        format!(
            "{} check{} failed: {}",
            failed.len(),
            if failed.len() == 1 { "" } else { "s" },
            failed.join(", ")
        ),
    )
    .with_hint("each failed check says how to fix it")
    .into())
}

/// One block per check: `STATUS  NAME  CLASS  what it saw`, further lines indented, then the fix.
fn draw(out: &mut dyn std::io::Write, checks: &[Check]) -> Result<()> {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let indent = " ".repeat(6 + width + 2 + 11);
    for c in checks {
        let mut lines = c.saw.lines();
        writeln!(
            out,
            "{:<6}{:<width$}  {:<11}{}",
            c.status.as_str(),
            c.name,
            c.class,
            safe(lines.next().unwrap_or_default(), false)
        )?;
        for line in lines {
            writeln!(
                out,
                "{}",
                format!("{indent}{}", safe(line, false)).trim_end()
            )?;
        }
        if let Some(fix) = &c.fix {
            for (i, line) in fix.lines().enumerate() {
                let label = if i == 0 { "fix: " } else { "     " };
                writeln!(out, "{indent}{label}{}", safe(line, false))?;
            }
        }
    }
    let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
    writeln!(
        out,
        "\n{} checks: {} ok, {} warn, {} fail",
        checks.len(),
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail)
    )?;
    Ok(())
}

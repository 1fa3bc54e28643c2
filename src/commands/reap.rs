//! `git loop reap`

use crate::ids::short;
use anyhow::Result;

use crate::cli::Ctx;
use crate::error::{Class, LoopError};
use crate::output::{json, safe};
use crate::reaper::{self, Options, Report};

/// Reclaim what crashed work left behind: expired leases, orphaned worktrees and process groups.
///
/// A lease past its expiry, or whose holder (identified by host, pid and the process's start
/// time, so a reused pid is not mistaken for it) died on this host, is taken back: the agent's
/// process group is killed, the worktree's uncommitted and untracked work is saved to
/// refs/loop/rescue/<id>/<n>, the worktree is removed, and a running task is requeued with the
/// reason. Loop worktrees that no lease covers are saved and removed the same way; runs left
/// awaiting a judge by a dead judge are handed back to the runner, their gates' process groups
/// killed and their temporary gate checkouts removed (unsaved: what is there is a gate's
/// output); a loop worktree whose add was cut short (still marked locked "initializing") is
/// removed, and `git worktree prune` runs. A worktree whose task a `git loop promote` is
/// promoting right now is left to it.
///
/// A lease whose holder is alive and within its expiry is never touched. A holder on another
/// host cannot be proven dead from here: its lease is taken back once expired, and its
/// processes are left to that host. Every reclaim starts by taking the task's lease by
/// compare-and-swap (a directory that belongs to no task: an OS lock), so reap is safe beside
/// a live runner, twice at once, and from cron. Exits 4 when a reclaim failed part way; what
/// it saved is kept, and a second run carries on.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Say what would be reclaimed; change nothing
    #[arg(long)]
    dry_run: bool,

    /// Print JSON (reaped, kept, failed) instead of lines
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &mut Ctx<'_>, args: Args) -> Result<()> {
    let repo = ctx.repo()?;
    let report = reaper::reap(&repo, &Options::new(args.dry_run))?;
    if args.json {
        json(ctx.out, &report)?;
    } else {
        print(ctx.out, &report)?;
    }
    if report.failed.is_empty() {
        return Ok(());
    }
    Err(LoopError::new(
        Class::Transient,
        format!(
            "{} reclaim(s) failed part way; what they saved is kept",
            report.failed.len()
        ),
    )
    .with_hint("run `git loop reap` again; it carries on where this one stopped")
    .into())
}

/// One line per thing reaped, kept or failed.
pub fn print(out: &mut dyn std::io::Write, report: &Report) -> Result<()> {
    let verb = if report.dry_run {
        "would reap"
    } else {
        "reaped"
    };
    for r in &report.reaped {
        let what = r
            .task
            .as_deref()
            .map_or(String::new(), |t| format!(" {}", short(t)));
        writeln!(out, "{verb} {}{what}: {}", r.kind, safe(&r.why, false))?;
        for d in &r.did {
            writeln!(out, "  {}", safe(d, false))?;
        }
    }
    for (word, list) in [("kept", &report.kept), ("failed", &report.failed)] {
        for k in list {
            let (kind, task) = (&k.kind, short(&k.task));
            writeln!(out, "{word} {kind} {task}: {}", safe(&k.why, false))?;
        }
    }
    if report.reaped.is_empty() && report.failed.is_empty() {
        writeln!(out, "nothing to reap")?;
    }
    Ok(())
}

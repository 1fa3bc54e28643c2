//! `git loop promote`

use anyhow::Result;

use crate::cli::Ctx;
use crate::policy::Policy;
use crate::promote::{self, Options, Outcome};
use crate::store::Store;
use crate::task::machine::Actor;

/// One idempotent, resumable promotion attempt of a task's branch into the target.
///
/// Phases: preflight, push_source, merge, push_target, verify, cleanup, delete_remote_branch,
/// done; each is checkpointed on refs/loop/promote/<id>, so a killed or failed attempt is
/// resumed by running the command again. Only the commit the judge approved is promoted; a
/// person promoting by hand gets the gates run on the branch head first. Exits 0 when promoted
/// (or already promoted), 4 when worth retrying, 5 when something must change first, 6 when a
/// runner holds the task (its agent, judge or promotion is on it), 7 while the breaker is open
/// or paused.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The task (any unique prefix of its id)
    id: String,

    /// Show what would be done, and check the preconditions, without changing anything
    #[arg(long)]
    dry_run: bool,
}

pub fn run(ctx: &mut Ctx<'_>, args: Args) -> Result<()> {
    let actor = Actor::at_command_line(&ctx.cwd);
    actor.refuse_agent("`git loop promote`")?;
    let repo = ctx.repo()?;
    let policy = Policy::load_required(&repo.require_workdir()?)?;
    let id = Store::new(&repo).resolve(&args.id)?;
    let by = std::env::var("GIT_LOOP_RUNNER")
        .ok()
        .or_else(|| repo.config_string("user.name"))
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".to_string());
    let outcome = promote::promote(
        &repo,
        &policy,
        &id,
        &Options {
            dry_run: args.dry_run,
            by,
            actor,
            release: None,
            stop: None,
        },
    )?;
    let short = &id[..crate::ids::MIN_SHORT];
    match outcome {
        Outcome::AlreadyPromoted { merge } => {
            eprintln!("already promoted");
            writeln!(ctx.out, "{}", merge.unwrap_or_default())?;
        }
        Outcome::Promoted { merge, notes } => {
            for note in notes {
                eprintln!("note: {note}");
            }
            eprintln!(
                "promoted {short} into {} as {}",
                policy.loop_.target,
                &merge[..merge.len().min(7)]
            );
            writeln!(ctx.out, "{merge}")?;
        }
        Outcome::DryRun { plan } => {
            for step in plan {
                writeln!(ctx.out, "{step}")?;
            }
        }
    }
    Ok(())
}

//! `git loop task gate|cancel|reopen`: a person moves a task between states.

use anyhow::Result;

use crate::cli::Ctx;
use crate::commands::policy;
use crate::error::usage;
use crate::ids::short;
use crate::policy::TriageSection;
use crate::store::Store;
use crate::task;
use crate::task::machine::{Actor, Budget, Event};

/// Hand a task to a person (human_gated): the loop will not touch it until it is reopened.
#[derive(Debug, clap::Args)]
pub struct GateArgs {
    /// The task (any unique prefix of its id)
    id: String,
    /// Why a person is needed
    #[arg(long, value_name = "R")]
    reason: String,
}

/// Drop a task (cancelled). `task reopen` brings it back.
#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// The task (any unique prefix of its id)
    id: String,
}

/// Requeue a gated, cancelled, blocked or reworked task as ready, with its attempts reset.
#[derive(Debug, clap::Args)]
pub struct ReopenArgs {
    /// The task (any unique prefix of its id)
    id: String,
}

pub fn gate(ctx: &mut Ctx<'_>, args: GateArgs) -> Result<()> {
    if args.reason.trim().is_empty() {
        return Err(usage("--reason must say why a person is needed").into());
    }
    transition(
        ctx,
        &args.id,
        Event::Gate {
            reason: args.reason,
        },
    )
}

pub fn cancel(ctx: &mut Ctx<'_>, args: CancelArgs) -> Result<()> {
    transition(ctx, &args.id, Event::Cancel)
}

pub fn reopen(ctx: &mut Ctx<'_>, args: ReopenArgs) -> Result<()> {
    let repo = ctx.repo()?;
    let triage = policy(&repo)?
        .map(|p| p.triage)
        .unwrap_or_else(TriageSection::default);
    let store = Store::new(&repo);
    let id = store.resolve(&args.id)?;
    let thin = task::triage(&store.load(&id)?.task.body, &triage);
    drop(repo);
    transition(ctx, &id, Event::Reopen { thin })
}

/// A person's event, through the state machine (refused from inside an agent's run).
fn transition(ctx: &mut Ctx<'_>, prefix: &str, event: Event) -> Result<()> {
    let actor = Actor::at_command_line(&ctx.cwd);
    actor.refuse_agent(&format!("`git loop task {}`", verb(&event)))?;
    let repo = ctx.repo()?;
    let store = Store::new(&repo).signing(repo.signs_commits());
    let id = store.resolve(prefix)?;
    let budget = policy(&repo)?.map_or_else(Budget::default, |p| Budget::from(&p));
    let moved = store.transition(&id, &event, &actor, &budget, |_, _| Ok(()))?;
    if !moved.changed {
        eprintln!(
            "task {} is already {}",
            short(&moved.task.id),
            moved.task.state_label()
        );
    }
    writeln!(
        ctx.out,
        "{} {}",
        short(&moved.task.id),
        moved.task.state_label()
    )?;
    Ok(())
}

fn verb(event: &Event) -> &'static str {
    match event {
        Event::Gate { .. } => "gate",
        Event::Cancel => "cancel",
        _ => "reopen",
    }
}

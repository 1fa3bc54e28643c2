//! `git loop task gate|cancel|reopen`: a person moves a task between states.

use anyhow::Result;

use crate::cli::Ctx;
use crate::commands::policy;
use crate::error::usage;
use crate::policy::TriageSection;
use crate::store::{Edit, Store, Updated};
use crate::task::{self, State, Task, reason};

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
    transition(ctx, &args.id, |task| {
        refuse_final(task, "gate")?;
        let from = task.state_label();
        task.set_state(
            State::HumanGated,
            Some(reason::GATED),
            Some(args.reason.clone()),
        );
        Ok(Edit::new(format!(
            "{from} -> human_gated: gated by a person: {}",
            one_line(&args.reason)
        )))
    })
}

pub fn cancel(ctx: &mut Ctx<'_>, args: CancelArgs) -> Result<()> {
    transition(ctx, &args.id, |task| {
        if task.state == State::Done {
            return Err(usage(format!(
                "task {} is done and cannot be cancelled",
                short(task)
            ))
            .into());
        }
        let from = task.state_label();
        task.set_state(State::Cancelled, None, None);
        Ok(Edit::new(format!(
            "{from} -> cancelled: cancelled by a person"
        )))
    })
}

pub fn reopen(ctx: &mut Ctx<'_>, args: ReopenArgs) -> Result<()> {
    let repo = ctx.repo()?;
    let triage = policy(&repo)?
        .map(|p| p.triage)
        .unwrap_or_else(TriageSection::default);
    drop(repo);
    transition(ctx, &args.id, |task| {
        match task.state {
            State::Done => {
                return Err(usage(format!(
                    "task {} is done; a done task is final",
                    short(task)
                ))
                .with_hint("file a follow-up with `git loop task add --from ID`")
                .into());
            }
            s if s.is_owned_by_loop() => {
                return Err(usage(format!(
                    "task {} is {}: the loop is working on it",
                    short(task),
                    s
                ))
                .with_hint("wait for it, or stop the runner first (`git loop stop`)")
                .into());
            }
            _ => {}
        }
        let from = task.state_label();
        task.attempts = 0;
        task.next_at = None;
        task.signatures.clear();
        // Requeued work is judged again.
        task.approved = None;
        match task::triage(&task.body, &triage) {
            Some(why) => task.set_state(State::Blocked, Some(reason::THIN_TASK), Some(why)),
            None => task.set_state(State::Ready, None, None),
        }
        Ok(Edit::new(format!(
            "{from} -> {}: reopened by a person",
            task.state_label()
        )))
    })
}

fn transition(
    ctx: &mut Ctx<'_>,
    prefix: &str,
    edit: impl FnMut(&mut Task) -> Result<Edit>,
) -> Result<()> {
    let repo = ctx.repo()?;
    let store = Store::new(&repo);
    let id = store.resolve(prefix)?;
    match store.update(&id, edit)? {
        Updated::Changed(task) => {
            writeln!(ctx.out, "{} {}", short(&task), task.state_label())?;
        }
        Updated::Unchanged(task) => {
            eprintln!("task {} is already {}", short(&task), task.state_label());
            writeln!(ctx.out, "{} {}", short(&task), task.state_label())?;
        }
    }
    Ok(())
}

fn refuse_final(task: &Task, verb: &str) -> Result<()> {
    if matches!(task.state, State::Done | State::Cancelled) {
        return Err(usage(format!(
            "task {} is {}; there is nothing to {verb}",
            short(task),
            task.state
        ))
        .into());
    }
    Ok(())
}

fn short(task: &Task) -> &str {
    task.id.get(..crate::ids::MIN_SHORT).unwrap_or(&task.id)
}

fn one_line(s: &str) -> String {
    crate::output::safe(s.lines().next().unwrap_or_default(), false)
}

//! `git loop task …`: file, list, show, edit and hand over tasks.

mod add;
mod edit;
mod list;
mod show;
mod transition;

use anyhow::Result;

use crate::cli::Ctx;

/// File, list, show and edit tasks; hand them to a person, drop them, requeue them.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    Add(add::Args),
    List(list::Args),
    Show(show::Args),
    Edit(edit::Args),
    Gate(transition::GateArgs),
    Cancel(transition::CancelArgs),
    Reopen(transition::ReopenArgs),
}

pub fn run(ctx: &mut Ctx<'_>, cmd: Command) -> Result<()> {
    match cmd {
        Command::Add(args) => add::run(ctx, args),
        Command::List(args) => list::run(ctx, args),
        Command::Show(args) => show::run(ctx, args),
        Command::Edit(args) => edit::run(ctx, args),
        Command::Gate(args) => transition::gate(ctx, args),
        Command::Cancel(args) => transition::cancel(ctx, args),
        Command::Reopen(args) => transition::reopen(ctx, args),
    }
}

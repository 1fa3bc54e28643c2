//! `git loop pause` and `git loop resume`

use anyhow::Result;

use crate::breaker::{self, Breaker};
use crate::cli::Ctx;
use crate::error::usage;
use crate::task::machine::Actor;
use crate::time::Timestamp;

/// Hold the breaker open: the runner dispatches nothing new until `git loop resume`.
///
/// Running work finishes; the runner stays up and says why it waits.
#[derive(Debug, clap::Args)]
pub struct PauseArgs {
    /// Why the loop is paused (shown by `git loop status`)
    #[arg(long, value_name = "R")]
    reason: String,
}

/// Release the breaker, whatever opened it.
#[derive(Debug, clap::Args)]
pub struct ResumeArgs {}

pub fn pause(ctx: &mut Ctx<'_>, args: PauseArgs) -> Result<()> {
    if args.reason.trim().is_empty() {
        return Err(usage("--reason must say why the loop is paused").into());
    }
    Actor::at_command_line(&ctx.cwd).refuse_agent("`git loop pause`")?;
    let repo = ctx.repo()?;
    loop {
        let (tip, was) = breaker::read(&repo)?;
        let b = Breaker::paused(&args.reason, Timestamp::now());
        if breaker::overwrite(&repo, tip, &was, &b)? {
            writeln!(ctx.out, "paused: {}", args.reason)?;
            return Ok(());
        }
    }
}

pub fn resume(ctx: &mut Ctx<'_>, _args: ResumeArgs) -> Result<()> {
    Actor::at_command_line(&ctx.cwd).refuse_agent("`git loop resume`")?;
    let repo = ctx.repo()?;
    loop {
        let (tip, b) = breaker::read(&repo)?;
        if tip.is_some() && b.is_closed() {
            writeln!(ctx.out, "the breaker is already closed")?;
            return Ok(());
        }
        if breaker::overwrite(&repo, tip, &b, &Breaker::closed())? {
            writeln!(ctx.out, "resumed (the breaker was {})", b.describe())?;
            return Ok(());
        }
    }
}

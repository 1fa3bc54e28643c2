//! `git loop oracle`

use anyhow::Result;
use serde::Serialize;

use crate::cli::Ctx;
use crate::error::{Class, LoopError};
use crate::output::json;
use crate::policy::Policy;
use crate::store::Store;

/// Exit 0 if and only if the batch is finished.
///
/// Finished means every task is done — with its promoted commit really in the target, the
/// remote's when loop.remote is set — or handed to a person (human_gated) or cancelled. It
/// reads Git, not the runner's word. Otherwise it exits 1 and lists each unfinished task.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only tasks of batch B [default: every batch]
    #[arg(long, value_name = "B")]
    batch: Option<String>,

    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct OracleJson<'a> {
    finished: bool,
    unfinished: &'a [String],
}

pub fn run(ctx: &mut Ctx<'_>, args: Args) -> Result<()> {
    let repo = ctx.repo()?;
    let policy = Policy::load_required(&repo.require_workdir()?)?;
    let store = Store::new(&repo);
    let unfinished = crate::oracle::unfinished(&repo, &policy, &store, args.batch.as_deref())?;
    if args.json {
        json(
            ctx.out,
            &OracleJson {
                finished: unfinished.is_empty(),
                unfinished: &unfinished,
            },
        )?;
    } else if unfinished.is_empty() {
        writeln!(ctx.out, "finished")?;
    } else {
        for line in &unfinished {
            writeln!(ctx.out, "{line}")?;
        }
    }
    if unfinished.is_empty() {
        Ok(())
    } else {
        Err(LoopError::new(
            Class::Generic,
            format!("{} task(s) unfinished", unfinished.len()),
        )
        .into())
    }
}

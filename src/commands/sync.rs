//! `git loop sync`

use anyhow::Result;

use crate::cli::Ctx;
use crate::error::{Class, LoopError};
use crate::output::json;

/// Fetch and push the loop state shared through `loop.remote`, now.
///
/// With `loop.remote` set in policy.toml, refs/loop/* and refs/notes/loop are shared through
/// that remote: every change counts only once the remote accepted it (an atomic push with a
/// lease on each ref's expected value), and a runner fetches the remote's state every
/// `loop.sync`. This does one such round by hand: it fetches the remote's loop state into
/// refs/loop-remotes/<remote>/, brings this clone's view up to date, pushes what this clone
/// has that the remote lacks (tasks filed before the remote was shared), and merges notes
/// written on both sides. A local value the remote never accepted is given up for the
/// remote's, and said.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON instead of a summary
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &mut Ctx<'_>, args: Args) -> Result<()> {
    let repo = ctx.repo()?;
    let Some(remote) = repo.shared_remote().map(str::to_string) else {
        return Err(LoopError::new(
            Class::Config,
            "no remote shares this repository's loop state",
        )
        .with_hint("set `remote = \"origin\"` under [loop] in policy.toml to share it")
        .into());
    };
    let done = crate::git::shared::sync(&repo, &remote)?;
    if args.json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            remote: &'a str,
            #[serde(flatten)]
            done: &'a crate::git::shared::Synced,
        }
        return json(
            ctx.out,
            &Out {
                remote: &remote,
                done: &done,
            },
        );
    }
    writeln!(
        ctx.out,
        "synced with {remote}: {} ref(s) taken from it, {} pushed to it{}",
        done.pulled,
        done.pushed,
        match done.notes {
            Some(what) => format!("; notes {}", what.as_str()),
            None => String::new(),
        }
    )?;
    for (name, id) in &done.replaced {
        writeln!(
            ctx.out,
            "replaced {name}: the remote never accepted {id} (the remote's value kept)"
        )?;
    }
    if done.lost {
        writeln!(
            ctx.out,
            "the remote moved while pushing; the rest goes with the next sync"
        )?;
    }
    Ok(())
}

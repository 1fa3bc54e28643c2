//! `git loop ready`

use anyhow::Result;

use crate::cli::Ctx;
use crate::commands::TaskJson;
use crate::graph::Graph;
use crate::ids::ShortIds;
use crate::output::{Table, json, safe, truncate};
use crate::store::Store;
use crate::time::Timestamp;

/// The runnable set, in dispatch order.
///
/// A task is runnable when it is ready (or needs rework, or its quota wait is over), its
/// `next_at` has passed, and every task it runs after is done. Order: priority (higher first),
/// then age (older first).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON (an array of tasks) instead of a table
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &mut Ctx<'_>, args: Args) -> Result<()> {
    let repo = ctx.repo()?;
    let listed = Store::new(&repo).list()?;
    let short = ShortIds::new(listed.iter().map(|l| l.id.as_str()));
    let graph = Graph::new(listed.iter().filter_map(|l| l.task.as_ref().ok()));
    let runnable = graph.runnable(Timestamp::now());
    if args.json {
        let rows: Vec<TaskJson> = runnable
            .iter()
            .map(|t| TaskJson::new(t, &short, &graph))
            .collect();
        return json(ctx.out, &rows);
    }
    if runnable.is_empty() {
        eprintln!("nothing is ready");
        return Ok(());
    }
    let mut table = Table::new(&["ID", "STATE", "PRI", "TITLE"]);
    for t in runnable {
        table.row(vec![
            short.short(&t.id).to_string(),
            t.state.to_string(),
            t.priority.to_string(),
            truncate(&safe(&t.title, false), 72),
        ]);
    }
    table.write(ctx.out)?;
    Ok(())
}

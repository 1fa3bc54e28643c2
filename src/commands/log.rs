//! `git loop log`

use anyhow::Result;
use serde::Serialize;

use crate::cli::Ctx;
use crate::ids::{ShortIds, is_full_id};
use crate::output::{Table, json, safe};
use crate::store::{Store, chain};
use crate::time::Timestamp;

/// The event history across refs/loop/*, newest first.
///
/// Every state ref of git-loop is a commit chain whose messages name the transitions; this
/// merges those chains. Rescue refs hold saved work, not events, and are left out.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only the events of task ID (any unique prefix)
    #[arg(long, value_name = "ID")]
    task: Option<String>,

    /// Print JSON (an array of events) instead of a table
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Event {
    time: String,
    #[serde(rename = "ref")]
    ref_name: String,
    task: Option<String>,
    commit: String,
    author: String,
    message: String,
    #[serde(skip)]
    seconds: i64,
    #[serde(skip)]
    order: usize,
}

pub fn run(ctx: &mut Ctx<'_>, args: Args) -> Result<()> {
    let repo = ctx.repo()?;
    let store = Store::new(&repo);
    let ids = store.ids()?;
    let short = ShortIds::new(ids.iter().map(String::as_str));
    let only = args.task.as_deref().map(|p| store.resolve(p)).transpose()?;

    let mut events = Vec::new();
    for r in repo.refs_under(crate::refs::LOOP)? {
        if r.name.starts_with(crate::refs::RESCUE) {
            continue;
        }
        let task = r
            .name
            .split('/')
            .find(|c| is_full_id(c))
            .map(str::to_string);
        if only.is_some() && task != only {
            continue;
        }
        let Some(tip) = r.id else { continue };
        let commits = match chain(&repo, tip) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("warning: skipping {}: {e:#}", r.name);
                continue;
            }
        };
        for c in commits {
            events.push(Event {
                time: Timestamp::from_unix_seconds(c.time).to_rfc3339(),
                ref_name: r.name.clone(),
                task: task.clone(),
                commit: c.id.to_string(),
                author: c.author,
                message: c.message.lines().next().unwrap_or_default().to_string(),
                seconds: c.time,
                order: events.len(),
            });
        }
    }
    // Newest first; within one second, a chain's own order (newest first) is kept.
    events.sort_by(|a, b| b.seconds.cmp(&a.seconds).then(a.order.cmp(&b.order)));

    if args.json {
        return json(ctx.out, &events);
    }
    if events.is_empty() {
        eprintln!("no events yet");
        return Ok(());
    }
    let mut table = Table::new(&["TIME", "REF", "COMMIT", "EVENT"]);
    for e in &events {
        let name = e.ref_name.trim_start_matches(crate::refs::LOOP);
        let name = match &e.task {
            Some(id) => name.replace(id.as_str(), short.short(id)),
            None => name.to_string(),
        };
        table.row(vec![
            e.time.get(..19).unwrap_or(&e.time).replace('T', " "),
            name,
            e.commit[..7].to_string(),
            safe(&e.message, false),
        ]);
    }
    table.write(ctx.out)?;
    Ok(())
}

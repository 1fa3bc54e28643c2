//! `git loop task list`

use anyhow::Result;
use serde::Serialize;

use crate::cli::Ctx;
use crate::commands::TaskJson;
use crate::error::usage;
use crate::graph::{Graph, sort_dispatch_order};
use crate::ids::ShortIds;
use crate::output::{Table, json, safe, truncate};
use crate::store::Store;
use crate::task::{State, Task};

/// The backlog: every task with its state and reason, in dispatch order.
///
/// A task whose ref cannot be read is listed as `corrupt` with the reason, and the others are
/// listed as usual.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only tasks in state S (ready, running, awaiting_judge, needs_rework, quota_wait,
    /// promoting, blocked, human_gated, done, cancelled, or corrupt)
    #[arg(long, value_name = "S")]
    state: Option<String>,

    /// Only tasks of batch B
    #[arg(long, value_name = "B")]
    batch: Option<String>,

    /// Print JSON (an array of tasks) instead of a table
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct CorruptJson<'a> {
    id: &'a str,
    short_id: &'a str,
    #[serde(rename = "ref")]
    ref_name: &'a str,
    state: &'static str,
    corrupt: &'a str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Row<'a> {
    Task(Box<TaskJson<'a>>),
    Corrupt(CorruptJson<'a>),
}

pub fn run(ctx: &mut Ctx<'_>, args: Args) -> Result<()> {
    let want_corrupt = args.state.as_deref() == Some("corrupt");
    let state = match args.state.as_deref() {
        None | Some("corrupt") => None,
        Some(s) => Some(State::parse(s).ok_or_else(|| {
            usage(format!("unknown state {s:?}")).with_hint(format!(
                "the states are: {}, corrupt",
                State::ALL.map(State::as_str).join(", ")
            ))
        })?),
    };
    let repo = ctx.repo()?;
    let listed = Store::new(&repo).list()?;
    let short = ShortIds::new(listed.iter().map(|l| l.id.as_str()));
    let tasks: Vec<&Task> = listed.iter().filter_map(|l| l.task.as_ref().ok()).collect();
    let graph = Graph::new(tasks.iter().copied());

    let mut shown: Vec<&Task> = if want_corrupt {
        Vec::new()
    } else {
        tasks
            .iter()
            .copied()
            .filter(|t| state.is_none_or(|s| t.state == s))
            .filter(|t| args.batch.as_ref().is_none_or(|b| &t.batch == b))
            .collect()
    };
    sort_dispatch_order(&mut shown);
    let corrupt: Vec<(&str, &str, &str)> =
        if state.is_none() && args.batch.is_none() || want_corrupt {
            listed
                .iter()
                .filter_map(|l| match &l.task {
                    Err(why) => Some((l.id.as_str(), l.ref_name.as_str(), why.as_str())),
                    Ok(_) => None,
                })
                .collect()
        } else {
            Vec::new()
        };

    if args.json {
        let mut rows: Vec<Row> = shown
            .iter()
            .map(|t| Row::Task(Box::new(TaskJson::new(t, &short, &graph))))
            .collect();
        rows.extend(corrupt.iter().map(|(id, r, why)| {
            Row::Corrupt(CorruptJson {
                id,
                short_id: short.short(id),
                ref_name: r,
                state: "corrupt",
                corrupt: why,
            })
        }));
        return json(ctx.out, &rows);
    }

    let mut table = Table::new(&["ID", "STATE", "PRI", "BATCH", "TITLE"]);
    for t in &shown {
        let mut state = t.state_label();
        let pending = graph.pending_deps(t);
        if t.state == State::Ready && !pending.is_empty() {
            state = format!(
                "ready (after {})",
                pending
                    .iter()
                    .map(|d| short.short(d))
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
        table.row(vec![
            short.short(&t.id).to_string(),
            safe(&state, false),
            t.priority.to_string(),
            safe(&t.batch, false),
            truncate(&safe(&t.title, false), 72),
        ]);
    }
    for (id, r, why) in &corrupt {
        table.row(vec![
            short.short(id).to_string(),
            "corrupt".into(),
            "-".into(),
            "-".into(),
            safe(&format!("{r}: {why}"), false),
        ]);
    }
    if table.is_empty() {
        eprintln!(
            "no tasks{}",
            if args.state.is_some() || args.batch.is_some() {
                " match"
            } else {
                " yet; file one with `git loop task add TITLE`"
            }
        );
        return Ok(());
    }
    table.write(ctx.out)?;
    Ok(())
}

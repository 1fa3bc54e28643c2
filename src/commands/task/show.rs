//! `git loop task show`

use anyhow::Result;
use serde::Serialize;

use crate::cli::Ctx;
use crate::commands::TaskJson;
use crate::graph::Graph;
use crate::ids::ShortIds;
use crate::output::{json, safe};
use crate::store::Store;
use crate::time::Timestamp;

/// One task: its document, body, runs and history (its ref's commit log).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The task (any unique prefix of its id)
    id: String,

    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct HistoryJson {
    commit: String,
    time: String,
    author: String,
    subject: String,
    message: String,
}

#[derive(Serialize)]
struct ShowJson<'a> {
    #[serde(flatten)]
    task: TaskJson<'a>,
    body: &'a str,
    #[serde(rename = "ref")]
    ref_name: String,
    commit: String,
    runs: Vec<serde_json::Value>,
    history: Vec<HistoryJson>,
}

pub fn run(ctx: &mut Ctx<'_>, args: Args) -> Result<()> {
    let repo = ctx.repo()?;
    let store = Store::new(&repo);
    let ids = store.ids()?;
    let short = ShortIds::new(ids.iter().map(String::as_str));
    let id = store.resolve(&args.id)?;
    let stored = store.load(&id)?;
    let runs = store.runs(&stored)?;
    let history = store.history(&id)?;
    // Dependencies' states, for "waiting on"; corrupt neighbours are simply not counted done.
    let deps: Vec<_> = stored
        .task
        .after
        .iter()
        .filter_map(|d| store.load(d).ok().map(|s| s.task))
        .collect();
    let graph = Graph::new(deps.iter().chain(std::iter::once(&stored.task)));
    let task = &stored.task;

    let history_json: Vec<HistoryJson> = history
        .iter()
        .map(|c| HistoryJson {
            commit: c.id.to_string(),
            time: Timestamp::from_unix_seconds(c.time).to_rfc3339(),
            author: c.author.clone(),
            subject: c.message.lines().next().unwrap_or_default().to_string(),
            message: c.message.trim_end().to_string(),
        })
        .collect();

    if args.json {
        return json(
            ctx.out,
            &ShowJson {
                task: TaskJson::new(task, &short, &graph),
                body: &task.body,
                ref_name: crate::refs::task(&id),
                commit: stored.commit.to_string(),
                runs: runs
                    .iter()
                    .map(|(name, t)| {
                        let mut v = serde_json::to_value(t).unwrap_or_default();
                        if let Some(o) = v.as_object_mut() {
                            o.insert("file".into(), name.clone().into());
                        }
                        v
                    })
                    .collect(),
                history: history_json,
            },
        );
    }

    let out = &mut *ctx.out;
    writeln!(
        out,
        "task {}  {}",
        short.short(&id),
        safe(&task.title, false)
    )?;
    writeln!(out, "id:        {id}")?;
    writeln!(out, "state:     {}", safe(&task.state_label(), false))?;
    if let Some(detail) = &task.detail {
        writeln!(out, "detail:    {}", safe(detail, false))?;
    }
    writeln!(out, "batch:     {}", safe(&task.batch, false))?;
    writeln!(out, "priority:  {}", task.priority)?;
    if !task.after.is_empty() {
        let deps: Vec<String> = task
            .after
            .iter()
            .map(|d| {
                let state = graph.get(d).map_or("missing", |t| t.state.as_str());
                format!("{} ({state})", short.short(d))
            })
            .collect();
        writeln!(out, "after:     {}", deps.join(", "))?;
    }
    if let Some(m) = &task.mutex {
        writeln!(out, "mutex:     {}", safe(m, false))?;
    }
    if let Some(from) = &task.discovered_from {
        writeln!(out, "from:      {}", short.short(from))?;
    }
    writeln!(out, "attempts:  {}", task.attempts)?;
    if let Some(at) = task.next_at {
        writeln!(out, "next at:   {}", at.to_rfc3339())?;
    }
    writeln!(out, "branch:    {}", task.branch)?;
    if let Some(a) = &task.approved {
        writeln!(out, "approved:  {a}")?;
    }
    if let Some(c) = &task.promoted_commit {
        writeln!(out, "promoted:  {c}")?;
    }
    writeln!(out, "created:   {}", task.created.to_rfc3339())?;
    writeln!(out, "updated:   {}", task.updated.to_rfc3339())?;
    writeln!(out)?;
    if task.body.is_empty() {
        writeln!(out, "    (no body)")?;
    } else {
        for line in safe(&task.body, true).lines() {
            writeln!(out, "    {line}")?;
        }
    }
    writeln!(out)?;
    if runs.is_empty() {
        writeln!(out, "runs: none")?;
    } else {
        writeln!(out, "runs:")?;
        for (name, run) in &runs {
            let field = |k: &str| {
                run.get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or("-")
                    .to_string()
            };
            writeln!(
                out,
                "  {name}  {}  {}",
                safe(&field("outcome"), false),
                safe(&field("started"), false)
            )?;
        }
    }
    writeln!(out)?;
    writeln!(out, "history:")?;
    for c in &history {
        writeln!(
            out,
            "  {}  {}  {}",
            Timestamp::from_unix_seconds(c.time)
                .to_rfc3339()
                .get(..19)
                .unwrap_or_default(),
            &c.id.to_string()[..7],
            safe(c.message.lines().next().unwrap_or_default(), false)
        )?;
    }
    Ok(())
}

//! `git loop status`

use std::collections::HashMap;
use std::io::IsTerminal;

use anyhow::Result;
use serde::Serialize;

use crate::cli::Ctx;
use crate::graph::Graph;
use crate::ids::ShortIds;
use crate::lease;
use crate::output::{Table, json, safe, truncate};
use crate::runner;
use crate::store::Store;
use crate::task::{Task, machine};
use crate::time::Timestamp;

/// The runner's heartbeat, and for every task its state, reason, and next action and time.
///
/// A task that is not moving always says why and what re-arms it.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,

    /// Refresh in place every second (on a terminal)
    #[arg(long, conflicts_with = "json")]
    watch: bool,
}

#[derive(Serialize)]
struct RunnerJson {
    runner: String,
    host: String,
    pid: u32,
    phase: String,
    updated: String,
    heartbeat_age_secs: f64,
    stale: bool,
    tasks: Vec<String>,
    next_action: String,
    next_at: Option<String>,
    last_output: Option<String>,
    failure_streak: u32,
    /// What its agents run in: `bwrap (<path>)`, or `none: <why>`.
    sandbox: Option<String>,
}

#[derive(Serialize)]
struct TaskJson {
    id: String,
    short_id: String,
    title: String,
    state: String,
    reason: Option<String>,
    detail: Option<String>,
    next_action: String,
    next_at: Option<String>,
}

#[derive(Serialize)]
struct BreakerJson {
    state: String,
    class: Option<String>,
    reason: String,
    since: Option<String>,
    open_until: Option<String>,
    description: String,
}

#[derive(Serialize)]
struct StatusJson {
    breaker: BreakerJson,
    /// What this clone's runner says while the shared remote is out of reach (`null`: it is
    /// not, or no runner runs here).
    offline: Option<runner::Offline>,
    runners: Vec<RunnerJson>,
    tasks: Vec<TaskJson>,
}

pub fn run(ctx: &mut Ctx<'_>, args: Args) -> Result<()> {
    if args.watch {
        if !std::io::stdout().is_terminal() {
            return Err(
                crate::error::usage("--watch refreshes a terminal; stdout is not one")
                    .with_hint("use `git loop status --json` from scripts")
                    .into(),
            );
        }
        loop {
            let status = collect(ctx)?;
            // Clear the screen and go home, then draw.
            write!(ctx.out, "\x1b[H\x1b[2J")?;
            draw(ctx.out, &status)?;
            ctx.out.flush()?;
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    let status = collect(ctx)?;
    if args.json {
        return json(ctx.out, &status);
    }
    draw(ctx.out, &status)
}

fn collect(ctx: &Ctx<'_>) -> Result<StatusJson> {
    let repo = ctx.repo()?;
    let policy = repo
        .workdir()
        .map(crate::policy::Policy::load)
        .transpose()?
        .flatten();
    let heartbeat = policy.as_ref().map(|p| p.lease.heartbeat);
    let now = Timestamp::now();
    let mut runners = Vec::new();
    for (id, beat) in runner::heartbeats(&repo)? {
        let Ok(b) = beat else { continue };
        if b.phase == runner::Phase::Stopped {
            continue;
        }
        let age = (now.0 - b.updated.0) as f64 / 1e6;
        let alive = !b.holder.is_dead();
        let stale = !alive || heartbeat.is_some_and(|h| age > 3.0 * h.as_secs_f64() + 5.0);
        runners.push(RunnerJson {
            runner: id,
            host: b.holder.host,
            pid: b.holder.pid,
            phase: if alive {
                b.phase.to_string()
            } else {
                format!("{} (process gone)", b.phase)
            },
            updated: b.updated.to_rfc3339(),
            heartbeat_age_secs: age,
            stale,
            tasks: b.tasks,
            next_action: b.next_action,
            next_at: b.next_at.map(|t| t.to_rfc3339()),
            last_output: b.last_output.map(|t| t.to_rfc3339()),
            failure_streak: b.failure_streak,
            sandbox: b.sandbox,
        });
    }
    let store = Store::new(&repo);
    let listed = store.list()?;
    let short = ShortIds::new(listed.iter().map(|l| l.id.as_str()));
    let tasks: Vec<&Task> = listed.iter().filter_map(|l| l.task.as_ref().ok()).collect();
    let graph = Graph::new(tasks.iter().copied());
    let leases: HashMap<String, lease::Lease> = lease::all(&repo)?
        .into_iter()
        .filter_map(|(id, _, l)| Some((id, l.ok()?)))
        .collect();
    let mut ordered = tasks.clone();
    crate::graph::sort_dispatch_order(&mut ordered);
    let mut out_tasks = Vec::new();
    for t in ordered {
        let (next_action, next_at) = next(t, &graph, &short, leases.get(&t.id), now);
        out_tasks.push(TaskJson {
            id: t.id.clone(),
            short_id: short.short(&t.id).to_string(),
            title: t.title.clone(),
            state: t.state.to_string(),
            reason: t.reason.map(|r| r.to_string()),
            detail: t.detail.clone(),
            next_action,
            next_at: next_at.map(|a| a.to_rfc3339()),
        });
    }
    for l in listed.iter().filter(|l| l.task.is_err()) {
        out_tasks.push(TaskJson {
            id: l.id.clone(),
            short_id: short.short(&l.id).to_string(),
            title: String::new(),
            state: "corrupt".into(),
            reason: l.task.as_ref().err().cloned(),
            detail: None,
            next_action: format!("a person repairs or deletes {}", l.ref_name),
            next_at: None,
        });
    }
    let (_, b) = crate::breaker::read(&repo)?;
    // A note whose runner is gone (killed while the remote was away) says nothing now.
    let offline = runner::Offline::read(&repo)
        .filter(|_| crate::doctor::lock_held(repo.common_dir()) != Some(false));
    Ok(StatusJson {
        offline,
        breaker: BreakerJson {
            state: b.state.as_str().to_string(),
            class: b.class.map(|c| c.as_str().to_string()),
            reason: b.reason.clone(),
            since: b.since.map(|t| t.to_rfc3339()),
            open_until: b.open_until.map(|t| t.to_rfc3339()),
            description: b.describe(),
        },
        runners,
        tasks: out_tasks,
    })
}

/// What happens next to a task, and when: the holder of its lease, or what the state machine
/// says re-arms it.
fn next(
    t: &Task,
    graph: &Graph<'_>,
    short: &ShortIds,
    lease: Option<&lease::Lease>,
    now: Timestamp,
) -> (String, Option<Timestamp>) {
    if let Some(l) = lease {
        let holder = if l.holder_dead() {
            format!("{} (dead: `git loop start` recovers it)", l.runner)
        } else {
            l.runner.clone()
        };
        return (
            format!(
                "{} by {holder}, lease until {}",
                l.purpose,
                &l.expires.to_rfc3339()[11..19]
            ),
            Some(l.expires),
        );
    }
    let pending: Vec<&str> = graph
        .pending_deps(t)
        .iter()
        .map(|d| short.short(d))
        .collect();
    match machine::next(t, &pending, now) {
        Some(n) => (n.action, n.at),
        None => ("-".into(), None),
    }
}

fn draw(out: &mut dyn std::io::Write, s: &StatusJson) -> Result<()> {
    if let Some(o) = &s.offline {
        writeln!(
            out,
            "remote: {} unreachable since {} ({}): runner {} claims nothing new{}; heartbeats \
             wait for it",
            o.remote,
            o.since.to_rfc3339(),
            o.why,
            o.runner,
            if o.tasks.is_empty() {
                String::new()
            } else {
                format!(
                    ", its agents go on with {}",
                    o.tasks
                        .iter()
                        .map(|t| &t[..t.len().min(7)])
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        )?;
    }
    if s.runners.is_empty() {
        writeln!(out, "runner: none (start one with `git loop start`)")?;
    }
    for r in &s.runners {
        writeln!(
            out,
            "runner: {} (host {}, pid {}), phase {}, heartbeat {:.0}s ago{}{}{}",
            r.runner,
            r.host,
            r.pid,
            r.phase,
            r.heartbeat_age_secs,
            if r.stale { " — stale" } else { "" },
            match r.sandbox.as_deref() {
                Some(s) if s.starts_with("none: ") =>
                    format!(", agents unsandboxed ({})", &s["none: ".len()..]),
                Some(s) if s.starts_with("sandbox-exec") =>
                    ", agents in sandbox-exec (weaker than bwrap, untested)".to_string(),
                _ => String::new(),
            },
            if r.tasks.is_empty() {
                String::new()
            } else {
                format!(
                    ", working on {}",
                    r.tasks
                        .iter()
                        .map(|t| &t[..t.len().min(7)])
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        )?;
    }
    writeln!(out, "breaker: {}", s.breaker.description)?;
    writeln!(out)?;
    let mut table = Table::new(&["ID", "STATE", "NEXT", "TITLE"]);
    for t in &s.tasks {
        let state = match &t.reason {
            Some(r) if t.state == "blocked" || t.state == "human_gated" || t.state == "corrupt" => {
                format!("{}: {r}", t.state)
            }
            _ => t.state.clone(),
        };
        table.row(vec![
            t.short_id.clone(),
            safe(&state, false),
            safe(&t.next_action, false),
            truncate(&safe(&t.title, false), 50),
        ]);
    }
    if table.is_empty() {
        writeln!(out, "no tasks")?;
    } else {
        table.write(out)?;
    }
    Ok(())
}

//! `git loop task edit`

use anyhow::Result;

use crate::cli::Ctx;
use crate::commands::{BodyArgs, policy};
use crate::error::usage;
use crate::graph::Graph;
use crate::ids::{self, ShortIds};
use crate::policy::TriageSection;
use crate::refs;
use crate::store::{Edit, Store, Updated};
use crate::task::machine::{self, Actor, Budget, Clock, Event};
use crate::task::{self, State, check_name, check_title};

/// Change a task's title, body, dependencies, priority, batch or mutex group.
///
/// Concurrent writers are safe: a lost race re-reads the task and applies the edit again. A task
/// held as `blocked: thin_task` is triaged again and re-armed when its body now passes.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The task (any unique prefix of its id)
    id: String,

    /// A new title
    #[arg(long)]
    title: Option<String>,

    #[command(flatten)]
    body: BodyArgs,

    /// Also run after task ID (repeatable)
    #[arg(long, value_name = "ID")]
    after: Vec<String>,

    /// No longer wait for task ID (repeatable)
    #[arg(long, value_name = "ID")]
    remove_after: Vec<String>,

    /// A new priority (higher runs first)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    priority: Option<i64>,

    /// Move the task to batch B
    #[arg(long, value_name = "B")]
    batch: Option<String>,

    /// Put the task in mutex group NAME
    #[arg(long, value_name = "NAME", conflicts_with = "no_mutex")]
    mutex: Option<String>,

    /// Take the task out of its mutex group
    #[arg(long)]
    no_mutex: bool,
}

pub fn run(ctx: &mut Ctx<'_>, args: Args) -> Result<()> {
    let actor = Actor::at_command_line(&ctx.cwd);
    actor.refuse_agent("`git loop task edit`")?;
    let repo = ctx.repo()?;
    let policy = policy(&repo)?;
    if let Some(t) = &args.title {
        check_title(t)?;
    }
    if let Some(b) = &args.batch {
        check_name("batch", b)?;
    }
    if let Some(m) = &args.mutex {
        check_name("mutex", m)?;
    }
    let body = args.body.read()?;
    let nothing_asked = args.title.is_none()
        && body.is_none()
        && args.after.is_empty()
        && args.remove_after.is_empty()
        && args.priority.is_none()
        && args.batch.is_none()
        && args.mutex.is_none()
        && !args.no_mutex;
    if nothing_asked {
        return Err(usage("nothing to edit")
            .with_hint("give --title, --body, --body-file, --after, --remove-after, --priority, --batch, --mutex or --no-mutex")
            .into());
    }

    // A signed edit vouches for the title and body: only one that sets them is signed.
    let store =
        Store::new(&repo).signing(repo.signs_commits() && (args.title.is_some() || body.is_some()));
    let all_ids = store.ids()?;
    let refs: Vec<&str> = all_ids.iter().map(String::as_str).collect();
    let id = ids::resolve(&args.id, &refs)?.to_string();
    let add: Vec<String> = args
        .after
        .iter()
        .map(|p| ids::resolve(p, &refs).map(str::to_string))
        .collect::<Result<_, _>>()?;
    let remove: Vec<String> = args
        .remove_after
        .iter()
        .map(|p| ids::resolve(p, &refs).map(str::to_string))
        .collect::<Result<_, _>>()?;
    let triage_policy = policy
        .as_ref()
        .map(|p| p.triage.clone())
        .unwrap_or_else(TriageSection::default);

    let budget = policy.as_ref().map_or_else(Budget::default, Budget::from);
    let updated = store.update(&id, |task| {
        let mut what = Vec::new();
        let mut verify = Vec::new();
        if let Some(t) = &args.title
            && task.title != *t
        {
            task.title = t.clone();
            what.push("title");
        }
        if let Some(b) = &body
            && task.body != *b
        {
            task.body = b.clone();
            what.push("body");
        }
        if let Some(p) = args.priority
            && task.priority != p
        {
            task.priority = p;
            what.push("priority");
        }
        if let Some(b) = &args.batch
            && task.batch != *b
        {
            task.batch = b.clone();
            what.push("batch");
        }
        let mutex = if args.no_mutex {
            None
        } else {
            args.mutex.clone().or(task.mutex.clone())
        };
        if task.mutex != mutex {
            task.mutex = mutex;
            what.push("mutex");
        }
        let mut after: Vec<String> = task
            .after
            .iter()
            .filter(|d| !remove.contains(d))
            .cloned()
            .collect();
        let new_deps: Vec<String> = add.iter().filter(|d| !after.contains(d)).cloned().collect();
        after.extend(new_deps.iter().cloned());
        if after != task.after {
            if !new_deps.is_empty() {
                // Check against the backlog as it is now; require what the check read unchanged.
                let listed = store.list()?;
                let short = ShortIds::new(listed.iter().map(|l| l.id.as_str()));
                let graph = Graph::new(listed.iter().filter_map(|l| l.task.as_ref().ok()));
                let relied_on = graph.check_deps(&task.id, &new_deps, &short)?;
                for l in &listed {
                    if let Some(tip) = l.tip
                        && relied_on.contains(&l.id)
                    {
                        verify.push((refs::task(&l.id), tip));
                    }
                }
            }
            task.after = after;
            what.push("after");
        }
        let thin = task::triage(&task.body, &triage_policy);
        let what = format!("edit: {}", what.join(", "));
        let moved = machine::apply(
            task,
            &Event::Edited { what, thin },
            &actor,
            &budget,
            Clock::now(),
        )?;
        *task = moved.task;
        let message = moved.message;
        let mut edit = Edit::new(message);
        edit.verify = verify;
        Ok(edit)
    })?;
    match updated {
        Updated::Changed(task) => {
            writeln!(ctx.out, "{}", task.id)?;
            if task.state == State::Blocked {
                eprintln!(
                    "still held as {}: {}",
                    task.state_label(),
                    task.detail.as_deref().unwrap_or_default()
                );
            }
        }
        Updated::Unchanged(task) => {
            eprintln!("nothing changed");
            writeln!(ctx.out, "{}", task.id)?;
        }
    }
    Ok(())
}

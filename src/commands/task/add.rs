//! `git loop task add`

use anyhow::Result;

use crate::cli::Ctx;
use crate::commands::{BodyArgs, policy};
use crate::ids;
use crate::policy::{DEFAULT_BATCH, TriageSection};
use crate::store::Store;
use crate::task::machine::Actor;
use crate::task::{self, State, Task, check_name, check_title};

/// File a task; prints its id alone on standard output.
///
/// A task whose body is thinner than policy.toml's [triage] asks (too short, or not saying how
/// done is checked) is stored, but held as `blocked: thin_task` until it is edited.
///
/// With commit.gpgSign on, the task's commit is signed as git signs commits (gpg.format,
/// user.signingKey): with policy.toml's [trust] signers, only tasks a listed key signed run.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What is to be done, in one line
    title: String,

    #[command(flatten)]
    body: BodyArgs,

    /// Run only after task ID is done (repeatable)
    #[arg(long, value_name = "ID")]
    after: Vec<String>,

    /// The batch the task belongs to [default: policy's loop.batch]
    #[arg(long, value_name = "B")]
    batch: Option<String>,

    /// Higher runs first; ties go to the older task
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    priority: i64,

    /// Never run at the same time as another task of this mutex group
    #[arg(long, value_name = "NAME")]
    mutex: Option<String>,

    /// The task this one was discovered from
    #[arg(long, value_name = "ID")]
    from: Option<String>,
}

pub fn run(ctx: &mut Ctx<'_>, args: Args) -> Result<()> {
    let repo = ctx.repo()?;
    let policy = policy(&repo)?;
    check_title(&args.title)?;
    let body = args.body.read()?.unwrap_or_default();
    let batch = args
        .batch
        .or_else(|| policy.as_ref().map(|p| p.loop_.batch.clone()))
        .unwrap_or_else(|| DEFAULT_BATCH.to_string());
    check_name("batch", &batch)?;
    if let Some(m) = &args.mutex {
        check_name("mutex", m)?;
    }

    let store = Store::new(&repo);
    let existing = store.ids()?;
    let refs: Vec<&str> = existing.iter().map(String::as_str).collect();
    let mut after = Vec::new();
    for prefix in &args.after {
        let id = ids::resolve(prefix, &refs)?.to_string();
        if !after.contains(&id) {
            after.push(id);
        }
    }
    let mut discovered_from = args
        .from
        .as_deref()
        .map(|p| ids::resolve(p, &refs).map(str::to_string))
        .transpose()?;
    // From inside an agent's run, what it files is discovered from its task; in a sandbox,
    // which cannot write refs, it goes to the run's outbox, which the runner files after it.
    let actor = Actor::at_command_line(&ctx.cwd);
    if let Actor::Agent { task, .. } = &actor
        && !task.is_empty()
    {
        discovered_from =
            discovered_from.or_else(|| ids::resolve(task, &refs).ok().map(str::to_string));
        if let Some(outbox) = std::env::var_os("GIT_LOOP_OUTBOX") {
            let id = ids::generate(&refs);
            crate::hooks::write_outbox(
                std::path::Path::new(&outbox),
                &crate::hooks::Outboxed {
                    id: id.clone(),
                    title: args.title,
                    body,
                    blocker: false,
                },
            )?;
            eprintln!("filed to the run's outbox: the runner files it when the run ends");
            writeln!(ctx.out, "{id}")?;
            return Ok(());
        }
    }

    let triage = policy
        .as_ref()
        .map(|p| p.triage.clone())
        .unwrap_or_else(TriageSection::default);
    let id = ids::generate(&refs);
    let thin = task::triage(&body, &triage);
    let mut task = Task::new(id, args.title, body, batch, thin);
    task.priority = args.priority;
    task.after = after;
    task.mutex = args.mutex;
    task.discovered_from = discovered_from;
    if matches!(actor, Actor::Agent { .. }) {
        let tasks: Vec<Task> = store
            .list()?
            .into_iter()
            .filter_map(|l| l.task.ok())
            .collect();
        crate::hooks::hold_past_the_limit(&tasks, &triage, &mut task);
    }
    // What a person files is signed when their git signs commits; an agent's never is.
    let store = store.signing(actor == Actor::Person && repo.signs_commits());
    store.create(&task)?;
    if task.state == State::Blocked {
        eprintln!(
            "held as blocked: thin_task: {}",
            task.detail.as_deref().unwrap_or_default()
        );
        eprintln!(
            "hint: `git loop task edit {} --body-file FILE` re-arms it",
            &task.id[..ids::MIN_SHORT]
        );
    }
    writeln!(ctx.out, "{}", task.id)?;
    Ok(())
}

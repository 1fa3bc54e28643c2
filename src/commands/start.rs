//! `git loop start`

use anyhow::Result;

use crate::cli::Ctx;
use crate::error::{Class, LoopError};
use crate::policy::Policy;
use crate::runner::{self, Finish, Options};

/// Run the loop: pick ready tasks, run agents, judge, promote.
///
/// One runner per repository (a second exits 6 naming the first). It recovers what dead
/// holders left before dispatching anything new, runs up to loop.workers tasks at once, and
/// sleeps until the next timer when nothing can run. With --once it exits 0 when the oracle
/// says the batch is done, 1 when nothing else can progress (listing every unfinished task with
/// what moves it on), 3 when a config failure stops everything, and 7 while a person holds the
/// breaker (`git loop pause`).
///
/// Every re-run of an agent waits a full-jitter backoff and counts against `[retry]`: at most
/// max_attempts a round, escalate_after rounds, then a person.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Stop when the batch is done or nothing else can progress
    #[arg(long)]
    once: bool,

    /// Run up to N tasks at once [default: policy's loop.workers]
    #[arg(long, value_name = "N")]
    workers: Option<u32>,

    /// Only tasks of batch B
    #[arg(long, value_name = "B")]
    batch: Option<String>,

    /// Start the same runner in the background (its own process group, output to
    /// <git-common-dir>/loop/logs/runner.log) and return. Service managers run it in the
    /// foreground instead.
    #[arg(long)]
    detach: bool,
}

pub fn run(ctx: &mut Ctx<'_>, args: Args) -> Result<()> {
    let repo = ctx.repo()?;
    let workdir = repo.require_workdir()?;
    let policy = Policy::load_required(&workdir)?;
    // The frozen finish line: pinned by a person, and what the target has committed now.
    crate::finish_line::frozen(&repo, &policy)?;
    if args.detach {
        return detach(ctx, &repo, &workdir, &args);
    }
    drop(repo);
    let opts = Options {
        once: args.once,
        workers: args.workers,
        batch: args.batch,
    };
    let mut stderr = std::io::stderr();
    match runner::run(&workdir, policy, &opts, &mut stderr)? {
        Finish::Stopped => {
            writeln!(ctx.out, "stopped")?;
            Ok(())
        }
        Finish::Done => {
            writeln!(ctx.out, "done: the oracle says the batch is finished")?;
            Ok(())
        }
        Finish::Stuck(lines) => {
            let mut message = format!("{} task(s) cannot progress:", lines.len());
            for l in &lines {
                message.push_str("\n  ");
                message.push_str(l);
            }
            Err(LoopError::new(Class::Generic, message)
                .with_hint("`git loop status` shows why each waits and what re-arms it")
                .into())
        }
    }
}

/// Starts `git-loop start` (without --detach) in its own process group, in the background.
fn detach(
    ctx: &mut Ctx<'_>,
    repo: &crate::git::Repo,
    workdir: &std::path::Path,
    args: &Args,
) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let logs = repo.common_dir().join("loop").join("logs");
    std::fs::create_dir_all(&logs)?;
    let log_path = logs.join("runner.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("-C").arg(workdir).arg("start");
    if args.once {
        cmd.arg("--once");
    }
    if let Some(n) = args.workers {
        cmd.arg("--workers").arg(n.to_string());
    }
    if let Some(b) = &args.batch {
        cmd.arg("--batch").arg(b);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    let child = cmd.spawn()?;
    writeln!(ctx.out, "{}", child.id())?;
    eprintln!(
        "runner started in the background (pid {}); log: {}",
        child.id(),
        log_path.display()
    );
    Ok(())
}

//! `git loop stop`

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::cli::Ctx;
use crate::error::{Class, LoopError};
use crate::process::{Signal, alive, signal_group, signal_process};
use crate::runner::Heartbeat;

/// Stop the runner: TERM its process group, KILL it after --timeout.
///
/// The group is signalled when the runner leads it (`--detach` makes sure it does); a runner
/// sharing the group of whatever started it is signalled alone.
///
/// On TERM the runner dispatches nothing more, ends its agents' process groups, requeues
/// their tasks without counting an attempt, releases its leases, writes a final heartbeat and
/// exits 0. If it is still running after the timeout, it and its agents are killed and its
/// leases taken back, so that nothing it leaves behind needs a person.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds to wait for a clean stop before KILL
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout: u64,
}

pub fn run(ctx: &mut Ctx<'_>, args: Args) -> Result<()> {
    let repo = ctx.repo()?;
    let holder = std::fs::read_to_string(repo.common_dir().join("loop").join("runner.holder"))
        .ok()
        .and_then(|t| toml::from_str::<Heartbeat>(&t).ok());
    let Some(h) = holder.filter(|h| !h.holder.is_dead()) else {
        writeln!(ctx.out, "no runner is running")?;
        return Ok(());
    };
    let (host, pid, start) = (&h.holder.host, h.holder.pid, h.holder.pid_start.as_deref());
    if !h.holder.is_here() {
        return Err(LoopError::new(
            Class::Generic,
            format!("the runner {} runs on host {host}, not this one", h.runner),
        )
        .with_hint(format!("run `git loop stop` on {host}"))
        .into());
    }
    // Its whole process group when it leads one (`--detach`, or a shell's job); when it
    // shares its starter's group (a script that ran it, `git` running `git-loop`), the
    // runner alone: the group is not the runner's to end.
    let signal = |signal| match h.pgid {
        Some(group) if group == pid => signal_group(group, signal),
        _ => signal_process(pid, signal),
    };
    signal(Signal::Term);
    let until = Instant::now() + Duration::from_secs(args.timeout);
    while alive(pid, start) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    if !alive(pid, start) {
        writeln!(ctx.out, "stopped {}", h.runner)?;
        return Ok(());
    }
    // It did not stop in time: kill it, and take back what it held.
    signal(Signal::Kill);
    let until = Instant::now() + Duration::from_secs(5);
    while alive(pid, start) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut stderr = std::io::stderr();
    crate::runner::recover(&repo, &format!("stop-{}", std::process::id()), &mut stderr)?;
    writeln!(
        ctx.out,
        "killed {} after {}s; its leases were taken back",
        h.runner, args.timeout
    )?;
    Ok(())
}

//! Running gate and verify commands: each an argv (never through a shell), in a given
//! directory, in its own process group, with a time limit and the tail of its output kept.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::error::{Class, LoopError};
use crate::finish_line::Frozen;
use crate::git::Repo;
use crate::git::cli::Git;
use crate::sandbox::{Sandbox, Session};

/// How much of a command's output is kept for messages and records.
const TAIL: usize = 8 * 1024;

/// What one command did.
#[derive(Clone, Debug)]
pub struct CommandResult {
    pub argv: Vec<String>,
    pub passed: bool,
    /// The exit code, or `None` when it was killed (timeout or signal).
    pub code: Option<i32>,
    pub timed_out: bool,
    /// The last bytes of its combined stdout and stderr.
    pub tail: String,
}

impl CommandResult {
    /// One line saying what happened, e.g. `cargo test: exit 101`.
    pub fn summary(&self) -> String {
        let what = if self.timed_out {
            "timed out".to_string()
        } else {
            match self.code {
                Some(c) => format!("exit {c}"),
                None => "killed by a signal".to_string(),
            }
        };
        format!("{}: {what}", self.argv.join(" "))
    }
}

/// How commands run: their time limit, who learns each process group as it starts, and the
/// flag that ends them when the runner stops.
#[derive(Clone, Copy)]
pub struct Limits<'a> {
    pub timeout: Duration,
    pub started: &'a dyn Fn(u32),
    pub stop: Option<&'a std::sync::atomic::AtomicBool>,
    /// The sandbox the commands run in (none when `None`).
    pub sandbox: Option<&'a Sandbox>,
}

impl<'a> Limits<'a> {
    /// A time limit alone.
    pub fn timeout(timeout: Duration) -> Limits<'static> {
        Limits {
            timeout,
            started: &|_| {},
            stop: None,
            sandbox: None,
        }
    }

    fn stopping(&self) -> bool {
        self.stop
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// Runs `commands` one after another in `dir` until one fails, each in a process group of its
/// own, told to `limits.started` as it starts. A program that cannot be found is a `config`
/// error; a failing command is a result, not an error; a stop ends the command and is an
/// error (`transient`: nothing was judged).
pub fn run_all(
    commands: &[Vec<String>],
    dir: &Path,
    limits: Limits<'_>,
) -> Result<Vec<CommandResult>> {
    run_all_in(commands, dir, limits, None, &|| Ok(()))
}

/// Runs `commands` in `dir`, `before` each (what puts the pinned files back: a command that
/// runs the branch's code may have changed them for the next).
fn run_all_in(
    commands: &[Vec<String>],
    dir: &Path,
    limits: Limits<'_>,
    session: Option<&Session>,
    before: &dyn Fn() -> Result<()>,
) -> Result<Vec<CommandResult>> {
    let mut results = Vec::new();
    for argv in commands {
        before()?;
        let result = run_one(argv, dir, limits, session)?;
        let passed = result.passed;
        results.push(result);
        if !passed {
            break;
        }
    }
    Ok(results)
}

fn run_one(
    argv: &[String],
    dir: &Path,
    limits: Limits<'_>,
    session: Option<&Session>,
) -> Result<CommandResult> {
    let timeout = limits.timeout;
    let (program, _) = argv.split_first().context("an empty command")?;
    let run = match session {
        Some(s) if s.is_on() => {
            crate::sandbox::check_program(program, dir).map_err(|why| {
                LoopError::new(
                    Class::Config,
                    format!("{program}: {why} (running {})", argv.join(" ")),
                )
                .with_hint("install it, or fix the command in policy.toml")
            })?;
            s.wrap(argv.to_vec(), dir)
        }
        _ => argv.to_vec(),
    };
    let (exe, args) = run.split_first().context("an empty command")?;
    let (reader, writer) = std::io::pipe().context("creating a pipe")?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(writer.try_clone().context("duplicating a pipe")?)
        .stderr(writer)
        .process_group(0)
        // git's automatic maintenance stays off in the command's git commands (see
        // `maintenance`).
        .envs(crate::maintenance::quiet_git_env());
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => LoopError::new(
            Class::Config,
            format!("{program}: program not found (running {})", argv.join(" ")),
        )
        .with_hint("install it, or fix the command in policy.toml")
        .into(),
        _ => anyhow::Error::new(e).context(format!("starting {}", argv.join(" "))),
    })?;
    drop(cmd);
    (limits.started)(child.id());
    // Read the output on a thread, keeping only its tail, until the command's group is ended
    // (and a moment after), whatever else holds the pipe open.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let collector = {
        let done = std::sync::Arc::clone(&done);
        std::thread::spawn(move || {
            let mut tail: Vec<u8> = Vec::new();
            crate::process::read_pipe(reader, &done, |chunk| {
                tail.extend_from_slice(chunk);
                if tail.len() > 2 * TAIL {
                    tail.drain(..tail.len() - TAIL);
                }
            });
            if tail.len() > TAIL {
                tail.drain(..tail.len() - TAIL);
            }
            String::from_utf8_lossy(&tail).into_owned()
        })
    };
    let started = Instant::now();
    let mut timed_out = false;
    // Polls start quick, for the many gates that take milliseconds, and slow down to 20 ms.
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for a command")? {
            break status;
        }
        if limits.stopping() {
            crate::process::signal_group(child.id(), crate::process::Signal::Kill);
            let _ = child.wait();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = collector.join();
            return Err(LoopError::new(
                Class::Transient,
                format!("{} was ended: the runner is stopping", argv.join(" ")),
            )
            .into());
        }
        if started.elapsed() > timeout {
            timed_out = true;
            crate::process::signal_group(child.id(), crate::process::Signal::Term);
            std::thread::sleep(Duration::from_millis(500));
            crate::process::signal_group(child.id(), crate::process::Signal::Kill);
            break child.wait().context("waiting for a killed command")?;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    // Members of the group that outlived the leader would keep the pipe open.
    crate::process::signal_group(child.id(), crate::process::Signal::Kill);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let tail = collector.join().unwrap_or_default();
    Ok(CommandResult {
        argv: argv.to_vec(),
        passed: status.success() && !timed_out,
        code: status.code(),
        timed_out,
        tail,
    })
}

/// Runs `commands` in a temporary detached worktree of `commit` under
/// `<git-common-dir>/loop/tmp/<tag>-…`, removed afterwards (what is judged is what is
/// committed, never a worktree's uncommitted state), with the pinned paths of the finish line
/// put back as the target has them before each command (see [`crate::finish_line::restore`]).
pub fn run_at(
    repo: &Repo,
    git: &Git,
    commit: gix::ObjectId,
    frozen: &Frozen,
    commands: &[Vec<String>],
    tag: &str,
    limits: Limits<'_>,
) -> Result<Vec<CommandResult>> {
    if commands.is_empty() {
        return Ok(Vec::new());
    }
    let dir = repo.common_dir().join("loop").join("tmp");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{tag}-{:08x}", crate::rand::u64() as u32));
    git.worktree_add(&["--detach", "--quiet"], &path, &commit.to_string())?;
    let there = git.in_worktree(&path);
    let restore = || crate::finish_line::restore(repo, &there, &path, frozen);
    let session = match limits.sandbox {
        Some(sandbox) => Some(Session::prepare(
            sandbox,
            repo,
            &path,
            crate::sandbox::Owner::Gate { tag },
        )?),
        None => None,
    };
    let results = run_all_in(commands, &path, limits, session.as_ref(), &restore);
    // What a gate wrote to its scratch (objects, refs) is its own: dropped.
    if let Some(s) = session {
        s.discard();
    }
    let removed = repo.remove_worktree(&path, true);
    let results = results?;
    removed?;
    Ok(results)
}

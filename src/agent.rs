//! The agent process (SPEC §5): an argv (never through a shell unless the user writes one) in
//! its own process group, stdin closed, output to a log file with its tail kept; completion is
//! the token anywhere in the output, whatever decorates it; silence without progress is a stall.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::error::{Class, LoopError};
use crate::process::signal_group;

/// The slowest the watch loop polls the agent.
const POLL: Duration = Duration::from_millis(50);

/// How often the watch asks whether the run is still wanted (and for its progress mark): a
/// task a person cancels is ended within about this long.
const PROBE: Duration = Duration::from_millis(200);

/// How to run one agent.
pub struct Spec {
    pub argv: Vec<String>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    pub tail_bytes: usize,
    pub token: String,
    pub stall_timeout: Duration,
    pub timeout: Duration,
    pub exit_grace: Duration,
    /// Set when the runner is stopping: the agent's group is stopped and the run ends.
    pub stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// How the agent ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// It exited by itself with this code (`None`: killed by a signal).
    Exited(Option<i32>),
    /// No output and no progress for `stall_timeout`: its group was stopped.
    Stalled,
    /// It ran past `timeout`: its group was stopped.
    TimedOut,
    /// It printed the token and was still running `exit_grace` later: its group was stopped.
    EndedAfterToken,
    /// The runner is stopping: its group was stopped.
    Stopped,
    /// The task was taken from the run (a person cancelled or gated it, or its lease changed
    /// hands): its group was stopped.
    Withdrawn,
}

/// What the watch loop learns when it asks about the run now and then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watch {
    /// The run is still wanted; a mark of its progress (e.g. the branch head), whose change
    /// counts as activity.
    Progress(Option<String>),
    /// The task is no longer the run's: end it.
    Withdrawn,
}

#[derive(Debug)]
pub struct Outcome {
    pub ended: Ended,
    pub token_seen: bool,
    /// The last `tail_bytes` of its output.
    pub tail: String,
    pub pgid: u32,
}

#[derive(Default)]
struct Seen {
    tail: Vec<u8>,
    last_output: Option<Instant>,
    token: bool,
}

/// Runs the agent to its end. `watch` is asked now and then whether the run is still wanted,
/// and for a mark of its progress; a change of the mark counts as activity. `started` learns
/// the process group at once.
pub fn run(
    spec: &Spec,
    mut watch: impl FnMut() -> Watch,
    started: impl FnOnce(u32),
) -> Result<Outcome> {
    if let Some(dir) = spec.log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut log = std::fs::File::create(&spec.log)
        .with_context(|| format!("creating {}", spec.log.display()))?;
    let (program, args) = spec.argv.split_first().context("agent.command is empty")?;
    let (reader, writer) = std::io::pipe().context("creating a pipe")?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(writer.try_clone().context("duplicating a pipe")?)
        .stderr(writer)
        .process_group(0);
    // git's automatic maintenance stays off in the agent's git commands (see `maintenance`).
    for (k, v) in crate::maintenance::quiet_git_env().iter().chain(&spec.env) {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|e| -> anyhow::Error {
        match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => LoopError::new(
                Class::Config,
                format!("the agent program {program} cannot be run: {e}"),
            )
            .with_hint("fix agent.command in policy.toml, or install the program")
            .into(),
            _ => anyhow::Error::new(e).context(format!("starting {program}")),
        }
    })?;
    drop(cmd);
    let pgid = child.id();
    started(pgid);

    let seen = Arc::new(Mutex::new(Seen {
        last_output: Some(Instant::now()),
        ..Seen::default()
    }));
    // The collector wakes the watch loop when output ends (usually: the agent exited) or the
    // token arrives, so a quick agent is not left waiting for the next poll.
    let (wake_tx, wake_rx) = std::sync::mpsc::channel::<()>();
    // Set once the agent's group is ended: the collector then stops reading soon after, even
    // if something that left the group keeps the pipe open.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let collector = {
        let seen = Arc::clone(&seen);
        let token = spec.token.clone();
        let keep = spec.tail_bytes.max(token.len() * 4);
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            crate::process::read_pipe(reader, &done, |chunk| {
                let _ = log.write_all(chunk);
                let Ok(mut s) = seen.lock() else { return };
                s.tail.extend_from_slice(chunk);
                // Look for the token in what just arrived, with enough before it to catch a
                // token split across reads, once escape sequences are taken out.
                let from = s
                    .tail
                    .len()
                    .saturating_sub(chunk.len() + token.len() * 4 + 64);
                if !s.token && has_token(&s.tail[from..], &token) {
                    s.token = true;
                    let _ = wake_tx.send(());
                }
                if s.tail.len() > keep * 2 {
                    let cut = s.tail.len() - keep;
                    s.tail.drain(..cut);
                }
                s.last_output = Some(Instant::now());
            });
            let _ = log.flush();
        })
    };

    let began = Instant::now();
    let mut withdrawn = false;
    let mut last_progress = match watch() {
        Watch::Progress(mark) => mark,
        Watch::Withdrawn => {
            withdrawn = true;
            None
        }
    };
    let mut last_activity = Instant::now();
    let mut token_at: Option<Instant> = None;
    let mut next_probe = Instant::now() + PROBE;
    let mut pause = Duration::from_millis(1);
    let ended = loop {
        if let Some(status) = child.try_wait().context("waiting for the agent")? {
            break Ended::Exited(status.code());
        }
        let (output_at, token) = {
            let s = seen
                .lock()
                .map_err(|_| anyhow::anyhow!("agent output reader failed"))?;
            (s.last_output, s.token)
        };
        if let Some(at) = output_at
            && at > last_activity
        {
            last_activity = at;
        }
        if Instant::now() >= next_probe {
            match watch() {
                Watch::Progress(now) if now != last_progress => {
                    last_progress = now;
                    last_activity = Instant::now();
                }
                Watch::Progress(_) => {}
                Watch::Withdrawn => withdrawn = true,
            }
            next_probe = Instant::now() + PROBE;
        }
        if token && token_at.is_none() {
            token_at = Some(Instant::now());
        }
        let stop = if withdrawn {
            Some(Ended::Withdrawn)
        } else if spec.stop.load(std::sync::atomic::Ordering::SeqCst) {
            Some(Ended::Stopped)
        } else if token_at.is_some_and(|t| t.elapsed() >= spec.exit_grace) {
            Some(Ended::EndedAfterToken)
        } else if began.elapsed() >= spec.timeout {
            Some(Ended::TimedOut)
        } else if token_at.is_none() && last_activity.elapsed() >= spec.stall_timeout {
            Some(Ended::Stalled)
        } else {
            None
        };
        if let Some(why) = stop {
            stop_group(
                &mut child,
                pgid,
                spec.exit_grace.min(Duration::from_secs(10)),
            )?;
            break why;
        }
        // Wait for a wake-up or the next poll; polls start quick and slow down to 50 ms.
        match wake_rx.recv_timeout(pause) {
            Ok(()) => pause = Duration::from_millis(1),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(POLL);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => pause = (pause * 2).min(POLL),
        }
    };
    // Whatever the leader did, nothing of its group outlives the run; what it wrote is read,
    // and nothing else is waited for.
    signal_group(pgid, crate::process::Signal::Kill);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = collector.join();
    let s = seen
        .lock()
        .map_err(|_| anyhow::anyhow!("agent output reader failed"))?;
    let start = s.tail.len().saturating_sub(spec.tail_bytes);
    Ok(Outcome {
        ended,
        token_seen: s.token,
        tail: String::from_utf8_lossy(&s.tail[start..]).into_owned(),
        pgid,
    })
}

/// TERM the group, KILL it after `grace`, and reap the leader.
fn stop_group(child: &mut std::process::Child, pgid: u32, grace: Duration) -> Result<()> {
    signal_group(pgid, crate::process::Signal::Term);
    let until = Instant::now() + grace;
    while Instant::now() < until {
        if child.try_wait()?.is_some() && !crate::process::group_alive(pgid) {
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
    signal_group(pgid, crate::process::Signal::Kill);
    child.wait().context("reaping the agent")?;
    Ok(())
}

/// Whether `token` appears in `bytes` once terminal escape sequences are removed, whatever
/// surrounds it (`**LOOP_DONE**`, a code fence, colour).
pub fn has_token(bytes: &[u8], token: &str) -> bool {
    let text = strip_ansi(&String::from_utf8_lossy(bytes));
    text.contains(token)
}

/// `s` without ANSI escape sequences (CSI `ESC [ … letter`, OSC `ESC ] … BEL/ST`, and two-byte
/// escapes).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('[') => {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\u{7}' {
                        break;
                    }
                    if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                        chars.next();
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Renders `{name}` placeholders of `template` from `values`; `{{` and `}}` are literal braces.
/// An unknown placeholder is a `config` error naming it and `what` (the template's origin).
pub fn render(template: &str, values: &[(&str, &str)], what: &str) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        out.push_str(&rest[..open]);
        let tail = &rest[open..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if let Some(after) = tail.strip_prefix('}') {
            out.push('}');
            rest = after;
            continue;
        }
        let Some(close) = tail.find('}') else {
            out.push_str(tail);
            rest = "";
            break;
        };
        let name = &tail[1..close];
        let identifier = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !identifier {
            // Not a placeholder (a JSON snippet, say): literal text.
            out.push('{');
            rest = &tail[1..];
            continue;
        }
        match values.iter().find(|(k, _)| *k == name) {
            Some((_, v)) => out.push_str(v),
            None => {
                return Err(LoopError::new(
                    Class::Config,
                    format!("{what}: unknown placeholder {{{name}}}"),
                )
                .with_hint(format!(
                    "the placeholders are {}; write {{{{ and }}}} for literal braces",
                    values
                        .iter()
                        .map(|(k, _)| format!("{{{k}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .into());
            }
        }
        rest = &tail[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Where the agent's log of a run goes (by run, so that no later run overwrites it).
pub fn log_path(common_dir: &Path, id: &str, run: &str) -> PathBuf {
    common_dir
        .join("loop")
        .join("logs")
        .join(format!("{id}-{run}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_whatever_decorates_them() {
        for out in [
            "all good\nLOOP_DONE\n",
            "**LOOP_DONE**",
            "```\nLOOP_DONE\n```",
            "\u{1b}[1;32mLOOP_DONE\u{1b}[0m",
            "\u{1b}]0;title\u{7}done: LOOP_DONE.",
        ] {
            assert!(has_token(out.as_bytes(), "LOOP_DONE"), "{out:?}");
        }
        assert!(!has_token(b"LOOP_DON E", "LOOP_DONE"));
    }

    #[test]
    fn templates() {
        let v = [("id", "abc"), ("title", "T")];
        assert_eq!(
            render("Task {id}: {title} {{x}}", &v, "t").ok(),
            Some("Task abc: T {x}".into())
        );
        assert!(render("{nope}", &v, "t").is_err());
        assert_eq!(
            render("{\"a\": 1}", &v, "t").ok(),
            Some("{\"a\": 1}".into())
        );
    }
}

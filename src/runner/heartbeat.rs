//! The runner's heartbeat (SPEC §4, §5), `refs/loop/runners/<runner-id>`: what it does, for
//! `status`, `doctor` and other hosts. [`Beats`] writes it when what the runner says changed
//! and held for [`SETTLE`] — a burst of phase changes is one write — and every
//! `lease.heartbeat`, never more often. Also here: the runner lock, and the file that names
//! its holder.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::error::{Class, LoopError};
use crate::git::{Cas, Repo};
use crate::holder::Holder;
use crate::refs;
use crate::time::Timestamp;

const RECORD: &str = "heartbeat.toml";

/// How long a changed phase must hold before the heartbeat says so: workers that go from
/// agent to judge to promotion within milliseconds make one write, not three.
pub const SETTLE: Duration = Duration::from_millis(250);

/// What the runner does, as its heartbeat says (SPEC §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Recover,
    Idle,
    Backoff,
    BreakerOpen,
    Dispatch,
    Agent,
    Judge,
    Promote,
    Stopping,
    Stopped,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Recover => "recover",
            Phase::Idle => "idle",
            Phase::Backoff => "backoff",
            Phase::BreakerOpen => "breaker_open",
            Phase::Dispatch => "dispatch",
            Phase::Agent => "agent",
            Phase::Judge => "judge",
            Phase::Promote => "promote",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The runner's heartbeat (SPEC §4), `refs/loop/runners/<runner-id>`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    pub runner: String,
    /// The runner's process.
    #[serde(flatten)]
    pub holder: Holder,
    /// Its process group (which `git loop stop` signals when the runner leads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgid: Option<u32>,
    pub started: Timestamp,
    pub updated: Timestamp,
    pub iteration: u64,
    pub phase: Phase,
    #[serde(default)]
    pub tasks: Vec<String>,
    /// When an agent of this runner last wrote output (its log file's last change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_output: Option<Timestamp>,
    #[serde(default)]
    pub failure_streak: u32,
    pub next_action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at: Option<Timestamp>,
    /// What the runner's agents run in: `bwrap (<path>)`, or `none: <why>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// Every runner heartbeat in the repository.
pub fn heartbeats(repo: &Repo) -> Result<Vec<(String, std::result::Result<Heartbeat, String>)>> {
    let mut out = Vec::new();
    for r in repo.refs_under(refs::RUNNERS)? {
        if let Some(tip) = r.id {
            out.push((
                r.name[refs::RUNNERS.len()..].to_string(),
                crate::record::read(repo, tip, RECORD),
            ));
        }
    }
    Ok(out)
}

/// The heartbeat of the runner `id` at commit `tip`.
pub fn read(repo: &Repo, tip: gix::ObjectId) -> std::result::Result<Heartbeat, String> {
    crate::record::read(repo, tip, RECORD)
}

/// A runner's heartbeat and when to write it.
pub struct Beats {
    pub beat: Heartbeat,
    /// `lease.heartbeat`.
    pub every: Duration,
    /// What the last written heartbeat said (phase, next action), and when it was written.
    written: Option<(Phase, String)>,
    last: Instant,
    /// Since when the heartbeat has said something else than the runner would say now.
    changed_at: Option<Instant>,
}

impl Beats {
    /// The heartbeat of a runner starting now, written every `every` at least.
    pub fn new(runner: &str, every: Duration, sandbox: &crate::sandbox::Sandbox) -> Beats {
        let now = Timestamp::now();
        let holder = Holder::me();
        Beats {
            beat: Heartbeat {
                runner: runner.to_string(),
                pgid: crate::process::pgid(holder.pid),
                holder,
                started: now,
                updated: now,
                iteration: 0,
                phase: Phase::Recover,
                tasks: Vec::new(),
                last_output: None,
                failure_streak: 0,
                next_action: "recover".into(),
                next_at: None,
                sandbox: Some(sandbox.describe()),
            },
            every,
            written: None,
            last: Instant::now(),
            changed_at: None,
        }
    }

    /// Whether the periodic heartbeat (and the lease renewals that go with it) is due.
    pub fn due(&self) -> bool {
        self.last.elapsed() >= self.every
    }

    /// When the heartbeat is next due: periodically, or a settled change.
    pub fn next_due(&self) -> Instant {
        let periodic = self.last + self.every;
        match self.changed_at {
            Some(at) => periodic.min(at + SETTLE),
            None => periodic,
        }
    }

    /// Says what the runner does now. The heartbeat is written when that changed and has held
    /// for [`SETTLE`] (at once when `now`), and whenever it is due.
    pub fn say(
        &mut self,
        repo: &Repo,
        phase: Phase,
        next: &str,
        next_at: Option<Timestamp>,
        now: bool,
    ) -> Result<()> {
        let wanted = (phase, next.to_string());
        if self.written.as_ref() == Some(&wanted) {
            self.changed_at = None;
        } else if self.changed_at.is_none() {
            self.changed_at = Some(Instant::now());
        }
        let settled = self.changed_at.is_some_and(|at| at.elapsed() >= SETTLE);
        if !(now || settled || self.due()) {
            return Ok(());
        }
        self.beat.phase = phase;
        self.beat.next_action = next.to_string();
        self.beat.next_at = next_at;
        self.beat.updated = Timestamp::now();
        let name = refs::runner(&self.beat.runner);
        let new = crate::record::write(
            repo,
            &format!("runner: {phase}"),
            RECORD,
            &self.beat,
            None,
            &[],
        )?;
        let edit = match repo.read_ref(&name)? {
            Some(old) => Cas::Update { name, old, new },
            None => Cas::Create { name, new },
        };
        repo.cas(&[edit])?;
        self.last = Instant::now();
        self.written = Some(wanted);
        self.changed_at = None;
        Ok(())
    }
}

/// Takes the runner lock; a second runner gets `busy` naming the holder.
pub(super) fn take_lock(repo: &Repo) -> Result<std::fs::File> {
    let dir = repo.common_dir().join("loop");
    match crate::lockfile::try_take(&dir.join("runner.lock"))? {
        Some(file) => Ok(file),
        None => {
            let holder = std::fs::read_to_string(dir.join("runner.holder")).unwrap_or_default();
            let holder: Option<Heartbeat> = toml::from_str(&holder).ok();
            let phase = holder
                .as_ref()
                .and_then(|h| {
                    heartbeats(repo)
                        .ok()?
                        .into_iter()
                        .find(|(id, _)| *id == h.runner)
                        .and_then(|(_, b)| b.ok())
                        .map(|b| b.phase.to_string())
                })
                .unwrap_or_else(|| "unknown".into());
            let who = match holder {
                Some(h) => format!(
                    "host {}, pid {}, phase {phase} (runner {})",
                    h.holder.host, h.holder.pid, h.runner
                ),
                None => "a process whose details are not recorded yet".into(),
            };
            Err(LoopError::new(
                Class::Busy,
                format!("another runner holds this repository: {who}"),
            )
            .with_hint("`git loop status` shows it; `git loop stop` stops it")
            .into())
        }
    }
}

pub(super) fn write_lock_holder(repo: &Repo, beat: &Heartbeat) -> Result<()> {
    let path = repo.common_dir().join("loop").join("runner.holder");
    std::fs::write(&path, toml::to_string(beat)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// What a runner says while the shared remote is out of reach (SPEC §13), where `status` in
/// this clone finds it: its heartbeat cannot be written meanwhile, since a heartbeat counts
/// once the remote has it. A file of this clone's, not loop state: removed when the remote
/// answers again and when the runner stops.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Offline {
    /// The runner that cannot reach the remote.
    pub runner: String,
    pub remote: String,
    /// Since when (this host's clock).
    pub since: Timestamp,
    /// What the last try said.
    pub why: String,
    /// The tasks its agents go on with meanwhile.
    pub tasks: Vec<String>,
}

fn offline_path(repo: &Repo) -> std::path::PathBuf {
    repo.common_dir().join("loop").join("offline.toml")
}

impl Offline {
    pub fn write(&self, repo: &Repo) -> Result<()> {
        let path = offline_path(repo);
        crate::files::replace(&path, toml::to_string(self)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// What a runner here said, if it still says it (its file is there).
    pub fn read(repo: &Repo) -> Option<Offline> {
        let text = std::fs::read_to_string(offline_path(repo)).ok()?;
        toml::from_str(&text).ok()
    }

    pub fn clear(repo: &Repo) {
        let _ = std::fs::remove_file(offline_path(repo));
    }
}

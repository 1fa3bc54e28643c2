//! Leases (SPEC §4): `refs/loop/leases/<id>` says who holds a task — runner, host, process
//! (pid and start time), the agent's process group, the run — and until when. A lease is taken
//! in the same ref transaction that moves the task, renewed by compare-and-swap, and deleted in
//! the transaction that moves the task on.

use std::time::Duration;

use anyhow::Result;
use gix::ObjectId;
use serde::{Deserialize, Serialize};

use crate::git::{Cas, CasOutcome, Repo};
use crate::holder::Holder;
use crate::refs;
use crate::time::Timestamp;

const RECORD: &str = "lease.toml";

/// What a lease's holder does with the task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// An agent runs on it (then the judge, then the promotion, under the same lease).
    Agent,
    Judge,
    Promote,
    /// A reaper takes it back.
    Reap,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Agent => "agent",
            Purpose::Judge => "judge",
            Purpose::Promote => "promote",
            Purpose::Reap => "reap",
        }
    }
}

impl std::fmt::Display for Purpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub task: String,
    pub runner: String,
    /// The process that holds it.
    #[serde(flatten)]
    pub holder: Holder,
    /// The agent's process group, once it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgid: Option<u32>,
    /// When the group's leader started, so that a reused pid is not taken for the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgid_start: Option<String>,
    pub run: String,
    /// What the holder does with the task.
    pub purpose: Purpose,
    pub acquired: Timestamp,
    pub renewed: Timestamp,
    pub expires: Timestamp,
}

impl Lease {
    /// A lease of `task` held by this process for `ttl`.
    pub fn new(task: &str, runner: &str, run: &str, purpose: Purpose, ttl: Duration) -> Lease {
        let now = Timestamp::now();
        Lease {
            task: task.to_string(),
            runner: runner.to_string(),
            holder: Holder::me(),
            pgid: None,
            pgid_start: None,
            run: run.to_string(),
            purpose,
            acquired: now,
            renewed: now,
            expires: now.plus(ttl),
        }
    }

    /// Whether the holder is known dead: on this host, its process is gone (or the pid was
    /// reused by another process).
    pub fn holder_dead(&self) -> bool {
        self.holder.is_dead()
    }

    /// The agent's process group, if it is on this host and still the same group: its leader
    /// is the process that started then, or the leader is gone and members remain (a group id
    /// is not handed out again while the group has members). A live leader whose start time
    /// was not recorded may be another process that got the pid: not the agent's group.
    pub fn agent_group(&self) -> Option<u32> {
        let group = self.pgid?;
        if !self.holder.is_here() || group <= 1 {
            return None;
        }
        match (crate::process::start_time(group), &self.pgid_start) {
            (Some(now), Some(then)) if &now == then => Some(group),
            (Some(_), _) => None,
            (None, _) => Some(group),
        }
    }

    pub fn expired(&self, now: Timestamp) -> bool {
        self.expires <= now
    }

    /// Whether the lease, at commit `tip`, may be taken over. On this host: its holder died,
    /// or it expired (one clock). On another host, whose clock is never compared with this
    /// one's (SPEC §13): this process has seen the lease's ref hold `tip` for the lease's
    /// term (`expires - renewed`, both on the holder's clock) on its own monotonic clock. A
    /// process that has just started has seen nothing for long: it takes over no other
    /// host's lease before a term has passed.
    pub fn lapsed(&self, tip: ObjectId, now: Timestamp) -> bool {
        if self.holder.is_here() {
            return self.holder_dead() || self.expired(now);
        }
        let term =
            Duration::from_micros(u64::try_from(self.expires.0 - self.renewed.0).unwrap_or(0));
        unchanged_for(&refs::lease(&self.task), tip) >= term
    }

    /// The commit that records this lease (parentless: a lease's history is its task's).
    pub fn commit(&self, repo: &Repo) -> Result<ObjectId> {
        crate::record::write(
            repo,
            &format!("lease: {} holds it for {}", self.runner, self.purpose),
            RECORD,
            self,
            Some(&self.task),
            &[],
        )
    }
}

/// The lease of task `id`, if there is one: its commit and what it says (`Err`: unreadable).
pub fn read(
    repo: &Repo,
    id: &str,
) -> Result<Option<(ObjectId, std::result::Result<Lease, String>)>> {
    let Some(tip) = repo.read_ref(&refs::lease(id))? else {
        return Ok(None);
    };
    Ok(Some((tip, crate::record::read(repo, tip, RECORD))))
}

/// A lease as listed: the task id, the lease's commit, and what it says (`Err`: unreadable).
pub type Listed = (String, ObjectId, std::result::Result<Lease, String>);

/// Every lease.
pub fn all(repo: &Repo) -> Result<Vec<Listed>> {
    let mut out = Vec::new();
    for r in repo.refs_under(refs::LEASES)? {
        let Some(tip) = r.id else { continue };
        let id = r.name[refs::LEASES.len()..].to_string();
        out.push((id, tip, crate::record::read(repo, tip, RECORD)));
    }
    Ok(out)
}

/// The ids of the tasks that have a lease, read from the ref names alone.
pub fn ids(repo: &Repo) -> Result<std::collections::HashSet<String>> {
    Ok(repo
        .refs_under(refs::LEASES)?
        .into_iter()
        .map(|r| r.name[refs::LEASES.len()..].to_string())
        .collect())
}

/// Renews a lease held at `old` (compare-and-swap). `None` if it changed hands or vanished.
pub fn renew(repo: &Repo, old: ObjectId, lease: &Lease, ttl: Duration) -> Result<Option<ObjectId>> {
    let new = renewed(lease, ttl).commit(repo)?;
    Ok(
        match repo.cas(&[Cas::Update {
            name: refs::lease(&lease.task),
            old,
            new,
        }])? {
            CasOutcome::Applied => Some(new),
            CasOutcome::Lost => None,
        },
    )
}

/// `lease` renewed now for `ttl`.
pub fn renewed(lease: &Lease, ttl: Duration) -> Lease {
    let mut renewed = lease.clone();
    renewed.renewed = Timestamp::now();
    renewed.expires = renewed.renewed.plus(ttl);
    renewed
}

/// What this process saw each lease ref hold, and since when (its monotonic clock).
type Seen = std::collections::HashMap<String, (ObjectId, std::time::Instant)>;

fn seen() -> std::sync::MutexGuard<'static, Seen> {
    static SEEN: std::sync::LazyLock<std::sync::Mutex<Seen>> =
        std::sync::LazyLock::new(Default::default);
    SEEN.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Forgets how long every lease was seen unchanged: this process's view could not be
/// refreshed for a while (the shared remote was out of reach), so a lease that looked
/// unchanged meanwhile may have been renewed, or its holder cut off too. Each lease's term
/// is counted again from the next look, and no holder loses its lease for the outage alone.
pub fn forget_seen() {
    seen().clear();
}

/// How long this process has seen ref `name` hold `tip`, on its monotonic clock: zero the
/// first time it looks, or when the value changed since it last looked.
fn unchanged_for(name: &str, tip: ObjectId) -> Duration {
    let mut seen = seen();
    let now = std::time::Instant::now();
    match seen.get(name) {
        Some((was, since)) if *was == tip => now.duration_since(*since),
        _ => {
            seen.insert(name.to_string(), (tip, now));
            Duration::ZERO
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_group_id_or_another_host_is_never_the_agents_group() {
        let me = std::process::id();
        let mut l = Lease::new("t", "r", "run", Purpose::Agent, Duration::from_secs(60));
        assert_eq!(l.agent_group(), None, "no group recorded");
        l.pgid = Some(me);
        l.pgid_start = crate::process::start_time(me);
        assert_eq!(l.agent_group(), Some(me), "the leader that started then");
        l.pgid_start = Some("another start".to_string());
        assert_eq!(l.agent_group(), None, "the id now names another process");
        l.pgid_start = crate::process::start_time(me);
        l.holder.host = format!("not-{}", l.holder.host);
        assert_eq!(l.agent_group(), None, "a group on another host");
        l.holder.host = crate::process::host();
        l.pgid_start = None;
        assert_eq!(l.agent_group(), None, "a live leader of unknown start");
        // init, with its real start time: only the guard against group 1 can refuse it.
        l.pgid = Some(1);
        l.pgid_start = crate::process::start_time(1);
        assert_eq!(l.agent_group(), None, "never init's group");
    }
}

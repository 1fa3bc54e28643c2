//! The runner (SPEC §5): one per repository, under an OS lock. It recovers what dead holders
//! left, then dispatches the runnable set in order — up to `loop.workers` at once, never two
//! tasks of one mutex group — each claimed by one ref transaction and carried by a worker
//! thread through agent, judge and promotion. It writes a heartbeat, renews its leases, and
//! sleeps until the next timer when there is nothing to do.

pub mod worker;

use crate::ids::short;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::error::{Class, LoopError};
use crate::git::{Cas, Repo};
use crate::graph::Graph;
use crate::lease::{self, Lease, lease_ref};
use crate::policy::Policy;
use crate::store::{Edit, Store};
use crate::task::{State, Task, reason};
use crate::time::Timestamp;

pub const RUNNER_REFS: &str = "refs/loop/runners/";
const HEARTBEAT: &str = "heartbeat.toml";

pub struct Options {
    pub once: bool,
    pub workers: Option<u32>,
    pub batch: Option<String>,
}

/// How a `--once` run ended.
#[derive(Debug)]
pub enum Finish {
    /// The oracle says the batch is done.
    Done,
    /// Nothing else can progress: every unfinished task, with its state and reason.
    Stuck(Vec<String>),
    /// Stopped by SIGTERM (`git loop stop`, a service manager) or SIGINT.
    Stopped,
}

/// The runner's heartbeat (SPEC §4), `refs/loop/runners/<runner-id>`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    pub runner: String,
    pub host: String,
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgid: Option<u32>,
    pub started: Timestamp,
    pub updated: Timestamp,
    pub iteration: u64,
    pub phase: String,
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
}

/// Every runner heartbeat in the repository.
pub fn heartbeats(repo: &Repo) -> Result<Vec<(String, std::result::Result<Heartbeat, String>)>> {
    let mut out = Vec::new();
    for r in repo.refs_under(RUNNER_REFS)? {
        if let Some(tip) = r.id {
            out.push((
                r.name[RUNNER_REFS.len()..].to_string(),
                crate::record::read(repo, tip, HEARTBEAT),
            ));
        }
    }
    Ok(out)
}

struct Active {
    mutex: Option<String>,
    started: Instant,
    /// The agent's log file, for the heartbeat's last output time.
    log: Option<PathBuf>,
}

struct Runner<'a> {
    workdir: PathBuf,
    policy: Policy,
    opts: &'a Options,
    id: String,
    beat: Heartbeat,
    last_beat: Instant,
    active: HashMap<String, Active>,
    done_tx: mpsc::Sender<(String, Result<String>)>,
    done_rx: mpsc::Receiver<(String, Result<String>)>,
    say: &'a mut dyn Write,
    /// A config failure a worker met, for the breaker.
    config_failure: Option<String>,
    /// Successes and infrastructure failures since the last breaker check.
    successes: u32,
    infra_failures: u32,
    /// Set by SIGTERM (or SIGINT): stop dispatching, end the running agents, exit.
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Runs the loop in the repository of `workdir` until `--once` has nothing left to do (or for
/// ever). Progress lines go to `say`.
pub fn run(workdir: &Path, policy: Policy, opts: &Options, say: &mut dyn Write) -> Result<Finish> {
    let repo = Repo::discover(workdir)?;
    let _lock = take_lock(&repo)?;
    let host = crate::process::host();
    let pid = std::process::id();
    let id = format!("{host}-{pid}-{:04x}", crate::rand::u64() as u16);
    let now = Timestamp::now();
    let (done_tx, done_rx) = mpsc::channel();
    let mut runner = Runner {
        workdir: workdir.to_path_buf(),
        policy,
        opts,
        beat: Heartbeat {
            runner: id.clone(),
            host,
            pid,
            pid_start: crate::process::start_time(pid),
            pgid: crate::process::pgid(pid),
            started: now,
            updated: now,
            iteration: 0,
            phase: "recover".into(),
            tasks: Vec::new(),
            last_output: None,
            failure_streak: 0,
            next_action: "recover".into(),
            next_at: None,
        },
        id,
        last_beat: Instant::now(),
        active: HashMap::new(),
        done_tx,
        done_rx,
        say,
        config_failure: None,
        successes: 0,
        infra_failures: 0,
        stop: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, std::sync::Arc::clone(&runner.stop))
            .context("handling signals")?;
    }
    write_lock_holder(&repo, &runner.beat)?;
    runner.heartbeat(&repo, "recover", "recover")?;
    runner.recover(&repo)?;
    runner.main_loop()
}

impl Runner<'_> {
    fn main_loop(&mut self) -> Result<Finish> {
        loop {
            if self.stop.load(std::sync::atomic::Ordering::SeqCst) {
                return self.shut_down();
            }
            self.beat.iteration += 1;
            while let Ok((id, result)) = self.done_rx.try_recv() {
                self.finished(&id, result);
            }
            let repo = Repo::discover(&self.workdir)?;
            if self.last_beat.elapsed() >= self.policy.lease.heartbeat {
                self.renew_leases(&repo)?;
                let phase = if self.active.is_empty() {
                    "idle"
                } else {
                    "agent"
                };
                self.heartbeat(&repo, phase, "work")?;
            }
            let store = Store::new(&repo);
            // One listing of the backlog per iteration, read again only after this loop itself
            // changed a task: claims are compare-and-swaps on the tips listed, so a task
            // changed meanwhile by someone else is only a lost claim.
            let mut listed = store.list()?;
            if self.rearm_cooled_off(&store, &listed)? {
                listed = store.list()?;
            }
            let breaker = self.check_breaker(&repo)?;
            let dispatched = if breaker.admits() {
                self.dispatch(&repo, &store, &listed, breaker.state == "half_open")?
            } else {
                0
            };
            if self.active.is_empty() && dispatched == 0 {
                if !breaker.admits() {
                    self.heartbeat(&repo, "breaker_open", &breaker.describe())?;
                    if self.opts.once && breaker.class.as_deref() == Some("config") {
                        // Nothing can progress until a person fixes the configuration.
                        self.heartbeat(&repo, "stopped", &breaker.describe())?;
                        return Err(LoopError::new(
                            Class::Config,
                            format!("the breaker is open: {}", breaker.reason),
                        )
                        .with_hint("fix it and commit; the breaker re-arms by itself")
                        .into());
                    }
                    if self.opts.once && breaker.state == "paused" {
                        self.heartbeat(&repo, "stopped", &breaker.describe())?;
                        return Err(LoopError::new(
                            Class::Breaker,
                            format!("the loop is paused: {}", breaker.reason),
                        )
                        .with_hint("`git loop resume` releases it")
                        .into());
                    }
                    self.nap(Duration::from_secs(1));
                    continue;
                }
                let next = next_timer(&listed, self.opts.batch.as_deref());
                match next {
                    Some(at) => {
                        let wait = Duration::from_micros((at.0 - Timestamp::now().0).max(0) as u64)
                            .min(Duration::from_secs(30));
                        self.beat.next_at = Some(at);
                        self.heartbeat(&repo, "backoff", "wait for the next timer")?;
                        self.nap(wait.max(Duration::from_millis(20)));
                    }
                    None if self.opts.once => return self.finish(&repo),
                    None => {
                        self.heartbeat(&repo, "idle", "wait for work")?;
                        self.nap(Duration::from_secs(2));
                    }
                }
                continue;
            }
            // Wait for a worker to finish, or for the next heartbeat.
            if let Ok((id, result)) = self.done_rx.recv_timeout(Duration::from_millis(200)) {
                self.finished(&id, result);
            }
        }
    }

    /// Sleeps up to `d`, waking early when the runner is asked to stop.
    fn nap(&self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until && !self.stop.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(100)));
        }
    }

    /// Stop: dispatch nothing more; the workers see the flag, end their agents' groups and
    /// requeue their tasks (releasing their leases); then a final heartbeat.
    fn shut_down(&mut self) -> Result<Finish> {
        let _ = writeln!(self.say, "stopping: {} task(s) running", self.active.len());
        let repo = Repo::discover(&self.workdir)?;
        self.heartbeat(&repo, "stopping", "end the running agents")?;
        while !self.active.is_empty() {
            match self.done_rx.recv_timeout(Duration::from_secs(1)) {
                Ok((id, result)) => self.finished(&id, result),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.renew_leases(&repo)?;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        self.renew_leases(&repo)?;
        self.beat.tasks.clear();
        self.heartbeat(&repo, "stopped", "none: stopped")?;
        Ok(Finish::Stopped)
    }

    fn finished(&mut self, id: &str, result: Result<String>) {
        if let Some(a) = self.active.remove(id) {
            self.beat.tasks = self.active.keys().cloned().collect();
            let secs = a.started.elapsed().as_secs_f64();
            match result {
                Ok(state) => {
                    self.beat.failure_streak = 0;
                    self.successes += 1;
                    let _ = writeln!(self.say, "{}: {state} ({secs:.1}s)", short(id));
                }
                Err(e) => {
                    self.beat.failure_streak += 1;
                    let line = format!("{e:#}")
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = writeln!(self.say, "{}: {line}", short(id));
                    match crate::error::class_of(&e) {
                        Class::Config => self.config_failure = Some(line),
                        // Unclassified failures are the infrastructure's too: a promotion that
                        // keeps failing so must open the breaker (SPEC §5), not repeat for ever.
                        Class::Transient | Class::Generic => self.infra_failures += 1,
                        _ => {}
                    }
                }
            }
        }
    }

    /// The breaker after this iteration's observations: the policy and the runtime files
    /// checked against the target (a problem opens it at once, a changed fingerprint re-arms
    /// it), workers' config and infrastructure failures, probes, and time.
    fn check_breaker(&mut self, repo: &Repo) -> Result<crate::breaker::Breaker> {
        use crate::breaker::{self, Breaker};
        let (tip, mut b) = breaker::read(repo)?;
        let before = b.clone();
        let now = Timestamp::now();
        // The policy as it is now (a commit may have changed it).
        let mut problems = Vec::new();
        match Policy::load_required(&self.workdir) {
            Ok(p) => self.policy = p,
            Err(e) => problems.push(
                format!("{e:#}")
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            ),
        }
        let tip_commit = repo
            .last_seen_tip(
                self.policy.loop_.remote.as_deref(),
                &self.policy.loop_.target,
            )?
            .map(|(tip, _)| tip);
        // Everything the runtime needs from the target: the manifest and every program run
        // from inside the repository, so committing either re-arms the breaker.
        let mut files = breaker::runtime_files(&self.policy, repo.workdir());
        files.push(crate::policy::FILE.to_string());
        let fingerprint = match tip_commit {
            Some(t) => {
                // What is missing is part of the fingerprint too: a program installed on PATH
                // since the opening re-arms it as a commit would.
                let missing = if problems.is_empty() {
                    breaker::runtime_problems(repo, &self.policy, t)?
                } else {
                    Vec::new()
                };
                let fingerprint = breaker::fingerprint(repo, &files, t, &missing)?;
                problems.extend(missing);
                fingerprint
            }
            None => {
                problems.push(format!(
                    "the target branch {} does not exist",
                    self.policy.loop_.target
                ));
                String::new()
            }
        };
        if let Some(why) = self.config_failure.take() {
            problems.push(why);
        }
        if problems.is_empty() && crate::oracle::pin_mismatch(repo, &self.policy)?.is_some() {
            problems.push(format!(
                "the protected policy sections on {} differ from the pin (`git loop init --repin` accepts them)",
                self.policy.loop_.target
            ));
        }
        match b.state.as_str() {
            "paused" => {}
            _ if !problems.is_empty() => {
                let reason = problems.join("; ");
                let same =
                    b.state == "open" && b.class.as_deref() == Some("config") && b.reason == reason;
                if !same {
                    b = Breaker {
                        state: "open".into(),
                        class: Some("config".into()),
                        reason,
                        since: Some(now),
                        fingerprint: Some(fingerprint),
                        ..Breaker::closed()
                    };
                    let _ = writeln!(self.say, "breaker open: {}", b.reason);
                }
            }
            "open"
                if b.class.as_deref() == Some("config")
                    && b.fingerprint.as_deref() != Some(fingerprint.as_str()) =>
            {
                b.state = "half_open".into();
                b.probes_passed = 0;
                b.reason = "the policy or a runtime file changed; probing".into();
                let _ = writeln!(self.say, "breaker half-open: the fix is committed; probing");
            }
            "open"
                if b.class.as_deref() != Some("config")
                    && b.open_until.is_none_or(|at| at <= now) =>
            {
                b.state = "half_open".into();
                b.probes_passed = 0;
                b.reason = format!("{}; probing", b.reason);
            }
            _ => {}
        }
        // Results since the last check.
        if self.infra_failures > 0 {
            b.failures += self.infra_failures;
            self.infra_failures = 0;
            self.successes = 0;
            if b.state == "half_open" || b.failures >= self.policy.breaker.failures {
                b = Breaker {
                    state: "open".into(),
                    class: Some("transient".into()),
                    failures: b.failures,
                    reason: format!("{} consecutive infrastructure failures", b.failures),
                    since: Some(now),
                    open_until: Some(now.plus(self.policy.breaker.open_for)),
                    ..Breaker::closed()
                };
                let _ = writeln!(self.say, "breaker open: {}", b.reason);
            }
        } else if self.successes > 0 {
            b.failures = 0;
            if b.state == "half_open" {
                b.probes_passed += self.successes;
                if b.probes_passed >= self.policy.breaker.probes {
                    b = Breaker::closed();
                    let _ = writeln!(self.say, "breaker closed");
                }
            }
            self.successes = 0;
        }
        if b != before {
            breaker::write(repo, tip, &b)?;
        }
        Ok(b)
    }

    /// Claims and starts what can run, in dispatch order. Returns how many it started. While
    /// the breaker is half-open, one task at a time probes.
    fn dispatch(
        &mut self,
        repo: &Repo,
        store: &Store<'_>,
        listed: &[crate::store::Listed],
        probing: bool,
    ) -> Result<usize> {
        let workers = if probing {
            1
        } else {
            self.opts
                .workers
                .unwrap_or(self.policy.loop_.workers)
                .max(1) as usize
        };

        if self.active.len() >= workers {
            return Ok(0);
        }
        let tasks: Vec<&Task> = listed.iter().filter_map(|l| l.task.as_ref().ok()).collect();
        let tips: HashMap<&str, gix::ObjectId> = listed
            .iter()
            .filter_map(|l| Some((l.id.as_str(), l.tip?)))
            .collect();
        let graph = Graph::new(tasks.iter().copied());
        let leased = lease::ids(repo)?;
        let now = Timestamp::now();
        // Busy groups: this runner's active tasks, and tasks another holder is running.
        let mut busy_mutexes: Vec<String> = self
            .active
            .values()
            .filter_map(|a| a.mutex.clone())
            .chain(
                tasks
                    .iter()
                    .filter(|t| t.state == State::Running)
                    .filter_map(|t| t.mutex.clone()),
            )
            .collect();
        let mut candidates: Vec<&Task> = tasks
            .iter()
            .copied()
            .filter(|t| self.opts.batch.as_ref().is_none_or(|b| &t.batch == b))
            .filter(|t| !leased.contains(&t.id) && !self.active.contains_key(&t.id))
            .filter(|t| match t.state {
                State::AwaitingJudge => true,
                State::Promoting => t.next_at.is_none_or(|at| at <= now),
                _ => graph.is_runnable(t, now),
            })
            .collect();
        // Finish what is furthest along first, then the runnable set in dispatch order.
        crate::graph::sort_dispatch_order(&mut candidates);
        candidates.sort_by_key(|t| match t.state {
            State::Promoting => 0,
            State::AwaitingJudge => 1,
            _ => 2,
        });
        let mut started = 0;
        for task in candidates {
            if self.active.len() >= workers {
                break;
            }
            if let Some(m) = &task.mutex
                && busy_mutexes.contains(m)
            {
                continue;
            }
            let Some(tip) = tips.get(task.id.as_str()).copied() else {
                continue;
            };
            let Some(job) = self.claim(repo, store, task, tip)? else {
                continue;
            };
            if let Some(m) = &task.mutex {
                busy_mutexes.push(m.clone());
            }
            let _ = writeln!(
                self.say,
                "{}: {} ({}, attempt {})",
                short(&task.id),
                job.purpose,
                task.state,
                if job.purpose == "agent" {
                    task.attempts + 1
                } else {
                    task.attempts
                }
            );
            let log = (job.purpose == "agent")
                .then(|| crate::agent::log_path(repo.common_dir(), &task.id, task.attempts + 1));
            self.active.insert(
                task.id.clone(),
                Active {
                    mutex: task.mutex.clone(),
                    started: Instant::now(),
                    log,
                },
            );
            let tx = self.done_tx.clone();
            std::thread::Builder::new()
                .name(format!("task-{}", short(&task.id)))
                .spawn(move || {
                    let result = worker::work(&job);
                    let _ = tx.send((job.id.clone(), result));
                })
                .context("starting a worker")?;
            started += 1;
        }
        if started > 0 {
            self.beat.tasks = self.active.keys().cloned().collect();
            self.heartbeat(repo, "dispatch", "work")?;
        }
        Ok(started)
    }

    /// One ref transaction: the task from what we saw to its next state, and its lease created
    /// only if absent. A lost race is not an error: `None`.
    fn claim(
        &self,
        repo: &Repo,
        store: &Store<'_>,
        seen: &Task,
        tip: gix::ObjectId,
    ) -> Result<Option<worker::Job>> {
        let Ok(stored) = store.load(&seen.id) else {
            return Ok(None);
        };
        if stored.commit != tip {
            return Ok(None); // It moved since we looked: another claimant, or a person.
        }
        let run = format!("{:013}", Timestamp::now().0 / 1000);
        let purpose = match seen.state {
            State::AwaitingJudge => "judge",
            State::Promoting => "promote",
            _ => "agent",
        };
        let mut task = stored.task.clone();
        let message = if purpose == "agent" {
            let from = task.state_label();
            task.attempts += 1;
            task.next_at = None;
            task.set_state(State::Running, None, None);
            format!(
                "{from} -> running: leased by {} (attempt {})",
                self.id, task.attempts
            )
        } else {
            format!("{}: leased by {} to {purpose}", task.state_label(), self.id)
        };
        let lease = Lease::new(&task.id, &self.id, &run, purpose, self.policy.lease.ttl);
        let mut edit = Edit::new(message);
        edit.also = vec![Cas::Create {
            name: lease_ref(&task.id),
            new: lease.commit(repo)?,
        }];
        Ok(store.apply(&stored, task, edit)?.map(|t| worker::Job {
            workdir: self.workdir.clone(),
            policy: self.policy.clone(),
            runner: self.id.clone(),
            id: t.id,
            run,
            purpose: purpose.to_string(),
            stop: std::sync::Arc::clone(&self.stop),
        }))
    }

    /// Backlog first: what dead holders left is taken back (see [`recover`]); heartbeats of
    /// dead runners are cleared.
    fn recover(&mut self, repo: &Repo) -> Result<()> {
        // Heartbeats of runners of this host that are gone (stopped, or killed) are history.
        for r in repo.refs_under(RUNNER_REFS)? {
            let (Some(tip), id) = (r.id, &r.name[RUNNER_REFS.len()..]) else {
                continue;
            };
            if id == self.id {
                continue;
            }
            if let Ok(b) = crate::record::read::<Heartbeat>(repo, tip, HEARTBEAT)
                && b.host == self.beat.host
                && !crate::process::alive(b.pid, b.pid_start.as_deref())
            {
                repo.cas(&[Cas::Delete {
                    name: r.name.clone(),
                    old: tip,
                }])?;
            }
        }
        // Leases taken while recovering carry their own holder name: the runner renews the
        // leases of its own id, and must never keep one of these alive by mistake.
        recover(repo, &format!("{}-recover", self.id), self.say)
    }

    /// Tasks whose attempts ran out get another round after the cool-off, or go to a person
    /// after `retry.escalate_after` rounds.
    /// Returns whether it changed any task.
    fn rearm_cooled_off(
        &mut self,
        store: &Store<'_>,
        listed: &[crate::store::Listed],
    ) -> Result<bool> {
        let now = Timestamp::now();
        let escalate_after = self.policy.retry.escalate_after;
        let mut changed = false;
        for l in listed {
            let Ok(t) = &l.task else { continue };
            let due = t.state == State::Blocked
                && t.reason.as_deref() == Some(reason::ATTEMPTS_EXHAUSTED)
                && t.next_at.is_none_or(|at| at <= now);
            if !due {
                continue;
            }
            store.update(&t.id, |t| {
                if t.state != State::Blocked {
                    return Ok(Edit::new("unchanged"));
                }
                if t.rounds >= escalate_after {
                    t.set_state(
                        State::HumanGated,
                        Some(reason::ESCALATED),
                        Some(format!(
                            "{} rounds of attempts failed; a person must look",
                            t.rounds
                        )),
                    );
                    return Ok(Edit::new(
                        "blocked -> human_gated: escalated after the cool-off",
                    ));
                }
                t.attempts = 0;
                t.next_at = None;
                t.set_state(State::Ready, None, None);
                Ok(Edit::new(format!(
                    "blocked -> ready: cool-off over (round {})",
                    t.rounds + 1
                )))
            })?;
            changed = true;
        }
        Ok(changed)
    }

    /// Renews the leases of the tasks this runner's workers hold. A lease in this runner's name
    /// whose task no worker holds is left over — its release failed, or a `git pack-refs --auto`
    /// of someone else's git brought it back after it was deleted (see [`crate::maintenance`]) —
    /// and is deleted, by compare-and-swap on the value seen, instead of kept alive for ever.
    fn renew_leases(&mut self, repo: &Repo) -> Result<()> {
        for (id, tip, lease) in lease::all(repo)? {
            let Ok(l) = lease else { continue };
            if l.runner != self.id {
                continue;
            }
            if self.active.contains_key(&id) {
                lease::renew(repo, tip, &l, self.policy.lease.ttl)?;
            } else if repo.cas(&[Cas::Delete {
                name: lease_ref(&id),
                old: tip,
            }])? == crate::git::CasOutcome::Applied
            {
                tracing::warn!("deleted a left-over lease of task {}", short(&id));
            }
        }
        Ok(())
    }

    fn heartbeat(&mut self, repo: &Repo, phase: &str, next: &str) -> Result<()> {
        let latest = self
            .active
            .values()
            .filter_map(|a| std::fs::metadata(a.log.as_ref()?).ok()?.modified().ok())
            .max();
        if let Some(t) = latest.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()) {
            self.beat.last_output = Some(Timestamp(t.as_micros() as i64));
        }
        self.beat.phase = phase.to_string();
        self.beat.next_action = next.to_string();
        self.beat.updated = Timestamp::now();
        let name = format!("{RUNNER_REFS}{}", self.id);
        let new = crate::record::write(
            repo,
            &format!("runner: {phase}"),
            HEARTBEAT,
            &self.beat,
            None,
            &[],
        )?;
        let edit = match repo.read_ref(&name)? {
            Some(old) => Cas::Update { name, old, new },
            None => Cas::Create { name, new },
        };
        repo.cas(&[edit])?;
        self.last_beat = Instant::now();
        Ok(())
    }

    fn finish(&mut self, repo: &Repo) -> Result<Finish> {
        // No worker runs: whatever lease still carries this runner's name is left over.
        self.renew_leases(repo)?;
        let store = Store::new(repo);
        let unfinished =
            crate::oracle::unfinished(repo, &self.policy, &store, self.opts.batch.as_deref())?;
        self.beat.tasks.clear();
        let next = if unfinished.is_empty() {
            "none: the batch is done"
        } else {
            "none: nothing can progress"
        };
        self.heartbeat(repo, "stopped", next)?;
        Ok(if unfinished.is_empty() {
            Finish::Done
        } else {
            Finish::Stuck(unfinished)
        })
    }
}

/// Takes back what dead or expired holders left (see [`crate::reaper`]): their agents' groups
/// are killed, their worktrees' uncommitted work saved to rescue refs and the worktrees removed,
/// running tasks requeued; a task being judged or promoted keeps its state for the next runner.
/// One line per reclaim goes to `say`; `holder` names the leases the reaper takes meanwhile.
pub fn recover(repo: &Repo, holder: &str, say: &mut dyn Write) -> Result<()> {
    let mut opts = crate::reaper::Options::new(false);
    opts.holder = holder.to_string();
    let report = match crate::reaper::reap(repo, &opts) {
        Ok(report) => report,
        Err(e) => {
            // What is left is left for the next recovery or `git loop reap`; work goes on.
            writeln!(say, "recovery stopped part way: {e:#}")?;
            return Ok(());
        }
    };
    for r in &report.reaped {
        let what = r.task.as_deref().map_or(r.kind, short);
        writeln!(say, "{what}: recovered: {}; {}", r.why, r.did.join("; "))?;
    }
    for f in &report.failed {
        writeln!(say, "{}: could not recover: {}", short(&f.task), f.why)?;
    }
    Ok(())
}

/// The earliest time a waiting task becomes runnable (a retry, a quota wait, a cool-off), if
/// any task is waiting on a timer.
fn next_timer(listed: &[crate::store::Listed], batch: Option<&str>) -> Option<Timestamp> {
    let tasks: Vec<&Task> = listed.iter().filter_map(|l| l.task.as_ref().ok()).collect();
    let graph = Graph::new(tasks.iter().copied());
    tasks
        .iter()
        .filter(|t| batch.is_none_or(|b| t.batch == b))
        .filter(|t| {
            let timed = matches!(
                t.state,
                State::Ready | State::NeedsRework | State::QuotaWait | State::Promoting
            ) || (t.state == State::Blocked
                && t.reason.as_deref() == Some(reason::ATTEMPTS_EXHAUSTED));
            timed && graph.deps_done(t)
        })
        .filter_map(|t| t.next_at)
        .min()
}

/// Takes the runner lock; a second runner gets `busy` naming the holder.
fn take_lock(repo: &Repo) -> Result<std::fs::File> {
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
                        .map(|b| b.phase)
                })
                .unwrap_or_else(|| "unknown".into());
            let who = match holder {
                Some(h) => format!(
                    "host {}, pid {}, phase {phase} (runner {})",
                    h.host, h.pid, h.runner
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

fn write_lock_holder(repo: &Repo, beat: &Heartbeat) -> Result<()> {
    let path = repo.common_dir().join("loop").join("runner.holder");
    std::fs::write(&path, toml::to_string(beat)?)
        .with_context(|| format!("writing {}", path.display()))
}

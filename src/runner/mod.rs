//! The runner (SPEC §5): one per repository, under an OS lock. It recovers what dead holders
//! left, then dispatches the runnable set in order — up to `loop.workers` at once, never two
//! tasks of one mutex group — each claimed by one ref transaction and carried by a worker
//! thread through agent, judge and promotion.
//!
//! The loop is driven by events: workers report their phases and results over a channel,
//! signals arrive on it too, and in between the loop sleeps until the earliest of the next
//! timer (a backoff, a quota wait, a cool-off, the breaker's half-open), the heartbeat due,
//! and its next look at the refs for new work. The heartbeat is written when the runner's
//! phase or next action changes (settled for [`heartbeat::SETTLE`], so that a burst of changes is one
//! write) and every `lease.heartbeat`, never more often. The policy, runtime files and pin
//! are checked again when the target's tip, the policy file, the pin or the breaker change,
//! and at every heartbeat — not on every pass.

mod attempt;
mod heartbeat;
pub mod worker;
mod worktree;

pub use heartbeat::{Heartbeat, Offline, Phase, heartbeats};

use crate::ids::short;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gix::ObjectId;

use crate::breaker::{self, Breaker, Cause, Observed};
use crate::error::{Class, LoopError};
use crate::git::{Cas, Repo};
use crate::graph::Graph;
use crate::lease::{self, Lease, Purpose};
use crate::policy::Policy;
use crate::refs;
use crate::store::{Edit, Store};
use crate::task::machine::{self, Actor, Budget, Event};
use crate::task::{Reason, State, Task};
use crate::time::Timestamp;

/// How often the runner looks at the refs for work it was not told about (new tasks, a
/// resume, another process's change). A look reads refs; it writes nothing.
const LOOK: Duration = Duration::from_secs(1);

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

/// What reaches the runner's loop.
pub enum Msg {
    /// A worker went on to another phase with its task.
    Phase { id: String, phase: Phase },
    /// A worker is done with its task: where the task ended up, or what failed.
    Finished { id: String, result: Result<String> },
    /// SIGTERM or SIGINT.
    Signal,
}

struct Active {
    mutex: Option<String>,
    started: Instant,
    phase: Phase,
    /// The agent's log file, for the heartbeat's last output time.
    log: Option<PathBuf>,
}

/// What the last look at the configuration depended on: when none of it changed, the policy,
/// runtime files and pin are not read again until the next heartbeat.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    target: Option<ObjectId>,
    policy_file: Option<crate::git::FileIdentity>,
    pin: Option<ObjectId>,
    breaker: Option<ObjectId>,
}

struct Runner<'a> {
    workdir: PathBuf,
    repo: Repo,
    policy: Policy,
    opts: &'a Options,
    id: String,
    beats: heartbeat::Beats,
    active: HashMap<String, Active>,
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
    say: &'a mut dyn Write,
    /// A config failure a worker met, for the breaker.
    config_failure: Option<String>,
    /// Successes and infrastructure failures since the last breaker check.
    successes: u32,
    infra_failures: u32,
    /// The configuration problems and fingerprint found by the last full check, what it
    /// depended on, and when it ran.
    observed: Observed,
    seen: Option<Seen>,
    checked_at: Instant,
    /// Set by SIGTERM (or SIGINT): stop dispatching, end the running agents, exit.
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// With a shared remote (SPEC §13): when its loop state was last fetched, and since when
    /// (and why) it cannot be reached.
    synced: Option<Instant>,
    /// When the leases of other clones were last looked at (see [`Runner::reap_lapsed`]).
    reaped: Option<Instant>,
    offline: Option<(Timestamp, String)>,
    /// The allowed signers of tasks (`[trust]`), as the pin and target it was read at have it.
    trust: Option<TrustSeen>,
}

/// The `[trust]` signers of the finish line at one pin and target tip.
struct TrustSeen {
    pin: Option<ObjectId>,
    target: Option<ObjectId>,
    signers: Option<crate::trust::Signers>,
}

/// Runs the loop in the repository of `workdir` until `--once` has nothing left to do (or for
/// ever). Progress lines go to `say`.
pub fn run(workdir: &Path, policy: Policy, opts: &Options, say: &mut dyn Write) -> Result<Finish> {
    let repo = Repo::discover(workdir)?;
    repo.share_through(policy.loop_.remote.clone(), policy.loop_.remote_timeout);
    let _lock = heartbeat::take_lock(&repo)?;
    let id = format!(
        "{}-{}-{:04x}",
        crate::process::host(),
        std::process::id(),
        crate::rand::u64() as u16
    );
    let (tx, rx) = mpsc::channel();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let signals = forward_signals(&tx, &stop)?;
    // What agents run in, said once: `bwrap` asked for and missing stops the runner here.
    let sandbox = crate::sandbox::Sandbox::for_policy(&repo, &policy)?;
    if let crate::sandbox::Sandbox::None { why } = &sandbox {
        // Said loudly when it is not what the policy asked for.
        if sandbox.is_off_by_policy() {
            tracing::info!("agents run unsandboxed: {why}");
        } else {
            tracing::warn!("agents run unsandboxed: {why}");
        }
    }
    let beats = heartbeat::Beats::new(&id, policy.lease.heartbeat, &sandbox);
    let mut runner = Runner {
        workdir: workdir.to_path_buf(),
        repo,
        policy,
        opts,
        beats,
        id,
        active: HashMap::new(),
        tx,
        rx,
        say,
        config_failure: None,
        successes: 0,
        infra_failures: 0,
        observed: Observed::default(),
        seen: None,
        checked_at: Instant::now(),
        stop,
        synced: None,
        reaped: None,
        offline: None,
        trust: None,
    };
    heartbeat::write_lock_holder(&runner.repo, &runner.beats.beat)?;
    // A runner sharing a remote starts from the remote's state.
    runner.sync()?;
    runner.say_beat(Phase::Recover, "recover", None, true)?;
    runner.recover()?;
    let finish = runner.main_loop();
    signals.close();
    heartbeat::Offline::clear(&runner.repo);
    finish
}

/// Turns SIGTERM and SIGINT into a [`Msg::Signal`] on the runner's channel (waking its loop)
/// and the stop flag the workers watch.
fn forward_signals(
    tx: &mpsc::Sender<Msg>,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<signal_hook::iterator::Handle> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("handling signals")?;
    let handle = signals.handle();
    let (tx, stop) = (tx.clone(), std::sync::Arc::clone(stop));
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for _ in signals.forever() {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
                let _ = tx.send(Msg::Signal);
            }
        })
        .context("starting the signal thread")?;
    Ok(handle)
}

impl Runner<'_> {
    fn stopping(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn main_loop(&mut self) -> Result<Finish> {
        let mut wake = Instant::now();
        loop {
            // Sleep until something happens or something is due.
            let wait = wake.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(msg) => self.handle(msg),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            while let Ok(msg) = self.rx.try_recv() {
                self.handle(msg);
            }
            if self.stopping() {
                return self.shut_down();
            }
            self.beats.beat.iteration += 1;
            let online = self.sync()?;
            if online {
                self.reap_lapsed()?;
            }
            // (A renewal cannot reach a remote that a sync could not: tried again after the
            // next sync that does, not on every pass.)
            if online && self.beats.due() {
                self.tolerate_offline(|r| r.renew_leases())?;
            }
            // One listing of the backlog per pass, read again only after this loop itself
            // changed a task: claims are compare-and-swaps on the tips listed, so a task
            // changed meanwhile by someone else is only a lost claim.
            let mut listed = Store::new(&self.repo).list()?;
            if self.rearm(&listed)? {
                listed = Store::new(&self.repo).list()?;
            }
            let breaker = self.check_breaker()?;
            // Nothing new is claimed while the shared remote cannot be reached: a claim
            // counts only once the remote has it.
            let dispatched = if breaker.admits() && online {
                self.dispatch(&listed, breaker.state == breaker::State::HalfOpen)?
            } else {
                0
            };
            let timer = next_timer(&listed, self.opts.batch.as_deref());
            let idle = self.active.is_empty() && dispatched == 0;
            if idle && !breaker.admits() {
                let said = breaker.describe();
                if self.opts.once {
                    let stop = match (breaker.state, breaker.class) {
                        // Nothing can progress until a person fixes the configuration.
                        (_, Some(Cause::Config)) => Some(
                            LoopError::new(
                                Class::Config,
                                format!("the breaker is open: {}", breaker.reason),
                            )
                            .with_hint("fix it and commit; the breaker re-arms by itself"),
                        ),
                        (breaker::State::Paused, _) => Some(
                            LoopError::new(
                                Class::Breaker,
                                format!("the loop is paused: {}", breaker.reason),
                            )
                            .with_hint("`git loop resume` releases it"),
                        ),
                        (_, Some(Cause::Unreadable)) => Some(
                            LoopError::new(Class::Breaker, breaker.reason.clone())
                                .with_hint("`git loop resume` writes a closed breaker over it"),
                        ),
                        _ => None,
                    };
                    if let Some(e) = stop {
                        self.say_beat(Phase::Stopped, &said, None, true)?;
                        return Err(e.into());
                    }
                }
                self.say_beat(Phase::BreakerOpen, &said, breaker.open_until, false)?;
            } else if idle && self.offline.is_some() {
                // Nothing to say that could reach the remote; `status` reads the offline note.
            } else if idle {
                match timer {
                    Some(at) => {
                        self.say_beat(Phase::Backoff, "wait for the next timer", Some(at), false)?
                    }
                    None if self.opts.once => return self.finish(),
                    None => self.say_beat(Phase::Idle, "wait for work", None, false)?,
                }
            } else {
                let phase = self
                    .active
                    .values()
                    .map(|a| a.phase)
                    .max()
                    .unwrap_or(Phase::Dispatch);
                self.say_beat(phase, "work", None, false)?;
            }
            wake = self.next_wake(timer, breaker.open_until);
        }
    }

    /// The earliest of: the next look at the refs, the next timer, the heartbeat due, the
    /// settled heartbeat of a changed phase, the breaker's half-open.
    fn next_wake(&self, timer: Option<Timestamp>, half_open: Option<Timestamp>) -> Instant {
        let now = Instant::now();
        let stamp = Timestamp::now();
        let until =
            |at: Timestamp| now + Duration::from_micros(u64::try_from(at.0 - stamp.0).unwrap_or(0));
        let mut wake = now + LOOK;
        // Only a timer still to come wakes the loop early. One already past that this pass
        // did not act on waits for something else — a worker to finish (a message), the
        // breaker, a mutex group — which the next look, or the message, brings.
        for at in [timer, half_open]
            .into_iter()
            .flatten()
            .filter(|at| *at > stamp)
        {
            wake = wake.min(until(at));
        }
        // A heartbeat due while the remote is out of reach waits for the sync that finds it.
        let wake = match self.offline {
            None => wake.min(self.beats.next_due()),
            Some(_) => wake,
        };
        match self.synced {
            Some(at) if self.repo.shared_remote().is_some() => {
                wake.min(at + self.policy.loop_.sync)
            }
            _ => wake,
        }
    }

    /// Brings the view of the shared remote's loop state up to date when `loop.sync` has
    /// passed since the last fetch. Whether the remote was reachable the last time it was
    /// asked: while it is not, running agents go on and nothing new is claimed.
    fn sync(&mut self) -> Result<bool> {
        let Some(remote) = self.repo.shared_remote().map(str::to_string) else {
            return Ok(true);
        };
        if self
            .synced
            .is_some_and(|at| at.elapsed() < self.policy.loop_.sync)
        {
            return Ok(self.offline.is_none());
        }
        self.synced = Some(Instant::now());
        match crate::git::shared::sync(&self.repo, &remote) {
            Ok(done) => {
                self.back_online(&remote);
                if done.pulled + done.pushed > 0 {
                    tracing::debug!(
                        "synced with {remote}: {} pulled, {} pushed",
                        done.pulled,
                        done.pushed
                    );
                }
                Ok(true)
            }
            Err(e) if crate::error::class_of(&e) == Class::Transient => {
                self.went_offline(&remote, &e);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The shared remote `remote` failed to answer: said once, and in `status` (the
    /// heartbeat cannot be written until it answers).
    fn went_offline(&mut self, remote: &str, e: &anyhow::Error) {
        if self.offline.is_some() {
            return;
        }
        tracing::warn!("the remote {remote} cannot be reached: {e:#}");
        let since = Timestamp::now();
        let why = format!("{e:#}");
        let note = heartbeat::Offline {
            runner: self.id.clone(),
            remote: remote.to_string(),
            since,
            why: why.lines().next().unwrap_or_default().to_string(),
            tasks: self.active.keys().cloned().collect(),
        };
        if let Err(e) = note.write(&self.repo) {
            tracing::debug!("writing the offline note: {e:#}");
        }
        self.offline = Some((since, why));
    }

    /// The shared remote answered a sync.
    fn back_online(&mut self, remote: &str) {
        let Some((since, _)) = self.offline.take() else {
            return;
        };
        // What was seen of other hosts' leases meanwhile is no evidence that they lapsed.
        crate::lease::forget_seen();
        heartbeat::Offline::clear(&self.repo);
        let _ = writeln!(
            self.say,
            "the remote {remote} answers again (unreachable since {})",
            since.to_rfc3339()
        );
    }

    /// With a shared remote, the runners of other clones hold leases too, and one may die or
    /// lose the remote at any time: every `loop.sync`, just after a sync, the leases that
    /// lapsed (see [`crate::lease::Lease::lapsed`]: another host's only once this process saw
    /// it unchanged for its term) are taken back, their tasks requeued or left for the next
    /// judge, as the start-up recovery does. Never this runner's own, and never while the
    /// remote cannot be reached: a view that cannot be refreshed shows every lease unchanged.
    fn reap_lapsed(&mut self) -> Result<()> {
        if self.repo.shared_remote().is_none()
            || self
                .reaped
                .is_some_and(|at| at.elapsed() < self.policy.loop_.sync)
        {
            return Ok(());
        }
        self.reaped = Some(Instant::now());
        let mut opts = crate::reaper::Options::new(false);
        opts.holder = format!("{}-recover", self.id);
        opts.leases_only = true;
        opts.spare = Some(self.id.clone());
        reap_saying(&self.repo, &opts, self.say)
    }

    /// Runs `step`; with a shared remote that cannot be reached, its `transient` failure is
    /// said and waited out rather than ending the runner.
    fn tolerate_offline(&mut self, step: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        match step(self) {
            Err(e)
                if self.repo.shared_remote().is_some()
                    && crate::error::class_of(&e) == Class::Transient =>
            {
                let remote = self.repo.shared_remote().unwrap_or_default().to_string();
                self.went_offline(&remote, &e);
                Ok(())
            }
            r => r,
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Phase { id, phase } => {
                if let Some(a) = self.active.get_mut(&id) {
                    a.phase = phase;
                }
            }
            Msg::Finished { id, result } => self.finished(&id, result),
            Msg::Signal => {}
        }
    }

    /// Stop: dispatch nothing more; the workers see the flag, end their agents' groups and
    /// requeue their tasks (releasing their leases); then a final heartbeat.
    fn shut_down(&mut self) -> Result<Finish> {
        let _ = writeln!(self.say, "stopping: {} task(s) running", self.active.len());
        self.say_beat(Phase::Stopping, "end the running agents", None, true)?;
        while !self.active.is_empty() {
            match self.rx.recv_timeout(Duration::from_secs(1)) {
                Ok(msg) => self.handle(msg),
                Err(mpsc::RecvTimeoutError::Timeout) => self.renew_leases()?,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        self.renew_leases()?;
        self.beats.beat.tasks.clear();
        self.say_beat(Phase::Stopped, "none: stopped", None, true)?;
        Ok(Finish::Stopped)
    }

    fn finished(&mut self, id: &str, result: Result<String>) {
        if let Some(a) = self.active.remove(id) {
            self.beats.beat.tasks = self.active.keys().cloned().collect();
            let secs = a.started.elapsed().as_secs_f64();
            match result {
                Ok(state) => {
                    self.beats.beat.failure_streak = 0;
                    self.successes += 1;
                    let _ = writeln!(self.say, "{}: {state} ({secs:.1}s)", short(id));
                }
                Err(e) => {
                    self.beats.beat.failure_streak += 1;
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

    /// The breaker after this pass's observations (see [`Breaker::next`]): the policy and the
    /// runtime files checked against the target — again only when what they depend on moved,
    /// or at the heartbeat — workers' config and infrastructure failures, probes, and time.
    fn check_breaker(&mut self) -> Result<Breaker> {
        let (tip, before) = breaker::read(&self.repo)?;
        let seen = self.seen_now(tip)?;
        let full = self.seen.as_ref() != Some(&seen)
            || self.checked_at.elapsed() >= self.policy.lease.heartbeat
            || self.config_failure.is_some();
        if full {
            self.observed = self.observe()?;
            self.seen = Some(seen);
            self.checked_at = Instant::now();
        }
        let mut observed = self.observed.clone();
        if let Some(why) = self.config_failure.take() {
            observed.problems.push(why);
        }
        observed.failures = std::mem::take(&mut self.infra_failures);
        observed.successes = std::mem::take(&mut self.successes);
        let after = before.next(&observed, &self.policy.breaker, Timestamp::now());
        if after != before {
            let _ = writeln!(self.say, "breaker: {}", after.describe());
            breaker::write(&self.repo, tip, &after)?;
            // What this runner wrote is what it has seen.
            if let Some(s) = &mut self.seen {
                s.breaker = self.repo.read_ref(refs::BREAKER)?;
            }
        }
        Ok(after)
    }

    /// What a full look at the configuration depends on.
    fn seen_now(&self, breaker: Option<ObjectId>) -> Result<Seen> {
        Ok(Seen {
            target: self
                .repo
                .last_seen_tip(
                    self.policy.loop_.remote.as_deref(),
                    &self.policy.loop_.target,
                )?
                .map(|(tip, _)| tip),
            policy_file: crate::git::file_identity(&Policy::path_in(&self.workdir)),
            pin: self.repo.read_ref(refs::ORACLE)?,
            breaker,
        })
    }

    /// The configuration problems now (see [`breaker::observe`]), with the policy as it is
    /// now when it can be read.
    fn observe(&mut self) -> Result<Observed> {
        let (policy, observed) = breaker::observe(&self.repo, &self.workdir, &self.policy)?;
        if let Some(p) = policy {
            self.beats.every = p.lease.heartbeat;
            self.policy = p;
        }
        Ok(observed)
    }

    /// Claims and starts what can run, in dispatch order. Returns how many it started. While
    /// the breaker is half-open, one task at a time probes.
    fn dispatch(&mut self, listed: &[crate::store::Listed], probing: bool) -> Result<usize> {
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
        let leased = lease::ids(&self.repo)?;
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
        let signers = if candidates.is_empty() {
            None
        } else {
            match self.signers() {
                Ok(s) => s,
                Err(e) => {
                    // The breaker opens on a finish line that cannot be read; until then,
                    // nothing is given out unchecked.
                    tracing::warn!(
                        "cannot read the finish line (for its [trust] signers), claiming \
                         nothing until it can: {e:#}"
                    );
                    return Ok(0);
                }
            }
        };
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
            if let Some(signers) = &signers {
                match self.trusted(signers, task, tip) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        // One task's history must not stop the runner: it waits.
                        tracing::warn!("{}: checking its signature: {e:#}", short(&task.id));
                        continue;
                    }
                }
            }
            let deps_done = graph.deps_done(task);
            let Some(mut job) = self.claim(task, tip, deps_done)? else {
                continue;
            };
            job.signers = signers.clone();
            if let Some(m) = &task.mutex {
                busy_mutexes.push(m.clone());
            }
            let attempt = match job.purpose {
                Purpose::Agent => task.attempts + 1,
                _ => task.attempts,
            };
            let _ = writeln!(
                self.say,
                "{}: {} ({}, attempt {attempt})",
                short(&task.id),
                job.purpose,
                task.state,
            );
            let (phase, log) = match job.purpose {
                Purpose::Agent => (
                    Phase::Agent,
                    Some(crate::agent::log_path(
                        self.repo.common_dir(),
                        &task.id,
                        &job.run,
                    )),
                ),
                Purpose::Judge => (Phase::Judge, None),
                _ => (Phase::Promote, None),
            };
            self.active.insert(
                task.id.clone(),
                Active {
                    mutex: task.mutex.clone(),
                    started: Instant::now(),
                    phase,
                    log,
                },
            );
            std::thread::Builder::new()
                .name(format!("task-{}", short(&task.id)))
                .spawn(move || {
                    let result = worker::work(&job);
                    let _ = job.report.send(Msg::Finished {
                        id: job.id.clone(),
                        result,
                    });
                })
                .context("starting a worker")?;
            started += 1;
        }
        if started > 0 {
            self.beats.beat.tasks = self.active.keys().cloned().collect();
        }
        Ok(started)
    }

    /// The allowed signers of tasks the pinned finish line names (`[trust] signers`), read
    /// again when the pin or the target moved.
    fn signers(&mut self) -> Result<Option<crate::trust::Signers>> {
        let pin = self.repo.read_ref(refs::ORACLE)?;
        let target = self
            .repo
            .last_seen_tip(
                self.policy.loop_.remote.as_deref(),
                &self.policy.loop_.target,
            )?
            .map(|(tip, _)| tip);
        if let Some(t) = &self.trust
            && t.pin == pin
            && t.target == target
        {
            return Ok(t.signers.clone());
        }
        let frozen = crate::finish_line::frozen(&self.repo, &self.policy)?;
        let signers = crate::trust::signers(&self.repo, &frozen)?;
        self.trust = Some(TrustSeen {
            pin,
            target,
            signers: signers.clone(),
        });
        Ok(signers)
    }

    /// Whether `task`, at `tip`, may be given out under `signers`; one that may not is held
    /// `blocked: untrusted` (by compare-and-swap from `tip`: a task that moved meanwhile is
    /// looked at again on the next pass).
    fn trusted(
        &mut self,
        signers: &crate::trust::Signers,
        task: &Task,
        tip: ObjectId,
    ) -> Result<bool> {
        let why = match crate::trust::verify(&self.repo, signers, &task.id, tip)? {
            crate::trust::Verdict::Trusted { .. } => return Ok(true),
            crate::trust::Verdict::Untrusted(why) => why,
        };
        let store = Store::new(&self.repo);
        let Ok(stored) = store.load(&task.id) else {
            return Ok(false);
        };
        if stored.commit != tip {
            return Ok(false);
        }
        let event = Event::Untrusted { why };
        let actor = Actor::Runner(self.id.clone());
        let Ok(t) = machine::apply(
            &stored.task,
            &event,
            &actor,
            &Budget::from(&self.policy),
            machine::Clock::now(),
        ) else {
            return Ok(false);
        };
        let said = t.message.clone();
        if store
            .apply(&stored, t.task, Edit::new(t.message))?
            .is_some()
        {
            let _ = writeln!(self.say, "{}: {said}", short(&task.id));
        }
        Ok(false)
    }

    /// One ref transaction: the task from what we saw, and its lease created only if absent.
    /// For an agent run the task moves to `running` (the state machine's lease); a task to
    /// judge or promote keeps its state, and the transaction requires it unchanged. A lost
    /// race is not an error: `None`.
    fn claim(&self, seen: &Task, tip: ObjectId, deps_done: bool) -> Result<Option<worker::Job>> {
        let repo = &self.repo;
        let store = Store::new(repo);
        let run = format!("{:013}", Timestamp::now().0 / 1000);
        let purpose = match seen.state {
            State::AwaitingJudge => Purpose::Judge,
            State::Promoting => Purpose::Promote,
            _ => Purpose::Agent,
        };
        let lease = Lease::new(&seen.id, &self.id, &run, purpose, self.policy.lease.ttl);
        let take = Cas::Create {
            name: refs::lease(&seen.id),
            new: lease.commit(repo)?,
        };
        let claimed = if purpose == Purpose::Agent {
            let Ok(stored) = store.load(&seen.id) else {
                return Ok(None);
            };
            if stored.commit != tip {
                return Ok(None); // It moved since we looked: another claimant, or a person.
            }
            let event = Event::Lease { deps_done };
            let actor = Actor::Runner(self.id.clone());
            match machine::apply(
                &stored.task,
                &event,
                &actor,
                &Budget::from(&self.policy),
                machine::Clock::now(),
            ) {
                Ok(t) => {
                    let mut edit = Edit::new(t.message);
                    edit.also = vec![take];
                    store.apply(&stored, t.task, edit)?.is_some()
                }
                Err(_) => false,
            }
        } else {
            repo.cas(&[
                take,
                Cas::Verify {
                    name: refs::task(&seen.id),
                    old: tip,
                },
            ])? == crate::git::CasOutcome::Applied
        };
        Ok(claimed.then(|| worker::Job {
            workdir: self.workdir.clone(),
            policy: self.policy.clone(),
            runner: self.id.clone(),
            id: seen.id.clone(),
            run,
            purpose,
            stop: std::sync::Arc::clone(&self.stop),
            report: self.tx.clone(),
            signers: None,
        }))
    }

    /// Backlog first: what dead holders left is taken back (see [`recover`]); heartbeats of
    /// dead runners are cleared.
    fn recover(&mut self) -> Result<()> {
        let repo = &self.repo;
        // Heartbeats of runners of this host that are gone (stopped, or killed) are history.
        for r in repo.refs_under(refs::RUNNERS)? {
            let (Some(tip), id) = (r.id, &r.name[refs::RUNNERS.len()..]) else {
                continue;
            };
            if id == self.id {
                continue;
            }
            if let Ok(b) = heartbeat::read(repo, tip)
                && b.holder.is_dead()
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

    /// Tasks that wait on something the runner watches, moved on by the state machine:
    /// attempts that ran out get another round after the cool-off (or go to a person), and a
    /// refused promotion is judged again once its branch has a new commit. Returns whether it
    /// changed any task.
    fn rearm(&mut self, listed: &[crate::store::Listed]) -> Result<bool> {
        let now = Timestamp::now();
        let store = Store::new(&self.repo);
        let actor = Actor::Runner(self.id.clone());
        let budget = Budget::from(&self.policy);
        let mut changed = false;
        for l in listed {
            let Ok(t) = &l.task else { continue };
            let event = if t.is(State::Blocked, Reason::AttemptsExhausted)
                && t.next_at.is_none_or(|at| at <= now)
            {
                Event::CooledOff
            } else if t.is(State::Blocked, Reason::PromotionRefused)
                && let Some(approved) = &t.approved
                && let Some(head) = self.repo.read_ref(&refs::branch(&t.branch))?
                && crate::git::oid(approved).ok() != Some(head)
            {
                Event::BranchMoved {
                    detail: format!(
                        "{} has new commits since its promotion was refused",
                        t.branch
                    ),
                }
            } else {
                continue;
            };
            match store.transition(&t.id, &event, &actor, &budget, |_, _| Ok(())) {
                Ok(moved) => changed |= moved.changed,
                Err(e) if machine::Refusal::of(&e).is_some() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(changed)
    }

    /// Renews the leases of the tasks this runner's workers hold. A lease in this runner's name
    /// whose task no worker holds is left over — its release failed, or a `git pack-refs --auto`
    /// of someone else's git brought it back after it was deleted (see [`crate::maintenance`]) —
    /// and is deleted, by compare-and-swap on the value seen, instead of kept alive for ever.
    fn renew_leases(&mut self) -> Result<()> {
        for (id, tip, lease) in lease::all(&self.repo)? {
            let Ok(l) = lease else { continue };
            if l.runner != self.id {
                continue;
            }
            if self.active.contains_key(&id) {
                lease::renew(&self.repo, tip, &l, self.policy.lease.ttl)?;
            } else if self.repo.cas(&[Cas::Delete {
                name: refs::lease(&id),
                old: tip,
            }])? == crate::git::CasOutcome::Applied
            {
                tracing::warn!("deleted a left-over lease of task {}", short(&id));
            }
        }
        Ok(())
    }

    /// Says what the runner does now (see [`heartbeat::Beats::say`]), with the time its
    /// agents last wrote output.
    fn say_beat(
        &mut self,
        phase: Phase,
        next: &str,
        next_at: Option<Timestamp>,
        now: bool,
    ) -> Result<()> {
        let latest = self
            .active
            .values()
            .filter_map(|a| std::fs::metadata(a.log.as_ref()?).ok()?.modified().ok())
            .max();
        if let Some(t) = latest.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()) {
            self.beats.beat.last_output = Some(Timestamp(t.as_micros() as i64));
        }
        if self.offline.is_some() {
            // A heartbeat counts once the remote has it: written after the next sync that
            // reaches it (the runner says on stderr since when it waits).
            return Ok(());
        }
        self.tolerate_offline(|r| r.beats.say(&r.repo, phase, next, next_at, now))
    }

    fn finish(&mut self) -> Result<Finish> {
        // No worker runs: whatever lease still carries this runner's name is left over.
        self.renew_leases()?;
        let store = Store::new(&self.repo);
        let unfinished = crate::oracle::unfinished(
            &self.repo,
            &self.policy,
            &store,
            self.opts.batch.as_deref(),
        )?;
        self.beats.beat.tasks.clear();
        let next = if unfinished.is_empty() {
            "none: the batch is done"
        } else {
            "none: nothing can progress"
        };
        self.say_beat(Phase::Stopped, next, None, true)?;
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
    reap_saying(repo, &opts, say)
}

/// Runs a reap with `opts`, saying what it took back.
fn reap_saying(repo: &Repo, opts: &crate::reaper::Options, say: &mut dyn Write) -> Result<()> {
    let report = match crate::reaper::reap(repo, opts) {
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
            ) || t.is(State::Blocked, Reason::AttemptsExhausted);
            timed && graph.deps_done(t)
        })
        .filter_map(|t| t.next_at)
        .min()
}

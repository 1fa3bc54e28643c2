//! The reaper (SPEC §10): takes back what crashed work left behind — leases past their expiry
//! or held by a dead process on this host, loop worktrees that no lease covers, running tasks
//! that lost their lease, stale worktree metadata — and loses nothing doing it.
//!
//! Every reclaim starts by taking the task's lease itself, by compare-and-swap: from the exact
//! lease it judged dead or expired, or created where there was none. So a reaper never acts
//! on a lease that was renewed in the meantime, two reapers never reclaim the same thing, and
//! no runner can claim a task while its worktree is being saved and removed. A reaper killed
//! half way leaves a lease held by a dead process, which the next reap takes back.

use crate::ids::short;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use gix::ObjectId;
use serde::Serialize;

use crate::git::cli::Git;
use crate::git::{Cas, CasOutcome, Repo};
use crate::lease::{self, Lease};
use crate::process::{Signal, group_alive, signal_group};
use crate::promote::promotion_lock_path;
use crate::refs;
use crate::rescue::save_checkout;
use crate::store::{Edit, Store};
use crate::task::State;
use crate::task::machine::{Actor, Budget, Event, Failure, Refusal};
use crate::time::Timestamp;

/// How long a reaper holds a lease it took: long enough to save and remove one worktree.
const REAP_TTL: Duration = Duration::from_secs(600);

/// How a reap runs.
pub struct Options {
    /// Say what would be done, change nothing.
    pub dry_run: bool,
    /// The name the reaper's own leases carry (a runner recovering uses its own id).
    pub holder: String,
    /// Leases alone: the lapsed ones are taken back, nothing else is looked at (a running
    /// runner's look at the leases of other clones, SPEC §13).
    pub leases_only: bool,
    /// The runner whose leases are never taken back here: the one reaping, whose workers
    /// hold them.
    pub spare: Option<String>,
}

impl Options {
    pub fn new(dry_run: bool) -> Options {
        Options {
            dry_run,
            holder: format!("reap-{}-{}", crate::process::host(), std::process::id()),
            leases_only: false,
            spare: None,
        }
    }
}

/// One thing reclaimed (or, with `--dry-run`, that would be).
#[derive(Debug, Serialize)]
pub struct Reaped {
    /// lease, worktree, task or prune
    pub kind: &'static str,
    /// The task's full id, when the thing belongs to one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Why it was reclaimed.
    pub why: String,
    /// What was done (or would be): kills, rescue refs, removals, the task's new state.
    pub did: Vec<String>,
}

/// Something left alone, and why.
#[derive(Debug, Serialize)]
pub struct Kept {
    pub kind: &'static str,
    pub task: String,
    pub why: String,
}

/// What a reap did.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub reaped: Vec<Reaped>,
    pub kept: Vec<Kept>,
    /// Reclaims that failed part way; what they saved is kept, the next reap carries on.
    pub failed: Vec<Kept>,
}

/// Reaps the repository: leases first, then running tasks without a lease, then loop worktrees
/// without a lease, then `git worktree prune`.
pub fn reap(repo: &Repo, opts: &Options) -> Result<Report> {
    let dir = repo
        .workdir()
        .map_or_else(|| repo.common_dir().to_path_buf(), Path::to_path_buf);
    // The budgets of a requeue: the policy's, or the defaults where it cannot be read (a
    // reap must work whatever state the policy is in).
    let budget = repo
        .workdir()
        .and_then(|w| crate::policy::Policy::load(w).ok().flatten())
        .map_or_else(Budget::default, |p| Budget::from(&p));
    let reaper = Reaper {
        repo,
        budget,
        store: Store::new(repo),
        git: Git::new(&dir, !repo.has_identity()).locking_worktrees(repo.common_dir()),
        opts,
        worktrees: repo.common_dir().join("loop").join("worktrees"),
        tmp: repo.common_dir().join("loop").join("tmp"),
        report: Report {
            dry_run: opts.dry_run,
            ..Report::default()
        },
    };
    reaper.run()
}

struct Reaper<'a> {
    repo: &'a Repo,
    budget: Budget,
    store: Store<'a>,
    git: Git,
    opts: &'a Options,
    /// `<common-dir>/loop/worktrees`
    worktrees: PathBuf,
    /// `<common-dir>/loop/tmp`: temporary checkouts of gates and verify, `<short>-<random>`
    tmp: PathBuf,
    report: Report,
}

impl Reaper<'_> {
    fn run(mut self) -> Result<Report> {
        if self.opts.leases_only {
            self.leases()?;
            return Ok(self.report);
        }
        self.git_locks();
        self.leases()?;
        self.scratch_left()?;
        self.unleased_running()?;
        self.orphaned_worktrees()?;
        self.prune()?;
        Ok(self.report)
    }

    /// Lock files a killed git left (see [`Repo::stale_git_locks`]): they fail every git that
    /// needs the file — a fetch into a remote-tracking ref, an index update — until removed.
    fn git_locks(&mut self) {
        for path in self.repo.stale_git_locks(crate::git::STALE_GIT_LOCK) {
            let why = format!(
                "a git that is gone left it (older than {})",
                crate::time::format_duration(crate::git::STALE_GIT_LOCK)
            );
            let did = if self.opts.dry_run {
                format!("would remove {}", path.display())
            } else {
                match std::fs::remove_file(&path) {
                    Ok(()) => format!("removed {}", path.display()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        self.report.failed.push(Kept {
                            kind: "lock",
                            task: path.display().to_string(),
                            why: format!("could not remove it: {e}"),
                        });
                        continue;
                    }
                }
            };
            self.report.reaped.push(Reaped {
                kind: "lock",
                task: None,
                why,
                did: vec![did],
            });
        }
    }

    /// Leases past expiry (on another host's: seen unchanged for a term), or whose holder
    /// died on this host.
    fn leases(&mut self) -> Result<()> {
        let now = Timestamp::now();
        for (id, tip, lease) in lease::all(self.repo)? {
            let lease = match lease {
                Ok(l) => l,
                Err(e) => {
                    self.keep("lease", &id, format!("unreadable, left for a person: {e}"));
                    continue;
                }
            };
            if self.opts.spare.as_ref() == Some(&lease.runner) {
                continue;
            }
            let why = if lease.holder_dead() {
                format!(
                    "its holder {} ({}) died",
                    lease.runner,
                    lease.holder.describe()
                )
            } else if lease.lapsed(tip, now) {
                if lease.holder.is_here() {
                    format!("it expired at {}", lease.expires.to_rfc3339())
                } else {
                    format!(
                        "its holder on {} has not renewed it for a term, as seen from here",
                        lease.holder.host
                    )
                }
            } else {
                self.keep(
                    "lease",
                    &id,
                    format!(
                        "held by {} ({}) for {} until {}",
                        lease.runner,
                        lease.holder.describe(),
                        lease.purpose,
                        lease.expires.to_rfc3339()
                    ),
                );
                continue;
            };
            if self.opts.dry_run {
                self.would("lease", &id, why);
                continue;
            }
            let Some(mine) = self.take_over(&id, Some(tip), Some(&lease))? else {
                self.keep("lease", &id, "it changed hands while reaping".to_string());
                continue;
            };
            self.reclaim("lease", &id, mine, Some(&lease), why);
        }
        Ok(())
    }

    /// Scratch directories of sandboxed runs whose runner died: a run's is taken (its objects,
    /// and its task's branch — forward, else into a rescue ref), a gate's dropped. Nothing is
    /// touched while a live lease holds the task, whichever run it is.
    fn scratch_left(&mut self) -> Result<()> {
        let leftovers = crate::sandbox::leftovers(self.repo);
        if leftovers.is_empty() {
            return Ok(());
        }
        let now = Timestamp::now();
        let held: Vec<String> = lease::all(self.repo)?
            .into_iter()
            .filter(|(_, tip, l)| match l {
                Ok(l) => !l.lapsed(*tip, now),
                // A lease that does not read is the lease reaping's to judge: keep off.
                Err(_) => true,
            })
            .map(|(id, _, _)| id)
            .collect();
        let ids = self.store.ids()?;
        for left in leftovers {
            let task = match &left {
                crate::sandbox::Leftover::Run { task, .. } => Some(task.clone()),
                crate::sandbox::Leftover::Gate { tag, .. } => {
                    ids.iter().find(|id| crate::ids::short(id) == *tag).cloned()
                }
            };
            // A gate's scratch whose task is not known is anyone's: kept while any lease lives.
            let busy = match &task {
                Some(t) => held.contains(t),
                None => !held.is_empty(),
            };
            if busy {
                continue;
            }
            let dir = left.dir().to_path_buf();
            let (why, would) = match &left {
                crate::sandbox::Leftover::Run { run, .. } => (
                    format!("the scratch of sandboxed run {run}, whose runner died"),
                    "would take its work and remove",
                ),
                crate::sandbox::Leftover::Gate { .. } => (
                    "a sandboxed gate's scratch, whose judge died".to_string(),
                    "would remove",
                ),
            };
            if self.opts.dry_run {
                self.report.reaped.push(Reaped {
                    kind: "scratch",
                    task,
                    why,
                    did: vec![format!("{would} {}", dir.display())],
                });
                continue;
            }
            match left.take(self.repo) {
                Ok(did) => {
                    self.report.reaped.push(Reaped {
                        kind: "scratch",
                        task,
                        why,
                        did,
                    });
                }
                Err(e) => {
                    let id = task.unwrap_or_default();
                    self.fail("scratch", &id, &[], &e)
                }
            }
        }
        Ok(())
    }

    /// Tasks in `running` that no lease covers (a lease deleted by hand, or lost in transit).
    fn unleased_running(&mut self) -> Result<()> {
        let leased = self.leased()?;
        // A dry run writes nothing, not even the listing's cache.
        let listed = if self.opts.dry_run {
            self.store.list_read_only()?
        } else {
            self.store.list()?
        };
        for listed in listed {
            let Ok(task) = listed.task else { continue };
            if task.state != State::Running || leased.contains(&task.id) {
                continue;
            }
            let why = "it is running but no lease covers it".to_string();
            if self.opts.dry_run {
                self.would("task", &task.id, why);
                continue;
            }
            if let Some(mine) = self.take_over(&task.id, None, None)? {
                self.reclaim("task", &task.id, mine, None, why);
            }
        }
        Ok(())
    }

    /// Loop worktrees (and temporary gate checkouts) whose task no lease covers: saved, then
    /// removed.
    fn orphaned_worktrees(&mut self) -> Result<()> {
        let mut names: Vec<String> = dir_names(&self.worktrees);
        for tmp in dir_names(&self.tmp) {
            // Gate checkouts are `<short>-<random>`; anything else there is not git-loop's.
            if let Some((name, _)) = tmp.split_once('-')
                && !name.is_empty()
                && !names.iter().any(|n| n == name)
            {
                names.push(name.to_string());
            }
        }
        names.sort();
        if names.is_empty() {
            return Ok(());
        }
        let ids = self.store.ids()?;
        let leased = self.leased()?;
        for name in names {
            let owner = ids.iter().find(|id| short(id) == name).cloned();
            if owner.as_ref().is_some_and(|id| leased.contains(id)) {
                continue;
            }
            // A dry run has already said what it would do with the worktree of a task whose
            // lease (or unleased run) it takes back: that reclaim clears it. A scratch taken
            // does not: the worktree beside it is still to save.
            if owner.as_ref().is_some_and(|id| {
                self.report
                    .reaped
                    .iter()
                    .any(|r| r.task.as_ref() == Some(id) && matches!(r.kind, "lease" | "task"))
            }) {
                continue;
            }
            let why = match &owner {
                Some(_) => "no lease covers it".to_string(),
                None => "it belongs to no task".to_string(),
            };
            let task = owner.clone().unwrap_or_else(|| name.clone());
            if self.opts.dry_run {
                self.report.reaped.push(Reaped {
                    kind: "worktree",
                    task: owner,
                    why,
                    did: vec![format!(
                        "would save its uncommitted work and remove {}",
                        self.worktrees.join(&name).display()
                    )],
                });
                continue;
            }
            match &owner {
                Some(id) => {
                    // Hold the task while its worktree goes, so that no runner claims it.
                    let Some(mine) = self.take_over(id, None, None)? else {
                        continue;
                    };
                    self.reclaim("worktree", id, mine, None, why);
                }
                None => {
                    // No lease to take: an OS lock keeps a second reap off it.
                    let lock =
                        crate::lockfile::path(self.repo.common_dir(), &format!("reap-{name}"));
                    let Some(_held) = crate::lockfile::try_take(&lock)? else {
                        continue;
                    };
                    let mut did = Vec::new();
                    match self.clear_worktree(&name, &task, &mut did) {
                        Ok(()) if did.is_empty() => {}
                        Ok(()) => self.report.reaped.push(Reaped {
                            kind: "worktree",
                            task: None,
                            why,
                            did,
                        }),
                        Err(e) => self.fail("worktree", &task, &did, &e),
                    }
                }
            }
        }
        Ok(())
    }

    /// Worktrees whose add was cut short (see [`Repo::interrupted_adds`]), then
    /// `git worktree prune`: metadata of worktrees whose directory is gone.
    fn prune(&mut self) -> Result<()> {
        let (args, removed, pruned): (&[&str], _, _) = if self.opts.dry_run {
            (
                &["worktree", "prune", "--dry-run", "--verbose"],
                "would remove",
                "would prune",
            )
        } else {
            (&["worktree", "prune", "--verbose"], "removed", "pruned")
        };
        for path in self.repo.interrupted_adds(!self.opts.dry_run)? {
            self.report.reaped.push(Reaped {
                kind: "prune",
                task: None,
                why: "its add was interrupted".to_string(),
                did: vec![format!(
                    "{removed} the half-made worktree {}",
                    path.display()
                )],
            });
        }
        let out = self.git.output(args)?;
        if !out.status.success() {
            anyhow::bail!(
                "git worktree prune failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for line in text.lines().filter(|l| l.starts_with("Removing ")) {
            let line = line.trim_start_matches("Removing ");
            let (what, why) = line.split_once(": ").unwrap_or((line, "stale"));
            self.report.reaped.push(Reaped {
                kind: "prune",
                task: None,
                why: why.to_string(),
                did: vec![format!("{pruned} the metadata of {what}")],
            });
        }
        Ok(())
    }

    // ---- the steps of one reclaim ---------------------------------------------------------

    /// Takes the lease of `id` for this reaper: from `old` (the lease of `dead`), or created
    /// where there is none. The dead holder's process group on this host is carried over, so
    /// that if this reaper dies too, the next one still ends it. `None` when another process
    /// got there first.
    fn take_over(
        &self,
        id: &str,
        old: Option<ObjectId>,
        dead: Option<&Lease>,
    ) -> Result<Option<ObjectId>> {
        let run = dead.map_or("", |l| l.run.as_str());
        let mut lease = Lease::new(id, &self.opts.holder, run, lease::Purpose::Reap, REAP_TTL);
        if let Some(dead) = dead
            && dead.holder.host == lease.holder.host
        {
            lease.pgid = dead.pgid;
            lease.pgid_start = dead.pgid_start.clone();
        }
        let mine = lease.commit(self.repo)?;
        let name = refs::lease(id);
        let edit = match old {
            Some(old) => Cas::Update {
                name,
                old,
                new: mine,
            },
            None => Cas::Create { name, new: mine },
        };
        Ok((self.repo.cas(&[edit])? == CasOutcome::Applied).then_some(mine))
    }

    /// With the lease of `id` held at `mine`: ends the dead holder's agent group, saves and
    /// removes the worktree, then releases the lease, requeueing a running task in the same
    /// transaction. A failure part way still releases the lease, leaving the worktree (and
    /// whatever it holds) for the next run or reap.
    fn reclaim(
        &mut self,
        kind: &'static str,
        id: &str,
        mine: ObjectId,
        dead: Option<&Lease>,
        why: String,
    ) {
        crash_point("taken");
        let mut did = Vec::new();
        if let Some(group) = dead.and_then(Lease::agent_group)
            && group_alive(group)
        {
            signal_group(group, Signal::Kill);
            let until = Instant::now() + Duration::from_secs(2);
            while group_alive(group) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            did.push(format!("killed process group {group}"));
        }
        // A `git loop promote` of the task uses its worktree and gate checkouts: hold its
        // promotion lock while they are cleared, or leave them to it.
        let cleared = match crate::lockfile::try_take(&promotion_lock_path(self.repo, id)) {
            Ok(Some(_held)) => self.clear_worktree(short(id), id, &mut did),
            Ok(None) => {
                did.push("kept the worktree: a promotion of the task is running".to_string());
                Ok(())
            }
            Err(e) => Err(e),
        };
        let nothing_done = did.is_empty();
        let released = self.release(id, mine, dead, &why, &did);
        if released.is_err() {
            // Never leave the task held by this reaper: the next runner or reap carries on.
            let _ = self.repo.cas(&[Cas::Delete {
                name: refs::lease(id),
                old: mine,
            }]);
        }
        match (cleared, released) {
            // A worktree another reap cleared first: nothing happened here worth reporting.
            (Ok(()), Ok(None)) if kind == "worktree" && nothing_done => {}
            (Ok(()), Ok(state)) => {
                did.extend(state);
                self.report.reaped.push(Reaped {
                    kind,
                    task: Some(id.to_string()),
                    why,
                    did,
                });
            }
            (Err(e), _) | (Ok(()), Err(e)) => self.fail(kind, id, &did, &e),
        }
    }

    /// Saves what the worktree `<loop worktrees>/<name>` holds — commits on a detached HEAD,
    /// uncommitted and untracked-not-ignored files — to rescue refs of `task`, then removes it,
    /// and the task's temporary gate checkouts (what a gate leaves there is its own output).
    fn clear_worktree(&self, name: &str, task: &str, did: &mut Vec<String>) -> Result<()> {
        let prefix = format!("{name}-");
        for tmp in dir_names(&self.tmp) {
            if tmp.starts_with(&prefix) {
                self.remove(&self.tmp.join(&tmp))?;
                did.push(format!(
                    "removed the gate checkout {}",
                    self.tmp.join(tmp).display()
                ));
            }
        }
        // A sandboxed run's work is in its scratch (its commits, the branch where it left it):
        // taken first, so that the checkout is saved against the branch as the run left it.
        for left in crate::sandbox::leftovers(self.repo) {
            let ours = match &left {
                crate::sandbox::Leftover::Run { task: of, .. } => of == task,
                crate::sandbox::Leftover::Gate { tag, .. } => tag == name,
            };
            if ours {
                did.extend(left.take(self.repo)?);
            }
        }
        let path = self.worktrees.join(name);
        // What equals the task branch is kept there already.
        let base = match self.store.load(task) {
            Ok(stored) => self.repo.read_ref(&refs::branch(&stored.task.branch))?,
            Err(_) => None,
        };
        did.extend(save_checkout(self.repo, &self.git, &path, task, base)?);
        if path.exists() {
            self.remove(&path)?;
            did.push(format!("removed the worktree {}", path.display()));
        }
        Ok(())
    }

    /// Removes a worktree (see [`crate::rescue::remove_worktree`]).
    fn remove(&self, path: &Path) -> Result<()> {
        crate::rescue::remove_worktree(self.repo, path).map(|_| ())
    }

    /// Deletes the lease held at `mine`; a running task goes back to `ready` in the same
    /// transaction. Returns what happened to the task.
    fn release(
        &self,
        id: &str,
        mine: ObjectId,
        dead: Option<&Lease>,
        why: &str,
        did: &[String],
    ) -> Result<Option<String>> {
        let delete = Cas::Delete {
            name: refs::lease(id),
            old: mine,
        };
        if self.repo.read_ref(&refs::task(id))?.is_none() {
            self.repo.cas(&[delete])?;
            return Ok(None);
        }
        let saved: String = did
            .iter()
            .filter(|d| d.starts_with("saved"))
            .map(|d| format!("; {d}"))
            .collect();
        let holder = dead.map_or_else(|| "none".to_string(), |l| l.runner.clone());
        let stored = self.store.load(id)?;
        // A judging or a promotion whose holder died counts: a gate or a verify command that
        // kills its runner must not be run again for ever.
        let counted = match (dead, stored.task.state) {
            (Some(_), State::AwaitingJudge) => Some((
                Event::Interrupted {
                    why: format!("{why}; holder {holder}{saved}"),
                },
                "left it awaiting a judge (the interruption counts)",
            )),
            (Some(_), State::Promoting) => Some((
                Event::PromotionFailed {
                    signature: crate::retry::signature(
                        "transient",
                        "promote",
                        "its holder died during the promotion",
                    ),
                    line: format!("its holder died during the promotion ({why}; holder {holder})"),
                },
                "left it promoting (the interruption counts)",
            )),
            _ => None,
        };
        if let Some((event, said)) = counted {
            let actor = Actor::Reaper(self.opts.holder.clone());
            match self
                .store
                .transition(id, &event, &actor, &self.budget, |_, edit| {
                    edit.also = vec![delete.clone()];
                    Ok(())
                }) {
                Ok(m) => {
                    return Ok(Some(
                        if matches!(m.task.state, State::AwaitingJudge | State::Promoting) {
                            said.to_string()
                        } else {
                            format!("the task is {} now", m.task.state_label())
                        },
                    ));
                }
                Err(e) if Refusal::of(&e).is_none() => return Err(e),
                Err(_) => {}
            }
        }
        if stored.task.state != State::Running {
            // The task keeps its state for the next runner: only the lease goes, with a word
            // in the task's history when work was saved (where to find it).
            let next = match stored.task.state {
                State::AwaitingJudge => Some("left it awaiting a judge".to_string()),
                _ => None,
            };
            if saved.is_empty() {
                let outcome = self.repo.cas(&[
                    delete.clone(),
                    Cas::Verify {
                        name: refs::task(id),
                        old: stored.commit,
                    },
                ])?;
                if outcome == CasOutcome::Applied {
                    return Ok(next);
                }
            }
            let noted = self.store.update(id, |t| {
                if t.state == State::Running {
                    return Err(Refusal::withdrawn("it is running again").into());
                }
                let mut edit = Edit::new(format!(
                    "{}: lease taken back by reap ({why}; holder {holder}){saved}",
                    t.state_label()
                ));
                edit.also = vec![delete.clone()];
                Ok(edit)
            });
            match noted {
                Ok(_) => return Ok(next),
                Err(e) if Refusal::of(&e).is_none() => return Err(e),
                Err(_) => {}
            }
        }
        // A run cut short by its runner's death is a failed attempt like any other: it counts
        // toward the budget and waits the backoff (an agent that kills its runner does not
        // get to retry for ever).
        let how = format!("reaped ({why}; holder {holder}){saved}");
        let failure = Failure {
            signature: crate::retry::signature("transient", "runner", &format!("reaped: {why}")),
            summary: format!("requeued by reap: {why}{saved}"),
            context: format!(
                "The previous attempt was cut short: {why}. Uncommitted work of it, if any, is \
                 in a rescue ref."
            ),
            how,
        };
        let event = Event::Failed(failure);
        let actor = Actor::Reaper(self.opts.holder.clone());
        let moved = self
            .store
            .transition(id, &event, &actor, &self.budget, |_, edit| {
                edit.also = vec![delete.clone()];
                Ok(())
            });
        match moved {
            Ok(m) => Ok(Some(format!(
                "requeued the task ({})",
                m.task.state_label()
            ))),
            // Not running any more: only the lease goes.
            Err(e) if Refusal::of(&e).is_some() => {
                self.repo.cas(&[delete])?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    // ---- bookkeeping ----------------------------------------------------------------------

    fn leased(&self) -> Result<std::collections::HashSet<String>> {
        lease::ids(self.repo)
    }

    fn keep(&mut self, kind: &'static str, task: &str, why: String) {
        self.report.kept.push(Kept {
            kind,
            task: task.to_string(),
            why,
        });
    }

    fn would(&mut self, kind: &'static str, task: &str, why: String) {
        self.report.reaped.push(Reaped {
            kind,
            task: Some(task.to_string()),
            why,
            did: vec![
                "would end its agent's process group, save and remove its worktree, and requeue it if running"
                    .to_string(),
            ],
        });
    }

    fn fail(&mut self, kind: &'static str, task: &str, did: &[String], e: &anyhow::Error) {
        let mut why = format!("{e:#}");
        if !did.is_empty() {
            why = format!("{why} (done before: {})", did.join("; "));
        }
        self.report.failed.push(Kept {
            kind,
            task: task.to_string(),
            why,
        });
    }
}

/// Dies by SIGKILL at `point` when `GIT_LOOP_CRASH_AT=reap:<point>`: how the tests prove that
/// a reaper killed half way leaves nothing the next one cannot finish.
fn crash_point(point: &str) {
    crate::promote::crash_at(|| format!("reap:{point}"));
}

/// The names of the entries of `dir` (none if it does not exist).
fn dir_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

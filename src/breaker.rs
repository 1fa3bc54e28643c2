//! The circuit breaker (SPEC §5), `refs/loop/breaker`: while it is open, nothing new is
//! dispatched and no promotion runs. It opens at once on a `config` failure (re-armed by a
//! commit that changes the policy or a runtime file), after `breaker.failures` consecutive
//! infrastructure failures (for `breaker.open_for`, then half-open: `breaker.probes` successes
//! close it), or when a person pauses the loop (until they resume it). Its transitions are
//! [`Breaker::next`], a pure function of what the runner observed; [`read`] is the one way
//! every command reads it.

use anyhow::Result;
use gix::ObjectId;
use serde::{Deserialize, Serialize};

use crate::error::{Class, LoopError};
use crate::git::{Cas, CasOutcome, Repo};
use crate::policy::{BreakerSection, Policy};
use crate::refs;
use crate::time::Timestamp;

const RECORD: &str = "breaker.toml";

/// The breaker's states (SPEC §5 and its appendix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Closed,
    Open,
    /// Probing: one task at a time runs; `breaker.probes` successes close it, a failure opens it.
    HalfOpen,
    /// Held open by a person (`git loop pause`) until `git loop resume`.
    Paused,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::Paused => "paused",
        }
    }
}

/// Why an open breaker opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The configuration is broken: re-armed by a change of the policy or a runtime file.
    Config,
    /// Infrastructure failures in a row: half-open after `breaker.open_for`.
    Transient,
    /// `refs/loop/breaker` cannot be read: open until a person resumes (never written).
    Unreadable,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Config => "config",
            Cause::Transient => "transient",
            Cause::Unreadable => "unreadable",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Breaker {
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<Cause>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    #[serde(default)]
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_until: Option<Timestamp>,
    #[serde(default)]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
    /// For a `config` opening: the fingerprint of the policy and runtime files when it opened;
    /// a different one re-arms the breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(default)]
    pub probes_passed: u32,
}

/// What the runner saw since its last look at the breaker.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// Configuration problems found now (the policy, runtime files, the pin, a worker's
    /// `config` failure); none when everything is in order.
    pub problems: Vec<String>,
    /// The fingerprint of what re-arms a `config` opening ([`fingerprint`]).
    pub fingerprint: String,
    /// Promotion and infrastructure failures since the last look.
    pub failures: u32,
    /// Tasks carried through without such a failure since the last look.
    pub successes: u32,
}

impl Breaker {
    pub fn closed() -> Breaker {
        Breaker {
            state: State::Closed,
            class: None,
            signature: None,
            failures: 0,
            open_until: None,
            reason: String::new(),
            since: None,
            fingerprint: None,
            probes_passed: 0,
        }
    }

    /// Held open by a person until they resume.
    pub fn paused(reason: &str, now: Timestamp) -> Breaker {
        Breaker {
            state: State::Paused,
            reason: reason.to_string(),
            since: Some(now),
            ..Breaker::closed()
        }
    }

    /// What a breaker ref that cannot be read counts as: open, until a person resumes.
    fn unreadable(why: String) -> Breaker {
        Breaker {
            state: State::Open,
            class: Some(Cause::Unreadable),
            reason: format!("refs/loop/breaker is unreadable: {why}"),
            ..Breaker::closed()
        }
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Whether work may be dispatched: closed, or half-open (a probe).
    pub fn admits(&self) -> bool {
        matches!(self.state, State::Closed | State::HalfOpen)
    }

    /// The next breaker, from what the runner observed (SPEC §5). Pure. A paused or
    /// unreadable breaker is a person's to release: nothing observed changes it.
    pub fn next(&self, seen: &Observed, policy: &BreakerSection, now: Timestamp) -> Breaker {
        let mut b = self.clone();
        if b.state == State::Paused || b.class == Some(Cause::Unreadable) {
            return b;
        }
        if !seen.problems.is_empty() {
            let reason = seen.problems.join("; ");
            let same =
                b.state == State::Open && b.class == Some(Cause::Config) && b.reason == reason;
            if !same {
                b = Breaker {
                    state: State::Open,
                    class: Some(Cause::Config),
                    reason,
                    since: Some(now),
                    fingerprint: Some(seen.fingerprint.clone()),
                    ..Breaker::closed()
                };
            }
            return b;
        }
        if b.state == State::Open {
            let rearmed = match b.class {
                Some(Cause::Config) => b.fingerprint.as_deref() != Some(seen.fingerprint.as_str()),
                _ => b.open_until.is_none_or(|at| at <= now),
            };
            if rearmed {
                b.state = State::HalfOpen;
                b.probes_passed = 0;
                b.reason = match b.class {
                    Some(Cause::Config) => {
                        "the policy or a runtime file changed; probing".to_string()
                    }
                    _ => format!("{}; probing", b.reason),
                };
            }
        }
        if seen.failures > 0 {
            b.failures = b.failures.saturating_add(seen.failures);
            if b.state == State::HalfOpen || b.failures >= policy.failures {
                b = Breaker {
                    state: State::Open,
                    class: Some(Cause::Transient),
                    failures: b.failures,
                    reason: format!("{} consecutive infrastructure failures", b.failures),
                    since: Some(now),
                    open_until: Some(now.plus(policy.open_for)),
                    ..Breaker::closed()
                };
            }
        } else if seen.successes > 0 {
            b.failures = 0;
            if b.state == State::HalfOpen {
                b.probes_passed = b.probes_passed.saturating_add(seen.successes);
                if b.probes_passed >= policy.probes {
                    b = Breaker::closed();
                }
            }
        }
        b
    }

    /// One line for people: `open (config) since …: reason; re-armed by …`.
    pub fn describe(&self) -> String {
        match self.state {
            State::Closed => "closed".into(),
            State::Paused => format!(
                "paused by a person: {}; `git loop resume` releases it",
                crate::output::safe(&self.reason, false)
            ),
            State::HalfOpen => format!("half-open (probing): {}", self.reason),
            State::Open => {
                let rearm = match (self.class, self.open_until) {
                    (Some(Cause::Config), _) => {
                        "re-armed by a commit that fixes the policy or a runtime file".to_string()
                    }
                    (Some(Cause::Unreadable), _) => "`git loop resume` closes it".to_string(),
                    (_, Some(at)) => format!("half-opens at {}", at.to_rfc3339()),
                    _ => "`git loop resume` closes it".to_string(),
                };
                format!(
                    "open ({}): {}; {rearm}",
                    self.class.map_or("failures", Cause::as_str),
                    self.reason
                )
            }
        }
    }

    /// Refuses what may not run while the breaker is open or paused (exit 7).
    pub fn refuse_unless_admitting(&self, what: &str) -> Result<()> {
        if self.admits() {
            return Ok(());
        }
        let hint = match (self.state, self.class) {
            (State::Paused, _) => "`git loop resume` releases it",
            (_, Some(Cause::Config)) => {
                "fix what it names and commit; the breaker re-arms by itself (`git loop resume` closes it by hand)"
            }
            _ => "`git loop resume` closes it once the cause is fixed",
        };
        Err(LoopError::new(
            Class::Breaker,
            format!("{what} refused: the breaker is {}", self.describe()),
        )
        .with_hint(hint)
        .into())
    }
}

/// The breaker and the commit it was read from (closed when there is none). A breaker ref
/// that cannot be read counts as open, everywhere: it never silently admits work.
pub fn read(repo: &Repo) -> Result<(Option<ObjectId>, Breaker)> {
    let tip = match repo.ref_target(refs::BREAKER) {
        Ok(crate::git::RefTarget::Missing) => return Ok((None, Breaker::closed())),
        Ok(crate::git::RefTarget::Object(tip)) => tip,
        Ok(crate::git::RefTarget::Symbolic(to)) => {
            return Ok((
                None,
                Breaker::unreadable(format!("it is a symbolic ref to {to}")),
            ));
        }
        Err(e) => return Ok((None, Breaker::unreadable(format!("{e:#}")))),
    };
    match crate::record::read::<Breaker>(repo, tip, RECORD) {
        Ok(b) => Ok((Some(tip), b)),
        Err(why) => Ok((Some(tip), Breaker::unreadable(why))),
    }
}

/// Writes `breaker` for a person (`pause`, `resume`): over the breaker read at `old`, or over
/// one that cannot be read at all. `false` if it changed meanwhile.
pub fn overwrite(
    repo: &Repo,
    old: Option<ObjectId>,
    was: &Breaker,
    breaker: &Breaker,
) -> Result<bool> {
    if was.class == Some(Cause::Unreadable) && old.is_none() {
        let new = crate::record::write(
            repo,
            &format!("breaker: {}", breaker.state.as_str()),
            RECORD,
            breaker,
            None,
            &[],
        )?;
        return Ok(repo.replace_broken_ref(refs::BREAKER, new)? == CasOutcome::Applied);
    }
    write(repo, old, breaker)
}

/// Writes `breaker` over `old` by compare-and-swap; `false` if it changed meanwhile.
pub fn write(repo: &Repo, old: Option<ObjectId>, breaker: &Breaker) -> Result<bool> {
    let new = crate::record::write(
        repo,
        &format!("breaker: {}", breaker.state.as_str()),
        RECORD,
        breaker,
        None,
        &[],
    )?;
    let edit = match old {
        Some(old) => Cas::Update {
            name: refs::BREAKER.into(),
            old,
            new,
        },
        None => Cas::Create {
            name: refs::BREAKER.into(),
            new,
        },
    };
    Ok(repo.cas(&[edit])? == CasOutcome::Applied)
}

/// What the breaker's `config` opening depends on, read now: the policy in `workdir` (a commit
/// may have changed it; `None` when it cannot be read, which is a problem, and `last` goes on
/// being used), every runtime file and program against the target, the pin; and the
/// fingerprint that re-arms an opening.
pub fn observe(
    repo: &Repo,
    workdir: &std::path::Path,
    last: &Policy,
) -> Result<(Option<Policy>, Observed)> {
    let mut problems = Vec::new();
    let read = match Policy::load_required(workdir) {
        Ok(p) => Some(p),
        Err(e) => {
            problems.push(
                format!("{e:#}")
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            );
            None
        }
    };
    let policy = read.as_ref().unwrap_or(last);
    let tip = repo
        .last_seen_tip(policy.loop_.remote.as_deref(), &policy.loop_.target)?
        .map(|(tip, _)| tip);
    // Everything the runtime needs from the target: the manifest and every program run from
    // inside the repository, so committing either re-arms the breaker.
    let mut files = runtime_files(policy, repo.workdir());
    files.push(crate::policy::FILE.to_string());
    let fingerprint = match tip {
        Some(t) => {
            // What is missing is part of the fingerprint too: a program installed on PATH
            // since the opening re-arms it as a commit would.
            let missing = if problems.is_empty() {
                runtime_problems(repo, policy, t)?
            } else {
                Vec::new()
            };
            let mut fingerprint = fingerprint(repo, &files, t, &missing)?;
            // A person's repin re-arms an opening over the finish line.
            if let Some(pin) = repo.read_ref(crate::refs::ORACLE)? {
                fingerprint.push_str(&format!("-{pin}"));
            }
            problems.extend(missing);
            fingerprint
        }
        None => {
            problems.push(format!(
                "the target branch {} does not exist",
                policy.loop_.target
            ));
            String::new()
        }
    };
    // The finish line: a missing pin, or a target whose protected sections or pinned files
    // differ from it, stops everything until a person re-pins.
    if problems.is_empty()
        && let Err(e) = crate::finish_line::frozen(repo, policy)
    {
        let said = crate::error::find(&e).map_or_else(|| format!("{e:#}"), |l| l.message.clone());
        problems.push(said);
    }
    Ok((
        read,
        Observed {
            problems,
            fingerprint,
            ..Observed::default()
        },
    ))
}

/// What the runtime needs that the target does not provide: every runtime-manifest file, and
/// every program path the agent or the gates would run from the repository, must be committed
/// on the target; programs named without a path must be on PATH. One line per problem.
pub fn runtime_problems(repo: &Repo, policy: &Policy, target_tip: ObjectId) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let workdir = repo.workdir().map(std::path::Path::to_path_buf);
    for program in programs(policy) {
        match Program::of(program, workdir.as_deref()) {
            Program::Absolute(path) if !path.exists() => {
                problems.push(format!("the program {program} does not exist"));
            }
            Program::OnPath(name) if crate::process::which(&name).is_none() => {
                problems.push(format!("the program {program} is not on PATH"));
            }
            _ => {}
        }
    }
    for file in runtime_files(policy, workdir.as_deref()) {
        if repo.file_at(target_tip, &file)?.is_some() {
            continue;
        }
        let on_disk = workdir.as_ref().is_some_and(|w| w.join(&file).exists());
        problems.push(if on_disk {
            format!("{file} is not tracked on {}: a fresh checkout would not have it (git add {file} && git commit)", policy.loop_.target)
        } else {
            format!("{file} is missing: the runtime manifest needs it committed on {}", policy.loop_.target)
        });
    }
    Ok(problems)
}

/// The programs the loop runs: the first word of `agent.command`, of each gate command and of
/// `review.command`.
pub fn programs(policy: &Policy) -> impl Iterator<Item = &String> {
    std::iter::once(&policy.agent.command)
        .chain(policy.gate.commands.iter())
        .chain(std::iter::once(&policy.review.command))
        .filter_map(|argv| argv.first())
}

/// Where a program named in the policy is found.
#[derive(Debug, PartialEq, Eq)]
pub enum Program {
    /// It uses a placeholder (`{worktree}/run.sh`): known only when a task runs.
    Placeholder,
    /// A path inside the repository, relative to its root (`/`-separated).
    InRepo(String),
    /// An absolute path outside the repository.
    Absolute(std::path::PathBuf),
    /// A bare name, looked up on PATH.
    OnPath(String),
}

impl Program {
    pub fn of(program: &str, workdir: Option<&std::path::Path>) -> Program {
        if program.contains('{') {
            return Program::Placeholder;
        }
        if !program.contains('/') {
            return Program::OnPath(program.to_string());
        }
        match repo_relative(program, workdir) {
            Some(rel) => Program::InRepo(rel),
            None => Program::Absolute(std::path::PathBuf::from(program)),
        }
    }
}

/// The files the runtime needs committed on the target: the runtime manifest, and every
/// program the loop runs from inside the repository (even when the manifest forgets it).
pub fn runtime_files(policy: &Policy, workdir: Option<&std::path::Path>) -> Vec<String> {
    let mut files: Vec<String> = policy.runtime.manifest.clone();
    for program in programs(policy) {
        if let Program::InRepo(rel) = Program::of(program, workdir)
            && !files.contains(&rel)
        {
            files.push(rel);
        }
    }
    files
}

/// A program path as a path relative to the repository root, if it lies inside it.
fn repo_relative(program: &str, workdir: Option<&std::path::Path>) -> Option<String> {
    let path = std::path::Path::new(program);
    if !path.is_absolute() {
        let rel = program.trim_start_matches("./");
        return (!rel.split('/').any(|c| c == "..")).then(|| rel.to_string());
    }
    let root = workdir?.canonicalize().ok()?;
    let parent = path.parent()?.canonicalize().ok()?;
    let rel = parent.strip_prefix(&root).ok()?.join(path.file_name()?);
    Some(rel.to_string_lossy().into_owned())
}

/// A fingerprint of what re-arms a `config` opening: the policy file and every runtime file as
/// committed on the target, the policy as it is in the working tree, and the runtime problems
/// found (`missing`).
pub fn fingerprint(
    repo: &Repo,
    policy_files: &[String],
    target_tip: ObjectId,
    missing: &[String],
) -> Result<String> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    for file in policy_files {
        feed(file.as_bytes());
        feed(&repo.file_at(target_tip, file)?.unwrap_or_default());
    }
    if let Some(w) = repo.workdir() {
        feed(&std::fs::read(w.join(crate::policy::FILE)).unwrap_or_default());
    }
    for problem in missing {
        feed(problem.as_bytes());
    }
    Ok(format!("{h:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy() -> BreakerSection {
        BreakerSection {
            failures: 3,
            open_for: Duration::from_secs(60),
            probes: 1,
        }
    }

    fn seen(problems: &[&str], fingerprint: &str, failures: u32, successes: u32) -> Observed {
        Observed {
            problems: problems.iter().map(|p| p.to_string()).collect(),
            fingerprint: fingerprint.to_string(),
            failures,
            successes,
        }
    }

    const T0: Timestamp = Timestamp(1_800_000_000_000_000);

    #[test]
    fn a_config_problem_opens_at_once_and_a_changed_fingerprint_rearms() {
        let p = policy();
        let open = Breaker::closed().next(&seen(&["x is missing"], "f1", 0, 0), &p, T0);
        assert_eq!((open.state, open.class), (State::Open, Some(Cause::Config)));
        // The same problem again changes nothing (no write).
        assert_eq!(
            open.next(&seen(&["x is missing"], "f1", 0, 0), &p, T0),
            open
        );
        // Fixed but nothing re-armed it: the same fingerprint keeps it open.
        assert_eq!(open.next(&seen(&[], "f1", 0, 0), &p, T0).state, State::Open);
        let probing = open.next(&seen(&[], "f2", 0, 0), &p, T0);
        assert_eq!(probing.state, State::HalfOpen);
        assert!(probing.admits());
        let closed = probing.next(&seen(&[], "f2", 0, 1), &p, T0);
        assert_eq!(closed, Breaker::closed());
    }

    #[test]
    fn failures_in_a_row_open_it_for_open_for_then_a_probe_decides() {
        let p = policy();
        let b = Breaker::closed().next(&seen(&[], "f", 2, 0), &p, T0);
        assert_eq!((b.state, b.failures), (State::Closed, 2));
        let reset = b.next(&seen(&[], "f", 0, 1), &p, T0);
        assert_eq!(reset.failures, 0, "a success resets the count");
        let open = b.next(&seen(&[], "f", 1, 0), &p, T0);
        assert_eq!(
            (open.state, open.class),
            (State::Open, Some(Cause::Transient))
        );
        assert!(!open.admits());
        let early = T0.plus(Duration::from_secs(30));
        assert_eq!(
            open.next(&seen(&[], "f", 0, 0), &p, early).state,
            State::Open
        );
        let later = T0.plus(Duration::from_secs(61));
        let probing = open.next(&seen(&[], "f", 0, 0), &p, later);
        assert_eq!(probing.state, State::HalfOpen);
        let again = probing.next(&seen(&[], "f", 1, 0), &p, later);
        assert_eq!(again.state, State::Open, "a failed probe opens it again");
        assert!(again.open_until > Some(later));
    }

    #[test]
    fn a_person_pause_and_an_unreadable_breaker_are_left_as_they_are() {
        let p = policy();
        let paused = Breaker::paused("deploy freeze\n---\n\"quoted\"", T0);
        for s in [
            seen(&["x is missing"], "f", 0, 0),
            seen(&[], "f", 10, 0),
            seen(&[], "f", 0, 10),
        ] {
            assert_eq!(paused.next(&s, &p, T0), paused);
            let unreadable = Breaker::unreadable("garbage".into());
            assert_eq!(unreadable.next(&s, &p, T0), unreadable);
            assert!(!unreadable.admits());
        }
        assert!(paused.refuse_unless_admitting("x").is_err());
        assert!(Breaker::closed().refuse_unless_admitting("x").is_ok());
    }
}

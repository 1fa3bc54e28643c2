//! `git loop doctor` (SPEC §8): preflight checks of everything the loop relies on. Each check
//! looks, never touches — no ref, no file, not even the task cache is written — and says what
//! it saw and how to fix it. The checks return data; `commands::doctor` prints them.
//!
//! Checks are written for a fresh clone, where drift shows: a file that exists only in one
//! person's work tree, a policy edited but not committed, a hook never installed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use gix::ObjectId;
use serde::Serialize;

use crate::breaker::{self, Program};
use crate::error::Class;
use crate::git::Repo;
use crate::git::cli::{Git, MIN_GIT, parse_version};
use crate::hooks::{self, HookState};
use crate::policy::{self, Policy};
use crate::time::Timestamp;

/// What a check concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One check: its stable name, what it concluded, the class of failure it is about, what it
/// saw (one or more lines) and how to fix it.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub class: &'static str,
    pub saw: String,
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, class: Class, saw: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Ok,
            class: class.name(),
            saw: saw.into(),
            fix: None,
        }
    }

    fn warn(
        name: &'static str,
        class: Class,
        saw: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            status: Status::Warn,
            fix: Some(fix.into()),
            ..Check::ok(name, class, saw)
        }
    }

    fn fail(
        name: &'static str,
        class: Class,
        saw: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            status: Status::Fail,
            fix: Some(fix.into()),
            ..Check::ok(name, class, saw)
        }
    }

    /// A check that needs something an earlier check found missing.
    fn not_checked(name: &'static str, class: Class, why: &str, fix: &str) -> Check {
        Check::warn(name, class, format!("not checked: {why}"), fix)
    }
}

/// How doctor runs.
pub struct Options {
    /// Do not contact the remote.
    pub offline: bool,
    /// How long the remote has to answer.
    pub remote_timeout: Duration,
}

/// Runs every check from `cwd`, in a stable order.
pub fn run(cwd: &Path, opts: &Options) -> Vec<Check> {
    let mut checks = vec![git_version(cwd)];
    let repo = match Repo::discover(cwd) {
        Ok(repo) => repo,
        Err(e) => {
            checks.push(unopened(cwd, &e));
            return checks;
        }
    };
    checks.push(repository(&repo));
    checks.push(Check::ok(
        "ref-storage",
        Class::Config,
        "refs are stored as files",
    ));
    let cx = Cx::new(&repo, opts);
    checks.extend(cx.checks());
    checks
}

/// The target as the loop sees it: the remote's tracking branch when a remote is set and has
/// been fetched, else the local branch.
struct Target {
    tip: ObjectId,
    label: String,
}

/// A check that needs the repository open.
/// A check: on the repository alone, or on the valid policy too (without one it is reported
/// as not checked).
enum CheckFn<'r> {
    Repo(fn(&Cx<'r>) -> Result<Check>),
    Policy(fn(&Cx<'r>, &Policy) -> Result<Check>),
}

struct Cx<'r> {
    repo: &'r Repo,
    workdir: Option<PathBuf>,
    git: Git,
    opts: &'r Options,
    /// The policy, or why there is no valid one.
    policy: std::result::Result<Policy, PolicyProblem>,
    target: Option<Target>,
}

enum PolicyProblem {
    NoWorkTree,
    Missing,
    Invalid { text: String, hint: Option<String> },
}

impl<'r> Cx<'r> {
    fn new(repo: &'r Repo, opts: &'r Options) -> Cx<'r> {
        let workdir = repo.workdir().map(Path::to_path_buf);
        let git = Git::new(
            workdir.clone().unwrap_or_else(|| repo.common_dir().into()),
            false,
        );
        let policy = match &workdir {
            None => Err(PolicyProblem::NoWorkTree),
            Some(dir) => match Policy::load(dir) {
                Ok(Some(p)) => Ok(p),
                Ok(None) => Err(PolicyProblem::Missing),
                Err(e) => Err(PolicyProblem::Invalid {
                    text: crate::error::find(&e)
                        .map_or_else(|| format!("{e:#}"), |l| l.message.clone()),
                    hint: crate::error::find(&e).and_then(|l| l.hint.clone()),
                }),
            },
        };
        let target = policy
            .as_ref()
            .ok()
            .and_then(|p| target(repo, p).ok().flatten());
        Cx {
            repo,
            workdir,
            git,
            opts,
            policy,
            target,
        }
    }

    /// Every check that needs the repository open, in order. A check that cannot finish fails
    /// with the error that stopped it.
    fn checks(&self) -> Vec<Check> {
        use CheckFn::{Policy as P, Repo as R};
        let named: [(&'static str, Class, CheckFn<'r>); 16] = [
            ("policy-committed", Class::Config, P(Self::policy_committed)),
            ("runtime-files", Class::Config, P(Self::runtime_files)),
            ("programs", Class::Config, P(Self::programs)),
            ("sandbox", Class::Config, P(Self::sandbox)),
            ("hooks", Class::Config, R(Self::hooks)),
            ("remote", Class::Config, P(Self::remote)),
            ("worktrees", Class::Transient, R(Self::worktrees)),
            ("branch-locks", Class::Transient, R(Self::branch_locks)),
            ("git-locks", Class::Transient, R(Self::git_locks)),
            ("leases", Class::Transient, R(Self::leases)),
            ("runner", Class::Transient, R(Self::runner)),
            ("breaker", Class::Breaker, R(Self::breaker)),
            ("oracle-pin", Class::Config, P(Self::oracle_pin)),
            ("trust", Class::Config, P(Self::trust)),
            ("tasks", Class::Config, R(Self::tasks)),
            ("macos-privacy", Class::Config, R(Self::macos_privacy)),
        ];
        let mut out = vec![self.policy_check()];
        for (name, class, check) in named {
            let checked = match (check, &self.policy) {
                (R(check), _) => check(self),
                (P(check), Ok(policy)) => check(self, policy),
                (P(_), Err(_)) => Ok(Check::not_checked(
                    name,
                    class,
                    "there is no valid policy.toml",
                    "fix what the `policy` check reports first",
                )),
            };
            out.push(checked.unwrap_or_else(|e| {
                Check::fail(
                    name,
                    class,
                    format!("could not check: {e:#}"),
                    "see the error; `git loop -v doctor` logs more",
                )
            }));
        }
        out
    }

    fn policy_check(&self) -> Check {
        const NAME: &str = "policy";
        match &self.policy {
            Ok(p) => Check::ok(
                NAME,
                Class::Config,
                format!(
                    "policy.toml is valid: target {}, {}",
                    p.loop_.target,
                    p.loop_
                        .remote
                        .as_ref()
                        .map_or("no remote (a local-only loop)".to_string(), |r| format!(
                            "remote {r}"
                        ))
                ),
            ),
            Err(PolicyProblem::NoWorkTree) => Check::fail(
                NAME,
                Class::Config,
                "no work tree, so no policy.toml",
                "run git-loop in a clone with a working tree",
            ),
            Err(PolicyProblem::Missing) => Check::fail(
                NAME,
                Class::Config,
                "there is no policy.toml at the root of the work tree",
                "`git loop init` writes one; then commit policy.toml and loop/PROMPT.md",
            ),
            Err(PolicyProblem::Invalid { text, hint }) => Check::fail(
                NAME,
                Class::Config,
                text.clone(),
                hint.clone()
                    .unwrap_or_else(|| "correct policy.toml, then commit it".to_string()),
            ),
        }
    }

    /// The push that publishes a commit on the target, when the loop has a remote.
    fn push(&self, policy: &Policy) -> Option<String> {
        let remote = policy.loop_.remote.as_ref()?;
        Some(format!("git push {remote} {}", policy.loop_.target))
    }

    fn policy_committed(&self, policy: &Policy) -> Result<Check> {
        const NAME: &str = "policy-committed";
        let Some(target) = &self.target else {
            return Ok(Check::fail(
                NAME,
                Class::Config,
                format!(
                    "the target branch {} (loop.target) does not exist",
                    policy.loop_.target
                ),
                format!(
                    "create it (`git branch {} <commit>`), or name an existing branch in loop.target",
                    policy.loop_.target
                ),
            ));
        };
        let committed = self.repo.file_at(target.tip, policy::FILE)?;
        let Some(committed) = committed else {
            return Ok(Check::fail(
                NAME,
                Class::Config,
                format!(
                    "policy.toml is not committed on {}: a fresh clone has no policy",
                    target.label
                ),
                format!(
                    "commit it on {}: git add policy.toml && git commit{}",
                    policy.loop_.target,
                    self.push(policy)
                        .map(|p| format!(" && {p}"))
                        .unwrap_or_default()
                ),
            ));
        };
        let dir = self.workdir.as_deref().unwrap_or(Path::new("."));
        let on_disk = std::fs::read(dir.join(policy::FILE))?;
        if on_disk == committed {
            return Ok(Check::ok(
                NAME,
                Class::Config,
                format!("policy.toml is the one committed on {}", target.label),
            ));
        }
        let diff = similar::TextDiff::from_lines(
            String::from_utf8_lossy(&committed).as_ref(),
            String::from_utf8_lossy(&on_disk).as_ref(),
        )
        .unified_diff()
        .header(
            &format!("{}:policy.toml", target.label),
            "policy.toml (work tree)",
        )
        .to_string();
        Ok(Check::warn(
            NAME,
            Class::Config,
            format!(
                "policy.toml differs from the one committed on {}; the loop runs by the committed one:\n{diff}",
                target.label
            ),
            format!(
                "commit the change on {}{}, or discard it",
                policy.loop_.target,
                self.push(policy)
                    .map(|p| format!(" (then {p})"))
                    .unwrap_or_default()
            ),
        ))
    }

    fn runtime_files(&self, policy: &Policy) -> Result<Check> {
        const NAME: &str = "runtime-files";
        let dir = self.workdir.as_deref().unwrap_or(Path::new("."));
        let mut files = breaker::runtime_files(policy, Some(dir));
        let prompt = policy.agent.prompt.trim_start_matches("./").to_string();
        if !files.contains(&prompt) {
            files.push(prompt);
        }
        let in_index = self.git.tracked(&files)?;
        let label = self
            .target
            .as_ref()
            .map_or_else(|| policy.loop_.target.clone(), |t| t.label.clone());
        let mut saw = Vec::new();
        let mut fixes = Vec::new();
        for file in &files {
            let committed = match &self.target {
                Some(t) => self.repo.file_at(t.tip, file)?.is_some(),
                None => false,
            };
            let staged = in_index.contains(file);
            let on_disk = dir.join(file).symlink_metadata().is_ok();
            let (what, fix) = match (on_disk, staged, committed) {
                (true, true, true) => continue,
                (false, false, false) => (
                    format!("{file} is missing"),
                    format!("create {file}, then git add {file} && git commit"),
                ),
                (true, false, false) => (
                    format!(
                        "{file} exists here but is not tracked: a fresh clone would not have it"
                    ),
                    format!("git add {file} && git commit"),
                ),
                (_, true, false) => (
                    format!("{file} is in the index but not committed on {label}"),
                    format!("git commit it on {}", policy.loop_.target),
                ),
                (_, false, true) => (
                    format!(
                        "{file} is committed on {label} but not in the index (git rm --cached?)"
                    ),
                    format!("git reset -q -- {file}"),
                ),
                (false, true, true) => (
                    format!("{file} is deleted in the work tree"),
                    format!("git restore {file}"),
                ),
            };
            saw.push(what);
            fixes.push(fix);
        }
        if saw.is_empty() {
            return Ok(Check::ok(
                NAME,
                Class::Config,
                format!(
                    "{} present, tracked and committed on {label}",
                    files.join(", ")
                ),
            ));
        }
        if let Some(push) = self.push(policy) {
            fixes.push(format!("then publish it: {push}"));
        }
        Ok(Check::fail(
            NAME,
            Class::Config,
            saw.join("\n"),
            fixes.join("\n"),
        ))
    }

    fn programs(&self, policy: &Policy) -> Result<Check> {
        const NAME: &str = "programs";
        let mut named: Vec<(String, &String)> = Vec::new();
        if let Some(p) = policy.agent.command.first() {
            named.push(("agent.command".into(), p));
        }
        for (i, argv) in policy.gate.commands.iter().enumerate() {
            if let Some(p) = argv.first() {
                named.push((format!("gate.commands[{i}]"), p));
            }
        }
        if let Some(p) = policy.review.command.first() {
            named.push(("review.command".into(), p));
        }
        for (i, argv) in policy.verify.commands.iter().enumerate() {
            if let Some(p) = argv.first() {
                named.push((format!("verify.commands[{i}]"), p));
            }
        }
        let dir = self.workdir.as_deref().unwrap_or(Path::new("."));
        let mut found = Vec::new();
        let mut missing = Vec::new();
        let mut fixes = Vec::new();
        for (key, program) in named {
            match Program::of(program, Some(dir)) {
                Program::Placeholder => {
                    found.push(format!(
                        "{key}: {program} (a placeholder, resolved per task)"
                    ));
                }
                Program::OnPath(name) => match crate::process::which(&name) {
                    Some(path) => found.push(format!("{key}: {}", path.display())),
                    None => {
                        missing.push(format!("{key}: {name} is not on PATH"));
                        fixes.push(format!(
                            "install {name}, or put its directory on the PATH the runner gets"
                        ));
                    }
                },
                Program::InRepo(rel) => match crate::process::executable(&dir.join(&rel)) {
                    Ok(()) => found.push(format!("{key}: {rel} (in the repository)")),
                    Err(why) => {
                        missing.push(format!("{key}: {rel} {why}"));
                        fixes.push(format!(
                            "create {rel} with chmod +x, then git add {rel} && git commit"
                        ));
                    }
                },
                Program::Absolute(path) => match crate::process::executable(&path) {
                    Ok(()) => found.push(format!("{key}: {}", path.display())),
                    Err(why) => {
                        missing.push(format!("{key}: {} {why}", path.display()));
                        fixes.push(format!("install {}, or change {key}", path.display()));
                    }
                },
            }
        }
        if missing.is_empty() {
            return Ok(Check::ok(NAME, Class::Config, found.join("\n")));
        }
        Ok(Check::fail(
            NAME,
            Class::Config,
            missing.join("\n"),
            fixes.join("\n"),
        ))
    }

    fn hooks(&self) -> Result<Check> {
        const NAME: &str = "hooks";
        if self.workdir.is_none() {
            return Ok(Check::not_checked(
                NAME,
                Class::Config,
                "no work tree",
                "run git-loop in a clone with a working tree",
            ));
        }
        let (dir, inside) = hooks::hooks_dir(self.repo, &self.git)?;
        let install = if inside {
            "git loop hooks install"
        } else {
            "git loop hooks install --force (the hooks directory is outside the repository)"
        };
        let mut saw = Vec::new();
        let mut fixes: Vec<String> = Vec::new();
        for st in hooks::status(&dir, &hooks::current_bin()?) {
            match st.state {
                HookState::Installed => {
                    if crate::process::executable(&st.path).is_err() {
                        saw.push(format!(
                            "{}: the shim is not executable: git skips it",
                            st.name
                        ));
                        fixes.push(format!("chmod +x {}", st.path.display()));
                    }
                }
                HookState::Missing { foreign: false } => {
                    saw.push(format!("{}: git-loop's shim is not installed", st.name));
                    fixes.push(install.to_string());
                }
                HookState::Missing { foreign: true } => {
                    saw.push(format!(
                        "{}: another tool's hook is there, not git-loop's shim",
                        st.name
                    ));
                    fixes.push(format!("{install} (it keeps that hook and runs it first)"));
                }
                HookState::Clobbered => {
                    saw.push(format!(
                        "{}: another tool replaced git-loop's shim; the hook git-loop chained is still at {}",
                        st.name,
                        st.chained.as_deref().unwrap_or(&st.path).display()
                    ));
                    fixes.push(format!(
                        "keep one of the two {} hooks (or merge them), remove the other, then {install}",
                        st.name
                    ));
                }
                HookState::Outdated { diff } => {
                    saw.push(format!(
                        "{}: the installed shim is not the one this git-loop installs:\n{diff}",
                        st.name
                    ));
                    fixes.push(install.to_string());
                }
            }
            if let Some(chained) = &st.chained
                && st.path.exists()
                && crate::process::executable(chained).is_err()
            {
                saw.push(format!(
                    "{}: the chained hook {} is not executable: the shim skips it",
                    st.name,
                    chained.display()
                ));
                fixes.push(format!("chmod +x {}", chained.display()));
            }
        }
        if saw.is_empty() {
            return Ok(Check::ok(
                NAME,
                Class::Config,
                format!(
                    "post-commit and pre-push shims are current in {}",
                    dir.display()
                ),
            ));
        }
        fixes.dedup();
        Ok(Check::warn(
            NAME,
            Class::Config,
            saw.join("\n"),
            fixes.join("\n"),
        ))
    }

    fn remote(&self, policy: &Policy) -> Result<Check> {
        const NAME: &str = "remote";
        let Some(remote) = &policy.loop_.remote else {
            return Ok(Check::ok(
                NAME,
                Class::Config,
                "no loop.remote: a local-only loop",
            ));
        };
        if !self.repo.remote_names().iter().any(|r| r == remote) {
            return Ok(Check::fail(
                NAME,
                Class::Config,
                format!("loop.remote names {remote}, which is not a configured remote"),
                format!(
                    "git remote add {remote} URL, or change loop.remote in policy.toml (omit it for a local-only loop)"
                ),
            ));
        }
        let url = self
            .repo
            .config_string(&format!("remote.{remote}.url"))
            .unwrap_or_else(|| "no url".into());
        if self.opts.offline {
            return Ok(Check::ok(
                NAME,
                Class::Config,
                format!("{remote} ({url}) is configured; not contacted (--offline)"),
            ));
        }
        let target = format!("refs/heads/{}", policy.loop_.target);
        match self
            .git
            .ls_remote_within(remote, &target, self.opts.remote_timeout)
        {
            Ok(Some(tip)) => {
                let saw = format!(
                    "{remote} ({url}) answered: {} is at {}",
                    policy.loop_.target,
                    tip.get(..7).unwrap_or(&tip)
                );
                // Loop state is shared through the remote (SPEC §13): the pin there shows it
                // took refs/loop/* (some hosts take only branches and tags).
                match self.git.ls_remote_within(
                    remote,
                    crate::refs::ORACLE,
                    self.opts.remote_timeout,
                ) {
                    Ok(Some(_)) => Ok(Check::ok(
                        NAME,
                        Class::Config,
                        format!("{saw}; it holds the loop's state ({})", crate::refs::ORACLE),
                    )),
                    Ok(None) => Ok(Check::warn(
                        NAME,
                        Class::Config,
                        format!(
                            "{saw}, but holds no {}: it has not taken the loop's state yet",
                            crate::refs::ORACLE
                        ),
                        "`git loop init --repin` pushes the pin there (a host that refuses \
                         refs/loop/* fails then, naming its refusal)",
                    )),
                    Err(e) => Ok(Check::warn(
                        NAME,
                        Class::Transient,
                        format!("{saw}; asking for {} failed: {e:#}", crate::refs::ORACLE),
                        "try again when the remote is reachable",
                    )),
                }
            }
            Ok(None) => Ok(Check::fail(
                NAME,
                Class::Config,
                format!(
                    "{remote} ({url}) answered, but has no branch {}",
                    policy.loop_.target
                ),
                format!("git push {remote} {}", policy.loop_.target),
            )),
            Err(e) => {
                let found = crate::error::find(&e);
                let class = found.map_or(Class::Transient, |l| l.class);
                Ok(Check::fail(
                    NAME,
                    class,
                    found.map_or_else(|| format!("{e:#}"), |l| l.message.clone()),
                    found
                        .and_then(|l| l.hint.clone())
                        .unwrap_or_else(|| "try again when the remote is reachable".into())
                        + "; `--offline` skips this check",
                ))
            }
        }
    }

    fn worktrees(&self) -> Result<Check> {
        const NAME: &str = "worktrees";
        let mut saw = Vec::new();
        for meta in self.repo.interrupted_adds(false)? {
            saw.push(format!(
                "{}: a worktree whose add was cut short (git-loop removes it)",
                meta.display()
            ));
        }
        let worktrees = self.repo.worktrees()?;
        for wt in worktrees.iter().filter(|w| w.prunable) {
            saw.push(format!(
                "{}: the worktree's directory is gone (deleted by hand?); git still lists it",
                wt.path.display()
            ));
        }
        let leased = crate::lease::ids(self.repo)?;
        let loop_dir = self.repo.common_dir().join("loop").join("worktrees");
        let mut loop_worktrees = 0;
        if let Ok(entries) = std::fs::read_dir(&loop_dir) {
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for name in names {
                loop_worktrees += 1;
                // A task's worktree is named by its short id exactly, as reap reads it.
                if !leased.iter().any(|id| crate::ids::short(id) == name) {
                    saw.push(format!(
                        "{}: a loop worktree with no lease: nothing is working in it",
                        loop_dir.join(&name).display()
                    ));
                }
            }
        }
        if saw.is_empty() {
            return Ok(Check::ok(
                NAME,
                Class::Transient,
                format!(
                    "{}, none stale; {}",
                    plural(worktrees.len(), "worktree"),
                    match loop_worktrees {
                        0 => "no loop worktrees".to_string(),
                        n => format!("{}, each leased", plural(n, "loop worktree")),
                    }
                ),
            ));
        }
        Ok(Check::warn(
            NAME,
            Class::Transient,
            saw.join("\n"),
            "git loop reap (it saves uncommitted work to refs/loop/rescue/ before removing a worktree)",
        ))
    }

    fn branch_locks(&self) -> Result<Check> {
        const NAME: &str = "branch-locks";
        let mut saw = Vec::new();
        for wt in self.repo.worktrees()?.iter().filter(|w| w.prunable) {
            if let Some(branch) = &wt.branch {
                let short = branch.strip_prefix("refs/heads/").unwrap_or(branch);
                saw.push(format!(
                    "{short} is held by the stale worktree {}: git refuses to check it out or delete it elsewhere",
                    wt.path.display()
                ));
            }
        }
        if saw.is_empty() {
            return Ok(Check::ok(
                NAME,
                Class::Transient,
                "no branch is held by a stale worktree",
            ));
        }
        Ok(Check::warn(
            NAME,
            Class::Transient,
            saw.join("\n"),
            "git loop reap (or `git worktree prune`) releases them",
        ))
    }

    fn sandbox(&self, policy: &Policy) -> Result<Check> {
        const NAME: &str = "sandbox";
        Ok(
            match crate::sandbox::Sandbox::for_policy(self.repo, policy) {
                Ok(crate::sandbox::Sandbox::Bwrap { path, writable }) => Check::ok(
                    NAME,
                    Class::Config,
                    format!(
                        "agents, gates and verify run in a sandbox ({}): the system, the home \
                     directory, the repository and its checkouts are read-only to them but for \
                     their own checkout, a /tmp of their own and {}; nothing they start \
                     outlives them",
                        path.display(),
                        if writable.is_empty() {
                            "nothing else".to_string()
                        } else {
                            writable
                                .iter()
                                .map(|w| w.display().to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    ),
                ),
                Ok(crate::sandbox::Sandbox::Seatbelt { path, .. }) => Check::warn(
                    NAME,
                    Class::Config,
                    format!(
                        "agents, gates and verify run under {}: writes outside their checkout, \
                     the temporary directories, agent.writable, the object store and their own \
                     branch are denied; but it is untested, and what they start in a new \
                     session outlives them (SHORTCOMINGS.md)",
                        path.display()
                    ),
                    "run agents on Linux with bubblewrap for the full sandbox",
                ),
                Ok(ref sandbox @ crate::sandbox::Sandbox::None { ref why })
                    if sandbox.is_off_by_policy() =>
                {
                    Check::warn(
                        NAME,
                        Class::Config,
                        format!(
                            "agents run unsandboxed ({why}): an agent can write git-loop's refs, \
                         the person's files and every checkout, and its setsid daemons outlive it"
                        ),
                        "set agent.sandbox = \"auto\" in policy.toml (Linux, with bubblewrap)",
                    )
                }
                Ok(crate::sandbox::Sandbox::None { why }) => Check::warn(
                    NAME,
                    Class::Config,
                    format!("agents run unsandboxed: {why}"),
                    if cfg!(target_os = "linux") {
                        "install bubblewrap (`apt-get install bubblewrap`; it needs unprivileged user \
                     namespaces), or set agent.sandbox = \"none\" to say it is meant"
                    } else {
                        "git-loop has no sandbox on this system yet (SHORTCOMINGS.md); set \
                     agent.sandbox = \"none\" to say it is meant"
                    },
                ),
                Err(e) => Check::fail(
                    NAME,
                    Class::Config,
                    crate::error::find(&e).map_or_else(|| format!("{e:#}"), |l| l.message.clone()),
                    "install bubblewrap (`apt-get install bubblewrap`), or set agent.sandbox = \"auto\"",
                ),
            },
        )
    }

    fn git_locks(&self) -> Result<Check> {
        const NAME: &str = "git-locks";
        let stale = self.repo.stale_git_locks(crate::git::STALE_GIT_LOCK);
        if stale.is_empty() {
            return Ok(Check::ok(
                NAME,
                Class::Transient,
                "no lock file left behind by a git that is gone",
            ));
        }
        Ok(Check::warn(
            NAME,
            Class::Transient,
            stale
                .iter()
                .map(|p| {
                    format!(
                        "{} is older than {}: a git killed while it held it left it, and every git \
                         that needs that file fails",
                        p.display(),
                        crate::time::format_duration(crate::git::STALE_GIT_LOCK)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
            "git loop reap removes them",
        ))
    }

    fn leases(&self) -> Result<Check> {
        const NAME: &str = "leases";
        let now = Timestamp::now();
        let all = crate::lease::all(self.repo)?;
        let mut saw = Vec::new();
        for (id, _, lease) in &all {
            let short = crate::ids::short(id);
            match lease {
                Err(why) => saw.push(format!("{short}: the lease is unreadable: {why}")),
                Ok(l) if l.holder_dead() => saw.push(format!(
                    "{short}: held by {} (pid {} on this host), which is gone",
                    l.runner, l.holder.pid
                )),
                Ok(l) if l.expired(now) => saw.push(format!(
                    "{short}: the lease of {} (host {}) expired at {}",
                    l.runner,
                    l.holder.host,
                    l.expires.to_rfc3339()
                )),
                Ok(_) => {}
            }
        }
        if saw.is_empty() {
            return Ok(Check::ok(
                NAME,
                Class::Transient,
                match all.len() {
                    0 => "no leases".to_string(),
                    n => format!(
                        "{}, each held by a live holder within its expiry",
                        plural(n, "lease")
                    ),
                },
            ));
        }
        Ok(Check::warn(
            NAME,
            Class::Transient,
            saw.join("\n"),
            "git loop reap takes them back and requeues the tasks",
        ))
    }

    fn runner(&self) -> Result<Check> {
        const NAME: &str = "runner";
        let heartbeat = self
            .policy
            .as_ref()
            .map_or(Duration::from_secs(30), |p| p.lease.heartbeat);
        let stale_after = heartbeat * 3 + Duration::from_secs(5);
        let lock = lock_held(self.repo.common_dir());
        let now = Timestamp::now();
        let mut saw = Vec::new();
        let mut fixes = Vec::new();
        let mut live = Vec::new();
        for (id, beat) in crate::runner::heartbeats(self.repo)? {
            let b = match beat {
                Ok(b) => b,
                Err(why) => {
                    saw.push(format!("refs/loop/runners/{id} is unreadable: {why}"));
                    fixes.push(format!("git update-ref -d refs/loop/runners/{id}"));
                    continue;
                }
            };
            if b.phase == crate::runner::Phase::Stopped {
                continue;
            }
            let age = Duration::from_micros(u64::try_from(now.0 - b.updated.0).unwrap_or(0));
            let here = b.holder.is_here();
            let shown = crate::time::format_duration(age);
            if b.holder.is_dead() {
                saw.push(format!(
                    "runner {id} (pid {} on this host) is gone, but its heartbeat says {}, {shown} ago",
                    b.holder.pid, b.phase
                ));
                fixes.push("the next `git loop start` clears it".to_string());
            } else if age > stale_after && !(here && lock == Some(true)) {
                saw.push(format!(
                    "runner {id} (host {}, pid {}) last beat {shown} ago, in phase {} (more than 3 × lease.heartbeat), and holds no lock here",
                    b.holder.host, b.holder.pid, b.phase
                ));
                fixes.push(if here {
                    "`git loop stop`, then `git loop start`".to_string()
                } else {
                    format!("look at the runner on {}", b.holder.host)
                });
            } else {
                live.push(format!("{id} ({}, heartbeat {shown} ago)", b.phase));
            }
        }
        if !saw.is_empty() {
            fixes.dedup();
            return Ok(Check::warn(
                NAME,
                Class::Transient,
                saw.join("\n"),
                fixes.join("\n"),
            ));
        }
        let lock_text = match lock {
            Some(true) => "a runner holds the lock",
            Some(false) => "no runner holds the lock",
            None => "the runner lock could not be inspected",
        };
        Ok(Check::ok(
            NAME,
            Class::Transient,
            if live.is_empty() {
                format!("{lock_text}; no live heartbeat")
            } else {
                format!("{lock_text}; heartbeats: {}", live.join(", "))
            },
        ))
    }

    fn breaker(&self) -> Result<Check> {
        const NAME: &str = "breaker";
        let (_, b) = breaker::read(self.repo)?;
        if b.is_closed() {
            return Ok(Check::ok(NAME, Class::Breaker, "closed"));
        }
        let since = b
            .since
            .map(|t| format!(" (since {})", t.to_rfc3339()))
            .unwrap_or_default();
        let fix = match (b.state, b.class) {
            (breaker::State::Paused, _) => "`git loop resume` when the reason is dealt with",
            (_, Some(breaker::Cause::Unreadable)) => {
                "`git loop resume` writes a closed breaker over it"
            }
            (_, Some(breaker::Cause::Config)) => {
                "fix what it names and commit the fix: a running runner re-arms by itself (`git loop resume` closes it by hand)"
            }
            _ => "it half-opens by itself; `git loop resume` closes it by hand",
        };
        Ok(Check::warn(
            NAME,
            Class::Breaker,
            format!("{}{since}: nothing new is dispatched", b.describe()),
            fix,
        ))
    }

    /// `[trust] signers` as the pinned finish line has it: the file committed on the target,
    /// keys in it, and ssh-keygen there for git to check signatures with.
    fn trust(&self, policy: &Policy) -> Result<Check> {
        const NAME: &str = "trust";
        let Ok(frozen) = crate::finish_line::frozen(self.repo, policy) else {
            return Ok(Check::not_checked(
                NAME,
                Class::Config,
                "the finish line does not match its pin",
                "fix what the `oracle-pin` check reports first",
            ));
        };
        let signers = match crate::trust::signers(self.repo, &frozen) {
            Ok(Some(s)) => s,
            Ok(None) => {
                return Ok(Check::ok(
                    NAME,
                    Class::Config,
                    "no [trust] signers: any task on the loop's refs runs (with a shared \
                     remote, any task pushed there)",
                ));
            }
            Err(e) => {
                let said =
                    crate::error::find(&e).map_or_else(|| format!("{e:#}"), |l| l.message.clone());
                return Ok(Check::fail(
                    NAME,
                    Class::Config,
                    said,
                    "commit the allowed-signers file on the target, then `git loop init --repin`",
                ));
            }
        };
        if crate::process::which("ssh-keygen").is_none() {
            return Ok(Check::fail(
                NAME,
                Class::Config,
                "ssh-keygen is not on PATH: git cannot check SSH signatures, so every task \
                 is held untrusted",
                "install OpenSSH's client (Debian: openssh-client)",
            ));
        }
        let listed = self
            .repo
            .blob(signers.blob)?
            .split(|b| *b == b'\n')
            .filter(|l| {
                let l = l.trim_ascii();
                !l.is_empty() && !l.starts_with(b"#")
            })
            .count();
        if listed == 0 {
            return Ok(Check::warn(
                NAME,
                Class::Config,
                format!(
                    "{} lists no key: every task is held untrusted",
                    signers.path
                ),
                "add a line `<principal> namespaces=\"git\" <public key>` per person who gives \
                 agents work, commit it, then `git loop init --repin`",
            ));
        }
        Ok(Check::ok(
            NAME,
            Class::Config,
            format!(
                "{listed} key(s) in {}: a task runs only when one of them signed its title \
                 and body",
                signers.path
            ),
        ))
    }

    fn oracle_pin(&self, policy: &Policy) -> Result<Check> {
        const NAME: &str = "oracle-pin";
        match crate::finish_line::frozen(self.repo, policy) {
            Ok(frozen) => {
                let source = match crate::finish_line::read_pin(self.repo)? {
                    Some((_, Ok(pin))) => pin.source,
                    _ => String::new(),
                };
                let files = if frozen.paths.is_empty() {
                    String::new()
                } else {
                    format!(" and {}", frozen.paths.join(", "))
                };
                Ok(Check::ok(
                    NAME,
                    Class::Config,
                    format!("the protected sections{files} match the pin ({source})"),
                ))
            }
            Err(e) => {
                let (saw, fix) = match crate::error::find(&e) {
                    Some(l) => (
                        l.message.clone(),
                        l.hint
                            .clone()
                            .unwrap_or_else(|| "git loop init --repin".into()),
                    ),
                    None => (format!("{e:#}"), "git loop init --repin".into()),
                };
                Ok(Check::fail(NAME, Class::Config, saw, fix))
            }
        }
    }

    fn tasks(&self) -> Result<Check> {
        const NAME: &str = "tasks";
        let store = crate::store::Store::new(self.repo);
        let listed = store.list_read_only()?;
        let short = crate::ids::ShortIds::new(listed.iter().map(|l| l.id.as_str()));
        let mut saw = Vec::new();
        let mut fixes = Vec::new();
        for l in listed.iter() {
            if let Err(why) = &l.task {
                saw.push(format!("{} is corrupt: {why}", l.ref_name));
                fixes.push(format!(
                    "inspect it with `git log {0}`; point it at a good commit with `git update-ref {0} <commit>`, or delete it with `git update-ref -d {0}`",
                    l.ref_name
                ));
            }
        }
        let tasks: Vec<&crate::task::Task> =
            listed.iter().filter_map(|l| l.task.as_ref().ok()).collect();
        let graph = crate::graph::Graph::new(tasks.iter().copied());
        let known: HashSet<&str> = listed.iter().map(|l| l.id.as_str()).collect();
        for (task, dep) in graph.dangling(&known) {
            saw.push(format!(
                "{} runs after {dep}, which is not a task",
                short.short(task)
            ));
            fixes.push(format!(
                "drop the dependency (`git loop task edit {}`), or restore refs/loop/tasks/{dep}",
                short.short(task)
            ));
        }
        if let Some(cycle) = graph.find_cycle() {
            let names: Vec<&str> = cycle.iter().map(|id| short.short(id)).collect();
            saw.push(format!(
                "a dependency cycle (each runs after the next): {}",
                names.join(" -> ")
            ));
            fixes.push("drop one of these dependencies (`git loop task edit`)".to_string());
        }
        if saw.is_empty() {
            return Ok(Check::ok(
                NAME,
                Class::Config,
                match listed.len() {
                    0 => "no tasks".to_string(),
                    n => format!(
                        "{}, all readable; dependencies are acyclic and name existing tasks",
                        plural(n, "task")
                    ),
                },
            ));
        }
        fixes.dedup();
        Ok(Check::fail(
            NAME,
            Class::Config,
            saw.join("\n"),
            fixes.join("\n"),
        ))
    }

    fn macos_privacy(&self) -> Result<Check> {
        const NAME: &str = "macos-privacy";
        if !cfg!(target_os = "macos") {
            return Ok(Check::ok(
                NAME,
                Class::Config,
                "not macOS: no privacy-protected folders",
            ));
        }
        let path = self.workdir.as_deref().unwrap_or(self.repo.common_dir());
        let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let folder = home.and_then(|h| {
            let h = h.canonicalize().unwrap_or(h);
            privacy_protected(&path, &h)
        });
        Ok(match folder {
            None => Check::ok(
                NAME,
                Class::Config,
                format!(
                    "{} is outside the privacy-protected folders",
                    path.display()
                ),
            ),
            Some(folder) => Check::warn(
                NAME,
                Class::Config,
                format!(
                    "{} is under {folder}: macOS asks before a process may read it, and an unattended runner cannot answer",
                    path.display()
                ),
                "move the repository elsewhere (e.g. ~/src), or grant the runner's terminal or service Full Disk Access",
            ),
        })
    }
}

/// The first check when the repository cannot be opened: it is not one, or git-loop refuses
/// its ref storage.
fn unopened(cwd: &Path, err: &anyhow::Error) -> Check {
    let found = crate::error::find(err);
    let message = found.map_or_else(|| format!("{err:#}"), |l| l.message.clone());
    match crate::git::ref_storage(cwd) {
        Some(storage) if !storage.eq_ignore_ascii_case("files") => Check::fail(
            "ref-storage",
            Class::Config,
            format!(
                "refs are stored as {storage} (extensions.refStorage): {message}; the other checks need the files backend and were not run"
            ),
            found
                .and_then(|l| l.hint.clone())
                .unwrap_or_else(|| "git refs migrate --ref-format=files".into()),
        ),
        _ => Check::fail(
            "repository",
            Class::Config,
            format!("{message}; the other checks need a repository and were not run"),
            "run git loop doctor inside a git repository (or with -C DIR)",
        ),
    }
}

fn git_version(cwd: &Path) -> Check {
    const NAME: &str = "git-version";
    let need = format!("{}.{}", MIN_GIT.0, MIN_GIT.1);
    let text = match Git::new(cwd, false).version() {
        Ok(text) => text,
        Err(e) => {
            return Check::fail(
                NAME,
                Class::Config,
                format!("cannot run git: {e:#}"),
                format!("install git {need} or later and put it on PATH"),
            );
        }
    };
    match parse_version(&text) {
        Some(v) if v >= MIN_GIT => Check::ok(
            NAME,
            Class::Config,
            format!("{text} ({need} or later is needed)"),
        ),
        Some(_) => Check::fail(
            NAME,
            Class::Config,
            format!(
                "{text} is older than {need}, the oldest git-loop supports (promotion needs `git merge-tree --write-tree`)"
            ),
            format!("install git {need} or later"),
        ),
        None => Check::warn(
            NAME,
            Class::Config,
            format!("cannot tell the version from {text:?}"),
            format!("make sure `git --version` reports {need} or later"),
        ),
    }
}

fn repository(repo: &Repo) -> Check {
    const NAME: &str = "repository";
    let Some(workdir) = repo.workdir() else {
        return Check::fail(
            NAME,
            Class::Config,
            format!(
                "{} is a bare repository: no work tree for policy.toml, the hooks or the runner",
                repo.common_dir().display()
            ),
            "run git-loop in a clone with a working tree (git clone URL)",
        );
    };
    let mut saw = Vec::new();
    let mut fixes = Vec::new();
    if let Some(op) = repo.operation() {
        saw.push(format!("a {op} is in progress in this work tree"));
        fixes.push(format!(
            "finish it or abort it (git {op} --continue / --abort)"
        ));
    }
    match (repo.head_branch(), repo.head_commit()) {
        (Some(_), Ok(Some(_))) => {}
        (Some(branch), Ok(None)) => {
            saw.push(format!("HEAD is on {branch}, which has no commit yet"));
            fixes.push("make a first commit".to_string());
        }
        (None, Ok(Some(id))) => {
            saw.push(format!("HEAD is detached at {}", &id.to_string()[..7]));
            fixes.push(
                "git switch BRANCH (`git loop init` takes the checked-out branch as the target)"
                    .to_string(),
            );
        }
        (_, Err(e)) => {
            saw.push(format!("HEAD cannot be read: {e:#}"));
            fixes.push("repair HEAD (git switch BRANCH)".to_string());
        }
        (None, Ok(None)) => saw.push("HEAD points nowhere".to_string()),
    }
    if saw.is_empty() {
        return Check::ok(
            NAME,
            Class::Config,
            format!(
                "work tree {}, on {}",
                workdir.display(),
                repo.head_branch().unwrap_or_default()
            ),
        );
    }
    Check::warn(NAME, Class::Config, saw.join("\n"), fixes.join("\n"))
}

/// The target's tip as the loop reads it: the remote's tracking branch when a remote is set and
/// it exists, else the local branch.
fn target(repo: &Repo, policy: &Policy) -> Result<Option<Target>> {
    Ok(repo
        .last_seen_tip(policy.loop_.remote.as_deref(), &policy.loop_.target)?
        .map(|(tip, label)| Target { tip, label }))
}

/// `1 task`, `2 tasks`.
fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Whether a runner holds the runner lock (`None`: cannot tell). Looks with a shared lock,
/// released at once, and never creates the lock file.
pub(crate) fn lock_held(common_dir: &Path) -> Option<bool> {
    let path = common_dir.join("loop").join("runner.lock");
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(false),
        Err(_) => return None,
    };
    match file.try_lock_shared() {
        Ok(()) => Some(false),
        Err(std::fs::TryLockError::WouldBlock) => Some(true),
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

/// The folders under a macOS home directory that the system guards with a consent prompt (TCC),
/// and what to call them.
const PRIVACY_PROTECTED: [(&str, &str); 5] = [
    ("Desktop", "~/Desktop"),
    ("Documents", "~/Documents"),
    ("Downloads", "~/Downloads"),
    (
        "Library/Mobile Documents",
        "iCloud Drive (~/Library/Mobile Documents)",
    ),
    (
        "Library/CloudStorage",
        "a cloud drive (~/Library/CloudStorage)",
    ),
];

/// The privacy-protected folder of `home` that `path` lies in, if any. Both paths should be
/// canonical; the comparison is by whole path components.
pub fn privacy_protected(path: &Path, home: &Path) -> Option<&'static str> {
    let rest = path.strip_prefix(home).ok()?;
    PRIVACY_PROTECTED
        .iter()
        .find(|(dir, _)| rest.starts_with(dir))
        .map(|(_, shown)| *shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privacy_protected_folders_are_found_by_whole_components() {
        let home = Path::new("/Users/ann");
        let under = |p: &str| privacy_protected(Path::new(p), home);
        assert_eq!(under("/Users/ann/Desktop/proj"), Some("~/Desktop"));
        assert_eq!(under("/Users/ann/Documents"), Some("~/Documents"));
        assert_eq!(under("/Users/ann/Downloads/x/y"), Some("~/Downloads"));
        assert!(under("/Users/ann/Library/Mobile Documents/com~apple~CloudDocs/p").is_some());
        assert!(under("/Users/ann/Library/CloudStorage/Dropbox/p").is_some());
        assert_eq!(under("/Users/ann/src/proj"), None);
        assert_eq!(under("/Users/ann/Desktopper/proj"), None);
        assert_eq!(under("/Users/ann/Library/Caches/p"), None);
        assert_eq!(under("/Volumes/Desktop/p"), None);
        assert_eq!(under("/Users/bob/Desktop/p"), None);
    }

    #[test]
    fn the_lock_is_seen_held_without_being_created() {
        let dir = tempfile::tempdir().expect("tmp");
        assert_eq!(lock_held(dir.path()), Some(false));
        assert!(!dir.path().join("loop").exists(), "nothing created");
        std::fs::create_dir_all(dir.path().join("loop")).expect("mkdir");
        let path = dir.path().join("loop").join("runner.lock");
        let held = std::fs::File::create(&path).expect("lock file");
        assert_eq!(lock_held(dir.path()), Some(false));
        held.lock().expect("lock");
        assert_eq!(lock_held(dir.path()), Some(true));
        // Unlocked explicitly: a process another test forks in this instant shares the open
        // file (and its lock) until it execs, so a close alone may not release it yet.
        held.unlock().expect("unlock");
        assert_eq!(lock_held(dir.path()), Some(false));
    }
}

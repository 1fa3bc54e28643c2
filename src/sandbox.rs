//! The OS sandbox agents, gates and verify commands run in (SPEC §12a, `agent.sandbox`).
//!
//! On Linux, with bubblewrap (`bwrap`): the whole system stays as it is (an agent needs its
//! tools, its caches and the network), but the person's checkout, the repository's git dir
//! (refs, `packed-refs`, config, hooks, other worktrees, git-loop's own files) and every
//! remote that is a local path are read-only; the command gets its own PID namespace, ended
//! with it (`--die-with-parent`), so nothing it starts — `setsid` or not — outlives the run;
//! and every capability is dropped, so not even root inside can remount anything writable.
//!
//! What stays writable is the checkout the command runs in and its worktree metadata, and a
//! scratch directory (`<git-common-dir>/loop/sandbox/<run>/`) that stands in for two things:
//!
//! - the object store: the scratch `objects/` is mounted over the repository's, with the real
//!   store (read-only, mounted beside it) as its alternate, so git reads every object and
//!   writes new ones to the scratch — an agent cannot delete or damage an existing object;
//! - the branches: the scratch `heads/` is mounted over `refs/heads/`, holding a copy of the
//!   loose branches and, of git-loop's own, only the task's, so a commit moves the branch
//!   there and no branch outside the scratch, and no state ref, can move at all.
//!
//! After an agent's run the runner takes what it made ([`Session::harvest`]): every new object
//! is checked (it must hash to its name) and written to the real store, and the branch is moved
//! to where the agent left it, by compare-and-swap. A gate's or verify's scratch is dropped.
//!
//! Elsewhere (`sandbox = "none"`, `auto` without a working `bwrap`, and every system but
//! Linux) commands run as they are: `doctor` warns and `status` says agents are unsandboxed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result};
use gix::ObjectId;

use crate::error::{Class, LoopError};
use crate::git::{Cas, CasOutcome, Repo};

/// `agent.sandbox`, ordered from the least strict to the most.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    None,
    /// bwrap where it works, else none (with a warning).
    Auto,
    /// bwrap, or a `config` error.
    Bwrap,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "auto" => Some(Mode::Auto),
            "bwrap" => Some(Mode::Bwrap),
            "none" => Some(Mode::None),
            _ => None,
        }
    }

    /// The stricter of two modes: `bwrap` over `auto` over `none`.
    pub fn stricter(self, other: Mode) -> Mode {
        self.max(other)
    }
}

/// What runs commands: bwrap at a path (with what a run may write besides its checkout),
/// macOS's `sandbox-exec` (the same, weaker: see [`seatbelt_profile`]), or nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sandbox {
    Bwrap {
        path: PathBuf,
        /// `agent.writable`, with `~` expanded.
        writable: Vec<PathBuf>,
    },
    Seatbelt {
        path: PathBuf,
        writable: Vec<PathBuf>,
    },
    None {
        why: String,
    },
}

/// What a session runs its commands in.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tool {
    Bwrap(PathBuf),
    Seatbelt(PathBuf),
}

/// What every sandbox is: the system, read-only; a `/dev` of its own (null, zero, random, tty,
/// a pty and shared-memory mount: none of the host's disks), a `/proc` of its own PID
/// namespace, ended with its parent, a session of its own (no controlling terminal: nothing
/// typed into the person's terminal with `TIOCSTI`), and no capabilities.
const BASE: &[&str] = &[
    "--ro-bind",
    "/",
    "/",
    "--dev",
    "/dev",
    "--proc",
    "/proc",
    "--unshare-pid",
    "--die-with-parent",
    "--new-session",
    "--cap-drop",
    "ALL",
];

/// What can make a sandbox here, found once per process: bwrap (Linux) or `sandbox-exec`
/// (macOS), each tried once on a command that does nothing; or why neither can.
fn found() -> &'static std::result::Result<Tool, String> {
    static FOUND: OnceLock<std::result::Result<Tool, String>> = OnceLock::new();
    FOUND.get_or_init(|| {
        let (tool, mut probe) = if cfg!(target_os = "linux") {
            let path = crate::process::which("bwrap")
                .ok_or_else(|| "bwrap (Debian's bubblewrap) is not on PATH".to_string())?;
            let mut probe = std::process::Command::new(&path);
            probe.args(BASE).args(["--", "true"]);
            (Tool::Bwrap(path), probe)
        } else if cfg!(target_os = "macos") {
            // Only the system's own: one earlier on PATH could be anything.
            let path = PathBuf::from(SANDBOX_EXEC);
            if !path.is_file() {
                return Err(format!("{SANDBOX_EXEC} is missing"));
            }
            // The profile every run gets, with every kind of rule in it, on a harmless path.
            let tmp = std::env::temp_dir();
            let params = [
                (Rule::Writable, tmp.clone()),
                (Rule::Own, tmp.join("git-loop-probe.own")),
                (Rule::WritableFile, tmp.join("git-loop-probe.file")),
                (Rule::Protected, tmp.join("git-loop-probe.protected")),
                (Rule::Pinned, tmp.join("git-loop-probe.pinned")),
            ];
            let mut probe = std::process::Command::new(&path);
            probe.args(seatbelt_args(&params, vec!["/usr/bin/true".into()]));
            (Tool::Seatbelt(path), probe)
        } else {
            return Err("git-loop has no sandbox for this system".into());
        };
        let path = match &tool {
            Tool::Bwrap(p) | Tool::Seatbelt(p) => p.clone(),
        };
        let out = probe
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("{} cannot be run: {e}", path.display()))?;
        if out.status.success() {
            Ok(tool)
        } else {
            Err(format!(
                "{} cannot make a sandbox here: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    })
}

impl Sandbox {
    /// What agents of `policy` run in: its `agent.sandbox`, never less strict than the pinned
    /// finish line's, and the pinned `agent.writable` (so that a policy file changed outside
    /// git-loop cannot open the sandbox). `auto` falls back to none, saying why.
    pub fn for_policy(repo: &Repo, policy: &crate::policy::Policy) -> Result<Sandbox> {
        let pinned = crate::finish_line::read_pin(repo)
            .ok()
            .flatten()
            .and_then(|(_, pin)| pin.ok())
            .and_then(|pin| crate::finish_line::Sections::parse(&pin.sections).ok());
        let (mode, writable) = match pinned {
            Some(p) => (policy.agent.sandbox.stricter(p.sandbox), p.writable),
            None => (policy.agent.sandbox, policy.agent.writable.clone()),
        };
        Sandbox::of(mode, &writable)
    }

    /// The sandbox `mode` gives on this machine, with `writable` (`agent.writable`).
    pub fn of(mode: Mode, writable: &[String]) -> Result<Sandbox> {
        let writable = || writable.iter().filter_map(|w| expand_home(w)).collect();
        match (mode, found()) {
            (Mode::None, _) => Ok(Sandbox::None {
                why: "agent.sandbox is \"none\"".into(),
            }),
            (_, Ok(Tool::Bwrap(path))) => Ok(Sandbox::Bwrap {
                path: path.clone(),
                writable: writable(),
            }),
            (Mode::Auto, Ok(Tool::Seatbelt(path))) => Ok(Sandbox::Seatbelt {
                path: path.clone(),
                writable: writable(),
            }),
            (Mode::Bwrap, Ok(Tool::Seatbelt(_))) => Err(LoopError::new(
                Class::Config,
                "agent.sandbox is \"bwrap\", but this system has sandbox-exec, not bubblewrap",
            )
            .with_hint("set agent.sandbox = \"auto\" to run agents in sandbox-exec")
            .into()),
            (Mode::Auto, Err(why)) => Ok(Sandbox::None { why: why.clone() }),
            (Mode::Bwrap, Err(why)) => Err(LoopError::new(
                Class::Config,
                format!("agent.sandbox is \"bwrap\", but {why}"),
            )
            .with_hint("install bubblewrap (`apt-get install bubblewrap`), or set agent.sandbox = \"auto\"")
            .into()),
        }
    }

    /// Whether it is `none` because the policy says so (not for want of bwrap).
    pub fn is_off_by_policy(&self) -> bool {
        matches!(self, Sandbox::None { why } if why.starts_with("agent.sandbox is"))
    }

    /// One line for people: `bwrap (/usr/bin/bwrap)`, or `none: why`.
    pub fn describe(&self) -> String {
        match self {
            Sandbox::Bwrap { path, .. } => format!("bwrap ({})", path.display()),
            Sandbox::Seatbelt { path, .. } => format!("sandbox-exec ({})", path.display()),
            Sandbox::None { why } => format!("none: {why}"),
        }
    }
}

/// Whose a sandboxed run is: an agent's run of a task (which may move the task's branch, and
/// whose work is taken after it), or a gate's, review's or verify's (whose scratch is dropped).
#[derive(Clone, Copy, Debug)]
pub enum Owner<'a> {
    Run {
        task: &'a str,
        run: &'a str,
        /// `loop/<short>`.
        branch: &'a str,
    },
    Gate {
        /// The task's short id.
        tag: &'a str,
    },
}

/// A scratch directory a run left (see [`leftovers`]). Its name, which the runner gives it in
/// a directory the sandbox keeps read-only, says whose it is: `run.<task>.<run>.<n>` or
/// `gate.<tag>.<n>`. Nothing in it is trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leftover {
    Run {
        dir: PathBuf,
        task: String,
        run: String,
    },
    Gate {
        dir: PathBuf,
        tag: String,
    },
}

/// The most of an outbox that is read: a run that writes more has its outbox cut there.
const OUTBOX_BYTES: u64 = 1 << 20;

/// What could sign as the person, which no sandboxed run may read: `~/.ssh`, and the key
/// `user.signingKey` names (the file, and the private key beside a `.pub`). A task a run
/// signed with them would pass `[trust]` (SPEC §13). A key held only by an ssh-agent is out
/// of reach already: the agent's socket (`SSH_AUTH_SOCK`) is unset and `/tmp` and `/run` are
/// the run's own.
fn signing_secrets(repo: &Repo, home: Option<&Path>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = home.map(|h| h.join(".ssh")).into_iter().collect();
    if let Some(key) = repo.config_string("user.signingKey")
        && !key.starts_with("key::")
        && !key.starts_with("ssh-")
    {
        let path = match (key.strip_prefix("~/"), home) {
            (Some(rest), Some(h)) => h.join(rest),
            _ => PathBuf::from(&key),
        };
        if path.is_absolute() {
            if let Some(private) = key.strip_suffix(".pub") {
                out.push(path.with_file_name(Path::new(private).file_name().unwrap_or_default()));
            }
            out.push(path);
        }
    }
    out.retain(|p| p.exists());
    out.sort();
    out.dedup();
    out
}

/// One sandboxed run: its scratch directory and what it may write.
#[derive(Debug)]
pub struct Session {
    tool: Option<Tool>,
    scratch: PathBuf,
    /// sandbox-exec's: what the profile lets the run write, and keeps from it.
    rules: Vec<(Rule, PathBuf)>,
    /// The home directory (read-only), and `agent.writable` (the paths that exist).
    home: Option<PathBuf>,
    extra: Vec<PathBuf>,
    /// The checkout the command runs in, and its worktree metadata: writable.
    writable: Vec<PathBuf>,
    /// Read-only: the person's checkout, the git dir, local remotes.
    read_only: Vec<PathBuf>,
    /// Files inside what is writable that stay read-only (see [`Session::prepare`]).
    pinned: Vec<PathBuf>,
    /// What could sign as the person, hidden from the run (see [`signing_secrets`]).
    secrets: Vec<PathBuf>,
    common: PathBuf,
    /// The task branch (`loop/<short>`) the run may move, and where it was when it began.
    branch: Option<(String, Option<ObjectId>)>,
    /// The task the run is of (empty for a gate's).
    task: String,
}

impl Session {
    /// Prepares a run of a command in `checkout` (a task's worktree, or a gate's checkout) for
    /// `owner`. With no sandbox, a session that changes nothing.
    pub fn prepare(
        sandbox: &Sandbox,
        repo: &Repo,
        checkout: &Path,
        owner: Owner<'_>,
    ) -> Result<Session> {
        let common = repo.common_dir().to_path_buf();
        let n = crate::rand::u64() as u32;
        let (name, branch) = match owner {
            Owner::Run { task, run, branch } => {
                if branch
                    .strip_prefix("loop/")
                    .is_none_or(|b| b.is_empty() || b.contains('/'))
                {
                    return Err(LoopError::new(
                        Class::Config,
                        format!("task {task}'s branch {branch} is not loop/<name>; a sandboxed run cannot move it"),
                    )
                    .into());
                }
                (format!("run.{task}.{run}.{n:08x}"), Some(branch))
            }
            Owner::Gate { tag } => (format!("gate.{tag}.{n:08x}"), None),
        };
        let scratch = common.join("loop").join("sandbox").join(name);
        let task = match owner {
            Owner::Run { task, .. } => task.to_string(),
            Owner::Gate { .. } => String::new(),
        };
        // Without bwrap, a session of no mounts: its rules (sandbox-exec's), or nothing.
        let bare = |tool: Option<Tool>, rules: Vec<(Rule, PathBuf)>, task: String| Session {
            tool,
            scratch: scratch.clone(),
            rules,
            home: None,
            extra: Vec::new(),
            writable: Vec::new(),
            read_only: Vec::new(),
            pinned: Vec::new(),
            secrets: Vec::new(),
            common: common.clone(),
            branch: None,
            task,
        };
        let (bwrap, extra) = match sandbox {
            Sandbox::Bwrap { path, writable } => (path, writable),
            Sandbox::Seatbelt { path, writable } => {
                let protected = read_only(repo, checkout)?;
                let rules =
                    seatbelt_rules(&common, &scratch, checkout, branch, writable, &protected)?;
                return Ok(bare(Some(Tool::Seatbelt(path.clone())), rules, task));
            }
            Sandbox::None { .. } => return Ok(bare(None, Vec::new(), String::new())),
        };
        let branch_head = match branch {
            Some(b) => Some((b.to_string(), repo.read_ref(&crate::refs::branch(b))?)),
            None => None,
        };
        std::fs::create_dir_all(scratch.join("objects").join("info"))
            .with_context(|| format!("creating {}", scratch.display()))?;
        std::fs::create_dir_all(scratch.join("objects").join("pack"))?;
        std::fs::create_dir_all(scratch.join("real-objects"))?;
        std::fs::create_dir_all(scratch.join("heads").join("loop"))?;
        std::fs::create_dir_all(scratch.join("heads-logs"))?;
        std::fs::write(
            scratch.join("objects").join("info").join("alternates"),
            format!("{}\n", scratch.join("real-objects").display()),
        )?;
        // The scratch `heads/` stands in for `refs/heads/`: a copy of the loose branches as
        // they are now (the packed ones the run reads from `packed-refs`), and the task branch
        // where git looks for it. Mounted over `refs/heads/` — which git never removes, unlike
        // `refs/heads/loop/`, which a person's `git pack-refs --prune` does, and whose removal
        // outside would take a mount on it away from the run.
        let heads = common.join("refs").join("heads");
        std::fs::create_dir_all(&heads)?;
        std::fs::create_dir_all(common.join("logs").join("refs").join("heads"))?;
        copy_loose_heads(&heads, &scratch.join("heads"), 0);
        if let Some((b, Some(head))) = &branch_head
            && let Some(name) = b.strip_prefix("loop/")
        {
            std::fs::write(
                scratch.join("heads").join("loop").join(name),
                format!("{head}\n"),
            )?;
        }
        let (admin, mut pinned) = pinned_files(checkout)?;
        let writable: Vec<PathBuf> = std::iter::once(checkout.to_path_buf())
            .chain(admin)
            .collect();
        pinned.retain(|p| p.is_file());
        let read_only = read_only(repo, checkout)?;
        std::fs::create_dir_all(scratch.join("tmp"))?;
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .filter(|h| h.is_absolute() && h.is_dir() && h != Path::new("/"));
        let secrets = signing_secrets(repo, home.as_deref());
        Ok(Session {
            tool: Some(Tool::Bwrap(bwrap.clone())),
            scratch,
            rules: Vec::new(),
            secrets,
            home,
            extra: extra.iter().filter(|p| p.exists()).cloned().collect(),
            writable,
            read_only,
            pinned,
            common,
            branch: branch_head,
            task,
        })
    }

    pub fn is_on(&self) -> bool {
        self.tool.is_some()
    }

    /// Where the run may write a task it discovered (`git loop task add --from`), as
    /// `GIT_LOOP_OUTBOX`; `None` without a sandbox (the command writes refs then).
    pub fn outbox(&self) -> Option<PathBuf> {
        self.is_on().then(|| self.scratch.join("outbox"))
    }

    /// `argv` as it runs in the sandbox (or as it is, without one).
    pub fn wrap(&self, argv: Vec<String>, cwd: &Path) -> Vec<String> {
        let bwrap = match &self.tool {
            None => return argv,
            Some(Tool::Seatbelt(path)) => {
                let mut out = vec![path.to_string_lossy().into_owned()];
                out.extend(seatbelt_args(&self.rules, argv));
                return out;
            }
            Some(Tool::Bwrap(path)) => path,
        };
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let mut out: Vec<String> = vec![s(bwrap)];
        let mut add = |args: &[&str]| out.extend(args.iter().map(|a| a.to_string()));
        add(BASE);
        // /run holds the sockets of the person's session (systemd's and D-Bus's, which start
        // programs outside any sandbox) and /tmp those of tmux, screen, X and ssh-agent: the
        // run gets its own of each (DNS's resolver configuration kept), and a /tmp in its
        // scratch, dropped with it.
        add(&["--tmpfs", "/run"]);
        for resolver in [
            "/run/systemd/resolve",
            "/run/resolvconf",
            "/run/NetworkManager",
        ] {
            add(&["--ro-bind-try", resolver, resolver]);
        }
        let tmp = self.scratch.join("tmp");
        add(&["--bind", &s(&tmp), "/tmp"]);
        if Path::new("/var/tmp").is_dir() {
            add(&["--bind", &s(&tmp), "/var/tmp"]);
        }
        add(&["--setenv", "TMPDIR", "/tmp"]);
        for var in [
            "XDG_RUNTIME_DIR",
            "DBUS_SESSION_BUS_ADDRESS",
            "SSH_AUTH_SOCK",
        ] {
            add(&["--unsetenv", var]);
        }
        // `agent.writable` outside the home directory, the home directory read-only, what
        // `agent.writable` names inside it; then the repository's places, read-only whatever
        // came before. The home directory and the repository's places are mounted only where
        // one of the run's own places (its /dev, /proc, /tmp, /var/tmp and /run,
        // `agent.writable`) hides them — a repository in /tmp or /dev/shm, say; elsewhere the
        // system's read-only view shows them as they are, and each mount costs bwrap a reading
        // of the mount table.
        let replaced: Vec<PathBuf> = ["/dev", "/proc", "/tmp", "/var/tmp", "/run"]
            .iter()
            .map(PathBuf::from)
            .chain(self.extra.iter().cloned())
            .map(|p| real_path(&p))
            .collect();
        let covered = |p: &Path| {
            let p = real_path(p);
            replaced.iter().any(|d| p.starts_with(d))
        };
        let in_home = |p: &&PathBuf| self.home.as_ref().is_some_and(|h| p.starts_with(h));
        for path in self.extra.iter().filter(|p| !in_home(p)) {
            add(&["--bind", &s(path), &s(path)]);
        }
        if let Some(home) = self.home.as_ref().filter(|h| covered(h)) {
            add(&["--ro-bind", &s(home), &s(home)]);
        }
        for path in self.extra.iter().filter(in_home) {
            add(&["--bind", &s(path), &s(path)]);
        }
        // Where programs are that the run's own places would hide — git-loop itself (which an
        // agent runs as `git loop`), the command's program, `PATH` — read-only: a checkout
        // in /tmp builds its git-loop there.
        let mut programs: Vec<PathBuf> = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
            .into_iter()
            .chain(
                argv.first()
                    .map(PathBuf::from)
                    .filter(|p| p.is_absolute())
                    .and_then(|p| p.parent().map(Path::to_path_buf)),
            )
            .chain(
                std::env::var_os("PATH")
                    .iter()
                    .flat_map(std::env::split_paths),
            )
            .filter(|d| d.is_absolute() && d.is_dir() && covered(d))
            .map(|d| real_path(&d))
            // Never one of the run's own places itself (`/tmp` on `PATH`): that would be the
            // host's again.
            .filter(|d| !replaced.iter().any(|r| r.starts_with(d)))
            .collect();
        programs.sort();
        programs.dedup();
        for dir in &programs {
            add(&["--ro-bind", &s(dir), &s(dir)]);
        }
        for dir in self.read_only.iter().filter(|d| covered(d)) {
            add(&["--ro-bind", &s(dir), &s(dir)]);
        }
        // Mounts over mounts: the scratch first (writable, inside the read-only git dir), then
        // what goes inside it and what it stands in for, then the writable checkout.
        let objects = self.common.join("objects");
        let scratch = &self.scratch;
        add(&["--bind", &s(scratch), &s(scratch)]);
        // The real store, read-only, beside the scratch's; then the scratch in its place.
        add(&["--ro-bind", &s(&objects), &s(&scratch.join("real-objects"))]);
        add(&["--bind", &s(&scratch.join("objects")), &s(&objects)]);
        add(&[
            "--bind",
            &s(&scratch.join("heads")),
            &s(&self.common.join("refs").join("heads")),
        ]);
        add(&[
            "--bind",
            &s(&scratch.join("heads-logs")),
            &s(&self.common.join("logs").join("refs").join("heads")),
        ]);
        for dir in &self.writable {
            add(&["--bind", &s(dir), &s(dir)]);
        }
        for file in &self.pinned {
            add(&["--ro-bind", &s(file), &s(file)]);
        }
        // Last, over whatever came before: nothing the run can read signs as the person.
        for secret in &self.secrets {
            if secret.is_dir() {
                add(&["--tmpfs", &s(secret)]);
            } else {
                add(&["--ro-bind", "/dev/null", &s(secret)]);
            }
        }
        add(&["--chdir", &s(cwd), "--"]);
        out.extend(argv);
        out
    }

    /// The task branch as the run has it now (for progress), or `None`.
    pub fn branch_mark(&self) -> Option<Option<String>> {
        let (branch, _) = self.branch.as_ref()?;
        let name = branch.strip_prefix("loop/")?;
        Some(
            read_capped(&self.scratch.join("heads").join("loop").join(name), 4096)
                .map(|t| t.trim().to_string()),
        )
    }

    /// Takes what the run made: every new object (checked against its name) into the real
    /// store, and the task branch to where the run left it (by compare-and-swap from where it
    /// began). Then the scratch goes. Says what it did, and returns the outbox's text.
    pub fn harvest(self, repo: &Repo) -> Result<(Vec<String>, Option<String>)> {
        let mut said = Vec::new();
        if !self.is_on() {
            return Ok((said, None));
        }
        let outbox = self.outbox().and_then(|p| read_capped(&p, OUTBOX_BYTES));
        let (copied, refused) = copy_objects(repo, &self.scratch.join("objects"))?;
        if refused > 0 {
            said.push(format!(
                "refused {refused} object(s) of the run that did not hash to their names"
            ));
        }
        tracing::debug!("took {copied} object(s) from {}", self.scratch.display());
        if let Some((branch, start)) = &self.branch
            && let Some(Some(now)) = self.branch_mark()
            && let Ok(now) = crate::git::oid(&now)
            && Some(now) != *start
        {
            if repo.kind(now)? != Some(crate::git::Kind::Commit) {
                said.push(format!("left {branch}: the run pointed it at no commit"));
            } else {
                let name = crate::refs::branch(branch);
                let edit = match start {
                    Some(old) => Cas::Update {
                        name,
                        old: *old,
                        new: now,
                    },
                    None => Cas::Create { name, new: now },
                };
                if repo.cas(&[edit])? != CasOutcome::Applied {
                    let rescue = crate::rescue::save_rescue(repo, &self.task, now)?;
                    said.push(format!(
                        "{branch} moved outside the run meanwhile: the run's commits are in {rescue}"
                    ));
                }
            }
        }
        self.discard();
        Ok((said, outbox))
    }

    /// Drops the scratch (a gate's, or a run whose work is not taken).
    pub fn discard(self) {
        if self.is_on() {
            let _ = std::fs::remove_dir_all(&self.scratch);
        }
    }
}

/// The scratch directories runs left in `<git-common-dir>/loop/sandbox/`: a run whose runner
/// died leaves its scratch, and in it the work it made. Names that are not git-loop's are
/// passed over.
pub fn leftovers(repo: &Repo) -> Vec<Leftover> {
    let dir = repo.common_dir().join("loop").join("sandbox");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<Leftover> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let parts: Vec<&str> = name.split('.').collect();
            match parts.as_slice() {
                ["run", task, run, _] if crate::ids::is_full_id(task) => Some(Leftover::Run {
                    dir: e.path(),
                    task: task.to_string(),
                    run: run.to_string(),
                }),
                ["gate", tag, _] => Some(Leftover::Gate {
                    dir: e.path(),
                    tag: tag.to_string(),
                }),
                _ => None,
            }
        })
        .collect();
    out.sort_by(|a, b| a.dir().cmp(b.dir()));
    out
}

impl Leftover {
    pub fn dir(&self) -> &Path {
        match self {
            Leftover::Run { dir, .. } | Leftover::Gate { dir, .. } => dir,
        }
    }

    /// Takes a run's work ([`take_leftover`]) or drops a gate's scratch; then the scratch is
    /// gone. Says what it did.
    pub fn take(&self, repo: &Repo) -> Result<Vec<String>> {
        let mut said = match self {
            Leftover::Run { dir, task, .. } => take_leftover(repo, dir, task)?,
            Leftover::Gate { dir, .. } => {
                std::fs::remove_dir_all(dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
                Vec::new()
            }
        };
        said.push(format!("removed the scratch {}", self.dir().display()));
        Ok(said)
    }
}

/// Takes the work a dead run of task `task` left in its scratch `dir`: its objects into the
/// store, and the task's branch (`loop/<short>`; nothing else the scratch holds) — to where
/// the run left it when that only adds to the branch, else to a rescue ref. Then the scratch
/// goes. Says what it did.
pub fn take_leftover(repo: &Repo, dir: &Path, task: &str) -> Result<Vec<String>> {
    let mut said = Vec::new();
    let (copied, refused) = copy_objects(repo, &dir.join("objects"))?;
    if copied > 0 {
        said.push(format!("took {copied} object(s) the run made"));
    }
    if refused > 0 {
        said.push(format!(
            "refused {refused} object(s) that did not hash to their names"
        ));
    }
    let short = crate::ids::short(task);
    let name = format!("loop/{short}");
    let left = read_capped(&dir.join("heads").join("loop").join(short), 4096)
        .and_then(|t| crate::git::oid(t.trim()).ok());
    if let Some(commit) = left
        && repo.kind(commit)? == Some(crate::git::Kind::Commit)
    {
        let branch = crate::refs::branch(&name);
        let now = repo.read_ref(&branch)?;
        if now != Some(commit) {
            let forward = match now {
                Some(old) => repo.is_ancestor(old, commit)?,
                None => true,
            };
            let edit = match now {
                Some(old) => Cas::Update {
                    name: branch.clone(),
                    old,
                    new: commit,
                },
                None => Cas::Create {
                    name: branch.clone(),
                    new: commit,
                },
            };
            if forward && repo.cas(&[edit])? == CasOutcome::Applied {
                said.push(format!(
                    "moved {name} to the run's {}",
                    crate::ids::short(&commit.to_string())
                ));
            } else {
                let rescue = crate::rescue::save_rescue(repo, task, commit)?;
                said.push(format!("saved the run's {name} in {rescue}"));
            }
        }
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(said)
}

/// macOS's sandbox tool, by its full path.
const SANDBOX_EXEC: &str = "/usr/bin/sandbox-exec";

/// What a rule of a `sandbox-exec` profile does with its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    /// Writable, with everything below it but what is protected and pinned: the temporary
    /// directories and `agent.writable`.
    Writable,
    /// The run's own places, writable with everything below them but what is pinned: its
    /// checkout and worktree metadata, its scratch, the object store.
    Own,
    /// Writable, this path alone (the task branch's file, its lock and its reflog).
    WritableFile,
    /// Not writable below here by a `Writable` rule: the git dir, the person's checkout and
    /// the others, local remotes.
    Protected,
    /// Read-only, inside the run's own places (the checkout's `.git` file, say).
    Pinned,
}

impl Rule {
    fn param(self, i: usize) -> String {
        match self {
            Rule::Writable => format!("W{i}"),
            Rule::Own => format!("O{i}"),
            Rule::WritableFile => format!("F{i}"),
            Rule::Protected => format!("X{i}"),
            Rule::Pinned => format!("P{i}"),
        }
    }
}

/// What a run under `sandbox-exec` may write: its checkout and worktree metadata, its scratch,
/// the object store (as it is: macOS has no mount to put a scratch store in front of it) and,
/// of all refs, the task branch's file, its lock and its reflog; and the temporary directories
/// and `agent.writable` but for what is `protected` (a repository in /tmp stays read-only).
/// The files that say which repository the checkout is stay read-only.
fn seatbelt_rules(
    common: &Path,
    scratch: &Path,
    checkout: &Path,
    branch: Option<&str>,
    extra: &[PathBuf],
    protected: &[PathBuf],
) -> Result<Vec<(Rule, PathBuf)>> {
    std::fs::create_dir_all(scratch.join("tmp"))
        .with_context(|| format!("creating {}", scratch.display()))?;
    let mut rules = vec![
        (Rule::Own, checkout.to_path_buf()),
        (Rule::Own, scratch.to_path_buf()),
        (Rule::Own, common.join("objects")),
    ];
    let (admin, pinned) = pinned_files(checkout)?;
    rules.extend(pinned.into_iter().map(|p| (Rule::Pinned, p)));
    rules.extend(admin.map(|a| (Rule::Own, a)));
    rules.extend(protected.iter().map(|p| (Rule::Protected, p.clone())));
    for tmp in [
        PathBuf::from("/tmp"),
        PathBuf::from("/var/tmp"),
        std::env::temp_dir(),
    ] {
        if tmp.is_dir() {
            rules.push((Rule::Writable, tmp));
        }
    }
    rules.extend(
        extra
            .iter()
            .filter(|p| p.exists())
            .map(|p| (Rule::Writable, p.clone())),
    );
    if let Some(name) = branch.and_then(|b| b.strip_prefix("loop/")) {
        let refs = common.join("refs").join("heads").join("loop");
        let logs = common.join("logs").join("refs").join("heads").join("loop");
        std::fs::create_dir_all(&refs)?;
        std::fs::create_dir_all(&logs)?;
        rules.extend([
            // The directories themselves, which a person's `git pack-refs --prune` may remove
            // and git then makes again.
            (Rule::WritableFile, refs.clone()),
            (Rule::WritableFile, logs.clone()),
            (Rule::WritableFile, refs.join(name)),
            (Rule::WritableFile, refs.join(format!("{name}.lock"))),
            (Rule::WritableFile, logs.join(name)),
        ]);
    }
    // sandbox-exec matches the paths the kernel sees (`/private/var/…` for `/var/…`).
    Ok(rules
        .into_iter()
        .map(|(rule, path)| (rule, real_path(&path)))
        .collect())
}

/// `path` with symbolic links resolved, as far as it exists (a file not yet made keeps its
/// name under its resolved directory).
fn real_path(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => real_path(dir).join(name),
        _ => path.to_path_buf(),
    }
}

/// The `sandbox-exec` profile of `rules`: everything allowed but writing files, which is
/// denied but where a rule allows it, each allowing rule carrying its exceptions
/// (`require-not`), so that what is allowed does not hang on the order of rules. Paths are
/// never written into the profile: each is a parameter (`-D`), so that no path can change what
/// the profile says.
///
/// Weaker than the bwrap sandbox, and untested (SHORTCOMINGS.md): the object store is
/// writable as it is, and nothing ends what a run leaves behind (`setsid` daemons live on).
fn seatbelt_profile(rules: &[(Rule, PathBuf)]) -> String {
    let params = |kinds: &[Rule]| -> Vec<String> {
        rules
            .iter()
            .enumerate()
            .filter(|(_, (r, _))| kinds.contains(r))
            .map(|(i, (r, _))| r.param(i))
            .collect()
    };
    let not = |kinds: &[Rule]| -> String {
        params(kinds)
            .iter()
            .map(|p| format!(" (require-not (subpath (param \"{p}\")))"))
            .collect()
    };
    let (broad_not, own_not) = (not(&[Rule::Protected, Rule::Pinned]), not(&[Rule::Pinned]));
    let mut profile = String::from(
        "(version 1)\n(allow default)\n(deny file-write*)\n(allow file-write*\n  \
         (literal \"/dev/null\")\n  (literal \"/dev/zero\")\n  (literal \"/dev/tty\")\n  \
         (literal \"/dev/dtracehelper\")\n  (regex #\"^/dev/(fd/|ttys|pty)\")",
    );
    for p in params(&[Rule::Writable]) {
        profile.push_str(&format!(
            "\n  (require-all (subpath (param \"{p}\")){broad_not})"
        ));
    }
    for p in params(&[Rule::Own]) {
        profile.push_str(&format!(
            "\n  (require-all (subpath (param \"{p}\")){own_not})"
        ));
    }
    for p in params(&[Rule::WritableFile]) {
        profile.push_str(&format!("\n  (literal (param \"{p}\"))"));
    }
    profile.push_str(")\n");
    profile
}

/// The arguments of `sandbox-exec` that run `argv` under the profile of `rules`.
fn seatbelt_args(rules: &[(Rule, PathBuf)], argv: Vec<String>) -> Vec<String> {
    let mut out = vec!["-p".to_string(), seatbelt_profile(rules)];
    for (i, (rule, path)) in rules.iter().enumerate() {
        out.push(format!("-D{}={}", rule.param(i), path.to_string_lossy()));
    }
    out.push("--".into());
    out.extend(argv);
    out
}

/// Copies the loose branch refs under `from` (`refs/heads/`) to `to`, but for git-loop's own
/// (`loop/`, of which a run sees only its task's): regular files of at most 4 KiB, symbolic
/// links and lock files passed over. A copy that fails leaves that branch to `packed-refs` or
/// out of the run's view; nothing of it is ever taken back.
fn copy_loose_heads(from: &Path, to: &Path, depth: usize) {
    let Ok(entries) = std::fs::read_dir(from) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if depth == 0 && name == "loop" {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if meta.is_dir() && depth < 16 {
            if std::fs::create_dir_all(&dst).is_ok() {
                copy_loose_heads(&src, &dst, depth + 1);
            }
        } else if meta.is_file() && meta.len() <= 4096 && !name.to_string_lossy().ends_with(".lock")
        {
            let _ = std::fs::copy(&src, &dst);
        }
    }
}

/// At most `limit` bytes of the file at `path` as text (lossy), if it is a regular file (a
/// symbolic link a run left is not followed).
fn read_capped(path: &Path, limit: u64) -> Option<String> {
    use std::io::Read;
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(limit)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Writes every loose object under `dir` into the repository's store, if it hashes to its name
/// (an object that does not is refused: a run may write its own store, not damage another's).
/// Returns how many were copied and refused. Packs (which a run makes only by repacking) are
/// indexed by `git index-pack`, which checks every object; a pack it refuses counts as one
/// refused object. What is not a regular file where objects and packs are (a FIFO, a symbolic
/// link to one or to a device, a socket) is removed first, unread: reading it could block for
/// ever or never end.
fn copy_objects(repo: &Repo, dir: &Path) -> Result<(usize, usize)> {
    if !std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        return Ok((0, 0));
    }
    let mut removed = scrub(dir, &|name| {
        name == "pack" || name == "info" || is_fanout(name)
    });
    for sub in std::fs::read_dir(dir)?.flatten() {
        let name = sub.file_name().to_string_lossy().into_owned();
        if (name == "pack" || is_fanout(&name))
            && std::fs::symlink_metadata(sub.path()).is_ok_and(|m| m.is_dir())
        {
            removed += scrub(&sub.path(), &|_| false);
        }
    }
    let (copied, mut refused) = repo.import_loose(dir)?;
    refused += removed;
    if let Ok(packs) = std::fs::read_dir(dir.join("pack")) {
        for pack in packs.flatten() {
            if pack.path().extension().is_some_and(|e| e == "pack")
                && let Err(e) = repo.import_pack(&pack.path())
            {
                tracing::warn!("refused a pack of a run: {e:#}");
                refused += 1;
            }
        }
    }
    Ok((copied, refused))
}

/// Removes, from directory `dir`, each entry that is neither a regular file nor a directory
/// `keep_dir` names (a directory it does not is removed too). Returns how many went.
fn scrub(dir: &Path, keep_dir: &dyn Fn(&str) -> bool) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        let gone = if meta.is_file() {
            continue;
        } else if meta.is_dir() {
            if keep_dir(&name) {
                continue;
            }
            std::fs::remove_dir_all(entry.path())
        } else {
            std::fs::remove_file(entry.path())
        };
        if gone.is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Whether `name` is a loose-object directory's (two hex digits).
fn is_fanout(name: &str) -> bool {
    name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether `program` can be run from `cwd` (a bare name on PATH, or a path): in a sandbox the
/// sandbox is what is started, so a missing program must be found out before.
pub fn check_program(program: &str, cwd: &Path) -> std::result::Result<(), String> {
    if !program.contains('/') {
        return crate::process::which(program)
            .map(|_| ())
            .ok_or_else(|| "program not found on PATH".to_string());
    }
    let path = Path::new(program);
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd.join(path)
    };
    crate::process::executable(&path).map_err(str::to_string)
}

/// What a run in `checkout` must not write, whatever else it may: the person's checkout, every
/// other checkout of the repository, the git dir, and the remotes that are local paths.
fn read_only(repo: &Repo, checkout: &Path) -> Result<Vec<PathBuf>> {
    let common = repo.common_dir();
    let mut read_only = Vec::new();
    if let Some(w) = repo.workdir() {
        read_only.push(w.to_path_buf());
    }
    // Every other checkout of the repository, wherever it is (git-loop's own are in the
    // git dir, read-only as a whole: they come and go while the run lasts).
    for wt in repo.worktrees()? {
        if wt.path.is_dir()
            && wt.path != checkout
            && !wt.path.starts_with(common)
            && !read_only.contains(&wt.path)
        {
            read_only.push(wt.path);
        }
    }
    read_only.push(common.to_path_buf());
    read_only.extend(local_remotes(repo));
    Ok(read_only)
}

/// The worktree metadata directory of `checkout` (writable to a run in it), and the files
/// that say which repository the checkout is — its `.git`, and the metadata's `commondir`,
/// `gitdir` and `config.worktree` (made, empty, when missing). Every git git-loop runs there
/// after the run (outside any sandbox) reads them: they stay read-only inside the writable
/// checkout, so that a run cannot point it at a repository of its making, whose config runs
/// programs.
fn pinned_files(checkout: &Path) -> Result<(Option<PathBuf>, Vec<PathBuf>)> {
    let mut pinned = vec![checkout.join(".git")];
    let admin = worktree_admin(checkout);
    if let Some(admin) = &admin {
        let worktree_config = admin.join("config.worktree");
        if !worktree_config.exists() {
            std::fs::write(&worktree_config, "")
                .with_context(|| format!("creating {}", worktree_config.display()))?;
        }
        pinned.extend([
            admin.join("commondir"),
            admin.join("gitdir"),
            worktree_config,
        ]);
    }
    Ok((admin, pinned))
}

/// The worktree metadata directory of the checkout at `path` (what its `.git` file names).
fn worktree_admin(path: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(path.join(".git")).ok()?;
    let dir = PathBuf::from(text.trim().strip_prefix("gitdir: ")?);
    Some(if dir.is_absolute() {
        dir
    } else {
        path.join(dir)
    })
}

/// The remotes of the repository that are paths on this machine (where they fetch from, and
/// where they push to).
fn local_remotes(repo: &Repo) -> Vec<PathBuf> {
    repo.remote_names()
        .into_iter()
        .flat_map(|r| {
            ["url", "pushurl"]
                .into_iter()
                .filter_map(move |key| repo.config_string(&format!("remote.{r}.{key}")))
        })
        .filter_map(|url| {
            let path = url.strip_prefix("file://").unwrap_or(&url);
            let path = Path::new(path);
            let path = if path.is_absolute() {
                path.to_path_buf()
            } else {
                repo.workdir()?.join(path)
            };
            path.is_dir().then(|| path.canonicalize().ok()).flatten()
        })
        .collect()
}

/// `~` and `~/…` in the home directory (`$HOME`); an absolute path as it is; else nothing.
fn expand_home(path: &str) -> Option<PathBuf> {
    let home = || {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .filter(|h| h.is_absolute())
    };
    match path.strip_prefix('~') {
        Some("") => home(),
        Some(rest) => rest.strip_prefix('/').and_then(|r| Some(home()?.join(r))),
        None => Some(PathBuf::from(path)).filter(|p| p.is_absolute()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository laid out as git-loop lays one out, in a temporary directory (which a
    /// sandbox-exec run may write): a common dir, a worktree of a task with its metadata, a
    /// scratch, the person's checkout.
    fn layout(root: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
        let person = root.join("repo");
        let common = person.join(".git");
        let admin = common.join("worktrees").join("abc1234");
        let checkout = common.join("loop").join("worktrees").join("abc1234");
        let scratch = common.join("loop").join("sandbox").join("run.x.y.1");
        for d in [&admin, &checkout, &common.join("objects")] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(
            checkout.join(".git"),
            format!("gitdir: {}\n", admin.display()),
        )
        .expect(".git");
        for f in ["commondir", "gitdir"] {
            std::fs::write(admin.join(f), "x\n").expect("admin file");
        }
        (person, common, checkout, scratch)
    }

    /// An s-expression of a profile.
    #[derive(Debug)]
    enum Sexp {
        Atom(String),
        List(Vec<Sexp>),
    }

    fn parse(text: &str) -> Vec<Sexp> {
        fn list(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Vec<Sexp> {
            let mut items = Vec::new();
            while let Some(&c) = chars.peek() {
                match c {
                    '(' => {
                        chars.next();
                        items.push(Sexp::List(list(chars)));
                    }
                    ')' => {
                        chars.next();
                        return items;
                    }
                    c if c.is_whitespace() => {
                        chars.next();
                    }
                    '"' | '#' => {
                        // A string, or a regex (`#"…"`).
                        chars.next();
                        if c == '#' {
                            chars.next();
                        }
                        let mut atom = String::new();
                        for c in chars.by_ref() {
                            if c == '"' {
                                break;
                            }
                            atom.push(c);
                        }
                        items.push(Sexp::Atom(atom));
                    }
                    _ => {
                        let mut atom = String::new();
                        while let Some(&c) = chars.peek() {
                            if c.is_whitespace() || c == '(' || c == ')' {
                                break;
                            }
                            atom.push(c);
                            chars.next();
                        }
                        items.push(Sexp::Atom(atom));
                    }
                }
            }
            items
        }
        list(&mut text.chars().peekable())
    }

    /// Whether the filter `f` of a profile matches `path`, its parameters `params`.
    fn matches(f: &Sexp, path: &Path, params: &[(String, String)]) -> bool {
        let Sexp::List(items) = f else {
            panic!("not a filter: {f:?}")
        };
        let head = match &items[0] {
            Sexp::Atom(a) => a.as_str(),
            Sexp::List(_) => panic!("{f:?}"),
        };
        let value = |arg: &Sexp| -> String {
            match arg {
                Sexp::Atom(a) => a.clone(),
                Sexp::List(l) => match l.as_slice() {
                    [Sexp::Atom(p), Sexp::Atom(name)] if p == "param" => params
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_else(|| panic!("no parameter {name}")),
                    _ => panic!("{arg:?}"),
                },
            }
        };
        match head {
            "literal" => path == Path::new(&value(&items[1])),
            "subpath" => path.starts_with(value(&items[1])),
            "regex" => false,
            "require-all" => items[1..].iter().all(|i| matches(i, path, params)),
            "require-not" => !matches(&items[1], path, params),
            other => panic!("unknown filter {other}"),
        }
    }

    /// Whether the profile `seatbelt_args` gives lets a run write `path`: the last rule about
    /// file writes that matches decides.
    fn may_write(args: &[String], path: &Path) -> bool {
        let params: Vec<(String, String)> = args
            .iter()
            .filter_map(|a| a.strip_prefix("-D"))
            .filter_map(|a| a.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut allowed = true;
        for rule in parse(&args[1]) {
            let Sexp::List(items) = rule else { continue };
            let [Sexp::Atom(verb), Sexp::Atom(op), filters @ ..] = items.as_slice() else {
                continue;
            };
            if op != "file-write*" {
                continue;
            }
            if filters.is_empty() || filters.iter().any(|f| matches(f, path, &params)) {
                allowed = verb == "allow";
            }
        }
        allowed
    }

    #[test]
    fn a_seatbelt_run_may_write_its_checkout_the_store_and_its_branch_alone() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (person, common, checkout, scratch) = layout(&real_path(tmp.path()));
        let cache = real_path(tmp.path()).join("cache");
        std::fs::create_dir_all(&cache).expect("cache");
        let protected = vec![person.clone(), common.clone()];
        let rules = seatbelt_rules(
            &common,
            &scratch,
            &checkout,
            Some("loop/abc1234"),
            std::slice::from_ref(&cache),
            &protected,
        )
        .expect("rules");
        let args = seatbelt_args(&rules, vec!["agent".into()]);
        for ok in [
            checkout.join("src/lib.rs"),
            scratch.join("outbox"),
            common.join("objects/ab/cdef"),
            common.join("refs/heads/loop/abc1234"),
            common.join("refs/heads/loop/abc1234.lock"),
            common.join("logs/refs/heads/loop/abc1234"),
            common.join("worktrees/abc1234/index"),
            cache.join("npm/x"),
            PathBuf::from("/dev/null"),
        ] {
            assert!(may_write(&args, &ok), "{ok:?} is not writable: {}", args[1]);
        }
        for denied in [
            person.join("policy.toml"),
            common.join("config"),
            common.join("hooks/pre-push"),
            common.join("packed-refs"),
            common.join("refs/loop/tasks/x"),
            common.join("refs/heads/main"),
            common.join("refs/heads/loop/other12"),
            common.join("loop/worktrees/other12/x"),
            checkout.join(".git"),
            common.join("worktrees/abc1234/gitdir"),
            common.join("worktrees/abc1234/commondir"),
            common.join("worktrees/abc1234/config.worktree"),
            PathBuf::from("/etc/passwd"),
        ] {
            assert!(
                !may_write(&args, &denied),
                "{denied:?} is writable: {}",
                args[1]
            );
        }
        // A gate's run moves no branch.
        let gate =
            seatbelt_rules(&common, &scratch, &checkout, None, &[], &protected).expect("rules");
        let args = seatbelt_args(&gate, vec!["gate".into()]);
        assert!(!may_write(&args, &common.join("refs/heads/loop/abc1234")));
    }

    #[test]
    fn a_seatbelt_profile_names_no_path() {
        let hostile = PathBuf::from("/tmp/a\") (allow file-write* (subpath \"/\")) (\"");
        let rules = vec![
            (Rule::Writable, hostile.clone()),
            (Rule::WritableFile, PathBuf::from("/r/refs/heads/loop/abc")),
            (Rule::Protected, PathBuf::from("/r")),
            (Rule::Pinned, PathBuf::from("/w/.git")),
        ];
        let args = seatbelt_args(&rules, vec!["agent".into(), "--flag".into()]);
        let profile = &args[1];
        assert!(!profile.contains("/tmp/a"), "{profile}");
        assert!(profile.starts_with("(version 1)\n(allow default)\n(deny file-write*)\n"));
        // Balanced parentheses, outside strings.
        let mut depth = 0i32;
        let mut in_string = false;
        for c in profile.chars() {
            match c {
                '"' => in_string = !in_string,
                '(' if !in_string => depth += 1,
                ')' if !in_string => depth -= 1,
                _ => {}
            }
            assert!(depth >= 0, "{profile}");
        }
        assert_eq!(depth, 0, "{profile}");
        assert_eq!(args[0], "-p");
        assert_eq!(args[2], format!("-DW0={}", hostile.display()));
        assert_eq!(args[3], "-DF1=/r/refs/heads/loop/abc");
        assert_eq!(&args[6..], ["--", "agent", "--flag"]);
        assert!(!may_write(&args, Path::new("/etc/passwd")));
        assert!(may_write(&args, Path::new("/r/refs/heads/loop/abc")));
    }
}

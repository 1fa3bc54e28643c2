//! The `git` binary, for what gix does not do well: push, fetch, worktrees, `merge-tree`, notes
//! and status. Every call goes through [`Git`]; nothing else in git-loop spawns `git`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result};

use crate::error::{Class, LoopError};

/// Set on every push git-loop makes, so that its own pre-push hook can recognise a promotion.
pub const PROMOTE_ENV: &str = "GIT_LOOP_PROMOTE";

/// Runs `git` in one directory (a work tree or a git dir).
#[derive(Clone, Debug)]
pub struct Git {
    dir: PathBuf,
    /// Identity for commands that write commits or notes when the repository configures none.
    fallback_identity: bool,
    env: Vec<(String, String)>,
    own_group: bool,
    /// The lock file that serialises git-loop's `git worktree` calls on this repository.
    worktree_lock: Option<PathBuf>,
    /// How long a command may take before its process group is killed (see [`Git::within`]).
    deadline: Option<std::time::Duration>,
}

/// The result of `git merge-tree`.
#[derive(Debug, PartialEq, Eq)]
pub enum MergeTree {
    Clean(String),
    Conflict(Vec<String>),
}

/// One ref update of a push, as the porcelain output reports it.
#[derive(Debug, Clone)]
pub struct PushedRef {
    pub flag: char,
    pub to: String,
    pub summary: String,
}

/// Runs `cmd` (in a process group of its own) to its end or until `deadline`, whichever comes
/// first: its output, or `None` when the deadline came first and the group was killed.
fn output_within(
    mut cmd: Command,
    deadline: std::time::Duration,
) -> std::io::Result<Option<Output>> {
    use std::os::unix::process::CommandExt;
    let child = cmd
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let group = child.id();
    let (done, watch) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        // A message or a hang-up: the command ended in time. A timeout: it did not.
        let late = matches!(
            watch.recv_timeout(deadline),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        );
        if late {
            crate::process::signal_group(group, crate::process::Signal::Kill);
        }
        late
    });
    let out = child.wait_with_output();
    let _ = done.send(());
    let late = watchdog.join().unwrap_or(false);
    let out = out?;
    Ok((!late).then_some(out))
}

/// What a push did, classified.
#[derive(Debug)]
pub enum Push {
    /// Every ref was updated or already up to date.
    Ok(Vec<PushedRef>),
    /// The remote moved under us (lease or fast-forward check failed): retry later.
    LostRace(String),
    /// The remote refused the update (a hook, a protected branch): a person must act.
    Rejected(String),
}

impl Git {
    pub fn new(dir: impl Into<PathBuf>, fallback_identity: bool) -> Git {
        Git {
            dir: dir.into(),
            fallback_identity,
            env: Vec::new(),
            own_group: false,
            worktree_lock: None,
            deadline: None,
        }
    }

    /// The same, each command given `deadline` to finish: past it, its process group (git and
    /// the transport it started) is killed and the command fails as `transient`. For commands
    /// that talk to a remote, which may hang rather than refuse; a push cut short so may or
    /// may not have been applied there, which the next fetch shows.
    pub fn within(mut self, deadline: std::time::Duration) -> Git {
        self.deadline = Some(deadline);
        self
    }

    /// The same, with `key=value` in every command's environment.
    pub fn with_env(mut self, key: &str, value: &str) -> Git {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The same, running each command in a process group of its own, so that a signal to
    /// git-loop's group does not stop git half way through a checkout.
    pub fn in_own_process_group(&self) -> Git {
        Git {
            own_group: true,
            ..self.clone()
        }
    }

    /// The same, serialising every `git worktree` call through an OS lock under
    /// `<common_dir>/loop/locks/`: `git worktree add` leaves a moment in which a concurrent
    /// `git worktree prune` deletes the worktree it is making.
    pub fn locking_worktrees(mut self, common_dir: &Path) -> Git {
        self.worktree_lock = Some(crate::lockfile::path(common_dir, "worktrees"));
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The same git in another directory.
    pub fn in_dir(&self, dir: impl Into<PathBuf>) -> Git {
        Git {
            dir: dir.into(),
            ..self.clone()
        }
    }

    /// The same git in the checkout at `path`, never reaching past it for a repository: a
    /// checkout under `.git/loop/worktrees/` whose `.git` file is gone (a removal under way)
    /// must fail, not fall through to the repository's own git dir.
    pub fn in_worktree(&self, path: &Path) -> Git {
        let git = self.in_dir(path);
        match path.parent() {
            Some(parent) if parent.is_absolute() && !parent.to_string_lossy().contains(':') => {
                git.with_env("GIT_CEILING_DIRECTORIES", &parent.to_string_lossy())
            }
            _ => git,
        }
    }

    fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("git");
        // git-loop reads what git prints (push porcelain, worktree lists, errors it classifies):
        // in git's own words, whatever the user's language.
        cmd.env("LC_ALL", "C").env_remove("LANGUAGE");
        // git-loop runs maintenance itself, once per promotion, not after every fetch and push.
        cmd.arg("-c").arg("maintenance.auto=false");
        // Never a program a checkout's config names to watch the file system: git-loop runs
        // git in checkouts agents have worked in.
        cmd.arg("-c").arg("core.fsmonitor=false");
        // Nor a git in a repository an agent made inside its checkout: its config (filters,
        // hooks, fsmonitor) is the agent's. git-loop's git never looks into submodules.
        cmd.arg("-c").arg("submodule.recurse=false");
        cmd.arg("-c").arg("diff.ignoreSubmodules=all");
        cmd.arg("-C").arg(&self.dir).args(args);
        cmd.stdin(Stdio::null());
        if self.fallback_identity {
            for (k, v) in [
                ("GIT_AUTHOR_NAME", super::FALLBACK_NAME),
                ("GIT_AUTHOR_EMAIL", super::FALLBACK_EMAIL),
                ("GIT_COMMITTER_NAME", super::FALLBACK_NAME),
                ("GIT_COMMITTER_EMAIL", super::FALLBACK_EMAIL),
            ] {
                if std::env::var_os(k).is_none() {
                    cmd.env(k, v);
                }
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if self.own_group {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        cmd
    }

    /// Runs git and returns its output, whatever its exit status.
    pub fn output<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Output> {
        let _held = match (&self.worktree_lock, args.first()) {
            (Some(path), Some(first)) if first.as_ref() == "worktree" => {
                Some(crate::lockfile::wait(path)?)
            }
            _ => None,
        };
        let mut cmd = self.command(args);
        let shown = describe(args);
        tracing::debug!("running {shown} in {}", self.dir.display());
        let started = std::time::Instant::now();
        let cannot = |e: std::io::Error| -> anyhow::Error {
            LoopError::new(Class::Config, format!("cannot run git: {e}"))
                .with_hint("install git and make sure it is on PATH")
                .into()
        };
        let out = match self.deadline {
            None => cmd.output().map_err(cannot)?,
            Some(deadline) => match output_within(cmd, deadline).map_err(cannot)? {
                Some(out) => out,
                None => {
                    return Err(LoopError::new(
                        Class::Transient,
                        format!(
                            "{shown} got no answer within {}: the remote may hang",
                            crate::time::format_duration(deadline)
                        ),
                    )
                    .with_hint("try again when the remote answers")
                    .into());
                }
            },
        };
        tracing::debug!(
            "{shown}: exit {:?} after {} ms",
            out.status.code(),
            started.elapsed().as_millis()
        );
        Ok(out)
    }

    /// Runs git; fails (generic) with its stderr unless it exits 0. Returns stdout.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String> {
        let out = self.output(args)?;
        if !out.status.success() {
            anyhow::bail!(
                "{} failed: {}",
                describe(args),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs git with `input` on stdin and returns its output, whatever its exit status.
    pub fn output_stdin<S: AsRef<OsStr>>(&self, args: &[S], input: &[u8]) -> Result<Output> {
        use std::io::Write;
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        tracing::debug!("running {} in {}", describe(args), self.dir.display());
        let mut child = cmd.spawn().context("cannot run git")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input).context("writing to git")?;
        }
        child.wait_with_output().context("waiting for git")
    }

    /// Runs git with `input` on stdin; fails unless it exits 0. Returns stdout.
    pub fn run_stdin<S: AsRef<OsStr>>(&self, args: &[S], input: &[u8]) -> Result<String> {
        let out = self.output_stdin(args, input)?;
        if !out.status.success() {
            anyhow::bail!(
                "{} failed: {}",
                describe(args),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs git with the file `input` as its stdin (read by git, never into memory here); fails
    /// unless it exits 0.
    pub fn run_file_stdin<S: AsRef<OsStr>>(&self, args: &[S], input: std::fs::File) -> Result<()> {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::from(input))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        tracing::debug!("running {} in {}", describe(args), self.dir.display());
        let out = cmd.output().context("cannot run git")?;
        if !out.status.success() {
            anyhow::bail!(
                "{} failed: {}",
                describe(args),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// `git worktree add <options> <path> <commitish>`, the worktree marked `locked`
    /// ("initializing") until the add is complete, whatever the locale. git marks every
    /// worktree it adds so, but in the user's language, and git-loop recognises an add cut
    /// short by that mark (see `Repo::interrupted_adds`); with `--lock --reason` the mark is
    /// the same in every language, and it is lifted here once git has finished (its
    /// `post-checkout` hook too), under the same worktrees lock.
    pub fn worktree_add(&self, options: &[&str], path: &Path, commitish: &str) -> Result<()> {
        let _held = match &self.worktree_lock {
            Some(lock) => Some(crate::lockfile::wait(lock)?),
            None => None,
        };
        let unlocked = Git {
            worktree_lock: None,
            ..self.clone()
        };
        let shown = path.to_string_lossy();
        let mut args = vec!["worktree", "add", "--lock", "--reason", "initializing"];
        args.extend_from_slice(options);
        args.extend([shown.as_ref(), commitish]);
        unlocked.run(&args)?;
        let path = self.dir.join(path);
        let link = std::fs::read_to_string(path.join(".git"))
            .with_context(|| format!("reading {}/.git", path.display()))?;
        let admin = link
            .trim()
            .strip_prefix("gitdir:")
            .map(|d| path.join(d.trim()))
            .with_context(|| format!("{}/.git names no git dir", path.display()))?;
        match std::fs::remove_file(admin.join("locked")) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("unlocking the worktree {}", path.display())),
        }
    }

    /// Merges `theirs` into `ours` without touching any index or work tree.
    pub fn merge_tree(&self, ours: &str, theirs: &str) -> Result<MergeTree> {
        let out = self.output(&[
            "merge-tree",
            "--write-tree",
            "--name-only",
            "--no-messages",
            "-z",
            ours,
            theirs,
        ])?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut fields = stdout.split('\0').filter(|f| !f.is_empty());
        let tree = fields.next().unwrap_or_default().trim().to_string();
        match out.status.code() {
            Some(0) => Ok(MergeTree::Clean(tree)),
            Some(1) => {
                let mut paths: Vec<String> = fields.map(str::to_string).collect();
                paths.dedup();
                Ok(MergeTree::Conflict(paths))
            }
            _ => anyhow::bail!(
                "git merge-tree {ours} {theirs} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
    }

    /// Pushes `specs` (`<src>:<dst>`) to `remote` atomically, with the given leases
    /// (`<ref>:<expected>`, an empty expectation meaning "must not exist"). Never forces.
    pub fn push(&self, remote: &str, leases: &[String], specs: &[String]) -> Result<Push> {
        self.push_with(&[], remote, leases, specs)
    }

    /// Pushes loop state (`refs/loop/*`, its notes) like [`Git::push`], without the local
    /// pre-push hook (which guards branches, and which an agent may have rewritten) and never
    /// asking for credentials on a terminal.
    pub fn push_state(&self, remote: &str, leases: &[String], specs: &[String]) -> Result<Push> {
        self.clone().with_env("GIT_TERMINAL_PROMPT", "0").push_with(
            &["--no-verify"],
            remote,
            leases,
            specs,
        )
    }

    fn push_with(
        &self,
        options: &[&str],
        remote: &str,
        leases: &[String],
        specs: &[String],
    ) -> Result<Push> {
        let mut args: Vec<String> = vec!["push".into(), "--atomic".into(), "--porcelain".into()];
        args.extend(options.iter().map(|o| o.to_string()));
        for lease in leases {
            args.push(format!("--force-with-lease={lease}"));
        }
        args.push(remote.into());
        args.extend(specs.iter().cloned());
        let out = self.output(&args)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let refs: Vec<PushedRef> = stdout.lines().filter_map(parse_porcelain).collect();
        if refs.is_empty() {
            if out.status.success() {
                return Ok(Push::Ok(refs));
            }
            // Refused before any ref was sent, with no fatal error: the local pre-push hook.
            if stderr.contains("failed to push some refs") && !stderr.contains("fatal:") {
                return Ok(Push::Rejected(format!(
                    "the pre-push hook refused it: {}",
                    stderr.trim()
                )));
            }
            // Otherwise the remote could not be talked to.
            return Err(classify_unreachable(remote, &stderr));
        }
        let rejected: Vec<&PushedRef> = refs.iter().filter(|r| r.flag == '!').collect();
        if rejected.is_empty() && out.status.success() {
            return Ok(Push::Ok(refs));
        }
        let why = rejected
            .iter()
            .map(|r| format!("{}: {}", r.to, r.summary))
            .collect::<Vec<_>>()
            .join("; ");
        // A ref the remote moved or locked under us is a lost race; anything else the remote
        // said no to (a hook, a protected branch) is a refusal.
        let lost_race = !rejected.is_empty() && rejected.iter().all(|r| is_race(&r.summary));
        if lost_race {
            Ok(Push::LostRace(why))
        } else if rejected.is_empty() {
            Err(classify_unreachable(remote, &stderr))
        } else {
            Ok(Push::Rejected(why))
        }
    }

    /// What `remote` has at `refname`, asked of the remote itself.
    pub fn ls_remote(&self, remote: &str, refname: &str) -> Result<Option<String>> {
        let out = self.output(&["ls-remote", "--refs", remote, refname])?;
        if !out.status.success() {
            return Err(classify_unreachable(
                remote,
                &String::from_utf8_lossy(&out.stderr),
            ));
        }
        Ok(listed_id(&out.stdout, refname))
    }

    /// What `remote` has at `refname`, like [`Git::ls_remote`], but giving up after `timeout`
    /// (a remote that does not answer is `transient`). git runs in a process group of its own,
    /// which is killed whole on timeout, so that no ssh child outlives the call.
    pub fn ls_remote_within(
        &self,
        remote: &str,
        refname: &str,
        timeout: std::time::Duration,
    ) -> Result<Option<String>> {
        let out = self
            .clone()
            .with_env("GIT_TERMINAL_PROMPT", "0")
            .within(timeout)
            .output(&["ls-remote", "--refs", remote, refname])
            .map_err(|e| match crate::error::class_of(&e) {
                Class::Transient => LoopError::new(
                    Class::Transient,
                    format!(
                        "the remote {remote} did not answer within {}",
                        crate::time::format_duration(timeout)
                    ),
                )
                .with_hint("try again when the remote is reachable")
                .into(),
                _ => e,
            })?;
        if !out.status.success() {
            return Err(classify_unreachable(
                remote,
                &String::from_utf8_lossy(&out.stderr),
            ));
        }
        let stdout = out.stdout;
        Ok(listed_id(&stdout, refname))
    }

    /// Which of `paths` (relative to the work tree root, `/`-separated) are in the index:
    /// `git ls-files --error-unmatch` semantics, for many paths in one call.
    pub fn tracked(&self, paths: &[String]) -> Result<std::collections::HashSet<String>> {
        if paths.is_empty() {
            return Ok(Default::default());
        }
        let mut args: Vec<&str> =
            vec!["--literal-pathspecs", "ls-files", "-z", "--full-name", "--"];
        args.extend(paths.iter().map(String::as_str));
        let listed = self.run(&args)?;
        let listed: std::collections::HashSet<&str> =
            listed.split('\0').filter(|p| !p.is_empty()).collect();
        Ok(paths
            .iter()
            .filter(|p| listed.contains(p.as_str()))
            .cloned()
            .collect())
    }

    /// `git --version`, as git prints it (`git version 2.47.1`).
    pub fn version(&self) -> Result<String> {
        Ok(self.run(&["--version"])?.trim().to_string())
    }

    /// Fetches `refspec` from `remote` (into a remote-tracking namespace, never refs/loop/*).
    pub fn fetch(&self, remote: &str, refspec: &str) -> Result<()> {
        let out = self.output(&["fetch", "--quiet", "--no-tags", remote, refspec])?;
        if !out.status.success() {
            return Err(classify_unreachable(
                remote,
                &String::from_utf8_lossy(&out.stderr),
            ));
        }
        Ok(())
    }

    /// Fetches loop state from `remote` with `refspecs` (into its tracking refs, forced:
    /// they are only ever the remote's view), pruning tracking refs the remote no longer has.
    pub fn fetch_state(&self, remote: &str, refspecs: &[String]) -> Result<()> {
        let mut args: Vec<String> = [
            "fetch",
            "--quiet",
            "--no-tags",
            "--prune",
            "--no-write-fetch-head",
            "--no-recurse-submodules",
            remote,
        ]
        .map(String::from)
        .to_vec();
        args.extend(refspecs.iter().cloned());
        let out = self
            .clone()
            .with_env("GIT_TERMINAL_PROMPT", "0")
            .output(&args)?;
        if !out.status.success() {
            return Err(classify_unreachable(
                remote,
                &String::from_utf8_lossy(&out.stderr),
            ));
        }
        Ok(())
    }

    /// Whether tracked files have staged or unstaged changes (untracked files do not count:
    /// git itself refuses to overwrite them).
    pub fn has_tracked_changes(&self) -> Result<bool> {
        Ok(!self
            .run(&[
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--ignore-submodules=all",
            ])?
            .trim()
            .is_empty())
    }

    /// Whether the work tree has uncommitted changes or untracked files that are not ignored
    /// (submodules aside: git would run a git in each, with the submodule's own config).
    pub fn is_dirty(&self) -> Result<bool> {
        Ok(!self
            .run(&[
                "status",
                "--porcelain",
                "--untracked-files=normal",
                "--ignore-submodules=all",
            ])?
            .trim()
            .is_empty())
    }
}

/// A `git update-ref --stdin` kept running, to which ref transactions are handed one after
/// another (`start`, the edits, `prepare`, `commit`): git's own locking of every ref and of
/// `packed-refs`, without a process per transaction.
///
/// git checks a ref that has no loose file against the copy of `packed-refs` it read last,
/// trusting it while the file's inode, size and times in whole seconds are unchanged. A new
/// process reads the file afresh; so a process is used again only while `packed-refs` is the
/// very file it was when the process started (identity to the nanosecond, see
/// [`super::file_identity`]), and is replaced by a new one otherwise.
///
/// git ends the process when a transaction fails (a lost compare-and-swap, a held lock): its
/// message is returned, and the next transaction starts a new process. After `start`, git
/// aborts a transaction its input ends in the middle of, so a kill of git-loop while it writes
/// one changes nothing. The process runs in a process group of its own, so that a signal meant
/// for git-loop's group (`git loop stop`, Ctrl-C) does not end it in the middle of a
/// transaction; it ends when git-loop does, at the end of its input.
pub struct RefTransactions {
    git: Git,
    running: Option<Running>,
}

struct Running {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    /// git's stderr: an unlinked file, read from where it stood when a transaction began.
    stderr: std::fs::File,
    /// `packed-refs` as it was before the process started.
    packed: Option<super::FileIdentity>,
}

/// What became of one transaction.
#[derive(Debug, PartialEq, Eq)]
pub enum Transaction {
    Committed,
    /// git refused it and said why (its whole message, `fatal:` included); nothing changed.
    Failed(String),
}

impl RefTransactions {
    /// Transactions in the repository whose (common) git dir is `git_dir`, by `git` with its
    /// environment.
    pub fn new(git: &Git, git_dir: &Path) -> RefTransactions {
        let shown = git_dir.to_string_lossy();
        RefTransactions {
            git: git
                .in_dir(git_dir)
                .with_env("GIT_DIR", &shown)
                // Its messages are classified by their words.
                .with_env("LC_ALL", "C")
                .in_own_process_group(),
            running: None,
        }
    }

    /// The running process's id, if one runs.
    pub fn pid(&self) -> Option<u32> {
        self.running.as_ref().map(|r| r.child.id())
    }

    fn packed_refs(&self) -> Option<super::FileIdentity> {
        super::file_identity(&self.git.dir.join("packed-refs"))
    }

    fn start(&self) -> Result<Running> {
        let packed = self.packed_refs();
        let stderr = tempfile::tempfile().context("making a file for git's messages")?;
        let mut cmd = self.git.command(["update-ref", "--stdin"]);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr.try_clone().context("sharing git's message file")?);
        tracing::debug!(
            "running git update-ref --stdin in {}",
            self.git.dir.display()
        );
        let mut child = cmd.spawn().map_err(|e| -> anyhow::Error {
            LoopError::new(Class::Config, format!("cannot run git: {e}"))
                .with_hint("install git and make sure it is on PATH")
                .into()
        })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            anyhow::bail!("git update-ref --stdin started without its pipes");
        };
        Ok(Running {
            child,
            stdin,
            stdout: std::io::BufReader::new(stdout),
            stderr,
            packed,
        })
    }

    /// Ends the process (it may be mid-nothing: between transactions git holds no lock).
    fn end(mut running: Running) {
        drop(running.stdin);
        let _ = running.child.wait();
    }

    /// Runs one transaction: `edits` is `update-ref --stdin` lines (`delete <ref> <old>`, ...),
    /// each ending in a newline.
    pub fn run(&mut self, edits: &str) -> Result<Transaction> {
        use std::io::{BufRead, Read, Seek, Write};
        use std::os::unix::process::ExitStatusExt;
        let text = format!("start\n{edits}prepare\ncommit\n");
        // A process killed from outside since the last transaction is found out before it is
        // given anything, or having read it without getting as far as `prepare`: either way
        // nothing changed, and the transaction goes to a new process.
        for fresh in [false, true] {
            let mut running = match self.running.take() {
                Some(running) if running.packed == self.packed_refs() => running,
                Some(stale) => {
                    Self::end(stale);
                    self.start()?
                }
                None => self.start()?,
            };
            let from = running.stderr.metadata().map(|m| m.len()).unwrap_or(0);
            if running.stdin.write_all(text.as_bytes()).is_err() {
                let _ = running.child.kill();
                let _ = running.child.wait();
                if fresh {
                    anyhow::bail!("git update-ref --stdin ended before it read a transaction");
                }
                continue;
            }
            let mut answered = Vec::new();
            let mut line = String::new();
            for _ in 0..3 {
                line.clear();
                match running.stdout.read_line(&mut line) {
                    Ok(n) if n > 0 => answered.push(line.trim().to_string()),
                    _ => break,
                }
            }
            if answered == ["start: ok", "prepare: ok", "commit: ok"] {
                self.running = Some(running);
                return Ok(Transaction::Committed);
            }
            // git ended: it says why on stderr.
            drop(running.stdin);
            let status = running.child.wait().context("waiting for git update-ref")?;
            let mut bytes = Vec::new();
            if running.stderr.seek(std::io::SeekFrom::Start(from)).is_ok() {
                let _ = running.stderr.read_to_end(&mut bytes);
            }
            let message = String::from_utf8_lossy(&bytes).trim().to_string();
            let prepared = answered.iter().any(|a| a == "prepare: ok");
            let killed = status.signal().is_some();
            if !killed && !prepared && !message.is_empty() {
                return Ok(Transaction::Failed(message));
            }
            // Killed before `prepare` was done: no ref changed (a lock it left is found by the
            // next try, as any held lock is).
            if killed && !prepared && !fresh {
                continue;
            }
            anyhow::bail!(
                "git update-ref --stdin ended ({status}) after {answered:?}; whether the transaction was committed is unknown: {message}"
            );
        }
        anyhow::bail!("git update-ref --stdin could not be started")
    }
}

/// The object id `git ls-remote` printed for `refname`, if it did.
fn listed_id(stdout: &[u8], refname: &str) -> Option<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .find(|l| l.ends_with(&format!("\t{refname}")))
        .and_then(|l| l.split('\t').next())
        .map(str::to_string)
}

/// The oldest git git-loop supports: `git merge-tree --write-tree` (promotion's conflict check)
/// came with 2.38.
pub const MIN_GIT: (u32, u32, u32) = (2, 38, 0);

/// The version in what `git --version` prints: `git version 2.39.3 (Apple Git-146)`,
/// `git version 2.45.1.windows.1` → (2, 39, 3), (2, 45, 1). A missing patch level is 0.
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let word = text
        .trim()
        .strip_prefix("git version ")?
        .split_whitespace()
        .next()?;
    let mut parts = word.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

/// Whether a rejected ref's reason means the remote changed or was busy, not that it refused.
fn is_race(summary: &str) -> bool {
    [
        "stale info",
        "fetch first",
        "non-fast-forward",
        "already exists",
        "atomic push failed",
        "atomic transaction failed",
        "cannot lock ref",
        "failed to lock",
        "unable to lock",
        "failed to update ref",
        "incorrect old value",
    ]
    .iter()
    .any(|r| summary.contains(r))
}

/// `git <args>` for messages.
fn describe<S: AsRef<OsStr>>(args: &[S]) -> String {
    let mut s = String::from("git");
    for a in args {
        s.push(' ');
        s.push_str(&a.as_ref().to_string_lossy());
    }
    s
}

/// `<flag>\t<from>:<to>\t<summary>` → the ref update.
fn parse_porcelain(line: &str) -> Option<PushedRef> {
    let mut parts = line.splitn(3, '\t');
    let flag = parts.next()?.chars().next()?;
    if !matches!(flag, ' ' | '+' | '-' | '*' | '!' | '=') {
        return None;
    }
    let refs = parts.next()?;
    let to = refs.rsplit(':').next()?.to_string();
    let summary = parts.next().unwrap_or_default().to_string();
    Some(PushedRef { flag, to, summary })
}

/// A failure to talk to a remote: credentials and a missing remote are `config`, the rest
/// (network, a repository that has moved) `transient`.
fn classify_unreachable(remote: &str, stderr: &str) -> anyhow::Error {
    let text = stderr.trim();
    let lower = text.to_lowercase();
    if lower.contains("authentication failed")
        || lower.contains("permission denied")
        || lower.contains("could not read username")
        || lower.contains("terminal prompts disabled")
    {
        return LoopError::new(
            Class::Config,
            format!("the remote {remote} refused the credentials: {text}"),
        )
        .with_hint("fix the credentials for this remote; retrying will not help")
        .into();
    }
    if lower.contains("couldn't find remote ref") {
        return LoopError::new(
            Class::Config,
            format!("the remote {remote} lacks a branch git-loop needs: {text}"),
        )
        .with_hint("push the target branch there, or fix loop.target / loop.remote in policy.toml")
        .into();
    }
    if lower.contains("cannot lock ref")
        || (lower.contains("unable to create") && lower.contains(".lock"))
    {
        return LoopError::new(
            Class::Transient,
            format!("another git process is updating the same refs: {text}"),
        )
        .with_hint("try again in a moment")
        .into();
    }
    LoopError::new(
        Class::Transient,
        format!("cannot reach the remote {remote}: {text}"),
    )
    .with_hint("try again when the remote is reachable")
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn porcelain_lines() {
        let r = parse_porcelain("!\trefs/heads/x:refs/heads/main\t[rejected] (stale info)")
            .expect("parsed");
        assert_eq!(r.flag, '!');
        assert_eq!(r.to, "refs/heads/main");
        assert!(r.summary.contains("stale info"));
        assert!(parse_porcelain("To /tmp/remote.git").is_none());
        assert!(is_race("[remote rejected] (atomic transaction failed)"));
        assert!(is_race("[rejected] (stale info)"));
        assert!(!is_race("[remote rejected] (pre-receive hook declined)"));
        assert!(parse_porcelain("Done").is_none());
    }

    #[test]
    fn a_remote_that_does_not_answer_is_given_up_on_with_its_children() {
        let dir = tempfile::tempdir().expect("tmp");
        let git = Git::new(dir.path(), false).with_env("GIT_CONFIG_NOSYSTEM", "1");
        git.run(&["init", "-q"]).expect("init");
        git.run(&["config", "protocol.ext.allow", "always"])
            .expect("config");
        // The transport is a `sleep`: it holds git's pipes until it is killed.
        let started = std::time::Instant::now();
        let err = git
            .ls_remote_within(
                "ext::sleep 30",
                "refs/heads/main",
                std::time::Duration::from_millis(300),
            )
            .expect_err("no answer");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the whole group was killed, not just git: {:?}",
            started.elapsed()
        );
        let found = crate::error::find(&err).expect("classified");
        assert_eq!(found.class, Class::Transient);
        assert!(
            found.message.contains("did not answer"),
            "{}",
            found.message
        );
    }

    /// A repository with refs `refs/x/a` .. `refs/x/e` at one commit, and a `Git` for it
    /// that runs hermetically.
    fn repo_with_refs(dir: &Path) -> (Git, String) {
        let git = Git::new(dir, false)
            .with_env("GIT_CONFIG_GLOBAL", "/dev/null")
            .with_env("GIT_CONFIG_NOSYSTEM", "1")
            .with_env("GIT_AUTHOR_NAME", "t")
            .with_env("GIT_AUTHOR_EMAIL", "t@example.com")
            .with_env("GIT_COMMITTER_NAME", "t")
            .with_env("GIT_COMMITTER_EMAIL", "t@example.com")
            .with_env("LC_ALL", "C");
        git.run(&["init", "-q"]).expect("init");
        let head = empty_commit(&git, "x");
        for name in ["a", "b", "c", "d", "e"] {
            git.run(&["update-ref", &format!("refs/x/{name}"), &head])
                .expect("ref");
        }
        (git, head)
    }

    /// Commits nothing with `message`; returns the new commit's id.
    fn empty_commit(git: &Git, message: &str) -> String {
        git.run(&["commit", "-q", "--allow-empty", "-m", message])
            .expect("commit");
        git.run(&["rev-parse", "HEAD"])
            .expect("head")
            .trim()
            .to_string()
    }

    fn refs_left(git: &Git) -> String {
        git.run(&["for-each-ref", "--format=%(refname)", "refs/x/"])
            .expect("for-each-ref")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs a transaction that must commit.
    fn commits(tx: &mut RefTransactions, edits: &str) {
        assert_eq!(
            tx.run(edits).expect(edits),
            Transaction::Committed,
            "{edits}"
        );
    }

    /// Runs a transaction that git must refuse; returns what git said.
    fn refused(tx: &mut RefTransactions, edits: &str) -> String {
        match tx.run(edits).expect(edits) {
            Transaction::Failed(why) => why,
            Transaction::Committed => panic!("committed: {edits}"),
        }
    }

    #[test]
    fn ref_transactions_run_one_after_another_in_one_git() {
        let dir = tempfile::tempdir().expect("tmp");
        let (git, head) = repo_with_refs(dir.path());
        let mut tx = RefTransactions::new(&git, &dir.path().join(".git"));
        commits(&mut tx, &format!("delete refs/x/a {head}\n"));
        let first = tx.pid().expect("running");
        commits(
            &mut tx,
            &format!("delete refs/x/b {head}\nverify refs/x/c {head}\n"),
        );
        assert_eq!(tx.pid(), Some(first), "the same process took both");
        assert_eq!(refs_left(&git), "refs/x/c refs/x/d refs/x/e");

        // A lost compare-and-swap: git says why and ends; nothing of it is applied.
        let why = refused(
            &mut tx,
            &format!("delete refs/x/c {head}\ndelete refs/x/a {head}\n"),
        );
        assert!(why.contains("cannot lock ref"), "{why}");
        assert_eq!(tx.pid(), None);
        assert_eq!(refs_left(&git), "refs/x/c refs/x/d refs/x/e");

        // A held lock is reported as git words it.
        std::fs::write(dir.path().join(".git/refs/x/d.lock"), "").expect("lock");
        let why = refused(&mut tx, &format!("delete refs/x/d {head}\n"));
        assert!(why.contains("File exists"), "{why}");
        std::fs::remove_file(dir.path().join(".git/refs/x/d.lock")).expect("unlock");

        // The next transaction gets a new process.
        commits(&mut tx, &format!("delete refs/x/c {head}\n"));
        assert_ne!(tx.pid(), Some(first));
        assert_eq!(refs_left(&git), "refs/x/d refs/x/e");
    }

    /// git trusts its copy of `packed-refs` while the file's size and times in whole seconds
    /// look the same (`core.checkStat=minimal`: nothing else): a process kept from before a
    /// `git pack-refs` must not decide from it.
    #[test]
    fn ref_transactions_see_packed_refs_rewritten_since_the_last_one() {
        let dir = tempfile::tempdir().expect("tmp");
        let (git, a) = repo_with_refs(dir.path());
        git.run(&["config", "core.checkStat", "minimal"])
            .expect("config");
        let b = empty_commit(&git, "y");
        git.run(&["pack-refs", "--all"]).expect("pack");
        let mut tx = RefTransactions::new(&git, &dir.path().join(".git"));
        // The process reads packed-refs: refs/x/c is at a there.
        commits(&mut tx, &format!("verify refs/x/c {a}\n"));
        // Moved to b and packed again: a file of the same size, most likely in the same second.
        git.run(&["update-ref", "refs/x/c", &b]).expect("move");
        git.run(&["pack-refs", "--all"]).expect("pack");
        let why = refused(&mut tx, &format!("delete refs/x/c {a}\n"));
        assert!(why.contains("cannot lock ref"), "{why}");
        assert_eq!(
            git.run(&["rev-parse", "refs/x/c"]).expect("c").trim(),
            b,
            "refs/x/c kept its value"
        );
    }

    #[test]
    fn ref_transactions_survive_their_git_being_killed() {
        let dir = tempfile::tempdir().expect("tmp");
        let (git, head) = repo_with_refs(dir.path());
        let mut tx = RefTransactions::new(&git, &dir.path().join(".git"));
        commits(&mut tx, &format!("delete refs/x/a {head}\n"));
        let pid = tx.pid().expect("running");
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
        // Whether the end is seen when writing or when reading, the transaction is given to a
        // new process and applied once.
        commits(&mut tx, &format!("delete refs/x/b {head}\n"));
        assert_ne!(tx.pid(), Some(pid));
        assert_eq!(refs_left(&git), "refs/x/c refs/x/d refs/x/e");
    }

    #[test]
    fn git_versions() {
        assert_eq!(parse_version("git version 2.47.1\n"), Some((2, 47, 1)));
        assert_eq!(
            parse_version("git version 2.39.3 (Apple Git-146)"),
            Some((2, 39, 3))
        );
        assert_eq!(
            parse_version("git version 2.45.1.windows.1"),
            Some((2, 45, 1))
        );
        assert_eq!(parse_version("git version 2.38"), Some((2, 38, 0)));
        assert_eq!(parse_version("git version 2.48.0-rc1"), Some((2, 48, 0)));
        assert_eq!(parse_version("hub version 2.14.2"), None);
        assert!(parse_version("git version 2.37.7").is_some_and(|v| v < MIN_GIT));
    }
}

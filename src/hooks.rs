//! Hooks (SPEC §11): the shims git-loop installs, and what `post-commit` and `pre-push` do.
//!
//! The shim templates are this repository's `hooks/` directory, compiled in. Installing moves a
//! pre-existing hook aside to `<name>.git-loop-chained`, which the shim runs first; uninstalling
//! moves it back, so what was there before is restored byte for byte.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::error::{Class, LoopError};
use crate::git::Repo;
use crate::git::cli::{Git, PROMOTE_ENV};
use crate::policy::Policy;
use crate::store::{Edit, Store};
use crate::task::{self, State, Task};
use crate::time::Timestamp;

/// The hooks git-loop installs, with their templates.
pub const HOOKS: [(&str, &str); 2] = [
    ("post-commit", include_str!("../hooks/post-commit")),
    ("pre-push", include_str!("../hooks/pre-push")),
];

/// The mark of a git-loop shim; the number after it is the shim's version.
pub const MARKER: &str = "# git-loop hook shim v";
pub const CHAINED_SUFFIX: &str = ".git-loop-chained";
const BIN_PLACEHOLDER: &str = "@GIT_LOOP_BIN@";

/// Where a hook stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookState {
    /// The current shim is installed.
    Installed,
    /// A git-loop shim of another version or binary path: `diff` shows how it differs.
    Outdated { diff: String },
    /// No git-loop shim; `foreign` when another tool's hook is there (install will chain it).
    Missing { foreign: bool },
    /// Another tool replaced git-loop's shim (the hook git-loop chained is still aside).
    Clobbered,
}

#[derive(Debug, Clone)]
pub struct HookStatus {
    pub name: &'static str,
    pub path: PathBuf,
    pub state: HookState,
    /// A pre-existing hook chained by the shim.
    pub chained: Option<PathBuf>,
}

/// The effective hooks directory (`git rev-parse --git-path hooks`, so `core.hooksPath` and
/// worktrees are respected), and whether it lies inside the repository.
pub fn hooks_dir(repo: &Repo, git: &Git) -> Result<(PathBuf, bool)> {
    let out = git.run(&["rev-parse", "--git-path", "hooks"])?;
    let raw = PathBuf::from(out.trim_end_matches(['\n', '\r']));
    let dir = if raw.is_absolute() {
        raw
    } else {
        git.dir().join(raw)
    };
    let resolved = resolve(&dir);
    let inside = [repo.workdir(), Some(repo.common_dir())]
        .into_iter()
        .flatten()
        .any(|root| resolved.starts_with(resolve(root)));
    Ok((resolved, inside))
}

/// A path with its existing part canonicalised (the rest may not exist yet).
fn resolve(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => resolve(parent).join(name),
        _ => path.to_path_buf(),
    }
}

/// The shim for `template`, calling `bin` by absolute path.
pub fn render(template: &str, bin: &Path) -> String {
    let quoted = bin.to_string_lossy().replace('\'', r"'\''");
    template.replace(BIN_PLACEHOLDER, &quoted)
}

/// The absolute path of this git-loop binary.
pub fn current_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the git-loop binary")?;
    Ok(exe.canonicalize().unwrap_or(exe))
}

fn is_shim(content: &[u8]) -> bool {
    String::from_utf8_lossy(content).contains(MARKER)
}

fn chained_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(CHAINED_SUFFIX);
    PathBuf::from(s)
}

/// The state of each hook in `dir`, against the shims this binary would install.
pub fn status(dir: &Path, bin: &Path) -> Vec<HookStatus> {
    HOOKS
        .iter()
        .map(|(name, template)| {
            let path = dir.join(name);
            let chained = chained_path(&path);
            let chained = chained.exists().then_some(chained);
            let state = match std::fs::read(&path) {
                Err(_) => HookState::Missing { foreign: false },
                Ok(content) if is_shim(&content) => {
                    let want = render(template, bin);
                    let have = String::from_utf8_lossy(&content);
                    if have == want {
                        HookState::Installed
                    } else {
                        HookState::Outdated {
                            diff: similar::TextDiff::from_lines(have.as_ref(), want.as_str())
                                .unified_diff()
                                .header("installed", "current")
                                .to_string(),
                        }
                    }
                }
                Ok(_) if chained.is_some() => HookState::Clobbered,
                Ok(_) => HookState::Missing { foreign: true },
            };
            HookStatus {
                name,
                path,
                state,
                chained,
            }
        })
        .collect()
}

/// Installs (or updates) the shims in `dir`, chaining any other hook. Returns what it did.
pub fn install(dir: &Path, bin: &Path) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut done = Vec::new();
    for st in status(dir, bin) {
        let template = HOOKS
            .iter()
            .find(|(n, _)| *n == st.name)
            .map(|(_, t)| *t)
            .unwrap_or_default();
        match st.state {
            HookState::Installed => done.push(format!("{}: already installed", st.name)),
            HookState::Clobbered => {
                return Err(LoopError::new(
                    Class::Config,
                    format!(
                        "{} is another tool's hook, and {} (the hook git-loop chained) is still there",
                        st.path.display(),
                        chained_path(&st.path).display()
                    ),
                )
                .with_hint(
                    "decide which of the two hooks to keep, remove or merge the other, then install again",
                )
                .into());
            }
            HookState::Missing { foreign: true } => {
                let aside = chained_path(&st.path);
                std::fs::rename(&st.path, &aside)
                    .with_context(|| format!("moving {} aside", st.path.display()))?;
                write_shim(&st.path, &render(template, bin))?;
                done.push(format!(
                    "{}: installed; the hook that was there runs first ({})",
                    st.name,
                    aside.display()
                ));
            }
            HookState::Missing { foreign: false } => {
                write_shim(&st.path, &render(template, bin))?;
                done.push(format!("{}: installed", st.name));
            }
            HookState::Outdated { .. } => {
                write_shim(&st.path, &render(template, bin))?;
                done.push(format!("{}: updated", st.name));
            }
        }
    }
    Ok(done)
}

/// Removes the shims from `dir` and restores the hooks they chained. Returns what it did.
pub fn uninstall(dir: &Path, bin: &Path) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for st in status(dir, bin) {
        let aside = chained_path(&st.path);
        match st.state {
            HookState::Installed | HookState::Outdated { .. } => {
                if aside.exists() {
                    std::fs::rename(&aside, &st.path)
                        .with_context(|| format!("restoring {}", st.path.display()))?;
                    done.push(format!("{}: removed; the previous hook is back", st.name));
                } else {
                    std::fs::remove_file(&st.path)
                        .with_context(|| format!("removing {}", st.path.display()))?;
                    done.push(format!("{}: removed", st.name));
                }
            }
            HookState::Missing { foreign: false } if aside.exists() => {
                std::fs::rename(&aside, &st.path)
                    .with_context(|| format!("restoring {}", st.path.display()))?;
                done.push(format!("{}: the previous hook is back", st.name));
            }
            HookState::Missing { .. } => done.push(format!("{}: not installed", st.name)),
            HookState::Clobbered => done.push(format!(
                "{}: left as it is (another tool's hook); {} is the hook git-loop had chained",
                st.name,
                aside.display()
            )),
        }
    }
    Ok(done)
}

fn write_shim(path: &Path, content: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = chained_path(path).with_extension("git-loop-tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(content.as_bytes())?;
    f.set_permissions(std::fs::Permissions::from_mode(0o755))?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("installing {}", path.display()))
}

// ---- post-commit ----------------------------------------------------------------------------

/// What the post-commit hook did, for its one line of output.
#[derive(Debug, Default)]
pub struct PostCommit {
    pub task: Option<String>,
    pub filed: Vec<(String, &'static str)>,
}

/// In a loop worktree: note the new commit (task, run), mark progress for stall detection, and
/// file tasks from `Loop-Task:` / `Loop-Blocker:` trailers. Elsewhere, during a rebase, and in
/// a sandboxed run (whose commits the runner takes after it), nothing.
pub fn post_commit(repo: &Repo, cwd: &Path) -> Result<PostCommit> {
    let mut out = PostCommit::default();
    if repo.operation_in_progress() {
        return Ok(out);
    }
    let store = Store::new(repo);
    let task_id = match std::env::var("GIT_LOOP_TASK") {
        Ok(id) if !id.is_empty() => store.resolve(&id)?,
        _ => {
            let worktrees = repo.common_dir().join("loop").join("worktrees");
            let cwd = cwd.canonicalize().unwrap_or_else(|_| cwd.to_path_buf());
            let Ok(rest) = cwd.strip_prefix(worktrees.canonicalize().unwrap_or(worktrees)) else {
                return Ok(out);
            };
            let Some(short) = rest.components().next() else {
                return Ok(out);
            };
            store.resolve(&short.as_os_str().to_string_lossy())?
        }
    };
    out.task = Some(task_id.clone());
    // In a sandbox, which cannot write refs, the runner takes every new commit of the run
    // after it (see `runner::worker`).
    if std::env::var_os("GIT_LOOP_OUTBOX").is_some() {
        return Ok(out);
    }
    let head = repo.head_commit()?.context("HEAD has no commit")?;
    let run = std::env::var("GIT_LOOP_RUN").unwrap_or_default();
    mark_progress(repo, &task_id, head)?;
    out.filed = take_commit(repo, &store, &task_id, &run, head)?;
    Ok(out)
}

/// What a commit of a task's run means to the loop: a note on it (task, run), and the tasks its
/// `Loop-Task:` / `Loop-Blocker:` trailers file (a blocker makes the task wait for it). The
/// post-commit hook does it as the commit is made; the runner does it again after a run for
/// every new commit of the branch (inside a sandbox the hook cannot write refs). Filing twice
/// files once.
pub fn take_commit(
    repo: &Repo,
    store: &Store<'_>,
    task_id: &str,
    run: &str,
    commit: gix::ObjectId,
) -> Result<Vec<(String, &'static str)>> {
    let note = if run.is_empty() {
        format!("task: {task_id}\n")
    } else {
        format!("task: {task_id}\nrun: {run}\n")
    };
    repo.set_note(crate::refs::NOTES, commit, &note)?;
    let message = repo.commit_info(commit)?.message;
    let subject = message.lines().next().unwrap_or_default().to_string();
    let mut filed = Vec::new();
    for (key, title) in trailers(&message) {
        let kind: &'static str = match key.as_str() {
            "Loop-Task" => "Loop-Task",
            "Loop-Blocker" => "Loop-Blocker",
            _ => continue,
        };
        let body = format!(
            "Filed by the {kind} trailer of commit {} (\"{}\") in task {}.\n",
            &commit.to_string()[..7],
            crate::output::safe(&subject, false),
            &task_id[..7]
        );
        let id = file_discovered(repo, store, task_id, &title, &body, None)?;
        if kind == "Loop-Blocker" {
            wait_for(store, task_id, &id)?;
        }
        filed.push((id, kind));
    }
    Ok(filed)
}

/// What a run of task `task_id` leaves for the loop besides its branch, taken after it (what
/// the post-commit hook does outside a sandbox, which a sandboxed run cannot): notes on the
/// new commits between `start` and `head` (first parents, at most 50), the tasks their
/// `Loop-Task:` / `Loop-Blocker:` trailers name, and the tasks it put in its `outbox`. Trouble
/// here is said, never the run's failure.
pub fn take_run(
    repo: &Repo,
    store: &Store<'_>,
    task_id: &str,
    run: &str,
    (start, head): (Option<gix::ObjectId>, Option<gix::ObjectId>),
    outbox: Option<&str>,
) {
    let short = crate::ids::short(task_id);
    let mut commits = Vec::new();
    let mut next = head.filter(|h| Some(*h) != start);
    while let Some(c) = next {
        if Some(c) == start || commits.len() >= 50 {
            break;
        }
        commits.push(c);
        next = repo
            .commit_info(c)
            .ok()
            .and_then(|i| i.parents.first().copied());
    }
    for c in commits.into_iter().rev() {
        if let Err(e) = take_commit(repo, store, task_id, run, c) {
            tracing::warn!("{short}: the commit {c}: {e:#}");
        }
    }
    let Some(text) = outbox else {
        return;
    };
    match file_outbox(repo, store, task_id, text) {
        Ok(filed) => {
            for f in filed {
                match f {
                    Ok(id) => tracing::info!("{short}: filed {}", crate::ids::short(&id)),
                    Err(why) => tracing::warn!("{short}: outbox: {why}"),
                }
            }
        }
        Err(e) => tracing::warn!("{short}: outbox: {e:#}"),
    }
}

/// Makes task `id` wait for `blocker` (a `Loop-Blocker:` it filed).
fn wait_for(store: &Store<'_>, id: &str, blocker: &str) -> Result<()> {
    store.update(id, |t| {
        if t.after.iter().any(|a| a == blocker) {
            return Ok(Edit::new("unchanged"));
        }
        t.after.push(blocker.to_string());
        Ok(Edit::new(format!(
            "edit: after: waits for {} (Loop-Blocker)",
            &blocker[..7]
        )))
    })?;
    Ok(())
}

/// One task an agent's run filed to its outbox (`git loop task add` inside a sandbox, which
/// cannot write refs), as a JSON line.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Outboxed {
    /// The id `task add` printed, which the task is filed under when it is still free.
    pub id: String,
    pub title: String,
    #[serde(default)]
    pub body: String,
    /// The run's task waits for it.
    #[serde(default)]
    pub blocker: bool,
}

/// Appends `task` to the outbox at `path`.
pub fn write_outbox(path: &Path, task: &Outboxed) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(task)?)?;
    Ok(())
}

/// Files the tasks a run of task `from` wrote to its outbox (`text`: JSON lines; each task
/// discovered from it, and triaged like any task). Lines that do not read are skipped, said in
/// the result; at most 100 are taken.
pub fn file_outbox(
    repo: &Repo,
    store: &Store<'_>,
    from: &str,
    text: &str,
) -> Result<Vec<std::result::Result<String, String>>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()).take(100) {
        let entry: Outboxed = match serde_json::from_str(line) {
            Ok(e) => e,
            Err(e) => {
                out.push(Err(format!("an outbox line that does not read: {e}")));
                continue;
            }
        };
        let body = if entry.body.trim().is_empty() {
            format!(
                "Filed by the run of task {} (its outbox).\n",
                crate::ids::short(from)
            )
        } else {
            entry.body.clone()
        };
        match file_discovered(repo, store, from, &entry.title, &body, Some(&entry.id)) {
            Ok(id) => {
                if entry.blocker {
                    wait_for(store, from, &id)?;
                }
                out.push(Ok(id));
            }
            Err(e) => out.push(Err(format!("{e:#}"))),
        }
    }
    Ok(out)
}

/// Records that task `id` made progress with `commit`: the runner's stall detector reads
/// `<git-common-dir>/loop/progress/<id>` (a commit id and a time).
pub fn mark_progress(repo: &Repo, id: &str, commit: gix::ObjectId) -> Result<()> {
    let dir = repo.common_dir().join("loop").join("progress");
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(format!(".{id}.{}", std::process::id()));
    std::fs::write(
        &tmp,
        format!("{commit} {}\n", Timestamp::now().to_rfc3339()),
    )?;
    std::fs::rename(&tmp, dir.join(id))?;
    Ok(())
}

/// Files a task discovered from `from`, unless an open one with this title already is, under
/// the id `wanted` when it is a free full id.
fn file_discovered(
    repo: &Repo,
    store: &Store<'_>,
    from: &str,
    title: &str,
    body: &str,
    wanted: Option<&str>,
) -> Result<String> {
    let title = title.trim();
    task::check_title(title)?;
    let listed = store.list()?;
    // Every id taken, a task that does not read included.
    let ids: Vec<String> = listed.iter().map(|l| l.id.clone()).collect();
    let tasks: Vec<Task> = listed.into_iter().filter_map(|l| l.task.ok()).collect();
    if let Some(existing) = tasks.iter().find(|t| {
        t.discovered_from.as_deref() == Some(from)
            && t.title == title
            && !matches!(t.state, State::Done | State::Cancelled)
    }) {
        return Ok(existing.id.clone());
    }
    let parent = store.load(from)?.task;
    let policy = repo.workdir().map(Policy::load).transpose()?.flatten();
    let triage = policy.map(|p| p.triage).unwrap_or_default();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    // An id the run chose (what `task add` printed inside its sandbox) is taken only when no
    // task has it, nor its short id (its branch's name).
    let id = match wanted {
        Some(w)
            if crate::ids::is_full_id(w)
                && !refs
                    .iter()
                    .any(|r| crate::ids::short(r) == crate::ids::short(w)) =>
        {
            w.to_string()
        }
        _ => crate::ids::generate(&refs),
    };
    let thin = task::triage(body, &triage);
    let mut task = Task::new(
        id.clone(),
        title.to_string(),
        body.to_string(),
        parent.batch,
        thin,
    );
    task.priority = parent.priority;
    task.discovered_from = Some(from.to_string());
    hold_past_the_limit(&tasks, &triage, &mut task);
    store.create(&task)?;
    Ok(id)
}

/// Discovered work is bounded: below one task a person filed, at most `triage.max_discovered`
/// tasks an agent filed run before a person looks. `task`, discovered (from `discovered_from`)
/// past that, waits for them (`human_gated: discovery_limit`), and runs no agent that could
/// file more.
pub fn hold_past_the_limit(tasks: &[Task], triage: &crate::policy::TriageSection, task: &mut Task) {
    let Some(from) = task.discovered_from.as_deref() else {
        return;
    };
    let parents: std::collections::HashMap<&str, &str> = tasks
        .iter()
        .filter_map(|t| Some((t.id.as_str(), t.discovered_from.as_deref()?)))
        .collect();
    let root = root_of(&parents, from);
    let below = parents
        .keys()
        .filter(|id| **id != root && root_of(&parents, id) == root)
        .count();
    if below >= triage.max_discovered as usize {
        task.state = State::HumanGated;
        task.reason = Some(task::Reason::DiscoveryLimit);
        task.detail = Some(format!(
            "{below} tasks were already discovered below task {} (triage.max_discovered = {}); \
             `git loop task reopen` runs this one",
            crate::ids::short(root),
            triage.max_discovered
        ));
    }
}

/// The task a person filed that `id` was discovered from, through its `discovered_from` chain
/// (`id` itself when it was not discovered; a chain that loops ends where it meets itself).
fn root_of<'a>(parents: &std::collections::HashMap<&'a str, &'a str>, id: &'a str) -> &'a str {
    let mut at = id;
    let mut seen = std::collections::HashSet::new();
    while seen.insert(at) {
        match parents.get(at) {
            Some(parent) => at = parent,
            None => break,
        }
    }
    at
}

/// The `Key: value` lines of a message's trailer block (its last paragraph).
pub fn trailers(message: &str) -> Vec<(String, String)> {
    let last = message.trim_end().rsplit("\n\n").next().unwrap_or_default();
    last.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(": ")?;
            let key = key.trim();
            (!key.is_empty() && !key.contains(' ') && !value.trim().is_empty())
                .then(|| (key.to_string(), value.trim().to_string()))
        })
        .collect()
}

// ---- pre-push -------------------------------------------------------------------------------

/// Why a push is refused, if it is: a direct update of the target (with
/// `promote.guard_target`, unless `git loop promote` is pushing), an update of
/// `refs/loop/oracle`, or a target whose runtime manifest is broken.
pub fn pre_push(repo: &Repo, policy: &Policy, refs: &str) -> Result<Vec<String>> {
    let target = format!("refs/heads/{}", policy.loop_.target);
    // A promotion says so in the environment; what it may push is only what a promotion of
    // that task, running now, has recorded as its merge (an environment is easy to forge).
    let promoting = match std::env::var(PROMOTE_ENV) {
        Ok(id) if !id.is_empty() => crate::promote::pushing(repo, &id)?,
        _ => None,
    };
    let mut refusals = Vec::new();
    for line in refs.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_local_ref, local_sha, remote_ref, remote_sha] = fields[..] else {
            continue;
        };
        if remote_ref == crate::refs::ORACLE {
            refusals.push(
                "refs/loop/oracle is the pin of the frozen finish line; only a person re-pins it, \
                 with `git loop init --repin`"
                    .to_string(),
            );
            continue;
        }
        if remote_ref != target {
            continue;
        }
        // Creating the target on a remote that lacks it publishes no ungated change over gated
        // work; every later update goes through promotion.
        let creating = remote_sha.bytes().all(|b| b == b'0');
        let promoted = promoting.is_some_and(|m| crate::git::oid(local_sha).ok() == Some(m));
        if policy.promote.guard_target && !promoted && !creating {
            refusals.push(format!(
                "{} is promoted into by git-loop (promote.guard_target): a direct push would skip \
                 the gates{}",
                policy.loop_.target,
                if std::env::var_os(PROMOTE_ENV).is_some() {
                    format!(
                        " ({PROMOTE_ENV} names no running promotion that is pushing {})",
                        &local_sha[..local_sha.len().min(7)]
                    )
                } else {
                    String::new()
                }
            ));
            continue;
        }
        let deleting = local_sha.bytes().all(|b| b == b'0');
        if !deleting {
            let commit = crate::git::oid(local_sha)?;
            for path in &policy.runtime.manifest {
                if repo.file_at(commit, path)?.is_none() {
                    refusals.push(format!(
                        "the pushed {} ({}) lacks the runtime file {path}: a fresh clone could not run the loop",
                        policy.loop_.target,
                        &local_sha[..local_sha.len().min(7)]
                    ));
                }
            }
        }
    }
    Ok(refusals)
}

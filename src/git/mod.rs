//! Git access in one place: opening the repository, reading refs and objects, writing objects,
//! and compare-and-swap ref transactions, all through gix; [`cli`] runs the `git` binary for
//! what gix does not do well. Nothing outside this module names a gix type other than
//! `ObjectId`, and nothing outside [`cli`] spawns `git`.

pub mod cli;
pub mod shared;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use gix::ObjectId;
use gix::bstr::ByteSlice;
use gix::refs::Target;
use gix::refs::transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog};

use crate::error::{Class, LoopError};

/// A ref lock this old belongs to a writer that died: ref transactions hold locks for
/// milliseconds.
const STALE_LOCK: std::time::Duration = std::time::Duration::from_secs(1);

/// How old a worktree's metadata, marked as being added but naming no checkout, must be to be
/// taken for what a killed `git worktree add` left.
const HALF_MADE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// How old a lock file of git's (`*.lock` under the git dir, outside git-loop's own) must be
/// to be taken for what a killed git left: git holds them for the length of one command.
pub const STALE_GIT_LOCK: std::time::Duration = std::time::Duration::from_secs(600);

/// The `git update-ref --stdin` process of each repository (by common dir) this process has
/// deleted refs in.
static REF_TRANSACTIONS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<PathBuf, cli::RefTransactions>>,
> = std::sync::LazyLock::new(Default::default);

/// Files read by [`Repo::file_at`] from the last few commits asked about, by repository. What
/// a path holds in a commit never changes (short of `git replace`, which a process that
/// already read the commit does not see): the runner's breaker, preflight and pin checks ask
/// for the same few files of the target's tip in turn.
mod files_at {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use gix::ObjectId;

    /// How many commits are remembered, and the largest file kept.
    const COMMITS: usize = 4;
    const LARGEST: usize = 64 * 1024;

    type Files = HashMap<String, Option<Vec<u8>>>;
    static MEMO: Mutex<Vec<(PathBuf, ObjectId, Files)>> = Mutex::new(Vec::new());

    pub(super) fn get(repo: &Path, commit: ObjectId, path: &str) -> Option<Option<Vec<u8>>> {
        let memo = MEMO.lock().ok()?;
        memo.iter()
            .find(|(r, c, _)| *c == commit && r == repo)
            .and_then(|(_, _, files)| files.get(path).cloned())
    }

    pub(super) fn put(repo: &Path, commit: ObjectId, path: &str, found: &Option<Vec<u8>>) {
        if found.as_ref().is_some_and(|f| f.len() > LARGEST) {
            return;
        }
        let Ok(mut memo) = MEMO.lock() else {
            return;
        };
        // The most recently asked commit last.
        let mut files = match memo.iter().position(|(r, c, _)| *c == commit && r == repo) {
            Some(i) => memo.remove(i).2,
            None => Files::new(),
        };
        files.insert(path.to_string(), found.clone());
        memo.push((repo.to_path_buf(), commit, files));
        if memo.len() > COMMITS {
            memo.remove(0);
        }
    }
}

/// Name and e-mail used when the repository configures no identity.
pub const FALLBACK_NAME: &str = "git-loop";
pub const FALLBACK_EMAIL: &str = "git-loop@localhost";

/// How two commits relate, as [`Repo::near_ancestry`] finds it.
enum Near {
    Same,
    FirstIsAncestor,
    SecondIsAncestor,
}

/// An open repository.
pub struct Repo {
    repo: gix::Repository,
    /// The identity of the packed-refs file gix's buffer was last refreshed from.
    packed: std::sync::Mutex<Option<FileIdentity>>,
    /// The remote loop state is shared through (`loop.remote`), once looked up.
    shared: std::sync::OnceLock<Option<(String, std::time::Duration)>>,
}

/// What tells one version of a file from the next: device, inode, size, modification and
/// status-change times. `git pack-refs` writes a new file and renames it into place, so the
/// inode alone changes every time, even within one tick of the file system's clock (unless a
/// file system hands a freed inode number out again at once: then the times tell).
pub type FileIdentity = (u64, u64, u64, i64, i64, i64, i64);

/// The identity of the file at `path`, if there is one.
pub fn file_identity(path: &Path) -> Option<FileIdentity> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| {
        (
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        )
    })
}

/// What a ref is (see [`Repo::ref_target`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefTarget {
    Missing,
    Object(ObjectId),
    Symbolic(String),
}

/// One edit of a compare-and-swap transaction. All edits of a transaction succeed or none does.
#[derive(Clone, Debug)]
pub enum Cas {
    /// Create `name` at `new`; it must not exist.
    Create { name: String, new: ObjectId },
    /// Move `name` from exactly `old` to `new`.
    Update {
        name: String,
        old: ObjectId,
        new: ObjectId,
    },
    /// Delete `name`, which must be exactly `old`.
    Delete { name: String, old: ObjectId },
    /// Require `name` to still be exactly `old`, without changing it.
    Verify { name: String, old: ObjectId },
}

impl std::fmt::Display for Cas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cas::Create { name, new } => write!(f, "create {name} {new}"),
            Cas::Update { name, old, new } => write!(f, "update {name} {old} -> {new}"),
            Cas::Delete { name, old } => write!(f, "delete {name} {old}"),
            Cas::Verify { name, old } => write!(f, "verify {name} {old}"),
        }
    }
}

/// Every ref transaction, for `GIT_LOOP_LOG=debug`.
fn trace_edits(edits: &[Cas], outcome: &str) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        let shown: Vec<String> = edits.iter().map(ToString::to_string).collect();
        tracing::debug!("refs {outcome}: {}", shown.join("; "));
    }
}

impl Cas {
    pub fn name(&self) -> &str {
        match self {
            Cas::Create { name, .. }
            | Cas::Update { name, .. }
            | Cas::Delete { name, .. }
            | Cas::Verify { name, .. } => name,
        }
    }
}

/// What became of a compare-and-swap transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    Applied,
    /// Some expectation did not hold (or a ref was locked by another writer): nothing changed.
    Lost,
}

/// A ref and what it points at.
#[derive(Clone, Debug)]
pub struct RefTip {
    pub name: String,
    /// `None` for a symbolic ref.
    pub id: Option<ObjectId>,
}

/// What a ref's commit chain looks like, one commit at a time.
#[derive(Clone, Debug)]
pub struct CommitInfo {
    pub id: ObjectId,
    pub tree: ObjectId,
    pub parents: Vec<ObjectId>,
    pub time: i64,
    pub author: String,
    pub message: String,
    /// Whether it carries an SSH signature (a `gpgsig` header; git checks it, not this).
    pub ssh_signed: bool,
}

/// A worktree of the repository: the main one or a linked one.
#[derive(Debug, Clone)]
pub struct Worktree {
    pub path: PathBuf,
    /// The branch checked out (`refs/heads/…`), if HEAD is attached.
    pub branch: Option<String>,
    /// Its directory is gone: `git worktree prune` would remove it.
    pub prunable: bool,
    /// Its git directory (the common dir for the main worktree).
    pub git_dir: PathBuf,
}

impl Worktree {
    /// What this worktree is in the middle of that works on `branch` (`refs/heads/…`): a
    /// rebase of it, or a merge, cherry-pick or revert onto it while it is checked out. A
    /// branch moved under such an operation makes git's own last step fail.
    pub fn operating_on(&self, branch: &str) -> Option<&'static str> {
        for (dir, what) in [("rebase-merge", "rebasing"), ("rebase-apply", "rebasing")] {
            let head = std::fs::read_to_string(self.git_dir.join(dir).join("head-name"));
            if head.is_ok_and(|h| h.trim() == branch) {
                return Some(what);
            }
        }
        if self.branch.as_deref() != Some(branch) {
            return None;
        }
        [
            ("MERGE_HEAD", "merging"),
            ("CHERRY_PICK_HEAD", "cherry-picking"),
            ("REVERT_HEAD", "reverting"),
        ]
        .into_iter()
        .find(|(file, _)| self.git_dir.join(file).exists())
        .map(|(_, what)| what)
    }
}

/// The kind of an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Commit,
    Tree,
    Blob,
    Tag,
}

impl Repo {
    /// Opens the repository that contains `dir`, honouring `GIT_DIR` and friends.
    pub fn discover(dir: &Path) -> Result<Repo> {
        let repo = gix::ThreadSafeRepository::discover_with_environment_overrides(dir)
            .map_err(|e| {
                LoopError::new(
                    Class::Config,
                    format!(
                        "not a git repository (or any parent up to /): {}",
                        dir.display()
                    ),
                )
                .with_hint(format!("run git-loop inside a git repository ({e})"))
            })?
            .to_thread_local();
        Repo::checked(repo)
    }

    /// Another handle on this repository, sharing its object store and configuration: cheaper
    /// than opening it again.
    pub fn another_handle(&self) -> Repo {
        Repo {
            repo: self.repo.clone(),
            packed: std::sync::Mutex::new(None),
            shared: self.shared.clone(),
        }
    }

    /// Opens the repository at `dir` exactly (a `.git` dir, a bare repository or a work tree).
    pub fn open(dir: &Path) -> Result<Repo> {
        let repo = gix::open(dir).map_err(|e| {
            LoopError::new(
                Class::Config,
                format!("not a git repository: {} ({e})", dir.display()),
            )
        })?;
        Repo::checked(repo)
    }

    fn checked(repo: gix::Repository) -> Result<Repo> {
        let storage = repo
            .config_snapshot()
            .string("extensions.refStorage")
            .map(|s| s.to_str_lossy().into_owned());
        if let Some(storage) = storage
            && !storage.eq_ignore_ascii_case("files")
        {
            return Err(LoopError::new(
                Class::Config,
                format!(
                    "this repository stores its refs as {storage}; git-loop supports only the files backend"
                ),
            )
            .with_hint(
                "git-loop's refs would be invisible to git here; use a repository made with \
                 `git init --ref-format=files`, or convert with `git refs migrate --ref-format=files`",
            )
            .into());
        }
        // No object cache: each state document is read once per command, and the cache's
        // long-lived copies fragment the heap between gix's per-object inflater allocations
        // (80 MiB instead of 20 MiB peak over 10,000 tasks).
        Ok(Repo {
            repo,
            packed: std::sync::Mutex::new(None),
            shared: std::sync::OnceLock::new(),
        })
    }

    /// Makes gix re-read packed-refs when the file was replaced since it last did. gix decides
    /// by modification time alone, which a `git pack-refs` finishing within the same tick of
    /// the file system's clock as the previous one does not change: gix would then go on
    /// answering from the old file — for a ref whose loose file that pack-refs pruned, a
    /// value long gone, or nothing.
    /// Returns the identity it refreshed for.
    fn fresh_packed_refs(&self) -> Option<FileIdentity> {
        let now = self.packed_identity();
        if let Ok(mut seen) = self.packed.lock()
            && *seen != now
        {
            if let Err(e) = self.repo.refs.force_refresh_packed_buffer() {
                tracing::debug!("refreshing packed-refs: {e}");
            }
            *seen = now;
        }
        now
    }

    fn packed_identity(&self) -> Option<FileIdentity> {
        file_identity(&self.repo.common_dir().join("packed-refs"))
    }

    /// Runs a read of refs until packed-refs stayed the same file throughout it: a pack-refs
    /// that prunes a loose ref has replaced packed-refs first, so a read that saw the same
    /// packed-refs before and after cannot have missed a ref moving into it.
    fn stable_read<T>(&self, mut read: impl FnMut() -> Result<T>) -> Result<T> {
        for _ in 0..20 {
            let before = self.fresh_packed_refs();
            let value = read()?;
            if self.packed_identity() == before {
                return Ok(value);
            }
        }
        read()
    }

    /// The root of the working tree, if the repository has one.
    pub fn workdir(&self) -> Option<&Path> {
        self.repo.workdir()
    }

    /// The root of the working tree, or a `config` error in a bare repository.
    pub fn require_workdir(&self) -> Result<PathBuf> {
        self.workdir().map(Path::to_path_buf).ok_or_else(|| {
            LoopError::new(
                Class::Config,
                "this command needs a working tree, not a bare repository",
            )
            .into()
        })
    }

    /// The directory shared by all worktrees (`git rev-parse --git-common-dir`).
    pub fn common_dir(&self) -> &Path {
        self.repo.common_dir()
    }

    /// The short name of the branch `HEAD` points at, if any (even if it has no commits yet).
    pub fn head_branch(&self) -> Option<String> {
        let name = self.repo.head_name().ok()??;
        name.as_bstr()
            .to_str()
            .ok()
            .and_then(|n| n.strip_prefix("refs/heads/"))
            .map(str::to_string)
    }

    /// The names of the configured remotes.
    pub fn remote_names(&self) -> Vec<String> {
        self.repo
            .remote_names()
            .into_iter()
            .map(|n| n.to_str_lossy().into_owned())
            .collect()
    }

    /// A config value as a string.
    pub fn config_string(&self, key: &str) -> Option<String> {
        self.repo
            .config_snapshot()
            .string(key)
            .map(|v| v.to_str_lossy().into_owned())
    }

    /// A boolean configuration value as git reads it (`true`/`yes`/`on`/`1`, …), if set.
    pub fn config_bool(&self, key: &str) -> Option<bool> {
        self.repo.config_snapshot().boolean(key)
    }

    /// What the direct ref `name` points at, if it exists.
    pub fn read_ref(&self, name: &str) -> Result<Option<ObjectId>> {
        self.stable_read(|| self.read_ref_once(name))
    }

    fn read_ref_once(&self, name: &str) -> Result<Option<ObjectId>> {
        let Some(r) = self
            .repo
            .try_find_reference(name)
            .with_context(|| format!("reading ref {name}"))?
        else {
            return Ok(None);
        };
        Ok(match r.target() {
            gix::refs::TargetRef::Object(id) => Some(id.to_owned()),
            gix::refs::TargetRef::Symbolic(_) => None,
        })
    }

    /// What the ref `name` is: missing, a commit (or other object), or a symbolic ref (to
    /// what). An `Err` is a ref that cannot be read at all (a loose file holding garbage).
    pub fn ref_target(&self, name: &str) -> Result<RefTarget> {
        self.stable_read(|| {
            let Some(r) = self
                .repo
                .try_find_reference(name)
                .with_context(|| format!("reading ref {name}"))?
            else {
                return Ok(RefTarget::Missing);
            };
            Ok(match r.target() {
                gix::refs::TargetRef::Object(id) => RefTarget::Object(id.to_owned()),
                gix::refs::TargetRef::Symbolic(to) => {
                    RefTarget::Symbolic(to.as_bstr().to_str_lossy().into_owned())
                }
            })
        })
    }

    /// Puts git-loop's own ref `name` at `new` whatever it holds now — garbage, a symbolic
    /// ref — for a person's command that overwrites a state ref that cannot be read (`git loop
    /// resume` over an unreadable breaker). Its loose file is removed, then it is created by
    /// compare-and-swap.
    pub fn replace_broken_ref(&self, name: &str, new: ObjectId) -> Result<CasOutcome> {
        if !crate::refs::is_ours(name) {
            anyhow::bail!("{name} is not git-loop's to replace");
        }
        let file = self.common_dir().join(name);
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(anyhow::Error::new(e).context(format!("removing {}", file.display())));
            }
            _ => {}
        }
        self.cas(&[Cas::Create {
            name: name.to_string(),
            new,
        }])
    }

    /// All refs under `prefix` (which ends in `/`), sorted by name.
    pub fn refs_under(&self, prefix: &str) -> Result<Vec<RefTip>> {
        // `git pack-refs` (run by `git gc --auto`) may move a loose ref into packed-refs between
        // the directory listing and the read; git's own reader starts over then, and so do we.
        let mut last = None;
        for attempt in 0..5 {
            match self.stable_read(|| self.refs_under_once(prefix)) {
                Ok(refs) => return Ok(refs),
                Err(e) => {
                    tracing::debug!("listing {prefix} again: {e:#}");
                    last = Some(e);
                    std::thread::sleep(std::time::Duration::from_millis(5 << attempt));
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("listing refs under {prefix}")))
    }

    fn refs_under_once(&self, prefix: &str) -> Result<Vec<RefTip>> {
        let platform = self.repo.references().context("listing refs")?;
        let iter = platform
            .prefixed(prefix.as_bytes())
            .with_context(|| format!("listing refs under {prefix}"))?;
        let mut out = Vec::new();
        for r in iter {
            let r = r.map_err(|e| anyhow::anyhow!("reading a ref under {prefix}: {e}"))?;
            let name = r.name().as_bstr().to_str_lossy().into_owned();
            let id = match r.target() {
                gix::refs::TargetRef::Object(id) => Some(id.to_owned()),
                gix::refs::TargetRef::Symbolic(_) => None,
            };
            out.push(RefTip { name, id });
        }
        Ok(out)
    }

    /// The remote loop state is shared through: `loop.remote` of the policy in the main
    /// checkout (SPEC §13), looked up once per handle; `None` keeps loop state in this clone.
    pub fn shared_remote(&self) -> Option<&str> {
        self.sharing().map(|(remote, _)| remote.as_str())
    }

    /// How long one push or fetch of loop state may take (`loop.remote_timeout`).
    pub fn remote_timeout(&self) -> std::time::Duration {
        self.sharing()
            .map_or(crate::policy::DEFAULT_REMOTE_TIMEOUT, |(_, t)| *t)
    }

    fn sharing(&self) -> Option<&(String, std::time::Duration)> {
        self.shared
            .get_or_init(|| {
                let main = self.main_workdir()?;
                match crate::policy::Policy::load(&main) {
                    Ok(Some(p)) => p.loop_.remote.map(|r| (r, p.loop_.remote_timeout)),
                    Ok(None) => None,
                    Err(e) => {
                        tracing::debug!("no shared remote: the policy does not read: {e:#}");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// Sets the remote loop state is shared through, and how long a push or fetch of it may
    /// take (the runner's, from the policy it runs with); only before the first look-up.
    pub fn share_through(&self, remote: Option<String>, timeout: std::time::Duration) {
        let _ = self.shared.set(remote.map(|r| (r, timeout)));
    }

    /// The main checkout's root, also from a linked worktree.
    fn main_workdir(&self) -> Option<PathBuf> {
        let common = self.common_dir();
        if common.file_name().is_some_and(|n| n == ".git") {
            return common.parent().map(Path::to_path_buf);
        }
        gix::open(common).ok()?.workdir().map(Path::to_path_buf)
    }

    /// Applies all `edits` atomically: through the shared remote first when the edits are
    /// loop state and one is set ([`shared`]), else here, each under the ref's lock with its
    /// expectation checked.
    pub fn cas(&self, edits: &[Cas]) -> Result<CasOutcome> {
        if let Some(remote) = self.shared_remote()
            && edits.iter().any(|e| crate::refs::is_shared(e.name()))
        {
            return shared::cas(self, remote, edits);
        }
        self.cas_local(edits)
    }

    /// Sets each ref to its value (`None`: deletes it), whatever it held: for the tracking
    /// refs of a shared remote, which only ever mirror what the remote was seen to hold.
    fn set_refs(&self, sets: &[(String, Option<ObjectId>)]) -> Result<()> {
        if sets.is_empty() {
            return Ok(());
        }
        let mut input = String::new();
        for (name, value) in sets {
            use std::fmt::Write;
            let _ = match value {
                Some(new) => writeln!(input, "update {name} {new}"),
                None => writeln!(input, "delete {name}"),
            };
        }
        match self.ref_transaction(&input)? {
            cli::Transaction::Committed => Ok(()),
            // A lock held for an instant by a writer of the same view: the next sync writes
            // what this one could not.
            cli::Transaction::Failed(stderr) => {
                tracing::debug!("tracking refs not written: {}", stderr.trim());
                Ok(())
            }
        }
    }

    /// Applies all `edits` atomically in this repository, each under the ref's lock with its
    /// expectation checked.
    pub(crate) fn cas_local(&self, edits: &[Cas]) -> Result<CasOutcome> {
        if edits.iter().any(|e| matches!(e, Cas::Delete { .. })) {
            return self.cas_deleting(edits);
        }
        let log = || LogChange {
            mode: RefLog::AndReference,
            force_create_reflog: false,
            message: "git-loop".into(),
        };
        let mut ref_edits = Vec::with_capacity(edits.len());
        for edit in edits {
            let (name, change) = match edit {
                Cas::Create { name, new } => (
                    name,
                    Change::Update {
                        log: log(),
                        expected: PreviousValue::MustNotExist,
                        new: Target::Object(*new),
                    },
                ),
                Cas::Update { name, old, new } => (
                    name,
                    Change::Update {
                        log: log(),
                        expected: PreviousValue::MustExistAndMatch(Target::Object(*old)),
                        new: Target::Object(*new),
                    },
                ),
                Cas::Verify { name, old } => (
                    name,
                    Change::Update {
                        log: log(),
                        expected: PreviousValue::MustExistAndMatch(Target::Object(*old)),
                        new: Target::Object(*old),
                    },
                ),
                Cas::Delete { name, old } => (
                    name,
                    Change::Delete {
                        expected: PreviousValue::MustExistAndMatch(Target::Object(*old)),
                        log: RefLog::AndReference,
                    },
                ),
            };
            ref_edits.push(RefEdit {
                change,
                name: name
                    .as_str()
                    .try_into()
                    .with_context(|| format!("invalid ref name {name:?}"))?,
                deref: false,
            });
        }
        // `MustNotExist` also succeeds when the ref already holds the new value; a create of
        // an object that cannot exist elsewhere (a fresh commit) makes that harmless.
        let deadline =
            std::time::Instant::now() + STALE_LOCK + std::time::Duration::from_millis(500);
        let mut rereads = 0;
        let mut packed = self.fresh_packed_refs();
        loop {
            match self.repo.edit_references(ref_edits.clone()) {
                Ok(_) => {
                    trace_edits(edits, "applied");
                    return Ok(CasOutcome::Applied);
                }
                Err(e) if is_lock_failure(&e) => {
                    // A ref is locked: by a live writer for an instant, or by a killed one for
                    // ever. Wait a little; take a lock that outlives any real transaction.
                    tracing::debug!("ref locked: {e:#}");
                    if std::time::Instant::now() > deadline {
                        return Ok(CasOutcome::Lost);
                    }
                    for edit in edits {
                        self.remove_stale_lock(edit.name(), STALE_LOCK);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    packed = self.fresh_packed_refs();
                }
                // `git pack-refs --prune` removes the directories it emptied: one that gix had
                // just made for a lock file may be gone when it creates the file. git itself
                // tries again then.
                Err(e) if is_vanished_lock_dir(&e) && rereads < 5 => {
                    rereads += 1;
                    tracing::debug!("a ref directory vanished; trying again: {e:#}");
                }
                // A stale expectation, or an expected ref that is gone (deleted by another
                // writer meanwhile): either way the swap did not happen.
                Err(e) if e.is_conflict() || e.is_retryable() || e.is_not_found() => {
                    let detail = format!("{e:?}").replace('\n', " ");
                    // gix looks a ref up in packed-refs when its loose file is gone, from a
                    // buffer it trusts while the file's modification time is unchanged: a
                    // `git pack-refs` that replaced the file within one tick of the clock (and
                    // pruned the loose ref) makes it see an old value. So when packed-refs was
                    // replaced meanwhile, the verdict may be stale: read it afresh and try again.
                    let now = self.packed_identity();
                    if now != packed && rereads < 5 {
                        rereads += 1;
                        tracing::debug!("packed-refs was replaced; trying again ({detail})");
                        packed = self.fresh_packed_refs();
                        continue;
                    }
                    tracing::debug!("compare-and-swap lost: {detail}");
                    trace_edits(edits, "lost");
                    return Ok(CasOutcome::Lost);
                }
                Err(e) => return Err(anyhow::anyhow!("updating refs: {e:#}")),
            }
        }
    }

    /// A transaction that deletes refs, run by `git update-ref --stdin`. gix decides from its
    /// snapshot of `packed-refs`, taken before it locks the file, whether a deletion must
    /// rewrite it: a `git pack-refs` (run by `git gc --auto`, e.g. after an agent's commit)
    /// finishing in between brings the deleted ref back from `packed-refs`, or has its own
    /// result overwritten by the stale snapshot. git locks `packed-refs` for every deletion and
    /// reads it under that lock, so a concurrent pack-refs either waits for the deletion or is
    /// waited for.
    fn cas_deleting(&self, edits: &[Cas]) -> Result<CasOutcome> {
        let mut input = String::new();
        for edit in edits {
            use std::fmt::Write;
            let _ = match edit {
                Cas::Create { name, new } => writeln!(input, "create {name} {new}"),
                Cas::Update { name, old, new } => writeln!(input, "update {name} {new} {old}"),
                Cas::Delete { name, old } => writeln!(input, "delete {name} {old}"),
                Cas::Verify { name, old } => writeln!(input, "verify {name} {old}"),
            };
        }
        let deadline =
            std::time::Instant::now() + STALE_LOCK + std::time::Duration::from_millis(500);
        loop {
            let stderr = match self.ref_transaction(&input)? {
                cli::Transaction::Committed => {
                    trace_edits(edits, "applied");
                    return Ok(CasOutcome::Applied);
                }
                cli::Transaction::Failed(stderr) => stderr,
            };
            if stderr.contains("File exists") {
                // A lock is held: a ref's (a live writer's for an instant, or a killed one's
                // for ever), or packed-refs' for longer than git waits for it.
                tracing::debug!("ref locked: {}", stderr.trim());
                if std::time::Instant::now() > deadline {
                    return Ok(CasOutcome::Lost);
                }
                for edit in edits {
                    self.remove_stale_lock(edit.name(), STALE_LOCK);
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            } else if stderr.contains("cannot lock ref") {
                tracing::debug!("compare-and-swap lost: {}", stderr.trim());
                trace_edits(edits, "lost");
                return Ok(CasOutcome::Lost);
            } else {
                anyhow::bail!("git update-ref failed: {}", stderr.trim());
            }
        }
    }

    /// Runs one `git update-ref --stdin` transaction through this repository's long-lived
    /// process (see [`cli::RefTransactions`]), one transaction at a time across threads.
    fn ref_transaction(&self, input: &str) -> Result<cli::Transaction> {
        let mut all = REF_TRANSACTIONS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let common = self.common_dir().to_path_buf();
        let transactions = all
            .entry(common.clone())
            .or_insert_with(|| cli::RefTransactions::new(&cli::Git::new(&common, false), &common));
        transactions.run(input)
    }

    /// Removes the lock file of ref `name` if it is older than `age` (its writer is gone: ref
    /// transactions hold their locks for far less; git itself waits only 100 ms for them).
    /// Only git-loop's own refs are taken over — its state refs, its notes and the task
    /// branches `refs/heads/loop/*`: another branch's lock may be a live git's (a slow
    /// `reference-transaction` hook), and losing its update would be silent.
    pub fn remove_stale_lock(&self, name: &str, age: std::time::Duration) {
        let ours = crate::refs::is_ours(name) || name.starts_with("refs/heads/loop/");
        if !ours {
            return;
        }
        let lock = self.common_dir().join(format!("{name}.lock"));
        let Ok(meta) = std::fs::metadata(&lock) else {
            return;
        };
        let old = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|e| e >= age);
        if old && std::fs::remove_file(&lock).is_ok() {
            tracing::warn!("removed the stale lock {}", lock.display());
        }
    }

    /// Writes a blob.
    pub fn write_blob(&self, bytes: &[u8]) -> Result<ObjectId> {
        Ok(self
            .repo
            .write_blob(bytes)
            .context("writing a blob")?
            .detach())
    }

    /// Takes every loose object of the object directory `dir` into this store, each only if
    /// its contents hash to its name. Returns how many were taken, and refused.
    pub fn import_loose(&self, dir: &Path) -> Result<(usize, usize)> {
        use gix::objs::Write as _;
        let store = gix::odb::loose::Store::at(dir, gix::hash::Kind::Sha1);
        let (mut taken, mut refused) = (0, 0);
        let mut buf = Vec::new();
        for id in store.iter() {
            let Ok(id) = id else {
                refused += 1;
                continue;
            };
            let Ok(Some(data)) = store.try_find(&id, &mut buf) else {
                refused += 1;
                continue;
            };
            let kind = data.kind;
            let good = gix::objs::compute_hash(gix::hash::Kind::Sha1, kind, data.data)
                .is_ok_and(|actual| actual == id);
            if !good {
                refused += 1;
                continue;
            }
            self.repo
                .write_buf(kind, data.data)
                .map_err(|e| anyhow::anyhow!("writing object {id}: {e}"))?;
            taken += 1;
        }
        Ok((taken, refused))
    }

    /// Takes a pack into the store through `git index-pack`, which checks every object.
    pub fn import_pack(&self, pack: &Path) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let git = cli::Git::new(self.common_dir(), false);
        // Not through a symbolic link, and not blocking on a FIFO: a regular file or nothing.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(pack)
            .with_context(|| format!("opening {}", pack.display()))?;
        if !file.metadata()?.is_file() {
            anyhow::bail!("{} is not a regular file", pack.display());
        }
        git.run_file_stdin(&["index-pack", "--stdin", "--strict", "--fix-thin"], file)
    }

    /// Writes a tree: `base` (or the empty tree) with blobs put at the given `/`-separated paths.
    pub fn write_tree(
        &self,
        base: Option<ObjectId>,
        files: &[(&str, ObjectId)],
    ) -> Result<ObjectId> {
        let mut editor = match base {
            Some(tree) => self.repo.edit_tree(tree).context("starting a tree")?,
            None => self.repo.empty_tree().edit().context("starting a tree")?,
        };
        for (path, id) in files {
            editor
                .upsert(*path, gix::object::tree::EntryKind::Blob, *id)
                .with_context(|| format!("adding {path} to a tree"))?;
        }
        Ok(editor.write().context("writing a tree")?.detach())
    }

    /// Writes a commit with the repository's identity (or the fallback one).
    pub fn write_commit(
        &self,
        message: &str,
        tree: ObjectId,
        parents: &[ObjectId],
    ) -> Result<ObjectId> {
        // The repository's identity (config or GIT_COMMITTER_*), else a fixed fallback: a
        // missing identity never fails a write.
        let fallback;
        let committer = match self.repo.committer() {
            Some(c) => c.context("reading the committer identity")?,
            None => {
                fallback = gix::actor::Signature {
                    name: FALLBACK_NAME.into(),
                    email: FALLBACK_EMAIL.into(),
                    time: gix::date::Time::now_utc(),
                };
                let mut buf = gix::date::parse::TimeBuf::default();
                let sig = fallback.to_ref(&mut buf);
                return Ok(self
                    .repo
                    .new_commit_as(sig, sig, message, tree, parents.iter().copied())
                    .context("writing a commit")?
                    .id);
            }
        };
        let commit = self
            .repo
            .new_commit_as(committer, committer, message, tree, parents.iter().copied())
            .context("writing a commit")?;
        Ok(commit.id)
    }

    /// Writes a commit as [`Repo::write_commit`] does, signed the way the person's git signs
    /// (`git commit-tree -S`: `gpg.format`, `user.signingKey`). A signature that cannot be made
    /// is a `config` error: nothing unsigned is written in its place.
    pub fn write_signed_commit(
        &self,
        message: &str,
        tree: ObjectId,
        parents: &[ObjectId],
    ) -> Result<ObjectId> {
        let dir = self.workdir().unwrap_or(self.common_dir());
        let git = cli::Git::new(dir, !self.has_identity());
        let mut args = vec!["commit-tree".to_string(), "-S".into(), tree.to_string()];
        for p in parents {
            args.extend(["-p".to_string(), p.to_string()]);
        }
        let out = git.output_stdin(&args, message.as_bytes())?;
        if !out.status.success() {
            return Err(LoopError::new(
                Class::Config,
                format!(
                    "cannot sign the task's commit: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            )
            .with_hint(
                "check user.signingKey and gpg.format (commit.gpgSign asks git-loop to sign what \
                 a person writes), or turn commit.gpgSign off for this repository",
            )
            .into());
        }
        oid(String::from_utf8_lossy(&out.stdout).trim())
    }

    /// Whether the person's git signs the commits it writes (`commit.gpgSign`).
    pub fn signs_commits(&self) -> bool {
        self.config_bool("commit.gpgSign") == Some(true)
    }

    /// The tree of commit `id`, or `Err(kind)` when `id` is not a commit (`None`: missing).
    pub fn commit_tree(&self, id: ObjectId) -> Result<std::result::Result<ObjectId, Option<Kind>>> {
        let object = match self.repo.try_find_object(id) {
            Ok(Some(o)) => o,
            Ok(None) => return Ok(Err(None)),
            Err(e) => return Err(anyhow::anyhow!("reading object {id}: {e}")),
        };
        if object.kind != gix::object::Kind::Commit {
            return Ok(Err(self.kind(id)?));
        }
        let commit = object.into_commit();
        Ok(Ok(commit
            .tree_id()
            .with_context(|| format!("decoding commit {id}"))?
            .detach()))
    }

    /// The kind of an object, or `None` if it does not exist.
    pub fn kind(&self, id: ObjectId) -> Result<Option<Kind>> {
        let header = match self.repo.try_find_header(id) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            Err(e) => return Err(anyhow::anyhow!("reading object {id}: {e}")),
        };
        Ok(Some(match header.kind() {
            gix::object::Kind::Commit => Kind::Commit,
            gix::object::Kind::Tree => Kind::Tree,
            gix::object::Kind::Blob => Kind::Blob,
            gix::object::Kind::Tag => Kind::Tag,
        }))
    }

    /// A commit's tree, parents, time, author and message.
    pub fn commit_info(&self, id: ObjectId) -> Result<CommitInfo> {
        let commit = self
            .repo
            .find_commit(id)
            .with_context(|| format!("{id} is not a commit"))?;
        let decoded = commit
            .decode()
            .with_context(|| format!("decoding commit {id}"))?;
        Ok(CommitInfo {
            id,
            tree: decoded.tree(),
            parents: decoded.parents().collect(),
            time: decoded.committer().map(|c| c.seconds()).unwrap_or(0),
            author: decoded
                .author()
                .map(|a| a.name.to_str_lossy().into_owned())
                .unwrap_or_default(),
            message: decoded.message.to_str_lossy().into_owned(),
            ssh_signed: decoded
                .extra_headers()
                .pgp_signature()
                .is_some_and(|sig| sig.starts_with(b"-----BEGIN SSH SIGNATURE-----")),
        })
    }

    /// Appends the blob at `name` directly inside `tree` to `out`; `false` if there is none.
    pub fn tree_blob_into(&self, tree: ObjectId, name: &str, out: &mut Vec<u8>) -> Result<bool> {
        let tree = self
            .repo
            .find_tree(tree)
            .with_context(|| format!("{tree} is not a tree"))?;
        let Some(entry) = tree.find_entry(name) else {
            return Ok(false);
        };
        if !entry.mode().is_blob() {
            return Ok(false);
        }
        let id = entry.object_id();
        let blob = self
            .repo
            .find_blob(id)
            .with_context(|| format!("reading {name} ({id})"))?;
        out.extend_from_slice(&blob.data);
        Ok(true)
    }

    /// The blob at `name` directly inside `tree`, if there is one.
    pub fn tree_blob(&self, tree: ObjectId, name: &str) -> Result<Option<Vec<u8>>> {
        let mut out = Vec::new();
        Ok(self.tree_blob_into(tree, name, &mut out)?.then_some(out))
    }

    /// The main worktree (unless the repository is bare) and every linked one, read in-process
    /// from `$GIT_COMMON_DIR/worktrees/*`, as `git worktree list` reports them.
    pub fn worktrees(&self) -> Result<Vec<Worktree>> {
        let attached = |git_dir: &Path| -> Option<String> {
            let head = std::fs::read_to_string(git_dir.join("HEAD")).ok()?;
            head.trim().strip_prefix("ref: ").map(str::to_string)
        };
        let mut out = Vec::new();
        let main_path = match self.repo.kind() {
            gix::repository::Kind::LinkedWorkTree => self
                .repo
                .main_repo()
                .ok()
                .and_then(|m| m.workdir().map(Path::to_path_buf)),
            _ => self.workdir().map(Path::to_path_buf),
        };
        if let Some(path) = main_path {
            out.push(Worktree {
                path,
                branch: attached(self.common_dir()),
                prunable: false,
                git_dir: self.common_dir().to_path_buf(),
            });
        }
        for proxy in self.repo.worktrees().context("listing worktrees")? {
            let Ok(path) = proxy.base() else { continue };
            out.push(Worktree {
                branch: attached(proxy.git_dir()),
                prunable: proxy.is_prunable(),
                git_dir: proxy.git_dir().to_path_buf(),
                path,
            });
        }
        Ok(out)
    }

    /// Adds the linked worktree at `path` on the existing local branch `branch` (without
    /// `refs/heads/`), as `git worktree add <path> <branch>` does: in-process (a checkout
    /// without three git processes), or through `git` when git would run a `post-checkout`
    /// hook there, so that it still runs. Every worktree change by git-loop is serialized by
    /// the worktrees lock (see [`Repo::interrupted_adds`]).
    ///
    /// Only a branch: an add in-process writes its worktree's HEAD once, as a symbolic ref to
    /// a branch that exists, where a detached one would be the null id until the checkout is
    /// done — and every `git fetch` in the repository fails on that ("bad object") while it
    /// lasts, for ever if the process is killed then. Detached worktrees go through git.
    pub fn add_worktree(&self, git: &cli::Git, path: &Path, branch: &str) -> Result<()> {
        let shown = path.to_string_lossy();
        if self.post_checkout_hook() {
            let git = git.clone().locking_worktrees(self.common_dir());
            return git.worktree_add(&["--quiet"], path, branch);
        }
        let head = gix::worktree::add::Head::Attached(
            format!("refs/heads/{branch}")
                .try_into()
                .with_context(|| format!("invalid branch name {branch:?}"))?,
        );
        // The new HEAD's reflog needs an identity.
        let repo = self.with_identity()?;
        let _held = self.worktrees_lock()?;
        let started = std::time::Instant::now();
        let interrupt = std::sync::atomic::AtomicBool::new(false);
        repo.add_worktree(path, head, gix::progress::Discard, &interrupt)
            .map_err(|e| anyhow::anyhow!("git worktree add {shown}: {e}"))?;
        tracing::debug!(
            "added the worktree {shown} in {} µs",
            started.elapsed().as_micros()
        );
        Ok(())
    }

    /// Removes the linked worktree at `path` and its metadata, as `git worktree remove` does:
    /// one with changes, untracked files or an initialized submodule is refused unless
    /// `discard` (`--force`); a locked one is always refused.
    pub fn remove_worktree(&self, path: &Path, discard: bool) -> Result<()> {
        use gix::worktree::remove::Force;
        let force = if discard {
            Force::DiscardChanges
        } else {
            Force::Never
        };
        let _held = self.worktrees_lock()?;
        let started = std::time::Instant::now();
        self.repo
            .remove_worktree(path, force, gix::progress::Discard)
            .map_err(|e| anyhow::anyhow!("git worktree remove {}: {e}", path.display()))?;
        tracing::debug!(
            "removed the worktree {} in {} µs",
            path.display(),
            started.elapsed().as_micros()
        );
        Ok(())
    }

    /// The worktrees under `<git-common-dir>/loop/` whose add was cut short, and with `clear`
    /// their checkout directories and metadata removed. An add marks the worktree `locked`
    /// ("initializing") until its checkout and index are complete, as git does, and git never
    /// prunes a locked worktree; holding the worktrees lock, no git-loop process is adding one,
    /// so such a mark was left by a process killed mid-add. Nothing in such a checkout was
    /// ever handed to an agent or a gate, and an add only ever fills an empty directory.
    /// Also found: metadata marked so that names no checkout at all (an add killed before it
    /// wrote its `gitdir`), once a minute old. Without `clear` nothing is locked or written: a
    /// look that may also see an add that is under way.
    pub fn interrupted_adds(&self, clear: bool) -> Result<Vec<PathBuf>> {
        // Only a clear takes the worktrees lock (a look writes nothing, not even a lock file).
        let _held = clear.then(|| self.worktrees_lock()).transpose()?;
        let mut found = Vec::new();
        let ours = std::fs::canonicalize(self.common_dir().join("loop")).ok();
        let Ok(entries) = std::fs::read_dir(self.common_dir().join("worktrees")) else {
            return Ok(found);
        };
        for entry in entries.flatten() {
            let meta = entry.path();
            let marked = std::fs::read_to_string(meta.join("locked"))
                .is_ok_and(|mark| mark.trim() == "initializing");
            let link = std::fs::read_to_string(meta.join("gitdir")).unwrap_or_default();
            if marked && link.trim().is_empty() {
                // An add killed before it wrote where its checkout is: metadata that names no
                // checkout at all (and that some readers of the worktree list choke on). One
                // that young may be a live `git worktree add` of someone else's.
                let old = std::fs::metadata(&meta)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age >= HALF_MADE_AFTER);
                if old {
                    if clear {
                        std::fs::remove_dir_all(&meta)
                            .with_context(|| format!("removing {}", meta.display()))?;
                    }
                    found.push(meta);
                }
                continue;
            }
            let Some(checkout) = meta.join(link.trim()).parent().map(Path::to_path_buf) else {
                continue;
            };
            if !marked || !ours.as_ref().is_some_and(|o| checkout.starts_with(o)) {
                continue;
            }
            if clear {
                for dir in [&checkout, &meta] {
                    match std::fs::remove_dir_all(dir) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(anyhow::Error::new(e)
                                .context(format!("removing {}", dir.display())));
                        }
                        _ => {}
                    }
                }
            }
            found.push(checkout);
        }
        Ok(found)
    }

    /// Lock files of git's under the git dir — of refs, `packed-refs`, an index, `HEAD`, the
    /// config, in the repository and its worktrees' metadata — older than `age`: a git killed
    /// while it held them left them, and every later git that needs that file fails. git-loop's
    /// own locks (`loop/`) are not git's and are never among them.
    pub fn stale_git_locks(&self, age: std::time::Duration) -> Vec<PathBuf> {
        fn walk(dir: &Path, age: std::time::Duration, deep: bool, out: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() {
                    if deep {
                        walk(&path, age, deep, out);
                    }
                    continue;
                }
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|a| a >= age);
                if old && path.extension().is_some_and(|e| e == "lock") {
                    out.push(path);
                }
            }
        }
        let common = self.common_dir();
        let mut out = Vec::new();
        walk(common, age, false, &mut out);
        walk(&common.join("refs"), age, true, &mut out);
        if let Ok(entries) = std::fs::read_dir(common.join("worktrees")) {
            for entry in entries.flatten() {
                walk(&entry.path(), age, false, &mut out);
            }
        }
        out.sort();
        out
    }

    /// The repository with the fixed fallback identity when it configures none, for gix
    /// writes that record a committer (reflogs, notes): a missing identity never fails a write.
    fn with_identity(&self) -> Result<gix::Repository> {
        let mut repo = self.repo.clone();
        if repo.committer().is_none() {
            repo.committer_or_set_fallback(FALLBACK_NAME, FALLBACK_EMAIL)
                .context("setting a fallback identity")?;
        }
        Ok(repo)
    }

    fn worktrees_lock(&self) -> Result<std::fs::File> {
        crate::lockfile::wait(&crate::lockfile::path(self.common_dir(), "worktrees"))
    }

    /// Whether git would run (or warn about) a `post-checkout` hook on `git worktree add`:
    /// there is one in the repository's hooks directory, or `core.hooksPath` names another
    /// directory (which git resolves relative to the new worktree, so such an add is left to
    /// git whatever the directory holds).
    fn post_checkout_hook(&self) -> bool {
        self.config_string("core.hooksPath").is_some()
            || std::fs::symlink_metadata(self.common_dir().join("hooks").join("post-checkout"))
                .is_ok()
    }

    /// The commit HEAD points at, if HEAD is born.
    pub fn head_commit(&self) -> Result<Option<ObjectId>> {
        match self.repo.head_id() {
            Ok(id) => Ok(Some(id.detach())),
            Err(_) if self.repo.head().is_ok_and(|h| h.is_unborn()) => Ok(None),
            Err(e) => Err(anyhow::anyhow!("reading HEAD: {e}")),
        }
    }

    /// Whether this worktree is in the middle of a rebase, merge, cherry-pick or the like.
    pub fn operation_in_progress(&self) -> bool {
        self.repo.state().is_some()
    }

    /// The operation this worktree is in the middle of (`rebase`, `merge`, …), if any.
    pub fn operation(&self) -> Option<&'static str> {
        use gix::state::InProgress;
        Some(match self.repo.state()? {
            InProgress::ApplyMailbox => "am",
            InProgress::ApplyMailboxRebase => "am or rebase",
            InProgress::Bisect => "bisect",
            InProgress::CherryPick | InProgress::CherryPickSequence => "cherry-pick",
            InProgress::Merge => "merge",
            InProgress::Rebase | InProgress::RebaseInteractive => "rebase",
            InProgress::Revert | InProgress::RevertSequence => "revert",
        })
    }

    /// The tip of `branch` as last seen, and where it was read (`origin/main`, `main`): the
    /// remote-tracking branch when `remote` is given and it exists, else the local branch.
    pub fn last_seen_tip(
        &self,
        remote: Option<&str>,
        branch: &str,
    ) -> Result<Option<(ObjectId, String)>> {
        if let Some(remote) = remote
            && let Some(tip) = self.read_ref(&tracking_ref(remote, branch))?
        {
            return Ok(Some((tip, format!("{remote}/{branch}"))));
        }
        Ok(self
            .read_ref(&format!("refs/heads/{branch}"))?
            .map(|tip| (tip, branch.to_string())))
    }

    /// The best common ancestor of two commits, if they share history.
    pub fn merge_base(&self, a: ObjectId, b: ObjectId) -> Result<Option<ObjectId>> {
        // Mostly asked of a branch and the target it forked from, or of a target and a branch
        // merged into it: one is a near ancestor of the other, and that is the answer.
        match self.near_ancestry(a, b)? {
            Some(Near::Same | Near::FirstIsAncestor) => return Ok(Some(a)),
            Some(Near::SecondIsAncestor) => return Ok(Some(b)),
            None => {}
        }
        Ok(self
            .repo
            .merge_base(a, b)
            .map_err(|e| anyhow::anyhow!("finding the merge base of {a} and {b}: {e}"))?
            .map(|id| id.detach()))
    }

    /// Whether commit `a` is `b` or one of its ancestors.
    pub fn is_ancestor(&self, a: ObjectId, b: ObjectId) -> Result<bool> {
        match self.near_ancestry(a, b)? {
            Some(Near::Same | Near::FirstIsAncestor) => return Ok(true),
            // `a` descends from `b`: in a history without cycles it is not among its ancestors.
            Some(Near::SecondIsAncestor) => return Ok(false),
            None => {}
        }
        let base = self
            .repo
            .merge_base(a, b)
            .map_err(|e| anyhow::anyhow!("finding the merge base of {a} and {b}: {e}"))?;
        Ok(base.is_some_and(|base| base.detach() == a))
    }

    /// How `a` and `b` relate when one is among the other's nearest ancestors: both histories
    /// are walked back breadth first, a step of each in turn, up to `NEAR` commits each. The
    /// questions git-loop asks are mostly answered so — a task branch is a few commits on the
    /// target, a target a merge or two past a branch — and cheaply: a merge-base computation
    /// can go through the whole history when commits share a date (a burst of commits within
    /// one second, as a fast loop makes), so it only decides the rest (`None`).
    fn near_ancestry(&self, a: ObjectId, b: ObjectId) -> Result<Option<Near>> {
        const NEAR: usize = 64;
        if a == b {
            return Ok(Some(Near::Same));
        }
        struct Walk {
            start: ObjectId,
            seen: std::collections::HashSet<ObjectId>,
            queue: std::collections::VecDeque<ObjectId>,
        }
        let mut walks = [a, b].map(|start| Walk {
            start,
            seen: std::collections::HashSet::from([start]),
            queue: std::collections::VecDeque::from([start]),
        });
        loop {
            let mut moved = false;
            for (side, walk) in walks.iter_mut().enumerate() {
                if walk.seen.len() > NEAR {
                    continue;
                }
                let Some(id) = walk.queue.pop_front() else {
                    continue;
                };
                moved = true;
                let commit = match self.repo.find_commit(id) {
                    Ok(c) => c,
                    // A parent beyond a shallow clone's boundary: the merge base decides.
                    Err(_) if id != walk.start => continue,
                    Err(e) => anyhow::bail!("reading the commit {id}: {e}"),
                };
                let other = if side == 0 { b } else { a };
                for parent in commit.parent_ids() {
                    let parent = parent.detach();
                    if parent == other {
                        return Ok(Some(if side == 0 {
                            Near::SecondIsAncestor
                        } else {
                            Near::FirstIsAncestor
                        }));
                    }
                    if walk.seen.insert(parent) {
                        walk.queue.push_back(parent);
                    }
                }
            }
            if !moved {
                return Ok(None);
            }
        }
    }

    /// Which of `commits` are `tip` or its ancestors: one walk back from `tip`, which ends as
    /// soon as it has seen them all (and goes through the whole history only when one is not
    /// there).
    pub fn contained_in(
        &self,
        commits: &[ObjectId],
        tip: ObjectId,
    ) -> Result<std::collections::HashSet<ObjectId>> {
        let mut wanted: std::collections::HashSet<ObjectId> = commits.iter().copied().collect();
        let mut found = std::collections::HashSet::new();
        if wanted.remove(&tip) {
            found.insert(tip);
        }
        if wanted.is_empty() {
            return Ok(found);
        }
        let walk = self
            .repo
            .rev_walk([tip])
            .all()
            .map_err(|e| anyhow::anyhow!("walking the history of {tip}: {e}"))?;
        for info in walk {
            let info = info.map_err(|e| anyhow::anyhow!("walking the history of {tip}: {e}"))?;
            if wanted.remove(&info.id) {
                found.insert(info.id);
                if wanted.is_empty() {
                    break;
                }
            }
        }
        Ok(found)
    }

    /// The bytes of the file at `path` (`/`-separated) in commit `commit`, if it is a blob there.
    pub fn file_at(&self, commit: ObjectId, path: &str) -> Result<Option<Vec<u8>>> {
        if let Some(known) = files_at::get(self.common_dir(), commit, path) {
            return Ok(known);
        }
        let found = self.read_file_at(commit, path)?;
        files_at::put(self.common_dir(), commit, path, &found);
        Ok(found)
    }

    fn read_file_at(&self, commit: ObjectId, path: &str) -> Result<Option<Vec<u8>>> {
        let tree = self
            .repo
            .find_commit(commit)
            .with_context(|| format!("{commit} is not a commit"))?
            .tree()
            .with_context(|| format!("reading the tree of {commit}"))?;
        let Some(entry) = tree
            .lookup_entry_by_path(path)
            .with_context(|| format!("looking up {path} in {commit}"))?
        else {
            return Ok(None);
        };
        if !entry.mode().is_blob() {
            return Ok(None);
        }
        Ok(Some(self.blob(entry.object_id())?))
    }

    /// The object at `path` (`/`-separated) in commit `commit` — a blob or a tree — with its
    /// mode as git writes it (`100644`, `100755`, `120000`, `040000`, …), if there is one.
    pub fn entry_at(&self, commit: ObjectId, path: &str) -> Result<Option<(ObjectId, String)>> {
        let tree = self
            .repo
            .find_commit(commit)
            .with_context(|| format!("{commit} is not a commit"))?
            .tree()
            .with_context(|| format!("reading the tree of {commit}"))?;
        let path = path.trim_end_matches('/');
        if path.is_empty() {
            return Ok(Some((tree.id, "040000".to_string())));
        }
        Ok(tree
            .lookup_entry_by_path(path)
            .with_context(|| format!("looking up {path} in {commit}"))?
            .map(|e| (e.object_id(), format!("{:06o}", e.mode().value()))))
    }

    /// Sets the note of `object` in `notes_ref` to `text` (replacing any), by compare-and-swap
    /// on the notes ref; a lost race is retried.
    pub fn set_note(&self, notes_ref: &str, object: ObjectId, text: &str) -> Result<()> {
        let repo = self.with_identity()?;
        let name: gix::refs::FullName = notes_ref
            .try_into()
            .with_context(|| format!("invalid notes ref {notes_ref:?}"))?;
        let mut last = None;
        let deadline = std::time::Instant::now() + STALE_LOCK + std::time::Duration::from_secs(1);
        while std::time::Instant::now() < deadline {
            let mut notes = repo
                .notes()
                .context("opening notes")?
                .with_refs([notes_ref])
                .map_err(|e| anyhow::anyhow!("opening {notes_ref}: {e}"))?
                .with_commit_message(format!("git-loop: note on {}", object.to_hex_with_len(7)));
            // The same note again writes nothing (a run's commits are noted by the hook, and
            // again by the runner after the run).
            let same = notes
                .get(object)
                .map_err(|e| anyhow::anyhow!("reading notes in {notes_ref}: {e}"))?
                .iter()
                .any(|n| n.blob.data.as_slice() == text.as_bytes());
            if same {
                return Ok(());
            }
            match notes.replace_at_ref(name.as_ref(), object, text) {
                Ok(_) => return Ok(()),
                Err(e) if is_lock_failure(&e) => {
                    // Locked by a live writer for an instant, or by a killed one for ever.
                    last = Some(format!("{e:#}"));
                    self.remove_stale_lock(notes_ref, STALE_LOCK);
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) if e.is_conflict() => {
                    last = Some(format!("{e:#}"));
                    std::thread::sleep(std::time::Duration::from_millis(
                        1 + crate::rand::below_or_equal(20),
                    ));
                }
                Err(e) => return Err(anyhow::anyhow!("writing a note in {notes_ref}: {e:#}")),
            }
        }
        Err(LoopError::new(
            Class::Transient,
            format!(
                "could not write a note in {notes_ref}: {}",
                last.unwrap_or_default()
            ),
        )
        .into())
    }

    /// Whether the repository configures a committer identity (git needs one to write).
    pub fn has_identity(&self) -> bool {
        self.repo.committer().is_some()
    }

    /// The blobs directly inside the sub-tree `dir` of `tree`, by file name.
    pub fn tree_dir_blobs(&self, tree: ObjectId, dir: &str) -> Result<Vec<(String, ObjectId)>> {
        let tree = self
            .repo
            .find_tree(tree)
            .with_context(|| format!("{tree} is not a tree"))?;
        let Some(entry) = tree.find_entry(dir) else {
            return Ok(Vec::new());
        };
        if !entry.mode().is_tree() {
            return Ok(Vec::new());
        }
        let sub = self
            .repo
            .find_tree(entry.object_id())
            .with_context(|| format!("reading {dir}/"))?;
        let mut out = Vec::new();
        for e in sub.iter() {
            let e = e.with_context(|| format!("reading {dir}/"))?;
            if e.mode().is_blob() {
                out.push((e.filename().to_str_lossy().into_owned(), e.object_id()));
            }
        }
        Ok(out)
    }

    /// The bytes of a blob.
    pub fn blob(&self, id: ObjectId) -> Result<Vec<u8>> {
        Ok(self
            .repo
            .find_blob(id)
            .with_context(|| format!("reading blob {id}"))?
            .data
            .clone())
    }
}

/// How the repository containing `dir` stores its refs (`extensions.refStorage`; `files` when
/// it does not say), or `None` when `dir` is not in a repository. Unlike [`Repo::discover`], this
/// also answers for the reftable repositories git-loop refuses, so that they can be reported.
pub fn ref_storage(dir: &Path) -> Option<String> {
    let repo = gix::ThreadSafeRepository::discover_with_environment_overrides(dir)
        .ok()?
        .to_thread_local();
    let storage = repo
        .config_snapshot()
        .string("extensions.refStorage")
        .map_or_else(|| "files".to_string(), |s| s.to_str_lossy().into_owned());
    Some(storage)
}

/// The remote-tracking ref of `branch` of `remote`: `refs/remotes/<remote>/<branch>`.
pub fn tracking_ref(remote: &str, branch: &str) -> String {
    format!("refs/remotes/{remote}/{branch}")
}

/// Parses a full hexadecimal object id.
pub fn oid(hex: &str) -> Result<ObjectId> {
    ObjectId::from_hex(hex.trim().as_bytes())
        .with_context(|| format!("{hex:?} is not an object id"))
}

fn is_vanished_lock_dir(e: &gix::Error) -> bool {
    e.downcast_any_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
        && format!("{e:?}").contains(".lock")
}

fn is_lock_failure(e: &gix::Error) -> bool {
    // gix-lock raises a retryable error around the `AlreadyExists` of the lock file.
    e.downcast_any_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::AlreadyExists)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs git in `dir`, hermetic, every commit at one and the same second (as a fast loop
    /// makes them, the case where a date-ordered walk cannot stop early).
    fn git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
            .output()
            .expect("running git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[test]
    fn ancestry_answers_agree_with_git_near_and_far() {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        git(d, &["init", "-q", "-b", "main"]);
        let commit = |msg: &str| {
            git(d, &["commit", "-q", "--allow-empty", "-m", msg]);
            git(d, &["rev-parse", "HEAD"])
        };
        let mut points = vec![commit("root")];
        // A side branch forked at the root, 3 commits long.
        git(d, &["checkout", "-q", "-b", "side"]);
        for i in 0..3 {
            points.push(commit(&format!("side {i}")));
        }
        git(d, &["checkout", "-q", "main"]);
        // The target runs 100 commits ahead, then the side branch is merged into it: the fork
        // point is further back than any near walk goes, from either side.
        for i in 0..100 {
            let c = commit(&format!("main {i}"));
            if i % 33 == 0 {
                points.push(c);
            }
        }
        git(d, &["merge", "-q", "--no-ff", "-m", "merge side", "side"]);
        points.push(git(d, &["rev-parse", "HEAD"]));
        // A branch on the merge, and a commit unrelated to all of it.
        git(d, &["checkout", "-q", "-b", "task"]);
        points.push(commit("task"));
        git(d, &["checkout", "-q", "--orphan", "lone"]);
        points.push(commit("lone"));

        let repo = Repo::open(d).expect("opening the repository");
        let id = |hex: &str| ObjectId::from_hex(hex.as_bytes()).expect("an id");
        // git's answers (exit 1 means no: unrelated, or not an ancestor).
        let plain = |args: &[&str]| {
            std::process::Command::new("git")
                .args(args)
                .current_dir(d)
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .output()
                .expect("running git merge-base")
        };
        let mut far = 0;
        for a in &points {
            for b in &points {
                let want = plain(&["merge-base", "--is-ancestor", a, b])
                    .status
                    .success();
                assert_eq!(
                    repo.is_ancestor(id(a), id(b)).expect("is_ancestor"),
                    want,
                    "is {a} an ancestor of {b}?"
                );
                let base = plain(&["merge-base", a, b]);
                let want = String::from_utf8_lossy(&base.stdout).trim().to_string();
                let got = repo.merge_base(id(a), id(b)).expect("merge_base");
                assert_eq!(
                    got.map(|g| g.to_string()).unwrap_or_default(),
                    want,
                    "the merge base of {a} and {b}"
                );
                if repo.near_ancestry(id(a), id(b)).expect("near").is_none() {
                    far += 1;
                }
            }
        }
        assert!(
            far > 0,
            "some pairs are beyond a near walk, so the fallback is tested too"
        );
    }
}

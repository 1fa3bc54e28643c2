//! Who may give an agent work (SPEC §13). With a shared remote, anyone who can push
//! `refs/loop/tasks/*` could make an unattended agent run a prompt of theirs. With
//! `[trust] signers` — an allowed-signers file in git's SSH format, committed in the repository
//! and pinned with the finish line — a runner gives a task to an agent, a judge or a promotion
//! only while the task's title and body, as they stand, are those of the newest commit *of that
//! task* (its `Loop-Task:` trailer, on the task's first-parent history) that carries an SSH
//! signature git finds good and made by a key the file lists. Every other task is held
//! `blocked: untrusted`; a person whose key is listed re-arms it by a signed edit or reopen
//! (`commit.gpgSign`: see [`crate::store::Store::signing`]).
//!
//! - The signatures are git's to check (`git log --no-walk --format=%G?` with
//!   `gpg.ssh.allowedSignersFile` set to the pinned file's contents), never git-loop's own: `G`
//!   is a good signature by a listed key; a good signature by a key the file does not list is
//!   `U`, and does not count. Only SSH signatures count: a GPG signature is judged by the
//!   person's keyring, not by the file. Which commits git is shown is found first by reading
//!   them (a signature header and the trailer), at most the newest 16 of them, so that a
//!   long history costs a walk, not a signature check per commit.
//! - The newest signed version decides: an older signed title or body put back on top is not
//!   what the person signed last. This clone remembers the signed commit it accepted last for
//!   each task, and refuses a history rewound past it.
//! - The task's branch must be its own (`loop/<short id>`): it names what the agent works on.
//! - What else the task carries is nobody's signature: under `[trust]` a runner shows an agent
//!   a failure's account (`{context}`) only when this clone wrote it ([`Kept::Context`]), and
//!   never moves the task branch to a head another clone's run record names.
//! - A history that cannot be read or checked is untrusted, never an error: what anyone can
//!   push must not stop the runner.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{LazyLock, Mutex, PoisonError};

use anyhow::{Context, Result};
use gix::ObjectId;

use crate::error::{Class, LoopError};
use crate::finish_line::Frozen;
use crate::git::Repo;
use crate::git::cli::Git;
use crate::task::Task;

/// How far back a task's history is searched for a signed commit. A task's own history is
/// bounded by its budgets; a longer one is somebody's construction, and untrusted.
const MAX_HISTORY: usize = 10_000;

/// The allowed signers of tasks, as the pinned finish line has them.
#[derive(Clone, Debug)]
pub struct Signers {
    /// The file's path in the repository (`[trust] signers`).
    pub path: String,
    /// Its blob at the target's commit.
    pub blob: ObjectId,
    /// Its contents, written out for git before each check.
    bytes: Vec<u8>,
    file: PathBuf,
}

/// Whether a task may be given to an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A listed key signed its title and body: who (the principal the file names) and where.
    Trusted { signer: String, commit: ObjectId },
    /// Why not, in words for the task's `detail`.
    Untrusted(String),
}

/// The allowed signers the finish line names, if it names any: the file as the target's
/// pinned commit has it. A file the target does not have is a `config` error.
pub fn signers(repo: &Repo, frozen: &Frozen) -> Result<Option<Signers>> {
    let Some(path) = &frozen.sections.trust.signers else {
        return Ok(None);
    };
    let Some((blob, _)) = repo.entry_at(frozen.target, path)? else {
        return Err(LoopError::new(
            Class::Config,
            format!(
                "[trust] signers names {path}, which the target has not committed (at {})",
                crate::ids::short(&frozen.target.to_string())
            ),
        )
        .with_hint("commit the allowed-signers file on the target, then `git loop init --repin`")
        .into());
    };
    let bytes = repo.blob(blob)?;
    let file = repo
        .common_dir()
        .join("loop")
        .join("trust")
        .join(format!("allowed_signers-{blob}"));
    Ok(Some(Signers {
        path: path.clone(),
        blob,
        bytes,
        file,
    }))
}

impl Signers {
    /// The file git reads, holding exactly the pinned contents (written again when anything
    /// else changed it).
    fn materialise(&self) -> Result<&PathBuf> {
        if std::fs::read(&self.file).ok().as_deref() != Some(self.bytes.as_slice()) {
            crate::files::replace(&self.file, &self.bytes)
                .with_context(|| format!("writing {}", self.file.display()))?;
        }
        Ok(&self.file)
    }
}

/// What the last checks found, by task tip, signers blob and the signed commit this clone
/// accepted last (a tip's history never changes).
type Checked = HashMap<(ObjectId, ObjectId, Option<ObjectId>), Verdict>;

fn checked() -> std::sync::MutexGuard<'static, Checked> {
    static CHECKED: LazyLock<Mutex<Checked>> = LazyLock::new(Default::default);
    CHECKED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// At most this many signed commits of a task are shown to git, newest first: the newest one a
/// listed key signed decides. More (signed by keys the file does not list) only hide it, and
/// the task is then untrusted: a refusal, never a way in.
const MAX_CANDIDATES: usize = 16;

/// The signed commit this clone accepted last for task `id`: a later tip whose history no
/// longer holds it was rewound to an older signed version, which is refused.
fn accepted(repo: &Repo, id: &str) -> Option<ObjectId> {
    crate::git::oid(recall(repo, Kept::Accepted, id)?.trim()).ok()
}

/// Whether task `id`, whose ref is at `tip`, may be given to an agent under `signers`. A
/// history git-loop cannot read is untrusted, never an error: what anyone can push must not
/// stop the runner.
pub fn verify(repo: &Repo, signers: &Signers, id: &str, tip: ObjectId) -> Result<Verdict> {
    let memo = accepted(repo, id);
    let key = (tip, signers.blob, memo);
    if let Some(v) = checked().get(&key) {
        return Ok(v.clone());
    }
    let verdict = match check(repo, signers, id, tip, memo) {
        Ok(v) => v,
        Err(e) => Verdict::Untrusted(format!("its history cannot be checked: {e:#}")),
    };
    if let Verdict::Trusted { commit, .. } = &verdict
        && memo != Some(*commit)
    {
        remember(repo, Kept::Accepted, id, &commit.to_string());
    }
    let mut memo_map = checked();
    if memo_map.len() > 4096 {
        memo_map.clear();
    }
    memo_map.insert(key, verdict.clone());
    Ok(verdict)
}

/// What an agent is told of a task: its title and its body's blob.
type Content = (String, Option<ObjectId>);

/// A task's title and its body's blob at commit `at` (`None`: not a task document of `id`,
/// a body that is not a file, or a branch that is not the task's own `loop/<short id>`, which
/// names the branch the agent works on).
fn content(repo: &Repo, id: &str, at: ObjectId) -> Result<Option<Content>> {
    let Some(doc) = repo.file_at(at, crate::store::DOC)? else {
        return Ok(None);
    };
    let Ok(task) = std::str::from_utf8(&doc)
        .map_err(|e| e.to_string())
        .and_then(Task::from_toml)
    else {
        return Ok(None);
    };
    if task.id != id || task.branch != format!("loop/{}", crate::ids::short(id)) {
        return Ok(None);
    }
    let body = match repo.entry_at(at, crate::store::BODY)? {
        Some((blob, mode)) if mode.starts_with("100") => Some(blob),
        Some(_) => return Ok(None),
        None => None,
    };
    Ok(Some((task.title, body)))
}

/// The commits of the task's first-parent history (newest first) that carry an SSH signature
/// and the task's trailer (found by reading the commits, before git checks any signature).
fn candidates(
    repo: &Repo,
    id: &str,
    tip: ObjectId,
) -> Result<std::result::Result<Vec<ObjectId>, String>> {
    let trailer = format!("Loop-Task: {id}");
    let mut found = Vec::new();
    let mut at = Some(tip);
    let mut walked = 0usize;
    while let Some(commit) = at {
        walked += 1;
        if walked > MAX_HISTORY {
            return Ok(Err(format!(
                "its history is longer than {MAX_HISTORY} commits"
            )));
        }
        let info = repo.commit_info(commit)?;
        if info.ssh_signed && info.message.lines().any(|l| l.trim_end() == trailer) {
            found.push(commit);
        }
        at = info.parents.first().copied();
    }
    Ok(Ok(found))
}

fn check(
    repo: &Repo,
    signers: &Signers,
    id: &str,
    tip: ObjectId,
    memo: Option<ObjectId>,
) -> Result<Verdict> {
    let Some(now) = content(repo, id, tip)? else {
        return Ok(Verdict::Untrusted(format!(
            "its ref does not hold a task document of {} on its own branch loop/{}",
            crate::ids::short(id),
            crate::ids::short(id)
        )));
    };
    let found = match candidates(repo, id, tip)? {
        Ok(c) => c,
        Err(why) => return Ok(Verdict::Untrusted(why)),
    };
    let shown: Vec<ObjectId> = found.iter().take(MAX_CANDIDATES).copied().collect();
    let mut unlisted = 0usize;
    let mut unchecked: Vec<&str> = Vec::new();
    let mut decided = None;
    if !shown.is_empty() {
        let file = signers.materialise()?;
        let git = Git::new(repo.common_dir(), false);
        let mut args = vec![
            "-c".to_string(),
            format!("gpg.ssh.allowedSignersFile={}", file.display()),
            "log".into(),
            "--no-show-signature".into(),
            "--no-walk=unsorted".into(),
            "--format=%H%x00%G?%x00%GS".into(),
        ];
        args.extend(shown.iter().map(ObjectId::to_string));
        let out = git.output(&args)?;
        if !out.status.success() {
            return Ok(Verdict::Untrusted(format!(
                "git cannot check its signatures: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines() {
            let mut fields = line.split('\0');
            let (Some(hex), Some(status), signer) = (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            match status {
                "G" => {
                    decided = Some((
                        crate::git::oid(hex)?,
                        signer.unwrap_or_default().to_string(),
                    ));
                    break;
                }
                "U" => unlisted += 1,
                "N" => {}
                "B" => unchecked.push("a bad signature"),
                "X" | "Y" => unchecked.push("an expired signature or key"),
                "R" => unchecked.push("a revoked key"),
                _ => unchecked.push("a signature git could not check (is ssh-keygen installed?)"),
            }
        }
    }
    let Some((commit, signer)) = decided else {
        let mut why = format!("no commit of it is signed by a key {} lists", signers.path);
        if unlisted > 0 {
            why.push_str(&format!(
                " ({unlisted} signed by a key the file does not list)"
            ));
        }
        if let Some(first) = unchecked.first() {
            why.push_str(&format!(" ({} with {first})", unchecked.len()));
        }
        return Ok(Verdict::Untrusted(why));
    };
    // The newest signed version decides: an older one put back on top (a retracted title or
    // body) is not what the person signed last.
    if content(repo, id, commit)?.as_ref() != Some(&now) {
        return Ok(Verdict::Untrusted(format!(
            "its title or body is not what {signer} signed last ({})",
            crate::ids::short(&commit.to_string())
        )));
    }
    // A signed cancel or gate holds the task for a person: it vouches for nothing to run (a
    // person's cancel of a stranger's task carries the stranger's title and body).
    if let Some(doc) = repo.file_at(commit, crate::store::DOC)?
        && let Ok(signed) = std::str::from_utf8(&doc)
            .map_err(|e| e.to_string())
            .and_then(Task::from_toml)
        && matches!(
            signed.state,
            crate::task::State::Cancelled | crate::task::State::HumanGated
        )
    {
        return Ok(Verdict::Untrusted(format!(
            "the newest version {signer} signed ({}) {} it; only a signed reopen re-arms it",
            crate::ids::short(&commit.to_string()),
            if signed.state == crate::task::State::Cancelled {
                "cancelled"
            } else {
                "gated"
            }
        )));
    }
    // A history rewound past the signed version this clone accepted last.
    if let Some(memo) = memo
        && memo != commit
    {
        let at = |c: ObjectId| found.iter().position(|f| *f == c);
        let older = matches!((at(commit), at(memo)), (Some(p), Some(m)) if m > p);
        if !older {
            return Ok(Verdict::Untrusted(format!(
                "its history no longer holds {}, the signed version this clone accepted last",
                crate::ids::short(&memo.to_string())
            )));
        }
    }
    Ok(Verdict::Trusted { signer, commit })
}

/// What this clone keeps of each task under `[trust]` (`<git-common-dir>/loop/trust/<kind>/<id>`):
/// what it wrote itself, which nobody who can only push loop state can make it believe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    /// The failure's account (`{context}`) this clone wrote last.
    Context,
    /// The signed commit this clone accepted last (see [`verify`]).
    Accepted,
    /// The promotion checkpoint this clone wrote last.
    Promote,
    /// The head this clone's judge (or a promotion's gates) approved last.
    Approved,
}

impl Kept {
    fn dir(self) -> &'static str {
        match self {
            Kept::Context => "context",
            Kept::Accepted => "accepted",
            Kept::Promote => "promote",
            Kept::Approved => "approved",
        }
    }
}

fn kept_path(repo: &Repo, kind: Kept, id: &str) -> PathBuf {
    repo.common_dir()
        .join("loop")
        .join("trust")
        .join(kind.dir())
        .join(id)
}

/// Remembers that this clone wrote `value` as the `kind` of task `id`. Best effort: what is
/// not remembered is only not trusted.
pub fn remember(repo: &Repo, kind: Kept, id: &str, value: &str) {
    if let Err(e) = crate::files::replace(&kept_path(repo, kind, id), value.as_bytes()) {
        tracing::debug!("remembering the {} of {id}: {e}", kind.dir());
    }
}

/// What this clone remembers as the `kind` of task `id`.
fn recall(repo: &Repo, kind: Kept, id: &str) -> Option<String> {
    std::fs::read_to_string(kept_path(repo, kind, id)).ok()
}

/// Whether `value` is the `kind` of task `id` this clone wrote last.
pub fn is_ours(repo: &Repo, kind: Kept, id: &str, value: &str) -> bool {
    recall(repo, kind, id).is_some_and(|ours| ours == value)
}

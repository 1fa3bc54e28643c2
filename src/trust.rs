//! Who may give an agent work (SPEC §13). With a shared remote, anyone who can push
//! `refs/loop/tasks/*` could make an unattended agent run a prompt of theirs. With
//! `[trust] signers` — an allowed-signers file in git's SSH format, committed in the repository
//! and pinned with the finish line — a runner gives a task to an agent, a judge or a promotion
//! only while the task's title and body, as they stand, are those of a commit *of that task*
//! (its `Loop-Task:` trailer) that carries an SSH signature git finds good and made by a key the
//! file lists. Every other task is held `blocked: untrusted`; a person whose key is listed
//! re-arms it by a signed edit or reopen (`commit.gpgSign`: see [`crate::store::Store::signing`]).
//!
//! The signatures are git's to check (`git log --format=%G?` with `gpg.ssh.allowedSignersFile`
//! set to the pinned file), never git-loop's own: `G` is a good signature by a listed key; a
//! good signature by a key the file does not list is `U`, and does not count. Only SSH
//! signatures count: a GPG signature is judged by the person's keyring, not by the file.

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
        if std::fs::read(&self.file).ok().as_deref() == Some(self.bytes.as_slice()) {
            return Ok(&self.file);
        }
        let dir = self
            .file
            .parent()
            .context("the signers file has a directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = self
            .file
            .with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, &self.bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.file)
            .with_context(|| format!("writing {}", self.file.display()))?;
        Ok(&self.file)
    }
}

/// What the last checks found, by task tip and signers blob (a tip's history never changes).
type Checked = HashMap<(ObjectId, ObjectId), Verdict>;

fn checked() -> std::sync::MutexGuard<'static, Checked> {
    static CHECKED: LazyLock<Mutex<Checked>> = LazyLock::new(Default::default);
    CHECKED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether task `id`, whose ref is at `tip`, may be given to an agent under `signers`.
pub fn verify(repo: &Repo, signers: &Signers, id: &str, tip: ObjectId) -> Result<Verdict> {
    if let Some(v) = checked().get(&(tip, signers.blob)) {
        return Ok(v.clone());
    }
    let verdict = check(repo, signers, id, tip)?;
    let mut memo = checked();
    if memo.len() > 4096 {
        memo.clear();
    }
    memo.insert((tip, signers.blob), verdict.clone());
    Ok(verdict)
}

/// A task's title and its body's blob at commit `at` (`None`: not a task document of `id`).
fn content(repo: &Repo, id: &str, at: ObjectId) -> Result<Option<(String, Option<ObjectId>)>> {
    let Some(doc) = repo.file_at(at, crate::store::DOC)? else {
        return Ok(None);
    };
    let Ok(task) = std::str::from_utf8(&doc)
        .map_err(|e| e.to_string())
        .and_then(Task::from_toml)
    else {
        return Ok(None);
    };
    if task.id != id {
        return Ok(None);
    }
    let body = repo.entry_at(at, crate::store::BODY)?.map(|(blob, _)| blob);
    Ok(Some((task.title, body)))
}

fn check(repo: &Repo, signers: &Signers, id: &str, tip: ObjectId) -> Result<Verdict> {
    let Some(now) = content(repo, id, tip)? else {
        return Ok(Verdict::Untrusted(format!(
            "its ref does not hold a task document of {}",
            crate::ids::short(id)
        )));
    };
    let file = signers.materialise()?;
    let git = Git::new(repo.common_dir(), false);
    let out = git.output(&[
        "-c".to_string(),
        format!("gpg.ssh.allowedSignersFile={}", file.display()),
        "log".into(),
        "--no-show-signature".into(),
        "--first-parent".into(),
        format!("--max-count={}", MAX_HISTORY + 1),
        "--format=%H%x00%G?%x00%GS".into(),
        tip.to_string(),
    ])?;
    if !out.status.success() {
        return Err(LoopError::new(
            Class::Transient,
            format!(
                "cannot read the history of task {}: {}",
                crate::ids::short(id),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        )
        .into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let trailer = format!("Loop-Task: {id}");
    let (mut commits, mut unlisted, mut gpg) = (0usize, 0usize, 0usize);
    let mut unchecked: Vec<&str> = Vec::new();
    for line in text.lines() {
        commits += 1;
        if commits > MAX_HISTORY {
            return Ok(Verdict::Untrusted(format!(
                "its history is longer than {MAX_HISTORY} commits"
            )));
        }
        let mut fields = line.split('\0');
        let (Some(hex), Some(status), signer) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        match status {
            "G" => {}
            "N" => continue,
            "U" => {
                unlisted += 1;
                continue;
            }
            other => {
                unchecked.push(match other {
                    "B" => "a bad signature",
                    "X" | "Y" => "an expired signature or key",
                    "R" => "a revoked key",
                    _ => "a signature git could not check (is ssh-keygen installed?)",
                });
                continue;
            }
        }
        let commit = crate::git::oid(hex)?;
        let info = repo.commit_info(commit)?;
        if !info.ssh_signed {
            gpg += 1;
            continue;
        }
        if !info.message.lines().any(|l| l.trim_end() == trailer) {
            continue;
        }
        if content(repo, id, commit)?.as_ref() == Some(&now) {
            return Ok(Verdict::Trusted {
                signer: signer.unwrap_or_default().to_string(),
                commit,
            });
        }
    }
    let mut why = format!(
        "no commit of it signed by a key {} lists has its title and body as they are",
        signers.path
    );
    if unlisted > 0 {
        why.push_str(&format!(
            " ({unlisted} signed by a key the file does not list)"
        ));
    }
    if gpg > 0 {
        why.push_str(&format!(
            " ({gpg} signed with GPG, which does not count: only SSH signatures do)"
        ));
    }
    if let Some(first) = unchecked.first() {
        why.push_str(&format!(" ({} with {first})", unchecked.len()));
    }
    Ok(Verdict::Untrusted(why))
}

//! A task's worktree, `<git-common-dir>/loop/worktrees/<short id>` on the task's branch, and
//! the target tip the branch starts from.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use gix::ObjectId;

use super::worker::Job;
use crate::error::{Class, LoopError};
use crate::git::cli::Git;
use crate::git::{Cas, CasOutcome, Repo};
use crate::ids::short;
use crate::refs;
use crate::task::Task;

/// Where the runner keeps the worktree of task `id`.
pub fn worktree_path(repo: &Repo, id: &str) -> PathBuf {
    repo.common_dir()
        .join("loop")
        .join("worktrees")
        .join(short(id))
}

/// The task's worktree, made (or reused) on its branch.
pub(super) fn worktree(job: &Job, repo: &Repo, git: &Git, task: &Task) -> Result<PathBuf> {
    let path = worktree_path(repo, &task.id);
    let shown = path.to_string_lossy().into_owned();
    repo.interrupted_adds(true)?;
    if crate::rescue::worktree_link_valid(&path) {
        return Ok(path);
    }
    let branch_ref = refs::branch(&task.branch);
    let branch_head = repo.read_ref(&branch_ref)?;
    if path.exists() {
        // A directory without working git metadata: a removal interrupted. Save what differs
        // from the branch, then start it again.
        crate::rescue::rescue_files(repo, git, &path, &task.id, branch_head)?;
        std::fs::remove_dir_all(&path).with_context(|| format!("clearing {shown}"))?;
    }
    if branch_head.is_none() {
        let start = target_tip(job, repo, git)?;
        let created = repo.cas(&[Cas::Create {
            name: branch_ref.clone(),
            new: start,
        }])?;
        if created != CasOutcome::Applied {
            return Err(LoopError::new(
                Class::Transient,
                format!(
                    "the branch {} could not be made (it appeared meanwhile, or is locked)",
                    task.branch
                ),
            )
            .into());
        }
    }
    let add = || repo.add_worktree(git, &path, &task.branch);
    if let Err(e) = add() {
        // A worktree whose directory was deleted by hand is still registered (and still holds
        // the branch): its metadata is stale, so prune it and try once more. (Asked of the
        // metadata, not of the error's wording.)
        let ours = Path::new("loop").join("worktrees").join(short(&task.id));
        let stale = repo
            .worktrees()?
            .iter()
            .any(|w| w.path.ends_with(&ours) && !w.path.exists());
        if !stale {
            return Err(e);
        }
        git.run(&["worktree", "prune"])?;
        add()?;
    }
    Ok(path)
}

/// The target's tip: the remote's as last fetched (fetched now if never) when there is one,
/// else the local one. Promotion fetches before it merges; everything before it may work from
/// the last view.
pub(super) fn target_tip(job: &Job, repo: &Repo, git: &Git) -> Result<ObjectId> {
    let target = &job.policy.loop_.target;
    let name = match &job.policy.loop_.remote {
        Some(remote) => {
            let tracking = crate::git::tracking_ref(remote, target);
            if repo.read_ref(&tracking)?.is_none() {
                git.fetch(remote, &format!("+refs/heads/{target}:{tracking}"))?;
            }
            tracking
        }
        None => refs::branch(target),
    };
    repo.read_ref(&name)?.ok_or_else(|| {
        LoopError::new(
            Class::Config,
            format!("the target branch {target} does not exist"),
        )
        .into()
    })
}

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
    let branch_ref = refs::branch(&task.branch);
    let branch_head = settle(job, repo, git, task)?;
    if crate::rescue::worktree_link_valid(&path) {
        return Ok(path);
    }
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

/// Brings this clone's branch of `task` to where the task's latest run left it, when another
/// clone ran the task since this one did (see [`settled_head`]): the work goes on, or is
/// judged, from there. What this clone's checkout of the task holds besides is saved first,
/// and the checkout removed, to be made again on the branch. Returns the branch's head.
pub(super) fn settle(job: &Job, repo: &Repo, git: &Git, task: &Task) -> Result<Option<ObjectId>> {
    let local = repo.read_ref(&refs::branch(&task.branch))?;
    // Under `[trust]`, a head another clone's record names is anyone's who can push: the work
    // goes on from this clone's own branch.
    let shared = job.policy.loop_.remote.is_some() && job.signers.is_none();
    let Some(left) = settled_head(repo, &task.id, local, shared)? else {
        return Ok(local);
    };
    let path = worktree_path(repo, &task.id);
    if path.exists() {
        crate::rescue::rescue_files(repo, git, &path, &task.id, local)?;
        std::fs::remove_dir_all(&path).with_context(|| format!("clearing {}", path.display()))?;
    }
    move_branch(repo, task, local, left)?;
    Ok(Some(left))
}

/// Where this clone's branch of task `id`, now at `local`, must be moved before the task is
/// worked on, judged or promoted: to the head its latest run left (or its latest judge
/// judged), when that head is not `local` and `local` is missing or a head an earlier run
/// left — another clone ran the task since this one last did (with a shared remote, SPEC
/// §13). The head travels with the task: its run record names it, and the task's history
/// keeps its commits reachable, so every clone that has the task has them. A branch anywhere
/// else (a person's commits on top, or a person's reset) is left as it is: `None`. Without a
/// shared remote (`shared` false) every run of the task was this clone's, and the branch is
/// where its runs and people left it.
fn settled_head(
    repo: &Repo,
    id: &str,
    local: Option<ObjectId>,
    shared: bool,
) -> Result<Option<ObjectId>> {
    if !shared {
        return Ok(None);
    }
    let store = crate::store::Store::new(repo);
    let Ok(stored) = store.load(id) else {
        return Ok(None);
    };
    // The heads the task's runs left and its judges judged, oldest first (by their file
    // names: a run's start, a judge's after the run it judged).
    let mut heads: Vec<(String, ObjectId)> = store
        .runs(&stored)?
        .into_iter()
        .filter_map(|(name, run)| {
            let head = crate::git::oid(run.get("head")?.as_str()?).ok()?;
            Some((name, head))
        })
        .collect();
    // A judge in the worker that ran the agent records under the run's name.
    heads.sort_by_key(|(name, _)| {
        let name = name.trim_end_matches(".toml");
        let run = name.trim_end_matches("-judge");
        (run.to_string(), run.len() != name.len())
    });
    let Some(last) = heads.last().map(|(_, h)| *h) else {
        return Ok(None);
    };
    let stale = match local {
        None => true,
        Some(local) => local != last && heads.iter().any(|(_, h)| *h == local),
    };
    if !stale || repo.kind(last)? != Some(crate::git::Kind::Commit) {
        return Ok(None);
    }
    Ok(Some(last))
}

/// Moves `task`'s branch from `old` to `new` by compare-and-swap.
fn move_branch(repo: &Repo, task: &Task, old: Option<ObjectId>, new: ObjectId) -> Result<()> {
    let name = refs::branch(&task.branch);
    let edit = match old {
        Some(old) => Cas::Update { name, old, new },
        None => Cas::Create { name, new },
    };
    if repo.cas(&[edit])? != CasOutcome::Applied {
        return Err(LoopError::new(
            Class::Transient,
            format!(
                "the branch {} moved while it was being brought up to date",
                task.branch
            ),
        )
        .into());
    }
    tracing::info!(
        "{}: {} brought to {new}, where the task's latest run left it",
        short(&task.id),
        task.branch
    );
    Ok(())
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

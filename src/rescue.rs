//! Saving work before anything is removed (SPEC §1, principle 8): uncommitted and untracked
//! files of a worktree, or a branch's commits, go to `refs/loop/rescue/<id>/<n>` first.

use std::path::Path;

use anyhow::Result;
use gix::ObjectId;

use crate::git::cli::Git;
use crate::git::{Cas, CasOutcome, Repo, oid};

/// Saves the uncommitted and untracked-but-not-ignored files of a worktree into a new rescue
/// ref, without touching its index. Returns the ref, or `None` when there was nothing to save.
pub fn rescue_worktree(repo: &Repo, git: &Git, id: &str) -> Result<Option<String>> {
    if !git.is_dirty()? {
        return Ok(None);
    }
    let index = std::env::temp_dir().join(format!(
        "git-loop-rescue-{}-{:x}",
        std::process::id(),
        crate::rand::u64()
    ));
    let with_index = git
        .clone()
        .with_env("GIT_INDEX_FILE", &index.to_string_lossy());
    let result = (|| -> Result<ObjectId> {
        let head = git.run(&["rev-parse", "--verify", "--quiet", "HEAD"]).ok();
        match &head {
            Some(_) => with_index.run(&["read-tree", "HEAD"])?,
            None => with_index.run(&["read-tree", "--empty"])?,
        };
        with_index.run(&["add", "-A", "--", "."])?;
        let tree = with_index.run(&["write-tree"])?;
        let parents: Vec<ObjectId> = head.iter().map(|h| oid(h.trim())).collect::<Result<_>>()?;
        repo.write_commit(
            &format!(
                "rescue: uncommitted work of task {id} in {}\n\nLoop-Task: {id}\n",
                git.dir().display()
            ),
            oid(tree.trim())?,
            &parents,
        )
    })();
    let _ = std::fs::remove_file(&index);
    let commit = result?;
    Ok(Some(save_rescue(repo, id, commit)?))
}

/// Whether the worktree at `path` still leads to its git metadata: its `.git` file names a
/// directory that exists. A removal stopped half way leaves a `.git` file pointing nowhere,
/// where every git command fails.
pub fn worktree_link_valid(path: &Path) -> bool {
    let dot_git = path.join(".git");
    if dot_git.is_dir() {
        return true;
    }
    let Ok(text) = std::fs::read_to_string(&dot_git) else {
        return false;
    };
    let Some(dir) = text.trim().strip_prefix("gitdir: ") else {
        return false;
    };
    let dir = Path::new(dir);
    let dir = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        path.join(dir)
    };
    dir.join("HEAD").exists()
}

/// Saves every file under `path` that is not ignored, as a parentless commit in a new rescue
/// ref, reading them through the repository's own git dir (for a directory whose worktree
/// metadata is gone). `None` when there is no file to save, or when every file left is as
/// `base` has it (what a removal stopped half way leaves of a clean checkout of `base`).
pub fn rescue_files(
    repo: &Repo,
    git: &Git,
    path: &Path,
    id: &str,
    base: Option<ObjectId>,
) -> Result<Option<String>> {
    let index = std::env::temp_dir().join(format!(
        "git-loop-rescue-{}-{:x}",
        std::process::id(),
        crate::rand::u64()
    ));
    let there = git
        .in_dir(path)
        .with_env("GIT_DIR", &repo.common_dir().to_string_lossy())
        .with_env("GIT_WORK_TREE", &path.to_string_lossy())
        .with_env("GIT_INDEX_FILE", &index.to_string_lossy());
    let result = (|| -> Result<Option<ObjectId>> {
        there.run(&["read-tree", "--empty"])?;
        there.run(&["add", "-A", "--", "."])?;
        let tree = oid(there.run(&["write-tree"])?.trim())?;
        if there
            .run(&["ls-tree", &tree.to_string()])?
            .trim()
            .is_empty()
        {
            return Ok(None);
        }
        // Files the removal already deleted do not count: only added or changed ones.
        if let Some(base) = base
            && there
                .run(&[
                    "diff-tree",
                    "-r",
                    "--no-renames",
                    "--name-only",
                    "--diff-filter=AMT",
                    &base.to_string(),
                    &tree.to_string(),
                ])?
                .trim()
                .is_empty()
        {
            return Ok(None);
        }
        Ok(Some(repo.write_commit(
            &format!(
                "rescue: files of task {id} in {} (its worktree metadata was gone)\n\nLoop-Task: {id}\n",
                path.display()
            ),
            tree,
            &[],
        )?))
    })();
    let _ = std::fs::remove_file(&index);
    match result? {
        Some(commit) => Ok(Some(save_rescue(repo, id, commit)?)),
        None => Ok(None),
    }
}

/// Saves what the checkout of task `id` at `path` holds that is nowhere else, before it goes:
/// commits on a HEAD that no local branch holds (made on a detached HEAD), then uncommitted and
/// untracked-not-ignored files; for a directory whose git link is gone, every file that
/// differs from `branch_head`. Says what it saved. An error means something could not be
/// saved: the checkout must then be left where it is.
pub fn save_checkout(
    repo: &Repo,
    git: &Git,
    path: &Path,
    id: &str,
    branch_head: Option<ObjectId>,
) -> Result<Vec<String>> {
    let mut did = Vec::new();
    if !path.exists() {
        return Ok(did);
    }
    if !worktree_link_valid(path) {
        if let Some(rescue) = rescue_files(repo, git, path, id, branch_head)? {
            did.push(format!("saved its files in {rescue}"));
        }
        return Ok(did);
    }
    let there = git.in_worktree(path);
    if let Ok(head) = there.run(&["rev-parse", "--verify", "--quiet", "HEAD"])
        && let Ok(head) = oid(head.trim())
        && !reachable_from_a_branch(repo, head)?
    {
        let rescue = save_rescue(repo, id, head)?;
        did.push(format!("saved its unbranched commits in {rescue}"));
    }
    if let Some(rescue) = rescue_worktree(repo, &there, id)? {
        did.push(format!("saved its uncommitted work in {rescue}"));
    }
    Ok(did)
}

/// Whether `commit` is in the history of a local branch (then removing a worktree whose HEAD
/// it is loses nothing).
pub fn reachable_from_a_branch(repo: &Repo, commit: ObjectId) -> Result<bool> {
    for branch in repo.refs_under("refs/heads/")? {
        if let Some(tip) = branch.id
            && repo.is_ancestor(commit, tip)?
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes the worktree at `path` as `git worktree remove --force` does; a directory git does
/// not know as one (or a half-removed one) is deleted instead, and one already gone is not an
/// error. Returns whether it could not be removed as a worktree (then `git worktree prune` is
/// due).
pub fn remove_worktree(repo: &Repo, path: &Path) -> Result<bool> {
    let removed = repo.remove_worktree(path, true);
    if removed.is_err() || path.exists() {
        match std::fs::remove_dir_all(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(anyhow::Error::new(e).context(format!("removing {}", path.display())));
            }
            _ => {}
        }
    }
    Ok(removed.is_err())
}

/// Points the next free `refs/loop/rescue/<id>/<n>` at `commit`.
pub fn save_rescue(repo: &Repo, id: &str, commit: ObjectId) -> Result<String> {
    let prefix = crate::refs::rescues(id);
    let existing = repo.refs_under(&prefix)?;
    if let Some(same) = existing.iter().find(|r| r.id == Some(commit)) {
        return Ok(same.name.clone());
    }
    let mut n = existing
        .iter()
        .filter_map(|r| r.name[prefix.len()..].parse::<u64>().ok())
        .max()
        .map_or(1, |m| m + 1);
    loop {
        let name = format!("{prefix}{n}");
        match repo.cas(&[Cas::Create {
            name: name.clone(),
            new: commit,
        }])? {
            CasOutcome::Applied => return Ok(name),
            CasOutcome::Lost => n += 1,
        }
    }
}

//! Saving work before anything is removed (SPEC §1, principle 8): uncommitted and untracked
//! files of a worktree, or a branch's commits, go to `refs/loop/rescue/<id>/<n>` first.

use anyhow::Result;
use gix::ObjectId;

use crate::git::cli::Git;
use crate::git::{Cas, CasOutcome, Repo, oid};

pub const RESCUE_REFS: &str = "refs/loop/rescue/";

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

/// Points the next free `refs/loop/rescue/<id>/<n>` at `commit`.
pub fn save_rescue(repo: &Repo, id: &str, commit: ObjectId) -> Result<String> {
    let prefix = format!("{RESCUE_REFS}{id}/");
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

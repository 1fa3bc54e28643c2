//! Repository upkeep while the loop runs. git-loop deletes refs all the time (leases, task
//! branches, heartbeats), and git's own automatic maintenance must not bring them back.
//!
//! `git pack-refs --auto` (run by `git gc --auto` and `git maintenance run --auto`, which git
//! starts by itself after a commit, a merge or a fetch) reads the loose refs once to decide
//! whether packing is worth it, before it locks `packed-refs`, and then packs what it read then
//! (git 2.47). A ref deleted in between — by a deletion that took every lock it should — is
//! written into `packed-refs` with its old value: it comes back. A plain `git pack-refs` reads
//! the loose refs under its lock and is safe.
//!
//! So the processes git-loop starts in its worktrees (agents, gates, reviewers, verify commands)
//! run with git's automatic maintenance off, and git-loop keeps the repository in shape itself
//! after each promotion: git's maintenance without its ref packing, and a plain
//! `git pack-refs --all --prune` when enough loose refs have piled up.

use std::path::Path;

use crate::git::Repo;
use crate::git::cli::Git;

/// Configuration for the processes git-loop starts in its worktrees: git's automatic
/// maintenance off (`maintenance.auto`, and `gc.auto` for gits older than 2.29), and no
/// signing (`commit.gpgSign`, `tag.gpgSign`: what an agent commits is never signed as the
/// person, and a sandbox hides the person's keys, so a signing git would fail), passed the way
/// git passes `-c` to its children, after whatever the environment already passes so.
pub fn quiet_git_env() -> Vec<(String, String)> {
    let first = std::env::var("GIT_CONFIG_COUNT")
        .ok()
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let settings = [
        ("maintenance.auto", "false"),
        ("gc.auto", "0"),
        ("commit.gpgSign", "false"),
        ("tag.gpgSign", "false"),
    ];
    let mut env = vec![(
        "GIT_CONFIG_COUNT".to_string(),
        (first + settings.len()).to_string(),
    )];
    for (i, (key, value)) in settings.iter().enumerate() {
        env.push((format!("GIT_CONFIG_KEY_{}", first + i), key.to_string()));
        env.push((format!("GIT_CONFIG_VALUE_{}", first + i), value.to_string()));
    }
    env
}

/// What git's automatic maintenance would have done after a promotion's fetches, merges and
/// pushes, done safely: `git maintenance run --auto` in the background with ref packing off,
/// when git's own estimate says there are too many loose objects (unless the repository's
/// configuration says `maintenance.auto=false`, as git would honour); and a plain
/// `git pack-refs --all --prune` when git-loop's loose refs pass git's own threshold.
pub fn after_promotion(repo: &Repo, git: &Git) {
    // A person who turned git's automatic maintenance off (`maintenance.auto=false`) gets
    // none from git-loop either.
    if repo.config_bool("maintenance.auto") != Some(false) && needs_gc(repo) {
        let _ = git.output(&[
            "-c",
            "gc.packRefs=false",
            "-c",
            "maintenance.pack-refs.enabled=false",
            "maintenance",
            "run",
            "--auto",
            "--quiet",
            "--detach",
        ]);
    }
    if needs_ref_packing(repo.common_dir()) {
        // Task branches stay loose: they come and go with their tasks, and packing them is
        // work undone at the next deletion. (`--exclude` is git 2.42's; an older git packs
        // them too.)
        let packed = git.output(&[
            "pack-refs",
            "--all",
            "--prune",
            "--exclude",
            "refs/heads/loop/*",
        ]);
        if !packed.is_ok_and(|o| o.status.success()) {
            let _ = git.output(&["pack-refs", "--all", "--prune"]);
        }
    }
}

/// git's `gc --auto` estimate: more loose objects than `gc.auto` (6700), from a sample of one
/// of the 256 object directories.
fn needs_gc(repo: &Repo) -> bool {
    let limit = repo
        .config_string("gc.auto")
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(6700);
    if limit <= 0 {
        return false;
    }
    let sample = repo.common_dir().join("objects").join("17");
    let loose = std::fs::read_dir(sample).map_or(0, |d| d.count() as i64);
    loose > (limit + 255) / 256
}

/// git's `pack-refs --auto` threshold, counted over git-loop's own refs (`refs/loop/*` and
/// the task branches): more loose refs than five times the base-2 logarithm of the number of
/// packed refs (estimated at 100 bytes each), and at least 16.
fn needs_ref_packing(common_dir: &Path) -> bool {
    let packed = std::fs::metadata(common_dir.join("packed-refs")).map_or(0, |m| m.len());
    let limit = (5 * (packed / 100).max(1).ilog2() as usize).max(16);
    let mut loose = 0;
    let mut dirs = vec![
        common_dir.join("refs").join("loop"),
        common_dir.join("refs").join("heads").join("loop"),
    ];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => dirs.push(entry.path()),
                Ok(_) if !entry.file_name().to_string_lossy().ends_with(".lock") => {
                    loose += 1;
                    if loose > limit {
                        return true;
                    }
                }
                _ => {}
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quiet_settings_come_after_those_already_passed() {
        // Only this test touches GIT_CONFIG_COUNT in this process.
        let env = quiet_git_env();
        let count = std::env::var("GIT_CONFIG_COUNT")
            .ok()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
        assert_eq!(env[0], ("GIT_CONFIG_COUNT".into(), (count + 4).to_string()));
        assert!(env.contains(&(format!("GIT_CONFIG_KEY_{count}"), "maintenance.auto".into())));
        assert!(env.contains(&(format!("GIT_CONFIG_VALUE_{count}"), "false".into())));
        assert!(env.contains(&(format!("GIT_CONFIG_KEY_{}", count + 1), "gc.auto".into())));
        assert!(env.contains(&(
            format!("GIT_CONFIG_KEY_{}", count + 2),
            "commit.gpgSign".into()
        )));
    }

    #[test]
    fn loose_refs_are_packed_past_the_threshold() {
        let dir = tempfile::tempdir().expect("temp dir");
        let tasks = dir.path().join("refs/loop/tasks");
        std::fs::create_dir_all(&tasks).expect("mkdir");
        for i in 0..16 {
            std::fs::write(tasks.join(format!("t{i}")), "x").expect("write");
        }
        std::fs::write(tasks.join("t0.lock"), "x").expect("write");
        assert!(!needs_ref_packing(dir.path()), "16 loose refs are few");
        std::fs::write(tasks.join("t16"), "x").expect("write");
        assert!(needs_ref_packing(dir.path()), "17 are many");
        // A large packed-refs raises the threshold: 2^10 packed refs → 50.
        std::fs::write(dir.path().join("packed-refs"), vec![b'x'; 1024 * 100]).expect("write");
        assert!(!needs_ref_packing(dir.path()));
    }
}

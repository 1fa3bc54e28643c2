//! Promotion edge cases found by review: each was a way to lose work, loop for ever, or exit
//! with the wrong class.

use crate::promote_fixture::{Config, Fixture};

#[test]
fn a_worktree_half_removed_by_a_kill_does_not_block_cleanup() {
    let f = Fixture::new(Config::default());
    assert_eq!(
        f.promote_env("GIT_LOOP_CRASH_AT", "cleanup:before").code,
        -1
    );
    // `git worktree remove` deletes in readdir order; a kill can leave the tree without .git.
    let wt = f.repo.worktree_path(f.short());
    std::fs::remove_file(wt.join(".git")).expect("remove .git");
    let out = f.promote();
    assert_eq!(out.code, 0, "{}", out.stderr);
    f.assert_converged();
    // What is left is a clean checkout of the branch: nothing to save.
    let rescues = f.repo.git(&["for-each-ref", "refs/loop/rescue/"]);
    assert_eq!(rescues, "", "no rescue of clean files");
}

#[test]
fn a_reworked_task_is_promoted_from_its_new_head_not_the_old_checkpoint() {
    let f = Fixture::new(Config::default());
    assert_eq!(
        f.promote_env("GIT_LOOP_CRASH_AT", "push_source:before")
            .code,
        -1
    );
    f.repo
        .ok(&["task", "gate", f.short(), "--reason", "rework"]);
    f.repo.ok(&["task", "reopen", f.short()]);
    let wt = f.repo.worktree_path(f.short());
    std::fs::write(wt.join("rework.txt"), "reworked\n").expect("write");
    f.git_in(&wt, &["add", "rework.txt"]);
    f.git_in(&wt, &["commit", "-q", "-m", "Rework"]);
    let h2 = f.git_in(&wt, &["rev-parse", "HEAD"]).trim().to_string();
    let out = f.promote();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        f.repo
            .git_out(&["merge-base", "--is-ancestor", &h2, "main"])
            .code,
        0,
        "the new head is merged"
    );
    assert_eq!(f.repo.git(&["show", "main:rework.txt"]), "reworked\n");
    let show = f.repo.run(&["task", "show", f.short(), "--json"]).json();
    assert_eq!(show["approved"], h2.as_str());
}

#[test]
fn new_unjudged_commits_on_a_resumed_promotion_go_back_to_the_judge() {
    let f = Fixture::new(Config::default());
    assert_eq!(
        f.promote_env("GIT_LOOP_CRASH_AT", "push_source:before")
            .code,
        -1
    );
    let wt = f.repo.worktree_path(f.short());
    std::fs::write(wt.join("late.txt"), "late\n").expect("write");
    f.git_in(&wt, &["add", "late.txt"]);
    f.git_in(&wt, &["commit", "-q", "-m", "Late"]);
    let main_before = f.target();
    let out = f.promote();
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(out.stderr.contains("moved after judging"), "{}", out.stderr);
    assert_eq!(f.target(), main_before);
}

#[test]
fn gates_tightened_on_the_target_do_not_refuse_a_branch_that_left_them_alone() {
    let f = Fixture::new(Config::default());
    let policy = std::fs::read_to_string(f.repo.path("policy.toml")).expect("policy");
    f.repo.write(
        "policy.toml",
        policy.replace("test -f README", "test -f README && true"),
    );
    f.repo
        .git(&["commit", "-q", "-am", "A person tightens verify"]);
    // Until the person re-pins, nothing is promoted against a finish line nobody pinned.
    let out = f.repo.fails(&["promote", f.short()], 3);
    assert!(
        out.stderr.contains("changed outside git-loop"),
        "{}",
        out.stderr
    );
    f.repo.ok(&["init", "--repin"]);
    let out = f.promote();
    assert_eq!(out.code, 0, "{}", out.stderr);

    // And once merged, a gate change on the target does not stop the promotion finishing.
    let g = Fixture::new(Config::default());
    assert_eq!(g.promote_env("GIT_LOOP_CRASH_AT", "verify:before").code, -1);
    let policy = std::fs::read_to_string(g.repo.path("policy.toml")).expect("policy");
    g.repo.write(
        "policy.toml",
        policy.replace("test -f README", "test -f README && true"),
    );
    g.repo
        .git(&["commit", "-q", "-am", "A person tightens verify"]);
    g.repo.ok(&["init", "--repin"]);
    let out = g.promote();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        g.repo.run(&["task", "show", g.short(), "--json"]).json()["state"],
        "done"
    );
}

#[test]
fn an_approved_head_already_in_the_target_is_finished() {
    let f = Fixture::new(Config {
        remote: true,
        ..Config::default()
    });
    let head = f
        .repo
        .git(&["rev-parse", &format!("loop/{}", f.short())])
        .trim()
        .to_string();
    f.repo.poke(&f.id, "approved", &format!("\"{head}\""));
    f.repo.git(&[
        "merge",
        "-q",
        "--no-ff",
        "-m",
        "merged elsewhere",
        &format!("loop/{}", f.short()),
    ]);
    f.repo.git(&["push", "-q", "origin", "main"]);
    let out = f.promote();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        f.repo.run(&["task", "show", f.short(), "--json"]).json()["state"],
        "done"
    );
}

#[test]
fn a_remote_task_branch_with_other_commits_is_policy_not_a_retry() {
    let f = Fixture::new(Config {
        remote: true,
        ..Config::default()
    });
    let remote = f.remote.clone().expect("remote");
    let other = f.repo.root.parent().expect("tmp").join("other");
    let branch = format!("loop/{}", f.short());
    f.repo.git(&["push", "-q", "origin", &branch]);
    f.repo.git(&[
        "clone",
        "-q",
        "-b",
        &branch,
        &remote.to_string_lossy(),
        &other.to_string_lossy(),
    ]);
    std::fs::write(other.join("x.txt"), "x\n").expect("write");
    f.git_in(&other, &["add", "x.txt"]);
    f.git_in(&other, &["commit", "-q", "-m", "more"]);
    f.git_in(&other, &["push", "-q", "origin", "HEAD"]);
    let out = f.promote();
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(
        out.stderr.contains("commits that the approved"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_missing_remote_target_is_config() {
    let f = Fixture::new(Config {
        remote: true,
        ..Config::default()
    });
    let remote = f.remote.clone().expect("remote");
    f.repo.git(&[
        "--git-dir",
        &remote.to_string_lossy(),
        "update-ref",
        "-d",
        "refs/heads/main",
    ]);
    let out = f.promote();
    assert_eq!(out.code, 3, "{}", out.stderr);
}

#[test]
fn a_persons_own_checkout_of_the_task_branch_is_left_alone() {
    let f = Fixture::new(Config::default());
    let wt = f.repo.worktree_path(f.short());
    f.repo.git(&["worktree", "remove", &wt.to_string_lossy()]);
    let mine = f.repo.root.parent().expect("tmp").join("my-review");
    f.repo.git(&[
        "worktree",
        "add",
        "-q",
        &mine.to_string_lossy(),
        &format!("loop/{}", f.short()),
    ]);
    std::fs::write(f.repo.path(".git/info/exclude"), "*.env\n").expect("exclude");
    std::fs::write(mine.join("secret.env"), "TOKEN=1\n").expect("write");
    let out = f.promote();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(mine.join("secret.env")).expect("kept"),
        "TOKEN=1\n"
    );
    assert!(out.stderr.is_empty() || !out.stderr.contains("removed the worktree"));
    assert_eq!(
        f.repo
            .git_out(&[
                "rev-parse",
                "--verify",
                "-q",
                &format!("refs/heads/loop/{}", f.short())
            ])
            .code,
        0,
        "the branch checked out there is kept"
    );
}

#[test]
fn commits_on_a_detached_head_in_the_task_worktree_are_saved() {
    let f = Fixture::new(Config::default());
    let wt = f.repo.worktree_path(f.short());
    f.git_in(&wt, &["checkout", "-q", "--detach"]);
    std::fs::write(wt.join("det.txt"), "detached work\n").expect("write");
    f.git_in(&wt, &["add", "det.txt"]);
    f.git_in(&wt, &["commit", "-q", "-m", "detached work"]);
    let c = f.git_in(&wt, &["rev-parse", "HEAD"]).trim().to_string();
    let out = f.promote();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let holders = f
        .repo
        .git(&["for-each-ref", "--format=%(refname)", "--contains", &c]);
    assert!(
        holders.contains(&format!("refs/loop/rescue/{}/", f.id)),
        "{holders}"
    );
}

#[test]
fn a_local_pre_push_hook_that_refuses_is_policy() {
    let f = Fixture::new(Config {
        remote: true,
        ..Config::default()
    });
    let hook = f.repo.path(".git/hooks/pre-push");
    std::fs::write(&hook, "#!/bin/sh\necho 'lint failed' >&2\nexit 1\n").expect("hook");
    std::process::Command::new("chmod")
        .args(["+x", &hook.to_string_lossy()])
        .status()
        .expect("chmod");
    let out = f.promote();
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(
        out.stderr.contains("pre-push hook refused"),
        "{}",
        out.stderr
    );
}

#[test]
fn squash_after_a_conflict_fix_converges() {
    let f = Fixture::new(Config {
        strategy: "squash",
        ..Config::default()
    });
    let repo = &f.repo;
    repo.write("feature.txt", "main's own version\n");
    repo.git(&["add", "feature.txt"]);
    repo.git(&["commit", "-q", "-m", "Main's feature"]);
    assert_eq!(f.promote().code, 5);
    let original = repo.run(&["task", "show", &f.id, "--json"]).json();
    let fix_id = original["after"][0].as_str().expect("fix").to_string();
    repo.git(&[
        "checkout",
        "-q",
        "-b",
        &format!("loop/{}", &fix_id[..7]),
        "main",
    ]);
    let _ = repo.git_out(&["merge", "-q", "--no-edit", &format!("loop/{}", f.short())]);
    repo.write(
        "feature.txt",
        "main's own version\nthe feature, second line\nmore\n",
    );
    repo.git(&["add", "feature.txt"]);
    repo.git(&["commit", "-q", "--no-edit"]);
    repo.git(&["checkout", "-q", "main"]);
    assert_eq!(repo.run(&["promote", &fix_id[..7]]).code, 0);
    let out = f.promote();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        repo.run(&["task", "show", &f.id, "--json"]).json()["state"],
        "done"
    );
    assert_eq!(
        repo.run(&["task", "list", "--json"])
            .json()
            .as_array()
            .expect("array")
            .len(),
        2,
        "no new conflict task"
    );
}

/// The real `git` behind a wrapper that, the first time a `git status` runs in one of
/// git-loop's task worktrees, deletes that worktree's `.git` file first: what a `git worktree
/// remove` still running from a killed promotion does while the next promotion looks.
fn git_removing_dot_git_on_status(bin: &std::path::Path) -> String {
    let mark = bin.join("fired");
    crate::common::git_wrapper(
        bin,
        &format!(
            "prev=; dir=; st=\nfor a in \"$@\"; do\n  [ \"$prev\" = -C ] && dir=$a\n  \
             [ \"$a\" = status ] && st=1\n  prev=$a\ndone\n\
             case \"$dir\" in */loop/worktrees/*)\n  \
             if [ -n \"$st\" ] && [ ! -e '{mark}' ]; then touch '{mark}'; rm -f \"$dir/.git\"; fi;;\nesac",
            mark = mark.display()
        ),
    )
}

#[test]
fn a_worktree_losing_its_git_link_while_it_is_saved_is_saved_and_removed() {
    let f = Fixture::new(Config {
        dirty_worktree: true,
        ..Config::default()
    });
    let bin = tempfile::tempdir().expect("tmp");
    let path = git_removing_dot_git_on_status(bin.path());
    let out = f.promote_env("PATH", &path);
    assert!(bin.path().join("fired").exists(), "the wrapper ran");
    // Before: `git status` there found the repository's own git dir above the checkout and
    // failed with "this operation must be run in a work tree" (exit 1), at every re-run.
    assert_eq!(out.code, 0, "{}", out.stderr);
    f.assert_converged();
    assert_eq!(rescued(&f, "feature.txt"), "uncommitted edit\n");
    assert_eq!(rescued(&f, "notes.txt"), "untracked notes\n");
}

#[test]
fn a_task_directory_git_no_longer_knows_is_saved_and_removed() {
    let f = Fixture::new(Config::default());
    let wt = f.repo.worktree_path(f.short());
    std::fs::write(wt.join("notes.txt"), "untracked notes\n").expect("write");
    // Its metadata went first (removed by hand, or pruned): git lists no such worktree.
    std::fs::remove_dir_all(f.repo.path(&format!(".git/worktrees/{}", f.short())))
        .expect("remove the metadata");
    let out = f.promote();
    // Before: the directory stayed (git did not list it), the untracked file unsaved.
    assert_eq!(out.code, 0, "{}", out.stderr);
    f.assert_converged();
    assert_eq!(rescued(&f, "notes.txt"), "untracked notes\n");
}

/// `file` as the task's first rescue ref holds it.
fn rescued(f: &Fixture, file: &str) -> String {
    let rescues = f
        .repo
        .git(&["for-each-ref", "--format=%(refname)", "refs/loop/rescue/"]);
    let rescue = rescues.lines().next().expect("a rescue ref");
    f.repo.show(rescue, file)
}

/// The real `git` behind a wrapper that logs each `git maintenance` call to `bin/calls` (and
/// runs none).
fn git_logging_maintenance(bin: &std::path::Path) -> String {
    crate::common::git_wrapper(
        bin,
        &format!(
            "for a in \"$@\"; do\n  if [ \"$a\" = maintenance ]; then\n    \
             echo call >> '{}'\n    exit 0\n  fi\ndone",
            bin.join("calls").display()
        ),
    )
}

/// After a promotion git-loop does the maintenance git would have done — unless the person
/// turned git's automatic maintenance off, which git-loop honours as git does.
#[test]
fn maintenance_after_a_promotion_honours_maintenance_auto_false() {
    for off in [false, true] {
        let f = Fixture::new(Config::default());
        if off {
            f.repo.git(&["config", "maintenance.auto", "false"]);
        }
        // Enough loose objects in git's sample directory for `gc --auto` to want to run.
        let sample = f.repo.path(".git/objects/17");
        std::fs::create_dir_all(&sample).expect("mkdir");
        for i in 0..40 {
            std::fs::write(sample.join(format!("{i:038x}")), "x").expect("write");
        }
        let bin = tempfile::tempdir().expect("tmp");
        let path = git_logging_maintenance(bin.path());
        let out = f.promote_env("PATH", &path);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let calls = std::fs::read_to_string(bin.path().join("calls"))
            .unwrap_or_default()
            .lines()
            .count();
        if off {
            assert_eq!(calls, 0, "maintenance.auto=false: no maintenance");
        } else {
            assert_eq!(calls, 1, "one maintenance run after the promotion");
        }
    }
}

/// The person's checkout is in the middle of rebasing the (local) target: moving the branch
/// under git's feet would fail the rebase's last step. The promotion waits (exit 4, saying
/// why) and goes through once the rebase is over.
#[test]
fn a_promotion_waits_while_the_persons_checkout_rebases_the_target() {
    let f = Fixture::new(Config::default());
    let repo = &f.repo;
    repo.write("c.txt", "main's\n");
    repo.git(&["add", "c.txt"]);
    repo.git(&["commit", "-q", "-m", "main's c"]);
    repo.git(&["checkout", "-q", "-b", "side", "main~1"]);
    repo.write("c.txt", "side's\n");
    repo.git(&["add", "c.txt"]);
    repo.git(&["commit", "-q", "-m", "side's c"]);
    repo.git(&["checkout", "-q", "main"]);
    assert_ne!(
        repo.git_out(&["rebase", "side"]).code,
        0,
        "the rebase stops on a conflict"
    );
    let before = repo.git(&["rev-parse", "refs/heads/main"]);
    let out = f.repo.fails(&["promote", f.short()], 4);
    assert!(out.stderr.contains("is rebasing main"), "{}", out.stderr);
    assert_eq!(
        repo.git(&["rev-parse", "refs/heads/main"]),
        before,
        "main was left alone"
    );
    repo.git(&["rebase", "--abort"]);
    let out = f.promote();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        repo.run(&["task", "show", f.short(), "--json"]).json()["state"],
        "done"
    );
}

//! Hooks, with real `git commit` and `git push` against a local bare remote.

use std::path::PathBuf;

use crate::common::{GOOD_BODY, Out, TestRepo};

const POLICY: &str =
    "[loop]\ntarget = \"main\"\nremote = \"origin\"\n[agent]\ncommand = [\"true\"]\n";

fn chmod_x(path: &std::path::Path) {
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(path)
        .status()
        .expect("chmod");
}

/// A repository with a committed policy, a bare remote holding main, and git-loop's hooks.
fn setup() -> (TestRepo, PathBuf) {
    let repo = TestRepo::new();
    repo.write("policy.toml", POLICY);
    repo.write("loop/PROMPT.md", "Do {title}.\n");
    repo.git(&["add", "."]);
    repo.git(&["commit", "-q", "-m", "set up git-loop"]);
    let remote = repo.add_bare_remote();
    (repo, remote)
}

fn commit(repo: &TestRepo, file: &str) {
    repo.write(file, format!("{file}\n"));
    repo.git(&["add", file]);
    repo.git(&["commit", "-q", "-m", &format!("add {file}")]);
}

#[test]
fn an_existing_pre_push_hook_is_chained_first_and_restored_byte_for_byte() {
    let (repo, _remote) = setup();
    let log = repo.root.parent().expect("tmp").join("lfs.log");
    let lfs = format!(
        "#!/bin/sh\n# git-lfs style hook\nwhile read l ls r rs; do echo \"lfs $r\" >> '{}'; done\nexit ${{LFS_FAIL:-0}}\n",
        log.display()
    );
    let hook = repo.path(".git/hooks/pre-push");
    std::fs::write(&hook, &lfs).expect("hook");
    chmod_x(&hook);
    let out = repo.ok(&["hooks", "install"]);
    assert!(
        out.contains("pre-push: installed; the hook that was there runs first"),
        "{out}"
    );
    assert!(
        repo.ok(&["hooks", "install"]).contains("already installed"),
        "idempotent"
    );

    // Both run, the old one first, both see the refs: the old one logs, git-loop refuses main.
    commit(&repo, "a.txt");
    let out = repo.git_out(&["push", "origin", "main"]);
    assert_ne!(out.code, 0, "the direct push to main is refused");
    assert!(
        out.stderr.contains("promote.guard_target"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&log).expect("lfs ran"),
        "lfs refs/heads/main\n"
    );
    // A push git-loop allows still runs the old hook, whose failure blocks it.
    repo.git(&["branch", "feature"]);
    let mut push = std::process::Command::new("git");
    push.args(["push", "origin", "feature"])
        .current_dir(&repo.root);
    crate::common::hermetic(&mut push, &repo.home);
    push.env("LFS_FAIL", "1");
    assert_ne!(
        push.output().expect("push").status.code(),
        Some(0),
        "the old hook's failure blocks"
    );
    assert!(
        repo.git(&["--git-dir", &_remote.to_string_lossy(), "branch"])
            .contains("main")
    );
    assert!(
        !repo
            .git(&["--git-dir", &_remote.to_string_lossy(), "branch"])
            .contains("feature")
    );
    repo.git(&["push", "-q", "origin", "feature"]);
    assert_eq!(
        std::fs::read_to_string(&log).expect("lfs ran"),
        "lfs refs/heads/main\nlfs refs/heads/feature\nlfs refs/heads/feature\n"
    );

    let out = repo.ok(&["hooks", "uninstall"]);
    assert!(
        out.contains("pre-push: removed; the previous hook is back"),
        "{out}"
    );
    assert_eq!(std::fs::read(&hook).expect("restored"), lfs.as_bytes());
    assert!(
        !repo.path(".git/hooks/post-commit").exists(),
        "only git-loop's own hook is removed"
    );
    assert!(!repo.path(".git/hooks/pre-push.git-loop-chained").exists());
}

#[test]
fn status_reports_installed_outdated_missing_and_clobbered() {
    let (repo, _remote) = setup();
    let v = repo.run(&["hooks", "status", "--json"]).json();
    assert_eq!(v[0]["state"], "missing");
    repo.ok(&["hooks", "install"]);
    let v = repo.run(&["hooks", "status", "--json"]).json();
    assert_eq!(v[0]["state"], "installed");
    assert_eq!(v[1]["state"], "installed");
    // An older shim: outdated, with a diff.
    let post = repo.path(".git/hooks/post-commit");
    let text = std::fs::read_to_string(&post).expect("shim");
    std::fs::write(
        &post,
        text.replace(
            "exec \"$bin\" hook post-commit",
            "\"$bin\" hook post-commit",
        ),
    )
    .expect("edit");
    let out = repo.ok(&["hooks", "status"]);
    assert!(out.contains("post-commit: outdated"), "{out}");
    assert!(out.contains("+exec \"$bin\" hook post-commit"), "{out}");
    repo.ok(&["hooks", "install"]);
    // Another tool writes over the shim while a chained hook is aside: clobbered.
    let pre = repo.path(".git/hooks/pre-push");
    std::fs::write(
        repo.path(".git/hooks/pre-push.git-loop-chained"),
        "#!/bin/sh\nexit 0\n",
    )
    .expect("aside");
    std::fs::write(&pre, "#!/bin/sh\n# another tool\nexit 0\n").expect("clobber");
    let v = repo.run(&["hooks", "status", "--json"]).json();
    assert_eq!(v[1]["state"], "clobbered");
    let out = repo.fails(&["hooks", "install"], 3);
    assert!(out.stderr.contains("another tool's hook"), "{}", out.stderr);
}

#[test]
fn core_hooks_path_inside_is_honoured_and_outside_needs_force() {
    let (repo, _remote) = setup();
    repo.git(&["config", "core.hooksPath", "githooks"]);
    repo.ok(&["hooks", "install"]);
    assert!(repo.path("githooks/post-commit").exists());
    assert!(!repo.path(".git/hooks/post-commit").exists());
    assert_eq!(
        repo.git(&["config", "core.hooksPath"]).trim(),
        "githooks",
        "never rewritten"
    );

    let global = repo.root.parent().expect("tmp").join("global-hooks");
    repo.git(&["config", "core.hooksPath", &global.to_string_lossy()]);
    let out = repo.fails(&["hooks", "install"], 3);
    assert!(
        out.stderr.contains("outside this repository"),
        "{}",
        out.stderr
    );
    assert!(!global.join("post-commit").exists());
    repo.ok(&["hooks", "install", "--force"]);
    assert!(global.join("post-commit").exists() && global.join("pre-push").exists());
}

#[test]
fn direct_pushes_to_the_target_are_refused_but_promote_and_no_verify_pass() {
    let (repo, remote) = setup();
    repo.ok(&["hooks", "install"]);
    commit(&repo, "direct.txt");
    let out = repo.git_out(&["push", "origin", "main"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("git-loop refuses this push"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--no-verify"), "{}", out.stderr);
    let remote_main =
        |r: &TestRepo| r.git(&["--git-dir", &remote.to_string_lossy(), "rev-parse", "main"]);
    assert_ne!(remote_main(&repo), repo.git(&["rev-parse", "main"]));
    // The refs/loop/oracle pin is refused too.
    repo.git(&["update-ref", "refs/loop/oracle", "HEAD"]);
    let out = repo.git_out(&["push", "origin", "refs/loop/oracle"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("refs/loop/oracle"), "{}", out.stderr);
    repo.git(&["update-ref", "-d", "refs/loop/oracle"]);
    // An environment that claims a promotion is not one: only the merge a running promotion
    // recorded passes.
    let id = repo.add("Not promoting anything", &[]);
    for claim in [id.as_str(), "x"] {
        let mut push = std::process::Command::new("git");
        push.args(["push", "origin", "main"])
            .current_dir(&repo.root)
            .stdin(std::process::Stdio::null());
        crate::common::hermetic(&mut push, &repo.home);
        let out = push.env("GIT_LOOP_PROMOTE", claim).output().expect("push");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "GIT_LOOP_PROMOTE={claim} talked past the guard"
        );
        assert!(stderr.contains("names no running promotion"), "{stderr}");
    }
    assert_ne!(remote_main(&repo), repo.git(&["rev-parse", "main"]));
    // The documented escape hatch.
    repo.git(&["push", "-q", "--no-verify", "origin", "main"]);
    repo.ok(&["init", "--repin"]);
    assert_eq!(remote_main(&repo), repo.git(&["rev-parse", "main"]));

    // The same kind of push made by git loop promote passes the hook.
    let id = repo.add("Promoted work", &[]);
    repo.git(&["checkout", "-q", "-b", &format!("loop/{}", &id[..7])]);
    commit(&repo, "promoted.txt");
    repo.git(&["checkout", "-q", "main"]);
    let out = repo.run(&["promote", &id[..7]]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        repo.git(&[
            "--git-dir",
            &remote.to_string_lossy(),
            "show",
            "main:promoted.txt"
        ])
        .contains("promoted")
    );
}

#[test]
fn a_target_without_its_runtime_manifest_is_refused() {
    let (repo, _remote) = setup();
    repo.write(
        "policy.toml",
        format!("{POLICY}[promote]\nguard_target = false\n"),
    );
    repo.git(&["commit", "-q", "-am", "unguard"]);
    repo.ok(&["hooks", "install"]);
    repo.git(&["rm", "-q", "loop/PROMPT.md"]);
    repo.git(&["commit", "-q", "-m", "drop the prompt"]);
    let out = repo.git_out(&["push", "origin", "main"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("lacks the runtime file loop/PROMPT.md"),
        "{}",
        out.stderr
    );
}

#[test]
fn git_loop_0_disables_both_hooks() {
    let (repo, remote) = setup();
    repo.ok(&["hooks", "install"]);
    let id = repo.add("Work", &[]);
    let wt = repo.add_task_worktree(&id);
    let git_in = |args: &[&str], off: bool| -> Out {
        let mut cmd = std::process::Command::new("git");
        cmd.args(args).current_dir(&wt);
        crate::common::hermetic(&mut cmd, &repo.home);
        if off {
            cmd.env("GIT_LOOP", "0");
        }
        let out = cmd.output().expect("git");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            raw_stdout: out.stdout,
        }
    };
    std::fs::write(wt.join("x.txt"), "x\n").expect("write");
    git_in(&["add", "x.txt"], true);
    assert_eq!(
        git_in(
            &[
                "commit",
                "-q",
                "-m",
                "quiet\n\nLoop-Task: should not be filed"
            ],
            true
        )
        .code,
        0
    );
    let head = git_in(&["rev-parse", "HEAD"], true)
        .stdout
        .trim()
        .to_string();
    let note = repo.git_out(&["notes", "--ref=refs/notes/loop", "show", &head]);
    assert_ne!(note.code, 0, "no note was written: {}", note.stdout);
    assert_eq!(repo.refs("refs/loop/tasks/").len(), 1, "no task filed");
    commit(&repo, "direct.txt");
    let mut push = std::process::Command::new("git");
    push.args(["push", "-q", "origin", "main"])
        .current_dir(&repo.root);
    crate::common::hermetic(&mut push, &repo.home);
    push.env("GIT_LOOP", "0");
    assert_eq!(
        push.output().expect("push").status.code(),
        Some(0),
        "GIT_LOOP=0 lets it through"
    );
    assert_eq!(
        repo.git(&["--git-dir", &remote.to_string_lossy(), "rev-parse", "main"]),
        repo.git(&["rev-parse", "main"])
    );
}

#[test]
fn in_a_loop_worktree_commits_are_noted_and_trailers_file_tasks() {
    let (repo, _remote) = setup();
    repo.ok(&["hooks", "install"]);
    let id = repo.add("Parent work", &[]);
    let wt = repo.add_task_worktree(&id);
    let in_wt = |args: &[&str]| -> String {
        let mut full = vec!["-C", wt.to_str().expect("utf-8")];
        full.extend_from_slice(args);
        repo.git(&full)
    };
    std::fs::write(wt.join("work.txt"), "work\n").expect("write");
    in_wt(&["add", "work.txt"]);
    in_wt(&[
        "commit",
        "-q",
        "-m",
        "Do the work\n\nLoop-Task: Write the docs for the work\nLoop-Blocker: Upgrade the parser first",
    ]);
    let head = in_wt(&["rev-parse", "HEAD"]).trim().to_string();
    let note = repo.git(&["notes", "--ref=refs/notes/loop", "show", &head]);
    assert_eq!(note, format!("task: {id}\n"));
    let progress =
        std::fs::read_to_string(repo.path(&format!(".git/loop/progress/{id}"))).expect("progress");
    assert!(progress.starts_with(&head), "{progress}");

    let tasks = repo.run(&["task", "list", "--json"]).json();
    let find = |title: &str| {
        tasks
            .as_array()
            .expect("array")
            .iter()
            .find(|t| t["title"] == title)
            .unwrap_or_else(|| panic!("{title} filed: {tasks}"))
            .clone()
    };
    let docs = find("Write the docs for the work");
    let blocker = find("Upgrade the parser first");
    assert_eq!(docs["discovered_from"], id.as_str());
    assert_eq!(blocker["discovered_from"], id.as_str());
    let parent = tasks
        .as_array()
        .expect("array")
        .iter()
        .find(|t| t["id"] == id.as_str())
        .expect("parent")
        .clone();
    assert_eq!(
        parent["after"],
        serde_json::json!([blocker["id"]]),
        "the parent waits for its blocker"
    );
    assert!(
        parent["after"]
            .as_array()
            .expect("after")
            .iter()
            .all(|d| *d != docs["id"])
    );

    // The same trailer again files nothing new.
    std::fs::write(wt.join("more.txt"), "more\n").expect("write");
    in_wt(&["add", "more.txt"]);
    in_wt(&[
        "commit",
        "-q",
        "-m",
        "More\n\nLoop-Task: Write the docs for the work",
    ]);
    assert_eq!(repo.refs("refs/loop/tasks/").len(), 3);
    let _ = GOOD_BODY;
}

#[test]
fn outside_a_loop_worktree_the_post_commit_hook_does_nothing() {
    let (repo, _remote) = setup();
    repo.ok(&["hooks", "install"]);
    commit(&repo, "plain.txt");
    assert_eq!(
        repo.git_out(&["notes", "--ref=refs/notes/loop", "list"])
            .stdout,
        ""
    );
    assert!(!repo.path(".git/loop/progress").exists());
}

#[test]
fn during_a_rebase_the_post_commit_hook_does_no_work() {
    let (repo, _remote) = setup();
    repo.ok(&["hooks", "install"]);
    let id = repo.add("Work", &[]);
    let wt = repo.add_task_worktree(&id);
    let in_wt = |args: &[&str]| -> String {
        let mut full = vec!["-C", wt.to_str().expect("utf-8")];
        full.extend_from_slice(args);
        repo.git(&full)
    };
    std::fs::write(wt.join("w.txt"), "w\n").expect("write");
    in_wt(&["add", "w.txt"]);
    in_wt(&["commit", "-q", "-m", "Work\n\nLoop-Task: Follow-up"]);
    commit(&repo, "main-moves.txt");
    let notes_before = repo.git(&["notes", "--ref=refs/notes/loop", "list"]);
    in_wt(&["rebase", "-q", "main"]);
    let rebased = in_wt(&["rev-parse", "HEAD"]).trim().to_string();
    assert_eq!(
        repo.git(&["notes", "--ref=refs/notes/loop", "list"]),
        notes_before,
        "no note during the rebase"
    );
    assert_ne!(
        repo.git_out(&["notes", "--ref=refs/notes/loop", "show", &rebased])
            .code,
        0
    );
    assert_eq!(
        repo.refs("refs/loop/tasks/").len(),
        2,
        "the follow-up was filed once"
    );
}

//! `git loop reap`: real runners killed with SIGKILL or stopped with SIGSTOP, real agent
//! process groups, worktrees deleted by hand, two reaps racing; assertions on refs, files and
//! processes.

use std::process::{Child, Stdio};
use std::time::Duration;

use crate::common::TestRepo;
use crate::test_start::{
    COMMIT_AND_DONE, Loop, UNSANDBOXED, lease_pgid, running_group, setup, wait_for,
};

/// An agent that leaves uncommitted and untracked work, starts a grandchild, and hangs.
const HANGS_WITH_WORK: &str = "\
echo dirty > dirty.txt
mkdir -p sub && echo untracked > sub/new.txt
sh -c 'sleep 600' &
echo started
wait";

fn spawn_runner(l: &Loop) -> Child {
    l.repo
        .cmd(&["start"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("runner")
}

/// Waits until the agent of task `id` runs and has left its files; returns its process group.
fn agent_group(l: &Loop, id: &str) -> String {
    let mut pgid = None;
    let wt = l.repo.worktree_path(&id[..7]);
    wait_for("the agent to start", Duration::from_secs(60), || {
        pgid = lease_pgid(&l.repo, id);
        pgid.is_some() && wt.join("sub/new.txt").exists()
    });
    pgid.expect("a process group")
}

fn reap(repo: &TestRepo, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["reap", "--json"];
    all.extend_from_slice(args);
    let out = repo.run(&all);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    out.json()
}

/// Reaps; the worktree `wt` of task `id` must be the one reclaimed, and gone.
fn reap_worktree_of(repo: &TestRepo, id: &str, wt: &std::path::Path) {
    let report = reap(repo, &[]);
    assert_eq!(
        reaped_tasks(&report, "worktree"),
        vec![id.to_string()],
        "{report}"
    );
    assert!(!wt.exists());
}

fn reaped_tasks(report: &serde_json::Value, kind: &str) -> Vec<String> {
    report["reaped"]
        .as_array()
        .expect("reaped")
        .iter()
        .filter(|r| r["kind"] == kind)
        .filter_map(|r| r["task"].as_str().map(str::to_string))
        .collect()
}

/// Starts two `git loop reap --json` at once; both must succeed. Their reports.
fn two_reaps_at_once(repo: &TestRepo) -> Vec<serde_json::Value> {
    let racers: Vec<Child> = (0..2)
        .map(|_| {
            repo.cmd(&["reap", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("reap")
        })
        .collect();
    racers
        .into_iter()
        .map(|racer| {
            let out = racer.wait_with_output().expect("wait");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice(&out.stdout).expect("json")
        })
        .collect()
}

/// The names of the rescue refs of task `id`.
fn rescues(repo: &TestRepo, id: &str) -> Vec<String> {
    repo.refs(&format!("refs/loop/rescue/{id}/"))
        .iter()
        .filter_map(|line| line.split(' ').next())
        .map(str::to_string)
        .collect()
}

/// What a reclaimed task must look like: group gone, work saved, worktree gone, requeued.
fn assert_reclaimed(l: &Loop, id: &str, pgid: &str) {
    assert!(
        !running_group(pgid),
        "the agent's group (grandchild too) was killed"
    );
    let rescue = format!("refs/loop/rescue/{id}/1");
    assert_eq!(l.repo.show(&rescue, "dirty.txt"), "dirty\n");
    assert_eq!(l.repo.show(&rescue, "sub/new.txt"), "untracked\n");
    assert_eq!(rescues(&l.repo, id).len(), 1, "saved once");
    let wt = l.repo.worktree_path(&id[..7]);
    assert!(!wt.exists(), "the worktree was removed");
    let listed = l.repo.git(&["worktree", "list", "--porcelain"]);
    assert!(!listed.contains(&*wt.to_string_lossy()), "{listed}");
    assert!(l.repo.refs(&format!("refs/loop/leases/{id}")).is_empty());
    assert_eq!(l.show(id)["state"], "ready");
}

#[test]
fn a_live_holder_is_left_alone_and_a_killed_one_is_reaped() {
    // Unsandboxed, the agent outlives its runner, for the reaper to end.
    let l = setup(HANGS_WITH_WORK, UNSANDBOXED, false);
    let id = l.add("hangs");
    let mut runner = spawn_runner(&l);
    let pgid = agent_group(&l, &id);

    // The holder is alive and within its expiry: nothing is touched.
    let before = l.repo.refs("refs/");
    let report = reap(&l.repo, &[]);
    assert!(reaped_tasks(&report, "lease").is_empty(), "{report}");
    assert!(
        report["kept"]
            .as_array()
            .expect("kept")
            .iter()
            .any(|k| k["task"] == id.as_str()),
        "{report}"
    );
    assert_eq!(l.repo.refs("refs/"), before, "no ref moved");
    assert!(running_group(&pgid));
    assert!(l.repo.worktree_path(&id[..7]).join("dirty.txt").exists());

    // Killed: its death is proven by pid and start time, so the lease is taken back.
    runner.kill().expect("SIGKILL the runner");
    runner.wait().expect("wait");
    assert!(
        running_group(&pgid),
        "the orphaned agent outlives its runner"
    );
    let report = reap(&l.repo, &[]);
    assert_eq!(reaped_tasks(&report, "lease"), vec![id.clone()], "{report}");
    assert_reclaimed(&l, &id, &pgid);
    assert!(
        l.history(&id)
            .iter()
            .any(|h| h.starts_with("running -> ready: reaped") && h.contains("died")),
        "{:?}",
        l.history(&id)
    );

    // A second reap finds nothing, and moves nothing.
    let after = l.repo.refs("refs/");
    let out = l.repo.run(&["reap"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("nothing to reap"), "{}", out.stdout);
    assert_eq!(l.repo.refs("refs/"), after);
}

#[test]
fn a_hung_holder_is_reaped_only_after_its_lease_expires() {
    let l = setup(
        HANGS_WITH_WORK,
        "[lease]\nttl = \"4s\"\nheartbeat = \"1s\"\n",
        false,
    );
    let id = l.add("hangs");
    let mut runner = spawn_runner(&l);
    let pgid = agent_group(&l, &id);
    // The runner hangs (alive, but renews nothing).
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &runner.id().to_string()])
        .status()
        .expect("kill -STOP");
    assert!(stopped.success());

    let before = l.repo.refs("refs/");
    let report = reap(&l.repo, &[]);
    assert!(reaped_tasks(&report, "lease").is_empty(), "{report}");
    assert_eq!(l.repo.refs("refs/"), before, "before expiry nothing moved");
    assert!(running_group(&pgid));

    wait_for("the lease to expire", Duration::from_secs(60), || {
        let report = reap(&l.repo, &["--dry-run"]);
        !reaped_tasks(&report, "lease").is_empty()
    });
    assert_eq!(l.repo.refs("refs/"), before, "a dry run moves nothing");
    let report = reap(&l.repo, &[]);
    assert_eq!(reaped_tasks(&report, "lease"), vec![id.clone()], "{report}");
    assert!(
        report["reaped"][0]["why"]
            .as_str()
            .is_some_and(|w| w.contains("expired")),
        "{report}"
    );
    assert_reclaimed(&l, &id, &pgid);
    runner.kill().expect("kill the stopped runner");
    runner.wait().expect("wait");
}

#[test]
fn a_worktree_deleted_by_hand_is_pruned_and_its_branch_usable_again() {
    let repo = TestRepo::new();
    let id = repo.add("deleted by hand", &[]);
    let wt = repo.add_task_worktree(&id);
    std::fs::remove_dir_all(&wt).expect("rm -rf the worktree");
    let branch = format!("loop/{}", &id[..7]);
    let blocked = repo.git_out(&["checkout", "-q", &branch]);
    assert_ne!(blocked.code, 0, "a stale worktree still holds the branch");

    let report = reap(&repo, &["--dry-run"]);
    assert_eq!(report["reaped"][0]["kind"], "prune", "{report}");
    assert_ne!(repo.git_out(&["checkout", "-q", &branch]).code, 0);

    let report = reap(&repo, &[]);
    assert_eq!(report["reaped"][0]["kind"], "prune", "{report}");
    let listed = repo.git(&["worktree", "list", "--porcelain"]);
    assert!(!listed.contains(&*wt.to_string_lossy()), "{listed}");
    repo.git(&["checkout", "-q", &branch]);
    assert_eq!(repo.git(&["branch", "--show-current"]).trim(), branch);
}

#[test]
fn a_loop_worktree_without_a_lease_is_saved_then_removed() {
    let repo = TestRepo::new();
    let id = repo.add("orphaned", &[]);
    let wt = repo.add_task_worktree(&id);
    let there = |args: &[&str]| {
        let mut all = vec!["-C", wt.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        repo.git(&all)
    };
    // A commit on a detached HEAD (on no branch), then uncommitted work on top.
    there(&["checkout", "-q", "--detach"]);
    std::fs::write(wt.join("detached.txt"), "on no branch\n").expect("write");
    there(&["add", "detached.txt"]);
    there(&["commit", "-q", "-m", "detached work"]);
    let detached = there(&["rev-parse", "HEAD"]).trim().to_string();
    std::fs::write(wt.join("notes.txt"), "not yet committed\n").expect("write");
    let task_before = repo.task_tip(&id);

    let before = repo.refs("refs/");
    // The task cache is absent: a listing that refreshed it would write it.
    let _ = std::fs::remove_dir_all(repo.path(".git/loop/cache"));
    let report = reap(&repo, &["--dry-run"]);
    assert_eq!(
        reaped_tasks(&report, "worktree"),
        vec![id.clone()],
        "{report}"
    );
    assert_eq!(repo.refs("refs/"), before, "a dry run moves nothing");
    assert!(wt.join("notes.txt").exists());
    assert!(
        !repo.path(".git/loop/cache").exists(),
        "a dry run writes no cache"
    );

    reap_worktree_of(&repo, &id, &wt);
    let saved = rescues(&repo, &id);
    assert_eq!(saved.len(), 2, "{saved:?}");
    // One rescue ref is the detached commit itself (the other, the uncommitted work, has it
    // as its parent, so "reachable from a rescue" would not tell the two apart).
    assert!(
        saved
            .iter()
            .any(|name| repo.git(&["rev-parse", name]).trim() == detached),
        "the detached commit is kept in a rescue ref of its own: {saved:?}"
    );
    let with_notes = saved
        .iter()
        .find(|name| {
            repo.git_out(&["cat-file", "-e", &format!("{name}:notes.txt")])
                .code
                == 0
        })
        .expect("a rescue ref holds notes.txt");
    assert_eq!(repo.show(with_notes, "notes.txt"), "not yet committed\n");
    assert!(repo.refs("refs/loop/leases/").is_empty());
    assert_ne!(
        repo.task_tip(&id),
        task_before,
        "the task's history says what was saved"
    );
    let doc = repo.task_doc(&id);
    assert!(doc.contains("state = \"ready\""), "{doc}");
}

#[test]
fn two_reaps_at_once_end_as_one() {
    let l = setup(HANGS_WITH_WORK, "[loop]\nworkers = 3\n", false);
    let ids: Vec<String> = (0..3).map(|i| l.add(&format!("hangs {i}"))).collect();
    let mut runner = spawn_runner(&l);
    let groups: Vec<String> = ids.iter().map(|id| agent_group(&l, id)).collect();
    runner.kill().expect("SIGKILL the runner");
    runner.wait().expect("wait");

    let mut reclaimed = Vec::new();
    for report in two_reaps_at_once(&l.repo) {
        reclaimed.extend(reaped_tasks(&report, "lease"));
    }
    reclaimed.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(reclaimed, expected, "each lease reclaimed exactly once");
    for (id, pgid) in ids.iter().zip(&groups) {
        assert_reclaimed(&l, id, pgid);
    }
    let left = std::fs::read_dir(l.repo.root.join(".git/loop/worktrees"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "no loop worktree is left");
}

#[test]
fn a_reap_beside_a_live_runner_leaves_its_work_alone() {
    let flag = tempfile::NamedTempFile::new().expect("flag");
    let flag_path = flag.path().with_extension("go");
    let agent = format!(
        "echo wip > wip.txt\nwhile [ ! -f '{}' ]; do sleep 0.05; done\nrm wip.txt\n{COMMIT_AND_DONE}",
        flag_path.display()
    );
    let l = setup(&agent, "", false);
    let id = l.add("waits for a flag");
    let runner = l
        .repo
        .cmd(&["start", "--once"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runner");
    let wt = l.repo.worktree_path(&id[..7]);
    wait_for("the agent to start", Duration::from_secs(60), || {
        wt.join("wip.txt").exists() && lease_pgid(&l.repo, &id).is_some()
    });
    let lease = l.repo.refs("refs/loop/leases/");
    for _ in 0..2 {
        let report = reap(&l.repo, &[]);
        assert!(
            report["reaped"]
                .as_array()
                .expect("reaped")
                .iter()
                .all(|r| r["task"] != id.as_str()),
            "{report}"
        );
    }
    assert_eq!(
        l.repo.refs("refs/loop/leases/"),
        lease,
        "the lease is untouched"
    );
    assert!(wt.join("wip.txt").exists(), "the worktree is untouched");
    assert!(rescues(&l.repo, &id).is_empty());

    std::fs::write(&flag_path, "go").expect("flag");
    let out = runner.wait_with_output().expect("runner");
    let _ = std::fs::remove_file(&flag_path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(l.show(&id)["state"], "done");
}

#[test]
fn a_run_left_awaiting_a_dead_judge_is_handed_back_and_judged() {
    let dir = tempfile::tempdir().expect("flags");
    let (started, go) = (dir.path().join("started"), dir.path().join("go"));
    let gate = format!(
        "echo $$ > '{0}.tmp' && mv '{0}.tmp' '{0}'; while [ ! -f '{1}' ]; do sleep 0.05; done",
        started.display(),
        go.display()
    );
    // Unsandboxed: the gate's pid means the same here, and the gate outlives its judge.
    let l = setup(
        COMMIT_AND_DONE,
        &format!("{UNSANDBOXED}[gate]\ncommands = [[\"sh\", \"-c\", \"{gate}\"]]\n"),
        false,
    );
    let id = l.add("judged twice");
    let mut runner = spawn_runner(&l);
    wait_for("the gate to run", Duration::from_secs(60), || {
        started.exists()
    });
    let gate_group = std::fs::read_to_string(&started).expect("the gate's pid");
    let gate_group = gate_group.trim().to_string();
    wait_for(
        "the gate's group in the lease",
        Duration::from_secs(60),
        || lease_pgid(&l.repo, &id).as_deref() == Some(gate_group.as_str()),
    );
    runner.kill().expect("SIGKILL the runner while it judges");
    runner.wait().expect("wait");
    assert_eq!(l.show(&id)["state"], "awaiting_judge");
    let tmp = l.repo.root.join(".git/loop/tmp");
    let checkouts = |tmp: &std::path::Path| {
        std::fs::read_dir(tmp)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&id[..7]))
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(checkouts(&tmp), 1, "the dead judge's gate checkout is left");
    assert!(running_group(&gate_group), "the gate outlives its judge");

    let report = reap(&l.repo, &[]);
    assert_eq!(reaped_tasks(&report, "lease"), vec![id.clone()], "{report}");
    let did = report["reaped"][0]["did"].to_string();
    assert!(did.contains("removed the gate checkout"), "{did}");
    assert!(did.contains("awaiting a judge"), "{did}");
    assert_eq!(checkouts(&tmp), 0);
    assert!(
        !running_group(&gate_group),
        "the dead judge's gate was ended"
    );
    assert!(l.repo.refs("refs/loop/leases/").is_empty());
    assert_eq!(
        l.show(&id)["state"],
        "awaiting_judge",
        "kept for the next judge"
    );

    std::fs::write(&go, "go").expect("let gates pass");
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(l.show(&id)["state"], "done");
}

#[test]
fn a_reaper_killed_half_way_leaves_what_the_next_one_finishes() {
    // Unsandboxed, the agent outlives its runner, for the reaper to end.
    let l = setup(HANGS_WITH_WORK, UNSANDBOXED, false);
    let id = l.add("reaped twice");
    let mut runner = spawn_runner(&l);
    let pgid = agent_group(&l, &id);
    runner.kill().expect("SIGKILL the runner");
    runner.wait().expect("wait");

    // The reaper dies right after taking the lease, before it ends the agent's group.
    let out = l
        .repo
        .cmd(&["reap"])
        .env("GIT_LOOP_CRASH_AT", "reap:taken")
        .output()
        .expect("reap");
    assert!(!out.status.success(), "the reaper was killed");
    let lease = l.repo.show(&format!("refs/loop/leases/{id}"), "lease.toml");
    assert!(lease.contains("purpose = \"reap\""), "{lease}");
    assert!(
        lease.contains(&format!("pgid = {pgid}")),
        "the group is carried over: {lease}"
    );
    assert!(running_group(&pgid));

    let report = reap(&l.repo, &[]);
    assert_eq!(reaped_tasks(&report, "lease"), vec![id.clone()], "{report}");
    assert_reclaimed(&l, &id, &pgid);
}

#[test]
fn a_worktree_whose_metadata_is_gone_is_saved_and_removed() {
    let repo = TestRepo::new();
    let id = repo.add("half removed", &[]);
    let wt = repo.add_task_worktree(&id);
    std::fs::write(wt.join("unsaved.txt"), "still here\n").expect("write");
    // What a `git worktree remove` stopped half way leaves: the admin dir gone, the files not.
    std::fs::remove_dir_all(repo.root.join(".git/worktrees").join(&id[..7])).expect("rm admin");

    reap_worktree_of(&repo, &id, &wt);
    let saved = rescues(&repo, &id);
    assert_eq!(saved.len(), 1, "{saved:?}");
    let name = &saved[0];
    assert_eq!(repo.show(name, "unsaved.txt"), "still here\n");
    assert!(repo.refs("refs/loop/leases/").is_empty());
}

#[test]
fn a_half_removed_clean_checkout_is_removed_without_a_rescue() {
    let repo = TestRepo::new();
    let id = repo.add("half removed, clean", &[]);
    let wt = repo.add_task_worktree(&id);
    std::fs::remove_dir_all(repo.root.join(".git/worktrees").join(&id[..7])).expect("rm admin");
    reap_worktree_of(&repo, &id, &wt);
    // Every file left is as the task branch has it: nothing to save.
    assert_eq!(rescues(&repo, &id), Vec::<String>::new());
}

/// A worktree add cut short leaves the worktree marked `locked` ("initializing"), which git
/// never prunes: the reaper removes it (after saying so in a dry run), and nothing of it stays
/// registered.
#[test]
fn a_worktree_whose_add_was_cut_short_is_removed() {
    let repo = TestRepo::new();
    let id = repo.add("half made", &[]);
    let wt = repo.half_made_task_worktree(&id);
    let shown = wt.display().to_string();

    let report = reap(&repo, &["--dry-run"]);
    assert!(
        report
            .to_string()
            .contains(&format!("would remove the half-made worktree {shown}")),
        "{report}"
    );
    assert!(wt.exists());
    assert_eq!(repo.worktree_list().len(), 2);

    let report = reap(&repo, &[]);
    assert!(
        report
            .to_string()
            .contains(&format!("removed the half-made worktree {shown}")),
        "{report}"
    );
    assert!(!wt.exists());
    assert_eq!(repo.worktree_list(), vec![repo.root.display().to_string()]);
}

#[test]
fn two_reaps_of_worktrees_of_no_task_save_each_once() {
    let repo = TestRepo::new();
    for round in 0..4 {
        let names: Vec<String> = (0..3).map(|i| format!("f{round}{i}0000")).collect();
        for name in &names {
            let dir = repo.root.join(".git/loop/worktrees").join(name);
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(dir.join("left.txt"), format!("{name}\n")).expect("write");
        }
        two_reaps_at_once(&repo);
        for name in &names {
            assert!(!repo.root.join(".git/loop/worktrees").join(name).exists());
            let saved = rescues(&repo, name);
            assert_eq!(saved.len(), 1, "saved once: {saved:?}");
            let rescue = &saved[0];
            assert_eq!(repo.show(rescue, "left.txt"), format!("{name}\n"));
        }
    }
}

/// Sets the modification time of `path` to `minutes` ago.
fn age(path: &std::path::Path, minutes: u32) {
    let out = std::process::Command::new("touch")
        .args(["-d", &format!("{minutes} minutes ago")])
        .arg(path)
        .output()
        .expect("touch");
    assert!(out.status.success(), "{out:?}");
}

/// A git killed while it held `refs/remotes/origin/main.lock` stops every fetch into it (and
/// so every promotion to the remote, and the oracle): doctor says so, reap removes it. A lock
/// that may still be held (young) and git-loop's own lock files are left alone.
#[test]
fn a_lock_file_left_by_a_killed_git_is_reported_and_removed() {
    let l = setup(COMMIT_AND_DONE, "", true);
    let stale = l.repo.path(".git/refs/remotes/origin/main.lock");
    std::fs::write(&stale, "").expect("lock");
    age(&stale, 20);
    let young = l.repo.path(".git/refs/heads/someone.lock");
    std::fs::write(&young, "").expect("lock");
    let ours = l.repo.path(".git/loop/locks/worktrees.lock");
    std::fs::create_dir_all(ours.parent().expect("dir")).expect("mkdir");
    std::fs::write(&ours, "").expect("lock");
    age(&ours, 60);
    let update = ["update-ref", "refs/remotes/origin/main", "main"];
    assert_ne!(
        l.repo.git_out(&update).code,
        0,
        "the lock blocks every update of the ref"
    );

    let v = l.repo.run(&["doctor", "--json", "--offline"]).json();
    let check = v["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "git-locks")
        .expect("a git-locks check")
        .clone();
    assert_eq!(check["status"], "warn", "{check}");
    let saw = check["saw"].as_str().expect("saw");
    assert!(saw.contains("refs/remotes/origin/main.lock"), "{saw}");
    assert!(
        !saw.contains("someone.lock") && !saw.contains("loop/locks"),
        "{saw}"
    );

    let report = reap(&l.repo, &["--dry-run"]);
    assert_eq!(
        reaped_tasks(&report, "lock").len(),
        0,
        "locks belong to no task"
    );
    assert!(stale.exists(), "a dry run removes nothing");
    let report = reap(&l.repo, &[]);
    let locks: Vec<&serde_json::Value> = report["reaped"]
        .as_array()
        .expect("reaped")
        .iter()
        .filter(|r| r["kind"] == "lock")
        .collect();
    assert_eq!(locks.len(), 1, "{report}");
    assert!(!stale.exists() && young.exists() && ours.exists());
    l.repo.git(&update);
}

/// Metadata an add killed before it wrote its `gitdir` left: doctor says so; the next task's
/// worker and reap remove it, and the task runs.
#[test]
fn a_half_made_worktree_admin_dir_is_removed() {
    let l = setup(COMMIT_AND_DONE, "", false);
    let meta = l.repo.path(".git/worktrees/abc1234");
    std::fs::create_dir_all(&meta).expect("mkdir");
    std::fs::write(meta.join("locked"), "initializing\n").expect("locked");
    std::fs::write(meta.join("gitdir"), "").expect("gitdir");
    age(&meta, 5);
    let v = l.repo.run(&["doctor", "--json", "--offline"]).json();
    let check = v["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "worktrees")
        .expect("a worktrees check")
        .clone();
    assert_eq!(check["status"], "warn", "{check}");
    assert!(
        check["saw"].as_str().expect("saw").contains("abc1234"),
        "{check}"
    );
    let id = l.add("runs anyway");
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(l.show(&id)["state"], "done");
    assert!(!meta.exists(), "the half-made metadata went");

    std::fs::create_dir_all(&meta).expect("mkdir");
    std::fs::write(meta.join("locked"), "initializing\n").expect("locked");
    age(&meta, 5);
    let report = reap(&l.repo, &[]);
    assert!(!meta.exists(), "reap removes it too: {report}");
}

//! Loop state shared through one bare remote (SPEC §13): runners on several clones share one
//! backlog, every change counts once the remote accepted it, and a clone's view that the
//! remote never accepted is not treated as done.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::test_start::{COMMIT_AND_DONE, Loop, running_group, setup, wait_for};

/// Another clone of the loop's remote, on a branch of its own, with the loop's state synced.
pub(crate) fn clone_of(l: &Loop, name: &str) -> PathBuf {
    let remote = l.remote.as_ref().expect("a remote");
    let tmp = l.repo.root.parent().expect("tmp").to_path_buf();
    let dir = tmp.join(name);
    l.repo.git_at(
        &tmp,
        &[
            "clone",
            "-q",
            &remote.to_string_lossy(),
            &dir.to_string_lossy(),
        ],
    );
    l.repo.git_at(&dir, &["checkout", "-q", "-b", "person"]);
    sync(l, &dir);
    dir
}

pub(crate) fn sync(l: &Loop, dir: &Path) -> serde_json::Value {
    let out = l.repo.run_at(dir, &["sync", "--json"]);
    assert_eq!(out.code, 0, "sync in {}: {}", dir.display(), out.stderr);
    out.json()
}

pub(crate) fn add_at(l: &Loop, dir: &Path, title: &str, after: Option<&str>) -> String {
    let mut args = vec!["task", "add", title, "--body", "work"];
    if let Some(after) = after {
        args.extend(["--after", after]);
    }
    let out = l.repo.run_at(dir, &args);
    assert_eq!(out.code, 0, "task add in {}: {}", dir.display(), out.stderr);
    out.stdout.trim().to_string()
}

/// The remote's own refs under `prefix`: name → id.
fn remote_refs(l: &Loop, prefix: &str) -> Vec<(String, String)> {
    let remote = l.remote.as_ref().expect("a remote");
    l.repo
        .git_at(
            remote,
            &["for-each-ref", "--format=%(refname) %(objectname)", prefix],
        )
        .lines()
        .filter_map(|line| {
            let (name, id) = line.split_once(' ')?;
            Some((name.to_string(), id.to_string()))
        })
        .collect()
}

/// The state of each task as the remote holds it.
fn remote_states(l: &Loop) -> Vec<(String, String)> {
    let remote = l.remote.as_ref().expect("a remote");
    remote_refs(l, "refs/loop/tasks/")
        .into_iter()
        .map(|(name, tip)| {
            let doc = l
                .repo
                .git_at(remote, &["show", &format!("{tip}:task.toml")]);
            let state = doc
                .lines()
                .find_map(|line| line.strip_prefix("state = "))
                .unwrap_or_default()
                .trim_matches('"')
                .to_string();
            (name["refs/loop/tasks/".len()..].to_string(), state)
        })
        .collect()
}

#[test]
fn three_clones_with_two_workers_each_run_sixty_tasks_once_each() {
    let l = setup(COMMIT_AND_DONE, "[lease]\nttl = \"10s\"\n", true);
    let b = clone_of(&l, "clone-b");
    let c = clone_of(&l, "clone-c");
    let a = l.repo.root.clone();
    // Filed from all three, some after tasks another clone filed.
    let mut ids = Vec::new();
    for round in 0..20 {
        for (name, dir) in [("a", &a), ("b", &b), ("c", &c)] {
            sync(&l, dir);
            let after = (round % 2 == 1).then(|| ids.last().cloned()).flatten();
            ids.push(add_at(
                &l,
                dir,
                &format!("task {round} from {name}"),
                after.as_deref(),
            ));
        }
    }
    assert_eq!(
        remote_states(&l).len(),
        ids.len(),
        "every task is on the remote"
    );

    let mut runners: Vec<_> = [&a, &b, &c]
        .into_iter()
        .map(|dir| l.repo.spawn_at(dir, &["start"]))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let states = remote_states(&l);
        if states.iter().all(|(_, s)| s == "done") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all done on the remote: {states:?}\n{}",
            runners
                .iter()
                .map(|r| r.stderr_text())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut said = String::new();
    for r in &mut runners {
        let code = r.terminate();
        assert_eq!(code, Some(0), "{}", r.stderr_text());
        said.push_str(&r.stderr_text());
        said.push_str("\n---\n");
    }

    // Each task was run by one agent, once, and merged once.
    sync(&l, &a);
    let remote = l.remote.as_ref().expect("a remote");
    let merges = l
        .repo
        .git_at(remote, &["log", "--merges", "--format=%B", "main"]);
    for id in &ids {
        let runs = l.agent_runs(id);
        assert_eq!(
            runs.len(),
            1,
            "{id} was run {} times: {runs:?}\n{:#?}\n{said}",
            runs.len(),
            l.history(id)
        );
        let leased = l
            .history(id)
            .iter()
            .filter(|h| h.contains("-> running: leased by"))
            .count();
        assert_eq!(leased, 1, "{id} was claimed {leased} times");
        let merged = merges.matches(&format!("Loop-Task: {id}")).count();
        assert_eq!(merged, 1, "{id} was merged {merged} times on the remote");
    }
    // Nothing left: no lease, no runner heartbeat, no worktree in any clone.
    assert_eq!(remote_refs(&l, "refs/loop/leases/"), vec![]);
    for dir in [&a, &b, &c] {
        sync(&l, dir);
        let worktrees = l.repo.git_at(dir, &["worktree", "list", "--porcelain"]);
        assert_eq!(
            worktrees.matches("worktree ").count(),
            1,
            "{}: {worktrees}\n{said}",
            dir.display()
        );
    }
}

#[test]
fn a_change_the_remote_refused_is_a_lost_race_not_a_done_change() {
    let l = setup(COMMIT_AND_DONE, "", true);
    let b = clone_of(&l, "clone-b");
    let id = l.add("contested");
    sync(&l, &b);
    // A person in clone A gates the task; clone B, not synced since, cancels it on its old
    // view. The remote took A's change first: B's is refused and decided again from the
    // remote's state, so the gate is what holds, on the remote and in both clones.
    l.repo
        .ok(&["task", "gate", &id[..7], "--reason", "a person looks first"]);
    let out = l
        .repo
        .run_at(&b, &["task", "edit", &id[..7], "--title", "renamed in b"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let states = remote_states(&l);
    assert_eq!(states, vec![(id.clone(), "human_gated".to_string())]);
    let shown = l
        .repo
        .run_at(&b, &["task", "show", &id[..7], "--json"])
        .json();
    assert_eq!(shown["state"], "human_gated", "{shown}");
    assert_eq!(shown["title"], "renamed in b", "{shown}");
    // B's edit went on top of A's gate: both are in the one history the remote holds.
    sync(&l, &l.repo.root);
    let history = l.history(&id);
    assert!(
        history.iter().any(|h| h.contains("human_gated"))
            && history.iter().any(|h| h.contains("edit")),
        "{history:?}"
    );
}

#[test]
fn a_local_ref_write_the_remote_never_accepted_is_replaced_by_the_remotes() {
    let l = setup(COMMIT_AND_DONE, "", true);
    let id = l.add("kept honest");
    let remote_tip = remote_refs(&l, &format!("refs/loop/tasks/{id}"));
    assert_eq!(remote_tip.len(), 1);
    // An agent (or a script) writes the task ref here directly, past git-loop and the remote:
    // the task looks done in this clone.
    l.repo.set_state(&id, "done");
    let forged = l.repo.task_tip(&id);
    assert_ne!(forged, remote_tip[0].1);
    let synced = sync(&l, &l.repo.root);
    assert_eq!(
        l.repo.task_tip(&id),
        remote_tip[0].1,
        "the remote's value is this clone's view again: {synced}"
    );
    assert_eq!(l.show(&id)["state"], "ready");
    assert_eq!(
        remote_refs(&l, &format!("refs/loop/tasks/{id}")),
        remote_tip
    );
}

#[test]
fn tasks_filed_before_the_remote_was_shared_are_pushed_by_sync() {
    let l = setup(COMMIT_AND_DONE, "", false);
    let id = l.add("from before");
    let remote = l.repo.add_bare_remote();
    let policy = std::fs::read_to_string(l.repo.path("policy.toml")).expect("policy");
    l.repo.write(
        "policy.toml",
        policy.replace("[loop]\n", "[loop]\nremote = \"origin\"\n"),
    );
    let synced = sync(&l, &l.repo.root);
    assert!(synced["pushed"].as_u64().unwrap_or(0) >= 2, "{synced}");
    let on_remote = l.repo.git_at(&remote, &["for-each-ref", "refs/loop/"]);
    assert!(
        on_remote.contains(&format!("refs/loop/tasks/{id}")),
        "{on_remote}"
    );
    assert!(on_remote.contains("refs/loop/oracle"), "{on_remote}");
    // Nothing more to do the second time.
    let again = sync(&l, &l.repo.root);
    assert_eq!(
        (again["pushed"].as_u64(), again["pulled"].as_u64()),
        (Some(0), Some(0)),
        "{again}"
    );
}

#[test]
fn notes_written_by_two_clones_on_one_commit_both_survive() {
    let l = setup(COMMIT_AND_DONE, "", true);
    let b = clone_of(&l, "clone-b");
    let head = l.repo.git(&["rev-parse", "main"]).trim().to_string();
    l.repo.git(&[
        "notes",
        "--ref=refs/notes/loop",
        "add",
        "-m",
        "from a",
        &head,
    ]);
    l.repo.git_at(
        &b,
        &[
            "notes",
            "--ref=refs/notes/loop",
            "add",
            "-m",
            "from b",
            &head,
        ],
    );
    sync(&l, &l.repo.root);
    let merged = sync(&l, &b);
    assert_eq!(merged["notes"], "merged", "{merged}");
    sync(&l, &l.repo.root);
    for dir in [&l.repo.root, &b] {
        let note = l
            .repo
            .git_at(dir, &["notes", "--ref=refs/notes/loop", "show", &head]);
        assert!(
            note.contains("from a") && note.contains("from b"),
            "{}: {note}",
            dir.display()
        );
    }
}

/// The state of task `id` as the remote holds it.
pub(crate) fn remote_state(l: &Loop, id: &str) -> Option<String> {
    remote_states(l)
        .into_iter()
        .find_map(|(t, state)| (t == id).then_some(state))
}

/// The files of the remote's target branch.
fn remote_main_files(l: &Loop) -> String {
    let remote = l.remote.as_ref().expect("a remote");
    l.repo
        .git_at(remote, &["ls-tree", "-r", "--name-only", "main"])
}

#[test]
fn a_runner_killed_while_judging_leaves_the_work_for_another_clone_to_judge() {
    // Clone B's agent commits and claims completion; B's runner is killed while its gate
    // runs. The work exists only in B's object store and in the task B pushed: the judge
    // in clone A must judge that work, not find "nothing committed" and run the agent again.
    let l = setup(
        COMMIT_AND_DONE,
        "[gate]\ncommands = [[\"sleep\", \"3\"]]\n[loop]\nworkers = 1\n",
        true,
    );
    let b = clone_of(&l, "clone-b");
    let id = add_at(&l, &b, "judged elsewhere", None);
    let mut runner_b = l.repo.spawn_at(&b, &["start"]);
    wait_for(
        "B's agent to claim completion",
        Duration::from_secs(60),
        || remote_state(&l, &id).as_deref() == Some("awaiting_judge"),
    );
    runner_b.child.kill().expect("SIGKILL B's runner");
    let _ = runner_b.child.wait();

    sync(&l, &l.repo.root);
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        remote_state(&l, &id).as_deref(),
        Some("done"),
        "{}",
        out.stderr
    );
    let runs = l.agent_runs(&id);
    assert_eq!(
        runs.len(),
        1,
        "the agent ran again: {runs:?}\n{:#?}\n{}",
        l.history(&id),
        out.stderr
    );
    assert!(
        remote_main_files(&l).contains(&format!("work-{id}.txt")),
        "B's work is what was merged"
    );
}

#[test]
fn a_rework_in_another_clone_goes_on_from_the_work_the_last_run_left() {
    // The first attempt runs in clone B and is rejected by the gate; the second runs in
    // clone A, which never had the task's branch, and must build on the first one's commit.
    let agent = r#"
if [ "$1" = 1 ]; then
  echo one > "one-$GIT_LOOP_TASK.txt"
  git add "one-$GIT_LOOP_TASK.txt" && git commit -q -m "first part"
else
  test -e "one-$GIT_LOOP_TASK.txt" || { echo "the first attempt's work is missing"; exit 1; }
  echo two > "two-$GIT_LOOP_TASK.txt"
  git add "two-$GIT_LOOP_TASK.txt" && git commit -q -m "second part"
fi
echo '**LOOP_DONE**'"#;
    let l = setup(
        agent,
        "[gate]\ncommands = [[\"sh\", \"-c\", \"ls two-*.txt\"]]\n\
         [retry]\ninitial = \"3s\"\nmax = \"3s\"\n[loop]\nworkers = 1\n",
        true,
    );
    let b = clone_of(&l, "clone-b");
    let id = add_at(&l, &b, "in two parts", None);
    let mut runner_b = l.repo.spawn_at(&b, &["start"]);
    wait_for(
        "B's attempt to be rejected",
        Duration::from_secs(60),
        || remote_state(&l, &id).as_deref() == Some("needs_rework"),
    );
    assert_eq!(runner_b.terminate(), Some(0), "{}", runner_b.stderr_text());

    sync(&l, &l.repo.root);
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let runs = l.agent_runs(&id);
    assert_eq!(
        remote_state(&l, &id).as_deref(),
        Some("done"),
        "{runs:#?}\n{}",
        out.stderr
    );
    assert_eq!(runs.len(), 2, "{runs:#?}");
    assert_ne!(
        runs[0]["runner"], runs[1]["runner"],
        "one attempt in each clone"
    );
    let files = remote_main_files(&l);
    assert!(
        files.contains(&format!("one-{id}.txt")) && files.contains(&format!("two-{id}.txt")),
        "{files}"
    );
}

/// The lease of task `id` as the remote holds it (`lease.toml`), if there is one.
fn remote_lease(l: &Loop, id: &str) -> Option<String> {
    let remote = l.remote.as_ref().expect("a remote");
    let out = std::process::Command::new("git")
        .args(["show", &format!("refs/loop/leases/{id}:lease.toml")])
        .current_dir(remote)
        .output()
        .expect("git show");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn field(record: &str, key: &str) -> Option<String> {
    record.lines().find_map(|line| {
        Some(
            line.strip_prefix(key)?
                .strip_prefix(" = ")?
                .trim_matches('"')
                .to_string(),
        )
    })
}

/// libfaketime, which sets a process's wall clock elsewhere (Debian's `faketime` package;
/// `.ci/run` installs it).
fn libfaketime() -> PathBuf {
    let dirs = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("faketime"))
        .chain([PathBuf::from("/usr/lib/faketime")]);
    dirs.map(|d| d.join("libfaketime.so.1"))
        .find(|p| p.exists())
        .expect("this test needs libfaketime (Debian's faketime package; .ci/run installs it)")
}

/// Ends process group `pgid` (one a test's agent left), by its id.
fn end_group(pgid: &str) {
    if running_group(pgid) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .status();
    }
}

/// Leases of a few seconds, renewed every second; one worker a clone, syncing twice a second.
const SHORT_LEASES: &str =
    "[lease]\nttl = \"4s\"\nheartbeat = \"1s\"\n[loop]\nworkers = 1\nsync = \"500ms\"\n";

/// Runs the rest of its arguments as on another host: a UTS namespace named `other-host`.
const ON_OTHER_HOST: &[&str] = &[
    "unshare",
    "--uts",
    "sh",
    "-c",
    "hostname other-host && exec \"$@\"",
    "sh",
];

#[test]
fn a_clone_killed_mid_run_on_another_host_is_taken_over_after_a_term_of_the_observers_clock() {
    let faketime = libfaketime();
    // Attempt 1 (clone B, "another host") leaves a draft uncommitted and works on for ever;
    // attempt 2 finishes.
    let agent = format!(
        r#"
if [ "$1" = 1 ]; then
  echo draft > "draft-$GIT_LOOP_TASK.txt"
  while :; do echo working; sleep 1; done
fi
{COMMIT_AND_DONE}"#
    );
    let l = setup(&agent, SHORT_LEASES, true);
    let b = clone_of(&l, "clone-b");
    let id = add_at(&l, &b, "outlived", None);
    let mut runner_b = l.repo.spawn_through(&b, ON_OTHER_HOST, &["start"]);
    wait_for("B's agent to run", Duration::from_secs(60), || {
        remote_lease(&l, &id)
            .is_some_and(|lease| lease.contains("other-host") && field(&lease, "pgid").is_some())
    });
    let held = remote_lease(&l, &id).expect("B's lease");
    let b_runner = field(&held, "runner").expect("runner");
    let b_group = field(&held, "pgid").expect("pgid");

    // Clone A's runner, its clock an hour ahead: B's lease expires, by A's clock, an hour
    // before it was even written. A takes nothing while B renews it, for two terms.
    // (The monotonic clock is left alone: the runner's timed waits are the kernel's.)
    let preload = format!("LD_PRELOAD={}", faketime.display());
    let mut runner_a = l.repo.spawn_through(
        &l.repo.root,
        &[
            "env",
            &preload,
            "FAKETIME=+1h",
            "FAKETIME_DONT_FAKE_MONOTONIC=1",
        ],
        &["start"],
    );
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(8) {
        let lease = remote_lease(&l, &id).unwrap_or_default();
        assert_eq!(
            field(&lease, "runner").as_deref(),
            Some(b_runner.as_str()),
            "the live lease of B was taken over: {lease}\n{}",
            runner_a.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // B's runner dies. A takes the task over once it saw the lease unchanged for a term, and
    // finishes it.
    runner_b.child.kill().expect("SIGKILL B's runner");
    let _ = runner_b.child.wait();
    let until = Instant::now() + Duration::from_secs(90);
    while remote_state(&l, &id).as_deref() != Some("done") {
        assert!(
            Instant::now() < until,
            "A did not finish the task: {:?} {:?}\n{:#?}\n{}",
            remote_state(&l, &id),
            remote_lease(&l, &id),
            l.history(&id),
            runner_a.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(runner_a.terminate(), Some(0), "{}", runner_a.stderr_text());
    end_group(&b_group);
    let history = l.history(&id);
    assert!(
        history
            .iter()
            .any(|h| h.contains("has not renewed it for a term, as seen from here")),
        "{history:#?}"
    );
    assert_eq!(
        l.agent_runs(&id).len(),
        1,
        "A's run alone finished: {history:#?}"
    );

    // B's runner starts again: what its killed run left uncommitted is saved, on the remote.
    let mut again = l.repo.spawn_at(&b, &["start"]);
    wait_for(
        "B's draft to reach the remote",
        Duration::from_secs(60),
        || {
            remote_refs(&l, &format!("refs/loop/rescue/{id}/"))
                .iter()
                .any(|(_, tip)| {
                    let remote = l.remote.as_ref().expect("a remote");
                    std::process::Command::new("git")
                        .args(["cat-file", "-e", &format!("{tip}:draft-{id}.txt")])
                        .current_dir(remote)
                        .status()
                        .is_ok_and(|s| s.success())
                })
        },
    );
    assert_eq!(again.terminate(), Some(0), "{}", again.stderr_text());
}

#[test]
fn a_remote_out_of_reach_for_longer_than_a_lease_costs_no_claim_and_work_resumes() {
    // Each agent works for fourteen seconds. The remote goes out of reach of both clones (on
    // two "hosts") for longer than a lease's term while each runs one task; it comes back for
    // clone A two seconds before clone B. A must not take B's task in those two seconds —
    // what A saw while it could not look is no evidence — and both finish, each task run and
    // claimed once. Meanwhile `status` says since when the remote is out of reach.
    let agent = format!(
        r#"
i=0
while [ $i -lt 14 ]; do echo working; sleep 1; i=$((i+1)); done
{COMMIT_AND_DONE}"#
    );
    let l = setup(&agent, SHORT_LEASES, true);
    let ids = [l.add("first"), l.add("second")];
    let b = clone_of(&l, "clone-b");
    // Each clone reaches the remote through a link of its own, cut and mended separately.
    let remote = l.remote.clone().expect("a remote");
    let link = |name: &str, dir: &Path| {
        let path = remote.with_file_name(name);
        std::os::unix::fs::symlink(&remote, &path).expect("link the remote");
        l.repo.git_at(
            dir,
            &["remote", "set-url", "origin", &path.to_string_lossy()],
        );
        path
    };
    let (link_a, link_b) = (link("remote-a.git", &l.repo.root), link("remote-b.git", &b));
    let mut runners = [
        l.repo.spawn_at(&l.repo.root, &["start"]),
        l.repo.spawn_through(&b, ON_OTHER_HOST, &["start"]),
    ];
    wait_for("both tasks to run", Duration::from_secs(60), || {
        ids.iter()
            .all(|id| remote_state(&l, id).as_deref() == Some("running"))
    });
    // Each runner has looked at the other's lease for a while (every loop.sync) before the
    // links are cut.
    std::thread::sleep(Duration::from_secs(2));
    for path in [&link_a, &link_b] {
        std::fs::remove_file(path).expect("cut a link");
    }
    wait_for(
        "A's status to say the remote is away",
        Duration::from_secs(20),
        || {
            let out = l.repo.run(&["status"]);
            out.stdout.contains("remote: origin unreachable since")
        },
    );
    std::thread::sleep(Duration::from_secs(6));
    std::os::unix::fs::symlink(&remote, &link_a).expect("mend A's link");
    std::thread::sleep(Duration::from_secs(2));
    std::os::unix::fs::symlink(&remote, &link_b).expect("mend B's link");
    wait_for("both tasks to be done", Duration::from_secs(90), || {
        ids.iter()
            .all(|id| remote_state(&l, id).as_deref() == Some("done"))
    });
    let mut said = String::new();
    for r in &mut runners {
        assert_eq!(r.terminate(), Some(0), "{}", r.stderr_text());
        said.push_str(&r.stderr_text());
    }
    assert!(said.contains("answers again"), "{said}");
    let status = l.repo.run(&["status"]);
    assert!(!status.stdout.contains("unreachable"), "{}", status.stdout);
    sync(&l, &l.repo.root);
    for id in &ids {
        let history = l.history(id);
        let runs = l.agent_runs(id);
        assert_eq!(runs.len(), 1, "{id}: {runs:#?}\n{history:#?}\n{said}");
        // A lease taken from a live runner shows as a reap in the history, and the run it
        // ended as a refused run on the remote.
        assert!(
            !history
                .iter()
                .any(|h| h.contains("reaped") || h.contains("taken back")),
            "{id}: {history:#?}\n{said}"
        );
        assert_eq!(
            remote_refs(&l, &format!("refs/loop/refused/{id}")),
            vec![],
            "{id}: a run was ended\n{said}"
        );
    }
}

#[test]
fn a_remote_that_hangs_is_given_up_after_remote_timeout_and_its_transport_ended() {
    // A remote reached through a transport that never answers (an ssh that sleeps): a sync
    // fails as transient (exit 4) once loop.remote_timeout has passed, and the transport it
    // started is gone with it.
    let l = setup(COMMIT_AND_DONE, "[loop]\nremote_timeout = \"2s\"\n", true);
    let tmp = l.repo.root.parent().expect("tmp").to_path_buf();
    let pidfile = tmp.join("hanging-ssh.pid");
    let ssh = tmp.join("hanging-ssh");
    crate::common::write_executable(
        &ssh,
        &format!(
            "#!/bin/sh\necho $$ > '{}'\nexec sleep 600\n",
            pidfile.display()
        ),
    );
    l.repo
        .git(&["config", "core.sshCommand", &ssh.to_string_lossy()]);
    l.repo.git(&[
        "remote",
        "set-url",
        "origin",
        "ssh://hangs.invalid/remote.git",
    ]);
    // Bounded from outside too, so that a sync that hangs fails the test instead of holding it.
    let mut sync = l
        .repo
        .spawn_through(&l.repo.root, &["timeout", "60"], &["sync"]);
    let status = sync.child.wait().expect("wait for the sync");
    let said = sync.stderr_text();
    assert_eq!(status.code(), Some(4), "{said}");
    assert!(said.contains("got no answer within 2s"), "{said}");
    let pid = std::fs::read_to_string(&pidfile).expect("the transport ran");
    // Killed, it may stay a zombie until its new parent reaps it: running is what counts.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
    let state = stat.rsplit(')').next().unwrap_or_default().trim_start();
    assert!(
        stat.is_empty() || state.starts_with('Z'),
        "the transport {} outlived the sync: {stat}",
        pid.trim()
    );
}

#[test]
fn a_repin_before_the_policy_reached_the_remote_says_to_push_it() {
    // The person committed the policy but did not push it: with a shared remote, the finish
    // line is the remote's target, which has none yet.
    let repo = crate::common::TestRepo::new();
    repo.add_bare_remote();
    repo.write(
        "policy.toml",
        "[loop]\ntarget = \"main\"\nremote = \"origin\"\n[agent]\ncommand = [\"true\"]\n",
    );
    repo.git(&["add", "policy.toml"]);
    repo.git(&["commit", "-q", "-m", "set up git-loop"]);
    let out = repo.run(&["init", "--repin"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("origin/main has no committed policy.toml to pin")
            && out.stderr.contains("git push --no-verify origin main"),
        "{}",
        out.stderr
    );
    repo.git(&["push", "-q", "--no-verify", "origin", "main"]);
    repo.ok(&["init", "--repin"]);
}

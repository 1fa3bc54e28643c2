//! The OS sandbox (`agent.sandbox`, SPEC §12a), as attacks: an agent that writes git-loop's
//! state, the person's files, other checkouts, the remote and the object store; daemons of
//! agents and gates; a runner killed under a sandboxed agent. Each attack is also run without
//! the sandbox, to show that it is real.
//!
//! bwrap must be able to make a sandbox on the machine; where it cannot, these tests say so and
//! pass, unless `GIT_LOOP_TEST_SANDBOX` is set (as `.ci/run` sets it), which makes that a
//! failure.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::BIN;
use crate::test_start::{COMMIT_AND_DONE, Loop, UNSANDBOXED, setup, wait_for};

/// Whether bwrap can make a sandbox here (see the module's comment).
fn sandbox_works() -> bool {
    let works = Command::new("bwrap")
        .args([
            "--bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--unshare-pid",
            "--die-with-parent",
            "--cap-drop",
            "ALL",
            "--",
            "true",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !works {
        assert!(
            std::env::var_os("GIT_LOOP_TEST_SANDBOX").is_none(),
            "GIT_LOOP_TEST_SANDBOX is set, but bwrap cannot make a sandbox here"
        );
        eprintln!("skipped: bwrap (bubblewrap) cannot make a sandbox on this machine");
    }
    works
}

/// Whether some process holds a lock on `file` (what a daemon of a run holds while it lives):
/// `flock -n` fails then.
fn lock_held(file: &Path) -> bool {
    !Command::new("flock")
        .arg("-n")
        .arg(file)
        .arg("true")
        .status()
        .expect("flock")
        .success()
}

/// The attacks, each logged to `log` as `reached: <name>` or `stopped: <name>` by what the
/// command itself says; what they did (or did not) is checked on the repository after.
fn attacks(l: &Loop, log: &Path, other: &Path) -> String {
    let person = l.repo.root.display();
    let remote = l.remote.as_ref().expect("a remote").display();
    // Only the task a person filed attacks (the tasks it files do their work). Writes first,
    // then the work and its claim, then what moves refs (an unsandboxed run is
    // ended soon after its task's ref is deleted), then what breaks its own git, then the
    // cancel (which finds the task deleted, unsandboxed).
    format!(
        "grep -q 'attacks everything' \"$2\" || {{ {COMMIT_AND_DONE}; exit 0; }}
try() {{ name=$1; shift; if \"$@\" >/dev/null 2>&1; then echo \"reached: $name\" >> '{log}'; else echo \"stopped: $name\" >> '{log}'; fi; }}
common=$(git rev-parse --git-common-dir)
try policy sh -c \"printf '\\n# loosened\\n' >> '{person}/policy.toml'\"
try other-checkout sh -c \"echo planted > '{other}/planted.txt'\"
try push git push -q '{remote}' HEAD:refs/heads/planted
try hook sh -c \"printf '#!/bin/sh\\nexit 0\\n' > \\\"$common/hooks/pre-push\\\"\"
try config git config core.hooksPath /tmp
try home-gitconfig sh -c \"printf '[core]\\n\\thooksPath = /tmp\\n' >> '{home}/.gitconfig'\"
try home-bashrc sh -c \"echo 'echo pwned' >> '{home}/.bashrc'\"
try host-tmp sh -c \"echo planted > '/tmp/planted-by-{tag}'\"
try real-objects sh -c \"rm -rf \\\"$common\\\"/loop/sandbox/*/real-objects/*\"
try other-branch git update-ref refs/heads/loop/zzzzzzz HEAD
'{BIN}' task add 'found while attacking' --body 'through the outbox' >/dev/null 2>&1
git commit -q --allow-empty -m 'a finding' -m 'Loop-Task: found in a trailer while attacking'
{COMMIT_AND_DONE}
try breaker git update-ref refs/loop/breaker HEAD
try move-main sh -c 'git update-ref refs/heads/main $(git commit-tree HEAD^{{tree}} -p HEAD -m planted-on-main)'
try delete-task git update-ref -d refs/loop/tasks/$GIT_LOOP_TASK
try dot-git sh -c \"echo 'gitdir: /tmp' > .git\"
try cancel env -u GIT_LOOP_TASK -u GIT_LOOP_RUN -u GIT_LOOP_WORKTREE -u GIT_LOOP_OUTBOX '{BIN}' -C '{person}' task cancel $GIT_LOOP_TASK",
        log = log.display(),
        other = other.display(),
        home = l.repo.home.display(),
        tag = tag(l),
    )
}

/// A name for the files a test's agent plants outside its repository.
fn tag(l: &Loop) -> String {
    l.repo
        .root
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().trim_start_matches('.').to_string())
        .unwrap_or_default()
}

/// Names of the attacks that `log` says reached their target.
fn reached(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .expect("the attack log")
        .lines()
        .filter_map(|l| l.strip_prefix("reached: "))
        .map(str::to_string)
        .collect()
}

/// A repository whose agent is `agent(loop, log, other checkout)`, with a remote and a second
/// checkout of the person's beside it.
fn attacked(sandboxed: bool) -> (Loop, tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("attacks.log");
    let other = dir.path().join("elsewhere");
    // Sandboxed, the run may write its log's directory and nothing else of the host's /tmp.
    let policy = if sandboxed {
        format!(
            "[agent]\nwritable = [{}]\n",
            toml_string(&dir.path().to_string_lossy())
        )
    } else {
        UNSANDBOXED.to_string()
    };
    // The agent script is written once the repository (and its paths) exist: a placeholder
    // first, then the attacks, committed and pinned as the runtime manifest wants.
    let l = setup("true", &policy, true);
    l.repo.git(&[
        "worktree",
        "add",
        "-q",
        "-b",
        "side",
        &other.to_string_lossy(),
    ]);
    crate::common::write_executable(
        &l.repo.path("agent.sh"),
        &format!("#!/bin/sh\n{}\n", attacks(&l, &log, &other)),
    );
    l.repo.git(&["checkout", "-q", "main"]);
    l.repo.git(&["commit", "-q", "-am", "the agent"]);
    l.repo.git(&["push", "-q", "origin", "main"]);
    l.repo.ok(&["init", "--repin"]);
    l.repo.git(&["checkout", "-q", "person"]);
    l.repo.git(&["merge", "-q", "--ff-only", "main"]);
    (l, dir, log)
}

#[test]
fn a_sandboxed_agent_reaches_no_state_no_persons_file_no_other_checkout_and_no_remote() {
    if !sandbox_works() {
        return;
    }
    let (l, dir, log) = attacked(true);
    let other = dir.path().join("elsewhere");
    let remote = l.remote.clone().expect("remote");
    let policy = std::fs::read_to_string(l.repo.path("policy.toml")).expect("policy");
    let hook = std::fs::read_to_string(l.repo.root.join(".git/hooks/pre-push")).ok();
    let id = l.add("attacks everything");
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // What the agent could not do, it could not do: the writes that "reached" are a file in
    // the run's own /tmp and two branches, moved in its scratch's copy and never taken.
    assert_eq!(
        reached(&log),
        vec!["host-tmp", "other-branch", "move-main"],
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        l.repo.refs("refs/heads/loop/zzzzzzz").is_empty(),
        "a branch the run made besides its own is not taken"
    );
    let main = l.repo.git(&["log", "--format=%s", "main"]);
    assert!(
        !main.contains("planted-on-main"),
        "main moved only by the promotion: {main}"
    );
    let task = l.show(&id);
    assert_eq!(task["state"], "done", "the task was not cancelled: {task}");
    // What it may ask of the loop, it got: discovered work, through the outbox and a trailer.
    let list = l.repo.run(&["task", "list", "--json"]).json();
    for title in [
        "found while attacking",
        "found in a trailer while attacking",
    ] {
        let found = list
            .as_array()
            .expect("tasks")
            .iter()
            .find(|t| t["title"] == title)
            .unwrap_or_else(|| panic!("{title} was filed: {list}"));
        assert_eq!(found["discovered_from"], id.as_str(), "{found}");
    }
    assert_eq!(
        l.repo.run(&["status", "--json"]).json()["breaker"]["state"],
        "closed"
    );
    assert_eq!(
        std::fs::read_to_string(l.repo.path("policy.toml")).expect("policy"),
        policy,
        "the person's policy.toml is as it was"
    );
    assert!(
        !other.join("planted.txt").exists(),
        "the other checkout is untouched"
    );
    let remote_refs = l
        .repo
        .git(&["--git-dir", &remote.to_string_lossy(), "for-each-ref"]);
    assert!(!remote_refs.contains("planted"), "{remote_refs}");
    assert_eq!(
        std::fs::read_to_string(l.repo.root.join(".git/hooks/pre-push")).ok(),
        hook,
        "the pre-push hook is as it was"
    );
    assert!(
        l.repo.git_out(&["config", "core.hooksPath"]).code != 0,
        "no hooksPath was set"
    );
    assert_eq!(
        l.repo.git_out(&["fsck", "--no-progress"]).code,
        0,
        "the store is whole"
    );
    assert!(
        !l.repo.home.join(".gitconfig").exists(),
        "no global config was written"
    );
    assert!(
        !l.repo.home.join(".bashrc").exists(),
        "no shell start-up file was written"
    );
    let planted = Path::new("/tmp").join(format!("planted-by-{}", tag(&l)));
    assert!(!planted.exists(), "the run's /tmp is its own");
    // The work was taken from the sandbox and promoted.
    let files = l.repo.git(&["ls-tree", "--name-only", "main"]);
    assert!(files.contains(&format!("work-{id}.txt")), "{files}");
}

/// The same agent without the sandbox: the attacks are real (this is what the sandbox stops).
#[test]
fn without_the_sandbox_the_same_agent_reaches_them() {
    let (l, _dir, log) = attacked(false);
    let id = l.add("attacks everything");
    let _ = l.start(&[]);
    let reached = reached(&log);
    // (What comes after the task's ref is deleted may not run: the runner ends the agent.)
    for attack in [
        "breaker",
        "delete-task",
        "move-main",
        "policy",
        "other-checkout",
        "push",
        "hook",
        "config",
        "home-gitconfig",
        "home-bashrc",
        "host-tmp",
    ] {
        assert!(reached.iter().any(|r| r == attack), "{attack}: {reached:?}");
    }
    let _ = id;
    let _ = std::fs::remove_file(Path::new("/tmp").join(format!("planted-by-{}", tag(&l))));
}

/// What an agent files from inside its sandbox — `git loop task add` (to the run's outbox) and
/// a `Loop-Task:` trailer — is filed by the runner after the run, discovered from its task, and
/// its commits carry the loop's notes.
#[test]
fn a_sandboxed_agent_files_discovered_work_through_the_outbox_and_trailers() {
    if !sandbox_works() {
        return;
    }
    let agent = format!(
        "grep -q 'finds more work' \"$2\" || {{ {COMMIT_AND_DONE}; exit 0; }}
id=$('{BIN}' task add 'found while working' --body 'the parser drops tabs')
echo \"$id\" > filed-id.txt
echo w > \"work-$GIT_LOOP_TASK.txt\" && git add -A
git commit -q -m 'the work' -m 'Loop-Task: a follow-up from the trailer'
echo LOOP_DONE"
    );
    let l = setup(&agent, "", false);
    let id = l.add("finds more work");
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let list = l.repo.run(&["task", "list", "--json"]).json();
    let tasks = list.as_array().expect("tasks");
    for title in ["found while working", "a follow-up from the trailer"] {
        let found = tasks
            .iter()
            .find(|t| t["title"] == title)
            .unwrap_or_else(|| panic!("{title} was filed: {list}"));
        let shown = l.show(found["id"].as_str().expect("id"));
        assert_eq!(shown["discovered_from"], id.as_str(), "{shown}");
    }
    // The id `task add` printed inside is the id it was filed under.
    let printed = l.repo.show("main", "filed-id.txt");
    assert!(
        tasks.iter().any(|t| t["id"] == printed.trim()),
        "{printed} in {list}"
    );
    let commit = l
        .repo
        .git(&["log", "--format=%H", "-1", "--grep=the work", "main"]);
    let note = l
        .repo
        .git(&["notes", "--ref", "refs/notes/loop", "show", commit.trim()]);
    assert!(note.contains(&format!("task: {id}")), "{note}");
}

/// A `setsid` daemon of an agent and one of a gate (each holding a lock while it lives) are
/// gone when their run ends: the sandbox's PID namespace ends with it.
#[test]
fn daemons_of_sandboxed_agents_and_gates_end_with_their_run() {
    if !sandbox_works() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let (agent_lock, gate_lock) = (dir.path().join("agent.lock"), dir.path().join("gate.lock"));
    let daemon = |lock: &Path| {
        format!(
            "setsid flock '{0}' sleep 600 </dev/null >/dev/null 2>&1 &\n\
             while flock -n '{0}' true; do sleep 0.05; done",
            lock.display()
        )
    };
    let agent = format!("{}\n{COMMIT_AND_DONE}", daemon(&agent_lock));
    let gate = daemon(&gate_lock);
    let l = setup(
        &agent,
        &format!(
            "[gate]\ncommands = [[\"sh\", \"-c\", {}]]\n",
            toml_string(&gate)
        ),
        false,
    );
    let id = l.add("leaves daemons");
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(l.show(&id)["state"], "done");
    // Both daemons ran (each took its lock before its run went on), and neither survived.
    assert!(agent_lock.exists() && gate_lock.exists());
    wait_for("the daemons to be gone", Duration::from_secs(10), || {
        !lock_held(&agent_lock) && !lock_held(&gate_lock)
    });
}

/// Without the sandbox, the agent's `setsid` daemon outlives its run (the process group it
/// left is not the run's): what the sandbox ends.
#[test]
fn without_the_sandbox_an_agents_setsid_daemon_outlives_the_run() {
    let dir = tempfile::tempdir().expect("tmp");
    let (lock, pid) = (dir.path().join("agent.lock"), dir.path().join("daemon.pid"));
    let agent = format!(
        "setsid sh -c 'echo $$ > \"{pid}\"; exec flock \"{lock}\" sleep 600' </dev/null >/dev/null 2>&1 &\n\
         while flock -n '{lock}' true; do sleep 0.05; done\n{COMMIT_AND_DONE}",
        pid = pid.display(),
        lock = lock.display()
    );
    let l = setup(&agent, UNSANDBOXED, false);
    l.add("leaves a daemon");
    let out = l.start(&[]);
    let survived = lock_held(&lock);
    let daemon = std::fs::read_to_string(&pid).unwrap_or_default();
    // The daemon leads its own session and group (setsid): end the group, the sleep that
    // flock started included.
    let group = format!("-{}", daemon.trim());
    let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(survived, "the daemon outlived its run");
}

/// A stop while a sandboxed agent (and its daemon) runs: the runner ends the sandbox, exits 0
/// without being killed, and hands the task back unspent.
#[test]
fn a_stop_ends_a_sandboxed_agent_and_its_daemon_cleanly() {
    if !sandbox_works() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let lock = dir.path().join("agent.lock");
    let agent = format!(
        "setsid flock '{0}' sleep 600 </dev/null >/dev/null 2>&1 &\n\
         while flock -n '{0}' true; do sleep 0.05; done\necho working; sleep 600",
        lock.display()
    );
    let l = setup(&agent, "", false);
    let id = l.add("long");
    l.repo.ok(&["start", "--detach"]);
    wait_for("the daemon to run", Duration::from_secs(30), || {
        lock_held(&lock)
    });
    let out = l.repo.run(&["stop", "--timeout", "20"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("stopped"), "{}", out.stdout);
    assert!(!out.stdout.contains("killed"), "{}", out.stdout);
    assert!(!lock_held(&lock), "the daemon ended with the run");
    let task = l.show(&id);
    assert_eq!(task["state"], "ready", "{task}");
    assert_eq!(task["attempts"], 0, "a stop is not an attempt");
    assert!(l.repo.refs("refs/loop/leases/").is_empty());
    let scratch = l.repo.root.join(".git/loop/sandbox");
    assert!(
        std::fs::read_dir(&scratch).map_or(true, |mut d| d.next().is_none()),
        "no scratch is left"
    );
}

/// A runner killed while its sandboxed agent works: the agent dies with it (nothing of the run
/// lives on), and the next runner's recovery takes the work the run left in its scratch — the
/// commit it made, and its uncommitted file — before the task runs again.
#[test]
fn a_runner_killed_under_a_sandboxed_agent_loses_nothing() {
    if !sandbox_works() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let (lock, committed) = (dir.path().join("agent.lock"), dir.path().join("committed"));
    let agent = format!(
        "if [ \"$1\" -eq 1 ]; then
  echo first > first.txt && git add first.txt && git commit -q -m 'the first run'
  echo partial > partial.txt
  touch '{committed}'
  exec flock '{lock}' sleep 600
fi
{COMMIT_AND_DONE}",
        committed = committed.display(),
        lock = lock.display()
    );
    let l = setup(&agent, "", false);
    let id = l.add("interrupted");
    let mut runner = l.repo.spawn(&["start"]);
    wait_for("the first run to commit", Duration::from_secs(30), || {
        committed.exists() && lock_held(&lock)
    });
    // The commit is in the run's scratch, not yet on the branch.
    let branch = format!("loop/{}", &id[..7]);
    assert_ne!(
        l.repo.git(&["log", "--format=%s", "-1", &branch]).trim(),
        "the first run"
    );
    runner.child.kill().expect("SIGKILL the runner");
    runner.child.wait().expect("wait");
    wait_for("the agent to die with it", Duration::from_secs(10), || {
        !lock_held(&lock)
    });

    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("recovered"), "{}", out.stderr);
    assert_eq!(l.show(&id)["state"], "done");
    let main = l.repo.git(&["log", "--format=%s", "main"]);
    assert!(
        main.lines().any(|s| s == "the first run"),
        "the killed run's commit was taken and built on: {main}"
    );
    let rescues = l.repo.refs(&format!("refs/loop/rescue/{id}/"));
    assert!(
        rescues.iter().any(|r| {
            let name = r.split(' ').next().unwrap_or_default();
            l.repo
                .git_out(&["cat-file", "-e", &format!("{name}:partial.txt")])
                .code
                == 0
        }),
        "the uncommitted file was saved: {rescues:?}"
    );
}

/// A scratch left by a dead run is read as its name says and no further: a branch file for
/// another task in it (what an agent could write there) moves nothing, and an object that
/// does not hash to its name is not taken.
#[test]
fn a_left_scratch_moves_only_its_own_tasks_branch() {
    let l = setup(COMMIT_AND_DONE, "", false);
    let mine = l.add("mine");
    let other = l.add("someone else's");
    let base = l.repo.git(&["rev-parse", "main"]).trim().to_string();
    let scratch = l
        .repo
        .root
        .join(".git/loop/sandbox")
        .join(format!("run.{mine}.0000000000001.00000001"));
    std::fs::create_dir_all(scratch.join("heads/loop")).expect("mkdir");
    std::fs::create_dir_all(scratch.join("objects/ab")).expect("mkdir");
    // A commit made "in the run": a real object, written to the scratch's store only.
    let tree = l.repo.git(&["rev-parse", "main^{tree}"]).trim().to_string();
    let mut cmd = Command::new("git");
    crate::common::hermetic(&mut cmd, l.repo.root.parent().expect("tmp"));
    let made = cmd
        .current_dir(&l.repo.root)
        .env("GIT_OBJECT_DIRECTORY", scratch.join("objects"))
        .env(
            "GIT_ALTERNATE_OBJECT_DIRECTORIES",
            l.repo.root.join(".git/objects"),
        )
        .args(["commit-tree", &tree, "-p", &base, "-m", "made in the run"])
        .output()
        .expect("commit-tree");
    assert!(made.status.success());
    let made = String::from_utf8_lossy(&made.stdout).trim().to_string();
    std::fs::write(
        scratch.join("heads/loop").join(&mine[..7]),
        format!("{made}\n"),
    )
    .expect("ref");
    std::fs::write(
        scratch.join("heads/loop").join(&other[..7]),
        format!("{made}\n"),
    )
    .expect("ref");
    let forged = "ab".to_string() + &"0".repeat(38);
    std::fs::write(
        scratch.join("objects/ab").join(&forged[2..]),
        b"not an object",
    )
    .expect("obj");
    let other_before = l.repo.refs(&format!("refs/heads/loop/{}", &other[..7]));

    let out = l.repo.run(&["reap", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = out.json();
    assert!(report["reaped"].to_string().contains("scratch"), "{report}");
    assert_eq!(
        l.repo
            .git(&["rev-parse", &format!("loop/{}", &mine[..7])])
            .trim(),
        made,
        "the run's own branch moved forward to its commit"
    );
    assert_eq!(
        l.repo.refs(&format!("refs/heads/loop/{}", &other[..7])),
        other_before,
        "another task's branch did not move"
    );
    assert_ne!(
        l.repo.git_out(&["cat-file", "-e", &forged]).code,
        0,
        "the forged object was not taken"
    );
    assert!(!scratch.exists(), "the scratch is gone");
}

fn toml_string(s: &str) -> String {
    format!(
        "\"{}\"",
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    )
}

/// A task branch a person's `git pack-refs --all --prune` packed (its directory pruned): the
/// sandboxed agent's commit moves it all the same.
#[test]
fn a_packed_task_branch_is_moved_by_a_sandboxed_commit() {
    if !sandbox_works() {
        return;
    }
    let l = setup(COMMIT_AND_DONE, "", false);
    let id = l.add("its branch is packed");
    l.repo
        .git(&["branch", &format!("loop/{}", &id[..7]), "main"]);
    l.repo.git(&["pack-refs", "--all", "--prune"]);
    assert!(!l.repo.root.join(".git/refs/heads/loop").exists());
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(l.show(&id)["state"], "done");
    assert_eq!(l.agent_runs(&id).len(), 1, "the first run's commit counted");
    assert!(
        l.repo
            .git(&["ls-tree", "--name-only", "main"])
            .contains(&format!("work-{id}.txt"))
    );
}

/// A person's `git pack-refs --all --prune` while a sandboxed agent runs removes the loose
/// `refs/heads/loop/` directory outside the sandbox; the run's commit still moves its branch
/// (a mount on that directory would be taken away from the run with it).
#[test]
fn a_person_packing_refs_during_a_sandboxed_run_takes_nothing_from_it() {
    if !sandbox_works() {
        return;
    }
    let talk = tempfile::tempdir().expect("tmp");
    let (started, go) = (talk.path().join("started"), talk.path().join("go"));
    let agent = format!(
        "touch '{started}'\nwhile [ ! -e '{go}' ]; do sleep 0.05; done\n{COMMIT_AND_DONE}",
        started = started.display(),
        go = go.display(),
    );
    let l = setup(&agent, "", false);
    let id = l.add("its branch is packed under it");
    let out = std::thread::scope(|s| {
        let runner = s.spawn(|| l.start(&[]));
        wait_for("the agent to start", Duration::from_secs(30), || {
            started.exists()
        });
        l.repo.git(&["pack-refs", "--all", "--prune"]);
        assert!(
            !l.repo.root.join(".git/refs/heads/loop").exists(),
            "the person's pack-refs pruned the loose task branches' directory"
        );
        std::fs::write(&go, "").expect("go");
        runner.join().expect("runner")
    });
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(l.show(&id)["state"], "done", "{}", out.stderr);
    assert_eq!(l.agent_runs(&id).len(), 1, "the first run's commit counted");
}

/// An agent that files a new task on every run (a title of its own each time, so that none is
/// a duplicate), sandboxed or not: below the task a person filed, `triage.max_discovered` run,
/// the next waits for a person, and the batch ends.
fn discovery_is_bounded(policy: &str) {
    let agent = format!(
        "'{BIN}' task add \"more work, seen in run $GIT_LOOP_RUN\" --body 'found' >/dev/null\n{COMMIT_AND_DONE}"
    );
    let l = setup(
        &agent,
        &format!("{policy}\n[triage]\nmax_discovered = 3\n"),
        false,
    );
    let root = l.add("files more on every run");
    let out = l.start(&[]);
    let list = l.repo.run(&["task", "list", "--json"]).json();
    let tasks = list.as_array().expect("tasks");
    assert_eq!(
        tasks.len(),
        5,
        "the root, three run, one held: {list}\n{}",
        out.stderr
    );
    let held: Vec<_> = tasks
        .iter()
        .filter(|t| t["state"] == "human_gated")
        .collect();
    assert_eq!(held.len(), 1, "{list}");
    assert_eq!(held[0]["reason"], "discovery_limit", "{list}");
    let runs: usize = tasks
        .iter()
        .map(|t| l.agent_runs(t["id"].as_str().expect("id")).len())
        .sum();
    assert_eq!(runs, 4, "{list}");
    // The batch ends: a task a person must look at counts as finished (SPEC §9).
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(tasks.iter().any(|t| t["id"] == root.as_str()));
}

#[test]
fn an_agent_that_files_work_on_every_run_is_bounded() {
    discovery_is_bounded(UNSANDBOXED);
}

#[test]
fn a_sandboxed_agent_that_files_work_on_every_run_is_bounded() {
    if !sandbox_works() {
        return;
    }
    discovery_is_bounded("");
}

/// An agent that makes a repository inside its checkout, with a clean filter of its own in
/// that repository's config, and leaves a file there changed: git-loop's git, which works in
/// the checkout after the run (outside the sandbox), never looks into it, so the filter never
/// runs where the agent could not run it itself.
#[test]
fn a_nested_repository_an_agent_makes_runs_nothing_outside_its_sandbox() {
    if !sandbox_works() {
        return;
    }
    // The filter marks the home directory, which the sandbox keeps read-only: only a program
    // run outside it can write there.
    let agent = format!(
        r#"git init -q sub && echo a > sub/f && git -C sub add f && git -C sub commit -q -m s
echo '* filter=evil' > sub/.gitattributes
git -C sub config filter.evil.clean 'sh -c "echo ran >> \"$HOME/ran-outside\"; cat"'
git add sub && git commit -q -m 'a nested repository'
sleep 1; echo b > sub/f
{COMMIT_AND_DONE}"#
    );
    let l = setup(&agent, "", false);
    let id = l.add("nests a repository");
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(l.show(&id)["state"], "done", "{}", out.stderr);
    let mark = l.repo.home.join("ran-outside");
    assert!(
        !mark.exists(),
        "the agent's filter ran outside its sandbox: {:?}",
        std::fs::read_to_string(&mark)
    );
}

/// The runner in a terminal (its controlling terminal, as a person's is): a sandboxed agent
/// has none, so it cannot type into the person's shell (`TIOCSTI`); without the sandbox it
/// shares the runner's.
fn an_agent_reaches_the_runners_terminal(policy: &str) -> String {
    let talk = tempfile::tempdir().expect("tmp");
    let said = talk.path().join("tty");
    let agent = format!(
        "if sh -c ': > /dev/tty' 2>/dev/null; then echo reached > '{said}'; else echo stopped > '{said}'; fi\n{COMMIT_AND_DONE}",
        said = said.display()
    );
    let l = setup(&agent, policy, false);
    l.add("looks for a terminal");
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &format!("'{BIN}' start --once"), "/dev/null"])
        .current_dir(&l.repo.root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    crate::common::hermetic(&mut cmd, &l.repo.home);
    let status = cmd.status().expect("script");
    assert!(status.success(), "{status:?}");
    std::fs::read_to_string(&said)
        .expect("the agent said")
        .trim()
        .to_string()
}

#[test]
fn a_sandboxed_agent_has_no_terminal_to_type_into() {
    if !sandbox_works() {
        return;
    }
    assert_eq!(an_agent_reaches_the_runners_terminal(""), "stopped");
}

#[test]
fn without_the_sandbox_an_agent_reaches_the_runners_terminal() {
    assert_eq!(
        an_agent_reaches_the_runners_terminal(UNSANDBOXED),
        "reached"
    );
}

/// What a run leaves where objects go that is not a regular file — a FIFO (whose reading
/// blocks until someone writes), a symbolic link to one or to a device — is never read: the
/// runner takes the run's work and moves on.
#[test]
fn a_fifo_or_a_link_among_a_runs_objects_holds_nothing() {
    if !sandbox_works() {
        return;
    }
    let agent = format!(
        "objects=$(git rev-parse --git-path objects)
mkdir -p \"$objects/pack\" \"$objects/ab\"
mkfifo \"$objects/pack/evil.pack\" \"$objects/ab/$(printf '%038d' 0)\"
ln -s /dev/zero \"$objects/pack/zero.pack\"
echo garbage > \"$objects/pack/garbage.pack\"
{COMMIT_AND_DONE}"
    );
    let l = setup(&agent, "", false);
    let id = l.add("leaves a fifo");
    // Bounded: a runner reading the FIFO waits for ever.
    let stderr = start_bounded(&l);
    assert_eq!(l.show(&id)["state"], "done", "{stderr}");
    assert_eq!(l.agent_runs(&id).len(), 1, "the first run's commit counted");
    let sandbox = l.repo.root.join(".git/loop/sandbox");
    let left: Vec<_> = std::fs::read_dir(&sandbox)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "no scratch is left: {left:?}");
}

/// An agent that writes its worktree's metadata to say it is rebasing the target, or has it
/// checked out, holds no promotion and gets no git run in its checkout: only the person's
/// checkouts count.
#[test]
fn an_agent_that_fakes_a_rebase_of_the_target_holds_no_promotion() {
    if !sandbox_works() {
        return;
    }
    let agent = format!(
        "{COMMIT_AND_DONE}
admin=$(git rev-parse --git-dir)
mkdir -p \"$admin/rebase-merge\" && echo refs/heads/main > \"$admin/rebase-merge/head-name\"
echo 'ref: refs/heads/main' > \"$admin/HEAD\""
    );
    let l = setup(&agent, "", false);
    let id = l.add("fakes a rebase");
    // Bounded: a promotion that waits for the rebase to end waits for ever.
    let stderr = start_bounded(&l);
    assert_eq!(l.show(&id)["state"], "done", "{stderr}");
    let files = l.repo.git(&["ls-tree", "--name-only", "main"]);
    assert!(files.contains(&format!("work-{id}.txt")), "{files}");
}

/// An id chosen inside the sandbox (what `task add` printed there) whose short id is another
/// task's — its branch's name — is not taken: the task is filed under an id of its own.
#[test]
fn an_outbox_id_that_collides_with_another_tasks_short_id_is_not_taken() {
    if !sandbox_works() {
        return;
    }
    let agent = format!(
        "grep -q 'the victim' \"$2\" && {{ {COMMIT_AND_DONE}; exit 0; }}
victim=$(cat \"$HOME/victim\")
printf '{{\"id\":\"%s0123456789abcdef012345678\",\"title\":\"a collider\",\"body\":\"x\",\"blocker\":false}}\\n' \"$victim\" >> \"$GIT_LOOP_OUTBOX\"
{COMMIT_AND_DONE}"
    );
    let l = setup(&agent, "[loop]\nworkers = 1\n", false);
    let victim = l.add("the victim");
    std::fs::write(l.repo.home.join("victim"), &victim[..7]).expect("victim");
    let filer = l.add("files the collider");
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let list = l.repo.run(&["task", "list", "--json"]).json();
    let tasks = list.as_array().expect("tasks");
    let collider = tasks
        .iter()
        .find(|t| t["title"] == "a collider")
        .unwrap_or_else(|| panic!("filed: {list}"));
    let cid = collider["id"].as_str().expect("id");
    assert_ne!(&cid[..7], &victim[..7], "{list}");
    assert_eq!(collider["discovered_from"], filer.as_str());
    assert_eq!(
        l.show(&victim[..7])["id"],
        victim.as_str(),
        "the victim's short id is its own"
    );
}

/// `start --once`, ended (and so failed) after two minutes: for attacks that would make the
/// runner wait for ever. Returns its stderr once it exited 0.
fn start_bounded(l: &Loop) -> String {
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "10", "120", BIN, "start", "--once"])
        .current_dir(&l.repo.root)
        .stdin(Stdio::null());
    crate::common::hermetic(&mut cmd, &l.repo.home);
    let out = cmd.output().expect("start");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    stderr
}

/// An agent program in a directory under /tmp (which the run's own /tmp hides), with nothing
/// in `agent.writable`: the sandbox shows its directory, read-only, and the run works. (So do
/// git-loop itself and `PATH` there: a clone in /tmp builds its git-loop under /tmp.)
#[test]
fn an_agent_program_under_tmp_runs_in_its_sandbox() {
    if !sandbox_works() {
        return;
    }
    let bin = tempfile::tempdir().expect("tmp");
    let script = bin.path().join("agent-in-tmp.sh");
    crate::common::write_executable(&script, &format!("#!/bin/sh\n{COMMIT_AND_DONE}\n"));
    let l = setup(
        "true",
        &format!(
            "[agent]\nwritable = []\ncommand = [{}]\n",
            toml_string(&script.to_string_lossy())
        ),
        false,
    );
    let id = l.add("runs from /tmp");
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(l.show(&id)["state"], "done", "{}", out.stderr);
    assert_eq!(l.agent_runs(&id).len(), 1, "{}", out.stderr);
}

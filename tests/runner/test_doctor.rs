//! `git loop doctor`: every bad state is made for real — with git, the file system and
//! processes — and doctor must name it, with its status and fix, in `--json` and exit code.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::common::{Out, TestRepo, write_executable};
use crate::test_start::wait_for;

/// A loop whose programs exist everywhere: the agent and the gate are `true`.
const POLICY: &str = "[loop]\ntarget = \"main\"\n\
    [agent]\ncommand = [\"true\"]\n\
    [gate]\ncommands = [[\"true\"]]\n";

const NAMES: [&str; 20] = [
    "git-version",
    "repository",
    "ref-storage",
    "policy",
    "policy-committed",
    "runtime-files",
    "programs",
    "sandbox",
    "hooks",
    "remote",
    "worktrees",
    "branch-locks",
    "git-locks",
    "leases",
    "runner",
    "breaker",
    "oracle-pin",
    "trust",
    "tasks",
    "macos-privacy",
];

/// A repository with `policy` and the prompt committed on main, initialised (pin, hooks).
fn setup_with(policy: &str) -> TestRepo {
    let repo = TestRepo::new();
    repo.write("policy.toml", policy);
    repo.write("loop/PROMPT.md", "Do {title}.\n");
    repo.git(&["add", "policy.toml", "loop/PROMPT.md"]);
    repo.git(&["commit", "-q", "-m", "set up git-loop"]);
    repo.ok(&["init"]);
    repo
}

fn setup() -> TestRepo {
    setup_with(POLICY)
}

/// Names `remote` as `loop.remote` in the committed policy.
fn name_remote(repo: &TestRepo, remote: &str) {
    repo.write(
        "policy.toml",
        POLICY.replace("[loop]\n", &format!("[loop]\nremote = \"{remote}\"\n")),
    );
    repo.git(&["commit", "-q", "-am", "share through a remote"]);
}

/// Runs `git loop doctor --json` with `extra` arguments in `dir`.
fn doctor_at(repo: &TestRepo, dir: &Path, extra: &[&str]) -> (Out, Value) {
    let mut args = vec!["doctor", "--json"];
    args.extend_from_slice(extra);
    let out = repo.run_at(dir, &args);
    let v = out.json();
    (out, v)
}

fn doctor(repo: &TestRepo, extra: &[&str]) -> (Out, Value) {
    doctor_at(repo, &repo.root, extra)
}

/// The report of `git loop doctor --json` in `dir`, which must exit `code`.
fn doctor_exits_at(repo: &TestRepo, dir: &Path, extra: &[&str], code: i32) -> Value {
    let (out, v) = doctor_at(repo, dir, extra);
    assert_eq!(out.code, code, "{}\n{}", out.stdout, out.stderr);
    v
}

/// The report of `git loop doctor --json` in the repository, which must exit `code`.
fn doctor_exits(repo: &TestRepo, extra: &[&str], code: i32) -> Value {
    doctor_exits_at(repo, &repo.root, extra, code)
}

/// The check named `name` in a report.
fn check<'v>(v: &'v Value, name: &str) -> &'v Value {
    v["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {v}"))
}

/// Asserts the check's status and that what it saw contains every one of `saw`.
fn assert_check(v: &Value, name: &str, status: &str, saw: &[&str]) {
    let c = check(v, name);
    assert_eq!(c["status"], status, "{name}: {c}");
    let text = c["saw"].as_str().expect("saw");
    for s in saw {
        assert!(text.contains(s), "{name} should say {s:?}: {c}");
    }
}

fn fix_of(v: &Value, name: &str) -> String {
    check(v, name)["fix"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// This machine's name, as git-loop records it in leases and heartbeats.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .expect("a Linux host name")
}

/// A pid that no process has: a child that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().expect("true");
    let pid = child.id();
    child.wait().expect("reap");
    pid
}

/// Writes a record commit (over the empty tree, the record in its message, as git-loop writes
/// leases and heartbeats) with plain git, and points `refname` at it.
fn write_record(repo: &TestRepo, refname: &str, record: &str, doc: &str) {
    let tree = repo.git_stdin(&["mktree"], b"");
    let message = format!("test: a {record}\n\n--- {record}\n{doc}---\n");
    let commit = repo.git_stdin(&["commit-tree", tree.trim()], message.as_bytes());
    repo.git(&["update-ref", refname, commit.trim()]);
}

fn lease_doc(task: &str, host: &str, pid: u32, expires: &str) -> String {
    format!(
        "task = \"{task}\"\nrunner = \"{host}-{pid}-abcd\"\nhost = \"{host}\"\npid = {pid}\n\
         run = \"1\"\npurpose = \"agent\"\nacquired = \"2026-01-01T00:00:00Z\"\n\
         renewed = \"2026-01-01T00:00:00Z\"\nexpires = \"{expires}\"\n"
    )
}

#[test]
fn a_clean_initialised_repository_passes_every_check() {
    let repo = setup();
    let v = doctor_exits(&repo, &[], 0);
    assert_eq!(v["ok"], true);
    let names: Vec<&str> = v["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, NAMES, "stable names in a stable order");
    for c in v["checks"].as_array().expect("checks") {
        assert_eq!(c["status"], "ok", "{c}");
        assert!(c["fix"].is_null(), "{c}");
        for field in ["class", "saw"] {
            assert!(c[field].is_string(), "{c}");
        }
    }
    assert_check(&v, "remote", "ok", &["local-only"]);
    // The table: one line per check, then the tally.
    let human = repo.ok(&["doctor"]);
    assert!(
        human.contains("20 checks: 20 ok, 0 warn, 0 fail"),
        "{human}"
    );
    assert!(
        human
            .lines()
            .any(|l| l.starts_with("ok") && l.contains("oracle-pin")),
        "{human}"
    );
}

#[test]
fn an_untracked_agent_script_fails_in_the_original_and_passes_in_a_fresh_clone_once_committed() {
    let policy = "[loop]\ntarget = \"main\"\nremote = \"origin\"\n\
        [agent]\ncommand = [\"./agent.sh\", \"{prompt_file}\"]\n\
        [gate]\ncommands = [[\"true\"]]\n";
    let repo = TestRepo::new();
    repo.write("policy.toml", policy);
    repo.write("loop/PROMPT.md", "Do {title}.\n");
    repo.git(&["add", "policy.toml", "loop/PROMPT.md"]);
    repo.git(&["commit", "-q", "-m", "set up git-loop"]);
    let remote = repo.add_bare_remote();
    repo.ok(&["init", "--repin"]);
    write_executable(&repo.path("agent.sh"), "#!/bin/sh\necho LOOP_DONE\n");

    // The original has the script, so it runs here; a fresh clone would not have it.
    let (out, v) = doctor(&repo, &[]);
    assert_eq!(out.code, 3, "{}", out.stdout);
    assert_eq!(v["ok"], false);
    assert_check(
        &v,
        "runtime-files",
        "fail",
        &["agent.sh exists here but is not tracked", "fresh clone"],
    );
    let fix = fix_of(&v, "runtime-files");
    assert!(fix.contains("git add agent.sh && git commit"), "{fix}");
    assert_eq!(check(&v, "runtime-files")["class"], "config");
    assert_check(&v, "programs", "ok", &["agent.sh"]);
    assert_check(&v, "remote", "ok", &["answered"]);
    assert!(
        out.stderr.contains("error: 1 check failed: runtime-files"),
        "{}",
        out.stderr
    );

    // A clone made now shows the drift: the script is simply not there.
    let tmp = repo.root.parent().expect("tmp").to_path_buf();
    let shown = remote.to_string_lossy().into_owned();
    repo.git_at(&tmp, &["clone", "-q", &shown, "clone-before"]);
    let v = doctor_exits_at(&repo, &tmp.join("clone-before"), &[], 3);
    assert_check(&v, "runtime-files", "fail", &["agent.sh is missing"]);
    assert_check(&v, "programs", "fail", &["agent.sh does not exist"]);

    repo.git(&["add", "agent.sh"]);
    repo.git(&["commit", "-q", "-m", "track the agent script"]);
    repo.git(&["push", "-q", "origin", "main"]);
    repo.git_at(&tmp, &["clone", "-q", &shown, "clone-after"]);
    let clone = tmp.join("clone-after");
    // A fresh clone has no pin: nothing may be judged until a person pins the finish line.
    let v = doctor_exits_at(&repo, &clone, &[], 3);
    assert_check(&v, "runtime-files", "ok", &["agent.sh"]);
    assert_check(&v, "oracle-pin", "fail", &["not pinned"]);
    let out = repo.run_at(&clone, &["init", "--repin"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v = doctor_exits_at(&repo, &clone, &[], 0);
    assert_eq!(v["ok"], true);
    assert_check(&v, "runtime-files", "ok", &["agent.sh"]);
    assert_check(&v, "policy-committed", "ok", &["origin/main"]);
    assert_check(&v, "remote", "ok", &["answered"]);
    // What a clone lacks until someone acts are warnings, not failures: no hooks.
    assert_check(&v, "hooks", "warn", &["not installed"]);
    assert_check(&v, "oracle-pin", "ok", &["match the pin"]);
    // The original passes too now.
    let (out, _) = doctor(&repo, &[]);
    assert_eq!(out.code, 0, "{}", out.stdout);
}

#[test]
fn a_missing_manifest_file_fails_naming_it() {
    let repo = setup_with(&format!(
        "{POLICY}[runtime]\nmanifest = [\"policy.toml\", \"loop/PROMPT.md\", \"tools/setup.sh\"]\n"
    ));
    let v = doctor_exits(&repo, &["--offline"], 3);
    assert_check(&v, "runtime-files", "fail", &["tools/setup.sh is missing"]);
    assert!(fix_of(&v, "runtime-files").contains("create tools/setup.sh"));
    // Staged but not committed is still not on the target.
    repo.write("tools/setup.sh", "#!/bin/sh\n");
    repo.git(&["add", "tools/setup.sh"]);
    let (_, v) = doctor(&repo, &["--offline"]);
    assert_check(
        &v,
        "runtime-files",
        "fail",
        &["tools/setup.sh is in the index but not committed on main"],
    );
    repo.git(&["commit", "-q", "-m", "add the setup script"]);
    let v = doctor_exits(&repo, &["--offline"], 0);
    assert_check(&v, "runtime-files", "ok", &["tools/setup.sh"]);
    // Removed from the index (committed on main still): the next commit would drop it.
    repo.git(&["rm", "-q", "--cached", "tools/setup.sh"]);
    let (_, v) = doctor(&repo, &["--offline"]);
    assert_check(&v, "runtime-files", "fail", &["not in the index"]);
}

#[test]
fn a_gate_program_not_on_path_fails() {
    let repo = setup_with(
        "[loop]\ntarget = \"main\"\n[agent]\ncommand = [\"true\"]\n\
         [gate]\ncommands = [[\"true\"], [\"no-such-gate-program-7f3a\", \"--check\"]]\n\
         [review]\ncommand = [\"/nonexistent/reviewer\"]\n",
    );
    let v = doctor_exits(&repo, &["--offline"], 3);
    assert_check(
        &v,
        "programs",
        "fail",
        &[
            "gate.commands[1]: no-such-gate-program-7f3a is not on PATH",
            "review.command: /nonexistent/reviewer does not exist",
        ],
    );
    let c = check(&v, "programs");
    assert!(
        !c["saw"]
            .as_str()
            .unwrap_or_default()
            .contains("agent.command"),
        "`true` resolves: {c}"
    );
}

#[test]
fn hooks_missing_outdated_foreign_and_clobbered_are_warnings_with_fixes() {
    let repo = setup();
    let (_, v) = doctor(&repo, &[]);
    assert_check(&v, "hooks", "ok", &["current"]);

    // Outdated: the installed shim was edited.
    let post = repo.path(".git/hooks/post-commit");
    let mut text = std::fs::read_to_string(&post).expect("shim");
    text.push_str("echo edited by hand\n");
    std::fs::write(&post, text).expect("edit");
    let v = doctor_exits(&repo, &[], 0);
    assert_check(
        &v,
        "hooks",
        "warn",
        &[
            "post-commit: the installed shim is not the one",
            "--- installed",
            "+++ current",
            "-echo edited by hand",
        ],
    );
    assert!(fix_of(&v, "hooks").contains("git loop hooks install"));

    // Missing.
    std::fs::remove_file(repo.path(".git/hooks/pre-push")).expect("rm");
    let (_, v) = doctor(&repo, &[]);
    assert_check(
        &v,
        "hooks",
        "warn",
        &["pre-push: git-loop's shim is not installed"],
    );

    // Another tool's hook where the shim should be.
    let pre_push = repo.path(".git/hooks/pre-push");
    write_executable(&pre_push, "#!/bin/sh\n# lfs\nexit 0\n");
    let (_, v) = doctor(&repo, &[]);
    assert_check(
        &v,
        "hooks",
        "warn",
        &["pre-push: another tool's hook is there"],
    );

    // Installing chains it; another tool then overwriting the shim is clobbering.
    repo.ok(&["hooks", "install"]);
    let (_, v) = doctor(&repo, &[]);
    assert_check(&v, "hooks", "ok", &[]);
    std::fs::write(&pre_push, "#!/bin/sh\n# another tool\nexit 0\n").expect("clobber");
    let (_, v) = doctor(&repo, &[]);
    assert_check(
        &v,
        "hooks",
        "warn",
        &[
            "pre-push: another tool replaced git-loop's shim",
            "pre-push.git-loop-chained",
        ],
    );
}

#[test]
fn a_chained_hook_that_is_not_executable_is_a_warning() {
    let repo = setup();
    let pre_push = repo.path(".git/hooks/pre-push");
    std::fs::remove_file(&pre_push).expect("rm");
    write_executable(&pre_push, "#!/bin/sh\nexit 0\n");
    repo.ok(&["hooks", "install"]);
    let chained = repo.path(".git/hooks/pre-push.git-loop-chained");
    assert!(chained.exists());
    let (_, v) = doctor(&repo, &[]);
    assert_check(&v, "hooks", "ok", &[]);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&chained, std::fs::Permissions::from_mode(0o644))
            .expect("chmod -x");
    }
    let (_, v) = doctor(&repo, &[]);
    assert_check(
        &v,
        "hooks",
        "warn",
        &["the chained hook", "is not executable"],
    );
}

#[test]
fn a_worktree_deleted_by_hand_is_stale_and_locks_its_branch() {
    let repo = setup();
    let wt = repo.root.parent().expect("tmp").join("feature-wt");
    let shown = wt.to_string_lossy().into_owned();
    repo.git(&["worktree", "add", "-q", "-b", "feature", &shown]);
    let v = doctor_exits(&repo, &[], 0);
    assert_check(&v, "worktrees", "ok", &["2 worktrees, none stale"]);
    assert_check(&v, "branch-locks", "ok", &[]);

    std::fs::remove_dir_all(&wt).expect("rm -rf the worktree");
    let (out, v) = doctor(&repo, &[]);
    assert_eq!(out.code, 0, "warnings only: {}", out.stdout);
    assert_check(&v, "worktrees", "warn", &[&shown, "directory is gone"]);
    assert!(fix_of(&v, "worktrees").contains("git loop reap"));
    assert_check(
        &v,
        "branch-locks",
        "warn",
        &["feature is held by the stale worktree", &shown],
    );
    assert!(fix_of(&v, "branch-locks").contains("git worktree prune"));
    // It really is locked: git refuses to check the branch out.
    assert_ne!(repo.git_out(&["checkout", "-q", "feature"]).code, 0);
    repo.git(&["worktree", "prune"]);
    let (_, v) = doctor(&repo, &[]);
    assert_check(&v, "worktrees", "ok", &[]);
    assert_check(&v, "branch-locks", "ok", &[]);
}

#[test]
fn a_detached_stale_worktree_locks_no_branch() {
    let repo = setup();
    let wt = repo.root.parent().expect("tmp").join("detached-wt");
    let shown = wt.to_string_lossy().into_owned();
    repo.git(&["worktree", "add", "-q", "--detach", &shown]);
    std::fs::remove_dir_all(&wt).expect("rm -rf the worktree");
    let (_, v) = doctor(&repo, &[]);
    assert_check(&v, "worktrees", "warn", &[&shown]);
    assert_check(&v, "branch-locks", "ok", &[]);
}

#[test]
fn a_loop_worktree_without_a_lease_is_a_warning_until_one_holds_it() {
    let repo = setup();
    let wt = repo.worktree_path("abcdef0");
    let shown = wt.to_string_lossy().into_owned();
    repo.git(&["worktree", "add", "-q", "-b", "loop/abcdef0", &shown]);
    let v = doctor_exits(&repo, &[], 0);
    assert_check(
        &v,
        "worktrees",
        "warn",
        &["abcdef0", "a loop worktree with no lease"],
    );
    assert!(fix_of(&v, "worktrees").contains("git loop reap"));

    // A lease of a task with that short id, held by a live process (this test) until 2099.
    let task = format!("abcdef0{}", "1".repeat(25));
    let doc = lease_doc(&task, &host(), std::process::id(), "2099-01-01T00:00:00Z");
    write_record(
        &repo,
        &format!("refs/loop/leases/{task}"),
        "lease.toml",
        &doc,
    );
    let (_, v) = doctor(&repo, &[]);
    assert_check(&v, "worktrees", "ok", &["1 loop worktree, each leased"]);
    assert_check(&v, "leases", "ok", &["1 lease, each held"]);

    // A directory named by only the start of that short id is no task's worktree: `reap`
    // removes it, and doctor says so.
    std::fs::create_dir_all(repo.worktree_path("abc")).expect("a directory made by hand");
    let (_, v) = doctor(&repo, &[]);
    assert_check(
        &v,
        "worktrees",
        "warn",
        &["worktrees/abc: a loop worktree with no lease"],
    );
    let saw = check(&v, "worktrees")["saw"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!saw.contains("abcdef0"), "{saw}");
}

#[test]
fn expired_leases_and_leases_of_dead_processes_are_warnings() {
    let repo = setup();
    let dead = format!("deadbee{}", "0".repeat(25));
    let late = format!("1a7e000{}", "0".repeat(25));
    write_record(
        &repo,
        &format!("refs/loop/leases/{dead}"),
        "lease.toml",
        &lease_doc(&dead, &host(), dead_pid(), "2099-01-01T00:00:00Z"),
    );
    write_record(
        &repo,
        &format!("refs/loop/leases/{late}"),
        "lease.toml",
        &lease_doc(&late, "another-host.example", 4242, "2020-01-01T00:00:00Z"),
    );
    let v = doctor_exits(&repo, &[], 0);
    assert_check(
        &v,
        "leases",
        "warn",
        &[
            "deadbee: held by",
            "on this host), which is gone",
            "1a7e000: the lease of",
            "expired at 2020-01-01",
        ],
    );
    assert!(fix_of(&v, "leases").contains("git loop reap"));
    assert_eq!(check(&v, "leases")["class"], "transient");
}

#[test]
fn a_live_runner_is_seen_by_its_lock_and_its_heartbeat_goes_stale_when_it_is_killed() {
    let repo = setup_with(&format!("{POLICY}[lease]\nheartbeat = \"1s\"\n"));
    let mut runner = repo
        .cmd(&["start"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start a runner");
    wait_for("a heartbeat", Duration::from_secs(30), || {
        !repo.refs("refs/loop/runners/").is_empty()
    });
    let (_, v) = doctor(&repo, &[]);
    assert_check(
        &v,
        "runner",
        "ok",
        &["a runner holds the lock", "heartbeats:"],
    );

    runner.kill().expect("SIGKILL the runner");
    runner.wait().expect("reap it");
    let v = doctor_exits(&repo, &[], 0);
    assert_check(
        &v,
        "runner",
        "warn",
        &["on this host) is gone, but its heartbeat says"],
    );
    assert!(fix_of(&v, "runner").contains("git loop start"));
}

#[test]
fn an_old_heartbeat_from_another_host_is_stale() {
    let repo = setup();
    let doc = "runner = \"far-1-beef\"\nhost = \"far.example\"\npid = 1\n\
               started = \"2026-01-01T00:00:00Z\"\nupdated = \"2026-01-01T00:00:00Z\"\n\
               iteration = 3\nphase = \"agent\"\nnext_action = \"work\"\n";
    write_record(&repo, "refs/loop/runners/far-1-beef", "heartbeat.toml", doc);
    let (_, v) = doctor(&repo, &[]);
    assert_check(
        &v,
        "runner",
        "warn",
        &["far-1-beef (host far.example", "in phase agent"],
    );
    // A runner that stopped cleanly is history, not a problem.
    let stopped = doc.replace("phase = \"agent\"", "phase = \"stopped\"");
    write_record(
        &repo,
        "refs/loop/runners/far-1-beef",
        "heartbeat.toml",
        &stopped,
    );
    let (_, v) = doctor(&repo, &[]);
    assert_check(&v, "runner", "ok", &["no runner holds the lock"]);
}

#[test]
fn a_paused_breaker_is_reported_with_its_reason() {
    let repo = setup();
    repo.ok(&["pause", "--reason", "disk full on the build host"]);
    let v = doctor_exits(&repo, &[], 0);
    assert_check(
        &v,
        "breaker",
        "warn",
        &["paused", "disk full on the build host"],
    );
    assert!(fix_of(&v, "breaker").contains("git loop resume"));
    assert_eq!(check(&v, "breaker")["class"], "breaker");
    repo.ok(&["resume"]);
    let (_, v) = doctor(&repo, &[]);
    assert_check(&v, "breaker", "ok", &["closed"]);
}

#[test]
fn a_gate_changed_on_the_target_without_a_repin_fails_with_the_diff() {
    let repo = setup();
    repo.write(
        "policy.toml",
        POLICY.replace("[[\"true\"]]", "[[\"true\", \"--lenient\"]]"),
    );
    repo.git(&["commit", "-q", "-am", "loosen the gate"]);
    let v = doctor_exits(&repo, &[], 3);
    assert_check(
        &v,
        "oracle-pin",
        "fail",
        &[
            "--- pinned (refs/loop/oracle)",
            "+++ main:policy.toml",
            "-commands = [[\"true\"]]",
            "+commands = [[\"true\", \"--lenient\"]]",
        ],
    );
    assert!(fix_of(&v, "oracle-pin").contains("git loop init --repin"));
    repo.ok(&["init", "--repin"]);
    let v = doctor_exits(&repo, &[], 0);
    assert_check(&v, "oracle-pin", "ok", &[]);
    // No pin at all (deleted, say, by an agent): nothing may be judged, so it fails, saying how
    // a person pins.
    repo.git(&["update-ref", "-d", "refs/loop/oracle"]);
    let v = doctor_exits(&repo, &[], 3);
    assert_check(&v, "oracle-pin", "fail", &["not pinned"]);
    assert!(fix_of(&v, "oracle-pin").contains("git loop init --repin"));
}

#[test]
fn a_corrupt_task_ref_fails() {
    let repo = setup();
    repo.add("a good task", &[]);
    let head = repo.git(&["rev-parse", "HEAD"]);
    let name = format!("refs/loop/tasks/{}", "c0ffee".repeat(5) + "00");
    repo.git(&["update-ref", &name, head.trim()]);
    let v = doctor_exits(&repo, &[], 3);
    assert_check(&v, "tasks", "fail", &[&name, "holds no task.toml"]);
    assert!(fix_of(&v, "tasks").contains(&format!("git update-ref -d {name}")));
}

#[test]
fn a_dangling_dependency_and_a_cycle_fail() {
    let repo = setup();
    let a = repo.add("first", &[]);
    let b = repo.add("second", &["--after", &a]);
    let (_, v) = doctor(&repo, &[]);
    assert_check(&v, "tasks", "ok", &["2 tasks, all readable"]);

    // A cycle, made behind git-loop's back: a after b, b after a.
    repo.poke(&a, "after", &format!("[\"{b}\"]"));
    let v = doctor_exits(&repo, &[], 3);
    assert_check(
        &v,
        "tasks",
        "fail",
        &["a dependency cycle", &a[..7], &b[..7]],
    );

    // A dependency whose task is gone.
    repo.git(&["update-ref", "-d", &format!("refs/loop/tasks/{a}")]);
    let v = doctor_exits(&repo, &[], 3);
    assert_check(
        &v,
        "tasks",
        "fail",
        &[&format!("runs after {a}, which is not a task")],
    );
    let saw = check(&v, "tasks")["saw"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!saw.contains("cycle"), "{saw}");
}

#[test]
fn a_reftable_repository_is_reported_not_crashed_on() {
    let repo = TestRepo::with_init(&["init", "-q", "-b", "main", "--ref-format=reftable"]);
    let v = doctor_exits(&repo, &[], 3);
    assert_eq!(v["ok"], false);
    assert_check(&v, "git-version", "ok", &[]);
    assert_check(&v, "ref-storage", "fail", &["reftable"]);
    assert!(fix_of(&v, "ref-storage").contains("git refs migrate --ref-format=files"));
}

#[test]
fn outside_a_repository_and_in_a_bare_one_the_repository_check_fails() {
    let repo = TestRepo::new();
    let v = doctor_exits_at(&repo, &repo.home, &[], 3);
    assert_check(&v, "repository", "fail", &["not a git repository"]);

    let bare = repo.root.parent().expect("tmp").join("bare.git");
    let shown = bare.to_string_lossy().into_owned();
    repo.git(&["clone", "-q", "--bare", ".", &shown]);
    let v = doctor_exits_at(&repo, &bare, &["--offline"], 3);
    assert_check(&v, "repository", "fail", &["bare repository"]);
    assert_check(&v, "policy", "fail", &["no work tree"]);
}

#[test]
fn a_detached_head_and_a_merge_in_progress_are_warnings() {
    let repo = setup();
    repo.git(&["checkout", "-q", "--detach"]);
    let v = doctor_exits(&repo, &[], 0);
    assert_check(&v, "repository", "warn", &["HEAD is detached at"]);

    repo.git(&["checkout", "-q", "-b", "other", "main"]);
    repo.write("README", "theirs\n");
    repo.git(&["commit", "-q", "-am", "theirs"]);
    repo.git(&["checkout", "-q", "main"]);
    repo.write("README", "ours\n");
    repo.git(&["commit", "-q", "-am", "ours"]);
    assert_ne!(
        repo.git_out(&["merge", "-q", "other"]).code,
        0,
        "a conflict"
    );
    let (_, v) = doctor(&repo, &[]);
    assert_check(&v, "repository", "warn", &["a merge is in progress"]);
    assert!(fix_of(&v, "repository").contains("git merge --continue / --abort"));
}

#[test]
fn a_remote_named_but_not_configured_fails() {
    // Named after `init` (which, with a remote named, pins the finish line there).
    let repo = setup();
    name_remote(&repo, "upstream");
    let v = doctor_exits(&repo, &["--offline"], 3);
    assert_check(
        &v,
        "remote",
        "fail",
        &["upstream, which is not a configured remote"],
    );
    assert_eq!(check(&v, "remote")["class"], "config");
    assert!(fix_of(&v, "remote").contains("git remote add upstream"));
}

#[test]
fn an_unreachable_remote_fails_as_transient_unless_offline() {
    let repo = setup();
    name_remote(&repo, "origin");
    let nowhere = repo.root.parent().expect("tmp").join("no-such-remote.git");
    repo.git(&["remote", "add", "origin", &nowhere.to_string_lossy()]);
    let v = doctor_exits(&repo, &[], 3);
    assert_check(&v, "remote", "fail", &["cannot reach the remote origin"]);
    assert_eq!(check(&v, "remote")["class"], "transient");
    assert!(fix_of(&v, "remote").contains("--offline"));

    let v = doctor_exits(&repo, &["--offline"], 0);
    assert_check(&v, "remote", "ok", &["not contacted (--offline)"]);
}

#[test]
fn policy_edits_not_committed_on_the_target_and_parse_errors_are_reported() {
    let repo = setup();
    repo.write("policy.toml", format!("{POLICY}# tuned by hand\n"));
    let v = doctor_exits(&repo, &[], 0);
    assert_check(
        &v,
        "policy-committed",
        "warn",
        &["differs from the one committed on main", "+# tuned by hand"],
    );

    repo.write("policy.toml", "[loop\ntarget = \"main\"\n");
    let v = doctor_exits(&repo, &[], 3);
    assert_check(&v, "policy", "fail", &["policy.toml:1"]);
    assert_check(&v, "runtime-files", "warn", &["not checked"]);

    // A policy that exists only in the work tree: the target has none.
    let fresh = TestRepo::new();
    fresh.write("policy.toml", POLICY);
    let v = doctor_exits(&fresh, &[], 3);
    assert_check(&v, "policy", "ok", &[]);
    assert_check(
        &v,
        "policy-committed",
        "fail",
        &["policy.toml is not committed on main"],
    );
    assert_check(
        &v,
        "runtime-files",
        "fail",
        &["policy.toml exists here but is not tracked"],
    );
}

/// Every file under `root` (the work tree and `.git`, `.git/loop` included): path, kind, size,
/// modification time and contents.
fn snapshot_files(root: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let entry = entry.expect("entry");
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).expect("stat");
            let modified = meta.modified().expect("mtime");
            if meta.is_dir() {
                stack.push(path.clone());
                out.push((path, format!("dir {modified:?}")));
            } else {
                let bytes = std::fs::read(&path).unwrap_or_default();
                out.push((path, format!("{} {modified:?} {bytes:?}", meta.len())));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn doctor_changes_nothing_in_a_repository_full_of_problems() {
    let repo = setup();
    let id = repo.add("a task", &[]);
    repo.add("another", &["--after", &id]);
    // Problems of every kind: a stale worktree, a loop worktree with no lease, a dead holder's
    // lease, a corrupt task ref, an untracked runtime file, an edited hook, a paused breaker.
    let wt = repo.root.parent().expect("tmp").join("gone-wt");
    repo.git(&["worktree", "add", "-q", "-b", "gone", &wt.to_string_lossy()]);
    std::fs::remove_dir_all(&wt).expect("rm");
    repo.add_task_worktree(&id);
    let dead = format!("deadbee{}", "0".repeat(25));
    write_record(
        &repo,
        &format!("refs/loop/leases/{dead}"),
        "lease.toml",
        &lease_doc(&dead, &host(), dead_pid(), "2020-01-01T00:00:00Z"),
    );
    let head = repo.git(&["rev-parse", "HEAD"]);
    repo.git(&[
        "update-ref",
        &format!("refs/loop/tasks/{}", "e".repeat(32)),
        head.trim(),
    ]);
    repo.write(
        "policy.toml",
        format!(
            "{POLICY}[runtime]\nmanifest = [\"policy.toml\", \"loop/PROMPT.md\", \"setup.sh\"]\n"
        ),
    );
    repo.write("setup.sh", "#!/bin/sh\n");
    std::fs::write(
        repo.path(".git/hooks/post-commit"),
        "#!/bin/sh\n# git-loop hook shim v0\n",
    )
    .expect("edit hook");
    repo.ok(&["pause", "--reason", "snapshot"]);
    // The task cache is absent: a listing that refreshed it would write it.
    let _ = std::fs::remove_dir_all(repo.path(".git/loop/cache"));

    let refs_before = repo.git(&["for-each-ref", "--format=%(refname) %(objectname)"]);
    let files_before = snapshot_files(&repo.root);
    std::thread::sleep(Duration::from_millis(20));
    let v = doctor_exits(&repo, &[], 3);
    for (name, status) in [
        ("worktrees", "warn"),
        ("branch-locks", "warn"),
        ("leases", "warn"),
        ("tasks", "fail"),
        ("runtime-files", "fail"),
        ("hooks", "warn"),
        ("breaker", "warn"),
        ("policy-committed", "warn"),
    ] {
        assert_check(&v, name, status, &[]);
    }
    let human = repo.run(&["doctor"]);
    assert_eq!(human.code, 3);
    assert_eq!(
        repo.git(&["for-each-ref", "--format=%(refname) %(objectname)"]),
        refs_before,
        "no ref changed"
    );
    assert_eq!(snapshot_files(&repo.root), files_before, "no file changed");
    assert!(!repo.path(".git/loop/cache").exists());
}

#[test]
fn help_and_the_manual_page_name_every_check() {
    let repo = TestRepo::new();
    let help = repo.ok(&["doctor", "--help"]);
    for name in NAMES {
        assert!(
            // The whole first word: "policy-committed" does not stand for "policy".
            help.lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "{name} missing from --help:\n{help}"
        );
    }
    assert!(help.contains("--offline"), "{help}");
    let page = repo.ok(&["man"]);
    let section = page
        .split(".SS git loop doctor")
        .nth(1)
        .expect("doctor in the manual page");
    assert!(
        section.contains(".nf\n  git\\-version"),
        "the table keeps its lines"
    );
    assert!(section.contains("macos\\-privacy"));
}

/// A `bwrap` first on PATH that cannot make a sandbox (as where user namespaces are off).
fn broken_bwrap(bin: &Path) -> String {
    write_executable(
        &bin.join("bwrap"),
        "#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n",
    );
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[test]
fn the_sandbox_check_warns_when_agents_run_unsandboxed_and_fails_when_bwrap_is_asked_for() {
    let repo = setup_with(&POLICY.replace("[agent]\n", "[agent]\nsandbox = \"none\"\n"));
    let v = doctor_exits(&repo, &[], 0);
    assert_check(
        &v,
        "sandbox",
        "warn",
        &["unsandboxed", "agent.sandbox is \"none\""],
    );

    let bin = tempfile::tempdir().expect("tmp");
    let path = broken_bwrap(bin.path());
    // doctor with the broken bwrap first on PATH: its exit code and report.
    let doctor = |repo: &TestRepo| {
        let out = repo
            .cmd(&["doctor", "--json"])
            .env("PATH", &path)
            .output()
            .expect("doctor");
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        (out.status.code(), v)
    };
    let (code, v) = doctor(&setup_with(POLICY));
    assert_eq!(code, Some(0), "auto falls back: a warning");
    assert_check(&v, "sandbox", "warn", &["unsandboxed", "No permissions"]);
    assert!(fix_of(&v, "sandbox").contains("bubblewrap"));

    let repo = setup_with(&POLICY.replace("[agent]\n", "[agent]\nsandbox = \"bwrap\"\n"));
    let (code, v) = doctor(&repo);
    assert_eq!(code, Some(3));
    assert_check(
        &v,
        "sandbox",
        "fail",
        &["agent.sandbox is \"bwrap\"", "No permissions"],
    );
    // And the runner will not start without the sandbox it was told to use.
    let out = repo
        .cmd(&["start", "--once"])
        .env("PATH", &path)
        .output()
        .expect("start");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("bubblewrap"));
}

#[test]
fn trust_signers_must_be_committed_on_the_target_and_list_keys() {
    // Named but never committed: the runner could check no signature, so it fails.
    let repo = setup_with(&format!("{POLICY}[trust]\nsigners = \".gitsigners\"\n"));
    let v = doctor_exits(&repo, &[], 3);
    assert_check(&v, "trust", "fail", &[".gitsigners", "not committed"]);
    assert!(fix_of(&v, "trust").contains("git loop init --repin"));
    // Committed empty: every task would be held.
    repo.write(".gitsigners", "# nobody yet\n");
    repo.git(&["add", ".gitsigners"]);
    repo.git(&["commit", "-q", "-m", "allowed signers"]);
    repo.ok(&["init", "--repin"]);
    let v = doctor_exits(&repo, &[], 0);
    assert_check(&v, "trust", "warn", &["lists no key"]);
    repo.write(
        ".gitsigners",
        "me@example.com namespaces=\"git\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGW7u0Bt4x3bqtf2TqOAkw3tmkAzKUhDd6VNQjLSrj2n\n",
    );
    repo.git(&["commit", "-q", "-am", "a signer"]);
    // A changed signers file is a changed finish line until a person re-pins.
    let v = doctor_exits(&repo, &[], 3);
    assert_check(&v, "oracle-pin", "fail", &[".gitsigners"]);
    repo.ok(&["init", "--repin"]);
    let v = doctor_exits(&repo, &[], 0);
    assert_check(&v, "trust", "ok", &["1 key(s) in .gitsigners"]);
}

#[test]
fn a_shared_remote_without_the_loops_state_warns_until_the_pin_is_pushed() {
    let repo = setup();
    name_remote(&repo, "origin");
    // A remote that has the target but never took refs/loop/*.
    repo.add_bare_remote();
    let v = doctor_exits(&repo, &[], 0);
    assert_check(
        &v,
        "remote",
        "warn",
        &["main is at", "holds no refs/loop/oracle"],
    );
    assert!(fix_of(&v, "remote").contains("git loop init --repin"));
    repo.ok(&["init", "--repin"]);
    let v = doctor_exits(&repo, &[], 0);
    assert_check(&v, "remote", "ok", &["holds the loop's state"]);
}

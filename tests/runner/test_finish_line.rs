//! The frozen finish line against agents that try to move it: a rewritten gate script, a
//! loosened `policy.toml` in the person's checkout, protected test files, a deleted pin and
//! weaker gates pushed to the target. Real runners, real agents (shell scripts), real git.

use std::time::Duration;

use crate::test_start::{COMMIT_AND_DONE, UNSANDBOXED, setup_with_files, wait_for};

/// Tiny budgets, so that a task that can never pass ends with a person quickly.
const BUDGET: &str = "[retry]\ninitial = \"50ms\"\nmax = \"100ms\"\nmax_attempts = 2\n\
    same_signature = 2\nescalate_after = 1\ncooloff = \"200ms\"\n";

/// The gate: a script in the repository, which passes only when `gate-ok` exists.
const GATE: &str = "#!/bin/sh\ntest -f gate-ok\n";

#[test]
fn a_gate_script_the_agent_rewrites_is_refused_and_never_runs() {
    // The agent rewrites the gate to pass, commits its work (without gate-ok), claims done.
    let agent = "\
printf '#!/bin/sh\\nexit 0\\n' > loop/gate.sh
echo w > \"work-$1.txt\" && git add -A && git commit -q -m \"attempt $1\"
echo LOOP_DONE";
    let l = setup_with_files(
        agent,
        &format!("{BUDGET}[gate]\ncommands = [[\"loop/gate.sh\"]]\n"),
        false,
        &[("loop/gate.sh", GATE)],
    );
    let pin = l.repo.show("refs/loop/oracle", "oracle.toml");
    assert!(
        pin.contains("\"loop/gate.sh\" = \"100755 "),
        "the script is pinned: {pin}"
    );
    let id = l.add("passes only by cheating");
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let task = l.show(&id);
    assert_eq!(task["state"], "human_gated", "{task}");
    let history = l.history(&id);
    assert!(
        history
            .iter()
            .any(|h| h
                .contains("changes the protected sections of policy.toml or the files they run")),
        "{history:?}"
    );
    assert_eq!(
        l.repo.show("main", "loop/gate.sh"),
        GATE,
        "the gate on main is the pinned one"
    );
    assert!(
        !l.repo
            .git(&["ls-tree", "--name-only", "main"])
            .contains("work-"),
        "nothing was merged"
    );
}

/// The gate lives on the target; the branch forked before a person made it stricter (and
/// re-pinned): the judge runs the target's gate, not the one in the branch's tree.
#[test]
fn gates_run_with_the_targets_pinned_files_whatever_the_branch_holds() {
    let agent = "\
if [ ! -e started ]; then touch started; fi
echo w > \"work-$1.txt\" && git add work-*.txt && git commit -q -m \"attempt $1\"
echo LOOP_DONE";
    let l = setup_with_files(
        agent,
        &format!("{BUDGET}[gate]\ncommands = [[\"sh\", \"loop/gate.sh\"]]\n"),
        false,
        &[("loop/gate.sh", "#!/bin/sh\nexit 0\n")],
    );
    let id = l.add("forks before the gate got stricter");
    // The branch forks from main now, with the lenient gate in its tree.
    let branch = format!("loop/{}", &id[..7]);
    l.repo.git(&["branch", &branch, "main"]);
    // A person makes the gate stricter on main, and re-pins.
    l.repo.git(&["checkout", "-q", "main"]);
    crate::common::write_executable(&l.repo.path("loop/gate.sh"), GATE);
    l.repo
        .git(&["commit", "-q", "-am", "A person makes the gate strict"]);
    l.repo.git(&["checkout", "-q", "person"]);
    l.repo.ok(&["init", "--repin"]);
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let history = l.history(&id);
    assert!(
        history
            .iter()
            .any(|h| h.contains("gate failed: sh loop/gate.sh: exit 1")),
        "the strict gate ran: {history:?}"
    );
    assert_eq!(l.show(&id)["state"], "human_gated");
}

#[test]
fn protected_paths_cannot_be_changed_by_a_branch() {
    // The agent "fixes" the failing test by editing it.
    let agent = "\
echo 'exit 0' > tests/check.sh
echo w > \"work-$1.txt\" && git add -A && git commit -q -m \"attempt $1\"
echo LOOP_DONE";
    let l = setup_with_files(
        agent,
        &format!(
            "{BUDGET}[gate]\ncommands = [[\"sh\", \"-c\", \"sh tests/check.sh\"]]\n\
             protected_paths = [\"tests/\"]\n"
        ),
        false,
        &[("tests/check.sh", "exit 1\n")],
    );
    let pin = l.repo.show("refs/loop/oracle", "oracle.toml");
    assert!(
        pin.contains("tests = \"040000 "),
        "the directory is pinned: {pin}"
    );
    let id = l.add("edits the tests");
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let history = l.history(&id);
    assert!(
        history.iter().any(|h| h.contains("or the files they run")),
        "{history:?}"
    );
    assert!(
        l.runs(&id).iter().any(|r| r["tail"]
            .as_str()
            .unwrap_or_default()
            .contains("pinned paths changed: tests")),
        "the judge said which: {:?}",
        l.runs(&id)
    );
    assert_eq!(l.repo.show("main", "tests/check.sh"), "exit 1\n");
}

/// The agent loosens the gate in the person's own checkout (an uncommitted edit): the judge
/// reads the gates from the pin, never from a working file.
#[test]
fn a_loosened_policy_in_the_persons_checkout_does_not_loosen_the_gate() {
    let agent = "\
root=$(cd \"$(git rev-parse --git-common-dir)/..\" && pwd)
sed 's/^commands = .*gate-ok.*$/commands = [[\"true\"]]/' \"$root/policy.toml\" > /tmp/p.$$ && cat /tmp/p.$$ > \"$root/policy.toml\"; rm -f /tmp/p.$$
echo w > \"work-$1.txt\" && git add work-*.txt && git commit -q -m \"attempt $1\"
echo LOOP_DONE";
    // Unsandboxed, so that the person's policy.toml is reachable: the pin alone must hold.
    let l = setup_with_files(
        agent,
        &format!(
            "{UNSANDBOXED}{BUDGET}[gate]\ncommands = [[\"sh\", \"-c\", \"test -f gate-ok\"]]\n"
        ),
        false,
        &[],
    );
    let id = l.add("never makes gate-ok");
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(l.show(&id)["state"], "human_gated", "{}", out.stderr);
    assert!(
        !l.repo
            .git(&["ls-tree", "--name-only", "main"])
            .contains("work-"),
        "nothing was merged"
    );
}

/// Someone deletes the pin and pushes weaker gates to the target while a runner runs: the
/// runner notices, opens the breaker (config) saying so, and judges nothing until a person
/// re-pins.
#[test]
fn a_deleted_pin_or_weaker_gates_on_the_target_open_the_breaker() {
    let l = setup_with_files(
        COMMIT_AND_DONE,
        "[gate]\ncommands = [[\"sh\", \"-c\", \"test -f gate-ok\"]]\n[lease]\nheartbeat = \"1s\"\n",
        true,
        &[],
    );
    let mut runner = l.repo.spawn(&["start"]);
    let status = || l.repo.run(&["status", "--json"]).json();
    wait_for("the runner to idle", Duration::from_secs(30), || {
        status()["runners"][0]["phase"] == "idle"
    });
    // Deleted where the loop shares its state (a deletion here alone is undone by the next
    // sync, from the remote's pin), and here.
    l.repo
        .git(&["push", "-q", "--no-verify", "origin", ":refs/loop/oracle"]);
    l.repo.git(&["update-ref", "-d", "refs/loop/oracle"]);
    wait_for("the breaker to open", Duration::from_secs(30), || {
        status()["breaker"]["state"] == "open"
    });
    let b = status()["breaker"].clone();
    assert_eq!(b["class"], "config", "{b}");
    assert!(
        b["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("not pinned"),
        "{b}"
    );
    let id = l.add("must be judged by the pinned gate");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        l.show(&id)["attempts"],
        0,
        "nothing runs while the finish line is unpinned"
    );

    // The person re-pins; then someone pushes a weaker gate to the remote's target.
    l.repo.ok(&["init", "--repin"]);
    let other = l.repo.root.parent().expect("tmp").join("someone");
    let remote = l.repo.root.parent().expect("tmp").join("remote.git");
    l.repo.git_at(
        l.repo.root.parent().expect("tmp"),
        &["clone", "-q", &remote.to_string_lossy(), "someone"],
    );
    let policy = std::fs::read_to_string(other.join("policy.toml")).expect("policy");
    std::fs::write(
        other.join("policy.toml"),
        policy.replace("[[\"sh\", \"-c\", \"test -f gate-ok\"]]", "[[\"true\"]]"),
    )
    .expect("write");
    l.repo
        .git_at(&other, &["commit", "-q", "-am", "Weaker gates"]);
    l.repo
        .git_at(&other, &["push", "-q", "--no-verify", "origin", "main"]);
    l.repo.git(&["fetch", "-q", "origin"]);
    wait_for(
        "the breaker to say the finish line changed",
        Duration::from_secs(30),
        || {
            let b = status()["breaker"].clone();
            b["state"] == "open"
                && b["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("the finish line changed outside git-loop")
        },
    );
    let reason = status()["breaker"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.contains("\"Weaker gates\""),
        "names the commit: {reason}"
    );
    assert!(
        !l.repo
            .git(&["ls-tree", "--name-only", "origin/main"])
            .contains("work-"),
        "nothing was promoted by the weaker gate"
    );
    assert_eq!(runner.terminate(), Some(0), "{}", runner.stderr_text());
}

/// An agent's branch that turns the sandbox off for the runs after it (`agent.sandbox` in its
/// policy.toml) changes the finish line: refused, never merged.
#[test]
fn a_branch_that_turns_the_sandbox_off_is_refused() {
    let agent = "\
sed 's/^sandbox = .*$/sandbox = \"none\"/' policy.toml > p.tmp && mv p.tmp policy.toml
grep -q 'sandbox = \"none\"' policy.toml || exit 9
echo w > \"work-$1.txt\" && git add -A && git commit -q -m \"attempt $1\"
echo LOOP_DONE";
    let l = setup_with_files(
        agent,
        &format!("{BUDGET}[agent]\nsandbox = \"auto\"\n"),
        false,
        &[],
    );
    let id = l.add("lowers the sandbox");
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let task = l.show(&id);
    assert_eq!(task["state"], "human_gated", "{task}");
    assert!(
        l.history(&id)
            .iter()
            .any(|h| h.contains("changes the protected sections of policy.toml")),
        "{:?}",
        l.history(&id)
    );
    let main_policy = l.repo.show("main", "policy.toml");
    assert!(main_policy.contains("sandbox = \"auto\""), "{main_policy}");
}

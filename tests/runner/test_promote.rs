//! `git loop promote`: idempotent, crash-safe promotion, tested by killing real processes.

use std::process::Stdio;
use std::time::Duration;

use crate::common::{GOOD_BODY, ids_of};
use crate::promote_fixture::{Config, Fixture};

const PHASES: [&str; 8] = [
    "preflight",
    "push_source",
    "merge",
    "push_target",
    "verify",
    "cleanup",
    "delete_remote_branch",
    "done",
];

#[test]
fn promotes_with_each_strategy_locally_and_to_a_remote() {
    for strategy in ["ff-only", "no-ff", "squash"] {
        for remote in [false, true] {
            let f = Fixture::new(Config {
                strategy,
                remote,
                diverge: strategy != "ff-only",
                dirty_worktree: true,
                ..Config::default()
            });
            let out = f.promote();
            assert_eq!(out.code, 0, "{strategy} remote={remote}: {}", out.stderr);
            assert!(out.stderr.contains("promoted"), "{}", out.stderr);
            f.assert_converged();
            // The worktree's uncommitted and untracked files were saved before it was removed.
            let rescue = format!("refs/loop/rescue/{}/1", f.id);
            assert_eq!(f.repo.show(&rescue, "feature.txt"), "uncommitted edit\n");
            assert_eq!(f.repo.show(&rescue, "notes.txt"), "untracked notes\n");
        }
    }
}

/// Kills the promotion at `point`, runs it again, and checks everything converged.
fn crash_and_resume(strategy: &str, remote: bool) {
    crash_and_resume_with(strategy, remote, Config::default().verify);
}

/// The same with `verify` as the verify commands (`[]`: the target push also deletes the
/// remote task branch, in one atomic push).
fn crash_and_resume_with(strategy: &str, remote: bool, verify: &str) {
    for phase in PHASES {
        for when in ["before", "after"] {
            let f = Fixture::new(Config {
                strategy,
                remote,
                diverge: strategy != "ff-only",
                verify,
                ..Config::default()
            });
            let point = format!("{phase}:{when}");
            let killed = f.promote_env("GIT_LOOP_CRASH_AT", &point);
            assert_eq!(
                killed.code, -1,
                "{strategy} remote={remote} {point}: not killed: {}",
                killed.stderr
            );
            let out = f.promote();
            assert_eq!(
                out.code, 0,
                "{strategy} remote={remote} after a kill at {point}: {}",
                out.stderr
            );
            f.assert_converged();
        }
    }
}

#[test]
fn crash_matrix_no_ff_remote_without_verify() {
    crash_and_resume_with("no-ff", true, "[]");
}

#[test]
fn crash_matrix_ff_only_local() {
    crash_and_resume("ff-only", false);
}

#[test]
fn crash_matrix_ff_only_remote() {
    crash_and_resume("ff-only", true);
}

#[test]
fn crash_matrix_no_ff_local() {
    crash_and_resume("no-ff", false);
}

#[test]
fn crash_matrix_no_ff_remote() {
    crash_and_resume("no-ff", true);
}

#[test]
fn crash_matrix_squash_local() {
    crash_and_resume("squash", false);
}

#[test]
fn crash_matrix_squash_remote() {
    crash_and_resume("squash", true);
}

#[test]
fn sigkill_at_random_instants_50_times() {
    // A fixed seed: the instants differ from run to run of the loop, not between test runs.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut killed_midway = 0;
    let mut retried = 0;
    for round in 0..50 {
        let f = Fixture::new(Config {
            strategy: ["ff-only", "no-ff", "squash"][round % 3],
            remote: round % 2 == 0,
            diverge: round % 3 != 0,
            ..Config::default()
        });
        let mut child = f
            .repo
            .cmd(&["promote", f.short()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_micros(next() % 120_000));
        let _ = child.kill(); // SIGKILL
        let status = child.wait().expect("wait");
        if status.code().is_none() {
            killed_midway += 1;
        }
        // Only the promote process was killed: a git push or fetch it started may still be
        // finishing, and a re-run that races it exits 4 (worth retrying), as the runner would.
        let mut out = f.promote();
        let mut tries = 1;
        while out.code == 4 && tries < 10 {
            retried += 1;
            std::thread::sleep(Duration::from_millis(100));
            out = f.promote();
            tries += 1;
        }
        assert_eq!(out.code, 0, "round {round}: {}", out.stderr);
        f.assert_converged();
    }
    eprintln!(
        "{killed_midway} of 50 runs killed before finishing; {retried} re-runs exited 4 first"
    );
    assert!(
        killed_midway > 10,
        "only {killed_midway} of 50 runs were killed before finishing"
    );
}

#[test]
fn two_promotions_at_once_merge_once() {
    for remote in [false, true] {
        let f = Fixture::new(Config {
            remote,
            diverge: true,
            ..Config::default()
        });
        let spawn = || {
            f.repo
                .cmd(&["promote", f.short()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        };
        let (a, b) = (spawn(), spawn());
        let codes: Vec<i32> = [a, b]
            .into_iter()
            .map(|c| {
                c.wait_with_output()
                    .expect("wait")
                    .status
                    .code()
                    .unwrap_or(-1)
            })
            .collect();
        assert!(codes.contains(&0), "one finishes: {codes:?}");
        // The other finds the task leased to the first (6), or, racing it to the lease, the
        // promotion's lock or lease changing (4), or had nothing left to do (0).
        assert!(
            codes.iter().all(|c| [0, 4, 6].contains(c)),
            "the other is 0, 4 or 6: {codes:?}"
        );
        if codes.iter().any(|c| *c != 0) {
            let out = f.promote();
            assert_eq!(out.code, 0, "{}", out.stderr);
        }
        f.assert_converged();
    }
}

#[test]
fn a_push_to_the_target_between_merge_and_push_is_a_lost_race_merged_again() {
    let f = Fixture::new(Config {
        remote: true,
        diverge: true,
        ..Config::default()
    });
    let killed = f.promote_env("GIT_LOOP_CRASH_AT", "push_target:before");
    assert_eq!(killed.code, -1);
    // Someone else pushes to main from another clone.
    let other = f.other_clone();
    let in_other = |args: &[&str]| f.git_in(&other, args);
    std::fs::write(other.join("theirs.txt"), "their work\n").expect("write");
    in_other(&["add", "theirs.txt"]);
    in_other(&["commit", "-q", "-m", "Their work"]);
    in_other(&["push", "-q", "origin", "main"]);
    let theirs = in_other(&["rev-parse", "HEAD"]).trim().to_string();

    // The push finds the target moved: the promotion builds its merge again on their
    // commit and pushes that, in the same run.
    let out = f.promote();
    assert_eq!(
        out.code, 0,
        "the lost race is merged again onto the new target: {}",
        out.stderr
    );
    assert_eq!(
        f.repo
            .git_out(&["merge-base", "--is-ancestor", &theirs, &f.target()])
            .code,
        0,
        "their commit is preserved"
    );
    f.assert_converged();
}

#[test]
fn an_unreachable_remote_is_transient_and_a_missing_one_is_config() {
    let f = Fixture::new(Config {
        remote: true,
        ..Config::default()
    });
    let remote = f.remote.clone().expect("remote");
    let away = remote.with_extension("away");
    std::fs::rename(&remote, &away).expect("move the remote away");
    let out = f.promote();
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr.contains("cannot reach the remote origin"),
        "{}",
        out.stderr
    );
    std::fs::rename(&away, &remote).expect("bring it back");
    let out = f.promote();
    assert_eq!(out.code, 0, "{}", out.stderr);
    f.assert_converged();

    let g = Fixture::new(Config {
        remote: true,
        ..Config::default()
    });
    g.repo.git(&["remote", "remove", "origin"]);
    let out = g.promote();
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.contains("no such remote"), "{}", out.stderr);
}

#[test]
fn uncommitted_changes_in_the_users_checkout_survive() {
    for remote in [false, true] {
        let f = Fixture::new(Config {
            remote,
            ..Config::default()
        });
        f.repo.write("README", "my uncommitted edit\n");
        f.repo.write("scratch.txt", b"\x00untracked bytes\xff");
        let main_before = f.repo.git(&["rev-parse", "main"]);
        let out = f.promote();
        assert_eq!(
            std::fs::read(f.repo.path("README")).expect("read"),
            b"my uncommitted edit\n"
        );
        assert_eq!(
            std::fs::read(f.repo.path("scratch.txt")).expect("read"),
            b"\x00untracked bytes\xff"
        );
        assert_eq!(
            f.repo.git(&["rev-parse", "main"]),
            main_before,
            "the checked-out main was left as it is"
        );
        if remote {
            assert_eq!(out.code, 0, "{}", out.stderr);
            assert!(out.stderr.contains("left as it is"), "{}", out.stderr);
            let remote_main = f.target();
            assert_ne!(remote_main, main_before.trim(), "the remote got the merge");
        } else {
            assert_eq!(out.code, 4, "{}", out.stderr);
            assert!(out.stderr.contains("uncommitted changes"), "{}", out.stderr);
            // Once the person commits their edit, the promotion goes through.
            f.repo.git(&["commit", "-q", "-am", "My edit"]);
            let out = f.promote();
            assert_eq!(out.code, 0, "{}", out.stderr);
            assert_eq!(
                std::fs::read(f.repo.path("scratch.txt")).expect("read"),
                b"\x00untracked bytes\xff"
            );
            assert_eq!(
                f.repo.git(&["show", "main:feature.txt"]),
                "the feature, second line\nmore\n"
            );
            assert_eq!(
                std::fs::read_to_string(f.repo.path("feature.txt")).expect("checkout updated"),
                "the feature, second line\nmore\n"
            );
        }
    }
}

/// main changes the task's file differently.
fn main_conflicts(f: &Fixture) {
    f.repo.write("feature.txt", "main's own version\n");
    f.repo.git(&["add", "feature.txt"]);
    f.repo.git(&["commit", "-q", "-m", "Main's feature"]);
}

/// The promotion stops on the conflict (exit 5), naming the file.
fn assert_promotion_conflicts(f: &Fixture) {
    let out = f.promote();
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(
        out.stderr.contains("conflicts in: feature.txt"),
        "{}",
        out.stderr
    );
}

/// A promotion whose target push was to carry the source pushes the task branch on its own
/// once the merge conflicts, before it blocks: a person (or the fix, from another clone) can
/// see it on the remote.
#[test]
fn a_conflict_in_a_one_push_promotion_pushes_the_branch_before_blocking() {
    let f = Fixture::new(Config {
        remote: true,
        verify: "[]",
        ..Config::default()
    });
    let repo = &f.repo;
    main_conflicts(&f);
    repo.git(&["push", "-q", "origin", "main"]);
    assert_promotion_conflicts(&f);
    let remote = f.remote.as_ref().expect("remote");
    let branch = format!("refs/heads/loop/{}", f.short());
    let on_remote = repo.git(&["--git-dir", &remote.to_string_lossy(), "rev-parse", &branch]);
    assert_eq!(on_remote, repo.git(&["rev-parse", &branch]));
}

#[test]
fn a_conflict_files_a_fix_task_and_its_completion_rearms_the_original() {
    let f = Fixture::new(Config::default());
    let repo = &f.repo;
    main_conflicts(&f);
    assert_promotion_conflicts(&f);

    let tasks = repo.run(&["task", "list", "--json"]).json();
    let fix = tasks
        .as_array()
        .expect("array")
        .iter()
        .find(|t| t["title"] == format!("resolve conflict: merge {} into main", f.short()).as_str())
        .expect("a conflict-fix task was filed")
        .clone();
    let fix_id = fix["id"].as_str().expect("id").to_string();
    assert_eq!(fix["discovered_from"], f.id.as_str());
    let body = repo.run(&["task", "show", &fix_id, "--json"]).json()["body"]
        .as_str()
        .expect("body")
        .to_string();
    assert!(body.contains("- feature.txt"), "{body}");
    let original = repo.run(&["task", "show", &f.id, "--json"]).json();
    assert_eq!(original["state"], "blocked");
    assert_eq!(original["reason"], "conflict");
    assert_eq!(original["after"][0], fix_id.as_str());
    // Promoting again while the fix is pending refuses and files nothing new.
    assert_eq!(f.promote().code, 5);
    assert_eq!(
        repo.run(&["task", "list", "--json"])
            .json()
            .as_array()
            .expect("array")
            .len(),
        2
    );

    // The fix: a branch from main that merges the task's branch and resolves the conflict.
    let fix_branch = format!("loop/{}", &fix_id[..7]);
    repo.git(&["checkout", "-q", "-b", &fix_branch, "main"]);
    let merge = repo.git_out(&["merge", "-q", "--no-edit", &format!("loop/{}", f.short())]);
    assert_ne!(merge.code, 0, "the merge conflicts");
    repo.write("feature.txt", "the feature, second line\nmore\n");
    repo.git(&["add", "feature.txt"]);
    repo.git(&["commit", "-q", "--no-edit"]);
    repo.git(&["checkout", "-q", "main"]);
    let out = repo.run(&["promote", &fix_id[..7]]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("its promotion resumes"),
        "{}",
        out.stderr
    );
    assert_eq!(
        repo.run(&["task", "show", &f.id, "--json"]).json()["state"],
        "promoting"
    );

    let out = f.promote();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        repo.run(&["task", "show", &f.id, "--json"]).json()["state"],
        "done"
    );
}

#[test]
fn a_verify_failure_files_an_activation_gap_task_and_its_completion_finishes_the_promotion() {
    let f = Fixture::new(Config {
        verify: "[[\"sh\", \"-c\", \"test -f ACTIVATED\"]]",
        ..Config::default()
    });
    let repo = &f.repo;
    let out = f.promote();
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(out.stderr.contains("verify failed"), "{}", out.stderr);
    assert!(
        repo.git(&["show", "main:feature.txt"])
            .contains("the feature"),
        "merged"
    );
    let original = repo.run(&["task", "show", &f.id, "--json"]).json();
    assert_eq!(original["state"], "blocked");
    assert_eq!(original["reason"], "verify_failed");
    let gap_id = original["after"][0]
        .as_str()
        .expect("waits for the gap task")
        .to_string();
    let gap = repo.run(&["task", "show", &gap_id, "--json"]).json();
    assert!(
        gap["title"]
            .as_str()
            .expect("title")
            .starts_with("activation gap"),
        "{gap}"
    );
    assert_eq!(gap["discovered_from"], f.id.as_str());
    assert!(
        gap["body"]
            .as_str()
            .expect("body")
            .contains("test -f ACTIVATED")
    );

    repo.git(&[
        "checkout",
        "-q",
        "-b",
        &format!("loop/{}", &gap_id[..7]),
        "main",
    ]);
    repo.write("ACTIVATED", "yes\n");
    repo.git(&["add", "ACTIVATED"]);
    repo.git(&["commit", "-q", "-m", "Activate"]);
    repo.git(&["checkout", "-q", "main"]);
    let out = repo.run(&["promote", &gap_id[..7]]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        repo.run(&["task", "show", &f.id, "--json"]).json()["state"],
        "promoting"
    );
    let out = f.promote();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let show = repo.run(&["task", "show", &f.id, "--json"]).json();
    assert_eq!(show["state"], "done");
    let merges = repo
        .git(&[
            "log",
            "--format=%(trailers:key=Loop-Task,valueonly)",
            "main",
        ])
        .lines()
        .filter(|l| l.contains(f.id.as_str()))
        .count();
    assert_eq!(merges, 1, "verify retried without merging again");
}

#[test]
fn a_branch_that_edits_the_gate_is_refused_with_the_diff() {
    let f = Fixture::new(Config::default());
    let wt = f.repo.worktree_path(f.short());
    let policy = std::fs::read_to_string(wt.join("policy.toml")).expect("policy");
    std::fs::write(
        wt.join("policy.toml"),
        policy.replace("[gate]\ncommands = []", "[gate]\ncommands = [[\"true\"]]"),
    )
    .expect("write");
    f.repo.git(&[
        "-C",
        &wt.to_string_lossy(),
        "commit",
        "-q",
        "-am",
        "Loosen the gate",
    ]);
    let main_before = f.target();
    let out = f.promote();
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(
        out.stderr.contains("protected sections of policy.toml"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("-commands = []"), "{}", out.stderr);
    assert!(
        out.stderr.contains("+commands = [[\"true\"]]"),
        "{}",
        out.stderr
    );
    assert_eq!(f.target(), main_before);
    assert!(
        f.repo.refs("refs/loop/promote/").is_empty(),
        "no promotion was started"
    );
}

#[test]
fn by_hand_the_gates_run_on_the_branch_head_and_approve_it() {
    let f = Fixture::new(Config {
        gate: "[[\"sh\", \"-c\", \"grep -q second feature.txt\"]]",
        ..Config::default()
    });
    let out = f.promote();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let show = f.repo.run(&["task", "show", &f.id, "--json"]).json();
    assert!(show["approved"].is_string());
    f.assert_converged();

    let g = Fixture::new(Config {
        gate: "[[\"sh\", \"-c\", \"echo gate says no; exit 3\"]]",
        ..Config::default()
    });
    let out = g.promote();
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(
        out.stderr.contains("the gate failed") && out.stderr.contains("gate says no"),
        "{}",
        out.stderr
    );
    assert!(g.repo.run(&["task", "show", &g.id, "--json"]).json()["approved"].is_null());
    assert!(g.repo.refs("refs/loop/promote/").is_empty());
}

#[test]
fn a_branch_that_moved_after_judging_goes_back_to_the_judge() {
    let f = Fixture::new(Config::default());
    let first = f.repo.git(&["rev-parse", &format!("loop/{}~1", f.short())]);
    f.repo
        .poke(&f.id, "approved", &format!("\"{}\"", first.trim()));
    let main_before = f.target();
    let out = f.promote();
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(out.stderr.contains("moved after judging"), "{}", out.stderr);
    assert_eq!(
        f.repo.run(&["task", "show", &f.id, "--json"]).json()["state"],
        "awaiting_judge"
    );
    assert_eq!(f.target(), main_before);
}

#[test]
fn no_branch_or_no_new_commits_is_exit_5_and_done_or_cancelled_refuse() {
    let f = Fixture::new(Config::default());
    let other = f.repo.add("No branch yet", &[]);
    let out = f.repo.run(&["promote", &other[..7]]);
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(out.stderr.contains("has no branch"), "{}", out.stderr);
    f.repo
        .git(&["branch", &format!("loop/{}", &other[..7]), "main"]);
    let out = f.repo.run(&["promote", &other[..7]]);
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(
        out.stderr.contains("no commits beyond main"),
        "{}",
        out.stderr
    );
    f.repo.ok(&["task", "cancel", &other[..7]]);
    assert_eq!(f.repo.run(&["promote", &other[..7]]).code, 5);
    assert!(ids_of(&f.repo.run(&["ready", "--json"]).json()).contains(&f.id));
    let _ = GOOD_BODY;
}

#[test]
fn dry_run_changes_nothing() {
    let f = Fixture::new(Config {
        remote: true,
        diverge: true,
        ..Config::default()
    });
    let before = f.repo.git(&["for-each-ref"]);
    let out = f.repo.run(&["promote", f.short(), "--dry-run"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("merge onto origin/main"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("clean"), "{}", out.stdout);
    let after = f.repo.git(&["for-each-ref"]);
    // Only the remote-tracking ref may have been refreshed by the fetch.
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.contains("refs/remotes/"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(strip(&before), strip(&after));
}

#[test]
fn the_repositorys_pre_push_hook_runs_and_can_recognise_a_promotion() {
    let f = Fixture::new(Config {
        remote: true,
        ..Config::default()
    });
    let log = f.repo.root.parent().expect("tmp").join("pre-push.log");
    f.repo.write(
        ".git/hooks/pre-push",
        format!(
            "#!/bin/sh\nwhile read local_ref local_sha remote_ref remote_sha; do\n  echo \"$GIT_LOOP_PROMOTE $remote_ref\" >> '{}'\ndone\n",
            log.display()
        ),
    );
    std::process::Command::new("chmod")
        .args(["+x", &f.repo.path(".git/hooks/pre-push").to_string_lossy()])
        .status()
        .expect("chmod");
    let out = f.promote();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let seen = std::fs::read_to_string(&log).expect("the hook ran");
    assert!(
        seen.contains(&format!("{} refs/heads/main", f.id)),
        "{seen}"
    );
    assert!(
        seen.contains(&format!("{} refs/heads/loop/{}", f.id, f.short())),
        "{seen}"
    );
}

#[test]
fn a_server_side_rejection_is_policy_terminal() {
    let f = Fixture::new(Config {
        remote: true,
        ..Config::default()
    });
    let remote = f.remote.as_ref().expect("remote");
    let hook = remote.join("hooks/pre-receive");
    // A protected branch: the loop's own refs (shared through this remote) stay writable.
    std::fs::write(
        &hook,
        "#!/bin/sh\nwhile read old new ref; do\n  if [ \"$ref\" = refs/heads/main ]; then\n    \
         echo 'main is protected' >&2; exit 1\n  fi\ndone\n",
    )
    .expect("hook");
    std::process::Command::new("chmod")
        .args(["+x", &hook.to_string_lossy()])
        .status()
        .expect("chmod");
    let before = f.target();
    let out = f.promote();
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(out.stderr.contains("rejected the push"), "{}", out.stderr);
    assert_eq!(f.target(), before);
    std::fs::remove_file(&hook).expect("lift the protection");
    let out = f.promote();
    assert_eq!(out.code, 0, "{}", out.stderr);
    f.assert_converged();
}

#[test]
fn refused_credentials_are_a_config_error() {
    // A remote that answers every request with 401, on a port of this machine.
    let server = std::process::Command::new("python3")
        .args([
            "-c",
            "import http.server,sys\n\
             class H(http.server.BaseHTTPRequestHandler):\n\
             \x20   def do_GET(self):\n\
             \x20       self.send_response(401); self.send_header('WWW-Authenticate','Basic realm=x'); self.end_headers()\n\
             \x20   do_POST = do_GET\n\
             \x20   def log_message(self, *a): pass\n\
             s = http.server.HTTPServer(('127.0.0.1', 0), H)\n\
             print(s.server_address[1], flush=True)\n\
             s.serve_forever()\n",
        ])
        .stdout(Stdio::piped())
        .spawn();
    let Ok(mut server) = server else {
        eprintln!("python3 is not installed: skipped");
        return;
    };
    let mut port = String::new();
    {
        use std::io::BufRead;
        let stdout = server.stdout.as_mut().expect("stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut port)
            .expect("port");
    }
    let f = Fixture::new(Config::default());
    f.repo.write(
        "policy.toml",
        crate::promote_fixture::policy_text(&Config {
            remote: true,
            ..Config::default()
        }),
    );
    f.repo.git(&["commit", "-q", "-am", "use a remote"]);
    f.repo.git(&[
        "remote",
        "add",
        "origin",
        &format!("http://127.0.0.1:{}/repo.git", port.trim()),
    ]);
    let out = f.promote_env("GIT_TERMINAL_PROMPT", "0");
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("refused the credentials"),
        "{}",
        out.stderr
    );
}

/// The target push carries the source and deletes the remote task branch, in one atomic push,
/// when nothing (no verify command) stands between them: the branch is never pushed on its
/// own. If someone pushed that branch to the remote meanwhile, with more commits, the target
/// is still pushed and their branch is kept.
#[test]
fn a_remote_task_branch_moved_by_someone_is_kept_while_the_target_is_pushed() {
    let f = Fixture::new(Config {
        remote: true,
        diverge: true,
        verify: "[]",
        ..Config::default()
    });
    let killed = f.promote_env("GIT_LOOP_CRASH_AT", "push_target:before");
    assert_eq!(killed.code, -1);
    let remote = f.remote.as_ref().expect("remote");
    let branch = format!("refs/heads/loop/{}", f.short());
    let on_remote = |r: &str| {
        f.repo
            .git_out(&["--git-dir", &remote.to_string_lossy(), "rev-parse", r])
    };
    assert_ne!(
        on_remote(&branch).code,
        0,
        "the branch was pushed on its own"
    );
    let pushed = f.repo.git(&["rev-parse", &branch]);
    // Someone pushes the task branch with a commit of theirs on top.
    f.repo.git(&["push", "-q", "origin", &branch]);
    let other = f.other_clone();
    let in_other = |args: &[&str]| f.git_in(&other, args);
    in_other(&["checkout", "-q", &format!("loop/{}", f.short())]);
    std::fs::write(other.join("more.txt"), "more\n").expect("write");
    in_other(&["add", "more.txt"]);
    in_other(&["commit", "-q", "-m", "More work"]);
    in_other(&["push", "-q", "origin", "HEAD"]);
    let theirs = in_other(&["rev-parse", "HEAD"]).trim().to_string();
    assert_ne!(theirs, pushed.trim());

    let out = f.promote();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let on_remote = f
        .repo
        .git(&["--git-dir", &remote.to_string_lossy(), "rev-parse", &branch]);
    assert_eq!(on_remote.trim(), theirs, "their branch is kept");
    assert_eq!(
        f.repo
            .git_out(&["merge-base", "--is-ancestor", pushed.trim(), &f.target()])
            .code,
        0,
        "the approved work is in the remote's target"
    );
}

/// Without the race, the one atomic push leaves the remote with the new target and without
/// the task branch.
#[test]
fn the_target_push_deletes_the_remote_task_branch_with_it() {
    let f = Fixture::new(Config {
        remote: true,
        diverge: true,
        verify: "[]",
        ..Config::default()
    });
    let out = f.promote();
    assert_eq!(out.code, 0, "{}", out.stderr);
    let remote = f.remote.as_ref().expect("remote");
    let branches = f.repo.git(&[
        "--git-dir",
        &remote.to_string_lossy(),
        "for-each-ref",
        "--format=%(refname)",
        "refs/heads/",
    ]);
    assert_eq!(branches.trim(), "refs/heads/main", "{branches}");
    let log = f
        .repo
        .git(&["log", "--format=%s", &format!("refs/loop/promote/{}", f.id)]);
    assert!(log.contains("and deleted origin/loop/"), "{log}");
    assert!(log.contains("with the target push"), "{log}");
    assert!(log.contains("carried by push_target"), "{log}");
    f.assert_converged();
}

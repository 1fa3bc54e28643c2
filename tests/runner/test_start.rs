//! `git loop start` and `git loop oracle`: real runners, real agent processes (small scripts),
//! tiny durations; assertions on refs, run records and processes.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{Out, TestRepo, write_executable};

pub(crate) struct Loop {
    pub(crate) repo: TestRepo,
    pub(crate) remote: Option<PathBuf>,
}

const PROMPT: &str = "Task {id}: {title}\nattempt {attempt}\ncontext: {context}\nSay {token}.\n";

/// A repository whose agent is `agent` (a shell script body), with `extra` policy lines.
/// Tests talk to their agents through files in temporary directories: `agent.writable` shares
/// the host's /tmp with sandboxed runs (which otherwise get their own).
pub(crate) fn setup(agent: &str, extra: &str, remote: bool) -> Loop {
    setup_with_files(agent, extra, remote, &[])
}

/// Like [`setup`], with `files` (path, contents; `.sh` files executable) committed too.
pub(crate) fn setup_with_files(
    agent: &str,
    extra: &str,
    remote: bool,
    files: &[(&str, &str)],
) -> Loop {
    let repo = TestRepo::new();
    for (path, text) in files {
        repo.write(path, text);
        if path.ends_with(".sh") {
            write_executable(&repo.path(path), text);
        }
    }
    let script = repo.path("agent.sh");
    write_executable(&script, &format!("#!/bin/sh\n{agent}\n"));
    let policy = format!(
        "[loop]\ntarget = \"main\"\nworkers = 2\n{remote}\n\
         [agent]\ncommand = [\"{script}\", \"{{attempt}}\", \"{{prompt_file}}\"]\n\
         writable = [\"/tmp\"]\n\
         stall_timeout = \"5s\"\ntimeout = \"60s\"\nexit_grace = \"1s\"\nquota_cooldown = \"200ms\"\n\
         [triage]\nmin_body_chars = 0\nrequire_acceptance = false\n\
         [retry]\ninitial = \"100ms\"\nmax = \"400ms\"\nmax_attempts = 5\ncooloff = \"1s\"\n\
         [lease]\nttl = \"60s\"\nheartbeat = \"1s\"\n\
         [runtime]\nmanifest = [\"policy.toml\", \"loop/PROMPT.md\", \"agent.sh\"]\n{extra}",
        remote = if remote { "remote = \"origin\"" } else { "" },
        script = script.display(),
    );
    let policy = merge_sections(&policy);
    repo.write("policy.toml", policy);
    repo.write("loop/PROMPT.md", PROMPT);
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "set up git-loop"]);
    let remote = remote.then(|| repo.add_bare_remote());
    // A person pins the finish line as committed.
    repo.ok(&["init", "--repin"]);
    // Work happens elsewhere: the person's checkout is on another branch.
    repo.git(&["checkout", "-q", "-b", "person"]);
    Loop { repo, remote }
}

/// Later `[section]` blocks with the same name as an earlier one are folded into it, so that
/// `extra` can override defaults (`[retry]\nmax_attempts = 2`).
fn merge_sections(text: &str) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut sections: std::collections::HashMap<String, Vec<(String, String)>> = Default::default();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            current = line.to_string();
            if !order.contains(&current) {
                order.push(current.clone());
            }
            continue;
        }
        let key = line
            .split('=')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let entries = sections.entry(current.clone()).or_default();
        entries.retain(|(k, _)| *k != key);
        entries.push((key, line.to_string()));
    }
    let mut out = String::new();
    for s in order {
        out.push_str(&s);
        out.push('\n');
        for (_, line) in sections.get(&s).into_iter().flatten() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

impl Loop {
    pub(crate) fn add(&self, title: &str) -> String {
        self.repo
            .ok(&["task", "add", title, "--body", "work"])
            .trim()
            .to_string()
    }

    /// Adds a task that runs only after task `after` is done.
    pub(crate) fn add_after(&self, title: &str, after: &str) -> String {
        self.repo
            .ok(&["task", "add", title, "--body", "work", "--after", after])
            .trim()
            .to_string()
    }

    pub(crate) fn start(&self, extra: &[&str]) -> Out {
        let mut args = vec!["start", "--once"];
        args.extend_from_slice(extra);
        self.repo.run(&args)
    }

    pub(crate) fn show(&self, id: &str) -> serde_json::Value {
        self.repo.run(&["task", "show", id, "--json"]).json()
    }

    pub(crate) fn history(&self, id: &str) -> Vec<String> {
        self.show(id)["history"]
            .as_array()
            .expect("history")
            .iter()
            .map(|h| h["subject"].as_str().expect("subject").to_string())
            .collect()
    }

    /// The run records of a task, oldest first (judge records included).
    pub(crate) fn runs(&self, id: &str) -> Vec<serde_json::Value> {
        let mut runs: Vec<serde_json::Value> =
            self.show(id)["runs"].as_array().expect("runs").clone();
        runs.sort_by_key(|r| r["file"].as_str().unwrap_or_default().to_string());
        runs
    }

    pub(crate) fn agent_runs(&self, id: &str) -> Vec<serde_json::Value> {
        self.runs(id)
            .into_iter()
            .filter(|r| !r["run"].as_str().unwrap_or_default().ends_with("-judge"))
            .collect()
    }
}

/// Commit a file for the task, then claim completion, decorated.
/// Policy lines for a test of what happens without the OS sandbox (`agent.sandbox = "none"`):
/// an agent's processes outliving its runner, pids that mean the same inside and out, an agent
/// that plays a person and moves what a sandboxed one could not. `test_sandbox` has the
/// sandboxed side of each.
pub(crate) const UNSANDBOXED: &str = "[agent]\nsandbox = \"none\"\n";

pub(crate) const COMMIT_AND_DONE: &str = "\
echo \"$GIT_LOOP_TASK\" > \"work-$GIT_LOOP_TASK.txt\"
git add \"work-$GIT_LOOP_TASK.txt\" && git commit -q -m \"work for $GIT_LOOP_TASK\"
echo '**LOOP_DONE**'";

#[test]
fn four_workers_finish_200_tasks_once_each_and_leave_no_worktree() {
    let l = setup(COMMIT_AND_DONE, "[loop]\nworkers = 4\n", false);
    let ids: Vec<String> = (0..200).map(|i| l.add(&format!("task {i}"))).collect();
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("the oracle says the batch is finished"),
        "{}",
        out.stdout
    );
    let list = l.repo.run(&["task", "list", "--json"]).json();
    assert!(
        list.as_array()
            .expect("array")
            .iter()
            .all(|t| t["state"] == "done"),
        "{list}"
    );
    for id in &ids {
        let history = l.history(id);
        let leased = history
            .iter()
            .filter(|h| h.contains("-> running: leased by"))
            .count();
        assert_eq!(
            leased,
            1,
            "{id} was dispatched {leased} times: {history:?} {:?}",
            l.agent_runs(id)
        );
        assert_eq!(l.agent_runs(id).len(), 1, "one agent run for {id}");
    }
    let worktrees = l.repo.git(&["worktree", "list"]);
    assert_eq!(
        worktrees.lines().count(),
        1,
        "no worktree left: {worktrees}"
    );
    let leases = l.repo.refs("refs/loop/leases/");
    let left: Vec<String> = leases
        .iter()
        .map(|r| {
            let name = r.split(' ').next().unwrap_or_default();
            let id = name.rsplit('/').next().unwrap_or_default().to_string();
            format!(
                "{}\n{:?}\n{}",
                l.repo.show(name, "lease.toml"),
                l.history(&id),
                out.stderr
                    .lines()
                    .filter(|x| x.starts_with(&id[..7]))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })
        .collect();
    assert!(
        leases.is_empty(),
        "no lease left:\n{}",
        left.join("\n---\n")
    );
    assert_eq!(l.repo.run(&["oracle"]).code, 0);
    let files = l.repo.git(&["ls-tree", "--name-only", "main"]);
    assert_eq!(
        files.lines().filter(|f| f.starts_with("work-")).count(),
        200
    );
}

/// git's automatic maintenance after an agent's commit would run `git pack-refs --auto`, which
/// brings back refs deleted while it runs (git 2.47): agents' git commands run with it off.
#[test]
fn agents_run_with_git_automatic_maintenance_off() {
    let l = setup(
        "git config --get maintenance.auto > seen.txt
git config --get gc.auto >> seen.txt
git add seen.txt && git commit -q -m seen
echo LOOP_DONE",
        "",
        false,
    );
    l.add("look at the configuration");
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(l.repo.git(&["show", "main:seen.txt"]), "false\n0\n");
}

/// A task worktree whose directory was deleted by hand is still registered with git (and
/// holds the branch): the next attempt prunes the stale registration, checks the branch out
/// again and finishes the task.
#[test]
fn a_task_worktree_deleted_by_hand_is_made_again() {
    let agent = format!(
        "if [ \"$1\" = 1 ]; then here=$(pwd); cd /; rm -rf \"$here\"; echo 'gone'; exit 1; fi\n\
         {COMMIT_AND_DONE}"
    );
    // Unsandboxed: in a sandbox the worktree is a mount point, which `rm -rf` empties but
    // cannot remove.
    let l = setup(&agent, UNSANDBOXED, false);
    let id = l.add("redo me");
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(l.show(&id)["state"], "done");
    assert_eq!(l.agent_runs(&id).len(), 2, "two attempts");
    assert_eq!(
        l.repo.show("main", &format!("work-{id}.txt")),
        format!("{id}\n")
    );
}

/// The task's worktree is a complete checkout of its branch: every tracked file (executable
/// bits kept), an index that matches them, HEAD on `loop/<short>`.
#[test]
fn a_task_worktree_is_a_complete_checkout_on_its_branch() {
    let l = setup(
        "status=$(git status --porcelain)
{ echo \"status:$status\"
git symbolic-ref HEAD
test -x agent.sh && echo executable
head -n 1 loop/PROMPT.md
git rev-parse --show-toplevel
} > seen.txt 2>&1
git add seen.txt && git commit -q -m seen
echo LOOP_DONE",
        "",
        false,
    );
    let id = l.add("look around");
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let seen = l.repo.git(&["show", "main:seen.txt"]);
    let lines: Vec<&str> = seen.lines().collect();
    let short = &id[..7];
    assert_eq!(lines.len(), 5, "{seen}");
    assert_eq!(
        lines[..4],
        [
            "status:",
            format!("refs/heads/loop/{short}").as_str(),
            "executable",
            "Task {id}: {title}",
        ],
        "{seen}"
    );
    assert!(
        lines[4].ends_with(&format!(".git/loop/worktrees/{short}")),
        "{seen}"
    );
}

/// A repository's `post-checkout` hook runs when a task's worktree is made, as with
/// `git worktree add`.
#[test]
fn a_post_checkout_hook_runs_in_each_new_task_worktree() {
    // The agent says whether its worktree is still marked locked, as git marks one it is
    // adding.
    let marks = tempfile::tempdir().expect("a directory for marks");
    let agent = format!(
        "if [ -e \"$(git rev-parse --git-dir)/locked\" ]; then m=locked; else m=unlocked; fi
echo $m > {dir}/$GIT_LOOP_TASK
{COMMIT_AND_DONE}",
        dir = marks.path().display()
    );
    let l = setup(&agent, "", false);
    let log = l.repo.root.join("post-checkout.log");
    std::fs::create_dir_all(l.repo.root.join(".git/hooks")).expect("hooks dir");
    write_executable(
        &l.repo.root.join(".git/hooks/post-checkout"),
        &format!(
            "#!/bin/sh
echo \"$(pwd) $3\" >> '{}'\n",
            log.display()
        ),
    );
    let a = l.add("first");
    let b = l.add("second");
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = std::fs::read_to_string(&log).expect("the hook ran");
    for id in [&a, &b] {
        let line = format!("{} 1", l.repo.worktree_path(&id[..7]).display());
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        let mark = std::fs::read_to_string(marks.path().join(id.as_str())).expect("the agent ran");
        assert_eq!(mark.trim(), "unlocked", "task {id}");
    }
}

/// A task worktree whose add was cut short (the runner killed mid-checkout: marked
/// `locked` "initializing", part of its files, no index) is never handed to the agent: it is
/// cleared and made again, and the task's commit changes only what the agent changed.
#[test]
fn a_task_worktree_whose_add_was_cut_short_is_made_again() {
    let l = setup(COMMIT_AND_DONE, "", false);
    let id = l.add("finish me");
    l.repo.half_made_task_worktree(&id);
    let before = l.repo.git(&["ls-tree", "-r", "--name-only", "main"]);
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(l.show(&id)["state"], "done");
    let after = l.repo.git(&["ls-tree", "-r", "--name-only", "main"]);
    let mut expected: Vec<&str> = before.lines().collect();
    let work = format!("work-{id}.txt");
    expected.push(&work);
    expected.sort();
    assert_eq!(after.lines().collect::<Vec<_>>(), expected);
    assert_eq!(
        l.repo.worktree_list(),
        vec![l.repo.root.display().to_string()]
    );
}

/// A lease in the runner's name that no worker holds — its release failed, or another git's
/// `pack-refs --auto` brought it back after the release deleted it — is deleted, not renewed
/// for ever.
#[test]
fn a_lease_brought_back_after_its_release_is_deleted_by_the_runner() {
    let signals = tempfile::tempdir().expect("a directory for signals");
    let agent = format!(
        "if [ -e {dir}/wait-$GIT_LOOP_TASK ]; then
  i=0; while [ ! -e {dir}/restored ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
fi
{COMMIT_AND_DONE}",
        dir = signals.path().display()
    );
    let l = setup(&agent, "", false);
    let first = l.add("first");
    let second = l.add_after("second", &first);
    std::fs::write(signals.path().join(format!("wait-{second}")), "").expect("signal");
    let runner = l
        .repo
        .cmd(&["start", "--once"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runner");
    let lease_of = |id: &str| {
        l.repo
            .refs(&format!("refs/loop/leases/{id}"))
            .first()
            .and_then(|r| r.split(' ').nth(1).map(str::to_string))
    };
    let until = Instant::now() + Duration::from_secs(30);
    let mut first_lease = None;
    while Instant::now() < until {
        first_lease = first_lease.or_else(|| lease_of(&first));
        if first_lease.is_some() && lease_of(&second).is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let first_lease = first_lease.expect("the first task's lease was seen");
    assert!(lease_of(&second).is_some(), "the second task runs");
    assert_eq!(l.show(&first)["state"], "done");
    // What a racing `git pack-refs --auto` does: the released lease is back, as it was.
    l.repo.git(&[
        "update-ref",
        &format!("refs/loop/leases/{first}"),
        &first_lease,
        "",
    ]);
    std::fs::write(signals.path().join("restored"), "").expect("signal");
    let out = runner.wait_with_output().expect("runner ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(l.show(&second)["state"], "done");
    let leases = l.repo.refs("refs/loop/leases/");
    assert!(leases.is_empty(), "no lease left: {leases:?}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "deleted a left-over lease of task {}",
            &first[..7]
        )),
        "{stderr}"
    );
}

/// A runner promoting one task after another builds on the target it pushed a moment ago
/// without fetching again; a person's push to the remote in between must neither be lost nor
/// block the loop: the target push's lease refuses, the runner fetches, and the next try
/// merges onto the person's commit.
#[test]
fn a_push_by_someone_else_between_two_promotions_is_kept() {
    let scratch = tempfile::tempdir().expect("scratch");
    let other = scratch.path().join("other");
    let agent = format!(
        "if [ -e {dir}/push-$GIT_LOOP_TASK ]; then
  git -C {other} pull -q --ff-only origin main
  echo person > {other}/person.txt
  git -C {other} add person.txt && git -C {other} commit -q -m 'a person pushes'
  git -C {other} push -q origin HEAD:main
fi
{COMMIT_AND_DONE}",
        dir = scratch.path().display(),
        other = other.display()
    );
    // The agent plays the person (a sandboxed one cannot push to a local remote).
    let l = setup(&agent, UNSANDBOXED, true);
    let remote = l.remote.as_ref().expect("remote");
    l.repo.git(&[
        "clone",
        "-q",
        &remote.to_string_lossy(),
        &other.to_string_lossy(),
    ]);
    let first = l.add("first");
    let second = l.add_after("second", &first);
    std::fs::write(scratch.path().join(format!("push-{second}")), "").expect("signal");
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for id in [&first, &second] {
        assert_eq!(l.show(id)["state"], "done", "{:?}", l.history(id));
    }
    let shown = remote.to_string_lossy();
    let files = l
        .repo
        .git(&["--git-dir", &shown, "ls-tree", "--name-only", "main"]);
    for file in [
        "person.txt".to_string(),
        format!("work-{first}.txt"),
        format!("work-{second}.txt"),
    ] {
        assert!(files.lines().any(|f| f == file), "{file} in {files}");
    }
    assert_eq!(l.repo.run(&["oracle"]).code, 0);
}

/// `git pack-refs` (git-loop's own after promotions, or a person's) packs refs while the runner
/// deletes leases: a deleted lease must not come back from `packed-refs`.
#[test]
fn leases_stay_deleted_while_git_packs_refs() {
    let l = setup(COMMIT_AND_DONE, "[loop]\nworkers = 4\n", false);
    for i in 0..40 {
        l.add(&format!("task {i}"));
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    let (out, packs) = std::thread::scope(|s| {
        let packer = s.spawn(|| {
            let mut packs = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if l.repo.git_out(&["pack-refs", "--all", "--prune"]).code == 0 {
                    packs += 1;
                }
                // Far more often than any `gc --auto` would: packed-refs is replaced many times
                // within one tick of the file system's clock, and pruned ref directories vanish
                // under gix's feet. Not back to back: a lock held all the time is a broken
                // repository, and the breaker's.
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            packs
        });
        let out = l.start(&[]);
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (out, packer.join().expect("packer"))
    });
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(packs > 0, "refs were packed during the run");
    let list = l.repo.run(&["task", "list", "--json"]).json();
    assert!(
        list.as_array()
            .expect("array")
            .iter()
            .all(|t| t["state"] == "done"),
        "{list}"
    );
    let leases = l.repo.refs("refs/loop/leases/");
    assert!(leases.is_empty(), "leases came back: {leases:?}");
}

#[test]
fn a_second_runner_exits_6_naming_the_first() {
    let l = setup("sleep 30", "", false);
    let id = l.add("slow");
    let mut first = l
        .repo
        .cmd(&["start"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("first runner");
    let until = Instant::now() + Duration::from_secs(20);
    while l.repo.refs("refs/loop/leases/").is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = l.start(&[]);
    let pid = first.id();
    let lease = l.repo.refs("refs/loop/leases/");
    let mut group = None;
    wait_for("the agent's group", Duration::from_secs(20), || {
        group = lease_pgid(&l.repo, &id);
        group.is_some()
    });
    let _ = first.kill();
    let _ = first.wait();
    // The agent's own group is not the runner's: end it too, by the group the lease names.
    if let Some(group) = group {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{group}")])
            .status();
    }
    assert!(!lease.is_empty(), "the first runner took the task");
    assert_eq!(out.code, 6, "{}", out.stderr);
    assert!(out.stderr.contains(&format!("pid {pid}")), "{}", out.stderr);
    assert!(out.stderr.contains("phase"), "{}", out.stderr);
}

#[test]
fn a_silent_agent_is_stalled_its_group_killed_and_retried_with_jitter() {
    let pids = tempfile::tempdir().expect("tmp");
    let agent = format!(
        "sleep 600 &\necho $! >> '{}/grandchildren'\nsleep 600",
        pids.path().display()
    );
    let l = setup(
        &agent,
        // Unsandboxed: the grandchildren are checked by pid.
        "[agent]\nsandbox = \"none\"\nstall_timeout = \"1s\"\n[retry]\nmax_attempts = 2\ninitial = \"200ms\"\nmax = \"1s\"\ncooloff = \"500ms\"\nescalate_after = 0\n",
        false,
    );
    let id = l.add("silent");
    let out = l.start(&[]);
    // After two stalled attempts and the cool-off, the task goes to a person: the batch ends.
    assert_eq!(out.code, 0, "{}", out.stderr);
    let task = l.show(&id);
    assert_eq!(task["state"], "human_gated", "{task}");
    assert_eq!(task["reason"], "escalated");
    let runs = l.agent_runs(&id);
    assert_eq!(
        runs.len(),
        2,
        "attempts never exceed max_attempts: {runs:?}"
    );
    assert!(runs.iter().all(|r| r["outcome"] == "stalled"), "{runs:?}");
    // Full jitter: the first retry waited between 0 and the cap (initial × 2^0 = 200 ms).
    let backoff = runs[0]["backoff_ms"].as_i64().expect("backoff recorded");
    assert!((0..=200).contains(&backoff), "backoff {backoff} ms");
    for pid in std::fs::read_to_string(pids.path().join("grandchildren"))
        .expect("pids")
        .lines()
    {
        assert!(
            !running(pid.trim()),
            "the grandchild {pid} was killed with its group"
        );
    }
}

#[test]
fn an_agent_that_hangs_after_the_token_is_ended_and_judged() {
    let agent = format!("{COMMIT_AND_DONE}\nsleep 600");
    let l = setup(&agent, "", false);
    let id = l.add("hangs after done");
    let began = Instant::now();
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        began.elapsed() < Duration::from_secs(60),
        "ended after exit_grace, not after the sleep"
    );
    assert_eq!(l.show(&id)["state"], "done");
    let runs = l.agent_runs(&id);
    assert_eq!(runs[0]["outcome"], "completed");
}

#[test]
fn decorated_tokens_are_all_detected() {
    let agent = "\
echo x > \"w-$GIT_LOOP_TASK.txt\" && git add . && git commit -q -m w
case \"$(head -1 \"$2\")\" in
  *fence*) printf '```\\nLOOP_DONE\\n```\\n' ;;
  *colour*) printf '\\033[1;32mLOOP_DONE\\033[0m\\n' ;;
  *) echo '**LOOP_DONE**' ;;
esac";
    let l = setup(agent, "", false);
    let ids = [l.add("bold"), l.add("fence"), l.add("colour")];
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for id in &ids {
        assert_eq!(l.agent_runs(id)[0]["token_seen"], true, "{id}");
        assert_eq!(l.show(id)["state"], "done");
    }
}

#[test]
fn a_quota_hit_waits_and_is_not_an_attempt() {
    let marker = tempfile::tempdir().expect("tmp");
    let agent = format!(
        "if [ ! -e '{m}/hit' ]; then touch '{m}/hit'; echo 'Error: rate limit exceeded, try later'; exit 1; fi\n{COMMIT_AND_DONE}",
        m = marker.path().display()
    );
    let l = setup(&agent, "", false);
    let id = l.add("quota");
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let task = l.show(&id);
    assert_eq!(task["state"], "done");
    assert_eq!(task["attempts"], 1, "the quota run was not counted");
    let runs = l.agent_runs(&id);
    assert_eq!(runs[0]["outcome"], "quota", "{runs:?}");
    assert!(
        l.history(&id)
            .iter()
            .any(|h| h.starts_with("running -> quota_wait"))
    );
}

#[test]
fn the_same_failure_three_times_needs_rework_and_the_next_prompt_has_it() {
    let agent = format!(
        "if [ \"$1\" -lt 4 ]; then echo 'boom: the widget is broken'; exit 1; fi\n{COMMIT_AND_DONE}"
    );
    let l = setup(
        &agent,
        "[retry]\nsame_signature = 3\nmax_attempts = 10\ninitial = \"50ms\"\nmax = \"100ms\"\n",
        false,
    );
    let id = l.add("flaky");
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let history = l.history(&id);
    assert!(
        history
            .iter()
            .any(|h| h.starts_with("running -> needs_rework: the same failure 3 times")),
        "{history:?}"
    );
    let runs = l.agent_runs(&id);
    assert_eq!(runs.len(), 4);
    let common = l.repo.path(".git");
    let prompt = std::fs::read_to_string(git_loop_prompt(
        &common,
        &id,
        runs[3]["run"].as_str().expect("run"),
    ))
    .expect("the fourth prompt");
    assert!(prompt.contains("boom: the widget is broken"), "{prompt}");
    assert!(prompt.contains("attempt 4"), "{prompt}");
}

/// Whether process `pid` runs: a zombie (killed, not yet reaped by init) does not.
fn running(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                != Some("Z")
        }
        Err(_) if std::path::Path::new("/proc/self/stat").exists() => false,
        Err(_) => std::process::Command::new("kill")
            .args(["-0", pid])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
    }
}

fn git_loop_prompt(common: &std::path::Path, id: &str, run: &str) -> PathBuf {
    common
        .join("loop")
        .join("prompts")
        .join(format!("{id}-{run}.md"))
}

#[test]
fn a_gate_failure_then_a_passing_rework_is_done() {
    let agent = "\
if [ \"$1\" -ge 2 ]; then echo fixed > fixed.txt; git add fixed.txt; fi
echo w > \"w-$1.txt\" && git add . && git commit -q -m \"attempt $1\"
echo LOOP_DONE";
    let l = setup(
        agent,
        "[gate]\ncommands = [[\"sh\", \"-c\", \"test -f fixed.txt\"]]\n",
        false,
    );
    let id = l.add("needs a fix");
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let history = l.history(&id);
    assert!(
        history
            .iter()
            .any(|h| h.starts_with("awaiting_judge -> needs_rework: gate failed")),
        "{history:?}"
    );
    assert_eq!(l.show(&id)["state"], "done");
    assert_eq!(l.repo.git(&["show", "main:fixed.txt"]), "fixed\n");
}

#[test]
fn a_branch_that_edits_the_gate_is_refused_by_the_judge() {
    let agent = "\
if [ \"$1\" -eq 1 ]; then
  sed 's/^commands = .*test -f gate-ok.*$/commands = []/' policy.toml > p && mv p policy.toml
fi
if [ \"$1\" -ge 2 ]; then git checkout -q HEAD~1 -- policy.toml 2>/dev/null; echo ok > gate-ok; fi
echo w > \"w-$1.txt\" && git add -A && git commit -q -m \"attempt $1\"
echo LOOP_DONE";
    let l = setup(
        agent,
        "[gate]\ncommands = [[\"sh\", \"-c\", \"test -f gate-ok\"]]\n",
        false,
    );
    let id = l.add("tries to loosen the gate");
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let history = l.history(&id);
    assert!(
        history
            .iter()
            .any(|h| h.contains("changes the protected sections of policy.toml")),
        "{history:?}"
    );
    assert!(
        l.repo
            .git(&["show", "main:policy.toml"])
            .contains("test -f gate-ok"),
        "the target's gate is unchanged"
    );
}

#[test]
fn the_oracle_reads_git_not_the_runners_word() {
    let l = setup(COMMIT_AND_DONE, "", true);
    let id = l.add("remote work");
    let out = l.repo.run(&["oracle"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains(&id[..7]) && out.stdout.contains("ready"),
        "{}",
        out.stdout
    );
    assert_eq!(l.start(&[]).code, 0);
    let out = l.repo.run(&["oracle", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert_eq!(out.json()["finished"], true);
    // Someone resets the remote's main behind the promoted commit.
    let remote = l.remote.as_ref().expect("remote");
    let base = l.repo.git(&["rev-parse", "main~1"]).trim().to_string();
    l.repo.git(&[
        "--git-dir",
        &remote.to_string_lossy(),
        "update-ref",
        "refs/heads/main",
        &base,
    ]);
    let out = l.repo.run(&["oracle"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stdout.contains("is not in origin/main"),
        "{}",
        out.stdout
    );
    // A gated task counts as finished.
    let g = setup(COMMIT_AND_DONE, "", false);
    let gid = g.add("for a person");
    g.repo
        .ok(&["task", "gate", &gid, "--reason", "needs a decision"]);
    assert_eq!(g.repo.run(&["oracle"]).code, 0);
}

#[test]
fn a_runner_killed_mid_run_is_recovered_and_nothing_is_lost() {
    let agent = format!(
        "if [ \"$1\" -eq 1 ]; then echo partial > partial.txt; echo started; sleep 600; fi\n{COMMIT_AND_DONE}"
    );
    // Unsandboxed, the agent outlives its runner (test_sandbox has the sandboxed side).
    let l = setup(&agent, UNSANDBOXED, false);
    let id = l.add("interrupted");
    let mut first = l
        .repo
        .cmd(&["start"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("runner");
    // Wait until the agent runs (its process group is in the lease).
    let until = Instant::now() + Duration::from_secs(30);
    let mut pgid = None;
    while pgid.is_none() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
        pgid = lease_pgid(&l.repo, &id);
    }
    let pgid = pgid.expect("the agent started");
    first.kill().expect("SIGKILL the runner");
    first.wait().expect("reap");
    assert!(
        running_group(&pgid),
        "the orphaned agent is still running before recovery"
    );

    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains(": recovered: its holder"),
        "{}",
        out.stderr
    );
    assert!(
        !running_group(&pgid),
        "recovery ended the orphaned agent's group"
    );
    assert_eq!(l.show(&id)["state"], "done");
    let rescued = l
        .repo
        .show(&format!("refs/loop/rescue/{id}/1"), "partial.txt");
    assert_eq!(rescued, "partial\n", "the uncommitted work was saved");
    assert!(
        l.history(&id).iter().any(|h| h.contains("died")),
        "{:?}",
        l.history(&id)
    );
}

/// The process group recorded in the lease of task `id`, if it has a lease that records one.
pub(crate) fn lease_pgid(repo: &TestRepo, id: &str) -> Option<String> {
    repo.record(&format!("refs/loop/leases/{id}"), "lease.toml")?
        .lines()
        .find_map(|line| line.strip_prefix("pgid = "))
        .map(str::to_string)
}

/// Whether any process of group `pgid` runs (zombies do not count).
pub(crate) fn running_group(pgid: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return std::process::Command::new("kill")
            .args(["-0", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    };
    entries.flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        fields.first() != Some(&"Z") && fields.get(2) == Some(&pgid)
    })
}

#[test]
fn status_says_why_each_task_waits_and_what_re_arms_it() {
    let l = setup(COMMIT_AND_DONE, "[triage]\nmin_body_chars = 10\n", false);
    let first = l
        .repo
        .ok(&["task", "add", "first", "--body", "long enough body here"])
        .trim()
        .to_string();
    let second = l
        .repo
        .ok(&[
            "task",
            "add",
            "second",
            "--body",
            "long enough body here",
            "--after",
            &first,
        ])
        .trim()
        .to_string();
    let thin = l
        .repo
        .ok(&["task", "add", "thin", "--body", "x"])
        .trim()
        .to_string();
    let gated = l
        .repo
        .ok(&["task", "add", "gated", "--body", "long enough body here"])
        .trim()
        .to_string();
    l.repo
        .ok(&["task", "gate", &gated, "--reason", "needs a decision"]);
    let v = l.repo.run(&["status", "--json"]).json();
    assert!(v["runners"].as_array().expect("runners").is_empty());
    let next = |id: &str| {
        v["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .find(|t| t["id"] == id)
            .map(|t| t["next_action"].as_str().expect("next").to_string())
            .expect("listed")
    };
    assert_eq!(next(&first), "runs when a worker is free");
    assert_eq!(next(&second), format!("waits for {}", &first[..7]));
    assert!(
        next(&thin).contains("git loop task edit"),
        "{}",
        next(&thin)
    );
    assert!(
        next(&gated).contains("git loop task reopen"),
        "{}",
        next(&gated)
    );
    let table = l.repo.ok(&["status"]);
    assert!(table.contains("runner: none"), "{table}");
    assert!(table.contains("blocked: thin_task"), "{table}");
    assert!(table.contains("human_gated: gated"), "{table}");
}

/// A repository whose agent is `./agent.sh`, listed in the runtime manifest but not committed.
fn untracked_agent() -> (TestRepo, String) {
    untracked_agent_in(&["policy.toml", "loop/PROMPT.md", "agent.sh"])
}

/// A repository whose agent is `./agent.sh`, not committed, with this runtime manifest.
fn untracked_agent_in(manifest: &[&str]) -> (TestRepo, String) {
    let repo = TestRepo::new();
    repo.write("agent.sh", format!("#!/bin/sh\n{COMMIT_AND_DONE}\n"));
    std::process::Command::new("chmod")
        .args(["+x", &repo.path("agent.sh").to_string_lossy()])
        .status()
        .expect("chmod");
    repo.write(
        "policy.toml",
        format!(
            "[loop]\ntarget = \"main\"\n[agent]\ncommand = [\"./agent.sh\"]\n\
             [triage]\nmin_body_chars = 0\nrequire_acceptance = false\n\
             [lease]\nheartbeat = \"1s\"\n\
             [runtime]\nmanifest = {manifest:?}\n"
        ),
    );
    repo.write("loop/PROMPT.md", PROMPT);
    repo.git(&["add", "policy.toml", "loop/PROMPT.md"]);
    repo.git(&["commit", "-q", "-m", "set up git-loop (agent.sh forgotten)"]);
    repo.ok(&["init", "--repin"]);
    let id = repo
        .ok(&["task", "add", "work", "--body", "work"])
        .trim()
        .to_string();
    (repo, id)
}

pub(crate) fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_untracked_runtime_script_opens_the_breaker_at_once_and_its_commit_rearms_it() {
    the_seeded_incident(untracked_agent());
}

/// The agent program lives in the repository but the manifest forgets it: it is a runtime
/// file all the same, and committing it re-arms the breaker.
#[test]
fn an_untracked_agent_missing_from_the_manifest_rearms_the_breaker_when_committed() {
    the_seeded_incident(untracked_agent_in(&["policy.toml", "loop/PROMPT.md"]));
}

fn the_seeded_incident((repo, id): (TestRepo, String)) {
    let mut runner = repo
        .cmd(&["start"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("runner");
    let status = || repo.run(&["status", "--json"]).json();
    wait_for("the breaker to open", Duration::from_secs(30), || {
        status()["breaker"]["state"] == "open"
    });
    let s = status();
    let reason = s["breaker"]["reason"].as_str().expect("reason").to_string();
    assert!(reason.contains("agent.sh is not tracked"), "{reason}");
    assert_eq!(s["breaker"]["class"], "config");
    wait_for(
        "the runner to say why it waits",
        Duration::from_secs(10),
        || status()["runners"][0]["phase"] == "breaker_open",
    );
    assert!(
        repo.ok(&["status"]).contains("agent.sh is not tracked"),
        "status names the file"
    );
    let task = repo.run(&["task", "show", &id, "--json"]).json();
    assert_eq!(task["attempts"], 0, "no agent ran, nothing was retried");
    assert!(task["runs"].as_array().expect("runs").is_empty());
    assert_eq!(
        runner.try_wait().expect("poll"),
        None,
        "the runner stays up"
    );

    // A person commits the file: the breaker re-arms without a restart and the batch finishes.
    repo.git(&["add", "agent.sh"]);
    repo.git(&["commit", "-q", "-m", "add the agent"]);
    wait_for("the batch to finish", Duration::from_secs(60), || {
        repo.run(&["oracle"]).code == 0
    });
    // The successful probe closes the breaker (at the runner's next check).
    wait_for("the breaker to close", Duration::from_secs(30), || {
        status()["breaker"]["state"] == "closed"
    });
    let _ = runner.kill();
    let _ = runner.wait();
    assert_eq!(
        repo.run(&["task", "show", &id, "--json"]).json()["state"],
        "done"
    );
}

#[test]
fn once_exits_3_on_a_config_problem_and_7_while_paused() {
    let (repo, _id) = untracked_agent();
    let out = repo.run(&["start", "--once"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("agent.sh is not tracked"),
        "{}",
        out.stderr
    );

    repo.git(&["add", "agent.sh"]);
    repo.git(&["commit", "-q", "-m", "add the agent"]);
    repo.ok(&["pause", "--reason", "deploy freeze"]);
    let out = repo.run(&["start", "--once"]);
    assert_eq!(out.code, 7, "{}", out.stderr);
    assert!(out.stderr.contains("deploy freeze"), "{}", out.stderr);
    assert!(
        repo.ok(&["status"])
            .contains("paused by a person: deploy freeze")
    );
    repo.ok(&["resume"]);
    let out = repo.run(&["start", "--once"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn start_refuses_a_finish_line_that_differs_from_the_pin_until_a_person_repins() {
    let l = setup(COMMIT_AND_DONE, "", false);
    // The first start pins the protected sections as committed on the target.
    assert_eq!(l.start(&[]).code, 0);
    assert_eq!(l.repo.refs("refs/loop/oracle").len(), 1);
    l.add("work");
    // Someone loosens the gate on main itself.
    l.repo.git(&["checkout", "-q", "main"]);
    let policy = std::fs::read_to_string(l.repo.path("policy.toml")).expect("policy");
    l.repo.write(
        "policy.toml",
        format!("{policy}\n[gate]\ncommands = [[\"true\"]]\n"),
    );
    l.repo.git(&["commit", "-q", "-am", "Loosen the gate"]);
    l.repo.git(&["checkout", "-q", "person"]);
    let out = l.start(&[]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("differs from the pin"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("\"Loosen the gate\""),
        "names the commit that changed it: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("+commands = [[\"true\"]]"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("git loop init --repin"),
        "{}",
        out.stderr
    );
    // A person accepts the change.
    let repinned = l.repo.ok(&["init", "--repin"]);
    assert!(repinned.contains("re-pinned"), "{repinned}");
    let out = l.start(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// `init` pins the finish line a person committed — never a working file: before the policy is
/// committed it says how to pin, and once it is, it pins the target's commit.
#[test]
fn init_pins_the_finish_line_the_target_has_committed() {
    let repo = TestRepo::new();
    let out = repo.run(&["init"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        repo.refs("refs/loop/oracle").is_empty(),
        "nothing committed to pin"
    );
    assert!(
        out.stderr.contains("git loop init --repin"),
        "{}",
        out.stderr
    );
    repo.git(&["add", "policy.toml", "loop/PROMPT.md"]);
    repo.git(&["commit", "-q", "-m", "Set up git-loop"]);
    let out = repo.ok(&["init"]);
    assert!(out.contains("pinned the finish line of main at"), "{out}");
    let pin = repo.show("refs/loop/oracle", "oracle.toml");
    let head = repo.git(&["rev-parse", "main"]);
    assert!(
        pin.contains("sections = ")
            && pin.contains("gate")
            && pin.contains(&format!("commit = \"{}\"", head.trim())),
        "{pin}"
    );
}

/// A runner started by a script shares the script's process group: `stop` ends the runner,
/// not the script that started it.
#[test]
fn stop_leaves_the_process_that_started_the_runner_alone() {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let l = setup("echo working; sleep 600", "", false);
    l.add("long");
    // The script leads a group of its own (so that a wrong signal stays in it), and runs the
    // runner in that group, as a shell script or a service manager would.
    let mut script = std::process::Command::new("sh");
    script
        .args([
            "-c",
            "\"$0\" start & runner=$!; wait $runner; echo \"runner exited $?\"",
            crate::common::BIN,
        ])
        .current_dir(&l.repo.root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    crate::common::hermetic(&mut script, &l.repo.home);
    let script = script.spawn().expect("the script");
    let script_pid = script.id();
    wait_for("the agent to start", Duration::from_secs(30), || {
        !l.repo.refs("refs/loop/leases/").is_empty()
    });
    let runner = l.repo.run(&["status", "--json"]).json()["runners"][0]["pid"]
        .as_u64()
        .expect("the runner's pid");
    assert_ne!(
        u64::from(script_pid),
        runner,
        "the runner is the script's child"
    );
    let out = l.repo.run(&["stop", "--timeout", "20"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let done = script.wait_with_output().expect("the script ends");
    // Before: stop sent TERM to the script's whole group, and the script died of it.
    assert_eq!(done.status.signal(), None, "the script was not signalled");
    let said = String::from_utf8_lossy(&done.stdout);
    assert!(
        said.trim_end().ends_with("runner exited 0"),
        "the runner stopped cleanly: {said}"
    );
    assert!(
        l.repo.refs("refs/loop/leases/").is_empty(),
        "leases released"
    );
}

#[test]
fn stop_ends_every_agent_process_and_releases_the_leases() {
    let pids = tempfile::tempdir().expect("tmp");
    let agent = format!(
        "sleep 600 &\necho $! >> '{}/grandchildren'\necho working; sleep 600",
        pids.path().display()
    );
    // Unsandboxed: the grandchildren are checked by pid.
    let l = setup(&agent, UNSANDBOXED, false);
    let id = l.add("long");
    let runner_pid = l.repo.ok(&["start", "--detach"]).trim().to_string();
    let mut pgid = None;
    wait_for("the agent to start", Duration::from_secs(30), || {
        pgid = lease_pgid(&l.repo, &id);
        pgid.is_some()
    });
    let pgid = pgid.expect("pgid");
    assert!(running_group(&pgid));
    wait_for(
        "the heartbeat to show the agent's last output",
        Duration::from_secs(15),
        || l.repo.run(&["status", "--json"]).json()["runners"][0]["last_output"].is_string(),
    );
    let out = l.repo.run(&["stop", "--timeout", "20"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("stopped"), "{}", out.stdout);
    assert!(!running(&runner_pid), "the runner exited");
    assert!(!running_group(&pgid), "no agent process survives");
    for pid in std::fs::read_to_string(pids.path().join("grandchildren"))
        .expect("pids")
        .lines()
    {
        assert!(!running(pid.trim()), "the grandchild {pid} survived");
    }
    assert!(
        l.repo.refs("refs/loop/leases/").is_empty(),
        "leases released"
    );
    let task = l.show(&id);
    assert_eq!(task["state"], "ready", "{task}");
    assert_eq!(task["attempts"], 0, "a stop is not an attempt");
    let runners = l.repo.refs("refs/loop/runners/");
    assert_eq!(runners.len(), 1, "{runners:?}");
    let runner = runners[0].split(' ').next().expect("a ref name");
    let beat = l.repo.show(runner, "heartbeat.toml");
    assert!(
        beat.contains("phase = \"stopped\""),
        "a final heartbeat: {beat}"
    );
    // Stopping again finds nothing to stop.
    assert!(l.repo.ok(&["stop"]).contains("no runner is running"));
}

#[test]
fn the_demo_runs_to_done() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("demo");
    // Bounded: a demo that waits (a backoff of minutes, say) is a failure, not a hang. GNU
    // timeout signals its own process group, the demo's runner included.
    let mut cmd = std::process::Command::new("timeout");
    cmd.args(["-k", "10", "300", crate::common::BIN, "demo", "--dir"])
        .arg(&dir);
    crate::common::hermetic(&mut cmd, tmp.path());
    let out = cmd.output().expect("demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("$ git loop oracle\nfinished"), "{stdout}");
    // The scripted trouble really happened: a transient failure, a quota, a failed gate.
    assert!(stderr.contains(": quota_wait"), "{stderr}");
    assert!(stderr.contains(": needs_rework"), "{stderr}");
    assert!(
        stderr.contains(": ready ("),
        "a transient failure requeued a task: {stderr}"
    );
    let project = dir.join("project");
    let mut oracle = std::process::Command::new(crate::common::BIN);
    oracle.args(["-C", &project.to_string_lossy(), "oracle"]);
    crate::common::hermetic(&mut oracle, tmp.path());
    assert_eq!(oracle.output().expect("oracle").status.code(), Some(0));
}

/// A promotion that fails with an error nobody classified (here `git merge-tree` itself fails,
/// through a wrapper in front of the real git) must not be tried again at once, for ever: each
/// failure in a row waits longer, and they open the breaker (SPEC §5).
#[test]
fn an_unclassified_promotion_failure_backs_off_and_opens_the_breaker() {
    // The target moves while the agent works (a person's commit), so that promotion merges.
    let agent = format!(
        "parent=$(git rev-parse main)\n\
         moved=$(echo 'a person was here' | git commit-tree \"$parent^{{tree}}\" -p \"$parent\")\n\
         git update-ref refs/heads/main \"$moved\" \"$parent\"\n{COMMIT_AND_DONE}"
    );
    // The agent plays the person (a sandboxed one cannot move main).
    let l = setup(
        &agent,
        &format!(
            "{UNSANDBOXED}[breaker]\nfailures = 3\n[retry]\ninitial = \"200ms\"\nmax = \"1s\"\n"
        ),
        false,
    );
    let id = l.add("merge me");
    let bin = tempfile::tempdir().expect("tmp");
    let calls = bin.path().join("merge-tree-calls");
    let path = crate::common::git_wrapper(
        bin.path(),
        &format!(
            "for a in \"$@\"; do\n  if [ \"$a\" = merge-tree ]; then\n    \
             echo call >> '{}'\n    echo 'fatal: simulated failure' >&2\n    exit 128\n  fi\n\
             done",
            calls.display()
        ),
    );
    let detached = l
        .repo
        .cmd(&["start", "--detach"])
        .env("PATH", &path)
        .stdin(Stdio::null())
        .output()
        .expect("runner");
    assert!(detached.status.success(), "{detached:?}");
    let runner_pid = String::from_utf8_lossy(&detached.stdout).trim().to_string();
    let mut status;
    let opened = {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            status = l.repo.run(&["status", "--json"]).json();
            if status["breaker"]["state"] == "open" || Instant::now() > until {
                break status["breaker"]["state"] == "open";
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let tries = std::fs::read_to_string(&calls)
        .unwrap_or_default()
        .lines()
        .count();
    let stop = l.repo.run(&["stop", "--timeout", "20"]);
    assert!(!running(&runner_pid), "the runner exited");
    assert!(opened, "the breaker opened: {status}");
    assert_eq!(stop.code, 0, "{}", stop.stderr);
    assert!(
        (3..=4).contains(&tries),
        "three failed promotions open the breaker, not {tries}"
    );
    let task = l.show(&id);
    assert_eq!(task["state"], "promoting", "{task}");
    let log = l.history(&id).join("\n");
    for n in 1..=3 {
        assert!(
            log.contains(&format!("promotion failed ({n} in a row: ")),
            "{log}"
        );
    }
    assert!(log.contains("simulated failure"), "{log}");
}

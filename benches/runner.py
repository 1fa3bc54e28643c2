#!/usr/bin/env python3
"""Runner benchmarks.

1. Per-task overhead: `git loop start --once` over N tasks (default 200) with a no-op agent
   (it commits one file and prints the token), no gates, one worker — beside a plain bash loop
   doing the same git steps per task (worktree add, run the agent, merge --no-ff into main, push
   main to the remote, worktree remove), in the same run, alternating which goes first. Measured
   twice: with a local bare repository as the remote (the comparison the goal is set on), and
   with no remote at all (both sides then skip the push). With the remote, a second bash loop
   does the git steps SPEC §7 asks of a promotion: the task branch pushed before the merge,
   then the target and the remote branch's deletion in one atomic push, then the local task
   branch deleted.
2. Flatness: the runner's RSS (all, and anonymous: its heap) and open file descriptors, sampled
   every 50 ms over M tasks (default 1000); the first quartile of the run beside the last.
   BENCH_GIT_MAINTENANCE=1 runs both parts with git's automatic maintenance on (by default the
   environment turns it off, for both sides). BENCH_SAME_FILE=1 makes the agent rewrite one
   file instead of adding one per task, so that the tree checked out stays the same size.

Usage: [BENCH_DIR=/tmp] benches/runner.py [GIT_LOOP_BINARY] [N] [ROUNDS] [M]
"""
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "git-loop"))
n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
m = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
scratch = os.environ.get("BENCH_DIR") or ("/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
env = dict(os.environ, GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1",
           GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.com",
           GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.com",
           GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="maintenance.auto", GIT_CONFIG_VALUE_0="false")
if os.environ.get("BENCH_GIT_MAINTENANCE") == "1":
    env["GIT_CONFIG_COUNT"] = "0"

AGENT = """#!/bin/sh
echo "$1" > "work-$1.txt"
git add "work-$1.txt" && git commit -q -m "work $1"
echo LOOP_DONE
"""
if os.environ.get("BENCH_SAME_FILE") == "1":
    AGENT = AGENT.replace('"work-$1.txt"', "work.txt")
BASH_LOOP = """set -e
i=0
while [ $i -lt "$N" ]; do
  i=$((i + 1))
  git worktree add -q -b "task-$i" "../wt-$i" main
  (cd "../wt-$i" && "$AGENT" "$i")
  if [ -n "$CONTRACT" ]; then git push -q origin "task-$i"; fi
  git merge -q --no-ff --no-edit "task-$i"
  if [ -n "$CONTRACT" ]; then git push -q --atomic origin main ":task-$i"
  elif [ -n "$PUSH" ]; then git push -q origin main; fi
  git worktree remove "../wt-$i"
  if [ -n "$CONTRACT" ]; then git branch -q -d "task-$i"; fi
done
"""


def run(argv, cwd, **kw):
    return subprocess.run(argv, cwd=cwd, env=env, check=True, capture_output=True, text=True, **kw)


def make(root, tasks, name, remote=False):
    repo = os.path.join(root, name)
    os.makedirs(repo)
    agent = os.path.join(root, f"agent-{name}.sh")
    with open(agent, "w") as f:
        f.write(AGENT)
    os.chmod(agent, 0o755)
    run(["git", "init", "-q", "-b", "main"], repo)
    with open(os.path.join(repo, "policy.toml"), "w") as f:
        remote_key = 'remote = "origin"\n' if remote else ""
        f.write(f'[loop]\ntarget = "main"\n{remote_key}[agent]\ncommand = ["{agent}", "{{task_id}}"]\n'
                '[triage]\nmin_body_chars = 0\nrequire_acceptance = false\n'
                '[lease]\nheartbeat = "5s"\n'
                f'[runtime]\nmanifest = ["policy.toml", "loop/PROMPT.md"]\n')
    os.makedirs(os.path.join(repo, "loop"))
    with open(os.path.join(repo, "loop", "PROMPT.md"), "w") as f:
        f.write("Do {title}.\n")
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "initial"], repo)
    if remote:
        bare = os.path.join(root, f"{name}-remote.git")
        run(["git", "init", "-q", "--bare", bare], root)
        run(["git", "remote", "add", "origin", bare], repo)
        run(["git", "push", "-q", "origin", "main"], repo)
    if tasks:
        # A person pins the finish line before the runner may judge (SPEC §9).
        run([binary, "init", "--repin"], repo)
        for i in range(tasks):
            run([binary, "task", "add", f"task {i}", "--body", "work"], repo)
        run(["git", "checkout", "-q", "-b", "person"], repo)
    return repo, agent


def time_loop(repo):
    start = time.perf_counter()
    run([binary, "start", "--once"], repo)
    return time.perf_counter() - start


def time_bash(repo, agent, push, contract=False):
    start = time.perf_counter()
    subprocess.run(
        ["sh", "-c", BASH_LOOP], cwd=repo,
        env=dict(env, N=str(n), AGENT=agent, PUSH="1" if push else "",
                 CONTRACT="1" if contract else ""), check=True,
        capture_output=True)
    return time.perf_counter() - start


print(f"Per-task overhead: {n} tasks, no-op agent, no gates, one worker; {rounds} rounds per "
      f"row, order alternating; repositories in {scratch or tempfile.gettempdir()}\n")
print("| | bash loop median s | git loop median s | bash ms/task | git loop ms/task | ratio |")
print("|---|---:|---:|---:|---:|---:|")
for remote in (True, False):
    loop_s, bash_s, contract_s = [], [], []
    for r in range(rounds):
        with tempfile.TemporaryDirectory(dir=scratch) as a, \
                tempfile.TemporaryDirectory(dir=scratch) as b, \
                tempfile.TemporaryDirectory(dir=scratch) as c:
            repo_a, _ = make(a, n, "loop", remote)
            repo_b, agent_b = make(b, 0, "bash", remote)
            runs = [("loop", lambda: time_loop(repo_a)),
                    ("bash", lambda: time_bash(repo_b, agent_b, remote))]
            if remote:
                repo_c, agent_c = make(c, 0, "bash", remote)
                runs.append(("contract", lambda: time_bash(repo_c, agent_c, remote, True)))
            if r % 2:
                runs.reverse()
            got = {name: f() for name, f in runs}
            loop_s.append(got["loop"])
            bash_s.append(got["bash"])
            contract_s.append(got.get("contract"))
    lm, bm = statistics.median(loop_s), statistics.median(bash_s)
    label = "local bare remote (bash: merge + push)" if remote else "no remote (bash: merge)"
    print(f"| {label} | {bm:.2f} | {lm:.2f} | {bm / n * 1000:.1f} | {lm / n * 1000:.1f} | "
          f"{lm / bm:.2f} |")
    if remote:
        # The same git steps as SPEC §7 asks of a promotion: the task branch pushed before the
        # merge, then the target and the remote branch's deletion in one atomic push, and the
        # local task branch deleted.
        cm = statistics.median(contract_s)
        print(f"| local bare remote (bash: push branch, merge, push target + delete branch) | "
              f"{cm:.2f} | {lm:.2f} | {cm / n * 1000:.1f} | {lm / n * 1000:.1f} | {lm / cm:.2f} |")
print()

# Flatness over m tasks.
with tempfile.TemporaryDirectory(dir=scratch) as c:
    repo_c, _ = make(c, m, "flat")
    proc = subprocess.Popen([binary, "start", "--once"], cwd=repo_c, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = []
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                status = {l.split(":")[0]: l.split()[1] for l in f if l.startswith(("VmRSS:", "RssAnon:"))}
            fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
            samples.append((int(status["VmRSS"]), fds, int(status["RssAnon"])))
        except (FileNotFoundError, KeyError, ProcessLookupError):
            pass
        time.sleep(0.05)
    q = max(1, len(samples) // 4)
    first, last = samples[:q], samples[-q:]
    print(f"Flatness: {m} tasks, {len(samples)} samples every 50 ms\n")
    print("| | first quartile | last quartile |")
    print("|---|---:|---:|")
    print(f"| median RSS MiB | {statistics.median(s[0] for s in first) / 1024:.1f} | "
          f"{statistics.median(s[0] for s in last) / 1024:.1f} |")
    print(f"| max RSS MiB | {max(s[0] for s in first) / 1024:.1f} | {max(s[0] for s in last) / 1024:.1f} |")
    print(f"| median anonymous RSS MiB (heap) | {statistics.median(s[2] for s in first) / 1024:.1f} | "
          f"{statistics.median(s[2] for s in last) / 1024:.1f} |")
    print(f"| median open fds | {statistics.median(s[1] for s in first)} | {statistics.median(s[1] for s in last)} |")
    print(f"| max open fds | {max(s[1] for s in first)} | {max(s[1] for s in last)} |")
    tenth = max(1, len(samples) // 10)
    deciles = [samples[i * tenth:(i + 1) * tenth] for i in range(10)]
    print("\nMedian RSS MiB by tenth of the run: " + ", ".join(
        f"{statistics.median(s[0] for s in d) / 1024:.1f}" for d in deciles if d))
    print("Median anonymous RSS MiB by tenth of the run: " + ", ".join(
        f"{statistics.median(s[2] for s in d) / 1024:.1f}" for d in deciles if d))

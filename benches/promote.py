#!/usr/bin/env python3
"""Times `git loop promote` of a 10-commit branch (no-ff, into a local bare remote) beside the
same work done with plain git in the same run: push the branch, `merge --no-ff` in a temporary
worktree, push the target, remove the worktree, delete the remote branch.

Usage: [BENCH_DIR=/tmp] benches/promote.py [GIT_LOOP_BINARY] [ROUNDS]

Each round builds two identical fresh repositories (untimed) and times one promotion in each,
alternating which goes first. Prints medians and their ratio as Markdown.
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "git-loop"))
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 21

env = dict(os.environ, GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1",
           GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.com",
           GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.com",
           # No detached `git maintenance` after each push, on either side: those background
           # processes would compete with whichever command is timed next.
           GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="maintenance.auto", GIT_CONFIG_VALUE_0="false")
POLICY = """[loop]
target = "main"
remote = "origin"
[agent]
command = ["true"]
[promote]
strategy = "no-ff"
"""
BODY = "Benchmark task with a ten-commit branch to promote.\n\nAcceptance: it is merged."


def git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


def make(root):
    """A repository with a bare remote, and a task whose branch has 10 commits."""
    repo, remote = os.path.join(root, "repo"), os.path.join(root, "remote.git")
    os.makedirs(repo)
    git(root, "init", "-q", "--bare", "-b", "main", remote)
    git(repo, "init", "-q", "-b", "main")
    with open(os.path.join(repo, "policy.toml"), "w") as f:
        f.write(POLICY)
    os.makedirs(os.path.join(repo, "loop"))
    with open(os.path.join(repo, "loop", "PROMPT.md"), "w") as f:
        f.write("Do {title}.\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "initial")
    git(repo, "remote", "add", "origin", remote)
    git(repo, "push", "-q", "origin", "main")
    task = subprocess.run([binary, "task", "add", "bench", "--body", BODY], cwd=repo, env=env,
                          check=True, capture_output=True, text=True).stdout.strip()
    branch = f"loop/{task[:7]}"
    git(repo, "checkout", "-q", "-b", branch)
    for i in range(10):
        with open(os.path.join(repo, f"file{i}.txt"), "w") as f:
            f.write(f"change {i}\n")
        git(repo, "add", f"file{i}.txt")
        git(repo, "commit", "-q", "-m", f"change {i}")
    git(repo, "checkout", "-q", "main")
    with open(os.path.join(repo, "main.txt"), "w") as f:
        f.write("work on main\n")
    git(repo, "add", "main.txt")
    git(repo, "commit", "-q", "-m", "work on main")
    git(repo, "push", "-q", "origin", "main")
    return repo, task, branch


PLAIN = """set -e
git push -q origin "$BRANCH"
git worktree add -q --detach "$WT" origin/main
git -C "$WT" merge -q --no-ff --no-edit "$BRANCH"
git -C "$WT" push -q origin HEAD:refs/heads/main
git worktree remove "$WT"
git push -q origin --delete "$BRANCH"
"""


def timed(argv, cwd, extra=None):
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=dict(env, **(extra or {})), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return (time.perf_counter() - start) * 1000.0


# Repositories on tmpfs when there is one: disk jitter would swamp a 50 ms measurement.
scratch = os.environ.get("BENCH_DIR") or ("/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None)
loop_ms, plain_ms = [], []
for r in range(rounds + 1):
    with tempfile.TemporaryDirectory(dir=scratch) as a, tempfile.TemporaryDirectory(dir=scratch) as b:
        repo_a, task, _ = make(a)
        repo_b, _, branch = make(b)
        git(repo_b, "fetch", "-q", "origin")
        runs = [
            ("loop", lambda: timed([binary, "promote", task[:7]], repo_a)),
            ("plain", lambda: timed(["sh", "-c", PLAIN], repo_b,
                                    {"BRANCH": branch, "WT": os.path.join(b, "wt")})),
        ]
        if r % 2:
            runs.reverse()
        results = {name: run() for name, run in runs}
        if r == 0:
            continue  # warm-up
        loop_ms.append(results["loop"])
        plain_ms.append(results["plain"])

lm, pm = statistics.median(loop_ms), statistics.median(plain_ms)
print(f"{rounds} rounds after one warm-up round, order alternating, repositories in "
      f"{scratch or tempfile.gettempdir()}\n")
print("| promotion of a 10-commit branch, no-ff, local bare remote | median ms | min ms | max ms |")
print("|---|---:|---:|---:|")
print(f"| plain git (push, worktree merge --no-ff, push, remove, delete) | {pm:.1f} | "
      f"{min(plain_ms):.1f} | {max(plain_ms):.1f} |")
print(f"| git loop promote | {lm:.1f} | {min(loop_ms):.1f} | {max(loop_ms):.1f} |")
print(f"\nratio (git loop / plain): {lm / pm:.2f}")

#!/usr/bin/env python3
"""The OS sandbox's cost per task.

`git loop start --once` over N tasks (default 100) with a no-op agent (it commits one file and
prints the token; committed in the repository, as a runtime file), one gate (`true`), one
worker, no remote, `agent.writable` empty — once with `agent.sandbox =
"none"` and once with `"bwrap"`, in the same run, alternating which goes first, ROUNDS times
(default 5). Each task runs two sandboxes when sandboxed: the agent's and the gate's. Reports
the medians, the cost per task and the ratio.

Usage: [BENCH_DIR=/tmp] benches/sandbox.py [GIT_LOOP_BINARY] [N] [ROUNDS]
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "git-loop"))
n = int(sys.argv[2]) if len(sys.argv) > 2 else 100
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
scratch = os.environ.get("BENCH_DIR") or ("/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
env = dict(os.environ, GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1",
           GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.com",
           GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.com",
           GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="maintenance.auto", GIT_CONFIG_VALUE_0="false")

AGENT = """#!/bin/sh
echo "$1" > "work-$1.txt"
git add "work-$1.txt" && git commit -q -m "work $1"
echo LOOP_DONE
"""


def run(argv, cwd):
    return subprocess.run(argv, cwd=cwd, env=env, check=True, capture_output=True, text=True)


def make(root, sandbox):
    repo = os.path.join(root, "repo")
    os.makedirs(os.path.join(repo, "loop"))
    agent = os.path.join(repo, "agent.sh")
    with open(agent, "w") as f:
        f.write(AGENT)
    os.chmod(agent, 0o755)
    run(["git", "init", "-q", "-b", "main"], repo)
    with open(os.path.join(repo, "policy.toml"), "w") as f:
        f.write(f'[loop]\ntarget = "main"\n[agent]\ncommand = ["{agent}", "{{task_id}}"]\n'
                f'sandbox = "{sandbox}"\nwritable = []\n'
                '[gate]\ncommands = [["true"]]\n'
                '[triage]\nmin_body_chars = 0\nrequire_acceptance = false\n'
                '[lease]\nheartbeat = "5s"\n'
                '[runtime]\nmanifest = ["policy.toml", "loop/PROMPT.md", "agent.sh"]\n')
    with open(os.path.join(repo, "loop", "PROMPT.md"), "w") as f:
        f.write("Do {title}.\n")
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "initial"], repo)
    run([binary, "init", "--repin"], repo)
    for i in range(n):
        run([binary, "task", "add", f"task {i}", "--body", "work"], repo)
    run(["git", "checkout", "-q", "-b", "person"], repo)
    return repo


def timed(repo):
    start = time.perf_counter()
    out = run([binary, "start", "--once"], repo)
    elapsed = time.perf_counter() - start
    done = run([binary, "task", "list", "--json"], repo).stdout.count('"state":"done"')
    assert done == n, f"{done} of {n} done: {out.stderr}"
    return elapsed


times = {"none": [], "bwrap": []}
for r in range(rounds):
    order = ["none", "bwrap"] if r % 2 == 0 else ["bwrap", "none"]
    for mode in order:
        with tempfile.TemporaryDirectory(dir=scratch) as root:
            times[mode].append(timed(make(root, mode)))

# What bwrap itself costs, beside what git-loop does around it: a sandbox of nothing (the
# options every run has) around `true`, against `true`.
BASE = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid",
        "--die-with-parent", "--new-session", "--cap-drop", "ALL"]


def spawn_ms(argv, k=200):
    xs = []
    for _ in range(k):
        start = time.perf_counter()
        subprocess.run(argv, check=True)
        xs.append(time.perf_counter() - start)
    return statistics.median(xs) * 1000


bare_true, bare_bwrap = spawn_ms(["true"]), spawn_ms(BASE + ["--", "true"])
# The floor under any sandbox of this kind: the kernel making the namespaces bwrap asks for (a
# user, a mount and a PID namespace), with nothing mounted.
bare_unshare = spawn_ms(["unshare", "--user", "--mount", "--pid", "--fork", "true"])

none, bwrap = statistics.median(times["none"]), statistics.median(times["bwrap"])
print(f"Sandbox cost: {n} tasks, no-op agent, one gate (`true`), one worker, no remote; "
      f"{rounds} rounds, order alternating; repositories in {scratch or tempfile.gettempdir()}\n")
print("| | median s | ms/task |")
print("|---|---:|---:|")
print(f"| agent.sandbox = \"none\" | {none:.2f} | {none / n * 1000:.1f} |")
print(f"| agent.sandbox = \"bwrap\" | {bwrap:.2f} | {bwrap / n * 1000:.1f} |")
print(f"\nThe sandbox costs {(bwrap - none) / n * 1000:.1f} ms per task (two sandboxes: agent and "
      f"gate), a ratio of {bwrap / none:.2f}.")
print(f"A bare sandbox (bwrap's options around `true`) costs {bare_bwrap - bare_true:.1f} ms over "
      f"`true` itself ({bare_bwrap:.1f} against {bare_true:.1f} ms, medians of 200);\n"
      f"the namespaces alone (`unshare --user --mount --pid --fork true`) "
      f"{bare_unshare - bare_true:.1f} ms ({bare_unshare:.1f} ms).")

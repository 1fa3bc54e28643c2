#!/usr/bin/env python3
"""Claims through one shared remote (SPEC §13).

T tasks (default 40) are filed into a bare remote on this machine; C clones (1, 2, 4 and 8 by
default), each with a runner of two workers (`loop.workers = 2`, a no-op agent that commits one
file, no gates, no verify commands, `agent.sandbox = "none"`), run them until every task is
`done` on the remote. Measured from the runners' start to the last task done on the remote:
tasks per second, and the cost per task in process-seconds of wall time (wall x clones). From
the remote's own records afterwards: every task claimed for an agent once (its history has one
"leased by" line; more is a double claim), and how many pushes of loop state the remote
accepted per task (its reflogs, `core.logAllRefUpdates = always`). Lost races are the
runners' own words (`GIT_LOOP_LOG=debug`: "refused a stale lease").

In the same round, the limit: the same number of worker processes (2 x C), each taking the
tasks of a backlog of T in its own order and, for each, pushing exactly what git-loop pushed
per task on average (P): a claim (`git push --atomic --force-with-lease` creating the lease
and moving the task ref from the value it read) that may lose the race, then P - 1 more
compare-and-swap pushes of that task ref — no agent, no worktree, no merge. The ratio is
git-loop's tasks per second to the limit's.

Usage: [BENCH_DIR=/tmp] benches/claims.py [GIT_LOOP_BINARY] [T] [ROUNDS] [CLONES...]
"""
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "git-loop"))
tasks = int(sys.argv[2]) if len(sys.argv) > 2 else 40
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
clone_counts = [int(c) for c in sys.argv[4:]] or [1, 2, 4, 8]
scratch = os.environ.get("BENCH_DIR") or ("/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
env = dict(os.environ, GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1",
           GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.com",
           GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.com",
           GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="maintenance.auto", GIT_CONFIG_VALUE_0="false")
env.pop("GIT_LOOP_LOG", None)
DEADLINE = 600

AGENT = """#!/bin/sh
echo "$1" > "work-$1.txt"
git add "work-$1.txt" && git commit -q -m "work $1"
echo LOOP_DONE
"""


def run(argv, cwd, **kw):
    return subprocess.run(argv, cwd=cwd, env=kw.pop("env", env), check=True,
                          capture_output=True, text=True, **kw)


def setup(root):
    """A bare remote with a policy on main and `tasks` tasks on it; returns its path."""
    bare = os.path.join(root, "remote.git")
    run(["git", "init", "-q", "--bare", "-b", "main", bare], root)
    run(["git", "config", "core.logAllRefUpdates", "always"], bare)
    seed = os.path.join(root, "seed")
    os.makedirs(os.path.join(seed, "loop"))
    agent = os.path.join(root, "agent.sh")
    with open(agent, "w") as f:
        f.write(AGENT)
    os.chmod(agent, 0o755)
    run(["git", "init", "-q", "-b", "main"], seed)
    with open(os.path.join(seed, "policy.toml"), "w") as f:
        f.write(f'[loop]\ntarget = "main"\nremote = "origin"\nworkers = 2\nsync = "500ms"\n'
                f'[agent]\ncommand = ["{agent}", "{{task_id}}"]\nsandbox = "none"\n'
                '[triage]\nmin_body_chars = 0\nrequire_acceptance = false\n'
                '[lease]\nttl = "60s"\nheartbeat = "5s"\n'
                '[runtime]\nmanifest = ["policy.toml", "loop/PROMPT.md"]\n')
    with open(os.path.join(seed, "loop", "PROMPT.md"), "w") as f:
        f.write("Do {title}.\n")
    run(["git", "add", "-A"], seed)
    run(["git", "commit", "-q", "-m", "initial"], seed)
    run(["git", "remote", "add", "origin", bare], seed)
    run(["git", "push", "-q", "origin", "main"], seed)
    run([binary, "init", "--repin"], seed)
    for i in range(tasks):
        run([binary, "task", "add", f"task {i}", "--body", "work"], seed)
    run([binary, "sync"], seed)
    return bare


def clone(root, bare, name):
    path = os.path.join(root, name)
    run(["git", "clone", "-q", bare, path], root)
    run(["git", "checkout", "-q", "-b", "person"], path)
    run([binary, "sync"], path)
    return path


def remote_states(bare):
    out = run(["git", "for-each-ref", "--format=%(objectname)", "refs/loop/tasks/"], bare).stdout
    states = []
    for tip in out.split():
        doc = run(["git", "cat-file", "blob", f"{tip}:task.toml"], bare).stdout
        m = re.search(r'^state = "(\w+)"', doc, re.M)
        states.append(m.group(1) if m else "?")
    return states


def time_loop(root, bare, clones):
    dirs = [clone(root, bare, f"clone-{i}") for i in range(clones)]
    logs = [open(os.path.join(root, f"runner-{i}.log"), "w") for i in range(clones)]
    start = time.perf_counter()
    procs = [subprocess.Popen([binary, "start"], cwd=d, env=dict(env, GIT_LOOP_LOG="debug"),
                              stdout=subprocess.DEVNULL, stderr=log)
             for d, log in zip(dirs, logs)]
    try:
        while True:
            states = remote_states(bare)
            if len(states) == tasks and all(s == "done" for s in states):
                break
            if time.perf_counter() - start > DEADLINE:
                raise SystemExit(f"not done after {DEADLINE} s: {states}")
            time.sleep(0.1)
        wall = time.perf_counter() - start
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        for log in logs:
            log.close()
    lost = 0
    for i in range(clones):
        with open(os.path.join(root, f"runner-{i}.log")) as f:
            lost += f.read().count("refused a stale lease")
    # Double claims: a task leased for an agent more than once; pushes the remote accepted.
    doubles = 0
    for name in run(["git", "for-each-ref", "--format=%(refname)", "refs/loop/tasks/"],
                    bare).stdout.split():
        subjects = run(["git", "log", "--first-parent", "--format=%s", name], bare).stdout
        if subjects.count("-> running: leased by") > 1:
            doubles += 1
    updates = 0
    logs_dir = os.path.join(bare, "logs", "refs", "loop")
    for dirpath, _, files in os.walk(logs_dir):
        for f in files:
            with open(os.path.join(dirpath, f)) as fh:
                updates += sum(1 for _ in fh)
    return wall, lost, doubles, updates


RAW_WORKER = r"""set -u
# Claims the tasks of ids.txt in the order of $ORDER, then pushes $P - 1 more CAS updates each.
empty=$(git hash-object -t tree /dev/null)
claims=0; lost=0
for id in $(cat "$ORDER"); do
  tip=$(git ls-remote origin "refs/loop/tasks/$id" | cut -f1)
  [ -n "$tip" ] || continue
  lease=$(git commit-tree "$empty" -m "lease $id $$")
  next=$(git commit-tree "$empty" -m "claim $id $$ $tip")
  if git push -q --atomic --force-with-lease="refs/loop/leases/$id:" \
      --force-with-lease="refs/loop/tasks/$id:$tip" origin \
      "$lease:refs/loop/leases/$id" "$next:refs/loop/tasks/$id" 2>/dev/null; then
    claims=$((claims + 1))
    i=1
    while [ $i -lt "$P" ]; do
      new=$(git commit-tree "$empty" -p "$next" -m "step $i $id")
      git push -q --atomic --force-with-lease="refs/loop/tasks/$id:$next" origin \
        "$new:refs/loop/tasks/$id" 2>/dev/null || break
      next=$new; i=$((i + 1))
    done
  else
    lost=$((lost + 1))
  fi
done
echo "$claims $lost"
"""


def time_raw(root, workers, per_task):
    bare = os.path.join(root, "raw.git")
    run(["git", "init", "-q", "--bare", bare], root)
    seed = os.path.join(root, "raw-seed")
    run(["git", "init", "-q", "-b", "main", seed], root)
    empty = run(["git", "hash-object", "-t", "tree", "/dev/null"], seed).stdout.strip()
    ids = [f"{i:032x}" for i in range(tasks)]
    specs = []
    for i in ids:
        c = run(["git", "commit-tree", empty, "-m", f"created {i}"], seed).stdout.strip()
        specs.append(f"{c}:refs/loop/tasks/{i}")
    run(["git", "remote", "add", "origin", bare], seed)
    run(["git", "push", "-q", "origin", *specs], seed)
    dirs = []
    for w in range(workers):
        d = os.path.join(root, f"raw-{w}")
        run(["git", "clone", "-q", bare, d], root)
        order = os.path.join(root, f"order-{w}.txt")
        shuffled = ids[:]
        random.Random(w).shuffle(shuffled)
        with open(order, "w") as f:
            f.write("\n".join(shuffled) + "\n")
        dirs.append((d, order))
    start = time.perf_counter()
    procs = [subprocess.Popen(["sh", "-c", RAW_WORKER], cwd=d,
                              env=dict(env, ORDER=order, P=str(per_task)),
                              stdout=subprocess.PIPE, text=True)
             for d, order in dirs]
    outs = [p.communicate()[0].split() for p in procs]
    wall = time.perf_counter() - start
    claims = sum(int(o[0]) for o in outs)
    lost = sum(int(o[1]) for o in outs)
    return wall, claims, lost


print(f"Claims through one bare remote: {tasks} tasks, no-op agent, 2 workers a clone, "
      f"{rounds} rounds per row; repositories in {scratch or tempfile.gettempdir()}\n")
print("| clones x 2 workers | git loop tasks/s | limit tasks/s | ratio | git loop s/task x clones "
      "| pushes a task | lost races (git loop) | lost races (limit) | double claims |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for clones in clone_counts:
    loop_rate, raw_rate, costs, pushes, lost_l, lost_r, doubles = [], [], [], [], [], [], 0
    for r in range(rounds):
        with tempfile.TemporaryDirectory(dir=scratch) as root:
            bare = setup(root)
            wall, lost, dbl, updates = time_loop(root, bare, clones)
            per_task = max(1, round(updates / tasks))
            raw_wall, raw_claims, raw_lost = time_raw(root, 2 * clones, per_task)
            if raw_claims != tasks:
                raise SystemExit(f"the limit claimed {raw_claims} of {tasks}")
            loop_rate.append(tasks / wall)
            raw_rate.append(tasks / raw_wall)
            costs.append(wall * clones / tasks)
            pushes.append(updates / tasks)
            lost_l.append(lost)
            lost_r.append(raw_lost)
            doubles += dbl
    lm, rm = statistics.median(loop_rate), statistics.median(raw_rate)
    print(f"| {clones} | {lm:.2f} | {rm:.2f} | {lm / rm:.2f} | {statistics.median(costs):.2f} | "
          f"{statistics.median(pushes):.1f} | {statistics.median(lost_l):.0f} | "
          f"{statistics.median(lost_r):.0f} | {doubles} |")

#!/usr/bin/env python3
"""What a task costs the shared remote (SPEC §13), counted, not timed: one clone's runner (two
workers, a no-op agent, no gates, no verify commands) runs T tasks (default 20) through a bare
remote whose reflogs record every ref update it accepted (`core.logAllRefUpdates = always`).
Printed: ref updates per task by kind of ref, and how many pushes and fetches git-loop ran in
all (its own log at debug level, which names each git it runs). The figures feed
docs/SHARING.md.

Usage: [BENCH_DIR=/tmp] benches/pushes.py [GIT_LOOP_BINARY] [T]
"""
import collections
import os
import re
import sys
import tempfile
import time

sys.argv = sys.argv[:3]
here = os.path.dirname(os.path.abspath(__file__))
binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    here, "..", "target", "release", "git-loop"))
tasks = int(sys.argv[2]) if len(sys.argv) > 2 else 20

# The set-up of claims.py, with this script's task count.
source = open(os.path.join(here, "claims.py")).read()
source = source[:source.index('print(f"Claims through')]
namespace = {"__file__": os.path.join(here, "claims.py")}
saved = sys.argv
sys.argv = [saved[0], binary, str(tasks)]
exec(compile(source, "claims.py", "exec"), namespace)
sys.argv = saved

with tempfile.TemporaryDirectory(dir=namespace["scratch"]) as root:
    bare = namespace["setup"](root)
    # What set-up itself wrote (the pin, the filed tasks) is not the tasks' running cost.
    before = collections.Counter()
    logs_dir = os.path.join(bare, "logs", "refs")

    def count():
        c = collections.Counter()
        for dirpath, _, files in os.walk(logs_dir):
            for f in files:
                rel = os.path.relpath(os.path.join(dirpath, f), logs_dir)
                kind = "/".join(rel.split("/")[:2]) if rel.startswith("loop/") else rel
                kind = re.sub(r"[0-9a-f]{32}", "<id>", kind)
                with open(os.path.join(dirpath, f)) as fh:
                    c[kind] += sum(1 for _ in fh)
        return c

    before = count()
    started = time.perf_counter()
    wall, lost, doubles, updates = namespace["time_loop"](root, bare, 1)
    after = count()
    with open(os.path.join(root, "runner-0.log")) as f:
        log = f.read()
    pushes = len(re.findall(r"running git .*\bpush\b", log))
    fetches = len(re.findall(r"running git .*\bfetch\b", log))
    print(f"{tasks} tasks, one clone, two workers: {wall:.1f} s, {lost} lost races, "
          f"{doubles} double claims\n")
    print("| ref updates the remote accepted | in all | a task |")
    print("|---|---:|---:|")
    total = 0
    for kind in sorted(after):
        n = after[kind] - before.get(kind, 0)
        if n:
            total += n
            print(f"| {kind} | {n} | {n / tasks:.1f} |")
    print(f"| all | {total} | {total / tasks:.1f} |")
    print(f"\ngit push runs: {pushes} ({pushes / tasks:.1f} a task); git fetch runs: {fetches} "
          f"({fetches / wall:.1f} a second)")

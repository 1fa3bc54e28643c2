#!/usr/bin/env python3
"""Times `git loop ready --json` and `git loop task list --json` on a repository of tasks made
by gen-tasks.sh, beside plain git plumbing reading the same documents, in the same run.

Usage: benches/tasks.py REPO [GIT_LOOP_BINARY] [RUNS]

Runs are interleaved (one of each command per round) after a warm-up round, so that drift of
the machine hits every command alike. Every command runs under GNU time (`/usr/bin/time`),
which reports the command's own peak RSS. The "no cache" rows delete git-loop's task cache
before each run (inside the timed command), so they measure reading every document from Git.
Prints medians, peak RSS and ratios to the plumbing as a Markdown table.
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

repo = sys.argv[1]
binary = os.path.abspath(sys.argv[2] if len(sys.argv) > 2 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "git-loop"))
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 21
gnu_time = shutil.which("time", path="/usr/bin:/bin") or sys.exit(
    "GNU time is needed for peak RSS: apt-get install time")

env = dict(os.environ, GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1")
common_dir = subprocess.run(["git", "rev-parse", "--git-common-dir"], cwd=repo, env=env,
                            capture_output=True, text=True, check=True).stdout.strip()
cache = os.path.join(repo, common_dir, "loop", "cache", "tasks.json")
plumbing = ("git for-each-ref --format='%(objectname):task.toml' refs/loop/tasks/"
            " | git cat-file --batch")
BASE = "plumbing: for-each-ref | cat-file --batch"
commands = {
    BASE: ["sh", "-c", plumbing],
    "git loop ready --json": [binary, "ready", "--json"],
    "git loop task list --json": [binary, "task", "list", "--json"],
    "git loop ready --json (no cache)":
        ["sh", "-c", f"rm -f '{cache}' && exec '{binary}' ready --json"],
    "git loop task list --json (no cache)":
        ["sh", "-c", f"rm -f '{cache}' && exec '{binary}' task list --json"],
}


def run_once(argv):
    with tempfile.NamedTemporaryFile("r") as rss_file:
        start = time.perf_counter()
        status = subprocess.run([gnu_time, "-f", "%M", "-o", rss_file.name, *argv], cwd=repo,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        elapsed = time.perf_counter() - start
        if status.returncode != 0:
            sys.exit(f"{argv} exited {status.returncode}")
        return elapsed * 1000.0, int(rss_file.read().split()[-1]) / 1024.0


samples = {name: [] for name in commands}
peaks = {name: 0.0 for name in commands}
for round_ in range(runs + 1):
    for name, argv in commands.items():
        ms, rss = run_once(argv)
        if round_ == 0:
            continue  # warm-up: page cache, binary loading
        samples[name].append(ms)
        peaks[name] = max(peaks[name], rss)

count = subprocess.run(["git", "for-each-ref", "refs/loop/tasks/"], cwd=repo, env=env,
                       capture_output=True, text=True).stdout.count("\n")
loose = subprocess.run(["git", "count-objects"], cwd=repo, env=env, capture_output=True,
                       text=True).stdout.strip()
baseline = statistics.median(samples[BASE])
print(f"{count} tasks ({loose}), {runs} interleaved runs each after one warm-up round\n")
print("| command | median ms | min ms | max ms | peak RSS MiB | ratio to plumbing |")
print("|---|---:|---:|---:|---:|---:|")
for name in commands:
    s = samples[name]
    med = statistics.median(s)
    print(f"| {name} | {med:.1f} | {min(s):.1f} | {max(s):.1f} | {peaks[name]:.1f} | "
          f"{med / baseline:.2f} |")

#!/usr/bin/env python3
"""Times `git loop doctor --offline --json` on a repository of tasks made by gen-tasks.sh,
beside two baselines measured in the same run: plain `git for-each-ref refs/loop/tasks/` and
`git loop task list --json`. Goal: doctor under one second with 10,000 tasks.

Usage: benches/doctor.py REPO [GIT_LOOP_BINARY] [RUNS]

If REPO has no policy.toml, one is written and committed first (agent and gate `true`, so that
every program resolves) and `git loop init` pins it and installs the hooks: doctor then has every
check to run and must exit 0. Runs are interleaved (one of each command per round) after a
warm-up round. Every command runs under GNU time (`/usr/bin/time`) for its peak RSS. For the
"no cache" row git-loop's task cache is moved aside before the run and back after it (neither
timed): doctor never writes the cache, so that is what it costs in a fresh clone, where there is
none, and the other rows still find the cache warm.
Prints medians, peak RSS and ratios to for-each-ref as a Markdown table.
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

env = dict(os.environ, GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1",
           GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.com",
           GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.com")


def git(*args):
    return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True,
                          check=True).stdout


if not os.path.exists(os.path.join(repo, "policy.toml")):
    with open(os.path.join(repo, "policy.toml"), "w") as f:
        f.write('[loop]\ntarget = "main"\n[agent]\ncommand = ["true"]\n'
                '[gate]\ncommands = [["true"]]\n')
    os.makedirs(os.path.join(repo, "loop"), exist_ok=True)
    with open(os.path.join(repo, "loop", "PROMPT.md"), "w") as f:
        f.write("Do {title}.\n\n{body}\n")
    git("add", "policy.toml", "loop/PROMPT.md")
    git("commit", "-q", "-m", "Set up git-loop")
    subprocess.run([binary, "init"], cwd=repo, env=env, capture_output=True, check=True)

common_dir = git("rev-parse", "--git-common-dir").strip()
cache = os.path.join(repo, common_dir, "loop", "cache", "tasks.json")
BASE = "git for-each-ref refs/loop/tasks/"
commands = {
    BASE: ["git", "for-each-ref", "refs/loop/tasks/"],
    "git loop task list --json": [binary, "task", "list", "--json"],
    "git loop doctor --offline --json": [binary, "doctor", "--offline", "--json"],
    "git loop doctor --offline --json (no cache)": [binary, "doctor", "--offline", "--json"],
}
WITHOUT_CACHE = {"git loop doctor --offline --json (no cache)"}


def run_once(name, argv):
    aside = cache + ".aside"
    if name in WITHOUT_CACHE and os.path.exists(cache):
        os.rename(cache, aside)
    try:
        return timed(argv)
    finally:
        if os.path.exists(aside):
            os.rename(aside, cache)


def timed(argv):
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
        ms, rss = run_once(name, argv)
        if round_ == 0:
            continue  # warm-up: page cache, binary loading
        samples[name].append(ms)
        peaks[name] = max(peaks[name], rss)

count = git("for-each-ref", "refs/loop/tasks/").count("\n")
baseline = statistics.median(samples[BASE])
print(f"{count} tasks, {runs} interleaved runs each after one warm-up round\n")
print("| command | median ms | min ms | max ms | peak RSS MiB | ratio to for-each-ref |")
print("|---|---:|---:|---:|---:|---:|")
for name in commands:
    s = samples[name]
    med = statistics.median(s)
    print(f"| {name} | {med:.1f} | {min(s):.1f} | {max(s):.1f} | {peaks[name]:.1f} | "
          f"{med / baseline:.2f} |")
worst = max(statistics.median(samples[n]) for n in commands if "doctor" in n)
print(f"\ngoal (doctor under 1000 ms): {'met' if worst < 1000 else 'NOT met'} "
      f"(slowest doctor median {worst:.1f} ms)")

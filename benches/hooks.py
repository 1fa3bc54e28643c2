#!/usr/bin/env python3
"""Times `git commit` with git-loop's hooks installed, beside the same commit with no hook, with
an empty `#!/bin/sh` + `exit 0` post-commit (git's own cost of running any hook: the floor), and
with the same no-op post-commit installed through pre-commit (PyPI) and lefthook (npm), all in
the same run; and the cost of a commit inside a loop worktree, where git-loop's hook works.

Usage: benches/hooks.py [GIT_LOOP_BINARY] [ROUNDS]

pre-commit and lefthook are installed from their registries into $BENCH_TOOLS (default
/tmp/bench-tools) unless already there. Repositories live on tmpfs when there is one. Rounds
are interleaved: one commit in every configuration per round, after one warm-up round.
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
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 101
tools = os.environ.get("BENCH_TOOLS", "/tmp/bench-tools")
scratch = os.environ.get("BENCH_DIR") or ("/dev/shm" if os.access("/dev/shm", os.W_OK) else None)

env = dict(os.environ, GIT_CONFIG_GLOBAL="/dev/null", GIT_CONFIG_NOSYSTEM="1",
           GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.com",
           GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.com",
           GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="maintenance.auto", GIT_CONFIG_VALUE_0="false",
           PRE_COMMIT_HOME=os.path.join(tools, "pre-commit-cache"))
env.pop("GIT_LOOP", None)


def run(argv, cwd, **kw):
    return subprocess.run(argv, cwd=cwd, env=env, check=True, capture_output=True, text=True, **kw)


def ensure_tools():
    pre_commit = os.path.join(tools, "venv", "bin", "pre-commit")
    if not os.path.exists(pre_commit):
        run([sys.executable, "-m", "venv", os.path.join(tools, "venv")], tools)
        run([os.path.join(tools, "venv", "bin", "pip"), "install", "-q", "pre-commit"], tools)
    lefthook = os.path.join(tools, "npm", "node_modules", ".bin", "lefthook")
    if not os.path.exists(lefthook):
        run(["npm", "install", "--silent", "--prefix", os.path.join(tools, "npm"), "lefthook"], tools)
    return pre_commit, lefthook


def repo(root, name):
    path = os.path.join(root, name)
    run(["git", "init", "-q", "-b", "main", path], root)
    with open(os.path.join(path, "README"), "w") as f:
        f.write("hello\n")
    run(["git", "add", "README"], path)
    run(["git", "commit", "-q", "-m", "initial"], path)
    return path


os.makedirs(tools, exist_ok=True)
pre_commit, lefthook = ensure_tools()
root = tempfile.mkdtemp(dir=scratch)
try:
    setups = {}
    setups["no hook"] = repo(root, "none")
    empty = repo(root, "empty")
    with open(os.path.join(empty, ".git", "hooks", "post-commit"), "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    os.chmod(os.path.join(empty, ".git", "hooks", "post-commit"), 0o755)
    setups["empty #!/bin/sh hook (floor)"] = empty
    gl = repo(root, "git-loop")
    run([binary, "hooks", "install"], gl)
    setups["git-loop hooks"] = gl
    pc = repo(root, "pre-commit")
    with open(os.path.join(pc, ".pre-commit-config.yaml"), "w") as f:
        f.write("repos:\n- repo: local\n  hooks:\n  - id: noop\n    name: noop\n"
                "    entry: 'true'\n    language: system\n    stages: [post-commit]\n"
                "    always_run: true\n    pass_filenames: false\n")
    run(["git", "add", ".pre-commit-config.yaml"], pc)
    run(["git", "commit", "-q", "-m", "pre-commit config"], pc)
    run([pre_commit, "install", "--hook-type", "post-commit"], pc)
    setups["pre-commit, no-op post-commit"] = pc
    lh = repo(root, "lefthook")
    with open(os.path.join(lh, "lefthook.yml"), "w") as f:
        f.write("post-commit:\n  commands:\n    noop:\n      run: 'true'\n")
    run(["git", "add", "lefthook.yml"], lh)
    run(["git", "commit", "-q", "-m", "lefthook config"], lh)
    run([lefthook, "install"], lh, )
    setups["lefthook, no-op post-commit"] = lh
    # A loop worktree of a task, where git-loop's post-commit does real work.
    body = "Benchmark task for commits in a loop worktree.\n\nAcceptance: commits are noted."
    with open(os.path.join(gl, "policy.toml"), "w") as f:
        f.write("[agent]\ncommand = ['true']\n")
    task = run([binary, "task", "add", "bench", "--body", body], gl).stdout.strip()
    wt = os.path.join(gl, ".git", "loop", "worktrees", task[:7])
    run(["git", "worktree", "add", "-q", "-b", f"loop/{task[:7]}", wt], gl)
    setups["git-loop hooks, in a loop worktree"] = wt

    samples = {name: [] for name in setups}
    for r in range(rounds + 1):
        for name, path in setups.items():
            start = time.perf_counter()
            run(["git", "commit", "-q", "--allow-empty", "-m", f"round {r}"], path)
            ms = (time.perf_counter() - start) * 1000
            if r:
                samples[name].append(ms)
    base = statistics.median(samples["no hook"])
    floor = statistics.median(samples["empty #!/bin/sh hook (floor)"])
    print(f"{rounds} interleaved rounds after one warm-up round; repositories in "
          f"{scratch or tempfile.gettempdir()}; pre-commit "
          f"{run([pre_commit, '--version'], root).stdout.split()[-1]}, lefthook "
          f"{run([lefthook, 'version'], root).stdout.strip()}\n")
    print("| git commit --allow-empty | median ms | vs no hook | vs empty-hook floor |")
    print("|---|---:|---:|---:|")
    for name, s in samples.items():
        m = statistics.median(s)
        print(f"| {name} | {m:.2f} | {m / base:.2f} | {m / floor:.2f} |")
finally:
    shutil.rmtree(root, ignore_errors=True)

#!/usr/bin/env bash
# Makes a repository with N tasks filed through the real `git loop task add`, a third of them
# depending on an earlier task. Usage: benches/gen-tasks.sh DIR [N] [GIT_LOOP_BINARY]
set -euo pipefail
dir=${1:?usage: gen-tasks.sh DIR [N] [BINARY]}
n=${2:-10000}
bin=${3:-$(cd "$(dirname "$0")/.." && pwd)/target/release/git-loop}
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.com
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.com

rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
git init -q -b main
git commit -q --allow-empty -m initial
body="Benchmark task: change one thing and prove it with a test, so that the loop has real work
to pick. Acceptance: the new test passes and nothing else changes in the repository."
ids=()
for ((i = 0; i < n; i++)); do
  if ((i % 3 == 2)); then
    dep=${ids[RANDOM % ${#ids[@]}]}
    ids+=("$("$bin" task add "task $i" --body "$body" --priority $((i % 5)) --after "$dep")")
  else
    ids+=("$("$bin" task add "task $i" --body "$body" --priority $((i % 5)))")
  fi
  # Keep ref listing cheap while generating, as `git gc --auto` would.
  if ((i % 1000 == 999)); then git pack-refs --all; fi
done
git pack-refs --all
echo "$n tasks in $dir"

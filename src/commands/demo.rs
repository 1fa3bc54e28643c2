//! `git loop demo` and the simulated agent it uses (`git loop sim-agent`, hidden).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::cli::Ctx;
use crate::error::{Class, LoopError};

/// A self-contained run: a repository with a tiny real project and a bare remote, six tasks
/// with dependencies, and a simulated agent that makes real commits.
///
/// The agent fails once with a transient error, hits a quota once, and once commits work that
/// the project's real test (the gate) rejects, so that the rework fixes it. The loop runs with
/// two workers until the oracle says the batch is done; then the status, the oracle's verdict
/// and the target's log are printed. Everything happens in a new temporary directory (kept, and
/// named at the end) or in --dir.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Make the demo here (a new or empty directory) instead of a temporary one
    #[arg(long, value_name = "D")]
    dir: Option<PathBuf>,
}

/// Act as the demo's agent (used by `git loop demo`).
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Where the agent remembers which scripted trouble it has had (outside the repository,
    /// which its sandbox keeps read-only; the demo's policy lists it in agent.writable)
    #[arg(long, value_name = "D")]
    state: PathBuf,
    /// The prompt file
    prompt: PathBuf,
}

const CALC: &str = "#!/bin/sh\n# The calculator: every function lives in lib/.\nfor f in \"$(dirname \"$0\")\"/lib/*.sh; do [ -e \"$f\" ] && . \"$f\"; done\n";
const TEST: &str = "#!/bin/sh\n# The project's test, and the loop's gate.\n. ./calc.sh\nfail=0\ncheck() { got=$(\"$1\" \"$2\" \"$3\"); [ \"$got\" = \"$4\" ] || { echo \"$1 $2 $3: got $got, want $4\"; fail=1; }; }\n\
for f in lib/*.sh; do [ -e \"$f\" ] || continue; n=$(basename \"$f\" .sh)\n  case $n in\n    add) check add 2 3 5 ;;\n    sub) check sub 7 4 3 ;;\n    mul) check mul 6 7 42 ;;\n    div) check div 42 6 7 ;;\n    pow) check pow 2 10 1024 ;;\n  esac\ndone\nexit $fail\n";

/// The backlog: (key, title, the keys it runs after).
const TASKS: &[(&str, &str, &[&str])] = &[
    ("add", "Add an add function", &[]),
    ("sub", "Add a sub function", &["add"]),
    ("mul", "Add a mul function", &["add"]),
    ("div", "Add a div function", &["mul"]),
    ("pow", "Add a pow function", &["mul"]),
    ("docs", "Document the functions", &["sub", "mul"]),
];

pub fn run(ctx: &mut Ctx<'_>, args: Args) -> Result<()> {
    let root = match args.dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            if std::fs::read_dir(&d)?.next().is_some() {
                return Err(crate::error::usage(format!("{} is not empty", d.display())).into());
            }
            d.canonicalize()?
        }
        None => tempfile::Builder::new()
            .prefix("git-loop-demo-")
            .tempdir()?
            .keep(),
    };
    let bin = std::env::current_exe().context("finding git-loop")?;
    let remote = root.join("remote.git");
    let repo = root.join("project");
    eprintln!("demo in {}", root.display());
    git(
        &root,
        &[
            "init",
            "-q",
            "--bare",
            "-b",
            "main",
            &remote.to_string_lossy(),
        ],
    )?;
    git(
        &root,
        &["init", "-q", "-b", "main", &repo.to_string_lossy()],
    )?;
    for (k, v) in [
        ("user.name", "git-loop demo"),
        ("user.email", "demo@git-loop.invalid"),
    ] {
        git(&repo, &["config", k, v])?;
    }
    std::fs::write(repo.join("calc.sh"), CALC)?;
    std::fs::write(repo.join("test.sh"), TEST)?;
    std::fs::create_dir_all(repo.join("loop"))?;
    std::fs::write(
        repo.join("loop/PROMPT.md"),
        "Task {id}: {title}\nattempt {attempt}\n{context}\nPrint {token} when done.\n",
    )?;
    std::fs::write(
        repo.join("policy.toml"),
        format!(
            "[loop]\ntarget = \"main\"\nremote = \"origin\"\nworkers = 2\n\n\
             [agent]\ncommand = [{bin}, \"sim-agent\", \"--state\", {state}, \"{{prompt_file}}\"]\n\
             writable = [{state}]\n\
             stall_timeout = \"20s\"\ntimeout = \"60s\"\nexit_grace = \"2s\"\nquota_cooldown = \"300ms\"\n\n\
             [triage]\nmin_body_chars = 0\nrequire_acceptance = false\n\n\
             [gate]\ncommands = [[\"sh\", \"test.sh\"]]\ntimeout = \"1m\"\n\n\
             [retry]\ninitial = \"200ms\"\nmax = \"1s\"\n\n\
             [lease]\nttl = \"5m\"\nheartbeat = \"5s\"\n\n\
             [runtime]\nmanifest = [\"policy.toml\", \"loop/PROMPT.md\", \"test.sh\", \"calc.sh\"]\n",
            bin = crate::policy::toml_string(&bin.to_string_lossy()),
            state = crate::policy::toml_string(&root.join("agent-state").to_string_lossy()),
        ),
    )?;
    // The agent's memory, which the policy lets it write from its sandbox (agent.writable).
    std::fs::create_dir_all(root.join("agent-state"))?;
    git(&repo, &["add", "-A"])?;
    git(
        &repo,
        &[
            "commit",
            "-q",
            "-m",
            "A tiny calculator, its test, and git-loop's policy",
        ],
    )?;
    git(
        &repo,
        &["remote", "add", "origin", &remote.to_string_lossy()],
    )?;
    git(&repo, &["push", "-q", "origin", "main"])?;
    // The person running the demo pins the finish line they just committed.
    {
        let r = crate::git::Repo::discover(&repo)?;
        let tip = r.read_ref("refs/heads/main")?.context("main")?;
        let line = crate::finish_line::at(&r, tip)?.context("a committed policy")?;
        crate::finish_line::write_pin(&r, None, &line, format!("main at {tip}"))?;
    }
    // The person's checkout moves off main: the loop promotes into it.
    git(&repo, &["checkout", "-q", "-b", "person"])?;
    let mut ids: Vec<(&str, String)> = Vec::new();
    for (key, title, after) in TASKS {
        let mut cmd = Command::new(&bin);
        cmd.arg("-C")
            .arg(&repo)
            .args(["task", "add", title, "--body"]);
        cmd.arg(format!(
            "Demo task `{key}`: {title}. Acceptance: `sh test.sh` passes."
        ));
        for dep in *after {
            let id = ids
                .iter()
                .find(|(k, _)| k == dep)
                .map(|(_, id)| id.clone())
                .context("dependency")?;
            cmd.arg("--after").arg(id);
        }
        let out = cmd.output()?;
        if !out.status.success() {
            anyhow::bail!(
                "filing a demo task failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        ids.push((key, String::from_utf8_lossy(&out.stdout).trim().to_string()));
    }
    eprintln!("six tasks filed; running `git loop start --once` with two workers\n");
    let status = Command::new(&bin)
        .arg("-C")
        .arg(&repo)
        .args(["start", "--once"])
        .status()?;
    writeln!(ctx.out)?;
    let show = |args: &[&str]| -> Result<String> {
        let out = Command::new(&bin)
            .arg("-C")
            .arg(&repo)
            .args(args)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    writeln!(ctx.out, "$ git loop status")?;
    write!(ctx.out, "{}", show(&["status"])?)?;
    writeln!(ctx.out, "\n$ git loop oracle")?;
    let oracle = Command::new(&bin)
        .arg("-C")
        .arg(&repo)
        .arg("oracle")
        .output()?;
    write!(ctx.out, "{}", String::from_utf8_lossy(&oracle.stdout))?;
    writeln!(ctx.out, "\n$ git log --oneline --graph origin/main")?;
    let log = Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args(["log", "--oneline", "--graph", "origin/main"])
        .output()?;
    write!(ctx.out, "{}", String::from_utf8_lossy(&log.stdout))?;
    writeln!(
        ctx.out,
        "\nThe demo is in {} (the project: {}).",
        root.display(),
        repo.display()
    )?;
    if !status.success() || !oracle.status.success() {
        return Err(LoopError::new(Class::Generic, "the demo did not finish").into());
    }
    Ok(())
}

fn git(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .context("running git")?;
    if !out.status.success() {
        anyhow::bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The simulated agent: works in its worktree (the current directory) from its prompt.
pub fn sim_agent(ctx: &mut Ctx<'_>, args: SimArgs) -> Result<()> {
    let prompt = std::fs::read_to_string(&args.prompt).context("reading the prompt")?;
    let title = prompt
        .lines()
        .next()
        .and_then(|l| l.split_once(": "))
        .map(|(_, t)| t)
        .unwrap_or_default();
    let attempt: u32 = prompt
        .lines()
        .find_map(|l| l.strip_prefix("attempt "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(1);
    let key = TASKS
        .iter()
        .find(|(_, t, _)| *t == title)
        .map(|(k, _, _)| *k)
        .unwrap_or("other");
    let out = &mut *ctx.out;
    writeln!(out, "sim-agent: task \"{title}\", attempt {attempt}")?;
    let marker_dir = args.state;
    std::fs::create_dir_all(&marker_dir)
        .with_context(|| format!("creating {}", marker_dir.display()))?;
    let once = |what: &str| -> bool {
        let marker = marker_dir.join(format!("{key}-{what}"));
        if marker.exists() {
            return false;
        }
        std::fs::write(&marker, "").is_ok()
    };
    if key == "div" && once("transient") {
        return Err(LoopError::new(
            Class::Generic,
            "connection reset by peer while fetching the model",
        )
        .into());
    }
    if key == "docs" && once("quota") {
        return Err(LoopError::new(Class::Generic, "rate limit exceeded; try again later").into());
    }
    let body = match key {
        "add" => "add() { echo $(($1 + $2)); }\n".to_string(),
        "sub" => "sub() { echo $(($1 - $2)); }\n".to_string(),
        "mul" => "mul() { echo $(($1 * $2)); }\n".to_string(),
        "div" => "div() { echo $(($1 / $2)); }\n".to_string(),
        // The first attempt gets it wrong; the gate catches it and the rework fixes it.
        "pow" if attempt == 1 => "pow() { echo $(($1 * $2)); }\n".to_string(),
        "pow" => "pow() { r=1; i=0; while [ $i -lt $2 ]; do r=$((r * $1)); i=$((i + 1)); done; echo $r; }\n".to_string(),
        _ => String::new(),
    };
    if key == "docs" {
        std::fs::create_dir_all("docs")?;
        std::fs::write(
            "docs/functions.md",
            "# Functions\n\nadd, sub, mul, div and pow, in lib/.\n",
        )?;
    } else {
        std::fs::create_dir_all("lib")?;
        std::fs::write(format!("lib/{key}.sh"), body)?;
    }
    let add = Command::new("git").args(["add", "-A"]).status()?;
    let commit = Command::new("git")
        .args([
            "commit",
            "-q",
            "-m",
            &format!("{title} (attempt {attempt})"),
        ])
        .status()?;
    if !add.success() || !commit.success() {
        anyhow::bail!("sim-agent could not commit");
    }
    writeln!(out, "Done. **LOOP_DONE**")?;
    Ok(())
}

//! A hermetic test environment: real repositories in temp dirs, the real `git`, the real binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_git-loop");

/// A body that passes the default `[triage]` (long enough, says how done is checked).
pub const GOOD_BODY: &str = "Add a --verbose flag to the report command that prints each \
    input file as it is read, so that slow inputs can be found quickly.\n\n\
    Acceptance: `cargo test report_verbose` passes and the flag is documented in --help.";

/// Sets the variables that make git and git-loop independent of the machine they run on.
pub fn hermetic(cmd: &mut Command, home: &Path) {
    for var in [
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_COMMON_DIR",
        "GIT_LOOP_LOG",
        "GIT_LOOP",
        "EMAIL",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Test Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.com")
        .env("GIT_COMMITTER_NAME", "Test Committer")
        .env("GIT_COMMITTER_EMAIL", "committer@example.com")
        .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
        .env("LC_ALL", "C")
        .env("TZ", "UTC");
}

/// Writes an executable script.
pub fn write_executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write a script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Puts a `git` in `bin` that runs the shell `prelude` (which sees git's arguments as `$@`),
/// then the real git. Returns a PATH with `bin` first.
pub fn git_wrapper(bin: &Path, prelude: &str) -> String {
    let real = Command::new("sh")
        .args(["-c", "command -v git"])
        .output()
        .expect("find git");
    let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
    write_executable(
        &bin.join("git"),
        &format!("#!/bin/sh\n{prelude}\nexec '{real}' \"$@\"\n"),
    );
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// What a process did.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub raw_stdout: Vec<u8>,
}

impl Out {
    fn from(o: Output) -> Out {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            raw_stdout: o.stdout,
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }
}

pub struct TestRepo {
    _tmp: TempDir,
    pub root: PathBuf,
    pub home: PathBuf,
}

impl TestRepo {
    /// A repository on `main` with one commit.
    pub fn new() -> TestRepo {
        TestRepo::with_init(&["init", "-q", "-b", "main"])
    }

    /// A repository made by `git <init_args>` with one commit.
    pub fn with_init(init_args: &[&str]) -> TestRepo {
        let tmp = tempfile::tempdir().expect("temp dir");
        let home = tmp.path().join("home");
        let root = tmp.path().join("repo");
        std::fs::create_dir_all(&home).expect("home");
        std::fs::create_dir_all(&root).expect("repo");
        let repo = TestRepo {
            _tmp: tmp,
            root,
            home,
        };
        repo.git(init_args);
        std::fs::write(repo.root.join("README"), "hello\n").expect("write");
        repo.git(&["add", "README"]);
        repo.git(&["commit", "-q", "-m", "initial"]);
        repo
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) {
        let path = self.root.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        std::fs::write(path, contents).expect("write");
    }

    /// Runs git; panics unless it succeeds. Returns stdout.
    /// A bare repository beside this one, added as `origin`, with `main` pushed to it.
    pub fn add_bare_remote(&self) -> PathBuf {
        let path = self.root.parent().expect("tmp").join("remote.git");
        let shown = path.to_string_lossy();
        self.git(&["init", "-q", "--bare", "-b", "main", &shown]);
        self.git(&["remote", "add", "origin", &shown]);
        self.git(&["push", "-q", "origin", "main"]);
        path
    }

    pub fn git(&self, args: &[&str]) -> String {
        let out = self.git_out(args);
        assert_eq!(out.code, 0, "git {args:?} failed: {}", out.stderr);
        out.stdout
    }

    /// The state record `name` (`lease.toml`, `heartbeat.toml`, …) of the record commit `rev`:
    /// a blob in its tree, or, as older versions wrote it, a section of its message.
    pub fn record(&self, rev: &str, name: &str) -> Option<String> {
        let blob = self.git_out(&["show", &format!("{rev}:{name}")]);
        if blob.code == 0 {
            return Some(blob.stdout);
        }
        let message = self.git_out(&["log", "-1", "--format=%B", rev]).stdout;
        let start = message.find(&format!("--- {name}\n"))? + name.len() + 5;
        let len = message[start..].find("\n---\n")? + 1;
        Some(message[start..start + len].to_string())
    }

    /// The file at `path` in `rev` (`git show <rev>:<path>`).
    pub fn show(&self, rev: &str, path: &str) -> String {
        self.git(&["show", &format!("{rev}:{path}")])
    }

    pub fn git_out(&self, args: &[&str]) -> Out {
        let mut cmd = Command::new("git");
        cmd.args(args).current_dir(&self.root);
        hermetic(&mut cmd, &self.home);
        Out::from(cmd.output().expect("run git"))
    }

    /// Runs git with `input` on stdin; panics unless it succeeds.
    pub fn git_stdin(&self, args: &[&str], input: &[u8]) -> String {
        let mut cmd = Command::new("git");
        cmd.args(args).current_dir(&self.root);
        hermetic(&mut cmd, &self.home);
        let out = run_with_stdin(cmd, input);
        assert_eq!(out.code, 0, "git {args:?} failed: {}", out.stderr);
        out.stdout
    }

    /// A `git-loop` command in this repository, not yet run.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args).current_dir(&self.root);
        hermetic(&mut cmd, &self.home);
        cmd
    }

    /// Runs git-loop and returns what it did, whatever its exit code.
    pub fn run(&self, args: &[&str]) -> Out {
        let mut cmd = self.cmd(args);
        cmd.stdin(Stdio::null());
        Out::from(cmd.output().expect("run git-loop"))
    }

    /// Runs git-loop in another directory, with this repository's hermetic environment.
    pub fn run_at(&self, dir: &Path, args: &[&str]) -> Out {
        let mut cmd = Command::new(BIN);
        cmd.args(args).current_dir(dir).stdin(Stdio::null());
        hermetic(&mut cmd, &self.home);
        Out::from(cmd.output().expect("run git-loop"))
    }

    /// Runs git in another directory; panics unless it succeeds. Returns stdout.
    pub fn git_at(&self, dir: &Path, args: &[&str]) -> String {
        let mut cmd = Command::new("git");
        cmd.args(args).current_dir(dir);
        hermetic(&mut cmd, &self.home);
        let out = Out::from(cmd.output().expect("run git"));
        assert_eq!(
            out.code,
            0,
            "git {args:?} in {} failed: {}",
            dir.display(),
            out.stderr
        );
        out.stdout
    }

    /// Runs git-loop with `input` on stdin.
    pub fn run_stdin(&self, args: &[&str], input: &[u8]) -> Out {
        run_with_stdin(self.cmd(args), input)
    }

    /// Runs git-loop; panics unless it exits 0. Returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.code, 0,
            "git-loop {args:?} exited {}:\n{}",
            out.code, out.stderr
        );
        out.stdout
    }

    /// Runs git-loop; panics unless it exits `code`. Returns what it did.
    pub fn fails(&self, args: &[&str], code: i32) -> Out {
        let out = self.run(args);
        assert_eq!(
            out.code, code,
            "git-loop {args:?} exited {} (wanted {code}):\nstdout: {}\nstderr: {}",
            out.code, out.stdout, out.stderr
        );
        out
    }

    /// Files a task with a body that passes triage; returns its full id.
    pub fn add(&self, title: &str, extra: &[&str]) -> String {
        let mut args = vec!["task", "add", title, "--body", GOOD_BODY];
        args.extend_from_slice(extra);
        let id = self.ok(&args).trim().to_string();
        assert_eq!(id.len(), 32, "task add printed {id:?}");
        id
    }

    /// The refs under `prefix`, as `name oid` lines.
    pub fn refs(&self, prefix: &str) -> Vec<String> {
        self.git(&["for-each-ref", "--format=%(refname) %(objectname)", prefix])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The commit a task ref points at.
    pub fn task_tip(&self, id: &str) -> String {
        self.git(&["rev-parse", &format!("refs/loop/tasks/{id}")])
            .trim()
            .to_string()
    }

    /// The stored `task.toml` of a task.
    pub fn task_doc(&self, id: &str) -> String {
        self.git(&[
            "cat-file",
            "blob",
            &format!("refs/loop/tasks/{id}:task.toml"),
        ])
    }

    /// Rewrites a task's document with plain git plumbing (as another tool might), replacing
    /// the line that starts with `key =` (or appending it).
    pub fn poke(&self, id: &str, key: &str, value: &str) {
        let name = format!("refs/loop/tasks/{id}");
        let old = self.task_tip(id);
        let mut doc: Vec<String> = self
            .task_doc(id)
            .lines()
            .filter(|l| !l.starts_with(&format!("{key} =")))
            .map(str::to_string)
            .collect();
        doc.insert(1, format!("{key} = {value}"));
        let blob = self.git_stdin(
            &["hash-object", "-w", "--stdin"],
            (doc.join("\n") + "\n").as_bytes(),
        );
        let listing = self.git(&["ls-tree", &name]);
        let tree_input: String = listing
            .lines()
            .map(|l| {
                if l.ends_with("\ttask.toml") {
                    format!("100644 blob {}\ttask.toml\n", blob.trim())
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        let tree = self.git_stdin(&["mktree"], tree_input.as_bytes());
        let commit = self.git(&["commit-tree", tree.trim(), "-p", &old, "-m", "test: poke"]);
        self.git(&["update-ref", &name, commit.trim(), &old]);
    }

    /// Where the runner puts the worktree of a task.
    pub fn worktree_path(&self, short: &str) -> PathBuf {
        self.root.join(".git/loop/worktrees").join(short)
    }

    /// Makes the runner's worktree of task `id`, on a new branch `loop/<short>` from main.
    pub fn add_task_worktree(&self, id: &str) -> PathBuf {
        let short = &id[..7];
        let wt = self.worktree_path(short);
        let wt_arg = wt.to_string_lossy().into_owned();
        let branch = format!("loop/{short}");
        self.git(&["worktree", "add", "-q", "-b", &branch, &wt_arg, "main"]);
        wt
    }

    /// Makes the runner's worktree of task `id` as an add cut short by a kill leaves it: still
    /// marked `locked` ("initializing"), with no index and only part of its files.
    pub fn half_made_task_worktree(&self, id: &str) -> PathBuf {
        let wt = self.add_task_worktree(id);
        let admin = self.root.join(".git/worktrees").join(&id[..7]);
        std::fs::write(admin.join("locked"), "initializing\n").expect("lock");
        std::fs::remove_file(admin.join("index")).expect("rm index");
        std::fs::remove_file(wt.join("README")).expect("rm README");
        wt
    }

    /// The paths of the repository's worktrees, as `git worktree list` gives them.
    pub fn worktree_list(&self) -> Vec<String> {
        self.git(&["worktree", "list", "--porcelain"])
            .lines()
            .filter_map(|l| l.strip_prefix("worktree "))
            .map(str::to_string)
            .collect()
    }

    /// Sets a task's state with plain git, as a promotion would have.
    pub fn set_state(&self, id: &str, state: &str) {
        self.poke(id, "state", &format!("\"{state}\""));
    }
}

fn run_with_stdin(mut cmd: Command, input: &[u8]) -> Out {
    use std::io::Write;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait");
    let _ = writer.join();
    Out::from(out)
}

/// The ids in a JSON array of tasks, in order.
pub fn ids_of(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_string())
        .collect()
}

/// A git-loop process a test started in the background: killed (by its pid) and waited for
/// when the test ends, whether its assertions passed or not, so that a failing test leaves no
/// runner behind.
pub struct Spawned {
    pub child: std::process::Child,
    /// Its stderr, written to a file so that a test can show it.
    pub stderr: PathBuf,
}

impl Spawned {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (what `git loop stop` and service managers send) and waits for the exit.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        self.child.wait().ok().and_then(|s| s.code())
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl TestRepo {
    /// Starts `git-loop <args>` in the background (stdin closed, stderr to a file).
    pub fn spawn(&self, args: &[&str]) -> Spawned {
        self.spawn_at(&self.root, args)
    }

    /// Like [`TestRepo::spawn`], in another directory (another clone), with this repository's
    /// hermetic environment.
    pub fn spawn_at(&self, dir: &Path, args: &[&str]) -> Spawned {
        self.spawn_through(dir, &[], args)
    }

    /// Like [`TestRepo::spawn_at`], started through `wrapper` (a program and its arguments,
    /// which end by running the rest of their arguments: `unshare …`, `faketime …`).
    pub fn spawn_through(&self, dir: &Path, wrapper: &[&str], args: &[&str]) -> Spawned {
        let stderr = self.root.parent().expect("tmp").join(format!(
            "stderr-{}-{}.txt",
            args.join("-").replace('/', "_"),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let file = std::fs::File::create(&stderr).expect("stderr file");
        let mut cmd = self.cmd(args);
        if let Some((program, rest)) = wrapper.split_first() {
            let inner = cmd;
            cmd = Command::new(program);
            cmd.args(rest)
                .arg(inner.get_program())
                .args(inner.get_args());
            for (key, value) in inner.get_envs() {
                match value {
                    Some(value) => cmd.env(key, value),
                    None => cmd.env_remove(key),
                };
            }
        }
        cmd.current_dir(dir);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn git-loop");
        Spawned { child, stderr }
    }
}

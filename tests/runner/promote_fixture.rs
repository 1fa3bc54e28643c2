//! A repository with a policy, optionally a bare remote, and a task whose branch holds work.

use std::path::{Path, PathBuf};

use crate::common::{Out, TestRepo};

pub struct Fixture {
    pub repo: TestRepo,
    pub remote: Option<PathBuf>,
    pub id: String,
    pub strategy: String,
}

pub struct Config<'a> {
    pub strategy: &'a str,
    pub remote: bool,
    /// A commit on main after the branch was made (so that no-ff and squash really merge).
    pub diverge: bool,
    pub gate: &'a str,
    pub verify: &'a str,
    /// Leave uncommitted and untracked files in the task's worktree.
    pub dirty_worktree: bool,
}

impl Default for Config<'_> {
    fn default() -> Self {
        Config {
            strategy: "no-ff",
            remote: false,
            diverge: false,
            gate: "[]",
            verify: "[[\"sh\", \"-c\", \"test -f README\"]]",
            dirty_worktree: false,
        }
    }
}

pub fn policy_text(c: &Config<'_>) -> String {
    format!(
        "[loop]\ntarget = \"main\"\n{remote}\n[agent]\ncommand = [\"true\"]\n\n[gate]\ncommands = {gate}\n\n\
         [promote]\nstrategy = \"{strategy}\"\n\n[verify]\ncommands = {verify}\n",
        remote = if c.remote {
            "remote = \"origin\"\n"
        } else {
            ""
        },
        gate = c.gate,
        strategy = c.strategy,
        verify = c.verify,
    )
}

impl Fixture {
    pub fn new(c: Config<'_>) -> Fixture {
        let repo = TestRepo::new();
        repo.write("policy.toml", policy_text(&c));
        repo.write("loop/PROMPT.md", "Do {title}.\n");
        repo.git(&["add", "policy.toml", "loop/PROMPT.md"]);
        repo.git(&["commit", "-q", "-m", "set up git-loop"]);
        let remote = c.remote.then(|| repo.add_bare_remote());
        repo.ok(&["init", "--repin"]);
        let id = repo.add("Add the feature", &[]);
        let wt = repo.add_task_worktree(&id);
        let in_wt = |args: &[&str]| {
            let mut full = vec!["-C", wt.to_str().expect("utf-8 path")];
            full.extend_from_slice(args);
            repo.git(&full);
        };
        std::fs::write(wt.join("feature.txt"), "the feature\n").expect("write");
        in_wt(&["add", "feature.txt"]);
        in_wt(&["commit", "-q", "-m", "Add the feature"]);
        std::fs::write(wt.join("feature.txt"), "the feature, second line\nmore\n").expect("write");
        in_wt(&["commit", "-q", "-am", "Improve the feature"]);
        if c.dirty_worktree {
            std::fs::write(wt.join("feature.txt"), "uncommitted edit\n").expect("write");
            std::fs::write(wt.join("notes.txt"), "untracked notes\n").expect("write");
        }
        if c.diverge {
            repo.write("other.txt", "someone else's work\n");
            repo.git(&["add", "other.txt"]);
            repo.git(&["commit", "-q", "-m", "Other work on main"]);
            if c.remote {
                repo.git(&["push", "-q", "origin", "main"]);
            }
        }
        Fixture {
            repo,
            remote,
            id,
            strategy: c.strategy.to_string(),
        }
    }

    pub fn short(&self) -> &str {
        &self.id[..7]
    }

    pub fn promote(&self) -> Out {
        self.repo.run(&["promote", self.short()])
    }

    pub fn promote_env(&self, key: &str, value: &str) -> Out {
        let mut cmd = self.repo.cmd(&["promote", self.short()]);
        cmd.env(key, value).stdin(std::process::Stdio::null());
        let out = cmd.output().expect("run promote");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            raw_stdout: out.stdout,
        }
    }

    /// Runs git in `dir` (another clone), with this repository's hermetic environment.
    pub fn git_in(&self, dir: &Path, args: &[&str]) -> String {
        let mut full = vec!["-C", dir.to_str().expect("utf-8")];
        full.extend_from_slice(args);
        self.repo.git(&full)
    }

    /// A clone of the remote beside the repository: someone else's, to push from.
    pub fn other_clone(&self) -> PathBuf {
        let remote = self.remote.as_ref().expect("a remote");
        let other = self.repo.root.parent().expect("tmp").join("other");
        self.repo.git(&[
            "clone",
            "-q",
            &remote.to_string_lossy(),
            &other.to_string_lossy(),
        ]);
        other
    }

    /// The remote's main, or the local one without a remote.
    pub fn target(&self) -> String {
        match &self.remote {
            Some(r) => self
                .repo
                .git(&["--git-dir", &r.to_string_lossy(), "rev-parse", "main"]),
            None => self.repo.git(&["rev-parse", "main"]),
        }
        .trim()
        .to_string()
    }

    /// Every promise of a finished promotion, checked with plain git.
    pub fn assert_converged(&self) {
        let repo = &self.repo;
        let id = &self.id;
        let target = self.target();
        if let Some(remote) = &self.remote {
            let local = repo.git(&["rev-parse", "main"]);
            assert_eq!(local.trim(), target, "the local main follows the remote's");
            let branches = repo.git(&[
                "--git-dir",
                &remote.to_string_lossy(),
                "branch",
                "--format=%(refname)",
            ]);
            assert_eq!(
                branches.trim(),
                "refs/heads/main",
                "the remote task branch is deleted"
            );
        }
        // Exactly one merge of the task in the target's history.
        let trailers = repo
            .git(&[
                "log",
                "--format=%H %(trailers:key=Loop-Task,valueonly)",
                &target,
            ])
            .lines()
            .filter(|l| l.contains(id.as_str()))
            .count();
        let expected = if self.strategy == "ff-only" { 0 } else { 1 };
        assert_eq!(trailers, expected, "merges of the task in {target}");
        // No lost commit: the work is in the target.
        let feature = repo.show(&target, "feature.txt");
        assert_eq!(feature, "the feature, second line\nmore\n");
        let show = repo.run(&["task", "show", id, "--json"]).json();
        assert_eq!(show["state"], "done", "{show}");
        let promoted = show["promoted_commit"]
            .as_str()
            .expect("promoted commit")
            .to_string();
        assert!(
            repo.git_out(&["merge-base", "--is-ancestor", &promoted, &target])
                .code
                == 0,
            "the promoted commit is in the target"
        );
        let note = repo.git(&["notes", "--ref=refs/notes/loop", "show", &promoted]);
        assert!(
            note.contains(&format!("task: {id}"))
                && note.contains(&format!("strategy: {}", self.strategy)),
            "{note}"
        );
        // The approved commits are never lost: they are in the target, or (after a squash,
        // which leaves no ancestry) in a rescue ref saved before the branch was deleted.
        let source = show["approved"].as_str().expect("approved").to_string();
        let holders = repo.git(&[
            "for-each-ref",
            "--format=%(refname)",
            "--contains",
            &source,
            "refs/heads/main",
            "refs/remotes/",
            "refs/loop/rescue/",
        ]);
        assert!(
            !holders.trim().is_empty(),
            "the approved commit {source} is kept"
        );
        if self.strategy == "squash" {
            assert!(
                holders.contains(&format!("refs/loop/rescue/{id}/")),
                "{holders}"
            );
        }
        if self.strategy != "squash" {
            let source = show["approved"].as_str().expect("approved");
            assert_eq!(
                repo.git_out(&["merge-base", "--is-ancestor", source, &target])
                    .code,
                0
            );
        }
        // The worktree and the local branch are gone.
        let wt = repo.worktree_path(&id[..7]);
        assert!(!wt.exists(), "the task worktree is removed");
        let listed = repo.git(&["worktree", "list"]);
        assert!(
            !listed.contains(&id[..7]),
            "worktree metadata pruned: {listed}"
        );
        let checkpoints = repo.git(&[
            "log",
            "--first-parent",
            "--format=%s",
            &format!("refs/loop/promote/{id}"),
        ]);
        assert_eq!(
            repo.git_out(&[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("refs/heads/loop/{}", &id[..7])
            ])
            .code,
            1,
            "the task branch is deleted; worktrees:\n{listed}\ncheckpoints:\n{checkpoints}"
        );
        // The checkpoints are complete, in order.
        let doc = repo.show(&format!("refs/loop/promote/{id}"), "promote.toml");
        assert!(
            doc.contains("completed = [\"preflight\", \"push_source\", \"merge\", \"push_target\", \"verify\", \"cleanup\", \"delete_remote_branch\", \"done\"]"),
            "{doc}"
        );
        // Running again changes nothing.
        let before = repo.git(&["for-each-ref"]);
        let again = self.promote();
        assert_eq!(again.code, 0, "{}", again.stderr);
        assert!(
            again.stderr.contains("already promoted"),
            "{}",
            again.stderr
        );
        assert_eq!(
            repo.git(&["for-each-ref"]),
            before,
            "a run after success changes no ref"
        );
    }
}

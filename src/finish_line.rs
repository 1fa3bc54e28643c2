//! The frozen finish line (SPEC §1.7, §9): the protected policy sections (`[gate]`,
//! `[review]`, `[verify]`, `[trust]`) and the files of the repository they run or name — each
//! command's program when it lives in the repository, the script a shell or an interpreter is
//! given, the first word of each command of a `sh -c` string, the allowed signers of tasks —
//! with every path `gate.protected_paths` lists, as committed on the target, pinned in
//! `refs/loop/oracle`.
//!
//! Judging, promotion and verify take the protected sections from the pin, and only when the
//! target's committed policy and files still match it ([`frozen`]); the gates run with the
//! target's versions of the pinned files ([`restore`]); a branch that changes any of it is
//! refused ([`branch_changes`]). Only a person re-pins (`git loop init --repin`).

use std::collections::BTreeMap;

use anyhow::Result;
use gix::ObjectId;
use serde::{Deserialize, Serialize};

use crate::error::{Class, LoopError};
use crate::git::Repo;
use crate::git::cli::Git;
use crate::policy::{
    FILE, GateSection, PROTECTED_AGENT_KEYS, PROTECTED_SECTIONS, Policy, ReviewSection,
    TrustSection, VerifySection,
};
use crate::refs;
use crate::time::Timestamp;

const RECORD: &str = "oracle.toml";

/// What a pinned path held: `<mode> <object id>`, or this when the commit had nothing there.
const ABSENT: &str = "absent";

/// The pin, `refs/loop/oracle`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pin {
    /// The protected sections, normalised (see [`protected_sections`]).
    pub sections: String,
    /// The target commit they were read from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The pinned files and directories, by path: `<mode> <id>` at `commit`, or `absent`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
    /// Where they were read: `<target> at <commit>`.
    pub source: String,
    pub by: String,
    pub at: Timestamp,
}

/// The finish line as one commit has it.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub commit: ObjectId,
    pub sections: String,
    pub files: BTreeMap<String, String>,
}

/// The protected sections, read.
#[derive(Clone, Debug, PartialEq)]
pub struct Sections {
    pub gate: GateSection,
    pub review: ReviewSection,
    pub verify: VerifySection,
    /// `agent.sandbox` and `agent.writable`: what agents run in is part of the finish line,
    /// so that no branch can open the sandbox for the runs after it.
    pub sandbox: crate::sandbox::Mode,
    pub writable: Vec<String>,
    /// Who may give an agent work: the allowed signers of tasks.
    pub trust: TrustSection,
}

/// The finish line to judge, promote and verify by: the pinned sections, the pinned paths, and
/// the target tip found to match the pin.
#[derive(Clone, Debug)]
pub struct Frozen {
    pub sections: Sections,
    pub paths: Vec<String>,
    pub target: ObjectId,
}

/// The protected sections of a policy file, normalised, for comparison and diffs.
pub fn protected_sections(file: Option<&[u8]>) -> String {
    let Some(bytes) = file else {
        return String::new();
    };
    let text = String::from_utf8_lossy(bytes);
    let Ok(table) = text.parse::<toml::Table>() else {
        // Unparsable: compare the raw text, so that any change shows.
        return text.into_owned();
    };
    let mut out = String::new();
    for section in PROTECTED_SECTIONS {
        if let Some(value) = table.get(*section) {
            let mut one = toml::Table::new();
            one.insert((*section).to_string(), value.clone());
            out.push_str(&toml::to_string(&one).unwrap_or_default());
        }
    }
    // And the keys of [agent] that say what agents run in.
    let mut agent = toml::Table::new();
    for key in PROTECTED_AGENT_KEYS {
        if let Some(value) = table.get("agent").and_then(|a| a.get(*key)) {
            agent.insert((*key).to_string(), value.clone());
        }
    }
    if !agent.is_empty() {
        let mut one = toml::Table::new();
        one.insert("agent".to_string(), toml::Value::Table(agent));
        out.push_str(&toml::to_string(&one).unwrap_or_default());
    }
    out
}

impl Sections {
    /// Reads normalised protected sections (what a pin holds), with the policy's own checks.
    pub fn parse(sections: &str) -> Result<Sections, LoopError> {
        // The sections are checked as the rest of a policy would be: they are one, with an
        // agent command that is never run.
        let unreadable = |e: &dyn std::fmt::Display| {
            LoopError::new(
                Class::Config,
                format!("refs/loop/oracle holds sections that do not parse: {e}"),
            )
            .with_hint("a person re-pins with `git loop init --repin`")
        };
        let mut table: toml::Table = sections.parse().map_err(|e| unreadable(&e))?;
        let agent = table
            .entry("agent")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(agent) = agent.as_table_mut() else {
            return Err(unreadable(&"[agent] is not a table"));
        };
        agent.insert(
            "command".into(),
            toml::Value::Array(vec![toml::Value::String("-".into())]),
        );
        let text = toml::to_string(&table).map_err(|e| unreadable(&e))?;
        let policy = Policy::parse(&text, "the pinned finish line").map_err(|e| {
            LoopError::new(
                Class::Config,
                format!("refs/loop/oracle holds sections that do not parse: {e}"),
            )
            .with_hint("a person re-pins with `git loop init --repin`")
        })?;
        Ok(Sections {
            gate: policy.gate,
            review: policy.review,
            verify: policy.verify,
            sandbox: policy.agent.sandbox,
            writable: policy.agent.writable,
            trust: policy.trust,
        })
    }

    /// Every command of the finish line.
    fn commands(&self) -> impl Iterator<Item = &Vec<String>> {
        self.gate
            .commands
            .iter()
            .chain(std::iter::once(&self.review.command))
            .chain(self.verify.commands.iter())
            .filter(|argv| !argv.is_empty())
    }

    /// The repository paths the finish line runs or names: the programs, scripts and shell
    /// commands that look like paths inside the repository, and `gate.protected_paths`.
    pub fn named_paths(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut add = |p: &str| {
            if let Some(p) = repo_path(p)
                && !out.contains(&p)
            {
                out.push(p);
            }
        };
        for argv in self.commands() {
            let program = argv[0].as_str();
            if program.contains('/') {
                add(program);
            }
            let name = program.rsplit('/').next().unwrap_or(program);
            let shell = matches!(name, "sh" | "bash" | "dash" | "zsh" | "ksh");
            let python = matches!(name, "python" | "python3");
            let interpreter = shell
                || python
                || matches!(name, "node" | "ruby" | "perl" | "deno" | "bun" | "make");
            let mut args = argv[1..].iter().map(String::as_str).peekable();
            while let Some(arg) = args.next() {
                if shell && arg == "-c" {
                    if let Some(script) = args.next() {
                        for first in first_words(script) {
                            if first.contains('/') {
                                add(first);
                            }
                        }
                    }
                    break;
                }
                if python && arg == "-m" {
                    // A module, not a file.
                    break;
                }
                if arg == "-f" && name == "make" {
                    if let Some(file) = args.next() {
                        add(file);
                    }
                    continue;
                }
                if arg.starts_with('-') {
                    continue;
                }
                if interpreter && name != "make" {
                    add(arg);
                }
                break;
            }
        }
        for p in &self.gate.protected_paths {
            add(p);
        }
        if let Some(p) = &self.trust.signers {
            add(p);
        }
        out
    }
}

/// `p` as a path relative to the repository root, if it is one (`./x` → `x`).
fn repo_path(p: &str) -> Option<String> {
    let p = p.trim().trim_start_matches("./");
    let p = p.trim_end_matches('/');
    let ok = !p.is_empty()
        && !p.starts_with('/')
        && !p.starts_with('-')
        && !p.contains('{')
        && !p.contains(char::is_whitespace)
        && !p.split('/').any(|c| c == ".." || c.is_empty());
    ok.then(|| p.to_string())
}

/// The first word of each command of a shell string (after `;`, `&&`, `||`, `|`, `(`).
fn first_words(script: &str) -> Vec<&str> {
    script
        .split(['\n', ';', '&', '|', '(', ')'])
        .filter_map(|cmd| {
            cmd.split_whitespace()
                .find(|w| !w.contains('=') || w.starts_with("./"))
        })
        .collect()
}

/// The finish line committed at `commit`, if it has a policy.toml.
pub fn at(repo: &Repo, commit: ObjectId) -> Result<Option<Line>> {
    let Some(file) = repo.file_at(commit, FILE)? else {
        return Ok(None);
    };
    let sections = protected_sections(Some(&file));
    let mut files = BTreeMap::new();
    // A broken policy pins its raw text (so any change shows) and no files.
    if let Ok(read) = Sections::parse(&sections) {
        for path in read.named_paths() {
            let held = match repo.entry_at(commit, &path)? {
                Some((id, mode)) => format!("{mode} {id}"),
                None => ABSENT.to_string(),
            };
            files.insert(path, held);
        }
    }
    Ok(Some(Line {
        commit,
        sections,
        files,
    }))
}

/// The pin and its commit, if there is one.
pub fn read_pin(repo: &Repo) -> Result<Option<(ObjectId, std::result::Result<Pin, String>)>> {
    let Some(tip) = repo.read_ref(refs::ORACLE)? else {
        return Ok(None);
    };
    Ok(Some((tip, crate::record::read(repo, tip, RECORD))))
}

/// Pins `line` (replacing the pin at `old`, if any) by compare-and-swap.
pub fn write_pin(repo: &Repo, old: Option<ObjectId>, line: &Line, source: String) -> Result<bool> {
    let by = repo
        .config_string("user.name")
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into());
    let pin = Pin {
        sections: line.sections.clone(),
        commit: Some(line.commit.to_string()),
        files: line.files.clone(),
        source,
        by,
        at: Timestamp::now(),
    };
    let new = crate::record::write(
        repo,
        "oracle: pinned the finish line",
        RECORD,
        &pin,
        None,
        &[],
    )?;
    let edit = match old {
        Some(old) => crate::git::Cas::Update {
            name: refs::ORACLE.into(),
            old,
            new,
        },
        None => crate::git::Cas::Create {
            name: refs::ORACLE.into(),
            new,
        },
    };
    Ok(repo.cas(&[edit])? == crate::git::CasOutcome::Applied)
}

/// How `line` differs from `pin`, as a diff of the sections and a line per pinned path that
/// changed; `None` when they are the same.
pub fn mismatch(pin: &Pin, line: &Line, label: &str) -> Option<String> {
    let mut out = String::new();
    if pin.sections != line.sections {
        out.push_str(
            &similar::TextDiff::from_lines(&pin.sections, &line.sections)
                .unified_diff()
                .header("pinned (refs/loop/oracle)", &format!("{label}:{FILE}"))
                .to_string(),
        );
    }
    let paths: std::collections::BTreeSet<&String> =
        pin.files.keys().chain(line.files.keys()).collect();
    for path in paths {
        let was = pin.files.get(path).map_or(ABSENT, String::as_str);
        let now = line.files.get(path).map_or(ABSENT, String::as_str);
        // A path the pin does not know but the target has absent is no change; one the pin
        // does not know, now present (the sections began naming it), is.
        if was != now {
            out.push_str(&format!("{path}: pinned {was}, {label} has {now}\n"));
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The finish line to judge and promote by: the pin, once the target's tip (as last seen)
/// is found to match it. A missing, unreadable or mismatched pin is a `config` error — the
/// finish line changed outside git-loop — naming the diff and the commit that changed it.
pub fn frozen(repo: &Repo, policy: &Policy) -> Result<Frozen> {
    let target = &policy.loop_.target;
    let Some((tip, shown)) = repo.last_seen_tip(policy.loop_.remote.as_deref(), target)? else {
        return Err(LoopError::new(
            Class::Config,
            format!("the target branch {target} does not exist"),
        )
        .into());
    };
    let pin = match read_pin(repo)? {
        None => {
            return Err(LoopError::new(
                Class::Config,
                format!(
                    "the finish line is not pinned: {} does not exist",
                    refs::ORACLE
                ),
            )
            .with_hint(format!(
                "a person pins what {target} has committed with `git loop init --repin`"
            ))
            .into());
        }
        Some((_, Err(why))) => {
            return Err(LoopError::new(
                Class::Config,
                format!("{} is unreadable: {why}", refs::ORACLE),
            )
            .with_hint(format!(
                "a person re-pins what {target} has committed with `git loop init --repin`"
            ))
            .into());
        }
        Some((_, Ok(pin))) => pin,
    };
    let Some(line) = at(repo, tip)? else {
        return Err(
            LoopError::new(Class::Config, format!("{shown} has no committed {FILE}")).into(),
        );
    };
    if let Some(diff) = mismatch(&pin, &line, &shown) {
        return Err(changed_outside(repo, &pin, &line, &shown, &diff).into());
    }
    let sections = Sections::parse(&pin.sections)?;
    Ok(Frozen {
        sections,
        paths: pin.files.keys().cloned().collect(),
        target: tip,
    })
}

/// The error for a target whose finish line no longer matches the pin: the diff, and the
/// commit that changed it.
pub fn changed_outside(repo: &Repo, pin: &Pin, line: &Line, shown: &str, diff: &str) -> LoopError {
    let by = changed_by(repo, pin, line)
        .map(|c| format!(" by {c}"))
        .unwrap_or_default();
    LoopError::new(
        Class::Config,
        format!(
            "the finish line changed outside git-loop: {shown} at {} differs from the pin{by}:\n{}",
            crate::ids::short(&line.commit.to_string()),
            diff.trim_end()
        ),
    )
    .with_hint(
        "if a person made this change on purpose, they accept it with `git loop init --repin`",
    )
}

/// The newest commit between the pinned one and `line`'s that touched the finish line, as
/// `<short> "<subject>"`.
fn changed_by(repo: &Repo, pin: &Pin, line: &Line) -> Option<String> {
    let from = pin.commit.as_deref()?;
    let dir = repo.workdir().unwrap_or(repo.common_dir()).to_path_buf();
    let git = Git::new(dir, false);
    let mut args: Vec<String> = vec![
        "log".into(),
        "-1".into(),
        "--format=%h \"%s\"".into(),
        format!("{from}..{}", line.commit),
        "--".into(),
        FILE.into(),
    ];
    args.extend(pin.files.keys().chain(line.files.keys()).cloned());
    let found = git.run(&args).ok()?;
    let found = found.trim();
    (!found.is_empty()).then(|| found.to_string())
}

/// What the branch at `head` changed of the finish line since `base` (where it forked from
/// the target): the protected sections' diff and the pinned paths it changed, with git's diff
/// of them; `None` when it left them alone.
pub fn branch_changes(
    repo: &Repo,
    git: &Git,
    frozen: &Frozen,
    base: ObjectId,
    head: ObjectId,
    labels: (&str, &str),
) -> Result<Option<String>> {
    let mut out = String::new();
    let before = protected_sections(repo.file_at(base, FILE)?.as_deref());
    let after = protected_sections(repo.file_at(head, FILE)?.as_deref());
    if before != after {
        out.push_str(
            &similar::TextDiff::from_lines(&before, &after)
                .unified_diff()
                .header(
                    &format!("{}:{FILE}", labels.0),
                    &format!("{}:{FILE}", labels.1),
                )
                .to_string(),
        );
    }
    let mut changed = Vec::new();
    for path in &frozen.paths {
        if repo.entry_at(base, path)? != repo.entry_at(head, path)? {
            changed.push(path.clone());
        }
    }
    if !changed.is_empty() {
        let mut args = vec![
            "diff".to_string(),
            "--stat".to_string(),
            "-p".to_string(),
            base.to_string(),
            head.to_string(),
            "--".to_string(),
        ];
        args.extend(changed.iter().cloned());
        let diff = git.run(&args).unwrap_or_default();
        out.push_str(&format!(
            "pinned paths changed: {}\n{}",
            changed.join(", "),
            crate::output::truncate(&diff, 4000)
        ));
    }
    Ok((!out.is_empty()).then_some(out))
}

/// Puts the target's versions of the pinned paths into the checkout that `there` runs in (a
/// gate's or verify's), so that what runs is the pinned finish line, whatever the checked-out
/// commit holds: each path is removed, then checked out from the target (or left absent).
pub fn restore(
    repo: &Repo,
    there: &Git,
    checkout: &std::path::Path,
    frozen: &Frozen,
) -> Result<()> {
    for path in &frozen.paths {
        let full = checkout.join(path);
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&full)?,
            Ok(_) => std::fs::remove_file(&full)?,
            Err(_) => {}
        }
        if repo.entry_at(frozen.target, path)?.is_some() {
            there.run(&[
                "checkout",
                "--quiet",
                &frozen.target.to_string(),
                "--",
                path,
            ])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sections(text: &str) -> Sections {
        Sections::parse(text).expect("parses")
    }

    #[test]
    fn the_paths_a_finish_line_runs_are_named() {
        let s = sections(
            "[gate]\ncommands = [[\"loop/gate.sh\"], [\"sh\", \"tests/run.sh\", \"-v\"], \
             [\"sh\", \"-c\", \"make -C x && ./ci/check.sh --fast; FOO=1 ./ci/two.sh\"], \
             [\"python3\", \"-m\", \"pytest\"], [\"cargo\", \"test\"], [\"make\", \"-f\", \"ci/Makefile\"]]\n\
             protected_paths = [\"tests/\", \"fixtures\"]\n\
             [review]\ncommand = [\"./review.py\"]\n\
             [verify]\ncommands = [[\"node\", \"scripts/verify.js\"]]\n\
             [trust]\nsigners = \"./.gitsigners\"\n",
        );
        assert_eq!(
            s.named_paths(),
            vec![
                "loop/gate.sh",
                "tests/run.sh",
                "ci/check.sh",
                "ci/two.sh",
                "ci/Makefile",
                "review.py",
                "scripts/verify.js",
                "tests",
                "fixtures",
                ".gitsigners"
            ]
        );
        // [trust] is a protected section: a change of it is a change of the finish line.
        let mut file = b"[trust]\nsigners = \"a\"\n".to_vec();
        let before = protected_sections(Some(&file));
        file = b"[trust]\nsigners = \"b\"\n".to_vec();
        assert_ne!(before, protected_sections(Some(&file)));
    }

    #[test]
    fn a_mismatch_names_sections_and_paths() {
        let pin = Pin {
            sections: "[gate]\ncommands = [[\"a\"]]\n".into(),
            commit: None,
            files: [("loop/gate.sh".to_string(), "100755 abc".to_string())].into(),
            source: String::new(),
            by: String::new(),
            at: Timestamp(0),
        };
        let same = Line {
            commit: ObjectId::empty_tree(gix::hash::Kind::Sha1),
            sections: pin.sections.clone(),
            files: pin.files.clone(),
        };
        assert_eq!(mismatch(&pin, &same, "main"), None);
        let mut other = same.clone();
        other
            .files
            .insert("loop/gate.sh".into(), "100755 def".into());
        let diff = mismatch(&pin, &other, "main").expect("differs");
        assert!(
            diff.contains("loop/gate.sh: pinned 100755 abc, main has 100755 def"),
            "{diff}"
        );
        other.files.clear();
        other.sections = "[gate]\ncommands = []\n".into();
        let diff = mismatch(&pin, &other, "main").expect("differs");
        assert!(diff.contains("+commands = []"), "{diff}");
        assert!(
            diff.contains("loop/gate.sh: pinned 100755 abc, main has absent"),
            "{diff}"
        );
    }
}

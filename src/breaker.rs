//! The circuit breaker (SPEC §5), `refs/loop/breaker`: while it is open, nothing new is
//! dispatched. It opens at once on a `config` failure (re-armed by a commit that changes the
//! policy or a runtime file), after `breaker.failures` consecutive infrastructure failures (for
//! `breaker.open_for`, then half-open: `breaker.probes` successes close it), or when a person
//! pauses the loop (until they resume it).

use anyhow::Result;
use gix::ObjectId;
use serde::{Deserialize, Serialize};

use crate::git::{Cas, CasOutcome, Repo};
use crate::policy::Policy;
use crate::time::Timestamp;

pub const BREAKER_REF: &str = "refs/loop/breaker";
const RECORD: &str = "breaker.toml";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Breaker {
    /// closed, open, half_open or paused
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    #[serde(default)]
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_until: Option<Timestamp>,
    #[serde(default)]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
    /// For a `config` opening: the fingerprint of the policy and runtime files when it opened;
    /// a different one re-arms the breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(default)]
    pub probes_passed: u32,
}

impl Breaker {
    pub fn closed() -> Breaker {
        Breaker {
            state: "closed".into(),
            class: None,
            signature: None,
            failures: 0,
            open_until: None,
            reason: String::new(),
            since: None,
            fingerprint: None,
            probes_passed: 0,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.state == "closed"
    }

    /// Whether work may be dispatched: closed, or half-open (a probe).
    pub fn admits(&self) -> bool {
        matches!(self.state.as_str(), "closed" | "half_open")
    }

    /// One line for people: `open (config) since …: reason; re-armed by …`.
    pub fn describe(&self) -> String {
        match self.state.as_str() {
            "closed" => "closed".into(),
            "paused" => format!(
                "paused by a person: {}; `git loop resume` releases it",
                self.reason
            ),
            "half_open" => format!("half-open (probing): {}", self.reason),
            _ => {
                let rearm = match (self.class.as_deref(), self.open_until) {
                    (Some("config"), _) => {
                        "re-armed by a commit that fixes the policy or a runtime file".to_string()
                    }
                    (_, Some(at)) => format!("half-opens at {}", at.to_rfc3339()),
                    _ => "`git loop resume` closes it".to_string(),
                };
                format!(
                    "open ({}): {}; {rearm}",
                    self.class.as_deref().unwrap_or("failures"),
                    self.reason
                )
            }
        }
    }
}

/// The breaker and the commit it was read from (closed when there is none).
pub fn read(repo: &Repo) -> Result<(Option<ObjectId>, Breaker)> {
    let Some(tip) = repo.read_ref(BREAKER_REF)? else {
        return Ok((None, Breaker::closed()));
    };
    match crate::record::read::<Breaker>(repo, tip, RECORD) {
        Ok(b) => Ok((Some(tip), b)),
        // An unreadable breaker must not silently admit work.
        Err(why) => Ok((
            Some(tip),
            Breaker {
                state: "open".into(),
                reason: format!("refs/loop/breaker is unreadable: {why}"),
                ..Breaker::closed()
            },
        )),
    }
}

/// Writes `breaker` over `old` by compare-and-swap; `false` if it changed meanwhile.
pub fn write(repo: &Repo, old: Option<ObjectId>, breaker: &Breaker) -> Result<bool> {
    let new = crate::record::write(
        repo,
        &format!("breaker: {}", breaker.state),
        RECORD,
        breaker,
        None,
        &[],
    )?;
    let edit = match old {
        Some(old) => Cas::Update {
            name: BREAKER_REF.into(),
            old,
            new,
        },
        None => Cas::Create {
            name: BREAKER_REF.into(),
            new,
        },
    };
    Ok(repo.cas(&[edit])? == CasOutcome::Applied)
}

/// What the runtime needs that the target does not provide: every runtime-manifest file, and
/// every program path the agent or the gates would run from the repository, must be committed
/// on the target; programs named without a path must be on PATH. One line per problem.
pub fn runtime_problems(repo: &Repo, policy: &Policy, target_tip: ObjectId) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let workdir = repo.workdir().map(std::path::Path::to_path_buf);
    for program in programs(policy) {
        match Program::of(program, workdir.as_deref()) {
            Program::Absolute(path) if !path.exists() => {
                problems.push(format!("the program {program} does not exist"));
            }
            Program::OnPath(name) if crate::process::which(&name).is_none() => {
                problems.push(format!("the program {program} is not on PATH"));
            }
            _ => {}
        }
    }
    for file in runtime_files(policy, workdir.as_deref()) {
        if repo.file_at(target_tip, &file)?.is_some() {
            continue;
        }
        let on_disk = workdir.as_ref().is_some_and(|w| w.join(&file).exists());
        problems.push(if on_disk {
            format!("{file} is not tracked on {}: a fresh checkout would not have it (git add {file} && git commit)", policy.loop_.target)
        } else {
            format!("{file} is missing: the runtime manifest needs it committed on {}", policy.loop_.target)
        });
    }
    Ok(problems)
}

/// The programs the loop runs: the first word of `agent.command`, of each gate command and of
/// `review.command`.
pub fn programs(policy: &Policy) -> impl Iterator<Item = &String> {
    std::iter::once(&policy.agent.command)
        .chain(policy.gate.commands.iter())
        .chain(std::iter::once(&policy.review.command))
        .filter_map(|argv| argv.first())
}

/// Where a program named in the policy is found.
#[derive(Debug, PartialEq, Eq)]
pub enum Program {
    /// It uses a placeholder (`{worktree}/run.sh`): known only when a task runs.
    Placeholder,
    /// A path inside the repository, relative to its root (`/`-separated).
    InRepo(String),
    /// An absolute path outside the repository.
    Absolute(std::path::PathBuf),
    /// A bare name, looked up on PATH.
    OnPath(String),
}

impl Program {
    pub fn of(program: &str, workdir: Option<&std::path::Path>) -> Program {
        if program.contains('{') {
            return Program::Placeholder;
        }
        if !program.contains('/') {
            return Program::OnPath(program.to_string());
        }
        match repo_relative(program, workdir) {
            Some(rel) => Program::InRepo(rel),
            None => Program::Absolute(std::path::PathBuf::from(program)),
        }
    }
}

/// The files the runtime needs committed on the target: the runtime manifest, and every
/// program the loop runs from inside the repository (even when the manifest forgets it).
pub fn runtime_files(policy: &Policy, workdir: Option<&std::path::Path>) -> Vec<String> {
    let mut files: Vec<String> = policy.runtime.manifest.clone();
    for program in programs(policy) {
        if let Program::InRepo(rel) = Program::of(program, workdir)
            && !files.contains(&rel)
        {
            files.push(rel);
        }
    }
    files
}

/// A program path as a path relative to the repository root, if it lies inside it.
fn repo_relative(program: &str, workdir: Option<&std::path::Path>) -> Option<String> {
    let path = std::path::Path::new(program);
    if !path.is_absolute() {
        let rel = program.trim_start_matches("./");
        return (!rel.split('/').any(|c| c == "..")).then(|| rel.to_string());
    }
    let root = workdir?.canonicalize().ok()?;
    let parent = path.parent()?.canonicalize().ok()?;
    let rel = parent.strip_prefix(&root).ok()?.join(path.file_name()?);
    Some(rel.to_string_lossy().into_owned())
}

/// A fingerprint of what re-arms a `config` opening: the policy file and every runtime file as
/// committed on the target, the policy as it is in the working tree, and the runtime problems
/// found (`missing`).
pub fn fingerprint(
    repo: &Repo,
    policy_files: &[String],
    target_tip: ObjectId,
    missing: &[String],
) -> Result<String> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    for file in policy_files {
        feed(file.as_bytes());
        feed(&repo.file_at(target_tip, file)?.unwrap_or_default());
    }
    if let Some(w) = repo.workdir() {
        feed(&std::fs::read(w.join(crate::policy::FILE)).unwrap_or_default());
    }
    for problem in missing {
        feed(problem.as_bytes());
    }
    Ok(format!("{h:016x}"))
}

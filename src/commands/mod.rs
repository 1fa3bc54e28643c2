//! One module per subcommand. Each has a doc-commented `Args` (the doc comment is its `--help`)
//! and a `run(ctx, args)`; what they share is here.

pub mod demo;
pub mod doctor;
pub mod hook;
pub mod hooks;
pub mod init;
pub mod log;
pub mod man;
pub mod oracle;
pub mod pause;
pub mod promote;
pub mod ready;
pub mod reap;
pub mod start;
pub mod status;
pub mod stop;
pub mod sync;
pub mod task;

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::error::{Class, LoopError};
use crate::git::Repo;
use crate::graph::Graph;
use crate::ids::ShortIds;
use crate::policy::Policy;
use crate::task::{Task, body_from_bytes};

/// The policy of the current working tree, if it has one (an invalid one is an error).
pub fn policy(repo: &Repo) -> Result<Option<Policy>> {
    match repo.workdir() {
        Some(dir) => Policy::load(dir),
        None => Ok(None),
    }
}

/// A task body given on the command line, as text or as a file.
#[derive(Debug, clap::Args)]
pub struct BodyArgs {
    /// The body: what, why, and how done is checked
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,

    /// Read the body from FILE (`-` for standard input)
    #[arg(long, value_name = "FILE")]
    body_file: Option<PathBuf>,
}

impl BodyArgs {
    /// The body, if one was given; refuses what cannot be stored faithfully.
    pub fn read(self) -> Result<Option<String>> {
        read_body(self.body, self.body_file.as_deref())
    }
}

fn read_body(text: Option<String>, file: Option<&Path>) -> Result<Option<String>> {
    if let Some(text) = text {
        return Ok(Some(body_from_bytes(text.into_bytes())?));
    }
    let Some(file) = file else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    if file == Path::new("-") {
        std::io::stdin()
            .take(crate::task::MAX_BODY_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .context("reading the body from standard input")?;
    } else {
        let f = std::fs::File::open(file).map_err(|e| {
            LoopError::new(
                Class::Usage,
                format!("cannot read the body file {}: {e}", file.display()),
            )
        })?;
        f.take(crate::task::MAX_BODY_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {}", file.display()))?;
    }
    Ok(Some(body_from_bytes(bytes)?))
}

/// A task as `--json` shows it. Field names are stable; every field is always present.
#[derive(Serialize)]
pub struct TaskJson<'a> {
    pub id: &'a str,
    pub short_id: &'a str,
    pub title: &'a str,
    pub state: &'a str,
    pub reason: Option<&'a str>,
    pub detail: Option<&'a str>,
    pub batch: &'a str,
    pub priority: i64,
    pub after: &'a [String],
    pub waiting_on: Vec<&'a str>,
    pub mutex: Option<&'a str>,
    pub attempts: u32,
    pub next_at: Option<String>,
    pub signatures: &'a [String],
    pub discovered_from: Option<&'a str>,
    pub branch: &'a str,
    pub created: String,
    pub updated: String,
    pub approved: Option<&'a str>,
    pub promoted_commit: Option<&'a str>,
}

impl<'a> TaskJson<'a> {
    pub fn new(task: &'a Task, short: &'a ShortIds, graph: &Graph<'a>) -> Self {
        TaskJson {
            id: &task.id,
            short_id: short.short(&task.id),
            title: &task.title,
            state: task.state.as_str(),
            reason: task.reason.map(crate::task::Reason::as_str),
            detail: task.detail.as_deref(),
            batch: &task.batch,
            priority: task.priority,
            after: &task.after,
            waiting_on: graph.pending_deps(task),
            mutex: task.mutex.as_deref(),
            attempts: task.attempts,
            next_at: task.next_at.map(|t| t.to_rfc3339()),
            signatures: &task.signatures,
            discovered_from: task.discovered_from.as_deref(),
            branch: &task.branch,
            created: task.created.to_rfc3339(),
            updated: task.updated.to_rfc3339(),
            approved: task.approved.as_deref(),
            promoted_commit: task.promoted_commit.as_deref(),
        }
    }
}

/// A path relative to the working tree root, as a user would type it.
pub fn display_path(root: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(root).unwrap_or(path).to_path_buf()
}

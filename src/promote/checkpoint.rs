//! The promotion checkpoints of one task: a commit chain on `refs/loop/promote/<id>`, each
//! commit carrying the record of what the promotion has done so far.

use anyhow::Result;
use gix::ObjectId;
use serde::{Deserialize, Serialize};

use super::{Phase, short};
use crate::error::{Class, LoopError};
use crate::git::{Cas, CasOutcome, Repo};
use crate::time::Timestamp;

/// The name of the record in a checkpoint commit's message.
const RECORD: &str = "promote.toml";

/// The state a promotion has reached, as its latest checkpoint records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub task: String,
    pub strategy: String,
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// The approved commit being promoted.
    pub source: String,
    /// The phases done so far, in order.
    #[serde(default)]
    pub completed: Vec<String>,
    /// The target tip the merge was built on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// The commit that brings the work into the target (a merge, a squash, or the source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<String>,
    /// A task filed because of this promotion (conflict fix, activation gap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_up: Option<String>,
    /// Why it was filed: `conflict` or `verify_failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_up_reason: Option<String>,
    /// The remote task branch went in the same atomic push as the target.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remote_branch_deleted: bool,
    pub by: String,
    pub updated: Timestamp,
}

impl Record {
    pub(super) fn has(&self, phase: Phase) -> bool {
        self.completed.iter().any(|p| p == phase.name())
    }
}

/// The promotion checkpoints of one task: `refs/loop/promote/<id>`.
pub(super) struct Chain<'r> {
    repo: &'r Repo,
    name: String,
    pub(super) tip: Option<ObjectId>,
    pub(super) rec: Option<Record>,
}

impl<'r> Chain<'r> {
    pub(super) fn load(repo: &'r Repo, id: &str) -> Result<Chain<'r>> {
        let name = crate::refs::promote(id);
        let tip = repo.read_ref(&name)?;
        let rec = match tip {
            None => None,
            Some(tip) => {
                // The task's own trouble (anyone who can push refs/loop/* can write it), not
                // the configuration's: it refuses this promotion, never opens the breaker.
                let corrupt = |why: String| {
                    LoopError::new(Class::Policy, format!("{name} is corrupt: {why}"))
                        .with_hint(format!("inspect it with `git log {name}`"))
                };
                if repo.kind(tip)? != Some(crate::git::Kind::Commit) {
                    return Err(corrupt("it does not point at a commit".into()).into());
                }
                {
                    let rec = crate::record::read::<Record>(repo, tip, RECORD).map_err(corrupt)?;
                    for id in [Some(&rec.source), rec.base.as_ref(), rec.merge.as_ref()]
                        .into_iter()
                        .flatten()
                    {
                        crate::git::oid(id)
                            .map_err(|_| corrupt(format!("{id:?} is not a commit id")))?;
                    }
                    Some(rec)
                }
            }
        };
        Ok(Chain {
            repo,
            name,
            tip,
            rec,
        })
    }

    /// Appends a checkpoint by compare-and-swap; `keep` are commits to keep reachable.
    pub(super) fn write(&mut self, rec: Record, message: &str, keep: &[ObjectId]) -> Result<()> {
        let mut parents: Vec<ObjectId> = self.tip.into_iter().collect();
        for k in keep {
            if !parents.contains(k) {
                parents.push(*k);
            }
        }
        let commit =
            crate::record::write(self.repo, message, RECORD, &rec, Some(&rec.task), &parents)?;
        let edit = match self.tip {
            Some(old) => Cas::Update {
                name: self.name.clone(),
                old,
                new: commit,
            },
            None => Cas::Create {
                name: self.name.clone(),
                new: commit,
            },
        };
        match self.repo.cas(&[edit])? {
            CasOutcome::Applied => {
                crate::trust::remember(
                    self.repo,
                    crate::trust::Kept::Promote,
                    &rec.task,
                    &commit.to_string(),
                );
                self.tip = Some(commit);
                self.rec = Some(rec);
                Ok(())
            }
            CasOutcome::Lost => Err(LoopError::new(
                Class::Transient,
                format!("another promotion of task {} is running", short(&rec.task)),
            )
            .with_hint("let it finish; run the promotion again to see where it stands")
            .into()),
        }
    }
}

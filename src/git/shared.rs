//! Loop state shared through a remote (SPEC §13). With `loop.remote` set, the remote's refs are
//! the truth: every change of `refs/loop/*` is first pushed there, atomically and with a lease
//! on each ref's expected value (`git push --atomic --force-with-lease=<ref>:<expected>`), and
//! only once the remote accepted it is it written here. A push the remote refuses for a stale
//! lease is a lost race: the state is fetched again and the caller decides again.
//!
//! The local `refs/loop/*` are the last view of the remote. [`sync`] brings it up to date: the
//! remote's loop state is fetched into `refs/loop-remotes/<remote>/…` (written by nothing but
//! git-loop's own fetches and pushes), and each local ref is reconciled against what the remote
//! holds now and what it held when last seen. What this clone had before it ever saw the
//! remote's state (loop state made before `loop.remote` was set) is pushed; any other local
//! value the remote never accepted was written past git-loop (which writes the remote first)
//! and is given up for the remote's, said in a warning with the object id given up. Notes are
//! merged as `git notes merge -s cat_sort_uniq` does.

use std::collections::{BTreeSet, HashMap};

use anyhow::{Context, Result};
use gix::ObjectId;

use super::cli::{Git, Push};
use super::{Cas, CasOutcome, Repo};
use crate::error::{Class, LoopError};
use crate::refs;

/// The lock that makes a reconciliation, and what a compare-and-swap writes here once the
/// remote accepted it, one at a time in a repository (across its processes and threads). A
/// reconciliation reads the tracking refs before and after its fetch and the local refs after
/// it; a change landing here in between (its tracking ref written, its local ref not yet)
/// would pass for a ref this clone has and the remote never had, and be pushed back.
fn lock(repo: &Repo) -> Result<std::fs::File> {
    crate::lockfile::wait(&crate::lockfile::path(repo.common_dir(), "shared"))
}

/// What a [`sync`] did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Synced {
    /// Local refs brought to the remote's value (created, moved or deleted).
    pub pulled: usize,
    /// Local changes the remote did not have yet, pushed.
    pub pushed: usize,
    /// Local values the remote never accepted, given up for the remote's: `(ref, object id)`.
    pub replaced: Vec<(String, String)>,
    /// What became of the notes (`None`: the same on both sides).
    pub notes: Option<Notes>,
    /// A push of local changes that lost a race: they are tried again on the next sync.
    pub lost: bool,
}

/// What a sync did with the notes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Notes {
    /// The remote's taken here.
    Pulled,
    /// This clone's pushed.
    Pushed,
    /// Both merged (`cat_sort_uniq`) and pushed.
    Merged,
}

impl Notes {
    pub fn as_str(self) -> &'static str {
        match self {
            Notes::Pulled => "pulled",
            Notes::Pushed => "pushed",
            Notes::Merged => "merged",
        }
    }
}

/// The compare-and-swap of `edits` through `remote` (see the module's text). Every edit must
/// be of shared state (`refs/loop/*`).
pub(super) fn cas(repo: &Repo, remote: &str, edits: &[Cas]) -> Result<CasOutcome> {
    if let Some(local) = edits.iter().find(|e| !refs::is_shared(e.name())) {
        anyhow::bail!(
            "a transaction mixes shared loop state with the local ref {}",
            local.name()
        );
    }
    configured(repo, remote)?;
    match push(repo, remote, edits)? {
        Some(seen) => {
            let _one = lock(repo)?;
            repo.set_refs(&seen)?;
            // The remote has it: so must the view of it here, ref by ref when the whole no
            // longer applies. A ref that moved here meanwhile was moved by a later change
            // that went through the remote (this process's renewal of a lease the change only
            // read, or a sync that saw this change or a later one): it stays. Without this,
            // the change done on the remote would be missing here, and the caller, reading
            // its own change back, would act on the state before it.
            if repo.cas_local(edits)? == CasOutcome::Lost {
                for edit in edits.iter().filter(|e| !matches!(e, Cas::Verify { .. })) {
                    if repo.cas_local(std::slice::from_ref(edit))? == CasOutcome::Lost {
                        tracing::debug!("{}: moved here meanwhile; kept", edit.name());
                    }
                }
            }
            Ok(CasOutcome::Applied)
        }
        None => {
            // Decide again from the remote's state, not the stale view.
            sync(repo, remote)?;
            Ok(CasOutcome::Lost)
        }
    }
}

/// What the remote's refs hold once it accepted a push (`None`: deleted), for their tracking
/// refs.
type Seen = Vec<(String, Option<ObjectId>)>;

/// One atomic push of `edits` to `remote`, with a lease on each ref's expected value. Once the
/// remote accepted it: what its tracking refs hold now, for the caller to write (under the
/// lock). `None`: a stale lease, a lost race.
///
/// A ref only read ([`Cas::Verify`]) is pushed at its own value under its lease, and that
/// check is weaker than a write's: git compares it with what the remote advertised when the
/// push began, and sends the remote no command for a ref already at the pushed value, so the
/// remote never checks it under its lock. A read that must hold at the instant of the change
/// is made a write: a transition renews the lease it needs (see the runner's worker). The
/// reads left — a claim's look at the task it claims, a reap's — guard nothing alone: every
/// later change of that task is a write the remote checks.
fn push(repo: &Repo, remote: &str, edits: &[Cas]) -> Result<Option<Seen>> {
    let mut leases = Vec::with_capacity(edits.len());
    let mut specs = Vec::with_capacity(edits.len());
    let mut seen = Vec::with_capacity(edits.len());
    for edit in edits {
        let (lease, spec, now) = match edit {
            Cas::Create { name, new } => (format!("{name}:"), format!("{new}:{name}"), Some(new)),
            Cas::Update { name, old, new } => {
                (format!("{name}:{old}"), format!("{new}:{name}"), Some(new))
            }
            Cas::Delete { name, old } => (format!("{name}:{old}"), format!(":{name}"), None),
            Cas::Verify { name, old } => {
                leases.push(format!("{name}:{old}"));
                specs.push(format!("{old}:{name}"));
                continue;
            }
        };
        leases.push(lease);
        specs.push(spec);
        seen.push((refs::tracking(remote, edit.name()), now.copied()));
    }
    match git(repo).push_state(remote, &leases, &specs)? {
        Push::Ok(_) => Ok(Some(seen)),
        Push::LostRace(why) => {
            tracing::debug!("the remote {remote} refused a stale lease: {why}");
            Ok(None)
        }
        Push::Rejected(why) => Err(refused(remote, &why)),
    }
}

/// A `config` error when this clone has no remote called `remote`: no retry brings one.
fn configured(repo: &Repo, remote: &str) -> Result<()> {
    if repo.remote_names().iter().any(|r| r == remote) {
        return Ok(());
    }
    Err(LoopError::new(
        Class::Config,
        format!("loop.remote names {remote:?}: no such remote in this clone"),
    )
    .with_hint(format!(
        "add it (`git remote add {remote} <url>`), or fix loop.remote in policy.toml"
    ))
    .into())
}

/// A remote that refuses `refs/loop/*` outright (some hosts accept only branches and tags).
fn refused(remote: &str, why: &str) -> anyhow::Error {
    LoopError::new(
        Class::Config,
        format!("the remote {remote} refused git-loop's state under refs/loop/: {why}"),
    )
    .with_hint(
        "the remote must accept refs/loop/* and refs/notes/loop (docs/SPEC.md §13); \
         or remove loop.remote from policy.toml to keep loop state in this clone",
    )
    .into()
}

/// The git that pushes and fetches loop state: each command given `loop.remote_timeout`, so
/// that a remote that hangs (rather than refusing) holds no runner past it.
fn git(repo: &Repo) -> Git {
    Git::new(repo.common_dir(), true).within(repo.remote_timeout())
}

/// The remote's loop state as this clone last saw it: shared ref name → value.
fn seen(repo: &Repo, remote: &str) -> Result<HashMap<String, ObjectId>> {
    let prefix = refs::tracking(remote, refs::LOOP);
    Ok(repo
        .refs_under(&prefix)?
        .into_iter()
        .filter_map(|r| Some((format!("{}{}", refs::LOOP, &r.name[prefix.len()..]), r.id?)))
        .collect())
}

/// Fetches `remote`'s loop state and reconciles this clone's view with it (see the module's
/// text); pushes what this clone has that the remote lacks.
pub fn sync(repo: &Repo, remote: &str) -> Result<Synced> {
    configured(repo, remote)?;
    let _one = lock(repo)?;
    let git = git(repo);
    let before = seen(repo, remote)?;
    let notes_seen = repo.read_ref(&refs::tracking(remote, refs::NOTES))?;
    git.fetch_state(remote, &refs::fetch_refspecs(remote))
        .with_context(|| format!("fetching loop state from {remote}"))?;
    let after = seen(repo, remote)?;
    let local: HashMap<String, ObjectId> = repo
        .refs_under(refs::LOOP)?
        .into_iter()
        .filter_map(|r| Some((r.name, r.id?)))
        .collect();

    let mut done = Synced::default();
    let names: BTreeSet<&String> = local.keys().chain(after.keys()).collect();
    let mut pulls = Vec::new();
    let mut pushes = Vec::new();
    for name in names {
        let (l, r, b) = (local.get(name), after.get(name), before.get(name));
        if l == r {
            continue;
        }
        let pull = match (l, r) {
            // Unchanged here since the remote was last seen: take the remote's.
            _ if l == b => true,
            // Never on the remote: this clone's own (made before the remote was shared).
            (Some(&l), None) if b.is_none() => {
                pushes.push(Cas::Create {
                    name: name.clone(),
                    new: l,
                });
                false
            }
            // A history the remote has the start of, in a clone that never saw the remote's
            // state (a person pushed an old copy by hand): pushed. Once seen, a local value
            // past the remote's was written past git-loop, which writes the remote first —
            // by an agent's `git update-ref`, say — and is not the loop's to spread.
            (Some(&l), Some(&r)) if b.is_none() && repo.is_ancestor(r, l).unwrap_or(false) => {
                pushes.push(Cas::Update {
                    name: name.clone(),
                    old: r,
                    new: l,
                });
                false
            }
            // Behind the remote's: taken.
            (Some(&l), Some(&r)) if repo.is_ancestor(l, r).unwrap_or(false) => true,
            (Some(&l), _) => {
                tracing::warn!(
                    "{name}: the remote {remote} never accepted this clone's {l}; \
                     taking the remote's value"
                );
                done.replaced.push((name.clone(), l.to_string()));
                true
            }
            // Deleted here but not on the remote: the remote's comes back.
            (None, _) => true,
        };
        if pull {
            pulls.push((name.clone(), l.copied(), r.copied()));
        }
    }
    for (name, l, r) in pulls {
        let edit = match (l, r) {
            (None, Some(new)) => Cas::Create { name, new },
            (Some(old), Some(new)) => Cas::Update { name, old, new },
            (Some(old), None) => Cas::Delete { name, old },
            (None, None) => continue,
        };
        // Against what was read: a change made here meanwhile went through the remote and
        // is newer than this view.
        if repo.cas_local(&[edit])? == CasOutcome::Applied {
            done.pulled += 1;
        }
    }
    if !pushes.is_empty() {
        // The values are here already: only their tracking refs follow.
        match push(repo, remote, &pushes)? {
            Some(seen) => {
                repo.set_refs(&seen)?;
                done.pushed += pushes.len();
            }
            None => done.lost = true,
        }
    }
    done.notes = sync_notes(repo, remote, notes_seen)?;
    Ok(done)
}

/// Reconciles `refs/notes/loop` with the remote's (fetched just now into its tracking ref;
/// `seen` is what that ref held before): fast-forwarded either way, or merged with
/// `cat_sort_uniq` (both clones' notes on one commit are kept, each line once) and pushed.
fn sync_notes(repo: &Repo, remote: &str, seen: Option<ObjectId>) -> Result<Option<Notes>> {
    let tracking = refs::tracking(remote, refs::NOTES);
    let remote_notes = repo.read_ref(&tracking)?;
    let local = repo.read_ref(refs::NOTES)?;
    let push_notes = |new: ObjectId, old: Option<ObjectId>| -> Result<bool> {
        let name = refs::NOTES.to_string();
        let edit = match old {
            Some(old) => Cas::Update { name, old, new },
            None => Cas::Create { name, new },
        };
        Ok(match push(repo, remote, &[edit])? {
            Some(seen) => {
                repo.set_refs(&seen)?;
                true
            }
            None => false,
        })
    };
    Ok(match (local, remote_notes) {
        (l, r) if l == r => None,
        (None, Some(r)) => {
            repo.cas_local(&[Cas::Create {
                name: refs::NOTES.into(),
                new: r,
            }])?;
            Some(Notes::Pulled)
        }
        (Some(l), None) => push_notes(l, None)?.then_some(Notes::Pushed),
        // Unchanged here since last seen, or behind: the remote's.
        (Some(l), Some(r)) if seen == Some(l) || repo.is_ancestor(l, r)? => {
            repo.cas_local(&[Cas::Update {
                name: refs::NOTES.into(),
                old: l,
                new: r,
            }])?;
            Some(Notes::Pulled)
        }
        (Some(l), Some(r)) if repo.is_ancestor(r, l)? => {
            push_notes(l, Some(r))?.then_some(Notes::Pushed)
        }
        (Some(_), Some(r)) => {
            git(repo)
                .run(&[
                    "notes",
                    &format!("--ref={}", refs::NOTES),
                    "merge",
                    "--quiet",
                    "--strategy=cat_sort_uniq",
                    &tracking,
                ])
                .context("merging the remote's notes")?;
            match repo.read_ref(refs::NOTES)? {
                Some(merged) => push_notes(merged, Some(r))?.then_some(Notes::Merged),
                None => None,
            }
        }
        (None, None) => None,
    })
}

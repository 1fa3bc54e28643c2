//! The frozen finish line and the done-oracle (SPEC §9).

use anyhow::Result;
use gix::ObjectId;

use crate::git::Repo;
use crate::policy::{FILE, PROTECTED_SECTIONS};

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
    out
}

/// How commit `to` changes the protected sections of policy.toml relative to `from`, as a
/// unified diff with the given labels; `None` when they are the same.
pub fn protected_diff(
    repo: &Repo,
    from: ObjectId,
    to: ObjectId,
    from_label: &str,
    to_label: &str,
) -> Result<Option<String>> {
    let before = protected_sections(repo.file_at(from, FILE)?.as_deref());
    let after = protected_sections(repo.file_at(to, FILE)?.as_deref());
    if before == after {
        return Ok(None);
    }
    Ok(Some(
        similar::TextDiff::from_lines(&before, &after)
            .unified_diff()
            .header(from_label, to_label)
            .to_string(),
    ))
}

/// Every unfinished task of `batch` (all batches when `None`), one line each with its state and
/// reason. A task counts as finished when it is `human_gated` or `cancelled`, or `done` with its
/// promoted commit really contained in the target — the remote's, freshly fetched, when
/// `loop.remote` is set.
pub fn unfinished(
    repo: &Repo,
    policy: &crate::policy::Policy,
    store: &crate::store::Store<'_>,
    batch: Option<&str>,
) -> Result<Vec<String>> {
    use crate::task::State;
    let target = &policy.loop_.target;
    let (tip, shown) = match &policy.loop_.remote {
        Some(remote) => {
            let dir = repo.workdir().unwrap_or(repo.common_dir()).to_path_buf();
            let git = crate::git::cli::Git::new(dir, false);
            let tracking = crate::git::tracking_ref(remote, target);
            git.fetch(remote, &format!("+refs/heads/{target}:{tracking}"))?;
            (repo.read_ref(&tracking)?, format!("{remote}/{target}"))
        }
        None => (
            repo.read_ref(&format!("refs/heads/{target}"))?,
            target.clone(),
        ),
    };
    let listed = store.list()?;
    // One walk back from the target for all done tasks, not one per task.
    let promoted: Vec<_> = listed
        .iter()
        .filter_map(|l| l.task.as_ref().ok())
        .filter(|t| t.state == State::Done)
        .filter_map(|t| t.promoted_commit.as_deref())
        .filter_map(|c| crate::git::oid(c).ok())
        .collect();
    let contained = match tip {
        Some(t) => repo.contained_in(&promoted, t)?,
        None => Default::default(),
    };
    let graph = crate::graph::Graph::new(listed.iter().filter_map(|l| l.task.as_ref().ok()));
    let now = crate::time::Timestamp::now();
    let mut out = Vec::new();
    for l in &listed {
        let short = crate::ids::short(&l.id).to_string();
        let task = match &l.task {
            Ok(t) => t,
            Err(why) => {
                out.push(format!("{short}  corrupt: {why}"));
                continue;
            }
        };
        if batch.is_some_and(|b| task.batch != b) {
            continue;
        }
        let title = crate::output::truncate(&crate::output::safe(&task.title, false), 60);
        match task.state {
            State::HumanGated | State::Cancelled => {}
            State::Done => {
                let promoted = task
                    .promoted_commit
                    .as_deref()
                    .and_then(|c| crate::git::oid(c).ok());
                if !promoted.is_some_and(|c| contained.contains(&c)) {
                    out.push(format!(
                        "{short}  done, but its promoted commit {} is not in {shown}  {title}",
                        task.promoted_commit
                            .as_deref()
                            .map_or("(none)", |c| c.get(..7).unwrap_or(c))
                    ));
                }
            }
            _ => {
                let why = task
                    .detail
                    .as_deref()
                    .map(|d| format!(" ({})", crate::output::safe(d, false)))
                    .unwrap_or_default();
                let pending: Vec<&str> = graph
                    .pending_deps(task)
                    .into_iter()
                    .map(crate::ids::short)
                    .collect();
                let next = crate::task::machine::next(task, &pending, now)
                    .map(|n| format!("; next: {}", n.action))
                    .unwrap_or_default();
                out.push(format!(
                    "{short}  {}{why}{next}  {title}",
                    task.state_label()
                ));
            }
        }
    }
    Ok(out)
}

/// The pin of the frozen finish line (SPEC §9), `refs/loop/oracle`.
const PIN_RECORD: &str = "oracle.toml";

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Pin {
    /// The protected sections, normalised (see [`protected_sections`]).
    pub sections: String,
    /// Where they were read: a commit of the target, or the working tree.
    pub source: String,
    pub by: String,
    pub at: crate::time::Timestamp,
}

/// The pin and its commit, if there is one.
pub fn read_pin(repo: &Repo) -> Result<Option<(ObjectId, std::result::Result<Pin, String>)>> {
    let Some(tip) = repo.read_ref(crate::refs::ORACLE)? else {
        return Ok(None);
    };
    Ok(Some((tip, crate::record::read(repo, tip, PIN_RECORD))))
}

/// Pins `sections` (replacing the pin at `old`, if any) by compare-and-swap.
pub fn write_pin(
    repo: &Repo,
    old: Option<ObjectId>,
    sections: String,
    source: String,
) -> Result<bool> {
    let by = repo
        .config_string("user.name")
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into());
    let pin = Pin {
        sections,
        source,
        by,
        at: crate::time::Timestamp::now(),
    };
    let new = crate::record::write(
        repo,
        "oracle: pinned the protected policy sections",
        PIN_RECORD,
        &pin,
        None,
        &[],
    )?;
    let edit = match old {
        Some(old) => crate::git::Cas::Update {
            name: crate::refs::ORACLE.into(),
            old,
            new,
        },
        None => crate::git::Cas::Create {
            name: crate::refs::ORACLE.into(),
            new,
        },
    };
    Ok(repo.cas(&[edit])? == crate::git::CasOutcome::Applied)
}

/// The protected sections as committed on the target (the remote's tracking ref when a remote
/// is set and fetched, else the local branch), if the target has a policy.
pub fn target_sections(
    repo: &Repo,
    policy: &crate::policy::Policy,
) -> Result<Option<(String, ObjectId)>> {
    let Some((tip, _)) =
        repo.last_seen_tip(policy.loop_.remote.as_deref(), &policy.loop_.target)?
    else {
        return Ok(None);
    };
    let Some(file) = repo.file_at(tip, FILE)? else {
        return Ok(None);
    };
    Ok(Some((protected_sections(Some(&file)), tip)))
}

/// How the target's protected sections differ from the pin, as a diff; `None` when they match
/// or there is nothing to compare yet.
pub fn pin_mismatch(repo: &Repo, policy: &crate::policy::Policy) -> Result<Option<String>> {
    let Some((_, Ok(pin))) = read_pin(repo)? else {
        return Ok(None);
    };
    let Some((now, tip)) = target_sections(repo, policy)? else {
        return Ok(None);
    };
    if now == pin.sections {
        return Ok(None);
    }
    Ok(Some(
        similar::TextDiff::from_lines(&pin.sections, &now)
            .unified_diff()
            .header(
                "pinned (refs/loop/oracle)",
                &format!(
                    "{}:policy.toml ({})",
                    policy.loop_.target,
                    &tip.to_string()[..7]
                ),
            )
            .to_string(),
    ))
}

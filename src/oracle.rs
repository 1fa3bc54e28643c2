//! The done-oracle (SPEC §9): is the batch finished, by what Git says? The pin of the finish
//! line it relies on is [`crate::finish_line`]'s.

use anyhow::Result;

use crate::git::Repo;

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

//! Every ref git-loop keeps (SPEC §4), named in one place.
//!
//! | ref | holds |
//! |---|---|
//! | `refs/loop/tasks/<id>` | the task: a commit chain whose trees hold the document and run records |
//! | `refs/loop/leases/<id>` | who holds the task, until when |
//! | `refs/loop/runners/<runner-id>` | a runner's heartbeat |
//! | `refs/loop/breaker` | the circuit breaker |
//! | `refs/loop/promote/<id>` | the promotion checkpoints of a task |
//! | `refs/loop/oracle` | the pin of the frozen finish line |
//! | `refs/loop/rescue/<id>/<n>` | work saved before any cleanup |
//! | `refs/loop/refused/<id>` | transitions of the task the state machine refused, and why |
//! | `refs/notes/loop` | notes on commits: task, run, gate results, promotion |
//! | `refs/loop-remotes/<remote>/…` | the last view of the remote's loop state (SPEC §13): its `refs/loop/*` at `…/loop/*`, its notes at `…/notes/loop`; written only by git-loop's own fetches and pushes |

/// Everything under here is git-loop's.
pub const LOOP: &str = "refs/loop/";
pub const TASKS: &str = "refs/loop/tasks/";
pub const LEASES: &str = "refs/loop/leases/";
pub const RUNNERS: &str = "refs/loop/runners/";
pub const BREAKER: &str = "refs/loop/breaker";
pub const PROMOTE: &str = "refs/loop/promote/";
pub const ORACLE: &str = "refs/loop/oracle";
pub const RESCUE: &str = "refs/loop/rescue/";
pub const REFUSED: &str = "refs/loop/refused/";
pub const NOTES: &str = "refs/notes/loop";
/// Where the remote's loop state is seen (outside `refs/loop/`, so never pushed back, and
/// outside `refs/remotes/`, so neither `git branch -r` nor a person's `git fetch` touches it).
pub const REMOTES: &str = "refs/loop-remotes/";

/// Where `name` (`refs/loop/…` or `refs/notes/loop`) of `remote` is seen here:
/// `refs/loop-remotes/<remote>/loop/…`.
pub fn tracking(remote: &str, name: &str) -> String {
    format!(
        "{REMOTES}{remote}/{}",
        name.strip_prefix("refs/").unwrap_or(name)
    )
}

/// The fetch refspecs that bring `remote`'s loop state into its tracking refs. The notes' is
/// a pattern (`refs/notes/loop*`, whose `*` also matches nothing) so that a remote without
/// notes yet is no error.
pub fn fetch_refspecs(remote: &str) -> [String; 2] {
    [
        format!("+{LOOP}*:{}*", tracking(remote, LOOP)),
        format!("+{NOTES}*:{}*", tracking(remote, NOTES)),
    ]
}

/// Whether `name` is loop state that counts only once a shared remote accepted it.
pub fn is_shared(name: &str) -> bool {
    name.starts_with(LOOP)
}

pub fn task(id: &str) -> String {
    format!("{TASKS}{id}")
}

pub fn lease(id: &str) -> String {
    format!("{LEASES}{id}")
}

pub fn runner(id: &str) -> String {
    format!("{RUNNERS}{id}")
}

pub fn promote(id: &str) -> String {
    format!("{PROMOTE}{id}")
}

/// The prefix of a task's rescue refs, `refs/loop/rescue/<id>/`.
pub fn rescues(id: &str) -> String {
    format!("{RESCUE}{id}/")
}

pub fn refused(id: &str) -> String {
    format!("{REFUSED}{id}")
}

/// A task branch's ref, `refs/heads/loop/<short>`.
pub fn branch(name: &str) -> String {
    format!("refs/heads/{name}")
}

/// Whether `name` is one of git-loop's refs (a stale lock on one is git-loop's to clear).
pub fn is_ours(name: &str) -> bool {
    name.starts_with(LOOP) || name.starts_with(NOTES)
}

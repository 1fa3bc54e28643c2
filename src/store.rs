//! The task store (SPEC §3, §4): one ref per task, `refs/loop/tasks/<id>`, pointing at a commit
//! chain. Each commit's tree holds `task.toml` (the document), `body.md` (the body, byte for
//! byte) and `runs/` (run records); its message names the transition; its first parent is the
//! previous state. Every write is a compare-and-swap on the ref, through [`Repo::cas`], so a
//! remote-backed compare-and-swap can replace the local one without touching the commands.

use std::time::Duration;

use anyhow::Result;
use gix::ObjectId;

use crate::cache::TaskCache;
use crate::error::{Class, LoopError};
use crate::git::{Cas, CasOutcome, CommitInfo, Kind, Repo};
use crate::ids;
use crate::refs;
use crate::task::{Task, machine};
use crate::time::Timestamp;

/// The task document in a task commit's tree.
pub const DOC: &str = "task.toml";
/// The task's body in a task commit's tree.
pub const BODY: &str = "body.md";
const RUNS: &str = "runs";

/// How many lost races an update survives before it gives up with a `transient` error.
const MAX_TRIES: u32 = 100;

/// One task as listed: its ref, and its document or why it could not be read.
#[derive(Clone, Debug)]
pub struct Listed {
    pub ref_name: String,
    /// The ref name's last component (the full id for a well-formed ref).
    pub id: String,
    pub tip: Option<ObjectId>,
    pub task: std::result::Result<Task, String>,
}

/// A task read with its body, and the commit it was read from.
#[derive(Clone, Debug)]
pub struct Stored {
    pub task: Task,
    pub commit: ObjectId,
    pub tree: ObjectId,
}

/// What an edit wants written.
pub struct Edit {
    /// The commit message: the transition, e.g. `ready -> human_gated: gated by a person`.
    pub message: String,
    /// Other refs that must still hold these values for the write to count (read locks).
    pub verify: Vec<(String, ObjectId)>,
    /// Other ref edits made in the same transaction (a lease taken or released with the state).
    pub also: Vec<Cas>,
    /// Files written into the state's tree beside the document (run records: `runs/0001.toml`).
    pub files: Vec<(String, Vec<u8>)>,
    /// Commits the state relies on, kept reachable as extra parents (a run's branch head).
    pub keep: Vec<ObjectId>,
}

impl Edit {
    pub fn new(message: impl Into<String>) -> Self {
        Edit {
            message: message.into(),
            verify: Vec::new(),
            also: Vec::new(),
            files: Vec::new(),
            keep: Vec::new(),
        }
    }

    /// Whether the edit writes something besides the document.
    fn has_extras(&self) -> bool {
        !self.also.is_empty() || !self.files.is_empty()
    }
}

/// What an update did.
#[derive(Debug)]
pub enum Updated {
    Changed(Task),
    /// The edit would have changed nothing, so nothing was written.
    Unchanged(Task),
}

/// What a [`Store::transition`] did.
#[derive(Debug)]
pub struct Moved {
    pub task: Task,
    /// Whether anything was written (an event already reflected writes nothing).
    pub changed: bool,
    /// The backoff the transition set, if any.
    pub backoff: Option<Duration>,
}

pub struct Store<'r> {
    repo: &'r Repo,
    sign: bool,
}

impl<'r> Store<'r> {
    pub fn new(repo: &'r Repo) -> Self {
        Store { repo, sign: false }
    }

    /// A store whose task commits are signed as the person's git signs when `commit.gpgSign`
    /// is on (SPEC §13, `[trust]`): for what a person writes at the command line (`task add`,
    /// `edit`, `cancel`, `gate`, `reopen`). Never for the runner's own writes: what an agent
    /// files through the runner must not carry the person's signature.
    pub fn signing(mut self, sign: bool) -> Self {
        self.sign = sign;
        self
    }

    /// Every task ref, with its document (without the body) or why it is corrupt.
    ///
    /// Documents come from the [`TaskCache`] when a ref still points at the commit an entry was
    /// read from, and from Git otherwise. The documents read from Git are first gathered into
    /// one buffer and parsed afterwards: interleaving long-lived allocations with the object
    /// reads fragments the heap badly on large backlogs.
    pub fn list(&self) -> Result<Vec<Listed>> {
        self.list_with(true)
    }

    /// Like [`Store::list`], but never writes the cache: for commands that promise to change
    /// nothing (`git loop doctor`). The cache is still read.
    pub fn list_read_only(&self) -> Result<Vec<Listed>> {
        self.list_with(false)
    }

    fn list_with(&self, refresh_cache: bool) -> Result<Vec<Listed>> {
        let refs = self.repo.refs_under(refs::TASKS)?;
        let mut memo = crate::cache::memo();
        let mut found: Vec<Option<std::result::Result<Task, String>>> = refs
            .iter()
            .map(|r| {
                let id = &r.name[refs::TASKS.len()..];
                match r.id {
                    None => Some(Err("a symbolic ref, not a task".to_string())),
                    Some(tip) => memo.get(&tip).filter(|t| t.id == id).cloned().map(Ok),
                }
            })
            .collect();
        let remembered = found.iter().filter(|f| f.is_some()).count();
        // What this process has not seen yet: from the cache file on its first listing, else
        // from Git (a few documents that moved since the last listing cost less than the file).
        let mut cache =
            (remembered == 0 && !refs.is_empty()).then(|| TaskCache::load(self.repo.common_dir()));
        if let Some(cache) = &mut cache {
            for (i, r) in refs.iter().enumerate() {
                let id = &r.name[refs::TASKS.len()..];
                if let (None, Some(tip)) = (&found[i], r.id) {
                    found[i] = cache.take(&tip).filter(|t| t.id == id).map(Ok);
                }
            }
        }

        let mut raw = Vec::new();
        let mut spans = Vec::with_capacity(found.iter().filter(|f| f.is_none()).count());
        for (i, r) in refs.iter().enumerate() {
            if let (None, Some(tip)) = (&found[i], r.id) {
                let start = raw.len();
                let read = self.read_doc_into(tip, &mut raw);
                spans.push((i, start..raw.len(), read));
            }
        }
        let read_from_git = spans.len();
        for (i, span, read) in spans {
            let id = &refs[i].name[refs::TASKS.len()..];
            found[i] = Some(read.and_then(|()| parse_doc(id, &raw[span])));
        }
        drop(raw);

        let out: Vec<Listed> = refs
            .into_iter()
            .zip(found)
            .map(|(r, task)| Listed {
                id: r.name[refs::TASKS.len()..].to_string(),
                ref_name: r.name,
                tip: r.id,
                task: task.unwrap_or_else(|| Err("not read".to_string())),
            })
            .collect();
        // The memo keeps exactly the documents of the refs as listed now.
        let live: std::collections::HashSet<ObjectId> = out.iter().filter_map(|l| l.tip).collect();
        memo.retain(|tip, _| live.contains(tip));
        for l in &out {
            if let (Some(tip), Ok(task)) = (l.tip, &l.task)
                && !memo.contains_key(&tip)
            {
                memo.insert(tip, task.clone());
            }
        }
        drop(memo);
        // The file is for the next process: rewritten after the first listing if it was not
        // current, and by a long-running process (the runner) now and then, not on every
        // listing.
        if refresh_cache {
            let live = out
                .iter()
                .filter_map(|l| Some((l.tip?, l.task.as_ref().ok()?)));
            match cache {
                Some(cache) => cache.store(live),
                None if read_from_git > 0 => {
                    crate::cache::store_now_and_then(self.repo.common_dir(), live)
                }
                None => {}
            }
        }
        Ok(out)
    }

    /// The ids of all task refs (well-formed or not).
    pub fn ids(&self) -> Result<Vec<String>> {
        Ok(self
            .repo
            .refs_under(refs::TASKS)?
            .into_iter()
            .map(|r| r.name[refs::TASKS.len()..].to_string())
            .collect())
    }

    /// Resolves a unique id prefix to a full id.
    pub fn resolve(&self, prefix: &str) -> Result<String> {
        let ids = self.ids()?;
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        Ok(ids::resolve(prefix, &refs)?.to_string())
    }

    /// Reads one task with its body; a corrupt task is a `config` error naming its ref.
    pub fn load(&self, id: &str) -> Result<Stored> {
        let name = refs::task(id);
        let tip = self.repo.read_ref(&name)?.ok_or_else(|| {
            LoopError::new(Class::Usage, format!("no task {id}"))
                .with_hint("`git loop task list` shows the ids")
        })?;
        self.read(id, tip, true).map_err(|why| {
            LoopError::new(Class::Config, format!("task ref {name} is corrupt: {why}"))
                .with_hint(format!(
                    "inspect it with `git log {name}`; point it back at a good commit with \
                     `git update-ref {name} <commit>`, or delete it with `git update-ref -d {name}`"
                ))
                .into()
        })
    }

    /// Reads the document (and optionally the body) at commit `tip`; `Err` says why it is corrupt.
    fn read(
        &self,
        id: &str,
        tip: ObjectId,
        with_body: bool,
    ) -> std::result::Result<Stored, String> {
        let tree = self.doc_tree(tip)?;
        let mut doc = Vec::new();
        self.read_blob_into(tree, tip, &mut doc)?;
        let mut task = parse_doc(id, &doc)?;
        if with_body {
            let body = self
                .repo
                .tree_blob(tree, BODY)
                .map_err(|e| format!("{e:#}"))?
                .unwrap_or_default();
            task.body = String::from_utf8(body).map_err(|_| format!("{BODY} is not UTF-8"))?;
        }
        Ok(Stored {
            task,
            commit: tip,
            tree,
        })
    }

    /// Appends the `task.toml` of commit `tip` to `out`.
    fn read_doc_into(&self, tip: ObjectId, out: &mut Vec<u8>) -> std::result::Result<(), String> {
        let tree = self.doc_tree(tip)?;
        self.read_blob_into(tree, tip, out)
    }

    fn doc_tree(&self, tip: ObjectId) -> std::result::Result<ObjectId, String> {
        match self.repo.commit_tree(tip) {
            Ok(Ok(tree)) => Ok(tree),
            Ok(Err(Some(kind))) => Err(format!("it points at a {}, not a commit", kind_name(kind))),
            Ok(Err(None)) => Err(format!("it points at {tip}, which does not exist")),
            Err(e) => Err(format!("{e:#}")),
        }
    }

    fn read_blob_into(
        &self,
        tree: ObjectId,
        tip: ObjectId,
        out: &mut Vec<u8>,
    ) -> std::result::Result<(), String> {
        match self.repo.tree_blob_into(tree, DOC, out) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("commit {tip} holds no {DOC}")),
            Err(e) => Err(format!("{e:#}")),
        }
    }

    /// Writes a new task. Its id must be new.
    pub fn create(&self, task: &Task) -> Result<ObjectId> {
        let commit = self.write_state(
            task,
            None,
            &format!("created: {}", task.state_label()),
            &[],
            &[],
        )?;
        match self.repo.cas(&[Cas::Create {
            name: refs::task(&task.id),
            new: commit,
        }])? {
            CasOutcome::Applied => Ok(commit),
            CasOutcome::Lost => Err(LoopError::new(
                Class::Transient,
                format!("could not create {}: its ref is busy", refs::task(&task.id)),
            )
            .with_hint("try again")
            .into()),
        }
    }

    /// Applies `edit` to the task by compare-and-swap. After a lost race the task is read again
    /// and `edit` applied again; if it then refuses, the refusal is `transient` (exit 4): the
    /// task changed under us. An edit that changes nothing writes nothing.
    pub fn update(
        &self,
        id: &str,
        mut edit: impl FnMut(&mut Task) -> Result<Edit>,
    ) -> Result<Updated> {
        let mut first: Option<(String, String)> = None;
        for attempt in 0..MAX_TRIES {
            let current = self.load(id)?;
            // What a person signs is what they had read: a title or body that changed under a
            // signed edit (a lost race) is not signed in its place.
            let read = (current.task.title.clone(), current.task.body.clone());
            if self.sign && first.get_or_insert_with(|| read.clone()) != &read {
                return Err(LoopError::new(
                    Class::Transient,
                    format!("task {id}'s title or body changed while it was being edited"),
                )
                .with_hint("look at it again (`git loop task show`), then edit it again")
                .into());
            }
            let mut task = current.task.clone();
            let change = match edit(&mut task) {
                Ok(change) => change,
                // The state machine's refusal is the answer itself: what the task is now does
                // not allow the change.
                Err(e) if crate::task::machine::Refusal::of(&e).is_some() => return Err(e),
                Err(e) if attempt > 0 && is_refusal(&e) => {
                    let why = crate::error::find(&e)
                        .map(|l| l.message.clone())
                        .unwrap_or_default();
                    return Err(LoopError::new(
                        Class::Transient,
                        format!("task {id} changed while it was being edited: {why}"),
                    )
                    .into());
                }
                Err(e) => return Err(e),
            };
            if task == current.task && !change.has_extras() {
                return Ok(Updated::Unchanged(task));
            }
            match self.apply(&current, task, change)? {
                Some(task) => return Ok(Updated::Changed(task)),
                None => {
                    let cap_ms = 20u64.min(1 << attempt.min(5));
                    std::thread::sleep(Duration::from_micros(crate::rand::below_or_equal(
                        cap_ms * 1000,
                    )));
                }
            }
        }
        Err(LoopError::new(
            Class::Transient,
            format!("gave up updating task {id} after {MAX_TRIES} lost races with other writers"),
        )
        .with_hint("try again; something else is writing this task continuously")
        .into())
    }

    /// Applies `event`, by `actor`, to task `id` through the state machine
    /// ([`crate::task::machine::apply`]), by compare-and-swap from the commit read: after a
    /// lost race the event is applied again to the task as it is then, which may refuse it
    /// (the error is then a [`crate::task::machine::Refusal`]). `with` adds what goes into the
    /// same transaction (run records, a lease taken or released); it may refuse too.
    pub fn transition(
        &self,
        id: &str,
        event: &machine::Event,
        actor: &machine::Actor,
        budget: &machine::Budget,
        mut with: impl FnMut(&machine::Transition, &mut Edit) -> Result<()>,
    ) -> Result<Moved> {
        let mut backoff = None;
        let updated = self.update(id, |t| {
            let transition = machine::apply(t, event, actor, budget, machine::Clock::now())?;
            let mut edit = Edit::new(transition.message.clone());
            with(&transition, &mut edit)?;
            backoff = transition.backoff;
            *t = transition.task;
            Ok(edit)
        })?;
        Ok(match updated {
            Updated::Changed(task) => Moved {
                task,
                changed: true,
                backoff,
            },
            Updated::Unchanged(task) => Moved {
                task,
                changed: false,
                backoff: None,
            },
        })
    }

    /// Writes `task` over `current` with `edit`, by one compare-and-swap: `None` when another
    /// writer got there first (nothing was changed). No retry: claims use this directly.
    pub fn apply(&self, current: &Stored, mut task: Task, edit: Edit) -> Result<Option<Task>> {
        task.updated = Timestamp::now().max(Timestamp(current.task.updated.0 + 1));
        let name = refs::task(&task.id);
        let commit =
            self.write_state(&task, Some(current), &edit.message, &edit.files, &edit.keep)?;
        let mut edits = vec![Cas::Update {
            name: name.clone(),
            old: current.commit,
            new: commit,
        }];
        edits.extend(
            edit.verify
                .into_iter()
                .filter(|(n, _)| *n != name)
                .map(|(name, old)| Cas::Verify { name, old }),
        );
        edits.extend(edit.also);
        Ok(match self.repo.cas(&edits)? {
            CasOutcome::Applied => Some(task),
            CasOutcome::Lost => None,
        })
    }

    fn write_state(
        &self,
        task: &Task,
        previous: Option<&Stored>,
        message: &str,
        extra: &[(String, Vec<u8>)],
        keep: &[ObjectId],
    ) -> Result<ObjectId> {
        let doc = self.repo.write_blob(task.to_toml()?.as_bytes())?;
        let mut files = vec![(DOC.to_string(), doc)];
        if previous.is_none_or(|p| p.task.body != task.body) {
            files.push((
                BODY.to_string(),
                self.repo.write_blob(task.body.as_bytes())?,
            ));
        }
        for (path, bytes) in extra {
            files.push((path.clone(), self.repo.write_blob(bytes)?));
        }
        let files: Vec<(&str, ObjectId)> = files.iter().map(|(p, id)| (p.as_str(), *id)).collect();
        let tree = self.repo.write_tree(previous.map(|p| p.tree), &files)?;
        let mut parents: Vec<ObjectId> = previous.map(|p| p.commit).into_iter().collect();
        for k in keep {
            if !parents.contains(k) {
                parents.push(*k);
            }
        }
        // A failure's account this clone writes is remembered here, so that under `[trust]`
        // it is told to the next run while one pushed from elsewhere is not.
        if let Some(context) = &task.context
            && previous.is_none_or(|p| p.task.context.as_ref() != Some(context))
        {
            crate::trust::remember(self.repo, crate::trust::Kept::Context, &task.id, context);
        }
        let message = format!("{message}\n\nLoop-Task: {}\n", task.id);
        if self.sign {
            return self.repo.write_signed_commit(&message, tree, &parents);
        }
        self.repo.write_commit(&message, tree, &parents)
    }

    /// Records a transition of task `id` that the state machine refused, on
    /// `refs/loop/refused/<id>` (a chain of commits over the empty tree, for `git loop log`);
    /// `keep` are commits the refusal saved, kept reachable.
    pub fn note_refusal(&self, id: &str, message: &str, keep: &[ObjectId]) -> Result<()> {
        let name = refs::refused(id);
        let tree = ObjectId::empty_tree(gix::hash::Kind::Sha1);
        for _ in 0..MAX_TRIES {
            let old = self.repo.read_ref(&name)?;
            let mut parents: Vec<ObjectId> = old.into_iter().collect();
            for k in keep {
                if !parents.contains(k) {
                    parents.push(*k);
                }
            }
            let commit = self.repo.write_commit(
                &format!("{message}\n\nLoop-Task: {id}\n"),
                tree,
                &parents,
            )?;
            let edit = match old {
                Some(old) => Cas::Update {
                    name: name.clone(),
                    old,
                    new: commit,
                },
                None => Cas::Create {
                    name: name.clone(),
                    new: commit,
                },
            };
            if self.repo.cas(&[edit])? == CasOutcome::Applied {
                return Ok(());
            }
        }
        Err(LoopError::new(Class::Transient, format!("could not write {name}")).into())
    }

    /// The task's history: its ref's first-parent chain, newest first.
    pub fn history(&self, id: &str) -> Result<Vec<CommitInfo>> {
        let Some(tip) = self.repo.read_ref(&refs::task(id))? else {
            return Ok(Vec::new());
        };
        chain(self.repo, tip)
    }

    /// The run records stored with a task state, by file name, as TOML tables.
    pub fn runs(&self, stored: &Stored) -> Result<Vec<(String, toml::Table)>> {
        let mut out = Vec::new();
        for (name, blob) in self.repo.tree_dir_blobs(stored.tree, RUNS)? {
            let bytes = self.repo.blob(blob)?;
            let table = String::from_utf8(bytes)
                .ok()
                .and_then(|t| t.parse::<toml::Table>().ok())
                .unwrap_or_default();
            out.push((name, table));
        }
        Ok(out)
    }
}

/// Parses a stored `task.toml` of the task `id`; `Err` says why it is corrupt.
fn parse_doc(id: &str, bytes: &[u8]) -> std::result::Result<Task, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| format!("{DOC} is not UTF-8"))?;
    let task = Task::from_toml(text).map_err(|e| format!("{DOC} does not parse: {e}"))?;
    if task.id != id {
        return Err(format!("{DOC} names the task {}", task.id));
    }
    Ok(task)
}

/// A ref's first-parent chain from `tip`, newest first.
pub fn chain(repo: &Repo, tip: ObjectId) -> Result<Vec<CommitInfo>> {
    let mut out = Vec::new();
    let mut next = Some(tip);
    while let Some(id) = next {
        let info = repo.commit_info(id)?;
        next = info.parents.first().copied();
        out.push(info);
    }
    Ok(out)
}

/// An edit that declined to apply (as opposed to failing to read or write).
fn is_refusal(e: &anyhow::Error) -> bool {
    matches!(
        crate::error::class_of(e),
        Class::Usage | Class::Generic | Class::Policy
    ) && crate::error::find(e).is_some()
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Commit => "commit",
        Kind::Tree => "tree",
        Kind::Blob => "blob",
        Kind::Tag => "tag",
    }
}

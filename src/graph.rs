//! The task graph: dependency checks on write, and the runnable set in dispatch order.

use std::collections::{HashMap, HashSet};

use crate::error::{Class, LoopError};
use crate::ids::ShortIds;
use crate::task::{State, Task};
use crate::time::Timestamp;

/// The tasks of a backlog by id, for graph questions.
pub struct Graph<'a> {
    tasks: HashMap<&'a str, &'a Task>,
}

impl<'a> Graph<'a> {
    pub fn new(tasks: impl IntoIterator<Item = &'a Task>) -> Self {
        Graph {
            tasks: tasks.into_iter().map(|t| (t.id.as_str(), t)).collect(),
        }
    }

    pub fn get(&self, id: &str) -> Option<&'a Task> {
        self.tasks.get(id).copied()
    }

    /// Checks that `task` may depend on `deps`: each exists, and none leads back to `task`.
    /// Returns the ids of every task the check relied on, so that the write can require them
    /// unchanged (two concurrent edits cannot then close a cycle between them).
    pub fn check_deps(
        &self,
        task: &str,
        deps: &[String],
        short: &ShortIds,
    ) -> Result<Vec<String>, LoopError> {
        for dep in deps {
            if dep == task {
                return Err(LoopError::new(
                    Class::Usage,
                    format!("task {} cannot depend on itself", short.short(task)),
                ));
            }
            if !self.tasks.contains_key(dep.as_str()) {
                return Err(LoopError::new(
                    Class::Usage,
                    format!("unknown dependency {dep}: no such task"),
                ));
            }
        }
        // Depth-first search from the new dependencies along `after` edges.
        let mut visited: HashSet<&str> = HashSet::new();
        let mut parent: HashMap<&str, &str> = HashMap::new();
        let mut stack: Vec<&str> = Vec::new();
        for dep in deps {
            if visited.insert(dep.as_str()) {
                stack.push(dep.as_str());
            }
        }
        while let Some(node) = stack.pop() {
            let Some(t) = self.tasks.get(node) else {
                continue;
            };
            for next in &t.after {
                let next = next.as_str();
                if next == task {
                    // task -> ... -> node -> task
                    let mut path = vec![node];
                    let mut cur = node;
                    while let Some(p) = parent.get(cur) {
                        path.push(p);
                        cur = p;
                    }
                    path.reverse();
                    let mut names = vec![short.short(task).to_string()];
                    names.extend(path.iter().map(|id| short.short(id).to_string()));
                    names.push(short.short(task).to_string());
                    return Err(LoopError::new(
                        Class::Usage,
                        format!("that would make a dependency cycle: {}", names.join(" -> ")),
                    )
                    .with_hint("each arrow reads \"runs after\"; drop one of these dependencies"));
                }
                if visited.insert(next) {
                    parent.insert(next, node);
                    stack.push(next);
                }
            }
        }
        Ok(visited.into_iter().map(str::to_string).collect())
    }

    /// Whether `task` can be dispatched now: a runnable state, its time has come, and every
    /// dependency is done.
    pub fn is_runnable(&self, task: &Task, now: Timestamp) -> bool {
        let state_ok = matches!(
            task.state,
            State::Ready | State::NeedsRework | State::QuotaWait
        );
        state_ok && task.next_at.is_none_or(|at| at <= now) && self.deps_done(task)
    }

    pub fn deps_done(&self, task: &Task) -> bool {
        task.after
            .iter()
            .all(|d| self.get(d).is_some_and(|t| t.state == State::Done))
    }

    /// The dependencies of `task` that are not done yet.
    pub fn pending_deps(&self, task: &'a Task) -> Vec<&'a str> {
        task.after
            .iter()
            .filter(|d| self.get(d).is_none_or(|t| t.state != State::Done))
            .map(String::as_str)
            .collect()
    }

    /// The runnable set in dispatch order: priority (higher first), then age (older first).
    pub fn runnable(&self, now: Timestamp) -> Vec<&'a Task> {
        let mut out: Vec<&Task> = self
            .tasks
            .values()
            .copied()
            .filter(|t| self.is_runnable(t, now))
            .collect();
        sort_dispatch_order(&mut out);
        out
    }
}

/// Priority (higher first), then age (older first), then id.
pub fn sort_dispatch_order(tasks: &mut [&Task]) {
    tasks.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.created.cmp(&b.created))
            .then(a.id.cmp(&b.id))
    });
}

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

    /// Every dependency that names no known task, as (task, dependency), sorted. `known` holds
    /// the ids of every task ref, readable or not: a dependency on a corrupt task is not
    /// dangling (the corrupt ref is reported as such).
    pub fn dangling(&self, known: &HashSet<&str>) -> Vec<(&'a str, &'a str)> {
        let mut out: Vec<(&str, &str)> = self
            .tasks
            .values()
            .flat_map(|t| {
                t.after
                    .iter()
                    .filter(|d| !known.contains(d.as_str()))
                    .map(move |d| (t.id.as_str(), d.as_str()))
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// A dependency cycle, if the graph has one: the ids along it, each running after the
    /// next, the first repeated at the end (`a -> b -> a`).
    pub fn find_cycle(&self) -> Option<Vec<&'a str>> {
        // Depth-first search with an explicit stack; `on_path` marks the nodes of the current
        // path, `done` those whose every descendant has been explored.
        let mut ids: Vec<&'a str> = self.tasks.keys().copied().collect();
        ids.sort_unstable();
        let mut on_path: HashSet<&'a str> = HashSet::new();
        let mut done: HashSet<&'a str> = HashSet::new();
        for start in ids {
            if done.contains(start) {
                continue;
            }
            let mut stack: Vec<(&'a str, usize)> = vec![(start, 0)];
            on_path.insert(start);
            while let Some(&(node, i)) = stack.last() {
                let deps = self.tasks.get(node).map_or(&[][..], |t| &t.after[..]);
                let Some(next) = deps.get(i).map(String::as_str) else {
                    on_path.remove(node);
                    done.insert(node);
                    stack.pop();
                    continue;
                };
                if let Some(top) = stack.last_mut() {
                    top.1 += 1;
                }
                let Some(next) = self.tasks.get_key_value(next).map(|(k, _)| *k) else {
                    continue; // dangling: reported by `dangling`
                };
                if on_path.contains(next) {
                    let from = stack.iter().position(|(n, _)| *n == next)?;
                    let mut cycle: Vec<&'a str> = stack[from..].iter().map(|(n, _)| *n).collect();
                    cycle.push(next);
                    return Some(cycle);
                }
                if !done.contains(next) {
                    on_path.insert(next);
                    stack.push((next, 0));
                }
            }
        }
        None
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

#[cfg(test)]
mod tests {
    use super::*;

    fn task(n: u8, after: &[u8]) -> Task {
        let id = |n: u8| format!("{n:032x}");
        let after: Vec<String> = after.iter().map(|d| format!("\"{}\"", id(*d))).collect();
        Task::from_toml(&format!(
            "id = \"{}\"\ntitle = \"t\"\nstate = \"ready\"\nbatch = \"default\"\n\
             after = [{}]\nbranch = \"loop/x\"\ncreated = \"2026-01-01T00:00:00Z\"\n\
             updated = \"2026-01-01T00:00:00Z\"\n",
            id(n),
            after.join(", ")
        ))
        .expect("a valid task")
    }

    #[test]
    fn finds_a_cycle_and_names_it_in_order() {
        let tasks = [task(1, &[2]), task(2, &[3]), task(3, &[1]), task(4, &[1])];
        let graph = Graph::new(tasks.iter());
        let cycle = graph.find_cycle().expect("a cycle");
        assert_eq!(cycle.len(), 4, "{cycle:?}");
        assert_eq!(cycle.first(), cycle.last());
        for pair in cycle.windows(2) {
            let t = graph.get(pair[0]).expect("on the cycle");
            assert!(t.after.iter().any(|d| d == pair[1]), "{cycle:?}");
        }
        let acyclic = [
            task(1, &[2, 3]),
            task(2, &[3]),
            task(3, &[]),
            task(4, &[1, 3]),
        ];
        assert_eq!(Graph::new(acyclic.iter()).find_cycle(), None);
        let itself = [task(5, &[5])];
        assert_eq!(
            Graph::new(itself.iter()).find_cycle().map(|c| c.len()),
            Some(2)
        );
    }

    #[test]
    fn dangling_dependencies_exclude_known_but_unreadable_tasks() {
        let tasks = [task(1, &[2, 9]), task(2, &[8])];
        let graph = Graph::new(tasks.iter());
        let nine = format!("{:032x}", 9);
        let known: HashSet<&str> = tasks
            .iter()
            .map(|t| t.id.as_str())
            .chain([nine.as_str()])
            .collect();
        let eight = format!("{:032x}", 8);
        assert_eq!(
            graph.dangling(&known),
            vec![(tasks[1].id.as_str(), eight.as_str())]
        );
    }
}

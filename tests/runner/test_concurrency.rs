//! Real processes racing on real refs: no silently lost update.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::Arc;

use crate::common::TestRepo;

const PROCS: usize = 8;
const EACH: usize = 50;

/// Runs `PROCS` threads, each starting `EACH` git-loop processes one after another;
/// returns (thread, index, exit code) for every process.
fn race(
    repo: &Arc<TestRepo>,
    args: impl Fn(usize, usize) -> Vec<String> + Send + Sync + 'static,
) -> Vec<(usize, usize, i32)> {
    let args = Arc::new(args);
    let barrier = Arc::new(std::sync::Barrier::new(PROCS));
    let handles: Vec<_> = (0..PROCS)
        .map(|p| {
            let repo = Arc::clone(repo);
            let args = Arc::clone(&args);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                (0..EACH)
                    .map(|i| {
                        let a = args(p, i);
                        let a: Vec<&str> = a.iter().map(String::as_str).collect();
                        let status = repo
                            .cmd(&a)
                            .stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status()
                            .expect("run");
                        (p, i, status.code().unwrap_or(-1))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("thread"))
        .collect()
}

#[test]
fn concurrent_edits_of_one_task_are_all_recorded_or_exit_4() {
    let repo = Arc::new(TestRepo::new());
    let id = repo.add("contended", &[]);
    let target = id.clone();
    let results = race(&repo, move |p, i| {
        vec![
            "task".into(),
            "edit".into(),
            target.clone(),
            "--title".into(),
            format!("edit p{p} i{i}"),
        ]
    });

    // Every title the chain ever held, read with plain git.
    let name = format!("refs/loop/tasks/{id}");
    let commits = repo.git(&["rev-list", "--first-parent", &name]);
    let input: String = commits
        .lines()
        .map(|c| format!("{c}:task.toml\n"))
        .collect();
    let docs = repo.git_stdin(&["cat-file", "--batch"], input.as_bytes());
    let titles: HashSet<String> = docs
        .lines()
        .filter_map(|l| l.strip_prefix("title = \""))
        .map(|t| t.trim_end_matches('"').to_string())
        .collect();

    let mut succeeded = 0;
    for (p, i, code) in &results {
        match code {
            0 => {
                succeeded += 1;
                assert!(
                    titles.contains(&format!("edit p{p} i{i}")),
                    "edit p{p} i{i} exited 0 but is not in the history: a lost update"
                );
            }
            4 => {}
            other => panic!("edit p{p} i{i} exited {other}"),
        }
    }
    assert!(succeeded > 0);
    assert_eq!(
        commits.lines().count(),
        succeeded + 1,
        "one commit per successful edit, plus the creation"
    );
}

#[test]
fn concurrent_adds_make_exactly_400_tasks() {
    let repo = Arc::new(TestRepo::new());
    let results = race(&repo, |p, i| {
        vec![
            "task".into(),
            "add".into(),
            format!("task p{p} i{i}"),
            "--body".into(),
            crate::common::GOOD_BODY.into(),
        ]
    });
    assert!(
        results.iter().all(|(_, _, code)| *code == 0),
        "every add succeeds: {results:?}"
    );
    assert_eq!(repo.refs("refs/loop/tasks/").len(), PROCS * EACH);
    let listed = repo.run(&["task", "list", "--json"]).json();
    let titles: HashSet<&str> = listed
        .as_array()
        .expect("array")
        .iter()
        .map(|t| t["title"].as_str().expect("title"))
        .collect();
    assert_eq!(titles.len(), PROCS * EACH, "each add is its own task");
}

#[test]
fn concurrent_dependency_edits_cannot_close_a_cycle() {
    // Two edits that would each be fine alone but together make a cycle: a after b, b after a.
    for _ in 0..10 {
        let repo = Arc::new(TestRepo::new());
        let a = repo.add("a", &[]);
        let b = repo.add("b", &[]);
        let pairs = [(a.clone(), b.clone()), (b.clone(), a.clone())];
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let handles: Vec<_> = pairs
            .into_iter()
            .map(|(x, y)| {
                let repo = Arc::clone(&repo);
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    repo.run(&["task", "edit", &x, "--after", &y]).code
                })
            })
            .collect();
        let codes: Vec<i32> = handles
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect();
        assert_eq!(
            codes.iter().filter(|c| **c == 0).count(),
            1,
            "exactly one wins: {codes:?}"
        );
        assert!(codes.iter().all(|c| [0, 2, 4].contains(c)), "{codes:?}");
        let a_doc = repo.task_doc(&a);
        let b_doc = repo.task_doc(&b);
        assert!(
            !(a_doc.contains(&b) && b_doc.contains(&a)),
            "a cycle was stored:\n{a_doc}\n{b_doc}"
        );
    }
}

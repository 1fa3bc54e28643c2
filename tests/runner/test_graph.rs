//! The task graph: cycles and dangling dependencies refused, the ready set right.

use crate::common::{TestRepo, ids_of};

fn ready(repo: &TestRepo) -> Vec<String> {
    ids_of(&repo.run(&["ready", "--json"]).json())
}

#[test]
fn a_cycle_is_refused_naming_it() {
    let repo = TestRepo::new();
    let a = repo.add("a", &[]);
    let b = repo.add("b", &["--after", &a]);
    let c = repo.add("c", &["--after", &b]);
    let before = repo.task_tip(&a);
    let out = repo.fails(&["task", "edit", &a, "--after", &c], 2);
    let cycle = format!("{} -> {} -> {} -> {}", &a[..7], &c[..7], &b[..7], &a[..7]);
    assert!(
        out.stderr.contains(&cycle),
        "wanted {cycle} in {}",
        out.stderr
    );
    assert_eq!(repo.task_tip(&a), before, "nothing written");
    let out = repo.fails(&["task", "edit", &a, "--after", &a], 2);
    assert!(
        out.stderr.contains("cannot depend on itself"),
        "{}",
        out.stderr
    );
    // A dependency that closes no cycle is fine.
    let d = repo.add("d", &[]);
    repo.ok(&["task", "edit", &a, "--after", &d]);
    assert!(repo.task_doc(&a).contains(&d));
}

#[test]
fn a_dangling_dependency_is_refused() {
    let repo = TestRepo::new();
    let a = repo.add("a", &[]);
    let out = repo.run(&[
        "task",
        "add",
        "b",
        "--after",
        "deadbeef",
        "--body",
        crate::common::GOOD_BODY,
    ]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("deadbeef"), "{}", out.stderr);
    assert_eq!(repo.refs("refs/loop/tasks/").len(), 1, "nothing was filed");
    let out = repo.fails(&["task", "edit", &a, "--after", "0123456789"], 2);
    assert!(out.stderr.contains("0123456789"), "{}", out.stderr);
}

#[test]
fn the_ready_set_on_a_diamond() {
    let repo = TestRepo::new();
    let a = repo.add("a", &[]);
    let b = repo.add("b", &["--after", &a]);
    let c = repo.add("c", &["--after", &a, "--priority", "1"]);
    let d = repo.add("d", &["--after", &b, "--after", &c]);
    assert_eq!(ready(&repo), vec![a.clone()]);
    repo.set_state(&a, "done");
    assert_eq!(ready(&repo), vec![c.clone(), b.clone()], "priority first");
    repo.set_state(&c, "done");
    assert_eq!(ready(&repo), vec![b.clone()], "d still waits for b");
    repo.set_state(&b, "done");
    assert_eq!(ready(&repo), vec![d.clone()]);
    let table = repo.ok(&["ready"]);
    assert!(table.contains(&d[..7]), "{table}");
}

#[test]
fn ready_orders_by_priority_then_age_and_honours_next_at() {
    let repo = TestRepo::new();
    let old = repo.add("old", &[]);
    let new = repo.add("new", &[]);
    let urgent = repo.add("urgent", &["--priority", "9"]);
    let low = repo.add("low", &["--priority", "-1"]);
    assert_eq!(
        ready(&repo),
        vec![urgent.clone(), old.clone(), new.clone(), low.clone()]
    );

    repo.poke(&old, "next_at", "\"2999-01-01T00:00:00.000000Z\"");
    assert_eq!(ready(&repo), vec![urgent.clone(), new.clone(), low.clone()]);
    repo.poke(&old, "next_at", "\"2000-01-01T00:00:00.000000Z\"");
    assert_eq!(
        ready(&repo),
        vec![urgent.clone(), old.clone(), new.clone(), low.clone()]
    );

    // needs_rework and a finished quota wait are runnable; the other states are not.
    repo.set_state(&new, "needs_rework");
    repo.set_state(&low, "quota_wait");
    repo.set_state(&urgent, "running");
    assert_eq!(ready(&repo), vec![old.clone(), new.clone(), low.clone()]);
}

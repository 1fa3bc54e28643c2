//! The task store and the task commands, against real repositories.

use crate::common::{GOOD_BODY, TestRepo, ids_of};

#[test]
fn add_prints_the_id_alone_and_stores_a_commit_chain() {
    let repo = TestRepo::new();
    let out = repo.run(&["task", "add", "Write the parser", "--body", GOOD_BODY]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let id = out.stdout.trim_end_matches('\n');
    assert_eq!(out.stdout, format!("{id}\n"), "stdout is the id alone");
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(repo.refs("refs/loop/").len(), 1);
    let doc = repo.task_doc(id);
    assert!(doc.contains("title = \"Write the parser\""), "{doc}");
    assert!(doc.contains("state = \"ready\""), "{doc}");
    assert!(
        doc.contains(&format!("branch = \"loop/{}\"", &id[..7])),
        "{doc}"
    );
    let body = repo.git(&["cat-file", "blob", &format!("refs/loop/tasks/{id}:body.md")]);
    assert_eq!(body, GOOD_BODY);
    let message = repo.git(&["log", "-1", "--format=%B", &format!("refs/loop/tasks/{id}")]);
    assert!(message.starts_with("created: ready\n"), "{message}");
}

#[test]
fn list_and_show_use_short_ids_and_json_has_stable_fields() {
    let repo = TestRepo::new();
    let a = repo.add("first", &["--priority", "3", "--mutex", "db"]);
    let b = repo.add(
        "second",
        &["--after", &a[..9], "--batch", "nightly", "--from", &a[..7]],
    );
    let list = repo.ok(&["task", "list"]);
    assert!(list.contains(&a[..7]) && !list.contains(&a[..8]), "{list}");
    assert!(list.contains("first") && list.contains("second"), "{list}");

    let v = repo.run(&["task", "list", "--json"]).json();
    assert_eq!(ids_of(&v), vec![a.clone(), b.clone()], "dispatch order");
    let t = &v[1];
    for key in [
        "id",
        "short_id",
        "title",
        "state",
        "reason",
        "detail",
        "batch",
        "priority",
        "after",
        "waiting_on",
        "mutex",
        "attempts",
        "next_at",
        "signatures",
        "discovered_from",
        "branch",
        "created",
        "updated",
        "promoted_commit",
    ] {
        assert!(t.get(key).is_some(), "field {key} missing from {t}");
    }
    assert_eq!(t["after"][0], a.as_str());
    assert_eq!(t["waiting_on"][0], a.as_str());
    assert_eq!(t["batch"], "nightly");
    assert_eq!(t["discovered_from"], a.as_str());
    assert_eq!(v[0]["mutex"], "db");

    let filtered = repo
        .run(&["task", "list", "--batch", "nightly", "--json"])
        .json();
    assert_eq!(ids_of(&filtered), vec![b.clone()]);

    let show = repo.run(&["task", "show", &b[..8], "--json"]).json();
    assert_eq!(show["id"], b.as_str());
    assert_eq!(show["body"], GOOD_BODY);
    assert_eq!(show["history"][0]["subject"], "created: ready");
    assert_eq!(
        show["history"][0]["message"],
        format!("created: ready\n\nLoop-Task: {b}").as_str()
    );
    assert!(show["runs"].as_array().expect("runs").is_empty());
    let text = repo.ok(&["task", "show", &b[..7]]);
    assert!(
        text.contains(&format!("after:     {} (ready)", &a[..7])),
        "{text}"
    );
}

#[test]
fn ambiguous_prefix_lists_the_candidates() {
    let repo = TestRepo::new();
    // With 17 tasks two ids must share their first hex digit.
    let ids: Vec<String> = (0..17).map(|i| repo.add(&format!("t{i}"), &[])).collect();
    let digit = (0..16)
        .map(|d| format!("{d:x}"))
        .find(|d| ids.iter().filter(|id| id.starts_with(d.as_str())).count() >= 2)
        .expect("pigeonhole");
    let out = repo.fails(&["task", "show", &digit], 2);
    assert!(out.stderr.contains("is ambiguous"), "{}", out.stderr);
    for id in ids.iter().filter(|id| id.starts_with(digit.as_str())) {
        assert!(
            out.stderr.contains(id.as_str()),
            "{} lists {id}",
            out.stderr
        );
    }
    let out = repo.fails(&["task", "show", "zz"], 2);
    assert!(out.stderr.contains("is not a task id"), "{}", out.stderr);
}

#[test]
fn thin_tasks_are_held_until_edited() {
    let repo = TestRepo::new();
    let out = repo.run(&["task", "add", "fix it", "--body", "make it work"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let id = out.stdout.trim().to_string();
    let show = repo.run(&["task", "show", &id, "--json"]).json();
    assert_eq!(show["state"], "blocked");
    assert_eq!(show["reason"], "thin_task");
    assert!(
        repo.run(&["ready", "--json"])
            .json()
            .as_array()
            .expect("array")
            .is_empty()
    );

    // Long enough but not saying how done is checked: still held.
    let vague = "word ".repeat(40);
    repo.ok(&["task", "edit", &id, "--body", &vague]);
    let show = repo.run(&["task", "show", &id, "--json"]).json();
    assert_eq!(show["reason"], "thin_task");
    assert!(
        show["detail"]
            .as_str()
            .expect("detail")
            .contains("how done is checked")
    );

    repo.ok(&["task", "edit", &id, "--body", GOOD_BODY]);
    let show = repo.run(&["task", "show", &id, "--json"]).json();
    assert_eq!(show["state"], "ready");
    assert_eq!(
        ids_of(&repo.run(&["ready", "--json"]).json()),
        vec![id.clone()]
    );
    assert!(
        show["history"][0]["subject"]
            .as_str()
            .expect("subject")
            .starts_with("blocked -> ready: edit: body")
    );
}

#[test]
fn triage_follows_the_policy() {
    let repo = TestRepo::new();
    repo.write(
        "policy.toml",
        "[agent]\ncommand = [\"a\"]\n[triage]\nmin_body_chars = 0\nrequire_acceptance = false\n",
    );
    let id = repo.ok(&["task", "add", "tiny"]).trim().to_string();
    assert!(repo.task_doc(&id).contains("state = \"ready\""));
}

#[test]
fn edits_are_recorded_and_a_no_op_writes_nothing() {
    let repo = TestRepo::new();
    let id = repo.add("before", &[]);
    repo.ok(&["task", "edit", &id, "--title", "after", "--priority", "5"]);
    let tip = repo.task_tip(&id);
    let out = repo.run(&["task", "edit", &id, "--title", "after", "--priority", "5"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("nothing changed"), "{}", out.stderr);
    assert_eq!(repo.task_tip(&id), tip, "a no-op edit leaves the ref alone");
    let log = repo.git(&["log", "--format=%s", &format!("refs/loop/tasks/{id}")]);
    assert_eq!(log, "edit: title, priority\ncreated: ready\n");
    repo.fails(&["task", "edit", &id], 2);
}

#[test]
fn gate_cancel_reopen() {
    let repo = TestRepo::new();
    let id = repo.add("t", &[]);
    repo.ok(&["task", "gate", &id, "--reason", "needs a product decision"]);
    let show = repo.run(&["task", "show", &id, "--json"]).json();
    assert_eq!(show["state"], "human_gated");
    assert_eq!(show["detail"], "needs a product decision");
    repo.ok(&["task", "reopen", &id]);
    assert!(repo.task_doc(&id).contains("state = \"ready\""));
    repo.ok(&["task", "cancel", &id]);
    let tip = repo.task_tip(&id);
    let out = repo.ok(&["task", "cancel", &id]);
    assert!(out.contains("cancelled"), "{out}");
    assert_eq!(repo.task_tip(&id), tip, "cancelling twice writes once");
    repo.fails(&["task", "gate", &id, "--reason", "x"], 2);
    repo.ok(&["task", "reopen", &id]);
    let log = repo.git(&["log", "--format=%s", &format!("refs/loop/tasks/{id}")]);
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        vec![
            "cancelled -> ready: reopened by a person",
            "ready -> cancelled: cancelled by a person",
            "human_gated: gated -> ready: reopened by a person",
            "ready -> human_gated: gated by a person: needs a product decision",
            "created: ready",
        ]
    );
    repo.set_state(&id, "done");
    repo.fails(&["task", "cancel", &id], 2);
    repo.fails(&["task", "reopen", &id], 2);
    repo.fails(&["task", "edit", &id, "--title", "x"], 2);
}

#[test]
fn log_merges_the_chains_newest_first() {
    let repo = TestRepo::new();
    let a = repo.add("a", &[]);
    let b = repo.add("b", &[]);
    repo.ok(&["task", "cancel", &a]);
    let v = repo.run(&["log", "--json"]).json();
    let events = v.as_array().expect("array");
    assert_eq!(events.len(), 3);
    let only_a = repo.run(&["log", "--task", &a[..7], "--json"]).json();
    let messages: Vec<&str> = only_a
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["message"].as_str().expect("message"))
        .collect();
    assert_eq!(
        messages,
        vec![
            "ready -> cancelled: cancelled by a person",
            "created: ready"
        ]
    );
    assert!(events.iter().any(|e| e["task"] == b.as_str()));
}

#[test]
fn works_without_any_identity() {
    let repo = TestRepo::new();
    let mut cmd = repo.cmd(&["task", "add", "no identity", "--body", GOOD_BODY]);
    for var in [
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.output().expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let who = repo.git(&[
        "log",
        "-1",
        "--format=%an <%ae>",
        &format!("refs/loop/tasks/{id}"),
    ]);
    assert_eq!(who.trim(), "git-loop <git-loop@localhost>");

    repo.git(&["config", "user.name", "Configured Person"]);
    repo.git(&["config", "user.email", "person@example.com"]);
    let mut cmd = repo.cmd(&["task", "cancel", &id]);
    for var in [
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
    ] {
        cmd.env_remove(var);
    }
    assert_eq!(cmd.output().expect("run").status.code(), Some(0));
    let who = repo.git(&[
        "log",
        "-1",
        "--format=%an <%ae>",
        &format!("refs/loop/tasks/{id}"),
    ]);
    assert_eq!(who.trim(), "Configured Person <person@example.com>");
}

#[test]
fn reftable_repositories_are_refused() {
    let repo = TestRepo::with_init(&["init", "-q", "-b", "main", "--ref-format=reftable"]);
    let out = repo.fails(&["task", "list"], 3);
    assert!(out.stderr.contains("reftable"), "{}", out.stderr);
    let out = repo.fails(&["task", "add", "x", "--body", GOOD_BODY], 3);
    assert!(out.stderr.contains("hint:"), "{}", out.stderr);
    assert!(repo.git(&["for-each-ref", "refs/loop/"]).is_empty());
}

#[test]
fn outside_a_repository_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cmd = std::process::Command::new(crate::common::BIN);
    cmd.args(["task", "list"]).current_dir(dir.path());
    crate::common::hermetic(&mut cmd, dir.path());
    cmd.env(
        "GIT_CEILING_DIRECTORIES",
        dir.path().parent().expect("parent"),
    );
    let out = cmd.output().expect("run");
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: not a git repository"));
}

#[test]
fn corrupt_task_refs_are_marked_and_the_rest_listed() {
    let repo = TestRepo::new();
    let good = repo.add("good", &[]);
    let blob = repo.git_stdin(&["hash-object", "-w", "--stdin"], b"not a commit");
    let empty_tree = repo.git_stdin(&["mktree"], b"");
    let no_doc = repo.git(&["commit-tree", empty_tree.trim(), "-m", "no document"]);
    let bad_blob = repo.git_stdin(&["hash-object", "-w", "--stdin"], b"this = is [not toml");
    let bad_tree = repo.git_stdin(
        &["mktree"],
        format!("100644 blob {}\ttask.toml\n", bad_blob.trim()).as_bytes(),
    );
    let unparsable = repo.git(&["commit-tree", bad_tree.trim(), "-m", "bad toml"]);
    let corrupt = [
        (
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            blob.trim().to_string(),
            "points at a blob",
        ),
        (
            "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
            no_doc.trim().to_string(),
            "holds no task.toml",
        ),
        (
            "cccccccccccccccccccccccccccccccc",
            unparsable.trim().to_string(),
            "does not parse",
        ),
    ];
    for (id, target, _) in &corrupt {
        repo.git(&["update-ref", &format!("refs/loop/tasks/{id}"), target]);
    }

    let out = repo.run(&["task", "list"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("good"), "{}", out.stdout);
    for (id, _, why) in &corrupt {
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with(&id[..7]))
            .unwrap_or_else(|| panic!("{id} listed in {}", out.stdout));
        assert!(line.contains("corrupt") && line.contains(why), "{line}");
    }
    let v = repo.run(&["task", "list", "--json"]).json();
    assert_eq!(v.as_array().expect("array").len(), 4);
    assert_eq!(v[0]["id"], good.as_str());
    assert!(
        v.as_array().expect("array")[1..]
            .iter()
            .all(|t| t["state"] == "corrupt")
    );
    assert_eq!(
        ids_of(&repo.run(&["ready", "--json"]).json()),
        vec![good.clone()]
    );

    for (id, _, why) in &corrupt {
        let out = repo.fails(&["task", "show", id], 3);
        assert!(
            out.stderr
                .contains(&format!("task ref refs/loop/tasks/{id} is corrupt")),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains(why), "{}", out.stderr);
    }
    // Edits of a corrupt task refuse the same way and write nothing.
    repo.fails(&["task", "cancel", "aaaaaaa"], 3);
    assert_eq!(
        repo.git(&[
            "rev-parse",
            "refs/loop/tasks/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        ])
        .trim(),
        blob.trim()
    );
}

#[test]
fn the_listing_cache_never_lies() {
    let repo = TestRepo::new();
    let a = repo.add("original title", &[]);
    let b = repo.add("other", &[]);
    let first = repo.run(&["task", "list", "--json"]).json();
    assert_eq!(first[0]["title"], "original title");
    let cache = repo.path(".git/loop/cache/tasks.json");
    assert!(cache.exists(), "a listing fills the cache");

    // Another tool moves a task ref with plain git: the next listing sees it.
    repo.poke(&a, "title", "\"changed behind our back\"");
    let v = repo.run(&["task", "list", "--json"]).json();
    assert_eq!(v[0]["title"], "changed behind our back");
    assert_eq!(
        repo.run(&["ready", "--json"]).json()[0]["title"],
        "changed behind our back"
    );

    // A ref deleted with plain git disappears, and a garbage cache is ignored.
    repo.git(&["update-ref", "-d", &format!("refs/loop/tasks/{b}")]);
    std::fs::write(&cache, b"{ this is not json").expect("write");
    let v = repo.run(&["task", "list", "--json"]).json();
    assert_eq!(crate::common::ids_of(&v), vec![a.clone()]);

    // A cache entry is only ever used for the exact commit it was read from.
    let text = std::fs::read_to_string(&cache).expect("rebuilt");
    let forged = text.replace("changed behind our back", "forged");
    std::fs::write(&cache, forged).expect("write");
    repo.poke(&a, "priority", "7");
    let v = repo.run(&["task", "list", "--json"]).json();
    assert_eq!(v[0]["title"], "changed behind our back");
    assert_eq!(v[0]["priority"], 7);
}

#[test]
fn a_ref_lock_left_by_a_killed_writer_is_taken_over() {
    let repo = TestRepo::new();
    let id = repo.add("locked", &[]);
    let lock = repo.path(&format!(".git/refs/loop/tasks/{id}.lock"));
    std::fs::write(&lock, "0000000000000000000000000000000000000000\n").expect("lock");
    // Fresh locks are waited for; one older than any real ref transaction is a dead writer's.
    let out = repo.run(&["task", "edit", &id, "--title", "unlocked"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!lock.exists(), "the stale lock was removed");
    assert!(repo.task_doc(&id).contains("title = \"unlocked\""));
}

//! Hostile titles and bodies are stored faithfully and shown safely, or refused clearly.

use std::os::unix::ffi::OsStrExt;

use crate::common::{GOOD_BODY, TestRepo};

/// Adds a task titled `title` and checks it round-trips exactly and touches nothing else.
fn round_trip(title: &str) {
    let repo = TestRepo::new();
    let out = repo.run(&["task", "add", title, "--body", GOOD_BODY]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let id = out.stdout.trim().to_string();
    let show = repo.run(&["task", "show", &id, "--json"]).json();
    assert_eq!(show["title"], title, "stored faithfully");
    let refs = repo.git(&["for-each-ref", "--format=%(refname)"]);
    assert_eq!(
        refs,
        format!("refs/heads/main\nrefs/loop/tasks/{id}\n"),
        "no other ref was made"
    );
    let status = repo.git(&["status", "--porcelain", "--ignored"]);
    assert_eq!(status, "", "no file was made");
    let list = repo.ok(&["task", "list"]);
    assert_eq!(
        list.lines().count(),
        2,
        "one row, however the title looks: {list}"
    );
    assert!(!list.contains('\x1b') && !list.contains('\0'), "{list:?}");
}

#[test]
fn newlines_and_quotes() {
    round_trip("line one\nline two \"quoted\" 'single' `back`");
}

#[test]
fn path_like_titles() {
    round_trip("../../etc/passwd");
    round_trip("refs/heads/x");
}

#[test]
fn shell_metacharacters_never_reach_a_shell() {
    round_trip(";rm -rf / ; touch pwned && $(touch pwned2) | `touch pwned3`");
}

#[test]
fn terminal_escapes_are_shown_escaped() {
    let repo = TestRepo::new();
    let title = "\x1b[31mred\x1b[0m \u{202e}reversed";
    let id = repo
        .ok(&["task", "add", title, "--body", GOOD_BODY])
        .trim()
        .to_string();
    let list = repo.ok(&["task", "list"]);
    assert!(list.contains("\\u{1b}[31mred"), "{list}");
    assert!(list.contains("\\u{202e}reversed"), "{list}");
    let show = repo.ok(&["task", "show", &id]);
    assert!(
        !show.contains('\x1b') && !show.contains('\u{202e}'),
        "{show:?}"
    );
    assert_eq!(
        repo.run(&["task", "show", &id, "--json"]).json()["title"],
        title
    );
}

#[test]
fn a_nul_byte_in_the_body_is_stored_and_shown_safely() {
    let repo = TestRepo::new();
    let body = format!("{GOOD_BODY}\nbinary: a\0b\n");
    repo.write("body.txt", body.as_bytes());
    let id = repo
        .ok(&["task", "add", "nul", "--body-file", "body.txt"])
        .trim()
        .to_string();
    let stored = repo.git_out(&["cat-file", "blob", &format!("refs/loop/tasks/{id}:body.md")]);
    assert_eq!(stored.raw_stdout, body.as_bytes(), "byte for byte");
    assert_eq!(
        repo.run(&["task", "show", &id, "--json"]).json()["body"],
        body.as_str()
    );
    let show = repo.run(&["task", "show", &id]);
    assert!(!show.raw_stdout.contains(&0), "no raw NUL on a terminal");
    assert!(show.stdout.contains("a\\u{0}b"), "{}", show.stdout);
}

#[test]
fn a_mebibyte_body_is_stored_faithfully() {
    let repo = TestRepo::new();
    let mut body = String::from("Acceptance: every line survives.\n");
    while body.len() < 1024 * 1024 {
        body.push_str("0123456789 abcdefghij ABCDEFGHIJ ~!@#$%^&*() ünïcödé ✓\n");
    }
    let out = repo.run_stdin(&["task", "add", "big", "--body-file", "-"], body.as_bytes());
    assert_eq!(out.code, 0, "{}", out.stderr);
    let id = out.stdout.trim();
    let stored = repo.git_out(&["cat-file", "blob", &format!("refs/loop/tasks/{id}:body.md")]);
    assert_eq!(stored.raw_stdout.len(), body.len());
    assert!(stored.raw_stdout == body.as_bytes());
    // Listing does not read bodies; it stays one row.
    assert_eq!(repo.ok(&["task", "list"]).lines().count(), 2);
    // An edit that changes only the title keeps the same body blob.
    let before = repo.git(&["rev-parse", &format!("refs/loop/tasks/{id}:body.md")]);
    repo.ok(&["task", "edit", id, "--title", "bigger"]);
    let after = repo.git(&["rev-parse", &format!("refs/loop/tasks/{id}:body.md")]);
    assert_eq!(before, after);
}

#[test]
fn oversized_and_empty_titles_are_refused() {
    let repo = TestRepo::new();
    let long = "x".repeat(100 * 1024);
    let out = repo.fails(&["task", "add", &long, "--body", GOOD_BODY], 2);
    assert!(
        out.stderr.contains("titles are at most 1024"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("hint:"), "{}", out.stderr);
    let out = repo.fails(&["task", "add", "   ", "--body", GOOD_BODY], 2);
    assert!(
        out.stderr.contains("title must not be empty"),
        "{}",
        out.stderr
    );
    assert!(repo.refs("refs/loop/").is_empty());
}

#[test]
fn invalid_utf8_is_refused_clearly() {
    let repo = TestRepo::new();
    let mut cmd = repo.cmd(&["task", "add"]);
    cmd.arg(std::ffi::OsStr::from_bytes(b"bad \xff title"));
    cmd.args(["--body", GOOD_BODY]);
    let out = cmd.output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid UTF-8"));

    repo.write("body.bin", b"Acceptance: yes\n\xff\xfe");
    let out = repo.fails(&["task", "add", "t", "--body-file", "body.bin"], 2);
    assert!(
        out.stderr
            .contains("not valid UTF-8 (invalid byte at offset 16)"),
        "{}",
        out.stderr
    );
    assert!(repo.refs("refs/loop/").is_empty());
}

#[test]
fn bad_names_are_refused() {
    let repo = TestRepo::new();
    let out = repo.fails(
        &["task", "add", "t", "--body", GOOD_BODY, "--batch", "a b"],
        2,
    );
    assert!(
        out.stderr.contains("batch \"a b\" is not a valid name"),
        "{}",
        out.stderr
    );
    repo.fails(
        &["task", "add", "t", "--body", GOOD_BODY, "--mutex", "x\ny"],
        2,
    );
    let out = repo.fails(&["task", "list", "--state", "finished"], 2);
    assert!(out.stderr.contains("unknown state"), "{}", out.stderr);
}

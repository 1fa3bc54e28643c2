//! The command line itself: help, the manual page, exit codes of usage errors.

use std::process::Command;

use crate::common::{BIN, TestRepo, hermetic};

#[test]
fn the_manual_page_covers_every_command() {
    let repo = TestRepo::new();
    let page = repo.ok(&["man"]);
    assert!(page.starts_with(".TH GIT-LOOP 1"), "{page}");
    for usage in [
        "git loop init",
        "git loop task add",
        "git loop task list",
        "git loop task show",
        "git loop task edit",
        "git loop task gate",
        "git loop task cancel",
        "git loop task reopen",
        "git loop ready",
        "git loop log",
        "EXIT CODES",
    ] {
        assert!(page.contains(usage), "{usage} missing from the man page");
    }
}

#[test]
fn man_install_puts_the_page_where_git_help_finds_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    std::fs::copy(BIN, bin.join("git-loop")).expect("copy binary");
    let mut cmd = Command::new(bin.join("git-loop"));
    cmd.args(["man", "--install"]);
    hermetic(&mut cmd, tmp.path());
    // A fork in another test thread may briefly hold the copy's write descriptor (ETXTBSY).
    let out = (0..100)
        .find_map(|_| match cmd.output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                None
            }
            other => Some(other.expect("run")),
        })
        .expect("the copied binary stayed busy");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = tmp.path().join("share/man/man1/git-loop.1");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        page.canonicalize()
            .expect("installed")
            .display()
            .to_string()
    );

    if Command::new("man")
        .arg("-w")
        .arg("man")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let repo = TestRepo::new();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut git = Command::new("git");
        git.args(["loop", "--help"]).current_dir(&repo.root);
        hermetic(&mut git, &repo.home);
        git.env("PATH", path)
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .env("MANWIDTH", "80");
        let out = git.output().expect("git loop --help");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("GIT-LOOP(1)"),
            "git loop --help showed: {text}"
        );
    } else {
        eprintln!("man(1) is not installed: checked the page's location only");
    }
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let repo = TestRepo::new();
    let out = repo.fails(&["task", "frobnicate"], 2);
    assert!(out.stderr.contains("error:"), "{}", out.stderr);
    let out = repo.ok(&["help"]);
    assert!(out.contains("Exit codes:"), "{out}");
    repo.ok(&["task", "add", "-h"]);
}

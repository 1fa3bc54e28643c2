//! policy.toml: every error class names the file, the key, the line and the column; exit 3.

use crate::common::TestRepo;

/// Writes `policy` and runs a command that reads it; returns stderr (exit 3 asserted).
fn policy_error(policy: &str) -> String {
    let repo = TestRepo::new();
    repo.write("policy.toml", policy);
    let out = repo.fails(&["task", "add", "t", "--body", "b"], 3);
    assert!(out.stdout.is_empty(), "no result on stdout: {}", out.stdout);
    assert!(
        repo.refs("refs/loop/").is_empty(),
        "nothing is written when the policy is bad"
    );
    out.stderr
}

const AGENT: &str = "[agent]\ncommand = [\"agent\"]\n";

#[test]
fn misspelt_key_suggests_the_closest() {
    let err = policy_error(&format!("{AGENT}[retry]\nmax_attemps = 3\n"));
    assert!(
        err.contains("error: policy.toml:4:1: [retry] max_attemps: unknown key"),
        "{err}"
    );
    assert!(err.contains("hint: did you mean max_attempts?"), "{err}");
}

#[test]
fn key_in_the_wrong_section_names_the_right_one() {
    let err = policy_error(&format!("[loop]\ntimeout = \"5m\"\n{AGENT}"));
    assert!(
        err.contains("policy.toml:2:1: [loop] timeout: unknown key"),
        "{err}"
    );
    assert!(
        err.contains("timeout belongs in the [agent] section"),
        "{err}"
    );
}

#[test]
fn misspelt_section_suggests_the_closest() {
    let err = policy_error(&format!("{AGENT}[retyr]\nmax = \"1m\"\n"));
    assert!(
        err.contains("policy.toml:3:2: [retyr]: unknown section"),
        "{err}"
    );
    assert!(err.contains("did you mean [retry]?"), "{err}");
}

#[test]
fn wrong_type_names_key_and_types() {
    let err = policy_error(&format!("[loop]\nworkers = \"two\"\n{AGENT}"));
    assert!(
        err.contains("policy.toml:2:11: [loop] workers: expected an integer, found string"),
        "{err}"
    );
}

#[test]
fn bad_duration_names_key() {
    let err = policy_error("[agent]\ncommand = [\"a\"]\ntimeout = \"45 minutes\"\n");
    assert!(
        err.contains("policy.toml:3:11: [agent] timeout: bad duration"),
        "{err}"
    );
    let err = policy_error("[agent]\ncommand = [\"a\"]\nstall_timeout = \"10\"\n");
    assert!(err.contains("[agent] stall_timeout"), "{err}");
    assert!(err.contains("needs a unit"), "{err}");
}

#[test]
fn out_of_range_value_names_key() {
    let err = policy_error(&format!("[loop]\nworkers = 0\n{AGENT}"));
    assert!(
        err.contains("policy.toml:2:11: [loop] workers: must be an integer from 1"),
        "{err}"
    );
    let err = policy_error(&format!("{AGENT}[retry]\nmultiplier = 0.5\n"));
    assert!(
        err.contains("[retry] multiplier: must be from 1.0 to 100.0"),
        "{err}"
    );
    let err = policy_error(&format!(
        "{AGENT}[lease]\nttl = \"10s\"\nheartbeat = \"30s\"\n"
    ));
    assert!(err.contains("[lease] heartbeat"), "{err}");
}

#[test]
fn unknown_strategy_suggests_one() {
    let err = policy_error(&format!("{AGENT}[promote]\nstrategy = \"no_ff\"\n"));
    assert!(
        err.contains("policy.toml:4:12: [promote] strategy: unknown strategy \"no_ff\""),
        "{err}"
    );
    assert!(err.contains("did you mean \"no-ff\"?"), "{err}");
}

#[test]
fn missing_agent_command_is_named() {
    let err = policy_error("[loop]\ntarget = \"main\"\n");
    assert!(err.contains("[agent] command: missing"), "{err}");
    assert!(err.contains("hint: add e.g. command = "), "{err}");
}

#[test]
fn command_as_a_string_shows_the_array_form() {
    let err = policy_error("[agent]\ncommand = \"claude -p\"\n");
    assert!(
        err.contains("policy.toml:2:11: [agent] command: a command is an array"),
        "{err}"
    );
    assert!(err.contains("write it as [\"claude\", \"-p\"]"), "{err}");
}

#[test]
fn unknown_placeholder_is_named() {
    let err = policy_error("[agent]\ncommand = [\"agent\", \"@{promt_file}\"]\n");
    assert!(
        err.contains("[agent] command: unknown placeholder {promt_file}"),
        "{err}"
    );
    assert!(err.contains("{prompt_file}"), "{err}");
}

#[test]
fn gate_commands_must_be_argv_arrays() {
    let err = policy_error(&format!("{AGENT}[gate]\ncommands = [\"cargo test\"]\n"));
    assert!(
        err.contains("policy.toml:4:13: [gate] commands: a command is an array"),
        "{err}"
    );
}

#[test]
fn toml_syntax_error_has_line_and_column() {
    let err = policy_error("[agent]\ncommand = [\"a\"\n");
    assert!(err.starts_with("error: policy.toml:2:"), "{err}");
}

#[test]
fn every_error_is_reported_with_its_own_line() {
    let err = policy_error(
        "[loop]\nworkers = \"x\"\n[agent]\ncommand = [\"a\"]\n[retry]\nmax_attemps = 1\n",
    );
    assert!(err.contains("policy.toml:2:11: [loop] workers"), "{err}");
    assert!(
        err.contains(
            "policy.toml:6:1: [retry] max_attemps: unknown key (did you mean max_attempts?)"
        ),
        "{err}"
    );
}

#[test]
fn init_writes_a_valid_commented_policy_and_never_overwrites() {
    let repo = TestRepo::new();
    let out = repo.ok(&["init"]);
    assert!(out.contains("wrote policy.toml"), "{out}");
    assert!(out.contains("wrote loop/PROMPT.md"), "{out}");
    let text = std::fs::read_to_string(repo.path("policy.toml")).expect("policy");
    assert!(text.contains("target = \"main\""), "{text}");
    assert!(
        text.lines().filter(|l| l.contains('#')).count() > 10,
        "commented"
    );
    // The written policy passes validation: a command that reads it succeeds.
    repo.add("reads the policy", &[]);

    repo.write("policy.toml", "# mine\n[agent]\ncommand = [\"mine\"]\n");
    let out = repo.run(&["init"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("policy.toml exists; left as it is"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_to_string(repo.path("policy.toml")).expect("policy"),
        "# mine\n[agent]\ncommand = [\"mine\"]\n"
    );
    repo.ok(&["init", "--force"]);
    assert_eq!(
        std::fs::read_to_string(repo.path("policy.toml")).expect("policy"),
        text
    );
}

#[test]
fn init_uses_the_checked_out_branch_and_origin() {
    let repo = TestRepo::with_init(&["init", "-q", "-b", "trunk"]);
    repo.git(&["remote", "add", "origin", "/nonexistent"]);
    repo.ok(&["init"]);
    let text = std::fs::read_to_string(repo.path("policy.toml")).expect("policy");
    assert!(text.contains("target = \"trunk\""), "{text}");
    assert!(text.contains("\nremote = \"origin\""), "{text}");
}

#[test]
fn this_repositorys_own_policy_is_valid() {
    let repo = TestRepo::new();
    let own = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policy.toml"))
        .expect("the repository's policy.toml");
    repo.write("policy.toml", own);
    repo.add("reads the policy", &[]);
}

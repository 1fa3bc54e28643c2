//! `policy.toml`: the whole schema of SPEC §6, its defaults, and validation whose errors name the
//! file, the key, the line and the column, and suggest the closest valid key.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::{Class, LoopError};
use crate::time::parse_duration;

/// The file name of the policy, at the root of the working tree.
pub const FILE: &str = "policy.toml";

/// Placeholders that `agent.command` may use.
pub const COMMAND_PLACEHOLDERS: &[&str] =
    &["prompt_file", "task_id", "worktree", "branch", "attempt"];

/// The sections whose contents are the frozen finish line (SPEC §9).
pub const PROTECTED_SECTIONS: &[&str] = &["gate", "review", "verify", "trust"];

/// The keys of `[agent]` protected with those sections: what agents run in.
pub const PROTECTED_AGENT_KEYS: &[&str] = &["sandbox", "writable"];

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub loop_: LoopSection,
    pub agent: AgentSection,
    pub triage: TriageSection,
    pub gate: GateSection,
    pub review: ReviewSection,
    pub promote: PromoteSection,
    pub verify: VerifySection,
    pub retry: RetrySection,
    pub breaker: BreakerSection,
    pub lease: LeaseSection,
    pub runtime: RuntimeSection,
    pub trust: TrustSection,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LoopSection {
    pub target: String,
    pub remote: Option<String>,
    pub batch: String,
    pub workers: u32,
    pub completion_token: String,
    /// How stale a runner's view of a shared remote's loop state may grow (SPEC §13).
    pub sync: Duration,
    /// How long one push or fetch of loop state may take before it is given up as
    /// `transient` (a remote that hangs rather than refusing).
    pub remote_timeout: Duration,
}

/// `loop.remote_timeout` by default.
pub const DEFAULT_REMOTE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Clone, Debug, PartialEq)]
pub struct AgentSection {
    pub command: Vec<String>,
    pub prompt: String,
    pub timeout: Duration,
    pub stall_timeout: Duration,
    pub tail_bytes: u64,
    pub exit_grace: Duration,
    pub quota_patterns: Vec<String>,
    pub quota_exit_codes: Vec<i32>,
    pub quota_cooldown: Duration,
    /// Where agents, gates and verify commands run: `auto` (bwrap where it works), `bwrap`
    /// or `none` (see [`crate::sandbox`]).
    pub sandbox: crate::sandbox::Mode,
    /// What a sandboxed run may write besides its checkout and a /tmp of its own:
    /// absolute paths, or `~/…` in the home directory, each only if it exists when the run
    /// starts (the agent CLIs' own state and caches). Everything else is read-only to it.
    pub writable: Vec<String>,
}

/// `agent.writable` by default: where the agent CLIs git-loop knows keep their state, and the
/// caches they fill.
pub const DEFAULT_WRITABLE: &[&str] = &[
    "~/.cache",
    "~/.claude",
    "~/.claude.json",
    "~/.codex",
    "~/.aider",
    "~/.npm",
    "~/.local/state",
];

#[derive(Clone, Debug, PartialEq)]
pub struct TriageSection {
    pub min_body_chars: u64,
    pub require_acceptance: bool,
    /// How many tasks agents may file, discovered, below one task a person filed before the
    /// next is held (`human_gated: discovery_limit`) for a person to look at.
    pub max_discovered: u32,
}

impl Default for TriageSection {
    fn default() -> Self {
        TriageSection {
            min_body_chars: 140,
            require_acceptance: true,
            max_discovered: 20,
        }
    }
}

/// The batch tasks join when neither the command nor the policy names one.
pub const DEFAULT_BATCH: &str = "default";

#[derive(Clone, Debug, PartialEq)]
pub struct GateSection {
    pub commands: Vec<Vec<String>>,
    pub timeout: Duration,
    /// Paths (files or directories, relative to the root) pinned with the finish line beside
    /// the programs the gates run: a branch that changes them is refused, and gates run with
    /// the target's versions of them (`tests/`, say).
    pub protected_paths: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ReviewSection {
    pub command: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    FfOnly,
    NoFf,
    Squash,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::FfOnly => "ff-only",
            Strategy::NoFf => "no-ff",
            Strategy::Squash => "squash",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PromoteSection {
    pub strategy: Strategy,
    pub guard_target: bool,
    pub delete_remote_branch: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VerifySection {
    pub commands: Vec<Vec<String>>,
}

/// Who may give an agent work (SPEC §13), protected with the finish line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrustSection {
    /// An allowed-signers file in git's SSH format (`gpg.ssh.allowedSignersFile`), by its path
    /// in the repository: when set, only tasks whose title and body a listed key signed are
    /// given to agents (see [`crate::trust`]).
    pub signers: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RetrySection {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
    pub max_attempts: u32,
    pub same_signature: u32,
    pub escalate_after: u32,
    pub cooloff: Duration,
}

impl Default for RetrySection {
    /// SPEC §6's defaults.
    fn default() -> Self {
        RetrySection {
            initial: Duration::from_secs(30),
            max: Duration::from_secs(30 * MINUTE),
            multiplier: 2.0,
            max_attempts: 5,
            same_signature: 3,
            escalate_after: 2,
            cooloff: Duration::from_secs(60 * MINUTE),
        }
    }
}

/// `agent.quota_cooldown` when the policy sets none.
pub const DEFAULT_QUOTA_COOLDOWN: Duration = Duration::from_secs(10 * MINUTE);

/// The longest duration any key takes: 30 days. Longer ones are typos (`ttl = "10000d"`), and
/// times written from them could not be read back.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 86_400);

/// The largest count any key takes (attempts, failures, probes, …), except `loop.workers`.
const MAX_COUNT: u32 = 1000;

/// The most workers a runner runs at once.
const MAX_WORKERS: u32 = 256;

#[derive(Clone, Debug, PartialEq)]
pub struct BreakerSection {
    pub failures: u32,
    pub open_for: Duration,
    pub probes: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LeaseSection {
    pub ttl: Duration,
    pub heartbeat: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RuntimeSection {
    pub manifest: Vec<String>,
}

/// Every section and its keys; the single source for unknown-key detection and suggestions.
const SCHEMA: &[(&str, &[&str])] = &[
    (
        "loop",
        &[
            "target",
            "remote",
            "batch",
            "workers",
            "completion_token",
            "sync",
            "remote_timeout",
        ],
    ),
    (
        "agent",
        &[
            "command",
            "prompt",
            "timeout",
            "stall_timeout",
            "tail_bytes",
            "exit_grace",
            "quota_patterns",
            "quota_exit_codes",
            "quota_cooldown",
            "sandbox",
            "writable",
        ],
    ),
    (
        "triage",
        &["min_body_chars", "require_acceptance", "max_discovered"],
    ),
    ("gate", &["commands", "timeout", "protected_paths"]),
    ("review", &["command"]),
    (
        "promote",
        &["strategy", "guard_target", "delete_remote_branch"],
    ),
    ("verify", &["commands"]),
    (
        "retry",
        &[
            "initial",
            "max",
            "multiplier",
            "max_attempts",
            "same_signature",
            "escalate_after",
            "cooloff",
        ],
    ),
    ("breaker", &["failures", "open_for", "probes"]),
    ("lease", &["ttl", "heartbeat"]),
    ("runtime", &["manifest"]),
    ("trust", &["signers"]),
];

const MINUTE: u64 = 60;

impl Policy {
    /// Reads `policy.toml` at the root of `workdir`; `Ok(None)` when there is none.
    pub fn load(workdir: &Path) -> anyhow::Result<Option<Policy>> {
        let path = workdir.join(FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(LoopError::new(
                    Class::Config,
                    format!("cannot read {}: {e}", path.display()),
                )
                .into());
            }
        };
        let text = String::from_utf8(bytes).map_err(|e| {
            LoopError::new(
                Class::Config,
                format!(
                    "{FILE}: not valid UTF-8 (at byte {})",
                    e.utf8_error().valid_up_to()
                ),
            )
        })?;
        Ok(Some(Policy::parse(&text, FILE)?))
    }

    /// Like [`Policy::load`], but a missing file is a `config` error.
    pub fn load_required(workdir: &Path) -> anyhow::Result<Policy> {
        Policy::load(workdir)?.ok_or_else(|| {
            LoopError::new(Class::Config, format!("no {FILE} in {}", workdir.display()))
                .with_hint("run `git loop init` to write one, then commit it")
                .into()
        })
    }

    /// The path of the policy file of a working tree.
    pub fn path_in(workdir: &Path) -> PathBuf {
        workdir.join(FILE)
    }

    /// Parses and validates a policy. `file` names the file in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Policy, LoopError> {
        let cx = Cx {
            file,
            text,
            errors: Default::default(),
        };
        let root = match DeTable::parse(text) {
            Ok(root) => root,
            Err(e) => {
                let at = e.span().map_or(0, |s| s.start);
                cx.error(at, None, e.message().trim_end().to_string(), None);
                return Err(cx.into_error().expect("an error was recorded"));
            }
        };
        let policy = read_policy(&cx, root.get_ref());
        match cx.into_error() {
            Some(err) => Err(err),
            None => Ok(policy),
        }
    }

    /// The policy every field of which is a default, with `agent.command` as given.
    #[cfg(test)]
    pub fn with_agent(command: Vec<String>) -> Policy {
        let mut text = String::from("[agent]\ncommand = [");
        for (i, arg) in command.iter().enumerate() {
            if i > 0 {
                text.push_str(", ");
            }
            text.push_str(&toml_string(arg));
        }
        text.push_str("]\n");
        Policy::parse(&text, FILE).expect("defaults are valid")
    }
}

/// A TOML basic string literal for `s`.
pub fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

struct PolicyIssue {
    at: usize,
    key: Option<String>,
    message: String,
    hint: Option<String>,
}

struct Cx<'a> {
    file: &'a str,
    text: &'a str,
    errors: std::cell::RefCell<Vec<PolicyIssue>>,
}

impl Cx<'_> {
    fn error(&self, at: usize, key: Option<String>, message: String, hint: Option<String>) {
        self.errors.borrow_mut().push(PolicyIssue {
            at,
            key,
            message,
            hint,
        });
    }

    fn line_col(&self, at: usize) -> (usize, usize) {
        let at = at.min(self.text.len());
        let before = self.text.get(..at).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    fn into_error(self) -> Option<LoopError> {
        let mut errors = std::mem::take(&mut *self.errors.borrow_mut());
        errors.sort_by_key(|e| e.at);
        let first = errors.first()?;
        let (line, col) = self.line_col(first.at);
        let mut message = match &first.key {
            Some(key) => format!("{}:{line}:{col}: {key}: {}", self.file, first.message),
            None => format!("{}:{line}:{col}: {}", self.file, first.message),
        };
        for other in &errors[1..] {
            let (line, col) = self.line_col(other.at);
            let key = other
                .key
                .as_deref()
                .map(|k| format!("{k}: "))
                .unwrap_or_default();
            let hint = other
                .hint
                .as_deref()
                .map(|h| format!(" ({h})"))
                .unwrap_or_default();
            message.push_str(&format!(
                "\n{}:{line}:{col}: {key}{}{hint}",
                self.file, other.message
            ));
        }
        let mut err = LoopError::new(Class::Config, message);
        err.hint = first.hint.clone();
        Some(err)
    }
}

/// One section of the file: its table (if present) and which keys were read.
struct Section<'a, 'i> {
    cx: &'a Cx<'a>,
    name: &'static str,
    table: Option<&'a DeTable<'i>>,
    at: usize,
}

impl<'a, 'i> Section<'a, 'i> {
    fn key_name(&self, key: &str) -> String {
        format!("[{}] {key}", self.name)
    }

    fn get(&self, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.table?.get(key)
    }

    fn bad(&self, key: &str, value: &Spanned<DeValue<'_>>, message: impl Into<String>) {
        self.cx.error(
            value.span().start,
            Some(self.key_name(key)),
            message.into(),
            None,
        );
    }

    fn wrong_type(&self, key: &str, value: &Spanned<DeValue<'_>>, expected: &str) {
        self.bad(
            key,
            value,
            format!("expected {expected}, found {}", value.get_ref().type_str()),
        );
    }

    fn string(&self, key: &str, default: &str) -> String {
        self.opt_string(key).unwrap_or_else(|| default.to_string())
    }

    fn opt_string(&self, key: &str) -> Option<String> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => {
                self.wrong_type(key, v, "a string");
                None
            }
        }
    }

    fn nonempty_string(&self, key: &str, default: &str) -> String {
        let s = self.string(key, default);
        if s.trim().is_empty() {
            if let Some(v) = self.get(key) {
                self.bad(key, v, "must not be empty");
            }
            return default.to_string();
        }
        s
    }

    fn bool(&self, key: &str, default: bool) -> bool {
        let Some(v) = self.get(key) else {
            return default;
        };
        match v.get_ref() {
            DeValue::Boolean(b) => *b,
            _ => {
                self.wrong_type(key, v, "true or false");
                default
            }
        }
    }

    fn int(&self, key: &str, default: i64, range: Range<i64>) -> i64 {
        let Some(v) = self.get(key) else {
            return default;
        };
        let n = match v.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok(),
            _ => {
                self.wrong_type(key, v, "an integer");
                return default;
            }
        };
        match n {
            Some(n) if range.contains(&n) => n,
            _ => {
                self.bad(
                    key,
                    v,
                    format!(
                        "must be an integer from {} to {}",
                        range.start,
                        range.end - 1
                    ),
                );
                default
            }
        }
    }

    fn count(&self, key: &str, default: u32, min: u32, max: u32) -> u32 {
        let n = self.int(key, i64::from(default), i64::from(min)..i64::from(max) + 1);
        u32::try_from(n).unwrap_or(default)
    }

    fn float(&self, key: &str, default: f64) -> f64 {
        let Some(v) = self.get(key) else {
            return default;
        };
        let parsed = match v.get_ref() {
            DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|n| n as f64),
            _ => {
                self.wrong_type(key, v, "a number");
                return default;
            }
        };
        match parsed {
            Some(f) if f.is_finite() => f,
            _ => {
                self.bad(key, v, "must be a finite number");
                default
            }
        }
    }

    fn duration(&self, key: &str, default: Duration) -> Duration {
        let Some(v) = self.get(key) else {
            return default;
        };
        let DeValue::String(s) = v.get_ref() else {
            self.wrong_type(
                key,
                v,
                "a duration string such as \"30s\", \"45m\" or \"2h\"",
            );
            return default;
        };
        match parse_duration(s) {
            Ok(d) if d > MAX_DURATION => {
                self.bad(
                    key,
                    v,
                    format!(
                        "{s:?} is longer than {}, the longest any key takes",
                        crate::time::format_duration(MAX_DURATION)
                    ),
                );
                default
            }
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.bad(key, v, "must be longer than zero");
                default
            }
            Err(e) => {
                self.bad(key, v, format!("bad duration: {e}"));
                default
            }
        }
    }

    fn strings(&self, key: &str, default: &[&str]) -> Vec<String> {
        let Some(v) = self.get(key) else {
            return default.iter().map(|s| s.to_string()).collect();
        };
        self.string_array(key, v)
            .unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect())
    }

    fn string_array(&self, key: &str, v: &Spanned<DeValue<'_>>) -> Option<Vec<String>> {
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type(key, v, "an array of strings");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(s) => out.push(s.to_string()),
                _ => {
                    self.wrong_type(key, item, "a string");
                    return None;
                }
            }
        }
        Some(out)
    }

    /// An argv: a non-empty array of strings whose first element names a program.
    fn argv(&self, key: &str, v: &Spanned<DeValue<'_>>, allow_empty: bool) -> Option<Vec<String>> {
        if let DeValue::String(s) = v.get_ref() {
            let words = s.split_whitespace().collect::<Vec<_>>();
            self.cx.error(
                v.span().start,
                Some(self.key_name(key)),
                "a command is an array of arguments, not a string".into(),
                Some(format!(
                    "write it as [{}]; it is never run through a shell unless you write one, e.g. [\"sh\", \"-c\", \"...\"]",
                    words.iter().map(|w| toml_string(w)).collect::<Vec<_>>().join(", ")
                )),
            );
            return None;
        }
        let argv = self.string_array(key, v)?;
        if argv.is_empty() && !allow_empty {
            self.bad(key, v, "must name a program to run");
            return None;
        }
        if let Some(first) = argv.first()
            && first.trim().is_empty()
        {
            self.bad(key, v, "the program name must not be empty");
            return None;
        }
        Some(argv)
    }

    fn commands(&self, key: &str) -> Vec<Vec<String>> {
        let Some(v) = self.get(key) else {
            return Vec::new();
        };
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type(key, v, "an array of commands, e.g. [[\"cargo\", \"test\"]]");
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items.iter() {
            if let Some(argv) = self.argv(key, item, false) {
                out.push(argv);
            }
        }
        out
    }

    fn relative_path(&self, key: &str, v: &Spanned<DeValue<'_>>, path: &str) {
        if path.is_empty()
            || path.starts_with('/')
            || path.split(['/', '\\']).any(|c| c == "..")
            || path.contains('\0')
        {
            self.bad(
                key,
                v,
                format!("{path:?} must be a path relative to the repository root, without `..`"),
            );
        }
    }

    /// Reports keys that the section does not know, suggesting the closest one.
    fn check_unknown(&self, known: &[&str]) {
        let Some(table) = self.table else { return };
        for (key, _) in table.iter() {
            let name: &str = key.get_ref();
            if known.contains(&name) {
                continue;
            }
            let hint = suggest(name, known)
                .map(|s| format!("did you mean {s}?"))
                .or_else(|| {
                    SCHEMA
                        .iter()
                        .find(|(_, keys)| keys.contains(&name))
                        .map(|(section, _)| format!("{name} belongs in the [{section}] section"))
                })
                .or_else(|| {
                    Some(format!(
                        "the keys of [{}] are: {}",
                        self.name,
                        known.join(", ")
                    ))
                });
            self.cx.error(
                key.span().start,
                Some(self.key_name(name)),
                "unknown key".into(),
                hint,
            );
        }
    }
}

fn read_policy(cx: &Cx<'_>, root: &DeTable<'_>) -> Policy {
    let section_names = SCHEMA.iter().map(|(s, _)| *s).collect::<Vec<_>>();
    for (key, value) in root.iter() {
        let name: &str = key.get_ref();
        if !section_names.contains(&name) {
            let hint = suggest(name, &section_names)
                .map(|s| format!("did you mean [{s}]?"))
                .or_else(|| {
                    SCHEMA
                        .iter()
                        .find(|(_, keys)| keys.contains(&name))
                        .map(|(section, _)| format!("{name} belongs in the [{section}] section"))
                })
                .or_else(|| Some(format!("the sections are: {}", section_names.join(", "))));
            cx.error(
                key.span().start,
                Some(format!("[{name}]")),
                "unknown section".into(),
                hint,
            );
        } else if !matches!(value.get_ref(), DeValue::Table(_)) {
            cx.error(
                key.span().start,
                Some(name.to_string()),
                format!(
                    "expected a [{name}] table, found {}",
                    value.get_ref().type_str()
                ),
                None,
            );
        }
    }

    let section = |name: &'static str| {
        let entry = root.get_key_value(name);
        let table = entry.and_then(|(_, v)| match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => None,
        });
        let s = Section {
            cx,
            name,
            table,
            at: entry.map_or(0, |(k, _)| k.span().start),
        };
        let known = SCHEMA
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(&[][..], |(_, k)| *k);
        s.check_unknown(known);
        s
    };

    let s = section("loop");
    let target = s.nonempty_string("target", "main");
    if let Some(v) = s.get("target")
        && !valid_branch_name(&target)
    {
        s.bad(
            "target",
            v,
            format!("{target:?} is not a valid branch name"),
        );
    }
    let remote = s.opt_string("remote");
    if let (Some(r), Some(v)) = (&remote, s.get("remote"))
        && (r.trim().is_empty() || r.contains(char::is_whitespace))
    {
        s.bad(
            "remote",
            v,
            "must be a remote name such as \"origin\", or omitted",
        );
    }
    let loop_ = LoopSection {
        target,
        remote,
        batch: s.nonempty_string("batch", DEFAULT_BATCH),
        workers: s.count("workers", 1, 1, MAX_WORKERS),
        completion_token: s.nonempty_string("completion_token", "LOOP_DONE"),
        sync: s.duration("sync", Duration::from_secs(2)),
        remote_timeout: s.duration("remote_timeout", DEFAULT_REMOTE_TIMEOUT),
    };
    if loop_.remote_timeout < Duration::from_secs(1)
        && let Some(v) = s.get("remote_timeout")
    {
        s.bad(
            "remote_timeout",
            v,
            "must be at least 1s: a push or fetch takes longer than that on a slow link",
        );
    }

    let s = section("agent");
    let command = match s.get("command") {
        Some(v) => s.argv("command", v, false).unwrap_or_default(),
        None => {
            cx.error(
                s.at,
                Some("[agent] command".into()),
                "missing; git-loop needs to know which agent to run".into(),
                Some(
                    "add e.g. command = [\"claude\", \"-p\", \"@{prompt_file}\"] under [agent]"
                        .into(),
                ),
            );
            Vec::new()
        }
    };
    if let Some(v) = s.get("command") {
        for arg in &command {
            if let Err(name) = check_placeholders(arg, COMMAND_PLACEHOLDERS) {
                s.cx.error(
                    v.span().start,
                    Some("[agent] command".into()),
                    format!("unknown placeholder {{{name}}}"),
                    Some(format!(
                        "the placeholders are {}",
                        COMMAND_PLACEHOLDERS
                            .iter()
                            .map(|p| format!("{{{p}}}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                );
            }
        }
    }
    let prompt = s.nonempty_string("prompt", "loop/PROMPT.md");
    if let Some(v) = s.get("prompt") {
        s.relative_path("prompt", v, &prompt);
    }
    let quota_exit_codes = match s.get("quota_exit_codes") {
        None => Vec::new(),
        Some(v) => match v.get_ref() {
            DeValue::Array(items) => items
                .iter()
                .filter_map(|item| match item.get_ref() {
                    DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                        Ok(n) if (0..=255).contains(&n) => Some(n as i32),
                        _ => {
                            s.bad("quota_exit_codes", item, "exit codes are from 0 to 255");
                            None
                        }
                    },
                    _ => {
                        s.wrong_type("quota_exit_codes", item, "an integer");
                        None
                    }
                })
                .collect(),
            _ => {
                s.wrong_type("quota_exit_codes", v, "an array of integers");
                Vec::new()
            }
        },
    };
    let sandbox = match s.opt_string("sandbox").as_deref() {
        None => crate::sandbox::Mode::Auto,
        Some(m) => crate::sandbox::Mode::parse(m).unwrap_or_else(|| {
            let v = s.get("sandbox").expect("was read");
            s.bad(
                "sandbox",
                v,
                format!("unknown sandbox {m:?}: use \"auto\", \"bwrap\" or \"none\""),
            );
            crate::sandbox::Mode::Auto
        }),
    };
    let writable = s.strings("writable", DEFAULT_WRITABLE);
    for path in &writable {
        let fine = (path.starts_with('/') || path.starts_with("~/") || path == "~")
            && path != "/"
            && !path.split('/').any(|c| c == "..");
        if !fine {
            let v = s.get("writable").expect("was read");
            s.bad(
                "writable",
                v,
                format!(
                    "{path:?} is not a path a sandbox can open: use an absolute path other than \
                     \"/\", or one in the home directory (\"~/.cache\"), without \"..\""
                ),
            );
        }
    }
    let agent = AgentSection {
        command,
        prompt,
        timeout: s.duration("timeout", Duration::from_secs(45 * MINUTE)),
        stall_timeout: s.duration("stall_timeout", Duration::from_secs(10 * MINUTE)),
        tail_bytes: s.int("tail_bytes", 65_536, 1..(16 << 20) + 1) as u64,
        exit_grace: s.duration("exit_grace", Duration::from_secs(30)),
        quota_patterns: s.strings("quota_patterns", &["rate limit", "usage limit", "429"]),
        quota_exit_codes,
        quota_cooldown: s.duration("quota_cooldown", DEFAULT_QUOTA_COOLDOWN),
        sandbox,
        writable,
    };

    let s = section("triage");
    let defaults = TriageSection::default();
    let triage = TriageSection {
        min_body_chars: s.int(
            "min_body_chars",
            defaults.min_body_chars as i64,
            0..(1 << 32),
        ) as u64,
        require_acceptance: s.bool("require_acceptance", defaults.require_acceptance),
        max_discovered: s.count("max_discovered", defaults.max_discovered, 0, MAX_COUNT),
    };

    let s = section("gate");
    let gate = GateSection {
        commands: s.commands("commands"),
        timeout: s.duration("timeout", Duration::from_secs(20 * MINUTE)),
        protected_paths: s.strings("protected_paths", &[]),
    };
    if let Some(v) = s.get("protected_paths") {
        for path in &gate.protected_paths {
            s.relative_path("protected_paths", v, path);
        }
    }

    let s = section("review");
    let review = ReviewSection {
        command: s
            .get("command")
            .and_then(|v| s.argv("command", v, true))
            .unwrap_or_default(),
    };

    let s = section("promote");
    let strategy = match s.opt_string("strategy").as_deref() {
        None | Some("no-ff") => Strategy::NoFf,
        Some("ff-only") => Strategy::FfOnly,
        Some("squash") => Strategy::Squash,
        Some(other) => {
            let v = s.get("strategy").expect("was read");
            let options = ["ff-only", "no-ff", "squash"];
            s.cx.error(
                v.span().start,
                Some("[promote] strategy".into()),
                format!("unknown strategy {other:?}"),
                Some(match suggest(other, &options) {
                    Some(best) => format!("did you mean \"{best}\"?"),
                    None => "use \"ff-only\", \"no-ff\" or \"squash\"".into(),
                }),
            );
            Strategy::NoFf
        }
    };
    let promote = PromoteSection {
        strategy,
        guard_target: s.bool("guard_target", true),
        delete_remote_branch: s.bool("delete_remote_branch", true),
    };

    let s = section("verify");
    let verify = VerifySection {
        commands: s.commands("commands"),
    };

    let s = section("retry");
    let d = RetrySection::default();
    let retry = RetrySection {
        initial: s.duration("initial", d.initial),
        max: s.duration("max", d.max),
        multiplier: s.float("multiplier", d.multiplier),
        max_attempts: s.count("max_attempts", d.max_attempts, 1, MAX_COUNT),
        same_signature: s.count("same_signature", d.same_signature, 1, MAX_COUNT),
        escalate_after: s.count("escalate_after", d.escalate_after, 0, MAX_COUNT),
        cooloff: s.duration("cooloff", d.cooloff),
    };
    if let Some(v) = s.get("multiplier")
        && !(1.0..=100.0).contains(&retry.multiplier)
    {
        s.bad("multiplier", v, "must be from 1.0 to 100.0");
    }
    if retry.initial > retry.max
        && let Some(v) = s.get("initial").or_else(|| s.get("max"))
    {
        s.bad(
            if s.get("initial").is_some() {
                "initial"
            } else {
                "max"
            },
            v,
            "retry.initial must not be longer than retry.max",
        );
    }

    let s = section("breaker");
    let breaker = BreakerSection {
        failures: s.count("failures", 3, 1, MAX_COUNT),
        open_for: s.duration("open_for", Duration::from_secs(15 * MINUTE)),
        probes: s.count("probes", 1, 1, MAX_COUNT),
    };

    let s = section("lease");
    let lease = LeaseSection {
        ttl: s.duration("ttl", Duration::from_secs(60 * MINUTE)),
        heartbeat: s.duration("heartbeat", Duration::from_secs(30)),
    };
    if lease.heartbeat < Duration::from_secs(1)
        && let Some(v) = s.get("heartbeat")
    {
        s.bad(
            "heartbeat",
            v,
            "must be at least 1s: a heartbeat is a ref update, not worth more than one a second",
        );
    }
    if lease.heartbeat >= lease.ttl
        && let Some(v) = s.get("heartbeat").or_else(|| s.get("ttl"))
    {
        s.bad(
            if s.get("heartbeat").is_some() {
                "heartbeat"
            } else {
                "ttl"
            },
            v,
            "lease.heartbeat must be shorter than lease.ttl, or leases expire while held",
        );
    }

    let s = section("runtime");
    let manifest = s.strings("manifest", &[FILE, "loop/PROMPT.md"]);
    if let Some(v) = s.get("manifest") {
        for path in &manifest {
            s.relative_path("manifest", v, path);
        }
    }
    let runtime = RuntimeSection { manifest };

    let s = section("trust");
    let signers = s.opt_string("signers");
    if let (Some(v), Some(path)) = (s.get("signers"), &signers) {
        s.relative_path("signers", v, path);
    }
    let trust = TrustSection { signers };

    Policy {
        loop_,
        agent,
        triage,
        gate,
        review,
        promote,
        verify,
        retry,
        breaker,
        lease,
        runtime,
        trust,
    }
}

/// Checks that every `{name}` in `s` is one of `allowed`; `Err(name)` names the first that is not.
/// `{{` and `}}` stand for literal braces.
pub fn check_placeholders(s: &str, allowed: &[&str]) -> Result<(), String> {
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        if rest[open..].starts_with("{{") {
            rest = &rest[open + 2..];
            continue;
        }
        let Some(close) = rest[open..].find('}') else {
            return Ok(());
        };
        let name = &rest[open + 1..open + close];
        if !allowed.contains(&name) {
            return Err(name.to_string());
        }
        rest = &rest[open + close + 1..];
    }
    Ok(())
}

fn valid_branch_name(name: &str) -> bool {
    gix::refs::FullName::try_from(format!("refs/heads/{name}")).is_ok()
}

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo.
pub fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .iter()
        .map(|c| (levenshtein(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(suggest("max_attemps", SCHEMA[7].1), Some("max_attempts"));
        assert_eq!(suggest("zzzzzzzz", SCHEMA[7].1), None);
    }

    #[test]
    fn placeholders() {
        assert!(check_placeholders("@{prompt_file}", COMMAND_PLACEHOLDERS).is_ok());
        assert!(check_placeholders("{{literal}}", COMMAND_PLACEHOLDERS).is_ok());
        assert_eq!(
            check_placeholders("{promt_file}", COMMAND_PLACEHOLDERS),
            Err("promt_file".to_string())
        );
    }

    #[test]
    fn defaults() {
        let p = Policy::with_agent(vec!["agent".into()]);
        assert_eq!(p.loop_.target, "main");
        assert_eq!(p.retry.max_attempts, 5);
        assert_eq!(p.lease.heartbeat, Duration::from_secs(30));
        assert_eq!(p.runtime.manifest, vec!["policy.toml", "loop/PROMPT.md"]);
    }
}

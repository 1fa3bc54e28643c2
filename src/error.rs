//! Failure classes and the exit codes they map to (SPEC §2).
//!
//! Application code uses `anyhow` with context. Wherever a failure has a class other than
//! "generic", it is raised as a [`LoopError`]; [`exit_code`] finds the outermost one in an error
//! chain and `main` exits with its code. This is the only place exit codes are decided.

use std::fmt;

/// The class of a failure. The discriminant is the process exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Not finished, or a failure with no better class.
    Generic = 1,
    /// The command line or its arguments are wrong.
    Usage = 2,
    /// Fatal until a person changes the configuration: policy, runtime files, programs, repository.
    Config = 3,
    /// Worth retrying later: a lost race, the network, a lock timeout.
    Transient = 4,
    /// Terminal until something changes: gate failed, merge precondition, conflict.
    Policy = 5,
    /// Another runner holds the lock, or another holder owns the lease.
    Busy = 6,
    /// Refused while the breaker is open.
    Breaker = 7,
}

impl Class {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn name(self) -> &'static str {
        match self {
            Class::Generic => "generic",
            Class::Usage => "usage",
            Class::Config => "config",
            Class::Transient => "transient",
            Class::Policy => "policy",
            Class::Busy => "busy",
            Class::Breaker => "breaker",
        }
    }
}

/// A classified failure with an optional hint for the person reading it.
#[derive(Debug)]
pub struct LoopError {
    pub class: Class,
    pub message: String,
    pub hint: Option<String>,
}

impl LoopError {
    pub fn new(class: Class, message: impl Into<String>) -> Self {
        LoopError {
            class,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for LoopError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for LoopError {}

/// Shorthands that build an `anyhow::Error` of a given class.
pub fn usage(message: impl Into<String>) -> LoopError {
    LoopError::new(Class::Usage, message)
}

pub fn config(message: impl Into<String>) -> LoopError {
    LoopError::new(Class::Config, message)
}

pub fn transient(message: impl Into<String>) -> LoopError {
    LoopError::new(Class::Transient, message)
}

pub fn generic(message: impl Into<String>) -> LoopError {
    LoopError::new(Class::Generic, message)
}

/// The classified error in a chain, if any (the outermost one wins).
pub fn find(err: &anyhow::Error) -> Option<&LoopError> {
    err.chain().find_map(|e| {
        e.downcast_ref::<LoopError>().or_else(|| {
            e.downcast_ref::<crate::task::machine::Refusal>()
                .map(|r| &r.0)
        })
    })
}

/// The class an error exits with. A full disk is a transient failure (the loop waits and
/// tries again once there is room), whoever met it.
pub fn class_of(err: &anyhow::Error) -> Class {
    match find(err) {
        Some(e) => e.class,
        None if disk_full(err) => Class::Transient,
        None => Class::Generic,
    }
}

/// Whether the error is, or was caused by, a full disk (in-process, or as git says it).
pub fn disk_full(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>().is_some_and(|io| {
            io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(libc::ENOSPC)
        }) || e.to_string().contains("No space left on device")
    })
}

/// The exit code for an error.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    class_of(err).code()
}

/// What a person is told when the disk is full.
pub const DISK_FULL_HINT: &str =
    "hint: the disk is full: free some space (`df -h .`); the loop tries again by itself\n";

/// Renders an error for stderr: `error: WHAT`, the causes, then `hint: HOW` where one exists.
pub fn render(err: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut lines = err.chain().map(|e| e.to_string()).collect::<Vec<_>>();
    lines.dedup();
    for (i, line) in lines.iter().enumerate() {
        let prefix = if i == 0 { "error: " } else { "  caused by: " };
        for (j, part) in line.lines().enumerate() {
            out.push_str(if j == 0 { prefix } else { "  " });
            out.push_str(part);
            out.push('\n');
        }
    }
    if let Some(hint) = find(err).and_then(|e| e.hint.as_deref()) {
        for part in hint.lines() {
            out.push_str("hint: ");
            out.push_str(part);
            out.push('\n');
        }
    } else if disk_full(err) {
        out.push_str(DISK_FULL_HINT);
    }
    out
}

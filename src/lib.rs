//! git-loop: run coding agents unattended over a Git repository, with all state in Git.
//!
//! The binary's `main` calls [`cli::main`]; everything else lives here. Commands are in
//! [`commands`], one module each; the domain (policy, task store, graph) in modules named for
//! what they are; Git access only through [`git`].

pub mod agent;
pub mod breaker;
pub mod cache;
pub mod cli;
pub mod commands;
pub mod doctor;
pub mod error;
pub mod files;
pub mod finish_line;
pub mod gate;
pub mod git;
pub mod graph;
pub mod holder;
pub mod hooks;
pub mod ids;
pub mod judge;
pub mod lease;
pub mod lockfile;
pub mod maintenance;
pub mod oracle;
pub mod output;
pub mod policy;
pub mod process;
pub mod promote;
pub mod rand;
pub mod reaper;
pub mod record;
pub mod refs;
pub mod rescue;
pub mod retry;
pub mod runner;
pub mod sandbox;
pub mod store;
pub mod task;
pub mod time;
pub mod trust;

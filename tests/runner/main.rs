//! The integration tests: one binary, real `git`, real repositories in temp dirs.

mod common;
mod promote_fixture;
mod test_bad_input;
mod test_cli;
mod test_concurrency;
mod test_doctor;
mod test_finish_line;
mod test_graph;
mod test_hooks;
mod test_machine;
mod test_policy;
mod test_promote;
mod test_promote_edges;
mod test_reap;
mod test_sandbox;
mod test_shared;
mod test_start;
mod test_tasks;
mod test_trust;
mod test_trust_attack;

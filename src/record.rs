//! State records: one commit per record, whose tree holds the record's TOML as one blob
//! (`lease.toml`, `heartbeat.toml`, `breaker.toml`, `oracle.toml`, `promote.toml`), as task
//! documents are held. The commit message is only a subject for people (and a `Loop-Task:`
//! trailer when the record concerns a task): nothing a field holds — a pause reason with a
//! line `---`, quotes, newlines — can cut a record short.
//!
//! Records written before the blob form carried the TOML in the message, between
//! `--- <name>` and `---`; those are still read.

use anyhow::Result;
use gix::ObjectId;

use crate::git::Repo;

/// The full message of a record commit: the subject, then the task trailer.
fn message(subject: &str, task: Option<&str>) -> String {
    let subject = subject.lines().next().unwrap_or_default();
    match task {
        Some(id) => format!("{subject}\n\nLoop-Task: {id}\n"),
        None => format!("{subject}\n"),
    }
}

/// The TOML document of the record `name` in the message of an older record commit.
fn parse_message<'m>(message: &'m str, name: &str) -> Option<&'m str> {
    let start = message.find(&format!("--- {name}\n"))? + name.len() + 5;
    let len = message[start..].find("\n---\n")? + 1;
    Some(&message[start..start + len])
}

/// Writes a record commit whose tree holds `doc` as the blob `name`.
pub fn write(
    repo: &Repo,
    subject: &str,
    name: &str,
    doc: &impl serde::Serialize,
    task: Option<&str>,
    parents: &[ObjectId],
) -> Result<ObjectId> {
    let text = toml::to_string(doc)?;
    let blob = repo.write_blob(text.as_bytes())?;
    let tree = repo.write_tree(None, &[(name, blob)])?;
    repo.write_commit(&message(subject, task), tree, parents)
}

/// Reads the record `name` from commit `id`; `Err` says why it cannot.
pub fn read<T: serde::de::DeserializeOwned>(
    repo: &Repo,
    id: ObjectId,
    name: &str,
) -> Result<T, String> {
    let tree = match repo.commit_tree(id).map_err(|e| format!("{e:#}"))? {
        Ok(tree) => tree,
        Err(_) => return Err(format!("{id} is not a commit")),
    };
    let text = match repo.tree_blob(tree, name).map_err(|e| format!("{e:#}"))? {
        Some(bytes) => String::from_utf8(bytes).map_err(|_| format!("{name} is not UTF-8"))?,
        None => {
            let info = repo.commit_info(id).map_err(|e| format!("{e:#}"))?;
            parse_message(&info.message, name)
                .ok_or_else(|| format!("commit {id} holds no {name}"))?
                .to_string()
        }
    };
    toml::from_str(&text).map_err(|e| format!("{name} does not parse: {}", e.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_records_in_the_message_are_found() {
        let m = "lease: taken\n\n--- lease.toml\na = 1\nb = \"x\"\n---\n\nLoop-Task: abc\n";
        assert_eq!(parse_message(m, "lease.toml"), Some("a = 1\nb = \"x\"\n"));
        assert_eq!(parse_message(m, "other.toml"), None);
    }

    #[test]
    fn a_subject_is_one_line_and_the_trailer_follows() {
        assert_eq!(
            message("pause\n---\nmore", Some("abc")),
            "pause\n\nLoop-Task: abc\n"
        );
        assert_eq!(message("breaker: open", None), "breaker: open\n");
    }
}

//! State records carried in commit messages: a subject line, then a TOML document between
//! `--- <name>` and `---`, then a `Loop-Task:` trailer when the record concerns a task. Used by
//! promotion checkpoints, leases, runner heartbeats and the breaker, whose commits point at the
//! empty tree: one object per record.

use anyhow::Result;
use gix::ObjectId;

use crate::git::Repo;

/// The full message of a record commit.
pub fn message(subject: &str, name: &str, doc: &str, task: Option<&str>) -> String {
    let mut m = format!("{subject}\n\n--- {name}\n{doc}");
    if !doc.ends_with('\n') {
        m.push('\n');
    }
    m.push_str("---\n");
    if let Some(id) = task {
        m.push_str(&format!("\nLoop-Task: {id}\n"));
    }
    m
}

/// The TOML document of the record `name` in a commit message.
pub fn parse<'m>(message: &'m str, name: &str) -> Option<&'m str> {
    let start = message.find(&format!("--- {name}\n"))? + name.len() + 5;
    let len = message[start..].find("\n---\n")? + 1;
    Some(&message[start..start + len])
}

/// Writes a record commit over the empty tree.
pub fn write(
    repo: &Repo,
    subject: &str,
    name: &str,
    doc: &impl serde::Serialize,
    task: Option<&str>,
    parents: &[ObjectId],
) -> Result<ObjectId> {
    let text = toml::to_string(doc)?;
    let tree = ObjectId::empty_tree(gix::hash::Kind::Sha1);
    repo.write_commit(&message(subject, name, &text, task), tree, parents)
}

/// Reads the record `name` from commit `id`; `Err` says why it cannot.
pub fn read<T: serde::de::DeserializeOwned>(
    repo: &Repo,
    id: ObjectId,
    name: &str,
) -> Result<T, String> {
    let info = repo.commit_info(id).map_err(|e| format!("{e:#}"))?;
    let doc = parse(&info.message, name).ok_or_else(|| format!("commit {id} holds no {name}"))?;
    toml::from_str(doc).map_err(|e| format!("{name} does not parse: {}", e.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let m = message(
            "lease: taken",
            "lease.toml",
            "a = 1\nb = \"x\"\n",
            Some("abc"),
        );
        assert_eq!(parse(&m, "lease.toml"), Some("a = 1\nb = \"x\"\n"));
        assert_eq!(parse(&m, "other.toml"), None);
        assert!(m.ends_with("\nLoop-Task: abc\n"));
    }
}

//! Task ids: 32 lowercase hex digits, shown as the shortest unique prefix of at least 7, and
//! accepted as any unique prefix.

use std::collections::HashSet;

use crate::error::{Class, LoopError};

pub const FULL_LEN: usize = 32;
pub const MIN_SHORT: usize = 7;

/// The first [`MIN_SHORT`] digits of `id` (all of it when shorter): how ids are shown in
/// messages and branch names.
pub fn short(id: &str) -> &str {
    id.get(..MIN_SHORT).unwrap_or(id)
}

pub fn is_full_id(s: &str) -> bool {
    s.len() == FULL_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A new id whose 7-digit prefix is not shared by any of `existing`, so that short ids (and the
/// branch names made from them) stay short and stable.
pub fn generate(existing: &[&str]) -> String {
    let taken: HashSet<&str> = existing
        .iter()
        .filter_map(|id| id.get(..MIN_SHORT))
        .collect();
    loop {
        let id = format!("{:032x}", crate::rand::u128());
        if !taken.contains(&id[..MIN_SHORT]) {
            return id;
        }
    }
}

/// The shortest unique prefix (at least [`MIN_SHORT`]) of every id in `ids`, in the same order.
pub fn shortest_prefixes(ids: &[&str]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_unstable_by_key(|&i| ids[i]);
    let mut lens = vec![MIN_SHORT; ids.len()];
    for w in order.windows(2) {
        let (a, b) = (ids[w[0]], ids[w[1]]);
        let common = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
        let need = common + 1;
        lens[w[0]] = lens[w[0]].max(need.min(a.len()));
        lens[w[1]] = lens[w[1]].max(need.min(b.len()));
    }
    lens
}

/// Maps full ids to their short forms.
pub struct ShortIds {
    map: std::collections::HashMap<String, usize>,
}

impl ShortIds {
    pub fn new<'a>(ids: impl IntoIterator<Item = &'a str>) -> Self {
        let ids: Vec<&str> = ids.into_iter().collect();
        let lens = shortest_prefixes(&ids);
        ShortIds {
            map: ids
                .iter()
                .zip(lens)
                .map(|(id, len)| (id.to_string(), len))
                .collect(),
        }
    }

    pub fn short<'a>(&self, id: &'a str) -> &'a str {
        let len = self.map.get(id).copied().unwrap_or(MIN_SHORT);
        id.get(..len).unwrap_or(id)
    }
}

/// Resolves `prefix` against `ids`: exactly one match, or a usage error that lists candidates.
pub fn resolve<'a>(prefix: &str, ids: &[&'a str]) -> Result<&'a str, LoopError> {
    let wanted = prefix.trim().to_ascii_lowercase();
    if wanted.is_empty() || !wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(LoopError::new(
            Class::Usage,
            format!("{prefix:?} is not a task id (ids are hexadecimal)"),
        )
        .with_hint("`git loop task list` shows the ids"));
    }
    let matches: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|id| id.starts_with(&wanted))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(LoopError::new(
            Class::Usage,
            format!("no task has an id starting with {wanted}"),
        )
        .with_hint("`git loop task list` shows the ids")),
        many => {
            let shown: Vec<String> = many.iter().take(10).map(|s| s.to_string()).collect();
            let more = if many.len() > 10 {
                format!(" and {} more", many.len() - 10)
            } else {
                String::new()
            };
            Err(LoopError::new(
                Class::Usage,
                format!(
                    "the id prefix {wanted} is ambiguous; it matches {} tasks: {}{more}",
                    many.len(),
                    shown.join(", ")
                ),
            )
            .with_hint("give more digits of the id"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let ids = ["abcdef0123", "abcdef0999", "1234567000"];
        assert_eq!(shortest_prefixes(&ids), vec![8, 8, 7]);
        assert_eq!(resolve("abcdef01", &ids).ok(), Some("abcdef0123"));
        assert!(resolve("abcdef0", &ids).is_err());
        assert!(resolve("zz", &ids).is_err());
        assert!(resolve("999", &ids).is_err());
    }

    #[test]
    fn generated_ids_are_full_and_distinct() {
        let a = generate(&[]);
        let b = generate(&[&a]);
        assert!(is_full_id(&a) && is_full_id(&b));
        assert_ne!(a[..MIN_SHORT], b[..MIN_SHORT]);
    }
}

//! Failure classes, signatures and backoff (SPEC §1, §3, §5).

use std::time::Duration;

use crate::policy::RetrySection;

/// A failure signature: a hash of the class, the step and the error text with its volatile parts
/// (numbers, hashes, paths, times) removed, so that the same failure looks the same each time.
pub fn signature(class: &str, step: &str, text: &str) -> String {
    let normal = normalize(text);
    // FNV-1a, 64 bits: stable across builds, unlike the standard library's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in class
        .bytes()
        .chain([0])
        .chain(step.bytes())
        .chain([0])
        .chain(normal.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{class}:{step}:{h:016x}")
}

/// The text with numbers, hexadecimal ids, paths and whitespace runs folded.
pub fn normalize(text: &str) -> String {
    let text = crate::agent::strip_ansi(text);
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        if word.contains('/') {
            out.push_str("<path>");
            continue;
        }
        let core = word.trim_matches(|c: char| !c.is_ascii_alphanumeric());
        let hexish = core.len() >= 7
            && core.chars().all(|c| c.is_ascii_hexdigit())
            && core.chars().any(|c| c.is_ascii_digit());
        if hexish {
            out.push_str(&word.replace(core, "<hex>"));
            continue;
        }
        let mut last_digit = false;
        for c in word.chars() {
            if c.is_ascii_digit() {
                if !last_digit {
                    out.push('#');
                }
                last_digit = true;
            } else {
                out.push(c);
                last_digit = false;
            }
        }
    }
    out
}

/// The cap of the `n`th retry's wait (counting from 1): `min(max, initial × multiplier^(n-1))`.
pub fn backoff_cap(policy: &RetrySection, n: u32) -> Duration {
    let factor = policy.multiplier.powi(n.saturating_sub(1).min(60) as i32);
    let secs = (policy.initial.as_secs_f64() * factor).min(policy.max.as_secs_f64());
    Duration::from_secs_f64(secs.max(0.0))
}

/// Full jitter: a uniformly random wait between zero and the cap.
pub fn backoff(policy: &RetrySection, n: u32) -> Duration {
    let cap = backoff_cap(policy, n).as_millis() as u64;
    Duration::from_millis(crate::rand::below_or_equal(cap))
}

/// Whether the last `n` signatures are the same one.
pub fn repeated(signatures: &[String], n: u32) -> bool {
    let n = n as usize;
    n > 0
        && signatures.len() >= n
        && signatures[signatures.len() - n..]
            .iter()
            .all(|s| *s == signatures[signatures.len() - 1])
}

/// Whether an agent's output or exit code says it hit a quota or rate limit. A pattern matches
/// as a word (or words): not inside a longer word or number, so `429` is found in `HTTP 429`
/// but not in `(node:12429)`, a UUID, or `after 14290 ms`.
pub fn is_quota(tail: &str, code: Option<i32>, patterns: &[String], codes: &[i32]) -> bool {
    if code.is_some_and(|c| codes.contains(&c)) {
        return true;
    }
    let lower = tail.to_lowercase();
    patterns
        .iter()
        .any(|p| !p.is_empty() && has_word(&lower, &p.to_lowercase()))
}

/// Whether `text` holds `word` with no letter, digit or `_` right before or after it.
fn has_word(text: &str, word: &str) -> bool {
    let inside = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    text.match_indices(word).any(|(at, _)| {
        !inside(text[..at].chars().next_back()) && !inside(text[at + word.len()..].chars().next())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volatile_parts_do_not_change_a_signature() {
        let a = signature(
            "transient",
            "agent",
            "error at /tmp/x/1.rs:12 after 3401ms (abc1234def)",
        );
        let b = signature(
            "transient",
            "agent",
            "error at /home/y/2.rs:99 after 12ms (0987654fed)",
        );
        assert_eq!(a, b);
        assert_ne!(a, signature("transient", "agent", "a different error"));
        assert_ne!(
            a,
            signature(
                "transient",
                "judge",
                "error at /tmp/x/1.rs:12 after 3401ms (abc1234def)"
            )
        );
    }

    #[test]
    fn backoff_is_capped_exponential() {
        let p = RetrySection {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(10),
            multiplier: 2.0,
            max_attempts: 5,
            same_signature: 3,
            escalate_after: 2,
            cooloff: Duration::from_secs(60),
        };
        assert_eq!(backoff_cap(&p, 1), Duration::from_secs(1));
        assert_eq!(backoff_cap(&p, 3), Duration::from_secs(4));
        assert_eq!(backoff_cap(&p, 9), Duration::from_secs(10));
        for n in 1..10 {
            assert!(backoff(&p, n) <= backoff_cap(&p, n));
        }
        assert!(repeated(&["a".into(), "b".into(), "b".into()], 2));
        let p = ["429".to_string(), "rate limit".to_string()];
        for quota in [
            "HTTP 429 Too Many Requests",
            "error: 429",
            "Rate limit reached.",
            "(429)",
        ] {
            assert!(is_quota(quota, None, &p, &[]), "{quota}");
        }
        for not in [
            "(node:12429) warning",
            "id 7f3a429b-1c2d",
            "build failed after 14290 ms",
            "rate limiting",
            "x4290",
        ] {
            assert!(!is_quota(not, None, &p, &[]), "{not}");
        }
        assert!(!repeated(&["a".into(), "b".into()], 2));
    }
}

//! Randomness for ids and jitter, from the standard library's randomly keyed SipHash.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// 64 random bits: a fresh randomly keyed hasher over the time, the pid and a counter.
pub fn u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

pub fn u128() -> u128 {
    (u128::from(u64()) << 64) | u128::from(u64())
}

/// A uniformly distributed value in `0..=max` (for full-jitter backoff).
pub fn below_or_equal(max: u64) -> u64 {
    if max == u64::MAX {
        return u64();
    }
    u64() % (max + 1)
}

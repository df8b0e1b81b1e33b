//! Rate limits that no connection or body limit gives: identity searches per principal. An
//! identity search answers "is there a person named …, born on …", so a principal allowed to
//! make them could still enumerate names letter by letter or birth dates day by day; a token
//! bucket per principal bounds how fast. Pure: time is passed in.

use std::collections::HashMap;

/// A token bucket per principal: `burst` searches at once, refilled at `per_minute`.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_minute: u32,
    burst: u32,
    buckets: HashMap<String, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl RateLimiter {
    pub(crate) fn new(per_minute: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            per_minute: per_minute.max(1),
            burst: burst.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token of `key`'s bucket at `now_ms`; when none is left, the seconds until one
    /// is. The map holds one bucket per principal that searched, and principals come from the
    /// configured key table, so it stays small.
    pub(crate) fn take(&mut self, key: &str, now_ms: u64) -> Result<(), u64> {
        let per_ms = f64::from(self.per_minute) / 60_000.0;
        let burst = f64::from(self.burst);
        let bucket = self.buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: burst,
            at_ms: now_ms,
        });
        let elapsed = now_ms.saturating_sub(bucket.at_ms) as f64;
        bucket.tokens = (bucket.tokens + elapsed * per_ms).min(burst);
        bucket.at_ms = bucket.at_ms.max(now_ms);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait_ms = (1.0 - bucket.tokens) / per_ms;
        Err((wait_ms / 1000.0).ceil().max(1.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let mut limiter = RateLimiter::new(60, 3);
        for _ in 0..3 {
            assert_eq!(limiter.take("researcher", 0), Ok(()));
        }
        assert_eq!(limiter.take("researcher", 0), Err(1));
        // Another principal has a bucket of its own.
        assert_eq!(limiter.take("clinician", 0), Ok(()));
        // One a second comes back.
        assert_eq!(limiter.take("researcher", 1_000), Ok(()));
        assert_eq!(limiter.take("researcher", 1_500), Err(1));
        // A long pause refills no more than the burst.
        for _ in 0..3 {
            assert_eq!(limiter.take("researcher", 600_000), Ok(()));
        }
        assert!(limiter.take("researcher", 600_000).is_err());
    }
}

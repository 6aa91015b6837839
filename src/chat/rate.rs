//! Per-user rates: token buckets that outlive the user's connections, so
//! reconnecting gains nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Allows `rate` messages per second sustained, in bursts of up to `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

/// The limit a bucket enforces; a rate of 0 turns limiting off.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    /// Tokens per second, sustained.
    pub rate: f64,
    /// The most messages accepted at once after a quiet spell.
    pub burst: u32,
}

impl RateLimit {
    /// The contract's default: 20/s with bursts of 100; a configured rate
    /// keeps the same five-second burst.
    pub fn per_second(rate: u32) -> Self {
        RateLimit {
            rate: f64::from(rate),
            burst: rate.saturating_mul(5),
        }
    }

    /// `count` a minute, in bursts of up to `count`.
    pub const fn per_minute(count: u32) -> Self {
        RateLimit {
            rate: count as f64 / 60.0,
            burst: count,
        }
    }
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        TokenBucket {
            tokens: f64::from(limit.burst),
            updated: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, limit: RateLimit, now: Instant) -> bool {
        if limit.rate <= 0.0 {
            return true;
        }
        self.tokens = self.tokens_at(limit, now);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// True once the bucket has refilled: forgetting it then changes nothing.
    pub fn is_full(&self, limit: RateLimit, now: Instant) -> bool {
        self.tokens_at(limit, now) >= f64::from(limit.burst)
    }

    fn tokens_at(&self, limit: RateLimit, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        (self.tokens + elapsed * limit.rate).min(f64::from(limit.burst))
    }
}

/// Fewest buckets kept before a sweep forgets the full ones.
const SWEEP_FLOOR: usize = 1024;

/// One bucket per user under one limit. A bucket is kept while it is not
/// full, whether or not its user is connected: a user who disconnects and
/// reconnects finds it as they left it.
#[derive(Debug)]
pub struct RateBuckets {
    limit: RateLimit,
    state: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    by_user: HashMap<Box<str>, TokenBucket>,
    /// Size at which the next sweep runs: twice what the last one left, so
    /// sweeps cost O(1) per take on average.
    sweep_at: usize,
}

impl RateBuckets {
    /// Buckets enforcing `limit`.
    pub fn new(limit: RateLimit) -> Self {
        RateBuckets {
            limit,
            state: Mutex::new(Buckets {
                by_user: HashMap::new(),
                sweep_at: SWEEP_FLOOR,
            }),
        }
    }

    /// Takes one token from `user`'s bucket if there is one.
    pub fn take(&self, user: &str, now: Instant) -> bool {
        if self.limit.rate <= 0.0 {
            return true;
        }
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(bucket) = state.by_user.get_mut(user) {
            return bucket.take(self.limit, now);
        }
        if state.by_user.len() >= state.sweep_at {
            let limit = self.limit;
            state
                .by_user
                .retain(|_, bucket| !bucket.is_full(limit, now));
            state.sweep_at = (2 * state.by_user.len()).max(SWEEP_FLOOR);
        }
        let mut bucket = TokenBucket::new(self.limit, now);
        let taken = bucket.take(self.limit, now);
        state.by_user.insert(user.into(), bucket);
        taken
    }

    /// How many buckets are kept (each not yet full, or not yet swept).
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .by_user
            .len()
    }

    /// True when no bucket is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_a_burst_then_the_sustained_rate() {
        let limit = RateLimit::per_second(20);
        let start = Instant::now();
        let mut bucket = TokenBucket::new(limit, start);
        assert_eq!((0..150).filter(|_| bucket.take(limit, start)).count(), 100);
        let later = start + Duration::from_millis(500);
        assert_eq!((0..50).filter(|_| bucket.take(limit, later)).count(), 10);
    }

    #[test]
    fn a_bucket_outlives_its_users_connections_until_it_is_full_again() {
        let buckets = RateBuckets::new(RateLimit::per_second(20));
        let start = Instant::now();
        assert_eq!((0..150).filter(|_| buckets.take("A", start)).count(), 100);
        // Whatever happened to A's connections meanwhile, the bucket is the same.
        let soon = start + Duration::from_millis(100);
        assert_eq!((0..10).filter(|_| buckets.take("A", soon)).count(), 2);
        // A sweep forgets only buckets that have refilled.
        for i in 0..SWEEP_FLOOR {
            buckets.take(&format!("u{i}"), soon);
        }
        assert!(buckets.len() > SWEEP_FLOOR, "none of them is full yet");
        let later = start + Duration::from_secs(60);
        let mut before = buckets.len();
        let mut swept = None;
        for i in 0..4 * SWEEP_FLOOR {
            buckets.take(&format!("late{i}"), later);
            if buckets.len() < before {
                swept = Some(i);
                break;
            }
            before = buckets.len();
        }
        // Only the buckets taken from at `later` are left: every earlier one had refilled.
        let swept = swept.expect("a sweep ran");
        assert_eq!(buckets.len(), swept + 1);
        assert!(!buckets.is_empty());
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let limit = RateLimit::per_second(0);
        let now = Instant::now();
        let mut bucket = TokenBucket::new(limit, now);
        assert!((0..10_000).all(|_| bucket.take(limit, now)));
    }
}

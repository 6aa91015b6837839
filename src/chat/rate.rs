//! Per-user message rate: a token bucket.

use std::time::Instant;

/// Allows `rate` messages per second sustained, in bursts of up to `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

/// The limit a bucket enforces; `rate == 0` turns limiting off.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    /// Messages per second, sustained.
    pub rate: u32,
    /// The most messages accepted at once after a quiet spell.
    pub burst: u32,
}

impl RateLimit {
    /// The contract's default: 20/s with bursts of 100; a configured rate
    /// keeps the same five-second burst.
    pub fn per_second(rate: u32) -> Self {
        RateLimit {
            rate,
            burst: rate.saturating_mul(5),
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
        if limit.rate == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(limit.rate)).min(f64::from(limit.burst));
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
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
    fn zero_turns_the_limit_off() {
        let limit = RateLimit::per_second(0);
        let now = Instant::now();
        let mut bucket = TokenBucket::new(limit, now);
        assert!((0..10_000).all(|_| bucket.take(limit, now)));
    }
}

//! Per-worker rate limits (governor) for remember and ask.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// A keyed limiter, or none when the configured rate is 0 (unlimited).
pub struct KeyedLimit {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
}

impl KeyedLimit {
    /// `per_period` events per `period`, with a burst of the same size (at least 1).
    /// `per_period <= 0` means unlimited.
    pub fn new(per_period: f64, period: Duration) -> Self {
        if per_period <= 0.0 || !per_period.is_finite() {
            return Self { limiter: None };
        }
        let interval = period.div_f64(per_period);
        let burst = NonZeroU32::new(per_period.ceil().clamp(1.0, f64::from(u32::MAX)) as u32)
            .unwrap_or(NonZeroU32::MIN);
        let limiter = Quota::with_period(interval.max(Duration::from_nanos(1)))
            .map(|q| RateLimiter::keyed(q.allow_burst(burst)));
        Self { limiter }
    }

    /// `Ok` if `key` may go ahead now, else the seconds to wait (at least 1).
    pub fn check(&self, key: &str) -> Result<(), u64> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        match limiter.check_key(&key.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(limiter.clock().now());
                Err(wait.as_secs_f64().ceil().max(1.0) as u64)
            }
        }
    }

    /// Forgets keys that are back to a full burst (bounded memory).
    pub fn housekeeping(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// The node's limiters.
pub struct Limits {
    /// remember_per_sec, keyed by worker.
    pub remember: KeyedLimit,
    /// ask_per_min, keyed by worker header or client address.
    pub ask: KeyedLimit,
}

impl Limits {
    /// From the configured rates.
    pub fn new(remember_per_sec: f64, ask_per_min: f64) -> Self {
        Self {
            remember: KeyedLimit::new(remember_per_sec, Duration::from_secs(1)),
            ask: KeyedLimit::new(ask_per_min, Duration::from_secs(60)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse_per_key() {
        let l = KeyedLimit::new(3.0, Duration::from_secs(1));
        for _ in 0..3 {
            assert!(l.check("a").is_ok());
        }
        assert_eq!(l.check("a"), Err(1));
        assert!(l.check("b").is_ok(), "keys are independent");
        let per_min = KeyedLimit::new(2.0, Duration::from_secs(60));
        per_min.check("x").unwrap();
        per_min.check("x").unwrap();
        let wait = per_min.check("x").unwrap_err();
        assert!((1..=30).contains(&wait), "{wait}");
        let unlimited = KeyedLimit::new(0.0, Duration::from_secs(1));
        for _ in 0..1000 {
            unlimited.check("a").unwrap();
        }
    }
}

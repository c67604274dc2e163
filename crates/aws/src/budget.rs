//! A per-account-and-region request budget, shaped like EC2's own throttling.
//!
//! EC2 throttles each account and region with token buckets (describes: bursts of 100,
//! refilling 20/s). Every cluster of one account and region shares one `Aws` and therefore one
//! bucket per region, so twenty reconcilers together still stay under the rate AWS allows
//! instead of each of them discovering the limit through `RequestLimitExceeded`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket; `acquire` waits until a token is free.
///
/// It adapts like the AWS SDKs' adaptive retry mode: a throttling answer halves the refill
/// rate (down to a twentieth of the configured one) and spends the saved-up tokens, each
/// success raises it back by a tenth of the configured rate. Retries alone back off per
/// call; under a storm of `RequestLimitExceeded` the many calls of many clusters would still
/// fill the whole budget with attempts that are all refused.
#[derive(Debug)]
pub struct TokenBucket {
    rate_per_second: f64,
    burst: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    last: Instant,
    /// The current refill rate: the configured one, lowered after throttling.
    rate: f64,
}

impl TokenBucket {
    pub fn new(rate_per_second: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        let rate_per_second = rate_per_second.max(0.001);
        TokenBucket {
            rate_per_second,
            burst,
            state: Mutex::new(State {
                tokens: burst,
                last: Instant::now(),
                rate: rate_per_second,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a token if one is free, else says how long until one is.
    fn try_take(&self) -> Result<(), Duration> {
        let mut state = self.state();
        let now = Instant::now();
        state.tokens = (state.tokens + now.duration_since(state.last).as_secs_f64() * state.rate)
            .min(self.burst);
        state.last = now;
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - state.tokens) / state.rate))
        }
    }

    pub async fn acquire(&self) {
        while let Err(wait) = self.try_take() {
            tokio::time::sleep(wait).await;
        }
    }

    /// AWS answered "slow down": halve the rate and spend what was saved up.
    pub fn throttled(&self) {
        let floor = self.rate_per_second / 20.0;
        let mut state = self.state();
        state.rate = (state.rate / 2.0).max(floor);
        state.tokens = state.tokens.min(0.0);
    }

    /// A call went through: recover towards the configured rate.
    pub fn succeeded(&self) {
        let mut state = self.state();
        state.rate = (state.rate + self.rate_per_second / 10.0).min(self.rate_per_second);
    }

    /// The current refill rate.
    pub fn rate(&self) -> f64 {
        self.state().rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_is_free_and_then_the_rate_applies() {
        let bucket = TokenBucket::new(10.0, 5);
        for _ in 0..5 {
            bucket.acquire().await;
        }
        assert!(bucket.try_take().is_err(), "the burst is spent");
        let wait = bucket.try_take().expect_err("still empty");
        assert!(
            wait <= Duration::from_millis(100),
            "one token takes 1/rate: {wait:?}"
        );
    }

    #[test]
    fn throttling_slows_the_rate_and_successes_restore_it() {
        let bucket = TokenBucket::new(20.0, 10);
        for _ in 0..10 {
            bucket.throttled();
        }
        assert_eq!(
            bucket.rate(),
            1.0,
            "a twentieth of the configured rate at least"
        );
        assert!(
            bucket.try_take().is_err(),
            "the burst is spent by throttling"
        );
        for _ in 0..10 {
            bucket.succeeded();
        }
        assert_eq!(bucket.rate(), 20.0, "never above the configured rate");
    }
}

//! A per-account-and-region request budget, shaped like EC2's own throttling.
//!
//! EC2 throttles each account and region with token buckets (describes: bursts of 100,
//! refilling 20/s). Every cluster of one account and region shares one `Aws` and therefore one
//! bucket per region, so twenty reconcilers together still stay under the rate AWS allows
//! instead of each of them discovering the limit through `RequestLimitExceeded`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket; `acquire` waits until a token is free.
#[derive(Debug)]
pub struct TokenBucket {
    rate_per_second: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(rate_per_second: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate_per_second: rate_per_second.max(0.001),
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes a token if one is free, else says how long until one is.
    fn try_take(&self) -> Result<(), Duration> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (tokens, last) = &mut *state;
        let now = Instant::now();
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate_per_second)
            .min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - *tokens) / self.rate_per_second,
            ))
        }
    }

    pub async fn acquire(&self) {
        while let Err(wait) = self.try_take() {
            tokio::time::sleep(wait).await;
        }
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
}

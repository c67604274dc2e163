//! Latency summaries: nearest-rank percentiles over recorded samples.

use serde::Serialize;

/// Percentiles of a set of samples, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// The nearest-rank percentile `p` (0–100) of sorted samples; 0 for none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summarises samples given in milliseconds.
pub fn summarize(samples: &[f64]) -> Summary {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let round = |v: f64| (v * 1000.0).round() / 1000.0;
    let mean = if sorted.is_empty() {
        0.0
    } else {
        sorted.iter().sum::<f64>() / sorted.len() as f64
    };
    Summary {
        count: sorted.len(),
        p50_ms: round(percentile(&sorted, 50.0)),
        p90_ms: round(percentile(&sorted, 90.0)),
        p99_ms: round(percentile(&sorted, 99.0)),
        max_ms: round(sorted.last().copied().unwrap_or(0.0)),
        mean_ms: round(mean),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = summarize(&samples);
        assert_eq!(
            (s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms),
            (100, 50.0, 90.0, 99.0, 100.0)
        );
        assert_eq!(s.mean_ms, 50.5);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(summarize(&[]).p99_ms, 0.0);
        // Unsorted input and a single outlier.
        let s = summarize(&[3.0, 1.0, 2.0, 1000.0]);
        assert_eq!((s.p50_ms, s.p99_ms, s.max_ms), (2.0, 1000.0, 1000.0));
    }
}

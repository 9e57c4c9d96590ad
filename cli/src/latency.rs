//! Per-token latency figures shared by the benchmarks: percentiles and a histogram.

use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Latency of a run's tokens, in milliseconds between consecutive tokens.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Latency {
    /// Tokens measured.
    pub count: usize,
    /// Median gap.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest gap.
    pub max_ms: f64,
    /// `[upper edge in ms, tokens]` buckets: edges double from 1 ms (the last is unbounded).
    pub histogram: Vec<(f64, usize)>,
}

/// Records the time of each token.
#[derive(Debug)]
pub(crate) struct TokenClock {
    last: Option<Instant>,
    gaps_ms: Vec<f64>,
}

impl TokenClock {
    pub(crate) fn new() -> Self {
        Self { last: None, gaps_ms: Vec::new() }
    }

    /// A token arrived now (the first starts the clock).
    pub(crate) fn tick(&mut self) {
        let now = Instant::now();
        if let Some(t) = self.last {
            self.gaps_ms.push((now - t).as_secs_f64() * 1e3);
        }
        self.last = Some(now);
    }

    /// Gaps recorded since the last [`Self::take`].
    pub(crate) fn take(&mut self) -> Vec<f64> {
        std::mem::take(&mut self.gaps_ms)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

impl Latency {
    /// Figures of `gaps` (milliseconds).
    pub(crate) fn of(mut gaps: Vec<f64>) -> Self {
        gaps.sort_by(f64::total_cmp);
        let mut histogram: Vec<(f64, usize)> = Vec::new();
        let mut edge = 1.0;
        let mut i = 0;
        while i < gaps.len() {
            let n = gaps[i..].iter().take_while(|&&g| g <= edge).count();
            histogram.push((edge, n));
            i += n;
            edge *= 2.0;
            if edge > 4096.0 {
                histogram.push((f64::INFINITY, gaps.len() - i));
                break;
            }
        }
        Latency {
            count: gaps.len(),
            p50_ms: percentile(&gaps, 0.5),
            p90_ms: percentile(&gaps, 0.9),
            p99_ms: percentile(&gaps, 0.99),
            max_ms: gaps.last().copied().unwrap_or(0.0),
            histogram,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_buckets() {
        let l = Latency::of(vec![0.5, 1.5, 1.5, 3.0, 9.0, 9.5, 100.0, 2.0, 2.0, 2.0]);
        assert_eq!(l.count, 10);
        assert_eq!(l.p50_ms, 2.0);
        assert_eq!(l.max_ms, 100.0);
        assert_eq!(l.histogram.iter().map(|b| b.1).sum::<usize>(), 10);
        assert_eq!(l.histogram[0], (1.0, 1));
        assert_eq!(l.histogram[1], (2.0, 5));
        assert!(Latency::of(Vec::new()).histogram.is_empty());
    }
}

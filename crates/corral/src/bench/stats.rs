//! Percentiles over measured durations.

use std::time::Duration;

/// p50/p90/p99 of one measured operation, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

impl Stats {
    pub fn of(samples: &[Duration]) -> Self {
        let mut v = samples.to_vec();
        v.sort();
        let pick = |p: f64| {
            if v.is_empty() {
                return 0.0;
            }
            // Nearest rank: the smallest sample with at least p of them at or below it.
            let rank = (p * v.len() as f64).ceil() as usize;
            v[rank.clamp(1, v.len()) - 1].as_secs_f64() * 1000.0
        };
        Stats {
            n: v.len(),
            p50: pick(0.5),
            p90: pick(0.9),
            p99: pick(0.99),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "n": self.n,
            "p50_ms": round3(self.p50),
            "p90_ms": round3(self.p90),
            "p99_ms": round3(self.p99),
        })
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let s = Stats::of(&v);
        assert_eq!((s.n, s.p50, s.p90, s.p99), (100, 50.0, 90.0, 99.0));
        let one = Stats::of(&[Duration::from_millis(7)]);
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
        assert_eq!(Stats::of(&[]).n, 0);
    }
}

//! Where a budgeted rollout's time goes. With a budget of b nodes
//! unavailable at once, a rollout over N nodes is b slots, each taken by
//! one node's switch after another: at best ⌈N / b⌉ switches in a row. Its
//! wall time is the first start's delay, then per slot the switches and the
//! gaps between one switch's end and the next start in that slot (the
//! **refill** latency: the controller noticing the end and starting the
//! next node, and that node noticing), then the delay from the last end to
//! the rollout reported done. The k-th start (k ≥ b, in time order) is the
//! one the (k − b)-th end made room for.

use std::time::{Duration, Instant};

/// Mean, median, 99th percentile and maximum of `values`.
pub fn stats(values: &[Duration]) -> (Duration, Duration, Duration, Duration) {
    if values.is_empty() {
        return Default::default();
    }
    let mut sorted = values.to_vec();
    sorted.sort();
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let mean = sorted.iter().sum::<Duration>() / sorted.len() as u32;
    (mean, at(0.5), at(0.99), at(1.0))
}

/// One rollout's timeline: each node's unavailable span (start, end).
pub struct Timeline {
    /// When the rollout was asked for.
    pub asked: Instant,
    /// When it was seen done.
    pub done: Instant,
    /// (start, end) of each node's switch.
    pub spans: Vec<(Instant, Instant)>,
    /// The budget.
    pub budget: usize,
}

impl Timeline {
    /// The refill latencies: the k-th start after the (k − b)-th end.
    pub fn refills(&self) -> Vec<Duration> {
        let mut starts: Vec<Instant> = self.spans.iter().map(|s| s.0).collect();
        let mut ends: Vec<Instant> = self.spans.iter().map(|s| s.1).collect();
        starts.sort();
        ends.sort();
        (self.budget..starts.len())
            .map(|k| starts[k].saturating_duration_since(ends[k - self.budget]))
            .collect()
    }

    /// The mean switch (span) time.
    pub fn mean_span(&self) -> Duration {
        let spans: Vec<Duration> = self.spans.iter().map(|(s, e)| *e - *s).collect();
        stats(&spans).0
    }

    /// Lines saying where the wall time went.
    pub fn describe(&self) -> String {
        let secs = |d: Duration| d.as_secs_f64();
        let first = self.spans.iter().map(|s| s.0).min().unwrap_or(self.asked);
        let last = self.spans.iter().map(|s| s.1).max().unwrap_or(self.done);
        let refills = self.refills();
        let (mean, p50, p99, max) = stats(&refills);
        let rounds = self.spans.len().div_ceil(self.budget.max(1));
        let mut out = String::new();
        out.push_str(&format!(
            "    asked → first node switching             {:>8.3} s\n",
            secs(first - self.asked)
        ));
        out.push_str(&format!(
            "    per-node switch (mean) × {rounds:>4} in a row    {:>8.3} s  ({:.3} s each)\n",
            secs(self.mean_span() * rounds as u32),
            secs(self.mean_span())
        ));
        out.push_str(&format!(
            "    refill: a switch's end → the next start   {:>8.3} s  mean (p50 {:.3}, p99 {:.3}, max {:.3}; {} refills)\n",
            secs(mean),
            secs(p50),
            secs(p99),
            secs(max),
            refills.len()
        ));
        out.push_str(&format!(
            "      × {:>4} rounds after the first           {:>8.3} s\n",
            rounds.saturating_sub(1),
            secs(mean * rounds.saturating_sub(1) as u32)
        ));
        let tail = self.done.saturating_duration_since(last);
        out.push_str(&format!(
            "    last node done → rollout seen done         {:>8.3} s\n",
            secs(tail)
        ));
        let accounted = (first - self.asked)
            + self.mean_span() * rounds as u32
            + mean * rounds.saturating_sub(1) as u32
            + tail;
        let wall = self.done - self.asked;
        out.push_str(&format!(
            "    the rest: uneven slots (the slowest ends it) {:>8.3} s  (of {:.3} s)\n",
            secs(wall.saturating_sub(accounted)),
            secs(wall)
        ));
        out
    }
}

//! Latency histograms with fixed buckets: recorded with two relaxed atomic adds, read
//! as snapshots that subtract (rates over an interval) and estimate quantiles.

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

/// Upper bounds of the buckets, in microseconds: 100 µs to 60 s, roughly 1-2.5-5 per
/// decade (the Prometheus client default, extended both ways for a message bus).
pub const BOUNDS_US: [u64; 18] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// One count per bound, and one for what took longer than the last.
const BUCKETS: usize = BOUNDS_US.len() + 1;

/// A histogram that many threads record into.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Counts one observation of `elapsed`.
    pub fn record(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_US.partition_point(|&bound| bound < us);
        self.counts[bucket].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// The counts so far. Taken without a lock, so under load the sum may be a few
    /// observations ahead of or behind the counts.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self
                .counts
                .iter()
                .map(|count| count.load(Relaxed))
                .collect(),
            sum_us: self.sum_us.load(Relaxed),
        }
    }
}

/// A histogram's counts at one moment; `counts[i]` observations fell in bucket `i`
/// (not cumulative), whose upper bound is `BOUNDS_US[i]` (none for the last).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Per bucket; empty for a histogram that was never read (no observations).
    pub counts: Vec<u64>,
    /// The sum of all observations, in microseconds.
    pub sum_us: u64,
}

impl HistogramSnapshot {
    /// Observations in all buckets.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// What was observed after `earlier` (a snapshot of the same histogram). A histogram
    /// that restarted from zero meanwhile (a new process), seen as a bucket that went
    /// down, counts from zero.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        let restarted = earlier.counts.len() != self.counts.len()
            || self
                .counts
                .iter()
                .zip(&earlier.counts)
                .any(|(now, then)| now < then);
        if restarted {
            return self.clone();
        }
        HistogramSnapshot {
            counts: self
                .counts
                .iter()
                .zip(&earlier.counts)
                .map(|(now, then)| now - then)
                .collect(),
            sum_us: self.sum_us.saturating_sub(earlier.sum_us),
        }
    }

    /// The `q`-quantile (0 ≤ q ≤ 1), interpolated linearly within its bucket as
    /// Prometheus' `histogram_quantile` does; `None` without observations. An estimate
    /// in the last bucket is its lower bound (60 s): nothing better is known.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (bucket, &count) in self.counts.iter().enumerate() {
            if count > 0 && (below + count) as f64 >= rank {
                let lower = bucket.checked_sub(1).map_or(0, |i| BOUNDS_US[i]);
                let Some(&upper) = BOUNDS_US.get(bucket) else {
                    return Some(Duration::from_micros(lower));
                };
                let within = (rank - below as f64) / count as f64;
                let us = lower as f64 + (upper - lower) as f64 * within;
                return Some(Duration::from_micros(us as u64));
            }
            below += count;
        }
        None
    }
}

impl From<&HistogramSnapshot> for reef_proto::LatencyHistogram {
    fn from(snapshot: &HistogramSnapshot) -> Self {
        Self {
            bounds_us: BOUNDS_US.to_vec(),
            counts: match snapshot.counts.is_empty() {
                true => vec![0; BUCKETS],
                false => snapshot.counts.clone(),
            },
            sum_us: snapshot.sum_us,
        }
    }
}

impl TryFrom<&reef_proto::LatencyHistogram> for HistogramSnapshot {
    type Error = String;

    /// Only histograms with this build's buckets: quantiles of others would be wrong.
    fn try_from(wire: &reef_proto::LatencyHistogram) -> Result<Self, String> {
        if wire.bounds_us != BOUNDS_US || wire.counts.len() != BUCKETS {
            return Err(format!(
                "a latency histogram with {} buckets bounded at {:?} µs, not this build's {BUCKETS}",
                wire.counts.len(),
                wire.bounds_us
            ));
        }
        Ok(Self {
            counts: wire.counts.clone(),
            sum_us: wire.sum_us,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn records_into_the_bucket_whose_bound_is_not_exceeded() {
        let histogram = Histogram::default();
        histogram.record(Duration::from_micros(100)); // exactly a bound: that bucket
        histogram.record(Duration::from_micros(101));
        histogram.record(ms(3));
        histogram.record(Duration::from_secs(3600));
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.counts.len(), BOUNDS_US.len() + 1);
        assert_eq!(snapshot.counts[0], 1);
        assert_eq!(snapshot.counts[1], 1);
        assert_eq!(snapshot.counts[5], 1, "3 ms is in (2.5 ms, 5 ms]");
        assert_eq!(snapshot.counts[BOUNDS_US.len()], 1, "above every bound");
        assert_eq!(snapshot.count(), 4);
        assert_eq!(snapshot.sum_us, 100 + 101 + 3_000 + 3_600_000_000);
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let histogram = Histogram::default();
        assert_eq!(histogram.snapshot().quantile(0.5), None);
        for _ in 0..99 {
            histogram.record(ms(2)); // (1 ms, 2.5 ms]
        }
        histogram.record(ms(40)); // (25 ms, 50 ms]
        let snapshot = histogram.snapshot();
        let median = snapshot.quantile(0.5).unwrap();
        assert!(
            median > ms(1) && median <= Duration::from_micros(2_500),
            "{median:?}"
        );
        let tail = snapshot.quantile(1.0).unwrap();
        assert!(tail > ms(25) && tail <= ms(50), "{tail:?}");
    }

    #[test]
    fn a_later_snapshot_minus_an_earlier_one_is_the_interval() {
        let histogram = Histogram::default();
        histogram.record(ms(1));
        let earlier = histogram.snapshot();
        histogram.record(ms(7));
        histogram.record(ms(7));
        let interval = histogram.snapshot().since(&earlier);
        assert_eq!(interval.count(), 2);
        assert_eq!(interval.sum_us, 14_000);
        assert!(interval.quantile(0.5).unwrap() > ms(5));

        // A new process counts from zero: the interval is what it counted.
        let fresh = Histogram::default();
        fresh.record(ms(1));
        assert_eq!(fresh.snapshot().since(&histogram.snapshot()).count(), 1);
        assert_eq!(
            histogram.snapshot().since(&HistogramSnapshot::default()),
            histogram.snapshot()
        );
    }

    #[test]
    fn crosses_the_wire_and_refuses_other_buckets() {
        let histogram = Histogram::default();
        histogram.record(ms(3));
        let snapshot = histogram.snapshot();
        let wire = reef_proto::LatencyHistogram::from(&snapshot);
        assert_eq!(HistogramSnapshot::try_from(&wire), Ok(snapshot));

        let never_read = reef_proto::LatencyHistogram::from(&HistogramSnapshot::default());
        assert_eq!(HistogramSnapshot::try_from(&never_read).unwrap().count(), 0);

        let other = reef_proto::LatencyHistogram {
            bounds_us: vec![1_000],
            counts: vec![1, 0],
            sum_us: 500,
        };
        let error = HistogramSnapshot::try_from(&other).unwrap_err();
        assert!(error.contains("[1000]"), "{error}");
    }
}

//! Printing figures as `metric NAME VALUE UNIT` lines.

use std::future::Future;

use hdrhistogram::Histogram;

/// Runs `measure` `runs` times and returns every result, sorted (median in the middle).
pub async fn median_of<F, Fut>(runs: usize, mut measure: F) -> anyhow::Result<Vec<f64>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<f64>>,
{
    let mut results = Vec::with_capacity(runs);
    for _ in 0..runs {
        results.push(measure().await?);
    }
    results.sort_by(f64::total_cmp);
    Ok(results)
}

fn median(sorted: &[f64]) -> f64 {
    sorted[sorted.len() / 2]
}

/// One figure.
pub fn metric(name: &str, value: f64, unit: &str) {
    if value >= 100.0 {
        println!("metric {name} {value:.0} {unit}");
    } else {
        println!("metric {name} {value:.3} {unit}");
    }
}

/// The median of `runs`, and every run on a comment line.
pub fn rate(name: &str, runs: &[f64], unit: &str) {
    metric(name, median(runs), unit);
    let all: Vec<String> = runs.iter().map(|r| format!("{r:.0}")).collect();
    println!("# {name} runs: {}", all.join(" "));
}

/// `measured / baseline`, by medians.
pub fn ratio(name: &str, measured: &[f64], baseline: &[f64]) {
    metric(name, median(measured) / median(baseline), "ratio");
}

/// p50, p99 and max of a latency histogram in microseconds.
pub fn latency(name: &str, histogram: &Histogram<u64>) {
    metric(
        &format!("{name}_p50"),
        histogram.value_at_quantile(0.5) as f64,
        "us",
    );
    metric(
        &format!("{name}_p99"),
        histogram.value_at_quantile(0.99) as f64,
        "us",
    );
    metric(&format!("{name}_max"), histogram.max() as f64, "us");
}

/// A histogram for microsecond latencies up to a minute.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// p50, p99 and max of a nanosecond histogram, in microseconds.
pub fn latency_ns(name: &str, histogram: &Histogram<u64>) {
    for (suffix, value) in [
        ("p50", histogram.value_at_quantile(0.5)),
        ("p99", histogram.value_at_quantile(0.99)),
        ("max", histogram.max()),
    ] {
        println!("metric {name}_{suffix} {:.1} us", value as f64 / 1e3);
    }
}

/// A histogram for nanosecond latencies up to a minute.
pub fn histogram_ns() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

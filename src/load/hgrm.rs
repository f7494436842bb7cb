//! The percentile distribution text of HdrHistogram (`outputPercentileDistribution`), as wrk2
//! `--latency` prints it and HdrHistogram's plotter reads it: values in milliseconds.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::load::record::HISTOGRAM_SIGNIFICANT_DIGITS;

/// Reporting ticks per half distance to 100 % (HdrHistogram's default).
const TICKS_PER_HALF_DISTANCE: u32 = 5;
/// Microseconds per reported unit (milliseconds).
const UNIT_US: f64 = 1000.0;

/// The distribution of `histogram` (µs) as `.hgrm` text.
pub fn render(histogram: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:>12} {:>14} {:>10} {:>14}\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)");
    let mut total_count = 0u64;
    for value in histogram.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
        total_count += value.count_since_last_iteration();
        let quantile = value.quantile_iterated_to();
        let ms = value.value_iterated_to() as f64 / UNIT_US;
        if quantile < 1.0 {
            let _ = writeln!(out, "{ms:12.3} {quantile:2.12} {total_count:10} {:14.2}", 1.0 / (1.0 - quantile));
        } else {
            let _ = writeln!(out, "{ms:12.3} {quantile:2.12} {total_count:10}");
        }
    }
    let (mean, deviation) = if histogram.is_empty() { (0.0, 0.0) } else { (histogram.mean(), histogram.stdev()) };
    let max = histogram.max() as f64 / UNIT_US;
    let _ = writeln!(out, "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]", mean / UNIT_US, deviation / UNIT_US);
    let _ = writeln!(out, "#[Max     = {max:12.3}, Total count    = {:12}]", histogram.len());
    let _ = writeln!(out, "#[Buckets = {:12}, SubBuckets     = {:12}]", histogram.buckets(), sub_bucket_count());
    out
}

/// HdrHistogram's sub-bucket count for the run's precision: the power of two that holds
/// `2 × 10^digits`.
fn sub_bucket_count() -> u64 {
    (2 * 10u64.pow(u32::from(HISTOGRAM_SIGNIFICANT_DIGITS))).next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::record::new_histogram;

    #[test]
    fn rows_are_value_percentile_count_and_inverse_and_end_at_the_max() {
        let mut histogram = new_histogram();
        for us in 1..=1000u64 {
            histogram.record(us * 10).unwrap();
        }
        let text = render(&histogram);
        let rows: Vec<Vec<f64>> = text
            .lines()
            .skip(2)
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .map(|line| line.split_whitespace().map(|field| field.parse().unwrap()).collect())
            .collect();
        assert!(rows.len() > 20, "{text}");
        let last = rows.last().unwrap();
        assert_eq!((last.len(), last[1], last[2]), (3, 1.0, 1000.0));
        assert!((last[0] - 10.0).abs() < 0.01, "max 10 ms: {last:?}");
        let median = rows.iter().find(|row| row[1] >= 0.5).unwrap();
        assert!((median[0] - 5.0).abs() < 0.01 && (median[3] - 2.0).abs() < 0.01, "{median:?}");
        assert!(rows.windows(2).all(|pair| pair[0][0] <= pair[1][0] && pair[0][2] <= pair[1][2]));
        assert!(text.contains("SubBuckets     =         2048]"), "{text}");
    }
}

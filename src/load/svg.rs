//! A latency-by-percentile chart as SVG text: x is the percentile on a log scale of
//! `1 / (1 - p)` (50 %, 90 %, 99 %, 99.9 % … equally spaced, as HdrHistogram's plots are),
//! y the latency in milliseconds; the corrected and the service-time curves on one chart.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 480.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
/// Nines shown at most on the x axis (99.9999 %).
const NINES_MAX: u32 = 6;
/// Points per curve at most (quantile iteration steps).
const TICKS_PER_HALF_DISTANCE: u32 = 10;

/// One curve: a histogram (µs), its legend and colour.
pub struct Curve<'a> {
    pub histogram: &'a Histogram<u64>,
    pub label: &'static str,
    pub colour: &'static str,
}

/// The chart of `curves` as an SVG document.
pub fn render(curves: &[Curve]) -> String {
    let count = curves.iter().map(|c| c.histogram.len()).max().unwrap_or(0).max(2);
    // Enough nines that the last sample is on the chart.
    let nines = ((count as f64).log10().ceil() as u32).clamp(2, NINES_MAX);
    let max_ms = curves.iter().map(|c| c.histogram.max() as f64 / 1000.0).fold(0.0, f64::max);
    let y_max = nice_ceiling(max_ms);
    let x_of = |quantile: f64| {
        let inverse = if quantile >= 1.0 { 10f64.powi(nines as i32) } else { 1.0 / (1.0 - quantile) };
        LEFT + (WIDTH - LEFT - RIGHT) * inverse.log10().min(f64::from(nines)) / f64::from(nines)
    };
    let y_of = |ms: f64| HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * ms / y_max;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">Latency by percentile</text>"#,
        WIDTH / 2.0
    );
    write_axes(&mut out, nines, y_max, &x_of, &y_of);
    for (index, curve) in curves.iter().enumerate() {
        let mut points = String::new();
        for value in curve.histogram.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            let ms = value.value_iterated_to() as f64 / 1000.0;
            let _ = write!(points, "{:.1},{:.1} ", x_of(value.quantile_iterated_to()), y_of(ms));
        }
        let _ = writeln!(
            out,
            r#"<polyline class="curve" data-label="{}" fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            curve.label,
            curve.colour,
            points.trim_end()
        );
        let legend_y = TOP + 10.0 + 18.0 * index as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{x}" y1="{legend_y}" x2="{}" y2="{legend_y}" stroke="{}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            LEFT + 40.0,
            curve.colour,
            LEFT + 46.0,
            legend_y + 4.0,
            curve.label,
            x = LEFT + 20.0,
        );
    }
    out.push_str("</svg>\n");
    out
}

fn write_axes(out: &mut String, nines: u32, y_max: f64, x_of: &dyn Fn(f64) -> f64, y_of: &dyn Fn(f64) -> f64) {
    let (x0, y0) = (LEFT, HEIGHT - BOTTOM);
    let _ = writeln!(
        out,
        r##"<g stroke="#999"><line x1="{x0}" y1="{y0}" x2="{}" y2="{y0}"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{TOP}"/></g>"##,
        WIDTH - RIGHT
    );
    let mut labels = vec![(0.0, "0%".to_string()), (0.5, "50%".to_string()), (0.9, "90%".to_string())];
    for nine in 2..=nines {
        let quantile = 1.0 - 10f64.powi(-(nine as i32));
        labels.push((quantile, format!("{}%", trim_float(quantile * 100.0, nine as usize))));
    }
    for (quantile, label) in labels {
        let x = x_of(quantile);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{y0}" stroke="#eee"/><text x="{x:.1}" y="{}" text-anchor="middle">{label}</text>"##,
            y0 + 16.0
        );
    }
    for step in 0..=4 {
        let ms = y_max * f64::from(step) / 4.0;
        let y = y_of(ms);
        let _ = writeln!(
            out,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            x0 - 6.0,
            y + 4.0,
            trim_float(ms, 3)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        HEIGHT - 10.0
    );
    let _ = writeln!(
        out,
        r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">latency (ms)</text>"#,
        HEIGHT / 2.0,
        HEIGHT / 2.0
    );
}

/// `value` with at most `decimals` decimals, trailing zeros dropped.
fn trim_float(value: f64, decimals: usize) -> String {
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// The smallest of 1, 2, 5 × 10^n at or above `value` (1 ms for an empty chart).
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 {
        return 1.0;
    }
    let power = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * power).find(|&ceiling| ceiling >= value).unwrap_or(10.0 * power)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::record::new_histogram;

    #[test]
    fn axis_labels_are_nines_and_the_y_axis_covers_the_max() {
        let mut histogram = new_histogram();
        for us in 1..=5000u64 {
            histogram.record(us * 100).unwrap();
        }
        let svg = render(&[Curve { histogram: &histogram, label: "corrected", colour: "#c00" }]);
        for label in [">50%<", ">90%<", ">99%<", ">99.9%<", ">99.99%<"] {
            assert!(svg.contains(label), "{label} missing");
        }
        assert!(!svg.contains(">99.999%<"), "5000 samples reach 4 nines, not 5");
        assert!(svg.contains(">500<"), "y axis to 500 ms");
        assert_eq!((nice_ceiling(0.3), nice_ceiling(20.5), nice_ceiling(1000.0)), (0.5, 50.0, 1000.0));
    }
}

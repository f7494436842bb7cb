//! The status page: a [`Status`] as one self-contained HTML document (inline CSS and SVG, no
//! script, no external asset), for a person with a browser on the box's network. Every value
//! is HTML-escaped: content ids and upstream names come from users.

use std::fmt::Write as _;
use std::time::Duration;

use indicatif::HumanBytes;

use crate::dataplane::status::{ContentStatus, FillStatus, RequestRate, Status, CONTENTS_SHOWN_MAX};

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:70em}\
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
table{border-collapse:collapse}td,th{padding:.2em .8em .2em 0;text-align:left;vertical-align:top}\
th{font-weight:600;color:#555}#sources{margin-top:.8em}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.bad{color:#b00020;font-weight:600}.ok{color:#1b6e20}.dim{color:#777}";

/// Characters of a user-given value shown at most (ids are at most 128; names and errors vary).
const SHOWN_CHARS_MAX: usize = 200;

/// `text` made safe inside HTML or XML text and attribute values (cut to [`SHOWN_CHARS_MAX`]).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars().take(SHOWN_CHARS_MAX) {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Bytes as a person reads them ("1.50 MiB").
fn bytes(count: u64) -> String {
    HumanBytes(count).to_string()
}

/// The whole page.
pub fn render(status: &Status) -> String {
    let mut out = String::with_capacity(8192);
    let title = format!("tessera {} · {}", escape(&status.version), escape(&status.role));
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title>\
         <style>{STYLE}</style></head><body>\n<h1>{title}</h1>\n"
    );
    overview(&mut out, status);
    let _ = writeln!(out, "<h2>Requests per second, last {} minutes</h2>", rate_minutes(&status.request_rate));
    out.push_str(&rate_svg(&status.request_rate));
    store(&mut out, status);
    contents(&mut out, status);
    if let Some(fill) = &status.fill {
        upstream(&mut out, fill);
    }
    out.push_str(
        "<p class=\"dim\">The same as JSON: <a href=\"/status.json\">/status.json</a> \
         · Prometheus: <a href=\"/metrics\">/metrics</a></p>\n</body></html>\n",
    );
    out
}

fn rate_minutes(rate: &RequestRate) -> u64 {
    (rate.period_s * rate.counts.len() as u64).div_ceil(60)
}

/// Writes a two-column table of (label, value) rows; values are already escaped.
fn table(out: &mut String, id: &str, rows: &[(&str, String)]) {
    let _ = writeln!(out, "<table id=\"{id}\">");
    for (label, value) in rows {
        let _ = writeln!(out, "<tr><th>{label}</th><td>{value}</td></tr>");
    }
    out.push_str("</table>\n");
}

fn overview(out: &mut String, status: &Status) {
    let cache = &status.cache;
    let asked = cache.hits + cache.misses;
    let hit_ratio =
        if asked == 0 { String::new() } else { format!(" ({:.1} % hits)", cache.hits as f64 * 100.0 / asked as f64) };
    let bans = if status.bans_in_force > 0 {
        format!("<span class=\"bad\">{}</span>", status.bans_in_force)
    } else {
        "0".to_string()
    };
    let mut rows = vec![
        ("Version", escape(&status.version)),
        ("Uptime", humantime::format_duration(Duration::from_secs(status.uptime_s)).to_string()),
        ("Backend", format!("{} · {} workers", escape(&status.backend), status.workers)),
        ("Connections open", status.connections_open.to_string()),
        ("Requests", status.requests_total.to_string()),
        ("Bytes served", format!("{} ({} bytes)", bytes(status.bytes_sent_total), status.bytes_sent_total)),
        ("Hits · misses", format!("{} · {}{hit_ratio}", cache.hits, cache.misses)),
        (
            "Bytes from the store",
            format!("{} for hits · {} for misses", bytes(cache.hit_bytes), bytes(cache.miss_bytes)),
        ),
        ("Bans in force", bans),
    ];
    if let Some(fill) = &status.fill {
        rows.push(("Fills in flight", format!("{} ({} pieces)", fill.fills_in_flight, fill.pieces_in_flight)));
    }
    table(out, "overview", &rows);
}

fn store(out: &mut String, status: &Status) {
    let store = &status.store;
    let used = if store.size_bytes_max == 0 {
        String::new()
    } else {
        format!(" ({:.1} %)", store.slab_bytes as f64 * 100.0 / store.size_bytes_max as f64)
    };
    out.push_str("<h2>Store</h2>\n");
    let rows = [
        ("Pieces", format!("{} ({})", store.pieces, bytes(store.piece_bytes))),
        ("Slab files", format!("{} of {}{used}", bytes(store.slab_bytes), bytes(store.size_bytes_max))),
        ("Age limit", humantime::format_duration(Duration::from_secs(store.age_s_max)).to_string()),
        ("Evictions", store.evictions_total.to_string()),
    ];
    table(out, "store", &rows);
}

fn contents(out: &mut String, status: &Status) {
    let _ = writeln!(out, "<h2>Contents ({})</h2>", status.contents_total);
    if status.contents.is_empty() {
        out.push_str("<p class=\"dim\">None in the catalog.</p>\n");
        return;
    }
    out.push_str("<table id=\"contents\"><tr><th>Id</th><th>Length</th><th>Pieces held</th><th>Bytes held</th></tr>\n");
    for content in &status.contents {
        content_row(out, content);
    }
    out.push_str("</table>\n");
    if status.contents_total > status.contents.len() {
        let _ = writeln!(
            out,
            "<p class=\"dim\">{} of {} catalog entries shown: the first {CONTENTS_SHOWN_MAX} by id, \
             without those whose metadata does not verify (not served).</p>",
            status.contents.len(),
            status.contents_total
        );
    }
}

fn content_row(out: &mut String, content: &ContentStatus) {
    let complete = if content.pieces_held == content.pieces { "ok" } else { "dim" };
    let _ = writeln!(
        out,
        "<tr><td>{}</td><td class=\"n\" title=\"{} bytes\">{}</td>\
         <td class=\"n {complete}\">{} of {}</td><td class=\"n\" title=\"{} bytes\">{}</td></tr>",
        escape(&content.id),
        content.length_bytes,
        bytes(content.length_bytes),
        content.pieces_held,
        content.pieces,
        content.bytes_held,
        bytes(content.bytes_held),
    );
}

fn upstream(out: &mut String, fill: &FillStatus) {
    let now_s = crate::dataplane::status::unix_now_s();
    let ago = |at: u64| humantime::format_duration(Duration::from_secs(now_s.saturating_sub(at))).to_string();
    let service = &fill.service;
    let health = match service.reachable() {
        None => "<span class=\"dim\">not asked yet</span>".to_string(),
        Some(true) => format!(
            "<span class=\"ok\">answering</span> (last answer {} ago)",
            ago(service.last_answer_unix_s.unwrap_or(now_s))
        ),
        Some(false) => format!(
            "<span class=\"bad\">failing</span> ({} ago: {})",
            ago(service.last_failure_unix_s.unwrap_or(now_s)),
            escape(service.last_failure.as_deref().unwrap_or("")),
        ),
    };
    out.push_str("<h2>Upstream</h2>\n");
    let rows = [
        ("Metadata service", escape(&fill.service_url)),
        ("Service health", health),
        ("Piece fetches in flight", fill.pieces_in_flight.to_string()),
        ("Requests waiting", fill.waiters.to_string()),
        ("Bans in force · ever", format!("{} · {}", fill.bans_in_force, fill.bans_total)),
    ];
    table(out, "upstream", &rows);
    if fill.sources.is_empty() {
        return;
    }
    out.push_str(
        "<table id=\"sources\"><tr><th>Source</th><th>Verified bytes</th><th>Bad pieces</th><th>State</th></tr>\n",
    );
    for source in &fill.sources {
        let state =
            if source.banned { "<span class=\"bad\">banned</span>" } else { "<span class=\"ok\">in use</span>" };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{state}</td></tr>",
            escape(&source.name),
            bytes(source.bytes),
            source.bad_pieces,
        );
    }
    out.push_str("</table>\n");
}

const SVG_WIDTH: u64 = 720;
const SVG_HEIGHT: u64 = 120;
/// Room under the bars for the time labels.
const SVG_AXIS: u64 = 16;

/// The request rate as an inline SVG bar chart: one bar per period, the latest on the right.
pub fn rate_svg(rate: &RequestRate) -> String {
    let period_s = rate.period_s.max(1);
    let periods = rate.counts.len().max(1) as u64;
    let peak = rate.counts.iter().copied().max().unwrap_or(0);
    let plot = SVG_HEIGHT - SVG_AXIS;
    let bar = SVG_WIDTH / periods;
    let peak_per_s = peak as f64 / period_s as f64;
    let mut out = String::with_capacity(4096);
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"rate\" width=\"{SVG_WIDTH}\" height=\"{SVG_HEIGHT}\" \
         viewBox=\"0 0 {SVG_WIDTH} {SVG_HEIGHT}\" role=\"img\" aria-label=\"requests per second, peak {peak_per_s:.1}\">"
    );
    let _ = writeln!(out, "<rect x=\"0\" y=\"0\" width=\"{SVG_WIDTH}\" height=\"{plot}\" fill=\"#f4f6f8\"/>");
    for (at, &count) in rate.counts.iter().enumerate() {
        let height = if peak == 0 { 0 } else { (count * (plot - 4)).div_ceil(peak) };
        let x = at as u64 * bar;
        let ago_s = (periods - 1 - at as u64) * period_s;
        let per_s = count as f64 / period_s as f64;
        let _ = writeln!(
            out,
            "<rect x=\"{x}\" y=\"{}\" width=\"{}\" height=\"{height}\" fill=\"#3b73b9\"><title>{per_s:.1}/s, {ago_s} s ago</title></rect>",
            plot - height,
            bar.saturating_sub(1).max(1),
        );
    }
    let minutes = (periods * period_s).div_ceil(60);
    let _ = writeln!(
        out,
        "<text x=\"2\" y=\"{}\" font-size=\"11\" fill=\"#555\">{minutes} min ago</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"#555\" text-anchor=\"end\">now · peak {peak_per_s:.1}/s</text>",
        SVG_HEIGHT - 3,
        SVG_WIDTH - 2,
        SVG_HEIGHT - 3,
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::status::example::status;

    #[test]
    fn every_user_given_value_is_escaped() {
        let page = render(&status("<script>alert(1)</script>&x"));
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;&amp;x"), "{page}");
        assert!(page.contains("evil&quot;&lt;peer&gt;") && page.contains("refused &lt;x&gt;"), "{page}");
        assert_eq!(escape("a\u{7}'b"), "a &#39;b");
        assert_eq!(escape(&"x".repeat(500)).len(), SHOWN_CHARS_MAX);
    }

    #[test]
    fn the_page_shows_the_numbers_and_needs_nothing_else() {
        let page = render(&status("pkg-1"));
        for shown in ["pkg-1", "2 of 3", "12345", "30 · 10 (75.0 % hits)", "1h 2m 3s", "uring · 2 workers", "banned"]
        {
            assert!(page.contains(shown), "{shown:?} missing from\n{page}");
        }
        for external in ["<script", "src=", "<link", "@import", "url("] {
            assert!(!page.contains(external), "{external:?} in\n{page}");
        }
    }

    #[test]
    fn the_rate_chart_is_well_formed_svg_with_a_bar_per_period() {
        let rate = RequestRate { period_s: 10, counts: (0..36).map(|i| i * 3).collect() };
        let svg = rate_svg(&rate);
        let document = roxmltree::Document::parse(&svg).expect("well-formed XML");
        let root = document.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        let bars: Vec<_> = root.children().filter(|n| n.has_tag_name("rect")).skip(1).collect();
        assert_eq!(bars.len(), 36);
        let heights: Vec<u64> = bars.iter().map(|bar| bar.attribute("height").unwrap().parse().unwrap()).collect();
        assert_eq!(heights[0], 0);
        assert_eq!(heights[35], SVG_HEIGHT - SVG_AXIS - 4, "the peak fills the plot");
        assert!(heights.windows(2).all(|pair| pair[0] <= pair[1]), "{heights:?}");
        let empty = rate_svg(&RequestRate { period_s: 10, counts: vec![0; 36] });
        roxmltree::Document::parse(&empty).expect("an idle chart is well-formed too");
        // The page embeds the chart as it is.
        assert!(render(&status("a")).contains(&svg));
    }
}

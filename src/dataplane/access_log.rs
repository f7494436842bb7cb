//! The optional access log: one line per request in nginx's "combined" format followed by the
//! request time, so the tools that read nginx logs read these.
//!
//! ```text
//! 127.0.0.1 - - [28/Nov/2026:13:15:39 +0000] "GET /v1/content/a HTTP/1.1" 200 1048576 "-" "curl/8.5.0" 0.000
//! ```
//!
//! Each worker formats its lines into its own buffer ([`AccessLog`]) and writes the buffer with
//! one `write` call at the end of its loop turn, or sooner when the buffer reaches
//! `[log] access_log_buffer_bytes`: a request costs a formatted line in memory, never a disk
//! wait of its own. Workers share the file, opened with `O_APPEND`, so whole buffers (whole
//! lines) never interleave. A write that fails drops the buffer and is logged once per failure
//! streak: the access log never holds a worker up.
//!
//! The request time runs from the request's head being parsed to its response being ready (for
//! a response that waits on a fill, until the fill answered); nginx's also counts the sending.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::http::{Method, Request, Version};

/// Where access-log lines go: a file opened for appending, or stdout.
#[derive(Debug)]
pub enum AccessLogFile {
    File { path: PathBuf, file: File },
    Stdout,
}

impl AccessLogFile {
    /// Opens `path` for appending (creating it), or stdout for `-`.
    pub fn open(path: &Path) -> std::io::Result<AccessLogFile> {
        if path == Path::new("-") {
            return Ok(AccessLogFile::Stdout);
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(AccessLogFile::File { path: path.to_path_buf(), file })
    }

    fn write_all(&self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            AccessLogFile::File { file, .. } => (&*file).write_all(bytes),
            AccessLogFile::Stdout => std::io::stdout().lock().write_all(bytes),
        }
    }

    fn name(&self) -> String {
        match self {
            AccessLogFile::File { path, .. } => path.display().to_string(),
            AccessLogFile::Stdout => "stdout".into(),
        }
    }
}

/// One request as the access log records it.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// The client's address (`-` when unknown).
    pub remote: Option<SocketAddr>,
    /// The request (`"-"` for one refused before it parsed).
    pub request: Option<&'a Request>,
    pub status: u16,
    /// Body bytes of the response.
    pub body_bytes: u64,
    pub request_time: Duration,
}

/// A worker's buffered access log.
pub struct AccessLog {
    file: Arc<AccessLogFile>,
    buffer: Vec<u8>,
    buffer_bytes_max: usize,
    /// The `[dd/Mon/yyyy:hh:mm:ss +0000]` of `time_s`, formatted once per second.
    time_s: u64,
    time: String,
    failing: bool,
}

impl AccessLog {
    /// A worker's buffer in front of the shared `file`.
    pub fn new(file: Arc<AccessLogFile>, buffer_bytes_max: usize) -> AccessLog {
        let buffer_bytes_max = buffer_bytes_max.max(1);
        AccessLog {
            file,
            buffer: Vec::with_capacity(buffer_bytes_max.min(1 << 20)),
            buffer_bytes_max,
            time_s: u64::MAX,
            time: String::new(),
            failing: false,
        }
    }

    /// Records one request at wall-clock second `now_s`; writes the buffer if it is full.
    pub fn record(&mut self, entry: &Entry<'_>, now_s: u64) {
        if now_s != self.time_s {
            self.time_s = now_s;
            self.time = format_time(now_s);
        }
        write_combined(&mut self.buffer, entry, &self.time);
        if self.buffer.len() >= self.buffer_bytes_max {
            self.flush();
        }
    }

    /// Writes what is buffered (the driver calls this at the end of every loop turn).
    pub fn flush(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        match self.file.write_all(&self.buffer) {
            Ok(()) => self.failing = false,
            Err(error) => {
                if !self.failing {
                    tracing::warn!(%error, file = %self.file.name(), "cannot write the access log; lines are dropped");
                }
                self.failing = true;
            }
        }
        self.buffer.clear();
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Appends one line: `ADDR - - [TIME] "REQUEST" STATUS BYTES "REFERER" "AGENT" SECONDS`.
pub fn write_combined(out: &mut Vec<u8>, entry: &Entry<'_>, time: &str) {
    use std::io::Write as _;
    match entry.remote {
        Some(remote) => {
            let _ = write!(out, "{}", remote.ip());
        }
        None => out.push(b'-'),
    }
    let _ = write!(out, " - - {time} \"");
    match entry.request {
        Some(request) => {
            escaped(out, method_name(request));
            out.push(b' ');
            escaped(out, &request.target);
            out.extend_from_slice(if request.version == Version::Http10 { b" HTTP/1.0" } else { b" HTTP/1.1" });
        }
        None => out.push(b'-'),
    }
    let _ = write!(out, "\" {} {} \"", entry.status, entry.body_bytes);
    let fields = entry.request.and_then(|request| request.log_fields.as_deref());
    escaped(out, fields.and_then(|f| f.referer.as_deref()).unwrap_or("-"));
    out.extend_from_slice(b"\" \"");
    escaped(out, fields.and_then(|f| f.user_agent.as_deref()).unwrap_or("-"));
    let millis = entry.request_time.as_millis();
    let _ = writeln!(out, "\" {}.{:03}", millis / 1000, millis % 1000);
}

fn method_name(request: &Request) -> &'static str {
    match request.method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Other => "OTHER",
    }
}

/// Copies `text`, writing `"`, `\` and bytes outside printable ASCII as `\xHH` (as nginx does),
/// so a field can neither end its quotes nor forge a line.
fn escaped(out: &mut Vec<u8>, text: &str) {
    for &byte in text.as_bytes() {
        if byte == b'"' || byte == b'\\' || !(0x20..0x7f).contains(&byte) {
            out.extend_from_slice(format!("\\x{byte:02X}").as_bytes());
        } else {
            out.push(byte);
        }
    }
}

/// `[28/Nov/2026:13:15:39 +0000]` for Unix second `unix_s` (UTC).
pub fn format_time(unix_s: u64) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (days, second_of_day) = (unix_s / 86_400, unix_s % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    let (hour, minute, second) = (second_of_day / 3600, second_of_day / 60 % 60, second_of_day % 60);
    format!("[{day:02}/{}/{year}:{hour:02}:{minute:02}:{second:02} +0000]", MONTHS[month as usize - 1])
}

/// Year, month (1..=12) and day of `days` since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 } as u32;
    (year_of_era + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_request, Parsed, RequestLimits};

    fn request(text: &str) -> Request {
        let limits = RequestLimits { log_fields: true, ..RequestLimits::default() };
        match parse_request(text.as_bytes(), &limits).unwrap() {
            Parsed::Complete { request, .. } => request,
            Parsed::Partial => panic!("partial"),
        }
    }

    fn line(entry: &Entry<'_>) -> String {
        let mut out = Vec::new();
        write_combined(&mut out, entry, &format_time(1_795_873_539));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_request_is_one_combined_line_with_its_time() {
        let request = request(
            "GET /v1/content/a?x=1 HTTP/1.1\r\nHost: b\r\nReferer: http://r/\r\nUser-Agent: curl/8.5.0\r\n\r\n",
        );
        let entry = Entry {
            remote: Some("10.1.2.3:5555".parse().unwrap()),
            request: Some(&request),
            status: 206,
            body_bytes: 1024,
            request_time: Duration::from_micros(12_345),
        };
        assert_eq!(
            line(&entry),
            "10.1.2.3 - - [28/Nov/2026:13:45:39 +0000] \"GET /v1/content/a?x=1 HTTP/1.1\" 206 1024 \"http://r/\" \"curl/8.5.0\" 0.012\n"
        );
    }

    #[test]
    fn missing_fields_are_dashes_and_quotes_are_escaped() {
        let refused = Entry { remote: None, request: None, status: 400, body_bytes: 12, request_time: Duration::ZERO };
        assert_eq!(line(&refused), "- - - [28/Nov/2026:13:45:39 +0000] \"-\" 400 12 \"-\" \"-\" 0.000\n");
        let request = request("HEAD /x HTTP/1.0\r\nUser-Agent: a\"b\\c\r\n\r\n");
        let entry = Entry { request: Some(&request), status: 404, ..refused };
        assert!(line(&entry).contains("\"HEAD /x HTTP/1.0\" 404 12 \"-\" \"a\\x22b\\x5Cc\" 0.000"), "{}", line(&entry));
    }

    #[test]
    fn times_are_utc_calendar_dates() {
        assert_eq!(format_time(0), "[01/Jan/1970:00:00:00 +0000]");
        assert_eq!(format_time(951_782_400), "[29/Feb/2000:00:00:00 +0000]");
        assert_eq!(format_time(1_709_251_199), "[29/Feb/2024:23:59:59 +0000]");
    }

    #[test]
    fn lines_reach_the_file_at_flush_or_at_the_buffer_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let file = Arc::new(AccessLogFile::open(&path).unwrap());
        let entry = Entry { remote: None, request: None, status: 400, body_bytes: 0, request_time: Duration::ZERO };
        let mut log = AccessLog::new(file.clone(), 1 << 20);
        log.record(&entry, 0);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "", "buffered until the turn ends");
        log.flush();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        let mut small = AccessLog::new(file, 10);
        small.record(&entry, 0);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2, "a full buffer is written at once");
    }
}

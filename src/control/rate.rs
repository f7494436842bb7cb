//! Announce rate limiting: a fixed one-minute window per peer id.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Length of one rate window.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Why an announce was refused before reaching the registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("peer {peer_id} sent more than {per_minute_max} announces this minute; retry in {retry_after_s} s")]
    TooMany { peer_id: String, per_minute_max: u32, retry_after_s: u64 },
    #[error("too many peers are announcing at once ({peers_max}); retry later")]
    TooManyPeers { peers_max: usize },
}

/// Counts announces per peer id per minute, tracking at most `peers_max` peers at once.
pub struct AnnounceLimiter {
    per_minute_max: u32,
    peers_max: usize,
    windows: HashMap<String, (Instant, u32)>,
}

impl AnnounceLimiter {
    /// A limiter allowing `per_minute_max` announces per peer per minute.
    pub fn new(per_minute_max: u32, peers_max: usize) -> AnnounceLimiter {
        AnnounceLimiter { per_minute_max, peers_max, windows: HashMap::new() }
    }

    /// Counts one announce by `peer_id` at `now`, or says why it is refused.
    pub fn check(&mut self, peer_id: &str, now: Instant) -> Result<(), RateError> {
        if !self.windows.contains_key(peer_id) && self.windows.len() >= self.peers_max {
            self.windows.retain(|_, (start, _)| now.saturating_duration_since(*start) < RATE_WINDOW);
            if self.windows.len() >= self.peers_max {
                return Err(RateError::TooManyPeers { peers_max: self.peers_max });
            }
        }
        let (start, count) = self.windows.entry(peer_id.to_string()).or_insert((now, 0));
        if now.saturating_duration_since(*start) >= RATE_WINDOW {
            *start = now;
            *count = 0;
        }
        if *count >= self.per_minute_max {
            let retry_after_s = RATE_WINDOW.saturating_sub(now.saturating_duration_since(*start)).as_secs().max(1);
            return Err(RateError::TooMany {
                peer_id: peer_id.to_string(),
                per_minute_max: self.per_minute_max,
                retry_after_s,
            });
        }
        *count += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_each_peer_per_window() {
        let mut limiter = AnnounceLimiter::new(2, 10);
        let now = Instant::now();
        limiter.check("a", now).unwrap();
        limiter.check("a", now).unwrap();
        assert!(matches!(limiter.check("a", now), Err(RateError::TooMany { .. })));
        limiter.check("b", now).unwrap();
        limiter.check("a", now + RATE_WINDOW).unwrap();
    }

    #[test]
    fn bounds_the_peers_tracked() {
        let mut limiter = AnnounceLimiter::new(5, 1);
        let now = Instant::now();
        limiter.check("a", now).unwrap();
        assert_eq!(limiter.check("b", now), Err(RateError::TooManyPeers { peers_max: 1 }));
        limiter.check("b", now + RATE_WINDOW).unwrap();
    }
}

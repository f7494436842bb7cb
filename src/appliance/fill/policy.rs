//! The fill engine's source policy on a box: round robin over the sources the node-wide ban
//! policy has not banned; bad pieces and good ones are counted there.

use std::sync::{Arc, Mutex, PoisonError};

use crate::content::Digest;
use crate::download::ban::{NodeBans, Verdict};
use crate::fill::{Candidate, Outcome, Pick, RoundRobin, SourceId, SourcePolicy};

/// Source names by id, shared by the fill thread (which registers sources) and the policy.
#[derive(Debug, Clone, Default)]
pub struct SourceNames(Arc<Mutex<Vec<String>>>);

impl SourceNames {
    /// Names source `id` (ids are dense, from 0).
    pub fn set(&self, id: SourceId, name: &str) {
        let mut names = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let index = id.0 as usize;
        if names.len() <= index {
            names.resize(index + 1, String::new());
        }
        names[index] = name.to_string();
    }

    fn get(&self, id: SourceId) -> Option<String> {
        let names = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        names.get(id.0 as usize).filter(|name| !name.is_empty()).cloned()
    }
}

/// [`RoundRobin`] over the candidates [`NodeBans`] has not banned.
pub struct BannedSources {
    inner: RoundRobin,
    bans: NodeBans,
    names: SourceNames,
}

impl BannedSources {
    /// A policy consulting `bans` for the sources `names` knows.
    pub fn new(bans: NodeBans, names: SourceNames) -> BannedSources {
        BannedSources { inner: RoundRobin::default(), bans, names }
    }
}

impl SourcePolicy for BannedSources {
    fn pick(&mut self, digest: &Digest, candidates: &[Candidate], now_ms: u64) -> Pick {
        let mut open = candidates.to_vec();
        {
            let mut bans = self.bans.lock();
            for candidate in &mut open {
                if let Some(name) = self.names.get(candidate.source) {
                    candidate.excluded |= bans.is_banned(&name, now_ms);
                }
            }
        }
        self.inner.pick(digest, &open, now_ms)
    }

    fn record(&mut self, source: SourceId, outcome: Outcome, now_ms: u64) {
        self.inner.record(source, outcome, now_ms);
        let Some(name) = self.names.get(source) else { return };
        match outcome {
            Outcome::Bad => {
                let mut bans = self.bans.lock();
                if bans.record_bad(&name, now_ms) == Verdict::Banned {
                    let (bad_pieces, times) = (bans.bad_pieces(&name), bans.bans(&name));
                    tracing::warn!(source = %name, bad_pieces, bans = times, "upstream source banned: it sent bad pieces");
                }
            }
            Outcome::Good { .. } => self.bans.lock().record_good(&name),
            Outcome::Missing | Outcome::Failed => {}
        }
    }
}

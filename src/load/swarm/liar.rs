//! What a lying peer answers, without I/O: a piece request in, the bytes to send (or nothing) out.
//!
//! Each kind is a way a real peer goes wrong. A device must discard every bad piece it gets and
//! ban the peer at `ban_after_bad_pieces` (rule 4); a stalling peer is not lying, so it is timed
//! out and dropped, not banned.

use serde::Serialize;

use crate::http::response::{text_response, ResponseHead};

/// How a liar lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LieKind {
    /// The piece with one bit flipped.
    BitFlip,
    /// Another piece's bytes (the next one's) for the one asked.
    WrongPiece,
    /// The first half of the piece, with a Content-Length that matches the half.
    ShortBody,
    /// Reads requests and never answers.
    Stall,
    /// Honest for the first pieces of each connection, then bit flips: trust earned, then abused.
    GoodThenBad,
}

/// Why a kind name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown liar kind {0:?}; use {kinds}", kinds = LieKind::names())]
pub struct UnknownKind(pub String);

impl LieKind {
    /// Every kind, in the order `--liar-kinds` lists them by default.
    pub const ALL: [LieKind; 5] =
        [LieKind::BitFlip, LieKind::WrongPiece, LieKind::ShortBody, LieKind::Stall, LieKind::GoodThenBad];

    /// The kind's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            LieKind::BitFlip => "bit-flip",
            LieKind::WrongPiece => "wrong-piece",
            LieKind::ShortBody => "short-body",
            LieKind::Stall => "stall",
            LieKind::GoodThenBad => "good-then-bad",
        }
    }

    /// Every kind's name, comma-separated.
    pub fn names() -> String {
        LieKind::ALL.map(LieKind::name).join(", ")
    }

    /// The kind named `text`.
    pub fn parse(text: &str) -> Result<LieKind, UnknownKind> {
        LieKind::ALL.into_iter().find(|kind| kind.name() == text.trim()).ok_or_else(|| UnknownKind(text.to_string()))
    }

    /// Whether a device is expected to ban this liar (it sends bad pieces rather than none).
    pub fn is_banned(self) -> bool {
        self != LieKind::Stall
    }
}

/// What to do with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Send these bytes (a whole response); `lie` says whether its body is bad.
    Send { bytes: Vec<u8>, lie: bool },
    /// Send nothing, now or later: the device has to time out.
    Hold,
}

/// The bytes a liar sends for `piece` instead of the piece: `next` is the piece after it (for
/// [`LieKind::WrongPiece`]). [`LieKind::Stall`] has no body; [`LieKind::GoodThenBad`] lies with a
/// bit flip.
pub fn lie_body(kind: LieKind, piece: &[u8], next: &[u8]) -> Vec<u8> {
    match kind {
        LieKind::WrongPiece => next.to_vec(),
        LieKind::ShortBody => piece[..piece.len() / 2].to_vec(),
        LieKind::BitFlip | LieKind::GoodThenBad | LieKind::Stall => {
            let mut flipped = piece.to_vec();
            if let Some(byte) = flipped.get_mut(piece.len() / 2) {
                *byte ^= 0x10;
            }
            flipped
        }
    }
}

/// The answer of a `kind` liar to a request for `piece` (whose successor is `next`), on a
/// connection that has answered `answered_before` pieces; a good-then-bad liar is honest for
/// `honest_pieces` of them.
pub fn answer(kind: LieKind, piece: &[u8], next: &[u8], answered_before: u64, honest_pieces: u64) -> Answer {
    let honest = kind == LieKind::GoodThenBad && answered_before < honest_pieces;
    if kind == LieKind::Stall {
        return Answer::Hold;
    }
    let body = if honest { piece.to_vec() } else { lie_body(kind, piece, next) };
    Answer::Send { bytes: with_head(&body), lie: !honest }
}

/// A 200 response carrying `body`.
fn with_head(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 128);
    let head = ResponseHead {
        status: 200,
        content_length: body.len() as u64,
        content_type: "application/octet-stream",
        content_range: None,
        keep_alive: true,
        extra: &[],
    };
    head.write_to(&mut out);
    out.extend_from_slice(body);
    out
}

/// The answer to a request that is not for a piece of the liar's content.
pub fn not_found() -> Vec<u8> {
    text_response(404, "no such piece\n", true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::sha256;

    fn body(answer: &Answer) -> (&[u8], bool) {
        let Answer::Send { bytes, lie } = answer else { panic!("held: {answer:?}") };
        let split = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = std::str::from_utf8(&bytes[..split]).unwrap();
        assert!(head.contains(&format!("Content-Length: {}\r\n", bytes.len() - split)), "{head}");
        (&bytes[split..], *lie)
    }

    #[test]
    fn every_lying_kind_sends_bytes_whose_digest_is_not_the_pieces() {
        let (piece, next) = (vec![7u8; 1000], vec![9u8; 1000]);
        for kind in [LieKind::BitFlip, LieKind::WrongPiece, LieKind::ShortBody, LieKind::GoodThenBad] {
            let answer = answer(kind, &piece, &next, 100, 4);
            let (sent, lie) = body(&answer);
            assert!(lie, "{kind:?}");
            assert_ne!(sha256(sent), sha256(&piece), "{kind:?} sent the true piece");
        }
        assert_eq!(body(&answer(LieKind::WrongPiece, &piece, &next, 0, 0)).0, &next[..]);
        assert_eq!(body(&answer(LieKind::ShortBody, &piece, &next, 0, 0)).0.len(), 500);
    }

    #[test]
    fn good_then_bad_is_honest_for_its_first_pieces_only() {
        let (piece, next) = (b"piece bytes".to_vec(), b"other bytes".to_vec());
        for answered in 0..3 {
            assert_eq!(body(&answer(LieKind::GoodThenBad, &piece, &next, answered, 3)), (&piece[..], false));
        }
        assert!(body(&answer(LieKind::GoodThenBad, &piece, &next, 3, 3)).1, "the fourth piece is a lie");
    }

    #[test]
    fn a_stalling_liar_holds_and_is_not_expected_to_be_banned() {
        assert_eq!(answer(LieKind::Stall, b"x", b"y", 0, 0), Answer::Hold);
        assert!(!LieKind::Stall.is_banned() && LieKind::ShortBody.is_banned());
    }

    #[test]
    fn kinds_parse_by_name_and_an_unknown_one_is_named_in_the_error() {
        for kind in LieKind::ALL {
            assert_eq!(LieKind::parse(kind.name()), Ok(kind));
        }
        let error = LieKind::parse("bit-flop").unwrap_err().to_string();
        assert!(error.contains("\"bit-flop\"") && error.contains("good-then-bad"), "{error}");
    }
}

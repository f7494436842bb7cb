//! Piece sizes: powers of two from 64 KiB to 16 MiB.

use std::fmt;

/// Smallest piece size, in bytes.
pub const PIECE_SIZE_BYTES_MIN: u32 = 64 * 1024;
/// Largest piece size, in bytes.
pub const PIECE_SIZE_BYTES_MAX: u32 = 16 * 1024 * 1024;

/// Why a number is not a piece size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PieceSizeError {
    #[error("piece size {0} is not a power of two")]
    NotPowerOfTwo(u64),
    #[error("piece size {0} is outside 64 KiB..=16 MiB")]
    OutOfRange(u64),
    #[error("piece size {0:?} is not a number of bytes (try 1048576, 1M or 1MiB)")]
    Unreadable(String),
}

/// A valid piece size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PieceSize(u32);

impl PieceSize {
    /// The default piece size, 1 MiB.
    pub const DEFAULT: PieceSize = PieceSize(1024 * 1024);

    /// Validates a piece size in bytes.
    pub fn new(bytes: u32) -> Result<Self, PieceSizeError> {
        Self::from_u64(u64::from(bytes))
    }

    fn from_u64(bytes: u64) -> Result<Self, PieceSizeError> {
        if !(u64::from(PIECE_SIZE_BYTES_MIN)..=u64::from(PIECE_SIZE_BYTES_MAX)).contains(&bytes) {
            return Err(PieceSizeError::OutOfRange(bytes));
        }
        if !bytes.is_power_of_two() {
            return Err(PieceSizeError::NotPowerOfTwo(bytes));
        }
        Ok(PieceSize(bytes as u32))
    }

    /// Parses `1048576`, `1M`, `1MiB`, `64K`, `64KiB`.
    pub fn parse(text: &str) -> Result<Self, PieceSizeError> {
        let unreadable = || PieceSizeError::Unreadable(text.to_string());
        let trimmed = text.trim();
        let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
        let (digits, unit) = trimmed.split_at(split);
        let number: u64 = digits.parse().map_err(|_| unreadable())?;
        let multiplier = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" | "kb" => 1024,
            "m" | "mib" | "mb" => 1024 * 1024,
            _ => return Err(unreadable()),
        };
        Self::from_u64(number.checked_mul(multiplier).ok_or_else(unreadable)?)
    }

    /// The size in bytes.
    pub fn bytes(self) -> u32 {
        self.0
    }

    /// log2 of the size: 16..=24.
    pub fn log2(self) -> u8 {
        self.0.trailing_zeros() as u8
    }

    /// Number of pieces in content of `content_length` bytes.
    pub fn piece_count(self, content_length: u64) -> u64 {
        content_length.div_ceil(u64::from(self.0))
    }

    /// Length of piece `index` of content of `content_length` bytes, if that piece exists.
    pub fn piece_length(self, content_length: u64, index: u64) -> Option<u32> {
        let start = index.checked_mul(u64::from(self.0))?;
        if start >= content_length {
            return None;
        }
        Some((content_length - start).min(u64::from(self.0)) as u32)
    }
}

impl Default for PieceSize {
    fn default() -> Self {
        PieceSize::DEFAULT
    }
}

impl fmt::Display for PieceSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_powers_of_two_in_range() {
        assert_eq!(PieceSize::parse("1M").unwrap(), PieceSize::DEFAULT);
        assert_eq!(PieceSize::parse("64KiB").unwrap().bytes(), 65536);
        assert_eq!(PieceSize::parse("16777216").unwrap().log2(), 24);
    }

    #[test]
    fn rejects_bad_sizes() {
        assert_eq!(PieceSize::parse("32K"), Err(PieceSizeError::OutOfRange(32768)));
        assert_eq!(PieceSize::parse("32M"), Err(PieceSizeError::OutOfRange(32 << 20)));
        assert_eq!(PieceSize::new(65536 * 3), Err(PieceSizeError::NotPowerOfTwo(65536 * 3)));
        assert!(matches!(PieceSize::parse("lots"), Err(PieceSizeError::Unreadable(_))));
        assert!(matches!(PieceSize::parse("1G"), Err(PieceSizeError::Unreadable(_))));
    }

    #[test]
    fn counts_and_lengths() {
        let size = PieceSize::new(65536).unwrap();
        assert_eq!(size.piece_count(0), 0);
        assert_eq!(size.piece_count(1), 1);
        assert_eq!(size.piece_count(65536), 1);
        assert_eq!(size.piece_count(65537), 2);
        assert_eq!(size.piece_length(65537, 1), Some(1));
        assert_eq!(size.piece_length(65537, 2), None);
        assert_eq!(size.piece_length(u64::MAX, u64::MAX), None);
    }
}

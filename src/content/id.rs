//! Content identifiers: the only user-supplied string that ever names files in the store.

use std::fmt;

/// Longest accepted content id, in bytes.
pub const CONTENT_ID_LENGTH_MAX: usize = 128;

/// Why a string is not a content id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentIdError {
    #[error("content id is empty")]
    Empty,
    #[error("content id {shown:?} is {length} bytes long; the limit is {CONTENT_ID_LENGTH_MAX}")]
    TooLong { shown: String, length: usize },
    #[error("content id {shown:?} has {character:?}; only A-Z a-z 0-9 . _ - are allowed")]
    BadCharacter { shown: String, character: char },
    #[error("content id {0:?} is reserved (\".\" and \"..\" name directories)")]
    Reserved(String),
}

/// A validated content id: `[A-Za-z0-9._-]{1,128}`, never `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId(String);

impl ContentId {
    /// Validates `text` as a content id.
    pub fn parse(text: &str) -> Result<Self, ContentIdError> {
        // Show at most a prefix of hostile input in error messages.
        let shown = || text.chars().take(40).collect::<String>();
        if text.is_empty() {
            return Err(ContentIdError::Empty);
        }
        if text.len() > CONTENT_ID_LENGTH_MAX {
            return Err(ContentIdError::TooLong { shown: format!("{}…", shown()), length: text.len() });
        }
        if let Some(character) = text.chars().find(|c| !is_id_char(*c)) {
            return Err(ContentIdError::BadCharacter { shown: shown(), character });
        }
        if text == "." || text == ".." {
            return Err(ContentIdError::Reserved(text.to_string()));
        }
        Ok(ContentId(text.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-'
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for ContentId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for ContentId {
    type Err = ContentIdError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ContentId::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_allowed_alphabet() {
        for ok in ["a", "Z9", "pkg-1.2.3_x86", "...x", "..a", &"x".repeat(128)] {
            assert_eq!(ContentId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_each_bad_form_with_its_own_error() {
        assert_eq!(ContentId::parse(""), Err(ContentIdError::Empty));
        assert!(matches!(ContentId::parse(&"x".repeat(129)), Err(ContentIdError::TooLong { length: 129, .. })));
        assert!(matches!(ContentId::parse("a/b"), Err(ContentIdError::BadCharacter { character: '/', .. })));
        assert!(matches!(ContentId::parse("%2e%2e"), Err(ContentIdError::BadCharacter { character: '%', .. })));
        assert!(matches!(ContentId::parse("é"), Err(ContentIdError::BadCharacter { .. })));
        assert!(matches!(ContentId::parse("a b"), Err(ContentIdError::BadCharacter { character: ' ', .. })));
        assert_eq!(ContentId::parse(".."), Err(ContentIdError::Reserved("..".into())));
        assert_eq!(ContentId::parse("."), Err(ContentIdError::Reserved(".".into())));
    }

    #[test]
    fn error_names_the_bad_id() {
        let message = ContentId::parse("evil/../id").unwrap_err().to_string();
        assert!(message.contains("evil/../id"), "{message}");
    }
}

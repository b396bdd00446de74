//! The delimiters a message declares in MSH-1 and MSH-2.
//!
//! HL7 v2 lets every message choose its own separators. Messages almost always
//! use `|^~\&` (and `#` as the truncation character from 2.7), but a parser
//! must read whatever MSH-1 and MSH-2 say. Old or sloppy senders sometimes omit
//! trailing encoding characters (`MSH|^~\|`); a missing delimiter is stored as
//! the field separator itself, a byte that by construction never occurs inside
//! a field, so the splitting code needs no special case for it.

use std::fmt;

/// The separators and escape character of one message (MSH-1 and MSH-2).
///
/// ```
/// use hl7v2::Delimiters;
/// let d = Delimiters::default();
/// assert_eq!(d.field(), b'|');
/// assert_eq!(d.component(), b'^');
/// assert_eq!(d.repetition(), Some(b'~'));
/// assert_eq!(d.escape(), Some(b'\\'));
/// assert_eq!(d.subcomponent(), Some(b'&'));
/// assert_eq!(d.truncation(), None);
/// assert_eq!(d.encoding_characters(), b"^~\\&");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Delimiters {
    pub(crate) field: u8,
    pub(crate) component: u8,
    // Missing delimiters hold `field` (see the module docs).
    pub(crate) repetition: u8,
    pub(crate) escape: u8,
    pub(crate) subcomponent: u8,
    pub(crate) truncation: u8,
}

impl Default for Delimiters {
    fn default() -> Self {
        Delimiters {
            field: b'|',
            component: b'^',
            repetition: b'~',
            escape: b'\\',
            subcomponent: b'&',
            truncation: b'|',
        }
    }
}

impl fmt::Debug for Delimiters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        s.push(self.field as char);
        s.push_str(&String::from_utf8_lossy(&self.encoding_characters()));
        write!(f, "Delimiters({s:?})")
    }
}

/// Why a set of delimiters was refused.
///
/// ```
/// use hl7v2::{DelimiterError, Delimiters};
/// assert_eq!(Delimiters::new(b'|', b'^', b'~', b'\\', b'^'), Err(DelimiterError::Duplicate));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DelimiterError {
    /// MSH-2 is empty: at least the component separator is required.
    #[error("MSH-2 declares no encoding characters")]
    Missing,
    /// MSH-2 has more than five characters.
    #[error("MSH-2 declares more than five encoding characters")]
    TooMany,
    /// A delimiter is a letter, digit, space, control character or non-ASCII.
    #[error("a delimiter is not a printable ASCII punctuation character")]
    NotPunctuation,
    /// Two delimiters are the same character.
    #[error("two delimiters are the same character")]
    Duplicate,
}

fn usable(b: u8) -> bool {
    b.is_ascii_punctuation()
}

impl Delimiters {
    /// Builds a set of delimiters, checking that they are distinct printable
    /// ASCII punctuation.
    ///
    /// ```
    /// use hl7v2::Delimiters;
    /// let d = Delimiters::new(b'|', b'^', b'~', b'\\', b'&').unwrap();
    /// assert_eq!(d, Delimiters::default());
    /// assert!(Delimiters::new(b'|', b'|', b'~', b'\\', b'&').is_err());
    /// ```
    pub fn new(field: u8, component: u8, repetition: u8, escape: u8, subcomponent: u8) -> Result<Self, DelimiterError> {
        Self::from_parts(field, &[component, repetition, escape, subcomponent])
    }

    /// The same delimiters with a truncation character (MSH-2's fifth
    /// character, HL7 2.7 and later; usually `#`).
    ///
    /// ```
    /// use hl7v2::Delimiters;
    /// let d = Delimiters::default().with_truncation(b'#').unwrap();
    /// assert_eq!(d.encoding_characters(), b"^~\\&#");
    /// ```
    pub fn with_truncation(self, truncation: u8) -> Result<Self, DelimiterError> {
        let mut chars = self.encoding_characters();
        if chars.len() < 4 {
            return Err(DelimiterError::Missing);
        }
        chars.truncate(4);
        chars.push(truncation);
        Self::from_parts(self.field, &chars)
    }

    /// Reads MSH-1 (`field`) and MSH-2 (`encoding`, 1 to 5 characters in the
    /// order component, repetition, escape, sub-component, truncation).
    pub(crate) fn from_parts(field: u8, encoding: &[u8]) -> Result<Self, DelimiterError> {
        if encoding.is_empty() {
            return Err(DelimiterError::Missing);
        }
        if encoding.len() > 5 {
            return Err(DelimiterError::TooMany);
        }
        if !usable(field) || !encoding.iter().all(|&b| usable(b)) {
            return Err(DelimiterError::NotPunctuation);
        }
        for (i, &a) in encoding.iter().enumerate() {
            if a == field || encoding[i + 1..].contains(&a) {
                return Err(DelimiterError::Duplicate);
            }
        }
        let at = |i: usize| encoding.get(i).copied().unwrap_or(field);
        Ok(Delimiters {
            field,
            component: at(0),
            repetition: at(1),
            escape: at(2),
            subcomponent: at(3),
            truncation: at(4),
        })
    }

    fn present(&self, b: u8) -> Option<u8> {
        (b != self.field).then_some(b)
    }

    /// The field separator (MSH-1).
    pub fn field(&self) -> u8 {
        self.field
    }
    /// The component separator (first character of MSH-2).
    pub fn component(&self) -> u8 {
        self.component
    }
    /// The repetition separator, if MSH-2 declares one.
    pub fn repetition(&self) -> Option<u8> {
        self.present(self.repetition)
    }
    /// The escape character, if MSH-2 declares one.
    pub fn escape(&self) -> Option<u8> {
        self.present(self.escape)
    }
    /// The sub-component separator, if MSH-2 declares one.
    pub fn subcomponent(&self) -> Option<u8> {
        self.present(self.subcomponent)
    }
    /// The truncation character (HL7 2.7+), if MSH-2 declares one.
    pub fn truncation(&self) -> Option<u8> {
        self.present(self.truncation)
    }

    /// MSH-2 as it is written: the encoding characters that are declared.
    pub fn encoding_characters(&self) -> Vec<u8> {
        [self.repetition, self.escape, self.subcomponent, self.truncation]
            .iter()
            .take_while(|&&b| b != self.field)
            .fold(vec![self.component], |mut v, &b| {
                v.push(b);
                v
            })
    }

    /// Delimiters under which nothing splits and nothing is an escape: used for
    /// MSH-1 and MSH-2, whose bytes are the delimiters themselves.
    pub(crate) fn opaque(&self) -> Delimiters {
        Delimiters {
            field: self.field,
            component: self.field,
            repetition: self.field,
            escape: self.field,
            subcomponent: self.field,
            truncation: self.field,
        }
    }

    /// Whether `b` is any declared delimiter or the escape character.
    pub(crate) fn is_special(&self, b: u8) -> bool {
        b == self.field
            || b == self.component
            || b == self.repetition
            || b == self.escape
            || b == self.subcomponent
            || b == self.truncation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_encoding_characters_leave_the_rest_absent() {
        let d = Delimiters::from_parts(b'|', b"^~").unwrap();
        assert_eq!(d.repetition(), Some(b'~'));
        assert_eq!(d.escape(), None);
        assert_eq!(d.subcomponent(), None);
        assert_eq!(d.encoding_characters(), b"^~");
    }

    #[test]
    fn refuses_letters_duplicates_and_control_characters() {
        assert_eq!(Delimiters::from_parts(b'|', b"^~A&"), Err(DelimiterError::NotPunctuation));
        assert_eq!(Delimiters::from_parts(b'|', b"^~\\^"), Err(DelimiterError::Duplicate));
        assert_eq!(Delimiters::from_parts(b'|', b"^|\\&"), Err(DelimiterError::Duplicate));
        assert_eq!(Delimiters::from_parts(b'\r', b"^~\\&"), Err(DelimiterError::NotPunctuation));
        assert_eq!(Delimiters::from_parts(b'|', b""), Err(DelimiterError::Missing));
        assert_eq!(Delimiters::from_parts(b'|', b"^~\\&#!"), Err(DelimiterError::TooMany));
    }
}

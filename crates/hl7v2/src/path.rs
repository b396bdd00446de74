//! Terser-style paths: `PID-5-1`, `PID-3(2)-4-2`, `OBX(3)-5`, `MSH-9-2`.
//!
//! A path names a node of the message tree: a segment (and which occurrence
//! of it, counted over the whole message, not within a group), a field, a
//! field repetition, a component and a sub-component, all 1-based. Parts left
//! out mean "the whole node" for raw access ([`Message::get_raw`]) and "the
//! first one" for values ([`Message::get`], [`Message::set`]), as in HAPI's
//! Terser. `.` is accepted in place of `-` (Mirth's `PID.5.1`), and a leading
//! `/` is ignored.
//!
//! [`Message::get_raw`]: crate::Message::get_raw
//! [`Message::get`]: crate::Message::get
//! [`Message::set`]: crate::Message::set

use std::fmt;
use std::str::FromStr;

/// The largest number accepted in any position of a path. Paths drive
/// padding when a value is written, so an absurd index must not turn into
/// megabytes of separators.
pub const MAX_INDEX: u32 = 9999;

/// A parsed location in a message.
///
/// ```
/// use hl7v2::Path;
/// let p: Path = "PID-3(2)-4-2".parse().unwrap();
/// assert_eq!(p.segment(), "PID");
/// assert_eq!(p.field(), 3);
/// assert_eq!(p.field_repetition(), Some(2));
/// assert_eq!(p.component(), Some(4));
/// assert_eq!(p.subcomponent(), Some(2));
/// assert_eq!(p.to_string(), "PID-3(2)-4-2");
/// assert_eq!(Path::parse("OBX(3).5").unwrap().to_string(), "OBX(3)-5");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Path {
    pub(crate) segment: [u8; 3],
    pub(crate) segment_repetition: Option<u32>,
    pub(crate) field: u32,
    pub(crate) field_repetition: Option<u32>,
    pub(crate) component: Option<u32>,
    pub(crate) subcomponent: Option<u32>,
}

/// Why a path could not be parsed.
///
/// ```
/// let e = hl7v2::Path::parse("PID-x").unwrap_err();
/// assert_eq!((e.position, e.reason), (4, "a number"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid path {path:?} at character {position}: {reason}")]
pub struct PathError {
    /// The text that was given (a path, not message data).
    pub path: String,
    /// The character position where it went wrong (0-based).
    pub position: usize,
    /// What was expected.
    pub reason: &'static str,
}

impl Path {
    /// Parses a path such as `PID-5-1` or `OBX(2)-5(1)-1-2`.
    pub fn parse(text: &str) -> Result<Path, PathError> {
        let err = |position: usize, reason: &'static str| PathError { path: text.to_owned(), position, reason };
        let bytes = text.as_bytes();
        let mut i = usize::from(bytes.first() == Some(&b'/'));
        if bytes.get(i) == Some(&b'.') && bytes.get(i + 1).is_some_and(|b| b.is_ascii_alphabetic()) {
            i += 1;
        }
        let name = bytes
            .get(i..i + 3)
            .filter(|n| is_segment_name(n))
            .ok_or_else(|| err(i, "a three-character segment name (A-Z, 0-9)"))?;
        let segment = [name[0], name[1], name[2]];
        i += 3;
        let mut numbers = [None; 5];
        // numbers: [segment rep, field, field rep, component, subcomponent]
        let mut cursor = Cursor { bytes, i };
        numbers[0] = cursor.repetition(&err)?;
        for (slot, repeats) in [(1, true), (3, false), (4, false)] {
            match cursor.bytes.get(cursor.i) {
                None => break,
                Some(b'-' | b'.') => cursor.i += 1,
                Some(_) => return Err(err(cursor.i, "'-' or the end of the path")),
            }
            numbers[slot] = Some(cursor.number(&err)?);
            if repeats {
                numbers[2] = cursor.repetition(&err)?;
            }
        }
        if cursor.i != bytes.len() {
            return Err(err(cursor.i, "the end of the path"));
        }
        let field = numbers[1].ok_or_else(|| err(bytes.len(), "'-' and a field number"))?;
        Ok(Path {
            segment,
            segment_repetition: numbers[0],
            field,
            field_repetition: numbers[2],
            component: numbers[3],
            subcomponent: numbers[4],
        })
    }

    /// A path to a field: `Path::new("PID", 5)` is `PID-5`. Returns `None`
    /// when the name is not three characters A-Z/0-9 or the field is 0 or
    /// above [`MAX_INDEX`].
    ///
    /// ```
    /// use hl7v2::Path;
    /// let p = Path::new("PID", 3).unwrap().with_repetition(2).with_component(1);
    /// assert_eq!(p.to_string(), "PID-3(2)-1");
    /// ```
    pub fn new(segment: &str, field: u32) -> Option<Path> {
        let name = segment.as_bytes();
        if !is_segment_name(name) || !(1..=MAX_INDEX).contains(&field) {
            return None;
        }
        Some(Path {
            segment: [name[0], name[1], name[2]],
            segment_repetition: None,
            field,
            field_repetition: None,
            component: None,
            subcomponent: None,
        })
    }

    /// The same path in the `n`th occurrence of the segment (clamped to
    /// 1..=[`MAX_INDEX`]).
    pub fn with_occurrence(mut self, n: u32) -> Path {
        self.segment_repetition = Some(n.clamp(1, MAX_INDEX));
        self
    }
    /// The same path in the `n`th repetition of the field (clamped).
    pub fn with_repetition(mut self, n: u32) -> Path {
        self.field_repetition = Some(n.clamp(1, MAX_INDEX));
        self
    }
    /// The same path narrowed to component `n` (clamped).
    pub fn with_component(mut self, n: u32) -> Path {
        self.component = Some(n.clamp(1, MAX_INDEX));
        self
    }
    /// The same path narrowed to sub-component `n` (clamped); implies
    /// component 1 if none was given.
    pub fn with_subcomponent(mut self, n: u32) -> Path {
        self.component.get_or_insert(1);
        self.subcomponent = Some(n.clamp(1, MAX_INDEX));
        self
    }

    /// The segment name.
    pub fn segment(&self) -> &str {
        std::str::from_utf8(&self.segment).unwrap_or_default()
    }
    /// Which occurrence of the segment, if given (`OBX(3)` gives 3).
    pub fn segment_repetition(&self) -> Option<u32> {
        self.segment_repetition
    }
    /// The field number.
    pub fn field(&self) -> u32 {
        self.field
    }
    /// The field repetition, if given.
    pub fn field_repetition(&self) -> Option<u32> {
        self.field_repetition
    }
    /// The component, if given.
    pub fn component(&self) -> Option<u32> {
        self.component
    }
    /// The sub-component, if given.
    pub fn subcomponent(&self) -> Option<u32> {
        self.subcomponent
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn number(&mut self, err: &dyn Fn(usize, &'static str) -> PathError) -> Result<u32, PathError> {
        let start = self.i;
        let mut n: u32 = 0;
        while let Some(d) = self.bytes.get(self.i).filter(|b| b.is_ascii_digit()) {
            n = n.saturating_mul(10).saturating_add(u32::from(d - b'0'));
            self.i += 1;
        }
        if self.i == start {
            return Err(err(start, "a number"));
        }
        if !(1..=MAX_INDEX).contains(&n) {
            return Err(err(start, "a number from 1 to 9999"));
        }
        Ok(n)
    }

    fn repetition(&mut self, err: &dyn Fn(usize, &'static str) -> PathError) -> Result<Option<u32>, PathError> {
        if self.bytes.get(self.i) != Some(&b'(') {
            return Ok(None);
        }
        self.i += 1;
        let n = self.number(err)?;
        if self.bytes.get(self.i) != Some(&b')') {
            return Err(err(self.i, "')'"));
        }
        self.i += 1;
        Ok(Some(n))
    }
}

/// Whether `name` is a valid segment name: three characters, an upper-case
/// letter then upper-case letters or digits.
pub(crate) fn is_segment_name(name: &[u8]) -> bool {
    matches!(name, [a, b, c] if a.is_ascii_uppercase()
        && (b.is_ascii_uppercase() || b.is_ascii_digit())
        && (c.is_ascii_uppercase() || c.is_ascii_digit()))
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.segment())?;
        if let Some(n) = self.segment_repetition {
            write!(f, "({n})")?;
        }
        write!(f, "-{}", self.field)?;
        if let Some(n) = self.field_repetition {
            write!(f, "({n})")?;
        }
        if let Some(n) = self.component {
            write!(f, "-{n}")?;
        }
        if let Some(n) = self.subcomponent {
            write!(f, "-{n}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Path({self})")
    }
}

impl FromStr for Path {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Path, PathError> {
        Path::parse(s)
    }
}

/// Anything a [`Message`](crate::Message) accepts as a path: a [`Path`] or
/// its text.
///
/// ```
/// use hl7v2::{Path, ToPath};
/// let p = Path::parse("PID-5").unwrap();
/// assert_eq!("PID-5".to_path().unwrap(), p);
/// assert_eq!(p.to_path().unwrap(), p);
/// ```
pub trait ToPath {
    /// The parsed path.
    fn to_path(&self) -> Result<Path, PathError>;
}

impl ToPath for Path {
    fn to_path(&self) -> Result<Path, PathError> {
        Ok(*self)
    }
}
impl ToPath for &Path {
    fn to_path(&self) -> Result<Path, PathError> {
        Ok(**self)
    }
}
impl ToPath for str {
    fn to_path(&self) -> Result<Path, PathError> {
        Path::parse(self)
    }
}
impl ToPath for &str {
    fn to_path(&self) -> Result<Path, PathError> {
        Path::parse(self)
    }
}
impl ToPath for String {
    fn to_path(&self) -> Result<Path, PathError> {
        Path::parse(self)
    }
}
impl ToPath for &String {
    fn to_path(&self) -> Result<Path, PathError> {
        Path::parse(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_shape() {
        for (text, shown) in [
            ("PID-5-1", "PID-5-1"),
            ("PID-3(2)-4-2", "PID-3(2)-4-2"),
            ("OBX(3)-5", "OBX(3)-5"),
            ("MSH-9-2", "MSH-9-2"),
            ("PID.5.1", "PID-5-1"),
            ("/PID-5", "PID-5"),
            ("/.PID-5", "PID-5"),
            ("ZX1-12", "ZX1-12"),
        ] {
            assert_eq!(Path::parse(text).unwrap().to_string(), shown, "{text}");
        }
    }

    #[test]
    fn refuses_malformed_paths_with_a_position() {
        for (text, position) in [
            ("", 0),
            ("PI-5", 0),
            ("pid-5", 0),
            ("PID", 3),
            ("PID-", 4),
            ("PID-0", 4),
            ("PID-10000", 4),
            ("PID-5-1-1-1", 9),
            ("PID-5(", 6),
            ("PID-5(2", 7),
            ("PID-5x", 5),
            ("OBX(0)-5", 4),
            ("PID-5-1(2)", 7),
        ] {
            let e = Path::parse(text).unwrap_err();
            assert_eq!(e.position, position, "{text}: {e}");
        }
    }
}

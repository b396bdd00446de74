//! HL7 version ids (MSH-12), ordered, so layouts can be chosen by version.

use std::fmt;

/// An HL7 v2 version id such as `2.3`, `2.3.1` or `2.5.1`.
///
/// ```
/// use hl7v2::Version;
/// let v = Version::parse("2.5.1").unwrap();
/// assert!(v >= Version::V2_5);
/// assert!(Version::parse("2.3.1").unwrap() < Version::V2_5);
/// assert_eq!(v.to_string(), "2.5.1");
/// assert_eq!(Version::parse("v2.x"), None);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Version {
    /// Always 2 for HL7 v2.
    pub major: u8,
    /// `5` in 2.5.1.
    pub minor: u8,
    /// `1` in 2.5.1 (0 when absent).
    pub patch: u8,
}

impl Version {
    /// 2.3
    pub const V2_3: Version = Version::new(2, 3, 0);
    /// 2.3.1
    pub const V2_3_1: Version = Version::new(2, 3, 1);
    /// 2.4
    pub const V2_4: Version = Version::new(2, 4, 0);
    /// 2.5
    pub const V2_5: Version = Version::new(2, 5, 0);
    /// 2.5.1
    pub const V2_5_1: Version = Version::new(2, 5, 1);
    /// 2.6
    pub const V2_6: Version = Version::new(2, 6, 0);
    /// 2.7
    pub const V2_7: Version = Version::new(2, 7, 0);
    /// 2.8
    pub const V2_8: Version = Version::new(2, 8, 0);

    /// A version from its parts.
    pub const fn new(major: u8, minor: u8, patch: u8) -> Version {
        Version { major, minor, patch }
    }

    /// Parses `2.x` or `2.x.y` (surrounding white space allowed).
    pub fn parse(text: &str) -> Option<Version> {
        let mut parts = text.trim().split('.');
        let mut next = || -> Option<Option<u8>> {
            match parts.next() {
                None => Some(None),
                Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok().map(Some),
                Some(_) => None,
            }
        };
        let major = next()??;
        let minor = next()??;
        let patch = next()?.unwrap_or(0);
        if next()?.is_some() || major != 2 {
            return None;
        }
        Some(Version::new(major, minor, patch))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if self.patch != 0 {
            write!(f, ".{}", self.patch)?;
        }
        Ok(())
    }
}

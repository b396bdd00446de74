//! Character sets, chosen by MSH-18, to and from Rust strings.
//!
//! The delimiters are ASCII in every character set HL7 allows for byte-based
//! messages, so the parser works on bytes and only the text of a leaf value is
//! decoded, after its escapes. Real feeds often send Latin-1 without declaring
//! it, or declare UTF-8 and send Windows-1252: when MSH-18 is empty or says
//! ASCII, or says UTF-8 but the bytes are not valid UTF-8, text is read as
//! UTF-8 if it is valid and as Windows-1252 otherwise (Windows-1252 is a
//! superset of the printable part of ISO 8859-1, so no byte is ever lost).

use std::borrow::Cow;

use encoding_rs::{Encoding, WINDOWS_1252};

/// The character set of a message's text, from MSH-18.
///
/// ```
/// use hl7v2::Charset;
/// assert_eq!(Charset::from_msh18(b"UNICODE UTF-8"), Charset::Utf8);
/// assert_eq!(Charset::from_msh18(b"8859/1"), Charset::Latin1);
/// assert_eq!(Charset::from_msh18(b""), Charset::Ascii);
/// // Latin-1 bytes in an undeclared message still read as text.
/// assert_eq!(Charset::Ascii.decode(b"Jos\xe9"), "José");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Charset {
    /// MSH-18 empty, `ASCII` or not recognised: UTF-8 when valid, otherwise
    /// Windows-1252. Text written into the message is UTF-8.
    Ascii,
    /// `8859/1`: read and written as Windows-1252.
    Latin1,
    /// `UNICODE UTF-8` (also `UTF-8`, `UNICODE`): invalid sequences fall back
    /// to Windows-1252 for the whole value rather than losing bytes.
    Utf8,
    /// Another single- or multi-byte character set that `encoding_rs` knows
    /// (`8859/2` ... `8859/15`, `GB 18030-2000`, `BIG-5`, `KS X 1001`).
    Other(&'static Encoding),
}

impl Charset {
    /// The character set named by the first repetition of MSH-18.
    pub fn from_msh18(value: &[u8]) -> Charset {
        let value = value.trim_ascii();
        if value.is_empty() {
            // The common case, on every parse: no allocation.
            return Charset::Ascii;
        }
        let upper = value.to_ascii_uppercase();
        match upper.as_slice() {
            b"" | b"ASCII" | b"ISO IR6" => Charset::Ascii,
            b"8859/1" | b"ISO IR100" => Charset::Latin1,
            b"UNICODE UTF-8" | b"UTF-8" | b"UTF8" | b"UNICODE" => Charset::Utf8,
            b"GB 18030-2000" => Charset::Other(encoding_rs::GB18030),
            b"BIG-5" => Charset::Other(encoding_rs::BIG5),
            b"KS X 1001" => Charset::Other(encoding_rs::EUC_KR),
            _ => match upper.strip_prefix(b"8859/") {
                Some(n) => {
                    let mut label = b"iso-8859-".to_vec();
                    label.extend_from_slice(n);
                    Encoding::for_label(&label).map_or(Charset::Ascii, Charset::Other)
                }
                None => Charset::Ascii,
            },
        }
    }

    /// The MSH-18 value that names this character set.
    pub fn msh18(&self) -> &'static str {
        match self {
            Charset::Ascii => "ASCII",
            Charset::Latin1 => "8859/1",
            Charset::Utf8 => "UNICODE UTF-8",
            Charset::Other(e) => e.name(),
        }
    }

    /// Decodes bytes of this character set (already unescaped) to text.
    /// Borrows when the bytes are ASCII or valid UTF-8 in a UTF-8 message.
    pub fn decode<'a>(&self, bytes: &'a [u8]) -> Cow<'a, str> {
        if matches!(self, Charset::Ascii | Charset::Utf8)
            && let Ok(s) = std::str::from_utf8(bytes)
        {
            // The usual case checked in one pass (ASCII is valid UTF-8).
            return Cow::Borrowed(s);
        }
        if bytes.is_ascii() {
            // Every supported set is an ASCII superset.
            return Cow::Borrowed(std::str::from_utf8(bytes).unwrap_or_default());
        }
        match self {
            Charset::Ascii | Charset::Utf8 => match std::str::from_utf8(bytes) {
                Ok(s) => Cow::Borrowed(s),
                Err(_) => WINDOWS_1252.decode_without_bom_handling(bytes).0,
            },
            Charset::Latin1 => WINDOWS_1252.decode_without_bom_handling(bytes).0,
            Charset::Other(e) => e.decode_without_bom_handling(bytes).0,
        }
    }

    /// Decodes owned bytes, reusing the allocation when possible.
    pub(crate) fn decode_owned(&self, bytes: Vec<u8>) -> String {
        match self.decode(&bytes) {
            Cow::Borrowed(_) => String::from_utf8(bytes).unwrap_or_default(),
            Cow::Owned(s) => s,
        }
    }

    /// Encodes text for this character set, or returns the first character it
    /// cannot represent.
    ///
    /// ```
    /// use hl7v2::Charset;
    /// assert_eq!(Charset::Latin1.encode("José").unwrap().as_ref(), b"Jos\xe9");
    /// assert_eq!(Charset::Latin1.encode("日本"), Err('日'));
    /// assert_eq!(Charset::Utf8.encode("日本").unwrap().as_ref(), "日本".as_bytes());
    /// ```
    pub fn encode<'a>(&self, text: &'a str) -> Result<Cow<'a, [u8]>, char> {
        let encoding = match self {
            _ if text.is_ascii() => return Ok(Cow::Borrowed(text.as_bytes())),
            Charset::Ascii | Charset::Utf8 => return Ok(Cow::Borrowed(text.as_bytes())),
            Charset::Latin1 => WINDOWS_1252,
            Charset::Other(e) => e,
        };
        let (bytes, _, had_errors) = encoding.encode(text);
        if !had_errors {
            return Ok(bytes);
        }
        // encoding_rs replaced something with an HTML entity: find what.
        let mut buf = [0u8; 4];
        for ch in text.chars() {
            let (_, _, bad) = encoding.encode(ch.encode_utf8(&mut buf));
            if bad {
                return Err(ch);
            }
        }
        Err(char::REPLACEMENT_CHARACTER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_in_a_utf8_message_falls_back_to_windows_1252() {
        assert_eq!(Charset::Utf8.decode(b"M\xfcller \x80"), "Müller €");
        assert_eq!(Charset::Utf8.decode("Müller".as_bytes()), "Müller");
    }

    #[test]
    fn other_iso_8859_parts_are_recognised() {
        assert_eq!(Charset::from_msh18(b"8859/2").msh18(), "ISO-8859-2");
        assert_eq!(Charset::from_msh18(b"8859/2").decode(b"\xb1"), "ą");
        assert_eq!(Charset::from_msh18(b"whatever"), Charset::Ascii);
    }
}

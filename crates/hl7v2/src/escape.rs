//! HL7 escape sequences (`\F\ \S\ \T\ \R\ \E\ \P\ \Xhh..\ \.br\`).
//!
//! Decoding works on raw bytes, before the character set is applied, because
//! `\Xhh\` stands for bytes of the message's character set. Sequences that
//! carry formatting or character-set switches (`\H\ \N\ \Zxx\ \Cxxyy\
//! \Mxxyyzz\ \.sp\` ...) have no plain-text meaning: they are kept as they are,
//! visible in the text, so nothing is lost silently. A lone escape character
//! with no closing one is kept literally too (real feeds contain Windows paths).
//!
//! Encoding escapes every delimiter and the escape character, writes CR as
//! `\X0D\` and LF as `\.br\` (the line break receivers display), so
//! `decode(encode(text)) == text` for every text.

use std::borrow::Cow;

use crate::Delimiters;

/// Replaces escape sequences in `raw` by the bytes they stand for.
/// Borrows when there is nothing to replace.
///
/// ```
/// use hl7v2::{Delimiters, escape};
/// let d = Delimiters::default();
/// assert_eq!(escape::decode(br"A\T\E \F\ 1\S\2", &d).as_ref(), b"A&E | 1^2");
/// assert_eq!(escape::decode(br"line 1\.br\line 2\X0D0A\", &d).as_ref(), b"line 1\nline 2\r\n");
/// // Highlighting is kept as written.
/// assert_eq!(escape::decode(br"\H\urgent\N\", &d).as_ref(), br"\H\urgent\N\");
/// ```
pub fn decode<'a>(raw: &'a [u8], delims: &Delimiters) -> Cow<'a, [u8]> {
    let esc = delims.escape;
    if esc == delims.field {
        return Cow::Borrowed(raw);
    }
    let Some(first) = crate::element::find_byte(esc, raw) else {
        return Cow::Borrowed(raw);
    };
    let mut out = Vec::with_capacity(raw.len());
    out.extend_from_slice(&raw[..first]);
    let mut i = first;
    while i < raw.len() {
        if raw[i] != esc {
            let next = memchr::memchr(esc, &raw[i..]).map_or(raw.len(), |n| i + n);
            out.extend_from_slice(&raw[i..next]);
            i = next;
            continue;
        }
        let Some(len) = memchr::memchr(esc, &raw[i + 1..]) else {
            // No closing escape: the rest is literal.
            out.extend_from_slice(&raw[i..]);
            break;
        };
        let seq = &raw[i + 1..i + 1 + len];
        let whole = &raw[i..i + len + 2];
        if !decode_sequence(seq, delims, &mut out) {
            out.extend_from_slice(whole);
        }
        i += len + 2;
    }
    Cow::Owned(out)
}

/// Appends what `seq` (the text between two escape characters) stands for;
/// false when it is not a sequence that decodes to plain text.
fn decode_sequence(seq: &[u8], d: &Delimiters, out: &mut Vec<u8>) -> bool {
    let single = |b: u8| -> Option<u8> { (b != d.field || seq == b"F").then_some(b) };
    let byte = match seq {
        b"F" => single(d.field),
        b"S" => single(d.component),
        b"T" => single(d.subcomponent),
        b"R" => single(d.repetition),
        b"E" => single(d.escape),
        b"P" => single(d.truncation),
        b".br" => Some(b'\n'),
        [b'X', hex @ ..] if !hex.is_empty() && hex.len() % 2 == 0 => {
            let start = out.len();
            for pair in hex.chunks_exact(2) {
                match (hex_value(pair[0]), hex_value(pair[1])) {
                    (Some(h), Some(l)) => out.push(h << 4 | l),
                    _ => {
                        out.truncate(start);
                        return false;
                    }
                }
            }
            return true;
        }
        _ => None,
    };
    match byte {
        Some(b) => {
            out.push(b);
            true
        }
        None => false,
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Escapes every delimiter, the escape character, CR and LF in `text`.
/// Borrows when there is nothing to escape.
///
/// ```
/// use hl7v2::{Delimiters, escape};
/// let d = Delimiters::default();
/// assert_eq!(escape::encode(b"A&E | 1^2", &d).as_ref(), br"A\T\E \F\ 1\S\2");
/// assert_eq!(escape::encode(b"a\r\nb", &d).as_ref(), br"a\X0D\\.br\b");
/// ```
///
/// # Missing escape character
/// When MSH-2 declares no escape character, delimiters cannot be escaped:
/// they are replaced by a space, which is the only way to keep the structure
/// of the message intact.
pub fn encode<'a>(text: &'a [u8], delims: &Delimiters) -> Cow<'a, [u8]> {
    let needs = |b: u8| delims.is_special(b) || b == b'\r' || b == b'\n';
    let Some(first) = text.iter().position(|&b| needs(b)) else {
        return Cow::Borrowed(text);
    };
    let esc = delims.escape;
    let has_escape = esc != delims.field;
    let mut out = Vec::with_capacity(text.len() + 8);
    out.extend_from_slice(&text[..first]);
    for &b in &text[first..] {
        if !needs(b) {
            out.push(b);
            continue;
        }
        let code: &[u8] = if b == b'\r' {
            b"X0D"
        } else if b == b'\n' {
            b".br"
        } else if b == delims.field {
            b"F"
        } else if b == delims.component {
            b"S"
        } else if b == delims.repetition {
            b"R"
        } else if b == delims.escape {
            b"E"
        } else if b == delims.subcomponent {
            b"T"
        } else {
            b"P"
        };
        if has_escape {
            out.push(esc);
            out.extend_from_slice(code);
            out.push(esc);
        } else {
            out.push(b' ');
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unterminated_and_unknown_sequences_stay_literal() {
        let d = Delimiters::default();
        assert_eq!(decode(br"C:\temp", &d).as_ref(), br"C:\temp");
        assert_eq!(decode(br"\Q\x", &d).as_ref(), br"\Q\x");
        assert_eq!(decode(br"\XZZ\", &d).as_ref(), br"\XZZ\");
        assert_eq!(decode(br"\X0\", &d).as_ref(), br"\X0\");
        assert_eq!(decode(br"\\", &d).as_ref(), br"\\");
        assert_eq!(decode(br"\.sp2\\Zab\", &d).as_ref(), br"\.sp2\\Zab\");
    }

    #[test]
    fn truncation_escape_decodes_only_when_declared() {
        let d = Delimiters::default();
        assert_eq!(decode(br"\P\", &d).as_ref(), br"\P\");
        let d = d.with_truncation(b'#').unwrap();
        assert_eq!(decode(br"\P\", &d).as_ref(), b"#");
        assert_eq!(encode(b"#", &d).as_ref(), br"\P\");
    }

    #[test]
    fn hex_escape_gives_bytes_of_the_message_charset() {
        let d = Delimiters::default();
        assert_eq!(decode(br"Jos\XE9\", &d).as_ref(), b"Jos\xe9");
        assert_eq!(decode(br"\XC3A9\", &d).as_ref(), "é".as_bytes());
    }

    #[test]
    fn without_escape_character_delimiters_become_spaces() {
        let d = Delimiters::from_parts(b'|', b"^~").unwrap();
        assert_eq!(encode(b"a^b|c\\d", &d).as_ref(), b"a b c\\d");
        assert_eq!(decode(br"\F\", &d).as_ref(), br"\F\");
    }
}

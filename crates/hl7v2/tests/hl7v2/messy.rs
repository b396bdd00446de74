//! What real feeds send: mixed line endings, trailing separators, short
//! headers, Latin-1, odd escapes, Z segments; and precise errors.

use hl7v2::{Charset, Message, ParseErrorKind, Presence};

#[test]
fn mixed_separators_blank_lines_and_leading_noise() {
    let input = b"\r\n  \nMSH|^~\\&|A|B|C|D|20261121||ADT^A08|1|P|2.5\r\nEVN||20261121\n\nPID|1||42\r\r   \rZPD|x\r\nPV1|1|I|||||\n";
    let msg = Message::parse(&input[..]).unwrap();
    let names: Vec<&str> = msg.segments().map(|s| s.name()).collect();
    assert_eq!(names, ["MSH", "EVN", "PID", "ZPD", "PV1"]);
    assert_eq!(msg.encode(), input);
    assert_eq!(
        msg.to_standard_form(),
        b"MSH|^~\\&|A|B|C|D|20261121||ADT^A08|1|P|2.5\rEVN||20261121\rPID|1||42\rZPD|x\rPV1|1|I|||||\r"
    );
    // Trailing separators are empty fields, not absent ones.
    let pv1 = msg.segment("PV1").unwrap();
    assert_eq!(pv1.field_count(), 7);
    assert_eq!(msg.presence("PV1-7"), Presence::Empty);
    assert_eq!(msg.presence("PV1-8"), Presence::Absent);
}

#[test]
fn segments_without_fields_and_z_segments() {
    let msg = Message::parse("MSH|^~\\&|A\rZZZ\rNTE\rZX1|a^b").unwrap();
    assert_eq!(msg.segment("ZZZ").unwrap().field_count(), 0);
    assert_eq!(msg.get("NTE-1"), None);
    assert_eq!(msg.get("ZX1-1-2").as_deref(), Some("b"));
}

#[test]
fn msh2_with_truncation_character_from_2_7() {
    let msg = Message::parse("MSH|^~\\&#|A||||20261121||ADT^A01|1|P|2.7\rPID|1||12#3\\P\\4").unwrap();
    assert_eq!(msg.delimiters().truncation(), Some(b'#'));
    assert_eq!(msg.get("MSH-2").as_deref(), Some("^~\\&#"));
    assert_eq!(msg.get("MSH-3").as_deref(), Some("A"));
    // The truncation character is data; its escape decodes to it.
    assert_eq!(msg.get("PID-3").as_deref(), Some("12#3#4"));
}

#[test]
fn short_msh2_and_unusual_delimiters() {
    let msg = Message::parse("MSH|^~|A|B\rPID|1||x\\y&z").unwrap();
    assert_eq!(msg.delimiters().escape(), None);
    assert_eq!(msg.delimiters().subcomponent(), None);
    // No escape or sub-component character: both are plain data.
    assert_eq!(msg.get("PID-3").as_deref(), Some("x\\y&z"));
    let msg = Message::parse("MSH*:!$%*A*B\rPID*1**r1:c2!r2").unwrap();
    assert_eq!(msg.get("PID-3-2").as_deref(), Some("c2"));
    assert_eq!(msg.get("PID-3(2)").as_deref(), Some("r2"));
}

#[test]
fn latin1_bytes_and_declared_charsets() {
    // Undeclared Latin-1: not valid UTF-8, read as Windows-1252.
    let msg = Message::parse(&b"MSH|^~\\&|A\rPID|1||||M\xfcller^Ren\xe9"[..]).unwrap();
    assert_eq!(msg.charset(), Charset::Ascii);
    assert_eq!(msg.get("PID-5-1").as_deref(), Some("Müller"));
    assert_eq!(msg.get("PID-5-2").as_deref(), Some("René"));
    // Declared 8859/1.
    let msg = Message::parse(&b"MSH|^~\\&|A||||||ADT^A01|1|P|2.5||||||8859/1\rPID|1||||\xc9lise"[..]).unwrap();
    assert_eq!(msg.charset(), Charset::Latin1);
    assert_eq!(msg.get("PID-5").as_deref(), Some("Élise"));
    // Declared UTF-8 with a hex escape of UTF-8 bytes.
    let msg = Message::parse("MSH|^~\\&|A||||||ADT^A01|1|P|2.5||||||UNICODE UTF-8\rPID|1||||Jos\\XC3A9\\".as_bytes())
        .unwrap();
    assert_eq!(msg.get("PID-5").as_deref(), Some("José"));
}

#[test]
fn formatted_text_escapes() {
    let msg = Message::parse("MSH|^~\\&|A\rOBX|1|FT|||line 1\\.br\\line 2\\X0D\\\\H\\bold\\N\\").unwrap();
    assert_eq!(msg.get("OBX-5").as_deref(), Some("line 1\nline 2\r\\H\\bold\\N\\"));
}

#[test]
fn parse_errors_say_what_and_where() {
    // input, kind, byte offset, segment, field
    type Case = (&'static [u8], ParseErrorKind, usize, usize, Option<usize>);
    let cases: &[Case] = &[
        (b"", ParseErrorKind::Empty, 0, 0, None),
        (b" \r\n ", ParseErrorKind::Empty, 4, 0, None),
        (b"PID|1", ParseErrorKind::MissingHeader, 0, 1, None),
        (b"\xef\xbb\xbfFHS|^~\\&", ParseErrorKind::Batch, 3, 1, None),
        (b"MSH", ParseErrorKind::TruncatedHeader, 3, 1, Some(1)),
        (b"MSHA^~\\&", ParseErrorKind::InvalidDelimiters(hl7v2::DelimiterError::NotPunctuation), 3, 1, Some(1)),
        (b"MSH|^^\\&|", ParseErrorKind::InvalidDelimiters(hl7v2::DelimiterError::Duplicate), 4, 1, Some(2)),
        (b"MSH||", ParseErrorKind::InvalidDelimiters(hl7v2::DelimiterError::Missing), 4, 1, Some(2)),
        (b"MSH|^~\\&|A\rPID|1\rOBX1|2", ParseErrorKind::InvalidSegmentName, 17, 3, None),
        (b"MSH|^~\\&|A\nPID|1\n continued text", ParseErrorKind::InvalidSegmentName, 17, 3, None),
    ];
    for (input, kind, offset, segment, field) in cases {
        let e = Message::parse(*input).unwrap_err();
        let shown = String::from_utf8_lossy(input);
        assert_eq!(e.kind(), kind, "{shown:?}");
        assert_eq!(e.offset(), *offset, "{shown:?}");
        assert_eq!(e.segment(), *segment, "{shown:?}");
        assert_eq!(e.field(), *field, "{shown:?}");
    }
    // The header is handed back when MSH was readable, and only then.
    let e = Message::parse(&b"MSH|^~\\&|A|B|C|D||||ID7\rPID|1\r\x00\x01"[..]).unwrap_err();
    assert_eq!(e.header().unwrap().control_id().as_deref(), Some("ID7"));
    assert!(Message::parse(&b"MSH|^^\\&|A"[..]).unwrap_err().header().is_none());
    // Display names positions, never content.
    assert_eq!(e.to_string(), "invalid segment name at byte 30, segment 3");
}

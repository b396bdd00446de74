//! Property tests: round trips over generated messages, escapes, edits,
//! framing, and no panic on any input.

use hl7v2::{Delimiters, Message, Path, escape};
use proptest::prelude::*;

/// Text of one leaf as a sender would write it: anything but the delimiters
/// and line breaks (escapes included, as bytes).
fn leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("\"\"".to_string()),
        "[A-Za-z0-9 .,:/()+-]{1,12}",
        "[A-Za-z]{0,4}\\\\[FSTRE]\\\\[a-z]{0,3}",
        "[a-zé€ü]{1,6}",
    ]
}

fn join(parts: Vec<String>, sep: char) -> String {
    parts.join(&sep.to_string())
}

/// A field: repetitions of components of sub-components.
fn field() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::collection::vec(prop::collection::vec(leaf(), 1..3).prop_map(|s| join(s, '&')), 1..4)
            .prop_map(|c| join(c, '^')),
        1..3,
    )
    .prop_map(|r| join(r, '~'))
}

fn segment() -> impl Strategy<Value = String> {
    (prop_oneof![Just("PID"), Just("OBX"), Just("NTE"), Just("ZX1"), Just("PV1")], prop::collection::vec(field(), 0..8))
        .prop_map(|(name, fields)| {
            let mut s = name.to_string();
            for f in fields {
                s.push('|');
                s.push_str(&f);
            }
            s
        })
}

/// A message, its separators and whether it ends with one.
fn message() -> impl Strategy<Value = (Vec<String>, Vec<&'static str>, bool)> {
    prop::collection::vec(segment(), 0..8).prop_flat_map(|segments| {
        let n = segments.len() + 1;
        (Just(segments), prop::collection::vec(prop_oneof![Just("\r"), Just("\n"), Just("\r\n")], n), any::<bool>())
    })
}

const MSH: &str = "MSH|^~\\&|APP|FAC|RCV|RFAC|20261121120000||ADT^A08|CTRL|P|2.5.1|||||||UNICODE UTF-8";

fn assemble(segments: &[String], seps: &[&str], trailing: bool) -> String {
    let mut text = MSH.to_string();
    for (s, sep) in segments.iter().zip(seps) {
        text.push_str(sep);
        text.push_str(s);
    }
    if trailing {
        text.push_str(seps[seps.len() - 1]);
    }
    text
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn generated_messages_round_trip_byte_for_byte((segments, seps, trailing) in message()) {
        let text = assemble(&segments, &seps, trailing);
        let msg = Message::parse(text.as_bytes()).unwrap();
        prop_assert_eq!(msg.encode(), text.as_bytes());
        prop_assert_eq!(msg.segment_count(), segments.len() + 1);
        for (seg, expected) in msg.segments().skip(1).zip(&segments) {
            prop_assert_eq!(seg.raw(), expected.as_bytes());
            let fields: Vec<&str> = expected.split('|').skip(1).collect();
            prop_assert_eq!(seg.field_count(), fields.len());
            for (n, f) in fields.iter().enumerate() {
                prop_assert_eq!(seg.field(n + 1).unwrap().raw(), f.as_bytes());
                let first_leaf = f.split('~').next().unwrap().split('^').next().unwrap().split('&').next().unwrap();
                let decoded = escape::decode(first_leaf.as_bytes(), &Delimiters::default()).into_owned();
                prop_assert_eq!(seg.get(n + 1).unwrap().into_owned().into_bytes(), decoded);
            }
        }
        // The standard form parses to the same segments.
        let standard = Message::parse(msg.to_standard_form()).unwrap();
        prop_assert_eq!(standard.segment_count(), msg.segment_count());
    }

    #[test]
    fn escape_decode_inverts_encode(text in any::<String>(), truncation in any::<bool>()) {
        let mut d = Delimiters::default();
        if truncation {
            d = d.with_truncation(b'#').unwrap();
        }
        let encoded = escape::encode(text.as_bytes(), &d);
        for b in [b'|', b'^', b'~', b'&', b'\r', b'\n'] {
            prop_assert!(!encoded.contains(&b));
        }
        if truncation {
            prop_assert!(!encoded.contains(&b'#'));
        }
        prop_assert_eq!(escape::decode(&encoded, &d).into_owned(), text.as_bytes().to_vec());
    }

    #[test]
    fn set_then_get_gives_the_value_back(
        value in any::<String>(),
        field in 1u32..30,
        rep in 1u32..4,
        component in 1u32..6,
        sub in 1u32..3,
        (segments, seps, trailing) in message(),
    ) {
        let mut msg = Message::parse(assemble(&segments, &seps, trailing)).unwrap();
        let path = Path::new("OBX", field).unwrap().with_repetition(rep).with_component(component).with_subcomponent(sub);
        let before = msg.segment_count();
        msg.set(path, &value).unwrap();
        prop_assert_eq!(msg.get(path).map(|v| v.into_owned()), Some(value.clone()));
        // Appended when there was no OBX, otherwise edited in place.
        let had_obx = segments.iter().any(|s| s.starts_with("OBX"));
        prop_assert_eq!(msg.segment_count(), before + usize::from(!had_obx));
        // Other segments are untouched.
        let again = Message::parse(msg.encode()).unwrap();
        prop_assert_eq!(again.get(path).map(|v| v.into_owned()), Some(value.clone()));
        prop_assert_eq!(again.control_id().map(|v| v.into_owned()), Some("CTRL".to_string()));
    }

    #[test]
    fn index_after_edits_matches_a_fresh_parse(
        (segments, seps, trailing) in message(),
        edits in prop::collection::vec(
            (
                prop_oneof![Just("PID"), Just("OBX"), Just("NTE"), Just("ZX1"), Just("MSH")],
                1u32..3,
                3u32..20,
                1u32..3,
                1u32..4,
                "[ -~é]{0,12}",
            ),
            1..10,
        ),
    ) {
        let mut msg = Message::parse(assemble(&segments, &seps, trailing)).unwrap();
        for (name, occurrence, field, rep, component, value) in edits {
            let path = Path::new(name, field).unwrap().with_occurrence(occurrence).with_repetition(rep).with_component(component);
            // Occurrences past the next one are refused; that is fine here.
            let _ = msg.set(path, &value);
        }
        let fresh = Message::parse(msg.encode()).unwrap();
        prop_assert_eq!(msg.segment_count(), fresh.segment_count());
        for (a, b) in msg.segments().zip(fresh.segments()) {
            prop_assert_eq!(a.name(), b.name());
            prop_assert_eq!(a.raw(), b.raw());
            prop_assert_eq!(a.field_count(), b.field_count());
            for (fa, fb) in a.fields().zip(b.fields()) {
                prop_assert_eq!(fa.raw(), fb.raw());
            }
        }
        prop_assert_eq!(msg.charset(), fresh.charset());
    }

    #[test]
    fn paths_display_and_parse_round_trip(
        name in "[A-Z][A-Z0-9]{2}",
        occ in proptest::option::of(1u32..50),
        field in 1u32..200,
        rep in proptest::option::of(1u32..20),
        comp in proptest::option::of(1u32..30),
        sub in proptest::option::of(1u32..10),
    ) {
        let mut text = name.clone();
        if let Some(o) = occ { text += &format!("({o})"); }
        text += &format!("-{field}");
        if let Some(r) = rep { text += &format!("({r})"); }
        if let Some(c) = comp {
            text += &format!("-{c}");
            if let Some(s) = sub { text += &format!("-{s}"); }
        }
        let path = Path::parse(&text).unwrap();
        prop_assert_eq!(path.to_string(), text);
    }

    #[test]
    fn any_bytes_parse_or_fail_with_a_position(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        exercise(&bytes);
    }

    #[test]
    fn mutated_fixtures_never_panic(
        index in 0usize..71,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12),
    ) {
        let (_, mut bytes) = crate::fixtures::fixtures().swap_remove(index);
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        exercise(&bytes);
    }

    #[cfg(feature = "codec")]
    #[test]
    fn mllp_frames_survive_any_chunking(
        messages in prop::collection::vec("[ -~\r]{0,64}", 1..6),
        junk in "[ -~\r\n]{0,8}",
        cuts in prop::collection::vec(1usize..40, 0..20),
    ) {
        use bytes::BytesMut;
        use hl7v2::mllp::MllpCodec;
        use tokio_util::codec::{Decoder, Encoder};
        let mut codec = MllpCodec::default();
        let mut wire = BytesMut::new();
        for m in &messages {
            wire.extend_from_slice(junk.as_bytes());
            codec.encode(m.as_bytes(), &mut wire).unwrap();
        }
        let mut decoder = MllpCodec::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut rest = &wire[..];
        let mut cuts = cuts.into_iter();
        while !rest.is_empty() {
            let n = cuts.next().unwrap_or(rest.len()).min(rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                out.push(String::from_utf8(frame.to_vec()).unwrap());
            }
        }
        prop_assert_eq!(out, messages.clone());
        prop_assert_eq!(decoder.skipped_bytes(), (junk.len() * messages.len()) as u64);
    }
}

/// Everything a receiver does with untrusted bytes; must not panic.
fn exercise(bytes: &[u8]) {
    use hl7v2::ack::{Ack, AckCode};
    match Message::parse(bytes) {
        Ok(mut msg) => {
            assert_eq!(msg.encode(), bytes);
            for seg in msg.segments() {
                for f in seg.fields() {
                    for r in f.repetitions() {
                        for c in r.components() {
                            for s in c.subcomponents() {
                                let _ = s.text();
                            }
                        }
                    }
                }
            }
            let issues = hl7v2::validate::validate(&msg);
            let ack = Ack::new(AckCode::ApplicationError, "A", "20261121").issues(&issues).for_message(&msg);
            assert!(Message::parse(ack.encode()).is_ok());
            let _ = msg.get("PID-5-1");
            let _ = msg.set("PID-5-1", "x");
            let _ = msg.set("NTE(2)-3(2)-1-2", "y|^~&\\");
            assert!(Message::parse(msg.encode()).is_ok());
        }
        Err(e) => {
            assert!(e.offset() <= bytes.len());
            let nak = Ack::new(AckCode::ApplicationReject, "N", "20261121").for_parse_error(&e, bytes);
            assert!(Message::parse(nak.encode()).is_ok());
        }
    }
    let _ = hl7v2::batch::BatchFile::parse(bytes);
}

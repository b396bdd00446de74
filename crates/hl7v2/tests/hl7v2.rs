//! Integration tests of the HL7 v2 crate against the sample messages in
//! tests/fixtures (see PROVENANCE.md there).

use std::path::PathBuf;

use hl7v2::{Message, Presence};

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every .hl7 fixture, sorted by name.
fn fixtures() -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<_> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "hl7"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("read fixture"))
        })
        .collect();
    all.sort();
    all
}

fn fixture(name: &str) -> Message {
    let bytes = std::fs::read(fixtures_dir().join(name)).expect("read fixture");
    Message::parse(bytes).expect("fixture parses")
}

#[test]
fn every_fixture_parses_and_round_trips_byte_for_byte() {
    let all = fixtures();
    assert_eq!(all.len(), 71, "the shared data set has 71 messages");
    for (name, bytes) in all {
        let msg = Message::parse(bytes.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(msg.encode(), bytes, "{name}: encode differs");
        assert_eq!(msg.segment_at(0).unwrap().name(), "MSH", "{name}");
        // The same message with CR and with CRLF separators.
        for sep in ["\r", "\r\n"] {
            let text = String::from_utf8_lossy(&bytes).replace('\n', sep);
            let other = Message::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(other.encode(), text.as_bytes(), "{name}");
            assert_eq!(other.segment_count(), msg.segment_count(), "{name}");
            for (a, b) in msg.segments().zip(other.segments()) {
                assert_eq!(a.raw(), b.raw(), "{name}");
            }
        }
        // The standard form re-parses to the same segments.
        let standard = Message::parse(msg.to_standard_form()).unwrap();
        assert_eq!(standard.segment_count(), msg.segment_count(), "{name}");
    }
}

#[test]
fn segment_count_matches_non_blank_lines() {
    for (name, bytes) in fixtures() {
        let text = String::from_utf8_lossy(&bytes);
        let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
        let msg = Message::parse(bytes).unwrap();
        assert_eq!(msg.segment_count(), lines, "{name}");
    }
}

#[test]
fn oru_r01_01_reads_header_patient_and_observations() {
    let msg = fixture("ORU-R01-01.hl7");
    let t = msg.message_type().unwrap();
    assert_eq!((&*t.code, &*t.trigger, &*t.structure), ("ORU", "R01", "ORU_R01"));
    assert_eq!(msg.control_id().as_deref(), Some("2.16.840.1.114222.4.3.3.5.1.2-20120314235954.325"));
    assert_eq!(msg.version().as_deref(), Some("2.5.1"));
    assert_eq!(msg.get("MSH-15").as_deref(), Some("AL"));
    assert_eq!(msg.get("MSH-16").as_deref(), Some("NE"));
    assert_eq!(msg.get("MSH-3-2").as_deref(), Some("2.16.840.1.114222.4.3.3.5.1.2"));
    assert_eq!(msg.get("PID-5-1").as_deref(), Some("Finn"));
    assert_eq!(msg.get("PID-5-2").as_deref(), Some("Huckleberry"));
    assert_eq!(msg.get("PID-3-4-2").as_deref(), Some("2.16.840.1.114222.4.3.3.5.1.2"));
    assert_eq!(msg.get("PID-10(2)-2").as_deref(), Some("American Indian or Alaska Native"));
    let obx5: Vec<String> = msg
        .segments_named("OBX")
        .map(|s| s.get(5).unwrap_or_default().into_owned())
        .collect();
    assert_eq!(obx5, ["https://testurl.com", "App5", "27268008", "https://testurl.com", "27"]);
    assert_eq!(msg.get("OBX(5)-5(2)").as_deref(), Some("25"));
    // PV1-14 holds "A\T\E": the escape decodes to the sub-component separator.
    assert_eq!(msg.get_raw("PV1-14"), Some(&br"NHS Provider-General (inc.A\T\E-this Hosp)"[..]));
    assert_eq!(msg.get("PV1-14").as_deref(), Some("NHS Provider-General (inc.A&E-this Hosp)"));
    assert_eq!(msg.presence("OBX(2)-3"), Presence::Empty);
    assert_eq!(msg.presence("OBX(2)-99"), Presence::Absent);
    assert_eq!(msg.presence("OBX(6)-1"), Presence::Absent);
}

#[test]
fn bom_fixture_is_read_as_utf8_and_keeps_its_bom_on_encode() {
    let bytes = std::fs::read(fixtures_dir().join("ADT01-23.hl7")).unwrap();
    assert!(bytes.starts_with(b"\xEF\xBB\xBF"));
    let msg = Message::parse(bytes.clone()).unwrap();
    assert_eq!(msg.charset(), hl7v2::Charset::Utf8);
    assert_eq!(msg.encode(), bytes);
    assert_eq!(msg.get("PID-5").as_deref(), Some("DUCK"));
    // MSH-14 carries a trailing space in this file: it is data, kept as is.
    assert_eq!(msg.get("MSH-15").as_deref(), Some(" "));
    assert!(!msg.to_standard_form().starts_with(b"\xEF\xBB\xBF"));
}

/// A real TCP connection on 127.0.0.1: a sender writes framed fixtures in
/// odd-sized chunks with junk between frames, the receiver decodes them with
/// FramedRead, answers each with an ACK built from it, and the sender decodes
/// the ACKs.
#[cfg(feature = "codec")]
#[tokio::test]
async fn mllp_over_tcp_carries_every_fixture_and_its_ack() {
    use futures::{SinkExt, StreamExt};
    use hl7v2::ack::{Ack, AckCode};
    use hl7v2::mllp::MllpCodec;
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::{FramedRead, FramedWrite};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let messages: Vec<Vec<u8>> = fixtures().into_iter().map(|(_, b)| b).collect();
    let expected = messages.clone();

    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let (read, write) = socket.into_split();
        let mut frames = FramedRead::new(read, MllpCodec::default());
        let mut acks = FramedWrite::new(write, MllpCodec::default());
        let mut received = Vec::new();
        while let Some(frame) = frames.next().await {
            let frame = frame.unwrap();
            let msg = hl7v2::Message::parse(frame.to_vec()).unwrap();
            let ack = Ack::new(AckCode::ApplicationAccept, "ACK1", "20261121120000").for_message(&msg);
            acks.send(ack.encode()).await.unwrap();
            received.push(frame.to_vec());
        }
        (received, frames.decoder().skipped_bytes())
    });

    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut wire = Vec::new();
    for m in &messages {
        wire.extend_from_slice(b"\r\n");
        wire.push(0x0b);
        wire.extend_from_slice(m);
        wire.extend_from_slice(b"\x1c\x0d");
    }
    for chunk in wire.chunks(997) {
        socket.write_all(chunk).await.unwrap();
    }
    let (read, mut write) = socket.into_split();
    let mut acks = FramedRead::new(read, MllpCodec::default());
    for m in &messages {
        let ack = acks.next().await.unwrap().unwrap();
        let ack = hl7v2::Message::parse(ack.to_vec()).unwrap();
        let original = hl7v2::Message::parse(m.clone()).unwrap();
        assert_eq!(ack.get("MSA-1").as_deref(), Some("AA"));
        assert_eq!(ack.get_raw("MSA-2"), original.get_raw("MSH-10"));
    }
    write.shutdown().await.unwrap();
    let (received, skipped) = server.await.unwrap();
    assert_eq!(received, expected);
    assert_eq!(skipped, 2 * messages.len() as u64);
}

//! Every sample message: parse, round trip, read, validate, acknowledge,
//! and carry over MLLP.

use std::path::PathBuf;

use hl7v2::{Message, Presence};

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every .hl7 fixture, sorted by name.
pub fn fixtures() -> Vec<(String, Vec<u8>)> {
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
    let obx5: Vec<String> = msg.segments_named("OBX").map(|s| s.get(5).unwrap_or_default().into_owned()).collect();
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

/// The issues the validator reports for each fixture, checked by hand
/// against the fixture and the HL7 tables. Fixtures not listed validate
/// clean (or are of a type validated at the header only: BAR, DFT, OML, OMG,
/// OUL, PPR, RDE, RDS, REF, ADT A06/A07/A15/A16/A25-A27/A29/A45/A47/A60).
const EXPECTED_ISSUES: &[(&str, &[&str])] = &[
    // RF1 (referral) is not part of ADT_A01/A03/A05 in any version.
    ("ADT-A01-01.hl7", &["RF1(1): 100 Segment sequence error: segment RF1 is not expected here in ADT_A01 (2.8) (E)"]),
    ("ADT-A03-01.hl7", &["RF1(1): 100 Segment sequence error: segment RF1 is not expected here in ADT_A03 (2.8) (E)"]),
    // Table 0354 has no ADT_A04 structure: A04 uses ADT_A01.
    (
        "ADT-A04-01.hl7",
        &[
            "MSH(1)-9-3: 103 Table value not found: MSH-9-3 ADT_A04 is not the structure of ADT^A04 (ADT_A01) (W)",
            "RF1(1): 100 Segment sequence error: segment RF1 is not expected here in ADT_A01 (2.8) (E)",
        ],
    ),
    ("ADT-A05-01.hl7", &["RF1(1): 100 Segment sequence error: segment RF1 is not expected here in ADT_A05 (2.8) (E)"]),
    (
        "ADT-A08-01.hl7",
        &[
            "MSH(1)-9-3: 103 Table value not found: MSH-9-3 ADT_A08 is not the structure of ADT^A08 (ADT_A01) (W)",
            "RF1(1): 100 Segment sequence error: segment RF1 is not expected here in ADT_A01 (2.8) (E)",
        ],
    ),
    // `DB1||PT|DB1456|...`: DB1-1 (Set ID) is required.
    ("ADT-A09-01.hl7", &["DB1(1)-1: 101 Required field missing: DB1-1 is required (E)"]),
    (
        "ADT-A10-01.hl7",
        &[
            "MSH(1)-9-3: 103 Table value not found: MSH-9-3 ADT_A10 is not the structure of ADT^A10 (ADT_A09) (W)",
            "DB1(1)-1: 101 Required field missing: DB1-1 is required (E)",
        ],
    ),
    (
        "ADT-A11-01.hl7",
        &["MSH(1)-9-3: 103 Table value not found: MSH-9-3 ADT_A11 is not the structure of ADT^A11 (ADT_A09) (W)"],
    ),
    (
        "ADT-A13-01.hl7",
        &[
            "MSH(1)-9-3: 103 Table value not found: MSH-9-3 ADT_A13 is not the structure of ADT^A13 (ADT_A01) (W)",
            "RF1(1): 100 Segment sequence error: segment RF1 is not expected here in ADT_A01 (2.8) (E)",
        ],
    ),
    (
        "ADT-A14-01.hl7",
        &[
            "MSH(1)-9-3: 103 Table value not found: MSH-9-3 ADT_A14 is not the structure of ADT^A14 (ADT_A05) (W)",
            "RF1(1): 100 Segment sequence error: segment RF1 is not expected here in ADT_A05 (2.8) (E)",
        ],
    ),
    (
        "ADT-A28-01.hl7",
        &[
            "MSH(1)-9-3: 103 Table value not found: MSH-9-3 ADT_A28 is not the structure of ADT^A28 (ADT_A05) (W)",
            "RF1(1): 100 Segment sequence error: segment RF1 is not expected here in ADT_A05 (2.8) (E)",
        ],
    ),
    (
        "ADT-A31-01.hl7",
        &[
            "MSH(1)-9-3: 103 Table value not found: MSH-9-3 ADT_A31 is not the structure of ADT^A31 (ADT_A05) (W)",
            "RF1(1): 100 Segment sequence error: segment RF1 is not expected here in ADT_A05 (2.8) (E)",
        ],
    ),
    (
        "ADT-A40-01.hl7",
        &["MSH(1)-9-3: 103 Table value not found: MSH-9-3 ADT_A40 is not the structure of ADT^A40 (ADT_A39) (W)"],
    ),
    // `MRG|||ACC1234...`: MRG-1 (prior patient identifier list) is required.
    (
        "ADT-A41-01.hl7",
        &[
            "MSH(1)-9-3: 103 Table value not found: MSH-9-3 ADT_A41 is not the structure of ADT^A41 (ADT_A39) (W)",
            "MRG(1)-1: 101 Required field missing: MRG-1 is required (E)",
        ],
    ),
    // 2.3 ADT_A01 orders DG1 before GT1; this file has GT1 then DG1.
    ("ADT01-23.hl7", &["DG1(1): 100 Segment sequence error: segment DG1 is not expected here in ADT_A01 (2.3) (E)"]),
    // `IN1|1|PAR^PARENT||||LUIGI`: IN1-3 (insurance company id) is required.
    (
        "ADT04-23.hl7",
        &[
            "IN1(1)-3: 101 Required field missing: IN1-3 is required (E)",
            "IN1(2)-3: 101 Required field missing: IN1-3 is required (E)",
        ],
    ),
    // MSH PID NK1 PV1: the EVN every ADT_A01 needs is missing.
    ("ADT04-251.hl7", &["EVN(1): 100 Segment sequence error: required segment EVN is missing (E)"]),
    // RXA-4 (end of administration) is R in the base standard; the CDC
    // immunization guide relaxes it, the base standard does not.
    ("IZ_1_1.1_Admin_Child_Max_Message.hl7", &["RXA(1)-4: 101 Required field missing: RXA-4 is required (E)"]),
    (
        "MDM-T05-01.hl7",
        &["MSH(1)-9-3: 103 Table value not found: MSH-9-3 MDM_T05 is not the structure of MDM^T05 (MDM_T01) (W)"],
    ),
    (
        "MDM-T06-01.hl7",
        &["MSH(1)-9-3: 103 Table value not found: MSH-9-3 MDM_T06 is not the structure of MDM^T06 (MDM_T02) (W)"],
    ),
    (
        "MDM-T09-01.hl7",
        &["MSH(1)-9-3: 103 Table value not found: MSH-9-3 MDM_T09 is not the structure of MDM^T09 (MDM_T01) (W)"],
    ),
    (
        "MDM-T10-01.hl7",
        &["MSH(1)-9-3: 103 Table value not found: MSH-9-3 MDM_T10 is not the structure of MDM^T10 (MDM_T02) (W)"],
    ),
    // Declared ADT^A01 but carries an MDM body (ORC, TQ1, OBR, NTE, TXA);
    // the second ORC (`ORC||||2222`) also lacks ORC-1.
    (
        "MDM_01.hl7",
        &[
            "ORC(1): 100 Segment sequence error: segment ORC is not expected here in ADT_A01 (2.8) (E)",
            "TQ1(1): 100 Segment sequence error: segment TQ1 is not expected here in ADT_A01 (2.8) (E)",
            "OBR(1): 100 Segment sequence error: segment OBR is not expected here in ADT_A01 (2.8) (E)",
            "NTE(1): 100 Segment sequence error: segment NTE is not expected here in ADT_A01 (2.8) (E)",
            "TXA(1): 100 Segment sequence error: segment TXA is not expected here in ADT_A01 (2.8) (E)",
            "ORC(2): 100 Segment sequence error: segment ORC is not expected here in ADT_A01 (2.8) (E)",
            "OBR(2): 100 Segment sequence error: segment OBR is not expected here in ADT_A01 (2.8) (E)",
            "ORC(2)-1: 101 Required field missing: ORC-1 is required (E)",
        ],
    ),
    // Declared 2.5.1 but built like 2.8: PRT (2.7+), a patient-level OBX
    // and TXA are not in 2.5.1's ORU_R01; the first ORC group has an OBX
    // but no OBR; `OBX||ED|||App5^...` has neither OBX-3 nor OBX-11.
    (
        "ORU-R01-01.hl7",
        &[
            "PRT(1): 100 Segment sequence error: segment PRT is not expected here in ORU_R01 (2.5.1) (E)",
            "OBX(1): 100 Segment sequence error: segment OBX is not expected here in ORU_R01 (2.5.1) (E)",
            "PRT(2): 100 Segment sequence error: segment PRT is not expected here in ORU_R01 (2.5.1) (E)",
            "PRT(3): 100 Segment sequence error: segment PRT is not expected here in ORU_R01 (2.5.1) (E)",
            "PRT(4): 100 Segment sequence error: segment PRT is not expected here in ORU_R01 (2.5.1) (E)",
            "OBR(1): 100 Segment sequence error: required segment OBR is missing (E)",
            "PRT(5): 100 Segment sequence error: segment PRT is not expected here in ORU_R01 (2.5.1) (E)",
            "TXA(1): 100 Segment sequence error: segment TXA is not expected here in ORU_R01 (2.5.1) (E)",
            "PRT(6): 100 Segment sequence error: segment PRT is not expected here in ORU_R01 (2.5.1) (E)",
            "PRT(7): 100 Segment sequence error: segment PRT is not expected here in ORU_R01 (2.5.1) (E)",
            "PRT(8): 100 Segment sequence error: segment PRT is not expected here in ORU_R01 (2.5.1) (E)",
            "OBX(2)-3: 101 Required field missing: OBX-3 is required (E)",
            "OBX(2)-11: 101 Required field missing: OBX-11 is required (E)",
        ],
    ),
    (
        "SIU-S13-01.hl7",
        &["MSH(1)-9-3: 103 Table value not found: MSH-9-3 SIU_S13 is not the structure of SIU^S13 (SIU_S12) (W)"],
    ),
    (
        "SIU-S14-01.hl7",
        &["MSH(1)-9-3: 103 Table value not found: MSH-9-3 SIU_S14 is not the structure of SIU^S14 (SIU_S12) (W)"],
    ),
    (
        "SIU-S15-01.hl7",
        &["MSH(1)-9-3: 103 Table value not found: MSH-9-3 SIU_S15 is not the structure of SIU^S15 (SIU_S12) (W)"],
    ),
    (
        "SIU-S16-01.hl7",
        &["MSH(1)-9-3: 103 Table value not found: MSH-9-3 SIU_S16 is not the structure of SIU^S16 (SIU_S12) (W)"],
    ),
    (
        "SIU-S17-01.hl7",
        &["MSH(1)-9-3: 103 Table value not found: MSH-9-3 SIU_S17 is not the structure of SIU^S17 (SIU_S12) (W)"],
    ),
    (
        "SIU-S26-01.hl7",
        &["MSH(1)-9-3: 103 Table value not found: MSH-9-3 SIU_S26 is not the structure of SIU^S26 (SIU_S12) (W)"],
    ),
    // `RXA|0|1|20210818||...`: RXA-4 empty, as in the immunization sample.
    ("VXU-V04-01.hl7", &["RXA(1)-4: 101 Required field missing: RXA-4 is required (E)"]),
];

#[test]
fn every_fixture_validates_or_yields_the_issues_checked_by_hand() {
    for (name, bytes) in fixtures() {
        let msg = Message::parse(bytes).unwrap();
        let issues: Vec<String> = hl7v2::validate::validate(&msg).iter().map(|i| i.to_string()).collect();
        let expected: Vec<String> = EXPECTED_ISSUES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, e)| e.iter().map(|s| s.to_string()).collect())
            .unwrap_or_default();
        assert_eq!(issues, expected, "{name}");
    }
    // Every listed fixture exists (a renamed file must not silently pass).
    let names: Vec<String> = fixtures().into_iter().map(|(n, _)| n).collect();
    for (n, _) in EXPECTED_ISSUES {
        assert!(names.iter().any(|x| x == n), "{n} is not a fixture");
    }
}

#[test]
fn fixture_issues_become_err_segments_in_the_ack() {
    use hl7v2::ack::{Ack, AckCode, AckMode};
    let msg = fixture("ADT04-23.hl7");
    let issues = hl7v2::validate::validate(&msg);
    assert_eq!(hl7v2::validate::outcome(&issues), hl7v2::ack::Outcome::Errored);
    let code = AckMode::of(&msg).immediate(hl7v2::validate::outcome(&issues)).unwrap();
    assert_eq!(code, AckCode::ApplicationError);
    let ack = Ack::new(code, "ACK9", "20261121120000").issues(&issues).for_message(&msg);
    // 2.3: the ELD layout in ERR-1, MSA-6 from the first issue.
    assert_eq!(
        String::from_utf8_lossy(ack.as_bytes()),
        "MSH|^~\\&|TESTSYSTEM|TESTFACILITY|NES|NINTENDO|20261121120000||ACK^A04|ACK9|P|2.3\r\
         MSA|AE|Q123456789T123456789X123456|IN1-3 is required|||101^Required field missing^HL70357\r\
         ERR|IN1^1^3^101&Required field missing&HL70357\r\
         ERR|IN1^2^3^101&Required field missing&HL70357\r"
    );
}

//! Feeds arbitrary bytes to everything a receiver does with untrusted input:
//! parse, walk and decode every node, validate, acknowledge, edit, split as a
//! batch, and deframe as MLLP. Any panic is a bug.
#![no_main]

use bytes::BytesMut;
use hl7v2::ack::{Ack, AckCode};
use hl7v2::mllp::MllpCodec;
use hl7v2::{Delimiters, Message, escape};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    match Message::parse(data) {
        Ok(mut msg) => {
            assert_eq!(msg.encode(), data, "unchanged message must round-trip");
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
            let _ = msg.message_type();
            let _ = msg.get("MSH-9-2");
            let issues = hl7v2::validate::validate(&msg);
            let ack = Ack::new(AckCode::ApplicationError, "ACK", "20261121").issues(&issues).for_message(&msg);
            assert!(Message::parse(ack.encode()).is_ok(), "ACK must parse");
            let _ = msg.set("PID-5(2)-1-2", "x^y");
            let _ = msg.set_raw("OBX(3)-5", b"1~2");
            let _ = msg.remove_segment(1);
            assert!(Message::parse(msg.encode()).is_ok(), "edited message must parse");
        }
        Err(e) => {
            assert!(e.offset() <= data.len());
            let nak = Ack::new(AckCode::ApplicationReject, "NAK", "20261121").for_parse_error(&e, data);
            assert!(Message::parse(nak.encode()).is_ok(), "NAK must parse");
        }
    }
    let _ = hl7v2::batch::BatchFile::parse(data);

    let d = Delimiters::default();
    let decoded = escape::decode(data, &d);
    let _ = escape::encode(&decoded, &d);

    let mut codec = MllpCodec::new(256);
    let mut buf = BytesMut::from(data);
    for _ in 0..data.len() + 1 {
        match codec.decode(&mut buf) {
            Ok(Some(_)) | Err(_) => continue,
            Ok(None) => break,
        }
    }
});

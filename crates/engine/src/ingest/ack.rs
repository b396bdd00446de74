//! The engine's side of acknowledgements: what the ACKs it sends say, on top
//! of `hl7v2::ack` (which builds them and reads no clock).
//!
//! Every ACK gets a fresh MSH-10 (from the ingest path's counter) and MSH-7
//! = now in UTC. Texts name positions and limits, never message content.

use chrono::Utc;
use hl7v2::ack::{Ack, AckCode};
use hl7v2::{ErrorCode, Issue, Message, ParseError, Severity};

/// MSH-7 of our ACKs: now, UTC, to the millisecond.
fn timestamp() -> String {
    dtm(Utc::now())
}

/// `YYYYMMDDHHMMSS.sss+0000`, written digit by digit: every ACK needs one,
/// and chrono's `format` parses its format string on each call.
fn dtm(now: chrono::DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    let parts = [
        (now.year().clamp(0, 9999) as u32, 4),
        (now.month(), 2),
        (now.day(), 2),
        (now.hour(), 2),
        (now.minute(), 2),
        (now.second(), 2),
    ];
    let mut out = String::with_capacity(23);
    for (value, width) in parts {
        push_digits(&mut out, value, width);
    }
    out.push('.');
    // A leap second shows as 1000 ms or more in chrono: keep three digits.
    push_digits(&mut out, now.timestamp_subsec_millis().min(999), 3);
    out.push_str("+0000");
    out
}

/// The last `width` decimal digits of `value`, zero-padded.
fn push_digits(out: &mut String, value: u32, width: u32) {
    for k in (0..width).rev() {
        let digit = (value / 10u32.pow(k)) % 10;
        out.push(char::from(b'0' + digit as u8));
    }
}

/// Validation of a parsed message (header, structure, data types) and what
/// the issues amount to: accepted (none, or warnings only), errored
/// (content errors: AE) or rejected (unsupported type, event, processing id
/// or version: AR).
pub(super) fn validate(message: &Message) -> (Vec<Issue>, hl7v2::ack::Outcome) {
    let issues = hl7v2::validate::validate(message);
    let outcome = hl7v2::validate::outcome(&issues);
    (issues, outcome)
}

/// Under `validation = "accept"` the problems travel back as warnings, so
/// the ACK says AA while the sender still learns what to fix.
pub(super) fn as_warnings(issues: Vec<Issue>) -> Vec<Issue> {
    issues.into_iter().map(|i| Issue { severity: Severity::Warning, ..i }).collect()
}

/// An ACK for `message` with `code` and one ERR per issue.
pub(super) fn build(message: &Message, code: AckCode, issues: &[Issue], control_id: &str) -> Vec<u8> {
    let ts = timestamp();
    Ack::new(code, control_id, &ts).issues(issues).for_message(message).into_bytes()
}

/// A NAK for bytes that did not parse: it acknowledges the MSH when that
/// was readable (so MSA-2 echoes MSH-10), else whatever could be recovered.
pub(super) fn for_parse_error(error: &ParseError, input: &[u8], code: AckCode, control_id: &str) -> Vec<u8> {
    let ts = timestamp();
    Ack::new(code, control_id, &ts).for_parse_error(error, input).into_bytes()
}

/// The AE/CE answered when the store could not take a valid message: the
/// sender should send it again.
pub(super) fn store_failure(message: &Message, code: AckCode, control_id: &str) -> Vec<u8> {
    let issues = [Issue::error(
        None,
        ErrorCode::ApplicationInternalError,
        "the message could not be stored; send it again later",
    )];
    build(message, code, &issues, control_id)
}

/// The AE/CE answered while the channel is stopped from the API: the
/// sender should send it again later.
pub(super) fn channel_stopped(message: &Message, code: AckCode, control_id: &str) -> Vec<u8> {
    let issues = [Issue::error(
        None,
        ErrorCode::ApplicationInternalError,
        "the channel is stopped; send the message again later",
    )];
    build(message, code, &issues, control_id)
}

/// The AR answered to a frame over the size limit. `head` is the start of
/// the discarded frame: when its MSH is there, the NAK echoes its MSH-10 so
/// the sender can tell which message was refused.
pub(super) fn oversized_nak(head: &[u8], max: usize, control_id: &str) -> Vec<u8> {
    let ts = timestamp();
    let text = format!("the message is larger than the limit of {max} bytes");
    let issues = [Issue::error(None, ErrorCode::ApplicationInternalError, text)];
    Ack::new(AckCode::ApplicationReject, control_id, &ts).issues(&issues).for_unreadable(head).into_bytes()
}

/// MSA-1 of an ACK we stored earlier.
pub(super) fn code_of(ack: &[u8]) -> Option<AckCode> {
    let parsed = Message::parse(ack).ok()?;
    AckCode::parse(&parsed.get("MSA-1")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_written_like_chrono_format() {
        for text in ["2026-11-21T09:05:07.042Z", "1999-01-02T23:59:59.999Z", "2026-03-04T00:00:00Z"] {
            let t = chrono::DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc);
            assert_eq!(dtm(t), t.format("%Y%m%d%H%M%S%.3f+0000").to_string(), "{text}");
        }
    }

    #[test]
    fn timestamps_are_hl7_dtm_in_utc() {
        let ts = timestamp();
        assert_eq!(ts.len(), "20261121120000.000+0000".len(), "{ts}");
        assert!(ts.ends_with("+0000"));
    }

    #[test]
    fn oversized_nak_echoes_the_control_id_it_could_read() {
        let head = b"MSH|^~\\&|LAB|HOSP|EHR|CLINIC|20261121||ORU^R01|BIG1|P|2.5.1\rOBX|1|ED|";
        let nak = oversized_nak(head, 1024, "K1");
        let nak = Message::parse(nak).unwrap();
        assert_eq!(nak.get("MSA-1").as_deref(), Some("AR"));
        assert_eq!(nak.get("MSA-2").as_deref(), Some("BIG1"));
        assert_eq!(code_of(nak.as_bytes()), Some(AckCode::ApplicationReject));
    }

    #[test]
    fn store_failure_is_an_error_the_sender_may_retry() {
        let msg = Message::parse("MSH|^~\\&|A|B|C|D|20261121||ADT^A01|X1|P|2.5.1\rPID|1||123").unwrap();
        let nak = store_failure(&msg, AckCode::ApplicationError, "K2");
        let nak = Message::parse(nak).unwrap();
        assert_eq!(nak.get("MSA-1").as_deref(), Some("AE"));
        assert_eq!(nak.get("MSA-2").as_deref(), Some("X1"));
        assert_eq!(nak.get("ERR-3-1").as_deref(), Some("207"));
    }
}

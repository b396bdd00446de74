//! ORU^R01 -> FHIR -> ORU^R01 keeps patient identifiers, names, birth date,
//! sex, observation codes, values, units, abnormal flags and result status.

use std::collections::BTreeSet;

use convert::{TargetMessage, fhir_to_hl7, hl7_to_fhir_text};
use hl7v2::Message;

use crate::support::fixtures;
use crate::to_v2::assert_valid;

/// The comparable content of one OBX: code, values, units, flags, status.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Result_ {
    code: String,
    values: Vec<String>,
    units: String,
    flags: Vec<String>,
    status: String,
}

fn text(seg: &hl7v2::Segment<'_>, f: usize, c: usize) -> String {
    seg.field(f)
        .and_then(|f| f.repetition(1))
        .and_then(|r| r.component(c))
        .map(|c| c.text().into_owned())
        .unwrap_or_default()
}

/// Numbers compare as numbers (FHIR decimals drop trailing zeros), and an
/// SN without comparator or range equals the NM it comes back as.
fn normalise(kind: &str, r: &hl7v2::Repetition<'_>) -> String {
    let comp = |n| r.component(n).map(|c| c.text().into_owned()).unwrap_or_default();
    let number = |v: &str| v.trim().parse::<f64>().map(|n| format!("{n}")).unwrap_or_else(|_| v.to_string());
    match kind {
        "NM" => number(&r.text()),
        "SN" => format!(
            "{}{}{}{}",
            comp(1),
            number(&comp(2)),
            comp(3),
            if comp(4).is_empty() { String::new() } else { number(&comp(4)) }
        ),
        _ => r.text().into_owned(),
    }
}

/// The statuses FHIR's ObservationStatus can tell apart: the others
/// collapse (I and O are `registered` like R; S is `preliminary` like P;
/// U is `final` like F; D is `entered-in-error` like W; N is `cancelled`
/// like X).
fn status_class(s: &str) -> &str {
    match s {
        "I" | "O" => "R",
        "S" => "P",
        "U" => "F",
        "D" => "W",
        "N" => "X",
        other => other,
    }
}

/// Values per code, merged over repetitions and over the OBX a repetition
/// becomes, so `OBX|NM|code||60~120` equals two OBX with 60 and 120.
fn results(msg: &Message) -> BTreeSet<Result_> {
    let mut out: Vec<Result_> = Vec::new();
    for obx in msg.segments_named("OBX") {
        let kind = text(&obx, 2, 1);
        if kind == "ED" || kind == "RP" || kind.is_empty() {
            continue;
        }
        let values: Vec<String> = obx
            .field(5)
            .map(|f| {
                f.repetitions()
                    .filter(|r| !r.raw().is_empty())
                    .map(|r| match kind.as_str() {
                        // Coded values compare by code, numbers by value.
                        "CWE" | "CE" | "CNE" => r.component(1).map(|c| c.text().into_owned()).unwrap_or_default(),
                        _ => normalise(&kind, &r),
                    })
                    .collect()
            })
            .unwrap_or_default();
        if values.is_empty() {
            continue;
        }
        let flags: Vec<String> = obx
            .field(8)
            .map(|f| {
                f.repetitions().map(|r| r.component(1).map(|c| c.text().into_owned()).unwrap_or_default()).collect()
            })
            .unwrap_or_default();
        let r = Result_ {
            code: text(&obx, 3, 1),
            values,
            // Units belong to quantities: FHIR has none for coded or text values.
            units: if matches!(kind.as_str(), "NM" | "SN") { text(&obx, 6, 1) } else { String::new() },
            flags: flags.into_iter().filter(|f| !f.is_empty()).collect(),
            status: status_class(&text(&obx, 11, 1)).to_string(),
        };
        // Merge an OBX that continues the previous one (same code and
        // sub-id group): FHIR components come back as separate OBX.
        match out.iter_mut().rev().find(|p| p.code == r.code && p.status == r.status && p.units == r.units) {
            Some(prev) if text(&obx, 4, 1).chars().all(|c| c.is_ascii_digit()) && !text(&obx, 4, 1).is_empty() => {
                prev.values.extend(r.values)
            }
            _ => out.push(r),
        }
    }
    out.into_iter().collect()
}

fn identifiers(msg: &Message) -> BTreeSet<(String, String, String)> {
    let pid = msg.segment("PID").unwrap();
    pid.field(3)
        .map(|f| {
            f.repetitions()
                .map(|r| {
                    let c = |n| r.component(n).map(|c| c.text().into_owned()).unwrap_or_default();
                    (c(1), c(4), c(5))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn round_trip(file: &str) {
    let original_text = std::fs::read_to_string(fixtures().join("hl7v2").join(file)).unwrap();
    let original = Message::parse(original_text.as_bytes()).unwrap();
    let bundle = hl7_to_fhir_text(&original_text, &Default::default()).unwrap();
    let back = fhir_to_hl7(&bundle, TargetMessage::OruR01, &Default::default()).unwrap();
    assert_valid(&back, file);

    // Every original PID-3 identifier, with its authority and type, is back
    // (PID-2 and PID-4, deprecated, come back in PID-3 too).
    let before = identifiers(&original);
    let after = identifiers(&back);
    for id in &before {
        let found = after.iter().any(|a| a.0 == id.0 && a.2 == id.2 && (a.1 == id.1 || id.1.contains(&a.1)));
        assert!(found, "{file}: identifier {id:?} lost; back: {after:?}");
    }
    for path in ["PID-5-1", "PID-5-2", "PID-8"] {
        assert_eq!(original.get(path), back.get(path), "{file}: {path}");
    }
    let birth = |m: &Message| m.get("PID-7").map(|b| b.chars().take(8).collect::<String>());
    assert_eq!(birth(&original), birth(&back), "{file}: birth date");

    let before = results(&original);
    let after = results(&back);
    assert!(!before.is_empty(), "{file}: the fixture has results");
    assert_eq!(before, after, "{file}: observation codes, values, units, flags, status");
}

#[test]
fn oru_round_trip_keeps_patient_and_results_dense_sample() {
    round_trip("ORU-R01-01.hl7");
}

#[test]
fn oru_round_trip_keeps_patient_and_results_lab() {
    round_trip("LAB-ORU-1.hl7");
}

#[test]
fn oru_round_trip_keeps_patient_and_results_cbc() {
    round_trip("LRI_2.0-NG_CBC_Typ_Message.hl7");
}

#[test]
fn oru_round_trip_keeps_patient_and_results_rmgead() {
    round_trip("ORU-R01-RMGEAD.hl7");
}

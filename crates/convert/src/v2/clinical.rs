//! Orders, results, documents, appointments and immunizations: ORU^R01
//! (DiagnosticReport, Observation, Specimen), ORM^O01 (ServiceRequest),
//! MDM^T02/T06 (DocumentReference), SIU^S12-S26 (Appointment) and VXU^V04
//! (Immunization).
//!
//! Each walks the message's segments in order, keeping the group it is in
//! (the OBR an OBX belongs to, the SPM a specimen OBX follows), because
//! HL7 v2 expresses grouping only by position.

use std::borrow::Cow;

use super::json::{self, Json};
use base64::Engine as _;

use super::bundle::{Ctx, Ref, search_token, stable_uuid};
use super::datatypes::{cwe, date, date_time, decimal, ei, instant, trimmed};
use super::patient::{Subject, location, organization, practitioner};
use super::view::{Msg, Node, Seg};
use crate::error::ConvertError;
use crate::terminology;

/// What an OBX value becomes.
enum ObxValue<'a> {
    /// `value[x]` members (and components for repetitions).
    Value(Vec<(&'static str, Json<'a>)>),
    /// An ED or RP: an Attachment, not an Observation value in R4.
    Attachment(Json<'a>),
    None,
}

fn quantity<'a>(value: Json<'a>, units: Node<'a>, opts: &crate::options::Hl7ToFhirOptions) -> Json<'a> {
    let code = units.c(1).text();
    let text = units.c(2).text();
    let mnemonic = units.c(3).text();
    let unit = if text.is_empty() { code.clone() } else { text };
    let ucum = mnemonic.eq_ignore_ascii_case("UCUM")
        || (mnemonic.is_empty() && terminology::looks_ucum(&code))
        || opts.code_systems.get(mnemonic.as_ref()).is_some_and(|s| s == "http://unitsofmeasure.org");
    if ucum && !code.is_empty() {
        obj! {"value" => value, "unit" => unit, "system" => "http://unitsofmeasure.org", "code" => code}
    } else {
        obj! {"value" => value, "unit" => unit}
    }
}

/// SN (structured numeric): `comparator^num1^separator^num2`.
fn structured_numeric<'a>(
    n: Node<'a>,
    units: Node<'a>,
    opts: &crate::options::Hl7ToFhirOptions,
) -> Option<(&'static str, Json<'a>)> {
    let comparator = n.c(1).text();
    let num1 = n.c(2).text();
    let sep = n.c(3).text();
    let num2 = n.c(4).text();
    match (sep.as_ref(), num2.is_empty()) {
        ("", true) | ("+", true) => {
            let v = decimal(&num1)?;
            let mut q = quantity(v, units, opts);
            let comp = match comparator.as_ref() {
                "<" | "<=" | ">=" | ">" => Json::from(comparator.into_owned()),
                "" | "=" => Json::Null,
                _ => return None,
            };
            q.insert("comparator", comp);
            Some(("valueQuantity", q))
        }
        ("-", false) => Some((
            "valueRange",
            obj! {
                "low" => quantity(decimal(&num1)?, units, opts),
                "high" => quantity(decimal(&num2)?, units, opts),
            },
        )),
        (":" | "/", false) => Some((
            "valueRatio",
            obj! {
                "numerator" => obj!{"value" => decimal(&num1)?},
                "denominator" => obj!{"value" => decimal(&num2)?},
            },
        )),
        _ => None,
    }
}

/// An NM value written with a comparator (`<5`, `>=10`), as feeds do.
fn comparator_quantity<'a>(
    t: &str,
    units: Node<'a>,
    opts: &crate::options::Hl7ToFhirOptions,
) -> Option<(&'static str, Json<'a>)> {
    let t = t.trim();
    for comp in ["<=", ">=", "<", ">"] {
        if let Some(rest) = t.strip_prefix(comp) {
            let mut q = quantity(decimal(rest)?, units, opts);
            q.insert("comparator", Json::from(comp));
            return Some(("valueQuantity", q));
        }
    }
    None
}

/// A MIME type from an ED/RP type and subtype.
fn mime(kind: &str, subtype: &str) -> String {
    let sub = subtype.to_ascii_lowercase();
    if sub.contains('/') {
        return sub;
    }
    match (kind.to_ascii_uppercase().as_str(), sub.as_str()) {
        (_, "pdf") => "application/pdf".into(),
        (_, "octet-stream") => "application/octet-stream".into(),
        (_, "rtf") => "application/rtf".into(),
        (_, "html") => "text/html".into(),
        (_, "xml") => "application/xml".into(),
        (_, "jpeg" | "jpg") => "image/jpeg".into(),
        (_, "png") => "image/png".into(),
        (_, "tiff") => "image/tiff".into(),
        (_, "gif") => "image/gif".into(),
        ("TEXT" | "TX", _) => "text/plain".into(),
        ("IMAGE" | "IM", "") => "image/*".into(),
        ("APPLICATION" | "AP", s) if !s.is_empty() => format!("application/{s}"),
        ("IMAGE" | "IM", s) => format!("image/{s}"),
        ("AUDIO" | "AU", s) if !s.is_empty() => format!("audio/{s}"),
        ("VIDEO" | "VI", s) if !s.is_empty() => format!("video/{s}"),
        _ => "application/octet-stream".into(),
    }
}

/// ED (encapsulated data) to an Attachment. The data is validated, because a
/// FHIR base64Binary that does not decode is invalid.
fn ed_attachment<'a>(n: Node<'a>, position: usize) -> Result<Json<'a>, ConvertError> {
    // The error's path, made only for an error.
    let path = || format!("OBX({position})-5");
    let content_type = mime(&n.c(2).text(), &n.c(3).text());
    let encoding = n.c(4).text().to_ascii_uppercase();
    let raw = n.c(5).whole();
    let data: String = match encoding.as_str() {
        "BASE64" | "B64" => {
            let clean: String = raw.chars().filter(|c| !c.is_whitespace()).collect();
            if clean.is_empty() {
                String::new()
            } else {
                base64::engine::general_purpose::STANDARD.decode(&clean).map_err(|e| ConvertError::Invalid {
                    path: path(),
                    reason: format!("ED data is not base64: {e}"),
                })?;
                clean
            }
        }
        "HEX" => {
            let bytes = hex::decode(raw.trim())
                .map_err(|e| ConvertError::Invalid { path: path(), reason: format!("ED data is not hex: {e}") })?;
            base64::engine::general_purpose::STANDARD.encode(bytes)
        }
        // "A" (ASCII) and anything else: the text itself.
        _ => base64::engine::general_purpose::STANDARD.encode(raw.as_bytes()),
    };
    Ok(obj! {"contentType" => content_type, "data" => data})
}

fn obx_value<'a>(
    obx: &Seg<'a>,
    position: usize,
    opts: &crate::options::Hl7ToFhirOptions,
) -> Result<ObxValue<'a>, ConvertError> {
    let kind = obx.f(2).text();
    let field = obx.f(5);
    let units = obx.f(6).first();
    let reps: Vec<Node<'a>> = field.reps().collect();
    if reps.is_empty() {
        return Ok(ObxValue::None);
    }
    let one = |n: Node<'a>| -> Option<(&'static str, Json<'a>)> {
        match kind.as_ref() {
            "NM" => match decimal(&n.text()) {
                Some(v) => Some(("valueQuantity", quantity(v, units, opts))),
                // Feeds put "<5" in NM: read it as SN rather than drop it.
                None => {
                    comparator_quantity(&n.text(), units, opts).or_else(|| Some(("valueString", Json::from(n.whole()))))
                }
            },
            "SN" => structured_numeric(n, units, opts).or_else(|| Some(("valueString", Json::from(n.whole())))),
            "CE" | "CWE" | "CNE" | "CF" | "CV" => Some(("valueCodeableConcept", cwe(n, "", opts))),
            "DT" => Some(("valueDateTime", date(&n.text()))),
            "DTM" | "TS" => Some(("valueDateTime", date_time(&n.text(), opts))),
            "TM" => {
                let t = n.text();
                let t = t.trim();
                let ok = t.len() >= 4 && t[..4].bytes().all(|b| b.is_ascii_digit());
                ok.then(|| {
                    let sec = t.get(4..6).filter(|s| s.bytes().all(|b| b.is_ascii_digit())).unwrap_or("00");
                    ("valueTime", Json::from(format!("{}:{}:{sec}", &t[..2], &t[2..4])))
                })
            }
            _ => Some(("valueString", Json::from(n.whole()))),
        }
    };
    match kind.as_ref() {
        "ED" => return ed_attachment(reps[0], position).map(ObxValue::Attachment),
        "RP" => {
            let n = reps[0];
            let url = n.c(1).text();
            return Ok(ObxValue::Attachment(
                obj! {"contentType" => mime(&n.c(3).text(), &n.c(4).text()), "url" => url},
            ));
        }
        // Text types: repetitions are lines of one text.
        "ST" | "TX" | "FT" | "" => {
            let mut text = reps[0].whole();
            for r in &reps[1..] {
                let t = text.to_mut();
                t.push('\n');
                t.push_str(&r.whole());
            }
            return Ok(ObxValue::Value(vec![("valueString", Json::from(text))]));
        }
        _ => {}
    }
    let mut out = Vec::new();
    for (i, r) in reps.into_iter().enumerate() {
        if let Some((k, v)) = one(r) {
            // The first repetition is the value; further ones become
            // components with the same code (Observation has one value[x]).
            out.push((if i == 0 { k } else { "component" }, if i == 0 { v } else { Json::Obj(vec![(k, v)]) }));
        }
    }
    Ok(ObxValue::Value(out))
}

/// OBX-7 reference range: `low-high`, `<high`, `>low`, or text.
fn reference_range<'a>(text: Cow<'a, str>, units: Node<'a>, opts: &crate::options::Hl7ToFhirOptions) -> Json<'a> {
    let t = trimmed(text);
    if t.is_empty() {
        return Json::Null;
    }
    let simple = |v: Json<'a>| {
        let mut q = quantity(v, units, opts);
        q.remove("comparator");
        q
    };
    if let Some((lo, hi)) = t.split_once('-').filter(|(lo, _)| !lo.trim().is_empty())
        && let (Some(l), Some(h)) = (decimal(lo), decimal(hi))
    {
        return obj! {"low" => simple(l), "high" => simple(h), "text" => t.clone()};
    }
    for (prefix, key) in [("<=", "high"), ("<", "high"), (">=", "low"), (">", "low")] {
        if let Some(rest) = t.strip_prefix(prefix)
            && let Some(v) = decimal(rest)
        {
            return Json::Obj(vec![(key, simple(v)), ("text", Json::Str(t.clone()))]);
        }
    }
    obj! {"text" => t}
}

fn interpretation<'a>(n: Node<'a>, opts: &'a crate::options::Hl7ToFhirOptions) -> Json<'a> {
    let code = n.c(1).text();
    if code.is_empty() {
        return Json::Null;
    }
    if let Some(over) = opts.table("0078", &code) {
        return obj! {"coding" => arr![obj!{"system" => terminology::INTERPRETATION_SYSTEM, "code" => over}]};
    }
    let mnemonic = n.c(3).text();
    let v2_flag = mnemonic.is_empty() || mnemonic.eq_ignore_ascii_case("HL70078");
    if v2_flag && terminology::interpretation_known(&code) {
        obj! {
            "coding" => arr![
                obj!{
                    "system" => terminology::INTERPRETATION_SYSTEM,
                    "code" => code,
                    "display" => n.c(2).text(),
                },
            ],
        }
    } else {
        cwe(n, "", opts)
    }
}

/// NTE-3's repetitions as lines of one text (borrowed when there is one).
fn nte_text<'a>(seg: &Seg<'a>) -> Cow<'a, str> {
    let mut reps = seg.f(3).reps();
    let Some(first) = reps.next() else { return Cow::Borrowed("") };
    let mut text = first.whole();
    for r in reps {
        let t = text.to_mut();
        t.push('\n');
        t.push_str(&r.whole());
    }
    text
}

fn refs<'a>(subject: &Subject) -> (Json<'a>, Json<'a>) {
    (subject.patient.reference(), subject.encounter.as_ref().map(Ref::reference).unwrap_or(Json::Null))
}

/// One OBX as an Observation. Returns its reference, or the attachment for
/// ED/RP values.
enum ObxOut<'a> {
    Observation(Ref),
    Attachment(Json<'a>),
    Nothing,
}

struct ObsContext<'a> {
    group_key: String,
    default_time: Option<Node<'a>>,
    specimen: Option<Ref>,
    part_of: Option<Ref>,
}

fn observation<'a>(
    ctx: &mut Ctx<'a>,
    subject: &Subject,
    obx: &Seg<'a>,
    notes: &[Cow<'a, str>],
    group: &ObsContext<'_>,
    position: usize,
) -> Result<ObxOut<'a>, ConvertError> {
    let opts = ctx.opts;
    let code = cwe(obx.f(3).first(), "", opts);
    let value = obx_value(obx, position, opts)?;
    let values = match value {
        ObxValue::Attachment(a) => return Ok(ObxOut::Attachment(a)),
        ObxValue::None => Vec::new(),
        ObxValue::Value(v) => v,
    };
    if code.is_null() {
        if values.is_empty() {
            return Ok(ObxOut::Nothing);
        }
        return Err(ConvertError::Missing { path: format!("OBX({position})-3 (observation identifier)") });
    }
    let mut performers: Vec<Json<'a>> =
        obx.f(16).reps().filter_map(|r| practitioner(ctx, r)).map(|r| r.reference()).collect();
    performers.extend(organization(ctx, obx.f(23).first()).map(|r| r.reference()));
    let opts = ctx.opts;
    let (patient, encounter) = refs(subject);
    let status_code = obx.f(11).text();
    let status = opts.table("0085", &status_code).unwrap_or_else(|| terminology::observation_status(&status_code));
    let mut effective = date_time(&obx.f(14).text(), opts);
    if effective.is_null()
        && let Some(t) = group.default_time
    {
        effective = date_time(&t.text(), opts);
    }
    let units = obx.f(6).first();
    let mut resource = obj! {
        "identifier" => arr![ei(obx.f(21).first(), "", opts)],
        "partOf" => group.part_of.as_ref().map(|r| arr![r.reference()]),
        "status" => status,
        "code" => code,
        "subject" => patient,
        "encounter" => encounter,
        "effectiveDateTime" => effective,
        "performer" => performers,
    };
    let Json::Obj(obj) = &mut resource else {
        return Err(ConvertError::Invalid {
            path: format!("OBX({position})"),
            reason: "internal: observation is not an object".into(),
        });
    };
    let mut components = Vec::new();
    for (k, v) in values {
        if k == "component" {
            let mut c = obj! {"code" => obj.iter().find(|(k, _)| *k == "code").map(|(_, v)| v.clone())};
            if let (Json::Obj(c), Json::Obj(vals)) = (&mut c, v) {
                for (k, v) in vals {
                    json::insert(c, k, v);
                }
            }
            components.push(c);
        } else {
            json::insert(obj, k, v);
        }
    }
    json::insert(obj, "interpretation", Json::Arr(obx.f(8).reps().map(|r| interpretation(r, opts)).collect()));
    json::insert(obj, "note", Json::Arr(notes.iter().map(|n| obj! {"text" => n.clone()}).collect()));
    json::insert(obj, "bodySite", cwe(obx.f(20).first(), "", opts));
    json::insert(obj, "method", cwe(obx.f(17).first(), "", opts));
    json::insert(obj, "specimen", group.specimen.as_ref().map(Ref::reference).unwrap_or(Json::Null));
    json::insert(obj, "referenceRange", arr![reference_range(obx.f(7).text(), units, opts)]);
    json::insert(obj, "component", Json::Arr(components));
    let mut key =
        [&*group.group_key, "|OBX|", &*obx.f(3).c(1).text(), "|", &*obx.f(3).c(3).text(), "|", &*obx.f(4).text()]
            .concat();
    // A second OBX with the same code and no distinguishing sub-id (OBX-4),
    // such as two comment lines or a repeated measurement, is another
    // Observation: without its position in the identity it would hash to the
    // first one's id and be dropped as a duplicate. The first keeps the plain
    // identity, so ids of messages without repeats do not change.
    let (mut uuid, seen) = ctx.find("Observation", &key);
    if seen.is_some() {
        key.push_str(&format!("|{position}"));
        uuid = stable_uuid("Observation", &key);
    }
    Ok(ObxOut::Observation(ctx.add_as(uuid, "Observation", None, resource)))
}

/// Collects OBX segments with their NTEs from `segments[start..]` until a
/// segment that is neither OBX, NTE nor PRT... of the group.
struct Pending<'m> {
    obx: Seg<'m>,
    notes: Vec<Cow<'m, str>>,
    position: usize,
}

fn specimen<'a>(ctx: &mut Ctx<'a>, subject: &Subject, spm: &Seg<'a>, group_key: &str) -> Ref {
    let opts = ctx.opts;
    let ids = spm.f(2).first();
    // SPM-2 is an EIP: placer EI in component 1, filler EI in component 2,
    // each with its sub-components.
    let ei_of = |c: usize, kind: &'static str| {
        let n = ids.c(c);
        let value = n.s(1).text();
        if value.is_empty() {
            return Json::Null;
        }
        obj! {
            "type" => Json::IdType(kind.into()),
            "system" => super::datatypes::authority_system(&n.s(2).text(), &n.s(3).text(), &n.s(4).text(), opts),
            "value" => value,
        }
    };
    let placer = ei_of(1, "PLAC");
    let filler = ei_of(2, "FILL");
    let collected = spm.f(17).first();
    let (start, end) = (date_time(&collected.c(1).text(), opts), date_time(&collected.c(2).text(), opts));
    let collection = obj! {
        "collectedDateTime" => if end.is_null() { start.clone() } else { Json::Null },
        "collectedPeriod" => if end.is_null() { Json::Null } else { obj!{"start" => start, "end" => end} },
        "method" => cwe(spm.f(7).first(), "0488", opts),
        "bodySite" => cwe(spm.f(8).first(), "", opts),
    };
    let key = specimen_key(spm, group_key);
    let token = search_token(Some(if filler.is_null() { &placer } else { &filler }));
    let resource = obj! {
        "identifier" => arr![placer, filler],
        "type" => cwe(spm.f(4).first(), "0487", opts),
        "subject" => subject.patient.reference(),
        "receivedTime" => date_time(&spm.f(18).text(), opts),
        "collection" => collection,
        "condition" => spm.f(24).reps().map(|r| cwe(r, "0493", opts)).collect::<Vec<_>>(),
        "note" => arr![obj!{"text" => spm.f(14).whole()}],
    };
    ctx.add_token("Specimen", &key, token, resource)
}

/// The identity of the Specimen of an SPM in the order `group_key`.
fn specimen_key(spm: &Seg<'_>, group_key: &str) -> String {
    let ids = spm.f(2).first();
    [group_key, "|SPM|", &*ids.c(1).s(1).text(), "|", &*ids.c(2).s(1).text()].concat()
}

fn order_identifiers<'a>(
    orc: Option<&Seg<'a>>,
    obr: Option<&Seg<'a>>,
    opts: &crate::options::Hl7ToFhirOptions,
) -> (Json<'a>, Json<'a>) {
    let pick = |o: Option<Node<'a>>, b: Option<Node<'a>>, kind: &'static str| match (o, b) {
        (Some(o), _) if !o.is_empty() => ei(o.first(), kind, opts),
        (_, Some(b)) if !b.is_empty() => ei(b.first(), kind, opts),
        _ => Json::Null,
    };
    (pick(orc.map(|s| s.f(2)), obr.map(|s| s.f(2)), "PLAC"), pick(orc.map(|s| s.f(3)), obr.map(|s| s.f(3)), "FILL"))
}

fn key_of(identifier: &Json<'_>) -> String {
    [
        identifier.get("system").and_then(Json::as_str).unwrap_or(""),
        "|",
        identifier.get("value").and_then(Json::as_str).unwrap_or(""),
    ]
    .concat()
}

struct Report<'m> {
    orc: Option<Seg<'m>>,
    obr: Seg<'m>,
    index: usize,
    notes: Vec<Cow<'m, str>>,
    results: Vec<Json<'m>>,
    specimens: Vec<Json<'m>>,
    forms: Vec<Json<'m>>,
    key: String,
    identifier: Json<'m>,
    placer: Json<'m>,
    /// The Specimen of the order's first SPM, if any: ORU^R01 2.5.1 puts
    /// the SPECIMEN group after the order's OBXs, whose Observations name
    /// it (they are written before the SPM is read).
    first_specimen: Option<Ref>,
}

fn finish_report<'a>(ctx: &mut Ctx<'a>, subject: &Subject, r: Report<'a>) {
    let opts = ctx.opts;
    let obr = &r.obr;
    let status_code = obr.f(25).text();
    let status = opts.table("0123", &status_code).unwrap_or_else(|| terminology::report_status(&status_code));
    let mut code = cwe(obr.f(4).first(), "", opts);
    if code.is_null() {
        code = obj! {"text" => "unknown"};
    }
    let (patient, encounter) = refs(subject);
    let (start, end) = (date_time(&obr.f(7).text(), opts), date_time(&obr.f(8).text(), opts));
    let token = search_token(Some(&r.identifier));
    let resource = obj! {
        "identifier" => arr![r.placer, r.identifier],
        "status" => status,
        "category" => arr![cwe(obr.f(24).first(), "0074", opts)],
        "code" => code,
        "subject" => patient,
        "encounter" => encounter,
        "effectiveDateTime" => if end.is_null() { start.clone() } else { Json::Null },
        "effectivePeriod" => if end.is_null() { Json::Null } else { obj!{"start" => start, "end" => end} },
        "issued" => instant(&obr.f(22).text(), opts),
        "specimen" => r.specimens,
        "result" => r.results,
        "conclusion" => r.notes.join("\n"),
        "presentedForm" => r.forms,
    };
    let _ = (r.orc, r.index);
    ctx.add_token("DiagnosticReport", &r.key, token, resource);
}

/// A standalone DocumentReference for an ED/RP OBX outside any OBR.
fn attachment_document<'a>(ctx: &mut Ctx<'a>, subject: &Subject, obx: &Seg<'a>, attachment: Json<'a>, position: usize) {
    let opts = ctx.opts;
    let (patient, encounter) = refs(subject);
    let key = format!("{}|OBX-ED|{}|{}", subject.key, position, obx.f(3).c(1).text());
    let resource = obj! {
        "status" => "current",
        "type" => cwe(obx.f(3).first(), "", opts),
        "subject" => patient,
        "content" => arr![obj!{"attachment" => attachment}],
        "context" => obj!{"encounter" => arr![encounter]},
    };
    ctx.add("DocumentReference", &key, None, resource);
}

/// ORU^R01: one DiagnosticReport per OBR with its Observations and
/// Specimens; OBX before the first OBR are patient-level Observations.
pub(crate) fn oru<'a>(ctx: &mut Ctx<'a>, msg: &Msg<'a>, subject: &Subject) -> Result<(), ConvertError> {
    let mut report: Option<Report<'_>> = None;
    let mut orc: Option<Seg<'a>> = None;
    let mut pending: Option<Pending<'_>> = None;
    let mut spm: Option<Ref> = None;
    let mut obx_count = 0usize;
    let mut obr_count = 0usize;

    // Flushes the pending OBX into the current report (or standalone).
    fn flush<'a>(
        ctx: &mut Ctx<'a>,
        subject: &Subject,
        pending: &mut Option<Pending<'a>>,
        report: &mut Option<Report<'a>>,
        spm: &Option<Ref>,
    ) -> Result<(), ConvertError> {
        let Some(p) = pending.take() else {
            return Ok(());
        };
        let group = match report.as_ref() {
            Some(r) => ObsContext {
                group_key: r.key.clone(),
                default_time: Some(r.obr.f(7)),
                // Before the order's first SPM, that one's specimen.
                specimen: spm.clone().or_else(|| r.first_specimen.clone()),
                part_of: None,
            },
            None => ObsContext { group_key: subject.key.clone(), default_time: None, specimen: None, part_of: None },
        };
        match observation(ctx, subject, &p.obx, &p.notes, &group, p.position)? {
            ObxOut::Observation(r) => {
                if let Some(rep) = report.as_mut() {
                    rep.results.push(r.reference());
                }
            }
            ObxOut::Attachment(a) => match report.as_mut() {
                Some(rep) => rep.forms.push(a),
                None => attachment_document(ctx, subject, &p.obx, a, p.position),
            },
            ObxOut::Nothing => {}
        }
        Ok(())
    }

    for (at, seg) in msg.segments.iter().enumerate() {
        match seg.name {
            "ORC" => {
                flush(ctx, subject, &mut pending, &mut report, &spm)?;
                orc = Some(*seg);
            }
            "OBR" => {
                flush(ctx, subject, &mut pending, &mut report, &spm)?;
                if let Some(r) = report.take() {
                    finish_report(ctx, subject, r);
                }
                spm = None;
                obr_count += 1;
                let (placer, filler) = order_identifiers(orc.as_ref(), Some(seg), ctx.opts);
                let identifier = if filler.is_null() { placer.clone() } else { filler };
                let key = if identifier.is_null() {
                    [&*subject.key, "|OBR|", &*seg.f(4).c(1).text(), "|", &*seg.f(7).text()].concat()
                } else {
                    key_of(&identifier)
                };
                let placer = if key_of(&placer) == key_of(&identifier) { Json::Null } else { placer };
                let first_specimen = msg.segments[at + 1..]
                    .iter()
                    .take_while(|s| s.name != "OBR")
                    .find(|s| s.name == "SPM")
                    .map(|spm| Ref::of(stable_uuid("Specimen", &specimen_key(spm, &key))));
                report = Some(Report {
                    orc: orc.take(),
                    obr: *seg,
                    index: obr_count,
                    notes: Vec::new(),
                    results: Vec::new(),
                    specimens: Vec::new(),
                    forms: Vec::new(),
                    key,
                    identifier,
                    placer,
                    first_specimen,
                });
            }
            "OBX" => {
                flush(ctx, subject, &mut pending, &mut report, &spm)?;
                obx_count += 1;
                pending = Some(Pending { obx: *seg, notes: Vec::new(), position: obx_count });
            }
            "NTE" => match (pending.as_mut(), report.as_mut()) {
                (Some(p), _) => p.notes.push(nte_text(seg)),
                (None, Some(r)) => r.notes.push(nte_text(seg)),
                _ => {}
            },
            "SPM" => {
                flush(ctx, subject, &mut pending, &mut report, &spm)?;
                if let Some(r) = report.as_mut() {
                    let s = specimen(ctx, subject, seg, &r.key);
                    r.specimens.push(s.reference());
                    spm = Some(s);
                }
            }
            // PRT, TQ1, CTD, FT1, CTI, TXA ... carry nothing this mapping uses.
            _ => {}
        }
    }
    flush(ctx, subject, &mut pending, &mut report, &spm)?;
    if let Some(r) = report.take() {
        finish_report(ctx, subject, r);
    }
    if obr_count == 0 && obx_count == 0 {
        return Err(ConvertError::Missing { path: "OBR segment (ORU^R01 has no result)".into() });
    }
    Ok(())
}

/// OBX segments of a message without orders (ADT, VXU's patient level):
/// standalone Observations about the patient and visit, with their NTEs.
pub(crate) fn patient_observations<'a>(
    ctx: &mut Ctx<'a>,
    msg: &Msg<'a>,
    subject: &Subject,
) -> Result<(), ConvertError> {
    let group = ObsContext { group_key: subject.key.clone(), default_time: None, specimen: None, part_of: None };
    let segs = &msg.segments;
    let mut position = 0;
    for (i, seg) in segs.iter().enumerate() {
        if seg.name != "OBX" {
            continue;
        }
        position += 1;
        let notes: Vec<Cow<'a, str>> = segs[i + 1..].iter().take_while(|s| s.name == "NTE").map(nte_text).collect();
        if let ObxOut::Attachment(a) = observation(ctx, subject, seg, &notes, &group, position)? {
            attachment_document(ctx, subject, seg, a, position);
        }
    }
    Ok(())
}

fn order_status<'a>(orc: Option<&Seg<'a>>) -> &'static str {
    let Some(orc) = orc else { return "unknown" };
    match orc.f(5).text().as_ref() {
        "A" | "CM" => return "completed",
        "CA" | "DC" | "RP" => return "revoked",
        "ER" => return "entered-in-error",
        "HD" => return "on-hold",
        "IP" | "SC" => return "active",
        _ => {}
    }
    match orc.f(1).text().as_ref() {
        "NW" | "XO" | "XX" | "SC" | "SN" => "active",
        "CA" | "OC" | "DC" | "OD" | "CR" => "revoked",
        "HD" | "OH" => "on-hold",
        _ => "unknown",
    }
}

fn priority(code: &str) -> &'static str {
    match code {
        "S" => "stat",
        "A" => "asap",
        "R" => "routine",
        "T" | "P" | "C" => "urgent",
        _ => "",
    }
}

/// ORM^O01: a ServiceRequest per ORC/OBR, with the order's NTEs as notes and
/// its OBXs as supporting Observations.
pub(crate) fn orm<'a>(ctx: &mut Ctx<'a>, msg: &Msg<'a>, subject: &Subject) -> Result<(), ConvertError> {
    struct Order<'m> {
        orc: Option<Seg<'m>>,
        obr: Option<Seg<'m>>,
        tq1: Option<Seg<'m>>,
        notes: Vec<Cow<'m, str>>,
        obx: Vec<(Seg<'m>, usize)>,
    }
    let mut orders: Vec<Order<'_>> = Vec::new();
    let mut obx_count = 0;
    for seg in &msg.segments {
        match seg.name {
            "ORC" => orders.push(Order { orc: Some(*seg), obr: None, tq1: None, notes: Vec::new(), obx: Vec::new() }),
            "OBR" | "RQD" | "RXO" => match orders.last_mut() {
                Some(o) if o.obr.is_none() => o.obr = Some(*seg),
                _ => orders.push(Order { orc: None, obr: Some(*seg), tq1: None, notes: Vec::new(), obx: Vec::new() }),
            },
            "TQ1" => {
                if let Some(o) = orders.last_mut() {
                    o.tq1.get_or_insert(*seg);
                }
            }
            "NTE" => {
                if let Some(o) = orders.last_mut()
                    && o.obx.is_empty()
                {
                    o.notes.push(nte_text(seg));
                }
            }
            "OBX" => {
                obx_count += 1;
                if let Some(o) = orders.last_mut() {
                    o.obx.push((*seg, obx_count));
                }
            }
            _ => {}
        }
    }
    if orders.is_empty() {
        return Err(ConvertError::Missing { path: "ORC or OBR segment".into() });
    }
    for (n, order) in orders.iter().enumerate() {
        let opts = ctx.opts;
        let (placer, filler) = order_identifiers(order.orc.as_ref(), order.obr.as_ref(), opts);
        let identity = if !filler.is_null() { filler.clone() } else { placer.clone() };
        let key = if identity.is_null() { format!("{}|ORDER|{n}", subject.key) } else { key_of(&identity) };
        let obr = order.obr.as_ref();
        let code = obr.map(|o| cwe(o.f(4).first(), "", opts)).unwrap_or(Json::Null);
        let code = if code.is_null() {
            obj! {"text" => "unknown"}
        } else {
            code
        };
        let requester = match order.orc.as_ref().map(|o| o.f(12)).filter(|f| !f.is_empty()) {
            Some(f) => practitioner(ctx, f.first()),
            None => obr.and_then(|o| practitioner(ctx, o.f(16).first())),
        };
        let group = ObsContext { group_key: key.clone(), default_time: None, specimen: None, part_of: None };
        let mut supporting = Vec::new();
        for (obx, pos) in &order.obx {
            if let ObxOut::Observation(r) = observation(ctx, subject, obx, &[], &group, *pos)? {
                supporting.push(r.reference());
            }
        }
        let opts = ctx.opts;
        let (patient, encounter) = refs(subject);
        let tq1 = order.tq1.as_ref();
        let prio = tq1
            .map(|t| t.f(9).c(1).text().into_owned())
            .or_else(|| order.orc.as_ref().map(|o| o.f(7).c(6).text().into_owned()))
            .unwrap_or_default();
        let resource = obj! {
            "identifier" => arr![placer, filler],
            "status" => order_status(order.orc.as_ref()),
            "intent" => "order",
            "priority" => priority(&prio),
            "code" => code,
            "subject" => patient,
            "encounter" => encounter,
            "occurrenceDateTime" => tq1.map(|t| date_time(&t.f(7).text(), opts)).unwrap_or(Json::Null),
            "authoredOn" => order.orc.as_ref().map(|o| date_time(&o.f(9).text(), opts)).unwrap_or(Json::Null),
            "requester" => requester.map(|r| r.reference()),
            "reasonCode" => obr.map(|o| o.f(31).reps().map(|r| cwe(r, "", opts)).collect::<Vec<_>>()),
            "supportingInfo" => supporting,
            "note" => order.notes.iter().map(|t| obj!{"text" => t.clone()}).collect::<Vec<_>>(),
        };
        let conditional = identity.get("system").is_some().then_some(&identity);
        ctx.add("ServiceRequest", &key, conditional, resource);
    }
    Ok(())
}

/// MDM^T02/T06: a DocumentReference from TXA, the document from the OBXs
/// (text lines joined, or an ED's data). T06 (addendum) relates to the
/// parent document (TXA-13).
pub(crate) fn mdm<'a>(ctx: &mut Ctx<'a>, msg: &Msg<'a>, subject: &Subject, event: &str) -> Result<(), ConvertError> {
    let txa = msg.seg("TXA").ok_or_else(|| ConvertError::Missing { path: "TXA segment".into() })?;
    let opts = ctx.opts;
    let mut text_lines: Vec<String> = Vec::new();
    let mut attachments: Vec<Json<'a>> = Vec::new();
    for (i, obx) in msg.all("OBX").enumerate() {
        match obx.f(2).text().as_ref() {
            "ED" => {
                // An ED without data still says what the document is (its
                // type); the attachment is kept so the reference is not lost.
                attachments.push(ed_attachment(obx.f(5).first(), i + 1)?);
            }
            "RP" => {
                if let ObxValue::Attachment(a) = obx_value(obx, i + 1, opts)? {
                    attachments.push(a);
                }
            }
            "TX" | "FT" | "ST" | "" => text_lines.extend(obx.f(5).reps().map(|r| r.whole().into_owned())),
            // Other types (HD, CE ...) describe the document, not its content.
            _ => {}
        }
    }
    let created = date_time(&txa.f(6).text(), opts);
    if !text_lines.is_empty() {
        let content_type = match txa.f(3).text().as_ref() {
            "" | "TX" | "FT" | "text" => "text/plain".to_string(),
            other => mime("TEXT", other),
        };
        attachments.insert(
            0,
            obj! {
                "contentType" => content_type,
                "data" => base64::engine::general_purpose::STANDARD.encode(text_lines.join("\n")),
            },
        );
    }
    if attachments.is_empty() {
        return Err(ConvertError::Missing { path: "OBX-5 (the document content of the MDM message)".into() });
    }
    let mut authors: Vec<Json<'a>> = Vec::new();
    for f in [5, 9] {
        for r in txa.f(f).reps() {
            if let Some(p) = practitioner(ctx, r) {
                authors.push(p.reference());
            }
        }
    }
    let authenticator = practitioner(ctx, txa.f(22).first());
    let opts = ctx.opts;
    let master = ei(txa.f(12).first(), "", opts);
    let doc_status = match txa.f(17).text().as_ref() {
        "AU" | "LA" => "final",
        "DI" | "DO" | "IP" | "IN" | "PA" => "preliminary",
        _ => "",
    };
    let status = match txa.f(19).text().as_ref() {
        "OB" | "RE" => "superseded",
        "CA" => "entered-in-error",
        _ => "current",
    };
    let parent = ei(txa.f(13).first(), "", opts);
    let relates = if event == "T06" && !parent.is_null() {
        arr![obj! {"code" => "appends", "target" => obj!{"identifier" => parent}}]
    } else {
        Json::Null
    };
    let (patient, encounter) = refs(subject);
    let key = if master.is_null() {
        format!("{}|TXA|{}|{}", subject.key, txa.f(2).c(1).text(), txa.f(6).text())
    } else {
        key_of(&master)
    };
    let created_for_attachment = created.clone();
    let content: Vec<Json<'a>> = attachments
        .into_iter()
        .map(|mut a| {
            a.insert("creation", created_for_attachment.clone());
            obj! {"attachment" => a}
        })
        .collect();
    let resource = obj! {
        "masterIdentifier" => master.clone(),
        "identifier" => arr![ei(txa.f(16).first(), "", opts)],
        "status" => status,
        "docStatus" => doc_status,
        "type" => cwe(txa.f(2).first(), "0270", opts),
        "subject" => patient,
        "date" => instant(&txa.f(4).text(), opts),
        "author" => authors,
        "authenticator" => authenticator.map(|a| a.reference()),
        "relatesTo" => relates,
        "description" => txa.f(25).text(),
        "content" => content,
        "context" => obj!{"encounter" => arr![encounter], "period" => obj!{"start" => created}},
    };
    // masterIdentifier is not searchable as `identifier`, so update by id.
    ctx.add("DocumentReference", &key, None, resource);
    Ok(())
}

/// SIU^S12-S26: an Appointment from SCH/TQ1 and the resources AIS/AIG/AIL/AIP.
pub(crate) fn siu<'a>(ctx: &mut Ctx<'a>, msg: &Msg<'a>, subject: &Subject, event: &str) -> Result<(), ConvertError> {
    let sch = msg.seg("SCH").ok_or_else(|| ConvertError::Missing { path: "SCH segment".into() })?;
    let opts = ctx.opts;
    let placer = ei(sch.f(1).first(), "PLAC", opts);
    let filler = ei(sch.f(2).first(), "FILL", opts);
    let filler_status = sch.f(25).c(1).text();
    let status = match opts.table("0278", &filler_status) {
        Some(s) => s.to_string(),
        None => match filler_status.as_ref() {
            "Booked" | "Overbook" | "Confirmed" => "booked",
            "Cancelled" | "Deleted" | "Dc" => "cancelled",
            "Complete" => "fulfilled",
            "Noshow" => "noshow",
            "Pending" => "pending",
            "Waitlist" => "waitlist",
            "Started" => "arrived",
            _ => match event {
                "S15" | "S17" => "cancelled",
                "S26" => "noshow",
                _ => "booked",
            },
        }
        .to_string(),
    };
    let tq1 = msg.seg("TQ1");
    let timing = sch.f(11).first();
    let start_raw = tq1.map(|t| t.f(7).text()).filter(|t| !t.is_empty()).unwrap_or_else(|| timing.c(4).text());
    let end_raw = tq1.map(|t| t.f(8).text()).filter(|t| !t.is_empty()).unwrap_or_else(|| timing.c(5).text());
    let mut participants = vec![obj! {"actor" => subject.patient.reference(), "status" => "accepted"}];
    for ail in msg.all("AIL") {
        if let Some(l) = location(ctx, ail.f(3).first()) {
            participants.push(obj! {"actor" => l.reference(), "status" => "accepted"});
        }
    }
    for aip in msg.all("AIP") {
        let opts = ctx.opts;
        let role = cwe(aip.f(4).first(), "0286", opts);
        if let Some(p) = practitioner(ctx, aip.f(3).first()) {
            participants.push(obj! {"type" => arr![role], "actor" => p.reference(), "status" => "accepted"});
        }
    }
    for aig in msg.all("AIG") {
        let opts = ctx.opts;
        let res = aig.f(3).first();
        let name = if res.c(2).is_empty() { res.c(1).text() } else { res.c(2).text() };
        if !name.is_empty() {
            participants.push(obj! {
                "type" => arr![cwe(aig.f(4).first(), "", opts)],
                "actor" => obj!{"display" => name},
                "status" => "accepted",
            });
        }
    }
    let opts = ctx.opts;
    let services: Vec<Json<'a>> = msg.all("AIS").map(|a| cwe(a.f(3).first(), "", opts)).collect();
    let notes: Vec<Cow<'a, str>> = {
        // NTEs directly after SCH/TQ1 are the appointment's comment.
        let mut out = Vec::new();
        let mut in_header = false;
        for s in &msg.segments {
            match s.name {
                "SCH" | "TQ1" => in_header = true,
                "NTE" if in_header => out.push(nte_text(s)),
                _ => in_header = false,
            }
        }
        out
    };
    let duration = sch.f(9).text().parse::<u32>().ok().filter(|d| *d > 0);
    let duration_min = match sch.f(10).c(1).text().to_ascii_lowercase().as_str() {
        "min" | "m" | "minutes" => duration,
        "h" | "hr" | "hours" => duration.map(|d| d * 60),
        "s" | "sec" => duration.map(|d| d.div_ceil(60)),
        _ => None,
    };
    let identity = if filler.is_null() { placer.clone() } else { filler.clone() };
    let key = if identity.is_null() { format!("{}|SCH|{}", subject.key, start_raw) } else { key_of(&identity) };
    let resource = obj! {
        "identifier" => arr![placer, filler],
        "status" => status,
        "serviceType" => services,
        "appointmentType" => cwe(sch.f(8).first(), "0276", opts),
        "reasonCode" => arr![cwe(sch.f(7).first(), "", opts)],
        "description" => sch.f(6).c(2).text(),
        "start" => instant(&start_raw, opts),
        "end" => instant(&end_raw, opts),
        "minutesDuration" => duration_min,
        "comment" => notes.join("\n"),
        "participant" => participants,
    };
    let conditional = identity.get("system").is_some().then_some(&identity);
    ctx.add("Appointment", &key, conditional, resource);
    Ok(())
}

/// VXU^V04: an Immunization per RXA (route and site from RXR), its OBXs as
/// Observations part of it.
pub(crate) fn vxu<'a>(ctx: &mut Ctx<'a>, msg: &Msg<'a>, subject: &Subject) -> Result<(), ConvertError> {
    let segs = &msg.segments;
    let mut found = false;
    let mut orc: Option<Seg<'a>> = None;
    let mut obx_count = 0;
    let mut i = 0;
    while i < segs.len() {
        let seg = segs[i];
        match seg.name {
            "ORC" => orc = Some(seg),
            "OBX" => obx_count += 1,
            "RXA" => {
                found = true;
                let rxr = segs.get(i + 1).filter(|s| s.name == "RXR").copied();
                let imm = immunization(ctx, subject, &seg, rxr.as_ref(), orc.as_ref())?;
                let group = ObsContext {
                    group_key: format!("{}|RXA|{}", subject.key, imm.full_url()),
                    default_time: Some(seg.f(3)),
                    specimen: None,
                    part_of: Some(imm),
                };
                let mut j = i + 1;
                while j < segs.len() && !matches!(segs[j].name, "RXA" | "ORC") {
                    if segs[j].name == "OBX" {
                        obx_count += 1;
                        let notes: Vec<Cow<'a, str>> =
                            segs[j + 1..].iter().take_while(|s| s.name == "NTE").map(nte_text).collect();
                        observation(ctx, subject, &segs[j], &notes, &group, obx_count)?;
                    }
                    j += 1;
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    if !found {
        return Err(ConvertError::Missing { path: "RXA segment".into() });
    }
    Ok(())
}

fn immunization<'a>(
    ctx: &mut Ctx<'a>,
    subject: &Subject,
    rxa: &Seg<'a>,
    rxr: Option<&Seg<'a>>,
    orc: Option<&Seg<'a>>,
) -> Result<Ref, ConvertError> {
    let opts = ctx.opts;
    let vaccine = cwe(rxa.f(5).first(), "", opts);
    if vaccine.is_null() {
        return Err(ConvertError::Missing { path: "RXA-5 (administered code)".into() });
    }
    let when = date_time(&rxa.f(3).text(), opts);
    if when.is_null() {
        return Err(ConvertError::Missing { path: "RXA-3 (date/time start of administration)".into() });
    }
    let status = match rxa.f(20).text().as_ref() {
        "RE" | "NA" => "not-done",
        "" | "CP" | "PA" => "completed",
        _ => "completed",
    };
    let amount = rxa.f(6).text();
    let dose = match decimal(&amount) {
        // 999 means "amount unknown" in immunization messages.
        Some(v) if amount.trim() != "999" => quantity(v, rxa.f(7).first(), opts),
        _ => Json::Null,
    };
    let info_source = rxa.f(9).first();
    let primary = match info_source.c(1).text().as_ref() {
        "00" => Json::Bool(true),
        "" => Json::Null,
        _ => Json::Bool(false),
    };
    let report_origin = if primary == Json::Bool(false) { cwe(info_source, "", opts) } else { Json::Null };
    let manufacturer = {
        let m = rxa.f(17).first();
        let code = m.c(1).text();
        if code.is_empty() {
            None
        } else {
            let sys = if m.c(3).is_empty() { None } else { terminology::system_uri(&m.c(3).text()) };
            let identifier = obj! {"system" => sys, "value" => code};
            let key = key_of(&identifier);
            let resource = obj! {"identifier" => arr![identifier.clone()], "active" => true, "name" => m.c(2).text()};
            Some(ctx.add("Organization", &key, Some(&identifier), resource))
        }
    };
    let mut performers = Vec::new();
    for (field, function) in [(10, "AP"), (12, "OP")] {
        let node = if field == 12 { orc.map(|o| o.f(12)) } else { Some(rxa.f(10)) };
        if let Some(node) = node
            && let Some(p) = practitioner(ctx, node.first())
        {
            performers.push(obj!{
                "function" => obj!{"coding" => arr![obj!{"system" => terminology::v2_table_cow("0443"), "code" => function}]},
                "actor" => p.reference(),
            });
        }
    }
    let opts = ctx.opts;
    let (placer, filler) = order_identifiers(orc, None, opts);
    let identity = if filler.is_null() { placer.clone() } else { filler.clone() };
    let key = if identity.is_null() {
        format!("{}|RXA|{}|{}", subject.key, rxa.f(5).c(1).text(), rxa.f(3).text())
    } else {
        key_of(&identity)
    };
    let (patient, encounter) = refs(subject);
    let resource = obj! {
        "identifier" => arr![placer, filler],
        "status" => status,
        "statusReason" => cwe(rxa.f(18).first(), "", opts),
        "vaccineCode" => vaccine,
        "patient" => patient,
        "encounter" => encounter,
        "occurrenceDateTime" => when,
        "recorded" => date_time(&rxa.f(22).text(), opts),
        "primarySource" => primary,
        "reportOrigin" => report_origin,
        "manufacturer" => manufacturer.map(|m| m.reference()),
        "lotNumber" => rxa.f(15).text(),
        "expirationDate" => date(&rxa.f(16).text()),
        "site" => rxr.map(|r| cwe(r.f(2).first(), "0163", opts)),
        "route" => rxr.map(|r| cwe(r.f(1).first(), "0162", opts)),
        "doseQuantity" => dose,
        "performer" => performers,
    };
    let conditional = identity.get("system").is_some().then_some(&identity);
    Ok(ctx.add("Immunization", &key, conditional, resource))
}

//! The message builders: which resources become which segments, and how
//! observations are grouped under OBRs.

use std::collections::HashSet;

use base64::Engine as _;
use chrono::DateTime;
use hl7v2::Message;
use serde_json::Value;

use super::datatypes::{checked_num, coding, cwe, cx, ei, num, st, units, v2_time, v2_tm, xad, xcn, xpn, xtn};
use super::{Input, SegW, TimeKind};
use crate::error::ConvertError;
use crate::options::{FhirToHl7Options, TargetMessage};
use crate::terminology;

fn missing(path: &str) -> ConvertError {
    ConvertError::Missing { path: path.into() }
}

fn rtype(r: &Value) -> &str {
    st(r, "resourceType")
}

/// Whether resource `r` is about `patient` (or names no patient at all).
fn about(input: &Input<'_>, r: &Value, patient: &Value) -> bool {
    for key in ["subject", "patient"] {
        if let Some(reference) = r.get(key) {
            return match input.resolve(reference) {
                Some(p) => std::ptr::eq(p, patient),
                // A reference outside the input: keep it if it names the
                // patient's id.
                None => {
                    let id = st(patient, "id");
                    !id.is_empty() && st(reference, "reference").ends_with(&format!("Patient/{id}"))
                }
            };
        }
    }
    true
}

/// MSH-7: the option, else the newest time in the input (never the clock).
fn message_time(input: &Input<'_>, opts: &FhirToHl7Options) -> Result<String, ConvertError> {
    if !opts.message_time.is_empty() {
        return Ok(opts.message_time.clone());
    }
    let mut best: Option<DateTime<chrono::FixedOffset>> = None;
    let mut consider = |t: Option<&str>| {
        if let Some(dt) = t.and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            && best.is_none_or(|b| dt > b)
        {
            best = Some(dt);
        }
    };
    consider(input.timestamp);
    for r in &input.resources {
        for key in
            ["issued", "effectiveDateTime", "effectiveInstant", "date", "authoredOn", "occurrenceDateTime", "recorded"]
        {
            consider(r.get(key).and_then(Value::as_str));
        }
        consider(r.pointer("/effectivePeriod/start").and_then(Value::as_str));
        consider(r.pointer("/meta/lastUpdated").and_then(Value::as_str));
        consider(r.get("start").and_then(Value::as_str));
    }
    best.and_then(|b| v2_time(&b.to_rfc3339(), TimeKind::Instant).ok())
        .ok_or_else(|| missing("message time: give FhirToHl7Options.message_time (the input holds no full time)"))
}

/// Builds the message.
pub(crate) fn build(
    input: &Input<'_>,
    target: TargetMessage,
    opts: &FhirToHl7Options,
    control_id: &str,
) -> Result<Message, ConvertError> {
    let (code, event, structure) = target.msh9();
    let time = message_time(input, opts)?;
    let encode = |e: hl7v2::EditError| ConvertError::Encode(e.to_string());
    let mut msg = Message::builder()
        .sender(&opts.sending_application, &opts.sending_facility)
        .receiver(&opts.receiving_application, &opts.receiving_facility)
        .timestamp(&time)
        .message_type(code, event, structure)
        .control_id(control_id)
        .processing_id(&opts.processing_id)
        .version(&opts.version)
        .build()
        .map_err(encode)?;
    let patient = input.patient().ok_or_else(|| missing("Patient (the input has none)"))?;
    let segments = match target {
        TargetMessage::OruR01 => oru(input, patient, opts)?,
        TargetMessage::MdmT02 => mdm(input, patient, opts, &time)?,
        TargetMessage::AdtA04 | TargetMessage::AdtA08 => adt(input, patient, opts, event, &time)?,
        TargetMessage::SiuS12 => siu(input, patient, opts)?,
        TargetMessage::RasO17 => ras(input, patient, opts)?,
    };
    let non_ascii = segments.iter().any(|s| s.encode(msg.delimiters()).iter().any(|b| *b >= 0x80));
    if non_ascii {
        msg.set("MSH-18", "UNICODE UTF-8").map_err(encode)?;
    }
    for s in &segments {
        s.push(&mut msg)?;
    }
    Ok(msg)
}

fn pid(input: &Input<'_>, patient: &Value, opts: &FhirToHl7Options) -> Result<SegW, ConvertError> {
    let mut s = SegW::new("PID");
    s.put(1, 1, "1");
    let ids: Vec<&Value> = patient.get("identifier").and_then(Value::as_array).into_iter().flatten().collect();
    for (i, id) in ids.iter().enumerate() {
        cx(&mut s, 3, i + 1, id, opts);
    }
    if ids.is_empty() {
        // PID-3 is required; the resource id is the only identity left.
        let id = st(patient, "id");
        if id.is_empty() {
            return Err(missing("Patient.identifier (PID-3 is required)"));
        }
        s.put(3, 1, id);
    }
    for (i, name) in patient.get("name").and_then(Value::as_array).into_iter().flatten().enumerate() {
        xpn(&mut s, 5, i + 1, name);
    }
    if !s.has(5) {
        return Err(missing("Patient.name (PID-5 is required)"));
    }
    let birth_time = patient
        .pointer("/_birthDate/extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|e| st(e, "url") == "http://hl7.org/fhir/StructureDefinition/patient-birthTime")
        .map(|e| st(e, "valueDateTime"));
    let birth = match birth_time.filter(|t| !t.is_empty()) {
        Some(t) => Some(v2_time(t, TimeKind::DateTime).map_err(|reason| ConvertError::Invalid {
            path: input.path(patient, "birthDate.extension(patient-birthTime).valueDateTime"),
            reason,
        })?),
        None => input.time(patient, "birthDate", TimeKind::Date)?,
    };
    s.put(7, 1, &birth.unwrap_or_default());
    s.put(8, 1, if patient.get("gender").is_some() { terminology::gender_v2(st(patient, "gender")) } else { "" });
    for (i, a) in patient.get("address").and_then(Value::as_array).into_iter().flatten().enumerate() {
        xad(&mut s, 11, i + 1, a);
    }
    let (mut home, mut work) = (0, 0);
    for cp in patient.get("telecom").and_then(Value::as_array).into_iter().flatten() {
        if st(cp, "use") == "work" {
            work += 1;
            xtn(&mut s, 14, work, cp);
        } else {
            home += 1;
            xtn(&mut s, 13, home, cp);
        }
    }
    let comms: Vec<&Value> = patient.get("communication").and_then(Value::as_array).into_iter().flatten().collect();
    if let Some(c) = comms.iter().find(|c| c.get("preferred") == Some(&Value::Bool(true))).or(comms.first())
        && let Some(lang) = c.get("language")
    {
        cwe(&mut s, 15, 1, lang, opts);
    }
    if let Some(m) = patient.get("maritalStatus") {
        cwe(&mut s, 16, 1, m, opts);
    }
    match patient.get("multipleBirthInteger").or(patient.get("multipleBirthBoolean")) {
        Some(Value::Bool(b)) => {
            s.put(24, 1, if *b { "Y" } else { "N" });
        }
        Some(n @ Value::Number(_)) => {
            s.put(24, 1, "Y").put(25, 1, &n.to_string());
        }
        _ => {}
    }
    if let Some(t) = input.time(patient, "deceasedDateTime", TimeKind::DateTime)? {
        s.put(29, 1, &t).put(30, 1, "Y");
    } else if let Some(b) = patient.get("deceasedBoolean").and_then(Value::as_bool) {
        s.put(30, 1, if b { "Y" } else { "N" });
    }
    Ok(s)
}

fn encounter_class(code: &str) -> &'static str {
    match code {
        "IMP" | "ACUTE" | "NONAC" => "I",
        "AMB" | "VR" | "HH" | "FLD" => "O",
        "EMER" => "E",
        "PRENC" => "P",
        "OBSENC" => "B",
        "SS" => "O",
        _ => "U",
    }
}

/// PV1 from an Encounter, or `PV1|1|U` (class unknown) when required and
/// there is none.
fn pv1(input: &Input<'_>, encounter: Option<&Value>, opts: &FhirToHl7Options) -> Result<SegW, ConvertError> {
    let mut s = SegW::new("PV1");
    s.put(1, 1, "1");
    let Some(enc) = encounter else {
        s.put(2, 1, "U");
        return Ok(s);
    };
    s.put(2, 1, encounter_class(enc.pointer("/class/code").and_then(Value::as_str).unwrap_or("")));
    if let Some(loc) = enc.pointer("/location/0/location") {
        let name = input.resolve(loc).map(|l| st(l, "name")).unwrap_or_else(|| st(loc, "display"));
        s.put(3, 1, name);
    }
    for p in enc.get("participant").and_then(Value::as_array).into_iter().flatten() {
        let code = p.pointer("/type/0/coding/0/code").and_then(Value::as_str).unwrap_or("");
        let field = match code {
            "ATND" | "PPRF" => 7,
            "REF" => 8,
            "CON" => 9,
            "ADM" => 17,
            _ => continue,
        };
        if let Some(who) = p.get("individual").and_then(|i| input.resolve(i))
            && !s.has(field)
        {
            xcn(&mut s, field, 1, who, opts);
        }
    }
    if let Some(id) = enc.pointer("/identifier/0") {
        cx(&mut s, 19, 1, id, opts);
    }
    s.put(44, 1, &input.time(enc, "period.start", TimeKind::DateTime)?.unwrap_or_default());
    s.put(45, 1, &input.time(enc, "period.end", TimeKind::DateTime)?.unwrap_or_default());
    Ok(s)
}

fn status_v2(obs: &Value) -> &'static str {
    if obs.get("dataAbsentReason").is_some() && obs.get("status").is_none() {
        return "X";
    }
    terminology::observation_status_v2(st(obs, "status"))
}

/// effective[x] of an Observation or a DiagnosticReport as a DTM (a
/// period by its start).
fn effective(input: &Input<'_>, r: &Value) -> Result<Option<String>, ConvertError> {
    if r.get("effectiveDateTime").is_some() {
        input.time(r, "effectiveDateTime", TimeKind::DateTime)
    } else if r.get("effectiveInstant").is_some() {
        input.time(r, "effectiveInstant", TimeKind::Instant)
    } else {
        input.time(r, "effectivePeriod.start", TimeKind::DateTime)
    }
}

/// Writes value[x] of `v` (`obs` itself, or its component at `element`,
/// e.g. `component[1]`) into OBX-2/5/6.
fn put_value(
    s: &mut SegW,
    input: &Input<'_>,
    obs: &Value,
    element: &str,
    v: &Value,
    opts: &FhirToHl7Options,
) -> Result<(), ConvertError> {
    let at = |name: &str| if element.is_empty() { name.to_string() } else { format!("{element}.{name}") };
    let number = |value: Option<&Value>, name: &str| {
        checked_num(value).map_err(|reason| ConvertError::Invalid { path: input.path(obs, &at(name)), reason })
    };
    if let Some(q) = v.get("valueQuantity") {
        let value = number(q.get("value"), "valueQuantity.value")?;
        match st(q, "comparator") {
            "" => {
                s.put(2, 1, "NM").put(5, 1, &value);
            }
            comp => {
                s.put(2, 1, "SN").put(5, 1, comp).put(5, 2, &value);
            }
        }
        units(s, 6, q);
    } else if let Some(c) = v.get("valueCodeableConcept") {
        s.put(2, 1, if opts.version.starts_with("2.3") || opts.version.starts_with("2.4") { "CE" } else { "CWE" });
        cwe(s, 5, 1, c, opts);
    } else if let Some(t) = v.get("valueString").and_then(Value::as_str) {
        // CRLF, LF or a lone CR ends a line (text from Windows or old Mac
        // systems): splitting on LF alone left a CR at the end of each
        // line, written as an escaped \X0D\ the receiver shows as junk.
        let lines: Vec<&str> = t.split("\r\n").flat_map(|l| l.split(['\n', '\r'])).collect();
        // Several lines travel as TX repetitions (one per line), which
        // receivers display as lines; one short line is ST.
        if lines.len() > 1 || t.len() > 199 {
            s.put(2, 1, "TX");
            for (i, line) in lines.iter().enumerate() {
                s.at(5, i + 1, 1, 1, line);
            }
        } else {
            s.put(2, 1, "ST").put(5, 1, t);
        }
    } else if let Some(b) = v.get("valueBoolean").and_then(Value::as_bool) {
        s.put(2, 1, "CWE");
        let (code, display) = if b { ("Y", "Yes") } else { ("N", "No") };
        s.put(5, 1, code).put(5, 2, display).put(5, 3, "HL70136");
    } else if let Some(i) = v.get("valueInteger") {
        s.put(2, 1, "NM").put(5, 1, &number(Some(i), "valueInteger")?);
    } else if let Some(r) = v.get("valueRange") {
        let low = number(r.pointer("/low/value"), "valueRange.low.value")?;
        let high = number(r.pointer("/high/value"), "valueRange.high.value")?;
        s.put(2, 1, "SN").put(5, 2, &low).put(5, 3, "-").put(5, 4, &high);
        if let Some(low) = r.get("low") {
            units(s, 6, low);
        }
    } else if let Some(r) = v.get("valueRatio") {
        let numerator = number(r.pointer("/numerator/value"), "valueRatio.numerator.value")?;
        let denominator = number(r.pointer("/denominator/value"), "valueRatio.denominator.value")?;
        s.put(2, 1, "SN").put(5, 2, &numerator).put(5, 3, ":").put(5, 4, &denominator);
    } else if v.get("valueDateTime").is_some() {
        let dtm = input.time(obs, &at("valueDateTime"), TimeKind::DateTime)?.unwrap_or_default();
        s.put(2, 1, if dtm.len() <= 8 { "DT" } else { "DTM" }).put(5, 1, &dtm);
    } else if let Some(t) = v.get("valueTime").and_then(Value::as_str) {
        let tm =
            v2_tm(t).map_err(|reason| ConvertError::Invalid { path: input.path(obs, &at("valueTime")), reason })?;
        s.put(2, 1, "TM").put(5, 1, &tm);
    } else if v.get("valuePeriod").is_some() {
        let start = input.time(obs, &at("valuePeriod.start"), TimeKind::DateTime)?.unwrap_or_default();
        let end = input.time(obs, &at("valuePeriod.end"), TimeKind::DateTime)?.unwrap_or_default();
        s.put(2, 1, "DR").put(5, 1, &start).put(5, 2, &end);
    } else if let Some(key) = v.as_object().and_then(|o| o.keys().find(|k| k.starts_with("value"))) {
        // A value the branches above did not take: a type with no mapping
        // (SampledData), or a mapped one not in its JSON form. Leaving
        // OBX-2 and OBX-5 empty would lose the result without a word.
        let kind = &key["value".len()..];
        let reason = match MAPPED_VALUE_TYPES.iter().find(|(suffix, _)| *suffix == kind) {
            Some((_, fhir_type)) => format!("not a valid FHIR {fhir_type}"),
            None => {
                let mapped: Vec<&str> = MAPPED_VALUE_TYPES.iter().map(|(_, t)| *t).collect();
                format!(
                    "a value of type {kind} has no HL7 v2 mapping (mapped: {}); convert it to one of these first",
                    mapped.join(", ")
                )
            }
        };
        return Err(ConvertError::Invalid { path: input.path(obs, &at(key)), reason });
    }
    Ok(())
}

/// The Observation.value[x] types [`put_value`] maps to OBX-2/5.
/// (the element name's suffix, the FHIR type)
const MAPPED_VALUE_TYPES: [(&str, &str); 10] = [
    ("Quantity", "Quantity"),
    ("CodeableConcept", "CodeableConcept"),
    ("String", "string"),
    ("Boolean", "boolean"),
    ("Integer", "integer"),
    ("Range", "Range"),
    ("Ratio", "Ratio"),
    ("DateTime", "dateTime"),
    ("Time", "time"),
    ("Period", "Period"),
];

fn reference_range(s: &mut SegW, obs: &Value) {
    let Some(rr) = obs.pointer("/referenceRange/0") else { return };
    let text = st(rr, "text");
    let low = num(rr.pointer("/low/value"));
    let high = num(rr.pointer("/high/value"));
    let range = match (low.is_empty(), high.is_empty()) {
        _ if !text.is_empty() => text.to_string(),
        (false, false) => format!("{low}-{high}"),
        (false, true) => format!(">{low}"),
        (true, false) => format!("<{high}"),
        (true, true) => String::new(),
    };
    s.put(7, 1, &range);
}

fn device_ids(device: &Value) -> (String, String) {
    let udi = device.pointer("/udiCarrier/0/deviceIdentifier").and_then(Value::as_str).unwrap_or("");
    let id = device.pointer("/identifier/0/value").and_then(Value::as_str).unwrap_or(udi);
    let id = if id.is_empty() { st(device, "distinctIdentifier") } else { id };
    (id.to_string(), udi.to_string())
}

fn version_at_least(opts: &FhirToHl7Options, minor: u32) -> bool {
    opts.version.strip_prefix("2.").and_then(|m| m.split('.').next()?.parse::<u32>().ok()).is_some_and(|m| m >= minor)
}

/// OBX (one per value, one per component), from 2.7 a PRT for the device,
/// then the NTEs (the order of ORU_R01's OBSERVATION group).
fn obx_group(
    input: &Input<'_>,
    obs: &Value,
    ordinal: usize,
    set_id: &mut usize,
    opts: &FhirToHl7Options,
    out: &mut Vec<SegW>,
) -> Result<(), ConvertError> {
    // (the value's owner, its element path, its code, OBX-4)
    let mut rows: Vec<(&Value, String, &Value, String)> = Vec::new();
    let has_value = obs.as_object().is_some_and(|o| o.keys().any(|k| k.starts_with("value")));
    let code = obs.get("code").unwrap_or(&Value::Null);
    let components: Vec<&Value> = obs.get("component").and_then(Value::as_array).into_iter().flatten().collect();
    if has_value || components.is_empty() {
        rows.push((obs, String::new(), code, String::new()));
    }
    for (k, c) in components.iter().enumerate() {
        rows.push((c, format!("component[{k}]"), c.get("code").unwrap_or(&Value::Null), ordinal.to_string()));
    }
    let device = obs.get("device").and_then(|d| input.resolve(d));
    let performers: Vec<&Value> =
        obs.get("performer").and_then(Value::as_array).into_iter().flatten().filter_map(|p| input.resolve(p)).collect();
    let when = effective(input, obs)?.unwrap_or_default();
    let issued = input.time(obs, "issued", TimeKind::Instant)?.unwrap_or_default();
    for (source, element, code, sub_id) in rows {
        *set_id += 1;
        let mut s = SegW::new("OBX");
        s.put(1, 1, &set_id.to_string());
        put_value(&mut s, input, obs, &element, source, opts)?;
        cwe(&mut s, 3, 1, code, opts);
        s.put(4, 1, &sub_id);
        reference_range(&mut s, source);
        for (i, interp) in source.get("interpretation").and_then(Value::as_array).into_iter().flatten().enumerate() {
            if let Some(c) = interp.pointer("/coding/0") {
                let mut c = c.clone();
                // Table 0078 and v3 ObservationInterpretation share codes.
                if st(&c, "system") == terminology::INTERPRETATION_SYSTEM
                    && let Some(o) = c.as_object_mut()
                {
                    o.insert("system".into(), Value::String(terminology::v2_table("0078")));
                }
                coding(&mut s, 8, i + 1, &c);
            }
        }
        s.put(11, 1, status_v2(obs));
        s.put(14, 1, &when);
        let mut n = 0;
        for p in &performers {
            if rtype(p) == "Practitioner" || rtype(p) == "PractitionerRole" {
                n += 1;
                xcn(&mut s, 16, n, p, opts);
            }
        }
        if let Some(m) = obs.get("method") {
            cwe(&mut s, 17, 1, m, opts);
        }
        if let Some(d) = device {
            let (id, _) = device_ids(d);
            s.put(18, 1, &id);
        }
        s.put(19, 1, &issued);
        out.push(s);
    }
    if let Some(d) = device
        && version_at_least(opts, 7)
    {
        let (id, udi) = device_ids(d);
        let mut s = SegW::new("PRT");
        s.put(2, 1, "AD").put(4, 1, "EQUIP").put(4, 2, "Equipment").put(4, 3, "HL70912");
        s.put(10, 1, &id).put(16, 1, &udi);
        s.put(17, 1, &input.time(d, "manufactureDate", TimeKind::DateTime)?.unwrap_or_default());
        s.put(18, 1, &input.time(d, "expirationDate", TimeKind::DateTime)?.unwrap_or_default());
        s.put(19, 1, st(d, "lotNumber")).put(20, 1, st(d, "serialNumber"));
        s.put(21, 1, d.pointer("/udiCarrier/0/carrierHRF").and_then(Value::as_str).unwrap_or(""));
        out.push(s);
    }
    for (i, note) in obs.get("note").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let mut s = SegW::new("NTE");
        s.put(1, 1, &(i + 1).to_string()).put(3, 1, st(note, "text"));
        out.push(s);
    }
    Ok(())
}

/// One OBR with its members.
struct Group<'a> {
    report: Option<&'a Value>,
    code: Value,
    observations: Vec<&'a Value>,
    documents: Vec<(Content, String)>,
}

fn group_status(g: &Group<'_>) -> &'static str {
    if let Some(r) = g.report {
        return terminology::report_status_v2(st(r, "status"));
    }
    let statuses: Vec<&str> = g.observations.iter().map(|o| st(o, "status")).collect();
    if statuses.iter().any(|s| matches!(*s, "corrected" | "amended")) {
        "C"
    } else if statuses.contains(&"preliminary") {
        "P"
    } else {
        "F"
    }
}

/// What an attachment becomes in OBX-5.
enum Content {
    /// Inline data (or a Binary's) as base64: an ED.
    Data { content_type: String, data: String },
    /// A URL outside the input: an RP (reference pointer), since nothing is
    /// fetched.
    Pointer { content_type: String, url: String },
}

/// An attachment's content: inline, from a Binary in the input, or a pointer.
fn attachment_content(input: &Input<'_>, a: &Value) -> Content {
    let content_type = st(a, "contentType").to_string();
    if let Some(d) = a.get("data").and_then(Value::as_str) {
        return Content::Data { content_type, data: d.to_string() };
    }
    let url = st(a, "url");
    if let Some(bin) = (!url.is_empty()).then(|| input.resolve(&serde_json::json!({"reference": url}))).flatten()
        && rtype(bin) == "Binary"
    {
        let ct = if content_type.is_empty() { st(bin, "contentType").to_string() } else { content_type };
        return Content::Data { content_type: ct, data: st(bin, "data").to_string() };
    }
    if url.is_empty() {
        // No content at all: an ED that still says what the document is.
        return Content::Data { content_type, data: String::new() };
    }
    Content::Pointer { content_type, url: url.to_string() }
}

fn mime_parts(content_type: &str) -> (&'static str, String) {
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let (major, minor) = mime.split_once('/').unwrap_or(("application", "octet-stream"));
    let kind = match major {
        "image" => "IM",
        "audio" => "AU",
        "text" => "TEXT",
        "video" => "NS",
        _ => "AP",
    };
    (kind, minor.to_string())
}

/// An OBX for an attachment: ED `^AP^pdf^Base64^data`, or RP
/// `url^^AP^pdf`. Invalid base64 is an error naming `path`.
fn content_obx(
    set_id: usize,
    code: &Value,
    content: &Content,
    path: &str,
    opts: &FhirToHl7Options,
) -> Result<SegW, ConvertError> {
    let mut s = SegW::new("OBX");
    s.put(1, 1, &set_id.to_string());
    cwe(&mut s, 3, 1, code, opts);
    match content {
        Content::Data { content_type, data } => {
            let clean: String = data.chars().filter(|c| !c.is_whitespace()).collect();
            base64::engine::general_purpose::STANDARD.decode(&clean).map_err(|e| ConvertError::Invalid {
                path: format!("{path}.data"),
                reason: format!("not base64: {e}"),
            })?;
            let (kind, minor) = mime_parts(content_type);
            s.put(2, 1, "ED").put(5, 2, kind).put(5, 3, &minor).put(5, 4, "Base64").put(5, 5, &clean);
        }
        Content::Pointer { content_type, url } => {
            let (kind, minor) = mime_parts(content_type);
            s.put(2, 1, "RP").put(5, 1, url).put(5, 3, kind).put(5, 4, &minor);
        }
    }
    s.put(11, 1, "F");
    Ok(s)
}

fn doc_code(doc: &Value) -> Value {
    match doc.get("type") {
        Some(t) => t.clone(),
        None => serde_json::json!({"text": "Document"}),
    }
}

/// ORU^R01: DiagnosticReports (each an OBR with its results and presented
/// forms as ED OBX), panels (an Observation with hasMember), the remaining
/// Observations grouped by encounter and time, DocumentReferences (an OBR
/// with an ED OBX each).
fn oru(input: &Input<'_>, patient: &Value, opts: &FhirToHl7Options) -> Result<Vec<SegW>, ConvertError> {
    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut used: HashSet<*const Value> = HashSet::new();
    for report in input.of_type("DiagnosticReport").filter(|r| about(input, r, patient)) {
        let observations: Vec<&Value> = report
            .get("result")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| input.resolve(r))
            .collect();
        used.extend(observations.iter().map(|o| *o as *const Value));
        let mut documents = Vec::new();
        for (i, form) in report.get("presentedForm").and_then(Value::as_array).into_iter().flatten().enumerate() {
            documents.push((attachment_content(input, form), format!("DiagnosticReport.presentedForm[{i}]")));
        }
        groups.push(Group {
            report: Some(report),
            code: report.get("code").cloned().unwrap_or(Value::Null),
            observations,
            documents,
        });
    }
    let observations: Vec<&Value> = input
        .of_type("Observation")
        .filter(|o| about(input, o, patient) && !used.contains(&(*o as *const Value)))
        .collect();
    // Panels: an Observation with members and no value of its own.
    for panel in &observations {
        let members: Vec<&Value> = panel
            .get("hasMember")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| input.resolve(r))
            .collect();
        let has_value = panel.as_object().is_some_and(|o| o.keys().any(|k| k.starts_with("value") || k == "component"));
        if members.is_empty() || has_value {
            continue;
        }
        used.insert(*panel as *const Value);
        used.extend(members.iter().map(|m| *m as *const Value));
        groups.push(Group {
            report: None,
            code: panel.get("code").cloned().unwrap_or(Value::Null),
            observations: members,
            documents: Vec::new(),
        });
    }
    // The rest: one OBR per encounter and time, in input order.
    let mut loose: Vec<(String, Vec<&Value>)> = Vec::new();
    for obs in observations.into_iter().filter(|o| !used.contains(&(*o as *const Value))) {
        let key = format!(
            "{}|{}",
            obs.pointer("/encounter/reference").and_then(Value::as_str).unwrap_or(""),
            effective(input, obs)?.unwrap_or_default()
        );
        match loose.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(obs),
            None => loose.push((key, vec![obs])),
        }
    }
    for (_, list) in loose {
        let code = if list.len() == 1 {
            list[0].get("code").cloned().unwrap_or(Value::Null)
        } else {
            // A batch of unrelated results: the category names it.
            list[0].pointer("/category/0").cloned().unwrap_or_else(|| serde_json::json!({"text": "Observations"}))
        };
        groups.push(Group { report: None, code, observations: list, documents: Vec::new() });
    }
    for (i, doc) in input.of_type("DocumentReference").filter(|d| about(input, d, patient)).enumerate() {
        let mut documents = Vec::new();
        for (j, c) in doc.get("content").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let a = c.get("attachment").unwrap_or(&Value::Null);
            documents.push((attachment_content(input, a), format!("DocumentReference[{i}].content[{j}].attachment")));
        }
        groups.push(Group { report: None, code: doc_code(doc), observations: Vec::new(), documents });
    }
    if groups.is_empty() {
        return Err(ConvertError::UnsupportedFhir {
            target: "ORU^R01",
            reason: "no DiagnosticReport, Observation or DocumentReference about the patient".into(),
        });
    }
    let mut out = vec![pid(input, patient, opts)?];
    // PV1 only when every result belongs to the same encounter.
    let encounters: HashSet<&str> = groups
        .iter()
        .flat_map(|g| g.observations.iter().copied().chain(g.report))
        .filter_map(|r| r.pointer("/encounter/reference").and_then(Value::as_str))
        .collect();
    if encounters.len() == 1
        && let Some(enc) = encounters.iter().next().and_then(|r| input.resolve(&serde_json::json!({"reference": r})))
    {
        out.push(pv1(input, Some(enc), opts)?);
    }
    for (n, g) in groups.iter().enumerate() {
        let mut obr = SegW::new("OBR");
        obr.put(1, 1, &(n + 1).to_string());
        if let Some(r) = g.report {
            for id in r.get("identifier").and_then(Value::as_array).into_iter().flatten() {
                let kind = id.pointer("/type/coding/0/code").and_then(Value::as_str).unwrap_or("FILL");
                let field = if kind == "PLAC" { 2 } else { 3 };
                if !obr.has(field) {
                    ei(&mut obr, field, id, opts);
                }
            }
        }
        if g.code.is_null() {
            obr.put(4, 2, "Results");
        } else {
            cwe(&mut obr, 4, 1, &g.code, opts);
        }
        let mut when = match g.report {
            Some(r) => effective(input, r)?,
            None => None,
        };
        for o in &g.observations {
            if when.is_some() {
                break;
            }
            when = effective(input, o)?;
        }
        obr.put(7, 1, &when.unwrap_or_default());
        if let Some(r) = g.report.or(g.observations.first().copied()) {
            obr.put(22, 1, &input.time(r, "issued", TimeKind::Instant)?.unwrap_or_default());
        }
        obr.put(25, 1, group_status(g));
        out.push(obr);
        if let Some(conclusion) = g.report.map(|r| st(r, "conclusion")).filter(|c| !c.is_empty()) {
            let mut nte = SegW::new("NTE");
            nte.put(1, 1, "1").put(3, 1, conclusion);
            out.push(nte);
        }
        let mut set_id = 0;
        for (k, obs) in g.observations.iter().enumerate() {
            obx_group(input, obs, k + 1, &mut set_id, opts, &mut out)?;
        }
        for (content, path) in &g.documents {
            set_id += 1;
            out.push(content_obx(set_id, &g.code, content, path, opts)?);
        }
    }
    Ok(out)
}

fn encounter_of<'a>(input: &Input<'a>, r: &Value) -> Option<&'a Value> {
    r.get("encounter").or(r.pointer("/context/encounter/0")).and_then(|e| input.resolve(e))
}

/// MDM^T02: TXA from the DocumentReference, its content as ED OBX (base64).
fn mdm(input: &Input<'_>, patient: &Value, opts: &FhirToHl7Options, time: &str) -> Result<Vec<SegW>, ConvertError> {
    let doc = input.of_type("DocumentReference").find(|d| about(input, d, patient)).ok_or_else(|| {
        ConvertError::UnsupportedFhir { target: "MDM^T02", reason: "no DocumentReference about the patient".into() }
    })?;
    let mut evn = SegW::new("EVN");
    evn.put(1, 1, "T02").put(2, 1, time);
    let mut out = vec![evn, pid(input, patient, opts)?, pv1(input, encounter_of(input, doc), opts)?];
    let mut txa = SegW::new("TXA");
    txa.put(1, 1, "1");
    let code = doc_code(doc);
    cwe(&mut txa, 2, 1, &code, opts);
    let first_ct = doc.pointer("/content/0/attachment/contentType").and_then(Value::as_str).unwrap_or("");
    txa.put(3, 1, if first_ct.starts_with("text/plain") { "TX" } else { "AP" });
    let date = input.time(doc, "date", TimeKind::Instant)?;
    txa.put(4, 1, date.as_deref().unwrap_or_default());
    if let Some(author) = doc.pointer("/author/0").and_then(|a| input.resolve(a)) {
        xcn(&mut txa, 5, 1, author, opts);
        xcn(&mut txa, 9, 1, author, opts);
    }
    let created = input.time(doc, "content[0].attachment.creation", TimeKind::DateTime)?.or(date);
    txa.put(6, 1, &created.unwrap_or_default());
    let unique = doc.get("masterIdentifier").or(doc.pointer("/identifier/0"));
    match unique {
        Some(id) => ei(&mut txa, 12, id, opts),
        None => {
            // TXA-12 is required: the resource id identifies the document.
            txa.put(12, 1, st(doc, "id"));
        }
    }
    if !txa.has(12) {
        return Err(missing("DocumentReference.masterIdentifier, identifier or id (TXA-12 is required)"));
    }
    if let Some(parent) = doc.pointer("/relatesTo/0/target/identifier") {
        ei(&mut txa, 13, parent, opts);
    }
    let completion = match st(doc, "docStatus") {
        "final" | "amended" => "AU",
        "preliminary" => "IP",
        "entered-in-error" => "DI",
        _ => "DO",
    };
    txa.put(17, 1, completion);
    txa.put(
        19,
        1,
        match st(doc, "status") {
            "superseded" => "OB",
            "entered-in-error" => "CA",
            _ => "AV",
        },
    );
    out.push(txa);
    let mut n = 0;
    for (j, c) in doc.get("content").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let a = c.get("attachment").unwrap_or(&Value::Null);
        n += 1;
        let path = format!("DocumentReference.content[{j}].attachment");
        out.push(content_obx(n, &code, &attachment_content(input, a), &path, opts)?);
    }
    if n == 0 {
        return Err(missing("DocumentReference.content"));
    }
    Ok(out)
}

/// ADT^A04/A08: the Patient (PID, PD1 with the general practitioner, NK1 from
/// contacts) and the first Encounter (PV1, `U` when none).
fn adt(
    input: &Input<'_>,
    patient: &Value,
    opts: &FhirToHl7Options,
    event: &str,
    time: &str,
) -> Result<Vec<SegW>, ConvertError> {
    let mut evn = SegW::new("EVN");
    evn.put(1, 1, event).put(2, 1, time);
    let mut out = vec![evn, pid(input, patient, opts)?];
    if let Some(gp) = patient.pointer("/generalPractitioner/0").and_then(|r| input.resolve(r))
        && rtype(gp) != "Organization"
    {
        let mut pd1 = SegW::new("PD1");
        xcn(&mut pd1, 4, 1, gp, opts);
        out.push(pd1);
    }
    for (i, contact) in patient.get("contact").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let mut nk1 = SegW::new("NK1");
        nk1.put(1, 1, &(i + 1).to_string());
        if let Some(name) = contact.get("name") {
            xpn(&mut nk1, 2, 1, name);
        }
        if let Some(rel) = contact.pointer("/relationship/0") {
            cwe(&mut nk1, 3, 1, rel, opts);
        }
        if let Some(a) = contact.get("address") {
            xad(&mut nk1, 4, 1, a);
        }
        for (j, cp) in contact.get("telecom").and_then(Value::as_array).into_iter().flatten().enumerate() {
            xtn(&mut nk1, 5, j + 1, cp);
        }
        out.push(nk1);
    }
    let encounter = input.of_type("Encounter").find(|e| about(input, e, patient));
    out.push(pv1(input, encounter, opts)?);
    Ok(out)
}

/// SIU^S12: SCH/TQ1 from the Appointment, RGS with AIS (service type), AIL
/// (locations) and AIP (practitioners).
fn siu(input: &Input<'_>, patient: &Value, opts: &FhirToHl7Options) -> Result<Vec<SegW>, ConvertError> {
    let appt = input.of_type("Appointment").next().ok_or_else(|| ConvertError::UnsupportedFhir {
        target: "SIU^S12",
        reason: "no Appointment in the input".into(),
    })?;
    let start = input.time(appt, "start", TimeKind::Instant)?.unwrap_or_default();
    let end = input.time(appt, "end", TimeKind::Instant)?.unwrap_or_default();
    let mut practitioners = Vec::new();
    let mut locations = Vec::new();
    for p in appt.get("participant").and_then(Value::as_array).into_iter().flatten() {
        let Some(actor) = p.get("actor") else { continue };
        match input.resolve(actor) {
            Some(r) if rtype(r) == "Practitioner" || rtype(r) == "PractitionerRole" => practitioners.push((r, p)),
            Some(r) if rtype(r) == "Location" => locations.push(st(r, "name").to_string()),
            None if st(actor, "reference").starts_with("Location/") => locations.push(st(actor, "display").to_string()),
            _ => {}
        }
    }
    let mut sch = SegW::new("SCH");
    let ids: Vec<&Value> = appt.get("identifier").and_then(Value::as_array).into_iter().flatten().collect();
    for id in &ids {
        let kind = id.pointer("/type/coding/0/code").and_then(Value::as_str).unwrap_or("");
        let field = if kind == "PLAC" { 1 } else { 2 };
        if !sch.has(field) {
            ei(&mut sch, field, id, opts);
        }
    }
    if ids.is_empty() {
        sch.put(2, 1, st(appt, "id"));
    }
    // SCH-6 (event reason) is required: the reason, else the type, else text.
    match appt.pointer("/reasonCode/0").or(appt.get("appointmentType")) {
        Some(c) => cwe(&mut sch, 6, 1, c, opts),
        None => {
            sch.put(6, 2, "Appointment booked");
        }
    }
    if let Some(r) = appt.pointer("/reasonCode/0") {
        cwe(&mut sch, 7, 1, r, opts);
    }
    if let Some(t) = appt.get("appointmentType") {
        cwe(&mut sch, 8, 1, t, opts);
    }
    let minutes = num(appt.get("minutesDuration"));
    if !minutes.is_empty() {
        sch.put(9, 1, &minutes).put(10, 1, "min");
    }
    sch.put(11, 4, &start).put(11, 5, &end);
    if let Some((who, _)) = practitioners.first() {
        xcn(&mut sch, 16, 1, who, opts);
        xcn(&mut sch, 20, 1, who, opts);
    }
    sch.put(
        25,
        1,
        match st(appt, "status") {
            "booked" => "Booked",
            "cancelled" => "Cancelled",
            "fulfilled" => "Complete",
            "noshow" => "Noshow",
            "pending" | "proposed" => "Pending",
            "waitlist" => "Waitlist",
            "arrived" | "checked-in" => "Started",
            _ => "",
        },
    );
    let mut out = vec![sch];
    let mut tq1 = SegW::new("TQ1");
    tq1.put(1, 1, "1").put(7, 1, &start).put(8, 1, &end);
    out.push(tq1);
    if let Some(c) = appt.get("comment").and_then(Value::as_str) {
        let mut nte = SegW::new("NTE");
        nte.put(1, 1, "1").put(3, 1, c);
        out.push(nte);
    }
    out.push(pid(input, patient, opts)?);
    let mut rgs = SegW::new("RGS");
    rgs.put(1, 1, "1").put(2, 1, "A");
    out.push(rgs);
    for (i, svc) in appt.get("serviceType").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let mut ais = SegW::new("AIS");
        ais.put(1, 1, &(i + 1).to_string()).put(2, 1, "A");
        cwe(&mut ais, 3, 1, svc, opts);
        ais.put(4, 1, &start);
        out.push(ais);
    }
    for (i, name) in locations.iter().enumerate() {
        let mut ail = SegW::new("AIL");
        ail.put(1, 1, &(i + 1).to_string()).put(2, 1, "A").put(3, 1, name).put(6, 1, &start);
        out.push(ail);
    }
    for (i, (who, part)) in practitioners.iter().enumerate() {
        let mut aip = SegW::new("AIP");
        aip.put(1, 1, &(i + 1).to_string()).put(2, 1, "A");
        xcn(&mut aip, 3, 1, who, opts);
        if let Some(role) = part.pointer("/type/0") {
            cwe(&mut aip, 4, 1, role, opts);
        }
        aip.put(6, 1, &start);
        out.push(aip);
    }
    Ok(out)
}

/// RAS^O17: an ORC/RXA/RXR per MedicationAdministration.
fn ras(input: &Input<'_>, patient: &Value, opts: &FhirToHl7Options) -> Result<Vec<SegW>, ConvertError> {
    let admins: Vec<&Value> = input.of_type("MedicationAdministration").filter(|m| about(input, m, patient)).collect();
    if admins.is_empty() {
        return Err(ConvertError::UnsupportedFhir {
            target: "RAS^O17",
            reason: "no MedicationAdministration about the patient".into(),
        });
    }
    let mut out = vec![pid(input, patient, opts)?];
    if let Some(enc) = admins.first().and_then(|a| a.get("context")).and_then(|c| input.resolve(c)) {
        out.push(pv1(input, Some(enc), opts)?);
    }
    for (i, ma) in admins.iter().enumerate() {
        let mut orc = SegW::new("ORC");
        orc.put(1, 1, "RE");
        if let Some(id) = ma.get("request").and_then(|r| input.resolve(r)).and_then(|r| r.pointer("/identifier/0")) {
            ei(&mut orc, 2, id, opts);
        }
        if let Some(id) = ma.pointer("/identifier/0") {
            ei(&mut orc, 3, id, opts);
        }
        out.push(orc);
        let mut rxa = SegW::new("RXA");
        rxa.put(1, 1, "0").put(2, 1, &(i + 1).to_string());
        let start = if ma.get("effectiveDateTime").is_some() {
            input.time(ma, "effectiveDateTime", TimeKind::DateTime)?
        } else {
            input.time(ma, "effectivePeriod.start", TimeKind::DateTime)?
        };
        let start =
            start.ok_or_else(|| missing(&format!("MedicationAdministration[{i}].effective[x] (RXA-3 is required)")))?;
        let end = input.time(ma, "effectivePeriod.end", TimeKind::DateTime)?.unwrap_or_else(|| start.clone());
        rxa.put(3, 1, &start).put(4, 1, &end);
        let medication = ma
            .get("medicationCodeableConcept")
            .or_else(|| ma.get("medicationReference").and_then(|r| input.resolve(r)).and_then(|m| m.get("code")))
            .ok_or_else(|| missing(&format!("MedicationAdministration[{i}].medication[x] (RXA-5 is required)")))?;
        cwe(&mut rxa, 5, 1, medication, opts);
        // An unknown dose stays empty: a placeholder number could be read as
        // an amount given.
        if let Some(dose) = ma.pointer("/dosage/dose") {
            rxa.put(6, 1, &num(dose.get("value")));
            units(&mut rxa, 7, dose);
        }
        if let Some(who) = ma.pointer("/performer/0/actor").and_then(|a| input.resolve(a)) {
            xcn(&mut rxa, 10, 1, who, opts);
        }
        rxa.put(
            20,
            1,
            match st(ma, "status") {
                "completed" => "CP",
                "not-done" => "NA",
                "in-progress" | "on-hold" | "stopped" => "PA",
                _ => "",
            },
        );
        rxa.put(21, 1, "A");
        out.push(rxa);
        let mut rxr = SegW::new("RXR");
        match ma.pointer("/dosage/route") {
            Some(route) => cwe(&mut rxr, 1, 1, route, opts),
            None => {
                // RXR-1 is required; say explicitly that the route is unknown.
                rxr.put(1, 1, "UNK").put(1, 2, "unknown").put(1, 3, "NULLFL");
            }
        }
        if let Some(site) = ma.pointer("/dosage/site") {
            cwe(&mut rxr, 2, 1, site, opts);
        }
        out.push(rxr);
    }
    Ok(out)
}

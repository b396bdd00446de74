//! PID/PD1 (Patient), MRG (merge), PV1/PV2 (Encounter), NK1 (RelatedPerson),
//! XCN/XON/PL participants, AL1, DG1, IN1: the segments of ADT messages,
//! which the other message types reuse for their patient and visit.

use super::bundle::{Ctx, Ref, search_token, stable_uuid};
use super::datatypes::{
    Xcn, authority_system, cwe, cx, date, date_time, pl_name, pl_physical_type, text_concept, xad, xon, xpn, xtn,
};
use super::json::{Entry, Json, Static};
use super::view::{Node, Seg};
use crate::error::ConvertError;
use crate::options::Hl7ToFhirOptions;
use crate::terminology;

/// The patient and visit of a message, for references.
#[derive(Debug, Clone)]
pub(crate) struct Subject {
    pub patient: Ref,
    /// Text identifying the patient (for identities of dependent resources).
    pub key: String,
    pub encounter: Option<Ref>,
}

/// The identifier types of table 0203 the mappers give themselves.
static SSN_TYPE: Static = Static::new(|| identifier_type_0203("SS"));
static DRIVERS_LICENSE_TYPE: Static = Static::new(|| identifier_type_0203("DL"));
static MEMBER_NUMBER_TYPE: Static = Static::new(|| identifier_type_0203("MB"));

fn identifier_type_0203(code: &'static str) -> Json<'static> {
    obj! {"coding" => arr![obj!{"system" => terminology::v2_table_cow("0203"), "code" => code}]}
}

/// Encounter.participant.type for each participant field of PV1.
static ATTENDER: Static = Static::new(|| participation_type("ATND", "attender"));
static REFERRER: Static = Static::new(|| participation_type("REF", "referrer"));
static CONSULTANT: Static = Static::new(|| participation_type("CON", "consultant"));
static ADMITTER: Static = Static::new(|| participation_type("ADM", "admitter"));

fn participation_type(code: &'static str, display: &'static str) -> Json<'static> {
    arr![obj! {
        "coding" => arr![
            obj!{
                "system" => "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                "code" => code,
                "display" => display,
            },
        ],
    }]
}

static ALLERGY_ACTIVE: Static = Static::new(|| {
    obj! {
        "coding" => arr![
            obj!{
                "system" => "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                "code" => "active",
            },
        ],
    }
});

static ENCOUNTER_DIAGNOSIS: Static = Static::new(|| {
    arr![obj! {
        "coding" => arr![
            obj!{
                "system" => "http://terminology.hl7.org/CodeSystem/condition-category",
                "code" => "encounter-diagnosis",
                "display" => "Encounter Diagnosis",
            },
        ],
    }]
});

/// Coverage.relationship for IN1-17 (the subscriber's relation to the insured).
static SUBSCRIBER_SELF: Static = Static::new(|| subscriber_relationship("self"));
static SUBSCRIBER_SPOUSE: Static = Static::new(|| subscriber_relationship("spouse"));
static SUBSCRIBER_CHILD: Static = Static::new(|| subscriber_relationship("child"));
static SUBSCRIBER_OTHER: Static = Static::new(|| subscriber_relationship("other"));

fn subscriber_relationship(code: &'static str) -> Json<'static> {
    obj! {
        "coding" => arr![
            obj!{
                "system" => "http://terminology.hl7.org/CodeSystem/subscriber-relationship",
                "code" => code,
            },
        ],
    }
}

/// Coverage.class.type for IN1-8 (group) and IN1-2 (plan).
static CLASS_GROUP: Static = Static::new(|| coverage_class("group"));
static CLASS_PLAN: Static = Static::new(|| coverage_class("plan"));

fn coverage_class(code: &'static str) -> Json<'static> {
    obj! {"coding" => arr![obj!{"system" => "http://terminology.hl7.org/CodeSystem/coverage-class", "code" => code}]}
}

fn non_null<'a>(items: impl IntoIterator<Item = Json<'a>>) -> Vec<Json<'a>> {
    items.into_iter().filter(|v| !v.is_null()).collect()
}

/// The identity of an Identifier: `system|value`.
fn id_key(identifier: &Json<'_>) -> String {
    let system = identifier.get("system").and_then(Json::as_str).unwrap_or("");
    let value = identifier.get("value").and_then(Json::as_str).unwrap_or("");
    [system, "|", value].concat()
}

/// PID-3's identifier to use for the conditional update: the MR-typed one,
/// else the first.
fn primary_identifier<'j, 'a>(ids: &'j [Json<'a>]) -> Option<&'j Json<'a>> {
    let code = |i: &Json<'_>| i.get("type").and_then(Json::type_code) == Some("MR");
    ids.iter().find(|i| code(i)).or_else(|| ids.first())
}

/// Patient from PID (+ PD1); `replaced` is the patient it replaces (A40,
/// from [`replaced`]), linked from it.
pub(crate) fn patient<'a>(
    ctx: &mut Ctx<'a>,
    pid: &Seg<'a>,
    pd1: Option<&Seg<'a>>,
    replaced: Option<&Replaced<'a>>,
) -> Result<Subject, ConvertError> {
    let opts = ctx.opts;
    let mut identifiers: Vec<Json<'a>> = non_null(pid.f(3).reps().map(|r| cx(r, opts)));
    // PID-2 (external id) and PID-4 (alternate id) are deprecated but common.
    identifiers.extend(non_null(pid.f(2).reps().map(|r| cx(r, opts))));
    identifiers.extend(non_null(pid.f(4).reps().map(|r| cx(r, opts))));
    let ssn = pid.f(19).text();
    if !ssn.is_empty() {
        identifiers.push(obj! {
            "type" => Json::Static(&SSN_TYPE),
            "system" => "http://hl7.org/fhir/sid/us-ssn",
            "value" => ssn,
        });
    }
    let dl = pid.f(20);
    if !dl.c(1).is_empty() {
        identifiers.push(obj! {
            "type" => Json::Static(&DRIVERS_LICENSE_TYPE),
            "system" => authority_system(&dl.c(2).text(), "", "", opts),
            "value" => dl.c(1).text(),
            "period" => obj!{"end" => date(&dl.c(3).text())},
        });
    }
    let names = non_null(pid.f(5).reps().map(xpn));
    let birth = pid.f(7).text();
    let birth_date = date(&birth);
    if identifiers.is_empty() && names.is_empty() {
        return Err(ConvertError::Missing { path: "PID-3 (patient identifier) or PID-5 (name)".into() });
    }
    let primary = primary_identifier(&identifiers);
    let token = search_token(primary);
    let key = match primary {
        Some(id) => id_key(id),
        // No identifier at all: name and birth date are the best identity
        // available (and no conditional update is possible).
        None => format!("{}|{}", pid.f(5).first().whole(), birth),
    };
    let birth_time = match date_time(&birth, opts) {
        Json::Str(t) if t.len() > 10 => {
            obj! {
                "extension" => arr![
                    obj!{
                        "url" => "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                        "valueDateTime" => t,
                    },
                ],
            }
        }
        _ => Json::Null,
    };
    let mut telecom = non_null(pid.f(13).reps().map(|r| xtn(r, "home")));
    telecom.extend(non_null(pid.f(14).reps().map(|r| xtn(r, "work"))));
    let deceased_time = date_time(&pid.f(29).text(), opts);
    let deceased_flag = match pid.f(30).text().as_ref() {
        "Y" => Json::Bool(true),
        "N" => Json::Bool(false),
        _ => Json::Null,
    };
    let birth_order = pid.f(25).text().parse::<u32>().ok().filter(|n| *n > 0);
    let multiple = match pid.f(24).text().as_ref() {
        "Y" => Json::Bool(true),
        "N" => Json::Bool(false),
        _ => Json::Null,
    };
    let gender_code = pid.f(8).text();
    let gender = opts.table("0001", &gender_code).or_else(|| terminology::gender(&gender_code));
    let language = cwe(pid.f(15).first(), "0296", opts);

    // Its general practitioners (PD1) are entries after it, linked from it:
    // made first, added after it (it is written out as soon as it is added).
    let mut general = Vec::new();
    let mut general_entries = Vec::new();
    if let Some(pd1) = pd1 {
        for org in pd1.f(3).reps() {
            if let Some(entry) = organization_entry(opts, org) {
                general.push(Ref::of(entry.uuid).reference());
                general_entries.push(entry);
            }
        }
        for doc in pd1.f(4).reps() {
            match practitioner_entry(ctx, doc) {
                Some(Ok(entry)) => {
                    general.push(Ref::of(entry.uuid).reference());
                    general_entries.push(entry);
                }
                Some(Err(seen)) => general.push(seen.reference()),
                None => {}
            }
        }
    }
    let resource = obj! {
        "identifier" => identifiers,
        "active" => true,
        "name" => names,
        "telecom" => telecom,
        "gender" => gender,
        "birthDate" => birth_date,
        "_birthDate" => birth_time,
        "deceasedBoolean" => if deceased_time.is_null() { deceased_flag } else { Json::Null },
        "deceasedDateTime" => deceased_time,
        "address" => non_null(pid.f(11).reps().map(xad)),
        "maritalStatus" => cwe(pid.f(16).first(), "0002", opts),
        "multipleBirthInteger" => birth_order,
        "multipleBirthBoolean" => if birth_order.is_none() { multiple } else { Json::Null },
        "communication" => if language.is_null() { Json::Null } else { arr![obj!{"language" => language, "preferred" => true}] },
        "generalPractitioner" => general,
        "link" => replaced.map(|old| arr![obj! {"other" => Ref::of(old.uuid).reference(), "type" => "replaces"}]),
    };
    // The Patient goes first in the Bundle (readers expect it there).
    let patient = ctx.add_token("Patient", &key, token, resource);
    for entry in general_entries {
        ctx.add_entry(entry);
    }
    Ok(Subject { patient, key, encounter: None })
}

/// The patient an A40 replaces (MRG), read before the surviving patient is
/// added because that one links to it.
pub(crate) struct Replaced<'a> {
    uuid: uuid::Uuid,
    token: Option<String>,
    identifiers: Vec<Json<'a>>,
    names: Vec<Json<'a>>,
}

/// Reads MRG: the replaced patient's identifiers (MRG-1, required) and names.
pub(crate) fn replaced<'a>(mrg: &Seg<'a>, opts: &Hl7ToFhirOptions) -> Result<Replaced<'a>, ConvertError> {
    let identifiers = non_null(mrg.f(1).reps().map(|r| cx(r, opts)));
    let Some(primary) = primary_identifier(&identifiers) else {
        return Err(ConvertError::Missing { path: "MRG-1 (prior patient identifier)".into() });
    };
    let uuid = stable_uuid("Patient", &id_key(primary));
    let token = search_token(Some(primary));
    Ok(Replaced { uuid, token, identifiers, names: non_null(mrg.f(7).reps().map(xpn)) })
}

/// A40: the replaced patient, linked to the surviving one (`subject`),
/// which already links to it (see [`patient`]).
pub(crate) fn merge<'a>(ctx: &mut Ctx<'a>, subject: &Subject, old: Replaced<'a>) {
    let resource = obj! {
        "identifier" => old.identifiers,
        "active" => false,
        "name" => old.names,
        "link" => arr![obj!{"other" => subject.patient.reference(), "type" => "replaced-by"}],
    };
    ctx.add_token_as(old.uuid, "Patient", old.token, resource);
}

/// Practitioner from an XCN (None when empty).
pub(crate) fn practitioner<'a>(ctx: &mut Ctx<'a>, n: Node<'a>) -> Option<Ref> {
    match practitioner_entry(ctx, n)? {
        Ok(entry) => Some(ctx.add_entry(entry)),
        Err(seen) => Some(seen),
    }
}

/// The Practitioner entry of an XCN, not yet added; Err with the entry
/// already added for it (not built again); None when empty.
fn practitioner_entry<'a>(ctx: &Ctx<'a>, n: Node<'a>) -> Option<Result<Entry<'a>, Ref>> {
    // The identity first: a practitioner named again (PV1-7 and PV1-17 are
    // often the same) is not built again.
    let xcn = Xcn::of(n, ctx.opts);
    if xcn.id.is_empty() && !xcn.named {
        return None;
    }
    // Without an identifier the name as written is the identity.
    let key = if xcn.id.is_empty() {
        n.whole().into_owned()
    } else {
        [xcn.system.as_str().unwrap_or(""), "|", &xcn.id].concat()
    };
    let (uuid, seen) = ctx.find("Practitioner", &key);
    if let Some(seen) = seen {
        return Some(Err(seen));
    }
    let (identifier, name) = xcn.into_parts();
    let token = search_token(Some(&identifier));
    let resource = obj! {"identifier" => arr![identifier], "name" => arr![name]};
    Some(Ok(Entry { uuid, kind: "Practitioner", token, resource }))
}

/// Organization from an XON (None when empty).
pub(crate) fn organization<'a>(ctx: &mut Ctx<'a>, n: Node<'a>) -> Option<Ref> {
    organization_entry(ctx.opts, n).map(|entry| ctx.add_entry(entry))
}

/// The Organization entry of an XON, not yet added (None when empty).
fn organization_entry<'a>(opts: &Hl7ToFhirOptions, n: Node<'a>) -> Option<Entry<'a>> {
    let (identifier, name) = xon(n, opts);
    if identifier.is_null() && name.is_null() {
        return None;
    }
    let key = if identifier.is_null() { n.whole().into_owned() } else { id_key(&identifier) };
    let token = search_token(Some(&identifier));
    let resource = obj! {"identifier" => arr![identifier], "active" => true, "name" => name};
    Some(Entry { uuid: stable_uuid("Organization", &key), kind: "Organization", token, resource })
}

/// Location from a PL (None when empty).
pub(crate) fn location<'a>(ctx: &mut Ctx<'a>, n: Node<'a>) -> Option<Ref> {
    let name = pl_name(n)?;
    let (uuid, seen) = ctx.find("Location", &name);
    if seen.is_some() {
        return seen;
    }
    let resource = obj! {
        "status" => "active",
        "name" => name,
        "description" => n.c(9).text(),
        "mode" => "instance",
        "physicalType" => pl_physical_type(n),
    };
    Some(ctx.add_as(uuid, "Location", None, resource))
}

fn participant<'a>(ctx: &mut Ctx<'a>, kind: &'static Static, n: Node<'a>) -> Vec<Json<'a>> {
    n.reps()
        .filter_map(|r| practitioner(ctx, r))
        .map(|p| obj! {"type" => Json::Static(kind), "individual" => p.reference()})
        .collect()
}

/// Encounter status for an ADT trigger event (the IG's event map), or from
/// the visit's own dates for other messages.
fn encounter_status(event: &str, pv1: &Seg<'_>) -> &'static str {
    match event {
        "A01" | "A02" | "A06" | "A07" | "A13" => "in-progress",
        "A03" => "finished",
        "A04" => "arrived",
        "A05" | "A14" => "planned",
        "A11" | "A27" => "cancelled",
        _ if !pv1.f(45).is_empty() => "finished",
        _ if !pv1.f(44).is_empty() => "in-progress",
        _ => "unknown",
    }
}

/// Encounter from PV1 (+ PV2). None when PV1 is absent or describes no visit
/// (patient class N, "not applicable", and no visit number).
pub(crate) fn encounter<'a>(
    ctx: &mut Ctx<'a>,
    subject: &mut Subject,
    pv1: Option<&Seg<'a>>,
    pv2: Option<&Seg<'a>>,
    event: &str,
) {
    let Some(pv1) = pv1 else { return };
    let class_code = pv1.f(2).text();
    let visit = cx(pv1.f(19).first(), ctx.opts);
    if class_code.is_empty() && visit.is_null() {
        return;
    }
    if class_code == "N" && visit.is_null() {
        return;
    }
    let class = match ctx.opts.table("0004", &class_code) {
        Some(code) => obj! {"system" => terminology::ACT_CODE_SYSTEM, "code" => code},
        None => {
            let (code, display) = terminology::encounter_class(&class_code);
            obj! {"system" => terminology::ACT_CODE_SYSTEM, "code" => code, "display" => display}
        }
    };
    let mut participants = participant(ctx, &ATTENDER, pv1.f(7));
    participants.extend(participant(ctx, &REFERRER, pv1.f(8)));
    participants.extend(participant(ctx, &CONSULTANT, pv1.f(9)));
    participants.extend(participant(ctx, &ADMITTER, pv1.f(17)));
    let mut locations = Vec::new();
    for (field, status) in [(3, "active"), (6, "completed"), (11, "active")] {
        if let Some(loc) = location(ctx, pv1.f(field).first()) {
            locations.push(obj! {"location" => loc.reference(), "status" => status});
        }
    }
    let opts = ctx.opts;
    let reason = pv2.map(|p| cwe(p.f(3).first(), "", opts)).unwrap_or(Json::Null);
    let discharge = cwe(pv1.f(36).first(), "0112", opts);
    let key = if visit.is_null() {
        // No visit number: the visit is identified by patient, class and start.
        [&*subject.key, "|", &*class_code, "|", &*pv1.f(44).text()].concat()
    } else {
        id_key(&visit)
    };
    let token = search_token(Some(&visit));
    let resource = obj! {
        "identifier" => arr![visit],
        "status" => opts.table("ENCOUNTER", event).unwrap_or_else(|| encounter_status(event, pv1)),
        "class" => class,
        "type" => arr![cwe(pv1.f(4).first(), "0007", opts), cwe(pv1.f(18).first(), "0018", opts)],
        "serviceType" => cwe(pv1.f(10).first(), "0069", opts),
        "subject" => subject.patient.reference(),
        "participant" => participants,
        "period" => obj!{"start" => date_time(&pv1.f(44).text(), opts), "end" => date_time(&pv1.f(45).text(), opts)},
        "reasonCode" => arr![reason],
        "hospitalization" => obj!{
            "preAdmissionIdentifier" => cx(pv1.f(5).first(), opts),
            "admitSource" => cwe(pv1.f(14).first(), "0023", opts),
            "reAdmission" => cwe(pv1.f(13).first(), "0092", opts),
            "dietPreference" => arr![cwe(pv1.f(38).first(), "0114", opts)],
            "dischargeDisposition" => discharge,
        },
        "location" => locations,
    };
    subject.encounter = Some(ctx.add_token("Encounter", &key, token, resource));
}

fn subject_refs<'a>(subject: &Subject) -> (Json<'a>, Json<'a>) {
    (subject.patient.reference(), subject.encounter.as_ref().map(Ref::reference).unwrap_or(Json::Null))
}

/// RelatedPerson from NK1.
pub(crate) fn related_person<'a>(ctx: &mut Ctx<'a>, subject: &Subject, nk1: &Seg<'a>) {
    let opts = ctx.opts;
    let names: Vec<Json<'a>> = nk1.f(2).reps().map(xpn).filter(|v| !v.is_null()).collect();
    if names.is_empty() && nk1.f(13).is_empty() {
        return;
    }
    let mut telecom: Vec<Json<'a>> = nk1.f(5).reps().map(|r| xtn(r, "home")).collect();
    telecom.extend(nk1.f(6).reps().map(|r| xtn(r, "work")));
    let key = [&*subject.key, "|NK1|", &*nk1.f(1).text(), "|", &*nk1.f(2).first().c(1).text()].concat();
    let resource = obj! {
        "identifier" => non_null(nk1.f(33).reps().map(|r| cx(r, opts))),
        "active" => true,
        "patient" => subject.patient.reference(),
        "relationship" => arr![cwe(nk1.f(3).first(), "0063", opts), cwe(nk1.f(7).first(), "0131", opts)],
        "name" => names,
        "telecom" => telecom,
        "gender" => terminology::gender(&nk1.f(15).text()),
        "birthDate" => date(&nk1.f(16).text()),
        "address" => non_null(nk1.f(4).reps().map(xad)),
        "period" => obj!{"start" => date(&nk1.f(8).text()), "end" => date(&nk1.f(9).text())},
    };
    ctx.add("RelatedPerson", &key, None, resource);
}

/// AllergyIntolerance from AL1.
pub(crate) fn allergy<'a>(ctx: &mut Ctx<'a>, subject: &Subject, al1: &Seg<'a>) {
    let opts = ctx.opts;
    let code = cwe(al1.f(3).first(), "", opts);
    if code.is_null() {
        return;
    }
    let category = match al1.f(2).c(1).text().as_ref() {
        "DA" | "MA" => "medication",
        "FA" => "food",
        "EA" | "AA" | "PA" | "LA" => "environment",
        _ => "",
    };
    let criticality = match al1.f(4).c(1).text().as_ref() {
        "SV" => "high",
        "MO" | "MI" => "low",
        "U" => "unable-to-assess",
        _ => "",
    };
    let reactions: Vec<Json<'a>> = al1.f(5).reps().map(|r| text_concept(r.whole())).filter(|v| !v.is_null()).collect();
    let key = [&*subject.key, "|AL1|", &*al1.f(3).first().whole()].concat();
    let resource = obj! {
        "clinicalStatus" => Json::Static(&ALLERGY_ACTIVE),
        "type" => if al1.f(2).c(1).text() == "MC" { "" } else { "allergy" },
        "category" => arr![category],
        "criticality" => criticality,
        "code" => code,
        "patient" => subject.patient.reference(),
        "onsetDateTime" => date_time(&al1.f(6).text(), opts),
        "reaction" => if reactions.is_empty() { Json::Null } else { arr![obj!{"manifestation" => reactions}] },
    };
    ctx.add("AllergyIntolerance", &key, None, resource);
}

/// Condition from DG1.
pub(crate) fn condition<'a>(ctx: &mut Ctx<'a>, subject: &Subject, dg1: &Seg<'a>) {
    let opts = ctx.opts;
    let mut code = cwe(dg1.f(3).first(), "", opts);
    if code.is_null() {
        code = text_concept(dg1.f(4).text());
    }
    if code.is_null() {
        return;
    }
    let asserter = practitioner(ctx, dg1.f(16).first());
    let opts = ctx.opts;
    let (patient, encounter) = subject_refs(subject);
    let identifier = super::datatypes::ei(dg1.f(20).first(), "", opts);
    let key =
        [&*subject.key, "|DG1|", &*dg1.f(3).first().whole(), "|", &*dg1.f(4).text(), "|", &*dg1.f(5).text()].concat();
    let resource = obj! {
        "identifier" => arr![identifier],
        "category" => Json::Static(&ENCOUNTER_DIAGNOSIS),
        "code" => code,
        "subject" => patient,
        "encounter" => encounter,
        "onsetDateTime" => date_time(&dg1.f(5).text(), opts),
        "recordedDate" => date_time(&dg1.f(19).text(), opts),
        "asserter" => asserter.map(|a| a.reference()),
    };
    ctx.add("Condition", &key, None, resource);
}

/// Coverage (and its payor Organization) from IN1.
pub(crate) fn coverage<'a>(ctx: &mut Ctx<'a>, subject: &Subject, in1: &Seg<'a>) {
    let opts = ctx.opts;
    // The payor is the insurance company: IN1-3 (its id) and IN1-4 (name).
    let company_id = cx(in1.f(3).first(), opts);
    let company_name = in1.f(4).first().c(1).text().into_owned();
    if company_id.is_null() && company_name.is_empty() {
        return;
    }
    let payor_key = if company_id.is_null() { company_name.clone() } else { id_key(&company_id) };
    let token = search_token(Some(&company_id));
    let payor = ctx.add_token(
        "Organization",
        &payor_key,
        token,
        obj! {
            "identifier" => arr![company_id],
            "active" => true,
            "name" => company_name,
            "address" => non_null(in1.f(5).reps().map(xad)),
            "telecom" => non_null(in1.f(7).reps().map(|r| xtn(r, "work"))),
        },
    );
    let opts = ctx.opts;
    let policy = in1.f(36).text();
    let identifier = if policy.is_empty() {
        Json::Null
    } else {
        obj! {
            "type" => Json::Static(&MEMBER_NUMBER_TYPE),
            "value" => policy.clone(),
        }
    };
    let relationship = match in1.f(17).c(1).text().as_ref() {
        "SEL" => Json::Static(&SUBSCRIBER_SELF),
        "SPO" => Json::Static(&SUBSCRIBER_SPOUSE),
        "CHD" => Json::Static(&SUBSCRIBER_CHILD),
        "" => Json::Null,
        _ => Json::Static(&SUBSCRIBER_OTHER),
    };
    let group = in1.f(8).text();
    let plan = in1.f(2).first();
    let key = [&*subject.key, "|IN1|", &*payor_key, "|", &*in1.f(2).c(1).text(), "|", &*policy].concat();
    let class: Vec<Json<'a>> =
        [(&CLASS_GROUP, group, in1.f(9).first().c(1).text()), (&CLASS_PLAN, plan.c(1).text(), plan.c(2).text())]
            .into_iter()
            .filter(|(_, value, _)| !value.is_empty())
            .map(|(kind, value, name)| obj! {"type" => Json::Static(kind), "value" => value, "name" => name})
            .collect();
    let resource = obj! {
        "identifier" => arr![identifier],
        "status" => "active",
        "type" => cwe(in1.f(15).first(), "0086", opts),
        "beneficiary" => subject.patient.reference(),
        "relationship" => relationship,
        "period" => obj!{"start" => date(&in1.f(12).text()), "end" => date(&in1.f(13).text())},
        "payor" => arr![payor.reference()],
        "class" => class,
    };
    // Policy numbers are unique only per payor, and IN1-36 carries no
    // system: update by the derived id rather than search by identifier.
    ctx.add("Coverage", &key, None, resource);
}

//! HL7 v2 to FHIR R4: a message becomes a transaction Bundle.
//!
//! Dispatch is by MSH-9 (type and trigger event); each supported event maps
//! its segments following the HL7 v2-to-FHIR Implementation Guide's message,
//! segment and datatype maps where they speak, simplified where noted in the
//! mappers. Every message gives a Patient (PID); the event decides the rest.
//! The output is deterministic: no clock, no randomness; ids are hashes of
//! identifying fields (see [`bundle`]).

/// Builds a JSON object ([`json::Json`]) from `"key" => value` pairs,
/// moving each value in (`Json::from`) and leaving out empty ones (null, "",
/// [], {}): FHIR forbids empty elements. Keys are the literals, in the order
/// written.
macro_rules! obj {
    (@count) => { 0usize };
    (@count $head:literal $($tail:literal)*) => { 1usize + obj!(@count $($tail)*) };
    ($($key:literal => $value:expr),* $(,)?) => {{
        // The member list is allocated at the first non-empty member: most
        // nested objects (a period, an assigner) come out empty.
        #[allow(unused_mut)]
        let mut members: Vec<(&'static str, $crate::v2::json::Json<'_>)> = Vec::new();
        #[allow(unused_variables)]
        let capacity = obj!(@count $($key)*);
        $( $crate::v2::put_lazy(&mut members, capacity, $key, $crate::v2::json::Json::from($value)); )*
        $crate::v2::json::Json::Obj(members)
    }};
}

/// Builds a JSON array, leaving out empty values (as [`obj!`]). An array
/// that comes out with one object is a [`json::Json::ArrObj`] (no item list
/// allocated), with one other value an item list of exactly one.
macro_rules! arr {
    (@unit $value:expr) => { () };
    ($($value:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut items = $crate::v2::Items::default();
        #[allow(unused_variables)]
        let capacity = <[()]>::len(&[$(arr!(@unit $value)),*]);
        $( items.push($crate::v2::json::Json::from($value), capacity); )*
        items.finish()
    }};
}

/// The items of an `arr!` as they come: the first one is held until a
/// second one needs an item list.
#[derive(Default)]
pub(crate) struct Items<'a> {
    first: Option<Json<'a>>,
    more: Vec<Json<'a>>,
}

impl<'a> Items<'a> {
    /// Appends unless empty; `capacity` is the most items there can be.
    #[inline(always)]
    pub(crate) fn push(&mut self, value: Json<'a>, capacity: usize) {
        if value.is_empty() {
            return;
        }
        if !self.more.is_empty() {
            self.more.push(value);
        } else if let Some(first) = self.first.take() {
            self.more.reserve_exact(capacity);
            self.more.push(first);
            self.more.push(value);
        } else {
            self.first = Some(value);
        }
    }

    #[inline(always)]
    pub(crate) fn finish(self) -> Json<'a> {
        match self.first {
            None => Json::Arr(self.more),
            Some(Json::Obj(members)) => Json::ArrObj(members),
            Some(one) => Json::Arr(vec![one]),
        }
    }
}

/// Appends unless empty, reserving room for `capacity` members at the first
/// one. Inlined: it runs for every member written by `obj!`, and a call
/// copies the member through the stack.
#[inline(always)]
pub(crate) fn put_lazy<'a>(
    members: &mut Vec<(&'static str, Json<'a>)>,
    capacity: usize,
    key: &'static str,
    value: Json<'a>,
) {
    if !value.is_empty() {
        if members.capacity() == 0 {
            members.reserve_exact(capacity);
        }
        members.push((key, value));
    }
}

pub(crate) mod bundle;
mod clinical;
pub(crate) mod datatypes;
pub(crate) mod json;
mod patient;
pub(crate) mod view;

use crate::error::ConvertError;
use crate::options::Hl7ToFhirOptions;
use bundle::Ctx;
use json::Json;
use view::Msg;

/// The message types and events [`convert`] supports, for error messages.
pub const SUPPORTED: &str = "supported: ADT^A01 A02 A03 A04 A05 A08 A11 A13 A28 A31 A40, ORU^R01, ORM^O01, \
     SIU^S12 S13 S14 S15 S26, MDM^T02 T06, VXU^V04";

/// Converts a parsed message to a transaction Bundle as a
/// `serde_json::Value` (its empty elements left out).
pub(crate) fn convert(message: &hl7v2::Message, opts: &Hl7ToFhirOptions) -> Result<serde_json::Value, ConvertError> {
    let cx = view::Cx::of(message);
    // A Bundle always has members; an empty one would be JSON null.
    Ok(map(message, &cx, opts, None)?.finish().into_value().unwrap_or_default())
}

/// Converts a parsed message to a transaction Bundle written as JSON
/// (compact, or indented as serde_json's pretty printer does): what
/// [`convert`]'s tree writes, each entry written as soon as it is complete.
pub(crate) fn convert_json(
    message: &hl7v2::Message,
    opts: &Hl7ToFhirOptions,
    pretty: bool,
) -> Result<Vec<u8>, ConvertError> {
    let capacity = message.as_bytes().len() * if pretty { 12 } else { 6 } + 2048;
    let cx = view::Cx::of(message);
    let ctx = map(message, &cx, opts, Some((pretty, capacity)))?;
    Ok(ctx.finish_json().unwrap_or_default())
}

/// Maps the message's segments into a Bundle (see [`Ctx::new`] for `json`).
fn map<'a>(
    message: &'a hl7v2::Message,
    cx: &'a view::Cx<'a>,
    opts: &'a Hl7ToFhirOptions,
    json: Option<(bool, usize)>,
) -> Result<Ctx<'a>, ConvertError> {
    opts.validate()?;
    let msg = Msg::new(message, cx);
    let msh = msg.seg("MSH").ok_or_else(|| ConvertError::NotHl7("no MSH segment".into()))?;
    // Borrowed from the message; the type's text is made only for an error.
    let kind = msh.f(9).c(1).text();
    let mut event = msh.f(9).c(2).text();
    if event.is_empty()
        && let Some(evn) = msg.seg("EVN")
    {
        event = evn.f(1).text();
    }
    let unsupported = || ConvertError::UnsupportedMessage { message_type: format!("{kind}^{event}"), hint: SUPPORTED };
    let supported = match kind.as_ref() {
        "ADT" => matches!(
            event.as_ref(),
            "A01" | "A02" | "A03" | "A04" | "A05" | "A08" | "A11" | "A13" | "A28" | "A31" | "A40"
        ),
        "ORU" => event == "R01",
        "ORM" => event == "O01",
        "SIU" => matches!(event.as_ref(), "S12" | "S13" | "S14" | "S15" | "S26"),
        "MDM" => matches!(event.as_ref(), "T02" | "T06"),
        "VXU" => event == "V04",
        _ => false,
    };
    if !supported {
        return Err(unsupported());
    }
    let pid = msg.seg("PID").ok_or_else(|| ConvertError::Missing { path: "PID segment".into() })?;
    // The Bundle's own id: sender and control id identify the message.
    let identity = [&*msh.f(3).text(), "|", &*msh.f(4).text(), "|", &*msh.f(10).text()].concat();
    let timestamp = datatypes::instant(&msh.f(7).text(), opts);
    let mut ctx = Ctx::new(opts, &identity, timestamp, json);
    // A40: the surviving Patient links the replaced one, so MRG is read
    // before it is written (its errors still come after PID's).
    let replaced = (kind == "ADT" && event == "A40").then(|| {
        msg.seg("MRG")
            .ok_or_else(|| ConvertError::Missing { path: "MRG segment".into() })
            .and_then(|mrg| patient::replaced(mrg, opts))
    });
    let mut subject = patient::patient(&mut ctx, pid, msg.seg("PD1"), replaced.as_ref().and_then(|r| r.as_ref().ok()))?;
    let with_visit = !(kind == "ADT" && matches!(event.as_ref(), "A28" | "A31" | "A40"));
    if with_visit {
        patient::encounter(&mut ctx, &mut subject, msg.seg("PV1"), msg.seg("PV2"), &event);
    }
    match kind.as_ref() {
        "ADT" => {
            if let Some(replaced) = replaced {
                patient::merge(&mut ctx, &subject, replaced?);
            } else {
                for nk1 in msg.all("NK1") {
                    patient::related_person(&mut ctx, &subject, nk1);
                }
                clinical::patient_observations(&mut ctx, &msg, &subject)?;
                for al1 in msg.all("AL1") {
                    patient::allergy(&mut ctx, &subject, al1);
                }
                for dg1 in msg.all("DG1") {
                    patient::condition(&mut ctx, &subject, dg1);
                }
                for in1 in msg.all("IN1") {
                    patient::coverage(&mut ctx, &subject, in1);
                }
            }
        }
        "ORU" => clinical::oru(&mut ctx, &msg, &subject)?,
        "ORM" => {
            for al1 in msg.all("AL1") {
                patient::allergy(&mut ctx, &subject, al1);
            }
            for dg1 in msg.all("DG1") {
                patient::condition(&mut ctx, &subject, dg1);
            }
            clinical::orm(&mut ctx, &msg, &subject)?;
        }
        "SIU" => clinical::siu(&mut ctx, &msg, &subject, &event)?,
        "MDM" => clinical::mdm(&mut ctx, &msg, &subject, &event)?,
        "VXU" => {
            for nk1 in msg.all("NK1") {
                patient::related_person(&mut ctx, &subject, nk1);
            }
            clinical::vxu(&mut ctx, &msg, &subject)?;
        }
        _ => return Err(unsupported()),
    }
    Ok(ctx)
}

#[cfg(test)]
mod tests {
    use super::json::Json;

    #[test]
    fn arr_keeps_one_object_without_an_item_list() {
        let one: Json<'_> = arr![obj! {"code" => "x"}, Json::Null, ""];
        assert!(matches!(&one, Json::ArrObj(members) if members.len() == 1));
        assert_eq!(one.first_get("code"), Some(&Json::from("x")));
        let two: Json<'_> = arr![obj! {"code" => "x"}, Json::Null, "y"];
        assert!(matches!(&two, Json::Arr(items) if items.len() == 2 && items.capacity() == 3));
        let three: Json<'_> = arr!["a", "b", "c"];
        assert!(matches!(&three, Json::Arr(items) if items.len() == 3));
        let text: Json<'_> = arr![Json::Null, "t"];
        assert!(matches!(&text, Json::Arr(items) if items.len() == 1 && items.capacity() == 1));
        let none: Json<'_> = arr![Json::Null, obj! {"code" => Json::Null}];
        assert!(none.is_empty());
        for (tree, json) in [(one, r#"[{"code":"x"}]"#), (two, r#"[{"code":"x"},"y"]"#), (three, r#"["a","b","c"]"#)] {
            let mut out = Vec::new();
            assert!(tree.write(&mut out, false));
            assert_eq!(String::from_utf8(out).unwrap(), json);
        }
    }
}

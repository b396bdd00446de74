//! Segments assembled as text trees, then encoded with the message's
//! delimiters through `hl7v2::escape::encode` (so every delimiter, the escape
//! character and line breaks in a value are escaped exactly as the HL7 v2
//! crate reads them back) and appended with `Message::push_segment`.
//!
//! Building a whole segment before appending it keeps the cost linear: the
//! path-based `Message::set` re-splices the segment at every call, which is
//! right for edits but quadratic for an ORU with hundreds of OBX.

use hl7v2::{Delimiters, Message};

use crate::error::ConvertError;

/// field -> repetition -> component -> sub-component.
type Field = Vec<Vec<Vec<String>>>;

/// One segment under construction (positions are 1-based, as in HL7).
#[derive(Debug, Clone)]
pub(crate) struct SegW {
    name: &'static str,
    fields: Vec<Field>,
}

fn slot<T: Default>(v: &mut Vec<T>, one_based: usize) -> &mut T {
    let i = one_based.max(1) - 1;
    if v.len() <= i {
        v.resize_with(i + 1, T::default);
    }
    &mut v[i]
}

impl SegW {
    pub fn new(name: &'static str) -> SegW {
        SegW { name, fields: Vec::new() }
    }

    /// Sets field `f`, repetition `r`, component `c`, sub-component `s`.
    /// An empty value writes nothing (so optional input needs no test).
    pub fn at(&mut self, f: usize, r: usize, c: usize, s: usize, value: &str) -> &mut SegW {
        if !value.is_empty() {
            let field = slot(&mut self.fields, f);
            let rep = slot(field, r);
            let comp = slot(rep, c);
            *slot(comp, s) = value.to_string();
        }
        self
    }

    /// Sets field `f`, component `c` of the first repetition.
    pub fn put(&mut self, f: usize, c: usize, value: &str) -> &mut SegW {
        self.at(f, 1, c, 1, value)
    }

    /// Whether field `f` has any value.
    pub fn has(&self, f: usize) -> bool {
        self.fields.get(f.max(1) - 1).is_some_and(|rep| rep.iter().flatten().flatten().any(|s| !s.is_empty()))
    }

    /// The segment as bytes with `d`'s delimiters, trailing empties dropped.
    pub fn encode(&self, d: &Delimiters) -> Vec<u8> {
        let rep_sep = d.repetition().unwrap_or(b'~');
        let sub_sep = d.subcomponent().unwrap_or(b'&');
        let mut out = self.name.as_bytes().to_vec();
        let last = self.fields.iter().rposition(|f| f.iter().flatten().flatten().any(|s| !s.is_empty()));
        let Some(last) = last else { return out };
        for field in &self.fields[..=last] {
            out.push(d.field());
            for (ri, rep) in field.iter().enumerate() {
                if ri > 0 {
                    out.push(rep_sep);
                }
                let last_c = rep.iter().rposition(|c| c.iter().any(|s| !s.is_empty())).map_or(0, |i| i + 1);
                for (ci, comp) in rep[..last_c].iter().enumerate() {
                    if ci > 0 {
                        out.push(d.component());
                    }
                    let last_s = comp.iter().rposition(|s| !s.is_empty()).map_or(0, |i| i + 1);
                    for (si, sub) in comp[..last_s].iter().enumerate() {
                        if si > 0 {
                            out.push(sub_sep);
                        }
                        out.extend_from_slice(&hl7v2::escape::encode(sub.as_bytes(), d));
                    }
                }
            }
        }
        out
    }

    /// Appends the segment to `msg`.
    pub fn push(&self, msg: &mut Message) -> Result<(), ConvertError> {
        let bytes = self.encode(msg.delimiters());
        msg.push_segment(&bytes).map(|_| ()).map_err(|e| ConvertError::Encode(format!("{}: {e}", self.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_escapes_and_trims_trailing_empties() {
        let mut s = SegW::new("OBX");
        s.put(1, 1, "1").put(3, 1, "2339-0").put(3, 2, "Glucose ^ | & ~ \\ in\nblood").put(3, 3, "LN");
        s.at(5, 2, 1, 1, "second").at(4, 1, 2, 3, "").at(9, 1, 1, 1, "");
        let bytes = s.encode(&Delimiters::default());
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r"OBX|1||2339-0^Glucose \S\ \F\ \T\ \R\ \E\ in\.br\blood^LN||~second"
        );
    }

    #[test]
    fn round_trips_through_the_parser() {
        let mut msg = Message::parse("MSH|^~\\&|A|B|||20240101||ORU^R01^ORU_R01|1|P|2.5.1").unwrap();
        let mut s = SegW::new("NTE");
        s.put(1, 1, "1").put(3, 1, "a|b^c&d~e\\f");
        s.push(&mut msg).unwrap();
        assert_eq!(msg.get("NTE-3").as_deref(), Some("a|b^c&d~e\\f"));
    }
}

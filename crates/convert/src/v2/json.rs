//! The JSON tree the HL7 v2 mappers build: made for building and writing,
//! not for lookup.
//!
//! A `serde_json::Value` with `preserve_order` costs an IndexMap per object
//! (two allocations and a SipHash per key) and an owned `String` per key and
//! per text, about 900 allocations for a typical ADT^A01 Bundle before any
//! work is done. Here object keys are the mappers' `&'static str` literals in
//! the order written (the few lookups scan linearly: objects hold a handful
//! of members), and text read from the message is borrowed from it unless an
//! escape sequence or the character set had to be decoded. The tree is
//! written as JSON directly ([`Json::write`]) or turned into a
//! `serde_json::Value` for the public API ([`Json::into_value`]); both give
//! the same document, member order included.

use std::borrow::Cow;

use serde_json::{Number, Value};

/// A JSON value under construction.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json<'a> {
    Null,
    Bool(bool),
    Num(Number),
    /// A decimal as written in the message (FHIR decimals keep their
    /// precision: "1.50" stays 1.50), already in JSON number syntax; see
    /// `datatypes::decimal`.
    Decimal(Cow<'a, str>),
    Str(Cow<'a, str>),
    /// The string `urn:uuid:<uuid>` (an entry's fullUrl or a reference to
    /// it), made into text only when written.
    Urn(uuid::Uuid),
    /// A resource id, the uuid as 32 hex digits, made into text only when
    /// written.
    Id(uuid::Uuid),
    /// A FHIR Reference to an entry, `{"reference": "urn:uuid:<uuid>"}`,
    /// made into an object only when written (a Bundle holds dozens, each
    /// a member list otherwise).
    Reference(uuid::Uuid),
    Arr(Vec<Json<'a>>),
    /// An array of one object, `[{members}]`: what `arr!` makes of a single
    /// object (a coding, an identifier's type, a name ...), most arrays of
    /// a Bundle; one member list, no item list around it.
    ArrObj(Vec<(&'static str, Json<'a>)>),
    /// Members in output order. Keys are unique (see [`Json::insert`]).
    Obj(Vec<(&'static str, Json<'a>)>),
    /// A Bundle's entries, each written as `{"fullUrl", "resource",
    /// "request"}` with the resource's `resourceType` and `id` in front of
    /// its members: made into objects only when written (three member lists
    /// and a URL fewer per entry, and no re-built member list to put the two
    /// in front).
    Entries(Vec<Entry<'a>>),
    /// A constant value (a fixed coding, a category): its compact JSON
    /// copied in one piece, no member lists built, dropped or walked (see
    /// [`Static`]).
    Static(&'static Static),
    /// An Identifier.type coded in v2 table 0203, `{"coding": [{"system":
    /// "<v2-0203>", "code": <code>}]}`, made into objects only when written
    /// (most identifiers have one: two member lists fewer each).
    IdType(Cow<'a, str>),
}

/// The system of [`Json::IdType`]'s coding.
const TABLE_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";

/// [`Json::IdType`] as a tree (for the pretty writer and the Value path).
fn id_type_tree<'a>(code: &Cow<'a, str>) -> Json<'a> {
    Json::Obj(vec![(
        "coding",
        Json::ArrObj(vec![("system", Json::from(TABLE_0203)), ("code", Json::Str(code.clone()))]),
    )])
}

/// A constant JSON value, made once: the tree for the pretty writer and
/// the `serde_json::Value` path, and its compact text (written by the tree
/// itself the first time it is needed, so the two cannot differ).
#[derive(Debug)]
pub(crate) struct Static {
    tree: fn() -> Json<'static>,
    compact: std::sync::OnceLock<Box<[u8]>>,
}

impl Static {
    /// The constant `tree()` builds (never empty: an empty one is left out
    /// like any empty value).
    pub const fn new(tree: fn() -> Json<'static>) -> Static {
        Static { tree, compact: std::sync::OnceLock::new() }
    }

    fn compact(&self) -> &[u8] {
        self.compact.get_or_init(|| {
            let mut out = Vec::new();
            (self.tree)().write(&mut out, false);
            out.into_boxed_slice()
        })
    }
}

impl PartialEq for Static {
    fn eq(&self, other: &Static) -> bool {
        self.compact() == other.compact()
    }
}

// Values are moved into and out of member lists all the time: keep them at
// four words (a Cow, or a Vec, and the tag).
const _: () = assert!(std::mem::size_of::<Json<'static>>() == 32);

/// One entry of a transaction Bundle (see [`Json::Entries`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry<'a> {
    /// Its fullUrl is `urn:uuid:<uuid>`; its id the uuid's 32 hex digits.
    pub uuid: uuid::Uuid,
    /// The resource type.
    pub kind: &'static str,
    /// The search token of a conditional update (`PUT
    /// <kind>?identifier=<token>`, already escaped for a URL, and no `id`);
    /// None for an update by id (`PUT <kind>/<id>`).
    pub token: Option<String>,
    /// The resource's own members (an object), without resourceType and id.
    pub resource: Json<'a>,
}

impl<'a> Entry<'a> {
    /// The request URL.
    fn url(&self) -> String {
        match &self.token {
            Some(t) => [self.kind, "?identifier=", t].concat(),
            None => [self.kind, "/", &crate::v2::bundle::simple(self.uuid)].concat(),
        }
    }

    fn into_value(self) -> Value {
        let mut resource = serde_json::Map::new();
        resource.insert("resourceType".into(), Value::String(self.kind.into()));
        if self.token.is_none() {
            resource.insert("id".into(), Value::String(crate::v2::bundle::simple(self.uuid)));
        }
        let url = self.url();
        if let Json::Obj(members) = self.resource {
            for (k, v) in members {
                if let Some(v) = v.into_value() {
                    resource.insert(k.to_string(), v);
                }
            }
        }
        let mut request = serde_json::Map::with_capacity(2);
        request.insert("method".into(), Value::String("PUT".into()));
        request.insert("url".into(), Value::String(url));
        let mut entry = serde_json::Map::with_capacity(3);
        entry.insert("fullUrl".into(), Value::String(crate::v2::bundle::urn(self.uuid)));
        entry.insert("resource".into(), Value::Object(resource));
        entry.insert("request".into(), Value::Object(request));
        Value::Object(entry)
    }

    /// The members of the resource as the mapper built them.
    fn members(&self) -> &[(&'static str, Json<'a>)] {
        match &self.resource {
            Json::Obj(members) => members,
            _ => &[],
        }
    }

    /// Writes the request URL as a JSON string (the type and hex digits
    /// need no escaping; the token may).
    fn write_url(&self, out: &mut Vec<u8>) {
        out.push(b'"');
        out.extend_from_slice(self.kind.as_bytes());
        match &self.token {
            Some(t) => {
                out.extend_from_slice(b"?identifier=");
                write_str_body(out, t);
            }
            None => {
                out.push(b'/');
                out.extend_from_slice(&hex32(&self.uuid));
            }
        }
        out.push(b'"');
    }

    /// Writes this entry as an item of a Bundle's `entry` array (after the
    /// comma, if any): what [`Json::write`] writes for it in a Bundle.
    pub fn write_in_bundle(&self, out: &mut Vec<u8>, pretty: bool) {
        if pretty {
            // The array is the Bundle's member (depth 1), its items at 2.
            indent(out, 2);
            self.write_pretty(out, 2);
        } else {
            self.write_compact(out);
        }
    }

    fn write_compact(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"fullUrl\":");
        Json::Urn(self.uuid).write_scalar(out);
        out.extend_from_slice(b",\"resource\":{\"resourceType\":\"");
        out.extend_from_slice(self.kind.as_bytes());
        out.push(b'"');
        if self.token.is_none() {
            out.extend_from_slice(b",\"id\":");
            Json::Id(self.uuid).write_scalar(out);
        }
        write_members_compact(out, self.members(), true);
        out.extend_from_slice(b"},\"request\":{\"method\":\"PUT\",\"url\":");
        self.write_url(out);
        out.extend_from_slice(b"}}");
    }

    fn write_pretty(&self, out: &mut Vec<u8>, depth: usize) {
        out.push(b'{');
        indent(out, depth + 1);
        out.extend_from_slice(b"\"fullUrl\": ");
        Json::Urn(self.uuid).write_scalar(out);
        out.push(b',');
        indent(out, depth + 1);
        out.extend_from_slice(b"\"resource\": {");
        indent(out, depth + 2);
        out.extend_from_slice(b"\"resourceType\": \"");
        out.extend_from_slice(self.kind.as_bytes());
        out.push(b'"');
        if self.token.is_none() {
            out.push(b',');
            indent(out, depth + 2);
            out.extend_from_slice(b"\"id\": ");
            Json::Id(self.uuid).write_scalar(out);
        }
        write_members_pretty(out, self.members(), true, depth + 1);
        indent(out, depth + 1);
        out.extend_from_slice(b"},");
        indent(out, depth + 1);
        out.extend_from_slice(b"\"request\": {");
        indent(out, depth + 2);
        out.extend_from_slice(b"\"method\": \"PUT\",");
        indent(out, depth + 2);
        out.extend_from_slice(b"\"url\": ");
        self.write_url(out);
        indent(out, depth + 1);
        out.push(b'}');
        indent(out, depth);
        out.push(b'}');
    }
}

/// serde_json's PrettyFormatter: a newline and the indent before each item.
fn indent(out: &mut Vec<u8>, depth: usize) {
    out.push(b'\n');
    out.resize(out.len() + 2 * depth, b' ');
}

/// Writes an object's members after those already written (`any`: whether
/// there are some), leaving out empty ones; whether any member was written.
fn write_members_compact(out: &mut Vec<u8>, members: &[(&'static str, Json<'_>)], mut any: bool) -> bool {
    for (k, v) in members {
        let at = out.len();
        if any {
            out.push(b',');
        }
        write_key(out, k);
        out.push(b':');
        if v.write_compact(out) {
            any = true;
        } else {
            out.truncate(at);
        }
    }
    any
}

/// [`write_members_compact`], indented: members at `depth + 1`.
fn write_members_pretty(out: &mut Vec<u8>, members: &[(&'static str, Json<'_>)], mut any: bool, depth: usize) -> bool {
    for (k, v) in members {
        let at = out.len();
        if any {
            out.push(b',');
        }
        indent(out, depth + 1);
        write_key(out, k);
        out.extend_from_slice(b": ");
        if v.write_pretty(out, depth + 1) {
            any = true;
        } else {
            out.truncate(at);
        }
    }
    any
}

impl<'a> Json<'a> {
    /// Whether this value is empty in the FHIR sense (null, "", [], {}); not
    /// recursive: see [`Json::prune`].
    #[inline]
    pub fn is_empty(&self) -> bool {
        match self {
            Json::Null => true,
            Json::Str(s) => s.is_empty(),
            Json::Arr(a) => a.is_empty(),
            Json::ArrObj(o) | Json::Obj(o) => o.is_empty(),
            Json::Entries(e) => e.is_empty(),
            Json::Static(s) => s.compact().is_empty(),
            Json::IdType(code) => code.is_empty(),
            Json::Bool(_) | Json::Num(_) | Json::Decimal(_) | Json::Urn(_) | Json::Id(_) | Json::Reference(_) => false,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The member `key` of an object (not of a [`Json::Reference`]).
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Obj(members) => members.iter().find(|(k, _)| *k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The code of an Identifier.type made by the mappers (a
    /// [`Json::IdType`], or a tree with a first coding).
    pub fn type_code(&self) -> Option<&str> {
        match self {
            Json::IdType(code) => Some(code),
            _ => self.get("coding").and_then(|c| c.first_get("code")).and_then(Json::as_str),
        }
    }

    /// The member `key` of an array's first item.
    pub fn first_get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Arr(items) => items.first()?.get(key),
            Json::ArrObj(members) => members.iter().find(|(k, _)| *k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Sets member `key` of an object: replaced where it is, else appended
    /// (an ordered map's insert). Empty values are kept (left out only when
    /// written), so a mapper can hold a member's place. No effect on a
    /// value that is not an object.
    pub fn insert(&mut self, key: &'static str, value: Json<'a>) {
        if let Json::Obj(members) = self {
            insert(members, key, value);
        }
    }

    /// Removes member `key` of an object, keeping the others' order.
    pub fn remove(&mut self, key: &str) {
        if let Json::Obj(members) = self {
            members.retain(|(k, _)| *k != key);
        }
    }

    /// The same document as a `serde_json::Value` (member order kept),
    /// empty members and items left out depth first as FHIR wants (an
    /// object whose members are all empty is empty itself); None when
    /// `self` is empty.
    pub fn into_value(self) -> Option<Value> {
        match self {
            Json::Null => None,
            Json::Bool(b) => Some(Value::Bool(b)),
            Json::Num(n) => Some(Value::Number(n)),
            // A serde_json::Number (without the arbitrary_precision feature)
            // holds an f64: "1.50" becomes 1.5 here, the one place where the
            // Value and the written JSON differ.
            Json::Decimal(d) => d.parse::<Number>().ok().map(Value::Number),
            Json::Str(s) => (!s.is_empty()).then(|| Value::String(s.into_owned())),
            Json::Urn(uuid) => Some(Value::String(crate::v2::bundle::urn(uuid))),
            Json::Id(uuid) => Some(Value::String(crate::v2::bundle::simple(uuid))),
            Json::Reference(uuid) => {
                let mut map = serde_json::Map::with_capacity(1);
                map.insert("reference".into(), Value::String(crate::v2::bundle::urn(uuid)));
                Some(Value::Object(map))
            }
            Json::ArrObj(members) => Json::Obj(members).into_value().map(|v| Value::Array(vec![v])),
            Json::Arr(items) => {
                let items: Vec<Value> = items.into_iter().filter_map(Json::into_value).collect();
                (!items.is_empty()).then_some(Value::Array(items))
            }
            Json::Obj(members) => {
                let mut map = serde_json::Map::with_capacity(members.len());
                for (k, v) in members {
                    if let Some(v) = v.into_value() {
                        map.insert(k.to_string(), v);
                    }
                }
                (!map.is_empty()).then_some(Value::Object(map))
            }
            Json::Entries(entries) => {
                (!entries.is_empty()).then(|| Value::Array(entries.into_iter().map(Entry::into_value).collect()))
            }
            Json::Static(s) => (s.tree)().into_value(),
            Json::IdType(code) => (!code.is_empty()).then(|| id_type_tree(&code).into_value()).flatten(),
        }
    }

    /// Appends this value as JSON to `out`, compact or indented by two
    /// spaces, leaving out empty members and items as [`Json::into_value`]
    /// does: byte for byte what `serde_json::to_vec` and
    /// `serde_json::to_vec_pretty` write for that value. Writes nothing and
    /// returns false when `self` is empty.
    pub fn write(&self, out: &mut Vec<u8>, pretty: bool) -> bool {
        if pretty { self.write_pretty(out, 0) } else { self.write_compact(out) }
    }

    // Both writers prune as they go: a container is written, then taken back
    // (truncated) if nothing in it was written, which costs less than a
    // separate pass over the tree.
    fn write_compact(&self, out: &mut Vec<u8>) -> bool {
        match self {
            Json::Arr(items) => {
                let mark = out.len();
                out.push(b'[');
                let mut any = false;
                for item in items {
                    let at = out.len();
                    if any {
                        out.push(b',');
                    }
                    if item.write_compact(out) {
                        any = true;
                    } else {
                        out.truncate(at);
                    }
                }
                if !any {
                    out.truncate(mark);
                    return false;
                }
                out.push(b']');
                true
            }
            Json::Obj(members) => {
                let mark = out.len();
                out.push(b'{');
                if !write_members_compact(out, members, false) {
                    out.truncate(mark);
                    return false;
                }
                out.push(b'}');
                true
            }
            Json::ArrObj(members) => {
                let mark = out.len();
                out.extend_from_slice(b"[{");
                if !write_members_compact(out, members, false) {
                    out.truncate(mark);
                    return false;
                }
                out.extend_from_slice(b"}]");
                true
            }
            Json::Entries(entries) => {
                let Some((first, rest)) = entries.split_first() else { return false };
                out.push(b'[');
                first.write_compact(out);
                for entry in rest {
                    out.push(b',');
                    entry.write_compact(out);
                }
                out.push(b']');
                true
            }
            scalar => scalar.write_scalar(out),
        }
    }

    fn write_pretty(&self, out: &mut Vec<u8>, depth: usize) -> bool {
        // serde_json's PrettyFormatter: a newline and the indent before each
        // item, `": "` after a key (empty containers are never written).
        match self {
            Json::Arr(items) => {
                let mark = out.len();
                out.push(b'[');
                let mut any = false;
                for item in items {
                    let at = out.len();
                    if any {
                        out.push(b',');
                    }
                    indent(out, depth + 1);
                    if item.write_pretty(out, depth + 1) {
                        any = true;
                    } else {
                        out.truncate(at);
                    }
                }
                if !any {
                    out.truncate(mark);
                    return false;
                }
                indent(out, depth);
                out.push(b']');
                true
            }
            Json::Obj(members) => {
                let mark = out.len();
                out.push(b'{');
                if !write_members_pretty(out, members, false, depth) {
                    out.truncate(mark);
                    return false;
                }
                indent(out, depth);
                out.push(b'}');
                true
            }
            Json::ArrObj(members) => {
                // An array at `depth`, its object at `depth + 1`.
                let mark = out.len();
                out.push(b'[');
                indent(out, depth + 1);
                out.push(b'{');
                if !write_members_pretty(out, members, false, depth + 1) {
                    out.truncate(mark);
                    return false;
                }
                indent(out, depth + 1);
                out.push(b'}');
                indent(out, depth);
                out.push(b']');
                true
            }
            Json::Reference(uuid) => {
                out.push(b'{');
                indent(out, depth + 1);
                out.extend_from_slice(b"\"reference\": ");
                Json::Urn(*uuid).write_scalar(out);
                indent(out, depth);
                out.push(b'}');
                true
            }
            Json::Entries(entries) => {
                if entries.is_empty() {
                    return false;
                }
                out.push(b'[');
                for (i, entry) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    indent(out, depth + 1);
                    entry.write_pretty(out, depth + 1);
                }
                indent(out, depth);
                out.push(b']');
                true
            }
            Json::Static(s) => (s.tree)().write_pretty(out, depth),
            Json::IdType(code) => !code.is_empty() && id_type_tree(code).write_pretty(out, depth),
            scalar => scalar.write_scalar(out),
        }
    }

    /// Writes a scalar; false (nothing written) for null and "".
    fn write_scalar(&self, out: &mut Vec<u8>) -> bool {
        match self {
            Json::Null => return false,
            Json::Bool(true) => out.extend_from_slice(b"true"),
            Json::Bool(false) => out.extend_from_slice(b"false"),
            // Number's Display is serde_json's own number writer (itoa for
            // integers, ryu for floats). Numbers are rare in a Bundle.
            Json::Num(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Json::Decimal(d) => out.extend_from_slice(d.as_bytes()),
            Json::Urn(uuid) => write_urn(out, uuid),
            Json::Reference(uuid) => {
                // Compact (the pretty writer indents it itself).
                out.extend_from_slice(b"{\"reference\":");
                Json::Urn(*uuid).write_scalar(out);
                out.push(b'}');
            }
            Json::Id(uuid) => {
                // Hex digits: nothing to escape.
                let mut quoted = [b'"'; 34];
                quoted[1..33].copy_from_slice(&hex32(uuid));
                out.extend_from_slice(&quoted);
            }
            Json::Str(s) if s.is_empty() => return false,
            Json::Str(s) => write_str(out, s),
            // Compact only (the pretty writer writes its tree).
            Json::Static(s) => {
                let compact = s.compact();
                if compact.is_empty() {
                    return false;
                }
                out.extend_from_slice(compact);
            }
            Json::IdType(code) if code.is_empty() => return false,
            Json::IdType(code) => {
                out.extend_from_slice(b"{\"coding\":[{\"system\":\"");
                out.extend_from_slice(TABLE_0203.as_bytes());
                out.extend_from_slice(b"\",\"code\":");
                write_str(out, code);
                out.extend_from_slice(b"}]}");
            }
            Json::Arr(_) | Json::ArrObj(_) | Json::Obj(_) | Json::Entries(_) => return false,
        }
        true
    }
}

impl PartialEq<&str> for Json<'_> {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == Some(*other)
    }
}

/// The uuid as 32 lower-case hex digits, a pair per byte from a table (a
/// Bundle writes each entry's uuid three times and references dozens).
fn hex32(uuid: &uuid::Uuid) -> [u8; 32] {
    static PAIRS: [[u8; 2]; 256] = {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut pairs = [[0u8; 2]; 256];
        let mut b = 0;
        while b < 256 {
            pairs[b] = [HEX[b >> 4], HEX[b & 0xf]];
            b += 1;
        }
        pairs
    };
    let mut out = [0u8; 32];
    for (pair, b) in out.chunks_exact_mut(2).zip(uuid.as_bytes()) {
        pair.copy_from_slice(&PAIRS[usize::from(*b)]);
    }
    out
}

/// Writes `"urn:uuid:<hyphenated uuid>"` (hex digits and hyphens: nothing
/// to escape) in one copy.
fn write_urn(out: &mut Vec<u8>, uuid: &uuid::Uuid) {
    let hex = hex32(uuid);
    let mut urn = *b"\"urn:uuid:________-____-____-____-____________\"";
    urn[10..18].copy_from_slice(&hex[..8]);
    urn[19..23].copy_from_slice(&hex[8..12]);
    urn[24..28].copy_from_slice(&hex[12..16]);
    urn[29..33].copy_from_slice(&hex[16..20]);
    urn[34..46].copy_from_slice(&hex[20..]);
    out.extend_from_slice(&urn);
}

/// Sets `key` in `members` (replaced in place, else appended).
pub(crate) fn insert<'a>(members: &mut Vec<(&'static str, Json<'a>)>, key: &'static str, value: Json<'a>) {
    match members.iter_mut().find(|(k, _)| *k == key) {
        Some((_, slot)) => *slot = value,
        None => members.push((key, value)),
    }
}

/// Writes `s` as a JSON string with serde_json's escaping: `"` and `\`,
/// and control characters (short forms where JSON has them, else
/// `\u00xx`); everything else, non-ASCII included, as is.
fn write_str(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    write_str_body(out, s);
    out.push(b'"');
}

/// [`write_str`] without the quotes.
fn write_str_body(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    // Values under eight bytes (codes, short names, numbers) are checked as
    // one word made of their bytes (overlapping, no copy), and copied whole
    // when clean; the byte loop below only sees those that need escaping.
    if bytes.len() < 8 && !short_needs_escape(bytes) {
        out.extend_from_slice(bytes);
        return;
    }
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Eight bytes at a time while none needs escaping (most text); the
        // last few of a longer value as the final eight bytes (the overlap
        // is checked twice, which is harmless).
        let rest = &bytes[i..];
        let word = match rest.first_chunk::<8>() {
            Some(word) => Some(word),
            None => bytes.last_chunk::<8>(),
        };
        if let Some(word) = word
            && !needs_escape(u64::from_le_bytes(*word))
        {
            i += rest.len().min(8);
            continue;
        }
        let b = bytes[i];
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            0..=0x1f => b'u',
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[start..i]);
        out.push(b'\\');
        out.push(short);
        if short == b'u' {
            out.extend_from_slice(b"00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        }
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// [`needs_escape`] for a value of fewer than eight bytes: its first and
/// last four bytes (overlapping) as one word, or for one to three bytes the
/// first, middle and last one with harmless filler.
fn short_needs_escape(bytes: &[u8]) -> bool {
    let word = match (bytes.first_chunk::<4>(), bytes.last_chunk::<4>()) {
        (Some(head), Some(tail)) => u64::from(u32::from_le_bytes(*head)) | (u64::from(u32::from_le_bytes(*tail)) << 32),
        _ => match bytes {
            [] => return false,
            [first, .., last] | [first @ last] => {
                let middle = bytes[bytes.len() / 2];
                u64::from_le_bytes([*first, middle, *last, b'a', b'a', b'a', b'a', b'a'])
            }
        },
    };
    needs_escape(word)
}

/// Whether any of the eight bytes in `w` is below 0x20, `"` or `\` (the
/// classic "has a zero byte" bit trick; it may report a false positive
/// only for a word that also holds a true one, which the byte loop then
/// sorts out).
fn needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    (below_space | has_zero(w ^ (ONES * u64::from(b'"'))) | has_zero(w ^ (ONES * u64::from(b'\\')))) != 0
}

/// Writes an object key: the mappers' literals need no escaping.
fn write_key(out: &mut Vec<u8>, key: &str) {
    debug_assert!(!key.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\'), "{key}");
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.push(b'"');
}

impl<'a> From<&'a str> for Json<'a> {
    fn from(s: &'a str) -> Self {
        Json::Str(Cow::Borrowed(s))
    }
}

impl<'a> From<String> for Json<'a> {
    fn from(s: String) -> Self {
        Json::Str(Cow::Owned(s))
    }
}

impl<'a> From<Cow<'a, str>> for Json<'a> {
    fn from(s: Cow<'a, str>) -> Self {
        Json::Str(s)
    }
}

impl<'a> From<bool> for Json<'a> {
    fn from(b: bool) -> Self {
        Json::Bool(b)
    }
}

impl<'a> From<u32> for Json<'a> {
    fn from(n: u32) -> Self {
        Json::Num(n.into())
    }
}

impl<'a> From<Vec<Json<'a>>> for Json<'a> {
    fn from(items: Vec<Json<'a>>) -> Self {
        Json::Arr(items)
    }
}

impl<'a, T: Into<Json<'a>>> From<Option<T>> for Json<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Json::Null, Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Json<'static> {
        Json::Obj(vec![
            ("resourceType", "Bundle".into()),
            ("empty", Json::Obj(vec![("a", Json::Null), ("b", Json::Arr(vec![Json::Str("".into())]))])),
            ("text", "quote \" back \\ nl \n cr \r tab \t bell \u{7} del \u{7f} é ü 日本 / <>".into()),
            ("n", Json::Num(Number::from(-42))),
            ("f", Json::Num(Number::from_f64(5.20).unwrap())),
            ("big", Json::Num(Number::from_f64(1e21).unwrap())),
            ("t", true.into()),
            ("list", Json::Arr(vec![Json::Obj(vec![("x", 1u32.into())]), "y".into(), false.into()])),
            ("null", Json::Null),
            ("urn", Json::Urn(uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef))),
            ("id", Json::Id(uuid::Uuid::from_u128(0xfedc_ba98_7654_3210_fedc_ba98_7654_3210))),
            ("ref", Json::Reference(uuid::Uuid::from_u128(0x1111_2222_3333_4444_5555_6666_7777_8888))),
            ("refs", Json::Arr(vec![Json::Reference(uuid::Uuid::from_u128(7)), Json::Null])),
            ("one", Json::ArrObj(vec![("x", "y".into()), ("o", Json::ArrObj(vec![("z", true.into())]))])),
            ("one_empty", Json::ArrObj(vec![("x", Json::Null), ("o", Json::ArrObj(vec![("z", Json::Null)]))])),
        ])
    }

    #[test]
    fn writes_what_serde_json_writes_for_the_pruned_value() {
        let tree = sample();
        let value = tree.clone().into_value().unwrap();
        for pretty in [false, true] {
            let mut out = Vec::new();
            assert!(tree.write(&mut out, pretty));
            let expected = if pretty { serde_json::to_vec_pretty(&value) } else { serde_json::to_vec(&value) };
            assert_eq!(String::from_utf8(out).unwrap(), String::from_utf8(expected.unwrap()).unwrap());
        }
        // Every control character.
        let all: String = (0u8..0x20).map(char::from).collect();
        let mut out = Vec::new();
        Json::Str(all.as_str().into()).write(&mut out, false);
        assert_eq!(out, serde_json::to_vec(&all).unwrap());
    }

    #[test]
    fn strings_are_escaped_wherever_the_special_character_falls() {
        // The eight-bytes-at-a-time scan must see a special byte at every
        // offset, next to ASCII, non-ASCII and bytes just above the ranges.
        for special in ["\"", "\\", "\n", "\u{1f}", "\u{0}", "\u{7f}", "é", " ", "!", "#", "[", "]"] {
            for at in 0..20 {
                for filler in ["a", "~", "ü"] {
                    let s = format!("{}{special}{}", filler.repeat(at), filler.repeat(19 - at));
                    let mut out = Vec::new();
                    Json::Str(s.as_str().into()).write(&mut out, false);
                    assert_eq!(out, serde_json::to_vec(&s).unwrap(), "{s:?}");
                }
            }
        }
    }

    #[test]
    fn strings_of_every_length_are_escaped_wherever_the_special_character_falls() {
        // Short values and the last bytes of longer ones are checked as a
        // word of their own (the final eight bytes, overlapping). ("" is
        // left out, not written.)
        for len in 1..24 {
            let clean = "a".repeat(len);
            let mut out = Vec::new();
            Json::Str(clean.as_str().into()).write(&mut out, false);
            assert_eq!(out, serde_json::to_vec(&clean).unwrap(), "{clean:?}");
            for at in 0..len {
                for special in ["\"", "\n", "\u{1}"] {
                    let s = format!("{}{special}{}", "a".repeat(at), "a".repeat(len - at - 1));
                    let mut out = Vec::new();
                    Json::Str(s.as_str().into()).write(&mut out, false);
                    assert_eq!(out, serde_json::to_vec(&s).unwrap(), "{s:?}");
                }
            }
        }
    }

    #[test]
    fn empty_members_are_left_out_depth_first() {
        let value = sample().into_value().unwrap();
        assert!(value.get("empty").is_none());
        assert!(value.get("null").is_none());
        assert_eq!(value["list"][0]["x"], 1);
        assert!(value.get("one_empty").is_none());
        assert_eq!(value["one"], serde_json::json!([{"x": "y", "o": [{"z": true}]}]));
        assert_eq!(value["ref"], serde_json::json!({"reference": "urn:uuid:11112222-3333-4444-5555-666677778888"}));
        assert_eq!(value["refs"].as_array().map(Vec::len), Some(1));
        let empty = Json::Obj(vec![("a", Json::Arr(vec![Json::Null, Json::Obj(vec![]), Json::Str("".into())]))]);
        for pretty in [false, true] {
            let mut out = b"x".to_vec();
            assert!(!empty.write(&mut out, pretty));
            assert_eq!(out, b"x");
        }
        assert_eq!(empty.into_value(), None);
    }

    #[test]
    fn a_static_value_is_written_and_read_as_its_tree() {
        static CODING: Static = Static::new(|| {
            Json::ArrObj(vec![("coding", Json::ArrObj(vec![("system", "http://x".into()), ("code", "a\"b".into())]))])
        });
        static EMPTY: Static = Static::new(|| Json::Obj(vec![("a", Json::Null)]));
        let with = Json::Obj(vec![("k", Json::Static(&CODING)), ("e", Json::Static(&EMPTY)), ("n", 1u32.into())]);
        let without = Json::Obj(vec![("k", (CODING.tree)()), ("n", 1u32.into())]);
        for pretty in [false, true] {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            assert!(with.write(&mut a, pretty));
            assert!(without.write(&mut b, pretty));
            assert_eq!(String::from_utf8(a).unwrap(), String::from_utf8(b).unwrap());
        }
        assert!(Json::Static(&EMPTY).is_empty());
        let typed = Json::Obj(vec![("type", Json::IdType("M\"R".into())), ("none", Json::IdType("".into()))]);
        let tree = Json::Obj(vec![("type", id_type_tree(&"M\"R".into()))]);
        for pretty in [false, true] {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            assert!(typed.write(&mut a, pretty));
            assert!(tree.write(&mut b, pretty));
            assert_eq!(String::from_utf8(a).unwrap(), String::from_utf8(b).unwrap());
        }
        assert_eq!(typed.get("type").and_then(Json::type_code), Some("M\"R"));
        assert_eq!(tree.get("type").and_then(Json::type_code), Some("M\"R"));
        assert_eq!(typed.into_value(), tree.into_value());
        assert_eq!(with.into_value(), without.into_value());
    }

    #[test]
    fn uuids_are_written_as_the_uuid_crate_formats_them() {
        for n in
            [0u128, 1, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210, u128::MAX, 0xa0b1_c2d3_e4f5_0617_2839_4a5b_6c7d_8e9f]
        {
            let uuid = uuid::Uuid::from_u128(n);
            assert_eq!(hex32(&uuid), uuid.simple().to_string().as_bytes());
            let mut out = Vec::new();
            write_urn(&mut out, &uuid);
            assert_eq!(String::from_utf8(out).unwrap(), format!("\"urn:uuid:{}\"", uuid.hyphenated()));
            let mut out = Vec::new();
            Json::Id(uuid).write_scalar(&mut out);
            assert_eq!(String::from_utf8(out).unwrap(), format!("\"{}\"", uuid.simple()));
        }
    }

    #[test]
    fn decimals_are_written_as_given_and_read_back_as_numbers() {
        let tree = Json::Obj(vec![("value", Json::Decimal("1.50".into())), ("n", Json::Decimal("-7".into()))]);
        let mut out = Vec::new();
        assert!(tree.write(&mut out, false));
        assert_eq!(out, br#"{"value":1.50,"n":-7}"#);
        let value = tree.into_value().unwrap();
        assert_eq!(value["value"].as_f64(), Some(1.5));
        assert_eq!(value["n"].as_i64(), Some(-7));
    }

    #[test]
    fn insert_replaces_in_place_or_appends() {
        let mut o = Json::Obj(vec![("a", 1u32.into()), ("b", 2u32.into())]);
        o.insert("a", 3u32.into());
        o.insert("c", Json::Null);
        let Json::Obj(members) = &o else { panic!("not an object") };
        let keys: Vec<_> = members.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(o.get("a"), Some(&3u32.into()));
        o.remove("b");
        assert!(o.get("b").is_none());
    }
}

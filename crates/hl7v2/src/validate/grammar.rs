//! Message structures in HL7's abstract message syntax, and the matcher that
//! checks a message's segment sequence against them.
//!
//! Structures are written as in the standard's tables: `[X]` optional, `{X}`
//! repeating, `<A|B>` one of, a bracket holding several items is a group.
//! `@2.5` after an item means "from version 2.5 on"; in older messages the
//! item does not exist. One text per structure covers 2.3 to 2.8, so where
//! the versions differ is visible in one line. Where we were not certain a
//! segment was added in a given version, the item is allowed from the earlier
//! version: a validator that rejects good messages does more harm than one
//! that lets a rare misplacement through.
//!
//! Matching is greedy with recovery: a segment that fits neither the current
//! item, nor a later item of the current group, nor anything the enclosing
//! groups could take next is reported as unexpected and skipped in place,
//! so one misplaced segment yields one issue and matching carries on.
//! Required items skipped over are reported as missing.

use crate::Version;
use crate::issue::{ErrorCode, Issue, Location};

type Name = [u8; 3];

#[derive(Debug, Clone)]
pub(crate) enum Node {
    Segment(Name),
    Choice(Vec<Name>),
    Group(Vec<Item>),
}

#[derive(Debug, Clone)]
pub(crate) struct Item {
    node: Node,
    optional: bool,
    repeats: bool,
    since: Option<Version>,
}

/// Parses the abstract syntax; `Err` names the byte position.
pub(crate) fn parse(text: &str) -> Result<Vec<Item>, usize> {
    let mut p = Parser { b: text.as_bytes(), i: 0 };
    let items = p.seq(None)?;
    p.ws();
    if p.i != p.b.len() {
        return Err(p.i);
    }
    Ok(items)
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.b.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn seq(&mut self, close: Option<u8>) -> Result<Vec<Item>, usize> {
        let mut items = Vec::new();
        loop {
            self.ws();
            match self.b.get(self.i) {
                None if close.is_none() => return Ok(items),
                None => return Err(self.i),
                Some(&c) if Some(c) == close => {
                    self.i += 1;
                    return Ok(items);
                }
                Some(b'[') | Some(b'{') => {
                    let open = self.b[self.i];
                    self.i += 1;
                    let inner = self.seq(Some(if open == b'[' { b']' } else { b'}' }))?;
                    let mut item = match <[Item; 1]>::try_from(inner) {
                        Ok([single]) => single,
                        Err(inner) if !inner.is_empty() => Item::new(Node::Group(inner)),
                        Err(_) => return Err(self.i),
                    };
                    if open == b'[' {
                        item.optional = true;
                    } else {
                        item.repeats = true;
                    }
                    item.since = self.since()?.or(item.since);
                    items.push(item);
                }
                Some(b'<') => {
                    self.i += 1;
                    let mut names = Vec::new();
                    loop {
                        self.ws();
                        names.push(self.name()?);
                        self.ws();
                        match self.b.get(self.i) {
                            Some(b'|') => self.i += 1,
                            Some(b'>') => {
                                self.i += 1;
                                break;
                            }
                            _ => return Err(self.i),
                        }
                    }
                    let mut item = Item::new(Node::Choice(names));
                    item.since = self.since()?;
                    items.push(item);
                }
                Some(_) => {
                    let name = self.name()?;
                    let mut item = Item::new(Node::Segment(name));
                    item.since = self.since()?;
                    items.push(item);
                }
            }
        }
    }

    fn name(&mut self) -> Result<Name, usize> {
        match self.b.get(self.i..self.i + 3) {
            Some(&[a, b, c]) if crate::path::is_segment_name(&[a, b, c]) => {
                self.i += 3;
                Ok([a, b, c])
            }
            _ => Err(self.i),
        }
    }

    fn since(&mut self) -> Result<Option<Version>, usize> {
        if self.b.get(self.i) != Some(&b'@') {
            return Ok(None);
        }
        self.i += 1;
        let start = self.i;
        while self.b.get(self.i).is_some_and(|c| c.is_ascii_digit() || *c == b'.') {
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.b[start..self.i]).map_err(|_| start)?;
        Version::parse(text).map(Some).ok_or(start)
    }
}

impl Item {
    fn new(node: Node) -> Item {
        Item { node, optional: false, repeats: false, since: None }
    }

    fn exists(&self, v: Version) -> bool {
        self.since.is_none_or(|s| s <= v)
    }

    /// Segment names that can start this item.
    fn first(&self, v: Version, out: &mut Vec<Name>) {
        if !self.exists(v) {
            return;
        }
        match &self.node {
            Node::Segment(n) => out.push(*n),
            Node::Choice(ns) => out.extend_from_slice(ns),
            Node::Group(items) => {
                for it in items.iter().filter(|it| it.exists(v)) {
                    it.first(v, out);
                    if !it.optional {
                        break;
                    }
                }
            }
        }
    }

    /// Whether `name` can start this item (`first` without allocating:
    /// this runs for every segment against every candidate item).
    fn starts_with(&self, v: Version, name: Name) -> bool {
        if !self.exists(v) {
            return false;
        }
        match &self.node {
            Node::Segment(n) => *n == name,
            Node::Choice(ns) => ns.contains(&name),
            Node::Group(items) => {
                for it in items.iter().filter(|it| it.exists(v)) {
                    if it.starts_with(v, name) {
                        return true;
                    }
                    if !it.optional {
                        return false;
                    }
                }
                false
            }
        }
    }

    /// What to call a required item that is missing: the segment to report
    /// and the message.
    fn describe(&self, v: Version) -> (String, String) {
        match &self.node {
            Node::Segment(n) => {
                let s = String::from_utf8_lossy(n).into_owned();
                let message = format!("required segment {s} is missing");
                (s, message)
            }
            Node::Choice(ns) => {
                let all: Vec<_> = ns.iter().map(|n| String::from_utf8_lossy(n).into_owned()).collect();
                let message = format!("one of {} is required", all.join(", "));
                (all.first().cloned().unwrap_or_default(), message)
            }
            Node::Group(items) => items
                .iter()
                .find(|it| it.exists(v) && !it.optional)
                .or_else(|| items.iter().find(|it| it.exists(v)))
                .map_or((String::new(), "a required group is missing".into()), |it| it.describe(v)),
        }
    }
}

/// Checks a message's segment names (Z segments removed) against a
/// structure.
pub(crate) struct Matcher<'a> {
    pub(crate) segments: &'a [Name],
    pub(crate) version: Version,
    pub(crate) structure: &'a str,
    pub(crate) pos: usize,
    pub(crate) issues: Vec<Issue>,
    pub(crate) limit: usize,
    /// Follow sets no longer in use, kept for the next group: a result
    /// with many OBX enters its group once per OBX.
    pub(crate) spare: Vec<Vec<Name>>,
}

impl Matcher<'_> {
    fn current(&self) -> Option<Name> {
        self.segments.get(self.pos).copied()
    }

    fn occurrence_so_far(&self, name: &str) -> u32 {
        self.segments[..self.pos.min(self.segments.len())].iter().filter(|n| n.as_slice() == name.as_bytes()).count()
            as u32
    }

    fn push(&mut self, issue: Issue) {
        if self.issues.len() < self.limit {
            self.issues.push(issue);
        }
    }

    fn missing(&mut self, item: &Item) {
        let (name, message) = item.describe(self.version);
        let location = (!name.is_empty()).then(|| {
            let n = self.occurrence_so_far(&name) + 1;
            Location::segment(&name, n)
        });
        self.push(Issue::error(location, ErrorCode::SegmentSequenceError, message));
    }

    /// Reports required items in `items[from..to]` that were not matched
    /// (`matched` says whether `items[from]` was).
    fn missing_from(&mut self, items: &[Item], from: usize, to: usize, matched: bool) {
        for (k, it) in items.iter().enumerate().take(to).skip(from) {
            if it.exists(self.version) && !it.optional && !(k == from && matched) {
                self.missing(it);
            }
        }
    }

    /// Matches a sequence of items; `outer` holds what the enclosing groups
    /// could take next, which ends this sequence.
    pub(crate) fn seq(&mut self, items: &[Item], outer: &[Name]) {
        let v = self.version;
        let mut i = 0;
        let mut matched = false;
        loop {
            while i < items.len() && !items[i].exists(v) {
                i += 1;
                matched = false;
            }
            let Some(s) = self.current() else {
                self.missing_from(items, i, items.len(), matched);
                return;
            };
            if i < items.len() {
                let it = &items[i];
                if (!matched || it.repeats) && it.starts_with(v, s) {
                    self.item(it, items, i, outer);
                    matched = true;
                    continue;
                }
                if let Some(j) = (i + 1..items.len()).find(|&j| items[j].starts_with(v, s)) {
                    self.missing_from(items, i, j, matched);
                    i = j;
                    matched = false;
                    continue;
                }
            }
            if outer.contains(&s) {
                self.missing_from(items, i, items.len(), matched);
                return;
            }
            let name = String::from_utf8_lossy(&s).into_owned();
            let n = self.occurrence_so_far(&name) + 1;
            let message = format!("segment {name} is not expected here in {} ({})", self.structure, self.version);
            self.push(Issue::error(Location::segment(&name, n), ErrorCode::SegmentSequenceError, message));
            self.pos += 1;
        }
    }

    fn item(&mut self, it: &Item, siblings: &[Item], i: usize, outer: &[Name]) {
        match &it.node {
            Node::Segment(_) | Node::Choice(_) => self.pos += 1,
            Node::Group(items) => {
                let v = self.version;
                let mut follow = self.spare.pop().unwrap_or_default();
                follow.clear();
                follow.extend_from_slice(outer);
                for later in &siblings[i + 1..] {
                    later.first(v, &mut follow);
                }
                if it.repeats {
                    it.first(v, &mut follow);
                }
                self.seq(items, &follow);
                self.spare.push(follow);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(grammar: &str, segs: &str, v: Version) -> Vec<String> {
        let items = parse(grammar).unwrap();
        let names: Vec<Name> = segs
            .split_whitespace()
            .map(|s| {
                let b = s.as_bytes();
                [b[0], b[1], b[2]]
            })
            .collect();
        let mut m = Matcher {
            segments: &names,
            version: v,
            structure: "T",
            pos: 0,
            issues: Vec::new(),
            limit: 100,
            spare: Vec::new(),
        };
        m.seq(&items, &[]);
        m.issues.iter().map(|i| i.to_string()).collect()
    }

    const ORU: &str = "MSH [{SFT}]@2.5 {[PID [PD1] [{NTE}] [PV1 [PV2]]] {[ORC] OBR [{NTE}] [{OBX [{NTE}]}]}} [DSC]";

    #[test]
    fn nested_repeating_groups_match() {
        let v = Version::V2_5;
        assert!(run(ORU, "MSH PID OBR OBX NTE OBX OBR NTE OBX PID OBR", v).is_empty());
        assert!(run(ORU, "MSH OBR", v).is_empty());
        assert!(run(ORU, "MSH SFT PID PV1 PV2 ORC OBR OBX OBX DSC", v).is_empty());
    }

    #[test]
    fn misplaced_missing_and_repeated_segments_are_reported_once() {
        let v = Version::V2_5;
        assert_eq!(run(ORU, "MSH PID", v), ["OBR(1): 100 Segment sequence error: required segment OBR is missing (E)"]);
        assert_eq!(
            run(ORU, "MSH PID OBR PV1 OBX", v),
            ["PV1(1): 100 Segment sequence error: segment PV1 is not expected here in T (2.5) (E)"]
        );
        // A second PID starts a new PATIENT_RESULT, whose OBR is then missing.
        assert_eq!(
            run(ORU, "MSH PID PID OBR", v),
            ["OBR(1): 100 Segment sequence error: required segment OBR is missing (E)"]
        );
        // SFT does not exist before 2.5.
        assert_eq!(
            run(ORU, "MSH SFT PID OBR", Version::V2_4),
            ["SFT(1): 100 Segment sequence error: segment SFT is not expected here in T (2.4) (E)"]
        );
    }

    #[test]
    fn group_entered_by_an_optional_segment_reports_its_required_one() {
        assert_eq!(
            run(ORU, "MSH PID ORC ORC OBR", Version::V2_5),
            ["OBR(1): 100 Segment sequence error: required segment OBR is missing (E)"]
        );
    }

    #[test]
    fn malformed_grammar_is_an_error() {
        assert!(parse("MSH [PID").is_err());
        assert!(parse("MSH []").is_err());
        assert!(parse("MSH <A|").is_err());
        assert!(parse("MSH PID@x").is_err());
    }
}

//! Filter expressions over HL7 v2 paths, or over `json:` paths for JSON
//! and FHIR content.
//!
//! A channel (and each destination) may list filter rules; a message goes on
//! only if every rule matches, and a message that fails one is recorded as
//! filtered *with the text of that rule* ([`Filter::source`]), so an operator
//! can see why it stopped.
//!
//! ```
//! use engine::filter::Filter;
//! let rule = Filter::compile(r#"MSH-9-1 == "ADT" && MSH-9-2 in ["A01", "A04", "A08"]"#)?;
//! let msg = hl7v2::Message::parse("MSH|^~\\&|REG|HOSP|||20261121||ADT^A04|1|P|2.5\rPID|1||123").unwrap();
//! assert!(rule.matches(&msg));
//! # Ok::<(), engine::filter::FilterError>(())
//! ```
//!
//! # Grammar
//!
//! ```text
//! expression := or
//! or         := and ( "||" and )*
//! and        := unary ( "&&" unary )*
//! unary      := "!" unary | atom
//! atom       := "(" expression ")"
//!             | "true" | "false"
//!             | "exists" "(" target ")"      the value is there and not empty or ""
//!             | "present" "(" target ")"     the node is in the message, even empty
//!             | "null" "(" path ")"          the value is the explicit null ""
//!             | operand "==" operand
//!             | operand "!=" operand
//!             | operand "=~" regex           regular expression search
//!             | operand "!~" regex           no match of the regular expression
//!             | operand "in" list
//!             | operand "not" "in" list
//! operand    := path | string
//! list       := "[" ( string ( "," string )* ","? )? "]"
//! regex      := "/" ... "/" | string         in /.../ only \/ is an escape: /^\d{6}$/
//! target     := path | segment               a segment: PID, OBX(2)
//! path       := Terser style: PID-5-1, PID-3(2)-4-2, OBX(3)-5, MSH-9-2 (or PID.5.1)
//!             | "json:" dot path              json:status, json:name[0].family,
//!                                             json:telecom[system=phone].value
//! string     := '"' ... '"' | "'" ... "'"    escapes: \" \' \\ \n \r \t \u{1F600}
//! ```
//!
//! `&&` binds tighter than `||`; `!` tighter than both. Keywords are lower
//! case; white space is free. Comparisons are exact and case-sensitive (use
//! `=~ "(?i)^adt$"` for a case-insensitive test). Regular expressions use the
//! `regex` crate's syntax and search anywhere in the value unless anchored
//! with `^` and `$`; write them between slashes (`PID-7 =~ /^19\d\d/`) so
//! backslashes need no doubling, or as a string (`"^19\\d\\d"`).
//!
//! # What a path reads
//!
//! A path reads one value, decoded (escapes and character set), with the
//! Terser defaults of [`hl7v2::Message::get`]: the first occurrence of the
//! segment, the first repetition, component and sub-component unless the path
//! names others (`OBX(2)-5`, `PID-3(2)-1`). In comparisons a value that is
//! absent, empty, or the explicit null `""` all read as the empty string, so
//! `PID-8 != ""` means "PID-8 has a value". `exists(X)` is the same test
//! written as a function (and also accepts a segment: `exists(ZPI)`);
//! `present(X)` is true when the node is in the message at all, even empty;
//! `null(X)` is true only for the explicit null `""`.
//!
//! # JSON and FHIR content
//!
//! On a `json` or `fhir` channel (until a `fhir_to_hl7` step makes the
//! content HL7 v2) rules read `json:` paths, the dot paths of mapping rules
//! and order keys: `json:resourceType == "Observation"`,
//! `exists(json:entry[resource.resourceType=Patient])`. A string reads as
//! it is, a number or boolean as JSON text (numbers normalised
//! as parsed: `5.40` reads as `5.4`), and `null`, an object, an
//! array or an absent member as "". A JSON `null` reads as absent (as in
//! mapping rules), so `null(...)` takes HL7 v2 paths only. `exists` is true
//! for a value that is not `""`, `[]` or `{}`; `present` also for those
//! empty ones. A rule reads HL7 v2 paths or `json:` paths,
//! never both, and the configuration check refuses a rule that would meet
//! the other kind of content.
//!
//! # Design
//!
//! A hand-written lexer and recursive-descent parser turn the text into a
//! small tree once, at configuration time: paths are parsed into
//! [`hl7v2::Path`] and regular expressions compiled then, so evaluating a rule
//! is a pure function of the message that allocates only when a value needs
//! decoding. Errors give the 1-based character column and what was expected,
//! so `plexus check` can point at the mistake.

use std::borrow::Cow;
use std::fmt;

use convert::rules::JsonPath;
use hl7v2::{Message, Path, Presence};
use regex::Regex;

/// How deep parentheses and `!` may nest. Rules are written by people;
/// the limit only keeps a pathological rule from exhausting the stack.
const MAX_DEPTH: usize = 64;

/// A compiled filter rule.
///
/// Cheap to share (`Send + Sync`); evaluating it never fails and never
/// panics, whatever the message holds.
#[derive(Clone)]
pub struct Filter {
    source: String,
    expr: Expr,
    reads: Reads,
}

/// What content a rule's paths address, fixed when it compiles: a rule
/// reads HL7 v2 paths or `json:` paths, never both, so the configuration
/// check can tell whether it fits the content it will meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// HL7 v2 paths (`PID-5-1`, segment names).
    Hl7,
    /// `json:` paths into a JSON body.
    Json,
    /// No path at all (`true`, `"a" == "a"`): fits any content.
    Nothing,
}

/// Why a rule did not compile: where (1-based character column of the rule
/// text) and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct FilterError {
    /// 1-based column (in characters) of the problem in the rule text.
    pub column: usize,
    /// What is wrong, e.g. ``expected `==`, `!=`, `=~`, `!~`, `in` or `not in` after `PID-8`, found the end of the rule``.
    pub message: String,
}

impl FilterError {
    fn new(column: usize, message: impl Into<String>) -> Self {
        FilterError { column, message: message.into() }
    }

    /// The rule text with a caret line under the column, for a terminal:
    ///
    /// ```text
    /// PID-8 = "F"
    ///       ^ column 7: ...
    /// ```
    pub fn render(&self, source: &str) -> String {
        let pad = " ".repeat(self.column.saturating_sub(1));
        format!("{source}\n{pad}^ {self}")
    }
}

impl Filter {
    /// Compiles a rule. See the [module documentation](self) for the grammar.
    ///
    /// ```
    /// use engine::filter::Filter;
    /// let err = Filter::compile(r#"PID-8 = "F""#).unwrap_err();
    /// assert_eq!(err.column, 7);
    /// assert!(err.message.contains("`==`"), "{err}");
    /// ```
    pub fn compile(source: &str) -> Result<Filter, FilterError> {
        let tokens = lex(source)?;
        let mut parser = Parser { tokens, pos: 0, depth: 0, reads: Reads::Nothing };
        let expr = parser.expression()?;
        let next = parser.peek();
        if next.kind != Tok::End {
            return Err(FilterError::new(
                next.column,
                format!("expected `&&`, `||` or the end of the rule, found {}", next.describe()),
            ));
        }
        Ok(Filter { source: source.to_owned(), expr, reads: parser.reads })
    }

    /// Whether the message passes this rule. A rule of `json:` paths reads
    /// every such path as absent here (the configuration check keeps such a
    /// rule away from HL7 v2 content).
    pub fn matches(&self, msg: &Message) -> bool {
        self.expr.eval(&Subject::Hl7(msg))
    }

    /// Whether the JSON document passes this rule. HL7 v2 paths read as
    /// absent here (the configuration check keeps such a rule away from JSON
    /// content).
    ///
    /// ```
    /// use engine::filter::Filter;
    /// let rule = Filter::compile(r#"json:resourceType == "Observation" && json:code.coding[system=http://loinc.org].code in ["2339-0", "15074-8"]"#)?;
    /// let doc = serde_json::json!({
    ///     "resourceType": "Observation",
    ///     "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]}
    /// });
    /// assert!(rule.matches_json(&doc));
    /// # Ok::<(), engine::filter::FilterError>(())
    /// ```
    pub fn matches_json(&self, doc: &serde_json::Value) -> bool {
        self.expr.eval(&Subject::Json(doc))
    }

    /// What content the rule's paths address.
    pub fn reads(&self) -> Reads {
        self.reads
    }

    /// The rule as it was written (for "filtered by rule ...").
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// The first rule of `rules` that `msg` does not pass, if any: the rule to
/// record when a message is filtered. Rules are tried in order.
///
/// ```
/// use engine::filter::{Filter, first_rejecting};
/// let rules = [Filter::compile(r#"MSH-9-1 == "ADT""#)?, Filter::compile(r#"exists(PID-8)"#)?];
/// let msg = hl7v2::Message::parse("MSH|^~\\&|||||||ADT^A01|1|P|2.5\rPID|1").unwrap();
/// assert_eq!(first_rejecting(&rules, &msg).map(|f| f.source()), Some("exists(PID-8)"));
/// # Ok::<(), engine::filter::FilterError>(())
/// ```
pub fn first_rejecting<'f>(rules: &'f [Filter], msg: &Message) -> Option<&'f Filter> {
    rules.iter().find(|rule| !rule.matches(msg))
}

/// [`first_rejecting`] for a JSON document.
pub fn first_rejecting_json<'f>(rules: &'f [Filter], doc: &serde_json::Value) -> Option<&'f Filter> {
    rules.iter().find(|rule| !rule.matches_json(doc))
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Filter").field(&self.source).finish()
    }
}

impl std::str::FromStr for Filter {
    type Err = FilterError;
    fn from_str(s: &str) -> Result<Filter, FilterError> {
        Filter::compile(s)
    }
}

// ---------------------------------------------------------------------------
// The tree and its evaluation.

#[derive(Clone, Debug)]
enum Expr {
    Const(bool),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Compare { left: Operand, op: Compare },
    Exists(Target),
    Present(Target),
    Null(Target),
}

#[derive(Clone, Debug)]
enum Operand {
    Path(Path),
    Json(JsonPath),
    Literal(String),
}

#[derive(Clone, Debug)]
enum Compare {
    Eq(Operand),
    Ne(Operand),
    In(Vec<String>),
    NotIn(Vec<String>),
    Matches(Regex),
    NotMatches(Regex),
}

/// What `exists`/`present` look at: a value or a whole segment.
#[derive(Clone, Debug)]
enum Target {
    Path(Path),
    /// A segment name and which occurrence (1-based).
    Segment(String, usize),
    /// A `json:` path.
    Json(JsonPath),
}

/// What a rule is evaluated on.
#[derive(Clone, Copy)]
enum Subject<'m> {
    Hl7(&'m Message),
    Json(&'m serde_json::Value),
}

impl Expr {
    fn eval(&self, msg: &Subject<'_>) -> bool {
        match self {
            Expr::Const(b) => *b,
            Expr::Not(e) => !e.eval(msg),
            Expr::And(all) => all.iter().all(|e| e.eval(msg)),
            Expr::Or(any) => any.iter().any(|e| e.eval(msg)),
            Expr::Compare { left, op } => {
                let value = left.value(msg);
                match op {
                    Compare::Eq(right) => value == right.value(msg),
                    Compare::Ne(right) => value != right.value(msg),
                    Compare::In(list) => list.iter().any(|v| *v == value),
                    Compare::NotIn(list) => !list.iter().any(|v| *v == value),
                    Compare::Matches(re) => re.is_match(&value),
                    Compare::NotMatches(re) => !re.is_match(&value),
                }
            }
            Expr::Exists(t) => t.presence(msg) == Presence::Valued,
            Expr::Present(t) => t.presence(msg) != Presence::Absent,
            Expr::Null(t) => t.presence(msg) == Presence::Null,
        }
    }
}

impl Target {
    /// Whether the target is there, with a value or as the explicit null.
    /// A segment is valued when it occurs. A JSON value is valued unless it
    /// is `null` (the explicit null), `""`, `[]` or `{}`.
    fn presence(&self, subject: &Subject<'_>) -> Presence {
        match (self, subject) {
            (Target::Path(p), Subject::Hl7(msg)) => msg.presence(p),
            (Target::Segment(name, n), Subject::Hl7(msg)) => {
                if msg.segment_occurrence(name, *n).is_some() {
                    Presence::Valued
                } else {
                    Presence::Absent
                }
            }
            // A JSON null reads as absent, as in mapping rules.
            (Target::Json(path), Subject::Json(doc)) => match path.get(doc) {
                None => Presence::Absent,
                Some(v) if json_is_empty(v) => Presence::Empty,
                Some(_) => Presence::Valued,
            },
            _ => Presence::Absent,
        }
    }
}

fn json_is_empty(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.is_empty(),
        serde_json::Value::Array(a) => a.is_empty(),
        serde_json::Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

impl Operand {
    /// The value compared: absent, empty and the explicit null all read as
    /// "" (see the module documentation); a JSON number or boolean as its
    /// JSON text, an object or array as "".
    fn value<'m>(&'m self, subject: &Subject<'m>) -> Cow<'m, str> {
        match (self, subject) {
            (Operand::Literal(s), _) => Cow::Borrowed(s),
            (Operand::Path(p), Subject::Hl7(msg)) => msg.valued(p).unwrap_or_default(),
            (Operand::Json(path), Subject::Json(doc)) => match path.get(doc) {
                Some(serde_json::Value::String(s)) => Cow::Borrowed(s),
                Some(serde_json::Value::Number(n)) => Cow::Owned(n.to_string()),
                Some(serde_json::Value::Bool(b)) => Cow::Borrowed(if *b { "true" } else { "false" }),
                _ => Cow::Borrowed(""),
            },
            _ => Cow::Borrowed(""),
        }
    }
}

// ---------------------------------------------------------------------------
// Lexer.

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Bang,
    AndAnd,
    OrOr,
    EqEq,
    NotEq,
    Match,
    NotMatch,
    /// A string literal, escapes decoded.
    Str(String),
    /// A `/regular expression/`, as written (only `\/` unescaped).
    Regex(String),
    /// A keyword or a path (anything starting with a letter).
    Word(String),
    /// A `json:` path, as written after the prefix.
    Json(String),
    End,
}

#[derive(Clone, Debug)]
struct Token {
    kind: Tok,
    /// 1-based character column of the token's first character.
    column: usize,
}

impl Token {
    /// How the token is named in "found ..." messages. Rule text is
    /// configuration, not patient data, so echoing it is fine.
    fn describe(&self) -> String {
        match &self.kind {
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::LBracket => "`[`".into(),
            Tok::RBracket => "`]`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Bang => "`!`".into(),
            Tok::AndAnd => "`&&`".into(),
            Tok::OrOr => "`||`".into(),
            Tok::EqEq => "`==`".into(),
            Tok::NotEq => "`!=`".into(),
            Tok::Match => "`=~`".into(),
            Tok::NotMatch => "`!~`".into(),
            Tok::Str(s) => format!("the string {s:?}"),
            Tok::Regex(r) => format!("the regular expression /{r}/"),
            Tok::Word(w) => format!("`{w}`"),
            Tok::Json(p) => format!("`json:{p}`"),
            Tok::End => "the end of the rule".into(),
        }
    }
}

fn lex(source: &str) -> Result<Vec<Token>, FilterError> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        let next = chars.get(i + 1).copied();
        let mut push = |kind, len| {
            tokens.push(Token { kind, column });
            len
        };
        i += match (c, next) {
            (c, _) if c.is_whitespace() => 1,
            ('(', _) => push(Tok::LParen, 1),
            (')', _) => push(Tok::RParen, 1),
            ('[', _) => push(Tok::LBracket, 1),
            (']', _) => push(Tok::RBracket, 1),
            (',', _) => push(Tok::Comma, 1),
            ('&', Some('&')) => push(Tok::AndAnd, 2),
            ('|', Some('|')) => push(Tok::OrOr, 2),
            ('=', Some('=')) => push(Tok::EqEq, 2),
            ('=', Some('~')) => push(Tok::Match, 2),
            ('!', Some('=')) => push(Tok::NotEq, 2),
            ('!', Some('~')) => push(Tok::NotMatch, 2),
            ('!', _) => push(Tok::Bang, 1),
            ('=', _) => {
                return Err(FilterError::new(column, "expected `==` or `=~`, found `=` (comparison is `==`)"));
            }
            ('&', _) => return Err(FilterError::new(column, "expected `&&`, found a single `&`")),
            ('|', _) => return Err(FilterError::new(column, "expected `||`, found a single `|`")),
            ('"' | '\'', _) => {
                let (text, len) = lex_string(&chars, i)?;
                push(Tok::Str(text), len)
            }
            ('/', _) => {
                let (text, len) = lex_regex(&chars, i)?;
                push(Tok::Regex(text), len)
            }
            ('j', _) if chars[i..].starts_with(&JSON_PREFIX) => {
                let len = json_path_len(&chars[i + JSON_PREFIX.len()..]);
                let path: String = chars[i + JSON_PREFIX.len()..i + JSON_PREFIX.len() + len].iter().collect();
                push(Tok::Json(path), JSON_PREFIX.len() + len)
            }
            (c, _) if c.is_ascii_alphabetic() => {
                let len = word_len(&chars[i..]);
                let word: String = chars[i..i + len].iter().collect();
                push(Tok::Word(word), len)
            }
            (c, _) => {
                return Err(FilterError::new(
                    column,
                    format!("unexpected character {c:?}: expected a path, a string, `(`, `!` or a keyword"),
                ));
            }
        };
    }
    tokens.push(Token { kind: Tok::End, column: chars.len() + 1 });
    Ok(tokens)
}

/// What starts a JSON path in a rule (as in a channel's `order_key`).
const JSON_PREFIX: [char; 5] = ['j', 's', 'o', 'n', ':'];

/// Length of a JSON path after its `json:` prefix: up to white space or an
/// operator character outside brackets. Inside `[...]` anything but `]`
/// goes, so `telecom[system=phone].value` is one path.
fn json_path_len(chars: &[char]) -> usize {
    let mut depth = 0usize;
    for (i, c) in chars.iter().enumerate() {
        match c {
            '[' => depth += 1,
            ']' if depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            c if c.is_whitespace() || matches!(c, '(' | ')' | '=' | '!' | '&' | '|' | ',' | '"' | '\'') => {
                return i;
            }
            _ => {}
        }
    }
    chars.len()
}

/// Length of a word starting at `chars[0]` (a letter): letters and digits,
/// then any run of `-`/`.` followed by letters or digits, and `(digits)`
/// groups, so `OBX(3)-5(2)-1` is one word while `exists(PID-8)` stops
/// before its `(`.
fn word_len(chars: &[char]) -> usize {
    let alnum = |c: &char| c.is_ascii_alphanumeric() || *c == '_';
    let mut i = chars.iter().take_while(|c| alnum(c)).count();
    loop {
        match chars.get(i) {
            Some('-' | '.') if chars.get(i + 1).is_some_and(alnum) => {
                i += 1;
                i += chars[i..].iter().take_while(|c| alnum(c)).count();
            }
            Some('(') => {
                let digits = chars[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
                if digits > 0 && chars.get(i + 1 + digits) == Some(&')') {
                    i += digits + 2;
                } else {
                    return i;
                }
            }
            _ => return i,
        }
    }
}

/// Reads a string literal starting at its opening quote `chars[start]`;
/// returns the decoded text and the literal's length in characters.
fn lex_string(chars: &[char], start: usize) -> Result<(String, usize), FilterError> {
    let quote = chars[start];
    let mut out = String::new();
    let mut i = start + 1;
    loop {
        let Some(&c) = chars.get(i) else {
            return Err(FilterError::new(start + 1, format!("unterminated string: expected a closing {quote}")));
        };
        match c {
            c if c == quote => return Ok((out, i + 1 - start)),
            '\\' => {
                let escape_column = i + 1;
                let unknown = || {
                    FilterError::new(
                        escape_column,
                        "unknown escape: expected \\\", \\', \\\\, \\n, \\r, \\t or \\u{...} (write a regular expression as /.../)",
                    )
                };
                match chars.get(i + 1) {
                    Some('"') => out.push('"'),
                    Some('\'') => out.push('\''),
                    Some('\\') => out.push('\\'),
                    Some('n') => out.push('\n'),
                    Some('r') => out.push('\r'),
                    Some('t') => out.push('\t'),
                    Some('u') => {
                        if chars.get(i + 2) != Some(&'{') {
                            return Err(FilterError::new(escape_column, "expected `{` after \\u, as in \\u{E9}"));
                        }
                        let hex: String = chars[i + 3..].iter().take_while(|c| **c != '}').collect();
                        let close = i + 3 + hex.chars().count();
                        let ch = (chars.get(close) == Some(&'}'))
                            .then(|| u32::from_str_radix(&hex, 16).ok())
                            .flatten()
                            .filter(|_| (1..=6).contains(&hex.len()))
                            .and_then(char::from_u32)
                            .ok_or_else(|| {
                                FilterError::new(
                                    escape_column,
                                    "expected 1 to 6 hexadecimal digits of a Unicode scalar value and `}` after \\u{",
                                )
                            })?;
                        out.push(ch);
                        i = close + 1;
                        continue;
                    }
                    _ => return Err(unknown()),
                }
                i += 2;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
}

/// Reads a `/regular expression/` starting at its opening slash; returns
/// the pattern (with `\/` turned into `/`, every other backslash kept for
/// the regex engine) and the literal's length in characters.
fn lex_regex(chars: &[char], start: usize) -> Result<(String, usize), FilterError> {
    let mut out = String::new();
    let mut i = start + 1;
    loop {
        match (chars.get(i), chars.get(i + 1)) {
            (None, _) => {
                return Err(FilterError::new(start + 1, "unterminated regular expression: expected a closing /"));
            }
            (Some('/'), _) => return Ok((out, i + 1 - start)),
            (Some('\\'), Some('/')) => {
                out.push('/');
                i += 2;
            }
            (Some('\\'), Some(&next)) => {
                out.push('\\');
                out.push(next);
                i += 2;
            }
            (Some(&c), _) => {
                out.push(c);
                i += 1;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Parser.

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
    /// What the paths seen so far address.
    reads: Reads,
}

impl Parser {
    fn peek(&self) -> &Token {
        // lex always ends with End, and the parser never advances past it.
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn advance(&mut self) -> Token {
        let t = self.peek().clone();
        if t.kind != Tok::End {
            self.pos += 1;
        }
        t
    }

    fn expect(&mut self, kind: Tok, what: &str, after: &str) -> Result<Token, FilterError> {
        let t = self.advance();
        if t.kind == kind {
            Ok(t)
        } else {
            Err(FilterError::new(t.column, format!("expected {what} {after}, found {}", t.describe())))
        }
    }

    /// Records that a path of kind `reads` starts at `column`: one rule
    /// reads one kind of content.
    fn saw(&mut self, reads: Reads, column: usize) -> Result<(), FilterError> {
        match (self.reads, reads) {
            (Reads::Nothing, r) => self.reads = r,
            (a, b) if a == b => {}
            _ => {
                return Err(FilterError::new(
                    column,
                    "a rule reads either HL7 v2 paths or json: paths, not both (write two rules)",
                ));
            }
        }
        Ok(())
    }

    /// A path or segment as the argument of a function or an operand.
    fn target(&mut self, token: &Token) -> Result<Option<Target>, FilterError> {
        let target = match &token.kind {
            Tok::Word(text) => target(text, token.column)?,
            Tok::Json(text) => Target::Json(json_path(text, token.column)?),
            _ => return Ok(None),
        };
        let reads = if matches!(target, Target::Json(_)) { Reads::Json } else { Reads::Hl7 };
        self.saw(reads, token.column)?;
        Ok(Some(target))
    }

    fn nest(&mut self, column: usize) -> Result<(), FilterError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(FilterError::new(column, format!("the rule nests deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    fn expression(&mut self) -> Result<Expr, FilterError> {
        let mut any = vec![self.and()?];
        while self.peek().kind == Tok::OrOr {
            self.advance();
            any.push(self.and()?);
        }
        Ok(if any.len() == 1 { any.remove(0) } else { Expr::Or(any) })
    }

    fn and(&mut self) -> Result<Expr, FilterError> {
        let mut all = vec![self.unary()?];
        while self.peek().kind == Tok::AndAnd {
            self.advance();
            all.push(self.unary()?);
        }
        Ok(if all.len() == 1 { all.remove(0) } else { Expr::And(all) })
    }

    fn unary(&mut self) -> Result<Expr, FilterError> {
        if self.peek().kind == Tok::Bang {
            let bang = self.advance();
            self.nest(bang.column)?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Expr, FilterError> {
        let t = self.peek().clone();
        match &t.kind {
            Tok::LParen => {
                self.advance();
                self.nest(t.column)?;
                let inner = self.expression()?;
                self.depth -= 1;
                let close = self.advance();
                if close.kind != Tok::RParen {
                    return Err(FilterError::new(
                        close.column,
                        format!("expected `)` closing the `(` at column {}, found {}", t.column, close.describe()),
                    ));
                }
                Ok(inner)
            }
            Tok::Word(w) if w == "true" || w == "false" => {
                self.advance();
                Ok(Expr::Const(w == "true"))
            }
            Tok::Word(w) if matches!(w.as_str(), "exists" | "present" | "null") => {
                let function = w.clone();
                self.advance();
                self.expect(Tok::LParen, "`(`", &format!("after `{function}`"))?;
                let arg = self.advance();
                let target = match self.target(&arg)? {
                    Some(t) => t,
                    None => {
                        return Err(FilterError::new(
                            arg.column,
                            format!("expected a path or a segment name in `{function}(...)`, found {}", arg.describe()),
                        ));
                    }
                };
                self.expect(Tok::RParen, "`)`", &format!("closing `{function}(`"))?;
                Ok(match (function.as_str(), target) {
                    ("exists", t) => Expr::Exists(t),
                    ("present", t) => Expr::Present(t),
                    (_, Target::Json(_)) => {
                        return Err(FilterError::new(
                            arg.column,
                            "`null(...)` tests HL7 v2's explicit null \"\"; a JSON null reads as absent, as in \
                             mapping rules (use `!exists(...)`)",
                        ));
                    }
                    (_, t @ Target::Path(_)) => Expr::Null(t),
                    (_, Target::Segment(..)) => {
                        return Err(FilterError::new(
                            arg.column,
                            "expected a path with a field in `null(...)`, found a segment name",
                        ));
                    }
                })
            }
            Tok::Word(_) | Tok::Json(_) | Tok::Str(_) => self.comparison(),
            Tok::Regex(_) => Err(FilterError::new(
                t.column,
                "a /regular expression/ can only follow `=~` or `!~`, as in PID-7 =~ /^19/",
            )),
            _ => Err(FilterError::new(
                t.column,
                format!("expected a path, a string, `(`, `!` or a function, found {}", t.describe()),
            )),
        }
    }

    fn comparison(&mut self) -> Result<Expr, FilterError> {
        let left_token = self.peek().clone();
        let left = self.operand()?;
        let shown = match &left_token.kind {
            Tok::Word(_) | Tok::Json(_) => left_token.describe(),
            _ => "the string".to_owned(),
        };
        let op = self.advance();
        let op = match &op.kind {
            Tok::EqEq => Compare::Eq(self.operand()?),
            Tok::NotEq => Compare::Ne(self.operand()?),
            Tok::Match | Tok::NotMatch => {
                let pattern = self.advance();
                let (Tok::Str(text) | Tok::Regex(text)) = &pattern.kind else {
                    return Err(FilterError::new(
                        pattern.column,
                        format!(
                            "expected a regular expression in a string after {}, found {}",
                            op.describe(),
                            pattern.describe()
                        ),
                    ));
                };
                let re = Regex::new(text).map_err(|e| {
                    FilterError::new(
                        pattern.column,
                        format!("invalid regular expression: {}", one_line(&e.to_string())),
                    )
                })?;
                if op.kind == Tok::Match { Compare::Matches(re) } else { Compare::NotMatches(re) }
            }
            Tok::Word(w) if w == "in" => Compare::In(self.list()?),
            Tok::Word(w) if w == "not" => {
                self.expect(Tok::Word("in".into()), "`in`", "after `not`")?;
                Compare::NotIn(self.list()?)
            }
            _ => {
                return Err(FilterError::new(
                    op.column,
                    format!("expected `==`, `!=`, `=~`, `!~`, `in` or `not in` after {shown}, found {}", op.describe()),
                ));
            }
        };
        Ok(Expr::Compare { left, op })
    }

    fn operand(&mut self) -> Result<Operand, FilterError> {
        let t = self.advance();
        match t.kind {
            Tok::Str(s) => Ok(Operand::Literal(s)),
            Tok::Regex(_) => Err(FilterError::new(
                t.column,
                format!(
                    "expected a path or a string, found {} (compare with a regular expression using `=~`)",
                    t.describe()
                ),
            )),
            Tok::Word(_) | Tok::Json(_) => match self.target(&t)? {
                Some(Target::Path(p)) => Ok(Operand::Path(p)),
                Some(Target::Json(p)) => Ok(Operand::Json(p)),
                _ => {
                    let w = t.describe();
                    let w = w.trim_matches('`');
                    Err(FilterError::new(
                        t.column,
                        format!("expected a path with a field (such as `{w}-1`), found the segment name `{w}`"),
                    ))
                }
            },
            _ => Err(FilterError::new(t.column, format!("expected a path or a string, found {}", t.describe()))),
        }
    }

    fn list(&mut self) -> Result<Vec<String>, FilterError> {
        self.expect(Tok::LBracket, "`[`", "to open the list")?;
        let mut items = Vec::new();
        loop {
            let t = self.advance();
            match t.kind {
                Tok::RBracket => return Ok(items),
                Tok::Str(s) => items.push(s),
                _ => {
                    return Err(FilterError::new(
                        t.column,
                        format!("expected a string or `]` in the list, found {}", t.describe()),
                    ));
                }
            }
            let t = self.advance();
            match t.kind {
                Tok::Comma => {}
                Tok::RBracket => return Ok(items),
                _ => {
                    return Err(FilterError::new(
                        t.column,
                        format!("expected `,` or `]` in the list, found {}", t.describe()),
                    ));
                }
            }
        }
    }
}

/// A word in operand position: a path, or a bare segment name (`ZPI`,
/// `OBX(2)`). Keywords out of place are reported as such.
fn target(word: &str, column: usize) -> Result<Target, FilterError> {
    if matches!(word, "in" | "not" | "true" | "false" | "exists" | "present" | "null") {
        return Err(FilterError::new(column, format!("expected a path or a string, found the keyword `{word}`")));
    }
    if let Some((name, occurrence)) = segment_ref(word) {
        return Ok(Target::Segment(name.to_owned(), occurrence));
    }
    Path::parse(word)
        .map(Target::Path)
        .map_err(|e| FilterError::new(column + e.position, format!("invalid path `{word}`: expected {}", e.reason)))
}

/// A `json:` path (the text after the prefix, which starts at `column`).
/// `[*]` is refused: a rule compares one value; `[key=value]` picks the
/// element to read (`json:entry[resource.resourceType=Patient]`).
fn json_path(text: &str, column: usize) -> Result<JsonPath, FilterError> {
    let column = column + JSON_PREFIX.len();
    if text.is_empty() {
        return Err(FilterError::new(column, "expected a JSON path after `json:`, as in json:resourceType"));
    }
    let path = JsonPath::parse(text).map_err(|e| FilterError::new(column, format!("invalid JSON path: {e}")))?;
    if path.has_each() {
        return Err(FilterError::new(
            column,
            format!(
                "`json:{text}`: a rule reads one value, so `[*]` is not allowed; pick an element with \
                 [key=value] (as in entry[resource.resourceType=Patient]) or an index ([0])"
            ),
        ));
    }
    Ok(path)
}

/// `PID` or `OBX(3)`: a segment name with an optional occurrence.
fn segment_ref(word: &str) -> Option<(&str, usize)> {
    let (name, occurrence) = match word.split_once('(') {
        None => (word, 1),
        Some((name, rest)) => {
            let n: usize = rest.strip_suffix(')')?.parse().ok()?;
            (name, n)
        }
    };
    let b = name.as_bytes();
    let ok = b.len() == 3
        && b[0].is_ascii_uppercase()
        && b[1..].iter().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    (ok && occurrence >= 1).then_some((name, occurrence))
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADT: &str = "MSH|^~\\&|REG|HOSP|EHR|HOSP|20261121120000||ADT^A04^ADT_A01|CTRL1|P|2.5.1\r\
        EVN|A04|20261121120000\r\
        PID|1||12345^^^HOSP^MR~999^^^SSA^SS||Doe^Jane^Q||19800101|F|||1 Main St^^Town^^12345||||||||\"\"\r\
        PV1|1|O|CLINIC^1^2\r\
        OBX|1|NM|718-7^Hemoglobin^LN||13.5|g/dL\r\
        OBX|2|ST|NOTE^Note||A \\T\\ B|";

    fn msg() -> Message {
        Message::parse(ADT).unwrap()
    }

    fn eval(rule: &str) -> bool {
        Filter::compile(rule).unwrap_or_else(|e| panic!("{}", e.render(rule))).matches(&msg())
    }

    fn error(rule: &str) -> FilterError {
        match Filter::compile(rule) {
            Ok(f) => panic!("{rule} compiled: {f:?}"),
            Err(e) => e,
        }
    }

    fn json_doc() -> serde_json::Value {
        serde_json::json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [
                {"system": "urn:oid:1.2.3", "code": "LOCAL"},
                {"system": "http://loinc.org", "code": "2339-0"}
            ]},
            "valueQuantity": {"value": 5.4, "unit": "mmol/L"},
            "issued": null,
            "note": [],
            "text": "",
            "flag": true
        })
    }

    fn eval_json(rule: &str) -> bool {
        let filter = Filter::compile(rule).unwrap_or_else(|e| panic!("{}", e.render(rule)));
        assert_eq!(filter.reads(), Reads::Json, "{rule}");
        filter.matches_json(&json_doc())
    }

    #[test]
    fn json_paths_read_json_documents() {
        assert!(eval_json(r#"json:resourceType == "Observation""#));
        assert!(!eval_json(r#"json:resourceType == "Patient""#));
        assert!(eval_json(r#"json:status in ["final", "amended"] && json:status != "preliminary""#));
        assert!(eval_json(r#"json:code.coding[system=http://loinc.org].code == "2339-0""#));
        assert!(eval_json(r#"json:code.coding[0].code=="LOCAL""#), "no spaces around the operator");
        assert!(eval_json(r#"json:code.coding[1].system =~ /loinc\.org$/"#));
        assert!(eval_json(r#"json:valueQuantity.value == "5.4""#), "a number reads as its JSON text");
        assert!(eval_json(r#"json:flag == "true""#));
        assert!(eval_json(r#"json:code == """#), "an object reads as empty");
        assert!(eval_json(r#"json:missing.member == """#));
        assert!(eval_json("exists(json:code.coding[system=urn:oid:1.2.3])"));
        assert!(!eval_json("exists(json:code.coding[system=urn:oid:9.9])"));
        assert!(eval_json("exists(json:valueQuantity) && !exists(json:note) && !exists(json:text)"));
        assert!(!eval_json("exists(json:issued) || present(json:issued)"), "a JSON null reads as absent");
        assert!(eval_json("present(json:note) && present(json:text) && present(json:code)"));
        assert!(!eval_json("present(json:missing)"));
        assert!(eval_json(r#"(json:status == "x" || json:status == "final") && !(json:flag == "false")"#));
    }

    #[test]
    fn json_rules_never_match_hl7_paths_and_back() {
        let json_rule = Filter::compile(r#"json:resourceType == "Observation""#).unwrap();
        assert!(!json_rule.matches(&msg()), "a json: path on an HL7 v2 message reads as absent");
        let hl7_rule = Filter::compile(r#"MSH-9-1 == "ADT""#).unwrap();
        assert_eq!(hl7_rule.reads(), Reads::Hl7);
        assert!(!hl7_rule.matches_json(&json_doc()));
        assert_eq!(Filter::compile(r#""a" == "a""#).unwrap().reads(), Reads::Nothing);
        assert!(first_rejecting_json(std::slice::from_ref(&json_rule), &json_doc()).is_none());
        let rejecting = Filter::compile(r#"json:status == "preliminary""#).unwrap();
        assert_eq!(
            first_rejecting_json(&[json_rule, rejecting], &json_doc()).map(Filter::source),
            Some(r#"json:status == "preliminary""#)
        );
    }

    #[test]
    fn json_path_errors_point_at_the_path() {
        let e = error(r#"json:resourceType == "Patient" && PID-8 == "F""#);
        assert_eq!(e.column, 35);
        assert!(e.message.contains("not both"), "{e}");
        let e = error(r#"json:entry[*].resource.resourceType == "Patient""#);
        assert_eq!(e.column, 6);
        assert!(e.message.contains("[*]") && e.message.contains("[key=value]"), "{e}");
        let e = error(r#"json: == "x""#);
        assert_eq!(e.column, 6);
        assert!(e.message.contains("expected a JSON path"), "{e}");
        let e = error(r#"json:name[0 == "x""#);
        assert!(e.message.contains("invalid JSON path"), "{e}");
        let e = error(r#"exists(json:a..b)"#);
        assert_eq!(e.column, 13);
        let e = error("null(json:issued)");
        assert_eq!(e.column, 6);
        assert!(e.message.contains("!exists"), "{e}");
    }

    #[test]
    fn the_issue_examples_evaluate() {
        assert!(eval(r#"MSH-9-1 == "ADT" && MSH-9-2 in ["A01","A04","A08"]"#));
        assert!(!eval(r#"MSH-9-1 == "ADT" && MSH-9-2 in ["A01","A08"]"#));
        assert!(eval(r#"PID-8 != """#));
        assert!(!eval(r#"PID-9 != """#));
        assert!(eval("exists(PID-5-2)"));
        assert!(!eval("exists(PID-19)"));
    }

    #[test]
    fn every_operator() {
        assert!(eval(r#"PID-5-1 == "Doe""#));
        assert!(!eval(r#"PID-5-1 == "doe""#));
        assert!(eval(r#"PID-5-1 != "Roe""#));
        assert!(eval(r#"PID-8 in ["M", "F",]"#));
        assert!(eval(r#"PID-8 not in ["M", "U"]"#));
        assert!(!eval(r#"PID-8 not in ["F"]"#));
        assert!(!eval(r#"PID-8 in []"#));
        assert!(eval(r#"PID-7 =~ "^1980""#));
        assert!(eval(r#"PID-7 =~ "01""#), "unanchored search");
        assert!(eval(r#"PID-7 !~ "^19[0-7]""#));
        assert!(eval(r#"MSH-9-1 =~ "(?i)^adt$""#));
        assert!(eval(r#"PID-3(2)-4 == "SSA""#));
        assert!(eval(r#"OBX(2)-5 == "A & B""#), "values are decoded before comparing");
        assert!(eval(r#"OBX-3-2 == "Hemoglobin""#), "first occurrence by default");
        assert!(eval("PID-18 == PID-19"), "path against path: both empty");
        assert!(eval(r#""a" == "a""#));
        assert!(eval("true && !false"));
        assert!(eval("PID.5.1 == 'Doe'"), "Mirth-style dots and single quotes");
    }

    #[test]
    fn precedence_and_parentheses() {
        // && binds tighter than ||: true || (false && false)
        assert!(eval(r#"PID-8 == "F" || PID-8 == "M" && PID-8 == "X""#));
        assert!(!eval(r#"(PID-8 == "F" || PID-8 == "M") && PID-8 == "X""#));
        assert!(eval(r#"!(PID-8 == "M")"#));
        assert!(eval(r#"!!(PID-8 == "F")"#));
        assert!(!eval(r#"!PID-8 == "F""#), "! applies to the comparison that follows");
    }

    #[test]
    fn absent_empty_and_explicit_null_compare_as_empty() {
        // PID-19 is the explicit null "", PID-20 is absent, PID-9 empty.
        assert!(eval(r#"PID-19 == """#));
        assert!(eval(r#"PID-20 == """#));
        assert!(eval(r#"PID-9 == """#));
        assert!(eval(r#"ZZZ-1 == """#), "absent segment");
        assert!(!eval("exists(PID-19)"));
        assert!(eval("present(PID-19)"));
        assert!(eval("null(PID-19)"));
        assert!(!eval("null(PID-9)"));
        assert!(!eval("null(PID-20)"));
        assert!(eval("present(PID-9)"));
        assert!(!eval("present(PID-20)"));
    }

    #[test]
    fn segment_targets() {
        assert!(eval("exists(PV1)"));
        assert!(eval("exists(OBX(2))"));
        assert!(!eval("exists(OBX(3))"));
        assert!(!eval("present(ZPI)"));
        assert!(eval("!exists(NK1) && exists(EVN)"));
    }

    #[test]
    fn regular_expressions_between_slashes_keep_backslashes() {
        assert!(eval(r"PID-7 =~ /^19\d{2}0101$/"));
        assert!(eval(r"PID-7 !~ /^20/"));
        assert!(eval(r#"PID-7 =~ "^19\\d""#), "a string needs doubled backslashes");
        assert!(eval(r"OBX(1)-6 =~ /^g\/dL$/"), r"\/ is a slash");
        assert!(eval(r"MSH-9-1 =~ /(?i)adt/ && MSH-9-2 =~ /A0[148]/"));
    }

    #[test]
    fn string_escapes() {
        let rule = Filter::compile(r#"PID-5-1 == "a\"b\\c\n\t\u{E9}'" || PID-5-1 == 'it\'s'"#).unwrap();
        let Expr::Or(parts) = &rule.expr else { panic!("{:?}", rule.expr) };
        let Expr::Compare { op: Compare::Eq(Operand::Literal(lit)), .. } = &parts[0] else { panic!() };
        assert_eq!(lit, "a\"b\\c\n\t\u{e9}'");
        let Expr::Compare { op: Compare::Eq(Operand::Literal(lit)), .. } = &parts[1] else { panic!() };
        assert_eq!(lit, "it's");
    }

    #[test]
    fn errors_say_where_and_what_was_expected() {
        let cases: &[(&str, usize, &str)] = &[
            (r#"PID-8 = "F""#, 7, "`==`"),
            (r#"PID-8 "F""#, 7, "expected `==`, `!=`, `=~`, `!~`, `in` or `not in` after `PID-8`"),
            ("PID-8", 6, "found the end of the rule"),
            (r#"PID-8 == "F" &"#, 14, "`&&`"),
            (r#"PID-8 == "F" | PID-8 == "M""#, 14, "`||`"),
            (r#"PID-8 == "F"#, 10, "unterminated string"),
            (r#"PID-8 == "\q""#, 11, "unknown escape"),
            (r#"PID-8 == "\u{110000}""#, 11, "hexadecimal"),
            (r#"(PID-8 == "F""#, 14, "expected `)` closing the `(` at column 1"),
            (r#"PID-8 == "F")"#, 13, "expected `&&`, `||` or the end"),
            (r#"PID-8 in "F""#, 10, "expected `[` to open the list"),
            (r#"PID-8 in ["F" "M"]"#, 15, "expected `,` or `]`"),
            (r#"PID-8 in ["F", PID-9]"#, 16, "expected a string or `]`"),
            (r#"PID-8 not ["F"]"#, 11, "expected `in` after `not`"),
            (r#"PID-8 =~ "(""#, 10, "invalid regular expression"),
            (r#"PID-8 =~ PID-9"#, 10, "expected a regular expression"),
            (r"PID-8 =~ /^F", 10, "unterminated regular expression"),
            (r"PID-8 =~ /(/", 10, "invalid regular expression"),
            (r"PID-8 == /F/", 10, "using `=~`"),
            (r"/F/ =~ PID-8", 1, "can only follow `=~` or `!~`"),
            (r#"PID-7 =~ "^19\d""#, 14, "write a regular expression as /.../"),
            (r#"PID-0 == "F""#, 5, "invalid path `PID-0`"),
            (r#"pid-8 == "F""#, 1, "invalid path `pid-8`"),
            (r#"PID == "F""#, 1, "found the segment name `PID`"),
            (r#"PID-8 == "F" && "#, 17, "expected a path, a string"),
            ("exists PID-8", 8, "expected `(` after `exists`"),
            ("exists(PID-8", 13, "expected `)` closing `exists(`"),
            (r#"exists("x")"#, 8, "expected a path or a segment name"),
            ("null(PID)", 6, "found a segment name"),
            (r#"PID-8 == "F" @"#, 14, "unexpected character '@'"),
            (r#"in == "F""#, 1, "keyword `in`"),
            ("", 1, "found the end of the rule"),
        ];
        for (rule, column, needle) in cases {
            let e = error(rule);
            assert!(e.message.contains(needle), "{rule}: {e}");
            assert_eq!(e.column, *column, "{}", e.render(rule));
        }
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let e = error(r#""é" == "é" &&"#);
        assert_eq!(e.column, 14, "{e}");
    }

    #[test]
    fn render_points_at_the_column() {
        let rule = r#"PID-8 = "F""#;
        let shown = error(rule).render(rule);
        assert_eq!(shown.lines().nth(1).unwrap().find('^'), Some(6));
    }

    #[test]
    fn pathological_nesting_is_an_error_not_a_stack_overflow() {
        let rule = format!("{}true{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(error(&rule).message.contains("nests deeper"));
        let rule = format!("{}true", "!".repeat(10_000));
        assert!(error(&rule).message.contains("nests deeper"));
        let ok = format!("{}true{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(eval(&ok));
    }

    #[test]
    fn source_is_kept_for_the_filtered_reason() {
        let text = r#"MSH-9-1 == "ORU""#;
        let rule = Filter::compile(text).unwrap();
        assert_eq!(rule.source(), text);
        assert_eq!(rule.to_string(), text);
        assert!(!rule.matches(&msg()));
    }

    #[test]
    fn filters_are_send_and_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Filter>();
    }
}

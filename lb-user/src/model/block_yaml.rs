//! The YAML manifests are mostly written in, read straight into values: block
//! mappings and sequences, flow collections on one line, plain scalars and quoted
//! ones without escapes, comments; ASCII text, spaces for indentation. That is
//! what kubectl prints, Helm renders and people write; read here ~10 times as fast
//! as libyaml's events through serde. Anything else (anchors, aliases, tags, block
//! scalars, a scalar or flow over several lines, escapes, tabs, non-ASCII text,
//! duplicate keys, any error) is not read here: the caller reads the text with
//! libyaml as before, so errors keep libyaml's words and lines.
//!
//! The values are the ones [`super::decode::value`] reads through libyaml: plain
//! scalars resolved as serde_yaml_ng resolves them (null, booleans, integers in
//! four bases, floats, else strings), keys as written, and the same bound of their
//! length as JSON. They are read into [`Node`]s, which borrow their strings from
//! the text and keep each mapping's keys in the order written: a [`Node`] is
//! typed straight from ([`super::node`]) or made the `Value` libyaml reads.

use std::borrow::Cow;

use serde_json::{Map, Value};

#[cfg(test)]
use super::decode::Read;
use super::decode::{MAX_DEPTH, SCALAR_JSON_AT_MOST, json_string_at_most};

/// A value as read here: strings borrowed from the text where they can be, a
/// mapping's entries in the order written (no key twice).
#[derive(Debug, Clone, PartialEq)]
pub enum Node<'a> {
    Str(Cow<'a, str>),
    /// Null, a boolean or a number.
    Scalar(Value),
    Map(Vec<(Cow<'a, str>, Node<'a>)>),
    Seq(Vec<Node<'a>>),
}

impl Node<'_> {
    /// The value libyaml reads.
    pub fn into_value(self) -> Value {
        match self {
            Node::Str(s) => Value::String(s.into_owned()),
            Node::Scalar(v) => v,
            Node::Map(entries) => Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.into_owned(), v.into_value()))
                    .collect::<Map<String, Value>>(),
            ),
            Node::Seq(items) => Value::Array(items.into_iter().map(Node::into_value).collect()),
        }
    }

    /// The value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Self> {
        match self {
            Node::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// A string's text (as `Value::as_str`: None for any other value).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A document read here, with an upper bound of its length as compact JSON.
#[derive(Debug)]
pub struct Tree<'a> {
    pub node: Node<'a>,
    pub json_at_most: usize,
}

/// The documents of `text` (separated by `---` lines), each as libyaml reads it;
/// None when some part of it is not the common YAML read here.
#[cfg(test)]
pub fn documents(text: &str) -> Option<Vec<Read>> {
    Some(
        trees(text)?
            .into_iter()
            .map(|t| Read {
                value: t.node.into_value(),
                json_at_most: t.json_at_most,
            })
            .collect(),
    )
}

/// The documents of `text` as [`documents`] reads them, as [`Node`]s.
pub fn trees(text: &str) -> Option<Vec<Tree<'_>>> {
    // Control characters, tabs, carriage returns and non-ASCII text: libyaml's.
    if !text
        .bytes()
        .all(|b| b == b'\n' || (0x20..0x7f).contains(&b))
    {
        return None;
    }
    let mut docs = Vec::new();
    let mut lines = Vec::new();
    let mut marked = false;
    for line in text.split('\n') {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let rest = &line[indent..];
        if rest.is_empty() || rest.starts_with('#') {
            continue;
        }
        if indent == 0 && (rest.starts_with("---") || rest.starts_with("...")) {
            // A marker with content after it, or a document end: libyaml's.
            if rest != "---" {
                return None;
            }
            if marked || !lines.is_empty() {
                docs.push(Parser::document(std::mem::take(&mut lines))?);
            }
            marked = true;
            continue;
        }
        if indent == 0 && rest.starts_with('%') {
            return None; // a directive
        }
        lines.push(Line { indent, text: rest });
    }
    // (A text without content is one empty document too.)
    if marked || !lines.is_empty() || docs.is_empty() {
        docs.push(Parser::document(lines)?);
    }
    Some(docs)
}

/// A line with content: its indentation and the rest.
#[derive(Clone, Copy)]
struct Line<'a> {
    indent: usize,
    text: &'a str,
}

struct Parser<'a> {
    lines: Vec<Line<'a>>,
    at: usize,
    /// The bound of the document's length as JSON, counted as `decode` counts it.
    json: usize,
}

/// Mappings with more keys than this are checked for a key written twice by
/// sorting their keys, not by comparing each with those before it.
const KEYS_COMPARED: usize = 16;

/// Whether `key` is the key of an entry of `entries` (a mapping being read: up to
/// [`KEYS_COMPARED`] keys, past them [`key_twice`] looks once it is whole).
fn has_key(entries: &[(Cow<'_, str>, Node<'_>)], key: &str) -> bool {
    entries.len() <= KEYS_COMPARED && entries.iter().any(|(k, _)| k == key)
}

/// Whether a whole mapping has a key twice (one of more than [`KEYS_COMPARED`]
/// keys; smaller ones were checked by [`has_key`] as they were read).
fn key_twice(entries: &[(Cow<'_, str>, Node<'_>)]) -> bool {
    if entries.len() <= KEYS_COMPARED {
        return false;
    }
    let mut keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_ref()).collect();
    keys.sort_unstable();
    keys.windows(2).any(|w| w[0] == w[1])
}

impl<'a> Parser<'a> {
    fn document(lines: Vec<Line<'a>>) -> Option<Tree<'a>> {
        let mut p = Parser {
            lines,
            at: 0,
            json: 0,
        };
        let value = match p.lines.first() {
            None => p.scalar(Node::Scalar(Value::Null)),
            Some(first) => {
                let v = p.node(first.indent, 0)?;
                // Anything after the root node (a line less indented than it).
                if p.at < p.lines.len() {
                    return None;
                }
                v
            }
        };
        Some(Tree {
            node: value,
            json_at_most: p.json,
        })
    }

    fn line(&self) -> Option<Line<'a>> {
        self.lines.get(self.at).copied()
    }

    /// One value more, which takes at most `json` bytes as JSON.
    fn spend(&mut self, json: usize) {
        self.json = self.json.saturating_add(json).saturating_add(1);
    }

    fn scalar(&mut self, v: Node<'a>) -> Node<'a> {
        self.spend(match &v {
            Node::Str(s) => json_string_at_most(s.len()),
            _ => SCALAR_JSON_AT_MOST,
        });
        v
    }

    fn key(&mut self, key: &str) {
        self.json = self
            .json
            .saturating_add(json_string_at_most(key.len()))
            .saturating_add(1);
    }

    /// One collection more at `depth`; None past the depth decode allows.
    fn collection(&mut self, depth: usize) -> Option<()> {
        (depth < MAX_DEPTH - 1).then(|| self.spend(2))
    }

    /// The node starting on the current line, indented `indent`, at `depth`.
    fn node(&mut self, indent: usize, depth: usize) -> Option<Node<'a>> {
        let line = self.line()?;
        if is_item(line.text) {
            return self.sequence(indent, depth);
        }
        if split_key(line.text).is_some() {
            return self.mapping(indent, depth);
        }
        // A value alone on its line(s).
        self.at += 1;
        let v = self.inline(line.text, depth)?;
        self.ends_with_line(indent)?;
        Some(v)
    }

    /// None when the next line is more indented than `indent`: it would continue
    /// the value just read (a scalar over several lines) or be an error.
    fn ends_with_line(&self, indent: usize) -> Option<()> {
        match self.line() {
            Some(next) if next.indent > indent => None,
            _ => Some(()),
        }
    }

    /// A block mapping whose keys are indented `indent`.
    fn mapping(&mut self, indent: usize, depth: usize) -> Option<Node<'a>> {
        self.collection(depth)?;
        let mut map = Vec::new();
        while let Some(line) = self.line() {
            if line.indent < indent {
                break;
            }
            if line.indent > indent || is_item(line.text) {
                return None;
            }
            let (key, rest) = split_key(line.text)?;
            self.key(&key);
            self.at += 1;
            let rest = rest.trim_start_matches(' ');
            let value = if rest.is_empty() || rest.starts_with('#') {
                match self.line() {
                    Some(next) if next.indent > indent => self.node(next.indent, depth + 1)?,
                    // A sequence may sit at its key's indentation.
                    Some(next) if next.indent == indent && is_item(next.text) => {
                        self.sequence(indent, depth + 1)?
                    }
                    _ => self.scalar(Node::Scalar(Value::Null)),
                }
            } else {
                let v = self.inline(rest, depth + 1)?;
                self.ends_with_line(indent)?;
                v
            };
            if has_key(&map, &key) {
                return None; // a duplicate key: decode's error
            }
            map.push((key, value));
        }
        (!key_twice(&map)).then_some(Node::Map(map))
    }

    /// A block sequence whose dashes are indented `indent`.
    fn sequence(&mut self, indent: usize, depth: usize) -> Option<Node<'a>> {
        self.collection(depth)?;
        let mut items = Vec::new();
        while let Some(line) = self.line() {
            if line.indent < indent || (line.indent == indent && !is_item(line.text)) {
                break;
            }
            if line.indent > indent {
                return None;
            }
            let after = &line.text[1..];
            let content = after.trim_start_matches(' ');
            let column = indent + 1 + (after.len() - content.len());
            let item = if content.is_empty() || content.starts_with('#') {
                self.at += 1;
                match self.line() {
                    Some(next) if next.indent > indent => self.node(next.indent, depth + 1)?,
                    _ => self.scalar(Node::Scalar(Value::Null)),
                }
            } else if is_item(content) {
                return None; // a sequence in a sequence on one line: libyaml's
            } else if split_key(content).is_some() {
                // A mapping starting on the dash's line: its keys are at the
                // column of the first one.
                self.lines[self.at] = Line {
                    indent: column,
                    text: content,
                };
                self.mapping(column, depth + 1)?
            } else {
                self.at += 1;
                let v = self.inline(content, depth + 1)?;
                self.ends_with_line(indent)?;
                v
            };
            items.push(item);
        }
        Some(Node::Seq(items))
    }

    /// A value written on the rest of a line (after `key: ` or `- `): a flow
    /// collection, a quoted or a plain scalar, then maybe a comment.
    fn inline(&mut self, text: &'a str, depth: usize) -> Option<Node<'a>> {
        let b = text.as_bytes();
        match b.first()? {
            b'{' | b'[' | b'"' | b'\'' => {
                let mut at = 0;
                let v = self.flow(b, &mut at, depth)?;
                // After it: nothing, or a comment.
                let rest = &text[at..];
                let trimmed = rest.trim_start_matches(' ');
                (trimmed.is_empty() || (trimmed.starts_with('#') && trimmed.len() < rest.len()))
                    .then_some(v)
            }
            _ => {
                if !plain_start(b) {
                    return None;
                }
                let end = text.find(" #").unwrap_or(text.len());
                let s = text[..end].trim_end_matches(' ');
                if s.contains(": ") || s.ends_with(':') {
                    return None; // a mapping where a scalar may not start one
                }
                let v = resolve(s)?;
                Some(self.scalar(v))
            }
        }
    }

    /// Opens the flow collection at `b[*at]` that `close` closes: whether it is
    /// empty (`*at` after it then); None past the depth allowed.
    fn opens(&mut self, b: &'a [u8], at: &mut usize, depth: usize, close: u8) -> Option<bool> {
        self.collection(depth)?;
        *at += 1;
        skip_spaces(b, at);
        let empty = b.get(*at) == Some(&close);
        if empty {
            *at += 1;
        }
        Some(empty)
    }

    /// A value in a flow collection (or a flow collection or quoted scalar on a
    /// block line), from `b[*at]`, leaving `*at` after it.
    fn flow(&mut self, b: &'a [u8], at: &mut usize, depth: usize) -> Option<Node<'a>> {
        skip_spaces(b, at);
        match *b.get(*at)? {
            b'[' => {
                let mut items = Vec::new();
                let mut closed = self.opens(b, at, depth, b']')?;
                while !closed {
                    items.push(self.flow(b, at, depth + 1)?);
                    // (A pair in a sequence, `[a: b]`, is libyaml's.)
                    closed = entry_ends(b, at, b']')?;
                }
                Some(Node::Seq(items))
            }
            b'{' => {
                let mut map = Vec::new();
                let mut closed = self.opens(b, at, depth, b'}')?;
                while !closed {
                    let key = match *b.get(*at)? {
                        b'"' | b'\'' => {
                            let k = quoted(b, at)?;
                            skip_spaces(b, at);
                            (b.get(*at) == Some(&b':')).then_some(())?;
                            *at += 1;
                            k
                        }
                        _ => {
                            let k = flow_plain(b, at)?;
                            // `key: `: a colon and a space.
                            (b.get(*at) == Some(&b':') && b.get(*at + 1) == Some(&b' '))
                                .then_some(())?;
                            if k.ends_with(' ') {
                                return None;
                            }
                            *at += 1;
                            Cow::Borrowed(k)
                        }
                    };
                    skip_spaces(b, at);
                    if matches!(b.get(*at), None | Some(b',' | b'}')) {
                        return None; // a key without a value
                    }
                    self.key(&key);
                    let v = self.flow(b, at, depth + 1)?;
                    if has_key(&map, &key) {
                        return None;
                    }
                    map.push((key, v));
                    closed = entry_ends(b, at, b'}')?;
                }
                (!key_twice(&map)).then_some(Node::Map(map))
            }
            b'"' | b'\'' => {
                let s = quoted(b, at)?;
                Some(self.scalar(Node::Str(s)))
            }
            _ => {
                let s = flow_plain(b, at)?;
                if b.get(*at) == Some(&b'#') {
                    return None; // a comment inside a flow collection
                }
                let v = resolve(s.trim_end_matches(' '))?;
                Some(self.scalar(v))
            }
        }
    }
}

/// The longest key read here (libyaml's simple keys end within 1,024 characters).
const MAX_KEY: usize = 1000;

/// A block sequence's entry: a dash, then a space or the line's end.
fn is_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// A block mapping's entry `key: rest` (or `key:`): the key as written (a plain
/// one borrowed: lines are asked whether they are entries before they are read)
/// and the rest; None when the line is no such entry (or its key is not read here).
fn split_key(text: &str) -> Option<(Cow<'_, str>, &str)> {
    let b = text.as_bytes();
    if matches!(b.first(), Some(b'"' | b'\'')) {
        let mut at = 0;
        let key = quoted(b, &mut at)?;
        if at > MAX_KEY {
            return None;
        }
        let rest = text[at..].strip_prefix(':')?;
        return (rest.is_empty() || rest.starts_with(' ')).then_some((key, rest));
    }
    if !plain_start(b) {
        return None;
    }
    let colon = text
        .match_indices(':')
        .map(|(i, _)| i)
        .find(|&i| matches!(b.get(i + 1), None | Some(b' ')))?;
    let key = &text[..colon];
    // (libyaml looks for a key's colon within 1,024 characters.)
    let comment = key
        .as_bytes()
        .windows(2)
        .any(|w| w[0] == b' ' && w[1] == b'#');
    if comment || key.ends_with(' ') || key.len() > MAX_KEY {
        return None;
    }
    Some((Cow::Borrowed(key), &text[colon + 1..]))
}

/// Whether a plain scalar may start with these bytes (YAML's indicators may not
/// begin one; `-`, `?` and `:` may when a non-space follows).
fn plain_start(b: &[u8]) -> bool {
    match b.first() {
        None => false,
        Some(b'-' | b'?' | b':') => !matches!(
            b.get(1),
            None | Some(b' ' | b',' | b'[' | b']' | b'{' | b'}')
        ),
        Some(c) => !b",[]{}#&*!|>'\"%@`".contains(c),
    }
}

/// Whether a plain scalar in a flow collection may start with these bytes (one
/// starting with `-`, `?` or `:` is left to libyaml).
fn flow_plain_start(b: &[u8]) -> bool {
    plain_start(b) && !matches!(b.first(), Some(b'-' | b'?' | b':'))
}

/// A plain scalar in a flow collection from `b[*at]` as written (spaces before
/// its end kept), leaving `*at` where it ends; None when one may not start there.
fn flow_plain<'b>(b: &'b [u8], at: &mut usize) -> Option<&'b str> {
    let start = *at;
    if !flow_plain_start(&b[start..]) {
        return None;
    }
    while !flow_end(b, *at) {
        *at += 1;
    }
    std::str::from_utf8(&b[start..*at]).ok()
}

/// Where a plain scalar in a flow collection ends: a flow indicator, a colon
/// before a space or an indicator, a comment, the line's end.
fn flow_end(b: &[u8], at: usize) -> bool {
    match b.get(at) {
        None => true,
        Some(b',' | b'[' | b']' | b'{' | b'}') => true,
        // (`:` before `?` too: libyaml refuses it in a flow collection.)
        Some(b':') => matches!(
            b.get(at + 1),
            None | Some(b' ' | b',' | b'?' | b'[' | b']' | b'{' | b'}')
        ),
        Some(b'#') => at > 0 && b[at - 1] == b' ',
        Some(_) => false,
    }
}

/// After an entry of a flow collection closed by `close`: whether it closed
/// (`*at` after it), or a comma came and another entry follows; None for
/// anything else, a trailing comma included (libyaml's).
fn entry_ends(b: &[u8], at: &mut usize, close: u8) -> Option<bool> {
    skip_spaces(b, at);
    let c = *b.get(*at)?;
    *at += 1;
    if c == close {
        return Some(true);
    }
    if c != b',' {
        return None;
    }
    skip_spaces(b, at);
    (!matches!(b.get(*at), Some(b']' | b'}' | b','))).then_some(false)
}

fn skip_spaces(b: &[u8], at: &mut usize) {
    while b.get(*at) == Some(&b' ') {
        *at += 1;
    }
}

/// A quoted scalar on one line from `b[*at]` (its opening quote), leaving `*at`
/// after the closing one: `'it''s'` is `it's` (the only one not borrowed from the
/// text); a double-quoted one with an escape is libyaml's.
fn quoted<'b>(b: &'b [u8], at: &mut usize) -> Option<Cow<'b, str>> {
    let q = *b.get(*at)?;
    let start = *at + 1;
    let mut i = start;
    // What is written between the quotes, up to the first doubled quote (borrowed).
    let mut out: Option<Vec<u8>> = None;
    loop {
        let c = *b.get(i)?;
        if c == q {
            if q == b'\'' && b.get(i + 1) == Some(&b'\'') {
                out.get_or_insert_with(|| b[start..i].to_vec()).push(b'\'');
                i += 2;
                continue;
            }
            *at = i + 1;
            return match out {
                None => std::str::from_utf8(&b[start..i]).ok().map(Cow::Borrowed),
                Some(out) => String::from_utf8(out).ok().map(Cow::Owned),
            };
        }
        if q == b'"' && c == b'\\' {
            return None;
        }
        if let Some(out) = &mut out {
            out.push(c);
        }
        i += 1;
    }
}

/// A plain scalar's value as serde_yaml_ng resolves it (`visit_untagged_scalar`):
/// empty or `null`, `Null`, `NULL`, `~`: null; `true`/`false` in three cases;
/// integers (decimal, `0x`, `0o`, `0b`, signed); finite floats and `.inf`,
/// `.nan` forms; else a string. An integer past 64 bits (which `decode` refuses)
/// is left to it (None).
fn resolve(s: &str) -> Option<Node<'_>> {
    let scalar = |v| Some(Node::Scalar(v));
    match s {
        "" | "null" | "Null" | "NULL" | "~" => return scalar(Value::Null),
        "true" | "True" | "TRUE" => return scalar(Value::Bool(true)),
        "false" | "False" | "FALSE" => return scalar(Value::Bool(false)),
        _ => {}
    }
    // A letter first: never a number (Rust's float parser takes `inf` and `nan`,
    // which serde_yaml_ng refuses as not finite).
    if s.as_bytes()[0].is_ascii_alphabetic() || s.starts_with('/') || s.starts_with('_') {
        return Some(Node::Str(Cow::Borrowed(s)));
    }
    if let Some(u) = unsigned_int(s, u64::from_str_radix) {
        return scalar(Value::from(u));
    }
    if let Some(i) = negative_int(s, i64::from_str_radix) {
        return scalar(Value::from(i));
    }
    if unsigned_int(s, u128::from_str_radix).is_some()
        || negative_int(s, i128::from_str_radix).is_some()
    {
        return None;
    }
    if !digits_but_not_number(s)
        && let Some(f) = float(s)
    {
        return scalar(serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number));
    }
    Some(Node::Str(Cow::Borrowed(s)))
}

fn unsigned_int<T>(
    s: &str,
    radix: fn(&str, u32) -> Result<T, std::num::ParseIntError>,
) -> Option<T> {
    let unpositive = s.strip_prefix('+').unwrap_or(s);
    for (prefix, base) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(rest) = unpositive.strip_prefix(prefix) {
            if rest.starts_with(['+', '-']) {
                return None;
            }
            if let Ok(n) = radix(rest, base) {
                return Some(n);
            }
        }
    }
    if unpositive.starts_with(['+', '-']) || digits_but_not_number(s) {
        return None;
    }
    radix(unpositive, 10).ok()
}

fn negative_int<T>(
    s: &str,
    radix: fn(&str, u32) -> Result<T, std::num::ParseIntError>,
) -> Option<T> {
    for (prefix, base) in [("-0x", 16), ("-0o", 8), ("-0b", 2)] {
        if let Some(rest) = s.strip_prefix(prefix)
            && let Ok(n) = radix(&format!("-{rest}"), base)
        {
            return Some(n);
        }
    }
    if digits_but_not_number(s) {
        return None;
    }
    radix(s, 10).ok()
}

fn float(s: &str) -> Option<f64> {
    let unpositive = match s.strip_prefix('+') {
        Some(u) if u.starts_with(['+', '-']) => return None,
        Some(u) => u,
        None => s,
    };
    if let ".inf" | ".Inf" | ".INF" = unpositive {
        return Some(f64::INFINITY);
    }
    if let "-.inf" | "-.Inf" | "-.INF" = s {
        return Some(f64::NEG_INFINITY);
    }
    if let ".nan" | ".NaN" | ".NAN" = s {
        return Some(f64::NAN);
    }
    unpositive.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// Leading zeros before digits: a string in YAML 1.2 (`0123`).
fn digits_but_not_number(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    s.len() > 1 && s.starts_with('0') && s[1..].bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests;

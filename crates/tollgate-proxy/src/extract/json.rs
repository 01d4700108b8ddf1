//! A structural scan of a JSON object body's top level, for the `json:` key source: where the
//! members named the key field lie, so the key can be read from one and all of them cut out with
//! every other byte left as the client sent it (no re-encoding: numbers, escapes, order and
//! whitespace stay the client's).
//!
//! The top level is read by JSON's grammar (`{`, members `"name" : value` separated by `,`, `}`,
//! then only whitespace; a leading UTF-8 BOM skipped). Nested values are only delimited: strings
//! (with their escapes) skipped, `{}` and `[]` matched on an explicit stack, scalars taken up to
//! the next delimiter. So a body a full parser refuses for something inside a value (a number like
//! `1E400`, a lone surrogate `"\ud800"`, nesting deeper than its recursion limit) still yields a
//! top-level key, and no depth of nesting can exhaust the stack.

use std::ops::Range;

/// One top-level member: where it starts (its name's opening quote) and ends (after its value),
/// its value's span, and whether its name is the field's.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    span: Range<usize>,
    value: Range<usize>,
    named: bool,
}

/// A top-level object's members and the positions of its braces.
#[derive(Debug)]
pub(crate) struct Object {
    open: usize,
    close: usize,
    members: Vec<Member>,
}

/// Whether `body` may hold a member named `field` at all: its name in quotes as plain bytes, or
/// an escape anywhere (a name may be spelled with escapes). A body without either is not scanned.
pub(crate) fn may_hold(body: &[u8], field: &str) -> bool {
    let name = field.as_bytes();
    let quoted =
        |&at: &usize| at > 0 && body[at - 1] == b'"' && body.get(at + name.len()) == Some(&b'"');
    memchr::memmem::find_iter(body, name).any(|at| quoted(&at))
        || memchr::memchr(b'\\', body).is_some()
}

/// Scans `body` as a JSON object, marking the top-level members named `field`. `None`: the body
/// is not structurally a JSON object.
pub(crate) fn scan(body: &[u8], field: &str) -> Option<Object> {
    let mut i = if body.starts_with(b"\xEF\xBB\xBF") {
        3
    } else {
        0
    };
    i = skip_ws(body, i);
    if body.get(i) != Some(&b'{') {
        return None;
    }
    let open = i;
    i = skip_ws(body, i + 1);
    let mut members = Vec::new();
    if body.get(i) != Some(&b'}') {
        loop {
            let start = i;
            let name_end = skip_string(body, i)?;
            let named = name_is(&body[start..name_end], field);
            i = skip_ws(body, name_end);
            if body.get(i) != Some(&b':') {
                return None;
            }
            let value_start = skip_ws(body, i + 1);
            let value_end = skip_value(body, value_start)?;
            members.push(Member {
                span: start..value_end,
                value: value_start..value_end,
                named,
            });
            i = skip_ws(body, value_end);
            match body.get(i) {
                Some(b',') => i = skip_ws(body, i + 1),
                Some(b'}') => break,
                _ => return None,
            }
        }
    }
    let close = i;
    if skip_ws(body, close + 1) != body.len() {
        return None;
    }
    Some(Object {
        open,
        close,
        members,
    })
}

impl Object {
    /// The span of the value of the last member named the field (as a JSON parser building a
    /// map keeps the last of duplicate names).
    pub(crate) fn last_value(&self) -> Option<Range<usize>> {
        self.members
            .iter()
            .rev()
            .find(|m| m.named)
            .map(|m| m.value.clone())
    }

    /// Whether any top-level member is named the field.
    pub(crate) fn has_named(&self) -> bool {
        self.members.iter().any(|m| m.named)
    }

    /// `body` without the members named the field: each goes with one adjoining separator (the
    /// comma and the whitespace around it; the one before it for the last member), every other
    /// byte stays. An object left with no members becomes `{}` (whitespace inside dropped).
    pub(crate) fn without_named(&self, body: &[u8]) -> Vec<u8> {
        if !self.has_named() {
            return body.to_vec();
        }
        let mut out = Vec::with_capacity(body.len());
        let kept: Vec<usize> = (0..self.members.len())
            .filter(|&i| !self.members[i].named)
            .collect();
        let (Some(&first), Some(last_member)) = (kept.first(), self.members.last()) else {
            out.extend_from_slice(&body[..=self.open]);
            out.extend_from_slice(&body[self.close..]);
            return out;
        };
        // Up to the first member, as it came (the brace and the whitespace after it).
        out.extend_from_slice(&body[..self.members[0].span.start]);
        out.extend_from_slice(&body[self.members[first].span.clone()]);
        for pair in kept.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            // The separator that followed `a` in the body, then `b`.
            let sep = self.members[a].span.end..self.members[a + 1].span.start;
            out.extend_from_slice(&body[sep]);
            out.extend_from_slice(&body[self.members[b].span.clone()]);
        }
        // After the last member, as it came (whitespace, the brace, whitespace).
        out.extend_from_slice(&body[last_member.span.end..]);
        out
    }
}

fn skip_ws(body: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = body.get(i) {
        i += 1;
    }
    i
}

/// The end (after the closing quote) of the string whose opening quote is at `i`.
fn skip_string(body: &[u8], i: usize) -> Option<usize> {
    if body.get(i) != Some(&b'"') {
        return None;
    }
    let mut at = i + 1;
    loop {
        at += memchr::memchr2(b'"', b'\\', body.get(at..)?)?;
        if body[at] == b'"' {
            return Some(at + 1);
        }
        // An escape: the next byte is never the string's end (`\uXXXX`'s digits are plain).
        at += 2;
    }
}

/// The end of the value starting at `i`: a string, an object or array (delimited, nesting on an
/// explicit stack), or a scalar (up to the next delimiter).
fn skip_value(body: &[u8], i: usize) -> Option<usize> {
    match *body.get(i)? {
        b'"' => skip_string(body, i),
        open @ (b'{' | b'[') => {
            let mut stack = vec![open];
            let mut at = i + 1;
            while let Some(top) = stack.last().copied() {
                match *body.get(at)? {
                    b'"' => {
                        at = skip_string(body, at)?;
                        continue;
                    }
                    b @ (b'{' | b'[') => stack.push(b),
                    b'}' if top == b'{' => {
                        stack.pop();
                    }
                    b']' if top == b'[' => {
                        stack.pop();
                    }
                    b'}' | b']' => return None,
                    _ => {}
                }
                at += 1;
            }
            Some(at)
        }
        b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
            let len = body[i..]
                .iter()
                .position(|b| {
                    matches!(
                        b,
                        b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r' | b'"' | b'{' | b'['
                    )
                })
                .unwrap_or(body.len() - i);
            Some(i + len)
        }
        _ => None,
    }
}

/// Whether a name (with its quotes) is `field`: its bytes as they are, or decoded when it has
/// escapes.
fn name_is(quoted: &[u8], field: &str) -> bool {
    let inner = &quoted[1..quoted.len() - 1];
    if inner == field.as_bytes() {
        return true;
    }
    memchr::memchr(b'\\', inner).is_some()
        && serde_json::from_slice::<String>(quoted).is_ok_and(|name| name == field)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(body: &str) -> Option<String> {
        let o = scan(body.as_bytes(), "apiKey")?;
        Some(String::from_utf8(o.without_named(body.as_bytes())).unwrap())
    }

    fn key(body: &str) -> Option<String> {
        let o = scan(body.as_bytes(), "apiKey")?;
        let v = o.last_value()?;
        serde_json::from_slice(&body.as_bytes()[v]).ok()
    }

    #[test]
    fn the_member_goes_with_one_separator_every_other_byte_stays() {
        // First, middle, last, only.
        assert_eq!(strip(r#"{"apiKey":"K","b":2}"#).unwrap(), r#"{"b":2}"#);
        assert_eq!(
            strip(r#"{"a":1,"apiKey":"K","b":2}"#).unwrap(),
            r#"{"a":1,"b":2}"#
        );
        assert_eq!(strip(r#"{"a":1,"apiKey":"K"}"#).unwrap(), r#"{"a":1}"#);
        assert_eq!(strip(r#"{"apiKey":"K"}"#).unwrap(), "{}");
        assert_eq!(strip(" { \"apiKey\" : \"K\" } \n").unwrap(), " {} \n");
        // Whitespace and layout around the rest as sent.
        let pretty = "{\n  \"a\": 1,\n  \"apiKey\": \"K\",\n  \"c\": [1, 2]\n}\n";
        assert_eq!(
            strip(pretty).unwrap(),
            "{\n  \"a\": 1,\n  \"c\": [1, 2]\n}\n"
        );
        let last = "{\n  \"a\" : 1 ,\n  \"apiKey\" : \"K\"\n}";
        assert_eq!(strip(last).unwrap(), "{\n  \"a\" : 1\n}");
        // Numbers, escapes and order are the client's bytes, never re-encoded.
        let body = r#"{"n":12345678901234567890123,"x":1.50,"e":1.0e2,"apiKey":"K","s":"\u00e9\/\"q","z":-0,"big":1E400}"#;
        assert_eq!(
            strip(body).unwrap(),
            r#"{"n":12345678901234567890123,"x":1.50,"e":1.0e2,"s":"\u00e9\/\"q","z":-0,"big":1E400}"#
        );
        assert_eq!(key(body).unwrap(), "K");
        // No member of that name: the body as it came.
        assert_eq!(strip(r#"{"a":"apiKey"}"#).unwrap(), r#"{"a":"apiKey"}"#);
    }

    #[test]
    fn nested_members_of_that_name_stay() {
        let body = r#"{"o":{"apiKey":"in"},"l":[{"apiKey":"x"},"apiKey"],"apiKey":"K","s":"\"apiKey\":1"}"#;
        assert_eq!(
            strip(body).unwrap(),
            r#"{"o":{"apiKey":"in"},"l":[{"apiKey":"x"},"apiKey"],"s":"\"apiKey\":1"}"#
        );
        assert_eq!(key(body).unwrap(), "K");
        // Only nested: no key, nothing cut.
        let nested = r#"{"o":{"apiKey":"in"}}"#;
        assert_eq!(key(nested), None);
        assert_eq!(strip(nested).unwrap(), nested);
    }

    #[test]
    fn duplicates_all_go_and_the_last_is_the_key() {
        let body = r#"{"apiKey":"first","a":1,"apiKey":"last"}"#;
        assert_eq!(strip(body).unwrap(), r#"{"a":1}"#);
        assert_eq!(key(body).unwrap(), "last");
        assert_eq!(strip(r#"{"apiKey":1,"apiKey":"K"}"#).unwrap(), "{}");
        assert_eq!(
            strip(r#"{"a":1,"apiKey":1,"apiKey":2,"b":2,"apiKey":3}"#).unwrap(),
            r#"{"a":1,"b":2}"#
        );
    }

    #[test]
    fn names_and_values_are_read_as_json_strings() {
        // An escaped name is the field too; an escaped value is decoded.
        let body = r#"{"api\u004bey":"K\u005f1","a":1}"#;
        assert_eq!(key(body).unwrap(), "K_1");
        assert_eq!(strip(body).unwrap(), r#"{"a":1}"#);
        assert!(may_hold(body.as_bytes(), "apiKey"));
        assert!(!may_hold(br#"{"apikey":"K"}"#, "apiKey"));
        assert!(!may_hold(br#"{"apiKeys":"xapiKey"}"#, "apiKey"));
        assert!(may_hold(br#"{"apiKeys":1,"apiKey":2}"#, "apiKey"));
        assert!(may_hold(br#""apiKey""#, "apiKey"));
        // A value that is no string is not a key (the member still goes).
        assert_eq!(key(r#"{"apiKey":["K"]}"#), None);
        assert_eq!(
            strip(r#"{"apiKey":{"k":"}"},"a":1}"#).unwrap(),
            r#"{"a":1}"#
        );
    }

    #[test]
    fn bodies_a_parser_refuses_for_their_insides_still_hold_a_key() {
        let deep = format!(
            r#"{{"d":{}{},"apiKey":"K"}}"#,
            "[".repeat(200_000),
            "]".repeat(200_000)
        );
        assert_eq!(key(&deep).unwrap(), "K");
        assert_eq!(key(r#"{"s":"\ud800","apiKey":"K"}"#).unwrap(), "K");
        assert_eq!(key("\u{feff}{\"apiKey\":\"K\"}").unwrap(), "K");
        assert_eq!(strip("\u{feff}{\"apiKey\":\"K\"}").unwrap(), "\u{feff}{}");
    }

    #[test]
    fn what_is_not_an_object_is_not_scanned() {
        for bad in [
            "",
            "[1]",
            "\"apiKey\"",
            "{",
            r#"{"apiKey":"K""#,
            r#"{"apiKey":"K",}"#,
            r#"{"apiKey" "K"}"#,
            r#"{"apiKey":}"#,
            r#"{"apiKey":"K"} x"#,
            r#"{"apiKey":"K"}{}"#,
            r#"{"a":[1}],"apiKey":"K"}"#,
            r#"{"a":{"b":1},"apiKey":"K\"}"#,
            r#"{apiKey:"K"}"#,
            "not json",
        ] {
            assert!(scan(bad.as_bytes(), "apiKey").is_none(), "{bad}");
        }
        assert_eq!(strip("{}").unwrap(), "{}");
        assert_eq!(strip(" {\n} ").unwrap(), " {\n} ");
    }
}

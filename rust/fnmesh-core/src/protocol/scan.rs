//! Checking a large frame and finding its payload without parsing or copying the payload
//! (docs/architecture.md, "Large frames").
//!
//! [`scan_frame`] checks that a frame is one JSON object (RFC 8259: strings, numbers, literals,
//! arrays and objects, nested to any depth as serde_json's `RawValue` allows) and returns where
//! the values of its top-level `data` and `result` keys lie. The decoder then reads the envelope
//! with those two values blanked out, and the engine forwards the payload as a slice of the frame
//! it arrived in.
//!
//! The scan is never more lenient than serde_json: it accepts a frame only if serde_json reads it
//! as an object whose values are well-formed JSON (the tests compare both on generated input).
//! Anything it does not handle on its own terms (an escaped top-level key, say) makes it give up,
//! and the decoder takes the ordinary path, which also words the error of a malformed frame.

use std::ops::Range;

/// Where a frame's payloads lie: the byte ranges of the last top-level `data` and `result`
/// values (the last one wins, as in the decoder).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Spans {
    /// The value of `data`.
    pub data: Option<Range<usize>>,
    /// The value of `result`.
    pub result: Option<Range<usize>>,
}

/// Checks `frame` and returns where its payloads lie; `None` when it is not a well-formed JSON
/// object or has a top-level key written with escapes (the ordinary decoder then decides).
pub fn scan_frame(frame: &str) -> Option<Spans> {
    let mut scan = Scanner {
        b: frame.as_bytes(),
        at: 0,
    };
    scan.skip_ws();
    scan.eat(b'{')?;
    let mut spans = Spans::default();
    scan.skip_ws();
    if scan.peek() == Some(b'}') {
        scan.at += 1;
    } else {
        loop {
            scan.skip_ws();
            let key = scan.member_key()?;
            let key = &scan.b[key.start + 1..key.end - 1];
            if key.contains(&b'\\') {
                return None;
            }
            scan.skip_ws();
            let value = scan.value()?;
            match key {
                b"data" => spans.data = Some(value),
                b"result" => spans.result = Some(value),
                _ => {}
            }
            scan.skip_ws();
            match scan.next()? {
                b',' => continue,
                b'}' => break,
                _ => return None,
            }
        }
    }
    scan.skip_ws();
    (scan.at == scan.b.len()).then_some(spans)
}

struct Scanner<'a> {
    b: &'a [u8],
    at: usize,
}

impl Scanner<'_> {
    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }

    #[inline(always)]
    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.at += 1;
        Some(c)
    }

    #[inline(always)]
    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    #[inline(always)]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// One value of any kind, nested values included; returns its byte range. Arrays and
    /// objects are walked with an explicit stack, so depth costs memory (one byte a level), not
    /// the thread's stack.
    fn value(&mut self) -> Option<Range<usize>> {
        let start = self.at;
        // `true` for an object, `false` for an array, one per open container.
        let mut open: Vec<bool> = Vec::new();
        loop {
            // A value.
            self.skip_ws();
            match self.peek()? {
                b'{' => {
                    self.at += 1;
                    self.skip_ws();
                    if self.peek() == Some(b'}') {
                        self.at += 1;
                    } else {
                        open.push(true);
                        self.member_key()?;
                        continue;
                    }
                }
                b'[' => {
                    self.at += 1;
                    self.skip_ws();
                    if self.peek() == Some(b']') {
                        self.at += 1;
                    } else {
                        open.push(false);
                        continue;
                    }
                }
                b'"' => {
                    self.string()?;
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return None,
            }
            // After a value: close containers, or go on to the next element.
            loop {
                let Some(&object) = open.last() else {
                    return Some(start..self.at);
                };
                self.skip_ws();
                match (self.next()?, object) {
                    (b',', true) => {
                        self.skip_ws();
                        self.member_key()?;
                        break;
                    }
                    (b',', false) => break,
                    (b'}', true) | (b']', false) => {
                        open.pop();
                    }
                    _ => return None,
                }
            }
        }
    }

    /// `"key" :` inside an object, up to its value; returns the key's range, quotes included.
    #[inline(always)]
    fn member_key(&mut self) -> Option<Range<usize>> {
        let key = self.string()?;
        self.skip_ws();
        self.eat(b':')?;
        Some(key)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.b.get(self.at..end)? == word).then(|| self.at = end)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    #[inline(always)]
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.one_or_more_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.one_or_more_digits()?;
        }
        Some(())
    }

    #[inline(always)]
    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
    }

    fn one_or_more_digits(&mut self) -> Option<()> {
        let from = self.at;
        self.digits();
        (self.at > from).then_some(())
    }

    /// A string, quotes included; returns its byte range.
    #[inline(always)]
    fn string(&mut self) -> Option<Range<usize>> {
        let start = self.at;
        self.eat(b'"')?;
        loop {
            self.at += plain_run(&self.b[self.at..]);
            match self.next()? {
                b'"' => return Some(start..self.at),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        let hex = self.b.get(self.at..self.at + 4)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        self.at += 4;
                    }
                    _ => return None,
                },
                // A control character: not allowed unescaped.
                _ => return None,
            }
        }
    }
}

/// How many bytes at the start of `b` need no attention inside a string: not `"`, not `\`, not
/// a control character.
// NOTE: the first 16 bytes one by one through a table (keys and ids end there), then 64 bytes at
// a time with a fold the compiler vectorises. serde_json's own scan (`skip_to_escape`, 8 bytes
// at a time) was 18.8% of the engine's CPU samples in E8 (`perf record`). On a 1 MiB string this
// scan runs at memory speed: `fnmesh-microbench codec --payload string --bytes 1048576` splits
// the frame in 74 µs where `decode_text` takes 224 µs. The scanner's small steps are forced
// inline: without it, on many small records (`--payload object`), the split was 1.08-1.11x the
// whole decode instead of 0.81-0.86x.
#[inline(always)]
fn plain_run(b: &[u8]) -> usize {
    let special = |c: u8| (c == b'"') | (c == b'\\') | (c < 0x20);
    // Keys, ids and short values end within a few bytes: those are looked at one by one first,
    // through a table.
    let head = b.len().min(SHORT_STRING_BYTES);
    if let Some(end) = b[..head].iter().position(|&c| SPECIAL[usize::from(c)]) {
        return end;
    }
    let mut at = head;
    for block in b[head..].chunks_exact(64) {
        if block.iter().fold(false, |seen, &c| seen | special(c)) {
            break;
        }
        at += 64;
    }
    at + b[at..]
        .iter()
        .position(|&c| special(c))
        .unwrap_or(b.len() - at)
}

/// Bytes of a string looked at one by one before the blocks start.
const SHORT_STRING_BYTES: usize = 16;

/// The bytes that end a plain run in a string: `"`, `\` and the control characters.
static SPECIAL: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        table[c] = true;
        c += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    fn spans_of(frame: &str) -> Option<(Option<&str>, Option<&str>)> {
        scan_frame(frame).map(|s| (s.data.map(|r| &frame[r]), s.result.map(|r| &frame[r])))
    }

    #[test]
    fn finds_the_payloads_of_an_envelope() {
        let f = r#"{"type":"invokefunction","function_id":"a","data":{"x":[1,2,{"y":"}"}]}}"#;
        assert_eq!(spans_of(f), Some((Some(r#"{"x":[1,2,{"y":"}"}]}"#), None)));
        let f = r#" { "result" : "a\"b" , "data" : -1.5e+3 } "#;
        assert_eq!(spans_of(f), Some((Some("-1.5e+3"), Some(r#""a\"b""#))));
        // The last of a repeated key wins.
        assert_eq!(
            spans_of(r#"{"data":1,"data":[true,false,null]}"#),
            Some((Some("[true,false,null]"), None))
        );
        assert_eq!(spans_of("{}"), Some((None, None)));
        // A nested `data` is not the payload.
        assert_eq!(spans_of(r#"{"x":{"data":1}}"#), Some((None, None)));
    }

    #[test]
    fn refuses_what_is_not_a_well_formed_object() {
        for bad in [
            "",
            "[]",
            "\"data\"",
            "{",
            "{\"data\":}",
            "{\"data\":1,}",
            "{\"data\":1}}",
            "{\"data\":01}",
            "{\"data\":1.}",
            "{\"data\":1e}",
            "{\"data\":-}",
            "{\"data\":tru}",
            "{\"data\":\"\\x\"}",
            "{\"data\":\"\\u12G4\"}",
            "{\"data\":\"a\nb\"}",
            "{\"data\":[1 2]}",
            "{\"data\":{\"a\" 1}}",
            "{\"data\":{1:2}}",
            "{\"data\":[1,]}",
            "{\"data\":\"open}",
            "{\"data\":1} x",
        ] {
            assert_eq!(scan_frame(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn gives_up_on_an_escaped_top_level_key() {
        assert_eq!(scan_frame(r#"{"d\u0061ta":1}"#), None);
    }

    #[test]
    fn long_strings_are_scanned_block_by_block() {
        for len in [0, 1, 63, 64, 65, 127, 128, 1000] {
            let s = "x".repeat(len);
            assert_eq!(plain_run(s.as_bytes()), len);
            for special in ["\"", "\\", "\u{1}"] {
                for at in [0, len / 2, len] {
                    let mut t = s.clone();
                    t.insert_str(at, special);
                    assert_eq!(plain_run(t.as_bytes()), at, "{len} {at} {special:?}");
                }
            }
        }
    }

    /// A small deterministic generator (no dependency needed for a test).
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    fn value(rng: &mut Rng, depth: usize, out: &mut String) {
        let kind = if depth > 4 {
            rng.below(4)
        } else {
            rng.below(6)
        };
        match kind {
            0 => out.push_str(rng.pick(&["0", "-1", "12.5", "1e9", "-0.0E-2", "3"])),
            1 => out.push_str(rng.pick(&["true", "false", "null"])),
            2 | 3 => {
                out.push('"');
                for _ in 0..rng.below(6) {
                    out.push_str(
                        rng.pick(&["a", "é", "\\n", "\\\"", "\\u00e9", "\\ud800", " ", "}", "x"]),
                    );
                }
                out.push('"');
            }
            4 => {
                out.push('[');
                for i in 0..rng.below(4) {
                    if i > 0 {
                        out.push(',');
                    }
                    value(rng, depth + 1, out);
                }
                out.push(']');
            }
            _ => object(rng, depth + 1, out),
        }
    }

    fn object(rng: &mut Rng, depth: usize, out: &mut String) {
        out.push('{');
        for i in 0..rng.below(4) {
            if i > 0 {
                out.push_str(rng.pick(&[",", " , "]));
            }
            out.push_str(rng.pick(&["\"data\"", "\"result\"", "\"type\"", "\"k\""]));
            out.push(':');
            value(rng, depth, out);
        }
        out.push('}');
    }

    /// Whatever the scan accepts, serde_json reads as an object of well-formed values, with the
    /// same payloads; and on the well-formed input it is given, the scan accepts what serde does.
    #[test]
    fn agrees_with_serde_json_on_generated_frames() {
        use serde_json::value::RawValue;
        use std::collections::BTreeMap;
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let noise = [
            "\"", "\\", "{", "}", "[", "]", ",", ":", "0", "-", "e", ".", "+", "t", "n", " ", "\n",
            "\u{1}", "u", "1",
        ];
        let (mut accepted, mut mutated_accepted) = (0, 0);
        for round in 0..40_000 {
            let mut frame = String::new();
            object(&mut rng, 0, &mut frame);
            let mutated = round % 2 == 1;
            if mutated {
                for _ in 0..1 + rng.below(2) {
                    let chars: Vec<(usize, char)> = frame.char_indices().collect();
                    let (at, ch) = chars[rng.below(chars.len())];
                    match rng.below(3) {
                        0 => frame.replace_range(at..at + ch.len_utf8(), ""),
                        1 => frame.insert_str(at, rng.pick(&noise)),
                        _ => frame.replace_range(at..at + ch.len_utf8(), rng.pick(&noise)),
                    }
                }
            }
            let serde = serde_json::from_str::<BTreeMap<String, Box<RawValue>>>(&frame);
            match scan_frame(&frame) {
                Some(spans) => {
                    let map = serde.unwrap_or_else(|e| panic!("scan accepted {frame:?}: {e}"));
                    let text = |r: Option<Range<usize>>| r.map(|r| frame[r].to_owned());
                    let raw = |k: &str| map.get(k).map(|v| v.get().to_owned());
                    assert_eq!(text(spans.data), raw("data"), "{frame:?}");
                    assert_eq!(text(spans.result), raw("result"), "{frame:?}");
                    accepted += 1;
                    mutated_accepted += usize::from(mutated);
                }
                None if !mutated => {
                    panic!("scan refused a well-formed frame {frame:?} ({serde:?})")
                }
                None => {}
            }
        }
        // Both kinds of input were exercised.
        assert!(
            accepted > 20_000 && mutated_accepted > 500,
            "{accepted} {mutated_accepted}"
        );
    }
}

//! Input generation shared by the targets: the corpus on disk, random JSON text (escapes, huge
//! numbers, deep nesting, duplicated keys, invalid UTF-8), mutations of corpus entries, and the
//! chunk format that packs a structured input (headers, query, body...) into one byte string.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::runner::Rng;

/// `tests/fixtures` at the repository root.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The files of `dir` (relative to [`fixtures`]) ending in `ext`, sorted by name, as
/// `(name, bytes)`; empty when the folder does not exist.
pub fn files(dir: &str, ext: &str) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = fs::read_dir(fixtures().join(dir)) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .filter_map(|p| {
            let name = p.file_name()?.to_string_lossy().into_owned();
            Some((name, fs::read(&p).ok()?))
        })
        .collect();
    out.sort();
    out
}

/// Seed frames: the golden wire vectors and `fuzz/frames/`.
pub fn frame_corpus() -> &'static [Vec<u8>] {
    static CORPUS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        ["wire/sdk", "wire/engine", "fuzz/frames"]
            .iter()
            .flat_map(|dir| files(dir, "json"))
            .map(|(_, bytes)| bytes)
            .collect()
    })
}

/// Seed function results and middleware verdicts: `fuzz/http-results/`.
pub fn result_corpus() -> &'static [Vec<u8>] {
    static CORPUS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        files("fuzz/http-results", "json")
            .into_iter()
            .map(|(_, bytes)| bytes)
            .collect()
    })
}

/// Seed routes, `METHOD template` per line: `fuzz/routes.txt`.
pub fn route_corpus() -> &'static [(String, String)] {
    static CORPUS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let text = fs::read_to_string(fixtures().join("fuzz/routes.txt")).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (method, template) = l.split_once(' ').unwrap_or((l, ""));
                (method.to_owned(), template.to_owned())
            })
            .collect()
    })
}

/// Field names of the protocol, so generated frames hit the decoder's known keys.
pub const FIELDS: &[&str] = &[
    "type",
    "id",
    "function_id",
    "invocation_id",
    "data",
    "result",
    "error",
    "traceparent",
    "baggage",
    "action",
    "metadata",
    "namespace",
    "description",
    "request_format",
    "response_format",
    "invocation",
    "trigger_request_format",
    "call_request_format",
    "trigger_type",
    "config",
    "trigger_namespace",
    "name",
    "parent_service_id",
    "previous_worker_id",
    "reattach_token",
    "worker_id",
    "code",
    "worker_name",
    "owner_worker_id",
];

/// Message types, known and not.
pub const KINDS: &[&str] = &[
    "registerfunction",
    "unregisterfunction",
    "invokefunction",
    "invocationresult",
    "registertriggertype",
    "unregistertriggertype",
    "registertrigger",
    "unregistertrigger",
    "triggerregistrationresult",
    "registerservice",
    "reattach",
    "workerregistered",
    "registrationrejected",
    "ping",
    "pong",
    "error",
    "observe",
    "Ping",
    "",
];

const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "42",
    "1.5",
    "-0.0",
    "1e3",
    "1E+2",
    "2.5e-3",
    "99",
    "100",
    "200",
    "404",
    "599",
    "600",
    "65536",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "123456789012345678901234567890",
    "1e999",
    "-1e999",
    "0.1e-400",
    "200.0",
];

/// The first `STRICT_PIECES` of [`STRING_PIECES`] are valid in any JSON string (the last two
/// are lone surrogates).
const STRICT_PIECES: usize = STRING_PIECES.len() - 2;

const STRING_PIECES: &[&str] = &[
    "a",
    "id",
    "x-y",
    " ",
    "é",
    "€",
    "😀",
    "\\\"",
    "\\\\",
    "\\/",
    "\\b\\f\\n\\r\\t",
    "\\u0000",
    "\\u00e9",
    "\\ud83d\\ude00",
    "\\r\\n",
    ":",
    "/",
    "%",
    "%2F",
    "application/json",
    "content-type",
    "null",
    "\\ud800",
    "\\udc00x",
];

/// Appends a JSON string literal; unless `strict`, sometimes not a valid one (invalid UTF-8, a
/// raw control character, a dangling escape, a lone surrogate).
pub fn json_string(rng: &mut Rng, strict: bool, out: &mut Vec<u8>) {
    out.push(b'"');
    for _ in 0..rng.below(6) {
        let choice = if strict {
            4 + rng.below(16)
        } else {
            rng.below(20)
        };
        match choice {
            0 => out.push(0xff),            // invalid UTF-8
            1 => out.push(0xc3),            // a truncated sequence
            2 => out.push(rng.byte() % 32), // a raw control character
            3 => out.push(b'\\'),           // a dangling escape
            4..=6 => {
                let field = *rng.pick(FIELDS);
                out.extend_from_slice(field.as_bytes());
            }
            _ if strict => {
                out.extend_from_slice(rng.pick(&STRING_PIECES[..STRICT_PIECES]).as_bytes())
            }
            _ => out.extend_from_slice(rng.pick(STRING_PIECES).as_bytes()),
        }
    }
    out.push(b'"');
}

/// Appends a JSON number, mostly an interesting one.
pub fn json_number(rng: &mut Rng, out: &mut Vec<u8>) {
    if rng.one_in(3) {
        let n = rng.next_u64() >> rng.below(64);
        out.extend_from_slice(n.to_string().as_bytes());
    } else {
        out.extend_from_slice(rng.pick(NUMBERS).as_bytes());
    }
}

/// Appends a JSON value of at most `depth` levels; now and then a deeply nested or (unless
/// `strict`) a broken one.
pub fn json_value(rng: &mut Rng, strict: bool, depth: usize, out: &mut Vec<u8>) {
    let choice = if depth == 0 {
        rng.below(5)
    } else {
        rng.below(9)
    };
    match choice {
        0 => out.extend_from_slice(rng.pick(&["null", "true", "false"]).as_bytes()),
        1 | 2 => json_number(rng, out),
        3 | 4 => json_string(rng, strict, out),
        5 | 6 => {
            out.push(b'[');
            for i in 0..rng.below(4) {
                if i > 0 {
                    out.push(b',');
                }
                json_value(rng, strict, depth - 1, out);
            }
            out.push(b']');
        }
        7 => json_object(rng, strict, depth - 1, out),
        _ => wild_value(rng, strict, out),
    }
}

/// Appends an object with random keys (protocol names included, duplicates possible).
pub fn json_object(rng: &mut Rng, strict: bool, depth: usize, out: &mut Vec<u8>) {
    out.push(b'{');
    for i in 0..rng.below(5) {
        if i > 0 {
            out.push(b',');
        }
        if rng.one_in(2) {
            out.push(b'"');
            out.extend_from_slice(rng.pick(FIELDS).as_bytes());
            out.push(b'"');
        } else {
            json_string(rng, strict, out);
        }
        out.push(b':');
        json_value(rng, strict, depth, out);
    }
    out.push(b'}');
}

/// Deep nesting (past serde_json's limit of 128, sometimes), long strings, many keys, or
/// (unless `strict`) malformed text.
fn wild_value(rng: &mut Rng, strict: bool, out: &mut Vec<u8>) {
    let choice = match rng.below(6) {
        3 if strict => 4,
        n => n,
    };
    match choice {
        0 => {
            let depth = 1 + rng.below(300);
            let (open, close) = if rng.one_in(2) {
                ("[", "]")
            } else {
                ("{\"a\":", "}")
            };
            out.extend_from_slice(open.repeat(depth).as_bytes());
            out.push(b'1');
            out.extend_from_slice(close.repeat(depth).as_bytes());
        }
        1 => {
            out.push(b'"');
            out.extend(std::iter::repeat_n(b'x', rng.below(20_000)));
            out.push(b'"');
        }
        2 => {
            out.push(b'{');
            for i in 0..rng.below(2_000) {
                if i > 0 {
                    out.push(b',');
                }
                // Unique keys, plus some repeats.
                let key = if rng.one_in(4) { i / 2 } else { i };
                out.extend_from_slice(format!("\"k{key}\":{i}").as_bytes());
            }
            out.push(b'}');
        }
        3 => out.extend_from_slice(
            rng.pick(&["[1,]", "{\"a\"}", "tru", "\"", "nul", "{,}", "01"])
                .as_bytes(),
        ),
        4 => {
            // Whitespace of every JSON kind around a value.
            out.extend_from_slice(b" \t\r\n");
            json_number(rng, out);
            out.extend_from_slice(b"\n ");
        }
        _ => out.extend_from_slice(b"{}"),
    }
}

/// Returns `input` with one to four random edits: byte flips, inserted tokens, deleted or
/// duplicated ranges, an inserted `"key":value` pair, a splice with another corpus entry.
pub fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut data = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        let at = rng.below(len + 1);
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 => {
                const TOKENS: &[&[u8]] = &[
                    b"\"", b"{", b"}", b"[", b"]", b",", b":", b"null", b"\\u0000", b"1e999",
                    b"\xff", b" ",
                ];
                let token = *rng.pick(TOKENS);
                data.splice(at..at, token.iter().copied());
            }
            2 if len > 0 => {
                let end = (at + 1 + rng.below(16)).min(len);
                data.drain(at.min(end)..end);
            }
            3 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(64)).min(len);
                let piece = data[start..end].to_vec();
                data.splice(at..at, piece);
            }
            4 => {
                // A pair after an opening brace, so it lands in some object.
                let braces: Vec<usize> = (0..len).filter(|&i| data[i] == b'{').collect();
                if let Some(&brace) = braces.get(rng.below(braces.len())) {
                    let mut pair = Vec::new();
                    if rng.one_in(2) {
                        pair.push(b'"');
                        pair.extend_from_slice(rng.pick(FIELDS).as_bytes());
                        pair.push(b'"');
                    } else {
                        json_string(rng, false, &mut pair);
                    }
                    pair.push(b':');
                    let strict = rng.one_in(2);
                    json_value(rng, strict, 2, &mut pair);
                    if data.get(brace + 1) != Some(&b'}') {
                        pair.push(b',');
                    }
                    data.splice(brace + 1..brace + 1, pair);
                }
            }
            5 if !corpus.is_empty() => {
                let other = rng.pick(corpus);
                let cut = rng.below(other.len() + 1);
                data.truncate(at);
                data.extend_from_slice(&other[cut..]);
            }
            6 => data.truncate(at),
            _ => {
                let i = rng.below(len.max(1));
                data.insert(i.min(len), rng.byte());
            }
        }
    }
    data
}

/// Random bytes, up to `max` of them.
pub fn random_bytes(rng: &mut Rng, max: usize) -> Vec<u8> {
    (0..rng.below(max + 1)).map(|_| rng.byte()).collect()
}

/// Appends one chunk: a little-endian `u16` length, then the bytes (cut at 65,535).
pub fn put_chunk(out: &mut Vec<u8>, chunk: &[u8]) {
    let len = chunk.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&chunk[..len]);
}

/// Reads back what [`put_chunk`] wrote; any byte string reads as some sequence of chunks (a
/// short length prefix or body just ends early), so random bytes are valid inputs too.
pub struct Chunks<'a>(&'a [u8]);

impl<'a> Chunks<'a> {
    pub fn new(data: &'a [u8]) -> Chunks<'a> {
        Chunks(data)
    }

    pub fn bytes(&mut self) -> &'a [u8] {
        let (len, rest) = match self.0 {
            [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
            [_] | [] => (0, &[][..]),
        };
        let (chunk, rest) = rest.split_at(len.min(rest.len()));
        self.0 = rest;
        chunk
    }

    /// A chunk as text, invalid UTF-8 replaced.
    pub fn text(&mut self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
    }

    /// A chunk's first byte (0 when empty): counts and flags.
    pub fn small(&mut self) -> u8 {
        self.bytes().first().copied().unwrap_or(0)
    }
}

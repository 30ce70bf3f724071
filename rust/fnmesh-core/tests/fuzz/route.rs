//! Target `route`: the route parser and router (`RoutePattern::parse`, `Router` insert, find and
//! remove, and the percent-decoding of path parameters).
//!
//! Properties, for any methods, templates and paths: nothing panics; a parsed pattern parses
//! again to itself; a route matches a concrete path built from its template (alone in a router:
//! that route, with the parameter values put in; among others: some route of the same shape);
//! every match agrees with the path (static segments equal, parameters the percent-decoded
//! segments); insert, replace, conflict and remove agree with a simple model of the table, and
//! removing every route empties it.
//!
//! An input is a byte string of chunks (see `gen::Chunks`): routes (method, template, flags,
//! parameter values), then probe paths (method, path).

use fnmesh_core::http::route::{RouteMatch, RoutePattern, Router};

use super::gen::{mutate, put_chunk, random_bytes, route_corpus, Chunks};
use super::runner::{ensure, Finding, Rng, Target};

pub const TARGET: Target = Target {
    name: "route",
    generate,
    check,
};

const METHODS: &[&str] = &[
    "GET", "get", "POST", "Put", "DELETE", "patch", "HEAD", "OPTIONS", "FETCH", "G\u{c9}T", "",
];

const SEGMENTS: &[&str] = &[
    "users",
    "me",
    ":id",
    ":uid",
    ":x_1",
    ":",
    ":\u{e9}",
    ":a-b",
    "",
    "%20",
    "%2F",
    "a:b",
    "*",
    "{id}",
    "caf\u{e9}",
    ".",
    "..",
    "a b",
    "?q=1",
    "#f",
    "%",
];

fn generate(rng: &mut Rng) -> Vec<u8> {
    if rng.one_in(10) {
        return random_bytes(rng, 256);
    }
    let mut out = Vec::new();
    let routes = 1 + rng.below(6);
    put_chunk(&mut out, &[routes as u8]);
    for _ in 0..routes {
        // An empty method chunk means "no method" (GET).
        let method = if rng.one_in(5) { "" } else { rng.pick(METHODS) };
        put_chunk(&mut out, method.as_bytes());
        put_chunk(&mut out, template(rng).as_bytes());
        put_chunk(&mut out, &[rng.byte()]);
        for _ in 0..4 {
            let value: Vec<u8> = match rng.below(3) {
                0 => random_bytes(rng, 8),
                1 => rng.pick(SEGMENTS).as_bytes().to_vec(),
                _ => b"42".to_vec(),
            };
            put_chunk(&mut out, &value);
        }
    }
    let probes = rng.below(6);
    put_chunk(&mut out, &[probes as u8]);
    for _ in 0..probes {
        put_chunk(&mut out, rng.pick(METHODS).as_bytes());
        let mut path = template(rng).replace(':', "");
        if rng.one_in(3) {
            path = String::from_utf8_lossy(&mutate(rng, path.as_bytes(), &[])).into_owned();
        }
        put_chunk(&mut out, path.as_bytes());
    }
    out
}

/// A template: a seed route (mutated or not), segments put together, or now and then a very
/// long one (the trie has a level per segment).
fn template(rng: &mut Rng) -> String {
    if rng.one_in(200) {
        let segment = *rng.pick(&["a", ":p"]);
        let count = [255, 256, 257, 1_000, 100_000][rng.below(5)];
        return format!("{segment}/").repeat(count);
    }
    let corpus = route_corpus();
    if !corpus.is_empty() && rng.one_in(2) {
        let seed = &rng.pick(corpus).1;
        if rng.one_in(2) {
            return seed.clone();
        }
        return String::from_utf8_lossy(&mutate(rng, seed.as_bytes(), &[])).into_owned();
    }
    let segments: Vec<&str> = (0..rng.below(5)).map(|_| *rng.pick(SEGMENTS)).collect();
    let mut t = segments.join("/");
    if rng.one_in(2) {
        t.insert(0, '/');
    }
    if rng.one_in(4) {
        t.push('/');
    }
    t
}

/// One route of the model: what the router should hold.
struct Entry {
    method: String,
    template: String,
    owner: String,
    value: usize,
}

fn check(input: &[u8]) -> Result<bool, Finding> {
    let mut chunks = Chunks::new(input);
    let mut router: Router<usize> = Router::new();
    let mut model: Vec<Entry> = Vec::new();
    let mut parsed = false;
    for i in 0..usize::from(chunks.small() % 9) {
        let method = chunks.text();
        let template = chunks.text();
        let flags = chunks.small();
        let values: Vec<String> = (0..4).map(|_| chunks.text()).collect();
        let method = (!method.is_empty()).then_some(method.as_str());
        let Ok(pattern) = RoutePattern::parse(method, &template) else {
            continue;
        };
        parsed = true;
        reparses(&pattern)?;
        let path = concrete_path(pattern.template(), &values, flags);

        // Alone in a router: exactly this route, with the values put in.
        let mut alone = Router::new();
        ensure(
            matches!(alone.insert(pattern.clone(), "o", 7), Ok(None)),
            || format!("insert into an empty router failed: {pattern}"),
        )?;
        let hit = alone.find(pattern.method(), &path).ok_or_else(|| {
            Finding::Property(format!(
                "route {pattern} does not match its own path {path:?}"
            ))
        })?;
        agrees(&hit, &path)?;
        ensure(hit.template == pattern.template(), || {
            format!("route {pattern} matched {path:?} as {}", hit.template)
        })?;

        // Among the others: replace, conflict or add, as the model says.
        let owner = format!("o{i}");
        let same_key = model
            .iter()
            .position(|e| e.method == pattern.method() && e.template == pattern.template());
        let same_shape = model.iter().any(|e| {
            e.method == pattern.method() && shape(&e.template) == shape(pattern.template())
        });
        match (router.insert(pattern.clone(), &owner, i), same_key) {
            (Ok(None), None) => {
                ensure(!same_shape, || {
                    format!("{pattern} added beside a route of the same shape")
                })?;
                model.push(Entry {
                    method: pattern.method().to_owned(),
                    template: pattern.template().to_owned(),
                    owner,
                    value: i,
                });
            }
            (Ok(Some((previous, value))), Some(at)) => {
                let entry = &mut model[at];
                ensure(previous == entry.owner && value == entry.value, || {
                    format!(
                        "{pattern} replaced ({previous}, {value}), the model has ({}, {})",
                        entry.owner, entry.value
                    )
                })?;
                entry.owner = owner;
                entry.value = i;
            }
            (Err(_), None) => ensure(same_shape, || {
                format!("{pattern} refused as a conflict, but no route has its shape")
            })?,
            (outcome, at) => {
                return Err(Finding::Property(format!(
                    "insert {pattern}: {outcome:?}, the model has the key at {at:?}"
                )))
            }
        }
        let hit = router.find(pattern.method(), &path).ok_or_else(|| {
            Finding::Property(format!(
                "{path:?} matches {pattern} but the router finds nothing"
            ))
        })?;
        agrees(&hit, &path)?;
        ensure(router.len() == model.len(), || {
            format!(
                "router has {} routes, the model {}",
                router.len(),
                model.len()
            )
        })?;
    }
    for _ in 0..chunks.small() % 9 {
        let (method, path) = (chunks.text(), chunks.text());
        if let Some(hit) = router.find(&method, &path) {
            agrees(&hit, &path)?;
        }
    }
    for entry in &model {
        let removed = router.remove(&entry.method, &entry.template, &entry.owner);
        ensure(removed == Some(entry.value), || {
            format!(
                "remove {} {} by {}: {removed:?}",
                entry.method, entry.template, entry.owner
            )
        })?;
    }
    ensure(router.is_empty(), || {
        format!("{} routes left after removing all", router.len())
    })?;
    Ok(parsed)
}

/// A parsed pattern parses again (from its canonical method and template) to itself.
fn reparses(pattern: &RoutePattern) -> Result<(), Finding> {
    let again = RoutePattern::parse(Some(pattern.method()), pattern.template());
    ensure(again.as_ref() == Ok(pattern), || {
        format!("{pattern} parses again as {again:?}")
    })?;
    let t = pattern.template();
    ensure(!t.starts_with('/') && !t.ends_with('/'), || {
        format!("template {t:?} keeps a slash")
    })
}

/// The template's segments with every parameter as `:`.
fn shape(template: &str) -> Vec<&str> {
    segments(template)
        .into_iter()
        .map(|s| if s.starts_with(':') { ":" } else { s })
        .collect()
}

/// Path segments the way the router cuts them: one leading and one trailing `/` dropped.
fn segments(path: &str) -> Vec<&str> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    if trimmed.is_empty() {
        Vec::new()
    } else {
        trimmed.split('/').collect()
    }
}

/// A concrete path for `template`: parameters replaced by the (percent-encoded, non-empty)
/// values; `flags` picks a leading and a trailing `/` and the case of the hex digits.
fn concrete_path(template: &str, values: &[String], flags: u8) -> String {
    let mut values = values.iter().cycle();
    let parts: Vec<String> = segments(template)
        .into_iter()
        .map(|s| {
            if s.starts_with(':') {
                let value = values.next().map_or("v", String::as_str);
                percent_encode(if value.is_empty() { "v" } else { value }, flags & 4 != 0)
            } else {
                s.to_owned()
            }
        })
        .collect();
    let mut path = parts.join("/");
    if flags & 1 != 0 {
        path.insert(0, '/');
    }
    if flags & 2 != 0 {
        path.push('/');
    }
    path
}

fn percent_encode(value: &str, lower: bool) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else if lower {
            out.push_str(&format!("%{b:02x}"));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The reference decoding of a path parameter: `%XX` escapes, malformed ones kept, invalid
/// UTF-8 replaced.
fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = |j: usize| bytes.get(j).and_then(|b| char::from(*b).to_digit(16));
        if let (b'%', Some(hi), Some(lo)) = (bytes[i], hex(i + 1), hex(i + 2)) {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A match agrees with the path: same number of segments, static ones equal, parameters
/// non-empty and percent-decoded, named as in the template.
fn agrees(hit: &RouteMatch<'_, usize>, path: &str) -> Result<(), Finding> {
    let template = segments(hit.template);
    let concrete = segments(path);
    ensure(template.len() == concrete.len(), || {
        format!("{path:?} matched {:?}: segment counts differ", hit.template)
    })?;
    let mut params = hit.params.iter();
    for (t, c) in template.iter().zip(&concrete) {
        match t.strip_prefix(':') {
            Some(name) => {
                let param = params.next();
                ensure(
                    !c.is_empty() && param == Some(&(name.to_owned(), percent_decode(c))),
                    || {
                        format!(
                            "{path:?} matched {:?}: parameter {name} is {param:?}",
                            hit.template
                        )
                    },
                )?;
            }
            None => ensure(t == c, || {
                format!(
                    "{path:?} matched {:?}: segment {t:?} vs {c:?}",
                    hit.template
                )
            })?,
        }
    }
    ensure(params.next().is_none(), || {
        format!(
            "{path:?} matched {:?}: extra parameters {:?}",
            hit.template, hit.params
        )
    })
}

/// The seeds of this target, for the corpus test: each seed route alone, with one probe.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    route_corpus()
        .iter()
        .map(|(method, template)| {
            let mut input = Vec::new();
            put_chunk(&mut input, &[1]);
            put_chunk(&mut input, method.as_bytes());
            put_chunk(&mut input, template.as_bytes());
            put_chunk(&mut input, &[3]);
            for value in ["42", "a b", "%", "caf\u{e9}"] {
                put_chunk(&mut input, value.as_bytes());
            }
            put_chunk(&mut input, &[1]);
            put_chunk(&mut input, method.as_bytes());
            put_chunk(&mut input, template.replace(':', "").as_bytes());
            (format!("{method} {template}"), input)
        })
        .collect()
}

//! The router of the `http` trigger (docs/protocol.md 6.3): `METHOD` + path templates such as
//! `todo/:id`, matched against concrete request paths.
//!
//! Each method has its own segment trie. A node has static children and at most one parameter
//! child; parameter *names* live on the route, not on the trie, so `users/:id/posts` and
//! `users/:uid/comments` share the parameter node while `users/:id` and `users/:uid` (same shape,
//! one terminal node) are refused as a conflict.
//!
//! ```
//! use fnmesh_core::http::route::{RoutePattern, Router};
//!
//! let mut router = Router::new();
//! router.insert(RoutePattern::parse(Some("get"), "/users/:id")?, "trigger-1", "users::get")?;
//! router.insert(RoutePattern::parse(None, "users/me")?, "trigger-2", "users::me")?;
//!
//! let hit = router.find("GET", "/users/42/").expect("matches users/:id");
//! assert_eq!(*hit.value, "users::get");
//! assert_eq!(hit.template, "users/:id");
//! assert_eq!(hit.params, [("id".to_owned(), "42".to_owned())]);
//! assert_eq!(*router.find("GET", "/users/me").unwrap().value, "users::me");
//! assert!(router.find("POST", "/users/42").is_none());
//! # Ok::<(), fnmesh_core::http::route::RouteError>(())
//! ```

use std::collections::HashMap;
use std::fmt;

/// The methods an `http` trigger may name, in their canonical (upper-case) spelling.
const METHODS: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

/// Why a route is refused: its method or path does not parse, or it conflicts with a route
/// already registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The method is not one of GET, POST, PUT, DELETE, PATCH, HEAD, OPTIONS (any case).
    #[error("Unknown HTTP method '{0}' (expected one of {methods})", methods = METHODS.join(", "))]
    UnknownMethod(String),
    /// The path has an empty segment, a bare `:`, a bad or repeated parameter name.
    #[error("Invalid route path '{path}': {problem}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The path has more than [`MAX_SEGMENTS`] segments.
    #[error("Invalid route path '{path}': {count} segments (at most {MAX_SEGMENTS})")]
    TooManySegments {
        /// The start of the path (it may be huge).
        path: String,
        /// How many segments it has.
        count: usize,
    },
    /// The same method and shape is registered with other parameter names.
    #[error("Route '{route}' conflicts with already-registered route '{method} {existing}'")]
    Conflict {
        /// The refused route (`METHOD template`).
        route: String,
        /// Its method.
        method: String,
        /// The template of the route that stays.
        existing: String,
    },
    /// The same method and path is served for another trigger binding, which may not be taken
    /// over (see [`Router::insert_if`]).
    #[error(
        "Route '{route}' is already served by trigger '{owner}' of another worker or of the engine"
    )]
    Taken {
        /// The refused route (`METHOD template`).
        route: String,
        /// The binding that keeps it.
        owner: String,
    },
}

/// The most segments a template may have.
///
/// The trie has one level per segment, and lookup, removal and drop walk it recursively, so a
/// template of 100,000 segments (a 200 KB `api_path`, well under the frame limit) overflowed the
/// stack of the thread serving the next request to it, or of the one removing it, and aborted
/// the engine. Real routes have a handful of segments; a route at the limit is found and removed
/// within a debug build's 2 MiB test thread (`templates_past_the_segment_limit_are_refused`).
pub const MAX_SEGMENTS: usize = 256;

/// Index of `method` (any case) in [`METHODS`].
fn method_index(method: &str) -> Option<usize> {
    METHODS.iter().position(|m| m.eq_ignore_ascii_case(method))
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Static(String),
    Param(String),
}

/// A parsed route: an HTTP method and a path template whose `:name` segments capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    method: usize,
    template: String,
    segments: Vec<Segment>,
}

impl RoutePattern {
    /// Parses a method and a path template.
    ///
    /// `method` is one of GET POST PUT DELETE PATCH HEAD OPTIONS in any case; `None` means GET.
    /// In `path` the leading `/` is optional (`todo/:id` is `/todo/:id`), a trailing `/` is
    /// ignored, an empty path is the root, and a `:name` segment captures a path parameter.
    ///
    /// # Errors
    ///
    /// A message naming the problem: an unknown method, an empty segment (`a//b`), a bare `:`,
    /// a parameter name that is not `[A-Za-z0-9_]+`, the same parameter name twice, or more
    /// than [`MAX_SEGMENTS`] segments.
    pub fn parse(method: Option<&str>, path: &str) -> Result<RoutePattern, RouteError> {
        let method = match method {
            None => 0,
            Some(m) => method_index(m).ok_or_else(|| RouteError::UnknownMethod(m.to_owned()))?,
        };
        let invalid = |problem: String| RouteError::InvalidPath {
            path: path.to_owned(),
            problem,
        };
        let trimmed = path.strip_prefix('/').unwrap_or(path);
        if trimmed.is_empty() {
            return Ok(RoutePattern {
                method,
                template: String::new(),
                segments: Vec::new(),
            });
        }
        // Only one trailing '/' is forgiven: `a//` still has an empty segment.
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        let count = trimmed.split('/').count();
        if count > MAX_SEGMENTS {
            return Err(RouteError::TooManySegments {
                path: excerpt(path),
                count,
            });
        }
        let mut segments = Vec::new();
        for raw in trimmed.split('/') {
            if raw.is_empty() {
                return Err(invalid("empty segment".to_owned()));
            }
            let Some(name) = raw.strip_prefix(':') else {
                segments.push(Segment::Static(raw.to_owned()));
                continue;
            };
            if name.is_empty() {
                return Err(invalid("':' without a parameter name".to_owned()));
            }
            if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(invalid(format!(
                    "parameter name '{name}' must be letters, digits or '_'"
                )));
            }
            if segments
                .iter()
                .any(|s| matches!(s, Segment::Param(p) if p == name))
            {
                return Err(invalid(format!("parameter ':{name}' appears twice")));
            }
            segments.push(Segment::Param(name.to_owned()));
        }
        Ok(RoutePattern {
            method,
            template: trimmed.to_owned(),
            segments,
        })
    }

    /// The method, upper-case.
    pub fn method(&self) -> &str {
        METHODS[self.method]
    }

    /// The normalized template: no leading or trailing `/` (empty for the root).
    pub fn template(&self) -> &str {
        &self.template
    }

    /// The key iii uses for a route: `METHOD:template`.
    pub fn key(&self) -> String {
        format!("{}:{}", self.method(), self.template)
    }

    /// The names of the parameters, in path order.
    fn param_names(&self) -> Vec<String> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Param(name) => Some(name.clone()),
                Segment::Static(_) => None,
            })
            .collect()
    }
}

impl fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method(), self.template)
    }
}

/// The start of a long path, for a message.
fn excerpt(path: &str) -> String {
    const MAX: usize = 60;
    match path.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &path[..cut]),
        None => path.to_owned(),
    }
}

/// The route stored at a trie node.
#[derive(Debug)]
struct Route<T> {
    template: String,
    param_names: Vec<String>,
    owner: String,
    value: T,
}

/// A trie node; one level per path segment.
#[derive(Debug)]
struct Node<T> {
    // Keys come from registered templates, never from requests, so a seeded hasher is not needed
    // against collisions: lookups with attacker-chosen keys cannot degrade the map.
    statics: HashMap<String, Node<T>>,
    param: Option<Box<Node<T>>>,
    route: Option<Route<T>>,
}

impl<T> Node<T> {
    fn new() -> Self {
        Node {
            statics: HashMap::new(),
            param: None,
            route: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.route.is_none() && self.param.is_none() && self.statics.is_empty()
    }

    fn child_mut(&mut self, segment: &Segment) -> &mut Node<T> {
        match segment {
            Segment::Static(s) => self.statics.entry(s.clone()).or_insert_with(Node::new),
            Segment::Param(_) => self.param.get_or_insert_with(|| Box::new(Node::new())),
        }
    }

    /// Depth-first lookup: a static child first, then the parameter child, so a dead end under
    /// the static branch falls back to the parameter one.
    fn lookup<'p>(&self, segments: &[&'p str], captured: &mut Vec<&'p str>) -> Option<&Route<T>> {
        let Some((first, rest)) = segments.split_first() else {
            return self.route.as_ref();
        };
        if let Some(found) = self
            .statics
            .get(*first)
            .and_then(|c| c.lookup(rest, captured))
        {
            return Some(found);
        }
        // A parameter never captures an empty segment (`a//b`).
        let param = self.param.as_ref().filter(|_| !first.is_empty())?;
        captured.push(first);
        let found = param.lookup(rest, captured);
        if found.is_none() {
            captured.pop();
        }
        found
    }

    /// Appends the routes of this node and its descendants.
    fn collect<'a>(&'a self, method: &'static str, into: &mut Vec<RouteEntry<'a, T>>) {
        if let Some(route) = &self.route {
            into.push(RouteEntry {
                method,
                template: &route.template,
                param_names: &route.param_names,
                value: &route.value,
            });
        }
        for child in self.statics.values() {
            child.collect(method, into);
        }
        if let Some(param) = &self.param {
            param.collect(method, into);
        }
    }

    /// Removes the route at `segments` if its template and owner match, pruning the nodes the
    /// removal leaves empty.
    fn remove(&mut self, segments: &[Segment], template: &str, owner: &str) -> Option<T> {
        let Some((first, rest)) = segments.split_first() else {
            let route = self.route.as_ref()?;
            if route.template != template || route.owner != owner {
                return None;
            }
            return self.route.take().map(|r| r.value);
        };
        match first {
            Segment::Static(s) => {
                let child = self.statics.get_mut(s.as_str())?;
                let value = child.remove(rest, template, owner)?;
                if child.is_empty() {
                    self.statics.remove(s.as_str());
                }
                Some(value)
            }
            Segment::Param(_) => {
                let child = self.param.as_deref_mut()?;
                let value = child.remove(rest, template, owner)?;
                if child.is_empty() {
                    self.param = None;
                }
                Some(value)
            }
        }
    }
}

/// A route listed by [`Router::entries`].
#[derive(Debug)]
pub struct RouteEntry<'a, T> {
    /// The method, upper-case.
    pub method: &'static str,
    /// The registered template (no leading `/`).
    pub template: &'a str,
    /// The names of the path parameters, in path order.
    pub param_names: &'a [String],
    /// The value stored with the route.
    pub value: &'a T,
}

/// The routing table of the `http` trigger: one segment trie per method.
#[derive(Debug)]
pub struct Router<T> {
    roots: [Node<T>; METHODS.len()],
    len: usize,
}

/// A route found by [`Router::find`].
#[derive(Debug)]
pub struct RouteMatch<'a, T> {
    /// The value stored with the route.
    pub value: &'a T,
    /// The registered template (no leading `/`), not the concrete path.
    pub template: &'a str,
    /// The trigger binding that owns the route.
    pub owner: &'a str,
    /// `(name, percent-decoded value)` of each path parameter, in path order.
    pub params: Vec<(String, String)>,
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Router {
            roots: std::array::from_fn(|_| Node::new()),
            len: 0,
        }
    }
}

impl<T> Router<T> {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route owned by `owner` (a trigger binding id).
    ///
    /// The same method and identical template as an existing route replace it and return its
    /// `(owner, value)`, whoever owned it.
    ///
    /// # Errors
    ///
    /// The same method and the same shape with other parameter names (`users/:id` then
    /// `users/:uid`) are refused with a message containing "conflicts with already-registered
    /// route"; the existing route is left as it was.
    pub fn insert(
        &mut self,
        pattern: RoutePattern,
        owner: &str,
        value: T,
    ) -> Result<Option<(String, T)>, RouteError> {
        self.insert_if(pattern, owner, value, |_| true)
    }

    /// [`Router::insert`], except that an identical route of another owner is replaced only if
    /// `may_take(its owner)` says so; otherwise [`RouteError::Taken`] and the route stays.
    pub fn insert_if(
        &mut self,
        pattern: RoutePattern,
        owner: &str,
        value: T,
        may_take: impl FnOnce(&str) -> bool,
    ) -> Result<Option<(String, T)>, RouteError> {
        let mut node = &mut self.roots[pattern.method];
        // Nodes created on the way are never left empty: reaching a conflict means the terminal
        // node already held a route, so every node on the path existed before.
        for segment in &pattern.segments {
            node = node.child_mut(segment);
        }
        if let Some(existing) = &mut node.route {
            if existing.template != pattern.template {
                return Err(RouteError::Conflict {
                    route: pattern.to_string(),
                    method: pattern.method().to_owned(),
                    existing: existing.template.clone(),
                });
            }
            if existing.owner != owner && !may_take(&existing.owner) {
                return Err(RouteError::Taken {
                    route: pattern.to_string(),
                    owner: existing.owner.clone(),
                });
            }
            let previous_owner = std::mem::replace(&mut existing.owner, owner.to_owned());
            let previous_value = std::mem::replace(&mut existing.value, value);
            return Ok(Some((previous_owner, previous_value)));
        }
        node.route = Some(Route {
            param_names: pattern.param_names(),
            template: pattern.template,
            owner: owner.to_owned(),
            value,
        });
        self.len += 1;
        Ok(None)
    }

    /// Removes the route `method` + `template` only if `owner` still owns it, so an unregistered
    /// binding that was replaced does not take its replacement with it. Returns the value.
    ///
    /// `template` is normalized like [`RoutePattern::parse`] does and must name the parameters
    /// as registered.
    pub fn remove(&mut self, method: &str, template: &str, owner: &str) -> Option<T> {
        let pattern = RoutePattern::parse(Some(method), template).ok()?;
        let value =
            self.roots[pattern.method].remove(&pattern.segments, &pattern.template, owner)?;
        self.len -= 1;
        Some(value)
    }

    /// Finds the route for a concrete request path.
    ///
    /// The leading `/` is optional, a trailing `/` is ignored and `path` must not include the
    /// query string. Static segments are compared with the raw (still percent-encoded) path; a
    /// static child wins over a parameter child, with backtracking, so `users/me` and
    /// `users/:id/posts` both match what they should. Parameter values are percent-decoded
    /// (invalid UTF-8 is replaced). The method matches in any case; there is no HEAD to GET
    /// fallback.
    pub fn find(&self, method: &str, path: &str) -> Option<RouteMatch<'_, T>> {
        let root = &self.roots[method_index(method)?];
        let trimmed = path.strip_prefix('/').unwrap_or(path);
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        let segments: Vec<&str> = if trimmed.is_empty() {
            Vec::new()
        } else {
            trimmed.split('/').collect()
        };
        let mut captured = Vec::new();
        let route = root.lookup(&segments, &mut captured)?;
        let params = route
            .param_names
            .iter()
            .zip(captured)
            .map(|(name, raw)| (name.clone(), percent_decode(raw)))
            .collect();
        Some(RouteMatch {
            value: &route.value,
            template: &route.template,
            owner: &route.owner,
            params,
        })
    }

    /// Every route: its method, template, parameter names and value, by method (in
    /// [`METHODS`] order) then template.
    pub fn entries(&self) -> Vec<RouteEntry<'_, T>> {
        let mut entries = Vec::with_capacity(self.len);
        for (index, root) in self.roots.iter().enumerate() {
            let start = entries.len();
            root.collect(METHODS[index], &mut entries);
            entries[start..].sort_by(|a, b| a.template.cmp(b.template));
        }
        entries
    }

    /// The number of routes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there is no route.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Decodes `%XX` escapes (a malformed escape is kept as is) into a string, replacing invalid
/// UTF-8. `+` stays `+`: it means a space only in query strings.
pub(crate) fn percent_decode(raw: &str) -> String {
    if !raw.contains('%') {
        return raw.to_owned();
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(hi), Some(lo)) = (hex_value(bytes.get(i + 1)), hex_value(bytes.get(i + 2)))
            {
                out.push((hi << 4) | lo);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn hex_value(byte: Option<&u8>) -> Option<u8> {
    let b = *byte?;
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(method: &str, path: &str) -> RoutePattern {
        RoutePattern::parse(Some(method), path).unwrap()
    }

    fn params<'m>(m: &'m RouteMatch<'_, &str>) -> Vec<(&'m str, &'m str)> {
        m.params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn parse_normalizes_method_and_path() {
        let p = RoutePattern::parse(Some("pAtCh"), "/todo/:id/").unwrap();
        assert_eq!(p.method(), "PATCH");
        assert_eq!(p.template(), "todo/:id");
        assert_eq!(p.key(), "PATCH:todo/:id");
        assert_eq!(p, RoutePattern::parse(Some("PATCH"), "todo/:id").unwrap());

        let default = RoutePattern::parse(None, "health").unwrap();
        assert_eq!(default.key(), "GET:health");
        for method in METHODS {
            assert_eq!(pattern(&method.to_lowercase(), "x").method(), method);
        }
    }

    #[test]
    fn parse_accepts_the_root() {
        for path in ["", "/"] {
            let p = RoutePattern::parse(None, path).unwrap();
            assert_eq!(p.template(), "");
            assert_eq!(p.key(), "GET:");
        }
    }

    #[test]
    fn parse_errors_name_the_problem() {
        let err = |method: Option<&str>, path: &str| {
            RoutePattern::parse(method, path).unwrap_err().to_string()
        };
        assert!(err(Some("FETCH"), "a").contains("Unknown HTTP method 'FETCH'"));
        assert!(err(Some(""), "a").contains("Unknown HTTP method ''"));
        assert!(err(None, "a//b").contains("empty segment"));
        assert!(err(None, "//").contains("empty segment"));
        assert!(err(None, "a//").contains("empty segment"));
        assert!(err(None, "a/:").contains("':' without a parameter name"));
        assert!(err(None, "a/:id-x").contains("parameter name 'id-x'"));
        assert!(err(None, "a/:é").contains("parameter name 'é'"));
        assert!(err(None, "a/:id/b/:id").contains("parameter ':id' appears twice"));
        // A colon past the first character is an ordinary static segment.
        assert_eq!(pattern("GET", "a:b/:x_1").template(), "a:b/:x_1");
    }

    #[test]
    fn identical_template_replaces_and_returns_the_previous_owner() {
        let mut router = Router::new();
        assert!(router
            .insert(pattern("GET", "users/:id"), "t1", "first")
            .unwrap()
            .is_none());
        let previous = router
            .insert(pattern("get", "/users/:id/"), "t2", "second")
            .unwrap();
        assert_eq!(previous, Some(("t1".to_owned(), "first")));
        assert_eq!(router.len(), 1);
        let hit = router.find("GET", "users/1").unwrap();
        assert_eq!((*hit.value, hit.owner), ("second", "t2"));
    }

    #[test]
    fn same_shape_other_param_names_conflict() {
        let mut router = Router::new();
        router
            .insert(pattern("GET", "users/:id"), "t1", "first")
            .unwrap();
        let err = router
            .insert(pattern("GET", "users/:uid"), "t2", "second")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "Route 'GET users/:uid' conflicts with already-registered route 'GET users/:id'"
        );
        let hit = router.find("GET", "users/7").unwrap();
        assert_eq!((*hit.value, hit.owner), ("first", "t1"));
        assert_eq!(params(&hit), [("id", "7")]);
        assert_eq!(router.len(), 1);
        // A different shape under the same parameter position is fine, with its own names.
        router
            .insert(pattern("GET", "users/:uid/posts"), "t3", "posts")
            .unwrap();
        let hit = router.find("GET", "users/7/posts").unwrap();
        assert_eq!(params(&hit), [("uid", "7")]);
        // Another method is another table.
        router
            .insert(pattern("POST", "users/:uid"), "t4", "create")
            .unwrap();
        assert_eq!(router.len(), 3);
    }

    #[test]
    fn remove_requires_the_current_owner() {
        let mut router = Router::new();
        router
            .insert(pattern("GET", "a/:id"), "t1", "first")
            .unwrap();
        router
            .insert(pattern("GET", "a/:id"), "t2", "second")
            .unwrap();
        // The replaced binding unregisters: its replacement stays.
        assert_eq!(router.remove("GET", "a/:id", "t1"), None);
        assert_eq!(router.len(), 1);
        // Same shape, other parameter name: not the registered template.
        assert_eq!(router.remove("GET", "a/:other", "t2"), None);
        assert_eq!(router.remove("POST", "a/:id", "t2"), None);
        assert_eq!(router.remove("GET", "/a/:id/", "t2"), Some("second"));
        assert!(router.is_empty());
        assert!(router.find("GET", "a/1").is_none());
        assert_eq!(router.remove("GET", "a/:id", "t2"), None);
        assert_eq!(router.remove("FETCH", "a/:id", "t2"), None);
    }

    #[test]
    fn static_beats_param_and_backtracks() {
        let mut router = Router::new();
        router
            .insert(pattern("GET", "users/me"), "t1", "me")
            .unwrap();
        router
            .insert(pattern("GET", "users/:id"), "t2", "by_id")
            .unwrap();
        router
            .insert(pattern("GET", "users/:id/posts"), "t3", "posts")
            .unwrap();
        router
            .insert(pattern("GET", "users/me/settings"), "t4", "settings")
            .unwrap();

        assert_eq!(*router.find("GET", "users/me").unwrap().value, "me");
        assert_eq!(*router.find("GET", "users/42").unwrap().value, "by_id");
        assert_eq!(
            *router.find("GET", "users/me/settings").unwrap().value,
            "settings"
        );
        // `users/me` is static but has no `posts` child: back up to `:id`.
        let hit = router.find("GET", "users/me/posts").unwrap();
        assert_eq!((*hit.value, hit.template), ("posts", "users/:id/posts"));
        assert_eq!(params(&hit), [("id", "me")]);
        assert!(router.find("GET", "users/42/settings").is_none());
        assert!(router.find("GET", "users").is_none());
        assert!(router.find("GET", "users/42/posts/9").is_none());
    }

    #[test]
    fn backtracking_drops_abandoned_captures() {
        let mut router = Router::new();
        router
            .insert(pattern("GET", ":a/x/y"), "t1", "deep")
            .unwrap();
        router
            .insert(pattern("GET", ":a/:b/z"), "t2", "other")
            .unwrap();
        let hit = router.find("GET", "1/x/z").unwrap();
        assert_eq!(*hit.value, "other");
        assert_eq!(params(&hit), [("a", "1"), ("b", "x")]);
    }

    #[test]
    fn params_are_percent_decoded() {
        let mut router = Router::new();
        router
            .insert(pattern("GET", "files/:name/:rest"), "t1", "file")
            .unwrap();
        let hit = router.find("GET", "/files/a%20b%2Fc/caf%C3%A9+x").unwrap();
        assert_eq!(params(&hit), [("name", "a b/c"), ("rest", "café+x")]);
        let hit = router.find("GET", "/files/%ff%zz/100%").unwrap();
        assert_eq!(params(&hit), [("name", "\u{fffd}%zz"), ("rest", "100%")]);
    }

    #[test]
    fn root_and_trailing_slash() {
        let mut router = Router::new();
        router.insert(pattern("GET", "/"), "t1", "root").unwrap();
        router
            .insert(pattern("GET", "health/"), "t2", "health")
            .unwrap();
        for path in ["", "/"] {
            assert_eq!(router.find("GET", path).unwrap().template, "");
        }
        for path in ["health", "/health", "/health/", "health/"] {
            assert_eq!(*router.find("GET", path).unwrap().value, "health");
        }
        assert!(router.find("GET", "/health//").is_none());
        assert!(router.find("GET", "//health").is_none());
    }

    #[test]
    fn empty_request_segments_match_nothing() {
        let mut router = Router::new();
        router.insert(pattern("GET", "a/:id/b"), "t1", "x").unwrap();
        assert!(router.find("GET", "a//b").is_none());
        assert!(router.find("GET", "a/1/b").is_some());
    }

    #[test]
    fn methods_are_kept_apart() {
        let mut router = Router::new();
        router
            .insert(pattern("GET", "items"), "t1", "list")
            .unwrap();
        router
            .insert(pattern("POST", "items"), "t2", "create")
            .unwrap();
        assert_eq!(*router.find("get", "items").unwrap().value, "list");
        assert_eq!(*router.find("Post", "items").unwrap().value, "create");
        assert!(router.find("PUT", "items").is_none());
        assert!(router.find("FETCH", "items").is_none());
        // No HEAD -> GET fallback.
        assert!(router.find("HEAD", "items").is_none());
        assert_eq!(router.remove("GET", "items", "t1"), Some("list"));
        assert_eq!(*router.find("POST", "items").unwrap().value, "create");
    }

    #[test]
    fn static_segments_match_the_raw_path() {
        let mut router = Router::new();
        router.insert(pattern("GET", "a b"), "t1", "space").unwrap();
        assert!(router.find("GET", "a b").is_some());
        assert!(router.find("GET", "a%20b").is_none());
    }

    #[test]
    fn insert_remove_cycles_leave_no_nodes() {
        let mut router = Router::new();
        let templates = [
            "a",
            "a/:x",
            "a/:x/b",
            "a/b/:y",
            ":p/:q/:r",
            "",
            "deep/er/and/deeper",
        ];
        for round in 0..200 {
            for (i, template) in templates.iter().enumerate() {
                let method = METHODS[(round + i) % METHODS.len()];
                router
                    .insert(pattern(method, template), &format!("o{round}"), i)
                    .unwrap();
            }
            for (i, template) in templates.iter().enumerate() {
                let method = METHODS[(round + i) % METHODS.len()];
                assert_eq!(
                    router.remove(method, template, &format!("o{round}")),
                    Some(i)
                );
            }
            assert!(router.is_empty());
        }
        assert!(router.roots.iter().all(Node::is_empty));
    }

    /// Found by the fuzz harness (`tests/fuzz`, target `route`): a 100,000-segment template was
    /// accepted, and finding or removing it overflowed the stack and aborted the process.
    #[test]
    fn templates_past_the_segment_limit_are_refused() {
        let at_limit = "a/".repeat(MAX_SEGMENTS);
        let mut router = Router::new();
        router
            .insert(pattern("GET", &at_limit), "t1", "deep")
            .unwrap();
        assert_eq!(*router.find("GET", &at_limit).unwrap().value, "deep");
        assert_eq!(router.remove("GET", &at_limit, "t1"), Some("deep"));

        for segments in [MAX_SEGMENTS + 1, 100_000] {
            let err = RoutePattern::parse(None, &":p/".repeat(segments))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("{segments} segments (at most {MAX_SEGMENTS})")),
                "{err}"
            );
            assert!(err.len() < 200, "the message quotes the whole path: {err}");
        }
        // The root and a trailing slash do not count as segments.
        assert!(RoutePattern::parse(None, &format!("/{at_limit}")).is_ok());
    }

    /// A lookup never goes deeper than the trie, however long the request path.
    #[test]
    fn long_request_paths_stop_at_the_trie_depth() {
        let mut router = Router::new();
        router.insert(pattern("GET", ":a/:b"), "t1", "x").unwrap();
        router.insert(pattern("GET", "a/a/a"), "t2", "y").unwrap();
        let long = "a/".repeat(1_000_000);
        assert!(router.find("GET", &long).is_none());
    }

    #[test]
    fn entries_list_every_route_by_method_then_template() {
        let mut router = Router::new();
        for (method, path) in [
            ("POST", "users"),
            ("GET", "users/:id"),
            ("GET", ""),
            ("GET", "a/b"),
        ] {
            router.insert(pattern(method, path), "b", path).unwrap();
        }
        let listed: Vec<_> = router
            .entries()
            .iter()
            .map(|e| (e.method, e.template, e.param_names.to_vec(), *e.value))
            .collect();
        assert_eq!(
            listed,
            vec![
                ("GET", "", vec![], ""),
                ("GET", "a/b", vec![], "a/b"),
                ("GET", "users/:id", vec!["id".to_owned()], "users/:id"),
                ("POST", "users", vec![], "users"),
            ]
        );
    }

    #[test]
    fn percent_decode_edge_cases() {
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("%41%4a%4A"), "AJJ");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%%41"), "%A");
        assert_eq!(percent_decode("%E2%82"), "\u{fffd}");
    }
}

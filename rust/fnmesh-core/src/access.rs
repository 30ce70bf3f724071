//! Access control of a worker listener (docs/access-control.md, docs/protocol.md 4.11): the
//! settings of a restricted listener ([`AccessConfig`]), its `expose_functions` filters
//! ([`FunctionFilter`]), what an auth function grants one connection ([`Grants`]) and the
//! decision whether that connection may call a function ([`Grants::may_call`]). Plain data and
//! pure functions, no engine: the engine applies them in `engine/access.rs`.
//!
//! The rules are iii's, so that an iii deployment's configuration means the same here:
//! 1. an id in the grants' `forbidden_functions` is denied (everywhere, the carve-out included);
//! 2. an id in `namespaces[ns]` (exact or wildcard) is allowed in `ns`; one in
//!    `allowed_functions` is allowed in the `default` namespace;
//! 3. the infrastructure carve-out ([`INFRASTRUCTURE_FUNCTIONS`]) is allowed;
//! 4. an id any `expose_functions` filter matches is allowed;
//! 5. anything else is denied with `FORBIDDEN`.

use std::collections::HashMap;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::Value;

use crate::registry::DEFAULT_NAMESPACE;

/// Built-ins every connection may call whatever its listener exposes: without them a worker
/// cannot name itself, log or open a data channel. iii's list, unchanged.
pub const INFRASTRUCTURE_FUNCTIONS: &[&str] = &[
    "engine::channels::create",
    "engine::workers::register",
    "engine::log::info",
    "engine::log::warn",
    "engine::log::error",
    "engine::log::debug",
    "engine::log::trace",
    "engine::baggage::get",
    "engine::baggage::set",
    "engine::baggage::get_all",
];

/// How long an auth function, a registration hook or a middleware may take by default; past
/// it the connection is refused, the registration denied, the call failed (fail closed).
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// The access control of one worker listener. `None` on a listener (the default one's
/// default): every connection may call, register and bind anything, as before.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    /// Called once per connection with [`AuthInput`] before the connection is accepted; its
    /// answer is the connection's [`Grants`]. `None`: every connection gets
    /// [`Grants::permissive`] and `expose_functions` alone decides.
    pub auth_function_id: Option<String>,
    /// What connections of this listener may call (any filter matching allows).
    pub expose_functions: Vec<FunctionFilter>,
    /// Asked before each function registration; may rename it or deny it (by failing).
    pub on_function_registration_function_id: Option<String>,
    /// Asked before each trigger binding; may change it or deny it.
    pub on_trigger_registration_function_id: Option<String>,
    /// Asked before each trigger type registration; may change it or deny it.
    pub on_trigger_type_registration_function_id: Option<String>,
    /// Called instead of every allowed call of a non-engine function from this listener, with
    /// the call, the payload and the grants' context; its answer is the call's answer.
    pub middleware_function_id: Option<String>,
    /// Bound on the auth function, each hook and the middleware.
    pub hook_timeout: Duration,
}

impl AccessConfig {
    /// Settings with the default hook timeout and nothing else.
    pub fn new() -> AccessConfig {
        AccessConfig {
            hook_timeout: DEFAULT_HOOK_TIMEOUT,
            ..AccessConfig::default()
        }
    }
}

/// Anchored wildcard match: `*` stands for any run of characters (none included).
pub fn wildcard_matches(pattern: &str, value: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = value.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty(); // no `*`: an exact match
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// `match("glob")` or `match('glob')` → `glob`.
fn unwrap_match(s: &str) -> Option<&str> {
    let t = s.trim();
    let inner = t.strip_prefix("match(")?.strip_suffix(')')?;
    inner
        .strip_prefix('"')
        .and_then(|i| i.strip_suffix('"'))
        .or_else(|| inner.strip_prefix('\'').and_then(|i| i.strip_suffix('\'')))
}

/// One metadata condition of a filter: an exact JSON value, or `match("glob")` on a string.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataMatch {
    /// Equal to this value.
    Exact(Value),
    /// A string matching this wildcard.
    Wildcard(String),
}

impl MetadataMatch {
    fn from_value(value: Value) -> MetadataMatch {
        match value.as_str().and_then(unwrap_match) {
            Some(glob) => MetadataMatch::Wildcard(glob.to_owned()),
            None => MetadataMatch::Exact(value),
        }
    }

    fn matches(&self, value: &Value) -> bool {
        match self {
            MetadataMatch::Exact(expected) => value == expected,
            MetadataMatch::Wildcard(glob) => {
                value.as_str().is_some_and(|s| wildcard_matches(glob, s))
            }
        }
    }
}

/// One `expose_functions` entry: `match("glob")` on the function id, or `{metadata: {...}}`
/// (every key must match), each scoped to one namespace (`default` unless it names one).
#[derive(Debug, Clone, PartialEq)]
pub enum FunctionFilter {
    /// The function id matches this wildcard.
    Id {
        /// The wildcard.
        glob: String,
        /// The namespace the rule applies in (`None`: `default`).
        namespace: Option<String>,
    },
    /// The function's metadata has every one of these keys with a matching value.
    Metadata {
        /// The conditions.
        conditions: HashMap<String, MetadataMatch>,
        /// The namespace the rule applies in (`None`: `default`).
        namespace: Option<String>,
    },
}

impl FunctionFilter {
    /// Parses one entry: a `match("glob")` string, or a map with `match` or `metadata` (and
    /// optionally `namespace`). Unknown keys are refused: a typo must not widen or narrow a
    /// security rule silently.
    pub fn from_value(value: &Value) -> Result<FunctionFilter, String> {
        match value {
            Value::String(s) => unwrap_match(s)
                .map(|glob| FunctionFilter::Id {
                    glob: glob.to_owned(),
                    namespace: None,
                })
                .ok_or_else(|| format!("expose_functions: expected match(\"pattern\"), got {s:?}")),
            Value::Object(map) => {
                let mut glob = None;
                let mut conditions = None;
                let mut namespace = None;
                for (key, v) in map {
                    match key.as_str() {
                        "match" => {
                            let s = v.as_str().ok_or("expose_functions: `match` must be a string")?;
                            glob = Some(unwrap_match(s).unwrap_or(s).to_owned());
                        }
                        "metadata" => {
                            let m = v
                                .as_object()
                                .ok_or("expose_functions: `metadata` must be a map")?;
                            conditions = Some(
                                m.iter()
                                    .map(|(k, v)| (k.clone(), MetadataMatch::from_value(v.clone())))
                                    .collect::<HashMap<_, _>>(),
                            );
                        }
                        "namespace" => {
                            namespace = Some(
                                v.as_str()
                                    .ok_or("expose_functions: `namespace` must be a string")?
                                    .to_owned(),
                            );
                        }
                        other => {
                            return Err(format!(
                                "expose_functions: unknown key {other:?} (expected match, metadata or namespace)"
                            ))
                        }
                    }
                }
                match (glob, conditions) {
                    (Some(glob), None) => Ok(FunctionFilter::Id { glob, namespace }),
                    (None, Some(conditions)) if !conditions.is_empty() => {
                        Ok(FunctionFilter::Metadata {
                            conditions,
                            namespace,
                        })
                    }
                    (Some(_), Some(_)) => {
                        Err("expose_functions: a filter has `match` or `metadata`, not both".into())
                    }
                    _ => Err(
                        "expose_functions: a filter needs `match` or non-empty `metadata`".into(),
                    ),
                }
            }
            other => Err(format!(
                "expose_functions: expected match(\"pattern\") or a map, got {other}"
            )),
        }
    }

    /// Whether this rule exposes `function_id` (with `metadata`) called in `namespace`.
    pub fn matches(&self, function_id: &str, namespace: &str, metadata: Option<&Value>) -> bool {
        let (rule_ns, hit) = match self {
            FunctionFilter::Id { glob, namespace } => {
                (namespace, wildcard_matches(glob, function_id))
            }
            FunctionFilter::Metadata {
                conditions,
                namespace,
            } => {
                let object = metadata.and_then(Value::as_object);
                let hit = object.is_some_and(|o| {
                    conditions
                        .iter()
                        .all(|(k, m)| o.get(k).is_some_and(|v| m.matches(v)))
                });
                (namespace, hit)
            }
        };
        hit && rule_ns.as_deref().unwrap_or(DEFAULT_NAMESPACE) == namespace
    }
}

impl<'de> Deserialize<'de> for FunctionFilter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        FunctionFilter::from_value(&value).map_err(de::Error::custom)
    }
}

/// What the auth function's answer grants one connection (iii's `AuthResult`; every field
/// optional). Unknown fields are ignored, as iii does; a field of the wrong type refuses the
/// connection.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Grants {
    /// Grants scoped to one namespace each: `{"orders": ["svc::*"]}`.
    #[serde(default)]
    pub namespaces: HashMap<String, Vec<String>>,
    /// Further ids callable in the `default` namespace.
    #[serde(default)]
    pub allowed_functions: Vec<String>,
    /// Ids denied whatever else allows them.
    #[serde(default)]
    pub forbidden_functions: Vec<String>,
    /// Trigger types the connection may bind; `None`: all.
    #[serde(default)]
    pub allowed_trigger_types: Option<Vec<String>>,
    /// Whether the connection may register trigger types.
    #[serde(default)]
    pub allow_trigger_type_registration: bool,
    /// Whether the connection may register functions.
    #[serde(default = "yes")]
    pub allow_function_registration: bool,
    /// Prefix (`prefix::`) put before every function id the connection registers.
    #[serde(default)]
    pub function_registration_prefix: Option<String>,
    /// Handed to the middleware and the hooks with every call and registration.
    #[serde(default = "empty_object")]
    pub context: Value,
}

fn yes() -> bool {
    true
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

impl Grants {
    /// What a connection gets from a listener with no auth function (iii's default session).
    pub fn permissive() -> Grants {
        Grants {
            namespaces: HashMap::new(),
            allowed_functions: Vec::new(),
            forbidden_functions: Vec::new(),
            allowed_trigger_types: None,
            allow_trigger_type_registration: true,
            allow_function_registration: true,
            function_registration_prefix: None,
            context: empty_object(),
        }
    }

    /// Parses an auth function's answer; `context` must be an object.
    pub fn from_answer(answer: &str) -> Result<Grants, String> {
        let grants: Grants = serde_json::from_str(answer).map_err(|e| e.to_string())?;
        if !grants.context.is_object() {
            return Err("`context` must be an object".into());
        }
        Ok(grants)
    }

    /// Whether this connection, on a listener exposing `expose`, may call `function_id` (with
    /// `metadata`) in `namespace`: the rules in the module documentation.
    pub fn may_call(
        &self,
        expose: &[FunctionFilter],
        function_id: &str,
        namespace: &str,
        metadata: Option<&Value>,
    ) -> bool {
        if self.forbidden_functions.iter().any(|f| f == function_id) {
            return false;
        }
        let grant_matches = |grant: &String| {
            let raw = unwrap_match(grant).unwrap_or(grant);
            raw == function_id || (raw.contains('*') && wildcard_matches(raw, function_id))
        };
        if self
            .namespaces
            .get(namespace)
            .is_some_and(|granted| granted.iter().any(grant_matches))
        {
            return true;
        }
        if namespace == DEFAULT_NAMESPACE && self.allowed_functions.iter().any(|f| f == function_id)
        {
            return true;
        }
        if INFRASTRUCTURE_FUNCTIONS.contains(&function_id) {
            return true;
        }
        expose
            .iter()
            .any(|f| f.matches(function_id, namespace, metadata))
    }

    /// The `FORBIDDEN` message for a denied `function_id`, with iii's remediation hint.
    pub fn forbidden_message(&self, function_id: &str) -> String {
        let hint = if self.forbidden_functions.iter().any(|f| f == function_id) {
            "remove from rbac.forbidden_functions"
        } else {
            "add to rbac.expose_functions"
        };
        format!("function '{function_id}' not allowed ({hint})")
    }

    /// The id a function registered as `function_id` by this connection gets.
    pub fn registered_id(&self, function_id: &str) -> String {
        match &self.function_registration_prefix {
            Some(prefix) if !prefix.is_empty() => format!("{prefix}::{function_id}"),
            _ => function_id.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wildcards_are_anchored_at_both_ends() {
        assert!(wildcard_matches("a::b", "a::b"));
        assert!(!wildcard_matches("a::b", "a::bc"));
        assert!(wildcard_matches(
            "test::ew::public::*",
            "test::ew::public::echo"
        ));
        assert!(!wildcard_matches(
            "test::ew::public::*",
            "test::ew::private"
        ));
        assert!(wildcard_matches("*::public", "x::y::public"));
        assert!(!wildcard_matches("*::public", "x::public::no"));
        assert!(wildcard_matches("api::*::read", "api::users::read"));
        assert!(!wildcard_matches("api::*::read", "api::users::write"));
        assert!(wildcard_matches("*", ""));
        assert!(wildcard_matches("a*a", "aa"));
        assert!(!wildcard_matches("a*a", "a"));
    }

    #[test]
    fn filters_parse_both_spellings_and_refuse_unknown_keys() {
        let f = FunctionFilter::from_value(&json!("match(\"api::*\")")).unwrap();
        assert!(f.matches("api::x", "default", None));
        assert!(!f.matches("api::x", "orders", None));
        let f =
            FunctionFilter::from_value(&json!({"match": "svc::*", "namespace": "orders"})).unwrap();
        assert!(f.matches("svc::get", "orders", None));
        assert!(!f.matches("svc::get", "default", None));
        let f = FunctionFilter::from_value(
            &json!({"metadata": {"public": true, "tier": "match(\"fr*\")"}}),
        )
        .unwrap();
        assert!(f.matches(
            "x",
            "default",
            Some(&json!({"public": true, "tier": "free"}))
        ));
        assert!(!f.matches("x", "default", Some(&json!({"public": true}))));
        assert!(!f.matches("x", "default", None));
        for bad in [
            json!("api::*"),
            json!({"namesapce": "x", "match": "a"}),
            json!({"match": "a", "metadata": {"k": 1}}),
            json!({}),
            json!(3),
        ] {
            assert!(FunctionFilter::from_value(&bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn the_decision_follows_the_rules_in_order() {
        let expose = vec![FunctionFilter::from_value(&json!("match(\"api::*\")")).unwrap()];
        let mut g = Grants::permissive();
        assert!(g.may_call(&expose, "api::x", "default", None));
        assert!(!g.may_call(&expose, "internal::x", "default", None));
        assert!(g.may_call(&expose, "engine::log::info", "default", None));
        assert!(!g.may_call(&expose, "engine::functions::list", "default", None));
        g.allowed_functions = vec!["internal::x".into()];
        assert!(g.may_call(&expose, "internal::x", "default", None));
        assert!(!g.may_call(&expose, "internal::x", "orders", None));
        g.namespaces
            .insert("orders".into(), vec!["match(\"internal::*\")".into()]);
        assert!(g.may_call(&expose, "internal::x", "orders", None));
        g.forbidden_functions = vec!["api::x".into(), "engine::log::info".into()];
        assert!(!g.may_call(&expose, "api::x", "default", None));
        assert!(!g.may_call(&expose, "engine::log::info", "default", None));
        assert!(g
            .forbidden_message("api::x")
            .contains("remove from rbac.forbidden_functions"));
        assert_eq!(
            g.forbidden_message("other"),
            "function 'other' not allowed (add to rbac.expose_functions)"
        );
    }

    #[test]
    fn answers_are_read_with_iii_defaults() {
        let g = Grants::from_answer("{}").unwrap();
        assert!(g.allow_function_registration);
        assert!(!g.allow_trigger_type_registration);
        assert_eq!(g.context, json!({}));
        assert!(Grants::from_answer("[1]").is_err());
        assert!(Grants::from_answer("null").is_err());
        assert!(Grants::from_answer(r#"{"allowed_functions": "x"}"#).is_err());
        assert!(Grants::from_answer(r#"{"context": 3}"#).is_err());
        let g = Grants::from_answer(r#"{"function_registration_prefix": "p"}"#).unwrap();
        assert_eq!(g.registered_id("f"), "p::f");
    }
}

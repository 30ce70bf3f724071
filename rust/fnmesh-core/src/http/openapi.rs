//! `GET /openapi.json`: the HTTP routes served now as an OpenAPI 3.1 document, and `GET /docs`:
//! a page rendering it with a small script and style sheet the engine serves itself (no CDN).
//! A user's route on one of these paths wins (they are answered only when no route matches).
//!
//! The document is built on each request from the router and the functions' schemas (the
//! function's `request_format`/`response_format`, from an fnmesh app's pydantic models or an
//! iii worker's), so a route registered later is in the next document. A route's function
//! takes the request envelope and returns the response envelope (docs/protocol.md 6.3), so:
//! the envelope's `body` property is the request body, its `query_params` properties are the
//! query parameters, and the result's `body` property is the response body. `$defs` (or
//! `definitions`) of a schema move to `components/schemas`, their `$ref`s rewritten, since a
//! `#/...` reference resolves against the whole document.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Map, Value};

use super::mapping::HttpReply;
use super::trigger::{HttpTrigger, ServedRoute};
use crate::function::{CallOptions, Outcome};
use crate::registry::DEFAULT_NAMESPACE;

/// Where the document is served.
pub(crate) const OPENAPI_PATH: &str = "/openapi.json";
/// Where the page rendering it is served; its assets are under it.
pub(crate) const DOCS_PATH: &str = "/docs";

const DOCS_HTML: &str = include_str!("docs/index.html");
const DOCS_JS: &str = include_str!("docs/docs.js");
const DOCS_CSS: &str = include_str!("docs/docs.css");

/// At most this many functions per `engine::functions::info` call (its limit).
const INFO_BATCH: usize = 32;

/// The engine's answer for `GET` on one of its own paths, or `None`.
pub(crate) async fn answer(trigger: &HttpTrigger, method: &str, path: &str) -> Option<HttpReply> {
    if method != "GET" {
        return None;
    }
    let asset =
        |content_type: &str, body: &str| Some(reply(content_type, body.as_bytes().to_vec()));
    match path {
        OPENAPI_PATH => {
            let routes = trigger.served_routes();
            let functions = match trigger.engine() {
                Some(engine) => describe_functions(&engine, &routes).await,
                None => HashMap::new(),
            };
            let document = build(&routes, &functions);
            let body = serde_json::to_vec(&document).unwrap_or_default();
            Some(reply("application/json", body))
        }
        _ => match path.strip_prefix(DOCS_PATH)? {
            "" | "/" => asset("text/html; charset=utf-8", DOCS_HTML),
            "/docs.js" => asset("text/javascript; charset=utf-8", DOCS_JS),
            "/docs.css" => asset("text/css; charset=utf-8", DOCS_CSS),
            _ => None,
        },
    }
}

fn reply(content_type: &str, body: Vec<u8>) -> HttpReply {
    HttpReply {
        status: 200,
        headers: vec![
            ("content-type".to_owned(), content_type.to_owned()),
            // The page loads only what the engine serves.
            (
                "content-security-policy".to_owned(),
                "default-src 'self'; img-src 'self' data:".to_owned(),
            ),
            ("cache-control".to_owned(), "no-cache".to_owned()),
        ],
        body,
    }
}

/// `engine::functions::info` of every route's function: `(namespace, id)` -> its detail.
async fn describe_functions(
    engine: &crate::engine::EngineRef,
    routes: &[ServedRoute],
) -> HashMap<(String, String), Value> {
    let mut wanted: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for route in routes {
        let ids = wanted.entry(&route.binding.namespace).or_default();
        if !ids.contains(&route.binding.function_id.as_str()) {
            ids.push(&route.binding.function_id);
        }
    }
    let mut found = HashMap::new();
    for (namespace, ids) in wanted {
        for batch in ids.chunks(INFO_BATCH) {
            let request = json!({"function_ids": batch, "namespace": namespace});
            let Ok(data) = serde_json::value::to_raw_value(&request) else {
                continue;
            };
            let options = CallOptions {
                namespace: Some(DEFAULT_NAMESPACE.to_owned()),
                ..CallOptions::default()
            };
            let Outcome::Success(Some(answer)) = engine
                .call_with("engine::functions::info", data, options)
                .await
            else {
                continue;
            };
            let Ok(answer) = serde_json::from_str::<Value>(answer.get()) else {
                continue;
            };
            for detail in answer["functions"].as_array().into_iter().flatten() {
                if let Some(id) = detail["function_id"].as_str() {
                    found.insert((namespace.to_owned(), id.to_owned()), detail.clone());
                }
            }
        }
    }
    found
}

/// The document for `routes`, with `functions` the details of their functions.
pub(crate) fn build(routes: &[ServedRoute], functions: &HashMap<(String, String), Value>) -> Value {
    let mut components = Components::default();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut operation_ids: HashMap<String, usize> = HashMap::new();
    for route in routes {
        let binding = &route.binding;
        let key = (binding.namespace.clone(), binding.function_id.clone());
        let detail = functions.get(&key).cloned().unwrap_or(Value::Null);
        let request = components.adopt(&detail["request_schema"]);
        let response = components.adopt(&detail["response_schema"]);
        let mut operation = Map::new();
        let seen = operation_ids
            .entry(binding.function_id.clone())
            .or_insert(0);
        *seen += 1;
        let operation_id = match *seen {
            1 => binding.function_id.clone(),
            n => format!("{}_{n}", binding.function_id),
        };
        operation.insert("operationId".into(), json!(operation_id));
        let config: Value = serde_json::from_str(binding.config.get()).unwrap_or(Value::Null);
        let summary = detail["description"]
            .as_str()
            .or_else(|| config["description"].as_str());
        if let Some(summary) = summary {
            operation.insert("summary".into(), json!(summary));
        }
        operation.insert(
            "description".into(),
            json!(format!("Calls the function `{}`.", binding.function_id)),
        );
        if let Some(worker) = detail["worker_name"].as_str() {
            operation.insert("tags".into(), json!([worker]));
        }
        let mut parameters: Vec<Value> = route
            .param_names
            .iter()
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let query = resolved(
            &property(&request, &components, "query_params"),
            &components,
        );
        let query_required = required(&query);
        if let Some(Value::Object(props)) = query.get("properties") {
            for (name, schema) in props {
                parameters.push(json!({
                    "name": name, "in": "query",
                    "required": query_required.contains(&name.as_str()),
                    "schema": schema,
                }));
            }
        }
        if !parameters.is_empty() {
            operation.insert("parameters".into(), Value::Array(parameters));
        }
        if matches!(route.method, "POST" | "PUT" | "PATCH" | "DELETE") {
            let body = property(&request, &components, "body");
            let body_required = required(&resolved(&request, &components)).contains(&"body");
            operation.insert(
                "requestBody".into(),
                json!({"required": body_required, "content": {"application/json": {"schema": body}}}),
            );
        }
        let body = property(&response, &components, "body");
        operation.insert(
            "responses".into(),
            json!({
                "200": {"description": "The function's result `body`", "content": {"application/json": {"schema": body}}},
                "default": {
                    "description": "An error: the function failed (500), no route or function (404), a timeout (504), ...",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/fnmesh.Error"}}},
                },
            }),
        );
        let path = openapi_path(&route.template);
        paths
            .entry(path)
            .or_default()
            .insert(route.method.to_ascii_lowercase(), Value::Object(operation));
    }
    components.schemas.insert(
        "fnmesh.Error".into(),
        json!({
            "type": "object",
            "description": "The error envelope of the HTTP trigger (docs/protocol.md 6.3)",
            "properties": {"error": {"type": "object", "properties": {
                "code": {"type": "string"}, "message": {"type": "string"}, "error_id": {"type": "string"},
            }, "required": ["code", "message"]}},
            "required": ["error"],
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "fnmesh HTTP triggers",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The HTTP routes this engine serves now, each calling a function.",
        },
        "paths": paths,
        "components": {"schemas": components.schemas},
    })
}

/// `users/:id` -> `/users/{id}`.
fn openapi_path(template: &str) -> String {
    let segments: Vec<String> = template
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| match s.strip_prefix(':') {
            Some(name) => format!("{{{name}}}"),
            None => s.to_owned(),
        })
        .collect();
    format!("/{}", segments.join("/"))
}

/// The schema `schema` stands for: itself, or the component its `$ref` names.
fn resolved(schema: &Value, components: &Components) -> Value {
    match schema["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
    {
        Some(name) => components.schemas.get(name).cloned().unwrap_or(Value::Null),
        None => schema.clone(),
    }
}

/// The schema of `schema`'s property `name`, or the empty schema (anything) when unknown.
fn property(schema: &Value, components: &Components, name: &str) -> Value {
    match resolved(schema, components)["properties"].get(name) {
        Some(found) if found.is_object() || found.is_boolean() => found.clone(),
        _ => json!({}),
    }
}

fn required(schema: &Value) -> Vec<&str> {
    schema["required"]
        .as_array()
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// `components/schemas`, filled from the functions' `$defs`.
#[derive(Default)]
struct Components {
    schemas: Map<String, Value>,
}

impl Components {
    /// `schema` ready for the document: its `$defs`/`definitions` moved here (a name already
    /// taken by another schema gets a suffix), its references rewritten to them, its `$schema`
    /// dropped (the document's dialect applies). Not an object (absent, null) -> `{}`.
    fn adopt(&mut self, schema: &Value) -> Value {
        let Value::Object(mut schema) = schema.clone() else {
            return match schema {
                Value::Bool(_) => schema.clone(),
                _ => json!({}),
            };
        };
        schema.remove("$schema");
        let mut renames: HashMap<String, String> = HashMap::new();
        let mut adopted: Vec<(String, Value)> = Vec::new();
        for key in ["$defs", "definitions"] {
            let Some(Value::Object(defs)) = schema.remove(key) else {
                continue;
            };
            for (name, def) in defs {
                let base = sanitize(&name);
                let mut unique = base.clone();
                let mut n = 1;
                while self.schemas.contains_key(&unique)
                    || adopted.iter().any(|(taken, _)| taken == &unique)
                {
                    n += 1;
                    unique = format!("{base}_{n}");
                }
                renames.insert(format!("#/{key}/{name}"), unique.clone());
                adopted.push((unique, def));
            }
        }
        for (_, def) in &mut adopted {
            rewrite(def, &renames);
            if let Value::Object(map) = def {
                map.remove("$schema");
            }
        }
        // The same model used by several functions is kept once: a definition identical to a
        // component already there becomes a reference to it.
        let mut aliases: HashMap<String, String> = HashMap::new();
        for (name, def) in adopted {
            let existing = self
                .schemas
                .iter()
                .find(|(_, known)| **known == def)
                .map(|(known, _)| known.clone());
            match existing {
                Some(known) => {
                    aliases.insert(format!("#/components/schemas/{name}"), known);
                }
                None => {
                    self.schemas.insert(name, def);
                }
            }
        }
        if !aliases.is_empty() {
            for def in self.schemas.values_mut() {
                rewrite(def, &aliases);
            }
        }
        let mut schema = Value::Object(schema);
        rewrite(&mut schema, &renames);
        rewrite(&mut schema, &aliases);
        schema
    }
}

/// Component names allow `[A-Za-z0-9._-]` only.
fn sanitize(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "schema".to_owned()
    } else {
        cleaned
    }
}

/// Points every `$ref` named in `renames` at its component.
fn rewrite(value: &mut Value, renames: &HashMap<String, String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get_mut("$ref") {
                if let Some(name) = renames.get(target.as_str()) {
                    *target = format!("#/components/schemas/{name}");
                }
            }
            for child in map.values_mut() {
                rewrite(child, renames);
            }
        }
        Value::Array(items) => {
            for item in items {
                rewrite(item, renames);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_use_braces_for_parameters() {
        assert_eq!(openapi_path(""), "/");
        assert_eq!(openapi_path("users/:id/posts"), "/users/{id}/posts");
    }

    #[test]
    fn defs_move_to_components_and_refs_follow() {
        let mut components = Components::default();
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "properties": {"body": {"$ref": "#/$defs/Order"}},
            "$defs": {"Order": {"properties": {"line": {"$ref": "#/$defs/Line"}}}, "Line": {"type": "object"}},
        });
        let adopted = components.adopt(&schema);
        assert_eq!(
            adopted,
            json!({"properties": {"body": {"$ref": "#/components/schemas/Order"}}})
        );
        assert_eq!(
            components.schemas["Order"],
            json!({"properties": {"line": {"$ref": "#/components/schemas/Line"}}})
        );
        // Another function's different `Order` gets a name of its own; an identical `Line` is
        // shared.
        let other = json!({
            "properties": {"body": {"$ref": "#/$defs/Order"}},
            "$defs": {"Order": {"type": "string"}, "Line": {"type": "object"}},
            "items": {"$ref": "#/$defs/Line"},
        });
        let adopted = components.adopt(&other);
        assert_eq!(
            adopted["properties"]["body"]["$ref"],
            "#/components/schemas/Order_2"
        );
        assert_eq!(adopted["items"]["$ref"], "#/components/schemas/Line");
        assert_eq!(components.schemas.len(), 3);
        assert_eq!(
            property(&adopted, &components, "body"),
            json!({"$ref": "#/components/schemas/Order_2"})
        );
        assert_eq!(components.adopt(&Value::Null), json!({}));
    }
}

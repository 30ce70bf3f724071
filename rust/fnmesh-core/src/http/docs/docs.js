// The /docs page of fnmesh (rust/fnmesh-core/src/http/openapi.rs): renders /openapi.json as
// a list of routes with their parameters and body schemas. No framework, no build step; it
// builds the page with DOM calls only (no innerHTML), so schema text can never become markup.
"use strict";

const REFRESH_MS = 5000;
let shown = "";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value; else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

// A schema as readable text: $refs resolved (once each, so cycles end), objects as their
// properties with types, a `*` after a required one.
function describe(schema, doc, depth, seen) {
  const pad = "  ".repeat(depth);
  if (schema === true || schema === undefined || schema === null) return "any";
  if (schema === false) return "nothing";
  if (typeof schema.$ref === "string") {
    const name = schema.$ref.replace("#/components/schemas/", "");
    if (seen.has(name)) return name;
    const target = ((doc.components || {}).schemas || {})[name];
    return target ? describe(target, doc, depth, new Set([...seen, name])) : name;
  }
  for (const key of ["anyOf", "oneOf", "allOf"]) {
    if (Array.isArray(schema[key])) {
      return schema[key].map((s) => describe(s, doc, depth, seen)).join(key === "allOf" ? " & " : " | ");
    }
  }
  if (Array.isArray(schema.enum)) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (schema.type === "array") return describe(schema.items, doc, depth, seen) + "[]";
  if (schema.properties) {
    const required = new Set(schema.required || []);
    const lines = Object.entries(schema.properties).map(([name, sub]) =>
      `${pad}  ${name}${required.has(name) ? "*" : ""}: ${describe(sub, doc, depth + 1, seen)}`);
    return `{\n${lines.join("\n")}\n${pad}}`;
  }
  if (schema.type) return Array.isArray(schema.type) ? schema.type.join(" | ") : String(schema.type);
  if (schema.additionalProperties) return `{ [key]: ${describe(schema.additionalProperties, doc, depth, seen)} }`;
  return "any";
}

function operation(path, method, op, doc) {
  const body = el("div", { class: "body" });
  if (op.description) body.append(el("p", {}, op.description));
  const params = op.parameters || [];
  if (params.length) {
    const rows = params.map((p) => el("tr", {},
      el("td", {}, el("code", {}, p.name), p.required ? el("span", { class: "req" }, " *") : null),
      el("td", {}, p.in), el("td", {}, el("code", {}, describe(p.schema, doc, 0, new Set())))));
    body.append(el("h3", {}, "Parameters"),
      el("table", {}, el("tr", {}, el("th", {}, "name"), el("th", {}, "in"), el("th", {}, "schema")), ...rows));
  }
  if (op.requestBody) {
    const schema = op.requestBody.content["application/json"].schema;
    body.append(el("h3", {}, `Request body (application/json)${op.requestBody.required ? ", required" : ""}`),
      el("pre", {}, describe(schema, doc, 0, new Set())));
  }
  for (const [status, response] of Object.entries(op.responses || {})) {
    const content = (response.content || {})["application/json"];
    body.append(el("h3", {}, `Response ${status}: ${response.description || ""}`),
      content ? el("pre", {}, describe(content.schema, doc, 0, new Set())) : null);
  }
  return el("details", { class: "op", id: op.operationId || "" },
    el("summary", {}, el("span", { class: `method ${method}` }, method.toUpperCase()),
      el("span", { class: "path" }, path), el("span", { class: "summary" }, op.summary || "")),
    body);
}

function render(doc) {
  const main = document.getElementById("routes");
  const open = new Set([...main.querySelectorAll("details[open]")].map((d) => d.id));
  const groups = new Map();
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const [method, op] of Object.entries(item)) {
      const tag = (op.tags || ["routes"])[0];
      if (!groups.has(tag)) groups.set(tag, []);
      groups.get(tag).push(operation(path, method, op, doc));
    }
  }
  main.replaceChildren();
  if (groups.size === 0) main.append(el("p", { class: "note" }, "No HTTP routes are served yet."));
  for (const [tag, ops] of [...groups.entries()].sort()) {
    main.append(el("h2", {}, tag), ...ops);
  }
  for (const details of main.querySelectorAll("details")) if (open.has(details.id)) details.open = true;
  document.getElementById("title").textContent = (doc.info && doc.info.title) || "HTTP routes";
}

async function load() {
  try {
    const response = await fetch("/openapi.json", { cache: "no-store" });
    const text = await response.text();
    if (text !== shown) {
      shown = text;
      render(JSON.parse(text));
    }
  } catch (error) {
    document.getElementById("routes").replaceChildren(el("p", { class: "note" }, `Cannot load /openapi.json: ${error}`));
    shown = "";
  }
}

load();
setInterval(load, REFRESH_MS);

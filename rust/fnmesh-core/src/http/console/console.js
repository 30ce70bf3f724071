// The fnmesh console (rust/fnmesh-core/src/http/console.rs). No framework, no build step.
// Everything shown comes from workers and is untrusted: the page is built with DOM calls and
// textContent only (never innerHTML), so a function id or a result can never become markup.
"use strict";

const POLL_MS = 2000;
const DEAD_LETTERS_SHOWN = 20;
const api = (name) => new URL(`api/${name}`, document.baseURI).pathname;

let polling = false;
let functions = new Map(); // key(namespace, id) -> detail (with request_schema)
const key = (namespace, id) => JSON.stringify([namespace || "default", id]);
const queueActions = new Set(); // dead letters being redriven or discarded

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

class Unauthorized extends Error {}

async function request(name, body) {
  const init = body === undefined
    ? { cache: "no-store", credentials: "same-origin" }
    : { method: "POST", cache: "no-store", credentials: "same-origin",
        headers: { "content-type": "application/json" }, body: JSON.stringify(body) };
  const response = await fetch(api(name), init);
  if (response.status === 401) throw new Unauthorized();
  const answer = await response.json();
  if (!response.ok) throw new Error((answer.error && answer.error.message) || response.statusText);
  return answer;
}

// Calls a function through the console; resolves to its result, rejects with {code, message}.
async function call(functionId, data, namespace) {
  const answer = await request("call", { function_id: functionId, data: data === undefined ? {} : data, namespace });
  if (!answer.ok) throw Object.assign(new Error(answer.error.message), { code: answer.error.code });
  return answer.result;
}

function fill(tableId, rows) {
  document.querySelector(`#${tableId} tbody`).replaceChildren(...rows);
}

function count(id, n) {
  document.getElementById(`${id}-count`).textContent = `(${n})`;
}

function time(ms) {
  return ms ? new Date(ms).toLocaleString() : "";
}

// ---- functions, schemas and the form ----

async function loadFunctions() {
  const listed = (await call("engine::functions::list", {})).functions || [];
  const byNamespace = new Map();
  for (const f of listed) {
    const ns = f.namespace || "default";
    if (!byNamespace.has(ns)) byNamespace.set(ns, []);
    byNamespace.get(ns).push(f.function_id);
  }
  const details = new Map();
  for (const [ns, ids] of byNamespace) {
    for (let i = 0; i < ids.length; i += 32) {
      const info = await call("engine::functions::info", { function_ids: ids.slice(i, i + 32), namespace: ns });
      for (const d of info.functions || []) details.set(key(ns, d.function_id), { ...d, namespace: ns });
    }
  }
  functions = new Map(listed.map((f) => {
    const k = key(f.namespace, f.function_id);
    return [k, { ...f, ...(details.get(k) || {}) }];
  }));
  const rows = [...functions.values()].sort((a, b) => a.function_id.localeCompare(b.function_id)).map((f) =>
    el("tr", { "data-function-id": f.function_id },
      el("td", {}, el("code", {}, f.function_id), f.namespace && f.namespace !== "default" ? ` (${f.namespace})` : null,
        f.description ? el("div", { class: "muted" }, f.description) : null),
      el("td", {}, f.worker_name || ""),
      el("td", {}, f.kind || ""),
      el("td", {}, schemaCell(f))));
  fill("functions", rows);
  count("functions", rows.length);
  updateFunctionChoice();
  return listed;
}

function schemaCell(f) {
  if (!f.request_schema && !f.response_schema) return "";
  return el("details", {}, el("summary", {}, "schema"),
    f.request_schema ? el("pre", {}, `request: ${JSON.stringify(f.request_schema, null, 2)}`) : null,
    f.response_schema ? el("pre", {}, `response: ${JSON.stringify(f.response_schema, null, 2)}`) : null);
}

function updateFunctionChoice() {
  const select = document.getElementById("invoke-function");
  const chosen = select.value;
  const keys = [...functions.keys()].sort();
  const shown = [...select.options].map((o) => o.value);
  if (keys.join("\n") !== shown.join("\n")) {
    select.replaceChildren(...keys.map((k) => {
      const f = functions.get(k);
      const label = f.namespace && f.namespace !== "default" ? `${f.function_id} (${f.namespace})` : f.function_id;
      return el("option", { value: k }, label);
    }));
    if (keys.includes(chosen)) select.value = chosen;
  }
  showSchema();
}

function showSchema() {
  const f = functions.get(document.getElementById("invoke-function").value);
  document.getElementById("invoke-schema").textContent =
    f && f.request_schema ? JSON.stringify(f.request_schema, null, 2) : "(none declared)";
}

// The subset of JSON Schema the engine checks too (console/schema.rs): the first problem, or "".
function check(schema, value, root, at, depth) {
  if (depth > 64 || schema === true || schema === undefined || schema === null) return "";
  if (schema === false) return `${at}: no value is allowed here`;
  if (typeof schema !== "object") return "";
  if (typeof schema.$ref === "string" && schema.$ref.startsWith("#")) {
    const target = schema.$ref.slice(1).split("/").filter((p) => p !== "")
      .reduce((node, part) => (node && typeof node === "object" ? node[part.replace(/~1/g, "/").replace(/~0/g, "~")] : undefined), root);
    const problem = check(target, value, root, at, depth + 1);
    if (problem) return problem;
  }
  const kind = typeOf(value);
  if (schema.type !== undefined) {
    const types = Array.isArray(schema.type) ? schema.type : [schema.type];
    const fits = (t) => t === kind || (t === "number" && kind === "integer");
    if (types.length && !types.some(fits)) return `${at}: expected ${types.join(" or ")}, got ${kind}`;
  }
  if (Array.isArray(schema.enum) && !schema.enum.some((v) => same(v, value))) return `${at}: must be one of ${JSON.stringify(schema.enum)}`;
  if ("const" in schema && !same(schema.const, value)) return `${at}: must be ${JSON.stringify(schema.const)}`;
  if (Array.isArray(schema.allOf)) for (const sub of schema.allOf) { const p = check(sub, value, root, at, depth + 1); if (p) return p; }
  for (const key of ["anyOf", "oneOf"]) {
    if (Array.isArray(schema[key]) && schema[key].length && !schema[key].some((sub) => !check(sub, value, root, at, depth + 1))) {
      return `${at}: matches none of the ${key} alternatives`;
    }
  }
  if (kind === "object") {
    for (const name of schema.required || []) if (!(name in value)) return `${at}: missing required property ${JSON.stringify(name)}`;
    for (const [name, item] of Object.entries(value)) {
      const sub = (schema.properties || {})[name];
      if (sub !== undefined) { const p = check(sub, item, root, `${at}.${name}`, depth + 1); if (p) return p; }
      else if (schema.additionalProperties === false) return `${at}: unexpected property ${JSON.stringify(name)}`;
      else if (typeof schema.additionalProperties === "object") { const p = check(schema.additionalProperties, item, root, `${at}.${name}`, depth + 1); if (p) return p; }
    }
  } else if (kind === "array") {
    if (schema.items !== undefined) for (let i = 0; i < value.length; i++) { const p = check(schema.items, value[i], root, `${at}[${i}]`, depth + 1); if (p) return p; }
    if (schema.minItems !== undefined && value.length < schema.minItems) return `${at}: at least ${schema.minItems} items`;
    if (schema.maxItems !== undefined && value.length > schema.maxItems) return `${at}: at most ${schema.maxItems} items`;
  } else if (kind === "string") {
    const n = [...value].length;
    if (schema.minLength !== undefined && n < schema.minLength) return `${at}: at least ${schema.minLength} characters`;
    if (schema.maxLength !== undefined && n > schema.maxLength) return `${at}: at most ${schema.maxLength} characters`;
  } else if (kind === "number" || kind === "integer") {
    if (schema.minimum !== undefined && value < schema.minimum) return `${at}: at least ${schema.minimum}`;
    if (schema.maximum !== undefined && value > schema.maximum) return `${at}: at most ${schema.maximum}`;
    if (schema.exclusiveMinimum !== undefined && value <= schema.exclusiveMinimum) return `${at}: must be greater than ${schema.exclusiveMinimum}`;
    if (schema.exclusiveMaximum !== undefined && value >= schema.exclusiveMaximum) return `${at}: must be less than ${schema.exclusiveMaximum}`;
  }
  return "";
}

function typeOf(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  if (typeof value === "number") return Number.isInteger(value) ? "integer" : "number";
  return typeof value;
}

function same(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

async function invoke(event) {
  event.preventDefault();
  const error = document.getElementById("invoke-error");
  const result = document.getElementById("invoke-result");
  error.textContent = "";
  result.textContent = "";
  result.className = "result";
  const f = functions.get(document.getElementById("invoke-function").value);
  if (!f) { error.textContent = "Choose a function."; return; }
  let data;
  try {
    data = JSON.parse(document.getElementById("invoke-data").value || "null");
  } catch (e) {
    error.textContent = `The input is not valid JSON: ${e.message}`;
    return;
  }
  if (f.request_schema) {
    const problem = check(f.request_schema, data, f.request_schema, "$", 0);
    if (problem) { error.textContent = `The input does not match the schema: ${problem}`; return; }
  }
  const button = document.getElementById("invoke-submit");
  button.disabled = true;
  try {
    const value = await call(f.function_id, data, f.namespace);
    result.className = "result ok";
    result.textContent = JSON.stringify(value, null, 2) ?? "null";
  } catch (e) {
    if (e instanceof Unauthorized) return showLogin();
    error.textContent = e.code ? `${e.code}: ${e.message}` : String(e.message || e);
  } finally {
    button.disabled = false;
    poll();
  }
}

// ---- workers, triggers, queues, recent calls ----

async function loadWorkers(listed) {
  const workers = (await call("engine::workers::list", {})).workers || [];
  const rows = workers.map((w) => {
    const served = listed.filter((f) => f.worker_name === w.name).map((f) => f.function_id).sort();
    return el("tr", {},
      el("td", {}, w.name || w.id, w.description ? el("div", { class: "muted" }, w.description) : null),
      el("td", {}, w.runtime || ""),
      el("td", {}, w.version || ""),
      el("td", {}, served.length ? served.join(", ") : String(w.function_count ?? "")),
      el("td", {}, String(w.active_invocations ?? "")));
  });
  fill("workers", rows);
  count("workers", rows.length);
}

async function loadTriggers() {
  const bindings = (await call("engine::registered-triggers::list", {})).registered_triggers || [];
  const crons = bindings.filter((b) => b.trigger_type === "cron" && b.config && typeof b.config.expression === "string");
  let next = [];
  if (crons.length) {
    try {
      next = (await call("engine::cron::next_runs", {
        schedules: crons.slice(0, 1000).map((b) => ({ expression: b.config.expression, timezone: b.config.timezone })),
      })).next_runs || [];
    } catch (e) { next = []; }
  }
  const nextOf = new Map(crons.map((b, i) => [b.id, next[i]]));
  const rows = bindings.map((b) => el("tr", {},
    el("td", {}, b.trigger_type),
    el("td", {}, el("code", {}, b.function_id)),
    el("td", {}, describeBinding(b)),
    el("td", {}, b.trigger_type === "cron" ? (time(nextOf.get(b.id)) || "never") : "")));
  fill("triggers", rows);
  count("triggers", rows.length);
}

function describeBinding(b) {
  const c = b.config || {};
  if (b.trigger_type === "http") return `${(c.http_method || "GET").toUpperCase()} /${String(c.api_path || "").replace(/^\//, "")}`;
  if (b.trigger_type === "cron") return c.timezone ? `${c.expression} (${c.timezone})` : c.expression;
  return b.config_summary || JSON.stringify(c);
}

async function loadQueues() {
  const problem = document.getElementById("queue-error");
  let topics;
  try {
    topics = await call("engine::queue::list_topics", {});
  } catch (e) {
    if (e instanceof Unauthorized) throw e;
    fill("queues", []); fill("dead-letters", []);
    problem.textContent = e.code === "function_not_found" ? "Queues are off on this engine." : `${e.code || ""} ${e.message}`;
    return;
  }
  problem.textContent = "";
  const dead = (await call("engine::queue::dlq_topics", {})).queues || [];
  const names = new Set([...(topics.queues || []).map((q) => q.name), ...dead.map((d) => d.queue)]);
  const configs = new Map((topics.queues || []).map((q) => [q.name, q]));
  const rows = [];
  for (const name of [...names].sort()) {
    let stats = { dead: (dead.find((d) => d.queue === name) || {}).count || 0 };
    if (configs.has(name)) {
      try { stats = await call("engine::queue::topic_stats", { queue: name }); } catch (e) { /* gone meanwhile */ }
    }
    const subscribers = ((configs.get(name) || {}).subscribers || []).map((s) => `${s.topic} → ${s.function_id}`);
    rows.push(el("tr", { "data-queue": name },
      el("td", {}, el("code", {}, name)),
      el("td", {}, String(stats.ready ?? "")), el("td", {}, String(stats.delayed ?? "")),
      el("td", {}, String(stats.in_flight ?? "")), el("td", { class: stats.dead ? "bad" : "" }, String(stats.dead ?? 0)),
      el("td", {}, subscribers.join(", "))));
  }
  fill("queues", rows);
  const letters = [];
  for (const d of dead) {
    const answer = await call("engine::queue::dlq_messages", { queue: d.queue, limit: DEAD_LETTERS_SHOWN });
    letters.push(...(answer.messages || []));
  }
  fill("dead-letters", letters.map((m) => el("tr", { "data-message-id": m.id },
    el("td", {}, el("code", {}, m.queue)),
    el("td", {}, el("code", {}, m.function_id)),
    el("td", {}, `${(m.error || {}).code || ""}: ${(m.error || {}).message || ""}`),
    el("td", {}, String(m.attempts ?? "")),
    el("td", {},
      el("button", { type: "button", class: "redrive", "data-message-id": m.id, disabled: queueActions.has(m.id),
        onclick: () => queueAction("iii::queue::redrive_message", m) }, "redrive"),
      el("button", { type: "button", class: "discard secondary", "data-message-id": m.id, disabled: queueActions.has(m.id),
        onclick: () => queueAction("iii::queue::discard_message", m) }, "discard")))));
}

async function queueAction(functionId, message) {
  queueActions.add(message.id);
  const problem = document.getElementById("queue-error");
  try {
    await call(functionId, { queue: message.queue, message_id: message.id });
    problem.textContent = "";
  } catch (e) {
    if (e instanceof Unauthorized) return showLogin();
    problem.textContent = `${e.code || ""}: ${e.message}`;
  } finally {
    queueActions.delete(message.id);
    poll();
  }
}

async function loadRecent() {
  const recent = (await request("recent")).invocations || [];
  fill("recent", recent.map((r) => el("tr", {},
    el("td", {}, time(r.finished_at_ms)),
    el("td", {}, el("code", {}, r.function_id)),
    el("td", {}, r.latency_us >= 1000 ? `${(r.latency_us / 1000).toFixed(1)} ms` : `${r.latency_us} µs`),
    el("td", { class: r.outcome === "ok" ? "ok" : "bad" }, r.outcome))));
}

// ---- the loop and the login ----

async function poll() {
  if (polling) return;
  polling = true;
  const status = document.getElementById("status");
  try {
    const listed = await loadFunctions();
    await Promise.all([loadWorkers(listed), loadTriggers(), loadQueues(), loadRecent()]);
    document.getElementById("login").hidden = true;
    document.getElementById("console").hidden = false;
    status.className = "status";
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    if (e instanceof Unauthorized) showLogin();
    else { status.className = "status bad"; status.textContent = `cannot reach the engine: ${e.message || e}`; }
  } finally {
    polling = false;
  }
}

function showLogin() {
  document.getElementById("console").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("status").textContent = "sign in to continue";
}

async function login(event) {
  event.preventDefault();
  const error = document.getElementById("login-error");
  error.textContent = "";
  const input = document.getElementById("login-token");
  try {
    await request("login", { token: input.value });
    input.value = "";
    await poll();
  } catch (e) {
    error.textContent = e instanceof Unauthorized ? "Wrong token." : String(e.message || e);
  }
}

document.getElementById("invoke-form").addEventListener("submit", invoke);
document.getElementById("invoke-function").addEventListener("change", showSchema);
document.getElementById("login-form").addEventListener("submit", login);
poll();
setInterval(poll, POLL_MS);

//! The API's documentation: the OpenAPI document at `/openapi.json` and a self-contained page at
//! `/docs` that renders it with no network access (no CDN scripts).

use axum::Json;
use axum::response::Html;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{admin, bucket, explain, native, oip, sagemaker, versions};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Bestiary",
        description = "Image classification: Bestiary's own API, the SageMaker hosting contract \
            and the Open Inference Protocol v2. When the server has API keys, every route but \
            /ping, /metrics, /v2/health/*, /docs and the console's static page (/, /console/*) needs `Authorization: Bearer <key>`."
    ),
    paths(
        native::classify,
        explain::explain,
        native::list_models,
        native::get_model,
        native::usage,
        versions::list,
        versions::detail,
        versions::report,
        versions::serve,
        bucket::folders,
        bucket::audit,
        bucket::photos,
        bucket::results,
        bucket::thumbnail,
        sagemaker::ping,
        sagemaker::invocations,
        sagemaker::execution_parameters,
        oip::server_metadata,
        oip::live,
        oip::ready,
        oip::model_metadata,
        oip::model_version_metadata,
        oip::model_ready,
        oip::model_version_ready,
        oip::infer,
        oip::infer_version,
        admin::reload,
        admin::metrics,
    ),
    modifiers(&BearerSecurity),
    tags(
        (name = "classify", description = "Classify photos"),
        (name = "models", description = "What is served, and the versions of its model folder"),
        (name = "bucket", description = "The bucket as a gallery, for the web console"),
        (name = "sagemaker", description = "Amazon SageMaker hosting and batch transform"),
        (name = "open-inference-protocol", description = "KServe / Triton Open Inference Protocol v2"),
        (name = "monitoring", description = "Usage, cost and Prometheus metrics"),
        (name = "admin", description = "Operations"),
    )
)]
pub struct ApiDoc;

/// Declares the `api_key` Bearer scheme the operations refer to.
struct BearerSecurity;

impl Modify for BearerSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI 3.1 document of every route.
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The documentation page.
pub async fn page() -> Html<&'static str> {
    Html(DOCS_PAGE)
}

/// Fetches `/openapi.json` (with the key typed in, when the server asks for one) and lists
/// every operation with its parameters, bodies, responses and schemas.
const DOCS_PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Bestiary API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font: 15px/1.5 system-ui, sans-serif; margin: 0 auto; max-width: 60rem; padding: 1rem 2rem; color: #222; }
  h1 { margin-bottom: 0; }
  .op { border: 1px solid #ddd; border-radius: 6px; margin: .6rem 0; }
  .op summary { cursor: pointer; padding: .5rem .8rem; }
  .op > div { padding: 0 .8rem .8rem; }
  .method { display: inline-block; min-width: 4rem; font-weight: 600; text-transform: uppercase; }
  .get { color: #0a6; } .post { color: #06c; }
  code, pre { background: #f5f5f5; border-radius: 4px; }
  pre { padding: .6rem; overflow-x: auto; }
  .lock { color: #a60; font-size: .85em; }
  #key { width: 20rem; }
</style>
</head>
<body>
<h1>Bestiary API</h1>
<p id="description"></p>
<p><label>API key (if the server needs one): <input id="key" type="password" autocomplete="off"></label>
<button id="load">Load</button> · <a href="/openapi.json">openapi.json</a></p>
<div id="status"></div>
<main id="operations"></main>
<script>
"use strict";
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const child of children) node.append(child);
  return node;
};
function resolve(doc, schema) {
  if (schema && schema.$ref) return doc.components.schemas[schema.$ref.split("/").pop()] || schema;
  return schema;
}
function schemaText(doc, schema, depth = 0) {
  schema = resolve(doc, schema);
  if (!schema || depth > 4) return "";
  return JSON.stringify(schema, (k, v) => (k === "$ref" ? v.split("/").pop() : v), 2);
}
function render(doc) {
  document.getElementById("description").textContent = doc.info.description || "";
  const main = document.getElementById("operations");
  main.replaceChildren();
  const byTag = {};
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const tag = (op.tags || ["other"])[0];
      (byTag[tag] = byTag[tag] || []).push({ path, method, op });
    }
  }
  for (const tag of doc.tags || []) {
    const ops = byTag[tag.name];
    if (!ops) continue;
    main.append(el("h2", {}, tag.name), el("p", {}, tag.description || ""));
    for (const { path, method, op } of ops) {
      const secured = (op.security || []).some((s) => Object.keys(s).length > 0);
      const body = el("div");
      if (op.description) body.append(el("p", {}, op.description));
      for (const p of op.parameters || [])
        body.append(el("p", {}, el("code", {}, p.name), ` (${p.in}) ${p.description || ""}`));
      const content = (op.requestBody && op.requestBody.content) || {};
      if (Object.keys(content).length) {
        body.append(el("h4", {}, "Request body"));
        for (const [type, media] of Object.entries(content)) {
          body.append(el("p", {}, el("code", {}, type)));
          const text = schemaText(doc, media.schema);
          if (text && media.schema.$ref) body.append(el("pre", {}, text));
        }
      }
      body.append(el("h4", {}, "Responses"));
      for (const [status, response] of Object.entries(op.responses || {})) {
        body.append(el("p", {}, el("b", {}, status), " ", response.description || ""));
        const json = response.content && response.content["application/json"];
        if (json && json.schema && json.schema.$ref && status.startsWith("2"))
          body.append(el("pre", {}, schemaText(doc, json.schema)));
      }
      main.append(el("details", { class: "op" },
        el("summary", {}, el("span", { class: `method ${method}` }, method), " ", el("code", {}, path),
          " ", op.summary || "", secured ? el("span", { class: "lock" }, " · key") : ""),
        body));
    }
  }
}
async function load() {
  const status = document.getElementById("status");
  const key = document.getElementById("key").value.trim();
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  try {
    const response = await fetch("/openapi.json", { headers });
    if (!response.ok) {
      const error = await response.json().catch(() => ({}));
      status.textContent = `${response.status}: ${error.error || response.statusText}`;
      return;
    }
    status.textContent = "";
    render(await response.json());
  } catch (e) {
    status.textContent = String(e);
  }
}
document.getElementById("load").addEventListener("click", load);
load();
</script>
</body>
</html>
"##;

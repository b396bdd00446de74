//! `GET /api/openapi.json`: the OpenAPI 3.1 description of every `/api`
//! route, built by hand (a table of routes below) rather than with utoipa's
//! derive macros: the handlers take raw query pairs and JSON values, which a
//! derive would describe as free-form anyway. A test checks that every route
//! the API serves is listed here. Served without a token: it describes the
//! API, not its data.

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, Value, json};

/// One documented operation.
struct Operation {
    method: &'static str,
    path: &'static str,
    scope: Option<&'static str>,
    summary: &'static str,
    parameters: &'static [(&'static str, &'static str, &'static str)],
    body: Option<&'static str>,
}

const SEARCH: &[(&str, &str, &str)] = &[
    ("channel", "query", "Channel name."),
    ("state", "query", "Messages with a delivery in this state: queued, in_flight, sent, filtered, error, dead."),
    ("from", "query", "Received at or after (RFC 3339)."),
    ("to", "query", "Received before (RFC 3339)."),
    ("control_id", "query", "MSH-10."),
    ("mrn", "query", "Patient identifier."),
    ("order_key", "query", "Order key."),
    ("type", "query", "Message type (ADT)."),
    ("event", "query", "Trigger event (A08)."),
    ("limit", "query", "Page size, 1 to 1000 (default 50)."),
    ("cursor", "query", "The `next` of the previous page."),
];

const OPERATIONS: &[Operation] = &[
    Operation {
        method: "get",
        path: "/api/channels",
        scope: Some("messages:read"),
        summary: "Channels with delivery counts per state, per destination and in total.",
        parameters: &[],
        body: None,
    },
    Operation {
        method: "get",
        path: "/api/channels/{name}",
        scope: Some("messages:read"),
        summary: "One channel with its counts.",
        parameters: &[("name", "path", "Channel name.")],
        body: None,
    },
    Operation {
        method: "post",
        path: "/api/channels/{name}/stop",
        scope: Some("channels:admin"),
        summary: "Stop a channel: its ingest answers AE / 503 \"the channel is stopped\" (listeners stay bound) and \
                  its workers stop claiming. Audited.",
        parameters: &[("name", "path", "Channel name.")],
        body: None,
    },
    Operation {
        method: "post",
        path: "/api/channels/{name}/start",
        scope: Some("channels:admin"),
        summary: "Start a stopped channel again. Audited.",
        parameters: &[("name", "path", "Channel name.")],
        body: None,
    },
    Operation {
        method: "get",
        path: "/api/messages",
        scope: Some("messages:read"),
        summary: "Search messages, newest first, keyset-paginated: {items, next}.",
        parameters: SEARCH,
        body: None,
    },
    Operation {
        method: "get",
        path: "/api/messages/{id}",
        scope: Some("messages:read"),
        summary: "One message: raw, ACK, HL7 tree with paths, deliveries (transformed content, attempts), audit. \
                  Records a read_content audit event.",
        parameters: &[("id", "path", "Message id (UUID).")],
        body: None,
    },
    Operation {
        method: "post",
        path: "/api/messages/{id}/replay",
        scope: Some("messages:replay"),
        summary: "Replay one message to all or some destinations: {replayed, skipped} delivery ids.",
        parameters: &[("id", "path", "Message id (UUID).")],
        body: Some("{\"destinations\": [\"name\"], \"reason\": \"text\"} (both optional)"),
    },
    Operation {
        method: "post",
        path: "/api/messages/replay",
        scope: Some("messages:replay"),
        summary: "Replay the oldest matches of a search in arrival order (at least one filter; max default 100, at most 1000).",
        parameters: &[],
        body: Some(
            "{\"channel\", \"state\", \"from\", \"to\", \"control_id\", \"mrn\", \"order_key\", \"type\", \"event\", \
             \"destinations\": [..], \"reason\", \"max\"}",
        ),
    },
    Operation {
        method: "get",
        path: "/api/dead-letters",
        scope: Some("messages:read"),
        summary: "Messages with a dead-lettered delivery, newest first: {items, next}.",
        parameters: &[
            ("channel", "query", "Channel name."),
            ("limit", "query", "Page size, 1 to 1000."),
            ("cursor", "query", "The `next` of the previous page."),
        ],
        body: None,
    },
    Operation {
        method: "get",
        path: "/api/openapi.json",
        scope: None,
        summary: "This document.",
        parameters: &[],
        body: None,
    },
];

/// Routes other modules serve on the API listener (`/api/health` and
/// `/metrics` from [`crate::metrics`], `/api/sync/*` from [`super::sync`]):
/// documented here so that one document describes the whole API; the
/// engine's end-to-end API test checks each is served.
const OTHER_OPERATIONS: &[Operation] = &[
    Operation {
        method: "get",
        path: "/api/health",
        scope: Some("messages:read"),
        summary: "Health per channel and destination over the health window (healthy, warning, critical). Any of \
                  the scopes messages:read, channels:admin or metrics.",
        parameters: &[],
        body: None,
    },
    Operation {
        method: "get",
        path: "/metrics",
        scope: Some("metrics"),
        summary: "Prometheus text format. Public when [api] metrics_public = true.",
        parameters: &[],
        body: None,
    },
    Operation {
        method: "get",
        path: "/api/sync/servers",
        scope: Some("sync"),
        summary: "The configured FHIR servers' names.",
        parameters: &[],
        body: None,
    },
    Operation {
        method: "get",
        path: "/api/sync/patients",
        scope: Some("sync"),
        summary: "Patient candidates on a source server.",
        parameters: &[
            ("source", "query", "A [fhir_servers] name."),
            ("family", "query", "Family name."),
            ("given", "query", "Given name."),
            ("birthdate", "query", "YYYY-MM-DD."),
            ("gender", "query", "Optional."),
            ("identifier", "query", "Optional, system|value."),
            ("limit", "query", "At most this many candidates (default 20)."),
        ],
        body: None,
    },
    Operation {
        method: "get",
        path: "/api/sync/jobs",
        scope: Some("sync"),
        summary: "Recent sync jobs, newest first.",
        parameters: &[("limit", "query", "How many."), ("before", "query", "Jobs created before this job id.")],
        body: None,
    },
    Operation {
        method: "post",
        path: "/api/sync/jobs",
        scope: Some("sync"),
        summary: "Start a patient sync job (202 with the job and its Location; runs in the background).",
        parameters: &[],
        body: Some("{\"source\", \"target\", \"patient\", \"resources\": [\"Observation\", ..]}"),
    },
    Operation {
        method: "get",
        path: "/api/sync/jobs/{id}",
        scope: Some("sync"),
        summary: "One sync job: status, progress, counts per resource type, report.",
        parameters: &[("id", "path", "Job id (UUID).")],
        body: None,
    },
];

/// The routes this module serves and documents, as `(method, path)`, for
/// tests.
pub fn documented() -> Vec<(&'static str, &'static str)> {
    OPERATIONS.iter().map(|o| (o.method, o.path)).collect()
}

/// The routes of other modules the document also describes, as
/// `(method, path)`, for tests.
pub fn documented_elsewhere() -> Vec<(&'static str, &'static str)> {
    OTHER_OPERATIONS.iter().map(|o| (o.method, o.path)).collect()
}

/// The OpenAPI document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for op in OPERATIONS.iter().chain(OTHER_OPERATIONS) {
        let parameters: Vec<Value> = op
            .parameters
            .iter()
            .map(|(name, location, description)| {
                json!({
                    "name": name, "in": location, "required": *location == "path",
                    "description": description, "schema": { "type": "string" }
                })
            })
            .collect();
        let mut responses = json!({
            "200": { "description": "OK", "content": { "application/json": { "schema": { "type": "object" } } } },
            "400": { "$ref": "#/components/responses/Problem" },
        });
        if op.scope.is_some() {
            responses["401"] = json!({ "$ref": "#/components/responses/Problem" });
            responses["403"] = json!({ "$ref": "#/components/responses/Problem" });
        }
        if op.path.contains('{') {
            responses["404"] = json!({ "$ref": "#/components/responses/Problem" });
        }
        let mut operation = json!({ "summary": op.summary, "parameters": parameters, "responses": responses });
        match op.scope {
            Some(scope) => {
                operation["security"] = json!([{ "bearer": [scope] }]);
                operation["x-required-scope"] = json!(scope);
            }
            None => operation["security"] = json!([]),
        }
        if let Some(body) = op.body {
            operation["requestBody"] = json!({
                "required": false, "description": body,
                "content": { "application/json": { "schema": { "type": "object" } } }
            });
        }
        let entry = paths.entry(op.path).or_insert_with(|| json!({}));
        entry[op.method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "Plexus API", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http", "scheme": "bearer",
                    "description": "An API token from `plexus token create`: plx_<id>_<secret>."
                }
            },
            "responses": {
                "Problem": {
                    "description": "An RFC 9457 problem.",
                    "content": { "application/problem+json": { "schema": {
                        "type": "object",
                        "properties": {
                            "type": { "type": "string" }, "title": { "type": "string" },
                            "status": { "type": "integer" }, "detail": { "type": "string" }
                        }
                    } } }
                }
            }
        }
    })
}

/// `GET /api/openapi.json`.
pub fn router() -> Router {
    Router::new().route("/api/openapi.json", get(|| async { Json(document()) }))
}

//! The web dashboard: static HTML, CSS and JavaScript served from the binary.
//!
//! The pages are plain ES modules with no build step (crates/engine/dashboard/);
//! they talk only to the JSON API under `/api` with the token the user pastes
//! in, so serving them needs no authentication and no state. [`router`] serves
//! `GET /` (the page shell) and `GET /ui/{file}` (its modules and styles).
//!
//! # Caching
//!
//! File names carry no content hash, so a browser must not keep a stale copy
//! after an upgrade: every answer says `Cache-Control: no-cache` with an
//! `ETag` taken from the file's SHA-256, and a matching `If-None-Match` gets
//! `304 Not Modified` without the body. Revalidating costs one small request
//! per file, which is nothing for a handful of files on an operator's screen.
//!
//! # Security headers
//!
//! The pages insert message contents (untrusted) into the DOM as text only; the
//! Content-Security-Policy is the second line of defence: scripts and styles
//! from this origin only, no inline script, no framing, requests to this
//! origin only.
//!
//! rust-embed compiles the files into the binary in every build (feature
//! `debug-embed`), so a debug binary run from a test or copied elsewhere
//! serves its own files, never those of whichever tree it was built from.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rust_embed::RustEmbed;

/// The dashboard's files.
#[derive(RustEmbed)]
#[folder = "dashboard/"]
struct Assets;

/// The page shell, served at `/`.
const INDEX: &str = "index.html";

/// Sent with every dashboard file; see the module documentation.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes: `GET /` and `GET /ui/{*file}` (HEAD too).
pub fn router() -> Router {
    Router::new()
        .route("/", get(|headers: HeaderMap| async move { asset(INDEX, &headers) }))
        .route("/ui", get(|headers: HeaderMap| async move { asset(INDEX, &headers) }))
        .route("/ui/", get(|headers: HeaderMap| async move { asset(INDEX, &headers) }))
        .route("/ui/{*file}", get(|Path(file): Path<String>, headers: HeaderMap| async move { asset(&file, &headers) }))
}

/// The answer for one file: the body with its type and cache headers, 304
/// when the browser's copy is current, 404 for anything else.
fn asset(file: &str, headers: &HeaderMap) -> Response {
    let Some(content_type) = content_type(file) else { return not_found() };
    if !is_plain_relative_path(file) {
        return not_found();
    }
    let Some(embedded) = Assets::get(file) else { return not_found() };
    let etag = etag(&embedded.metadata.sha256_hash());
    let mut response = if if_none_match_hits(headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = embedded.data.into_owned().into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

fn not_found() -> Response {
    let body = r#"{"type":"about:blank","title":"Not Found","status":404,"detail":"no such dashboard file"}"#;
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "application/problem+json")], body).into_response()
}

/// The media type of a dashboard file by its extension; `None` for kinds the
/// dashboard does not ship (so nothing else in the folder is ever served).
fn content_type(file: &str) -> Option<&'static str> {
    let ext = file.rsplit_once('.').map(|(_, e)| e)?;
    Some(match ext {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" => "application/json",
        _ => return None,
    })
}

/// Whether `file` names a file inside the dashboard folder: relative, no
/// `..`, no empty or hidden segments, no backslashes (defence in depth: the
/// embedded set holds only the folder's files).
fn is_plain_relative_path(file: &str) -> bool {
    !file.is_empty()
        && !file.contains('\\')
        && file.split('/').all(|segment| !segment.is_empty() && !segment.starts_with('.'))
}

/// A strong ETag from the file's SHA-256 (the first 16 bytes are plenty).
fn etag(sha256: &[u8; 32]) -> String {
    format!("\"{}\"", hex::encode(&sha256[..16]))
}

/// Whether the request's `If-None-Match` lists `etag` (or is `*`).
fn if_none_match_hits(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*")
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn get(uri: &str, if_none_match: Option<&str>) -> Response {
        let mut request = Request::get(uri);
        if let Some(tag) = if_none_match {
            request = request.header(header::IF_NONE_MATCH, tag);
        }
        router().oneshot(request.body(Body::empty()).unwrap()).await.unwrap()
    }

    async fn body_text(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn root_serves_the_page_shell_with_security_headers() {
        let response = get("/", None).await;
        assert_eq!(response.status(), StatusCode::OK);
        let h = response.headers();
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(h[header::CACHE_CONTROL], "no-cache");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(h[header::ETAG].to_str().unwrap().starts_with('"'));
        let html = body_text(response).await;
        assert!(html.contains(r#"<script type="module" src="/ui/app.js">"#), "{html}");
    }

    #[tokio::test]
    async fn modules_and_styles_have_their_types() {
        for (uri, expected) in [
            ("/ui/app.js", "text/javascript; charset=utf-8"),
            ("/ui/style.css", "text/css; charset=utf-8"),
            ("/ui/index.html", "text/html; charset=utf-8"),
        ] {
            let response = get(uri, None).await;
            assert_eq!(response.status(), StatusCode::OK, "{uri}");
            assert_eq!(response.headers()[header::CONTENT_TYPE], expected, "{uri}");
        }
    }

    #[tokio::test]
    async fn a_current_copy_gets_304_without_a_body() {
        let first = get("/ui/app.js", None).await;
        let etag = first.headers()[header::ETAG].to_str().unwrap().to_string();
        let again = get("/ui/app.js", Some(&etag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::ETAG].to_str().unwrap(), etag);
        assert!(body_text(again).await.is_empty());
        let stale = get("/ui/app.js", Some("\"0000\"")).await;
        assert_eq!(stale.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn unknown_hidden_and_escaping_paths_are_404() {
        for uri in [
            "/ui/nope.js",
            "/ui/../Cargo.toml",
            "/ui/..%2Fdashboard%2Fapp.js",
            "/ui/pages%2F..%2F..%2Fsrc%2Flib.js",
            "/ui/.hidden.js",
            "/ui/app.rs",
            "/ui/a//b.js",
        ] {
            let response = get(uri, None).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{uri}");
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json", "{uri}");
        }
    }

    #[test]
    fn paths_must_stay_inside_the_folder() {
        assert!(is_plain_relative_path("app.js"));
        assert!(is_plain_relative_path("pages/messages.js"));
        for bad in ["", "../x.js", "a/../../x.js", "/etc/x.js", ".env", "a\\b.js", "a//b.js"] {
            assert!(!is_plain_relative_path(bad), "{bad}");
        }
    }

    #[test]
    fn if_none_match_lists_and_weak_tags() {
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"a\", W/\"b\""));
        assert!(if_none_match_hits(&h, "\"b\""));
        assert!(!if_none_match_hits(&h, "\"c\""));
        assert!(!if_none_match_hits(&HeaderMap::new(), "\"a\""));
    }
}

//! The web console: its page and scripts, embedded in the binary at compile time and served at
//! `/` and `/console/{file}`, so that the one binary works offline with no asset folder.
//!
//! The page is static and public (a browser cannot send a Bearer token when it opens a URL);
//! everything it shows comes from the API routes, which ask for the key like any client.

use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Every file of `assets/`: name, content type, content.
const ASSETS: [(&str, &str, &str); 9] = [
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("assets/index.html"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    ),
    (
        "main.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/main.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/api.js"),
    ),
    (
        "classify.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/classify.js"),
    ),
    (
        "bucket.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/bucket.js"),
    ),
    (
        "models.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/models.js"),
    ),
    (
        "usage.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/usage.js"),
    ),
    (
        "chart.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/chart.js"),
    ),
];

/// Only the page's own scripts, no inline code, nothing from elsewhere: a photo or a label that
/// slipped markup into the page could not run it. `blob:` is how thumbnails fetched with the
/// API key and webcam captures are shown. Inline styles are allowed for one reason: a training
/// report fetched with the key is shown from a blob in a sandboxed frame, which inherits this
/// policy, and its charts are styled inline.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' blob: data:; \
     media-src 'self' blob: mediastream:; style-src 'self' 'unsafe-inline'; script-src 'self'; \
     connect-src 'self'; frame-src 'self' blob: data:; object-src 'none'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The console's page.
pub async fn index() -> Response {
    asset_response("index.html").unwrap_or_else(|e| e.into_response())
}

/// One of the console's scripts or its style sheet.
pub async fn asset(Path(name): Path<String>) -> Response {
    asset_response(&name).unwrap_or_else(|e| e.into_response())
}

fn asset_response(name: &str) -> Result<Response, ApiError> {
    let (_, content_type, content) = ASSETS
        .iter()
        .find(|(file, _, _)| *file == name)
        .ok_or_else(|| ApiError::NotFound(format!("the console has no file {name:?}")))?;
    let mut response = (*content).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The files change only with the binary; a short cache keeps an upgrade visible soon.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    Ok(response)
}

/// Whether `path` is one of the console's public files.
pub fn is_console_path(path: &str) -> bool {
    path == "/" || path.starts_with("/console/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_served_with_its_type_and_the_policy() {
        for (name, content_type, content) in ASSETS {
            assert!(!content.is_empty(), "{name}");
            let response = asset_response(name).unwrap();
            assert_eq!(response.headers()[header::CONTENT_TYPE], content_type);
            assert!(
                response
                    .headers()
                    .contains_key(header::CONTENT_SECURITY_POLICY)
            );
        }
        assert!(matches!(
            asset_response("../Cargo.toml"),
            Err(ApiError::NotFound(_))
        ));
    }

    #[test]
    fn the_page_loads_only_its_own_files() {
        let (_, _, page) = ASSETS[0];
        assert!(page.contains("/console/main.js"));
        for (name, _, content) in ASSETS {
            // The SVG namespace is a name, not an address the page loads.
            let content = content.replace("http://www.w3.org/", "");
            assert!(
                !content.contains("http://") && !content.contains("https://"),
                "{name} refers to another origin"
            );
        }
    }
}

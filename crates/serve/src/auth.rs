//! API keys: Bearer tokens checked in constant time on every route but health, ping, metrics
//! and the static pages (the docs and the web console); `/admin/*` is off without one.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// Paths anyone may call: orchestrators probe health, ping and metrics without credentials, and
/// a browser cannot send a Bearer token when it opens the docs page. That page is static (it
/// asks for the key and fetches the protected `/openapi.json` with it), so it reveals nothing.
const PUBLIC_PATHS: [&str; 5] = [
    "/ping",
    "/metrics",
    "/v2/health/live",
    "/v2/health/ready",
    "/docs",
];

/// Routes that change what the server serves: they need a key even where the data routes are
/// open, so a server started without keys cannot be re-pointed by whoever reaches its port.
const ADMIN_PREFIX: &str = "/admin/";

/// The accepted keys. Empty means the data routes are open and `/admin/*` is off, unless
/// [`ApiKeys::open_admin`] opened it.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Arc<Vec<Vec<u8>>>,
    open_admin: bool,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the keys themselves.
        write!(f, "ApiKeys({} keys)", self.keys.len())
    }
}

impl ApiKeys {
    /// Keys as given; surrounding blanks are dropped and empty ones ignored.
    pub fn new<S: AsRef<str>>(keys: &[S]) -> Self {
        Self {
            keys: Arc::new(
                keys.iter()
                    .map(|k| k.as_ref().trim())
                    .filter(|k| !k.is_empty())
                    .map(|k| k.as_bytes().to_vec())
                    .collect(),
            ),
            open_admin: false,
        }
    }

    /// Lets keyless callers use `/admin/*` when no key is configured (`--open-admin`: a
    /// workstation or a test, never a port others reach). With keys, admin routes need one.
    #[must_use]
    pub fn open_admin(mut self, open: bool) -> Self {
        self.open_admin = open;
        self
    }

    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Whether `candidate` is one of the keys. Every key is compared, each in constant time,
    /// so the answer takes as long whichever key (if any) matches and however much of it does.
    pub fn accepts(&self, candidate: &[u8]) -> bool {
        let mut matched = subtle::Choice::from(0);
        for key in self.keys.iter() {
            matched |= key.as_slice().ct_eq(candidate);
        }
        matched.into()
    }

    /// Whether `path` is an admin route closed for want of a key.
    pub fn admin_closed(&self, path: &str) -> bool {
        !self.is_enabled() && !self.open_admin && path.starts_with(ADMIN_PREFIX)
    }

    /// Whether `path` needs a key.
    pub fn protects(&self, path: &str) -> bool {
        // The console's page and scripts are static like the docs page: they ask for the key.
        self.is_enabled() && !PUBLIC_PATHS.contains(&path) && !crate::console::is_console_path(path)
    }
}

/// Middleware: rejects requests to protected paths without an accepted Bearer token.
pub async fn require_api_key(
    State(keys): State<ApiKeys>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if keys.admin_closed(request.uri().path()) {
        return Err(ApiError::AdminClosed);
    }
    if !keys.protects(request.uri().path()) {
        return Ok(next.run(request).await);
    }
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    match token {
        Some(token) if keys.accepts(token.as_bytes()) => Ok(next.run(request).await),
        _ => Err(ApiError::Unauthorized),
    }
}

/// Keys from `--api-key` values (each may be a comma-separated list) and from `--api-key-file`
/// contents (one key per line, `#` comments allowed).
pub fn collect_keys(values: &[String], file_contents: Option<&str>) -> Vec<String> {
    let from_values = values.iter().flat_map(|v| v.split(','));
    let from_file = file_contents
        .into_iter()
        .flat_map(str::lines)
        .filter(|line| !line.trim_start().starts_with('#'));
    from_values
        .chain(from_file)
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_listed_keys() {
        let keys = ApiKeys::new(&["alpha", " beta ", ""]);
        assert!(keys.accepts(b"alpha"));
        assert!(keys.accepts(b"beta"));
        assert!(!keys.accepts(b"alph"));
        assert!(!keys.accepts(b"alphaa"));
        assert!(!keys.accepts(b""));
    }

    #[test]
    fn health_ping_and_metrics_stay_public() {
        let keys = ApiKeys::new(&["k"]);
        for path in PUBLIC_PATHS {
            assert!(!keys.protects(path), "{path}");
        }
        assert!(keys.protects("/v1/classify"));
        assert!(keys.protects("/admin/reload"));
        assert!(!keys.protects("/") && !keys.protects("/console/main.js"));
        assert!(keys.protects("/v1/bucket/photos") && keys.protects("/v1/thumbnail"));
        assert!(!ApiKeys::new::<&str>(&[]).protects("/v1/classify"));
    }

    #[test]
    fn admin_routes_are_closed_without_a_key_unless_opened() {
        let keyless = ApiKeys::new::<&str>(&[]);
        assert!(keyless.admin_closed("/admin/reload"));
        assert!(keyless.admin_closed("/admin/models/animals/serve"));
        assert!(!keyless.admin_closed("/v1/classify") && !keyless.protects("/v1/classify"));
        assert!(
            !keyless
                .clone()
                .open_admin(true)
                .admin_closed("/admin/reload")
        );
        let keyed = ApiKeys::new(&["k"]);
        assert!(!keyed.admin_closed("/admin/reload") && keyed.protects("/admin/reload"));
        assert!(keyed.open_admin(true).protects("/admin/reload"));
    }

    #[test]
    fn keys_come_from_lists_and_files() {
        let keys = collect_keys(&["a,b".into(), " c ".into()], Some("# keys\nd\n\n e \n"));
        assert_eq!(keys, ["a", "b", "c", "d", "e"]);
    }
}

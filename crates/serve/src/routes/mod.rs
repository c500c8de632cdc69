//! The router: every route, and the layers around them (panics, CORS, metrics, auth, limits).

pub mod admin;
pub mod bucket;
pub mod docs;
pub mod explain;
pub mod native;
pub mod oip;
pub mod sagemaker;
pub mod versions;

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::{ApiKeys, require_api_key};
use crate::error::ApiError;
use crate::state::AppState;

/// Every route of the server with its layers.
pub fn router(state: AppState) -> Router {
    let keys = ApiKeys::new(&state.config.api_keys).open_admin(state.config.open_admin);
    // The routes that classify share the concurrency limit and the request timeout.
    let inference = Router::new()
        .route("/v1/classify", post(native::classify))
        .route("/v1/explain", post(explain::explain))
        .route("/invocations", post(sagemaker::invocations))
        .route("/v2/models/{name}/infer", post(oip::infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(oip::infer_version),
        )
        .route_layer(from_fn_with_state(state.clone(), limit_inference));
    // The console's files are text: gzip makes its first load a third of the bytes.
    let console = Router::new()
        .route("/", get(crate::console::index))
        .route("/console/{file}", get(crate::console::asset))
        .layer(CompressionLayer::new());
    let router = Router::new()
        .merge(inference)
        .merge(console)
        .route("/v1/models", get(native::list_models))
        .route("/v1/models/{name}", get(native::get_model))
        .route("/v1/models/{name}/versions", get(versions::list))
        .route(
            "/v1/models/{name}/versions/{version}",
            get(versions::detail),
        )
        .route(
            "/v1/models/{name}/versions/{version}/report",
            get(versions::report),
        )
        .route("/v1/bucket/folders", get(bucket::folders))
        .route("/v1/bucket/audit", get(bucket::audit))
        .route("/v1/bucket/photos", get(bucket::photos))
        .route("/v1/bucket/results", get(bucket::results))
        .route("/v1/thumbnail", get(bucket::thumbnail))
        .route("/v1/usage", get(native::usage))
        .route("/ping", get(sagemaker::ping))
        .route(
            "/execution-parameters",
            get(sagemaker::execution_parameters),
        )
        .route("/v2", get(oip::server_metadata))
        .route("/v2/health/live", get(oip::live))
        .route("/v2/health/ready", get(oip::ready))
        .route("/v2/models/{name}", get(oip::model_metadata))
        .route("/v2/models/{name}/ready", get(oip::model_ready))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(oip::model_version_metadata),
        )
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(oip::model_version_ready),
        )
        .route("/admin/reload", post(admin::reload))
        .route("/admin/models/{name}/serve", post(versions::serve))
        .route("/metrics", get(admin::metrics))
        .route("/openapi.json", get(docs::openapi))
        .route("/docs", get(docs::page))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone())
        // Bodies are read by `input::read_body` with this limit; axum's extractors get it too.
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(from_fn_with_state(keys, require_api_key))
        .layer(from_fn(observe));
    let router = match cors(&state.config.cors_allow_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.layer(CatchPanicLayer::custom(
        |_: Box<dyn std::any::Any + Send>| {
            ApiError::Internal("the request handler panicked".into()).into_response()
        },
    ))
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound(format!("no route {} (see /docs)", request.uri().path()))
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{} is not allowed on {}",
        request.method(),
        request.uri().path()
    ))
}

/// Counts every request by route and status, and times it.
async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |path| path.as_str())
        .to_string();
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    tracing::debug!(route, status, ms = elapsed.as_secs_f64() * 1e3, "request");
    crate::metrics::record_request(&route, status, elapsed);
    response
}

/// `--max-concurrent-requests` (429 beyond it, at once), the per-request timeout, and the
/// usage figures of answered requests.
async fn limit_inference(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let _slot = state.concurrency.clone().try_acquire_owned().map_err(|_| {
        ApiError::overloaded(format!(
            "{} requests are already being handled; retry shortly",
            state.config.max_concurrent_requests
        ))
    })?;
    let timeout = state.config.request_timeout;
    let started = Instant::now();
    let response = tokio::time::timeout(timeout, next.run(request))
        .await
        .map_err(|_| ApiError::Timeout(timeout))?;
    // Counted here, once for every inference API, from the first byte to the answer.
    if response.status().is_success() {
        state.usage.record_request(started.elapsed());
    }
    Ok(response)
}

fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|o| o.trim() == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim()).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT])
            .expose_headers([
                header::RETRY_AFTER,
                HeaderName::from_static("content-length"),
            ]),
    )
}

//! Operations routes: `POST /admin/reload` (pick up a new model version now) and the
//! Prometheus scrape `GET /metrics`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use metrics::gauge;

use crate::error::{ApiError, ErrorResponse};
use crate::metrics::{COST_PER_1000_IMAGES, COST_PER_VCPU_HOUR, CPU_SECONDS_PER_IMAGE, render};
use crate::model::ReloadOutcome;
use crate::state::AppState;

/// Check the model's `latest` pointer now and swap in a new version if there is one.
#[utoipa::path(
    post,
    path = "/admin/reload",
    tag = "admin",
    responses(
        (status = 200, description = "What the reload did", body = ReloadOutcome),
        (status = 401, body = ErrorResponse),
        (status = 403, description = "Off: the server has no API key and no --open-admin", body = ErrorResponse),
        (status = 500, description = "The new version could not be loaded; the old one still serves", body = ErrorResponse),
        (status = 503, body = ErrorResponse),
    ),
    security((), ("api_key" = []))
)]
pub async fn reload(State(state): State<AppState>) -> Result<Json<ReloadOutcome>, ApiError> {
    Ok(Json(state.models.reload().await?))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "monitoring",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"))
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let usage = state.usage_report();
    gauge!(CPU_SECONDS_PER_IMAGE).set(usage.cpu_seconds_per_image);
    gauge!(COST_PER_1000_IMAGES).set(usage.cost_per_1000_images_usd);
    gauge!(COST_PER_VCPU_HOUR).set(usage.cost_per_vcpu_hour_usd);
    let mut response = render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

//! The versions of the served model's folder, for the console: `GET /v1/models/{name}/versions`,
//! one version's history and evaluation, its HTML report, and `POST /admin/models/{name}/serve`
//! (swap to a chosen version).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bestiary_model::{DatasetInfo, ModelMetadata, ModelRepository};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorResponse};
use crate::model::ReloadOutcome;
use crate::state::AppState;

/// Versions listed at most, newest first.
const MAX_VERSIONS: usize = 200;
/// Largest `eval.json` or `metrics.jsonl` read for the console.
const MAX_FILE_BYTES: usize = 32 * 1024 * 1024;

/// One version of a model folder.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionSummary {
    pub version: String,
    pub created: String,
    pub architecture: String,
    /// Number of classes.
    pub classes: usize,
    pub metrics: BTreeMap<String, f64>,
    /// Whether it is the version served now.
    pub serving: bool,
}

/// The versions of the served model.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionList {
    pub name: String,
    /// The version served now.
    pub serving: String,
    /// Whether the server follows the folder's `latest` pointer.
    pub follows_latest: bool,
    /// Whether an operator chose a version, so that `latest` is not followed until asked.
    pub pinned: bool,
    pub latest: Option<String>,
    /// Newest first.
    pub versions: Vec<VersionSummary>,
}

/// One version in full: what it is, how training went, how it did on its validation photos.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionDetail {
    pub name: String,
    pub version: String,
    pub created: String,
    pub architecture: String,
    pub classes: Vec<String>,
    pub metrics: BTreeMap<String, f64>,
    #[schema(value_type = Option<Object>)]
    pub dataset: Option<DatasetInfo>,
    /// One object per epoch (`metrics.jsonl`): epoch, losses, accuracies, time.
    #[schema(value_type = Vec<Object>)]
    pub history: Vec<serde_json::Value>,
    /// `eval.json`: per-class figures, the confusion matrix and each validation photo's
    /// prediction; `null` when the version has none (the built-in model).
    #[schema(value_type = Option<Object>)]
    pub evaluation: Option<serde_json::Value>,
    /// Whether `report.html` exists (`GET …/report`).
    pub report: bool,
}

/// Which version to serve.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServeVersion {
    /// A version of the served model's folder, or `latest` to follow its pointer again.
    pub version: String,
}

/// The served model's folder, after checking that `name` is the served model.
pub async fn repository_of(
    state: &AppState,
    name: &str,
) -> Result<(ModelRepository, String), ApiError> {
    state.model_named(name, None)?;
    state.models.repository().await?.ok_or_else(|| {
        ApiError::NotFound(format!(
            "{name} is the built-in model: it has no model folder"
        ))
    })
}

fn summary(metadata: &ModelMetadata, serving: &str) -> VersionSummary {
    VersionSummary {
        version: metadata.version.clone(),
        created: metadata.created.clone(),
        architecture: metadata.architecture.clone(),
        classes: metadata.classes.len(),
        metrics: metadata.metrics.clone(),
        serving: metadata.version == serving,
    }
}

/// The versions of a served model's folder.
#[utoipa::path(
    get,
    path = "/v1/models/{name}/versions",
    tag = "models",
    params(("name" = String, Path, description = "Model name")),
    responses(
        (status = 200, body = VersionList),
        (status = 401, body = ErrorResponse),
        (status = 404, description = "No such model", body = ErrorResponse),
        (status = 503, description = "No model loaded yet", body = ErrorResponse),
    ),
    security((), ("api_key" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<VersionList>, ApiError> {
    let served = state.model_named(&name, None)?;
    let serving = served.version().to_string();
    let follows_latest = state.models.source().is_some_and(|s| s.follows_latest());
    let Some((repository, folder_name)) = state.models.repository().await? else {
        return Ok(Json(VersionList {
            name,
            serving: serving.clone(),
            follows_latest,
            pinned: false,
            latest: None,
            versions: vec![summary(&served.model.metadata, &serving)],
        }));
    };
    let unreadable = |e: bestiary_model::ModelError| {
        tracing::warn!("listing the versions of {folder_name}: {e}");
        ApiError::Internal(format!("the versions of {name} cannot be listed"))
    };
    let mut versions = repository
        .versions(&folder_name)
        .await
        .map_err(unreadable)?;
    // Version names start with their UTC time, so the newest sort last (to the second).
    versions.sort();
    versions.reverse();
    versions.truncate(MAX_VERSIONS);
    let mut summaries = Vec::with_capacity(versions.len());
    for version in &versions {
        match repository.metadata(&folder_name, version).await {
            Ok(metadata) => summaries.push(summary(&metadata, &serving)),
            // One damaged version must not hide the others.
            Err(e) => tracing::warn!("skipping version {version} of {folder_name}: {e}"),
        }
    }
    let latest = repository.latest(&folder_name).await.ok().flatten();
    // Newest first by commit time; names start with the time only to the second, so within a
    // second the one `latest` names comes first.
    let is_latest = |v: &VersionSummary| latest.as_deref() == Some(v.version.as_str());
    summaries.sort_by(|a, b| {
        b.created
            .cmp(&a.created)
            .then_with(|| is_latest(b).cmp(&is_latest(a)))
            .then_with(|| b.version.cmp(&a.version))
    });
    Ok(Json(VersionList {
        name,
        serving,
        follows_latest,
        pinned: state.models.is_pinned(),
        latest,
        versions: summaries,
    }))
}

/// A file of a version, `None` when it does not exist; too large is an error.
async fn optional_file(
    repository: &ModelRepository,
    name: &str,
    version: &str,
    file: &str,
) -> Result<Option<bytes::Bytes>, ApiError> {
    let key = format!("{name}/{version}/{file}");
    match repository.store().head(&key).await {
        Ok(info) if info.size as usize > MAX_FILE_BYTES => Err(ApiError::PayloadTooLarge(format!(
            "{file} of {name} {version} is larger than {MAX_FILE_BYTES} bytes"
        ))),
        Ok(_) => Ok(Some(repository.store().get(&key).await?)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// One version: metadata, training history, evaluation (confusion matrix, per-photo answers).
#[utoipa::path(
    get,
    path = "/v1/models/{name}/versions/{version}",
    tag = "models",
    params(
        ("name" = String, Path, description = "Model name"),
        ("version" = String, Path, description = "Version"),
    ),
    responses(
        (status = 200, body = VersionDetail),
        (status = 401, body = ErrorResponse),
        (status = 403, description = "Off: the server has no API key and no --open-admin", body = ErrorResponse),
        (status = 404, description = "No such model or version", body = ErrorResponse),
        (status = 503, description = "No model loaded yet", body = ErrorResponse),
    ),
    security((), ("api_key" = []))
)]
pub async fn detail(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<VersionDetail>, ApiError> {
    let served = state.model_named(&name, None)?;
    let Some((repository, folder_name)) = state.models.repository().await? else {
        if version != served.version() {
            return Err(ApiError::NotFound(format!(
                "the built-in model has only version {}",
                served.version()
            )));
        }
        let metadata = &served.model.metadata;
        return Ok(Json(VersionDetail {
            name,
            version,
            created: metadata.created.clone(),
            architecture: metadata.architecture.clone(),
            classes: metadata.classes.clone(),
            metrics: metadata.metrics.clone(),
            dataset: metadata.dataset.clone(),
            history: Vec::new(),
            evaluation: None,
            report: false,
        }));
    };
    check_version_name(&version)?;
    let metadata = repository
        .metadata(&folder_name, &version)
        .await
        .map_err(|_| ApiError::NotFound(format!("model {name} has no version {version:?}")))?;
    let history = match optional_file(&repository, &folder_name, &version, "metrics.jsonl").await? {
        Some(lines) => lines
            .split(|b| *b == b'\n')
            .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
            .filter_map(|line| serde_json::from_slice(line).ok())
            .collect(),
        None => Vec::new(),
    };
    let evaluation = match optional_file(&repository, &folder_name, &version, "eval.json").await? {
        Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::Internal(format!("eval.json of {name} {version} is unreadable: {e}"))
        })?),
        None => None,
    };
    let report = repository
        .store()
        .exists(&format!("{folder_name}/{version}/report.html"))
        .await?;
    Ok(Json(VersionDetail {
        name,
        version,
        created: metadata.created,
        architecture: metadata.architecture,
        classes: metadata.classes,
        metrics: metadata.metrics,
        dataset: metadata.dataset,
        history,
        evaluation,
        report,
    }))
}

fn check_version_name(version: &str) -> Result<(), ApiError> {
    if version.is_empty() || version.contains(['/', '\\']) || version.starts_with('.') {
        return Err(ApiError::BadRequest(format!(
            "{version:?} is not a version"
        )));
    }
    Ok(())
}

/// The training report of a version (HTML).
///
/// Served sandboxed (`Content-Security-Policy: sandbox`): a report is a file of the bucket,
/// so whatever it holds cannot run as this server's page.
#[utoipa::path(
    get,
    path = "/v1/models/{name}/versions/{version}/report",
    tag = "models",
    params(
        ("name" = String, Path, description = "Model name"),
        ("version" = String, Path, description = "Version"),
    ),
    responses(
        (status = 200, description = "The report", content_type = "text/html"),
        (status = 401, body = ErrorResponse),
        (status = 404, description = "No such model, version or report", body = ErrorResponse),
    ),
    security((), ("api_key" = []))
)]
pub async fn report(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (repository, folder_name) = repository_of(&state, &name).await?;
    check_version_name(&version)?;
    let html = optional_file(&repository, &folder_name, &version, "report.html")
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("{name} {version} has no report")))?;
    let mut response = html.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'",
        ),
    );
    Ok(response)
}

/// Serve another version of the model's folder now (a hot swap; `latest` follows the pointer
/// again). The old version serves until the new one is loaded and warm.
#[utoipa::path(
    post,
    path = "/admin/models/{name}/serve",
    tag = "admin",
    params(("name" = String, Path, description = "Model name")),
    request_body = ServeVersion,
    responses(
        (status = 200, description = "What the swap did", body = ReloadOutcome),
        (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 403, description = "Off: the server has no API key and no --open-admin", body = ErrorResponse),
        (status = 404, description = "No such model or version", body = ErrorResponse),
        (status = 500, description = "The version could not be loaded; the old one still serves", body = ErrorResponse),
    ),
    security((), ("api_key" = []))
)]
pub async fn serve(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<ServeVersion>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<ReloadOutcome>, ApiError> {
    let Json(ServeVersion { version }) =
        body.map_err(|e| ApiError::BadRequest(format!("invalid body: {}", e.body_text())))?;
    state.model_named(&name, None)?;
    check_version_name(&version)?;
    Ok(Json(state.models.serve_version(&version).await?))
}

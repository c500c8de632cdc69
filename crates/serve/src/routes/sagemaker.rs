//! The SageMaker hosting contract: `GET /ping`, `POST /invocations` and, for batch transform,
//! `GET /execution-parameters`; and the rule that tells a SageMaker container apart.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::classify::classify_images;
use crate::error::{ApiError, ErrorResponse};
use crate::input::{BodyKind, accepts_json_lines, read_images};
use crate::routes::native::{ClassifyQuery, query};
use crate::state::AppState;

/// The port SageMaker sends requests to unless `SAGEMAKER_BIND_TO_PORT` says otherwise.
pub const SAGEMAKER_DEFAULT_PORT: u16 = 8080;

/// Whether this process runs inside a SageMaker container, and the address it must listen on.
///
/// The rule: SageMaker is recognised by any environment variable starting with `SAGEMAKER_`
/// or `SM_` (hosting sets `SAGEMAKER_BIND_TO_PORT` in multi-container endpoints; training and
/// processing containers set `SM_*`), or by the `/opt/ml` folder every SageMaker container has.
/// There the server listens on all interfaces, on `SAGEMAKER_BIND_TO_PORT` or else 8080.
pub fn sagemaker_address(env: &HashMap<String, String>, opt_ml_exists: bool) -> Option<SocketAddr> {
    let in_sagemaker = opt_ml_exists
        || env
            .keys()
            .any(|k| k.starts_with("SAGEMAKER_") || k.starts_with("SM_"));
    if !in_sagemaker {
        return None;
    }
    let port = env
        .get("SAGEMAKER_BIND_TO_PORT")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(SAGEMAKER_DEFAULT_PORT);
    Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
}

/// [`sagemaker_address`] for this process.
pub fn detect_sagemaker() -> Option<SocketAddr> {
    let env: HashMap<String, String> = std::env::vars().collect();
    sagemaker_address(&env, Path::new("/opt/ml").is_dir())
}

/// Where SageMaker hosting unpacks the model artifact (`model.tar.gz`).
pub const SAGEMAKER_MODEL_DIR: &str = "/opt/ml/model";

/// The model URL to serve from an unpacked SageMaker model artifact, or `None` when `dir` does
/// not exist. Accepted layouts (what `bestiary package` and a SageMaker training job write, and
/// what a user may tar by hand):
/// - a version folder: `dir/model.json` (+ `model.onnx`, …);
/// - one model's folder: `dir/latest` and `dir/<version>/…`;
/// - a model root holding one model: `dir/<name>/latest` (or a single `dir/<name>/<version>/`).
///
/// # Errors
/// A message naming what was found when `dir` exists but holds no model, or several.
pub fn model_in_artifact(dir: &Path) -> Result<Option<String>, String> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let shown = dir.display();
    if dir.join("model.json").is_file() || dir.join("latest").is_file() {
        return Ok(Some(dir.to_string_lossy().into_owned()));
    }
    let folders = |path: &Path| -> Vec<std::path::PathBuf> {
        let mut found: Vec<_> = std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.is_dir())
            .collect();
        found.sort();
        found
    };
    let models: Vec<_> = folders(dir)
        .into_iter()
        .filter(|model| {
            model.join("latest").is_file()
                || folders(model)
                    .iter()
                    .any(|version| version.join("model.json").is_file())
        })
        .collect();
    match models.as_slice() {
        [model] if model.join("latest").is_file() => Ok(Some(model.to_string_lossy().into_owned())),
        [model] => {
            let versions: Vec<_> = folders(model)
                .into_iter()
                .filter(|version| version.join("model.json").is_file())
                .collect();
            match versions.as_slice() {
                [version] => Ok(Some(version.to_string_lossy().into_owned())),
                _ => Err(format!(
                    "{} has {} versions and no `latest` pointer; name one with --model",
                    model.display(),
                    versions.len()
                )),
            }
        }
        [] => Err(format!(
            "{shown} holds no Bestiary model (model.json, latest, or <name>/latest); package one \
             with `bestiary package`"
        )),
        several => Err(format!(
            "{shown} holds {} models ({}); name one with --model",
            several.len(),
            several
                .iter()
                .filter_map(|m| m.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The batch-transform settings SageMaker passes to a container as environment variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchEnvironment {
    /// `SAGEMAKER_BATCH=true`: the container runs a batch-transform job.
    pub batch: bool,
    /// `SAGEMAKER_MAX_PAYLOAD_IN_MB`: the largest request body SageMaker will send.
    pub max_payload_mb: Option<usize>,
    /// `SAGEMAKER_BATCH_STRATEGY`: `SINGLE_RECORD` or `MULTI_RECORD`.
    pub batch_strategy: Option<String>,
    /// `SAGEMAKER_MAX_CONCURRENT_TRANSFORMS`: requests SageMaker sends at once.
    pub max_concurrent_transforms: Option<usize>,
    /// `SAGEMAKER_MODEL_SERVER_TIMEOUT`: seconds one invocation may take.
    pub model_server_timeout: Option<u64>,
}

impl BatchEnvironment {
    /// Reads the variables; a malformed value is an error naming it (SageMaker sets them, so a
    /// bad one is a configuration mistake to report, not to guess around).
    pub fn from_env(env: &HashMap<String, String>) -> Result<Self, String> {
        fn number<T: std::str::FromStr>(
            env: &HashMap<String, String>,
            name: &str,
        ) -> Result<Option<T>, String> {
            env.get(name)
                .map(|value| {
                    value.trim().parse().map_err(|_| {
                        format!("{name} must be a whole positive number, got {value:?}")
                    })
                })
                .transpose()
        }
        let batch_strategy = match env.get("SAGEMAKER_BATCH_STRATEGY") {
            None => None,
            Some(value) => match value.trim().to_ascii_uppercase().as_str() {
                strategy @ ("SINGLE_RECORD" | "MULTI_RECORD") => Some(strategy.to_string()),
                _ => {
                    return Err(format!(
                        "SAGEMAKER_BATCH_STRATEGY must be SINGLE_RECORD or MULTI_RECORD, got {value:?}"
                    ));
                }
            },
        };
        let batch = env
            .get("SAGEMAKER_BATCH")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let settings = Self {
            batch,
            max_payload_mb: number(env, "SAGEMAKER_MAX_PAYLOAD_IN_MB")?,
            batch_strategy,
            max_concurrent_transforms: number(env, "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS")?,
            model_server_timeout: number(env, "SAGEMAKER_MODEL_SERVER_TIMEOUT")?,
        };
        if settings.max_payload_mb == Some(0) || settings.max_concurrent_transforms == Some(0) {
            return Err("SageMaker batch settings must be positive".into());
        }
        Ok(settings)
    }

    /// Makes `config` accept what SageMaker will send: bodies up to the payload limit, that many
    /// concurrent requests, and (in batch transform, whose invocations may run for minutes) the
    /// model-server timeout, 600 s by default as in `InvocationsTimeoutInSeconds`. Settings
    /// already larger are kept.
    pub fn apply(&self, config: &mut crate::ServeConfig) {
        if let Some(mb) = self.max_payload_mb {
            config.max_body_bytes = config.max_body_bytes.max(mb.saturating_mul(1024 * 1024));
        }
        if let Some(n) = self.max_concurrent_transforms {
            config.max_concurrent_requests = config.max_concurrent_requests.max(n);
            config.max_queue = config.max_queue.max(n);
        }
        let timeout = match (self.model_server_timeout, self.batch) {
            (Some(seconds), _) => Some(seconds),
            (None, true) => Some(600),
            (None, false) => None,
        };
        if let Some(seconds) = timeout {
            config.request_timeout = config
                .request_timeout
                .max(std::time::Duration::from_secs(seconds));
        }
        config.sagemaker_batch = self.clone();
    }
}

/// SageMaker's answer for one image.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Invocation {
    /// Probability of every label, in the order of `labels`.
    pub prediction: Vec<f32>,
    pub labels: Vec<String>,
    /// The most probable label, or `unknown` when the model's detector rejects the photo.
    pub predicted_label: String,
    /// Whether the photo is none of the model's classes (absent for a model without a detector).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<bool>,
    /// The detector's score: higher is more like the training photos.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_score: Option<f32>,
}

/// Batch transform settings SageMaker asks for before sending records.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct ExecutionParameters {
    pub max_concurrent_transforms: usize,
    pub batch_strategy: String,
    #[serde(rename = "MaxPayloadInMB")]
    pub max_payload_in_mb: usize,
}

/// Health check: 200 once the model is loaded, 503 before.
#[utoipa::path(
    get,
    path = "/ping",
    tag = "sagemaker",
    responses(
        (status = 200, description = "Ready"),
        (status = 503, description = "No model loaded yet", body = ErrorResponse),
    )
)]
pub async fn ping(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.model()?;
    Ok(Json(serde_json::json!({ "status": "healthy" })))
}

/// Classify for SageMaker endpoints and batch transform.
///
/// The same bodies as `/v1/classify`, plus JSON Lines records (`{"source-ref": uri}`,
/// `{"b64": data}`) for batch transform. A raw photo gets one JSON object; multipart and
/// `{"uris": [...]}` bodies get a JSON array (one element per image, whatever their number);
/// JSON Lines in, or `Accept: application/jsonlines`, gets one line per image.
#[utoipa::path(
    post,
    path = "/invocations",
    tag = "sagemaker",
    params(ClassifyQuery),
    request_body(
        description = "A photo, a multipart form of photos, {\"uris\": [...]}, or JSON Lines records",
        content(
            (Vec<u8> = "image/jpeg"),
            (Vec<u8> = "application/x-image"),
            (Vec<u8> = "multipart/form-data"),
            (crate::input::UriRequest = "application/json"),
            (String = "application/jsonlines"),
        )
    ),
    responses(
        (status = 200, description = "Probabilities and labels", body = Invocation),
        (status = 400, body = ErrorResponse),
        (status = 401, description = "Missing or wrong API key", body = ErrorResponse),
        (status = 403, description = "A URI outside the bucket and --allow-uri-prefix", body = ErrorResponse),
        (status = 404, description = "A URI names no object", body = ErrorResponse),
        (status = 413, body = ErrorResponse),
        (status = 415, body = ErrorResponse),
        (status = 422, body = ErrorResponse),
        (status = 429, body = ErrorResponse),
        (status = 502, description = "The bucket could not be read", body = ErrorResponse),
        (status = 503, body = ErrorResponse),
    ),
    security((), ("api_key" = []))
)]
pub async fn invocations(
    State(state): State<AppState>,
    query_string: Result<Query<ClassifyQuery>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let top_k = state.top_k(query(query_string)?.top_k)?;
    state.model()?;
    let wants_lines = accepts_json_lines(request.headers());
    let (kind, images) = read_images(request, state.config.max_body_bytes, &state.uris).await?;
    // A raw body holds one photo by definition; the other bodies answer as a list.
    let single = kind == BodyKind::Image;
    let classification = classify_images(&state, images, top_k).await?;
    let labels = &classification.model.model.metadata.classes;
    let answers: Vec<Invocation> = classification
        .images
        .iter()
        .map(|image| Invocation {
            prediction: image.classified.prediction.probabilities.clone(),
            labels: labels.clone(),
            predicted_label: image.classified.prediction.label.clone(),
            unknown: image.classified.prediction.unknown,
            unknown_score: image.classified.prediction.unknown_score,
        })
        .collect();
    if wants_lines || kind == BodyKind::JsonLines {
        let mut body = Vec::new();
        for answer in &answers {
            serde_json::to_writer(&mut body, answer).expect("answers serialise");
            body.push(b'\n');
        }
        let mut response = Body::from(body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/jsonlines"),
        );
        return Ok(response);
    }
    if single {
        Ok(Json(answers.into_iter().next().expect("one image")).into_response())
    } else {
        Ok(Json(answers).into_response())
    }
}

/// Batch transform settings: how many requests at once, multi-record batches, payload limit.
#[utoipa::path(
    get,
    path = "/execution-parameters",
    tag = "sagemaker",
    responses((status = 200, body = ExecutionParameters)),
    security((), ("api_key" = []))
)]
pub async fn execution_parameters(State(state): State<AppState>) -> Json<ExecutionParameters> {
    let config = &state.config;
    // What SageMaker already set for this job wins: the answer must agree with it.
    let batch = &config.sagemaker_batch;
    Json(ExecutionParameters {
        // Enough requests to fill a batch (or, unbatched, to decode while another image runs),
        // no more than the server admits at once.
        max_concurrent_transforms: batch.max_concurrent_transforms.unwrap_or_else(|| {
            config
                .max_batch_size
                .unwrap_or(4)
                .min(config.max_concurrent_requests)
                .max(1)
        }),
        batch_strategy: batch
            .batch_strategy
            .clone()
            .unwrap_or_else(|| "MULTI_RECORD".into()),
        // SageMaker accepts whole megabytes from 1 to 100.
        max_payload_in_mb: batch
            .max_payload_mb
            .unwrap_or(config.max_body_bytes / (1024 * 1024))
            .clamp(1, 100),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_model_is_found_in_every_artifact_layout() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("model");
        assert_eq!(
            model_in_artifact(&dir),
            Ok(None),
            "absent: not SageMaker hosting"
        );
        std::fs::create_dir_all(&dir).unwrap();
        let error = model_in_artifact(&dir).unwrap_err();
        assert!(error.contains("holds no Bestiary model"), "{error}");

        // <name>/<version> without a pointer: the one version.
        let version = dir.join("animals/20260101-000000-abcd");
        std::fs::create_dir_all(&version).unwrap();
        std::fs::write(version.join("model.json"), "{}").unwrap();
        let found = model_in_artifact(&dir).unwrap().unwrap();
        assert_eq!(found, version.to_string_lossy());
        // Two versions and no pointer: ambiguous.
        let second = dir.join("animals/20260102-000000-abcd");
        std::fs::create_dir_all(&second).unwrap();
        std::fs::write(second.join("model.json"), "{}").unwrap();
        assert!(model_in_artifact(&dir).unwrap_err().contains("2 versions"));
        // <name>/latest: the model's folder, whose pointer picks the version.
        std::fs::write(dir.join("animals/latest"), "{}").unwrap();
        let found = model_in_artifact(&dir).unwrap().unwrap();
        assert_eq!(found, dir.join("animals").to_string_lossy());
        // Two models: name one.
        std::fs::create_dir_all(dir.join("birds")).unwrap();
        std::fs::write(dir.join("birds/latest"), "{}").unwrap();
        let error = model_in_artifact(&dir).unwrap_err();
        assert!(error.contains("2 models (animals, birds)"), "{error}");

        // A version folder unpacked directly.
        let flat = root.path().join("flat");
        std::fs::create_dir_all(&flat).unwrap();
        std::fs::write(flat.join("model.json"), "{}").unwrap();
        assert_eq!(
            model_in_artifact(&flat).unwrap().unwrap(),
            flat.to_string_lossy()
        );
    }

    #[test]
    fn batch_transform_variables_widen_the_limits() {
        let settings = BatchEnvironment::from_env(&env(&[
            ("SAGEMAKER_BATCH", "true"),
            ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "64"),
            ("SAGEMAKER_BATCH_STRATEGY", "single_record"),
            ("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", "1024"),
        ]))
        .unwrap();
        assert_eq!(settings.batch_strategy.as_deref(), Some("SINGLE_RECORD"));
        let mut config = crate::ServeConfig::default();
        settings.apply(&mut config);
        assert_eq!(config.max_body_bytes, 64 * 1024 * 1024);
        assert_eq!(config.max_concurrent_requests, 1024);
        assert!(config.max_queue >= 1024);
        assert_eq!(config.request_timeout, std::time::Duration::from_secs(600));
        assert_eq!(config.sagemaker_batch, settings);
        // Larger settings of the server's own stay.
        let small =
            BatchEnvironment::from_env(&env(&[("SAGEMAKER_MAX_PAYLOAD_IN_MB", "1")])).unwrap();
        let mut config = crate::ServeConfig::default();
        small.apply(&mut config);
        assert_eq!(config.max_body_bytes, 32 * 1024 * 1024);
        assert_eq!(config.request_timeout, std::time::Duration::from_secs(30));

        for bad in [
            ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "six"),
            ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "0"),
            ("SAGEMAKER_BATCH_STRATEGY", "ALL"),
        ] {
            let error = BatchEnvironment::from_env(&env(&[bad])).unwrap_err();
            assert!(
                error.contains("SAGEMAKER_") || error.contains("positive"),
                "{error}"
            );
        }
    }

    #[test]
    fn sagemaker_is_recognised_by_its_variables_or_folder() {
        assert_eq!(sagemaker_address(&env(&[("HOME", "/root")]), false), None);
        assert_eq!(
            sagemaker_address(&env(&[("SAGEMAKER_BIND_TO_PORT", "9090")]), false),
            Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 9090)))
        );
        assert_eq!(
            sagemaker_address(&env(&[("SM_MODEL_DIR", "/opt/ml/model")]), false),
            Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8080)))
        );
        assert_eq!(
            sagemaker_address(&env(&[]), true),
            Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8080)))
        );
    }
}

//! The bucket for the web console: `GET /v1/bucket/folders`, `/v1/bucket/photos` (a paged
//! gallery with predictions), `/v1/bucket/results` (a `classify` run's JSON Lines) and
//! `/v1/thumbnail`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bestiary_storage::{Store, StoreOptions, StoreUrl};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorResponse};
use crate::gallery::{GalleryPhoto, MAX_TOP_K, PhotoError, is_photo_key};
use crate::routes::native::{LabelScore, query};
use crate::state::AppState;
use crate::thumbnail::{DEFAULT_SIZE, SIZES, ThumbnailKey, render};

/// Sub-folders returned at most: a bucket with more is browsed by typing a prefix.
const MAX_FOLDERS: usize = 1000;
const DEFAULT_PAGE: usize = 48;
const MAX_PAGE: usize = 200;
/// Keys looked at per gallery request at most, so that a filter matching nothing in 100,000
/// photos answers in bounded time; the client continues from `next_after`.
const SCAN_BUDGET: usize = 400;

#[derive(Debug, Deserialize, IntoParams)]
pub struct FoldersQuery {
    /// A folder of the bucket (`animals/cat/`); empty for its root.
    pub prefix: Option<String>,
}

/// The sub-folders of a prefix.
#[derive(Debug, Serialize, ToSchema)]
pub struct FolderList {
    /// What the bucket is: `local folder`, or its `s3://`, `gs://`, `az://` URL.
    pub bucket: String,
    pub prefix: String,
    /// Bucket-relative prefixes, each ending in `/`, sorted.
    pub folders: Vec<String>,
    /// Whether there were more than could be listed.
    pub truncated: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct PhotosQuery {
    /// A folder of the bucket; photos below it are listed, sub-folders included.
    pub prefix: Option<String>,
    /// Continue after this key (`next_after` of the previous page).
    pub after: Option<String>,
    /// Photos per page (1–200, default 48).
    pub limit: Option<usize>,
    /// Only photos predicted as this label.
    pub label: Option<String>,
    /// Only photos whose top score is below this (0–1): the ones to check.
    pub max_score: Option<f32>,
    /// Labels listed per photo (1–10, default 3).
    pub top_k: Option<usize>,
}

/// One page of the gallery.
#[derive(Debug, Serialize, ToSchema)]
pub struct PhotoPage {
    pub prefix: String,
    pub model: String,
    pub version: String,
    pub items: Vec<GalleryPhoto>,
    /// Where the next page starts; `null` at the end. With a filter a page may hold fewer
    /// photos than asked (even none) and still have a next one.
    pub next_after: Option<String>,
    /// Keys looked at for this page.
    pub scanned: usize,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ResultsQuery {
    /// A `.jsonl` object of the bucket, or a folder holding a `classify --out` run's parts.
    pub prefix: String,
    /// Records of the (filtered) list to skip.
    pub offset: Option<usize>,
    /// Records per page (1–200, default 48).
    pub limit: Option<usize>,
    /// Only records counted under this label (or `error:<code>`).
    pub label: Option<String>,
    /// Only records whose score is below this (0–1).
    pub max_score: Option<f32>,
}

/// One classified photo of a run.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResultItem {
    pub key: String,
    pub url: String,
    /// The photo's key in the server's bucket, for `/v1/thumbnail`; `null` outside it.
    pub bucket_key: Option<String>,
    pub label: Option<String>,
    pub score: Option<f32>,
    pub top_k: Vec<LabelScore>,
    pub error: Option<PhotoError>,
    pub model: String,
    pub model_version: String,
}

/// A page of a run's results, with the counts of the whole run.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResultsPage {
    pub prefix: String,
    /// JSON Lines objects read.
    pub parts: usize,
    /// Records in the run.
    pub total: usize,
    /// Records per label, errors as `error:<code>`.
    pub counts: BTreeMap<String, usize>,
    /// Records the filters keep.
    pub matching: usize,
    pub items: Vec<ResultItem>,
    /// `offset` of the next page; `null` at the end.
    pub next_offset: Option<usize>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ThumbnailQuery {
    /// A key of the bucket, or with `model` and `version` a photo id of that version's
    /// evaluation (read from the dataset it was trained on).
    pub key: String,
    /// Longest side in pixels (16–1024, default 256); photos are never enlarged.
    pub size: Option<u32>,
    pub model: Option<String>,
    pub version: Option<String>,
}

/// Checks a client's prefix: relative to the bucket, no way out of it.
fn bucket_prefix(prefix: Option<&str>) -> Result<String, ApiError> {
    let prefix = prefix.unwrap_or_default().trim();
    if prefix.starts_with('/') || prefix.starts_with('\\') || prefix.contains("://") {
        return Err(ApiError::BadRequest(format!(
            "{prefix:?} is not a folder relative to the bucket"
        )));
    }
    if prefix.split('/').any(|segment| segment == "..") {
        return Err(ApiError::BadRequest(format!(
            "{prefix:?} must not contain `..`"
        )));
    }
    Ok(prefix.to_string())
}

fn page_size(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        n if (1..=MAX_PAGE).contains(&n) => Ok(n),
        n => Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}, got {n}"
        ))),
    }
}

fn score_filter(max_score: Option<f32>) -> Result<Option<f32>, ApiError> {
    match max_score {
        Some(s) if !(0.0..=1.0).contains(&s) => Err(ApiError::BadRequest(format!(
            "max_score must be between 0 and 1, got {s}"
        ))),
        other => Ok(other),
    }
}

/// What the bucket is, without the server's own paths.
fn describe_bucket(bucket: &Store) -> String {
    match bucket.url() {
        StoreUrl::Local { .. } => "local folder".into(),
        other => other.display(),
    }
}

/// Where `bestiary dataset audit --out <folder>` writes its report.
const AUDIT_FILE: &str = "audit.json";

/// The dataset audit of a bucket folder, as `bestiary dataset audit --out` stored it there.
#[derive(Serialize, ToSchema)]
pub struct AuditAnswer {
    /// The folder, relative to the bucket, as asked.
    pub prefix: String,
    /// `audit.json` as written: summary, per-class figures, suspects (key, label,
    /// suggested_label, score, reason) and duplicate groups.
    #[schema(value_type = Object)]
    pub audit: serde_json::Value,
}

/// The dataset audit stored in a bucket folder (`bestiary dataset audit <data> --out
/// <folder>`), for the console to show beside the folder's photos.
#[utoipa::path(
    get,
    path = "/v1/bucket/audit",
    tag = "bucket",
    params(FoldersQuery),
    responses(
        (status = 200, body = AuditAnswer),
        (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 404, description = "The folder holds no audit.json", body = ErrorResponse),
        (status = 502, description = "The bucket failed", body = ErrorResponse),
    ),
    security((), ("api_key" = []))
)]
pub async fn audit(
    State(state): State<AppState>,
    query_string: Result<Query<FoldersQuery>, QueryRejection>,
) -> Result<Json<AuditAnswer>, ApiError> {
    let prefix = bucket_prefix(query(query_string)?.prefix.as_deref())?;
    let base = prefix.trim_matches('/');
    let key = if base.is_empty() {
        AUDIT_FILE.to_owned()
    } else {
        format!("{base}/{AUDIT_FILE}")
    };
    let bytes =
        state.uris.bucket().get(&key).await.map_err(|error| {
            hide_location(error, &key, format!("no dataset audit in {prefix:?}"))
        })?;
    let audit = serde_json::from_slice(&bytes)
        .map_err(|error| ApiError::BadRequest(format!("{key} is not a dataset audit: {error}")))?;
    Ok(Json(AuditAnswer { prefix, audit }))
}

/// The sub-folders of a bucket prefix.
#[utoipa::path(
    get,
    path = "/v1/bucket/folders",
    tag = "bucket",
    params(FoldersQuery),
    responses(
        (status = 200, body = FolderList),
        (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 502, description = "The bucket failed", body = ErrorResponse),
    ),
    security((), ("api_key" = []))
)]
pub async fn folders(
    State(state): State<AppState>,
    query_string: Result<Query<FoldersQuery>, QueryRejection>,
) -> Result<Json<FolderList>, ApiError> {
    let prefix = bucket_prefix(query(query_string)?.prefix.as_deref())?;
    let bucket = state.uris.bucket();
    let mut names = bucket.list_folders(&prefix).await?;
    let truncated = names.len() > MAX_FOLDERS;
    names.truncate(MAX_FOLDERS);
    let base = prefix.trim_matches('/');
    let folders = names
        .into_iter()
        .map(|name| {
            if base.is_empty() {
                format!("{name}/")
            } else {
                format!("{base}/{name}/")
            }
        })
        .collect();
    Ok(Json(FolderList {
        bucket: describe_bucket(bucket),
        prefix,
        folders,
        truncated,
    }))
}

/// A page of the photos below a prefix, each with the served model's prediction.
///
/// Photos are listed in key order and classified as the page is asked for (predictions are
/// cached per model version and photo content), so any prefix can be browsed without
/// classifying it first.
#[utoipa::path(
    get,
    path = "/v1/bucket/photos",
    tag = "bucket",
    params(PhotosQuery),
    responses(
        (status = 200, body = PhotoPage),
        (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 429, description = "Overloaded; see Retry-After", body = ErrorResponse),
        (status = 502, description = "The bucket failed", body = ErrorResponse),
        (status = 503, description = "No model loaded yet", body = ErrorResponse),
    ),
    security((), ("api_key" = []))
)]
pub async fn photos(
    State(state): State<AppState>,
    query_string: Result<Query<PhotosQuery>, QueryRejection>,
) -> Result<Json<PhotoPage>, ApiError> {
    let q = query(query_string)?;
    let prefix = bucket_prefix(q.prefix.as_deref())?;
    let limit = page_size(q.limit)?;
    let max_score = score_filter(q.max_score)?;
    let top_k = match q.top_k.unwrap_or(3) {
        k if (1..=MAX_TOP_K).contains(&k) => k,
        k => {
            return Err(ApiError::BadRequest(format!(
                "top_k must be between 1 and {MAX_TOP_K}, got {k}"
            )));
        }
    };
    let model = state.model()?;
    let bucket = state.uris.bucket();
    let keeps = |photo: &GalleryPhoto| {
        let label_ok = q
            .label
            .as_ref()
            .is_none_or(|want| photo.label.as_ref() == Some(want));
        let score_ok = max_score.is_none_or(|max| photo.score.is_some_and(|s| s < max));
        label_ok && score_ok
    };
    let mut items = Vec::new();
    let mut after = q.after.clone();
    let mut scanned = 0;
    let next_after = loop {
        // Small steps when filtering: what is listed past the last photo kept is wasted.
        let step = (limit - items.len())
            .clamp(16, MAX_PAGE)
            .min(SCAN_BUDGET - scanned);
        let page = bucket.list_page(&prefix, after.as_deref(), step).await?;
        let photos: Vec<_> = page
            .objects
            .iter()
            .filter(|o| is_photo_key(&o.key))
            .cloned()
            .collect();
        let predicted = state.gallery.predict(&state, bucket, &photos).await?;
        let mut predictions = photos.iter().zip(&predicted);
        let mut full_at = None;
        for object in &page.objects {
            scanned += 1;
            if is_photo_key(&object.key) {
                let (photo, predicted) = predictions.next().expect("one prediction per photo");
                let item = GalleryPhoto::new(photo, predicted, top_k);
                if keeps(&item) {
                    items.push(item);
                }
            }
            if items.len() == limit {
                full_at = Some(object.key.clone());
                break;
            }
        }
        if let Some(key) = full_at {
            // The page is full; the next one starts after its last photo, unless the
            // listing ended with it.
            let is_last =
                page.next_after.is_none() && page.objects.last().map(|o| &o.key) == Some(&key);
            break (!is_last).then_some(key);
        }
        match page.next_after {
            None => break None,
            Some(next) if scanned >= SCAN_BUDGET => break Some(next),
            Some(next) => after = Some(next),
        }
    };
    Ok(Json(PhotoPage {
        prefix,
        model: model.name().to_string(),
        version: model.version().to_string(),
        items,
        next_after,
        scanned,
    }))
}

/// A page of the results of a `bestiary classify` run, with per-label counts of the run.
#[utoipa::path(
    get,
    path = "/v1/bucket/results",
    tag = "bucket",
    params(ResultsQuery),
    responses(
        (status = 200, body = ResultsPage),
        (status = 400, description = "Not a run's JSON Lines", body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 404, description = "No results there", body = ErrorResponse),
        (status = 413, description = "Too many results to open at once", body = ErrorResponse),
        (status = 502, description = "The bucket failed", body = ErrorResponse),
    ),
    security((), ("api_key" = []))
)]
pub async fn results(
    State(state): State<AppState>,
    query_string: Result<Query<ResultsQuery>, QueryRejection>,
) -> Result<Json<ResultsPage>, ApiError> {
    let q = query(query_string)?;
    let prefix = bucket_prefix(Some(&q.prefix))?;
    let limit = page_size(q.limit)?;
    let max_score = score_filter(q.max_score)?;
    let offset = q.offset.unwrap_or(0);
    let bucket = state.uris.bucket();
    let parsed = state.gallery.results(bucket, &prefix).await?;
    let bucket_root = format!("{}/", bucket.url().display().trim_end_matches('/'));
    let matching: Vec<_> = parsed
        .records
        .iter()
        .filter(|r| q.label.as_ref().is_none_or(|want| &r.outcome() == want))
        .filter(|r| max_score.is_none_or(|max| r.score.is_some_and(|s| s < max)))
        .collect();
    let items = matching
        .iter()
        .skip(offset)
        .take(limit)
        .map(|record| ResultItem {
            key: record.key.clone(),
            url: record.url.clone(),
            bucket_key: record
                .url
                .strip_prefix(&bucket_root)
                .filter(|key| !key.is_empty())
                .map(str::to_string),
            label: record.label.clone(),
            score: record.score,
            top_k: record.top_k.clone(),
            error: record.error.clone(),
            model: record.model.clone(),
            model_version: record.model_version.clone(),
        })
        .collect();
    let next = offset.saturating_add(limit);
    Ok(Json(ResultsPage {
        prefix,
        parts: parsed.parts(),
        total: parsed.records.len(),
        counts: parsed.counts.clone(),
        matching: matching.len(),
        items,
        next_offset: (next < matching.len()).then_some(next),
    }))
}

/// A JPEG thumbnail of a photo of the bucket (or of a model version's evaluation photos).
#[utoipa::path(
    get,
    path = "/v1/thumbnail",
    tag = "bucket",
    params(ThumbnailQuery),
    responses(
        (status = 200, description = "The thumbnail", content_type = "image/jpeg"),
        (status = 304, description = "Not modified since the ETag sent"),
        (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse),
        (status = 404, description = "No such photo (or model version)", body = ErrorResponse),
        (status = 413, description = "The photo is larger than the body limit", body = ErrorResponse),
        (status = 422, description = "Not a photo", body = ErrorResponse),
    ),
    security((), ("api_key" = []))
)]
pub async fn thumbnail(
    State(state): State<AppState>,
    query_string: Result<Query<ThumbnailQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = query(query_string)?;
    let size = q.size.unwrap_or(DEFAULT_SIZE);
    if !SIZES.contains(&size) {
        return Err(ApiError::BadRequest(format!(
            "size must be between {} and {}, got {size}",
            SIZES.start(),
            SIZES.end()
        )));
    }
    let key = bucket_prefix(Some(&q.key))?;
    if key.is_empty() {
        return Err(ApiError::BadRequest("key names no photo".into()));
    }
    let store = match (&q.model, &q.version) {
        (None, None) => state.uris.bucket().clone(),
        (Some(name), Some(version)) => evaluation_store(&state, name, version).await?,
        _ => {
            return Err(ApiError::BadRequest(
                "model and version go together: both name an evaluated version".into(),
            ));
        }
    };
    let object = store
        .head(&key)
        .await
        .map_err(|e| hide_location(e, &key, format!("no photo {key:?}")))?;
    let limit = state.config.max_body_bytes as u64;
    if object.size > limit {
        return Err(ApiError::PayloadTooLarge(format!(
            "{key} has {} bytes, more than the {limit} a photo may have",
            object.size
        )));
    }
    let cache_key = ThumbnailKey {
        url: store.url_of(&key),
        version: object
            .etag
            .clone()
            .unwrap_or_else(|| format!("{}-{:?}", object.size, object.last_modified)),
        size,
    };
    let etag = format!("\"{:016x}\"", tag_of(&cache_key));
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag))
    {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    let jpeg = match state.gallery.thumbnails.get(&cache_key) {
        Some(jpeg) => jpeg,
        None => {
            let photo = store
                .get(&key)
                .await
                .map_err(|e| hide_location(e, &key, format!("no photo {key:?}")))?;
            let _slot = state
                .decoding
                .acquire()
                .await
                .map_err(|_| ApiError::ShuttingDown)?;
            let limits = state.config.decode_limits.clone();
            let jpeg = tokio::task::spawn_blocking(move || render(&photo, size, &limits))
                .await
                .map_err(|e| ApiError::Internal(format!("thumbnail stopped: {e}")))?
                .map_err(|e| ApiError::UndecodableImage {
                    image: key.clone(),
                    reason: e.code(),
                    message: e.to_string(),
                })?;
            let jpeg = Bytes::from(jpeg);
            state.gallery.thumbnails.insert(cache_key, jpeg.clone());
            jpeg
        }
    };
    let mut response = jpeg.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=300"),
    );
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    Ok(response)
}

/// The dataset a version of the served model was evaluated on: the only place outside the
/// bucket a thumbnail is read from, and only because the operator's model names it.
async fn evaluation_store(state: &AppState, name: &str, version: &str) -> Result<Store, ApiError> {
    let (repository, _) = crate::routes::versions::repository_of(state, name).await?;
    let metadata = repository
        .metadata(name, version)
        .await
        .map_err(|_| ApiError::NotFound(format!("model {name} has no version {version:?}")))?;
    let dataset = metadata
        .dataset
        .ok_or_else(|| ApiError::NotFound(format!("{name} {version} names no training dataset")))?;
    Store::open(&dataset.url, &StoreOptions::default()).map_err(ApiError::from)
}

/// A storage error about `key` that names it only as the client gave it (`not_found` when it is
/// missing), never where it lives on the server; the detail goes to the log.
fn hide_location(error: bestiary_storage::StorageError, key: &str, not_found: String) -> ApiError {
    if error.is_not_found() {
        tracing::debug!("{key}: {error}");
        ApiError::NotFound(not_found)
    } else {
        ApiError::object(key, error)
    }
}

/// A tag for the thumbnail's ETag header: it changes with the photo's content and the size.
fn tag_of(key: &ThumbnailKey) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_stay_inside_the_bucket() {
        assert_eq!(
            bucket_prefix(Some(" animals/cat/ ")).unwrap(),
            "animals/cat/"
        );
        assert_eq!(bucket_prefix(None).unwrap(), "");
        for bad in ["/etc", "a/../../b", "s3://other/x", "\\x"] {
            assert!(
                matches!(bucket_prefix(Some(bad)), Err(ApiError::BadRequest(_))),
                "{bad}"
            );
        }
    }
}

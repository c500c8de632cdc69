//! The bucket as the console's gallery: pages of photos with their predictions (cached per
//! model version and object version), and the JSON Lines results of `bestiary classify` runs.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use bestiary_dataset::source::IMAGE_EXTENSIONS;
use bestiary_storage::{ObjectInfo, Store};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use lru::LruCache;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::classify::classify_images;
use crate::error::ApiError;
use crate::input::ImageInput;
use crate::routes::native::LabelScore;
use crate::state::AppState;
use crate::thumbnail::Thumbnails;

/// Labels kept per cached prediction: a request asks for at most this many.
pub const MAX_TOP_K: usize = 10;
/// Photos classified at once for one page: enough to keep the batcher busy, few enough that
/// one console does not crowd out API clients.
const CONCURRENT_PHOTOS: usize = 8;
const CACHED_PREDICTIONS: usize = 100_000;
/// Result files read for one run, in bytes: 100,000 records are about 40 MB.
pub const MAX_RESULTS_BYTES: u64 = 256 * 1024 * 1024;

/// What the console's gallery remembers between requests.
pub struct Gallery {
    predictions: Mutex<LruCache<PredictionKey, Arc<Predicted>>>,
    results: Mutex<Option<Arc<ParsedResults>>>,
    pub thumbnails: Thumbnails,
}

impl Default for Gallery {
    fn default() -> Self {
        Self {
            predictions: Mutex::new(LruCache::new(
                NonZeroUsize::new(CACHED_PREDICTIONS).expect("non-zero"),
            )),
            results: Mutex::new(None),
            thumbnails: Thumbnails::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PredictionKey {
    model_version: String,
    key: String,
    object_version: String,
}

/// Why a photo of the gallery has no label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PhotoError {
    /// `empty`, `not-an-image`, `too-large`, `corrupt`, `not-found`, or a code of the run.
    pub code: String,
    pub message: String,
}

/// A photo's answer, or why there is none.
#[derive(Debug, Clone, PartialEq)]
pub enum Predicted {
    Label {
        label: String,
        score: f32,
        unknown: Option<bool>,
        top_k: Vec<LabelScore>,
        width: Option<u32>,
        height: Option<u32>,
    },
    Failed(PhotoError),
}

/// One photo of a gallery page.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GalleryPhoto {
    /// Key relative to the bucket: pass it to `/v1/thumbnail`.
    pub key: String,
    pub size: u64,
    pub label: Option<String>,
    pub score: Option<f32>,
    /// Whether the model's detector finds it none of the classes (absent without a detector).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<bool>,
    pub top_k: Vec<LabelScore>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub error: Option<PhotoError>,
}

impl GalleryPhoto {
    /// The gallery's view of `object` and its answer, with `top_k` labels at most.
    pub fn new(object: &ObjectInfo, predicted: &Predicted, top_k: usize) -> Self {
        let mut photo = Self {
            key: object.key.clone(),
            size: object.size,
            label: None,
            score: None,
            unknown: None,
            top_k: Vec::new(),
            width: None,
            height: None,
            error: None,
        };
        match predicted {
            Predicted::Label {
                label,
                score,
                unknown,
                top_k: labels,
                width,
                height,
            } => {
                photo.label = Some(label.clone());
                photo.score = Some(*score);
                photo.unknown = *unknown;
                photo.top_k = labels.iter().take(top_k).cloned().collect();
                photo.width = *width;
                photo.height = *height;
            }
            Predicted::Failed(error) => photo.error = Some(error.clone()),
        }
        photo
    }
}

/// Whether a key names a photo, by its extension (as datasets and `classify` decide).
pub fn is_photo_key(key: &str) -> bool {
    key.rsplit_once('.').is_some_and(|(_, ext)| {
        IMAGE_EXTENSIONS
            .iter()
            .any(|known| ext.eq_ignore_ascii_case(known))
    })
}

impl Gallery {
    /// The predictions of `objects` of the bucket, in their order; photos not seen with this
    /// model version and content before are read and classified, a few at once.
    pub async fn predict(
        &self,
        state: &AppState,
        bucket: &Store,
        objects: &[ObjectInfo],
    ) -> Result<Vec<Arc<Predicted>>, ApiError> {
        let model_version = state.model()?.version().to_string();
        // Collected first: a lazy `map` over borrowed objects inside the handler's future trips
        // the compiler's check that the future is `Send` (rust-lang/rust#64552).
        let answers: Vec<_> = objects
            .iter()
            .map(|object| self.predict_one(state, bucket, object, &model_version))
            .collect();
        futures::stream::iter(answers)
            .buffered(CONCURRENT_PHOTOS)
            .try_collect()
            .await
    }

    async fn predict_one(
        &self,
        state: &AppState,
        bucket: &Store,
        object: &ObjectInfo,
        model_version: &str,
    ) -> Result<Arc<Predicted>, ApiError> {
        let key = PredictionKey {
            model_version: model_version.to_string(),
            key: object.key.clone(),
            object_version: object_version(object),
        };
        if let Some(hit) = self.cached(&key) {
            return Ok(hit);
        }
        let predicted = Arc::new(predict_object(state, bucket, object).await?);
        self.predictions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(key, predicted.clone());
        Ok(predicted)
    }

    fn cached(&self, key: &PredictionKey) -> Option<Arc<Predicted>> {
        self.predictions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// The records of the results at `prefix`, parsed once per content of its parts.
    pub async fn results(
        &self,
        bucket: &Store,
        prefix: &str,
    ) -> Result<Arc<ParsedResults>, ApiError> {
        let parts = result_parts(bucket, prefix).await?;
        let fingerprint: Vec<(String, String)> = parts
            .iter()
            .map(|part| (part.key.clone(), object_version(part)))
            .collect();
        if let Some(cached) = self
            .results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|cached| cached.prefix == prefix && cached.fingerprint == fingerprint)
        {
            return Ok(cached.clone());
        }
        let mut records = Vec::new();
        for part in &parts {
            let bytes = bucket.get(&part.key).await?;
            parse_result_lines(&part.key, &bytes, &mut records)?;
        }
        let mut counts = BTreeMap::new();
        for record in &records {
            *counts.entry(record.outcome()).or_default() += 1;
        }
        let parsed = Arc::new(ParsedResults {
            prefix: prefix.to_string(),
            fingerprint,
            records,
            counts,
        });
        *self.results.lock().unwrap_or_else(|p| p.into_inner()) = Some(parsed.clone());
        Ok(parsed)
    }
}

/// The ETag, or the size and time where a store gives none.
fn object_version(object: &ObjectInfo) -> String {
    match &object.etag {
        Some(etag) => etag.clone(),
        None => format!("{}-{:?}", object.size, object.last_modified),
    }
}

async fn predict_object(
    state: &AppState,
    bucket: &Store,
    object: &ObjectInfo,
) -> Result<Predicted, ApiError> {
    let limit = state.config.max_body_bytes as u64;
    if object.size > limit {
        return Ok(Predicted::Failed(PhotoError {
            code: "too-large".into(),
            message: format!(
                "{} bytes, more than the {limit} a photo may have",
                object.size
            ),
        }));
    }
    let bytes: Bytes = match bucket.get(&object.key).await {
        Ok(bytes) => bytes,
        Err(e) if e.is_not_found() => {
            return Ok(Predicted::Failed(PhotoError {
                code: "not-found".into(),
                message: "the object vanished after it was listed".into(),
            }));
        }
        Err(e) => return Err(e.into()),
    };
    let input = ImageInput {
        name: object.key.clone(),
        bytes,
    };
    match classify_images(state, vec![input], MAX_TOP_K).await {
        Ok(classification) => {
            let image = &classification.images[0];
            let prediction = &image.classified.prediction;
            Ok(Predicted::Label {
                label: prediction.label.clone(),
                score: prediction.score,
                unknown: prediction.unknown,
                top_k: LabelScore::ranking(&prediction.top_k),
                width: image.size.map(|(w, _)| w),
                height: image.size.map(|(_, h)| h),
            })
        }
        Err(ApiError::UndecodableImage {
            reason, message, ..
        }) => Ok(Predicted::Failed(PhotoError {
            code: reason.into(),
            message,
        })),
        Err(other) => Err(other),
    }
}

/// One record of a `bestiary classify` run, as far as the gallery needs it.
#[derive(Debug, Clone, Deserialize)]
pub struct ResultLine {
    pub key: String,
    pub url: String,
    pub label: Option<String>,
    pub score: Option<f32>,
    #[serde(default)]
    pub top_k: Vec<LabelScore>,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub model_version: String,
    pub error: Option<PhotoError>,
}

impl ResultLine {
    /// What the run counts it under: its label, or `error:<code>`.
    pub fn outcome(&self) -> String {
        match (&self.error, &self.label) {
            (Some(error), _) => format!("error:{}", error.code),
            (None, Some(label)) => label.clone(),
            (None, None) => "error:unlabelled".into(),
        }
    }
}

/// Every record of one run, and the count of each outcome.
#[derive(Debug)]
pub struct ParsedResults {
    prefix: String,
    fingerprint: Vec<(String, String)>,
    pub records: Vec<ResultLine>,
    pub counts: BTreeMap<String, usize>,
}

impl ParsedResults {
    pub fn parts(&self) -> usize {
        self.fingerprint.len()
    }
}

/// The JSON Lines objects of a run: `prefix` itself when it is one, else every `.jsonl`
/// below it (the run's parts), in key order.
async fn result_parts(bucket: &Store, prefix: &str) -> Result<Vec<ObjectInfo>, ApiError> {
    let prefix = prefix.trim_matches('/');
    if prefix.ends_with(".jsonl") {
        return Ok(vec![bucket.head(prefix).await?]);
    }
    let mut parts = Vec::new();
    let mut bytes = 0u64;
    let mut after: Option<String> = None;
    loop {
        let page = bucket.list_page(prefix, after.as_deref(), 1000).await?;
        for object in page.objects {
            if object.key.ends_with(".jsonl") {
                bytes = bytes.saturating_add(object.size);
                if bytes > MAX_RESULTS_BYTES {
                    return Err(ApiError::PayloadTooLarge(format!(
                        "the results below {prefix:?} hold more than {MAX_RESULTS_BYTES} bytes; \
                         open one shard's folder or `bestiary classify --merge` them"
                    )));
                }
                parts.push(object);
            }
        }
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    if parts.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no JSON Lines results below {prefix:?} in the bucket"
        )));
    }
    Ok(parts)
}

fn parse_result_lines(key: &str, bytes: &[u8], into: &mut Vec<ResultLine>) -> Result<(), ApiError> {
    for (number, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let record = serde_json::from_slice(line).map_err(|e| {
            ApiError::BadRequest(format!(
                "{key} line {}: not a result of `bestiary classify`: {e}",
                number + 1
            ))
        })?;
        into.push(record);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn photos_are_known_by_their_extension() {
        assert!(is_photo_key("a/b.JPG") && is_photo_key("x.webp"));
        assert!(!is_photo_key("a/results.jsonl") && !is_photo_key("README"));
    }

    #[test]
    fn result_lines_parse_and_count_errors_apart() {
        let text = concat!(
            r#"{"key":"a.jpg","url":"s3://b/p/a.jpg","label":"cat","score":0.9,"top_k":[{"label":"cat","score":0.9}],"model":"m","model_version":"v","error":null,"extra":1}"#,
            "\n\n",
            r#"{"key":"b.jpg","url":"s3://b/p/b.jpg","label":null,"score":null,"error":{"code":"corrupt","message":"bad"}}"#,
            "\n"
        );
        let mut records = Vec::new();
        parse_result_lines("part.jsonl", text.as_bytes(), &mut records).unwrap();
        let outcomes: Vec<String> = records.iter().map(ResultLine::outcome).collect();
        assert_eq!(outcomes, ["cat", "error:corrupt"]);
        let error = parse_result_lines("part.jsonl", b"{\"key\": 1}\n", &mut records).unwrap_err();
        assert!(
            error.to_string().starts_with("part.jsonl line 1:"),
            "{error}"
        );
    }
}

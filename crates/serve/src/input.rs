//! Request bodies to photos: one raw image, several in `multipart/form-data`, object URIs in
//! JSON (read from the bucket or any `s3://`, `gs://`, `az://` URL), or JSON Lines records.
//! The multipart and JSON Lines formats are parsed by `bestiary-protocol`; reading the objects
//! they name is done here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, header};
use bestiary_protocol::json_lines::{Record, parse_json_lines};
use bestiary_protocol::multipart::{self, Part};
use bestiary_storage::{StorageErrorKind, Store, StoreOptions, StoreUrl, parse_store_url};
use bytes::{Bytes, BytesMut};
use futures::future::Either;
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::error::ApiError;

/// Objects read at once for one request's URIs.
const CONCURRENT_READS: usize = 16;

pub use bestiary_protocol::multipart::IMAGE_TYPES;

const JSON_LINES_TYPES: [&str; 4] = [
    "application/jsonlines",
    "application/x-jsonlines",
    "application/jsonl",
    "application/x-ndjson",
];

/// One photo of a request and the name it is reported under.
#[derive(Debug, Clone)]
pub struct ImageInput {
    /// File name, URI, or `#<position>` for a raw body.
    pub name: String,
    pub bytes: Bytes,
}

/// How the request body is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// The body is one photo.
    Image,
    /// `multipart/form-data`: every file part is a photo.
    Multipart,
    /// `application/json`: `{"uris": [...]}`.
    Json,
    /// JSON Lines: one record per line (`{"source-ref": uri}`, `{"uri": uri}`, `{"b64": data}`).
    JsonLines,
}

/// The JSON body naming objects to classify.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UriRequest {
    /// Object URLs (`s3://bucket/key`, `gs://…`, `az://…`) or keys relative to the server's
    /// bucket (`--bucket`).
    pub uris: Vec<String>,
}

/// The media type without parameters, lower-cased.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next().unwrap_or_default().trim();
    (!essence.is_empty()).then(|| essence.to_ascii_lowercase())
}

/// Whether the client asked for JSON Lines back.
pub fn accepts_json_lines(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            accept.split(',').any(|part| {
                let essence = part.split(';').next().unwrap_or_default().trim();
                JSON_LINES_TYPES
                    .iter()
                    .any(|t| essence.eq_ignore_ascii_case(t))
            })
        })
}

pub fn body_kind(headers: &HeaderMap) -> Result<BodyKind, ApiError> {
    let Some(media_type) = media_type(headers) else {
        return Err(ApiError::UnsupportedMediaType(
            "missing Content-Type: send a photo as image/jpeg, image/png, image/webp or \
             application/x-image, several as multipart/form-data, or {\"uris\": [...]} as \
             application/json"
                .into(),
        ));
    };
    if IMAGE_TYPES.contains(&media_type.as_str()) {
        Ok(BodyKind::Image)
    } else if media_type == "multipart/form-data" {
        Ok(BodyKind::Multipart)
    } else if media_type == "application/json" {
        Ok(BodyKind::Json)
    } else if JSON_LINES_TYPES.contains(&media_type.as_str()) {
        Ok(BodyKind::JsonLines)
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "unsupported Content-Type {media_type}: use image/jpeg, image/png, image/webp, \
             application/x-image, multipart/form-data, application/json or application/jsonlines"
        )))
    }
}

/// Bytes of an oversized body still read (and dropped) before answering 413.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;
/// How long draining an oversized body may take.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Reads the whole body, refusing more than `limit` bytes.
///
/// An oversized body is still read to its end (up to [`DRAIN_LIMIT`]) before the 413 goes out:
/// closing a connection with unread data makes the kernel reset it, and the client would then
/// see "connection reset" instead of the answer.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut bytes = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::BadRequest(format!("cannot read the request body: {e}")))?;
        if bytes.len() + chunk.len() > limit {
            let mut drained = bytes.len() + chunk.len();
            let _ = tokio::time::timeout(DRAIN_TIME, async {
                while drained <= DRAIN_LIMIT
                    && let Some(Ok(chunk)) = stream.next().await
                {
                    drained += chunk.len();
                }
            })
            .await;
            return Err(too_large_body(limit));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes.freeze())
}

fn too_large_body(limit: usize) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "the request body exceeds {limit} bytes; put big photos in the bucket and send \
         {{\"uris\": [...]}} instead"
    ))
}

/// The photos of a request body, in order.
pub async fn read_images(
    request: Request,
    limit: usize,
    uris: &UriReader,
) -> Result<(BodyKind, Vec<ImageInput>), ApiError> {
    let kind = body_kind(request.headers())?;
    // A body declared far too large is refused before any of it is read.
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit.saturating_add(DRAIN_LIMIT)) {
        return Err(too_large_body(limit));
    }
    let images = match kind {
        BodyKind::Image => {
            let bytes = read_body(request.into_body(), limit).await?;
            vec![ImageInput {
                name: "#0".into(),
                bytes,
            }]
        }
        BodyKind::Multipart => {
            let content_type = request
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            // Read (and size-checked) first: answering before the body is read would reset
            // the connection.
            let bytes = read_body(request.into_body(), limit).await?;
            let boundary = multipart::boundary(&content_type)?;
            multipart::parse_multipart(bytes, &boundary)?
                .into_iter()
                .map(|Part { name, bytes }| ImageInput { name, bytes })
                .collect()
        }
        BodyKind::Json => {
            let bytes = read_body(request.into_body(), limit).await?;
            let body: UriRequest = serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::BadRequest(format!("expected {{\"uris\": [\"s3://…\", …]}}: {e}"))
            })?;
            uris.read_all(body.uris).await?
        }
        BodyKind::JsonLines => {
            let bytes = read_body(request.into_body(), limit).await?;
            read_json_lines(&bytes, uris).await?
        }
    };
    if images.is_empty() {
        return Err(ApiError::BadRequest("the request holds no image".into()));
    }
    Ok((kind, images))
}

/// The photos of JSON Lines records: inline ones as they are, references read (in order).
async fn read_json_lines(body: &[u8], uris: &UriReader) -> Result<Vec<ImageInput>, ApiError> {
    let items = parse_json_lines(body)?
        .into_iter()
        .map(|record| match record {
            Record::Uri(uri) => Either::Left(uri),
            Record::Inline { name, bytes } => Either::Right(ImageInput { name, bytes }),
        })
        .collect();
    uris.read_in_order(items).await
}

/// What a request may make the server read through URIs.
#[derive(Debug, Clone)]
pub struct UriPolicy {
    /// URL prefixes outside the bucket that URIs may name (`--allow-uri-prefix`); the bucket
    /// itself is always allowed.
    pub allowed_prefixes: Vec<StoreUrl>,
    /// Bytes all the objects of one request may hold together (the body's limit).
    pub max_bytes: usize,
    /// Objects one request may name (the server's queue: more could never be classified).
    pub max_objects: usize,
}

impl UriPolicy {
    /// Parses `--allow-uri-prefix` values: object-store URLs (`s3://bucket/prefix/`).
    pub fn new(
        allowed_prefixes: &[String],
        max_bytes: usize,
        max_objects: usize,
    ) -> Result<Self, String> {
        let allowed_prefixes = allowed_prefixes
            .iter()
            .map(|text| match parse_store_url(text) {
                Ok(url @ (StoreUrl::S3 { .. } | StoreUrl::Gcs { .. } | StoreUrl::Azure { .. })) => {
                    Ok(url)
                }
                Ok(_) => Err(format!(
                    "--allow-uri-prefix {text}: give an s3://, gs:// or az:// URL"
                )),
                Err(e) => Err(format!("--allow-uri-prefix {text}: {e}")),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            allowed_prefixes,
            max_bytes,
            max_objects,
        })
    }
}

/// Reads objects named by URIs: keys relative to the server's bucket, or `s3://`, `gs://` and
/// `az://` URLs inside the bucket or an allowed prefix. Everything else is refused before any
/// request leaves the server: its credentials must not become the caller's (a confused
/// deputy). Local paths outside the bucket are refused, so a client cannot make the server
/// read its own files; keys cannot leave the bucket through `..` or symlinks.
pub struct UriReader {
    bucket: Store,
    options: StoreOptions,
    policy: UriPolicy,
    /// Stores opened so far, by bucket URL: building an S3 client per request would cost a
    /// new connection pool each time.
    stores: Mutex<HashMap<String, Store>>,
}

/// The bytes one request's objects may still take; shared by its concurrent reads.
struct ReadBudget(AtomicUsize);

impl UriReader {
    /// Opens the bucket; a local folder is created when missing.
    pub fn open(
        bucket: &str,
        options: &StoreOptions,
        policy: UriPolicy,
    ) -> Result<Self, bestiary_storage::StorageError> {
        let url = parse_store_url(bucket)?;
        if let StoreUrl::Local { root } = &url {
            std::fs::create_dir_all(root).map_err(|e| {
                bestiary_storage::StorageError::new(
                    StorageErrorKind::Other,
                    root.display().to_string(),
                )
                .with_detail(format!("cannot create the bucket folder: {e}"))
            })?;
        }
        Ok(Self {
            bucket: Store::open_url(url, options)?,
            options: options.clone(),
            policy,
            stores: Mutex::new(HashMap::new()),
        })
    }

    pub fn bucket(&self) -> &Store {
        &self.bucket
    }

    /// Every object of `uris`, in order; all of them are checked against the policy before
    /// the first is read.
    pub async fn read_all(&self, uris: Vec<String>) -> Result<Vec<ImageInput>, ApiError> {
        self.read_in_order(uris.into_iter().map(Either::Left).collect())
            .await
    }

    /// Photos in the order given: URIs (left) read, photos already in the body (right) kept.
    /// Every URI is counted and checked against the policy before the first object is read,
    /// and all the objects share one byte budget.
    async fn read_in_order(
        &self,
        items: Vec<Either<String, ImageInput>>,
    ) -> Result<Vec<ImageInput>, ApiError> {
        self.check_count(
            items
                .iter()
                .filter(|item| matches!(item, Either::Left(_)))
                .count(),
        )?;
        let reads = items
            .into_iter()
            .map(|item| match item {
                Either::Left(uri) => self
                    .locate(&uri)
                    .map(|located| Either::Left((uri, located))),
                Either::Right(image) => Ok(Either::Right(image)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let budget = self.budget();
        futures::stream::iter(reads)
            .map(|read| {
                let budget = &budget;
                async move {
                    match read {
                        Either::Left((uri, (store, key))) => {
                            self.read_located(uri, &store, &key, budget).await
                        }
                        Either::Right(image) => Ok(image),
                    }
                }
            })
            .buffered(CONCURRENT_READS)
            .try_collect()
            .await
    }

    /// Refuses a request naming more objects than the server could ever queue.
    fn check_count(&self, objects: usize) -> Result<(), ApiError> {
        if objects > self.policy.max_objects {
            return Err(ApiError::PayloadTooLarge(format!(
                "the request names {objects} objects; this server takes at most {} in one \
                 request",
                self.policy.max_objects
            )));
        }
        Ok(())
    }

    fn budget(&self) -> ReadBudget {
        ReadBudget(AtomicUsize::new(self.policy.max_bytes))
    }

    async fn read_located(
        &self,
        uri: String,
        store: &Store,
        key: &str,
        budget: &ReadBudget,
    ) -> Result<ImageInput, ApiError> {
        let too_large = || {
            ApiError::PayloadTooLarge(format!(
                "the objects of one request hold more than {} bytes together ({uri} is where \
                 the limit was reached)",
                self.policy.max_bytes
            ))
        };
        let remaining = budget.0.load(Ordering::Relaxed);
        let bytes = match store.get_limited(key, remaining as u64).await {
            Ok(bytes) => bytes,
            Err(error) if error.kind == StorageErrorKind::TooLarge => return Err(too_large()),
            Err(error) => return Err(ApiError::object(&uri, error)),
        };
        // Concurrent reads share the budget: the last one to push it past zero fails.
        budget
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(bytes.len())
            })
            .map_err(|_| too_large())?;
        Ok(ImageInput { name: uri, bytes })
    }

    fn locate(&self, uri: &str) -> Result<(Store, String), ApiError> {
        let uri = uri.trim();
        let Some((scheme, _)) = uri.split_once("://") else {
            if uri.is_empty() || uri.starts_with('/') || uri.starts_with('\\') {
                return Err(ApiError::BadRequest(format!(
                    "{uri:?} is not a key relative to the bucket nor an s3://, gs:// or az:// URL"
                )));
            }
            return Ok((self.bucket.clone(), uri.to_string()));
        };
        if !matches!(
            scheme.to_ascii_lowercase().as_str(),
            "s3" | "s3a" | "gs" | "gcs" | "az" | "azure" | "abfs" | "abfss"
        ) {
            return Err(ApiError::BadRequest(format!(
                "{uri}: only s3://, gs:// and az:// URLs or keys relative to the bucket are read"
            )));
        }
        let url = parse_store_url(uri)
            .map_err(|_| ApiError::BadRequest(format!("{uri} is not a valid object URL")))?;
        let allowed = self.bucket.url().contains(&url)
            || self
                .policy
                .allowed_prefixes
                .iter()
                .any(|p| p.contains(&url));
        if !allowed {
            return Err(ApiError::UriNotAllowed(format!(
                "{uri} is outside this server's bucket and its allowed URI prefixes \
                 (--allow-uri-prefix)"
            )));
        }
        let (root, key) = url.split_object();
        if key.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "{uri} names a bucket, not an object"
            )));
        }
        let root_text = root.display();
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        let store = match stores.get(&root_text) {
            Some(store) => store.clone(),
            None => {
                let store = Store::open_url(root, &self.options)?;
                stores.insert(root_text, store.clone());
                store
            }
        };
        Ok((store, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(content_type: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).unwrap(),
        );
        headers
    }

    #[test]
    fn content_types_pick_the_body_kind() {
        assert_eq!(body_kind(&headers("image/JPEG")).unwrap(), BodyKind::Image);
        assert_eq!(
            body_kind(&headers("multipart/form-data; boundary=x")).unwrap(),
            BodyKind::Multipart
        );
        assert_eq!(
            body_kind(&headers("application/json; charset=utf-8")).unwrap(),
            BodyKind::Json
        );
        assert_eq!(
            body_kind(&headers("application/jsonlines")).unwrap(),
            BodyKind::JsonLines
        );
        assert!(matches!(
            body_kind(&headers("text/plain")),
            Err(ApiError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            body_kind(&HeaderMap::new()),
            Err(ApiError::UnsupportedMediaType(_))
        ));
    }

    fn uri_reader(bucket: &str, allowed: &[&str]) -> UriReader {
        let allowed: Vec<String> = allowed.iter().map(|p| p.to_string()).collect();
        let policy = UriPolicy::new(&allowed, 1024, 4).unwrap();
        UriReader::open(bucket, &StoreOptions::default(), policy).unwrap()
    }

    #[test]
    fn local_paths_outside_the_bucket_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let reader = uri_reader(dir.path().to_str().unwrap(), &["s3://bucket/"]);
        for uri in [
            "/etc/passwd",
            "file:///etc/passwd",
            "memory://x/y",
            "",
            "s3://bucket",
            "s3://bucket/a/../../other/x.jpg",
        ] {
            assert!(
                matches!(reader.locate(uri), Err(ApiError::BadRequest(_))),
                "{uri}"
            );
        }
        assert!(reader.locate("photos/cat.jpg").is_ok());
        assert!(reader.locate("s3://bucket/cat.jpg").is_ok());
    }

    #[test]
    fn urls_outside_the_bucket_and_the_allowed_prefixes_are_forbidden() {
        let reader = uri_reader("s3://photos/served", &["s3://shared/incoming/", "gs://g/"]);
        for uri in [
            "s3://photos/served/cat.jpg",
            "s3a://photos/served/a/b.jpg",
            "s3://shared/incoming/x.jpg",
            "gs://g/any/thing.png",
            "relative/key.jpg",
        ] {
            assert!(reader.locate(uri).is_ok(), "{uri}");
        }
        for uri in [
            "s3://photos/other/cat.jpg",
            "s3://photos/served-private/cat.jpg",
            "s3://shared/incoming-old/x.jpg",
            "s3://secrets/key.pem",
            "gs://other/x.jpg",
            "az://g/x.jpg",
        ] {
            assert!(
                matches!(reader.locate(uri), Err(ApiError::UriNotAllowed(_))),
                "{uri}"
            );
        }
        // A local bucket allows no remote URL unless a prefix says so.
        let dir = tempfile::tempdir().unwrap();
        let local = uri_reader(dir.path().to_str().unwrap(), &[]);
        assert!(matches!(
            local.locate("s3://photos/served/cat.jpg"),
            Err(ApiError::UriNotAllowed(_))
        ));
    }

    #[test]
    fn allowed_prefixes_must_be_object_store_urls() {
        for bad in ["/tmp/photos", "file:///tmp", "memory://m/x", "s3://"] {
            assert!(UriPolicy::new(&[bad.to_string()], 1, 1).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_request_may_not_name_more_objects_or_bytes_than_its_limits() {
        let dir = tempfile::tempdir().unwrap();
        for (name, size) in [("a.jpg", 600), ("b.jpg", 600), ("big.jpg", 2000)] {
            std::fs::write(dir.path().join(name), vec![0u8; size]).unwrap();
        }
        let reader = uri_reader(dir.path().to_str().unwrap(), &[]);
        let uris = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(reader.read_all(uris(&["a.jpg"])).await.unwrap().len(), 1);
        for names in [
            &["big.jpg"][..],
            &["a.jpg", "b.jpg"],
            &["a.jpg", "a.jpg", "a.jpg", "a.jpg", "a.jpg"],
        ] {
            assert!(
                matches!(
                    reader.read_all(uris(names)).await,
                    Err(ApiError::PayloadTooLarge(_))
                ),
                "{names:?}"
            );
        }
        // A missing object is named as the client gave it, never by its path on the server.
        let missing = reader.read_all(uris(&["none.jpg"])).await.unwrap_err();
        let text = missing.to_string();
        assert!(text.contains("none.jpg"), "{text}");
        assert!(!text.contains(dir.path().to_str().unwrap()), "{text}");
    }

    #[test]
    fn accept_header_asks_for_json_lines() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, application/jsonlines;q=0.9"),
        );
        assert!(accepts_json_lines(&h));
        assert!(!accepts_json_lines(&HeaderMap::new()));
    }
}

//! The `Store` type: reads, lists and writes objects below one URL, whatever the backend.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::buffered::BufWriter;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientConfigKey, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig,
};
use tokio::io::AsyncWriteExt;

use crate::url::{StoreUrl, parse_store_url};
use crate::{Result, StorageError, StorageErrorKind};

/// Objects larger than this are uploaded in parts, each of this size (S3's minimum is 5 MiB).
const MULTIPART_PART_SIZE: usize = 8 * 1024 * 1024;

/// How a store is opened: endpoint overrides and retry policy.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Endpoint of an S3-compatible server; falls back to `AWS_ENDPOINT_URL`. Implies path-style.
    pub s3_endpoint: Option<String>,
    /// Retries of transient failures (timeouts, 5xx, connection resets), with exponential backoff.
    pub max_retries: usize,
    /// No retry starts after this long from the first attempt.
    pub retry_timeout: Duration,
    /// How long one request may take, connection included, before it counts as failed (and is
    /// retried): a server that accepts connections and stops answering cannot hang a job.
    pub request_timeout: Duration,
    /// Explicit S3 access key and secret; normally `None`, so that the AWS environment and
    /// profile chain applies. Tests use it to reach their own server without touching the
    /// process environment.
    pub s3_credentials: Option<(String, String)>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            s3_endpoint: None,
            max_retries: 5,
            retry_timeout: Duration::from_secs(60),
            // object_store's own default; connecting has its 5 s within it.
            request_timeout: Duration::from_secs(30),
            s3_credentials: None,
        }
    }
}

/// What a listing or `head` says about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the store's root, `/`-separated.
    pub key: String,
    pub size: u64,
    /// Changes whenever the content changes (S3 ETag; size+mtime+inode locally).
    pub etag: Option<String>,
    pub last_modified: SystemTime,
}

/// A store rooted at one URL. Keys passed to its methods are relative to that root.
#[derive(Clone)]
pub struct Store {
    url: StoreUrl,
    pub(crate) inner: Arc<dyn ObjectStore>,
    /// The root inside `inner`.
    pub(crate) root: Path,
    /// For local stores, the folder the keys must stay inside.
    pub(crate) local_root: Option<PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.url.display())
            .finish()
    }
}

impl Store {
    /// Opens the store at `url` (see the crate docs for the accepted forms).
    pub fn open(url: &str, options: &StoreOptions) -> Result<Self> {
        Self::open_url(parse_store_url(url)?, options)
    }

    /// Opens a store from an already parsed URL.
    pub fn open_url(url: StoreUrl, options: &StoreOptions) -> Result<Self> {
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: options.max_retries,
            retry_timeout: options.retry_timeout,
        };
        // Set as a config key, which keeps the client options the builders read from the
        // environment (with_client_options would replace them).
        let timeout = format!("{}ms", options.request_timeout.as_millis().max(1));
        let shown = url.display();
        let build_error = |e: object_store::Error| {
            StorageError::from_object_store(e, &shown).with_detail("cannot configure the store")
        };
        let (inner, root, local_root): (Arc<dyn ObjectStore>, Path, Option<PathBuf>) = match &url {
            StoreUrl::Local { root } => {
                let path = Path::from_absolute_path(root).map_err(|e| {
                    StorageError::new(StorageErrorKind::InvalidUrl, &shown)
                        .with_detail(e.to_string())
                })?;
                (Arc::new(LocalFileSystem::new()), path, Some(root.clone()))
            }
            StoreUrl::S3 { bucket, prefix } => {
                let builder = s3_builder(bucket, options).with_retry(retry).with_config(
                    object_store::aws::AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                    &timeout,
                );
                (
                    Arc::new(builder.build().map_err(build_error)?),
                    Path::from(prefix.as_str()),
                    None,
                )
            }
            StoreUrl::Gcs { bucket, prefix } => {
                let builder = GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry)
                    .with_config(
                        object_store::gcp::GoogleConfigKey::Client(ClientConfigKey::Timeout),
                        &timeout,
                    );
                (
                    Arc::new(builder.build().map_err(build_error)?),
                    Path::from(prefix.as_str()),
                    None,
                )
            }
            StoreUrl::Azure { container, prefix } => {
                let builder = MicrosoftAzureBuilder::from_env()
                    .with_container_name(container)
                    .with_retry(retry)
                    .with_config(
                        object_store::azure::AzureConfigKey::Client(ClientConfigKey::Timeout),
                        &timeout,
                    );
                (
                    Arc::new(builder.build().map_err(build_error)?),
                    Path::from(prefix.as_str()),
                    None,
                )
            }
            StoreUrl::Memory { name, prefix } => {
                (memory_store(name), Path::from(prefix.as_str()), None)
            }
        };
        Ok(Self {
            url,
            inner,
            root,
            local_root,
        })
    }

    /// Opens the store that holds the object at `object_url`, returning it with the object's key.
    pub fn open_object(object_url: &str, options: &StoreOptions) -> Result<(Self, String)> {
        let (root, key) = parse_store_url(object_url)?.split_object();
        if key.is_empty() {
            return Err(StorageError::new(StorageErrorKind::InvalidUrl, object_url)
                .with_detail("the URL names a bucket, not an object"));
        }
        Ok((Self::open_url(root, options)?, key))
    }

    /// The URL this store is rooted at.
    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    /// The full URL of `key`, for messages and reports.
    pub fn url_of(&self, key: &str) -> String {
        self.url.join(key).display()
    }

    /// Whether the store lives on this machine's file system.
    pub fn is_local(&self) -> bool {
        self.local_root.is_some()
    }

    /// A store rooted `sub` below this one.
    pub fn child(&self, sub: &str) -> Result<Self> {
        let location = self.location(sub)?;
        let local_root = self
            .local_root
            .as_ref()
            .map(|root| root.join(sub.trim_matches('/')));
        Ok(Self {
            url: self.url.join(sub),
            inner: self.inner.clone(),
            root: location,
            local_root,
        })
    }

    /// Turns a relative key into a location in the backend, rejecting keys that could reach
    /// outside the root: `..` segments, and (locally) symlinks that resolve elsewhere.
    pub fn location(&self, key: &str) -> Result<Path> {
        let invalid = |detail: String| {
            StorageError::new(StorageErrorKind::InvalidKey, self.url_of(key)).with_detail(detail)
        };
        let key = key.trim_matches('/');
        let relative = Path::parse(key).map_err(|e| invalid(e.to_string()))?;
        if let Some(root) = &self.local_root {
            ensure_inside(root, key).map_err(invalid)?;
        }
        Ok(self.root.parts().chain(relative.parts()).collect())
    }

    pub(crate) fn relative_key(&self, location: &Path) -> String {
        match location.prefix_match(&self.root) {
            Some(parts) => parts
                .map(|p| p.as_ref().to_string())
                .collect::<Vec<_>>()
                .join("/"),
            None => location.to_string(),
        }
    }

    pub(crate) fn error(&self, key: &str, err: object_store::Error) -> StorageError {
        StorageError::from_object_store(err, self.url_of(key))
    }

    pub(crate) fn info(&self, meta: ObjectMeta) -> ObjectInfo {
        ObjectInfo {
            key: self.relative_key(&meta.location),
            size: meta.size,
            etag: meta.e_tag,
            last_modified: meta.last_modified.into(),
        }
    }

    /// Streams every object below `sub` (all of the store when empty), page by page: the
    /// listing is never held in memory as a whole. Order is lexicographic on S3 and GCS only.
    pub fn list(&self, sub: &str) -> BoxStream<'static, Result<ObjectInfo>> {
        self.list_from(sub, None)
    }

    /// Like [`Store::list`], starting strictly after the key `after` (S3 `start-after`).
    pub fn list_from(
        &self,
        sub: &str,
        after: Option<&str>,
    ) -> BoxStream<'static, Result<ObjectInfo>> {
        let prefix = match self.location(sub) {
            Ok(p) => p,
            Err(e) => return futures::stream::once(async move { Err(e) }).boxed(),
        };
        let this = self.clone();
        let sub_url = self.url_of(sub);
        let stream = match after {
            Some(after) => match self.location(after) {
                Ok(offset) => self.inner.list_with_offset(Some(&prefix), &offset),
                Err(e) => return futures::stream::once(async move { Err(e) }).boxed(),
            },
            None => self.inner.list(Some(&prefix)),
        };
        stream
            .map(move |item| match item {
                Ok(meta) => Ok(this.info(meta)),
                Err(e) => Err(StorageError::from_object_store(e, &sub_url)),
            })
            .boxed()
    }

    /// The immediate sub-folders (common prefixes) of `sub`, sorted.
    pub async fn list_folders(&self, sub: &str) -> Result<Vec<String>> {
        let prefix = self.location(sub)?;
        let listing = self
            .inner
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| self.error(sub, e))?;
        let mut folders: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        folders.sort();
        Ok(folders)
    }

    /// Size, ETag and modification time of one object.
    pub async fn head(&self, key: &str) -> Result<ObjectInfo> {
        let location = self.location(key)?;
        let meta = self
            .inner
            .head(&location)
            .await
            .map_err(|e| self.error(key, e))?;
        Ok(self.info(meta))
    }

    /// Whether `key` exists.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        match self.head(key).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The whole object.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        let result = self.get_unread(key).await?;
        result.bytes().await.map_err(|e| self.error(key, e))
    }

    /// The object's metadata and a body not read yet.
    async fn get_unread(&self, key: &str) -> Result<object_store::GetResult> {
        let location = self.location(key)?;
        self.inner
            .get(&location)
            .await
            .map_err(|e| self.error(key, e))
    }

    /// The whole object when it holds at most `max_bytes`; a [`StorageErrorKind::TooLarge`]
    /// error otherwise, decided from the object's size before its body is read, and enforced
    /// while streaming too (a store may report one size and send more).
    pub async fn get_limited(&self, key: &str, max_bytes: u64) -> Result<Bytes> {
        let too_large = || {
            StorageError::new(StorageErrorKind::TooLarge, self.url_of(key))
                .with_detail(format!("more than {max_bytes} bytes"))
        };
        let result = self.get_unread(key).await?;
        if result.meta.size > max_bytes {
            return Err(too_large());
        }
        let mut body = Vec::with_capacity(result.meta.size as usize);
        let mut chunks = result.into_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| self.error(key, e))?;
            if (body.len() + chunk.len()) as u64 > max_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.into())
    }

    /// The bytes in `range` of the object (end exclusive).
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let location = self.location(key)?;
        self.inner
            .get_range(&location, range)
            .await
            .map_err(|e| self.error(key, e))
    }

    /// Writes `bytes` as `key`. Readers see the old object or the new one, never a part of it:
    /// locally the data goes to a temporary file that is renamed; on S3 a single PUT, or a
    /// multipart upload that only appears once completed.
    pub async fn put(&self, key: &str, bytes: impl Into<Bytes>) -> Result<()> {
        let bytes: Bytes = bytes.into();
        if bytes.len() > MULTIPART_PART_SIZE {
            let mut writer = self.writer(key)?;
            writer.write(&bytes).await?;
            return writer.finish().await;
        }
        let location = self.location(key)?;
        self.inner
            .put(&location, PutPayload::from_bytes(bytes))
            .await
            .map_err(|e| self.error(key, e))?;
        Ok(())
    }

    /// Writes `bytes` as `key` only if no object is there yet; returns false if one was.
    pub async fn put_if_absent(&self, key: &str, bytes: impl Into<Bytes>) -> Result<bool> {
        let location = self.location(key)?;
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .inner
            .put_opts(&location, PutPayload::from_bytes(bytes.into()), options)
            .await
        {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(false),
            Err(e) => Err(self.error(key, e)),
        }
    }

    /// A streaming writer for large objects (multipart on cloud stores).
    pub fn writer(&self, key: &str) -> Result<ObjectWriter> {
        let location = self.location(key)?;
        let inner = BufWriter::with_capacity(self.inner.clone(), location, MULTIPART_PART_SIZE)
            .with_max_concurrency(4);
        Ok(ObjectWriter {
            inner,
            url: self.url_of(key),
        })
    }

    /// Deletes `key`; deleting a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let location = self.location(key)?;
        match self.inner.delete(&location).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(key, e)),
        }
    }

    /// Copies `from` to `to` inside this store (server-side where the backend can).
    pub async fn copy(&self, from: &str, to: &str) -> Result<()> {
        let (src, dst) = (self.location(from)?, self.location(to)?);
        self.inner
            .copy(&src, &dst)
            .await
            .map_err(|e| self.error(from, e))
    }
}

/// Streams an object into the store; nothing is visible under the key until [`finish`].
///
/// [`finish`]: ObjectWriter::finish
pub struct ObjectWriter {
    inner: BufWriter,
    url: String,
}

impl ObjectWriter {
    pub async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.inner
            .write_all(bytes)
            .await
            .map_err(|e| self.io_error(e))
    }

    /// Completes the upload, making the object visible.
    pub async fn finish(mut self) -> Result<()> {
        self.inner.shutdown().await.map_err(|e| self.io_error(e))
    }

    /// Abandons the upload; any parts already sent are discarded.
    pub async fn abort(mut self) -> Result<()> {
        self.inner
            .abort()
            .await
            .map_err(|e| StorageError::from_object_store(e, &self.url))
    }

    fn io_error(&self, err: std::io::Error) -> StorageError {
        let kind = match err.kind() {
            std::io::ErrorKind::PermissionDenied => StorageErrorKind::PermissionDenied,
            std::io::ErrorKind::NotFound => StorageErrorKind::BucketNotFound,
            _ => StorageErrorKind::Other,
        };
        StorageError {
            kind,
            url: self.url.clone(),
            source: Some(Box::new(err)),
            detail: None,
        }
    }
}

/// Checks that `root/key` does not leave `root` once symlinks are resolved. The deepest existing
/// ancestor is resolved, so keys for files not yet written are checked too.
fn ensure_inside(root: &FsPath, key: &str) -> std::result::Result<(), String> {
    let Ok(canonical_root) = root.canonicalize() else {
        return Ok(()); // nothing exists yet, so nothing can point outside
    };
    let mut probe = root.join(key);
    loop {
        if let Ok(resolved) = probe.canonicalize() {
            return if resolved.starts_with(&canonical_root) {
                Ok(())
            } else {
                Err(format!(
                    "resolves outside the store's root to {}",
                    resolved.display()
                ))
            };
        }
        if !probe.pop() {
            return Ok(());
        }
    }
}

fn memory_store(name: &str) -> Arc<dyn ObjectStore> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    let mut stores = STORES
        .get_or_init(Default::default)
        .lock()
        .expect("memory store registry");
    stores
        .entry(name.to_string())
        .or_insert_with(|| Arc::new(InMemory::new()))
        .clone()
}

/// The S3-compatible endpoint in use: `--s3-endpoint`, else the `AWS_ENDPOINT_URL*`
/// variables; `None` means AWS itself.
pub fn s3_endpoint(options: &StoreOptions) -> Option<String> {
    options
        .s3_endpoint
        .clone()
        .filter(|e| !e.is_empty())
        .or_else(|| {
            ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
                .iter()
                .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
        })
}

/// An S3 client builder for `bucket` configured the way every Bestiary store is: endpoint
/// (path-style for self-hosted servers), region, and credentials from options, environment,
/// `~/.aws` profile or the instance role. For S3 APIs `object_store` does not wrap (tagging).
pub fn s3_builder(bucket: &str, options: &StoreOptions) -> AmazonS3Builder {
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(endpoint) = s3_endpoint(options) {
        // Self-hosted S3 servers rarely have per-bucket DNS names: address buckets by path.
        builder = builder
            .with_allow_http(endpoint.starts_with("http://"))
            .with_endpoint(endpoint)
            .with_virtual_hosted_style_request(false);
        if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
            builder = builder.with_region("us-east-1");
        }
    }
    if let Some((key, secret)) = &options.s3_credentials {
        builder = builder
            .with_access_key_id(key)
            .with_secret_access_key(secret);
    } else if std::env::var("AWS_ACCESS_KEY_ID").is_err()
        && let Some(profile) = aws_profile_credentials()
    {
        builder = builder
            .with_access_key_id(profile.access_key_id)
            .with_secret_access_key(profile.secret_access_key);
        if let Some(token) = profile.session_token {
            builder = builder.with_token(token);
        }
        if let Some(region) = profile.region
            && std::env::var("AWS_REGION").is_err()
            && std::env::var("AWS_DEFAULT_REGION").is_err()
        {
            builder = builder.with_region(region);
        }
    }
    builder
}

/// Static keys of the `AWS_PROFILE` (else `default`) profile from `~/.aws/credentials` and its
/// region from `~/.aws/config`: the part of the AWS profile chain `object_store` leaves out.
struct ProfileCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    region: Option<String>,
}

fn aws_profile_credentials() -> Option<ProfileCredentials> {
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    let credentials_path = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".aws/credentials"));
    let config_path = std::env::var_os("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".aws/config"));
    let credentials = ini_section(&std::fs::read_to_string(credentials_path).ok()?, &profile);
    let config_section = if profile == "default" {
        profile.clone()
    } else {
        format!("profile {profile}")
    };
    let config = std::fs::read_to_string(config_path)
        .map(|text| ini_section(&text, &config_section))
        .unwrap_or_default();
    Some(ProfileCredentials {
        access_key_id: credentials.get("aws_access_key_id")?.clone(),
        secret_access_key: credentials.get("aws_secret_access_key")?.clone(),
        session_token: credentials.get("aws_session_token").cloned(),
        region: config.get("region").cloned(),
    })
}

/// The `key = value` pairs of `[section]` in an INI file.
fn ini_section(text: &str, section: &str) -> HashMap<String, String> {
    let mut current = None::<String>;
    let mut values = HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.trim().to_string());
        } else if current.as_deref() == Some(section)
            && let Some((key, value)) = line.split_once('=')
        {
            values.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_ini_section() {
        let text = "[default]\naws_access_key_id = A\n[profile dev]\nregion = eu-west-1\n";
        assert_eq!(
            ini_section(text, "default")
                .get("aws_access_key_id")
                .unwrap(),
            "A"
        );
        assert_eq!(
            ini_section(text, "profile dev").get("region").unwrap(),
            "eu-west-1"
        );
        assert!(ini_section(text, "missing").is_empty());
    }
}

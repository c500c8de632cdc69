//! What the server tests share: a small trained model stored as versions (the engine tests'
//! helper, reused), a real server on a free loopback port, and a plain HTTP client.
#![allow(dead_code, reason = "each test binary uses part of these helpers")]

#[path = "../../../../engine/tests/it/common/mod.rs"]
pub mod model_parts;

use std::path::Path;
use std::time::Duration;

use bestiary_engine::{EngineKind, EngineOptions, LoadedModel};
use bestiary_serve::{EngineSettings, ServeConfig, Server};
use bestiary_storage::StoreOptions;
use bestiary_testkit::photos::{encode, photo};
use image::ImageFormat;
use reqwest::header::HeaderMap;
use tempfile::TempDir;

#[allow(unused_imports, reason = "not every test binary checks labels")]
pub use model_parts::CLASSES;

/// The model name every test version is stored under.
pub const MODEL: &str = "animals";

/// tract, on two threads, never downloading anything: the tests run offline.
pub fn engine() -> EngineSettings {
    EngineSettings {
        kind: EngineKind::Tract,
        options: EngineOptions {
            threads: Some(2),
            instances: 1,
            allow_download: false,
            precision: Default::default(),
        },
    }
}

/// A folder of model versions.
pub struct Models {
    pub root: TempDir,
}

impl Models {
    pub fn new() -> Self {
        Self {
            root: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Commits a new version of [`MODEL`] (moving `latest`); returns the version.
    pub async fn commit(&self) -> String {
        self.commit_parts(model_parts::parts()).await
    }

    /// Commits `parts` as a new version of [`MODEL`]; returns the version.
    pub async fn commit_parts(&self, parts: &model_parts::Parts) -> String {
        model_parts::save(parts, self.root.path(), MODEL).await
    }

    /// `<root>/animals/latest`: follows new versions.
    pub fn latest_url(&self) -> String {
        format!("{}/{MODEL}/latest", self.root.path().display())
    }

    pub fn version_url(&self, version: &str) -> String {
        format!("{}/{MODEL}/{version}", self.root.path().display())
    }

    /// The model loaded straight into the engine, for comparing the server's answers with.
    pub async fn load_direct(&self, version: &str) -> LoadedModel {
        let engine = engine();
        LoadedModel::load(
            &self.version_url(version),
            engine.kind,
            &engine.options,
            &StoreOptions::default(),
        )
        .await
        .expect("the model loads")
    }
}

/// A generated photo of class `class` (index into [`CLASSES`]), encoded as `format`.
pub fn photo_bytes(class: usize, seed: u64, format: ImageFormat) -> Vec<u8> {
    encode(&photo(class, seed, 96, 80), format)
}

/// Settings for tests: a free port, a fresh bucket, no polling.
pub fn config(bucket: &Path) -> ServeConfig {
    ServeConfig {
        addr: "127.0.0.1:0".parse().expect("address"),
        bucket: bucket.display().to_string(),
        model_poll_interval: None,
        // The tests reload and re-point models without keys; api.rs checks the default.
        open_admin: true,
        ..ServeConfig::default()
    }
}

/// A running server with its model folder and bucket, and a client for it.
pub struct Harness {
    pub server: Option<Server>,
    pub base: String,
    pub client: reqwest::Client,
    pub models: Models,
    pub bucket: TempDir,
    /// The version loaded at start.
    pub version: String,
}

impl Harness {
    /// Commits one version and serves it from `<root>/animals/latest` with `adjust`ed settings.
    pub async fn start(adjust: impl FnOnce(&mut ServeConfig)) -> Self {
        let harness = Self::start_without_model(adjust).await;
        harness
            .server()
            .load_model(Some(&harness.models.latest_url()))
            .await
            .expect("the model loads");
        harness
    }

    /// A server with a committed version that is not loaded yet.
    pub async fn start_without_model(adjust: impl FnOnce(&mut ServeConfig)) -> Self {
        let models = Models::new();
        let version = models.commit().await;
        let bucket = tempfile::tempdir().expect("temp dir");
        let mut config = config(bucket.path());
        adjust(&mut config);
        let server = Server::start(config, engine()).await.expect("starts");
        let base = format!("http://{}", server.local_addr());
        Self {
            server: Some(server),
            base,
            client: client(),
            models,
            bucket,
            version,
        }
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> Reply {
        Reply::read(self.client.get(self.url(path)).send().await).await
    }

    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Reply {
        Reply::read(
            self.client
                .post(self.url(path))
                .header("content-type", content_type)
                .body(body)
                .send()
                .await,
        )
        .await
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> Reply {
        self.post(path, "application/json", body.to_string()).await
    }

    /// Stops the server, draining in-flight requests.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("shuts down cleanly");
        }
    }
}

/// A client that never goes through a proxy: every request stays on the loopback.
/// A runtime with enough workers for a server and its clients in one test.
pub fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// A whole response, read.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

impl Reply {
    pub async fn read(response: reqwest::Result<reqwest::Response>) -> Self {
        let response = response.expect("the server answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("the body is read");
        Self {
            status,
            headers,
            body,
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the status, showing the body when it differs.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "body: {}", self.text());
        self
    }
}

/// A multipart/form-data body of files; returns its content type and bytes.
pub fn multipart(files: &[(&str, &str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "bestiary-test-boundary-7d1f";
    let mut body = Vec::new();
    for (name, content_type, bytes) in files {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\nContent-Type: {content_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

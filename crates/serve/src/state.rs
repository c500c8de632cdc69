//! What every handler shares: settings, the served model, the batch queue, usage counters and
//! the bucket.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::batcher::Batcher;
use crate::config::ServeConfig;
use crate::error::ApiError;
use crate::input::UriReader;
use crate::model::{ModelManager, ServedModel};
use crate::usage::Usage;

/// Cheap to clone: one `Arc` around the shared parts.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub config: ServeConfig,
    pub models: ModelManager,
    pub batcher: Batcher,
    pub usage: Arc<Usage>,
    pub uris: UriReader,
    /// Inference requests handled at once (`--max-concurrent-requests`).
    pub concurrency: Arc<Semaphore>,
    /// Photos decoded at once: one per core, so that a burst of requests neither spawns a
    /// blocking thread per photo nor starves the inference thread of CPU.
    pub decoding: Arc<Semaphore>,
    /// The console's caches: predictions of bucket photos, thumbnails, opened results.
    pub gallery: crate::gallery::Gallery,
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }

    /// The model of the moment, or 503 while none is loaded.
    pub fn model(&self) -> Result<Arc<ServedModel>, ApiError> {
        self.models.current().ok_or(ApiError::NotReady)
    }

    /// The served model if `name` (and `version`, when given) designate it; 404 otherwise.
    pub fn model_named(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Arc<ServedModel>, ApiError> {
        let model = self.model()?;
        if model.name() != name {
            return Err(ApiError::NotFound(format!(
                "no model named {name:?} (this server serves {:?})",
                model.name()
            )));
        }
        if let Some(version) = version
            && version != model.version()
        {
            return Err(ApiError::NotFound(format!(
                "model {name} has no version {version:?} loaded (serving {})",
                model.version()
            )));
        }
        Ok(model)
    }

    /// Every usage figure, the queue's included.
    pub fn usage_report(&self) -> crate::usage::UsageReport {
        self.usage.report(self.batcher.queue_depth() as u64)
    }

    /// `top_k` from a query, checked; the configured default when absent.
    pub fn top_k(&self, requested: Option<usize>) -> Result<usize, ApiError> {
        match requested {
            None => Ok(self.config.default_top_k),
            Some(k) if (1..=1000).contains(&k) => Ok(k),
            Some(k) => Err(ApiError::BadRequest(format!(
                "top_k must be between 1 and 1000, got {k}"
            ))),
        }
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

//! The model being served: where it comes from, loading and warming a version, and swapping it
//! atomically when its `latest` pointer moves.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use bestiary_dataset::decode::DecodeLimits;
use bestiary_engine::{EngineError, EngineKind, EngineOptions, LoadedModel, Preprocessor, builtin};
use bestiary_model::{LATEST, ModelRepository, resolve};
use bestiary_storage::StoreOptions;
use metrics::{counter, gauge};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::metrics::{MODEL_INFO, MODEL_RELOADS};

/// The last reload that failed since the last good one: the serving version stayed in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ReloadFailure {
    /// The version that could not be loaded (`latest` when its pointer could not be read).
    pub version: String,
    /// When it failed (RFC 3339, UTC).
    pub failed_at: String,
    /// What went wrong, in short; where the files are and the whole cause are in the log.
    pub reason: String,
}

/// A loaded model version with the pre-processing its input needs.
pub struct ServedModel {
    pub model: LoadedModel,
    pub preprocessor: Preprocessor,
    /// RFC 3339, UTC.
    pub loaded_at: String,
}

impl ServedModel {
    pub fn new(model: LoadedModel, limits: &DecodeLimits) -> Self {
        let preprocessor = model.preprocessor(limits.clone());
        Self {
            model,
            preprocessor,
            loaded_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        }
    }

    pub fn name(&self) -> &str {
        &self.model.metadata.name
    }

    pub fn version(&self) -> &str {
        &self.model.metadata.version
    }

    pub fn engine(&self) -> &'static str {
        self.model.engine.kind().name()
    }
}

/// Where the served model comes from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// The model shipped with Bestiary (`--model` not given, or `builtin`).
    Builtin,
    /// One fixed version: `<root>/<name>/<version>`.
    Version { url: String },
    /// A pointer that moves when a new version is committed: `<root>/<name>/latest` or
    /// `<root>/<name>`. Checked every poll interval, on SIGHUP and on `POST /admin/reload`.
    Latest {
        url: String,
        repository: Box<ModelRepository>,
        name: String,
    },
}

impl ModelSource {
    /// Classifies `--model`: a URL whose last segment is the version it resolves to is fixed;
    /// one ending in `latest`, or naming the model folder, follows the pointer.
    pub async fn from_url(url: Option<&str>, store: &StoreOptions) -> Result<Self, EngineError> {
        let Some(url) = url.filter(|url| !builtin::is_builtin(url)) else {
            return Ok(Self::Builtin);
        };
        let (repository, name, version) = resolve(url, store).await?;
        let last = url
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default();
        if last == version && last != LATEST {
            Ok(Self::Version {
                url: url.to_string(),
            })
        } else {
            Ok(Self::Latest {
                url: url.to_string(),
                repository: Box::new(repository),
                name,
            })
        }
    }

    /// Whether the model can change while serving.
    pub fn follows_latest(&self) -> bool {
        matches!(self, Self::Latest { .. })
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Builtin => "the built-in model".into(),
            Self::Version { url } => url.clone(),
            Self::Latest { url, .. } => format!("{url} (following its latest version)"),
        }
    }
}

/// How models are turned into engines.
#[derive(Debug, Clone, Default)]
pub struct EngineSettings {
    pub kind: EngineKind,
    pub options: EngineOptions,
}

/// Loads the model at `url` into an engine; `None` (or `builtin`) means the built-in model.
pub async fn load_model(
    url: Option<&str>,
    engine: &EngineSettings,
    store: &StoreOptions,
) -> Result<LoadedModel, EngineError> {
    builtin::load_model(url, engine.kind, &engine.options, store).await
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ReloadOutcome {
    /// The version served before.
    pub previous: Option<String>,
    /// The version served now.
    pub current: String,
    /// Whether a new version was loaded and swapped in.
    pub swapped: bool,
}

/// The served model, replaced atomically: requests take the model of the moment and keep it to
/// the end, so a swap never changes a model under a request or its batch.
pub struct ModelManager {
    current: ArcSwapOption<ServedModel>,
    source: std::sync::Mutex<Option<ModelSource>>,
    engine: EngineSettings,
    store: StoreOptions,
    limits: DecodeLimits,
    /// One load at a time: a poll and an admin call at once must not load the version twice.
    reloading: tokio::sync::Mutex<()>,
    /// An operator chose a version other than `latest`: polls leave it serving.
    pinned: std::sync::atomic::AtomicBool,
    /// `--keep-label-when-unknown`, applied to every version loaded.
    keep_label_when_unknown: bool,
    /// Reported by `GET /v1/models` until a reload succeeds.
    reload_failure: std::sync::Mutex<Option<ReloadFailure>>,
}

impl ModelManager {
    pub fn new(engine: EngineSettings, store: StoreOptions, limits: DecodeLimits) -> Self {
        Self {
            current: ArcSwapOption::empty(),
            source: std::sync::Mutex::new(None),
            engine,
            store,
            limits,
            reloading: tokio::sync::Mutex::new(()),
            pinned: std::sync::atomic::AtomicBool::new(false),
            keep_label_when_unknown: false,
            reload_failure: std::sync::Mutex::new(None),
        }
    }

    /// Photos the detector rejects keep their best class as the label, in every version.
    #[must_use]
    pub fn keeping_labels_of_unknown(mut self, keep: bool) -> Self {
        self.keep_label_when_unknown = keep;
        self
    }

    /// Whether an operator pinned a version, so that the `latest` pointer is not followed.
    pub fn is_pinned(&self) -> bool {
        self.pinned.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The model folder the served model comes from and its name; `None` for the built-in one.
    pub async fn repository(&self) -> Result<Option<(ModelRepository, String)>, ApiError> {
        match self.source() {
            None | Some(ModelSource::Builtin) => Ok(None),
            Some(ModelSource::Latest {
                repository, name, ..
            }) => Ok(Some((*repository, name))),
            Some(ModelSource::Version { url }) => {
                let (repository, name, _) = resolve(&url, &self.store).await.map_err(|e| {
                    ApiError::Internal(format!("the model folder is unreadable: {e}"))
                })?;
                Ok(Some((repository, name)))
            }
        }
    }

    /// Serves `version` of the model's folder (the hot swap of `/admin/models/{name}/serve`):
    /// loaded and warmed beside the serving one, then swapped in; on failure the old one keeps
    /// serving. A version other than the latest is pinned until `latest` is asked for again.
    pub async fn serve_version(&self, version: &str) -> Result<ReloadOutcome, ApiError> {
        let Some((repository, name)) = self.repository().await? else {
            return Err(ApiError::BadRequest(
                "the built-in model has one version; serve a model folder to choose".into(),
            ));
        };
        let follows_latest = self.source().is_some_and(|s| s.follows_latest());
        if version == LATEST && follows_latest {
            self.pinned
                .store(false, std::sync::atomic::Ordering::Relaxed);
            return self.reload().await;
        }
        let _one_at_a_time = self.reloading.lock().await;
        let version = if version == LATEST {
            repository
                .latest(&name)
                .await
                .map_err(|e| self.reload_failed(LATEST, "the latest pointer cannot be read", &e))?
                .ok_or_else(|| ApiError::NotFound(format!("{name} has no latest version")))?
        } else {
            version.to_string()
        };
        if version.is_empty() || version.contains('/') || version == ".." {
            return Err(ApiError::BadRequest(format!(
                "{version:?} is not a version"
            )));
        }
        match repository.versions(&name).await {
            Ok(versions) if versions.contains(&version) => {}
            Ok(_) => {
                return Err(ApiError::NotFound(format!(
                    "model {name} has no version {version:?}"
                )));
            }
            Err(e) => {
                return Err(self.reload_failed(&version, "the versions cannot be listed", &e));
            }
        }
        let previous = self.current().map(|m| m.version().to_string());
        let version_url = repository.store().url_of(&format!("{name}/{version}"));
        let served = self.load_beside(&version_url, &version).await?;
        let current = served.version().to_string();
        let swapped = previous.as_deref() != Some(current.as_str());
        self.swap_in(served);
        if follows_latest {
            let latest = repository.latest(&name).await.ok().flatten();
            self.pinned.store(
                latest.as_deref() != Some(current.as_str()),
                std::sync::atomic::Ordering::Relaxed,
            );
        } else {
            *self.source.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(ModelSource::Version { url: version_url });
        }
        counter!(MODEL_RELOADS, "outcome" => "swapped").increment(1);
        tracing::info!(model = %name, from = previous.as_deref().unwrap_or("-"), to = %current, "an operator swapped the served version");
        Ok(ReloadOutcome {
            previous,
            current,
            swapped,
        })
    }

    /// The model of the moment, or `None` before the first one is ready.
    pub fn current(&self) -> Option<Arc<ServedModel>> {
        self.current.load_full()
    }

    pub fn source(&self) -> Option<ModelSource> {
        self.source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Loads, warms and serves the model `url` names (`None`: the built-in model).
    pub async fn load(&self, url: Option<&str>) -> Result<Arc<ServedModel>, EngineError> {
        let _one_at_a_time = self.reloading.lock().await;
        let source = ModelSource::from_url(url, &self.store).await?;
        let loaded = match &source {
            // The pointer is read once, here: the version loaded is the one reported.
            ModelSource::Latest {
                repository, name, ..
            } => {
                let version = repository.latest(name).await?.ok_or_else(|| {
                    bestiary_model::ModelError::NotFound {
                        url: repository.store().url_of(name),
                    }
                })?;
                let version_url = repository.store().url_of(&format!("{name}/{version}"));
                load_model(Some(&version_url), &self.engine, &self.store).await?
            }
            ModelSource::Version { url } => {
                load_model(Some(url), &self.engine, &self.store).await?
            }
            ModelSource::Builtin => load_model(None, &self.engine, &self.store).await?,
        };
        let served = self.warm(loaded).await?;
        *self.source.lock().unwrap_or_else(|p| p.into_inner()) = Some(source);
        self.swap_in(served.clone());
        Ok(served)
    }

    /// Serves an already loaded model (warming it first).
    pub async fn install(&self, model: LoadedModel) -> Result<Arc<ServedModel>, EngineError> {
        let served = self.warm(model).await?;
        self.swap_in(served.clone());
        Ok(served)
    }

    /// Checks the source for a newer version; when there is one, loads and warms it beside the
    /// serving model and swaps it in. Requests keep flowing to the old model until the swap.
    pub async fn reload(&self) -> Result<ReloadOutcome, ApiError> {
        let _one_at_a_time = self.reloading.lock().await;
        let previous = self.current().map(|m| m.version().to_string());
        let source = self.source().filter(|_| !self.is_pinned());
        let Some(ModelSource::Latest {
            repository, name, ..
        }) = source
        else {
            // A fixed or pinned version, or the built-in model, does not change.
            let current = previous.clone().ok_or(ApiError::NotReady)?;
            return Ok(ReloadOutcome {
                previous,
                current,
                swapped: false,
            });
        };
        let latest = repository
            .latest(&name)
            .await
            .map_err(|e| self.reload_failed(LATEST, "the latest pointer cannot be read", &e))?
            .ok_or_else(|| {
                self.reload_failed(LATEST, "there is no latest version any more", &name)
            })?;
        if previous.as_deref() == Some(latest.as_str()) {
            return Ok(ReloadOutcome {
                current: latest,
                previous,
                swapped: false,
            });
        }
        let version_url = repository.store().url_of(&format!("{name}/{latest}"));
        let served = self.load_beside(&version_url, &latest).await?;
        let current = served.version().to_string();
        self.swap_in(served);
        counter!(MODEL_RELOADS, "outcome" => "swapped").increment(1);
        tracing::info!(
            model = %name,
            from = previous.as_deref().unwrap_or("-"),
            to = %current,
            "swapped in a new model version"
        );
        Ok(ReloadOutcome {
            previous,
            current,
            swapped: true,
        })
    }

    /// Loads and warms the version at `version_url` while the current one keeps serving; a
    /// failure is counted, logged and reported as a failed reload.
    async fn load_beside(
        &self,
        version_url: &str,
        version: &str,
    ) -> Result<Arc<ServedModel>, ApiError> {
        let loaded = load_model(Some(version_url), &self.engine, &self.store)
            .await
            .map_err(|e| self.reload_failed(version, "its files cannot be loaded", &e))?;
        self.warm(loaded)
            .await
            .map_err(|e| self.reload_failed(version, "it fails its warm-up inference", &e))
    }

    /// The last failed reload since the last good one.
    pub fn reload_failure(&self) -> Option<ReloadFailure> {
        self.reload_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Counts, logs (with the whole cause) and records a failed reload of `version`; the
    /// client's answer says what failed, not where the files are.
    fn reload_failed(
        &self,
        version: &str,
        reason: &str,
        cause: &dyn std::fmt::Display,
    ) -> ApiError {
        counter!(MODEL_RELOADS, "outcome" => "failed").increment(1);
        tracing::warn!(
            version,
            "model reload failed, still serving the previous version: {reason}: {cause}"
        );
        *self
            .reload_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(ReloadFailure {
            version: version.to_string(),
            failed_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            reason: reason.to_string(),
        });
        ApiError::Internal(format!(
            "model reload of version {version} failed: {reason}; the previous version keeps \
             serving (details in the server log)"
        ))
    }

    async fn warm(&self, model: LoadedModel) -> Result<Arc<ServedModel>, EngineError> {
        let model = model.keeping_labels_of_unknown(self.keep_label_when_unknown);
        let served = Arc::new(ServedModel::new(model, &self.limits));
        let warming = served.clone();
        tokio::task::spawn_blocking(move || warming.model.warm_up())
            .await
            .map_err(|e| EngineError::Inference {
                engine: served.engine(),
                reason: format!("warm-up stopped: {e}"),
            })??;
        Ok(served)
    }

    /// Serves `served` from now on; a good version in place clears any reported reload failure.
    fn swap_in(&self, served: Arc<ServedModel>) {
        *self
            .reload_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        if let Some(old) = self.current.swap(Some(served.clone())) {
            gauge!(MODEL_INFO, "name" => old.name().to_string(), "version" => old.version().to_string(), "engine" => old.engine())
                .set(0.0);
        }
        gauge!(MODEL_INFO, "name" => served.name().to_string(), "version" => served.version().to_string(), "engine" => served.engine())
            .set(1.0);
    }
}

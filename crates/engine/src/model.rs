//! A model ready to classify: its metadata, a loaded engine, and where it came from.

use std::sync::Arc;

use bestiary_dataset::decode::DecodeLimits;
use bestiary_model::onnx::proto::tensor_shape_proto::dimension;
use bestiary_model::onnx::proto::{self, ModelProto, type_proto};
use bestiary_model::{ModelMetadata, resolve};
use bestiary_storage::StoreOptions;
use prost::Message as _;

use crate::burn_engine::BurnEngine;
use crate::engine::{Engine, EngineKind, EngineOptions};
use crate::error::EngineError;
use crate::int8::Precision;
use crate::ort_engine::{OrtEngine, ensure_onnxruntime, find_onnxruntime, load_onnxruntime};
use crate::prediction::Prediction;
use crate::preprocess::Preprocessor;
use crate::tract_engine::TractEngine;

/// The ONNX graph of a model version.
pub const ONNX_FILE: &str = "model.onnx";
/// The burn weights of a model version.
pub const WEIGHTS_FILE: &str = "weights.safetensors";

/// A model version loaded into an engine.
#[derive(Clone)]
pub struct LoadedModel {
    pub metadata: Arc<ModelMetadata>,
    pub engine: Arc<dyn Engine>,
    /// The URL it was loaded from (`builtin:animals` for the shipped model).
    pub source: String,
    /// Whether a photo the model's detector rejects is labelled `unknown` (default), or keeps
    /// its most probable class as the label (the `unknown` flag says it either way).
    pub label_unknown: bool,
    /// Which of the version's graphs runs: `fp32` or `int8`, never `auto`.
    pub precision: Precision,
}

impl LoadedModel {
    pub fn new(metadata: ModelMetadata, engine: Arc<dyn Engine>, source: String) -> Self {
        Self {
            metadata: Arc::new(metadata),
            engine,
            source,
            label_unknown: true,
            precision: Precision::Fp32,
        }
    }

    /// Keeps the most probable class as the label of photos the detector rejects.
    #[must_use]
    pub fn keeping_labels_of_unknown(mut self, keep: bool) -> Self {
        self.label_unknown = !keep;
        self
    }

    /// The batch size its engine runs best at (see [`Engine::preferred_batch_size`]).
    pub fn preferred_batch_size(&self) -> usize {
        self.engine.preferred_batch_size().max(1)
    }

    /// Floats per preprocessed image: `3 × size × size`.
    pub fn input_len(&self) -> usize {
        let side = self.metadata.input.image_size as usize;
        3 * side * side
    }

    /// Predictions for `batch` preprocessed images laid out back to back in `input`.
    pub fn classify_tensors(
        &self,
        input: &[f32],
        batch: usize,
        top_k: usize,
    ) -> Result<Vec<Prediction>, EngineError> {
        let per_image = self.input_len();
        if input.len() != batch * per_image {
            return Err(EngineError::InputShape {
                got: input.len(),
                expected: batch * per_image,
                batch,
                per_image,
            });
        }
        let classes = &self.metadata.classes;
        let logits = self.engine.infer(input, batch)?;
        if logits.len() != batch * classes.len() {
            return Err(EngineError::InvalidModel {
                model: self.source.clone(),
                reason: format!(
                    "the network returned {} values for {batch} images of {} classes",
                    logits.len(),
                    classes.len()
                ),
            });
        }
        Ok(logits
            .chunks_exact(classes.len())
            .map(|row| {
                Prediction::calibrated(
                    row,
                    classes,
                    top_k,
                    self.metadata.calibration.as_ref(),
                    self.label_unknown,
                )
            })
            .collect())
    }

    /// Loads the model version at `url` (`<root>/<name>/<version>`, `<root>/<name>/latest` or
    /// `<root>/<name>`) into `engine`: `model.json` and `model.onnx`, plus
    /// `weights.safetensors` for burn. `source` becomes the resolved version's URL. Engines are
    /// built on a blocking thread, since optimising a graph (or downloading onnxruntime, see
    /// [`EngineOptions::allow_download`]) takes a while.
    ///
    /// # Errors
    /// [`EngineError::Model`] when there is no such model or a file cannot be read; otherwise
    /// as [`LoadedModel::from_parts`].
    pub async fn load(
        url: &str,
        engine: EngineKind,
        options: &EngineOptions,
        store: &StoreOptions,
    ) -> Result<LoadedModel, EngineError> {
        let (repository, name, version) = resolve(url, store).await?;
        let metadata = repository.metadata(&name, &version).await?;
        let precision = options.precision.resolve(&metadata, engine, || {
            crate::int8::onnxruntime_reachable(options)
        });
        let graph = crate::int8::graph_file(&metadata, precision, engine).map_err(|reason| {
            EngineError::InvalidModel {
                model: repository.store().url_of(&format!("{name}/{version}")),
                reason,
            }
        })?;
        let onnx = repository.file(&name, &version, graph).await?;
        let weights = match engine {
            EngineKind::Burn => Some(repository.file(&name, &version, WEIGHTS_FILE).await?),
            _ => None,
        };
        let source = repository.store().url_of(&format!("{name}/{version}"));
        let options = EngineOptions {
            precision,
            ..options.clone()
        };
        let task_source = source.clone();
        tokio::task::spawn_blocking(move || {
            Self::from_parts(
                metadata,
                &onnx,
                weights.as_deref(),
                engine,
                &options,
                task_source,
            )
        })
        .await
        .map_err(|e| EngineError::InvalidModel {
            model: source,
            reason: format!("loading stopped: {e}"),
        })?
    }

    /// A model from its parts in memory (a model embedded in the binary, say): `onnx` is its
    /// `model.onnx`, `weights` its `weights.safetensors` (needed by the burn engine only).
    ///
    /// `auto` runs onnxruntime when its library is found (or downloaded, when
    /// `options.allow_download`), else tract with a warning saying how to get the fast engine.
    ///
    /// # Errors
    /// [`EngineError::Unavailable`] when an explicitly requested engine cannot run here (the
    /// message names what is missing), [`EngineError::InvalidModel`] when the graph or weights
    /// do not load or do not match the metadata's input size.
    pub fn from_parts(
        metadata: ModelMetadata,
        onnx: &[u8],
        weights: Option<&[u8]>,
        engine: EngineKind,
        options: &EngineOptions,
        source: impl Into<String>,
    ) -> Result<LoadedModel, EngineError> {
        let source = source.into();
        let size = metadata.input.image_size as usize;
        let naming = |error: EngineError| match error {
            EngineError::InvalidModel { reason, .. } => EngineError::InvalidModel {
                model: source.clone(),
                reason,
            },
            other => other,
        };
        let engine: Arc<dyn Engine> = match engine {
            EngineKind::Burn => {
                let weights = weights.ok_or_else(|| EngineError::InvalidModel {
                    model: source.clone(),
                    reason: format!("the burn engine needs the version's {WEIGHTS_FILE}"),
                })?;
                Arc::new(BurnEngine::from_metadata(&metadata, weights).map_err(naming)?)
            }
            onnx_kind => {
                check_onnx_input(onnx, size).map_err(|reason| EngineError::InvalidModel {
                    model: source.clone(),
                    reason,
                })?;
                onnx_engine(onnx_kind, onnx, size, options).map_err(naming)?
            }
        };
        tracing::debug!("model {source} runs on {}", engine.describe());
        let mut model = Self::new(metadata, engine, source);
        // The caller chose the graph `onnx` is (`load`, `builtin::load`): `auto` there meant fp32.
        model.precision = match options.precision {
            Precision::Int8 => Precision::Int8,
            Precision::Auto | Precision::Fp32 => Precision::Fp32,
        };
        Ok(model)
    }

    /// Runs one image through the engine, so that the first request does not pay for lazy
    /// initialisation (allocations, kernel selection, thread start-up).
    ///
    /// # Errors
    /// When the engine fails, or returns other than one logit per class.
    pub fn warm_up(&self) -> Result<(), EngineError> {
        let input = vec![0.0; self.input_len()];
        self.classify_tensors(&input, 1, 1).map(|_| ())
    }

    /// The preprocessing this model expects, with `limits` on the photos it accepts.
    pub fn preprocessor(&self, limits: DecodeLimits) -> Preprocessor {
        Preprocessor::new(self.metadata.input.clone(), limits)
    }
}

/// The onnxruntime or tract engine for `kind` (`auto`, `ort` or `tract`).
fn onnx_engine(
    kind: EngineKind,
    onnx: &[u8],
    size: usize,
    options: &EngineOptions,
) -> Result<Arc<dyn Engine>, EngineError> {
    let library = || {
        let path = if options.allow_download {
            ensure_onnxruntime()?
        } else {
            find_onnxruntime()?
        };
        load_onnxruntime(&path)
    };
    Ok(match kind {
        EngineKind::Ort => Arc::new(OrtEngine::new(onnx, &library()?, options)?),
        EngineKind::Tract => Arc::new(TractEngine::new(onnx, size, options)?),
        EngineKind::Auto | EngineKind::Burn => match library() {
            Ok(path) => Arc::new(OrtEngine::new(onnx, &path, options)?),
            Err(missing) => {
                tracing::warn!(
                    "the fast engine is missing, so the model runs on tract, several times slower: {missing}"
                );
                Arc::new(TractEngine::new(onnx, size, options)?)
            }
        },
    })
}

/// Checks that the graph's first input is float32 `[N, 3, size, size]` (a dimension left
/// symbolic is accepted), so that a graph and a `model.json` that disagree are refused at
/// load time rather than on the first request.
fn check_onnx_input(onnx: &[u8], size: usize) -> Result<(), String> {
    let model = ModelProto::decode(onnx).map_err(|e| format!("{ONNX_FILE} is not ONNX: {e}"))?;
    let graph = model.graph.unwrap_or_default();
    let input = graph
        .input
        .first()
        .ok_or_else(|| format!("{ONNX_FILE} declares no input"))?;
    let Some(type_proto::Value::TensorType(tensor)) =
        input.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(format!("input `{}` is not a tensor", input.name));
    };
    if tensor.elem_type != proto::DATA_TYPE_FLOAT {
        return Err(format!(
            "input `{}` has element type {}, not float32",
            input.name, tensor.elem_type
        ));
    }
    let dims: Vec<Option<i64>> = tensor
        .shape
        .iter()
        .flat_map(|shape| &shape.dim)
        .map(|dim| match dim.value {
            Some(dimension::Value::DimValue(value)) => Some(value),
            _ => None,
        })
        .collect();
    let expected = [None, Some(3), Some(size as i64), Some(size as i64)];
    let fits = dims.len() == 4
        && dims
            .iter()
            .zip(expected)
            .skip(1)
            .all(|(actual, expected)| actual.is_none() || *actual == expected);
    if fits {
        Ok(())
    } else {
        let shown: Vec<String> = dims
            .iter()
            .map(|d| d.map_or_else(|| "?".to_owned(), |d| d.to_string()))
            .collect();
        Err(format!(
            "input `{}` is [{}], but model.json says [N, 3, {size}, {size}]",
            input.name,
            shown.join(", ")
        ))
    }
}

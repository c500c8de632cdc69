//! The tract engine: the ONNX graph in pure Rust, the fallback when onnxruntime is missing.

use std::sync::{Arc, OnceLock};

use bestiary_model::onnx::CLASS_ACTIVATION;
use tract_linalg::multithread::Executor;
use tract_onnx::prelude::*;

use crate::engine::{Engine, EngineKind, EngineOptions, check_input};
use crate::error::EngineError;
use crate::explain::ClassActivation;

const ENGINE: &str = "tract";

/// An ONNX graph optimised by tract for one image at a time.
///
/// tract is slower per image in batched plans than in a batch-1 plan (measured on
/// EfficientNet-Lite0), so the symbolic batch dimension is fixed to 1 and a batch runs as a
/// loop of single images through the same plan.
pub struct TractEngine {
    plan: Arc<TypedRunnableModel>,
    /// Channels, height and width of one image.
    image: [usize; 3],
    threads: usize,
    /// The graph, kept only when it has class activation maps, to build [`Self::explain_plan`]
    /// from on the first explanation (most servers never explain, and optimising a second
    /// plan at load would double the load time).
    onnx_with_maps: Option<Vec<u8>>,
    /// The plan with `logits` and `class_activation` as its outputs, once built (or why not).
    explain_plan: OnceLock<Result<Arc<TypedRunnableModel>, String>>,
}

impl TractEngine {
    /// Loads `onnx`, whose input is `[N, 3, image_size, image_size]`, and optimises it for one
    /// image, with matrix products on `options.threads()` threads. The graph's `logits` output
    /// is the result (its first output when none is called so); other outputs are pruned.
    ///
    /// # Errors
    /// [`EngineError::InvalidModel`] when tract cannot load or optimise the graph.
    pub fn new(
        onnx: &[u8],
        image_size: usize,
        options: &EngineOptions,
    ) -> Result<Self, EngineError> {
        let invalid = |e: TractError| EngineError::InvalidModel {
            model: "ONNX graph".to_owned(),
            reason: format!("tract cannot load it: {e:#}"),
        };
        let image = [3, image_size, image_size];
        let threads = options.threads();
        let model = tract_onnx::onnx()
            .model_for_read(&mut &onnx[..])
            .map_err(invalid)?;
        let has_maps = outlet_named(&model, CLASS_ACTIVATION)
            .map_err(invalid)?
            .is_some();
        let logits = outlet_named(&model, "logits").map_err(invalid)?;
        let first = model.output_outlets().map_err(invalid)?.first().copied();
        let output = logits.or(first).ok_or_else(|| EngineError::InvalidModel {
            model: "ONNX graph".to_owned(),
            reason: "the graph has no output".to_owned(),
        })?;
        let plan = plan_for(model, &[output], image, threads).map_err(invalid)?;
        Ok(Self {
            plan,
            image,
            threads,
            onnx_with_maps: has_maps.then(|| onnx.to_vec()),
            explain_plan: OnceLock::new(),
        })
    }

    /// The plan whose outputs are `logits` and `class_activation`, built on first use.
    fn explain_plan(&self) -> Result<Arc<TypedRunnableModel>, EngineError> {
        let Some(onnx) = &self.onnx_with_maps else {
            return Err(EngineError::NoClassActivation {
                model: "its graph".to_owned(),
            });
        };
        let built = self.explain_plan.get_or_init(|| {
            let build = || -> TractResult<Arc<TypedRunnableModel>> {
                let model = tract_onnx::onnx().model_for_read(&mut &onnx[..])?;
                let logits = outlet_named(&model, "logits")?;
                let maps = outlet_named(&model, CLASS_ACTIVATION)?;
                let (Some(logits), Some(maps)) = (logits, maps) else {
                    return Err(TractError::msg(format!(
                        "the graph lacks `logits` or `{CLASS_ACTIVATION}`"
                    )));
                };
                plan_for(model, &[logits, maps], self.image, self.threads)
            };
            build().map_err(|e| format!("tract cannot plan the explanation graph: {e:#}"))
        });
        built.clone().map_err(|reason| EngineError::InvalidModel {
            model: "ONNX graph".to_owned(),
            reason,
        })
    }

    fn failed(e: impl std::fmt::Display) -> EngineError {
        EngineError::Inference {
            engine: ENGINE,
            reason: e.to_string(),
        }
    }
}

impl Engine for TractEngine {
    fn infer(&self, input: &[f32], batch: usize) -> Result<Vec<f32>, EngineError> {
        let [channels, height, width] = self.image;
        let per_image = channels * height * width;
        check_input(input, batch, per_image)?;
        let mut logits = Vec::new();
        if batch == 0 {
            return Ok(logits);
        }
        // One state for the whole batch, so its buffers are allocated once.
        let mut state = self.plan.spawn().map_err(Self::failed)?;
        for image in input.chunks_exact(per_image) {
            let tensor =
                Tensor::from_shape(&[1, channels, height, width], image).map_err(Self::failed)?;
            let outputs = state.run(tvec!(tensor.into())).map_err(Self::failed)?;
            let row = outputs
                .first()
                .ok_or_else(|| Self::failed("the plan returned no output"))?
                .to_plain_array_view::<f32>()
                .map_err(Self::failed)?;
            logits.extend(row.iter().copied());
        }
        Ok(logits)
    }

    fn kind(&self) -> EngineKind {
        EngineKind::Tract
    }

    fn explain(&self, input: &[f32]) -> Result<ClassActivation, EngineError> {
        let [channels, height, width] = self.image;
        check_input(input, 1, channels * height * width)?;
        let plan = self.explain_plan()?;
        let tensor =
            Tensor::from_shape(&[1, channels, height, width], input).map_err(Self::failed)?;
        let outputs = plan.run(tvec!(tensor.into())).map_err(Self::failed)?;
        let [logits, maps] = &outputs[..] else {
            return Err(Self::failed(
                "the explanation plan did not return two outputs",
            ));
        };
        let logits = logits.to_plain_array_view::<f32>().map_err(Self::failed)?;
        let maps = maps.to_plain_array_view::<f32>().map_err(Self::failed)?;
        let &[_, _, map_height, map_width] = maps.shape() else {
            return Err(Self::failed(format!(
                "`{CLASS_ACTIVATION}` has shape {:?}, not [1, classes, h, w]",
                maps.shape()
            )));
        };
        Ok(ClassActivation {
            logits: logits.iter().copied().collect(),
            maps: maps.iter().copied().collect(),
            height: map_height,
            width: map_width,
        })
    }

    fn explains(&self) -> bool {
        self.onnx_with_maps.is_some()
    }

    fn describe(&self) -> String {
        format!("tract ({} threads, batch-1 plan)", self.threads)
    }
}

/// The graph output called `name`, if any.
fn outlet_named(model: &InferenceModel, name: &str) -> TractResult<Option<OutletId>> {
    Ok(model
        .output_outlets()?
        .iter()
        .copied()
        .find(|&outlet| model.outlet_label(outlet) == Some(name)))
}

/// `model` with only `outputs`, fixed to batch 1 and optimised into a plan whose matrix
/// products run on `threads` threads.
fn plan_for(
    mut model: InferenceModel,
    outputs: &[OutletId],
    image: [usize; 3],
    threads: usize,
) -> TractResult<Arc<TypedRunnableModel>> {
    model.select_output_outlets(outputs)?;
    let executor = if threads > 1 {
        Executor::multithread(threads)
    } else {
        Executor::SingleThread
    };
    let run_options = RunOptions {
        executor: Some(executor),
        ..RunOptions::default()
    };
    model
        .with_input_fact(0, f32::fact([1, image[0], image[1], image[2]]).into())
        .and_then(|model| model.into_optimized())
        .and_then(|model| model.into_runnable_with_options(&run_options))
}

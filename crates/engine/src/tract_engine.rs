//! The tract engine: the ONNX graph in pure Rust, the fallback when onnxruntime is missing.

use std::sync::Arc;

use tract_linalg::multithread::Executor;
use tract_onnx::prelude::*;

use crate::engine::{Engine, EngineKind, EngineOptions, check_input};
use crate::error::EngineError;

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
        let mut model = tract_onnx::onnx()
            .model_for_read(&mut &onnx[..])
            .map_err(invalid)?;
        let logits = model
            .output_outlets()
            .map_err(invalid)?
            .iter()
            .copied()
            .find(|&outlet| model.outlet_label(outlet) == Some("logits"));
        let first = model.output_outlets().map_err(invalid)?.first().copied();
        let output = logits.or(first).ok_or_else(|| EngineError::InvalidModel {
            model: "ONNX graph".to_owned(),
            reason: "the graph has no output".to_owned(),
        })?;
        model.select_output_outlets(&[output]).map_err(invalid)?;
        let threads = options.threads();
        let executor = if threads > 1 {
            Executor::multithread(threads)
        } else {
            Executor::SingleThread
        };
        let run_options = RunOptions {
            executor: Some(executor),
            ..RunOptions::default()
        };
        let plan = model
            .with_input_fact(0, f32::fact([1, image[0], image[1], image[2]]).into())
            .and_then(|model| model.into_optimized())
            .and_then(|model| model.into_runnable_with_options(&run_options))
            .map_err(invalid)?;
        Ok(Self {
            plan,
            image,
            threads,
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

    fn describe(&self) -> String {
        format!("tract ({} threads, batch-1 plan)", self.threads)
    }
}

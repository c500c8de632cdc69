//! The one trait every inference backend implements, and the names users pick them by.

use std::fmt;
use std::str::FromStr;

use crate::error::EngineError;
use crate::explain::ClassActivation;

/// Runs a model's network on batches of preprocessed images.
///
/// Implementations are shared between threads; `infer` may be called concurrently, and an
/// engine that cannot run calls in parallel serialises them itself.
pub trait Engine: Send + Sync {
    /// Logits, `batch × classes` row-major, for `input` holding `batch` images as
    /// `3 × size × size` channel-major floats, already normalised for the model.
    fn infer(&self, input: &[f32], batch: usize) -> Result<Vec<f32>, EngineError>;

    /// Which backend this is.
    fn kind(&self) -> EngineKind;

    /// The largest batch worth forming for this engine when the user sets no limit.
    ///
    /// Batching pays where one call has a fixed cost to amortise (a GPU launch, burn's
    /// per-call graph work). onnxruntime and tract on a CPU already spread one image over every
    /// core, and their per-image throughput falls as batches grow (the activations leave the
    /// caches): onnxruntime on the built-in model on 2 vCPUs does 448 img/s at batch 1, 427 at 4,
    /// 386 at 8, 319 at 32, and batches of 32 take 0.4 GB more memory.
    fn preferred_batch_size(&self) -> usize {
        1
    }

    /// One line for logs: the backend and how it runs (library, threads, device).
    fn describe(&self) -> String {
        self.kind().to_string()
    }

    /// The logits and class activation maps of one preprocessed image (`input` as for
    /// [`Engine::infer`] with a batch of one). [`Engine::infer`] never computes the maps, so
    /// serving pays nothing for them.
    ///
    /// # Errors
    /// [`EngineError::NoClassActivation`] when the model has no maps (a graph exported before
    /// they existed), which is all an engine without this method can say.
    fn explain(&self, input: &[f32]) -> Result<ClassActivation, EngineError> {
        let _ = input;
        Err(EngineError::NoClassActivation {
            model: "its graph".to_owned(),
        })
    }

    /// Whether [`Engine::explain`] can answer for this model.
    fn explains(&self) -> bool {
        false
    }
}

/// How engines are set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOptions {
    /// Threads one inference may use; `None` means every available core.
    pub threads: Option<usize>,
    /// Inferences that may run at once, each on its own `threads`: onnxruntime opens this many
    /// sessions (plus, when more than one, a session on all their threads for a call that runs
    /// alone); tract runs concurrent calls on one plan anyway and burn serialises them.
    /// Several single-threaded instances beat one instance spread over every core when other
    /// work (decoding) shares the cores: no thread waits at a barrier for one that was
    /// preempted.
    pub instances: usize,
    /// Whether `auto` and `ort` may download the pinned onnxruntime wheel (with pip) when its
    /// library is not installed; see [`crate::ort_engine::ensure_onnxruntime`].
    pub allow_download: bool,
    /// Which of the version's graphs to run: `model.onnx`, or its int8 graph (an error when
    /// the version has none, never a silent fall back to float).
    pub precision: crate::int8::Precision,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            threads: None,
            instances: 1,
            allow_download: true,
            precision: crate::int8::Precision::default(),
        }
    }
}

impl EngineOptions {
    /// Options for serving many images: how many inferences run at once (`instances`, each on
    /// its own inference thread) and on how many threads each, filled in from whichever of the
    /// two the user gave. With neither, CPU engines get one single-threaded instance per core:
    /// decoding shares those cores, and an inference spread over every core then stalls at its
    /// barriers whenever one of its threads is preempted (2 vCPUs, 5,000 photos from S3, 3
    /// alternating runs each: two 1-thread onnxruntime sessions 16.3–18.4 s and 27–29
    /// CPU-seconds, one 2-thread session 18.8–28.3 s and 32–48 CPU-seconds). burn serialises
    /// its calls, so it gets one instance on every core.
    pub fn for_throughput(
        engine: EngineKind,
        threads: Option<usize>,
        instances: Option<usize>,
    ) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (threads, instances) = match (threads, instances) {
            (Some(t), Some(i)) => (t, i),
            (Some(t), None) => (t, (cores / t.max(1)).max(1)),
            (None, Some(i)) => ((cores / i.max(1)).max(1), i),
            (None, None) if engine == EngineKind::Burn => (cores, 1),
            (None, None) => (1, cores),
        };
        Self {
            threads: Some(threads),
            instances,
            ..Self::default()
        }
    }

    /// The thread count to use: the configured one, else the available cores.
    pub fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            })
            .max(1)
    }
}

/// Backend selection, as given by `--engine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum EngineKind {
    /// onnxruntime when its library loads, else tract.
    #[default]
    Auto,
    /// onnxruntime through the `ort` crate, loaded at run time.
    Ort,
    /// tract, pure Rust.
    Tract,
    /// The burn network itself (CPU, or GPU in builds with burn's `cuda` feature).
    Burn,
}

impl EngineKind {
    pub const NAMES: [&'static str; 4] = ["auto", "ort", "tract", "burn"];

    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Ort => "ort",
            Self::Tract => "tract",
            Self::Burn => "burn",
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for EngineKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "ort" | "onnxruntime" => Ok(Self::Ort),
            "tract" => Ok(Self::Tract),
            "burn" => Ok(Self::Burn),
            other => Err(format!(
                "unknown engine {other:?} (expected one of {})",
                Self::NAMES.join(", ")
            )),
        }
    }
}

/// Checks that `input` holds exactly `batch` images of `per_image` floats; engines call it
/// before handing a buffer to a runtime that would read past it or misshape it.
pub(crate) fn check_input(
    input: &[f32],
    batch: usize,
    per_image: usize,
) -> Result<(), EngineError> {
    if input.len() != batch * per_image {
        return Err(EngineError::InputShape {
            got: input.len(),
            expected: batch * per_image,
            batch,
            per_image,
        });
    }
    Ok(())
}

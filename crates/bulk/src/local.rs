//! The model run in this process: photos decoded and resized on a pool of worker threads, and
//! batched into the engine on inference threads (one per engine instance), never on the async
//! executor.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bestiary_dataset::decode::{DecodeError, DecodeLimits};
use bestiary_engine::{
    EngineError, EngineKind, EngineOptions, ImageInfo, LoadedModel, Prediction, Preprocessor,
};
use bestiary_storage::StoreOptions;
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::error::{BulkError, Result};

/// One image waiting for inference.
struct InferenceJob {
    tensor: Vec<f32>,
    reply: oneshot::Sender<Result<Prediction, EngineError>>,
}

/// A loaded model with its decoding pool and inference thread; dropping it stops the thread.
pub struct LocalClassifier {
    model: LoadedModel,
    preprocessor: Arc<Preprocessor>,
    decode_pool: rayon::ThreadPool,
    jobs: Sender<InferenceJob>,
}

/// How the local model is set up.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    pub model: Option<String>,
    pub engine: EngineKind,
    pub options: EngineOptions,
    /// `None`: the engine's preferred batch size.
    pub batch_size: Option<usize>,
    pub decode_threads: usize,
    pub batch_wait: Duration,
    pub decode_limits: DecodeLimits,
    pub top_k: usize,
}

impl LocalClassifier {
    /// Loads the model (the built-in one without a URL) and starts the threads.
    ///
    /// # Errors
    /// When the model cannot be loaded or the threads cannot start.
    pub async fn load(settings: &LocalSettings, store: &StoreOptions) -> Result<Self> {
        let model = bestiary_engine::builtin::load_model(
            settings.model.as_deref(),
            settings.engine,
            &settings.options,
            store,
        )
        .await?;
        let preprocessor = Arc::new(model.preprocessor(settings.decode_limits.clone()));
        let decode_pool = rayon::ThreadPoolBuilder::new()
            .num_threads(settings.decode_threads)
            .thread_name(|i| format!("bestiary-decode-{i}"))
            .build()
            .map_err(|e| BulkError::config(format!("cannot start the decoding threads: {e}")))?;
        let (jobs, receiver) = std::sync::mpsc::channel();
        // The inference threads take turns at the queue: each gathers its own batch.
        let receiver = Arc::new(Mutex::new(receiver));
        let batch_size = settings
            .batch_size
            .unwrap_or_else(|| model.preferred_batch_size());
        let (batch_wait, top_k) = (settings.batch_wait, settings.top_k);
        for index in 0..settings.options.instances.max(1) {
            let (model, receiver) = (model.clone(), receiver.clone());
            std::thread::Builder::new()
                .name(format!("bestiary-inference-{index}"))
                .spawn(move || run_batches(&model, &receiver, batch_size, batch_wait, top_k))
                .map_err(|e| {
                    BulkError::config(format!("cannot start the inference threads: {e}"))
                })?;
        }
        Ok(Self {
            model,
            preprocessor,
            decode_pool,
            jobs,
        })
    }

    pub fn model(&self) -> &LoadedModel {
        &self.model
    }

    /// Decodes and preprocesses `bytes` on the decoding pool.
    ///
    /// # Errors
    /// [`EngineError::Decode`] for a photo that cannot be used.
    pub async fn preprocess(&self, bytes: Bytes) -> Result<(Vec<f32>, ImageInfo), EngineError> {
        let (reply, answer) = oneshot::channel();
        let preprocessor = self.preprocessor.clone();
        self.decode_pool.spawn(move || {
            let mut tensor = vec![0.0; preprocessor.input_len()];
            // A decoder panicking on hostile bytes must not take the pool (or the run) down.
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                preprocessor.preprocess(&bytes, &mut tensor)
            }))
            .unwrap_or_else(|_| {
                Err(DecodeError::Corrupt("the decoder failed on this file".into()).into())
            });
            let _ = reply.send(result.map(|info| (tensor, info)));
        });
        answer.await.unwrap_or_else(|_| {
            Err(EngineError::Inference {
                engine: "decoder",
                reason: "the decoding pool stopped".into(),
            })
        })
    }

    /// The prediction for one preprocessed image, batched with whatever else is waiting.
    ///
    /// # Errors
    /// When the engine fails.
    pub async fn predict(&self, tensor: Vec<f32>) -> Result<Prediction, EngineError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || EngineError::Inference {
            engine: "inference thread",
            reason: "the inference thread stopped".into(),
        };
        self.jobs
            .send(InferenceJob { tensor, reply })
            .map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// An inference thread: takes the first waiting image, gathers up to `batch_size` (waiting at
/// most `batch_wait` for stragglers), runs them as one batch and answers each. The queue is
/// held only while gathering, so other inference threads gather while this one runs.
fn run_batches(
    model: &LoadedModel,
    queue: &Mutex<Receiver<InferenceJob>>,
    batch_size: usize,
    batch_wait: Duration,
    top_k: usize,
) {
    let mut input = Vec::with_capacity(batch_size * model.input_len());
    loop {
        let jobs = queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Ok(first) = jobs.recv() else { break };
        let mut batch = vec![first];
        let deadline = Instant::now() + batch_wait;
        while batch.len() < batch_size {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match jobs.recv_timeout(left) {
                        Ok(job) => batch.push(job),
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
            }
        }
        drop(jobs);
        input.clear();
        for job in &batch {
            input.extend_from_slice(&job.tensor);
        }
        match model.classify_tensors(&input, batch.len(), top_k) {
            Ok(predictions) => {
                for (job, prediction) in batch.into_iter().zip(predictions) {
                    let _ = job.reply.send(Ok(prediction));
                }
            }
            Err(error) => {
                let reason = error.to_string();
                for job in batch {
                    let _ = job.reply.send(Err(EngineError::Inference {
                        engine: model.engine.kind().name(),
                        reason: reason.clone(),
                    }));
                }
            }
        }
    }
}

//! Dynamic batching: requests are admitted into a bounded queue, their pre-processed images are
//! gathered into batches (up to a size, or until the first has waited long enough) and run on
//! dedicated inference threads (one per engine instance), while the next images are decoded on
//! the blocking pool.

use std::borrow::Cow;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bestiary_engine::Prediction;
use metrics::{counter, gauge, histogram};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::error::ApiError;
use crate::metrics::{
    BATCH_SIZE, IMAGES_CLASSIFIED, INFERENCE_DURATION, QUEUE_DEPTH, QUEUE_DURATION,
};
use crate::model::ServedModel;
use crate::usage::Usage;

/// How batches are formed.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// `None`: each model's engine decides ([`bestiary_engine::LoadedModel::preferred_batch_size`]).
    pub max_batch_size: Option<usize>,
    pub max_batch_delay: Duration,
    /// Images admitted at once, from pre-processing until their batch has run.
    pub max_queue: usize,
    /// Inference threads, each running its own batches; as many as the engine has instances
    /// ([`bestiary_engine::EngineOptions::instances`]), so that none waits for another.
    pub inference_threads: usize,
}

/// One image's answer and how it got there.
#[derive(Debug, Clone)]
pub struct Classified {
    pub prediction: Prediction,
    /// From submission until its batch started.
    pub queued: Duration,
    /// The whole batch's inference time.
    pub inference: Duration,
    pub batch_size: usize,
}

type Reply = oneshot::Sender<Result<Classified, ApiError>>;

/// One pre-processed image waiting for inference. It carries the model it was prepared for, so
/// that a model swap never mixes inputs of one model into a batch of another.
struct Job {
    model: Arc<ServedModel>,
    input: Vec<f32>,
    top_k: usize,
    submitted: Instant,
    reply: Reply,
}

/// The queue and its inference threads.
pub struct Batcher {
    /// `None` once closed: no new jobs, the threads finish those queued and stop.
    sender: Mutex<Option<mpsc::Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    admission: Arc<Semaphore>,
    max_queue: usize,
}

/// Places in the queue held by one request until it finishes, successfully or not.
pub struct Admission {
    permit: Option<OwnedSemaphorePermit>,
    admission: Arc<Semaphore>,
    max_queue: usize,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            crate::metrics::images_in_flight_changed(-(permit.num_permits() as i64));
        }
        report_queue_depth(&self.admission, self.max_queue);
    }
}

fn report_queue_depth(admission: &Semaphore, max_queue: usize) {
    gauge!(QUEUE_DEPTH).set(max_queue.saturating_sub(admission.available_permits()) as f64);
}

impl Batcher {
    /// Starts the inference threads.
    pub fn start(settings: BatchSettings, usage: Arc<Usage>) -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::channel();
        // The threads take turns at the queue: each gathers its own batch, then runs it.
        let receiver = Arc::new(Mutex::new(receiver));
        let threads = (0..settings.inference_threads.max(1))
            .map(|index| {
                let (receiver, usage) = (receiver.clone(), usage.clone());
                std::thread::Builder::new()
                    .name(format!("bestiary-inference-{index}"))
                    .spawn(move || run_batches(&receiver, settings, &usage))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self {
            sender: Mutex::new(Some(sender)),
            threads: Mutex::new(threads),
            admission: Arc::new(Semaphore::new(settings.max_queue)),
            max_queue: settings.max_queue,
        })
    }

    /// Reserves places for `images` images, or fails at once when the queue is too full.
    pub fn admit(&self, images: usize) -> Result<Admission, ApiError> {
        if images > self.max_queue {
            return Err(ApiError::PayloadTooLarge(format!(
                "{images} images in one request; this server queues at most {}",
                self.max_queue
            )));
        }
        let wanted = u32::try_from(images).unwrap_or(u32::MAX);
        let permit = self
            .admission
            .clone()
            .try_acquire_many_owned(wanted)
            .map_err(|_| {
                ApiError::overloaded(format!(
                    "the queue is full ({} of {} places taken); retry shortly",
                    self.queue_depth(),
                    self.max_queue
                ))
            })?;
        crate::metrics::images_in_flight_changed(i64::from(wanted));
        report_queue_depth(&self.admission, self.max_queue);
        Ok(Admission {
            permit: Some(permit),
            admission: self.admission.clone(),
            max_queue: self.max_queue,
        })
    }

    /// Images admitted and not finished.
    pub fn queue_depth(&self) -> usize {
        self.max_queue
            .saturating_sub(self.admission.available_permits())
    }

    /// Queues one pre-processed image of `model`; the answer comes on the returned channel.
    pub fn submit(
        &self,
        model: Arc<ServedModel>,
        input: Vec<f32>,
        top_k: usize,
    ) -> Result<oneshot::Receiver<Result<Classified, ApiError>>, ApiError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            model,
            input,
            top_k,
            submitted: Instant::now(),
            reply,
        };
        let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        match sender.as_ref() {
            Some(sender) => sender.send(job).map_err(|_| ApiError::ShuttingDown)?,
            None => return Err(ApiError::ShuttingDown),
        }
        Ok(answer)
    }

    /// Stops taking jobs and waits until those already queued have run.
    pub fn close(&self) {
        drop(self.sender.lock().unwrap_or_else(|p| p.into_inner()).take());
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("an inference thread panicked");
            }
        }
    }
}

/// An inference thread: gathers jobs into batches until every sender is gone. The queue is held
/// only while gathering, so other inference threads gather while this one runs its batch.
fn run_batches(queue: &Mutex<mpsc::Receiver<Job>>, settings: BatchSettings, usage: &Usage) {
    // A job for another model than the batch being gathered starts this thread's next batch.
    let mut carried: Option<Job> = None;
    loop {
        let (receiver, first) = match carried.take() {
            // Never wait for the queue with a job in hand: the thread holding it may be blocked
            // on an empty queue, and would keep this job unanswered until more work arrives.
            // When the queue is busy the held job runs as a batch of its own.
            Some(job) => match queue.try_lock() {
                Ok(receiver) => (Some(receiver), job),
                Err(TryLockError::Poisoned(poisoned)) => (Some(poisoned.into_inner()), job),
                Err(TryLockError::WouldBlock) => (None, job),
            },
            None => {
                let receiver = queue.lock().unwrap_or_else(|p| p.into_inner());
                match receiver.recv() {
                    Ok(job) => (Some(receiver), job),
                    Err(_) => return,
                }
            }
        };
        let mut batch = vec![first];
        if let Some(receiver) = receiver {
            carried = gather(&receiver, &mut batch, settings);
        }
        run_batch(batch, usage);
    }
}

/// Adds jobs of the batch's model to `batch` until it is full or its first job has waited
/// `max_batch_delay`; returns a job of another model that ended the gathering.
fn gather(
    receiver: &mpsc::Receiver<Job>,
    batch: &mut Vec<Job>,
    settings: BatchSettings,
) -> Option<Job> {
    // The delay counts from the first job's submission: when inference was busy, jobs that
    // already waited go at once with whatever has queued behind them.
    let deadline = batch[0].submitted + settings.max_batch_delay;
    let max_batch_size = settings
        .max_batch_size
        .unwrap_or_else(|| batch[0].model.model.preferred_batch_size());
    while batch.len() < max_batch_size {
        let wait = deadline.saturating_duration_since(Instant::now());
        // Disconnected means shutdown: the batch gathered so far still runs.
        let next = if wait.is_zero() {
            receiver.try_recv().ok()
        } else {
            receiver.recv_timeout(wait).ok()
        };
        match next {
            Some(job) if Arc::ptr_eq(&job.model, &batch[0].model) => batch.push(job),
            other => return other,
        }
    }
    None
}

fn run_batch(mut batch: Vec<Job>, usage: &Usage) {
    // Requests that timed out or whose client left need no answer: skip their images.
    batch.retain(|job| !job.reply.is_closed());
    if batch.is_empty() {
        return;
    }
    let model = batch[0].model.clone();
    let size = batch.len();
    let top_k = batch.iter().map(|job| job.top_k).max().unwrap_or(1);
    let started = Instant::now();
    let input: Cow<[f32]> = if size == 1 {
        Cow::Borrowed(&batch[0].input)
    } else {
        Cow::Owned(
            batch
                .iter()
                .flat_map(|job| job.input.iter().copied())
                .collect(),
        )
    };
    // A panic inside an engine must fail this batch, not the thread every later request needs.
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        model.model.classify_tensors(&input, size, top_k)
    }));
    drop(input);
    let inference = started.elapsed();
    histogram!(BATCH_SIZE).record(size as f64);
    histogram!(INFERENCE_DURATION).record(inference.as_secs_f64());
    let predictions = match outcome {
        Ok(Ok(predictions)) => predictions,
        Ok(Err(error)) => return fail(batch, &error.to_string()),
        Err(_) => return fail(batch, "the inference engine panicked"),
    };
    usage.record_batch(inference, predictions.iter().map(|p| p.label.as_str()));
    for (job, mut prediction) in batch.into_iter().zip(predictions) {
        prediction.top_k.truncate(job.top_k);
        let queued = started.saturating_duration_since(job.submitted);
        histogram!(QUEUE_DURATION).record(queued.as_secs_f64());
        counter!(IMAGES_CLASSIFIED, "label" => prediction.label.clone()).increment(1);
        // The receiver may have gone meanwhile; its request no longer needs the answer.
        let _ = job.reply.send(Ok(Classified {
            prediction,
            queued,
            inference,
            batch_size: size,
        }));
    }
}

fn fail(batch: Vec<Job>, reason: &str) {
    tracing::error!(images = batch.len(), "inference failed: {reason}");
    for job in batch {
        let _ = job.reply.send(Err(ApiError::Internal(format!(
            "inference failed: {reason}"
        ))));
    }
}

//! The request path shared by every API: admit, pre-process each photo on the blocking pool,
//! queue it for batched inference, and gather the answers in order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use metrics::{counter, histogram};

use crate::batcher::Classified;
use crate::error::ApiError;
use crate::input::ImageInput;
use crate::metrics::{IMAGES_REJECTED, PREPROCESS_DURATION};
use crate::model::ServedModel;
use crate::state::AppState;

/// One photo's answer.
#[derive(Debug, Clone)]
pub struct ImageOutcome {
    pub name: String,
    /// Size of the photo as decoded (upright), when it came as a photo rather than a tensor.
    pub size: Option<(u32, u32)>,
    pub preprocess: Duration,
    pub classified: Classified,
}

/// Every photo of one request, classified by one model version.
#[derive(Clone)]
pub struct Classification {
    pub model: Arc<ServedModel>,
    pub images: Vec<ImageOutcome>,
}

/// Classifies photos. Decoding of each photo starts at once on the blocking pool and its
/// inference is queued as soon as it is decoded, so decoding and inference overlap.
pub async fn classify_images(
    state: &AppState,
    images: Vec<ImageInput>,
    top_k: usize,
) -> Result<Classification, ApiError> {
    // The model is taken once: every photo of the request uses the same version even if a
    // new one is swapped in meanwhile.
    let model = state.model()?;
    let _places = state.batcher.admit(images.len())?;
    let answers = images.into_iter().map(|image| {
        let model = model.clone();
        async move {
            let decoding_slot = state
                .decoding
                .acquire()
                .await
                .map_err(|_| ApiError::ShuttingDown)?;
            let started = Instant::now();
            let preprocessing = model.clone();
            let ImageInput { name, bytes } = image;
            let decoded = tokio::task::spawn_blocking(move || {
                let mut input = vec![0.0f32; preprocessing.model.input_len()];
                let info = preprocessing.preprocessor.preprocess(&bytes, &mut input);
                info.map(|info| (input, info))
            })
            .await;
            drop(decoding_slot);
            let (input, info) = decoded
                .map_err(|e| ApiError::Internal(format!("pre-processing stopped: {e}")))?
                .map_err(|e| {
                    let error = ApiError::from_engine(e, &name);
                    if let ApiError::UndecodableImage { reason, .. } = &error {
                        counter!(IMAGES_REJECTED, "reason" => *reason).increment(1);
                    }
                    error
                })?;
            let preprocess = started.elapsed();
            histogram!(PREPROCESS_DURATION).record(preprocess.as_secs_f64());
            let classified = queue(state, model, input, top_k).await?;
            Ok::<_, ApiError>(ImageOutcome {
                name,
                size: Some((info.width, info.height)),
                preprocess,
                classified,
            })
        }
    });
    let images = try_join_all(answers).await?;
    Ok(Classification { model, images })
}

/// Classifies images given as one already normalised tensor of `batch` images, back to back.
pub async fn classify_tensor(
    state: &AppState,
    model: Arc<ServedModel>,
    tensor: Vec<f32>,
    batch: usize,
    top_k: usize,
) -> Result<Classification, ApiError> {
    let per_image = model.model.input_len();
    if tensor.len() != batch * per_image {
        return Err(ApiError::BadRequest(format!(
            "the tensor holds {} values; {batch} images of this model need {}",
            tensor.len(),
            batch * per_image
        )));
    }
    let _places = state.batcher.admit(batch)?;
    let answers = tensor
        .chunks_exact(per_image)
        .enumerate()
        .map(|(i, image)| {
            let model = model.clone();
            async move {
                let classified = queue(state, model, image.to_vec(), top_k).await?;
                Ok::<_, ApiError>(ImageOutcome {
                    name: format!("#{i}"),
                    size: None,
                    preprocess: Duration::ZERO,
                    classified,
                })
            }
        });
    let images = try_join_all(answers).await?;
    Ok(Classification { model, images })
}

async fn queue(
    state: &AppState,
    model: Arc<ServedModel>,
    input: Vec<f32>,
    top_k: usize,
) -> Result<Classified, ApiError> {
    let answer = state.batcher.submit(model, input, top_k)?;
    answer.await.map_err(|_| ApiError::ShuttingDown)?
}

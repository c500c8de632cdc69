//! The parallel loader that keeps a trainer fed: bounded concurrent downloads, decoding on a
//! worker pool, the local image cache, seeded augmentation and ordered batches.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bestiary_storage::Store;
use futures::StreamExt;
use image::RgbImage;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::cache::{CachedImage, ImageCache};
use crate::decode::{DecodeError, DecodeLimits, decode};
use crate::source::{Sample, SkippedFile};
use crate::transform::{
    AugmentConfig, Normalization, augment_into, center_crop_into, resize_shorter_side,
};

/// How batches are made.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Side of the square model input.
    pub image_size: u32,
    pub batch_size: usize,
    pub normalization: Normalization,
    /// Training augmentation; `None` gives the evaluation transform (centre crop).
    pub augment: Option<AugmentConfig>,
    /// Share of the shorter side kept by the evaluation centre crop.
    pub crop_fraction: f32,
    pub shuffle: bool,
    /// Drop a last, smaller batch (training keeps batch statistics steady that way).
    pub drop_last: bool,
    /// Seeds shuffling and augmentation, mixed with the epoch number.
    pub seed: u64,
    /// Photos being downloaded or decoded at once.
    pub in_flight: usize,
    /// Finished batches waiting for the consumer.
    pub prefetch_batches: usize,
    /// Decoding threads.
    pub workers: usize,
    pub cache: Option<ImageCache>,
    pub decode_limits: DecodeLimits,
}

impl LoaderConfig {
    pub fn new(image_size: u32, batch_size: usize) -> Self {
        Self {
            image_size,
            batch_size,
            normalization: Normalization::imagenet(),
            augment: None,
            crop_fraction: 0.875,
            shuffle: false,
            drop_last: false,
            seed: 0,
            in_flight: 32,
            prefetch_batches: 4,
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            cache: None,
            decode_limits: DecodeLimits::default(),
        }
    }

    /// Photos are kept (and cached) with their shorter side at this size, enough for the centre
    /// crop and for random crops without the cost of full-size photos.
    pub fn cache_side(&self) -> u32 {
        ((self.image_size as f32) * 1.25).round() as u32
    }
}

/// A batch of normalised images in NCHW order with their labels.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `len × 3 × image_size × image_size` values.
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
    /// Indices into the loader's samples.
    pub samples: Vec<usize>,
    pub image_size: u32,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Running totals of a loader, over all its epochs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoaderStats {
    pub images: u64,
    pub cache_hits: u64,
    pub downloads: u64,
    pub bytes_downloaded: u64,
    pub bad_files: u64,
}

#[derive(Default)]
struct Counters {
    images: AtomicU64,
    cache_hits: AtomicU64,
    downloads: AtomicU64,
    bytes_downloaded: AtomicU64,
}

struct Shared {
    samples: Vec<Sample>,
    stores: Vec<Store>,
    config: LoaderConfig,
    pool: rayon::ThreadPool,
    bad: Mutex<BTreeMap<usize, SkippedFile>>,
    counters: Counters,
}

/// Loads samples as batches, epoch after epoch.
#[derive(Clone)]
pub struct Loader {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
}

impl Loader {
    /// A loader over `samples`, whose `store` fields index `stores`. Downloads run on the tokio
    /// runtime this is called from.
    pub fn new(samples: Vec<Sample>, stores: Vec<Store>, config: LoaderConfig) -> Self {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.workers.max(1))
            .thread_name(|i| format!("bestiary-decode-{i}"))
            .build()
            .expect("decode thread pool");
        let shared = Shared {
            samples,
            stores,
            config,
            pool,
            bad: Mutex::default(),
            counters: Counters::default(),
        };
        Self {
            shared: Arc::new(shared),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    pub fn samples(&self) -> &[Sample] {
        &self.shared.samples
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.shared.config
    }

    /// Batches per epoch, assuming no bad files.
    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (
            self.shared.samples.len(),
            self.shared.config.batch_size.max(1),
        );
        if self.shared.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// Files that could not be used so far, with the reason.
    pub fn bad_files(&self) -> Vec<SkippedFile> {
        self.shared
            .bad
            .lock()
            .expect("bad files")
            .values()
            .cloned()
            .collect()
    }

    pub fn stats(&self) -> LoaderStats {
        let c = &self.shared.counters;
        LoaderStats {
            images: c.images.load(Ordering::Relaxed),
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            downloads: c.downloads.load(Ordering::Relaxed),
            bytes_downloaded: c.bytes_downloaded.load(Ordering::Relaxed),
            bad_files: self.shared.bad.lock().expect("bad files").len() as u64,
        }
    }

    /// The sample order of `epoch`: shuffled from the seed and epoch when shuffling.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.shared.samples.len()).collect();
        if self.shared.config.shuffle {
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(
                self.shared.config.seed,
                epoch,
                u64::MAX,
            )));
        }
        order
    }

    /// Starts loading `epoch`; batches come out in a fixed order for a given seed and epoch,
    /// whatever the timing of downloads, so runs are reproducible.
    pub fn epoch(&self, epoch: u64) -> Epoch {
        let (tx, rx) = tokio::sync::mpsc::channel(self.shared.config.prefetch_batches.max(1));
        let shared = self.shared.clone();
        let order = self.order(epoch);
        let task = self.runtime.spawn(async move {
            let config = &shared.config;
            let mut loaded = futures::stream::iter(order)
                .map(|index| load_tensor(shared.clone(), index, epoch))
                .buffered(config.in_flight.max(1));
            let mut batch = Batch::empty(config);
            while let Some(item) = loaded.next().await {
                let Some((index, tensor)) = item else {
                    continue;
                };
                batch.images.extend_from_slice(&tensor);
                batch.labels.push(shared.samples[index].label as u32);
                batch.samples.push(index);
                if batch.len() == config.batch_size
                    && tx
                        .send(std::mem::replace(&mut batch, Batch::empty(config)))
                        .await
                        .is_err()
                {
                    return; // the consumer went away
                }
            }
            if !batch.is_empty() && !config.drop_last {
                let _ = tx.send(batch).await;
            }
        });
        Epoch { rx, task }
    }
}

impl Batch {
    fn empty(config: &LoaderConfig) -> Self {
        let values = config.batch_size * 3 * (config.image_size as usize).pow(2);
        Self {
            images: Vec::with_capacity(values),
            labels: Vec::with_capacity(config.batch_size),
            samples: Vec::with_capacity(config.batch_size),
            image_size: config.image_size,
        }
    }
}

/// The batches of one epoch. Dropping it stops the loading.
pub struct Epoch {
    rx: tokio::sync::mpsc::Receiver<Batch>,
    task: tokio::task::JoinHandle<()>,
}

impl Epoch {
    /// The next batch, for async callers.
    pub async fn next_batch(&mut self) -> Option<Batch> {
        self.rx.recv().await
    }
}

/// Blocking iteration, for training loops running on their own threads (not inside async code).
impl Iterator for Epoch {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        self.rx.blocking_recv()
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A seed for one use (sample augmentation, epoch shuffle) from the run seed.
fn mix(seed: u64, epoch: u64, index: u64) -> u64 {
    let mut bytes = [0u8; 24];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&epoch.to_le_bytes());
    bytes[16..].copy_from_slice(&index.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// Runs `work` on the decode pool and waits for it without blocking the async runtime.
async fn on_pool<T: Send + 'static>(
    shared: &Arc<Shared>,
    work: impl FnOnce(&Shared) -> T + Send + 'static,
) -> T {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let inner = shared.clone();
    shared.pool.spawn(move || {
        let _ = tx.send(work(&inner));
    });
    rx.await.expect("decode worker panicked")
}

/// One sample as a normalised tensor, or `None` if the file is bad (then recorded).
async fn load_tensor(shared: Arc<Shared>, index: usize, epoch: u64) -> Option<(usize, Vec<f32>)> {
    let sample = &shared.samples[index];
    let store = &shared.stores[sample.store];
    let side = shared.config.cache_side();
    let cache_key = shared.config.cache.as_ref().and_then(|_| {
        ImageCache::key(
            &store.url_of(&sample.key),
            sample.etag.as_deref(),
            sample.size,
            side,
        )
    });

    if let Some(key) = cache_key.clone() {
        let cached = on_pool(&shared, move |shared| {
            let cache = shared.config.cache.as_ref().expect("cache configured");
            match cache.get(&key)? {
                CachedImage::Image(image) => Some(Ok(transform(shared, &image, index, epoch))),
                CachedImage::Bad { code, reason } => Some(Err((code, reason))),
            }
        })
        .await;
        if let Some(result) = cached {
            shared.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return finish(&shared, index, result);
        }
    }

    let bytes = match store.get(&sample.key).await {
        Ok(bytes) => bytes,
        Err(e) => return finish(&shared, index, Err(("unreadable".into(), e.to_string()))),
    };
    shared.counters.downloads.fetch_add(1, Ordering::Relaxed);
    shared
        .counters
        .bytes_downloaded
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    let result = on_pool(&shared, move |shared| {
        let decoded = decode(&bytes, &shared.config.decode_limits).map(|d| downsize(d.image, side));
        if let (Some(cache), Some(key)) = (&shared.config.cache, &cache_key) {
            // A failed cache write only costs speed on the next epoch.
            if let Err(e) = cache.put(key, decoded.as_ref()) {
                tracing::warn!("image cache write failed: {e}");
            }
        }
        match decoded {
            Ok(image) => Ok(transform(shared, &image, index, epoch)),
            Err(e) => Err((e.code().to_string(), e.to_string())),
        }
    })
    .await;
    finish(&shared, index, result)
}

fn finish(
    shared: &Shared,
    index: usize,
    result: Result<Vec<f32>, (String, String)>,
) -> Option<(usize, Vec<f32>)> {
    match result {
        Ok(tensor) => {
            shared.counters.images.fetch_add(1, Ordering::Relaxed);
            Some((index, tensor))
        }
        Err((code, reason)) => {
            let id = shared.samples[index].id.clone();
            shared
                .bad
                .lock()
                .expect("bad files")
                .entry(index)
                .or_insert(SkippedFile { id, code, reason });
            None
        }
    }
}

/// Shrinks a photo so its shorter side is `side`; smaller photos are kept as they are.
pub fn downsize(image: RgbImage, side: u32) -> RgbImage {
    if image.width().min(image.height()) > side {
        resize_shorter_side(&image, side)
    } else {
        image
    }
}

fn transform(shared: &Shared, image: &RgbImage, index: usize, epoch: u64) -> Vec<f32> {
    let config = &shared.config;
    let mut tensor = vec![0f32; 3 * (config.image_size as usize).pow(2)];
    match &config.augment {
        Some(augment) => {
            let mut rng = ChaCha8Rng::seed_from_u64(mix(config.seed, epoch, index as u64));
            augment_into(
                image,
                config.image_size,
                augment,
                &mut rng,
                &config.normalization,
                &mut tensor,
            );
        }
        None => center_crop_into(
            image,
            config.image_size,
            config.crop_fraction,
            &config.normalization,
            &mut tensor,
        ),
    }
    tensor
}

/// Decodes a fetched photo on the calling thread: used where no pool is involved (inspection).
pub fn decode_for_report(
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<(u32, u32, String), DecodeError> {
    decode(bytes, limits).map(|d| {
        (
            d.width,
            d.height,
            format!("{:?}", d.format).to_ascii_lowercase(),
        )
    })
}

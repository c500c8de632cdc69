//! The training loop: epochs over the loader, validation, checkpoints that survive `kill -9`, and
//! the final versioned model artifact.

use std::time::Instant;

use bestiary_dataset::transform::AugmentConfig;
use bestiary_dataset::{Batch, Dataset, ImageCache, Loader, LoaderConfig};
use bestiary_model::ModelRepository;
use bestiary_networks::arch::{param_ids, with_param_ids};
use bestiary_networks::device::training_device;
use bestiary_networks::weights::{weights_from_bytes, weights_to_bytes};
use bestiary_networks::{ArchitectureConfig, Classifier};
use bestiary_storage::Store;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{
    AdamWConfig, GradientsParams, ModuleOptimizer, SgdConfig, decay::WeightDecayConfig,
    momentum::MomentumConfig,
};
use burn::prelude::*;

use crate::artifact::store_version;
use crate::config::{Augmentation, OptimizerKind, TrainConfig};
use crate::error::{Result, TrainError};
use crate::input::input_spec_for;
use crate::metrics::{EpochMetrics, correct, metrics_lines};
use crate::run::{PartialEpoch, Resume, RunOptions, RunState, TrainObserver, TrainOutcome};

/// Where a run keeps its checkpoints by default: `<out>/<name>/training/`.
fn run_folder(repository: &ModelRepository, name: &str) -> Result<Store> {
    Ok(repository.store().child(&format!("{name}/training"))?)
}

/// Trains `config` on `dataset` and stores the best epoch as a new version of `name`.
/// With `resume`, continues from the run's last checkpoint (refusing a different config or
/// dataset); without, any old checkpoint of `name` is replaced.
pub async fn train(
    config: TrainConfig,
    dataset: &Dataset,
    repository: &ModelRepository,
    name: &str,
    resume: bool,
    cache: Option<ImageCache>,
    observer: Box<dyn TrainObserver>,
) -> Result<TrainOutcome> {
    let options = RunOptions {
        resume: if resume { Resume::Required } else { Resume::No },
        checkpoints: None,
    };
    train_with(config, dataset, repository, name, options, cache, observer).await
}

/// [`train`] with every choice of how the run is kept.
pub async fn train_with(
    config: TrainConfig,
    dataset: &Dataset,
    repository: &ModelRepository,
    name: &str,
    options: RunOptions,
    cache: Option<ImageCache>,
    mut observer: Box<dyn TrainObserver>,
) -> Result<TrainOutcome> {
    if dataset.train.is_empty() {
        return Err(TrainError::Invalid(format!(
            "{} has no training photos",
            dataset.url
        )));
    }
    let run = match options.checkpoints {
        Some(store) => store,
        None => run_folder(repository, name)?,
    };
    let resume = options.resume;
    if matches!(
        config.architecture,
        ArchitectureConfig::EfficientnetLite0 { .. }
    ) && config.fine_tune.is_none()
    {
        let mut observer = observer;
        let options = repository.options().clone();
        return crate::transfer::train_transfer(
            config,
            dataset,
            repository,
            name,
            &run,
            &options,
            cache,
            resume,
            observer.as_mut(),
        )
        .await;
    }
    let fresh_state = RunState::new(&config, dataset);
    let previous = match resume {
        Resume::No => None,
        Resume::IfPresent => read_state(&run).await?,
        Resume::Required => Some(read_state(&run).await?.ok_or_else(|| {
            TrainError::Checkpoint(format!(
                "--resume: there is no checkpoint in {} to continue from",
                run.url()
            ))
        })?),
    };
    if let Some(previous) = &previous {
        if previous.config != config {
            return Err(TrainError::Checkpoint(format!(
                "the checkpoint in {} was made with other settings; rerun without --resume to start over",
                run.url()
            )));
        }
        if previous.classes != dataset.classes
            || previous.dataset_fingerprint != fresh_state.dataset_fingerprint
        {
            return Err(TrainError::Checkpoint(format!(
                "the data changed since the checkpoint in {}; rerun without --resume to start over",
                run.url()
            )));
        }
    }

    // Fine-tuning starts from the pretrained network (fetched here, where the storage is async);
    // a resumed run then loads its checkpoint over it.
    let initial_weights = match &config.fine_tune {
        Some(fine_tune) => {
            fine_tune.check().map_err(TrainError::Invalid)?;
            Some(crate::fine_tune::initial_weights(&config, dataset, repository).await?)
        }
        None => None,
    };
    let input = input_spec_for(&config);
    let loader = |samples, augment: bool, shuffle: bool| {
        let mut loader_config = LoaderConfig::new(input.image_size, config.batch_size);
        loader_config.normalization = input.normalization;
        loader_config.crop_fraction = input.crop_fraction;
        loader_config.augment = augment.then(|| match config.augmentation {
            Augmentation::ResizedCropJitter => AugmentConfig::default(),
            Augmentation::FlipShift => AugmentConfig::flip_shift(input.crop_fraction),
        });
        loader_config.shuffle = shuffle;
        loader_config.seed = config.seed;
        loader_config.cache = cache.clone();
        Loader::new(samples, dataset.stores.clone(), loader_config)
    };
    let train_loader = loader(dataset.train.clone(), config.augment, true);
    let validation_loader = loader(dataset.validation.clone(), false, false);
    let class_weights = config.balance_classes.then(|| {
        let counts = dataset.class_counts(&dataset.train);
        let total: usize = counts.iter().sum();
        counts
            .iter()
            .map(|&c| total as f32 / (counts.len() * c.max(1)) as f32)
            .collect::<Vec<_>>()
    });

    let runtime = tokio::runtime::Handle::current();
    let run_for_loop = run.clone();
    let (state, best_weights) = tokio::task::spawn_blocking(move || {
        training_loop(
            config,
            previous.unwrap_or(fresh_state),
            initial_weights,
            train_loader.clone(),
            validation_loader.clone(),
            class_weights,
            &run_for_loop,
            &runtime,
            observer.as_mut(),
        )
        .map(|(state, weights)| {
            (
                state,
                weights,
                train_loader.bad_files(),
                validation_loader.bad_files(),
            )
        })
    })
    .await
    .map_err(|e| TrainError::Invalid(format!("training thread failed: {e}")))?
    .map(|(state, weights, mut bad, bad_validation)| {
        bad.extend(bad_validation);
        ((state, bad), weights)
    })?;
    let (state, bad_files) = state;

    store_version(
        repository,
        name,
        dataset,
        state,
        best_weights,
        cache,
        bad_files,
    )
    .await
}

async fn read_state(run: &Store) -> Result<Option<RunState>> {
    match run.get("state.json").await {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            TrainError::Checkpoint(format!("unreadable {}: {e}", run.url_of("state.json")))
        }),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes a checkpoint of `epoch`: its weights and optimizer state first, then the state that
/// names them, so the state only ever names complete files and a crash while saving leaves the
/// previous checkpoint in force.
fn save_checkpoint(
    run: &Store,
    runtime: &tokio::runtime::Handle,
    state: &RunState,
    epoch: usize,
    model: &Classifier,
    optimizer: &ModuleOptimizer,
) -> Result<()> {
    let weights = weights_to_bytes(model)?;
    let optimizer_bytes = optimizer
        .into_bytes()
        .map_err(|e| TrainError::Checkpoint(format!("cannot serialise optimizer state: {e}")))?;
    runtime.block_on(async {
        run.put(&weights_file(epoch), weights).await?;
        run.put(&optimizer_file(epoch), optimizer_bytes.to_vec())
            .await?;
        run.put(
            "state.json",
            serde_json::to_vec_pretty(state).expect("state serialises"),
        )
        .await?;
        Ok(())
    })
}

fn weights_file(epoch: usize) -> String {
    format!("epoch-{epoch:04}.safetensors")
}

fn optimizer_file(epoch: usize) -> String {
    format!("epoch-{epoch:04}.optimizer")
}

fn new_optimizer(config: &TrainConfig) -> ModuleOptimizer {
    match config.optimizer {
        OptimizerKind::AdamW => AdamWConfig::new()
            .with_weight_decay(config.weight_decay as f32)
            .init(),
        OptimizerKind::Sgd => SgdConfig::new()
            .with_momentum(Some(
                MomentumConfig::new()
                    .with_momentum(config.momentum)
                    .with_dampening(0.0)
                    .with_nesterov(config.nesterov),
            ))
            .with_weight_decay(
                (config.weight_decay > 0.0)
                    .then(|| WeightDecayConfig::new(config.weight_decay as f32)),
            )
            .init(),
    }
}

fn images_tensor(batch: &Batch, device: &Device) -> Tensor<4> {
    let size = batch.image_size as usize;
    Tensor::from_data(
        TensorData::new(batch.images.clone(), [batch.len(), 3, size, size]),
        device,
    )
}

fn labels_tensor(batch: &Batch, device: &Device) -> Tensor<1, Int> {
    let labels: Vec<i64> = batch.labels.iter().map(|&l| l as i64).collect();
    Tensor::from_data(TensorData::new(labels, [batch.len()]), device)
}

#[allow(clippy::too_many_arguments)]
fn training_loop(
    config: TrainConfig,
    mut state: RunState,
    initial_weights: Option<Vec<u8>>,
    train_loader: Loader,
    validation_loader: Loader,
    class_weights: Option<Vec<f32>>,
    run: &Store,
    runtime: &tokio::runtime::Handle,
    observer: &mut dyn TrainObserver,
) -> Result<(RunState, Vec<u8>)> {
    let device = training_device();
    let classes = state.classes.len();
    let mut model = config
        .architecture
        .init_seeded(classes, &device, config.seed);
    let mut optimizer = new_optimizer(&config);
    // A mid-epoch checkpoint is saved under the number of the epoch in progress.
    let checkpoint_epoch = match &state.partial {
        Some(partial) => Some(partial.epoch),
        None => state.epochs_done.checked_sub(1),
    };
    if let Some(last) = checkpoint_epoch {
        let weights = runtime.block_on(run.get(&weights_file(last)))?;
        model = weights_from_bytes(model, weights.to_vec())?;
        if !state.param_ids.is_empty() {
            model = with_param_ids(model, &state.param_ids).map_err(TrainError::Checkpoint)?;
        }
        let optimizer_state = runtime.block_on(run.get(&optimizer_file(last)))?;
        optimizer = optimizer
            .from_bytes(burn::tensor::Bytes::from_bytes_vec(
                optimizer_state.to_vec(),
            ))
            .map_err(|e| TrainError::Checkpoint(format!("cannot load optimizer state: {e}")))?;
    } else if let Some(weights) = initial_weights {
        model = weights_from_bytes(model, weights)?;
    }
    if let Some(fine_tune) = &config.fine_tune {
        model = crate::fine_tune::prepare(model, fine_tune)?;
    }
    let loss_function = CrossEntropyLossConfig::new()
        .with_smoothing((config.label_smoothing > 0.0).then_some(config.label_smoothing))
        .with_weights(class_weights)
        .init(&device);

    let steps_per_epoch = train_loader.batches_per_epoch().max(1);
    let total_steps = steps_per_epoch * config.epochs;
    let warmup_steps = (config.warmup_epochs * steps_per_epoch as f64).round() as usize;
    let mut epochs_without_improvement = match (state.best_epoch, state.epochs_done) {
        (Some(best), done) => done.saturating_sub(best + 1),
        (None, done) => done,
    };

    for epoch in state.epochs_done..config.epochs {
        observer.epoch_started(epoch, config.epochs, steps_per_epoch);
        let started = Instant::now();
        let (mut loss_sum, mut seen, mut right) = (0.0f64, 0usize, 0usize);
        let (mut batches_done, mut seconds_before) = (0usize, 0.0f64);
        if let Some(partial) = state.partial.take().filter(|p| p.epoch == epoch) {
            (loss_sum, seen, right) = (partial.loss_sum, partial.seen, partial.right);
            (batches_done, seconds_before) = (partial.batches_done, partial.seconds);
        }
        let mut learning_rate = config.learning_rate;
        // The batches trained before an interruption come out again (same seed, same epoch)
        // and are passed over.
        for (step_in_epoch, batch) in train_loader
            .epoch(epoch as u64)
            .enumerate()
            .skip(batches_done)
        {
            learning_rate = config.learning_rate_at(
                epoch * steps_per_epoch + step_in_epoch,
                total_steps,
                warmup_steps,
            );
            let images = images_tensor(&batch, &device);
            let targets = labels_tensor(&batch, &device);
            let logits = model.forward(images);
            let loss = loss_function.forward(logits.clone(), targets);
            let loss_value: f64 = loss
                .clone()
                .into_data()
                .try_to_vec::<f32>()
                .expect("loss is f32")[0] as f64;
            right += correct(&logits, batch.labels.iter().map(|&l| l as usize));
            model = match &config.fine_tune {
                Some(fine_tune) => crate::fine_tune::step(
                    &mut optimizer,
                    model,
                    loss.backward(),
                    learning_rate,
                    fine_tune,
                ),
                None => {
                    let gradients = GradientsParams::from_grads(loss.backward(), &model);
                    optimizer.step(learning_rate, model, gradients)
                }
            };
            loss_sum += loss_value * batch.len() as f64;
            seen += batch.len();
            observer.batch_finished(
                loss_sum / seen as f64,
                right as f64 / seen as f64,
                seen as f64 / (seconds_before + started.elapsed().as_secs_f64()),
            );
            if observer.interrupted() {
                let partial = PartialEpoch {
                    epoch,
                    batches_done: step_in_epoch + 1,
                    loss_sum,
                    seen,
                    right,
                    seconds: seconds_before + started.elapsed().as_secs_f64(),
                };
                let mut interrupted = state.clone();
                interrupted.partial = Some(partial);
                interrupted.param_ids = param_ids(&model);
                save_checkpoint(run, runtime, &interrupted, epoch, &model, &optimizer)?;
                return Err(TrainError::Interrupted {
                    checkpoint: run.url().to_string(),
                });
            }
        }
        if seen == 0 {
            return Err(TrainError::Invalid(
                "no training photo could be read (see the bad files)".into(),
            ));
        }
        let train_seconds = seconds_before + started.elapsed().as_secs_f64();
        let (validation_loss, validation_accuracy) =
            validate(&model, &validation_loader, &loss_function, &device, epoch);
        let metrics = EpochMetrics {
            epoch,
            train_loss: loss_sum / seen as f64,
            train_accuracy: right as f64 / seen as f64,
            validation_loss,
            validation_accuracy,
            learning_rate,
            images_per_second: seen as f64 / train_seconds,
            seconds: seconds_before + started.elapsed().as_secs_f64(),
        };
        let improved = match validation_accuracy {
            Some(accuracy) => state.best_accuracy.is_none_or(|best| accuracy > best),
            // Without a validation set, the last epoch counts as the best.
            None if validation_loader.samples().is_empty() => true,
            None => {
                return Err(TrainError::Invalid(format!(
                    "none of the {} validation photos could be read in epoch {} (see the bad \
                     files); the best epoch cannot be chosen",
                    validation_loader.samples().len(),
                    epoch + 1
                )));
            }
        };
        let previous_best = state.best_epoch;
        if improved {
            state.best_epoch = Some(epoch);
            state.best_accuracy = validation_accuracy;
            epochs_without_improvement = 0;
        } else {
            epochs_without_improvement += 1;
        }
        state.epochs_done = epoch + 1;
        state.history.push(metrics.clone());
        state.param_ids = param_ids(&model);

        runtime.block_on(run.put("metrics.jsonl", metrics_lines(&state.history)))?;
        save_checkpoint(run, runtime, &state, epoch, &model, &optimizer)?;
        runtime.block_on(async {
            // Older epochs are no longer needed, except the best one.
            for old in [epoch.checked_sub(1), previous_best].into_iter().flatten() {
                if old != epoch && Some(old) != state.best_epoch {
                    run.delete(&weights_file(old)).await?;
                    run.delete(&optimizer_file(old)).await?;
                }
            }
            Ok::<_, TrainError>(())
        })?;
        observer.epoch_finished(&metrics);
        if config
            .patience
            .is_some_and(|patience| epochs_without_improvement >= patience)
        {
            tracing::info!(
                "early stop: no improvement in validation accuracy for {epochs_without_improvement} epochs"
            );
            break;
        }
        if observer.should_stop() {
            break;
        }
    }
    let best = state
        .best_epoch
        .ok_or_else(|| TrainError::Invalid("no epoch finished".into()))?;
    let best_weights = runtime.block_on(run.get(&weights_file(best)))?.to_vec();
    Ok((state, best_weights))
}

/// Loss and accuracy on the validation set, in inference mode (batch norm running statistics).
fn validate(
    model: &Classifier,
    loader: &Loader,
    loss_function: &burn::nn::loss::CrossEntropyLoss,
    device: &Device,
    epoch: usize,
) -> (Option<f64>, Option<f64>) {
    if loader.samples().is_empty() {
        return (None, None);
    }
    let model = model.valid();
    let inference_device = device.clone().without_autodiff();
    let (mut loss_sum, mut seen, mut right) = (0.0, 0usize, 0usize);
    for batch in loader.epoch(epoch as u64) {
        let logits = model.forward(images_tensor(&batch, &inference_device));
        let loss = loss_function.forward(logits.clone(), labels_tensor(&batch, &inference_device));
        loss_sum += loss.into_data().try_to_vec::<f32>().expect("loss is f32")[0] as f64
            * batch.len() as f64;
        right += correct(&logits, batch.labels.iter().map(|&l| l as usize));
        seen += batch.len();
    }
    if seen == 0 {
        return (None, None);
    }
    (
        Some(loss_sum / seen as f64),
        Some(right as f64 / seen as f64),
    )
}

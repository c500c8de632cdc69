//! `bestiary train`: trains a classifier on a dataset URL and stores a new model version.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bestiary_dataset::ImageCache;
use bestiary_model::ModelRepository;
use bestiary_networks::ArchitectureConfig;
use bestiary_networks::imagenet_prior::ImagenetPriorConfig;
use bestiary_storage::Store;
use bestiary_train::config::FineTune;
use bestiary_train::input::input_spec_for;
use bestiary_train::{
    Augmentation, EpochMetrics, OptimizerKind, Recipe, Resume, RunOptions, Schedule, TrainConfig,
    TrainError, TrainObserver, train_with,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::{
    AugmentationArg, GlobalArgs, OptimizerArg, RecipeArg, ResumeArg, ScheduleArg, TrainArgs,
};

/// Exit status of a run stopped by SIGTERM after saving its checkpoint (128 + 15, as the
/// signal's default action reports it).
const EXIT_TERMINATED: u8 = 143;

/// Draws one bar per epoch (loss, accuracy, images/s, ETA), prints JSON or metric lines, and
/// tells the trainer when a stop was asked for.
struct EpochProgress {
    bar: Option<ProgressBar>,
    hidden: bool,
    json: bool,
    metric_lines: bool,
    stop: Arc<AtomicBool>,
}

/// One epoch as the line SageMaker's `MetricDefinitions` regexes read (README, "Deploy"):
/// `name=value` pairs, numbers in plain decimal, a missing validation left out.
pub fn metric_line(metrics: &EpochMetrics) -> String {
    let mut line = format!(
        "epoch={} train_loss={:.6} train_accuracy={:.6}",
        metrics.epoch + 1,
        metrics.train_loss,
        metrics.train_accuracy
    );
    if let Some(loss) = metrics.validation_loss {
        line += &format!(" validation_loss={loss:.6}");
    }
    if let Some(accuracy) = metrics.validation_accuracy {
        line += &format!(" validation_accuracy={accuracy:.6}");
    }
    line += &format!(
        " learning_rate={:.8} images_per_second={:.2} seconds={:.3}",
        metrics.learning_rate, metrics.images_per_second, metrics.seconds
    );
    line
}

impl TrainObserver for EpochProgress {
    fn epoch_started(&mut self, epoch: usize, epochs: usize, batches: usize) {
        if self.hidden {
            return;
        }
        let bar = ProgressBar::new(batches as u64).with_style(
            ProgressStyle::with_template(
                "epoch {prefix:>7} [{bar:25}] {pos}/{len} {msg} ETA {eta}",
            )
            .expect("progress template")
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("{}/{}", epoch + 1, epochs));
        self.bar = Some(bar);
    }

    fn batch_finished(&mut self, loss: f64, accuracy: f64, images_per_second: f64) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!(
                "loss {loss:.3} acc {:.1}% {images_per_second:.0} img/s",
                accuracy * 100.0
            ));
            bar.inc(1);
        }
    }

    fn epoch_finished(&mut self, metrics: &EpochMetrics) {
        if let Some(bar) = self.bar.take() {
            let validation = match (metrics.validation_loss, metrics.validation_accuracy) {
                (Some(loss), Some(accuracy)) => {
                    format!(", validation loss {loss:.3} acc {:.1}%", accuracy * 100.0)
                }
                _ => String::new(),
            };
            bar.finish_and_clear();
            eprintln!(
                "epoch {:>3}: loss {:.3} acc {:.1}%{validation}, {:.0} img/s, {:.1} s",
                metrics.epoch + 1,
                metrics.train_loss,
                metrics.train_accuracy * 100.0,
                metrics.images_per_second,
                metrics.seconds
            );
        }
        if self.json {
            println!(
                "{}",
                serde_json::to_string(metrics).expect("metrics serialise")
            );
        }
        if self.metric_lines {
            println!("{}", metric_line(metrics));
        }
    }

    fn interrupted(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Sets the returned flag on the first SIGTERM (SageMaker's StopTrainingJob, a spot reclaim,
/// Kubernetes) or Ctrl-C, so the trainer checkpoints after the current batch; a second signal
/// ends the process at once.
fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        eprintln!("stopping: saving a checkpoint after the current batch (again to quit now)");
        flag.store(true, Ordering::SeqCst);
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        std::process::exit(i32::from(EXIT_TERMINATED));
    });
    Ok(stop)
}

/// The `--imagenet-prior` file: `{"class": [ImageNet index, …], …}`.
async fn read_imagenet_prior(
    global: &GlobalArgs,
    location: &str,
    weight: f64,
) -> anyhow::Result<ImagenetPriorConfig> {
    let (store, key) = Store::open_object(location, &global.store_options())?;
    let bytes = store
        .get(&key)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read --imagenet-prior {location}: {e}"))?;
    let groups = serde_json::from_slice(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "--imagenet-prior {location} should map each class to a list of ImageNet-1k indices: {e}"
        )
    })?;
    Ok(ImagenetPriorConfig { groups, weight })
}

pub async fn train(global: &GlobalArgs, args: TrainArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.epochs > 0 && args.batch_size > 0,
        "--epochs and --batch-size must be positive"
    );
    anyhow::ensure!(args.image_size >= 16, "--image-size must be at least 16");
    let mut architecture = ArchitectureConfig::from_name(&args.arch, args.width, args.depth)
        .map_err(anyhow::Error::msg)?;
    let imagenet_prior = match &args.imagenet_prior {
        Some(location) => {
            let ArchitectureConfig::EfficientnetLite0 { imagenet_prior } = &mut architecture else {
                anyhow::bail!("--imagenet-prior needs --arch efficientnet-lite0");
            };
            *imagenet_prior = true;
            anyhow::ensure!(
                args.imagenet_prior_weight.is_finite() && args.imagenet_prior_weight > 0.0,
                "--imagenet-prior-weight must be a positive number"
            );
            Some(read_imagenet_prior(global, location, args.imagenet_prior_weight).await?)
        }
        None => None,
    };
    let fine_tune = if args.fine_tune {
        anyhow::ensure!(
            matches!(architecture, ArchitectureConfig::EfficientnetLite0 { .. }),
            "--fine-tune starts from ImageNet weights, which Bestiary imports only for \
             --arch efficientnet-lite0"
        );
        let fine_tune = FineTune {
            blocks: args.unfreeze_blocks,
            backbone_lr_factor: args.backbone_lr_factor,
            freeze_batch_norm: args.freeze_batch_norm,
        };
        fine_tune.check().map_err(anyhow::Error::msg)?;
        Some(fine_tune)
    } else {
        anyhow::ensure!(
            args.unfreeze_blocks.is_none(),
            "--unfreeze-blocks needs --fine-tune"
        );
        None
    };
    let recipe = match args.recipe {
        RecipeArg::Standard => Recipe::Standard,
        RecipeArg::Fast => {
            anyhow::ensure!(
                !matches!(architecture, ArchitectureConfig::EfficientnetLite0 { .. }),
                "--recipe fast is for training a network from scratch; EfficientNet-Lite0 \
                 starts from ImageNet weights with its own recipe"
            );
            Recipe::Fast
        }
    }
    .settings();
    let config = TrainConfig {
        architecture,
        image_size: args.image_size,
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.lr.unwrap_or(recipe.learning_rate),
        weight_decay: args.weight_decay.unwrap_or(recipe.weight_decay),
        optimizer: match args.optimizer {
            Some(OptimizerArg::Adamw) => OptimizerKind::AdamW,
            Some(OptimizerArg::Sgd) => OptimizerKind::Sgd,
            None => recipe.optimizer,
        },
        momentum: args.momentum,
        schedule: match args.schedule {
            Some(ScheduleArg::Cosine) => Schedule::Cosine,
            Some(ScheduleArg::OneCycle) => Schedule::OneCycle,
            Some(ScheduleArg::Triangular) => Schedule::Triangular,
            Some(ScheduleArg::Constant) => Schedule::Constant,
            None => recipe.schedule,
        },
        warmup_epochs: args.warmup_epochs,
        label_smoothing: args.label_smoothing.unwrap_or(recipe.label_smoothing),
        augment: args.augment,
        augmentation: match args.augmentation {
            Some(AugmentationArg::ResizedCropJitter) => Augmentation::ResizedCropJitter,
            Some(AugmentationArg::FlipShift) => Augmentation::FlipShift,
            None => recipe.augmentation,
        },
        nesterov: args.nesterov.unwrap_or(recipe.nesterov),
        patience: args.patience,
        balance_classes: args.balance_classes,
        seed: args.seed,
        pretrained: args.pretrained.clone(),
        imagenet_prior,
        fine_tune,
    };
    let hidden = global.quiet || args.json;
    let dataset = super::open_dataset(global, &args.data, &args.split, hidden).await?;
    if !hidden {
        eprintln!(
            "{}: {} classes, {} train / {} validation photos; {} at {} px, batch {}",
            dataset.url,
            dataset.classes.len(),
            dataset.train.len(),
            dataset.validation.len(),
            config.architecture.name(),
            input_spec_for(&config).image_size,
            config.batch_size
        );
    }
    let repository = ModelRepository::open(&args.out, &global.store_options())?;
    let cache = ImageCache::new(
        args.cache_dir
            .clone()
            .unwrap_or_else(ImageCache::default_dir),
    )?;
    let checkpoints = args
        .checkpoint_dir
        .as_deref()
        .map(|url| Store::open(url, &global.store_options()))
        .transpose()?;
    let options = RunOptions {
        resume: match args.resume {
            ResumeArg::Never => Resume::No,
            ResumeArg::Always => Resume::Required,
            ResumeArg::Auto => Resume::IfPresent,
        },
        checkpoints,
    };
    let observer = Box::new(EpochProgress {
        bar: None,
        hidden,
        json: args.json,
        metric_lines: args.metric_lines,
        stop: stop_on_signals()?,
    });
    let started = std::time::Instant::now();
    let outcome = match train_with(
        config,
        &dataset,
        &repository,
        &args.name,
        options,
        Some(cache),
        observer,
    )
    .await
    {
        Ok(outcome) => outcome,
        Err(error @ TrainError::Interrupted { .. }) => {
            eprintln!("{error}");
            return Ok(ExitCode::from(EXIT_TERMINATED));
        }
        Err(error) => return Err(error.into()),
    };

    let accuracy = outcome.metadata.metrics.get("validation_accuracy").copied();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "model": outcome.version_url,
                "version": outcome.metadata.version,
                "metrics": outcome.metadata.metrics,
                "bad_files": outcome.bad_files,
                "seconds": started.elapsed().as_secs_f64(),
            })
        );
    } else {
        for file in &outcome.bad_files {
            eprintln!("skipped {}  [{}] {}", file.id, file.code, file.reason);
        }
        let accuracy = accuracy
            .map(|a| format!(", validation accuracy {:.1}%", a * 100.0))
            .unwrap_or_default();
        println!(
            "model {} (best epoch {}{accuracy}) in {:.1} s",
            outcome.version_url,
            outcome.state.best_epoch.map(|e| e + 1).unwrap_or(0),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

//! `bestiary train`: trains a classifier on a dataset URL and stores a new model version.

use std::process::ExitCode;

use bestiary_dataset::ImageCache;
use bestiary_model::ModelRepository;
use bestiary_train::trainer::input_spec_for;
use bestiary_train::{
    ArchitectureConfig, EpochMetrics, OptimizerKind, Schedule, TrainConfig, TrainObserver,
    train as run_training,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::{GlobalArgs, OptimizerArg, ScheduleArg, TrainArgs};

/// Draws one bar per epoch (loss, accuracy, images/s, ETA) and/or prints JSON lines.
struct EpochProgress {
    bar: Option<ProgressBar>,
    hidden: bool,
    json: bool,
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
    }
}

pub async fn train(global: &GlobalArgs, args: TrainArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.epochs > 0 && args.batch_size > 0,
        "--epochs and --batch-size must be positive"
    );
    anyhow::ensure!(args.image_size >= 16, "--image-size must be at least 16");
    let architecture = ArchitectureConfig::from_name(&args.arch, args.width, args.depth)
        .map_err(anyhow::Error::msg)?;
    let config = TrainConfig {
        architecture,
        image_size: args.image_size,
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.lr,
        weight_decay: args.weight_decay,
        optimizer: match args.optimizer {
            OptimizerArg::Adamw => OptimizerKind::AdamW,
            OptimizerArg::Sgd => OptimizerKind::Sgd,
        },
        momentum: args.momentum,
        schedule: match args.schedule {
            ScheduleArg::Cosine => Schedule::Cosine,
            ScheduleArg::OneCycle => Schedule::OneCycle,
            ScheduleArg::Constant => Schedule::Constant,
        },
        warmup_epochs: args.warmup_epochs,
        label_smoothing: args.label_smoothing,
        augment: args.augment,
        patience: args.patience,
        balance_classes: args.balance_classes,
        seed: args.seed,
        pretrained: args.pretrained.clone(),
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
    let observer = Box::new(EpochProgress {
        bar: None,
        hidden,
        json: args.json,
    });
    let started = std::time::Instant::now();
    let outcome = run_training(
        config,
        &dataset,
        &repository,
        &args.name,
        args.resume,
        Some(cache),
        observer,
    )
    .await?;

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

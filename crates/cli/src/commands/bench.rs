//! `bestiary bench`: Bestiary's own speed figures (the loader for now).

use std::process::ExitCode;
use std::time::Instant;

use bestiary_dataset::transform::AugmentConfig;
use bestiary_dataset::{Dataset, ImageCache, Loader, LoaderConfig};
use serde::Serialize;

use crate::args::{BenchLoaderArgs, GlobalArgs};

#[derive(Debug, Serialize)]
struct LoaderBench {
    data: String,
    images: usize,
    image_size: u32,
    batch_size: usize,
    workers: usize,
    cold_images_per_second: f64,
    cached_images_per_second: f64,
    cached_epochs: u64,
    bad_files: usize,
}

/// Times one cold epoch (download, decode, cache write) and then cached epochs, with the
/// trainer's transform, consuming batches as fast as they come.
pub async fn loader(global: &GlobalArgs, args: BenchLoaderArgs) -> anyhow::Result<ExitCode> {
    let dataset = Dataset::open(&args.data, &args.split.options(global)?, &|_| {}).await?;
    let temporary = tempfile::tempdir()?;
    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| temporary.path().to_path_buf());
    let mut config = LoaderConfig::new(args.image_size, args.batch_size);
    config.cache = Some(ImageCache::new(&cache_dir)?);
    config.augment = args.augment.then(AugmentConfig::default);
    config.shuffle = true;
    if let Some(workers) = args.workers {
        config.workers = workers;
    }
    let workers = config.workers;
    let mut samples = dataset.train.clone();
    samples.extend(dataset.validation.iter().cloned());
    let loader = Loader::new(samples, dataset.stores.clone(), config);

    let run_epoch = |epoch: u64| {
        let loader = loader.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let images: usize = loader.epoch(epoch).map(|batch| batch.len()).sum();
            (images, started.elapsed().as_secs_f64())
        })
    };
    let (cold_images, cold_seconds) = run_epoch(0).await?;
    let (mut cached_images, mut cached_seconds) = (0, 0.0);
    for epoch in 1..=args.epochs {
        let (images, seconds) = run_epoch(epoch).await?;
        cached_images += images;
        cached_seconds += seconds;
    }
    let result = LoaderBench {
        data: args.data.clone(),
        images: cold_images,
        image_size: args.image_size,
        batch_size: args.batch_size,
        workers,
        cold_images_per_second: cold_images as f64 / cold_seconds,
        cached_images_per_second: cached_images as f64 / cached_seconds.max(1e-9),
        cached_epochs: args.epochs,
        bad_files: loader.bad_files().len(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!(
            "loader on {} ({} images, {} px, batch {}, {} workers): cold {:.0} img/s, cached {:.0} img/s over {} epochs",
            result.data,
            result.images,
            result.image_size,
            result.batch_size,
            result.workers,
            result.cold_images_per_second,
            result.cached_images_per_second,
            result.cached_epochs
        );
    }
    Ok(ExitCode::SUCCESS)
}

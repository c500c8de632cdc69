//! `bestiary bench`: Bestiary's own speed figures: the data loader, each inference engine (the
//! Bestiary side of `bench/run`'s engine figure) and each convolution layer (figure 9).

use std::process::ExitCode;
use std::time::Instant;

use bestiary_dataset::transform::AugmentConfig;
use bestiary_dataset::{Dataset, ImageCache, Loader, LoaderConfig};
use serde::Serialize;

use crate::args::{BenchConvArgs, BenchEngineArgs, BenchLoaderArgs, GlobalArgs};

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

#[derive(Debug, Serialize)]
struct EngineBench {
    model: String,
    architecture: String,
    engine: String,
    precision: String,
    image_size: u32,
    batch_size: usize,
    threads: usize,
    iterations: usize,
    load_seconds: f64,
    images_per_second: f64,
    median_batch_ms: f64,
    p99_batch_ms: f64,
}

/// The synthetic input of the engine benchmark, the same on every side of the comparison
/// (`bench/peers/infer.py` computes the identical values): a multiplicative hash of the index
/// mapped into [-1, 1).
fn bench_input(len: usize) -> Vec<f32> {
    (0..len as u64)
        .map(|i| ((i * 2_654_435_761) % (1 << 32)) as f64 / (1u64 << 32) as f64 * 2.0 - 1.0)
        .map(|x| x as f32)
        .collect()
}

/// Times `iterations` calls of `classify_tensors` on one batch (after `warmup` untimed ones):
/// preprocessed tensors in, predictions out, so neither decoding nor I/O is measured.
pub async fn engine(global: &GlobalArgs, args: BenchEngineArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.batch_size > 0 && args.iterations > 0,
        "--batch-size and --iterations must be positive"
    );
    let options = bestiary_engine::EngineOptions {
        threads: args.threads,
        precision: args.precision,
        ..Default::default()
    };
    let loading = Instant::now();
    let model = bestiary_engine::builtin::load_model(
        Some(args.model.as_str()),
        args.engine,
        &options,
        &global.store_options(),
    )
    .await?;
    let load_seconds = loading.elapsed().as_secs_f64();
    let batch = args.batch_size;
    let (warmup, iterations) = (args.warmup, args.iterations);
    let input = bench_input(batch * model.input_len());
    let timing_model = model.clone();
    let mut times = tokio::task::spawn_blocking(move || {
        for _ in 0..warmup {
            timing_model.classify_tensors(&input, batch, 1)?;
        }
        let mut times = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let started = Instant::now();
            timing_model.classify_tensors(&input, batch, 1)?;
            times.push(started.elapsed().as_secs_f64());
        }
        Ok::<_, bestiary_engine::EngineError>(times)
    })
    .await??;
    let total: f64 = times.iter().sum();
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize] * 1e3;
    let result = EngineBench {
        model: model.source.clone(),
        architecture: model.metadata.architecture.clone(),
        engine: model.engine.describe(),
        precision: model.precision.to_string(),
        image_size: model.metadata.input.image_size,
        batch_size: batch,
        threads: options.threads(),
        iterations,
        load_seconds,
        images_per_second: (iterations * batch) as f64 / total.max(1e-12),
        median_batch_ms: at(0.5),
        p99_batch_ms: at(0.99),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!(
            "{} ({}, {} px, {}) on {}: batch {}, {} threads: {:.1} img/s, median {:.2} ms per batch, p99 {:.2} ms ({} calls; loaded in {:.2} s)",
            result.model,
            result.architecture,
            result.image_size,
            result.precision,
            result.engine,
            result.batch_size,
            result.threads,
            result.images_per_second,
            result.median_batch_ms,
            result.p99_batch_ms,
            result.iterations,
            result.load_seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Times every distinct convolution of a network, each pass by both routes, on the rayon pool
/// (`RAYON_NUM_THREADS` threads, as in training).
pub async fn conv(args: BenchConvArgs) -> anyhow::Result<ExitCode> {
    use bestiary_networks::ArchitectureConfig;
    use bestiary_networks::conv::ConvGeometry;
    use bestiary_networks::conv::bench::{Pass, Route, network_layers, time_pass};
    anyhow::ensure!(
        args.batch > 0 && args.image_size > 0 && args.repeats > 0,
        "--batch, --image-size and --repeats must be positive"
    );
    let network = ArchitectureConfig::from_name(&args.arch, args.width, args.depth)
        .map_err(anyhow::Error::msg)?;
    let report = tokio::task::spawn_blocking(move || {
        let layers = network_layers(&network, 10, args.image_size, args.batch);
        let timed: Vec<serde_json::Value> = layers
            .iter()
            .map(|layer| {
                let call = &layer.call;
                let geometry = ConvGeometry::new(call.x, call.weight, &call.options);
                let times = |route| {
                    let entries = Pass::ALL
                        .map(|pass| (pass.name(), time_pass(call, route, pass, args.repeats)));
                    serde_json::Map::from_iter(entries.map(|(k, v)| (k.to_string(), v.into())))
                };
                serde_json::json!({
                    "x": call.x,
                    "weight": call.weight,
                    "stride": call.options.stride,
                    "padding": call.options.padding,
                    "dilation": call.options.dilation,
                    "groups": call.options.groups,
                    "count": layer.count,
                    "first": layer.first,
                    "gflop": geometry.flops() / 1e9,
                    "bestiary": times(Route::Bestiary),
                    "burn": times(Route::Burn),
                })
            })
            .collect();
        serde_json::json!({
            "arch": network.name(),
            "image_size": args.image_size,
            "batch": args.batch,
            "threads": rayon::current_num_threads(),
            "layers": timed,
        })
    })
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} at {} px, batch {}, {} threads: GFLOP/s per layer, Bestiary kernels / burn-flex route",
        report["arch"], args.image_size, args.batch, report["threads"]
    );
    for layer in report["layers"].as_array().into_iter().flatten() {
        let gflop = layer["gflop"].as_f64().unwrap_or(0.0);
        let rate = |route: &str, pass: Pass| {
            gflop / layer[route][pass.name()].as_f64().unwrap_or(f64::NAN)
        };
        let passes: Vec<String> = Pass::ALL
            .iter()
            .map(|&pass| {
                format!(
                    "{} {:.1} / {:.1}",
                    pass.name(),
                    rate("bestiary", pass),
                    rate("burn", pass)
                )
            })
            .collect();
        println!(
            "  x {} w {} stride {} (×{}): {}",
            layer["x"],
            layer["weight"],
            layer["stride"],
            layer["count"],
            passes.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

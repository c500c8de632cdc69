//! `bestiary export --int8`: calibrates a version's ONNX graph on photos and writes its int8
//! graph beside it (or to `--to`), recorded in model.json so `--precision int8` can serve it.

use std::process::ExitCode;

use anyhow::Context as _;
use bestiary_dataset::{ImageCache, Sample};
use bestiary_engine::EngineOptions;
use bestiary_engine::int8::{INT8_FILE, quantize_model};
use bestiary_engine::model::ONNX_FILE;
use bestiary_model::onnx::describe;
use bestiary_model::onnx::quantize::QuantizeOptions;
use bestiary_model::{Int8Graph, METADATA_FILE, resolve};
use bestiary_storage::Store;
use bestiary_train::eval::eval_loader;

use crate::args::{ExportArgs, GlobalArgs};
use crate::progress;

pub async fn export(global: &GlobalArgs, args: ExportArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.calibration_photos > 0,
        "--calibration-photos must be positive"
    );
    let options = global.store_options();
    let (repository, name, version) = resolve(&args.model, &options).await?;
    let mut metadata = repository.metadata(&name, &version).await?;
    let float = repository.file(&name, &version, ONNX_FILE).await?;
    // The version's own training photos, unless told otherwise: with `--calibration-data`
    // every photo there counts (train and validation alike).
    let (data_url, training_only) = match &args.calibration_data {
        Some(url) => (url.clone(), false),
        None => (
            metadata
                .dataset
                .as_ref()
                .map(|dataset| dataset.url.clone())
                .with_context(|| {
                    format!(
                        "{name} {version} records no training dataset in model.json; give the photos to calibrate on with --calibration-data"
                    )
                })?,
            true,
        ),
    };
    let dataset = super::open_dataset(global, &data_url, &args.split, global.quiet).await?;
    let mut photos: Vec<Sample> = dataset.train.clone();
    if !training_only {
        photos.extend(dataset.validation.iter().cloned());
    }
    let photos = spread(photos, args.calibration_photos);
    anyhow::ensure!(
        !photos.is_empty(),
        "{data_url} has no photos to calibrate on"
    );
    let cache = ImageCache::new(
        args.cache_dir
            .clone()
            .unwrap_or_else(ImageCache::default_dir),
    )
    .ok();
    let loader = eval_loader(&metadata, photos, dataset.stores.clone(), cache);
    let method = args.calibration_method;
    let quantize_options = QuantizeOptions {
        reduce_range: args.int8_weight_bits == 7,
        ..QuantizeOptions::default()
    };
    let spinner = progress::bar(None, "calibrating", global.quiet);
    let int8 = tokio::task::spawn_blocking(move || {
        quantize_model(
            &float,
            method,
            quantize_options,
            &EngineOptions::default(),
            || {
                loader.epoch(0).map(|batch| {
                    let count = batch.len();
                    (batch.images, count)
                })
            },
        )
    })
    .await??;
    spinner.finish_and_clear();
    let summary = int8.summary;
    eprintln!(
        "int8: {} conv/gemm layers with {}-bit weights, {} add/pool layers, {} activations quantised ({} relu/clip folded), calibrated on {} photos of {data_url} ({method})",
        summary.weighted_nodes,
        args.int8_weight_bits,
        summary.other_nodes,
        summary.activations,
        summary.folded_activations,
        int8.images,
    );
    let destination = if let Some(url) = &args.to {
        let (store, key) = Store::open_object(url, &options)?;
        store.put(&key, int8.onnx.clone()).await?;
        store.url_of(&key)
    } else {
        let folder = repository.store().child(&format!("{name}/{version}"))?;
        folder.put(INT8_FILE, int8.onnx.clone()).await?;
        metadata.int8 = Some(Int8Graph {
            file: INT8_FILE.to_owned(),
            calibration_data: data_url.clone(),
            calibration_photos: int8.images,
            range_method: method.to_string(),
            weight_bits: args.int8_weight_bits,
        });
        if !metadata.files.iter().any(|file| file == INT8_FILE) {
            metadata.files.push(INT8_FILE.to_owned());
        }
        // The graph first, then the metadata naming it: a reader never sees a missing file.
        folder.put(METADATA_FILE, metadata.to_json()).await?;
        folder.url_of(INT8_FILE)
    };
    if args.describe {
        println!("{}", describe(&int8.onnx)?);
    }
    println!(
        "{name} {version} → {destination} ({} bytes, int8)",
        int8.onnx.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// At most `count` of `photos`, evenly spaced so that every class (photos come grouped by
/// class) is represented.
fn spread(photos: Vec<Sample>, count: usize) -> Vec<Sample> {
    if photos.len() <= count {
        return photos;
    }
    let total = photos.len();
    photos
        .into_iter()
        .enumerate()
        .filter(|(index, _)| (index * count) % total < count)
        .map(|(_, photo)| photo)
        .take(count)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_evenly_spaced_photos() {
        let photos: Vec<Sample> = (0..10)
            .map(|i| Sample {
                id: format!("p{i}"),
                store: 0,
                key: format!("p{i}.jpg"),
                label: i / 5,
                size: None,
                etag: None,
            })
            .collect();
        let ids =
            |photos: Vec<Sample>| -> Vec<String> { photos.into_iter().map(|p| p.id).collect() };
        assert_eq!(
            ids(spread(photos.clone(), 5)),
            ["p0", "p2", "p4", "p6", "p8"]
        );
        assert_eq!(ids(spread(photos.clone(), 3)).len(), 3);
        assert_eq!(ids(spread(photos, 20)).len(), 10);
    }
}

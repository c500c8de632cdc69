//! Images per second at batch 1 for each engine on the default seed CNN (width 32, depth 4)
//! at 128 px. Ignored by default; run with
//! `cargo test -p bestiary-engine --test it -- --ignored --nocapture throughput`.

use std::time::{Duration, Instant};

use crate::common::{ort_available, train_parts};
use bestiary_engine::{EngineKind, EngineOptions, LoadedModel};
use bestiary_networks::ArchitectureConfig;

#[test]
#[ignore = "a benchmark: run explicitly"]
fn batch_one_throughput_per_engine() {
    let parts = train_parts(
        ArchitectureConfig::SeedCnn {
            width: 32,
            depth: 4,
        },
        128,
        1,
    );
    let options = EngineOptions {
        threads: None,
        instances: 1,
        allow_download: false,
        precision: Default::default(),
    };
    let mut kinds = vec![EngineKind::Tract, EngineKind::Burn];
    if ort_available() {
        kinds.insert(0, EngineKind::Ort);
    }
    println!(
        "seed-cnn width 32 depth 4, 128 px, batch 1, {} threads",
        options.threads()
    );
    for kind in kinds {
        let model = LoadedModel::from_parts(
            parts.metadata.clone(),
            &parts.onnx,
            Some(&parts.weights),
            kind,
            &options,
            "bench",
        )
        .unwrap();
        let input: Vec<f32> = (0..model.input_len())
            .map(|i| (i % 17) as f32 / 17.0)
            .collect();
        for _ in 0..10 {
            model.engine.infer(&input, 1).unwrap();
        }
        let started = Instant::now();
        let mut images = 0u32;
        while started.elapsed() < Duration::from_secs(3) {
            model.engine.infer(&input, 1).unwrap();
            images += 1;
        }
        let rate = f64::from(images) / started.elapsed().as_secs_f64();
        println!("{rate:>8.1} img/s  {}", model.engine.describe());
    }
}

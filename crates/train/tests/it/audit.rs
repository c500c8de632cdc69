//! The dataset audit end to end: photos moved into a wrong class folder are ranked near the top
//! with their true class suggested, and planted copies, a corrupt file and a tiny photo are
//! found; a second audit reads everything from its cache.

use std::path::{Path, PathBuf};

use bestiary_dataset::{Dataset, DatasetOptions, Sample};
use bestiary_storage::{Store, StoreOptions};
use bestiary_testkit::photos::{encode, photo, shared_data, truncated_jpeg, write_class_folders};
use bestiary_train::audit::label_issues::Ranking;
use bestiary_train::audit::{AuditConfig, AuditReport, Reason, audit, gather};
use image::ImageFormat;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The reference EfficientNet-Lite0 weights, as the transfer tests find them.
fn reference_weights() -> Option<PathBuf> {
    bestiary_testkit::shared::reference_weights()
}

/// Source photos by class: up to `per_class` animals10 photos of each class when the shared
/// data is there, else 15 generated photos of each of four colour/stripe classes.
fn source_photos(per_class: usize) -> (tempfile::TempDir, Vec<(String, Vec<PathBuf>)>) {
    let generated = tempfile::tempdir().unwrap();
    let root = match shared_data("animals10/images") {
        Some(root) => root,
        None => {
            write_class_folders(
                generated.path(),
                &["amber", "blue", "green", "violet"],
                per_class.min(15),
                (96, 96),
            );
            generated.path().to_path_buf()
        }
    };
    let mut classes: Vec<(String, Vec<PathBuf>)> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|folder| {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            files.truncate(per_class);
            let name = folder.file_name().unwrap().to_string_lossy().into_owned();
            (name, files)
        })
        .collect();
    classes.sort();
    (generated, classes)
}

/// A photo moved into a wrong class folder: its key there and its true class.
struct Swapped {
    key: String,
    truth: String,
}

/// Copies the source photos into `dir` as `<split>/<class>/<file>` (every fifth photo to
/// validation), moving a seeded `share` of them into a random other class's folder.
fn write_noisy_dataset(
    dir: &Path,
    classes: &[(String, Vec<PathBuf>)],
    share: f64,
    seed: u64,
) -> Vec<Swapped> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut all: Vec<(usize, usize)> = classes
        .iter()
        .enumerate()
        .flat_map(|(c, (_, files))| (0..files.len()).map(move |f| (c, f)))
        .collect();
    all.shuffle(&mut rng);
    let swapped_count = (all.len() as f64 * share).round() as usize;
    let mut swapped = Vec::new();
    for (n, &(class, file)) in all.iter().enumerate() {
        let source = &classes[class].1[file];
        let split = if file % 5 == 4 { "validation" } else { "train" };
        let folder_class = if n < swapped_count {
            (class + rng.random_range(1..classes.len())) % classes.len()
        } else {
            class
        };
        let name = source.file_name().unwrap().to_string_lossy().into_owned();
        let key = format!("{split}/{}/{name}", classes[folder_class].0);
        let target = dir.join(&key);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(source, &target).unwrap();
        if n < swapped_count {
            swapped.push(Swapped {
                key,
                truth: classes[class].0.clone(),
            });
        }
    }
    swapped
}

/// A CSV manifest at `path` labelling every source photo (by its absolute path, so the features
/// cached for the photos stay valid) with its class, except a seeded `share` given a random
/// other class.
fn write_noisy_manifest(
    path: &Path,
    classes: &[(String, Vec<PathBuf>)],
    share: f64,
    seed: u64,
) -> Vec<Swapped> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut all: Vec<(usize, &PathBuf)> = classes
        .iter()
        .enumerate()
        .flat_map(|(c, (_, files))| files.iter().map(move |f| (c, f)))
        .collect();
    all.shuffle(&mut rng);
    let swapped_count = (all.len() as f64 * share).round() as usize;
    let mut csv = String::from("key,label\n");
    let mut swapped = Vec::new();
    for (n, (class, file)) in all.into_iter().enumerate() {
        let label = if n < swapped_count {
            let other = (class + rng.random_range(1..classes.len())) % classes.len();
            let folder = file
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy();
            swapped.push(Swapped {
                key: format!("{folder}/{}", file.file_name().unwrap().to_string_lossy()),
                truth: classes[class].0.clone(),
            });
            other
        } else {
            class
        };
        csv.push_str(&format!("file://{},{}\n", file.display(), classes[label].0));
    }
    std::fs::write(path, csv).unwrap();
    swapped
}

async fn open(dir: &Path) -> Dataset {
    Dataset::open(dir.to_str().unwrap(), &DatasetOptions::default(), &|_| {})
        .await
        .unwrap()
}

/// How many of `swapped` are among the first `top` wrong-label suspects, and how many of those
/// come with their true class as the suggestion.
fn recall(report: &AuditReport, swapped: &[Swapped], top: usize) -> (usize, usize) {
    let ranked: Vec<_> = report
        .suspects
        .iter()
        .filter(|s| s.reason == Reason::WrongLabel)
        .take(top)
        .collect();
    let mut found = 0;
    let mut right_suggestion = 0;
    for swap in swapped {
        if let Some(suspect) = ranked.iter().find(|s| s.url.ends_with(&swap.key)) {
            found += 1;
            right_suggestion +=
                usize::from(suspect.suggested_label.as_deref() == Some(&swap.truth));
        }
    }
    (found, right_suggestion)
}

fn suspect_keys(report: &AuditReport, reason: Reason) -> Vec<String> {
    report
        .suspects
        .iter()
        .filter(|s| s.reason == reason)
        .map(|s| s.key.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_labels_rank_near_the_top_and_planted_problems_are_found() {
    let Some(weights) = reference_weights() else {
        return;
    };
    let (_generated, classes) = source_photos(usize::MAX);
    let data = tempfile::tempdir().unwrap();
    let swapped = write_noisy_dataset(data.path(), &classes, 0.1, 11);
    // Planted: a training photo copied byte for byte into validation (leakage), another one
    // recompressed beside itself (a near duplicate), a truncated JPEG and a tiny photo.
    let first = &classes[0].1[0];
    let first_key = |split: &str, name: &str| format!("{split}/{}/{name}", classes[0].0);
    std::fs::copy(
        first,
        data.path().join(first_key("validation", "leaked-copy.jpg")),
    )
    .unwrap();
    let recompressed = recompressed(&classes[1].1[1], 1.0, 60);
    let near_key = format!("train/{}/zz-near-copy.jpg", classes[1].0);
    let near_original = classes[1].1[1]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    std::fs::write(data.path().join(&near_key), recompressed).unwrap();
    std::fs::write(
        data.path().join(first_key("train", "broken.jpg")),
        truncated_jpeg(),
    )
    .unwrap();
    std::fs::write(
        data.path().join(first_key("train", "tiny.jpg")),
        encode(&photo(0, 99, 40, 30), ImageFormat::Jpeg),
    )
    .unwrap();

    let dataset = open(data.path()).await;
    let work_dir = tempfile::tempdir().unwrap();
    let work = Store::open(work_dir.path().to_str().unwrap(), &StoreOptions::default()).unwrap();
    let mut config = AuditConfig::new(42);
    config.head.pretrained = Some(weights.to_str().unwrap().to_string());
    let report = audit(&config, &dataset, &work, &StoreOptions::default(), None)
        .await
        .unwrap();

    let injected = swapped.len();
    let (found, right) = recall(&report, &swapped, 2 * injected);
    println!(
        "{injected} swapped: {found} in the top {}, {right} with the true class suggested; \
         cross-validated accuracy {:.3}",
        2 * injected,
        report.summary.cross_validated_accuracy
    );
    assert!(
        found * 10 >= injected * 7,
        "only {found} of {injected} swapped photos in the top {}: {:#?}",
        2 * injected,
        report.suspects
    );
    assert!(
        right * 10 >= found * 7,
        "{right} of {found} with the true class"
    );
    assert!(
        report.summary.cross_validated_accuracy > 0.6,
        "{:?}",
        report.summary
    );

    let leakage = suspect_keys(&report, Reason::Leakage);
    assert!(
        leakage.iter().any(|k| k.ends_with("leaked-copy.jpg")),
        "{leakage:?}"
    );
    assert!(report.summary.leakage_groups >= 1);
    let near_group = report
        .duplicate_groups
        .iter()
        .find(|g| g.photos.iter().any(|p| p.key.ends_with("zz-near-copy.jpg")))
        .expect("the recompressed copy is in a duplicate group");
    assert!(
        near_group
            .photos
            .iter()
            .any(|p| p.key.ends_with(&near_original)),
        "{near_group:?}"
    );
    assert!(
        suspect_keys(&report, Reason::Corrupt)
            .iter()
            .any(|k| k.ends_with("broken.jpg"))
    );
    assert!(
        suspect_keys(&report, Reason::SizeOutlier)
            .iter()
            .any(|k| k.ends_with("tiny.jpg"))
    );
    assert_eq!(report.summary.bad_files, 1);
    let json = serde_json::to_value(&report).unwrap();
    let first_suspect = &json["suspects"][0];
    for field in ["key", "url", "label", "suggested_label", "score", "reason"] {
        assert!(
            first_suspect.get(field).is_some(),
            "{field} missing: {first_suspect}"
        );
    }

    // Everything is cached now: no backbone, no photo read, the same findings.
    let again = audit(&config, &dataset, &work, &StoreOptions::default(), None)
        .await
        .unwrap();
    assert_eq!(again.summary.features_computed, 0);
    assert_eq!(again.summary.photos_read, 0);
    assert_eq!(again.suspects, report.suspects);
    assert_eq!(
        again.summary.cross_validated_accuracy,
        report.summary.cross_validated_accuracy
    );
}

fn samples_of(dataset: &Dataset) -> Vec<&Sample> {
    dataset.train.iter().chain(&dataset.validation).collect()
}

/// The photo at `path` resized by `scale` and encoded as JPEG at `quality`.
fn recompressed(path: &Path, scale: f64, quality: u8) -> Vec<u8> {
    let original = image::open(path).unwrap().to_rgb8();
    let resized = image::imageops::resize(
        &original,
        ((original.width() as f64 * scale) as u32).max(1),
        ((original.height() as f64 * scale) as u32).max(1),
        image::imageops::FilterType::Triangle,
    );
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality)
        .encode_image(&resized)
        .unwrap();
    bytes
}

/// Cosine similarity of two feature rows.
fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

/// The figures the README and `NEAR_DUPLICATE_SIMILARITY` quote, on all 240 animals10 photos:
/// recall of 24 swapped labels by each ranking, the clean cross-validated accuracy, run times,
/// and the similarity of recompressed copies against distinct photos of one class.
/// `cargo test -p bestiary-train --test it measure_the_audit_on_animals10 -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (minutes in a debug build), not a check"]
async fn measure_the_audit_on_animals10() {
    let (Some(weights), Some(_)) = (reference_weights(), shared_data("animals10/images")) else {
        return;
    };
    let (_generated, classes) = source_photos(usize::MAX);
    // BESTIARY_AUDIT_CACHE keeps the features between measurements (the first audit is then
    // not cold); the head's epochs and learning rate can be varied with BESTIARY_EPOCHS and
    // BESTIARY_LR.
    let work_dir = tempfile::tempdir().unwrap();
    let work_path = std::env::var("BESTIARY_AUDIT_CACHE")
        .unwrap_or_else(|_| work_dir.path().to_str().unwrap().to_string());
    let work = Store::open(&work_path, &StoreOptions::default()).unwrap();
    let mut config = AuditConfig::new(42);
    config.head.pretrained = Some(weights.to_str().unwrap().to_string());
    if let Ok(epochs) = std::env::var("BESTIARY_EPOCHS") {
        config.head.epochs = epochs.parse().unwrap();
    }
    if let Ok(lr) = std::env::var("BESTIARY_LR") {
        config.head.learning_rate = lr.parse().unwrap();
    }
    println!(
        "head: {} epochs, learning rate {}",
        config.head.epochs, config.head.learning_rate
    );
    let options = StoreOptions::default();

    let clean = open(&shared_data("animals10/images").unwrap()).await;
    let started = std::time::Instant::now();
    let report = audit(&config, &clean, &work, &options, None).await.unwrap();
    let first = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let cached = audit(&config, &clean, &work, &options, None).await.unwrap();
    let second = started.elapsed().as_secs_f64();
    println!(
        "clean {} photos: cross-validated accuracy {:.4}, ECE {:?} -> {:?}, {} wrong-label suspects; \
         first audit {first:.1} s, cached {second:.1} s (features computed {} then {})",
        report.summary.audited,
        report.summary.cross_validated_accuracy,
        report.summary.ece_before,
        report.summary.ece_after,
        report.summary.label_issues,
        report.summary.features_computed,
        cached.summary.features_computed
    );

    for seed in [1, 2, 3] {
        let noisy_dir = tempfile::tempdir().unwrap();
        let manifest = noisy_dir.path().join("noisy.csv");
        let swapped = write_noisy_manifest(&manifest, &classes, 0.1, seed);
        let noisy = open(&manifest).await;
        assert_eq!(noisy.train.len() + noisy.validation.len(), 240);
        for ranking in [Ranking::SelfConfidence, Ranking::NormalizedMargin] {
            config.ranking = ranking;
            let report = audit(&config, &noisy, &work, &options, None).await.unwrap();
            let (at_24, right_24) = recall(&report, &swapped, swapped.len());
            let (at_48, right_48) = recall(&report, &swapped, 2 * swapped.len());
            println!(
                "seed {seed} {ranking:?}: {} swapped, {at_24} in the top {} ({right_24} with the \
                 true class), {at_48} in the top {} ({right_48}); {} flagged; cv accuracy {:.4}; \
                 {} features computed",
                swapped.len(),
                swapped.len(),
                2 * swapped.len(),
                report.summary.label_issues,
                report.summary.cross_validated_accuracy,
                report.summary.features_computed
            );
        }
    }

    // Near duplicates: each photo resized and recompressed, against its original and against
    // the most similar other photo of its class.
    let originals = open(&shared_data("animals10/images").unwrap()).await;
    let original_samples = samples_of(&originals);
    let a = gather(
        &config,
        &originals,
        &original_samples,
        &work,
        &options,
        None,
    )
    .await
    .unwrap();
    let mut distinct_best = Vec::new();
    for (i, sample) in original_samples.iter().enumerate() {
        let row = a.rows[i].as_ref().unwrap();
        let best = original_samples
            .iter()
            .enumerate()
            .filter(|&(j, other)| j != i && other.label == sample.label)
            .map(|(j, _)| cosine(row, a.rows[j].as_ref().unwrap()))
            .fold(f32::MIN, f32::max);
        distinct_best.push(best);
    }
    distinct_best.sort_by(f32::total_cmp);
    println!(
        "distinct photos of one class, most similar other: highest {:.4}, 99th percentile {:.4}, median {:.4}",
        distinct_best[distinct_best.len() - 1],
        distinct_best[distinct_best.len() * 99 / 100],
        distinct_best[distinct_best.len() / 2]
    );
    for (scale, quality) in [(0.5, 60u8), (0.75, 75), (1.0, 60)] {
        let copies_dir = tempfile::tempdir().unwrap();
        for (class, files) in &classes {
            std::fs::create_dir_all(copies_dir.path().join(class)).unwrap();
            for file in files {
                let bytes = recompressed(file, scale, quality);
                std::fs::write(
                    copies_dir
                        .path()
                        .join(class)
                        .join(file.file_name().unwrap()),
                    bytes,
                )
                .unwrap();
            }
        }
        let copies = open(copies_dir.path()).await;
        let copy_samples = samples_of(&copies);
        let b = gather(&config, &copies, &copy_samples, &work, &options, None)
            .await
            .unwrap();
        let mut copy_similarity: Vec<f32> = original_samples
            .iter()
            .enumerate()
            .map(|(i, sample)| {
                let twin = copy_samples.iter().position(|s| s.id == sample.id).unwrap();
                cosine(a.rows[i].as_ref().unwrap(), b.rows[twin].as_ref().unwrap())
            })
            .collect();
        copy_similarity.sort_by(f32::total_cmp);
        println!(
            "copies at {scale}x, JPEG quality {quality}: lowest similarity {:.4}, 1st percentile {:.4}, median {:.4}",
            copy_similarity[0],
            copy_similarity[copy_similarity.len() / 100],
            copy_similarity[copy_similarity.len() / 2],
        );
    }
}

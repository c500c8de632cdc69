//! `classify` against a real S3 server (SeaweedFS) and local folders: labels and errors, shards,
//! continuing after a failure, copies into label folders and S3 tags.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use crate::common::{config, results, small_model, sorted_keys, upload_photos};
use bestiary_bulk::tagging::Tagger;
use bestiary_bulk::{ClassifyOptions, Progress, Shard, UNCERTAIN_LABEL, classify};
use bestiary_storage::{Store, StoreOptions, parse_store_url};
use bestiary_testkit::photos::{shared_data, truncated_jpeg, upload_dir};
use bestiary_testkit::{s3, unique_prefix};
use tokio_util::sync::CancellationToken;

fn run_options() -> ClassifyOptions {
    ClassifyOptions::default()
}

/// The animals10 photos with the built-in model when the shared data is here, otherwise
/// generated photos with the small trained model; plus a corrupt JPEG either way.
#[tokio::test]
async fn a_prefix_is_labelled_and_the_corrupt_photo_reported() {
    let env = s3();
    let prefix = unique_prefix("bulk-labels");
    let input = env.store(&format!("{prefix}/in"));
    let animals = shared_data("animals10/images");
    let model = small_model().await;
    let (expected, model_url): (Vec<(String, String)>, Option<&str>) = match &animals {
        Some(dir) => {
            upload_dir(dir, &input).await;
            let mut keys = Vec::new();
            for entry in walk(dir) {
                let key = entry
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                let class = key.split('/').next().unwrap().to_owned();
                keys.push((key, class));
            }
            (keys, None)
        }
        None => (
            upload_photos(&input, 8, "p").await,
            Some(model.url.as_str()),
        ),
    };
    input.put("cat/broken.jpg", truncated_jpeg()).await.unwrap();
    input
        .put("notes.txt", b"not a photo".to_vec())
        .await
        .unwrap();

    let out = env.url(&format!("{prefix}/out"));
    let config = config(
        &env.url(&format!("{prefix}/in")),
        &out,
        model_url,
        env.options(),
    );
    let progress = Arc::new(Progress::default());
    let report = classify(&config, &run_options(), progress, &CancellationToken::new())
        .await
        .unwrap();
    assert!(report.listing_complete && !report.interrupted);
    assert_eq!(report.this_run.records, expected.len() as u64 + 1);
    assert_eq!(report.not_selected, 1, "notes.txt is not a photo");
    assert_eq!(report.this_run.errors.get("corrupt"), Some(&1));

    let records = results(&out, &env.options()).await;
    assert_eq!(records.len(), expected.len() + 1);
    let broken = records.iter().find(|r| r.key == "cat/broken.jpg").unwrap();
    assert!(broken.label.is_none());
    assert_eq!(broken.error.as_ref().unwrap().code, "corrupt");
    let by_key: BTreeMap<&str, &str> = records
        .iter()
        .filter_map(|r| Some((r.key.as_str(), r.label.as_deref()?)))
        .collect();
    let correct = expected
        .iter()
        .filter(|(key, class)| by_key.get(key.as_str()) == Some(&class.as_str()))
        .count();
    let accuracy = correct as f64 / expected.len() as f64;
    println!(
        "{correct} of {} correct ({}), {:.1} img/s",
        expected.len(),
        if animals.is_some() {
            "built-in model, animals10"
        } else {
            "small model, generated photos"
        },
        report.images_per_second
    );
    assert!(accuracy >= 0.9, "accuracy {accuracy}");
    let first = &records[0];
    assert_eq!(first.url, format!("{}/{}", config.input, first.key));
    assert!(first.etag.is_some() && first.size > 0 && first.top_k.len() > 1);
    assert_eq!(first.model, report.model.name);
    assert_eq!(first.model_version, report.model.version);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test]
async fn two_shards_cover_every_key_exactly_once() {
    let env = s3();
    let prefix = unique_prefix("bulk-shards");
    let input = env.store(&format!("{prefix}/in"));
    let uploaded = upload_photos(&input, 10, "s").await;
    let model = small_model().await;
    let out = env.url(&format!("{prefix}/out"));
    let mut per_shard = Vec::new();
    for index in 0..2 {
        let mut config = config(
            &env.url(&format!("{prefix}/in")),
            &out,
            Some(&model.url),
            env.options(),
        );
        config.shard = Shard::new(index, 2).unwrap();
        let report = classify(
            &config,
            &run_options(),
            Arc::new(Progress::default()),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert!(report.this_run.records > 0, "shard {index} got no keys");
        assert_eq!(
            report.not_selected + report.this_run.records,
            uploaded.len() as u64
        );
        per_shard.push(report.this_run.records);
    }
    let records = results(&out, &env.options()).await;
    let mut expected: Vec<String> = uploaded.into_iter().map(|(key, _)| key).collect();
    expected.sort();
    assert_eq!(sorted_keys(&records), expected, "every key exactly once");
    assert_eq!(per_shard.iter().sum::<u64>(), expected.len() as u64);

    let summary = bestiary_bulk::merge(&out, &env.options(), &Default::default())
        .await
        .unwrap();
    let run = &summary.runs[0];
    assert!(run.complete && run.missing_shards.is_empty());
    assert_eq!(run.tally.records, expected.len() as u64);
}

/// A file linked to outside the folder fails its listing like a storage outage would: the run
/// commits what it classified before it and stops; the rerun continues after it.
#[tokio::test]
async fn a_run_stopped_by_a_failure_continues_without_repeating() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let local = Store::open(input.to_str().unwrap(), &StoreOptions::default()).unwrap();
    let uploaded = upload_photos(&local, 6, "f").await;
    // `teal/f002.jpg` sorts in the middle of the 18 keys.
    let link = input.join("teal/f002b.jpg");
    std::fs::write(
        outside.path().join("elsewhere.jpg"),
        crate::common::photo_bytes(0, 1),
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.path().join("elsewhere.jpg"), &link).unwrap();
    let model = small_model().await;
    let out = dir.path().join("out").display().to_string();
    let mut config = config(
        input.to_str().unwrap(),
        &out,
        Some(&model.url),
        StoreOptions::default(),
    );
    config.part_size = 2;

    let failure = classify(
        &config,
        &run_options(),
        Arc::new(Progress::default()),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(failure.to_string().contains("teal/f002b.jpg"), "{failure}");
    let before = results(&out, &StoreOptions::default()).await;
    let mut expected: Vec<String> = uploaded.into_iter().map(|(key, _)| key).collect();
    expected.sort();
    let cut = expected
        .iter()
        .position(|k| k.as_str() > "teal/f002b.jpg")
        .unwrap();
    assert_eq!(
        sorted_keys(&before),
        &expected[..cut],
        "everything before the failure, nothing after it"
    );

    std::fs::remove_file(&link).unwrap();
    let report = classify(
        &config,
        &run_options(),
        Arc::new(Progress::default()),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.this_run.records as usize, expected.len() - cut);
    assert_eq!(report.all_runs.records as usize, expected.len());
    let after = results(&out, &StoreOptions::default()).await;
    assert_eq!(sorted_keys(&after), expected, "every key exactly once");
    let earlier: HashSet<_> = before.iter().map(|r| &r.classified_at).collect();
    assert!(
        after[..cut]
            .iter()
            .all(|r| earlier.contains(&r.classified_at)),
        "earlier results were kept, not redone"
    );

    let again = classify(
        &config,
        &run_options(),
        Arc::new(Progress::default()),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(again.this_run.records, 0, "nothing left to do");
    let forced = classify(
        &config,
        &ClassifyOptions {
            force: true,
            ..run_options()
        },
        Arc::new(Progress::default()),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(forced.this_run.records as usize, expected.len());
    assert_eq!(
        sorted_keys(&results(&out, &StoreOptions::default()).await),
        expected
    );
}

#[tokio::test]
async fn photos_are_copied_into_label_folders_and_tagged() {
    let env = s3();
    let prefix = unique_prefix("bulk-actions");
    let input = env.store(&format!("{prefix}/in"));
    let uploaded = upload_photos(&input, 2, "a").await;
    input
        .put("violet/broken.jpg", truncated_jpeg())
        .await
        .unwrap();
    let input_url = parse_store_url(&env.url(&format!("{prefix}/in"))).unwrap();
    let owner = Tagger::new(&input_url, &env.options(), "owner").unwrap();
    owner.tag(&uploaded[0].0, "alice").await.unwrap();

    let model = small_model().await;
    let out = env.url(&format!("{prefix}/out"));
    let mut config = config(
        &env.url(&format!("{prefix}/in")),
        &out,
        Some(&model.url),
        env.options(),
    );
    config.copy_to = Some(env.url(&format!("{prefix}/sorted/{{label}}/")));
    config.tag_key = Some("label".into());
    config.min_score = Some(0.5);
    classify(
        &config,
        &run_options(),
        Arc::new(Progress::default()),
        &CancellationToken::new(),
    )
    .await
    .unwrap();

    let sorted = env.store(&format!("{prefix}/sorted"));
    let tags = Tagger::new(&input_url, &env.options(), "label").unwrap();
    let records = results(&out, &env.options()).await;
    assert_eq!(records.len(), uploaded.len() + 1);
    for record in &records {
        let Some(label) = &record.label else {
            assert_eq!(record.key, "violet/broken.jpg");
            assert!(tags.tags(&record.key).await.unwrap().is_empty());
            continue;
        };
        let score = record.score.unwrap();
        assert_eq!(label == UNCERTAIN_LABEL, score < 0.5, "{record:?}");
        let copy = sorted
            .get(&format!("{label}/{}", record.key))
            .await
            .unwrap();
        assert_eq!(copy, input.get(&record.key).await.unwrap());
        let written = tags.tags(&record.key).await.unwrap();
        assert!(
            written.contains(&("label".to_owned(), label.clone())),
            "{written:?}"
        );
    }
    let first = tags.tags(&uploaded[0].0).await.unwrap();
    assert!(
        first.contains(&("owner".to_owned(), "alice".to_owned())),
        "other tags are kept: {first:?}"
    );
}

#[tokio::test]
async fn csv_parts_and_globs() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let local = Store::open(input.to_str().unwrap(), &StoreOptions::default()).unwrap();
    upload_photos(&local, 3, "g").await;
    let model = small_model().await;
    let out = dir.path().join("out").display().to_string();
    let mut config = config(
        input.to_str().unwrap(),
        &out,
        Some(&model.url),
        StoreOptions::default(),
    );
    config.format = bestiary_bulk::OutputFormat::Csv;
    config.include = vec!["*/g00[01].jpg".into()];
    config.exclude = vec!["teal/**".into()];
    let report = classify(
        &config,
        &run_options(),
        Arc::new(Progress::default()),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(
        report.this_run.records, 4,
        "g000 and g001 of amber and violet"
    );
    let merged = dir.path().join("merged.csv");
    bestiary_bulk::merge(
        &out,
        &StoreOptions::default(),
        &bestiary_bulk::MergeOptions {
            run: None,
            merge_to: Some(merged.display().to_string()),
        },
    )
    .await
    .unwrap();
    let mut reader = csv::Reader::from_path(&merged).unwrap();
    assert_eq!(&reader.headers().unwrap()[0], "key");
    let keys: Vec<String> = reader
        .records()
        .map(|row| row.unwrap()[0].to_owned())
        .collect();
    assert_eq!(
        keys,
        [
            "amber/g000.jpg",
            "amber/g001.jpg",
            "violet/g000.jpg",
            "violet/g001.jpg"
        ]
    );
}

/// A model whose "unknown" detector rejects every photo (its threshold is above any score):
/// each record says `unknown`, `--copy-to` files the photos under `unknown/`, and
/// `--keep-label-when-unknown` keeps the class as the label (in a run folder of its own).
#[tokio::test]
async fn photos_the_detector_rejects_are_labelled_and_filed_as_unknown() {
    use crate::common::model_parts::{self, Parts};
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let local = Store::open(input.to_str().unwrap(), &StoreOptions::default()).unwrap();
    let uploaded = upload_photos(&local, 2, "u").await;
    let models = dir.path().join("models");
    let mut metadata = model_parts::parts().metadata.clone();
    metadata.calibration = Some(bestiary_model::Calibration {
        temperature: 1.0,
        ece_before: 0.0,
        ece_after: 0.0,
        nll_before: 0.0,
        nll_after: 0.0,
        photos: 30,
        unknown: Some(bestiary_model::UnknownDetector {
            method: "energy".into(),
            threshold: f32::MAX,
            acceptance: 0.97,
        }),
    });
    let parts = Parts {
        metadata,
        onnx: model_parts::parts().onnx.clone(),
        weights: model_parts::parts().weights.clone(),
    };
    model_parts::save(&parts, &models, "animals").await;
    let model_url = format!("{}/animals", models.display());
    let out = dir.path().join("out").display().to_string();
    let sorted = dir.path().join("sorted");
    let mut config = config(
        input.to_str().unwrap(),
        &out,
        Some(&model_url),
        StoreOptions::default(),
    );
    config.copy_to = Some(format!("{}/{{label}}/", sorted.display()));
    classify(
        &config,
        &run_options(),
        Arc::new(Progress::default()),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    let records = results(&out, &StoreOptions::default()).await;
    assert_eq!(records.len(), uploaded.len());
    for record in &records {
        assert_eq!(record.label.as_deref(), Some("unknown"), "{record:?}");
        assert_eq!(record.unknown, Some(true));
        assert!(record.unknown_score.is_some());
        assert!(
            sorted.join("unknown").join(&record.key).is_file(),
            "{}",
            record.key
        );
    }

    let kept_out = dir.path().join("kept").display().to_string();
    let mut config = config.clone();
    config.out = kept_out.clone();
    config.copy_to = None;
    config.keep_label_when_unknown = true;
    classify(
        &config,
        &run_options(),
        Arc::new(Progress::default()),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    for record in results(&kept_out, &StoreOptions::default()).await {
        let folder = record.key.split('/').next().unwrap();
        assert_eq!(record.label.as_deref(), Some(folder), "{record:?}");
        assert_eq!(record.unknown, Some(true));
    }
}

//! `train --recipe`: a preset fills in the settings not given, any setting given wins, and the
//! settings are what the stored model records.

use bestiary_testkit::photos::write_class_folders;

use crate::support::{bestiary, train_tiny};

/// The training settings `model.json` of the latest version of `<models>/<name>` records.
fn recorded_training(models: &std::path::Path, name: &str) -> serde_json::Value {
    let latest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(models.join(name).join("latest")).unwrap()).unwrap();
    let version = latest["version"].as_str().unwrap();
    let metadata: serde_json::Value = serde_json::from_slice(
        &std::fs::read(models.join(name).join(version).join("model.json")).unwrap(),
    )
    .unwrap();
    metadata["training"].clone()
}

#[test]
fn the_fast_recipe_fills_in_what_is_not_given() {
    let dir = tempfile::tempdir().unwrap();
    write_class_folders(dir.path(), &["amber", "blue"], 8, (40, 36));
    let out = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (data, models) = (dir.path().to_str().unwrap(), out.path().to_str().unwrap());
    let cache = cache.path().to_str().unwrap();

    let fast = train_tiny(
        data,
        models,
        cache,
        "fast",
        "2",
        &["--recipe", "fast", "--lr", "0.02"],
    );
    assert!(
        fast.status.success(),
        "{}",
        String::from_utf8_lossy(&fast.stderr)
    );
    let recorded = recorded_training(out.path(), "fast");
    assert_eq!(recorded["optimizer"], "sgd", "{recorded}");
    assert_eq!(recorded["nesterov"], true, "{recorded}");
    assert_eq!(recorded["schedule"], "triangular", "{recorded}");
    assert_eq!(recorded["augmentation"], "flip-shift", "{recorded}");
    assert_eq!(recorded["weight_decay"], 5e-4, "{recorded}");
    assert!(
        (recorded["label_smoothing"].as_f64().unwrap() - 0.2).abs() < 1e-6,
        "{recorded}"
    );
    // Given on its own, the learning rate wins over the recipe's 0.05.
    assert_eq!(recorded["learning_rate"], 0.02, "{recorded}");

    // Without --recipe, the standard settings, and a single override changes only itself.
    let standard = train_tiny(
        data,
        models,
        cache,
        "standard",
        "2",
        &["--augmentation", "flip-shift"],
    );
    assert!(standard.status.success());
    let recorded = recorded_training(out.path(), "standard");
    assert_eq!(recorded["optimizer"], "adam-w", "{recorded}");
    assert_eq!(recorded["nesterov"], false, "{recorded}");
    assert_eq!(recorded["schedule"], "cosine", "{recorded}");
    assert_eq!(recorded["augmentation"], "flip-shift", "{recorded}");
    assert_eq!(recorded["learning_rate"], 2e-3, "{recorded}");
}

#[test]
fn the_fast_recipe_is_refused_for_a_pretrained_network() {
    let dir = tempfile::tempdir().unwrap();
    write_class_folders(dir.path(), &["amber", "blue"], 2, (40, 36));
    let out = tempfile::tempdir().unwrap();
    let output = bestiary(&[
        "train",
        "--data",
        dir.path().to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
        "--arch",
        "efficientnet-lite0",
        "--recipe",
        "fast",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--recipe fast"), "{stderr}");
    assert!(
        std::fs::read_dir(out.path()).unwrap().next().is_none(),
        "nothing is written"
    );
}

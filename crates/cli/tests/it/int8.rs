//! `bestiary export --int8` end to end: the int8 graph lands beside `model.onnx`, model.json
//! records it, `eval` and `bench engine` run it at `--precision int8`, and a version without one
//! is refused rather than served in fp32.

use bestiary_testkit::photos::write_class_folders;

use crate::support::{bestiary, stdout, train_tiny};

/// Whether onnxruntime is here; without it the test skips, unless `BESTIARY_REQUIRE_ORT=1`.
fn ort_available() -> bool {
    match bestiary_engine::find_onnxruntime() {
        Ok(_) => true,
        Err(missing) => {
            assert!(
                std::env::var("BESTIARY_REQUIRE_ORT").as_deref() != Ok("1"),
                "BESTIARY_REQUIRE_ORT=1 but onnxruntime is missing: {missing}"
            );
            println!("SKIP (onnxruntime checks): {missing}");
            false
        }
    }
}

#[test]
fn export_int8_writes_and_records_the_graph_that_precision_int8_runs() {
    if !ort_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_class_folders(dir.path(), &["amber", "blue"], 10, (40, 40));
    let out = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (data, models) = (dir.path().to_str().unwrap(), out.path().to_str().unwrap());
    let cache_dir = cache.path().to_str().unwrap();
    stdout(&train_tiny(data, models, cache_dir, "tiny", "2", &[]));
    let model = format!("{models}/tiny");

    // Before the export, int8 is refused with the way to get it.
    let refused = bestiary(&[
        "bench",
        "engine",
        "--model",
        &model,
        "--engine",
        "ort",
        "--precision",
        "int8",
    ]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("no int8 graph") && message.contains("export"),
        "{message}"
    );

    // classify too, and before anything is classified.
    let results = tempfile::tempdir().unwrap();
    #[rustfmt::skip]
    let refused = bestiary(&[
        "classify", data, "--out", results.path().to_str().unwrap(), "--model", &model,
        "--precision", "int8",
    ]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("no int8 graph"), "{message}");

    // Calibrated on the training photos model.json names, by default.
    #[rustfmt::skip]
    let text = stdout(&bestiary(&[
        "export", "--model", &model, "--int8", "--calibration-photos", "12", "--describe",
        "--cache-dir", cache_dir,
    ]));
    assert!(
        text.contains("QuantizeLinear") && text.contains("DequantizeLinear"),
        "{text}"
    );
    let version = std::fs::read_dir(out.path().join("tiny"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        // `tiny/training` (the run's checkpoints) sits beside the version folder.
        .find(|path| path.join("model.json").is_file())
        .unwrap();
    assert!(version.join("model.int8.onnx").is_file());
    let metadata: serde_json::Value =
        serde_json::from_slice(&std::fs::read(version.join("model.json")).unwrap()).unwrap();
    assert_eq!(metadata["int8"]["file"], "model.int8.onnx", "{metadata}");
    assert_eq!(metadata["int8"]["calibration_data"], data, "{metadata}");
    assert_eq!(metadata["int8"]["calibration_photos"], 12, "{metadata}");
    assert_eq!(metadata["int8"]["range_method"], "minmax", "{metadata}");
    assert_eq!(metadata["int8"]["weight_bits"], 7, "{metadata}");
    assert!(
        metadata["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "model.int8.onnx"),
        "{metadata}"
    );

    // eval runs either graph; the int8 one scores the photos about as the fp32 one does.
    let eval = |precision: &str| -> serde_json::Value {
        #[rustfmt::skip]
        let text = stdout(&bestiary(&[
            "eval", "--model", &model, "--engine", "ort", "--precision", precision, "--json",
            "--data", data, "--cache-dir", cache_dir,
        ]));
        serde_json::from_str(&text).unwrap()
    };
    let (float, int8) = (eval("fp32"), eval("int8"));
    assert_eq!(int8["images"], 20);
    let (float_top1, int8_top1) = (
        float["top1"].as_f64().unwrap(),
        int8["top1"].as_f64().unwrap(),
    );
    // 20 photos: at most two may change their answer.
    assert!(
        (float_top1 - int8_top1).abs() <= 0.1 + 1e-9,
        "fp32 {float_top1}, int8 {int8_top1}"
    );

    // Now classify runs it.
    #[rustfmt::skip]
    stdout(&bestiary(&[
        "classify", data, "--out", results.path().to_str().unwrap(), "--model", &model,
        "--precision", "int8", "--quiet",
    ]));

    #[rustfmt::skip]
    let text = stdout(&bestiary(&[
        "bench", "engine", "--model", &model, "--engine", "ort", "--precision", "int8",
        "--iterations", "3", "--json",
    ]));
    let bench: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(bench["precision"], "int8", "{text}");
    assert!(bench["images_per_second"].as_f64().unwrap() > 0.0);
}

#[test]
fn int8_conflicts_with_fp16_and_bundles() {
    let output = bestiary(&["export", "--model", "m", "--int8", "--fp16"]);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("--fp16"), "{message}");
}

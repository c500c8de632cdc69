//! The `bestiary` binary end to end: `dataset inspect` on local folders and on S3, help texts and
//! environment variables.

use std::process::Command;

use bestiary_testkit::photos::{truncated_jpeg, upload_dir, write_class_folders};
use bestiary_testkit::{s3, unique_prefix};

use crate::support::{bestiary_with as bestiary, stdout, train_tiny};

/// The server's variables with a secret key it rejects.
fn with_wrong_secret(env: &bestiary_testkit::S3Env) -> Vec<(&'static str, String)> {
    let mut child_env = env.child_env();
    for (key, value) in child_env.iter_mut() {
        if *key == "AWS_SECRET_ACCESS_KEY" {
            *value = "wrong".into();
        }
    }
    child_env
}

fn broken_dataset() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_class_folders(dir.path(), &["cat", "dog"], 6, (40, 30));
    std::fs::write(dir.path().join("dog/truncated.jpg"), truncated_jpeg()).unwrap();
    std::fs::write(dir.path().join("dog/zero.jpg"), b"").unwrap();
    std::fs::write(dir.path().join("cat/words.jpg"), b"just words").unwrap();
    dir
}

#[test]
fn inspect_prints_a_readable_report() {
    let dir = broken_dataset();
    let text = stdout(&bestiary(
        &["dataset", "inspect", dir.path().to_str().unwrap()],
        &[],
    ));
    // Everything but the first line (the local path) is stable.
    let body: Vec<&str> = text.lines().skip(1).collect();
    let expected = [
        "Layout    class-folders",
        "Split     hash split: 20% validation, seed 42",
        "Photos    9 train, 3 validation, 3 bad, 0 ignored",
        "Size      width 40–40 (median 40), height 30–30 (median 30)",
        "Formats   jpeg 12",
        "",
        "2 classes:",
        "  class    train  validation    bad",
    ];
    assert_eq!(&body[..expected.len()], expected, "\n{text}");
    assert!(text.contains("Bad files (3):"), "{text}");
    assert!(text.contains("  dog/truncated.jpg  [corrupt]"), "{text}");
    assert!(
        text.contains("  dog/zero.jpg  [empty] zero-byte file"),
        "{text}"
    );
    assert!(text.contains("  cat/words.jpg  [not-an-image]"), "{text}");
}

#[test]
fn inspect_json_has_a_stable_shape() {
    let dir = broken_dataset();
    let text = stdout(&bestiary(
        &["dataset", "inspect", "--json", dir.path().to_str().unwrap()],
        &[],
    ));
    let mut report: serde_json::Value = serde_json::from_str(&text).unwrap();
    for volatile in ["url", "fingerprint"] {
        assert!(report[volatile].is_string());
        report[volatile] = serde_json::Value::Null;
    }
    for file in report["bad_files"].as_array_mut().unwrap() {
        file["reason"] = serde_json::Value::Null; // decoder wording may change between versions
    }
    let expected = serde_json::json!({
        "url": null, "fingerprint": null,
        "layout": "class-folders",
        "validation_source": "hash split: 20% validation, seed 42",
        "classes": [
            {"name": "cat", "train": 4, "validation": 2, "bad": 1},
            {"name": "dog", "train": 5, "validation": 1, "bad": 2}
        ],
        "train": 9, "validation": 3,
        "width": {"min": 40, "median": 40, "mean": 40.0, "max": 40},
        "height": {"min": 30, "median": 30, "mean": 30.0, "max": 30},
        "formats": {"jpeg": 12},
        "bad_files": [
            {"id": "cat/words.jpg", "code": "not-an-image", "reason": null},
            {"id": "dog/truncated.jpg", "code": "corrupt", "reason": null},
            {"id": "dog/zero.jpg", "code": "empty", "reason": null}
        ],
        "ignored_files": []
    });
    assert_eq!(report, expected);
}

#[test]
fn inspect_reads_s3_like_a_local_folder() {
    let dir = broken_dataset();
    let env = s3();
    let prefix = unique_prefix("cli-inspect");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(upload_dir(dir.path(), &env.store(&prefix)));
    let child_env: Vec<(&str, String)> = env.child_env();
    let from_s3 = stdout(&bestiary(
        &["dataset", "inspect", &env.url(&prefix)],
        &child_env,
    ));
    let local = stdout(&bestiary(
        &["dataset", "inspect", dir.path().to_str().unwrap()],
        &[],
    ));
    let without_url_and_fingerprint = |text: &str| {
        text.lines()
            .filter(|l| !l.starts_with("Dataset") && !l.starts_with("Fingerprint"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        without_url_and_fingerprint(&from_s3),
        without_url_and_fingerprint(&local)
    );
    assert!(from_s3.starts_with(&format!("Dataset   {}", env.url(&prefix))));

    // The endpoint also comes from BESTIARY_S3_ENDPOINT / --s3-endpoint.
    let mut env_vars = child_env.clone();
    env_vars.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    env_vars.push(("BESTIARY_S3_ENDPOINT", env.endpoint.clone()));
    let again = stdout(&bestiary(
        &["dataset", "inspect", &env.url(&prefix)],
        &env_vars,
    ));
    assert_eq!(again, from_s3);
}

#[test]
fn wrong_s3_credentials_fail_with_a_clear_message() {
    let env = s3();
    let child_env = with_wrong_secret(env);
    let output = bestiary(
        &[
            "dataset",
            "inspect",
            "--storage-retries",
            "0",
            &env.url("x"),
        ],
        &child_env,
    );
    assert_eq!(
        output.status.code(),
        Some(3),
        "denied access: rerunning cannot help"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("access denied") && stderr.contains(&env.url("x")),
        "{stderr}"
    );
}

#[test]
fn missing_folder_is_a_clear_error() {
    let output = bestiary(&["dataset", "inspect", "/definitely/not/here"], &[]);
    assert_eq!(
        output.status.code(),
        Some(3),
        "no photos: rerunning cannot help"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no photos found at /definitely/not/here"),
        "{stderr}"
    );
}

#[test]
fn settings_come_from_the_environment_too() {
    let dir = broken_dataset();
    let env = [
        ("BESTIARY_VALIDATION_FRACTION", "0.5".to_string()),
        ("BESTIARY_SPLIT_SEED", "7".to_string()),
    ];
    let text = stdout(&bestiary(
        &["dataset", "inspect", dir.path().to_str().unwrap()],
        &env,
    ));
    assert!(
        text.contains("hash split: 50% validation, seed 7"),
        "{text}"
    );
    let output = bestiary(
        &[
            "dataset",
            "inspect",
            "--validation-fraction",
            "1.5",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("--validation-fraction must be"));
}

#[test]
fn help_lists_every_command() {
    let text = stdout(&bestiary(&["--help"], &[]));
    for command in [
        "dataset", "train", "eval", "serve", "classify", "watch", "export", "package", "import",
        "bench",
    ] {
        assert!(
            text.contains(&format!("  {command} ")),
            "{command} missing from\n{text}"
        );
    }
    let inspect_help = stdout(&bestiary(&["dataset", "inspect", "--help"], &[]));
    assert!(
        inspect_help.contains("[env: BESTIARY_VALIDATION_FRACTION=]"),
        "{inspect_help}"
    );
}

#[test]
fn help_never_prints_api_keys_from_the_environment() {
    let secret = "hunter2-do-not-print".to_string();
    for (command, variable) in [
        ("serve", "BESTIARY_API_KEY"),
        ("classify", "BESTIARY_ENDPOINT_API_KEY"),
        ("watch", "BESTIARY_ENDPOINT_API_KEY"),
    ] {
        let help = stdout(&bestiary(
            &[command, "--help"],
            &[(variable, secret.clone())],
        ));
        assert!(
            help.contains(&format!("[env: {variable}]")),
            "{command}: {help}"
        );
        assert!(
            !help.contains(&secret),
            "{command} --help shows the key:\n{help}"
        );
    }
}

#[test]
fn import_names_the_models_it_knows() {
    let dir = tempfile::tempdir().unwrap();
    let output = bestiary(
        &["import", "resnet50", "--out", dir.path().to_str().unwrap()],
        &[],
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("efficientnet-lite0"), "{stderr}");
}

#[test]
fn loader_bench_reports_throughput() {
    let dir = tempfile::tempdir().unwrap();
    write_class_folders(dir.path(), &["a", "b"], 8, (64, 48));
    let text = stdout(&bestiary(
        &[
            "bench",
            "loader",
            "--json",
            "--epochs",
            "1",
            "--image-size",
            "32",
            dir.path().to_str().unwrap(),
        ],
        &[],
    ));
    let result: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(result["images"], 16);
    assert!(result["cold_images_per_second"].as_f64().unwrap() > 0.0);
    assert!(result["cached_images_per_second"].as_f64().unwrap() > 0.0);
}

#[test]
fn train_reads_and_writes_s3() {
    let dir = tempfile::tempdir().unwrap();
    write_class_folders(dir.path(), &["amber", "blue"], 10, (40, 40));
    let env = s3();
    let prefix = unique_prefix("cli-train");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(upload_dir(
        dir.path(),
        &env.store(&format!("{prefix}/data")),
    ));
    let cache = tempfile::tempdir().unwrap();
    let output = bestiary(
        &[
            "train",
            "--data",
            &env.url(&format!("{prefix}/data")),
            "--out",
            &env.url(&format!("{prefix}/models")),
            "--name",
            "tiny",
            "--arch",
            "seed-cnn",
            "--width",
            "8",
            "--depth",
            "2",
            "--image-size",
            "32",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--json",
            "--cache-dir",
            cache.path().to_str().unwrap(),
        ],
        &env.child_env(),
    );
    let text = stdout(&output);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "two epoch lines and the result:\n{text}");
    assert_eq!(lines[0]["epoch"], 0);
    let model = lines[2]["model"].as_str().unwrap();
    assert!(
        model.starts_with(&env.url(&format!("{prefix}/models/tiny/"))),
        "{model}"
    );
    let store = env.store(&format!("{prefix}/models/tiny"));
    let version = lines[2]["version"].as_str().unwrap();
    for file in [
        "model.json",
        "model.onnx",
        "weights.safetensors",
        "metrics.jsonl",
    ] {
        assert!(
            runtime
                .block_on(store.exists(&format!("{version}/{file}")))
                .unwrap(),
            "{file}"
        );
    }
    let latest: serde_json::Value =
        serde_json::from_slice(&runtime.block_on(store.get("latest")).unwrap()).unwrap();
    assert_eq!(latest["version"], version);
}

#[test]
fn trained_models_are_evaluated_and_exported_again() {
    let dir = tempfile::tempdir().unwrap();
    write_class_folders(dir.path(), &["amber", "blue"], 10, (40, 40));
    let out = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let models = out.path().to_str().unwrap();
    stdout(&train_tiny(
        data,
        models,
        cache.path().to_str().unwrap(),
        "tiny",
        "2",
        &[],
    ));
    let model = format!("{models}/tiny");

    let report = out.path().join("report.html");
    let text = stdout(&bestiary(
        &[
            "eval",
            "--model",
            &model,
            "--json",
            "--report",
            report.to_str().unwrap(),
            "--data",
            data,
        ],
        &[],
    ));
    let result: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(result["images"], 20, "{text}");
    assert!(std::fs::read_to_string(&report).unwrap().contains("<svg"));

    let onnx = out.path().join("copy.onnx");
    let text = stdout(&bestiary(
        &[
            "export",
            "--model",
            &model,
            "--to",
            onnx.to_str().unwrap(),
            "--describe",
        ],
        &[],
    ));
    assert!(text.contains("Conv(") && text.contains("logits"), "{text}");
    assert!(std::fs::metadata(&onnx).unwrap().len() > 1000);

    // The ONNX graph in an inference engine scores the same photos like the burn network.
    let text = stdout(&bestiary(
        &[
            "eval", "--model", &model, "--json", "--engine", "tract", "--data", data,
        ],
        &[],
    ));
    let in_engine: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(in_engine["images"], 20, "{text}");
    assert_eq!(in_engine["top1"], result["top1"], "{text}");

    // A float16 serving bundle (no burn weights) is a model of its own, evaluated in an engine.
    let bundles = tempfile::tempdir().unwrap();
    let bundles_url = bundles.path().to_str().unwrap();
    stdout(&bestiary(
        &[
            "export",
            "--model",
            &model,
            "--fp16",
            "--bundle",
            bundles_url,
        ],
        &[],
    ));
    let bundle = format!("{bundles_url}/tiny");
    assert!(
        !bundles
            .path()
            .join("tiny")
            .read_dir()
            .unwrap()
            .any(|entry| { entry.unwrap().path().join("weights.safetensors").exists() })
    );
    let text = stdout(&bestiary(
        &["eval", "--model", &bundle, "--json", "--data", data],
        &[],
    ));
    let bundled: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(bundled["images"], 20, "{text}");
    assert_eq!(bundled["version"], result["version"], "{text}");
}

#[test]
fn builtin_model_recognises_the_animals10_validation_photos() {
    let Some(animals) = bestiary_testkit::photos::shared_data("animals10/images") else {
        eprintln!("skipped: ../shared/data/animals10 is absent");
        return;
    };
    let text = stdout(&bestiary(
        &[
            "eval",
            "--model",
            "builtin",
            "--json",
            "--split",
            "validation",
            "--data",
            animals.to_str().unwrap(),
        ],
        &[],
    ));
    let result: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(result["images"], 45, "{text}");
    // The shipped version scored 43 of 45 when it was trained (README).
    assert!(result["top1"].as_f64().unwrap() >= 0.93, "{text}");
}

#[test]
fn classify_exits_3_when_rerunning_cannot_help() {
    // Denied credentials: a Kubernetes podFailurePolicy fails the index instead of retrying.
    let env = s3();
    let child_env = with_wrong_secret(env);
    let out = tempfile::tempdir().unwrap();
    let output = bestiary(
        &[
            "classify",
            &env.url("photos"),
            "--out",
            out.path().to_str().unwrap(),
            "--storage-retries",
            "0",
            "--quiet",
        ],
        &child_env,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("access denied"), "{stderr}");
}

#[test]
fn package_writes_the_archive_sagemaker_unpacks() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("model.tar.gz");
    let text = stdout(&bestiary(
        &[
            "package",
            "--model",
            "builtin",
            "--to",
            archive.to_str().unwrap(),
        ],
        &[],
    ));
    // model.json, model.onnx, model.int8.onnx and the latest pointer.
    assert!(text.contains("4 files"), "{text}");
    let unpacked = dir.path().join("opt-ml-model");
    let tar = Command::new("tar")
        .args(["-xzf", archive.to_str().unwrap(), "-C"])
        .arg({
            std::fs::create_dir(&unpacked).unwrap();
            &unpacked
        })
        .status()
        .unwrap();
    assert!(tar.success());
    let pointer = std::fs::read_to_string(unpacked.join("animals/latest")).unwrap();
    let version: serde_json::Value = serde_json::from_str(&pointer).unwrap();
    let folder = unpacked
        .join("animals")
        .join(version["version"].as_str().unwrap());
    assert!(folder.join("model.json").is_file() && folder.join("model.onnx").is_file());
    assert!(folder.join("model.int8.onnx").is_file());
    // The unpacked archive is a model root `eval` (like `serve`) reads as it is.
    let output = bestiary(
        &[
            "package",
            "--model",
            unpacked.join("animals").to_str().unwrap(),
            "--to",
            dir.path().join("again.tar.gz").to_str().unwrap(),
        ],
        &[],
    );
    assert!(stdout(&output).contains("4 files"));
}

//! The web console's page and the routes it uses, on a real server: the bucket gallery
//! (folders, paged photos with predictions and filters), thumbnails, a `classify` run's
//! results, model versions with their evaluation and the swap between them, live usage, and
//! the key the page must send.

use std::path::Path;

use crate::common::model_parts::{Parts, parts};
use crate::common::{CLASSES, Harness, MODEL, multi_thread, photo_bytes};
use bestiary_model::DatasetInfo;
use bestiary_testkit::photos::truncated_jpeg;
use image::ImageFormat;
use serde_json::{Value, json};

fn write(root: &Path, key: &str, bytes: &[u8]) {
    let path = root.join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// `photos/<class>/<n>.jpg` for every class, plus a file that is no photo and a broken one.
fn fill_bucket(root: &Path, per_class: usize) {
    for (class, name) in CLASSES.iter().enumerate() {
        for n in 0..per_class {
            let seed = (class * 100 + n) as u64;
            write(
                root,
                &format!("photos/{name}/{n}.jpg"),
                &photo_bytes(class, seed, ImageFormat::Jpeg),
            );
        }
    }
    write(root, "photos/notes.txt", b"not a photo");
    write(root, "photos/broken.jpg", &truncated_jpeg());
}

fn labels(page: &Value) -> Vec<(String, Option<String>)> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            (
                item["key"].as_str().unwrap().to_string(),
                item["label"].as_str().map(str::to_string),
            )
        })
        .collect()
}

#[test]
fn the_page_is_public_and_embedded_with_a_strict_policy() {
    multi_thread().block_on(async {
        let mut harness = Harness::start(|config| config.api_keys = vec!["key".into()]).await;
        let page = harness.get("/").await;
        page.expect(200);
        assert!(
            page.header("content-type")
                .unwrap()
                .starts_with("text/html")
        );
        let policy = page.header("content-security-policy").unwrap();
        assert!(policy.contains("script-src 'self'"), "{policy}");
        assert!(page.text().contains("/console/main.js"));
        let script = harness.get("/console/main.js").await;
        script.expect(200);
        assert!(
            script
                .header("content-type")
                .unwrap()
                .starts_with("text/javascript")
        );
        let missing = harness.get("/console/secrets.js").await;
        missing.expect(404);
        assert_eq!(missing.json()["error_type"], "not_found");
        // Everything the page shows needs the key.
        for path in [
            "/v1/bucket/folders",
            "/v1/bucket/audit?prefix=photos",
            "/v1/bucket/photos",
            "/v1/bucket/results?prefix=r.jsonl",
            "/v1/thumbnail?key=a.jpg",
            "/v1/models/animals/versions",
        ] {
            let reply = harness.get(path).await;
            reply.expect(401);
            assert_eq!(reply.json()["error_type"], "unauthorized", "{path}");
        }
        harness.stop().await;
    });
}

#[test]
fn the_gallery_pages_through_a_prefix_with_predictions_and_filters() {
    multi_thread().block_on(async {
        let mut harness = Harness::start(|_| {}).await;
        fill_bucket(harness.bucket.path(), 3);
        let folders = harness.get("/v1/bucket/folders?prefix=photos").await;
        folders.expect(200);
        insta::assert_json_snapshot!("console_folders", folders.json());

        // Small pages cover every photo once, in key order, with the right labels.
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        let mut first_page = None;
        loop {
            let path = match &after {
                Some(a) => format!("/v1/bucket/photos?prefix=photos&limit=4&after={a}"),
                None => "/v1/bucket/photos?prefix=photos&limit=4".into(),
            };
            let page = harness.get(&path).await.expect(200).json();
            assert!(page["items"].as_array().unwrap().len() <= 4);
            first_page.get_or_insert_with(|| page.clone());
            seen.extend(labels(&page));
            match page["next_after"].as_str() {
                Some(next) => after = Some(next.to_string()),
                None => break,
            }
        }
        insta::assert_json_snapshot!("console_photos_page", first_page.unwrap(), {
            ".items[].score" => "[score]",
            ".items[].size" => "[bytes]",
            ".items[].top_k[].score" => "[score]",
            ".version" => "[version]",
        });
        assert_eq!(seen.len(), 3 * 3 + 1, "{seen:?}");
        assert_eq!(seen[0], ("photos/amber/0.jpg".into(), Some("amber".into())));
        // A broken photo is listed with its error, not dropped; other files are not photos.
        assert_eq!(seen[3], ("photos/broken.jpg".into(), None));
        for (key, label) in seen.iter().filter(|(key, _)| !key.ends_with("broken.jpg")) {
            let folder = key.split('/').nth(1).unwrap();
            assert_eq!(label.as_deref(), Some(folder), "{key}");
        }

        // A label filter keeps only that label; a score filter only the doubtful ones.
        let teal = harness
            .get("/v1/bucket/photos?prefix=photos&label=teal&limit=50")
            .await
            .expect(200)
            .json();
        let teal = labels(&teal);
        assert_eq!(teal.len(), 3);
        assert!(
            teal.iter()
                .all(|(_, label)| label.as_deref() == Some("teal"))
        );
        let doubtful = harness
            .get("/v1/bucket/photos?prefix=photos&max_score=0.0001")
            .await
            .expect(200)
            .json();
        assert!(doubtful["items"].as_array().unwrap().is_empty());
        assert_eq!(doubtful["next_after"], Value::Null);

        // Bad input is the JSON 400.
        for path in [
            "/v1/bucket/photos?limit=0",
            "/v1/bucket/photos?limit=1000",
            "/v1/bucket/photos?prefix=/etc",
            "/v1/bucket/photos?prefix=../..",
            "/v1/bucket/photos?max_score=2",
            "/v1/bucket/photos?top_k=50",
            "/v1/bucket/folders?prefix=s3://elsewhere/x",
        ] {
            let reply = harness.get(path).await;
            reply.expect(400);
            assert_eq!(reply.json()["error_type"], "bad_request", "{path}");
        }
        harness.stop().await;
    });
}

#[test]
fn a_folders_dataset_audit_is_served_as_written_and_its_absence_is_a_404() {
    multi_thread().block_on(async {
        let mut harness = Harness::start(|_| {}).await;
        fill_bucket(harness.bucket.path(), 1);
        // What `bestiary dataset audit photos --out photos` writes, in short.
        let audit = json!({
            "dataset": "photos",
            "classes": CLASSES,
            "summary": {"photos": 8, "label_issues": 1, "unknown": 0, "cross_validated_accuracy": 0.875},
            "suspects": [{"key": "amber/0.jpg", "label": "amber", "suggested_label": "blue",
                          "score": 0.91, "reason": "wrong_label", "detail": "looks blue"}],
            "duplicate_groups": [],
        });
        write(
            harness.bucket.path(),
            "photos/audit.json",
            serde_json::to_string(&audit).unwrap().as_bytes(),
        );
        for prefix in ["photos", "photos/"] {
            let reply = harness.get(&format!("/v1/bucket/audit?prefix={prefix}")).await;
            reply.expect(200);
            assert_eq!(reply.json()["audit"], audit, "{prefix}");
            assert_eq!(reply.json()["prefix"], prefix);
        }
        // No audit there: a 404 naming the folder as asked, never where the bucket lives.
        let missing = harness.get("/v1/bucket/audit?prefix=photos/amber").await;
        missing.expect(404);
        assert_eq!(missing.json()["error_type"], "not_found");
        let message = missing.json()["error"].as_str().unwrap().to_owned();
        assert!(message.contains("photos/amber"), "{message}");
        let bucket = harness.bucket.path().to_string_lossy().into_owned();
        assert!(!message.contains(&bucket), "{message}");
        // A file that is not JSON is the client's data problem, said as such.
        write(harness.bucket.path(), "photos/blue/audit.json", b"{not json");
        let corrupt = harness.get("/v1/bucket/audit?prefix=photos/blue").await;
        corrupt.expect(400);
        assert_eq!(corrupt.json()["error_type"], "bad_request");
        harness.get("/v1/bucket/audit?prefix=../x").await.expect(400);
        harness.stop().await;
    });
}

#[test]
fn thumbnails_are_small_jpegs_cached_and_errors_name_only_the_key() {
    multi_thread().block_on(async {
        let mut harness = Harness::start(|_| {}).await;
        fill_bucket(harness.bucket.path(), 1);
        let reply = harness
            .get("/v1/thumbnail?key=photos/teal/0.jpg&size=48")
            .await;
        reply.expect(200);
        assert_eq!(reply.header("content-type"), Some("image/jpeg"));
        let thumb = image::load_from_memory(&reply.body).unwrap();
        assert_eq!((thumb.width(), thumb.height()), (48, 40));
        let etag = reply.header("etag").unwrap().to_string();
        let again = crate::common::Reply::read(
            harness
                .client
                .get(harness.url("/v1/thumbnail?key=photos/teal/0.jpg&size=48"))
                .header("if-none-match", &etag)
                .send()
                .await,
        )
        .await;
        again.expect(304);

        let missing = harness.get("/v1/thumbnail?key=photos/none.jpg").await;
        missing.expect(404);
        insta::assert_json_snapshot!("console_thumbnail_404", missing.json());
        let bucket_path = harness.bucket.path().display().to_string();
        assert!(!missing.text().contains(&bucket_path), "{}", missing.text());
        let broken = harness.get("/v1/thumbnail?key=photos/broken.jpg").await;
        broken.expect(422);
        assert_eq!(broken.json()["reason"], "corrupt");
        for path in [
            "/v1/thumbnail?key=photos/teal/0.jpg&size=4",
            "/v1/thumbnail?key=../outside.jpg",
            "/v1/thumbnail?key=photos/teal/0.jpg&model=animals",
            "/v1/thumbnail",
        ] {
            let reply = harness.get(path).await;
            reply.expect(400);
            assert_eq!(reply.json()["error_type"], "bad_request", "{path}");
        }
        harness.stop().await;
    });
}

/// One record as `bestiary classify` writes it.
fn record(
    bucket: &Path,
    key: &str,
    label: Option<&str>,
    score: f32,
    error: Option<&str>,
) -> String {
    json!({
        "key": key,
        "url": format!("{}/photos/{key}", bucket.display()),
        "etag": null,
        "size": 10,
        "label": label,
        "score": label.map(|_| score),
        "top_k": label.map(|l| vec![json!({"label": l, "score": score})]).unwrap_or_default(),
        "model": "animals",
        "model_version": "v1",
        "width": 96,
        "height": 80,
        "error": error.map(|code| json!({"code": code, "message": "bad"})),
        "classified_at": "2026-12-02T00:00:00Z",
    })
    .to_string()
}

#[test]
fn a_classify_runs_results_open_as_a_gallery_with_counts() {
    multi_thread().block_on(async {
        let mut harness = Harness::start(|_| {}).await;
        let bucket = harness.bucket.path().to_path_buf();
        let part = |records: &[String]| records.join("\n") + "\n";
        write(
            &bucket,
            "results/run/shard-0/parts/000001.jsonl",
            part(&[
                record(&bucket, "teal/0.jpg", Some("teal"), 0.9, None),
                record(&bucket, "amber/0.jpg", Some("amber"), 0.4, None),
            ])
            .as_bytes(),
        );
        write(
            &bucket,
            "results/run/shard-0/parts/000002.jsonl",
            part(&[
                record(&bucket, "teal/1.jpg", Some("teal"), 0.8, None),
                record(&bucket, "broken.jpg", None, 0.0, Some("corrupt")),
            ])
            .as_bytes(),
        );
        write(&bucket, "results/run/shard-0/_SUCCESS.json", b"{}");
        let page = harness
            .get("/v1/bucket/results?prefix=results/run&limit=3")
            .await
            .expect(200)
            .json();
        insta::assert_json_snapshot!("console_results_page", page, {
            ".items[].url" => "[url]",
        });
        assert_eq!(page["total"], 4);
        assert_eq!(page["parts"], 2);
        assert_eq!(
            page["counts"],
            json!({"amber": 1, "error:corrupt": 1, "teal": 2})
        );
        assert_eq!(page["items"][0]["bucket_key"], "photos/teal/0.jpg");
        assert_eq!(page["next_offset"], 3);
        let teal = harness
            .get("/v1/bucket/results?prefix=results/run&label=teal")
            .await
            .expect(200)
            .json();
        assert_eq!(teal["matching"], 2);
        let doubtful = harness
            .get("/v1/bucket/results?prefix=results/run/shard-0/parts/000001.jsonl&max_score=0.5")
            .await
            .expect(200)
            .json();
        assert_eq!(doubtful["items"][0]["key"], "amber/0.jpg");
        assert_eq!(doubtful["matching"], 1);

        write(&bucket, "results/bad.jsonl", b"{\"not\": \"a result\"}\n");
        let bad = harness
            .get("/v1/bucket/results?prefix=results/bad.jsonl")
            .await;
        bad.expect(400);
        assert!(
            bad.json()["error"]
                .as_str()
                .unwrap()
                .starts_with("results/bad.jsonl line 1")
        );
        harness
            .get("/v1/bucket/results?prefix=nothing")
            .await
            .expect(404);
        harness.get("/v1/bucket/results").await.expect(400);
        harness.stop().await;
    });
}

#[test]
fn versions_show_their_evaluation_and_can_be_swapped_to() {
    multi_thread().block_on(async {
        let mut harness = Harness::start(|_| {}).await;
        let first = harness.version.clone();
        // A second version that knows its dataset and carries an evaluation and a history.
        let dataset = tempfile::tempdir().unwrap();
        write(dataset.path(), "teal/a.jpg", &photo_bytes(1, 7, ImageFormat::Jpeg));
        let mut metadata = parts().metadata.clone();
        metadata.dataset = Some(DatasetInfo {
            url: dataset.path().display().to_string(),
            fingerprint: "f".into(),
            train: 1,
            validation: 1,
        });
        let second = harness
            .models
            .commit_parts(&Parts {
                metadata,
                onnx: parts().onnx.clone(),
                weights: parts().weights.clone(),
            })
            .await;
        let folder = harness.models.root.path().join(MODEL).join(&second);
        let evaluation = json!({
            "images": 1, "top1": 1.0, "confusion": [[0, 0, 0], [0, 1, 0], [0, 0, 0]],
            "predictions": [{"id": "teal/a.jpg", "true_label": "teal", "predicted_label": "teal", "score": 0.9}],
        });
        std::fs::write(folder.join("eval.json"), evaluation.to_string()).unwrap();
        std::fs::write(
            folder.join("metrics.jsonl"),
            "{\"epoch\":1,\"train_loss\":1.0}\n{\"epoch\":2,\"train_loss\":0.5}\n",
        )
        .unwrap();
        std::fs::write(folder.join("report.html"), "<html><script>x()</script></html>").unwrap();
        harness.post("/admin/reload", "application/json", "").await.expect(200);

        let list = harness.get("/v1/models/animals/versions").await.expect(200).json();
        assert_eq!(list["serving"], second.as_str());
        assert_eq!(list["latest"], second.as_str());
        assert_eq!(list["follows_latest"], true);
        let versions: Vec<&str> = list["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].as_str().unwrap())
            .collect();
        assert_eq!(versions, [second.as_str(), first.as_str()]);

        let detail = harness
            .get(&format!("/v1/models/animals/versions/{second}"))
            .await
            .expect(200)
            .json();
        assert_eq!(detail["history"].as_array().unwrap().len(), 2);
        assert_eq!(detail["evaluation"]["confusion"][1][1], 1);
        assert_eq!(detail["report"], true);
        let old = harness
            .get(&format!("/v1/models/animals/versions/{first}"))
            .await
            .expect(200)
            .json();
        assert_eq!(old["evaluation"], Value::Null);
        assert_eq!(old["report"], false);
        let report = harness
            .get(&format!("/v1/models/animals/versions/{second}/report"))
            .await;
        report.expect(200);
        assert!(report.header("content-security-policy").unwrap().starts_with("sandbox"));

        // The evaluation's photos come from the version's dataset, nowhere else.
        let thumb = harness
            .get(&format!(
                "/v1/thumbnail?key=teal/a.jpg&model=animals&version={second}&size=32"
            ))
            .await;
        thumb.expect(200);
        harness
            .get(&format!(
                "/v1/thumbnail?key=teal/a.jpg&model=animals&version={first}"
            ))
            .await
            .expect(404);

        // Swap to the first version: pinned, so a reload does not undo it; `latest` does.
        let swap = harness
            .post_json("/admin/models/animals/serve", &json!({"version": first}))
            .await
            .expect(200)
            .json();
        assert_eq!(swap, json!({"previous": second, "current": first, "swapped": true}));
        harness.post("/admin/reload", "application/json", "").await.expect(200);
        let models = harness.get("/v1/models").await.expect(200).json();
        assert_eq!(models["models"][0]["version"], first.as_str());
        let list = harness.get("/v1/models/animals/versions").await.expect(200).json();
        assert_eq!(list["pinned"], true);
        let back = harness
            .post_json("/admin/models/animals/serve", &json!({"version": "latest"}))
            .await
            .expect(200)
            .json();
        assert_eq!(back["current"], second.as_str());
        let list = harness.get("/v1/models/animals/versions").await.expect(200).json();
        assert_eq!(list["pinned"], false);

        for (body, status) in [
            (json!({"version": "20990101-000000-0000"}), 404),
            (json!({"version": "../x"}), 400),
            (json!({"versions": "x"}), 400),
        ] {
            let reply = harness.post_json("/admin/models/animals/serve", &body).await;
            reply.expect(status);
        }
        harness
            .post_json("/admin/models/other/serve", &json!({"version": first}))
            .await
            .expect(404);
        harness.get("/v1/models/animals/versions/nope").await.expect(404);
        harness.stop().await;
    });
}

#[test]
fn usage_reports_the_last_minute() {
    multi_thread().block_on(async {
        let mut harness = Harness::start(|_| {}).await;
        let before = harness.get("/v1/usage").await.expect(200).json();
        assert_eq!(before["recent"]["requests"], 0);
        assert_eq!(before["recent"]["latency_ms"], Value::Null);
        for seed in 0..4 {
            harness
                .post(
                    "/v1/classify",
                    "image/jpeg",
                    photo_bytes(0, seed, ImageFormat::Jpeg),
                )
                .await
                .expect(200);
        }
        let after = harness.get("/v1/usage").await.expect(200).json();
        let recent = &after["recent"];
        assert_eq!(recent["requests"], 4);
        assert_eq!(recent["queue_depth"], 0);
        assert!(recent["images_per_second"].as_f64().unwrap() > 0.0);
        let latency = &recent["latency_ms"];
        let (p50, p99) = (
            latency["p50"].as_f64().unwrap(),
            latency["p99"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p99, "{latency}");
        harness.stop().await;
    });
}

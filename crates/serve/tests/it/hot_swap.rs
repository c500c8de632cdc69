//! Hot model swap under load: a new version committed while clients keep classifying is picked
//! up by polling (and by `POST /admin/reload`), and no request fails or goes back in time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::{CLASSES, Harness, photo_bytes};
use bestiary_networks::ArchitectureConfig;
use image::ImageFormat;

const CLIENTS: usize = 6;

#[test]
fn polling_swaps_in_a_new_version_without_failing_a_request() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut harness = Harness::start(|config| {
            config.model_poll_interval = Some(Duration::from_millis(100));
            config.max_batch_delay = Duration::from_millis(25);
        })
        .await;
        let old = harness.version.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let (http, url, stop) = (
                    harness.client.clone(),
                    harness.url("/v1/classify"),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    // Each client's answers, in the order it got them: (status, version, label).
                    let mut answers = Vec::new();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let class = (client + i as usize) % CLASSES.len();
                        let body = photo_bytes(class, 1000 + i, ImageFormat::Jpeg);
                        let reply = crate::common::Reply::read(
                            http.post(&url)
                                .header("content-type", "image/jpeg")
                                .body(body)
                                .send()
                                .await,
                        )
                        .await;
                        let json = (reply.status == 200).then(|| reply.json());
                        answers.push((
                            reply.status,
                            json.as_ref().map(|j| {
                                j["predictions"][0]["version"].as_str().unwrap().to_string()
                            }),
                            json.map(|j| j["predictions"][0]["label"] == CLASSES[class]),
                        ));
                        i += 1;
                    }
                    answers
                })
            })
            .collect();

        // The new version takes a different input size, so that an image prepared for one
        // version and run by the other would fail: every batch must hold one version only.
        let smaller = tokio::task::spawn_blocking(|| {
            crate::common::model_parts::train_parts(
                ArchitectureConfig::SeedCnn { width: 8, depth: 3 },
                40,
                25,
            )
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        let new = harness.models.commit_parts(&smaller.await.unwrap()).await;
        assert_ne!(new, old);
        // Wait until the new version answers, then keep the load on a little longer.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let reply = harness.get("/v1/models").await;
            if reply.json()["models"][0]["version"] == new.as_str() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the new version was never swapped in"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        stop.store(true, Ordering::Relaxed);

        let mut total = 0;
        let mut saw = (false, false);
        for client in clients {
            let answers = client.await.unwrap();
            total += answers.len();
            let mut swapped = false;
            for (status, version, correct) in answers {
                assert_eq!(status, 200, "a request failed during the swap");
                assert_eq!(correct, Some(true));
                let version = version.unwrap();
                if version == new {
                    swapped = true;
                    saw.1 = true;
                } else {
                    assert_eq!(version, old);
                    assert!(
                        !swapped,
                        "an answer from the old version came after one from the new"
                    );
                    saw.0 = true;
                }
            }
        }
        assert!(saw.0 && saw.1, "the load spanned both versions");
        assert!(total > 2 * CLIENTS, "only {total} requests ran");

        let served = harness.server().state().models.current().unwrap();
        assert_eq!(served.model.metadata.input.image_size, 40);
        let metrics = harness.get("/metrics").await.text();
        assert!(metrics.contains(&format!("version=\"{new}\"")), "{metrics}");
        assert!(metrics.contains("bestiary_model_reloads_total{outcome=\"swapped\"}"));
        harness.stop().await;
    });
}

#[test]
fn admin_reload_swaps_on_demand_and_needs_the_key() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut harness = Harness::start(|config| config.api_keys = vec!["admin".into()]).await;
        let reload = |key: Option<&'static str>| {
            let mut request = harness.client.post(harness.url("/admin/reload"));
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            async move { crate::common::Reply::read(request.send().await).await }
        };
        reload(None).await.expect(401);
        let unchanged = reload(Some("admin")).await;
        unchanged.expect(200);
        assert_eq!(
            unchanged.json(),
            serde_json::json!({"previous": harness.version, "current": harness.version, "swapped": false})
        );
        let new = harness.models.commit().await;
        let swapped = reload(Some("admin")).await;
        swapped.expect(200);
        assert_eq!(
            swapped.json(),
            serde_json::json!({"previous": harness.version, "current": new, "swapped": true})
        );
        assert_eq!(
            harness.server().state().models.current().unwrap().version(),
            new
        );
        harness.stop().await;
    });
}

#[test]
fn a_pinned_version_is_never_swapped() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut harness = Harness::start_without_model(|_| {}).await;
        let pinned = harness.models.version_url(&harness.version);
        harness.server().load_model(Some(&pinned)).await.unwrap();
        harness.models.commit().await;
        let outcome = harness.server().reload().await.unwrap();
        assert!(!outcome.swapped);
        assert_eq!(outcome.current, harness.version);
        harness.stop().await;
    });
}

#[test]
fn a_corrupt_new_version_is_refused_and_the_old_one_keeps_serving() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut harness = Harness::start(|config| {
            config.model_poll_interval = Some(Duration::from_millis(100));
        })
        .await;
        let old = harness.version.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let client = {
            let (http, url, stop) = (
                harness.client.clone(),
                harness.url("/v1/classify"),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let reply = crate::common::Reply::read(
                        http.post(&url)
                            .header("content-type", "image/jpeg")
                            .body(photo_bytes(1, 3000 + i, ImageFormat::Jpeg))
                            .send()
                            .await,
                    )
                    .await;
                    answers.push((reply.status, reply.text()));
                    i += 1;
                }
                answers
            })
        };
        // A new version whose graph is garbage and one whose model.json is hostile (a
        // billion-pixel input), each made `latest` while the client keeps classifying.
        for corrupt in ["model.onnx", "model.json"] {
            let version = harness.models.commit().await;
            let folder = harness.models.root.path().join("animals").join(&version);
            let garbage = if corrupt == "model.onnx" {
                b"\x08\x07garbage, not a protobuf of a graph".to_vec()
            } else {
                let text = std::fs::read(folder.join("model.json")).unwrap();
                let mut json: serde_json::Value = serde_json::from_slice(&text).unwrap();
                json["input"]["image_size"] = serde_json::json!(4_000_000_000u32);
                serde_json::to_vec(&json).unwrap()
            };
            std::fs::write(folder.join(corrupt), garbage).unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            let failure = loop {
                let models = harness.get("/v1/models").await;
                models.expect(200);
                let json = models.json();
                assert_eq!(json["models"][0]["version"], old.as_str());
                if json["reload_failure"]["version"] == version.as_str() {
                    break json["reload_failure"].clone();
                }
                assert!(
                    Instant::now() < deadline,
                    "no reload failure reported: {json}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let reason = failure["reason"].as_str().unwrap();
            assert!(!reason.contains(harness.models.root.path().to_str().unwrap()));
            // Asked for directly, the reload answers 500 without the server's paths.
            let reply = harness
                .client
                .post(harness.url("/admin/reload"))
                .send()
                .await
                .unwrap();
            assert_eq!(reply.status(), 500);
            let body = reply.text().await.unwrap();
            assert!(body.contains(&version), "{body}");
            assert!(
                !body.contains(harness.models.root.path().to_str().unwrap()),
                "{body}"
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        let answers = client.await.unwrap();
        assert!(answers.len() > 5, "{} requests", answers.len());
        for (status, text) in &answers {
            assert_eq!(*status, 200, "{text}");
            assert!(text.contains(&old), "{text}");
        }
        // A good version afterwards is swapped in and the failure is cleared.
        let good = harness.models.commit().await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let json = harness.get("/v1/models").await.json();
            if json["models"][0]["version"] == good.as_str() {
                assert!(json.get("reload_failure").is_none(), "{json}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the good version was not swapped in"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        harness.stop().await;
    });
}

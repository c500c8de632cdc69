//! The server with no `--model`: the built-in animal classifier answers real photos of
//! ../shared/data/animals10 with the right animal through all three APIs (skipped, with the
//! reason printed, where that data is absent).

use std::path::PathBuf;

use base64::Engine as _;
use bestiary_engine::{EngineKind, EngineOptions};
use bestiary_serve::{EngineSettings, Server};
use bestiary_testkit::photos::shared_data;
use serde_json::json;

/// The first photo (by name) of every class folder.
fn one_photo_per_class(images: &std::path::Path) -> Vec<(String, PathBuf)> {
    let mut classes: Vec<_> = std::fs::read_dir(images)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_dir())
        .collect();
    classes.sort();
    classes
        .into_iter()
        .map(|folder| {
            let mut photos: Vec<_> = std::fs::read_dir(&folder)
                .unwrap()
                .map(|entry| entry.unwrap().path())
                .collect();
            photos.sort();
            let class = folder.file_name().unwrap().to_string_lossy().into_owned();
            (class, photos.remove(0))
        })
        .collect()
}

#[test]
fn the_built_in_model_names_the_animal_in_every_api() {
    let Some(images) = shared_data("animals10/images") else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let bucket = tempfile::tempdir().unwrap();
        // onnxruntime when it is installed, else tract; nothing is downloaded.
        let engine = EngineSettings {
            kind: EngineKind::Auto,
            options: EngineOptions {
                threads: None,
                instances: 1,
                allow_download: false,
                precision: Default::default(),
            },
        };
        let server = Server::start(crate::common::config(bucket.path()), engine)
            .await
            .unwrap();
        let model = server.load_model(None).await.unwrap();
        assert_eq!(model.model.metadata.classes.len(), 10);
        let harness_base = format!("http://{}", server.local_addr());
        let client = crate::common::client();
        let post = |path: &str, content_type: &str, body: Vec<u8>| {
            let request = client
                .post(format!("{harness_base}{path}"))
                .header("content-type", content_type)
                .body(body);
            async move { crate::common::Reply::read(request.send().await).await }
        };

        let models = crate::common::Reply::read(
            client.get(format!("{harness_base}/v1/models")).send().await,
        )
        .await;
        models.expect(200);
        assert_eq!(models.json()["models"][0]["source"], "builtin:animals");

        let photos = one_photo_per_class(&images);
        let mut right = 0;
        for (class, path) in &photos {
            let bytes = std::fs::read(path).unwrap();
            let reply = post("/v1/classify", "image/jpeg", bytes.clone()).await;
            reply.expect(200);
            let label = reply.json()["predictions"][0]["label"]
                .as_str()
                .unwrap()
                .to_string();
            if &label == class {
                right += 1;
            }
            // The other two APIs give the same answer for the same photo.
            let invocation = post("/invocations", "application/x-image", bytes.clone()).await;
            invocation.expect(200);
            assert_eq!(invocation.json()["predicted_label"], label.as_str());
            let request = json!({"inputs": [{
                "name": "image", "datatype": "BYTES", "shape": [1],
                "data": [base64::engine::general_purpose::STANDARD.encode(&bytes)],
            }]});
            let infer = post(
                &format!("/v2/models/{}/infer", model.name()),
                "application/json",
                request.to_string().into_bytes(),
            )
            .await;
            infer.expect(200);
            assert_eq!(infer.json()["outputs"][1]["data"][0], label.as_str());
        }
        println!("built-in model: {right} of {} photos right", photos.len());
        assert!(
            right >= photos.len() - 1,
            "only {right} of {} right",
            photos.len()
        );
        server.shutdown().await.unwrap();
    });
}

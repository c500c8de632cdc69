//! `bestiary explain` as a process: a tiny model trained by the CLI, explained as JSON, as
//! text with a PNG overlay, for a requested class, and refused for a class it does not have.

use std::process::Output;

use bestiary_testkit::photos::write_class_folders;

use crate::support::{bestiary_with, stdout, train_tiny};

fn bestiary(args: &[&str]) -> Output {
    bestiary_with(args, &[("BESTIARY_LOG", "warn".into())])
}

#[test]
fn explain_shows_where_a_trained_model_looked() {
    let data = tempfile::tempdir().unwrap();
    let photos = write_class_folders(data.path(), &["amber", "blue"], 8, (48, 40));
    let out = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let models = out.path().to_str().unwrap();
    let cache_dir = cache.path().to_str().unwrap();
    stdout(&train_tiny(
        data.path().to_str().unwrap(),
        models,
        cache_dir,
        "tiny",
        "1",
        &[],
    ));
    let model = format!("{models}/tiny");
    let photo = photos[0].to_str().unwrap();

    let text = stdout(&bestiary(&[
        "explain", photo, "--model", &model, "--engine", "tract", "--json",
    ]));
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    // 32 px pooled twice: an 8×8 grid.
    assert_eq!(
        (
            answer["grid_height"].as_u64(),
            answer["grid_width"].as_u64()
        ),
        (Some(8), Some(8))
    );
    assert_eq!(answer["grid"].as_array().unwrap().len(), 64);
    assert_eq!(
        (answer["width"].as_u64(), answer["height"].as_u64()),
        (Some(48), Some(40))
    );
    assert!(answer["overlay"].is_null());
    let predicted = answer["label"].as_str().unwrap().to_owned();
    assert!(["amber", "blue"].contains(&predicted.as_str()), "{text}");
    assert_eq!(answer["predicted_label"], predicted.as_str());

    let other = if predicted == "amber" {
        "blue"
    } else {
        "amber"
    };
    let overlay = out.path().join("overlay.png");
    let text = stdout(&bestiary(&[
        "explain",
        photo,
        "--model",
        &model,
        "--label",
        other,
        "--out",
        overlay.to_str().unwrap(),
    ]));
    assert!(
        text.contains(&format!("{other} ")) && text.contains("written to"),
        "{text}"
    );
    // A PNG of the photo's size: the signature, then the IHDR chunk's width and height.
    let png = std::fs::read(&overlay).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&png[12..16], b"IHDR");
    let side = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    assert_eq!((side(16), side(20)), (48, 40));

    let failed = bestiary(&["explain", photo, "--model", &model, "--label", "unicorn"]);
    assert!(!failed.status.success());
    let message = String::from_utf8_lossy(&failed.stderr);
    assert!(
        message.contains("no class \"unicorn\"; its classes are amber, blue"),
        "{message}"
    );
}

//! Dataset manifests (SageMaker Ground Truth JSON Lines) and `key,label` CSV files: any text
//! parses into pairs or a clean error naming the line.
#![no_main]

use bestiary_dataset::source::{parse_csv, parse_manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    for label in [None, Some("class"), Some("")] {
        if let Ok(pairs) = parse_manifest("s3://b/manifest.jsonl", text, label) {
            assert!(pairs.len() <= text.lines().count());
        }
    }
    if let Ok(pairs) = parse_csv("s3://b/labels.csv", text) {
        assert!(pairs.iter().all(|(key, _)| !key.is_empty()));
    }
});

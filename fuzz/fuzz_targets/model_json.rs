//! `model.json`, which a hostile or corrupt model folder supplies: any bytes parse into
//! metadata whose sizes are within bounds, or give a clean error.
#![no_main]

use bestiary_model::ModelMetadata;
use bestiary_model::metadata::{MAX_CLASSES, MAX_IMAGE_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(metadata) = ModelMetadata::from_json(bytes) {
        assert!((1..=MAX_IMAGE_SIZE).contains(&metadata.input.image_size));
        assert!(!metadata.classes.is_empty() && metadata.classes.len() <= MAX_CLASSES);
        assert!(metadata.input.crop_fraction > 0.0 && metadata.input.crop_fraction <= 1.0);
        // What is parsed can be written back and read again.
        assert!(ModelMetadata::from_json(&metadata.to_json()).is_ok());
    }
});

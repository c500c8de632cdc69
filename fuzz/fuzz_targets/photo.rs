//! Photo decoding and the evaluation transform, as on the request path: any bytes either
//! decode within the pixel and allocation limits or give a clean error, never a panic or an
//! allocation beyond the limits.
#![no_main]

use bestiary_dataset::decode::{DecodeLimits, decode, dimensions};
use bestiary_dataset::transform::{Normalization, center_crop_into};
use libfuzzer_sys::fuzz_target;

const SIZE: u32 = 32;

fuzz_target!(|bytes: &[u8]| {
    // Small limits keep each run fast; the checks are the same as serve's 50-megapixel ones.
    let limits = DecodeLimits {
        max_pixels: 4_000_000,
        max_alloc_bytes: 64 << 20,
    };
    let _ = dimensions(bytes);
    if let Ok(decoded) = decode(bytes, &limits) {
        assert_eq!(decoded.image.dimensions(), (decoded.width, decoded.height));
        assert!(u64::from(decoded.width) * u64::from(decoded.height) <= limits.max_pixels);
        let mut tensor = vec![0f32; (3 * SIZE * SIZE) as usize];
        center_crop_into(&decoded.image, SIZE, 0.875, &Normalization::imagenet(), &mut tensor);
        assert!(tensor.iter().all(|v| v.is_finite()));
    }
});

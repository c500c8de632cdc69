//! Generated photos for tests: small, learnable class patterns in every supported format, plus
//! the kinds of broken files real buckets contain.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use bestiary_storage::Store;
use image::{ImageFormat, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A synthetic photo of class `class`: a class-specific colour and stripe direction under noise,
/// different for every `seed`, so that a small CNN can learn the classes but not trivially.
pub fn photo(class: usize, seed: u64, width: u32, height: u32) -> RgbImage {
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9).wrapping_add(class as u64));
    let hue = (class as f32 * 137.5) % 360.0;
    let (r, g, b) = hsv_to_rgb(hue, 0.75, 0.85);
    let period = 6.0 + (class % 4) as f32 * 3.0;
    let angle = (class as f32) * std::f32::consts::PI / 5.0 + rng.random_range(-0.2..0.2);
    let (dx, dy) = (angle.cos(), angle.sin());
    let phase: f32 = rng.random_range(0.0..period);
    RgbImage::from_fn(width, height, |x, y| {
        let t = ((x as f32 * dx + y as f32 * dy + phase) / period).fract();
        let stripe = if t < 0.5 { 1.0 } else { 0.45 };
        let mut noise = || rng.random_range(-25.0f32..25.0);
        let channel = |c: f32, n: f32| (c * 255.0 * stripe + n).clamp(0.0, 255.0) as u8;
        Rgb([
            channel(r, noise()),
            channel(g, noise()),
            channel(b, noise()),
        ])
    })
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let c = v * s;
    let x = c * (1.0 - ((h / 60.0) % 2.0 - 1.0).abs());
    let m = v - c;
    let (r, g, b) = match (h / 60.0) as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    (r + m, g + m, b + m)
}

/// Encodes `image` in `format` (JPEG at quality 90).
pub fn encode(image: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    match format {
        ImageFormat::Jpeg => {
            let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90);
            image.write_with_encoder(encoder).expect("encode jpeg");
        }
        other => image.write_to(&mut out, other).expect("encode image"),
    }
    out.into_inner()
}

/// A JPEG cut in half: the header is fine, the scan data ends early.
pub fn truncated_jpeg() -> Vec<u8> {
    let full = encode(&photo(0, 1, 64, 48), ImageFormat::Jpeg);
    full[..full.len() / 2].to_vec()
}

/// Writes `per_class` JPEG photos per class as `<dir>/<class>/<class>_<i>.jpg`; returns the paths.
pub fn write_class_folders(
    dir: &Path,
    classes: &[&str],
    per_class: usize,
    size: (u32, u32),
) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for (class_index, class) in classes.iter().enumerate() {
        let folder = dir.join(class);
        std::fs::create_dir_all(&folder).expect("create class folder");
        for i in 0..per_class {
            let path = folder.join(format!("{class}_{i:03}.jpg"));
            let bytes = encode(
                &photo(class_index, i as u64, size.0, size.1),
                ImageFormat::Jpeg,
            );
            std::fs::write(&path, bytes).expect("write photo");
            paths.push(path);
        }
    }
    paths
}

/// Uploads every file below `dir` into `store`, keeping relative paths as keys.
pub async fn upload_dir(dir: &Path, store: &Store) -> usize {
    let mut count = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let key = path
                .strip_prefix(dir)
                .expect("inside dir")
                .to_string_lossy()
                .replace('\\', "/");
            store
                .put(&key, std::fs::read(&path).expect("read file"))
                .await
                .expect("upload");
            count += 1;
        }
    }
    count
}

/// A folder of the read-only shared data (`../shared/data/<rel>` beside the project), or `None`
/// with the reason printed (see [`crate::shared::shared_path`]).
pub fn shared_data(rel: &str) -> Option<PathBuf> {
    crate::shared::shared_path(&format!("data/{rel}"))
}

//! Thumbnails for the web console: photos decoded with the project's decoder (limits, EXIF
//! orientation), shrunk, JPEG-encoded, and kept in a cache bounded in bytes and entries.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use bestiary_dataset::decode::{DecodeError, DecodeLimits, decode};
use bestiary_dataset::transform::resize_exact;
use bytes::Bytes;
use image::codecs::jpeg::JpegEncoder;
use lru::LruCache;

/// Smallest and largest longer side a client may ask for: 1,024 px is the "open it large"
/// view; anything bigger is the photo itself, which the console never needs.
pub const SIZES: std::ops::RangeInclusive<u32> = 16..=1024;
pub const DEFAULT_SIZE: u32 = 256;
/// JPEG quality of thumbnails: artefacts are invisible at thumbnail size, bytes are not.
const QUALITY: u8 = 82;
const MAX_ENTRIES: usize = 4096;
const MAX_BYTES: usize = 64 * 1024 * 1024;

/// What a thumbnail is of: the object's URL, the version of its content, and the size.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ThumbnailKey {
    pub url: String,
    /// ETag (or size and time) of the object: a replaced photo gets a new thumbnail.
    pub version: String,
    pub size: u32,
}

/// Thumbnails made recently, least recently used dropped first.
pub struct Thumbnails {
    cache: Mutex<Cached>,
}

struct Cached {
    entries: LruCache<ThumbnailKey, Bytes>,
    bytes: usize,
}

impl Default for Thumbnails {
    fn default() -> Self {
        Self {
            cache: Mutex::new(Cached {
                entries: LruCache::new(NonZeroUsize::new(MAX_ENTRIES).expect("non-zero")),
                bytes: 0,
            }),
        }
    }
}

impl Thumbnails {
    pub fn get(&self, key: &ThumbnailKey) -> Option<Bytes> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.entries.get(key).cloned()
    }

    pub fn insert(&self, key: ThumbnailKey, jpeg: Bytes) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.bytes += jpeg.len();
        if let Some((_, old)) = cache.entries.push(key, jpeg) {
            cache.bytes -= old.len();
        }
        while cache.bytes > MAX_BYTES {
            match cache.entries.pop_lru() {
                Some((_, old)) => cache.bytes -= old.len(),
                None => break,
            }
        }
    }

    /// Bytes held, for tests and metrics.
    pub fn bytes(&self) -> usize {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }
}

/// A JPEG of `photo` whose longer side is at most `size` (never enlarged), upright.
pub fn render(photo: &[u8], size: u32, limits: &DecodeLimits) -> Result<Vec<u8>, DecodeError> {
    let decoded = decode(photo, limits)?;
    let (width, height) = (decoded.width, decoded.height);
    let longer = width.max(height);
    let image = if longer > size {
        let scale = f64::from(size) / f64::from(longer);
        let fit = |side: u32| ((f64::from(side) * scale).round() as u32).max(1);
        resize_exact(&decoded.image, fit(width), fit(height))
    } else {
        decoded.image
    };
    let mut jpeg = Vec::with_capacity(image.as_raw().len() / 8);
    JpegEncoder::new_with_quality(&mut jpeg, QUALITY)
        .encode_image(&image)
        .map_err(|e| DecodeError::Corrupt(format!("cannot encode the thumbnail: {e}")))?;
    Ok(jpeg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn photo(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        });
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(image)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        png
    }

    #[test]
    fn thumbnails_keep_the_aspect_ratio_and_never_enlarge() {
        let limits = DecodeLimits::default();
        let jpeg = render(&photo(400, 100), 64, &limits).unwrap();
        let thumb = image::load_from_memory(&jpeg).unwrap();
        assert_eq!((thumb.width(), thumb.height()), (64, 16));
        let jpeg = render(&photo(30, 20), 256, &limits).unwrap();
        let thumb = image::load_from_memory(&jpeg).unwrap();
        assert_eq!((thumb.width(), thumb.height()), (30, 20));
        assert_eq!(render(b"", 64, &limits).unwrap_err().code(), "empty");
        assert_eq!(
            render(b"not a photo at all", 64, &limits)
                .unwrap_err()
                .code(),
            "not-an-image"
        );
    }

    #[test]
    fn the_cache_stays_within_its_byte_budget() {
        let thumbnails = Thumbnails::default();
        let key = |i: usize| ThumbnailKey {
            url: format!("photo-{i}"),
            version: "1".into(),
            size: 64,
        };
        let chunk = Bytes::from(vec![0u8; 1024 * 1024]);
        for i in 0..100 {
            thumbnails.insert(key(i), chunk.clone());
        }
        assert!(thumbnails.bytes() <= MAX_BYTES);
        assert!(thumbnails.get(&key(99)).is_some());
        assert!(thumbnails.get(&key(0)).is_none());
        // Replacing an entry does not count it twice.
        thumbnails.insert(key(99), Bytes::from_static(b"small"));
        assert_eq!(thumbnails.bytes(), 63 * 1024 * 1024 + 5);
    }
}

//! The local cache of decoded, downsized photos, keyed by object identity and content tag, so that
//! epochs after the first neither download nor decode again.

use std::io::Write;
use std::path::{Path, PathBuf};

use image::RgbImage;

use crate::decode::DecodeError;

const MAGIC: &[u8; 6] = b"BSTC1\n";

/// What the cache remembers about one photo: its downsized pixels, or why it could not be used.
#[derive(Debug, Clone, PartialEq)]
pub enum CachedImage {
    Image(RgbImage),
    Bad { code: String, reason: String },
}

/// A folder of cached photos. Entries are written to a temporary file and renamed, so a crash or
/// a concurrent run never leaves a half-written entry behind.
#[derive(Debug, Clone)]
pub struct ImageCache {
    dir: PathBuf,
}

impl ImageCache {
    pub fn new(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// `$BESTIARY_CACHE_DIR`, else the user's cache folder, else a temporary folder.
    pub fn default_dir() -> PathBuf {
        std::env::var_os("BESTIARY_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| dirs::cache_dir().map(|d| d.join("bestiary")))
            .unwrap_or_else(|| std::env::temp_dir().join("bestiary-cache"))
            .join("images")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cache key of a photo: its URL, content tag and size, and the side it is cached at.
    /// Photos without an ETag are not cached, since a change could not be noticed.
    pub fn key(url: &str, etag: Option<&str>, size: Option<u64>, side: u32) -> Option<String> {
        let etag = etag?;
        let text = format!("{url}\0{etag}\0{}\0{side}", size.unwrap_or(0));
        Some(format!(
            "{:032x}",
            xxhash_rust::xxh3::xxh3_128(text.as_bytes())
        ))
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(key)
    }

    /// The cached entry, or `None` when absent or unreadable (then it is simply rebuilt).
    pub fn get(&self, key: &str) -> Option<CachedImage> {
        let bytes = std::fs::read(self.path(key)).ok()?;
        let body = bytes.strip_prefix(MAGIC.as_slice())?;
        let (&kind, rest) = body.split_first()?;
        match kind {
            0 => {
                let width = u32::from_le_bytes(rest.get(0..4)?.try_into().ok()?);
                let height = u32::from_le_bytes(rest.get(4..8)?.try_into().ok()?);
                RgbImage::from_raw(width, height, rest.get(8..)?.to_vec()).map(CachedImage::Image)
            }
            1 => {
                let text = std::str::from_utf8(rest).ok()?;
                let (code, reason) = text.split_once('\n')?;
                Some(CachedImage::Bad {
                    code: code.into(),
                    reason: reason.into(),
                })
            }
            _ => None,
        }
    }

    /// Stores a decoded photo, or the reason it could not be decoded.
    pub fn put(&self, key: &str, entry: Result<&RgbImage, &DecodeError>) -> std::io::Result<()> {
        let path = self.path(key);
        let folder = path.parent().expect("cache entries live in a sub-folder");
        std::fs::create_dir_all(folder)?;
        let mut file = tempfile::NamedTempFile::new_in(folder)?;
        file.write_all(MAGIC)?;
        match entry {
            Ok(image) => {
                file.write_all(&[0])?;
                file.write_all(&image.width().to_le_bytes())?;
                file.write_all(&image.height().to_le_bytes())?;
                file.write_all(image.as_raw())?;
            }
            Err(error) => {
                file.write_all(&[1])?;
                file.write_all(format!("{}\n{error}", error.code()).as_bytes())?;
            }
        }
        file.persist(&path).map_err(|e| e.error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_images_and_failures() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ImageCache::new(dir.path()).unwrap();
        let key = ImageCache::key("s3://b/cat/1.jpg", Some("\"abc\""), Some(10), 160).unwrap();
        assert_eq!(cache.get(&key), None);
        let image = RgbImage::from_fn(3, 2, |x, y| image::Rgb([x as u8, y as u8, 7]));
        cache.put(&key, Ok(&image)).unwrap();
        assert_eq!(cache.get(&key), Some(CachedImage::Image(image)));

        let bad = ImageCache::key("s3://b/cat/2.jpg", Some("e"), Some(0), 160).unwrap();
        cache.put(&bad, Err(&DecodeError::Empty)).unwrap();
        assert!(matches!(cache.get(&bad), Some(CachedImage::Bad { code, .. }) if code == "empty"));
    }

    #[test]
    fn keys_change_with_content_tag_and_side() {
        let a = ImageCache::key("u", Some("1"), Some(5), 160);
        assert_ne!(a, ImageCache::key("u", Some("2"), Some(5), 160));
        assert_ne!(a, ImageCache::key("u", Some("1"), Some(6), 160));
        assert_ne!(a, ImageCache::key("u", Some("1"), Some(5), 128));
        assert_eq!(ImageCache::key("u", None, Some(5), 160), None);
    }
}

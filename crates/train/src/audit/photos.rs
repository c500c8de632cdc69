//! What the audit knows about each photo besides its features: a hash of its bytes (for exact
//! duplicates), its dimensions (for size outliers) and whether it could be read, cached in the
//! work folder beside the features; and the small JPEG thumbnails the HTML report embeds.

use std::collections::HashMap;

use base64::Engine as _;
use bestiary_dataset::decode::{DecodeLimits, decode, dimensions};
use bestiary_dataset::{Dataset, Sample};
use bestiary_storage::Store;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Name of the photo facts cache in the work folder.
pub const PHOTO_CACHE: &str = "photos.json";

/// A photo's identity for the caches: URL, ETag and size, hashed as transfer training keys its
/// feature cache (`transfer::feature_key`), so the two caches agree on what "the same photo"
/// is. Photos without an ETag have none and are read again every time.
pub fn photo_key(dataset: &Dataset, sample: &Sample) -> Option<u128> {
    let etag = sample.etag.as_deref()?;
    let text = format!(
        "{}\0{etag}\0{}",
        dataset.url_of(sample),
        sample.size.unwrap_or(0)
    );
    Some(xxhash_rust::xxh3::xxh3_128(text.as_bytes()))
}

/// What one read of a photo's bytes tells.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhotoFacts {
    /// xxh3-128 of the object's bytes, hex.
    pub content_hash: String,
    /// Displayed dimensions (after EXIF orientation); `None` when the header is unreadable.
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Why the photo cannot be used (`code`, `reason`), from its header or from the loader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bad: Option<(String, String)>,
}

/// The cache file: facts by photo key (hex).
pub type PhotoCache = HashMap<String, PhotoFacts>;

/// Reads the cache from `work`; a missing or unreadable cache is an empty one.
pub async fn read_photo_cache(work: &Store) -> Result<PhotoCache> {
    match work.get(PHOTO_CACHE).await {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or_default()),
        Err(e) if e.is_not_found() => Ok(PhotoCache::new()),
        Err(e) => Err(e.into()),
    }
}

pub async fn write_photo_cache(work: &Store, cache: &PhotoCache) -> Result<()> {
    let bytes = serde_json::to_vec(cache).expect("photo facts serialise");
    Ok(work.put(PHOTO_CACHE, bytes).await?)
}

/// The facts of every sample, reading (`concurrency` at a time) only the photos the cache
/// does not know; what is read is added to `cache`. Returns the facts and how many were read.
pub async fn photo_facts(
    dataset: &Dataset,
    samples: &[&Sample],
    cache: &mut PhotoCache,
    concurrency: usize,
) -> (Vec<PhotoFacts>, usize) {
    let keys: Vec<Option<String>> = samples
        .iter()
        .map(|s| photo_key(dataset, s).map(|k| format!("{k:032x}")))
        .collect();
    let missing: Vec<usize> = (0..samples.len())
        .filter(|&i| keys[i].as_ref().is_none_or(|k| !cache.contains_key(k)))
        .collect();
    let read: Vec<(usize, PhotoFacts)> = futures::stream::iter(missing.iter().copied())
        .map(|i| {
            let store = dataset.store_of(samples[i]).clone();
            let key = samples[i].key.clone();
            async move { (i, read_facts(&store, &key).await) }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut fresh: HashMap<usize, PhotoFacts> = read.into_iter().collect();
    for (&i, facts) in &fresh {
        if let Some(key) = &keys[i] {
            cache.insert(key.clone(), facts.clone());
        }
    }
    let facts = (0..samples.len())
        .map(|i| {
            fresh
                .remove(&i)
                .or_else(|| keys[i].as_ref().and_then(|k| cache.get(k).cloned()))
                .expect("every photo was read or cached")
        })
        .collect();
    (facts, missing.len())
}

async fn read_facts(store: &Store, key: &str) -> PhotoFacts {
    let bytes = match store.get(key).await {
        Ok(bytes) => bytes,
        Err(e) => {
            return PhotoFacts {
                content_hash: String::new(),
                width: None,
                height: None,
                bad: Some(("unreadable".into(), e.to_string())),
            };
        }
    };
    let content_hash = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes));
    match dimensions(&bytes) {
        Ok((width, height, _)) => PhotoFacts {
            content_hash,
            width: Some(width),
            height: Some(height),
            bad: None,
        },
        Err(e) => PhotoFacts {
            content_hash,
            width: None,
            height: None,
            bad: Some((e.code().to_string(), e.to_string())),
        },
    }
}

/// A thumbnail of the photo fitting `side` × `side`, as a base64 JPEG; `None` when it cannot
/// be read or decoded.
pub async fn thumbnail(dataset: &Dataset, sample: &Sample, side: u32) -> Option<String> {
    let bytes = dataset.store_of(sample).get(&sample.key).await.ok()?;
    tokio::task::spawn_blocking(move || {
        let decoded = decode(&bytes, &DecodeLimits::default()).ok()?;
        let (width, height) = fit(decoded.width, decoded.height, side);
        let small = image::imageops::thumbnail(&decoded.image, width, height);
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80)
            .encode_image(&small)
            .ok()?;
        Some(base64::engine::general_purpose::STANDARD.encode(jpeg))
    })
    .await
    .ok()
    .flatten()
}

/// `width × height` scaled to fit in `side` × `side`, keeping the aspect ratio.
fn fit(width: u32, height: u32, side: u32) -> (u32, u32) {
    let scale = (side as f64 / width.max(height).max(1) as f64).min(1.0);
    (
        ((width as f64 * scale).round() as u32).max(1),
        ((height as f64 * scale).round() as u32).max(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_keep_the_aspect_ratio_and_never_enlarge() {
        assert_eq!(fit(640, 320, 96), (96, 48));
        assert_eq!(fit(300, 600, 96), (48, 96));
        assert_eq!(fit(40, 30, 96), (40, 30));
    }
}

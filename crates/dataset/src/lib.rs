//! Labelled photos from any store: listing, splitting, decoding, augmentation, caching, batching.

pub mod decode;
pub mod transform;

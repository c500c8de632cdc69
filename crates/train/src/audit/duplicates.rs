//! Exact and near duplicates: photos with identical bytes, and photos whose backbone features
//! point the same way (cosine similarity at or above a threshold), grouped; a group with photos
//! on both sides of the train/validation split is leakage.
//!
//! Near duplicates are found by brute force, the normalised feature matrix times its transpose
//! in chunks of rows: n²/2 dot products of 1280 values, about 10 s for 20,000 photos on two
//! cores, so above [`MAX_NEAR_DUPLICATE_PHOTOS`] only exact duplicates are looked for.

use burn::prelude::*;

/// The cosine similarity from which two photos count as near duplicates. Measured on the 240
/// animals10 photos (`measure_the_audit_on_animals10` in the train crate's tests): the most
/// similar two distinct photos of one class reach 0.898 (99th percentile of each photo's
/// closest same-class neighbour 0.863); copies recompressed at JPEG quality 60 stay at 0.93 or
/// above (median 0.989); copies also shrunk to 75% (quality 75) have a median of 0.948 but go
/// down to 0.79, and halved copies (median 0.84) mostly look like distinct photos to the
/// backbone. 0.92 finds every recompressed copy and most mildly resized ones without pairing
/// any two distinct photos there.
pub const NEAR_DUPLICATE_SIMILARITY: f32 = 0.92;

/// Photos above which the pairwise search is skipped (it grows with the square).
pub const MAX_NEAR_DUPLICATE_PHOTOS: usize = 50_000;

/// Rows of the similarity matrix computed at once: 512 × n floats.
const CHUNK_ROWS: usize = 512;

/// Whether a group's photos share their bytes or only their look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DuplicateKind {
    Exact,
    Near,
}

/// Photos that are copies of one another, by index.
#[derive(Debug, Clone, PartialEq)]
pub struct DuplicateGroup {
    pub kind: DuplicateKind,
    /// Sorted.
    pub photos: Vec<usize>,
    /// For each photo (same order), its highest similarity to another member (1 for identical
    /// bytes).
    pub similarity: Vec<f32>,
}

/// Pairs `(i, j, cosine)` with `i < j` whose features (`rows` × `dims`, row-major) have a
/// cosine similarity of at least `threshold`.
pub fn similar_pairs(
    features: &[f32],
    dims: usize,
    threshold: f32,
    device: &Device,
) -> Vec<(usize, usize, f32)> {
    let rows = features.len() / dims.max(1);
    if rows < 2 {
        return Vec::new();
    }
    let mut normalised = features.to_vec();
    for row in normalised.chunks_exact_mut(dims) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= norm);
    }
    let matrix = Tensor::<2>::from_data(TensorData::new(normalised, [rows, dims]), device);
    let transposed = matrix.clone().transpose();
    let mut pairs = Vec::new();
    for start in (0..rows).step_by(CHUNK_ROWS) {
        let end = (start + CHUNK_ROWS).min(rows);
        let indices = Tensor::<1, Int>::from_data(
            TensorData::new(
                (start as i64..end as i64).collect::<Vec<_>>(),
                [end - start],
            ),
            device,
        );
        let block: Vec<f32> = matrix
            .clone()
            .select(0, indices)
            .matmul(transposed.clone())
            .into_data()
            .try_to_vec()
            .expect("similarities are f32");
        for (offset, similarities) in block.chunks_exact(rows).enumerate() {
            let i = start + offset;
            for (j, &similarity) in similarities.iter().enumerate().skip(i + 1) {
                if similarity >= threshold {
                    pairs.push((i, j, similarity.min(1.0)));
                }
            }
        }
    }
    pairs
}

/// Groups of photos linked by identical `content_hashes` (empty hashes never match) or by
/// `similar` pairs, each with at least two photos, in order of their first photo.
pub fn duplicate_groups(
    content_hashes: &[&str],
    similar: &[(usize, usize, f32)],
) -> Vec<DuplicateGroup> {
    let count = content_hashes.len();
    let mut parent: Vec<usize> = (0..count).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let join = |parent: &mut Vec<usize>, a: usize, b: usize| {
        let (ra, rb) = (root(parent, a), root(parent, b));
        if ra != rb {
            parent[ra.max(rb)] = ra.min(rb);
        }
    };
    let mut best = vec![0f32; count];
    let mut first_with_hash = std::collections::HashMap::new();
    for (i, hash) in content_hashes.iter().enumerate() {
        if hash.is_empty() {
            continue;
        }
        if let Some(&first) = first_with_hash.get(hash) {
            join(&mut parent, first, i);
            best[first] = 1.0;
            best[i] = 1.0;
        } else {
            first_with_hash.insert(*hash, i);
        }
    }
    for &(i, j, similarity) in similar {
        join(&mut parent, i, j);
        best[i] = best[i].max(similarity);
        best[j] = best[j].max(similarity);
    }
    let mut members: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for i in 0..count {
        let r = root(&mut parent, i);
        members.entry(r).or_default().push(i);
    }
    members
        .into_values()
        .filter(|photos| photos.len() > 1)
        .map(|photos| {
            let hash = content_hashes[photos[0]];
            let exact = !hash.is_empty() && photos.iter().all(|&p| content_hashes[p] == hash);
            DuplicateGroup {
                kind: if exact {
                    DuplicateKind::Exact
                } else {
                    DuplicateKind::Near
                },
                similarity: photos.iter().map(|&p| best[p]).collect(),
                photos,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_bytes_and_similar_features_form_groups() {
        // 0 and 3 share bytes; 1 and 4 point almost the same way; 2 is alone; 5 has no hash.
        let hashes = ["a", "b", "c", "a", "d", ""];
        let features = [
            1.0, 0.0, 0.0, //
            0.0, 1.0, 0.0, //
            0.0, 0.0, 1.0, //
            0.7, 0.7, 0.0, //
            0.0, 2.0, 0.05, //
            0.0, 0.0, -1.0, //
        ];
        let pairs = similar_pairs(&features, 3, 0.99, &Device::flex());
        assert_eq!(pairs.len(), 1, "{pairs:?}");
        assert_eq!((pairs[0].0, pairs[0].1), (1, 4));
        let groups = duplicate_groups(&hashes, &pairs);
        assert_eq!(groups.len(), 2, "{groups:?}");
        assert_eq!(groups[0].kind, DuplicateKind::Exact);
        assert_eq!(groups[0].photos, vec![0, 3]);
        assert_eq!(groups[0].similarity, vec![1.0, 1.0]);
        assert_eq!(groups[1].kind, DuplicateKind::Near);
        assert_eq!(groups[1].photos, vec![1, 4]);
        assert!(groups[1].similarity[0] > 0.99);
    }

    #[test]
    fn chunks_cover_every_pair_once() {
        // More rows than one chunk: every photo is a copy of the one CHUNK_ROWS before it.
        let rows = CHUNK_ROWS + 40;
        let features: Vec<f32> = (0..rows)
            .flat_map(|i| {
                let angle = (i % CHUNK_ROWS) as f32 * 0.01;
                [angle.cos(), angle.sin()]
            })
            .collect();
        let pairs = similar_pairs(&features, 2, 0.999_99, &Device::flex());
        let expected: Vec<(usize, usize)> = (0..40).map(|i| (i, i + CHUNK_ROWS)).collect();
        let found: Vec<(usize, usize)> = pairs.iter().map(|p| (p.0, p.1)).collect();
        assert_eq!(found, expected);
    }
}

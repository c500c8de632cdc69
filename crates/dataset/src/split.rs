//! The deterministic train/validation split: each photo's side is a hash of its id and a seed.

use serde::{Deserialize, Serialize};

/// How photos are split when no explicit validation set is given.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SplitConfig {
    /// Share of photos held out for validation, 0..1.
    pub validation_fraction: f64,
    pub seed: u64,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            validation_fraction: 0.2,
            seed: 42,
        }
    }
}

impl SplitConfig {
    pub fn describe(&self) -> String {
        format!(
            "hash split: {:.0}% validation, seed {}",
            self.validation_fraction * 100.0,
            self.seed
        )
    }
}

/// Whether the photo `id` belongs to the validation set. Each photo is decided on its own, so
/// adding or removing other photos never moves it to the other side.
pub fn assign_split(id: &str, config: &SplitConfig) -> bool {
    let hash = xxhash_rust::xxh3::xxh3_64_with_seed(id.as_bytes(), config.seed);
    // The top 53 bits give a uniform float in [0, 1) without rounding bias.
    let unit = (hash >> 11) as f64 / (1u64 << 53) as f64;
    unit < config.validation_fraction
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_stable_and_close_to_the_fraction() {
        let config = SplitConfig::default();
        let ids: Vec<String> = (0..10_000).map(|i| format!("class/{i}.jpg")).collect();
        let first: Vec<bool> = ids.iter().map(|id| assign_split(id, &config)).collect();
        let share = first.iter().filter(|v| **v).count() as f64 / ids.len() as f64;
        assert!((share - 0.2).abs() < 0.02, "validation share {share}");
        // Adding photos leaves every existing decision as it was.
        let more: Vec<String> = (0..20_000).map(|i| format!("class/{i}.jpg")).collect();
        let second: Vec<bool> = more.iter().map(|id| assign_split(id, &config)).collect();
        assert_eq!(&second[..10_000], &first[..]);
        // Another seed gives another split.
        let reseeded = SplitConfig { seed: 7, ..config };
        assert_ne!(
            ids.iter()
                .map(|id| assign_split(id, &reseeded))
                .collect::<Vec<_>>(),
            first
        );
    }

    #[test]
    fn extreme_fractions() {
        let none = SplitConfig {
            validation_fraction: 0.0,
            seed: 1,
        };
        let all = SplitConfig {
            validation_fraction: 1.0,
            seed: 1,
        };
        assert!(!(0..1000).any(|i| assign_split(&i.to_string(), &none)));
        assert!((0..1000).all(|i| assign_split(&i.to_string(), &all)));
    }
}

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
    split_position(id, config) < config.validation_fraction
}

/// Where `id` falls in [0, 1) for this seed; below the validation fraction means validation.
pub fn split_position(id: &str, config: &SplitConfig) -> f64 {
    let hash = xxhash_rust::xxh3::xxh3_64_with_seed(id.as_bytes(), config.seed);
    // The top 53 bits give a uniform float in [0, 1) without rounding bias.
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// Splits `ids` (all of one class) into (train, validation) indices. Each photo is decided by
/// its own hash; only when that leaves a class of two or more photos with no validation photo
/// at all does the photo with the lowest position move over, so that every class is measured.
pub fn split_class(ids: &[&str], config: &SplitConfig) -> Vec<bool> {
    let positions: Vec<f64> = ids.iter().map(|id| split_position(id, config)).collect();
    let mut validation: Vec<bool> = positions
        .iter()
        .map(|&p| p < config.validation_fraction)
        .collect();
    if config.validation_fraction > 0.0 && ids.len() >= 2 && !validation.iter().any(|&v| v) {
        let lowest = positions
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1))
            .map(|(index, _)| index)
            .expect("at least two photos");
        validation[lowest] = true;
    }
    validation
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
    fn every_class_of_two_or_more_gets_a_validation_photo() {
        let config = SplitConfig {
            validation_fraction: 0.01,
            seed: 3,
        };
        let ids: Vec<String> = (0..10).map(|i| format!("cat/{i}.jpg")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let sides = split_class(&refs, &config);
        assert_eq!(sides.iter().filter(|v| **v).count(), 1);
        assert_eq!(split_class(&refs[..1], &config), [false]);
        let none = SplitConfig {
            validation_fraction: 0.0,
            seed: 3,
        };
        assert!(!split_class(&refs, &none).iter().any(|v| *v));
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

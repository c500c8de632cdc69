//! From logits to answers: probabilities (at the model's fitted temperature), the top label,
//! the top-k list, and whether the photo is none of the model's classes.

use bestiary_model::Calibration;
use serde::Serialize;

/// The label of a photo the model's detector rejects as none of its classes.
pub const UNKNOWN_LABEL: &str = "unknown";

/// One label with its probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelScore {
    pub label: String,
    pub score: f32,
}

/// What the model says about one image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// The most probable label, or [`UNKNOWN_LABEL`] when the detector rejects the photo (and
    /// the model is set to say so).
    pub label: String,
    /// Its probability.
    pub score: f32,
    /// Index of `label` in the model's classes.
    pub class_index: usize,
    /// The `k` most probable labels, most probable first.
    pub top_k: Vec<LabelScore>,
    /// Probability of every class, in the model's class order.
    pub probabilities: Vec<f32>,
    /// Whether the model's detector finds the photo unlike all of its classes; `None` for a
    /// model without one.
    pub unknown: Option<bool>,
    /// The detector's score (the calibrated top probability, or the energy): higher is more like
    /// the training photos.
    pub unknown_score: Option<f32>,
}

/// Numerically stable softmax of one row of logits.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&z| (z - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

impl Prediction {
    /// The prediction for one row of logits; `top_k` is clamped to `1..=classes.len()`.
    ///
    /// # Panics
    /// If `logits` and `classes` differ in length or are empty.
    pub fn from_logits(logits: &[f32], classes: &[String], top_k: usize) -> Self {
        Self::calibrated(logits, classes, top_k, None, true)
    }

    /// The prediction with the model's `calibration`: its temperature, and its detector, whose
    /// rejection makes the label [`UNKNOWN_LABEL`] when `label_unknown` (the ranking stays).
    ///
    /// # Panics
    /// If `logits` and `classes` differ in length or are empty.
    pub fn calibrated(
        logits: &[f32],
        classes: &[String],
        top_k: usize,
        calibration: Option<&Calibration>,
        label_unknown: bool,
    ) -> Self {
        assert_eq!(logits.len(), classes.len(), "one logit per class");
        assert!(!classes.is_empty(), "a model has at least one class");
        let (probabilities, unknown) = match calibration {
            Some(calibration) => calibration.apply(logits),
            None => (softmax(logits), None),
        };
        let mut order: Vec<usize> = (0..classes.len()).collect();
        // Ties keep class order, so equal scores always rank the same way.
        order.sort_by(|&a, &b| {
            probabilities[b]
                .total_cmp(&probabilities[a])
                .then(a.cmp(&b))
        });
        let top_k = order
            .iter()
            .take(top_k.clamp(1, classes.len()))
            .map(|&i| LabelScore {
                label: classes[i].clone(),
                score: probabilities[i],
            })
            .collect();
        let best = order[0];
        let rejected = unknown.is_some_and(|(rejected, _)| rejected);
        Self {
            label: if rejected && label_unknown {
                UNKNOWN_LABEL.to_string()
            } else {
                classes[best].clone()
            },
            score: probabilities[best],
            class_index: best,
            top_k,
            probabilities,
            unknown: unknown.map(|(rejected, _)| rejected),
            unknown_score: unknown.map(|(_, score)| score),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> Vec<String> {
        ["cat", "dog", "cow"].map(String::from).to_vec()
    }

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let p = softmax(&[1000.0, 1000.0, -1000.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((p[0] - 0.5).abs() < 1e-6 && p[2] == 0.0);
    }

    #[test]
    fn prediction_ranks_labels_and_clamps_k() {
        let p = Prediction::from_logits(&[0.1, 2.0, 1.0], &classes(), 10);
        assert_eq!(p.label, "dog");
        assert_eq!(p.class_index, 1);
        let labels: Vec<_> = p.top_k.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["dog", "cow", "cat"]);
        assert_eq!(
            Prediction::from_logits(&[0.1, 2.0, 1.0], &classes(), 0)
                .top_k
                .len(),
            1
        );
    }

    #[test]
    fn ties_rank_in_class_order() {
        let p = Prediction::from_logits(&[1.0, 1.0, 1.0], &classes(), 2);
        assert_eq!(p.label, "cat");
        assert_eq!(p.top_k[1].label, "dog");
    }

    #[test]
    fn a_calibrated_prediction_uses_the_temperature_and_says_unknown() {
        let calibration = Calibration {
            temperature: 0.5,
            ece_before: 0.0,
            ece_after: 0.0,
            nll_before: 0.0,
            nll_after: 0.0,
            photos: 100,
            unknown: Some(bestiary_model::UnknownDetector {
                method: "energy".into(),
                threshold: 2.0,
                acceptance: 0.97,
            }),
        };
        let plain = Prediction::from_logits(&[0.1, 2.5, 1.0], &classes(), 3);
        let sharp =
            Prediction::calibrated(&[0.1, 2.5, 1.0], &classes(), 3, Some(&calibration), true);
        assert_eq!(sharp.label, "dog");
        assert!(sharp.score > plain.score, "a temperature below 1 sharpens");
        assert_eq!(sharp.unknown, Some(false));
        assert_eq!((plain.unknown, plain.unknown_score), (None, None));

        // Low logits everywhere: none of the classes.
        let flat = [-1.0, -0.8, -1.2];
        let rejected = Prediction::calibrated(&flat, &classes(), 2, Some(&calibration), true);
        assert_eq!(rejected.label, UNKNOWN_LABEL);
        assert_eq!(rejected.unknown, Some(true));
        assert_eq!(rejected.top_k[0].label, "dog", "the ranking stays");
        assert!(rejected.unknown_score.unwrap() < 2.0);
        let kept = Prediction::calibrated(&flat, &classes(), 2, Some(&calibration), false);
        assert_eq!((kept.label.as_str(), kept.unknown), ("dog", Some(true)));
    }
}

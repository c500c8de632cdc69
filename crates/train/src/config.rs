//! Training settings, as given on the command line and recorded in checkpoints and `model.json`.

use bestiary_networks::ArchitectureConfig;
use bestiary_networks::imagenet_prior::ImagenetPriorConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    AdamW,
    /// SGD with momentum (Nesterov's with `nesterov`).
    Sgd,
}

/// What training photos go through before the network sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Augmentation {
    /// Random resized crops (a quarter of the photo to all of it), flips and colour jitter: the
    /// ImageNet habit, strong regularisation for photos of any size.
    #[default]
    ResizedCropJitter,
    /// The evaluation crop shifted by up to an eighth of its side, and flips: what fast
    /// CIFAR-10 recipes use; the network sees objects at the scale it meets at test time.
    FlipShift,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// Linear warm-up, then cosine decay to zero.
    Cosine,
    /// One-cycle: warm-up from lr/25 over 30% of the steps, then cosine decay to lr/10⁴.
    OneCycle,
    /// Linear warm-up from lr/5, then a straight line down to zero at the last step (airbench's
    /// triangle).
    Triangular,
    Constant,
}

/// A named set of optimiser, schedule, regularisation and augmentation settings for training
/// from scratch (`--recipe`); any setting given on its own overrides the recipe's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recipe {
    /// AdamW at 2e-3, cosine decay, label smoothing 0.1, random resized crops with colour
    /// jitter: robust on photos of any kind and size.
    #[default]
    Standard,
    /// What fast CIFAR-10 training (airbench, the DAWNBench entries) converged on, for reaching
    /// an accuracy in the fewest epochs: SGD with Nesterov momentum at 0.05 (batch 32), weight
    /// decay 5e-4, a triangular schedule, label smoothing 0.2, flips and small shifts of the
    /// evaluation crop instead of zoomed-in crops and colour jitter.
    Fast,
}

/// The settings a [`Recipe`] chooses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecipeSettings {
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub optimizer: OptimizerKind,
    pub nesterov: bool,
    pub schedule: Schedule,
    pub label_smoothing: f32,
    pub augmentation: Augmentation,
}

impl Recipe {
    pub fn settings(self) -> RecipeSettings {
        match self {
            Recipe::Standard => RecipeSettings {
                learning_rate: 2e-3,
                weight_decay: 1e-4,
                optimizer: OptimizerKind::AdamW,
                nesterov: false,
                schedule: Schedule::Cosine,
                label_smoothing: 0.1,
                augmentation: Augmentation::ResizedCropJitter,
            },
            Recipe::Fast => RecipeSettings {
                learning_rate: 0.05,
                weight_decay: 5e-4,
                optimizer: OptimizerKind::Sgd,
                nesterov: true,
                schedule: Schedule::Triangular,
                label_smoothing: 0.2,
                augmentation: Augmentation::FlipShift,
            },
        }
    }
}

/// Everything that decides what a training run computes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub architecture: ArchitectureConfig,
    pub image_size: u32,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub optimizer: OptimizerKind,
    /// SGD momentum.
    pub momentum: f64,
    pub schedule: Schedule,
    pub warmup_epochs: f64,
    pub label_smoothing: f32,
    pub augment: bool,
    /// Which augmentation `augment` turns on.
    #[serde(default)]
    pub augmentation: Augmentation,
    /// SGD: Nesterov momentum instead of heavy-ball.
    #[serde(default)]
    pub nesterov: bool,
    /// Stop when validation accuracy has not improved for this many epochs.
    pub patience: Option<usize>,
    /// Weight the loss by inverse class frequency, for skewed classes.
    pub balance_classes: bool,
    pub seed: u64,
    /// For EfficientNet-Lite0: the imported ImageNet model (a model URL) or the reference
    /// safetensors file to start from; by default `<out>/efficientnet-lite0`, imported there on
    /// first use.
    #[serde(default)]
    pub pretrained: Option<String>,
    /// For EfficientNet-Lite0: which ImageNet classes make up each class, to add the ImageNet
    /// classifier's knowledge to the trained head (`--imagenet-prior`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imagenet_prior: Option<ImagenetPriorConfig>,
    /// For EfficientNet-Lite0: train the pretrained backbone too (`--fine-tune`), in the
    /// from-scratch trainer's loop, instead of a head on cached frozen features.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fine_tune: Option<FineTune>,
}

impl TrainConfig {
    /// Learning rate at optimiser step `step` of `total`, with `warmup` warm-up steps.
    pub fn learning_rate_at(&self, step: usize, total: usize, warmup: usize) -> f64 {
        let base = self.learning_rate;
        let total = total.max(1) as f64;
        let step = step as f64;
        let cosine = |from: f64, to: f64, progress: f64| {
            to + (from - to) * 0.5 * (1.0 + (std::f64::consts::PI * progress.clamp(0.0, 1.0)).cos())
        };
        match self.schedule {
            Schedule::Constant => base,
            Schedule::Cosine => {
                let warmup = warmup as f64;
                if step < warmup {
                    base * (step + 1.0) / warmup
                } else {
                    cosine(base, 0.0, (step - warmup) / (total - warmup).max(1.0))
                }
            }
            Schedule::Triangular => {
                let warmup = warmup as f64;
                if step < warmup {
                    base / 5.0 + (base - base / 5.0) * step / warmup
                } else {
                    base * (1.0 - (step - warmup) / (total - warmup).max(1.0)).clamp(0.0, 1.0)
                }
            }
            Schedule::OneCycle => {
                let peak = (0.3 * total).max(1.0);
                if step < peak {
                    base / 25.0 + (base - base / 25.0) * step / peak
                } else {
                    cosine(base, base / 1e4, (step - peak) / (total - peak).max(1.0))
                }
            }
        }
    }
}

/// MBConv blocks of EfficientNet-Lite0.
pub const BLOCKS: usize = 16;

/// How a fine-tuning run trains the pretrained backbone (`--fine-tune`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FineTune {
    /// Train only the last this-many MBConv blocks (0–16) and the head convolution; `None` trains
    /// the whole backbone, stem included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<usize>,
    /// The backbone's learning rate as a fraction of the new head's.
    pub backbone_lr_factor: f64,
    /// Batch norm normalises with the pretrained running statistics and leaves them unchanged
    /// (its scale and shift still train); false normalises with each batch's statistics and
    /// updates the running ones.
    pub freeze_batch_norm: bool,
}

impl Default for FineTune {
    fn default() -> Self {
        Self {
            blocks: None,
            backbone_lr_factor: 0.1,
            freeze_batch_norm: true,
        }
    }
}

impl FineTune {
    /// Refuses settings that cannot describe a run.
    pub fn check(&self) -> Result<(), String> {
        if let Some(blocks) = self.blocks
            && blocks > BLOCKS
        {
            return Err(format!(
                "EfficientNet-Lite0 has {BLOCKS} MBConv blocks; cannot unfreeze the last {blocks}"
            ));
        }
        if !(self.backbone_lr_factor.is_finite() && self.backbone_lr_factor >= 0.0) {
            return Err(format!(
                "the backbone learning-rate factor must be a number ≥ 0, not {}",
                self.backbone_lr_factor
            ));
        }
        Ok(())
    }

    /// Index of the first MBConv block that trains.
    pub fn first_trained_block(&self) -> usize {
        BLOCKS - self.blocks.unwrap_or(BLOCKS).min(BLOCKS)
    }

    /// Whether the stem (first convolution and its batch norm) trains.
    pub fn trains_stem(&self) -> bool {
        self.blocks.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(schedule: Schedule) -> TrainConfig {
        TrainConfig {
            architecture: ArchitectureConfig::SeedCnn { width: 8, depth: 2 },
            image_size: 32,
            epochs: 10,
            batch_size: 4,
            learning_rate: 0.1,
            weight_decay: 0.0,
            optimizer: OptimizerKind::AdamW,
            momentum: 0.9,
            schedule,
            warmup_epochs: 1.0,
            label_smoothing: 0.0,
            augment: false,
            augmentation: Augmentation::default(),
            nesterov: false,
            patience: None,
            balance_classes: false,
            seed: 0,
            pretrained: None,
            imagenet_prior: None,
            fine_tune: None,
        }
    }

    #[test]
    fn cosine_warms_up_then_decays_to_zero() {
        let c = config(Schedule::Cosine);
        assert!((c.learning_rate_at(0, 100, 10) - 0.01).abs() < 1e-12);
        assert!((c.learning_rate_at(9, 100, 10) - 0.1).abs() < 1e-12);
        assert!(c.learning_rate_at(50, 100, 10) < 0.1);
        assert!(c.learning_rate_at(100, 100, 10).abs() < 1e-12);
    }

    #[test]
    fn triangular_rises_then_falls_in_straight_lines() {
        let c = config(Schedule::Triangular);
        assert!((c.learning_rate_at(0, 100, 10) - 0.02).abs() < 1e-12);
        assert!((c.learning_rate_at(10, 100, 10) - 0.1).abs() < 1e-12);
        assert!((c.learning_rate_at(55, 100, 10) - 0.05).abs() < 1e-12);
        assert!(c.learning_rate_at(100, 100, 10).abs() < 1e-12);
        // Without warm-up it starts at the peak.
        assert!((c.learning_rate_at(0, 100, 0) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn settings_recorded_before_the_fast_recipe_still_read() {
        let mut recorded = serde_json::to_value(config(Schedule::Cosine)).unwrap();
        let fields = recorded.as_object_mut().unwrap();
        fields.remove("augmentation");
        fields.remove("nesterov");
        let read: TrainConfig = serde_json::from_value(recorded).unwrap();
        assert_eq!(read.augmentation, Augmentation::ResizedCropJitter);
        assert!(!read.nesterov);
    }

    #[test]
    fn one_cycle_peaks_at_thirty_percent() {
        let c = config(Schedule::OneCycle);
        assert!((c.learning_rate_at(0, 100, 0) - 0.004).abs() < 1e-12);
        assert!((c.learning_rate_at(30, 100, 0) - 0.1).abs() < 1e-9);
        assert!(c.learning_rate_at(100, 100, 0) < 1e-4);
    }
}

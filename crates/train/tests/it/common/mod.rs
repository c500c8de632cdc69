//! What the training tests share: the tiny network and settings they train with.

use bestiary_networks::ArchitectureConfig;
use bestiary_train::{Augmentation, OptimizerKind, Schedule, TrainConfig};

/// A network small enough to train in well under a second on 40×40 generated photos.
pub fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        architecture: ArchitectureConfig::SeedCnn { width: 8, depth: 2 },
        image_size: 32,
        epochs,
        batch_size: 8,
        learning_rate: 5e-3,
        weight_decay: 1e-4,
        optimizer: OptimizerKind::AdamW,
        momentum: 0.9,
        schedule: Schedule::Cosine,
        warmup_epochs: 0.5,
        label_smoothing: 0.05,
        augment: true,
        augmentation: Augmentation::ResizedCropJitter,
        nesterov: false,
        patience: None,
        balance_classes: false,
        seed: 5,
        pretrained: None,
        imagenet_prior: None,
        fine_tune: None,
    }
}

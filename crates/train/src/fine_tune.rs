//! Fine-tuning EfficientNet-Lite0 from its ImageNet weights (`train --fine-tune`): which parts of
//! the network train, their learning rates, their batch norm, and the network a run starts from.
//!
//! The run itself is the from-scratch trainer's (`trainer::train_with`): its loader, augmentation,
//! schedule with warm-up, checkpoints and `--resume`; its settings (`FineTune`) are part of the
//! run's in `config.rs`. This file supplies what differs:
//! - the start: the pretrained backbone with a fresh, seeded head (and the frozen ImageNet prior
//!   when `--imagenet-prior` asks for one);
//! - frozen parts (the stem and the first blocks when only the last N blocks train, and the
//!   prior) are frozen with burn's `Module::freeze`: their parameters need no gradient, so their
//!   operations are not recorded on the autodiff tape at all. The backward pass then stops at the
//!   first trained block, which saves the most expensive part of it (the early blocks work at
//!   112×112 and 56×56), and nothing frozen can move, batch-norm statistics included;
//! - batch norm of the trained parts normalises with the pretrained running statistics by default
//!   (`freeze_batch_norm`): burn 0.22's `BatchNorm` takes the training path only while its
//!   `training` flag is on, so turning the flag off gives the inference formula on the autodiff
//!   device, with gradients still flowing to gamma and beta (and the input). Batch statistics of
//!   32 photos are a noisy estimate of statistics learnt on ImageNet, and would also drift the
//!   running ones towards a small data set;
//! - discriminative learning rates: burn's optimizer keeps its state per `ParamId` and updates
//!   only the parameters whose gradients are in the `GradientsParams` it is given, so each step is
//!   two steps of one optimizer, the head's gradients at the scheduled rate and the backbone's at
//!   `backbone_lr_factor` times it.

use bestiary_dataset::Dataset;
use bestiary_model::ModelRepository;
use bestiary_networks::arch::seeded;
use bestiary_networks::efficientnet::FEATURES;
use bestiary_networks::weights::weights_to_bytes;
use bestiary_networks::{ArchitectureConfig, Classifier};
use burn::module::{Flag, ModuleMapper, Param};
use burn::nn::LinearConfig;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::Gradients;

use crate::config::{FineTune, TrainConfig};
use crate::error::{Result, TrainError};

/// The network a fine-tuning run starts from, as safetensors bytes: the pretrained backbone of
/// `config.pretrained` (see [`crate::transfer::load_backbone`]), a new linear head seeded by
/// `config.seed`, and the ImageNet prior when the configuration asks for one.
pub async fn initial_weights(
    config: &TrainConfig,
    dataset: &Dataset,
    repository: &ModelRepository,
) -> Result<Vec<u8>> {
    if !matches!(
        config.architecture,
        ArchitectureConfig::EfficientnetLite0 { .. }
    ) {
        return Err(TrainError::Invalid(format!(
            "--fine-tune starts from ImageNet weights, which exist only for efficientnet-lite0, not {}",
            config.architecture.name()
        )));
    }
    let mut network =
        crate::transfer::load_backbone(config, repository, repository.options()).await?;
    network.prior = crate::transfer::imagenet_prior(config, dataset, &network)?;
    let device = Device::flex();
    network.fc = seeded(&device, config.seed, || {
        LinearConfig::new(FEATURES, dataset.classes.len()).init(&device)
    });
    Ok(weights_to_bytes(&Classifier::EfficientnetLite0(network))?)
}

/// `model` (an EfficientNet-Lite0 on the training device, weights loaded) set up for the run:
/// the parts `fine_tune` keeps fixed frozen, and, with `freeze_batch_norm`, the batch norm of the
/// trained parts on running statistics. Module flags and `require_grad` are not stored with the
/// weights, so this is applied again after every load.
pub fn prepare(model: Classifier, fine_tune: &FineTune) -> Result<Classifier> {
    let Classifier::EfficientnetLite0(mut net) = model else {
        return Err(TrainError::Invalid(
            "--fine-tune needs an EfficientNet-Lite0 network".into(),
        ));
    };
    if fine_tune.freeze_batch_norm {
        // Before freezing, so that it reaches every batch norm; the frozen parts are then
        // frozen whole (their flags are off either way).
        net = net.map(&mut RunningStatistics);
    }
    if !fine_tune.trains_stem() {
        net.conv_stem = net.conv_stem.freeze();
        net.bn0 = net.bn0.freeze();
    }
    let first = fine_tune.first_trained_block();
    net.blocks = net
        .blocks
        .into_iter()
        .enumerate()
        .map(|(index, block)| if index < first { block.freeze() } else { block })
        .collect();
    // The ImageNet classifier of the prior stays as it is: gradients flow through it into the
    // backbone, never into it.
    net.prior = net.prior.map(|prior| prior.freeze());
    Ok(Classifier::EfficientnetLite0(net))
}

/// Turns off every training flag it meets: for EfficientNet-Lite0, which has no dropout, those
/// are the batch norms', which then normalise with their running statistics.
struct RunningStatistics;

impl ModuleMapper for RunningStatistics {
    fn map_flag(&mut self, flag: Param<Flag>) -> Param<Flag> {
        flag.with_value(false)
    }
}

/// One optimiser step with discriminative learning rates: the head's parameters at
/// `learning_rate`, every other trained parameter at `learning_rate × backbone_lr_factor`.
/// Frozen parameters have no gradient and are left exactly as they are.
pub fn step(
    optimizer: &mut ModuleOptimizer,
    model: Classifier,
    mut gradients: Gradients,
    learning_rate: f64,
    fine_tune: &FineTune,
) -> Classifier {
    let head = GradientsParams::from_module(&mut gradients, model.head());
    // What is left after the head's gradients are taken out: the trained backbone's.
    let backbone = GradientsParams::from_grads(gradients, &model);
    let model = optimizer.step(learning_rate, model, head);
    if backbone.is_empty() {
        return model;
    }
    optimizer.step(
        learning_rate * fine_tune.backbone_lr_factor,
        model,
        backbone,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BLOCKS;

    #[test]
    fn the_last_blocks_are_counted_from_the_end() {
        let all = FineTune::default();
        assert_eq!(all.first_trained_block(), 0);
        assert!(all.trains_stem());
        let last_four = FineTune {
            blocks: Some(4),
            ..FineTune::default()
        };
        assert_eq!(last_four.first_trained_block(), 12);
        assert!(!last_four.trains_stem());
        let head_conv_only = FineTune {
            blocks: Some(0),
            ..FineTune::default()
        };
        assert_eq!(head_conv_only.first_trained_block(), BLOCKS);
        assert!(
            FineTune {
                blocks: Some(17),
                ..FineTune::default()
            }
            .check()
            .unwrap_err()
            .contains("16")
        );
        assert!(
            FineTune {
                backbone_lr_factor: f64::NAN,
                ..FineTune::default()
            }
            .check()
            .is_err()
        );
    }
}

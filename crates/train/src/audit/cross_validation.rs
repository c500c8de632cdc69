//! Out-of-fold predictions on cached features: a seeded stratified k-fold split, a
//! softmax-regression head per fold fitted on the other folds with the transfer head's recipe,
//! and every photo's logits from the one head that never saw it.
//!
//! The head is fitted without autodiff: for softmax regression the gradient of the mean
//! (label-smoothed) cross-entropy with respect to the logits is `(softmax − target) / batch`, so
//! the weights' gradient is `Xᵀ (softmax − target) / batch`. The optimiser is burn's AdamW step
//! written out (same betas, epsilon and decoupled weight decay), the schedule is
//! [`TrainConfig::learning_rate_at`], and the mini-batches are shuffled per epoch with the seed
//! exactly as `train_transfer` shuffles them, so a fold's head is the head transfer training
//! would fit on that fold's photos (up to the initialisation: zeros here, as the loss is convex).

use burn::prelude::*;
use burn::tensor::activation::softmax;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::config::TrainConfig;

/// AdamW's constants, burn's defaults (`AdamWConfig::new()`), which `train_transfer` uses.
const BETA_1: f32 = 0.9;
const BETA_2: f32 = 0.999;
const EPSILON: f32 = 1e-5;

/// A linear softmax classifier on features: `logits = features · weights + bias (+ prior)`.
#[derive(Debug, Clone)]
pub struct SoftmaxHead {
    /// `[features, classes]`.
    pub weights: Tensor<2>,
    /// `[1, classes]`.
    pub bias: Tensor<2>,
}

impl SoftmaxHead {
    /// Logits `[rows, classes]` of `features` `[rows, dims]`, plus the additive `prior` when given.
    pub fn logits(&self, features: Tensor<2>, prior: Option<Tensor<2>>) -> Tensor<2> {
        let logits = features.matmul(self.weights.clone()) + self.bias.clone();
        match prior {
            Some(prior) => logits + prior,
            None => logits,
        }
    }
}

/// One photo's fold, for every photo: classes are dealt out round-robin over the folds after a
/// seeded shuffle, so each fold holds each class in proportion (stratified), and the same seed
/// always gives the same folds.
pub fn stratified_folds(labels: &[usize], folds: usize, seed: u64) -> Vec<usize> {
    let folds = folds.max(1);
    let classes = labels.iter().copied().max().map_or(0, |max| max + 1);
    let mut fold_of = vec![0; labels.len()];
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xA0D1_7F01_D5ED_0001);
    // Where the next class starts dealing, so that the folds left short by one class are
    // topped up by the next and fold sizes differ by at most one overall.
    let mut next = 0;
    for class in 0..classes {
        let mut members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        members.shuffle(&mut rng);
        for member in members {
            fold_of[member] = next % folds;
            next += 1;
        }
    }
    fold_of
}

/// Fits a softmax-regression head on `features` (`labels.len()` rows of `dims` values) with
/// `recipe`'s epochs, batch size, AdamW learning rate and schedule, weight decay and label
/// smoothing. `prior`, when given, holds `labels.len() × classes` logits added to the head's
/// in training (and to be added again in prediction): the head then learns only what the prior
/// gets wrong.
pub fn fit_head(
    features: &[f32],
    dims: usize,
    labels: &[usize],
    classes: usize,
    prior: Option<&[f32]>,
    recipe: &TrainConfig,
    device: &Device,
) -> SoftmaxHead {
    let rows = labels.len();
    assert_eq!(features.len(), rows * dims, "features are rows × dims");
    if let Some(prior) = prior {
        assert_eq!(prior.len(), rows * classes, "the prior is rows × classes");
    }
    let inputs = Tensor::<2>::from_data(TensorData::new(features.to_vec(), [rows, dims]), device);
    let smoothing = recipe.label_smoothing.clamp(0.0, 1.0);
    let mut targets = vec![smoothing / classes as f32; rows * classes];
    for (row, &label) in labels.iter().enumerate() {
        targets[row * classes + label] += 1.0 - smoothing;
    }
    let targets = Tensor::<2>::from_data(TensorData::new(targets, [rows, classes]), device);
    let priors = prior.map(|prior| {
        Tensor::<2>::from_data(TensorData::new(prior.to_vec(), [rows, classes]), device)
    });

    let mut weights = AdamWParameter::zeros([dims, classes], device);
    let mut bias = AdamWParameter::zeros([1, classes], device);
    let batch_size = recipe.batch_size.max(1);
    let steps_per_epoch = rows.div_ceil(batch_size);
    let total_steps = steps_per_epoch * recipe.epochs;
    let warmup_steps = (recipe.warmup_epochs * steps_per_epoch as f64).round() as usize;
    let decay = recipe.weight_decay;
    for epoch in 0..recipe.epochs {
        let mut order: Vec<usize> = (0..rows).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(
            recipe.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        ));
        for (step, chunk) in order.chunks(batch_size).enumerate() {
            let learning_rate =
                recipe.learning_rate_at(epoch * steps_per_epoch + step, total_steps, warmup_steps);
            let indices = Tensor::<1, Int>::from_data(
                TensorData::new(
                    chunk.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                    [chunk.len()],
                ),
                device,
            );
            let batch = inputs.clone().select(0, indices.clone());
            let head = SoftmaxHead {
                weights: weights.value.clone(),
                bias: bias.value.clone(),
            };
            let prior = priors
                .as_ref()
                .map(|p| p.clone().select(0, indices.clone()));
            let probabilities = softmax(head.logits(batch.clone(), prior), 1);
            let error =
                (probabilities - targets.clone().select(0, indices)).div_scalar(chunk.len() as f32);
            let weight_gradient = batch.transpose().matmul(error.clone());
            let bias_gradient = error.sum_dim(0);
            weights.step(weight_gradient, learning_rate, decay);
            bias.step(bias_gradient, learning_rate, decay);
        }
    }
    SoftmaxHead {
        weights: weights.value,
        bias: bias.value,
    }
}

/// A parameter with its AdamW moments.
struct AdamWParameter {
    value: Tensor<2>,
    moment_1: Tensor<2>,
    moment_2: Tensor<2>,
    time: i32,
}

impl AdamWParameter {
    fn zeros(shape: [usize; 2], device: &Device) -> Self {
        Self {
            value: Tensor::zeros(shape, device),
            moment_1: Tensor::zeros(shape, device),
            moment_2: Tensor::zeros(shape, device),
            time: 0,
        }
    }

    /// burn's `AdamW::step`: moments, bias correction, then decoupled weight decay.
    fn step(&mut self, gradient: Tensor<2>, learning_rate: f64, weight_decay: f64) {
        self.time += 1;
        self.moment_1 =
            self.moment_1.clone().mul_scalar(BETA_1) + gradient.clone().mul_scalar(1.0 - BETA_1);
        self.moment_2 =
            self.moment_2.clone().mul_scalar(BETA_2) + gradient.square().mul_scalar(1.0 - BETA_2);
        let corrected_1 = self
            .moment_1
            .clone()
            .div_scalar(1.0 - BETA_1.powi(self.time));
        let corrected_2 = self
            .moment_2
            .clone()
            .div_scalar(1.0 - BETA_2.powi(self.time));
        let delta = corrected_1.div(corrected_2.sqrt().add_scalar(EPSILON));
        let decayed = self
            .value
            .clone()
            .mul_scalar(1.0 - learning_rate * weight_decay);
        self.value = decayed - delta.mul_scalar(learning_rate);
    }
}

/// Every photo's logits from the head of the fold that held it out.
#[derive(Debug, Clone)]
pub struct OutOfFold {
    /// `[photos][classes]`, prior included.
    pub logits: Vec<Vec<f32>>,
    /// The fold each photo was held out in.
    pub fold_of: Vec<usize>,
    pub folds: usize,
}

/// Out-of-fold logits of `labels.len()` photos (`features` row-major, `dims` wide): for each of
/// `folds` stratified folds (seeded by `recipe.seed`), a head fitted on the other folds predicts
/// the held-out one. `prior` (photos × classes, or `None`) is added in fitting and prediction.
pub fn out_of_fold(
    features: &[f32],
    dims: usize,
    labels: &[usize],
    classes: usize,
    prior: Option<&[f32]>,
    folds: usize,
    recipe: &TrainConfig,
) -> OutOfFold {
    let device = Device::flex();
    let folds = folds.clamp(2, labels.len().max(2));
    let fold_of = stratified_folds(labels, folds, recipe.seed);
    let mut logits = vec![Vec::new(); labels.len()];
    let rows_of = |wanted: &dyn Fn(usize) -> bool| -> Vec<usize> {
        (0..labels.len()).filter(|&i| wanted(fold_of[i])).collect()
    };
    let gather = |rows: &[usize], values: &[f32], width: usize| -> Vec<f32> {
        rows.iter()
            .flat_map(|&i| values[i * width..(i + 1) * width].iter().copied())
            .collect()
    };
    for fold in 0..folds {
        let fitted = rows_of(&|f| f != fold);
        let held_out = rows_of(&|f| f == fold);
        if held_out.is_empty() {
            continue;
        }
        let fitted_labels: Vec<usize> = fitted.iter().map(|&i| labels[i]).collect();
        let fitted_prior = prior.map(|p| gather(&fitted, p, classes));
        let head = fit_head(
            &gather(&fitted, features, dims),
            dims,
            &fitted_labels,
            classes,
            fitted_prior.as_deref(),
            recipe,
            &device,
        );
        let inputs = Tensor::<2>::from_data(
            TensorData::new(gather(&held_out, features, dims), [held_out.len(), dims]),
            &device,
        );
        let held_out_prior = prior.map(|p| {
            Tensor::<2>::from_data(
                TensorData::new(gather(&held_out, p, classes), [held_out.len(), classes]),
                &device,
            )
        });
        let values: Vec<f32> = head
            .logits(inputs, held_out_prior)
            .into_data()
            .try_to_vec()
            .expect("logits are f32");
        for (row, &photo) in values.chunks_exact(classes).zip(&held_out) {
            logits[photo] = row.to_vec();
        }
    }
    OutOfFold {
        logits,
        fold_of,
        folds,
    }
}

/// Top-1 accuracy of `logits` against `labels`, overall and per class (`None` for a class
/// without photos).
pub fn accuracy(logits: &[Vec<f32>], labels: &[usize], classes: usize) -> (f64, Vec<Option<f64>>) {
    let mut right = vec![0usize; classes];
    let mut seen = vec![0usize; classes];
    for (row, &label) in logits.iter().zip(labels) {
        seen[label] += 1;
        right[label] += usize::from(argmax(row) == label);
    }
    let overall = right.iter().sum::<usize>() as f64 / labels.len().max(1) as f64;
    let per_class = (0..classes)
        .map(|c| (seen[c] > 0).then(|| right[c] as f64 / seen[c] as f64))
        .collect();
    (overall, per_class)
}

/// Index of the largest value (the first of equals).
pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(epochs: usize) -> TrainConfig {
        let mut recipe = crate::audit::head_recipe(7);
        recipe.epochs = epochs;
        recipe.batch_size = 16;
        recipe.learning_rate = 5e-2;
        recipe
    }

    /// Three well-separated Gaussian blobs in 8 dimensions, 20 points each.
    fn blobs() -> (Vec<f32>, Vec<usize>) {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for i in 0..60 {
            let label = i % 3;
            for d in 0..8 {
                let centre = if d == label { 3.0 } else { 0.0 };
                features.push(centre + rand::Rng::random_range(&mut rng, -1.0f32..1.0));
            }
            labels.push(label);
        }
        (features, labels)
    }

    #[test]
    fn folds_are_stratified_balanced_and_seeded() {
        let labels: Vec<usize> = (0..53)
            .map(|i| if i < 40 { 0 } else { 1 + i % 2 })
            .collect();
        let folds = stratified_folds(&labels, 5, 1);
        assert_eq!(folds, stratified_folds(&labels, 5, 1));
        assert_ne!(folds, stratified_folds(&labels, 5, 2));
        let sizes: Vec<usize> = (0..5)
            .map(|f| folds.iter().filter(|&&x| x == f).count())
            .collect();
        assert!(
            sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
            "{sizes:?}"
        );
        for fold in 0..5 {
            let of_class_0 = (0..53)
                .filter(|&i| labels[i] == 0 && folds[i] == fold)
                .count();
            assert_eq!(of_class_0, 8, "class 0 is dealt evenly");
        }
    }

    #[test]
    fn out_of_fold_heads_separate_blobs_deterministically() {
        let (features, labels) = blobs();
        let oof = out_of_fold(&features, 8, &labels, 3, None, 5, &recipe(20));
        let (overall, per_class) = accuracy(&oof.logits, &labels, 3);
        assert!(overall > 0.95, "{overall}");
        assert!(per_class.iter().all(|a| a.unwrap() > 0.85), "{per_class:?}");
        let again = out_of_fold(&features, 8, &labels, 3, None, 5, &recipe(20));
        assert_eq!(oof.logits, again.logits);
    }

    #[test]
    fn a_prior_is_added_to_the_logits_and_the_head_learns_around_it() {
        let (features, labels) = blobs();
        // A prior that insists on class 2 for every photo: the head must overcome it in
        // training, so predictions without it lean away from class 2.
        let prior: Vec<f32> = (0..60).flat_map(|_| [0.0, 0.0, 4.0]).collect();
        let device = Device::flex();
        let with_prior = fit_head(&features, 8, &labels, 3, Some(&prior), &recipe(20), &device);
        let inputs = Tensor::<2>::from_data(TensorData::new(features.clone(), [60, 8]), &device);
        let prior_tensor = Tensor::<2>::from_data(TensorData::new(prior, [60, 3]), &device);
        let rows = |t: Tensor<2>| -> Vec<Vec<f32>> {
            let values: Vec<f32> = t.into_data().try_to_vec().unwrap();
            values.chunks(3).map(<[f32]>::to_vec).collect()
        };
        let combined = rows(with_prior.logits(inputs.clone(), Some(prior_tensor)));
        assert!(accuracy(&combined, &labels, 3).0 > 0.95);
        let head_alone = rows(with_prior.logits(inputs, None));
        let class_2_margin: f32 = head_alone
            .iter()
            .map(|row| row[2] - row[0].max(row[1]))
            .sum::<f32>()
            / 60.0;
        assert!(class_2_margin < -1.0, "{class_2_margin}");
    }
}

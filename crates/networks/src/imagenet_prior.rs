//! The ImageNet prior of a transfer head: what the pretrained ImageNet classifier already knows
//! about a model's classes, added to the trained head's logits.
//!
//! Many user classes are unions of ImageNet classes (every dog breed is "dog", tabby and Siamese
//! are "cat"). With a few hundred photos a new linear head learns those classes less well than
//! the 1.2 million ImageNet photos taught the original classifier, so the model's logit for class
//! `c` becomes `head(f)_c + w · log(Σ_{i ∈ group(c)} softmax(imagenet(f))_i + ε)`: the head only
//! has to learn what ImageNet gets wrong. Measured on the 240 animals10 photos by 5-fold
//! cross-validation (bench/default-model/compare.py): 93.6% for the head alone, 96.2% with the
//! prior at `w = 1`.

use std::collections::BTreeMap;

use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use serde::{Deserialize, Serialize};

/// ImageNet-1k classes, the outputs of the pretrained classifier the prior reads.
pub const IMAGENET_CLASSES: usize = 1000;

/// Added to each group's probability before the logarithm, so a class none of whose ImageNet
/// classes scores keeps a finite logit (log 1e-6 ≈ −13.8) the head can still overcome.
pub const EPSILON: f32 = 1e-6;

/// Which ImageNet classes (indices 0–999 of the ImageNet-1k ordering) make up each model class,
/// as read from `--imagenet-prior <file.json>`: `{"dog": [151, 152, …], "cat": [281, …]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImagenetPriorConfig {
    pub groups: BTreeMap<String, Vec<usize>>,
    /// The prior's weight `w` against the trained head.
    pub weight: f64,
}

impl ImagenetPriorConfig {
    /// The groups in the order of `classes`, refusing a class without a group, an empty group,
    /// an index outside ImageNet-1k, or a group for a class the dataset does not have.
    pub fn groups_for(&self, classes: &[String]) -> Result<Vec<Vec<usize>>, String> {
        let unknown: Vec<&String> = self
            .groups
            .keys()
            .filter(|name| !classes.contains(name))
            .collect();
        if !unknown.is_empty() {
            return Err(format!(
                "the ImageNet prior names classes the dataset does not have: {unknown:?} (classes: {classes:?})"
            ));
        }
        classes
            .iter()
            .map(|class| {
                let group = self.groups.get(class).ok_or_else(|| {
                    format!("the ImageNet prior has no ImageNet classes for '{class}'")
                })?;
                if group.is_empty() {
                    return Err(format!("the ImageNet prior's group for '{class}' is empty"));
                }
                if let Some(bad) = group.iter().find(|&&i| i >= IMAGENET_CLASSES) {
                    return Err(format!(
                        "the ImageNet prior's group for '{class}' has index {bad}; ImageNet-1k has 0–{}",
                        IMAGENET_CLASSES - 1
                    ));
                }
                Ok(group.clone())
            })
            .collect()
    }
}

/// The frozen ImageNet classifier and the membership of its classes in the model's, as a burn
/// module so it is stored with the weights and runs wherever the network runs.
#[derive(Module, Debug)]
pub struct ImagenetPrior {
    /// The pretrained ImageNet classifier (embedding → 1000 classes), unchanged.
    pub imagenet: Linear,
    /// `[1000, classes]`: 1 where ImageNet class `i` belongs to model class `c`.
    pub membership: Param<Tensor<2>>,
    /// `[1]`: the prior's weight.
    pub weight: Param<Tensor<1>>,
}

impl ImagenetPrior {
    /// A blank prior of the right shapes, for loading stored weights into: `features` is the
    /// width of the backbone's pooled embedding the ImageNet classifier reads.
    pub fn blank(features: usize, classes: usize, device: &Device) -> Self {
        Self {
            imagenet: LinearConfig::new(features, IMAGENET_CLASSES).init(device),
            membership: Param::from_tensor(Tensor::zeros([IMAGENET_CLASSES, classes], device)),
            weight: Param::from_tensor(Tensor::zeros([1], device)),
        }
    }

    /// The prior from the ImageNet classifier and the groups of [`ImagenetPriorConfig::groups_for`].
    pub fn new(imagenet: Linear, groups: &[Vec<usize>], weight: f32, device: &Device) -> Self {
        let classes = groups.len();
        let mut membership = vec![0.0f32; IMAGENET_CLASSES * classes];
        for (class, group) in groups.iter().enumerate() {
            for &index in group {
                membership[index * classes + class] = 1.0;
            }
        }
        Self {
            imagenet,
            membership: Param::from_tensor(Tensor::from_data(
                TensorData::new(membership, [IMAGENET_CLASSES, classes]),
                device,
            )),
            weight: Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![weight], [1]),
                device,
            )),
        }
    }

    /// `w · log(softmax(imagenet(features)) · membership + ε)`, `[batch, classes]`.
    pub fn log_prior(&self, features: Tensor<2>) -> Tensor<2> {
        let probabilities = softmax(self.imagenet.forward(features), 1);
        let grouped = probabilities.matmul(self.membership.val()) + EPSILON;
        grouped.log() * self.weight.val().unsqueeze::<2>()
    }

    /// The membership matrix `[1000 × classes]` row-major, for the exporter.
    pub fn membership_values(&self) -> Vec<f32> {
        self.membership
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .expect("membership is f32")
    }

    /// The prior's weight, for the exporter.
    pub fn weight_value(&self) -> f32 {
        self.weight
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .expect("weight is f32")[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any embedding width will do for the prior's arithmetic.
    const FEATURES: usize = 64;

    fn config(groups: &[(&str, Vec<usize>)]) -> ImagenetPriorConfig {
        ImagenetPriorConfig {
            groups: groups
                .iter()
                .map(|(name, group)| (name.to_string(), group.clone()))
                .collect(),
            weight: 1.0,
        }
    }

    #[test]
    fn groups_follow_the_class_order_and_bad_groups_are_refused() {
        let classes = vec!["cat".to_string(), "dog".to_string()];
        let good = config(&[("dog", vec![151, 152]), ("cat", vec![281])]);
        assert_eq!(
            good.groups_for(&classes).unwrap(),
            vec![vec![281], vec![151, 152]]
        );
        let missing = config(&[("dog", vec![151])]);
        assert!(missing.groups_for(&classes).unwrap_err().contains("'cat'"));
        let extra = config(&[("dog", vec![1]), ("cat", vec![2]), ("cow", vec![3])]);
        assert!(extra.groups_for(&classes).unwrap_err().contains("cow"));
        let out_of_range = config(&[("dog", vec![1000]), ("cat", vec![2])]);
        assert!(
            out_of_range
                .groups_for(&classes)
                .unwrap_err()
                .contains("1000")
        );
        let empty = config(&[("dog", vec![]), ("cat", vec![2])]);
        assert!(empty.groups_for(&classes).unwrap_err().contains("empty"));
    }

    #[test]
    fn log_prior_is_the_weighted_log_of_each_groups_probability() {
        let device = Device::flex();
        let imagenet = LinearConfig::new(FEATURES, IMAGENET_CLASSES).init(&device);
        let groups = vec![
            vec![0, 1, 2],
            vec![500],
            (3..500).chain(501..1000).collect(),
        ];
        let prior = ImagenetPrior::new(imagenet.clone(), &groups, 0.5, &device);
        let features = Tensor::<2>::random(
            [2, FEATURES],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let got: Vec<f32> = prior
            .log_prior(features.clone())
            .into_data()
            .try_to_vec()
            .unwrap();
        let probabilities: Vec<f32> = softmax(imagenet.forward(features), 1)
            .into_data()
            .try_to_vec()
            .unwrap();
        for row in 0..2 {
            let p = &probabilities[row * IMAGENET_CLASSES..(row + 1) * IMAGENET_CLASSES];
            for (class, group) in groups.iter().enumerate() {
                let sum: f32 = group.iter().map(|&i| p[i]).sum();
                let want = 0.5 * (sum + EPSILON).ln();
                let have = got[row * 3 + class];
                assert!((have - want).abs() < 1e-4, "{have} vs {want}");
            }
        }
    }
}

//! Bestiary's training batch norm against burn's: output, batch statistics, running
//! statistics after the step, and the gradients of x, γ and β.

use bestiary_networks::norm;
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn values(rng: &mut ChaCha8Rng, len: usize, offset: f32) -> Vec<f32> {
    (0..len)
        .map(|_| offset + rng.random_range(-2.0..2.0))
        .collect()
}

struct Outcome {
    output: Vec<f32>,
    dx: Vec<f32>,
    dgamma: Vec<f32>,
    dbeta: Vec<f32>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
}

fn run(
    forward: fn(&BatchNorm, Tensor<4>) -> Tensor<4>,
    shape: [usize; 4],
    x: &[f32],
    weighting: &[f32],
    affine: (&[f32], &[f32]),
) -> Outcome {
    let device = Device::flex().autodiff();
    let mut norm = BatchNormConfig::new(shape[1]).init(&device);
    norm.gamma = norm.gamma.map(|_| {
        Tensor::from_data(TensorData::new(affine.0.to_vec(), [shape[1]]), &device).require_grad()
    });
    norm.beta = norm.beta.map(|_| {
        Tensor::from_data(TensorData::new(affine.1.to_vec(), [shape[1]]), &device).require_grad()
    });
    let x = Tensor::<4>::from_data(TensorData::new(x.to_vec(), shape), &device).require_grad();
    let output = forward(&norm, x.clone());
    let weighting = Tensor::<4>::from_data(TensorData::new(weighting.to_vec(), shape), &device);
    let grads = (output.clone() * weighting).sum().backward();
    let flat = |t: TensorData| t.try_to_vec::<f32>().unwrap();
    Outcome {
        output: flat(output.into_data()),
        dx: flat(x.grad(&grads).unwrap().into_data()),
        dgamma: flat(norm.gamma.grad(&grads).unwrap().into_data()),
        dbeta: flat(norm.beta.grad(&grads).unwrap().into_data()),
        running_mean: flat(norm.running_mean.value().into_data()),
        running_var: flat(norm.running_var.value().into_data()),
    }
}

fn assert_close(what: &str, shape: [usize; 4], ours: &[f32], reference: &[f32]) {
    let scale = reference.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        assert!(
            (a - b).abs() <= 2e-4 * scale,
            "{what}[{i}] of {shape:?}: ours {a}, burn {b}"
        );
    }
    assert_eq!(ours.len(), reference.len(), "{what} of {shape:?}");
}

#[test]
fn training_batch_norm_matches_burns() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for (shape, offset) in [
        ([4, 3, 5, 7], 0.0),
        ([2, 8, 16, 16], 30.0),
        ([9, 5, 1, 1], -3.0),
        ([1, 4, 3, 3], 0.5),
    ] {
        let len: usize = shape.iter().product();
        let x = values(&mut rng, len, offset);
        let weighting = values(&mut rng, len, 0.0);
        let gamma = values(&mut rng, shape[1], 1.0);
        let beta = values(&mut rng, shape[1], 0.0);
        let ours = run(norm::forward, shape, &x, &weighting, (&gamma, &beta));
        let burn = run(
            |norm, x| norm.forward(x),
            shape,
            &x,
            &weighting,
            (&gamma, &beta),
        );
        assert_close("output", shape, &ours.output, &burn.output);
        assert_close("x gradient", shape, &ours.dx, &burn.dx);
        assert_close("gamma gradient", shape, &ours.dgamma, &burn.dgamma);
        assert_close("beta gradient", shape, &ours.dbeta, &burn.dbeta);
        assert_close(
            "running mean",
            shape,
            &ours.running_mean,
            &burn.running_mean,
        );
        assert_close(
            "running variance",
            shape,
            &ours.running_var,
            &burn.running_var,
        );
    }
}

//! Training-mode batch norm for the networks: one pass for the statistics and one to normalise,
//! and a two-pass backward, on the CPU (Flex) backend; burn's batch norm everywhere else.
//!
//! burn-flex has no batch norm of its own, so burn composes it from generic ops: each statistic
//! swaps the batch and channel axes (a full copy of the activation), and the backward pass runs
//! about a dozen whole-tensor ops. Here the statistics are per-channel sums in f64 and every
//! pass reads the activation once, over rayon's threads. Like [`crate::conv`], it is a burn
//! backend extension with its own backward step; nothing of burn is forked.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::nn::BatchNorm;
use burn::prelude::*;
use burn::tensor::DType;
use rayon::prelude::*;

use crate::conv::{contiguous, flex_tensor, runs_on_flex, values};

/// Batch norm in training mode with Bestiary's kernels, as a burn backend extension.
#[backend_extension(Flex, Autodiff)]
pub trait NormBackend: Backend {
    /// `(output, mean, biased variance)` of `x [N, C, …]` normalised per channel.
    fn bestiary_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// The forward pass of burn's [`BatchNorm`] module through Bestiary's kernels when it trains
/// on the CPU backend (same parameters, same running-statistics update, so stored weights and
/// checkpoints are unchanged); the module itself otherwise (inference, other backends, frozen
/// layers, other float types).
pub fn forward(norm: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    let device = x.device();
    let trains = device.is_autodiff() && norm.training.is_enabled();
    let on_flex = runs_on_flex(&device);
    if !(trains && on_flex && x.dtype() == DType::F32 && crate::conv::uses_own_kernels()) {
        return norm.forward(x);
    }
    let (output, mean, variance) = <Dispatch as NormBackend>::bestiary_batch_norm_train(
        x.into_dispatch(),
        norm.gamma.val().into_dispatch(),
        norm.beta.val().into_dispatch(),
        norm.epsilon,
    );
    let (mean, variance) = (
        Tensor::<1>::from_dispatch(mean),
        Tensor::<1>::from_dispatch(variance),
    );
    // burn's update, kept identical: running = (1 − momentum)·running + momentum·batch.
    let momentum = norm.momentum;
    let running_mean = norm.running_mean.value_sync().to_device(&device);
    let running_var = norm.running_var.value_sync().to_device(&device);
    let running_mean = running_mean
        .mul_scalar(1.0 - momentum)
        .add(mean.detach().mul_scalar(momentum));
    let running_var = running_var
        .mul_scalar(1.0 - momentum)
        .add(variance.detach().mul_scalar(momentum));
    norm.running_mean.update(running_mean.detach());
    norm.running_var.update(running_var.detach());
    Tensor::from_dispatch(output)
}

/// `(batch, channels, pixels)` of an `[N, C, …]` tensor.
fn extents(tensor: &FlexTensor) -> (usize, usize, usize) {
    let shape = tensor.layout().shape();
    assert!(
        shape.num_dims() >= 2,
        "batch norm: expected [N, C, …], got {shape:?}"
    );
    let (batch, channels) = (shape[0], shape[1]);
    (
        batch,
        channels,
        shape.num_elements() / (batch * channels).max(1),
    )
}

/// Per-channel sums over images of `f(plane)` for each plane of `x`.
fn channel_sums<const K: usize>(
    x: &[f32],
    (batch, channels, pixels): (usize, usize, usize),
    f: impl Fn(&[f32]) -> [f64; K] + Sync,
) -> Vec<[f64; K]> {
    (0..channels)
        .into_par_iter()
        .map(|channel| {
            let mut total = [0.0; K];
            for image in 0..batch {
                let start = (image * channels + channel) * pixels;
                let sums = f(&x[start..start + pixels]);
                for (t, s) in total.iter_mut().zip(sums) {
                    *t += s;
                }
            }
            total
        })
        .collect()
}

/// Forward statistics and output: `(output, mean, variance)` as flat vectors.
pub fn forward_kernel(
    x: &[f32],
    extents: (usize, usize, usize),
    gamma: &[f32],
    beta: &[f32],
    epsilon: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (batch, channels, pixels) = extents;
    let count = (batch * pixels) as f64;
    // One read: Σv and Σv² per channel. Each plane's values are shifted by its first value
    // before the f32 partial sums (short runs of 64, then f64), so the squares stay small and
    // E[v²] − E[v]² loses nothing to cancellation for activations far from zero.
    let sums = channel_sums::<2>(x, extents, |plane| {
        let shift = plane.first().copied().unwrap_or(0.0);
        let (mut sum, mut squares) = (0.0f64, 0.0f64);
        for chunk in plane.chunks(64) {
            let (mut s, mut q) = (0.0f32, 0.0f32);
            for &v in chunk {
                let d = v - shift;
                s += d;
                q += d * d;
            }
            sum += s as f64;
            squares += q as f64;
        }
        // Undo the shift s: Σv = Σd + n·s, Σv² = Σd² + 2s·Σd + n·s².
        let (s, n) = (shift as f64, plane.len() as f64);
        [sum + s * n, squares + 2.0 * s * sum + s * s * n]
    });
    let mean: Vec<f64> = sums.iter().map(|[sum, _]| sum / count).collect();
    let variance: Vec<f64> = sums
        .iter()
        .zip(&mean)
        .map(|([_, squares], m)| (squares / count - m * m).max(0.0))
        .collect();
    let scale: Vec<f32> = (0..channels)
        .map(|c| (gamma[c] as f64 / (variance[c] + epsilon).sqrt()) as f32)
        .collect();
    let shift: Vec<f32> = (0..channels)
        .map(|c| beta[c] - (mean[c] as f32) * scale[c])
        .collect();
    let mut output = vec![0.0; x.len()];
    output
        .par_chunks_mut(pixels.max(1))
        .zip(x.par_chunks(pixels.max(1)))
        .enumerate()
        .for_each(|(plane, (out, input))| {
            let channel = plane % channels;
            let (a, b) = (scale[channel], shift[channel]);
            for (o, &v) in out.iter_mut().zip(input) {
                *o = v * a + b;
            }
        });
    (
        output,
        mean.iter().map(|&m| m as f32).collect(),
        variance.iter().map(|&v| v as f32).collect(),
    )
}

/// Gradients `(dx, dgamma, dbeta)` of training-mode batch norm.
pub fn backward_kernel(
    x: &[f32],
    extents: (usize, usize, usize),
    gamma: &[f32],
    mean: &[f32],
    variance: &[f32],
    epsilon: f64,
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (batch, channels, pixels) = extents;
    let count = (batch * pixels) as f64;
    let inv_std: Vec<f32> = variance
        .iter()
        .map(|&v| (1.0 / (v as f64 + epsilon).sqrt()) as f32)
        .collect();
    // Σ dy and Σ dy·(x − mean) per channel, planes read in place.
    let sums: Vec<[f64; 2]> = (0..channels)
        .into_par_iter()
        .map(|channel| {
            let (mut sum_dy, mut sum_dy_centred) = (0.0f64, 0.0f64);
            let m = mean[channel];
            for image in 0..batch {
                let start = (image * channels + channel) * pixels;
                let (g, v) = (&dy[start..start + pixels], &x[start..start + pixels]);
                let (mut s, mut c) = (0.0f32, 0.0f32);
                for (&g, &v) in g.iter().zip(v) {
                    s += g;
                    c += g * (v - m);
                }
                sum_dy += s as f64;
                sum_dy_centred += c as f64;
            }
            [sum_dy, sum_dy_centred]
        })
        .collect();
    let dbeta: Vec<f32> = sums.iter().map(|[s, _]| *s as f32).collect();
    let dgamma: Vec<f32> = sums
        .iter()
        .zip(&inv_std)
        .map(|([_, c], &i)| (*c * i as f64) as f32)
        .collect();
    // dx = γ·σ⁻¹·(dy − mean(dy) − x̂·mean(dy·x̂)), x̂ = (x − μ)·σ⁻¹.
    let coefficients: Vec<[f32; 3]> = (0..channels)
        .map(|c| {
            let i = inv_std[c] as f64;
            let a = gamma[c] as f64 * i;
            let mean_dy = sums[c][0] / count;
            let mean_dy_xhat = sums[c][1] * i / count;
            // dx = a·dy − a·mean_dy − a·i·mean_dy_xhat·(x − μ) = a·dy + b·x + d
            let b = -a * i * mean_dy_xhat;
            let d = -a * mean_dy - b * mean[c] as f64;
            [a as f32, b as f32, d as f32]
        })
        .collect();
    let mut dx = vec![0.0; x.len()];
    dx.par_chunks_mut(pixels.max(1))
        .zip(
            dy.par_chunks(pixels.max(1))
                .zip(x.par_chunks(pixels.max(1))),
        )
        .enumerate()
        .for_each(|(plane, (out, (g, v)))| {
            let [a, b, d] = coefficients[plane % channels];
            for ((o, &g), &v) in out.iter_mut().zip(g).zip(v) {
                *o = a * g + b * v + d;
            }
        });
    (dx, dgamma, dbeta)
}

fn flex_forward(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    epsilon: f64,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let (x, gamma, beta) = (contiguous(x), contiguous(gamma), contiguous(beta));
    let extents = extents(&x);
    let (output, mean, variance) =
        forward_kernel(values(&x), extents, values(&gamma), values(&beta), epsilon);
    let channels = Shape::new([extents.1]);
    (
        flex_tensor(output, x.layout().shape().clone()),
        flex_tensor(mean, channels.clone()),
        flex_tensor(variance, channels),
    )
}

impl NormBackend for Flex {
    fn bestiary_batch_norm_train(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        flex_forward(x, gamma, beta, epsilon)
    }
}

/// The backward step: x and γ checkpointed, the batch statistics kept as computed.
#[derive(Debug)]
struct BatchNormBackward;

impl Backward<Flex, 3> for BatchNormBackward {
    type State = (NodeId, NodeId, FlexTensor, FlexTensor, f64);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [x_node, gamma_node, beta_node] = ops.parents.map(|node| node.map(|node| node.id));
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        let (x, gamma, mean, variance, epsilon) = ops.state;
        let x = contiguous(checkpointer.retrieve_node_output::<FlexTensor>(x));
        let gamma = contiguous(checkpointer.retrieve_node_output::<FlexTensor>(gamma));
        let extents = extents(&x);
        let (dx, dgamma, dbeta) = backward_kernel(
            values(&x),
            extents,
            values(&gamma),
            values(&contiguous(mean)),
            values(&contiguous(variance)),
            epsilon,
            values(&dy),
        );
        let channels = Shape::new([extents.1]);
        if let Some(node) = x_node {
            grads.register::<Flex>(node, flex_tensor(dx, x.layout().shape().clone()));
        }
        if let Some(node) = gamma_node {
            grads.register::<Flex>(node, flex_tensor(dgamma, channels.clone()));
        }
        if let Some(node) = beta_node {
            grads.register::<Flex>(node, flex_tensor(dbeta, channels));
        }
    }
}

impl<C: CheckpointStrategy> NormBackend for Autodiff<Flex, C> {
    fn bestiary_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        match BatchNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let (x_state, gamma_state) = (prep.checkpoint(&x), prep.checkpoint(&gamma));
                let (output, mean, variance) = flex_forward(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    epsilon,
                );
                let state = (
                    x_state,
                    gamma_state,
                    mean.clone(),
                    variance.clone(),
                    epsilon,
                );
                let output = prep.finish(state, output);
                (
                    output,
                    FloatTensor::<Self>::new(mean),
                    FloatTensor::<Self>::new(variance),
                )
            }
            OpsKind::UnTracked(prep) => {
                let (output, mean, variance) = flex_forward(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    epsilon,
                );
                (
                    prep.finish(output),
                    FloatTensor::<Self>::new(mean),
                    FloatTensor::<Self>::new(variance),
                )
            }
        }
    }
}

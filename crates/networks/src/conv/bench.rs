//! Per-layer timing of the three convolution passes, Bestiary's kernels against the route
//! burn-flex takes without them: the Rust side of the bench's convolution figure.

use std::time::Instant;

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ModuleOps;
use burn::tensor::TensorData;

use super::{ConvCall, ConvGeometry, kernels};

/// Whose implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `kernels.rs`.
    Bestiary,
    /// burn-flex's forward convolution and burn's generic backward passes.
    Burn,
}

/// Which pass of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    Forward,
    InputGradient,
    WeightGradient,
}

impl Pass {
    pub const ALL: [Pass; 3] = [Pass::Forward, Pass::InputGradient, Pass::WeightGradient];

    pub fn name(self) -> &'static str {
        match self {
            Pass::Forward => "forward",
            Pass::InputGradient => "input-gradient",
            Pass::WeightGradient => "weight-gradient",
        }
    }
}

/// Random-looking but fixed values, so both routes multiply the same numbers.
fn values(len: usize, salt: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i + salt) * 2_654_435_761) % 1999) as f32 / 1999.0 - 0.5)
        .collect()
}

fn flex(values: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// The median seconds of `repeats` runs of `pass` of `call` by `route`, after one warm-up run.
pub fn time_pass(call: &ConvCall, route: Route, pass: Pass, repeats: usize) -> f64 {
    let geometry = ConvGeometry::new(call.x, call.weight, &call.options);
    let x = values(geometry.batch * geometry.image_len(), 1);
    let weight = values(geometry.weight_len(), 2);
    let dy = values(geometry.batch * geometry.output_len(), 3);
    let out_shape = [
        geometry.batch,
        geometry.out_channels,
        geometry.out_h,
        geometry.out_w,
    ];
    // Cloning a tensor only bumps a reference count: burn's route is timed without copies.
    let (x_tensor, weight_tensor) = (flex(x.clone(), call.x), flex(weight.clone(), call.weight));
    let dy_tensor = flex(dy.clone(), out_shape);
    let run = || match (route, pass) {
        (Route::Bestiary, Pass::Forward) => {
            let mut out = vec![0.0; dy.len()];
            kernels::forward(&geometry, &x, &weight, None, &mut out);
            std::hint::black_box(out);
        }
        (Route::Bestiary, Pass::InputGradient) => {
            std::hint::black_box(kernels::backward_input(&geometry, &weight, &dy));
        }
        (Route::Bestiary, Pass::WeightGradient) => {
            let mut dw = vec![0.0; weight.len()];
            kernels::backward_weight(&geometry, &x, &dy, &mut dw);
            std::hint::black_box(dw);
        }
        (Route::Burn, Pass::Forward) => {
            std::hint::black_box(Flex::conv2d(
                x_tensor.clone(),
                weight_tensor.clone(),
                None,
                call.options.clone(),
            ));
        }
        (Route::Burn, Pass::InputGradient) => {
            std::hint::black_box(Flex::conv2d_x_backward(
                x_tensor.clone(),
                weight_tensor.clone(),
                dy_tensor.clone(),
                call.options.clone(),
            ));
        }
        (Route::Burn, Pass::WeightGradient) => {
            std::hint::black_box(Flex::conv2d_weight_backward(
                x_tensor.clone(),
                weight_tensor.clone(),
                dy_tensor.clone(),
                call.options.clone(),
            ));
        }
    };
    run();
    let mut samples: Vec<f64> = (0..repeats.max(1))
        .map(|_| {
            let started = Instant::now();
            run();
            started.elapsed().as_secs_f64()
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// One distinct convolution of a network, with how many times one forward pass runs it.
#[derive(Debug, Clone)]
pub struct NetworkLayer {
    pub call: ConvCall,
    pub count: usize,
    /// The network's first convolution, whose input gradient training never computes.
    pub first: bool,
}

/// The distinct convolutions `network` runs on `batch` images of `image_size` pixels, read
/// from one forward pass of the network itself (in order of first use).
pub fn network_layers(
    network: &crate::ArchitectureConfig,
    classes: usize,
    image_size: usize,
    batch: usize,
) -> Vec<NetworkLayer> {
    use burn::prelude::*;
    let device = Device::flex();
    let model = network.init_seeded(classes, &device, 0);
    let images = Tensor::<4>::zeros([batch, 3, image_size, image_size], &device);
    let (_, calls) = super::record_calls(|| model.forward(images));
    let mut layers: Vec<NetworkLayer> = Vec::new();
    for (index, call) in calls.into_iter().enumerate() {
        match layers.iter_mut().find(|layer| layer.call == call) {
            Some(layer) => layer.count += 1,
            None => layers.push(NetworkLayer {
                call,
                count: 1,
                first: index == 0,
            }),
        }
    }
    layers
}

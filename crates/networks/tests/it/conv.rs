//! Bestiary's convolution (forward, input, weight and bias gradients) against burn's own
//! convolution and against finite differences, on random shapes: strides, asymmetric padding,
//! dilation, groups, depthwise, odd sizes, batches that split into runs of several images and
//! a batch of one (threaded GEMMs).

use bestiary_networks::conv::kernel_conv2d as conv2d;
use burn::prelude::*;
use burn::tensor::ops::ConvOptions;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone)]
struct Case {
    x: [usize; 4],
    weight: [usize; 4],
    bias: bool,
    options: ConvOptions<2>,
}

fn random_values(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

fn random_case(rng: &mut ChaCha8Rng) -> Case {
    loop {
        let groups = [1, 1, 1, 2, 3][rng.random_range(0..5)];
        let depthwise = rng.random_bool(0.2);
        let (in_channels, out_channels, groups) = if depthwise {
            let c = rng.random_range(1..=6);
            (c, c, c)
        } else {
            (
                groups * rng.random_range(1..=4),
                groups * rng.random_range(1..=4),
                groups,
            )
        };
        let kernel = [rng.random_range(1..=5), rng.random_range(1..=4)];
        let stride = [rng.random_range(1..=3), rng.random_range(1..=2)];
        let dilation = [rng.random_range(1..=2), rng.random_range(1..=2)];
        let padding = [
            (rng.random_range(0..=2), rng.random_range(0..=2)),
            (rng.random_range(0..=2), rng.random_range(0..=1)),
        ];
        let batch = [1, 2, 3, 5, 9][rng.random_range(0..5)];
        let (h, w) = (rng.random_range(1..=13), rng.random_range(1..=11));
        let fits = |axis: usize, size: usize| {
            size + padding[axis].0 + padding[axis].1 > dilation[axis] * (kernel[axis] - 1)
        };
        if !(fits(0, h) && fits(1, w)) {
            continue;
        }
        return Case {
            x: [batch, in_channels, h, w],
            weight: [out_channels, in_channels / groups, kernel[0], kernel[1]],
            bias: rng.random_bool(0.5),
            options: ConvOptions::new_with_padding(stride, padding, dilation, groups),
        };
    }
}

/// The inputs of one case as leaf tensors that track gradients, and a random output weighting
/// that turns the output into a scalar loss.
struct Inputs {
    x: Vec<f32>,
    weight: Vec<f32>,
    bias: Vec<f32>,
    weighting: Vec<f32>,
}

impl Inputs {
    fn new(case: &Case, rng: &mut ChaCha8Rng) -> Self {
        let reference = reference_forward(case, &Self::zeros(case));
        Self {
            x: random_values(rng, case.x.iter().product()),
            weight: random_values(rng, case.weight.iter().product()),
            bias: random_values(rng, case.weight[0]),
            weighting: random_values(rng, reference.dims().iter().product()),
        }
    }

    fn zeros(case: &Case) -> Self {
        Self {
            x: vec![0.0; case.x.iter().product()],
            weight: vec![0.0; case.weight.iter().product()],
            bias: vec![0.0; case.weight[0]],
            weighting: Vec::new(),
        }
    }
}

fn device() -> Device {
    Device::flex().autodiff()
}

type Conv = fn(Tensor<4>, Tensor<4>, Option<Tensor<1>>, ConvOptions<2>) -> Tensor<4>;

fn reference_forward(case: &Case, inputs: &Inputs) -> Tensor<4> {
    let device = Device::flex();
    burn::tensor::module::conv2d(
        Tensor::from_data(TensorData::new(inputs.x.clone(), case.x), &device),
        Tensor::from_data(TensorData::new(inputs.weight.clone(), case.weight), &device),
        case.bias.then(|| {
            Tensor::from_data(
                TensorData::new(inputs.bias.clone(), [case.weight[0]]),
                &device,
            )
        }),
        case.options.clone(),
    )
}

/// Output, and the gradients of `sum(output · weighting)` for x, weight and bias.
fn run(
    conv: Conv,
    case: &Case,
    inputs: &Inputs,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    let device = device();
    let x =
        Tensor::<4>::from_data(TensorData::new(inputs.x.clone(), case.x), &device).require_grad();
    let weight =
        Tensor::<4>::from_data(TensorData::new(inputs.weight.clone(), case.weight), &device)
            .require_grad();
    let bias = case.bias.then(|| {
        Tensor::<1>::from_data(
            TensorData::new(inputs.bias.clone(), [case.weight[0]]),
            &device,
        )
        .require_grad()
    });
    let out = conv(
        x.clone(),
        weight.clone(),
        bias.clone(),
        case.options.clone(),
    );
    let weighting = Tensor::<4>::from_data(
        TensorData::new(inputs.weighting.clone(), out.dims()),
        &device,
    );
    let grads = (out.clone() * weighting).sum().backward();
    let to_vec = |data: TensorData| data.try_to_vec::<f32>().unwrap();
    (
        to_vec(out.into_data()),
        to_vec(x.grad(&grads).expect("x gradient").into_data()),
        to_vec(weight.grad(&grads).expect("weight gradient").into_data()),
        bias.map(|bias| to_vec(bias.grad(&grads).expect("bias gradient").into_data())),
    )
}

fn assert_close(what: &str, case: &Case, ours: &[f32], reference: &[f32]) {
    assert_eq!(ours.len(), reference.len(), "{what} length, {case:?}");
    let scale = reference.iter().fold(1.0f32, |max, v| max.max(v.abs()));
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * scale,
            "{what}[{i}]: ours {a}, burn {b} (scale {scale}), {case:?}"
        );
    }
}

#[test]
fn forward_and_gradients_match_burns_convolution_on_random_shapes() {
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    for _ in 0..120 {
        let case = random_case(&mut rng);
        let inputs = Inputs::new(&case, &mut rng);
        let ours = run(conv2d, &case, &inputs);
        let burn = run(burn::tensor::module::conv2d, &case, &inputs);
        assert_close("output", &case, &ours.0, &burn.0);
        assert_close("x gradient", &case, &ours.1, &burn.1);
        assert_close("weight gradient", &case, &ours.2, &burn.2);
        if let (Some(ours), Some(burn)) = (&ours.3, &burn.3) {
            assert_close("bias gradient", &case, ours, burn);
        }
    }
}

/// The loss is linear in each input, so a central difference is exact up to rounding: the
/// gradients are checked against arithmetic, not only against burn.
#[test]
fn gradients_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(61);
    for _ in 0..12 {
        let case = random_case(&mut rng);
        let inputs = Inputs::new(&case, &mut rng);
        let (_, dx, dw, db) = run(conv2d, &case, &inputs);
        let loss = |inputs: &Inputs| -> f64 {
            let out = run(conv2d, &case, inputs).0;
            out.iter()
                .zip(&inputs.weighting)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum()
        };
        let step = 0.5f32;
        let mut probe = |pick: fn(&mut Inputs) -> &mut Vec<f32>, gradient: &[f32], what: &str| {
            for _ in 0..4 {
                let index = rng.random_range(0..gradient.len());
                let mut plus = clone_inputs(&inputs);
                pick(&mut plus)[index] += step;
                let mut minus = clone_inputs(&inputs);
                pick(&mut minus)[index] -= step;
                let numeric = (loss(&plus) - loss(&minus)) / (2.0 * step as f64);
                let analytic = gradient[index] as f64;
                assert!(
                    (numeric - analytic).abs() <= 1e-3 * numeric.abs().max(1.0),
                    "{what}[{index}]: finite difference {numeric}, gradient {analytic}, {case:?}"
                );
            }
        };
        probe(|inputs| &mut inputs.x, &dx, "x");
        probe(|inputs| &mut inputs.weight, &dw, "weight");
        if let Some(db) = db {
            probe(|inputs| &mut inputs.bias, &db, "bias");
        }
    }
}

fn clone_inputs(inputs: &Inputs) -> Inputs {
    Inputs {
        x: inputs.x.clone(),
        weight: inputs.weight.clone(),
        bias: inputs.bias.clone(),
        weighting: inputs.weighting.clone(),
    }
}

/// The shapes the networks use most, at a batch that splits over threads.
#[test]
fn network_shapes_match_burn() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (x, weight, stride, pad) in [
        ([8, 3, 32, 32], [16, 3, 3, 3], 1, 1),
        ([8, 16, 16, 16], [32, 16, 3, 3], 2, 1),
        ([8, 32, 8, 8], [64, 32, 1, 1], 2, 0),
        ([8, 32, 4, 4], [32, 32, 1, 1], 1, 0),
        ([4, 3, 40, 40], [8, 3, 7, 7], 2, 3),
    ] {
        let case = Case {
            x,
            weight,
            bias: false,
            options: ConvOptions::new([stride; 2], [pad; 2], [1, 1], 1),
        };
        let inputs = Inputs::new(&case, &mut rng);
        let ours = run(conv2d, &case, &inputs);
        let burn = run(burn::tensor::module::conv2d, &case, &inputs);
        assert_close("output", &case, &ours.0, &burn.0);
        assert_close("x gradient", &case, &ours.1, &burn.1);
        assert_close("weight gradient", &case, &ours.2, &burn.2);
    }
}

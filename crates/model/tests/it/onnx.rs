//! Runs exported ONNX graphs in tract and checks them against naive reference implementations.

use bestiary_model::onnx::proto::ModelProto;
use bestiary_model::onnx::{GraphBuilder, Value, describe, fold_batch_norm};
use prost::Message as _;
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use tract_onnx::prelude::*;

const TOLERANCE: f32 = 1e-4;

/// A dense row-major tensor (NCHW or N×F) for the reference implementation.
#[derive(Clone, Debug)]
struct Nd {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Nd {
    fn random(rng: &mut ChaCha8Rng, shape: &[usize], range: f32) -> Self {
        Self {
            shape: shape.to_vec(),
            data: random_vec(rng, shape.iter().product(), range),
        }
    }

    fn nchw(&self) -> [usize; 4] {
        match self.shape[..] {
            [n, c, h, w] => [n, c, h, w],
            ref other => panic!("expected an NCHW tensor, got {other:?}"),
        }
    }

    fn at(&self, n: usize, c: usize, y: usize, x: usize) -> f32 {
        let [_, channels, height, width] = self.nchw();
        self.data[((n * channels + c) * height + y) * width + x]
    }

    fn map(&self, f: impl Fn(f32) -> f32) -> Self {
        Self {
            shape: self.shape.clone(),
            data: self.data.iter().map(|&v| f(v)).collect(),
        }
    }
}

fn random_vec(rng: &mut ChaCha8Rng, len: usize, range: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-range..range)).collect()
}

/// Reference Conv: dilation 1, zero padding, pads `[top, left, bottom, right]`.
fn conv(
    x: &Nd,
    weight: &[f32],
    [out_channels, group_channels, kernel_h, kernel_w]: [usize; 4],
    bias: Option<&[f32]>,
    [stride_h, stride_w]: [usize; 2],
    [top, left, bottom, right]: [usize; 4],
    group: usize,
) -> Nd {
    let [batch, channels, height, width] = x.nchw();
    assert_eq!(channels, group_channels * group);
    let out_h = (height + top + bottom - kernel_h) / stride_h + 1;
    let out_w = (width + left + right - kernel_w) / stride_w + 1;
    let outputs_per_group = out_channels / group;
    let mut data = Vec::with_capacity(batch * out_channels * out_h * out_w);
    for n in 0..batch {
        for o in 0..out_channels {
            let first_channel = o / outputs_per_group * group_channels;
            for oy in 0..out_h {
                for ox in 0..out_w {
                    let mut sum = bias.map_or(0.0, |b| b[o]);
                    for i in 0..group_channels {
                        for ky in 0..kernel_h {
                            for kx in 0..kernel_w {
                                let (Some(y), Some(x_)) = (
                                    (oy * stride_h + ky).checked_sub(top),
                                    (ox * stride_w + kx).checked_sub(left),
                                ) else {
                                    continue;
                                };
                                if y >= height || x_ >= width {
                                    continue;
                                }
                                let w = weight
                                    [((o * group_channels + i) * kernel_h + ky) * kernel_w + kx];
                                sum += w * x.at(n, first_channel + i, y, x_);
                            }
                        }
                    }
                    data.push(sum);
                }
            }
        }
    }
    Nd {
        shape: vec![batch, out_channels, out_h, out_w],
        data,
    }
}

/// Reference MaxPool: padded cells never win.
fn max_pool(
    x: &Nd,
    [kernel_h, kernel_w]: [usize; 2],
    [stride_h, stride_w]: [usize; 2],
    [top, left, bottom, right]: [usize; 4],
) -> Nd {
    let [batch, channels, height, width] = x.nchw();
    let out_h = (height + top + bottom - kernel_h) / stride_h + 1;
    let out_w = (width + left + right - kernel_w) / stride_w + 1;
    let mut data = Vec::with_capacity(batch * channels * out_h * out_w);
    for n in 0..batch {
        for c in 0..channels {
            for oy in 0..out_h {
                for ox in 0..out_w {
                    let mut max = f32::NEG_INFINITY;
                    for ky in 0..kernel_h {
                        for kx in 0..kernel_w {
                            let (Some(y), Some(x_)) = (
                                (oy * stride_h + ky).checked_sub(top),
                                (ox * stride_w + kx).checked_sub(left),
                            ) else {
                                continue;
                            };
                            if y < height && x_ < width {
                                max = max.max(x.at(n, c, y, x_));
                            }
                        }
                    }
                    data.push(max);
                }
            }
        }
    }
    Nd {
        shape: vec![batch, channels, out_h, out_w],
        data,
    }
}

/// Reference GlobalAveragePool followed by Flatten: N×C.
fn global_average_pool_flat(x: &Nd) -> Nd {
    let [batch, channels, height, width] = x.nchw();
    let area = height * width;
    Nd {
        shape: vec![batch, channels],
        data: x
            .data
            .chunks(area)
            .map(|plane| plane.iter().sum::<f32>() / area as f32)
            .collect(),
    }
}

fn flatten(x: &Nd) -> Nd {
    Nd {
        shape: vec![x.shape[0], x.shape[1..].iter().product()],
        data: x.data.clone(),
    }
}

/// Reference Gemm with W as [in, out].
fn gemm(
    x: &Nd,
    weight: &[f32],
    in_features: usize,
    out_features: usize,
    bias: Option<&[f32]>,
) -> Nd {
    assert_eq!(x.shape[1], in_features);
    let batch = x.shape[0];
    let mut data = Vec::with_capacity(batch * out_features);
    for row in x.data.chunks(in_features) {
        for o in 0..out_features {
            let dot: f32 = (0..in_features)
                .map(|i| row[i] * weight[i * out_features + o])
                .sum();
            data.push(dot + bias.map_or(0.0, |b| b[o]));
        }
    }
    Nd {
        shape: vec![batch, out_features],
        data,
    }
}

fn relu(x: &Nd) -> Nd {
    x.map(|v| v.max(0.0))
}

fn clip(x: &Nd, min: f32, max: f32) -> Nd {
    x.map(|v| v.clamp(min, max))
}

fn add(a: &Nd, b: &Nd) -> Nd {
    assert_eq!(a.shape, b.shape);
    Nd {
        shape: a.shape.clone(),
        data: a.data.iter().zip(&b.data).map(|(x, y)| x + y).collect(),
    }
}

/// Reference Softmax over the last axis of an N×F tensor.
fn softmax(x: &Nd) -> Nd {
    let features = x.shape[1];
    let data = x
        .data
        .chunks(features)
        .flat_map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
            let total: f32 = exps.iter().sum();
            exps.into_iter().map(move |e| e / total)
        })
        .collect();
    Nd {
        shape: x.shape.clone(),
        data,
    }
}

/// Parses and optimises a model, as the serving engines do.
fn load(bytes: &[u8], input_fact: Option<&[usize]>) -> Arc<TypedRunnableModel> {
    let mut model = tract_onnx::onnx()
        .model_for_read(&mut &*bytes)
        .expect("tract parses the model");
    if let Some(shape) = input_fact {
        model = model
            .with_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), shape))
            .expect("input fact applies");
    }
    model
        .into_optimized()
        .expect("tract optimises the model")
        .into_runnable()
        .expect("tract plans the model")
}

fn run(model: &Arc<TypedRunnableModel>, input: &Nd) -> Vec<Nd> {
    let tensor = Tensor::from_shape(&input.shape, &input.data).expect("input tensor");
    model
        .run(tvec!(tensor.into()))
        .expect("tract runs the model")
        .iter()
        .map(|output| {
            let view = output.to_plain_array_view::<f32>().expect("float32 output");
            Nd {
                shape: view.shape().to_vec(),
                data: view.iter().copied().collect(),
            }
        })
        .collect()
}

/// Runs `bytes` with the input's concrete shape fixed up front and compares every output.
fn check(bytes: &[u8], input: &Nd, expected: &[&Nd]) {
    let outputs = run(&load(bytes, Some(&input.shape)), input);
    assert_close(&outputs, expected);
}

fn assert_close(outputs: &[Nd], expected: &[&Nd]) {
    assert_eq!(outputs.len(), expected.len(), "number of outputs");
    for (index, (actual, expected)) in outputs.iter().zip(expected).enumerate() {
        assert_eq!(actual.shape, expected.shape, "shape of output {index}");
        let max_diff = actual
            .data
            .iter()
            .zip(&expected.data)
            .map(|(a, e)| (a - e).abs())
            .fold(0.0, f32::max);
        assert!(
            max_diff < TOLERANCE,
            "output {index} differs from the reference by {max_diff}"
        );
    }
}

/// Weights and bias of one conv layer, generated and kept for the reference.
struct ConvLayer {
    weight: Vec<f32>,
    shape: [usize; 4],
    bias: Option<Vec<f32>>,
}

impl ConvLayer {
    fn random(rng: &mut ChaCha8Rng, shape: [usize; 4], with_bias: bool) -> Self {
        // Scaled by fan-in like a trained net, so activations stay O(1) through several layers.
        let fan_in = shape[1] * shape[2] * shape[3];
        let range = (3.0 / fan_in as f32).sqrt();
        Self {
            weight: random_vec(rng, shape.iter().product(), range),
            shape,
            bias: with_bias.then(|| random_vec(rng, shape[0], 0.5)),
        }
    }

    fn export(
        &self,
        graph: &mut GraphBuilder,
        x: &Value,
        strides: [usize; 2],
        pads: [usize; 4],
        group: usize,
    ) -> Value {
        graph.conv(
            x,
            &self.weight,
            self.shape,
            self.bias.as_deref(),
            strides.map(to_i64),
            pads.map(to_i64),
            to_i64(group),
        )
    }

    fn reference(&self, x: &Nd, strides: [usize; 2], pads: [usize; 4], group: usize) -> Nd {
        conv(
            x,
            &self.weight,
            self.shape,
            self.bias.as_deref(),
            strides,
            pads,
            group,
        )
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).expect("small test size")
}

const CLASSES: usize = 5;

/// The seed CNN: two conv3×3 + ReLU + maxpool2 blocks, global average pool, linear head.
struct SeedCnn {
    conv1: ConvLayer,
    conv2: ConvLayer,
    head_weight: Vec<f32>,
    head_bias: Vec<f32>,
}

impl SeedCnn {
    fn random(rng: &mut ChaCha8Rng) -> Self {
        Self {
            conv1: ConvLayer::random(rng, [8, 3, 3, 3], true),
            conv2: ConvLayer::random(rng, [16, 8, 3, 3], true),
            head_weight: random_vec(rng, 16 * CLASSES, 0.5),
            head_bias: random_vec(rng, CLASSES, 0.5),
        }
    }

    fn export(&self) -> Vec<u8> {
        let mut graph = GraphBuilder::new("seed_cnn", "input", 3, 16, 16);
        let mut x = graph.input();
        for layer in [&self.conv1, &self.conv2] {
            x = layer.export(&mut graph, &x, [1, 1], [1; 4], 1);
            x = graph.relu(&x);
            x = graph.max_pool(&x, [2, 2], [2, 2], [0; 4]);
        }
        let pooled = graph.global_average_pool(&x);
        let features = graph.flatten(&pooled);
        let logits = graph.gemm(
            &features,
            &self.head_weight,
            16,
            CLASSES,
            Some(&self.head_bias),
        );
        let probabilities = graph.softmax(&logits, 1);
        graph.output(&probabilities, "probabilities", to_i64(CLASSES));
        graph.output(&logits, "logits", to_i64(CLASSES));
        graph.output(&features, "features", 16);
        graph
            .finish("0.1.0", &[("classes", "a,b,c,d,e")])
            .expect("export succeeds")
    }

    /// Reference outputs in export order: probabilities, logits, features.
    fn reference(&self, input: &Nd) -> [Nd; 3] {
        let mut x = input.clone();
        for layer in [&self.conv1, &self.conv2] {
            x = layer.reference(&x, [1, 1], [1; 4], 1);
            x = relu(&x);
            x = max_pool(&x, [2, 2], [2, 2], [0; 4]);
        }
        let features = global_average_pool_flat(&x);
        let logits = gemm(
            &features,
            &self.head_weight,
            16,
            CLASSES,
            Some(&self.head_bias),
        );
        [softmax(&logits), logits, features]
    }
}

#[test]
fn seed_cnn_matches_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let model = SeedCnn::random(&mut rng);
    let input = Nd::random(&mut rng, &[2, 3, 16, 16], 1.0);
    let [probabilities, logits, features] = model.reference(&input);
    check(
        &model.export(),
        &input,
        &[&probabilities, &logits, &features],
    );
}

#[test]
fn symbolic_batch_runs_batch_1_and_3_with_one_plan() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let model = SeedCnn::random(&mut rng);
    let runnable = load(&model.export(), None);
    for batch in [1, 3] {
        let input = Nd::random(&mut rng, &[batch, 3, 16, 16], 1.0);
        let [probabilities, logits, features] = model.reference(&input);
        assert_close(
            &run(&runnable, &input),
            &[&probabilities, &logits, &features],
        );
    }
}

#[test]
fn residual_blocks_match_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let stem = ConvLayer::random(&mut rng, [4, 3, 3, 3], true);
    // Identity skip: 4 → 4 channels at 8×8.
    let a1 = ConvLayer::random(&mut rng, [4, 4, 3, 3], true);
    let a2 = ConvLayer::random(&mut rng, [4, 4, 3, 3], false);
    // Projection skip: 4 → 8 channels, stride 2, through a 1×1 conv on the skip path.
    let b1 = ConvLayer::random(&mut rng, [8, 4, 3, 3], true);
    let b2 = ConvLayer::random(&mut rng, [8, 8, 3, 3], true);
    let projection = ConvLayer::random(&mut rng, [8, 4, 1, 1], false);

    let mut graph = GraphBuilder::new("resnet", "pixels", 3, 16, 16);
    let pixels = graph.input();
    let x = stem.export(&mut graph, &pixels, [1, 1], [1; 4], 1);
    let x = graph.relu(&x);
    let x = graph.max_pool(&x, [3, 3], [2, 2], [1; 4]);
    let y = a1.export(&mut graph, &x, [1, 1], [1; 4], 1);
    let y = graph.relu(&y);
    let y = a2.export(&mut graph, &y, [1, 1], [1; 4], 1);
    let y = graph.add(&y, &x);
    let x = graph.relu(&y);
    let y = b1.export(&mut graph, &x, [2, 2], [1; 4], 1);
    let y = graph.relu(&y);
    let y = b2.export(&mut graph, &y, [1, 1], [1; 4], 1);
    let skip = projection.export(&mut graph, &x, [2, 2], [0; 4], 1);
    let y = graph.add(&y, &skip);
    let y = graph.relu(&y);
    let features = graph.flatten(&y);
    graph.output(&features, "features", 8 * 4 * 4);
    let bytes = graph.finish("test", &[]).expect("export succeeds");

    let input = Nd::random(&mut rng, &[2, 3, 16, 16], 1.0);
    let x = relu(&stem.reference(&input, [1, 1], [1; 4], 1));
    let x = max_pool(&x, [3, 3], [2, 2], [1; 4]);
    let y = relu(&a1.reference(&x, [1, 1], [1; 4], 1));
    let y = a2.reference(&y, [1, 1], [1; 4], 1);
    let x = relu(&add(&y, &x));
    let y = relu(&b1.reference(&x, [2, 2], [1; 4], 1));
    let y = b2.reference(&y, [1, 1], [1; 4], 1);
    let skip = projection.reference(&x, [2, 2], [0; 4], 1);
    let expected = flatten(&relu(&add(&y, &skip)));
    check(&bytes, &input, &[&expected]);
}

#[test]
fn strided_depthwise_conv_with_asymmetric_pads_and_relu6_matches_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let channels = 6;
    let depthwise = ConvLayer {
        weight: random_vec(&mut rng, channels * 9, 1.5),
        shape: [channels, 1, 3, 3],
        bias: Some(random_vec(&mut rng, channels, 1.0)),
    };
    let head_weight = random_vec(&mut rng, channels * 4 * 4 * 3, 0.5);
    // Pads [top, left, bottom, right] = [0, 0, 1, 1]: TensorFlow-style "same" padding.
    let pads = [0, 0, 1, 1];

    let mut graph = GraphBuilder::new("mobile", "input", to_i64(channels), 9, 9);
    let pixels = graph.input();
    let x = depthwise.export(&mut graph, &pixels, [2, 2], pads, channels);
    let x = graph.clip(&x, 0.0, 6.0);
    let features = graph.flatten(&x);
    let head = graph.gemm(&features, &head_weight, channels * 16, 3, None);
    graph.output(&features, "features", to_i64(channels * 16));
    graph.output(&head, "head", 3);
    let bytes = graph.finish("test", &[]).expect("export succeeds");

    let input = Nd::random(&mut rng, &[2, channels, 9, 9], 3.0);
    let x = clip(
        &depthwise.reference(&input, [2, 2], pads, channels),
        0.0,
        6.0,
    );
    let features = flatten(&x);
    assert_eq!(features.shape, [2, channels * 16]);
    assert!(
        features.data.contains(&0.0) && features.data.contains(&6.0),
        "inputs exercise both clip bounds"
    );
    let head = gemm(&features, &head_weight, channels * 16, 3, None);
    check(&bytes, &input, &[&features, &head]);
}

#[test]
fn folded_batch_norm_equals_conv_then_batch_norm() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let out_channels = 6;
    let eps = 1e-5;
    let gamma = random_vec(&mut rng, out_channels, 2.0);
    let beta = random_vec(&mut rng, out_channels, 1.0);
    let mean = random_vec(&mut rng, out_channels, 1.0);
    let var: Vec<f32> = (0..out_channels)
        .map(|_| rng.random_range(0.1..3.0))
        .collect();
    let input = Nd::random(&mut rng, &[2, 3, 7, 7], 1.0);

    for with_bias in [true, false] {
        let layer = ConvLayer::random(&mut rng, [out_channels, 3, 3, 3], with_bias);
        let conv_out = layer.reference(&input, [1, 1], [1; 4], 1);
        let plane = 7 * 7;
        let batch_norm = Nd {
            shape: conv_out.shape.clone(),
            data: conv_out
                .data
                .iter()
                .enumerate()
                .map(|(index, &y)| {
                    let c = index / plane % out_channels;
                    gamma[c] * (y - mean[c]) / (var[c] + eps).sqrt() + beta[c]
                })
                .collect(),
        };

        let (weight, bias) = fold_batch_norm(
            &layer.weight,
            layer.shape,
            layer.bias.as_deref(),
            &gamma,
            &beta,
            &mean,
            &var,
            eps,
        )
        .expect("lengths match");
        let folded = ConvLayer {
            weight,
            shape: layer.shape,
            bias: Some(bias),
        };
        assert_close(
            &[folded.reference(&input, [1, 1], [1; 4], 1)],
            &[&batch_norm],
        );

        // And through tract, as the folded conv will actually be served.
        let mut graph = GraphBuilder::new("folded", "input", 3, 7, 7);
        let pixels = graph.input();
        let x = folded.export(&mut graph, &pixels, [1, 1], [1; 4], 1);
        let x = graph.flatten(&x);
        graph.output(&x, "features", to_i64(out_channels * plane));
        let bytes = graph.finish("test", &[]).expect("export succeeds");
        check(&bytes, &input, &[&flatten(&batch_norm)]);
    }
}

#[test]
fn model_header_and_metadata_round_trip() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let bytes = SeedCnn::random(&mut rng).export();

    let model = ModelProto::decode(bytes.as_slice()).expect("valid protobuf");
    assert_eq!(model.ir_version, 8);
    assert_eq!(model.producer_name, "bestiary");
    assert_eq!(model.producer_version, "0.1.0");
    assert_eq!(model.opset_import.len(), 1);
    assert_eq!(model.opset_import[0].domain, "");
    assert_eq!(model.opset_import[0].version, 13);
    let metadata: Vec<(&str, &str)> = model
        .metadata_props
        .iter()
        .map(|entry| (entry.key.as_str(), entry.value.as_str()))
        .collect();
    assert_eq!(metadata, [("classes", "a,b,c,d,e")]);

    let text = describe(&bytes).expect("describe decodes the model");
    for line in [
        "model `seed_cnn` by bestiary 0.1.0, ir_version 8, opset ai.onnx 13",
        "input  input: float32[N, 3, 16, 16]",
        "node   conv_0: Conv(input, conv_0.weight, conv_0.bias) -> conv_0",
        "node   gemm_0: Gemm(flatten_0, gemm_0.weight, gemm_0.bias) -> gemm_0",
        "node   logits: Identity(gemm_0) -> logits",
        "output probabilities: float32[N, 5]",
        "output features: float32[N, 16]",
        "metadata classes = a,b,c,d,e",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
}

#[test]
fn fp16_weights_halve_the_file_and_keep_the_outputs() {
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    let first = ConvLayer::random(&mut rng, [16, 3, 3, 3], true);
    let second = ConvLayer::random(&mut rng, [16, 16, 3, 3], true);
    let mut graph = GraphBuilder::new("half", "pixels", 3, 12, 12);
    let pixels = graph.input();
    let x = first.export(&mut graph, &pixels, [1, 1], [1; 4], 1);
    let x = graph.relu(&x);
    let x = second.export(&mut graph, &x, [2, 2], [1; 4], 1);
    let x = graph.clip(&x, 0.0, 6.0);
    let features = graph.flatten(&x);
    graph.output(&features, "features", 16 * 6 * 6);
    let full = graph.finish("test", &[]).expect("export succeeds");

    let (half, summary) = bestiary_model::onnx::fp16::with_fp16_weights(&full).expect("converts");
    // Both weight tensors are converted; the 16-element biases are too small to bother.
    assert_eq!(summary.converted, 2);
    assert!(summary.kept >= 2, "{summary:?}");
    assert!(
        half.len() * 10 < full.len() * 7,
        "{} vs {}",
        half.len(),
        full.len()
    );
    assert!(describe(&half).unwrap().contains("Cast("));

    let input = Nd::random(&mut rng, &[2, 3, 12, 12], 1.0);
    let expected = &run(&load(&full, None), &input)[0];
    let got = &run(&load(&half, None), &input)[0];
    let worst = expected
        .data
        .iter()
        .zip(&got.data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    // Half precision keeps ~3 significant digits of each weight; activations here are O(1).
    assert!(worst > 0.0 && worst < 1e-2, "max abs diff {worst}");
}

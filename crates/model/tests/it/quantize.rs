//! The int8 QDQ rewrite: its structure (what onnxruntime needs to fuse it), its numbers (every
//! weight within half a step of the float one), and its agreement with the float graph in tract.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bestiary_model::onnx::GraphBuilder;
use bestiary_model::onnx::fp16::with_fp16_weights;
use bestiary_model::onnx::proto::{ModelProto, NodeProto, TensorProto};
use bestiary_model::onnx::quantize::{
    ActivationParams, QuantizeError, QuantizeOptions, TensorRange, calibration_graph, float_values,
    quantize, quantize_per_channel,
};
use prost::Message as _;
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use tract_onnx::prelude::*;

const SIDE: usize = 8;
const CLASSES: usize = 5;

fn random(rng: &mut ChaCha8Rng, len: usize, range: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-range..range)).collect()
}

/// A small network with every pattern the exporter writes: a ReLU6 stem, a depthwise conv, a
/// projection with a residual Add, a MaxPool, a ReLU conv, then pooling, Flatten, the Gemm head
/// and Softmax, with `logits`, `probabilities` and `features` outputs.
fn network(seed: u64) -> Vec<u8> {
    network_with(seed, false)
}

/// [`network`], with `prior` the ImageNet prior's pattern added to the head's logits too: a
/// second classifier's Softmax, summed per class by a 0/1 Gemm with a 1e-6 bias, its Log, and a
/// diagonal Gemm weighting it.
fn network_with(seed: u64, prior: bool) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut graph = GraphBuilder::new("tiny", "input", 3, SIDE as i64, SIDE as i64);
    let input = graph.input();
    let w = random(&mut rng, 8 * 3 * 9, 0.4);
    let b = random(&mut rng, 8, 0.2);
    let stem = graph.conv(&input, &w, [8, 3, 3, 3], Some(&b), [1, 1], [1; 4], 1);
    let stem = graph.clip(&stem, 0.0, 6.0);
    let w = random(&mut rng, 8 * 9, 0.5);
    let b = random(&mut rng, 8, 0.2);
    let depthwise = graph.conv(&stem, &w, [8, 1, 3, 3], Some(&b), [1, 1], [1; 4], 8);
    let depthwise = graph.clip(&depthwise, 0.0, 6.0);
    let w = random(&mut rng, 8 * 8, 0.4);
    let b = random(&mut rng, 8, 0.1);
    let project = graph.conv(&depthwise, &w, [8, 8, 1, 1], Some(&b), [1, 1], [0; 4], 1);
    let sum = graph.add(&project, &stem);
    let pooled = graph.max_pool(&sum, [2, 2], [2, 2], [0; 4]);
    let w = random(&mut rng, 16 * 8, 0.4);
    let b = random(&mut rng, 16, 0.1);
    let wide = graph.conv(&pooled, &w, [16, 8, 1, 1], Some(&b), [1, 1], [0; 4], 1);
    let wide = graph.relu(&wide);
    let gap = graph.global_average_pool(&wide);
    let features = graph.flatten(&gap);
    let w = random(&mut rng, 16 * CLASSES, 0.8);
    let b = random(&mut rng, CLASSES, 0.1);
    let mut logits = graph.gemm(&features, &w, 16, CLASSES, Some(&b));
    if prior {
        const WIDE: usize = 12;
        let w = random(&mut rng, 16 * WIDE, 0.8);
        let wide = graph.gemm(&features, &w, 16, WIDE, None);
        let wide = graph.softmax(&wide, 1);
        let membership: Vec<f32> = (0..WIDE * CLASSES)
            .map(|i| f32::from(u8::from((i / CLASSES) % CLASSES == i % CLASSES)))
            .collect();
        let summed = graph.gemm(&wide, &membership, WIDE, CLASSES, Some(&[1e-6; CLASSES]));
        let log = graph.log(&summed);
        let diagonal: Vec<f32> = (0..CLASSES * CLASSES)
            .map(|i| if i % (CLASSES + 1) == 0 { 0.9 } else { 0.0 })
            .collect();
        let weighted = graph.gemm(&log, &diagonal, CLASSES, CLASSES, None);
        logits = graph.add(&logits, &weighted);
    }
    let probabilities = graph.softmax(&logits, 1);
    graph.output(&logits, "logits", CLASSES as i64);
    graph.output(&probabilities, "probabilities", CLASSES as i64);
    graph.output(&features, "features", 16);
    graph.finish("test", &[]).expect("the network exports")
}

fn decode(bytes: &[u8]) -> ModelProto {
    ModelProto::decode(bytes).expect("ONNX decodes")
}

fn load(bytes: &[u8], batch: usize) -> Arc<TypedRunnableModel> {
    tract_onnx::onnx()
        .model_for_read(&mut &*bytes)
        .expect("tract parses the model")
        .with_input_fact(
            0,
            InferenceFact::dt_shape(f32::datum_type(), [batch, 3, SIDE, SIDE]),
        )
        .expect("input fact applies")
        .into_optimized()
        .expect("tract optimises the model")
        .into_runnable()
        .expect("tract plans the model")
}

/// Every output of `model` on `input`, flattened.
fn run(model: &Arc<TypedRunnableModel>, input: &[f32], batch: usize) -> Vec<Vec<f32>> {
    let tensor = Tensor::from_shape(&[batch, 3, SIDE, SIDE], input).expect("input tensor");
    model
        .run(tvec!(tensor.into()))
        .expect("tract runs the model")
        .iter()
        .map(|output| {
            let view = output.to_plain_array_view::<f32>().expect("float32 output");
            view.iter().copied().collect()
        })
        .collect()
}

/// Ranges measured by running the calibration graph on `batches` random batches.
fn calibrate(float: &[u8], rng: &mut ChaCha8Rng, batch: usize) -> BTreeMap<String, TensorRange> {
    let (graph, names) = calibration_graph(float).expect("calibration graph");
    let outputs: Vec<String> = decode(&graph)
        .graph
        .unwrap()
        .output
        .into_iter()
        .map(|o| o.name)
        .collect();
    let model = load(&graph, batch);
    let mut ranges = BTreeMap::new();
    for _ in 0..4 {
        let input = random(rng, batch * 3 * SIDE * SIDE, 1.0);
        for (name, values) in outputs.iter().zip(run(&model, &input, batch)) {
            if !names.contains(name) {
                continue;
            }
            let range = ranges.entry(name.clone()).or_insert(TensorRange {
                min: f32::INFINITY,
                max: f32::NEG_INFINITY,
            });
            for v in values {
                range.min = range.min.min(v);
                range.max = range.max.max(v);
            }
        }
    }
    assert_eq!(
        ranges.len(),
        names.len(),
        "every calibrated tensor is an output"
    );
    ranges
}

fn initializers(model: &ModelProto) -> HashMap<&str, &TensorProto> {
    let graph = model.graph.as_ref().unwrap();
    graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect()
}

fn producers(model: &ModelProto) -> HashMap<&str, &NodeProto> {
    let graph = model.graph.as_ref().unwrap();
    graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n)))
        .collect()
}

fn axis(node: &NodeProto) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == "axis")?.i
}

#[test]
fn every_conv_and_gemm_reads_dequantized_inputs_and_int8_per_channel_weights() {
    let float = network(1);
    let ranges = calibrate(&float, &mut ChaCha8Rng::seed_from_u64(2), 4);
    let (bytes, summary) = quantize(&float, &ranges, QuantizeOptions::default()).unwrap();
    assert_eq!(summary.weighted_nodes, 5, "{summary:?}");
    // The Add and the MaxPool.
    assert_eq!(summary.other_nodes, 2, "{summary:?}");
    // Both Clips and the Relu follow a quantised conv.
    assert_eq!(summary.folded_activations, 3, "{summary:?}");
    let model = decode(&bytes);
    let graph = model.graph.as_ref().unwrap();
    let initializers = initializers(&model);
    let producers = producers(&model);
    assert!(
        graph
            .node
            .iter()
            .all(|n| n.op_type != "Relu" && n.op_type != "Clip")
    );
    for node in graph
        .node
        .iter()
        .filter(|n| n.op_type == "Conv" || n.op_type == "Gemm")
    {
        for input in &node.input {
            let producer = producers.get(input.as_str()).map(|p| p.op_type.as_str());
            assert_eq!(producer, Some("DequantizeLinear"), "{}: {input}", node.name);
        }
        let weight_dq = producers[node.input[1].as_str()];
        let expected_axis = if node.op_type == "Conv" { 0 } else { 1 };
        assert_eq!(axis(weight_dq), Some(expected_axis), "{}", node.name);
        let weight = initializers[weight_dq.input[0].as_str()];
        assert_eq!(weight.data_type, 3, "int8 weights");
        let channels = weight.dims[expected_axis as usize] as usize;
        let scales = float_values(initializers[weight_dq.input[1].as_str()]).unwrap();
        assert_eq!(scales.len(), channels);
        assert!(scales.iter().all(|&s| s > 0.0 && s.is_finite()));
        let zero_points = initializers[weight_dq.input[2].as_str()];
        assert_eq!(zero_points.raw_data, vec![0; channels]);
        // The bias: int32 with the input scale times each channel's weight scale.
        let bias_dq = producers[node.input[2].as_str()];
        let bias = initializers[bias_dq.input[0].as_str()];
        assert_eq!(
            (bias.data_type, bias.dims.clone()),
            (6, vec![channels as i64])
        );
        let input_dq = producers[node.input[0].as_str()];
        let input_scale = float_values(initializers[input_dq.input[1].as_str()]).unwrap()[0];
        let bias_scales = float_values(initializers[bias_dq.input[1].as_str()]).unwrap();
        for (bias_scale, weight_scale) in bias_scales.iter().zip(&scales) {
            assert!((bias_scale - input_scale * weight_scale).abs() <= 1e-6 * bias_scale.abs());
        }
    }
    // Activations: uint8 per-tensor, positive scales.
    for node in graph.node.iter().filter(|n| n.op_type == "QuantizeLinear") {
        let scale = float_values(initializers[node.input[1].as_str()]).unwrap();
        assert!(scale.len() == 1 && scale[0] > 0.0, "{}", node.name);
        assert_eq!(initializers[node.input[2].as_str()].data_type, 2, "uint8");
    }
}

#[test]
fn outputs_keep_their_names_and_are_computed_in_float() {
    let float = network(3);
    let ranges = calibrate(&float, &mut ChaCha8Rng::seed_from_u64(4), 4);
    let (bytes, _) = quantize(&float, &ranges, QuantizeOptions::default()).unwrap();
    let before = decode(&float).graph.unwrap();
    let after = decode(&bytes);
    let producers = producers(&after);
    let graph = after.graph.as_ref().unwrap();
    assert_eq!(
        graph.output, before.output,
        "same outputs, names, types, order"
    );
    assert_eq!(graph.input, before.input);
    for output in &graph.output {
        // The exporter's Identity, reading a float Gemm, Softmax or Flatten.
        let identity = producers[output.name.as_str()];
        let source = producers[identity.input[0].as_str()];
        assert!(
            ["Gemm", "Softmax", "Flatten"].contains(&source.op_type.as_str()),
            "{} comes from {}",
            output.name,
            source.op_type
        );
    }
    // Sorted: every input is a graph input, an initializer or an earlier node's output.
    let mut known: HashSet<&str> = graph.input.iter().map(|i| i.name.as_str()).collect();
    known.extend(graph.initializer.iter().map(|t| t.name.as_str()));
    for node in &graph.node {
        for input in &node.input {
            assert!(
                known.contains(input.as_str()),
                "{} reads {input} early",
                node.name
            );
        }
        known.extend(node.output.iter().map(String::as_str));
    }
}

#[test]
fn per_channel_weights_round_trip_within_half_a_step() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (channels, per_channel) = (6, 50);
    let mut weights = random(&mut rng, channels * per_channel, 1.0);
    // Channels of very different magnitude, and one all zero.
    for (i, w) in weights.iter_mut().enumerate() {
        *w *= [1.0, 0.01, 3.0, 1e-4, 0.5, 0.0][i / per_channel];
    }
    for reduce_range in [false, true] {
        let (scales, quantized) =
            quantize_per_channel(&weights, channels, |i| i / per_channel, reduce_range);
        let qmax = if reduce_range { 64 } else { 127 };
        for (i, (&w, &q)) in weights.iter().zip(&quantized).enumerate() {
            let scale = scales[i / per_channel];
            assert!(scale > 0.0);
            assert!(i32::from(q).abs() <= qmax);
            let error = (w - f32::from(q) * scale).abs();
            assert!(
                error <= scale / 2.0 * 1.0001,
                "element {i}: {w} vs {q} × {scale}"
            );
        }
        // Each non-zero channel uses its whole range.
        for c in 0..5 {
            let peak = quantized[c * per_channel..(c + 1) * per_channel]
                .iter()
                .map(|q| i32::from(*q).abs())
                .max();
            assert_eq!(peak, Some(qmax), "channel {c}");
        }
    }
}

#[test]
fn activations_round_trip_within_half_a_step_and_zero_is_exact() {
    for (min, max) in [(-1.5f32, 4.0f32), (0.0, 6.0), (0.2, 3.0), (-2.0, -0.5)] {
        let params = ActivationParams::from_range(TensorRange { min, max });
        assert!(params.scale > 0.0);
        assert_eq!(params.dequantize(params.quantize(0.0)), 0.0, "{min}..{max}");
        for step in 0..=100 {
            let x = min + (max - min) * step as f32 / 100.0;
            let error = (params.dequantize(params.quantize(x)) - x).abs();
            assert!(error <= params.scale / 2.0 * 1.001, "{x} in {min}..{max}");
        }
    }
    // A constant-zero tensor still gets a usable scale.
    let flat = ActivationParams::from_range(TensorRange { min: 0.0, max: 0.0 });
    assert_eq!((flat.scale, flat.zero_point), (1.0, 0));
}

#[test]
fn the_int8_graph_agrees_with_the_float_graph_in_tract() {
    let float = network(7);
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let ranges = calibrate(&float, &mut rng, 8);
    let (bytes, _) = quantize(&float, &ranges, QuantizeOptions::default()).unwrap();
    let batch = 32;
    let input = random(&mut rng, batch * 3 * SIDE * SIDE, 1.0);
    let expected = run(&load(&float, batch), &input, batch);
    let actual = run(&load(&bytes, batch), &input, batch);
    let (logits, quantized) = (&expected[0], &actual[0]);
    let spread = logits.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = logits
        .iter()
        .zip(quantized)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    // Five quantised layers of 8 bits: a few percent of the logits' magnitude at most.
    assert!(
        worst <= 0.05 * spread,
        "worst logit error {worst} of {spread}"
    );
    let top = |row: &[f32]| {
        (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap()
    };
    let agree = logits
        .chunks(CLASSES)
        .zip(quantized.chunks(CLASSES))
        .filter(|(a, b)| top(a) == top(b))
        .count();
    assert!(
        agree >= batch * 9 / 10,
        "top-1 agrees on {agree} of {batch}"
    );
}

#[test]
fn gemms_reading_probabilities_stay_float_and_the_prior_stays_finite() {
    let float = network_with(11, true);
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let ranges = calibrate(&float, &mut rng, 8);
    let (bytes, summary) = quantize(&float, &ranges, QuantizeOptions::default()).unwrap();
    // The four convolutions, the head and the second classifier; not the sum or the weighting.
    assert_eq!(summary.weighted_nodes, 6, "{summary:?}");
    let model = decode(&bytes);
    let producers = producers(&model);
    let float_gemms: Vec<&str> = model
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .filter(|n| n.op_type == "Gemm")
        .filter_map(|n| {
            let input = producers[n.input[0].as_str()].op_type.as_str();
            (input != "DequantizeLinear").then_some(input)
        })
        .collect();
    assert_eq!(float_gemms, ["Softmax", "Log"]);
    let batch = 16;
    let input = random(&mut rng, batch * 3 * SIDE * SIDE, 1.0);
    let expected = run(&load(&float, batch), &input, batch);
    let actual = run(&load(&bytes, batch), &input, batch);
    assert!(actual[0].iter().all(|v| v.is_finite()), "{:?}", actual[0]);
    let spread = expected[0].iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = expected[0]
        .iter()
        .zip(&actual[0])
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        worst <= 0.05 * spread,
        "worst logit error {worst} of {spread}"
    );
}

#[test]
fn float16_weights_are_quantised_like_float32_ones() {
    let float = network(9);
    let (half, _) = with_fp16_weights(&float).unwrap();
    let ranges = calibrate(&float, &mut ChaCha8Rng::seed_from_u64(10), 4);
    let (from_half, summary) = quantize(&half, &ranges, QuantizeOptions::default()).unwrap();
    assert_eq!(summary.weighted_nodes, 5);
    let model = decode(&from_half);
    let graph = model.graph.unwrap();
    assert!(graph.node.iter().all(|n| n.op_type != "Cast"));
    assert!(graph.initializer.iter().all(|t| t.data_type != 10));
    // The calibration graph of the half model names the same tensors.
    assert_eq!(
        calibration_graph(&half).unwrap().1,
        calibration_graph(&float).unwrap().1
    );
}

#[test]
fn missing_ranges_and_old_opsets_are_refused() {
    let float = network(11);
    let mut ranges = calibrate(&float, &mut ChaCha8Rng::seed_from_u64(12), 2);
    let first = ranges.keys().next().unwrap().clone();
    ranges.remove(&first);
    assert!(matches!(
        quantize(&float, &ranges, QuantizeOptions::default()),
        Err(QuantizeError::MissingRange(name)) if name == first
    ));
    let mut old = decode(&float);
    old.opset_import[0].version = 12;
    assert!(matches!(
        quantize(
            &old.encode_to_vec(),
            &BTreeMap::new(),
            QuantizeOptions::default()
        ),
        Err(QuantizeError::Opset(12))
    ));
}

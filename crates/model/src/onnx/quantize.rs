//! Static int8 quantisation of an exported float graph into the QDQ form onnxruntime fuses into
//! QLinearConv, QLinearAdd and QGemm kernels.
//!
//! The rewrite follows onnxruntime's own QDQ quantiser (`onnxruntime/quantization`):
//! - weights of Conv (and Gemm) become int8 initializers, symmetric per output channel
//!   (zero point 0, range ±127), each behind a `DequantizeLinear` on its channel axis;
//! - biases become int32 with scale `input scale × weight scale`, the form QLinearConv takes;
//! - every activation a quantised node reads or writes goes through `QuantizeLinear` →
//!   `DequantizeLinear` with a uint8 asymmetric per-tensor scale and zero point taken from its
//!   calibrated range;
//! - a Relu or `Clip(0, max)` right after a quantised node is dropped, the node writing the
//!   activation's output instead: the uint8 range of that tensor starts at 0 and ends at the
//!   calibrated maximum, so the quantiser's saturation clips exactly as the activation did.
//!
//! Graph outputs keep their names and float type; values that no quantised node reads (the
//! pooled features, the softmax) are still computed in float. The graph needs opset 13 or
//! later, the first with per-axis `QuantizeLinear`/`DequantizeLinear`.

use std::collections::{BTreeMap, HashMap, HashSet};

use prost::Message as _;

use super::proto::{
    GraphProto, ModelProto, NodeProto, TensorProto, TypeProto, ValueInfoProto, type_proto,
};

mod rewrite;

use rewrite::{Rewrite, quantize_with_scales, weight_scales};

const FLOAT: i32 = 1;
const UINT8: i32 = 2;
const INT8: i32 = 3;
const INT32: i32 = 6;
const FLOAT16: i32 = 10;
/// Per-axis quantisation arrived with opset 13.
const MIN_OPSET: i64 = 13;
/// Symmetric int8 weights use ±127 (not -128), so that zero maps to zero on every channel.
const WEIGHT_QMAX: f32 = 127.0;
/// With `reduce_range`, weights use 7 bits (±64), as onnxruntime's `reduce_range`: on x86 CPUs
/// without VNNI the u8×s8 pair sums of `vpmaddubsw` can saturate 16 bits at full range.
const WEIGHT_QMAX_REDUCED: f32 = 64.0;
const ACTIVATION_QMAX: f32 = 255.0;

/// Why a graph could not be quantised.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error("not an ONNX model: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("the ONNX model has no graph")]
    NoGraph,
    #[error(
        "the graph uses opset {0} of the default domain; int8 quantisation needs opset {MIN_OPSET} or later (export it again with this bestiary)"
    )]
    Opset(i64),
    #[error("initializer {0} is not float32 or float16, or its raw data is ragged")]
    Initializer(String),
    #[error(
        "no calibrated range for tensor `{0}`; calibrate on the graph from `calibration_graph`"
    )]
    MissingRange(String),
    #[error("the calibrated range of `{name}` is not finite: {min}..{max}")]
    InvalidRange { name: String, min: f32, max: f32 },
}

/// The smallest and largest value a tensor took over the calibration photos.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TensorRange {
    pub min: f32,
    pub max: f32,
}

/// Which parts of the graph are quantised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantizeOptions {
    /// Quantise Add (the residual sums) into QLinearAdd, rather than dequantising both sides,
    /// adding in float and quantising the sum again.
    pub add: bool,
    /// Quantise the Gemm head too (its input and weights; its output stays float).
    pub gemm: bool,
    /// 7-bit weights (see [`WEIGHT_QMAX_REDUCED`]); the default, because full 8-bit weights
    /// cost accuracy on CPUs without VNNI (EfficientNet-Lite0 on the 240 animals10 photos, AMD
    /// EPYC Zen 3: fp32 97.5 %, 8-bit 96.3 %, 7-bit 97.5 % top-1) and gain nothing in speed.
    pub reduce_range: bool,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        Self {
            add: true,
            gemm: true,
            reduce_range: true,
        }
    }
}

/// What a quantisation changed, for the user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuantizeSummary {
    /// Conv and Gemm nodes whose weights are now int8.
    pub weighted_nodes: usize,
    /// Add and MaxPool nodes between quantised tensors.
    pub other_nodes: usize,
    /// Activation tensors behind a QuantizeLinear → DequantizeLinear pair.
    pub activations: usize,
    /// Relu / Clip nodes folded into the range of the tensor before them.
    pub folded_activations: usize,
}

/// The float graph to calibrate on (float16 weights expanded to float32) with every tensor
/// whose range [`quantize`] needs as an extra graph output, and those tensors' names.
///
/// # Errors
/// When the bytes are not an ONNX model with a graph, or its opset is too old.
pub fn calibration_graph(model_bytes: &[u8]) -> Result<(Vec<u8>, Vec<String>), QuantizeError> {
    let mut model = float_model(model_bytes)?;
    let graph = model.graph.as_mut().ok_or(QuantizeError::NoGraph)?;
    let plan = Plan::new(graph, QuantizeOptions::default());
    let names = plan.calibrated_tensors();
    let existing: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    for name in names.iter().filter(|name| !existing.contains(*name)) {
        graph.output.push(ValueInfoProto {
            name: name.clone(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: FLOAT,
                    shape: None,
                })),
            }),
        });
    }
    Ok((model.encode_to_vec(), names))
}

/// The QDQ int8 form of the float (or float16-weight) graph `model_bytes`, with activation
/// ranges `ranges` measured on the graph from [`calibration_graph`].
///
/// # Errors
/// When the bytes are not an ONNX model with a graph, its opset is older than 13, an initializer
/// cannot be read, or a range is missing or not finite.
pub fn quantize(
    model_bytes: &[u8],
    ranges: &BTreeMap<String, TensorRange>,
    options: QuantizeOptions,
) -> Result<(Vec<u8>, QuantizeSummary), QuantizeError> {
    let mut model = float_model(model_bytes)?;
    let graph = model.graph.as_mut().ok_or(QuantizeError::NoGraph)?;
    let plan = Plan::new(graph, options);
    let mut params = HashMap::new();
    for name in plan.calibrated_tensors() {
        let range = ranges
            .get(&name)
            .ok_or_else(|| QuantizeError::MissingRange(name.clone()))?;
        if !(range.min.is_finite() && range.max.is_finite()) {
            return Err(QuantizeError::InvalidRange {
                name,
                min: range.min,
                max: range.max,
            });
        }
        params.insert(name, ActivationParams::from_range(*range));
    }
    // MaxPool outputs take their input's parameters, so onnxruntime can drop the pair around
    // the pool and run it on uint8 directly.
    for (output, input) in &plan.shared {
        let shared = params[input];
        params.insert(output.clone(), shared);
    }
    let summary = QuantizeSummary {
        weighted_nodes: plan.weighted.len(),
        other_nodes: plan.quantized_nodes.len() - plan.weighted.len(),
        activations: plan.produced.len() + plan.consumed.len(),
        folded_activations: plan.folded.len(),
    };
    Rewrite::new(graph, &plan, &params, options).run()?;
    Ok((model.encode_to_vec(), summary))
}

/// Scale and zero point of a uint8 activation: `x ≈ scale · (q − zero_point)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivationParams {
    pub scale: f32,
    pub zero_point: u8,
}

impl ActivationParams {
    /// Asymmetric uint8 parameters covering `range` widened to include 0 (so that zero, the
    /// padding value, is exact), as onnxruntime's `compute_scale_zp`.
    pub fn from_range(range: TensorRange) -> Self {
        let min = f64::from(range.min.min(0.0));
        let max = f64::from(range.max.max(0.0));
        let scale = ((max - min) / f64::from(ACTIVATION_QMAX)) as f32;
        if scale < f32::MIN_POSITIVE {
            return Self {
                scale: 1.0,
                zero_point: 0,
            };
        }
        let zero_point = (-min / f64::from(scale))
            .round_ties_even()
            .clamp(0.0, f64::from(ACTIVATION_QMAX));
        Self {
            scale,
            zero_point: zero_point as u8,
        }
    }

    /// `x` quantised as `QuantizeLinear` does: round half to even, saturate to 0..255.
    pub fn quantize(self, x: f32) -> u8 {
        (x / self.scale + f32::from(self.zero_point))
            .round_ties_even()
            .clamp(0.0, ACTIVATION_QMAX) as u8
    }

    pub fn dequantize(self, q: u8) -> f32 {
        (f32::from(q) - f32::from(self.zero_point)) * self.scale
    }
}

/// Symmetric int8 quantisation of `weights` per channel: `channels` scales, each
/// `max |w| / qmax` over the channel (1 for an all-zero channel), and the quantised values.
/// `channel_of(i)` says which channel element `i` belongs to.
pub fn quantize_per_channel(
    weights: &[f32],
    channels: usize,
    channel_of: impl Fn(usize) -> usize + Copy,
    reduce_range: bool,
) -> (Vec<f32>, Vec<i8>) {
    let qmax = if reduce_range {
        WEIGHT_QMAX_REDUCED
    } else {
        WEIGHT_QMAX
    };
    let scales = weight_scales(weights, channels, channel_of, qmax);
    let quantized = quantize_with_scales(weights, &scales, channel_of, qmax);
    (scales, quantized)
}

/// Decodes the model, checks its opset and turns float16 weights back into float32.
fn float_model(model_bytes: &[u8]) -> Result<ModelProto, QuantizeError> {
    let mut model = ModelProto::decode(model_bytes)?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(0, |o| o.version);
    if opset < MIN_OPSET {
        return Err(QuantizeError::Opset(opset));
    }
    let graph = model.graph.as_mut().ok_or(QuantizeError::NoGraph)?;
    expand_fp16_weights(graph)?;
    Ok(model)
}

/// Replaces each `Cast(to float)` of a float16 initializer (what `fp16::with_fp16_weights`
/// writes) by a float32 initializer under the cast's output name, so that weights are seen.
fn expand_fp16_weights(graph: &mut GraphProto) -> Result<(), QuantizeError> {
    let inputs: HashSet<&str> = graph.input.iter().map(|v| v.name.as_str()).collect();
    let half: HashMap<String, usize> = graph
        .initializer
        .iter()
        .enumerate()
        .filter(|(_, t)| t.data_type == FLOAT16 && !inputs.contains(t.name.as_str()))
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    let mut expanded = Vec::new();
    let mut casts = HashSet::new();
    for (index, node) in graph.node.iter().enumerate() {
        let to_float = node
            .attribute
            .iter()
            .any(|a| a.name == "to" && a.i == Some(i64::from(FLOAT)));
        if node.op_type == "Cast"
            && to_float
            && node.input.len() == 1
            && let Some(&source) = half.get(&node.input[0])
        {
            let tensor = &graph.initializer[source];
            if !tensor.raw_data.len().is_multiple_of(2) {
                return Err(QuantizeError::Initializer(tensor.name.clone()));
            }
            let values: Vec<f32> = tensor
                .raw_data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect();
            expanded.push(float_tensor(&node.output[0], &tensor.dims, &values));
            casts.insert(index);
        }
    }
    let mut index = 0;
    graph.node.retain(|_| {
        index += 1;
        !casts.contains(&(index - 1))
    });
    graph.initializer.extend(expanded);
    // Half initializers no node reads any more.
    let read: HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .collect();
    graph
        .initializer
        .retain(|t| t.data_type != FLOAT16 || read.contains(&t.name));
    Ok(())
}

/// Which nodes and tensors are quantised, decided from the float graph alone.
struct Plan {
    /// Indices of the nodes run in int8 (Conv, Gemm, Add, MaxPool).
    quantized_nodes: HashSet<usize>,
    /// Of those, the Conv and Gemm nodes whose weight (input 1) and bias (input 2) are
    /// initializers, with the weight's output-channel axis.
    weighted: HashMap<usize, i64>,
    /// Relu / Clip nodes dropped because the node before them now clips.
    folded: HashSet<usize>,
    /// The tensor each quantised node but Gemm writes: its own output, or the output of the
    /// activation folded into it.
    writes: HashMap<usize, String>,
    /// Tensors a quantised node writes, in graph order: every reader then reads the dequantised
    /// value under the same name.
    produced: Vec<String>,
    /// Tensors only some readers need quantised (graph inputs, values read by a quantised node
    /// but written by a float one): only those readers are switched to a dequantised copy.
    consumed: Vec<String>,
    /// MaxPool output → the input whose parameters it shares.
    shared: Vec<(String, String)>,
}

impl Plan {
    fn new(graph: &GraphProto, options: QuantizeOptions) -> Self {
        let initializers: HashMap<&str, &TensorProto> = graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
        // Values that are graph outputs, directly or through the exporter's Identity: the
        // nodes writing them stay float (a Gemm, whose output is float anyway, excepted).
        let output_sources: HashSet<&str> = graph
            .node
            .iter()
            .filter(|n| n.op_type == "Identity" && outputs.contains(n.output[0].as_str()))
            .map(|n| n.input[0].as_str())
            .chain(outputs.iter().copied())
            .collect();
        let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (index, node) in graph.node.iter().enumerate() {
            for input in node.input.iter().filter(|i| !i.is_empty()) {
                readers.entry(input.as_str()).or_default().push(index);
            }
        }
        let mut plan = Self {
            quantized_nodes: HashSet::new(),
            weighted: HashMap::new(),
            folded: HashSet::new(),
            writes: HashMap::new(),
            produced: Vec::new(),
            consumed: Vec::new(),
            shared: Vec::new(),
        };
        let mut quantized_tensors: HashSet<String> = HashSet::new();
        let is_activation = |name: &str| !name.is_empty() && !initializers.contains_key(name);
        let producers: HashMap<&str, &str> = graph
            .node
            .iter()
            .flat_map(|n| n.output.iter().map(|o| (o.as_str(), n.op_type.as_str())))
            .collect();
        for (index, node) in graph.node.iter().enumerate() {
            let weight_axis = match node.op_type.as_str() {
                "Conv" => conv_weight_axis(node, &initializers),
                "Gemm"
                    if options.gemm
                        && !producers
                            .get(node.input[0].as_str())
                            .is_some_and(|op| PROBABILITY_OPS.contains(op)) =>
                {
                    gemm_weight_axis(node, &initializers)
                }
                _ => None,
            };
            let writes_output = node.op_type != "Gemm"
                && node
                    .output
                    .iter()
                    .any(|o| output_sources.contains(o.as_str()));
            let quantize_node = !writes_output
                && (weight_axis.is_some()
                    || match node.op_type.as_str() {
                        "Add" if options.add => {
                            node.input.len() == 2 && node.input.iter().all(|i| is_activation(i))
                        }
                        // Only between tensors quantised anyway: a pool never earns a pair of its own.
                        "MaxPool" => {
                            node.output.len() == 1 && quantized_tensors.contains(&node.input[0])
                        }
                        _ => false,
                    });
            if !quantize_node {
                continue;
            }
            plan.quantized_nodes.insert(index);
            let activation_inputs: &[String] = match weight_axis {
                Some(axis) => {
                    plan.weighted.insert(index, axis);
                    &node.input[..1]
                }
                None => &node.input,
            };
            for input in activation_inputs {
                if quantized_tensors.insert(input.clone()) {
                    plan.consumed.push(input.clone());
                }
            }
            // Gemm's output stays float: onnxruntime's QGemm can write float, and the logits
            // are a graph output anyway.
            if node.op_type == "Gemm" {
                continue;
            }
            let mut output = node.output[0].clone();
            if node.op_type != "MaxPool"
                && !outputs.contains(output.as_str())
                && let Some(&[reader]) = readers.get(output.as_str()).map(Vec::as_slice)
                && is_zero_floor_activation(&graph.node[reader], &initializers)
            {
                output = graph.node[reader].output[0].clone();
                plan.folded.insert(reader);
            }
            if node.op_type == "MaxPool" {
                plan.shared.push((output.clone(), node.input[0].clone()));
            }
            quantized_tensors.insert(output.clone());
            plan.writes.insert(index, output.clone());
            plan.produced.push(output);
        }
        // In a sorted graph a tensor is read only after it is written, so none is both; this
        // keeps a malformed graph from being given two pairs.
        let produced: HashSet<&String> = plan.produced.iter().collect();
        plan.consumed.retain(|t| !produced.contains(t));
        plan
    }

    /// The tensors whose range must be measured: every quantised one but the MaxPool outputs.
    fn calibrated_tensors(&self) -> Vec<String> {
        let shared: HashSet<&String> = self.shared.iter().map(|(output, _)| output).collect();
        self.consumed
            .iter()
            .chain(&self.produced)
            .filter(|t| !shared.contains(t))
            .cloned()
            .collect()
    }
}

/// Output channels are axis 0 of a Conv weight; the weight and bias must be initializers.
fn conv_weight_axis(node: &NodeProto, initializers: &HashMap<&str, &TensorProto>) -> Option<i64> {
    let weight = initializers.get(node.input.get(1)?.as_str())?;
    let bias_ok = node
        .input
        .get(2)
        .is_none_or(|b| b.is_empty() || initializers.contains_key(b.as_str()));
    let input_ok = !initializers.contains_key(node.input[0].as_str());
    (bias_ok && input_ok && weight.data_type == FLOAT && !weight.dims.is_empty()).then_some(0)
}

/// Ops whose outputs no Gemm reading them is quantised for: probabilities and their logs (the
/// ImageNet prior's sums and weighting). A uint8 step of 1/255 turns every small probability
/// into 0, and the bias scale (input scale × weight scale) rounds the prior's 1e-6 floor to 0,
/// so `log` then gives −∞: the built-in model lost 2.1 points of top-1 on the animals10 photos
/// (239 → 234 of 240) until these stayed float.
const PROBABILITY_OPS: [&str; 5] = ["Softmax", "LogSoftmax", "Log", "Exp", "Sigmoid"];

/// The channel axis of a Gemm's weight (input B, an initializer), when the Gemm is the plain
/// `A · B + C` onnxruntime fuses: A not transposed, alpha and beta 1.
fn gemm_weight_axis(node: &NodeProto, initializers: &HashMap<&str, &TensorProto>) -> Option<i64> {
    let attribute = |name: &str| node.attribute.iter().find(|a| a.name == name);
    let int = |name: &str| attribute(name).and_then(|a| a.i).unwrap_or(0);
    let float = |name: &str| attribute(name).and_then(|a| a.f).unwrap_or(1.0);
    let weight = initializers.get(node.input.get(1)?.as_str())?;
    let bias_ok = node
        .input
        .get(2)
        .is_none_or(|b| b.is_empty() || initializers.contains_key(b.as_str()));
    let plain = int("transA") == 0
        && float("alpha") == 1.0
        && float("beta") == 1.0
        && weight.dims.len() == 2
        && weight.data_type == FLOAT
        && bias_ok
        && !initializers.contains_key(node.input[0].as_str());
    // Output channels are B's columns, or its rows when B is transposed.
    plain.then_some(if int("transB") == 0 { 1 } else { 0 })
}

/// Relu, or Clip whose lower bound is the constant 0 (ReLU6): both are what a uint8 range
/// starting at 0 saturates to anyway.
fn is_zero_floor_activation(node: &NodeProto, initializers: &HashMap<&str, &TensorProto>) -> bool {
    match node.op_type.as_str() {
        "Relu" => true,
        "Clip" => node
            .input
            .get(1)
            .and_then(|min| initializers.get(min.as_str()))
            .and_then(|t| float_values(t).ok())
            .is_some_and(|values| values == [0.0]),
        _ => false,
    }
}

fn float_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.to_vec(),
        data_type: FLOAT,
        name: name.to_owned(),
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..TensorProto::default()
    }
}

/// The values of a float32 initializer.
pub fn float_values(tensor: &TensorProto) -> Result<Vec<f32>, QuantizeError> {
    if tensor.data_type != FLOAT {
        return Err(QuantizeError::Initializer(tensor.name.clone()));
    }
    if !tensor.float_data.is_empty() {
        return Ok(tensor.float_data.clone());
    }
    if !tensor.raw_data.len().is_multiple_of(4) {
        return Err(QuantizeError::Initializer(tensor.name.clone()));
    }
    Ok(tensor
        .raw_data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

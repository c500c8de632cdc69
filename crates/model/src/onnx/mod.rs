//! Exports CNN classifiers to ONNX, which burn cannot: a graph builder over hand-written protobuf messages.
//!
//! The builder tracks the per-sample shape of every value, so a layer wired with the wrong
//! channel count or feature size is reported when the model is exported rather than when an
//! inference engine first loads it. Builder methods never fail on their own: the first problem
//! is remembered and returned by [`GraphBuilder::finish`], which keeps model-walking code free of
//! `?` on every layer.

pub mod fp16;
pub mod proto;
pub mod quantize;

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};

use prost::Message as _;

use proto::tensor_shape_proto::{Dimension, dimension};
use proto::type_proto;
use proto::{
    AttributeProto, AttributeType, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// IR version 8 (ONNX 1.10); opset 13 alone would need only 7, but 8 is what current tools write.
const IR_VERSION: i64 = 8;
/// Opset 13: Softmax normalises exactly one axis (earlier opsets flattened from `axis` on), and
/// Clip takes its bounds as inputs (since opset 11).
const OPSET_VERSION: i64 = 13;
const PRODUCER_NAME: &str = "bestiary";
/// The symbolic batch dimension, so one exported file serves any batch size.
const BATCH_DIM: &str = "N";

/// Name of the class activation maps output of an exported classifier: float32
/// `[N, classes, h, w]`, the head applied to every position of the last feature map, so that its
/// spatial mean is `logits` exactly. The exporter (bestiary-train) writes it, the engines read it.
pub const CLASS_ACTIVATION: &str = "class_activation";

/// Why a graph could not be exported.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExportError {
    #[error("value `{0}` was not produced by this graph builder")]
    UnknownValue(String),
    #[error("the name `{0}` is already used in this graph")]
    DuplicateName(String),
    #[error("`{name}` has {actual} values, which does not match its shape {shape:?}")]
    Length {
        name: String,
        shape: Vec<usize>,
        actual: usize,
    },
    #[error("`{context}`: {reason}")]
    Invalid { context: String, reason: String },
    #[error("the graph declares no output")]
    NoOutputs,
    #[error("metadata key `{0}` appears more than once")]
    DuplicateMetadataKey(String),
}

/// A value (tensor) flowing through the graph, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value(String);

impl Value {
    /// The tensor's name in the exported graph.
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Builds an ONNX inference graph for a float32 NCHW classifier, layer by layer.
#[derive(Debug)]
pub struct GraphBuilder {
    graph: GraphProto,
    input: Value,
    /// Per-sample shape (without the batch dimension) of every value created so far.
    shapes: HashMap<String, Vec<i64>>,
    /// Every node, value and initializer name, which ONNX requires to be unique.
    names: HashSet<String>,
    /// Next index per name prefix, so nodes read `conv_0`, `conv_1`, `relu_0`, ...
    counters: HashMap<&'static str, usize>,
    /// The first problem met; later ones are usually its consequences.
    error: Option<ExportError>,
}

impl GraphBuilder {
    /// Graph with one float32 NCHW input named `input_name`, batch dimension symbolic ("N"), and fixed C,H,W.
    pub fn new(graph_name: &str, input_name: &str, channels: i64, height: i64, width: i64) -> Self {
        let mut builder = Self {
            graph: GraphProto {
                name: graph_name.to_owned(),
                ..GraphProto::default()
            },
            input: Value(input_name.to_owned()),
            shapes: HashMap::new(),
            names: HashSet::from([input_name.to_owned()]),
            counters: HashMap::new(),
            error: None,
        };
        let shape = vec![channels, height, width];
        if input_name.is_empty() {
            // ONNX reads an empty name as "optional input left out".
            builder.fail(invalid("graph input", "the name must not be empty"));
        }
        if shape.iter().any(|&d| d <= 0) {
            builder.fail(invalid(
                input_name,
                format!("input shape {shape:?} must be positive"),
            ));
        }
        builder.graph.input.push(value_info(input_name, &shape));
        builder.shapes.insert(input_name.to_owned(), shape);
        builder
    }

    /// The graph's image input, to feed the first layer.
    pub fn input(&self) -> Value {
        self.input.clone()
    }

    /// Per-sample shape (without the batch dimension) of `x`; `None` for a value this builder
    /// did not produce.
    pub fn shape(&self, x: &Value) -> Option<&[i64]> {
        self.shapes.get(&x.0).map(Vec::as_slice)
    }

    /// 2-D convolution (dilation 1).
    ///
    /// `weight_shape` is `[out, in/group, kh, kw]` with `weight` row-major; `pads` are in ONNX
    /// order `[top, left, bottom, right]`.
    #[expect(
        clippy::too_many_arguments,
        reason = "mirrors the ONNX Conv operator's inputs and attributes one to one"
    )]
    pub fn conv(
        &mut self,
        x: &Value,
        weight: &[f32],
        weight_shape: [usize; 4],
        bias: Option<&[f32]>,
        strides: [i64; 2],
        pads: [i64; 4],
        group: i64,
    ) -> Value {
        let name = self.fresh_name("conv");
        let result = self.try_conv(&name, x, weight, weight_shape, bias, strides, pads, group);
        self.settle(name, result)
    }

    /// Element-wise `max(x, 0)`.
    pub fn relu(&mut self, x: &Value) -> Value {
        let name = self.fresh_name("relu");
        let result = self
            .shape_of(x)
            .and_then(|shape| self.push_node(&name, "Relu", vec![x.0.clone()], Vec::new(), shape));
        self.settle(name, result)
    }

    /// Element-wise natural logarithm.
    pub fn log(&mut self, x: &Value) -> Value {
        let name = self.fresh_name("log");
        let result = self
            .shape_of(x)
            .and_then(|shape| self.push_node(&name, "Log", vec![x.0.clone()], Vec::new(), shape));
        self.settle(name, result)
    }

    /// Clip with min/max given as initializer inputs (opset 13 style), e.g. ReLU6.
    pub fn clip(&mut self, x: &Value, min: f32, max: f32) -> Value {
        let name = self.fresh_name("clip");
        let result = self.try_clip(&name, x, min, max);
        self.settle(name, result)
    }

    /// Max pooling without ceil mode; `pads` are `[top, left, bottom, right]`.
    pub fn max_pool(
        &mut self,
        x: &Value,
        kernel: [i64; 2],
        strides: [i64; 2],
        pads: [i64; 4],
    ) -> Value {
        let name = self.fresh_name("max_pool");
        let result = self.try_max_pool(&name, x, kernel, strides, pads);
        self.settle(name, result)
    }

    /// Averages each channel over its whole plane: C,H,W becomes C,1,1.
    pub fn global_average_pool(&mut self, x: &Value) -> Value {
        let name = self.fresh_name("global_average_pool");
        let result = self.shape_of(x).and_then(|shape| match shape.as_slice() {
            &[channels, _, _] => self.push_node(
                &name,
                "GlobalAveragePool",
                vec![x.0.clone()],
                Vec::new(),
                vec![channels, 1, 1],
            ),
            other => Err(invalid(
                &name,
                format!("expects a C,H,W input, got {other:?}"),
            )),
        });
        self.settle(name, result)
    }

    /// Flattens everything after the batch dimension (ONNX `axis = 1`).
    pub fn flatten(&mut self, x: &Value) -> Value {
        let name = self.fresh_name("flatten");
        let result = self.shape_of(x).and_then(|shape| {
            let features = shape
                .iter()
                .try_fold(1i64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| invalid(&name, format!("{shape:?} has too many elements")))?;
            self.push_node(
                &name,
                "Flatten",
                vec![x.0.clone()],
                vec![int_attribute("axis", 1)],
                vec![features],
            )
        });
        self.settle(name, result)
    }

    /// y = x · W + b with W given as [in, out] row-major (burn's Linear layout), i.e. Gemm transB = 0.
    pub fn gemm(
        &mut self,
        x: &Value,
        weight: &[f32],
        in_features: usize,
        out_features: usize,
        bias: Option<&[f32]>,
    ) -> Value {
        let name = self.fresh_name("gemm");
        let result = self.try_gemm(&name, x, weight, in_features, out_features, bias);
        self.settle(name, result)
    }

    /// Element-wise sum of two values of the same shape (no broadcasting), e.g. a residual skip.
    pub fn add(&mut self, a: &Value, b: &Value) -> Value {
        let name = self.fresh_name("add");
        let result = self.shape_of(a).and_then(|shape_a| {
            let shape_b = self.shape_of(b)?;
            if shape_a != shape_b {
                return Err(invalid(
                    &name,
                    format!("`{a}` has shape {shape_a:?} but `{b}` has shape {shape_b:?}"),
                ));
            }
            self.push_node(
                &name,
                "Add",
                vec![a.0.clone(), b.0.clone()],
                Vec::new(),
                shape_a,
            )
        });
        self.settle(name, result)
    }

    /// Softmax over `axis`, counted with the batch dimension as axis 0 (negative counts from the end).
    pub fn softmax(&mut self, x: &Value, axis: i64) -> Value {
        let name = self.fresh_name("softmax");
        let result = self.shape_of(x).and_then(|shape| {
            let rank = to_i64(shape.len() + 1);
            if !(-rank..rank).contains(&axis) {
                return Err(invalid(
                    &name,
                    format!("axis {axis} is out of range for rank {rank}"),
                ));
            }
            self.push_node(
                &name,
                "Softmax",
                vec![x.0.clone()],
                vec![int_attribute("axis", axis)],
                shape,
            )
        });
        self.settle(name, result)
    }

    /// Declares a graph output of float32 with shape [N, size] (batch symbolic).
    ///
    /// Any value can be an output, including one that feeds later layers (say `logits` next to
    /// its softmax `probabilities`, or pooled `features`). When `name` differs from the value's
    /// own name an Identity node gives it that name, because ONNX names an output by its value.
    pub fn output(&mut self, x: &Value, name: &str, size: i64) {
        self.output_shaped(x, name, &[size]);
    }

    /// Declares a graph output of float32 with shape [N, ..shape] (batch symbolic), e.g. a
    /// `[N, classes, h, w]` map; otherwise as [`GraphBuilder::output`].
    pub fn output_shaped(&mut self, x: &Value, name: &str, shape: &[i64]) {
        if let Err(error) = self.try_output(x, name, shape) {
            self.fail(error);
        }
    }

    /// Serialises a ModelProto: ir_version 8, opset 13 (default domain), producer "bestiary", the
    /// given producer_version, and metadata_props from `metadata`.
    ///
    /// # Errors
    /// The first problem met while building the graph, a graph without outputs, or a metadata
    /// key given twice.
    pub fn finish(
        self,
        producer_version: &str,
        metadata: &[(&str, &str)],
    ) -> Result<Vec<u8>, ExportError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        if self.graph.output.is_empty() {
            return Err(ExportError::NoOutputs);
        }
        let mut keys = HashSet::new();
        let mut metadata_props = Vec::with_capacity(metadata.len());
        for &(key, value) in metadata {
            if !keys.insert(key) {
                return Err(ExportError::DuplicateMetadataKey(key.to_owned()));
            }
            metadata_props.push(StringStringEntryProto {
                key: key.to_owned(),
                value: value.to_owned(),
            });
        }
        let model = ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET_VERSION,
            }],
            producer_name: PRODUCER_NAME.to_owned(),
            producer_version: producer_version.to_owned(),
            graph: Some(self.graph),
            metadata_props,
            ..ModelProto::default()
        };
        Ok(model.encode_to_vec())
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the checked body of `conv`, taking the same arguments"
    )]
    fn try_conv(
        &mut self,
        name: &str,
        x: &Value,
        weight: &[f32],
        weight_shape: [usize; 4],
        bias: Option<&[f32]>,
        strides: [i64; 2],
        pads: [i64; 4],
        group: i64,
    ) -> Result<(), ExportError> {
        let &[channels, height, width] = self.shape_of(x)?.as_slice() else {
            return Err(invalid(name, format!("`{x}` is not a C,H,W value")));
        };
        let weight_name = format!("{name}.weight");
        check_len(&weight_name, weight, &weight_shape)?;
        if weight_shape.contains(&0) {
            return Err(invalid(name, "weight dimensions must be positive"));
        }
        let [out_channels, group_channels, kernel_h, kernel_w] = weight_shape.map(to_i64);
        if group < 1 || out_channels % group != 0 {
            return Err(invalid(
                name,
                format!("group {group} must be positive and divide {out_channels} output channels"),
            ));
        }
        if group_channels.checked_mul(group) != Some(channels) {
            return Err(invalid(
                name,
                format!(
                    "weight expects {group} group(s) of {group_channels} channel(s), but `{x}` has {channels}"
                ),
            ));
        }
        let out_h = window_output(name, height, kernel_h, strides[0], pads[0], pads[2])?;
        let out_w = window_output(name, width, kernel_w, strides[1], pads[1], pads[3])?;

        let mut inputs = vec![x.0.clone(), weight_name.clone()];
        self.add_initializer(weight_name, &weight_shape, weight)?;
        if let Some(bias) = bias {
            let bias_name = format!("{name}.bias");
            self.add_initializer(bias_name.clone(), &[weight_shape[0]], bias)?;
            inputs.push(bias_name);
        }
        let attributes = vec![
            ints_attribute("kernel_shape", vec![kernel_h, kernel_w]),
            ints_attribute("strides", strides.to_vec()),
            ints_attribute("pads", pads.to_vec()),
            ints_attribute("dilations", vec![1, 1]),
            int_attribute("group", group),
        ];
        self.push_node(
            name,
            "Conv",
            inputs,
            attributes,
            vec![out_channels, out_h, out_w],
        )
    }

    fn try_clip(&mut self, name: &str, x: &Value, min: f32, max: f32) -> Result<(), ExportError> {
        let shape = self.shape_of(x)?;
        if min.is_nan() || max.is_nan() || min > max {
            return Err(invalid(
                name,
                format!("min {min} must not exceed max {max}"),
            ));
        }
        let min_name = format!("{name}.min");
        let max_name = format!("{name}.max");
        // Scalars (no dims), as opset 13 requires for the bounds.
        self.add_initializer(min_name.clone(), &[], &[min])?;
        self.add_initializer(max_name.clone(), &[], &[max])?;
        self.push_node(
            name,
            "Clip",
            vec![x.0.clone(), min_name, max_name],
            Vec::new(),
            shape,
        )
    }

    fn try_max_pool(
        &mut self,
        name: &str,
        x: &Value,
        kernel: [i64; 2],
        strides: [i64; 2],
        pads: [i64; 4],
    ) -> Result<(), ExportError> {
        let &[channels, height, width] = self.shape_of(x)?.as_slice() else {
            return Err(invalid(name, format!("`{x}` is not a C,H,W value")));
        };
        let out_h = window_output(name, height, kernel[0], strides[0], pads[0], pads[2])?;
        let out_w = window_output(name, width, kernel[1], strides[1], pads[1], pads[3])?;
        let attributes = vec![
            ints_attribute("kernel_shape", kernel.to_vec()),
            ints_attribute("strides", strides.to_vec()),
            ints_attribute("pads", pads.to_vec()),
        ];
        self.push_node(
            name,
            "MaxPool",
            vec![x.0.clone()],
            attributes,
            vec![channels, out_h, out_w],
        )
    }

    fn try_gemm(
        &mut self,
        name: &str,
        x: &Value,
        weight: &[f32],
        in_features: usize,
        out_features: usize,
        bias: Option<&[f32]>,
    ) -> Result<(), ExportError> {
        let shape = self.shape_of(x)?;
        if shape != [to_i64(in_features)] {
            return Err(invalid(
                name,
                format!("expects {in_features} features, but `{x}` has shape {shape:?}"),
            ));
        }
        let weight_name = format!("{name}.weight");
        let mut inputs = vec![x.0.clone(), weight_name.clone()];
        self.add_initializer(weight_name, &[in_features, out_features], weight)?;
        if let Some(bias) = bias {
            let bias_name = format!("{name}.bias");
            self.add_initializer(bias_name.clone(), &[out_features], bias)?;
            inputs.push(bias_name);
        }
        // transB = 0 because burn stores Linear weights as [in, out], which is Gemm's B as is.
        self.push_node(
            name,
            "Gemm",
            inputs,
            vec![int_attribute("transB", 0)],
            vec![to_i64(out_features)],
        )
    }

    fn try_output(&mut self, x: &Value, name: &str, declared: &[i64]) -> Result<(), ExportError> {
        let shape = self.shape_of(x)?;
        if shape != declared {
            return Err(invalid(
                name,
                format!("declared with shape {declared:?}, but `{x}` has shape {shape:?}"),
            ));
        }
        if x.0 == name {
            if self.graph.output.iter().any(|output| output.name == name) {
                return Err(ExportError::DuplicateName(name.to_owned()));
            }
        } else {
            self.claim(name)?;
            self.graph.node.push(NodeProto {
                name: name.to_owned(),
                op_type: "Identity".to_owned(),
                input: vec![x.0.clone()],
                output: vec![name.to_owned()],
                ..NodeProto::default()
            });
        }
        self.graph.output.push(value_info(name, &shape));
        Ok(())
    }

    /// Per-sample shape of `x`, or an error for a value this builder never produced (one from
    /// another builder, or returned by a layer that failed).
    fn shape_of(&self, x: &Value) -> Result<Vec<i64>, ExportError> {
        self.shapes
            .get(&x.0)
            .cloned()
            .ok_or_else(|| ExportError::UnknownValue(x.0.clone()))
    }

    /// `prefix_K` with the lowest K not yet used, claimed for one node and its output value.
    fn fresh_name(&mut self, prefix: &'static str) -> String {
        let counter = self.counters.entry(prefix).or_default();
        loop {
            let name = format!("{prefix}_{counter}");
            *counter += 1;
            // Only a user-chosen input or output name can be taken already; skip past it.
            if self.names.insert(name.clone()) {
                return name;
            }
        }
    }

    fn claim(&mut self, name: &str) -> Result<(), ExportError> {
        if name.is_empty() {
            // ONNX reads an empty name as "optional input left out".
            return Err(invalid("graph output", "the name must not be empty"));
        }
        if self.names.insert(name.to_owned()) {
            Ok(())
        } else {
            Err(ExportError::DuplicateName(name.to_owned()))
        }
    }

    fn add_initializer(
        &mut self,
        name: String,
        shape: &[usize],
        data: &[f32],
    ) -> Result<(), ExportError> {
        check_len(&name, data, shape)?;
        self.claim(&name)?;
        self.graph.initializer.push(TensorProto {
            dims: shape.iter().copied().map(to_i64).collect(),
            data_type: proto::DATA_TYPE_FLOAT,
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            name,
            ..TensorProto::default()
        });
        Ok(())
    }

    /// Appends a single-output node whose output value takes the node's (already claimed) name.
    /// Always `Ok`: it returns a `Result` only so that layer bodies can end with it.
    fn push_node(
        &mut self,
        name: &str,
        op_type: &str,
        inputs: Vec<String>,
        attribute: Vec<AttributeProto>,
        output_shape: Vec<i64>,
    ) -> Result<(), ExportError> {
        self.graph.node.push(NodeProto {
            input: inputs,
            output: vec![name.to_owned()],
            name: name.to_owned(),
            op_type: op_type.to_owned(),
            attribute,
            ..NodeProto::default()
        });
        self.shapes.insert(name.to_owned(), output_shape);
        Ok(())
    }

    /// Turns a layer's outcome into the value handed back; a failed layer's value is unknown to
    /// the builder, so anything built on it fails too while the first error is kept.
    fn settle(&mut self, name: String, result: Result<(), ExportError>) -> Value {
        if let Err(error) = result {
            self.fail(error);
        }
        Value(name)
    }

    fn fail(&mut self, error: ExportError) {
        self.error.get_or_insert(error);
    }
}

/// Folds inference BatchNorm into the preceding conv: returns (weight, bias) so that conv'(x) == bn(conv(x)).
///
/// `gamma`, `beta`, `mean` and `var` hold one value per output channel (`weight_shape[0]`).
///
/// # Errors
/// When a slice's length does not match `weight_shape`, or a variance plus `eps` is not positive.
#[expect(
    clippy::too_many_arguments,
    reason = "one argument per tensor of the conv and the batch norm being folded"
)]
pub fn fold_batch_norm(
    weight: &[f32],
    weight_shape: [usize; 4],
    bias: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
) -> Result<(Vec<f32>, Vec<f32>), ExportError> {
    check_len("conv weight", weight, &weight_shape)?;
    let channels = weight_shape[0];
    let per_channel = [channels];
    check_len("batch norm gamma", gamma, &per_channel)?;
    check_len("batch norm beta", beta, &per_channel)?;
    check_len("batch norm mean", mean, &per_channel)?;
    check_len("batch norm var", var, &per_channel)?;
    if let Some(bias) = bias {
        check_len("conv bias", bias, &per_channel)?;
    }
    // NaN counts as not positive: it would silently poison every folded weight.
    if let Some(channel) = var.iter().position(|&v| {
        let denominator = v + eps;
        denominator.is_nan() || denominator <= 0.0
    }) {
        return Err(invalid(
            "batch norm var",
            format!("channel {channel}: variance plus eps must be positive"),
        ));
    }

    // bn(y) = gamma * (y - mean) / sqrt(var + eps) + beta, so each output channel of the conv is
    // scaled by gamma / sqrt(var + eps) and its bias shifted to match.
    let scale: Vec<f32> = gamma
        .iter()
        .zip(var)
        .map(|(&g, &v)| g / (v + eps).sqrt())
        .collect();
    let per_output = weight.len().checked_div(channels).unwrap_or(0);
    // `chunks` needs a non-zero size; an empty weight yields no chunks whatever the size.
    let folded_weight = weight
        .chunks(per_output.max(1))
        .zip(&scale)
        .flat_map(|(kernel, &s)| kernel.iter().map(move |&w| w * s))
        .collect();
    let folded_bias = (0..channels)
        .map(|c| {
            let b = bias.map_or(0.0, |bias| bias[c]);
            (b - mean[c]) * scale[c] + beta[c]
        })
        .collect();
    Ok((folded_weight, folded_bias))
}

/// Decodes an ONNX model and describes it in a few lines: graph inputs, nodes (op type, inputs,
/// outputs), outputs, initializer count and metadata.
///
/// # Errors
/// When `model_bytes` is not a protobuf-encoded ModelProto.
pub fn describe(model_bytes: &[u8]) -> Result<String, prost::DecodeError> {
    let model = ModelProto::decode(model_bytes)?;
    let graph = model.graph.unwrap_or_default();
    let opsets: Vec<String> = model
        .opset_import
        .iter()
        .map(|opset| {
            let domain = if opset.domain.is_empty() {
                "ai.onnx"
            } else {
                &opset.domain
            };
            format!("{domain} {}", opset.version)
        })
        .collect();

    // Writing to a String cannot fail, so the fmt::Results below are safely ignored.
    let mut text = String::new();
    let _ = writeln!(
        text,
        "model `{}` by {} {}, ir_version {}, opset {}",
        graph.name,
        model.producer_name,
        model.producer_version,
        model.ir_version,
        opsets.join(", ")
    );
    for input in &graph.input {
        let _ = writeln!(text, "input  {}", describe_value(input));
    }
    for node in &graph.node {
        let _ = writeln!(
            text,
            "node   {}: {}({}) -> {}",
            node.name,
            node.op_type,
            node.input.join(", "),
            node.output.join(", ")
        );
    }
    for output in &graph.output {
        let _ = writeln!(text, "output {}", describe_value(output));
    }
    // Saturating, because the dims come from an arbitrary file and must not overflow.
    let parameters = graph
        .initializer
        .iter()
        .map(|tensor| {
            tensor
                .dims
                .iter()
                .fold(1i64, |acc, &d| acc.saturating_mul(d))
        })
        .fold(0i64, i64::saturating_add);
    let _ = writeln!(
        text,
        "initializers: {} tensors, {parameters} values",
        graph.initializer.len()
    );
    for entry in &model.metadata_props {
        let _ = writeln!(text, "metadata {} = {}", entry.key, entry.value);
    }
    Ok(text)
}

fn describe_value(info: &ValueInfoProto) -> String {
    let Some(TypeProto {
        value: Some(type_proto::Value::TensorType(tensor)),
    }) = &info.r#type
    else {
        return format!("{}: ?", info.name);
    };
    let element = match tensor.elem_type {
        proto::DATA_TYPE_FLOAT => "float32".to_owned(),
        other => format!("type{other}"),
    };
    let dims: Vec<String> = tensor
        .shape
        .iter()
        .flat_map(|shape| &shape.dim)
        .map(|dim| match &dim.value {
            Some(dimension::Value::DimValue(size)) => size.to_string(),
            Some(dimension::Value::DimParam(param)) => param.clone(),
            None => "?".to_owned(),
        })
        .collect();
    format!("{}: {element}[{}]", info.name, dims.join(", "))
}

/// A float32 tensor value with the symbolic batch dimension in front of `shape`.
fn value_info(name: &str, shape: &[i64]) -> ValueInfoProto {
    let batch = Dimension {
        value: Some(dimension::Value::DimParam(BATCH_DIM.to_owned())),
    };
    let dims = shape.iter().map(|&size| Dimension {
        value: Some(dimension::Value::DimValue(size)),
    });
    ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: proto::DATA_TYPE_FLOAT,
                shape: Some(TensorShapeProto {
                    dim: std::iter::once(batch).chain(dims).collect(),
                }),
            })),
        }),
    }
}

fn int_attribute(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        i: Some(value),
        r#type: Some(AttributeType::Int.into()),
        ..AttributeProto::default()
    }
}

fn ints_attribute(name: &str, values: Vec<i64>) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        ints: values,
        r#type: Some(AttributeType::Ints.into()),
        ..AttributeProto::default()
    }
}

/// Output size of a sliding window (conv or pool, dilation 1, no ceil mode) along one axis.
fn window_output(
    node: &str,
    size: i64,
    kernel: i64,
    stride: i64,
    pad_begin: i64,
    pad_end: i64,
) -> Result<i64, ExportError> {
    if kernel < 1 || stride < 1 || pad_begin < 0 || pad_end < 0 {
        return Err(invalid(
            node,
            format!(
                "kernel {kernel} and stride {stride} must be positive, pads {pad_begin}/{pad_end} not negative"
            ),
        ));
    }
    let Some(padded) = size
        .checked_add(pad_begin)
        .and_then(|sum| sum.checked_add(pad_end))
    else {
        return Err(invalid(
            node,
            format!("pads {pad_begin}/{pad_end} are too large"),
        ));
    };
    if padded < kernel {
        return Err(invalid(
            node,
            format!("kernel {kernel} is larger than the padded input size {padded}"),
        ));
    }
    Ok((padded - kernel) / stride + 1)
}

fn check_len(name: &str, data: &[f32], shape: &[usize]) -> Result<(), ExportError> {
    // An overflowing product cannot equal a real slice length, so it is a mismatch like any other.
    let expected = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if expected == Some(data.len()) {
        Ok(())
    } else {
        Err(ExportError::Length {
            name: name.to_owned(),
            shape: shape.to_vec(),
            actual: data.len(),
        })
    }
}

fn invalid(context: &str, reason: impl Into<String>) -> ExportError {
    ExportError::Invalid {
        context: context.to_owned(),
        reason: reason.into(),
    }
}

/// Sizes here come from slice lengths or validated shapes, far below `i64::MAX`; saturating
/// keeps a pathological value an export error (a shape mismatch) instead of a wrap-around.
fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> ModelProto {
        ModelProto::decode(bytes).expect("exported bytes decode as a ModelProto")
    }

    fn tiny_classifier() -> GraphBuilder {
        let mut graph = GraphBuilder::new("tiny", "input", 1, 2, 2);
        let x = graph.input();
        let flat = graph.flatten(&x);
        let logits = graph.gemm(&flat, &[0.0; 8], 4, 2, None);
        graph.output(&logits, "logits", 2);
        graph
    }

    #[test]
    fn zero_int_attributes_stay_on_the_wire() {
        let model = decode(&tiny_classifier().finish("0", &[]).unwrap());
        let graph = model.graph.unwrap();
        let gemm = graph.node.iter().find(|n| n.op_type == "Gemm").unwrap();
        assert_eq!(gemm.attribute[0].name, "transB");
        assert_eq!(gemm.attribute[0].i, Some(0));
        assert_eq!(gemm.attribute[0].r#type, Some(AttributeType::Int as i32));
    }

    #[test]
    fn names_are_readable_and_unique() {
        let mut graph = GraphBuilder::new("g", "conv_0", 2, 4, 4);
        let x = graph.input();
        let y = graph.conv(
            &x,
            &[1.0; 8],
            [4, 2, 1, 1],
            Some(&[0.0; 4]),
            [1, 1],
            [0; 4],
            1,
        );
        assert_eq!(
            y.name(),
            "conv_1",
            "a generated name skips the user's input name"
        );
        let y = graph.relu(&y);
        assert_eq!(y.name(), "relu_0");
        let pooled = graph.global_average_pool(&y);
        let flat = graph.flatten(&pooled);
        graph.output(&flat, "features", 4);
        let model = decode(&graph.finish("0", &[]).unwrap());
        let graph = model.graph.unwrap();
        let initializers: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(initializers, ["conv_1.weight", "conv_1.bias"]);
        let nodes: Vec<&str> = graph.node.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            nodes,
            [
                "conv_1",
                "relu_0",
                "global_average_pool_0",
                "flatten_0",
                "features"
            ]
        );
    }

    #[test]
    fn output_named_after_its_value_needs_no_identity() {
        let mut graph = GraphBuilder::new("g", "input", 1, 1, 1);
        let flat = graph.flatten(&graph.input());
        graph.output(&flat, flat.name(), 1);
        let model = decode(&graph.finish("0", &[]).unwrap());
        let graph = model.graph.unwrap();
        assert_eq!(graph.node.len(), 1);
        assert_eq!(graph.output[0].name, "flatten_0");
    }

    #[test]
    fn wrong_weight_length_is_reported_at_finish() {
        let mut graph = GraphBuilder::new("g", "input", 3, 8, 8);
        let y = graph.conv(
            &graph.input(),
            &[0.0; 5],
            [4, 3, 3, 3],
            None,
            [1, 1],
            [1; 4],
            1,
        );
        let y = graph.relu(&y);
        graph.output(&y, "out", 4);
        let error = graph.finish("0", &[]).unwrap_err();
        assert_eq!(
            error,
            ExportError::Length {
                name: "conv_0.weight".into(),
                shape: vec![4, 3, 3, 3],
                actual: 5,
            }
        );
    }

    #[test]
    fn channel_mismatch_is_reported() {
        let mut graph = GraphBuilder::new("g", "input", 3, 8, 8);
        let y = graph.conv(
            &graph.input(),
            &[0.0; 8],
            [4, 2, 1, 1],
            None,
            [1, 1],
            [0; 4],
            1,
        );
        graph.output(&y, "out", 4);
        let error = graph.finish("0", &[]).unwrap_err();
        assert!(
            matches!(&error, ExportError::Invalid { context, .. } if context == "conv_0"),
            "{error}"
        );
    }

    #[test]
    fn mismatched_output_size_and_duplicate_names_are_reported() {
        let mut graph = tiny_classifier();
        let x = graph.input();
        let flat = graph.flatten(&x);
        graph.output(&flat, "features", 3);
        assert!(matches!(
            graph.finish("0", &[]),
            Err(ExportError::Invalid { .. })
        ));

        let mut graph = tiny_classifier();
        let flat = graph.flatten(&graph.input());
        graph.output(&flat, "logits", 4);
        assert_eq!(
            graph.finish("0", &[]),
            Err(ExportError::DuplicateName("logits".into()))
        );
    }

    #[test]
    fn maps_are_declared_with_their_whole_shape() {
        let mut graph = GraphBuilder::new("g", "input", 2, 3, 4);
        let map = graph.conv(
            &graph.input(),
            &[1.0; 10],
            [5, 2, 1, 1],
            None,
            [1, 1],
            [0; 4],
            1,
        );
        graph.output_shaped(&map, "class_activation", &[5, 3, 4]);
        let model = decode(&graph.finish("0", &[]).unwrap());
        let output = &model.graph.unwrap().output[0];
        assert_eq!(
            describe_value(output),
            "class_activation: float32[N, 5, 3, 4]"
        );

        let mut graph = GraphBuilder::new("g", "input", 2, 3, 4);
        graph.output_shaped(&graph.input(), "class_activation", &[2, 4, 3]);
        assert!(matches!(
            graph.finish("0", &[]),
            Err(ExportError::Invalid { .. })
        ));
    }

    #[test]
    fn values_from_another_builder_are_rejected() {
        let other = GraphBuilder::new("other", "pixels", 1, 2, 2);
        let mut graph = tiny_classifier();
        let y = graph.relu(&other.input());
        graph.output(&y, "y", 1);
        assert_eq!(
            graph.finish("0", &[]),
            Err(ExportError::UnknownValue("pixels".into()))
        );
    }

    #[test]
    fn graph_without_outputs_and_repeated_metadata_are_rejected() {
        let graph = GraphBuilder::new("g", "input", 1, 1, 1);
        assert_eq!(graph.finish("0", &[]), Err(ExportError::NoOutputs));
        let graph = tiny_classifier();
        assert_eq!(
            graph.finish("0", &[("k", "a"), ("k", "b")]),
            Err(ExportError::DuplicateMetadataKey("k".into()))
        );
    }

    #[test]
    fn oversized_windows_and_bad_clips_are_rejected() {
        let mut graph = GraphBuilder::new("g", "input", 1, 2, 2);
        let y = graph.max_pool(&graph.input(), [3, 3], [1, 1], [0; 4]);
        graph.output(&y, "y", 1);
        assert!(matches!(
            graph.finish("0", &[]),
            Err(ExportError::Invalid { .. })
        ));

        let mut graph = GraphBuilder::new("g", "input", 1, 1, 1);
        let y = graph.clip(&graph.input(), 6.0, 0.0);
        let y = graph.flatten(&y);
        graph.output(&y, "y", 1);
        assert!(matches!(
            graph.finish("0", &[]),
            Err(ExportError::Invalid { .. })
        ));
    }

    #[test]
    fn fold_batch_norm_checks_lengths() {
        let error = fold_batch_norm(
            &[1.0; 4],
            [2, 2, 1, 1],
            None,
            &[1.0; 2],
            &[0.0; 2],
            &[0.0; 3],
            &[1.0; 2],
            1e-5,
        )
        .unwrap_err();
        assert!(matches!(error, ExportError::Length { ref name, .. } if name == "batch norm mean"));
        let error = fold_batch_norm(
            &[1.0; 4],
            [2, 2, 1, 1],
            None,
            &[1.0; 2],
            &[0.0; 2],
            &[0.0; 2],
            &[-1.0, 1.0],
            0.0,
        )
        .unwrap_err();
        assert!(matches!(error, ExportError::Invalid { .. }));
    }

    #[test]
    fn empty_names_are_rejected() {
        let mut graph = GraphBuilder::new("g", "", 1, 1, 1);
        let y = graph.flatten(&graph.input());
        graph.output(&y, "y", 1);
        assert!(matches!(
            graph.finish("0", &[]),
            Err(ExportError::Invalid { .. })
        ));

        let mut graph = GraphBuilder::new("g", "input", 1, 1, 1);
        let y = graph.flatten(&graph.input());
        graph.output(&y, "", 1);
        assert!(matches!(
            graph.finish("0", &[]),
            Err(ExportError::Invalid { .. })
        ));
    }

    #[test]
    fn describe_rejects_garbage() {
        assert!(describe(&[0xff, 0xff, 0xff]).is_err());
    }
}

//! The second half of the int8 rewrite: writing the QDQ graph a [`Plan`] describes.

use std::collections::{HashMap, HashSet};

use super::{
    ActivationParams, GraphProto, INT8, INT32, NodeProto, Plan, QuantizeError, QuantizeOptions,
    TensorProto, UINT8, WEIGHT_QMAX, WEIGHT_QMAX_REDUCED, float_tensor, float_values,
};
use crate::onnx::proto::{AttributeProto, AttributeType};

/// Writes the quantised graph from a [`Plan`] and the activation parameters.
pub(super) struct Rewrite<'a> {
    graph: &'a mut GraphProto,
    plan: &'a Plan,
    params: &'a HashMap<String, ActivationParams>,
    options: QuantizeOptions,
    /// Every name in use, so that new ones never clash.
    taken: HashSet<String>,
    /// Scale and zero-point initializers already written, per activation tensor.
    written_params: HashMap<String, (String, String)>,
}

impl<'a> Rewrite<'a> {
    pub(super) fn new(
        graph: &'a mut GraphProto,
        plan: &'a Plan,
        params: &'a HashMap<String, ActivationParams>,
        options: QuantizeOptions,
    ) -> Self {
        let taken = graph
            .initializer
            .iter()
            .map(|t| t.name.clone())
            .chain(graph.input.iter().map(|v| v.name.clone()))
            .chain(graph.output.iter().map(|v| v.name.clone()))
            .chain(
                graph
                    .node
                    .iter()
                    .flat_map(|n| n.output.iter().chain(std::iter::once(&n.name)).cloned()),
            )
            .collect();
        Self {
            graph,
            plan,
            params,
            options,
            taken,
            written_params: HashMap::new(),
        }
    }

    /// `base`, or `base` with underscores appended until no tensor, node or initializer has it.
    fn fresh(&mut self, base: String) -> String {
        let mut name = base;
        while self.taken.contains(&name) {
            name.push('_');
        }
        self.taken.insert(name.clone());
        name
    }

    pub(super) fn run(mut self) -> Result<(), QuantizeError> {
        let plan = self.plan;
        let old_nodes = std::mem::take(&mut self.graph.node);
        let initializers: HashMap<String, TensorProto> = self
            .graph
            .initializer
            .iter()
            .map(|t| (t.name.clone(), t.clone()))
            .collect();
        let consumed: HashSet<&String> = plan.consumed.iter().collect();
        // Tensor → its dequantised copy, read by quantised nodes instead of the float tensor.
        let mut copies: HashMap<String, String> = HashMap::new();
        let mut nodes = Vec::with_capacity(old_nodes.len() * 3);
        let graph_inputs: Vec<String> = self.graph.input.iter().map(|v| v.name.clone()).collect();
        for input in graph_inputs.iter().filter(|i| consumed.contains(i)) {
            let copy = self.quantize_copy(input, &mut nodes);
            copies.insert(input.clone(), copy);
        }
        for (index, mut node) in old_nodes.into_iter().enumerate() {
            if plan.folded.contains(&index) {
                continue;
            }
            let float_outputs = node.output.clone();
            if plan.quantized_nodes.contains(&index) {
                let source = node.input[0].clone();
                for input in &mut node.input {
                    if let Some(copy) = copies.get(input) {
                        input.clone_from(copy);
                    }
                }
                if let Some(&axis) = plan.weighted.get(&index) {
                    let input_scale = self.params[&source].scale;
                    self.quantize_weights(&mut node, axis, input_scale, &initializers, &mut nodes)?;
                }
                if let Some(tensor) = plan.writes.get(&index) {
                    let float = self.fresh(format!("{tensor}_float"));
                    node.output[0].clone_from(&float);
                    nodes.push(node);
                    self.quantize_into(&float, tensor, tensor, &mut nodes);
                    continue;
                }
            }
            nodes.push(node);
            for output in float_outputs.iter().filter(|o| consumed.contains(o)) {
                let copy = self.quantize_copy(output, &mut nodes);
                copies.insert(output.clone(), copy);
            }
        }
        self.graph.node = nodes;
        // Drop the float weights (and folded activations' bounds) no node reads any more.
        let read: HashSet<String> = self
            .graph
            .node
            .iter()
            .flat_map(|n| n.input.iter().cloned())
            .chain(self.graph.output.iter().map(|o| o.name.clone()))
            .chain(graph_inputs)
            .collect();
        self.graph.initializer.retain(|t| read.contains(&t.name));
        Ok(())
    }

    /// The scale and zero-point initializers of activation `tensor`, written once.
    fn activation_params(&mut self, tensor: &str) -> (String, String) {
        if let Some(names) = self.written_params.get(tensor) {
            return names.clone();
        }
        let params = self.params[tensor];
        let scale = self.fresh(format!("{tensor}_scale"));
        let zero_point = self.fresh(format!("{tensor}_zero_point"));
        self.graph
            .initializer
            .push(float_tensor(&scale, &[], &[params.scale]));
        self.graph.initializer.push(TensorProto {
            dims: Vec::new(),
            data_type: UINT8,
            name: zero_point.clone(),
            raw_data: vec![params.zero_point],
            ..TensorProto::default()
        });
        let names = (scale, zero_point);
        self.written_params.insert(tensor.to_owned(), names.clone());
        names
    }

    /// `QuantizeLinear(float) → DequantizeLinear → tensor`, with the parameters of
    /// `params_of` (the tensor itself, or the tensor a copy is made of).
    fn quantize_into(
        &mut self,
        float: &str,
        tensor: &str,
        params_of: &str,
        nodes: &mut Vec<NodeProto>,
    ) {
        let (scale, zero_point) = self.activation_params(params_of);
        let quantized = self.fresh(format!("{tensor}_quantized"));
        let q_name = self.fresh(format!("{tensor}_QuantizeLinear"));
        let dq_name = self.fresh(format!("{tensor}_DequantizeLinear"));
        nodes.push(node(
            &q_name,
            "QuantizeLinear",
            vec![float.to_owned(), scale.clone(), zero_point.clone()],
            &quantized,
            None,
        ));
        nodes.push(node(
            &dq_name,
            "DequantizeLinear",
            vec![quantized, scale, zero_point],
            tensor,
            None,
        ));
    }

    /// A dequantised copy of `tensor` for quantised readers; returns the copy's name.
    fn quantize_copy(&mut self, tensor: &str, nodes: &mut Vec<NodeProto>) -> String {
        let copy = self.fresh(format!("{tensor}_dequantized"));
        self.quantize_into(tensor, &copy, tensor, nodes);
        copy
    }

    /// Replaces the float weight (input 1) and bias (input 2) of `node` by int8 / int32
    /// initializers behind `DequantizeLinear` nodes on the channel `axis`.
    fn quantize_weights(
        &mut self,
        node: &mut NodeProto,
        axis: i64,
        input_scale: f32,
        initializers: &HashMap<String, TensorProto>,
        nodes: &mut Vec<NodeProto>,
    ) -> Result<(), QuantizeError> {
        let weight = &initializers[&node.input[1]];
        let values = float_values(weight)?;
        let dims: Vec<usize> = weight.dims.iter().map(|&d| d.max(0) as usize).collect();
        let channels = dims[axis as usize];
        let inner: usize = dims[axis as usize + 1..].iter().product();
        let channel_of = |i: usize| (i / inner.max(1)) % channels.max(1);
        let qmax = if self.options.reduce_range {
            WEIGHT_QMAX_REDUCED
        } else {
            WEIGHT_QMAX
        };
        let mut scales = weight_scales(&values, channels, channel_of, qmax);
        let bias = match node.input.get(2).filter(|b| !b.is_empty()) {
            Some(name) => Some((name.clone(), float_values(&initializers[name])?)),
            None => None,
        };
        let bias = bias.filter(|(_, values)| values.len() == channels);
        if let Some((_, bias)) = &bias {
            // An int32 bias must fit: raise a channel's weight scale where `bias / (input
            // scale × weight scale)` would not (a near-zero channel with a large bias).
            for (scale, &b) in scales.iter_mut().zip(bias) {
                let needed = b.abs() / (input_scale * (i32::MAX as f32 * 0.5));
                if needed > *scale {
                    *scale = needed;
                }
            }
        }
        let quantized = quantize_with_scales(&values, &scales, channel_of, qmax);
        let weight_name = node.input[1].clone();
        node.input[1] = self.dequantized_constant(
            &weight_name,
            &weight.dims,
            INT8,
            quantized.iter().map(|&q| q as u8).collect(),
            &scales,
            axis,
            nodes,
        );
        if let Some((bias_name, bias)) = bias {
            let bias_scales: Vec<f32> = scales.iter().map(|s| s * input_scale).collect();
            let quantized: Vec<u8> = bias
                .iter()
                .zip(&bias_scales)
                .flat_map(|(&b, &s)| ((b / s).round_ties_even() as i32).to_le_bytes())
                .collect();
            let dims = [i64::try_from(channels).unwrap_or(i64::MAX)];
            node.input[2] = self.dequantized_constant(
                &bias_name,
                &dims,
                INT32,
                quantized,
                &bias_scales,
                0,
                nodes,
            );
        }
        Ok(())
    }

    /// Writes the quantised constant `base` (raw little-endian `data` of `data_type`) with
    /// per-channel `scales` and zero points 0, and the `DequantizeLinear` reading them; returns
    /// the dequantised value's name.
    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per part of the DequantizeLinear being written"
    )]
    fn dequantized_constant(
        &mut self,
        base: &str,
        dims: &[i64],
        data_type: i32,
        data: Vec<u8>,
        scales: &[f32],
        axis: i64,
        nodes: &mut Vec<NodeProto>,
    ) -> String {
        let quantized = self.fresh(format!("{base}_quantized"));
        let scale = self.fresh(format!("{base}_scale"));
        let zero_point = self.fresh(format!("{base}_zero_point"));
        let dequantized = self.fresh(format!("{base}_dequantized"));
        let node_name = self.fresh(format!("{base}_DequantizeLinear"));
        let element = if data_type == INT32 { 4 } else { 1 };
        let channels = [i64::try_from(scales.len()).unwrap_or(i64::MAX)];
        self.graph.initializer.push(TensorProto {
            dims: dims.to_vec(),
            data_type,
            name: quantized.clone(),
            raw_data: data,
            ..TensorProto::default()
        });
        self.graph
            .initializer
            .push(float_tensor(&scale, &channels, scales));
        self.graph.initializer.push(TensorProto {
            dims: channels.to_vec(),
            data_type,
            name: zero_point.clone(),
            raw_data: vec![0; scales.len() * element],
            ..TensorProto::default()
        });
        nodes.push(node(
            &node_name,
            "DequantizeLinear",
            vec![quantized, scale, zero_point],
            &dequantized,
            Some(axis),
        ));
        dequantized
    }
}

/// Per-channel symmetric scales, `max |w| / qmax` (1 for an all-zero channel).
pub(super) fn weight_scales(
    weights: &[f32],
    channels: usize,
    channel_of: impl Fn(usize) -> usize,
    qmax: f32,
) -> Vec<f32> {
    let mut absmax = vec![0f32; channels];
    for (i, w) in weights.iter().enumerate() {
        let c = channel_of(i);
        absmax[c] = absmax[c].max(w.abs());
    }
    absmax
        .iter()
        .map(|&m| {
            let scale = m / qmax;
            if scale < f32::MIN_POSITIVE {
                1.0
            } else {
                scale
            }
        })
        .collect()
}

pub(super) fn quantize_with_scales(
    weights: &[f32],
    scales: &[f32],
    channel_of: impl Fn(usize) -> usize,
    qmax: f32,
) -> Vec<i8> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            (w / scales[channel_of(i)])
                .round_ties_even()
                .clamp(-qmax, qmax) as i8
        })
        .collect()
}

fn node(
    name: &str,
    op_type: &str,
    input: Vec<String>,
    output: &str,
    axis: Option<i64>,
) -> NodeProto {
    NodeProto {
        input,
        output: vec![output.to_owned()],
        name: name.to_owned(),
        op_type: op_type.to_owned(),
        attribute: axis
            .map(|axis| AttributeProto {
                name: "axis".into(),
                r#type: Some(AttributeType::Int as i32),
                i: Some(axis),
                ..AttributeProto::default()
            })
            .into_iter()
            .collect(),
        ..NodeProto::default()
    }
}

//! Half-size ONNX files: float32 weights stored as float16 and cast back to float32 on load.
//!
//! Every engine then still computes in float32 (onnxruntime and tract fold the casts into
//! constants when the session is built), so the only change is the weights' rounding to 11
//! significant bits, about 3 decimal digits — far below what moves a classifier's prediction.

use std::collections::HashSet;

use prost::Message as _;

use super::proto::{AttributeProto, AttributeType, ModelProto, NodeProto, TensorProto};

const FLOAT: i32 = 1;
const FLOAT16: i32 = 10;
/// Tensors below this many elements (scalars, clip bounds, small biases) stay float32: storing
/// them as half saves nothing worth a node.
const MIN_ELEMENTS: usize = 64;

/// Why a model could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum Fp16Error {
    #[error("not an ONNX model: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("the ONNX model has no graph")]
    NoGraph,
    #[error("initializer {0} has {1} bytes of raw data, not a whole number of floats")]
    RaggedRawData(String, usize),
}

/// How a conversion went, for the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fp16Summary {
    /// Initializers now stored as float16.
    pub converted: usize,
    /// Float initializers kept as float32: too small, or holding values beyond float16's range.
    pub kept: usize,
}

/// Rewrites `model_bytes` with its float32 initializers stored as float16, each followed by a
/// `Cast` back to float32 under the original name, so the graph's nodes are unchanged.
///
/// # Errors
/// When the bytes are not an ONNX model with a graph.
pub fn with_fp16_weights(model_bytes: &[u8]) -> Result<(Vec<u8>, Fp16Summary), Fp16Error> {
    let mut model = ModelProto::decode(model_bytes)?;
    let graph = model.graph.as_mut().ok_or(Fp16Error::NoGraph)?;
    // An initializer that is also a graph input can be overridden by the caller, so its name
    // and type must stay as they are.
    let inputs: HashSet<String> = graph.input.iter().map(|v| v.name.clone()).collect();
    let mut taken: HashSet<String> = graph
        .initializer
        .iter()
        .map(|t| t.name.clone())
        .chain(graph.node.iter().flat_map(|n| n.output.iter().cloned()))
        .collect();
    let mut casts = Vec::new();
    let mut summary = Fp16Summary {
        converted: 0,
        kept: 0,
    };
    for tensor in &mut graph.initializer {
        if tensor.data_type != FLOAT || inputs.contains(&tensor.name) {
            continue;
        }
        let values = float_values(tensor)?;
        if values.len() < MIN_ELEMENTS || values.iter().any(|v| v.abs() > f32::from(half::f16::MAX))
        {
            summary.kept += 1;
            continue;
        }
        let original = tensor.name.clone();
        let mut stored = format!("{original}_fp16");
        while taken.contains(&stored) {
            stored.push('_');
        }
        taken.insert(stored.clone());
        *tensor = TensorProto {
            dims: tensor.dims.clone(),
            data_type: FLOAT16,
            name: stored.clone(),
            raw_data: values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            ..TensorProto::default()
        };
        casts.push(NodeProto {
            input: vec![stored],
            output: vec![original.clone()],
            name: format!("{original}_to_float"),
            op_type: "Cast".into(),
            attribute: vec![AttributeProto {
                name: "to".into(),
                r#type: Some(AttributeType::Int as i32),
                i: Some(i64::from(FLOAT)),
                ..AttributeProto::default()
            }],
            ..NodeProto::default()
        });
        summary.converted += 1;
    }
    // Casts come first so the node list stays topologically sorted, as ONNX requires.
    casts.append(&mut graph.node);
    graph.node = casts;
    Ok((model.encode_to_vec(), summary))
}

fn float_values(tensor: &TensorProto) -> Result<Vec<f32>, Fp16Error> {
    if !tensor.float_data.is_empty() {
        return Ok(tensor.float_data.clone());
    }
    if !tensor.raw_data.len().is_multiple_of(4) {
        return Err(Fp16Error::RaggedRawData(
            tensor.name.clone(),
            tensor.raw_data.len(),
        ));
    }
    Ok(tensor
        .raw_data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

//! The Open Inference Protocol v2 (KServe, Triton) inference request and response bodies, as
//! `POST /v2/models/{name}/infer` reads and writes them; [`codec`] splits and checks them.

pub mod codec;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// The `parameters` object of requests, inputs and outputs.
pub type Parameters = serde_json::Map<String, Value>;

/// An inference request: one input, either `input` (FP32 `[N, 3, H, W]`, already normalised as
/// the model's metadata says) or `image` (BYTES `[N]`, each element a photo: base64-encoded in
/// JSON `data`, its own bytes in binary data).
///
/// With the binary tensor data extension, the `Inference-Header-Content-Length` header gives
/// the length of this JSON at the start of the body, an input has
/// `"parameters": {"binary_data_size": <bytes>}` instead of `data`, and the raw tensors follow
/// the JSON in input order. `"parameters": {"binary_data_output": true}` (or `binary_data` on a
/// requested output) returns outputs the same way.
#[derive(Debug, Deserialize, ToSchema)]
pub struct InferRequest {
    pub id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Parameters>,
    pub inputs: Vec<InferInput>,
    pub outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct InferInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    /// `binary_data_size`: bytes of the binary data after the JSON holding this tensor.
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Parameters>,
    /// Row-major values, flat or nested; absent when the tensor comes as binary data.
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    /// The tensor's share of the binary data after the JSON, as [`codec::decode_request`]
    /// found it.
    #[serde(skip)]
    pub binary: Option<Bytes>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RequestedOutput {
    pub name: String,
    /// `binary_data` (bool): return this output as binary data; `classification` (k) on
    /// `probabilities`: the k most probable classes instead.
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Parameters>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<InferOutput>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InferOutput {
    pub name: String,
    pub shape: Vec<usize>,
    pub datatype: String,
    /// `labels` of the probabilities' columns; `binary_data_size` when the output is binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Parameters>,
    /// The values in JSON; absent when they follow the JSON as binary data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<OutputData>,
    /// The values in the binary layout, sent after the JSON.
    #[serde(skip)]
    pub binary: Option<Vec<u8>>,
}

/// The values of an output, row-major.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum OutputData {
    /// Kept as `f32` so that each probability prints in its shortest exact form.
    Fp32(Vec<f32>),
    Bytes(Vec<String>),
}

//! The binary tensor data extension of the Open Inference Protocol (Triton's
//! `binary_tensor_data`, the default of `tritonclient`), and the checks every declared size
//! of an inference request goes through.
//!
//! With the extension, the `Inference-Header-Content-Length` header says how many bytes at the
//! start of the body are the JSON request; the tensors' raw bytes follow, input after input, each
//! input saying its share in `parameters.binary_data_size` instead of giving `data`. Values are
//! little-endian and row-major; a BYTES element is a 4-byte little-endian length and its bytes.
//! Responses use the same layout for the outputs asked for in binary (`binary_data` on an output,
//! or `binary_data_output` on the request for all of them).
//!
//! Nothing here allocates according to a size the client declared: every shape, length and
//! count is first compared, with arithmetic that cannot overflow, with the bytes actually
//! received (a mismatch is [`ProtocolError::BadRequest`], 400; a size no request could hold is
//! [`ProtocolError::TooLarge`], 413). The server's own limits (images per request) are the
//! server's to check.

use bytes::Bytes;
use serde_json::Value;

use super::{InferInput, InferOutput, InferRequest, InferResponse, OutputData, Parameters};
use crate::ProtocolError;

/// The header that gives the length of the JSON part of a body with binary tensors.
pub const HEADER_LENGTH: &str = "inference-header-content-length";
/// Input and response-output parameter: bytes of the binary section holding the tensor.
pub const BINARY_DATA_SIZE: &str = "binary_data_size";
/// Requested-output parameter: return this output as binary data.
pub const BINARY_DATA: &str = "binary_data";
/// Request parameter: return every output as binary data unless the output says otherwise.
pub const BINARY_DATA_OUTPUT: &str = "binary_data_output";

/// Bytes of one FP32 value.
const FP32_SIZE: usize = 4;
/// Bytes of the length prefix of a BYTES element.
const LENGTH_PREFIX: usize = 4;

/// Splits a request body into the JSON request and each input's binary data
/// ([`InferInput::binary`]).
///
/// `header_length` is the `Inference-Header-Content-Length` header: without it the whole
/// body is the JSON request and no input may have `binary_data_size`.
///
/// # Errors
/// [`ProtocolError::BadRequest`] for a header length that is not a number or lies past the end of
/// the body, invalid JSON, an input with both or neither of `data` and `binary_data_size`,
/// binary sizes that do not add up to the bytes after the JSON, and shared-memory parameters
/// (not supported).
pub fn decode_request(
    body: Bytes,
    header_length: Option<&str>,
) -> Result<InferRequest, ProtocolError> {
    let (json, mut binary) = match header_length {
        None => (body, None),
        Some(text) => {
            let length: usize = text.trim().parse().map_err(|_| {
                ProtocolError::BadRequest(format!(
                    "Inference-Header-Content-Length must be a number of bytes, not {text:?}"
                ))
            })?;
            if length > body.len() {
                return Err(ProtocolError::BadRequest(format!(
                    "Inference-Header-Content-Length is {length}, past the end of the {}-byte body",
                    body.len()
                )));
            }
            (body.slice(..length), Some(body.slice(length..)))
        }
    };
    let mut request: InferRequest = serde_json::from_slice(&json)
        .map_err(|e| ProtocolError::BadRequest(format!("invalid inference request: {e}")))?;
    for output in request.outputs.iter().flatten() {
        refuse_shared_memory(output.parameters.as_ref(), "output", &output.name)?;
    }
    let section_length = binary.as_ref().map_or(0, Bytes::len);
    for input in &mut request.inputs {
        refuse_shared_memory(input.parameters.as_ref(), "input", &input.name)?;
        let size = binary_data_size(input)?;
        match (size, &input.data, binary.as_mut()) {
            (Some(_), Some(_), _) => {
                return Err(ProtocolError::BadRequest(format!(
                    "input {:?} has both data and binary_data_size: give one",
                    input.name
                )));
            }
            (Some(_), None, None) => {
                return Err(ProtocolError::BadRequest(format!(
                    "input {:?} has binary_data_size, but the request has no \
                     Inference-Header-Content-Length header saying where its JSON ends",
                    input.name
                )));
            }
            (Some(size), None, Some(rest)) => {
                // Compared as u64: a size beyond the address space is simply too long.
                if size > rest.len() as u64 {
                    return Err(ProtocolError::BadRequest(format!(
                        "input {:?} declares binary_data_size {size}, but only {} bytes of \
                         binary data are left after the JSON header and the inputs before it",
                        input.name,
                        rest.len()
                    )));
                }
                // Fits in usize: it is at most `rest.len()`.
                input.binary = Some(rest.split_to(size as usize));
            }
            (None, None, _) => {
                return Err(ProtocolError::BadRequest(format!(
                    "input {:?} has neither data nor parameters.binary_data_size",
                    input.name
                )));
            }
            (None, Some(_), _) => {}
        }
    }
    if let Some(rest) = binary.filter(|rest| !rest.is_empty()) {
        return Err(ProtocolError::BadRequest(format!(
            "the inputs' binary_data_size add up to {} bytes, but {section_length} bytes follow \
             the JSON header ({} too many)",
            section_length - rest.len(),
            rest.len()
        )));
    }
    Ok(request)
}

/// `parameters.binary_data_size` of an input, when it has one.
fn binary_data_size(input: &InferInput) -> Result<Option<u64>, ProtocolError> {
    let Some(value) = input
        .parameters
        .as_ref()
        .and_then(|p| p.get(BINARY_DATA_SIZE))
    else {
        return Ok(None);
    };
    value.as_u64().map(Some).ok_or_else(|| {
        ProtocolError::BadRequest(format!(
            "input {:?}: binary_data_size must be a non-negative integer, not {value}",
            input.name
        ))
    })
}

fn refuse_shared_memory(
    parameters: Option<&Parameters>,
    kind: &str,
    name: &str,
) -> Result<(), ProtocolError> {
    if parameters.is_some_and(|p| p.keys().any(|key| key.starts_with("shared_memory_"))) {
        return Err(ProtocolError::BadRequest(format!(
            "{kind} {name:?} uses shared memory, which this server does not support: send the \
             tensor in the body (JSON data or binary data)"
        )));
    }
    Ok(())
}

/// Elements of a tensor of `shape`.
///
/// # Errors
/// [`ProtocolError::BadRequest`] for a negative dimension; [`ProtocolError::TooLarge`] when the
/// product does not even fit in a machine word.
pub fn element_count(shape: &[i64]) -> Result<usize, ProtocolError> {
    shape.iter().try_fold(1usize, |count, &dimension| {
        let dimension = usize::try_from(dimension).map_err(|_| {
            ProtocolError::BadRequest(format!("shape {shape:?} has a negative dimension"))
        })?;
        count.checked_mul(dimension).ok_or_else(|| {
            ProtocolError::TooLarge(format!(
                "shape {shape:?} declares more elements than any request can hold"
            ))
        })
    })
}

/// The `expected` FP32 values of an input, from its binary data or its JSON `data`.
///
/// # Errors
/// [`ProtocolError::BadRequest`] when the data holds another number of values (or bytes) than
/// `expected`, or something other than numbers; [`ProtocolError::TooLarge`] when `expected`
/// values cannot be counted in bytes.
pub fn fp32_values(input: &InferInput, expected: usize) -> Result<Vec<f32>, ProtocolError> {
    match (&input.binary, &input.data) {
        (Some(binary), _) => {
            let bytes = expected.checked_mul(FP32_SIZE).ok_or_else(|| {
                ProtocolError::TooLarge(format!(
                    "input {:?} declares {expected} values, more than any request can hold",
                    input.name
                ))
            })?;
            if binary.len() != bytes {
                return Err(ProtocolError::BadRequest(format!(
                    "input {:?}: shape {:?} needs {bytes} bytes of FP32 data ({FP32_SIZE} per \
                     value), binary_data_size is {}",
                    input.name,
                    input.shape,
                    binary.len()
                )));
            }
            Ok(decode_fp32(binary))
        }
        (None, Some(data)) => {
            // Counted before anything is allocated for them.
            let found = count_leaves(
                data,
                &|value| value.is_number(),
                "FP32 data must hold numbers",
            )?;
            if found != expected {
                return Err(ProtocolError::BadRequest(format!(
                    "input {:?}: shape {:?} says {expected} values, data holds {found}",
                    input.name, input.shape
                )));
            }
            let mut values = Vec::with_capacity(found);
            flatten(data, &mut |value| {
                values.push(value.as_f64().unwrap_or(f64::NAN) as f32);
            });
            Ok(values)
        }
        (None, None) => Err(no_data(input)),
    }
}

/// The `expected` elements of a BYTES input: each element's bytes from its binary data, or
/// the UTF-8 bytes of each string of its JSON `data`.
///
/// # Errors
/// [`ProtocolError::BadRequest`] when the data holds another number of elements than `expected`,
/// an element's length reaches past the end of the data, or JSON data holds non-strings.
pub fn bytes_elements(input: &InferInput, expected: usize) -> Result<Vec<Bytes>, ProtocolError> {
    match (&input.binary, &input.data) {
        (Some(binary), _) => decode_bytes_elements(binary, expected)
            .map_err(|why| ProtocolError::BadRequest(format!("input {:?}: {why}", input.name))),
        (None, Some(data)) => {
            let found = count_leaves(data, &Value::is_string, "BYTES data must hold strings")?;
            if found != expected {
                return Err(ProtocolError::BadRequest(format!(
                    "input shape {:?} says {expected} elements, data holds {found}",
                    input.shape
                )));
            }
            let mut elements = Vec::with_capacity(found);
            flatten(data, &mut |value| {
                if let Value::String(text) = value {
                    elements.push(Bytes::copy_from_slice(text.as_bytes()));
                }
            });
            Ok(elements)
        }
        (None, None) => Err(no_data(input)),
    }
}

fn no_data(input: &InferInput) -> ProtocolError {
    ProtocolError::BadRequest(format!(
        "input {:?} has neither data nor parameters.binary_data_size",
        input.name
    ))
}

/// Leaves of nested JSON arrays, each checked by `is_leaf`. JSON nesting is bounded by the
/// parser's recursion limit, so the recursion here is too.
fn count_leaves(
    value: &Value,
    is_leaf: &dyn Fn(&Value) -> bool,
    wrong: &str,
) -> Result<usize, ProtocolError> {
    match value {
        Value::Array(items) => items.iter().try_fold(0usize, |count, item| {
            Ok(count + count_leaves(item, is_leaf, wrong)?)
        }),
        leaf if is_leaf(leaf) => Ok(1),
        other => Err(ProtocolError::BadRequest(format!("{wrong}, found {other}"))),
    }
}

/// Calls `each` on every leaf of nested JSON arrays, in row-major order.
fn flatten(value: &Value, each: &mut dyn FnMut(&Value)) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| flatten(item, each)),
        leaf => each(leaf),
    }
}

/// Little-endian FP32 values; `bytes.len()` must be a multiple of 4 (a trailing partial value
/// is ignored).
pub fn decode_fp32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(FP32_SIZE)
        .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
        .collect()
}

/// FP32 values as little-endian bytes.
pub fn encode_fp32(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect()
}

/// Exactly `expected` BYTES elements, each a 4-byte little-endian length and that many bytes,
/// filling `data` to its end. The elements share `data`'s buffer.
///
/// # Errors
/// Why the data is not that: a length prefix cut off, a length past the end, more or fewer
/// elements than `expected`.
pub fn decode_bytes_elements(data: &Bytes, expected: usize) -> Result<Vec<Bytes>, String> {
    // Every element takes at least its length prefix, so this bounds the allocation by the
    // bytes received, whatever `expected` says.
    let mut elements = Vec::with_capacity(expected.min(data.len() / LENGTH_PREFIX));
    let mut offset = 0usize;
    while offset < data.len() {
        let index = elements.len();
        if index == expected {
            return Err(format!(
                "the shape says {expected} BYTES elements, but {} bytes follow the last of them",
                data.len() - offset
            ));
        }
        let rest = data.len() - offset;
        let Some(prefix) = data.get(offset..offset + LENGTH_PREFIX) else {
            return Err(format!(
                "BYTES element {index}: its {LENGTH_PREFIX}-byte length is cut off ({rest} bytes left)"
            ));
        };
        let length = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let start = offset + LENGTH_PREFIX;
        let available = data.len() - start;
        if u64::from(length) > available as u64 {
            return Err(format!(
                "BYTES element {index} declares {length} bytes, only {available} are left"
            ));
        }
        // At most `available`, so it fits in usize and `end` cannot overflow.
        let end = start + length as usize;
        elements.push(data.slice(start..end));
        offset = end;
    }
    if elements.len() != expected {
        return Err(format!(
            "the shape says {expected} BYTES elements, the data holds {}",
            elements.len()
        ));
    }
    Ok(elements)
}

/// BYTES elements in the binary layout: each a 4-byte little-endian length and its bytes.
///
/// # Panics
/// If an element is 4 GiB or longer, which the layout cannot express (outputs here are labels).
pub fn encode_bytes_elements<'a>(elements: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for element in elements {
        let length = u32::try_from(element.len()).expect("a BYTES element under 4 GiB");
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(element);
    }
    out
}

/// Whether each output goes back as binary data: its own `binary_data` parameter, else the
/// request's `binary_data_output`, else JSON.
///
/// # Errors
/// [`ProtocolError::BadRequest`] when either parameter is not a boolean.
pub fn wants_binary(
    request: Option<&Parameters>,
    output: Option<&Parameters>,
) -> Result<bool, ProtocolError> {
    let flag =
        |parameters: Option<&Parameters>, name: &str| match parameters.and_then(|p| p.get(name)) {
            None => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(*flag)),
            Some(other) => Err(ProtocolError::BadRequest(format!(
                "parameter {name} must be true or false, not {other}"
            ))),
        };
    let default = flag(request, BINARY_DATA_OUTPUT)?.unwrap_or(false);
    Ok(flag(output, BINARY_DATA)?.unwrap_or(default))
}

impl InferOutput {
    /// Moves the data into the binary section of the response, with `binary_data_size` in
    /// the output's parameters.
    pub fn into_binary(mut self) -> Self {
        let bytes = match self.data.take() {
            Some(OutputData::Fp32(values)) => encode_fp32(&values),
            Some(OutputData::Bytes(elements)) => {
                encode_bytes_elements(elements.iter().map(String::as_bytes))
            }
            None => return self,
        };
        self.parameters
            .get_or_insert_with(Parameters::new)
            .insert(BINARY_DATA_SIZE.into(), Value::from(bytes.len()));
        self.binary = Some(bytes);
        self
    }
}

/// A response body: the JSON response, followed by the binary outputs when there are any.
#[derive(Debug)]
pub struct EncodedResponse {
    pub body: Vec<u8>,
    /// Bytes of JSON at the start of `body` when binary data follows it.
    pub header_length: Option<usize>,
}

/// Lays out a response: JSON alone, or (when an output is binary) the JSON then each binary
/// output's bytes in output order.
///
/// # Errors
/// [`ProtocolError::Encode`] if the response cannot be serialised.
pub fn encode_response(response: &InferResponse) -> Result<EncodedResponse, ProtocolError> {
    let mut body = serde_json::to_vec(response)
        .map_err(|e| ProtocolError::Encode(format!("cannot serialise the response: {e}")))?;
    let binary: Vec<&[u8]> = response
        .outputs
        .iter()
        .filter_map(|output| output.binary.as_deref())
        .collect();
    if binary.is_empty() {
        return Ok(EncodedResponse {
            body,
            header_length: None,
        });
    }
    let header_length = body.len();
    body.reserve(binary.iter().map(|b| b.len()).sum());
    for bytes in binary {
        body.extend_from_slice(bytes);
    }
    Ok(EncodedResponse {
        body,
        header_length: Some(header_length),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A body with the binary extension: the JSON, then `binary`.
    fn binary_body(request: &Value, binary: &[u8]) -> (Bytes, String) {
        let mut body = request.to_string().into_bytes();
        let length = body.len().to_string();
        body.extend_from_slice(binary);
        (body.into(), length)
    }

    fn bad_request(result: Result<impl std::fmt::Debug, ProtocolError>) -> String {
        match result {
            Err(ProtocolError::BadRequest(message)) => message,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    fn too_large(result: Result<impl std::fmt::Debug, ProtocolError>) -> String {
        match result {
            Err(ProtocolError::TooLarge(message)) => message,
            other => panic!("expected a 413, got {other:?}"),
        }
    }

    fn fp32_input(shape: &[i64], size: usize) -> Value {
        json!({"name": "input", "datatype": "FP32", "shape": shape,
               "parameters": {"binary_data_size": size}})
    }

    #[test]
    fn fp32_and_bytes_inputs_round_trip_through_the_binary_layout() {
        let values = [0.5f32, -1.25, f32::MIN_POSITIVE, 3.0e38, 0.0, -0.0];
        let fp32 = encode_fp32(&values);
        let photos: [&[u8]; 3] = [b"\xff\xd8first photo", b"", b"\x89PNG third"];
        let elements = encode_bytes_elements(photos);
        let request = json!({
            "id": "r",
            "inputs": [
                fp32_input(&[1, 2, 3], fp32.len()),
                {"name": "image", "datatype": "BYTES", "shape": [3],
                 "parameters": {"binary_data_size": elements.len()}},
                {"name": "json", "datatype": "FP32", "shape": [2], "data": [[1.0], [2]]},
            ],
        });
        let (body, length) = binary_body(&request, &[fp32.clone(), elements.clone()].concat());
        let decoded = decode_request(body, Some(&length)).unwrap();
        assert_eq!(decoded.id.as_deref(), Some("r"));
        let [tensor, image, json] = decoded.inputs.as_slice() else {
            panic!("three inputs");
        };
        let got = fp32_values(tensor, 6).unwrap();
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            values.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        let got = bytes_elements(image, 3).unwrap();
        assert_eq!(got.iter().map(|b| b.as_ref()).collect::<Vec<_>>(), photos);
        assert_eq!(fp32_values(json, 2).unwrap(), [1.0, 2.0]);
        assert_eq!(decode_fp32(&fp32), values);
        assert_eq!(
            decode_bytes_elements(&Bytes::from(elements), 3).unwrap(),
            photos.map(Bytes::from_static)
        );
    }

    #[test]
    fn a_body_without_the_header_is_all_json() {
        let request = json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                                         "data": ["aGk=", ["eW8="]]}]});
        let decoded = decode_request(request.to_string().into(), None).unwrap();
        let elements = bytes_elements(&decoded.inputs[0], 2).unwrap();
        assert_eq!(
            elements,
            [Bytes::from_static(b"aGk="), Bytes::from_static(b"eW8=")]
        );
        // The header may also say the whole body is JSON.
        let body = Bytes::from(request.to_string());
        let length = body.len().to_string();
        decode_request(body, Some(&length)).unwrap();
    }

    #[test]
    fn the_header_length_must_be_a_length_within_the_body() {
        let request = json!({"inputs": [fp32_input(&[1], 4)]});
        let (body, length) = binary_body(&request, &[0; 4]);
        let total = body.len();
        for header in [
            "-1".to_string(),
            "twelve".into(),
            "".into(),
            "99999999999999999999999".into(),
            (total + 1).to_string(),
            usize::MAX.to_string(),
        ] {
            let message = bad_request(decode_request(body.clone(), Some(&header)));
            assert!(
                message.contains("Inference-Header-Content-Length"),
                "{message}"
            );
        }
        // A length inside the body that cuts the JSON short is invalid JSON.
        let short: usize = length.parse::<usize>().unwrap() - 1;
        bad_request(decode_request(body, Some(&short.to_string())));
    }

    #[test]
    fn binary_sizes_must_add_up_to_the_bytes_after_the_json() {
        let two = json!({"inputs": [fp32_input(&[1], 4), fp32_input(&[2], 8)]});
        // Too few bytes for the second input.
        let (body, length) = binary_body(&two, &[0; 10]);
        let message = bad_request(decode_request(body, Some(&length)));
        assert!(
            message.contains("binary_data_size 8") && message.contains("only 6"),
            "{message}"
        );
        // Bytes left over after both.
        let (body, length) = binary_body(&two, &[0; 13]);
        let message = bad_request(decode_request(body, Some(&length)));
        assert!(
            message.contains("add up to 12") && message.contains("13"),
            "{message}"
        );
        // Binary bytes but no input that claims them.
        let json_only =
            json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]});
        let (body, length) = binary_body(&json_only, &[0; 3]);
        bad_request(decode_request(body, Some(&length)));
        // A size no body can have.
        let huge = json!({"inputs": [fp32_input(&[1], 0), {"name": "y", "datatype": "FP32",
            "shape": [1], "parameters": {"binary_data_size": u64::MAX}}]});
        let (body, length) = binary_body(&huge, &[0; 4]);
        bad_request(decode_request(body, Some(&length)));
        // binary_data_size that is not a size.
        for size in [json!(-4), json!(4.5), json!("4"), json!(null)] {
            let request = json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1],
                "parameters": {"binary_data_size": size}}]});
            let (body, length) = binary_body(&request, &[0; 4]);
            let message = bad_request(decode_request(body, Some(&length)));
            assert!(message.contains("non-negative integer"), "{message}");
        }
        // The input's shape must match its share.
        let request = json!({"inputs": [fp32_input(&[1, 3], 8)]});
        let (body, length) = binary_body(&request, &[0; 8]);
        let decoded = decode_request(body, Some(&length)).unwrap();
        let message = bad_request(fp32_values(&decoded.inputs[0], 3));
        assert!(message.contains("needs 12 bytes"), "{message}");
    }

    #[test]
    fn data_and_binary_data_size_are_exclusive_and_one_is_needed() {
        let both = json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1],
            "parameters": {"binary_data_size": 4}}]});
        let (body, length) = binary_body(&both, &[0; 4]);
        assert!(bad_request(decode_request(body, Some(&length))).contains("both"));
        let neither = json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]});
        assert!(bad_request(decode_request(neither.to_string().into(), None)).contains("neither"));
        // binary_data_size without the header: there is no telling where the JSON ends.
        let request = json!({"inputs": [fp32_input(&[1], 4)]});
        let message = bad_request(decode_request(request.to_string().into(), None));
        assert!(
            message.contains("Inference-Header-Content-Length"),
            "{message}"
        );
        // Shared memory is refused rather than ignored.
        let shm = json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1],
            "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 4}}]});
        assert!(
            bad_request(decode_request(shm.to_string().into(), None)).contains("shared memory")
        );
        let shm = json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
            "outputs": [{"name": "label", "parameters": {"shared_memory_region": "r"}}]});
        assert!(
            bad_request(decode_request(shm.to_string().into(), None)).contains("shared memory")
        );
        // Parameters are an object.
        let odd = json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1],
            "parameters": [1]}]});
        bad_request(decode_request(odd.to_string().into(), None));
    }

    #[test]
    fn shapes_are_counted_without_overflow() {
        assert_eq!(element_count(&[]).unwrap(), 1);
        assert_eq!(element_count(&[2, 3, 4]).unwrap(), 24);
        assert_eq!(
            element_count(&[10_000_000, 3, 224, 224]).unwrap(),
            1_505_280_000_000
        );
        assert_eq!(element_count(&[0, i64::MAX]).unwrap(), 0);
        too_large(element_count(&[i64::MAX, i64::MAX]));
        too_large(element_count(&[1 << 40, 1 << 40]));
        bad_request(element_count(&[2, -1]));
        bad_request(element_count(&[i64::MIN]));
        // A count that fits but whose bytes would not.
        let input: InferInput = serde_json::from_value(json!({"name": "x", "datatype": "FP32",
            "shape": [1], "data": [1]}))
        .unwrap();
        let mut binary = input;
        binary.binary = Some(Bytes::from_static(&[0; 4]));
        too_large(fp32_values(&binary, usize::MAX / 2));
    }

    #[test]
    fn json_data_is_counted_against_the_shape_before_it_is_copied() {
        let input = |data: Value| -> InferInput {
            serde_json::from_value(
                json!({"name": "x", "datatype": "FP32", "shape": [4], "data": data}),
            )
            .unwrap()
        };
        assert_eq!(
            fp32_values(&input(json!([[1, 2], [3, 4.5]])), 4).unwrap(),
            [1.0, 2.0, 3.0, 4.5]
        );
        // A declared size far beyond the data is a mismatch, not an allocation.
        let message = bad_request(fp32_values(&input(json!([0.0])), 1_505_280_000_000));
        assert!(
            message.contains("1505280000000") && message.contains("holds 1"),
            "{message}"
        );
        bad_request(fp32_values(&input(json!([1, 2, 3])), 4));
        bad_request(fp32_values(&input(json!([1, "2", 3, 4])), 4));
        // A scalar is one value, not four.
        bad_request(fp32_values(&input(json!(1)), 4));
        bad_request(bytes_elements(&input(json!(["a", 1])), 2));
        bad_request(bytes_elements(&input(json!(["a", "b"])), 3));
    }

    #[test]
    fn bytes_elements_must_fill_the_data_exactly() {
        let data = |bytes: &[u8]| Bytes::copy_from_slice(bytes);
        let two = encode_bytes_elements([b"ab".as_slice(), b"c"]);
        assert_eq!(decode_bytes_elements(&data(&two), 2).unwrap().len(), 2);
        // Length past the end.
        let mut past = two.clone();
        past[0] = 200;
        let why = decode_bytes_elements(&data(&past), 2).unwrap_err();
        assert!(why.contains("declares 200 bytes"), "{why}");
        let why = decode_bytes_elements(&data(&[0xff, 0xff, 0xff, 0xff, 1]), 1).unwrap_err();
        assert!(why.contains("4294967295"), "{why}");
        // A length prefix cut off.
        let why = decode_bytes_elements(&data(&[&two[..], &[1, 0]].concat()), 3).unwrap_err();
        assert!(why.contains("cut off"), "{why}");
        // Fewer or more elements than the shape says.
        assert!(
            decode_bytes_elements(&data(&two), 3)
                .unwrap_err()
                .contains("holds 2")
        );
        assert!(
            decode_bytes_elements(&data(&two), 1)
                .unwrap_err()
                .contains("follow the last")
        );
        assert!(
            decode_bytes_elements(&data(&[]), 1)
                .unwrap_err()
                .contains("holds 0")
        );
        // An absurd count with little data allocates by the data, and fails on the count.
        assert!(
            decode_bytes_elements(&data(&two), usize::MAX)
                .unwrap_err()
                .contains("holds 2")
        );
        // Empty elements are elements.
        let empty = encode_bytes_elements([b"".as_slice(), b""]);
        assert_eq!(
            decode_bytes_elements(&data(&empty), 2).unwrap(),
            [Bytes::new(), Bytes::new()]
        );
    }

    #[test]
    fn outputs_follow_binary_data_then_binary_data_output() {
        let params = |value: Value| -> Parameters { serde_json::from_value(value).unwrap() };
        let all = params(json!({"binary_data_output": true}));
        let yes = params(json!({"binary_data": true}));
        let no = params(json!({"binary_data": false}));
        assert!(!wants_binary(None, None).unwrap());
        assert!(wants_binary(Some(&all), None).unwrap());
        assert!(!wants_binary(Some(&all), Some(&no)).unwrap());
        assert!(wants_binary(None, Some(&yes)).unwrap());
        bad_request(wants_binary(
            Some(&params(json!({"binary_data_output": 1}))),
            None,
        ));
        bad_request(wants_binary(
            None,
            Some(&params(json!({"binary_data": "true"}))),
        ));
    }

    #[test]
    fn responses_put_binary_outputs_after_the_json_in_order() {
        let output = |name: &str, data: OutputData| InferOutput {
            name: name.into(),
            shape: vec![2],
            datatype: "X".into(),
            parameters: None,
            data: Some(data),
            binary: None,
        };
        let response = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: None,
            outputs: vec![
                output("p", OutputData::Fp32(vec![0.25, 0.75])).into_binary(),
                output("j", OutputData::Fp32(vec![1.0, 2.0])),
                output("l", OutputData::Bytes(vec!["cat".into(), "".into()])).into_binary(),
            ],
        };
        let encoded = encode_response(&response).unwrap();
        let length = encoded.header_length.unwrap();
        let header: Value = serde_json::from_slice(&encoded.body[..length]).unwrap();
        assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert!(header["outputs"][0].get("data").is_none());
        assert_eq!(header["outputs"][1]["data"], json!([1.0, 2.0]));
        assert_eq!(header["outputs"][2]["parameters"]["binary_data_size"], 11);
        let binary = Bytes::copy_from_slice(&encoded.body[length..]);
        assert_eq!(binary.len(), 19);
        assert_eq!(decode_fp32(&binary[..8]), [0.25, 0.75]);
        assert_eq!(
            decode_bytes_elements(&binary.slice(8..), 2).unwrap(),
            [Bytes::from_static(b"cat"), Bytes::new()]
        );
        // All JSON: no header length, the body is the JSON.
        let json_only = InferResponse {
            outputs: vec![output("j", OutputData::Bytes(vec!["dog".into()]))],
            ..response
        };
        let encoded = encode_response(&json_only).unwrap();
        assert_eq!(encoded.header_length, None);
        let body: Value = serde_json::from_slice(&encoded.body).unwrap();
        assert_eq!(body["outputs"][0]["data"], json!(["dog"]));
    }
}

//! Open Inference Protocol request bodies, JSON or with binary tensors after the JSON: decoding
//! never panics, and no input's values or elements take more than a small multiple of the
//! body's bytes, whatever its shape declares.
#![no_main]

use bestiary_protocol::oip::InferRequest;
use bestiary_protocol::oip::codec::{
    bytes_elements, decode_request, element_count, fp32_values, wants_binary,
};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

/// Bytes of one FP32 value, and of a BYTES element's length prefix.
const WORD: usize = 4;

fuzz_target!(|bytes: &[u8]| {
    // The first line is the Inference-Header-Content-Length header, the rest the body: decoded
    // as all JSON (no header) and, when the line is not empty, with that header.
    let (header, body) = match bytes.iter().position(|&b| b == b'\n') {
        Some(end) => (&bytes[..end], &bytes[end + 1..]),
        None => (&[][..], bytes),
    };
    let body = Bytes::copy_from_slice(body);
    if let Ok(request) = decode_request(body.clone(), None) {
        check(&request, body.len());
    }
    if let Ok(header) = std::str::from_utf8(header)
        && !header.is_empty()
        && let Ok(request) = decode_request(body.clone(), Some(header))
    {
        let binary: usize = request
            .inputs
            .iter()
            .filter_map(|i| i.binary.as_ref())
            .map(Bytes::len)
            .sum();
        assert!(binary <= body.len());
        check(&request, body.len());
    }
});

/// Every input read with the shape it declares, as serve reads it.
fn check(request: &InferRequest, body: usize) {
    for output in request.outputs.iter().flatten() {
        let _ = wants_binary(request.parameters.as_ref(), output.parameters.as_ref());
    }
    for input in &request.inputs {
        let Ok(count) = element_count(&input.shape) else {
            continue;
        };
        if let Ok(values) = fp32_values(input, count) {
            assert_eq!(values.len(), count);
            match &input.binary {
                // Exactly the bytes sent.
                Some(binary) => assert_eq!(values.len() * WORD, binary.len()),
                // A JSON number takes at least a byte and its separator.
                None => assert!(values.len() * 2 <= body + 1, "{} values", values.len()),
            }
        }
        if let Ok(elements) = bytes_elements(input, count) {
            assert_eq!(elements.len(), count);
            let held: usize = elements.iter().map(Bytes::len).sum();
            assert!(held <= body);
            match &input.binary {
                // Each element takes its length prefix.
                Some(binary) => assert!(elements.len() * WORD + held == binary.len()),
                // Each element is a string, `""` and a separator at least.
                None => assert!(
                    elements.len() * 3 <= body + 1,
                    "{} elements",
                    elements.len()
                ),
            }
        }
    }
}

//! `multipart/form-data` photo bodies: any bytes give file parts that together take no more
//! bytes than the body, or a clean 400; with a fixed boundary, and with the boundary of a
//! Content-Type given by the input's first line.
#![no_main]

use bestiary_protocol::ProtocolError;
use bestiary_protocol::multipart::{boundary, parse_multipart};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

/// The boundary of the seeds (fuzz/seeds/multipart).
const BOUNDARY: &str = "bestiary-fuzz-boundary";

fuzz_target!(|bytes: &[u8]| {
    check(Bytes::copy_from_slice(bytes), BOUNDARY);
    if let Some(end) = bytes.iter().position(|&b| b == b'\n')
        && let Ok(content_type) = std::str::from_utf8(&bytes[..end])
    {
        match boundary(content_type) {
            Ok(boundary) => check(Bytes::copy_from_slice(&bytes[end + 1..]), &boundary),
            Err(error) => assert!(matches!(error, ProtocolError::BadRequest(_))),
        }
    }
});

fn check(body: Bytes, boundary: &str) {
    let length = body.len();
    match parse_multipart(body, boundary) {
        Ok(parts) => {
            assert!(parts.len() <= length);
            assert!(parts.iter().map(|p| p.bytes.len()).sum::<usize>() <= length);
        }
        Err(error) => assert!(matches!(error, ProtocolError::BadRequest(_)), "{error:?}"),
    }
}

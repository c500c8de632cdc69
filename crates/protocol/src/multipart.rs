//! `multipart/form-data` bodies of photos, already read into memory within the body limit:
//! every part must be a file, named by its file name, else its field name, else its position.
//!
//! The parsing is `multer`'s (the parser under axum's `Multipart` extractor), driven here over
//! the bytes in memory without a runtime. Each part's bytes are a share of the body, so the parts
//! never take more memory than the body they came from.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use crate::ProtocolError;

/// Content types taken as a photo: a body of one of these is one raw photo, and a multipart
/// part with one (or any `image/…`) is a file even without a file name. The format itself is
/// recognised from the bytes.
pub const IMAGE_TYPES: [&str; 7] = [
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/gif",
    "image/bmp",
    "application/x-image",
    "application/octet-stream",
];

/// One file of a multipart body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The part's file name, else its field name, else `#<position>` (counted from 0).
    pub name: String,
    pub bytes: Bytes,
}

/// The boundary a `multipart/form-data` Content-Type declares.
///
/// # Errors
/// [`ProtocolError::BadRequest`] when the Content-Type is not `multipart/form-data` or has no
/// boundary.
pub fn boundary(content_type: &str) -> Result<String, ProtocolError> {
    multer::parse_boundary(content_type).map_err(invalid)
}

/// The parts of a multipart `body` delimited by `boundary`, in order.
///
/// # Errors
/// [`ProtocolError::BadRequest`] for a body that is not multipart with this boundary (cut
/// short, malformed part headers), and for a part that is not a file: one with neither a file
/// name nor an image content type.
pub fn parse_multipart(body: Bytes, boundary: &str) -> Result<Vec<Part>, ProtocolError> {
    // The whole body is one chunk, after which the stream ends: multer never waits for more.
    let stream = futures_util::stream::once(std::future::ready(Ok::<_, Infallible>(body)));
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut parts = Vec::new();
    while let Some(field) = ready(multipart.next_field())?.map_err(invalid)? {
        let position = parts.len();
        let content_type = field.content_type().map(AsRef::<str>::as_ref);
        let is_file = field.file_name().is_some()
            || content_type.is_some_and(|t| t.starts_with("image/") || IMAGE_TYPES.contains(&t));
        let name = field
            .file_name()
            .or(field.name())
            .map_or_else(|| format!("#{position}"), String::from);
        if !is_file {
            return Err(ProtocolError::BadRequest(format!(
                "multipart field {name:?} is not a file: every part must be a photo"
            )));
        }
        let bytes = ready(field.bytes())?.map_err(invalid)?;
        parts.push(Part { name, bytes });
    }
    Ok(parts)
}

fn invalid(error: multer::Error) -> ProtocolError {
    ProtocolError::BadRequest(format!("invalid multipart body: {error}"))
}

/// The output of a future that has all it needs: multer's, over a stream that is already at its
/// end. One that would wait is refused rather than spun on.
fn ready<F: Future>(future: F) -> Result<F::Output, ProtocolError> {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Ok(output),
        Poll::Pending => Err(ProtocolError::BadRequest(
            "invalid multipart body: it ends before its last part does".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDARY: &str = "bestiary-test-boundary-7d1f";

    /// A body of `parts`, each given by its Content-Disposition parameters, Content-Type and
    /// bytes.
    fn body(parts: &[(&str, Option<&str>, &[u8])]) -> Bytes {
        let mut body = b"preamble, ignored\r\n".to_vec();
        for (disposition, content_type, bytes) in parts {
            body.extend_from_slice(
                format!("--{BOUNDARY}\r\nContent-Disposition: form-data{disposition}\r\n")
                    .as_bytes(),
            );
            if let Some(content_type) = content_type {
                body.extend_from_slice(format!("Content-Type: {content_type}\r\n").as_bytes());
            }
            body.extend_from_slice(b"\r\n");
            body.extend_from_slice(bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
        body.into()
    }

    fn bad_request(body: Bytes, boundary: &str) -> String {
        match parse_multipart(body, boundary) {
            Err(ProtocolError::BadRequest(message)) => message,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn files_are_named_by_file_name_then_field_name_then_position() {
        let photo = b"\xff\xd8\xff\r\n--not-the-boundary\r\n\xff\xd9";
        let body = body(&[
            (
                "; name=\"image\"; filename=\"cat.jpg\"",
                Some("image/jpeg"),
                photo,
            ),
            ("; name=\"second\"", Some("image/png"), b"\x89PNG"),
            ("", Some("application/octet-stream"), b""),
            ("; name=\"x\"; filename=\"notes.bin\"", None, b"raw"),
        ]);
        let parts = parse_multipart(body, BOUNDARY).unwrap();
        let named: Vec<(&str, &[u8])> = parts
            .iter()
            .map(|p| (p.name.as_str(), p.bytes.as_ref()))
            .collect();
        assert_eq!(
            named,
            [
                ("cat.jpg", photo.as_slice()),
                ("second", b"\x89PNG".as_slice()),
                ("#2", b"".as_slice()),
                ("notes.bin", b"raw".as_slice()),
            ]
        );
        assert_eq!(parse_multipart(body_of_no_parts(), BOUNDARY).unwrap(), []);
    }

    fn body_of_no_parts() -> Bytes {
        Bytes::from(format!("--{BOUNDARY}--\r\n"))
    }

    #[test]
    fn every_part_must_be_a_file() {
        for content_type in [None, Some("text/plain")] {
            let body = body(&[
                ("; filename=\"a.jpg\"", Some("image/jpeg"), b"a"),
                ("; name=\"caption\"", content_type, b"a cat"),
            ]);
            assert_eq!(
                bad_request(body, BOUNDARY),
                "multipart field \"caption\" is not a file: every part must be a photo"
            );
        }
    }

    #[test]
    fn malformed_bodies_are_bad_requests() {
        let good = body(&[("; filename=\"a.jpg\"", Some("image/jpeg"), b"photo")]);
        // Another boundary, a body cut anywhere, no body at all.
        assert!(bad_request(good.clone(), "other").starts_with("invalid multipart body: "));
        for end in [0, 10, 40, good.len() - 12, good.len() - 3] {
            let message = bad_request(good.slice(..end), BOUNDARY);
            assert!(
                message.starts_with("invalid multipart body: "),
                "{end}: {message}"
            );
        }
        // Part headers that never end.
        let headers = Bytes::from(format!("--{BOUNDARY}\r\nContent-Type: image/png\r\n"));
        bad_request(headers, BOUNDARY);
    }

    #[test]
    fn the_boundary_comes_from_a_multipart_content_type() {
        assert_eq!(
            boundary(&format!("multipart/form-data; boundary={BOUNDARY}")).unwrap(),
            BOUNDARY
        );
        assert_eq!(
            boundary("multipart/form-data; boundary=\"quoted; b\"").unwrap(),
            "quoted; b"
        );
        for content_type in ["multipart/form-data", "image/jpeg; boundary=x", "", ";;"] {
            let Err(ProtocolError::BadRequest(message)) = boundary(content_type) else {
                panic!("{content_type:?} has no multipart boundary");
            };
            assert!(message.starts_with("invalid multipart body: "), "{message}");
        }
    }
}

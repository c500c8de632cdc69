//! SageMaker batch transform's JSON Lines bodies: each non-blank line one record, a reference to
//! an object (`{"source-ref": uri}` or `{"uri": uri}`) or the photo itself (`{"b64": data}`).
//!
//! Reading the objects is the server's business; this only parses and checks the lines. An
//! inline photo's bytes are at most three quarters of its line, so the records never take more
//! memory than the body they came from.

use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;

use crate::ProtocolError;

/// One record of the body, in the order of the lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// An object to read: a key relative to the server's bucket or an object-store URL, as the
    /// line gave it (and as the photo is then named).
    Uri(String),
    /// A photo sent in the line itself, named `line <n>` after its line (counted from 1).
    Inline { name: String, bytes: Bytes },
}

/// One line as JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonLine {
    #[serde(rename = "source-ref", alias = "uri")]
    source_ref: Option<String>,
    b64: Option<String>,
}

/// The records of a JSON Lines body; blank lines are skipped.
///
/// # Errors
/// [`ProtocolError::BadRequest`] for a body that is not UTF-8, and, naming the line (`line
/// <n>: …`), for a line that is not such a JSON object, gives none or several of `source-ref`,
/// `uri` and `b64`, or has invalid base64.
pub fn parse_json_lines(body: &[u8]) -> Result<Vec<Record>, ProtocolError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ProtocolError::BadRequest("JSON Lines must be UTF-8".into()))?;
    let mut records = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad_line =
            |why: String| ProtocolError::BadRequest(format!("line {}: {why}", number + 1));
        let record: JsonLine = serde_json::from_str(line).map_err(|e| {
            bad_line(format!(
                "expected {{\"source-ref\": \"s3://…\"}} or {{\"b64\": \"…\"}}: {e}"
            ))
        })?;
        records.push(match (record.source_ref, record.b64) {
            (Some(uri), None) => Record::Uri(uri),
            (None, Some(data)) => Record::Inline {
                name: format!("line {}", number + 1),
                bytes: base64::engine::general_purpose::STANDARD
                    .decode(data.trim())
                    .map_err(|e| bad_line(format!("invalid base64: {e}")))?
                    .into(),
            },
            _ => {
                return Err(bad_line(
                    "give exactly one of source-ref, uri or b64".into(),
                ));
            }
        });
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad_request(body: &str) -> String {
        match parse_json_lines(body.as_bytes()) {
            Err(ProtocolError::BadRequest(message)) => message,
            other => panic!("expected a 400 for {body:?}, got {other:?}"),
        }
    }

    #[test]
    fn references_and_inline_photos_keep_the_order_of_their_lines() {
        let body = "{\"source-ref\": \"s3://b/cat.jpg\"}\n\n  \r\n{\"b64\": \" aGk= \"}\r\n\
                    {\"uri\": \"dog.jpg\"}";
        assert_eq!(
            parse_json_lines(body.as_bytes()).unwrap(),
            [
                Record::Uri("s3://b/cat.jpg".into()),
                Record::Inline {
                    name: "line 4".into(),
                    bytes: Bytes::from_static(b"hi"),
                },
                Record::Uri("dog.jpg".into()),
            ]
        );
        assert_eq!(parse_json_lines(b"").unwrap(), []);
        assert_eq!(parse_json_lines(b"\n \n").unwrap(), []);
    }

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(
            parse_json_lines(b"\xff\n").unwrap_err(),
            ProtocolError::BadRequest("JSON Lines must be UTF-8".into())
        );
        let message = bad_request("{\"uri\": \"a.jpg\"}\nnot json\n");
        assert!(
            message.starts_with("line 2: expected {\"source-ref\""),
            "{message}"
        );
        for line in [
            "{}",
            "{\"source-ref\": null}",
            "{\"uri\": \"a\", \"b64\": \"aGk=\"}",
        ] {
            let message = bad_request(line);
            assert_eq!(
                message, "line 1: give exactly one of source-ref, uri or b64",
                "{line}"
            );
        }
        // Both names of the reference, an unknown field, a number instead of a string.
        for line in [
            "{\"uri\": \"a\", \"source-ref\": \"b\"}",
            "{\"uri\": \"a\", \"label\": \"cat\"}",
            "{\"uri\": 1}",
            "[\"a.jpg\"]",
        ] {
            assert!(bad_request(line).starts_with("line 1: expected"), "{line}");
        }
        let message = bad_request("\n{\"b64\": \"not base64!\"}");
        assert!(message.starts_with("line 2: invalid base64"), "{message}");
    }
}

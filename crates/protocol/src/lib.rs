//! The wire formats `bestiary serve` parses from clients, size-checked, with no engine: Open
//! Inference Protocol requests (JSON, or with binary tensors after the JSON), SageMaker JSON
//! Lines records and `multipart/form-data` photo bodies.
//!
//! Every parser here takes bytes already read within the server's body limit and checks each
//! size the client declares against the bytes actually received before allocating for it, so
//! hostile input costs at most a small multiple of its own size. Nothing here reads objects,
//! decodes photos or runs a model, and nothing depends on the HTTP server: the fuzz targets
//! (`fuzz/`) build this crate alone.

pub mod json_lines;
pub mod multipart;
pub mod oip;

/// Why a client's body was refused; `bestiary-serve` turns each variant into an HTTP status in
/// one place (its `ApiError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The body is malformed or contradicts itself (400).
    #[error("{0}")]
    BadRequest(String),
    /// The body declares more than any request can hold (413).
    #[error("{0}")]
    TooLarge(String),
    /// A response could not be encoded: the server's fault, not the client's (500).
    #[error("{0}")]
    Encode(String),
}

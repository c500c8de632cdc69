//! The one error type of the API and the one place where each error becomes an HTTP status.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bestiary_engine::EngineError;
use bestiary_protocol::ProtocolError;
use bestiary_storage::{StorageError, StorageErrorKind};
use serde::Serialize;
use utoipa::ToSchema;

/// Everything a request can fail with. [`IntoResponse`] below is the only place that decides
/// statuses, so every route answers the same way for the same problem.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid API key (send it as `Authorization: Bearer <key>`)")]
    Unauthorized,
    #[error(
        "/admin/* is off on a server without API keys: start serve with --api-key (or \
         --open-admin on a machine only you can reach)"
    )]
    AdminClosed,
    /// A URI outside the bucket and the `--allow-uri-prefix` list: refused before any request
    /// leaves the server, so callers cannot use its credentials on other buckets.
    #[error("{0}")]
    UriNotAllowed(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// An input that is not a usable photo; `reason` is the decoder's stable code
    /// (`corrupt`, `empty`, `not-an-image`, `too-large`).
    #[error("image {image}: {message}")]
    UndecodableImage {
        image: String,
        reason: &'static str,
        message: String,
    },
    /// The queue or the concurrency limit is full; the client should retry after a while.
    #[error("{message}")]
    Overloaded {
        message: String,
        retry_after: Duration,
    },
    /// An explanation asked of a model whose graph was exported without class activation
    /// maps: the request is fine, but conflicts with the model being served (409).
    #[error("{0}")]
    NoClassActivation(String),
    #[error("the model is not loaded yet")]
    NotReady,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the request took longer than {0:?}")]
    Timeout(Duration),
    /// A storage failure. The client sees only its kind (the store's URL, paths and the
    /// credential chain's messages stay in the server's log, written by `into_response`).
    #[error("{}", .0.kind.describe())]
    Storage(#[from] StorageError),
    /// A storage failure about an object the client named: the response names it as the client
    /// gave it, never where it lives.
    #[error("{}: {name}", .error.kind.describe())]
    Object { name: String, error: StorageError },
    #[error("{0}")]
    Internal(String),
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    /// What went wrong, for people.
    pub error: String,
    /// What went wrong, for programs: a stable snake_case identifier.
    pub error_type: String,
    /// For undecodable images: the decoder's reason code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For undecodable images: which input it was (file name, URI or position).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

impl ApiError {
    /// The status and the stable `error_type` of this error.
    pub fn status_and_type(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::AdminClosed => (StatusCode::FORBIDDEN, "admin_closed"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::UndecodableImage { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "undecodable_image")
            }
            Self::Overloaded { .. } => (StatusCode::TOO_MANY_REQUESTS, "overloaded"),
            Self::NoClassActivation(_) => (StatusCode::CONFLICT, "no_class_activation"),
            Self::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            Self::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            Self::Timeout(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            Self::UriNotAllowed(_) => (StatusCode::FORBIDDEN, "uri_not_allowed"),
            Self::Storage(error) | Self::Object { error, .. } => match error.kind {
                StorageErrorKind::InvalidUrl | StorageErrorKind::InvalidKey => {
                    (StatusCode::BAD_REQUEST, "invalid_uri")
                }
                StorageErrorKind::NotFound | StorageErrorKind::BucketNotFound => {
                    (StatusCode::NOT_FOUND, "object_not_found")
                }
                StorageErrorKind::PermissionDenied => (StatusCode::FORBIDDEN, "storage_forbidden"),
                StorageErrorKind::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
                // The store behind the server failed, not the server itself.
                _ => (StatusCode::BAD_GATEWAY, "storage_error"),
            },
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// An engine failure on one input: bad photos are the client's problem (422), the rest ours.
    pub fn from_engine(error: EngineError, image: &str) -> Self {
        match error {
            EngineError::Decode(decode) => Self::UndecodableImage {
                image: image.to_string(),
                reason: decode.code(),
                message: decode.to_string(),
            },
            error @ EngineError::NoClassActivation { .. } => {
                Self::NoClassActivation(error.to_string())
            }
            error @ EngineError::UnknownClass { .. } => Self::BadRequest(error.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }

    /// A storage failure about the object the client called `name`.
    pub fn object(name: &str, error: StorageError) -> Self {
        Self::Object {
            name: name.to_string(),
            error,
        }
    }

    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::Overloaded {
            message: message.into(),
            retry_after: Duration::from_secs(1),
        }
    }
}

/// The protocol parsers' refusals (`bestiary-protocol`): the only place they become API errors.
impl From<ProtocolError> for ApiError {
    fn from(error: ProtocolError) -> Self {
        match error {
            ProtocolError::BadRequest(message) => Self::BadRequest(message),
            ProtocolError::TooLarge(message) => Self::PayloadTooLarge(message),
            ProtocolError::Encode(message) => Self::Internal(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error_type) = self.status_and_type();
        match &self {
            // The whole story, URL and cause included, is for the operator only.
            Self::Storage(error) | Self::Object { error, .. } if status.is_server_error() => {
                tracing::warn!(%status, error_type, "{error}");
            }
            Self::Storage(error) | Self::Object { error, .. } => {
                tracing::info!(%status, error_type, "{error}");
            }
            _ if status.is_server_error() => tracing::warn!(%status, error_type, "{self}"),
            _ => {}
        }
        let (reason, image) = match &self {
            Self::UndecodableImage { reason, image, .. } => {
                (Some((*reason).to_string()), Some(image.clone()))
            }
            _ => (None, None),
        };
        let body = ErrorResponse {
            error: self.to_string(),
            error_type: error_type.to_string(),
            reason,
            image,
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            Self::Overloaded { retry_after, .. } => {
                let seconds = retry_after.as_secs().max(1);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            Self::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

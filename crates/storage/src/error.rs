//! Storage errors that always name the URL involved and say what kind of failure it was.

use std::fmt;

/// What went wrong, coarse enough for callers to branch on (HTTP status, skip-vs-abort).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageErrorKind {
    /// The URL itself is malformed or uses an unknown scheme.
    InvalidUrl,
    /// A key is not acceptable (empty segment, `..`, escapes the store's root through a symlink).
    InvalidKey,
    /// The object does not exist.
    NotFound,
    /// The bucket or container does not exist.
    BucketNotFound,
    /// Credentials were rejected or lack permission.
    PermissionDenied,
    /// A conditional write found the object already there.
    AlreadyExists,
    /// A precondition (ETag match) failed.
    Precondition,
    /// The backend does not support this operation.
    NotSupported,
    /// The object is larger than the reader accepts (checked before its body is read).
    TooLarge,
    /// Anything else: network failures after retries, server errors, I/O errors.
    Other,
}

impl StorageErrorKind {
    /// What this kind of failure is, in a few words that reveal nothing about the store.
    pub fn describe(self) -> &'static str {
        match self {
            Self::InvalidUrl => "invalid store URL",
            Self::InvalidKey => "invalid object key",
            Self::NotFound => "object not found",
            Self::BucketNotFound => "bucket not found",
            Self::PermissionDenied => "access denied (check credentials and permissions)",
            Self::AlreadyExists => "object already exists",
            Self::Precondition => "precondition failed (object changed)",
            Self::NotSupported => "operation not supported by this store",
            Self::TooLarge => "object larger than the limit",
            Self::Other => "storage error",
        }
    }
}

/// A storage failure: its kind, the URL it concerns and the underlying cause.
#[derive(Debug)]
pub struct StorageError {
    pub kind: StorageErrorKind,
    pub url: String,
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
    pub detail: Option<String>,
}

impl StorageError {
    pub fn new(kind: StorageErrorKind, url: impl Into<String>) -> Self {
        Self {
            kind,
            url: url.into(),
            source: None,
            detail: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Classifies an `object_store` error; S3 reports a missing bucket and a bad signature only
    /// in the message body, so those are recognised by their error codes.
    pub fn from_object_store(err: object_store::Error, url: impl Into<String>) -> Self {
        use object_store::Error as E;
        let text = err.to_string();
        let kind = match &err {
            E::NotFound { .. } if text.contains("NoSuchBucket") => StorageErrorKind::BucketNotFound,
            E::NotFound { .. } => StorageErrorKind::NotFound,
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
                StorageErrorKind::PermissionDenied
            }
            E::AlreadyExists { .. } => StorageErrorKind::AlreadyExists,
            E::Precondition { .. } => StorageErrorKind::Precondition,
            E::NotSupported { .. } | E::NotImplemented { .. } => StorageErrorKind::NotSupported,
            E::InvalidPath { .. } => StorageErrorKind::InvalidKey,
            _ if text.contains("NoSuchBucket") => StorageErrorKind::BucketNotFound,
            _ if [
                "SignatureDoesNotMatch",
                "InvalidAccessKeyId",
                "AccessDenied",
                "403 Forbidden",
            ]
            .iter()
            .any(|code| text.contains(code)) =>
            {
                StorageErrorKind::PermissionDenied
            }
            _ => StorageErrorKind::Other,
        };
        Self {
            kind,
            url: url.into(),
            source: Some(Box::new(err)),
            detail: None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self.kind, StorageErrorKind::NotFound)
    }

    /// Whether retrying the same request cannot help: a bad URL or key, a missing bucket,
    /// denied credentials, an unsupported operation. Network failures and server errors
    /// (`Other`) may pass; a missing object or a lost race is for the caller to judge.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self.kind,
            StorageErrorKind::InvalidUrl
                | StorageErrorKind::InvalidKey
                | StorageErrorKind::BucketNotFound
                | StorageErrorKind::PermissionDenied
                | StorageErrorKind::NotSupported
        )
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.describe(), self.url)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        if let Some(source) = &self.source {
            // The backend's message, then the root cause when it adds something: object_store
            // nests the same words several levels deep, and "Connection refused" is the one
            // that matters.
            let message = source.to_string();
            let mut root: &dyn std::error::Error = source.as_ref();
            while let Some(next) = root.source() {
                root = next;
            }
            let root = root.to_string();
            if root.is_empty() || message.contains(&root) {
                write!(f, " ({message})")?;
            } else {
                write!(f, " ({message}: {root})")?;
            }
        }
        Ok(())
    }
}

/// The cause is part of the message (see `Display`) rather than a `source()`: error chains
/// printed with `{:#}` would otherwise repeat object_store's nested messages several times.
impl std::error::Error for StorageError {}

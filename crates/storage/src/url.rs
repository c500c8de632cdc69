//! Parsing of store URLs (`s3://bucket/prefix`, `file:///dir`, plain paths, …) into their parts.

use std::path::{Path, PathBuf};

use crate::{Result, StorageError, StorageErrorKind};

/// A store URL split into the backend, the bucket (or local root) and the prefix inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A local folder, held as an absolute path.
    Local {
        root: PathBuf,
    },
    S3 {
        bucket: String,
        prefix: String,
    },
    Gcs {
        bucket: String,
        prefix: String,
    },
    Azure {
        container: String,
        prefix: String,
    },
    /// A named in-process store shared by every `memory://name` opened in the same process.
    Memory {
        name: String,
        prefix: String,
    },
}

impl StoreUrl {
    /// The canonical text form of this URL, without a trailing slash.
    pub fn display(&self) -> String {
        fn join(scheme: &str, bucket: &str, prefix: &str) -> String {
            if prefix.is_empty() {
                format!("{scheme}://{bucket}")
            } else {
                format!("{scheme}://{bucket}/{prefix}")
            }
        }
        match self {
            Self::Local { root } => root.display().to_string(),
            Self::S3 { bucket, prefix } => join("s3", bucket, prefix),
            Self::Gcs { bucket, prefix } => join("gs", bucket, prefix),
            Self::Azure { container, prefix } => join("az", container, prefix),
            Self::Memory { name, prefix } => join("memory", name, prefix),
        }
    }

    /// The prefix inside the bucket (empty for local roots, which carry it in the path).
    pub fn prefix(&self) -> &str {
        match self {
            Self::Local { .. } => "",
            Self::S3 { prefix, .. }
            | Self::Gcs { prefix, .. }
            | Self::Azure { prefix, .. }
            | Self::Memory { prefix, .. } => prefix,
        }
    }

    /// The same URL with `key` appended below the prefix.
    pub fn join(&self, key: &str) -> StoreUrl {
        let key = key.trim_matches('/');
        let mut url = self.clone();
        match &mut url {
            Self::Local { root } => {
                if !key.is_empty() {
                    root.push(key)
                }
            }
            Self::S3 { prefix, .. }
            | Self::Gcs { prefix, .. }
            | Self::Azure { prefix, .. }
            | Self::Memory { prefix, .. } => {
                if !key.is_empty() {
                    *prefix = if prefix.is_empty() {
                        key.to_string()
                    } else {
                        format!("{prefix}/{key}")
                    };
                }
            }
        }
        url
    }

    /// Whether `other` names this URL or something below it: the same backend and bucket, and
    /// a prefix that continues this one at a `/` boundary (`s3://b/in` holds `s3://b/in/x.jpg`,
    /// not `s3://b/inbox/x.jpg`). Both are normalised by [`parse_store_url`], which refuses `..`.
    pub fn contains(&self, other: &StoreUrl) -> bool {
        fn below(outer: &str, inner: &str) -> bool {
            outer.is_empty()
                || inner == outer
                || inner
                    .strip_prefix(outer)
                    .is_some_and(|rest| rest.starts_with('/'))
        }
        match (self, other) {
            (Self::Local { root }, Self::Local { root: inner }) => inner.starts_with(root),
            (
                Self::S3 { bucket, prefix },
                Self::S3 {
                    bucket: b,
                    prefix: p,
                },
            )
            | (
                Self::Gcs { bucket, prefix },
                Self::Gcs {
                    bucket: b,
                    prefix: p,
                },
            )
            | (
                Self::Memory {
                    name: bucket,
                    prefix,
                },
                Self::Memory { name: b, prefix: p },
            )
            | (
                Self::Azure {
                    container: bucket,
                    prefix,
                },
                Self::Azure {
                    container: b,
                    prefix: p,
                },
            ) => bucket == b && below(prefix, p),
            _ => false,
        }
    }

    /// Splits an object URL into the URL of its bucket root (or, locally, its folder) and the key.
    pub fn split_object(&self) -> (StoreUrl, String) {
        match self {
            Self::Local { root } => {
                let parent = root.parent().unwrap_or(Path::new("/")).to_path_buf();
                let name = root
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (Self::Local { root: parent }, name)
            }
            Self::S3 { bucket, prefix } => (
                Self::S3 {
                    bucket: bucket.clone(),
                    prefix: String::new(),
                },
                prefix.clone(),
            ),
            Self::Gcs { bucket, prefix } => (
                Self::Gcs {
                    bucket: bucket.clone(),
                    prefix: String::new(),
                },
                prefix.clone(),
            ),
            Self::Azure { container, prefix } => (
                Self::Azure {
                    container: container.clone(),
                    prefix: String::new(),
                },
                prefix.clone(),
            ),
            Self::Memory { name, prefix } => (
                Self::Memory {
                    name: name.clone(),
                    prefix: String::new(),
                },
                prefix.clone(),
            ),
        }
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

/// Parses a store URL. Plain paths are resolved against the current directory.
pub fn parse_store_url(text: &str) -> Result<StoreUrl> {
    let invalid =
        |detail: &str| StorageError::new(StorageErrorKind::InvalidUrl, text).with_detail(detail);
    let text = text.trim();
    if text.is_empty() {
        return Err(invalid("empty URL"));
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return local(Path::new(text)).map_err(|e| invalid(&e));
    };
    let rest = rest.trim_end_matches('/');
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = normalise_prefix(prefix).map_err(|e| invalid(&e))?;
    let bucket = bucket.to_string();
    match scheme.to_ascii_lowercase().as_str() {
        "file" => {
            // file:///abs/path has an empty authority; file://relative is not a thing.
            if !bucket.is_empty() && bucket != "localhost" {
                return Err(invalid("file URLs must look like file:///absolute/path"));
            }
            local(Path::new(&format!("/{prefix}"))).map_err(|e| invalid(&e))
        }
        _ if bucket.is_empty() => Err(invalid("missing bucket name")),
        "s3" | "s3a" => Ok(StoreUrl::S3 { bucket, prefix }),
        "gs" | "gcs" => Ok(StoreUrl::Gcs { bucket, prefix }),
        "az" | "azure" | "abfs" | "abfss" => Ok(StoreUrl::Azure {
            container: bucket,
            prefix,
        }),
        "memory" => Ok(StoreUrl::Memory {
            name: bucket,
            prefix,
        }),
        other => Err(invalid(&format!(
            "unknown scheme '{other}' (use a path, file://, s3://, gs://, az:// or memory://)"
        ))),
    }
}

fn normalise_prefix(prefix: &str) -> std::result::Result<String, String> {
    let mut parts = Vec::new();
    for part in prefix.split('/') {
        match part {
            "" | "." => continue,
            ".." => return Err("'..' is not allowed in a store URL".into()),
            _ => parts.push(part),
        }
    }
    Ok(parts.join("/"))
}

fn local(path: &Path) -> std::result::Result<StoreUrl, String> {
    // Rebuilt from its components: `absolute` keeps a trailing slash, which would make
    // `photos/` and `photos` display as two places that contain each other (found by fuzzing).
    let absolute: PathBuf = std::path::absolute(path)
        .map_err(|e| e.to_string())?
        .components()
        .collect();
    // Canonicalise when the folder exists so that symlinked roots compare correctly later;
    // a missing folder (an output not yet written) keeps its lexical absolute form.
    let root = absolute.canonicalize().unwrap_or(absolute);
    Ok(StoreUrl::Local { root })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trailing_slash_names_the_same_local_folder() {
        let (with, without) = (
            parse_store_url("no-such-photos/").unwrap(),
            parse_store_url("no-such-photos").unwrap(),
        );
        assert_eq!(with.display(), without.display());
        assert!(with.contains(&without) && without.contains(&with));
    }

    #[test]
    fn containment_follows_segments_buckets_and_schemes() {
        let url = |text| parse_store_url(text).unwrap();
        let incoming = url("s3://photos/incoming/");
        assert!(incoming.contains(&url("s3://photos/incoming/cat.jpg")));
        assert!(incoming.contains(&url("s3a://photos/incoming/a/b.jpg")));
        assert!(incoming.contains(&url("s3://photos/incoming")));
        assert!(!incoming.contains(&url("s3://photos/incoming2/cat.jpg")));
        assert!(!incoming.contains(&url("s3://photos/cat.jpg")));
        assert!(!incoming.contains(&url("s3://other/incoming/cat.jpg")));
        assert!(!incoming.contains(&url("gs://photos/incoming/cat.jpg")));
        assert!(url("s3://photos").contains(&url("s3://photos/any/key.jpg")));
        assert!(!url("s3://photos").contains(&url("s3://photos-private/key.jpg")));
        assert!(parse_store_url("s3://photos/incoming/../secret/x.jpg").is_err());
    }

    #[test]
    fn parses_every_scheme() {
        assert_eq!(
            parse_store_url("s3://photos/animals/train/").unwrap(),
            StoreUrl::S3 {
                bucket: "photos".into(),
                prefix: "animals/train".into()
            }
        );
        assert_eq!(
            parse_store_url("gs://b").unwrap(),
            StoreUrl::Gcs {
                bucket: "b".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            parse_store_url("az://c/x").unwrap(),
            StoreUrl::Azure {
                container: "c".into(),
                prefix: "x".into()
            }
        );
        assert_eq!(
            parse_store_url("memory://t/a//b").unwrap(),
            StoreUrl::Memory {
                name: "t".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            parse_store_url("file:///tmp/x").unwrap(),
            StoreUrl::Local {
                root: Path::new("/tmp/x")
                    .canonicalize()
                    .unwrap_or("/tmp/x".into())
            }
        );
        assert!(
            matches!(parse_store_url("data/photos").unwrap(), StoreUrl::Local { root } if root.is_absolute())
        );
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "",
            "ftp://x/y",
            "s3://",
            "s3:///key",
            "s3://b/../c",
            "file://host/x",
        ] {
            let err = parse_store_url(bad).unwrap_err();
            assert_eq!(err.kind, StorageErrorKind::InvalidUrl, "{bad}");
        }
    }

    #[test]
    fn joins_and_splits() {
        let url = parse_store_url("s3://b/p").unwrap();
        assert_eq!(url.join("x/y.jpg").display(), "s3://b/p/x/y.jpg");
        let (root, key) = url.join("x/y.jpg").split_object();
        assert_eq!(root.display(), "s3://b");
        assert_eq!(key, "p/x/y.jpg");
    }
}

//! Versioned model folders in any store: `<root>/<name>/<version>/` with a `latest` pointer that
//! is written last, so readers never see a version whose files are still being written.

use bestiary_storage::{StorageErrorKind, Store, StoreOptions};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::metadata::{METADATA_FILE, ModelMetadata};

/// Name of the pointer object beside the version folders.
pub const LATEST: &str = "latest";

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Storage(#[from] bestiary_storage::StorageError),
    #[error("model {url}: {reason}")]
    Invalid { url: String, reason: String },
    #[error(
        "no model at {url} (expected <root>/<name>/<version>, <root>/<name>/latest or <root>/<name>)"
    )]
    NotFound { url: String },
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

#[derive(Debug, Serialize, Deserialize)]
struct LatestPointer {
    version: String,
}

/// Model versions under one root URL.
#[derive(Debug, Clone)]
pub struct ModelRepository {
    store: Store,
    /// How the store was opened, for opening related URLs (pretrained models) the same way.
    options: StoreOptions,
}

impl ModelRepository {
    pub fn open(url: &str, options: &StoreOptions) -> Result<Self> {
        Ok(Self {
            store: Store::open(url, options)?,
            options: options.clone(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    /// Starts a new version of `name`. Versions are UTC timestamps plus a random suffix, so
    /// they sort by age and two concurrent trainings never collide without any coordination.
    pub fn begin(&self, name: &str) -> Result<VersionWriter> {
        check_name(name, &self.store)?;
        let timestamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let compact: String = timestamp.chars().filter(|c| c.is_ascii_digit()).collect();
        let version = format!(
            "{}-{}-{:04x}",
            &compact[..8],
            &compact[8..14],
            rand::random::<u16>()
        );
        Ok(VersionWriter {
            folder: self.store.child(&format!("{name}/{version}"))?,
            repository: self.clone(),
            name: name.to_string(),
            version,
            files: Vec::new(),
        })
    }

    /// Starts writing a copy of version `version` of `name` taken from another repository
    /// (a serving bundle, a promotion between buckets). Refuses to overwrite an existing version.
    pub async fn begin_copy(&self, name: &str, version: &str) -> Result<VersionWriter> {
        check_name(name, &self.store)?;
        check_name(version, &self.store)?;
        if self
            .store
            .exists(&format!("{name}/{version}/{METADATA_FILE}"))
            .await?
        {
            return Err(ModelError::Invalid {
                url: self.store.url_of(&format!("{name}/{version}")),
                reason: "this version exists already".into(),
            });
        }
        Ok(VersionWriter {
            folder: self.store.child(&format!("{name}/{version}"))?,
            repository: self.clone(),
            name: name.to_string(),
            version: version.to_string(),
            files: Vec::new(),
        })
    }

    /// The version `latest` points to, if any.
    pub async fn latest(&self, name: &str) -> Result<Option<String>> {
        match self.store.get(&format!("{name}/{LATEST}")).await {
            Ok(bytes) => {
                let pointer: LatestPointer =
                    serde_json::from_slice(&bytes).map_err(|e| ModelError::Invalid {
                        url: self.store.url_of(&format!("{name}/{LATEST}")),
                        reason: format!("unreadable latest pointer: {e}"),
                    })?;
                Ok(Some(pointer.version))
            }
            Err(e) if e.kind == StorageErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Committed versions of `name` (those with a `model.json`), oldest first.
    pub async fn versions(&self, name: &str) -> Result<Vec<String>> {
        let mut versions = Vec::new();
        for folder in self.store.list_folders(name).await? {
            if self
                .store
                .exists(&format!("{name}/{folder}/{METADATA_FILE}"))
                .await?
            {
                versions.push(folder);
            }
        }
        Ok(versions)
    }

    /// The metadata of one version.
    pub async fn metadata(&self, name: &str, version: &str) -> Result<ModelMetadata> {
        let key = format!("{name}/{version}/{METADATA_FILE}");
        let bytes = self.store.get(&key).await?;
        ModelMetadata::from_json(&bytes).map_err(|reason| ModelError::Invalid {
            url: self.store.url_of(&key),
            reason,
        })
    }

    /// A file of one version.
    pub async fn file(&self, name: &str, version: &str, file: &str) -> Result<Bytes> {
        Ok(self.store.get(&format!("{name}/{version}/{file}")).await?)
    }
}

/// Opens the model a URL names: `<root>/<name>/<version>`, `<root>/<name>/latest`, or
/// `<root>/<name>` (meaning latest). Returns the repository, name and resolved version.
pub async fn resolve(
    url: &str,
    options: &StoreOptions,
) -> Result<(ModelRepository, String, String)> {
    let trimmed = url.trim_end_matches('/');
    let not_found = || ModelError::NotFound {
        url: url.to_string(),
    };
    let (parent, last) = trimmed.rsplit_once('/').ok_or_else(not_found)?;
    // <root>/<name>/<version> or <root>/<name>/latest
    // (A bucket-level URL such as s3://bucket/name has no such form: its "root" does not parse.)
    if let Some((root, name)) = parent.rsplit_once('/')
        && !name.is_empty()
        && let Ok(repository) = ModelRepository::open(root, options)
    {
        if last == LATEST {
            let version = repository.latest(name).await?.ok_or_else(not_found)?;
            return Ok((repository, name.to_string(), version));
        }
        if repository
            .store
            .exists(&format!("{name}/{last}/{METADATA_FILE}"))
            .await?
        {
            return Ok((repository, name.to_string(), last.to_string()));
        }
    }
    // <root>/<name>
    let repository = ModelRepository::open(parent, options)?;
    let version = repository.latest(last).await?.ok_or_else(not_found)?;
    Ok((repository, last.to_string(), version))
}

/// The files of a version being written; nothing points to it until [`commit`].
///
/// [`commit`]: VersionWriter::commit
pub struct VersionWriter {
    repository: ModelRepository,
    folder: Store,
    pub name: String,
    pub version: String,
    files: Vec<String>,
}

impl VersionWriter {
    /// Writes one file of the version (atomically, like every store write).
    pub async fn put(&mut self, file: &str, bytes: impl Into<Bytes>) -> Result<()> {
        self.folder.put(file, bytes).await?;
        if !self.files.iter().any(|f| f == file) {
            self.files.push(file.to_string());
        }
        Ok(())
    }

    /// URL of the version folder.
    pub fn url(&self) -> String {
        self.folder.url().display()
    }

    /// Writes `model.json` and then moves `latest` to this version. `created` is set to now
    /// unless the metadata has one already (a copy keeps its original time).
    pub async fn commit(self, mut metadata: ModelMetadata) -> Result<ModelMetadata> {
        metadata.name = self.name.clone();
        metadata.version = self.version.clone();
        if metadata.created.is_empty() {
            metadata.created =
                humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        }
        metadata.files = self.files.clone();
        self.folder.put(METADATA_FILE, metadata.to_json()).await?;
        let pointer = serde_json::to_vec(&LatestPointer {
            version: self.version.clone(),
        })
        .expect("pointer serialises");
        self.repository
            .store
            .put(&format!("{}/{LATEST}", self.name), pointer)
            .await?;
        Ok(metadata)
    }
}

fn check_name(name: &str, store: &Store) -> Result<()> {
    let valid = !name.is_empty()
        && name != LATEST
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if valid {
        Ok(())
    } else {
        Err(ModelError::Invalid {
            url: store.url_of(name),
            reason: "model names use letters, digits, '-', '_' and '.'".into(),
        })
    }
}

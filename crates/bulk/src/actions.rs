//! What is done with each classified photo besides recording it: a copy into a folder per
//! label (`--copy-to`) and an S3 object tag (`--tag`). Both are idempotent, and both finish
//! before the result's part is committed, so a rerun redoes exactly the unfinished ones.

use std::collections::HashMap;
use std::sync::Mutex;

use bestiary_storage::{Store, StoreOptions};
use bytes::Bytes;

use crate::error::Result;
use crate::record::ResultRecord;
use crate::tagging::Tagger;

/// The actions of a run.
pub struct Actions {
    copy_to: Option<CopyTo>,
    tagger: Option<Tagger>,
}

/// `--copy-to <url>/{label}/`.
struct CopyTo {
    template: String,
    options: StoreOptions,
    /// One store per label, opened on first use.
    stores: Mutex<HashMap<String, Store>>,
}

impl Actions {
    /// `None` when there is nothing to do.
    pub fn new(
        copy_to: Option<&str>,
        tagger: Option<Tagger>,
        options: &StoreOptions,
    ) -> Option<Self> {
        let copy_to = copy_to.map(|template| CopyTo {
            template: template.to_owned(),
            options: options.clone(),
            stores: Mutex::new(HashMap::new()),
        });
        (copy_to.is_some() || tagger.is_some()).then_some(Self { copy_to, tagger })
    }

    /// Copies and tags the photo of `record` (whose content is `photo`); photos that could not
    /// be classified are left alone.
    ///
    /// # Errors
    /// When a copy or tag cannot be written.
    pub async fn apply(&self, record: &ResultRecord, photo: Bytes) -> Result<()> {
        let Some(label) = record.label.as_deref().filter(|_| record.error.is_none()) else {
            return Ok(());
        };
        if let Some(copy_to) = &self.copy_to {
            copy_to.store(label)?.put(&record.key, photo).await?;
        }
        if let Some(tagger) = &self.tagger {
            tagger.tag(&record.key, label).await?;
        }
        Ok(())
    }
}

impl CopyTo {
    fn store(&self, label: &str) -> Result<Store> {
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(store) = stores.get(label) {
            return Ok(store.clone());
        }
        // A label is one path segment, whatever characters the model's classes use.
        let segment: String = label
            .chars()
            .map(|c| if c == '/' || c == '\\' { '_' } else { c })
            .collect();
        let segment = match segment.as_str() {
            "" | "." | ".." => format!("_{segment}"),
            _ => segment,
        };
        let store = Store::open(&self.template.replace("{label}", &segment), &self.options)?;
        stores.insert(label.to_owned(), store.clone());
        Ok(store)
    }
}

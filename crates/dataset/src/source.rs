//! Finding the labelled photos of a dataset URL: class folders, JSON Lines manifests or CSV files.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bestiary_storage::{Store, StoreOptions, StoreUrl, parse_store_url};
use futures::StreamExt;
use serde::Serialize;

use crate::split::{SplitConfig, split_class};
use crate::{DatasetError, Result};

/// File extensions taken as photos when listing folders (compared case-insensitively).
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "bmp"];

/// How the labels of a dataset are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// `<prefix>/<class>/<image>`.
    ClassFolders,
    /// `<prefix>/train/<class>/…` and `<prefix>/validation/<class>/…`.
    TrainValidationFolders,
    /// JSON Lines, one `{"source-ref": …, "class": …}` per line (SageMaker augmented manifest).
    Manifest,
    /// CSV rows `key,label`.
    Csv,
}

/// One labelled photo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Stable identity: the key relative to the dataset root for folders, the reference as
    /// written for manifests. Split hashing and reports use it, so the same photos under
    /// another bucket or a local copy give the same dataset.
    pub id: String,
    /// Index into [`Dataset::stores`].
    #[serde(skip)]
    pub store: usize,
    /// Key inside that store.
    #[serde(skip)]
    pub key: String,
    pub label: usize,
    pub size: Option<u64>,
    pub etag: Option<String>,
}

/// A file that is not used, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, PartialOrd, Ord)]
pub struct SkippedFile {
    pub id: String,
    /// Short machine-readable reason (`empty`, `corrupt`, `not-an-image`, `too-large`,
    /// `unknown-extension`, `outside-class-folder`, `unknown-class`, `unreadable`).
    pub code: String,
    pub reason: String,
}

/// Options for opening a dataset.
#[derive(Debug, Clone, Default)]
pub struct DatasetOptions {
    pub split: SplitConfig,
    /// An explicit validation set (folder, manifest or CSV) instead of the hash split.
    pub validation_url: Option<String>,
    /// The manifest field holding the label; by default `class`, `label`, or the one other field.
    pub label_attribute: Option<String>,
    pub store: StoreOptions,
}

/// A labelled dataset: its classes and its train and validation samples.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub url: String,
    pub layout: Layout,
    /// Class names, sorted; a sample's label indexes this.
    pub classes: Vec<String>,
    pub train: Vec<Sample>,
    pub validation: Vec<Sample>,
    /// How the validation samples were chosen, for reports.
    pub validation_source: String,
    /// Files listed but not usable as samples (wrong extension, no class).
    pub ignored: Vec<SkippedFile>,
    pub stores: Vec<Store>,
}

impl Dataset {
    /// Lists the dataset at `url`. `progress` is called with the running count of listed keys.
    pub async fn open(
        url: &str,
        options: &DatasetOptions,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Self> {
        let mut stores = StoreSet::new(options.store.clone());
        let primary = list_labelled(url, options, &mut stores, progress).await?;
        let (train_items, validation_items, validation_source, layout) =
            match &options.validation_url {
                Some(validation_url) => {
                    let validation =
                        list_labelled(validation_url, options, &mut stores, progress).await?;
                    (
                        primary.items,
                        validation.items,
                        format!("explicit: {validation_url}"),
                        primary.layout,
                    )
                }
                None if primary.layout == Layout::TrainValidationFolders => {
                    let (train, validation): (Vec<_>, Vec<_>) = primary
                        .items
                        .into_iter()
                        .partition(|item| !item.from_validation_folder);
                    (
                        train,
                        validation,
                        "validation/ folder".to_string(),
                        primary.layout,
                    )
                }
                None => {
                    let (train, validation) = hash_split(primary.items, &options.split);
                    (train, validation, options.split.describe(), primary.layout)
                }
            };

        // Classes come from the training data; validation photos of other classes are reported.
        let classes: Vec<String> = train_items
            .iter()
            .map(|i| i.class.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if classes.is_empty() {
            return Err(DatasetError::NoImages {
                url: url.to_string(),
            });
        }
        let index: HashMap<&str, usize> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i))
            .collect();
        let mut ignored = primary.ignored;
        let mut to_samples = |items: Vec<Item>| -> Vec<Sample> {
            let mut samples = Vec::with_capacity(items.len());
            for item in items {
                match index.get(item.class.as_str()) {
                    Some(&label) => samples.push(item.into_sample(label)),
                    None => ignored.push(SkippedFile {
                        id: item.sample_id,
                        code: "unknown-class".into(),
                        reason: format!("class '{}' has no training photos", item.class),
                    }),
                }
            }
            samples.sort_by(|a, b| a.id.cmp(&b.id));
            samples
        };
        let train = to_samples(train_items);
        let validation = to_samples(validation_items);
        ignored.sort();
        Ok(Self {
            url: url.to_string(),
            layout,
            classes,
            train,
            validation,
            validation_source,
            ignored,
            stores: stores.stores,
        })
    }

    /// The store a sample lives in.
    pub fn store_of(&self, sample: &Sample) -> &Store {
        &self.stores[sample.store]
    }

    /// Full URL of a sample, for reports.
    pub fn url_of(&self, sample: &Sample) -> String {
        self.store_of(sample).url_of(&sample.key)
    }

    /// Per-class counts of `samples`.
    pub fn class_counts(&self, samples: &[Sample]) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for sample in samples {
            counts[sample.label] += 1;
        }
        counts
    }

    /// A short hash of every sample's identity, content tag and label: equal fingerprints mean
    /// the same training data.
    pub fn fingerprint(&self) -> String {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for (split, samples) in [("t", &self.train), ("v", &self.validation)] {
            for s in samples.iter() {
                hasher.update(split.as_bytes());
                hasher.update(s.id.as_bytes());
                hasher.update(s.etag.as_deref().unwrap_or("").as_bytes());
                hasher.update(&s.size.unwrap_or(0).to_le_bytes());
                hasher.update(self.classes[s.label].as_bytes());
                hasher.update(b"\n");
            }
        }
        format!("{:016x}", hasher.digest())
    }
}

/// A listed photo before class names are turned into indices.
struct Item {
    sample_id: String,
    store: usize,
    key: String,
    class: String,
    size: Option<u64>,
    etag: Option<String>,
    from_validation_folder: bool,
}

impl Item {
    fn into_sample(self, label: usize) -> Sample {
        Sample {
            id: self.sample_id,
            store: self.store,
            key: self.key,
            label,
            size: self.size,
            etag: self.etag,
        }
    }
}

struct Listing {
    layout: Layout,
    items: Vec<Item>,
    ignored: Vec<SkippedFile>,
}

/// Stores opened while listing, one per bucket root, so manifest entries share connections.
struct StoreSet {
    options: StoreOptions,
    stores: Vec<Store>,
    by_url: HashMap<String, usize>,
}

impl StoreSet {
    fn new(options: StoreOptions) -> Self {
        Self {
            options,
            stores: Vec::new(),
            by_url: HashMap::new(),
        }
    }

    fn add(&mut self, url: StoreUrl) -> Result<usize> {
        let shown = url.display();
        if let Some(&index) = self.by_url.get(&shown) {
            return Ok(index);
        }
        self.stores.push(Store::open_url(url, &self.options)?);
        self.by_url.insert(shown, self.stores.len() - 1);
        Ok(self.stores.len() - 1)
    }
}

fn extension(key: &str) -> Option<String> {
    let name = key.rsplit('/').next()?;
    let (_, ext) = name.rsplit_once('.')?;
    Some(ext.to_ascii_lowercase())
}

fn is_hidden(key: &str) -> bool {
    key.split('/')
        .any(|segment| segment.starts_with('.') || segment.starts_with("__MACOSX"))
}

async fn list_labelled(
    url: &str,
    options: &DatasetOptions,
    stores: &mut StoreSet,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Listing> {
    match extension(url.trim_end_matches('/')).as_deref() {
        Some("jsonl" | "manifest" | "json") => {
            let label = options.label_attribute.as_deref();
            list_references(url, Layout::Manifest, stores, |text| {
                parse_manifest(url, text, label)
            })
            .await
        }
        Some("csv") => list_references(url, Layout::Csv, stores, |text| parse_csv(url, text)).await,
        _ => list_folders(url, stores, progress).await,
    }
}

async fn list_folders(
    url: &str,
    stores: &mut StoreSet,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Listing> {
    let root_url = parse_store_url(url)?;
    let store_index = stores.add(root_url)?;
    let store = stores.stores[store_index].clone();
    let top = store.list_folders("").await?;
    let split_folders =
        top.iter().any(|f| f == "train") && top.iter().any(|f| f == "validation" || f == "val");

    let mut listing = Listing {
        layout: if split_folders {
            Layout::TrainValidationFolders
        } else {
            Layout::ClassFolders
        },
        items: Vec::new(),
        ignored: Vec::new(),
    };
    let mut listed = 0u64;
    let mut objects = store.list("");
    while let Some(object) = objects.next().await {
        let object = object?;
        listed += 1;
        if listed.is_multiple_of(1000) {
            progress(listed);
        }
        if is_hidden(&object.key) {
            continue;
        }
        let (from_validation_folder, relative) = if split_folders {
            match object.key.split_once('/') {
                Some(("train", rest)) => (false, rest),
                Some(("validation" | "val", rest)) => (true, rest),
                _ => {
                    listing.ignored.push(skipped(
                        &object.key,
                        "outside-class-folder",
                        "not under train/ or validation/",
                    ));
                    continue;
                }
            }
        } else {
            (false, object.key.as_str())
        };
        let Some((class, _)) = relative.split_once('/') else {
            listing.ignored.push(skipped(
                &object.key,
                "outside-class-folder",
                "not inside a class folder",
            ));
            continue;
        };
        match extension(&object.key) {
            Some(ext) if IMAGE_EXTENSIONS.contains(&ext.as_str()) => {}
            other => {
                let shown = other
                    .map(|e| format!(".{e}"))
                    .unwrap_or_else(|| "none".into());
                listing.ignored.push(skipped(
                    &object.key,
                    "unknown-extension",
                    &format!("not a photo file name (extension {shown})"),
                ));
                continue;
            }
        }
        listing.items.push(Item {
            // Split folders keep their class-relative id so that a photo moved between train/
            // and validation/ keeps its identity.
            sample_id: relative.to_string(),
            store: store_index,
            class: class.to_string(),
            key: object.key,
            size: Some(object.size),
            etag: object.etag,
            from_validation_folder,
        });
    }
    progress(listed);
    if listing.items.is_empty() {
        return Err(DatasetError::NoImages {
            url: url.to_string(),
        });
    }
    Ok(listing)
}

/// The hash split, decided class by class (see [`split_class`]).
fn hash_split(items: Vec<Item>, config: &SplitConfig) -> (Vec<Item>, Vec<Item>) {
    let mut by_class: BTreeMap<String, Vec<Item>> = BTreeMap::new();
    for item in items {
        by_class.entry(item.class.clone()).or_default().push(item);
    }
    let (mut train, mut validation) = (Vec::new(), Vec::new());
    for items in by_class.into_values() {
        let ids: Vec<&str> = items.iter().map(|i| i.sample_id.as_str()).collect();
        let sides = split_class(&ids, config);
        for (item, is_validation) in items.into_iter().zip(sides) {
            if is_validation {
                validation.push(item)
            } else {
                train.push(item)
            }
        }
    }
    (train, validation)
}

fn skipped(id: &str, code: &str, reason: &str) -> SkippedFile {
    SkippedFile {
        id: id.to_string(),
        code: code.to_string(),
        reason: reason.to_string(),
    }
}

/// Resolves a reference from a manifest or CSV: a full URL, or a key relative to the folder
/// holding the manifest.
fn resolve_reference(
    reference: &str,
    base: &StoreUrl,
    stores: &mut StoreSet,
) -> Result<(usize, String)> {
    let url = if reference.contains("://") {
        parse_store_url(reference)?
    } else {
        base.join(reference)
    };
    let (root, key) = url.split_object();
    Ok((stores.add(root)?, key))
}

async fn read_listing_file(url: &str, stores: &mut StoreSet) -> Result<(String, StoreUrl)> {
    let (root, key) = parse_store_url(url)?.split_object();
    let index = stores.add(root.clone())?;
    let bytes = stores.stores[index].get(&key).await?;
    let text = String::from_utf8(bytes.to_vec()).map_err(|_| DatasetError::BadManifest {
        url: url.to_string(),
        line: 0,
        reason: "not UTF-8 text".into(),
    })?;
    Ok((
        text,
        root.join(key.rsplit_once('/').map(|(dir, _)| dir).unwrap_or("")),
    ))
}

/// Reads a manifest or CSV, resolves each reference and asks the store for its size and ETag
/// (so that the image cache works for them too); references that do not exist are reported.
async fn list_references(
    url: &str,
    layout: Layout,
    stores: &mut StoreSet,
    parse: impl FnOnce(&str) -> Result<Vec<(String, String)>>,
) -> Result<Listing> {
    let (text, base) = read_listing_file(url, stores).await?;
    let mut resolved = Vec::new();
    for (reference, class) in parse(&text)? {
        let (store, key) = resolve_reference(&reference, &base, stores)?;
        resolved.push((reference, class, store, key));
    }
    let heads = futures::stream::iter(resolved)
        .map(|(reference, class, store, key)| {
            let handle = stores.stores[store].clone();
            async move {
                let head = handle.head(&key).await;
                (reference, class, store, key, head)
            }
        })
        .buffered(32)
        .collect::<Vec<_>>()
        .await;
    let mut listing = Listing {
        layout,
        items: Vec::new(),
        ignored: Vec::new(),
    };
    for (reference, class, store, key, head) in heads {
        match head {
            Ok(info) => listing.items.push(Item {
                sample_id: reference,
                store,
                key,
                class,
                size: Some(info.size),
                etag: info.etag,
                from_validation_folder: false,
            }),
            Err(e) => listing.ignored.push(SkippedFile {
                id: reference,
                code: "unreadable".into(),
                reason: e.to_string(),
            }),
        }
    }
    if listing.items.is_empty() {
        return Err(DatasetError::NoImages {
            url: url.to_string(),
        });
    }
    Ok(listing)
}

/// (reference, class) pairs of a JSON Lines manifest.
pub fn parse_manifest(url: &str, text: &str, label: Option<&str>) -> Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    for (number, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |reason: String| DatasetError::BadManifest {
            url: url.to_string(),
            line: number + 1,
            reason,
        };
        let record: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).map_err(|e| bad(format!("not a JSON object: {e}")))?;
        let reference = record
            .get("source-ref")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("missing \"source-ref\"".into()))?;
        let attribute = label_attribute(&record, label)
            .ok_or_else(|| bad("no label field (use --label-attribute)".into()))?;
        let class = match &record[&attribute] {
            serde_json::Value::String(name) => name.clone(),
            serde_json::Value::Number(number) => record
                .get(&format!("{attribute}-metadata"))
                .and_then(|meta| meta.get("class-name"))
                .and_then(|name| name.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| number.to_string()),
            other => {
                return Err(bad(format!(
                    "label \"{attribute}\" is {other}, not a name or number"
                )));
            }
        };
        pairs.push((reference.to_string(), class));
    }
    Ok(pairs)
}

fn label_attribute(
    record: &serde_json::Map<String, serde_json::Value>,
    configured: Option<&str>,
) -> Option<String> {
    if let Some(name) = configured {
        return record.contains_key(name).then(|| name.to_string());
    }
    for name in ["class", "label"] {
        if record.contains_key(name) {
            return Some(name.to_string());
        }
    }
    let mut others = record
        .keys()
        .filter(|k| *k != "source-ref" && !k.ends_with("-metadata"));
    match (others.next(), others.next()) {
        (Some(only), None) => Some(only.clone()),
        _ => None,
    }
}

/// (reference, class) pairs of a `key,label` CSV; a header row is recognised and skipped.
pub fn parse_csv(url: &str, text: &str) -> Result<Vec<(String, String)>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut pairs = Vec::new();
    for (number, row) in reader.records().enumerate() {
        let bad = |reason: String| DatasetError::BadManifest {
            url: url.to_string(),
            line: number + 1,
            reason,
        };
        let row = row.map_err(|e| bad(e.to_string()))?;
        let (Some(reference), Some(class)) = (row.get(0), row.get(1)) else {
            return Err(bad("expected two columns: key,label".into()));
        };
        let is_header = number == 0
            && ["key", "path", "file", "source-ref", "image"]
                .contains(&reference.to_ascii_lowercase().as_str());
        if !is_header && !reference.is_empty() {
            pairs.push((reference.to_string(), class.to_string()));
        }
    }
    Ok(pairs)
}

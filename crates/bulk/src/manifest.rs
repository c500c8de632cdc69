//! The output prefix and its progress manifest: what makes results exactly-once.
//!
//! ```text
//! <out>/<model>-<version>-<hash>/run.json                          what the run is (written once)
//! <out>/<run>/shard-00000-of-00002/parts/part-00000007-1a2b3c4d.jsonl   results 7th part
//! <out>/<run>/shard-00000-of-00002/progress/00000007.json               its completion marker
//! ```
//!
//! A run is a model version applied to a prefix with one selection (filters, shard count,
//! `--min-score`, `--top-k`, format): the same command maps to the same run folder, a new model
//! version to a new one. A part is written whole (atomic PUT or rename), then its marker with
//! put-if-absent; only parts named by a marker count. Parts hold results in listing order, so
//! the highest key in the markers is where a rerun continues (S3 lists in key order, and local
//! folders are walked in key order by [`crate::listing`]). A crash before the marker loses only
//! that part's work, which the rerun redoes; a second process on the same shard loses the race
//! for the marker and stops instead of duplicating results.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bestiary_storage::Store;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::config::{OutputFormat, Shard};
use crate::error::{BulkError, Result};
use crate::record::{self, Outcome, ResultRecord};

const RUN_FILE: &str = "run.json";
const PARTS: &str = "parts";
const PROGRESS: &str = "progress";
/// Markers fetched at once when a shard's progress is loaded.
const MARKER_READS_IN_FLIGHT: usize = 16;

/// The model that produced results: what "the same model version" means for skipping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelIdentity {
    pub name: String,
    pub version: String,
}

/// Everything that decides what a result record says; its hash names the run folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// The classified prefix, as a canonical URL.
    pub input: String,
    pub model: ModelIdentity,
    pub extensions: Vec<String>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub min_score: Option<f32>,
    /// Photos the model's detector rejects keep their best class as the label. Left out of
    /// the hash when off, so runs from before the option keep their folders.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_label_when_unknown: bool,
    pub top_k: usize,
    pub format: OutputFormat,
    /// How many shards the keys are split into.
    pub shards: u32,
}

impl RunSpec {
    /// `<model>-<version>-<16 hex digits>`, safe in any store.
    pub fn folder_name(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("specs serialise");
        let mut name = String::new();
        for part in [&self.model.name, &self.model.version] {
            let slug = slug(part);
            if !slug.is_empty() {
                name.push_str(&slug);
                name.push('-');
            }
        }
        format!("{name}{:016x}", xxh3_64(&canonical))
    }
}

/// `run.json`: the spec, plus where the model came from and when the run folder was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunFile {
    #[serde(flatten)]
    pub spec: RunSpec,
    /// Model URL or endpoint, for people; not part of the identity (a copied model is the same).
    pub model_source: String,
    pub created_at: String,
}

/// Results counted by label and by error code.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub records: u64,
    pub labels: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
}

impl Tally {
    pub fn add(&mut self, record: &ResultRecord) {
        self.records += 1;
        let (map, name) = match record.outcome() {
            Outcome::Label(label) => (&mut self.labels, label),
            Outcome::Error(code) => (&mut self.errors, code),
        };
        *map.entry(name.to_owned()).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Tally) {
        self.records += other.records;
        for (label, n) in &other.labels {
            *self.labels.entry(label.clone()).or_default() += n;
        }
        for (code, n) in &other.errors {
            *self.errors.entry(code.clone()).or_default() += n;
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Which command wrote a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartWriterKind {
    Classify,
    Watch,
}

/// The completion marker of one part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartMarker {
    pub seq: u64,
    /// The part's file under `parts/`; `None` for the empty marker that only records that a
    /// classify run reached the end of its listing.
    pub part: Option<String>,
    /// First and last key of the part, in listing order.
    pub first_key: Option<String>,
    pub last_key: Option<String>,
    /// The greatest key in the part (the last one, for classify parts).
    pub max_key: Option<String>,
    #[serde(flatten)]
    pub tally: Tally,
    pub writer: PartWriterKind,
    /// Whether the run that wrote it had listed the whole prefix by then.
    pub listing_complete: bool,
    pub written_at: String,
}

/// The committed parts of one shard, in order.
#[derive(Debug, Clone, Default)]
pub struct ShardProgress {
    pub markers: Vec<PartMarker>,
}

impl ShardProgress {
    pub fn next_seq(&self) -> u64 {
        self.markers.last().map_or(0, |m| m.seq + 1)
    }

    /// The greatest classified key: every key up to it was classified by some part (each part
    /// is a prefix, in key order, of what its listing selected), so a rerun lists after it.
    pub fn cursor(&self) -> Option<&str> {
        self.markers
            .iter()
            .filter_map(|m| m.max_key.as_deref())
            .max()
    }

    pub fn tally(&self) -> Tally {
        let mut tally = Tally::default();
        for marker in &self.markers {
            tally.merge(&marker.tally);
        }
        tally
    }

    /// Whether the last classify run got to the end of its listing.
    pub fn listing_complete(&self) -> bool {
        self.markers
            .iter()
            .rev()
            .find(|m| m.writer == PartWriterKind::Classify)
            .is_some_and(|m| m.listing_complete)
    }
}

/// One shard's folder of one run.
#[derive(Debug, Clone)]
pub struct ShardFolder {
    store: Store,
    format: OutputFormat,
}

impl ShardFolder {
    /// `shard-IIIII-of-NNNNN`.
    pub fn name(shard: Shard) -> String {
        format!("shard-{:05}-of-{:05}", shard.index, shard.count)
    }

    /// Opens (making it where needed) the folder of `shard` of the run described by `run`
    /// under `out`; returns it with the run folder's URL.
    ///
    /// # Errors
    /// On storage failures, and when a `run.json` already there describes another run (a hash
    /// collision, or someone else's folder).
    pub async fn open(out: &Store, run: &RunFile, shard: Shard) -> Result<Self> {
        let run_folder = out.child(&run.spec.folder_name())?;
        let text = serde_json::to_vec_pretty(run).expect("run files serialise");
        if !run_folder.put_if_absent(RUN_FILE, text).await? {
            let existing = read_run_file(&run_folder).await?;
            if existing.spec != run.spec {
                return Err(BulkError::Output {
                    url: run_folder.url_of(RUN_FILE),
                    reason: "describes a different run than this folder's name says".into(),
                });
            }
        }
        Ok(Self {
            store: run_folder.child(&Self::name(shard))?,
            format: run.spec.format,
        })
    }

    /// The shard folder at `store`, whose parts are in `format`.
    pub fn at(store: Store, format: OutputFormat) -> Self {
        Self { store, format }
    }

    pub fn url(&self) -> String {
        self.store.url().display()
    }

    pub fn format(&self) -> OutputFormat {
        self.format
    }

    /// Every marker, in order.
    ///
    /// # Errors
    /// On storage failures, unreadable markers, or a gap in the sequence (something deleted
    /// markers by hand).
    pub async fn load_progress(&self) -> Result<ShardProgress> {
        let names: Vec<String> = self
            .store
            .list(PROGRESS)
            .map_ok(|info| info.key)
            .try_filter(|key| std::future::ready(key.ends_with(".json")))
            .try_collect()
            .await?;
        let mut markers: Vec<PartMarker> = futures::stream::iter(names)
            .map(|key| async move {
                let bytes = self.store.get(&key).await?;
                serde_json::from_slice::<PartMarker>(&bytes).map_err(|e| BulkError::Output {
                    url: self.store.url_of(&key),
                    reason: format!("not a progress marker: {e}"),
                })
            })
            .buffer_unordered(MARKER_READS_IN_FLIGHT)
            .try_collect()
            .await?;
        markers.sort_by_key(|m| m.seq);
        if let Some((position, marker)) =
            markers.iter().enumerate().find(|(i, m)| m.seq != *i as u64)
        {
            return Err(BulkError::Output {
                url: self.store.url_of(PROGRESS),
                reason: format!(
                    "marker {} is missing (found {} next); the progress of this shard was \
                     edited by hand: rerun with --force to start it again",
                    position, marker.seq
                ),
            });
        }
        Ok(ShardProgress { markers })
    }

    /// Deletes part files no marker names and no later writer can claim (their sequence number
    /// is taken): leftovers of runs stopped between writing a part and its marker.
    ///
    /// # Errors
    /// On storage failures.
    pub async fn remove_orphans(&self, progress: &ShardProgress) -> Result<usize> {
        let named: std::collections::HashSet<&str> = progress
            .markers
            .iter()
            .filter_map(|m| m.part.as_deref())
            .collect();
        let next = progress.next_seq();
        let orphans: Vec<String> = self
            .store
            .list(PARTS)
            .map_ok(|info| info.key)
            .try_filter(|key| {
                let name = key.rsplit('/').next().unwrap_or(key);
                let orphan = !named.contains(name) && part_seq(name).is_some_and(|s| s < next);
                std::future::ready(orphan)
            })
            .try_collect()
            .await?;
        for key in &orphans {
            self.store.delete(key).await?;
        }
        Ok(orphans.len())
    }

    /// Removes every result of this shard (`--force`): markers from the last to the first, so
    /// that a deletion stopped halfway still leaves a consistent prefix of parts.
    ///
    /// # Errors
    /// On storage failures.
    pub async fn reset(&self) -> Result<()> {
        let progress = self.load_progress().await?;
        for marker in progress.markers.iter().rev() {
            self.store.delete(&marker_key(marker.seq)).await?;
        }
        let parts: Vec<String> = self
            .store
            .list(PARTS)
            .map_ok(|info| info.key)
            .try_collect()
            .await?;
        for key in parts {
            self.store.delete(&key).await?;
        }
        Ok(())
    }

    /// The bytes of a committed part.
    ///
    /// # Errors
    /// On storage failures (a marker whose part is gone is reported as such).
    pub async fn read_part(&self, marker: &PartMarker) -> Result<Option<bytes::Bytes>> {
        match &marker.part {
            Some(name) => Ok(Some(self.store.get(&format!("{PARTS}/{name}")).await?)),
            None => Ok(None),
        }
    }

    /// The key and ETag of every result in a committed part.
    ///
    /// # Errors
    /// As [`Self::read_part`], and for unreadable parts.
    pub async fn read_part_keys(
        &self,
        marker: &PartMarker,
    ) -> Result<Vec<(String, Option<String>)>> {
        match (&marker.part, self.read_part(marker).await?) {
            (Some(name), Some(bytes)) => record::read_keys(
                &bytes,
                self.format,
                &self.store.url_of(&format!("{PARTS}/{name}")),
            ),
            _ => Ok(Vec::new()),
        }
    }
}

/// Reads a run folder's `run.json`.
///
/// # Errors
/// On storage failures or when it is not a run file.
pub async fn read_run_file(run_folder: &Store) -> Result<RunFile> {
    let bytes = run_folder.get(RUN_FILE).await?;
    serde_json::from_slice(&bytes).map_err(|e| BulkError::Output {
        url: run_folder.url_of(RUN_FILE),
        reason: format!("not a run file: {e}"),
    })
}

fn marker_key(seq: u64) -> String {
    format!("{PROGRESS}/{seq:08}.json")
}

/// The sequence number in `part-00000007-1a2b3c4d.jsonl`.
fn part_seq(name: &str) -> Option<u64> {
    name.strip_prefix("part-")?.split('-').next()?.parse().ok()
}

/// Letters, digits, `.`, `_` and `-`, at most 48 of them.
fn slug(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect::<String>()
        .trim_matches(|c| c == '.' || c == '_')
        .to_owned()
}

/// Distinguishes this process's part files from those of any other attempt at the same part.
fn attempt_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = format!(
        "{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    format!("{:08x}", xxh3_64(seed.as_bytes()) as u32)
}

/// What one commit made durable.
#[derive(Debug, Clone)]
pub struct Committed {
    pub marker: PartMarker,
    /// Key and ETag of each result in the part, when the writer tracks them (watch does).
    pub keys: Vec<(String, Option<String>)>,
}

/// Collects results in order and commits them as parts.
pub struct PartWriter {
    folder: ShardFolder,
    kind: PartWriterKind,
    attempt: String,
    next_seq: u64,
    part_size: usize,
    part_interval: Duration,
    track_keys: bool,
    /// Whether the newest marker already says the listing was complete, so that a rerun with
    /// nothing new writes no further empty marker.
    last_marker_complete: bool,
    buffer: Vec<u8>,
    keys: Vec<(String, Option<String>)>,
    tally: Tally,
    first_key: Option<String>,
    last_key: Option<String>,
    max_key: Option<String>,
    opened: Option<Instant>,
}

impl PartWriter {
    pub fn new(
        folder: ShardFolder,
        progress: &ShardProgress,
        kind: PartWriterKind,
        part_size: usize,
        part_interval: Duration,
    ) -> Self {
        Self {
            folder,
            kind,
            attempt: attempt_id(),
            next_seq: progress.next_seq(),
            part_size,
            part_interval,
            track_keys: kind == PartWriterKind::Watch,
            last_marker_complete: progress.markers.last().is_some_and(|m| m.listing_complete),
            buffer: Vec::new(),
            keys: Vec::new(),
            tally: Tally::default(),
            first_key: None,
            last_key: None,
            max_key: None,
            opened: None,
        }
    }

    pub fn folder(&self) -> &ShardFolder {
        &self.folder
    }

    /// The number the next committed part gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Adds the next result in order to the open part.
    pub fn append(&mut self, record: &ResultRecord) {
        if self.opened.is_none() {
            self.opened = Some(Instant::now());
            self.first_key = Some(record.key.clone());
        }
        record::encode(record, self.folder.format, &mut self.buffer);
        self.tally.add(record);
        if self
            .max_key
            .as_deref()
            .is_none_or(|max| record.key.as_str() > max)
        {
            self.max_key = Some(record.key.clone());
        }
        self.last_key = Some(record.key.clone());
        if self.track_keys {
            self.keys.push((record.key.clone(), record.etag.clone()));
        }
    }

    pub fn pending(&self) -> u64 {
        self.tally.records
    }

    pub fn is_full(&self) -> bool {
        self.tally.records >= self.part_size as u64
    }

    /// When the open part is due to be committed even if not full.
    pub fn deadline(&self) -> Option<Instant> {
        self.opened.map(|opened| opened + self.part_interval)
    }

    /// Writes the open part and then its marker. With nothing pending, writes only an empty
    /// marker, and only to record a newly completed listing.
    ///
    /// # Errors
    /// On storage failures (nothing is committed then, and the results stay pending), and
    /// [`BulkError::Conflict`] when another process committed this part number first.
    pub async fn commit(&mut self, listing_complete: bool) -> Result<Option<Committed>> {
        let records = self.tally.records;
        if records == 0 && (!listing_complete || self.last_marker_complete) {
            return Ok(None);
        }
        let seq = self.next_seq;
        let part = (records > 0).then(|| {
            format!(
                "part-{seq:08}-{}.{}",
                self.attempt,
                self.folder.format.extension()
            )
        });
        let store = &self.folder.store;
        if let Some(name) = &part {
            let mut bytes = record::header(self.folder.format);
            bytes.extend_from_slice(&self.buffer);
            store.put(&format!("{PARTS}/{name}"), bytes).await?;
        }
        let marker = PartMarker {
            seq,
            part: part.clone(),
            first_key: self.first_key.clone(),
            last_key: self.last_key.clone(),
            max_key: self.max_key.clone(),
            tally: self.tally.clone(),
            writer: self.kind,
            listing_complete,
            written_at: record::timestamp(),
        };
        let text = serde_json::to_vec_pretty(&marker).expect("markers serialise");
        put_marker(store, seq, text, part.as_deref()).await?;
        self.next_seq += 1;
        self.last_marker_complete = listing_complete;
        self.buffer.clear();
        self.tally = Tally::default();
        self.first_key = None;
        self.last_key = None;
        self.max_key = None;
        self.opened = None;
        Ok(Some(Committed {
            marker,
            keys: std::mem::take(&mut self.keys),
        }))
    }
}

/// Commits the marker `text` of part number `seq` (whose results are in `part`, if any).
///
/// "Already exists" is not always a lost race: a PUT that succeeded but whose answer was lost
/// is retried by the store client and then finds its own marker. So the marker there is read
/// first; only someone else's means a conflict, and only then is this process's part deleted
/// (deleting it under its own committed marker would break every later run and `--merge`).
async fn put_marker(store: &Store, seq: u64, text: Vec<u8>, part: Option<&str>) -> Result<()> {
    let key = marker_key(seq);
    if store.put_if_absent(&key, text.clone()).await? {
        return Ok(());
    }
    if store.get(&key).await?.as_ref() == text.as_slice() {
        tracing::debug!("{key} was already committed by this process (a retried PUT)");
        return Ok(());
    }
    if let Some(name) = part {
        store.delete(&format!("{PARTS}/{name}")).await?;
    }
    Err(BulkError::Conflict {
        url: store.url_of(&key),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{RecordError, ResultRecord};
    use bestiary_storage::StoreOptions;

    fn spec() -> RunSpec {
        RunSpec {
            input: "s3://photos/in".into(),
            model: ModelIdentity {
                name: "animals".into(),
                version: "20261128-001737-32d8".into(),
            },
            extensions: vec!["jpg".into()],
            include: vec![],
            exclude: vec![],
            min_score: None,
            keep_label_when_unknown: false,
            top_k: 5,
            format: OutputFormat::Jsonl,
            shards: 1,
        }
    }

    fn record(key: &str, label: Option<&str>) -> ResultRecord {
        ResultRecord {
            key: key.into(),
            url: format!("s3://photos/in/{key}"),
            etag: Some("e".into()),
            size: 1,
            label: label.map(str::to_owned),
            score: label.map(|_| 0.9),
            unknown: None,
            unknown_score: None,
            top_k: vec![],
            model: "animals".into(),
            model_version: "v".into(),
            width: None,
            height: None,
            error: label.is_none().then(|| RecordError {
                code: "corrupt".into(),
                message: "bad".into(),
            }),
            classified_at: record::timestamp(),
        }
    }

    #[test]
    fn run_folders_are_named_by_model_and_spec() {
        let name = spec().folder_name();
        assert!(name.starts_with("animals-20261128-001737-32d8-"), "{name}");
        let mut other = spec();
        other.min_score = Some(0.5);
        assert_ne!(other.folder_name(), name);
        assert_eq!(spec().folder_name(), name, "stable");
        let mut odd = spec();
        odd.model.name = "http://host:8080/invocations".into();
        assert!(
            odd.folder_name()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        );
    }

    #[tokio::test]
    async fn parts_commit_in_sequence_and_a_second_writer_loses() {
        let dir = tempfile::tempdir().unwrap();
        let out = Store::open(dir.path().to_str().unwrap(), &StoreOptions::default()).unwrap();
        let run = RunFile {
            spec: spec(),
            model_source: "builtin:animals".into(),
            created_at: record::timestamp(),
        };
        let folder = ShardFolder::open(&out, &run, Shard::ALL).await.unwrap();
        let progress = folder.load_progress().await.unwrap();
        let interval = Duration::from_secs(60);
        let mut writer = PartWriter::new(
            folder.clone(),
            &progress,
            PartWriterKind::Classify,
            2,
            interval,
        );
        let mut rival = PartWriter::new(
            folder.clone(),
            &progress,
            PartWriterKind::Classify,
            2,
            interval,
        );
        assert!(
            writer.commit(false).await.unwrap().is_none(),
            "nothing pending"
        );
        writer.append(&record("a.jpg", Some("cat")));
        writer.append(&record("b.jpg", None));
        assert!(writer.is_full());
        let first = writer.commit(false).await.unwrap().unwrap().marker;
        assert_eq!(first.seq, 0);
        assert_eq!(first.tally.labels["cat"], 1);
        assert_eq!(first.tally.errors["corrupt"], 1);

        rival.append(&record("a.jpg", Some("cat")));
        let lost = rival.commit(false).await.unwrap_err();
        assert!(matches!(lost, BulkError::Conflict { .. }), "{lost}");

        writer.append(&record("c.jpg", Some("dog")));
        writer.commit(true).await.unwrap().unwrap();
        assert!(
            writer.commit(true).await.unwrap().is_none(),
            "an empty marker only for a newly completed listing"
        );
        let progress = folder.load_progress().await.unwrap();
        assert_eq!(progress.markers.len(), 2);
        assert_eq!(progress.cursor(), Some("c.jpg"));
        assert!(progress.listing_complete());
        assert_eq!(progress.tally().records, 3);
        let keys = folder.read_part_keys(&progress.markers[1]).await.unwrap();
        assert_eq!(keys, [("c.jpg".to_owned(), Some("e".to_owned()))]);
        // The rival's part was removed with its lost marker: only named parts remain.
        let parts = std::fs::read_dir(
            dir.path()
                .join(run.spec.folder_name())
                .join("shard-00000-of-00001/parts"),
        )
        .unwrap()
        .count();
        assert_eq!(parts, 2);

        folder.reset().await.unwrap();
        assert!(folder.load_progress().await.unwrap().markers.is_empty());
    }

    #[tokio::test]
    async fn a_reused_folder_must_describe_the_same_run() {
        let out = Store::open("memory://manifest-test/out", &StoreOptions::default()).unwrap();
        let run = RunFile {
            spec: spec(),
            model_source: "a".into(),
            created_at: record::timestamp(),
        };
        ShardFolder::open(&out, &run, Shard::ALL).await.unwrap();
        let again = RunFile {
            model_source: "b".into(),
            ..run.clone()
        };
        ShardFolder::open(&out, &again, Shard::new(1, 2).unwrap())
            .await
            .unwrap();
        let run_folder = out.child(&run.spec.folder_name()).unwrap();
        let mut tampered = run.clone();
        tampered.spec.top_k = 1;
        run_folder
            .put(RUN_FILE, serde_json::to_vec(&tampered).unwrap())
            .await
            .unwrap();
        assert!(ShardFolder::open(&out, &run, Shard::ALL).await.is_err());
    }

    #[tokio::test]
    async fn a_marker_found_already_there_is_read_before_the_part_is_deleted() {
        let store =
            Store::open("memory://manifest-test/markers", &StoreOptions::default()).unwrap();
        let part = "part-00000003-1.jsonl";
        store
            .put(&format!("{PARTS}/{part}"), b"results".to_vec())
            .await
            .unwrap();
        // A retried PUT finds this process's own marker: committed, and the part stays.
        let ours = b"{\"seq\": 3, \"part\": \"part-00000003-1.jsonl\"}".to_vec();
        store.put(&marker_key(3), ours.clone()).await.unwrap();
        put_marker(&store, 3, ours, Some(part)).await.unwrap();
        assert!(store.exists(&format!("{PARTS}/{part}")).await.unwrap());
        // Another process's marker: a conflict, and this process's part goes.
        let theirs = b"{\"seq\": 3, \"part\": \"part-00000003-2.jsonl\"}".to_vec();
        let mine = b"{\"seq\": 3, \"part\": \"part-00000003-1.jsonl\", \"x\": 1}".to_vec();
        store.put(&marker_key(3), theirs).await.unwrap();
        let error = put_marker(&store, 3, mine, Some(part)).await.unwrap_err();
        assert!(matches!(error, BulkError::Conflict { .. }), "{error}");
        assert!(!store.exists(&format!("{PARTS}/{part}")).await.unwrap());
    }

    #[test]
    fn part_names_carry_their_sequence() {
        assert_eq!(part_seq("part-00000007-1a2b3c4d.jsonl"), Some(7));
        assert_eq!(part_seq("notes.txt"), None);
    }
}

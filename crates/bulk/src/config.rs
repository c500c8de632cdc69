//! What a bulk run is told: input and output, which keys, which model or endpoint, batching,
//! actions per result, and how results are cut into parts.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bestiary_dataset::decode::DecodeLimits;
use bestiary_dataset::source::IMAGE_EXTENSIONS;
use bestiary_engine::{EngineKind, EngineOptions};
use bestiary_storage::StoreOptions;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::error::{BulkError, Result};

/// Public on-demand price of an m7i.xlarge EC2 instance in us-east-1 (USD 0.2016 per hour for
/// 4 vCPUs), per vCPU-hour: the default of `--cost-per-vcpu-hour` for batch jobs.
pub const DEFAULT_COST_PER_VCPU_HOUR: f64 = 0.2016 / 4.0;

/// The label of results whose best score is below `--min-score`.
pub const UNCERTAIN_LABEL: &str = "uncertain";

/// One of `count` disjoint parts of the keys: a key belongs to shard `xxh3(key) % count`, so
/// every process computes the same partition without talking to the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// Every key: shard 0 of 1.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// # Errors
    /// When `count` is 0 or `index` is not below it.
    pub fn new(index: u32, count: u32) -> Result<Self> {
        if count == 0 || index >= count {
            return Err(BulkError::config(format!(
                "shard {index}/{count} does not exist: shards are numbered 0 to N-1 of N ≥ 1"
            )));
        }
        Ok(Self { index, count })
    }

    /// The shard `key` belongs to among `count`.
    pub fn of_key(key: &str, count: u32) -> u32 {
        (xxh3_64(key.as_bytes()) % u64::from(count.max(1))) as u32
    }

    pub fn contains(&self, key: &str) -> bool {
        Self::of_key(key, self.count) == self.index
    }

    /// The shard a process runs: `--shard I/N` when given; else, inside a Kubernetes Indexed
    /// Job (`JOB_COMPLETION_INDEX` set), that index of `count` (`--shards`, required there);
    /// else all keys.
    ///
    /// # Errors
    /// When the pieces contradict each other or are incomplete.
    pub fn resolve(
        explicit: Option<Shard>,
        count: Option<u32>,
        job_completion_index: Option<&str>,
    ) -> Result<Shard> {
        if let Some(shard) = explicit {
            if let Some(count) = count
                && count != shard.count
            {
                return Err(BulkError::config(format!(
                    "--shard {shard} and --shards {count} disagree on the number of shards"
                )));
            }
            return Ok(shard);
        }
        let index = job_completion_index
            .map(str::trim)
            .filter(|i| !i.is_empty());
        match (index, count) {
            (Some(index), Some(count)) => {
                let index = index.parse().map_err(|_| {
                    BulkError::config(format!(
                        "JOB_COMPLETION_INDEX={index} is not a shard number"
                    ))
                })?;
                Shard::new(index, count)
            }
            (Some(index), None) => Err(BulkError::config(format!(
                "JOB_COMPLETION_INDEX={index} is set (a Kubernetes Indexed Job) but the number of \
                 shards is not: set --shards or BESTIARY_SHARDS to the Job's completions"
            ))),
            (None, Some(count)) if count > 1 => Err(BulkError::config(format!(
                "--shards {count} needs the shard index too: --shard I/{count}, or \
                 JOB_COMPLETION_INDEX in a Kubernetes Indexed Job"
            ))),
            (None, _) => Ok(Shard::ALL),
        }
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = BulkError;

    fn from_str(s: &str) -> Result<Self> {
        let (index, count) = s
            .split_once('/')
            .ok_or_else(|| BulkError::config(format!("shard {s:?} is not of the form I/N")))?;
        let number = |text: &str| {
            text.trim()
                .parse::<u32>()
                .map_err(|_| BulkError::config(format!("shard {s:?} is not of the form I/N")))
        };
        Shard::new(number(index)?, number(count)?)
    }
}

/// How result parts are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// One JSON object per line.
    #[default]
    Jsonl,
    /// A header line, then one row per result.
    Csv,
}

impl OutputFormat {
    pub fn extension(self) -> &'static str {
        match self {
            Self::Jsonl => "jsonl",
            Self::Csv => "csv",
        }
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.extension())
    }
}

impl FromStr for OutputFormat {
    type Err = BulkError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "jsonl" | "jsonlines" | "ndjson" => Ok(Self::Jsonl),
            "csv" => Ok(Self::Csv),
            "parquet" => Err(BulkError::config(
                "Parquet output is not built; use jsonl (DuckDB, Athena, Spark and pandas read \
                 JSON Lines directly) or csv",
            )),
            other => Err(BulkError::config(format!(
                "unknown output format {other:?} (expected jsonl or csv)"
            ))),
        }
    }
}

/// Where predictions come from.
#[derive(Debug, Clone)]
pub enum BackendConfig {
    /// A model run in this process.
    Local {
        /// A model URL; `None` is the built-in animal model.
        model: Option<String>,
        engine: EngineKind,
        options: EngineOptions,
        /// Images per inference batch, at most; `None` lets the engine choose
        /// ([`bestiary_engine::LoadedModel::preferred_batch_size`]).
        batch_size: Option<usize>,
        /// Threads decoding and resizing photos.
        decode_threads: usize,
        /// How long a batch that is not full waits for more images.
        batch_wait: Duration,
    },
    /// A running `bestiary serve` (`/v1/classify`) or any SageMaker-style `/invocations`.
    Endpoint {
        url: String,
        /// Sent as `Authorization: Bearer <key>`.
        api_key: Option<String>,
        /// Per request.
        timeout: Duration,
        /// Retries of 429, 5xx and connection failures, with exponential backoff.
        retries: usize,
    },
}

impl BackendConfig {
    /// The built-in model (or `model`), on `engine`, with the defaults for the rest.
    pub fn local(model: Option<String>, engine: EngineKind) -> Self {
        Self::Local {
            model,
            engine,
            options: EngineOptions::for_throughput(engine, None, None),
            batch_size: None,
            decode_threads: default_threads(),
            batch_wait: Duration::from_millis(5),
        }
    }
}

/// Every core this process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Everything a `classify` or `watch` run needs.
#[derive(Debug, Clone)]
pub struct BulkConfig {
    /// The prefix to classify.
    pub input: String,
    /// The prefix results go to.
    pub out: String,
    pub store: StoreOptions,
    /// Extensions taken as photos (lower case, no dot); empty takes every key.
    pub extensions: Vec<String>,
    /// Globs over keys relative to the input prefix; a key must match one of them, if any.
    pub include: Vec<String>,
    /// Globs of keys left out.
    pub exclude: Vec<String>,
    pub shard: Shard,
    pub backend: BackendConfig,
    /// Photos downloaded, decoded or classified at once.
    pub concurrency: usize,
    /// Labels listed per result.
    pub top_k: usize,
    /// Below this score the label becomes [`UNCERTAIN_LABEL`].
    pub min_score: Option<f32>,
    /// A photo the model's detector rejects keeps its best class as the label instead of
    /// `unknown` (its `unknown` field says so either way).
    pub keep_label_when_unknown: bool,
    /// `<url>/{label}/`: each photo is copied to `{label}` replaced by its label, under its key.
    pub copy_to: Option<String>,
    /// Writes the label as this S3 object tag on each photo.
    pub tag_key: Option<String>,
    pub format: OutputFormat,
    /// Results per part, at most.
    pub part_size: usize,
    /// A part is closed after this long even when not full, so slow runs still checkpoint.
    pub part_interval: Duration,
    pub decode_limits: DecodeLimits,
    /// Objects larger than this are reported as too large, never downloaded.
    pub max_object_bytes: u64,
    pub cost_per_vcpu_hour: f64,
}

impl BulkConfig {
    /// A run of the built-in model over `input` into `out`, with the defaults for the rest.
    pub fn new(input: impl Into<String>, out: impl Into<String>) -> Self {
        Self {
            input: input.into(),
            out: out.into(),
            store: StoreOptions::default(),
            extensions: IMAGE_EXTENSIONS.iter().map(|e| (*e).to_owned()).collect(),
            include: Vec::new(),
            exclude: Vec::new(),
            shard: Shard::ALL,
            backend: BackendConfig::local(None, EngineKind::Auto),
            concurrency: 64,
            top_k: 5,
            min_score: None,
            keep_label_when_unknown: false,
            copy_to: None,
            tag_key: None,
            format: OutputFormat::Jsonl,
            part_size: 1000,
            part_interval: Duration::from_secs(60),
            decode_limits: DecodeLimits::default(),
            max_object_bytes: 64 * 1024 * 1024,
            cost_per_vcpu_hour: DEFAULT_COST_PER_VCPU_HOUR,
        }
    }

    /// # Errors
    /// For settings no run can work with.
    pub fn validate(&self) -> Result<()> {
        let positive = |name: &str, value: usize| {
            if value == 0 {
                Err(BulkError::config(format!("{name} must be at least 1")))
            } else {
                Ok(())
            }
        };
        positive("--concurrency", self.concurrency)?;
        positive("--part-size", self.part_size)?;
        positive("--top-k", self.top_k)?;
        if let BackendConfig::Local {
            batch_size,
            decode_threads,
            options,
            ..
        } = &self.backend
        {
            positive("--batch-size", batch_size.unwrap_or(1))?;
            positive("--threads", options.threads.unwrap_or(1))?;
            positive("--inference-workers", options.instances)?;
            positive("--decode-threads", *decode_threads)?;
        }
        if let Some(score) = self.min_score
            && !(0.0..=1.0).contains(&score)
        {
            return Err(BulkError::config(format!(
                "--min-score must be between 0 and 1, got {score}"
            )));
        }
        if let Some(template) = &self.copy_to
            && !template.contains("{label}")
        {
            return Err(BulkError::config(format!(
                "--copy-to {template} has no {{label}} placeholder (e.g. s3://bucket/sorted/{{label}}/)"
            )));
        }
        if self.part_interval.is_zero() {
            return Err(BulkError::config("--part-seconds must be positive"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_partition_every_key_once() {
        assert_eq!(
            "1/3".parse::<Shard>().unwrap(),
            Shard { index: 1, count: 3 }
        );
        assert!("3/3".parse::<Shard>().is_err());
        assert!("1-3".parse::<Shard>().is_err());
        let shards: Vec<Shard> = (0..3).map(|i| Shard::new(i, 3).unwrap()).collect();
        let mut sizes = [0; 3];
        for i in 0..3000 {
            let key = format!("photos/{i}.jpg");
            let owners: Vec<_> = shards.iter().filter(|s| s.contains(&key)).collect();
            assert_eq!(owners.len(), 1, "{key}");
            sizes[owners[0].index as usize] += 1;
        }
        assert!(sizes.iter().all(|&n| n > 900), "{sizes:?}");
    }

    #[test]
    fn shard_comes_from_the_flag_or_the_indexed_job() {
        let two = Shard::new(1, 2).unwrap();
        assert_eq!(Shard::resolve(Some(two), None, Some("0")).unwrap(), two);
        assert!(Shard::resolve(Some(two), Some(3), None).is_err());
        assert_eq!(
            Shard::resolve(None, Some(4), Some("3")).unwrap(),
            Shard::new(3, 4).unwrap()
        );
        let missing_count = Shard::resolve(None, None, Some("2")).unwrap_err();
        assert!(missing_count.to_string().contains("BESTIARY_SHARDS"));
        assert!(Shard::resolve(None, Some(4), Some("4")).is_err());
        assert!(Shard::resolve(None, Some(4), None).is_err());
        assert_eq!(Shard::resolve(None, None, None).unwrap(), Shard::ALL);
        assert_eq!(Shard::resolve(None, Some(1), None).unwrap(), Shard::ALL);
    }

    #[test]
    fn parquet_is_refused_with_a_reason() {
        let error = "parquet".parse::<OutputFormat>().unwrap_err();
        assert!(error.to_string().contains("not built"));
        assert_eq!("CSV".parse::<OutputFormat>().unwrap(), OutputFormat::Csv);
    }
}

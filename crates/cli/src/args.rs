//! Command-line arguments of `bestiary`: every flag can also be set by a `BESTIARY_*` variable.

use std::path::PathBuf;

use bestiary_dataset::{DatasetOptions, SplitConfig};
use bestiary_storage::StoreOptions;
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "bestiary",
    version,
    about = "Turn a bucket of photos into a fast image-classification service.",
    long_about = "Turn a bucket of photos into a fast image-classification service.\n\n\
        Buckets are URLs: a local folder (`./photos`, `file:///data`), `s3://bucket/prefix` \
        (AWS credentials from the usual environment or ~/.aws profile; `--s3-endpoint` for \
        S3-compatible servers), `gs://bucket/prefix` or `az://container/prefix`.",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Endpoint of an S3-compatible server (MinIO, SeaweedFS, …); buckets are then addressed by path.
    /// `AWS_ENDPOINT_URL` works too.
    #[arg(long, env = "BESTIARY_S3_ENDPOINT", global = true)]
    pub s3_endpoint: Option<String>,

    /// Retries of transient storage errors (timeouts, 5xx), with exponential backoff.
    #[arg(
        long,
        env = "BESTIARY_STORAGE_RETRIES",
        default_value_t = 5,
        global = true
    )]
    pub storage_retries: usize,

    /// Log format on stderr.
    #[arg(long, env = "BESTIARY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// No progress bars or informational logs.
    #[arg(long, short, env = "BESTIARY_QUIET", global = true)]
    pub quiet: bool,
}

impl GlobalArgs {
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            s3_endpoint: self.s3_endpoint.clone(),
            max_retries: self.storage_retries,
            ..StoreOptions::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Look at a labelled dataset: classes, counts, splits, image sizes, bad files.
    #[command(subcommand)]
    Dataset(DatasetCommand),
    /// Train a classifier on a labelled dataset and store a versioned model.
    Train(PendingArgs),
    /// Evaluate a model on a labelled dataset.
    Eval(PendingArgs),
    /// Serve a model over HTTP (native JSON, SageMaker and Open Inference Protocol APIs).
    Serve(PendingArgs),
    /// Classify every photo under a bucket prefix, resumably.
    Classify(PendingArgs),
    /// Keep classifying new photos as they arrive under a prefix.
    Watch(PendingArgs),
    /// Re-export a stored model version (ONNX, fp16).
    Export(PendingArgs),
    /// Import a pretrained backbone from its public package.
    Import(PendingArgs),
    /// Measure Bestiary's speed.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// Arguments of commands that are not built yet: accepted so that the message is the same
/// whatever is passed.
#[derive(Debug, Args)]
pub struct PendingArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub rest: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum DatasetCommand {
    /// Read every photo once and report classes, counts, split sizes, image sizes and bad files.
    ///
    /// Example: bestiary dataset inspect s3://my-bucket/animals --json
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub data: DataArgs,

    /// Print the report as JSON (for scripts) instead of a table.
    #[arg(long, env = "BESTIARY_JSON")]
    pub json: bool,

    /// Photos downloaded and decoded at once.
    #[arg(long, env = "BESTIARY_CONCURRENCY", default_value_t = 32)]
    pub concurrency: usize,

    /// Largest photo accepted, in megapixels (bigger ones are reported, never decoded).
    #[arg(long, env = "BESTIARY_MAX_MEGAPIXELS", default_value_t = 100.0)]
    pub max_megapixels: f64,
}

/// Where labelled photos are and how they are split.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// The dataset: a prefix with one folder per class (`<prefix>/<class>/<photo>`, optionally
    /// under `train/` and `validation/`), a JSON Lines manifest (`.jsonl`/`.manifest`, lines like
    /// {"source-ref": "s3://b/a.jpg", "class": "cat"}) or a CSV of `key,label`.
    #[arg(env = "BESTIARY_DATA")]
    pub data: String,

    /// An explicit validation set (same forms as the dataset) instead of a hash split.
    #[arg(long, env = "BESTIARY_VALIDATION")]
    pub validation: Option<String>,

    /// Share of photos held out for validation by the hash split.
    #[arg(long, env = "BESTIARY_VALIDATION_FRACTION", default_value_t = 0.2)]
    pub validation_fraction: f64,

    /// Seed of the hash split: the same seed always gives the same split.
    #[arg(long, env = "BESTIARY_SPLIT_SEED", default_value_t = 42)]
    pub split_seed: u64,

    /// Manifest field holding the label (default: `class`, `label`, or the only other field).
    #[arg(long, env = "BESTIARY_LABEL_ATTRIBUTE")]
    pub label_attribute: Option<String>,
}

impl DataArgs {
    pub fn options(&self, global: &GlobalArgs) -> anyhow::Result<DatasetOptions> {
        anyhow::ensure!(
            (0.0..1.0).contains(&self.validation_fraction),
            "--validation-fraction must be at least 0 and below 1, got {}",
            self.validation_fraction
        );
        Ok(DatasetOptions {
            split: SplitConfig {
                validation_fraction: self.validation_fraction,
                seed: self.split_seed,
            },
            validation_url: self.validation.clone(),
            label_attribute: self.label_attribute.clone(),
            store: global.store_options(),
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Images per second the data loader delivers, cold (download + decode) and from its cache.
    Loader(BenchLoaderArgs),
}

#[derive(Debug, Args)]
pub struct BenchLoaderArgs {
    #[command(flatten)]
    pub data: DataArgs,

    /// Model input side in pixels.
    #[arg(long, env = "BESTIARY_IMAGE_SIZE", default_value_t = 128)]
    pub image_size: u32,

    #[arg(long, env = "BESTIARY_BATCH_SIZE", default_value_t = 32)]
    pub batch_size: usize,

    /// Cached epochs to time after the cold one.
    #[arg(long, env = "BESTIARY_BENCH_EPOCHS", default_value_t = 3)]
    pub epochs: u64,

    /// Decoding threads (default: one per core).
    #[arg(long, env = "BESTIARY_WORKERS")]
    pub workers: Option<usize>,

    /// Cache folder; the default is a fresh temporary folder so that the first epoch is cold.
    #[arg(long, env = "BESTIARY_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Training augmentation on (random resized crop, flip, colour jitter), as the trainer uses.
    #[arg(long, env = "BESTIARY_AUGMENT", default_value_t = true, action = clap::ArgAction::Set)]
    pub augment: bool,

    /// Print the result as JSON.
    #[arg(long, env = "BESTIARY_JSON")]
    pub json: bool,
}

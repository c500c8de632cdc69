//! What `classify` and `watch` set up alike: the stores, the selection, the model or endpoint,
//! the actions, and the run's shard folder.

use std::sync::Arc;
use std::time::Instant;

use bestiary_storage::{ObjectInfo, Store};

use crate::actions::Actions;
use crate::config::{BackendConfig, BulkConfig, Shard};
use crate::endpoint::EndpointClient;
use crate::error::Result;
use crate::local::{LocalClassifier, LocalSettings};
use crate::manifest::{ModelIdentity, RunFile, RunSpec, ShardFolder, ShardProgress, Tally};
use crate::pipeline::{Classifier, Pipeline};
use crate::progress::Progress;
use crate::record;
use crate::select::Selector;
use crate::tagging::Tagger;
use bestiary_engine::usage::process_cpu_time;

use crate::usage::{Command, Measured, RunReport};

/// A run, ready to classify.
pub struct Session {
    pub pipeline: Pipeline,
    pub selector: Selector,
    pub folder: ShardFolder,
    pub run: RunFile,
    pub shard: Shard,
    /// The output prefix's path below the input prefix, when results are written inside the
    /// classified prefix, so that a run never classifies its own output.
    output_inside_input: Option<String>,
}

impl Session {
    /// Opens the stores, checks the selection and actions, then loads the model (or connects
    /// to the endpoint) and opens the run's shard folder.
    ///
    /// # Errors
    /// For bad settings, unreachable stores, a model that does not load, an endpoint that does
    /// not answer.
    pub async fn open(config: &BulkConfig, progress: Arc<Progress>) -> Result<Self> {
        config.validate()?;
        let input = Store::open(&config.input, &config.store)?;
        let out = Store::open(&config.out, &config.store)?;
        let selector = Selector::from_config(config)?;
        let tagger = config
            .tag_key
            .as_deref()
            .map(|key| Tagger::new(input.url(), &config.store, key))
            .transpose()?;
        let actions = Actions::new(config.copy_to.as_deref(), tagger, &config.store);
        let (classifier, identity, model_source) = match &config.backend {
            BackendConfig::Local {
                model,
                engine,
                options,
                batch_size,
                decode_threads,
                batch_wait,
            } => {
                let settings = LocalSettings {
                    model: model.clone(),
                    engine: *engine,
                    options: options.clone(),
                    batch_size: *batch_size,
                    decode_threads: *decode_threads,
                    batch_wait: *batch_wait,
                    decode_limits: config.decode_limits.clone(),
                    top_k: config.top_k,
                };
                let local = LocalClassifier::load(&settings, &config.store).await?;
                let metadata = &local.model().metadata;
                let identity = ModelIdentity {
                    name: metadata.name.clone(),
                    version: metadata.version.clone(),
                };
                let source = local.model().source.clone();
                (Classifier::Local(local), identity, source)
            }
            BackendConfig::Endpoint {
                url,
                api_key,
                timeout,
                retries,
            } => {
                let client =
                    EndpointClient::connect(url, api_key.clone(), *timeout, *retries, config.top_k)
                        .await?;
                let identity = client.identity().clone();
                (Classifier::Endpoint(client), identity, url.clone())
            }
        };
        let mut extensions: Vec<String> = config
            .extensions
            .iter()
            .map(|e| e.trim_start_matches('.').to_ascii_lowercase())
            .collect();
        extensions.sort();
        extensions.dedup();
        let run = RunFile {
            spec: RunSpec {
                input: input.url().display(),
                model: identity.clone(),
                extensions,
                include: config.include.clone(),
                exclude: config.exclude.clone(),
                min_score: config.min_score,
                keep_label_when_unknown: config.keep_label_when_unknown,
                top_k: config.top_k,
                format: config.format,
                shards: config.shard.count,
            },
            model_source,
            created_at: record::timestamp(),
        };
        let folder = ShardFolder::open(&out, &run, config.shard).await?;
        let output_inside_input = out
            .url()
            .display()
            .strip_prefix(&format!("{}/", input.url().display()))
            .map(|inner| format!("{inner}/"));
        Ok(Self {
            pipeline: Pipeline {
                input,
                classifier,
                actions,
                identity,
                min_score: config.min_score,
                keep_label_when_unknown: config.keep_label_when_unknown,
                concurrency: config.concurrency,
                max_object_bytes: config.max_object_bytes,
                progress,
            },
            selector,
            folder,
            run,
            shard: config.shard,
            output_inside_input,
        })
    }

    pub fn input(&self) -> &Store {
        &self.pipeline.input
    }

    /// Whether a listed object is one this run classifies (before any check of earlier
    /// results).
    pub fn selects(&self, info: &ObjectInfo) -> bool {
        self.selector.selects(&info.key)
            && self
                .output_inside_input
                .as_deref()
                .is_none_or(|inner| !info.key.starts_with(inner))
    }

    /// Loads the shard's progress and removes parts left behind by stopped runs.
    ///
    /// # Errors
    /// On storage failures and damaged progress.
    pub async fn progress(&self) -> Result<ShardProgress> {
        let progress = self.folder.load_progress().await?;
        let removed = self.folder.remove_orphans(&progress).await?;
        if removed > 0 {
            tracing::info!("removed {removed} unfinished part(s) of earlier runs");
        }
        Ok(progress)
    }
}

/// What a report is made of, gathered while running.
pub struct ReportInputs {
    pub command: Command,
    pub this_run: Tally,
    pub all_runs: Tally,
    pub not_selected: u64,
    pub parts_written: u64,
    pub listing_complete: bool,
    pub interrupted: bool,
    pub started: Instant,
    pub cpu_at_start: std::time::Duration,
    pub cost_per_vcpu_hour: f64,
}

impl Session {
    pub fn report(&self, inputs: ReportInputs) -> RunReport {
        let measured = Measured {
            images: inputs.this_run.records,
            elapsed: inputs.started.elapsed(),
            cpu: process_cpu_time()
                .unwrap_or_default()
                .saturating_sub(inputs.cpu_at_start),
            cost_per_vcpu_hour: inputs.cost_per_vcpu_hour,
        };
        let (images_per_second, cpu_seconds_per_image, estimated_cost_usd, per_1000) =
            measured.figures();
        RunReport {
            command: inputs.command,
            input: self.input().url().display(),
            output: self.folder.url(),
            model: self.pipeline.identity.clone(),
            model_source: self.run.model_source.clone(),
            shard: self.shard,
            this_run: inputs.this_run,
            all_runs: inputs.all_runs,
            not_selected: inputs.not_selected,
            parts_written: inputs.parts_written,
            listing_complete: inputs.listing_complete,
            interrupted: inputs.interrupted,
            elapsed_seconds: measured.elapsed.as_secs_f64(),
            images_per_second,
            cpu_seconds: measured.cpu.as_secs_f64(),
            cpu_seconds_per_image,
            cost_per_vcpu_hour_usd: inputs.cost_per_vcpu_hour,
            estimated_cost_usd,
            cost_per_1000_images_usd: per_1000,
        }
    }
}

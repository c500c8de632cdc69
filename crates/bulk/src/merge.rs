//! `classify --merge`: the results of every shard of a run put together, as counts read from
//! the progress markers and, on request, as one file of every committed result.

use bestiary_storage::{Store, StoreOptions};
use serde::Serialize;

use crate::config::{OutputFormat, Shard};
use crate::error::{BulkError, Result};
use crate::manifest::{RunFile, ShardFolder, Tally, read_run_file};

/// What to merge.
#[derive(Debug, Clone, Default)]
pub struct MergeOptions {
    /// The run folder to merge, when the output prefix holds several.
    pub run: Option<String>,
    /// Write every result of the run, shard by shard in order, to this file or object URL.
    pub merge_to: Option<String>,
}

/// One shard of a run.
#[derive(Debug, Clone, Serialize)]
pub struct ShardSummary {
    pub shard: Shard,
    pub parts: u64,
    pub tally: Tally,
    /// Whether its last classify run listed the prefix to the end.
    pub listing_complete: bool,
}

/// One run folder.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// The run folder's name under the output prefix.
    pub folder: String,
    pub run: RunFile,
    pub shards: Vec<ShardSummary>,
    /// Shards of `0..run.shards` with no results at all.
    pub missing_shards: Vec<u32>,
    /// Every shard together.
    pub tally: Tally,
    /// Every shard present and listed to its end.
    pub complete: bool,
}

/// The merge of an output prefix.
#[derive(Debug, Clone, Serialize)]
pub struct MergeReport {
    pub output: String,
    pub runs: Vec<RunSummary>,
    /// Where the merged results went, and how many there were.
    pub merged_to: Option<String>,
    pub merged_records: u64,
}

/// Summarises every run under `out` (or the one named), and writes their results as one file
/// when asked.
///
/// # Errors
/// On storage failures; when `run` names no run; when `merge_to` is asked of several runs.
pub async fn merge(out: &str, store: &StoreOptions, options: &MergeOptions) -> Result<MergeReport> {
    let out_store = Store::open(out, store)?;
    let mut runs = Vec::new();
    for name in out_store.list_folders("").await? {
        if options.run.as_ref().is_some_and(|wanted| *wanted != name) {
            continue;
        }
        let run_store = out_store.child(&name)?;
        let run = match read_run_file(&run_store).await {
            Ok(run) => run,
            Err(BulkError::Storage(error)) if error.is_not_found() => continue, // not a run
            Err(error) => return Err(error),
        };
        runs.push(summarise(&run_store, name, run).await?);
    }
    if let Some(wanted) = &options.run
        && runs.is_empty()
    {
        return Err(BulkError::config(format!(
            "{} has no run folder {wanted}",
            out_store.url().display()
        )));
    }
    let mut report = MergeReport {
        output: out_store.url().display(),
        runs,
        merged_to: None,
        merged_records: 0,
    };
    if let Some(target) = &options.merge_to {
        let [run] = report.runs.as_slice() else {
            let names: Vec<&str> = report.runs.iter().map(|r| r.folder.as_str()).collect();
            return Err(BulkError::config(format!(
                "--merge-to writes one run, but {} holds {}: choose one with --run ({})",
                report.output,
                report.runs.len(),
                names.join(", ")
            )));
        };
        report.merged_records =
            write_merged(&out_store.child(&run.folder)?, run, target, store).await?;
        report.merged_to = Some(target.clone());
    }
    Ok(report)
}

async fn summarise(run_store: &Store, folder: String, run: RunFile) -> Result<RunSummary> {
    let mut shards = Vec::new();
    let mut tally = Tally::default();
    for index in 0..run.spec.shards {
        let shard = Shard {
            index,
            count: run.spec.shards,
        };
        let shard_folder =
            ShardFolder::at(run_store.child(&ShardFolder::name(shard))?, run.spec.format);
        let progress = shard_folder.load_progress().await?;
        if progress.markers.is_empty() {
            continue;
        }
        let shard_tally = progress.tally();
        tally.merge(&shard_tally);
        shards.push(ShardSummary {
            shard,
            parts: progress.markers.iter().filter(|m| m.part.is_some()).count() as u64,
            tally: shard_tally,
            listing_complete: progress.listing_complete(),
        });
    }
    let missing_shards: Vec<u32> = (0..run.spec.shards)
        .filter(|i| !shards.iter().any(|s| s.shard.index == *i))
        .collect();
    let complete = missing_shards.is_empty() && shards.iter().all(|s| s.listing_complete);
    Ok(RunSummary {
        folder,
        run,
        shards,
        missing_shards,
        tally,
        complete,
    })
}

/// Streams every committed part of `run`, shard by shard and part by part, into `target`
/// (one CSV header at the top for CSV). Returns the number of results.
async fn write_merged(
    run_store: &Store,
    run: &RunSummary,
    target: &str,
    options: &StoreOptions,
) -> Result<u64> {
    let (target_store, key) = Store::open_object(target, options)?;
    let format = run.run.spec.format;
    let mut writer = target_store.writer(&key)?;
    writer.write(&crate::record::header(format)).await?;
    let mut records = 0;
    for shard in &run.shards {
        let folder = ShardFolder::at(run_store.child(&ShardFolder::name(shard.shard))?, format);
        for marker in folder.load_progress().await?.markers {
            let Some(bytes) = folder.read_part(&marker).await? else {
                continue;
            };
            let body = match format {
                OutputFormat::Jsonl => &bytes[..],
                OutputFormat::Csv => bytes
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(&bytes[..0], |end| &bytes[end + 1..]),
            };
            writer.write(body).await?;
            records += marker.tally.records;
        }
    }
    writer.finish().await?;
    Ok(records)
}

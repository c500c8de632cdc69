//! `watch`: keeps classifying a prefix as photos arrive or change, each content of each key
//! exactly once, across restarts.
//!
//! Every poll lists after the greatest key seen so far (S3 `start-after`: new keys that sort
//! last, such as timestamped names, cost one short listing), and every `rescan_interval` a full
//! listing catches keys that arrived out of order and objects whose ETag changed. What has been
//! classified is read back from the committed parts when watch starts (the output prefix is the
//! cursor), so a restart repeats nothing and misses nothing; results not yet committed when the
//! process died are simply classified again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bestiary_storage::ObjectInfo;
use tokio_util::sync::CancellationToken;
use xxhash_rust::xxh3::xxh3_64;

use crate::config::BulkConfig;
use crate::error::{BulkError, Result};
use crate::listing::ordered_listing;
use crate::manifest::{Committed, PartWriter, PartWriterKind, ShardProgress, Tally};
use crate::progress::Progress;
use crate::session::{ReportInputs, Session};
use bestiary_engine::usage::process_cpu_time;

use crate::usage::{Command, RunReport};

/// How often watch looks.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Time between the starts of two polls.
    pub interval: Duration,
    /// Time between two full listings.
    pub rescan_interval: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            rescan_interval: Duration::from_secs(300),
        }
    }
}

/// Which content of which key has been classified, in 16 bytes a key: hashes of the key and of
/// its ETag.
#[derive(Debug, Default)]
struct Classified {
    etags: HashMap<u64, u64>,
}

impl Classified {
    fn insert(&mut self, key: &str, etag: Option<&str>) {
        self.etags.insert(hash(key), hash(etag.unwrap_or_default()));
    }

    fn contains(&self, info: &ObjectInfo) -> bool {
        self.etags.get(&hash(&info.key)) == Some(&hash(info.etag.as_deref().unwrap_or_default()))
    }
}

fn hash(text: &str) -> u64 {
    xxh3_64(text.as_bytes())
}

/// Watches `config.input` until `stop` is cancelled, then commits what is finished and returns
/// the summary of everything classified while it ran.
///
/// # Errors
/// See [`Session::open`]; and every error of a poll that no retry can mend
/// ([`BulkError::is_permanent`]: another process watching the same shard into the same output,
/// denied credentials, a missing bucket, an endpoint refusing the key). A poll that fails
/// otherwise (storage outage, endpoint down) is logged and retried at the next interval.
pub async fn watch(
    config: &BulkConfig,
    options: &WatchOptions,
    progress: Arc<Progress>,
    stop: &CancellationToken,
) -> Result<RunReport> {
    if options.interval.is_zero() {
        return Err(BulkError::config("--interval must be positive"));
    }
    let session = Session::open(config, progress.clone()).await?;
    let mut classified = Classified::default();
    let (first_writer, earlier) = reopen(&session, config, &mut classified, 0).await?;
    let mut writer = Some(first_writer);
    tracing::info!(
        "{} photo(s) already classified in {}",
        classified.etags.len(),
        session.folder.url()
    );

    let started = Instant::now();
    let cpu_at_start = process_cpu_time().unwrap_or_default();
    let mut this_run = Tally::default();
    let mut parts_written = 0u64;
    let mut not_selected = 0u64;
    // The greatest key the last complete poll listed; `None` forces a full listing.
    let mut cursor: Option<String> = None;
    let mut last_full_listing: Option<Instant> = None;
    // Markers below this number are reflected in `classified`.
    let mut known_seq = earlier.next_seq();
    while !stop.is_cancelled() {
        let poll_started = Instant::now();
        let result = match writer.as_mut() {
            Some(writer) => {
                let full = cursor.is_none()
                    || last_full_listing.is_none_or(|at| at.elapsed() >= options.rescan_interval);
                let after = if full { None } else { cursor.clone() };
                let mut greatest = after.clone();
                let mut committed: Vec<Committed> = Vec::new();
                let mut select = |info: &ObjectInfo| {
                    if greatest.as_deref().is_none_or(|g| info.key.as_str() > g) {
                        greatest = Some(info.key.clone());
                    }
                    session.selects(info) && !classified.contains(info)
                };
                let mut on_commit = |part: &Committed| committed.push(part.clone());
                let end = session
                    .pipeline
                    .run_round(
                        ordered_listing(session.input(), after.as_deref()),
                        &mut select,
                        writer,
                        stop,
                        false,
                        &mut on_commit,
                    )
                    .await;
                for part in &committed {
                    this_run.merge(&part.marker.tally);
                    parts_written += 1;
                    known_seq = part.marker.seq + 1;
                    for (key, etag) in &part.keys {
                        classified.insert(key, etag.as_deref());
                    }
                }
                end.map(|end| {
                    not_selected += end.not_selected;
                    if end.listing_complete {
                        cursor = greatest.or(cursor.take());
                        if full {
                            last_full_listing = Some(poll_started);
                        }
                    }
                })
            }
            None => reopen(&session, config, &mut classified, known_seq)
                .await
                .map(|(reopened, _)| {
                    known_seq = reopened.next_seq();
                    writer = Some(reopened);
                }),
        };
        progress.polled();
        match result {
            Ok(()) => {}
            // Another process on this shard, settings that cannot work, a denied bucket, a
            // revoked key: no later poll can succeed, so the watch ends with the error.
            Err(error) if error.is_permanent() => return Err(error),
            Err(error) => {
                // An outage: try again at the next poll with a writer reopened from what was
                // committed (results that were not are dropped, to be classified again).
                tracing::warn!("poll failed, retrying in {:?}: {error}", options.interval);
                writer = None;
            }
        }
        let pause = options.interval.saturating_sub(poll_started.elapsed());
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
    let mut all_runs = earlier.tally();
    all_runs.merge(&this_run);
    Ok(session.report(ReportInputs {
        command: Command::Watch,
        this_run,
        all_runs,
        not_selected,
        parts_written,
        listing_complete: false,
        interrupted: true,
        started,
        cpu_at_start,
        cost_per_vcpu_hour: config.cost_per_vcpu_hour,
    }))
}

/// A writer continuing the committed parts (with those parts), after adding the keys of parts from `from_seq` on
/// to `classified` (all of them at start; after a failed commit, a marker may have been
/// written although its answer was lost).
async fn reopen(
    session: &Session,
    config: &BulkConfig,
    classified: &mut Classified,
    from_seq: u64,
) -> Result<(PartWriter, ShardProgress)> {
    let progress = session.progress().await?;
    for marker in progress.markers.iter().filter(|m| m.seq >= from_seq) {
        for (key, etag) in session.folder.read_part_keys(marker).await? {
            classified.insert(&key, etag.as_deref());
        }
    }
    let writer = PartWriter::new(
        session.folder.clone(),
        &progress,
        PartWriterKind::Watch,
        config.part_size,
        config.part_interval,
    );
    Ok((writer, progress))
}

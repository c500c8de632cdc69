//! `classify`: every photo under a prefix, once, continuing where an earlier run of the same
//! command stopped.

use std::sync::Arc;
use std::time::Instant;

use bestiary_storage::ObjectInfo;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::config::BulkConfig;
use crate::error::Result;
use crate::listing::ordered_listing;
use crate::manifest::{PartWriter, PartWriterKind, Tally};
use crate::progress::Progress;
use crate::session::{ReportInputs, Session};
use bestiary_engine::usage::process_cpu_time;

use crate::usage::{Command, RunReport};

/// How a classify run behaves beyond its configuration.
#[derive(Debug, Clone, Default)]
pub struct ClassifyOptions {
    /// Discard this run's earlier results and classify everything again.
    pub force: bool,
    /// Count the remaining photos with a second listing running ahead, for an ETA.
    pub count_ahead: bool,
}

/// Classifies every selected photo under `config.input` that earlier runs of the same command
/// have not, writing results under `config.out`. Returns when the listing is done, when `stop`
/// is cancelled (after committing what is finished), or on the first failure (idem).
///
/// # Errors
/// See [`Session::open`] and [`crate::pipeline::Pipeline::run_round`].
pub async fn classify(
    config: &BulkConfig,
    options: &ClassifyOptions,
    progress: Arc<Progress>,
    stop: &CancellationToken,
) -> Result<RunReport> {
    let session = Session::open(config, progress.clone()).await?;
    if options.force {
        session.folder.reset().await?;
    }
    let earlier = session.progress().await?;
    let cursor = earlier.cursor().map(str::to_owned);
    if let Some(cursor) = &cursor {
        tracing::info!(
            "{} result(s) already in {}; continuing after {cursor}",
            earlier.tally().records,
            session.folder.url()
        );
    }
    let after_cursor = |info: &ObjectInfo| cursor.as_deref().is_none_or(|c| info.key.as_str() > c);

    let counting = CancellationToken::new();
    let _stop_counting = counting.clone().drop_guard();
    if options.count_ahead {
        let listing = ordered_listing(session.input(), cursor.as_deref());
        let (selector, progress) = (session.selector.clone(), progress.clone());
        let cursor = cursor.clone();
        let counting = counting.clone();
        tokio::spawn(async move {
            let count = listing.for_each(|info| {
                if let Ok(info) = info
                    && cursor.as_deref().is_none_or(|c| info.key.as_str() > c)
                    && selector.selects(&info.key)
                {
                    progress.expect_one();
                }
                std::future::ready(())
            });
            tokio::select! {
                () = count => progress.expected_known(),
                () = counting.cancelled() => {}
            }
        });
    }

    let started = Instant::now();
    let cpu_at_start = process_cpu_time().unwrap_or_default();
    let mut writer = PartWriter::new(
        session.folder.clone(),
        &earlier,
        PartWriterKind::Classify,
        config.part_size,
        config.part_interval,
    );
    // S3 lists strictly after the cursor already; checking again costs nothing and keeps a
    // server with a looser `start-after` from producing a duplicate.
    let mut select = |info: &ObjectInfo| after_cursor(info) && session.selects(info);
    let mut this_run = Tally::default();
    let mut on_commit = |committed: &crate::manifest::Committed| {
        this_run.merge(&committed.marker.tally);
    };
    let end = session
        .pipeline
        .run_round(
            ordered_listing(session.input(), cursor.as_deref()),
            &mut select,
            &mut writer,
            stop,
            true,
            &mut on_commit,
        )
        .await?;
    let mut all_runs = earlier.tally();
    all_runs.merge(&this_run);
    Ok(session.report(ReportInputs {
        command: Command::Classify,
        this_run,
        all_runs,
        not_selected: end.not_selected,
        parts_written: end.parts.iter().filter(|c| c.marker.part.is_some()).count() as u64,
        listing_complete: end.listing_complete,
        interrupted: stop.is_cancelled(),
        started,
        cpu_at_start,
        cost_per_vcpu_hour: config.cost_per_vcpu_hour,
    }))
}

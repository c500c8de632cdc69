//! `bestiary classify`: classifies a prefix with a progress bar and a final summary, or
//! summarises and merges the results of earlier runs (`--merge`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bestiary_bulk::{
    BackendConfig, BulkConfig, ClassifyOptions, MergeOptions, MergeReport, Progress, RunReport,
    Shard, Tally,
};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::args::{BulkArgs, ClassifyArgs, GlobalArgs};

/// Exit status after a stop by SIGINT or SIGTERM (128 + SIGINT, as shells report it).
pub const INTERRUPTED: u8 = 130;
/// Exit status of `--merge` when a shard is missing or not finished.
const INCOMPLETE: u8 = 2;
/// Exit status when rerunning cannot help: bad configuration or input, a missing bucket,
/// denied access (a Kubernetes Indexed Job's podFailurePolicy fails the index on it; clap's
/// usage errors exit 2). Other failures (outages after retries) exit 1 and may be retried.
pub const BAD_INPUT: u8 = 3;

pub async fn classify(global: &GlobalArgs, args: ClassifyArgs) -> anyhow::Result<ExitCode> {
    if let Some(out) = &args.merge {
        return merge(global, out, &args).await;
    }
    let (Some(input), Some(out)) = (&args.input, &args.out) else {
        anyhow::bail!("classify needs the prefix to classify and --out (or --merge <out>)");
    };
    let config = match bulk_config(global, &args.bulk, input, out) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error:#}");
            return Ok(ExitCode::from(BAD_INPUT));
        }
    };
    let hidden = global.quiet || args.json;
    let stop = stop_on_signals()?;
    let progress = Arc::new(Progress::default());
    let bar = ProgressDisplay::start(progress.clone(), hidden, false);
    let options = ClassifyOptions {
        force: args.force,
        count_ahead: !hidden,
    };
    let result = bestiary_bulk::classify(&config, &options, progress, &stop).await;
    bar.finish().await;
    let report = match result {
        Ok(report) => report,
        Err(error) if error.is_permanent() => {
            eprintln!("error: {error}");
            return Ok(ExitCode::from(BAD_INPUT));
        }
        Err(error) => return Err(error.into()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if report.interrupted {
        ExitCode::from(INTERRUPTED)
    } else {
        ExitCode::SUCCESS
    })
}

/// The library's configuration from the command line.
pub fn bulk_config(
    global: &GlobalArgs,
    args: &BulkArgs,
    input: &str,
    out: &str,
) -> anyhow::Result<BulkConfig> {
    let job_index = std::env::var("JOB_COMPLETION_INDEX").ok();
    let mut config = BulkConfig::new(input, out);
    config.store = global.store_options();
    config.extensions = args.extensions.clone();
    config.include = args.include.clone();
    config.exclude = args.exclude.clone();
    config.shard = Shard::resolve(args.shard, args.shards, job_index.as_deref())?;
    config.backend = match &args.endpoint {
        Some(url) => BackendConfig::Endpoint {
            url: url.clone(),
            api_key: args.endpoint_api_key.clone(),
            timeout: seconds("--endpoint-timeout", args.endpoint_timeout)?,
            retries: global.storage_retries,
        },
        None => BackendConfig::Local {
            model: args.model.clone(),
            engine: args.engine,
            options: bestiary_engine::EngineOptions {
                precision: args.precision,
                ..bestiary_engine::EngineOptions::for_throughput(
                    args.engine,
                    args.threads,
                    args.inference_workers,
                )
            },
            batch_size: args.batch_size,
            decode_threads: args
                .decode_threads
                .unwrap_or_else(bestiary_bulk::config::default_threads),
            batch_wait: Duration::from_millis(5),
        },
    };
    config.concurrency = args.concurrency;
    config.top_k = args.top_k;
    config.min_score = args.min_score;
    config.keep_label_when_unknown = args.keep_label_when_unknown;
    config.copy_to = args.copy_to.clone();
    config.tag_key = args.tag.then(|| args.tag_key.clone());
    config.format = args.format;
    config.part_size = args.part_size;
    config.part_interval = seconds("--part-seconds", args.part_seconds)?;
    config.decode_limits.max_pixels = (args.max_megapixels * 1e6) as u64;
    config.max_object_bytes = args.max_object_mb.saturating_mul(1024 * 1024);
    config.cost_per_vcpu_hour = args.cost_per_vcpu_hour;
    config.validate()?;
    Ok(config)
}

pub fn seconds(flag: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{flag} must be a positive number of seconds, got {value}"))
}

/// A token cancelled by the first SIGINT (Ctrl-C) or SIGTERM, so that the photos in flight
/// are finished and committed; a second signal exits at once (the committed results are safe
/// either way).
pub fn stop_on_signals() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let stop = CancellationToken::new();
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let token = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        eprintln!("stopping: committing the photos in flight (signal again to quit at once)");
        token.cancel();
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        std::process::exit(i32::from(INTERRUPTED));
    });
    Ok(stop)
}

/// A progress bar fed from a run's counters: photos per second and, once the photos ahead are
/// counted, the ETA.
pub struct ProgressDisplay {
    bar: ProgressBar,
    updater: Option<tokio::task::JoinHandle<()>>,
    done: CancellationToken,
}

impl ProgressDisplay {
    pub fn start(progress: Arc<Progress>, hidden: bool, watching: bool) -> Self {
        let done = CancellationToken::new();
        if hidden {
            return Self {
                bar: ProgressBar::hidden(),
                updater: None,
                done,
            };
        }
        let bar = ProgressBar::new(0);
        let template = if watching {
            "{spinner} {msg} {per_sec} [{elapsed}]"
        } else {
            "{msg:>12} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}"
        };
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("progress template")
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        let (shown, stopped) = (bar.clone(), done.clone());
        let updater = tokio::spawn(async move {
            loop {
                let now = progress.snapshot();
                shown.set_position(now.classified);
                if watching {
                    shown.set_message(format!(
                        "{} classified ({} errors), {} polls",
                        now.classified, now.errors, now.polls
                    ));
                } else {
                    shown.set_length(now.expected.max(now.classified));
                    shown.set_message(if now.expected_known {
                        "classifying".to_owned()
                    } else {
                        "counting…".to_owned()
                    });
                }
                tokio::select! {
                    () = stopped.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        });
        Self {
            bar,
            updater: Some(updater),
            done,
        }
    }

    pub async fn finish(self) {
        self.done.cancel();
        if let Some(updater) = self.updater {
            let _ = updater.await;
        }
        self.bar.finish_and_clear();
    }
}

/// The summary after a run.
pub fn print_report(report: &RunReport) {
    let watching = report.command == bestiary_bulk::usage::Command::Watch;
    let run = &report.this_run;
    println!(
        "{} {} photo(s) in {:.1} s: {:.1} img/s ({} labelled, {} error(s)), model {} {}",
        if watching {
            "watch classified"
        } else if report.interrupted {
            "interrupted after"
        } else {
            "classified"
        },
        run.records,
        report.elapsed_seconds,
        report.images_per_second,
        run.records - run.error_count(),
        run.error_count(),
        report.model.name,
        report.model.version,
    );
    print_tally(run);
    println!(
        "CPU {:.1} s ({:.3} s per photo); estimated cost USD {:.5} at USD {:.4} per vCPU-hour \
         (USD {:.4} per 1,000 photos)",
        report.cpu_seconds,
        report.cpu_seconds_per_image,
        report.estimated_cost_usd,
        report.cost_per_vcpu_hour_usd,
        report.cost_per_1000_images_usd,
    );
    println!(
        "results in {} ({} part(s) now; {} result(s) there in all{})",
        report.output,
        report.parts_written,
        report.all_runs.records,
        if report.shard.count > 1 {
            format!(", shard {}", report.shard)
        } else {
            String::new()
        }
    );
    if watching {
        return;
    }
    if report.interrupted {
        println!("rerun the same command to continue where this run stopped");
    } else if !report.listing_complete {
        println!("the listing was not finished: rerun the same command to continue");
    }
}

fn print_tally(tally: &Tally) {
    let width = tally
        .labels
        .keys()
        .chain(tally.errors.keys())
        .map(|name| name.len() + 7)
        .max()
        .unwrap_or(0);
    for (label, count) in &tally.labels {
        println!("  {label:<width$} {count:>8}");
    }
    for (code, count) in &tally.errors {
        println!("  {:<width$} {count:>8}", format!("error: {code}"));
    }
}

async fn merge(global: &GlobalArgs, out: &str, args: &ClassifyArgs) -> anyhow::Result<ExitCode> {
    let options = MergeOptions {
        run: args.run.clone(),
        merge_to: args.merge_to.clone(),
    };
    let report = bestiary_bulk::merge(out, &global.store_options(), &options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_merge(&report);
    }
    let complete = !report.runs.is_empty() && report.runs.iter().all(|r| r.complete);
    Ok(if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(INCOMPLETE)
    })
}

fn print_merge(report: &MergeReport) {
    if report.runs.is_empty() {
        println!("{}: no classify results here", report.output);
    }
    for run in &report.runs {
        let spec = &run.run.spec;
        println!(
            "{}: {} {} on {}, {} shard(s): {}",
            run.folder,
            spec.model.name,
            spec.model.version,
            spec.input,
            spec.shards,
            if run.complete {
                "complete"
            } else {
                "INCOMPLETE"
            }
        );
        if !run.missing_shards.is_empty() {
            let missing: Vec<String> = run.missing_shards.iter().map(u32::to_string).collect();
            println!("  no results yet from shard(s) {}", missing.join(", "));
        }
        for shard in run.shards.iter().filter(|s| !s.listing_complete) {
            println!(
                "  shard {} has not finished its listing ({} results so far)",
                shard.shard, shard.tally.records
            );
        }
        println!(
            "  {} result(s), {} error(s)",
            run.tally.records,
            run.tally.error_count()
        );
        print_tally(&run.tally);
    }
    if let Some(target) = &report.merged_to {
        println!("merged {} result(s) into {target}", report.merged_records);
    }
}

//! `bestiary watch`: keeps classifying a prefix as photos arrive, until SIGTERM or Ctrl-C.

use std::process::ExitCode;
use std::sync::Arc;

use bestiary_bulk::{Progress, WatchOptions};

use crate::args::{GlobalArgs, WatchArgs};
use crate::commands::classify::{
    ProgressDisplay, bulk_config, print_report, seconds, stop_on_signals,
};

pub async fn watch(global: &GlobalArgs, args: WatchArgs) -> anyhow::Result<ExitCode> {
    let config = bulk_config(global, &args.bulk, &args.input, &args.out)?;
    let options = WatchOptions {
        interval: seconds("--interval", args.interval)?,
        rescan_interval: seconds("--rescan-interval", args.rescan_interval)?,
    };
    let stop = stop_on_signals()?;
    let progress = Arc::new(Progress::default());
    let hidden = global.quiet || args.json;
    if !hidden {
        eprintln!(
            "watching {} every {} s (full listing every {} s); Ctrl-C or SIGTERM stops",
            args.input, args.interval, args.rescan_interval
        );
    }
    let display = ProgressDisplay::start(progress.clone(), hidden, true);
    let result = bestiary_bulk::watch(&config, &options, progress, &stop).await;
    display.finish().await;
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}
